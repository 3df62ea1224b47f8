//! Transport errors, and closing connections with an error code both ends
//! understand.

use calling_api::ErrorCode;

/// Why a transport operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// Binding the UDP socket failed.
    #[error("cannot bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS configuration was refused (bad certificate or key, …).
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// A certificate or key could not be read or made.
    #[error("certificate: {0}")]
    Certificate(String),
    /// Connecting failed before the handshake started.
    #[error("connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// Writing to the signaling stream failed.
    #[error("write: {0}")]
    Write(#[from] quinn::WriteError),
    /// Reading from the signaling stream failed.
    #[error("read: {0}")]
    Read(#[from] quinn::ReadError),
    /// The peer sent bytes that are not valid frames or messages.
    #[error("protocol: {0}")]
    Protocol(#[from] signaling_proto::FrameError),
    /// The signaling stream failed.
    #[error(transparent)]
    Link(#[from] signaling_link::LinkError),
    /// The peer ended the signaling stream.
    #[error("the peer closed the signaling stream")]
    StreamClosed,
    /// The peer took too long.
    #[error("timed out: {0}")]
    TimedOut(&'static str),
    /// A browser (HTTP/3) connected where only native clients are served.
    #[error("a browser's connection where a native client's was expected")]
    NotNative,
    /// Any other I/O failure.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl From<signaling_tls::TlsError> for TransportError {
    fn from(error: signaling_tls::TlsError) -> Self {
        match error {
            signaling_tls::TlsError::Config(error) => Self::Tls(error),
            signaling_tls::TlsError::Io(error) => Self::Io(error),
            other => Self::Certificate(other.to_string()),
        }
    }
}

/// TLS alerts (RFC 8446) that say the certificate was not trusted, as
/// QUIC carries them: crypto error 0x100 + alert.
const CERTIFICATE_ALERTS: [u8; 7] = [
    42, // bad_certificate (the name does not match)
    43, // unsupported_certificate
    44, // certificate_revoked
    45, // certificate_expired
    46, // certificate_unknown
    48, // unknown_ca
    49, // access_denied (our fingerprint check)
];

/// The TLS alert no_application_protocol: the peer speaks no ALPN we offer.
const NO_APPLICATION_PROTOCOL: u8 = 120;

/// QUIC's CONNECTION_REFUSED: the server would not take the connection.
const CONNECTION_REFUSED: u64 = 0x2;

/// What a QUIC transport error code says, for someone connecting.
fn connect_code_of(code: quinn::TransportErrorCode) -> ErrorCode {
    let code = u64::from(code);
    if code == CONNECTION_REFUSED {
        return ErrorCode::SERVER_BUSY;
    }
    match code
        .checked_sub(0x100)
        .and_then(|alert| u8::try_from(alert).ok())
    {
        Some(NO_APPLICATION_PROTOCOL) => ErrorCode::PROTOCOL_MISMATCH,
        Some(alert) if CERTIFICATE_ALERTS.contains(&alert) => ErrorCode::CERTIFICATE_UNTRUSTED,
        _ => ErrorCode::SERVER_UNREACHABLE,
    }
}

impl TransportError {
    /// The error code an application should see when connecting failed
    /// with this error: the server could not be reached, was not trusted,
    /// speaks another protocol, refused, or closed with a code of ours.
    pub fn connect_code(&self) -> ErrorCode {
        match self {
            Self::Connection(quinn::ConnectionError::ApplicationClosed(_)) => self.code(),
            Self::Connection(quinn::ConnectionError::TransportError(error)) => {
                connect_code_of(error.code)
            }
            Self::Connection(quinn::ConnectionError::ConnectionClosed(close)) => {
                connect_code_of(close.error_code)
            }
            Self::Connection(quinn::ConnectionError::VersionMismatch) => {
                ErrorCode::PROTOCOL_MISMATCH
            }
            // The local trust configuration is unusable (unreadable CA file…).
            Self::Tls(_) | Self::Certificate(_) => self.code(),
            Self::Protocol(_) | Self::Link(_) | Self::NotNative => ErrorCode::PROTOCOL_MISMATCH,
            Self::Connection(_)
            | Self::Connect(_)
            | Self::Bind { .. }
            | Self::Io(_)
            | Self::TimedOut(_)
            | Self::Write(_)
            | Self::Read(_)
            | Self::StreamClosed => ErrorCode::SERVER_UNREACHABLE,
        }
    }

    /// The error code an application should see for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Connection(error) => close_code_of(error).unwrap_or(ErrorCode::CONNECTION_LOST),
            Self::Protocol(_) => ErrorCode::PROTOCOL_ERROR,
            Self::NotNative => ErrorCode::PROTOCOL_MISMATCH,
            Self::Link(error) => error.code(),
            Self::TimedOut(_) => ErrorCode::TIMEOUT,
            Self::Tls(_) | Self::Certificate(_) | Self::Bind { .. } | Self::Io(_) => {
                ErrorCode::INTERNAL
            }
            Self::Connect(_) | Self::Write(_) | Self::Read(_) | Self::StreamClosed => {
                ErrorCode::CONNECTION_LOST
            }
        }
    }
}

/// Closes `connection` with `code` as the application close code.
pub fn close(connection: &quinn::Connection, code: ErrorCode, reason: &str) {
    let number = u32::try_from(code.as_i32()).unwrap_or(0);
    connection.close(quinn::VarInt::from_u32(number), reason.as_bytes());
}

/// The [`ErrorCode`] a peer closed the connection with, if it closed it
/// with one.
pub fn close_code_of(error: &quinn::ConnectionError) -> Option<ErrorCode> {
    match error {
        quinn::ConnectionError::ApplicationClosed(close) => {
            i32::try_from(close.error_code.into_inner())
                .ok()
                .map(ErrorCode)
        }
        _ => None,
    }
}

/// Closes every connection of `endpoint` with `code`.
pub fn close_endpoint(endpoint: &quinn::Endpoint, code: ErrorCode) {
    let number = u32::try_from(code.as_i32()).unwrap_or(0);
    endpoint.close(quinn::VarInt::from_u32(number), code.message().as_bytes());
}
