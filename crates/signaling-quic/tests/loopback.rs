//! The transport over real loopback UDP: trust modes, framing, datagrams,
//! close codes, and what the caller may do with a connection attempt.

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use calling_api::{ErrorCode, UserId};
use signaling_proto::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use signaling_quic::{
    CertFingerprint, QuicServer, ServerConnection, ServerIdentity, ServerTrust, TransportError,
    close, close_code_of, connect,
};

const LOOPBACK: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn server(identity: &ServerIdentity) -> QuicServer {
    QuicServer::bind(LOOPBACK, identity, &[7; 32], 1).unwrap()
}

fn login() -> ClientMessage {
    ClientMessage::Login {
        protocol_version: PROTOCOL_VERSION,
        sdk_app_id: 1,
        user_id: UserId::new("alice").unwrap(),
        user_sig: "sig".into(),
        device_id: None,
        media_encryption: signaling_proto::MediaEncryption::None,
    }
}

/// Accepts one connection and echoes its first message back as a Pong.
async fn accept_one(server: &QuicServer) -> Result<ServerConnection, TransportError> {
    let accepted = server.accept().await.expect("endpoint open");
    accepted.establish(HANDSHAKE_TIMEOUT).await
}

#[tokio::test]
async fn fingerprint_trust_round_trips_frames_and_datagrams() {
    let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
    let server = server(&identity);
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
    let server = server(&identity);
    let addr = server.local_addr().unwrap();
    let wrong = ServerTrust::Fingerprint(CertFingerprint::of(b"some other certificate"));
    let server_side = tokio::spawn(async move {
        let accepted = server.accept().await;
        if let Some(accepted) = accepted {
            let _ = accepted.establish(HANDSHAKE_TIMEOUT).await;
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
    let server = server(&identity);
    let addr = server.local_addr().unwrap();
    let server_side = tokio::spawn(async move {
        while let Some(accepted) = server.accept().await {
            tokio::spawn(async move {
                if let Ok(mut connection) = accepted.establish(HANDSHAKE_TIMEOUT).await {
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

/// The caller decides: a Retry brings the client back with its address
/// proved (and no second Retry possible); a refusal fails its connect.
#[tokio::test]
async fn an_attempt_can_be_retried_then_refused_or_established() {
    let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
    let server = std::sync::Arc::new(server(&identity));
    let addr = server.local_addr().unwrap();
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let acceptor = {
        let server = std::sync::Arc::clone(&server);
        tokio::spawn(async move {
            let mut refuse_next_proven = true;
            let mut keep = Vec::new();
            while let Some(attempt) = server.accept().await {
                let _ = seen_tx.send((attempt.address_validated(), attempt.may_retry()));
                if !attempt.address_validated() {
                    attempt.retry();
                } else if refuse_next_proven {
                    refuse_next_proven = false;
                    attempt.refuse();
                } else {
                    keep.push(tokio::spawn(async move {
                        if let Ok(mut connection) = attempt.establish(HANDSHAKE_TIMEOUT).await {
                            let _ = connection.recv.recv().await;
                            connection.connection.closed().await;
                        }
                    }));
                }
            }
        })
    };
    let trust = ServerTrust::Fingerprint(identity.fingerprint());
    assert!(
        connect(addr, "localhost", &trust).await.is_err(),
        "a refused attempt fails the connect"
    );
    assert_eq!(seen.recv().await, Some((false, true)), "first contact");
    assert_eq!(
        seen.recv().await,
        Some((true, false)),
        "back from the Retry: proved, no second Retry"
    );
    let mut client = connect(addr, "localhost", &trust).await.unwrap();
    client.send.send(&login()).await.unwrap();
    assert_eq!(seen.recv().await, Some((false, true)));
    assert_eq!(seen.recv().await, Some((true, false)));
    drop(client);
    acceptor.abort();
}
