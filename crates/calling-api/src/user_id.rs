//! The validated user id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A user's identity inside one application (one sdkAppId).
///
/// 1 to [`UserId::MAX_LEN`] characters, each one of `a-z`, `A-Z`, `0-9`, `-`
/// or `_`. The rule is checked on every construction, deserialization
/// included, so a `UserId` in hand is always valid.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct UserId(String);

/// Why a string is not a valid [`UserId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidUserId {
    /// The string is empty.
    #[error("user id is empty")]
    Empty,
    /// The string is longer than [`UserId::MAX_LEN`] characters.
    #[error("user id is {len} characters long; at most {max} are allowed", max = UserId::MAX_LEN)]
    TooLong {
        /// Length of the rejected string, in bytes.
        len: usize,
    },
    /// The string holds a character outside `a-z A-Z 0-9 - _`.
    #[error(
        "user id contains {character:?} at byte {position}; only a-z, A-Z, 0-9, '-' and '_' are allowed"
    )]
    InvalidCharacter {
        /// The first offending character.
        character: char,
        /// Its byte offset in the string.
        position: usize,
    },
}

impl UserId {
    /// The longest user id accepted, in characters.
    pub const MAX_LEN: usize = 32;

    /// Validates `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidUserId> {
        let id = id.into();
        Self::validate(&id)?;
        Ok(Self(id))
    }

    /// Checks `id` against the user id rule without taking it.
    pub fn validate(id: &str) -> Result<(), InvalidUserId> {
        if id.is_empty() {
            return Err(InvalidUserId::Empty);
        }
        if let Some((position, character)) = id
            .char_indices()
            .find(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(InvalidUserId::InvalidCharacter {
                character,
                position,
            });
        }
        // Every character is ASCII from here on, so bytes == characters.
        if id.len() > Self::MAX_LEN {
            return Err(InvalidUserId::TooLong { len: id.len() });
        }
        Ok(())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "UserId({})", self.0)
    }
}

impl fmt::Display for UserId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for UserId {
    type Err = InvalidUserId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for UserId {
    type Error = InvalidUserId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl TryFrom<&str> for UserId {
    type Error = InvalidUserId;
    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<UserId> for String {
    fn from(value: UserId) -> Self {
        value.0
    }
}

impl AsRef<str> for UserId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for UserId {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for UserId {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_every_allowed_character_up_to_the_limit() {
        assert!(UserId::new("alice").is_ok());
        assert!(UserId::new("A-z_09").is_ok());
        assert!(UserId::new("x".repeat(32)).is_ok());
        assert_eq!(
            UserId::new("bob").map(|u| u.to_string()).as_deref(),
            Ok("bob")
        );
    }

    #[test]
    fn rejects_with_a_reason() {
        assert_eq!(UserId::new(""), Err(InvalidUserId::Empty));
        assert_eq!(
            UserId::new("x".repeat(33)),
            Err(InvalidUserId::TooLong { len: 33 })
        );
        assert_eq!(
            UserId::new("al ice"),
            Err(InvalidUserId::InvalidCharacter {
                character: ' ',
                position: 2
            })
        );
        assert_eq!(
            UserId::new("é"),
            Err(InvalidUserId::InvalidCharacter {
                character: 'é',
                position: 0
            })
        );
        let message = UserId::new("a.b").map(|_| ()).unwrap_err().to_string();
        assert!(message.contains("'.'"), "{message}");
    }

    #[test]
    fn deserializing_validates() {
        let good = postcard::to_allocvec(&"carol").expect("encode");
        assert_eq!(
            postcard::from_bytes::<UserId>(&good).expect("valid id"),
            UserId::new("carol").expect("valid")
        );
        let bad = postcard::to_allocvec(&"ca rol").expect("encode");
        assert!(postcard::from_bytes::<UserId>(&bad).is_err());
    }
}
