//! One generator process: its share of the calls, on one QUIC endpoint
//! (or plain UDP sockets for the baseline), driven by orders from the
//! coordinator on standard input, one JSON line each, answered on standard
//! output the same way.
//!
//! A QUIC member is a real client of the protocol (docs/protocol.md): it
//! logs in at the current version, acknowledges what it receives in a
//! heartbeat a second (a session that falls silent is dropped by the
//! server), calls or answers, and sends audio datagrams with a real media
//! header and the send time in the payload's first 8 bytes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use calling_api::{CallType, UserId};
use serde::{Deserialize, Serialize};
use signaling_proto::{
    ClientMessage, DatagramKind, FlowId, MediaHeader, PROTOCOL_VERSION, RequestId, ServerMessage,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{Mutex, Semaphore, mpsc};

use crate::stats::{DelayHistogram, cpu_time};

/// What a worker loads.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Target {
    /// A calling-server: its QUIC address, certificate and app.
    Server {
        addr: SocketAddr,
        fingerprint: String,
        sdk_app_id: u32,
        /// The app's secret key, to sign each user's UserSig.
        secret_key: String,
    },
    /// The plain UDP forwarder of the baseline.
    Forwarder { addr: SocketAddr },
}

/// Everything a worker is told at its start.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct WorkerSpec {
    pub(crate) index: usize,
    pub(crate) target: Target,
    pub(crate) members: usize,
    pub(crate) payload_bytes: usize,
    pub(crate) user_prefix: String,
}

/// An order from the coordinator.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum Order {
    /// Set up calls until this many are held.
    Hold { calls: usize },
    /// Send audio for `secs`, hanging up and setting up again
    /// `churn_per_sec` calls a second meanwhile.
    Round { secs: f64, churn_per_sec: f64 },
}

/// A worker's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Report {
    /// Calls held now.
    pub(crate) held: usize,
    /// Calls that could not be set up (after retries) since the last report.
    pub(crate) setup_failures: u64,
    /// Connection attempts that timed out and were made again.
    pub(crate) connect_retries: u64,
    /// How long each call set up since the last report took, in ms
    /// (invitation sent to every member in).
    pub(crate) setup_ms: Vec<f64>,
    /// Datagrams sent, and how many receptions they should make.
    pub(crate) sent: u64,
    pub(crate) expected: u64,
    /// Datagrams received in time (during the round and 300 ms after).
    pub(crate) received: u64,
    /// Their relay delays (see `stats::DelayHistogram::take`).
    pub(crate) delays: Vec<(u32, u64)>,
    /// The worker's own CPU time over the round.
    pub(crate) cpu_secs: f64,
    /// Calls hung up and set up again during the round.
    pub(crate) churned: u64,
}

/// How long a connection attempt may take before it is made again.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Attempts per connection before its call counts as failed.
const CONNECT_ATTEMPTS: u32 = 4;
/// How long a signaling answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// Setups in flight at once.
const PARALLEL_SETUPS: usize = 32;
/// How long datagrams still in flight are waited for after a round.
const TAIL: Duration = Duration::from_millis(300);

/// Runs a worker until its standard input closes.
pub(crate) async fn run(spec: WorkerSpec) -> Result<(), String> {
    let worker = Arc::new(Worker::new(spec)?);
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdout = tokio::io::stdout();
    while let Some(line) = lines.next_line().await.map_err(|e| e.to_string())? {
        let order: Order = serde_json::from_str(&line).map_err(|e| format!("{line}: {e}"))?;
        let report = match order {
            Order::Hold { calls } => Arc::clone(&worker).hold(calls).await,
            Order::Round {
                secs,
                churn_per_sec,
            } => {
                Arc::clone(&worker)
                    .round(Duration::from_secs_f64(secs), churn_per_sec)
                    .await
            }
        };
        let mut text = serde_json::to_string(&report).map_err(|e| e.to_string())?;
        text.push('\n');
        stdout
            .write_all(text.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        stdout.flush().await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Where one member sends its audio.
#[derive(Debug, Clone)]
enum MediaOut {
    Quic(quinn::Connection),
    Udp(Arc<tokio::net::UdpSocket>),
}

impl MediaOut {
    fn send(&self, datagram: &[u8]) {
        // A full send buffer drops the datagram, as a real client's would:
        // it shows up as loss.
        match self {
            Self::Quic(connection) => {
                let _ = connection.send_datagram(bytes::Bytes::copy_from_slice(datagram));
            }
            Self::Udp(socket) => {
                let _ = socket.try_send(datagram);
            }
        }
    }
}

/// A logged-in protocol client whose signaling runs in a task of its own.
#[derive(Debug)]
struct Client {
    user: UserId,
    commands: mpsc::UnboundedSender<ClientMessage>,
    events: mpsc::UnboundedReceiver<ServerMessage>,
    next_request: u32,
}

impl Client {
    fn request(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    fn send(&self, message: ClientMessage) -> Result<(), String> {
        self.commands
            .send(message)
            .map_err(|_| format!("{}: signaling closed", self.user))
    }

    async fn until(
        &mut self,
        want: impl Fn(&ServerMessage) -> bool,
    ) -> Result<ServerMessage, String> {
        let user = &self.user;
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                match self.events.recv().await {
                    Some(message) if want(&message) => return Ok(message),
                    Some(_) => {}
                    None => return Err(format!("{user}: signaling closed")),
                }
            }
        })
        .await
        .map_err(|_| format!("{user}: no answer in time"))?
    }
}

/// One call: its members' media, whether it is up, and (over QUIC) the
/// clients that set it up and churn it.
#[derive(Debug)]
struct Call {
    media: Vec<MediaOut>,
    up: AtomicBool,
    clients: Mutex<Vec<Client>>,
}

#[derive(Debug)]
struct Worker {
    spec: WorkerSpec,
    endpoint: Option<quinn::Endpoint>,
    calls: Mutex<Vec<Arc<Call>>>,
    meter: Arc<Meter>,
    pending: std::sync::Mutex<Report>,
}

/// What the receiving tasks count while a round measures: datagrams and
/// their delays, against the send times the worker's own clock stamped.
#[derive(Debug)]
struct Meter {
    origin: Instant,
    measuring: AtomicBool,
    received: std::sync::atomic::AtomicU64,
    delays: DelayHistogram,
}

impl Meter {
    /// Microseconds since the worker's origin: the stamp a payload carries.
    fn stamp(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn count(&self, payload: &[u8]) {
        if !self.measuring.load(Ordering::Relaxed) {
            return;
        }
        let Some(stamp) = payload
            .get(..8)
            .and_then(|bytes| <[u8; 8]>::try_from(bytes).ok())
        else {
            return;
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        self.delays
            .record(self.stamp().saturating_sub(u64::from_le_bytes(stamp)));
    }
}

impl Worker {
    fn new(spec: WorkerSpec) -> Result<Self, String> {
        let endpoint = match &spec.target {
            Target::Server {
                addr, fingerprint, ..
            } => {
                let bind: SocketAddr = if addr.ip().is_loopback() {
                    (addr.ip(), 0).into()
                } else if addr.is_ipv6() {
                    (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
                } else {
                    (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
                };
                let socket = std::net::UdpSocket::bind(bind).map_err(|e| e.to_string())?;
                let state =
                    quinn::udp::UdpSocketState::new((&socket).into()).map_err(|e| e.to_string())?;
                let _ = state.set_recv_buffer_size((&socket).into(), 8 << 20);
                let _ = state.set_send_buffer_size((&socket).into(), 8 << 20);
                let runtime = quinn::default_runtime().ok_or("no runtime for quinn")?;
                let mut endpoint =
                    quinn::Endpoint::new(quinn::EndpointConfig::default(), None, socket, runtime)
                        .map_err(|e| e.to_string())?;
                let fingerprint = fingerprint
                    .parse()
                    .map_err(|e| format!("fingerprint: {e}"))?;
                let trust = signaling_quic::ServerTrust::Fingerprint(fingerprint);
                endpoint.set_default_client_config(
                    signaling_quic::client_config(&trust).map_err(|e| e.to_string())?,
                );
                Some(endpoint)
            }
            Target::Forwarder { .. } => None,
        };
        Ok(Self {
            spec,
            endpoint,
            calls: Mutex::new(Vec::new()),
            meter: Arc::new(Meter {
                origin: Instant::now(),
                measuring: AtomicBool::new(false),
                received: std::sync::atomic::AtomicU64::new(0),
                delays: DelayHistogram::new(),
            }),
            pending: std::sync::Mutex::default(),
        })
    }

    fn note(&self, update: impl FnOnce(&mut Report)) {
        let mut pending = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        update(&mut pending);
    }

    fn take_report(&self) -> Report {
        std::mem::take(
            &mut *self
                .pending
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        )
    }

    /// Sets up calls until `calls` are held.
    async fn hold(self: Arc<Self>, calls: usize) -> Report {
        let have = self.calls.lock().await.len();
        let permits = Arc::new(Semaphore::new(PARALLEL_SETUPS));
        let mut setups = tokio::task::JoinSet::new();
        for index in have..calls {
            let (worker, permits) = (Arc::clone(&self), Arc::clone(&permits));
            setups.spawn(async move {
                let _permit = permits.acquire().await;
                worker.new_call(index).await
            });
        }
        let mut made = Vec::new();
        while let Some(done) = setups.join_next().await {
            match done
                .map_err(|error| error.to_string())
                .and_then(|made| made)
            {
                Ok(call) => made.push(call),
                Err(error) => {
                    eprintln!("calling-load worker {}: {error}", self.spec.index);
                    self.note(|report| report.setup_failures += 1);
                }
            }
        }
        let mut held = self.calls.lock().await;
        held.extend(made);
        let count = held.len();
        drop(held);
        let mut report = self.take_report();
        report.held = count;
        report
    }

    async fn new_call(&self, index: usize) -> Result<Arc<Call>, String> {
        match &self.spec.target {
            Target::Server { .. } => self.new_quic_call(index).await,
            Target::Forwarder { addr } => self.new_udp_call(index, *addr).await,
        }
    }

    fn user_name(&self, call: usize, member: usize) -> String {
        format!(
            "{}{}c{call}m{member}",
            self.spec.user_prefix, self.spec.index
        )
    }

    async fn new_quic_call(&self, index: usize) -> Result<Arc<Call>, String> {
        let mut clients = Vec::with_capacity(self.spec.members);
        let mut media = Vec::with_capacity(self.spec.members);
        for member in 0..self.spec.members {
            let (client, connection) = self.login(&self.user_name(index, member)).await?;
            self.listen_quic(connection.clone());
            media.push(MediaOut::Quic(connection));
            clients.push(client);
        }
        let started = Instant::now();
        set_up(&mut clients).await?;
        let setup_ms = started.elapsed().as_secs_f64() * 1e3;
        self.note(|report| report.setup_ms.push(setup_ms));
        Ok(Arc::new(Call {
            media,
            up: AtomicBool::new(true),
            clients: Mutex::new(clients),
        }))
    }

    /// A connection to the server and a logged-in client on it.
    async fn login(&self, user: &str) -> Result<(Client, quinn::Connection), String> {
        let Target::Server {
            addr,
            sdk_app_id,
            secret_key,
            ..
        } = &self.spec.target
        else {
            return Err("not a server".into());
        };
        let endpoint = self.endpoint.as_ref().ok_or("no endpoint")?;
        let mut attempt = 0;
        let mut link = loop {
            attempt += 1;
            match tokio::time::timeout(
                CONNECT_TIMEOUT,
                signaling_quic::connect_on(endpoint, *addr, "localhost"),
            )
            .await
            {
                Ok(Ok(link)) => break link,
                Ok(Err(error)) if attempt >= CONNECT_ATTEMPTS => {
                    return Err(format!("{user}: cannot connect: {error}"));
                }
                Err(_) if attempt >= CONNECT_ATTEMPTS => {
                    return Err(format!("{user}: connecting timed out {attempt} times"));
                }
                Ok(Err(_)) => tokio::time::sleep(Duration::from_millis(100)).await,
                Err(_) => self.note(|report| report.connect_retries += 1),
            }
        };
        let unix_now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        let user_sig = calling_usersig::generate(
            u64::from(*sdk_app_id),
            secret_key,
            user,
            86_400,
            unix_now,
            None,
        );
        let user_id = UserId::new(user).map_err(|e| format!("{user}: {e}"))?;
        link.send
            .send(&ClientMessage::Login {
                protocol_version: PROTOCOL_VERSION,
                sdk_app_id: *sdk_app_id,
                user_id: user_id.clone(),
                user_sig: user_sig.into(),
                device_id: None,
                media_encryption: signaling_proto::MediaEncryption::None,
            })
            .await
            .map_err(|e| format!("{user}: {e}"))?;
        match tokio::time::timeout(ANSWER_TIMEOUT, link.recv.recv()).await {
            Ok(Ok(Some(ServerMessage::LoginResult { code, .. }))) if code.is_ok() => {}
            other => return Err(format!("{user}: login failed: {other:?}")),
        }
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let connection = link.connection.clone();
        tokio::spawn(signaling(link.send, link.recv, command_rx, event_tx));
        Ok((
            Client {
                user: user_id,
                commands,
                events,
                next_request: 0,
            },
            connection,
        ))
    }

    /// Counts the datagrams `connection` receives while a round measures.
    fn listen_quic(&self, connection: quinn::Connection) {
        let meter = Arc::clone(&self.meter);
        tokio::spawn(async move {
            while let Ok(datagram) = connection.read_datagram().await {
                if let Ok((_, payload)) = MediaHeader::decode(&datagram) {
                    meter.count(payload);
                }
            }
        });
    }

    /// A group of sockets registered with the forwarder as one call.
    async fn new_udp_call(&self, index: usize, forwarder: SocketAddr) -> Result<Arc<Call>, String> {
        let group = u32::try_from(self.spec.index << 24 | index).map_err(|e| e.to_string())?;
        let mut media = Vec::with_capacity(self.spec.members);
        let started = Instant::now();
        for member in 0..self.spec.members {
            let bind: SocketAddr = (forwarder.ip(), 0).into();
            let socket = tokio::net::UdpSocket::bind(bind)
                .await
                .map_err(|e| e.to_string())?;
            socket.connect(forwarder).await.map_err(|e| e.to_string())?;
            let mut registration = group.to_le_bytes().to_vec();
            registration.push(u8::try_from(member).unwrap_or(u8::MAX));
            let mut answer = [0_u8; 8];
            let mut registered = false;
            for _ in 0..CONNECT_ATTEMPTS {
                socket
                    .send(&registration)
                    .await
                    .map_err(|e| e.to_string())?;
                if let Ok(Ok(2)) =
                    tokio::time::timeout(Duration::from_secs(1), socket.recv(&mut answer)).await
                {
                    registered = true;
                    break;
                }
            }
            if !registered {
                return Err(format!("group {group}: the forwarder does not answer"));
            }
            let socket = Arc::new(socket);
            let reader = Arc::clone(&socket);
            let meter = Arc::clone(&self.meter);
            tokio::spawn(async move {
                let mut buffer = vec![0_u8; 2_048];
                while let Ok(len) = reader.recv(&mut buffer).await {
                    meter.count(&buffer[..len]);
                }
            });
            media.push(MediaOut::Udp(socket));
        }
        let setup_ms = started.elapsed().as_secs_f64() * 1e3;
        self.note(|report| report.setup_ms.push(setup_ms));
        Ok(Arc::new(Call {
            media,
            up: AtomicBool::new(true),
            clients: Mutex::new(Vec::new()),
        }))
    }

    /// One measured round: audio from every call for `length`, churning
    /// meanwhile, then the tail of datagrams still in flight.
    async fn round(self: Arc<Self>, length: Duration, churn_per_sec: f64) -> Report {
        let calls: Vec<Arc<Call>> = self.calls.lock().await.clone();
        let cpu_before = cpu_time(std::process::id());
        self.meter.delays.take();
        self.meter.received.store(0, Ordering::Relaxed);
        self.meter.measuring.store(true, Ordering::Relaxed);
        let stop = Arc::new(AtomicBool::new(false));
        let churn = (churn_per_sec > 0.0 && matches!(self.spec.target, Target::Server { .. }))
            .then(|| {
                let worker = Arc::clone(&self);
                tokio::spawn(worker.churn(calls.clone(), churn_per_sec, Arc::clone(&stop)))
            });
        let (sent, expected) = self.send_audio(&calls, length).await;
        stop.store(true, Ordering::Relaxed);
        if let Some(churn) = churn {
            let _ = churn.await;
        }
        tokio::time::sleep(TAIL).await;
        self.meter.measuring.store(false, Ordering::Relaxed);
        let mut report = self.take_report();
        report.held = calls.len();
        report.sent = sent;
        report.expected = expected;
        report.received = self.meter.received.swap(0, Ordering::Relaxed);
        report.delays = self.meter.delays.take();
        report.cpu_secs = (cpu_time(std::process::id()) - cpu_before).as_secs_f64();
        report
    }

    /// 50 datagrams a second from each speaker for `length`: in a 1v1 call
    /// both members speak, in a group one at a time (a new one each
    /// second). Calls are spread over the 20 ms period in 1 ms slots, as
    /// independent clients would be. Returns the datagrams sent and the
    /// receptions they should make.
    async fn send_audio(&self, calls: &[Arc<Call>], length: Duration) -> (u64, u64) {
        const SLOTS: usize = 20;
        let members = self.spec.members;
        let listeners = (members - 1) as u64;
        let mut interval = tokio::time::interval(Duration::from_millis(1));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let ticks = length.as_millis();
        let mut payload = vec![0_u8; self.spec.payload_bytes.max(8)];
        let mut datagram = vec![0_u8; payload.len() + 32];
        let (mut sent, mut expected) = (0, 0);
        let forwarder = matches!(self.spec.target, Target::Forwarder { .. });
        for tick in 0..ticks {
            interval.tick().await;
            let slot = usize::try_from(tick).unwrap_or(0) % SLOTS;
            let frame = u32::try_from(tick / 20).unwrap_or(u32::MAX);
            let speaker_now = usize::try_from(tick / 1_000).unwrap_or(0);
            for (index, call) in calls.iter().enumerate().skip(slot).step_by(SLOTS) {
                if !call.up.load(Ordering::Relaxed) {
                    continue;
                }
                for (member, out) in call.media.iter().enumerate() {
                    if members > 2 && member != (speaker_now + index) % members {
                        continue;
                    }
                    let stamp = self.meter.stamp();
                    payload[..8].copy_from_slice(&stamp.to_le_bytes());
                    if forwarder {
                        out.send(&payload);
                    } else {
                        let header = MediaHeader {
                            kind: DatagramKind::Audio,
                            flow_id: FlowId(0),
                            sequence: frame,
                            timestamp: frame.wrapping_mul(960),
                            voice_activity: true,
                            level_dbov: 30,
                        };
                        if let Ok(len) = header.encode(&payload, &mut datagram) {
                            out.send(&datagram[..len]);
                        }
                    }
                    sent += 1;
                    expected += listeners;
                }
            }
        }
        (sent, expected)
    }

    /// Hangs up and sets up again `per_sec` calls a second, in turn, until
    /// `stop`; each churn runs on its own, so slow setups do not lower the
    /// rate. A call sends nothing while it is down.
    async fn churn(self: Arc<Self>, calls: Vec<Arc<Call>>, per_sec: f64, stop: Arc<AtomicBool>) {
        if calls.is_empty() {
            return;
        }
        let mut interval = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sec));
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        let mut churns = tokio::task::JoinSet::new();
        let mut next = 0;
        while !stop.load(Ordering::Relaxed) {
            interval.tick().await;
            // The next call that is up (one still down from its last churn
            // is skipped).
            let Some(call) = (0..calls.len())
                .map(|offset| &calls[(next + offset) % calls.len()])
                .find(|call| call.up.load(Ordering::Relaxed))
            else {
                continue;
            };
            next += 1;
            call.up.store(false, Ordering::Relaxed);
            let (worker, call) = (Arc::clone(&self), Arc::clone(call));
            churns.spawn(async move { worker.churn_one(&call).await });
        }
        while churns.join_next().await.is_some() {}
    }

    async fn churn_one(&self, call: &Call) {
        // Datagrams in flight land before the members leave (a user's
        // hang-up follows their last word too).
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut clients = call.clients.lock().await;
        let outcome = async {
            hang_up(&mut clients).await?;
            let started = Instant::now();
            set_up(&mut clients).await?;
            Ok::<_, String>(started.elapsed().as_secs_f64() * 1e3)
        }
        .await;
        drop(clients);
        match outcome {
            Ok(setup_ms) => {
                // Every member's route is in place before audio resumes.
                tokio::time::sleep(Duration::from_millis(50)).await;
                call.up.store(true, Ordering::Relaxed);
                self.note(|report| {
                    report.churned += 1;
                    report.setup_ms.push(setup_ms);
                });
            }
            Err(error) => {
                eprintln!("calling-load worker {}: churn: {error}", self.spec.index);
                self.note(|report| report.setup_failures += 1);
            }
        }
    }
}

/// The first client invites the others; each accepts; done when the
/// inviter has seen every other member enter.
async fn set_up(clients: &mut [Client]) -> Result<(), String> {
    let Some((inviter, invitees)) = clients.split_first_mut() else {
        return Ok(());
    };
    let request_id = inviter.request();
    inviter.send(ClientMessage::Invite {
        request_id,
        call_id: None,
        user_ids: invitees.iter().map(|client| client.user.clone()).collect(),
        call_type: CallType::Audio,
        timeout_ms: None,
        user_data: None,
    })?;
    for invitee in invitees.iter_mut() {
        let ServerMessage::Invited { call_id, .. } = invitee
            .until(|message| matches!(message, ServerMessage::Invited { .. }))
            .await?
        else {
            return Err("not an invitation".into());
        };
        let request_id = invitee.request();
        invitee.send(ClientMessage::Accept {
            request_id,
            call_id,
        })?;
    }
    for _ in 0..invitees.len() {
        inviter
            .until(|message| matches!(message, ServerMessage::UserEntered { .. }))
            .await?;
    }
    Ok(())
}

/// Every member hangs up; done when each has its answer (an error for
/// members whose call had already ended when their hang-up arrived).
async fn hang_up(clients: &mut [Client]) -> Result<(), String> {
    for client in clients.iter_mut() {
        let request_id = client.request();
        client.send(ClientMessage::Hangup { request_id })?;
        client
            .until(|message| match message {
                ServerMessage::Ack { request_id: id, .. } => *id == request_id,
                ServerMessage::Error { request_id: id, .. } => *id == Some(request_id),
                _ => false,
            })
            .await?;
    }
    Ok(())
}

/// A client's signaling: sends what it is given and a heartbeat a second
/// with the count of numbered messages received; hands every message but
/// the session's bookkeeping to `events`.
async fn signaling(
    mut send: signaling_link::FramedSend<signaling_quic::QuicSend, ClientMessage>,
    mut recv: signaling_link::FramedRecv<quinn::RecvStream, ServerMessage>,
    mut commands: mpsc::UnboundedReceiver<ClientMessage>,
    events: mpsc::UnboundedSender<ServerMessage>,
) {
    let mut received = 0_u64;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = heartbeat.tick() => {
                if send.send(&ClientMessage::Heartbeat { received }).await.is_err() {
                    return;
                }
            }
            command = commands.recv() => match command {
                Some(message) => {
                    if send.send(&message).await.is_err() {
                        return;
                    }
                }
                None => return,
            },
            message = recv.recv() => match message {
                Ok(Some(message)) => {
                    if message.is_numbered() {
                        received += 1;
                    }
                    if !matches!(message, ServerMessage::HeartbeatAck { .. } | ServerMessage::Session { .. }) {
                        let _ = events.send(message);
                    }
                }
                _ => return,
            },
        }
    }
}
