//! The client side: connecting to a server and deciding to trust its
//! certificate (fingerprint, CA file or system roots).

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use signaling_proto::{ClientMessage, ServerMessage};

use signaling_link::{FramedRecv, FramedSend, Link};

use crate::{CertFingerprint, Quic, QuicMedia, QuicSend, TransportError, transport_config};

/// How a client decides to trust the server's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
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

/// A connected client: the connection and its signaling stream.
#[derive(Debug)]
pub struct ClientConnection {
    /// The QUIC connection (datagrams, stats, close).
    pub connection: quinn::Connection,
    /// Frames to the server.
    pub send: FramedSend<QuicSend, ClientMessage>,
    /// Frames from the server.
    pub recv: FramedRecv<quinn::RecvStream, ServerMessage>,
    /// Keeps the client's UDP socket alive as long as the connection.
    pub endpoint: quinn::Endpoint,
}

impl ClientConnection {
    /// The connection as the transport seam sees it, and the endpoint to
    /// keep as long as it is open.
    pub fn into_link(self) -> (Link<Quic, ServerMessage, ClientMessage>, quinn::Endpoint) {
        let link = Link {
            media: QuicMedia(self.connection),
            send: self.send,
            recv: self.recv,
        };
        (link, self.endpoint)
    }
}

/// Connects to the server at `addr`, presenting `server_name` for TLS, and
/// opens the signaling stream.
pub async fn connect(
    addr: SocketAddr,
    server_name: &str,
    trust: &ServerTrust,
) -> Result<ClientConnection, TransportError> {
    let bind: SocketAddr = if addr.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let mut endpoint = quinn::Endpoint::client(bind)
        .map_err(|source| TransportError::Bind { addr: bind, source })?;
    endpoint.set_default_client_config(client_config(trust)?);
    connect_on(&endpoint, addr, server_name).await
}

/// Connects through an existing client endpoint (whose default client
/// configuration says how to trust the server): many connections can share
/// one UDP socket, as a load generator's do.
pub async fn connect_on(
    endpoint: &quinn::Endpoint,
    addr: SocketAddr,
    server_name: &str,
) -> Result<ClientConnection, TransportError> {
    let connection = endpoint.connect(addr, server_name)?.await?;
    let (send, recv) = connection.open_bi().await?;
    Ok(ClientConnection {
        connection,
        send: FramedSend::new(QuicSend(send)),
        recv: FramedRecv::new(recv),
        endpoint: endpoint.clone(),
    })
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The client's QUIC configuration for `trust`.
pub fn client_config(trust: &ServerTrust) -> Result<quinn::ClientConfig, TransportError> {
    let mut tls = tls_client_config(trust)?;
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|error| {
        TransportError::Certificate(format!("TLS 1.3 with a QUIC suite is required: {error}"))
    })?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The TLS 1.3 client configuration that trusts the server as `trust`
/// says, without ALPN: for QUIC ([`client_config`]) and for the fallback
/// transport over TCP.
pub fn tls_client_config(trust: &ServerTrust) -> Result<rustls::ClientConfig, TransportError> {
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
            for cert in CertificateDer::pem_file_iter(path).map_err(|error| {
                TransportError::Certificate(format!("{}: {error}", path.display()))
            })? {
                let cert = cert.map_err(|error| {
                    TransportError::Certificate(format!("{}: {error}", path.display()))
                })?;
                roots.add(cert)?;
            }
            if roots.is_empty() {
                return Err(TransportError::Certificate(format!(
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
                return Err(TransportError::Certificate(
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
