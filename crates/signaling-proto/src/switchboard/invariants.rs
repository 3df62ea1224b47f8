//! The switchboard's invariants, checked after every input in debug builds.

use super::*;

impl Switchboard {
    /// Checks every internal invariant; `Err` says which one broke. Cheap
    /// enough for tests and debug assertions, not for every message in
    /// production.
    ///
    /// - every session's call exists and holds the user, as an invitee or
    ///   as a member on that very device;
    /// - a user's devices point at one call at most;
    /// - every member of a call is a session in it, every invitee is
    ///   rung on a device or waits offline;
    /// - every call has a member, and one with a single member has invitees
    ///   (a call with nobody left to answer has ended);
    /// - invitation timers and pending invitations match one to one, and
    ///   grace timers and detached sessions;
    /// - no session counts more ringing invitations than it has ringing;
    /// - no membership change is left unpublished between inputs.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_sessions()?;
        if self.presence.session_count() != self.sessions.len() {
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
            for (user, member) in &call.members {
                let Some(session) = self.sessions.get(&member.conn) else {
                    return Err(format!("{user} in {call_id} is offline"));
                };
                if session.call != Some(*call_id) || session.user != *user {
                    return Err(format!(
                        "{user} in {call_id} thinks it is in {:?}",
                        session.call
                    ));
                }
            }
            for user in call.pending.keys() {
                let waits_offline = self.offline_invited.get(user) == Some(call_id);
                if !waits_offline && self.ringing_conns(*call_id, user).is_empty() {
                    return Err(format!("{user}'s invitation to {call_id} rings nowhere"));
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
        for (conn, session) in &self.sessions {
            let sent = self
                .calls
                .values()
                .flat_map(|call| call.pending.values())
                .filter(|invitation| invitation.inviter_conn == *conn)
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

    /// Every session is online, and the call it points at holds it there:
    /// as an invitee, or as a member on that very device; a user's devices
    /// point at one call at most.
    fn check_sessions(&self) -> Result<(), String> {
        for (conn, session) in &self.sessions {
            if !self.presence.is_session(&session.user, *conn) {
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
                let rung = call.pending.contains_key(&session.user);
                let entered_here = call
                    .members
                    .get(&session.user)
                    .is_some_and(|member| member.conn == *conn);
                if !rung && !entered_here {
                    return Err(format!(
                        "{} on {conn:?} points at {call_id} which lacks it there",
                        session.user
                    ));
                }
                let elsewhere = self
                    .presence
                    .sessions_of(&session.user)
                    .iter()
                    .find(|other| {
                        self.sessions
                            .get(other)
                            .and_then(|other| other.call)
                            .is_some_and(|other_call| other_call != call_id)
                    });
                if let Some(other) = elsewhere {
                    return Err(format!(
                        "{} is in {call_id} on {conn:?} and another call on {other:?}",
                        session.user
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every offline invitation is pending in its call, for a user who is
    /// not online.
    pub(super) fn check_offline_invitations(&self) -> Result<(), String> {
        for (user, call_id) in &self.offline_invited {
            if self.presence.is_online(user) {
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
}
