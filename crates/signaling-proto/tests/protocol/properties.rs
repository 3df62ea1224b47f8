//! Random sequences of client actions and clock jumps: the switchboard never
//! panics, its invariants hold after every step, no user stays busy in a
//! call that ended, and every participant's call ends exactly once.

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
    /// Log the user in on its second device: kicks the main one.
    SecondDevice(usize),
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
    let mut ends: HashMap<(&str, CallId), usize> = HashMap::new();
    let mut plain_ends: HashMap<&str, usize> = HashMap::new();
    for logged in sim.log() {
        match &logged.event {
            CallingEvent::CallEnded { call_id, .. } => {
                *ends.entry((&logged.client, *call_id)).or_default() += 1
            }
            CallingEvent::CallEnd => *plain_ends.entry(&logged.client).or_default() += 1,
            _ => {}
        }
    }
    for ((client, call), count) in &ends {
        prop_assert_eq!(*count, 1, "{} got {} ends of {}", client, count, call);
    }
    for (client, count) in plain_ends {
        let with_reason = ends.keys().filter(|(c, _)| *c == client).count();
        prop_assert_eq!(
            count,
            with_reason,
            "{}: onCallEnd without its reason",
            client
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn random_sessions_keep_every_invariant(
        actions in prop::collection::vec(action(), 1..60),
        seed in any::<u64>(),
        jitter_ms in 0u64..30,
    ) {
        let network = NetworkConfig { latency: Duration::from_millis(5), jitter: Duration::from_millis(jitter_ms), seed };
        let mut sim = Simulation::new(Instant::now(), SwitchboardConfig::default(), network);
        for (index, user) in USERS.iter().enumerate() {
            sim.add_logged_in(user, user);
            sim.add_client(&device(index, true));
        }
        for action in &actions {
            apply(&mut sim, action);
            // Half the time the network settles between actions, half the
            // time actions race each other.
            if seed % 2 == 0 {
                sim.settle();
            } else {
                sim.advance(Duration::from_millis(3));
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
        prop_assert_eq!(sim.switchboard().check_invariants(), Ok(()));
        prop_assert_eq!(sim.switchboard().call_count(), 0);
        for index in 0..USERS.len() {
            for second in [false, true] {
                let label = device(index, second);
                let status = sim.engine(&label).status();
                prop_assert!(
                    matches!(status, EngineStatus::Idle | EngineStatus::LoggedOut),
                    "{} is still {:?}", label, status
                );
            }
        }
        check_call_ends(&sim)?;
    }
}
