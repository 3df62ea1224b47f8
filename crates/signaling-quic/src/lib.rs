#![doc = include_str!("../README.md")]

#[cfg(target_os = "linux")]
mod batching;
mod client;
mod error;
mod link;
mod send_stats;
mod server;
mod steering;
mod tuning;

pub use client::{ClientConnection, client_config, connect, connect_on};
pub use error::{TransportError, close, close_code_of, close_endpoint};
pub use link::{Quic, QuicMedia, QuicSend};
pub use send_stats::{SendCounts, SendStats};
pub use server::{
    Established, QuicAttempt, QuicServer, ServerConnection, server_config, server_config_with,
};
/// The TLS identity and trust this crate's API takes, from the crate every
/// transport shares.
pub use signaling_tls::{CertFingerprint, ServerIdentity, ServerTrust};
pub use steering::MAX_ENDPOINTS;
pub use tuning::{
    ALPN, IDLE_TIMEOUT, KEEP_ALIVE, SERVER_UNI_STREAMS, server_transport_config, transport_config,
};
