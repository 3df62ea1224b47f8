//! Connecting fails quickly and says why: nobody at the address, a
//! certificate that is not the trusted one, a server that speaks another
//! protocol. (A connection lost after login is `resilience.rs`'s.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use calling_facade::{CertFingerprint, ClientOptions, ErrorCode, TRTCCalling};
use signaling_quic::ServerIdentity;

use crate::support::{TestServer, temp_dir};

/// Logs in with `options` (a UserSig that is never looked at: the
/// connection fails first); the error code and how long it took.
async fn failed_login(options: ClientOptions) -> (ErrorCode, Duration) {
    let calling = TRTCCalling::new(options);
    let started = Instant::now();
    let error = calling
        .login(1_400_000_000, "alice", "never-checked")
        .await
        .unwrap_err();
    (error.code, started.elapsed())
}

#[tokio::test]
async fn nobody_at_the_address_is_unreachable_within_the_connect_timeout() {
    // A bound socket that never answers: a black hole, not even a refusal.
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut options = ClientOptions::development(
        silent.local_addr().unwrap().to_string(),
        CertFingerprint::of(b"whatever"),
    );
    options.connect_timeout = Duration::from_millis(500);
    options.request_timeout = Duration::from_secs(30);
    let (code, took) = failed_login(options).await;
    assert_eq!(code, ErrorCode::SERVER_UNREACHABLE);
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn a_wrong_fingerprint_is_an_untrusted_certificate() {
    let server = TestServer::start("wrong-fingerprint").await;
    let options = ClientOptions::development(
        server.server.local_addr().to_string(),
        CertFingerprint::of(b"some other certificate"),
    );
    let (code, took) = failed_login(options).await;
    assert_eq!(code, ErrorCode::CERTIFICATE_UNTRUSTED);
    assert!(took < Duration::from_secs(3), "took {took:?}");
}

#[tokio::test]
async fn a_server_of_another_protocol_is_a_protocol_mismatch() {
    // A QUIC server with the right certificate but another ALPN (HTTP/3's).
    let dir = temp_dir("other-alpn");
    let identity = ServerIdentity::load_or_create_self_signed(&dir, &["localhost".into()]).unwrap();
    let cert = std::fs::read(dir.join("cert.der")).unwrap();
    let key = std::fs::read(dir.join("key.der")).unwrap();
    let mut tls = quinn::rustls::ServerConfig::builder_with_provider(Arc::new(
        quinn::rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&quinn::rustls::version::TLS13])
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.into()],
        quinn::rustls::pki_types::PrivateKeyDer::Pkcs8(key.into()),
    )
    .unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(crypto)),
        "127.0.0.1:0".parse().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    let server = tokio::spawn(async move {
        while let Some(incoming) = endpoint.accept().await {
            let _ = incoming.await;
        }
    });
    let options = ClientOptions::development(addr.to_string(), identity.fingerprint());
    let (code, took) = failed_login(options).await;
    assert_eq!(code, ErrorCode::PROTOCOL_MISMATCH);
    assert!(took < Duration::from_secs(3), "took {took:?}");
    server.abort();
}

/// Given two addresses of which the first never answers, the SDK logs in
/// at the second, half a second later (not after the first's connect
/// timeout), and keeps to it for the next connection.
#[tokio::test]
async fn an_sdk_given_two_addresses_reaches_the_second_when_the_first_is_down() {
    let server = TestServer::start("two-addresses").await;
    let silent = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut options = server.options();
    options.server = format!(
        "{},{}",
        silent.local_addr().unwrap(),
        server.server.local_addr()
    );
    options.connect_timeout = Duration::from_secs(5);
    let calling = TRTCCalling::new(options);
    let started = Instant::now();
    calling
        .login(server.app.sdk_app_id, "alice", &server.sig("alice"))
        .await
        .unwrap();
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "logged in at the second address after {took:?}"
    );
    assert_eq!(server.server.stats().await.unwrap().online, 1);
    calling.logout().await.unwrap();
    let started = Instant::now();
    calling
        .login(server.app.sdk_app_id, "alice", &server.sig("alice"))
        .await
        .unwrap();
    let again = started.elapsed();
    assert!(
        again < Duration::from_millis(400),
        "the address that connected goes first: {again:?}"
    );
}
