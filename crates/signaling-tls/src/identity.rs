//! The server's certificate: self-signed for development (made once, kept in
//! the data directory) or from PEM files; its TLS 1.3 server configuration.

use std::fmt;
use std::fs;
use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::{CertFingerprint, TlsError, provider};

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
    pub fn self_signed(names: &[String]) -> Result<Self, TlsError> {
        let certified = rcgen::generate_simple_self_signed(names.to_vec())
            .map_err(|error| TlsError::Certificate(error.to_string()))?;
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
    pub fn load_or_create_self_signed(dir: &Path, names: &[String]) -> Result<Self, TlsError> {
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
    pub fn from_pem_files(cert_path: &Path, key_path: &Path) -> Result<Self, TlsError> {
        let cert_chain = CertificateDer::pem_file_iter(cert_path)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|error| TlsError::Certificate(format!("{}: {error}", cert_path.display())))?;
        if cert_chain.is_empty() {
            return Err(TlsError::Certificate(format!(
                "{}: no certificate",
                cert_path.display()
            )));
        }
        let key = PrivateKeyDer::from_pem_file(key_path)
            .map_err(|error| TlsError::Certificate(format!("{}: {error}", key_path.display())))?;
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

    /// The TLS 1.3 server configuration (ring) that presents this
    /// certificate, without ALPN: every listener (QUIC, the fallback over
    /// TCP, the cluster's node links) adds its own.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let (chain, key) = self.clone_parts();
        Ok(rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_single_cert(chain, key)?)
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
