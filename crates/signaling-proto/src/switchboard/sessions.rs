//! Sessions by connection: logins (a second login of a user replaces the
//! first), disconnections, the resume of a detached session, and what the
//! glue asks about them.

use super::*;

impl Switchboard {
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
        if let Some(old) = self.presence.replaced_by_login(&user) {
            debug!(%user, ?old, new = ?conn, "second login kicks the first session");
            self.kick_session(old, Departure::Kicked);
        }
        self.presence.sign_in(user.clone(), conn);
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
    pub(super) fn kick_session(&mut self, conn: ConnId, departure: Departure) {
        let version = self
            .sessions
            .get(&conn)
            .map_or(PROTOCOL_VERSION, |session| session.protocol_version);
        self.end_session(conn, departure);
        let code = if departure == Departure::LoggedOutByOperator && version >= 4 {
            let code = ErrorCode::LOGGED_OUT_BY_OPERATOR;
            self.send(
                conn,
                ServerMessage::Error {
                    request_id: None,
                    code,
                    message: code.message().to_owned(),
                },
            );
            code
        } else {
            self.send(conn, ServerMessage::Kicked);
            ErrorCode::KICKED_OFFLINE
        };
        self.outputs.push_back(Output::Close { conn, code });
    }

    /// An invitation that rang `conn`'s user while it was offline rings
    /// its new session, for what is left of its timeout.
    pub(super) fn deliver_waiting_invitation(&mut self, now: Instant, conn: ConnId) {
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
    pub(super) fn tell_connection(&mut self, conn: ConnId, connected: bool) {
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
        self.presence.session_of(user)
    }

    /// The call `conn`'s user has entered, with the user's flow id in it
    /// (invitations not yet answered do not count).
    pub fn joined_call_of(&self, conn: ConnId) -> Option<(CallId, FlowId)> {
        let session = self.sessions.get(&conn)?;
        let call_id = session.call?;
        let member = self.calls.get(&call_id)?.members.get(&session.user)?;
        Some((call_id, member.flow))
    }

    /// How many users are logged in.
    pub fn online_count(&self) -> usize {
        self.presence.count()
    }

    pub(super) fn end_session(&mut self, conn: ConnId, departure: Departure) {
        self.timers.cancel(&Timer::ResumeGrace { conn });
        self.leave(conn, departure);
        if let Some(session) = self.sessions.remove(&conn) {
            self.presence.sign_out(&session.user, conn);
        }
    }
}
