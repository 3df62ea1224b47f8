//! A cluster node as a [`Board`]: the switchboard of record runs on the
//! control's node (see `calling-cluster`); this node forwards its clients'
//! inputs to it and hands on what comes back, and its IO (store requests,
//! dials, trunk frames) as [`ServerOutput::Cluster`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use calling_api::{CallId, ErrorCode, UserId};
use calling_cluster::{ClusterNode, FromControl, LocalSessions, NodeError, NodeOutput, ToControl};
use signaling_proto::{
    CallSummary, ClientMessage, ConnId, DeviceLogin, RequestId, ServerMessage, SessionSummary,
    Switchboard, SwitchboardCounters,
};
use tracing::{debug, warn};

use crate::board::{Board, BoardRefusal, ClusterStatus};
use crate::output::{MemberAt, RoutedMember, ServerOutput};

/// This node's place in a cluster: the sans-IO [`ClusterNode`], and the
/// answers it gives without the control from its clients' sessions
/// ([`LocalSessions`], the books a new control rebuilds from).
#[derive(Debug)]
pub struct ClusterBoard {
    node: ClusterNode,
    sessions: LocalSessions,
    resume_grace: Duration,
    /// The latest input's instant.
    now: Instant,
    accepting_calls: bool,
    outputs: VecDeque<ServerOutput>,
}

impl ClusterBoard {
    /// A board over `node`, whose sessions wait `resume_grace` for a
    /// resume.
    pub fn new(node: ClusterNode, resume_grace: Duration, now: Instant) -> Self {
        let mut board = Self {
            sessions: LocalSessions::new(node.id(), resume_grace),
            node,
            resume_grace,
            now,
            accepting_calls: true,
            outputs: VecDeque::new(),
        };
        board.pump(now);
        board
    }

    /// The node.
    pub fn node(&self) -> &ClusterNode {
        &self.node
    }

    /// Calls with a member on this node, and how many members entered
    /// each (as last published).
    fn calls_here(&self) -> HashMap<CallId, usize> {
        self.sessions
            .iter()
            .filter_map(|(_, session)| session.call.as_ref())
            .map(|call| (call.call_id, call.members.len()))
            .collect()
    }

    /// A client input for the control; refused ones are answered here.
    fn forward(&mut self, now: Instant, message: ToControl) {
        let (conn, request_id, is_new_call) = match &message {
            ToControl::Message { conn, message } => (
                Some(ConnId(*conn)),
                message.request_id(),
                matches!(message, ClientMessage::Invite { call_id: None, .. }),
            ),
            _ => (None, None, false),
        };
        if is_new_call && !self.accepting_calls {
            if let Some(conn) = conn {
                self.refuse(conn, request_id, ErrorCode::SERVER_DRAINING);
            }
            return;
        }
        if let Err(error) = self.tell_control(now, message) {
            warn!(%error, "the cluster refused a client's input");
            if let Some(conn) = conn {
                self.refuse(conn, request_id, error.code());
            }
        }
    }

    /// Hands the node a client's input, keeping the books.
    fn tell_control(&mut self, now: Instant, message: ToControl) -> Result<(), NodeError> {
        let taken = self.sessions.forward(&mut self.node, now, message);
        self.pump(now);
        taken
    }

    /// An error for `conn`'s client: a refused request, or (no request) a
    /// notice.
    fn refuse(&mut self, conn: ConnId, request_id: Option<RequestId>, code: ErrorCode) {
        self.outputs.push_back(ServerOutput::Send {
            conn,
            message: ServerMessage::Error {
                request_id,
                code,
                message: code.message().to_owned(),
            },
        });
    }

    fn disconnect(&mut self, now: Instant, conn: ConnId, expelled: bool) {
        if self.sessions.get(conn.0).is_none() {
            return;
        }
        // The books follow: a version-2 session waits for a resume, any
        // other ends.
        let message = if expelled {
            ToControl::Expelled { conn: conn.0 }
        } else {
            ToControl::Disconnected { conn: conn.0 }
        };
        if let Err(error) = self.tell_control(now, message) {
            debug!(%error, "a disconnection the control will learn of otherwise");
        }
    }

    fn on_control(&mut self, now: Instant, act: impl FnOnce(&mut Switchboard) -> bool) -> bool {
        let Some(control) = self.node.control_mut() else {
            return false;
        };
        let done = act(control.switchboard_mut());
        self.node.drain_control(now);
        self.pump(now);
        done
    }

    /// The switchboard of record, when this node hosts the control.
    fn of_record(&self) -> Option<&Switchboard> {
        self.node.control().map(|control| control.switchboard())
    }

    /// Moves the node's outputs: deliveries and events to the core, the
    /// rest to the IO; answers a new control's call for reports.
    fn pump(&mut self, now: Instant) {
        self.now = now;
        while let Some(output) = self.node.poll_output() {
            match output {
                NodeOutput::Deliver(message) => {
                    self.sessions.record_delivery(&message);
                    self.deliver(message);
                }
                NodeOutput::SessionsLost { code } => {
                    self.sessions.clear();
                    self.outputs.push_back(ServerOutput::AllSessionsLost(code));
                }
                NodeOutput::ReportSessions => {
                    for (conn, call_id) in self.sessions.report(&mut self.node, now) {
                        self.outputs.push_back(ServerOutput::Send {
                            conn: ConnId(conn),
                            message: ServerMessage::Cancelled { call_id },
                        });
                    }
                }
                NodeOutput::Event(event) => self.outputs.push_back(ServerOutput::Event {
                    event,
                    duration: None,
                }),
                io => self.outputs.push_back(ServerOutput::Cluster(io)),
            }
        }
    }

    fn deliver(&mut self, message: FromControl) {
        let me = self.node.id();
        match message {
            FromControl::Send { conn, message } => self.outputs.push_back(ServerOutput::Send {
                conn: ConnId(conn),
                message,
            }),
            FromControl::Close { conn, code } => {
                self.outputs.push_back(ServerOutput::Close {
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
                self.outputs
                    .push_back(ServerOutput::Membership { call_id, members });
            }
        }
    }
}

impl Board for ClusterBoard {
    fn resume_grace(&self) -> Duration {
        self.resume_grace
    }

    fn handle_login(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        protocol_version: u16,
        device: DeviceLogin,
    ) -> Result<(), BoardRefusal> {
        let login = ToControl::Login {
            conn: conn.0,
            user,
            protocol_version,
            device,
        };
        self.tell_control(now, login)
            .map_err(|error: NodeError| BoardRefusal {
                code: error.code(),
                message: error.to_string(),
            })
    }

    fn handle_message(&mut self, now: Instant, conn: ConnId, message: ClientMessage) {
        self.forward(
            now,
            ToControl::Message {
                conn: conn.0,
                message,
            },
        );
    }

    fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        self.disconnect(now, conn, false);
    }

    fn handle_expelled(&mut self, now: Instant, conn: ConnId) {
        self.disconnect(now, conn, true);
    }

    fn handle_resume(&mut self, now: Instant, conn: ConnId) -> bool {
        if self.sessions.get(conn.0).is_none() {
            return false;
        }
        self.tell_control(now, ToControl::Resume { conn: conn.0 })
            .is_ok()
    }

    fn is_detached(&self, conn: ConnId) -> bool {
        self.sessions
            .get(conn.0)
            .is_some_and(|session| session.detached)
    }

    fn has_session(&self, conn: ConnId) -> bool {
        self.sessions.get(conn.0).is_some()
    }

    fn sessions_of(&self, user: &UserId) -> Vec<ConnId> {
        self.sessions
            .iter()
            .filter(|(_, session)| session.user == *user)
            .map(|(conn, _)| ConnId(conn))
            .collect()
    }

    fn set_congested(&mut self, now: Instant, conn: ConnId, congested: bool) {
        self.forward(
            now,
            ToControl::Congested {
                conn: conn.0,
                congested,
            },
        );
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
        self.pump(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }

    fn poll_output(&mut self) -> Option<ServerOutput> {
        self.pump(self.now);
        self.outputs.pop_front()
    }

    fn shutdown(&mut self, now: Instant) {
        // What the node said before goes out first.
        self.pump(now);
        let conns: Vec<ConnId> = self.sessions.iter().map(|(conn, _)| ConnId(conn)).collect();
        for conn in conns {
            let _ = self.tell_control(now, ToControl::Expelled { conn: conn.0 });
            // As a single server tells its clients (their calls end for
            // them with "server"; the others hear them leave).
            self.refuse(conn, None, ErrorCode::SERVER_SHUTDOWN);
            self.outputs.push_back(ServerOutput::Close {
                conn,
                code: ErrorCode::SERVER_SHUTDOWN,
            });
        }
        self.node.leave(now);
        self.pump(now);
    }

    fn set_accepting_calls(&mut self, accepting: bool) {
        self.accepting_calls = accepting;
    }

    /// While this node drains: its sessions in no call and rung by none
    /// end (at the control, as if they had left) and their connections
    /// close with `SERVER_DRAINING`; their clients log in again, which the
    /// address they dial leads to another node. Sessions in calls stay
    /// until their calls end.
    fn move_idle_sessions(&mut self, now: Instant) {
        // What the node said before (a call's end, say) goes out first.
        self.pump(now);
        let idle: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, session)| !session.is_engaged())
            .map(|(conn, _)| ConnId(conn))
            .collect();
        for conn in idle {
            debug!(?conn, "draining: an idle session moves to another node");
            let _ = self.tell_control(now, ToControl::Expelled { conn: conn.0 });
            self.outputs.push_back(ServerOutput::Close {
                conn,
                code: ErrorCode::SERVER_DRAINING,
            });
        }
        self.pump(now);
    }

    /// On the control's node only: a cluster's operator asks that node.
    fn kick(&mut self, now: Instant, user: &UserId) -> bool {
        self.on_control(now, |switchboard| switchboard.kick(now, user))
    }

    fn end_call(&mut self, now: Instant, call_id: CallId) -> bool {
        self.on_control(now, |switchboard| switchboard.end_call(now, call_id))
    }

    fn call_summaries(&self) -> Vec<CallSummary> {
        self.of_record()
            .map(Switchboard::call_summaries)
            .unwrap_or_default()
    }

    fn session_summaries(&self) -> Vec<SessionSummary> {
        if let Some(switchboard) = self.of_record() {
            return switchboard.session_summaries();
        }
        let mut sessions: Vec<SessionSummary> = self
            .sessions
            .iter()
            .map(|(_, session)| SessionSummary {
                user: session.user.clone(),
                device: session.device.device.clone(),
                protocol_version: session.protocol_version,
                reconnecting: session.detached,
                call: session
                    .call
                    .as_ref()
                    .map(|call| call.call_id)
                    .or(session.ringing),
            })
            .collect();
        sessions.sort_by(|a, b| (&a.user, &a.device).cmp(&(&b.user, &b.device)));
        sessions
    }

    fn counters(&self) -> SwitchboardCounters {
        self.of_record()
            .map(Switchboard::counters)
            .unwrap_or_default()
    }

    fn call_count(&self) -> usize {
        self.calls_here().len()
    }

    fn online_count(&self) -> usize {
        self.sessions.len()
    }

    fn detached_count(&self) -> usize {
        self.sessions
            .iter()
            .filter(|(_, session)| session.detached)
            .count()
    }

    /// The calls with a member here, counted whole.
    fn call_sizes(&self) -> BTreeMap<usize, usize> {
        let mut sizes = BTreeMap::new();
        for members in self.calls_here().values() {
            *sizes.entry(*members).or_insert(0) += 1;
        }
        sizes
    }

    fn cluster_status(&self) -> Option<ClusterStatus> {
        let node = &self.node;
        Some(ClusterStatus {
            node: node.id().0,
            control: node
                .control_holder()
                .map(|holder| (holder.node.0, holder.term)),
            hosting: node.control().is_some(),
            ready: node.has_control_trunk(),
        })
    }

    fn handle_cluster_io(&mut self, now: Instant, apply: impl FnOnce(&mut ClusterNode)) {
        apply(&mut self.node);
        self.pump(now);
    }
}
