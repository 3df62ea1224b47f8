//! Restoring sessions and calls that another switchboard held (a new
//! control node in a cluster takes over its predecessor's books).

use super::*;

impl Switchboard {
    /// Rebuilds sessions and calls another switchboard held (a cluster's
    /// control that died or stepped down; see `calling-cluster`), as their
    /// nodes report them. Sessions come back without a word to their
    /// clients (a session already here that the session's login would
    /// replace is kicked, as by that login). A
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
        self.sessions.reserve(sessions.len());
        self.presence.reserve(sessions.len());
        for restored in sessions {
            if self.sessions.contains_key(&restored.conn) {
                bug("a restored connection is already a session");
                continue;
            }
            let DeviceLogin {
                device,
                max_devices,
                media_encryption,
            } = restored.device_login;
            for old in self.replaced_by_login(&restored.user, device.as_ref(), max_devices) {
                self.kick_session(old, Departure::Kicked);
            }
            if let Some(call) = &restored.call {
                let entry = calls
                    .entry(call.call_id)
                    .or_insert_with(|| (call.call_type, Vec::new(), BTreeSet::new()));
                entry
                    .1
                    .push((restored.user.clone(), call.flow, restored.conn));
                entry.2.extend(call.members.iter().cloned());
                self.next_flow = self.next_flow.max(call.flow.0.saturating_add(1));
            }
            self.presence.sign_in(restored.user.clone(), restored.conn);
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
                    device,
                    protocol_version: restored.protocol_version,
                    detached,
                    muted: restored.muted,
                    call: None,
                    invitation_budget: TokenBucket::new(per_minute / 60.0, per_minute),
                    ringing_out: 0,
                    congested: false,
                    encryption: media_encryption,
                },
            );
        }
        for (call_id, (call_type, present, known)) in calls {
            self.restore_call(call_id, call_type, present, &known);
        }
        self.finish_input();
    }

    pub(super) fn restore_call(
        &mut self,
        call_id: CallId,
        call_type: CallType,
        present: Vec<(UserId, FlowId, ConnId)>,
        known: &BTreeSet<UserId>,
    ) {
        let mut seen = BTreeSet::new();
        // A user is in a call once: a second device claiming it is not.
        let present: Vec<(UserId, FlowId, ConnId)> = present
            .into_iter()
            .filter(|(user, _, conn)| self.sessions.contains_key(conn) && seen.insert(user.clone()))
            .collect();
        if self.calls.contains_key(&call_id) {
            bug("a restored call exists already");
            return;
        }
        if present.len() < 2 {
            // Whoever else was in it is gone with the old switchboard.
            for (_, _, conn) in present {
                let ended = ServerMessage::CallEnded {
                    call_id,
                    reason: EndReason::ConnectionLost,
                };
                self.send(conn, ended);
            }
            self.membership_changed.insert(call_id);
            return;
        }
        let members: BTreeMap<UserId, Member> = present
            .iter()
            .map(|(user, flow, conn)| {
                let member = Member {
                    flow: *flow,
                    conn: *conn,
                };
                (user.clone(), member)
            })
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
        for (user, _, conn) in &present {
            self.event(CallEvent::Joined {
                call_id,
                user: user.clone(),
                device: self.device_of(*conn),
            });
            if let Some(session) = self.sessions.get_mut(conn) {
                session.call = Some(call_id);
            }
        }
        // Its members encrypt alike: they could not have met otherwise.
        let encryption = self
            .sessions
            .get(&present[0].2)
            .map_or(MediaEncryption::None, |session| session.encryption);
        self.calls.insert(
            call_id,
            Call {
                call_type,
                encryption,
                members,
                pending: BTreeMap::new(),
            },
        );
        for (_, _, conn) in &present {
            let conn = *conn;
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
}
