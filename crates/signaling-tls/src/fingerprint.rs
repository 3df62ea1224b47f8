//! [`CertFingerprint`]: SHA-256 of a certificate's DER bytes, how a
//! client pins a self-signed server and how a browser names the
//! certificate it accepts (`serverCertificateHashes`).

use std::fmt;
use std::str::FromStr;

/// SHA-256 of a certificate's DER encoding: how a development client pins a
/// self-signed server.
///
/// It prints and parses as 64 hex digits (colons between bytes are allowed
/// when parsing, either case), as a development server prints it:
///
/// ```
/// use signaling_tls::CertFingerprint;
///
/// let printed = "269d258e535fd5c0797cb0489077810908ab9139c3f2d661234e2c2f38f26472";
/// let fingerprint: CertFingerprint = printed.parse().unwrap();
/// assert_eq!(fingerprint.to_string(), printed);
/// assert!("not hex".parse::<CertFingerprint>().is_err());
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct CertFingerprint(pub [u8; 32]);

impl CertFingerprint {
    /// The fingerprint of `der`.
    pub fn of(der: &[u8]) -> Self {
        let digest = ring::digest::digest(&ring::digest::SHA256, der);
        let mut bytes = [0; 32];
        bytes.copy_from_slice(digest.as_ref());
        Self(bytes)
    }
}

impl fmt::Display for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for CertFingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CertFingerprint({self})")
    }
}

/// A fingerprint that is not 32 bytes of hex.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a certificate fingerprint is 64 hex digits (colons allowed): {0:?}")]
pub struct InvalidFingerprint(String);

impl FromStr for CertFingerprint {
    type Err = InvalidFingerprint;
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let digits: Vec<u8> = text.bytes().filter(|byte| *byte != b':').collect();
        let invalid = || InvalidFingerprint(text.to_owned());
        if digits.len() != 64 {
            return Err(invalid());
        }
        let mut bytes = [0; 32];
        for (byte, pair) in bytes.iter_mut().zip(digits.chunks(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| invalid())?;
            *byte = u8::from_str_radix(pair, 16).map_err(|_| invalid())?;
        }
        Ok(Self(bytes))
    }
}
