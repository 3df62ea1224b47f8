//! Sessions by connection: logins (one beyond a user's devices, or from a
//! device logged in already, replaces a session), disconnections, the
//! resume of a detached session, and what the glue asks about them.

use super::*;

impl Switchboard {
    /// Registers an authenticated login of `user` on `conn`, speaking
    /// `protocol_version`, and answers it.
    ///
    /// Authentication (UserSig, protocol version) is the glue's job
    /// ([`crate::login::check_login`]); it calls this only for logins that
    /// passed. A login that names no device, under the one-device rule
    /// ([`DeviceLogin::ONE_DEVICE`]): a session of the same user is kicked.
    pub fn handle_login(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        protocol_version: u16,
    ) {
        self.handle_device_login(now, conn, user, protocol_version, DeviceLogin::ONE_DEVICE);
    }

    /// Registers an authenticated login of `user` from a device on `conn`.
    /// The session of the same device, and the user's oldest sessions
    /// beyond its [`DeviceLogin::max_devices`], are kicked: their calls
    /// end as a leave, they get [`ServerMessage::Kicked`] and are closed.
    /// An invitation that rings the user's other devices rings this one
    /// too.
    pub fn handle_device_login(
        &mut self,
        now: Instant,
        conn: ConnId,
        user: UserId,
        protocol_version: u16,
        login: DeviceLogin,
    ) {
        let DeviceLogin {
            device,
            max_devices,
            media_encryption,
        } = login;
        if self.sessions.contains_key(&conn) {
            self.send_error(
                conn,
                None,
                ErrorCode::ALREADY_LOGGED_IN,
                "this connection is already logged in",
            );
            return self.finish_input();
        }
        for old in self.replaced_by_login(&user, device.as_ref(), max_devices) {
            debug!(%user, ?old, new = ?conn, "a login replaces a session");
            self.kick_session(old, Departure::Kicked);
        }
        self.presence.sign_in(user.clone(), conn);
        let per_minute = f64::from(self.config.invitations_per_minute);
        self.sessions.insert(
            conn,
            Session {
                user,
                device,
                protocol_version,
                detached: false,
                muted: false,
                call: None,
                invitation_budget: TokenBucket::new(per_minute / 60.0, per_minute),
                ringing_out: 0,
                congested: false,
                encryption: media_encryption,
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

    /// The sessions a login of `user` from `device` replaces: the same
    /// device's, then the oldest until the new one fits in `max_devices`.
    pub(super) fn replaced_by_login(
        &self,
        user: &UserId,
        device: Option<&DeviceId>,
        max_devices: usize,
    ) -> Vec<ConnId> {
        let (mut replaced, kept): (Vec<ConnId>, Vec<ConnId>) =
            self.presence.sessions_of(user).iter().partition(|conn| {
                device.is_some()
                    && self
                        .sessions
                        .get(conn)
                        .is_some_and(|session| session.device.as_ref() == device)
            });
        let allowed = max_devices.max(1);
        let excess = (kept.len() + 1).saturating_sub(allowed);
        replaced.extend(kept.into_iter().take(excess));
        replaced
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

    /// An invitation that rang `conn`'s user while it was offline, or that
    /// rings its other devices, rings its new session too, for what is
    /// left of its timeout.
    pub(super) fn deliver_waiting_invitation(&mut self, now: Instant, conn: ConnId) {
        let Some(user) = self.user_of(conn).cloned() else {
            return;
        };
        let waiting_offline = self.offline_invited.get(&user).copied();
        let call_id = match waiting_offline {
            Some(call_id) => call_id,
            None => {
                let rung_elsewhere = self.presence.sessions_of(&user).iter().find_map(|other| {
                    let other = self.sessions.get(other)?;
                    let call_id = other.call?;
                    self.calls
                        .get(&call_id)?
                        .pending
                        .contains_key(&user)
                        .then_some(call_id)
                });
                let Some(call_id) = rung_elsewhere else {
                    return;
                };
                call_id
            }
        };
        let Some(call) = self.calls.get(&call_id) else {
            return bug("a waiting invitation outlived its call");
        };
        if call.encryption != self.encryption_of(conn) {
            debug!(%user, %call_id, "a waiting invitation does not ring a device that encrypts otherwise");
            if waiting_offline.is_some() {
                // Nowhere left to ring: it ends as one nobody answered.
                self.timers.cancel(&Timer::Invitation {
                    call_id,
                    invitee: user.clone(),
                });
                self.expire_invitation(call_id, user);
            }
            return;
        }
        self.offline_invited.remove(&user);
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        let Some(invitation) = call.pending.get(&user) else {
            return bug("a waiting invitation is not pending in its call");
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
        debug!(%user, %call_id, ?left, "a waiting invitation rings a new session");
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
            .filter_map(|user| self.member_conn(call_id, user))
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
                device: session.device.clone(),
                protocol_version: session.protocol_version,
                reconnecting: session.detached,
                call: session.call,
            })
            .collect();
        sessions.sort_by(|a, b| (&a.user, &a.device).cmp(&(&b.user, &b.device)));
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

    /// The connections `user` is logged in on, oldest login first.
    pub fn sessions_of(&self, user: &UserId) -> &[ConnId] {
        self.presence.sessions_of(user)
    }

    /// The connection of the device `user` is in `call_id` on.
    pub fn member_conn(&self, call_id: CallId, user: &UserId) -> Option<ConnId> {
        let conn = self.calls.get(&call_id)?.members.get(user)?.conn;
        self.sessions.contains_key(&conn).then_some(conn)
    }

    /// The devices of `user` that the invitation to `call_id` rings.
    pub(super) fn ringing_conns(&self, call_id: CallId, user: &UserId) -> Vec<ConnId> {
        let pending = self
            .calls
            .get(&call_id)
            .is_some_and(|call| call.pending.contains_key(user));
        if !pending {
            return Vec::new();
        }
        self.devices_pointing_at(call_id, user)
    }

    /// The devices of `user` whose session points at `call_id` (rung by
    /// it, or the one in it).
    pub(super) fn devices_pointing_at(&self, call_id: CallId, user: &UserId) -> Vec<ConnId> {
        self.presence
            .sessions_of(user)
            .iter()
            .copied()
            .filter(|conn| {
                self.sessions
                    .get(conn)
                    .is_some_and(|session| session.call == Some(call_id))
            })
            .collect()
    }

    /// The call `conn` has entered, with its user's flow id in it
    /// (invitations not yet answered do not count, nor the call its user
    /// is in on another device).
    pub fn joined_call_of(&self, conn: ConnId) -> Option<(CallId, FlowId)> {
        let session = self.sessions.get(&conn)?;
        let call_id = session.call?;
        let member = self.calls.get(&call_id)?.members.get(&session.user)?;
        (member.conn == conn).then_some((call_id, member.flow))
    }

    /// How many users are logged in.
    pub fn online_count(&self) -> usize {
        self.presence.count()
    }

    /// How many sessions there are, every device of every user counted.
    pub fn session_count(&self) -> usize {
        self.presence.session_count()
    }

    pub(super) fn end_session(&mut self, conn: ConnId, departure: Departure) {
        self.timers.cancel(&Timer::ResumeGrace { conn });
        self.leave(conn, departure);
        if let Some(session) = self.sessions.remove(&conn) {
            self.presence.sign_out(&session.user, conn);
        }
    }
}
