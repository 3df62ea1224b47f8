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
    /// Any other I/O failure.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl TransportError {
    /// The error code an application should see for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Connection(error) => close_code_of(error).unwrap_or(ErrorCode::CONNECTION_LOST),
            Self::Protocol(_) => ErrorCode::PROTOCOL_ERROR,
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
