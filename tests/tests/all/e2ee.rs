//! End-to-end encrypted audio through a real server: the members hear each
//! other, the relay forwards what it cannot hear, a device that does not
//! encrypt cannot join, and a member whose key is wrong or missing plays
//! as silence with an event saying so.

mod built_in;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use audio_device::{AudioFormat, AudioSink, WavSink};
use calling_api::{CallType, CallingEvent, EndReason, ErrorCode, KeyProblem};
use calling_facade::{CaptureDevice, Identity, KeyProvider, MediaKey, MediaKeys, PlaybackDevice};
use opencalling_tests::speech::{fixture, match_speech};
use signaling_proto::{DatagramKind, FlowId, MediaHeader};

use crate::audio::{ONE_AT_A_TIME, record_path, speech_both_ways_while_alone, user_with_options};
use crate::support::*;

fn shared_key(byte: u8) -> MediaKeys {
    MediaKeys::Shared(MediaKey::new([byte; 32]).unwrap())
}

/// What an eavesdropper on the relay makes of one flow's audio: each
/// payload decoded as the Opus packet it would be in a plain call (one
/// that does not decode is 20 ms of silence), written as a recording.
fn eavesdrop(payloads: &BTreeMap<u32, Vec<u8>>, path: &Path) {
    let mut decoder = audio_pipeline::Decoder::with_complexity(0).unwrap();
    let mut sink = WavSink::create(path, AudioFormat::mono(48_000)).unwrap();
    let mut frame = vec![0.0_f32; 960];
    for payload in payloads.values() {
        let samples = decoder.decode(payload, &mut frame).unwrap_or(0);
        frame[samples..].fill(0.0);
        sink.write(&frame[..960]);
    }
    sink.finish().unwrap();
}

/// Alice and bob talk (the audio tests' own check: each hears the other,
/// correlation > 0.8), with `keys` or in the clear; then what the relay
/// forwarded of each flow, decoded as a plain call's Opus, against both
/// speakers: the best correlation per flow.
#[allow(
    clippy::print_stdout,
    reason = "the measured figures, for the log of a test run"
)]
async fn overheard(
    server: &TestServer,
    keys: impl Fn() -> Option<MediaKeys>,
) -> Vec<(FlowId, f64)> {
    // The analysis below takes seconds of CPU: not beside another audio
    // test's real-time threads.
    let _alone = ONE_AT_A_TIME.lock().await;
    let tap = server.server.tap_relay();
    let encrypted = keys().is_some();
    let encrypt = |options: &mut calling_facade::ClientOptions| {
        options.media_encryption = keys();
    };
    speech_both_ways_while_alone(server, encrypt, encrypt).await;
    let mut flows: BTreeMap<FlowId, BTreeMap<u32, Vec<u8>>> = BTreeMap::new();
    for (_, datagram) in tap.try_iter() {
        let (header, payload) = MediaHeader::decode(&datagram).unwrap();
        if header.kind != DatagramKind::Audio {
            continue;
        }
        if encrypted {
            // Key id 0 lives in the SFrame header's first byte (bits 1–4
            // zero), then a counter, the ciphertext and a 16-byte tag.
            assert_eq!(payload[0] & 0x70, 0, "{payload:02x?}");
            assert!(payload.len() > 1 + 16, "{payload:02x?}");
        }
        flows
            .entry(header.flow_id)
            .or_default()
            .insert(header.sequence, payload.to_vec());
    }
    assert_eq!(flows.len(), 2, "both directions tapped");
    let mut heard = Vec::new();
    for (flow, payloads) in &flows {
        assert!(payloads.len() > 100, "{flow:?}: {} packets", payloads.len());
        let recording = record_path("e2ee-overheard");
        eavesdrop(payloads, &recording);
        let best = ["speech-a-16k.wav", "speech-b-16k.wav"]
            .iter()
            .map(|said| match_speech(&fixture(said), &recording).0)
            .fold(f64::MIN, f64::max);
        println!(
            "the relay overhears {flow:?} ({}): correlation {best:.2}",
            if encrypted { "encrypted" } else { "plain" }
        );
        heard.push((*flow, best));
    }
    heard
}

/// An audio datagram the relay forwarded: when, the header as its sender
/// wrote it (flow 0), the sealed frame, its key id (from the SFrame
/// config byte, which holds ids below 8).
pub(crate) struct Frame {
    pub(crate) at: Instant,
    pub(crate) flow: FlowId,
    pub(crate) header: Vec<u8>,
    pub(crate) sealed: Vec<u8>,
    /// `None` for an empty payload, which no sealed frame is.
    pub(crate) key_id: Option<u8>,
}

pub(crate) fn frames(tapped: impl Iterator<Item = (Instant, bytes::Bytes)>) -> Vec<Frame> {
    tapped
        .filter_map(|(at, datagram)| {
            let (header, sealed) = MediaHeader::decode(&datagram).ok()?;
            if header.kind != DatagramKind::Audio {
                return None;
            }
            let as_sent = MediaHeader {
                flow_id: FlowId(0),
                ..header
            };
            let mut written = [0; signaling_proto::datagram::MAX_HEADER_LEN];
            let len = as_sent.encode(&[], &mut written).ok()?;
            Some(Frame {
                at,
                flow: header.flow_id,
                header: written[..len].to_vec(),
                key_id: sealed.first().map(|config| (config >> 4) & 0x07),
                sealed: sealed.to_vec(),
            })
        })
        .collect()
}

/// `caller`'s invite of `callee` is refused: they do not encrypt alike.
pub(crate) async fn refused_for_encryption(caller: &User, callee: &str) {
    let refused = caller
        .calling
        .call(callee, CallType::Audio)
        .await
        .unwrap_err();
    assert_eq!(refused.code, ErrorCode::MEDIA_ENCRYPTION_MISMATCH);
}

fn built_in() -> MediaKeys {
    MediaKeys::BuiltIn(Arc::new(Identity::generate().unwrap()))
}

/// In the clear, the relay's copy of each flow is the speaker's voice (so
/// the measure below can tell); with alice and bob holding one shared key,
/// or each an identity of its own (built-in keys), each still hears the
/// other while what the relay forwards matches neither speaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_hear_each_other_and_the_relay_hears_nothing() {
    let server = TestServer::start("e2ee-speech").await;
    for (flow, correlation) in overheard(&server, || None).await {
        assert!(correlation > 0.8, "{flow:?} plain: {correlation:.2}");
    }
    for (flow, correlation) in overheard(&server, || Some(shared_key(7))).await {
        assert!(correlation < 0.3, "{flow:?} encrypted: {correlation:.2}");
    }
    for (flow, correlation) in overheard(&server, || Some(built_in())).await {
        assert!(
            correlation < 0.3,
            "{flow:?} built-in keys: {correlation:.2}"
        );
    }
}

/// A device that encrypts and one that does not never share a call: the
/// caller's invite is refused with its own code, either way round, and
/// the other side never rings.
#[tokio::test]
async fn a_call_between_an_encrypting_and_a_plain_device_is_refused() {
    let server = TestServer::start("e2ee-mismatch").await;
    let mut options = server.options();
    options.media_encryption = Some(shared_key(1));
    let mut alice = server.user_with("alice", options).await;
    let mut bob = server.user("bob").await;
    refused_for_encryption(&alice, "bob").await;
    refused_for_encryption(&bob, "alice").await;
    // Nobody rang, nobody is in a call.
    alice.expect_quiet(Duration::from_millis(300)).await;
    bob.expect_quiet(Duration::from_millis(300)).await;
    // The same users with matching settings call as ever.
    let mut options = server.options();
    options.media_encryption = Some(shared_key(1));
    let mut carol = server.user_with("carol", options).await;
    connect(&mut alice, &mut carol).await;
    alice.calling.hangup().await.unwrap();
    alice.expect_end(EndReason::Hangup).await;
}

/// Carol's application gives a key for carol only.
struct OnlyCarol;

impl KeyProvider for OnlyCarol {
    fn key_of(&self, user_id: &str) -> Option<MediaKey> {
        (user_id == "carol").then(|| MediaKey::new([1; 32]).unwrap())
    }
}

fn rms(path: &Path) -> f32 {
    let samples = opencalling_tests::speech::recording_16k(path);
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

/// Alice's key material is not bob's: each hears the other as silence
/// (not noise) and is told the key is wrong. Carol's application has no
/// key for alice: carol hears silence and is told the key is missing,
/// while alice, whose shared key is carol's own, hears carol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_or_missing_key_plays_silence_and_says_so() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("e2ee-keys").await;
    let talking = |name: &str| CaptureDevice::Wav {
        path: fixture(name),
        looping: true,
    };
    let (alice_hears, bob_hears, carol_hears) = (
        record_path("e2ee-alice-hears"),
        record_path("e2ee-bob-hears"),
        record_path("e2ee-carol-hears"),
    );
    let mut alice = user_with_options(
        &server,
        "alice",
        talking("speech-a-16k.wav"),
        PlaybackDevice::Wav {
            path: alice_hears.clone(),
        },
        |options| options.media_encryption = Some(shared_key(1)),
    )
    .await;
    let mut bob = user_with_options(
        &server,
        "bob",
        talking("speech-b-16k.wav"),
        PlaybackDevice::Wav {
            path: bob_hears.clone(),
        },
        |options| options.media_encryption = Some(shared_key(2)),
    )
    .await;
    connect(&mut alice, &mut bob).await;
    let wrong = |who: &str| CallingEvent::MediaKeyProblem {
        user_id: uid(who),
        problem: KeyProblem::Wrong,
    };
    assert_eq!(bob.next().await, wrong("alice"));
    assert_eq!(alice.next().await, wrong("bob"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    crate::audio::end_call(&mut alice, &mut bob).await;
    let (alice_level, bob_level) = (rms(&alice_hears), rms(&bob_hears));
    println!("wrong keys: alice hears rms {alice_level:.5}, bob {bob_level:.5}");
    assert!(alice_level < 1e-3 && bob_level < 1e-3, "silence, not noise");

    let mut carol = user_with_options(
        &server,
        "carol",
        talking("speech-b-16k.wav"),
        PlaybackDevice::Wav {
            path: carol_hears.clone(),
        },
        |options| {
            options.media_encryption = Some(MediaKeys::PerUser(std::sync::Arc::new(OnlyCarol)));
        },
    )
    .await;
    connect(&mut alice, &mut carol).await;
    assert_eq!(
        carol.next().await,
        CallingEvent::MediaKeyProblem {
            user_id: uid("alice"),
            problem: KeyProblem::Missing,
        }
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    crate::audio::end_call(&mut alice, &mut carol).await;
    let (alice_level, carol_level) = (rms(&alice_hears), rms(&carol_hears));
    println!("carol without alice's key: carol hears rms {carol_level:.5}, alice {alice_level:.5}");
    assert!(carol_level < 1e-3, "carol hears silence: {carol_level}");
    assert!(alice_level > 0.01, "alice hears carol: {alice_level}");
}

/// The loudest level `listener` reported for `speaker` within `within`,
/// and the key problems it was told of meanwhile.
async fn loudest(listener: &mut User, speaker: &str, within: Duration) -> (u8, Vec<CallingEvent>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut loudest = 0;
    let mut problems = Vec::new();
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, listener.events.recv()).await {
        match event {
            CallingEvent::UserVoiceVolume { user_volumes, .. } => {
                for volume in user_volumes {
                    if volume.user_id.as_str() == speaker {
                        loudest = loudest.max(volume.volume);
                    }
                }
            }
            CallingEvent::MediaKeyProblem { .. } => problems.push(event),
            _ => {}
        }
    }
    (loudest, problems)
}

/// Across two nodes of a cluster: the key words cross from node to node
/// through the control, the sealed audio through the node trunk, and each
/// member hears the other; a device that does not encrypt is refused there
/// too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_calls_cross_cluster_nodes() {
    // Its audio threads run for seconds: not beside the speech tests'.
    let _alone = ONE_AT_A_TIME.lock().await;
    let cluster = crate::cluster::TestCluster::start("e2ee-cluster", 2).await;
    let tone = |frequency: f32, options: &mut calling_facade::ClientOptions| {
        options.audio = calling_facade::AudioDevices {
            capture: CaptureDevice::Synthetic(audio_device::Signal::Tone {
                frequency,
                amplitude: 0.3,
            }),
            playback: PlaybackDevice::Null,
        };
        options.media_encryption = Some(shared_key(9));
    };
    let mut alice_options = cluster.nodes[0].options();
    tone(440.0, &mut alice_options);
    let mut alice = cluster.nodes[0].user_with("alice", alice_options).await;
    let mut bob_options = cluster.nodes[1].options();
    tone(880.0, &mut bob_options);
    let mut bob = cluster.nodes[1].user_with("bob", bob_options).await;
    let _carol = cluster.nodes[1].user("carol").await;
    refused_for_encryption(&alice, "carol").await;
    connect(&mut alice, &mut bob).await;
    let ((alice_hears, alice_problems), (bob_hears, bob_problems)) = tokio::join!(
        loudest(&mut alice, "bob", Duration::from_secs(3)),
        loudest(&mut bob, "alice", Duration::from_secs(3))
    );
    assert!(
        alice_hears >= 20 && bob_hears >= 20,
        "alice hears bob at {alice_hears}, bob alice at {bob_hears}"
    );
    assert!(alice_problems.is_empty() && bob_problems.is_empty());
}
