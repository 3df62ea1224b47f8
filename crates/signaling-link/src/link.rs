//! What a transport provides: a media link, a signaling stream, and how
//! they come together as one [`Link`].

use std::fmt;
use std::future::Future;

use bytes::Bytes;
use calling_api::ErrorCode;
use tokio::io::AsyncRead;

use crate::{FramedRecv, FramedSend, SignalWrite};

/// The link is closed: nothing more goes through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the link is closed")]
pub struct LinkClosed;

/// The audio side of a link, as the relay and the capture thread use it:
/// object-safe, so that `Arc<dyn MediaLink>` stands for any transport.
pub trait MediaLink: Send + Sync + fmt::Debug + 'static {
    /// Queues one datagram without waiting. A full queue drops the oldest
    /// datagrams (stale audio is worse than lost audio); an error means the
    /// link is closed.
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed>;

    /// Closes the whole link, telling the peer `code` (an [`ErrorCode`]
    /// number) and `reason`.
    fn close(&self, code: ErrorCode, reason: &str);

    /// What the transport measured of its path so far, if it measures:
    /// the server's metrics sample it.
    fn path_stats(&self) -> Option<PathStats> {
        None
    }

    /// Whether datagrams travel over a reliable byte stream (the fallback
    /// over TCP) rather than as datagrams.
    fn datagrams_over_stream(&self) -> bool {
        false
    }

    /// The largest datagram the link can send now, if it has a limit
    /// (QUIC: what the path and the peer allow). A larger one is not sent.
    fn max_datagram_size(&self) -> Option<usize> {
        None
    }
}

/// A link's path as its transport measured it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathStats {
    /// The smoothed round-trip time.
    pub rtt: std::time::Duration,
    /// Packets sent so far.
    pub sent_packets: u64,
    /// Of those, packets declared lost.
    pub lost_packets: u64,
}

/// The receiving side of a link's datagrams.
pub trait DatagramSource: Send + Sync + 'static {
    /// The next datagram; an error once the link is closed. Cancel-safe.
    fn recv_datagram(&self) -> impl Future<Output = Result<Bytes, LinkClosed>> + Send;
}

/// A transport: the types of its three parts.
pub trait Transport: Send + 'static {
    /// The datagram side, cloned wherever audio is sent or received.
    type Media: MediaLink + DatagramSource + Clone;
    /// The signaling stream's writing half.
    type Write: SignalWrite;
    /// The signaling stream's reading half.
    type Read: AsyncRead + Unpin + Send + 'static;
}

/// One established link: its datagrams, and its signaling stream sending
/// `Out` and receiving `In` (the server's links receive client messages).
pub struct Link<T: Transport, In, Out> {
    /// Datagrams, and closing the whole link.
    pub media: T::Media,
    /// Frames to the peer.
    pub send: FramedSend<T::Write, Out>,
    /// Frames from the peer.
    pub recv: FramedRecv<T::Read, In>,
}

impl<T: Transport, In, Out> fmt::Debug for Link<T, In, Out> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Link")
            .field("media", &self.media)
            .finish_non_exhaustive()
    }
}
