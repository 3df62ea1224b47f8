//! The Retry stall, reproduced: a server that sends every new client a
//! Retry (address validation always on) and one client endpoint opening
//! `TOTAL` connections, `PARALLEL` at a time, each given 3 s for its
//! handshake (12 s is the idle timeout it would otherwise wait out).
//!
//! With `BARE_QUINN=1` the server is quinn alone with its defaults (and a
//! receive buffer large enough that the kernel drops nothing): about 1 in
//! 800 handshakes stalls at 10,000 connections. The cause is quinn's:
//! `Endpoint::retry` takes the Retry's source connection ID from the ID
//! generator without checking it against the IDs in use (its comment says
//! Initial packets are looked up apart from established connections), but
//! `ConnectionIndex::get` looks every packet up in the established
//! connections' IDs first. When the Retry's ID is one a live connection
//! already holds — 1 in 2^24 per live ID with quinn's default generator,
//! whose IDs carry 3 random bytes — the client's next Initial goes to that
//! connection, which drops it, and the handshake never starts. Without the
//! variable our server runs, whose IDs carry 5 random bytes: no stall.
//!
//! `cargo run --release -p signaling-quic --example retry_stall [TOTAL] [PARALLEL] [VALIDATE_ABOVE]`
//! (`SERVER_ONLY=1` prints the address and fingerprint and serves;
//! `CONNECT_TO="ADDR FINGERPRINT"` runs only the clients, so that each
//! side's trace log is its own; `CLIENT_RCVBUF=BYTES` sizes the client's
//! receive buffer.)

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use signaling_quic::{QuicServer, ServerIdentity, ServerTrust};

const LIMIT: Duration = Duration::from_secs(3);

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|arg| arg.parse().ok())
        .collect();
    let total = args.first().copied().unwrap_or(4_000);
    let parallel = args.get(1).copied().unwrap_or(64);
    let validate_above = args.get(2).copied().unwrap_or(0);
    let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
    let held = Arc::new(std::sync::Mutex::new(Vec::new()));
    let server_side = Arc::clone(&held);
    let addr = if std::env::var_os("BARE_QUINN").is_some() {
        bare_quinn_server(&identity, validate_above, server_side)
    } else {
        ours(&identity, validate_above, server_side)
    };
    if std::env::var_os("SERVER_ONLY").is_some() {
        // For a client in another process (logs of one side only).
        println!("{addr} {}", identity.fingerprint());
        std::future::pending::<()>().await;
    }

    let (addr, fingerprint) = match std::env::var("CONNECT_TO") {
        Ok(target) => {
            let (addr, fingerprint) = target.split_once(' ').unwrap();
            (addr.parse().unwrap(), fingerprint.parse().unwrap())
        }
        Err(_) => (addr, identity.fingerprint()),
    };
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    if let Some(bytes) = std::env::var("CLIENT_RCVBUF")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        let state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
        state.set_recv_buffer_size((&socket).into(), bytes).unwrap();
    }
    let mut endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap();
    endpoint.set_default_client_config(
        signaling_quic::client_config(&ServerTrust::Fingerprint(fingerprint)).unwrap(),
    );
    let permits = Arc::new(tokio::sync::Semaphore::new(parallel));
    let stalled = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    for n in 0..total {
        let (endpoint, permits, stalled) =
            (endpoint.clone(), Arc::clone(&permits), Arc::clone(&stalled));
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire().await.unwrap();
            let begun = Instant::now();
            let connecting = endpoint.connect(addr, "localhost").unwrap();
            match tokio::time::timeout(LIMIT, connecting).await {
                Ok(Ok(connection)) => {
                    // The server's side waits for the signaling stream.
                    let (mut send, _recv) = connection.open_bi().await.ok()?;
                    send.write_all(b"x").await.ok()?;
                    Some((connection, send))
                }
                Ok(Err(error)) => {
                    println!(
                        "connection {n}: failed after {:?}: {error}",
                        begun.elapsed()
                    );
                    None
                }
                Err(_) => {
                    stalled.fetch_add(1, Ordering::Relaxed);
                    println!("connection {n}: no handshake in {LIMIT:?}");
                    None
                }
            }
        }));
    }
    let mut clients = Vec::with_capacity(total);
    for task in tasks {
        clients.extend(task.await.unwrap());
    }
    println!(
        "{} of {total} connected in {:.1?}, {} stalled (Retry above {validate_above} open connections)",
        clients.len(),
        started.elapsed(),
        stalled.load(Ordering::Relaxed)
    );
}

type Held<T> = Arc<std::sync::Mutex<Vec<T>>>;

/// Our endpoint (its sockets, its connection IDs), with the address
/// validation of the server's admission policy: a Retry for every attempt
/// not yet proved once `validate_above` connections are open.
fn ours(
    identity: &ServerIdentity,
    validate_above: usize,
    held: Held<signaling_quic::ServerConnection>,
) -> std::net::SocketAddr {
    let server = QuicServer::bind("127.0.0.1:0".parse().unwrap(), identity, &[3; 32], 1).unwrap();
    let addr = server.local_addr().unwrap();
    tokio::spawn(async move {
        while let Some(attempt) = server.accept().await {
            if server.open_connections() > validate_above
                && !attempt.address_validated()
                && attempt.may_retry()
            {
                attempt.retry();
                continue;
            }
            let held = Arc::clone(&held);
            tokio::spawn(async move {
                if let Ok(connection) = attempt.establish(LIMIT).await {
                    held.lock().unwrap().push(connection);
                }
            });
        }
    });
    addr
}

/// quinn alone: Retry for every attempt whose address is not validated
/// once `validate_above` connections are open, accept otherwise.
fn bare_quinn_server(
    identity: &ServerIdentity,
    validate_above: usize,
    _held: Held<signaling_quic::ServerConnection>,
) -> std::net::SocketAddr {
    let config = signaling_quic::server_config(identity).unwrap();
    // quinn's defaults but for a receive buffer large enough that no
    // packet is lost: what stalls is not loss.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let state = quinn::udp::UdpSocketState::new((&socket).into()).unwrap();
    state
        .set_recv_buffer_size((&socket).into(), 4 << 20)
        .unwrap();
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(config),
        socket,
        quinn::default_runtime().unwrap(),
    )
    .unwrap();
    let addr = endpoint.local_addr().unwrap();
    tokio::spawn(async move {
        let mut kept = Vec::new();
        let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel();
        loop {
            tokio::select! {
                incoming = endpoint.accept() => {
                    let Some(incoming) = incoming else { return };
                    if endpoint.open_connections() > validate_above
                        && !incoming.remote_address_validated()
                    {
                        let _ = incoming.retry();
                        continue;
                    }
                    let done_tx = done_tx.clone();
                    tokio::spawn(async move {
                        if let Ok(connection) = incoming.await {
                            let _ = done_tx.send(connection);
                        }
                    });
                }
                Some(connection) = done_rx.recv() => kept.push(connection),
            }
        }
    });
    addr
}
