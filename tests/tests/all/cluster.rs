//! Three server nodes on loopback sharing a real Redis: users on different
//! nodes call each other through the cluster's control, and their audio
//! crosses the node links; only members hear a call.

use std::time::{Duration, Instant};

use bytes::Bytes;
use calling_server::config::{ClusterConfig, SecretKey};
use calling_server::{AppCredentials, ClusterStatus};
use opencalling_tests::redis::RedisServer;
use signaling_proto::{ClientMessage, FlowId, MediaHeader, RequestId, ServerMessage};
use signaling_quic::ClientConnection;

use crate::media::{datagram, raw_call, raw_login, until};
use crate::support::*;

/// Redis and `n` nodes, all of one app.
pub struct TestCluster {
    pub redis: RedisServer,
    pub nodes: Vec<TestServer>,
}

impl TestCluster {
    pub async fn start(tag: &str, n: usize) -> Self {
        let redis = RedisServer::start().unwrap();
        let app = AppCredentials {
            sdk_app_id: 1_400_000_001,
            secret_key: SecretKey::new("cluster-test-app-key"),
        };
        let mut nodes = Vec::new();
        for index in 0..n {
            let mut config = test_config(&format!("{tag}-{index}"));
            config.apps = vec![app.clone()];
            config.cluster = Some(ClusterConfig {
                redis_url: SecretKey::new(redis.url()),
                prefix: format!("test-{tag}-{}", std::process::id()),
                listen: "127.0.0.1:0".parse().unwrap(),
                advertise: "127.0.0.1:0".parse().unwrap(),
                key: SecretKey::new("cluster-test-key"),
            });
            nodes.push(TestServer::start_with(config).await);
        }
        let cluster = Self { redis, nodes };
        cluster.settle().await;
        cluster
    }

    /// Each node's cluster status.
    pub async fn statuses(&self) -> Vec<ClusterStatus> {
        let mut statuses = Vec::new();
        for node in &self.nodes {
            let stats = node.server.stats().await.unwrap();
            statuses.push(stats.cluster.unwrap());
        }
        statuses
    }

    /// Waits until every node follows one control and reaches it.
    pub async fn settle(&self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let statuses = self.statuses().await;
            let control = statuses[0].control;
            if control.is_some()
                && statuses
                    .iter()
                    .all(|status| status.ready && status.control == control)
            {
                return;
            }
            assert!(Instant::now() < deadline, "no settled cluster: {statuses:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The indexes of the node hosting the control and of the others.
    pub async fn roles(&self) -> (usize, Vec<usize>) {
        let statuses = self.statuses().await;
        let control = statuses
            .iter()
            .position(|status| status.hosting)
            .unwrap();
        let others = (0..self.nodes.len()).filter(|i| *i != control).collect();
        (control, others)
    }
}

async fn next_datagram(client: &ClientConnection) -> Option<Bytes> {
    tokio::time::timeout(Duration::from_secs(2), client.connection.read_datagram())
        .await
        .ok()?
        .ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_on_different_nodes_call_and_hear_each_other_and_only_members_do() {
    let cluster = TestCluster::start("cross-node", 3).await;
    let (control, others) = cluster.roles().await;
    // alice and bob each on a node that is not the control: every message
    // crosses two node links, every datagram one.
    let mut alice = raw_login(&cluster.nodes[others[0]], "alice").await;
    let mut bob = raw_login(&cluster.nodes[others[1]], "bob").await;
    let mut carol = raw_login(&cluster.nodes[control], "carol").await;
    let alice_flow = raw_call(&mut alice, &mut bob, "bob").await;

    // Busy across nodes: carol's invite to bob is answered busy.
    carol
        .send
        .send(&ClientMessage::Invite {
            request_id: RequestId(1),
            call_id: None,
            user_ids: vec![uid("bob")],
            call_type: calling_api::CallType::Audio,
            timeout_ms: None,
            user_data: None,
        })
        .await
        .unwrap();
    until(&mut carol, |message| {
        matches!(message, ServerMessage::LineBusy { user_id, .. } if user_id.as_str() == "bob")
    })
    .await;

    // alice's audio reaches bob on his node, stamped with her flow, even
    // when she claims another; carol, not a member, hears nothing.
    let mut heard = None;
    for sequence in 0..50 {
        alice
            .connection
            .send_datagram(datagram(999, sequence, b"voice").into())
            .unwrap();
        if let Some(received) = next_datagram(&bob).await {
            heard = Some(received);
            break;
        }
    }
    let heard = heard.expect("bob hears alice across nodes");
    let (header, payload) = MediaHeader::decode(&heard).unwrap();
    assert_eq!(header.flow_id, alice_flow);
    assert_eq!(payload, b"voice");
    assert_ne!(alice_flow, FlowId(999));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), carol.connection.read_datagram())
            .await
            .is_err(),
        "a non-member hears nothing"
    );
    let from_nodes = cluster.nodes[others[1]].server.relay_counts().from_nodes;
    assert!(from_nodes >= 1, "bob's node delivered what alice's node relayed");

    // bob hangs up: alice, on another node, hears the call end.
    bob.send
        .send(&ClientMessage::Hangup {
            request_id: RequestId(9),
        })
        .await
        .unwrap();
    until(&mut alice, |message| {
        matches!(message, ServerMessage::CallEnded { .. })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sdk_users_on_three_nodes_hold_a_three_way_call() {
    let cluster = TestCluster::start("three-way", 3).await;
    let mut alice = cluster.nodes[0].user("alice").await;
    let mut bob = cluster.nodes[1].user("bob").await;
    let mut carol = cluster.nodes[2].user("carol").await;
    connect(&mut alice, &mut bob).await;
    alice
        .calling
        .call("carol", calling_api::CallType::Audio)
        .await
        .unwrap();
    assert_eq!(carol.next().await, invited("alice", &["bob"]));
    carol.calling.accept().await.unwrap();
    alice.expect(&enter("carol")).await;
    bob.expect(&enter("carol")).await;
    carol.calling.hangup().await.unwrap();
    alice.expect(&[calling_api::CallingEvent::UserLeave { user_id: uid("carol") }]).await;
    bob.expect(&[calling_api::CallingEvent::UserLeave { user_id: uid("carol") }]).await;
    alice.calling.hangup().await.unwrap();
    bob.expect_leave_then_end("alice", calling_api::EndReason::Hangup)
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_login_on_another_node_kicks_the_first() {
    let cluster = TestCluster::start("kick", 2).await;
    let mut first = cluster.nodes[0].user("dave").await;
    let _second = cluster.nodes[1].user("dave").await;
    loop {
        if let calling_api::CallingEvent::KickedOffline = first.next().await {
            break;
        }
    }
    let stats = cluster.nodes[0].server.stats().await.unwrap();
    assert_eq!(stats.online, 0, "the first node forgot its session");
}
