//! [`TlsError`]: why a certificate, a key or a TLS configuration could not
//! be had.

/// Why a TLS identity or configuration could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    /// rustls refused the configuration (a bad certificate or key, …).
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A certificate or key could not be read, parsed or made.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Reading or writing a certificate or key file failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}
