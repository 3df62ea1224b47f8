//! The control: the cluster's one switchboard of record, hosted for every
//! node's clients.
//!
//! Every rule of the single-node switchboard (busy, glare, timeouts with one
//! clock, a second login kicking the first, `onCallEnd` once) holds across
//! nodes because there is one [`Switchboard`] deciding: the control wraps
//! it, gives each node's connection a switchboard [`ConnId`] of its own,
//! and routes the switchboard's outputs to the nodes the connections are
//! on. A node that is gone (its trunk lost for longer than the cluster
//! allows, or its lease lapsed) has its sessions ended at once as lost
//! connections: their calls end for the others with
//! [`EndReason::ConnectionLost`](calling_api::EndReason::ConnectionLost),
//! and nobody stays busy.
//!
//! A control that takes over from another ([`Control::taking_over`])
//! first gathers, for a short window, the nodes' reports of the sessions
//! and calls they had with the old one, holding every other input, then
//! rebuilds them at once ([`Switchboard::handle_restore`]) and goes on with
//! what it held: calls between users on the surviving nodes go on. The
//! window closes early once every node it expects
//! ([`Control::expect_reports`]) has said it reported everything.
//!
//! Sans-IO, like the switchboard: inputs carry `now`, outputs are drained
//! with [`Control::poll_output`] after every input.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Instant;

use calling_api::{CallId, CallType, UserId};
use signaling_proto::{
    CallEvent, ConnId, CountedKeyMap, Output, RestoredCall, RestoredSession, Switchboard,
    SwitchboardConfig,
};
use tracing::{debug, warn};

use crate::wire::{ClusterMember, FromControl, NodeConn, NodeId, RestoreReport, ToControl};

/// What the glue must do for the control.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlOutput {
    /// Send `message` to `node` over its trunk.
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
    by_switchboard: CountedKeyMap<ConnId, NodeConn>,
    by_node: CountedKeyMap<NodeConn, ConnId>,
    /// The nodes told about each call's membership, for the empty
    /// membership a node must get when its last member leaves.
    told_membership: HashMap<CallId, BTreeSet<NodeId>>,
    next_conn: u64,
    outputs: VecDeque<ControlOutput>,
    /// While taking over: the reports gathered and the inputs held.
    restoring: Option<Restoring>,
}

/// A takeover's window.
#[derive(Debug)]
struct Restoring {
    until: Instant,
    reports: Vec<(NodeId, RestoreReport)>,
    held: Vec<(NodeId, ToControl)>,
    /// The nodes whose reports close the window before `until`, once known.
    expected: Option<BTreeSet<NodeId>>,
    /// The nodes that reported everything.
    done: BTreeSet<NodeId>,
}

impl Restoring {
    fn complete(&self) -> bool {
        self.expected
            .as_ref()
            .is_some_and(|expected| expected.is_subset(&self.done))
    }
}

impl Control {
    /// A control whose switchboard follows `config` (its `node_id` is the
    /// hosting node's).
    pub fn new(config: SwitchboardConfig) -> Self {
        Self {
            switchboard: Switchboard::new(config),
            by_switchboard: CountedKeyMap::default(),
            by_node: CountedKeyMap::default(),
            told_membership: HashMap::new(),
            next_conn: 1,
            outputs: VecDeque::new(),
            restoring: None,
        }
    }

    /// A control taking over from another: until `until` it gathers the
    /// nodes' reports and holds every other input (see the [module
    /// docs](self)).
    pub fn taking_over(config: SwitchboardConfig, until: Instant) -> Self {
        let mut control = Self::new(config);
        control.restoring = Some(Restoring {
            until,
            reports: Vec::new(),
            held: Vec::new(),
            expected: None,
            done: BTreeSet::new(),
        });
        control
    }

    /// While taking over: the nodes alive in the cluster, each of which
    /// reports its sessions; once all have, the window closes without
    /// waiting for its end. A node that reports later is restored on its
    /// own, as after the window.
    pub fn expect_reports(&mut self, now: Instant, nodes: BTreeSet<NodeId>) {
        if let Some(restoring) = &mut self.restoring {
            restoring.expected = Some(nodes);
            if restoring.complete() {
                self.finish_restoring(now);
            }
        }
    }

    /// Whether the takeover window is still open.
    pub fn is_restoring(&self) -> bool {
        self.restoring.is_some()
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
        if let Some(restoring) = &mut self.restoring {
            match message {
                ToControl::Restore(report) => restoring.reports.push((node, report)),
                ToControl::RestoreDone => {
                    restoring.done.insert(node);
                    if restoring.complete() {
                        self.finish_restoring(now);
                    }
                }
                other => restoring.held.push((node, other)),
            }
            return;
        }
        self.apply(now, node, message);
        self.route_outputs();
    }

    fn apply(&mut self, now: Instant, node: NodeId, message: ToControl) {
        match message {
            ToControl::Login {
                conn,
                user,
                protocol_version,
                device,
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
                    .handle_device_login(now, ours, user, protocol_version, device);
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
            // After the window: a late node's sessions, one by one (their
            // calls ended for them when the window closed).
            ToControl::Restore(report) => self.restore(now, vec![(node, report)]),
            ToControl::RestoreDone => {}
        }
    }

    /// Rebuilds reported sessions and calls on the switchboard.
    fn restore(&mut self, now: Instant, reports: Vec<(NodeId, RestoreReport)>) {
        let mut sessions = Vec::with_capacity(reports.len());
        self.by_node.reserve(reports.len());
        self.by_switchboard.reserve(reports.len());
        for (node, report) in reports {
            let at = NodeConn {
                node,
                conn: report.conn,
            };
            if self.by_node.contains_key(&at) {
                continue;
            }
            let ours = ConnId(self.next_conn);
            self.next_conn += 1;
            self.by_node.insert(at, ours);
            self.by_switchboard.insert(ours, at);
            if let Some(call) = &report.call {
                self.told_membership
                    .entry(call.call_id)
                    .or_default()
                    .insert(node);
            }
            sessions.push(RestoredSession {
                conn: ours,
                user: report.user,
                device_login: report.device,
                protocol_version: report.protocol_version,
                muted: report.muted,
                detached: report.detached,
                call: report.call.map(|call| RestoredCall {
                    call_id: call.call_id,
                    call_type: call.call_type,
                    flow: call.flow,
                    members: call.members,
                }),
            });
        }
        debug!(
            sessions = sessions.len(),
            "restoring sessions reported by the nodes"
        );
        self.switchboard.handle_restore(now, sessions);
    }

    /// `node` is gone: its trunk is lost for good or its lease lapsed. Its
    /// sessions end now, as lost connections (no resume: the node that
    /// kept their books is gone).
    pub fn handle_node_lost(&mut self, now: Instant, node: NodeId) {
        let mut window_complete = false;
        if let Some(restoring) = &mut self.restoring {
            restoring.reports.retain(|(from, _)| *from != node);
            restoring.held.retain(|(from, _)| *from != node);
            restoring.done.remove(&node);
            if let Some(expected) = &mut restoring.expected {
                expected.remove(&node);
            }
            window_complete = restoring.complete();
        }
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
        if window_complete {
            self.finish_restoring(now);
        }
    }

    /// Fires the switchboard's due timers, and closes a takeover's window
    /// when its time has come.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self
            .restoring
            .as_ref()
            .is_some_and(|restoring| now >= restoring.until)
        {
            self.finish_restoring(now);
        }
        self.switchboard.handle_timeout(now);
        self.route_outputs();
    }

    /// Closes a takeover's window: rebuilds what was reported, then applies
    /// what was held, in order.
    fn finish_restoring(&mut self, now: Instant) {
        let Some(restoring) = self.restoring.take() else {
            return;
        };
        debug!(
            nodes = restoring.done.len(),
            early = now < restoring.until,
            "the takeover's window closes"
        );
        self.restore(now, restoring.reports);
        self.route_outputs();
        for (node, message) in restoring.held {
            self.apply(now, node, message);
            self.route_outputs();
        }
    }

    /// When to call [`Control::handle_timeout`] next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let window = self.restoring.as_ref().map(|restoring| restoring.until);
        match (window, self.switchboard.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
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
        if self.switchboard.user_of(ours).is_none()
            && let Some(at) = self.by_switchboard.remove(&ours)
        {
            self.by_node.remove(&at);
            // The node forgets it too (its connection is gone already).
            self.send_to_node(
                at.node,
                FromControl::Close {
                    conn: at.conn,
                    code: calling_api::ErrorCode::CONNECTION_LOST,
                },
            );
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
        // An empty membership (the call is over) needs no type.
        let call_type = self
            .switchboard
            .call_type(call_id)
            .unwrap_or(CallType::Audio);
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
                    call_type,
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
