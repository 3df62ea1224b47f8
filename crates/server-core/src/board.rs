//! The call rules as the core sees them: one trait, answered by a single
//! server's [`Switchboard`] and by a cluster node ([`ClusterBoard`]).
//!
//! [`ClusterBoard`]: crate::ClusterBoard

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use calling_api::{CallId, ErrorCode, UserId};
use calling_cluster::ClusterNode;
use signaling_proto::{
    CallSummary, ClientMessage, ConnId, DeviceLogin, Output, SessionSummary, Switchboard,
    SwitchboardCounters,
};
use tracing::debug;

use crate::output::{MemberAt, RoutedMember, ServerOutput};

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

/// Why a board cannot take a login now.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BoardRefusal {
    /// What the client is told.
    pub code: ErrorCode,
    /// Why, in words.
    pub message: String,
}

/// The call rules behind the core. Sessions are named by the [`ConnId`]
/// of the connection that logged them in. Outputs are drained with
/// [`Board::poll_output`] after every input.
pub trait Board {
    /// How long a broken version-2 session waits for a resume.
    fn resume_grace(&self) -> Duration;

    /// A login the server authenticated, from the device it names; `Err`
    /// if the board cannot take it now.
    fn handle_login(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        protocol_version: u16,
        device: DeviceLogin,
    ) -> Result<(), BoardRefusal>;
    /// What a session's client sent.
    fn handle_message(&mut self, now: Instant, conn: ConnId, message: ClientMessage);
    /// A session's connection broke: a version-2 session waits for a
    /// resume, any other ends.
    fn handle_disconnect(&mut self, now: Instant, conn: ConnId);
    /// A session ends at once (the server closed its client for a fault).
    fn handle_expelled(&mut self, now: Instant, conn: ConnId);
    /// A detached session is carried again; `false` if it is over (in a
    /// cluster the control answers later, and a session it ended already
    /// is closed by the close that arrives).
    fn handle_resume(&mut self, now: Instant, conn: ConnId) -> bool;
    /// Whether `conn`'s session waits for a resume.
    fn is_detached(&self, conn: ConnId) -> bool;
    /// Whether `conn` names a session.
    fn has_session(&self, conn: ConnId) -> bool;
    /// The sessions of `user` (one per device), oldest login first.
    fn sessions_of(&self, user: &UserId) -> Vec<ConnId>;
    /// Whether `conn`'s client is not reading its messages (invitations to
    /// it are answered busy).
    fn set_congested(&mut self, now: Instant, conn: ConnId, congested: bool);

    /// Timers due by `now`.
    fn handle_timeout(&mut self, now: Instant);
    /// The earliest timer.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next output.
    fn poll_output(&mut self) -> Option<ServerOutput>;

    /// The server stops: every session ends with `SERVER_SHUTDOWN`.
    fn shutdown(&mut self, now: Instant);
    /// Whether new calls are taken (not while draining).
    fn set_accepting_calls(&mut self, accepting: bool);
    /// A drain's step, after every input: in a cluster, idle sessions move
    /// to other nodes; a single server keeps them to the end.
    fn move_idle_sessions(&mut self, now: Instant) {
        let _ = now;
    }

    /// The operator logs `user` out; whether it was online.
    fn kick(&mut self, now: Instant, user: &UserId) -> bool;
    /// The operator ends a call for everyone; whether it existed.
    fn end_call(&mut self, now: Instant, call_id: CallId) -> bool;

    /// Every call of record (in a cluster, on the control's node only).
    fn call_summaries(&self) -> Vec<CallSummary>;
    /// Every session, sorted by user: the cluster's on the control's
    /// node, this node's own elsewhere.
    fn session_summaries(&self) -> Vec<SessionSummary>;
    /// The rules' counters (in a cluster, on the control's node only).
    fn counters(&self) -> SwitchboardCounters;
    /// Calls this server carries.
    fn call_count(&self) -> usize;
    /// Sessions on this server.
    fn online_count(&self) -> usize;
    /// Sessions on this server waiting for a resume.
    fn detached_count(&self) -> usize;
    /// Calls by how many members entered them.
    fn call_sizes(&self) -> BTreeMap<usize, usize>;
    /// The node's place in its cluster; `None` on a single server.
    fn cluster_status(&self) -> Option<ClusterStatus> {
        None
    }
    /// Hands the cluster node the IO's inputs (store answers, link
    /// frames) at `now`; nothing on a single server.
    fn handle_cluster_io(&mut self, now: Instant, apply: impl FnOnce(&mut ClusterNode)) {
        let _ = (now, apply);
    }
}

impl Board for Switchboard {
    fn resume_grace(&self) -> Duration {
        self.config().resume_grace
    }

    fn handle_login(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        protocol_version: u16,
        device: DeviceLogin,
    ) -> Result<(), BoardRefusal> {
        Switchboard::handle_device_login(self, now, conn, user, protocol_version, device);
        Ok(())
    }

    fn handle_message(&mut self, now: Instant, conn: ConnId, message: ClientMessage) {
        Switchboard::handle_message(self, now, conn, message);
    }

    fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        Switchboard::handle_disconnect(self, now, conn);
    }

    fn handle_expelled(&mut self, now: Instant, conn: ConnId) {
        Switchboard::handle_expelled(self, now, conn);
    }

    fn handle_resume(&mut self, now: Instant, conn: ConnId) -> bool {
        Switchboard::handle_resume(self, now, conn)
    }

    fn is_detached(&self, conn: ConnId) -> bool {
        Switchboard::is_detached(self, conn)
    }

    fn has_session(&self, conn: ConnId) -> bool {
        self.user_of(conn).is_some()
    }

    fn sessions_of(&self, user: &UserId) -> Vec<ConnId> {
        Switchboard::sessions_of(self, user).to_vec()
    }

    fn set_congested(&mut self, _now: Instant, conn: ConnId, congested: bool) {
        Switchboard::set_congested(self, conn, congested);
    }

    fn handle_timeout(&mut self, now: Instant) {
        Switchboard::handle_timeout(self, now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        Switchboard::poll_timeout(self)
    }

    fn poll_output(&mut self) -> Option<ServerOutput> {
        loop {
            let output = match Switchboard::poll_output(self)? {
                Output::Send { conn, message } => ServerOutput::Send { conn, message },
                Output::Close { conn, code } => ServerOutput::Close { conn, code },
                Output::Membership { call_id, members } => ServerOutput::Membership {
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
                Output::Event(event) => ServerOutput::Event {
                    event,
                    duration: None,
                },
            };
            return Some(output);
        }
    }

    fn shutdown(&mut self, now: Instant) {
        Switchboard::shutdown(self, now);
    }

    fn set_accepting_calls(&mut self, accepting: bool) {
        Switchboard::set_accepting_calls(self, accepting);
    }

    fn kick(&mut self, now: Instant, user: &UserId) -> bool {
        Switchboard::kick(self, now, user)
    }

    fn end_call(&mut self, now: Instant, call_id: CallId) -> bool {
        Switchboard::end_call(self, now, call_id)
    }

    fn call_summaries(&self) -> Vec<CallSummary> {
        Switchboard::call_summaries(self)
    }

    fn session_summaries(&self) -> Vec<SessionSummary> {
        Switchboard::session_summaries(self)
    }

    fn counters(&self) -> SwitchboardCounters {
        Switchboard::counters(self)
    }

    fn call_count(&self) -> usize {
        Switchboard::call_count(self)
    }

    fn online_count(&self) -> usize {
        Switchboard::online_count(self)
    }

    fn detached_count(&self) -> usize {
        Switchboard::detached_count(self)
    }

    fn call_sizes(&self) -> BTreeMap<usize, usize> {
        Switchboard::call_sizes(self)
    }
}
