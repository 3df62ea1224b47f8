//! A user on two devices through a real server, and through a cluster with
//! the devices on two nodes: both ring, one answers, the other stops
//! ringing within 500 ms, and the caller hears one answer.

use std::time::{Duration, Instant};

use calling_api::{CallType, CallingEvent, ElsewhereAnswer, EndReason};
use calling_server::{AdminReply, AdminRequest};

use crate::cluster::TestCluster;
use crate::support::*;

/// How soon the other device must stop ringing after an answer.
const STOPS_RINGING_WITHIN: Duration = Duration::from_millis(500);

/// bob answers alice on his second device; his first stops ringing in
/// time and hears why; alice hears him enter once.
async fn answer_on_the_second_device(alice: &mut User, phone: &mut User, laptop: &mut User) {
    alice.calling.call("bob", CallType::Audio).await.unwrap();
    phone.expect(&[invited("alice", &[])]).await;
    laptop.expect(&[invited("alice", &[])]).await;
    let answered = Instant::now();
    laptop.calling.accept().await.unwrap();
    assert_eq!(phone.next().await, CallingEvent::CallingCancel);
    let stopped_after = answered.elapsed();
    let call_id = match phone.next().await {
        CallingEvent::HandledElsewhere {
            call_id,
            answer: ElsewhereAnswer::Answered,
        } => call_id,
        other => panic!("expected HandledElsewhere, got {other:?}"),
    };
    assert!(
        stopped_after <= STOPS_RINGING_WITHIN,
        "the phone rang {stopped_after:?} after the laptop answered"
    );
    alice.expect(&enter("bob")).await;
    laptop.expect(&enter("alice")).await;
    alice.expect_quiet(Duration::from_millis(300)).await;
    phone.expect_quiet(Duration::from_millis(300)).await;
    // The phone is free, bob is not: carol would hear him busy; the call
    // goes on when the phone logs out.
    phone.calling.logout().await.unwrap();
    laptop.expect_quiet(Duration::from_millis(300)).await;
    laptop.calling.hangup().await.unwrap();
    // The call the phone was told about is the laptop's.
    let ended = [
        CallingEvent::CallEnd,
        CallingEvent::CallEnded {
            call_id,
            reason: EndReason::Hangup,
        },
    ];
    laptop.expect(&ended).await;
    alice.expect_leave_then_end("bob", EndReason::Hangup).await;
}

/// bob's devices as the server of record lists them.
async fn devices_of_bob(server: &TestServer) -> Vec<String> {
    let Some(AdminReply::Sessions(sessions)) = server.server.admin(AdminRequest::Sessions).await
    else {
        panic!("no session list");
    };
    sessions
        .into_iter()
        .filter(|session| session.user == uid("bob"))
        .filter_map(|session| session.device.map(|device| device.to_string()))
        .collect()
}

#[tokio::test]
async fn both_devices_ring_and_one_answer_stops_the_other() {
    let mut config = test_config("devices");
    config.max_devices_per_user = 2;
    let server = TestServer::start_with(config).await;
    let mut alice = server.user("alice").await;
    let mut phone = server.user("bob").await;
    let mut laptop = server.user("bob").await;
    let mut listed = devices_of_bob(&server).await;
    listed.sort();
    let mut expected = vec![
        phone.calling.device_id().to_string(),
        laptop.calling.device_id().to_string(),
    ];
    expected.sort();
    assert_eq!(listed, expected, "each SDK instance is its own device");
    phone.expect_quiet(Duration::from_millis(200)).await;
    answer_on_the_second_device(&mut alice, &mut phone, &mut laptop).await;
}

#[tokio::test]
async fn with_one_device_per_user_a_second_login_still_kicks_the_first() {
    let server = TestServer::start("one-device").await;
    let mut phone = server.user("bob").await;
    let _laptop = server.user("bob").await;
    let kicked = phone.next().await;
    assert!(
        matches!(kicked, CallingEvent::Error { code, .. } if code == calling_api::ErrorCode::KICKED_OFFLINE),
        "{kicked:?}"
    );
    assert_eq!(devices_of_bob(&server).await.len(), 1);
}

#[tokio::test]
async fn devices_on_two_cluster_nodes_ring_and_one_answer_wins() {
    let cluster = TestCluster::start_configured("devices-cluster", 3, |config| {
        // The app's own rule, not the server-wide default.
        for app in &config.apps {
            config.app_max_devices.insert(app.sdk_app_id, 2);
        }
    })
    .await;
    let (alice_node, phone_node, laptop_node) =
        (&cluster.nodes[0], &cluster.nodes[1], &cluster.nodes[2]);
    let mut alice = alice_node.user("alice").await;
    let mut phone = phone_node.user("bob").await;
    let mut laptop = laptop_node.user("bob").await;
    phone.expect_quiet(Duration::from_millis(200)).await;
    answer_on_the_second_device(&mut alice, &mut phone, &mut laptop).await;
}
