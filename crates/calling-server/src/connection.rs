//! One task per connection: handshake, the login check, then frames in to
//! the hub and the hub's messages out, until either side ends. Everything
//! after the handshake goes through the transport seam ([`Link`]), so any
//! transport's connections are served by the same code.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use calling_api::ErrorCode;
use signaling_link::{DatagramSource, Link, LinkError, MediaLink, Transport};
use signaling_proto::{
    AcceptedLogin, ClientMessage, ConnId, Credentials, DatagramKind, DeviceLogin, LoginRefusal,
    MediaHeader, PathQuality, PathTransport, ServerMessage, UserSig, check_login, login_account,
};
use signaling_quic::{Established, QuicAttempt};
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, info, warn};

use crate::Shared;
use crate::address::AddressBlock;
use crate::admission::Admitted;
use crate::hub::{Attach, HubInput, OUTBOX_CAPACITY, Outbound};
use crate::limits::{ConnectionBudget, LimitCounters, MAX_REQUESTS_IN_FLIGHT, Verdict};
use crate::metrics::{ConnectionState, ConnectionStateGuard};
use crate::throttle::Ticket;
use crate::usersig;

/// How long a resumable session's connection may send nothing (its client
/// sends a heartbeat a second) before the server counts it as broken and
/// the session waits for a resume.
pub(crate) const SILENCE_TIMEOUT: Duration = Duration::from_secs(5);

/// How often a connection's path (RTT, loss) is sampled for the metrics…
const PATH_SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// …the first time a second after the login, so that short calls count.
const PATH_FIRST_SAMPLE: Duration = Duration::from_secs(1);

/// The link a connection task serves: client messages in, server messages out.
type ServerLink<T> = Link<T, ClientMessage, ServerMessage>;

/// Serves a QUIC connection attempt the admission policy let through,
/// holding its slots: the address's as long as it is served, the
/// pre-login one until the login succeeds.
pub(crate) async fn serve(attempt: QuicAttempt, admitted: Admitted, shared: Arc<Shared>) {
    let remote = attempt.remote_address();
    let state = shared
        .metrics
        .connections
        .enter(ConnectionState::Handshaking);
    let handshake = handshake(attempt, shared.admission.handshake_timeout());
    let established = tokio::select! {
        established = handshake => match established {
            Ok(established) => established,
            Err(error) => {
                debug!(%remote, %error, "handshake failed");
                return;
            }
        },
        // Dropping the handshake closes the connection.
        () = admitted.pre_login.evicted() => {
            debug!(%remote, "evicted before login for a newcomer from a quieter network");
            return;
        }
    };
    match established {
        QuicLink::Native(link) => serve_link(link, remote, (admitted, state), shared).await,
        QuicLink::Browser(link) => serve_link(*link, remote, (admitted, state), shared).await,
    }
}

/// A link on the QUIC port: a native client's, or a page's WebTransport
/// session.
enum QuicLink {
    Native(ServerLink<signaling_quic::Quic>),
    /// Boxed: a WebTransport session's link is six times a QUIC one's.
    Browser(Box<ServerLink<signaling_webtransport::WebTransport>>),
}

/// The QUIC handshake, then for a browser the HTTP/3 and WebTransport
/// ones, all within `timeout`.
async fn handshake(attempt: QuicAttempt, timeout: Duration) -> Result<QuicLink, String> {
    let deadline = tokio::time::Instant::now() + timeout;
    match attempt.establish_any(timeout).await {
        Ok(Established::Native(connection)) => Ok(QuicLink::Native(connection.into_link())),
        Ok(Established::Http3(connection)) => {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            signaling_webtransport::accept(connection, left)
                .await
                .map(|link| QuicLink::Browser(Box::new(link)))
                .map_err(|error| error.to_string())
        }
        Err(error) => Err(error.to_string()),
    }
}

/// Serves a fallback connection (WebSocket over TLS over TCP) the
/// admission policy let through: its handshakes within the handshake
/// timeout, then the same as any link.
pub(crate) async fn serve_fallback(
    tcp: tokio::net::TcpStream,
    remote: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    admitted: Admitted,
    shared: Arc<Shared>,
) {
    let state = shared
        .metrics
        .connections
        .enter(ConnectionState::Handshaking);
    let (origins, development) = (Arc::clone(&shared.web_origins), shared.development);
    let handshake = signaling_ws::accept::<ClientMessage, ServerMessage>(tcp, tls, move |origin| {
        let allowed = crate::web_origin::origin_allowed(&origins, development, origin);
        if !allowed {
            debug!(%remote, origin, "a page from an origin not allowed: refused");
        }
        allowed
    });
    let link = tokio::select! {
        handshake = tokio::time::timeout(shared.login_timeout, handshake) => match handshake {
            Ok(Ok(link)) => link,
            Ok(Err(error)) => {
                debug!(%remote, %error, "fallback handshake failed");
                return;
            }
            Err(_) => {
                debug!(%remote, "fallback handshake too slow");
                return;
            }
        },
        () = admitted.pre_login.evicted() => {
            debug!(%remote, "evicted before login for a newcomer from a quieter network");
            return;
        }
    };
    serve_link(link, remote, (admitted, state), shared).await;
}

/// Serves one established link, whatever its transport.
pub(crate) async fn serve_link<T: Transport>(
    mut link: ServerLink<T>,
    remote: SocketAddr,
    (mut admitted, mut state): (Admitted, ConnectionStateGuard),
    shared: Arc<Shared>,
) {
    state.set(ConnectionState::LoggingIn);
    let checked = throttled_login(&mut link, remote, &shared);
    // As long for the login as for the handshake before it.
    let login_timeout = shared.login_timeout;
    let checked_or_evicted = async {
        tokio::select! {
            checked = checked => Some(checked),
            () = admitted.pre_login.evicted() => None,
        }
    };
    let login = match tokio::time::timeout(login_timeout, checked_or_evicted).await {
        Ok(Some(Ok(login))) => login,
        Ok(None) => {
            debug!(%remote, "evicted before login for a newcomer from a quieter network");
            link.media.close(
                ErrorCode::SERVER_BUSY,
                "too many connections from your network before login",
            );
            return;
        }
        Ok(Some(Err(refusal))) => {
            info!(%remote, code = ?refusal.code, why = refusal.message, "login refused");
            shared.metrics.login(refusal.code);
            if link.send.send(&refusal.reply()).await.is_ok() {
                link.send.finish_and_flush(shared.grace).await;
            }
            link.media.close(refusal.code, refusal.code.message());
            return;
        }
        Err(_) => {
            debug!(%remote, "no login in time");
            link.media.close(ErrorCode::TIMEOUT, "no login in time");
            return;
        }
    };
    admitted.pre_login.release();
    let device = shared.device_login(&login);
    let user = login.user;
    let resuming = login.resume.is_some();
    let link_id = ConnId(shared.next_conn.fetch_add(1, Ordering::Relaxed));
    let (outbox, mut inbox) = mpsc::channel(OUTBOX_CAPACITY);
    let (session_tx, session_rx) = oneshot::channel();
    let login = HubInput::Login(Attach {
        link: link_id,
        user: user.clone(),
        protocol_version: login.protocol_version,
        device,
        resume: login.resume,
        outbox,
        media: Arc::new(link.media.clone()),
        session: session_tx,
    });
    let session = match shared.hub.send(login).await {
        Ok(()) => session_rx.await.ok().flatten(),
        Err(_) => None,
    };
    // Resumes are counted by the hub; a login it refused, below with its code.
    if !resuming && session.is_some() {
        shared.metrics.login(ErrorCode::OK);
    }
    let ended = match session {
        Some((conn, resumable)) => {
            state.set(ConnectionState::LoggedIn);
            info!(%user, %remote, ?conn, resumed = resuming, "logged in");
            let ids = (link_id, conn);
            let ended = exchange(&mut link, &shared, ids, resumable, &mut inbox).await;
            let expelled = ended.expels();
            let _ = shared
                .hub
                .send(HubInput::Disconnect {
                    link: link_id,
                    expelled,
                })
                .await;
            ended
        }
        // Refused (the hub queued why) or the server is stopping.
        None => deliver_refusal(&mut link, &mut inbox, &shared, resuming).await,
    };
    match ended {
        Ended::ClientLeft => {}
        Ended::Closed(code) => {
            link.send.finish_and_flush(shared.grace).await;
            link.media.close(code, code.message());
        }
        Ended::Broken(error) => {
            debug!(%user, %error, "connection ended");
            link.media.close(error.code(), error.code().message());
        }
        Ended::Stalled => {
            warn!(%user, ?link_id, "the client stopped reading: closed");
            link.media.close(ErrorCode::SERVER_BUSY, "not reading");
        }
        // The hub holds the link's media for the session: without a close
        // the connection would live on until the session's grace ended.
        Ended::Silent => link.media.close(ErrorCode::TIMEOUT, "no heartbeat in time"),
    }
    info!(%user, ?link_id, "disconnected");
}

/// Sends the refusal the hub queued for a login or resume (and the
/// redirect before it, if any); how the connection ends.
async fn deliver_refusal<T: Transport>(
    link: &mut ServerLink<T>,
    inbox: &mut mpsc::Receiver<Outbound>,
    shared: &Shared,
    resuming: bool,
) -> Ended {
    let refusal = loop {
        let Some(Outbound::Message(message)) = inbox.recv().await else {
            return Ended::Closed(ErrorCode::SERVER_SHUTDOWN);
        };
        if !matches!(message, ServerMessage::Redirect { .. }) {
            break message;
        }
        if link.send.send(&message).await.is_err() {
            return Ended::Closed(ErrorCode::CONNECTION_LOST);
        }
    };
    let code = match &refusal {
        ServerMessage::LoginResult { code, .. } => *code,
        _ => ErrorCode::SESSION_EXPIRED,
    };
    info!(?code, resuming, "refused by the hub");
    if !resuming {
        shared.metrics.login(code);
    }
    if link.send.send(&refusal).await.is_ok() {
        link.send.finish_and_flush(shared.grace).await;
    }
    Ended::Closed(code)
}

/// The server's apps, for the login check.
impl Shared {
    /// A login's device under its app's number of devices per user.
    fn device_login(&self, login: &AcceptedLogin) -> DeviceLogin {
        let max_devices = self
            .max_devices
            .get(&login.sdk_app_id)
            .copied()
            .unwrap_or(1);
        DeviceLogin {
            device: login.device.clone(),
            max_devices,
            media_encryption: login.media_encryption,
        }
    }
}

impl Credentials for Shared {
    fn serves_app(&self, sdk_app_id: u32) -> bool {
        self.apps.contains_key(&sdk_app_id)
    }

    fn verify(
        &self,
        sdk_app_id: u32,
        user: &calling_api::UserId,
        user_sig: &UserSig,
    ) -> Result<(), LoginRefusal> {
        let Some(secret_key) = self.apps.get(&sdk_app_id) else {
            return Err(LoginRefusal::new(
                ErrorCode::UNKNOWN_APP,
                format!("sdkAppId {sdk_app_id} is not served here"),
            ));
        };
        let now = (self.clock.0)();
        usersig::verify(
            &user_sig.0,
            u64::from(sdk_app_id),
            secret_key.expose(),
            user.as_str(),
            now,
        )
        .and_then(|claims| self.usersig_bounds.check(&claims, now))
        .map_err(|error| LoginRefusal::new(error.code(), error.to_string()))
    }
}

/// Reads the login frame and checks it, after the wait the throttle asks
/// for (see `throttle.rs`); records how it went.
async fn throttled_login<T: Transport>(
    link: &mut ServerLink<T>,
    remote: SocketAddr,
    shared: &Shared,
) -> Result<AcceptedLogin, LoginRefusal> {
    let address = AddressBlock::of(remote.ip());
    let payload = read_login(link).await?;
    let account = login_account(&payload);
    // An address or an account that keeps failing waits before it is
    // checked; an account whose queue is too long is refused unchecked.
    match shared
        .throttle
        .ticket(address, account.as_ref(), Instant::now())
    {
        Ticket::CheckAfter(delay) if !delay.is_zero() => {
            shared.limit_counters.login_delayed();
            debug!(%remote, ?delay, "failed logins from this address or for this account: slowed down");
            tokio::time::sleep(delay).await;
        }
        Ticket::CheckAfter(_) => {}
        Ticket::Refused => {
            shared.limit_counters.login_delayed();
            return Err(LoginRefusal::new(
                ErrorCode::RATE_LIMITED,
                "too many logins for this account: try again later",
            ));
        }
    }
    let checked = check_login(&payload, shared);
    match (&checked, &account) {
        (Ok(_), Some(account)) => shared.throttle.succeeded(address, account),
        (Ok(_), None) => {}
        (Err(_), _) => shared.throttle.failed(address, Instant::now()),
    }
    checked
}

/// Reads the login frame.
async fn read_login<T: Transport>(link: &mut ServerLink<T>) -> Result<Vec<u8>, LoginRefusal> {
    match link.recv.recv_payload().await {
        Ok(Some(payload)) => Ok(payload),
        Ok(None) => Err(LoginRefusal::new(
            ErrorCode::PROTOCOL_ERROR,
            "the stream ended before a login",
        )),
        Err(error) => Err(LoginRefusal::new(
            ErrorCode::PROTOCOL_ERROR,
            error.to_string(),
        )),
    }
}

enum Ended {
    /// The client finished its stream or closed the connection, or the
    /// network under it broke.
    ClientLeft,
    /// The hub closed the session with this code (logout, kick, shutdown, slow client).
    Closed(ErrorCode),
    /// The connection or the client's bytes failed.
    Broken(LinkError),
    /// A write blocked past the write timeout: the client does not read.
    Stalled,
    /// A resumable session's client sent nothing for [`SILENCE_TIMEOUT`]:
    /// its network is gone. The connection is dropped; the session waits
    /// for a resume.
    Silent,
}

impl Ended {
    /// Whether the server ended the connection for the client's fault:
    /// its session is not kept for a resume.
    fn expels(&self) -> bool {
        match self {
            Self::ClientLeft | Self::Broken(_) | Self::Silent => false,
            Self::Stalled => true,
            Self::Closed(code) => {
                *code == ErrorCode::PROTOCOL_ERROR || *code == ErrorCode::RATE_LIMITED
            }
        }
    }
}

/// Frames and datagrams in, the hub's messages out, until either side ends;
/// the connection's limits on the way (see `limits.rs`).
async fn exchange<T: Transport>(
    link: &mut ServerLink<T>,
    shared: &Arc<Shared>,
    (link_id, conn): (ConnId, ConnId),
    resumable: bool,
    inbox: &mut mpsc::Receiver<Outbound>,
) -> Ended {
    let limits = &shared.connection_limits;
    let counters = &shared.limit_counters;
    let mut budget = ConnectionBudget::new(conn, limits);
    // Datagrams in a task of their own: one wakes only that loop, never
    // this one's timers, stream and queue (measured: docs/benchmarks.md).
    // The relay's routes are by connection: a resumed session's new
    // connection gets its own.
    let datagrams = tokio::spawn(relay_datagrams(
        link.media.clone(),
        Arc::clone(shared),
        link_id,
    ));
    let _stop_datagrams = AbortOnDrop(datagrams);
    // Requests passed to the hub whose reply has not gone out yet.
    let mut in_flight = 0_usize;
    // A resumable session's client sends a heartbeat a second: silence
    // means its network is gone, long before the transport's idle timeout.
    let mut heard = Instant::now();
    let mut path_sample = tokio::time::interval_at(
        tokio::time::Instant::now() + PATH_FIRST_SAMPLE,
        PATH_SAMPLE_EVERY,
    );
    let mut last_path = link.media.path_stats();
    loop {
        let silent_until = resumable.then(|| heard + SILENCE_TIMEOUT);
        // A client's own requests wait while their replies pile up: it is
        // paced, never disconnected for pipelining.
        let may_read = in_flight < MAX_REQUESTS_IN_FLIGHT && inbox.len() < OUTBOX_CAPACITY / 2;
        if !may_read {
            // Paced: the client's silence is ours, not its network's.
            heard = Instant::now();
        }
        tokio::select! {
            _ = path_sample.tick() => {
                let now_path = link.media.path_stats();
                if let Some(path) = now_path {
                    let loss = last_path.and_then(|last| {
                        let sent = path.sent_packets.checked_sub(last.sent_packets)?;
                        let lost = path.lost_packets.checked_sub(last.lost_packets)?;
                        // Counts well within f64's exact range.
                        (sent > 0).then(|| lost as f64 / sent as f64)
                    });
                    shared.metrics.path_sample(path.rtt, loss);
                }
                last_path = now_path;
            }
            () = signaling_link::sleep_until(silent_until), if silent_until.is_some() => {
                debug!(?conn, "no heartbeat in time: the client's network is gone");
                return Ended::Silent;
            }
            received = link.recv.recv(), if may_read => match received {
                Ok(Some(message)) => {
                    heard = Instant::now();
                    match budget.admit_message(heard, counters) {
                    Verdict::Admit => {
                        in_flight += usize::from(message.request_id().is_some());
                        if shared.hub.send(HubInput::Message { link: link_id, message }).await.is_err() {
                            return Ended::Closed(ErrorCode::SERVER_SHUTDOWN);
                        }
                    }
                    Verdict::Refuse => {
                        if let Some(request_id) = message.request_id() {
                            let refusal = ServerMessage::Error {
                                request_id: Some(request_id),
                                code: ErrorCode::RATE_LIMITED,
                                message: "too many requests: slow down".into(),
                            };
                            if let Some(ended) = write(link, &refusal, limits.write_timeout, counters).await {
                                return ended;
                            }
                        }
                    }
                    Verdict::Close => {
                        // What was admitted is answered before the close.
                        let answered = answer_admitted(link, shared, inbox, in_flight).await;
                        return answered.unwrap_or(Ended::Closed(ErrorCode::RATE_LIMITED));
                    }
                    }
                }
                Ok(None) => return Ended::ClientLeft,
                Err(LinkError::Protocol(error)) => {
                    warn!(?conn, %error, "malformed frame: closing");
                    let notice = ServerMessage::Error {
                        request_id: None,
                        code: ErrorCode::PROTOCOL_ERROR,
                        message: error.to_string(),
                    };
                    let _ = write(link, &notice, limits.write_timeout, counters).await;
                    return Ended::Closed(ErrorCode::PROTOCOL_ERROR);
                }
                // The link failed under the stream: the client is gone.
                Err(_) => return Ended::ClientLeft,
            },
            outbound = inbox.recv() => match outbound {
                Some(Outbound::Message(message)) => {
                    if message.is_reply() {
                        in_flight = in_flight.saturating_sub(1);
                    }
                    if let Some(ended) = write(link, &message, limits.write_timeout, counters).await {
                        return ended;
                    }
                }
                Some(Outbound::Close(code)) => return Ended::Closed(code),
                // The hub dropped us: a stuck client, or the hub is gone.
                None => return Ended::Closed(ErrorCode::SERVER_BUSY),
            },
        }
    }
}

/// How long the replies to a closing client's admitted requests may take
/// (a cluster's control answers from another node).
const ANSWER_BEFORE_CLOSE: Duration = Duration::from_secs(1);

/// Before the server closes a client for its fault: writes what the hub
/// queued for it until everything admitted was answered (the hub has
/// handled every message sent before a flush; replies from elsewhere get
/// [`ANSWER_BEFORE_CLOSE`]). How the exchange ends instead, if it does.
async fn answer_admitted<T: Transport>(
    link: &mut ServerLink<T>,
    shared: &Shared,
    inbox: &mut mpsc::Receiver<Outbound>,
    mut in_flight: usize,
) -> Option<Ended> {
    let (done, mut flushed) = oneshot::channel();
    if shared.hub.send(HubInput::Flush { done }).await.is_err() {
        return None;
    }
    let mut hub_done = false;
    let deadline = tokio::time::Instant::now() + ANSWER_BEFORE_CLOSE;
    let write_timeout = shared.connection_limits.write_timeout;
    loop {
        if hub_done && in_flight == 0 && inbox.is_empty() {
            return None;
        }
        tokio::select! {
            answered = &mut flushed, if !hub_done => {
                hub_done = true;
                if answered.is_err() {
                    return None;
                }
            }
            outbound = inbox.recv() => match outbound {
                Some(Outbound::Message(message)) => {
                    if message.is_reply() {
                        in_flight = in_flight.saturating_sub(1);
                    }
                    let written = write(link, &message, write_timeout, &shared.limit_counters).await;
                    if written.is_some() {
                        return written;
                    }
                }
                Some(Outbound::Close(code)) => return Some(Ended::Closed(code)),
                None => return None,
            },
            () = tokio::time::sleep_until(deadline) => return None,
        }
    }
}

/// Relays what the connection sends as datagrams (within its audio
/// budget) until the link closes.
async fn relay_datagrams<M: DatagramSource + MediaLink>(
    media: M,
    shared: Arc<Shared>,
    conn: ConnId,
) {
    let mut budget = ConnectionBudget::new(conn, &shared.connection_limits);
    let mut arrivals = ArrivalLoss::default();
    while let Ok(datagram) = media.recv_datagram().await {
        if budget.admit_datagram(Instant::now(), datagram.len(), &shared.limit_counters) {
            let datagram = arrivals.count_or_stamp(datagram, &media);
            shared.routes.relay(conn, datagram);
        }
    }
}

/// What the server measures of a sender's audio on its way in: packets
/// due and received since the sender's previous word about its network.
#[derive(Debug, Default)]
struct ArrivalLoss {
    first: Option<u32>,
    highest: u32,
    received: u32,
    /// The transport's counts at the sender's previous word: the loss of
    /// what the server sent it since.
    path_at_last_word: Option<signaling_link::PathStats>,
}

impl ArrivalLoss {
    /// The fewest packets due for a measured uplink loss.
    const MIN_DUE: u32 = 10;

    /// Counts an audio datagram; stamps a word about the sender's network
    /// with the server's own measurements (its round trip and the loss of
    /// what was sent to it, as the transport measures them; the uplink loss
    /// counted here; its transport) and starts counting afresh. Anything
    /// else passes as it is.
    fn count_or_stamp(&mut self, datagram: Bytes, media: &impl MediaLink) -> Bytes {
        let Ok((header, payload)) = MediaHeader::decode(&datagram) else {
            return datagram;
        };
        match header.kind {
            DatagramKind::Audio => {
                self.count(header.sequence);
                datagram
            }
            DatagramKind::Quality => {
                let payload_start = datagram.len() - payload.len();
                let rtt_ms = media
                    .path_stats()
                    .map(|path| u16::try_from(path.rtt.as_millis()).unwrap_or(u16::MAX - 1));
                let transport = if media.datagrams_over_stream() {
                    PathTransport::Fallback
                } else {
                    PathTransport::Quic
                };
                let path = media.path_stats();
                let downlink = path.and_then(|now| {
                    let before = self.path_at_last_word.replace(now)?;
                    let sent = now.sent_packets.checked_sub(before.sent_packets)?;
                    let lost = now.lost_packets.checked_sub(before.lost_packets)?;
                    (sent >= u64::from(Self::MIN_DUE))
                        .then(|| u8::try_from(lost.min(sent) * 100 / sent).unwrap_or(100))
                });
                let measured = PathQuality {
                    rtt_ms,
                    uplink_loss_percent: self.take_loss_percent(),
                    downlink_loss_percent: downlink,
                    ..PathQuality::default()
                };
                let mut stamped = BytesMut::from(&datagram[..]);
                if PathQuality::stamp(&mut stamped[payload_start..], measured, transport) {
                    stamped.freeze()
                } else {
                    datagram
                }
            }
            _ => datagram,
        }
    }

    fn count(&mut self, sequence: u32) {
        match self.first {
            None => {
                self.first = Some(sequence);
                self.highest = sequence;
            }
            Some(first) => {
                // Sequence numbers wrap: compare as distances from the first.
                let ahead = sequence.wrapping_sub(first);
                if ahead < (1 << 31) && ahead > self.highest.wrapping_sub(first) {
                    self.highest = sequence;
                }
            }
        }
        self.received = self.received.saturating_add(1);
    }

    /// The share lost since the last call, once enough were due; starts
    /// afresh from the next packet.
    fn take_loss_percent(&mut self) -> Option<u8> {
        let first = self.first.take()?;
        let due = self.highest.wrapping_sub(first).saturating_add(1);
        let received = std::mem::take(&mut self.received).min(due);
        if due < Self::MIN_DUE {
            return None;
        }
        let lost = due - received;
        Some(u8::try_from(lost * 100 / due).unwrap_or(100))
    }
}

/// Aborts its task when dropped: the datagram loop ends with the exchange.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sends one message within the write timeout; how the exchange ends if
/// it could not.
async fn write<T: Transport>(
    link: &mut ServerLink<T>,
    message: &ServerMessage,
    timeout: Duration,
    counters: &LimitCounters,
) -> Option<Ended> {
    match tokio::time::timeout(timeout, link.send.send(message)).await {
        Ok(Ok(())) => None,
        Ok(Err(error)) => Some(Ended::Broken(error)),
        Err(_) => {
            counters.write_timed_out();
            Some(Ended::Stalled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uplink_loss_is_counted_between_two_words_across_a_wrap() {
        let mut arrivals = ArrivalLoss::default();
        assert_eq!(arrivals.take_loss_percent(), None, "nothing counted");
        // 20 due from just below the wrap, 2 lost, one late and reordered.
        let first = u32::MAX - 9;
        for offset in (0..20_u32).filter(|offset| *offset != 4 && *offset != 11) {
            arrivals.count(first.wrapping_add(offset));
        }
        arrivals.count(first.wrapping_add(3));
        assert_eq!(
            arrivals.take_loss_percent(),
            Some(5),
            "1 of 20 after the duplicate"
        );
        for sequence in 100..105 {
            arrivals.count(sequence);
        }
        assert_eq!(arrivals.take_loss_percent(), None, "too few due");
    }
}
