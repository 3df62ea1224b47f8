//! A switchboard rebuilt from the sessions another one held
//! (`Switchboard::handle_restore`, a cluster's takeover), driven directly.

use std::collections::BTreeSet;

use calling_api::ErrorCode;
use signaling_proto::{
    CallEvent, ConnId, DeviceLogin, FlowId, Output, RestoredCall, RestoredSession, ServerMessage,
    Switchboard,
};

use super::*;

fn user(name: &str) -> UserId {
    UserId::new(name).unwrap()
}

fn session(conn: u64, name: &str, call: Option<(u64, u32, &[&str])>) -> RestoredSession {
    RestoredSession {
        conn: ConnId(conn),
        user: user(name),
        device_login: DeviceLogin::ONE_DEVICE,
        protocol_version: PROTOCOL_VERSION,
        muted: name == "bob",
        detached: name == "carol",
        call: call.map(|(call_id, flow, members)| RestoredCall {
            call_id: CallId(call_id),
            call_type: CallType::Audio,
            flow: FlowId(flow),
            members: members.iter().map(|member| user(member)).collect(),
        }),
    }
}

fn drain(switchboard: &mut Switchboard) -> Vec<Output> {
    std::iter::from_fn(|| switchboard.poll_output()).collect()
}

/// Call 7: alice, bob and dave, dave on the node that died. Call 9: carol
/// (detached) and erin, erin lost. frank is in no call.
fn restored(now: Instant) -> (Switchboard, Vec<Output>) {
    let mut switchboard = Switchboard::new(SwitchboardConfig::default());
    let everyone: &[&str] = &["alice", "bob", "dave"];
    switchboard.handle_restore(
        now,
        vec![
            session(1, "alice", Some((7, 11, everyone))),
            session(2, "bob", Some((7, 12, everyone))),
            session(3, "carol", Some((9, 21, &["carol", "erin"]))),
            session(4, "frank", None),
        ],
    );
    let outputs = drain(&mut switchboard);
    (switchboard, outputs)
}

#[test]
fn calls_come_back_with_their_members_and_lose_the_lost_ones() {
    let (switchboard, outputs) = restored(Instant::now());
    // Call 7 goes on with alice and bob, who hear dave left.
    let membership = outputs.iter().find_map(|output| match output {
        Output::Membership { call_id, members } if *call_id == CallId(7) => Some(members),
        _ => None,
    });
    let members: Vec<(UserId, FlowId)> = membership
        .unwrap()
        .iter()
        .map(|member| (member.user.clone(), member.flow))
        .collect();
    assert_eq!(
        members,
        [(user("alice"), FlowId(11)), (user("bob"), FlowId(12))]
    );
    for conn in [ConnId(1), ConnId(2)] {
        assert!(outputs.contains(&Output::Send {
            conn,
            message: ServerMessage::UserLeft {
                call_id: CallId(7),
                user_id: user("dave"),
            },
        }));
    }
    // Call 9 ends for carol, alone now, and is published empty.
    assert!(outputs.contains(&Output::Send {
        conn: ConnId(3),
        message: ServerMessage::CallEnded {
            call_id: CallId(9),
            reason: EndReason::ConnectionLost,
        },
    }));
    assert!(outputs.contains(&Output::Membership {
        call_id: CallId(9),
        members: Vec::new(),
    }));
    // The operator's side sees call 7 whole; nobody got a login answer.
    let events: Vec<&CallEvent> = outputs
        .iter()
        .filter_map(|output| match output {
            Output::Event(event) => Some(event),
            _ => None,
        })
        .collect();
    assert!(matches!(
        events[0],
        CallEvent::Started {
            call_id: CallId(7),
            ..
        }
    ));
    assert_eq!(events.len(), 3, "Started and two Joined: {events:?}");
    assert!(!outputs.iter().any(|output| matches!(
        output,
        Output::Send {
            message: ServerMessage::LoginResult { .. },
            ..
        }
    )));
    assert_eq!(switchboard.online_count(), 4);
    assert_eq!(switchboard.call_count(), 1);
    assert!(switchboard.is_detached(ConnId(3)));
    assert_eq!(switchboard.check_invariants(), Ok(()));
}

#[test]
fn a_rebuilt_call_works_as_any_and_new_flows_pass_the_restored_ones() {
    let now = Instant::now();
    let (mut switchboard, _) = restored(now);
    // bob hangs up: alice hears the end once.
    switchboard.handle_message(
        now,
        ConnId(2),
        ClientMessage::Hangup {
            request_id: RequestId(1),
        },
    );
    let outputs = drain(&mut switchboard);
    let ends: Vec<&Output> = outputs
        .iter()
        .filter(|output| {
            matches!(
                output,
                Output::Send {
                    conn: ConnId(1),
                    message: ServerMessage::CallEnded { .. },
                }
            )
        })
        .collect();
    assert_eq!(ends.len(), 1);
    // New calls take flows past the restored ones.
    switchboard.handle_message(
        now,
        ConnId(4),
        ClientMessage::Invite {
            request_id: RequestId(2),
            call_id: None,
            user_ids: vec![user("alice")],
            call_type: CallType::Audio,
            timeout_ms: None,
            user_data: None,
        },
    );
    switchboard.handle_message(
        now,
        ConnId(1),
        ClientMessage::Accept {
            request_id: RequestId(3),
            call_id: switchboard.joined_call_of(ConnId(4)).unwrap().0,
        },
    );
    let flows: BTreeSet<FlowId> = drain(&mut switchboard)
        .iter()
        .filter_map(|output| match output {
            Output::Membership { members, .. } => {
                Some(members.iter().map(|member| member.flow).collect::<Vec<_>>())
            }
            _ => None,
        })
        .flatten()
        .collect();
    assert!(flows.iter().all(|flow| flow.0 > 21), "{flows:?}");
}

#[test]
fn a_restored_user_already_online_here_is_kicked_as_by_a_login() {
    let now = Instant::now();
    let mut switchboard = Switchboard::new(SwitchboardConfig::default());
    switchboard.handle_login(now, ConnId(1), user("alice"), PROTOCOL_VERSION);
    drain(&mut switchboard);
    switchboard.handle_restore(now, vec![session(2, "alice", None)]);
    let outputs = drain(&mut switchboard);
    assert!(outputs.contains(&Output::Close {
        conn: ConnId(1),
        code: ErrorCode::KICKED_OFFLINE,
    }));
    assert_eq!(switchboard.sessions_of(&user("alice")), [ConnId(2)]);
}
