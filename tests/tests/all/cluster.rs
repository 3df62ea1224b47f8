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
        Self::start_configured(tag, n, |_| {}).await
    }

    /// [`TestCluster::start`] with each node's configuration changed by
    /// `configure` first.
    pub async fn start_configured(
        tag: &str,
        n: usize,
        configure: impl Fn(&mut calling_server::ServerConfig),
    ) -> Self {
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
            configure(&mut config);
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
            assert!(
                Instant::now() < deadline,
                "no settled cluster: {statuses:?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The indexes of the node hosting the control and of the others.
    pub async fn roles(&self) -> (usize, Vec<usize>) {
        let statuses = self.statuses().await;
        let control = statuses.iter().position(|status| status.hosting).unwrap();
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

/// `from` sends audio (claiming `claimed_flow`) until `to` hears some:
/// what `to` got, if anything within 50 tries.
async fn hears(
    from: &ClientConnection,
    to: &ClientConnection,
    claimed_flow: u32,
    payload: &[u8],
) -> Option<Bytes> {
    for sequence in 0..50 {
        from.connection
            .send_datagram(datagram(claimed_flow, sequence, payload).into())
            .unwrap();
        if let Some(received) = next_datagram(to).await {
            return Some(received);
        }
    }
    None
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
    let heard = hears(&alice, &bob, 999, b"voice")
        .await
        .expect("bob hears alice across nodes");
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
    assert!(
        from_nodes >= 1,
        "bob's node delivered what alice's node relayed"
    );

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

/// A group call with its speaker on one node and three listeners on
/// another: each datagram crosses between the nodes once, and the other
/// node hands a copy to each of its members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_calls_audio_crosses_to_another_node_once() {
    let cluster = TestCluster::start("fan-out", 2).await;
    let (speaker_node, listener_node) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice = raw_login(speaker_node, "alice").await;
    let names = ["bob", "carol", "dave"];
    let mut listeners = Vec::new();
    for name in names {
        listeners.push(raw_login(listener_node, name).await);
    }
    invite(&mut alice, 1, &names).await;
    for listener in &mut listeners {
        accept_invitation(listener, 2).await;
    }
    let mut entered = 0;
    while entered < names.len() {
        until(&mut alice, |message| {
            matches!(message, ServerMessage::UserEntered { .. })
        })
        .await;
        entered += 1;
    }
    let (sent_before, delivered_before) = (
        speaker_node.server.relay_counts().forwarded,
        listener_node.server.relay_counts().from_nodes,
    );
    let datagrams = 20;
    for sequence in 0..datagrams {
        alice
            .connection
            .send_datagram(datagram(1, sequence, b"all of you").into())
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut heard = Vec::new();
    for listener in &listeners {
        let mut count = 0;
        while let Some(received) = next_datagram(listener).await {
            let (_, payload) = MediaHeader::decode(&received).unwrap();
            assert_eq!(payload, b"all of you");
            count += 1;
            if count == datagrams {
                break;
            }
        }
        heard.push(count);
    }
    assert!(
        heard.iter().all(|count| *count > 0),
        "everyone hears: {heard:?}"
    );
    let sent = speaker_node.server.relay_counts().forwarded - sent_before;
    let delivered = listener_node.server.relay_counts().from_nodes - delivered_before;
    assert_eq!(
        sent,
        u64::from(datagrams),
        "once per datagram to the other node, not once per listener there"
    );
    let heard_total: u64 = heard.iter().map(|count| u64::from(*count)).sum();
    assert_eq!(delivered, heard_total, "each copy made there was heard");
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
    alice
        .expect(&[calling_api::CallingEvent::UserLeave {
            user_id: uid("carol"),
        }])
        .await;
    bob.expect(&[calling_api::CallingEvent::UserLeave {
        user_id: uid("carol"),
    }])
    .await;
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

/// A raw client logged in at a node, version 1 (no heartbeats owed),
/// retried while the node is not ready yet (`CLUSTER_UNAVAILABLE`).
async fn login_at(
    addr: std::net::SocketAddr,
    fingerprint: signaling_quic::CertFingerprint,
    app: &AppCredentials,
    user: &str,
) -> ClientConnection {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let trust = signaling_quic::ServerTrust::Fingerprint(fingerprint);
        if let Ok(mut client) = signaling_quic::connect(addr, "localhost", &trust).await {
            let sig = calling_server::usersig::generate(
                u64::from(app.sdk_app_id),
                app.secret_key.expose(),
                user,
                86_400,
                now(),
                None,
            );
            client
                .send
                .send(&ClientMessage::Login {
                    protocol_version: 1,
                    sdk_app_id: app.sdk_app_id,
                    user_id: uid(user),
                    user_sig: sig.into(),
                    device_id: None,
                    media_encryption: signaling_proto::MediaEncryption::None,
                })
                .await
                .unwrap();
            if let Ok(Some(ServerMessage::LoginResult { code, .. })) = client.recv.recv().await
                && code.is_ok()
            {
                return client;
            }
        }
        assert!(Instant::now() < deadline, "{user} cannot log in at {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn app() -> AppCredentials {
    AppCredentials {
        sdk_app_id: 1_400_000_001,
        secret_key: SecretKey::new("cluster-test-app-key"),
    }
}

/// A node in a child process (to be SIGKILLed): its client address and
/// certificate.
async fn child_node(
    redis: &RedisServer,
    tag: &str,
    certificate_like: Option<&std::path::Path>,
) -> (
    crate::child::ChildProcess,
    std::net::SocketAddr,
    signaling_quic::CertFingerprint,
) {
    let app = app();
    let data_dir = temp_dir(tag);
    if let Some(like) = certificate_like {
        std::fs::create_dir_all(&data_dir).unwrap();
        for file in ["cert.der", "key.der"] {
            std::fs::copy(like.join(file), data_dir.join(file)).unwrap();
        }
    }
    let child = crate::child::ChildProcess::spawn(
        "server",
        &[
            ("OPENCALLING_LISTEN", "127.0.0.1:0".into()),
            ("OPENCALLING_FALLBACK_LISTEN", "off".into()),
            (
                "OPENCALLING_DATA_DIR",
                data_dir.to_string_lossy().into_owned(),
            ),
            ("OPENCALLING_SDK_APP_ID", app.sdk_app_id.to_string()),
            ("OPENCALLING_SECRET_KEY", app.secret_key.expose().to_owned()),
            ("OPENCALLING_REDIS", redis.url()),
            (
                "OPENCALLING_REDIS_PREFIX",
                format!("test-{tag}-{}", std::process::id()),
            ),
            ("OPENCALLING_CLUSTER_LISTEN", "127.0.0.1:0".into()),
            ("OPENCALLING_CLUSTER_KEY", "cluster-test-key".into()),
        ],
    )
    .await;
    let addr = child.ready[0].parse().unwrap();
    let fingerprint = child.ready[1].parse().unwrap();
    (child, addr, fingerprint)
}

/// The configuration of node `index` of the cluster `tag` on `redis`.
fn node_config(
    redis: &RedisServer,
    tag: &str,
    index: usize,
) -> calling_server::config::ServerConfig {
    let mut config = test_config(&format!("{tag}-{index}"));
    config.apps = vec![app()];
    config.cluster = Some(ClusterConfig {
        redis_url: SecretKey::new(redis.url()),
        prefix: format!("test-{tag}-{}", std::process::id()),
        listen: "127.0.0.1:0".parse().unwrap(),
        advertise: "127.0.0.1:0".parse().unwrap(),
        key: SecretKey::new("cluster-test-key"),
    });
    config
}

/// An in-process node of the cluster `tag` on `redis`.
async fn node(redis: &RedisServer, tag: &str, index: usize) -> TestServer {
    TestServer::start_with(node_config(redis, tag, index)).await
}

async fn status(server: &TestServer) -> ClusterStatus {
    server.server.stats().await.unwrap().cluster.unwrap()
}

/// Waits until `node`'s cluster status satisfies `wanted` (10 s at most).
async fn wait_for_status(node: &TestServer, wanted: impl Fn(&ClusterStatus) -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !wanted(&status(node).await) {
        assert!(Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn invite(client: &mut ClientConnection, request: u32, users: &[&str]) {
    client
        .send
        .send(&ClientMessage::Invite {
            request_id: RequestId(request),
            call_id: None,
            user_ids: users.iter().map(|user| uid(user)).collect(),
            call_type: calling_api::CallType::Audio,
            timeout_ms: None,
            user_data: None,
        })
        .await
        .unwrap();
}

async fn accept_invitation(client: &mut ClientConnection, request: u32) {
    let ServerMessage::Invited { call_id, .. } = until(client, |message| {
        matches!(message, ServerMessage::Invited { .. })
    })
    .await
    else {
        unreachable!()
    };
    client
        .send
        .send(&ClientMessage::Accept {
            request_id: RequestId(request),
            call_id,
        })
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_ends_its_users_part_in_calls_within_seconds_and_nobody_stays_busy() {
    let redis = RedisServer::start().unwrap();
    let tag = "node-kill";
    let first = node(&redis, tag, 0).await;
    wait_for_status(
        &first,
        |status| status.hosting,
        "the first node takes the control",
    )
    .await;
    let (mut doomed, doomed_addr, doomed_fingerprint) = child_node(&redis, tag, None).await;
    let third = node(&redis, tag, 2).await;
    let app = app();
    let mut alice = login_at(
        first.server.local_addr(),
        first.server.fingerprint(),
        &app,
        "alice",
    )
    .await;
    let mut bob = login_at(doomed_addr, doomed_fingerprint, &app, "bob").await;
    let mut carol = login_at(
        third.server.local_addr(),
        third.server.fingerprint(),
        &app,
        "carol",
    )
    .await;
    invite(&mut alice, 1, &["bob", "carol"]).await;
    accept_invitation(&mut bob, 1).await;
    accept_invitation(&mut carol, 1).await;
    // Both enter, in either order.
    let mut entered = std::collections::BTreeSet::new();
    while entered.len() < 2 {
        if let ServerMessage::UserEntered { user_id, .. } = until(&mut alice, |message| {
            matches!(message, ServerMessage::UserEntered { .. })
        })
        .await
        {
            entered.insert(user_id);
        }
    }

    doomed.kill();
    let killed = Instant::now();
    for client in [&mut alice, &mut carol] {
        until(client, |message| {
            matches!(message, ServerMessage::UserLeft { user_id, .. } if user_id.as_str() == "bob")
        })
        .await;
    }
    let noticed = killed.elapsed();
    assert!(
        noticed < Duration::from_secs(6),
        "bob left after {noticed:?}"
    );
    // alice and carol talk on, across their nodes.
    assert!(
        hears(&carol, &alice, 1, b"still here").await.is_some(),
        "the call goes on for the others"
    );
    // carol hangs up: alice, alone, hears the call end, once.
    carol
        .send
        .send(&ClientMessage::Hangup {
            request_id: RequestId(3),
        })
        .await
        .unwrap();
    until(&mut alice, |message| {
        matches!(message, ServerMessage::CallEnded { .. })
    })
    .await;
    // bob moves to a live node and is not busy.
    let mut bob = login_at(
        third.server.local_addr(),
        third.server.fingerprint(),
        &app,
        "bob",
    )
    .await;
    invite(&mut alice, 5, &["bob"]).await;
    accept_invitation(&mut bob, 6).await;
    until(&mut alice, |message| {
        matches!(message, ServerMessage::UserEntered { user_id, .. } if user_id.as_str() == "bob")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_gone_for_ten_seconds_calls_go_on_new_calls_fail_clearly_and_all_recovers() {
    let mut cluster = TestCluster::start("redis-gone", 2).await;
    let before = cluster.statuses().await;
    let (left, right) = (&cluster.nodes[0], &cluster.nodes[1]);
    let mut alice = raw_login(left, "alice").await;
    let mut bob = raw_login(right, "bob").await;
    let mut carol = raw_login(left, "carol").await;
    let mut dave = raw_login(right, "dave").await;
    raw_call(&mut alice, &mut bob, "bob").await;

    cluster.redis.kill();
    let gone = Instant::now();
    // Past the control's lease: new calls are refused, with the reason.
    tokio::time::sleep(Duration::from_secs(4)).await;
    invite(&mut carol, 7, &["dave"]).await;
    let refused = until(&mut carol, |message| {
        matches!(
            message,
            ServerMessage::Error {
                request_id: Some(RequestId(7)),
                ..
            }
        )
    })
    .await;
    assert!(matches!(
        refused,
        ServerMessage::Error {
            code: calling_api::ErrorCode::CLUSTER_UNAVAILABLE,
            ..
        }
    ));
    // The call in progress goes on: signaling and audio across nodes.
    call_is_alive(&mut alice, &mut bob, true).await;
    assert!(
        hears(&alice, &bob, 1, b"no redis").await.is_some(),
        "media never waits for Redis"
    );
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(gone.elapsed())).await;

    // Back (empty: no persistence), and everything recovers by itself:
    // the same control, in the same term, nobody's session lost.
    cluster.redis.resume().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut request = 10;
    loop {
        request += 1;
        invite(&mut carol, request, &["dave"]).await;
        let answer = until(&mut carol, |message| {
            matches!(message, ServerMessage::Ack { request_id, .. } | ServerMessage::Error { request_id: Some(request_id), .. } if *request_id == RequestId(request))
        })
        .await;
        if matches!(answer, ServerMessage::Ack { .. }) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "new calls work again: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    until(&mut dave, |message| {
        matches!(message, ServerMessage::Invited { .. })
    })
    .await;
    assert_eq!(cluster.statuses().await, before);
    bob.send
        .send(&ClientMessage::Hangup {
            request_id: RequestId(2),
        })
        .await
        .unwrap();
    until(&mut alice, |message| {
        matches!(message, ServerMessage::CallEnded { .. })
    })
    .await;
}

/// Waits until some node of the cluster `tag` holds the control role,
/// asking Redis itself.
async fn wait_for_a_control(redis: &RedisServer, tag: &str) {
    let store = calling_server::cluster_store::RedisStore::new(
        &redis.url(),
        &format!("test-{tag}-{}", std::process::id()),
    )
    .unwrap();
    let ask = calling_cluster::StoreRequest::ClaimControl {
        node: calling_cluster::NodeId(0),
        addr: String::new(),
        term: None,
        highest_seen: 0,
        take: false,
        lease: Duration::from_secs(1),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while store.run(&ask).await == calling_cluster::StoreReply::Control(None) {
        assert!(Instant::now() < deadline, "a node takes the control");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A cluster whose control is a child process (to be killed), and two
/// nodes in this process that follow it.
async fn a_child_control_and_two_nodes(
    redis: &RedisServer,
    tag: &str,
) -> (crate::child::ChildProcess, TestServer, TestServer) {
    let (control, _, _) = child_node(redis, tag, None).await;
    // The child takes the role before the others start.
    wait_for_a_control(redis, tag).await;
    let left = node(redis, tag, 1).await;
    let right = node(redis, tag, 2).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (status(&left).await, status(&right).await);
        if a.ready && b.ready && a.control == b.control && !a.hosting && !b.hosting {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child holds the control: {a:?} {b:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (control, left, right)
}

/// Waits until `left` and `right` follow one control in a term after
/// `old_term`, hosted by one of them.
async fn wait_for_a_new_control(left: &TestServer, right: &TestServer, old_term: u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (status(left).await, status(right).await);
        if a.ready
            && b.ready
            && a.control == b.control
            && a.control.is_some_and(|(_, term)| term > old_term)
        {
            assert!(a.hosting != b.hosting, "one of the two hosts it now");
            return;
        }
        assert!(Instant::now() < deadline, "no new control: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_control_hands_over_and_the_call_between_the_survivors_goes_on() {
    let redis = RedisServer::start().unwrap();
    let (mut control, left, right) = a_child_control_and_two_nodes(&redis, "control-kill").await;
    let old_term = status(&left).await.control.unwrap().1;
    let mut alice = raw_login(&left, "alice").await;
    let mut bob = raw_login(&right, "bob").await;
    raw_call(&mut alice, &mut bob, "bob").await;

    control.kill();
    let killed = Instant::now();
    // A new control, in a new term, rebuilds the sessions and the call the
    // surviving nodes report: alice and bob never notice but a pause.
    wait_for_a_new_control(&left, &right, old_term).await;
    call_is_alive(&mut alice, &mut bob, true).await;
    let recovered = killed.elapsed();
    assert!(
        recovered < Duration::from_secs(8),
        "recovered after {recovered:?}"
    );
    assert!(
        hears(&alice, &bob, 1, b"after").await.is_some(),
        "the call's audio goes on"
    );
    bob.send
        .send(&ClientMessage::Hangup {
            request_id: RequestId(5),
        })
        .await
        .unwrap();
    let ended = until(&mut alice, |message| {
        matches!(message, ServerMessage::CallEnded { .. })
    })
    .await;
    assert!(matches!(
        ended,
        ServerMessage::CallEnded {
            reason: calling_api::EndReason::Hangup,
            ..
        }
    ));
}

/// alice invites bob while the control is dead and not yet replaced: her
/// node keeps the invitation until a control answers it, and the new
/// control rings bob once and answers alice once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_killed_mid_invitation_still_rings_the_invitee_once() {
    let redis = RedisServer::start().unwrap();
    let (mut control, left, right) = a_child_control_and_two_nodes(&redis, "mid-invite").await;
    let old_term = status(&left).await.control.unwrap().1;
    let mut alice = raw_login(&left, "alice").await;
    let mut bob = raw_login(&right, "bob").await;
    control.kill();
    invite(&mut alice, 7, &["bob"]).await;
    wait_for_a_new_control(&left, &right, old_term).await;
    let rung = until(&mut bob, |message| {
        matches!(message, ServerMessage::Invited { .. })
    })
    .await;
    let ServerMessage::Invited { call_id, .. } = rung else {
        unreachable!()
    };
    let to_alice = drain_messages(&mut alice, Duration::from_secs(1)).await;
    let answers: Vec<_> = to_alice
        .iter()
        .filter(|message| {
            matches!(
                message,
                ServerMessage::Ack {
                    request_id: RequestId(7),
                    ..
                } | ServerMessage::Error {
                    request_id: Some(RequestId(7)),
                    ..
                }
            )
        })
        .collect();
    assert!(
        matches!(answers.as_slice(), [ServerMessage::Ack { call_id: Some(acked), .. }] if *acked == call_id),
        "one answer, for the call that rings bob: {to_alice:?}"
    );
    let to_bob = drain_messages(&mut bob, Duration::from_millis(500)).await;
    assert!(
        !to_bob
            .iter()
            .any(|message| matches!(message, ServerMessage::Invited { .. })),
        "rung once: {to_bob:?}"
    );
    bob.send
        .send(&ClientMessage::Accept {
            request_id: RequestId(2),
            call_id,
        })
        .await
        .unwrap();
    until(&mut alice, |message| {
        matches!(message, ServerMessage::UserEntered { .. })
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumable_login_on_a_node_learns_its_session_after_the_answer() {
    // The answer comes from the control, later than on a single server:
    // the session's token must still follow it, or the client never sends
    // heartbeats and its node takes its silence for a broken network.
    let cluster = TestCluster::start("session", 2).await;
    let (_, others) = cluster.roles().await;
    let node = &cluster.nodes[others[0]];
    let mut client = node.raw_client().await;
    client
        .send
        .send(&ClientMessage::Login {
            protocol_version: 2,
            sdk_app_id: node.app.sdk_app_id,
            user_id: uid("erin"),
            user_sig: node.sig("erin").into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        })
        .await
        .unwrap();
    let first = client.recv.recv().await.unwrap().unwrap();
    assert!(
        matches!(first, ServerMessage::LoginResult { code, .. } if code.is_ok()),
        "{first:?}"
    );
    let second = client.recv.recv().await.unwrap().unwrap();
    assert!(
        matches!(second, ServerMessage::Session { .. }),
        "{second:?}"
    );
}

/// Reads what arrives for `client` within `quiet` of the last message.
async fn drain_messages(client: &mut ClientConnection, quiet: Duration) -> Vec<ServerMessage> {
    let mut messages = Vec::new();
    while let Ok(Ok(Some(message))) = tokio::time::timeout(quiet, client.recv.recv()).await {
        messages.push(message);
    }
    messages
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simultaneous_invitations_across_nodes_never_double_book() {
    let cluster = TestCluster::start("race", 3).await;
    let names: Vec<String> = (0..9).map(|index| format!("racer{index}")).collect();
    let mut clients = Vec::new();
    for (index, name) in names.iter().enumerate() {
        clients.push(raw_login(&cluster.nodes[index % 3], name).await);
    }
    // Each invites the next one round the ring (on another node), and
    // racer0 and racer4 also dial each other: glare across nodes. All at
    // once.
    let targets: Vec<Vec<String>> = (0..9)
        .map(|index| {
            let mut targets = vec![names[(index + 1) % 9].clone()];
            if index == 4 {
                targets = vec![names[0].clone()];
            }
            targets
        })
        .collect();
    let sends = clients.iter_mut().zip(&targets).map(|(client, targets)| {
        let invite = ClientMessage::Invite {
            request_id: RequestId(1),
            call_id: None,
            user_ids: targets.iter().map(|target| uid(target)).collect(),
            call_type: calling_api::CallType::Audio,
            timeout_ms: None,
            user_data: None,
        };
        async move { client.send.send(&invite).await.unwrap() }
    });
    futures_util::future::join_all(sends).await;
    let mut seen: Vec<Vec<ServerMessage>> = Vec::new();
    for client in &mut clients {
        seen.push(drain_messages(client, Duration::from_millis(300)).await);
    }
    // Everyone rung accepts.
    for (client, messages) in clients.iter_mut().zip(&seen) {
        for message in messages {
            if let ServerMessage::Invited { call_id, .. } = message {
                let accept = ClientMessage::Accept {
                    request_id: RequestId(2),
                    call_id: *call_id,
                };
                client.send.send(&accept).await.unwrap();
            }
        }
    }
    for (index, client) in clients.iter_mut().enumerate() {
        seen[index].extend(drain_messages(client, Duration::from_millis(300)).await);
    }
    // Every request answered exactly once.
    for (name, messages) in names.iter().zip(&seen) {
        assert_answered_once(name, messages);
    }
    // Nobody is in two calls, per the switchboard of record.
    let Some(calling_server::AdminReply::Calls(calls)) =
        control_admin(&cluster, calling_server::AdminRequest::Calls).await
    else {
        panic!("the control answers");
    };
    let mut booked = std::collections::BTreeMap::new();
    for (call, _) in &calls {
        for user in call.members.iter().chain(&call.invitees) {
            assert!(
                booked.insert(user.clone(), call.call_id).is_none(),
                "{user} double-booked: {calls:?}"
            );
        }
    }
    // Everyone hangs up: every call ends, and each member hears its end once.
    for client in &mut clients {
        client
            .send
            .send(&ClientMessage::Hangup {
                request_id: RequestId(3),
            })
            .await
            .unwrap();
    }
    for (index, client) in clients.iter_mut().enumerate() {
        let messages = drain_messages(client, Duration::from_millis(300)).await;
        let mut all = seen[index].clone();
        all.extend(messages);
        // A racer may see two calls end: its own invitation's, answered
        // busy, and the one it was rung into. Each call ends once for it,
        // and every call it entered ends.
        let ends_of = |call: calling_api::CallId| {
            all.iter()
                .filter(|message| {
                    matches!(message, ServerMessage::CallEnded { call_id, .. } if *call_id == call)
                })
                .count()
        };
        for message in &all {
            match message {
                ServerMessage::UserEntered { call_id, .. } => {
                    assert_eq!(ends_of(*call_id), 1, "{}: {all:?}", names[index]);
                }
                ServerMessage::CallEnded { call_id, .. } => {
                    assert_eq!(ends_of(*call_id), 1, "{}: {all:?}", names[index]);
                }
                _ => {}
            }
        }
    }
    let Some(calling_server::AdminReply::Calls(calls)) =
        control_admin(&cluster, calling_server::AdminRequest::Calls).await
    else {
        panic!("the control answers");
    };
    assert!(calls.is_empty(), "{calls:?}");
}

/// Each of `name`'s requests (an invite, one accept per invitation) got
/// exactly one answer among `messages`.
fn assert_answered_once(name: &str, messages: &[ServerMessage]) {
    let answers = |request: RequestId| {
        messages
            .iter()
            .filter(|message| match message {
                ServerMessage::Ack { request_id, .. } => *request_id == request,
                ServerMessage::Error {
                    request_id: Some(request_id),
                    ..
                } => *request_id == request,
                _ => false,
            })
            .count()
    };
    assert_eq!(answers(RequestId(1)), 1, "{name}: {messages:?}");
    let invitations = messages
        .iter()
        .filter(|message| matches!(message, ServerMessage::Invited { .. }))
        .count();
    assert_eq!(answers(RequestId(2)), invitations, "{name}");
}

/// An admin request to the node that hosts the control.
async fn control_admin(
    cluster: &TestCluster,
    request: calling_server::AdminRequest,
) -> Option<calling_server::AdminReply> {
    let (control, _) = cluster.roles().await;
    cluster.nodes[control].server.admin(request).await
}

/// A node whose certificate is copied from the data directory `like`:
/// nodes behind one address present one certificate.
async fn node_like(
    redis: &RedisServer,
    tag: &str,
    index: usize,
    like: &std::path::Path,
) -> TestServer {
    TestServer::start_with(config_like(redis, tag, index, like)).await
}

/// The configuration of node `index`, its certificate copied from the
/// data directory `like`.
fn config_like(
    redis: &RedisServer,
    tag: &str,
    index: usize,
    like: &std::path::Path,
) -> calling_server::config::ServerConfig {
    let config = node_config(redis, tag, index);
    std::fs::create_dir_all(&config.data_dir).unwrap();
    for file in ["cert.der", "key.der"] {
        std::fs::copy(like.join(file), config.data_dir.join(file)).unwrap();
    }
    config
}

/// The first node of the cluster `tag`, once it hosts the control, and
/// its data directory (whose certificate the others copy).
async fn first_node_hosting(redis: &RedisServer, tag: &str) -> (TestServer, std::path::PathBuf) {
    let config = node_config(redis, tag, 0);
    let data_dir = config.data_dir.clone();
    let node = TestServer::start_with(config).await;
    wait_for_status(
        &node,
        |status| status.hosting,
        "the first node takes the control",
    )
    .await;
    (node, data_dir)
}

/// An SDK user logged in through `server` (a proxy's address).
async fn sdk_user(
    server: std::net::SocketAddr,
    fingerprint: signaling_quic::CertFingerprint,
    name: &str,
) -> User {
    let mut options = calling_facade::ClientOptions::development(server.to_string(), fingerprint);
    options.audio = calling_facade::AudioDevices::none();
    let calling = calling_facade::TRTCCalling::new(options);
    let events = calling.events();
    let app = app();
    let sig = calling_server::usersig::generate(
        u64::from(app.sdk_app_id),
        app.secret_key.expose(),
        name,
        86_400,
        now(),
        None,
    );
    calling.login(app.sdk_app_id, name, &sig).await.unwrap();
    User {
        id: uid(name),
        calling,
        events,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_node_moves_its_idle_users_and_lets_its_calls_finish() {
    let redis = RedisServer::start().unwrap();
    let tag = "drain";
    // The control on the node that stays.
    let (staying, staying_dir) = first_node_hosting(&redis, tag).await;
    let draining = node_like(&redis, tag, 1, &staying_dir).await;
    wait_for_status(&draining, |status| status.ready, "the second node joins").await;
    // One address, as a load balancer gives, leading to the draining node.
    let balancer = opencalling_tests::proxy::FaultProxy::start(draining.server.local_addr()).await;
    let fingerprint = staying.server.fingerprint();
    assert_eq!(fingerprint, draining.server.fingerprint());
    let mut alice = sdk_user(balancer.addr, fingerprint, "alice").await;
    let mut carol = sdk_user(balancer.addr, fingerprint, "carol").await;
    let mut bob = sdk_user(staying.server.local_addr(), fingerprint, "bob").await;
    assert_eq!(draining.server.stats().await.unwrap().online, 2);
    connect(&mut carol, &mut bob).await;

    // The operator takes the node out of the balancer, then drains it.
    balancer.retarget(staying.server.local_addr());
    draining.server.drain().await;
    // alice, idle, is moved: her SDK logs in again, now on the other node.
    alice
        .expect(&[calling_api::CallingEvent::Reconnecting])
        .await;
    alice
        .expect(&[calling_api::CallingEvent::Reconnected])
        .await;
    bob.expect_quiet(Duration::from_millis(300)).await;
    // carol's call goes on across the nodes until it ends.
    let drained = draining.server.drained();
    tokio::pin!(drained);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut drained)
            .await
            .is_err(),
        "a call still runs on the draining node"
    );
    carol.calling.set_mic_mute(true);
    bob.expect(&[calling_api::CallingEvent::UserAudioAvailable {
        user_id: uid("carol"),
        available: false,
    }])
    .await;
    bob.calling.hangup().await.unwrap();
    bob.expect_end(calling_api::EndReason::Hangup).await;
    carol
        .expect_leave_then_end("bob", calling_api::EndReason::Hangup)
        .await;
    tokio::time::timeout(Duration::from_secs(5), &mut drained)
        .await
        .expect("drained once its last call ended");
    // carol, idle now, moves too; both are reachable on the other node.
    carol
        .expect(&[calling_api::CallingEvent::Reconnecting])
        .await;
    carol
        .expect(&[calling_api::CallingEvent::Reconnected])
        .await;
    assert_eq!(draining.server.stats().await.unwrap().online, 0);
    bob.calling
        .call("alice", calling_api::CallType::Audio)
        .await
        .unwrap();
    alice.expect(&[invited("bob", &[])]).await;
    alice.calling.accept().await.unwrap();
    bob.expect(&enter("alice")).await;
}

/// A node whose certificate is copied from the data directory `like`,
/// sending clients to `redirect_to` when it drains or stops.
async fn node_redirecting(
    redis: &RedisServer,
    (tag, index): (&str, usize),
    like: &std::path::Path,
    redirect_to: std::net::SocketAddr,
) -> TestServer {
    let mut config = config_like(redis, tag, index, like);
    config.redirect_to = vec![redirect_to.to_string()];
    TestServer::start_with(config).await
}

/// No load balancer: clients dial the draining node's own address. It
/// tells its idle clients, and a client logging in, where to go, and they
/// land on the other node by themselves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_nodes_clients_land_on_another_by_themselves() {
    let redis = RedisServer::start().unwrap();
    let tag = "redirect";
    let (staying, staying_dir) = first_node_hosting(&redis, tag).await;
    let staying_addr = staying.server.local_addr();
    let draining = node_redirecting(&redis, (tag, 1), &staying_dir, staying_addr).await;
    wait_for_status(&draining, |status| status.ready, "the second node joins").await;
    let fingerprint = staying.server.fingerprint();
    let draining_addr = draining.server.local_addr();
    let mut alice = sdk_user(draining_addr, fingerprint, "alice").await;
    assert_eq!(draining.server.stats().await.unwrap().online, 1);

    draining.server.drain().await;
    alice
        .expect(&[calling_api::CallingEvent::Reconnecting])
        .await;
    alice
        .expect(&[calling_api::CallingEvent::Reconnected])
        .await;
    assert_eq!(draining.server.stats().await.unwrap().online, 0);
    assert_eq!(staying.server.stats().await.unwrap().online, 1);
    // A login at the draining node's address is refused there, and the
    // SDK logs in where the refusal points.
    let mut carol = sdk_user(draining_addr, fingerprint, "carol").await;
    assert_eq!(staying.server.stats().await.unwrap().online, 2);
    carol
        .calling
        .call("alice", calling_api::CallType::Audio)
        .await
        .unwrap();
    alice.expect(&[invited("carol", &[])]).await;
    alice.calling.accept().await.unwrap();
    carol.expect(&enter("alice")).await;
}

/// An SDK given both nodes' addresses is logged in on the first; that node
/// is killed: the SDK notices (its dead time), and is back on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_nodes_users_are_back_on_another_node() {
    let redis = RedisServer::start().unwrap();
    let tag = "dead-node";
    let (staying, staying_dir) = first_node_hosting(&redis, tag).await;
    // The doomed node, a child process, presents the same certificate.
    let (mut doomed, doomed_addr, fingerprint) = child_node(&redis, tag, Some(&staying_dir)).await;
    assert_eq!(fingerprint, staying.server.fingerprint());
    let both = format!("{doomed_addr},{}", staying.server.local_addr());
    let mut options = calling_facade::ClientOptions::development(both, fingerprint);
    options.audio = calling_facade::AudioDevices::none();
    let calling = calling_facade::TRTCCalling::new(options);
    let mut alice = User {
        id: uid("alice"),
        events: calling.events(),
        calling,
    };
    let app = app();
    let sig = calling_server::usersig::generate(
        u64::from(app.sdk_app_id),
        app.secret_key.expose(),
        "alice",
        86_400,
        now(),
        None,
    );
    alice
        .calling
        .login(app.sdk_app_id, "alice", &sig)
        .await
        .unwrap();
    assert_eq!(
        staying.server.stats().await.unwrap().online,
        0,
        "on the first"
    );

    doomed.kill();
    let killed = Instant::now();
    alice
        .expect(&[calling_api::CallingEvent::Reconnecting])
        .await;
    alice
        .expect(&[calling_api::CallingEvent::Reconnected])
        .await;
    let back = killed.elapsed();
    println!("back on the other node {back:?} after its own was killed");
    assert_eq!(staying.server.stats().await.unwrap().online, 1);
    // The dead time (3 s) to notice, then the resume's and the login's
    // round trips, with room for a loaded machine.
    assert!(back < Duration::from_millis(4_500), "back after {back:?}");
}

/// `client` mutes; `other` hears it: their call is alive.
async fn call_is_alive(client: &mut ClientConnection, other: &mut ClientConnection, muted: bool) {
    client
        .send
        .send(&ClientMessage::Microphone { muted })
        .await
        .unwrap();
    until(other, |message| {
        matches!(message, ServerMessage::AudioAvailability { available, .. } if *available != muted)
    })
    .await;
}

/// Hangs `client` up; `other` hears the call end.
async fn hang_up(client: &mut ClientConnection, other: &mut ClientConnection) {
    client
        .send
        .send(&ClientMessage::Hangup {
            request_id: RequestId(90),
        })
        .await
        .unwrap();
    until(other, |message| {
        matches!(message, ServerMessage::CallEnded { .. })
    })
    .await;
}

/// Drains `node` while `during` runs, then stops it: the drain must have
/// ended by itself (its calls over) well within the limit.
async fn drain_and_stop(node: TestServer, during: impl std::future::Future<Output = ()>) {
    let drained = node.server.drained();
    node.server.drain().await;
    during.await;
    tokio::time::timeout(Duration::from_secs(5), drained)
        .await
        .expect("drained once its calls ended");
    node.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_loses_no_call_shorter_than_the_drain() {
    let redis = RedisServer::start().unwrap();
    let tag = "rolling";
    let first = node(&redis, tag, 0).await;
    wait_for_a_control(&redis, tag).await;
    let second = node(&redis, tag, 1).await;
    let third = node(&redis, tag, 2).await;
    for node in [&first, &second, &third] {
        wait_for_status(node, |status| status.ready, "a node joins").await;
    }
    assert!(status(&first).await.hosting);
    // A long call between the first and the third node, and a short one
    // on the second.
    let mut alice = raw_login(&first, "alice").await;
    let mut bob = raw_login(&third, "bob").await;
    raw_call(&mut alice, &mut bob, "bob").await;
    let mut carol = raw_login(&second, "carol").await;
    let mut dave = raw_login(&third, "dave").await;
    raw_call(&mut carol, &mut dave, "dave").await;

    // The second node restarts: its call ends within the drain; the long
    // call, elsewhere, goes on.
    drain_and_stop(second, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hang_up(&mut carol, &mut dave).await;
    })
    .await;
    let second = node(&redis, tag, 3).await;
    call_is_alive(&mut alice, &mut bob, true).await;

    // The first node, which hosts the control, restarts: a call between
    // the new second node and the third goes on through the handover,
    // and alice's call, on the node going, ends within its drain.
    wait_for_status(&second, |status| status.ready, "the new node joins").await;
    let mut erin = raw_login(&second, "erin").await;
    let mut frank = raw_login(&third, "frank").await;
    raw_call(&mut erin, &mut frank, "frank").await;
    drain_and_stop(first, async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        hang_up(&mut alice, &mut bob).await;
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (a, b) = (status(&second).await, status(&third).await);
        if a.ready && b.ready && a.control == b.control && (a.hosting || b.hosting) {
            break;
        }
        assert!(Instant::now() < deadline, "a new control: {a:?} {b:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    call_is_alive(&mut erin, &mut frank, true).await;
    hang_up(&mut frank, &mut erin).await;
}
