//! One of two transports, chosen per link: a client that races QUIC
//! against the fallback holds whichever won as an `Either<Quic, Ws>` link,
//! and the code that drives it stays generic over one transport.

use std::io;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use calling_api::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::{DatagramSource, Link, LinkClosed, MediaLink, SignalWrite, Transport};

/// Transport `A` or transport `B`.
#[derive(Debug)]
pub struct Either<A, B>(PhantomData<(A, B)>);

impl<A: Transport, B: Transport> Transport for Either<A, B> {
    type Media = EitherPart<A::Media, B::Media>;
    type Write = EitherPart<A::Write, B::Write>;
    type Read = EitherPart<A::Read, B::Read>;
}

/// A part (media, writer, reader) of transport `A` or of transport `B`.
#[derive(Debug, Clone)]
pub enum EitherPart<A, B> {
    /// The first transport's.
    First(A),
    /// The second transport's.
    Second(B),
}

impl<A: Transport, B: Transport, In: DeserializeOwned, Out: Serialize> Link<Either<A, B>, In, Out> {
    /// A link of the first transport.
    pub fn first(link: Link<A, In, Out>) -> Self {
        Self {
            media: EitherPart::First(link.media),
            send: link.send.map_writer(EitherPart::First),
            recv: link.recv.map_reader(EitherPart::First),
        }
    }

    /// A link of the second transport.
    pub fn second(link: Link<B, In, Out>) -> Self {
        Self {
            media: EitherPart::Second(link.media),
            send: link.send.map_writer(EitherPart::Second),
            recv: link.recv.map_reader(EitherPart::Second),
        }
    }
}

impl<A: MediaLink, B: MediaLink> MediaLink for EitherPart<A, B> {
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
        match self {
            Self::First(media) => media.send_datagram(datagram),
            Self::Second(media) => media.send_datagram(datagram),
        }
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        match self {
            Self::First(media) => media.close(code, reason),
            Self::Second(media) => media.close(code, reason),
        }
    }

    fn datagrams_over_stream(&self) -> bool {
        match self {
            Self::First(media) => media.datagrams_over_stream(),
            Self::Second(media) => media.datagrams_over_stream(),
        }
    }

    fn max_datagram_size(&self) -> Option<usize> {
        match self {
            Self::First(media) => media.max_datagram_size(),
            Self::Second(media) => media.max_datagram_size(),
        }
    }

    fn path_stats(&self) -> Option<crate::PathStats> {
        match self {
            Self::First(media) => media.path_stats(),
            Self::Second(media) => media.path_stats(),
        }
    }
}

impl<A: DatagramSource, B: DatagramSource> DatagramSource for EitherPart<A, B> {
    async fn recv_datagram(&self) -> Result<Bytes, LinkClosed> {
        match self {
            Self::First(media) => media.recv_datagram().await,
            Self::Second(media) => media.recv_datagram().await,
        }
    }
}

impl<A: AsyncRead + Unpin, B: AsyncRead + Unpin> AsyncRead for EitherPart<A, B> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::First(reader) => Pin::new(reader).poll_read(cx, buf),
            Self::Second(reader) => Pin::new(reader).poll_read(cx, buf),
        }
    }
}

impl<A: AsyncWrite + Unpin, B: AsyncWrite + Unpin> AsyncWrite for EitherPart<A, B> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::First(writer) => Pin::new(writer).poll_write(cx, buf),
            Self::Second(writer) => Pin::new(writer).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::First(writer) => Pin::new(writer).poll_flush(cx),
            Self::Second(writer) => Pin::new(writer).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Self::First(writer) => Pin::new(writer).poll_shutdown(cx),
            Self::Second(writer) => Pin::new(writer).poll_shutdown(cx),
        }
    }
}

impl<A: SignalWrite, B: SignalWrite> SignalWrite for EitherPart<A, B> {
    async fn delivered(&mut self) {
        match self {
            Self::First(writer) => writer.delivered().await,
            Self::Second(writer) => writer.delivered().await,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use crate::memory::{Memory, pair};

    /// Both arms carry frames and datagrams as the transport under them.
    #[tokio::test]
    async fn either_arm_carries_the_link() {
        type Both = Either<Memory, Memory>;
        let (client, server): (Link<Memory, u32, u32>, Link<Memory, u32, u32>) = pair();
        let mut client: Link<Both, u32, u32> = Link::second(client);
        let mut server: Link<Both, u32, u32> = Link::first(server);
        client.send.send(&7).await.unwrap();
        assert_eq!(server.recv.recv().await.unwrap(), Some(7));
        server
            .media
            .send_datagram(Bytes::from_static(b"a"))
            .unwrap();
        assert_eq!(&client.media.recv_datagram().await.unwrap()[..], b"a");
    }
}
