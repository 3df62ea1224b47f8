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

use calling_api::{CallId, CallType, EndReason, ErrorCode, UserId};
use tracing::{debug, error, trace};

use crate::call_event::{CallEvent, InvitationOutcome};
use crate::limit::TokenBucket;
use crate::message::{
    ClientMessage, FlowId, PROTOCOL_VERSION, RequestId, ServerMessage, check_invitation,
};
use crate::timer::TimerTable;

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
/// in it (with their flows), and everyone they knew in it.
type ReportedMembers = (CallType, Vec<(UserId, FlowId)>, BTreeSet<UserId>);

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
    /// The protocol version the client speaks: version 1 clients get no
    /// version 2 message and cannot resume.
    protocol_version: u16,
    /// The connection broke; the session waits for a resume.
    detached: bool,
    muted: bool,
    call: Option<CallId>,
    /// Invitations this session may still send now.
    invitation_budget: TokenBucket,
    /// Invitations this session sent that ring now (never more than that
    /// count; one sent by an earlier session of the user is not here).
    ringing_out: usize,
    /// The glue says messages pile up for it: invitations to it are
    /// answered busy rather than queued.
    congested: bool,
}

#[derive(Debug)]
struct Member {
    flow: FlowId,
}

#[derive(Debug)]
struct Invitation {
    inviter: UserId,
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
    /// A second login, or the operator, took over: the session is told why.
    Kicked,
    /// The connection is gone: nothing can be told.
    ConnectionLost,
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
    sessions: HashMap<ConnId, Session>,
    online: HashMap<UserId, ConnId>,
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
            sessions: HashMap::new(),
            online: HashMap::new(),
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

    /// Registers an authenticated login of `user` on `conn`, speaking
    /// `protocol_version`, and answers it.
    ///
    /// Authentication (UserSig, protocol version) is the glue's job
    /// ([`crate::login::check_login`]); it calls this only for logins that
    /// passed. A session of the same user on another connection is kicked:
    /// its calls end as a leave, it gets [`ServerMessage::Kicked`] and is
    /// closed.
    pub fn handle_login(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        protocol_version: u16,
    ) {
        let _ = now;
        if self.sessions.contains_key(&conn) {
            self.send_error(
                conn,
                None,
                ErrorCode::ALREADY_LOGGED_IN,
                "this connection is already logged in",
            );
            return self.finish_input();
        }
        if let Some(old) = self.online.get(&user).copied() {
            debug!(%user, ?old, new = ?conn, "second login kicks the first session");
            self.kick_session(old);
        }
        self.online.insert(user.clone(), conn);
        let per_minute = f64::from(self.config.invitations_per_minute);
        self.sessions.insert(
            conn,
            Session {
                user,
                protocol_version,
                detached: false,
                muted: false,
                call: None,
                invitation_budget: TokenBucket::new(per_minute / 60.0, per_minute),
                ringing_out: 0,
                congested: false,
            },
        );
        self.send(
            conn,
            ServerMessage::LoginResult {
                protocol_version: protocol_version.min(PROTOCOL_VERSION),
                code: ErrorCode::OK,
                message: ErrorCode::OK.message().to_owned(),
            },
        );
        self.deliver_waiting_invitation(now, conn);
        self.finish_input();
    }

    /// Ends the session on `conn` as kicked: its calls end as a leave, it
    /// gets [`ServerMessage::Kicked`] and is closed.
    fn kick_session(&mut self, conn: ConnId) {
        self.end_session(conn, Departure::Kicked);
        self.send(conn, ServerMessage::Kicked);
        self.outputs.push_back(Output::Close {
            conn,
            code: ErrorCode::KICKED_OFFLINE,
        });
    }

    /// An invitation that rang `conn`'s user while it was offline rings
    /// its new session, for what is left of its timeout.
    fn deliver_waiting_invitation(&mut self, now: Instant, conn: ConnId) {
        let Some(user) = self.user_of(conn).cloned() else {
            return;
        };
        let Some(call_id) = self.offline_invited.remove(&user) else {
            return;
        };
        let Some(call) = self.calls.get(&call_id) else {
            return bug("an offline invitation outlived its call");
        };
        let Some(invitation) = call.pending.get(&user) else {
            return bug("an offline invitation is not pending in its call");
        };
        let left = self
            .timers
            .deadline(&Timer::Invitation {
                call_id,
                invitee: user.clone(),
            })
            .map_or(Duration::ZERO, |deadline| {
                deadline.saturating_duration_since(now)
            });
        let others = call
            .members
            .keys()
            .chain(call.pending.keys())
            .filter(|other| **other != user && **other != invitation.inviter)
            .cloned()
            .collect();
        let invited = ServerMessage::Invited {
            call_id,
            sponsor: invitation.inviter.clone(),
            user_ids: others,
            call_type: call.call_type,
            user_data: invitation.user_data.clone(),
            timeout_ms: u32::try_from(left.as_millis()).unwrap_or(u32::MAX),
        };
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.call = Some(call_id);
        }
        debug!(%user, %call_id, ?left, "invited while offline: rings now");
        self.send(conn, invited);
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
            ClientMessage::Ping { nonce } => self.send(conn, ServerMessage::Pong { nonce }),
            // Heartbeats count messages, which is the glue's bookkeeping
            // (see `crate::resume`); it answers them itself.
            ClientMessage::Heartbeat { .. } => {}
        }
    }

    /// The connection is gone (closed, timed out, reset). A resumable
    /// session waits [`SwitchboardConfig::resume_grace`] for its client:
    /// it stays online, in its call and rung by its invitations, its call's
    /// other members hear it is reconnecting, and its messages wait for the
    /// glue to deliver them after the resume. Any other session ends: its
    /// calls end as a leave with [`EndReason::ConnectionLost`] and the user
    /// goes offline.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        let grace = self.config.resume_grace;
        match self.sessions.get_mut(&conn) {
            Some(session) if session.protocol_version >= 2 && !grace.is_zero() => {
                if !session.detached {
                    session.detached = true;
                    debug!(user = %session.user, ?conn, "connection lost: waiting for a resume");
                    self.timers.set(Timer::ResumeGrace { conn }, now + grace);
                    self.tell_connection(conn, false);
                }
            }
            _ => self.end_session(conn, Departure::ConnectionLost),
        }
        self.finish_input();
    }

    /// The glue closed `conn` because its client broke the protocol or a
    /// limit: unlike a broken network, that is no reason to wait for a
    /// resume, and the session ends now as a lost connection.
    pub fn handle_expelled(&mut self, now: Instant, conn: ConnId) {
        let _ = now;
        self.end_session(conn, Departure::ConnectionLost);
        self.finish_input();
    }

    /// The client of the session on `conn` came back on a new connection
    /// (the glue checked its credentials and token): the session goes on as
    /// if nothing happened, its call's members hear it is back, and its
    /// call's membership is published again so the relay uses the new
    /// connection. Also for a session whose broken connection the glue has
    /// not noticed yet. `false` if there is no such session (it ended).
    pub fn handle_resume(&mut self, now: Instant, conn: ConnId) -> bool {
        let _ = now;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return false;
        };
        let was_detached = std::mem::replace(&mut session.detached, false);
        debug!(user = %session.user, ?conn, was_detached, "session resumed");
        if was_detached {
            self.timers.cancel(&Timer::ResumeGrace { conn });
            self.tell_connection(conn, true);
        }
        if let Some((call_id, _)) = self.joined_call_of(conn) {
            self.membership_changed.insert(call_id);
        }
        self.finish_input();
        true
    }

    /// Tells the other members of `conn`'s call that its connection went
    /// down or came back: those that understand it (version 2).
    fn tell_connection(&mut self, conn: ConnId, connected: bool) {
        let Some((call_id, _)) = self.joined_call_of(conn) else {
            return;
        };
        let Some(me) = self.user_of(conn).cloned() else {
            return;
        };
        let others: Vec<ConnId> = self
            .other_members(call_id, &me)
            .iter()
            .filter_map(|user| self.conn_of(user))
            .filter(|other| {
                self.sessions
                    .get(other)
                    .is_some_and(|session| session.protocol_version >= 2)
            })
            .collect();
        for other in others {
            self.send(
                other,
                ServerMessage::MemberConnection {
                    call_id,
                    user_id: me.clone(),
                    connected,
                },
            );
        }
    }

    /// Whether the session on `conn` waits for its client to resume.
    pub fn is_detached(&self, conn: ConnId) -> bool {
        self.sessions
            .get(&conn)
            .is_some_and(|session| session.detached)
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

    fn expire_invitation(&mut self, call_id: CallId, invitee: UserId) {
        let Some(invitation) = self
            .calls
            .get_mut(&call_id)
            .and_then(|call| call.pending.remove(&invitee))
        else {
            return bug("an invitation timer outlived its invitation");
        };
        self.invitation_over(&invitation.inviter);
        self.forget_offline_invitation(&invitee, call_id);
        self.event(CallEvent::InvitationEnded {
            call_id,
            inviter: invitation.inviter.clone(),
            invitee: invitee.clone(),
            outcome: InvitationOutcome::TimedOut,
            offline: invitation.offline,
        });
        debug!(%call_id, %invitee, "invitation timed out");
        match self.conn_of(&invitee) {
            Some(conn) => {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.call = None;
                }
                self.send(conn, ServerMessage::InvitationTimedOut { call_id });
            }
            None => self.outputs.push_back(Output::Unrouted {
                user: invitee.clone(),
                message: ServerMessage::InvitationTimedOut { call_id },
            }),
        }
        self.tell_inviter(
            call_id,
            &invitation.inviter,
            ServerMessage::NoResponse {
                call_id,
                user_id: invitee,
            },
        );
        self.end_if_nobody_left(call_id, EndReason::NoResponse);
    }

    /// Rebuilds sessions and calls another switchboard held (a cluster's
    /// control that died or stepped down; see `calling-cluster`), as their
    /// nodes report them. Sessions come back without a word to their
    /// clients (a user already online here is kicked, as by a login). A
    /// call comes back with the members reported in it; each is told of
    /// the members it knew who were not reported (they were lost with the
    /// old switchboard: `UserLeft`), and a call left with one member ends
    /// for it with [`EndReason::ConnectionLost`]. Invitations that rang are
    /// not restored (the nodes cancel them for their clients). Calls come
    /// back with a `Started` event naming their first member, then one
    /// `Joined` each, so the operator's side sees every call whole.
    pub fn handle_restore(&mut self, now: Instant, sessions: Vec<RestoredSession>) {
        let grace = self.config.resume_grace;
        let mut calls: BTreeMap<CallId, ReportedMembers> = BTreeMap::new();
        for restored in sessions {
            if self.sessions.contains_key(&restored.conn) {
                bug("a restored connection is already a session");
                continue;
            }
            if let Some(old) = self.online.get(&restored.user).copied() {
                self.kick_session(old);
            }
            if let Some(call) = &restored.call {
                let entry = calls
                    .entry(call.call_id)
                    .or_insert_with(|| (call.call_type, Vec::new(), BTreeSet::new()));
                entry.1.push((restored.user.clone(), call.flow));
                entry.2.extend(call.members.iter().cloned());
                self.next_flow = self.next_flow.max(call.flow.0.saturating_add(1));
            }
            self.online.insert(restored.user.clone(), restored.conn);
            let per_minute = f64::from(self.config.invitations_per_minute);
            let detached = restored.detached && !grace.is_zero();
            if detached {
                self.timers.set(
                    Timer::ResumeGrace {
                        conn: restored.conn,
                    },
                    now + grace,
                );
            }
            self.sessions.insert(
                restored.conn,
                Session {
                    user: restored.user,
                    protocol_version: restored.protocol_version,
                    detached,
                    muted: restored.muted,
                    call: None,
                    invitation_budget: TokenBucket::new(per_minute / 60.0, per_minute),
                    ringing_out: 0,
                    congested: false,
                },
            );
        }
        for (call_id, (call_type, present, known)) in calls {
            self.restore_call(call_id, call_type, present, &known);
        }
        self.finish_input();
    }

    fn restore_call(
        &mut self,
        call_id: CallId,
        call_type: CallType,
        present: Vec<(UserId, FlowId)>,
        known: &BTreeSet<UserId>,
    ) {
        let present: Vec<(UserId, FlowId)> = present
            .into_iter()
            .filter(|(user, _)| self.conn_of(user).is_some())
            .collect();
        if self.calls.contains_key(&call_id) {
            bug("a restored call exists already");
            return;
        }
        if present.len() < 2 {
            // Whoever else was in it is gone with the old switchboard.
            for (user, _) in present {
                if let Some(conn) = self.conn_of(&user) {
                    let ended = ServerMessage::CallEnded {
                        call_id,
                        reason: EndReason::ConnectionLost,
                    };
                    self.send(conn, ended);
                }
            }
            self.membership_changed.insert(call_id);
            return;
        }
        let members: BTreeMap<UserId, Member> = present
            .iter()
            .map(|(user, flow)| (user.clone(), Member { flow: *flow }))
            .collect();
        let lost: Vec<UserId> = known
            .iter()
            .filter(|user| !members.contains_key(*user))
            .cloned()
            .collect();
        debug!(%call_id, members = members.len(), lost = lost.len(), "call restored");
        self.event(CallEvent::Started {
            call_id,
            call_type,
            caller: present[0].0.clone(),
        });
        for (user, _) in &present {
            self.event(CallEvent::Joined {
                call_id,
                user: user.clone(),
            });
            if let Some(session) = self
                .conn_of(user)
                .and_then(|conn| self.sessions.get_mut(&conn))
            {
                session.call = Some(call_id);
            }
        }
        self.calls.insert(
            call_id,
            Call {
                call_type,
                members,
                pending: BTreeMap::new(),
            },
        );
        for (user, _) in &present {
            let Some(conn) = self.conn_of(user) else {
                continue;
            };
            for gone in &lost {
                let left = ServerMessage::UserLeft {
                    call_id,
                    user_id: gone.clone(),
                };
                self.send(conn, left);
            }
        }
        self.membership_changed.insert(call_id);
    }

    /// A call's type, while it exists.
    pub fn call_type(&self, call_id: CallId) -> Option<CallType> {
        self.calls.get(&call_id).map(|call| call.call_type)
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

    /// Ends every call with [`EndReason::ServerShutdown`] (pending invitees
    /// get `Cancelled`), tells every session and closes it.
    pub fn shutdown(&mut self, now: Instant) {
        let _ = now;
        let mut calls: Vec<CallId> = self.calls.keys().copied().collect();
        calls.sort();
        for call_id in calls {
            self.end_call_now(call_id, EndReason::ServerShutdown);
        }
        self.timers.clear();
        let mut conns: Vec<ConnId> = self.sessions.keys().copied().collect();
        conns.sort();
        for conn in conns {
            self.send_error(
                conn,
                None,
                ErrorCode::SERVER_SHUTDOWN,
                "the server is shutting down",
            );
            self.outputs.push_back(Output::Close {
                conn,
                code: ErrorCode::SERVER_SHUTDOWN,
            });
        }
        self.sessions.clear();
        self.online.clear();
        self.finish_input();
    }

    /// The operator ends `call_id`: its members get `CallEnded` with
    /// [`EndReason::EndedByOperator`] (a client older than protocol
    /// version 3, [`EndReason::Hangup`]), its ringing invitees
    /// `Cancelled`. `false` if there is no such call.
    pub fn end_call(&mut self, now: Instant, call_id: CallId) -> bool {
        let _ = now;
        let ended = self.end_call_now(call_id, EndReason::EndedByOperator);
        self.finish_input();
        ended
    }

    /// The operator logs `user` out: as if it had logged in elsewhere (it
    /// gets `Kicked`, its call goes on without it, its connection closes,
    /// a waiting session too). `false` if it is not logged in.
    pub fn kick(&mut self, now: Instant, user: &UserId) -> bool {
        let _ = now;
        let Some(conn) = self.conn_of(user) else {
            return false;
        };
        debug!(%user, ?conn, "kicked by the operator");
        self.kick_session(conn);
        self.finish_input();
        true
    }

    /// While `false` (a drain), an invite that would start a call is
    /// refused with `SERVER_DRAINING`; calls in progress go on, and may
    /// still invite.
    pub fn set_accepting_calls(&mut self, accepting: bool) {
        self.accepting_calls = accepting;
    }

    /// While set, an invite that would start a call is refused with this
    /// code and text (a cluster whose store is unreachable); calls in
    /// progress go on, and may still invite. A drain's refusal comes first.
    pub fn hold_new_calls(&mut self, refusal: Option<(ErrorCode, &'static str)>) {
        self.new_calls_held = refusal;
    }

    /// Every call, for the operator: members and ringing invitees.
    pub fn call_summaries(&self) -> Vec<CallSummary> {
        let mut calls: Vec<CallSummary> = self
            .calls
            .iter()
            .map(|(call_id, call)| CallSummary {
                call_id: *call_id,
                call_type: call.call_type,
                members: call.members.keys().cloned().collect(),
                invitees: call.pending.keys().cloned().collect(),
            })
            .collect();
        calls.sort_by_key(|call| call.call_id);
        calls
    }

    /// Every session, for the operator, sorted by user.
    pub fn session_summaries(&self) -> Vec<SessionSummary> {
        let mut sessions: Vec<SessionSummary> = self
            .sessions
            .values()
            .map(|session| SessionSummary {
                user: session.user.clone(),
                protocol_version: session.protocol_version,
                reconnecting: session.detached,
                call: session.call,
            })
            .collect();
        sessions.sort_by(|a, b| a.user.cmp(&b.user));
        sessions
    }

    /// Sessions whose connection broke and that wait for a resume.
    pub fn detached_count(&self) -> usize {
        self.sessions.values().filter(|s| s.detached).count()
    }

    /// How many calls have each number of entered members.
    pub fn call_sizes(&self) -> BTreeMap<usize, usize> {
        let mut sizes = BTreeMap::new();
        for call in self.calls.values() {
            *sizes.entry(call.members.len()).or_insert(0) += 1;
        }
        sizes
    }

    /// Tells whether messages pile up for `conn` (its glue's queue is
    /// nearly full): while they do, invitations to its user are answered
    /// `LineBusy` at the sender instead of adding to the pile, so nobody
    /// can get a user disconnected by inviting it faster than it reads.
    pub fn set_congested(&mut self, conn: ConnId, congested: bool) {
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.congested = congested;
        }
    }

    /// Who is logged in on `conn`.
    pub fn user_of(&self, conn: ConnId) -> Option<&UserId> {
        self.sessions.get(&conn).map(|session| &session.user)
    }

    /// The connection `user` is logged in on.
    pub fn conn_of(&self, user: &UserId) -> Option<ConnId> {
        self.online.get(user).copied()
    }

    /// The call `conn`'s user has entered, with the user's flow id in it
    /// (invitations not yet answered do not count).
    pub fn joined_call_of(&self, conn: ConnId) -> Option<(CallId, FlowId)> {
        let session = self.sessions.get(&conn)?;
        let call_id = session.call?;
        let member = self.calls.get(&call_id)?.members.get(&session.user)?;
        Some((call_id, member.flow))
    }

    /// The members who have entered a call, sorted by user.
    pub fn members_of(&self, call_id: CallId) -> Vec<CallMember> {
        self.calls.get(&call_id).map_or_else(Vec::new, |call| {
            call.members
                .iter()
                .filter_map(|(user, member)| {
                    Some(CallMember {
                        user: user.clone(),
                        flow: member.flow,
                        conn: self.conn_of(user)?,
                    })
                })
                .collect()
        })
    }

    /// How many calls exist (ringing or connected).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// How many users are logged in.
    pub fn online_count(&self) -> usize {
        self.online.len()
    }

    /// What the limits refused so far.
    pub fn counters(&self) -> SwitchboardCounters {
        self.counters
    }

    /// Checks every internal invariant; `Err` says which one broke. Cheap
    /// enough for tests and debug assertions, not for every message in
    /// production.
    ///
    /// - every session's call exists and holds the user, as member or invitee;
    /// - every member and invitee of a call is online with that call;
    /// - every call has a member, and one with a single member has invitees
    ///   (a call with nobody left to answer has ended);
    /// - invitation timers and pending invitations match one to one, and
    ///   grace timers and detached sessions;
    /// - no session counts more ringing invitations than it has ringing;
    /// - no membership change is left unpublished between inputs.
    pub fn check_invariants(&self) -> Result<(), String> {
        for (conn, session) in &self.sessions {
            if self.online.get(&session.user) != Some(conn) {
                return Err(format!(
                    "{} on {conn:?} is not the online session",
                    session.user
                ));
            }
            if let Some(call_id) = session.call {
                let call = self
                    .calls
                    .get(&call_id)
                    .ok_or_else(|| format!("{} is busy in ended {call_id}", session.user))?;
                if !call.contains(&session.user) {
                    return Err(format!(
                        "{} points at {call_id} which lacks them",
                        session.user
                    ));
                }
            }
        }
        if self.online.len() != self.sessions.len() {
            return Err("online map and sessions disagree".into());
        }
        self.check_offline_invitations()?;
        let mut pending_total = 0;
        for (call_id, call) in &self.calls {
            if call.members.is_empty() {
                return Err(format!("{call_id} has no member"));
            }
            if call.members.len() == 1 && call.pending.is_empty() {
                return Err(format!("{call_id} has one member and nobody to answer"));
            }
            for user in call.members.keys().chain(call.pending.keys()) {
                let session = self.conn_of(user).and_then(|conn| self.sessions.get(&conn));
                let Some(session) = session else {
                    if call.pending.contains_key(user)
                        && self.offline_invited.get(user) == Some(call_id)
                    {
                        continue;
                    }
                    return Err(format!("{user} in {call_id} is offline"));
                };
                if session.call != Some(*call_id) {
                    return Err(format!(
                        "{user} in {call_id} thinks it is in {:?}",
                        session.call
                    ));
                }
            }
            for user in call.pending.keys() {
                let timer = Timer::Invitation {
                    call_id: *call_id,
                    invitee: user.clone(),
                };
                if self.timers.deadline(&timer).is_none() {
                    return Err(format!("{user}'s invitation to {call_id} has no timer"));
                }
            }
            pending_total += call.pending.len();
        }
        let detached: Vec<ConnId> = self
            .sessions
            .iter()
            .filter(|(_, session)| session.detached)
            .map(|(conn, _)| *conn)
            .collect();
        for conn in &detached {
            if self
                .timers
                .deadline(&Timer::ResumeGrace { conn: *conn })
                .is_none()
            {
                return Err(format!("detached {conn:?} has no grace timer"));
            }
        }
        if pending_total + detached.len() != self.timers.len() {
            return Err(format!(
                "{} timers for {pending_total} invitations and {} detached sessions",
                self.timers.len(),
                detached.len()
            ));
        }
        for session in self.sessions.values() {
            let sent = self
                .calls
                .values()
                .flat_map(|call| call.pending.values())
                .filter(|invitation| invitation.inviter == session.user)
                .count();
            if session.ringing_out > sent {
                return Err(format!(
                    "{} counts {} ringing invitations, {sent} ring",
                    session.user, session.ringing_out
                ));
            }
        }
        if !self.membership_changed.is_empty() {
            return Err("a membership change was not published".into());
        }
        Ok(())
    }

    /// Every offline invitation is pending in its call, for a user who is
    /// not online.
    fn check_offline_invitations(&self) -> Result<(), String> {
        for (user, call_id) in &self.offline_invited {
            if self.online.contains_key(user) {
                return Err(format!("{user} is online with an offline invitation"));
            }
            if !self
                .calls
                .get(call_id)
                .is_some_and(|call| call.pending.contains_key(user))
            {
                return Err(format!(
                    "{user}'s offline invitation to {call_id} is not pending"
                ));
            }
        }
        Ok(())
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

    fn invite(
        &mut self,
        now: Instant,
        conn: ConnId,
        me: UserId,
        request: InviteRequest,
    ) -> Result<(), Refusal> {
        check_invitation(
            &me,
            &request.user_ids,
            request.timeout_ms,
            request.user_data.as_deref(),
        )?;
        let InviteRequest {
            request_id,
            into_call,
            user_ids,
            call_type,
            timeout_ms,
            user_data,
        } = request;
        let mut invitees: Vec<UserId> = Vec::with_capacity(user_ids.len());
        for user in user_ids {
            if !invitees.contains(&user) {
                invitees.push(user);
            }
        }
        let timeout = timeout_ms
            .map_or(self.config.default_invite_timeout, |ms| {
                Duration::from_millis(u64::from(ms))
            })
            .min(self.config.max_invite_timeout);
        self.check_invitation_limits(now, conn, invitees.len())?;
        if into_call.is_some() && self.joined_call_of(conn).map(|(call_id, _)| call_id) != into_call
        {
            return Err((
                ErrorCode::NOT_IN_CALL,
                "that call is over, or you are not in it",
            ));
        }
        let (call_id, answers_glare) = match self.sessions.get(&conn).and_then(|s| s.call) {
            Some(call_id) => {
                let glare =
                    self.check_invite_from(call_id, &me, &mut invitees, into_call, call_type)?;
                (call_id, glare)
            }
            None => (self.open_call(conn, &me, invitees.len(), call_type)?, false),
        };
        self.ack(conn, request_id, Some(call_id));
        if answers_glare {
            self.join(conn, call_id);
        }
        self.ring(
            now,
            Ringing {
                inviter_conn: conn,
                inviter: me,
                call_id,
                invitees,
                timeout,
                user_data,
            },
        );
        Ok(())
    }

    /// Whether `conn`'s session may ring `count` more invitees now: its
    /// ringing invitations and its invitations a minute are limited. Takes
    /// the invitations from the budget when it may.
    fn check_invitation_limits(
        &mut self,
        now: Instant,
        conn: ConnId,
        count: usize,
    ) -> Result<(), Refusal> {
        let max_ringing = self.config.max_ringing_per_session;
        let Some(session) = self.sessions.get_mut(&conn) else {
            return Err((ErrorCode::NOT_LOGGED_IN, "log in first"));
        };
        // Counts are at most 16: exact in f64.
        let refusal = if session.ringing_out + count > max_ringing {
            "too many of your invitations are ringing"
        } else if !session.invitation_budget.admit(now, count as f64) {
            "too many invitations a minute"
        } else {
            return Ok(());
        };
        debug!(user = %session.user, refusal, "invitation limit");
        self.counters.invitations_rate_limited += 1;
        Err((ErrorCode::RATE_LIMITED, refusal))
    }

    /// An invitation `inviter` sent stopped ringing (answered, timed out,
    /// cancelled, or its invitee gone).
    fn invitation_over(&mut self, inviter: &UserId) {
        if let Some(session) = self
            .online
            .get(inviter)
            .and_then(|conn| self.sessions.get_mut(conn))
        {
            session.ringing_out = session.ringing_out.saturating_sub(1);
        }
    }

    /// Whether `me`, whose session is in `call_id`, may invite `invitees`
    /// (call type, size, nobody already in it). `Ok(true)` for glare: the
    /// call rings `me` and an invitee is in it, so the invite answers it;
    /// `invitees` then keeps only those not in the call yet.
    fn check_invite_from(
        &self,
        call_id: CallId,
        me: &UserId,
        invitees: &mut Vec<UserId>,
        into_call: Option<CallId>,
        call_type: CallType,
    ) -> Result<bool, Refusal> {
        let Some(call) = self.calls.get(&call_id) else {
            bug("a session points at a missing call");
            return Err((ErrorCode::INTERNAL, "session points at a missing call"));
        };
        if call.members.contains_key(me) && into_call.is_none() {
            return Err((
                ErrorCode::WRONG_CALL_STATE,
                "already in a call: name it to invite into it",
            ));
        }
        if call.pending.contains_key(me) {
            if !invitees.iter().any(|user| call.members.contains_key(user)) {
                return Err((
                    ErrorCode::WRONG_CALL_STATE,
                    "an invitation is ringing: accept or reject it first",
                ));
            }
            debug!(%me, %call_id, "glare: the invite answers the invitation");
            invitees.retain(|user| !call.contains(user));
            return Ok(true);
        }
        if call.call_type != call_type {
            return Err((
                ErrorCode::CALL_TYPE_MISMATCH,
                "the current call has another call type",
            ));
        }
        if invitees.iter().any(|user| call.contains(user)) {
            return Err((ErrorCode::ALREADY_IN_CALL, "a user is already in this call"));
        }
        if call.size() + invitees.len() > self.config.max_call_size {
            return Err((ErrorCode::CALL_FULL, "the call would exceed its size limit"));
        }
        Ok(false)
    }

    /// A new call with `me` (on `conn`) as its only member, room permitting.
    fn open_call(
        &mut self,
        conn: ConnId,
        me: &UserId,
        invitees: usize,
        call_type: CallType,
    ) -> Result<CallId, Refusal> {
        if !self.accepting_calls {
            return Err((
                ErrorCode::SERVER_DRAINING,
                "this server is draining: no new calls",
            ));
        }
        if let Some(refusal) = self.new_calls_held {
            return Err(refusal);
        }
        if 1 + invitees > self.config.max_call_size {
            return Err((ErrorCode::CALL_FULL, "the call would exceed its size limit"));
        }
        let call_id = CallId(u64::from(self.config.node_id) << 32 | u64::from(self.next_call));
        self.next_call = self.next_call.wrapping_add(1).max(1);
        let flow = self.allocate_flow();
        self.calls.insert(
            call_id,
            Call {
                call_type,
                members: BTreeMap::from([(me.clone(), Member { flow })]),
                pending: BTreeMap::new(),
            },
        );
        if let Some(session) = self.sessions.get_mut(&conn) {
            session.call = Some(call_id);
        }
        self.membership_changed.insert(call_id);
        debug!(%me, %call_id, "call created");
        self.event(CallEvent::Started {
            call_id,
            call_type,
            caller: me.clone(),
        });
        self.event(CallEvent::Joined {
            call_id,
            user: me.clone(),
        });
        Ok(call_id)
    }

    /// Rings each invitee who is free (or offline, when offline invitees
    /// ring); answers the others busy or absent.
    fn ring(&mut self, now: Instant, ringing: Ringing) {
        let Ringing {
            inviter_conn,
            inviter,
            call_id,
            invitees,
            timeout,
            user_data,
        } = ringing;
        let deadline = now + timeout;
        let mut rung = Vec::new();
        let mut unreachable = Vec::new();
        let mut any_busy = false;
        for user in invitees {
            let online = self.conn_of(&user);
            let offline = match self.availability(&user) {
                Ok(offline) => offline,
                Err(outcome) => {
                    let answer = if outcome == InvitationOutcome::Busy {
                        any_busy = true;
                        ServerMessage::LineBusy {
                            call_id,
                            user_id: user.clone(),
                        }
                    } else {
                        ServerMessage::NoResponse {
                            call_id,
                            user_id: user.clone(),
                        }
                    };
                    unreachable.push(answer);
                    self.event(CallEvent::InvitationEnded {
                        call_id,
                        inviter: inviter.clone(),
                        invitee: user,
                        outcome,
                        offline: online.is_none(),
                    });
                    continue;
                }
            };
            let Some(call) = self.calls.get_mut(&call_id) else {
                return bug("ringing into a missing call");
            };
            call.pending.insert(
                user.clone(),
                Invitation {
                    inviter: inviter.clone(),
                    user_data: user_data.clone(),
                    offline,
                },
            );
            match online.and_then(|conn| self.sessions.get_mut(&conn)) {
                Some(session) => session.call = Some(call_id),
                None => {
                    debug!(%user, %call_id, "invitee offline: the invitation waits for it");
                    self.offline_invited.insert(user.clone(), call_id);
                }
            }
            if let Some(inviter_session) = self.sessions.get_mut(&inviter_conn) {
                inviter_session.ringing_out += 1;
            }
            self.timers.set(
                Timer::Invitation {
                    call_id,
                    invitee: user.clone(),
                },
                deadline,
            );
            self.event(CallEvent::Invited {
                call_id,
                inviter: inviter.clone(),
                invitee: user.clone(),
                timeout,
                offline,
            });
            // An offline invitee is told when it logs in.
            if !offline {
                rung.push(user);
            }
        }
        self.send_invitations(call_id, &inviter, rung, timeout, user_data.as_ref());
        for message in unreachable {
            self.send(inviter_conn, message);
        }
        let reason = if any_busy {
            EndReason::LineBusy
        } else {
            EndReason::NoResponse
        };
        self.end_if_nobody_left(call_id, reason);
    }

    /// Tells each of `rung` that `inviter` invites it into `call_id`.
    fn send_invitations(
        &mut self,
        call_id: CallId,
        inviter: &UserId,
        rung: Vec<UserId>,
        timeout: Duration,
        user_data: Option<&String>,
    ) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let call_type = call.call_type;
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        let everyone: Vec<UserId> = call
            .members
            .keys()
            .chain(call.pending.keys())
            .cloned()
            .collect();
        for user in rung {
            let others = everyone
                .iter()
                .filter(|other| **other != user && *other != inviter)
                .cloned()
                .collect();
            self.send_to_user(
                &user,
                ServerMessage::Invited {
                    call_id,
                    sponsor: inviter.clone(),
                    user_ids: others,
                    call_type,
                    user_data: user_data.cloned(),
                    timeout_ms,
                },
            );
        }
    }

    /// Whether `user` may ring now: `Ok(offline)`, or why not.
    fn availability(&mut self, user: &UserId) -> Result<bool, InvitationOutcome> {
        match self.conn_of(user).and_then(|conn| self.sessions.get(&conn)) {
            // In a call, ringing, or not keeping up with its messages.
            Some(session) if session.call.is_some() => Err(InvitationOutcome::Busy),
            Some(session) if session.congested => {
                self.counters.invitees_congested += 1;
                Err(InvitationOutcome::Busy)
            }
            Some(_) => Ok(false),
            None if self.offline_invited.contains_key(user) => Err(InvitationOutcome::Busy),
            None if self.config.ring_offline_invitees => Ok(true),
            None => Err(InvitationOutcome::NoResponse),
        }
    }

    /// Moves `conn`'s user from the invitees of `call_id` to its members and
    /// introduces everyone.
    fn join(&mut self, conn: ConnId, call_id: CallId) {
        let Some(session) = self.sessions.get(&conn) else {
            return bug("joining without a session");
        };
        let (me, muted) = (session.user.clone(), session.muted);
        let flow = self.allocate_flow();
        let Some(call) = self.calls.get_mut(&call_id) else {
            return bug("joining a missing call");
        };
        let answered = call.pending.remove(&me);
        if answered.is_some() {
            self.timers.cancel(&Timer::Invitation {
                call_id,
                invitee: me.clone(),
            });
        }
        let existing: Vec<(UserId, FlowId)> = call
            .members
            .iter()
            .map(|(user, member)| (user.clone(), member.flow))
            .collect();
        call.members.insert(me.clone(), Member { flow });
        self.membership_changed.insert(call_id);
        if let Some(invitation) = answered {
            self.invitation_over(&invitation.inviter);
            self.event(CallEvent::InvitationEnded {
                call_id,
                inviter: invitation.inviter,
                invitee: me.clone(),
                outcome: InvitationOutcome::Answered,
                offline: invitation.offline,
            });
        }
        self.event(CallEvent::Joined {
            call_id,
            user: me.clone(),
        });
        debug!(%me, %call_id, "entered");
        for (user, user_flow) in existing {
            self.send_to_user(
                &user,
                ServerMessage::UserEntered {
                    call_id,
                    user_id: me.clone(),
                    flow_id: flow,
                    audio_available: !muted,
                },
            );
            let user_muted = self
                .conn_of(&user)
                .and_then(|other| self.sessions.get(&other))
                .is_some_and(|other| other.muted);
            self.send(
                conn,
                ServerMessage::UserEntered {
                    call_id,
                    user_id: user,
                    flow_id: user_flow,
                    audio_available: !user_muted,
                },
            );
        }
    }

    /// Takes `conn`'s user out of its call, whatever its part in it.
    fn leave(&mut self, conn: ConnId, departure: Departure) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(call_id) = session.call.take() else {
            return;
        };
        let me = session.user.clone();
        let Some(call) = self.calls.get_mut(&call_id) else {
            return bug("a session was in a missing call");
        };
        if let Some(invitation) = call.pending.remove(&me) {
            self.timers.cancel(&Timer::Invitation {
                call_id,
                invitee: me.clone(),
            });
            self.invitation_over(&invitation.inviter);
            let outcome = match departure {
                Departure::Hangup => InvitationOutcome::Rejected,
                Departure::Logout | Departure::Kicked | Departure::ConnectionLost => {
                    InvitationOutcome::NoResponse
                }
            };
            self.event(CallEvent::InvitationEnded {
                call_id,
                inviter: invitation.inviter.clone(),
                invitee: me.clone(),
                outcome,
                offline: invitation.offline,
            });
            let (answer, reason) = if outcome == InvitationOutcome::Rejected {
                (
                    ServerMessage::Rejected {
                        call_id,
                        user_id: me,
                    },
                    EndReason::Rejected,
                )
            } else {
                (
                    ServerMessage::NoResponse {
                        call_id,
                        user_id: me,
                    },
                    EndReason::NoResponse,
                )
            };
            self.tell_inviter(call_id, &invitation.inviter, answer);
            self.end_if_nobody_left(call_id, reason);
            return;
        }
        if call.members.remove(&me).is_none() {
            return bug("a session's call holds it neither as member nor invitee");
        }
        self.membership_changed.insert(call_id);
        debug!(%me, %call_id, ?departure, "left");
        let nobody_entered = call.members.is_empty();
        let own_reason = match departure {
            Departure::Hangup | Departure::Logout if nobody_entered => Some(EndReason::Cancelled),
            Departure::Hangup | Departure::Logout => Some(EndReason::Hangup),
            Departure::Kicked => Some(EndReason::Kicked),
            Departure::ConnectionLost => None,
        };
        let others: Vec<UserId> = call.members.keys().cloned().collect();
        if let Some(reason) = own_reason {
            self.send(conn, ServerMessage::CallEnded { call_id, reason });
        }
        let reason_for_the_last = if departure == Departure::ConnectionLost {
            EndReason::ConnectionLost
        } else {
            EndReason::Hangup
        };
        self.event(CallEvent::Left {
            call_id,
            user: me.clone(),
            reason: own_reason.unwrap_or(EndReason::ConnectionLost),
        });
        if nobody_entered {
            // Nobody answered yet: leaving cancels every invitation.
            self.cancel_invitations(call_id, own_reason.unwrap_or(EndReason::ConnectionLost));
            return;
        }
        for user in &others {
            self.send_to_user(
                user,
                ServerMessage::UserLeft {
                    call_id,
                    user_id: me.clone(),
                },
            );
        }
        self.end_if_nobody_left(call_id, reason_for_the_last);
    }

    /// Ends a call nobody answered yet: its invitations are cancelled.
    fn cancel_invitations(&mut self, call_id: CallId, reason: EndReason) {
        let Some(call) = self.calls.remove(&call_id) else {
            return bug("cancelling the invitations of a missing call");
        };
        self.membership_changed.insert(call_id);
        self.cancel_pending(call_id, call.pending);
        self.event(CallEvent::Ended { call_id, reason });
    }

    /// Stops every invitation of an ended call: its invitees get `Cancelled`.
    fn cancel_pending(&mut self, call_id: CallId, pending: BTreeMap<UserId, Invitation>) {
        for (user, invitation) in pending {
            self.timers.cancel(&Timer::Invitation {
                call_id,
                invitee: user.clone(),
            });
            self.invitation_over(&invitation.inviter);
            self.forget_offline_invitation(&user, call_id);
            if let Some(session) = self
                .conn_of(&user)
                .and_then(|conn| self.sessions.get_mut(&conn))
            {
                session.call = None;
            }
            self.send_to_user(&user, ServerMessage::Cancelled { call_id });
            self.event(CallEvent::InvitationEnded {
                call_id,
                inviter: invitation.inviter,
                invitee: user,
                outcome: InvitationOutcome::Cancelled,
                offline: invitation.offline,
            });
        }
    }

    /// Ends `call_id` for everyone at once, with `reason` (shutdown, the
    /// operator). `false` if there is no such call.
    fn end_call_now(&mut self, call_id: CallId, reason: EndReason) -> bool {
        let Some(call) = self.calls.remove(&call_id) else {
            return false;
        };
        self.membership_changed.insert(call_id);
        debug!(%call_id, %reason, "call ended at once");
        self.cancel_pending(call_id, call.pending);
        for user in call.members.into_keys() {
            let conn = self.conn_of(&user);
            let session = conn.and_then(|conn| self.sessions.get_mut(&conn));
            let told = match session {
                Some(session) => {
                    session.call = None;
                    // Older clients cannot read the reasons added since.
                    if reason == EndReason::EndedByOperator && session.protocol_version < 3 {
                        EndReason::Hangup
                    } else {
                        reason
                    }
                }
                None => reason,
            };
            self.send_to_user(
                &user,
                ServerMessage::CallEnded {
                    call_id,
                    reason: told,
                },
            );
            self.event(CallEvent::Left {
                call_id,
                user,
                reason,
            });
        }
        self.event(CallEvent::Ended { call_id, reason });
        true
    }

    /// `user` logged in, or the invitation to `call_id` ended: it no
    /// longer waits for `user` offline.
    fn forget_offline_invitation(&mut self, user: &UserId, call_id: CallId) {
        if self.offline_invited.get(user) == Some(&call_id) {
            self.offline_invited.remove(user);
        }
    }

    fn event(&mut self, event: CallEvent) {
        self.outputs.push_back(Output::Event(event));
    }

    /// A call with one member and nobody left to answer is over for that member.
    fn end_if_nobody_left(&mut self, call_id: CallId, reason: EndReason) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        if call.members.len() > 1 || !call.pending.is_empty() {
            return;
        }
        let last = call.members.keys().next().cloned();
        self.calls.remove(&call_id);
        self.membership_changed.insert(call_id);
        debug!(%call_id, %reason, "call ended");
        if let Some(user) = last {
            if let Some(session) = self
                .conn_of(&user)
                .and_then(|conn| self.sessions.get_mut(&conn))
            {
                session.call = None;
            }
            self.event(CallEvent::Left {
                call_id,
                user: user.clone(),
                reason,
            });
            self.send_to_user(&user, ServerMessage::CallEnded { call_id, reason });
        }
        self.event(CallEvent::Ended { call_id, reason });
    }

    fn end_session(&mut self, conn: ConnId, departure: Departure) {
        self.timers.cancel(&Timer::ResumeGrace { conn });
        self.leave(conn, departure);
        if let Some(session) = self.sessions.remove(&conn) {
            if self.online.get(&session.user) == Some(&conn) {
                self.online.remove(&session.user);
            }
        }
    }

    fn set_microphone(&mut self, conn: ConnId, muted: bool) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        if session.muted == muted {
            return;
        }
        session.muted = muted;
        let me = session.user.clone();
        let Some((call_id, _)) = self.joined_call_of(conn) else {
            return;
        };
        for user in self.other_members(call_id, &me) {
            self.send_to_user(
                &user,
                ServerMessage::AudioAvailability {
                    call_id,
                    user_id: me.clone(),
                    available: !muted,
                },
            );
        }
    }

    /// The members of `call_id` who entered it, but `me`.
    fn other_members(&self, call_id: CallId, me: &UserId) -> Vec<UserId> {
        self.calls.get(&call_id).map_or_else(Vec::new, |call| {
            call.members
                .keys()
                .filter(|user| *user != me)
                .cloned()
                .collect()
        })
    }

    /// The call that rings `conn`'s user, if one does.
    fn pending_call_of(&self, conn: ConnId) -> Option<CallId> {
        let session = self.sessions.get(&conn)?;
        let call_id = session.call?;
        self.calls
            .get(&call_id)?
            .pending
            .contains_key(&session.user)
            .then_some(call_id)
    }

    /// Answers about an invitation go to whoever sent it, if still in the call.
    fn tell_inviter(&mut self, call_id: CallId, inviter: &UserId, message: ServerMessage) {
        let still_member = self
            .calls
            .get(&call_id)
            .is_some_and(|call| call.members.contains_key(inviter));
        if still_member {
            self.send_to_user(inviter, message);
        }
    }

    fn allocate_flow(&mut self) -> FlowId {
        let flow = FlowId(self.next_flow);
        self.next_flow = self.next_flow.wrapping_add(1).max(1);
        flow
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

    fn refuse_no_invitation(&mut self, conn: ConnId, request_id: RequestId) {
        self.send_error(
            conn,
            Some(request_id),
            ErrorCode::NO_INVITATION,
            "no pending invitation for that call",
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

    /// To `user` wherever it is: on its connection here, or (no session
    /// here) as an [`Output::Unrouted`] for the glue.
    fn send_to_user(&mut self, user: &UserId, message: ServerMessage) {
        match self.conn_of(user) {
            Some(conn) => self.send(conn, message),
            None => self.outputs.push_back(Output::Unrouted {
                user: user.clone(),
                message,
            }),
        }
    }

    fn send(&mut self, conn: ConnId, message: ServerMessage) {
        self.outputs.push_back(Output::Send { conn, message });
    }
}
