//! OpenCalling's QUIC transport: quinn + rustls (ring provider only).
//!
//! One connection per logged-in client carries:
//! - one bidirectional stream of length-prefixed signaling frames
//!   (`signaling-link`'s framing over quinn's streams), opened by the client;
//! - unreliable DATAGRAM frames for audio (negotiated on every connection,
//!   with `signaling-proto`'s media header in front of each Opus packet).
//!
//! The server side ([`QuicServer`]) enforces a connection cap and a per-IP
//! cap, validates addresses with a Retry once it is busy, and keeps its
//! stateless-reset key stable across restarts (the caller persists the seed).
//! The client side ([`connect`]) trusts a server by certificate fingerprint
//! (development), by a CA file, or by the system roots ([`ServerTrust`]).
//! Connections close with an application code that is an [`ErrorCode`]
//! number, so both ends can say why.
//!
//! Both are the transport seam of `signaling-link` ([`Quic`] implements
//! its `Transport`; a connection is a `MediaLink`), so the server and the
//! SDK above it never name quinn.
//!
//! This crate holds no call logic (that is `signaling-proto`) and never
//! touches audio devices or codecs. Transport settings follow the design
//! brief: see [`transport_config`].
//!
//! [`ErrorCode`]: calling_api::ErrorCode

mod address;
mod client;
mod error;
mod identity;
mod link;
mod server;
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
    ServerConnection, ServerLimits,
};
pub use tuning::{ALPN, IDLE_TIMEOUT, KEEP_ALIVE, transport_config};

/// Re-exported so users of this crate name quinn's types without depending
/// on quinn themselves.
pub use quinn;
