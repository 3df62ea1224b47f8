//! The core over cluster nodes, on a virtual clock: three cores, a
//! [`MemoryStore`], node trunks as in-memory queues. What the servers'
//! hubs and cluster IO do with sockets and Redis, the harness does with
//! queues; the decisions are the cores'.

#![allow(clippy::unwrap_used, clippy::too_many_lines)]

mod harness;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use calling_api::ErrorCode;
use calling_cluster::{
    ClusterNode, ControlHolder, FromControl, MemoryStore, NodeConfig, NodeConn, NodeId, NodeOutput,
    StoreReply, ToControl, TrunkFrame,
};
use harness::{Server, accept, acked_call, invite, token_in, user};
use server_core::{ClusterBoard, Counted, LoginAnswer, MemberAt};
use signaling_proto::{ClientMessage, ConnId, ResumeClaim, ServerMessage, SwitchboardConfig};

const TICK: Duration = Duration::from_millis(5);

struct Node {
    server: Server<ClusterBoard>,
    dialing: Option<ControlHolder>,
    link_up: bool,
    store_replies: VecDeque<(u64, StoreReply)>,
    /// Frames this node wrote on its control trunk.
    to_control: VecDeque<TrunkFrame<ToControl>>,
    /// Frames the control wrote for this node.
    from_control: VecDeque<TrunkFrame<FromControl>>,
}

struct Cluster {
    now: Instant,
    store: MemoryStore,
    nodes: BTreeMap<NodeId, Node>,
    /// Nodes whose control trunk cannot connect.
    cut_off: BTreeSet<NodeId>,
}

impl Cluster {
    fn new(n: u32) -> Self {
        let now = Instant::now();
        let mut nodes = BTreeMap::new();
        for index in 1..=n {
            let id = NodeId(index);
            let config = NodeConfig::new(id, format!("10.0.0.{index}:4433"));
            let grace = config.switchboard.resume_grace;
            assert_eq!(grace, SwitchboardConfig::DEFAULT.resume_grace);
            let board = ClusterBoard::new(ClusterNode::new(config, now), grace, now);
            // Each node numbers its connections in a range of its own, so
            // that a test reads which node a trunk is on.
            let server = Server::new(board, now, u64::from(index) * 100);
            nodes.insert(
                id,
                Node {
                    server,
                    dialing: None,
                    link_up: false,
                    store_replies: VecDeque::new(),
                    to_control: VecDeque::new(),
                    from_control: VecDeque::new(),
                },
            );
        }
        let mut cluster = Self {
            now,
            store: MemoryStore::new(),
            nodes,
            cut_off: BTreeSet::new(),
        };
        cluster.carry_out_all();
        cluster
    }

    fn node(&mut self, id: NodeId) -> &mut Server<ClusterBoard> {
        &mut self.nodes.get_mut(&id).unwrap().server
    }

    fn control(&self) -> NodeId {
        *self
            .nodes
            .iter()
            .find(|(_, node)| node.server.core.board().node().control().is_some())
            .expect("a control")
            .0
    }

    fn followers(&self) -> Vec<NodeId> {
        let control = self.control();
        self.nodes
            .keys()
            .copied()
            .filter(|id| *id != control)
            .collect()
    }

    fn settle(&mut self) {
        for _ in 0..2_000 {
            self.tick();
            let ready = self.nodes.values().all(|node| {
                let status = server_core::Board::cluster_status(node.server.core.board()).unwrap();
                status.ready && status.control.is_some()
            });
            if ready {
                return;
            }
        }
        panic!("the cluster did not settle");
    }

    fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.tick();
        }
    }

    fn tick(&mut self) {
        self.now += TICK;
        let now = self.now;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in &ids {
            let node = self.nodes.get_mut(id).unwrap();
            while let Some((request, reply)) = node.store_replies.pop_front() {
                node.server.core.handle_cluster_io(now, |cluster_node| {
                    cluster_node.handle_store_reply(now, request, reply);
                });
            }
            while let Some(frame) = node.from_control.pop_front() {
                node.server.core.handle_cluster_io(now, |cluster_node| {
                    cluster_node.handle_control_frame(now, frame).unwrap();
                });
            }
        }
        for id in &ids {
            let frames: Vec<_> = self
                .nodes
                .get_mut(id)
                .unwrap()
                .to_control
                .drain(..)
                .collect();
            let Some(holder) = self.nodes[id].dialing.clone() else {
                continue;
            };
            for frame in frames {
                self.node(holder.node)
                    .core
                    .handle_cluster_io(now, |cluster_node| {
                        cluster_node.handle_node_frame(now, *id, frame).unwrap();
                    });
            }
        }
        for id in &ids {
            let reachable = self.nodes[id].dialing.as_ref().is_some_and(|holder| {
                self.nodes[&holder.node]
                    .server
                    .core
                    .board()
                    .node()
                    .control()
                    .is_some()
            }) && !self.cut_off.contains(id);
            let node = self.nodes.get_mut(id).unwrap();
            if reachable && !node.link_up {
                node.link_up = true;
                node.server.core.handle_cluster_io(now, |cluster_node| {
                    cluster_node.handle_control_trunk_up(now)
                });
            }
            if node.server.core.poll_timeout().is_some_and(|at| at <= now) {
                node.server.core.handle_timeout(now);
            }
        }
        self.carry_out_all();
    }

    /// Carries out every node's outputs; the cluster IO ones here.
    fn carry_out_all(&mut self) {
        let now = self.now;
        let ids: Vec<NodeId> = self.nodes.keys().copied().collect();
        for id in ids {
            let outputs = self.node(id).drain(now);
            for output in outputs {
                match output {
                    NodeOutput::Store {
                        id: request,
                        request: what,
                    } => {
                        let reply = self.store.apply(now, &what);
                        let node = self.nodes.get_mut(&id).unwrap();
                        node.store_replies.push_back((request, reply));
                    }
                    NodeOutput::Dial(holder) => {
                        let node = self.nodes.get_mut(&id).unwrap();
                        node.dialing = Some(holder);
                        node.link_up = false;
                    }
                    NodeOutput::Hang => {
                        let node = self.nodes.get_mut(&id).unwrap();
                        node.dialing = None;
                        node.link_up = false;
                    }
                    NodeOutput::ToControl(frame) => {
                        let node = self.nodes.get_mut(&id).unwrap();
                        if node.link_up {
                            node.to_control.push_back(frame);
                        }
                    }
                    NodeOutput::ToNode { node, frame } => {
                        if let Some(target) = self.nodes.get_mut(&node)
                            && target.link_up
                        {
                            target.from_control.push_back(frame);
                        }
                    }
                    NodeOutput::DropNode { .. } => {}
                    other => panic!("the core hands on only IO: {other:?}"),
                }
            }
        }
    }

    /// Cuts `id`'s control trunk; it stays down while cut off.
    fn cut(&mut self, id: NodeId) {
        let now = self.now;
        self.cut_off.insert(id);
        let control = self.control();
        let node = self.nodes.get_mut(&id).unwrap();
        node.link_up = false;
        node.to_control.clear();
        node.from_control.clear();
        node.server.core.handle_cluster_io(now, |cluster_node| {
            cluster_node.handle_control_trunk_down(now)
        });
        self.node(control)
            .core
            .handle_cluster_io(now, |cluster_node| {
                cluster_node.handle_node_trunk_down(now, id)
            });
        self.carry_out_all();
    }

    /// `name` logs in on node `id`; its trunk, once the control answered.
    fn log_in(&mut self, id: NodeId, name: &str) -> ConnId {
        let now = self.now;
        let (link, answer) = self.node(id).connect(now, name, None);
        assert!(matches!(answer, LoginAnswer::Attached { .. }), "{answer:?}");
        self.run_for(Duration::from_millis(100));
        assert!(
            self.node(id).inbox(link).iter().any(|message| matches!(
                message,
                ServerMessage::LoginResult {
                    code: ErrorCode::OK,
                    ..
                }
            )),
            "{name} logged in"
        );
        link
    }
}

/// Alice on one follower calls bob on the other; their nodes, trunks and
/// the call.
fn alice_calls_bob(
    cluster: &mut Cluster,
) -> ((NodeId, ConnId), (NodeId, ConnId), calling_api::CallId) {
    cluster.settle();
    let followers = cluster.followers();
    let (a, b) = (followers[0], followers[1]);
    let alice = cluster.log_in(a, "alice");
    let bob = cluster.log_in(b, "bob");
    let now = cluster.now;
    cluster.node(a).send(now, alice, invite(1, "bob"));
    cluster.run_for(Duration::from_millis(100));
    let call_id = acked_call(cluster.node(a).inbox(alice));
    assert!(
        cluster
            .node(b)
            .inbox(bob)
            .iter()
            .any(|message| matches!(message, ServerMessage::Invited { .. }))
    );
    let now = cluster.now;
    cluster.node(b).send(now, bob, accept(1, call_id));
    cluster.run_for(Duration::from_millis(100));
    ((a, alice), (b, bob), call_id)
}

#[test]
fn users_on_two_nodes_call_and_each_node_routes_its_own_connection_to_the_other_node() {
    let mut cluster = Cluster::new(3);
    let ((a, alice), (b, bob), call_id) = alice_calls_bob(&mut cluster);
    let inbox = cluster.node(a).inbox(alice).to_vec();
    let login = inbox
        .iter()
        .position(|message| matches!(message, ServerMessage::LoginResult { .. }))
        .unwrap();
    assert!(
        matches!(inbox[login + 1], ServerMessage::Session { .. }),
        "the session follows the control's answer: {inbox:?}"
    );
    assert!(inbox.iter().any(|message| matches!(
        message,
        ServerMessage::UserEntered { user_id, .. } if *user_id == user("bob")
    )));
    let at_a = cluster.node(a).routed(call_id);
    assert!(at_a.contains(&MemberAt::Here(alice)), "{at_a:?}");
    assert!(at_a.contains(&there(b, bob)), "{at_a:?}");
    let at_b = cluster.node(b).routed(call_id);
    assert!(at_b.contains(&MemberAt::Here(bob)), "{at_b:?}");
    assert!(at_b.contains(&there(a, alice)), "{at_b:?}");
    let (control, now) = (cluster.control(), cluster.now);
    assert_eq!(cluster.node(control).core.call_summaries(now).len(), 1);
}

#[test]
fn a_session_resumed_on_its_node_gets_what_it_missed_from_the_control() {
    let mut cluster = Cluster::new(3);
    let ((a, alice), (b, bob), call_id) = alice_calls_bob(&mut cluster);
    let bob_inbox = cluster.node(b).read_all(bob);
    let token = token_in(&bob_inbox);
    let received = cluster.node(b).received(bob);

    let now = cluster.now;
    cluster.node(b).core.handle_disconnect(now, bob, false);
    cluster.run_for(Duration::from_millis(100));
    assert_eq!(cluster.node(b).counts, [Counted::SessionDetached]);
    assert!(
        cluster
            .node(a)
            .inbox(alice)
            .contains(&ServerMessage::MemberConnection {
                call_id,
                user_id: user("bob"),
                connected: false
            })
    );
    let now = cluster.now;
    cluster
        .node(a)
        .send(now, alice, ClientMessage::Microphone { muted: true });
    cluster.run_for(Duration::from_millis(100));
    assert!(cluster.node(b).inbox(bob).is_empty(), "kept for the resume");

    let now = cluster.now;
    let (bob_again, answer) =
        cluster
            .node(b)
            .connect(now, "bob", Some(ResumeClaim { token, received }));
    assert_eq!(
        answer,
        LoginAnswer::Attached {
            session: bob,
            resumable: true
        }
    );
    cluster.run_for(Duration::from_millis(100));
    let inbox = cluster.node(b).read_all(bob_again);
    assert!(
        matches!(inbox[0], ServerMessage::Resumed { .. }),
        "{inbox:?}"
    );
    assert_eq!(
        inbox[1],
        ServerMessage::AudioAvailability {
            call_id,
            user_id: user("alice"),
            available: false
        }
    );
    assert!(
        cluster
            .node(a)
            .inbox(alice)
            .contains(&ServerMessage::MemberConnection {
                call_id,
                user_id: user("bob"),
                connected: true
            })
    );
    let at_a = cluster.node(a).routed(call_id);
    assert!(
        at_a.contains(&there(b, bob)),
        "the other node reaches bob by his session: {at_a:?}"
    );
    let at_b = cluster.node(b).routed(call_id);
    assert!(at_b.contains(&MemberAt::Here(bob_again)), "{at_b:?}");
}

/// Where a node reaches `conn`'s member on node `node`.
fn there(node: NodeId, conn: ConnId) -> MemberAt {
    MemberAt::There(NodeConn { node, conn: conn.0 })
}

#[test]
fn a_node_cut_off_from_its_control_past_the_grace_closes_every_connection() {
    let mut cluster = Cluster::new(3);
    let ((a, alice), (b, bob), call_id) = alice_calls_bob(&mut cluster);
    let (carol_node, carol) = (a, cluster.log_in(a, "carol"));
    cluster.cut(a);
    cluster.run_for(Duration::from_secs(5));
    let node_a = cluster.node(carol_node);
    assert_eq!(node_a.sessions_lost, 1);
    assert!(node_a.closed(alice).is_some());
    assert!(node_a.closed(carol).is_some());
    assert!(node_a.routes.is_empty());
    assert_eq!(server_core::Board::online_count(node_a.core.board()), 0);
    // The call ends for bob: alice's session was lost with her node.
    assert!(cluster.node(b).inbox(bob).iter().any(|message| matches!(
        message,
        ServerMessage::CallEnded { call_id: ended, .. } if *ended == call_id
    )));
}
