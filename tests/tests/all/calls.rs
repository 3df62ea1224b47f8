//! Every event of the calling API, end to end: SDK instances against a real
//! server over loopback QUIC.

use std::time::Duration;

use calling_api::{CallType, CallingEvent, EndReason, ErrorCode};
use calling_facade::CallOptions;

use crate::support::*;

#[tokio::test]
async fn on_user_voice_volume_reports_periodically_in_a_call() {
    let server = TestServer::start("volume").await;
    let mut options = server.options();
    options.voice_volume_interval = Duration::from_millis(100);
    let mut alice = server.client("alice");
    alice.calling.set_options(options);
    alice
        .calling
        .login(server.app.sdk_app_id, "alice", &server.sig("alice"))
        .await
        .unwrap();
    let mut bob = server.user("bob").await;
    connect(&mut alice, &mut bob).await;
    let mut reports = 0;
    while reports < 3 {
        let event = tokio::time::timeout(EVENT_WAIT, alice.events.recv())
            .await
            .unwrap()
            .unwrap();
        if let CallingEvent::UserVoiceVolume { user_volumes, .. } = event {
            let users: Vec<&str> = user_volumes
                .iter()
                .map(|volume| volume.user_id.as_str())
                .collect();
            assert_eq!(users, ["alice", "bob"], "the local user and every member");
            reports += 1;
        }
    }
}

#[tokio::test]
async fn the_api_in_the_wrong_state_is_an_error_not_a_panic() {
    let server = TestServer::start("states").await;
    let nobody = server.client("nobody");
    assert_eq!(
        nobody
            .calling
            .call("bob", CallType::Audio)
            .await
            .unwrap_err()
            .code,
        ErrorCode::NOT_LOGGED_IN
    );
    assert_eq!(
        nobody.calling.accept().await.unwrap_err().code,
        ErrorCode::NOT_LOGGED_IN
    );
    assert_eq!(
        nobody.calling.hangup().await.unwrap_err().code,
        ErrorCode::NOT_LOGGED_IN
    );
    assert_eq!(
        nobody.calling.logout().await.unwrap_err().code,
        ErrorCode::NOT_LOGGED_IN
    );

    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let carol = server.user("carol").await;
    assert_eq!(
        alice
            .calling
            .login(server.app.sdk_app_id, "alice", &server.sig("alice"))
            .await
            .unwrap_err()
            .code,
        ErrorCode::ALREADY_LOGGED_IN
    );
    assert_eq!(
        alice.calling.accept().await.unwrap_err().code,
        ErrorCode::NO_INVITATION
    );
    assert_eq!(
        alice.calling.reject().await.unwrap_err().code,
        ErrorCode::NO_INVITATION
    );
    assert_eq!(
        alice.calling.hangup().await.unwrap_err().code,
        ErrorCode::NOT_IN_CALL
    );
    assert_eq!(
        alice
            .calling
            .call("alice", CallType::Audio)
            .await
            .unwrap_err()
            .code,
        ErrorCode::CANNOT_CALL_SELF
    );
    assert_eq!(
        alice
            .calling
            .call("not valid!", CallType::Audio)
            .await
            .unwrap_err()
            .code,
        ErrorCode::INVALID_USER_ID
    );
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    bob.expect(&[invited("alice", &[])]).await;
    assert_eq!(
        bob.calling
            .call("carol", CallType::Audio)
            .await
            .unwrap_err()
            .code,
        ErrorCode::WRONG_CALL_STATE
    );
    bob.calling.accept().await.unwrap();
    alice.expect(&enter("bob")).await;
    assert_eq!(
        alice
            .calling
            .call("bob", CallType::Audio)
            .await
            .unwrap_err()
            .code,
        ErrorCode::ALREADY_IN_CALL
    );
    drop(carol);
}

#[tokio::test]
async fn an_offline_user_may_be_answered_at_once_instead() {
    let mut config = test_config("offline-at-once");
    config.switchboard.ring_offline_invitees = false;
    let server = TestServer::start_with(config).await;
    let mut alice = server.user("alice").await;
    alice
        .calling
        .call("nobody_home", CallType::Audio)
        .await
        .unwrap();
    alice.expect_no_response("nobody_home").await;
}

/// An application that shuts down and exits right away: the peer hears of
/// the hang-up at once, not after the connection's idle timeout. Alice runs
/// on a runtime of her own, dropped right after `shutdown` returns, as a
/// process exiting would (with `destroy` alone the logout dies with it).
#[tokio::test]
async fn shutdown_hangs_up_before_the_application_exits() {
    let server = TestServer::start("shutdown").await;
    let mut bob = server.user("bob").await;
    let (options, sig, app) = (server.options(), server.sig("alice"), server.app.sdk_app_id);
    let alice_app = std::thread::spawn(move || {
        let runtime = tokio::runtime::Runtime::new().unwrap();
        let took = runtime.block_on(async move {
            let alice = calling_facade::TRTCCalling::new(options);
            let mut events = alice.events();
            alice.login(app, "alice", &sig).await.unwrap();
            alice.call("bob", CallType::Audio).await.unwrap();
            while !matches!(events.recv().await, Some(CallingEvent::UserEnter { .. })) {}
            let started = std::time::Instant::now();
            alice.shutdown().await;
            started.elapsed()
        });
        // The process exits: every task of alice's runtime stops here.
        drop(runtime);
        took
    });
    bob.expect(&[invited("alice", &[])]).await;
    bob.calling.accept().await.unwrap();
    bob.expect(&enter("alice")).await;
    let took = tokio::task::spawn_blocking(move || alice_app.join().unwrap())
        .await
        .unwrap();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
    let leave = tokio::time::timeout(Duration::from_millis(500), bob.next())
        .await
        .expect("bob hears of the hang-up at once");
    assert_eq!(
        leave,
        CallingEvent::UserLeave {
            user_id: uid("alice")
        }
    );
    bob.expect_end(EndReason::Hangup).await;
    let carol = server.client("carol");
    carol.calling.shutdown().await;
    assert_eq!(
        carol
            .calling
            .call("bob", CallType::Audio)
            .await
            .unwrap_err()
            .code,
        ErrorCode::NOT_LOGGED_IN,
        "shutting down a logged-out instance is harmless"
    );
}

/// A development client needs nothing but the server's data directory: its
/// `server.json` says where the server is, how to trust it, and (in
/// development mode) the app to sign test UserSigs with.
#[tokio::test]
async fn a_development_server_is_found_by_its_data_directory() {
    let config = test_config("dev-helper");
    let data_dir = config.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let dev = calling_facade::dev::DevServer::from_data_dir(&data_dir).unwrap();
    assert_eq!(dev.address, server.server.local_addr().to_string());
    assert_eq!(dev.fingerprint, server.server.fingerprint());
    assert_eq!(dev.sdk_app_id, server.app.sdk_app_id);
    let printed = format!("{dev:?}");
    assert!(
        !printed.contains(server.app.secret_key.expose()),
        "{printed}"
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(data_dir.join("server.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "server.json holds a key: owner only");
    }
    let mut users = Vec::new();
    for name in ["alice", "bob"] {
        let mut options = dev.options();
        options.audio = calling_facade::AudioDevices::none();
        let calling = calling_facade::TRTCCalling::new(options);
        let events = calling.events();
        calling
            .login(dev.sdk_app_id, name, &dev.user_sig(name).unwrap())
            .await
            .unwrap();
        users.push(User {
            id: uid(name),
            calling,
            events,
        });
    }
    let (alice, bob) = users.split_at_mut(1);
    connect(&mut alice[0], &mut bob[0]).await;
    assert_eq!(
        calling_facade::dev::generate_test_user_sig(1, "", "alice", Duration::from_secs(60))
            .unwrap_err()
            .code,
        ErrorCode::INVALID_PARAMETER
    );
    let elsewhere = temp_dir("no-server-here");
    assert!(calling_facade::dev::DevServer::from_data_dir(&elsewhere).is_err());
}

/// A development server publishes, in `server.json`, the hashes of the
/// browser certificate it serves and of the next one (WebTransport's
/// `serverCertificateHashes`), certificates kept in its data directory so
/// that a restart publishes the same pair.
#[tokio::test]
async fn a_development_server_publishes_its_browser_certificate_hashes() {
    let config = test_config("browser-hashes");
    let data_dir = config.data_dir.clone();
    let published = |dir: &std::path::Path| -> Vec<String> {
        let text = std::fs::read_to_string(dir.join("server.json")).unwrap();
        let json: serde_json::Value = serde_json::from_str(&text).unwrap();
        json["browser_certificate_hashes"]
            .as_array()
            .expect("hashes published")
            .iter()
            .map(|hash| hash.as_str().unwrap().to_owned())
            .collect()
    };
    let server = TestServer::start_with(config.clone()).await;
    let hashes = published(&data_dir);
    assert_eq!(hashes.len(), 2);
    assert_ne!(hashes[0], hashes[1]);
    let own = server.server.fingerprint().to_string();
    assert!(
        !hashes.contains(&own),
        "native clients keep their pinned certificate"
    );
    // Each hash is the SHA-256 of a certificate kept in the data directory.
    let kept: Vec<String> = std::fs::read_dir(data_dir.join("browser-certificates"))
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "der"))
        .map(|path| signaling_quic::CertFingerprint::of(&std::fs::read(path).unwrap()).to_string())
        .collect();
    assert!(
        hashes.iter().all(|hash| kept.contains(hash)),
        "{hashes:?} {kept:?}"
    );
    server.server.shutdown().await;
    let _restarted = TestServer::start_with(config).await;
    assert_eq!(published(&data_dir), hashes, "a restart keeps the pair");
}

/// Each scenario runs twice: on one server, and with its users placed in
/// turn on three cluster nodes sharing one Redis (every message between
/// them then crosses the cluster's control, see docs/decisions/0007).
macro_rules! on_one_server_and_on_three_nodes {
    ($( $(#[$meta:meta])* async fn $name:ident($world:ident) $body:block )*) => {
        $(
            $(#[$meta])*
            mod $name {
                use super::*;

                async fn scenario($world: World) $body

                #[tokio::test]
                async fn on_one_server() {
                    scenario(World::one_server(stringify!($name)).await).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_three_nodes() {
                    scenario(World::three_nodes(stringify!($name)).await).await;
                }
            }
        )*
    };
}

on_one_server_and_on_three_nodes! {
    async fn on_invited_on_user_enter_and_audio_available(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        connect(&mut alice, &mut bob).await;
    }

    async fn on_reject_ends_the_callers_call(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        alice.calling.call("bob", CallType::Audio).await.unwrap();
        bob.expect(&[invited("alice", &[])]).await;
        bob.calling.reject().await.unwrap();
        alice
            .expect(&[CallingEvent::Reject {
                user_id: uid("bob"),
            }])
            .await;
        alice.expect_end(EndReason::Rejected).await;
        bob.expect_quiet(Duration::from_millis(200)).await;
    }

    async fn on_no_resp_and_on_calling_time_out_with_a_per_call_timeout(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        let options = CallOptions {
            timeout_ms: Some(400),
            user_data: None,
        };
        alice
            .calling
            .call_with("bob", CallType::Audio, options)
            .await
            .unwrap();
        bob.expect(&[invited("alice", &[]), CallingEvent::CallingTimeOut])
            .await;
        alice.expect_no_response("bob").await;
        // The timeout ended it: accepting now is refused.
        assert_eq!(
            bob.calling.accept().await.unwrap_err().code,
            ErrorCode::NO_INVITATION
        );
    }

    async fn on_line_busy_leaves_the_busy_call_alone(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        let mut carol = server.user("carol").await;
        connect(&mut alice, &mut bob).await;
        carol.calling.call("bob", CallType::Audio).await.unwrap();
        carol
            .expect(&[CallingEvent::LineBusy {
                user_id: uid("bob"),
            }])
            .await;
        carol.expect_end(EndReason::LineBusy).await;
        bob.expect_quiet(Duration::from_millis(200)).await;
        alice.expect_quiet(Duration::from_millis(10)).await;
    }

    async fn on_calling_cancel_when_the_caller_hangs_up_first(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        alice.calling.call("bob", CallType::Audio).await.unwrap();
        bob.expect(&[invited("alice", &[])]).await;
        alice.calling.hangup().await.unwrap();
        bob.expect(&[CallingEvent::CallingCancel]).await;
        alice.expect_end(EndReason::Cancelled).await;
    }

    async fn on_user_leave_and_on_call_end(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        connect(&mut alice, &mut bob).await;
        bob.calling.hangup().await.unwrap();
        bob.expect_end(EndReason::Hangup).await;
        alice.expect_leave_then_end("bob", EndReason::Hangup).await;
    }

    async fn on_user_audio_available_follows_mute(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        connect(&mut alice, &mut bob).await;
        bob.calling.set_mic_mute(true);
        assert!(bob.calling.is_mic_muted());
        alice
            .expect(&[CallingEvent::UserAudioAvailable {
                user_id: uid("bob"),
                available: false,
            }])
            .await;
        bob.calling.set_mic_mute(false);
        alice
            .expect(&[CallingEvent::UserAudioAvailable {
                user_id: uid("bob"),
                available: true,
            }])
            .await;
    }

    async fn on_error_when_kicked_by_a_second_login(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        connect(&mut alice, &mut bob).await;
        let mut alice_again = server.user("alice").await;
        alice.expect_end(EndReason::Kicked).await;
        alice
            .expect(&[
                CallingEvent::Error {
                    code: ErrorCode::KICKED_OFFLINE,
                    msg: ErrorCode::KICKED_OFFLINE.message().into(),
                },
                CallingEvent::KickedOffline,
            ])
            .await;
        bob.expect_leave_then_end("alice", EndReason::Hangup).await;
        // The kicked instance can do nothing more; the new one is reachable.
        assert_eq!(
            alice
                .calling
                .call("bob", CallType::Audio)
                .await
                .unwrap_err()
                .code,
            ErrorCode::NOT_LOGGED_IN
        );
        bob.calling.call("alice", CallType::Audio).await.unwrap();
        alice_again.expect(&[invited("bob", &[])]).await;
    }

    async fn a_three_way_call(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        let mut carol = server.user("carol").await;
        connect(&mut alice, &mut bob).await;
        alice.calling.call("carol", CallType::Audio).await.unwrap();
        carol.expect(&[invited("alice", &["bob"])]).await;
        carol.calling.accept().await.unwrap();
        alice.expect(&enter("carol")).await;
        bob.expect(&enter("carol")).await;
        let mut carol_saw = Vec::new();
        for _ in 0..4 {
            carol_saw.push(carol.next().await);
        }
        for other in ["alice", "bob"] {
            for event in enter(other) {
                assert!(
                    carol_saw.contains(&event),
                    "carol missed {event:?}: {carol_saw:?}"
                );
            }
        }
        // One leaves: the call goes on for the other two.
        carol.calling.hangup().await.unwrap();
        carol.expect_end(EndReason::Hangup).await;
        alice
            .expect(&[CallingEvent::UserLeave {
                user_id: uid("carol"),
            }])
            .await;
        bob.expect(&[CallingEvent::UserLeave {
            user_id: uid("carol"),
        }])
        .await;
        alice.expect_quiet(Duration::from_millis(200)).await;
        alice.calling.hangup().await.unwrap();
        bob.expect_leave_then_end("alice", EndReason::Hangup).await;
    }

    async fn glare_ends_in_one_call(server) {
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        // Both dial at once; whichever way the race goes, they end up together.
        let (from_alice, from_bob) = tokio::join!(
            alice
                .calling
                .call_with("bob", CallType::Audio, CallOptions::default()),
            bob.calling
                .call_with("alice", CallType::Audio, CallOptions::default())
        );
        match (from_alice, from_bob) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a, b, "one call, not two");
                alice.expect(&enter("bob")).await;
                bob.expect(&enter("alice")).await;
            }
            // Bob's invitation rang before his own call left: he is told to
            // answer it, and does.
            (Ok(_), Err(error)) => {
                assert_eq!(error.code, ErrorCode::WRONG_CALL_STATE);
                bob.expect(&[invited("alice", &[])]).await;
                bob.calling.accept().await.unwrap();
                alice.expect(&enter("bob")).await;
                bob.expect(&enter("alice")).await;
            }
            (Err(error), Ok(_)) => {
                assert_eq!(error.code, ErrorCode::WRONG_CALL_STATE);
                alice.expect(&[invited("bob", &[])]).await;
                alice.calling.accept().await.unwrap();
                alice.expect(&enter("bob")).await;
                bob.expect(&enter("alice")).await;
            }
            (Err(a), Err(b)) => panic!("both calls failed: {a}, {b}"),
        }
        assert_eq!(server.calls().await, 1);
    }

    async fn an_offline_user_rings_until_it_logs_in_and_answers(server) {
        let mut alice = server.user("alice").await;
        alice.calling.call("bob", CallType::Audio).await.unwrap();
        // Alice hears at once that bob is offline and the call waits.
        alice
            .expect(&[CallingEvent::InviteeOffline { user_id: uid("bob") }])
            .await;
        // Bob's phone wakes (a push, in production) and his app logs in.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut bob = server.user("bob").await;
        bob.expect(&[invited("alice", &[])]).await;
        bob.calling.accept().await.unwrap();
        alice.expect(&enter("bob")).await;
        bob.expect(&enter("alice")).await;
        alice.calling.hangup().await.unwrap();
        bob.expect_leave_then_end("alice", EndReason::Hangup).await;
    }

    async fn logout_ends_the_call_and_listeners_hear_everything(server) {
        use std::sync::{Arc, Mutex};
        let mut alice = server.user("alice").await;
        let mut bob = server.user("bob").await;
        let heard = Arc::new(Mutex::new(Vec::new()));
        let listener = {
            let heard = Arc::clone(&heard);
            bob.calling.register_listener(move |event: &CallingEvent| {
                if event.original_name().is_some() && !event.is_report()
                {
                    heard
                        .lock()
                        .unwrap()
                        .push(event.original_name().unwrap_or_default());
                }
            })
        };
        connect(&mut alice, &mut bob).await;
        alice.calling.logout().await.unwrap();
        alice.expect_end(EndReason::Hangup).await;
        bob.expect_leave_then_end("alice", EndReason::Hangup).await;
        assert_eq!(
            *heard.lock().unwrap(),
            [
                "onInvited",
                "onUserEnter",
                "onUserAudioAvailable",
                "onUserLeave",
                "onCallEnd"
            ]
        );
        assert!(bob.calling.unregister_listener(listener));
        assert!(!bob.calling.unregister_listener(listener));
        // Logged out: calling is impossible; logging in again works.
        assert_eq!(
            alice
                .calling
                .call("bob", CallType::Audio)
                .await
                .unwrap_err()
                .code,
            ErrorCode::NOT_LOGGED_IN
        );
        alice
            .calling
            .login(server.app.sdk_app_id, "alice", &server.sig("alice"))
            .await
            .unwrap();
        alice.calling.call("bob", CallType::Audio).await.unwrap();
        bob.expect(&[invited("alice", &[])]).await;
    }
}
