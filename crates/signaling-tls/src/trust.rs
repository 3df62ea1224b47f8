//! The client side: deciding to trust the server's certificate (by
//! fingerprint, a CA file or the system's roots).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::{CertFingerprint, TlsError, provider};

/// How a client decides to trust the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ServerTrust {
    /// Exactly the certificate with this SHA-256 fingerprint, whatever its
    /// issuer, names or dates: for a development server's self-signed
    /// certificate, whose fingerprint it prints at start.
    Fingerprint(CertFingerprint),
    /// Certificates issued by the CAs in this PEM file, for the server name.
    CaFile(PathBuf),
    /// Certificates issued by the operating system's trusted roots, for the
    /// server name.
    SystemRoots,
}

/// The TLS 1.3 client configuration that trusts the server as `trust`
/// says, without ALPN: for every transport (QUIC adds its ALPN, the
/// fallback over TCP its own).
pub fn tls_client_config(trust: &ServerTrust) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let tls = match trust {
        ServerTrust::Fingerprint(fingerprint) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(FingerprintVerifier {
                expected: *fingerprint,
                provider: provider(),
            }))
            .with_no_client_auth(),
        ServerTrust::CaFile(path) => {
            let mut roots = RootCertStore::empty();
            for cert in CertificateDer::pem_file_iter(path)
                .map_err(|error| TlsError::Certificate(format!("{}: {error}", path.display())))?
            {
                let cert = cert.map_err(|error| {
                    TlsError::Certificate(format!("{}: {error}", path.display()))
                })?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(TlsError::Certificate(format!(
                    "{}: no CA certificate",
                    path.display()
                )));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        ServerTrust::SystemRoots => {
            let mut roots = RootCertStore::empty();
            let loaded = rustls_native_certs::load_native_certs();
            let (added, _ignored) = roots.add_parsable_certificates(loaded.certs);
            if added == 0 {
                return Err(TlsError::Certificate(
                    "no system root certificates found".into(),
                ));
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    Ok(tls)
}

/// Trusts exactly one certificate, by its SHA-256. Signatures are still
/// verified, so the server must hold that certificate's key.
#[derive(Debug)]
struct FingerprintVerifier {
    expected: CertFingerprint,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for FingerprintVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if CertFingerprint::of(end_entity) == self.expected {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}
