//! What happens to calls, told to the server's operator side (metrics,
//! webhooks, call records) as the switchboard's [`Output::Event`]s.
//!
//! Clients never see these: they get their own messages. Events carry no
//! time: the glue stamps them as it drains them, which is the moment the
//! switchboard decided (it drains after every input).
//!
//! Every call is told in one order: `Started` (with its caller's
//! `Joined`), then each invitation's `Invited` … `InvitationEnded` (or a
//! lone `InvitationEnded` for one that never rang: busy, offline), each
//! member's `Joined` … `Left`, and `Ended` last, after every member's
//! `Left` and every invitation's end.
//!
//! [`Output::Event`]: crate::Output::Event

use std::time::Duration;

use calling_api::{CallId, CallType, DeviceId, EndReason, UserId};

/// How an invitation ended (or why it never rang).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InvitationOutcome {
    /// The invitee accepted: it entered the call.
    Answered,
    /// The invitee rejected it.
    Rejected,
    /// Nobody answered: the invitee was offline (and offline invitees do
    /// not ring), logged out, lost its connection or was kicked while it
    /// rang.
    NoResponse,
    /// It rang for its whole timeout.
    TimedOut,
    /// The invitee was busy (ringing, in a call, or not reading): it never
    /// rang.
    Busy,
    /// The call ended before the invitee answered (the caller hung up, the
    /// operator ended it, the server shut down).
    Cancelled,
}

impl InvitationOutcome {
    /// Every outcome, in a fixed order (for metrics with one series each).
    pub const ALL: [Self; 6] = [
        Self::Answered,
        Self::Rejected,
        Self::NoResponse,
        Self::TimedOut,
        Self::Busy,
        Self::Cancelled,
    ];

    /// A short stable name: metric labels, webhook and record fields.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Answered => "answered",
            Self::Rejected => "rejected",
            Self::NoResponse => "no_response",
            Self::TimedOut => "timed_out",
            Self::Busy => "busy",
            Self::Cancelled => "cancelled",
        }
    }
}

/// One thing that happened to a call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallEvent {
    /// `caller` opened a call (its `Joined` follows).
    Started {
        /// The call.
        call_id: CallId,
        /// Audio or video.
        call_type: CallType,
        /// Who opened it.
        caller: UserId,
    },
    /// An invitation rings `invitee`. `offline`: the invitee is not logged
    /// in; the invitation waits for it until `timeout` passes (the moment
    /// to send it a push notification), and it gets `Invited` if it logs
    /// in before.
    Invited {
        /// The call.
        call_id: CallId,
        /// Who invited.
        inviter: UserId,
        /// Who rings.
        invitee: UserId,
        /// How long it rings from now.
        timeout: Duration,
        /// Whether the invitee is offline.
        offline: bool,
    },
    /// An invitation stopped ringing, or never rang ([`InvitationOutcome::Busy`],
    /// or [`InvitationOutcome::NoResponse`] for an offline invitee when
    /// offline invitees do not ring).
    InvitationEnded {
        /// The call.
        call_id: CallId,
        /// Who invited.
        inviter: UserId,
        /// Who was invited.
        invitee: UserId,
        /// How it ended.
        outcome: InvitationOutcome,
        /// Whether the invitee was offline all along.
        offline: bool,
    },
    /// `user` entered the call.
    Joined {
        /// The call.
        call_id: CallId,
        /// Who.
        user: UserId,
        /// On which of its devices (as named at login).
        device: Option<DeviceId>,
    },
    /// `user` left the call, or was the last one in it when it ended.
    Left {
        /// The call.
        call_id: CallId,
        /// Who.
        user: UserId,
        /// Why: the user's own departure (hangup, kicked, connection lost)
        /// or, for the last member, why the call ended.
        reason: EndReason,
    },
    /// The call is over for everyone.
    Ended {
        /// The call.
        call_id: CallId,
        /// Why, as its last member was told.
        reason: EndReason,
    },
}

impl CallEvent {
    /// The call it is about.
    pub fn call_id(&self) -> CallId {
        match self {
            Self::Started { call_id, .. }
            | Self::Invited { call_id, .. }
            | Self::InvitationEnded { call_id, .. }
            | Self::Joined { call_id, .. }
            | Self::Left { call_id, .. }
            | Self::Ended { call_id, .. } => *call_id,
        }
    }
}
