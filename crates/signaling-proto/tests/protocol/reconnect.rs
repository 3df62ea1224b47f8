//! The client engine's reconnection, driven by hand on a virtual clock:
//! what it sends on a new connection, what it resends after a resume, how
//! it notices a dead connection, and what it reports when the session is
//! gone.

use calling_api::ErrorCode;
use signaling_proto::engine::ACKNOWLEDGE_EVERY;
use signaling_proto::{CallEngine, EngineStatus, ReconnectTimings, ServerMessage, SessionToken};

use super::*;

const T1: SessionToken = SessionToken([1; 16]);
const T2: SessionToken = SessionToken([2; 16]);

fn login_result(code: ErrorCode, message: impl Into<String>) -> ServerMessage {
    ServerMessage::LoginResult {
        protocol_version: PROTOCOL_VERSION,
        code,
        message: message.into(),
    }
}

fn transmits(engine: &mut CallEngine) -> Vec<ClientMessage> {
    std::iter::from_fn(|| engine.poll_transmit()).collect()
}

fn engine_events(engine: &mut CallEngine) -> Vec<CallingEvent> {
    std::iter::from_fn(|| engine.poll_event())
        .filter(|event| !matches!(event, CallingEvent::UserVoiceVolume { .. }))
        .collect()
}

/// Bob's engine, logged in with reconnection on, ringing for alice's call 7.
fn ringing_bob(now: Instant) -> CallEngine {
    let mut engine = CallEngine::new();
    engine.set_reconnect(Some(ReconnectTimings::DEFAULT));
    engine.login(1, "bob", "sig").unwrap();
    assert!(matches!(
        transmits(&mut engine)[..],
        [ClientMessage::Login { .. }]
    ));
    engine.handle_message(now, login_result(ErrorCode::OK, ""));
    engine.handle_message(
        now,
        ServerMessage::Session {
            token: T1,
            grace_ms: 20_000,
        },
    );
    engine.handle_message(
        now,
        ServerMessage::Invited {
            call_id: CallId(7),
            sponsor: user("alice"),
            user_ids: vec![],
            call_type: CallType::Audio,
            user_data: None,
            timeout_ms: 30_000,
        },
    );
    assert!(matches!(
        engine_events(&mut engine)[..],
        [CallingEvent::Invited { .. }]
    ));
    engine
}

#[test]
fn a_resume_resends_what_the_server_missed_and_holds_the_rest() {
    let now = Instant::now();
    let mut bob = ringing_bob(now);
    bob.accept().unwrap();
    let accept = transmits(&mut bob);
    assert!(matches!(accept[..], [ClientMessage::Accept { .. }]));
    bob.handle_disconnect();
    assert_eq!(engine_events(&mut bob), [CallingEvent::Reconnecting]);
    assert!(bob.wants_connection());
    assert!(bob.is_reconnecting());
    // Made while reconnecting: held until the session is back.
    bob.set_mic_mute(true);
    assert_eq!(transmits(&mut bob), []);

    bob.handle_connected(now);
    let resume = transmits(&mut bob);
    assert!(
        matches!(
            &resume[..],
            [ClientMessage::Resume { token, received: 1, user_id, .. }]
                if *token == T1 && *user_id == user("bob")
        ),
        "{resume:?}"
    );
    // The server never got the accept.
    bob.handle_message(
        now,
        ServerMessage::Resumed {
            token: T2,
            received: 0,
        },
    );
    let sent = transmits(&mut bob);
    assert_eq!(sent[0], accept[0], "the accept again, first");
    assert_eq!(sent[1..], [ClientMessage::Microphone { muted: true }]);
    assert_eq!(engine_events(&mut bob), [CallingEvent::Reconnected]);
    assert!(!bob.is_reconnecting());

    // The next break resumes with the new token and the server's count.
    bob.handle_disconnect();
    bob.handle_connected(now);
    assert!(matches!(
        transmits(&mut bob)[..],
        [ClientMessage::Resume { token: T2, .. }]
    ));
    bob.handle_message(
        now,
        ServerMessage::Resumed {
            token: T1,
            received: 2,
        },
    );
    assert_eq!(transmits(&mut bob), [], "the server had both");
}

#[test]
fn silence_from_the_server_is_a_dead_connection() {
    let now = Instant::now();
    let mut bob = ringing_bob(now);
    let timings = ReconnectTimings::DEFAULT;
    // A heartbeat a second, carrying what bob received (the invitation).
    bob.handle_timeout(now + timings.heartbeat_interval);
    assert_eq!(
        transmits(&mut bob),
        [ClientMessage::Heartbeat { received: 1 }]
    );
    bob.handle_message(
        now + timings.heartbeat_interval,
        ServerMessage::HeartbeatAck { received: 0 },
    );
    // Then nothing from the server.
    let mut at = now + timings.heartbeat_interval;
    while !bob.wants_connection() {
        at += Duration::from_millis(100);
        bob.handle_timeout(at);
        assert!(at - now < timings.dead_after * 2, "never noticed");
    }
    assert_eq!(
        at - (now + timings.heartbeat_interval),
        timings.dead_after,
        "dead exactly after the silence"
    );
    assert_eq!(engine_events(&mut bob), [CallingEvent::Reconnecting]);
    // Still ringing: the session waits for its resume.
    assert!(matches!(bob.status(), EngineStatus::Ringing(_)));
}

#[test]
fn many_messages_are_acknowledged_without_waiting_for_the_heartbeat() {
    let now = Instant::now();
    let mut bob = ringing_bob(now);
    for nonce in 1..ACKNOWLEDGE_EVERY {
        bob.handle_message(now, ServerMessage::Pong { nonce });
    }
    assert_eq!(
        transmits(&mut bob),
        [ClientMessage::Heartbeat {
            received: ACKNOWLEDGE_EVERY
        }]
    );
}

#[test]
fn a_lost_session_ends_its_call_once_and_logs_in_again() {
    let now = Instant::now();
    let mut bob = bob_in_call(now);
    bob.handle_disconnect();
    bob.handle_connected(now);
    let _ = transmits(&mut bob);
    // A restarted server: the session is gone.
    bob.handle_message(
        now,
        login_result(ErrorCode::SESSION_EXPIRED, "no such session"),
    );
    let mut expected = vec![CallingEvent::Reconnecting];
    expected.extend(lost_call_7());
    assert_eq!(engine_events(&mut bob), expected);
    assert!(bob.wants_connection(), "the refusal closes the connection");
    bob.handle_connected(now);
    assert!(matches!(
        transmits(&mut bob)[..],
        [ClientMessage::Login { .. }]
    ));
    bob.handle_message(now, login_result(ErrorCode::OK, ""));
    assert_eq!(engine_events(&mut bob), [CallingEvent::Reconnected]);
    assert_eq!(bob.status(), EngineStatus::Idle);
    // A login that fails (the UserSig expired meanwhile) ends the session.
    bob.handle_disconnect();
    bob.handle_connected(now);
    let _ = transmits(&mut bob);
    bob.handle_message(now, login_result(ErrorCode::USERSIG_EXPIRED, "expired"));
    assert!(!bob.wants_connection());
    assert_eq!(bob.status(), EngineStatus::LoggedOut);
    assert!(matches!(
        engine_events(&mut bob)[..],
        [
            CallingEvent::Reconnecting,
            CallingEvent::Error {
                code: ErrorCode::USERSIG_EXPIRED,
                ..
            }
        ]
    ));
}

/// Bob's engine in alice's call 7 (from [`ringing_bob`], accepted).
fn bob_in_call(now: Instant) -> CallEngine {
    let mut bob = ringing_bob(now);
    bob.accept().unwrap();
    let _ = transmits(&mut bob);
    bob.handle_message(
        now,
        ServerMessage::Ack {
            request_id: RequestId(2),
            call_id: Some(CallId(7)),
        },
    );
    let _ = engine_events(&mut bob);
    assert!(matches!(bob.status(), EngineStatus::InCall { .. }));
    bob
}

fn lost_call_7() -> [CallingEvent; 2] {
    [
        CallingEvent::CallEnd,
        CallingEvent::CallEnded {
            call_id: CallId(7),
            reason: EndReason::ConnectionLost,
        },
    ]
}

#[test]
fn a_server_gone_past_the_announced_grace_ends_the_call_here_once() {
    let now = Instant::now();
    let mut bob = bob_in_call(now);
    let timings = ReconnectTimings::DEFAULT;
    let grace = Duration::from_secs(20);
    bob.handle_disconnect();
    assert_eq!(engine_events(&mut bob), [CallingEvent::Reconnecting]);
    // No connection succeeds (the server is gone): the call is kept while
    // the server may still hold the session…
    let expiry = now + grace + timings.dead_after * 2;
    bob.handle_timeout(expiry - Duration::from_millis(1));
    assert_eq!(engine_events(&mut bob), []);
    assert!(matches!(bob.status(), EngineStatus::InCall { .. }));
    // …and ended once it surely does not.
    assert_eq!(bob.poll_timeout(), Some(expiry));
    bob.handle_timeout(expiry);
    assert_eq!(engine_events(&mut bob), lost_call_7());
    assert_eq!(bob.status(), EngineStatus::Idle);
    assert!(bob.wants_connection(), "still trying to log in");
    bob.handle_timeout(expiry + grace);
    assert_eq!(engine_events(&mut bob), [], "once");
    // The next server answers a login, not a resume.
    bob.handle_connected(expiry + grace);
    assert!(matches!(
        transmits(&mut bob)[..],
        [ClientMessage::Login { .. }]
    ));
    bob.handle_message(expiry + grace, login_result(ErrorCode::OK, ""));
    assert_eq!(engine_events(&mut bob), [CallingEvent::Reconnected]);
}

#[test]
fn a_resume_within_the_grace_keeps_the_call_past_the_expiry() {
    let now = Instant::now();
    let mut bob = bob_in_call(now);
    bob.handle_disconnect();
    bob.handle_connected(now + Duration::from_secs(5));
    let _ = transmits(&mut bob);
    bob.handle_message(
        now + Duration::from_secs(5),
        ServerMessage::Resumed {
            token: T2,
            received: 0,
        },
    );
    assert_eq!(
        engine_events(&mut bob),
        [CallingEvent::Reconnecting, CallingEvent::Reconnected]
    );
    // The server answers every heartbeat for a minute, past when the
    // session would have expired without the resume.
    for second in 6..=60 {
        let at = now + Duration::from_secs(second);
        bob.handle_timeout(at);
        let _ = transmits(&mut bob);
        bob.handle_message(at, ServerMessage::HeartbeatAck { received: 0 });
    }
    assert_eq!(engine_events(&mut bob), []);
    assert!(matches!(bob.status(), EngineStatus::InCall { .. }));
}

#[test]
fn a_server_that_shuts_down_is_a_lost_server_and_the_next_one_logs_in() {
    let now = Instant::now();
    let mut bob = bob_in_call(now);
    bob.handle_message(
        now,
        ServerMessage::CallEnded {
            call_id: CallId(7),
            reason: EndReason::ServerShutdown,
        },
    );
    bob.handle_message(
        now,
        ServerMessage::Error {
            request_id: None,
            code: ErrorCode::SERVER_SHUTDOWN,
            message: "the server is shutting down".into(),
        },
    );
    assert_eq!(
        engine_events(&mut bob),
        [
            CallingEvent::CallEnd,
            CallingEvent::CallEnded {
                call_id: CallId(7),
                reason: EndReason::ServerShutdown,
            },
            CallingEvent::Reconnecting,
        ]
    );
    assert!(bob.wants_connection());
    bob.handle_disconnect();
    // The old server, still shutting down, refuses: try again.
    bob.handle_connected(now);
    assert!(matches!(
        transmits(&mut bob)[..],
        [ClientMessage::Login { .. }]
    ));
    bob.handle_message(
        now,
        login_result(ErrorCode::SERVER_SHUTDOWN, "shutting down"),
    );
    assert!(bob.wants_connection());
    assert_eq!(engine_events(&mut bob), []);
    // The restarted one takes the login.
    bob.handle_connected(now);
    let _ = transmits(&mut bob);
    bob.handle_message(now, login_result(ErrorCode::OK, ""));
    assert_eq!(engine_events(&mut bob), [CallingEvent::Reconnected]);
    assert_eq!(bob.status(), EngineStatus::Idle);
}

#[test]
fn a_hang_up_while_reconnecting_ends_the_call_at_once_and_reaches_the_server_later() {
    let now = Instant::now();
    let mut bob = bob_in_call(now);
    while bob.poll_completion().is_some() {}
    bob.handle_disconnect();
    let _ = engine_events(&mut bob);
    let request = bob.hangup().unwrap();
    // Done for the user now, not after a resume or a timeout.
    assert_eq!(
        engine_events(&mut bob),
        [
            CallingEvent::CallEnd,
            CallingEvent::CallEnded {
                call_id: CallId(7),
                reason: EndReason::Hangup,
            },
        ]
    );
    let completion = bob.poll_completion().expect("answered at once");
    assert_eq!(completion.request, request);
    assert_eq!(completion.result, Ok(None));
    assert_eq!(bob.status(), EngineStatus::Idle);
    // The session resumes: the server hears the hang-up, and its answer
    // completes nothing twice.
    bob.handle_connected(now);
    let _ = transmits(&mut bob);
    bob.handle_message(
        now,
        ServerMessage::Resumed {
            token: T2,
            received: 0,
        },
    );
    let sent = transmits(&mut bob);
    assert!(
        sent.iter()
            .any(|message| matches!(message, ClientMessage::Hangup { request_id } if *request_id == request)),
        "{sent:?}"
    );
    bob.handle_message(
        now,
        ServerMessage::Ack {
            request_id: request,
            call_id: Some(CallId(7)),
        },
    );
    bob.handle_message(
        now,
        ServerMessage::CallEnded {
            call_id: CallId(7),
            reason: EndReason::Hangup,
        },
    );
    assert!(bob.poll_completion().is_none());
    assert_eq!(engine_events(&mut bob), [CallingEvent::Reconnected]);
}
