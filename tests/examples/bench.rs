//! Benchmarks of the server and SDK over loopback QUIC, run by
//! `cargo xtask bench`. Every figure is printed beside a baseline measured
//! in the same run.
//!
//! - `bench calls [N]`: call setup latency over N calls (default 1000):
//!   invite sent → `onInvited` at the callee, and accept → `onUserEnter` at
//!   the caller, beside the round trip of a bare QUIC stream (a frame echoed
//!   by a plain quinn task, no call logic).
//! - `bench idle SERVER_BIN [N]`: N logged-in idle clients (default 10000)
//!   held by a `calling-server` process, with its resident memory before and
//!   after, per connection.
//! - `bench latency [SECONDS]`: mouth-to-ear latency of a click probe through
//!   the whole stack (capture, encoder, QUIC, server relay, QUIC, jitter
//!   buffer, playout), p50 and p95 beside its floor, with 20 ms frames and
//!   with the low-latency profile's 10 ms ones, over QUIC and the fallback.
//! - `bench cluster [CALLS] [SECONDS]`: a Redis and three cluster nodes in
//!   this process beside a single server: call setup with both users on one
//!   node and on two (every message through the control on a third), the
//!   click probe's mouth-to-ear latency across nodes, and the Redis
//!   commands the cluster runs per call beside its idle rate.
//! - `bench relay-cluster SERVER_BIN [CALLS] [REPEATS] [MEMBERS]`: the
//!   relay's CPU per delivered datagram on one server beside two cluster
//!   nodes with every call's members alternating between them (both nodes'
//!   CPU summed, all pinned to CPU 0), alternating; 1v1 calls by default,
//!   or group calls of `MEMBERS` with one speaker.
//! - `bench relay-ops SERVER_BIN [CALLS] [REPEATS]` and `bench relay-compare
//!   BEFORE_BIN AFTER_BIN [CALLS] [REPEATS]`: the relay's CPU per datagram
//!   with the operations side on beside off, and of two builds, in
//!   alternating server processes pinned to CPU 0 (this process should run
//!   on CPU 1). Relay capacity itself is measured by `calling-load`.
//! - `bench web-latency [SECONDS]`: the click probe's mouth-to-ear latency
//!   from a native user to a page in headless Chromium and back, beside
//!   native to native in the same run, and the CPU a page's call costs
//!   Chromium beside what the native SDK's costs (`bench/web.rs`).
//! - `bench attacks SERVER_BIN`: honest logins from a network of their own
//!   while other networks attack a `calling-server` with its default limits
//!   (10,000 connections that never log in, a handshake flood of 1,100 a
//!   second, a parallel login storm), each beside the same logins with no
//!   attack.

#![allow(clippy::print_stdout, clippy::print_stderr, clippy::unwrap_used)]

#[path = "bench/attacks.rs"]
mod attacks;
#[path = "bench/web.rs"]
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use calling_api::UserId;
use calling_facade::{AudioDevices, CallType, CallingEvent, ClientOptions, TRTCCalling};
use calling_server::config::ServerConfig;
use calling_server::usersig;
use signaling_proto::{ClientMessage, ServerMessage};
use signaling_quic::{QuicServer, ServerIdentity, ServerTrust};
use tokio::sync::{Semaphore, mpsc};

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn summary(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    (percentile(samples, 0.50), percentile(samples, 0.99))
}

fn micros(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e6
}

fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("calls") => calls(args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1000)).await,
        Some("idle") => {
            let server_bin = args.get(1).expect("bench idle SERVER_BIN [N]");
            idle(
                server_bin,
                args.get(2).and_then(|n| n.parse().ok()).unwrap_or(10_000),
            )
            .await;
        }
        Some("relay-ops") => {
            let server_bin = args
                .get(1)
                .expect("bench relay-ops SERVER_BIN [CALLS] [REPEATS]");
            relay_operations(
                server_bin,
                args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200),
                args.get(3).and_then(|n| n.parse().ok()).unwrap_or(2),
            )
            .await;
        }
        Some("relay-cluster") => {
            let server_bin = args
                .get(1)
                .expect("bench relay-cluster SERVER_BIN [CALLS] [REPEATS] [MEMBERS]");
            relay_cluster(
                server_bin,
                args.get(2).and_then(|n| n.parse().ok()).unwrap_or(200),
                args.get(3).and_then(|n| n.parse().ok()).unwrap_or(2),
                args.get(4).and_then(|n| n.parse().ok()).unwrap_or(2).max(2),
            )
            .await;
        }
        Some("relay-compare") => {
            let usage = "bench relay-compare BEFORE_BIN AFTER_BIN [CALLS] [REPEATS]";
            relay_compare(
                [args.get(1).expect(usage), args.get(2).expect(usage)],
                args.get(3).and_then(|n| n.parse().ok()).unwrap_or(400),
                args.get(4).and_then(|n| n.parse().ok()).unwrap_or(3),
            )
            .await;
        }
        Some("cluster") => {
            cluster(
                args.get(1).and_then(|n| n.parse().ok()).unwrap_or(500),
                args.get(2).and_then(|n| n.parse().ok()).unwrap_or(8),
            )
            .await;
        }
        Some("latency") => {
            let seconds = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(12);
            for over_fallback in [false, true] {
                for low_latency in [false, true] {
                    latency(seconds, over_fallback, low_latency).await;
                }
            }
        }
        Some("web-latency") => {
            let seconds = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(12);
            web::web_latency(seconds).await;
        }
        Some("attacks") => {
            let server_bin = args.get(1).expect("bench attacks SERVER_BIN");
            attacks::run(server_bin).await;
        }
        _ => {
            println!(
                "usage: bench calls [N] | bench idle SERVER_BIN [N] | bench latency [SECONDS] | bench attacks SERVER_BIN"
            )
        }
    }
}

/// Round trips of one small frame through a bare quinn stream echo.
async fn bare_round_trips(count: usize) -> Vec<Duration> {
    let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
    let server = QuicServer::bind("127.0.0.1:0".parse().unwrap(), &identity, &[1; 32], 1).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        let mut connection = server
            .accept()
            .await
            .unwrap()
            .establish(Duration::from_secs(10))
            .await
            .unwrap();
        while let Ok(Some(message)) = connection.recv.recv().await {
            if let ClientMessage::Ping { nonce } = message {
                connection
                    .send
                    .send(&ServerMessage::Pong { nonce })
                    .await
                    .unwrap();
            }
        }
    });
    let mut client = signaling_quic::connect(
        addr,
        "localhost",
        &ServerTrust::Fingerprint(identity.fingerprint()),
    )
    .await
    .unwrap();
    let mut samples = Vec::with_capacity(count);
    for nonce in 0..(count + 50) as u64 {
        let started = Instant::now();
        client
            .send
            .send(&ClientMessage::Ping { nonce })
            .await
            .unwrap();
        let _ = client.recv.recv().await.unwrap();
        if nonce >= 50 {
            samples.push(started.elapsed());
        }
    }
    samples
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark round by round, with its baseline beside it"
)]
async fn calls(count: usize) {
    let (server, app, data_dir) = in_process_server("opencalling-bench").await;
    let options = call_options(&server);
    let (mut invite_to_ring, mut accept_to_enter) =
        call_setup(count, [&options, &options], &app).await;
    let mut bare = bare_round_trips(count).await;
    let (bare_p50, bare_p99) = summary(&mut bare);
    let (ring_p50, ring_p99) = summary(&mut invite_to_ring);
    let (enter_p50, enter_p99) = summary(&mut accept_to_enter);
    println!("call setup over loopback QUIC, {count} calls (after 50 warm-up), 2 worker threads");
    println!("  {:<34} {:>9} {:>9}", "", "p50 µs", "p99 µs");
    println!(
        "  {:<34} {:>9.0} {:>9.0}",
        "bare QUIC stream round trip",
        micros(bare_p50),
        micros(bare_p99)
    );
    println!(
        "  {:<34} {:>9.0} {:>9.0}",
        "invite sent -> onInvited (callee)",
        micros(ring_p50),
        micros(ring_p99)
    );
    println!(
        "  {:<34} {:>9.0} {:>9.0}",
        "accept -> onUserEnter (caller)",
        micros(enter_p50),
        micros(enter_p99)
    );
    println!(
        "  ratio to the bare round trip:      invite p50 {:.2}x p99 {:.2}x, accept p50 {:.2}x p99 {:.2}x",
        micros(ring_p50) / micros(bare_p50),
        micros(ring_p99) / micros(bare_p99),
        micros(enter_p50) / micros(bare_p50),
        micros(enter_p99) / micros(bare_p99)
    );
    println!(
        "  targets: p99 < 5 ms ({}), within 2x the bare round trip ({})",
        if ring_p99.max(enter_p99) < Duration::from_millis(5) {
            "met"
        } else {
            "MISSED"
        },
        if micros(ring_p99.max(enter_p99)) <= 2.0 * micros(bare_p99) {
            "met"
        } else {
            "MISSED"
        }
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// SDK options for `server`, without audio devices (call setup only).
fn call_options(server: &calling_server::RunningServer) -> ClientOptions {
    let mut options =
        ClientOptions::development(server.local_addr().to_string(), server.fingerprint());
    options.audio = AudioDevices::none();
    options
}

/// Alice (with the first options) calls Bob (the second) `count` times
/// after 50 warm-up calls: invite sent → `onInvited`, accept →
/// `onUserEnter`.
async fn call_setup(
    count: usize,
    [alice_options, bob_options]: [&ClientOptions; 2],
    app: &calling_server::AppCredentials,
) -> (Vec<Duration>, Vec<Duration>) {
    let login = |name: &'static str, options: &ClientOptions| {
        let options = options.clone();
        let app = app.clone();
        async move {
            let calling = TRTCCalling::new(options);
            let (tx, rx) = mpsc::unbounded_channel();
            calling.register_listener(move |event: &CallingEvent| {
                let _ = tx.send((Instant::now(), event.clone()));
            });
            let sig = usersig::generate(
                u64::from(app.sdk_app_id),
                app.secret_key.expose(),
                name,
                3_600,
                now_unix(),
                None,
            );
            calling.login(app.sdk_app_id, name, &sig).await.unwrap();
            (calling, rx)
        }
    };
    let (alice, mut alice_events) = login("alice", alice_options).await;
    let (bob, mut bob_events) = login("bob", bob_options).await;
    async fn wait(
        events: &mut mpsc::UnboundedReceiver<(Instant, CallingEvent)>,
        want: fn(&CallingEvent) -> bool,
    ) -> Instant {
        loop {
            let (at, event) = events.recv().await.unwrap();
            if want(&event) {
                return at;
            }
        }
    }
    let mut invite_to_ring = Vec::with_capacity(count);
    let mut accept_to_enter = Vec::with_capacity(count);
    for round in 0..count + 50 {
        let dialed = Instant::now();
        alice.call("bob", CallType::Audio).await.unwrap();
        let rang = wait(&mut bob_events, |event| {
            matches!(event, CallingEvent::Invited { .. })
        })
        .await;
        let accepted = Instant::now();
        bob.accept().await.unwrap();
        let entered = wait(&mut alice_events, |event| {
            matches!(event, CallingEvent::UserEnter { .. })
        })
        .await;
        alice.hangup().await.unwrap();
        wait(&mut alice_events, |event| {
            matches!(event, CallingEvent::CallEnded { .. })
        })
        .await;
        wait(&mut bob_events, |event| {
            matches!(event, CallingEvent::CallEnded { .. })
        })
        .await;
        if round >= 50 {
            invite_to_ring.push(rang - dialed);
            accept_to_enter.push(entered - accepted);
        }
    }
    alice.destroy();
    bob.destroy();
    (invite_to_ring, accept_to_enter)
}

/// Three cluster nodes in this process on a real Redis, beside a single
/// server: see the [module docs](self).
async fn cluster(count: usize, seconds: u64) {
    use calling_server::config::SecretKey;
    let redis = opencalling_tests::redis::RedisServer::start().unwrap();
    let app = calling_server::AppCredentials {
        sdk_app_id: 1_400_000_000,
        secret_key: SecretKey::new("bench-cluster-app-key"),
    };
    let (nodes, dirs, control) = start_cluster(&redis, &app).await;
    let followers: Vec<usize> = (0..3).filter(|index| *index != control).collect();
    let (a, b) = (&nodes[followers[0]], &nodes[followers[1]]);
    let (single, single_app, single_dir) = in_process_server("opencalling-bench-single").await;

    let mut rows = Vec::new();
    let one = call_options(&single);
    rows.push((
        "one server",
        call_setup(count, [&one, &one], &single_app).await,
    ));
    let on_a = call_options(a);
    rows.push((
        "cluster, both on one node",
        call_setup(count, [&on_a, &on_a], &app).await,
    ));
    let on_b = call_options(b);
    let commands_before = redis_commands(&redis);
    let started = Instant::now();
    rows.push((
        "cluster, on two nodes",
        call_setup(count, [&on_a, &on_b], &app).await,
    ));
    let busy = started.elapsed();
    let commands_in_calls = redis_commands(&redis) - commands_before;
    // The cluster's own rate (leases, registry, address books) over 5 s.
    let idle_before = redis_commands(&redis);
    let idle_window = Duration::from_secs(5);
    tokio::time::sleep(idle_window).await;
    let idle_rate = (redis_commands(&redis) - idle_before) as f64 / idle_window.as_secs_f64();

    println!(
        "cluster call setup, {count} calls each (after 50 warm-up), three nodes and the single server in one process, 2 worker threads"
    );
    println!(
        "  {:<28} {:>12} {:>12} {:>12} {:>12}",
        "", "ring p50 µs", "ring p99 µs", "enter p50 µs", "enter p99 µs"
    );
    let mut base = None;
    for (label, (mut ring, mut enter)) in rows {
        let (ring_p50, ring_p99) = summary(&mut ring);
        let (enter_p50, enter_p99) = summary(&mut enter);
        println!(
            "  {label:<28} {:>12.0} {:>12.0} {:>12.0} {:>12.0}",
            micros(ring_p50),
            micros(ring_p99),
            micros(enter_p50),
            micros(enter_p99)
        );
        let base = *base.get_or_insert((ring_p50, ring_p99));
        println!(
            "  {:<28} ring p50 {:.2}x, p99 {:.2}x the single server",
            "",
            micros(ring_p50) / micros(base.0),
            micros(ring_p99) / micros(base.1)
        );
    }
    let calls = (count + 50) as f64;
    let beyond_idle = commands_in_calls as f64 - idle_rate * busy.as_secs_f64();
    println!(
        "  Redis commands: {commands_in_calls} during {calls} calls over {:.1} s; idle, the cluster runs {idle_rate:.1} a second (leases, registry, address books): {:.3} per call beyond that",
        busy.as_secs_f64(),
        beyond_idle.max(0.0) / calls
    );

    compare_relay_delays([&single, a, b], [&single_app, &app]).await;
    compare_click_latency(
        seconds,
        [
            &single_options(&single),
            &single_options(a),
            &single_options(b),
        ],
        [&single_app, &app],
    )
    .await;
    for node in nodes {
        node.shutdown().await;
    }
    single.shutdown().await;
    for dir in dirs.into_iter().chain([single_dir]) {
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// Three cluster nodes in this process on `redis`, serving `app`: the
/// nodes, their data directories, and which hosts the control.
async fn start_cluster(
    redis: &opencalling_tests::redis::RedisServer,
    app: &calling_server::AppCredentials,
) -> (
    Vec<calling_server::RunningServer>,
    Vec<std::path::PathBuf>,
    usize,
) {
    use calling_server::config::{ClusterConfig, SecretKey};
    let mut nodes = Vec::new();
    let mut dirs = Vec::new();
    for index in 0..3 {
        let data_dir = std::env::temp_dir().join(format!(
            "opencalling-bench-node{index}-{}",
            std::process::id()
        ));
        dirs.push(data_dir.clone());
        let mut config = ServerConfig::at("127.0.0.1:0".parse().unwrap(), data_dir);
        config.apps = vec![app.clone()];
        config.switchboard = unlimited_invitations();
        config.connection_limits = unlimited_requests();
        config.cluster = Some(ClusterConfig {
            redis_url: SecretKey::new(redis.url()),
            prefix: "bench".into(),
            listen: "127.0.0.1:0".parse().unwrap(),
            advertise: "127.0.0.1:0".parse().unwrap(),
            key: SecretKey::new("bench-cluster-key"),
        });
        let node = calling_server::start(config).await.unwrap();
        nodes.push(node);
    }
    let mut hosting = None;
    while hosting.is_none() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut statuses = Vec::new();
        for node in &nodes {
            statuses.push(node.stats().await.unwrap().cluster.unwrap());
        }
        if statuses.iter().all(|status| status.ready) {
            hosting = statuses.iter().position(|status| status.hosting);
        }
    }
    (nodes, dirs, hosting.unwrap())
}

/// Client-to-client relay delay on one server (the first) and across two
/// nodes (the second and third).
async fn compare_relay_delays(
    [single, a, b]: [&calling_server::RunningServer; 3],
    [single_app, app]: [&calling_server::AppCredentials; 2],
) {
    let mut one_hop = relay_delays(single, single, single_app, 2_000).await;
    let mut two_hops = relay_delays(a, b, app, 2_000).await;
    let (one_p50, one_p99) = summary(&mut one_hop);
    let (two_p50, two_p99) = summary(&mut two_hops);
    println!("relay delay, client to client, 2,000 audio datagrams 2 ms apart");
    println!(
        "  {:<28} p50 {:>6.0} µs, p99 {:>6.0} µs",
        "one server",
        micros(one_p50),
        micros(one_p99)
    );
    println!(
        "  {:<28} p50 {:>6.0} µs, p99 {:>6.0} µs ({:.2}x, {:.2}x)",
        "cluster, on two nodes",
        micros(two_p50),
        micros(two_p99),
        micros(two_p50) / micros(one_p50),
        micros(two_p99) / micros(one_p99)
    );
}

/// The click probe's latency on one server (first options) and across two
/// nodes (second and third), over alternating calls.
async fn compare_click_latency(
    seconds: u64,
    [one, here, there]: [&ClientOptions; 3],
    [single_app, app]: [&calling_server::AppCredentials; 2],
) {
    // Each call settles on one delay (its playout's phase against the
    // frames), so the comparison takes several calls, alternating.
    let mut same = Vec::new();
    let mut across = Vec::new();
    for _ in 0..4 {
        let (sent, received, _) = click_latency(seconds, [one, one], single_app).await;
        same.extend(click_percentiles(&sent, &received).map(|(p50, ..)| p50));
        let (sent, received, _) = click_latency(seconds, [here, there], app).await;
        across.extend(click_percentiles(&sent, &received).map(|(p50, ..)| p50));
    }
    println!(
        "mouth-to-ear latency of the click probe: four {seconds} s calls each, alternating; each call's p50"
    );
    for (label, figures) in [
        ("one server", &mut same),
        ("cluster, on two nodes", &mut across),
    ] {
        figures.sort();
        let shown: Vec<String> = figures
            .iter()
            .map(|p50| format!("{:.1}", p50.as_secs_f64() * 1e3))
            .collect();
        println!("  {label:<28} {} ms", shown.join(", "));
    }
    if !same.is_empty() && !across.is_empty() {
        let (same, across) = (same[same.len() / 2], across[across.len() / 2]);
        println!(
            "  median: one server {:.1} ms, across nodes {:.1} ms ({:+.1} ms, {:.2}x)",
            same.as_secs_f64() * 1e3,
            across.as_secs_f64() * 1e3,
            (across.as_secs_f64() - same.as_secs_f64()) * 1e3,
            across.as_secs_f64() / same.as_secs_f64()
        );
    }
}

/// The benchmark's two users call each other thousands of times.
fn unlimited_invitations() -> signaling_proto::SwitchboardConfig {
    signaling_proto::SwitchboardConfig {
        invitations_per_minute: u32::MAX,
        ..signaling_proto::SwitchboardConfig::DEFAULT
    }
}

/// The benchmark's two users make thousands of requests a second, far past
/// a client's signaling budget (docs/security.md): the budget is lifted.
fn unlimited_requests() -> calling_server::config::ConnectionLimits {
    calling_server::config::ConnectionLimits {
        requests_per_sec: 1_000_000,
        request_burst: 1_000_000,
        ..calling_server::config::ConnectionLimits::DEFAULT
    }
}

/// A raw client logged in (version 1: no heartbeats owed) at `server`.
async fn raw_client(
    server: &calling_server::RunningServer,
    app: &calling_server::AppCredentials,
    user: &str,
) -> signaling_quic::ClientConnection {
    let trust = ServerTrust::Fingerprint(server.fingerprint());
    let mut client = signaling_quic::connect(server.local_addr(), "localhost", &trust)
        .await
        .unwrap();
    let sig = usersig::generate(
        u64::from(app.sdk_app_id),
        app.secret_key.expose(),
        user,
        3_600,
        now_unix(),
        None,
    );
    client
        .send
        .send(&ClientMessage::Login {
            protocol_version: 1,
            sdk_app_id: app.sdk_app_id,
            user_id: UserId::new(user).unwrap(),
            user_sig: sig.into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    let _ = client.recv.recv().await.unwrap();
    client
}

/// One-way delays of `count` audio datagrams from a client at `from` to
/// one at `to`, in a call between them (sent 2 ms apart, the send time
/// inside).
async fn relay_delays(
    from: &calling_server::RunningServer,
    to: &calling_server::RunningServer,
    app: &calling_server::AppCredentials,
    count: u32,
) -> Vec<Duration> {
    use signaling_proto::{DatagramKind, FlowId, MediaHeader, RequestId};
    let mut caller = raw_client(from, app, "delay-a").await;
    let mut callee = raw_client(to, app, "delay-b").await;
    caller
        .send
        .send(&ClientMessage::Invite {
            request_id: RequestId(1),
            call_id: None,
            user_ids: vec![UserId::new("delay-b").unwrap()],
            call_type: CallType::Audio,
            timeout_ms: None,
            user_data: None,
        })
        .await
        .unwrap();
    let call_id = loop {
        if let Some(ServerMessage::Invited { call_id, .. }) = callee.recv.recv().await.unwrap() {
            break call_id;
        }
    };
    callee
        .send
        .send(&ClientMessage::Accept {
            request_id: RequestId(1),
            call_id,
        })
        .await
        .unwrap();
    while !matches!(
        caller.recv.recv().await.unwrap(),
        Some(ServerMessage::UserEntered { .. })
    ) {}
    let origin = Instant::now();
    let receiver = callee.connection.clone();
    let listen = tokio::spawn(async move {
        let mut delays = Vec::new();
        while let Ok(Ok(datagram)) =
            tokio::time::timeout(Duration::from_millis(500), receiver.read_datagram()).await
        {
            let arrived = origin.elapsed();
            if let Ok((_, payload)) = MediaHeader::decode(&datagram)
                && let Ok(sent) = <[u8; 8]>::try_from(&payload[..8.min(payload.len())])
            {
                let sent = Duration::from_nanos(u64::from_le_bytes(sent));
                delays.push(arrived.saturating_sub(sent));
            }
        }
        delays
    });
    let mut buffer = vec![0_u8; 128];
    for sequence in 0..count {
        let sent = u64::try_from(origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut payload = sent.to_le_bytes().to_vec();
        payload.resize(80, 0);
        let header = MediaHeader {
            kind: DatagramKind::Audio,
            flow_id: FlowId(0),
            sequence,
            timestamp: sequence * 960,
            voice_activity: true,
            level_dbov: 20,
        };
        let len = header.encode(&payload, &mut buffer).unwrap();
        let _ = caller
            .connection
            .send_datagram(bytes::Bytes::copy_from_slice(&buffer[..len]));
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let delays = listen.await.unwrap();
    caller.connection.close(0_u32.into(), b"");
    callee.connection.close(0_u32.into(), b"");
    delays
}

/// Plain options for `server` (the click probe sets the devices).
fn single_options(server: &calling_server::RunningServer) -> ClientOptions {
    ClientOptions::development(server.local_addr().to_string(), server.fingerprint())
}

/// Commands Redis has processed so far (`INFO stats`).
fn redis_commands(redis: &opencalling_tests::redis::RedisServer) -> u64 {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(redis.addr()) else {
        return 0;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
    if stream.write_all(b"INFO stats\r\n").is_err() {
        return 0;
    }
    let mut text = String::new();
    let mut buffer = [0_u8; 8192];
    while !text.contains("total_commands_processed:") || !text.ends_with("\r\n") {
        match stream.read(&mut buffer) {
            Ok(0) | Err(_) => break,
            Ok(read) => text.push_str(&String::from_utf8_lossy(&buffer[..read])),
        }
    }
    text.lines()
        .find_map(|line| line.strip_prefix("total_commands_processed:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}

/// A development-mode server in this process, on loopback, with its own
/// data directory (removed by the caller when done).
async fn in_process_server(
    tag: &str,
) -> (
    calling_server::RunningServer,
    calling_server::AppCredentials,
    std::path::PathBuf,
) {
    let data_dir = std::env::temp_dir().join(format!("{tag}-{}", std::process::id()));
    let mut config = ServerConfig::at("127.0.0.1:0".parse().unwrap(), data_dir.clone());
    config.switchboard = unlimited_invitations();
    config.connection_limits = unlimited_requests();
    let server = calling_server::start(config).await.unwrap();
    let app = server.development_app().unwrap().clone();
    (server, app, data_dir)
}

/// One client endpoint (one UDP socket) for a load generator's many
/// connections, with room in its receive buffer for bursts.
fn load_endpoint() -> quinn::Endpoint {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
    let _ = udp_state.set_recv_buffer_size((&socket).into(), 4 * 1024 * 1024);
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap()
}

/// A `calling-server` child process in development mode, with what its
/// banner says.
struct DevServer {
    child: tokio::process::Child,
    pid: u32,
    addr: SocketAddr,
    fingerprint: signaling_quic::CertFingerprint,
    key: String,
}

impl DevServer {
    /// Runs `command` (the server binary, maybe behind taskset, with its
    /// limits) listening on loopback with `data_dir`, and reads its banner.
    ///
    /// `app_key`: the key of the app the command configures (a cluster
    /// node); `None`: a development server, which prints its own.
    async fn spawn(
        mut command: tokio::process::Command,
        data_dir: &std::path::Path,
        app_key: Option<&str>,
    ) -> Self {
        use tokio::io::{AsyncBufReadExt, BufReader};
        // Capacity is measured here, not the flood protection (unless the
        // command sets its own budget: the attack bench).
        let sets_budget = command
            .as_std()
            .get_args()
            .any(|arg| arg == "--handshakes-per-sec");
        if !sets_budget {
            command.args(["--handshakes-per-sec", "10000000"]);
        }
        let mut child = command
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(data_dir)
            .env(
                "RUST_LOG",
                std::env::var("BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let pid = child.id().unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let (mut addr, mut fingerprint, mut key) = (None, None, app_key.map(str::to_owned));
        while let Some(line) = lines.next_line().await.unwrap() {
            if let Some(rest) = line.strip_prefix("OpenCalling server listening on ") {
                addr = rest.parse::<SocketAddr>().ok();
            } else if let Some(rest) = line.strip_prefix("certificate fingerprint (sha256): ") {
                fingerprint = rest.parse().ok();
                if key.is_some() {
                    break;
                }
            } else if let Some(rest) = line.trim().strip_prefix("secret key: ") {
                key = Some(rest.to_owned());
                break;
            }
        }
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (addr, fingerprint, key) = (addr.unwrap(), fingerprint.unwrap(), key.unwrap());
        Self {
            child,
            pid,
            addr,
            fingerprint,
            key,
        }
    }
}

/// Resident set size of a process, in KiB.
fn rss_kib(pid: u32) -> u64 {
    process_stats::ProcessStats::of(pid).map_or(0, |stats| stats.resident_kib())
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark round by round, with its baseline beside it"
)]
async fn idle(server_bin: &str, count: usize) {
    let data_dir =
        std::env::temp_dir().join(format!("opencalling-bench-idle-{}", std::process::id()));
    let mut command = tokio::process::Command::new(server_bin);
    command
        .args(["--max-connections", &(count + 100).to_string()])
        .args(["--max-connections-per-ip", &(count + 100).to_string()]);
    let DevServer {
        mut child,
        pid,
        addr,
        fingerprint,
        key,
    } = DevServer::spawn(command, &data_dir, None).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid);

    let mut endpoint = load_endpoint();
    endpoint.set_default_client_config(
        signaling_quic::client_config(&ServerTrust::Fingerprint(fingerprint)).unwrap(),
    );
    let in_flight = Arc::new(Semaphore::new(16));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    let now = now_unix();
    for n in 0..count {
        let endpoint = endpoint.clone();
        let permit = Arc::clone(&in_flight).acquire_owned().await.unwrap();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            let user = format!("idle{n}");
            // A handshake through a Retry occasionally stalls until the idle
            // timeout (see docs/benchmarks.md): a real client tries again, so
            // does this one, and the retries are counted.
            let mut attempts = 0;
            let mut client = loop {
                attempts += 1;
                match signaling_quic::connect_on(&endpoint, addr, "localhost").await {
                    Ok(client) => break client,
                    Err(error) if attempts < 3 => {
                        eprintln!(
                            "connection {n}: attempt {attempts} failed after {:?}: {error}",
                            started.elapsed()
                        );
                    }
                    Err(error) => panic!("connection {n} failed {attempts} times: {error}"),
                }
            };
            let sig = usersig::generate(1_400_000_000, &key, &user, 3_600, now, None);
            // Version 1: a later session owes a heartbeat a second and is
            // dropped after 5 s without one, which these bare clients do
            // not send (calling-load's clients do).
            let login = ClientMessage::Login {
                protocol_version: 1,
                sdk_app_id: 1_400_000_000,
                user_id: UserId::new(user).unwrap(),
                user_sig: sig.into(),
                device_id: None,
                media_encryption: signaling_proto::MediaEncryption::None,
            };
            client.send.send(&login).await.unwrap();
            match client.recv.recv().await.unwrap() {
                Some(ServerMessage::LoginResult { code, .. }) if code.is_ok() => {}
                other => panic!("login {n} failed: {other:?}"),
            }
            drop(permit);
            (client, attempts - 1)
        }));
    }
    let mut clients = Vec::with_capacity(count);
    let mut retried = 0;
    for task in tasks {
        let (client, retries) = task.await.unwrap();
        retried += retries;
        clients.push(client);
    }
    let login_time = started.elapsed();
    // Let keep-alives run a round with everyone idle.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let rss_after = rss_kib(pid);
    // The server still answers promptly with everyone connected.
    let probe = &mut clients[0];
    let ping_started = Instant::now();
    probe
        .send
        .send(&ClientMessage::Ping { nonce: 1 })
        .await
        .unwrap();
    let pong = probe.recv.recv().await;
    let ping = ping_started.elapsed();
    assert!(
        matches!(pong, Ok(Some(ServerMessage::Pong { nonce: 1 }))),
        "the idle clients must still be logged in: {pong:?}"
    );
    let per_connection = (rss_after.saturating_sub(rss_before)) as f64 / count as f64;
    println!("idle clients held by one calling-server process");
    println!(
        "  clients logged in:             {count} in {login_time:.1?} ({retried} handshakes needed a second try)"
    );
    println!(
        "  server RSS before / after:     {} MiB / {} MiB",
        rss_before / 1024,
        rss_after / 1024
    );
    println!("  memory per connection:         {per_connection:.1} KiB");
    println!("  ping round trip while holding: {:.0} µs", micros(ping));
    println!(
        "  target: {count} clients under 1 GiB RSS ({})",
        if rss_after < 1024 * 1024 {
            "met"
        } else {
            "MISSED"
        }
    );
    drop(clients);
    let _ = child.kill().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Clicks from alice to bob for `seconds`, over QUIC or (`over_fallback`,
/// UDP to the server lost) over the fallback transport, both users with
/// the low-latency profile or neither.
async fn latency(seconds: u64, over_fallback: bool, low_latency: bool) {
    use calling_facade::Fallback;
    let (server, app, data_dir) = in_process_server("opencalling-bench-latency").await;
    let mut options =
        ClientOptions::development(server.local_addr().to_string(), server.fingerprint());
    options.low_latency = low_latency;
    // A UDP socket that never answers stands for a network that drops UDP.
    let udp_black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    if over_fallback {
        options.server = udp_black_hole.local_addr().unwrap().to_string();
        options.fallback = Fallback::At(server.fallback_addr().unwrap().to_string());
    }
    let transport = if over_fallback {
        "the fallback (WebSocket over TLS over TCP)"
    } else {
        "QUIC"
    };
    let (sent, received, heard) = click_latency(seconds, [&options, &options], &app).await;
    let frame_ms = if low_latency { 10.0 } else { 20.0 };
    print_latency(transport, frame_ms, &sent, &received);
    if let Some(stats) = heard {
        println!(
            "  bob's jitter buffer: {} concealment events ({} ms concealed; target on a clean link: none), {:.0} ms packets",
            stats.concealment_events,
            stats.concealed_samples / 48,
            stats.packet_ms
        );
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Alice (first options) sends a click probe to Bob (second) for
/// `seconds`: when each click was said and heard, and bob's jitter
/// statistics of alice.
async fn click_latency(
    seconds: u64,
    [alice_options, bob_options]: [&ClientOptions; 2],
    app: &calling_server::AppCredentials,
) -> (
    Vec<Instant>,
    Vec<Instant>,
    Option<calling_facade::JitterStats>,
) {
    use audio_device::probe::{ClickDetector, ClickProbe};
    use calling_facade::{CaptureDevice, CustomSink, CustomSource, PlaybackDevice};
    let (probe, sent) = ClickProbe::new();
    let (detector, received) = ClickDetector::new();
    let mut options = alice_options.clone();
    options.audio = AudioDevices {
        capture: CaptureDevice::Custom(CustomSource(Arc::new(std::sync::Mutex::new(probe)))),
        playback: PlaybackDevice::Null,
    };
    let alice = TRTCCalling::new(options);
    let mut options = bob_options.clone();
    options.audio = AudioDevices {
        capture: CaptureDevice::Silence,
        playback: PlaybackDevice::Custom(CustomSink(Arc::new(std::sync::Mutex::new(detector)))),
    };
    let bob = TRTCCalling::new(options);
    let sig = |user: &str| {
        usersig::generate(
            u64::from(app.sdk_app_id),
            app.secret_key.expose(),
            user,
            3_600,
            now_unix(),
            None,
        )
    };
    alice
        .login(app.sdk_app_id, "alice", &sig("alice"))
        .await
        .unwrap();
    bob.login(app.sdk_app_id, "bob", &sig("bob")).await.unwrap();
    let mut bob_events = bob.events();
    alice.call("bob", CallType::Audio).await.unwrap();
    while !matches!(bob_events.recv().await, Some(CallingEvent::Invited { .. })) {}
    bob.accept().await.unwrap();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let heard = bob
        .audio_stats()
        .await
        .ok()
        .and_then(|stats| stats.first().map(|(_, stats)| *stats));
    alice.hangup().await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    alice.destroy();
    bob.destroy();
    let sent = sent.lock().unwrap().clone();
    let received = received.lock().unwrap().clone();
    (sent, received, heard)
}

/// Matches each click heard with the latest sent before it; prints the
/// mouth-to-ear latency over `transport` with `frame_ms` frames.
fn print_latency(transport: &str, frame_ms: f64, sent: &[Instant], received: &[Instant]) {
    let Some((p50, p95, clicks)) = click_percentiles(sent, received) else {
        println!(
            "mouth-to-ear latency: no click was heard ({} sent, {} detected)",
            sent.len(),
            received.len()
        );
        return;
    };
    let lookahead_ms = 6.5;
    // The pull is the playout's granularity: a click waits up to one.
    let pull_ms = 1e3 * audio_pipeline::PULL_SAMPLES as f64 / 48_000.0;
    let (profile, target_ms) = if frame_ms < 20.0 {
        ("the low-latency profile (10 ms frames)", 30)
    } else {
        ("20 ms frames", 40)
    };
    let floor = frame_ms + lookahead_ms + pull_ms;
    println!(
        "mouth-to-ear latency over loopback and {transport}, {profile}, {clicks} clicks (capture → Opus → transport → relay → transport → jitter buffer → playout)"
    );
    println!(
        "  p50 {:.1} ms, p95 {:.1} ms",
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    );
    println!(
        "  floor {floor:.1} ms ({frame_ms} ms frame + {lookahead_ms} ms Opus look-ahead + {pull_ms} ms playout pull); p50 is {:.2}x the floor",
        p50.as_secs_f64() * 1e3 / floor
    );
    println!(
        "  target p50 <= {target_ms} ms: {}",
        if p50 <= Duration::from_millis(target_ms) {
            "met"
        } else {
            "MISSED"
        }
    );
}

/// Each click heard matched with the latest said before it: p50, p95 and
/// how many (the first two skipped: the jitter buffer settles).
fn click_percentiles(
    sent: &[Instant],
    received: &[Instant],
) -> Option<(Duration, Duration, usize)> {
    let mut latencies: Vec<Duration> = audio_device::probe::click_latencies(sent, received)
        .into_iter()
        .skip(2)
        .collect();
    if latencies.is_empty() {
        return None;
    }
    latencies.sort();
    Some((
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.95),
        latencies.len(),
    ))
}

/// CPU time (user + system) of a process so far.
fn cpu_time(pid: u32) -> Duration {
    process_stats::ProcessStats::of(pid).map_or(Duration::ZERO, |stats| stats.cpu)
}

/// Spawns `command` pinned to CPU 0 when `taskset` is there.
fn pinned(program: &str) -> tokio::process::Command {
    if std::path::Path::new("/usr/bin/taskset").exists() {
        let mut command = tokio::process::Command::new("/usr/bin/taskset");
        command.args(["-c", "0", program]);
        command
    } else {
        tokio::process::Command::new(program)
    }
}

/// One measurement round's outcome.
struct Round {
    /// Datagrams the members should have received.
    sent: u64,
    received: u64,
    p99: Duration,
    server_cpu: Duration,
}

impl Round {
    fn loss_percent(&self) -> f64 {
        100.0 * (1.0 - self.received as f64 / self.sent.max(1) as f64)
    }

    fn passes(&self) -> bool {
        self.loss_percent() <= 0.1 && self.p99 <= Duration::from_millis(5)
    }

    fn cpu_per_datagram_us(&self) -> f64 {
        self.server_cpu.as_secs_f64() * 1e6 / self.received.max(1) as f64
    }
}

const ROUND: Duration = Duration::from_secs(3);

/// What the receivers count, and the forwarding process to watch.
struct Meter {
    received: Arc<std::sync::atomic::AtomicU64>,
    delays: Arc<std::sync::Mutex<Vec<u32>>>,
    /// The forwarding processes (a cluster's nodes: their CPU adds up).
    pids: Vec<u32>,
}

impl Meter {
    fn new(pids: Vec<u32>) -> Self {
        Self {
            received: Arc::default(),
            delays: Arc::default(),
            pids,
        }
    }

    fn cpu(&self) -> Duration {
        self.pids.iter().map(|pid| cpu_time(*pid)).sum()
    }

    /// One measured round of `calls` calls: quiet, then `ROUND` of traffic
    /// through `send`, then time for the last datagrams to land.
    async fn round<F: FnMut(usize, bool, &[u8]) -> u64>(
        &self,
        calls: usize,
        origin: Instant,
        send: F,
    ) -> Round {
        use std::sync::atomic::Ordering;
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.received.store(0, Ordering::Relaxed);
        self.delays.lock().unwrap().clear();
        let server_before = self.cpu();
        let sent = drive(calls, origin, send).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Round {
            sent,
            received: self.received.load(Ordering::Relaxed),
            p99: p99(&mut self.delays.lock().unwrap()),
            server_cpu: self.cpu() - server_before,
        }
    }
}

/// Sends from every pair both ways at 50 datagrams/s for `ROUND`, through
/// `send` (one call per datagram, the payload stamped with the send time;
/// it says how many members should receive it). What they all should.
/// Pairs are spread over the 20 ms period in 1 ms slots, as independent
/// clients would be: a synchronised burst of every call's frame at once
/// would measure loopback queue overflows, not the relay.
async fn drive<F: FnMut(usize, bool, &[u8]) -> u64>(
    pairs: usize,
    origin: Instant,
    mut send: F,
) -> u64 {
    const SLOTS: usize = 20;
    let mut sent = 0;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let ticks = ROUND.as_millis() as usize;
    let mut payload = [0_u8; 88];
    for tick in 0..ticks {
        interval.tick().await;
        let slot = tick % SLOTS;
        for pair in (slot..pairs).step_by(SLOTS) {
            for forward in [true, false] {
                let stamp = origin.elapsed().as_micros() as u64;
                payload[..8].copy_from_slice(&stamp.to_le_bytes());
                sent += send(pair, forward, &payload);
            }
        }
    }
    sent
}

fn record(
    delays: &std::sync::Mutex<Vec<u32>>,
    received: &std::sync::atomic::AtomicU64,
    origin: Instant,
    payload: &[u8],
) {
    if let Some(stamp) = payload
        .get(..8)
        .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
    {
        let sent_at = u64::from_le_bytes(stamp);
        let now = origin.elapsed().as_micros() as u64;
        received.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        delays
            .lock()
            .unwrap()
            .push(now.saturating_sub(sent_at) as u32);
    }
}

fn p99(delays: &mut [u32]) -> Duration {
    if delays.is_empty() {
        return Duration::ZERO;
    }
    delays.sort_unstable();
    Duration::from_micros(u64::from(delays[(delays.len() - 1) * 99 / 100]))
}

/// A client of the relay benchmark logged in as `user` at `addr` (a
/// cluster node takes logins once it has found its control: retried).
async fn bench_login(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    key: &str,
    user: &str,
    now: u64,
) -> signaling_quic::ClientConnection {
    loop {
        let Ok(mut client) = signaling_quic::connect_on(endpoint, addr, "localhost").await else {
            continue;
        };
        let sig = usersig::generate(1_400_000_000, key, user, 3_600, now, None);
        client
            .send
            .send(&ClientMessage::Login {
                // Version 1: no heartbeats owed (see `idle`).
                protocol_version: 1,
                sdk_app_id: 1_400_000_000,
                user_id: UserId::new(user).unwrap(),
                user_sig: sig.into(),
                device_id: None,
                media_encryption: signaling_proto::MediaEncryption::None,
            })
            .await
            .unwrap();
        if let Ok(Some(ServerMessage::LoginResult { code, .. })) = client.recv.recv().await
            && code.is_ok()
        {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Rounds of the relay benchmark against a `calling-server` started with
/// `extra` arguments: one round per size of `sizes` (calls added as they
/// grow), stopping after the first round over the limits.
async fn quic_relay_rounds(
    server_bin: &str,
    extra: &[String],
    origin: Instant,
    sizes: &[usize],
) -> Vec<Round> {
    quic_relay_rounds_on(server_bin, extra, origin, sizes, None, 2).await
}

/// The relay rounds against one server, or (`cluster`: its Redis) two
/// cluster nodes with every call's members on different nodes, both nodes
/// pinned to the same CPU as a single server would be.
#[allow(
    clippy::too_many_lines,
    reason = "one benchmark round by round, with its baseline beside it"
)]
async fn quic_relay_rounds_on(
    server_bin: &str,
    extra: &[String],
    origin: Instant,
    sizes: &[usize],
    cluster: Option<&opencalling_tests::redis::RedisServer>,
    members: usize,
) -> Vec<Round> {
    const CLUSTER_APP_KEY: &str = "bench-relay-cluster-app-key";
    let data_dir =
        std::env::temp_dir().join(format!("opencalling-bench-relay-{}", std::process::id()));
    let node_count = if cluster.is_some() { 2 } else { 1 };
    let mut servers = Vec::new();
    for node in 0..node_count {
        let mut command = pinned(server_bin);
        command.args([
            "--max-connections",
            "20000",
            "--max-connections-per-ip",
            "20000",
        ]);
        command.args(extra);
        let node_dir = data_dir.join(format!("node{node}"));
        if let Some(redis) = cluster {
            command
                .args([
                    "--sdk-app-id",
                    "1400000000",
                    "--secret-key",
                    CLUSTER_APP_KEY,
                ])
                .args(["--redis", &redis.url(), "--redis-prefix"])
                .arg(format!("bench-relay-{}", std::process::id()))
                .args(["--cluster-listen", "127.0.0.1:0", "--cluster-advertise"])
                .args(["127.0.0.1:0", "--cluster-key", "bench-relay-cluster-key"])
                .args(["--fallback-listen", "off"]);
            // One certificate for both nodes: one client configuration.
            if node > 0 {
                std::fs::create_dir_all(&node_dir).unwrap();
                for file in ["cert.der", "key.der"] {
                    std::fs::copy(data_dir.join("node0").join(file), node_dir.join(file)).unwrap();
                }
            }
        }
        let app_key = cluster.map(|_| CLUSTER_APP_KEY);
        servers.push(DevServer::spawn(command, &node_dir, app_key).await);
    }
    let meter = Meter::new(servers.iter().map(|server| server.pid).collect());
    let (fingerprint, key) = (servers[0].fingerprint, servers[0].key.clone());
    let addrs: Vec<SocketAddr> = servers.iter().map(|server| server.addr).collect();
    let mut endpoint = load_endpoint();
    endpoint.set_default_client_config(
        signaling_quic::client_config(&ServerTrust::Fingerprint(fingerprint)).unwrap(),
    );
    let (received, delays) = (Arc::clone(&meter.received), Arc::clone(&meter.delays));
    // Each call's members' connections, its first member (the speaker of a
    // group call) first.
    let mut calls_up: Vec<Vec<quinn::Connection>> = Vec::new();
    let mut keep = Vec::new();
    let now = now_unix();
    let mut quic_rounds = Vec::new();
    for &calls in sizes {
        while calls_up.len() < calls {
            let index = calls_up.len();
            let mut clients = Vec::new();
            for member in 0..members {
                let user = format!("r{index}m{member}");
                clients.push(
                    bench_login(&endpoint, addrs[member % addrs.len()], &key, &user, now).await,
                );
            }
            let invitees: Vec<UserId> = (1..members)
                .map(|member| UserId::new(format!("r{index}m{member}")).unwrap())
                .collect();
            clients[0]
                .send
                .send(&ClientMessage::Invite {
                    request_id: signaling_proto::RequestId(1),
                    call_id: None,
                    user_ids: invitees,
                    call_type: CallType::Audio,
                    timeout_ms: None,
                    user_data: None,
                })
                .await
                .unwrap();
            for callee in &mut clients[1..] {
                let call_id = loop {
                    if let Some(ServerMessage::Invited { call_id, .. }) =
                        callee.recv.recv().await.unwrap()
                    {
                        break call_id;
                    }
                };
                callee
                    .send
                    .send(&ClientMessage::Accept {
                        request_id: signaling_proto::RequestId(1),
                        call_id,
                    })
                    .await
                    .unwrap();
            }
            let mut entered = 0;
            while entered < members - 1 {
                if let Some(ServerMessage::UserEntered { .. }) =
                    clients[0].recv.recv().await.unwrap()
                {
                    entered += 1;
                }
            }
            for client in &clients {
                let connection = client.connection.clone();
                let (received, delays) = (Arc::clone(&received), Arc::clone(&delays));
                tokio::spawn(async move {
                    while let Ok(datagram) = connection.read_datagram().await {
                        if let Ok((_, payload)) = signaling_proto::MediaHeader::decode(&datagram) {
                            record(&delays, &received, origin, payload);
                        }
                    }
                });
            }
            calls_up.push(
                clients
                    .iter()
                    .map(|client| client.connection.clone())
                    .collect(),
            );
            keep.push(clients);
        }
        let mut datagram = vec![0_u8; 128];
        let round = meter
            .round(calls, origin, |call, forward, payload| {
                let header = signaling_proto::MediaHeader {
                    kind: signaling_proto::DatagramKind::Audio,
                    flow_id: signaling_proto::FlowId(0),
                    sequence: 1,
                    timestamp: 0,
                    voice_activity: true,
                    level_dbov: 30,
                };
                let len = header.encode(payload, &mut datagram).unwrap();
                // 1v1: both members speak; a group: its first member alone.
                let speaker = match (members, forward) {
                    (2, true) => 0,
                    (2, false) => 1,
                    (_, true) => 0,
                    (_, false) => return 0,
                };
                let _ = calls_up[call][speaker]
                    .send_datagram(bytes::Bytes::copy_from_slice(&datagram[..len]));
                members as u64 - 1
            })
            .await;
        let passes = round.passes();
        quic_rounds.push(round);
        if !passes {
            break;
        }
    }
    // ACK frames both ways on the generator's connections: what the ACK
    // frequency settings change.
    let (mut acks_sent, mut acks_received, mut datagrams_sent) = (0, 0, 0);
    for call in &calls_up {
        for connection in call {
            let stats = connection.stats();
            acks_sent += stats.frame_tx.acks;
            acks_received += stats.frame_rx.acks;
            datagrams_sent += stats.frame_tx.datagram;
        }
    }
    println!(
        "    generator connections: {datagrams_sent} datagrams sent, {acks_sent} ACK frames sent, {acks_received} received"
    );
    drop(keep);
    drop(servers);
    let _ = std::fs::remove_dir_all(&data_dir);
    quic_rounds
}

/// The relay's cost with the operations side on (a metrics scrape every
/// second, webhooks to a local receiver, call records to a file) beside
/// off, alternating, `repeats` times each, at `calls` calls.
async fn relay_operations(server_bin: &str, calls: usize, repeats: usize) {
    let origin = Instant::now();
    let records =
        std::env::temp_dir().join(format!("opencalling-bench-records-{}", std::process::id()));
    let webhooks = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let webhook_url = format!("http://{}/hooks", webhooks.local_addr().unwrap());
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut stream, _)) = webhooks.accept().await {
            tokio::spawn(async move {
                let mut buffer = [0_u8; 8192];
                // One request per connection (the server's client sends one).
                if stream.read(&mut buffer).await.unwrap_or(0) > 0 {
                    let _ = stream
                        .write_all(b"HTTP/1.1 204 No Content\r\nConnection: close\r\n\r\n")
                        .await;
                }
            });
        }
    });
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let on: Vec<String> = [
        "--http-listen",
        &http.to_string(),
        "--webhook-url",
        &webhook_url,
        "--webhook-key",
        "bench-key",
        "--call-records",
        &records.display().to_string(),
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let answered = Arc::clone(&scrapes);
    let scraper = tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let Ok(mut stream) = tokio::net::TcpStream::connect(http).await else {
                continue;
            };
            let request = b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n";
            if stream.write_all(request).await.is_ok() {
                let mut scrape = Vec::new();
                let _ = stream.read_to_end(&mut scrape).await;
                if scrape.starts_with(b"HTTP/1.1 200") {
                    answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    let mut off = Vec::new();
    let mut with = Vec::new();
    for _ in 0..repeats {
        off.extend(quic_relay_rounds(server_bin, &[], origin, &[calls]).await);
        with.extend(quic_relay_rounds(server_bin, &on, origin, &[calls]).await);
    }
    scraper.abort();
    let _ = std::fs::remove_file(&records);
    println!(
        "relay with the operations side on (metrics scraped every second: {} scrapes answered; webhooks; call records) beside off, {calls} calls, server pinned to CPU 0",
        scrapes.load(std::sync::atomic::Ordering::Relaxed)
    );
    let mean = |rounds: &[Round]| {
        rounds.iter().map(Round::cpu_per_datagram_us).sum::<f64>() / rounds.len().max(1) as f64
    };
    for (name, rounds) in [("off", &off), ("on", &with)] {
        let each: Vec<String> = rounds
            .iter()
            .map(|round| format!("{:.1}", round.cpu_per_datagram_us()))
            .collect();
        println!(
            "  {name:>3}: server CPU per forwarded datagram {} µs (mean {:.1}); loss {}",
            each.join(" / "),
            mean(rounds),
            rounds
                .iter()
                .map(|round| format!("{:.3} %", round.loss_percent()))
                .collect::<Vec<_>>()
                .join(" / ")
        );
    }
    println!(
        "  on / off: {:.3} (target: under 1.03)",
        mean(&with) / mean(&off).max(f64::MIN_POSITIVE)
    );
}

/// Two server builds (before and after a change), alternating, `repeats`
/// rounds each at `calls` calls: server CPU per forwarded datagram.
async fn relay_compare(binaries: [&String; 2], calls: usize, repeats: usize) {
    let origin = Instant::now();
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..repeats {
        for (binary, kept) in binaries.iter().zip(rounds.iter_mut()) {
            kept.extend(quic_relay_rounds(binary, &[], origin, &[calls]).await);
        }
    }
    println!("relay, two builds alternating, {calls} calls, server pinned to CPU 0");
    let ratio = print_sides(["before", "after"], &rounds, "µs per forwarded datagram");
    println!("  after / before: {ratio:.3}");
}

/// Prints each side's rounds (CPU per datagram, loss, p99) and their mean;
/// returns the second side's mean over the first's.
fn print_sides(names: [&str; 2], rounds: &[Vec<Round>; 2], what: &str) -> f64 {
    let mean = |rounds: &[Round]| {
        rounds.iter().map(Round::cpu_per_datagram_us).sum::<f64>() / rounds.len().max(1) as f64
    };
    let width = names.iter().map(|name| name.len()).max().unwrap_or(0);
    for (name, kept) in names.iter().zip(rounds) {
        let each: Vec<String> = kept
            .iter()
            .map(|round| {
                format!(
                    "{:.1} (loss {:.3} %, p99 {:.1} ms)",
                    round.cpu_per_datagram_us(),
                    round.loss_percent(),
                    round.p99.as_secs_f64() * 1e3
                )
            })
            .collect();
        println!(
            "  {name:>width$}: {what} {} — mean {:.2}",
            each.join(" / "),
            mean(kept)
        );
    }
    mean(&rounds[1]) / mean(&rounds[0]).max(f64::MIN_POSITIVE)
}

/// One server, then two cluster nodes with every call's members on
/// different nodes, alternating; all server processes on CPU 0: the
/// server CPU each delivered datagram costs, both nodes' CPU summed.
async fn relay_cluster(server_bin: &str, calls: usize, repeats: usize, members: usize) {
    let redis = opencalling_tests::redis::RedisServer::start().unwrap();
    let origin = Instant::now();
    let mut rounds: [Vec<Round>; 2] = [Vec::new(), Vec::new()];
    for _ in 0..repeats {
        let sizes = [calls];
        rounds[0]
            .extend(quic_relay_rounds_on(server_bin, &[], origin, &sizes, None, members).await);
        rounds[1].extend(
            quic_relay_rounds_on(server_bin, &[], origin, &sizes, Some(&redis), members).await,
        );
    }
    if members > 2 {
        println!(
            "relay across cluster nodes, {calls} calls of {members} members (one speaking, the members alternating between the nodes), alternating; every server process on CPU 0"
        );
        let ratio = print_sides(
            ["one server", "two nodes, members apart"],
            &rounds,
            "µs of server CPU per delivered datagram",
        );
        println!(
            "  across nodes / one server: {ratio:.2}x the CPU per delivered datagram (target 1.2x)"
        );
        return;
    }
    println!(
        "relay across cluster nodes, {calls} 1v1 calls, alternating; every server process on CPU 0"
    );
    let ratio = print_sides(
        ["one server", "two nodes, members apart"],
        &rounds,
        "µs of server CPU per delivered datagram",
    );
    println!(
        "  across nodes / one server: {ratio:.2}x the CPU per datagram: two nodes with a core each would carry {:.2}x one server's calls if every call spanned them (2x if none did)",
        2.0 / ratio
    );
}
