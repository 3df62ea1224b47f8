//! The network benchmark (`cargo xtask bench` runs it): how fast speech
//! comes back after outages of random length, and how long a login takes
//! over the fallback transport when UDP is blocked, beside a QUIC login
//! measured in the same run. A real server in this process, real SDK
//! users, a loopback fault proxy.
//!
//! Usage: `bench_network [OUTAGES] [SEED]` (20 outages, seed 1 by default).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use audio_device::Signal;
use calling_api::{CallType, CallingEvent};
use calling_facade::{
    AudioDevices, CaptureDevice, ClientOptions, CustomSink, Fallback, PlaybackDevice, TRTCCalling,
};
use calling_server::{AppCredentials, RunningServer};
use opencalling_tests::heard::{ClockSink, HeardClock};
use opencalling_tests::proxy::FaultProxy;
use opencalling_tests::server::{development_server, user_sig};
use signaling_proto::SplitMix64;

fn options(server: &RunningServer) -> ClientOptions {
    let mut options =
        ClientOptions::development(server.local_addr().to_string(), server.fingerprint());
    options.audio = AudioDevices::none();
    options
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * fraction).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn report(what: &str, samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let (p50, p95) = (percentile(samples, 0.5), percentile(samples, 0.95));
    println!(
        "  {what}: p50 {:.0} ms, p95 {:.0} ms, max {:.0} ms ({} samples)",
        ms(p50),
        ms(p95),
        ms(samples[samples.len() - 1]),
        samples.len()
    );
    (p50, p95)
}

async fn talker(
    server: &RunningServer,
    app: &AppCredentials,
    name: &str,
    address: String,
) -> (Arc<TRTCCalling>, Arc<HeardClock>) {
    let clock = Arc::new(HeardClock::default());
    let mut options = options(server);
    options.server = address;
    options.audio = AudioDevices {
        capture: CaptureDevice::Synthetic(Signal::Tone {
            frequency: 440.0,
            amplitude: 0.5,
        }),
        playback: PlaybackDevice::Custom(CustomSink(Arc::new(std::sync::Mutex::new(ClockSink(
            Arc::clone(&clock),
        ))))),
    };
    let calling = TRTCCalling::new(options);
    calling
        .login(app.sdk_app_id, name, &user_sig(app, name))
        .await
        .unwrap();
    (calling, clock)
}

async fn heard_after(clock: &HeardClock, since: Instant) -> Duration {
    clock
        .heard_within(since, Duration::from_secs(30))
        .await
        .expect("speech never came back")
}

/// Outages of random length between 0.5 and 8 s mid-call; after each, the
/// time until both sides hear each other again.
async fn outages(server: &RunningServer, app: &AppCredentials, count: usize, seed: u64) {
    let proxy = FaultProxy::start(server.local_addr()).await;
    let (alice, alice_hears) = talker(server, app, "alice", proxy.addr.to_string()).await;
    let (bob, bob_hears) = talker(server, app, "bob", server.local_addr().to_string()).await;
    let mut alice_events = alice.events();
    let mut bob_events = bob.events();
    alice.call("bob", CallType::Audio).await.unwrap();
    while !matches!(bob_events.recv().await, Some(CallingEvent::Invited { .. })) {}
    bob.accept().await.unwrap();
    heard_after(&bob_hears, Instant::now()).await;
    let mut rng = SplitMix64::new(seed);
    let mut back_after = Vec::new();
    let mut reconnects = 0;
    for _ in 0..count {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let outage = Duration::from_millis(500 + rng.below(7_500));
        proxy.blackhole(true);
        tokio::time::sleep(outage).await;
        proxy.blackhole(false);
        let back = Instant::now();
        let heard = heard_after(&bob_hears, back)
            .await
            .max(heard_after(&alice_hears, back).await);
        back_after.push(heard);
        while let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(1), alice_events.recv()).await
        {
            reconnects += usize::from(event == CallingEvent::Reconnected);
        }
    }
    drop(bob_events);
    println!(
        "speech heard again (both ways) after the network returns, {count} outages of 0.5-8 s ({reconnects} needed a new connection and a resume):"
    );
    let (_, p95) = report("time to audio", &mut back_after);
    println!(
        "  target p95 <= 500 ms: {}",
        if p95 <= Duration::from_millis(500) {
            "met"
        } else {
            "MISSED"
        }
    );
    alice.hangup().await.unwrap();
    alice.shutdown().await;
    bob.shutdown().await;
}

/// Logins over QUIC, and over the fallback with every UDP packet lost,
/// alternating so that both see the same machine.
async fn logins(server: &RunningServer, app: &AppCredentials, count: usize) {
    let blocked = FaultProxy::start(server.local_addr()).await;
    blocked.blackhole(true);
    let fallback_addr = server.fallback_addr().unwrap().to_string();
    let (mut quic, mut fallback) = (Vec::new(), Vec::new());
    for round in 0..count {
        for over_fallback in [false, true] {
            let mut options = options(server);
            if over_fallback {
                options.server = blocked.addr.to_string();
                options.fallback = Fallback::At(fallback_addr.clone());
            }
            let user = format!("login{round}");
            let calling = TRTCCalling::new(options);
            let started = Instant::now();
            calling
                .login(app.sdk_app_id, &user, &user_sig(app, &user))
                .await
                .unwrap();
            let took = started.elapsed();
            if over_fallback {
                fallback.push(took);
            } else {
                quic.push(took);
            }
            calling.shutdown().await;
        }
    }
    println!("login time, connect + handshake + login (new instance each):");
    let (quic_p50, _) = report("QUIC", &mut quic);
    let (fallback_p50, fallback_p95) = report(
        "fallback, UDP blocked (QUIC first, fallback after 300 ms)",
        &mut fallback,
    );
    println!(
        "  fallback p50 is {:.1}x QUIC's; target <= 1 s: {}",
        fallback_p50.as_secs_f64() / quic_p50.as_secs_f64(),
        if fallback_p95 <= Duration::from_secs(1) {
            "met"
        } else {
            "MISSED"
        }
    );
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let count = args.first().and_then(|n| n.parse().ok()).unwrap_or(20);
    let seed = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(1);
    let (server, data_dir) = development_server("bench-network").await;
    let app = server.development_app().unwrap().clone();
    logins(&server, &app, count).await;
    outages(&server, &app, count, seed).await;
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}
