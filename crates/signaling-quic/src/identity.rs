//! The server's certificate: self-signed for development (made once, kept in
//! the data directory) or from PEM files; fingerprints to pin it.

use std::fmt;
use std::fs;
use std::path::Path;
use std::str::FromStr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::TransportError;

/// SHA-256 of a certificate's DER encoding: how a development client pins a
/// self-signed server.
///
/// It prints and parses as 64 hex digits (colons between bytes are allowed
/// when parsing, either case), as a development server prints it:
///
/// ```
/// use signaling_quic::CertFingerprint;
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

/// The server's certificate chain and private key.
pub struct ServerIdentity {
    /// Leaf first.
    pub cert_chain: Vec<CertificateDer<'static>>,
    /// The leaf's key.
    pub key: PrivateKeyDer<'static>,
}

impl fmt::Debug for ServerIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key never reaches a log line.
        f.debug_struct("ServerIdentity")
            .field("fingerprint", &self.fingerprint())
            .field("chain_len", &self.cert_chain.len())
            .finish_non_exhaustive()
    }
}

const CERT_FILE: &str = "cert.der";
const KEY_FILE: &str = "key.der";

impl ServerIdentity {
    /// A fresh self-signed certificate for `names` (DNS names or IPs).
    pub fn self_signed(names: &[String]) -> Result<Self, TransportError> {
        let certified = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|error| TransportError::Certificate(error.to_string()))?;
        Ok(Self {
            cert_chain: vec![certified.cert.der().clone()],
            key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
                certified.signing_key.serialize_der(),
            )),
        })
    }

    /// The self-signed development identity kept in `dir`: made once
    /// (`cert.der`, `key.der`, the key readable by the owner only), then
    /// reused, so its fingerprint stays the same across restarts.
    pub fn load_or_create_self_signed(
        dir: &Path,
        names: &[String],
    ) -> Result<Self, TransportError> {
        let (cert_path, key_path) = (dir.join(CERT_FILE), dir.join(KEY_FILE));
        if cert_path.exists() && key_path.exists() {
            let cert = fs::read(&cert_path)?;
            let key = fs::read(&key_path)?;
            return Ok(Self {
                cert_chain: vec![CertificateDer::from(cert)],
                key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
            });
        }
        let identity = Self::self_signed(names)?;
        fs::create_dir_all(dir)?;
        write_private(&key_path, identity.key.secret_der())?;
        fs::write(&cert_path, identity.leaf())?;
        Ok(identity)
    }

    /// A certificate chain and key from PEM files.
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, TransportError> {
        let cert_chain = CertificateDer::pem_file_iter(cert_path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|error| {
                TransportError::Certificate(format!("{}: {error}", cert_path.display()))
            })?;
        if cert_chain.is_empty() {
            return Err(TransportError::Certificate(format!(
                "{}: no certificate",
                cert_path.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key_path).map_err(|error| {
            TransportError::Certificate(format!("{}: {error}", key_path.display()))
        })?;
        Ok(Self { cert_chain, key })
    }

    /// The leaf certificate's DER bytes.
    pub fn leaf(&self) -> &[u8] {
        self.cert_chain.first().map_or(&[], |cert| cert.as_ref())
    }

    /// The leaf certificate's fingerprint.
    pub fn fingerprint(&self) -> CertFingerprint {
        CertFingerprint::of(self.leaf())
    }

    /// A copy for building a TLS configuration.
    pub fn clone_parts(&self) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
        (self.cert_chain.clone(), self.key.clone_key())
    }
}

/// Writes a secret file (a key) readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)?;
        file.write_all(bytes)
    }
    #[cfg(not(unix))]
    {
        fs::write(path, bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_print_and_parse() {
        let fingerprint = CertFingerprint::of(b"certificate");
        let text = fingerprint.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text.parse::<CertFingerprint>(), Ok(fingerprint));
        let with_colons: String = text
            .as_bytes()
            .chunks(2)
            .map(|pair| std::str::from_utf8(pair).unwrap().to_uppercase())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(with_colons.parse::<CertFingerprint>(), Ok(fingerprint));
        assert!("abc".parse::<CertFingerprint>().is_err());
        assert!("zz".repeat(32).parse::<CertFingerprint>().is_err());
    }

    #[test]
    fn development_identity_is_made_once_and_kept() {
        let dir = std::env::temp_dir().join(format!("opencalling-identity-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let names = vec!["localhost".to_owned()];
        let first = ServerIdentity::load_or_create_self_signed(&dir, &names).unwrap();
        let second = ServerIdentity::load_or_create_self_signed(&dir, &names).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o077, 0, "the key is private");
        }
        assert!(!format!("{first:?}").contains("key:"));
        fs::remove_dir_all(&dir).unwrap();
    }
}
