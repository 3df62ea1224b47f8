//! End-to-end encrypted audio (version 7): a call's members all encrypt
//! alike, and what they tell each other about their keys passes through
//! untouched, between members of one call only.

use super::*;

impl Switchboard {
    /// How `conn`'s device encrypts audio end to end.
    pub(super) fn encryption_of(&self, conn: ConnId) -> MediaEncryption {
        self.sessions
            .get(&conn)
            .map_or(MediaEncryption::None, |session| session.encryption)
    }

    /// Whether `invitees` can be rung into a call that encrypts as
    /// `encryption`: every invitee who is logged in has a device that
    /// encrypts alike. A call is refused rather than downgraded; an
    /// offline invitee is judged by the device it logs in on.
    pub(super) fn check_encryption(
        &self,
        encryption: MediaEncryption,
        invitees: &[UserId],
    ) -> Result<(), Refusal> {
        for user in invitees {
            let devices = self.presence.sessions_of(user);
            if !devices.is_empty()
                && !devices
                    .iter()
                    .any(|conn| self.encryption_of(*conn) == encryption)
            {
                debug!(%user, ?encryption, "no device of the invitee encrypts as the call does");
                return Err((
                    ErrorCode::MEDIA_ENCRYPTION_MISMATCH,
                    "an invitee does not encrypt audio end to end as the call does",
                ));
            }
        }
        Ok(())
    }

    /// Passes `me`'s word about its keys on to `to`, when both have
    /// entered one call; otherwise it goes nowhere (a member who left, a
    /// word that crossed the end of the call). One over
    /// [`MAX_MEMBER_KEY_LEN`] bytes is answered with an error notice.
    pub(super) fn pass_member_key(
        &mut self,
        conn: ConnId,
        me: UserId,
        to: UserId,
        payload: Vec<u8>,
    ) {
        if payload.len() > MAX_MEMBER_KEY_LEN {
            return self.send_error(
                conn,
                None,
                ErrorCode::INVALID_PARAMETER,
                "a member key word is at most 1024 bytes",
            );
        }
        let Some((call_id, _)) = self.joined_call_of(conn) else {
            return;
        };
        let to_member = self
            .calls
            .get(&call_id)
            .is_some_and(|call| call.members.contains_key(&to));
        if to_member && to != me {
            let word = ServerMessage::MemberKey {
                call_id,
                from: me,
                payload,
            };
            self.send_to_member(call_id, &to, word);
        }
    }
}
