//! Invitations: the checks and limits of an invite, ringing online and
//! offline invitees, their answers, time-outs and cancellations.

use super::*;

impl Switchboard {
    pub(super) fn expire_invitation(&mut self, call_id: CallId, invitee: UserId) {
        let Some(invitation) = self
            .calls
            .get_mut(&call_id)
            .and_then(|call| call.pending.remove(&invitee))
        else {
            return bug("an invitation timer outlived its invitation");
        };
        self.invitation_over(invitation.inviter_conn);
        self.forget_offline_invitation(&invitee, call_id);
        self.event(CallEvent::InvitationEnded {
            call_id,
            inviter: invitation.inviter.clone(),
            invitee: invitee.clone(),
            outcome: InvitationOutcome::TimedOut,
            offline: invitation.offline,
        });
        debug!(%call_id, %invitee, "invitation timed out");
        self.stop_ringing(
            call_id,
            &invitee,
            ServerMessage::InvitationTimedOut { call_id },
        );
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

    pub(super) fn invite(
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
        if self.busy_on_another_device(conn) {
            return Err((
                ErrorCode::WRONG_CALL_STATE,
                "you are in a call on another device",
            ));
        }
        let encryption = self
            .sessions
            .get(&conn)
            .and_then(|session| self.calls.get(&session.call?))
            .map_or_else(|| self.encryption_of(conn), |call| call.encryption);
        self.check_encryption(encryption, &invitees)?;
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
    pub(super) fn check_invitation_limits(
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

    /// An invitation sent from `inviter_conn` stopped ringing (answered,
    /// timed out, cancelled, or its invitee gone).
    pub(super) fn invitation_over(&mut self, inviter_conn: ConnId) {
        if let Some(session) = self.sessions.get_mut(&inviter_conn) {
            session.ringing_out = session.ringing_out.saturating_sub(1);
        }
    }

    /// Whether another device of `conn`'s user is in a call or rung by one
    /// that does not ring `conn`: a user is in one call at a time.
    pub(super) fn busy_on_another_device(&self, conn: ConnId) -> bool {
        let Some(session) = self.sessions.get(&conn) else {
            return false;
        };
        self.presence
            .sessions_of(&session.user)
            .iter()
            .any(|other| {
                *other != conn
                    && self
                        .sessions
                        .get(other)
                        .and_then(|other| other.call)
                        .is_some_and(|call| Some(call) != session.call)
            })
    }

    /// Ends the ringing of `invitee`'s devices for `call_id` with `message`
    /// (`Cancelled`, `InvitationTimedOut`); the invitation is no longer
    /// pending.
    pub(super) fn stop_ringing(
        &mut self,
        call_id: CallId,
        invitee: &UserId,
        message: ServerMessage,
    ) {
        let ringing = self.devices_pointing_at(call_id, invitee);
        if ringing.is_empty() {
            return self.unrouted(invitee, message);
        }
        for conn in ringing {
            if let Some(session) = self.sessions.get_mut(&conn) {
                session.call = None;
            }
            self.send(conn, message.clone());
        }
    }

    /// Whether `me`, whose session is in `call_id`, may invite `invitees`
    /// (call type, size, nobody already in it). `Ok(true)` for glare: the
    /// call rings `me` and an invitee is in it, so the invite answers it;
    /// `invitees` then keeps only those not in the call yet.
    pub(super) fn check_invite_from(
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

    /// Rings each invitee who is free (or offline, when offline invitees
    /// ring); answers the others busy or absent.
    pub(super) fn ring(&mut self, now: Instant, ringing: Ringing) {
        let Ringing {
            inviter_conn,
            inviter,
            call_id,
            invitees,
            timeout,
            user_data,
        } = ringing;
        let deadline = now + timeout;
        let Some(encryption) = self.calls.get(&call_id).map(|call| call.encryption) else {
            return bug("ringing into a missing call");
        };
        let mut rung = Vec::new();
        let mut waiting = Vec::new();
        let mut unreachable = Vec::new();
        let mut any_busy = false;
        for user in invitees {
            let online = self.presence.is_online(&user);
            let offline = match self.availability(&user, encryption) {
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
                        offline: !online,
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
                    inviter_conn,
                    user_data: user_data.clone(),
                    offline,
                },
            );
            if offline {
                debug!(%user, %call_id, "invitee offline: the invitation waits for it");
                self.offline_invited.insert(user.clone(), call_id);
            } else {
                self.ring_devices(&user, call_id, encryption);
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
            if offline {
                waiting.push(user);
            } else {
                rung.push(user);
            }
        }
        self.send_invitations(call_id, &inviter, rung, timeout, user_data.as_ref());
        for message in unreachable {
            self.send(inviter_conn, message);
        }
        self.tell_waiting(inviter_conn, call_id, waiting);
        let reason = if any_busy {
            EndReason::LineBusy
        } else {
            EndReason::NoResponse
        };
        self.end_if_nobody_left(call_id, reason);
    }

    /// Every device of `user` that keeps up with its messages and
    /// encrypts as the call does rings.
    fn ring_devices(&mut self, user: &UserId, call_id: CallId, encryption: MediaEncryption) {
        for conn in self.presence.sessions_of(user).to_vec() {
            if let Some(session) = self.sessions.get_mut(&conn)
                && !session.congested
                && session.encryption == encryption
            {
                session.call = Some(call_id);
            }
        }
    }

    /// Tells a version-4 inviter which invitees are offline, their
    /// invitations waiting for them.
    fn tell_waiting(&mut self, inviter_conn: ConnId, call_id: CallId, waiting: Vec<UserId>) {
        let inviter_version = self
            .sessions
            .get(&inviter_conn)
            .map_or(0, |session| session.protocol_version);
        if inviter_version >= 4 {
            for user_id in waiting {
                self.send(
                    inviter_conn,
                    ServerMessage::InviteeOffline { call_id, user_id },
                );
            }
        }
    }

    /// Tells each of `rung` that `inviter` invites it into `call_id`.
    pub(super) fn send_invitations(
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
            self.send_to_invitee(
                call_id,
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

    /// Whether `user` may ring now for a call that encrypts as
    /// `encryption`: `Ok(offline)`, or why not. Busy: in a call or ringing
    /// on any device, or no device that encrypts alike keeps up with its
    /// messages.
    pub(super) fn availability(
        &mut self,
        user: &UserId,
        encryption: MediaEncryption,
    ) -> Result<bool, InvitationOutcome> {
        let sessions: Vec<&Session> = self
            .presence
            .sessions_of(user)
            .iter()
            .filter_map(|conn| self.sessions.get(conn))
            .collect();
        if sessions.is_empty() {
            return if self.offline_invited.contains_key(user) {
                Err(InvitationOutcome::Busy)
            } else if self.config.ring_offline_invitees {
                Ok(true)
            } else {
                Err(InvitationOutcome::NoResponse)
            };
        }
        if sessions.iter().any(|session| session.call.is_some()) {
            return Err(InvitationOutcome::Busy);
        }
        if sessions
            .iter()
            .filter(|session| session.encryption == encryption)
            .all(|session| session.congested)
        {
            self.counters.invitees_congested += 1;
            return Err(InvitationOutcome::Busy);
        }
        Ok(false)
    }

    /// Ends a call nobody answered yet: its invitations are cancelled.
    pub(super) fn cancel_invitations(&mut self, call_id: CallId, reason: EndReason) {
        let Some(call) = self.calls.remove(&call_id) else {
            return bug("cancelling the invitations of a missing call");
        };
        self.membership_changed.insert(call_id);
        self.cancel_pending(call_id, call.pending);
        self.event(CallEvent::Ended { call_id, reason });
    }

    /// Stops every invitation of an ended call: its invitees get `Cancelled`.
    pub(super) fn cancel_pending(
        &mut self,
        call_id: CallId,
        pending: BTreeMap<UserId, Invitation>,
    ) {
        for (user, invitation) in pending {
            self.timers.cancel(&Timer::Invitation {
                call_id,
                invitee: user.clone(),
            });
            self.invitation_over(invitation.inviter_conn);
            self.forget_offline_invitation(&user, call_id);
            self.stop_ringing(call_id, &user, ServerMessage::Cancelled { call_id });
            self.event(CallEvent::InvitationEnded {
                call_id,
                inviter: invitation.inviter,
                invitee: user,
                outcome: InvitationOutcome::Cancelled,
                offline: invitation.offline,
            });
        }
    }

    /// `user` logged in, or the invitation to `call_id` ended: it no
    /// longer waits for `user` offline.
    pub(super) fn forget_offline_invitation(&mut self, user: &UserId, call_id: CallId) {
        if self.offline_invited.get(user) == Some(&call_id) {
            self.offline_invited.remove(user);
        }
    }

    /// The call that rings `conn`'s user, if one does.
    pub(super) fn pending_call_of(&self, conn: ConnId) -> Option<CallId> {
        let session = self.sessions.get(&conn)?;
        let call_id = session.call?;
        self.calls
            .get(&call_id)?
            .pending
            .contains_key(&session.user)
            .then_some(call_id)
    }

    /// Answers about an invitation go to whoever sent it, if still in the call.
    pub(super) fn tell_inviter(
        &mut self,
        call_id: CallId,
        inviter: &UserId,
        message: ServerMessage,
    ) {
        let still_member = self
            .calls
            .get(&call_id)
            .is_some_and(|call| call.members.contains_key(inviter));
        if still_member {
            self.send_to_member(call_id, inviter, message);
        }
    }

    pub(super) fn refuse_no_invitation(&mut self, conn: ConnId, request_id: RequestId) {
        self.send_error(
            conn,
            Some(request_id),
            ErrorCode::NO_INVITATION,
            "no pending invitation for that call",
        );
    }
}
