//! Who is online, and on which connections: every question "where is this
//! user" is answered here. A user may be logged in on several devices at
//! once (up to [`DeviceLogin::max_devices`], one by default: then a second
//! login replaces the first, the calling component's rule); their sessions
//! are kept oldest login first, the order in which a login beyond the
//! limit replaces them.
//!
//! [`DeviceLogin::max_devices`]: super::DeviceLogin::max_devices

use std::collections::HashMap;

use calling_api::UserId;

use super::ConnId;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(super) struct Presence {
    sessions_by_user: HashMap<UserId, Vec<ConnId>>,
    session_count: usize,
}

impl Presence {
    /// Room for `more` users at once (a takeover's sessions).
    pub(super) fn reserve(&mut self, more: usize) {
        self.sessions_by_user.reserve(more);
    }

    /// `user` is online on `conn` too, as its newest session.
    pub(super) fn sign_in(&mut self, user: UserId, conn: ConnId) {
        self.sessions_by_user.entry(user).or_default().push(conn);
        self.session_count += 1;
    }

    /// `user`'s session on `conn` ended; its other sessions stay.
    pub(super) fn sign_out(&mut self, user: &UserId, conn: ConnId) {
        let Some(sessions) = self.sessions_by_user.get_mut(user) else {
            return;
        };
        let before = sessions.len();
        sessions.retain(|session| *session != conn);
        self.session_count -= before - sessions.len();
        if sessions.is_empty() {
            self.sessions_by_user.remove(user);
        }
    }

    /// The connections `user` is online on, oldest login first.
    pub(super) fn sessions_of(&self, user: &UserId) -> &[ConnId] {
        self.sessions_by_user.get(user).map_or(&[], Vec::as_slice)
    }

    /// Whether `conn` is one of `user`'s sessions.
    pub(super) fn is_session(&self, user: &UserId, conn: ConnId) -> bool {
        self.sessions_of(user).contains(&conn)
    }

    /// Whether `user` has a session.
    pub(super) fn is_online(&self, user: &UserId) -> bool {
        self.sessions_by_user.contains_key(user)
    }

    /// How many users are online.
    pub(super) fn count(&self) -> usize {
        self.sessions_by_user.len()
    }

    /// How many sessions there are, every device counted.
    pub(super) fn session_count(&self) -> usize {
        self.session_count
    }

    /// Everyone signed out at once (shutdown).
    pub(super) fn clear(&mut self) {
        self.sessions_by_user.clear();
        self.session_count = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_are_kept_oldest_first_and_end_one_by_one() {
        let alice = UserId::new("alice").unwrap();
        let mut presence = Presence::default();
        assert!(presence.sessions_of(&alice).is_empty());
        presence.sign_in(alice.clone(), ConnId(1));
        presence.sign_in(alice.clone(), ConnId(2));
        assert_eq!(presence.sessions_of(&alice), [ConnId(1), ConnId(2)]);
        assert_eq!((presence.count(), presence.session_count()), (1, 2));
        presence.sign_out(&alice, ConnId(1));
        presence.sign_out(&alice, ConnId(1));
        assert_eq!(presence.sessions_of(&alice), [ConnId(2)]);
        assert_eq!(presence.session_count(), 1);
        presence.sign_out(&alice, ConnId(2));
        assert!(!presence.is_online(&alice));
        assert_eq!((presence.count(), presence.session_count()), (0, 0));
    }
}
