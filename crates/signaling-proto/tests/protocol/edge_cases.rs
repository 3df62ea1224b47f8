//! The API used at the wrong moment, and the odd corners of the rules.

use super::*;
use calling_api::ErrorCode;
use signaling_proto::EngineStatus;

fn code_of<T: std::fmt::Debug>(result: calling_api::CallingResult<T>) -> ErrorCode {
    result.unwrap_err().code
}

#[test]
fn accept_after_the_timeout_is_refused() {
    let mut sim = world(&["alice", "bob"]);
    let options = CallOptions {
        timeout_ms: Some(1_000),
        user_data: None,
    };
    dial_with(&mut sim, "alice", "bob", options);
    sim.advance(2 * SECOND);
    assert_eq!(
        events(&mut sim, "bob"),
        [invited("alice", &[]), CallingEvent::CallingTimeOut]
    );
    assert_eq!(
        code_of(sim.engine("bob").accept()),
        ErrorCode::NO_INVITATION
    );
}

#[test]
fn accept_racing_the_timeout_fails_cleanly() {
    // Bob accepts 1 ms before the deadline; with 10 ms latency the server
    // sees it after: the server's clock decides.
    let mut sim = world(&["alice", "bob"]);
    let options = CallOptions {
        timeout_ms: Some(1_000),
        user_data: None,
    };
    let call = dial_with(&mut sim, "alice", "bob", options);
    events(&mut sim, "bob");
    sim.advance(Duration::from_millis(989));
    let request = sim.engine("bob").accept().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "bob"), [CallingEvent::CallingTimeOut]);
    let completions = sim.take_completions("bob");
    assert_eq!(completions.len(), 1);
    assert_eq!(completions[0].request, request);
    assert_eq!(
        completions[0].result.as_ref().unwrap_err().code,
        ErrorCode::NO_INVITATION
    );
    assert_eq!(sim.engine("bob").status(), EngineStatus::Idle);
    let mut expected = vec![CallingEvent::NoResp {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::NoResponse));
    assert_eq!(events(&mut sim, "alice"), expected);
    assert_consistent(&sim);
}

#[test]
fn hangup_twice_ends_once() {
    let mut sim = world(&["alice", "bob"]);
    let call = connect(&mut sim, "alice", "bob");
    sim.engine("alice").hangup().unwrap();
    assert_eq!(
        code_of(sim.engine("alice").hangup()),
        ErrorCode::NOT_IN_CALL
    );
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), call_end(call, EndReason::Hangup));
    assert_eq!(
        code_of(sim.engine("alice").hangup()),
        ErrorCode::NOT_IN_CALL
    );
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), []);
}

#[test]
fn hangup_before_the_server_answered_the_call_cancels_it() {
    let mut sim = world(&["alice", "bob"]);
    sim.engine("alice")
        .call("bob", CallType::Audio, CallOptions::default())
        .unwrap();
    assert_eq!(sim.engine("alice").status(), EngineStatus::Dialing);
    sim.engine("alice").hangup().unwrap();
    sim.settle();
    let call = match sim.take_completions("alice").first() {
        Some(Completion {
            result: Ok(Some(call)),
            ..
        }) => *call,
        other => panic!("{other:?}"),
    };
    assert_eq!(
        events(&mut sim, "alice"),
        call_end(call, EndReason::Cancelled)
    );
    assert_eq!(
        events(&mut sim, "bob"),
        [invited("alice", &[]), CallingEvent::CallingCancel]
    );
    assert_eq!(sim.switchboard().call_count(), 0);
}

#[test]
fn hangup_while_ringing_rejects() {
    let mut sim = world(&["alice", "bob"]);
    let call = dial(&mut sim, "alice", "bob");
    sim.engine("bob").hangup().unwrap();
    sim.settle();
    let mut expected = vec![CallingEvent::Reject {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::Rejected));
    assert_eq!(events(&mut sim, "alice"), expected);
}

#[test]
fn accept_or_reject_without_an_invitation() {
    let mut sim = world(&["alice", "bob"]);
    assert_eq!(
        code_of(sim.engine("alice").accept()),
        ErrorCode::NO_INVITATION
    );
    assert_eq!(
        code_of(sim.engine("alice").reject()),
        ErrorCode::NO_INVITATION
    );
    connect(&mut sim, "alice", "bob");
    assert_eq!(
        code_of(sim.engine("alice").accept()),
        ErrorCode::NO_INVITATION
    );
    assert_eq!(
        code_of(sim.engine("bob").reject()),
        ErrorCode::NO_INVITATION
    );
}

#[test]
fn the_server_refuses_accept_and_reject_without_an_invitation_too() {
    // A client that skips the engine's checks gets the same answer from the server.
    let mut sim = world(&["mallory"]);
    let forged = [
        ClientMessage::Accept {
            request_id: RequestId(900),
            call_id: CallId(1),
        },
        ClientMessage::Reject {
            request_id: RequestId(901),
            call_id: CallId(1),
        },
        ClientMessage::Hangup {
            request_id: RequestId(902),
        },
    ];
    for message in forged {
        sim.send_raw("mallory", frame_to_vec(&message).unwrap());
    }
    sim.settle();
    // The engine does not know these request ids: it ignores the replies.
    assert_eq!(sim.take_completions("mallory"), []);
    assert!(sim.is_connected("mallory"));
    assert_consistent(&sim);
}

#[test]
fn inviting_yourself_is_refused() {
    let mut sim = world(&["alice"]);
    assert_eq!(
        code_of(
            sim.engine("alice")
                .call("alice", CallType::Audio, CallOptions::default())
        ),
        ErrorCode::CANNOT_CALL_SELF
    );
    // And by the server, for clients that skip the check.
    sim.send_raw(
        "alice",
        frame_to_vec(&ClientMessage::Invite {
            request_id: RequestId(77),
            call_id: None,
            user_ids: vec![user("alice")],
            call_type: CallType::Audio,
            timeout_ms: None,
            user_data: None,
        })
        .unwrap(),
    );
    sim.settle();
    assert_eq!(sim.switchboard().call_count(), 0);
}

#[test]
fn invalid_user_ids_never_leave_the_client() {
    let mut sim = world(&["alice"]);
    for bad in ["", "bob smith", "bob@example", &"x".repeat(33)] {
        assert_eq!(
            code_of(
                sim.engine("alice")
                    .call(bad, CallType::Audio, CallOptions::default())
            ),
            ErrorCode::INVALID_USER_ID,
            "{bad:?}"
        );
    }
    assert_eq!(sim.engine("alice").poll_transmit(), None);
}

#[test]
fn inviting_someone_already_in_your_call_is_refused() {
    let mut sim = world(&["alice", "bob", "carol"]);
    connect(&mut sim, "alice", "bob");
    assert_eq!(
        code_of(
            sim.engine("alice")
                .call("bob", CallType::Audio, CallOptions::default())
        ),
        ErrorCode::ALREADY_IN_CALL
    );
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(
        code_of(
            sim.engine("alice")
                .call("carol", CallType::Audio, CallOptions::default())
        ),
        ErrorCode::ALREADY_IN_CALL,
        "a pending invitee counts as in the call"
    );
    // Bob, who did not invite carol, is refused by the server.
    sim.take_completions("bob");
    sim.engine("bob")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    let completions = sim.take_completions("bob");
    assert_eq!(
        completions[0].result.as_ref().unwrap_err().code,
        ErrorCode::ALREADY_IN_CALL
    );
    // Nobody's state moved.
    assert_eq!(events(&mut sim, "carol"), [invited("alice", &["bob"])]);
    assert_consistent(&sim);
}

#[test]
fn calling_while_ringing_is_refused() {
    let mut sim = world(&["alice", "bob", "carol"]);
    dial(&mut sim, "alice", "bob");
    assert_eq!(
        code_of(
            sim.engine("bob")
                .call("carol", CallType::Audio, CallOptions::default())
        ),
        ErrorCode::WRONG_CALL_STATE
    );
}

#[test]
fn a_call_type_mismatch_inside_a_call_is_refused() {
    let mut sim = world(&["alice", "bob", "carol"]);
    connect(&mut sim, "alice", "bob");
    sim.engine("alice")
        .call("carol", CallType::Video, CallOptions::default())
        .unwrap();
    sim.settle();
    let completions = sim.take_completions("alice");
    assert_eq!(
        completions[0].result.as_ref().unwrap_err().code,
        ErrorCode::CALL_TYPE_MISMATCH
    );
    assert_eq!(events(&mut sim, "carol"), []);
    // The failed invite does not block inviting carol properly.
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "carol"), [invited("alice", &["bob"])]);
}

#[test]
fn nothing_works_before_login() {
    let mut sim = world(&[]);
    sim.add_client("ghost");
    let engine = sim.engine("ghost");
    assert_eq!(
        code_of(engine.call("bob", CallType::Audio, CallOptions::default())),
        ErrorCode::NOT_LOGGED_IN
    );
    assert_eq!(code_of(engine.accept()), ErrorCode::NOT_LOGGED_IN);
    assert_eq!(code_of(engine.reject()), ErrorCode::NOT_LOGGED_IN);
    assert_eq!(code_of(engine.hangup()), ErrorCode::NOT_LOGGED_IN);
    assert_eq!(code_of(engine.logout()), ErrorCode::NOT_LOGGED_IN);
    assert_eq!(engine.poll_transmit(), None);
}

#[test]
fn login_twice_and_bad_logins() {
    let mut sim = world(&["alice"]);
    assert_eq!(
        code_of(
            sim.engine("alice")
                .login(Simulation::SDK_APP_ID, "alice", "x")
        ),
        ErrorCode::ALREADY_LOGGED_IN
    );
    sim.add_client("eve");
    sim.engine("eve")
        .login(Simulation::SDK_APP_ID, "alice", "forged")
        .unwrap();
    sim.settle();
    let completions = sim.take_completions("eve");
    assert_eq!(
        completions[0].result.as_ref().unwrap_err().code,
        ErrorCode::USERSIG_BAD_SIGNATURE
    );
    assert!(!sim.is_connected("eve"));
    assert_eq!(sim.engine("eve").status(), EngineStatus::LoggedOut);
    // A failed login kicks nobody.
    assert!(sim.is_connected("alice"));
    assert_eq!(events(&mut sim, "alice"), []);
    assert_eq!(events(&mut sim, "eve"), []);
}

#[test]
fn a_client_of_another_protocol_version_is_told_so() {
    let mut sim = world(&[]);
    sim.add_client("future");
    let login = ClientMessage::Login {
        protocol_version: PROTOCOL_VERSION + 1,
        sdk_app_id: Simulation::SDK_APP_ID,
        user_id: user("future"),
        user_sig: Simulation::user_sig("future").into(),
        device_id: None,
        media_encryption: signaling_proto::MediaEncryption::None,
    };
    sim.send_raw("future", frame_to_vec(&login).unwrap());
    sim.settle();
    assert!(!sim.is_connected("future"));
    assert_eq!(sim.switchboard().online_count(), 0);
}

#[test]
fn kick_while_in_a_three_way_call() {
    let mut sim = world(&["alice", "bob", "carol"]);
    let call = connect(&mut sim, "alice", "bob");
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    sim.engine("carol").accept().unwrap();
    sim.settle();
    for label in ["alice", "bob", "carol"] {
        sim.take_events(label);
    }
    sim.add_logged_in("bob-2", "bob");
    let bob_events = events(&mut sim, "bob");
    assert_eq!(bob_events[..2], call_end(call, EndReason::Kicked));
    assert_eq!(bob_events.last(), Some(&CallingEvent::KickedOffline));
    for label in ["alice", "carol"] {
        assert_eq!(
            events(&mut sim, label),
            [CallingEvent::UserLeave {
                user_id: user("bob")
            }]
        );
    }
    // Bob's new device is free and can be invited back in.
    sim.engine("alice")
        .call("bob", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "bob-2"), [invited("alice", &["carol"])]);
    assert_consistent(&sim);
}

#[test]
fn kick_while_ringing_answers_the_inviter() {
    let mut sim = world(&["alice", "bob"]);
    dial(&mut sim, "alice", "bob");
    sim.add_logged_in("bob-2", "bob");
    assert_eq!(
        events(&mut sim, "alice")[0],
        CallingEvent::NoResp {
            user_id: user("bob")
        }
    );
    assert_eq!(sim.switchboard().call_count(), 0);
    assert_consistent(&sim);
}

#[test]
fn muted_before_the_call_is_announced_on_entry() {
    let mut sim = world(&["alice", "bob"]);
    sim.engine("bob").set_mic_mute(true);
    sim.settle();
    dial(&mut sim, "alice", "bob");
    sim.engine("bob").accept().unwrap();
    sim.settle();
    assert_eq!(
        events(&mut sim, "alice"),
        [
            CallingEvent::UserEnter {
                user_id: user("bob")
            },
            CallingEvent::UserAudioAvailable {
                user_id: user("bob"),
                available: false
            }
        ]
    );
}

#[test]
fn oversized_and_zero_options_are_refused_locally() {
    let mut sim = world(&["alice"]);
    let big = CallOptions {
        timeout_ms: None,
        user_data: Some("x".repeat(4097)),
    };
    assert_eq!(
        code_of(sim.engine("alice").call("bob", CallType::Audio, big)),
        ErrorCode::INVALID_PARAMETER
    );
    let zero = CallOptions {
        timeout_ms: Some(0),
        user_data: None,
    };
    assert_eq!(
        code_of(sim.engine("alice").call("bob", CallType::Audio, zero)),
        ErrorCode::INVALID_PARAMETER
    );
}

#[test]
fn hanging_up_in_the_middle_of_glare_leaves_nothing_ringing() {
    // Found by the property test: bob dials alice while her invitation to
    // him is in flight, then hangs up before either reply arrives. Her
    // invitation reaches him after his hangup, but the server has already
    // merged the calls: it must not ring.
    let network = NetworkConfig {
        latency: Duration::from_millis(5),
        jitter: Duration::ZERO,
        seed: 0,
    };
    let mut sim = Simulation::new(Instant::now(), SwitchboardConfig::default(), network);
    sim.add_logged_in("alice", "alice");
    sim.add_logged_in("bob", "bob");
    sim.engine("alice")
        .call("bob", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.advance(Duration::from_millis(3));
    sim.engine("bob")
        .call("alice", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.advance(Duration::from_millis(3));
    sim.engine("alice").hangup().unwrap();
    sim.engine("bob").hangup().unwrap();
    sim.settle();
    sim.advance(60 * SECOND);
    for label in ["alice", "bob"] {
        assert_eq!(sim.engine(label).status(), EngineStatus::Idle, "{label}");
        let events = events(&mut sim, label);
        assert!(
            !events
                .iter()
                .any(|event| matches!(event, CallingEvent::Invited { .. })),
            "{label}: {events:?}"
        );
        assert_eq!(
            events
                .iter()
                .filter(|event| **event == CallingEvent::CallEnd)
                .count(),
            1,
            "{label}: {events:?}"
        );
    }
    assert_eq!(sim.switchboard().call_count(), 0);
}

/// A world like `world`, with other rules.
fn world_with(config: SwitchboardConfig, users: &[&str]) -> Simulation {
    let mut sim = Simulation::new(Instant::now(), config, NetworkConfig::default());
    for user in users {
        sim.add_logged_in(user, user);
    }
    sim
}

/// The one completion of `label`'s last request.
fn last_result(sim: &mut Simulation, label: &str) -> calling_api::CallingResult<Option<CallId>> {
    let completions = sim.take_completions(label);
    assert_eq!(completions.len(), 1, "{completions:?}");
    completions.into_iter().next().unwrap().result
}

#[test]
fn invitations_a_minute_are_limited_per_session() {
    let config = SwitchboardConfig {
        invitations_per_minute: 3,
        ..SwitchboardConfig::default()
    };
    let mut sim = world_with(config, &["alice", "bob"]);
    for _ in 0..3 {
        dial(&mut sim, "alice", "bob");
        sim.engine("bob").reject().unwrap();
        sim.settle();
        sim.take_events("alice");
        sim.take_events("bob");
    }
    sim.engine("alice")
        .call("bob", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(
        last_result(&mut sim, "alice").unwrap_err().code,
        ErrorCode::RATE_LIMITED
    );
    assert_eq!(events(&mut sim, "bob"), [], "bob is not rung");
    // One invitation a 20 s later.
    sim.advance(Duration::from_secs(20));
    dial(&mut sim, "alice", "bob");
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
}

#[test]
fn ringing_invitations_are_limited_per_session() {
    let config = SwitchboardConfig {
        max_ringing_per_session: 2,
        ..SwitchboardConfig::default()
    };
    let mut sim = world_with(config, &["alice", "bob", "carol", "dave"]);
    let call = dial(&mut sim, "alice", "bob");
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(last_result(&mut sim, "alice"), Ok(Some(call)));
    sim.engine("alice")
        .call("dave", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(
        last_result(&mut sim, "alice").unwrap_err().code,
        ErrorCode::RATE_LIMITED
    );
    assert_eq!(events(&mut sim, "dave"), []);
    // Once bob answers, one rings less: dave can be invited.
    sim.engine("bob").accept().unwrap();
    sim.settle();
    sim.engine("alice")
        .call("dave", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(last_result(&mut sim, "alice"), Ok(Some(call)));
    assert!(matches!(
        events(&mut sim, "dave").as_slice(),
        [CallingEvent::Invited { .. }]
    ));
}

/// No caller can keep a callee busy for long: an invitation asking to ring
/// 10 minutes rings the server's maximum (120 s by default).
#[test]
fn a_long_invitation_is_cut_to_the_maximum() {
    let mut sim = world(&["alice", "bob"]);
    dial_with(
        &mut sim,
        "alice",
        "bob",
        CallOptions {
            timeout_ms: Some(600_000),
            ..CallOptions::default()
        },
    );
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    sim.advance(Duration::from_secs(119));
    assert_eq!(events(&mut sim, "bob"), []);
    sim.advance(Duration::from_secs(2));
    assert_eq!(events(&mut sim, "bob"), [CallingEvent::CallingTimeOut]);
}
