//! Scenario, edge-case and property tests of the call logic, run through the
//! in-memory simulation (virtual clock, real wire encoding, no sockets).

// A failed unwrap is a failed test here; printing is for tracing a replay.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod devices;
mod e2ee;
mod edge_cases;
mod hostile_input;
mod operator;
mod properties;
mod reconnect;
mod restore;
mod scenarios;

use std::time::{Duration, Instant};

use calling_api::{CallId, CallType, CallingEvent, EndReason, UserId};
use signaling_proto::engine::{CallOptions, Completion};
use signaling_proto::frame::frame_to_vec;
use signaling_proto::sim::{NetworkConfig, Simulation};
use signaling_proto::{ClientMessage, PROTOCOL_VERSION, RequestId, SwitchboardConfig};

/// A world with the default rules, 10 ms one-way latency and the named users
/// logged in, each on a device labelled by its user id.
fn world(users: &[&str]) -> Simulation {
    let mut sim = Simulation::new(
        Instant::now(),
        SwitchboardConfig::default(),
        NetworkConfig::default(),
    );
    for user in users {
        sim.add_logged_in(user, user);
    }
    sim
}

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap()
}

/// Events of `label` since the last look, without the periodic volume reports.
fn events(sim: &mut Simulation, label: &str) -> Vec<CallingEvent> {
    sim.take_events(label)
        .into_iter()
        .filter(|event| !matches!(event, CallingEvent::UserVoiceVolume { .. }))
        .collect()
}

fn enter(id: &str) -> [CallingEvent; 2] {
    [
        CallingEvent::UserEnter { user_id: user(id) },
        CallingEvent::UserAudioAvailable {
            user_id: user(id),
            available: true,
        },
    ]
}

fn call_end(call_id: CallId, reason: EndReason) -> [CallingEvent; 2] {
    [
        CallingEvent::CallEnd,
        CallingEvent::CallEnded { call_id, reason },
    ]
}

fn invited(sponsor: &str, others: &[&str]) -> CallingEvent {
    CallingEvent::Invited {
        sponsor: user(sponsor),
        user_ids: others.iter().map(|id| user(id)).collect(),
        is_from_group: !others.is_empty(),
        call_type: CallType::Audio,
    }
}

/// `from` calls `to` (audio, default options), the network settles; returns
/// the call id from the server's reply.
fn dial(sim: &mut Simulation, from: &str, to: &str) -> CallId {
    dial_with(sim, from, to, CallOptions::default())
}

fn dial_with(sim: &mut Simulation, from: &str, to: &str, options: CallOptions) -> CallId {
    sim.take_completions(from);
    sim.engine(from).call(to, CallType::Audio, options).unwrap();
    sim.settle();
    only_call_id(sim.take_completions(from))
}

fn only_call_id(completions: Vec<Completion>) -> CallId {
    match completions.as_slice() {
        [
            Completion {
                result: Ok(Some(call_id)),
                ..
            },
        ] => *call_id,
        other => panic!("expected one successful call reply, got {other:?}"),
    }
}

/// `from` calls `to`, `to` accepts; both event queues are checked and emptied.
fn connect(sim: &mut Simulation, from: &str, to: &str) -> CallId {
    let call_id = dial(sim, from, to);
    assert_eq!(events(sim, to), [invited(from, &[])]);
    sim.engine(to).accept().unwrap();
    sim.settle();
    assert_eq!(events(sim, from), enter(to));
    assert_eq!(events(sim, to), enter(from));
    call_id
}

fn assert_consistent(sim: &Simulation) {
    if let Err(broken) = sim.switchboard().check_invariants() {
        panic!("switchboard invariant broken: {broken}");
    }
}

const SECOND: Duration = Duration::from_secs(1);
