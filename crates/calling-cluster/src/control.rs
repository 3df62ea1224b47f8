//! The control: the cluster's one switchboard of record, hosted for every
//! node's clients.
//!
//! Every rule of the single-node switchboard (busy, glare, timeouts with one
//! clock, a second login kicking the first, `onCallEnd` once) holds across
//! nodes because there is one [`Switchboard`] deciding: the control wraps
//! it, gives each node's connection a switchboard [`ConnId`] of its own,
//! and routes the switchboard's outputs to the nodes the connections are
//! on. A node that is gone (its link lost for longer than the cluster
//! allows, or its lease lapsed) has its sessions ended at once as lost
//! connections: their calls end for the others with
//! [`EndReason::ConnectionLost`](calling_api::EndReason::ConnectionLost),
//! and nobody stays busy.
//!
//! Sans-IO, like the switchboard: inputs carry `now`, outputs are drained
//! with [`Control::poll_output`] after every input.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use calling_api::{CallId, UserId};
use signaling_proto::{CallEvent, ConnId, Output, Switchboard, SwitchboardConfig};
use tracing::{debug, warn};

use crate::wire::{ClusterMember, FromControl, NodeConn, NodeId, ToControl};

/// What the glue must do for the control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOutput {
    /// Send `message` to `node` over its link.
    ToNode {
        /// The node.
        node: NodeId,
        /// The message.
        message: FromControl,
    },
    /// Something happened to a call (for the operator's side).
    Event(CallEvent),
}

/// The switchboard of record for many nodes. See the [module docs](self).
#[derive(Debug)]
pub struct Control {
    switchboard: Switchboard,
    by_switchboard: HashMap<ConnId, NodeConn>,
    by_node: HashMap<NodeConn, ConnId>,
    /// The nodes told about each call's membership, for the empty
    /// membership a node must get when its last member leaves.
    told_membership: HashMap<CallId, BTreeSet<NodeId>>,
    next_conn: u64,
    outputs: VecDeque<ControlOutput>,
}

impl Control {
    /// A control whose switchboard follows `config` (its `node_id` is the
    /// hosting node's).
    pub fn new(config: SwitchboardConfig) -> Self {
        Self {
            switchboard: Switchboard::new(config),
            by_switchboard: HashMap::new(),
            by_node: HashMap::new(),
            told_membership: HashMap::new(),
            next_conn: 1,
            outputs: VecDeque::new(),
        }
    }

    /// The switchboard, for the operator's read-only views.
    pub fn switchboard(&self) -> &Switchboard {
        &self.switchboard
    }

    /// The switchboard, for the operator's actions (kick, end a call, stop
    /// accepting calls); drain [`Control::poll_output`] afterwards.
    pub fn switchboard_mut(&mut self) -> &mut Switchboard {
        &mut self.switchboard
    }

    /// One message from `node`.
    pub fn handle_from_node(&mut self, now: Instant, node: NodeId, message: ToControl) {
        match message {
            ToControl::Login {
                conn,
                user,
                protocol_version,
            } => {
                let at = NodeConn { node, conn };
                // A second login on one connection keeps its number; the
                // switchboard answers "already logged in" itself.
                let ours = match self.by_node.get(&at) {
                    Some(ours) => *ours,
                    None => {
                        let ours = ConnId(self.next_conn);
                        self.next_conn += 1;
                        self.by_node.insert(at, ours);
                        self.by_switchboard.insert(ours, at);
                        ours
                    }
                };
                self.switchboard
                    .handle_login(now, ours, user, protocol_version);
            }
            ToControl::Message { conn, message } => {
                if let Some(ours) = self.known(node, conn) {
                    self.switchboard.handle_message(now, ours, message);
                }
            }
            ToControl::Disconnected { conn } => {
                if let Some(ours) = self.known(node, conn) {
                    self.switchboard.handle_disconnect(now, ours);
                    self.route_outputs();
                    self.forget_if_ended(ours);
                }
            }
            ToControl::Expelled { conn } => {
                if let Some(ours) = self.known(node, conn) {
                    self.switchboard.handle_expelled(now, ours);
                    self.route_outputs();
                    self.forget_if_ended(ours);
                }
            }
            ToControl::Resume { conn } => {
                let resumed = self
                    .known(node, conn)
                    .is_some_and(|ours| self.switchboard.handle_resume(now, ours));
                self.outputs.push_back(ControlOutput::ToNode {
                    node,
                    message: FromControl::Resumed { conn, resumed },
                });
            }
            ToControl::Congested { conn, congested } => {
                if let Some(ours) = self.known(node, conn) {
                    self.switchboard.set_congested(ours, congested);
                }
            }
        }
        self.route_outputs();
    }

    /// `node` is gone: its link is lost for good or its lease lapsed. Its
    /// sessions end now, as lost connections (no resume: the node that
    /// kept their books is gone).
    pub fn handle_node_lost(&mut self, now: Instant, node: NodeId) {
        let mut lost: Vec<(NodeConn, ConnId)> = self
            .by_node
            .iter()
            .filter(|(at, _)| at.node == node)
            .map(|(at, ours)| (*at, *ours))
            .collect();
        lost.sort();
        debug!(%node, sessions = lost.len(), "node lost: its sessions end");
        for (_, ours) in &lost {
            self.switchboard.handle_expelled(now, *ours);
        }
        self.route_outputs();
        // Nothing more can reach the node; forget what was queued for it.
        self.outputs.retain(
            |output| !matches!(output, ControlOutput::ToNode { node: to, .. } if *to == node),
        );
        for (at, ours) in lost {
            self.by_node.remove(&at);
            self.by_switchboard.remove(&ours);
        }
        for told in self.told_membership.values_mut() {
            told.remove(&node);
        }
    }

    /// Fires the switchboard's due timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.switchboard.handle_timeout(now);
        self.route_outputs();
    }

    /// When to call [`Control::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.switchboard.poll_timeout()
    }

    /// The next thing to do, until `None`. Drain it after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ControlOutput> {
        self.outputs.pop_front()
    }

    /// Where a switchboard connection is.
    pub fn node_conn(&self, conn: ConnId) -> Option<NodeConn> {
        self.by_switchboard.get(&conn).copied()
    }

    /// The user logged in on `at`, if any.
    pub fn user_at(&self, at: NodeConn) -> Option<&UserId> {
        let ours = self.by_node.get(&at)?;
        self.switchboard.user_of(*ours)
    }

    /// How many connections of `node` the control knows.
    pub fn sessions_on(&self, node: NodeId) -> usize {
        self.by_node.keys().filter(|at| at.node == node).count()
    }

    fn known(&self, node: NodeId, conn: u64) -> Option<ConnId> {
        let ours = self.by_node.get(&NodeConn { node, conn }).copied();
        if ours.is_none() {
            debug!(%node, conn, "message for a connection the control does not know: dropped");
        }
        ours
    }

    /// Turns the switchboard's outputs into messages for nodes, and forgets
    /// connections whose sessions ended.
    fn route_outputs(&mut self) {
        while let Some(output) = self.switchboard.poll_output() {
            match output {
                Output::Send { conn, message } => {
                    if let Some(at) = self.node_conn(conn) {
                        self.send_to_node(
                            at.node,
                            FromControl::Send {
                                conn: at.conn,
                                message,
                            },
                        );
                    }
                }
                Output::Close { conn, code } => {
                    if let Some(at) = self.by_switchboard.remove(&conn) {
                        self.by_node.remove(&at);
                        self.send_to_node(
                            at.node,
                            FromControl::Close {
                                conn: at.conn,
                                code,
                            },
                        );
                    }
                }
                Output::Membership { call_id, members } => self.publish(call_id, &members),
                Output::Unrouted { user, message } => {
                    // One switchboard for the cluster: nobody else has the
                    // user, as on a single node.
                    debug!(%user, ?message, "message for a user logged in nowhere: dropped");
                }
                Output::Event(event) => self.outputs.push_back(ControlOutput::Event(event)),
            }
        }
    }

    /// A session that ends without a close (a lost connection, an expelled
    /// client) leaves its number behind: forget it.
    fn forget_if_ended(&mut self, ours: ConnId) {
        if self.switchboard.user_of(ours).is_none() {
            if let Some(at) = self.by_switchboard.remove(&ours) {
                self.by_node.remove(&at);
            }
        }
    }

    fn publish(&mut self, call_id: CallId, members: &[signaling_proto::CallMember]) {
        let mut cluster_members = Vec::with_capacity(members.len());
        for member in members {
            match self.node_conn(member.conn) {
                Some(at) => cluster_members.push(ClusterMember {
                    user: member.user.clone(),
                    flow: member.flow,
                    at,
                }),
                None => warn!(%call_id, user = %member.user, "a member's connection is unknown"),
            }
        }
        let now_on: BTreeSet<NodeId> = cluster_members.iter().map(|m| m.at.node).collect();
        let before = if cluster_members.is_empty() {
            self.told_membership.remove(&call_id).unwrap_or_default()
        } else {
            self.told_membership
                .insert(call_id, now_on.clone())
                .unwrap_or_default()
        };
        for node in now_on.union(&before) {
            self.send_to_node(
                *node,
                FromControl::Membership {
                    call_id,
                    members: cluster_members.clone(),
                },
            );
        }
    }

    fn send_to_node(&mut self, node: NodeId, message: FromControl) {
        self.outputs
            .push_back(ControlOutput::ToNode { node, message });
    }
}
