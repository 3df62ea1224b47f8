#![doc = include_str!("../README.md")]

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use calling_api::ErrorCode;
use futures_util::{SinkExt, StreamExt};
use signaling_link::{
    DatagramSource, FramedRecv, FramedSend, Link, LinkClosed, MediaLink, SignalWrite, Transport,
};
use signaling_tls::TlsError;
/// The certificate and trust types the listener and [`connect`] take.
pub use signaling_tls::{ServerIdentity, ServerTrust};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, SimplexStream};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, client::IntoClientRequest};
use tracing::debug;

/// The WebSocket's request path.
pub const PATH: &str = "/opencalling";
/// First byte of a message carrying signaling bytes.
pub const KIND_SIGNALING: u8 = 0;
/// First byte of a message carrying one audio datagram.
pub const KIND_DATAGRAM: u8 = 1;
/// Datagrams a sender keeps while the socket is busy; more drop the oldest
/// (160 ms of four speakers' audio at 20 ms a frame).
pub const DATAGRAM_QUEUE: usize = 32;
/// A datagram that waited this long behind a socket that would not take
/// it is dropped instead. Time the writer merely waited for a CPU does
/// not count: the receiver's jitter buffer judges lateness, as it does
/// for QUIC datagrams a busy machine sent late.
pub const STALE_AFTER: Duration = Duration::from_millis(100);
/// The largest WebSocket message either side accepts: a signaling frame
/// (16 KiB) with its length and kind, with room to spare.
pub const MAX_MESSAGE: usize = 64 * 1024;

/// Once the link is closing, how long a write the peer does not take (or
/// the close frame) may still block before the socket is dropped unsent:
/// a peer that stops reading cannot keep its socket after its session.
pub const CLOSE_WITHIN: Duration = Duration::from_millis(500);

/// The kernel's send buffer of an accepted connection (Linux doubles it):
/// what a client that stops reading can hold of the server's memory, where
/// autotuning would let it grow to megabytes, and so how soon its stall
/// shows (a quarter of a second of fifteen speakers' audio).
pub const ACCEPTED_SEND_BUFFER: usize = 128 * 1024;

/// How far the signaling stream may run ahead of the socket.
const STREAM_BUFFER: usize = 64 * 1024;
/// Received datagrams waiting for the reader; more are dropped.
const RECEIVED_DATAGRAMS: usize = 64;

/// Why a fallback connection failed.
#[derive(Debug, thiserror::Error)]
pub enum WsError {
    /// TCP or TLS failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The WebSocket handshake failed.
    #[error("WebSocket: {0}")]
    WebSocket(#[from] tokio_tungstenite::tungstenite::Error),
    /// The TLS configuration could not be built (certificate, trust).
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The server name is not a valid TLS name.
    #[error("invalid server name {0:?}")]
    ServerName(String),
}

impl WsError {
    /// The error code an SDK reports for a failed connection.
    pub fn connect_code(&self) -> ErrorCode {
        match self {
            Self::Io(error)
                if error
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|tls| matches!(tls, rustls::Error::InvalidCertificate(_))) =>
            {
                ErrorCode::CERTIFICATE_UNTRUSTED
            }
            // The local trust configuration is unusable (an unreadable CA
            // file…): as over QUIC.
            Self::Tls(_) => ErrorCode::INTERNAL,
            Self::WebSocket(_) => ErrorCode::PROTOCOL_MISMATCH,
            Self::Io(_) | Self::ServerName(_) => ErrorCode::SERVER_UNREACHABLE,
        }
    }
}

/// The WebSocket fallback transport.
#[derive(Debug)]
pub struct Ws;

impl Transport for Ws {
    type Media = WsMedia;
    type Write = WsWrite;
    type Read = ReadHalf<SimplexStream>;
}

/// What the two pump tasks of one connection share.
#[derive(Debug, Default)]
struct Shared {
    /// Datagrams to send, oldest first.
    outgoing: Mutex<VecDeque<Queued>>,
    /// Nanoseconds the writer has spent in writes so far: waiting for the
    /// socket (TCP backpressure) is what makes a queued datagram stale.
    writing_nanos: AtomicU64,
    wake_writer: Notify,
    /// Why the link closes, once it does; the writer sends it.
    close: Mutex<Option<(ErrorCode, String)>>,
    /// Set (and `closing_changed` notified) once a close was asked for.
    closing: AtomicBool,
    closing_changed: Notify,
    closed: AtomicBool,
    /// Signaling bytes written by the application, and sent on the socket.
    written: AtomicU64,
    sent: AtomicU64,
    sent_changed: Notify,
    dropped_stale: AtomicU64,
}

/// A datagram waiting for the writer.
#[derive(Debug)]
struct Queued {
    at: Instant,
    /// [`Shared::writing_nanos`] when it was queued.
    writing_nanos: u64,
    datagram: Bytes,
}

impl Shared {
    /// How long `queued` has waited behind writes: the writer's time in
    /// writes since it was queued, and at most its age (a write it was
    /// queued during counts only from then on).
    fn waited_behind_writes(&self, queued: &Queued) -> Duration {
        let writing = self
            .writing_nanos
            .load(Ordering::Acquire)
            .saturating_sub(queued.writing_nanos);
        Duration::from_nanos(writing).min(queued.at.elapsed())
    }

    fn lock_outgoing(&self) -> std::sync::MutexGuard<'_, VecDeque<Queued>> {
        self.outgoing.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn shut(&self) {
        self.closed.store(true, Ordering::Release);
        self.wake_writer.notify_one();
        self.sent_changed.notify_waiters();
        self.mark_closing();
    }

    fn mark_closing(&self) {
        self.closing.store(true, Ordering::Release);
        self.closing_changed.notify_waiters();
    }

    /// Completes [`CLOSE_WITHIN`] after the link began closing.
    async fn closing_for_long(&self) {
        self.until_set(&self.closing).await;
        tokio::time::sleep(CLOSE_WITHIN).await;
    }

    /// Completes once the link is shut (the writer has ended).
    async fn shut_down(&self) {
        self.until_set(&self.closed).await;
    }

    /// Completes once `flag` (`closing` or `closed`, which both notify
    /// `closing_changed` when set) is set.
    async fn until_set(&self, flag: &AtomicBool) {
        loop {
            let changed = self.closing_changed.notified();
            if flag.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }

    /// Asks the writer to send a close (the first one asked wins).
    fn request_close(&self, code: ErrorCode, reason: &str) {
        let mut close = self.close.lock().unwrap_or_else(PoisonError::into_inner);
        if close.is_none() {
            *close = Some((code, reason.to_owned()));
        }
        drop(close);
        self.wake_writer.notify_one();
        self.mark_closing();
    }
}

/// A fallback connection's datagrams, and closing it. The connection
/// closes (code 0) when the last clone is dropped, as a QUIC connection
/// does when its last handle goes.
#[derive(Debug, Clone)]
pub struct WsMedia {
    shared: Arc<Shared>,
    received: Arc<tokio::sync::Mutex<mpsc::Receiver<Bytes>>>,
    _last_handle: Arc<CloseOnDrop>,
}

/// Closes its connection when dropped: held by every clone of a
/// [`WsMedia`], so the last one to go closes it.
#[derive(Debug)]
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.request_close(ErrorCode::OK, "");
    }
}

impl WsMedia {
    /// Datagrams dropped because they waited too long to be written.
    pub fn dropped_stale(&self) -> u64 {
        self.shared.dropped_stale.load(Ordering::Relaxed)
    }
}

impl MediaLink for WsMedia {
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
        if self.shared.closed.load(Ordering::Acquire) {
            return Err(LinkClosed);
        }
        {
            let mut outgoing = self.shared.lock_outgoing();
            if outgoing.len() >= DATAGRAM_QUEUE {
                outgoing.pop_front();
                self.shared.dropped_stale.fetch_add(1, Ordering::Relaxed);
            }
            outgoing.push_back(Queued {
                at: Instant::now(),
                writing_nanos: self.shared.writing_nanos.load(Ordering::Acquire),
                datagram,
            });
        }
        self.shared.wake_writer.notify_one();
        Ok(())
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        self.shared.request_close(code, reason);
    }

    fn datagrams_over_stream(&self) -> bool {
        true
    }
}

impl DatagramSource for WsMedia {
    async fn recv_datagram(&self) -> Result<Bytes, LinkClosed> {
        self.received.lock().await.recv().await.ok_or(LinkClosed)
    }
}

/// The signaling stream's writing half: bytes go to the writer task.
#[derive(Debug)]
pub struct WsWrite {
    inner: tokio::io::WriteHalf<SimplexStream>,
    shared: Arc<Shared>,
}

impl AsyncWrite for WsWrite {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.shared.closed.load(Ordering::Acquire) {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        let written = std::task::ready!(Pin::new(&mut this.inner).poll_write(cx, buf))?;
        this.shared
            .written
            .fetch_add(written as u64, Ordering::AcqRel);
        Poll::Ready(Ok(written))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The stream's end is the connection's: from here a write the
        // peer does not take has CLOSE_WITHIN left, as after a close.
        self.shared.mark_closing();
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

impl SignalWrite for WsWrite {
    async fn delivered(&mut self) {
        loop {
            let changed = self.shared.sent_changed.notified();
            let all_sent = self.shared.sent.load(Ordering::Acquire)
                >= self.shared.written.load(Ordering::Acquire);
            if all_sent || self.shared.closed.load(Ordering::Acquire) {
                return;
            }
            changed.await;
        }
    }
}

fn websocket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_MESSAGE))
        .max_frame_size(Some(MAX_MESSAGE))
}

/// Starts the two pump tasks of a WebSocket and returns it as a link.
fn into_link<S, In, Out>(socket: WebSocketStream<S>) -> Link<Ws, In, Out>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    In: serde::de::DeserializeOwned,
    Out: serde::Serialize,
{
    let (sink, stream) = socket.split();
    let shared = Arc::new(Shared::default());
    let (signal_out_read, signal_out_write) = tokio::io::simplex(STREAM_BUFFER);
    let (signal_in_read, signal_in_write) = tokio::io::simplex(STREAM_BUFFER);
    let (datagrams_in, received) = mpsc::channel(RECEIVED_DATAGRAMS);
    tokio::spawn(read_pump(
        stream,
        signal_in_write,
        datagrams_in,
        Arc::clone(&shared),
    ));
    tokio::spawn(write_pump(sink, signal_out_read, Arc::clone(&shared)));
    let media = WsMedia {
        shared: Arc::clone(&shared),
        received: Arc::new(tokio::sync::Mutex::new(received)),
        _last_handle: Arc::new(CloseOnDrop(Arc::clone(&shared))),
    };
    Link {
        media,
        send: FramedSend::new(WsWrite {
            inner: signal_out_write,
            shared,
        }),
        recv: FramedRecv::new(signal_in_read),
    }
}

/// Messages from the peer into the signaling stream and the datagrams.
async fn read_pump<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: futures_util::stream::SplitStream<WebSocketStream<S>>,
    mut signal_in: tokio::io::WriteHalf<SimplexStream>,
    datagrams_in: mpsc::Sender<Bytes>,
    shared: Arc<Shared>,
) {
    loop {
        // Once the writer has ended, nobody will answer: stop reading, so
        // that the socket is dropped even if the peer never sends again.
        let message = tokio::select! {
            message = stream.next() => message,
            () = shared.shut_down() => break,
        };
        let Some(message) = message else { break };
        let data = match message {
            Ok(Message::Binary(data)) => data,
            Ok(Message::Close(_)) | Err(_) => break,
            Ok(Message::Text(_)) => {
                debug!("a text WebSocket message: closing");
                shared.request_close(ErrorCode::PROTOCOL_ERROR, "text message");
                break;
            }
            // Pings are answered by the library; nothing else is used.
            Ok(_) => continue,
        };
        match data.first() {
            Some(&KIND_SIGNALING) => {
                if signal_in.write_all(&data[1..]).await.is_err() {
                    break;
                }
            }
            Some(&KIND_DATAGRAM) => {
                // A reader that falls behind loses audio, not the link.
                let _ = datagrams_in.try_send(data.slice(1..));
            }
            _ => {
                debug!("a WebSocket message of no known kind: closing");
                shared.request_close(ErrorCode::PROTOCOL_ERROR, "unknown kind");
                break;
            }
        }
    }
    // The end of the signaling stream, for its reader (a split simplex
    // ends only by a shutdown).
    let _ = signal_in.shutdown().await;
    // The writer sends the close asked for, if any, then shuts the link.
    if shared
        .close
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .is_none()
    {
        shared.shut();
    }
}

/// The signaling stream, the datagrams and the close to the peer.
async fn write_pump<S: AsyncRead + AsyncWrite + Unpin>(
    mut sink: futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    mut signal_out: ReadHalf<SimplexStream>,
    shared: Arc<Shared>,
) {
    let mut buffer = vec![0_u8; 16 * 1024 + 1];
    let mut stream_open = true;
    loop {
        let close = shared
            .close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((code, reason)) = close {
            let frame = CloseFrame {
                code: close_code(code),
                reason: format!("{} {reason}", code.as_i32()).into(),
            };
            let _ =
                tokio::time::timeout(CLOSE_WITHIN, sink.send(Message::Close(Some(frame)))).await;
            break;
        }
        if shared.closed.load(Ordering::Acquire) {
            break;
        }
        let datagrams: Vec<Queued> = shared.lock_outgoing().drain(..).collect();
        for queued in datagrams {
            if shared.waited_behind_writes(&queued) > STALE_AFTER {
                shared.dropped_stale.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut message = Vec::with_capacity(1 + queued.datagram.len());
            message.push(KIND_DATAGRAM);
            message.extend_from_slice(&queued.datagram);
            if timed_write(&mut sink, &shared, Message::Binary(message.into()))
                .await
                .is_err()
            {
                shared.shut();
                return;
            }
        }
        let wake = shared.wake_writer.notified();
        tokio::select! {
            read = signal_out.read(&mut buffer[1..]), if stream_open => match read {
                Ok(0) | Err(_) => stream_open = false,
                Ok(len) => {
                    buffer[0] = KIND_SIGNALING;
                    let message = Message::Binary(Bytes::copy_from_slice(&buffer[..=len]));
                    if timed_write(&mut sink, &shared, message).await.is_err() {
                        break;
                    }
                    shared.sent.fetch_add(len as u64, Ordering::AcqRel);
                    shared.sent_changed.notify_waiters();
                }
            },
            () = wake => {}
        }
    }
    shared.shut();
}

/// Writes `message`, adding the time it took to the writer's total.
async fn timed_write<S: AsyncRead + AsyncWrite + Unpin>(
    sink: &mut futures_util::stream::SplitSink<WebSocketStream<S>, Message>,
    shared: &Shared,
    message: Message,
) -> Result<(), tokio_tungstenite::tungstenite::Error> {
    let started = Instant::now();
    // A peer that does not read blocks the write: once the link is
    // closing, it gets CLOSE_WITHIN more, then the socket is dropped.
    let written = tokio::select! {
        written = sink.send(message) => written,
        () = shared.closing_for_long() => Err(tokio_tungstenite::tungstenite::Error::ConnectionClosed),
    };
    let took = u64::try_from(started.elapsed().as_nanos()).unwrap_or(u64::MAX);
    shared.writing_nanos.fetch_add(took, Ordering::AcqRel);
    written
}

/// A WebSocket close code for an error code: 1000 for success, 4000 plus
/// the last three digits otherwise (the full code is in the reason).
fn close_code(
    code: ErrorCode,
) -> tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode {
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
    if code.is_ok() {
        CloseCode::Normal
    } else {
        CloseCode::Library(4000 + (code.as_i32().unsigned_abs() % 1000) as u16)
    }
}

/// The server's side: TLS with the server's identity (the QUIC
/// certificate) for any fallback connection.
pub fn server_tls(identity: &ServerIdentity) -> Result<Arc<rustls::ServerConfig>, WsError> {
    let mut tls = identity.server_config()?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(tls))
}

/// Completes the TLS and WebSocket handshakes of an accepted TCP
/// connection. A web page's browser names the page's origin in the
/// upgrade's `Origin` header: the upgrade is refused (`403 Forbidden`)
/// unless `origin_allowed` allows it; a native client sends none.
pub async fn accept<In: serde::de::DeserializeOwned, Out: serde::Serialize>(
    tcp: TcpStream,
    tls: Arc<rustls::ServerConfig>,
    origin_allowed: impl Fn(&str) -> bool + Unpin,
) -> Result<Link<Ws, In, Out>, WsError> {
    let _ = tcp.set_nodelay(true);
    let _ = socket2::SockRef::from(&tcp).set_send_buffer_size(ACCEPTED_SEND_BUFFER);
    let tls = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await?;
    #[allow(clippy::result_large_err)] // the callback's type is tungstenite's
    let check = move |request: &Request, response: Response| {
        upgrade_answer(request, response, &origin_allowed)
    };
    let socket =
        tokio_tungstenite::accept_hdr_async_with_config(tls, check, Some(websocket_config()))
            .await?;
    Ok(into_link(socket))
}

type Request = tokio_tungstenite::tungstenite::handshake::server::Request;
type Response = tokio_tungstenite::tungstenite::handshake::server::Response;
type ErrorResponse = tokio_tungstenite::tungstenite::handshake::server::ErrorResponse;

/// Accepts the upgrade only at [`PATH`] (any other path is answered
/// `404 Not Found`) and from an allowed origin, or none (`403 Forbidden`).
#[allow(clippy::result_large_err)] // the callback's type is tungstenite's
fn upgrade_answer(
    request: &Request,
    response: Response,
    origin_allowed: &impl Fn(&str) -> bool,
) -> Result<Response, ErrorResponse> {
    use tokio_tungstenite::tungstenite::http::StatusCode;
    let refuse = |status: StatusCode, why: String| {
        let mut refused = ErrorResponse::new(Some(why));
        *refused.status_mut() = status;
        Err(refused)
    };
    if request.uri().path() != PATH {
        return refuse(
            StatusCode::NOT_FOUND,
            format!("no WebSocket here: the path is {PATH}"),
        );
    }
    if let Some(origin) = request.headers().get("origin") {
        let origin = origin.to_str().unwrap_or_default();
        if !origin_allowed(origin) {
            return refuse(
                StatusCode::FORBIDDEN,
                format!("pages from {origin} may not connect to this server"),
            );
        }
    }
    Ok(response)
}

/// Connects to a server's fallback listener at `addr`, trusting it as
/// `trust` says, presenting `server_name` for TLS.
pub async fn connect<In: serde::de::DeserializeOwned, Out: serde::Serialize>(
    addr: SocketAddr,
    server_name: &str,
    trust: &ServerTrust,
) -> Result<Link<Ws, In, Out>, WsError> {
    let mut tls = signaling_tls::tls_client_config(trust)?;
    tls.alpn_protocols = vec![b"http/1.1".to_vec()];
    let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())
        .map_err(|_| WsError::ServerName(server_name.to_owned()))?;
    let tcp = TcpStream::connect(addr).await?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await?;
    let request = format!("wss://{server_name}{PATH}").into_client_request()?;
    let (socket, _) =
        tokio_tungstenite::client_async_with_config(request, tls, Some(websocket_config())).await?;
    Ok(into_link(socket))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use signaling_proto::{ClientMessage, ServerMessage};

    type ServerSide =
        tokio::task::JoinHandle<Result<Link<Ws, ClientMessage, ServerMessage>, WsError>>;

    /// A fallback listener on loopback with a fresh certificate: its
    /// address, how to trust it, and its first connection once accepted.
    async fn listening_server() -> (SocketAddr, ServerTrust, ServerSide) {
        let identity = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
        let trust = ServerTrust::Fingerprint(identity.fingerprint());
        let tls = server_tls(&identity).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await?;
            accept::<ClientMessage, ServerMessage>(tcp, tls, |origin| {
                origin == "https://app.example"
            })
            .await
        });
        (addr, trust, server)
    }

    /// A server and a client over loopback TCP: frames both ways, datagrams
    /// both ways, and a close the other side sees.
    #[tokio::test]
    async fn frames_and_datagrams_cross_a_real_socket() {
        let (addr, trust, server) = listening_server().await;
        let mut client: Link<Ws, ServerMessage, ClientMessage> =
            connect(addr, "localhost", &trust).await.unwrap();
        let mut server = server.await.unwrap().unwrap();

        client
            .send
            .send(&ClientMessage::Ping { nonce: 7 })
            .await
            .unwrap();
        assert_eq!(
            server.recv.recv().await.unwrap(),
            Some(ClientMessage::Ping { nonce: 7 })
        );
        server
            .send
            .send(&ServerMessage::Pong { nonce: 7 })
            .await
            .unwrap();
        assert_eq!(
            client.recv.recv().await.unwrap(),
            Some(ServerMessage::Pong { nonce: 7 })
        );
        client
            .media
            .send_datagram(Bytes::from_static(b"audio"))
            .unwrap();
        assert_eq!(&server.media.recv_datagram().await.unwrap()[..], b"audio");
        server
            .media
            .send_datagram(Bytes::from_static(b"back"))
            .unwrap();
        assert_eq!(&client.media.recv_datagram().await.unwrap()[..], b"back");

        server.media.close(ErrorCode::SERVER_SHUTDOWN, "bye");
        assert!(client.media.recv_datagram().await.is_err());
        assert!(client.recv.recv().await.unwrap().is_none());
        assert!(
            client
                .media
                .send_datagram(Bytes::from_static(b"late"))
                .is_err()
        );
    }

    /// Dropping a link closes its connection: the peer's reads end, as
    /// over QUIC, instead of a TCP connection held open by its pumps.
    #[tokio::test]
    async fn a_dropped_link_closes_its_connection() {
        let (addr, trust, server) = listening_server().await;
        let client: Link<Ws, ServerMessage, ClientMessage> =
            connect(addr, "localhost", &trust).await.unwrap();
        let mut server = server.await.unwrap().unwrap();
        let media = client.media.clone();
        drop(client);
        // A clone still held keeps it open…
        let still_open = tokio::time::timeout(Duration::from_millis(200), server.recv.recv()).await;
        assert!(still_open.is_err(), "closed while a handle remained");
        drop(media);
        // …the last one closes it.
        let ended = tokio::time::timeout(Duration::from_secs(10), server.recv.recv()).await;
        assert!(matches!(ended, Ok(Ok(None) | Err(_))), "{ended:?}");
        assert!(server.media.recv_datagram().await.is_err());
    }

    /// A client link over an in-memory pipe of `capacity` bytes each way,
    /// and the pipe's server end, read by nobody until the test says so.
    async fn piped_client(
        capacity: usize,
    ) -> (
        Link<Ws, ServerMessage, ClientMessage>,
        tokio::io::DuplexStream,
    ) {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (client, server) = tokio::io::duplex(capacity);
        let config = Some(websocket_config());
        let client = WebSocketStream::from_raw_socket(client, Role::Client, config).await;
        (into_link(client), server)
    }

    /// The first bytes of the audio datagrams `server_end` receives until
    /// nothing comes for 500 ms.
    async fn frames_received(server_end: tokio::io::DuplexStream) -> Vec<u8> {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let config = Some(websocket_config());
        let mut socket = WebSocketStream::from_raw_socket(server_end, Role::Server, config).await;
        let mut frames = Vec::new();
        while let Ok(Some(Ok(Message::Binary(data)))) =
            tokio::time::timeout(Duration::from_millis(500), socket.next()).await
        {
            assert_eq!(data[0], KIND_DATAGRAM);
            frames.push(data[1]);
        }
        frames
    }

    /// A writer that got no CPU for longer than [`STALE_AFTER`] (a busy
    /// machine) still sends what was queued: only a socket that would not
    /// take the audio makes it stale. The runtime's one thread is blocked,
    /// so the writer cannot run while the datagrams wait.
    #[tokio::test(flavor = "current_thread")]
    async fn audio_a_busy_machine_delayed_is_still_sent() {
        let (client, server_end) = piped_client(64 * 1024).await;
        for frame in 0..5_u8 {
            client
                .media
                .send_datagram(Bytes::from(vec![frame; 80]))
                .unwrap();
        }
        std::thread::sleep(STALE_AFTER + Duration::from_millis(50));
        assert_eq!(frames_received(server_end).await, [0, 1, 2, 3, 4]);
        assert_eq!(client.media.dropped_stale(), 0);
    }

    /// A peer that stops reading fills the pipe: audio queued behind it
    /// for longer than [`STALE_AFTER`] is dropped, and what was queued
    /// after the socket took writes again arrives.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn audio_stuck_behind_a_full_socket_is_dropped() {
        let (client, server_end) = piped_client(4 * 1024).await;
        // 300 ms of a 20 ms frame rate with nobody reading: the first
        // frames fill the pipe, the writer waits on the rest.
        for frame in 0..15_u8 {
            client
                .media
                .send_datagram(Bytes::from(vec![frame; 1_000]))
                .unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let received = frames_received(server_end).await;
        let dropped = client.media.dropped_stale();
        assert!(dropped > 0, "nothing dropped: {received:?}");
        assert_eq!(received.len() as u64 + dropped, 15, "{received:?}");
        assert_eq!(received.last(), Some(&14), "the newest frame arrives");
    }

    /// docs/protocol.md's example, from a client written from it: raw
    /// WebSocket messages in, our link's messages out.
    #[tokio::test]
    async fn documented_message_layout() {
        let (addr, trust, server) = listening_server().await;
        let mut raw = raw_client(addr, &trust, "/opencalling").await.unwrap();
        let mut server = server.await.unwrap().unwrap();
        // The frame split across two messages, as the stream allows.
        raw.send(Message::Binary(Bytes::from_static(&[0, 0, 0, 0])))
            .await
            .unwrap();
        raw.send(Message::Binary(Bytes::from_static(&[0, 2, 7, 1])))
            .await
            .unwrap();
        assert_eq!(
            server.recv.recv().await.unwrap(),
            Some(ClientMessage::Ping { nonce: 1 })
        );
        raw.send(Message::Binary(Bytes::from_static(&[1, 0xaa])))
            .await
            .unwrap();
        assert_eq!(&server.media.recv_datagram().await.unwrap()[..], [0xaa]);
        server
            .send
            .send(&ServerMessage::Pong { nonce: 1 })
            .await
            .unwrap();
        let Some(Ok(Message::Binary(pong))) = raw.next().await else {
            panic!("no binary message");
        };
        assert_eq!(&pong[..], [0, 0, 0, 0, 2, 14, 1]);
        // An unknown kind closes the link.
        raw.send(Message::Binary(Bytes::from_static(&[9])))
            .await
            .unwrap();
        assert!(server.recv.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn an_untrusted_certificate_is_refused() {
        let (addr, _, _server) = listening_server().await;
        let other = ServerIdentity::self_signed(&["localhost".into()]).unwrap();
        let trust = ServerTrust::Fingerprint(other.fingerprint());
        let error = connect::<ServerMessage, ClientMessage>(addr, "localhost", &trust)
            .await
            .unwrap_err();
        assert_eq!(
            error.connect_code(),
            ErrorCode::CERTIFICATE_UNTRUSTED,
            "{error}"
        );
    }

    /// Polls until writing to `peer_end` fails: the other end of the pipe
    /// was dropped. How long that took, or `None` within `limit`.
    async fn until_dropped(
        peer_end: &mut tokio::io::DuplexStream,
        limit: Duration,
    ) -> Option<Duration> {
        let started = Instant::now();
        while started.elapsed() < limit {
            if peer_end.write_all(b"x").await.is_err() {
                return Some(started.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        None
    }

    /// A link closed while its peer sends nothing (a connection that never
    /// logs in, past its deadline) drops its socket: the reader stops with
    /// the writer instead of waiting for the peer.
    #[tokio::test]
    async fn a_closed_link_drops_its_socket_though_the_peer_is_silent() {
        let (client, mut peer_end) = piped_client(64 * 1024).await;
        client.media.close(ErrorCode::TIMEOUT, "no login in time");
        drop(client);
        let dropped = until_dropped(&mut peer_end, Duration::from_secs(2)).await;
        assert!(dropped.is_some(), "the socket is still held");
    }

    /// A peer that stops reading blocks the writer; once the link closes,
    /// the socket is dropped within [`CLOSE_WITHIN`], unsent, instead of
    /// waiting for the peer to read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_peer_that_stops_reading_loses_its_socket_soon_after_the_close() {
        let (mut client, mut peer_end) = piped_client(4 * 1024).await;
        let writing = tokio::spawn(async move {
            // Far more than the pipe and the stream buffer hold.
            for nonce in 0..100_000 {
                if client
                    .send
                    .send(&ClientMessage::Ping { nonce })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            client
        });
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!writing.is_finished(), "the writes were not blocked");
        writing.abort();
        let client = writing.await;
        drop(client);
        let started = Instant::now();
        let dropped = until_dropped(&mut peer_end, Duration::from_secs(3)).await;
        let dropped = dropped.unwrap_or_else(|| panic!("the socket is still held"));
        assert!(
            dropped <= CLOSE_WITHIN + Duration::from_millis(500),
            "{dropped:?} after {:?}",
            started.elapsed()
        );
    }

    /// A raw WebSocket client over the real TLS listener.
    async fn raw_client(
        addr: SocketAddr,
        trust: &ServerTrust,
        path: &str,
    ) -> Result<
        WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::Error,
    > {
        raw_client_from(addr, trust, path, None).await
    }

    /// [`raw_client`] as a page from `origin` (a browser's `Origin` header).
    async fn raw_client_from(
        addr: SocketAddr,
        trust: &ServerTrust,
        path: &str,
        origin: Option<&str>,
    ) -> Result<
        WebSocketStream<tokio_rustls::client::TlsStream<TcpStream>>,
        tokio_tungstenite::tungstenite::Error,
    > {
        let mut config = signaling_tls::tls_client_config(trust).unwrap();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let tcp = TcpStream::connect(addr).await.unwrap();
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect("localhost".try_into().unwrap(), tcp)
            .await
            .unwrap();
        let mut request = format!("wss://localhost{path}").into_client_request()?;
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("origin", origin.parse().unwrap());
        }
        tokio_tungstenite::client_async(request, tls)
            .await
            .map(|(socket, _)| socket)
    }

    /// A text message is a protocol error, as the document says: the
    /// receiver closes with `PROTOCOL_ERROR`.
    #[tokio::test]
    async fn a_text_message_is_a_protocol_error() {
        let (addr, trust, server) = listening_server().await;
        let mut raw = raw_client(addr, &trust, PATH).await.unwrap();
        let mut server = server.await.unwrap().unwrap();
        raw.send(Message::Text("hello".into())).await.unwrap();
        let close = tokio::time::timeout(Duration::from_secs(5), raw.next()).await;
        let Ok(Some(Ok(Message::Close(Some(frame))))) = close else {
            panic!("no close: {close:?}");
        };
        assert_eq!(frame.code, close_code(ErrorCode::PROTOCOL_ERROR));
        assert!(server.recv.recv().await.unwrap().is_none());
    }

    /// A page's browser names its origin: one the server allows upgrades,
    /// another is answered 403; a native client (no origin) is unaffected.
    #[tokio::test]
    async fn only_allowed_origins_upgrade() {
        let (addr, trust, server) = listening_server().await;
        let allowed = raw_client_from(addr, &trust, PATH, Some("https://app.example")).await;
        assert!(allowed.is_ok(), "{allowed:?}");
        assert!(server.await.unwrap().is_ok());
        let (addr, trust, server) = listening_server().await;
        let refused = raw_client_from(addr, &trust, PATH, Some("https://evil.example")).await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
            panic!("upgraded from another origin: {refused:?}");
        };
        assert_eq!(response.status(), 403);
        assert!(server.await.unwrap().is_err());
    }

    /// Only the documented path upgrades; any other is answered 404.
    #[tokio::test]
    async fn another_path_is_not_found() {
        let (addr, trust, server) = listening_server().await;
        let refused = raw_client(addr, &trust, "/elsewhere").await;
        let Err(tokio_tungstenite::tungstenite::Error::Http(response)) = refused else {
            panic!("upgraded at another path: {refused:?}");
        };
        assert_eq!(response.status(), 404);
        assert!(server.await.unwrap().is_err());
    }
}
