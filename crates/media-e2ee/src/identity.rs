//! Built-in keys (scheme 2): each device's X25519 identity key, sender
//! keys sealed to each member's identity key, and safety numbers.
//!
//! A sender's key (random key material, a salt, a key id) goes to each
//! member in a word only that member's identity key opens: X25519 between
//! a fresh ephemeral key and the member's identity key, and between the
//! sender's identity key and the member's (so the word also proves who
//! sealed it), through HKDF-SHA256 into an AES-256-GCM key used once.
//! The server passes the words on and learns nothing from them; what it
//! could do is hand a member a key of its own as another's identity key,
//! which is what comparing safety numbers finds out.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::digest::{Context, SHA512, digest};
use ring::hkdf;
use x25519_dalek::{PublicKey, StaticSecret};
use zeroize::Zeroizing;

use crate::{E2eeError, KEY_IDS, KeyAnnouncement, Length, MediaKey, SALT_LEN, fill_random};

/// The first byte of a word of scheme 2: keys the SDK makes and seals to
/// each member's identity key.
pub const SCHEME_BUILT_IN: u8 = 2;

/// Bytes of an X25519 public key.
pub const IDENTITY_KEY_LEN: usize = 32;

/// Bytes of a sender's key material in scheme 2.
pub const SENDER_KEY_LEN: usize = 32;

/// Bytes of an identity word: scheme, kind, the public identity key.
pub const IDENTITY_WORD_LEN: usize = 2 + IDENTITY_KEY_LEN;

/// Bytes of a key word: scheme, kind, the ephemeral public key, the
/// sealed key id, salt and key material, the tag.
pub const KEY_WORD_LEN: usize = 2 + IDENTITY_KEY_LEN + SEALED_LEN + TAG_LEN;

const KIND_IDENTITY: u8 = 1;
const KIND_KEY: u8 = 2;
const SEALED_LEN: usize = 1 + SALT_LEN + SENDER_KEY_LEN;
const TAG_LEN: usize = 16;
const WORD_KEY_INFO: &[u8] = b"OpenCalling member key 1";
const FINGERPRINT_ITERATIONS: usize = 5200;
const FILE_HEADER: &str =
    "# OpenCalling media identity: this device's secret key. Keep it private.";

/// A device's public identity key, as members see it.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct IdentityKey(pub [u8; IDENTITY_KEY_LEN]);

impl std::fmt::Debug for IdentityKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdentityKey({})", hex(&self.0[..4]))
    }
}

/// A sender's key in scheme 2: key material the sender drew and the
/// announcement of its key id and salt, as a member opens it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SenderKey {
    /// The key material (random, 32 bytes).
    pub material: MediaKey,
    /// Its key id and salt.
    pub announcement: KeyAnnouncement,
}

impl SenderKey {
    /// A key of `material` with `key_id` (taken modulo [`KEY_IDS`]) and a
    /// fresh random salt.
    pub fn new(material: MediaKey, key_id: u8) -> Result<Self, E2eeError> {
        let mut salt = [0; SALT_LEN];
        fill_random(&mut salt)?;
        Ok(Self {
            material,
            announcement: KeyAnnouncement {
                key_id: key_id % KEY_IDS,
                salt,
            },
        })
    }

    /// A fresh key with `key_id`: random material and salt (built-in keys).
    pub fn random(key_id: u8) -> Result<Self, E2eeError> {
        let mut material = Zeroizing::new([0; SENDER_KEY_LEN]);
        fill_random(&mut *material)?;
        Self::new(MediaKey::new(material.to_vec())?, key_id)
    }
}

/// A word of scheme 2, read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuiltInWord {
    /// The sender's identity key.
    Identity(IdentityKey),
    /// A sender key sealed to the receiver (open it with
    /// [`Identity::open_key`]).
    Key(Vec<u8>),
}

impl BuiltInWord {
    /// Reads a `MemberKey` payload of scheme 2; `None` for another scheme.
    pub fn read(payload: &[u8]) -> Option<Result<Self, E2eeError>> {
        let [SCHEME_BUILT_IN, kind, rest @ ..] = payload else {
            return None;
        };
        Some(match *kind {
            KIND_IDENTITY => <[u8; IDENTITY_KEY_LEN]>::try_from(rest)
                .map(|key| Self::Identity(IdentityKey(key)))
                .map_err(|_| E2eeError::Announcement("an identity key is 32 bytes")),
            KIND_KEY if payload.len() == KEY_WORD_LEN => Ok(Self::Key(payload.to_vec())),
            KIND_KEY => Err(E2eeError::Announcement("a sealed key of another length")),
            _ => Err(E2eeError::Announcement("another kind of built-in word")),
        })
    }
}

/// What a device's record says of a member's identity key it meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Meeting {
    /// The first key this device has seen for that user.
    First,
    /// A key it has seen for that user before.
    Known,
    /// A key other than every one it has seen for that user: the user's
    /// new device or reinstalled app, or someone in between.
    Changed,
}

/// A device's identity: its X25519 key pair and the identity keys it has
/// met, per user (trust on first use). Kept in a file when made with
/// [`Identity::load_or_create`], in memory otherwise.
pub struct Identity {
    secret: StaticSecret,
    public: IdentityKey,
    file: Option<PathBuf>,
    known: Mutex<BTreeMap<String, Vec<IdentityKey>>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("public", &self.public)
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A new identity, kept in memory only: every member sees a new
    /// identity key each time the process starts.
    pub fn generate() -> Result<Self, E2eeError> {
        let mut secret = Zeroizing::new([0; 32]);
        fill_random(&mut *secret)?;
        Ok(Self::from_secret(StaticSecret::from(*secret), None))
    }

    fn from_secret(secret: StaticSecret, file: Option<PathBuf>) -> Self {
        let public = IdentityKey(PublicKey::from(&secret).to_bytes());
        Self {
            secret,
            public,
            file,
            known: Mutex::default(),
        }
    }

    /// The identity kept in `path`, made there (readable by its owner
    /// only) if the file does not exist; the identity keys it meets are
    /// written there too.
    pub fn load_or_create(path: &Path) -> Result<Self, E2eeError> {
        let file_error = |error: std::io::Error| identity_file_error(path, error);
        match std::fs::read_to_string(path).map(Zeroizing::new) {
            // The text holds the secret's hex: wiped once parsed.
            Ok(text) => Self::parse(&text, path),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                let mut identity = Self::generate()?;
                identity.file = Some(path.to_owned());
                identity.save().map_err(file_error)?;
                Ok(identity)
            }
            Err(error) => Err(file_error(error)),
        }
    }

    fn parse(text: &str, path: &Path) -> Result<Self, E2eeError> {
        let malformed = |what: &str| identity_file_error(path, what);
        let mut secret = None;
        let mut known: BTreeMap<String, Vec<IdentityKey>> = BTreeMap::new();
        for line in text.lines().map(str::trim) {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut words = line.split_whitespace();
            match (words.next(), words.next(), words.next(), words.next()) {
                (Some("secret"), Some(key), None, None) => {
                    let bytes = Zeroizing::new(
                        key_from_hex(key).ok_or_else(|| malformed("a secret that is not a key"))?,
                    );
                    secret = Some(StaticSecret::from(*bytes));
                }
                (Some("known"), Some(key), Some(user), None) => {
                    let key = key_from_hex(key)
                        .ok_or_else(|| malformed("a known identity that is not a key"))?;
                    known
                        .entry(user.to_owned())
                        .or_default()
                        .push(IdentityKey(key));
                }
                _ => return Err(malformed("a line that is neither `secret` nor `known`")),
            }
        }
        let secret = secret.ok_or_else(|| malformed("no secret key"))?;
        let identity = Self::from_secret(secret, Some(path.to_owned()));
        *identity
            .known
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = known;
        Ok(identity)
    }

    /// Writes the secret and the known keys to a new file beside the old,
    /// then puts it in its place.
    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let text = self.file_text();
        let fresh = path.with_extension("new");
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&fresh)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&fresh, path)
    }

    /// What the identity's file holds: the secret, then every identity key
    /// met. Sized up front and written without intermediate strings: a
    /// String that grows, or a formatted one, leaves copies of the secret
    /// behind that nothing wipes.
    fn file_text(&self) -> Zeroizing<String> {
        let mut known_lines = String::new();
        for (user, keys) in &*self.known.lock().unwrap_or_else(PoisonError::into_inner) {
            for key in keys {
                known_lines.push_str("known ");
                push_hex(&mut known_lines, &key.0);
                known_lines.push(' ');
                known_lines.push_str(user);
                known_lines.push('\n');
            }
        }
        const SECRET_LINE: usize = "\nsecret ".len() + 64 + "\n".len();
        let mut text = Zeroizing::new(String::with_capacity(
            FILE_HEADER.len() + SECRET_LINE + known_lines.len(),
        ));
        text.push_str(FILE_HEADER);
        text.push_str("\nsecret ");
        push_hex(&mut text, self.secret.as_bytes());
        text.push('\n');
        text.push_str(&known_lines);
        text
    }

    /// This device's public identity key.
    pub fn public_key(&self) -> IdentityKey {
        self.public
    }

    /// The word that tells a member this device's identity key.
    pub fn identity_word(&self) -> [u8; IDENTITY_WORD_LEN] {
        let mut word = [0; IDENTITY_WORD_LEN];
        word[0] = SCHEME_BUILT_IN;
        word[1] = KIND_IDENTITY;
        word[2..].copy_from_slice(&self.public.0);
        word
    }

    /// Records `key` as an identity key of `user`: what was known of it
    /// before. A new key is kept beside the old ones (a user may have
    /// several devices) and written to the identity's file; a failure to
    /// write is an error, the key is still kept in memory.
    pub fn meet(&self, user: &str, key: IdentityKey) -> Result<Meeting, E2eeError> {
        let meeting = {
            let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
            let keys = known.entry(user.to_owned()).or_default();
            if keys.contains(&key) {
                return Ok(Meeting::Known);
            }
            keys.push(key);
            if keys.len() == 1 {
                Meeting::First
            } else {
                Meeting::Changed
            }
        };
        self.save().map_err(|error| {
            identity_file_error(self.file.as_deref().unwrap_or(Path::new("")), error)
        })?;
        Ok(meeting)
    }

    /// `key` sealed from `me` to `to`, whose identity key is `theirs`: a
    /// key word only `to`'s identity opens.
    pub fn seal_key(
        &self,
        me: &str,
        to: &str,
        theirs: IdentityKey,
        key: &SenderKey,
    ) -> Result<Vec<u8>, E2eeError> {
        let mut ephemeral = Zeroizing::new([0; 32]);
        fill_random(&mut *ephemeral)?;
        let ephemeral = StaticSecret::from(*ephemeral);
        let ephemeral_public = IdentityKey(PublicKey::from(&ephemeral).to_bytes());
        let their_public = PublicKey::from(theirs.0);
        let one = ephemeral.diffie_hellman(&their_public);
        let two = self.secret.diffie_hellman(&their_public);
        if !one.was_contributory() || !two.was_contributory() {
            return Err(E2eeError::Announcement("a member's identity key is no key"));
        }
        let sealing = word_key(
            one.as_bytes(),
            two.as_bytes(),
            [ephemeral_public, self.public, theirs],
            [me, to],
        )?;
        let mut word = Vec::with_capacity(KEY_WORD_LEN);
        word.extend_from_slice(&[SCHEME_BUILT_IN, KIND_KEY]);
        word.extend_from_slice(&ephemeral_public.0);
        let header_len = word.len();
        word.push(key.announcement.key_id);
        word.extend_from_slice(&key.announcement.salt);
        word.extend_from_slice(key.material.as_bytes());
        let (header, sealed) = word.split_at_mut(header_len);
        let tag = sealing
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(&*header),
                sealed,
            )
            .map_err(|_| E2eeError::Sframe("AES-GCM refused to seal".into()))?;
        word.extend_from_slice(tag.as_ref());
        Ok(word)
    }

    /// Opens a key word `from` (whose identity key is `theirs`) sealed to
    /// `me`.
    pub fn open_key(
        &self,
        me: &str,
        from: &str,
        theirs: IdentityKey,
        word: &[u8],
    ) -> Result<SenderKey, E2eeError> {
        if word.len() != KEY_WORD_LEN || word[..2] != [SCHEME_BUILT_IN, KIND_KEY] {
            return Err(E2eeError::Announcement("not a sealed key"));
        }
        let (header, sealed) = word.split_at(2 + IDENTITY_KEY_LEN);
        let mut ephemeral_public = [0; IDENTITY_KEY_LEN];
        ephemeral_public.copy_from_slice(&header[2..]);
        let one = self
            .secret
            .diffie_hellman(&PublicKey::from(ephemeral_public));
        let two = self.secret.diffie_hellman(&PublicKey::from(theirs.0));
        if !one.was_contributory() || !two.was_contributory() {
            return Err(E2eeError::Announcement("a sealed key with no key in it"));
        }
        let opening = word_key(
            one.as_bytes(),
            two.as_bytes(),
            [IdentityKey(ephemeral_public), theirs, self.public],
            [from, me],
        )?;
        let mut opened = Zeroizing::new(sealed.to_vec());
        let plain = opening
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(header),
                &mut opened,
            )
            .map_err(|_| E2eeError::Announcement("a sealed key that does not open here"))?;
        let (key_id, rest) = plain
            .split_first()
            .ok_or(E2eeError::Announcement("an empty sealed key"))?;
        if *key_id >= KEY_IDS {
            return Err(E2eeError::Announcement("a key id above 7"));
        }
        let (salt, material) = rest.split_at(SALT_LEN);
        Ok(SenderKey {
            material: MediaKey::new(material.to_vec())?,
            announcement: KeyAnnouncement {
                key_id: *key_id,
                salt: salt
                    .try_into()
                    .map_err(|_| E2eeError::Announcement("a salt is 16 bytes"))?,
            },
        })
    }

    /// The safety number of this device (`me`) and `them`'s device whose
    /// identity key is `theirs`: the same on both devices.
    pub fn safety_number(&self, me: &str, them: &str, theirs: IdentityKey) -> SafetyNumber {
        SafetyNumber::of((me, self.public), (them, theirs))
    }
}

/// The one-use AES-256-GCM key of a key word.
fn word_key(
    ephemeral_secret: &[u8; 32],
    identities_secret: &[u8; 32],
    [ephemeral, sender, receiver]: [IdentityKey; 3],
    [sender_id, receiver_id]: [&str; 2],
) -> Result<LessSafeKey, E2eeError> {
    let mut input = Zeroizing::new([0; 64]);
    input[..32].copy_from_slice(ephemeral_secret);
    input[32..].copy_from_slice(identities_secret);
    let sender_len = [u8::try_from(sender_id.len()).unwrap_or(u8::MAX)];
    let receiver_len = [u8::try_from(receiver_id.len()).unwrap_or(u8::MAX)];
    let info = [
        WORD_KEY_INFO,
        &ephemeral.0,
        &sender.0,
        &receiver.0,
        &sender_len,
        sender_id.as_bytes(),
        &receiver_len,
        receiver_id.as_bytes(),
    ];
    let mut key = Zeroizing::new([0; 32]);
    hkdf::Salt::new(hkdf::HKDF_SHA256, &[])
        .extract(&*input)
        .expand(&info, Length(32))
        .and_then(|okm| okm.fill(&mut *key))
        .map_err(|_| E2eeError::Sframe("HKDF refused its lengths".into()))?;
    let key = UnboundKey::new(&AES_256_GCM, &*key)
        .map_err(|_| E2eeError::Sframe("AES-256-GCM refused its key".into()))?;
    Ok(LessSafeKey::new(key))
}

/// Two devices' safety number: 60 digits in twelve groups of five, the
/// same on both, that two people compare (read aloud, side by side) to
/// know that nobody stands between their devices. In the manner of
/// Signal's: each device's 30 digits from 5,200 rounds of SHA-512 over its
/// identity key and user id, the lower half first.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SafetyNumber(String);

impl SafetyNumber {
    /// The safety number of two users' devices.
    pub fn of(one: (&str, IdentityKey), other: (&str, IdentityKey)) -> Self {
        let mut halves = [fingerprint(one.0, one.1), fingerprint(other.0, other.1)];
        halves.sort();
        let digits = halves.concat();
        let groups: Vec<&str> = (0..digits.len())
            .step_by(5)
            .map(|at| &digits[at..at + 5])
            .collect();
        Self(groups.join(" "))
    }

    /// The digits, as people read them.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SafetyNumber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// One device's 30 digits.
fn fingerprint(user: &str, key: IdentityKey) -> String {
    let mut input = Vec::with_capacity(2 + IDENTITY_KEY_LEN + user.len());
    input.extend_from_slice(&[0, 0]);
    input.extend_from_slice(&key.0);
    input.extend_from_slice(user.as_bytes());
    let mut hash = digest(&SHA512, &input);
    for _ in 0..FINGERPRINT_ITERATIONS {
        let mut round = Context::new(&SHA512);
        round.update(hash.as_ref());
        round.update(&key.0);
        hash = round.finish();
    }
    hash.as_ref()[..30]
        .chunks_exact(5)
        .map(|chunk| {
            let value = chunk
                .iter()
                .fold(0_u64, |value, byte| value << 8 | u64::from(*byte));
            format!("{:05}", value % 100_000)
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    let mut text = String::with_capacity(2 * bytes.len());
    push_hex(&mut text, bytes);
    text
}

/// Appends `bytes` to `out` in lower-case hex, a character at a time.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
}

/// The identity file at `path` cannot be read, written or understood.
fn identity_file_error(path: &Path, error: impl std::fmt::Display) -> E2eeError {
    E2eeError::IdentityFile {
        path: path.display().to_string(),
        error: error.to_string(),
    }
}

fn key_from_hex(text: &str) -> Option<[u8; 32]> {
    let key = MediaKey::from_hex(text).ok()?;
    key.as_bytes().try_into().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> Identity {
        Identity::generate().unwrap()
    }

    #[test]
    fn a_sealed_key_opens_only_for_its_member_and_only_from_its_sender() {
        let (alice, bob, carol) = (identity(), identity(), identity());
        let key = SenderKey::random(3).unwrap();
        let word = alice
            .seal_key("alice", "bob", bob.public_key(), &key)
            .unwrap();
        assert_eq!(word.len(), KEY_WORD_LEN);
        assert_eq!(
            BuiltInWord::read(&word),
            Some(Ok(BuiltInWord::Key(word.clone())))
        );
        let opened = bob
            .open_key("bob", "alice", alice.public_key(), &word)
            .unwrap();
        assert_eq!(opened, key);
        // Carol has not the key it was sealed to.
        assert!(
            carol
                .open_key("carol", "alice", alice.public_key(), &word)
                .is_err()
        );
        assert!(
            carol
                .open_key("bob", "alice", alice.public_key(), &word)
                .is_err()
        );
        // Claimed from carol's identity, or for another pair of users.
        assert!(
            bob.open_key("bob", "alice", carol.public_key(), &word)
                .is_err()
        );
        assert!(
            bob.open_key("bob", "mallory", alice.public_key(), &word)
                .is_err()
        );
        // Any changed byte.
        for at in [1, 2, 40, KEY_WORD_LEN - 1] {
            let mut changed = word.clone();
            changed[at] ^= 1;
            assert!(
                bob.open_key("bob", "alice", alice.public_key(), &changed)
                    .is_err(),
                "byte {at}"
            );
        }
        // Two seals of one key are different words.
        let again = alice
            .seal_key("alice", "bob", bob.public_key(), &key)
            .unwrap();
        assert_ne!(again, word);
    }

    #[test]
    fn words_of_any_bytes_are_errors_never_panics() {
        let (alice, bob) = (identity(), identity());
        let mut state: u64 = 0x2545_f491_4f6c_dd1d;
        for len in 0..120 {
            let mut bytes: Vec<u8> = (0..len)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 24) as u8
                })
                .collect();
            if let Some(first) = bytes.first_mut() {
                *first = SCHEME_BUILT_IN;
            }
            if let Some(second) = bytes.get_mut(1) {
                *second = KIND_KEY;
            }
            let _ = BuiltInWord::read(&bytes);
            assert!(
                bob.open_key("bob", "alice", alice.public_key(), &bytes)
                    .is_err()
            );
        }
        assert_eq!(BuiltInWord::read(&[1, 0]), None, "another scheme");
        assert!(matches!(BuiltInWord::read(&[2, 9]), Some(Err(_))));
        assert!(matches!(BuiltInWord::read(&[2, 1, 0]), Some(Err(_))));
        // The all-zero point is refused, not used.
        assert!(
            alice
                .seal_key(
                    "alice",
                    "bob",
                    IdentityKey([0; 32]),
                    &SenderKey::random(0).unwrap()
                )
                .is_err()
        );
    }

    #[test]
    fn safety_numbers_agree_on_both_devices_and_change_with_a_key() {
        let (alice, bob, bob_again) = (identity(), identity(), identity());
        let on_alice = alice.safety_number("alice", "bob", bob.public_key());
        let on_bob = bob.safety_number("bob", "alice", alice.public_key());
        assert_eq!(on_alice, on_bob);
        assert_eq!(on_alice.as_str().len(), 60 + 11);
        assert!(
            on_alice
                .as_str()
                .split(' ')
                .all(|group| group.len() == 5 && group.bytes().all(|b| b.is_ascii_digit()))
        );
        let changed = alice.safety_number("alice", "bob", bob_again.public_key());
        assert_ne!(changed, on_alice);
        assert_ne!(
            alice.safety_number("alice", "carol", bob.public_key()),
            on_alice,
            "the user id counts"
        );
    }

    #[test]
    fn an_identity_is_kept_in_its_file_with_the_keys_it_met() {
        let folder =
            std::env::temp_dir().join(format!("media-e2ee-identity-{}", std::process::id()));
        std::fs::create_dir_all(&folder).unwrap();
        let path = folder.join("identity");
        let _ = std::fs::remove_file(&path);
        let made = Identity::load_or_create(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let (bob, bob_laptop) = (identity(), identity());
        assert_eq!(made.meet("bob", bob.public_key()), Ok(Meeting::First));
        assert_eq!(made.meet("bob", bob.public_key()), Ok(Meeting::Known));
        let loaded = Identity::load_or_create(&path).unwrap();
        assert_eq!(loaded.public_key(), made.public_key());
        assert_eq!(loaded.meet("bob", bob.public_key()), Ok(Meeting::Known));
        assert_eq!(
            loaded.meet("bob", bob_laptop.public_key()),
            Ok(Meeting::Changed)
        );
        assert_eq!(loaded.meet("carol", bob.public_key()), Ok(Meeting::First));
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines()
                .filter(|line| line.starts_with("known "))
                .count(),
            3
        );
        assert!(!format!("{loaded:?}").contains(&hex(loaded.secret.as_bytes())));
        // The text the secret is written from never grew (a grown String
        // leaves an unwiped copy behind), and is what the file holds.
        let written = loaded.file_text();
        assert_eq!(written.len(), written.capacity());
        assert_eq!(written.as_str(), text);
        assert!(text.contains(&format!("secret {}\n", hex(loaded.secret.as_bytes()))));
        std::fs::write(&path, "secret 12\n").unwrap();
        assert!(matches!(
            Identity::load_or_create(&path),
            Err(E2eeError::IdentityFile { .. })
        ));
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(Identity::load_or_create(&path).is_err());
        std::fs::remove_dir_all(&folder).unwrap();
    }
}
