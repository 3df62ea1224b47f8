//! One scenario per rule of the switchboard, and one that walks through
//! every event of the calling API.

use std::collections::BTreeSet;

use super::*;
use calling_api::{ErrorCode, UserVolume};
use signaling_proto::EngineStatus;

#[test]
#[allow(
    clippy::too_many_lines,
    reason = "a scripted scenario reads best as one story, top to bottom"
)]
fn every_event_of_the_api_in_one_story() {
    let mut sim = world(&["alice", "bob", "carol", "dave", "erin"]);
    let mut seen = BTreeSet::new();
    let mut note = |events: &[CallingEvent]| {
        for event in events {
            if let Some(name) = event.original_name() {
                seen.insert(name);
            }
        }
    };

    // onInvited, onUserEnter, onUserAudioAvailable
    let call = dial(&mut sim, "alice", "bob");
    let bob_events = events(&mut sim, "bob");
    note(&bob_events);
    assert_eq!(bob_events, [invited("alice", &[])]);
    sim.engine("bob").accept().unwrap();
    sim.settle();
    let (alice_events, bob_events) = (events(&mut sim, "alice"), events(&mut sim, "bob"));
    note(&alice_events);
    assert_eq!(alice_events, enter("bob"));
    assert_eq!(bob_events, enter("alice"));

    // onUserAudioAvailable from mute and unmute
    sim.engine("bob").set_mic_mute(true);
    sim.settle();
    sim.engine("bob").set_mic_mute(false);
    sim.settle();
    assert_eq!(
        events(&mut sim, "alice"),
        [
            CallingEvent::UserAudioAvailable {
                user_id: user("bob"),
                available: false
            },
            CallingEvent::UserAudioAvailable {
                user_id: user("bob"),
                available: true
            }
        ]
    );

    // onUserVoiceVolume: levels fed by the audio side, reported every 300 ms
    let (alice, bob) = (user("alice"), user("bob"));
    sim.engine("alice").record_voice_level(&alice, 40);
    sim.engine("alice").record_voice_level(&bob, 70);
    sim.engine("alice").record_voice_level(&user("carol"), 99); // not in the call: ignored
    sim.advance(Duration::from_millis(300));
    let reports: Vec<CallingEvent> = sim
        .take_events("alice")
        .into_iter()
        .filter(|event| matches!(event, CallingEvent::UserVoiceVolume { .. }))
        .collect();
    note(&reports);
    assert_eq!(
        reports.first(),
        Some(&CallingEvent::UserVoiceVolume {
            user_volumes: vec![
                UserVolume {
                    user_id: alice.clone(),
                    volume: 40
                },
                UserVolume {
                    user_id: bob.clone(),
                    volume: 70
                }
            ],
            total_volume: 70
        })
    );
    // The total is the remote participants' volume: alice's own voice,
    // however loud, is not in it.
    sim.engine("alice").record_voice_level(&alice, 90);
    sim.engine("alice").record_voice_level(&bob, 30);
    sim.advance(Duration::from_millis(300));
    let report = sim
        .take_events("alice")
        .into_iter()
        .find(|event| matches!(event, CallingEvent::UserVoiceVolume { .. }));
    assert_eq!(
        report,
        Some(CallingEvent::UserVoiceVolume {
            user_volumes: vec![
                UserVolume {
                    user_id: alice.clone(),
                    volume: 90
                },
                UserVolume {
                    user_id: bob.clone(),
                    volume: 30
                }
            ],
            total_volume: 30
        })
    );
    sim.take_events("bob");

    // onLineBusy: dave is in a call with erin; alice invites dave into hers
    connect(&mut sim, "dave", "erin");
    sim.engine("alice")
        .call("dave", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    let alice_events = events(&mut sim, "alice");
    note(&alice_events);
    assert_eq!(
        alice_events,
        [CallingEvent::LineBusy {
            user_id: user("dave")
        }]
    );
    assert_eq!(events(&mut sim, "dave"), []);

    // onReject: carol is invited into the running call and rejects
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "carol"), [invited("alice", &["bob"])]);
    sim.engine("carol").reject().unwrap();
    sim.settle();
    let alice_events = events(&mut sim, "alice");
    note(&alice_events);
    assert_eq!(
        alice_events,
        [CallingEvent::Reject {
            user_id: user("carol")
        }]
    );
    assert_eq!(events(&mut sim, "bob"), []);

    // onNoResp / onCallingTimeOut with a per-call timeout
    let short = CallOptions {
        timeout_ms: Some(5_000),
        user_data: None,
    };
    sim.engine("alice")
        .call("carol", CallType::Audio, short)
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "carol"), [invited("alice", &["bob"])]);
    sim.advance(5 * SECOND);
    let (alice_events, carol_events) = (events(&mut sim, "alice"), events(&mut sim, "carol"));
    note(&alice_events);
    note(&carol_events);
    assert_eq!(
        alice_events,
        [CallingEvent::NoResp {
            user_id: user("carol")
        }]
    );
    assert_eq!(carol_events, [CallingEvent::CallingTimeOut]);

    // onUserLeave, then onCallEnd for the one left alone and the one who hung up
    sim.engine("bob").hangup().unwrap();
    sim.settle();
    let (alice_events, bob_events) = (events(&mut sim, "alice"), events(&mut sim, "bob"));
    note(&alice_events);
    note(&bob_events);
    assert_eq!(
        alice_events,
        [
            CallingEvent::UserLeave {
                user_id: user("bob")
            },
            CallingEvent::CallEnd,
            CallingEvent::CallEnded {
                call_id: call,
                reason: EndReason::Hangup
            }
        ]
    );
    assert_eq!(bob_events, call_end(call, EndReason::Hangup));

    // onCallingCancel: alice calls carol and hangs up before she answers
    let call = dial(&mut sim, "alice", "carol");
    assert_eq!(events(&mut sim, "carol"), [invited("alice", &[])]);
    sim.engine("alice").hangup().unwrap();
    sim.settle();
    let carol_events = events(&mut sim, "carol");
    note(&carol_events);
    assert_eq!(carol_events, [CallingEvent::CallingCancel]);
    assert_eq!(
        events(&mut sim, "alice"),
        call_end(call, EndReason::Cancelled)
    );

    // onError: alice logs in on a second device and the first is kicked
    sim.add_logged_in("alice-laptop", "alice");
    let alice_events = events(&mut sim, "alice");
    note(&alice_events);
    assert_eq!(
        alice_events,
        [
            CallingEvent::Error {
                code: ErrorCode::KICKED_OFFLINE,
                msg: ErrorCode::KICKED_OFFLINE.message().into()
            },
            CallingEvent::KickedOffline
        ]
    );

    let every_event = [
        "onError",
        "onReject",
        "onNoResp",
        "onLineBusy",
        "onInvited",
        "onCallingCancel",
        "onCallingTimeOut",
        "onUserEnter",
        "onUserLeave",
        "onUserAudioAvailable",
        "onUserVoiceVolume",
        "onCallEnd",
    ];
    assert_eq!(seen, every_event.into_iter().collect::<BTreeSet<_>>());
    assert_consistent(&sim);
}

#[test]
fn invitation_times_out_after_30_seconds_by_default() {
    let mut sim = world(&["alice", "bob"]);
    let call = dial(&mut sim, "alice", "bob");
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    sim.advance(Duration::from_millis(29_900));
    assert_eq!(events(&mut sim, "bob"), []);
    assert_eq!(events(&mut sim, "alice"), []);
    sim.advance(Duration::from_millis(200));
    assert_eq!(events(&mut sim, "bob"), [CallingEvent::CallingTimeOut]);
    let mut expected = vec![CallingEvent::NoResp {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::NoResponse));
    assert_eq!(events(&mut sim, "alice"), expected);
    assert_eq!(sim.switchboard().call_count(), 0);
}

#[test]
fn the_server_default_timeout_is_configurable() {
    let config = SwitchboardConfig {
        default_invite_timeout: 2 * SECOND,
        ..SwitchboardConfig::default()
    };
    let mut sim = Simulation::new(Instant::now(), config, NetworkConfig::default());
    sim.add_logged_in("alice", "alice");
    sim.add_logged_in("bob", "bob");
    dial(&mut sim, "alice", "bob");
    sim.advance(2 * SECOND);
    assert_eq!(
        events(&mut sim, "bob"),
        [invited("alice", &[]), CallingEvent::CallingTimeOut]
    );
}

#[test]
fn a_ringing_user_is_busy_for_a_second_caller() {
    let mut sim = world(&["alice", "bob", "carol"]);
    dial(&mut sim, "alice", "bob");
    let call = dial(&mut sim, "carol", "bob");
    let mut expected = vec![CallingEvent::LineBusy {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::LineBusy));
    assert_eq!(events(&mut sim, "carol"), expected);
    // Bob still rings for alice, and can answer her.
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    sim.engine("bob").accept().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), enter("bob"));
    assert_consistent(&sim);
}

#[test]
fn a_busy_users_own_call_is_untouched() {
    let mut sim = world(&["alice", "bob", "carol"]);
    let call = connect(&mut sim, "alice", "bob");
    dial(&mut sim, "carol", "alice");
    assert_eq!(events(&mut sim, "alice"), []);
    assert_eq!(events(&mut sim, "bob"), []);
    assert_eq!(
        sim.engine("alice").status(),
        EngineStatus::InCall {
            call_id: call,
            members: [user("bob")].into()
        }
    );
}

#[test]
fn reject_ends_the_callers_call_when_nobody_is_left() {
    let mut sim = world(&["alice", "bob"]);
    let call = dial(&mut sim, "alice", "bob");
    events(&mut sim, "bob");
    sim.engine("bob").reject().unwrap();
    sim.settle();
    let mut expected = vec![CallingEvent::Reject {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::Rejected));
    assert_eq!(events(&mut sim, "alice"), expected);
    assert_eq!(
        events(&mut sim, "bob"),
        [],
        "the invitee never entered: no onCallEnd"
    );
    assert_eq!(sim.engine("alice").status(), EngineStatus::Idle);
}

#[test]
fn reject_by_one_of_two_invitees_keeps_the_call_ringing() {
    let mut sim = world(&["alice", "bob", "carol"]);
    dial(&mut sim, "alice", "bob");
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    assert_eq!(events(&mut sim, "carol"), [invited("alice", &["bob"])]);
    sim.engine("bob").reject().unwrap();
    sim.settle();
    assert_eq!(
        events(&mut sim, "alice"),
        [CallingEvent::Reject {
            user_id: user("bob")
        }]
    );
    sim.engine("carol").accept().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), enter("carol"));
    assert_eq!(events(&mut sim, "carol"), enter("alice"));
}

#[test]
fn cancel_reaches_every_pending_invitee() {
    let mut sim = world(&["alice", "bob", "carol"]);
    let call = dial(&mut sim, "alice", "bob");
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    events(&mut sim, "bob");
    events(&mut sim, "carol");
    sim.engine("alice").hangup().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "bob"), [CallingEvent::CallingCancel]);
    assert_eq!(events(&mut sim, "carol"), [CallingEvent::CallingCancel]);
    assert_eq!(
        events(&mut sim, "alice"),
        call_end(call, EndReason::Cancelled)
    );
    assert_eq!(sim.switchboard().call_count(), 0);
    // Everyone is free again.
    connect(&mut sim, "bob", "carol");
}

#[test]
fn inviting_during_a_call_makes_it_multi_party() {
    let mut sim = world(&["alice", "bob", "carol"]);
    connect(&mut sim, "alice", "bob");
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "carol"), [invited("alice", &["bob"])]);
    sim.engine("carol").accept().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), enter("carol"));
    assert_eq!(events(&mut sim, "bob"), enter("carol"));
    let carol_events = events(&mut sim, "carol");
    assert_eq!(carol_events.len(), 4);
    for other in ["alice", "bob"] {
        for event in enter(other) {
            assert!(
                carol_events.contains(&event),
                "{event:?} missing from {carol_events:?}"
            );
        }
    }
}

#[test]
fn a_member_other_than_the_sponsor_can_invite_too() {
    let mut sim = world(&["alice", "bob", "carol"]);
    connect(&mut sim, "alice", "bob");
    sim.engine("bob")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "carol"), [invited("bob", &["alice"])]);
    sim.engine("carol").reject().unwrap();
    sim.settle();
    assert_eq!(
        events(&mut sim, "bob"),
        [CallingEvent::Reject {
            user_id: user("carol")
        }]
    );
    assert_eq!(
        events(&mut sim, "alice"),
        [],
        "answers go to whoever invited"
    );
}

#[test]
fn a_third_member_leaving_leaves_the_other_two_talking() {
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
    sim.engine("carol").hangup().unwrap();
    sim.settle();
    assert_eq!(
        events(&mut sim, "alice"),
        [CallingEvent::UserLeave {
            user_id: user("carol")
        }]
    );
    assert_eq!(
        events(&mut sim, "bob"),
        [CallingEvent::UserLeave {
            user_id: user("carol")
        }]
    );
    assert_eq!(events(&mut sim, "carol"), call_end(call, EndReason::Hangup));
    assert_eq!(
        sim.engine("bob").status(),
        EngineStatus::InCall {
            call_id: call,
            members: [user("alice")].into()
        }
    );
    // When the sponsor leaves too, the last one is alone: the call ends.
    sim.engine("alice").hangup().unwrap();
    sim.settle();
    let mut expected = vec![CallingEvent::UserLeave {
        user_id: user("alice"),
    }];
    expected.extend(call_end(call, EndReason::Hangup));
    assert_eq!(events(&mut sim, "bob"), expected);
    assert_eq!(sim.switchboard().call_count(), 0);
}

#[test]
fn call_end_reaches_every_participant_exactly_once() {
    let mut sim = world(&["alice", "bob", "carol", "dave"]);
    let call = connect(&mut sim, "alice", "bob");
    for invitee in ["carol", "dave"] {
        sim.engine("alice")
            .call(invitee, CallType::Audio, CallOptions::default())
            .unwrap();
        sim.settle();
        sim.engine(invitee).accept().unwrap();
        sim.settle();
    }
    for leaver in ["bob", "alice", "dave"] {
        sim.engine(leaver).hangup().unwrap();
        sim.settle();
    }
    for label in ["alice", "bob", "carol", "dave"] {
        let ends: Vec<&CallingEvent> = sim
            .log()
            .iter()
            .filter(|logged| logged.client == label)
            .map(|logged| &logged.event)
            .filter(|event| matches!(event, CallingEvent::CallEnd))
            .collect();
        assert_eq!(ends.len(), 1, "{label} got {} onCallEnd", ends.len());
        let reasons: Vec<&CallingEvent> = sim
            .log()
            .iter()
            .filter(|logged| logged.client == label)
            .map(|logged| &logged.event)
            .filter(|event| matches!(event, CallingEvent::CallEnded { call_id, .. } if *call_id == call))
            .collect();
        assert_eq!(reasons.len(), 1, "{label}: {reasons:?}");
    }
    assert_eq!(sim.switchboard().call_count(), 0);
}

#[test]
fn glare_ends_in_one_connected_call() {
    let mut sim = world(&["alice", "bob"]);
    // Both dial before either hears of the other.
    sim.engine("alice")
        .call("bob", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.engine("bob")
        .call("alice", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    let alice_call = only_call_id(sim.take_completions("alice"));
    let bob_call = only_call_id(sim.take_completions("bob"));
    assert_eq!(alice_call, bob_call, "one call, not two");
    assert_eq!(events(&mut sim, "alice"), enter("bob"));
    assert_eq!(events(&mut sim, "bob"), enter("alice"));
    for label in ["alice", "bob"] {
        assert!(
            matches!(sim.engine(label).status(), EngineStatus::InCall { call_id, .. } if call_id == alice_call)
        );
    }
    assert_eq!(sim.switchboard().call_count(), 1);
    assert_consistent(&sim);
    // And it behaves as any call: one hangs up, both get onCallEnd once.
    sim.engine("bob").hangup().unwrap();
    sim.settle();
    assert_eq!(
        events(&mut sim, "bob"),
        call_end(alice_call, EndReason::Hangup)
    );
    let mut expected = vec![CallingEvent::UserLeave {
        user_id: user("bob"),
    }];
    expected.extend(call_end(alice_call, EndReason::Hangup));
    assert_eq!(events(&mut sim, "alice"), expected);
}

#[test]
fn glare_with_jittery_latency_still_ends_in_one_call() {
    for seed in 0..50 {
        let network = NetworkConfig {
            latency: Duration::from_millis(5),
            jitter: Duration::from_millis(40),
            seed,
        };
        let mut sim = Simulation::new(Instant::now(), SwitchboardConfig::default(), network);
        sim.add_logged_in("alice", "alice");
        sim.add_logged_in("bob", "bob");
        sim.engine("alice")
            .call("bob", CallType::Audio, CallOptions::default())
            .unwrap();
        sim.advance(Duration::from_micros(seed * 300));
        // Bob may already be ringing: then call() is refused and he accepts.
        if sim
            .engine("bob")
            .call("alice", CallType::Audio, CallOptions::default())
            .is_err()
        {
            sim.engine("bob").accept().unwrap();
        }
        sim.settle();
        assert_eq!(sim.switchboard().call_count(), 1, "seed {seed}");
        for (label, other) in [("alice", "bob"), ("bob", "alice")] {
            let status = sim.engine(label).status();
            assert!(
                matches!(&status, EngineStatus::InCall { members, .. } if members.contains(&user(other))),
                "seed {seed}: {label} is {status:?}"
            );
        }
        assert_consistent(&sim);
    }
}

#[test]
fn second_login_kicks_the_first_and_ends_its_call() {
    let mut sim = world(&["alice", "bob"]);
    let call = connect(&mut sim, "alice", "bob");
    sim.add_logged_in("alice-laptop", "alice");
    let mut expected = call_end(call, EndReason::Kicked).to_vec();
    expected.push(CallingEvent::Error {
        code: ErrorCode::KICKED_OFFLINE,
        msg: ErrorCode::KICKED_OFFLINE.message().into(),
    });
    expected.push(CallingEvent::KickedOffline);
    assert_eq!(events(&mut sim, "alice"), expected);
    assert!(!sim.is_connected("alice"));
    assert_eq!(sim.engine("alice").status(), EngineStatus::LoggedOut);
    let mut expected = vec![CallingEvent::UserLeave {
        user_id: user("alice"),
    }];
    expected.extend(call_end(call, EndReason::Hangup));
    assert_eq!(events(&mut sim, "bob"), expected);
    // The new device is the one reachable now.
    dial(&mut sim, "bob", "alice");
    assert_eq!(events(&mut sim, "alice-laptop"), [invited("bob", &[])]);
    assert_eq!(events(&mut sim, "alice"), []);
    assert_consistent(&sim);
}

#[test]
fn logout_ends_the_call_as_a_leave() {
    let mut sim = world(&["alice", "bob"]);
    let call = connect(&mut sim, "alice", "bob");
    sim.engine("alice").logout().unwrap();
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), call_end(call, EndReason::Hangup));
    assert!(!sim.is_connected("alice"));
    let mut expected = vec![CallingEvent::UserLeave {
        user_id: user("alice"),
    }];
    expected.extend(call_end(call, EndReason::Hangup));
    assert_eq!(events(&mut sim, "bob"), expected);
    assert_eq!(sim.switchboard().online_count(), 1);
    // Calling is impossible after logout.
    let error = sim
        .engine("alice")
        .call("bob", CallType::Audio, CallOptions::default())
        .unwrap_err();
    assert_eq!(error.code, ErrorCode::NOT_LOGGED_IN);
}

/// docs/protocol.md: a ringing invitation of a user who logs out counts as
/// no response, as for one who vanishes, not as a rejection.
#[test]
fn logging_out_while_ringing_is_no_response() {
    let mut sim = world(&["alice", "bob"]);
    let call = dial(&mut sim, "alice", "bob");
    assert_eq!(events(&mut sim, "bob"), [invited("alice", &[])]);
    sim.engine("bob").logout().unwrap();
    sim.settle();
    let mut expected = vec![CallingEvent::NoResp {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::NoResponse));
    assert_eq!(events(&mut sim, "alice"), expected);
    assert_eq!(sim.switchboard().call_count(), 0);
}

/// A version-2 session outlives its connection for the resume grace: its
/// peers hear it is reconnecting; once the grace is over it leaves, and
/// the call ends for everyone as a lost connection.
#[test]
fn a_lost_connection_ends_the_call_for_everyone_after_the_grace() {
    let mut sim = world(&["alice", "bob"]);
    let call = connect(&mut sim, "alice", "bob");
    let dropped_at = sim.now();
    sim.drop_connection("bob");
    sim.settle();
    let mut expected = vec![CallingEvent::Error {
        code: ErrorCode::CONNECTION_LOST,
        msg: ErrorCode::CONNECTION_LOST.message().into(),
    }];
    expected.extend(call_end(call, EndReason::ConnectionLost));
    assert_eq!(events(&mut sim, "bob"), expected);
    assert_eq!(
        events(&mut sim, "alice"),
        [CallingEvent::UserReconnecting {
            user_id: user("bob")
        }]
    );
    let grace_over = dropped_at + SwitchboardConfig::DEFAULT.resume_grace;
    sim.advance(grace_over - sim.now() - Duration::from_millis(1));
    assert_eq!(events(&mut sim, "alice"), []);
    assert_eq!(sim.switchboard().online_count(), 2, "bob's session waits");
    sim.advance(Duration::from_millis(1));
    sim.settle();
    let mut expected = vec![CallingEvent::UserLeave {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::ConnectionLost));
    assert_eq!(events(&mut sim, "alice"), expected);
    assert_eq!(sim.switchboard().online_count(), 1);
    assert_consistent(&sim);
}

/// An invitation keeps ringing a user whose connection broke, until the
/// grace is over: then it counts as no response.
#[test]
fn a_ringing_invitee_who_disconnects_counts_as_no_response_after_the_grace() {
    let mut sim = world(&["alice", "bob"]);
    let call = dial(&mut sim, "alice", "bob");
    sim.drop_connection("bob");
    sim.settle();
    assert_eq!(events(&mut sim, "alice"), []);
    sim.advance(SwitchboardConfig::DEFAULT.resume_grace);
    sim.settle();
    let mut expected = vec![CallingEvent::NoResp {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::NoResponse));
    assert_eq!(events(&mut sim, "alice"), expected);
}

/// Without a grace (a deployment that turns resume off) a lost connection
/// ends the session at once, as in protocol version 1.
#[test]
fn without_a_grace_a_lost_connection_ends_the_call_at_once() {
    let config = SwitchboardConfig {
        resume_grace: Duration::ZERO,
        ..SwitchboardConfig::DEFAULT
    };
    let mut sim = Simulation::new(Instant::now(), config, NetworkConfig::default());
    for name in ["alice", "bob"] {
        sim.add_logged_in(name, name);
    }
    let call = connect(&mut sim, "alice", "bob");
    sim.drop_connection("bob");
    sim.settle();
    let mut expected = vec![CallingEvent::UserLeave {
        user_id: user("bob"),
    }];
    expected.extend(call_end(call, EndReason::ConnectionLost));
    assert_eq!(events(&mut sim, "alice"), expected);
}

#[test]
fn server_shutdown_ends_calls_with_its_reason() {
    let mut sim = world(&["alice", "bob", "carol"]);
    let call = connect(&mut sim, "alice", "bob");
    sim.engine("alice")
        .call("carol", CallType::Audio, CallOptions::default())
        .unwrap();
    sim.settle();
    events(&mut sim, "carol");
    sim.shutdown_server();
    sim.settle();
    let shutdown_error = CallingEvent::Error {
        code: ErrorCode::SERVER_SHUTDOWN,
        msg: "the server is shutting down".into(),
    };
    for label in ["alice", "bob"] {
        let mut expected = call_end(call, EndReason::ServerShutdown).to_vec();
        expected.push(shutdown_error.clone());
        assert_eq!(events(&mut sim, label), expected, "{label}");
        assert!(!sim.is_connected(label));
    }
    assert_eq!(
        events(&mut sim, "carol"),
        [CallingEvent::CallingCancel, shutdown_error]
    );
    assert_eq!(sim.switchboard().online_count(), 0);
}

#[test]
fn invitation_carries_user_data_and_per_call_timeout() {
    let mut sim = world(&["alice", "bob"]);
    let options = CallOptions {
        timeout_ms: Some(1_500),
        user_data: Some("{\"room\":\"standup\"}".into()),
    };
    dial_with(&mut sim, "alice", "bob", options);
    match sim.engine("bob").status() {
        EngineStatus::Ringing(invitation) => {
            assert_eq!(
                invitation.user_data.as_deref(),
                Some("{\"room\":\"standup\"}")
            );
            assert_eq!(invitation.sponsor, user("alice"));
        }
        other => panic!("bob is {other:?}"),
    }
    sim.advance(1_500 * Duration::from_millis(1));
    assert_eq!(
        events(&mut sim, "bob"),
        [invited("alice", &[]), CallingEvent::CallingTimeOut]
    );
}

#[test]
fn voice_volume_reports_every_interval_while_in_a_call_only() {
    let mut sim = world(&["alice", "bob"]);
    sim.engine("alice")
        .set_voice_volume_interval(Duration::from_millis(100));
    connect(&mut sim, "alice", "bob");
    sim.take_events("alice");
    sim.advance(Duration::from_millis(1_000));
    let reports = sim
        .take_events("alice")
        .into_iter()
        .filter(|event| matches!(event, CallingEvent::UserVoiceVolume { .. }))
        .count();
    assert!(
        (9..=11).contains(&reports),
        "{reports} reports in 1 s at 100 ms"
    );
    sim.engine("alice").hangup().unwrap();
    sim.settle();
    sim.take_events("alice");
    sim.advance(Duration::from_millis(1_000));
    assert_eq!(sim.take_events("alice"), [], "no reports outside a call");
}
