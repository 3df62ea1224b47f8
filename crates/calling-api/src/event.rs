//! The events an application receives: one per callback of the original
//! listener, plus our extensions.

use serde::{Deserialize, Serialize};

use crate::{CallId, CallType, EndReason, ErrorCode, UserId};

/// One speaker's level in a [`CallingEvent::UserVoiceVolume`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserVolume {
    /// The speaker; the local user appears under its own id.
    pub user_id: UserId,
    /// 0 (silent) to 100 (full scale).
    pub volume: u8,
}

/// How good a network is, as the original's successor rates it (its
/// quality levels, numbered as there): the worst of the path's loss, round
/// trip and jitter against docs/protocol.md's thresholds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[repr(u8)]
pub enum NetworkQuality {
    /// Nothing measured yet (or a member whose SDK does not say).
    #[default]
    Unknown = 0,
    /// Loss under 1 %, round trip under 100 ms, jitter under 20 ms.
    Excellent = 1,
    /// Loss under 3 %, round trip under 200 ms, jitter under 40 ms.
    Good = 2,
    /// Loss under 8 %, round trip under 350 ms, jitter under 80 ms.
    Poor = 3,
    /// Loss under 15 %, round trip under 600 ms, jitter under 150 ms.
    Bad = 4,
    /// Worse than bad, but connected.
    VeryBad = 5,
    /// No connection (the local user reconnecting), or nothing from the
    /// member for 3 s.
    Down = 6,
}

impl std::fmt::Display for NetworkQuality {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Unknown => "unknown",
            Self::Excellent => "excellent",
            Self::Good => "good",
            Self::Poor => "poor",
            Self::Bad => "bad",
            Self::VeryBad => "very bad",
            Self::Down => "down",
        })
    }
}

/// One remote member's level in a [`CallingEvent::NetworkQuality`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberQuality {
    /// The member.
    pub user_id: UserId,
    /// Its network, as its SDK measures it and the server adds to.
    pub quality: NetworkQuality,
}

/// Everything the SDK tells an application.
///
/// One variant per delegate callback of the original API, with exactly its
/// parameters (`onInvited` → [`CallingEvent::Invited`] and so on), then our
/// extensions, which an application written for the original may ignore.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CallingEvent {
    /// `onError`: an error the SDK cannot recover from by itself; show it.
    Error {
        /// Stable error number.
        code: ErrorCode,
        /// Human description.
        msg: String,
    },
    /// `onReject` (caller): that invitee rejected.
    Reject {
        /// The invitee.
        user_id: UserId,
    },
    /// `onNoResp` (caller): that invitee did not answer before the invitation
    /// timed out, or was offline.
    NoResp {
        /// The invitee.
        user_id: UserId,
    },
    /// `onLineBusy` (caller): that invitee is busy in another call.
    LineBusy {
        /// The invitee.
        user_id: UserId,
    },
    /// `onInvited` (invitee): someone invites you.
    Invited {
        /// Who sent the invitation.
        sponsor: UserId,
        /// The other members and invitees of the call: not you, not the sponsor.
        user_ids: Vec<UserId>,
        /// Whether this is a multi-party call (`user_ids` is not empty).
        is_from_group: bool,
        /// Audio or video.
        call_type: CallType,
    },
    /// `onCallingCancel` (invitee): the caller cancelled before you answered.
    CallingCancel,
    /// `onCallingTimeOut` (invitee): the invitation timed out before you answered.
    CallingTimeOut,
    /// `onUserEnter`: a user joined the call.
    UserEnter {
        /// Who joined.
        user_id: UserId,
    },
    /// `onUserLeave`: a user left the call.
    UserLeave {
        /// Who left.
        user_id: UserId,
    },
    /// `onUserAudioAvailable`: a user's upstream audio turned on or off.
    UserAudioAvailable {
        /// Whose audio.
        user_id: UserId,
        /// `false` while that user's microphone is muted.
        available: bool,
    },
    /// `onUserVoiceVolume`: periodic levels while in a call.
    UserVoiceVolume {
        /// Each speaking user's level, the local user included.
        user_volumes: Vec<UserVolume>,
        /// The remote participants' level (the loudest of them), 0 to 100:
        /// as in the original, the local user's own voice is not part of it.
        total_volume: u8,
    },
    /// `onCallEnd`: the call is over for you.
    CallEnd,

    /// Extension: sent right after every [`CallingEvent::CallEnd`], saying which
    /// call ended and why.
    CallEnded {
        /// The call that ended.
        call_id: CallId,
        /// Why it ended.
        reason: EndReason,
    },
    /// Extension: the same user logged in elsewhere and this session is over.
    /// Sent after the [`CallingEvent::CallEnd`] of a call it ended, if any.
    KickedOffline,
    /// Extension: a call's microphone or speaker could not be opened (no
    /// such device, a build without device support, an unusable file): the
    /// call goes on, sending silence or playing nowhere. Once per device per
    /// call.
    AudioDeviceUnavailable {
        /// Which side.
        device: AudioDeviceKind,
        /// Why, for a person.
        reason: String,
    },
    /// Extension: the connection to the server broke and the SDK is
    /// reconnecting by itself; the call, if any, waits. Followed by
    /// [`CallingEvent::Reconnected`] once the session goes on, or by the end
    /// of what could not be kept (`onCallEnd` with
    /// [`EndReason::ConnectionLost`]) and then `Reconnected`, or by `onError`
    /// if the SDK cannot log in again.
    Reconnecting,
    /// Extension: the SDK is connected and logged in again after
    /// [`CallingEvent::Reconnecting`].
    Reconnected,
    /// Extension: a member of your call lost its connection and is
    /// reconnecting; its audio pauses. It comes back
    /// ([`CallingEvent::UserReconnected`]) or leaves (`onUserLeave`).
    UserReconnecting {
        /// The member.
        user_id: UserId,
    },
    /// Extension: a member that was reconnecting is back.
    UserReconnected {
        /// The member.
        user_id: UserId,
    },
    /// Extension (caller): that invitee is not logged in. The invitation
    /// waits for them: it rings if they log in before it times out
    /// (`onNoResp` otherwise).
    InviteeOffline {
        /// The invitee.
        user_id: UserId,
    },
    /// Extension, right after [`CallingEvent::CallingCancel`]: the
    /// invitation stopped ringing here because the same user answered it
    /// on another device (or declined it there, which declines it for
    /// every device). Only on servers that let a user log in on several
    /// devices at once.
    HandledElsewhere {
        /// The call that rang.
        call_id: CallId,
        /// What the other device did.
        answer: ElsewhereAnswer,
    },
    /// Extension (the successor's `onUserNetworkQualityChanged`): the
    /// network quality of the local user or of a member of the call
    /// changed; at most once a second, while in a call.
    NetworkQuality {
        /// The local user's network.
        local: NetworkQuality,
        /// Each other member's, in the order of the call's members.
        remote: Vec<MemberQuality>,
    },
    /// Extension (end-to-end encrypted audio, protocol version 7): a
    /// member's audio does not decrypt here, and plays as silence: the
    /// application has no key for that member, or not the one the member
    /// sealed its audio with. Once per member until its audio decrypts
    /// again.
    MediaKeyProblem {
        /// The member.
        user_id: UserId,
        /// What is wrong.
        problem: KeyProblem,
    },
    /// Extension (end-to-end encrypted audio with built-in keys): a
    /// member's identity key, once per member and call, as its safety
    /// number with this device. Two people who read the same number on
    /// their screens know that nobody stands between their devices.
    /// `changed`: this device knew other identity keys of that user, and
    /// not this one (a new device or a reinstalled app of theirs, or
    /// someone in between: worth comparing the number again).
    MemberIdentity {
        /// The member.
        user_id: UserId,
        /// 60 digits in twelve groups of five, the same on both devices.
        safety_number: String,
        /// A key other than those known for that user before.
        changed: bool,
    },
}

/// Why a member's end-to-end encrypted audio does not decrypt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum KeyProblem {
    /// No key: the application gave none for the member, or the member's
    /// announcement of its key has not arrived.
    Missing,
    /// A key, but not the member's: the member's key material differs
    /// from the one the application gave here.
    Wrong,
}

impl std::fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Missing => "no key for the member",
            Self::Wrong => "not the member's key",
        })
    }
}

/// What another device of the same user did with an invitation that rang
/// on both (CallKit's `answeredElsewhere` and `declinedElsewhere`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ElsewhereAnswer {
    /// It accepted: the call goes on there.
    Answered,
    /// It rejected: the invitation is declined for every device.
    Declined,
}

impl std::fmt::Display for ElsewhereAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Answered => "answered elsewhere",
            Self::Declined => "declined elsewhere",
        })
    }
}

/// The two sides of a call's audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AudioDeviceKind {
    /// Where the local voice comes from.
    Microphone,
    /// Where the call is heard.
    Speaker,
}

impl std::fmt::Display for AudioDeviceKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Microphone => "microphone",
            Self::Speaker => "speaker",
        })
    }
}

impl CallingEvent {
    /// Whether this is one of the reports that come on their own schedule
    /// while in a call (`onUserVoiceVolume`, the network quality), rather
    /// than news of the call itself.
    pub fn is_report(&self) -> bool {
        matches!(
            self,
            Self::UserVoiceVolume { .. } | Self::NetworkQuality { .. }
        )
    }

    /// The name of the original's delegate callback this event stands for,
    /// or `None` for our extensions.
    pub fn original_name(&self) -> Option<&'static str> {
        Some(match self {
            Self::Error { .. } => "onError",
            Self::Reject { .. } => "onReject",
            Self::NoResp { .. } => "onNoResp",
            Self::LineBusy { .. } => "onLineBusy",
            Self::Invited { .. } => "onInvited",
            Self::CallingCancel => "onCallingCancel",
            Self::CallingTimeOut => "onCallingTimeOut",
            Self::UserEnter { .. } => "onUserEnter",
            Self::UserLeave { .. } => "onUserLeave",
            Self::UserAudioAvailable { .. } => "onUserAudioAvailable",
            Self::UserVoiceVolume { .. } => "onUserVoiceVolume",
            Self::CallEnd => "onCallEnd",
            Self::CallEnded { .. }
            | Self::KickedOffline
            | Self::AudioDeviceUnavailable { .. }
            | Self::Reconnecting
            | Self::Reconnected
            | Self::UserReconnecting { .. }
            | Self::UserReconnected { .. }
            | Self::InviteeOffline { .. }
            | Self::HandledElsewhere { .. }
            | Self::NetworkQuality { .. }
            | Self::MediaKeyProblem { .. }
            | Self::MemberIdentity { .. } => {
                return None;
            }
        })
    }
}

/// The original's callback with its parameters, as a person reads it:
/// `onInvited(sponsor: alice, others: [bob], group: true, type: Audio)`,
/// `onUserAudioAvailable(bob, false)`, `CallEnded(call-2: hung up)`.
impl std::fmt::Display for CallingEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = self.original_name().unwrap_or_default();
        match self {
            Self::Error { code, msg } => write!(f, "{name}({}, {msg:?})", code.as_i32()),
            Self::Reject { user_id }
            | Self::NoResp { user_id }
            | Self::LineBusy { user_id }
            | Self::UserEnter { user_id }
            | Self::UserLeave { user_id } => write!(f, "{name}({user_id})"),
            Self::Invited {
                sponsor,
                user_ids,
                is_from_group,
                call_type,
            } => {
                let others: Vec<&str> = user_ids.iter().map(UserId::as_str).collect();
                write!(
                    f,
                    "{name}(sponsor: {sponsor}, others: [{}], group: {is_from_group}, type: {call_type:?})",
                    others.join(", ")
                )
            }
            Self::UserAudioAvailable { user_id, available } => {
                write!(f, "{name}({user_id}, {available})")
            }
            Self::UserVoiceVolume {
                user_volumes,
                total_volume,
            } => {
                let volumes: Vec<String> = user_volumes
                    .iter()
                    .map(|volume| format!("{} {}", volume.user_id, volume.volume))
                    .collect();
                write!(f, "{name}({}; total {total_volume})", volumes.join(", "))
            }
            Self::CallingCancel | Self::CallingTimeOut | Self::CallEnd => f.write_str(name),
            Self::CallEnded { call_id, reason } => write!(f, "CallEnded({call_id}: {reason})"),
            Self::KickedOffline => f.write_str("KickedOffline"),
            Self::AudioDeviceUnavailable { device, reason } => {
                write!(f, "AudioDeviceUnavailable({device}: {reason})")
            }
            Self::Reconnecting => f.write_str("Reconnecting"),
            Self::Reconnected => f.write_str("Reconnected"),
            Self::UserReconnecting { user_id } => write!(f, "UserReconnecting({user_id})"),
            Self::UserReconnected { user_id } => write!(f, "UserReconnected({user_id})"),
            Self::InviteeOffline { user_id } => write!(f, "InviteeOffline({user_id})"),
            Self::HandledElsewhere { call_id, answer } => {
                write!(f, "HandledElsewhere({call_id}: {answer})")
            }
            Self::NetworkQuality { local, remote } => {
                let remote: Vec<String> = remote
                    .iter()
                    .map(|member| format!("{} {}", member.user_id, member.quality))
                    .collect();
                write!(f, "NetworkQuality(local {local}; {})", remote.join(", "))
            }
            Self::MediaKeyProblem { user_id, problem } => {
                write!(f, "MediaKeyProblem({user_id}: {problem})")
            }
            Self::MemberIdentity {
                user_id,
                safety_number,
                changed,
            } => {
                let changed = if *changed { ", changed" } else { "" };
                write!(f, "MemberIdentity({user_id}: {safety_number}{changed})")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{CallId, EndReason};

    #[test]
    fn events_read_like_the_original_callbacks() {
        let bob = UserId::new("bob").unwrap();
        let invited = CallingEvent::Invited {
            sponsor: UserId::new("alice").unwrap(),
            user_ids: vec![bob.clone()],
            is_from_group: true,
            call_type: CallType::Audio,
        };
        assert_eq!(
            invited.to_string(),
            "onInvited(sponsor: alice, others: [bob], group: true, type: Audio)"
        );
        assert_eq!(
            CallingEvent::UserAudioAvailable {
                user_id: bob,
                available: false
            }
            .to_string(),
            "onUserAudioAvailable(bob, false)"
        );
        assert_eq!(
            CallingEvent::CallEnded {
                call_id: CallId(2),
                reason: EndReason::Hangup
            }
            .to_string(),
            "CallEnded(call-2: hung up)"
        );
        assert_eq!(CallingEvent::CallEnd.to_string(), "onCallEnd");
    }
}
