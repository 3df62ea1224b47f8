//! The hub: the one task that drives the server's core ([`ServerCore`])
//! with the real clock and carries out what it decides. Connection tasks
//! talk to it over channels; it never awaits a client, so a slow client
//! cannot hold up the others.
//!
//! Everything the server decides (which connection carries which session,
//! the resume books and tokens, congestion, drain, the call rules) is in
//! the sans-IO core; the hub is its IO: each connection's outbox and media
//! link, the audio relay's routes (from [`ServerOutput::Membership`]: each
//! member of a call with someone to hear it gets a [`Route`] to the
//! others' media links), metrics and event sinks, and, in a cluster, the
//! node's store requests and links ([`ClusterIo`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use calling_api::{CallId, ErrorCode, UserId};
use server_core::{
    Board, Counted, Login, LoginAnswer, MemberAt, OutboxLimits, RoutedMember, ServerCore,
    ServerOutput,
};
use signaling_link::MediaLink;
use signaling_proto::{
    CallEvent, CallSummary, ClientMessage, ConnId, DeviceLogin, FlowId, ResumeClaim, ServerMessage,
    SessionSummary, SessionToken,
};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{info, warn};

pub use server_core::DrainState;

use crate::cluster::{ClusterIo, IoInput, Mesh};
use crate::metrics::{HubStats, Metrics};
use crate::relay::{MediaRoutes, Route};
use crate::stamped::StampedEvent;

/// How many messages may wait for one client before it counts as stuck and
/// is disconnected.
pub(crate) const OUTBOX_CAPACITY: usize = 256;

/// The core's limits for outboxes of [`OUTBOX_CAPACITY`].
pub(crate) const OUTBOX_LIMITS: OutboxLimits = OutboxLimits::for_outbox(OUTBOX_CAPACITY);

/// What the hub tells a connection task.
#[derive(Debug)]
pub(crate) enum Outbound {
    /// Send this message.
    Message(ServerMessage),
    /// Flush what was sent, then close with this code.
    Close(ErrorCode),
}

#[derive(Debug)]
pub(crate) enum HubInput {
    /// An authenticated login or resume.
    Login(Attach),
    Message {
        link: ConnId,
        message: ClientMessage,
    },
    /// Connection `link` is gone: its network broke, or (`expelled`) the
    /// server closed it for breaking the protocol or a limit.
    Disconnect {
        link: ConnId,
        expelled: bool,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
    Stats {
        reply: oneshot::Sender<HubStats>,
    },
    /// Answered once every input sent before it was handled and its
    /// messages queued (inputs are handled in order).
    Flush {
        done: oneshot::Sender<()>,
    },
    /// The operator's request (admin API).
    Admin {
        request: AdminRequest,
        reply: oneshot::Sender<AdminReply>,
    },
    /// What the cluster's IO brought (store answers, node trunks).
    Cluster(IoInput),
}

/// What the operator may ask the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Every session.
    Sessions,
    /// Every call.
    Calls,
    /// Log a user out (it gets `onError` with `LOGGED_OUT_BY_OPERATOR`;
    /// an SDK older than protocol version 4, `KickedOffline`).
    Kick(UserId),
    /// End a call for everyone.
    EndCall(CallId),
    /// Stop taking new logins and calls; the server stops once its calls
    /// are over (or the drain limit passes).
    Drain,
}

/// The hub's answer to an [`AdminRequest`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminReply {
    /// Every session, sorted by user.
    Sessions(Vec<SessionSummary>),
    /// Every call with its age, sorted by id.
    Calls(Vec<(CallSummary, Duration)>),
    /// Whether the user or call existed (a drain: whether it started now).
    Done(bool),
}

/// Where the hub's call events go besides the metrics: bounded queues it
/// never waits on; what does not fit is counted and dropped.
#[derive(Debug)]
pub(crate) struct EventSink {
    pub(crate) queue: mpsc::Sender<Arc<StampedEvent>>,
    /// Counts a dropped event.
    pub(crate) dropped: fn(&Metrics),
}

/// What the hub reports to, beyond its connections.
#[derive(Debug)]
pub(crate) struct HubOps {
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sinks: Vec<EventSink>,
    pub(crate) drain: watch::Sender<DrainState>,
}

impl HubOps {
    /// Reports to `metrics` and `sinks`; the drain state is published on
    /// the receiver.
    pub(crate) fn new(
        metrics: Arc<Metrics>,
        sinks: Vec<EventSink>,
    ) -> (Self, watch::Receiver<DrainState>) {
        let (drain, state) = watch::channel(DrainState::default());
        let ops = Self {
            metrics,
            sinks,
            drain,
        };
        (ops, state)
    }
}

/// An authenticated login or resume on connection `link`.
#[derive(Debug)]
pub(crate) struct Attach {
    pub(crate) link: ConnId,
    pub(crate) user: UserId,
    pub(crate) protocol_version: u16,
    /// The device it named, and how many its user may have.
    pub(crate) device: DeviceLogin,
    /// For a resume: the session it claims.
    pub(crate) resume: Option<ResumeClaim>,
    pub(crate) outbox: mpsc::Sender<Outbound>,
    /// Where the relay sends this member's peers' audio.
    pub(crate) media: Arc<dyn MediaLink>,
    /// The session the connection now carries, and whether it is
    /// resumable (its client then owes heartbeats); `None` when the resume
    /// was refused (the refusal and a close are in the outbox).
    pub(crate) session: oneshot::Sender<Option<(ConnId, bool)>>,
}

/// A fresh session token from the system's random generator.
pub(crate) fn new_token() -> SessionToken {
    let mut bytes = [0_u8; 16];
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        // Without randomness a token could be guessed: make resumes fail
        // instead (the core matches no claim against the all-zero token).
        warn!("the system random generator failed: this session cannot be resumed");
        bytes = [0; 16];
    }
    SessionToken(bytes)
}

/// The hub's IO, by connection: what the core's outputs are carried out
/// with.
#[derive(Debug)]
struct HubIo {
    outboxes: HashMap<ConnId, mpsc::Sender<Outbound>>,
    media: HashMap<ConnId, Arc<dyn MediaLink>>,
    /// The connections each call's routes were last published for.
    routed: HashMap<CallId, Vec<ConnId>>,
    routes: Arc<MediaRoutes>,
    ops: HubOps,
    /// In a cluster: the node's store requests and links.
    cluster: Option<ClusterIo>,
    /// In a cluster: the links to the other nodes' members.
    mesh: Option<Arc<Mesh>>,
}

pub(crate) async fn run<B: Board>(
    mut core: ServerCore<B>,
    cluster: Option<ClusterIo>,
    mut inputs: mpsc::Receiver<HubInput>,
    routes: Arc<MediaRoutes>,
    ops: HubOps,
) {
    let mesh = cluster.as_ref().map(ClusterIo::mesh);
    let mut io = HubIo {
        outboxes: HashMap::new(),
        media: HashMap::new(),
        routed: HashMap::new(),
        routes,
        ops,
        cluster,
        mesh,
    };
    io.dispatch(&mut core);
    loop {
        let deadline = core.poll_timeout();
        let input = tokio::select! {
            input = inputs.recv() => input,
            () = signaling_link::sleep_until(deadline), if deadline.is_some() => {
                core.handle_timeout(Instant::now());
                io.dispatch(&mut core);
                io.report_drain(&core);
                continue;
            }
        };
        let Some(input) = input else {
            break;
        };
        let now = Instant::now();
        match input {
            HubInput::Login(attach) => io.attach(&mut core, now, attach),
            HubInput::Message { link, message } => core.handle_message(now, link, message),
            HubInput::Disconnect { link, expelled } => {
                io.forget(link);
                core.handle_disconnect(now, link, expelled);
            }
            HubInput::Shutdown { done } => {
                core.shutdown(now);
                io.dispatch(&mut core);
                let _ = done.send(());
                continue;
            }
            HubInput::Stats { reply } => {
                let _ = reply.send(stats(core.board()));
            }
            HubInput::Flush { done } => {
                let _ = done.send(());
            }
            HubInput::Cluster(input) => {
                if let Some(cluster) = &mut io.cluster {
                    core.handle_cluster_io(now, |node| cluster.apply(node, now, input));
                }
            }
            HubInput::Admin { request, reply } => {
                let _ = reply.send(admin(&mut core, now, request));
            }
        }
        io.dispatch(&mut core);
        io.report_drain(&core);
    }
}

/// Answers the operator (a drain already under way: `Done(false)`).
fn admin<B: Board>(core: &mut ServerCore<B>, now: Instant, request: AdminRequest) -> AdminReply {
    match request {
        AdminRequest::Sessions => AdminReply::Sessions(core.session_summaries()),
        AdminRequest::Calls => AdminReply::Calls(core.call_summaries(now)),
        AdminRequest::Kick(user) => AdminReply::Done(core.kick(now, &user)),
        AdminRequest::EndCall(call_id) => AdminReply::Done(core.end_call(now, call_id)),
        AdminRequest::Drain => {
            let started = core.drain(now);
            if started {
                info!(
                    calls = core.board().call_count(),
                    "draining: no new logins or calls"
                );
            }
            AdminReply::Done(started)
        }
    }
}

/// The board's live figures.
fn stats(board: &impl Board) -> HubStats {
    let counters = board.counters();
    HubStats {
        online: board.online_count(),
        reconnecting: board.detached_count(),
        calls: board.call_count(),
        calls_by_members: board.call_sizes(),
        invitations_rate_limited: counters.invitations_rate_limited,
        invitees_congested: counters.invitees_congested,
        cluster: board.cluster_status(),
    }
}

/// Queues a failed `LoginResult` (`protocol_version`, `code`, `message`)
/// and the close that follows it.
fn send_refusal(
    outbox: &mpsc::Sender<Outbound>,
    (protocol_version, code, message): (u16, ErrorCode, String),
    redirect: Option<ServerMessage>,
) {
    if let Some(redirect) = redirect {
        let _ = outbox.try_send(Outbound::Message(redirect));
    }
    let _ = outbox.try_send(Outbound::Message(ServerMessage::LoginResult {
        protocol_version,
        code,
        message,
    }));
    let _ = outbox.try_send(Outbound::Close(code));
}

impl HubIo {
    /// Hands a login to the core; an attached connection's outbox and
    /// media link are kept for its outputs, a refused one gets why.
    fn attach<B: Board>(&mut self, core: &mut ServerCore<B>, now: Instant, attach: Attach) {
        let Attach {
            link,
            user,
            protocol_version,
            device,
            resume,
            outbox,
            media,
            session,
        } = attach;
        let login = Login {
            link,
            user,
            protocol_version,
            device,
            resume,
        };
        match core.handle_login(now, login) {
            LoginAnswer::Attached {
                session: attached,
                resumable,
            } => {
                self.outboxes.insert(link, outbox);
                self.media.insert(link, media);
                let _ = session.send(Some((attached, resumable)));
            }
            LoginAnswer::Refused {
                protocol_version,
                code,
                message,
                redirect,
            } => {
                send_refusal(&outbox, (protocol_version, code, message), redirect);
                let _ = session.send(None);
            }
        }
    }

    /// Connection `link` is gone: nothing more goes to it.
    fn forget(&mut self, link: ConnId) {
        self.outboxes.remove(&link);
        self.media.remove(&link);
        self.routes.set(link, None);
    }

    /// Carries out every output of the core without waiting: messages go
    /// to their connection task's outbox, membership to the relay's
    /// routes. A full outbox or a task found gone is an input for the
    /// core, which may produce more output: repeat until nothing is left,
    /// then let it recheck congestion.
    fn dispatch<B: Board>(&mut self, core: &mut ServerCore<B>) {
        let now = Instant::now();
        loop {
            while let Some(output) = core.poll_output() {
                self.carry_out(core, now, output);
            }
            let outboxes = &self.outboxes;
            core.handle_congestion(now, |link| {
                outboxes
                    .get(&link)
                    .map_or(0, |outbox| OUTBOX_CAPACITY - outbox.capacity())
            });
            if !core.has_output() {
                return;
            }
        }
    }

    fn carry_out<B: Board>(
        &mut self,
        core: &mut ServerCore<B>,
        now: Instant,
        output: ServerOutput,
    ) {
        match output {
            ServerOutput::Send {
                conn: link,
                message,
            } => {
                let Some(outbox) = self.outboxes.get(&link) else {
                    return;
                };
                #[cfg(feature = "relay-tap")]
                if let ServerMessage::MemberKey { from, payload, .. } = &message {
                    self.routes
                        .word_tap
                        .copy(|| (from.clone(), payload.clone()));
                }
                match outbox.try_send(Outbound::Message(message)) {
                    Ok(()) => {}
                    Err(TrySendError::Full(_)) => core.handle_stuck(now, link),
                    Err(TrySendError::Closed(_)) => {
                        self.forget(link);
                        core.handle_gone(now, link);
                    }
                }
            }
            ServerOutput::Close { conn: link, code } => {
                if let Some(outbox) = self.outboxes.get(&link) {
                    // If the outbox is full the close is lost too; the task
                    // then sees its channel closed and closes anyway.
                    let _ = outbox.try_send(Outbound::Close(code));
                }
                self.forget(link);
            }
            ServerOutput::Membership { call_id, members } => {
                self.publish_routes(call_id, &members);
            }
            ServerOutput::Event { event, duration } => self.report_event(event, duration),
            ServerOutput::AllSessionsLost(_) => {
                for (call_id, conns) in &self.routed {
                    for conn in conns {
                        self.routes.set(*conn, None);
                    }
                    self.routes.set_call(*call_id, &[]);
                }
                self.routed.clear();
            }
            ServerOutput::Cluster(output) => {
                if let Some(cluster) = &mut self.cluster {
                    cluster.carry_out(output);
                }
            }
            ServerOutput::Count(Counted::SessionDetached) => self.ops.metrics.session_detached(),
            ServerOutput::Count(Counted::Resume { resumed }) => self.ops.metrics.resume(resumed),
        }
    }

    /// Publishes the drain state when it changed.
    fn report_drain<B: Board>(&self, core: &ServerCore<B>) {
        let state = core.drain_state();
        self.ops.drain.send_if_modified(|kept| {
            let changed = *kept != state;
            *kept = state;
            changed
        });
    }

    /// Counts a call event and hands it to the sinks (webhooks, records),
    /// never waiting for them.
    fn report_event(&self, event: CallEvent, duration: Option<Duration>) {
        let ops = &self.ops;
        ops.metrics.observe_event(&event, duration);
        if ops.sinks.is_empty() {
            return;
        }
        let stamped = Arc::new(StampedEvent {
            at: SystemTime::now(),
            event,
            duration,
        });
        for sink in &ops.sinks {
            if sink.queue.try_send(Arc::clone(&stamped)).is_err() {
                (sink.dropped)(&ops.metrics);
            }
        }
    }

    /// Republishes the routes of a call whose members changed: each member
    /// hears every other one; a member alone in it, or gone from it, has
    /// none.
    fn publish_routes(&mut self, call_id: CallId, members: &[RoutedMember]) {
        let here = |member: &RoutedMember| match member.at {
            MemberAt::Here(conn) => Some(conn),
            MemberAt::There(_) => None,
        };
        let now_routed: Vec<ConnId> = members.iter().filter_map(here).collect();
        for gone in self
            .routed
            .remove(&call_id)
            .unwrap_or_default()
            .into_iter()
            .filter(|conn| !now_routed.contains(conn))
        {
            self.routes.set(gone, None);
        }
        // Members on other nodes: one link each (for what one of them is
        // told), and one link per node for what they all hear.
        let mut remote: Vec<(FlowId, Arc<dyn MediaLink>)> = Vec::new();
        let mut nodes: Vec<Arc<dyn MediaLink>> = Vec::new();
        if let Some(mesh) = &self.mesh {
            let mut seen = Vec::new();
            for member in members {
                if let MemberAt::There(at) = member.at {
                    remote.push((member.flow, mesh.link_to(at)));
                    if !seen.contains(&at.node) {
                        seen.push(at.node);
                        nodes.push(mesh.link_to_call(at.node, call_id));
                    }
                }
            }
        }
        for member in members {
            let Some(conn) = here(member) else {
                continue;
            };
            let peers: Vec<(FlowId, Arc<dyn MediaLink>)> = members
                .iter()
                .filter(|other| other.at != member.at)
                .filter_map(|other| match other.at {
                    MemberAt::Here(other_conn) => {
                        Some((other.flow, self.media.get(&other_conn)?.clone()))
                    }
                    MemberAt::There(_) => None,
                })
                .collect();
            let route = match self.media.get(&conn) {
                Some(own) if !(peers.is_empty() && remote.is_empty()) => Some(Route {
                    flow: member.flow,
                    peers,
                    remote: remote.clone(),
                    nodes: nodes.clone(),
                    own: Arc::clone(own),
                }),
                _ => None,
            };
            self.routes.set(conn, route);
        }
        if self.mesh.is_some() {
            self.routes.set_call(call_id, &now_routed);
        }
        if !now_routed.is_empty() {
            self.routed.insert(call_id, now_routed);
        }
    }
}

#[cfg(test)]
mod tests {
    //! The hub and the relay on in-memory links: no sockets, no QUIC.

    use super::*;
    use calling_api::CallType;
    use signaling_link::memory::{MemoryMedia, pair};
    use signaling_link::{DatagramSource, Link};
    use signaling_proto::PROTOCOL_VERSION;
    use signaling_proto::message::RequestId;
    use signaling_proto::{DatagramKind, LossReport, MediaHeader, ReceiverFeatures};

    fn single_server() -> ServerCore<signaling_proto::Switchboard> {
        let switchboard =
            signaling_proto::Switchboard::new(signaling_proto::SwitchboardConfig::DEFAULT);
        ServerCore::new(
            switchboard,
            OUTBOX_LIMITS,
            Box::new(new_token),
            Instant::now(),
        )
    }

    /// Metrics only, no sinks.
    fn quiet_ops() -> HubOps {
        HubOps::new(Arc::new(Metrics::new()), Vec::new()).0
    }

    struct Client {
        conn: ConnId,
        outbox: mpsc::Receiver<Outbound>,
        /// The client's end of its media link.
        media: MemoryMedia,
        token: Option<SessionToken>,
    }

    /// Connection `link` logs in as `user`, or resumes its session.
    async fn connect(
        hub: &mpsc::Sender<HubInput>,
        link: u64,
        user: &str,
        resume: Option<ResumeClaim>,
    ) -> (Option<ConnId>, Client) {
        let (client, server): (
            Link<signaling_link::memory::Memory, ServerMessage, ClientMessage>,
            _,
        ) = pair();
        let (outbox_tx, outbox) = mpsc::channel(OUTBOX_CAPACITY);
        let (session, attached) = oneshot::channel();
        hub.send(HubInput::Login(Attach {
            link: ConnId(link),
            user: UserId::new(user).unwrap(),
            protocol_version: PROTOCOL_VERSION,
            device: DeviceLogin::ONE_DEVICE,
            resume,
            outbox: outbox_tx,
            media: Arc::new(server.media),
            session,
        }))
        .await
        .unwrap();
        let attached = attached.await.unwrap().map(|(conn, resumable)| {
            assert!(resumable, "version 2 sessions are resumable by default");
            conn
        });
        let client = Client {
            conn: ConnId(link),
            outbox,
            media: client.media,
            token: None,
        };
        (attached, client)
    }

    async fn log_in(hub: &mpsc::Sender<HubInput>, conn: u64, user: &str) -> Client {
        let (attached, mut client) = connect(hub, conn, user, None).await;
        assert_eq!(attached, Some(ConnId(conn)));
        assert!(matches!(
            next(&mut client).await,
            ServerMessage::LoginResult { .. }
        ));
        let ServerMessage::Session { token, grace_ms } = next(&mut client).await else {
            panic!("a version 2 login is told its session");
        };
        assert_eq!(grace_ms, 20_000);
        client.token = Some(token);
        client
    }

    async fn next(client: &mut Client) -> ServerMessage {
        match client.outbox.recv().await {
            Some(Outbound::Message(message)) => message,
            other => panic!("expected a message, got {other:?}"),
        }
    }

    /// Returns once the hub has carried out every earlier input: it takes
    /// one input at a time and publishes routes before the next.
    async fn barrier(hub: &mpsc::Sender<HubInput>, client: &mut Client) {
        hub.send(HubInput::Message {
            link: client.conn,
            message: ClientMessage::Ping { nonce: 1 },
        })
        .await
        .unwrap();
        while !matches!(next(client).await, ServerMessage::Pong { .. }) {}
    }

    fn datagram(kind: DatagramKind, flow: u32, payload: &[u8]) -> bytes::Bytes {
        let header = MediaHeader {
            kind,
            flow_id: FlowId(flow),
            sequence: 1,
            timestamp: 960,
            voice_activity: true,
            level_dbov: 20,
        };
        let mut buffer = vec![0; 64];
        let len = header.encode(payload, &mut buffer).unwrap();
        buffer.truncate(len);
        buffer.into()
    }

    fn audio(claimed_flow: u32) -> bytes::Bytes {
        datagram(DatagramKind::Audio, claimed_flow, b"opus")
    }

    fn message(client: &Client, message: ClientMessage) -> HubInput {
        HubInput::Message {
            link: client.conn,
            message,
        }
    }

    /// Alice (link 1) and bob (link 2) log in; alice invites bob.
    async fn alice_invites_bob(hub: &mpsc::Sender<HubInput>) -> (Client, Client, CallId) {
        let mut alice = log_in(hub, 1, "alice").await;
        let bob = log_in(hub, 2, "bob").await;
        let invite = ClientMessage::Invite {
            request_id: RequestId(1),
            call_id: None,
            user_ids: vec![UserId::new("bob").unwrap()],
            call_type: CallType::Audio,
            timeout_ms: None,
            user_data: None,
        };
        hub.send(message(&alice, invite)).await.unwrap();
        let ServerMessage::Ack {
            call_id: Some(call_id),
            ..
        } = next(&mut alice).await
        else {
            panic!("no call id");
        };
        (alice, bob, call_id)
    }

    /// Bob accepts: he gets the ack and meets alice, alice meets him.
    /// Their flows, alice's first.
    async fn bob_accepts(
        hub: &mpsc::Sender<HubInput>,
        alice: &mut Client,
        bob: &mut Client,
        call_id: CallId,
    ) -> (FlowId, FlowId) {
        let accept = ClientMessage::Accept {
            request_id: RequestId(1),
            call_id,
        };
        hub.send(message(bob, accept)).await.unwrap();
        assert!(matches!(next(bob).await, ServerMessage::Ack { .. }));
        let ServerMessage::UserEntered {
            flow_id: alice_flow,
            ..
        } = next(bob).await
        else {
            panic!("bob did not meet alice");
        };
        let ServerMessage::UserEntered {
            flow_id: bob_flow, ..
        } = next(alice).await
        else {
            panic!("bob did not enter");
        };
        (alice_flow, bob_flow)
    }

    #[tokio::test]
    async fn membership_routes_audio_between_members_only() {
        let routes = Arc::new(MediaRoutes::default());
        let (hub, inputs) = mpsc::channel(64);
        tokio::spawn(run(
            single_server(),
            None,
            inputs,
            Arc::clone(&routes),
            quiet_ops(),
        ));
        let (mut alice, mut bob, call_id) = alice_invites_bob(&hub).await;
        assert!(matches!(
            next(&mut bob).await,
            ServerMessage::Invited { .. }
        ));
        // Ringing: alice is alone in the call, her audio goes nowhere.
        routes.relay(alice.conn, audio(0));
        assert_eq!(routes.counts().dropped_not_in_call, 1);

        let (alice_flow, bob_flow) = bob_accepts(&hub, &mut alice, &mut bob, call_id).await;
        barrier(&hub, &mut alice).await;

        routes.relay(bob.conn, audio(999));
        let heard = alice.media.recv_datagram().await.unwrap();
        let (header, payload) = MediaHeader::decode(&heard).unwrap();
        assert_eq!((header.flow_id, payload), (bob_flow, &b"opus"[..]));
        assert_eq!(routes.counts().forwarded, 1);

        // A loss report reaches only the sender it names, restamped with
        // the reporter's flow.
        let report = LossReport { loss_percent: 7 }.to_payload();
        routes.relay(bob.conn, datagram(DatagramKind::Report, 12_345, &report));
        assert_eq!(routes.counts().forwarded, 1, "nobody has flow 12345");
        routes.relay(
            bob.conn,
            datagram(DatagramKind::Report, alice_flow.0, &report),
        );
        let heard = alice.media.recv_datagram().await.unwrap();
        let (header, payload) = MediaHeader::decode(&heard).unwrap();
        assert_eq!(header.kind, DatagramKind::Report);
        assert_eq!(header.flow_id, bob_flow);
        assert_eq!(
            LossReport::from_payload(payload),
            Some(LossReport { loss_percent: 7 })
        );
        assert_eq!(routes.counts().forwarded, 2);
        // So does a receiver's word about what it plays.
        let features = ReceiverFeatures::ours().to_payload();
        routes.relay(
            alice.conn,
            datagram(DatagramKind::Features, 12_345, &features),
        );
        assert_eq!(routes.counts().forwarded, 2, "nobody has flow 12345");
        routes.relay(
            alice.conn,
            datagram(DatagramKind::Features, bob_flow.0, &features),
        );
        let heard = bob.media.recv_datagram().await.unwrap();
        let (header, payload) = MediaHeader::decode(&heard).unwrap();
        assert_eq!(header.kind, DatagramKind::Features);
        assert_eq!(header.flow_id, alice_flow);
        assert_eq!(
            ReceiverFeatures::from_payload(payload),
            Some(ReceiverFeatures::ours())
        );
        assert_eq!(routes.counts().forwarded, 3);

        hub.send(message(
            &bob,
            ClientMessage::Hangup {
                request_id: RequestId(2),
            },
        ))
        .await
        .unwrap();
        while !matches!(next(&mut alice).await, ServerMessage::CallEnded { .. }) {}
        barrier(&hub, &mut alice).await;
        routes.relay(alice.conn, audio(0));
        routes.relay(bob.conn, audio(0));
        assert_eq!(routes.counts().dropped_not_in_call, 3);
        assert_eq!(routes.counts().forwarded, 3);
        drop(bob.media);
    }

    /// Bob's connection breaks mid-call: alice hears he is reconnecting;
    /// what she does meanwhile reaches bob after his resume, once, in
    /// order; his audio flows over the new link; a wrong token or a count
    /// the books cannot match is refused.
    #[tokio::test]
    #[allow(
        clippy::too_many_lines,
        reason = "one outage and resume, told in order, reads best as one story"
    )]
    async fn a_resumed_session_gets_what_it_missed_and_its_audio_back() {
        let routes = Arc::new(MediaRoutes::default());
        let (hub, inputs) = mpsc::channel(64);
        let metrics = Arc::new(Metrics::new());
        let (ops, _drain) = HubOps::new(Arc::clone(&metrics), Vec::new());
        tokio::spawn(run(single_server(), None, inputs, Arc::clone(&routes), ops));
        let (mut alice, mut bob, call_id) = alice_invites_bob(&hub).await;
        assert!(matches!(
            next(&mut bob).await,
            ServerMessage::Invited { .. }
        ));
        // Bob's numbered messages: the ack and alice entering.
        bob_accepts(&hub, &mut alice, &mut bob, call_id).await;
        // Bob acknowledges the invitation only, then his network breaks.
        hub.send(message(&bob, ClientMessage::Heartbeat { received: 1 }))
            .await
            .unwrap();
        assert_eq!(
            next(&mut bob).await,
            ServerMessage::HeartbeatAck { received: 1 },
            "the accept counted"
        );
        hub.send(HubInput::Disconnect {
            link: bob.conn,
            expelled: false,
        })
        .await
        .unwrap();
        assert_eq!(
            next(&mut alice).await,
            ServerMessage::MemberConnection {
                call_id,
                user_id: UserId::new("bob").unwrap(),
                connected: false
            }
        );
        hub.send(message(&alice, ClientMessage::Microphone { muted: true }))
            .await
            .unwrap();
        barrier(&hub, &mut alice).await;

        let stolen = ResumeClaim {
            token: SessionToken([7; 16]),
            received: 3,
        };
        let (refused, mut thief) = connect(&hub, 10, "bob", Some(stolen)).await;
        assert_eq!(refused, None);
        assert!(matches!(
            next(&mut thief).await,
            ServerMessage::LoginResult {
                code: ErrorCode::SESSION_EXPIRED,
                ..
            }
        ));
        let token = bob.token.unwrap();
        let (refused, _) = connect(&hub, 11, "bob", Some(ResumeClaim { token, received: 9 })).await;
        assert_eq!(refused, None, "bob cannot have received 9 messages");

        let claim = ResumeClaim { token, received: 3 };
        let (attached, mut bob_again) = connect(&hub, 12, "bob", Some(claim)).await;
        assert_eq!(attached, Some(bob.conn), "the same session");
        let ServerMessage::Resumed {
            token: new_token,
            received,
        } = next(&mut bob_again).await
        else {
            panic!("not resumed");
        };
        assert_ne!(new_token, token, "a resume changes the token");
        let scrape = metrics
            .encode(crate::metrics::Snapshot::default())
            .unwrap_or_default();
        for counted in [
            "opencalling_sessions_detached_total 1\n",
            "opencalling_resumes_total{result=\"refused\"} 2\n",
            "opencalling_resumes_total{result=\"resumed\"} 1\n",
        ] {
            assert!(scrape.contains(counted), "{counted} in {scrape}");
        }
        assert_eq!(received, 1, "the server got bob's accept");
        assert_eq!(
            next(&mut bob_again).await,
            ServerMessage::AudioAvailability {
                call_id,
                user_id: UserId::new("alice").unwrap(),
                available: false
            },
            "what bob missed, once"
        );
        assert_eq!(
            next(&mut alice).await,
            ServerMessage::MemberConnection {
                call_id,
                user_id: UserId::new("bob").unwrap(),
                connected: true
            }
        );
        barrier(&hub, &mut alice).await;
        routes.relay(alice.conn, audio(0));
        let heard = bob_again.media.recv_datagram().await.unwrap();
        assert!(MediaHeader::decode(&heard).is_ok());
        // The old token is void now.
        let (refused, _) = connect(&hub, 13, "bob", Some(ResumeClaim { token, received: 4 })).await;
        assert_eq!(refused, None);
        drop(bob.media);
    }
}
