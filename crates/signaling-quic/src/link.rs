//! QUIC behind the transport seam: a connection's DATAGRAM frames are its
//! media link, its one bidirectional stream the signaling stream.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use calling_api::ErrorCode;
use signaling_link::{DatagramSource, LinkClosed, MediaLink, PathStats, SignalWrite, Transport};
use tokio::io::AsyncWrite;

/// The QUIC transport: a connection's datagrams and one stream.
#[derive(Debug)]
pub struct Quic;

impl Transport for Quic {
    type Media = QuicMedia;
    type Write = QuicSend;
    type Read = quinn::RecvStream;
}

/// A QUIC connection as a media link.
#[derive(Debug, Clone)]
pub struct QuicMedia(pub quinn::Connection);

impl MediaLink for QuicMedia {
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
        // A full send buffer makes quinn drop the oldest datagrams, not
        // fail; only a closed connection (or no datagram support) errs.
        self.0.send_datagram(datagram).map_err(|_| LinkClosed)
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        crate::close(&self.0, code, reason);
    }

    fn max_datagram_size(&self) -> Option<usize> {
        // None from quinn: the peer takes no datagrams at all.
        Some(self.0.max_datagram_size().unwrap_or(0))
    }

    fn path_stats(&self) -> Option<PathStats> {
        let path = self.0.stats().path;
        Some(PathStats {
            rtt: self.0.rtt(),
            sent_packets: path.sent_packets,
            lost_packets: path.lost_packets,
        })
    }
}

impl DatagramSource for QuicMedia {
    async fn recv_datagram(&self) -> Result<Bytes, LinkClosed> {
        self.0.read_datagram().await.map_err(|_| LinkClosed)
    }
}

/// The sending half of a QUIC stream as a signaling stream.
#[derive(Debug)]
pub struct QuicSend(pub quinn::SendStream);

impl AsyncWrite for QuicSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        AsyncWrite::poll_shutdown(Pin::new(&mut self.0), cx)
    }
}

impl SignalWrite for QuicSend {
    async fn delivered(&mut self) {
        // Resolves once the peer acknowledged the finished stream, or
        // stopped it, or the connection is gone.
        let _ = self.0.stopped().await;
    }
}
