//! End-to-end encrypted audio in a call (protocol version 7): our key for
//! the call, which members hold it, the keys they sent us, and, with
//! built-in keys, the members' identity keys.
//!
//! Sans-IO: the driver hands it the call's members and the members'
//! words (`MemberKey`), and takes back the words to send, the sealer for
//! the capture thread, the keys for the media session and the identity
//! events. The cipher is `media_e2ee`'s.
//!
//! Our key changes when a member leaves (who left never holds what we
//! seal next) and when a member joins after we gave our key to someone
//! (who joins never holds what we sealed before): the new key goes to the
//! members at once, and the capture thread seals with it
//! [`ROTATION_OVERLAP`] later, so that it is there when our frames are.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use calling_api::{CallingEvent, UserId};
use media_e2ee::{
    BuiltInWord, E2eeError, FrameSealer, Identity, IdentityKey, KeyAnnouncement, MediaKey,
    MediaKeys, Meeting, SenderKey,
};
use tracing::{debug, warn};

use crate::media::Sealing;

/// How long after a new key goes to the members we start sealing with it:
/// long enough for the word to cross the server before our frames do.
pub(crate) const ROTATION_OVERLAP: Duration = Duration::from_millis(500);

/// What a member sent: its key material here (`None`: the application
/// has none for it) and its key id and salt.
pub(crate) type HeardKey = (Option<MediaKey>, KeyAnnouncement);

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct CallKeys {
    keys: MediaKeys,
    me: UserId,
    /// Whether our first key for the current call was made (or found
    /// impossible).
    started: bool,
    /// Our current key in this call; `None` without key material.
    ours: Option<SenderKey>,
    /// The sealer of our newest key, until the capture thread takes it.
    sealer: Option<Box<FrameSealer>>,
    /// The call's members as our key last saw them.
    members: Vec<UserId>,
    /// Whether our current key went to anyone.
    given: bool,
    /// The members who hold our current key.
    told: HashSet<UserId>,
    /// The members who have our identity key (built-in keys).
    introduced: HashSet<UserId>,
    /// The members' identity keys, as heard in this call.
    identities: HashMap<UserId, IdentityKey>,
    /// What each member sent in this call, oldest first.
    heard: HashMap<UserId, Vec<HeardKey>>,
    /// Identity events for the application.
    news: Vec<CallingEvent>,
}

impl CallKeys {
    pub(crate) fn new(keys: MediaKeys, me: UserId) -> Self {
        Self {
            keys,
            me,
            started: false,
            ours: None,
            sealer: None,
            members: Vec::new(),
            given: false,
            told: HashSet::new(),
            introduced: HashSet::new(),
            identities: HashMap::new(),
            heard: HashMap::new(),
            news: Vec::new(),
        }
    }

    fn identity(&self) -> Option<&Arc<Identity>> {
        match &self.keys {
            MediaKeys::BuiltIn(identity) => Some(identity),
            MediaKeys::Shared(_) | MediaKeys::PerUser(_) => None,
        }
    }

    /// The call goes on with `members` (the others, entered): our first
    /// key is made, a new one when the members changed as the module docs
    /// say, and each member is told what it lacks: our identity key, our
    /// current key. A member who left and came back is told again.
    pub(crate) fn words_for(&mut self, members: &[UserId]) -> Vec<(UserId, Vec<u8>)> {
        if !self.started {
            self.start_key();
        } else if self.ours.is_some() {
            let left = self.members.iter().any(|was| !members.contains(was));
            let joined = members.iter().any(|is| !self.members.contains(is));
            if left || (joined && self.given) {
                self.next_key();
            }
        }
        members.clone_into(&mut self.members);
        self.told.retain(|told| members.contains(told));
        self.introduced.retain(|told| members.contains(told));
        let mut words = Vec::new();
        if let Some(identity) = self.identity() {
            for member in members {
                if !self.introduced.contains(member) {
                    words.push((member.clone(), identity.identity_word().to_vec()));
                }
            }
        }
        self.introduced.extend(members.iter().cloned());
        let Some(ours) = &self.ours else {
            return words;
        };
        for member in members {
            if self.told.contains(member) {
                continue;
            }
            let word = match self.identity() {
                None => Some(ours.announcement.to_bytes().to_vec()),
                // Sealed to the member's identity key, once we have it.
                Some(identity) => self.identities.get(member).and_then(|theirs| {
                    identity
                        .seal_key(self.me.as_str(), member.as_str(), *theirs, ours)
                        .map_err(|error| warn!(%member, %error, "cannot seal our key"))
                        .ok()
                }),
            };
            if let Some(word) = word {
                self.told.insert(member.clone());
                self.given = true;
                words.push((member.clone(), word));
            }
        }
        words
    }

    fn start_key(&mut self) {
        self.started = true;
        self.make_key(0);
    }

    /// Our next key, under the next key id.
    fn next_key(&mut self) {
        let key_id = self
            .ours
            .as_ref()
            .map_or(0, |ours| ours.announcement.key_id.wrapping_add(1));
        self.make_key(key_id);
    }

    fn make_key(&mut self, key_id: u8) {
        self.told.clear();
        self.given = false;
        match self.sender_key(key_id).and_then(|key| {
            let sealer = FrameSealer::announced(&key.material, self.me.as_str(), key.announcement)?;
            Ok((key, sealer))
        }) {
            Ok((key, sealer)) => {
                self.ours = Some(key);
                self.sealer = Some(Box::new(sealer));
            }
            Err(error) => {
                warn!(%error, "no media key of our own: the call sends no audio");
                self.ours = None;
                self.sealer = None;
            }
        }
    }

    /// Key material and a fresh salt: the application's material, or
    /// random material with built-in keys.
    fn sender_key(&self, key_id: u8) -> Result<SenderKey, E2eeError> {
        if self.identity().is_some() {
            return SenderKey::random(key_id);
        }
        let material = self
            .keys
            .key_of(self.me.as_str())
            .ok_or_else(|| E2eeError::NoKeyFor(self.me.to_string()))?;
        SenderKey::new(material, key_id)
    }

    /// The sealer for the call's capture thread as the call's audio
    /// starts (`Impossible` without key material of our own). Audio that
    /// starts again in the same call (its threads could not all start)
    /// gets a fresh key, told to every member again.
    pub(crate) fn take_sealer(&mut self) -> Sealing {
        if !self.started {
            self.start_key();
        } else if self.sealer.is_none() && self.ours.is_some() {
            self.next_key();
        }
        self.sealer
            .take()
            .map_or(Sealing::Impossible, Sealing::With)
    }

    /// Our new key's sealer, once, when the members changed while the
    /// call's audio runs.
    pub(crate) fn take_next_sealer(&mut self) -> Option<Box<FrameSealer>> {
        self.sealer.take()
    }

    /// A member's word: kept for the call; the key the media session is to
    /// take, if the word gave one.
    pub(crate) fn heard(&mut self, from: UserId, word: &[u8]) -> Option<HeardKey> {
        let heard = match (BuiltInWord::read(word), self.identity().cloned()) {
            (Some(Ok(BuiltInWord::Identity(key))), Some(identity)) => {
                self.met(&identity, from, key);
                return None;
            }
            (Some(Ok(BuiltInWord::Key(sealed))), Some(identity)) => {
                let theirs = *self.identities.get(&from)?;
                match identity.open_key(self.me.as_str(), from.as_str(), theirs, &sealed) {
                    Ok(key) => (Some(key.material), key.announcement),
                    Err(error) => {
                        warn!(%from, %error, "a member's key does not open");
                        return None;
                    }
                }
            }
            (None, None) => match KeyAnnouncement::from_bytes(word) {
                Ok(announcement) => (self.keys.key_of(from.as_str()), announcement),
                Err(error) => {
                    debug!(%from, %error, "a member's key word we cannot read");
                    return None;
                }
            },
            (Some(Err(error)), _) => {
                debug!(%from, %error, "a member's key word we cannot read");
                return None;
            }
            (Some(Ok(_)), None) | (None, Some(_)) => {
                debug!(%from, "a member's key word of another scheme than ours");
                return None;
            }
        };
        let kept = self.heard.entry(from).or_default();
        kept.retain(|(_, old)| old.key_id != heard.1.key_id);
        kept.push(heard.clone());
        Some(heard)
    }

    /// `from` told its identity key: the application hears its safety
    /// number, once per call unless it changes, and our key goes to it
    /// sealed to that identity.
    fn met(&mut self, identity: &Identity, from: UserId, key: IdentityKey) {
        if self.identities.get(&from) == Some(&key) {
            return;
        }
        let changed = match identity.meet(from.as_str(), key) {
            Ok(meeting) => meeting == Meeting::Changed,
            Err(error) => {
                warn!(%error, "cannot keep a member's identity key");
                false
            }
        };
        let safety_number = identity.safety_number(self.me.as_str(), from.as_str(), key);
        self.identities.insert(from.clone(), key);
        self.told.remove(&from);
        self.news.push(CallingEvent::MemberIdentity {
            user_id: from,
            safety_number: safety_number.to_string(),
            changed,
        });
    }

    /// The identity events since the last look.
    pub(crate) fn take_news(&mut self) -> Vec<CallingEvent> {
        std::mem::take(&mut self.news)
    }

    /// Every key the members sent in this call.
    pub(crate) fn all_heard(&self) -> impl Iterator<Item = (&UserId, &HeardKey)> {
        self.heard
            .iter()
            .flat_map(|(user, keys)| keys.iter().map(move |key| (user, key)))
    }

    /// The call is over: the next one has keys of its own.
    pub(crate) fn end_call(&mut self) {
        self.started = false;
        self.ours = None;
        self.sealer = None;
        self.members.clear();
        self.given = false;
        self.told.clear();
        self.introduced.clear();
        self.identities.clear();
        self.heard.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use media_e2ee::FrameOpener;

    fn user(id: &str) -> UserId {
        UserId::new(id).unwrap()
    }

    fn users(ids: &[&str]) -> Vec<UserId> {
        ids.iter().map(|id| user(id)).collect()
    }

    const HEADER: &[u8] = &[0x10, 0x00, 0, 0, 0, 7, 0, 0, 0x0b, 0x40, 0x2a];

    #[test]
    fn each_member_hears_our_key_and_a_change_of_members_makes_a_new_one() {
        let keys = MediaKeys::Shared(MediaKey::new([3; 32]).unwrap());
        let mut call = CallKeys::new(keys, user("alice"));
        // Alone while bob rings: a key nobody holds yet.
        assert!(call.words_for(&[]).is_empty());
        let words = call.words_for(&users(&["bob"]));
        assert_eq!(words.len(), 1);
        let (to, word) = &words[0];
        assert_eq!(to, &user("bob"));
        let first = KeyAnnouncement::from_bytes(word).unwrap();
        assert_eq!(first.key_id, 0, "bob's arrival needed no new key");
        assert!(
            matches!(call.take_sealer(), Sealing::With(sealer) if sealer.announcement() == first)
        );
        assert!(call.words_for(&users(&["bob"])).is_empty(), "told once");
        // Carol joins: a new key for both, which the capture thread takes.
        let more = call.words_for(&users(&["bob", "carol"]));
        assert_eq!(more.len(), 2);
        let second = KeyAnnouncement::from_bytes(&more[0].1).unwrap();
        assert_eq!(second.key_id, 1);
        assert_ne!(second.salt, first.salt);
        assert_eq!(call.take_next_sealer().unwrap().announcement(), second);
        assert!(call.take_next_sealer().is_none());
        // Bob leaves: carol alone gets the next.
        let after = call.words_for(&users(&["carol"]));
        assert_eq!(after.len(), 1);
        assert_eq!(after[0].0, user("carol"));
        assert_eq!(KeyAnnouncement::from_bytes(&after[0].1).unwrap().key_id, 2);
        call.end_call();
        call.words_for(&users(&["bob"]));
        let next = call.take_sealer();
        assert!(matches!(next, Sealing::With(sealer) if sealer.announcement().key_id == 0));
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
        let identity = Identity::generate().unwrap();
        assert!(
            call.heard(user("bob"), &identity.identity_word()).is_none(),
            "a built-in word in a call of the application's keys"
        );
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
        let keys = MediaKeys::PerUser(Arc::new(OnlyBob));
        let mut call = CallKeys::new(keys, user("alice"));
        assert!(call.words_for(&users(&["bob"])).is_empty());
        assert!(matches!(call.take_sealer(), Sealing::Impossible));
        assert!(call.words_for(&users(&["bob", "carol"])).is_empty());
    }

    /// Three devices with built-in keys pass their words as the server
    /// would, until nobody has anything more to say.
    fn converse(devices: &mut [(&str, CallKeys)], members: &[&str]) {
        loop {
            let mut words = Vec::new();
            for (name, keys) in devices.iter_mut() {
                if !members.contains(name) {
                    continue;
                }
                let others: Vec<&str> = members.iter().copied().filter(|m| m != name).collect();
                for (to, word) in keys.words_for(&users(&others)) {
                    words.push((user(name), to, word));
                }
            }
            if words.is_empty() {
                return;
            }
            for (from, to, word) in words {
                let (_, keys) = devices
                    .iter_mut()
                    .find(|(name, _)| *name == to.as_str())
                    .unwrap();
                keys.heard(from, &word);
            }
        }
    }

    fn opener_of(keys: &CallKeys, sender: &str) -> FrameOpener {
        let mut opener = FrameOpener::new();
        for (from, (material, announcement)) in keys.all_heard() {
            if from.as_str() == sender {
                opener
                    .add_key(material.as_ref().unwrap(), sender, announcement)
                    .unwrap();
            }
        }
        opener
    }

    #[test]
    fn built_in_keys_reach_every_member_and_not_one_who_left() {
        let device = |name: &'static str| {
            let identity = Arc::new(Identity::generate().unwrap());
            (
                name,
                CallKeys::new(MediaKeys::BuiltIn(identity), user(name)),
            )
        };
        let mut devices = [device("alice"), device("bob"), device("carol")];
        converse(&mut devices, &["alice", "bob", "carol"]);
        let mut alice_sealer = match devices[0].1.take_sealer() {
            Sealing::With(sealer) => sealer,
            other => panic!("{other:?}"),
        };
        // Carol joined after alice's first key reached bob: a second.
        if let Some(next) = devices[0].1.take_next_sealer() {
            alice_sealer = next;
        }
        let before = alice_sealer.seal(HEADER, b"before").unwrap()[HEADER.len()..].to_vec();
        for listener in [1, 2] {
            let mut opener = opener_of(&devices[listener].1, "alice");
            assert_eq!(opener.open(HEADER, &before).unwrap(), b"before");
        }
        let carols = opener_of(&devices[2].1, "alice");
        // Each heard the other two's identity, with a safety number both
        // sides agree on.
        let news: Vec<Vec<CallingEvent>> = devices
            .iter_mut()
            .map(|(_, keys)| keys.take_news())
            .collect();
        assert!(news.iter().all(|events| events.len() == 2), "{news:?}");
        let number = |events: &[CallingEvent], of: &str| {
            events.iter().find_map(|event| match event {
                CallingEvent::MemberIdentity {
                    user_id,
                    safety_number,
                    changed: false,
                } if user_id.as_str() == of => Some(safety_number.clone()),
                _ => None,
            })
        };
        assert_eq!(number(&news[0], "bob"), number(&news[1], "alice"));
        assert!(number(&news[0], "bob").is_some());
        // Carol leaves: alice's next key reaches bob, never carol.
        converse(&mut devices, &["alice", "bob"]);
        let mut after = devices[0].1.take_next_sealer().expect("a new key");
        let sealed = after.seal(HEADER, b"after").unwrap()[HEADER.len()..].to_vec();
        let mut bobs = opener_of(&devices[1].1, "alice");
        assert_eq!(bobs.open(HEADER, &sealed).unwrap(), b"after");
        assert_eq!(bobs.open(HEADER, &before).unwrap(), b"before", "overlap");
        let mut carols = carols;
        assert!(carols.open(HEADER, &sealed).is_err());
        let mut carol_now = opener_of(&devices[2].1, "alice");
        assert!(carol_now.open(HEADER, &sealed).is_err());
    }

    #[test]
    fn a_new_identity_key_of_a_known_user_is_told_as_changed() {
        let alice = Arc::new(Identity::generate().unwrap());
        let mut call = CallKeys::new(MediaKeys::BuiltIn(Arc::clone(&alice)), user("alice"));
        let phone = Identity::generate().unwrap();
        let laptop = Identity::generate().unwrap();
        call.heard(user("bob"), &phone.identity_word());
        call.heard(user("bob"), &phone.identity_word());
        let first = call.take_news();
        assert!(
            matches!(
                &first[..],
                [CallingEvent::MemberIdentity { changed: false, .. }]
            ),
            "{first:?}"
        );
        call.end_call();
        call.heard(user("bob"), &laptop.identity_word());
        let second = call.take_news();
        assert!(
            matches!(
                &second[..],
                [CallingEvent::MemberIdentity { changed: true, .. }]
            ),
            "{second:?}"
        );
        // Its key word sealed to a wrong identity does not open.
        let key = SenderKey::random(0).unwrap();
        let word = phone
            .seal_key("bob", "alice", alice.public_key(), &key)
            .unwrap();
        assert!(call.heard(user("bob"), &word).is_none());
        let word = laptop
            .seal_key("bob", "alice", alice.public_key(), &key)
            .unwrap();
        assert_eq!(
            call.heard(user("bob"), &word),
            Some((Some(key.material), key.announcement))
        );
    }
}
