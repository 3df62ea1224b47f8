//! The server's call logic: presence, invitations, membership and every rule
//! of the calling API, as a sans-IO state machine.
//!
//! The glue feeds it logins (after authenticating them, see
//! [`crate::login`]), client messages, disconnections and the current time,
//! and drains its [`Output`]s: messages to send, connections to close, the
//! membership of each call whose members changed (what the audio relay
//! routes by), and messages for users who have no session here. It never
//! reads a clock: every input carries `now`, and [`Switchboard::poll_timeout`]
//! says when to call [`Switchboard::handle_timeout`] next.
//!
//! Replies come before the notifications a request causes: a client that
//! gets the [`ServerMessage::Ack`] of an invite knows the call id before any
//! `LineBusy` about that call. A [`Output::Membership`] comes after the
//! messages of the input that changed it.
//!
//! # Bugs and bad input
//!
//! No input can make the switchboard panic: a message that breaks a rule is
//! answered with an error. A broken internal invariant is a bug in this
//! crate: debug builds check every invariant ([`Switchboard::check_invariants`])
//! after every `handle_*` and panic at the first broken one, so tests find
//! it; release builds skip the check, and a path that finds the state
//! inconsistent logs an `error!` and leaves the state as it is.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use calling_api::{CallId, CallType, DeviceId, ElsewhereAnswer, EndReason, ErrorCode, UserId};
use tracing::{debug, error, trace};

use crate::call_event::{CallEvent, InvitationOutcome};
use crate::limit::TokenBucket;
use crate::message::{
    ClientMessage, FlowId, MAX_MEMBER_KEY_LEN, MediaEncryption, PROTOCOL_VERSION, RequestId,
    ServerMessage, check_invitation,
};
use crate::timer::TimerTable;

mod calls;
mod e2ee;
mod invariants;
mod invitations;
mod presence;
mod restore;
mod sessions;

/// The glue's number for one client connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(pub u64);

/// The switchboard's rules that a deployment may tune.
#[derive(Debug, Clone)]
pub struct SwitchboardConfig {
    /// How long an invitation rings when the invite names no timeout.
    pub default_invite_timeout: Duration,
    /// The longest timeout an invite may ask for; longer ones are shortened.
    pub max_invite_timeout: Duration,
    /// The most members and pending invitees one call may hold.
    pub max_call_size: usize,
    /// This switchboard's number, the high 32 bits of every [`CallId`] it
    /// makes, so that call ids of different switchboards (another node, a
    /// restarted process) never collide. The low 32 bits count from 1.
    pub node_id: u32,
    /// Invitations one session may send a minute (each invitee counts;
    /// up to this many at once, then one every `60 / n` seconds); more are
    /// refused with `RATE_LIMITED`.
    pub invitations_per_minute: u32,
    /// Invitations of one session that may ring at once; more are refused
    /// with `RATE_LIMITED`.
    pub max_ringing_per_session: usize,
    /// How long a resumable session (protocol version 2) outlives its
    /// connection: its presence, calls, mute state and invitations wait
    /// this long for the client to resume. Zero: sessions end with their
    /// connection.
    pub resume_grace: Duration,
    /// Whether an invitation to a user who is not logged in rings for its
    /// timeout (delivered if the user logs in before it expires, the
    /// operator's cue for a push notification), as the original does;
    /// `false`: the inviter gets `NoResponse` at once.
    pub ring_offline_invitees: bool,
}

impl SwitchboardConfig {
    /// The rules unless a deployment says otherwise: invitations ring 30 s
    /// by default and at most 120 s (longer, and a caller could keep a
    /// callee busy for minutes); 16 members and invitees per call; 60
    /// invitations a minute and 32 ringing at once per session; a broken
    /// connection's session waits 20 s for its client; invitations to
    /// offline users ring.
    pub const DEFAULT: Self = Self {
        default_invite_timeout: Duration::from_secs(30),
        max_invite_timeout: Duration::from_secs(120),
        max_call_size: 16,
        node_id: 0,
        invitations_per_minute: 60,
        max_ringing_per_session: 32,
        resume_grace: Duration::from_secs(20),
        ring_offline_invitees: true,
    };
}

impl Default for SwitchboardConfig {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Which device a login comes from, and how many devices its user may be
/// logged in on at once (the app's rule, which the glue knows).
///
/// An invitation rings each of a user's devices; the first to accept
/// takes the call, and a reject on one declines it for all. A login beyond
/// `max_devices` replaces the user's oldest session; one from a device
/// that is logged in already replaces that device's session. With
/// `max_devices` 1, a second login replaces the first, as in the calling
/// component.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceLogin {
    /// The device the login names (version 5), if any.
    pub device: Option<DeviceId>,
    /// How many sessions the user may have at once (0 counts as 1).
    pub max_devices: usize,
    /// How the device encrypts a call's audio end to end (version 7): an
    /// invitation rings only the devices that encrypt as its call does.
    pub media_encryption: MediaEncryption,
}

impl DeviceLogin {
    /// A login that names no device, under the one-device rule, and
    /// encrypts nothing end to end.
    pub const ONE_DEVICE: Self = Self {
        device: None,
        max_devices: 1,
        media_encryption: MediaEncryption::None,
    };
}

/// What the glue must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send `message` on `conn`'s signaling stream.
    Send {
        /// The connection.
        conn: ConnId,
        /// The message.
        message: ServerMessage,
    },
    /// Close `conn` once what was sent before is flushed. The switchboard has
    /// already forgotten it: the session is over (for a session waiting for
    /// its client to resume, the wait is over).
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        code: ErrorCode,
    },
    /// The members who have entered `call_id` are now exactly `members`
    /// (sorted by user): the audio relay's routing table. Empty once the
    /// call is over, or while nobody has entered it.
    Membership {
        /// The call.
        call_id: CallId,
        /// Everyone in the call now.
        members: Vec<CallMember>,
    },
    /// `message` is for `user`, who has no session on this switchboard. A
    /// single server has nobody to give it to; a cluster forwards it to the
    /// node the user is on.
    Unrouted {
        /// The addressee.
        user: UserId,
        /// The message.
        message: ServerMessage,
    },
    /// Something happened to a call, for the operator's side (metrics,
    /// webhooks, records); see [`crate::call_event`].
    Event(CallEvent),
}

/// What the switchboard's limits refused so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchboardCounters {
    /// Invites refused `RATE_LIMITED` (invitations a minute, or ringing at
    /// once).
    pub invitations_rate_limited: u64,
    /// Invitees answered `LineBusy` because their messages piled up.
    pub invitees_congested: u64,
}

/// One member of a call, as the relay needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallMember {
    /// Who.
    pub user: UserId,
    /// Their audio's flow id in this call.
    pub flow: FlowId,
    /// Their connection.
    pub conn: ConnId,
}

/// A session as another switchboard left it, reported by the node its
/// client is connected to: what [`Switchboard::handle_restore`] rebuilds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredSession {
    /// The glue's connection (its number on this switchboard).
    pub conn: ConnId,
    /// Who.
    pub user: UserId,
    /// The device it named at login, and its user's limit.
    pub device_login: DeviceLogin,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// Its microphone is off.
    pub muted: bool,
    /// Its connection broke and it waits for a resume.
    pub detached: bool,
    /// The call it had entered, as it last heard of it.
    pub call: Option<RestoredCall>,
}

/// A call a restored session had entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RestoredCall {
    /// The call.
    pub call_id: CallId,
    /// Audio or video.
    pub call_type: CallType,
    /// The session's own flow in it.
    pub flow: FlowId,
    /// Everyone the session last heard was in it (itself included).
    pub members: Vec<UserId>,
}

/// A restored call as its members report it: its type, who reported being
/// in it (with their flows and connections), and everyone they knew in it.
type ReportedMembers = (CallType, Vec<(UserId, FlowId, ConnId)>, BTreeSet<UserId>);

/// The switchboard's timers: one variant per kind.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Timer {
    /// `invitee`'s invitation to `call_id` stops ringing.
    Invitation { call_id: CallId, invitee: UserId },
    /// The session on `conn`, whose connection broke, stops waiting for
    /// its client to resume.
    ResumeGrace { conn: ConnId },
}

#[derive(Debug)]
struct Session {
    user: UserId,
    /// The device it named at login.
    device: Option<DeviceId>,
    /// The protocol version the client speaks: version 1 clients get no
    /// version 2 message and cannot resume.
    protocol_version: u16,
    /// The connection broke; the session waits for a resume.
    detached: bool,
    muted: bool,
    /// The call this device is in, or that rings on it. Of a user's
    /// devices, only the one that entered a call points at it; every
    /// device an invitation rings points at its call.
    call: Option<CallId>,
    /// Invitations this session may still send now.
    invitation_budget: TokenBucket,
    /// Invitations this session sent that ring now (never more than that
    /// count; one sent by an earlier session of the user is not here).
    ringing_out: usize,
    /// The glue says messages pile up for it: invitations to it are
    /// answered busy rather than queued.
    congested: bool,
    /// How it encrypts audio end to end: it is rung only by calls that
    /// encrypt alike.
    encryption: MediaEncryption,
}

#[derive(Debug)]
struct Member {
    flow: FlowId,
    /// The device it is in the call on.
    conn: ConnId,
}

#[derive(Debug)]
struct Invitation {
    inviter: UserId,
    /// The inviter's device (whose count of ringing invitations it is in).
    inviter_conn: ConnId,
    /// The invite's user data, for an offline invitee told when it logs in.
    user_data: Option<String>,
    /// The invitee was not logged in when invited.
    offline: bool,
}

/// A call as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallSummary {
    /// The call.
    pub call_id: CallId,
    /// Audio or video.
    pub call_type: CallType,
    /// Who entered it, sorted.
    pub members: Vec<UserId>,
    /// Whose invitation rings, sorted.
    pub invitees: Vec<UserId>,
}

/// A session as the operator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// Who.
    pub user: UserId,
    /// The device it named at login.
    pub device: Option<DeviceId>,
    /// The protocol version it speaks.
    pub protocol_version: u16,
    /// Its connection broke and it waits for a resume.
    pub reconnecting: bool,
    /// The call it is in or rung by.
    pub call: Option<CallId>,
}

#[derive(Debug)]
struct Call {
    call_type: CallType,
    /// How every member's device encrypts its audio end to end: the
    /// caller's, at the call's start.
    encryption: MediaEncryption,
    members: BTreeMap<UserId, Member>,
    pending: BTreeMap<UserId, Invitation>,
}

impl Call {
    fn size(&self) -> usize {
        self.members.len() + self.pending.len()
    }

    fn contains(&self, user: &UserId) -> bool {
        self.members.contains_key(user) || self.pending.contains_key(user)
    }
}

/// An invite as it arrived, fields by name.
#[derive(Debug)]
struct InviteRequest {
    request_id: RequestId,
    into_call: Option<CallId>,
    user_ids: Vec<UserId>,
    call_type: CallType,
    timeout_ms: Option<u32>,
    user_data: Option<String>,
}

/// Who rings whom, for how long, with what.
#[derive(Debug)]
struct Ringing {
    inviter_conn: ConnId,
    inviter: UserId,
    call_id: CallId,
    invitees: Vec<UserId>,
    timeout: Duration,
    user_data: Option<String>,
}

/// Why a request is refused: its error code and text.
type Refusal = (ErrorCode, &'static str);

/// How a user leaves a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// hangup() or reject(): the user is told its call ended.
    Hangup,
    /// logout(): as a hangup, but a ringing invitation was never answered.
    Logout,
    /// A second login took over (the same device, or one beyond the
    /// user's devices): the session is told why.
    Kicked,
    /// The operator logged the user out: the session is told why.
    LoggedOutByOperator,
    /// The connection is gone: nothing can be told.
    ConnectionLost,
}

/// `reason` as a session speaking `protocol_version` can read it: the
/// reasons added since its version become the older ones they refine.
fn reason_for(protocol_version: u16, reason: EndReason) -> EndReason {
    match reason {
        EndReason::EndedByOperator if protocol_version < 3 => EndReason::Hangup,
        EndReason::LoggedOutByOperator if protocol_version < 4 => EndReason::Kicked,
        reason => reason,
    }
}

/// A broken invariant: a bug here, never a reaction to input (see the
/// [module docs](self)).
#[track_caller]
fn bug(what: &str) {
    debug_assert!(false, "switchboard bug: {what}");
    error!(what, "switchboard bug: inconsistent state left as it is");
}

/// The server's call logic. See the [module docs](self).
#[derive(Debug)]
pub struct Switchboard {
    config: SwitchboardConfig,
    sessions: crate::CountedKeyMap<ConnId, Session>,
    /// Who is online where: one session per user, stated there.
    presence: presence::Presence,
    calls: HashMap<CallId, Call>,
    timers: TimerTable<Timer>,
    outputs: VecDeque<Output>,
    /// Users not logged in whom an invitation rings, and its call.
    offline_invited: HashMap<UserId, CallId>,
    /// False while draining: no new call may start.
    accepting_calls: bool,
    /// Set while new calls are held for another reason than a drain.
    new_calls_held: Option<Refusal>,
    /// Calls whose entered members changed during the current input.
    membership_changed: BTreeSet<CallId>,
    counters: SwitchboardCounters,
    next_call: u32,
    next_flow: u32,
}

impl Switchboard {
    /// An empty switchboard.
    pub fn new(config: SwitchboardConfig) -> Self {
        Self {
            config,
            sessions: crate::CountedKeyMap::default(),
            presence: presence::Presence::default(),
            calls: HashMap::new(),
            timers: TimerTable::new(),
            outputs: VecDeque::new(),
            offline_invited: HashMap::new(),
            accepting_calls: true,
            new_calls_held: None,
            membership_changed: BTreeSet::new(),
            counters: SwitchboardCounters::default(),
            next_call: 1,
            next_flow: 1,
        }
    }

    /// The rules in force.
    pub fn config(&self) -> &SwitchboardConfig {
        &self.config
    }

    /// Handles one message from a connection.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, message: ClientMessage) {
        trace!(?conn, ?message, "client message");
        self.apply_message(now, conn, message);
        self.finish_input();
    }

    fn apply_message(&mut self, now: Instant, conn: ConnId, message: ClientMessage) {
        let Some(me) = self.user_of(conn).cloned() else {
            let request_id = message.request_id();
            return self.send_error(conn, request_id, ErrorCode::NOT_LOGGED_IN, "log in first");
        };
        match message {
            ClientMessage::Login { .. } | ClientMessage::Resume { .. } => self.send_error(
                conn,
                None,
                ErrorCode::ALREADY_LOGGED_IN,
                "this connection is already logged in",
            ),
            ClientMessage::Logout { request_id } => {
                self.ack(conn, request_id, None);
                self.end_session(conn, Departure::Logout);
                self.outputs.push_back(Output::Close {
                    conn,
                    code: ErrorCode::OK,
                });
            }
            ClientMessage::Invite {
                request_id,
                call_id,
                user_ids,
                call_type,
                timeout_ms,
                user_data,
            } => {
                let request = InviteRequest {
                    request_id,
                    into_call: call_id,
                    user_ids,
                    call_type,
                    timeout_ms,
                    user_data,
                };
                if let Err((code, why)) = self.invite(now, conn, me, request) {
                    self.send_error(conn, Some(request_id), code, why);
                }
            }
            ClientMessage::Accept {
                request_id,
                call_id,
            } => {
                if self.pending_call_of(conn) == Some(call_id) {
                    self.ack(conn, request_id, Some(call_id));
                    self.join(conn, call_id);
                } else {
                    self.refuse_no_invitation(conn, request_id);
                }
            }
            ClientMessage::Reject {
                request_id,
                call_id,
            } => {
                if self.pending_call_of(conn) == Some(call_id) {
                    self.ack(conn, request_id, Some(call_id));
                    self.leave(conn, Departure::Hangup);
                } else {
                    self.refuse_no_invitation(conn, request_id);
                }
            }
            ClientMessage::Hangup { request_id } => match self.joined_call_of(conn) {
                Some((call_id, _)) => {
                    self.ack(conn, request_id, Some(call_id));
                    self.leave(conn, Departure::Hangup);
                }
                // A ringing invitation is not hung up but rejected, by call
                // id: the client may not have heard of it yet.
                None => self.send_error(
                    conn,
                    Some(request_id),
                    ErrorCode::NOT_IN_CALL,
                    "not in a call",
                ),
            },
            ClientMessage::Microphone { muted } => self.set_microphone(conn, muted),
            ClientMessage::MemberKey { to, payload } => self.pass_member_key(conn, me, to, payload),
            ClientMessage::Ping { nonce } => self.send(conn, ServerMessage::Pong { nonce }),
            // Heartbeats count messages, which is the glue's bookkeeping
            // (see `crate::resume`); it answers them itself.
            ClientMessage::Heartbeat { .. } => {}
        }
    }

    /// Fires every timer due at or before `now`: an expired invitation
    /// tells the inviter `NoResponse` and the invitee `InvitationTimedOut`;
    /// a session whose client did not resume in time ends as a lost
    /// connection.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some((timer, _)) = self.timers.expire(now) {
            match timer {
                Timer::Invitation { call_id, invitee } => self.expire_invitation(call_id, invitee),
                Timer::ResumeGrace { conn } => {
                    debug!(?conn, "no resume in time: session over");
                    self.end_session(conn, Departure::ConnectionLost);
                    self.outputs.push_back(Output::Close {
                        conn,
                        code: ErrorCode::CONNECTION_LOST,
                    });
                }
            }
        }
        self.finish_input();
    }

    /// The next time [`Switchboard::handle_timeout`] has work, if any.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// The next thing to do, until `None`. Drain it after every input.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// Publishes what the input changed and, in debug builds, checks every
    /// invariant (see the [module docs](self)).
    fn finish_input(&mut self) {
        for call_id in std::mem::take(&mut self.membership_changed) {
            let members = self.members_of(call_id);
            self.outputs
                .push_back(Output::Membership { call_id, members });
        }
        #[cfg(debug_assertions)]
        if let Err(broken) = self.check_invariants() {
            panic!("switchboard invariant broken: {broken}");
        }
    }

    fn event(&mut self, event: CallEvent) {
        self.outputs.push_back(Output::Event(event));
    }

    fn ack(&mut self, conn: ConnId, request_id: RequestId, call_id: Option<CallId>) {
        self.send(
            conn,
            ServerMessage::Ack {
                request_id,
                call_id,
            },
        );
    }

    fn send_error(
        &mut self,
        conn: ConnId,
        request_id: Option<RequestId>,
        code: ErrorCode,
        why: &str,
    ) {
        self.send(
            conn,
            ServerMessage::Error {
                request_id,
                code,
                message: why.to_owned(),
            },
        );
    }

    /// To `user` on the device it is in `call_id` on, or (no such
    /// session here) as an [`Output::Unrouted`] for the glue.
    fn send_to_member(&mut self, call_id: CallId, user: &UserId, message: ServerMessage) {
        match self.member_conn(call_id, user) {
            Some(conn) => self.send(conn, message),
            None => self.unrouted(user, message),
        }
    }

    /// To each device of `user` that `call_id` rings, or (none here) as an
    /// [`Output::Unrouted`] for the glue.
    fn send_to_invitee(&mut self, call_id: CallId, user: &UserId, message: ServerMessage) {
        let ringing = self.ringing_conns(call_id, user);
        let Some((last, others)) = ringing.split_last() else {
            return self.unrouted(user, message);
        };
        for conn in others {
            self.send(*conn, message.clone());
        }
        self.send(*last, message);
    }

    fn unrouted(&mut self, user: &UserId, message: ServerMessage) {
        self.outputs.push_back(Output::Unrouted {
            user: user.clone(),
            message,
        });
    }

    /// The invitation to `call_id` stops ringing on `conn` because another
    /// device of its user answered it: told so from version 5, `Cancelled`
    /// before.
    fn stop_ringing_elsewhere(&mut self, conn: ConnId, call_id: CallId, answer: ElsewhereAnswer) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        session.call = None;
        let message = if session.protocol_version >= 5 {
            ServerMessage::HandledElsewhere { call_id, answer }
        } else {
            ServerMessage::Cancelled { call_id }
        };
        self.send(conn, message);
    }

    fn send(&mut self, conn: ConnId, message: ServerMessage) {
        self.outputs.push_back(Output::Send { conn, message });
    }
}
