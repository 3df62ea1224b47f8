//! The core over a single server's switchboard, on a virtual clock: no
//! runtime, no sockets.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod harness;

use std::time::{Duration, Instant};

use calling_api::ErrorCode;
use harness::{Server, accept, acked_call, invite, numbered, token_in, user};
use server_core::{Counted, LoginAnswer, MemberAt};
use signaling_proto::{
    CallEvent, ClientMessage, ConnId, RequestId, ResumeClaim, ServerMessage, SessionToken,
    Switchboard, SwitchboardConfig,
};

fn server(now: Instant) -> Server<Switchboard> {
    Server::new(Switchboard::new(SwitchboardConfig::DEFAULT), now, 1)
}

fn attached(answer: &LoginAnswer) -> ConnId {
    match answer {
        LoginAnswer::Attached { session, .. } => *session,
        LoginAnswer::Refused { code, message, .. } => panic!("refused: {code:?} {message}"),
    }
}

fn refused(answer: &LoginAnswer) -> ErrorCode {
    match answer {
        LoginAnswer::Refused { code, .. } => *code,
        LoginAnswer::Attached { .. } => panic!("attached"),
    }
}

/// Alice and bob log in; alice calls bob and bob accepts. Their links and
/// the call.
fn alice_calls_bob(
    server: &mut Server<Switchboard>,
    now: Instant,
) -> (ConnId, ConnId, calling_api::CallId) {
    let (alice, _) = server.connect(now, "alice", None);
    let (bob, _) = server.connect(now, "bob", None);
    server.drain(now);
    server.send(now, alice, invite(1, "bob"));
    server.drain(now);
    let call_id = acked_call(server.inbox(alice));
    server.send(now, bob, accept(1, call_id));
    server.drain(now);
    (alice, bob, call_id)
}

#[test]
fn a_login_is_told_its_session_right_after_its_answer() {
    let now = Instant::now();
    let mut server = server(now);
    let (alice, answer) = server.connect(now, "alice", None);
    assert_eq!(
        answer,
        LoginAnswer::Attached {
            session: alice,
            resumable: true
        }
    );
    server.drain(now);
    let inbox = server.read_all(alice);
    assert_eq!(inbox.len(), 2, "{inbox:?}");
    assert!(matches!(
        inbox[0],
        ServerMessage::LoginResult {
            code: ErrorCode::OK,
            ..
        }
    ));
    assert_eq!(
        inbox[1],
        ServerMessage::Session {
            token: SessionToken([1; 16]),
            grace_ms: 20_000
        }
    );
}

#[test]
fn a_resumed_session_gets_what_it_missed_once_and_its_routes_on_the_new_connection() {
    let now = Instant::now();
    let mut server = server(now);
    let (alice, bob, call_id) = alice_calls_bob(&mut server, now);
    let bob_inbox = server.read_all(bob);
    let received = numbered(&bob_inbox);
    let token = token_in(&bob_inbox);
    let bob_flow = server.routes[&call_id]
        .iter()
        .find(|member| member.at == MemberAt::Here(bob))
        .expect("bob is routed")
        .flow;

    let later = now + Duration::from_secs(2);
    server.core.handle_disconnect(later, bob, false);
    server.drain(later);
    assert_eq!(server.counts, [Counted::SessionDetached]);
    assert!(
        server
            .inbox(alice)
            .contains(&ServerMessage::MemberConnection {
                call_id,
                user_id: user("bob"),
                connected: false
            })
    );
    server.send(later, alice, ClientMessage::Microphone { muted: true });
    server.drain(later);

    let claim = ResumeClaim { token, received };
    let (bob_again, answer) = server.connect(later, "bob", Some(claim));
    assert_eq!(
        answer,
        LoginAnswer::Attached {
            session: bob,
            resumable: true
        },
        "the same session, on a new connection"
    );
    server.drain(later);
    let inbox = server.read_all(bob_again);
    let ServerMessage::Resumed {
        token: new_token,
        received: server_received,
    } = inbox[0]
    else {
        panic!("not resumed first: {inbox:?}");
    };
    assert_ne!(new_token, token, "a resume changes the token");
    assert_eq!(server_received, 1, "the server counted bob's accept");
    assert_eq!(
        &inbox[1..],
        [ServerMessage::AudioAvailability {
            call_id,
            user_id: user("alice"),
            available: false
        }],
        "what bob missed, once"
    );
    assert_eq!(
        server.counts,
        [Counted::SessionDetached, Counted::Resume { resumed: true }]
    );
    let routed = server.routed(call_id);
    assert!(routed.contains(&MemberAt::Here(bob_again)), "{routed:?}");
    assert!(!routed.contains(&MemberAt::Here(bob)), "{routed:?}");
    assert!(
        server.routes[&call_id]
            .iter()
            .any(|member| member.flow == bob_flow)
    );

    // The new connection speaks for the session; the old token is void.
    server.send(
        later,
        bob_again,
        ClientMessage::Hangup {
            request_id: RequestId(2),
        },
    );
    server.drain(later);
    assert!(
        server
            .inbox(alice)
            .iter()
            .any(|message| matches!(message, ServerMessage::CallEnded { .. }))
    );
    let (_, answer) = server.connect(later, "bob", Some(ResumeClaim { token, received }));
    assert_eq!(refused(&answer), ErrorCode::SESSION_EXPIRED);
}

#[test]
fn resumes_that_do_not_fit_are_refused_and_leave_the_session_resumable() {
    let now = Instant::now();
    let mut server = server(now);
    let (bob, _) = server.connect(now, "bob", None);
    server.drain(now);
    let token = token_in(&server.read_all(bob));
    server.core.handle_disconnect(now, bob, false);
    server.drain(now);

    let wrong_token = ResumeClaim {
        token: SessionToken([7; 16]),
        received: 0,
    };
    let (_, answer) = server.connect(now, "bob", Some(wrong_token));
    assert_eq!(refused(&answer), ErrorCode::SESSION_EXPIRED);
    let too_many = ResumeClaim { token, received: 9 };
    let (_, answer) = server.connect(now, "bob", Some(too_many));
    assert_eq!(
        refused(&answer),
        ErrorCode::SESSION_EXPIRED,
        "bob got nothing numbered"
    );
    let (_, answer) = server.connect(now, "carol", Some(ResumeClaim { token, received: 0 }));
    assert_eq!(
        refused(&answer),
        ErrorCode::SESSION_EXPIRED,
        "carol has no session"
    );
    server.drain(now);

    let (_, answer) = server.connect(now, "bob", Some(ResumeClaim { token, received: 0 }));
    assert_eq!(attached(&answer), bob);
    server.drain(now);
    assert_eq!(
        server.counts,
        [
            Counted::SessionDetached,
            Counted::Resume { resumed: false },
            Counted::Resume { resumed: false },
            Counted::Resume { resumed: false },
            Counted::Resume { resumed: true },
        ]
    );
}

#[test]
fn a_resume_over_a_connection_not_yet_seen_broken_closes_that_one() {
    let now = Instant::now();
    let mut server = server(now);
    let (bob, _) = server.connect(now, "bob", None);
    server.drain(now);
    let token = token_in(&server.read_all(bob));
    let (bob_again, answer) = server.connect(now, "bob", Some(ResumeClaim { token, received: 0 }));
    assert_eq!(attached(&answer), bob);
    server.drain(now);
    assert_eq!(server.closed(bob), Some(ErrorCode::OK));
    // The old connection's end, when it comes, changes nothing.
    server.core.handle_disconnect(now, bob, false);
    server.drain(now);
    assert_eq!(server.core.board().detached_count(), 0);
    assert_eq!(server.counts, [Counted::Resume { resumed: true }]);
    server.send(now, bob_again, ClientMessage::Ping { nonce: 5 });
    server.drain(now);
    assert!(
        server
            .read_all(bob_again)
            .contains(&ServerMessage::Pong { nonce: 5 })
    );
}

#[test]
fn a_detached_session_ends_when_its_grace_runs_out() {
    let now = Instant::now();
    let mut server = server(now);
    let (alice, bob, call_id) = alice_calls_bob(&mut server, now);
    let token = token_in(&server.read_all(bob));
    server.core.handle_disconnect(now, bob, false);
    server.drain(now);
    let grace_over = now + Duration::from_secs(20);
    assert_eq!(server.core.poll_timeout(), Some(grace_over));
    server.core.handle_timeout(grace_over);
    server.drain(grace_over);
    assert!(server.inbox(alice).iter().any(|message| matches!(
        message,
        ServerMessage::CallEnded { call_id: ended, .. } if *ended == call_id
    )));
    assert_eq!(server.core.board().online_count(), 1);
    assert_eq!(server.closed(bob), None, "no connection to close");
    let (_, answer) = server.connect(grace_over, "bob", Some(ResumeClaim { token, received: 2 }));
    assert_eq!(refused(&answer), ErrorCode::SESSION_EXPIRED);
}

#[test]
fn an_expelled_or_vanished_connection() {
    let now = Instant::now();
    let mut server = server(now);
    let (alice, _) = server.connect(now, "alice", None);
    let (bob, _) = server.connect(now, "bob", None);
    server.drain(now);
    // Expelled: the session ends at once, nothing waits for a resume.
    server.core.handle_disconnect(now, alice, true);
    server.drain(now);
    assert_eq!(server.core.board().online_count(), 1);
    assert!(server.counts.is_empty());
    // A writer found gone is a broken network; its disconnection, arriving
    // after, is not counted twice.
    server.core.handle_gone(now, bob);
    server.core.handle_disconnect(now, bob, false);
    server.drain(now);
    assert_eq!(server.core.board().detached_count(), 1);
    assert_eq!(server.counts, [Counted::SessionDetached]);
}

#[test]
fn a_client_that_acknowledges_nothing_is_disconnected_and_one_that_does_is_not() {
    let now = Instant::now();
    let mut server = server(now);
    let (alice, _) = server.connect(now, "alice", None);
    let (bob, _) = server.connect(now, "bob", None);
    server.drain(now);
    let capacity = harness::LIMITS.replay_capacity as u64;
    for nonce in 0..capacity * 3 {
        server.send(now, alice, ClientMessage::Ping { nonce });
        if nonce % 4 == 3 {
            let received = server.received(alice);
            server.send(now, alice, ClientMessage::Heartbeat { received });
        }
        server.read_all(alice);
        server.drain(now);
    }
    assert_eq!(server.closed(alice), None, "alice acknowledges");
    for nonce in 0..capacity {
        server.send(now, bob, ClientMessage::Ping { nonce });
        server.drain(now);
        assert_eq!(server.closed(bob), None, "{nonce} pongs are kept");
    }
    server.send(now, bob, ClientMessage::Ping { nonce: 99 });
    server.drain(now);
    assert_eq!(server.closed(bob), Some(ErrorCode::SERVER_BUSY));
    assert_eq!(
        server.core.board().online_count(),
        1,
        "bob's session is over"
    );
}

#[test]
fn a_heartbeat_claiming_more_than_was_sent_closes_its_session() {
    let now = Instant::now();
    let mut server = server(now);
    let (alice, _) = server.connect(now, "alice", None);
    server.drain(now);
    server.send(now, alice, ClientMessage::Heartbeat { received: u64::MAX });
    server.drain(now);
    assert_eq!(server.closed(alice), Some(ErrorCode::PROTOCOL_ERROR));
    assert_eq!(server.core.board().online_count(), 0, "no resume either");
    assert_eq!(server.core.board().detached_count(), 0);
}

#[test]
fn a_version_1_session_gets_no_heartbeat_ack() {
    let now = Instant::now();
    let mut server = server(now);
    let (old, _) = server.connect_speaking(now, "old", None, 1);
    let (new, _) = server.connect(now, "new", None);
    server.drain(now);
    server.read_all(old);
    server.read_all(new);
    for link in [old, new] {
        server.send(now, link, ClientMessage::Heartbeat { received: 0 });
    }
    server.drain(now);
    assert_eq!(server.read_all(old), [], "nothing of version 2");
    assert_eq!(server.closed(old), None);
    assert_eq!(
        server.read_all(new),
        [ServerMessage::HeartbeatAck { received: 0 }]
    );
}

#[test]
fn a_congested_client_is_answered_busy_until_its_outbox_drains() {
    let now = Instant::now();
    let mut server = server(now);
    let (alice, _) = server.connect(now, "alice", None);
    let (bob, _) = server.connect(now, "bob", None);
    server.drain(now);
    server.read_all(bob);
    // Bob acknowledges what he gets but his writer falls behind: more
    // than three quarters of an outbox waits.
    for nonce in 0..harness::LIMITS.congested_above as u64 {
        server.send(now, bob, ClientMessage::Ping { nonce });
        let received = server.received(bob);
        server.send(now, bob, ClientMessage::Heartbeat { received });
        server.drain(now);
    }
    server.send(now, alice, invite(1, "bob"));
    server.drain(now);
    assert_eq!(server.core.board().counters().invitees_congested, 1);
    assert!(
        server
            .read_all(alice)
            .iter()
            .any(|message| matches!(message, ServerMessage::LineBusy { .. })),
        "bob is busy while congested"
    );
    server.read_all(bob);
    server.drain(now);
    server.send(now, alice, invite(2, "bob"));
    server.drain(now);
    assert!(
        server
            .inbox(bob)
            .iter()
            .any(|message| matches!(message, ServerMessage::Invited { .. })),
        "relieved, bob is rung"
    );
    assert_eq!(server.core.board().counters().invitees_congested, 1);
}

#[test]
fn a_draining_server_takes_resumes_but_no_new_logins_and_a_stopping_one_nothing() {
    let now = Instant::now();
    let mut server = server(now);
    let (alice, bob, _) = alice_calls_bob(&mut server, now);
    let token = token_in(&server.read_all(bob));
    server.core.handle_disconnect(now, bob, false);
    assert!(server.core.drain(now));
    assert!(!server.core.drain(now), "under way already");
    server.drain(now);
    let state = server.core.drain_state();
    assert!(state.draining);
    assert_eq!(state.calls, 1);
    let (_, answer) = server.connect(now, "carol", None);
    assert_eq!(refused(&answer), ErrorCode::SERVER_DRAINING);
    let (bob_again, answer) = server.connect(now, "bob", Some(ResumeClaim { token, received: 2 }));
    assert_eq!(attached(&answer), bob);
    server.drain(now);

    server.core.shutdown(now);
    server.drain(now);
    assert_eq!(server.closed(alice), Some(ErrorCode::SERVER_SHUTDOWN));
    assert_eq!(server.closed(bob_again), Some(ErrorCode::SERVER_SHUTDOWN));
    let (_, answer) = server.connect(now, "dave", None);
    assert_eq!(refused(&answer), ErrorCode::SERVER_SHUTDOWN);
}

#[test]
fn call_events_say_how_long_the_call_lasted_on_the_virtual_clock() {
    let start = Instant::now();
    let mut server = server(start);
    let (_alice, bob, call_id) = alice_calls_bob(&mut server, start);
    let later = start + Duration::from_secs(7);
    let calls = server.core.call_summaries(later);
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].1, Duration::from_secs(7));
    server.send(
        later,
        bob,
        ClientMessage::Hangup {
            request_id: RequestId(2),
        },
    );
    server.drain(later);
    let (started, _) = server
        .events
        .iter()
        .find(|(event, _)| matches!(event, CallEvent::Started { .. }))
        .unwrap();
    assert!(matches!(started, CallEvent::Started { call_id: id, .. } if *id == call_id));
    let ended = server
        .events
        .iter()
        .find_map(|(event, duration)| match event {
            CallEvent::Ended { .. } => Some(*duration),
            _ => None,
        })
        .unwrap();
    assert_eq!(ended, Some(Duration::from_secs(7)));
}

/// A draining or stopping server with somewhere to send its clients tells
/// a client of version 6 where, before the refusal or the close; an older
/// client is only refused or closed.
#[test]
fn a_draining_or_stopping_server_tells_new_clients_where_to_go() {
    let now = Instant::now();
    let mut server = server(now);
    let elsewhere = vec!["b.example:4433".to_owned(), "c.example:4433".to_owned()];
    server.core.set_redirect(&elsewhere);
    let redirect = ServerMessage::Redirect {
        servers: elsewhere.clone(),
    };
    let (alice, _) = server.connect(now, "alice", None);
    let (bob, _) = server.connect_speaking(now, "bob", None, 5);
    server.drain(now);
    assert!(server.core.drain(now));
    server.drain(now);
    let (_, answer) = server.connect(now, "carol", None);
    assert!(
        matches!(&answer, LoginAnswer::Refused { code: ErrorCode::SERVER_DRAINING, redirect: Some(sent), .. } if *sent == redirect),
        "{answer:?}"
    );
    let (_, answer) = server.connect_speaking(now, "dave", None, 5);
    assert!(
        matches!(
            &answer,
            LoginAnswer::Refused {
                code: ErrorCode::SERVER_DRAINING,
                redirect: None,
                ..
            }
        ),
        "{answer:?}"
    );
    server.core.shutdown(now);
    server.drain(now);
    assert_eq!(server.closed(alice), Some(ErrorCode::SERVER_SHUTDOWN));
    assert_eq!(server.inbox(alice).last(), Some(&redirect));
    assert_eq!(server.closed(bob), Some(ErrorCode::SERVER_SHUTDOWN));
    assert!(!server.inbox(bob).contains(&redirect));
    // No redirect configured: refused alone.
    let mut plain = self::server(now);
    plain.core.shutdown(now);
    let (_, answer) = plain.connect(now, "erin", None);
    assert!(matches!(
        answer,
        LoginAnswer::Refused { redirect: None, .. }
    ));
}
