//! Network quality as both ends of a call see it: a member on a poor path
//! (the fault proxy: a tenth of the packets lost each way, 150 ms added to
//! the round trip) is rated poor or worse by itself and by the other
//! member within 3 s, and back once the path recovers; the statistics say
//! what the proxy does.

use std::time::{Duration, Instant};

use calling_api::{CallingEvent, NetworkQuality};
use calling_facade::{CallStats, CaptureDevice, Fallback, MediaTransport, PlaybackDevice, Signal};
use opencalling_tests::proxy::FaultProxy;

use crate::support::*;

/// A user with a tone for a microphone, through `address`.
async fn tone_user(server: &TestServer, name: &str, address: String, hz: f32) -> User {
    let tone = CaptureDevice::Synthetic(Signal::Tone {
        frequency: hz,
        amplitude: 0.4,
    });
    crate::audio::user_with_options(server, name, tone, PlaybackDevice::Null, |options| {
        options.server = address;
        options.fallback = Fallback::Off;
    })
    .await
}

/// Reads `user`'s events until a network quality report satisfies `done`
/// (local, and the one remote member's), within `limit`; how long it took.
async fn until_quality(
    user: &mut User,
    limit: Duration,
    done: impl Fn(NetworkQuality, NetworkQuality) -> bool,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut last = None;
    let waited = tokio::time::timeout(limit, async {
        loop {
            let Some(event) = user.events.recv().await else {
                return;
            };
            if let CallingEvent::NetworkQuality { local, remote } = event {
                let member = remote
                    .first()
                    .map_or(NetworkQuality::Unknown, |m| m.quality);
                last = Some((local, member));
                if done(local, member) {
                    return;
                }
            }
        }
    })
    .await;
    match waited {
        Ok(()) => Ok(started.elapsed()),
        Err(_) => Err(format!("{}: last report {last:?}", user.id)),
    }
}

fn poor_or_worse(quality: NetworkQuality) -> bool {
    matches!(
        quality,
        NetworkQuality::Poor | NetworkQuality::Bad | NetworkQuality::VeryBad
    )
}

fn fine(quality: NetworkQuality) -> bool {
    matches!(quality, NetworkQuality::Excellent | NetworkQuality::Good)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poor_path_shows_on_both_sides_within_3_s_and_recovers() {
    let server = TestServer::start("network-quality").await;
    let proxy = FaultProxy::start(server.server.local_addr()).await;
    let mut alice = tone_user(&server, "alice", proxy.addr.to_string(), 440.0).await;
    let mut bob = tone_user(
        &server,
        "bob",
        server.server.local_addr().to_string(),
        880.0,
    )
    .await;
    connect(&mut alice, &mut bob).await;

    // A clean path first: both rate alice's network fine.
    let settle = Duration::from_secs(10);
    until_quality(&mut alice, settle, |local, _| fine(local))
        .await
        .unwrap();
    until_quality(&mut bob, settle, |_, alice| fine(alice))
        .await
        .unwrap();
    let clean = alice.calling.call_stats().await.unwrap();
    let clean_rtt = clean.local.rtt_ms.expect("QUIC measures the round trip");
    assert_eq!(clean.local.transport, Some(MediaTransport::Quic));

    let added_rtt = Duration::from_millis(150);
    proxy.degrade(0.1, added_rtt / 2);
    let within = Duration::from_secs(3);
    let alice_saw = until_quality(&mut alice, within, |local, _| poor_or_worse(local)).await;
    let bob_saw = until_quality(&mut bob, within, |_, alice| poor_or_worse(alice)).await;
    alice_saw.unwrap();
    bob_saw.unwrap();

    // The figures, averaged over a few seconds of the fault, are within
    // 20 % of what the proxy does.
    let mut samples = Vec::new();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let at_alice = alice.calling.call_stats().await.unwrap();
        let at_bob = bob.calling.call_stats().await.unwrap();
        samples.push((at_alice, at_bob));
    }
    // Each figure: what it is, how it is read from (alice's, bob's)
    // statistics, what it was on the clean path, and what the proxy adds.
    type Figure = fn(&(CallStats, CallStats)) -> f64;
    let clean_rtt = f64::from(clean_rtt);
    let figures: [(&str, Figure, f64, f64); 5] = [
        (
            "round trip, at alice",
            |(alice, _)| f64::from(alice.local.rtt_ms.unwrap()),
            clean_rtt,
            150.0,
        ),
        (
            "alice's round trip, at bob (the server's)",
            |(_, bob)| f64::from(bob.remote[0].rtt_ms.unwrap()),
            clean_rtt,
            150.0,
        ),
        (
            "alice's uplink loss, at bob (the server's count)",
            |(_, bob)| f64::from(bob.remote[0].uplink_loss_percent.unwrap()),
            0.0,
            10.0,
        ),
        (
            "what alice loses of bob",
            |(alice, _)| f64::from(alice.remote[0].loss_received_percent.unwrap()),
            0.0,
            10.0,
        ),
        (
            "what bob loses of alice",
            |(_, bob)| f64::from(bob.remote[0].loss_received_percent.unwrap()),
            0.0,
            10.0,
        ),
    ];
    for (what, read, clean, added) in figures {
        let mean = samples.iter().map(read).sum::<f64>() / samples.len() as f64;
        let measured = mean - clean;
        assert!(
            (measured - added).abs() <= 0.2 * added,
            "{what}: {measured:.1} added, {added:.1} by the proxy"
        );
    }
    // Bob's own path is clean: alice's loss is not his.
    let (_, last_at_bob) = samples.last().unwrap();
    assert!(fine(last_at_bob.local.quality), "{:?}", last_at_bob.local);
    assert!(last_at_bob.remote[0].bitrate_kbps.unwrap() > 10.0);
    assert_eq!(last_at_bob.remote[0].transport, Some(MediaTransport::Quic));

    proxy.degrade(0.0, Duration::ZERO);
    let recover = Duration::from_secs(6);
    until_quality(&mut alice, recover, |local, _| fine(local))
        .await
        .unwrap();
    until_quality(&mut bob, recover, |_, alice| fine(alice))
        .await
        .unwrap();

    // After the call, its statistics stay, the other member named.
    alice.calling.hangup().await.unwrap();
    alice.expect_end(calling_api::EndReason::Hangup).await;
    let after = alice.calling.call_stats().await.unwrap();
    assert_eq!(after.remote.len(), 1, "{after:?}");
    assert_eq!(after.remote[0].user_id, uid("bob"));
}

/// Members on two nodes of a cluster rate each other's network: the word
/// crosses the node trunk with the first node's measurements in it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_on_two_cluster_nodes_see_each_others_network() {
    let world = World::three_nodes("quality-cluster").await;
    let mut alice = world.user("alice").await;
    let mut bob = world.user("bob").await;
    connect(&mut alice, &mut bob).await;
    let settle = Duration::from_secs(10);
    for user in [&mut alice, &mut bob] {
        until_quality(user, settle, |local, other| fine(local) && fine(other))
            .await
            .unwrap();
    }
    let at_bob = bob.calling.call_stats().await.unwrap();
    let alice_seen = &at_bob.remote[0];
    assert_eq!(alice_seen.user_id, uid("alice"));
    assert!(
        alice_seen.rtt_ms.is_some(),
        "alice's node stamped her round trip"
    );
    assert_eq!(alice_seen.transport, Some(MediaTransport::Quic));
}
