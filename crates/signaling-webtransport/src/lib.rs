#![doc = include_str!("../README.md")]

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use calling_api::ErrorCode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use signaling_link::{
    DatagramSource, FramedRecv, FramedSend, Link, LinkClosed, MediaLink, PathStats, SignalWrite,
    Transport,
};
use tokio::io::AsyncWrite;
use tracing::debug;

/// The path of the session a page opens: `https://HOST:PORT/opencalling`.
pub const PATH: &str = "/opencalling";

/// The ALPN of HTTP/3, which a WebTransport client offers.
pub const ALPN: &[u8] = b"h3";

/// Why a WebTransport session could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WebTransportError {
    /// The HTTP/3 or WebTransport handshake failed (the client spoke
    /// something else, or went away).
    #[error("WebTransport handshake: {0}")]
    Handshake(String),
    /// The page asked for another path than [`PATH`] (answered `404`).
    #[error("a WebTransport session at {0:?}, not {PATH}")]
    WrongPath(String),
    /// A step took longer than the handshake's time.
    #[error("no {0} in time")]
    TimedOut(&'static str),
}

/// The WebTransport transport: a session's datagrams and one stream.
#[derive(Debug)]
pub struct WebTransport;

impl Transport for WebTransport {
    type Media = WebMedia;
    type Write = WebSend;
    type Read = web_transport_quinn::RecvStream;
}

/// A WebTransport session as a media link.
#[derive(Debug, Clone)]
pub struct WebMedia(web_transport_quinn::Session);

impl MediaLink for WebMedia {
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
        // As for QUIC: a full buffer drops the oldest; only a closed session
        // fails.
        self.0.send_datagram(datagram).map_err(|_| LinkClosed)
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        // The page's `closed` promise gets the code and reason.
        self.0
            .close(u32::try_from(code.as_i32()).unwrap_or(0), reason.as_bytes());
    }

    fn max_datagram_size(&self) -> Option<usize> {
        // Net of the session id each WebTransport datagram starts with.
        Some(self.0.max_datagram_size())
    }

    fn path_stats(&self) -> Option<PathStats> {
        // The QUIC connection's own figures (the session's shadow them).
        let connection: &quinn::Connection = &self.0;
        let path = connection.stats().path;
        Some(PathStats {
            rtt: connection.rtt(),
            sent_packets: path.sent_packets,
            lost_packets: path.lost_packets,
        })
    }
}

impl DatagramSource for WebMedia {
    async fn recv_datagram(&self) -> Result<Bytes, LinkClosed> {
        self.0.read_datagram().await.map_err(|_| LinkClosed)
    }
}

/// The sending half of a session's stream as a signaling stream.
#[derive(Debug)]
pub struct WebSend(web_transport_quinn::SendStream);

impl AsyncWrite for WebSend {
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

impl SignalWrite for WebSend {
    async fn delivered(&mut self) {
        // The peer acknowledged the finished stream, stopped it, or the
        // session is gone.
        let _ = self.0.stopped().await;
    }
}

/// Serves a page's WebTransport session on `connection` (whose QUIC
/// handshake chose [`ALPN`]): the HTTP/3 and WebTransport handshakes, the
/// path, and the page's signaling stream, all within `timeout`.
pub async fn accept<In: DeserializeOwned, Out: Serialize>(
    connection: quinn::Connection,
    timeout: Duration,
) -> Result<Link<WebTransport, In, Out>, WebTransportError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let handshake = web_transport_quinn::Request::accept(connection.clone());
    let request = match tokio::time::timeout_at(deadline, handshake).await {
        Ok(Ok(request)) => request,
        Ok(Err(error)) => return Err(WebTransportError::Handshake(error.to_string())),
        Err(_) => {
            connection.close(
                ErrorCode::TIMEOUT.as_i32().unsigned_abs().into(),
                b"no WebTransport session in time",
            );
            return Err(WebTransportError::TimedOut("WebTransport session"));
        }
    };
    let path = request.url.path().to_owned();
    if path != PATH {
        debug!(path, "WebTransport session at an unknown path");
        // Told within the same time: a client that reads nothing holds
        // nothing.
        let reject = request.reject(web_transport_quinn::http::StatusCode::NOT_FOUND);
        let _ = tokio::time::timeout_at(deadline, reject).await;
        return Err(WebTransportError::WrongPath(path));
    }
    let session = match tokio::time::timeout_at(deadline, request.ok()).await {
        Ok(Ok(session)) => session,
        Ok(Err(error)) => return Err(WebTransportError::Handshake(error.to_string())),
        Err(_) => return Err(WebTransportError::TimedOut("WebTransport session")),
    };
    let stream = tokio::time::timeout_at(deadline, session.accept_bi()).await;
    let (send, recv) = match stream {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(WebTransportError::Handshake(error.to_string())),
        Err(_) => {
            let media = WebMedia(session);
            media.close(ErrorCode::TIMEOUT, "no signaling stream in time");
            return Err(WebTransportError::TimedOut("signaling stream"));
        }
    };
    Ok(Link {
        media: WebMedia(session),
        send: FramedSend::new(WebSend(send)),
        recv: FramedRecv::new(recv),
    })
}
