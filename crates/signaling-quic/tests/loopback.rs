//! The transport over real loopback UDP: trust modes, framing, datagrams,
//! close codes and the admission policy.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use calling_api::{ErrorCode, UserId};
use signaling_proto::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use signaling_quic::{
    CertFingerprint, QuicServer, ServerConnection, ServerIdentity, ServerLimits, ServerTrust,
    TransportError, close, close_code_of, connect,
};

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

fn server(identity: &ServerIdentity, limits: ServerLimits) -> QuicServer {
    QuicServer::bind(LOOPBACK, identity, limits, &[7; 32], 1).unwrap()
}

fn login() -> ClientMessage {
    ClientMessage::Login {
        protocol_version: PROTOCOL_VERSION,
        sdk_app_id: 1,
        user_id: UserId::new("alice").unwrap(),
        user_sig: "sig".into(),
    }
}

/// Accepts one connection and echoes its first message back as a Pong.
async fn accept_one(server: &QuicServer) -> Result<ServerConnection, TransportError> {
    let accepted = server.accept().await.expect("endpoint open");
    accepted.establish().await
}

#[tokio::test]
async fn fingerprint_trust_round_trips_frames_and_datagrams() {
    let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
    let server = server(&identity, ServerLimits::default());
    let addr = server.local_addr().unwrap();
    let trust = ServerTrust::Fingerprint(identity.fingerprint());
    let (client, accepted) = tokio::join!(
        async {
            let mut client = connect(addr, "localhost", &trust).await.unwrap();
            client.send.send(&login()).await.unwrap();
            client
        },
        accept_one(&server)
    );
    let mut client = client;
    let mut accepted = accepted.unwrap();
    assert_eq!(accepted.recv.recv().await.unwrap(), Some(login()));
    accepted
        .send
        .send(&ServerMessage::Pong { nonce: 9 })
        .await
        .unwrap();
    assert_eq!(
        client.recv.recv().await.unwrap(),
        Some(ServerMessage::Pong { nonce: 9 })
    );

    // DATAGRAMs are negotiated on both ends.
    assert!(client.connection.max_datagram_size().is_some());
    assert!(accepted.connection.max_datagram_size().is_some());
    client
        .connection
        .send_datagram(vec![1, 2, 3].into())
        .unwrap();
    let datagram =
        tokio::time::timeout(Duration::from_secs(5), accepted.connection.read_datagram())
            .await
            .unwrap()
            .unwrap();
    assert_eq!(&datagram[..], [1, 2, 3]);

    // A close carries its error code to the other side.
    close(
        &accepted.connection,
        ErrorCode::KICKED_OFFLINE,
        "logged in elsewhere",
    );
    let error = client.connection.closed().await;
    assert_eq!(close_code_of(&error), Some(ErrorCode::KICKED_OFFLINE));
}

#[tokio::test]
async fn a_wrong_fingerprint_is_refused() {
    let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
    let server = server(&identity, ServerLimits::default());
    let addr = server.local_addr().unwrap();
    let wrong = ServerTrust::Fingerprint(CertFingerprint::of(b"some other certificate"));
    let server_side = tokio::spawn(async move {
        let accepted = server.accept().await;
        if let Some(accepted) = accepted {
            let _ = accepted.establish().await;
        }
    });
    let error = connect(addr, "localhost", &wrong).await.unwrap_err();
    assert!(matches!(error, TransportError::Connection(_)), "{error:?}");
    assert_eq!(error.connect_code(), ErrorCode::CERTIFICATE_UNTRUSTED);
    server_side.abort();
}

#[tokio::test]
async fn ca_file_trust_checks_the_issuer_and_the_name() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, ca_key).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["calls.example".to_owned()])
        .unwrap()
        .signed_by(&leaf_key, &ca)
        .unwrap();
    let dir = std::env::temp_dir().join(format!("opencalling-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (ca_file, cert_file, key_file) = (
        dir.join("ca.pem"),
        dir.join("cert.pem"),
        dir.join("key.pem"),
    );
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, leaf.pem()).unwrap();
    std::fs::write(&key_file, leaf_key.serialize_pem()).unwrap();

    let identity = ServerIdentity::from_pem_files(&cert_file, &key_file).unwrap();
    let server = server(&identity, ServerLimits::default());
    let addr = server.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        while let Some(accepted) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(mut connection) = accepted.establish().await {
                    let _ = connection.recv.recv().await;
                }
            });
        }
    });
    let trust = ServerTrust::CaFile(ca_file.clone());
    let mut client = connect(addr, "calls.example", &trust).await.unwrap();
    client.send.send(&login()).await.unwrap();
    // The same CA does not vouch for another name.
    assert!(connect(addr, "other.example", &trust).await.is_err());
    server_side.abort();
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn the_per_ip_cap_refuses_the_extra_connection() {
    let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
    let limits = ServerLimits {
        max_connections_per_ip: 2,
        ..ServerLimits::default()
    };
    let server = std::sync::Arc::new(server(&identity, limits));
    let addr = server.local_addr().unwrap();
    let acceptor = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            let (held_tx, mut held_rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move { while held_rx.recv().await.is_some() {} });
            let mut keep = Vec::new();
            while let Some(accepted) = server.accept().await {
                let held_tx = held_tx.clone();
                keep.push(tokio::spawn(async move {
                    if let Ok(mut connection) = accepted.establish().await {
                        let _ = connection.recv.recv().await;
                        let _ = held_tx.send(());
                        // Hold the connection (and its IP slot) open.
                        connection.connection.closed().await;
                    }
                }));
            }
        })
    };
    let trust = ServerTrust::Fingerprint(identity.fingerprint());
    let mut first = connect(addr, "localhost", &trust).await.unwrap();
    first.send.send(&login()).await.unwrap();
    let mut second = connect(addr, "localhost", &trust).await.unwrap();
    second.send.send(&login()).await.unwrap();
    let third = connect(addr, "localhost", &trust).await;
    assert!(
        third.is_err(),
        "the third connection from one IP is refused"
    );
    assert_eq!(server.connections_from(Ipv4Addr::LOCALHOST.into()), 2);
    // A slot comes back when its connection ends.
    close(&first.connection, ErrorCode::OK, "bye");
    tokio::time::timeout(Duration::from_secs(5), async {
        while server.connections_from(Ipv4Addr::LOCALHOST.into()) != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    let mut fourth = connect(addr, "localhost", &trust).await.unwrap();
    fourth.send.send(&login()).await.unwrap();
    drop((first, second, fourth));
    acceptor.abort();
}

#[tokio::test]
async fn handshakes_past_the_budget_are_retried_then_refused() {
    let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
    let limits = ServerLimits {
        handshakes_per_sec: 2,
        ..ServerLimits::default()
    };
    let server = std::sync::Arc::new(server(&identity, limits));
    let addr = server.local_addr().unwrap();
    let acceptor = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            let mut keep = Vec::new();
            while let Some(accepted) = server.accept().await {
                keep.push(tokio::spawn(async move {
                    if let Ok(mut connection) = accepted.establish().await {
                        let _ = connection.recv.recv().await;
                        connection.connection.closed().await;
                    }
                }));
            }
        })
    };
    let trust = ServerTrust::Fingerprint(identity.fingerprint());
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut client = connect(addr, "localhost", &trust).await.unwrap();
        client.send.send(&login()).await.unwrap();
        kept.push(client);
    }
    // The budget is spent: the next newcomer proves its address through a
    // Retry and is still refused.
    assert!(connect(addr, "localhost", &trust).await.is_err());
    let counts = server.admission_stats().counts();
    assert!(counts.retried >= 1, "{counts:?}");
    assert!(counts.refused_handshake_budget >= 1, "{counts:?}");
    // A second later the budget has refilled.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let mut late = connect(addr, "localhost", &trust).await.unwrap();
    late.send.send(&login()).await.unwrap();
    drop((kept, late));
    acceptor.abort();
}
