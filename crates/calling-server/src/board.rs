//! What the hub drives: the switchboard itself on a single server, or this
//! node's place in a cluster, whose switchboard runs on the control node
//! (see `calling-cluster`). The hub asks the same questions of both and
//! carries out the same [`Step`]s.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use calling_api::{CallId, ErrorCode, UserId};
use calling_cluster::{ClusterNode, FromControl, NodeConn, NodeError, NodeOutput, ToControl};
use signaling_proto::{
    CallEvent, CallSummary, ClientMessage, ConnId, FlowId, Output, ServerMessage, SessionSummary,
    Switchboard, SwitchboardCounters,
};
use tracing::{debug, warn};

use crate::cluster::ClusterIo;

/// A node's place in its cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterStatus {
    /// This node's id (random at each start).
    pub node: u32,
    /// The node holding the control role, as this node knows it, and its
    /// term.
    pub control: Option<(u32, u64)>,
    /// Whether this node hosts the control.
    pub hosting: bool,
    /// Whether this node takes logins: it follows a control, and its link
    /// to it is up (or the control is this node).
    pub ready: bool,
}

/// Where a call member is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MemberAt {
    /// On this server.
    Here(ConnId),
    /// On another node of the cluster.
    There(NodeConn),
}

/// One member of a call, as the relay needs it.
#[derive(Debug, Clone)]
pub(crate) struct RoutedMember {
    pub(crate) flow: FlowId,
    pub(crate) at: MemberAt,
}

/// What the hub must carry out.
#[derive(Debug)]
pub(crate) enum Step {
    Send {
        conn: ConnId,
        message: ServerMessage,
    },
    Close {
        conn: ConnId,
        code: ErrorCode,
    },
    Membership {
        call_id: CallId,
        members: Vec<RoutedMember>,
    },
    Event(CallEvent),
    /// Every session on this server is over (the cluster's control that
    /// held them is gone): close them all with `code`.
    AllSessionsLost(ErrorCode),
}

/// The hub's switchboard, here or in the cluster.
#[derive(Debug)]
pub(crate) enum Board {
    Local(Box<Switchboard>),
    Cluster(Box<ClusterBoard>),
}

impl Board {
    pub(crate) fn resume_grace(&self) -> Duration {
        match self {
            Self::Local(switchboard) => switchboard.config().resume_grace,
            Self::Cluster(cluster) => cluster.resume_grace,
        }
    }

    /// A login the hub accepted; in a cluster, `Err` if the cluster cannot
    /// take it now (the hub refuses it with the error's code).
    pub(crate) fn handle_login(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        protocol_version: u16,
    ) -> Result<(), NodeError> {
        match self {
            Self::Local(switchboard) => {
                switchboard.handle_login(now, conn, user, protocol_version);
                Ok(())
            }
            Self::Cluster(cluster) => cluster.login(now, conn, user, protocol_version),
        }
    }

    pub(crate) fn handle_message(&mut self, now: Instant, conn: ConnId, message: ClientMessage) {
        match self {
            Self::Local(switchboard) => switchboard.handle_message(now, conn, message),
            Self::Cluster(cluster) => cluster.forward(
                now,
                ToControl::Message {
                    conn: conn.0,
                    message,
                },
            ),
        }
    }

    pub(crate) fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        match self {
            Self::Local(switchboard) => switchboard.handle_disconnect(now, conn),
            Self::Cluster(cluster) => cluster.disconnect(now, conn, false),
        }
    }

    pub(crate) fn handle_expelled(&mut self, now: Instant, conn: ConnId) {
        match self {
            Self::Local(switchboard) => switchboard.handle_expelled(now, conn),
            Self::Cluster(cluster) => cluster.disconnect(now, conn, true),
        }
    }

    /// In a cluster the control answers later; a session it ended already
    /// is closed by the close that reaches this node first.
    pub(crate) fn handle_resume(&mut self, now: Instant, conn: ConnId) -> bool {
        match self {
            Self::Local(switchboard) => switchboard.handle_resume(now, conn),
            Self::Cluster(cluster) => cluster.resume(now, conn),
        }
    }

    pub(crate) fn is_detached(&self, conn: ConnId) -> bool {
        match self {
            Self::Local(switchboard) => switchboard.is_detached(conn),
            Self::Cluster(cluster) => cluster
                .node
                .session(conn.0)
                .is_some_and(|session| session.detached),
        }
    }

    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        match self {
            Self::Local(switchboard) => switchboard.handle_timeout(now),
            Self::Cluster(cluster) => {
                cluster.node.handle_timeout(now);
            }
        }
    }

    pub(crate) fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Self::Local(switchboard) => switchboard.poll_timeout(),
            Self::Cluster(cluster) => cluster.node.poll_timeout(),
        }
    }

    pub(crate) fn poll_output(&mut self) -> Option<Step> {
        match self {
            Self::Local(switchboard) => loop {
                let step = match switchboard.poll_output()? {
                    Output::Send { conn, message } => Step::Send { conn, message },
                    Output::Close { conn, code } => Step::Close { conn, code },
                    Output::Membership { call_id, members } => Step::Membership {
                        call_id,
                        members: members
                            .into_iter()
                            .map(|member| RoutedMember {
                                flow: member.flow,
                                at: MemberAt::Here(member.conn),
                            })
                            .collect(),
                    },
                    Output::Unrouted { user, message } => {
                        // One server: a user without a session here is offline.
                        debug!(%user, ?message, "message for a user not on this server: dropped");
                        continue;
                    }
                    Output::Event(event) => Step::Event(event),
                };
                return Some(step);
            },
            Self::Cluster(cluster) => cluster.poll_step(),
        }
    }

    pub(crate) fn shutdown(&mut self, now: Instant) {
        match self {
            Self::Local(switchboard) => switchboard.shutdown(now),
            Self::Cluster(cluster) => cluster.shutdown(now),
        }
    }

    /// A drain's step, after every input: in a cluster, idle sessions move
    /// to other nodes; a single server keeps them to the end.
    pub(crate) fn move_idle_sessions(&mut self, now: Instant) {
        if let Self::Cluster(cluster) = self {
            cluster.move_idle_sessions(now);
        }
    }

    pub(crate) fn set_accepting_calls(&mut self, accepting: bool) {
        match self {
            Self::Local(switchboard) => switchboard.set_accepting_calls(accepting),
            Self::Cluster(cluster) => cluster.accepting_calls = accepting,
        }
    }

    /// The switchboard of record, where this server has it: always on a
    /// single server; in a cluster on the control's node.
    fn of_record(&self) -> Option<&Switchboard> {
        match self {
            Self::Local(switchboard) => Some(switchboard),
            Self::Cluster(cluster) => cluster.node.control().map(|control| control.switchboard()),
        }
    }

    /// The operator's kick: on the switchboard of record only (a cluster's
    /// operator asks the control's node).
    pub(crate) fn kick(&mut self, now: Instant, user: &UserId) -> bool {
        match self {
            Self::Local(switchboard) => switchboard.kick(now, user),
            Self::Cluster(cluster) => {
                cluster.on_control(now, |switchboard| switchboard.kick(now, user))
            }
        }
    }

    pub(crate) fn end_call(&mut self, now: Instant, call_id: CallId) -> bool {
        match self {
            Self::Local(switchboard) => switchboard.end_call(now, call_id),
            Self::Cluster(cluster) => {
                cluster.on_control(now, |switchboard| switchboard.end_call(now, call_id))
            }
        }
    }

    pub(crate) fn call_summaries(&self) -> Vec<CallSummary> {
        self.of_record()
            .map(Switchboard::call_summaries)
            .unwrap_or_default()
    }

    /// Sessions: the cluster's on the control's node, this node's own
    /// elsewhere.
    pub(crate) fn session_summaries(&self) -> Vec<SessionSummary> {
        match (self, self.of_record()) {
            (_, Some(switchboard)) => switchboard.session_summaries(),
            (Self::Cluster(cluster), None) => cluster.session_summaries(),
            (Self::Local(_), None) => Vec::new(),
        }
    }

    pub(crate) fn counters(&self) -> SwitchboardCounters {
        self.of_record()
            .map(Switchboard::counters)
            .unwrap_or_default()
    }

    pub(crate) fn call_count(&self) -> usize {
        match self {
            Self::Local(switchboard) => switchboard.call_count(),
            Self::Cluster(cluster) => cluster.calls_here().len(),
        }
    }

    pub(crate) fn online_count(&self) -> usize {
        match self {
            Self::Local(switchboard) => switchboard.online_count(),
            Self::Cluster(cluster) => cluster.node.sessions().count(),
        }
    }

    pub(crate) fn detached_count(&self) -> usize {
        match self {
            Self::Local(switchboard) => switchboard.detached_count(),
            Self::Cluster(cluster) => cluster
                .node
                .sessions()
                .filter(|(_, session)| session.detached)
                .count(),
        }
    }

    /// Calls by how many members have entered them: this server's calls
    /// (in a cluster, the calls with a member here, counted whole).
    pub(crate) fn call_sizes(&self) -> BTreeMap<usize, usize> {
        match self {
            Self::Local(switchboard) => switchboard.call_sizes(),
            Self::Cluster(cluster) => {
                let mut sizes = BTreeMap::new();
                for members in cluster.calls_here().values() {
                    *sizes.entry(*members).or_insert(0) += 1;
                }
                sizes
            }
        }
    }

    pub(crate) fn set_congested(&mut self, conn: ConnId, congested: bool) {
        match self {
            Self::Local(switchboard) => switchboard.set_congested(conn, congested),
            Self::Cluster(cluster) => cluster.forward(
                Instant::now(),
                ToControl::Congested {
                    conn: conn.0,
                    congested,
                },
            ),
        }
    }

    pub(crate) fn cluster_status(&self) -> Option<ClusterStatus> {
        let Self::Cluster(cluster) = self else {
            return None;
        };
        let node = &cluster.node;
        Some(ClusterStatus {
            node: node.id().0,
            control: node
                .control_holder()
                .map(|holder| (holder.node.0, holder.term)),
            hosting: node.control().is_some(),
            ready: node.is_linked(),
        })
    }

    pub(crate) fn has_session(&self, conn: ConnId) -> bool {
        match self {
            Self::Local(switchboard) => switchboard.user_of(conn).is_some(),
            Self::Cluster(cluster) => cluster.node.session(conn.0).is_some(),
        }
    }

    pub(crate) fn conn_of(&self, user: &UserId) -> Option<ConnId> {
        match self {
            Self::Local(switchboard) => switchboard.conn_of(user),
            Self::Cluster(cluster) => cluster
                .node
                .sessions()
                .find(|(_, session)| session.user == *user)
                .map(|(conn, _)| ConnId(conn)),
        }
    }
}

/// This node's place in a cluster: the sans-IO [`ClusterNode`] (which also
/// keeps the books of this node's sessions the hub asks about) and its IO
/// ([`ClusterIo`]).
#[derive(Debug)]
pub(crate) struct ClusterBoard {
    pub(crate) node: ClusterNode,
    pub(crate) io: ClusterIo,
    resume_grace: Duration,
    accepting_calls: bool,
    steps: std::collections::VecDeque<Step>,
}

impl ClusterBoard {
    pub(crate) fn new(node: ClusterNode, io: ClusterIo, resume_grace: Duration) -> Self {
        let mut board = Self {
            node,
            io,
            resume_grace,
            accepting_calls: true,
            steps: std::collections::VecDeque::new(),
        };
        board.pump();
        board
    }

    fn login(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        protocol_version: u16,
    ) -> Result<(), NodeError> {
        let login = ToControl::Login {
            conn: conn.0,
            user,
            protocol_version,
        };
        self.node.handle_client(now, login)?;
        self.pump();
        Ok(())
    }

    /// Calls with a member on this node, and how many members entered
    /// each (as last published).
    fn calls_here(&self) -> HashMap<CallId, usize> {
        self.node
            .sessions()
            .filter_map(|(_, session)| session.call.as_ref())
            .map(|call| (call.call_id, call.members.len()))
            .collect()
    }

    /// A client input for the control; refused ones are answered here.
    fn forward(&mut self, now: Instant, message: ToControl) {
        let conn = match &message {
            ToControl::Message { conn, .. } => Some(ConnId(*conn)),
            _ => None,
        };
        let request_id = match &message {
            ToControl::Message { message, .. } => message.request_id(),
            _ => None,
        };
        let is_new_call = matches!(
            &message,
            ToControl::Message {
                message: ClientMessage::Invite { call_id: None, .. },
                ..
            }
        );
        if is_new_call && !self.accepting_calls {
            if let Some(conn) = conn {
                self.refuse(conn, request_id, ErrorCode::SERVER_DRAINING);
            }
            return;
        }
        if let Err(error) = self.node.handle_client(now, message) {
            warn!(%error, "the cluster refused a client's input");
            if let Some(conn) = conn {
                self.refuse(conn, request_id, error.code());
            }
        }
        self.pump();
    }

    /// An error for `conn`'s client: a refused request, or (no request) a
    /// notice.
    fn refuse(
        &mut self,
        conn: ConnId,
        request_id: Option<signaling_proto::RequestId>,
        code: ErrorCode,
    ) {
        self.steps.push_back(Step::Send {
            conn,
            message: ServerMessage::Error {
                request_id,
                code,
                message: code.message().to_owned(),
            },
        });
    }

    fn disconnect(&mut self, now: Instant, conn: ConnId, expelled: bool) {
        if self.node.session(conn.0).is_none() {
            return;
        }
        // The node's books follow: a version-2 session waits for a resume,
        // any other ends.
        let message = if expelled {
            ToControl::Expelled { conn: conn.0 }
        } else {
            ToControl::Disconnected { conn: conn.0 }
        };
        if let Err(error) = self.node.handle_client(now, message) {
            debug!(%error, "a disconnection the control will learn of otherwise");
        }
        self.pump();
    }

    fn resume(&mut self, now: Instant, conn: ConnId) -> bool {
        if self.node.session(conn.0).is_none() {
            return false;
        }
        let resumed = self
            .node
            .handle_client(now, ToControl::Resume { conn: conn.0 })
            .is_ok();
        self.pump();
        resumed
    }

    fn shutdown(&mut self, now: Instant) {
        let conns: Vec<ConnId> = self.node.sessions().map(|(conn, _)| ConnId(conn)).collect();
        for conn in conns {
            let _ = self
                .node
                .handle_client(now, ToControl::Expelled { conn: conn.0 });
            // As a single server tells its clients (their calls end for
            // them with "server"; the others hear them leave).
            self.refuse(conn, None, ErrorCode::SERVER_SHUTDOWN);
            self.steps.push_back(Step::Close {
                conn,
                code: ErrorCode::SERVER_SHUTDOWN,
            });
        }
        self.node.leave(now);
        self.pump();
    }

    /// While this node drains: its sessions in no call and rung by none
    /// end (at the control, as if they had left) and their connections
    /// close with `SERVER_DRAINING`; their clients log in again, which the
    /// address they dial leads to another node. Sessions in calls stay
    /// until their calls end.
    fn move_idle_sessions(&mut self, now: Instant) {
        let idle: Vec<ConnId> = self
            .node
            .sessions()
            .filter(|(_, session)| !session.is_engaged())
            .map(|(conn, _)| ConnId(conn))
            .collect();
        for conn in idle {
            debug!(?conn, "draining: an idle session moves to another node");
            let _ = self
                .node
                .handle_client(now, ToControl::Expelled { conn: conn.0 });
            self.steps.push_back(Step::Close {
                conn,
                code: ErrorCode::SERVER_DRAINING,
            });
        }
        self.pump();
    }

    fn on_control(&mut self, now: Instant, act: impl FnOnce(&mut Switchboard) -> bool) -> bool {
        let Some(control) = self.node.control_mut() else {
            return false;
        };
        let done = act(control.switchboard_mut());
        self.node.drain_control(now);
        self.pump();
        done
    }

    fn session_summaries(&self) -> Vec<SessionSummary> {
        let mut sessions: Vec<SessionSummary> = self
            .node
            .sessions()
            .map(|(_, session)| SessionSummary {
                user: session.user.clone(),
                protocol_version: session.protocol_version,
                reconnecting: session.detached,
                call: session
                    .call
                    .as_ref()
                    .map(|call| call.call_id)
                    .or(session.ringing),
            })
            .collect();
        sessions.sort_by(|a, b| a.user.cmp(&b.user));
        sessions
    }

    /// Input from the cluster's IO (store answers, link frames).
    pub(crate) fn handle_io(&mut self, now: Instant, input: crate::cluster::IoInput) {
        self.io.apply(&mut self.node, now, input);
        self.pump();
    }

    fn poll_step(&mut self) -> Option<Step> {
        self.pump();
        self.steps.pop_front()
    }

    /// Moves the node's outputs: IO to the IO tasks, deliveries to steps.
    fn pump(&mut self) {
        let me = self.node.id();
        while let Some(output) = self.node.poll_output() {
            match output {
                NodeOutput::Deliver(message) => self.deliver(message),
                NodeOutput::SessionsLost { code } => {
                    self.steps.push_back(Step::AllSessionsLost(code));
                }
                NodeOutput::Event(event) => self.steps.push_back(Step::Event(event)),
                io => self.io.carry_out(me, io),
            }
        }
    }

    fn deliver(&mut self, message: FromControl) {
        let me = self.node.id();
        match message {
            FromControl::Send { conn, message } => self.steps.push_back(Step::Send {
                conn: ConnId(conn),
                message,
            }),
            FromControl::Close { conn, code } => {
                self.steps.push_back(Step::Close {
                    conn: ConnId(conn),
                    code,
                });
            }
            FromControl::Resumed { conn, resumed } => {
                if !resumed {
                    debug!(conn, "the control had ended the resumed session already");
                }
            }
            FromControl::Membership {
                call_id, members, ..
            } => {
                let members = members
                    .into_iter()
                    .map(|member| RoutedMember {
                        flow: member.flow,
                        at: if member.at.node == me {
                            MemberAt::Here(ConnId(member.at.conn))
                        } else {
                            MemberAt::There(member.at)
                        },
                    })
                    .collect();
                self.steps.push_back(Step::Membership { call_id, members });
            }
        }
    }
}
