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

/// The status a WebSocket upgrade at the fallback gets from `server`, as
/// a page from `origin` (none: a native client) asks for it.
async fn upgrade_status(server: &TestServer, origin: Option<&str>) -> u16 {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let trust = signaling_tls::ServerTrust::Fingerprint(server.server.fingerprint());
    let mut tls = signaling_tls::tls_client_config(&trust).unwrap();
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tcp = tokio::net::TcpStream::connect(server.server.fallback_addr().unwrap())
        .await
        .unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(tls))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let mut request = format!("wss://localhost{}", signaling_ws::PATH)
        .into_client_request()
        .unwrap();
    if let Some(origin) = origin {
        request
            .headers_mut()
            .insert("origin", origin.parse().unwrap());
    }
    match tokio_tungstenite::client_async(request, tls).await {
        Ok((_, response)) => response.status().as_u16(),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(other) => panic!("no answer to the upgrade: {other}"),
    }
}

/// A page's WebSocket names its origin: a server lets in the sites it
/// lists (`web_origins`) and, in development, pages on this machine, and
/// answers any other `403 Forbidden`; a native client (no origin) is never
/// judged.
#[tokio::test]
async fn the_fallback_lets_in_pages_from_the_origins_it_allows() {
    let mut config = test_config("web-origins");
    config.apps = vec![calling_server::AppCredentials {
        sdk_app_id: 1_400_000_777,
        secret_key: calling_server::config::SecretKey::new("web-origins-key"),
    }];
    config.web_origins = vec!["https://app.example".parse().unwrap()];
    let production = TestServer::start_with(config).await;
    assert_eq!(
        upgrade_status(&production, None).await,
        101,
        "a native client"
    );
    assert_eq!(
        upgrade_status(&production, Some("https://app.example")).await,
        101
    );
    for refused in ["https://evil.example", "http://127.0.0.1:8080"] {
        assert_eq!(
            upgrade_status(&production, Some(refused)).await,
            403,
            "{refused}"
        );
    }
    let development = TestServer::start("web-origins-development").await;
    assert_eq!(
        upgrade_status(&development, Some("http://127.0.0.1:8080")).await,
        101
    );
    assert_eq!(
        upgrade_status(&development, Some("http://localhost:3000")).await,
        101
    );
    assert_eq!(
        upgrade_status(&development, Some("https://evil.example")).await,
        403
    );
}
