//! One node of a cluster, as a sans-IO state machine: its registration, the
//! control role (claimed, held or followed), its trunk to the control, and
//! — on the node that holds the role — the [`Control`] and its trunks to
//! every other node.
//!
//! The glue (the server) runs the store requests it asks for and feeds the
//! answers back, dials the control it names, writes the frames it emits on
//! the trunks, and hands it what its clients do ([`ClusterNode::handle_client`])
//! and what the trunks bring. It delivers [`NodeOutput::Deliver`] to its
//! clients and ends every local session on [`NodeOutput::SessionsLost`].
//! It keeps no session itself: the glue keeps its clients' sessions in
//! [`LocalSessions`](crate::LocalSessions) and reports them when a new
//! control asks ([`NodeOutput::ReportSessions`]).
//!
//! # What happens when
//!
//! - **Start**: the node registers (a lease it renews) and claims the
//!   control role; the store answers with the holder, which the node
//!   follows (dials), or it hosts the control itself if it got the role.
//!   Until then it takes no client ([`NodeError::NotReady`]).
//! - **A trunk breaks**: both ends keep their books and resend after the
//!   next hello. Down for longer than [`NodeConfig::trunk_grace`], the
//!   control ends the node's sessions as lost connections and the node
//!   ends them itself ([`NodeOutput::SessionsLost`]) and starts a new
//!   incarnation; a control that gave an incarnation up answers its hello
//!   with [`TrunkFrame::Reset`].
//! - **A node's registration lapses** (the store says so): the control
//!   ends its sessions at once, as for a broken trunk.
//! - **The store is unreachable**: trunks and calls go on; when the
//!   control's own lease has run out it holds new calls
//!   ([`ErrorCode::CLUSTER_UNAVAILABLE`]) until it gets the lease again. An
//!   absent registration is not trusted until a whole lease after the
//!   store came back (the nodes need that long to renew).
//! - **The control role changes hands** (a crashed holder's lease lapsed
//!   and another node took it, in a new term): every node follows the new
//!   holder and reports its sessions to it (who, muted, waiting for a
//!   resume, the call entered and its members as last published); the new
//!   control gathers the reports for two renewal periods, holding every
//!   other input, then rebuilds sessions and calls at once. Calls between
//!   users of the surviving nodes go on; members lost with the old
//!   control's node leave them (`UserLeft`), and a call left alone ends
//!   with "connection lost". Invitations that rang are cancelled for their
//!   clients. Each node keeps every request it forwarded until the answer
//!   passes through it, and sends the ones still open to the new control
//!   after its reports: each is answered once, by whichever control
//!   answered it first (see `unanswered.rs`).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use calling_api::ErrorCode;
use signaling_proto::{CallEvent, SwitchboardConfig};
use tracing::{debug, info, warn};

use crate::control::{Control, ControlOutput};
use crate::lease::{Lease, LeaseReply, LeaseTiming};
use crate::store::{ControlHolder, StoreReply, StoreRequest};
use crate::trunk::{TrunkBooks, TrunkError};
use crate::unanswered::Unanswered;
use crate::wire::{FromControl, NodeId, RestoreReport, ToControl, TrunkFrame};

/// How a node behaves.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node.
    pub node: NodeId,
    /// Where the other nodes reach its trunk listener (`host:port`).
    pub addr: String,
    /// The leases of the registry and of the control role.
    pub lease: LeaseTiming,
    /// How long a node trunk may stay down before the other side's sessions
    /// are given up.
    pub trunk_grace: Duration,
    /// How often a trunk's acknowledgements are flushed.
    pub ack_every: Duration,
    /// The most messages one side of a trunk keeps for the other.
    pub books_capacity: usize,
    /// The switchboard's rules, when this node hosts the control (its
    /// `node_id` is replaced by the term).
    pub switchboard: SwitchboardConfig,
}

impl NodeConfig {
    /// The defaults for `node` reachable at `addr`: the default leases (a
    /// dead node is noticed within 3 s), trunks given up after 3 s, acks
    /// every 100 ms, 65,536 messages kept per trunk side.
    pub fn new(node: NodeId, addr: impl Into<String>) -> Self {
        Self {
            node,
            addr: addr.into(),
            lease: LeaseTiming::DEFAULT,
            trunk_grace: Duration::from_secs(3),
            ack_every: Duration::from_millis(100),
            books_capacity: 65_536,
            switchboard: SwitchboardConfig::DEFAULT,
        }
    }
}

/// What the glue must do for the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeOutput {
    /// Run `request` against the store; answer with
    /// [`ClusterNode::handle_store_reply`] and `id`.
    Store {
        /// The request's number.
        id: u64,
        /// The request.
        request: StoreRequest,
    },
    /// Connect the control trunk to this holder (dropping any other), and
    /// keep reconnecting while it breaks, until the next `Dial` or
    /// [`NodeOutput::Hang`]. Call [`ClusterNode::handle_control_trunk_up`]
    /// on each connection.
    Dial(ControlHolder),
    /// Drop the control trunk and stop dialing: this node hosts the control.
    Hang,
    /// Write `frame` on the control trunk.
    ToControl(TrunkFrame<ToControl>),
    /// Write `frame` on `node`'s trunk (this node hosts the control).
    ToNode {
        /// The node.
        node: NodeId,
        /// The frame.
        frame: TrunkFrame<FromControl>,
    },
    /// Close `node`'s trunk (its sessions were given up, or it is in another
    /// term).
    DropNode {
        /// The node.
        node: NodeId,
    },
    /// For one of this node's clients.
    Deliver(FromControl),
    /// Every session of this node's clients is over (the control gave this
    /// node up: its trunk stayed down past the grace): close them with
    /// `code`, as after a lost connection; the clients log in again.
    SessionsLost {
        /// What to close them with.
        code: ErrorCode,
    },
    /// Something happened to a call (this node hosts the control).
    Event(CallEvent),
    /// A new control took over: answer with
    /// [`ClusterNode::report_sessions`] (see
    /// [`LocalSessions`](crate::LocalSessions)) before any other input.
    ReportSessions,
}

/// Why a client's input is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NodeError {
    /// The node follows no control yet (the store has not answered).
    #[error("this node has not found its cluster's control yet")]
    NotReady,
    /// The trunk to the control keeps too much unacknowledged: the control
    /// is not reading.
    #[error("the trunk to the cluster's control is overloaded")]
    Overloaded,
}

impl NodeError {
    /// The code a client is refused with.
    pub fn code(self) -> ErrorCode {
        ErrorCode::CLUSTER_UNAVAILABLE
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Register,
    Claim,
    LiveNodes,
    /// Deregistering, giving the role up: nothing to do with the answer.
    Leave,
}

#[derive(Debug)]
struct Following {
    holder: ControlHolder,
    incarnation: u64,
    /// Unused while the holder is this node (its clients reach the control
    /// in-process).
    books: TrunkBooks<ToControl>,
    down_since: Option<Instant>,
}

#[derive(Debug)]
struct Peer {
    incarnation: u64,
    books: TrunkBooks<FromControl>,
    down_since: Option<Instant>,
}

#[derive(Debug)]
struct Hosting {
    term: u64,
    control: Control,
    peers: HashMap<NodeId, Peer>,
    /// Incarnations given up, answered with a reset.
    given_up: HashMap<NodeId, u64>,
    /// The control this one took over from (gone, or going: not awaited
    /// for reports).
    previous: Option<NodeId>,
    /// A registry without a node is trusted from this instant on.
    registry_trusted_from: Instant,
    next_registry_read: Instant,
    holding_calls: bool,
}

/// One node. See the [module docs](self).
#[derive(Debug)]
pub struct ClusterNode {
    config: NodeConfig,
    registration: Lease,
    claim: Lease,
    /// The term this node last held the role in.
    last_term: Option<u64>,
    /// The highest term this node has heard of.
    highest_seen: u64,
    pending: HashMap<u64, Pending>,
    next_request: u64,
    following: Option<Following>,
    hosting: Option<Hosting>,
    next_ack: Instant,
    /// Stopping: no more registrations or claims.
    leaving: bool,
    /// A new control awaits this node's reports
    /// ([`ClusterNode::report_sessions`]).
    reports_due: bool,
    /// The requests forwarded to the control and not yet answered.
    unanswered: Unanswered,
    outputs: VecDeque<NodeOutput>,
}

impl ClusterNode {
    /// A node starting at `now`: it asks the store at once.
    pub fn new(config: NodeConfig, now: Instant) -> Self {
        let mut node = Self {
            unanswered: Unanswered::new(config.books_capacity),
            registration: Lease::new(config.lease, now),
            claim: Lease::new(config.lease, now),
            config,
            last_term: None,
            highest_seen: 0,
            pending: HashMap::new(),
            next_request: 1,
            following: None,
            hosting: None,
            next_ack: now,
            leaving: false,
            reports_due: false,
            outputs: VecDeque::new(),
        };
        node.handle_timeout(now);
        node
    }

    /// This node.
    pub fn id(&self) -> NodeId {
        self.config.node
    }

    /// Whether clients may log in: a control is known.
    pub fn is_ready(&self) -> bool {
        self.following.is_some()
    }

    /// Whether the control is reachable now: this node hosts it, or its
    /// trunk to it is up and greeted.
    pub fn has_control_trunk(&self) -> bool {
        self.following.as_ref().is_some_and(|following| {
            (following.holder.node == self.config.node && self.hosting.is_some())
                || following.books.is_ready()
        })
    }

    /// Requests of this node's clients the control has not answered yet
    /// (sent again to a new control after a takeover).
    pub fn open_requests(&self) -> usize {
        self.unanswered.len()
    }

    /// The control this node follows.
    pub fn control_holder(&self) -> Option<&ControlHolder> {
        self.following.as_ref().map(|following| &following.holder)
    }

    /// The control, when this node hosts it.
    pub fn control(&self) -> Option<&Control> {
        self.hosting.as_ref().map(|hosting| &hosting.control)
    }

    /// The control, when this node hosts it, for the operator's actions;
    /// call [`ClusterNode::drain_control`] afterwards.
    pub fn control_mut(&mut self) -> Option<&mut Control> {
        self.hosting.as_mut().map(|hosting| &mut hosting.control)
    }

    /// The node is stopping: it leaves the registry and, if it holds the
    /// control role, gives it up, so that another node takes it at once
    /// rather than when its lease lapses.
    pub fn leave(&mut self, now: Instant) {
        let node = self.config.node;
        self.leaving = true;
        self.request(Pending::Leave, StoreRequest::Deregister { node });
        if let Some(hosting) = &self.hosting {
            let term = hosting.term;
            self.request(Pending::Leave, StoreRequest::ReleaseControl { node, term });
        }
        self.claim.release(now);
        self.registration.release(now);
    }

    /// Routes what the control produced after an operator's action.
    pub fn drain_control(&mut self, now: Instant) {
        self.route_control(now);
    }

    /// What one of this node's clients did.
    pub fn handle_client(&mut self, now: Instant, message: ToControl) -> Result<(), NodeError> {
        let me = self.config.node;
        let Some(following) = &mut self.following else {
            return Err(NodeError::NotReady);
        };
        if following.holder.node == me {
            let Some(hosting) = &mut self.hosting else {
                return Err(NodeError::NotReady);
            };
            self.unanswered.forwarded(&message);
            hosting.control.handle_from_node(now, me, message);
            self.route_control(now);
            return Ok(());
        }
        if following.books.send(message.clone()).is_err() {
            return Err(NodeError::Overloaded);
        }
        self.unanswered.forwarded(&message);
        self.pump_control_trunk();
        Ok(())
    }

    /// The control trunk connected (to the holder last dialed).
    pub fn handle_control_trunk_up(&mut self, now: Instant) {
        let _ = now;
        if let Some(following) = &mut self.following {
            following.books.connected();
            following.down_since = None;
        }
        self.pump_control_trunk();
    }

    /// The control trunk broke.
    pub fn handle_control_trunk_down(&mut self, now: Instant) {
        if let Some(following) = &mut self.following {
            following.books.disconnected();
            following.down_since.get_or_insert(now);
        }
    }

    /// A frame from the control. An error: the glue drops the connection
    /// (and redials).
    pub fn handle_control_frame(
        &mut self,
        now: Instant,
        frame: TrunkFrame<FromControl>,
    ) -> Result<(), TrunkError> {
        let Some(following) = &mut self.following else {
            return Ok(());
        };
        if frame == TrunkFrame::Reset {
            warn!(control = %following.holder.node, "the control gave this node's sessions up");
            self.start_new_incarnation(now);
            if let Some(following) = &mut self.following {
                following.books.connected();
            }
            self.pump_control_trunk();
            return Ok(());
        }
        if let Some(message) = following.books.handle_frame(frame)? {
            self.unanswered.delivered(&message);
            self.outputs.push_back(NodeOutput::Deliver(message));
        }
        self.pump_control_trunk();
        Ok(())
    }

    /// A node's trunk connected to this node's listener, or broke: see
    /// [`ClusterNode::handle_node_frame`] (the node is named by its hello)
    /// and [`ClusterNode::handle_node_trunk_down`].
    pub fn handle_node_trunk_down(&mut self, now: Instant, node: NodeId) {
        if let Some(peer) = self
            .hosting
            .as_mut()
            .and_then(|hosting| hosting.peers.get_mut(&node))
        {
            peer.books.disconnected();
            peer.down_since.get_or_insert(now);
        }
    }

    /// A frame from `node` on its trunk to this node's control. An error:
    /// the glue drops that connection.
    pub fn handle_node_frame(
        &mut self,
        now: Instant,
        node: NodeId,
        frame: TrunkFrame<ToControl>,
    ) -> Result<(), TrunkError> {
        let me = self.config.node;
        let capacity = self.config.books_capacity;
        let Some(hosting) = &mut self.hosting else {
            return Err(TrunkError::NotHosting);
        };
        if let TrunkFrame::Hello {
            term, incarnation, ..
        } = &frame
        {
            if *term != hosting.term {
                return Err(TrunkError::OtherTerm {
                    ours: hosting.term,
                    peer: *term,
                });
            }
            if hosting.given_up.get(&node) == Some(incarnation) {
                self.outputs.push_back(NodeOutput::ToNode {
                    node,
                    frame: TrunkFrame::Reset,
                });
                return Ok(());
            }
            let known = hosting.peers.get(&node).map(|peer| peer.incarnation);
            if known != Some(*incarnation) {
                if known.is_some() {
                    // The node started afresh before this control gave the
                    // old incarnation up: its sessions are over all the same.
                    hosting.control.handle_node_lost(now, node);
                }
                let mut books = TrunkBooks::new(me, hosting.term, 0, capacity);
                books.connected();
                hosting.peers.insert(
                    node,
                    Peer {
                        incarnation: *incarnation,
                        books,
                        down_since: None,
                    },
                );
            } else if let Some(peer) = hosting.peers.get_mut(&node) {
                peer.books.connected();
                peer.down_since = None;
            }
        }
        let Some(peer) = hosting.peers.get_mut(&node) else {
            return Err(TrunkError::OutOfPlace("a frame before the hello"));
        };
        if let Some(message) = peer.books.handle_frame(frame)? {
            hosting.control.handle_from_node(now, node, message);
        }
        self.route_control(now);
        Ok(())
    }

    /// The store's answer to request `id`.
    pub fn handle_store_reply(&mut self, now: Instant, id: u64, reply: StoreReply) {
        let Some(pending) = self.pending.remove(&id) else {
            return;
        };
        match (pending, reply) {
            (Pending::Register, StoreReply::Unreachable) => {
                self.registration.handle_reply(now, LeaseReply::Unreachable);
            }
            (Pending::Register, _) => self.registration.handle_reply(now, LeaseReply::Granted),
            (Pending::Claim, StoreReply::Control(Some(holder))) => self.claimed(now, holder),
            (Pending::Claim, StoreReply::Control(None)) => {
                // Nobody holds the role, and this node only asked: the
                // control it follows is alive and will take it back.
                self.claim.handle_reply(now, LeaseReply::Refused);
            }
            (Pending::Claim, _) => {
                self.claim.handle_reply(now, LeaseReply::Unreachable);
                self.store_unreachable(now);
            }
            (Pending::LiveNodes, StoreReply::Nodes(nodes)) => {
                let live: BTreeSet<NodeId> = nodes.into_iter().map(|(node, _)| node).collect();
                self.registry_read(now, &live);
            }
            (Pending::LiveNodes, _) => self.store_unreachable(now),
            (Pending::Leave, _) => {}
        }
        self.check_hold(now);
    }

    /// A store request got no answer in time (the glue gave up on it).
    pub fn handle_store_timeout(&mut self, now: Instant, id: u64) {
        self.handle_store_reply(now, id, StoreReply::Unreachable);
    }

    /// Does what is due: store requests, given-up trunks, acknowledgements,
    /// the control's timers.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.leaving {
            return;
        }
        if self.registration.poll_request(now).is_some() {
            self.request(
                Pending::Register,
                StoreRequest::Register {
                    node: self.config.node,
                    addr: self.config.addr.clone(),
                    lease: self.config.lease.duration,
                },
            );
        }
        if self.claim.poll_request(now).is_some() {
            self.request(
                Pending::Claim,
                StoreRequest::ClaimControl {
                    node: self.config.node,
                    addr: self.config.addr.clone(),
                    term: self.last_term,
                    highest_seen: self.highest_seen,
                    take: self.would_take(now),
                    lease: self.config.lease.duration,
                },
            );
        }
        let grace = self.config.trunk_grace;
        let control_trunk_lost = self.following.as_ref().is_some_and(|following| {
            following.holder.node != self.config.node
                && following
                    .down_since
                    .is_some_and(|since| now >= since + grace)
        });
        if control_trunk_lost {
            warn!("the trunk to the control is down too long: this node's sessions are over");
            self.start_new_incarnation(now);
        }
        if let Some(hosting) = &mut self.hosting {
            let lost: Vec<NodeId> = hosting
                .peers
                .iter()
                .filter(|(_, peer)| peer.down_since.is_some_and(|since| now >= since + grace))
                .map(|(node, _)| *node)
                .collect();
            for node in lost {
                self.give_up_node(now, node);
            }
        }
        let read_registry = self
            .hosting
            .as_ref()
            .is_some_and(|hosting| now >= hosting.next_registry_read);
        if read_registry {
            if let Some(hosting) = &mut self.hosting {
                hosting.next_registry_read = now + self.config.lease.renew_every;
            }
            self.request(Pending::LiveNodes, StoreRequest::LiveNodes);
        }
        if now >= self.next_ack {
            self.next_ack = now + self.config.ack_every;
            self.flush_acks();
        }
        if let Some(hosting) = &mut self.hosting {
            hosting.control.handle_timeout(now);
        }
        self.check_hold(now);
        self.route_control(now);
        self.pump_control_trunk();
    }

    /// When to call [`ClusterNode::handle_timeout`] next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.leaving {
            return None;
        }
        let grace = self.config.trunk_grace;
        let control_trunk = self
            .following
            .as_ref()
            .and_then(|following| following.down_since)
            .map(|since| since + grace);
        let hosting = self.hosting.iter().flat_map(|hosting| {
            hosting
                .peers
                .values()
                .filter_map(|peer| peer.down_since.map(|since| since + grace))
                .chain([hosting.next_registry_read])
                .chain(hosting.control.poll_timeout())
        });
        [
            self.registration.poll_timeout(),
            self.claim.poll_timeout(),
            Some(self.next_ack),
            control_trunk,
        ]
        .into_iter()
        .flatten()
        .chain(hosting)
        .min()
    }

    /// The next thing to do, until `None`. Drain it after every input.
    pub fn poll_output(&mut self) -> Option<NodeOutput> {
        self.outputs.pop_front()
    }

    fn request(&mut self, kind: Pending, request: StoreRequest) {
        let id = self.next_request;
        self.next_request += 1;
        self.pending.insert(id, kind);
        self.outputs.push_back(NodeOutput::Store { id, request });
    }

    /// Whether a claim takes the role if it is free: always for the holder
    /// and a node that follows nobody; for a follower only once its trunk to
    /// the control has been down for a renewal period. A store that
    /// restarted without its data then gets its old holder back, not a
    /// race that would end every session.
    fn would_take(&self, now: Instant) -> bool {
        match &self.following {
            None => true,
            Some(following) => {
                self.hosting.is_some()
                    || following.holder.node == self.config.node
                    || following
                        .down_since
                        .is_some_and(|since| now >= since + self.config.lease.renew_every)
            }
        }
    }

    /// The store named the control's holder after our claim.
    fn claimed(&mut self, now: Instant, holder: ControlHolder) {
        let me = self.config.node;
        self.highest_seen = self.highest_seen.max(holder.term);
        if holder.node == me {
            self.claim.handle_reply(now, LeaseReply::Granted);
            self.last_term = Some(holder.term);
            if self.hosting.as_ref().map(|hosting| hosting.term) != Some(holder.term) {
                self.host(now, holder.term);
            }
        } else {
            self.claim.handle_reply(now, LeaseReply::Refused);
            let control_quiet = self
                .following
                .as_ref()
                .is_none_or(|following| following.down_since.is_some());
            if control_quiet {
                // The holder may be gone: learn of its successor sooner
                // than a renewal period.
                self.claim.ask_by(now + self.config.lease.retry_after);
            }
            if self.hosting.is_some() {
                warn!(holder = %holder.node, term = holder.term, "another node holds the control now: stepping down");
                self.step_down();
            }
        }
        let same = self.following.as_ref().is_some_and(|following| {
            following.holder.node == holder.node && following.holder.term == holder.term
        });
        if !same {
            self.follow(now, holder);
        }
    }

    fn host(&mut self, now: Instant, term: u64) {
        info!(term, node = %self.config.node, "this node hosts the cluster's control");
        if self.hosting.is_some() {
            self.step_down();
        }
        let mut switchboard = self.config.switchboard.clone();
        // Terms are never reused, so call ids of different terms never
        // collide (the low 32 bits count calls within a term).
        switchboard.node_id = u32::try_from(term % (1 << 32)).unwrap_or(u32::MAX);
        // A control after another gathers the nodes' sessions first; the
        // first control of a cluster has nobody to take over from.
        let taking_over = term > 1;
        let control = if taking_over {
            Control::taking_over(switchboard, now + self.config.lease.renew_every * 2)
        } else {
            Control::new(switchboard)
        };
        let previous = self
            .following
            .as_ref()
            .map(|following| following.holder.node)
            .filter(|node| *node != self.config.node);
        self.hosting = Some(Hosting {
            term,
            control,
            peers: HashMap::new(),
            given_up: HashMap::new(),
            previous,
            registry_trusted_from: now + self.config.lease.duration,
            next_registry_read: now + self.config.lease.renew_every,
            holding_calls: false,
        });
        if taking_over {
            // Who is alive says whose reports to wait for: the window
            // closes when they are in, not when it runs out.
            self.request(Pending::LiveNodes, StoreRequest::LiveNodes);
        }
    }

    fn step_down(&mut self) {
        if let Some(hosting) = self.hosting.take() {
            let mut nodes: Vec<NodeId> = hosting.peers.keys().copied().collect();
            nodes.sort();
            for node in nodes {
                self.outputs.push_back(NodeOutput::DropNode { node });
            }
        }
    }

    fn follow(&mut self, now: Instant, holder: ControlHolder) {
        let me = self.config.node;
        info!(control = %holder.node, term = holder.term, "following the cluster's control");
        // A new control: this node's sessions are reported to it, and the
        // invitations that rang them are over (a new control does not know
        // them).
        let taking_over = self.following.is_some();
        if taking_over {
            self.reports_due = true;
            self.outputs.push_back(NodeOutput::ReportSessions);
        }
        self.outputs.push_back(if holder.node == me {
            NodeOutput::Hang
        } else {
            NodeOutput::Dial(holder.clone())
        });
        let books = TrunkBooks::new(me, holder.term, 0, self.config.books_capacity);
        // Down until it connects (unless the control is this node).
        let down_since = (holder.node != me).then_some(now);
        let local = holder.node == me;
        self.following = Some(Following {
            holder,
            incarnation: 0,
            books,
            down_since,
        });
        if local {
            self.route_control(now);
        }
    }

    /// Answers [`NodeOutput::ReportSessions`]: this node's sessions, for
    /// the new control to rebuild (an answer nobody asked for is ignored).
    pub fn report_sessions(&mut self, now: Instant, reports: Vec<RestoreReport>) {
        if !std::mem::take(&mut self.reports_due) {
            return;
        }
        let me = self.config.node;
        let Some(following) = &mut self.following else {
            return;
        };
        // What the old control left unanswered follows the reports, so the
        // new control knows every session a request comes from.
        let resent: Vec<ToControl> = self.unanswered.to_resend().cloned().collect();
        if !resent.is_empty() {
            info!(
                requests = resent.len(),
                "resending the requests the old control left unanswered"
            );
        }
        let messages = reports
            .into_iter()
            .map(ToControl::Restore)
            .chain([ToControl::RestoreDone])
            .chain(resent);
        if following.holder.node == me {
            if let Some(hosting) = &mut self.hosting {
                for message in messages {
                    hosting.control.handle_from_node(now, me, message);
                }
            }
            self.route_control(now);
        } else {
            for message in messages {
                if following.books.send(message).is_err() {
                    warn!("too many sessions to report to the new control");
                    break;
                }
            }
            self.pump_control_trunk();
        }
    }

    /// This node's sessions are over on the control: tell the clients and
    /// start new books (the trunk reconnects with a new hello).
    fn start_new_incarnation(&mut self, now: Instant) {
        let me = self.config.node;
        let capacity = self.config.books_capacity;
        if let Some(following) = &mut self.following {
            following.incarnation += 1;
            following.books =
                TrunkBooks::new(me, following.holder.term, following.incarnation, capacity);
            following.down_since = following.down_since.map(|_| now);
            self.unanswered.clear();
            self.outputs.push_back(NodeOutput::SessionsLost {
                code: ErrorCode::CONNECTION_LOST,
            });
        }
    }

    fn give_up_node(&mut self, now: Instant, node: NodeId) {
        let Some(hosting) = &mut self.hosting else {
            return;
        };
        if let Some(peer) = hosting.peers.remove(&node) {
            warn!(%node, "a node is gone: its sessions end");
            hosting.given_up.insert(node, peer.incarnation);
            hosting.control.handle_node_lost(now, node);
            self.outputs.push_back(NodeOutput::DropNode { node });
        }
        self.route_control(now);
    }

    fn registry_read(&mut self, now: Instant, live: &BTreeSet<NodeId>) {
        let Some(hosting) = &mut self.hosting else {
            return;
        };
        if hosting.control.is_restoring() {
            let mut expected = live.clone();
            if let Some(previous) = hosting.previous {
                expected.remove(&previous);
            }
            hosting.control.expect_reports(now, expected);
            self.route_control(now);
        }
        let Some(hosting) = &self.hosting else {
            return;
        };
        if now < hosting.registry_trusted_from {
            return;
        }
        let gone: Vec<NodeId> = hosting
            .peers
            .keys()
            .filter(|node| !live.contains(node))
            .copied()
            .collect();
        for node in gone {
            debug!(%node, "the registry no longer has the node");
            self.give_up_node(now, node);
        }
    }

    fn store_unreachable(&mut self, now: Instant) {
        if let Some(hosting) = &mut self.hosting {
            hosting.registry_trusted_from = now + self.config.lease.duration;
        }
    }

    /// New calls wait while the control's lease is not held: another node
    /// may be taking the role over.
    fn check_hold(&mut self, now: Instant) {
        let hold = !self.claim.holds(now);
        let Some(hosting) = &mut self.hosting else {
            return;
        };
        if hosting.holding_calls != hold {
            hosting.holding_calls = hold;
            if !hold {
                info!("the control's lease is back: new calls accepted");
                hosting.control.switchboard_mut().hold_new_calls(None);
            } else {
                warn!("the control's lease ran out (store unreachable): new calls held");
                hosting.control.switchboard_mut().hold_new_calls(Some((
                    ErrorCode::CLUSTER_UNAVAILABLE,
                    "the cluster's store is unreachable: no new calls for now",
                )));
            }
        }
    }

    fn flush_acks(&mut self) {
        if let Some(following) = &mut self.following {
            following.books.flush_ack();
        }
        if let Some(hosting) = &mut self.hosting {
            for peer in hosting.peers.values_mut() {
                peer.books.flush_ack();
            }
        }
        self.pump_node_trunks();
    }

    /// Moves the control's outputs to the trunks (or to this node's own
    /// clients).
    fn route_control(&mut self, now: Instant) {
        let me = self.config.node;
        let Some(hosting) = &mut self.hosting else {
            return;
        };
        let mut overloaded = Vec::new();
        let mut local = Vec::new();
        while let Some(output) = hosting.control.poll_output() {
            match output {
                ControlOutput::Event(event) => self.outputs.push_back(NodeOutput::Event(event)),
                ControlOutput::ToNode { node, message } if node == me => {
                    local.push(message);
                }
                ControlOutput::ToNode { node, message } => match hosting.peers.get_mut(&node) {
                    Some(peer) => {
                        if peer.books.send(message).is_err() {
                            overloaded.push(node);
                        }
                    }
                    None => debug!(%node, "a message for a node without a trunk: dropped"),
                },
            }
        }
        for message in local {
            self.unanswered.delivered(&message);
            self.outputs.push_back(NodeOutput::Deliver(message));
        }
        self.pump_node_trunks();
        for node in overloaded {
            warn!(%node, "a node does not acknowledge: given up");
            self.give_up_node(now, node);
        }
    }

    fn pump_node_trunks(&mut self) {
        let Some(hosting) = &mut self.hosting else {
            return;
        };
        let mut nodes: Vec<NodeId> = hosting.peers.keys().copied().collect();
        nodes.sort();
        for node in nodes {
            if let Some(peer) = hosting.peers.get_mut(&node) {
                while let Some(frame) = peer.books.poll_frame() {
                    self.outputs.push_back(NodeOutput::ToNode { node, frame });
                }
            }
        }
    }

    fn pump_control_trunk(&mut self) {
        if let Some(following) = &mut self.following {
            while let Some(frame) = following.books.poll_frame() {
                self.outputs.push_back(NodeOutput::ToControl(frame));
            }
        }
    }
}
