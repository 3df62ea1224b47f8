//! An in-memory transport, for tests of the glue above the seam (the
//! server's hub and relay, a session loop) without sockets: [`pair`] makes
//! two connected ends.
//!
//! Datagrams are delivered in order and never lost, until either end closes
//! the link; the signaling stream is a tokio duplex pipe.

use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use calling_api::ErrorCode;
use tokio::io::{DuplexStream, ReadHalf, WriteHalf};
use tokio::sync::mpsc;

use crate::{DatagramSource, FramedRecv, FramedSend, Link, LinkClosed, MediaLink, SignalWrite};

/// The in-memory transport.
#[derive(Debug)]
pub struct Memory;

impl crate::Transport for Memory {
    type Media = MemoryMedia;
    type Write = WriteHalf<DuplexStream>;
    type Read = ReadHalf<DuplexStream>;
}

impl SignalWrite for WriteHalf<DuplexStream> {
    async fn delivered(&mut self) {
        // A pipe holds what was written until the other end reads it.
    }
}

#[derive(Debug)]
struct Shared {
    /// How the link was closed, by whichever end closed it first.
    closed: Mutex<Option<ErrorCode>>,
}

/// One end's datagrams.
#[derive(Debug, Clone)]
pub struct MemoryMedia {
    to_peer: mpsc::UnboundedSender<Bytes>,
    from_peer: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<Bytes>>>,
    shared: Arc<Shared>,
}

impl MemoryMedia {
    /// The code the link was closed with, by either end.
    pub fn closed_with(&self) -> Option<ErrorCode> {
        *self
            .shared
            .closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl MediaLink for MemoryMedia {
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
        if self.closed_with().is_some() {
            return Err(LinkClosed);
        }
        self.to_peer.send(datagram).map_err(|_| LinkClosed)
    }

    fn close(&self, code: ErrorCode, _reason: &str) {
        let mut closed = self
            .shared
            .closed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        closed.get_or_insert(code);
    }
}

impl DatagramSource for MemoryMedia {
    async fn recv_datagram(&self) -> Result<Bytes, LinkClosed> {
        if self.closed_with().is_some() {
            return Err(LinkClosed);
        }
        self.from_peer.lock().await.recv().await.ok_or(LinkClosed)
    }
}

/// Two connected ends: `A` sends `AOut` and receives `BOut`, and the other
/// way round.
pub fn pair<AOut, BOut>() -> (Link<Memory, BOut, AOut>, Link<Memory, AOut, BOut>)
where
    AOut: serde::Serialize + serde::de::DeserializeOwned,
    BOut: serde::Serialize + serde::de::DeserializeOwned,
{
    let (a_stream, b_stream) = tokio::io::duplex(64 * 1024);
    let (a_read, a_write) = tokio::io::split(a_stream);
    let (b_read, b_write) = tokio::io::split(b_stream);
    let (a_tx, b_rx) = mpsc::unbounded_channel();
    let (b_tx, a_rx) = mpsc::unbounded_channel();
    let shared = Arc::new(Shared {
        closed: Mutex::new(None),
    });
    let a = Link {
        media: MemoryMedia {
            to_peer: a_tx,
            from_peer: Arc::new(tokio::sync::Mutex::new(a_rx)),
            shared: Arc::clone(&shared),
        },
        send: FramedSend::new(a_write),
        recv: FramedRecv::new(a_read),
    };
    let b = Link {
        media: MemoryMedia {
            to_peer: b_tx,
            from_peer: Arc::new(tokio::sync::Mutex::new(b_rx)),
            shared,
        },
        send: FramedSend::new(b_write),
        recv: FramedRecv::new(b_read),
    };
    (a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use signaling_proto::{ClientMessage, ServerMessage};

    #[tokio::test]
    async fn frames_and_datagrams_cross_until_closed() {
        let (mut client, mut server) = pair::<ClientMessage, ServerMessage>();
        client
            .send
            .send(&ClientMessage::Ping { nonce: 7 })
            .await
            .unwrap();
        assert_eq!(
            server.recv.recv().await.unwrap(),
            Some(ClientMessage::Ping { nonce: 7 })
        );
        client
            .media
            .send_datagram(Bytes::from_static(b"hi"))
            .unwrap();
        assert_eq!(&server.media.recv_datagram().await.unwrap()[..], b"hi");
        server
            .send
            .finish_and_flush(std::time::Duration::from_secs(1))
            .await;
        assert_eq!(client.recv.recv().await.unwrap(), None);
        server.media.close(ErrorCode::KICKED_OFFLINE, "bye");
        assert_eq!(client.media.closed_with(), Some(ErrorCode::KICKED_OFFLINE));
        assert_eq!(
            client.media.send_datagram(Bytes::from_static(b"x")),
            Err(LinkClosed)
        );
        assert_eq!(client.media.recv_datagram().await, Err(LinkClosed));
    }

    #[tokio::test]
    async fn garbage_on_the_stream_is_a_protocol_error() {
        use tokio::io::AsyncWriteExt;
        let (mut client, mut server) = pair::<ClientMessage, ServerMessage>();
        client
            .send
            .get_mut()
            .write_all(&[0, 0, 0, 2, 0xff, 0xff])
            .await
            .unwrap();
        let error = server.recv.recv().await.unwrap_err();
        assert_eq!(error.code(), ErrorCode::PROTOCOL_ERROR);
    }
}
