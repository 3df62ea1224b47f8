//! The sessions of one node's clients, as the node must remember them for a
//! new control: who, muted, waiting for a resume, rung by which call, in
//! which call with whom.
//!
//! The switchboard of record runs on the control's node; these books are
//! the one replica a node keeps of its own clients' part of it, because a
//! control can die and its successor rebuilds from the nodes' reports
//! ([`ToControl::Restore`]). [`ClusterNode`] keeps no session: whoever
//! hands it its clients' inputs (the server's cluster board) owns these
//! books, hands the node those inputs through [`LocalSessions::forward`],
//! records what comes back ([`LocalSessions::record_delivery`],
//! [`LocalSessions::clear`]) and answers [`NodeOutput::ReportSessions`](crate::NodeOutput::ReportSessions)
//! with [`LocalSessions::report`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use calling_api::{CallId, UserId};
use signaling_proto::{ClientMessage, DeviceLogin, ServerMessage};

use crate::node::{ClusterNode, NodeError};
use crate::wire::{FromControl, NodeId, ReportedCall, RestoreReport, ToControl};

/// One of this node's sessions.
#[derive(Debug, Clone)]
pub struct LocalSession {
    /// Who.
    pub user: UserId,
    /// The device it named at login, and its user's limit.
    pub device: DeviceLogin,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// Its microphone is off.
    pub muted: bool,
    /// Its connection broke and it waits for a resume (until the control
    /// says it resumed).
    pub detached: bool,
    /// The control accepted its login. A session whose login is still
    /// unanswered is not reported to a new control: the login itself is
    /// sent again.
    pub logged_in: bool,
    /// The call whose invitation rings it.
    pub ringing: Option<CallId>,
    /// The call it entered, as last published.
    pub call: Option<ReportedCall>,
}

impl LocalSession {
    /// In a call or rung by one.
    pub fn is_engaged(&self) -> bool {
        self.ringing.is_some() || self.call.is_some()
    }
}

/// This node's sessions by the node's number for their connection. See
/// the [module docs](self).
#[derive(Debug)]
pub struct LocalSessions {
    node: NodeId,
    /// Whether a version-2 session waits for a resume when its connection
    /// breaks (the switchboard's rules keep a grace).
    resumes: bool,
    sessions: BTreeMap<u64, LocalSession>,
}

impl LocalSessions {
    /// The books of `node`, whose control keeps a broken session for
    /// `resume_grace`.
    pub fn new(node: NodeId, resume_grace: Duration) -> Self {
        Self {
            node,
            resumes: !resume_grace.is_zero(),
            sessions: BTreeMap::new(),
        }
    }

    /// One session.
    pub fn get(&self, conn: u64) -> Option<&LocalSession> {
        self.sessions.get(&conn)
    }

    /// Every session, by connection.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &LocalSession)> {
        self.sessions.iter().map(|(conn, session)| (*conn, session))
    }

    /// How many.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// None.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Hands `node` one client's input for the control, keeping the
    /// books: a refused login is no session; anything else counts here
    /// even when the trunk to the control is overloaded (the control learns
    /// of a lost session from the trunk's end if not from the input).
    pub fn forward(
        &mut self,
        node: &mut ClusterNode,
        now: Instant,
        message: ToControl,
    ) -> Result<(), NodeError> {
        let login = match &message {
            ToControl::Login { conn, .. } => Some(*conn),
            _ => None,
        };
        self.record_input(&message);
        let taken = node.handle_client(now, message);
        if let (Err(_), Some(conn)) = (&taken, login) {
            self.sessions.remove(&conn);
        }
        taken
    }

    /// Answers [`NodeOutput::ReportSessions`](crate::NodeOutput::ReportSessions): reports every session to
    /// the new control; the invitations that rang are over, and returned
    /// as `(conn, call)` for the clients to hear they are cancelled.
    pub fn report(&mut self, node: &mut ClusterNode, now: Instant) -> Vec<(u64, CallId)> {
        let mut reports = Vec::with_capacity(self.sessions.len());
        let mut cancelled = Vec::new();
        for (conn, session) in &mut self.sessions {
            if !session.logged_in {
                continue;
            }
            if let Some(call_id) = session.ringing.take() {
                cancelled.push((*conn, call_id));
            }
            reports.push(RestoreReport {
                conn: *conn,
                user: session.user.clone(),
                device: session.device.clone(),
                protocol_version: session.protocol_version,
                muted: session.muted,
                detached: session.detached,
                call: session.call.clone(),
            });
        }
        node.report_sessions(now, reports);
        cancelled
    }

    fn record_input(&mut self, message: &ToControl) {
        match message {
            ToControl::Login {
                conn,
                user,
                protocol_version,
                device,
            } => {
                self.sessions.insert(
                    *conn,
                    LocalSession {
                        user: user.clone(),
                        device: device.clone(),
                        protocol_version: *protocol_version,
                        muted: false,
                        detached: false,
                        logged_in: false,
                        ringing: None,
                        call: None,
                    },
                );
            }
            ToControl::Message {
                conn,
                message: ClientMessage::Microphone { muted },
            } => {
                if let Some(session) = self.sessions.get_mut(conn) {
                    session.muted = *muted;
                }
            }
            ToControl::Disconnected { conn } => {
                let resumes = self.resumes;
                match self.sessions.get_mut(conn) {
                    Some(session) if session.protocol_version >= 2 && resumes => {
                        session.detached = true;
                    }
                    _ => {
                        self.sessions.remove(conn);
                    }
                }
            }
            ToControl::Expelled { conn } => {
                self.sessions.remove(conn);
            }
            ToControl::Message { .. }
            | ToControl::Resume { .. }
            | ToControl::Congested { .. }
            | ToControl::Restore(_)
            | ToControl::RestoreDone => {}
        }
    }

    /// The control sent `message` to this node's clients (a
    /// [`NodeOutput::Deliver`](crate::NodeOutput::Deliver)): what it changes here.
    pub fn record_delivery(&mut self, message: &FromControl) {
        match message {
            FromControl::Send { conn, message } => {
                if let Some(session) = self.sessions.get_mut(conn) {
                    note_sent(session, message);
                }
            }
            FromControl::Close { conn, .. } => {
                self.sessions.remove(conn);
            }
            FromControl::Resumed { conn, resumed } => {
                if let Some(session) = self.sessions.get_mut(conn)
                    && *resumed
                {
                    session.detached = false;
                }
            }
            FromControl::Membership {
                call_id,
                call_type,
                members,
            } => {
                let users: Vec<UserId> = members.iter().map(|member| member.user.clone()).collect();
                for session in self.sessions.values_mut() {
                    if session
                        .call
                        .as_ref()
                        .is_some_and(|call| call.call_id == *call_id)
                    {
                        session.call = None;
                    }
                }
                let here = members.iter().filter(|member| member.at.node == self.node);
                for member in here {
                    if let Some(session) = self.sessions.get_mut(&member.at.conn) {
                        session.ringing = None;
                        session.call = Some(ReportedCall {
                            call_id: *call_id,
                            call_type: *call_type,
                            flow: member.flow,
                            members: users.clone(),
                        });
                    }
                }
            }
        }
    }

    /// Every session is over ([`NodeOutput::SessionsLost`](crate::NodeOutput::SessionsLost)).
    pub fn clear(&mut self) {
        self.sessions.clear();
    }
}

fn note_sent(session: &mut LocalSession, message: &ServerMessage) {
    match message {
        ServerMessage::LoginResult { code, .. } if code.is_ok() => session.logged_in = true,
        ServerMessage::Invited { call_id, .. } => session.ringing = Some(*call_id),
        ServerMessage::InvitationTimedOut { call_id }
        | ServerMessage::Cancelled { call_id }
        | ServerMessage::HandledElsewhere { call_id, .. }
            if session.ringing == Some(*call_id) =>
        {
            session.ringing = None;
        }
        ServerMessage::CallEnded { call_id, .. } => {
            if session.ringing == Some(*call_id) {
                session.ringing = None;
            }
            if session
                .call
                .as_ref()
                .is_some_and(|call| call.call_id == *call_id)
            {
                session.call = None;
            }
        }
        _ => {}
    }
}
