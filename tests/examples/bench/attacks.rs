//! `bench attacks SERVER_BIN`: the second hardening issue's attacks at its
//! own scale, against a release `calling-server` with its default limits,
//! while honest users log in from a network of their own (127.0.99.0/24,
//! one every 50 ms); each attack's honest logins beside the same logins
//! with no attack, in the same run. Everything runs on this machine's
//! loopback: the attacker's CPU competes with the server's, so the figures
//! are a floor of what the server holds.

use std::sync::atomic::{AtomicBool, Ordering};

use calling_api::ErrorCode;
use signaling_proto::PROTOCOL_VERSION;

use super::*;

/// Honest logins per round, one every [`HONEST_EVERY`].
const HONEST_LOGINS: usize = 100;
const HONEST_EVERY: Duration = Duration::from_millis(50);
/// How long an attack runs before the honest users come.
const WARM_UP: Duration = Duration::from_secs(5);
/// What an honest login may take (the p99 target).
const TARGET_P99: Duration = Duration::from_secs(1);

pub(super) async fn run(server_bin: &str) {
    println!(
        "attacks on a calling-server with its default limits (honest users from 127.0.99.0/24)"
    );
    let server = start(server_bin, "baseline").await;
    let baseline = honest_logins(&server).await;
    report("no attack", &baseline, None);
    drop(server);

    let server = start(server_bin, "never-login").await;
    let stop = Arc::new(AtomicBool::new(false));
    let attack = tokio::spawn(never_login(server.addr, trust(&server), Arc::clone(&stop)));
    tokio::time::sleep(WARM_UP).await;
    let attacked = honest_logins(&server).await;
    stop.store(true, Ordering::Relaxed);
    let (tcp, quic) = attack.await.unwrap();
    println!(
        "  10,000 connections that never log in, renewed (5,000 TCP that never start TLS from 100 addresses of two /24s: {tcp} opened; 5,000 QUIC from 100 of two others: {quic} opened)"
    );
    report("  honest logins meanwhile", &attacked, Some(&baseline));
    drop(server);

    let server = start(server_bin, "handshake-flood").await;
    let stop = Arc::new(AtomicBool::new(false));
    let attack = tokio::spawn(handshake_flood(
        server.addr,
        trust(&server),
        Arc::clone(&stop),
    ));
    tokio::time::sleep(WARM_UP).await;
    let attacked = honest_logins(&server).await;
    stop.store(true, Ordering::Relaxed);
    let (started, connected, seconds) = attack.await.unwrap();
    println!(
        "  a handshake flood from 32 addresses of one /24, each connection closed at once: {:.0} attempts a second, {:.0} connected a second",
        started as f64 / seconds,
        connected as f64 / seconds
    );
    report("  honest logins meanwhile", &attacked, Some(&baseline));
    drop(server);

    let server = start(server_bin, "login-storm").await;
    login_storm(&server).await;
}

fn trust(server: &DevServer) -> ServerTrust {
    ServerTrust::Fingerprint(server.fingerprint)
}

async fn start(server_bin: &str, tag: &str) -> DevServer {
    let data_dir = std::env::temp_dir().join(format!(
        "opencalling-bench-attacks-{tag}-{}",
        std::process::id()
    ));
    let mut command = tokio::process::Command::new(server_bin);
    // The default budget, said aloud: DevServer lifts it otherwise.
    command.args([
        "--handshakes-per-sec",
        &calling_server::ServerLimits::DEFAULT
            .handshakes_per_sec
            .to_string(),
    ]);
    DevServer::spawn(command, &data_dir, None).await
}

/// A QUIC client endpoint whose packets come from `ip`.
fn endpoint_at(ip: &str, trust: &ServerTrust) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
    endpoint.set_default_client_config(signaling_quic::client_config(trust).unwrap());
    endpoint
}

/// How a login went: its time, or why it failed.
async fn log_in(
    endpoint: &quinn::Endpoint,
    server: SocketAddr,
    app_key: &str,
    user: &str,
) -> Result<Duration, String> {
    let started = Instant::now();
    let attempt = async {
        let mut client = signaling_quic::connect_on(endpoint, server, "localhost")
            .await
            .map_err(|error| format!("connect: {error}"))?;
        let sig = usersig::generate(1_400_000_000, app_key, user, 3_600, now_unix(), None);
        let login = ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id: 1_400_000_000,
            user_id: UserId::new(user).unwrap(),
            user_sig: sig.into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        };
        client
            .send
            .send(&login)
            .await
            .map_err(|error| error.to_string())?;
        match client.recv.recv().await {
            Ok(Some(ServerMessage::LoginResult { code, .. })) if code.is_ok() => {
                Ok(started.elapsed())
            }
            other => Err(format!("{other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer in 10 s".into()))
}

/// Honest users log in from 127.0.99.0/24, one every [`HONEST_EVERY`]
/// (on schedule, whatever the earlier ones take): their login times and
/// failures.
async fn honest_logins(server: &DevServer) -> (Vec<Duration>, Vec<String>) {
    let mut logins = tokio::task::JoinSet::new();
    for host in 1..=HONEST_LOGINS {
        let (addr, key, trust) = (server.addr, server.key.clone(), trust(server));
        logins.spawn(async move {
            let endpoint = endpoint_at(&format!("127.0.99.{host}"), &trust);
            log_in(&endpoint, addr, &key, &format!("honest{host}")).await
        });
        tokio::time::sleep(HONEST_EVERY).await;
    }
    let (mut took, mut failed) = (Vec::new(), Vec::new());
    while let Some(done) = logins.join_next().await {
        match done.unwrap() {
            Ok(login) => took.push(login),
            Err(error) => failed.push(error),
        }
    }
    (took, failed)
}

fn report(
    what: &str,
    (took, failed): &(Vec<Duration>, Vec<String>),
    baseline: Option<&(Vec<Duration>, Vec<String>)>,
) {
    let mut took = took.clone();
    let (p50, p99) = if took.is_empty() {
        (Duration::MAX, Duration::MAX)
    } else {
        summary(&mut took)
    };
    let verdict = if failed.is_empty() && p99 <= TARGET_P99 {
        "met"
    } else {
        "MISSED"
    };
    let against = baseline.map_or(String::new(), |baseline| {
        let mut base = baseline.0.clone();
        let (_, base_p99) = summary(&mut base);
        format!(
            " ({:.1}× the p99 with no attack)",
            p99.as_secs_f64() / base_p99.as_secs_f64()
        )
    });
    println!(
        "{what}: {} of {HONEST_LOGINS} in, p50 {p50:.1?}, p99 {p99:.1?}{against}; target every login, p99 ≤ {TARGET_P99:?}: {verdict}",
        took.len()
    );
    if let Some(first) = failed.first() {
        println!("    first failure: {first}");
    }
}

/// 5,000 TCP connections to the fallback port that never start TLS (100
/// addresses of 127.0.10.0/23) and 5,000 QUIC connections that never send a
/// login (100 addresses of 127.0.12.0/23), both renewed: the newest 5,000
/// of each are kept, a new one opened every millisecond or two. The
/// connections each kind opened.
async fn never_login(
    server: SocketAddr,
    trust: ServerTrust,
    stop: Arc<AtomicBool>,
) -> (usize, usize) {
    let tcp = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..10 {
                    let host = opened % 100;
                    let source: std::net::IpAddr =
                        format!("127.0.{}.{}", 10 + host / 50, 1 + host % 50)
                            .parse()
                            .unwrap();
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    if socket.bind(SocketAddr::new(source, 0)).is_ok()
                        && let Ok(stream) = socket.connect(server).await
                    {
                        held.push_back(stream);
                        opened += 1;
                    }
                    if held.len() > 5_000 {
                        held.pop_front();
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            opened
        }
    });
    let endpoints: Vec<_> = (0..100)
        .map(|host| {
            endpoint_at(
                &format!("127.0.{}.{}", 12 + host / 50, 1 + host % 50),
                &trust,
            )
        })
        .collect();
    let mut held = std::collections::VecDeque::new();
    let mut attempts = tokio::task::JoinSet::new();
    let mut opened = 0_usize;
    let mut started = 0_usize;
    while !stop.load(Ordering::Relaxed) {
        for _ in 0..5 {
            let endpoint = endpoints[started % endpoints.len()].clone();
            started += 1;
            attempts.spawn(async move {
                tokio::time::timeout(
                    Duration::from_secs(5),
                    signaling_quic::connect_on(&endpoint, server, "localhost"),
                )
                .await
            });
        }
        while let Some(done) = attempts.try_join_next() {
            if let Ok(Ok(Ok(client))) = done {
                held.push_back(client);
                opened += 1;
                if held.len() > 5_000 {
                    held.pop_front();
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    attempts.abort_all();
    (tcp.await.unwrap(), opened)
}

/// 1,100 handshakes a second from 32 addresses of 127.0.20.0/24, each
/// connection closed as soon as it is up: attempts started, connected, and
/// the seconds it ran.
async fn handshake_flood(
    server: SocketAddr,
    trust: ServerTrust,
    stop: Arc<AtomicBool>,
) -> (usize, usize, f64) {
    let endpoints: Vec<_> = (1..=32)
        .map(|host| endpoint_at(&format!("127.0.20.{host}"), &trust))
        .collect();
    let began = Instant::now();
    let mut attempts = tokio::task::JoinSet::new();
    let (mut started, mut connected) = (0_usize, 0_usize);
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        // 11 every 10 ms.
        for _ in 0..11 {
            let endpoint = endpoints[started % endpoints.len()].clone();
            started += 1;
            attempts.spawn(async move {
                let attempt = signaling_quic::connect_on(&endpoint, server, "localhost");
                match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                    Ok(Ok(client)) => {
                        client.connection.close(0_u32.into(), b"flood");
                        true
                    }
                    _ => false,
                }
            });
        }
        while let Some(done) = attempts.try_join_next() {
            connected += usize::from(done.unwrap_or(false));
        }
    }
    let seconds = began.elapsed().as_secs_f64();
    while let Some(done) = attempts.join_next().await {
        connected += usize::from(done.unwrap_or(false));
    }
    (started, connected, seconds)
}

/// 60 parallel connections from one address guess one account's UserSig
/// for 20 s: the guesses the server checked a second, beside the attempts
/// refused unchecked; then another account's login from that address, and
/// the victim's own from elsewhere, while the storm's queue drains.
async fn login_storm(server: &DevServer) {
    let storm = Duration::from_secs(20);
    let endpoint = endpoint_at("127.0.30.1", &trust(server));
    let started = Instant::now();
    let mut guessers = tokio::task::JoinSet::new();
    for _ in 0..60 {
        let (endpoint, addr) = (endpoint.clone(), server.addr);
        guessers.spawn(async move {
            let (mut checked, mut refused) = (0_usize, 0_usize);
            while started.elapsed() < storm {
                let Ok(mut client) = signaling_quic::connect_on(&endpoint, addr, "localhost").await
                else {
                    continue;
                };
                let guess = ClientMessage::Login {
                    protocol_version: PROTOCOL_VERSION,
                    sdk_app_id: 1_400_000_000,
                    user_id: UserId::new("victim").unwrap(),
                    user_sig: "not the victim's usersig".to_owned().into(),
                    device_id: None,
                    media_encryption: signaling_proto::MediaEncryption::None,
                };
                if client.send.send(&guess).await.is_err() {
                    continue;
                }
                match client.recv.recv().await {
                    Ok(Some(ServerMessage::LoginResult { code, .. }))
                        if code == ErrorCode::RATE_LIMITED =>
                    {
                        refused += 1;
                    }
                    Ok(Some(ServerMessage::LoginResult { .. })) => checked += 1,
                    _ => {}
                }
            }
            (checked, refused)
        });
    }
    let (mut checked, mut refused) = (0, 0);
    while let Some(done) = guessers.join_next().await {
        let (their_checked, their_refused) = done.unwrap();
        checked += their_checked;
        refused += their_refused;
    }
    let seconds = started.elapsed().as_secs_f64();
    let rate = checked as f64 / seconds;
    println!(
        "  a login storm, 60 parallel connections from one address at one account for {seconds:.0} s: {checked} guesses checked ({rate:.2} a second), {refused} refused unchecked; target ≤ 1 a second per account: {}",
        if rate <= 1.0 { "met" } else { "MISSED" }
    );
    let same_address = log_in(&endpoint, server.addr, &server.key, "bystander").await;
    println!("    another account's login from the storm's address, right after: {same_address:?}");
    let elsewhere = endpoint_at("127.0.99.200", &trust(server));
    let victim = log_in(&elsewhere, server.addr, &server.key, "victim").await;
    println!(
        "    the victim's own login from elsewhere, right after (its queue drains within 5 s): {victim:?}"
    );
}
