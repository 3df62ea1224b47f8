//! `cargo xtask cluster-demo`: a real Redis and three `calling-server`
//! processes on loopback forming one cluster, and three SDK users, each
//! logged in to a different node. Alice (node 1) calls Bob (node 2): every
//! message goes through the cluster's control, their audio crosses the
//! node links; then Carol (node 3) joins the call; at the end Carol's node
//! is killed and the others hear her connection lost.
//!
//! The server binary comes from `OPENCALLING_SERVER_BIN` (the xtask builds
//! it); its stdout banner gives each node's address and certificate.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use calling_facade::{
    AudioDevices, CallType, CallingEvent, CaptureDevice, ClientOptions, PlaybackDevice, TRTCCalling,
};
use calling_server::AppCredentials;
use calling_server::config::SecretKey;
use opencalling_tests::redis::RedisServer;
use tokio::sync::mpsc;

const APP_ID: u32 = 1_400_000_000;
const APP_KEY: &str = "cluster-demo-app-key";
const CLUSTER_KEY: &str = "cluster-demo-cluster-key";

/// One `calling-server` process.
struct Node {
    name: String,
    child: Child,
    addr: SocketAddr,
    fingerprint: String,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_udp_port() -> u16 {
    UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|socket| socket.local_addr())
        .map(|addr| addr.port())
        .unwrap()
}

fn start_node(binary: &Path, redis: &RedisServer, index: usize, data: &Path) -> Node {
    let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()));
    let links = SocketAddr::from((Ipv4Addr::LOCALHOST, free_udp_port()));
    let mut child = Command::new(binary)
        .arg("--listen")
        .arg(listen.to_string())
        .args(["--fallback-listen", "off", "--data-dir"])
        .arg(data.join(format!("node{index}")))
        .args(["--sdk-app-id", &APP_ID.to_string(), "--secret-key", APP_KEY])
        .args(["--redis", &redis.url(), "--redis-prefix", "cluster-demo"])
        .arg("--cluster-listen")
        .arg(links.to_string())
        .args(["--cluster-key", CLUSTER_KEY])
        .env(
            "RUST_LOG",
            std::env::var("OPENCALLING_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|error| panic!("{}: {error}", binary.display()));
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut fingerprint = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("certificate fingerprint (sha256): ") {
            fingerprint = Some(rest.trim().to_owned());
            break;
        }
    }
    std::thread::spawn(move || for _ in lines {});
    Node {
        name: format!("node {index}"),
        child,
        addr: listen,
        fingerprint: fingerprint.expect("the server prints its certificate"),
    }
}

struct User {
    name: &'static str,
    calling: Arc<TRTCCalling>,
    seen: mpsc::UnboundedReceiver<CallingEvent>,
}

impl User {
    async fn wait_for(&mut self, wanted: impl Fn(&CallingEvent) -> bool) {
        let found = tokio::time::timeout(Duration::from_secs(15), async {
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

#[allow(
    clippy::too_many_lines,
    reason = "a scripted scenario reads best as one story, top to bottom"
)]
#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        // Colours only for a person at a terminal, never in files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    let binary = PathBuf::from(
        std::env::var_os("OPENCALLING_SERVER_BIN")
            .expect("OPENCALLING_SERVER_BIN: the calling-server binary (cargo xtask cluster-demo)"),
    );
    // tests/ sits in the workspace root; the output goes to its target/.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let root = root.canonicalize().unwrap_or(root);
    let out_dir = root.join("target").join("cluster-demo");
    let _ = std::fs::remove_dir_all(&out_dir);
    std::fs::create_dir_all(&out_dir).unwrap();
    let started = Instant::now();
    let step = |what: &str| println!("\n[{:>8.1?}] -- {what}", started.elapsed());

    let redis = RedisServer::start().unwrap();
    step(&format!("redis-server on {}", redis.addr()));
    let mut nodes: Vec<Node> = (1..=3)
        .map(|index| start_node(&binary, &redis, index, &out_dir))
        .collect();
    for node in &nodes {
        println!("  {} serves clients on {}", node.name, node.addr);
    }

    let says = |name: &str| match name {
        "alice" => Some(opencalling_tests::speech::fixture("speech-a-16k.wav")),
        "bob" => Some(opencalling_tests::speech::fixture("speech-b-16k.wav")),
        _ => None,
    };
    let hears = |name: &str| out_dir.join(format!("{name}-hears.wav"));
    let app = AppCredentials {
        sdk_app_id: APP_ID,
        secret_key: SecretKey::new(APP_KEY),
    };
    let mut users = Vec::new();
    for (name, node) in [("alice", 0), ("bob", 1), ("carol", 2)] {
        let mut options = ClientOptions::development(
            nodes[node].addr.to_string(),
            nodes[node].fingerprint.parse().unwrap(),
        );
        options.audio = match says(name) {
            Some(path) => AudioDevices {
                capture: CaptureDevice::Wav {
                    path,
                    looping: false,
                },
                playback: PlaybackDevice::Wav { path: hears(name) },
            },
            None => AudioDevices::none(),
        };
        let calling = TRTCCalling::new(options);
        let (tx, seen) = mpsc::unbounded_channel();
        let node_name = nodes[node].name.clone();
        calling.register_listener(move |event: &CallingEvent| {
            if !matches!(event, CallingEvent::UserVoiceVolume { .. }) {
                println!(
                    "[{:>8.1?}]   {name:<6} ({node_name}) {event}",
                    started.elapsed()
                );
                let _ = tx.send(event.clone());
            }
        });
        let sig = opencalling_tests::server::user_sig(&app, name);
        // A node takes logins once it has found the cluster's control.
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Err(error) = calling.login(APP_ID, name, &sig).await {
            assert!(Instant::now() < deadline, "{name} cannot log in: {error}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        users.push(User {
            name,
            calling,
            seen,
        });
    }
    step("alice, bob and carol logged in, each to another node");
    let [alice, bob, carol] = &mut users[..] else {
        unreachable!()
    };
    let is_invited = |event: &CallingEvent| matches!(event, CallingEvent::Invited { .. });
    let is_enter = |event: &CallingEvent| matches!(event, CallingEvent::UserEnter { .. });

    step("alice (node 1) calls bob (node 2); bob accepts");
    let dialed = Instant::now();
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    bob.wait_for(is_invited).await;
    let rang = dialed.elapsed();
    bob.calling.accept().await.unwrap();
    alice.wait_for(is_enter).await;
    println!("  bob's phone rang {rang:?} after alice dialed, across two nodes");

    step("alice and bob talk for four seconds: their audio crosses the node link");
    tokio::time::sleep(Duration::from_secs(4)).await;

    step("alice invites carol (node 3); carol accepts: a call over three nodes");
    alice.calling.call("carol", CallType::Audio).await.unwrap();
    carol.wait_for(is_invited).await;
    carol.calling.accept().await.unwrap();
    alice
        .wait_for(|event| matches!(event, CallingEvent::UserEnter { user_id } if user_id.as_str() == "carol"))
        .await;
    bob.wait_for(
        |event| matches!(event, CallingEvent::UserEnter { user_id } if user_id.as_str() == "carol"),
    )
    .await;
    let stats = [
        (
            "alice",
            alice.calling.audio_stats().await.unwrap_or_default(),
        ),
        ("bob", bob.calling.audio_stats().await.unwrap_or_default()),
    ];

    step("node 3 dies (SIGKILL): alice and bob hear carol's connection lost, and talk on");
    let killed = Instant::now();
    nodes.pop();
    alice
        .wait_for(|event| matches!(event, CallingEvent::UserLeave { user_id } if user_id.as_str() == "carol"))
        .await;
    println!(
        "  carol left alice's call {:?} after her node died",
        killed.elapsed()
    );
    bob.wait_for(|event| matches!(event, CallingEvent::UserLeave { .. }))
        .await;

    step("bob hangs up: the call ends");
    bob.calling.hangup().await.unwrap();
    alice
        .wait_for(|event| matches!(event, CallingEvent::CallEnded { .. }))
        .await;
    carol.calling.destroy();
    alice.calling.destroy();
    bob.calling.destroy();
    tokio::time::sleep(Duration::from_millis(300)).await;
    drop(nodes);

    println!(
        "\n[{:>8.1?}] done. The call between alice (node 1) and bob (node 2), measured:",
        started.elapsed()
    );
    for (listener, talker) in [("bob", "alice"), ("alice", "bob")] {
        let (Some(said), heard) = (says(talker), hears(listener)) else {
            continue;
        };
        let (correlation, delay_ms) = opencalling_tests::speech::match_speech(&said, &heard);
        println!(
            "  {listener} hears {talker}: mouth-to-ear delay {delay_ms:.0} ms, correlation with the original {correlation:.2}"
        );
        println!("    recording: {}", heard.display());
    }
    for (listener, speakers) in &stats {
        for (speaker, jitter) in speakers {
            println!(
                "  {listener}'s jitter buffer for {speaker}: {} packets, {} late, delay {:.0} ms, concealed {:.0} ms",
                jitter.packets_received,
                jitter.late_packets,
                jitter.current_delay_ms,
                jitter.concealed_samples as f64 / 48.0,
            );
        }
    }
    println!("\nRun your own: docs/deploy.md (a three-node cluster, step by step).");
}
