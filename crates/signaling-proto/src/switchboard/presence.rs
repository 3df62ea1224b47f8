//! Who is online, and on which connection: the one place that states that a
//! user has at most one session. A second login replaces the first (the
//! calling component's rule: the older device is kicked offline), and every
//! question "where is this user" is answered here.
//!
//! Several devices per user changes this type — `replaced_by_login` would
//! stop naming a session to kick and `session_of` would answer a set — and
//! the callers that ring or notify a user, not the call rules.

use std::collections::HashMap;

use calling_api::UserId;

use super::ConnId;

/// See the [module docs](self).
#[derive(Debug, Default)]
pub(super) struct Presence {
    session_by_user: HashMap<UserId, ConnId>,
}

impl Presence {
    /// The session a login of `user` replaces (to be kicked first), if it
    /// has one.
    pub(super) fn replaced_by_login(&self, user: &UserId) -> Option<ConnId> {
        self.session_of(user)
    }

    /// `user` is online on `conn` (the session it replaced, if any, ended).
    pub(super) fn sign_in(&mut self, user: UserId, conn: ConnId) {
        self.session_by_user.insert(user, conn);
    }

    /// `user`'s session on `conn` ended; a newer session of it stays.
    pub(super) fn sign_out(&mut self, user: &UserId, conn: ConnId) {
        if self.is_session(user, conn) {
            self.session_by_user.remove(user);
        }
    }

    /// The connection `user` is online on.
    pub(super) fn session_of(&self, user: &UserId) -> Option<ConnId> {
        self.session_by_user.get(user).copied()
    }

    /// Whether `conn` is `user`'s session.
    pub(super) fn is_session(&self, user: &UserId, conn: ConnId) -> bool {
        self.session_by_user.get(user) == Some(&conn)
    }

    /// Whether `user` has a session.
    pub(super) fn is_online(&self, user: &UserId) -> bool {
        self.session_by_user.contains_key(user)
    }

    /// How many users are online.
    pub(super) fn count(&self) -> usize {
        self.session_by_user.len()
    }

    /// Everyone signed out at once (shutdown).
    pub(super) fn clear(&mut self) {
        self.session_by_user.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_login_replaces_the_first_and_the_old_sign_out_keeps_it() {
        let alice = UserId::new("alice").unwrap();
        let mut presence = Presence::default();
        assert_eq!(presence.replaced_by_login(&alice), None);
        presence.sign_in(alice.clone(), ConnId(1));
        assert_eq!(presence.replaced_by_login(&alice), Some(ConnId(1)));
        presence.sign_in(alice.clone(), ConnId(2));
        // The replaced session's end does not sign the new one out.
        presence.sign_out(&alice, ConnId(1));
        assert_eq!(presence.session_of(&alice), Some(ConnId(2)));
        assert_eq!(presence.count(), 1);
        presence.sign_out(&alice, ConnId(2));
        assert!(!presence.is_online(&alice));
    }
}
