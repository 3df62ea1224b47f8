//! Calls: opening one, members joining and leaving, ending, and the
//! operator's controls (end a call, kick a user, hold new calls, shut down).

use super::*;

impl Switchboard {
    /// A call's type, while it exists.
    pub fn call_type(&self, call_id: CallId) -> Option<CallType> {
        self.calls.get(&call_id).map(|call| call.call_type)
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
        self.presence.clear();
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

    /// The operator logs `user` out on every device: as if it had logged
    /// in elsewhere (it gets `Kicked`, its call goes on without it, its
    /// connections close, waiting sessions too). `false` if it is not
    /// logged in.
    pub fn kick(&mut self, now: Instant, user: &UserId) -> bool {
        let _ = now;
        let sessions = self.presence.sessions_of(user).to_vec();
        debug!(%user, devices = sessions.len(), "logged out by the operator");
        for conn in &sessions {
            self.kick_session(*conn, Departure::LoggedOutByOperator);
        }
        self.finish_input();
        !sessions.is_empty()
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

    /// How many calls have each number of entered members.
    pub fn call_sizes(&self) -> BTreeMap<usize, usize> {
        let mut sizes = BTreeMap::new();
        for call in self.calls.values() {
            *sizes.entry(call.members.len()).or_insert(0) += 1;
        }
        sizes
    }

    /// The members who have entered a call, sorted by user.
    pub fn members_of(&self, call_id: CallId) -> Vec<CallMember> {
        self.calls.get(&call_id).map_or_else(Vec::new, |call| {
            call.members
                .iter()
                .filter(|(_, member)| self.sessions.contains_key(&member.conn))
                .map(|(user, member)| CallMember {
                    user: user.clone(),
                    flow: member.flow,
                    conn: member.conn,
                })
                .collect()
        })
    }

    /// How many calls exist (ringing or connected).
    pub fn call_count(&self) -> usize {
        self.calls.len()
    }

    /// What the limits refused so far.
    pub fn counters(&self) -> SwitchboardCounters {
        self.counters
    }

    /// A new call with `me` (on `conn`) as its only member, room permitting.
    pub(super) fn open_call(
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
        let encryption = self.encryption_of(conn);
        self.calls.insert(
            call_id,
            Call {
                call_type,
                encryption,
                members: BTreeMap::from([(me.clone(), Member { flow, conn })]),
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
            device: self.device_of(conn),
        });
        Ok(call_id)
    }

    /// Moves `conn`'s user from the invitees of `call_id` to its members and
    /// introduces everyone.
    pub(super) fn join(&mut self, conn: ConnId, call_id: CallId) {
        let Some(session) = self.sessions.get(&conn) else {
            return bug("joining without a session");
        };
        let (me, muted) = (session.user.clone(), session.muted);
        let others_ringing = self.ringing_elsewhere(conn, call_id);
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
        call.members.insert(me.clone(), Member { flow, conn });
        self.membership_changed.insert(call_id);
        for other in others_ringing {
            self.stop_ringing_elsewhere(other, call_id, ElsewhereAnswer::Answered);
        }
        if let Some(invitation) = answered {
            self.invitation_over(invitation.inviter_conn);
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
            device: self.device_of(conn),
        });
        debug!(%me, %call_id, "entered");
        for (user, user_flow) in existing {
            self.send_to_member(
                call_id,
                &user,
                ServerMessage::UserEntered {
                    call_id,
                    user_id: me.clone(),
                    flow_id: flow,
                    audio_available: !muted,
                },
            );
            let user_muted = self
                .member_conn(call_id, &user)
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
    pub(super) fn leave(&mut self, conn: ConnId, departure: Departure) {
        let Some(session) = self.sessions.get_mut(&conn) else {
            return;
        };
        let Some(call_id) = session.call.take() else {
            return;
        };
        let me = session.user.clone();
        let Some(pending) = self
            .calls
            .get(&call_id)
            .map(|call| call.pending.contains_key(&me))
        else {
            return bug("a session was in a missing call");
        };
        if pending {
            return self.leave_invitation(conn, me, call_id, departure);
        }
        let Some(call) = self.calls.get_mut(&call_id) else {
            return bug("a session was in a missing call");
        };
        if call
            .members
            .get(&me)
            .is_none_or(|member| member.conn != conn)
        {
            return bug("a session's call holds it neither as member nor invitee");
        }
        call.members.remove(&me);
        self.membership_changed.insert(call_id);
        debug!(%me, %call_id, ?departure, "left");
        let nobody_entered = call.members.is_empty();
        let own_reason = match departure {
            Departure::Hangup | Departure::Logout if nobody_entered => Some(EndReason::Cancelled),
            Departure::Hangup | Departure::Logout => Some(EndReason::Hangup),
            Departure::Kicked => Some(EndReason::Kicked),
            Departure::LoggedOutByOperator => Some(EndReason::LoggedOutByOperator),
            Departure::ConnectionLost => None,
        };
        let others: Vec<UserId> = call.members.keys().cloned().collect();
        if let Some(reason) = own_reason {
            let version = self
                .sessions
                .get(&conn)
                .map_or(PROTOCOL_VERSION, |session| session.protocol_version);
            let reason = reason_for(version, reason);
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
            self.send_to_member(
                call_id,
                user,
                ServerMessage::UserLeft {
                    call_id,
                    user_id: me.clone(),
                },
            );
        }
        self.end_if_nobody_left(call_id, reason_for_the_last);
    }

    /// `conn`'s device stops ringing for `call_id`: a reject declines for
    /// every device of `me`; any other departure ends the invitation only
    /// if no other device of `me` still rings.
    fn leave_invitation(
        &mut self,
        conn: ConnId,
        me: UserId,
        call_id: CallId,
        departure: Departure,
    ) {
        let others_ringing = self.ringing_elsewhere(conn, call_id);
        if departure == Departure::Hangup {
            // A reject on one device declines for all.
            for other in others_ringing {
                self.stop_ringing_elsewhere(other, call_id, ElsewhereAnswer::Declined);
            }
        } else if !others_ringing.is_empty() {
            debug!(%me, %call_id, ?conn, "one device gone: the others still ring");
            return;
        }
        let Some(invitation) = self
            .calls
            .get_mut(&call_id)
            .and_then(|call| call.pending.remove(&me))
        else {
            return bug("a pending invitation vanished");
        };
        self.timers.cancel(&Timer::Invitation {
            call_id,
            invitee: me.clone(),
        });
        self.invitation_over(invitation.inviter_conn);
        let outcome = match departure {
            Departure::Hangup => InvitationOutcome::Rejected,
            Departure::Logout
            | Departure::Kicked
            | Departure::LoggedOutByOperator
            | Departure::ConnectionLost => InvitationOutcome::NoResponse,
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
    }

    /// Ends `call_id` for everyone at once, with `reason` (shutdown, the
    /// operator). `false` if there is no such call.
    pub(super) fn end_call_now(&mut self, call_id: CallId, reason: EndReason) -> bool {
        let Some(call) = self.calls.remove(&call_id) else {
            return false;
        };
        self.membership_changed.insert(call_id);
        debug!(%call_id, %reason, "call ended at once");
        self.cancel_pending(call_id, call.pending);
        for (user, member) in call.members {
            match self.sessions.get_mut(&member.conn) {
                Some(session) => {
                    session.call = None;
                    let told = reason_for(session.protocol_version, reason);
                    let ended = ServerMessage::CallEnded {
                        call_id,
                        reason: told,
                    };
                    self.send(member.conn, ended);
                }
                None => self.unrouted(&user, ServerMessage::CallEnded { call_id, reason }),
            }
            self.event(CallEvent::Left {
                call_id,
                user,
                reason,
            });
        }
        self.event(CallEvent::Ended { call_id, reason });
        true
    }

    /// A call with one member and nobody left to answer is over for that member.
    pub(super) fn end_if_nobody_left(&mut self, call_id: CallId, reason: EndReason) {
        let Some(call) = self.calls.get(&call_id) else {
            return;
        };
        if call.members.len() > 1 || !call.pending.is_empty() {
            return;
        }
        let last = call
            .members
            .iter()
            .next()
            .map(|(user, member)| (user.clone(), member.conn));
        self.calls.remove(&call_id);
        self.membership_changed.insert(call_id);
        debug!(%call_id, %reason, "call ended");
        if let Some((user, conn)) = last {
            self.event(CallEvent::Left {
                call_id,
                user: user.clone(),
                reason,
            });
            let ended = ServerMessage::CallEnded { call_id, reason };
            match self.sessions.get_mut(&conn) {
                Some(session) => {
                    session.call = None;
                    self.send(conn, ended);
                }
                None => self.unrouted(&user, ended),
            }
        }
        self.event(CallEvent::Ended { call_id, reason });
    }

    pub(super) fn set_microphone(&mut self, conn: ConnId, muted: bool) {
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
            self.send_to_member(
                call_id,
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
    pub(super) fn other_members(&self, call_id: CallId, me: &UserId) -> Vec<UserId> {
        self.calls.get(&call_id).map_or_else(Vec::new, |call| {
            call.members
                .keys()
                .filter(|user| *user != me)
                .cloned()
                .collect()
        })
    }

    /// The other devices of `conn`'s user that the invitation to
    /// `call_id` rings.
    pub(super) fn ringing_elsewhere(&self, conn: ConnId, call_id: CallId) -> Vec<ConnId> {
        let Some(user) = self.user_of(conn) else {
            return Vec::new();
        };
        let mut ringing = self.ringing_conns(call_id, user);
        ringing.retain(|other| *other != conn);
        ringing
    }

    /// The device `conn`'s session named at login.
    pub(super) fn device_of(&self, conn: ConnId) -> Option<DeviceId> {
        self.sessions.get(&conn)?.device.clone()
    }

    pub(super) fn allocate_flow(&mut self) -> FlowId {
        let flow = FlowId(self.next_flow);
        self.next_flow = self.next_flow.wrapping_add(1).max(1);
        flow
    }
}
