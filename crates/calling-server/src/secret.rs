//! Secrets as the server holds them: [`SecretKey`] (never printed), a
//! comparison that takes the same time whatever the first difference, and
//! hex for keys and signatures. Vocabulary that the settings, the webhooks,
//! the cluster links and the admin API share.

use std::fmt;

use serde::Deserialize;

/// An app's secret key. Never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for signing and verifying only.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Whether `presented` is this key, compared in constant time (for
    /// keys of the same length).
    pub fn matches(&self, presented: &[u8]) -> bool {
        same_bytes(self.0.as_bytes(), presented)
    }
}

/// Whether `a` and `b` are equal, comparing every byte whatever the first
/// difference (for secrets; their lengths are not secret).
pub(crate) fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    let difference = a.iter().zip(b).fold(0_u8, |acc, (x, y)| acc | (x ^ y));
    a.len() == b.len() && std::hint::black_box(difference) == 0
}

impl std::str::FromStr for SecretKey {
    type Err = String;

    /// Any non-empty text.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        if text.is_empty() {
            Err("a key or token may not be empty".into())
        } else {
            Ok(Self::new(text))
        }
    }
}

impl<'de> Deserialize<'de> for SecretKey {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

/// Lower-case hexadecimal.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
