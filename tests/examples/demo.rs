//! `cargo xtask demo`: a real OpenCalling server and five SDK users in one
//! process, talking over QUIC on loopback, playing a scripted scenario and
//! printing each user's events as they arrive. Alice and Bob really talk:
//! each plays a speech file into the call and records what it hears into
//! `target/demo/`; the measured mouth-to-ear delay and the jitter-buffer
//! statistics are printed at the end.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use std::path::Path;

use audio_device::room::{RoomConfig, room};
use calling_facade::{
    AudioDevices, CallOptions, CallType, CallingEvent, CaptureDevice, ClientOptions, CustomSink,
    CustomSource, PlaybackDevice, TRTCCalling, VoiceProcessing,
};
use opencalling_tests::speech;
use tokio::sync::mpsc;

struct User {
    name: &'static str,
    calling: Arc<TRTCCalling>,
    seen: mpsc::UnboundedReceiver<CallingEvent>,
}

impl User {
    /// Waits until this user has seen an event matching `wanted`.
    async fn wait_for(&mut self, wanted: impl Fn(&CallingEvent) -> bool) {
        let found = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(event) = self.seen.recv().await {
                if wanted(&event) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(
            found,
            Ok(true),
            "{} never saw the expected event",
            self.name
        );
    }
}

/// Alice on her laptop's speakers (a simulated room, `voice` processing
/// her microphone) and bob talking for six seconds; returns the energy of
/// what bob heard back after the first two.
async fn room_call(
    options: &ClientOptions,
    app: &calling_server::AppCredentials,
    voice: VoiceProcessing,
    bob_hears: &Path,
) -> f64 {
    let (speaker, microphone, _) = room(RoomConfig::default(), None, None);
    let mut alice_options = options.clone();
    alice_options.audio = AudioDevices {
        capture: CaptureDevice::Custom(CustomSource(Arc::new(std::sync::Mutex::new(microphone)))),
        playback: PlaybackDevice::Custom(CustomSink(Arc::new(std::sync::Mutex::new(speaker)))),
    };
    alice_options.voice_processing = Some(voice);
    let mut bob_options = options.clone();
    bob_options.audio = AudioDevices {
        capture: CaptureDevice::Wav {
            path: speech::fixture("speech-b-16k.wav"),
            looping: true,
        },
        playback: PlaybackDevice::Wav {
            path: bob_hears.to_path_buf(),
        },
    };
    let alice = TRTCCalling::new(alice_options);
    let bob = TRTCCalling::new(bob_options);
    let mut alice_events = alice.events();
    for (calling, name) in [(&alice, "alice"), (&bob, "bob")] {
        let sig = opencalling_tests::server::user_sig(app, name);
        calling.login(app.sdk_app_id, name, &sig).await.unwrap();
    }
    bob.call("alice", CallType::Audio).await.unwrap();
    while let Some(event) = alice_events.recv().await {
        if matches!(event, CallingEvent::Invited { .. }) {
            break;
        }
    }
    alice.accept().await.unwrap();
    tokio::time::sleep(Duration::from_secs(6)).await;
    bob.hangup().await.unwrap();
    for calling in [&alice, &bob] {
        calling.logout().await.unwrap();
    }
    // The playout threads finish their files when the call ends.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let heard = speech::recording_16k(bob_hears);
    heard
        .get(2 * 16_000..)
        .unwrap_or_default()
        .iter()
        .map(|sample| f64::from(*sample).powi(2))
        .sum()
}

#[allow(
    clippy::too_many_lines,
    reason = "a scripted scenario reads best as one story, top to bottom"
)]
#[tokio::main]
async fn main() {
    // Only warnings and errors: the events are the demo's output.
    tracing_subscriber::fmt()
        // Colours only for a person at a terminal, never in files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let (server, data_dir) = opencalling_tests::server::development_server("demo").await;
    let app = server.development_app().unwrap().clone();
    println!(
        "server: {} (development mode), certificate {}",
        server.local_addr(),
        server.fingerprint()
    );
    let options = ClientOptions::development(server.local_addr().to_string(), server.fingerprint());
    let started = Instant::now();

    // tests/ sits in the workspace root; the recordings go to its target/.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let out_dir = root.join("target").join("demo");
    std::fs::create_dir_all(&out_dir).unwrap();
    let says = |name: &str| match name {
        "alice" => Some(speech::fixture("speech-a-16k.wav")),
        "bob" => Some(speech::fixture("speech-b-16k.wav")),
        _ => None,
    };
    let hears = |name: &str| out_dir.join(format!("{name}-hears.wav"));
    // Dave's network goes through a proxy the demo can cut.
    let daves_network = opencalling_tests::proxy::FaultProxy::start(server.local_addr()).await;
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        let mut user_options = options.clone();
        if name == "dave" {
            user_options.server = daves_network.addr.to_string();
        }
        user_options.audio = match says(name) {
            Some(path) => AudioDevices {
                capture: CaptureDevice::Wav {
                    path,
                    looping: false,
                },
                playback: PlaybackDevice::Wav { path: hears(name) },
            },
            None => AudioDevices::none(),
        };
        let calling = TRTCCalling::new(user_options);
        let (tx, seen) = mpsc::unbounded_channel();
        calling.register_listener(move |event: &CallingEvent| {
            if !matches!(event, CallingEvent::UserVoiceVolume { .. }) {
                println!("[{:>8.1?}]   {name:<6} {}", started.elapsed(), event);
                let _ = tx.send(event.clone());
            }
        });
        let sig = opencalling_tests::server::user_sig(&app, name);
        calling.login(app.sdk_app_id, name, &sig).await.unwrap();
        users.push(User {
            name,
            calling,
            seen,
        });
    }
    println!(
        "[{:>8.1?}] five users logged in over QUIC",
        started.elapsed()
    );
    let [alice, bob, carol, dave, erin] = &mut users[..] else {
        unreachable!()
    };
    let step = |what: &str| println!("\n[{:>8.1?}] -- {what}", started.elapsed());
    let is_invited = |event: &CallingEvent| matches!(event, CallingEvent::Invited { .. });
    let is_enter = |event: &CallingEvent| matches!(event, CallingEvent::UserEnter { .. });

    step("dave calls erin; erin accepts");
    dave.calling.call("erin", CallType::Audio).await.unwrap();
    erin.wait_for(is_invited).await;
    erin.calling.accept().await.unwrap();
    dave.wait_for(is_enter).await;
    dave.wait_for(|event| matches!(event, CallingEvent::UserAudioAvailable { .. }))
        .await;

    step("dave's network drops for 5 s: his SDK notices, reconnects and resumes; the call goes on");
    daves_network.blackhole(true);
    dave.wait_for(|event| matches!(event, CallingEvent::Reconnecting))
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    daves_network.blackhole(false);
    dave.wait_for(|event| matches!(event, CallingEvent::Reconnected))
        .await;

    step("alice calls bob");
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    bob.wait_for(is_invited).await;
    step("bob accepts");
    bob.calling.accept().await.unwrap();
    alice.wait_for(is_enter).await;
    alice
        .wait_for(|event| matches!(event, CallingEvent::UserAudioAvailable { .. }))
        .await;

    step("alice and bob talk for four seconds (speech files, real Opus over QUIC datagrams)");
    tokio::time::sleep(Duration::from_secs(4)).await;

    step("alice invites carol into the call; carol rejects");
    alice.calling.call("carol", CallType::Audio).await.unwrap();
    carol.wait_for(is_invited).await;
    carol.calling.reject().await.unwrap();
    alice
        .wait_for(|event| matches!(event, CallingEvent::Reject { .. }))
        .await;

    step("alice invites dave, who is busy with erin");
    alice.calling.call("dave", CallType::Audio).await.unwrap();
    alice
        .wait_for(|event| matches!(event, CallingEvent::LineBusy { .. }))
        .await;

    step("bob mutes, then unmutes");
    bob.calling.set_mic_mute(true);
    alice
        .wait_for(|event| {
            matches!(
                event,
                CallingEvent::UserAudioAvailable {
                    available: false,
                    ..
                }
            )
        })
        .await;
    bob.calling.set_mic_mute(false);
    alice
        .wait_for(|event| {
            matches!(
                event,
                CallingEvent::UserAudioAvailable {
                    available: true,
                    ..
                }
            )
        })
        .await;

    step("alice invites carol again with a 2 s timeout; carol lets it ring");
    let options = CallOptions {
        timeout_ms: Some(2_000),
        user_data: Some("standup".into()),
    };
    alice
        .calling
        .call_with("carol", CallType::Audio, options)
        .await
        .unwrap();
    carol
        .wait_for(|event| matches!(event, CallingEvent::CallingTimeOut))
        .await;
    alice
        .wait_for(|event| matches!(event, CallingEvent::NoResp { .. }))
        .await;

    step("bob hangs up: alice is left alone and the call ends");
    bob.calling.hangup().await.unwrap();
    alice
        .wait_for(|event| matches!(event, CallingEvent::CallEnded { .. }))
        .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let stats = [
        (
            "alice",
            alice.calling.audio_stats().await.unwrap_or_default(),
        ),
        ("bob", bob.calling.audio_stats().await.unwrap_or_default()),
    ];

    step("erin logs in on a second device: the first is kicked, dave's call ends");
    let erin_tablet = TRTCCalling::new(ClientOptions::development(
        server.local_addr().to_string(),
        server.fingerprint(),
    ));
    let sig = opencalling_tests::server::user_sig(&app, "erin");
    erin_tablet
        .login(app.sdk_app_id, "erin", &sig)
        .await
        .unwrap();
    erin.wait_for(|event| matches!(event, CallingEvent::KickedOffline))
        .await;
    dave.wait_for(|event| matches!(event, CallingEvent::CallEnded { .. }))
        .await;

    step(
        "alice moves to her laptop's speakers (a simulated room): bob talks, first with her echo canceller off, then on",
    );
    alice.calling.logout().await.unwrap();
    bob.calling.logout().await.unwrap();
    let client_options =
        ClientOptions::development(server.local_addr().to_string(), server.fingerprint());
    let mut heard_back = Vec::new();
    for voice in [VoiceProcessing::NONE, VoiceProcessing::ALL] {
        let bob_hears = out_dir.join(if voice.echo_cancellation {
            "bob-hears-back-cancelled.wav"
        } else {
            "bob-hears-back.wav"
        });
        heard_back.push((
            voice,
            room_call(&client_options, &app, voice, &bob_hears).await,
        ));
    }
    let (_, without) = heard_back[0];
    let (_, with) = heard_back[1];
    println!(
        "  bob hears himself back from alice's room: {:.1} dB lower with her canceller on (echo return loss enhancement)",
        10.0 * (without / with.max(1e-12)).log10()
    );

    step("the server shuts down gracefully");
    server.shutdown().await;
    erin_tablet.destroy();
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!(
        "\n[{:>8.1?}] done. The call between alice and bob, measured:",
        started.elapsed()
    );
    for (listener, talker) in [("bob", "alice"), ("alice", "bob")] {
        let (Some(said), heard) = (says(talker), hears(listener)) else {
            continue;
        };
        let (correlation, delay_ms) = speech::match_speech(&said, &heard);
        println!(
            "  {listener} hears {talker}: mouth-to-ear delay {delay_ms:.0} ms (from each side's start of audio), correlation with the original {correlation:.2}"
        );
        println!("    recording: {}", heard.display());
    }
    for (listener, speakers) in &stats {
        for (speaker, jitter) in speakers {
            println!(
                "  {listener}'s jitter buffer for {speaker}: {} packets, {} late, delay {:.0} ms (target {:.0} ms), concealed {:.0} ms in {} events, {} FEC-recovered, {} DRED-recovered, accelerate {:.1} %, expand {:.1} %",
                jitter.packets_received,
                jitter.late_packets,
                jitter.current_delay_ms,
                jitter.target_delay_ms,
                jitter.concealed_samples as f64 / 48.0,
                jitter.concealment_events,
                jitter.fec_recovered,
                jitter.dred_recovered,
                100.0 * jitter.accelerate_rate(),
                100.0 * jitter.expand_rate()
            );
        }
    }
    println!(
        "\nCall someone yourself: a server (`cargo run --release -p calling-server`) and two `opencalling` softphones in terminals; README.md, \"Call someone\"."
    );
    let _ = std::fs::remove_dir_all(&data_dir);
}
