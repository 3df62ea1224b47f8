//! Random sequences of client actions and clock jumps: the switchboard never
//! panics, its invariants hold after every step, no user stays busy in a
//! call that ended, and every participant's call ends exactly once; with
//! one device per user and with two (each user's second device acting too).

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use signaling_proto::EngineStatus;

const USERS: [&str; 4] = ["u0", "u1", "u2", "u3"];

#[derive(Debug, Clone)]
enum Action {
    Call {
        from: usize,
        to: usize,
        video: bool,
        timeout_ms: Option<u32>,
    },
    Accept(usize),
    Reject(usize),
    Hangup(usize),
    Mute(usize, bool),
    Advance(u64),
    DropConnection(usize),
    Logout(usize),
    /// Log the user's main device back in if it is out.
    Login(usize),
    /// Log the user in on its second device: kicks the main one, unless
    /// the app allows two.
    SecondDevice(usize),
    /// The user's second device does what the action says.
    OnSecond(SecondAction),
}

/// What a user's second device does.
#[derive(Debug, Clone, Copy)]
enum SecondAction {
    Call { from: usize, to: usize },
    Accept(usize),
    Reject(usize),
    Hangup(usize),
    DropConnection(usize),
    Logout(usize),
}

fn second_action() -> impl Strategy<Value = SecondAction> {
    let user = 0..USERS.len();
    prop_oneof![
        2 => (user.clone(), 0..USERS.len()).prop_map(|(from, to)| SecondAction::Call { from, to }),
        3 => user.clone().prop_map(SecondAction::Accept),
        1 => user.clone().prop_map(SecondAction::Reject),
        2 => user.clone().prop_map(SecondAction::Hangup),
        1 => user.clone().prop_map(SecondAction::DropConnection),
        1 => user.prop_map(SecondAction::Logout),
    ]
}

fn apply_second(sim: &mut Simulation, action: SecondAction) {
    let on = |user| device(user, true);
    match action {
        SecondAction::Call { from, to } => {
            let options = CallOptions::default();
            let _ = sim
                .engine(&on(from))
                .call(USERS[to], CallType::Audio, options);
        }
        SecondAction::Accept(user) => {
            let _ = sim.engine(&on(user)).accept();
        }
        SecondAction::Reject(user) => {
            let _ = sim.engine(&on(user)).reject();
        }
        SecondAction::Hangup(user) => {
            let _ = sim.engine(&on(user)).hangup();
        }
        SecondAction::DropConnection(user) => sim.drop_connection(&on(user)),
        SecondAction::Logout(user) => {
            let _ = sim.engine(&on(user)).logout();
        }
    }
}

fn action() -> impl Strategy<Value = Action> {
    let user = 0..USERS.len();
    prop_oneof![
        6 => (user.clone(), 0..USERS.len() + 1, any::<bool>(), prop::option::of(1u32..40_000))
            .prop_map(|(from, to, video, timeout_ms)| Action::Call { from, to, video, timeout_ms }),
        4 => user.clone().prop_map(Action::Accept),
        2 => user.clone().prop_map(Action::Reject),
        3 => user.clone().prop_map(Action::Hangup),
        1 => (user.clone(), any::<bool>()).prop_map(|(u, m)| Action::Mute(u, m)),
        3 => prop_oneof![0u64..50, 0u64..2_000, 0u64..45_000].prop_map(Action::Advance),
        1 => user.clone().prop_map(Action::DropConnection),
        1 => user.clone().prop_map(Action::Logout),
        2 => user.clone().prop_map(Action::Login),
        1 => user.prop_map(Action::SecondDevice),
        4 => second_action().prop_map(Action::OnSecond),
    ]
}

fn device(user: usize, second: bool) -> String {
    if second {
        format!("{}-b", USERS[user])
    } else {
        USERS[user].to_owned()
    }
}

fn apply(sim: &mut Simulation, action: &Action) {
    match *action {
        Action::Call {
            from,
            to,
            video,
            timeout_ms,
        } => {
            // `to == USERS.len()` names a user who never logs in.
            let target = USERS.get(to).copied().unwrap_or("offline");
            let call_type = if video {
                CallType::Video
            } else {
                CallType::Audio
            };
            let options = CallOptions {
                timeout_ms,
                user_data: None,
            };
            let _ = sim
                .engine(&device(from, false))
                .call(target, call_type, options);
        }
        Action::Accept(user) => {
            let _ = sim.engine(&device(user, false)).accept();
        }
        Action::Reject(user) => {
            let _ = sim.engine(&device(user, false)).reject();
        }
        Action::Hangup(user) => {
            let _ = sim.engine(&device(user, false)).hangup();
        }
        Action::Mute(user, muted) => sim.engine(&device(user, false)).set_mic_mute(muted),
        Action::Advance(ms) => sim.advance(Duration::from_millis(ms)),
        Action::DropConnection(user) => sim.drop_connection(&device(user, false)),
        Action::Logout(user) => {
            let _ = sim.engine(&device(user, false)).logout();
        }
        Action::Login(user) => {
            let label = device(user, false);
            let _ = sim.engine(&label).login(
                Simulation::SDK_APP_ID,
                USERS[user],
                &Simulation::user_sig(USERS[user]),
            );
        }
        Action::OnSecond(action) => apply_second(sim, action),
        Action::SecondDevice(user) => {
            let label = device(user, true);
            let _ = sim.engine(&label).login(
                Simulation::SDK_APP_ID,
                USERS[user],
                &Simulation::user_sig(USERS[user]),
            );
        }
    }
}

fn check_call_ends(sim: &Simulation) -> Result<(), TestCaseError> {
    let mut per_client: HashMap<&str, Vec<&CallingEvent>> = HashMap::new();
    for logged in sim.log() {
        if !matches!(logged.event, CallingEvent::UserVoiceVolume { .. }) {
            per_client
                .entry(&logged.client)
                .or_default()
                .push(&logged.event);
        }
    }
    for (client, events) in per_client {
        // onCallEnd and its reason always come as a pair.
        for (index, event) in events.iter().enumerate() {
            let next = events.get(index + 1);
            if matches!(event, CallingEvent::CallEnd) {
                prop_assert!(
                    matches!(next, Some(CallingEvent::CallEnded { .. })),
                    "{}: onCallEnd followed by {:?}",
                    client,
                    next
                );
            }
            if matches!(event, CallingEvent::CallEnded { .. }) {
                prop_assert!(
                    index > 0 && matches!(events[index - 1], CallingEvent::CallEnd),
                    "{}: CallEnded without onCallEnd",
                    client
                );
            }
        }
        // A call ends once per participation: the same call may end again
        // only after the client took part in it again (a user who left can
        // be invited back), never as a stutter of the same end.
        let mut last_end: Option<CallId> = None;
        for event in events {
            match event {
                CallingEvent::CallEnded { call_id, .. } => {
                    prop_assert_ne!(
                        last_end,
                        Some(*call_id),
                        "{} got the end of {} twice",
                        client,
                        call_id
                    );
                    last_end = Some(*call_id);
                }
                CallingEvent::CallEnd
                | CallingEvent::Error { .. }
                | CallingEvent::KickedOffline => {}
                _ => last_end = None,
            }
        }
    }
    Ok(())
}

/// Runs one random session, users allowed `max_devices` each, and checks
/// everything; `trace` prints it.
fn run_session(
    actions: &[Action],
    (seed, jitter_ms): (u64, u64),
    max_devices: usize,
    trace: bool,
) -> Result<(), TestCaseError> {
    let network = NetworkConfig {
        latency: Duration::from_millis(5),
        jitter: Duration::from_millis(jitter_ms),
        seed,
    };
    let mut sim = Simulation::new(Instant::now(), SwitchboardConfig::default(), network);
    sim.set_max_devices(max_devices);
    for (index, user) in USERS.iter().enumerate() {
        sim.add_logged_in(user, user);
        sim.add_client(&device(index, true));
    }
    let start = sim.log().len();
    for action in actions {
        apply(&mut sim, action);
        // Half the time the network settles between actions, half the
        // time actions race each other.
        if seed.is_multiple_of(2) {
            sim.settle();
        } else {
            sim.advance(Duration::from_millis(3));
        }
        if trace {
            println!("{:>10.3?} {action:?}", sim.elapsed());
        }
        if let Err(broken) = sim.switchboard().check_invariants() {
            return Err(TestCaseError::fail(format!("after {action:?}: {broken}")));
        }
    }
    // Everyone hangs up, every invitation expires: nothing may stay busy.
    for index in 0..USERS.len() {
        for second in [false, true] {
            let label = device(index, second);
            let _ = sim.engine(&label).hangup();
            let _ = sim.engine(&label).hangup();
        }
    }
    sim.advance(Duration::from_secs(700));
    if trace {
        for logged in &sim.log()[start..] {
            println!(
                "{:>10.3?} {:<5} {:?}",
                logged.at, logged.client, logged.event
            );
        }
    }
    prop_assert_eq!(sim.switchboard().check_invariants(), Ok(()));
    prop_assert_eq!(sim.switchboard().call_count(), 0);
    for index in 0..USERS.len() {
        for second in [false, true] {
            let label = device(index, second);
            let status = sim.engine(&label).status();
            prop_assert!(
                matches!(status, EngineStatus::Idle | EngineStatus::LoggedOut),
                "{} is still {:?}",
                label,
                status
            );
        }
    }
    check_call_ends(&sim)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_sessions_keep_every_invariant(
        actions in prop::collection::vec(action(), 1..60),
        seed in any::<u64>(),
        jitter_ms in 0u64..30,
    ) {
        run_session(&actions, (seed, jitter_ms), 1, false)?;
    }

    #[test]
    fn random_sessions_on_two_devices_keep_every_invariant(
        actions in prop::collection::vec(action(), 1..60),
        seed in any::<u64>(),
        jitter_ms in 0u64..30,
    ) {
        run_session(&actions, (seed, jitter_ms), 2, false)?;
    }
}

/// Minimal sequences the property test once found, kept as plain tests.
#[test]
fn regressions() {
    use Action::*;
    let call = |from, to| Call {
        from,
        to,
        video: false,
        timeout_ms: None,
    };
    let cases: Vec<(Vec<Action>, u64, u64)> = vec![
        // An accept refused locally must not drop the call the engine is in.
        (vec![call(1, 3), Accept(1), Accept(3), Accept(3)], 2, 0),
        // Glare raced by a hangup: the merged call's invitation must not ring.
        (vec![call(0, 2), call(2, 0)], 1, 0),
        // Two dials abandoned in a row: both ends owed, no stale ring.
        (
            vec![
                SecondDevice(1),
                call(1, 0),
                call(0, 2),
                call(2, 0),
                call(0, 0),
                call(0, 0),
                Hangup(2),
                call(2, 3),
            ],
            13_961_969_791_098_515_581,
            6,
        ),
        // An invite into a call that ended on the way must not land in the
        // call that rings meanwhile (the server refuses it: NOT_IN_CALL).
        (
            vec![
                Call {
                    from: 0,
                    to: 3,
                    video: true,
                    timeout_ms: None,
                },
                call(0, 0),
                call(0, 0),
                call(1, 3),
                Mute(0, false),
                call(0, 0),
                call(0, 0),
                Advance(27),
                call(1, 0),
                call(0, 1),
                DropConnection(3),
                call(0, 0),
                Login(0),
            ],
            6_498_527_438_027_080_963,
            6,
        ),
        // A user who hung up is invited back into the same call: it may end
        // for them twice, once per participation.
        (
            vec![
                Call {
                    from: 0,
                    to: 1,
                    video: true,
                    timeout_ms: None,
                },
                Accept(1),
                Call {
                    from: 0,
                    to: 2,
                    video: true,
                    timeout_ms: None,
                },
                Hangup(0),
                Accept(2),
                Call {
                    from: 1,
                    to: 0,
                    video: true,
                    timeout_ms: None,
                },
                Accept(0),
            ],
            3_635_446_117_932_182_634,
            0,
        ),
    ];
    for (actions, seed, jitter_ms) in cases {
        for max_devices in [1, 2] {
            if let Err(failure) = run_session(&actions, (seed, jitter_ms), max_devices, false) {
                panic!("{actions:?} (seed {seed}, {max_devices} devices): {failure}");
            }
        }
    }
}
