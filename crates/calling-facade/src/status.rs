//! Where a session stands, as one value a screen can show: the call and
//! the connection, kept by the driver after every step, so that an
//! application need not rebuild it from a subset of events.

use calling_api::{CallId, UserId};
use signaling_proto::{CallEngine, EngineStatus};

/// Where the call stands. An extension: the original's apps track its
/// callbacks instead.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum CallStatus {
    /// Not logged in (or the session ended).
    #[default]
    LoggedOut,
    /// Logging in.
    LoggingIn,
    /// Logged in, no call.
    Idle,
    /// Calling: the invitations ring, nobody has entered yet.
    Calling {
        /// Whom it rings.
        invitees: Vec<UserId>,
    },
    /// An invitation rings this user.
    Ringing {
        /// Who invites.
        sponsor: UserId,
        /// The call's other members and invitees.
        others: Vec<UserId>,
    },
    /// Answered; the server has not confirmed yet.
    Accepting,
    /// In a call.
    InCall {
        /// The call.
        call_id: CallId,
        /// Everyone else who entered and has not left, sorted.
        members: Vec<UserId>,
        /// Whom it still rings, sorted.
        invitees: Vec<UserId>,
    },
}

/// A session at a glance: [`TRTCCalling::status`](crate::TRTCCalling::status).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SessionStatus {
    /// The call.
    pub call: CallStatus,
    /// The connection broke and the SDK is repairing it
    /// ([`CallingEvent::Reconnecting`](calling_api::CallingEvent::Reconnecting)
    /// until `Reconnected`); the call waits meanwhile.
    pub reconnecting: bool,
}

impl SessionStatus {
    /// What `engine` says now.
    pub(crate) fn of(engine: &CallEngine) -> Self {
        let call = match engine.status() {
            EngineStatus::LoggedOut => CallStatus::LoggedOut,
            EngineStatus::LoggingIn => CallStatus::LoggingIn,
            EngineStatus::Idle => CallStatus::Idle,
            EngineStatus::Dialing => CallStatus::Calling {
                invitees: engine.invitees(),
            },
            EngineStatus::Ringing(invitation) => CallStatus::Ringing {
                sponsor: invitation.sponsor,
                others: invitation.user_ids,
            },
            EngineStatus::Accepting(_) => CallStatus::Accepting,
            EngineStatus::InCall { members, .. } if members.is_empty() => CallStatus::Calling {
                invitees: engine.invitees(),
            },
            EngineStatus::InCall { call_id, members } => CallStatus::InCall {
                call_id,
                members: members.into_iter().collect(),
                invitees: engine.invitees(),
            },
        };
        Self {
            call,
            reconnecting: engine.is_reconnecting(),
        }
    }
}
