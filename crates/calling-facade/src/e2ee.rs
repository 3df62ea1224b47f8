//! End-to-end encrypted audio in a call (protocol version 7): our key for
//! the call, which members have heard of it, and the keys they announced.
//!
//! Sans-IO: the driver hands it the call's members and the members'
//! words (`MemberKey`), and takes back the words to send, the sealer for
//! the capture thread and the keys for the media session. The cipher is
//! `media_e2ee`'s.

use std::collections::{HashMap, HashSet};

use calling_api::UserId;
use media_e2ee::{E2eeError, FrameSealer, KeyAnnouncement, MediaKey, MediaKeys};
use tracing::{debug, warn};

use crate::media::Sealing;

/// What a member announced: its key material here (`None`: the
/// application has none for it) and the announcement.
pub(crate) type HeardKey = (Option<MediaKey>, KeyAnnouncement);

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct CallKeys {
    keys: MediaKeys,
    me: UserId,
    /// Whether our key for the current call was made (or found
    /// impossible).
    started: bool,
    /// Our key in the current call, once made; its sealer waits here for
    /// the capture thread.
    ours: Option<KeyAnnouncement>,
    sealer: Option<Sealing>,
    /// The members who have our announcement.
    told: HashSet<UserId>,
    /// What each member announced in this call, oldest first.
    heard: HashMap<UserId, Vec<HeardKey>>,
}

impl CallKeys {
    pub(crate) fn new(keys: MediaKeys, me: UserId) -> Self {
        Self {
            keys,
            me,
            started: false,
            ours: None,
            sealer: None,
            told: HashSet::new(),
            heard: HashMap::new(),
        }
    }

    /// The call goes on with `members` (the others, entered): our key for
    /// it is made once, and each member who has not heard of it gets its
    /// announcement (one who left and came back hears it again).
    pub(crate) fn words_for(&mut self, members: &[UserId]) -> Vec<(UserId, Vec<u8>)> {
        if !self.started {
            self.start_key();
        }
        self.told.retain(|told| members.contains(told));
        let Some(ours) = self.ours else {
            return Vec::new();
        };
        members
            .iter()
            .filter(|member| self.told.insert((*member).clone()))
            .map(|member| (member.clone(), ours.to_bytes().to_vec()))
            .collect()
    }

    fn start_key(&mut self) {
        self.started = true;
        match FrameSealer::new(&self.keys, self.me.as_str(), 0) {
            Ok(sealer) => {
                self.ours = Some(sealer.announcement());
                self.sealer = Some(Sealing::With(Box::new(sealer)));
            }
            Err(error) => {
                warn!(%error, "no media key of our own: the call sends no audio");
                self.sealer = Some(Sealing::Impossible);
            }
        }
    }

    /// The sealer for the call's capture thread (`Impossible` without key
    /// material of our own). Audio that starts again in the same call
    /// (its threads could not all start) gets a fresh key, announced to
    /// every member again.
    pub(crate) fn take_sealer(&mut self) -> Sealing {
        if self.sealer.is_none() {
            self.start_key();
            self.told.clear();
        }
        self.sealer.take().unwrap_or(Sealing::Impossible)
    }

    /// A member's word: its key, kept for the call; what the media session
    /// is to take, if the word is an announcement we read.
    pub(crate) fn heard(&mut self, from: UserId, word: &[u8]) -> Option<HeardKey> {
        let announcement = match KeyAnnouncement::from_bytes(word) {
            Ok(announcement) => announcement,
            Err(error) => {
                debug!(%from, %error, "a member's key word we cannot read");
                return None;
            }
        };
        let heard = (self.keys.key_of(from.as_str()), announcement);
        let kept = self.heard.entry(from).or_default();
        kept.retain(|(_, old)| old.key_id != announcement.key_id);
        kept.push(heard.clone());
        Some(heard)
    }

    /// Every key the members announced in this call.
    pub(crate) fn all_heard(&self) -> impl Iterator<Item = (&UserId, &HeardKey)> {
        self.heard
            .iter()
            .flat_map(|(user, keys)| keys.iter().map(move |key| (user, key)))
    }

    /// The call is over: the next one has a key of its own.
    pub(crate) fn end_call(&mut self) {
        self.started = false;
        self.ours = None;
        self.sealer = None;
        self.told.clear();
        self.heard.clear();
    }
}

/// Why a member's key could not be taken.
pub(crate) fn install_failed(from: &UserId, error: &E2eeError) {
    warn!(%from, %error, "cannot take a member's media key");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    #[test]
    fn each_member_hears_our_key_once_per_presence_and_a_new_call_has_a_new_key() {
        let keys = MediaKeys::Shared(MediaKey::new([3; 32]).unwrap());
        let mut call = CallKeys::new(keys, user("alice"));
        let words = call.words_for(&[user("bob")]);
        assert_eq!(words.len(), 1);
        let (to, word) = &words[0];
        assert_eq!(to, &user("bob"));
        let announcement = KeyAnnouncement::from_bytes(word).unwrap();
        assert!(call.words_for(&[user("bob")]).is_empty(), "told once");
        let more = call.words_for(&[user("bob"), user("carol")]);
        assert_eq!(more, vec![(user("carol"), word.clone())]);
        // Bob left and came back: he hears it again.
        assert!(call.words_for(&[user("carol")]).is_empty());
        assert_eq!(call.words_for(&[user("carol"), user("bob")]).len(), 1);
        assert!(
            matches!(call.take_sealer(), Sealing::With(sealer) if sealer.announcement() == announcement)
        );
        call.end_call();
        let next = call.words_for(&[user("bob")]);
        assert_ne!(
            KeyAnnouncement::from_bytes(&next[0].1).unwrap().salt,
            announcement.salt
        );
    }

    #[test]
    fn members_keys_are_kept_per_key_id_and_garbage_is_ignored() {
        let keys = MediaKeys::Shared(MediaKey::new([3; 32]).unwrap());
        let mut call = CallKeys::new(keys.clone(), user("alice"));
        let bob = FrameSealer::new(&keys, "bob", 0).unwrap().announcement();
        let (material, announced) = call.heard(user("bob"), &bob.to_bytes()).unwrap();
        assert_eq!(announced, bob);
        assert!(material.is_some());
        assert!(call.heard(user("bob"), &[9, 9]).is_none());
        let again = FrameSealer::new(&keys, "bob", 0).unwrap().announcement();
        call.heard(user("bob"), &again.to_bytes());
        let kept: Vec<_> = call.all_heard().map(|(_, (_, key))| *key).collect();
        assert_eq!(kept, vec![again], "one key per id");
    }

    #[test]
    fn without_our_own_key_nothing_is_announced_and_nothing_sealed() {
        #[derive(Debug)]
        struct OnlyBob;
        impl media_e2ee::KeyProvider for OnlyBob {
            fn key_of(&self, user_id: &str) -> Option<MediaKey> {
                (user_id == "bob").then(|| MediaKey::new([1; 16]).unwrap())
            }
        }
        let keys = MediaKeys::PerUser(std::sync::Arc::new(OnlyBob));
        let mut call = CallKeys::new(keys, user("alice"));
        assert!(call.words_for(&[user("bob")]).is_empty());
        assert!(matches!(call.take_sealer(), Sealing::Impossible));
        assert!(call.words_for(&[user("bob")]).is_empty());
    }
}
