//! A cluster on a virtual clock: nodes, a [`MemoryStore`], trunks with
//! latency that break when told, and on each node a hub that keeps its
//! clients' inboxes. Every frame crosses a trunk encoded (postcard), as in
//! the server.

#![allow(
    clippy::unwrap_used,
    clippy::too_many_lines,
    dead_code,
    unreachable_pub
)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use calling_api::{CallType, EndReason, ErrorCode, UserId};
use calling_cluster::wire::{decode, encode};
use calling_cluster::{
    ClusterMember, ClusterNode, ControlHolder, FromControl, LocalSessions, MemoryStore, NodeConfig,
    NodeId, NodeOutput, StoreReply, StoreRequest, ToControl, TrunkFrame,
};
use signaling_proto::{CallEvent, ClientMessage, DeviceLogin, RequestId, ServerMessage};

/// The simulation's step.
pub const TICK: Duration = Duration::from_millis(5);

/// A small deterministic generator (xorshift64*).
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Self(seed.max(1))
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// One client connection on a node, as its hub sees it.
#[derive(Debug, Default)]
pub struct Client {
    pub user: Option<UserId>,
    pub inbox: Vec<ServerMessage>,
    pub closed: Option<ErrorCode>,
    next_request: u32,
}

/// A node process: the state machine and its hub.
#[derive(Debug)]
pub struct Proc {
    pub node: ClusterNode,
    /// Its clients' sessions, as the server's cluster board keeps them.
    pub sessions: LocalSessions,
    pub clients: BTreeMap<u64, Client>,
    pub routes: HashMap<calling_api::CallId, Vec<ClusterMember>>,
    pub sessions_lost: u32,
    pub events: Vec<CallEvent>,
    /// Refusals of client inputs (node not ready, overloaded).
    pub refused: u32,
    next_conn: u64,
    /// The control trunk: the holder dialed, and whether it is up.
    dialing: Option<ControlHolder>,
    link_up: bool,
    next_dial: Instant,
}

/// Frames in flight one way on one trunk, each with its arrival time.
#[derive(Debug, Default)]
struct Wire {
    to_control: VecDeque<(Instant, Vec<u8>)>,
    to_node: VecDeque<(Instant, Vec<u8>)>,
}

/// The whole cluster.
#[derive(Debug)]
pub struct Cluster {
    pub now: Instant,
    pub start: Instant,
    pub procs: BTreeMap<NodeId, Proc>,
    pub store: MemoryStore,
    /// Store answers in flight: (arrival, node, id, reply).
    store_replies: VecDeque<(Instant, NodeId, u64, StoreReply)>,
    /// Trunks by the dialing node: (the control's node, wires).
    links: BTreeMap<NodeId, (NodeId, Wire)>,
    /// Nodes killed at: their peers notice after `crash_notice`.
    dying: Vec<(Instant, NodeId)>,
    pub rng: Rng,
    /// One-way trunk latency: base plus up to this much jitter.
    pub latency: Duration,
    pub jitter: Duration,
    pub store_delay: Duration,
    /// How long a killed node's trunks look alive to its peers.
    pub crash_notice: Duration,
    /// Nodes whose control trunk cannot connect (cut off from the others,
    /// not from the store).
    pub cut_off: std::collections::BTreeSet<NodeId>,
}

impl Cluster {
    /// `n` nodes, started together.
    pub fn new(n: u32, seed: u64) -> Self {
        let start = Instant::now();
        let mut cluster = Self {
            now: start,
            start,
            procs: BTreeMap::new(),
            store: MemoryStore::new(),
            store_replies: VecDeque::new(),
            links: BTreeMap::new(),
            dying: Vec::new(),
            rng: Rng::new(seed),
            latency: Duration::from_millis(1),
            jitter: Duration::from_millis(3),
            store_delay: Duration::from_millis(1),
            crash_notice: Duration::from_secs(1),
            cut_off: std::collections::BTreeSet::new(),
        };
        for index in 1..=n {
            cluster.start_node(NodeId(index));
        }
        cluster
    }

    pub fn start_node(&mut self, id: NodeId) {
        let config = NodeConfig::new(id, format!("10.0.0.{}:4433", id.0));
        let sessions = LocalSessions::new(id, config.switchboard.resume_grace);
        let node = ClusterNode::new(config, self.now);
        self.procs.insert(
            id,
            Proc {
                node,
                sessions,
                clients: BTreeMap::new(),
                routes: HashMap::new(),
                sessions_lost: 0,
                events: Vec::new(),
                refused: 0,
                next_conn: 1,
                dialing: None,
                link_up: false,
                next_dial: self.now,
            },
        );
        self.drain(id);
    }

    /// Runs until every node follows the same control with its trunk up.
    pub fn settle(&mut self) {
        let deadline = self.now + Duration::from_secs(10);
        while self.now < deadline {
            self.run_for(Duration::from_millis(50));
            if self.settled() {
                return;
            }
        }
        panic!("the cluster did not settle: {:#?}", self.holders());
    }

    /// Runs until every node follows one control other than `old` (at
    /// most `limit`); whether that happened.
    pub fn wait_for_handover(&mut self, old: NodeId, limit: Duration) -> bool {
        self.run_until(limit, |cluster| {
            cluster.settled()
                && cluster
                    .holders()
                    .values()
                    .all(|holder| holder.is_some_and(|(node, _)| node != old))
        })
    }

    pub fn settled(&self) -> bool {
        let holders = self.holders();
        let first = holders.values().next().cloned().flatten();
        first.is_some()
            && holders.values().all(|holder| *holder == first)
            && self
                .procs
                .iter()
                .all(|(id, proc)| first.is_some_and(|(holder, _)| holder == *id) || proc.link_up)
    }

    pub fn holders(&self) -> BTreeMap<NodeId, Option<(NodeId, u64)>> {
        self.procs
            .iter()
            .map(|(id, proc)| {
                (
                    *id,
                    proc.node
                        .control_holder()
                        .map(|holder| (holder.node, holder.term)),
                )
            })
            .collect()
    }

    /// The node that hosts the control.
    pub fn control(&self) -> NodeId {
        *self
            .procs
            .iter()
            .find(|(_, proc)| proc.node.control().is_some())
            .map(|(id, _)| id)
            .expect("a control")
    }

    /// A node that does not host the control.
    pub fn follower(&self, skip: usize) -> NodeId {
        let control = self.control();
        *self
            .procs
            .keys()
            .filter(|id| **id != control)
            .nth(skip)
            .expect("enough followers")
    }

    pub fn run_for(&mut self, span: Duration) {
        let end = self.now + span;
        while self.now < end {
            self.now += TICK;
            self.step();
        }
    }

    /// Runs until `done` holds (checked every tick), at most `limit`.
    pub fn run_until(&mut self, limit: Duration, mut done: impl FnMut(&Self) -> bool) -> bool {
        let end = self.now + limit;
        while self.now < end {
            if done(self) {
                return true;
            }
            self.now += TICK;
            self.step();
        }
        done(self)
    }

    fn step(&mut self) {
        let now = self.now;
        // Crashed nodes: their peers notice.
        let noticed: Vec<NodeId> = self
            .dying
            .iter()
            .filter(|(at, _)| now >= *at + self.crash_notice)
            .map(|(_, id)| *id)
            .collect();
        self.dying.retain(|(at, _)| now < *at + self.crash_notice);
        for dead in noticed {
            self.break_trunks_of(dead);
        }
        // Store answers.
        while self
            .store_replies
            .front()
            .is_some_and(|(at, ..)| *at <= now)
        {
            let (_, id, request, reply) = self.store_replies.pop_front().unwrap();
            if let Some(proc) = self.procs.get_mut(&id) {
                proc.node.handle_store_reply(now, request, reply);
                self.drain(id);
            }
        }
        // Frames.
        let dialers: Vec<NodeId> = self.links.keys().copied().collect();
        for dialer in dialers {
            while let Some((control, wire)) = self.links.get_mut(&dialer) {
                let control = *control;
                let up = wire.to_control.front().is_some_and(|(at, _)| *at <= now);
                let down = wire.to_node.front().is_some_and(|(at, _)| *at <= now);
                if up {
                    let (_, bytes) = wire.to_control.pop_front().unwrap();
                    let frame: TrunkFrame<ToControl> = decode(&bytes).unwrap();
                    let Some(proc) = self.procs.get_mut(&control) else {
                        break;
                    };
                    if proc.node.handle_node_frame(now, dialer, frame).is_err() {
                        self.break_trunk(dialer);
                    }
                    self.drain(control);
                } else if down {
                    let (_, bytes) = wire.to_node.pop_front().unwrap();
                    let frame: TrunkFrame<FromControl> = decode(&bytes).unwrap();
                    let Some(proc) = self.procs.get_mut(&dialer) else {
                        break;
                    };
                    if proc.node.handle_control_frame(now, frame).is_err() {
                        self.break_trunk(dialer);
                    }
                    self.drain(dialer);
                } else {
                    break;
                }
            }
        }
        // Dials and timers.
        let ids: Vec<NodeId> = self.procs.keys().copied().collect();
        for id in ids {
            self.maybe_dial(id);
            let proc = self.procs.get_mut(&id).unwrap();
            if proc.node.poll_timeout().is_some_and(|at| at <= now) {
                proc.node.handle_timeout(now);
            }
            self.drain(id);
        }
    }

    fn maybe_dial(&mut self, id: NodeId) {
        let now = self.now;
        let proc = self.procs.get_mut(&id).unwrap();
        let Some(holder) = proc.dialing.clone() else {
            return;
        };
        if proc.link_up || now < proc.next_dial {
            return;
        }
        proc.next_dial = now + Duration::from_millis(200);
        let reachable = self
            .procs
            .get(&holder.node)
            .is_some_and(|target| target.node.control().is_some())
            && !self.dying.iter().any(|(_, dead)| *dead == holder.node)
            && !self.cut_off.contains(&id);
        if !reachable {
            return;
        }
        self.links.insert(id, (holder.node, Wire::default()));
        let proc = self.procs.get_mut(&id).unwrap();
        proc.link_up = true;
        proc.node.handle_control_trunk_up(now);
        self.drain(id);
    }

    /// Breaks `dialer`'s control trunk: both ends notice now.
    pub fn break_trunk(&mut self, dialer: NodeId) {
        let now = self.now;
        if let Some((control, _)) = self.links.remove(&dialer) {
            if let Some(proc) = self.procs.get_mut(&control) {
                proc.node.handle_node_trunk_down(now, dialer);
            }
            self.drain(control);
        }
        if let Some(proc) = self.procs.get_mut(&dialer)
            && proc.link_up
        {
            proc.link_up = false;
            proc.node.handle_control_trunk_down(now);
        }
        self.drain(dialer);
    }

    fn break_trunks_of(&mut self, dead: NodeId) {
        let touching: Vec<NodeId> = self
            .links
            .iter()
            .filter(|(dialer, (control, _))| **dialer == dead || *control == dead)
            .map(|(dialer, _)| *dialer)
            .collect();
        for dialer in touching {
            self.break_trunk(dialer);
        }
    }

    /// SIGKILL: the process is gone; its trunks look alive to the others
    /// for `crash_notice`, its store entries lapse.
    pub fn kill(&mut self, id: NodeId) {
        self.procs.remove(&id);
        self.dying.push((self.now, id));
        self.store_replies.retain(|(_, node, ..)| *node != id);
    }

    /// A graceful stop: the node leaves the store (its requests applied
    /// at once) and its trunks close now.
    pub fn stop(&mut self, id: NodeId) {
        if let Some(proc) = self.procs.get_mut(&id) {
            proc.node.leave(self.now);
        }
        self.drain(id);
        self.procs.remove(&id);
        self.store_replies.retain(|(_, node, ..)| *node != id);
        self.break_trunks_of(id);
    }

    fn delay(&mut self) -> Duration {
        let jitter = u64::try_from(self.jitter.as_micros()).unwrap();
        self.latency + Duration::from_micros(self.rng.below(jitter + 1))
    }

    /// Carries out what node `id` asked for.
    fn drain(&mut self, id: NodeId) {
        loop {
            let now = self.now;
            let Some(proc) = self.procs.get_mut(&id) else {
                return;
            };
            let Some(output) = proc.node.poll_output() else {
                return;
            };
            match output {
                NodeOutput::Store {
                    id: request,
                    request: what,
                } => {
                    let reply = self.store.apply(now, &what);
                    let at = now + self.store_delay * 2;
                    self.store_replies.push_back((at, id, request, reply));
                    if matches!(what, StoreRequest::ClaimControl { .. }) {
                        // Keep answers in arrival order.
                        self.store_replies
                            .make_contiguous()
                            .sort_by_key(|(at, ..)| *at);
                    }
                }
                NodeOutput::Dial(holder) => {
                    self.break_trunk(id);
                    let proc = self.procs.get_mut(&id).unwrap();
                    proc.dialing = Some(holder);
                    proc.next_dial = now;
                }
                NodeOutput::Hang => {
                    self.break_trunk(id);
                    self.procs.get_mut(&id).unwrap().dialing = None;
                }
                NodeOutput::ToControl(frame) => {
                    let delay = self.delay();
                    if let Some((_, wire)) = self.links.get_mut(&id) {
                        let at = wire
                            .to_control
                            .back()
                            .map_or(now + delay, |(last, _)| (*last).max(now + delay));
                        wire.to_control.push_back((at, encode(&frame).unwrap()));
                    }
                }
                NodeOutput::ToNode { node, frame } => {
                    let delay = self.delay();
                    if let Some((control, wire)) = self.links.get_mut(&node)
                        && *control == id
                    {
                        let at = wire
                            .to_node
                            .back()
                            .map_or(now + delay, |(last, _)| (*last).max(now + delay));
                        wire.to_node.push_back((at, encode(&frame).unwrap()));
                    }
                }
                NodeOutput::DropNode { node } => {
                    if self
                        .links
                        .get(&node)
                        .is_some_and(|(control, _)| *control == id)
                    {
                        self.break_trunk(node);
                    }
                }
                NodeOutput::Deliver(message) => {
                    self.procs
                        .get_mut(&id)
                        .unwrap()
                        .sessions
                        .record_delivery(&message);
                    self.deliver(id, message);
                }
                NodeOutput::ReportSessions => {
                    let proc = self.procs.get_mut(&id).unwrap();
                    for (conn, call_id) in proc.sessions.report(&mut proc.node, now) {
                        let message = ServerMessage::Cancelled { call_id };
                        self.deliver(id, FromControl::Send { conn, message });
                    }
                }
                NodeOutput::SessionsLost { code } => {
                    let proc = self.procs.get_mut(&id).unwrap();
                    proc.sessions.clear();
                    proc.sessions_lost += 1;
                    proc.routes.clear();
                    for client in proc.clients.values_mut() {
                        if client.closed.is_none() {
                            client.closed = Some(code);
                        }
                    }
                }
                NodeOutput::Event(event) => self.procs.get_mut(&id).unwrap().events.push(event),
            }
        }
    }

    fn deliver(&mut self, id: NodeId, message: FromControl) {
        let proc = self.procs.get_mut(&id).unwrap();
        match message {
            FromControl::Send { conn, message } => {
                if let Some(client) = proc.clients.get_mut(&conn)
                    && client.closed.is_none()
                {
                    client.inbox.push(message);
                }
            }
            FromControl::Close { conn, code } => {
                if let Some(client) = proc.clients.get_mut(&conn) {
                    client.closed.get_or_insert(code);
                }
            }
            FromControl::Resumed { .. } => {}
            FromControl::Membership {
                call_id, members, ..
            } => {
                if members.is_empty() {
                    proc.routes.remove(&call_id);
                } else {
                    proc.routes.insert(call_id, members);
                }
            }
        }
    }

    /// A client connects to `node` and logs in as `user`: its handle.
    pub fn login(&mut self, node: NodeId, user: &str) -> (NodeId, u64) {
        self.login_as(node, user, 2, DeviceLogin::ONE_DEVICE)
    }

    /// A version-5 client logs in as `user` from `device`, its app allowing
    /// `max_devices`.
    pub fn login_device(
        &mut self,
        node: NodeId,
        user: &str,
        device: &str,
        max_devices: usize,
    ) -> (NodeId, u64) {
        let device = DeviceLogin {
            device: Some(calling_api::DeviceId::new(device).unwrap()),
            max_devices,
            media_encryption: signaling_proto::MediaEncryption::None,
        };
        self.login_as(node, user, signaling_proto::PROTOCOL_VERSION, device)
    }

    fn login_as(
        &mut self,
        node: NodeId,
        user: &str,
        protocol_version: u16,
        device: DeviceLogin,
    ) -> (NodeId, u64) {
        let now = self.now;
        let proc = self.procs.get_mut(&node).unwrap();
        let conn = proc.next_conn;
        proc.next_conn += 1;
        proc.clients.insert(
            conn,
            Client {
                user: Some(UserId::new(user).unwrap()),
                ..Client::default()
            },
        );
        let login = ToControl::Login {
            conn,
            user: UserId::new(user).unwrap(),
            protocol_version,
            device,
        };
        if proc.sessions.forward(&mut proc.node, now, login).is_err() {
            proc.refused += 1;
        }
        self.drain(node);
        (node, conn)
    }

    /// Sends a client message; `request_id` is filled in.
    pub fn send(
        &mut self,
        (node, conn): (NodeId, u64),
        message: ClientMessage,
    ) -> Option<RequestId> {
        let now = self.now;
        let proc = self.procs.get_mut(&node)?;
        let client = proc.clients.get_mut(&conn)?;
        if client.closed.is_some() {
            return None;
        }
        client.next_request += 1;
        let request_id = RequestId(client.next_request);
        let message = with_request_id(message, request_id);
        if proc
            .sessions
            .forward(&mut proc.node, now, ToControl::Message { conn, message })
            .is_err()
        {
            proc.refused += 1;
        }
        self.drain(node);
        Some(request_id)
    }

    pub fn invite(&mut self, from: (NodeId, u64), to: &[&str]) -> Option<RequestId> {
        self.send(
            from,
            ClientMessage::Invite {
                request_id: RequestId(0),
                call_id: None,
                user_ids: to.iter().map(|user| UserId::new(*user).unwrap()).collect(),
                call_type: CallType::Audio,
                timeout_ms: None,
                user_data: None,
            },
        )
    }

    /// The call `client` is rung for, from its inbox.
    pub fn invited_to(&self, client: (NodeId, u64)) -> Option<calling_api::CallId> {
        self.inbox(client)
            .iter()
            .rev()
            .find_map(|message| match message {
                ServerMessage::Invited { call_id, .. } => Some(*call_id),
                _ => None,
            })
    }

    pub fn accept(&mut self, client: (NodeId, u64)) -> Option<RequestId> {
        let call_id = self.invited_to(client)?;
        self.send(
            client,
            ClientMessage::Accept {
                request_id: RequestId(0),
                call_id,
            },
        )
    }

    /// `caller` invites `callee_name` (logged in as `callee`), who
    /// accepts; 100 ms pass after each.
    pub fn call(&mut self, caller: (NodeId, u64), callee: (NodeId, u64), callee_name: &str) {
        self.invite(caller, &[callee_name]).unwrap();
        self.run_for(Duration::from_millis(100));
        self.accept(callee).unwrap();
        self.run_for(Duration::from_millis(100));
    }

    pub fn hangup(&mut self, client: (NodeId, u64)) -> Option<RequestId> {
        self.send(
            client,
            ClientMessage::Hangup {
                request_id: RequestId(0),
            },
        )
    }

    pub fn inbox(&self, (node, conn): (NodeId, u64)) -> &[ServerMessage] {
        self.procs
            .get(&node)
            .and_then(|proc| proc.clients.get(&conn))
            .map_or(&[], |client| client.inbox.as_slice())
    }

    pub fn closed(&self, (node, conn): (NodeId, u64)) -> Option<ErrorCode> {
        self.procs
            .get(&node)
            .and_then(|proc| proc.clients.get(&conn))
            .and_then(|client| client.closed)
    }

    /// The `CallEnded` reasons `client` got.
    pub fn call_ends(&self, client: (NodeId, u64)) -> Vec<EndReason> {
        self.inbox(client)
            .iter()
            .filter_map(|message| match message {
                ServerMessage::CallEnded { reason, .. } => Some(*reason),
                _ => None,
            })
            .collect()
    }

    /// Whether `client` got a reply (ack or error) to `request`; the code.
    pub fn reply(&self, client: (NodeId, u64), request: RequestId) -> Vec<ErrorCode> {
        self.inbox(client)
            .iter()
            .filter_map(|message| match message {
                ServerMessage::Ack { request_id, .. } if *request_id == request => {
                    Some(ErrorCode::OK)
                }
                ServerMessage::Error {
                    request_id: Some(request_id),
                    code,
                    ..
                } if *request_id == request => Some(*code),
                _ => None,
            })
            .collect()
    }

    /// Whether `a` and `b` are both entered in one call, per `node`'s routes.
    pub fn routed_together(&self, node: NodeId, a: &str, b: &str) -> bool {
        self.procs.get(&node).is_some_and(|proc| {
            proc.routes.values().any(|members| {
                members.iter().any(|m| m.user.as_str() == a)
                    && members.iter().any(|m| m.user.as_str() == b)
            })
        })
    }
}

fn with_request_id(message: ClientMessage, id: RequestId) -> ClientMessage {
    match message {
        ClientMessage::Invite {
            call_id,
            user_ids,
            call_type,
            timeout_ms,
            user_data,
            ..
        } => ClientMessage::Invite {
            request_id: id,
            call_id,
            user_ids,
            call_type,
            timeout_ms,
            user_data,
        },
        ClientMessage::Accept { call_id, .. } => ClientMessage::Accept {
            request_id: id,
            call_id,
        },
        ClientMessage::Reject { call_id, .. } => ClientMessage::Reject {
            request_id: id,
            call_id,
        },
        ClientMessage::Hangup { .. } => ClientMessage::Hangup { request_id: id },
        ClientMessage::Logout { .. } => ClientMessage::Logout { request_id: id },
        other => other,
    }
}
