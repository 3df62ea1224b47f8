//! The seam between OpenCalling's call logic and its transports.
//!
//! A client's link to the server carries two things, whatever the transport:
//! a reliable, ordered byte stream of signaling frames, and unreliable audio
//! datagrams. This crate names both without naming a transport:
//!
//! - [`FramedSend`] / [`FramedRecv`]: whole messages as `signaling-proto`
//!   frames over any tokio [`AsyncWrite`](tokio::io::AsyncWrite) /
//!   [`AsyncRead`](tokio::io::AsyncRead);
//! - [`MediaLink`]: sending datagrams and closing the link, object-safe, so
//!   the server's hub and relay hold an `Arc<dyn MediaLink>` per connection
//!   and never learn what is behind it; [`DatagramSource`]: receiving them;
//! - [`Transport`] and [`Link`]: the three parts of one established link, as
//!   the server's connection task and the SDK's session task own it, generic
//!   over the transport;
//! - [`memory`]: an in-memory transport for tests of the glue;
//! - [`either`]: one of two transports, for a client that races them;
//! - [`sleep_until`]: the timer branch of a glue loop.
//!
//! `signaling-quic` implements the seam for QUIC (one bidirectional stream,
//! DATAGRAM frames), `signaling-ws` for the fallback over TCP. This crate never opens a socket, never spawns a task,
//! and holds no call logic.

pub mod either;
pub mod memory;

mod framed;
mod link;

pub use framed::{FramedRecv, FramedSend, LinkError};
pub use link::{DatagramSource, Link, LinkClosed, MediaLink, PathStats, SignalWrite, Transport};

/// Sleeps until a state machine's next deadline (its `poll_timeout`), or
/// forever when it has none: the timer branch of a glue loop's `select!`.
pub async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(deadline) => {
            tokio::time::sleep_until(tokio::time::Instant::from_std(deadline)).await;
        }
        None => std::future::pending().await,
    }
}
