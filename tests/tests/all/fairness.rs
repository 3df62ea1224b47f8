//! Admission is fair by source: one network spending the budgets every
//! source draws from (places before login, handshakes a second) does not
//! lock out honest users from other networks. The attacks of the second
//! hardening issue, scaled to this machine (a budget of tens, not
//! thousands: the same rules, a debug build on two cores).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use calling_api::UserId;
use signaling_proto::{ClientMessage, ServerMessage};
use signaling_quic::ServerTrust;

use crate::support::*;

/// What an honest login may take while an attack goes on (the p99).
const HONEST_LOGIN_WITHIN: Duration = Duration::from_secs(1);

/// A QUIC client endpoint whose packets come from `ip`.
fn endpoint_at(ip: &str, trust: &ServerTrust) -> quinn::Endpoint {
    let mut endpoint = quinn::Endpoint::client(SocketAddr::new(ip.parse().unwrap(), 0)).unwrap();
    endpoint.set_default_client_config(signaling_quic::client_config(trust).unwrap());
    endpoint
}

/// Logs `user` in over QUIC from `ip`; how long it took, or why it failed.
async fn login_from(server: &TestServer, ip: &str, user: &str) -> Result<Duration, String> {
    let trust = ServerTrust::Fingerprint(server.server.fingerprint());
    let endpoint = endpoint_at(ip, &trust);
    let started = Instant::now();
    let attempt = async {
        let mut client =
            signaling_quic::connect_on(&endpoint, server.server.local_addr(), "localhost")
                .await
                .map_err(|error| format!("connect: {error}"))?;
        client
            .send
            .send(&ClientMessage::Login {
                protocol_version: signaling_proto::PROTOCOL_VERSION,
                sdk_app_id: server.app.sdk_app_id,
                user_id: UserId::new(user).unwrap(),
                user_sig: server.sig(user).into(),
                device_id: None,
                media_encryption: signaling_proto::MediaEncryption::None,
            })
            .await
            .map_err(|error| format!("send: {error}"))?;
        match client.recv.recv().await {
            Ok(Some(ServerMessage::LoginResult { code, .. })) if code.is_ok() => {
                Ok(started.elapsed())
            }
            other => Err(format!("login: {other:?}")),
        }
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .unwrap_or_else(|_| Err("no answer in 10 s".into()))
}

/// Logs in honest users from `network` (`192.0.x`-like, a host added),
/// one every `every`, while an attack runs; asserts every one got in within
/// [`HONEST_LOGIN_WITHIN`].
async fn honest_logins(server: &TestServer, network: &str, count: usize, every: Duration) {
    let mut took = Vec::new();
    for host in 1..=count {
        let ip = format!("{network}.{host}");
        let result = login_from(server, &ip, &format!("honest{host}")).await;
        took.push(result.unwrap_or_else(|error| panic!("honest login {host} from {ip}: {error}")));
        tokio::time::sleep(every).await;
    }
    took.sort();
    let slowest = took[took.len() - 1];
    assert!(
        slowest <= HONEST_LOGIN_WITHIN,
        "honest logins took {took:?}"
    );
}

/// Connections that never log in, from one network (plain TCP to the
/// fallback port that never starts TLS, and QUIC connections that never
/// send a login), renewed as the server closes them, cannot lock out a
/// login from another network: its newcomer takes the place of the
/// attacker's oldest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_that_never_log_in_leave_other_networks_their_logins() {
    let mut config = test_config("fair-before-login");
    config.limits.max_before_login = 40;
    let server = TestServer::start_with(config).await;
    let fallback = server.server.fallback_addr().unwrap();
    let quic = server.server.local_addr();
    let trust = ServerTrust::Fingerprint(server.server.fingerprint());
    let stop = Arc::new(AtomicBool::new(false));

    // 20 addresses of 127.0.0.0/24, ten connections each, kept open and
    // renewed: far more than the places before login.
    let tcp_flood = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let mut held = std::collections::VecDeque::new();
            let mut opened = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                let source: IpAddr = format!("127.0.0.{}", 10 + opened % 20).parse().unwrap();
                let socket = tokio::net::TcpSocket::new_v4().unwrap();
                if socket.bind(SocketAddr::new(source, 0)).is_ok()
                    && let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(1), socket.connect(fallback)).await
                {
                    held.push_back(stream);
                    opened += 1;
                }
                if held.len() > 200 {
                    held.pop_front();
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            opened
        }
    });
    let quic_flood = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let endpoints: Vec<_> = (40..44)
                .map(|host| endpoint_at(&format!("127.0.0.{host}"), &trust))
                .collect();
            let mut held = Vec::new();
            let mut opened = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                let endpoint = &endpoints[opened % endpoints.len()];
                let attempt = signaling_quic::connect_on(endpoint, quic, "localhost");
                if let Ok(Ok(client)) = tokio::time::timeout(Duration::from_secs(1), attempt).await
                {
                    held.push(client);
                    opened += 1;
                }
                held.retain(|client| client.connection.close_reason().is_none());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            opened
        }
    });
    // The places before login are all taken before the honest ones come.
    let full = tokio::time::timeout(Duration::from_secs(20), async {
        while server.server.admission_counts().refused_before_login == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(
        full.is_ok(),
        "the attack never filled the places before login"
    );

    honest_logins(&server, "127.0.1", 20, Duration::from_millis(100)).await;

    stop.store(true, Ordering::Relaxed);
    let (tcp_opened, quic_opened) = (tcp_flood.await.unwrap(), quic_flood.await.unwrap());
    let counts = server.server.admission_counts();
    assert!(counts.evicted_before_login >= 20, "{counts:?}");
    assert!(
        tcp_opened > 40 && quic_opened > 0,
        "{tcp_opened} {quic_opened}"
    );
}

/// A handshake flood from one network (eight addresses of a /24, each
/// connection closed as soon as it is up, at twice the server's budget)
/// leaves honest logins from another network their handshakes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handshake_flood_from_one_network_leaves_the_others_their_handshakes() {
    let mut config = test_config("fair-handshakes");
    config.limits.handshakes_per_sec = 50;
    let server = TestServer::start_with(config).await;
    let quic = server.server.local_addr();
    let trust = ServerTrust::Fingerprint(server.server.fingerprint());
    let stop = Arc::new(AtomicBool::new(false));

    let flood = tokio::spawn({
        let stop = Arc::clone(&stop);
        async move {
            let endpoints: Vec<_> = (50..58)
                .map(|host| endpoint_at(&format!("127.0.0.{host}"), &trust))
                .collect();
            let mut attempts = tokio::task::JoinSet::new();
            let mut started = 0_usize;
            while !stop.load(Ordering::Relaxed) {
                let endpoint = endpoints[started % endpoints.len()].clone();
                attempts.spawn(async move {
                    let connected = tokio::time::timeout(
                        Duration::from_secs(2),
                        signaling_quic::connect_on(&endpoint, quic, "localhost"),
                    )
                    .await;
                    if let Ok(Ok(client)) = connected {
                        client.connection.close(0_u32.into(), b"flood");
                        true
                    } else {
                        false
                    }
                });
                started += 1;
                while let Some(Ok(_)) = attempts.try_join_next() {}
                // 100 a second: twice the budget.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let mut connected = 0;
            while let Some(done) = attempts.join_next().await {
                connected += usize::from(done.unwrap_or(false));
            }
            (started, connected)
        }
    });
    // The flood has emptied the budget before the honest ones come.
    let contended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let counts = server.server.admission_counts();
            if counts.retried + counts.refused_handshake_budget > 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(contended.is_ok(), "the flood never reached the budget");

    honest_logins(&server, "127.0.2", 20, Duration::from_millis(100)).await;

    stop.store(true, Ordering::Relaxed);
    let (started, _connected) = flood.await.unwrap();
    let counts = server.server.admission_counts();
    assert!(
        counts.refused_handshake_budget > 0,
        "the flood was held back: {counts:?} of {started}"
    );
}
