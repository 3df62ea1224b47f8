//! A user on several devices (an app that allows two): every device rings,
//! the first answer takes the call, a reject declines for all, a user in a
//! call on one device is busy on all, and one device's departure leaves the
//! others alone.

use super::*;
use calling_api::{DeviceId, ElsewhereAnswer, ErrorCode};
use signaling_proto::ServerMessage;

/// alice on one device; bob on "bob" (his phone) and "bob-laptop".
fn two_device_world(users: &[&str]) -> Simulation {
    let mut sim = Simulation::new(
        Instant::now(),
        SwitchboardConfig::default(),
        NetworkConfig::default(),
    );
    sim.set_max_devices(2);
    for user in users {
        sim.add_logged_in(user, user);
    }
    sim.add_logged_in("bob-laptop", "bob");
    assert_eq!(sim.switchboard().sessions_of(&user("bob")).len(), 2);
    sim
}

fn elsewhere(call_id: CallId, answer: ElsewhereAnswer) -> [CallingEvent; 2] {
    [
        CallingEvent::CallingCancel,
        CallingEvent::HandledElsewhere { call_id, answer },
    ]
}

/// What a replaced session hears: `onError` then the extension.
fn kicked() -> [CallingEvent; 2] {
    [
        CallingEvent::Error {
            code: ErrorCode::KICKED_OFFLINE,
            msg: ErrorCode::KICKED_OFFLINE.message().to_owned(),
        },
        CallingEvent::KickedOffline,
    ]
}

fn failed_with(completions: &[Completion], code: ErrorCode) -> bool {
    matches!(completions, [Completion { result: Err(error), .. }] if error.code == code)
}

#[test]
fn every_device_rings_and_the_first_answer_takes_the_call() {
    let mut sim = two_device_world(&["alice", "bob"]);
    let call_id = dial(&mut sim, "alice", "bob");
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    assert_eq!(events(&mut sim, "bob-laptop"), [invited("alice", &[])]);
    sim.engine("bob-laptop").accept().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), enter("bob"));
    assert_eq!(events(&mut sim, "bob-laptop"), enter("alice"));
    assert_eq!(
        events(&mut sim, "bob"),
        elsewhere(call_id, ElsewhereAnswer::Answered)
    );
    let members = sim.switchboard().members_of(call_id);
    let bob_conn = sim.switchboard().sessions_of(&user("bob"))[1];
    assert!(
        members
            .iter()
            .any(|member| member.user == user("bob") && member.conn == bob_conn),
        "the laptop's connection carries bob's audio: {members:?}"
    );
    // The record names the device that answered.
    let joined_on = sim.call_events().iter().find_map(|(_, event)| match event {
        signaling_proto::CallEvent::Joined {
            user: who, device, ..
        } if *who == user("bob") => device.clone(),
        _ => None,
    });
    assert_eq!(joined_on, DeviceId::new("bob-laptop").ok());
    assert_consistent(&sim);
}

#[test]
fn two_answers_in_the_same_instant_make_exactly_one_winner() {
    let mut sim = two_device_world(&["alice", "bob"]);
    let call_id = dial(&mut sim, "alice", "bob");
    sim.take_events("bob");
    sim.take_events("bob-laptop");
    sim.engine("bob").accept().unwrap();
    sim.engine("bob-laptop").accept().unwrap();
    sim.settle();
    let phone = sim.take_completions("bob");
    let laptop = sim.take_completions("bob-laptop");
    let winners = [&phone, &laptop]
        .iter()
        .filter(|completions| matches!(completions.as_slice(), [Completion { result: Ok(_), .. }]))
        .count();
    assert_eq!(winners, 1, "phone {phone:?}, laptop {laptop:?}");
    let (winner, loser, lost) = if phone.first().is_some_and(|c| c.result.is_ok()) {
        ("bob", "bob-laptop", laptop)
    } else {
        ("bob-laptop", "bob", phone)
    };
    assert!(failed_with(&lost, ErrorCode::NO_INVITATION), "{lost:?}");
    assert_eq!(events(&mut sim, winner), enter("alice"));
    assert_eq!(
        events(&mut sim, loser),
        elsewhere(call_id, ElsewhereAnswer::Answered)
    );
    assert_eq!(events(&mut sim, "alice"), enter("bob"), "bob enters once");
    assert_consistent(&sim);
}

#[test]
fn a_reject_on_one_device_declines_for_all() {
    let mut sim = two_device_world(&["alice", "bob"]);
    let call_id = dial(&mut sim, "alice", "bob");
    sim.take_events("bob");
    sim.take_events("bob-laptop");
    sim.engine("bob").reject().unwrap();
    sim.settle();
    let mut alice = events(&mut sim, "alice");
    assert_eq!(
        alice.remove(0),
        CallingEvent::Reject {
            user_id: user("bob")
        }
    );
    assert_eq!(alice, call_end(call_id, EndReason::Rejected));
    assert_eq!(
        events(&mut sim, "bob-laptop"),
        elsewhere(call_id, ElsewhereAnswer::Declined)
    );
    assert_eq!(sim.switchboard().call_count(), 0);
    assert_consistent(&sim);
}

#[test]
fn a_user_in_a_call_on_one_device_is_busy_on_all() {
    let mut sim = two_device_world(&["alice", "bob", "carol"]);
    let call_id = dial(&mut sim, "alice", "bob");
    sim.engine("bob").accept().unwrap();
    sim.settle();
    sim.take_events("bob-laptop");
    // carol is told busy, and the laptop does not ring.
    let carol_call = dial(&mut sim, "carol", "bob");
    assert_ne!(carol_call, call_id);
    let carol = events(&mut sim, "carol");
    assert_eq!(
        carol[0],
        CallingEvent::LineBusy {
            user_id: user("bob")
        }
    );
    assert_eq!(events(&mut sim, "bob-laptop"), []);
    // Nor can the laptop start a second call of bob's.
    sim.engine("bob-laptop")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    let refused = sim.take_completions("bob-laptop");
    assert!(
        failed_with(&refused, ErrorCode::WRONG_CALL_STATE),
        "{refused:?}"
    );
    assert_eq!(events(&mut sim, "carol"), [], "carol is not rung");
    // Once the call is over, the laptop rings again.
    sim.engine("alice").hangup().unwrap();
    sim.settle();
    dial(&mut sim, "carol", "bob");
    assert_eq!(events(&mut sim, "bob-laptop"), [invited("carol", &[])]);
    assert_consistent(&sim);
}

#[test]
fn one_device_logging_out_mid_ring_leaves_the_other_ringing() {
    let mut sim = two_device_world(&["alice", "bob"]);
    dial(&mut sim, "alice", "bob");
    sim.take_events("bob-laptop");
    sim.engine("bob").logout().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), [], "the invitation still rings");
    assert_eq!(sim.switchboard().sessions_of(&user("bob")).len(), 1);
    sim.engine("bob-laptop").accept().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), enter("bob"));
    assert_consistent(&sim);
}

#[test]
fn a_device_that_logs_in_while_the_others_ring_rings_too() {
    let mut sim = Simulation::new(
        Instant::now(),
        SwitchboardConfig::default(),
        NetworkConfig::default(),
    );
    sim.set_max_devices(2);
    sim.add_logged_in("alice", "alice");
    sim.add_logged_in("bob", "bob");
    dial(&mut sim, "alice", "bob");
    sim.advance(5 * SECOND);
    sim.add_logged_in("bob-laptop", "bob");
    let rung = events(&mut sim, "bob-laptop");
    assert!(
        matches!(rung.as_slice(), [CallingEvent::Invited { sponsor, .. }] if *sponsor == user("alice")),
        "{rung:?}"
    );
    // It rings for what is left: the invitation times out for both at once.
    sim.advance(25 * SECOND);
    assert_eq!(
        events(&mut sim, "bob-laptop"),
        [CallingEvent::CallingTimeOut]
    );
    assert_eq!(
        events(&mut sim, "bob"),
        [invited("alice", &[]), CallingEvent::CallingTimeOut]
    );
    assert_consistent(&sim);
}

#[test]
fn a_lost_connection_mid_call_ends_nothing_on_the_other_device() {
    let mut sim = two_device_world(&["alice", "bob"]);
    let call_id = dial(&mut sim, "alice", "bob");
    sim.engine("bob").accept().unwrap();
    sim.settle();
    for label in ["alice", "bob", "bob-laptop"] {
        sim.take_events(label);
    }
    sim.drop_connection("bob");
    // The phone's session outlives the grace no more than any session.
    sim.advance(SwitchboardConfig::default().resume_grace + SECOND);
    let alice = events(&mut sim, "alice");
    assert!(
        alice.contains(&CallingEvent::CallEnded {
            call_id,
            reason: EndReason::ConnectionLost
        }),
        "{alice:?}"
    );
    assert_eq!(
        events(&mut sim, "bob-laptop"),
        [],
        "the laptop heard nothing"
    );
    assert_eq!(sim.switchboard().sessions_of(&user("bob")).len(), 1);
    // And it can be called.
    dial(&mut sim, "alice", "bob");
    assert_eq!(events(&mut sim, "bob-laptop"), [invited("alice", &[])]);
    assert_consistent(&sim);
}

#[test]
fn glare_between_two_users_on_two_devices_each_makes_one_call() {
    let mut sim = two_device_world(&["alice", "bob"]);
    sim.add_logged_in("alice-laptop", "alice");
    // Both call each other at once, from different devices.
    sim.engine("alice-laptop")
        .call("bob", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.engine("bob")
        .call("alice", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(sim.switchboard().call_count(), 1, "the two calls merged");
    let summary = &sim.switchboard().call_summaries()[0];
    assert_eq!(summary.members, [user("alice"), user("bob")]);
    assert!(summary.invitees.is_empty());
    // One device of each is in it; the others are idle, not ringing.
    let in_call = ["alice", "alice-laptop", "bob", "bob-laptop"]
        .into_iter()
        .filter(|label| {
            matches!(
                sim.engine(label).status(),
                signaling_proto::EngineStatus::InCall { .. }
            )
        })
        .count();
    assert_eq!(in_call, 2);
    for label in ["alice", "alice-laptop", "bob", "bob-laptop"] {
        assert!(
            !matches!(
                sim.engine(label).status(),
                signaling_proto::EngineStatus::Ringing { .. }
            ),
            "{label} still rings"
        );
    }
    assert_consistent(&sim);
}

#[test]
fn a_login_beyond_the_limit_replaces_the_oldest_and_the_same_device_replaces_itself() {
    let mut sim = two_device_world(&["alice", "bob"]);
    let bob = user("bob");
    let before = sim.switchboard().sessions_of(&bob).to_vec();
    // The phone logs in again (an app restarted): it replaces its old self.
    sim.add_client("bob-phone-again");
    sim.add_logged_in("bob-tablet", "bob");
    let after = sim.switchboard().sessions_of(&bob).to_vec();
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before[1], "the oldest (the phone) was replaced");
    assert_eq!(events(&mut sim, "bob"), kicked());
    assert_eq!(events(&mut sim, "bob-laptop"), []);
    // A second login from the laptop's device id replaces the laptop, and
    // not the tablet.
    sim.engine("bob-phone-again")
        .set_device(DeviceId::new("bob-laptop").ok());
    sim.engine("bob-phone-again")
        .login(Simulation::SDK_APP_ID, "bob", &Simulation::user_sig("bob"))
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "bob-laptop"), kicked());
    assert_eq!(events(&mut sim, "bob-tablet"), []);
    assert_eq!(sim.switchboard().sessions_of(&bob).len(), 2);
    assert_consistent(&sim);
}

/// What bob's laptop (speaking `laptop_version`) is sent when bob answers
/// alice's invitation on his phone: accepts it, or rejects it.
fn told_to_the_laptop(laptop_version: u16, accept: bool) -> (CallId, Vec<ServerMessage>) {
    use signaling_proto::{ConnId, DeviceLogin, Output, Switchboard};
    let now = Instant::now();
    let mut switchboard = Switchboard::new(SwitchboardConfig::default());
    let two = |device: &str| DeviceLogin {
        device: DeviceId::new(device).ok(),
        max_devices: 2,
        media_encryption: signaling_proto::MediaEncryption::None,
    };
    let (alice, phone, laptop) = (ConnId(1), ConnId(2), ConnId(3));
    switchboard.handle_device_login(now, alice, user("alice"), PROTOCOL_VERSION, two("a"));
    switchboard.handle_device_login(now, phone, user("bob"), PROTOCOL_VERSION, two("phone"));
    switchboard.handle_device_login(now, laptop, user("bob"), laptop_version, two("laptop"));
    let invite = ClientMessage::Invite {
        request_id: RequestId(1),
        call_id: None,
        user_ids: vec![user("bob")],
        call_type: CallType::Audio,
        timeout_ms: None,
        user_data: None,
    };
    switchboard.handle_message(now, alice, invite);
    let call_id = switchboard.call_summaries()[0].call_id;
    std::iter::from_fn(|| switchboard.poll_output()).for_each(drop);
    let request_id = RequestId(1);
    let answer = if accept {
        ClientMessage::Accept {
            request_id,
            call_id,
        }
    } else {
        ClientMessage::Reject {
            request_id,
            call_id,
        }
    };
    switchboard.handle_message(now, phone, answer);
    let told = std::iter::from_fn(|| switchboard.poll_output())
        .filter_map(|output| match output {
            Output::Send { conn, message } if conn == laptop => Some(message),
            _ => None,
        })
        .collect();
    (call_id, told)
}

#[test]
fn an_older_client_hears_cancelled_where_a_newer_one_hears_why() {
    for accept in [true, false] {
        let (call_id, told) = told_to_the_laptop(4, accept);
        assert_eq!(told, [ServerMessage::Cancelled { call_id }]);
        let answer = if accept {
            ElsewhereAnswer::Answered
        } else {
            ElsewhereAnswer::Declined
        };
        let (call_id, told) = told_to_the_laptop(PROTOCOL_VERSION, accept);
        assert_eq!(told, [ServerMessage::HandledElsewhere { call_id, answer }]);
    }
}
