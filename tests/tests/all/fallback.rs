//! Networks that block UDP: the SDK races QUIC against the fallback
//! transport (WebSocket over TLS over TCP) and keeps the one that
//! connects; calls and audio work the same over either, and a QUIC member
//! and a TCP member can share a call.

use std::time::{Duration, Instant};

use calling_facade::{ClientOptions, Fallback};

use crate::audio::speech_both_ways;
use crate::support::*;
use opencalling_tests::proxy::FaultProxy;

/// Options whose QUIC goes into `blocked` (every UDP packet lost) and whose
/// fallback reaches the server.
fn udp_blocked(server: &TestServer, blocked: &FaultProxy, options: &mut ClientOptions) {
    options.server = blocked.addr.to_string();
    options.fallback = Fallback::At(server.server.fallback_addr().unwrap().to_string());
}

async fn blocked_proxy(server: &TestServer) -> FaultProxy {
    let proxy = FaultProxy::start(server.server.local_addr()).await;
    proxy.blackhole(true);
    proxy
}

#[tokio::test]
async fn udp_blocked_logs_in_over_the_fallback_within_a_second() {
    let server = TestServer::start("fallback-login").await;
    let blocked = blocked_proxy(&server).await;
    let mut options = server.options();
    udp_blocked(&server, &blocked, &mut options);
    let calling = calling_facade::TRTCCalling::new(options);
    let started = Instant::now();
    calling
        .login(server.app.sdk_app_id, "alice", &server.sig("alice"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(blocked.dropped() > 0, "QUIC was tried first");
    assert!(
        took < Duration::from_secs(2),
        "login over the fallback took {took:?}"
    );
    // Without the fallback the same network cannot log in at all.
    let mut quic_only = server.options();
    quic_only.server = blocked.addr.to_string();
    quic_only.fallback = Fallback::Off;
    quic_only.connect_timeout = Duration::from_secs(1);
    let error = calling_facade::TRTCCalling::new(quic_only)
        .login(server.app.sdk_app_id, "bob", &server.sig("bob"))
        .await
        .unwrap_err();
    assert_eq!(error.code, calling_api::ErrorCode::SERVER_UNREACHABLE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_crosses_a_call_whose_members_both_use_the_fallback() {
    let server = TestServer::start("fallback-speech").await;
    let blocked = blocked_proxy(&server).await;
    speech_both_ways(
        &server,
        |options| udp_blocked(&server, &blocked, options),
        |options| udp_blocked(&server, &blocked, options),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quic_member_and_a_tcp_member_share_a_call() {
    let server = TestServer::start("fallback-mixed").await;
    let blocked = blocked_proxy(&server).await;
    speech_both_ways(
        &server,
        |options| udp_blocked(&server, &blocked, options),
        |_| {},
    )
    .await;
}
