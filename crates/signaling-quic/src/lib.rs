#![doc = include_str!("../README.md")]

mod address;
#[cfg(target_os = "linux")]
mod batching;
mod client;
mod error;
mod identity;
mod link;
mod server;
mod steering;
mod tuning;

pub use address::AddressBlock;
pub use client::{
    ClientConnection, ServerTrust, client_config, connect, connect_on, tls_client_config,
};
pub use error::{TransportError, close, close_code_of, close_endpoint};
pub use identity::InvalidFingerprint;
pub use identity::{CertFingerprint, ServerIdentity, write_private};
pub use link::{Quic, QuicMedia, QuicSend};
pub use server::{
    AcceptedConnection, AdmissionCounts, AdmissionStats, IpSlot, PreLoginSlot, QuicServer,
    SendCounts, SendStats, ServerConnection, ServerLimits, server_config,
};
pub use steering::MAX_ENDPOINTS;
pub use tuning::{ALPN, IDLE_TIMEOUT, KEEP_ALIVE, transport_config};

/// Re-exported so users of this crate name quinn's types without depending
/// on quinn themselves.
pub use quinn;
