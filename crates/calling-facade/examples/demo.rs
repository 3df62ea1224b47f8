//! `cargo xtask demo`: a real OpenCalling server and five SDK users in one
//! process, talking over QUIC on loopback, playing a scripted scenario and
//! printing each user's events as they arrive.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calling_facade::{CallOptions, CallType, CallingEvent, ClientOptions, TRTCCalling};
use calling_server::config::ServerConfig;
use calling_server::usersig;
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

fn describe(event: &CallingEvent) -> String {
    let name = event.original_name().unwrap_or("extension");
    match event {
        CallingEvent::Invited {
            sponsor,
            user_ids,
            is_from_group,
            call_type,
        } => {
            let others: Vec<&str> = user_ids.iter().map(|user| user.as_str()).collect();
            format!(
                "{name}(sponsor: {sponsor}, others: [{}], group: {is_from_group}, {call_type:?})",
                others.join(", ")
            )
        }
        CallingEvent::Error { code, msg } => format!("{name}({}, {msg:?})", code.as_i32()),
        CallingEvent::Reject { user_id }
        | CallingEvent::NoResp { user_id }
        | CallingEvent::LineBusy { user_id }
        | CallingEvent::UserEnter { user_id }
        | CallingEvent::UserLeave { user_id } => format!("{name}({user_id})"),
        CallingEvent::UserAudioAvailable { user_id, available } => {
            format!("{name}({user_id}, {available})")
        }
        CallingEvent::CallEnded { call_id, reason } => format!("  └ ended {call_id}: {reason}"),
        CallingEvent::KickedOffline => "  └ kicked offline".to_owned(),
        _ => name.to_owned(),
    }
}

#[tokio::main]
async fn main() {
    // Only warnings and errors: the events are the demo's output.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let data_dir = std::env::temp_dir().join(format!("opencalling-demo-{}", std::process::id()));
    let server = calling_server::start(ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: data_dir.clone(),
        ..ServerConfig::default()
    })
    .await
    .unwrap();
    let app = server.development_app().unwrap().clone();
    println!(
        "server: {} (development mode), certificate {}",
        server.local_addr(),
        server.fingerprint()
    );
    let options = ClientOptions::development(server.local_addr().to_string(), server.fingerprint());
    let started = Instant::now();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();

    let mut users = Vec::new();
    for name in ["alice", "bob", "carol", "dave", "erin"] {
        let calling = TRTCCalling::new(options.clone());
        let (tx, seen) = mpsc::unbounded_channel();
        calling.register_listener(move |event: &CallingEvent| {
            if !matches!(event, CallingEvent::UserVoiceVolume { .. }) {
                println!(
                    "[{:>8.1?}]   {name:<6} {}",
                    started.elapsed(),
                    describe(event)
                );
                let _ = tx.send(event.clone());
            }
        });
        let sig = usersig::generate(
            u64::from(app.sdk_app_id),
            app.secret_key.expose(),
            name,
            3_600,
            now,
            None,
        );
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

    step("alice calls bob");
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    bob.wait_for(is_invited).await;
    step("bob accepts");
    bob.calling.accept().await.unwrap();
    alice.wait_for(is_enter).await;
    alice
        .wait_for(|event| matches!(event, CallingEvent::UserAudioAvailable { .. }))
        .await;

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

    step("erin logs in on a second device: the first is kicked, dave's call ends");
    let erin_tablet = TRTCCalling::new(ClientOptions::development(
        server.local_addr().to_string(),
        server.fingerprint(),
    ));
    let sig = usersig::generate(
        u64::from(app.sdk_app_id),
        app.secret_key.expose(),
        "erin",
        3_600,
        now,
        None,
    );
    erin_tablet
        .login(app.sdk_app_id, "erin", &sig)
        .await
        .unwrap();
    erin.wait_for(|event| matches!(event, CallingEvent::KickedOffline))
        .await;
    dave.wait_for(|event| matches!(event, CallingEvent::CallEnded { .. }))
        .await;

    step("the server shuts down gracefully");
    server.shutdown().await;
    erin_tablet.destroy();
    tokio::time::sleep(Duration::from_millis(100)).await;
    println!("\n[{:>8.1?}] done", started.elapsed());
    let _ = std::fs::remove_dir_all(&data_dir);
}
