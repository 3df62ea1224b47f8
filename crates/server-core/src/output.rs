//! The one thing a board and the core emit: what the server must carry out.

use std::time::Duration;

use calling_api::{CallId, ErrorCode};
use calling_cluster::{NodeConn, NodeOutput};
use signaling_proto::{CallEvent, ConnId, FlowId, ServerMessage};

/// Where a call member is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemberAt {
    /// On this server. From a board: the member's session; from the core:
    /// the connection that carries it now.
    Here(ConnId),
    /// On another node of the cluster.
    There(NodeConn),
}

/// One member of a call, as the relay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutedMember {
    /// The member's media flow.
    pub flow: FlowId,
    /// Where it is connected.
    pub at: MemberAt,
}

/// What the core counts for the server's metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// A session's connection broke and it waits for a resume.
    SessionDetached,
    /// A resume was answered: the session taken over, or refused.
    Resume {
        /// Taken over.
        resumed: bool,
    },
}

/// What the server must carry out.
///
/// A board names sessions (`conn` is the [`ConnId`] that logged the
/// session in); the core hands the same outputs on naming connections (the
/// connection that carries the session now), keeps what a detached session
/// misses in its books, and adds [`ServerOutput::Count`] and call
/// durations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerOutput {
    /// Send `message` on `conn`.
    Send {
        /// The session (from a board) or connection (from the core).
        conn: ConnId,
        /// The message.
        message: ServerMessage,
    },
    /// Flush what was sent to `conn`, then close it with `code`; its
    /// session is over.
    Close {
        /// The session (from a board) or connection (from the core).
        conn: ConnId,
        /// Why.
        code: ErrorCode,
    },
    /// A call's entered members changed (empty: it is over for this
    /// server): each member hears every other.
    Membership {
        /// The call.
        call_id: CallId,
        /// Its members; from the core, only those with a live connection.
        members: Vec<RoutedMember>,
    },
    /// Something happened to a call.
    Event {
        /// What.
        event: CallEvent,
        /// For a call that ended, how long it lasted on this server (the
        /// core fills it in).
        duration: Option<Duration>,
    },
    /// Every session on this server is over (the cluster's control that
    /// held them is gone). From a board: close them all with `code`; the
    /// core has emitted those closes already and hands this on so that
    /// routes are forgotten.
    AllSessionsLost(ErrorCode),
    /// The cluster node's IO: store requests, dials, frames for links.
    Cluster(NodeOutput),
    /// Count this (metrics).
    Count(Counted),
}
