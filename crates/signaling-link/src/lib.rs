#![doc = include_str!("../README.md")]

pub mod either;
pub mod memory;

mod framed;
mod link;

pub use framed::{FramedRecv, FramedSend, LinkError, SignalWrite};
pub use link::{DatagramSource, Link, LinkClosed, MediaLink, PathStats, Transport};

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
