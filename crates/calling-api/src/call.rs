//! Call vocabulary: the call type, the call id, and why a call ended.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The kind of call, numbered as in the original API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "u8", into = "u8")]
pub enum CallType {
    /// Voice only (`1`).
    Audio = 1,
    /// Voice and video (`2`). OpenCalling carries no video yet: a video call
    /// is signalled like any other and carries audio only.
    Video = 2,
}

/// A number that is not a [`CallType`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("call type {0} is unknown; 1 is audio, 2 is video")]
pub struct InvalidCallType(pub i64);

impl CallType {
    /// The number the original API uses for this type.
    pub fn as_number(self) -> u8 {
        self as u8
    }
}

impl TryFrom<u8> for CallType {
    type Error = InvalidCallType;
    fn try_from(value: u8) -> Result<Self, Self::Error> {
        Self::try_from(i64::from(value))
    }
}

impl TryFrom<i32> for CallType {
    type Error = InvalidCallType;
    fn try_from(value: i32) -> Result<Self, Self::Error> {
        Self::try_from(i64::from(value))
    }
}

impl TryFrom<i64> for CallType {
    type Error = InvalidCallType;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(Self::Audio),
            2 => Ok(Self::Video),
            other => Err(InvalidCallType(other)),
        }
    }
}

impl From<CallType> for u8 {
    fn from(value: CallType) -> Self {
        value.as_number()
    }
}

/// A call, as numbered by the server that created it.
///
/// Unique per server for its lifetime; never reused while the server runs.
/// On the wire (postcard) a varint; in JSON and other human-readable
/// formats a decimal string, because call ids exceed 2^53 and a JSON
/// number that large loses digits in JavaScript and `jq` (a number is
/// still read).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CallId(pub u64);

impl Serialize for CallId {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            serializer.collect_str(&self.0)
        } else {
            serializer.serialize_u64(self.0)
        }
    }
}

impl<'de> Deserialize<'de> for CallId {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Decimal;
        impl serde::de::Visitor<'_> for Decimal {
            type Value = CallId;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a call id: a decimal string or an unsigned integer")
            }
            fn visit_u64<E: serde::de::Error>(self, value: u64) -> Result<CallId, E> {
                Ok(CallId(value))
            }
            fn visit_str<E: serde::de::Error>(self, value: &str) -> Result<CallId, E> {
                value.parse().map(CallId).map_err(E::custom)
            }
        }
        if deserializer.is_human_readable() {
            deserializer.deserialize_any(Decimal)
        } else {
            u64::deserialize(deserializer).map(CallId)
        }
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "call-{}", self.0)
    }
}

/// Why a call ended for a participant: our extension to the original events,
/// which carry no reason.
///
/// The wire encodes the variant by its position: new reasons are only ever
/// appended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum EndReason {
    /// You hung up, or the last other member did.
    Hangup,
    /// The invitees rejected and nobody was left to answer.
    Rejected,
    /// The invitees did not answer in time (or were offline) and nobody was
    /// left to answer.
    NoResponse,
    /// The invitees were busy and nobody was left to answer.
    LineBusy,
    /// The caller hung up before anyone answered.
    Cancelled,
    /// The invitation timed out before you answered.
    TimedOut,
    /// The invitation was answered on another device of the same user.
    ///
    /// Reserved: a device that did not answer was never in the call, so no
    /// call ends for it; it hears `onCallingCancel` and
    /// [`CallingEvent::HandledElsewhere`](crate::CallingEvent::HandledElsewhere)
    /// instead, and the server never sends this reason.
    AnsweredElsewhere,
    /// The invitation was rejected on another device of the same user.
    ///
    /// Reserved for the same reason as [`EndReason::AnsweredElsewhere`].
    RejectedElsewhere,
    /// You were logged out because the same user logged in elsewhere.
    Kicked,
    /// The server is shutting down.
    ServerShutdown,
    /// The connection to the server was lost.
    ConnectionLost,
    /// The server's operator ended the call (admin API). Protocol version
    /// 3; an older client is told [`EndReason::Hangup`].
    EndedByOperator,
    /// The server's operator logged you out (admin API). Protocol version
    /// 4; an older client is told [`EndReason::Kicked`].
    LoggedOutByOperator,
}

impl fmt::Display for EndReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Hangup => "hung up",
            Self::Rejected => "rejected",
            Self::NoResponse => "no response",
            Self::LineBusy => "line busy",
            Self::Cancelled => "cancelled",
            Self::TimedOut => "invitation timed out",
            Self::AnsweredElsewhere => "answered on another device",
            Self::RejectedElsewhere => "rejected on another device",
            Self::Kicked => "logged in elsewhere",
            Self::ServerShutdown => "server shutting down",
            Self::ConnectionLost => "connection lost",
            Self::EndedByOperator => "ended by the operator",
            Self::LoggedOutByOperator => "logged out by the operator",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn call_ids_are_strings_in_json_and_read_from_either() {
        let id = CallId(u64::MAX - 1);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{}\"", u64::MAX - 1));
        assert_eq!(serde_json::from_str::<CallId>(&json).unwrap(), id);
        assert_eq!(serde_json::from_str::<CallId>("7").unwrap(), CallId(7));
        assert!(serde_json::from_str::<CallId>("\"seven\"").is_err());
        assert!(serde_json::from_str::<CallId>("-1").is_err());
    }

    #[test]
    fn call_type_numbers_match_the_original() {
        assert_eq!(CallType::try_from(1_i32), Ok(CallType::Audio));
        assert_eq!(CallType::try_from(2_u8), Ok(CallType::Video));
        assert_eq!(CallType::try_from(0_i32), Err(InvalidCallType(0)));
        assert_eq!(CallType::try_from(3_i64), Err(InvalidCallType(3)));
        assert_eq!(CallType::Video.as_number(), 2);
    }

    #[test]
    fn call_type_travels_as_its_number() {
        let bytes = postcard::to_allocvec(&CallType::Video).expect("encode");
        assert_eq!(bytes, [2]);
        assert!(postcard::from_bytes::<CallType>(&[7]).is_err());
    }
}
