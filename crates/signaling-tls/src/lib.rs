#![doc = include_str!("../README.md")]

mod browser;
mod error;
mod fingerprint;
mod identity;
mod trust;

use std::sync::Arc;

pub use browser::{
    BROWSER_CERT_SERVED_FOR, BROWSER_CERT_VALIDITY, BrowserCertificates, CertificateChooser,
    WEBTRANSPORT_ALPN,
};
pub use error::TlsError;
pub use fingerprint::{CertFingerprint, InvalidFingerprint};
pub use identity::{ServerIdentity, write_private};
pub use trust::{ServerTrust, tls_client_config};

/// The one crypto provider of every configuration: ring (two providers
/// in one process make rustls panic at run time).
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}
