//! Real calls with real audio over loopback: SDK instances with WAV and
//! synthetic devices, the server relaying their datagrams.

use std::path::PathBuf;
use std::time::Duration;

use audio_device::Signal;
use calling_api::{CallType, CallingEvent, EndReason};
use calling_facade::{AudioDevices, CaptureDevice, PlaybackDevice, TRTCCalling};
use opencalling_tests::speech::{fixture, match_speech, recording_16k};

use crate::support::*;

/// A user with the given devices, logged in.
async fn user_with(
    server: &TestServer,
    name: &str,
    capture: CaptureDevice,
    playback: PlaybackDevice,
) -> User {
    user_with_options(server, name, capture, playback, |_| {}).await
}

/// [`user_with`], its options changed by `tweak` (another transport…).
pub(crate) async fn user_with_options(
    server: &TestServer,
    name: &str,
    capture: CaptureDevice,
    playback: PlaybackDevice,
    tweak: impl FnOnce(&mut calling_facade::ClientOptions),
) -> User {
    let mut options = server.options();
    options.audio = AudioDevices { capture, playback };
    tweak(&mut options);
    let calling = TRTCCalling::new(options);
    let events = calling.events();
    calling
        .login(server.app.sdk_app_id, name, &server.sig(name))
        .await
        .unwrap();
    User {
        id: uid(name),
        calling,
        events,
    }
}

pub(crate) fn record_path(tag: &str) -> PathBuf {
    temp_dir(tag).with_extension("wav")
}

/// The audio tests run real-time threads; one at a time keeps them honest
/// on a two-core machine.
pub(crate) static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

pub(crate) async fn end_call(caller: &mut User, callee: &mut User) {
    caller.calling.hangup().await.unwrap();
    caller.expect_end(EndReason::Hangup).await;
    callee
        .expect(&[CallingEvent::UserLeave {
            user_id: caller.id.clone(),
        }])
        .await;
    callee.expect_end(EndReason::Hangup).await;
    // The playout threads finish their files when the call ends.
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_crosses_the_call_both_ways_at_once() {
    let server = TestServer::start("speech").await;
    let heard = speech_both_ways(&server, |_| {}, |_| {}).await;
    for stats in heard {
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!(stats[0].1.packet_ms, 20.0, "the default frames");
    }
}

/// Both sides want low latency: once each has said it plays 10 ms frames
/// (within about a second), each sends them, and speech crosses as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn low_latency_speech_crosses_in_ten_ms_frames() {
    let server = TestServer::start("speech-low-latency").await;
    let heard = speech_both_ways(
        &server,
        |options| options.low_latency = true,
        |options| options.low_latency = true,
    )
    .await;
    for stats in heard {
        assert_eq!(stats.len(), 1, "{stats:?}");
        assert_eq!(stats[0].1.packet_ms, 10.0, "{stats:?}");
    }
}

/// A member that never says it plays 10 ms frames (an older SDK, a client
/// written from the protocol before kind 4) keeps a low-latency sender at
/// 20 ms, which it decodes as always; once it says so, frames turn 10 ms.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_ms_frames_wait_until_every_receiver_plays_them() {
    use signaling_proto::{DatagramKind, MediaHeader, ReceiverFeatures};
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("low-latency-old-peer").await;
    let alice = user_with_options(
        &server,
        "alice",
        CaptureDevice::Synthetic(Signal::Tone {
            frequency: 440.0,
            amplitude: 0.5,
        }),
        PlaybackDevice::Null,
        |options| options.low_latency = true,
    )
    .await;
    let mut bob = crate::media::raw_login(&server, "bob").await;
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    let alice_flow = crate::media::raw_accept(&mut bob).await;
    // What bob gets for `span`: the duration of each audio packet, and
    // whether alice told him what she plays.
    let mut decoder = audio_pipeline::Decoder::with_complexity(0).unwrap();
    let mut listen = async |span: Duration| {
        let mut durations = Vec::new();
        let mut told = false;
        let mut energy = 0.0_f32;
        let until = tokio::time::Instant::now() + span;
        while let Ok(Ok(datagram)) =
            tokio::time::timeout_at(until, bob.connection.read_datagram()).await
        {
            let (header, payload) = MediaHeader::decode(&datagram).unwrap();
            assert_eq!(header.flow_id, alice_flow);
            match header.kind {
                DatagramKind::Audio => {
                    durations.push(audio_pipeline::packet_samples(payload).unwrap());
                    // An old receiver decodes 20 ms at a time.
                    let mut frame = [0.0; audio_pipeline::FRAME_SAMPLES];
                    if decoder.decode(payload, &mut frame).unwrap() == 960 {
                        energy += frame.iter().map(|s| s * s).sum::<f32>();
                    }
                }
                DatagramKind::Features => {
                    told |= ReceiverFeatures::from_payload(payload)
                        .is_some_and(ReceiverFeatures::plays_short_frames);
                }
                _ => {}
            }
        }
        (durations, told, energy)
    };
    let (before, told, energy) = listen(Duration::from_millis(2_500)).await;
    assert!(before.len() > 100, "{} packets in 2.5 s", before.len());
    assert!(
        before.iter().all(|samples| *samples == 960),
        "20 ms frames only, to a receiver that said nothing: {before:?}"
    );
    assert!(energy > 100.0, "the tone decodes: energy {energy}");
    assert!(told, "alice says what she plays");
    // Bob says he plays 10 ms frames (as an SDK does once a second).
    crate::media::send_about(
        &bob,
        DatagramKind::Features,
        alice_flow,
        &ReceiverFeatures::ours().to_payload(),
    );
    let (after, ..) = listen(Duration::from_millis(1_000)).await;
    let tail = &after[after.len().saturating_sub(50)..];
    assert!(
        tail.len() == 50 && tail.iter().all(|samples| *samples == 480),
        "10 ms frames once bob plays them: {after:?}"
    );
    alice.calling.hangup().await.unwrap();
}

/// DRED instead of FEC only when asked, by a receiver that decodes it: a
/// raw peer tells alice's SDK it loses 10 % of her audio and, in turn,
/// says nothing of DRED (an older SDK), decodes it and asks for it (its
/// losses come in bursts), and decodes it without asking; then asks again
/// while alice sends 10 ms frames, which keep FEC.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dred_replaces_fec_only_while_the_receiver_asks_for_it() {
    use signaling_proto::{DatagramKind, LossReport, MediaHeader, ReceiverFeatures};
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("dred-negotiation").await;
    let alice = user_with_options(
        &server,
        "alice",
        CaptureDevice::Wav {
            path: fixture("speech-a-16k.wav"),
            looping: true,
        },
        PlaybackDevice::Null,
        |_| {},
    )
    .await;
    let mut bob = crate::media::raw_login(&server, "bob").await;
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    let alice_flow = crate::media::raw_accept(&mut bob).await;
    let mut decoder = audio_pipeline::Decoder::new().unwrap();
    // Bob's word to alice: 10 % lost, and these features.
    let tell = |features: ReceiverFeatures| {
        for (kind, payload) in [
            (
                DatagramKind::Report,
                LossReport { loss_percent: 10 }.to_payload(),
            ),
            (DatagramKind::Features, features.to_payload()),
        ] {
            crate::media::send_about(&bob, kind, alice_flow, &payload);
        }
    };
    // Of alice's audio packets over the last second of `span`: how many
    // carry FEC, how many DRED, of how many.
    let listen = async |decoder: &mut audio_pipeline::Decoder, span: Duration| {
        let until = tokio::time::Instant::now() + span;
        let from = until - Duration::from_secs(1);
        let (mut fec, mut dred, mut packets) = (0, 0, 0);
        while let Ok(Ok(datagram)) =
            tokio::time::timeout_at(until, bob.connection.read_datagram()).await
        {
            let (header, payload) = MediaHeader::decode(&datagram).unwrap();
            if header.kind != DatagramKind::Audio || tokio::time::Instant::now() < from {
                continue;
            }
            packets += 1;
            fec += usize::from(audio_pipeline::has_fec(payload));
            dred += usize::from(decoder.parse_dred(payload).unwrap() > 0);
        }
        (fec, dred, packets)
    };
    // A word about alice's audio before her media is up is dropped: wait
    // for her first packet. Then each word is said twice, 0.7 s apart, as
    // an SDK repeats it every second (a datagram may be lost under load).
    let first_audio = async {
        loop {
            let datagram = bob.connection.read_datagram().await.unwrap();
            let (header, _) = MediaHeader::decode(&datagram).unwrap();
            if header.kind == DatagramKind::Audio {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), first_audio)
        .await
        .expect("alice's audio within 10 s");
    let say = async |features: ReceiverFeatures| {
        tell(features);
        tokio::time::sleep(Duration::from_millis(700)).await;
        tell(features);
    };
    let plain = ReceiverFeatures::ours();
    say(plain).await;
    let (fec, dred, packets) = listen(&mut decoder, Duration::from_millis(1_800)).await;
    assert!(packets > 40, "{packets} packets in a second");
    assert!(
        fec > packets / 2 && dred == 0,
        "an older receiver: FEC {fec}, DRED {dred} of {packets}"
    );
    let asking = plain
        .with(ReceiverFeatures::DECODES_DRED, true)
        .with(ReceiverFeatures::WANTS_DRED, true);
    say(asking).await;
    let (fec, dred, packets) = listen(&mut decoder, Duration::from_millis(1_800)).await;
    assert!(
        fec == 0 && dred > packets / 2,
        "asked for DRED: FEC {fec}, DRED {dred} of {packets}"
    );
    say(asking.with(ReceiverFeatures::WANTS_DRED, false)).await;
    let (fec, dred, packets) = listen(&mut decoder, Duration::from_millis(1_800)).await;
    assert!(
        fec > packets / 2 && dred == 0,
        "no longer asked: FEC {fec}, DRED {dred} of {packets}"
    );
    // In 10 ms frames (bob plays them) alice keeps FEC even when asked:
    // libopus would put no DRED in packets that short, and FEC would be
    // off (before the fix: FEC 0, DRED 0 of 100).
    alice.calling.set_low_latency(true);
    say(asking).await;
    let (fec, dred, packets) = listen(&mut decoder, Duration::from_millis(1_800)).await;
    assert!(packets > 80, "10 ms frames: {packets} packets in a second");
    assert!(
        fec > packets / 2 && dred == 0,
        "asked, in 10 ms frames: FEC {fec}, DRED {dred} of {packets}"
    );
    alice.calling.hangup().await.unwrap();
}

/// One side decodes with the neural concealment and enhancement off
/// (classic libopus), the other at the default (NoLACE): the choice is each
/// receiver's own, and both hear clean speech.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_and_a_neural_receiver_both_hear_clean_speech() {
    let server = TestServer::start("speech-decoders").await;
    speech_both_ways(
        &server,
        |options| options.decoder_complexity = 0,
        |options| {
            assert_eq!(
                options.decoder_complexity,
                calling_facade::DEFAULT_DECODER_COMPLEXITY
            );
        },
    )
    .await;
}

/// Alice and bob, their options changed by `alice_options` and
/// `bob_options`, talk at once for 4 s: each hears the other's speech,
/// correlated with what was said and within the mouth-to-ear budget.
pub async fn speech_both_ways(
    server: &TestServer,
    alice_options: impl FnOnce(&mut calling_facade::ClientOptions),
    bob_options: impl FnOnce(&mut calling_facade::ClientOptions),
) -> [Vec<(calling_api::UserId, calling_facade::JitterStats)>; 2] {
    let _alone = ONE_AT_A_TIME.lock().await;
    speech_both_ways_while_alone(server, alice_options, bob_options).await
}

/// [`speech_both_ways`] for a caller that holds [`ONE_AT_A_TIME`] already
/// (it has more to measure before another audio test may run).
#[allow(
    clippy::print_stdout,
    reason = "the measured figures, for the log of a test run"
)]
pub async fn speech_both_ways_while_alone(
    server: &TestServer,
    alice_options: impl FnOnce(&mut calling_facade::ClientOptions),
    bob_options: impl FnOnce(&mut calling_facade::ClientOptions),
) -> [Vec<(calling_api::UserId, calling_facade::JitterStats)>; 2] {
    let (alice_hears, bob_hears) = (record_path("alice-hears"), record_path("bob-hears"));
    let alice_says = fixture("speech-a-16k.wav");
    let bob_says = fixture("speech-b-16k.wav");
    let mut alice = user_with_options(
        server,
        "alice",
        CaptureDevice::Wav {
            path: alice_says.clone(),
            looping: false,
        },
        PlaybackDevice::Wav {
            path: alice_hears.clone(),
        },
        alice_options,
    )
    .await;
    let mut bob = user_with_options(
        server,
        "bob",
        CaptureDevice::Wav {
            path: bob_says.clone(),
            looping: false,
        },
        PlaybackDevice::Wav {
            path: bob_hears.clone(),
        },
        bob_options,
    )
    .await;
    connect(&mut alice, &mut bob).await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    end_call(&mut alice, &mut bob).await;

    for (said, heard, who) in [
        (&alice_says, &bob_hears, "bob hears alice"),
        (&bob_says, &alice_hears, "alice hears bob"),
    ] {
        // 250 ms segments, each within ±50 ms of the overall delay.
        let (correlation, delay_ms) = match_speech(said, heard);
        println!(
            "{who}: correlation {correlation:.2}, delay {delay_ms:.0} ms after the call connected"
        );
        // Stated thresholds (measured here: 0.95 at 66–86 ms, idle machine):
        // the median 250 ms segment matches the original above 0.8, and the
        // speech arrives within a mouth-to-ear budget of 250 ms. The delay is
        // counted from each side's own start of audio, a few ms apart.
        assert!(
            correlation > 0.8,
            "{who}: correlation {correlation:.2} at {delay_ms:.0} ms"
        );
        assert!(delay_ms < 250.0, "{who}: delay {delay_ms:.0} ms");
    }
    let relayed = server.server.relay_counts();
    assert!(
        relayed.forwarded > 300,
        "both directions relayed: {relayed:?}"
    );
    assert_eq!(relayed.dropped_malformed, 0);
    [
        alice.calling.audio_stats().await.unwrap(),
        bob.calling.audio_stats().await.unwrap(),
    ]
}

fn rms(samples: &[f32]) -> f32 {
    (samples.iter().map(|s| s * s).sum::<f32>() / samples.len().max(1) as f32).sqrt()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mute_silences_the_far_end_and_unmute_brings_it_back() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("mute-audio").await;
    let bob_hears = record_path("bob-hears-mute");
    let tone = Signal::Tone {
        frequency: 440.0,
        amplitude: 0.3,
    };
    let mut alice = user_with(
        &server,
        "alice",
        CaptureDevice::Synthetic(tone),
        PlaybackDevice::Null,
    )
    .await;
    let mut bob = user_with(
        &server,
        "bob",
        CaptureDevice::Silence,
        PlaybackDevice::Wav {
            path: bob_hears.clone(),
        },
    )
    .await;
    connect(&mut alice, &mut bob).await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    alice.calling.set_mic_mute(true);
    bob.expect(&[CallingEvent::UserAudioAvailable {
        user_id: uid("alice"),
        available: false,
    }])
    .await;
    tokio::time::sleep(Duration::from_millis(1_200)).await;
    alice.calling.set_mic_mute(false);
    bob.expect(&[CallingEvent::UserAudioAvailable {
        user_id: uid("alice"),
        available: true,
    }])
    .await;
    tokio::time::sleep(Duration::from_millis(1_000)).await;
    end_call(&mut alice, &mut bob).await;

    let heard = recording_16k(&bob_hears);
    let windows: Vec<f32> = heard.chunks(1_600).map(rms).collect(); // 100 ms each
    let loud = |level: &f32| *level > 0.05;
    let first_loud = windows.iter().position(loud).expect("the tone was heard");
    let silent_run = windows[first_loud..]
        .iter()
        .skip_while(|level| loud(level))
        .take_while(|level| !loud(level))
        .count();
    assert!(
        silent_run >= 6,
        "a silence of at least 600 ms while muted: {windows:?}"
    );
    let after = windows[first_loud..]
        .iter()
        .skip_while(|level| loud(level))
        .skip_while(|level| !loud(level))
        .filter(|level| loud(level))
        .count();
    assert!(after >= 5, "the tone came back after unmuting: {windows:?}");
}

/// Power of `frequency` in `signal` (16 kHz), by the Goertzel algorithm.
fn tone_power(signal: &[f32], frequency: f32) -> f32 {
    let coefficient = 2.0 * (std::f32::consts::TAU * frequency / 16_000.0).cos();
    let (mut previous, mut before) = (0.0_f32, 0.0_f32);
    for sample in signal {
        let current = sample + coefficient * previous - before;
        before = previous;
        previous = current;
    }
    (previous * previous + before * before - coefficient * previous * before) / signal.len() as f32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_three_way_call_each_hears_the_other_two() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("three-audio").await;
    let carol_hears = record_path("carol-hears");
    let mut alice = user_with(
        &server,
        "alice",
        CaptureDevice::Synthetic(Signal::Tone {
            frequency: 400.0,
            amplitude: 0.2,
        }),
        PlaybackDevice::Null,
    )
    .await;
    let mut bob = user_with(
        &server,
        "bob",
        CaptureDevice::Synthetic(Signal::Tone {
            frequency: 1_000.0,
            amplitude: 0.2,
        }),
        PlaybackDevice::Null,
    )
    .await;
    let mut carol = user_with(
        &server,
        "carol",
        CaptureDevice::Silence,
        PlaybackDevice::Wav {
            path: carol_hears.clone(),
        },
    )
    .await;
    connect(&mut alice, &mut bob).await;
    alice.calling.call("carol", CallType::Audio).await.unwrap();
    carol.expect(&[invited("alice", &["bob"])]).await;
    carol.calling.accept().await.unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Levels come from real audio: carol's report shows both speakers.
    let mut levels_seen = false;
    for _ in 0..20 {
        if let Some(CallingEvent::UserVoiceVolume { user_volumes, .. }) = carol.events.recv().await
        {
            let loud: Vec<&str> = user_volumes
                .iter()
                .filter(|v| v.volume > 30)
                .map(|v| v.user_id.as_str())
                .collect();
            if loud.contains(&"alice") && loud.contains(&"bob") {
                levels_seen = true;
                break;
            }
        }
    }
    assert!(
        levels_seen,
        "carol's onUserVoiceVolume reports alice and bob speaking"
    );
    carol.calling.hangup().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heard = recording_16k(&carol_hears);
    let tail = &heard[heard.len().saturating_sub(16_000)..];
    let (low, high, absent) = (
        tone_power(tail, 400.0),
        tone_power(tail, 1_000.0),
        tone_power(tail, 700.0),
    );
    assert!(
        low > 20.0 * absent && high > 20.0 * absent,
        "400 Hz {low}, 1 kHz {high}, 700 Hz {absent}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_keeps_flowing_over_a_lossy_path() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("lossy").await;
    let proxy = crate::lossy::LossyProxy::start(server.server.local_addr(), 0.10, 42).await;
    let bob_hears = record_path("bob-hears-lossy");
    let alice_says = fixture("speech-a-16k.wav");
    // Alice reaches the server through the lossy proxy, bob directly.
    let mut alice_options = server.options();
    alice_options.server = proxy.addr.to_string();
    alice_options.audio = AudioDevices {
        capture: CaptureDevice::Wav {
            path: alice_says.clone(),
            looping: false,
        },
        playback: PlaybackDevice::Null,
    };
    let calling = TRTCCalling::new(alice_options);
    let events = calling.events();
    calling
        .login(server.app.sdk_app_id, "alice", &server.sig("alice"))
        .await
        .unwrap();
    let mut alice = User {
        id: uid("alice"),
        calling,
        events,
    };
    let mut bob = user_with(
        &server,
        "bob",
        CaptureDevice::Silence,
        PlaybackDevice::Wav {
            path: bob_hears.clone(),
        },
    )
    .await;
    connect(&mut alice, &mut bob).await;
    // Bob tells alice what he loses of her audio, about once a second.
    let mut worst_reported = None;
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let reported = alice.calling.reported_loss().await.unwrap();
        worst_reported = worst_reported.max(reported);
    }
    let stats = bob.calling.audio_stats().await.unwrap();
    // Nothing stalls: the call still answers and ends cleanly.
    end_call(&mut alice, &mut bob).await;
    // 10 % of alice's packets are lost on the way: bob's reports say so,
    // and alice's encoder is told (windows of ~50 packets: 5 to 40 %).
    let worst_reported = worst_reported.expect("bob reported alice's loss");
    assert!(
        (5..=40).contains(&worst_reported),
        "bob reports {worst_reported} % of alice's audio lost"
    );

    assert!(
        proxy.dropped.load(std::sync::atomic::Ordering::Relaxed) > 20,
        "the path did lose packets"
    );
    let (_, alice_stats) = stats
        .iter()
        .find(|(user, _)| user.as_str() == "alice")
        .expect("bob heard alice");
    assert!(alice_stats.packets_received > 100, "{alice_stats:?}");
    assert!(
        alice_stats.fec_recovered + alice_stats.dred_recovered + alice_stats.concealment_events > 5,
        "loss was repaired by FEC or DRED, or concealed: {alice_stats:?}"
    );
    let (correlation, delay_ms) = match_speech(&alice_says, &bob_hears);
    println!("10 % loss: correlation {correlation:.2}, delay {delay_ms:.0} ms, {alice_stats:?}");
    // Stated threshold: with 10 % loss each way the speech is still there.
    assert!(correlation > 0.5, "correlation {correlation:.2}");
}

/// A device that cannot be opened is the application's to know, not only
/// the log's: the call goes on, and the event says which side and why.
#[tokio::test]
async fn an_unusable_device_is_reported_and_the_call_goes_on() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("no-device").await;
    let missing = temp_dir("no-device-files").join("missing.wav");
    let unwritable = temp_dir("no-device-files")
        .join("no-such-dir")
        .join("heard.wav");
    let mut alice = user_with(
        &server,
        "alice",
        CaptureDevice::Wav {
            path: missing.clone(),
            looping: false,
        },
        PlaybackDevice::Wav {
            path: unwritable.clone(),
        },
    )
    .await;
    let mut bob = server.user("bob").await;
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    bob.expect(&[invited("alice", &[])]).await;
    bob.calling.accept().await.unwrap();
    bob.expect(&enter("alice")).await;
    // The audio threads start as alice enters: their news and bob's
    // entrance come in either order.
    let mut reasons = std::collections::BTreeMap::new();
    let mut others = Vec::new();
    while reasons.len() < 2 || others.len() < 2 {
        match alice.next().await {
            CallingEvent::AudioDeviceUnavailable { device, reason } => {
                reasons.insert(device.to_string(), reason);
            }
            other => others.push(other),
        }
    }
    assert_eq!(others, enter("bob"));
    assert!(reasons["microphone"].contains("missing.wav"), "{reasons:?}");
    assert!(reasons["speaker"].contains("heard.wav"), "{reasons:?}");
    // The call itself is unharmed.
    end_call(&mut alice, &mut bob).await;
}

/// The click probe's mouth to ear through the whole stack, with each
/// profile, under a generous bound (a loaded test machine; the benchmark
/// holds the targets, 40 and 30 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clicks_cross_a_call_within_a_generous_bound() {
    use audio_device::probe::{ClickDetector, ClickProbe, click_latencies};
    use calling_facade::{CustomSink, CustomSource};
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start("clicks").await;
    for low_latency in [false, true] {
        let (probe, said) = ClickProbe::new();
        let (detector, heard) = ClickDetector::new();
        let mut alice = user_with_options(
            &server,
            "alice",
            CaptureDevice::Custom(CustomSource(std::sync::Arc::new(std::sync::Mutex::new(
                probe,
            )))),
            PlaybackDevice::Null,
            |options| options.low_latency = low_latency,
        )
        .await;
        let mut bob = user_with_options(
            &server,
            "bob",
            CaptureDevice::Silence,
            PlaybackDevice::Custom(CustomSink(std::sync::Arc::new(std::sync::Mutex::new(
                detector,
            )))),
            |options| options.low_latency = low_latency,
        )
        .await;
        connect(&mut alice, &mut bob).await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        end_call(&mut alice, &mut bob).await;
        let said = said.lock().unwrap().clone();
        let heard = heard.lock().unwrap().clone();
        let mut latencies = click_latencies(&said, &heard);
        assert!(
            latencies.len() + 3 >= said.len() && latencies.len() >= 12,
            "low latency {low_latency}: {} of {} clicks heard",
            latencies.len(),
            said.len()
        );
        latencies.sort();
        let p50 = latencies[latencies.len() / 2];
        assert!(
            p50 < Duration::from_millis(150),
            "low latency {low_latency}: p50 {p50:?}"
        );
        alice.calling.logout().await.unwrap();
        bob.calling.logout().await.unwrap();
    }
}
