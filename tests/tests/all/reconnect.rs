//! Calls that survive real networks: outages of the client's path (a
//! loopback proxy that blackholes it), source-port changes, resumes the
//! server refuses, invitations during an outage. The SDK repairs the
//! connection by itself; the application sees only the extension events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use audio_device::Signal;
use calling_api::{CallType, CallingEvent, EndReason, ErrorCode};
use calling_facade::{AudioDevices, CaptureDevice, CustomSink, PlaybackDevice, TRTCCalling};
use signaling_proto::{ClientMessage, PROTOCOL_VERSION, ServerMessage, SessionToken};

use opencalling_tests::heard::{ClockSink, HeardClock};
use opencalling_tests::proxy::FaultProxy;

use crate::support::*;

/// A user talking (a tone) and listening through a [`HeardClock`], logged
/// in to `server` at `address` (the server's or a proxy's).
async fn talker(server: &TestServer, name: &str, address: String) -> (User, Arc<HeardClock>) {
    let clock = Arc::new(HeardClock::default());
    let mut options = server.options();
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
    let events = calling.events();
    calling
        .login(server.app.sdk_app_id, name, &server.sig(name))
        .await
        .unwrap();
    let user = User {
        id: uid(name),
        calling,
        events,
    };
    (user, clock)
}

/// The events until `quiet` passes without one (periodic reports aside).
async fn drain(user: &mut User, quiet: Duration) -> Vec<CallingEvent> {
    let mut events = Vec::new();
    let mut deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, user.events.recv()).await {
            Ok(Some(event)) if event.is_report() => {}
            Ok(Some(event)) => {
                events.push(event);
                deadline = tokio::time::Instant::now() + quiet;
            }
            Ok(None) | Err(_) => return events,
        }
    }
}

/// Waits until `clock` hears something after `since`; how long that took.
async fn heard_again(clock: &HeardClock, since: Instant, limit: Duration) -> Duration {
    clock
        .heard_within(since, limit)
        .await
        .unwrap_or_else(|| panic!("nothing heard within {limit:?}"))
}

/// How soon after the network returns speech must be heard again (the
/// issue's 500 ms, with the measured p95 in docs/benchmarks.md); this
/// test's bound leaves room for a loaded two-core CI machine.
const HEARD_AGAIN_WITHIN: Duration = Duration::from_millis(1_500);

/// Alice's path to the server goes dark for `outage` mid-call, then comes
/// back: the call goes on, neither side sees a spec event, the reconnect
/// events come once each (none for an outage QUIC rides out), and both
/// hear each other again promptly.
async fn survive_outage(tag: &str, outage: Duration) {
    let server = TestServer::start(tag).await;
    let proxy = FaultProxy::start(server.server.local_addr()).await;
    let (mut alice, alice_hears) = talker(&server, "alice", proxy.addr.to_string()).await;
    let (mut bob, bob_hears) = talker(&server, "bob", server.server.local_addr().to_string()).await;
    connect(&mut alice, &mut bob).await;
    heard_again(&bob_hears, Instant::now(), EVENT_WAIT).await;

    proxy.blackhole(true);
    tokio::time::sleep(outage).await;
    proxy.blackhole(false);
    let back = Instant::now();
    assert!(proxy.dropped() > 0, "{tag}: the outage lost packets");
    let quiet_from = back - outage / 2;
    assert!(
        bob_hears.silent_between(quiet_from, back) && alice_hears.silent_between(quiet_from, back),
        "{tag}: audio played on during the outage"
    );
    heard_again(&bob_hears, back, HEARD_AGAIN_WITHIN).await;
    heard_again(&alice_hears, back, HEARD_AGAIN_WITHIN).await;

    let alice_events = drain(&mut alice, Duration::from_millis(500)).await;
    let bob_events = drain(&mut bob, Duration::from_millis(500)).await;
    let dead_after = calling_facade::ReconnectPolicy::default().dead_after;
    if outage > dead_after + Duration::from_secs(1) {
        assert_eq!(
            alice_events,
            [CallingEvent::Reconnecting, CallingEvent::Reconnected],
            "{tag}"
        );
    } else if outage < dead_after {
        assert_eq!(alice_events, [], "{tag}: QUIC rides out a short outage");
    }
    // Bob hears of it only if the server noticed before the resume.
    let noticed = [
        CallingEvent::UserReconnecting {
            user_id: uid("alice"),
        },
        CallingEvent::UserReconnected {
            user_id: uid("alice"),
        },
    ];
    assert!(
        bob_events.is_empty() || bob_events == noticed,
        "{tag}: {bob_events:?}"
    );
    if outage > Duration::from_secs(8) {
        assert_eq!(bob_events, noticed, "{tag}: the server noticed the silence");
    }
    // Still one call: a hangup ends it for both.
    alice.calling.hangup().await.unwrap();
    alice.expect_end(EndReason::Hangup).await;
    bob.expect_leave_then_end("alice", EndReason::Hangup).await;
}

#[tokio::test]
async fn an_outage_of_1_s_is_ridden_out() {
    survive_outage("outage-1s", Duration::from_secs(1)).await;
}

#[tokio::test]
async fn an_outage_of_5_s_is_survived() {
    survive_outage("outage-5s", Duration::from_secs(5)).await;
}

#[tokio::test]
async fn an_outage_of_10_s_is_survived() {
    survive_outage("outage-10s", Duration::from_secs(10)).await;
}

#[tokio::test]
async fn an_outage_of_18_s_is_survived() {
    survive_outage("outage-18s", Duration::from_secs(18)).await;
}

fn config_with_grace(tag: &str, grace: Duration) -> calling_server::config::ServerConfig {
    let mut config = test_config(tag);
    config.switchboard.resume_grace = grace;
    config
}

/// Past the grace the session is gone: both sides see the call end once
/// as a lost connection, and the client logs in again by itself.
#[tokio::test]
async fn an_outage_longer_than_the_grace_ends_the_call_and_logs_in_again() {
    let grace = Duration::from_secs(2);
    let server = TestServer::start_with(config_with_grace("past-grace", grace)).await;
    let proxy = FaultProxy::start(server.server.local_addr()).await;
    let (mut alice, _) = talker(&server, "alice", proxy.addr.to_string()).await;
    let (mut bob, _) = talker(&server, "bob", server.server.local_addr().to_string()).await;
    connect(&mut alice, &mut bob).await;
    proxy.blackhole(true);
    // The server's silence timeout (5 s), then the grace.
    bob.expect(&[CallingEvent::UserReconnecting {
        user_id: uid("alice"),
    }])
    .await;
    bob.expect_leave_then_end("alice", EndReason::ConnectionLost)
        .await;
    proxy.blackhole(false);
    alice.expect(&[CallingEvent::Reconnecting]).await;
    alice.expect_end(EndReason::ConnectionLost).await;
    alice.expect(&[CallingEvent::Reconnected]).await;
    alice.expect_quiet(Duration::from_millis(300)).await;
    bob.expect_quiet(Duration::from_millis(300)).await;
    // Logged in again: bob can call alice.
    connect(&mut bob, &mut alice).await;
}

/// An invitation that reaches a reconnecting user rings after its resume;
/// one that times out meanwhile is reported once, after it.
#[tokio::test]
async fn invitations_during_an_outage_ring_after_the_resume() {
    let server = TestServer::start("invited-offline").await;
    let proxy = FaultProxy::start(server.server.local_addr()).await;
    let (mut bob, _) = talker(&server, "bob", proxy.addr.to_string()).await;
    let mut alice = server.user("alice").await;
    let mut carol = server.user("carol").await;

    proxy.blackhole(true);
    bob.expect(&[CallingEvent::Reconnecting]).await;
    // Carol's invitation times out while bob cannot hear it.
    let short = calling_facade::CallOptions {
        timeout_ms: Some(1_000),
        user_data: None,
    };
    carol
        .calling
        .call_with("bob", CallType::Audio, short)
        .await
        .unwrap();
    carol.expect_no_response("bob").await;
    // Alice's rings on.
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    proxy.blackhole(false);
    bob.expect(&[
        CallingEvent::Reconnected,
        invited("carol", &[]),
        CallingEvent::CallingTimeOut,
        invited("alice", &[]),
    ])
    .await;
    bob.calling.accept().await.unwrap();
    alice.expect(&enter("bob")).await;
    bob.expect(&enter("alice")).await;
}

/// The server sees the client come from a new port three times mid-call
/// (NAT rebinding: once with the old mapping still forwarding, twice with
/// it forgotten at once, as a home router does), and the application says
/// the network changed once: QUIC migrates, nobody sees an event, and
/// each change costs at most [`REBIND_GAP`] of packets either way and of
/// audio at either end. The server has four endpoints on its port: the
/// packets from each new address must reach the endpoint that has the
/// connection (a hash of the addresses would pick another three times in
/// four, which would reset it).
#[tokio::test]
async fn source_port_changes_and_network_changes_keep_the_call() {
    let mut config = test_config("rebinding");
    config.quic_endpoints = 4;
    let server = TestServer::start_with(config).await;
    let proxy = FaultProxy::start(server.server.local_addr()).await;
    let (mut alice, alice_hears) = talker(&server, "alice", proxy.addr.to_string()).await;
    let (mut bob, bob_hears) = talker(&server, "bob", server.server.local_addr().to_string()).await;
    connect(&mut alice, &mut bob).await;
    heard_again(&bob_hears, Instant::now(), EVENT_WAIT).await;
    for old_mapping_forgotten in [false, true, true] {
        tokio::time::sleep(Duration::from_millis(700)).await;
        if old_mapping_forgotten {
            proxy.rebind_forgetting_old();
        } else {
            proxy.change_source_port();
        }
        let changed = Instant::now();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (from, to) = (changed - REBIND_GAP, changed + Duration::from_millis(800));
        let gaps = [
            ("packets to alice", proxy.longest_gap(true, from, to)),
            ("packets from alice", proxy.longest_gap(false, from, to)),
            ("audio alice hears", alice_hears.longest_silence(from, to)),
            ("audio bob hears", bob_hears.longest_silence(from, to)),
        ];
        for (what, gap) in gaps {
            assert!(
                gap < REBIND_GAP,
                "{what}: {gap:?} without (old mapping forgotten: {old_mapping_forgotten})"
            );
        }
    }
    alice.calling.network_changed();
    let changed = Instant::now();
    heard_again(&bob_hears, changed, HEARD_AGAIN_WITHIN).await;
    heard_again(&alice_hears, changed, HEARD_AGAIN_WITHIN).await;
    assert_eq!(drain(&mut alice, Duration::from_millis(500)).await, []);
    assert_eq!(drain(&mut bob, Duration::from_millis(500)).await, []);
}

/// The most a NAT rebinding may interrupt a call (issue 27's target): QUIC
/// migrates on the first packet from the new address, one frame later.
/// Measured here 21–39 ms, with a busy loop on every core as well.
const REBIND_GAP: Duration = Duration::from_millis(100);

/// A raw version-2 client: logs in, returns the connection and its token.
async fn raw_v2_login(
    server: &TestServer,
    user: &str,
) -> (signaling_quic::ClientConnection, SessionToken) {
    let mut client = server.raw_client().await;
    client
        .send
        .send(&ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id: server.app.sdk_app_id,
            user_id: uid(user),
            user_sig: server.sig(user).into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    assert!(matches!(
        client.recv.recv().await.unwrap(),
        Some(ServerMessage::LoginResult { code, .. }) if code.is_ok()
    ));
    let Some(ServerMessage::Session { token, .. }) = client.recv.recv().await.unwrap() else {
        panic!("no session token");
    };
    (client, token)
}

/// What the server answers a resume of `user`'s session with `token`.
async fn resume_answer(
    server: &TestServer,
    user: &str,
    sig_of: &str,
    token: SessionToken,
) -> ServerMessage {
    let mut client = server.raw_client().await;
    client
        .send
        .send(&ClientMessage::Resume {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id: server.app.sdk_app_id,
            user_id: uid(user),
            user_sig: server.sig(sig_of).into(),
            token,
            received: 0,
        })
        .await
        .unwrap();
    client.recv.recv().await.unwrap().unwrap()
}

fn refused(answer: &ServerMessage) -> Option<ErrorCode> {
    match answer {
        ServerMessage::LoginResult { code, .. } if !code.is_ok() => Some(*code),
        _ => None,
    }
}

/// A token proves nothing without the user's UserSig, is void for other
/// users and after the grace, and a refused resume leaves the session as
/// it was.
#[tokio::test]
async fn a_stolen_or_expired_resume_token_is_refused() {
    let grace = Duration::from_secs(1);
    let server = TestServer::start_with(config_with_grace("tokens", grace)).await;
    let (alice, alice_token) = raw_v2_login(&server, "alice").await;
    let (_mallory, mallory_token) = raw_v2_login(&server, "mallory").await;
    // Mallory holds alice's token but only her own UserSig.
    let answer = resume_answer(&server, "alice", "mallory", alice_token).await;
    assert_eq!(refused(&answer), Some(ErrorCode::USERSIG_WRONG_USER));
    // Mallory's own token for alice's session.
    let answer = resume_answer(&server, "alice", "alice", mallory_token).await;
    assert_eq!(refused(&answer), Some(ErrorCode::SESSION_EXPIRED));
    assert_eq!(
        server.server.stats().await.unwrap().online,
        2,
        "alice untouched"
    );
    // Alice's network breaks; past the grace her token is void.
    drop(alice);
    tokio::time::sleep(signaling_quic::IDLE_TIMEOUT.min(Duration::from_secs(1))).await;
    let deadline = Instant::now() + EVENT_WAIT;
    while server.server.stats().await.unwrap().online > 1 {
        assert!(Instant::now() < deadline, "alice's session never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let answer = resume_answer(&server, "alice", "alice", alice_token).await;
    assert_eq!(refused(&answer), Some(ErrorCode::SESSION_EXPIRED));
}
