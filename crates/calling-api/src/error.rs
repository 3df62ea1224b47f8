//! Stable error codes and the error every API call returns.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A stable numeric error code.
///
/// The numbers never change meaning; new ones are only added. A code this
/// build does not know (from a newer server) still round-trips and displays
/// as "unknown error". `0` is success, as in the original's `result{code}`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ErrorCode(pub i32);

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal, $message:literal; )*) => {
        impl ErrorCode {
            $(
                $(#[$doc])*
                #[doc = concat!("\n\nCode `", stringify!($value), "`: \"", $message, "\".")]
                pub const $name: ErrorCode = ErrorCode($value);
            )*

            /// Every code this build knows, in numeric order.
            pub const ALL: &'static [ErrorCode] = &[$(Self::$name),*];

            /// A human sentence for the code.
            pub fn message(self) -> &'static str {
                match self.0 {
                    $( $value => $message, )*
                    _ => "unknown error",
                }
            }

            /// The constant's name, for logs and debugging.
            pub fn name(self) -> Option<&'static str> {
                match self.0 {
                    $( $value => Some(stringify!($name)), )*
                    _ => None,
                }
            }
        }
    };
}

error_codes! {
    /// Success.
    OK = 0, "success";

    /// A user id breaks the user id rule.
    INVALID_USER_ID = 1001, "invalid user id";
    /// A call type other than 1 (audio) or 2 (video).
    INVALID_CALL_TYPE = 1002, "invalid call type";
    /// Some other argument is out of range (empty invitee list, oversized user data…).
    INVALID_PARAMETER = 1003, "invalid parameter";

    /// The operation needs a logged-in session.
    NOT_LOGGED_IN = 2001, "not logged in";
    /// login() while already logged in, or while a login is under way.
    ALREADY_LOGGED_IN = 2002, "already logged in";
    /// The server does not know this sdkAppId.
    UNKNOWN_APP = 2003, "unknown sdkAppId";
    /// The client speaks a protocol version the server does not.
    UNSUPPORTED_PROTOCOL_VERSION = 2004, "unsupported protocol version";
    /// The UserSig does not decode as a UserSig.
    USERSIG_MALFORMED = 2010, "malformed UserSig";
    /// The UserSig has expired.
    USERSIG_EXPIRED = 2011, "UserSig expired";
    /// The UserSig's signature does not match its content (tampered, or signed with another key).
    USERSIG_BAD_SIGNATURE = 2012, "UserSig signature mismatch";
    /// The UserSig was issued for another sdkAppId.
    USERSIG_WRONG_APP = 2013, "UserSig issued for another sdkAppId";
    /// The UserSig was issued for another user.
    USERSIG_WRONG_USER = 2014, "UserSig issued for another user";
    /// The UserSig was issued further in the future than clocks may differ
    /// (5 minutes unless the server says otherwise).
    USERSIG_NOT_YET_VALID = 2015, "UserSig issued in the future";
    /// The UserSig is valid for longer than the server allows (180 days
    /// unless it says otherwise).
    USERSIG_LIFETIME_TOO_LONG = 2016, "UserSig lifetime too long";
    /// A resume named a session the server no longer has (its grace ran
    /// out, the server restarted) or a token that is not the session's: log
    /// in afresh.
    SESSION_EXPIRED = 2017, "session expired: log in again";

    /// accept() or reject() with no invitation pending (never invited, or it already ended).
    NO_INVITATION = 3001, "no pending invitation";
    /// The operation does not fit the current call state (call() while ringing…).
    WRONG_CALL_STATE = 3002, "not possible in the current call state";
    /// hangup() or an in-call operation with no call.
    NOT_IN_CALL = 3003, "not in a call";
    /// call() naming yourself.
    CANNOT_CALL_SELF = 3004, "cannot call yourself";
    /// call() naming a user already in (or already invited to) your call.
    ALREADY_IN_CALL = 3005, "user already in this call";
    /// Too many members and invitees for one call.
    CALL_FULL = 3006, "call is full";
    /// An invitation into a running call with a different call type.
    CALL_TYPE_MISMATCH = 3007, "call type differs from the current call";
    /// call() naming a user none of whose devices encrypts a call's audio
    /// as the caller does (end-to-end encryption on one side only, protocol
    /// version 7): the call is refused, never downgraded.
    MEDIA_ENCRYPTION_MISMATCH = 3008, "the invitee does not encrypt audio end to end as the call does";

    /// The same user logged in elsewhere; this session is over.
    KICKED_OFFLINE = 4001, "logged in on another device";
    /// The connection to the server was lost.
    CONNECTION_LOST = 4002, "connection to the server lost";
    /// The server is shutting down.
    SERVER_SHUTDOWN = 4003, "server shutting down";
    /// The peer broke the wire protocol (malformed or oversized frame, message out of place).
    PROTOCOL_ERROR = 4004, "protocol error";
    /// The server refuses more connections or requests for now.
    SERVER_BUSY = 4005, "server busy";
    /// A request got no answer in time.
    TIMEOUT = 4006, "request timed out";
    /// No server answered at the address within the connect timeout (wrong
    /// address or port, server down, UDP blocked).
    SERVER_UNREACHABLE = 4007, "server unreachable";
    /// A server answered but its certificate is not the one trusted
    /// (fingerprint mismatch, unknown issuer, wrong name, expired).
    CERTIFICATE_UNTRUSTED = 4008, "server certificate not trusted";
    /// A server answered but speaks another protocol (ALPN or QUIC version
    /// mismatch: not an OpenCalling server, or an incompatible one).
    PROTOCOL_MISMATCH = 4009, "server speaks another protocol";
    /// Over a rate limit (requests, invitations): slow down. Going on
    /// regardless gets the connection closed with this code.
    RATE_LIMITED = 4010, "rate limit exceeded";
    /// The server is draining (its operator is taking it down): it
    /// takes no new login and no new call; calls in progress go on.
    SERVER_DRAINING = 4011, "server draining: no new logins or calls";
    /// The server runs in a cluster whose shared store (Redis) it cannot
    /// reach now: calls in progress go on, no new call starts.
    CLUSTER_UNAVAILABLE = 4012, "cluster store unreachable: no new calls for now";
    /// The server's operator logged this user out (admin API); this
    /// session is over. Protocol version 4 (older clients get
    /// `KICKED_OFFLINE`).
    LOGGED_OUT_BY_OPERATOR = 4013, "logged out by the server's operator";

    /// An internal error; the details are in the server's log.
    INTERNAL = 5000, "internal error";
}

impl ErrorCode {
    /// The number itself.
    pub fn as_i32(self) -> i32 {
        self.0
    }

    /// Whether this is [`ErrorCode::OK`].
    pub fn is_ok(self) -> bool {
        self == Self::OK
    }
}

impl fmt::Debug for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name}({})", self.0),
            None => write!(f, "ErrorCode({})", self.0),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.message(), self.0)
    }
}

/// A failed operation: the original's `result{code, desc}` with a non-zero code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[error("{desc} [{code:?}]")]
pub struct CallingError {
    /// What went wrong, as a stable number.
    pub code: ErrorCode,
    /// What went wrong, for a person.
    pub desc: String,
}

impl CallingError {
    /// An error with the code's own message as its description.
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            desc: code.message().to_owned(),
        }
    }

    /// An error with a description of its own.
    pub fn with_desc(code: ErrorCode, desc: impl Into<String>) -> Self {
        Self {
            code,
            desc: desc.into(),
        }
    }
}

impl From<ErrorCode> for CallingError {
    fn from(code: ErrorCode) -> Self {
        Self::new(code)
    }
}

impl From<crate::InvalidUserId> for CallingError {
    fn from(error: crate::InvalidUserId) -> Self {
        Self::with_desc(ErrorCode::INVALID_USER_ID, error.to_string())
    }
}

impl From<crate::InvalidCallType> for CallingError {
    fn from(error: crate::InvalidCallType) -> Self {
        Self::with_desc(ErrorCode::INVALID_CALL_TYPE, error.to_string())
    }
}

/// What login, logout, call, accept and reject return: `Ok` is the
/// original's code 0.
pub type CallingResult<T = ()> = Result<T, CallingError>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_described() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            assert!(seen.insert(code.0), "duplicate code {}", code.0);
            assert_ne!(code.message(), "unknown error");
            assert!(code.name().is_some());
        }
        assert!(ErrorCode::OK.is_ok());
        assert!(!ErrorCode::NOT_LOGGED_IN.is_ok());
    }

    #[test]
    fn unknown_codes_survive() {
        let code = ErrorCode(7777);
        assert_eq!(code.message(), "unknown error");
        assert_eq!(format!("{code:?}"), "ErrorCode(7777)");
        let bytes = postcard::to_allocvec(&code).expect("encode");
        assert_eq!(
            postcard::from_bytes::<ErrorCode>(&bytes).expect("decode"),
            code
        );
    }

    #[test]
    fn errors_convert_with_their_reason() {
        let error = CallingError::from(crate::UserId::new("").unwrap_err());
        assert_eq!(error.code, ErrorCode::INVALID_USER_ID);
        assert_eq!(error.desc, "user id is empty");
        assert_eq!(
            CallingError::new(ErrorCode::NO_INVITATION).to_string(),
            "no pending invitation [NO_INVITATION(3001)]"
        );
    }
}
