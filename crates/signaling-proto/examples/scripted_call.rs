//! A scripted call through the real call logic: one switchboard and five
//! users' call engines on a simulated network (virtual clock, 20 ms one-way
//! latency), printing every event each user sees. `cargo xtask demo` runs it.

#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use calling_api::{CallType, CallingEvent};
use signaling_proto::sim::{NetworkConfig, Simulation};
use signaling_proto::{CallOptions, SwitchboardConfig};

#[allow(
    clippy::too_many_lines,
    reason = "a scripted scenario reads best as one story, top to bottom"
)]
fn main() {
    let network = NetworkConfig {
        latency: Duration::from_millis(20),
        jitter: Duration::from_millis(5),
        seed: 7,
    };
    let mut sim = Simulation::new(Instant::now(), SwitchboardConfig::default(), network);
    let mut printed = 0;

    let mut step = |sim: &mut Simulation, what: &str, act: &dyn Fn(&mut Simulation)| {
        println!("\n[{:>9.3?}] -- {what}", sim.elapsed());
        act(sim);
        sim.settle();
        for logged in &sim.log()[printed..] {
            if !matches!(logged.event, CallingEvent::UserVoiceVolume { .. }) {
                println!(
                    "[{:>9.3?}]    {:<6} {}",
                    logged.at, logged.client, logged.event
                );
            }
        }
        printed = sim.log().len();
    };
    let audio = CallType::Audio;

    step(
        &mut sim,
        "alice, bob, carol, dave and erin log in",
        &|sim| {
            for user in ["alice", "bob", "carol", "dave", "erin"] {
                sim.add_logged_in(user, user);
            }
        },
    );
    step(&mut sim, "dave calls erin; erin accepts", &|sim| {
        report(
            sim.engine("dave")
                .call("erin", audio, CallOptions::default()),
        );
        sim.settle();
        report(sim.engine("erin").accept());
    });
    step(&mut sim, "alice calls bob", &|sim| {
        report(
            sim.engine("alice")
                .call("bob", audio, CallOptions::default()),
        );
    });
    step(&mut sim, "bob accepts", &|sim| {
        report(sim.engine("bob").accept())
    });
    step(&mut sim, "alice invites carol into the call", &|sim| {
        report(
            sim.engine("alice")
                .call("carol", audio, CallOptions::default()),
        );
    });
    step(&mut sim, "carol rejects", &|sim| {
        report(sim.engine("carol").reject())
    });
    step(
        &mut sim,
        "alice invites dave, who is busy with erin",
        &|sim| {
            report(
                sim.engine("alice")
                    .call("dave", audio, CallOptions::default()),
            );
        },
    );
    step(&mut sim, "bob mutes, then unmutes", &|sim| {
        sim.engine("bob").set_mic_mute(true);
        sim.settle();
        sim.engine("bob").set_mic_mute(false);
    });
    step(
        &mut sim,
        "alice invites carol again with a 3 s timeout; carol lets it ring",
        &|sim| {
            let options = CallOptions {
                timeout_ms: Some(3_000),
                user_data: Some("standup".into()),
            };
            report(sim.engine("alice").call("carol", audio, options));
            sim.advance(Duration::from_secs(4));
        },
    );
    step(
        &mut sim,
        "bob hangs up; alice is alone and the call ends",
        &|sim| {
            report(sim.engine("bob").hangup());
        },
    );
    step(
        &mut sim,
        "erin logs in on a second device: the first is kicked",
        &|sim| {
            sim.add_logged_in("erin-tablet", "erin");
        },
    );
    println!(
        "\n{} events in {:.3?} of simulated time; {} calls left on the server",
        sim.log().len(),
        sim.elapsed(),
        sim.switchboard().call_count()
    );
}

fn report<T: std::fmt::Debug>(result: calling_api::CallingResult<T>) {
    if let Err(error) = result {
        println!("             refused: {error}");
    }
}
