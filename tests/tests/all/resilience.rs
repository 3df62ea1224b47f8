//! What clients see when the server stops or dies, and what the server does
//! when a client dies: calls end with the right reason, nobody stays busy.

use std::time::{Duration, Instant};

use calling_api::{CallType, CallingEvent, EndReason, ErrorCode};
use calling_facade::{ClientOptions, TRTCCalling};
use calling_server::config::ServerConfig;
use calling_server::usersig;

use crate::child::ChildProcess;
use crate::support::*;

/// Without reconnection, a graceful shutdown ends the calls with its reason
/// and the session with an `onError`, as the original does.
#[tokio::test]
async fn graceful_shutdown_ends_calls_with_its_reason() {
    let server = TestServer::start("shutdown").await;
    let mut options = server.options();
    options.reconnect = None;
    let mut alice = server.user_with("alice", options.clone()).await;
    let mut bob = server.user_with("bob", options.clone()).await;
    let mut carol = server.user_with("carol", options).await;
    connect(&mut alice, &mut bob).await;
    alice.calling.call("carol", CallType::Audio).await.unwrap();
    carol.expect(&[invited("alice", &["bob"])]).await;
    server.server.shutdown().await;
    let notice = CallingEvent::Error {
        code: ErrorCode::SERVER_SHUTDOWN,
        msg: "the server is shutting down".into(),
    };
    for user in [&mut alice, &mut bob] {
        user.expect_end(EndReason::ServerShutdown).await;
        user.expect(std::slice::from_ref(&notice)).await;
        user.expect_quiet(Duration::from_millis(300)).await;
    }
    carol.expect(&[CallingEvent::CallingCancel, notice]).await;
}

/// A graceful restart (Ctrl-C or SIGTERM, then the server again on the same
/// address and data): the calls end with "server shutdown", and the SDK
/// treats the shutdown as a lost server, logging in again by itself.
#[tokio::test]
async fn after_a_graceful_restart_clients_log_in_again_by_themselves() {
    let config = test_config("restart");
    let data_dir = config.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let addr = server.server.local_addr();
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    connect(&mut alice, &mut bob).await;
    alice.calling.call("carol", CallType::Audio).await.unwrap();
    carol.expect(&[invited("alice", &["bob"])]).await;
    server.server.shutdown().await;
    for user in [&mut alice, &mut bob] {
        user.expect_end(EndReason::ServerShutdown).await;
        user.expect(&[CallingEvent::Reconnecting]).await;
    }
    carol
        .expect(&[CallingEvent::CallingCancel, CallingEvent::Reconnecting])
        .await;
    // Down for a while: they keep trying.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut config = ServerConfig::at(addr, data_dir.clone());
    config.shutdown_grace = Duration::from_secs(1);
    let restarted = TestServer::start_with(config).await;
    for user in [&mut alice, &mut bob, &mut carol] {
        user.expect(&[CallingEvent::Reconnected]).await;
    }
    // Logged in, not just connected: they call without logging in by hand.
    connect(&mut alice, &mut bob).await;
    carol.expect_quiet(Duration::from_millis(300)).await;
    drop(restarted);
    let _ = std::fs::remove_dir_all(&data_dir);
}

async fn spawn_server(
    data_dir: &std::path::Path,
    listen: &str,
    quic_endpoints: usize,
) -> ChildProcess {
    spawn_server_with(data_dir, listen, quic_endpoints, &[]).await
}

async fn spawn_server_with(
    data_dir: &std::path::Path,
    listen: &str,
    quic_endpoints: usize,
    more: &[(&str, String)],
) -> ChildProcess {
    let mut env = vec![
        ("OPENCALLING_LISTEN", listen.to_owned()),
        ("OPENCALLING_QUIC_ENDPOINTS", quic_endpoints.to_string()),
        ("OPENCALLING_DATA_DIR", data_dir.display().to_string()),
    ];
    env.extend(more.iter().cloned());
    ChildProcess::spawn("server", &env).await
}

/// Two SDK users of the child server `server` (its READY line: address,
/// fingerprint, app, key), in a call with each other.
async fn users_in_a_call(server: &ChildProcess) -> (User, User) {
    let (addr, fingerprint, app, key) = (
        server.ready[0].clone(),
        server.ready[1].parse().unwrap(),
        server.ready[2].parse::<u32>().unwrap(),
        server.ready[3].clone(),
    );
    let mut options = ClientOptions::development(addr, fingerprint);
    options.audio = calling_facade::AudioDevices::none();
    let mut users = Vec::new();
    for id in ["alice", "bob"] {
        let calling = TRTCCalling::new(options.clone());
        let events = calling.events();
        let sig = usersig::generate(u64::from(app), &key, id, 3_600, now(), None);
        calling.login(app, id, &sig).await.unwrap();
        users.push(User {
            id: uid(id),
            calling,
            events,
        });
    }
    let (mut alice, mut bob) = (users.remove(0), users.remove(0));
    connect(&mut alice, &mut bob).await;
    (alice, bob)
}

/// A server killed and not restarted: once the grace it announced has
/// surely passed (plus the time for it to have noticed the break), the
/// SDK ends the call by itself, once, and keeps trying to log in.
#[tokio::test]
async fn a_server_that_stays_dead_ends_the_call_after_its_grace() {
    let data_dir = temp_dir("dead-server");
    let grace = Duration::from_secs(2);
    let grace_env = ("OPENCALLING_RESUME_GRACE_SECS", grace.as_secs().to_string());
    let mut server = spawn_server_with(&data_dir, "127.0.0.1:0", 1, &[grace_env]).await;
    let (mut alice, mut bob) = users_in_a_call(&server).await;
    server.kill();
    let killed = Instant::now();
    let dead_after = calling_facade::ReconnectPolicy::default().dead_after;
    for user in [&mut alice, &mut bob] {
        user.expect(&[CallingEvent::Reconnecting]).await;
        user.expect_end(EndReason::ConnectionLost).await;
    }
    let took = killed.elapsed();
    // Ended by the SDK's own deadline (grace + two liveness periods after
    // the last word), not by a request timing out a minute later; the
    // bound leaves a loaded machine a few seconds.
    let deadline = grace + dead_after * 2;
    assert!(
        took >= grace && took < deadline + Duration::from_secs(5),
        "the call ended {took:?} after the kill; expected within {deadline:?}"
    );
    // Still trying: a server back on that address takes their logins.
    let addr = server.ready[0].clone();
    let restarted = spawn_server(&data_dir, &addr, 1).await;
    for user in [&mut alice, &mut bob] {
        user.expect(&[CallingEvent::Reconnected]).await;
    }
    connect(&mut alice, &mut bob).await;
    drop(restarted);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn a_killed_server_ends_calls_once_and_its_clients_log_in_again_by_themselves() {
    let data_dir = temp_dir("killed-server");
    let mut server = spawn_server(&data_dir, "127.0.0.1:0", 3).await;
    let (addr, fingerprint, app, key) = (
        server.ready[0].clone(),
        server.ready[1].parse().unwrap(),
        server.ready[2].parse::<u32>().unwrap(),
        server.ready[3].clone(),
    );
    let mut options = ClientOptions::development(addr.clone(), fingerprint);
    options.audio = calling_facade::AudioDevices::none();
    let sig = |user: &str| usersig::generate(u64::from(app), &key, user, 3_600, now(), None);
    let new_user = |id: &str| {
        let calling = TRTCCalling::new(options.clone());
        let events = calling.events();
        User {
            id: uid(id),
            calling,
            events,
        }
    };
    let mut alice = new_user("alice");
    let mut bob = new_user("bob");
    alice
        .calling
        .login(app, "alice", &sig("alice"))
        .await
        .unwrap();
    bob.calling.login(app, "bob", &sig("bob")).await.unwrap();
    connect(&mut alice, &mut bob).await;
    // Bare connections too, on whichever of the three endpoints they land.
    let trust = signaling_quic::ServerTrust::Fingerprint(fingerprint);
    let mut bare = Vec::new();
    for _ in 0..6 {
        let client = signaling_quic::connect(addr.parse().unwrap(), "localhost", &trust)
            .await
            .unwrap();
        bare.push(client);
    }

    // Crash, then come back on the same address with the same data (and
    // another number of endpoints): the restarted server answers the
    // clients' next packets with a stateless reset (same reset key; any
    // endpoint knows the old connection IDs), so they learn at once; the new server has
    // no session to resume, so each logs in again by itself and learns,
    // once, that its call was lost.
    server.kill();
    let restarted = spawn_server(&data_dir, &addr, 2).await;
    assert_eq!(
        restarted.ready[1],
        fingerprint.to_string(),
        "same certificate"
    );
    // Each bare connection's packets are answered with a reset, well
    // before the 12 s idle timeout. quinn sends an endpoint's resets at
    // least 20 ms apart (the SDK users' packets take their share), so each
    // bare connection keeps sending a datagram every 100 ms until it is
    // reset; one that was reset already has its send refused.
    for client in &bare {
        let connection = client.connection.clone();
        tokio::spawn(async move {
            while connection.send_datagram(b"anyone?".to_vec().into()).is_ok() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
    }
    for client in bare {
        let closed = tokio::time::timeout(Duration::from_secs(6), client.connection.closed())
            .await
            .expect("a stateless reset, not the idle timeout");
        assert!(
            matches!(closed, quinn::ConnectionError::Reset),
            "{closed:?}"
        );
    }
    for user in [&mut alice, &mut bob] {
        user.expect(&[CallingEvent::Reconnecting]).await;
        user.expect_end(EndReason::ConnectionLost).await;
        user.expect(&[CallingEvent::Reconnected]).await;
    }
    // Nobody is stuck: they call again without logging in by hand.
    connect(&mut alice, &mut bob).await;
    alice.expect_quiet(Duration::from_millis(300)).await;
    drop(restarted);
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test]
async fn a_client_that_dies_mid_call_leaves_nobody_busy() {
    let mut config = test_config("killed-client");
    config.switchboard.resume_grace = Duration::from_secs(2);
    let server = TestServer::start_with(config).await;
    let mut alice = server.user("alice").await;
    let mut bob_process = ChildProcess::spawn(
        "client",
        &[
            ("OPENCALLING_SERVER", server.server.local_addr().to_string()),
            (
                "OPENCALLING_SERVER_FINGERPRINT",
                server.server.fingerprint().to_string(),
            ),
            ("OPENCALLING_TEST_APP", server.app.sdk_app_id.to_string()),
            ("OPENCALLING_TEST_USER", "bob".to_owned()),
            ("OPENCALLING_TEST_SIG", server.sig("bob")),
        ],
    )
    .await;
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    alice.expect(&enter("bob")).await;
    bob_process.kill();
    // No goodbye from bob: the server learns from his silence (no
    // heartbeat), waits the grace for a resume, then bob leaves.
    let killed = Instant::now();
    alice
        .expect(&[CallingEvent::UserReconnecting {
            user_id: uid("bob"),
        }])
        .await;
    alice
        .expect_leave_then_end("bob", EndReason::ConnectionLost)
        .await;
    assert!(
        killed.elapsed() < signaling_quic::IDLE_TIMEOUT,
        "took {:?}: the silence went unnoticed until the idle timeout",
        killed.elapsed()
    );
    assert_eq!(server.server.stats().await.unwrap().calls, 0);
    // Bob comes back and is free to be called.
    let mut bob = server.user("bob").await;
    connect(&mut alice, &mut bob).await;
}
