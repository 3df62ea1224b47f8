//! The server's call logic: presence, invitations, membership and every rule
//! of the calling API, as a sans-IO state machine.
//!
//! The glue feeds it logins (after authenticating them), client messages,
//! disconnections and the current time, and drains its outputs: messages to
//! send and connections to close. It never reads a clock: every input carries
//! `now`, and [`Switchboard::poll_timeout`] says when to call
//! [`Switchboard::handle_timeout`] next.
//!
//! Replies come before the notifications a request causes: a client that
//! gets the [`ServerMessage::Ack`] of an invite knows the call id before any
//! `LineBusy` about that call.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use calling_api::{CallId, CallType, EndReason, ErrorCode, UserId};
use tracing::{debug, trace};

use crate::message::{
    ClientMessage, FlowId, MAX_INVITEES, MAX_USER_DATA_LEN, PROTOCOL_VERSION, RequestId,
    ServerMessage,
};

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
}

impl Default for SwitchboardConfig {
    fn default() -> Self {
        Self {
            default_invite_timeout: Duration::from_secs(30),
            max_invite_timeout: Duration::from_secs(600),
            max_call_size: 16,
        }
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
    /// already forgotten it.
    Close {
        /// The connection.
        conn: ConnId,
        /// Why.
        code: ErrorCode,
    },
}

#[derive(Debug)]
struct Session {
    user: UserId,
    muted: bool,
    call: Option<CallId>,
}

#[derive(Debug)]
struct Member {
    flow: FlowId,
}

#[derive(Debug)]
struct Invitation {
    inviter: UserId,
    deadline: Instant,
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

/// How a user leaves a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Departure {
    /// hangup() or logout(): the user is told its call ended.
    Hangup,
    /// A second login took over: the old session is told why.
    Kicked,
    /// The connection is gone: nothing can be told.
    ConnectionLost,
}

/// The server's call logic. See the [module docs](self).
#[derive(Debug)]
pub struct Switchboard {
    config: SwitchboardConfig,
    sessions: HashMap<ConnId, Session>,
    online: HashMap<UserId, ConnId>,
    calls: HashMap<CallId, Call>,
    /// Invitation deadlines, earliest first.
    timers: BTreeSet<(Instant, CallId, UserId)>,
    outputs: VecDeque<Output>,
    next_call: u64,
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
            timers: BTreeSet::new(),
            outputs: VecDeque::new(),
            next_call: 1,
            next_flow: 1,
        }
    }

    /// The rules in force.
    pub fn config(&self) -> &SwitchboardConfig {
        &self.config
    }

    /// Registers an authenticated login of `user` on `conn` and answers it.
    ///
    /// Authentication (UserSig, protocol version) is the glue's job; it calls
    /// this only for logins that passed. A session of the same user on
    /// another connection is kicked: its calls end as a leave, it gets
    /// [`ServerMessage::Kicked`] and is closed.
    pub fn handle_login(&mut self, now: Instant, conn: ConnId, user: UserId) {
        let _ = now;
        if self.sessions.contains_key(&conn) {
            self.send_error(
                conn,
                None,
                ErrorCode::ALREADY_LOGGED_IN,
                "this connection is already logged in",
            );
            return;
        }
        if let Some(old) = self.online.get(&user).copied() {
            debug!(%user, ?old, new = ?conn, "second login kicks the first session");
            self.end_session(old, Departure::Kicked);
            self.send(old, ServerMessage::Kicked);
            self.outputs.push_back(Output::Close {
                conn: old,
                code: ErrorCode::KICKED_OFFLINE,
            });
        }
        self.online.insert(user.clone(), conn);
        self.sessions.insert(
            conn,
            Session {
                user,
                muted: false,
                call: None,
            },
        );
        self.send(
            conn,
            ServerMessage::LoginResult {
                protocol_version: PROTOCOL_VERSION,
                code: ErrorCode::OK,
                message: ErrorCode::OK.message().to_owned(),
            },
        );
    }

    /// Handles one message from a connection.
    pub fn handle_message(&mut self, now: Instant, conn: ConnId, message: ClientMessage) {
        trace!(?conn, ?message, "client message");
        if !self.sessions.contains_key(&conn) {
            let request_id = request_id_of(&message);
            self.send_error(conn, request_id, ErrorCode::NOT_LOGGED_IN, "log in first");
            return;
        }
        match message {
            ClientMessage::Login { .. } => self.send_error(
                conn,
                None,
                ErrorCode::ALREADY_LOGGED_IN,
                "this connection is already logged in",
            ),
            ClientMessage::Logout { request_id } => {
                self.ack(conn, request_id, None);
                self.end_session(conn, Departure::Hangup);
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
                if let Err((code, why)) = self.invite(
                    now, conn, request_id, call_id, user_ids, call_type, timeout_ms, user_data,
                ) {
                    self.send_error(conn, Some(request_id), code, why);
                }
            }
            ClientMessage::Accept {
                request_id,
                call_id,
            } => match self.pending_call_of(conn) {
                Some(pending) if pending == call_id => {
                    self.ack(conn, request_id, Some(call_id));
                    self.join(conn, call_id);
                }
                _ => self.send_error(
                    conn,
                    Some(request_id),
                    ErrorCode::NO_INVITATION,
                    "no pending invitation for that call",
                ),
            },
            ClientMessage::Reject {
                request_id,
                call_id,
            } => match self.pending_call_of(conn) {
                Some(pending) if pending == call_id => {
                    self.ack(conn, request_id, Some(call_id));
                    self.leave(conn, Departure::Hangup);
                }
                _ => self.send_error(
                    conn,
                    Some(request_id),
                    ErrorCode::NO_INVITATION,
                    "no pending invitation for that call",
                ),
            },
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
        }
    }

    /// The connection is gone (closed, timed out, reset): the user's calls
    /// end as a leave and the user goes offline.
    pub fn handle_disconnect(&mut self, now: Instant, conn: ConnId) {
        let _ = now;
        self.end_session(conn, Departure::ConnectionLost);
    }

    /// Expires every invitation whose deadline is at or before `now`: the
    /// inviter gets `NoResponse`, the invitee `InvitationTimedOut`.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(first) = self.timers.first() {
            if first.0 > now {
                break;
            }
            let Some((_, call_id, user)) = self.timers.pop_first() else {
                break;
            };
            let Some(invitation) = self
                .calls
                .get_mut(&call_id)
                .and_then(|call| call.pending.remove(&user))
            else {
                continue;
            };
            debug!(%call_id, %user, "invitation timed out");
            if let Some(conn) = self.online.get(&user).copied() {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.call = None;
                }
                self.send(conn, ServerMessage::InvitationTimedOut { call_id });
            }
            self.tell_inviter(
                call_id,
                &invitation.inviter,
                ServerMessage::NoResponse {
                    call_id,
                    user_id: user,
                },
            );
            self.end_if_nobody_left(call_id, EndReason::NoResponse);
        }
    }

    /// The next time [`Switchboard::handle_timeout`] has work, if any.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.first().map(|timer| timer.0)
    }

    /// The next thing to do, until `None`.
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
            let Some(call) = self.calls.remove(&call_id) else {
                continue;
            };
            for user in call.members.keys() {
                self.send_to_user(
                    user,
                    ServerMessage::CallEnded {
                        call_id,
                        reason: EndReason::ServerShutdown,
                    },
                );
            }
            for user in call.pending.keys() {
                self.send_to_user(user, ServerMessage::Cancelled { call_id });
            }
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

    /// The members of a call, with their flows and connections.
    pub fn members_of(&self, call_id: CallId) -> Vec<(UserId, FlowId, Option<ConnId>)> {
        self.calls.get(&call_id).map_or_else(Vec::new, |call| {
            call.members
                .iter()
                .map(|(user, member)| (user.clone(), member.flow, self.conn_of(user)))
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

    /// Checks every internal invariant; `Err` says which one broke. Cheap
    /// enough for tests and debug assertions, not for every message in
    /// production.
    ///
    /// - every session's call exists and holds the user, as member or invitee;
    /// - every member and invitee of a call is online with that call;
    /// - every call has a member, and one with a single member has invitees
    ///   (a call with nobody left to answer has ended);
    /// - invitation timers and pending invitations match one to one.
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
        let mut pending_total = 0;
        for (call_id, call) in &self.calls {
            if call.members.is_empty() {
                return Err(format!("{call_id} has no member"));
            }
            if call.members.len() == 1 && call.pending.is_empty() {
                return Err(format!("{call_id} has one member and nobody to answer"));
            }
            for user in call.members.keys().chain(call.pending.keys()) {
                let session = self
                    .conn_of(user)
                    .and_then(|conn| self.sessions.get(&conn))
                    .ok_or_else(|| format!("{user} in {call_id} is offline"))?;
                if session.call != Some(*call_id) {
                    return Err(format!(
                        "{user} in {call_id} thinks it is in {:?}",
                        session.call
                    ));
                }
            }
            for (user, invitation) in &call.pending {
                if !self
                    .timers
                    .contains(&(invitation.deadline, *call_id, user.clone()))
                {
                    return Err(format!("{user}'s invitation to {call_id} has no timer"));
                }
            }
            pending_total += call.pending.len();
        }
        if pending_total != self.timers.len() {
            return Err(format!(
                "{} timers for {pending_total} invitations",
                self.timers.len()
            ));
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn invite(
        &mut self,
        now: Instant,
        conn: ConnId,
        request_id: RequestId,
        into_call: Option<CallId>,
        user_ids: Vec<UserId>,
        call_type: CallType,
        timeout_ms: Option<u32>,
        user_data: Option<String>,
    ) -> Result<(), (ErrorCode, &'static str)> {
        let Some(session) = self.sessions.get(&conn) else {
            return Err((ErrorCode::NOT_LOGGED_IN, "log in first"));
        };
        let me = session.user.clone();
        if user_ids.is_empty() || user_ids.len() > MAX_INVITEES {
            return Err((
                ErrorCode::INVALID_PARAMETER,
                "an invite names 1 to 16 users",
            ));
        }
        if user_data
            .as_ref()
            .is_some_and(|data| data.len() > MAX_USER_DATA_LEN)
        {
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
        let mut invitees: Vec<UserId> = Vec::with_capacity(user_ids.len());
        for user in user_ids {
            if user == me {
                return Err((ErrorCode::CANNOT_CALL_SELF, "cannot call yourself"));
            }
            if !invitees.contains(&user) {
                invitees.push(user);
            }
        }
        let timeout = timeout_ms
            .map_or(self.config.default_invite_timeout, |ms| {
                Duration::from_millis(u64::from(ms))
            })
            .min(self.config.max_invite_timeout);

        if into_call.is_some() && self.joined_call_of(conn).map(|(call_id, _)| call_id) != into_call
        {
            return Err((
                ErrorCode::NOT_IN_CALL,
                "that call is over, or you are not in it",
            ));
        }
        let call_id = match session.call {
            Some(call_id) => {
                let call = self
                    .calls
                    .get(&call_id)
                    .ok_or((ErrorCode::INTERNAL, "session points at a missing call"))?;
                if call.members.contains_key(&me) && into_call.is_none() {
                    return Err((
                        ErrorCode::WRONG_CALL_STATE,
                        "already in a call: name it to invite into it",
                    ));
                }
                if call.pending.contains_key(&me) {
                    // Glare: inviting someone of the call that rings you is answering it.
                    if !invitees.iter().any(|user| call.members.contains_key(user)) {
                        return Err((
                            ErrorCode::WRONG_CALL_STATE,
                            "an invitation is ringing: accept or reject it first",
                        ));
                    }
                    debug!(%me, %call_id, "glare: the invite answers the invitation");
                    invitees.retain(|user| !call.contains(user));
                    self.ack(conn, request_id, Some(call_id));
                    self.join(conn, call_id);
                    self.invite_into(now, conn, call_id, invitees, timeout, user_data);
                    return Ok(());
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
                call_id
            }
            None => {
                if 1 + invitees.len() > self.config.max_call_size {
                    return Err((ErrorCode::CALL_FULL, "the call would exceed its size limit"));
                }
                let call_id = CallId(self.next_call);
                self.next_call += 1;
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
                debug!(%me, %call_id, "call created");
                call_id
            }
        };
        self.ack(conn, request_id, Some(call_id));
        self.invite_into(now, conn, call_id, invitees, timeout, user_data);
        Ok(())
    }

    /// Rings each invitee who is free; answers the others busy or absent.
    fn invite_into(
        &mut self,
        now: Instant,
        inviter_conn: ConnId,
        call_id: CallId,
        invitees: Vec<UserId>,
        timeout: Duration,
        user_data: Option<String>,
    ) {
        let Some(inviter) = self.user_of(inviter_conn).cloned() else {
            return;
        };
        let deadline = now + timeout;
        let mut ringing = Vec::new();
        let mut unreachable = Vec::new();
        let mut any_busy = false;
        for user in invitees {
            let Some(session) = self
                .conn_of(&user)
                .and_then(|conn| self.sessions.get_mut(&conn))
            else {
                unreachable.push(ServerMessage::NoResponse {
                    call_id,
                    user_id: user,
                });
                continue;
            };
            if session.call.is_some() {
                any_busy = true;
                unreachable.push(ServerMessage::LineBusy {
                    call_id,
                    user_id: user,
                });
                continue;
            }
            session.call = Some(call_id);
            if let Some(call) = self.calls.get_mut(&call_id) {
                call.pending.insert(
                    user.clone(),
                    Invitation {
                        inviter: inviter.clone(),
                        deadline,
                    },
                );
            }
            self.timers.insert((deadline, call_id, user.clone()));
            ringing.push(user);
        }
        if let Some(call) = self.calls.get(&call_id) {
            let call_type = call.call_type;
            let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
            let everyone: Vec<UserId> = call
                .members
                .keys()
                .chain(call.pending.keys())
                .cloned()
                .collect();
            for user in ringing {
                let others = everyone
                    .iter()
                    .filter(|other| **other != user && **other != inviter)
                    .cloned()
                    .collect();
                self.send_to_user(
                    &user,
                    ServerMessage::Invited {
                        call_id,
                        sponsor: inviter.clone(),
                        user_ids: others,
                        call_type,
                        user_data: user_data.clone(),
                        timeout_ms,
                    },
                );
            }
        }
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

    /// Moves `conn`'s user from the invitees of `call_id` to its members and
    /// introduces everyone.
    fn join(&mut self, conn: ConnId, call_id: CallId) {
        let Some(session) = self.sessions.get(&conn) else {
            return;
        };
        let (me, muted) = (session.user.clone(), session.muted);
        let flow = self.allocate_flow();
        let Some(call) = self.calls.get_mut(&call_id) else {
            return;
        };
        if let Some(invitation) = call.pending.remove(&me) {
            self.timers
                .remove(&(invitation.deadline, call_id, me.clone()));
        }
        let existing: Vec<(UserId, FlowId)> = call
            .members
            .iter()
            .map(|(user, member)| (user.clone(), member.flow))
            .collect();
        call.members.insert(me.clone(), Member { flow });
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
            return;
        };
        if let Some(invitation) = call.pending.remove(&me) {
            self.timers
                .remove(&(invitation.deadline, call_id, me.clone()));
            let (answer, reason) = match departure {
                Departure::Hangup => (
                    ServerMessage::Rejected {
                        call_id,
                        user_id: me,
                    },
                    EndReason::Rejected,
                ),
                Departure::Kicked | Departure::ConnectionLost => (
                    ServerMessage::NoResponse {
                        call_id,
                        user_id: me,
                    },
                    EndReason::NoResponse,
                ),
            };
            self.tell_inviter(call_id, &invitation.inviter, answer);
            self.end_if_nobody_left(call_id, reason);
            return;
        }
        if call.members.remove(&me).is_none() {
            return;
        }
        debug!(%me, %call_id, ?departure, "left");
        let own_reason = match departure {
            Departure::Hangup if call.members.is_empty() => Some(EndReason::Cancelled),
            Departure::Hangup => Some(EndReason::Hangup),
            Departure::Kicked => Some(EndReason::Kicked),
            Departure::ConnectionLost => None,
        };
        if let Some(reason) = own_reason {
            self.send(conn, ServerMessage::CallEnded { call_id, reason });
        }
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        if call.members.is_empty() {
            // Nobody answered yet: leaving cancels every invitation.
            self.cancel_invitations(call_id);
            return;
        }
        let others: Vec<UserId> = call.members.keys().cloned().collect();
        for user in &others {
            self.send_to_user(
                user,
                ServerMessage::UserLeft {
                    call_id,
                    user_id: me.clone(),
                },
            );
        }
        self.end_if_nobody_left(call_id, EndReason::Hangup);
    }

    fn cancel_invitations(&mut self, call_id: CallId) {
        let Some(call) = self.calls.remove(&call_id) else {
            return;
        };
        for (user, invitation) in call.pending {
            self.timers
                .remove(&(invitation.deadline, call_id, user.clone()));
            if let Some(conn) = self.conn_of(&user) {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.call = None;
                }
                self.send(conn, ServerMessage::Cancelled { call_id });
            }
        }
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
        debug!(%call_id, %reason, "call ended");
        if let Some(user) = last {
            if let Some(conn) = self.conn_of(&user) {
                if let Some(session) = self.sessions.get_mut(&conn) {
                    session.call = None;
                }
                self.send(conn, ServerMessage::CallEnded { call_id, reason });
            }
        }
    }

    fn end_session(&mut self, conn: ConnId, departure: Departure) {
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
        let others: Vec<UserId> = self
            .calls
            .get(&call_id)
            .map(|call| {
                call.members
                    .keys()
                    .filter(|user| **user != me)
                    .cloned()
                    .collect()
            })
            .unwrap_or_default();
        for user in others {
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

    fn send_to_user(&mut self, user: &UserId, message: ServerMessage) {
        if let Some(conn) = self.conn_of(user) {
            self.send(conn, message);
        }
    }

    fn send(&mut self, conn: ConnId, message: ServerMessage) {
        self.outputs.push_back(Output::Send { conn, message });
    }
}

fn request_id_of(message: &ClientMessage) -> Option<RequestId> {
    match message {
        ClientMessage::Logout { request_id }
        | ClientMessage::Invite { request_id, .. }
        | ClientMessage::Accept { request_id, .. }
        | ClientMessage::Reject { request_id, .. }
        | ClientMessage::Hangup { request_id } => Some(*request_id),
        ClientMessage::Login { .. }
        | ClientMessage::Microphone { .. }
        | ClientMessage::Ping { .. } => None,
    }
}
