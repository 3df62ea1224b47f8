#![doc = include_str!("../README.md")]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use sframe::CipherSuite;
use sframe::error::SframeError;
use sframe::frame::{EncryptedFrameView, MediaFrameView, MonotonicCounter};
use sframe::key::{DecryptionKey, EncryptionKey};
use zeroize::Zeroizing;

mod identity;

pub use identity::{
    BuiltInWord, IDENTITY_KEY_LEN, IDENTITY_WORD_LEN, Identity, IdentityKey, KEY_WORD_LEN, Meeting,
    SCHEME_BUILT_IN, SENDER_KEY_LEN, SafetyNumber, SenderKey,
};

/// The SFrame cipher suite of every sealed frame: AES-128-GCM, a 16-byte
/// tag, HKDF-SHA256 (RFC 9605's `AES_128_GCM_SHA256_128`, 0x0004).
pub const CIPHER_SUITE: CipherSuite = CipherSuite::AesGcm128Sha256;

/// Bytes of the authentication tag at the end of a sealed frame.
pub const TAG_LEN: usize = 16;

/// The most bytes sealing adds to a packet: the SFrame header (its config
/// byte, which holds key ids below 8 itself, and a counter of up to 8
/// bytes) and the tag. At 50 packets a second the counter needs 1 byte
/// for 5 s, 2 bytes for 22 minutes, 3 bytes for 3.8 days.
pub const MAX_OVERHEAD: usize = 1 + 8 + TAG_LEN;

/// Key ids a sender cycles through: the ids that fit in the SFrame config
/// byte.
pub const KEY_IDS: u8 = 8;

/// The fewest bytes of key material an application may give.
pub const MIN_KEY_LEN: usize = 16;

/// The most bytes of key material an application may give.
pub const MAX_KEY_LEN: usize = 64;

/// The first byte of an announcement of scheme 1: keys from the
/// application.
pub const SCHEME_APP_KEYS: u8 = 1;

/// Bytes of a [`KeyAnnouncement`] on the wire.
pub const ANNOUNCEMENT_LEN: usize = 2 + SALT_LEN;

pub(crate) const SALT_LEN: usize = 16;

/// Bytes of a base key: AES-128's.
const BASE_KEY_LEN: usize = 16;

/// HKDF's info before the sender's user id.
const BASE_KEY_INFO: &[u8] = b"OpenCalling SFrame 1 base key ";

/// Why key material or an announcement is refused, or a sender cannot
/// start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum E2eeError {
    /// Key material of a length outside [`MIN_KEY_LEN`]..=[`MAX_KEY_LEN`].
    #[error("a media key is {MIN_KEY_LEN} to {MAX_KEY_LEN} bytes, not {0}")]
    KeyLength(usize),
    /// Key material given as text that is not hexadecimal.
    #[error("a media key as text is hexadecimal digits, two a byte")]
    NotHex,
    /// The application has no key for this user.
    #[error("the application gave no media key for {0}")]
    NoKeyFor(String),
    /// An announcement that is not one.
    #[error("not a key announcement: {0}")]
    Announcement(&'static str),
    /// The system's random source failed.
    #[error("the system's random source failed")]
    Random,
    /// More than one of a shared key, per-user keys and a built-in
    /// identity was given.
    #[error("one of a shared media key, each user's keys or a media identity, not two")]
    TwoKindsOfKeys,
    /// A per-user key that is not one (the user named, never the key).
    #[error("the media key of {user}: {error}")]
    UserKey {
        /// Whose.
        user: String,
        /// What is wrong with it.
        error: Box<E2eeError>,
    },
    /// The identity's file cannot be read, written or understood.
    #[error("the media identity in {path}: {error}")]
    IdentityFile {
        /// The file.
        path: String,
        /// What went wrong.
        error: String,
    },
    /// The SFrame layer refused (a counter exhausted, a derivation failed).
    #[error("SFrame: {0}")]
    Sframe(String),
}

impl From<SframeError> for E2eeError {
    fn from(error: SframeError) -> Self {
        Self::Sframe(error.to_string())
    }
}

/// Why a frame did not open: the receiver plays nothing for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Its sender announced no key with this key id (or not yet).
    #[error("no key announced with key id {0}")]
    MissingKey(u64),
    /// It does not decrypt with the announced key: the sender's key
    /// material differs from ours, or the frame was altered.
    #[error("the frame does not decrypt with its sender's announced key")]
    WrongKey,
    /// Not an SFrame at all.
    #[error("not an SFrame")]
    Malformed,
}

/// Key material from the application, 16 to 64 bytes (32 random bytes are
/// the usual). Wiped from memory when dropped; `Debug` shows its length
/// only.
#[derive(Clone, PartialEq, Eq)]
pub struct MediaKey(Zeroizing<Vec<u8>>);

impl MediaKey {
    /// Key material as bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, E2eeError> {
        let bytes = Zeroizing::new(bytes.into());
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&bytes.len()) {
            return Err(E2eeError::KeyLength(bytes.len()));
        }
        Ok(Self(bytes))
    }

    /// Key material as hexadecimal text (32 to 128 digits), as a command
    /// line or a configuration file carries it.
    pub fn from_hex(text: &str) -> Result<Self, E2eeError> {
        let text = text.trim();
        if !text.len().is_multiple_of(2) {
            return Err(E2eeError::NotHex);
        }
        let digits = text.as_bytes();
        let mut bytes = Zeroizing::new(Vec::with_capacity(digits.len() / 2));
        for pair in digits.chunks_exact(2) {
            let high = hex_digit(pair[0]).ok_or(E2eeError::NotHex)?;
            let low = hex_digit(pair[1]).ok_or(E2eeError::NotHex)?;
            bytes.push(high << 4 | low);
        }
        Self::new(std::mem::take(&mut *bytes))
    }

    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

fn hex_digit(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

impl std::fmt::Debug for MediaKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MediaKey(<{} bytes redacted>)", self.0.len())
    }
}

/// The application's key material per user, for [`MediaKeys::PerUser`]:
/// asked for the local user's when a call starts, and for a member's when
/// that member announces a key.
pub trait KeyProvider: Send + Sync {
    /// The key material of `user_id`, if the application has it.
    fn key_of(&self, user_id: &str) -> Option<MediaKey>;
}

/// Where the key material comes from: one key for everyone, or one per
/// user from the application (as LiveKit's key provider), or keys the SDK
/// makes itself and seals to each member's identity key. Either way each
/// sender's frames are sealed with a key of its own (see the crate docs).
#[derive(Clone)]
pub enum MediaKeys {
    /// One key every member of every call holds.
    Shared(MediaKey),
    /// Each user's own key, which every member of its calls must hold.
    PerUser(Arc<dyn KeyProvider>),
    /// Built in: each sender draws its keys and sends them to each member
    /// sealed to that member's identity key; the application holds no key
    /// material and compares safety numbers.
    BuiltIn(Arc<Identity>),
}

/// Each user's key material, fixed in advance (a binding's options, a
/// configuration file): the [`KeyProvider`] for keys that do not change.
#[derive(Clone, Default)]
pub struct KeyDirectory(HashMap<String, MediaKey>);

impl KeyDirectory {
    /// The directory of `keys`, by user id.
    pub fn new(keys: HashMap<String, MediaKey>) -> Self {
        Self(keys)
    }
}

impl std::fmt::Debug for KeyDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut users: Vec<&String> = self.0.keys().collect();
        users.sort();
        f.debug_tuple("KeyDirectory").field(&users).finish()
    }
}

impl KeyProvider for KeyDirectory {
    fn key_of(&self, user_id: &str) -> Option<MediaKey> {
        self.0.get(user_id).cloned()
    }
}

impl MediaKeys {
    /// The switch as the bindings and the command line take it: one
    /// shared key in hex, each user's key in hex (by user id), or the file
    /// of this device's identity for built-in keys (made if missing);
    /// none is off (`None`), two an error.
    pub fn from_settings(
        shared: Option<&str>,
        per_user: Option<&HashMap<String, String>>,
        identity: Option<&Path>,
    ) -> Result<Option<Self>, E2eeError> {
        match (shared, per_user, identity) {
            (None, None, None) => Ok(None),
            (Some(shared), None, None) => Ok(Some(Self::Shared(MediaKey::from_hex(shared)?))),
            (None, Some(per_user), None) => {
                let mut keys = HashMap::with_capacity(per_user.len());
                for (user, hex) in per_user {
                    let key = MediaKey::from_hex(hex).map_err(|error| E2eeError::UserKey {
                        user: user.clone(),
                        error: Box::new(error),
                    })?;
                    keys.insert(user.clone(), key);
                }
                Ok(Some(Self::PerUser(Arc::new(KeyDirectory::new(keys)))))
            }
            (None, None, Some(path)) => Ok(Some(Self::BuiltIn(Arc::new(
                Identity::load_or_create(path)?,
            )))),
            _ => Err(E2eeError::TwoKindsOfKeys),
        }
    }

    /// The application's key material of `user_id` (none when the keys
    /// are built in).
    pub fn key_of(&self, user_id: &str) -> Option<MediaKey> {
        match self {
            Self::Shared(key) => Some(key.clone()),
            Self::PerUser(provider) => provider.key_of(user_id),
            Self::BuiltIn(_) => None,
        }
    }
}

impl std::fmt::Debug for MediaKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Shared(key) => f.debug_tuple("Shared").field(key).finish(),
            Self::PerUser(_) => f.write_str("PerUser(..)"),
            Self::BuiltIn(identity) => f.debug_tuple("BuiltIn").field(identity).finish(),
        }
    }
}

impl PartialEq for MediaKeys {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Shared(one), Self::Shared(other)) => one == other,
            (Self::PerUser(one), Self::PerUser(other)) => Arc::ptr_eq(one, other),
            (Self::BuiltIn(one), Self::BuiltIn(other)) => Arc::ptr_eq(one, other),
            _ => false,
        }
    }
}

/// What a sender tells each other member when it starts a key: its key id
/// and the salt of its base key. Not secret (the key material is), but
/// only the members need it. On the wire: [`SCHEME_APP_KEYS`], the key id,
/// the 16-byte salt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyAnnouncement {
    /// The SFrame key id of the frames sealed with this key (below
    /// [`KEY_IDS`]).
    pub key_id: u8,
    /// The base key's HKDF salt, random per key.
    pub salt: [u8; SALT_LEN],
}

impl KeyAnnouncement {
    /// The announcement as the bytes of a `MemberKey` message's payload.
    pub fn to_bytes(&self) -> [u8; ANNOUNCEMENT_LEN] {
        let mut bytes = [0; ANNOUNCEMENT_LEN];
        bytes[0] = SCHEME_APP_KEYS;
        bytes[1] = self.key_id;
        bytes[2..].copy_from_slice(&self.salt);
        bytes
    }

    /// Reads an announcement from a `MemberKey` message's payload.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, E2eeError> {
        let [scheme, key_id, salt @ ..] = bytes else {
            return Err(E2eeError::Announcement("too short"));
        };
        if *scheme != SCHEME_APP_KEYS {
            return Err(E2eeError::Announcement("another key scheme"));
        }
        if *key_id >= KEY_IDS {
            return Err(E2eeError::Announcement("a key id above 7"));
        }
        let salt = salt
            .try_into()
            .map_err(|_| E2eeError::Announcement("a salt is 16 bytes"))?;
        Ok(Self {
            key_id: *key_id,
            salt,
        })
    }
}

/// Fills `bytes` from the system's random source.
pub(crate) fn fill_random(bytes: &mut [u8]) -> Result<(), E2eeError> {
    SystemRandom::new()
        .fill(bytes)
        .map_err(|_| E2eeError::Random)
}

/// A length for ring's HKDF output.
pub(crate) struct Length(pub(crate) usize);

impl hkdf::KeyType for Length {
    fn len(&self) -> usize {
        self.0
    }
}

/// `sender`'s SFrame base key for `salt`: HKDF-SHA256 with `salt`, the
/// application's key material as input, `BASE_KEY_INFO` and the user id
/// as info.
fn base_key(
    material: &MediaKey,
    sender: &str,
    salt: &[u8; SALT_LEN],
) -> Result<Zeroizing<[u8; BASE_KEY_LEN]>, E2eeError> {
    let pseudo_random = hkdf::Salt::new(hkdf::HKDF_SHA256, salt).extract(material.as_bytes());
    let info = [BASE_KEY_INFO, sender.as_bytes()];
    let mut key = Zeroizing::new([0; BASE_KEY_LEN]);
    pseudo_random
        .expand(&info, Length(BASE_KEY_LEN))
        .and_then(|okm| okm.fill(&mut *key))
        .map_err(|_| E2eeError::Sframe("HKDF refused its lengths".into()))?;
    Ok(key)
}

/// Seals the local user's frames with its current key. One per key: a new
/// key (a new call, the next key id) is a new sealer.
pub struct FrameSealer {
    key: EncryptionKey,
    counter: MonotonicCounter,
    announcement: KeyAnnouncement,
    sealed: Vec<u8>,
}

impl std::fmt::Debug for FrameSealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameSealer")
            .field("key_id", &self.announcement.key_id)
            .field("counter", &self.counter.current())
            .finish_non_exhaustive()
    }
}

impl FrameSealer {
    /// A new key for `sender` (the local user) with `key_id` (taken modulo
    /// [`KEY_IDS`]) and a random salt, from `keys`.
    pub fn new(keys: &MediaKeys, sender: &str, key_id: u8) -> Result<Self, E2eeError> {
        let material = keys
            .key_of(sender)
            .ok_or_else(|| E2eeError::NoKeyFor(sender.to_owned()))?;
        let key = SenderKey::new(material, key_id)?;
        Self::announced(&key.material, sender, key.announcement)
    }

    /// The key `announcement` names, for `sender` with `material`: what
    /// [`FrameSealer::new`] makes with a salt it drew (tests give theirs).
    pub fn announced(
        material: &MediaKey,
        sender: &str,
        announcement: KeyAnnouncement,
    ) -> Result<Self, E2eeError> {
        let base = base_key(material, sender, &announcement.salt)?;
        Self::from_base_key(&*base, u64::from(announcement.key_id), 0, announcement)
    }

    /// RFC 9605's sender from its base key on: key id and first counter
    /// as given.
    fn from_base_key(
        base: &[u8],
        key_id: u64,
        first_counter: u64,
        announcement: KeyAnnouncement,
    ) -> Result<Self, E2eeError> {
        Ok(Self {
            key: EncryptionKey::derive_from(CIPHER_SUITE, key_id, base)?,
            counter: MonotonicCounter::with_start_value(first_counter, u64::MAX),
            announcement,
            sealed: Vec::new(),
        })
    }

    /// What the other members need to open this key's frames.
    pub fn announcement(&self) -> KeyAnnouncement {
        self.announcement
    }

    /// Seals `payload` behind `header` (authenticated, not encrypted): the
    /// result is `header`, the SFrame header, the ciphertext and the tag,
    /// a whole datagram. The buffer is reused: no allocation once it has
    /// grown to the largest datagram.
    pub fn seal(&mut self, header: &[u8], payload: &[u8]) -> Result<&[u8], E2eeError> {
        let frame = MediaFrameView::try_with_meta_data(&mut self.counter, payload, header)?;
        frame.encrypt_into(&self.key, &mut self.sealed)?;
        Ok(&self.sealed)
    }
}

/// Opens one sender's frames with the keys it announced (at most one per
/// key id: a new announcement of an id replaces the old key).
pub struct FrameOpener {
    /// By key id, oldest first: at most [`KEY_IDS`].
    keys: Vec<(u64, DecryptionKey)>,
    opened: Vec<u8>,
}

impl std::fmt::Debug for FrameOpener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<u64> = self.keys.iter().map(|(id, _)| *id).collect();
        f.debug_struct("FrameOpener")
            .field("key_ids", &ids)
            .finish_non_exhaustive()
    }
}

impl Default for FrameOpener {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameOpener {
    /// An opener with no key yet: every frame is [`OpenError::MissingKey`].
    pub fn new() -> Self {
        Self {
            keys: Vec::new(),
            opened: Vec::new(),
        }
    }

    /// Takes the key `sender` announced, derived from `material` (the
    /// application's key material for `sender`).
    pub fn add_key(
        &mut self,
        material: &MediaKey,
        sender: &str,
        announcement: &KeyAnnouncement,
    ) -> Result<(), E2eeError> {
        let base = base_key(material, sender, &announcement.salt)?;
        self.add_base_key(&*base, u64::from(announcement.key_id))
    }

    /// RFC 9605's receiver: a key from its base key, under `key_id`.
    fn add_base_key(&mut self, base: &[u8], key_id: u64) -> Result<(), E2eeError> {
        let key = DecryptionKey::derive_from(CIPHER_SUITE, key_id, base)?;
        self.keys.retain(|(id, _)| *id != key_id);
        if self.keys.len() == usize::from(KEY_IDS) {
            self.keys.remove(0);
        }
        self.keys.push((key_id, key));
        Ok(())
    }

    /// Whether any key was announced.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Opens a frame: `header` as its sender wrote it (flow id 0),
    /// `sealed` what follows the header in the datagram. The Opus packet,
    /// in a buffer reused from frame to frame.
    pub fn open(&mut self, header: &[u8], sealed: &[u8]) -> Result<&[u8], OpenError> {
        let frame = EncryptedFrameView::try_with_meta_data(sealed, header)
            .map_err(|_| OpenError::Malformed)?;
        let key_id = frame.header().key_id();
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| *id == key_id)
            .ok_or(OpenError::MissingKey(key_id))?;
        match frame.decrypt_into(key, &mut self.opened) {
            Ok(opened) => Ok(opened.payload()),
            Err(SframeError::DecryptionFailure) => Err(OpenError::WrongKey),
            Err(_) => Err(OpenError::Malformed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &[u8] = &[0x10, 0x00, 0, 0, 0, 7, 0, 0, 0x0b, 0x40, 0x2a];

    fn shared() -> MediaKeys {
        MediaKeys::Shared(MediaKey::new([7; 32]).unwrap())
    }

    fn opener_for(keys: &MediaKeys, sender: &str, sealer: &FrameSealer) -> FrameOpener {
        let mut opener = FrameOpener::new();
        opener
            .add_key(
                &keys.key_of(sender).unwrap(),
                sender,
                &sealer.announcement(),
            )
            .unwrap();
        opener
    }

    #[test]
    fn a_sealed_frame_opens_with_the_announced_key_and_hides_its_payload() {
        let keys = shared();
        let mut sealer = FrameSealer::new(&keys, "alice", 0).unwrap();
        let payload = b"an opus packet of some length";
        let sealed = sealer.seal(HEADER, payload).unwrap().to_vec();
        assert_eq!(&sealed[..HEADER.len()], HEADER, "the header stays as it is");
        let body = &sealed[HEADER.len()..];
        assert!(body.len() <= payload.len() + MAX_OVERHEAD);
        assert_eq!(
            body.len(),
            payload.len() + 1 + TAG_LEN,
            "counter 0: 1 header byte"
        );
        assert!(
            !body
                .windows(8)
                .any(|window| payload.windows(8).any(|p| p == window)),
            "no stretch of the payload shows"
        );
        let mut opener = opener_for(&keys, "alice", &sealer);
        assert_eq!(opener.open(HEADER, body).unwrap(), payload);
    }

    #[test]
    fn each_sender_has_its_own_key_under_one_shared_key() {
        let keys = shared();
        let mut alice = FrameSealer::new(&keys, "alice", 0).unwrap();
        let sealed = alice.seal(HEADER, b"hello").unwrap()[HEADER.len()..].to_vec();
        // Bob's key with alice's very salt and key id is still another key.
        let mut opener = FrameOpener::new();
        opener
            .add_key(&keys.key_of("bob").unwrap(), "bob", &alice.announcement())
            .unwrap();
        assert_eq!(opener.open(HEADER, &sealed), Err(OpenError::WrongKey));
        // And alice's next key is another again.
        let again = FrameSealer::new(&keys, "alice", 0).unwrap();
        assert_ne!(again.announcement().salt, alice.announcement().salt);
    }

    #[test]
    fn a_changed_header_a_missing_key_and_garbage_are_refused() {
        let keys = shared();
        let mut sealer = FrameSealer::new(&keys, "alice", 3).unwrap();
        let sealed = sealer.seal(HEADER, b"hello").unwrap()[HEADER.len()..].to_vec();
        let mut opener = FrameOpener::new();
        assert_eq!(opener.open(HEADER, &sealed), Err(OpenError::MissingKey(3)));
        let mut opener = opener_for(&keys, "alice", &sealer);
        let mut other_sequence = HEADER.to_vec();
        other_sequence[5] ^= 1;
        assert_eq!(
            opener.open(&other_sequence, &sealed),
            Err(OpenError::WrongKey)
        );
        let mut flipped = sealed.clone();
        flipped[3] ^= 0x80;
        assert_eq!(opener.open(HEADER, &flipped), Err(OpenError::WrongKey));
        for garbage in [&[][..], &[0xff], &[0x00, 1, 2], &sealed[..5]] {
            assert!(opener.open(HEADER, garbage).is_err(), "{garbage:?}");
        }
    }

    /// Whatever arrives, opening answers with an error, never a panic: every
    /// length up to 80 bytes, random bytes and sealed frames cut short.
    #[test]
    fn any_bytes_are_an_error_never_a_panic() {
        let keys = shared();
        let mut sealer = FrameSealer::new(&keys, "alice", 0).unwrap();
        let mut opener = opener_for(&keys, "alice", &sealer);
        let sealed = sealer.seal(HEADER, &[7; 40]).unwrap()[HEADER.len()..].to_vec();
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..80 {
            for _ in 0..50 {
                let garbage: Vec<u8> = (0..len)
                    .map(|_| {
                        state = state
                            .wrapping_mul(6_364_136_223_846_793_005)
                            .wrapping_add(1_442_695_040_888_963_407);
                        (state >> 56) as u8
                    })
                    .collect();
                assert!(opener.open(HEADER, &garbage).is_err());
            }
            if len < sealed.len() {
                assert!(opener.open(HEADER, &sealed[..len]).is_err(), "cut at {len}");
            }
        }
        assert!(opener.open(HEADER, &sealed).is_ok());
    }

    #[test]
    fn keys_of_one_sender_live_side_by_side_until_their_id_comes_back() {
        let keys = shared();
        let mut first = FrameSealer::new(&keys, "alice", 0).unwrap();
        let mut second = FrameSealer::new(&keys, "alice", 1).unwrap();
        let mut opener = opener_for(&keys, "alice", &first);
        let material = keys.key_of("alice").unwrap();
        opener
            .add_key(&material, "alice", &second.announcement())
            .unwrap();
        let old = first.seal(HEADER, b"old").unwrap()[HEADER.len()..].to_vec();
        let new = second.seal(HEADER, b"new").unwrap()[HEADER.len()..].to_vec();
        assert_eq!(opener.open(HEADER, &old).unwrap(), b"old");
        assert_eq!(opener.open(HEADER, &new).unwrap(), b"new");
        let reused = FrameSealer::new(&keys, "alice", KEY_IDS).unwrap();
        assert_eq!(reused.announcement().key_id, 0);
        opener
            .add_key(&material, "alice", &reused.announcement())
            .unwrap();
        assert_eq!(opener.open(HEADER, &old), Err(OpenError::WrongKey));
    }

    #[test]
    fn per_user_keys_come_from_the_application() {
        #[derive(Debug)]
        struct Directory;
        impl KeyProvider for Directory {
            fn key_of(&self, user_id: &str) -> Option<MediaKey> {
                (user_id == "alice").then(|| MediaKey::new([1; 16]).unwrap())
            }
        }
        let keys = MediaKeys::PerUser(Arc::new(Directory));
        assert!(FrameSealer::new(&keys, "alice", 0).is_ok());
        assert_eq!(
            FrameSealer::new(&keys, "bob", 0).err(),
            Some(E2eeError::NoKeyFor("bob".into()))
        );
    }

    fn hex(text: &str) -> Vec<u8> {
        (0..text.len())
            .step_by(2)
            .map(|at| u8::from_str_radix(&text[at..at + 2], 16).unwrap())
            .collect()
    }

    const NO_ANNOUNCEMENT: KeyAnnouncement = KeyAnnouncement {
        key_id: 0,
        salt: [0; 16],
    };

    /// RFC 9605, appendix C.4, `AES_128_GCM_SHA256_128`: through the very
    /// sealer and opener the SDK uses, from the base key on.
    #[test]
    fn rfc_9605_test_vector_for_aes_128_gcm() {
        let base = hex("000102030405060708090a0b0c0d0e0f");
        let metadata = hex("4945544620534672616d65205747");
        let plaintext = hex("64726166742d696574662d736672616d652d656e63");
        let expected = hex(
            "9901234567b7412c2513a1b66dbb48841bbaf17f598751176ad847681a69c6d0b091c07018ce4adb34eb",
        );
        let mut sealer = FrameSealer::from_base_key(&base, 291, 17767, NO_ANNOUNCEMENT).unwrap();
        let sealed = sealer.seal(&metadata, &plaintext).unwrap().to_vec();
        assert_eq!(sealed[..metadata.len()], metadata);
        assert_eq!(sealed[metadata.len()..], expected);
        let mut opener = FrameOpener::new();
        opener.add_base_key(&base, 291).unwrap();
        assert_eq!(opener.open(&metadata, &expected).unwrap(), plaintext);
    }

    /// RFC 9605, appendix C.1: the header of a sealed frame for key ids
    /// and counters at the edges of their encodings.
    #[test]
    fn rfc_9605_header_vectors() {
        let base = [0x42; 16];
        for (key_id, counter, header) in [
            (0, 0, "00"),
            // docs/protocol.md's examples.
            (0, 5, "05"),
            (0, 300, "09012c"),
            (0, 0xffff, "09ffff"),
            (0, 0x1_0000, "0a010000"),
            (0, u64::MAX, "0fffffffffffffffff"),
            (u64::MAX, 0, "f0ffffffffffffffff"),
            (u64::MAX, 0xffff, "f9ffffffffffffffffffff"),
            (u64::MAX, 0x1_0000, "faffffffffffffffff010000"),
            (u64::MAX, u64::MAX, "ffffffffffffffffffffffffffffffffff"),
        ] {
            let mut sealer =
                FrameSealer::from_base_key(&base, key_id, counter, NO_ANNOUNCEMENT).unwrap();
            let sealed = sealer.seal(&[], b"x").unwrap();
            let header = hex(header);
            assert_eq!(sealed[..header.len()], header, "{key_id} {counter}");
            assert_eq!(sealed.len(), header.len() + 1 + TAG_LEN);
        }
    }

    /// docs/protocol.md's example frame, which the web SDK's own WebCrypto
    /// sealing writes too (`test/e2ee.test.ts`): two implementations, one
    /// byte string.
    #[test]
    fn the_documented_frame() {
        let material = MediaKey::new([7; 32]).unwrap();
        let announcement = KeyAnnouncement {
            key_id: 0,
            salt: [1; 16],
        };
        let mut sealer = FrameSealer::announced(&material, "alice", announcement).unwrap();
        let header = hex("100000000001000003c01e");
        let sealed = sealer.seal(&header, b"an opus packet").unwrap();
        assert_eq!(
            sealed[header.len()..],
            hex("000a1bdefe0e6453b8daa97247eddb540830a1718c89763a0431ac38764034")
        );
    }

    #[test]
    fn announcements_round_trip_and_bad_ones_are_errors() {
        let announcement = KeyAnnouncement {
            key_id: 5,
            salt: [9; 16],
        };
        let bytes = announcement.to_bytes();
        assert_eq!(bytes[..2], [SCHEME_APP_KEYS, 5]);
        assert_eq!(KeyAnnouncement::from_bytes(&bytes), Ok(announcement));
        assert!(KeyAnnouncement::from_bytes(&bytes[..17]).is_err());
        assert!(KeyAnnouncement::from_bytes(&[2, 0, 0]).is_err());
        let mut high = bytes;
        high[1] = 8;
        assert!(KeyAnnouncement::from_bytes(&high).is_err());
        assert!(KeyAnnouncement::from_bytes(&[]).is_err());
    }

    #[test]
    fn settings_give_a_shared_key_a_directory_or_an_identity() {
        let hex = "00112233445566778899aabbccddeeff";
        assert_eq!(MediaKeys::from_settings(None, None, None), Ok(None));
        let shared = MediaKeys::from_settings(Some(hex), None, None).unwrap();
        assert_eq!(
            shared,
            Some(MediaKeys::Shared(MediaKey::from_hex(hex).unwrap()))
        );
        let per_user = HashMap::from([("bob".to_owned(), hex.to_owned())]);
        let directory = MediaKeys::from_settings(None, Some(&per_user), None)
            .unwrap()
            .unwrap();
        assert_eq!(directory.key_of("bob"), MediaKey::from_hex(hex).ok());
        assert_eq!(directory.key_of("carol"), None);
        assert_eq!(
            MediaKeys::from_settings(Some(hex), Some(&per_user), None),
            Err(E2eeError::TwoKindsOfKeys)
        );
        assert_eq!(
            MediaKeys::from_settings(None, Some(&per_user), Some(Path::new("/nonexistent/id"))),
            Err(E2eeError::TwoKindsOfKeys)
        );
        let bad = HashMap::from([("bob".to_owned(), "12".to_owned())]);
        let error = MediaKeys::from_settings(None, Some(&bad), None).unwrap_err();
        assert!(
            error.to_string().starts_with("the media key of bob"),
            "{error}"
        );
    }

    #[test]
    fn key_material_has_its_bounds_and_never_shows() {
        assert_eq!(MediaKey::new([0; 15]).err(), Some(E2eeError::KeyLength(15)));
        assert_eq!(MediaKey::new([0; 65]).err(), Some(E2eeError::KeyLength(65)));
        let key = MediaKey::from_hex("00112233445566778899aabbccddeeff").unwrap();
        assert_eq!(
            key,
            MediaKey::new(*b"\x00\x11\x22\x33\x44\x55\x66\x77\x88\x99\xaa\xbb\xcc\xdd\xee\xff")
                .unwrap()
        );
        assert_eq!(MediaKey::from_hex("0g").err(), Some(E2eeError::NotHex));
        assert_eq!(MediaKey::from_hex("abc").err(), Some(E2eeError::NotHex));
        let shown = format!("{:?}", MediaKeys::Shared(key));
        assert!(
            !shown.contains("11") && shown.contains("redacted"),
            "{shown}"
        );
    }
}
