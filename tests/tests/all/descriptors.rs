//! The server's file descriptors, counted from outside (a server in a
//! child process): a fallback socket goes with its session, and running
//! out of descriptors is survived.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use calling_api::{ErrorCode, UserId};
use signaling_proto::{ClientMessage, PROTOCOL_VERSION, ServerMessage};
use signaling_quic::ServerTrust;

use crate::child::ChildProcess;
use crate::support::*;

/// Descriptors the process `pid` has open, and how many are sockets.
fn descriptors_of(pid: u32) -> (usize, usize) {
    let Ok(entries) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return (0, 0);
    };
    let targets: Vec<_> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| std::fs::read_link(entry.path()).ok())
        .collect();
    let sockets = targets
        .iter()
        .filter(|target| target.to_string_lossy().starts_with("socket:"))
        .count();
    (targets.len(), sockets)
}

/// Waits up to `limit` for the process's sockets to satisfy `done`; how
/// long it took.
async fn until_sockets(
    pid: u32,
    limit: Duration,
    done: impl Fn(usize) -> bool,
) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if done(descriptors_of(pid).1) {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// CPU seconds the process `pid` has used (user and system).
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command's closing parenthesis; utime and stime
    // are the 14th and 15th of the whole line.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

struct ChildServer {
    process: ChildProcess,
    addr: SocketAddr,
    trust: ServerTrust,
    app: u32,
    key: String,
}

impl ChildServer {
    async fn start(tag: &str, more: &[(&str, String)]) -> Self {
        let data_dir = temp_dir(tag);
        let mut env = vec![
            ("OPENCALLING_LISTEN", "127.0.0.1:0".to_owned()),
            ("OPENCALLING_DATA_DIR", data_dir.display().to_string()),
        ];
        env.extend(more.iter().cloned());
        let process = ChildProcess::spawn("server", &env).await;
        let addr = process.ready[0].parse().unwrap();
        let trust = ServerTrust::Fingerprint(process.ready[1].parse().unwrap());
        let app = process.ready[2].parse().unwrap();
        let key = process.ready[3].clone();
        Self {
            process,
            addr,
            trust,
            app,
            key,
        }
    }

    /// A UserSig for `user`, valid for an hour.
    fn sig(&self, user: &str) -> String {
        calling_server::usersig::generate(u64::from(self.app), &self.key, user, 3_600, now(), None)
    }

    /// Sends `user`'s login over a new QUIC connection; the connection.
    async fn quic_client(&self, user: &str) -> signaling_quic::ClientConnection {
        let mut client = signaling_quic::connect(self.addr, "localhost", &self.trust)
            .await
            .unwrap();
        let sig = self.sig(user);
        client
            .send
            .send(&ClientMessage::Login {
                protocol_version: PROTOCOL_VERSION,
                sdk_app_id: self.app,
                user_id: UserId::new(user).unwrap(),
                user_sig: sig.into(),
                device_id: None,
                media_encryption: signaling_proto::MediaEncryption::None,
            })
            .await
            .unwrap();
        client
    }

    /// Logs `user` in over QUIC; the answer's code.
    async fn quic_login(&self, user: &str) -> ErrorCode {
        let mut client = self.quic_client(user).await;
        match client.recv.recv().await.unwrap() {
            Some(ServerMessage::LoginResult { code, .. }) => code,
            other => panic!("{other:?}"),
        }
    }
}

/// A raw WebSocket over `tcp`, connected to `server`'s fallback port.
async fn websocket_over(
    server: &ChildServer,
    tcp: tokio::net::TcpStream,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut config = signaling_tls::tls_client_config(&server.trust).unwrap();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .unwrap();
    let url = format!("wss://localhost{}", signaling_ws::PATH);
    tokio_tungstenite::client_async(url, tls).await.unwrap().0
}

/// A WebSocket upgraded at the fallback port by a client that then
/// neither sends nor reads (not even the server's close).
async fn upgraded_and_deaf(
    server: &ChildServer,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    websocket_over(server, tcp).await
}

/// WebSockets that never log in hold their sockets until the login
/// deadline, and not a second more: the server's descriptors come back.
#[tokio::test]
async fn fallback_sockets_that_never_log_in_are_closed_within_a_second_of_the_deadline() {
    let deadline = Duration::from_secs(2);
    let timeout = (
        "OPENCALLING_HANDSHAKE_TIMEOUT_SECS",
        deadline.as_secs().to_string(),
    );
    let server = ChildServer::start("fd-never-login", &[timeout]).await;
    let pid = server.process.pid();
    let baseline = descriptors_of(pid).1;
    let mut silent = Vec::new();
    for _ in 0..3 {
        silent.push(upgraded_and_deaf(&server).await);
    }
    let upgraded = Instant::now();
    let held = until_sockets(pid, Duration::from_secs(2), |sockets| {
        sockets >= baseline + 3
    })
    .await;
    assert!(held.is_some(), "the server never held the three sockets");
    // The deadline counts from the upgrade, which the server saw before
    // `upgraded`.
    let freed = until_sockets(pid, deadline + Duration::from_secs(5), |sockets| {
        sockets <= baseline
    })
    .await;
    let freed_after = upgraded.elapsed();
    assert!(
        freed.is_some(),
        "the sockets outlived their deadline: {:?}",
        descriptors_of(pid)
    );
    assert!(
        freed_after <= deadline + Duration::from_secs(1),
        "closed {freed_after:?} after the upgrade, the deadline is {deadline:?}"
    );
    drop(silent);
}

/// With every descriptor taken by TCP connections to the fallback port,
/// the accept loop rests instead of spinning on EMFILE, QUIC logins go on,
/// and the fallback accepts again once descriptors are free.
#[tokio::test]
async fn running_out_of_descriptors_is_survived() {
    let server = ChildServer::start("fd-exhausted", &[]).await;
    let pid = server.process.pid();
    assert_eq!(server.quic_login("before").await, ErrorCode::OK);
    let (open, _) = descriptors_of(pid);
    let limit = open + 16;
    let status = std::process::Command::new("prlimit")
        .args([
            "--pid",
            &pid.to_string(),
            &format!("--nofile={limit}:{limit}"),
        ])
        .status()
        .unwrap();
    assert!(status.success(), "prlimit");
    // More connections than descriptors are left: the kernel completes
    // their handshakes, the server cannot accept them all.
    let mut flood = Vec::new();
    for _ in 0..40 {
        if let Ok(tcp) = tokio::net::TcpStream::connect(server.addr).await {
            flood.push(tcp);
        }
    }
    let full = tokio::time::timeout(Duration::from_secs(5), async {
        while descriptors_of(pid).0 < limit {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        full.is_ok(),
        "the server never ran out: {:?} of {limit}",
        descriptors_of(pid)
    );
    // Out of descriptors for a second: a loop retrying accept would spin a
    // whole core.
    let before = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let used = cpu_seconds(pid) - before;
    assert!(
        used < 0.3,
        "{used:.2} s of CPU in a second out of descriptors"
    );
    // QUIC needs no new descriptor: its users log in meanwhile.
    assert_eq!(server.quic_login("during").await, ErrorCode::OK);
    // Free the descriptors: the fallback serves again.
    drop(flood);
    let served = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let link = signaling_ws::connect::<ServerMessage, ClientMessage>(
                server.addr,
                "localhost",
                &server.trust,
            );
            if let Ok(Ok(link)) = tokio::time::timeout(Duration::from_secs(2), link).await {
                return link;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(served.is_ok(), "the fallback never accepted again");
}

/// A raw WebSocket client whose socket takes almost nothing unread (a 4 KiB
/// receive buffer), logged in as `user`; it reads until `until` says so,
/// then as long as the test makes it.
struct RawWebSocket {
    socket:
        tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>,
    frames: signaling_proto::FrameDecoder,
}

impl RawWebSocket {
    async fn log_in(server: &ChildServer, user: &str) -> Self {
        let tcp = tokio::net::TcpSocket::new_v4().unwrap();
        tcp.set_recv_buffer_size(4096).unwrap();
        let tcp = tcp.connect(server.addr).await.unwrap();
        let socket = websocket_over(server, tcp).await;
        let mut client = Self {
            socket,
            frames: signaling_proto::FrameDecoder::default(),
        };
        let sig = server.sig(user);
        client
            .send(&ClientMessage::Login {
                protocol_version: 1,
                sdk_app_id: server.app,
                user_id: UserId::new(user).unwrap(),
                user_sig: sig.into(),
                device_id: None,
                media_encryption: signaling_proto::MediaEncryption::None,
            })
            .await;
        let answer = client
            .until(|message| matches!(message, ServerMessage::LoginResult { .. }))
            .await;
        assert!(
            matches!(answer, ServerMessage::LoginResult { code, .. } if code.is_ok()),
            "{answer:?}"
        );
        client
    }

    async fn send(&mut self, message: &ClientMessage) {
        use futures_util::SinkExt;
        let mut bytes = vec![signaling_ws::KIND_SIGNALING];
        signaling_proto::frame::encode_frame(message, &mut bytes).unwrap();
        self.socket
            .send(tokio_tungstenite::tungstenite::Message::Binary(
                bytes.into(),
            ))
            .await
            .unwrap();
    }

    /// Reads until a server message satisfies `want`; returns it.
    async fn until(&mut self, want: impl Fn(&ServerMessage) -> bool) -> ServerMessage {
        use futures_util::StreamExt;
        let read = async {
            loop {
                while let Some(message) = self.frames.next_message::<ServerMessage>().unwrap() {
                    if want(&message) {
                        return message;
                    }
                }
                let Some(Ok(tokio_tungstenite::tungstenite::Message::Binary(data))) =
                    self.socket.next().await
                else {
                    panic!("the server closed the WebSocket");
                };
                if data.first() == Some(&signaling_ws::KIND_SIGNALING) {
                    self.frames.push(&data[1..]);
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("no such message in 10 s")
    }
}

/// A fallback client in a call stops reading: the audio relayed to it
/// fills its socket and the server's writer blocks. When its session ends
/// (here its user logs in elsewhere), the server lets go of the socket
/// within a second, though the client never reads the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fallback_client_that_stops_reading_loses_its_socket_with_its_session() {
    let server = ChildServer::start("fd-not-reading", &[]).await;
    let pid = server.process.pid();
    let baseline = descriptors_of(pid).1;
    let mut deaf = RawWebSocket::log_in(&server, "deaf").await;
    let mut alice = server.quic_client("alice").await;
    alice
        .send
        .send(&ClientMessage::Invite {
            request_id: signaling_proto::RequestId(1),
            call_id: None,
            user_ids: vec![UserId::new("deaf").unwrap()],
            call_type: calling_api::CallType::Audio,
            timeout_ms: None,
            user_data: None,
        })
        .await
        .unwrap();
    let invited = deaf
        .until(|message| matches!(message, ServerMessage::Invited { .. }))
        .await;
    let ServerMessage::Invited { call_id, .. } = invited else {
        unreachable!()
    };
    deaf.send(&ClientMessage::Accept {
        request_id: signaling_proto::RequestId(1),
        call_id,
    })
    .await;
    deaf.until(|message| matches!(message, ServerMessage::UserEntered { .. }))
        .await;
    assert_eq!(
        descriptors_of(pid).1,
        baseline + 1,
        "the WebSocket's socket"
    );
    // From here the client reads nothing. A second of alice's audio at the
    // relay's byte budget fills its socket.
    let filling = Instant::now();
    let mut sequence = 0;
    while filling.elapsed() < Duration::from_secs(12) {
        let datagram = crate::media::datagram(0, sequence, &[0x55; 600]);
        let _ = alice.connection.send_datagram(datagram.into());
        sequence += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its user logs in elsewhere: the session is over.
    let mut elsewhere = server.quic_client("deaf").await;
    assert!(matches!(
        elsewhere.recv.recv().await.unwrap(),
        Some(ServerMessage::LoginResult { code, .. }) if code.is_ok()
    ));
    let kicked = Instant::now();
    let freed = until_sockets(pid, Duration::from_secs(5), |sockets| sockets <= baseline).await;
    assert!(
        freed.is_some(),
        "the socket outlived its session: {:?}",
        descriptors_of(pid)
    );
    let took = kicked.elapsed();
    assert!(
        took <= Duration::from_secs(1),
        "freed {took:?} after the session ended"
    );
    drop(deaf);
}
