//! The task behind a logged-in instance: it owns the call engine and the
//! link to the server, turns API requests into messages, server messages
//! into events, and answers each request when the server does.
//!
//! When the engine says the connection is dead (it broke, or the server
//! went quiet), the driver drops it and opens new ones, with exponential
//! backoff and jitter, several attempts overlapping so that a network that
//! comes back is used at once; the engine resumes the session over the
//! first that connects. Only [`start`] and the connector know the
//! transport (QUIC): the task itself, [`Driver`], works on any link of the
//! transport seam.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use audio_pipeline::{JitterStats, VoiceStats};
use bytes::Bytes;
use calling_api::{CallId, CallType, CallingError, CallingResult, DeviceId, ErrorCode};
use calling_api::{CallingEvent, KeyProblem, MemberQuality, NetworkQuality, UserId};
use media_e2ee::MediaKeys;
use signaling_link::either::Either;
use signaling_link::{DatagramSource, Link, LinkClosed, LinkError, MediaLink, Transport};
use signaling_proto::SplitMix64;
use signaling_proto::{
    CallEngine, CallOptions, ClientMessage, EngineStatus, FlowId, MediaEncryption, RequestId,
    ServerMessage,
};
use signaling_quic::Quic;
use signaling_tls::ServerTrust;
use signaling_ws::Ws;
use tokio::sync::{mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tracing::{debug, warn};

use crate::e2ee::{self, CallKeys, HeardKey};
use crate::media::{
    AudioDevices, AudioSettings, CallAudio, CallSwitches, DatagramNews, DeviceNotices, Sealing,
};
use crate::quality::{CallStats, MediaTransport, MemberStats};
use crate::status::SessionStatus;
use crate::{ClientOptions, Dispatch, Fallback, ReconnectPolicy};

pub(crate) type Reply = oneshot::Sender<CallingResult<Option<CallId>>>;

#[derive(Debug)]
pub(crate) enum Request {
    Logout,
    Call {
        user_id: String,
        call_type: CallType,
        options: CallOptions,
    },
    Accept,
    Reject,
    Hangup,
}

#[derive(Debug)]
pub(crate) enum Command {
    Request {
        request: Request,
        reply: Reply,
    },
    Audio(AudioCommand),
    /// Log out if logged in, then disconnect; tell the sender, if any, once
    /// done.
    Shutdown(Option<oneshot::Sender<()>>),
    /// The device's network changed: move the connection to a new socket.
    NetworkChanged,
}

/// What the application asks of the call's audio.
#[derive(Debug)]
pub(crate) enum AudioCommand {
    MicMute(bool),
    HandsFree(bool),
    LowLatency(bool),
    Stats(oneshot::Sender<Vec<(UserId, JitterStats)>>),
    /// The loss the receivers of our audio report.
    ReportedLoss(oneshot::Sender<Option<u8>>),
    /// What the echo canceller measures.
    VoiceStats(oneshot::Sender<Option<VoiceStats>>),
    /// Everything measured of the call, per member.
    CallStats(oneshot::Sender<CallStats>),
}

/// How often each remote speaker is told what we lose of its audio, and
/// each other member what we play.
const FEEDBACK_INTERVAL: Duration = Duration::from_secs(1);

/// How long a destroyed instance waits for the server to confirm its logout.
pub(crate) const LOGOUT_GRACE: Duration = Duration::from_secs(1);

/// Who logs in, with what.
#[derive(Debug)]
pub(crate) struct LoginRequest<'a> {
    pub(crate) sdk_app_id: u32,
    pub(crate) user_id: &'a str,
    pub(crate) user_sig: &'a str,
    /// The device the login names.
    pub(crate) device: DeviceId,
}

/// The instance's device settings when it logs in.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DeviceState {
    pub(crate) mic_muted: bool,
    pub(crate) hands_free: bool,
    pub(crate) low_latency: bool,
}

/// The answer to the login, when the server gives it.
pub(crate) type LoginAnswer = oneshot::Receiver<CallingResult<Option<CallId>>>;

/// The link to the server, as the driver uses it.
type ClientLink<T> = Link<T, ServerMessage, ClientMessage>;

/// A new connection: its link, and what moves it to a new local socket
/// (and keeps the socket alive).
pub(crate) struct Connected<T: Transport> {
    link: ClientLink<T>,
    rebind: Box<dyn Fn() -> std::io::Result<()> + Send + Sync>,
}

type Connecting<T> = Pin<Box<dyn Future<Output = CallingResult<Connected<T>>> + Send>>;

/// Opens connections to the server, as often as asked.
type Connector<T> = Arc<dyn Fn() -> Connecting<T> + Send + Sync>;

/// The transports a client connects with: QUIC, or the fallback over TCP.
pub(crate) type Transports = Either<Quic, Ws>;

/// Resolves `server` (`host:port`): every address its name has.
async fn resolve_all(server: &str) -> CallingResult<Vec<SocketAddr>> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host(server)
        .await
        .map(Iterator::collect)
        .unwrap_or_default();
    if addrs.is_empty() {
        return Err(CallingError::with_desc(
            ErrorCode::SERVER_UNREACHABLE,
            format!("cannot resolve server {server:?}"),
        ));
    }
    Ok(addrs)
}

/// Resolves `server` (`host:port`): its first address.
async fn resolve(server: &str) -> CallingResult<SocketAddr> {
    Ok(resolve_all(server).await?[0])
}

/// How long one server address has to connect before the next one is
/// tried beside it: a QUIC handshake takes one round trip on a sound path,
/// and a server that is down never answers (Happy Eyeballs waits 250 ms
/// between addresses; ours also races the fallback within each).
const NEXT_ADDRESS_AFTER: Duration = Duration::from_millis(500);

/// Which servers the SDK connects to: those of its options (`server`, one
/// `host:port` or several separated by commas, each name with all its
/// addresses), after those a server redirected it to; the address that
/// connected last goes first.
#[derive(Debug)]
pub(crate) struct ServerChoice {
    /// The options' `server`, as given.
    given: String,
    configured: Vec<String>,
    state: Mutex<ChoiceState>,
}

#[derive(Debug, Default)]
struct ChoiceState {
    redirected: Vec<String>,
    last_connected: Option<SocketAddr>,
}

impl ServerChoice {
    pub(crate) fn new(servers: &str) -> Self {
        Self {
            given: servers.to_owned(),
            configured: servers
                .split(',')
                .map(str::trim)
                .filter(|server| !server.is_empty())
                .map(str::to_owned)
                .collect(),
            state: Mutex::default(),
        }
    }

    /// Whether these are the servers of an options' `server` of `servers`.
    pub(crate) fn configured_by(&self, servers: &str) -> bool {
        self.given == servers
    }

    fn state(&self) -> std::sync::MutexGuard<'_, ChoiceState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A server said where to go: those servers first from now on.
    pub(crate) fn redirect(&self, servers: &[String]) {
        let servers: Vec<String> = signaling_proto::usable_redirects(servers)
            .cloned()
            .collect();
        if !servers.is_empty() {
            debug!(?servers, "redirected");
            self.state().redirected = servers;
        }
    }

    fn connected(&self, addr: SocketAddr) {
        self.state().last_connected = Some(addr);
    }

    /// The addresses to try, best first; an error if no name resolves.
    async fn addresses(&self) -> CallingResult<Vec<SocketAddr>> {
        let (redirected, last_connected) = {
            let state = self.state();
            (state.redirected.clone(), state.last_connected)
        };
        let mut addrs = Vec::new();
        let mut unresolved = None;
        for name in redirected.iter().chain(&self.configured) {
            match resolve_all(name).await {
                Ok(resolved) => addrs.extend(resolved),
                Err(error) => unresolved = Some(error),
            }
        }
        let mut unique = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if !unique.contains(&addr) {
                unique.push(addr);
            }
        }
        // The last address that connected keeps its place at the front
        // unless a redirect says otherwise.
        if redirected.is_empty()
            && let Some(last) = last_connected
            && let Some(at) = unique.iter().position(|addr| *addr == last)
        {
            unique[..=at].rotate_right(1);
        }
        if unique.is_empty() {
            return Err(unresolved.unwrap_or_else(|| {
                CallingError::with_desc(ErrorCode::SERVER_UNREACHABLE, "no server address given")
            }));
        }
        Ok(unique)
    }
}

fn too_slow(addr: SocketAddr, timeout: Duration) -> CallingError {
    CallingError::with_desc(
        ErrorCode::SERVER_UNREACHABLE,
        format!("no server answered at {addr} within {timeout:?}"),
    )
}

/// What a refused certificate means for `trust`, for a person to act on.
fn untrusted(trust: &ServerTrust) -> String {
    match trust {
        ServerTrust::Fingerprint(fingerprint) => format!(
            "the server's certificate is not the trusted one (SHA-256 {fingerprint}): \
             another server answered, or its certificate changed (a new data directory); \
             trust the fingerprint it prints when it starts"
        ),
        ServerTrust::CaFile(path) => format!(
            "the server's certificate is not signed by the CA in {}",
            path.display()
        ),
        ServerTrust::SystemRoots => "the server's certificate is not signed by an authority \
             this system trusts; a development server's self-signed certificate is trusted \
             by its fingerprint, which it prints when it starts"
            .to_owned(),
        // A trust mode added later is described by the TLS error alone.
        _ => "the server's certificate is not trusted".to_owned(),
    }
}

/// Why connecting to `addr` (`over`: the transport, for a person) failed.
fn refused(
    addr: SocketAddr,
    over: &str,
    code: ErrorCode,
    why: &dyn std::fmt::Display,
    trust: &ServerTrust,
) -> CallingError {
    let desc = if code == ErrorCode::CERTIFICATE_UNTRUSTED {
        format!(
            "cannot connect to {addr}{over}: {} ({why})",
            untrusted(trust)
        )
    } else {
        format!("cannot connect to {addr}{over}: {why}")
    };
    CallingError::with_desc(code, desc)
}

/// What a connector needs to know, cloned into every attempt.
#[derive(Debug, Clone)]
struct Target {
    servers: Arc<ServerChoice>,
    server_name: String,
    trust: ServerTrust,
    timeout: Duration,
    fallback: Fallback,
    fallback_delay: Duration,
    /// The fallback won the last race: it starts first.
    prefer_fallback: Arc<AtomicBool>,
}

impl Target {
    async fn quic(&self, addr: SocketAddr) -> CallingResult<Connected<Transports>> {
        let connecting = signaling_quic::connect(addr, &self.server_name, &self.trust);
        let connection = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| too_slow(addr, self.timeout))?
            .map_err(|error| refused(addr, "", error.connect_code(), &error, &self.trust))?;
        let (link, endpoint) = connection.into_link();
        let rebind = move || {
            let bind: SocketAddr = if addr.is_ipv6() {
                (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
            } else {
                (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
            };
            endpoint.rebind(std::net::UdpSocket::bind(bind)?)
        };
        Ok(Connected {
            link: Link::first(link),
            rebind: Box::new(rebind),
        })
    }

    async fn fallback(&self, server: SocketAddr) -> CallingResult<Connected<Transports>> {
        let addr = match &self.fallback {
            Fallback::Off => {
                return Err(CallingError::with_desc(
                    ErrorCode::SERVER_UNREACHABLE,
                    "no fallback transport",
                ));
            }
            Fallback::SameAddress => server,
            Fallback::At(fallback) => resolve(fallback).await?,
        };
        let connecting = signaling_ws::connect(addr, &self.server_name, &self.trust);
        let link = tokio::time::timeout(self.timeout, connecting)
            .await
            .map_err(|_| too_slow(addr, self.timeout))?
            .map_err(|error| {
                refused(addr, " over TCP", error.connect_code(), &error, &self.trust)
            })?;
        // TCP cannot migrate: a new network takes a new connection.
        let rebind = || Err(std::io::Error::other("a TCP connection cannot move"));
        Ok(Connected {
            link: Link::second(link),
            rebind: Box::new(rebind),
        })
    }

    /// Every address of every server, best first: each after the one
    /// before it failed or had [`NEXT_ADDRESS_AFTER`] alone, the earlier
    /// ones still running; the first to connect wins, and goes first next
    /// time.
    async fn connect(self) -> CallingResult<Connected<Transports>> {
        let addrs = self.servers.addresses().await?;
        if let [addr] = addrs[..] {
            let servers = Arc::clone(&self.servers);
            let connected = self.connect_to(addr).await?;
            servers.connected(addr);
            return Ok(connected);
        }
        let mut attempts = tokio::task::JoinSet::new();
        let mut waiting = addrs.into_iter();
        let mut last_error = None;
        loop {
            let started = match waiting.next() {
                Some(addr) => {
                    let target = self.clone();
                    attempts.spawn(async move { (addr, target.connect_to(addr).await) });
                    true
                }
                None => false,
            };
            if !started && attempts.is_empty() {
                return Err(last_error.unwrap_or_else(|| {
                    CallingError::with_desc(ErrorCode::SERVER_UNREACHABLE, "no server answered")
                }));
            }
            let next_address = tokio::time::sleep(NEXT_ADDRESS_AFTER);
            tokio::select! {
                done = attempts.join_next(), if !attempts.is_empty() => match done {
                    Some(Ok((addr, Ok(connected)))) => {
                        self.servers.connected(addr);
                        return Ok(connected);
                    }
                    Some(Ok((addr, Err(error)))) => {
                        debug!(%addr, %error, "a server address failed: the next one");
                        last_error = Some(error);
                    }
                    // A panicked attempt counts as a failed one.
                    Some(Err(_)) | None => {}
                },
                () = next_address, if started => {}
            }
        }
    }

    /// Happy eyeballs at one address: the preferred transport at once, the
    /// other after the fallback delay or the first one's failure; the
    /// first connected wins, and is preferred next time.
    async fn connect_to(self, addr: SocketAddr) -> CallingResult<Connected<Transports>> {
        if self.fallback == Fallback::Off {
            return self.quic(addr).await;
        }
        let fallback_first = self.prefer_fallback.load(Ordering::Relaxed);
        let (quic, fallback) = (self.quic(addr), self.fallback(addr));
        tokio::pin!(quic, fallback);
        let delay = tokio::time::sleep(self.fallback_delay);
        tokio::pin!(delay);
        let (mut quic_failed, mut fallback_failed) = (None, None);
        let (mut quic_started, mut fallback_started) = (!fallback_first, fallback_first);
        loop {
            tokio::select! {
                connected = &mut quic, if quic_started && quic_failed.is_none() => match connected {
                    Ok(connected) => {
                        self.prefer_fallback.store(false, Ordering::Relaxed);
                        return Ok(connected);
                    }
                    Err(error) => {
                        quic_failed = Some(error);
                        fallback_started = true;
                    }
                },
                connected = &mut fallback, if fallback_started && fallback_failed.is_none() => match connected {
                    Ok(connected) => {
                        debug!("connected over the fallback transport");
                        self.prefer_fallback.store(true, Ordering::Relaxed);
                        return Ok(connected);
                    }
                    Err(error) => {
                        fallback_failed = Some(error);
                        quic_started = true;
                    }
                },
                () = &mut delay, if !(quic_started && fallback_started) => {
                    quic_started = true;
                    fallback_started = true;
                }
            }
            if let (Some(quic), Some(fallback)) = (&quic_failed, &fallback_failed) {
                let unreachable = ErrorCode::SERVER_UNREACHABLE;
                return Err(
                    match (quic.code == unreachable, fallback.code == unreachable) {
                        // Neither got anywhere: say what each tried.
                        (true, true) => CallingError::with_desc(
                            unreachable,
                            format!(
                                "QUIC (UDP): {}; fallback (TCP): {}",
                                quic.desc, fallback.desc
                            ),
                        ),
                        // The more telling of the two: "unreachable" says least.
                        (true, false) => fallback.clone(),
                        (false, _) => quic.clone(),
                    },
                );
            }
        }
    }
}

/// The connector for `options`' servers (`servers`): QUIC raced against
/// the fallback at each address, the names resolved at every attempt (an
/// address may change while a session waits).
fn connector(
    options: &ClientOptions,
    servers: &Arc<ServerChoice>,
    prefer_fallback: Arc<AtomicBool>,
) -> Connector<Transports> {
    let target = Target {
        servers: Arc::clone(servers),
        server_name: options.server_name.clone(),
        trust: options.trust.clone(),
        timeout: options.connect_timeout,
        fallback: options.fallback.clone(),
        fallback_delay: options.fallback_delay,
        prefer_fallback,
    };
    Arc::new(move || Box::pin(target.clone().connect()) as Connecting<Transports>)
}

/// Connects, starts the driver task and sends the login; returns the
/// command channel and the login's pending answer.
pub(crate) async fn start(
    options: &ClientOptions,
    servers: Arc<ServerChoice>,
    login: LoginRequest<'_>,
    devices: DeviceState,
    dispatch: Arc<Dispatch>,
    prefer_fallback: Arc<AtomicBool>,
) -> CallingResult<(mpsc::UnboundedSender<Command>, LoginAnswer)> {
    let mut engine = CallEngine::new();
    engine.set_voice_volume_interval(options.voice_volume_interval);
    engine.set_mic_mute(devices.mic_muted);
    engine.set_reconnect(options.reconnect.map(|policy| policy.timings()));
    engine.set_device(Some(login.device));
    engine.set_media_encryption(match &options.media_encryption {
        None => MediaEncryption::None,
        Some(MediaKeys::BuiltIn(_)) => MediaEncryption::BuiltIn,
        Some(MediaKeys::Shared(_) | MediaKeys::PerUser(_)) => MediaEncryption::AppKeys,
    });
    let call_keys = match &options.media_encryption {
        Some(keys) => Some(CallKeys::new(keys.clone(), UserId::new(login.user_id)?)),
        None => None,
    };
    let login = engine.login(login.sdk_app_id, login.user_id, login.user_sig)?;
    let connector = connector(options, &servers, prefer_fallback);
    let connected = connector().await?;
    let (commands, inbox) = mpsc::unbounded_channel();
    let (notices, device_notices) = mpsc::unbounded_channel();
    let (reply, answer) = oneshot::channel();
    let mut pending = HashMap::new();
    pending.insert(login, reply);
    let media_link = Arc::new(SwitchableMedia::default());
    media_link.switch_to(Some(Arc::new(connected.link.media.clone())));
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |since| since.as_nanos() as u64);
    let driver = Driver {
        engine,
        link: Some(connected.link),
        rebind: Some(connected.rebind),
        connector,
        servers,
        redirected_here: false,
        login_redirects: 0,
        reconnect: Reconnect {
            policy: options.reconnect.unwrap_or_default(),
            attempts: JoinSet::new(),
            running: VecDeque::new(),
            started: 0,
            failures: 0,
            next_attempt: None,
            jitter: SplitMix64::new(seed),
        },
        media_link,
        inbox,
        pending,
        dispatch,
        devices: options.audio.clone(),
        audio_settings: AudioSettings {
            decoder_complexity: options.decoder_complexity,
            voice: options.voice_processing_in_effect(),
        },
        media: None,
        media_stopping: Vec::new(),
        notices: DeviceNotices(notices),
        device_notices,
        hands_free: devices.hands_free,
        low_latency: devices.low_latency,
        flow_users: HashMap::new(),
        last_stats: Vec::new(),
        last_call_stats: CallStats::default(),
        last_quality: None,
        last_quality_at: None,
        call_members: Vec::new(),
        call_keys,
        engine_untouched: false,
    };
    tokio::spawn(async move {
        if let Some(finished) = driver.run().await {
            let _ = finished.send(());
        }
    });
    Ok((commands, answer))
}

/// The media link the audio threads send on: the current connection's,
/// switched when the driver reconnects. A lock the capture thread takes
/// once per 20 ms frame, never the device callback.
#[derive(Debug, Default)]
struct SwitchableMedia {
    current: Mutex<Option<Arc<dyn MediaLink>>>,
}

impl SwitchableMedia {
    fn switch_to(&self, link: Option<Arc<dyn MediaLink>>) {
        *self.current.lock().unwrap_or_else(PoisonError::into_inner) = link;
    }

    fn current(&self) -> Option<Arc<dyn MediaLink>> {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl MediaLink for SwitchableMedia {
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
        match self.current() {
            Some(link) => link.send_datagram(datagram),
            // Reconnecting: the audio of the gap is stale by the time a
            // new connection is up.
            None => Err(LinkClosed),
        }
    }

    fn close(&self, code: ErrorCode, reason: &str) {
        if let Some(link) = self.current() {
            link.close(code, reason);
        }
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.current()?.max_datagram_size()
    }

    fn path_stats(&self) -> Option<signaling_link::PathStats> {
        self.current()?.path_stats()
    }

    fn datagrams_over_stream(&self) -> bool {
        self.current()
            .is_some_and(|link| link.datagrams_over_stream())
    }
}

/// Refused logins a login follows to another server before it fails.
const MAX_LOGIN_REDIRECTS: u8 = 3;

/// Attempts that may run at once; starting another aborts the oldest.
const OVERLAPPING_ATTEMPTS: usize = 4;

/// Reconnection attempts: up to [`OVERLAPPING_ATTEMPTS`] overlap, each
/// started after a backoff that grows with the attempts before it.
struct Reconnect<T: Transport> {
    policy: ReconnectPolicy,
    attempts: JoinSet<CallingResult<Connected<T>>>,
    /// The running attempts, oldest first.
    running: VecDeque<AbortHandle>,
    /// Attempts started since the last connection.
    started: u32,
    /// Attempts that failed since the last connection.
    failures: u32,
    /// When the next attempt starts, while the engine wants a connection.
    next_attempt: Option<Instant>,
    jitter: SplitMix64,
}

impl<T: Transport> Reconnect<T> {
    /// The wait before the next attempt: 0 for the first, then the
    /// policy's first backoff doubling with each attempt started up to its
    /// most, each drawn from its upper half at random so that clients cut
    /// off together do not come back together.
    fn backoff(&mut self) -> Duration {
        if self.started == 0 {
            return Duration::ZERO;
        }
        let exponent = (self.started - 1).min(16);
        let full = self
            .policy
            .first_backoff
            .saturating_mul(1 << exponent)
            .min(self.policy.max_backoff);
        let half = full / 2;
        let jitter = self.jitter.below(half.as_micros().max(1) as u64);
        half + Duration::from_micros(jitter)
    }

    fn start(&mut self, attempt: Connecting<T>) {
        if self.running.len() >= OVERLAPPING_ATTEMPTS
            && let Some(oldest) = self.running.pop_front()
        {
            oldest.abort();
        }
        self.running.retain(|handle| !handle.is_finished());
        self.running.push_back(self.attempts.spawn(attempt));
        self.started = self.started.saturating_add(1);
    }

    fn stop(&mut self) {
        self.attempts.abort_all();
        self.running.clear();
        self.next_attempt = None;
        self.started = 0;
        self.failures = 0;
    }
}

/// Waits for the first attempt to finish; never, while none runs.
async fn next_attempt_result<T: Transport>(
    attempts: &mut JoinSet<CallingResult<Connected<T>>>,
) -> CallingResult<Connected<T>> {
    loop {
        match attempts.join_next().await {
            Some(Ok(result)) => return result,
            // Aborted or panicked: look at the next one.
            Some(Err(_)) => {}
            None => std::future::pending().await,
        }
    }
}

async fn recv_frame<R: tokio::io::AsyncRead + Unpin>(
    recv: Option<&mut signaling_link::FramedRecv<R, ServerMessage>>,
) -> Result<Option<ServerMessage>, LinkError> {
    match recv {
        Some(recv) => recv.recv().await,
        None => std::future::pending().await,
    }
}

async fn recv_datagram<T: Transport>(media: Option<&T::Media>) -> Result<Bytes, LinkClosed> {
    match media {
        Some(media) => media.recv_datagram().await,
        None => std::future::pending().await,
    }
}

struct Driver<T: Transport> {
    engine: CallEngine,
    /// The connection, while one is up.
    link: Option<ClientLink<T>>,
    rebind: Option<Box<dyn Fn() -> std::io::Result<()> + Send + Sync>>,
    connector: Connector<T>,
    /// Which servers the connector tries, and where servers redirect to.
    servers: Arc<ServerChoice>,
    /// A redirect came on the current connection.
    redirected_here: bool,
    /// Refused logins followed to another server, this login.
    login_redirects: u8,
    reconnect: Reconnect<T>,
    /// What the audio threads send on.
    media_link: Arc<SwitchableMedia>,
    inbox: mpsc::UnboundedReceiver<Command>,
    pending: HashMap<RequestId, Reply>,
    dispatch: Arc<Dispatch>,
    devices: AudioDevices,
    /// The call's decoder complexity and voice processing.
    audio_settings: AudioSettings,
    /// The call's audio, while in a call.
    media: Option<CallAudio>,
    /// Audio threads told to stop, not yet joined: the session's end waits
    /// for them, so that recordings are finished when `shutdown` returns.
    media_stopping: Vec<tokio::task::JoinHandle<()>>,
    /// Where the audio threads say a device is unavailable…
    notices: DeviceNotices,
    /// …and where the driver hears it, to tell the application.
    device_notices: mpsc::UnboundedReceiver<calling_api::CallingEvent>,
    hands_free: bool,
    /// 10 ms frames wanted.
    low_latency: bool,
    /// Who each remote flow of the current call is.
    flow_users: HashMap<FlowId, UserId>,
    /// The statistics of the last call, kept after it ends.
    last_stats: Vec<(UserId, JitterStats)>,
    last_call_stats: CallStats,
    /// The network quality last told to the application in this call,
    /// and when.
    last_quality: Option<(NetworkQuality, Vec<MemberQuality>)>,
    last_quality_at: Option<Instant>,
    /// The call's other members with their flows, as of the last look:
    /// the call's statistics name them after the engine has left it.
    call_members: Vec<(UserId, FlowId)>,
    /// End-to-end encryption's keys, when it is on.
    call_keys: Option<CallKeys>,
    /// The last step was audio only (a datagram, a loss report): the
    /// engine did not change, nor did the status the application reads.
    engine_untouched: bool,
}

impl<T: Transport> Driver<T> {
    /// Takes no more commands; those that came in while the session ended
    /// find it over: a request is refused as from a logged-out instance
    /// (not as a lost connection), a shutdown is told it is done.
    fn close_inbox(&mut self) {
        self.inbox.close();
        while let Ok(command) = self.inbox.try_recv() {
            match command {
                Command::Request { reply, .. } => {
                    let _ = reply.send(Err(CallingError::new(ErrorCode::NOT_LOGGED_IN)));
                }
                Command::Shutdown(Some(done)) => {
                    let _ = done.send(());
                }
                _ => {}
            }
        }
    }

    /// Drives the login until it ends; returns whoever waits for a
    /// shutdown to finish.
    async fn run(mut self) -> Option<oneshot::Sender<()>> {
        let mut finished = None;
        let mut feedback = tokio::time::interval(FEEDBACK_INTERVAL);
        feedback.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // A step that was audio only changed neither the call's
            // members nor the words they sent.
            let audio_only = self.engine_untouched;
            if let Err(error) = self.flush().await {
                debug!(%error, "sending failed");
                self.connection_lost();
            }
            if !self.keeps_going() {
                break;
            }
            self.follow_connection();
            self.sync_media();
            if !audio_only && self.exchange_keys() {
                // Our key goes out with the call's first audio.
                continue;
            }
            let deadline = self.engine.poll_timeout();
            let next_attempt = self.reconnect.next_attempt;
            let (recv, media) = match self.link.as_mut() {
                Some(Link { recv, media, .. }) => (Some(recv), Some(&*media)),
                None => (None, None),
            };
            tokio::select! {
                command = self.inbox.recv() => match command {
                    Some(Command::Request { request, reply }) => self.apply(request, reply),
                    Some(Command::NetworkChanged) => self.network_changed(),
                    None => {
                        self.log_out_and_close().await;
                        break;
                    }
                    Some(Command::Shutdown(done)) => {
                        self.log_out_and_close().await;
                        finished = done;
                        break;
                    }
                    Some(Command::Audio(audio)) => self.audio_command(audio),
                },
                received = recv_frame(recv) => match received {
                    Ok(Some(message)) => self.server_message(message).await,
                    Ok(None) => {
                        debug!("the server ended the signaling stream");
                        self.connection_lost();
                    }
                    Err(error) => {
                        debug!(%error, "connection lost");
                        self.connection_lost();
                    }
                },
                datagram = recv_datagram::<T>(media) => {
                    self.engine_untouched = true;
                    if let (Ok(datagram), Some(media)) = (datagram, self.media.as_mut()) {
                        match media.on_datagram(&datagram) {
                            DatagramNews::SendFeatures => self.send_feedback(),
                            DatagramNews::Quality => self.report_quality(),
                            DatagramNews::KeyProblem { flow, problem } => {
                                self.tell_key_problem(flow, problem);
                            }
                            DatagramNews::Nothing => {}
                        }
                    }
                }
                () = signaling_link::sleep_until(next_attempt), if next_attempt.is_some() => {
                    self.start_attempt();
                }
                connected = next_attempt_result(&mut self.reconnect.attempts) => {
                    self.on_attempt(connected);
                }
                _ = feedback.tick(), if self.media.is_some() => {
                    self.engine_untouched = true;
                    self.send_feedback();
                    self.report_quality();
                }
                Some(notice) = self.device_notices.recv() => self.dispatch.emit(&notice),
                () = signaling_link::sleep_until(deadline), if deadline.is_some() => {
                    self.feed_levels();
                    self.engine.handle_timeout(Instant::now());
                }
            }
        }
        // Deliver the last events and answers; nothing more can be sent.
        let _ = self.flush().await;
        self.reconnect.stop();
        // From here the instance is logged out: new requests are refused as
        // such, not queued behind the last audio.
        self.close_inbox();
        for (_, reply) in self.pending.drain() {
            let _ = reply.send(Err(CallingError::new(ErrorCode::CONNECTION_LOST)));
        }
        if let Some(link) = self.link.take() {
            link.media.close(ErrorCode::OK, "bye");
        }
        self.media_link.switch_to(None);
        if let Some(media) = self.media.take() {
            self.media_stopping.push(media.stop());
        }
        for stopping in self.media_stopping.drain(..) {
            let _ = stopping.await;
        }
        finished
    }

    /// The commands about the call's audio.
    fn audio_command(&mut self, command: AudioCommand) {
        match command {
            AudioCommand::MicMute(muted) => {
                self.engine.set_mic_mute(muted);
                if let Some(media) = &self.media {
                    media.set_muted(muted);
                }
            }
            AudioCommand::HandsFree(hands_free) => {
                self.hands_free = hands_free;
                if let Some(media) = &self.media {
                    media.set_hands_free(hands_free);
                }
            }
            AudioCommand::LowLatency(low_latency) => {
                self.low_latency = low_latency;
                if let Some(media) = &mut self.media {
                    media.set_low_latency(low_latency);
                }
            }
            AudioCommand::Stats(reply) => {
                let _ = reply.send(self.audio_stats());
            }
            AudioCommand::ReportedLoss(reply) => {
                let _ = reply.send(self.media.as_ref().and_then(CallAudio::reported_loss));
            }
            AudioCommand::VoiceStats(reply) => {
                let _ = reply.send(self.media.as_ref().and_then(CallAudio::voice_stats));
            }
            AudioCommand::CallStats(reply) => {
                let _ = reply.send(self.call_stats());
            }
        }
    }

    /// A message from the server: a redirect is noted for the connector;
    /// a login refused as "not here" after one is retried where it points
    /// (at most [`MAX_LOGIN_REDIRECTS`] times) before the engine hears of
    /// it; everything else is the engine's.
    async fn server_message(&mut self, message: ServerMessage) {
        if let ServerMessage::Redirect { servers } = &message {
            self.servers.redirect(servers);
            self.redirected_here = true;
        }
        let refused_elsewhere = matches!(
            &message,
            ServerMessage::LoginResult { code, .. }
                if *code == ErrorCode::SERVER_DRAINING || *code == ErrorCode::SERVER_SHUTDOWN
        );
        if refused_elsewhere
            && self.redirected_here
            && self.login_redirects < MAX_LOGIN_REDIRECTS
            && let Some(login) = self.engine.login_message()
        {
            self.login_redirects += 1;
            debug!("login refused with a redirect: logging in where it points");
            self.drop_link();
            self.redirected_here = false;
            match (self.connector)().await {
                Ok(connected) => {
                    self.media_link
                        .switch_to(Some(Arc::new(connected.link.media.clone())));
                    let mut link = connected.link;
                    self.rebind = Some(connected.rebind);
                    if link.send.send(&login).await.is_ok() {
                        self.link = Some(link);
                        return;
                    }
                    self.media_link.switch_to(None);
                    self.rebind = None;
                }
                Err(error) => debug!(%error, "the redirect led nowhere"),
            }
        }
        if refused_elsewhere {
            self.login_redirects = 0;
        }
        self.engine.handle_message(Instant::now(), message);
    }

    /// Whether the session goes on: logged in (or logging in), connected
    /// or waiting for a connection.
    fn keeps_going(&self) -> bool {
        self.link.is_some() || self.engine.wants_connection()
    }

    /// The connection broke under the engine.
    fn connection_lost(&mut self) {
        self.drop_link();
        self.engine.handle_disconnect();
    }

    fn drop_link(&mut self) {
        if let Some(link) = self.link.take() {
            link.media
                .close(ErrorCode::CONNECTION_LOST, "connection lost");
        }
        self.rebind = None;
        self.media_link.switch_to(None);
    }

    /// Keeps the connection in step with the engine: drops one it declared
    /// dead, schedules attempts while it wants one, stops them once it has
    /// one.
    fn follow_connection(&mut self) {
        if self.engine.wants_connection() {
            if self.link.is_some() {
                debug!("the engine gave up on the connection: reconnecting");
                self.drop_link();
            }
            if self.reconnect.next_attempt.is_none() {
                let wait = self.reconnect.backoff();
                self.reconnect.next_attempt = Some(Instant::now() + wait);
            }
        } else if self.link.is_some() && self.reconnect.next_attempt.is_some() {
            self.reconnect.stop();
        }
    }

    fn start_attempt(&mut self) {
        self.reconnect.next_attempt = None;
        if !self.engine.wants_connection() {
            return;
        }
        debug!(
            failures = self.reconnect.failures,
            running = self.reconnect.attempts.len(),
            "reconnection attempt"
        );
        self.reconnect.start((self.connector)());
        // The next one overlaps this one unless it succeeds first.
        let wait = self.reconnect.backoff();
        self.reconnect.next_attempt = Some(Instant::now() + wait);
    }

    fn on_attempt(&mut self, connected: CallingResult<Connected<T>>) {
        match connected {
            Ok(connected) if self.engine.wants_connection() => {
                debug!("reconnected");
                self.reconnect.stop();
                self.media_link
                    .switch_to(Some(Arc::new(connected.link.media.clone())));
                self.link = Some(connected.link);
                self.rebind = Some(connected.rebind);
                self.redirected_here = false;
                self.engine.handle_connected(Instant::now());
            }
            // A slower attempt after another one won: dropped, it closes.
            Ok(_) => {}
            Err(error) => {
                debug!(%error, "reconnection attempt failed");
                self.reconnect.failures = self.reconnect.failures.saturating_add(1);
            }
        }
    }

    /// The application says the network changed: move the connection to a
    /// new local socket now (QUIC migrates it) rather than wait for the old
    /// path to fail.
    fn network_changed(&mut self) {
        match &self.rebind {
            Some(rebind) => {
                if let Err(error) = rebind() {
                    warn!(%error, "cannot move to a new socket: reconnecting instead");
                    self.connection_lost();
                }
            }
            None => debug!("network changed while reconnecting: the next attempt uses it"),
        }
    }

    /// Audio runs exactly while the engine is in a call.
    fn sync_media(&mut self) {
        let in_call = matches!(self.engine.status(), EngineStatus::InCall { .. });
        match (in_call, self.media.is_some()) {
            (true, false) => {
                let media: Arc<dyn MediaLink> = self.media_link.clone();
                let switches = CallSwitches {
                    muted: self.engine.is_mic_muted(),
                    hands_free: self.hands_free,
                    low_latency: self.low_latency,
                };
                let sealing = self
                    .call_keys
                    .as_mut()
                    .map_or(Sealing::Off, CallKeys::take_sealer);
                if matches!(sealing, Sealing::Impossible)
                    && let Some(me) = self.engine.user_id().cloned()
                {
                    self.dispatch.emit(&CallingEvent::MediaKeyProblem {
                        user_id: me,
                        problem: KeyProblem::Missing,
                    });
                }
                self.media = CallAudio::start(
                    &self.devices,
                    self.audio_settings,
                    media,
                    switches,
                    sealing,
                    &self.notices,
                );
                self.install_heard_keys();
                // The members already in the call hear at once what we play.
                self.send_feedback();
            }
            (false, true) => {
                self.last_call_stats = self.call_stats();
                self.last_quality = None;
                self.last_quality_at = None;
                self.call_members.clear();
                if let Some(media) = self.media.take() {
                    self.last_stats = self.named_stats(&media);
                    self.media_stopping
                        .retain(|stopping| !stopping.is_finished());
                    self.media_stopping.push(media.stop());
                }
                self.flow_users.clear();
            }
            _ => {}
        }
    }

    /// End-to-end encryption, each step: the members' words about their
    /// keys go to the media session, each member of the call is told what
    /// it lacks of ours, a new key of ours goes to the capture thread and
    /// identity events to the application; out of a call, the last call's
    /// keys are forgotten. Whether words went out.
    fn exchange_keys(&mut self) -> bool {
        let Some(keys) = self.call_keys.as_mut() else {
            return false;
        };
        let mut heard = Vec::new();
        while let Some((from, word)) = self.engine.poll_member_key() {
            if let Some(key) = keys.heard(from.clone(), &word) {
                heard.push((from, key));
            }
        }
        let words = match self.engine.status() {
            EngineStatus::InCall { members, .. } => {
                keys.words_for(&members.into_iter().collect::<Vec<_>>())
            }
            _ => {
                keys.end_call();
                Vec::new()
            }
        };
        // Our new key is sealed with once the members have it (without
        // audio running, the call's audio takes it as it starts).
        if let Some(media) = self.media.as_ref()
            && let Some(sealer) = keys.take_next_sealer()
        {
            media.next_sealer(sealer, Instant::now() + e2ee::ROTATION_OVERLAP);
        }
        for event in keys.take_news() {
            self.dispatch.emit(&event);
        }
        let told = !words.is_empty();
        for (to, word) in words {
            self.engine.send_member_key(to, word);
        }
        for (from, key) in heard {
            self.install_key(&from, &key);
        }
        told
    }

    /// Hands the media session every key the call's members announced so
    /// far (its audio just started).
    fn install_heard_keys(&mut self) {
        let heard: Vec<(UserId, HeardKey)> = self
            .call_keys
            .as_ref()
            .map(|keys| {
                keys.all_heard()
                    .map(|(user, key)| (user.clone(), key.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (from, key) in heard {
            self.install_key(&from, &key);
        }
    }

    /// Hands the media session `from`'s key, if its audio runs and the
    /// application has key material for `from` (without, its audio does
    /// not open and the media session says so).
    fn install_key(&mut self, from: &UserId, (material, announcement): &HeardKey) {
        let (Some(media), Some(material), Some(flow)) =
            (self.media.as_mut(), material, self.engine.flow_of(from))
        else {
            return;
        };
        if let Err(error) = media.add_key(flow, material, from.as_str(), announcement) {
            warn!(%from, %error, "cannot take a member's media key");
        }
    }

    /// A member's audio does not open: the application hears whose.
    fn tell_key_problem(&mut self, flow: FlowId, problem: KeyProblem) {
        let member = self
            .members()
            .into_iter()
            .find_map(|(user, member_flow)| (member_flow == flow).then_some(user));
        if let Some(user_id) = member {
            self.dispatch
                .emit(&CallingEvent::MediaKeyProblem { user_id, problem });
        }
    }

    /// The call's other members with their flows, in the call's order;
    /// once the engine has left the call, the members it had.
    fn members(&mut self) -> Vec<(UserId, FlowId)> {
        if let EngineStatus::InCall { members, .. } = self.engine.status() {
            self.call_members = members
                .into_iter()
                .filter_map(|member| {
                    let flow = self.engine.flow_of(&member)?;
                    Some((member, flow))
                })
                .collect();
        }
        self.call_members.clone()
    }

    /// Our connection's round trip, as the transport measures it.
    fn our_rtt_ms(&self) -> Option<u16> {
        self.media_link
            .path_stats()
            .map(|path| u16::try_from(path.rtt.as_millis()).unwrap_or(u16::MAX - 1))
    }

    /// Our network's level: down while there is no connection.
    fn our_quality(&self, media: &CallAudio, flows: &[FlowId]) -> NetworkQuality {
        if self.link.is_none() {
            NetworkQuality::Down
        } else {
            media.our_quality(flows, self.our_rtt_ms())
        }
    }

    /// Tells the application the network quality of everyone in the call
    /// when it changed, at most once a second (called once a second, and
    /// when a word about a network arrives: a change it brings is told at
    /// once unless a report went out less than a second ago, then at the
    /// next tick).
    fn report_quality(&mut self) {
        let members = self.members();
        let Some(media) = &self.media else {
            return;
        };
        let flows: Vec<FlowId> = members.iter().map(|(_, flow)| *flow).collect();
        let local = self.our_quality(media, &flows);
        let remote: Vec<MemberQuality> = members
            .into_iter()
            .map(|(user_id, flow)| MemberQuality {
                user_id,
                quality: media.member(flow).quality.unwrap_or_default(),
            })
            .collect();
        let levels = (local, remote);
        let now = Instant::now();
        // A tick after a late one comes a little under a second after it.
        let too_soon = self
            .last_quality_at
            .is_some_and(|at| now.saturating_duration_since(at) < Duration::from_millis(990));
        if self.last_quality.as_ref() != Some(&levels) && !too_soon {
            let (local, remote) = levels.clone();
            self.dispatch
                .emit(&CallingEvent::NetworkQuality { local, remote });
            self.last_quality = Some(levels);
            self.last_quality_at = Some(now);
        }
    }

    /// Everything measured of the current call, or the last call's.
    fn call_stats(&mut self) -> CallStats {
        let members = self.members();
        let Some(media) = &self.media else {
            return self.last_call_stats.clone();
        };
        let flows: Vec<FlowId> = members.iter().map(|(_, flow)| *flow).collect();
        let audio: HashMap<FlowId, JitterStats> = media.stats().into_iter().collect();
        let rtt = self.our_rtt_ms();
        let mut local = media.local_stats(&flows, rtt);
        local.quality = self.our_quality(media, &flows);
        local.transport = self.link.as_ref().map(|_| {
            if self.media_link.datagrams_over_stream() {
                MediaTransport::Fallback
            } else {
                MediaTransport::Quic
            }
        });
        let remote = members
            .into_iter()
            .map(|(user_id, flow)| {
                let figures = media.member(flow);
                let said = figures.said.unwrap_or_default();
                MemberStats {
                    user_id,
                    quality: figures.quality.unwrap_or_default(),
                    rtt_ms: said.rtt_ms,
                    uplink_loss_percent: said.uplink_loss_percent,
                    downlink_loss_percent: said.downlink_loss_percent,
                    loss_received_percent: figures.loss_received_percent,
                    jitter_ms: figures.jitter_ms,
                    bitrate_kbps: figures.bitrate_kbps,
                    transport: said.transport.map(MediaTransport::from),
                    audio: audio.get(&flow).copied(),
                }
            })
            .collect();
        CallStats { local, remote }
    }

    /// Tells each other member what we play of its audio, each remote
    /// speaker what we lose of it, and everyone what our network is like.
    fn send_feedback(&mut self) {
        let members: Vec<FlowId> = self.members().into_iter().map(|(_, flow)| flow).collect();
        let rtt = self.our_rtt_ms();
        let Some(media) = self.media.as_mut() else {
            return;
        };
        for datagram in media.feedback(&members, rtt) {
            // A closed link ends the call through the signaling stream.
            let _ = self.media_link.send_datagram(datagram);
        }
    }

    /// Hands the measured levels to the engine for `onUserVoiceVolume`.
    fn feed_levels(&mut self) {
        let Some(media) = &self.media else {
            return;
        };
        if let Some(me) = self.engine.user_id().cloned() {
            let level = media.take_local_level();
            self.engine.record_voice_level(&me, level);
        }
        if let EngineStatus::InCall { members, .. } = self.engine.status() {
            for member in members {
                if let Some(flow) = self.engine.flow_of(&member) {
                    let level = media.take_level(flow);
                    self.engine.record_voice_level(&member, level);
                    self.flow_users.insert(flow, member);
                }
            }
        }
    }

    fn named_stats(&self, media: &CallAudio) -> Vec<(UserId, JitterStats)> {
        let mut named: Vec<(UserId, JitterStats)> = media
            .stats()
            .into_iter()
            .filter_map(|(flow, stats)| {
                self.flow_users.get(&flow).map(|user| (user.clone(), stats))
            })
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        named
    }

    /// The current call's statistics, or the last call's.
    fn audio_stats(&mut self) -> Vec<(UserId, JitterStats)> {
        if let EngineStatus::InCall { members, .. } = self.engine.status() {
            for member in members {
                if let Some(flow) = self.engine.flow_of(&member) {
                    self.flow_users.insert(flow, member);
                }
            }
        }
        match &self.media {
            Some(media) => self.named_stats(media),
            None => self.last_stats.clone(),
        }
    }

    fn apply(&mut self, request: Request, reply: Reply) {
        let result = match request {
            Request::Logout => self.engine.logout(),
            Request::Call {
                user_id,
                call_type,
                options,
            } => self.engine.call(&user_id, call_type, options),
            Request::Accept => self.engine.accept(),
            Request::Reject => self.engine.reject(),
            Request::Hangup => self.engine.hangup(),
        };
        match result {
            Ok(request) => {
                self.pending.insert(request, reply);
            }
            Err(error) => {
                let _ = reply.send(Err(error));
            }
        }
    }

    /// Sends what the engine queued, then hands out events and answers.
    /// Without a connection the engine holds its messages.
    async fn flush(&mut self) -> Result<(), LinkError> {
        let mut result = Ok(());
        if let Some(link) = self.link.as_mut() {
            while let Some(message) = self.engine.poll_transmit() {
                if let Err(error) = link.send.send(&message).await {
                    result = Err(error);
                    break;
                }
            }
        }
        if !std::mem::take(&mut self.engine_untouched) {
            self.dispatch.set_status(SessionStatus::of(&self.engine));
        }
        while let Some(event) = self.engine.poll_event() {
            self.dispatch.emit(&event);
        }
        while let Some(completion) = self.engine.poll_completion() {
            if let Some(reply) = self.pending.remove(&completion.request) {
                let _ = reply.send(completion.result);
            }
        }
        result
    }

    /// For destroy(): a polite logout, waiting briefly for the server.
    async fn log_out_and_close(&mut self) {
        self.reconnect.stop();
        // A logout already answered (the application's `logout`, after
        // which it let go of the instance) still waits for the server's
        // close: that is when the engine ends the call it left.
        if self.engine.logout().is_err() && !self.engine.is_logging_out() {
            return;
        }
        if self.flush().await.is_err() {
            return;
        }
        let Some(link) = self.link.as_mut() else {
            // Reconnecting: the engine ended the session locally.
            return;
        };
        let engine = &mut self.engine;
        let _ = tokio::time::timeout(LOGOUT_GRACE, async {
            while let Ok(Some(message)) = link.recv.recv().await {
                engine.handle_message(Instant::now(), message);
            }
        })
        .await;
        self.engine.handle_disconnect();
    }
}
