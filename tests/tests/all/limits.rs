//! One client cannot hurt another: each attack of the hardening issue
//! against a real server, with the limit holding and bystanders unharmed.

use std::time::{Duration, Instant};

use calling_api::{CallType, ErrorCode, UserId};
use calling_server::config::ConnectionLimits;
use signaling_proto::{ClientMessage, RequestId, ServerMessage, SwitchboardConfig};
use signaling_quic::close_code_of;

use crate::media::{datagram, raw_call, raw_login, until};
use crate::support::*;

/// An invite carrying `user_data`: 4 KiB of it fill a client's window fast.
fn invite_with_data(request: u32, user: &str, user_data: &str) -> ClientMessage {
    ClientMessage::Invite {
        request_id: RequestId(request),
        call_id: None,
        user_ids: vec![UserId::new(user).unwrap()],
        call_type: CallType::Audio,
        timeout_ms: None,
        user_data: Some(user_data.to_owned()),
    }
}

fn invite(request: u32, call_id: Option<calling_api::CallId>, user: &str) -> ClientMessage {
    ClientMessage::Invite {
        request_id: RequestId(request),
        call_id,
        user_ids: vec![UserId::new(user).unwrap()],
        call_type: CallType::Audio,
        timeout_ms: None,
        user_data: None,
    }
}

/// A member flooding a call with audio gets no more than its rate relayed.
#[tokio::test]
async fn an_audio_flood_is_capped_at_the_senders_rate() {
    let server = TestServer::start("media-flood").await;
    let mut alice = raw_login(&server, "alice").await;
    let mut bob = raw_login(&server, "bob").await;
    raw_call(&mut alice, &mut bob, "bob").await;

    let started = Instant::now();
    let payload = [0_u8; 160];
    for sequence in 0..5_000 {
        alice
            .connection
            .send_datagram(datagram(0, sequence, &payload).into())
            .unwrap();
        if sequence % 500 == 499 {
            // Let quinn put them on the wire rather than drop its oldest.
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut heard = 0_u64;
    while let Ok(Ok(_)) =
        tokio::time::timeout(Duration::from_millis(500), bob.connection.read_datagram()).await
    {
        heard += 1;
    }
    let seconds = started.elapsed().as_secs_f64();
    let limits = ConnectionLimits::DEFAULT;
    let allowed = f64::from(limits.media_packets_per_sec) * (1.0 + seconds);
    let forwarded = server.server.relay_counts().forwarded;
    assert!(
        (forwarded as f64) <= allowed,
        "forwarded {forwarded} in {seconds:.1} s, allowed {allowed:.0}"
    );
    assert!(heard >= 50, "bob still hears alice: {heard}");
    // What reached the server (quinn's small send buffer drops some of the
    // flood at alice's end already) was relayed only up to the rate.
    let dropped = server.server.limit_counts().media_dropped;
    assert!(dropped > 0, "the limiter dropped part of the flood");
    assert!(
        forwarded + dropped > allowed as u64,
        "the flood exceeded the rate at the server: {forwarded} + {dropped}"
    );
}

/// A client that sends 150 requests without waiting (reading its replies)
/// gets every reply and stays connected: it is paced, not punished.
#[tokio::test]
async fn honest_pipelining_gets_every_reply() {
    // Offline invitees answered at once, so that each invite opens and
    // ends a call of its own.
    let mut config = test_config("pipelining");
    config.switchboard.ring_offline_invitees = false;
    let server = TestServer::start_with(config).await;
    let alice = raw_login(&server, "alice").await;
    let (mut send, mut recv) = (alice.send, alice.recv);
    let writer = tokio::spawn(async move {
        for request in 0..150 {
            // Offline users: each answers ack, no response, call ended.
            send.send(&invite(request, None, &format!("offline{request}")))
                .await
                .unwrap();
        }
        send
    });
    let mut replies = 0;
    let mut limited = 0;
    tokio::time::timeout(Duration::from_secs(20), async {
        while replies < 150 {
            match recv.recv().await.unwrap().unwrap() {
                ServerMessage::Ack { .. } => replies += 1,
                ServerMessage::Error {
                    request_id: Some(_),
                    code,
                    ..
                } => {
                    assert_eq!(code, ErrorCode::RATE_LIMITED);
                    replies += 1;
                    limited += 1;
                }
                _ => {}
            }
        }
    })
    .await
    .expect("every request answered");
    let _send = writer.await.unwrap();
    // 60 invitations a minute: the rest are refused, each with its reply.
    assert_eq!(limited, 90);
    let counts = server.server.limit_counts();
    assert_eq!(counts.closed_for_flooding, 0, "{counts:?}");
    let stats = server.server.stats().await.unwrap();
    assert_eq!(stats.online, 1);
    assert_eq!(stats.invitations_rate_limited, 90, "counted");
}

/// A client flooding requests far past its burst is refused, then closed
/// with `RATE_LIMITED`; others are not slowed.
#[tokio::test]
async fn a_request_flood_is_refused_then_closed() {
    let mut config = test_config("request-flood");
    config.connection_limits = ConnectionLimits {
        requests_per_sec: 5,
        request_burst: 20,
        ..ConnectionLimits::DEFAULT
    };
    let server = TestServer::start_with(config).await;
    let mut mallory = raw_login(&server, "mallory").await;
    for nonce in 0..200 {
        if mallory
            .send
            .send(&ClientMessage::Ping { nonce })
            .await
            .is_err()
        {
            break;
        }
    }
    let closed = tokio::time::timeout(Duration::from_secs(5), mallory.connection.closed())
        .await
        .expect("closed");
    assert_eq!(close_code_of(&closed), Some(ErrorCode::RATE_LIMITED));
    let counts = server.server.limit_counts();
    assert_eq!(counts.closed_for_flooding, 1, "{counts:?}");
    assert!(counts.requests_refused >= 20, "{counts:?}");
    let mut alice = server.user("alice").await;
    let mut bob = server.user("bob").await;
    connect(&mut alice, &mut bob).await;
}

/// A pipelining client closed for flooding gets every message it was
/// admitted answered before the close: the first `request_burst` pings
/// all get their pong.
#[tokio::test]
async fn a_flooder_closed_for_it_first_gets_what_was_admitted_answered() {
    let mut config = test_config("flood-answered");
    config.connection_limits = ConnectionLimits {
        requests_per_sec: 5,
        request_burst: 300,
        ..ConnectionLimits::DEFAULT
    };
    let server = TestServer::start_with(config).await;
    let mallory = raw_login(&server, "mallory").await;
    let (mut send, mut recv, connection) = (mallory.send, mallory.recv, mallory.connection);
    let flood = tokio::spawn(async move {
        for nonce in 0..1_000 {
            if send.send(&ClientMessage::Ping { nonce }).await.is_err() {
                break;
            }
        }
        send
    });
    let mut answered = std::collections::BTreeSet::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        while let Ok(Some(message)) = recv.recv().await {
            if let ServerMessage::Pong { nonce } = message {
                answered.insert(nonce);
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection was never closed");
    let closed = connection.closed().await;
    assert_eq!(close_code_of(&closed), Some(ErrorCode::RATE_LIMITED));
    let unanswered: Vec<u64> = (0..300).filter(|nonce| !answered.contains(nonce)).collect();
    assert!(
        unanswered.is_empty(),
        "admitted but unanswered: {unanswered:?}"
    );
    drop(flood.await);
}

/// A resumable session's client that falls silent (no heartbeat) has its
/// connection dropped after 5 s, as the document says, closed with
/// `TIMEOUT`; the session waits for a resume (still online meanwhile).
#[tokio::test]
async fn a_silent_resumable_client_has_its_connection_closed() {
    let server = TestServer::start("silent-client").await;
    let mut client = server.raw_client().await;
    client
        .send
        .send(&ClientMessage::Login {
            protocol_version: signaling_proto::PROTOCOL_VERSION,
            sdk_app_id: server.app.sdk_app_id,
            user_id: UserId::new("quiet").unwrap(),
            user_sig: server.sig("quiet").into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    until(&mut client, |message| {
        matches!(message, ServerMessage::Session { .. })
    })
    .await;
    let started = Instant::now();
    let closed = tokio::time::timeout(Duration::from_secs(15), client.connection.closed())
        .await
        .expect("the connection outlived the silence timeout");
    let took = started.elapsed();
    assert_eq!(
        close_code_of(&closed),
        Some(ErrorCode::TIMEOUT),
        "{closed:?}"
    );
    assert!(took >= Duration::from_secs(4), "closed after {took:?}");
    let stats = server.server.stats().await.unwrap();
    assert_eq!(
        (stats.online, stats.reconnecting),
        (1, 1),
        "waiting for a resume"
    );
}

/// A client that stops reading is closed within the write timeout and no
/// longer holds its place; its inviter is unharmed.
#[tokio::test]
async fn a_client_that_does_not_read_is_closed_within_the_write_timeout() {
    let mut config = test_config("not-reading");
    config.connection_limits.write_timeout = Duration::from_secs(1);
    config.switchboard = SwitchboardConfig {
        invitations_per_minute: 100_000,
        ..SwitchboardConfig::DEFAULT
    };
    let server = TestServer::start_with(config).await;
    let mallory = raw_login(&server, "mallory").await;
    let mut alice = raw_login(&server, "alice").await;
    let user_data = "x".repeat(4_096);
    let started = Instant::now();
    let mut closed = None;
    for round in 0..400_u32 {
        alice
            .send
            .send(&invite_with_data(2 * round, "mallory", &user_data))
            .await
            .unwrap();
        until(&mut alice, |m| m.is_reply()).await;
        alice
            .send
            .send(&ClientMessage::Hangup {
                request_id: RequestId(2 * round + 1),
            })
            .await
            .unwrap();
        until(&mut alice, |m| m.is_reply()).await;
        if let Some(reason) = mallory.connection.close_reason() {
            closed = Some(reason);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let closed = closed.expect("mallory, who never reads, was closed");
    assert_eq!(close_code_of(&closed), Some(ErrorCode::SERVER_BUSY));
    assert!(
        started.elapsed() < Duration::from_secs(12),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.server.limit_counts().write_timeouts, 1);
    assert_eq!(server.server.stats().await.unwrap().online, 1, "alice only");
}

/// Connections that never log in have a cap of their own: they cannot
/// crowd out users, and a login frees its place at once.
#[tokio::test]
async fn connections_not_logged_in_have_their_own_cap() {
    let mut config = test_config("before-login");
    config.limits.max_before_login = 2;
    let server = TestServer::start_with(config).await;
    let idle_one = server.raw_client().await;
    let mut idle_two = server.raw_client().await;
    let trust = signaling_quic::ServerTrust::Fingerprint(server.server.fingerprint());
    let refused = signaling_quic::connect(server.server.local_addr(), "localhost", &trust).await;
    assert!(
        refused.is_err(),
        "a third connection before login is refused"
    );
    assert_eq!(server.server.admission_counts().refused_before_login, 1);
    // One of them logs in: its place is free for the next newcomer.
    idle_two
        .send
        .send(&ClientMessage::Login {
            protocol_version: signaling_proto::PROTOCOL_VERSION,
            sdk_app_id: server.app.sdk_app_id,
            user_id: UserId::new("bob").unwrap(),
            user_sig: server.sig("bob").into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    assert!(matches!(
        idle_two.recv.recv().await.unwrap(),
        Some(ServerMessage::LoginResult { code, .. }) if code.is_ok()
    ));
    let alice = raw_login(&server, "alice").await;
    drop((idle_one, idle_two, alice));
}

/// Someone inviting a user faster than it reads cannot get it
/// disconnected: once its messages pile up, further invitations are
/// answered busy at the sender.
#[tokio::test]
async fn an_invite_flood_cannot_disconnect_its_victim() {
    let mut config = test_config("invite-flood");
    config.connection_limits.write_timeout = Duration::from_secs(60);
    config.connection_limits.requests_per_sec = 100_000;
    config.switchboard = SwitchboardConfig {
        invitations_per_minute: 100_000,
        ..SwitchboardConfig::DEFAULT
    };
    let server = TestServer::start_with(config).await;
    // The victim reads nothing for now.
    let mut victim = raw_login(&server, "victim").await;
    let mut spammer = raw_login(&server, "spammer").await;
    let user_data = "x".repeat(4_096);
    let mut busy = 0;
    for round in 0..300_u32 {
        spammer
            .send
            .send(&invite_with_data(2 * round, "victim", &user_data))
            .await
            .unwrap();
        let reply = until(&mut spammer, ServerMessage::is_reply).await;
        assert!(matches!(reply, ServerMessage::Ack { .. }), "{reply:?}");
        // Rung or answered busy: hang up (or find the call already over).
        spammer
            .send
            .send(&ClientMessage::Hangup {
                request_id: RequestId(2 * round + 1),
            })
            .await
            .unwrap();
        // Until both the call's end and the hang-up's reply are in.
        let (mut ended, mut replied) = (false, false);
        while !(ended && replied) {
            match until(&mut spammer, |m| {
                m.is_reply()
                    || matches!(
                        m,
                        ServerMessage::LineBusy { .. } | ServerMessage::CallEnded { .. }
                    )
            })
            .await
            {
                ServerMessage::LineBusy { .. } => busy += 1,
                ServerMessage::CallEnded { .. } => ended = true,
                _ => replied = true,
            }
        }
    }
    assert!(
        busy > 0,
        "the flood was answered busy once the victim lagged"
    );
    assert_eq!(
        server.server.stats().await.unwrap().invitees_congested,
        busy,
        "every busy answer counted"
    );
    assert_eq!(
        server.server.stats().await.unwrap().online,
        2,
        "the victim is still logged in"
    );
    // The victim reads its backlog and is fine.
    let mut invited = 0;
    while let Ok(Ok(Some(message))) =
        tokio::time::timeout(Duration::from_millis(500), victim.recv.recv()).await
    {
        invited += usize::from(matches!(message, ServerMessage::Invited { .. }));
    }
    assert!(
        invited > 0 && invited < 300,
        "{invited} invitations reached it"
    );
    victim
        .send
        .send(&ClientMessage::Ping { nonce: 7 })
        .await
        .unwrap();
    until(&mut victim, |m| {
        matches!(m, ServerMessage::Pong { nonce: 7 })
    })
    .await;
}

/// A connection that opens no signaling stream, or sends no whole login,
/// is closed with `TIMEOUT` (not silently) when its time is up.
#[tokio::test]
async fn the_handshake_and_login_deadlines_close_with_timeout() {
    use tokio::io::AsyncWriteExt;
    let mut config = test_config("deadlines");
    config.limits.handshake_timeout = Duration::from_secs(1);
    let server = TestServer::start_with(config).await;
    // Connected, but no frame yet: the stream is never seen.
    let silent = server.raw_client().await;
    // A stream with half a frame on it: no login.
    let mut halting = server.raw_client().await;
    halting.send.get_mut().write_all(&[0, 0]).await.unwrap();
    let started = Instant::now();
    for client in [silent, halting] {
        let closed = tokio::time::timeout(Duration::from_secs(5), client.connection.closed())
            .await
            .expect("closed");
        assert_eq!(close_code_of(&closed), Some(ErrorCode::TIMEOUT));
    }
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "{:?}",
        started.elapsed()
    );
}

/// One admission policy for every transport: QUIC and the fallback over
/// TCP share an address's places, and a place comes back when its
/// connection ends.
#[tokio::test]
async fn the_per_address_cap_counts_every_transport() {
    let mut config = test_config("per-address");
    config.limits.max_connections_per_ip = 2;
    let server = TestServer::start_with(config).await;
    let trust = signaling_quic::ServerTrust::Fingerprint(server.server.fingerprint());
    let fallback = server.server.fallback_addr().unwrap();
    let over_tcp =
        || signaling_ws::connect::<ServerMessage, ClientMessage>(fallback, "localhost", &trust);
    let over_quic = || signaling_quic::connect(server.server.local_addr(), "localhost", &trust);
    let quic_one = over_quic().await.unwrap();
    let tcp_one = over_tcp().await.unwrap();
    assert!(
        over_quic().await.is_err(),
        "a third connection over QUIC is refused"
    );
    assert!(
        over_tcp().await.is_err(),
        "a third connection over TCP is refused"
    );
    assert_eq!(server.server.admission_counts().refused_per_address, 2);
    drop(tcp_one);
    let freed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Ok(client) = over_quic().await {
                return client;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        freed.is_ok(),
        "the place of the closed connection came back"
    );
    drop(quic_one);
}

/// Handshakes past the budget: a newcomer over QUIC proves its address
/// through a Retry and is still refused, and no more handshakes start
/// than the budget allows for the time that passed.
#[tokio::test]
async fn handshakes_past_the_budget_are_retried_then_refused() {
    let mut config = test_config("handshake-budget");
    config.limits.handshakes_per_sec = 1;
    let server = TestServer::start_with(config).await;
    let trust = signaling_quic::ServerTrust::Fingerprint(server.server.fingerprint());
    let started = Instant::now();
    let mut connected = Vec::new();
    for _ in 0..4 {
        if let Ok(client) =
            signaling_quic::connect(server.server.local_addr(), "localhost", &trust).await
        {
            connected.push(client);
        }
    }
    // One at once, then one a second (a loaded machine may take seconds).
    let allowed = 1 + started.elapsed().as_secs() as usize;
    assert!(
        !connected.is_empty() && connected.len() <= allowed,
        "{} connected, {allowed} allowed",
        connected.len()
    );
    let counts = server.server.admission_counts();
    if connected.len() < 4 {
        assert!(counts.retried >= 1, "{counts:?}");
        assert!(counts.refused_handshake_budget >= 1, "{counts:?}");
    }
}
