//! Browsers on the server's own QUIC port: a WebTransport session (HTTP/3,
//! the development browser certificate a page trusts by its hash) carries
//! the same signaling frames and audio datagrams as a native connection,
//! through the same hub and relay. The page is played by
//! web-transport-quinn's client, speaking as a browser does (ALPN `h3`,
//! `serverCertificateHashes`, a session at `/opencalling`, one
//! bidirectional stream), and then by a real page in headless Chromium.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use calling_api::{CallType, UserId};
use signaling_link::FramedRecv;
use signaling_proto::frame::frame_to_vec;
use signaling_proto::{ClientMessage, MediaHeader, RequestId, ServerMessage};
use signaling_quic::CertFingerprint;

use opencalling_tests::chromium::Chromium;

use crate::media::{datagram, raw_accept, raw_login, until};
use crate::support::*;

/// A page's session and its signaling stream.
struct Page {
    session: web_transport_quinn::Session,
    send: web_transport_quinn::SendStream,
    recv: FramedRecv<web_transport_quinn::RecvStream, ServerMessage>,
}

impl Page {
    async fn send(&mut self, message: &ClientMessage) {
        let frame = frame_to_vec(message).unwrap();
        self.send.write_all(&frame).await.unwrap();
    }

    /// Reads messages until one matches; returns it.
    async fn until(&mut self, want: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        tokio::time::timeout(EVENT_WAIT, async {
            loop {
                let message = self.recv.recv().await.unwrap().unwrap();
                if want(&message) {
                    return message;
                }
            }
        })
        .await
        .unwrap()
    }

    async fn next_datagram(&self) -> (MediaHeader, Vec<u8>) {
        let datagram = tokio::time::timeout(EVENT_WAIT, self.session.read_datagram())
            .await
            .unwrap()
            .unwrap();
        let (header, payload) = MediaHeader::decode(&datagram).unwrap();
        (header, payload.to_vec())
    }
}

/// The hash a page passes as `serverCertificateHashes`: the first the
/// server publishes in `server.json`.
fn browser_hash(data_dir: &Path) -> CertFingerprint {
    let text = std::fs::read_to_string(data_dir.join("server.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    json["browser_certificate_hashes"][0]
        .as_str()
        .unwrap()
        .parse()
        .unwrap()
}

/// Opens a WebTransport session at `path`, trusting `hash` as a page does.
async fn open_session(
    server: &TestServer,
    hash: CertFingerprint,
    path: &str,
) -> Result<web_transport_quinn::Session, web_transport_quinn::ClientError> {
    let trust = signaling_tls::ServerTrust::Fingerprint(hash);
    let mut tls = signaling_tls::tls_client_config(&trust).unwrap();
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let config = quinn::ClientConfig::new(Arc::new(quic));
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    let client = web_transport_quinn::Client::new(endpoint, config);
    let port = server.server.local_addr().port();
    let url = url::Url::parse(&format!("https://127.0.0.1:{port}{path}")).unwrap();
    client.connect(url).await
}

/// A page logs in as `user` (protocol version 1: it owes no heartbeats).
async fn page_login(server: &TestServer, hash: CertFingerprint, user: &str) -> Page {
    let session = open_session(server, hash, "/opencalling").await.unwrap();
    let (send, recv) = session.open_bi().await.unwrap();
    let mut page = Page {
        session,
        send,
        recv: FramedRecv::new(recv),
    };
    page.send(&ClientMessage::Login {
        protocol_version: 1,
        sdk_app_id: server.app.sdk_app_id,
        user_id: UserId::new(user).unwrap(),
        user_sig: server.sig(user).into(),
        device_id: None,
        media_encryption: signaling_proto::MediaEncryption::None,
    })
    .await;
    let answer = page.recv.recv().await.unwrap();
    assert!(
        matches!(answer, Some(ServerMessage::LoginResult { code, .. }) if code.is_ok()),
        "{answer:?}"
    );
    page
}

#[tokio::test]
async fn a_page_calls_a_native_client_over_webtransport_and_their_audio_is_relayed() {
    let config = test_config("webtransport");
    let data_dir = config.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let mut page = page_login(&server, browser_hash(&data_dir), "alice").await;
    let mut bob = raw_login(&server, "bob").await;

    page.send(&ClientMessage::Invite {
        request_id: RequestId(1),
        call_id: None,
        user_ids: vec![UserId::new("bob").unwrap()],
        call_type: CallType::Audio,
        timeout_ms: None,
        user_data: None,
    })
    .await;
    let alice_flow = raw_accept(&mut bob).await;
    let ServerMessage::UserEntered {
        flow_id: bob_flow, ..
    } = page
        .until(|message| matches!(message, ServerMessage::UserEntered { .. }))
        .await
    else {
        unreachable!()
    };

    // Audio both ways, restamped with each sender's own flow.
    page.session
        .send_datagram(datagram(999, 1, b"from the page").into())
        .unwrap();
    let heard = tokio::time::timeout(EVENT_WAIT, bob.connection.read_datagram())
        .await
        .unwrap()
        .unwrap();
    let (header, payload) = MediaHeader::decode(&heard).unwrap();
    assert_eq!(
        (header.flow_id, payload),
        (alice_flow, &b"from the page"[..])
    );
    bob.connection
        .send_datagram(datagram(5, 1, b"from bob").into())
        .unwrap();
    let (header, payload) = page.next_datagram().await;
    assert_eq!(
        (header.flow_id, payload.as_slice()),
        (bob_flow, &b"from bob"[..])
    );

    // The hub sees the page as any session: listed, and its hang-up ends
    // the call for bob.
    let Some(calling_server::AdminReply::Sessions(sessions)) = server
        .server
        .admin(calling_server::AdminRequest::Sessions)
        .await
    else {
        panic!("no session list");
    };
    assert!(sessions.iter().any(|session| session.user == uid("alice")));
    page.send(&ClientMessage::Hangup {
        request_id: RequestId(2),
    })
    .await;
    until(&mut bob, |message| {
        matches!(message, ServerMessage::CallEnded { .. })
    })
    .await;
}

#[tokio::test]
async fn a_session_elsewhere_or_an_untrusted_hash_gets_nothing() {
    let config = test_config("webtransport-refusals");
    let data_dir = config.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let hash = browser_hash(&data_dir);
    assert!(open_session(&server, hash, "/opencalling").await.is_ok());
    let elsewhere = open_session(&server, hash, "/elsewhere").await;
    assert!(elsewhere.is_err(), "a session at another path is refused");
    // The native certificate is not the one browsers are shown.
    let native = open_session(&server, server.server.fingerprint(), "/opencalling").await;
    assert!(
        native.is_err(),
        "the browser certificate is what h3 clients see"
    );
    // Native clients are unaffected on the same port.
    let _bob = raw_login(&server, "bob").await;
}

/// `value` as a URL query value.
fn query_value(value: &str) -> String {
    value
        .bytes()
        .map(|byte| {
            if byte.is_ascii_alphanumeric() || b"-_.~".contains(&byte) {
                char::from(byte).to_string()
            } else {
                format!("%{byte:02X}")
            }
        })
        .collect()
}

/// The next audio datagram bob gets, as (flow, payload).
async fn bob_hears(bob: &signaling_quic::ClientConnection) -> (signaling_proto::FlowId, Vec<u8>) {
    let datagram = bob.connection.read_datagram().await.unwrap();
    let (header, payload) = MediaHeader::decode(&datagram).unwrap();
    (header.flow_id, payload.to_vec())
}

/// A real browser: `tests/web/webtransport-probe.html` in headless
/// Chromium speaks the protocol by hand over WebTransport, trusting the
/// published certificate hashes. It logs in, calls bob (a native client),
/// sends audio once he entered, and answers what it hears; bob checks
/// both directions.
#[tokio::test]
async fn a_page_in_headless_chromium_calls_a_native_client_over_webtransport() {
    let _browser = ONE_BROWSER.lock().await;
    let config = test_config("chromium");
    let data_dir = config.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let mut bob = raw_login(&server, "bob").await;
    let text = std::fs::read_to_string(data_dir.join("server.json")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&text).unwrap();
    let hashes: Vec<&str> = json["browser_certificate_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hash| hash.as_str().unwrap())
        .collect();
    let probe = Path::new(env!("CARGO_MANIFEST_DIR")).join("web/webtransport-probe.html");
    let port = server.server.local_addr().port();
    let page = format!(
        "file://{}?url={}&hashes={}&app={}&user=alice&sig={}&callee=bob",
        probe.display(),
        query_value(&format!("https://127.0.0.1:{port}/opencalling")),
        hashes.join(","),
        server.app.sdk_app_id,
        query_value(&server.sig("alice")),
    );
    let chromium = Chromium::open(&page, &temp_dir("chromium-profile"), &[]);

    // Chromium's start and the page's handshakes, on a busy machine too.
    let invited = async {
        loop {
            if let Some(ServerMessage::Invited { call_id, .. }) = bob.recv.recv().await.unwrap() {
                return call_id;
            }
        }
    };
    let Ok(call_id) = tokio::time::timeout(Duration::from_secs(30), invited).await else {
        panic!(
            "the page's invitation never rang bob; its console: {}",
            chromium.console()
        );
    };
    bob.send
        .send(&ClientMessage::Accept {
            request_id: RequestId(1),
            call_id,
        })
        .await
        .unwrap();
    let ServerMessage::UserEntered {
        flow_id: alice_flow,
        ..
    } = until(&mut bob, |message| {
        matches!(message, ServerMessage::UserEntered { .. })
    })
    .await
    else {
        unreachable!()
    };
    let (flow, payload) = tokio::time::timeout(EVENT_WAIT, bob_hears(&bob))
        .await
        .expect("the page's audio reaches bob");
    assert_eq!(
        (flow, payload.as_slice()),
        (alice_flow, &b"from the page"[..])
    );
    // Bob speaks until the page says what it heard.
    let answered = async {
        let mut sequence = 1;
        loop {
            bob.connection
                .send_datagram(datagram(1, sequence, b"from bob").into())
                .unwrap();
            sequence += 1;
            let heard = tokio::time::timeout(Duration::from_millis(100), bob_hears(&bob)).await;
            if let Ok((flow, payload)) = heard
                && payload.starts_with(b"heard: ")
            {
                return (flow, payload);
            }
        }
    };
    let (flow, payload) = tokio::time::timeout(EVENT_WAIT, answered)
        .await
        .expect("the page hears bob and says so");
    assert_eq!(
        (flow, payload.as_slice()),
        (alice_flow, &b"heard: from bob"[..])
    );
}
