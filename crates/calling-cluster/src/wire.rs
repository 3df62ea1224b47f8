//! What nodes and the control say to each other over a node trunk.
//!
//! A node forwards what its clients do ([`ToControl`]) and carries out
//! what the switchboard decides for them ([`FromControl`]). Both travel in
//! [`TrunkFrame`]s, numbered by [`crate::trunk::TrunkBooks`] so that a trunk
//! that breaks and reconnects delivers each one exactly once, in order.
//! Encoded with postcard, like the client protocol.

use std::fmt;

use calling_api::{CallId, CallType, ErrorCode, UserId};
use serde::{Deserialize, Serialize};
use signaling_proto::{ClientMessage, DeviceLogin, FlowId, ServerMessage};

/// A node's number in its cluster. The control's node id is also its
/// switchboard's [`SwitchboardConfig::node_id`], the high half of every
/// call id it makes.
///
/// [`SwitchboardConfig::node_id`]: signaling_proto::SwitchboardConfig::node_id
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node-{:08x}", self.0)
    }
}

/// One client connection anywhere in the cluster: the node it reached and
/// the node's own number for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct NodeConn {
    /// The node the client is connected to.
    pub node: NodeId,
    /// That node's number for the connection (its hub's `ConnId`).
    pub conn: u64,
}

/// What a node tells the control about its clients: the inputs of the
/// single-node switchboard, by connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToControl {
    /// A client logged in (its UserSig already checked by the node).
    Login {
        /// The node's number for the connection.
        conn: u64,
        /// Who.
        user: UserId,
        /// The protocol version it speaks.
        protocol_version: u16,
        /// The device it named, and its user's limit.
        device: DeviceLogin,
    },
    /// A client sent a message.
    Message {
        /// The node's number for the connection.
        conn: u64,
        /// The message.
        message: ClientMessage,
    },
    /// A client's connection broke (a resumable session waits for it).
    Disconnected {
        /// The node's number for the connection.
        conn: u64,
    },
    /// The node closed a client for breaking the protocol or a limit.
    Expelled {
        /// The node's number for the connection.
        conn: u64,
    },
    /// A client resumed its session on this node (token and counts checked
    /// by the node); answered by [`FromControl::Resumed`].
    Resume {
        /// The node's number for the connection that logged the session in.
        conn: u64,
    },
    /// Messages for a client pile up on the node (or no longer do).
    Congested {
        /// The node's number for the connection.
        conn: u64,
        /// Whether they pile up now.
        congested: bool,
    },
    /// To a new control: a session the node's clients had with the old
    /// one, to be rebuilt (see `Switchboard::handle_restore`).
    Restore(RestoreReport),
    /// To a new control: every session of this node has been reported.
    RestoreDone,
}

/// A session as its node knows it, for a new control to rebuild.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreReport {
    /// The node's number for the connection that carries the session.
    pub conn: u64,
    /// Who.
    pub user: UserId,
    /// The device it named at login, and its user's limit.
    pub device: DeviceLogin,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// Its microphone is off.
    pub muted: bool,
    /// Its connection broke and it waits for a resume.
    pub detached: bool,
    /// The call it had entered, as the node last heard of it.
    pub call: Option<ReportedCall>,
}

/// A call a reported session had entered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportedCall {
    /// The call.
    pub call_id: CallId,
    /// Audio or video.
    pub call_type: CallType,
    /// The session's own flow in it.
    pub flow: FlowId,
    /// Everyone in it, as the node last heard.
    pub members: Vec<UserId>,
}

/// What the control tells a node: the single-node switchboard's outputs
/// for the node's clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FromControl {
    /// Send `message` to the client on `conn`.
    Send {
        /// The node's number for the connection.
        conn: u64,
        /// The message.
        message: ServerMessage,
    },
    /// Close the client's connection once what was sent before is flushed;
    /// its session is over.
    Close {
        /// The node's number for the connection.
        conn: u64,
        /// Why.
        code: ErrorCode,
    },
    /// The answer to a [`ToControl::Resume`]: `false` if the session had
    /// already ended.
    Resumed {
        /// The node's number for the connection.
        conn: u64,
        /// Whether the session goes on.
        resumed: bool,
    },
    /// The members who entered `call_id` are now exactly `members`, on
    /// whatever node they are: the node's relay routes by it. Sent to every
    /// node that has, or had until now, a member in the call; empty when
    /// the call is over there.
    Membership {
        /// The call.
        call_id: CallId,
        /// Its type (what a new control needs to rebuild it).
        call_type: CallType,
        /// Everyone in the call now, sorted by user.
        members: Vec<ClusterMember>,
    },
}

/// One member of a call, wherever it is connected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterMember {
    /// Who.
    pub user: UserId,
    /// Their audio's flow id in the call.
    pub flow: FlowId,
    /// Their connection.
    pub at: NodeConn,
}

/// One frame on a node trunk, either way.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrunkFrame<M> {
    /// The first frame each side sends on every connection of the trunk.
    Hello {
        /// The sender.
        node: NodeId,
        /// The control's term the sender is in (see [`crate::lease`]).
        term: u64,
        /// A node's count of the times it started afresh in this term (its
        /// sessions declared lost); the control's hello says 0.
        incarnation: u64,
        /// How many messages of this term the sender has received from
        /// the other side: it resends what follows.
        received: u64,
    },
    /// The next message, numbered implicitly by its place in the term.
    Message(M),
    /// How many messages the sender has received: the other side may
    /// forget them.
    Ack {
        /// The count.
        received: u64,
    },
    /// From the control, to a node's hello: the control gave this
    /// incarnation of the node up (its trunk was down too long) and its
    /// sessions are over; the node starts a new incarnation.
    Reset,
}

/// Encodes a frame (postcard).
pub fn encode<M: Serialize>(frame: &TrunkFrame<M>) -> Result<Vec<u8>, postcard::Error> {
    postcard::to_stdvec(frame)
}

/// Decodes a frame; anything else is an error, never a panic.
pub fn decode<'a, M: Deserialize<'a>>(bytes: &'a [u8]) -> Result<TrunkFrame<M>, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling_proto::RequestId;

    #[test]
    fn frames_round_trip_and_garbage_is_an_error() {
        let frames = [
            TrunkFrame::Hello {
                node: NodeId(7),
                term: 3,
                incarnation: 1,
                received: 41,
            },
            TrunkFrame::Message(ToControl::Message {
                conn: 9,
                message: ClientMessage::Hangup {
                    request_id: RequestId(2),
                },
            }),
            TrunkFrame::Ack { received: 42 },
            TrunkFrame::Reset,
        ];
        for frame in frames {
            let bytes = encode(&frame).expect("encodes");
            assert_eq!(decode::<ToControl>(&bytes).expect("decodes"), frame);
        }
        assert!(decode::<FromControl>(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode::<FromControl>(&[]).is_err());
    }
}
