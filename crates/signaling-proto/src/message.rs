//! Every message client and server exchange on the signaling stream.
//!
//! Both enums are encoded with postcard (see `docs/protocol.md`): a variant is
//! its zero-based position as a varint, then its fields in declaration order.
//! Variants and fields are therefore only ever appended, and
//! [`ClientMessage::Login`] / [`ServerMessage::LoginResult`] stay variant 0 with
//! the protocol version first, so that any version can read any other's
//! handshake.

use calling_api::{CallId, CallType, DeviceId, ElsewhereAnswer, EndReason, ErrorCode, UserId};
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks: 2 adds session resume
/// ([`ClientMessage::Resume`], [`ServerMessage::Session`]), heartbeats and
/// [`ServerMessage::MemberConnection`]; 3 adds the end reason
/// [`EndReason::EndedByOperator`] (an older session is told `Hangup`); 4
/// adds [`ServerMessage::InviteeOffline`] and the operator's logout of a
/// user as its own notice (`Error` with `LOGGED_OUT_BY_OPERATOR` and the
/// end reason [`EndReason::LoggedOutByOperator`]; an older session is
/// told `Kicked`, as for a login elsewhere); 5 adds a user's devices: the
/// login's `device_id` (see [`crate::login::decode_first_frame`] for how a
/// server reads both layouts) and [`ServerMessage::HandledElsewhere`] (an
/// older session is told `Cancelled`); 6 adds [`ServerMessage::Redirect`]
/// (an older client is only refused or closed); 7 adds end-to-end
/// encrypted audio: the login's `media_encryption` (an older login
/// encrypts nothing), [`ClientMessage::MemberKey`] and
/// [`ServerMessage::MemberKey`], and `MEDIA_ENCRYPTION_MISMATCH`.
pub const PROTOCOL_VERSION: u16 = 7;

/// The largest payload of a [`ClientMessage::MemberKey`], in bytes.
pub const MAX_MEMBER_KEY_LEN: usize = 1024;

/// How a session's audio is encrypted end to end (version 7), named at
/// login: a call's members all encrypt alike, and the server rings only
/// the devices that do as the caller's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum MediaEncryption {
    /// Only each hop is encrypted (QUIC, TLS): the server relays audio it
    /// can read. Every login before version 7.
    #[default]
    None,
    /// Every Opus packet is an SFrame sealed with a key derived from key
    /// material the application gives its users; keys are announced to
    /// the members with [`ClientMessage::MemberKey`] (docs/protocol.md,
    /// "End-to-end encrypted audio").
    AppKeys,
    /// Every Opus packet is an SFrame sealed with a key its sender drew;
    /// keys go to each member sealed to that member's identity key, with
    /// [`ClientMessage::MemberKey`] (docs/protocol.md, "Built-in keys").
    BuiltIn,
}

/// The most addresses one [`ServerMessage::Redirect`] names.
pub const MAX_REDIRECT_SERVERS: usize = 8;

/// The longest address a [`ServerMessage::Redirect`] names, in bytes.
pub const MAX_REDIRECT_SERVER_LEN: usize = 255;

/// The oldest protocol version a server still serves: a version-1 session
/// gets none of version 2's messages and cannot be resumed.
pub const OLDEST_PROTOCOL_VERSION: u16 = 1;

/// The most users one [`ClientMessage::Invite`] may name.
pub const MAX_INVITEES: usize = 16;

/// The largest `user_data` an invitation may carry, in bytes.
pub const MAX_USER_DATA_LEN: usize = 4096;

/// The largest UserSig a login may carry, in bytes.
pub const MAX_USER_SIG_LEN: usize = 2048;

/// Why an invitation is refused before any call state is looked at: the
/// same rules for the client, which checks before sending, and the server,
/// which cannot trust it to have checked.
///
/// In order: 1 to [`MAX_INVITEES`] users, `user_data` of at most
/// [`MAX_USER_DATA_LEN`] bytes, a positive timeout, nobody invites themself.
pub fn check_invitation(
    inviter: &UserId,
    user_ids: &[UserId],
    timeout_ms: Option<u32>,
    user_data: Option<&str>,
) -> Result<(), (ErrorCode, &'static str)> {
    if user_ids.is_empty() || user_ids.len() > MAX_INVITEES {
        return Err((
            ErrorCode::INVALID_PARAMETER,
            "an invite names 1 to 16 users",
        ));
    }
    if user_data.is_some_and(|data| data.len() > MAX_USER_DATA_LEN) {
        return Err((
            ErrorCode::INVALID_PARAMETER,
            "user data is larger than 4096 bytes",
        ));
    }
    if timeout_ms == Some(0) {
        return Err((
            ErrorCode::INVALID_PARAMETER,
            "an invitation timeout must be positive",
        ));
    }
    if user_ids.contains(inviter) {
        return Err((ErrorCode::CANNOT_CALL_SELF, "cannot call yourself"));
    }
    Ok(())
}

/// A client's number for one of its requests, echoed in the server's reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RequestId(pub u32);

/// The server's number for one member's audio in one call: audio datagrams
/// carry it instead of a user id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FlowId(pub u32);

/// A UserSig in transit. Its `Debug` shows only its length, so logging a
/// message never leaks a credential.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UserSig(pub String);

impl std::fmt::Debug for UserSig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UserSig(<{} bytes redacted>)", self.0.len())
    }
}

impl From<&str> for UserSig {
    fn from(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl From<String> for UserSig {
    fn from(value: String) -> Self {
        Self(value)
    }
}

/// A server-made secret that proves a session, so that a client whose
/// connection broke can resume it ([`ClientMessage::Resume`]). Its `Debug`
/// shows nothing of it. On the wire: 16 bytes, no length.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SessionToken(pub [u8; 16]);

impl std::fmt::Debug for SessionToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SessionToken(<redacted>)")
    }
}

/// Client → server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClientMessage {
    /// The first frame on a connection: handshake and authentication.
    /// Answered by [`ServerMessage::LoginResult`].
    Login {
        /// [`PROTOCOL_VERSION`] of the client.
        protocol_version: u16,
        /// The application.
        sdk_app_id: u32,
        /// Who logs in.
        user_id: UserId,
        /// The UserSig the application's backend issued for `user_id`.
        user_sig: UserSig,
        /// Version 5: which of the user's devices logs in. A login from a
        /// device that is logged in already replaces that device's
        /// session. Absent from the layout of versions 1 to 4, whose
        /// logins name no device.
        device_id: Option<DeviceId>,
        /// Version 7: how this device encrypts a call's audio end to end.
        /// Absent from the layout of versions 1 to 6, whose logins
        /// encrypt nothing.
        media_encryption: MediaEncryption,
    },
    /// End the session; the server answers with an ack and closes.
    Logout {
        /// Echoed in the reply.
        request_id: RequestId,
    },
    /// Invite users: into a new call, or into the call you are in.
    Invite {
        /// Echoed in the reply, which carries the call id.
        request_id: RequestId,
        /// `None` for a new call; the call you are in to invite into it. An
        /// invite into a call you are no longer in fails with `NOT_IN_CALL`
        /// rather than landing in another call.
        call_id: Option<CallId>,
        /// 1 to [`MAX_INVITEES`] users.
        user_ids: Vec<UserId>,
        /// Audio or video.
        call_type: CallType,
        /// Invitation timeout in milliseconds; `None` for the server's default.
        timeout_ms: Option<u32>,
        /// Opaque application data handed to the invitees, at most
        /// [`MAX_USER_DATA_LEN`] bytes.
        user_data: Option<String>,
    },
    /// Accept a pending invitation.
    Accept {
        /// Echoed in the reply.
        request_id: RequestId,
        /// The call of the invitation.
        call_id: CallId,
    },
    /// Reject a pending invitation.
    Reject {
        /// Echoed in the reply.
        request_id: RequestId,
        /// The call of the invitation.
        call_id: CallId,
    },
    /// Leave the call you are a member of (as its caller, or after
    /// accepting): cancels it if nobody answered yet. It never touches an
    /// invitation that rings you: that takes [`ClientMessage::Reject`] with
    /// its call id, since the invitation may be one you have not heard of yet.
    Hangup {
        /// Echoed in the reply.
        request_id: RequestId,
    },
    /// Your microphone state; members of your call hear of it as audio
    /// availability. Not answered.
    Microphone {
        /// `true` while muted.
        muted: bool,
    },
    /// Keep-alive and round-trip probe, answered by [`ServerMessage::Pong`].
    Ping {
        /// Echoed in the pong.
        nonce: u64,
    },
    /// Version 2: instead of a login, the first frame of a new connection
    /// that takes over a session whose connection broke. Answered by
    /// [`ServerMessage::Resumed`], or refused with a `LoginResult` (and a
    /// close) when the session is gone: the client then logs in afresh.
    Resume {
        /// [`PROTOCOL_VERSION`] of the client (2 or later).
        protocol_version: u16,
        /// The application.
        sdk_app_id: u32,
        /// Whose session.
        user_id: UserId,
        /// A UserSig for `user_id`, checked as for a login: a token alone
        /// does not prove who sends it.
        user_sig: UserSig,
        /// The session's latest token.
        token: SessionToken,
        /// How many of the session's numbered messages the client has
        /// received: the server resends the ones after.
        received: u64,
    },
    /// Version 2: "I am here, and have received this many numbered
    /// messages". Answered by [`ServerMessage::HeartbeatAck`]; not numbered.
    Heartbeat {
        /// The session's numbered messages received so far.
        received: u64,
    },
    /// Version 7: a word about our media keys for one other member of our
    /// call, passed on as [`ServerMessage::MemberKey`]; opaque to the
    /// server, at most [`MAX_MEMBER_KEY_LEN`] bytes. Not answered: one the
    /// server cannot deliver (either side not in the same call) goes
    /// nowhere; a longer one is answered with an `Error` notice.
    MemberKey {
        /// The member it is for.
        to: UserId,
        /// What it says (docs/protocol.md, "End-to-end encrypted audio").
        payload: Vec<u8>,
    },
}

impl ClientMessage {
    /// The request's id, for the requests the server answers with an
    /// `Ack` or `Error`; `None` for the login, microphone and ping.
    pub fn request_id(&self) -> Option<RequestId> {
        match self {
            Self::Logout { request_id }
            | Self::Invite { request_id, .. }
            | Self::Accept { request_id, .. }
            | Self::Reject { request_id, .. }
            | Self::Hangup { request_id } => Some(*request_id),
            Self::Login { .. }
            | Self::Microphone { .. }
            | Self::Ping { .. }
            | Self::Resume { .. }
            | Self::Heartbeat { .. }
            | Self::MemberKey { .. } => None,
        }
    }

    /// Whether this message counts in the session's numbering (see
    /// `docs/protocol.md`, "Resume"): everything after the login but the
    /// heartbeat.
    pub fn is_numbered(&self) -> bool {
        !matches!(
            self,
            Self::Login { .. } | Self::Resume { .. } | Self::Heartbeat { .. }
        )
    }
}

/// Server → client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ServerMessage {
    /// The answer to [`ClientMessage::Login`].
    LoginResult {
        /// [`PROTOCOL_VERSION`] of the server.
        protocol_version: u16,
        /// `OK`, or why the login failed (the server then closes).
        code: ErrorCode,
        /// Human description of `code`.
        message: String,
    },
    /// A request succeeded. A reply always precedes the notifications its
    /// request causes.
    Ack {
        /// The request.
        request_id: RequestId,
        /// For an invite or accept: the call.
        call_id: Option<CallId>,
    },
    /// A request failed, or (without a request id) an error not tied to one.
    Error {
        /// The failed request, if any.
        request_id: Option<RequestId>,
        /// Stable error number.
        code: ErrorCode,
        /// Human description.
        message: String,
    },
    /// Someone invites you.
    Invited {
        /// The call you are invited to.
        call_id: CallId,
        /// Who invites you.
        sponsor: UserId,
        /// The call's other members and invitees: not you, not the sponsor.
        user_ids: Vec<UserId>,
        /// Audio or video.
        call_type: CallType,
        /// The inviter's application data.
        user_data: Option<String>,
        /// How long you have to answer, in milliseconds.
        timeout_ms: u32,
    },
    /// An invitee you invited rejected.
    Rejected {
        /// The call.
        call_id: CallId,
        /// The invitee.
        user_id: UserId,
    },
    /// An invitee you invited did not answer in time, or was offline.
    NoResponse {
        /// The call.
        call_id: CallId,
        /// The invitee.
        user_id: UserId,
    },
    /// An invitee you invited is busy in another call.
    LineBusy {
        /// The call.
        call_id: CallId,
        /// The invitee.
        user_id: UserId,
    },
    /// The call you were invited to was cancelled before you answered.
    Cancelled {
        /// The call.
        call_id: CallId,
    },
    /// Your invitation timed out before you answered.
    InvitationTimedOut {
        /// The call.
        call_id: CallId,
    },
    /// A user entered your call (you too learn of each member already there
    /// when you enter).
    UserEntered {
        /// The call.
        call_id: CallId,
        /// Who entered.
        user_id: UserId,
        /// Their audio's flow id in audio datagrams.
        flow_id: FlowId,
        /// Whether their microphone is on.
        audio_available: bool,
    },
    /// A user left your call.
    UserLeft {
        /// The call.
        call_id: CallId,
        /// Who left.
        user_id: UserId,
    },
    /// A member's microphone turned on or off.
    AudioAvailability {
        /// The call.
        call_id: CallId,
        /// Whose microphone.
        user_id: UserId,
        /// `false` while muted.
        available: bool,
    },
    /// The call is over for you.
    CallEnded {
        /// The call.
        call_id: CallId,
        /// Why.
        reason: EndReason,
    },
    /// The same user logged in elsewhere; the server closes this connection.
    Kicked,
    /// The answer to [`ClientMessage::Ping`].
    Pong {
        /// The ping's nonce.
        nonce: u64,
    },
    /// Version 2: right after a successful `LoginResult`, what a client
    /// needs to resume this session if its connection breaks. Not numbered.
    Session {
        /// The token to present in [`ClientMessage::Resume`].
        token: SessionToken,
        /// How long the server keeps the session after its connection
        /// breaks, in milliseconds.
        grace_ms: u32,
    },
    /// Version 2: the answer to a successful [`ClientMessage::Resume`]. The
    /// server then resends its numbered messages after the client's
    /// `received`, in order. Not numbered.
    Resumed {
        /// The session's new token; the old one is void.
        token: SessionToken,
        /// How many of the client's numbered messages the server has
        /// received: the client resends the ones after.
        received: u64,
    },
    /// Version 2: the answer to [`ClientMessage::Heartbeat`]. Not numbered.
    HeartbeatAck {
        /// How many of the client's numbered messages the server has
        /// received.
        received: u64,
    },
    /// Version 2: a member of your call lost its connection and may come
    /// back (`connected: false`), or came back (`true`). A member that does
    /// not come back in time leaves with [`ServerMessage::UserLeft`].
    MemberConnection {
        /// The call.
        call_id: CallId,
        /// The member.
        user_id: UserId,
        /// Whether its connection is up.
        connected: bool,
    },
    /// Version 4, to the inviter: that invitee is not logged in. The
    /// invitation waits for them and rings if they log in before it times
    /// out (then `NoResponse`). Numbered.
    InviteeOffline {
        /// The call.
        call_id: CallId,
        /// The invitee.
        user_id: UserId,
    },
    /// Version 5, instead of `Cancelled` to the other devices an invitation
    /// rang: the same user answered or declined it on another device.
    /// Numbered.
    HandledElsewhere {
        /// The call.
        call_id: CallId,
        /// What the other device did.
        answer: ElsewhereAnswer,
    },
    /// Version 6, just before a refused login or a close that says "not
    /// here" (`SERVER_DRAINING`, `SERVER_SHUTDOWN`): the
    /// addresses (`host:port`, at most [`MAX_REDIRECT_SERVERS`] of at most
    /// [`MAX_REDIRECT_SERVER_LEN`] bytes) of servers of the same deployment
    /// to connect to instead, best first. Not numbered.
    Redirect {
        /// Where to go.
        servers: Vec<String>,
    },
    /// Version 7: what a member of your call sent you with
    /// [`ClientMessage::MemberKey`]. Numbered.
    MemberKey {
        /// The call.
        call_id: CallId,
        /// The member who sent it.
        from: UserId,
        /// What it says, as sent.
        payload: Vec<u8>,
    },
}

impl ServerMessage {
    /// Whether this answers a request (its `Ack` or `Error`): each request
    /// gets exactly one.
    pub fn is_reply(&self) -> bool {
        matches!(
            self,
            Self::Ack { .. }
                | Self::Error {
                    request_id: Some(_),
                    ..
                }
        )
    }

    /// The call a notification is about, if it is about one.
    pub fn call_id(&self) -> Option<CallId> {
        match self {
            Self::Invited { call_id, .. }
            | Self::Rejected { call_id, .. }
            | Self::NoResponse { call_id, .. }
            | Self::LineBusy { call_id, .. }
            | Self::Cancelled { call_id }
            | Self::InvitationTimedOut { call_id }
            | Self::UserEntered { call_id, .. }
            | Self::UserLeft { call_id, .. }
            | Self::AudioAvailability { call_id, .. }
            | Self::MemberConnection { call_id, .. }
            | Self::InviteeOffline { call_id, .. }
            | Self::HandledElsewhere { call_id, .. }
            | Self::MemberKey { call_id, .. }
            | Self::CallEnded { call_id, .. } => Some(*call_id),
            Self::Ack { call_id, .. } => *call_id,
            Self::LoginResult { .. }
            | Self::Error { .. }
            | Self::Kicked
            | Self::Pong { .. }
            | Self::Session { .. }
            | Self::Resumed { .. }
            | Self::HeartbeatAck { .. }
            | Self::Redirect { .. } => None,
        }
    }

    /// Whether this message counts in the session's numbering (see
    /// `docs/protocol.md`, "Resume"): everything after the login result but
    /// the session, resume and heartbeat answers.
    pub fn is_numbered(&self) -> bool {
        !matches!(
            self,
            Self::LoginResult { .. }
                | Self::Session { .. }
                | Self::Resumed { .. }
                | Self::HeartbeatAck { .. }
                | Self::Redirect { .. }
        )
    }

    /// Whether a version-1 client can read this message.
    pub fn in_version_1(&self) -> bool {
        !matches!(
            self,
            Self::Session { .. }
                | Self::Resumed { .. }
                | Self::HeartbeatAck { .. }
                | Self::MemberConnection { .. }
                | Self::Redirect { .. }
                | Self::MemberKey { .. }
        )
    }

    /// A redirect to `servers`, keeping only the addresses a client takes
    /// (non-empty, at most [`MAX_REDIRECT_SERVER_LEN`] bytes, at most
    /// [`MAX_REDIRECT_SERVERS`] of them); `None` when none is left.
    pub fn redirect(servers: &[String]) -> Option<Self> {
        let servers: Vec<String> = usable_redirects(servers).cloned().collect();
        (!servers.is_empty()).then_some(Self::Redirect { servers })
    }
}

/// The addresses of a redirect a client follows: the first
/// [`MAX_REDIRECT_SERVERS`] that are not empty and at most
/// [`MAX_REDIRECT_SERVER_LEN`] bytes long.
pub fn usable_redirects(servers: &[String]) -> impl Iterator<Item = &String> {
    servers
        .iter()
        .filter(|server| !server.is_empty() && server.len() <= MAX_REDIRECT_SERVER_LEN)
        .take(MAX_REDIRECT_SERVERS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::frame_to_vec;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    /// The logins' and `MemberKey`'s byte-for-byte examples in
    /// docs/protocol.md.
    #[test]
    fn login_and_member_key_examples_in_protocol_md() {
        let login = ClientMessage::Login {
            protocol_version: 7,
            sdk_app_id: 1_400_000_000,
            user_id: user("alice"),
            user_sig: "sig".into(),
            device_id: Some(DeviceId::new("phone").unwrap()),
            media_encryption: MediaEncryption::AppKeys,
        };
        let version_7 = [
            0, 0, 0, 25, // payload length
            0,  // variant 0: Login
            7,  // protocol_version 7
            0x80, 0x9c, 0xc9, 0x9b, 0x05, // sdk_app_id 1400000000
            5, b'a', b'l', b'i', b'c', b'e', // user_id
            3, b's', b'i', b'g', // user_sig
            1, 5, b'p', b'h', b'o', b'n', b'e', // device_id Some("phone")
            1,    // media_encryption: application keys
        ];
        assert_eq!(frame_to_vec(&login).unwrap(), version_7);
        // Versions 5 and 6 end the login at the device id, and encrypt
        // nothing.
        let mut version_5 = version_7[..version_7.len() - 1].to_vec();
        version_5[3] = 24;
        version_5[5] = 5;
        assert_eq!(
            crate::login::decode_first_frame(&version_5[4..]).unwrap(),
            ClientMessage::Login {
                protocol_version: 5,
                sdk_app_id: 1_400_000_000,
                user_id: user("alice"),
                user_sig: "sig".into(),
                device_id: Some(DeviceId::new("phone").unwrap()),
                media_encryption: MediaEncryption::None,
            }
        );
        // Versions 1 to 4 end the login at the UserSig.
        let version_1 = [
            0, 0, 0, 17, // payload length
            0, 1, 0x80, 0x9c, 0xc9, 0x9b, 0x05, 5, b'a', b'l', b'i', b'c', b'e', 3, b's', b'i',
            b'g',
        ];
        assert_eq!(
            crate::login::decode_first_frame(&version_1[4..]).unwrap(),
            ClientMessage::Login {
                protocol_version: 1,
                sdk_app_id: 1_400_000_000,
                user_id: user("alice"),
                user_sig: "sig".into(),
                device_id: None,
                media_encryption: MediaEncryption::None,
            }
        );
        // A version-5 login must carry the field (its `None` is one byte),
        // a version-7 login both.
        assert!(crate::login::decode_first_frame(&version_5[4..21]).is_err());
        assert!(crate::login::decode_first_frame(&version_7[4..28]).is_err());
        let member_key = ClientMessage::MemberKey {
            to: user("bob"),
            payload: vec![1, 0, 0xaa, 0xbb],
        };
        assert_eq!(
            frame_to_vec(&member_key).unwrap(),
            [
                0, 0, 0, 10, // payload length
                10, // variant 10: MemberKey
                3, b'b', b'o', b'b', // to "bob"
                4, 1, 0, 0xaa, 0xbb, // payload: 4 bytes
            ]
        );
        let passed_on = ServerMessage::MemberKey {
            call_id: CallId(7),
            from: user("alice"),
            payload: vec![1, 0, 0xaa, 0xbb],
        };
        assert_eq!(
            frame_to_vec(&passed_on).unwrap(),
            [
                0, 0, 0, 13, // payload length
                22, // variant 22: MemberKey
                7,  // call_id 7
                5, b'a', b'l', b'i', b'c', b'e', // from "alice"
                4, 1, 0, 0xaa, 0xbb, // payload: 4 bytes
            ]
        );
        let logged = format!("{login:?}");
        assert!(!logged.contains("sig\""), "{logged}");
        assert!(logged.contains("<3 bytes redacted>"), "{logged}");
    }

    /// The other byte-for-byte examples in docs/protocol.md.
    #[test]
    fn wire_examples_in_protocol_md() {
        let invite = ClientMessage::Invite {
            request_id: RequestId(2),
            call_id: None,
            user_ids: vec![user("bob")],
            call_type: CallType::Audio,
            timeout_ms: Some(30_000),
            user_data: None,
        };
        assert_eq!(
            frame_to_vec(&invite).unwrap(),
            [
                0, 0, 0, 14, // payload length
                2,  // variant 2: Invite
                2,  // request_id 2
                0,  // call_id None
                1, 3, b'b', b'o', b'b', // user_ids: one, "bob"
                1,    // call_type audio
                1, 0xb0, 0xea, 0x01, // timeout_ms Some(30000)
                0,    // user_data None
            ]
        );
        let error = ServerMessage::Error {
            request_id: Some(RequestId(2)),
            code: ErrorCode::CANNOT_CALL_SELF,
            message: "no".into(),
        };
        assert_eq!(
            frame_to_vec(&error).unwrap(),
            [
                0, 0, 0, 8, // payload length
                2, // variant 2: Error
                1, 2, // request_id Some(2)
                0xf8, 0x2e, // code 3004, zigzag: 6008
                2, b'n', b'o', // message
            ]
        );
        let ended = ServerMessage::CallEnded {
            call_id: CallId(7),
            reason: EndReason::Cancelled,
        };
        assert_eq!(frame_to_vec(&ended).unwrap(), [0, 0, 0, 3, 12, 7, 4]);
        let heartbeat = ClientMessage::Heartbeat { received: 300 };
        assert_eq!(
            frame_to_vec(&heartbeat).unwrap(),
            [0, 0, 0, 3, 9, 0xac, 0x02]
        );
        let resumed = ServerMessage::Resumed {
            token: SessionToken([0x11; 16]),
            received: 5,
        };
        let mut expected = vec![0, 0, 0, 18, 16];
        expected.extend([0x11; 16]);
        expected.push(5);
        assert_eq!(frame_to_vec(&resumed).unwrap(), expected);
        assert!(
            !format!("{resumed:?}").contains("17"),
            "the token is redacted"
        );
    }
}
