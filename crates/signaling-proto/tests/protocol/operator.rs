//! What the operator's side sees and does: call events, invitations that
//! wait for offline users, kicking, ending calls, draining.

use super::*;
use calling_api::{DeviceId, ErrorCode};
use signaling_proto::{CallEvent, InvitationOutcome};

/// The call events since `from` (an index into the event list), without times.
fn call_events_since(sim: &Simulation, from: usize) -> Vec<CallEvent> {
    sim.call_events()[from..]
        .iter()
        .map(|(_, event)| event.clone())
        .collect()
}

#[test]
fn a_call_is_told_in_order() {
    let mut sim = world(&["alice", "bob"]);
    let call_id = connect(&mut sim, "alice", "bob");
    sim.engine("alice").hangup().unwrap();
    sim.settle();
    assert_eq!(
        call_events_since(&sim, 0),
        [
            CallEvent::Started {
                call_id,
                call_type: CallType::Audio,
                caller: user("alice"),
            },
            CallEvent::Joined {
                call_id,
                user: user("alice"),
                device: DeviceId::new("alice").ok(),
            },
            CallEvent::Invited {
                call_id,
                inviter: user("alice"),
                invitee: user("bob"),
                timeout: Duration::from_secs(30),
                offline: false,
            },
            CallEvent::InvitationEnded {
                call_id,
                inviter: user("alice"),
                invitee: user("bob"),
                outcome: InvitationOutcome::Answered,
                offline: false,
            },
            CallEvent::Joined {
                call_id,
                user: user("bob"),
                device: DeviceId::new("bob").ok(),
            },
            CallEvent::Left {
                call_id,
                user: user("alice"),
                reason: EndReason::Hangup,
            },
            CallEvent::Left {
                call_id,
                user: user("bob"),
                reason: EndReason::Hangup,
            },
            CallEvent::Ended {
                call_id,
                reason: EndReason::Hangup,
            },
        ]
    );
}

#[test]
fn every_invitation_outcome_is_told_once() {
    let mut sim = world(&["alice", "bob", "carol", "dave"]);
    // Carol is busy with dave; bob rejects; erin is offline and times out.
    connect(&mut sim, "carol", "dave");
    let before = sim.call_events().len();
    let five_seconds = CallOptions {
        timeout_ms: Some(5_000),
        user_data: None,
    };
    for invitee in ["bob", "carol", "erin"] {
        sim.engine("alice")
            .call(invitee, CallType::Audio, five_seconds.clone())
            .unwrap();
        sim.settle();
    }
    sim.engine("bob").reject().unwrap();
    sim.settle();
    sim.advance(6 * SECOND);
    let outcomes: Vec<(String, InvitationOutcome, bool)> = call_events_since(&sim, before)
        .into_iter()
        .filter_map(|event| match event {
            CallEvent::InvitationEnded {
                invitee,
                outcome,
                offline,
                ..
            } => Some((invitee.as_str().to_owned(), outcome, offline)),
            _ => None,
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("carol".into(), InvitationOutcome::Busy, false),
            ("bob".into(), InvitationOutcome::Rejected, false),
            ("erin".into(), InvitationOutcome::TimedOut, true),
        ]
    );
    let last = call_events_since(&sim, before).pop();
    assert!(
        matches!(
            last,
            Some(CallEvent::Ended {
                reason: EndReason::NoResponse,
                ..
            })
        ),
        "{last:?}"
    );
    assert_consistent(&sim);
}

#[test]
fn an_offline_invitee_who_logs_in_in_time_rings_and_can_accept() {
    let mut sim = world(&["alice"]);
    let call_id = dial(&mut sim, "alice", "bob");
    assert_eq!(
        events(&mut sim, "alice"),
        [CallingEvent::InviteeOffline {
            user_id: user("bob")
        }],
        "told bob is offline, and no answer while bob may come"
    );
    assert!(matches!(
        sim.call_events().last(),
        Some((_, CallEvent::Invited { offline: true, .. }))
    ));
    sim.advance(10 * SECOND);
    sim.add_logged_in("bob", "bob");
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    sim.engine("bob").accept().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), enter("bob"));
    assert_eq!(events(&mut sim, "bob"), enter("alice"));
    let members: Vec<UserId> = sim
        .switchboard()
        .members_of(call_id)
        .into_iter()
        .map(|member| member.user)
        .collect();
    assert_eq!(members, [user("alice"), user("bob")]);
    assert_consistent(&sim);
}

#[test]
fn a_waiting_invitation_keeps_its_deadline() {
    let mut sim = world(&["alice"]);
    let call = dial(&mut sim, "alice", "bob");
    sim.advance(25 * SECOND);
    sim.add_logged_in("bob", "bob");
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    // 30 s from the invite, not from the login.
    sim.advance(6 * SECOND);
    assert_eq!(events(&mut sim, "bob"), [CallingEvent::CallingTimeOut]);
    let mut expected = vec![
        CallingEvent::InviteeOffline {
            user_id: user("bob"),
        },
        CallingEvent::NoResp {
            user_id: user("bob"),
        },
    ];
    expected.extend(call_end(call, EndReason::NoResponse));
    assert_eq!(events(&mut sim, "alice"), expected);
    assert_consistent(&sim);
}

#[test]
fn a_cancelled_or_expired_invitation_never_reaches_a_late_login() {
    let mut sim = world(&["alice"]);
    dial(&mut sim, "alice", "bob");
    sim.engine("alice").hangup().unwrap();
    sim.settle();
    assert_eq!(
        call_events_since(&sim, 0)
            .iter()
            .filter(|event| matches!(
                event,
                CallEvent::InvitationEnded {
                    outcome: InvitationOutcome::Cancelled,
                    offline: true,
                    ..
                }
            ))
            .count(),
        1
    );
    dial(&mut sim, "alice", "carol");
    sim.advance(31 * SECOND);
    sim.add_logged_in("bob", "bob");
    sim.add_logged_in("carol", "carol");
    assert_eq!(events(&mut sim, "bob"), []);
    assert_eq!(events(&mut sim, "carol"), []);
    assert_eq!(sim.switchboard().call_count(), 0);
    assert_consistent(&sim);
}

#[test]
fn a_user_with_a_waiting_invitation_is_busy() {
    let mut sim = world(&["alice", "carol"]);
    dial(&mut sim, "alice", "bob");
    let second = dial(&mut sim, "carol", "bob");
    let mut expected = vec![CallingEvent::LineBusy {
        user_id: user("bob"),
    }];
    expected.extend(call_end(second, EndReason::LineBusy));
    assert_eq!(events(&mut sim, "carol"), expected);
    sim.add_logged_in("bob", "bob");
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    assert_consistent(&sim);
}

#[test]
fn offline_invitees_may_be_answered_at_once_instead() {
    let mut sim = Simulation::new(
        Instant::now(),
        SwitchboardConfig {
            ring_offline_invitees: false,
            ..SwitchboardConfig::default()
        },
        NetworkConfig::default(),
    );
    sim.add_logged_in("alice", "alice");
    let call = dial(&mut sim, "alice", "nobody_here");
    let mut expected = vec![CallingEvent::NoResp {
        user_id: user("nobody_here"),
    }];
    expected.extend(call_end(call, EndReason::NoResponse));
    assert_eq!(events(&mut sim, "alice"), expected);
    assert!(sim.elapsed() < SECOND, "no 30 s wait for an offline user");
    assert_eq!(sim.switchboard().call_count(), 0);
}

#[test]
fn the_operator_ends_a_call_once_for_everyone() {
    let mut sim = world(&["alice", "bob", "carol"]);
    let call = connect(&mut sim, "alice", "bob");
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    events(&mut sim, "carol");
    events(&mut sim, "bob");
    assert!(sim.operate(|switchboard, now| switchboard.end_call(now, call)));
    sim.settle();
    for member in ["alice", "bob"] {
        assert_eq!(
            events(&mut sim, member),
            call_end(call, EndReason::EndedByOperator),
            "{member}"
        );
    }
    assert_eq!(events(&mut sim, "carol"), [CallingEvent::CallingCancel]);
    assert_eq!(sim.switchboard().call_count(), 0);
    assert!(!sim.operate(|switchboard, now| switchboard.end_call(now, call)));
    assert!(matches!(
        sim.call_events().last(),
        Some((
            _,
            CallEvent::Ended {
                reason: EndReason::EndedByOperator,
                ..
            }
        ))
    ));
    // Everyone is free again.
    connect(&mut sim, "bob", "carol");
    assert_consistent(&sim);
}

#[test]
fn the_operator_kicks_a_user_out_of_its_call() {
    let mut sim = world(&["alice", "bob"]);
    let call = connect(&mut sim, "alice", "bob");
    assert!(sim.operate(|switchboard, now| switchboard.kick(now, &user("bob"))));
    sim.settle();
    // Told it was the operator, not a login elsewhere.
    let mut bob_expected = call_end(call, EndReason::LoggedOutByOperator).to_vec();
    bob_expected.push(CallingEvent::Error {
        code: ErrorCode::LOGGED_OUT_BY_OPERATOR,
        msg: ErrorCode::LOGGED_OUT_BY_OPERATOR.message().into(),
    });
    assert_eq!(events(&mut sim, "bob"), bob_expected);
    let mut expected = vec![CallingEvent::UserLeave {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::Hangup));
    assert_eq!(events(&mut sim, "alice"), expected);
    assert_eq!(sim.switchboard().online_count(), 1);
    assert!(!sim.operate(|switchboard, now| switchboard.kick(now, &user("bob"))));
    assert_consistent(&sim);
}

#[test]
fn a_draining_server_starts_no_call_but_running_ones_go_on() {
    let mut sim = world(&["alice", "bob", "carol", "dave"]);
    let call = connect(&mut sim, "alice", "bob");
    sim.operate(|switchboard, _| switchboard.set_accepting_calls(false));
    sim.take_completions("carol");
    sim.engine("carol")
        .call("dave", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    let completions = sim.take_completions("carol");
    assert_eq!(
        completions[0].result.as_ref().unwrap_err().code,
        ErrorCode::SERVER_DRAINING
    );
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "carol"), [invited("alice", &["bob"])]);
    assert_eq!(sim.switchboard().call_summaries()[0].call_id, call);
    assert_eq!(
        sim.switchboard().call_summaries()[0].invitees,
        [user("carol")]
    );
    assert_consistent(&sim);
}

/// A switchboard where alice (connection 1) and bob (connection 2), logged
/// in with these protocol versions, are in a call alice started; its
/// outputs so far taken.
fn alice_calls_bob(
    (alice_version, bob_version): (u16, u16),
) -> (signaling_proto::Switchboard, Instant, CallId) {
    use signaling_proto::{ConnId, Switchboard};
    let now = Instant::now();
    let mut switchboard = Switchboard::new(SwitchboardConfig::default());
    let (alice, bob) = (ConnId(1), ConnId(2));
    switchboard.handle_login(now, alice, user("alice"), alice_version);
    switchboard.handle_login(now, bob, user("bob"), bob_version);
    switchboard.handle_message(
        now,
        alice,
        ClientMessage::Invite {
            request_id: RequestId(1),
            call_id: None,
            user_ids: vec![user("bob")],
            call_type: CallType::Audio,
            timeout_ms: None,
            user_data: None,
        },
    );
    let call_id = switchboard.call_summaries()[0].call_id;
    switchboard.handle_message(
        now,
        bob,
        ClientMessage::Accept {
            request_id: RequestId(1),
            call_id,
        },
    );
    while switchboard.poll_output().is_some() {}
    (switchboard, now, call_id)
}

#[test]
fn a_client_older_than_version_3_hears_hangup_for_an_operator_end() {
    use signaling_proto::{ConnId, Output, ServerMessage};
    let (old, new) = (ConnId(1), ConnId(2));
    let (mut switchboard, now, call_id) = alice_calls_bob((2, PROTOCOL_VERSION));
    assert!(switchboard.end_call(now, call_id));
    let mut told = Vec::new();
    while let Some(output) = switchboard.poll_output() {
        if let Output::Send {
            conn,
            message: ServerMessage::CallEnded { reason, .. },
        } = output
        {
            told.push((conn, reason));
        }
    }
    told.sort_by_key(|(conn, _)| *conn);
    assert_eq!(
        told,
        [(old, EndReason::Hangup), (new, EndReason::EndedByOperator)]
    );
}

/// What the operator's logout sends a session of `version`: its call's end
/// reason, the notice, and the close code.
fn operator_logout_as_seen_by(version: u16) -> (Vec<signaling_proto::ServerMessage>, ErrorCode) {
    use signaling_proto::{ConnId, Output, ServerMessage};
    let bob = ConnId(2);
    let (mut switchboard, now, _) = alice_calls_bob((PROTOCOL_VERSION, version));
    assert!(switchboard.kick(now, &user("bob")));
    let mut told = Vec::new();
    let mut closed = None;
    while let Some(output) = switchboard.poll_output() {
        match output {
            Output::Send {
                conn,
                message:
                    message @ (ServerMessage::CallEnded { .. }
                    | ServerMessage::Error { .. }
                    | ServerMessage::Kicked),
            } if conn == bob => told.push(message),
            Output::Close { conn, code } if conn == bob => closed = Some(code),
            _ => {}
        }
    }
    (told, closed.expect("the kicked session is closed"))
}

#[test]
fn the_operators_logout_has_its_own_reason_and_older_clients_hear_kicked() {
    use signaling_proto::ServerMessage;
    let (told, closed) = operator_logout_as_seen_by(PROTOCOL_VERSION);
    assert!(
        matches!(
            told[..],
            [
                ServerMessage::CallEnded {
                    reason: EndReason::LoggedOutByOperator,
                    ..
                },
                ServerMessage::Error {
                    request_id: None,
                    code: ErrorCode::LOGGED_OUT_BY_OPERATOR,
                    ..
                }
            ]
        ),
        "{told:?}"
    );
    assert_eq!(closed, ErrorCode::LOGGED_OUT_BY_OPERATOR);
    let (told, closed) = operator_logout_as_seen_by(3);
    assert!(
        matches!(
            told[..],
            [
                ServerMessage::CallEnded {
                    reason: EndReason::Kicked,
                    ..
                },
                ServerMessage::Kicked
            ]
        ),
        "{told:?}"
    );
    assert_eq!(closed, ErrorCode::KICKED_OFFLINE);
}

#[test]
fn a_client_older_than_version_4_is_not_told_an_invitee_is_offline() {
    use signaling_proto::{ConnId, Output, ServerMessage, Switchboard};
    let now = Instant::now();
    let mut switchboard = Switchboard::new(SwitchboardConfig::default());
    let (old, new) = (ConnId(1), ConnId(2));
    switchboard.handle_login(now, old, user("alice"), 3);
    switchboard.handle_login(now, new, user("bob"), PROTOCOL_VERSION);
    // Two absent users: one with a waiting invitation would be busy.
    for (conn, absent) in [(old, "carol"), (new, "dave")] {
        switchboard.handle_message(
            now,
            conn,
            ClientMessage::Invite {
                request_id: RequestId(1),
                call_id: None,
                user_ids: vec![user(absent)],
                call_type: CallType::Audio,
                timeout_ms: None,
                user_data: None,
            },
        );
    }
    let mut told = Vec::new();
    while let Some(output) = switchboard.poll_output() {
        if let Output::Send {
            conn,
            message: ServerMessage::InviteeOffline { user_id, .. },
        } = output
        {
            told.push((conn, user_id));
        }
    }
    assert_eq!(told, [(new, user("dave"))]);
}
