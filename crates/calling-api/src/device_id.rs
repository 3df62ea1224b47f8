//! The validated device id.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One of a user's devices (a phone, a laptop), as its SDK names itself at
/// login: a server that lets a user be logged in on several devices at once
/// rings each, and a login from a device already logged in replaces that
/// device's session.
///
/// 1 to [`DeviceId::MAX_LEN`] characters, each one of `a-z`, `A-Z`, `0-9`,
/// `-` or `_`, checked on every construction, deserialization included.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct DeviceId(String);

/// Why a string is not a valid [`DeviceId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum InvalidDeviceId {
    /// The string is empty.
    #[error("device id is empty")]
    Empty,
    /// The string is longer than [`DeviceId::MAX_LEN`] characters.
    #[error("device id is {len} bytes long; at most {max} are allowed", max = DeviceId::MAX_LEN)]
    TooLong {
        /// Length of the rejected string, in bytes.
        len: usize,
    },
    /// The string holds a character outside `a-z A-Z 0-9 - _`.
    #[error("device id contains {character:?}; only a-z, A-Z, 0-9, '-' and '_' are allowed")]
    InvalidCharacter {
        /// The first offending character.
        character: char,
    },
}

impl DeviceId {
    /// The longest device id accepted, in characters.
    pub const MAX_LEN: usize = 64;

    /// Validates `id` and wraps it.
    pub fn new(id: impl Into<String>) -> Result<Self, InvalidDeviceId> {
        let id = id.into();
        if id.is_empty() {
            return Err(InvalidDeviceId::Empty);
        }
        if let Some(character) = id
            .chars()
            .find(|&c| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        {
            return Err(InvalidDeviceId::InvalidCharacter { character });
        }
        if id.len() > Self::MAX_LEN {
            return Err(InvalidDeviceId::TooLong { len: id.len() });
        }
        Ok(Self(id))
    }

    /// A device id made of 128 random bits (`bytes`), as 32 hex digits: what
    /// an SDK calls itself when the application names no device.
    pub fn from_random(bytes: [u8; 16]) -> Self {
        Self(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DeviceId({})", self.0)
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = InvalidDeviceId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for DeviceId {
    type Error = InvalidDeviceId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl From<DeviceId> for String {
    fn from(value: DeviceId) -> Self {
        value.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rule_is_checked_everywhere() {
        assert!(DeviceId::new("laptop-1_A").is_ok());
        assert!(DeviceId::new("x".repeat(64)).is_ok());
        assert_eq!(DeviceId::new(""), Err(InvalidDeviceId::Empty));
        assert_eq!(
            DeviceId::new("x".repeat(65)),
            Err(InvalidDeviceId::TooLong { len: 65 })
        );
        assert_eq!(
            DeviceId::new("my phone"),
            Err(InvalidDeviceId::InvalidCharacter { character: ' ' })
        );
        let random = DeviceId::from_random([0xab; 16]);
        assert_eq!(random.as_str().len(), 32);
        assert_eq!(DeviceId::new(random.as_str()), Ok(random.clone()));
        let bad = postcard::to_allocvec(&"my phone").expect("encode");
        assert!(postcard::from_bytes::<DeviceId>(&bad).is_err());
        let good = postcard::to_allocvec(&random).expect("encode");
        assert_eq!(postcard::from_bytes::<DeviceId>(&good).ok(), Some(random));
    }
}
