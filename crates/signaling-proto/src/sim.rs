//! An in-memory network of one [`Switchboard`] and many [`CallEngine`]s on a
//! virtual clock: no sockets, no threads, no sleeps.
//!
//! Every message really crosses the wire format (encoded into frames,
//! streamed through a [`FrameDecoder`], decoded), arrives after a seeded
//! random latency, and keeps its order per connection as a QUIC stream would.
//! The simulation plays the server glue too: it runs the server's own login
//! check ([`check_login`]) with a stand-in UserSig ([`Simulation::user_sig`];
//! the real scheme lives in the server), then hands authenticated logins to
//! the switchboard.
//!
//! Clients are named by a label, so one user can have several devices
//! ("alice" and "alice-laptop" both logging in as `alice`); each names its
//! label as its device id when the label is a valid one. A user may be
//! logged in on [`Simulation::set_max_devices`] of them at once (1 unless
//! set: a second login replaces the first).

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use calling_api::{CallingEvent, DeviceId, ErrorCode, UserId};

use crate::call_event::CallEvent;
use crate::engine::{CallEngine, Completion};
use crate::frame::{FrameDecoder, frame_to_vec};
use crate::login::{Credentials, LoginRefusal, check_login};
use crate::message::{ClientMessage, PROTOCOL_VERSION, ServerMessage, UserSig};
use crate::rng::SplitMix64;
use crate::switchboard::{ConnId, DeviceLogin, Output, Switchboard, SwitchboardConfig};

/// One-way delay of the simulated network.
#[derive(Debug, Clone, Copy)]
pub struct NetworkConfig {
    /// The least one-way delay.
    pub latency: Duration,
    /// Up to this much more, uniformly at random; order per connection is
    /// kept regardless.
    pub jitter: Duration,
    /// Seed of the random delays.
    pub seed: u64,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            latency: Duration::from_millis(10),
            jitter: Duration::ZERO,
            seed: 1,
        }
    }
}

/// The simulated deployment: one app, stand-in UserSigs.
#[derive(Debug)]
struct SimCredentials;

impl Credentials for SimCredentials {
    fn serves_app(&self, sdk_app_id: u32) -> bool {
        sdk_app_id == Simulation::SDK_APP_ID
    }

    fn verify(&self, _: u32, user: &UserId, user_sig: &UserSig) -> Result<(), LoginRefusal> {
        if user_sig.0 == Simulation::user_sig(user.as_str()) {
            Ok(())
        } else {
            Err(LoginRefusal::new(
                ErrorCode::USERSIG_BAD_SIGNATURE,
                "bad UserSig",
            ))
        }
    }
}

/// One simulated device running a [`CallEngine`].
#[derive(Debug)]
pub struct SimClient {
    /// The engine: call its API directly, then let the simulation run.
    pub engine: CallEngine,
    conn: Option<ConnId>,
    decoder: FrameDecoder,
    events: Vec<CallingEvent>,
    completions: Vec<Completion>,
}

#[derive(Debug)]
enum Delivery {
    ToServer(ConnId, Vec<u8>),
    ToClient(String, ConnId, Vec<u8>),
    /// The server closed the connection; arrives after what it sent before.
    CloseClient(String, ConnId),
}

/// A logged event: when, who, what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedEvent {
    /// Virtual time since the simulation started.
    pub at: Duration,
    /// The client's label.
    pub client: String,
    /// The event.
    pub event: CallingEvent,
}

/// The simulated world. See the [module docs](self).
#[derive(Debug)]
pub struct Simulation {
    start: Instant,
    now: Instant,
    network: NetworkConfig,
    rng: SplitMix64,
    switchboard: Switchboard,
    clients: BTreeMap<String, SimClient>,
    /// (delivery time, sequence) → what arrives: a min-heap via `Reverse`.
    in_flight: BinaryHeap<Reverse<(Instant, u64)>>,
    deliveries: HashMap<u64, Delivery>,
    next_delivery: u64,
    /// Last delivery time per direction of each connection, to keep order.
    link_tail: HashMap<(ConnId, bool), Instant>,
    server_decoders: HashMap<ConnId, FrameDecoder>,
    authenticated: HashSet<ConnId>,
    conn_owner: HashMap<ConnId, String>,
    next_conn: u64,
    log: Vec<LoggedEvent>,
    /// The switchboard's call events, with when.
    call_events: Vec<(Duration, CallEvent)>,
    /// The app's devices per user.
    max_devices: usize,
}

impl Simulation {
    /// A world whose clock starts at `origin` (any instant: only differences
    /// matter).
    pub fn new(origin: Instant, config: SwitchboardConfig, network: NetworkConfig) -> Self {
        Self {
            start: origin,
            now: origin,
            rng: SplitMix64::new(network.seed),
            network,
            switchboard: Switchboard::new(config),
            clients: BTreeMap::new(),
            in_flight: BinaryHeap::new(),
            deliveries: HashMap::new(),
            next_delivery: 0,
            link_tail: HashMap::new(),
            server_decoders: HashMap::new(),
            authenticated: HashSet::new(),
            conn_owner: HashMap::new(),
            next_conn: 1,
            log: Vec::new(),
            call_events: Vec::new(),
            max_devices: 1,
        }
    }

    /// How many devices a user may be logged in on at once, for the logins
    /// that follow.
    pub fn set_max_devices(&mut self, max_devices: usize) {
        self.max_devices = max_devices;
    }

    /// The stand-in UserSig the simulated server accepts for `user_id`.
    pub fn user_sig(user_id: &str) -> String {
        format!("sim-sig:{user_id}")
    }

    /// The sdkAppId the simulated server serves.
    pub const SDK_APP_ID: u32 = 1_400_000_000;

    /// Adds a device labelled `label` (not logged in).
    pub fn add_client(&mut self, label: &str) {
        let mut engine = CallEngine::new();
        engine.set_device(DeviceId::new(label).ok());
        self.clients.insert(
            label.to_owned(),
            SimClient {
                engine,
                conn: None,
                decoder: FrameDecoder::new(),
                events: Vec::new(),
                completions: Vec::new(),
            },
        );
    }

    /// Adds a device and logs it in as `user_id`, then lets the network settle.
    ///
    /// # Panics
    /// If the login fails: this is a test helper.
    pub fn add_logged_in(&mut self, label: &str, user_id: &str) {
        self.add_client(label);
        let sig = Self::user_sig(user_id);
        let result = self.engine(label).login(Self::SDK_APP_ID, user_id, &sig);
        assert!(
            result.is_ok(),
            "login of {label} failed locally: {result:?}"
        );
        self.settle();
        let completions = self.take_completions(label);
        assert!(
            matches!(completions.as_slice(), [Completion { result: Ok(_), .. }]),
            "login of {label} failed: {completions:?}"
        );
    }

    /// The engine of device `label`.
    ///
    /// # Panics
    /// If there is no such device: this is a test helper.
    pub fn engine(&mut self, label: &str) -> &mut CallEngine {
        match self.clients.get_mut(label) {
            Some(client) => &mut client.engine,
            None => panic!("no simulated client {label:?}"),
        }
    }

    /// The events device `label` got since the last call, oldest first.
    pub fn take_events(&mut self, label: &str) -> Vec<CallingEvent> {
        self.clients
            .get_mut(label)
            .map(|client| std::mem::take(&mut client.events))
            .unwrap_or_default()
    }

    /// The completions device `label` got since the last call.
    pub fn take_completions(&mut self, label: &str) -> Vec<Completion> {
        self.clients
            .get_mut(label)
            .map(|client| std::mem::take(&mut client.completions))
            .unwrap_or_default()
    }

    /// Every event of every device so far, in the order they happened.
    pub fn log(&self) -> &[LoggedEvent] {
        &self.log
    }

    /// Virtual time since the start.
    pub fn elapsed(&self) -> Duration {
        self.now - self.start
    }

    /// The current virtual instant.
    pub fn now(&self) -> Instant {
        self.now
    }

    /// The server's state machine, to inspect.
    pub fn switchboard(&self) -> &Switchboard {
        &self.switchboard
    }

    /// Whether device `label` has a live connection.
    pub fn is_connected(&self, label: &str) -> bool {
        self.clients
            .get(label)
            .is_some_and(|client| client.conn.is_some())
    }

    /// Cuts device `label`'s connection at once, as a lost network would.
    pub fn drop_connection(&mut self, label: &str) {
        let Some(client) = self.clients.get_mut(label) else {
            return;
        };
        let Some(conn) = client.conn.take() else {
            return;
        };
        client.decoder = FrameDecoder::new();
        client.engine.handle_disconnect();
        self.forget_conn(conn);
        self.switchboard.handle_disconnect(self.now, conn);
        self.collect();
    }

    /// The switchboard's call events so far (for the operator's side), with
    /// when they happened.
    pub fn call_events(&self) -> &[(Duration, CallEvent)] {
        &self.call_events
    }

    /// The operator acts on the switchboard now (kick, end a call, drain);
    /// what it answers, after its outputs went out.
    pub fn operate<R>(&mut self, act: impl FnOnce(&mut Switchboard, Instant) -> R) -> R {
        let answer = act(&mut self.switchboard, self.now);
        self.collect();
        answer
    }

    /// The server shuts down gracefully.
    pub fn shutdown_server(&mut self) {
        self.switchboard.shutdown(self.now);
        self.collect();
    }

    /// Delivers everything in flight (advancing the clock as far as that
    /// takes, firing the timers that fall due on the way), until nothing moves.
    pub fn settle(&mut self) {
        self.run(None);
    }

    /// Runs the world for `duration` of virtual time.
    pub fn advance(&mut self, duration: Duration) {
        let until = self.now + duration;
        self.run(Some(until));
        self.now = until;
    }

    fn run(&mut self, until: Option<Instant>) {
        loop {
            self.collect();
            let next_delivery = self.in_flight.peek().map(|Reverse((at, _))| *at);
            let next_timer = self
                .clients
                .values()
                .filter_map(|client| client.engine.poll_timeout())
                .chain(self.switchboard.poll_timeout())
                .min();
            let next = match (next_delivery, next_timer, until) {
                (None, None, _) => break,
                (None, Some(_), None) => break,
                (Some(delivery), None, _) => delivery,
                (None, Some(timer), Some(_)) => timer,
                (Some(delivery), Some(timer), _) => delivery.min(timer),
            };
            if until.is_some_and(|until| next > until) {
                break;
            }
            self.now = self.now.max(next);
            if next_timer.is_some_and(|timer| timer <= next) {
                self.switchboard.handle_timeout(self.now);
                for client in self.clients.values_mut() {
                    client.engine.handle_timeout(self.now);
                }
                continue;
            }
            if let Some(Reverse((_, id))) = self.in_flight.pop()
                && let Some(delivery) = self.deliveries.remove(&id)
            {
                self.deliver(delivery);
            }
        }
    }

    /// Moves every queued output into the network and every event into the logs.
    fn collect(&mut self) {
        let labels: Vec<String> = self.clients.keys().cloned().collect();
        for label in &labels {
            while let Some(message) = self
                .clients
                .get_mut(label)
                .and_then(|c| c.engine.poll_transmit())
            {
                self.client_send(label, &message);
            }
        }
        while let Some(output) = self.switchboard.poll_output() {
            match output {
                Output::Send { conn, message } => self.server_send(conn, &message),
                Output::Close { conn, .. } => {
                    self.authenticated.remove(&conn);
                    self.server_decoders.remove(&conn);
                    if let Some(label) = self.conn_owner.get(&conn).cloned() {
                        self.schedule(conn, false, Delivery::CloseClient(label, conn));
                    }
                }
                Output::Event(event) => self.call_events.push((self.now - self.start, event)),
                // Media is not simulated; every user is on this one server.
                Output::Membership { .. } | Output::Unrouted { .. } => {}
            }
        }
        for label in labels {
            let Some(client) = self.clients.get_mut(&label) else {
                continue;
            };
            while let Some(event) = client.engine.poll_event() {
                self.log.push(LoggedEvent {
                    at: self.now - self.start,
                    client: label.clone(),
                    event: event.clone(),
                });
                client.events.push(event);
            }
            while let Some(completion) = client.engine.poll_completion() {
                client.completions.push(completion);
            }
        }
    }

    /// Opens a new connection for device `label`, as its transport does
    /// before its first frame.
    fn open_conn(&mut self, label: &str) -> Option<ConnId> {
        let client = self.clients.get_mut(label)?;
        let conn = ConnId(self.next_conn);
        self.next_conn += 1;
        client.conn = Some(conn);
        client.decoder = FrameDecoder::new();
        self.conn_owner.insert(conn, label.to_owned());
        self.server_decoders.insert(conn, FrameDecoder::new());
        Some(conn)
    }

    fn client_send(&mut self, label: &str, message: &ClientMessage) {
        let Some(client) = self.clients.get(label) else {
            return;
        };
        let conn = match (client.conn, message) {
            (Some(conn), _) => conn,
            (None, ClientMessage::Login { .. }) => match self.open_conn(label) {
                Some(conn) => conn,
                None => return,
            },
            // Not connected: the message goes nowhere, as on a dead socket.
            (None, _) => return,
        };
        match frame_to_vec(message) {
            Ok(bytes) => self.schedule(conn, true, Delivery::ToServer(conn, bytes)),
            Err(error) => panic!("client message does not encode: {error}"),
        }
    }

    fn server_send(&mut self, conn: ConnId, message: &ServerMessage) {
        let Some(label) = self.conn_owner.get(&conn).cloned() else {
            return;
        };
        match frame_to_vec(message) {
            Ok(bytes) => self.schedule(conn, false, Delivery::ToClient(label, conn, bytes)),
            Err(error) => panic!("server message does not encode: {error}"),
        }
    }

    fn schedule(&mut self, conn: ConnId, to_server: bool, delivery: Delivery) {
        let jitter = self.rng.below(self.network.jitter.as_micros() as u64 + 1);
        let mut at = self.now + self.network.latency + Duration::from_micros(jitter);
        let tail = self.link_tail.entry((conn, to_server)).or_insert(at);
        at = at.max(*tail);
        *tail = at;
        let id = self.next_delivery;
        self.next_delivery += 1;
        self.deliveries.insert(id, delivery);
        self.in_flight.push(Reverse((at, id)));
    }

    fn deliver(&mut self, delivery: Delivery) {
        match delivery {
            Delivery::ToServer(conn, bytes) => self.server_receive(conn, &bytes),
            Delivery::ToClient(label, conn, bytes) => {
                let Some(client) = self.clients.get_mut(&label) else {
                    return;
                };
                if client.conn != Some(conn) {
                    return;
                }
                client.decoder.push(&bytes);
                loop {
                    match client.decoder.next_message::<ServerMessage>() {
                        Ok(Some(message)) => client.engine.handle_message(self.now, message),
                        Ok(None) => break,
                        Err(error) => panic!("server sent an undecodable frame: {error}"),
                    }
                }
            }
            Delivery::CloseClient(label, conn) => {
                if let Some(client) = self.clients.get_mut(&label)
                    && client.conn == Some(conn)
                {
                    client.conn = None;
                    client.engine.handle_disconnect();
                }
                self.forget_conn(conn);
            }
        }
    }

    /// The server glue: frames in, authentication, switchboard.
    fn server_receive(&mut self, conn: ConnId, bytes: &[u8]) {
        let Some(decoder) = self.server_decoders.get_mut(&conn) else {
            return;
        };
        decoder.push(bytes);
        loop {
            let Some(decoder) = self.server_decoders.get_mut(&conn) else {
                return;
            };
            let payload = match decoder.next_frame() {
                Ok(Some(payload)) => payload,
                Ok(None) => return,
                Err(_) => return self.refuse(conn, ErrorCode::PROTOCOL_ERROR, "bad frame"),
            };
            if !self.authenticated.contains(&conn) {
                self.authenticate(conn, &payload);
                continue;
            }
            match crate::frame::decode_payload::<ClientMessage>(&payload) {
                Ok(message) => self.switchboard.handle_message(self.now, conn, message),
                Err(_) => return self.refuse(conn, ErrorCode::PROTOCOL_ERROR, "bad message"),
            }
        }
    }

    fn authenticate(&mut self, conn: ConnId, payload: &[u8]) {
        match check_login(payload, &SimCredentials) {
            Ok(login) => {
                self.authenticated.insert(conn);
                let device = DeviceLogin {
                    device: login.device,
                    max_devices: self.max_devices,
                    media_encryption: login.media_encryption,
                };
                self.switchboard.handle_device_login(
                    self.now,
                    conn,
                    login.user,
                    login.protocol_version,
                    device,
                );
            }
            Err(refusal) => self.refuse(conn, refusal.code, &refusal.message),
        }
    }

    fn refuse(&mut self, conn: ConnId, code: ErrorCode, why: &str) {
        let reply = if self.authenticated.contains(&conn) {
            ServerMessage::Error {
                request_id: None,
                code,
                message: why.to_owned(),
            }
        } else {
            ServerMessage::LoginResult {
                protocol_version: PROTOCOL_VERSION,
                code,
                message: why.to_owned(),
            }
        };
        self.server_send(conn, &reply);
        if self.authenticated.remove(&conn) {
            self.switchboard.handle_expelled(self.now, conn);
        }
        self.server_decoders.remove(&conn);
        if let Some(label) = self.conn_owner.get(&conn).cloned() {
            self.schedule(conn, false, Delivery::CloseClient(label, conn));
        }
    }

    fn forget_conn(&mut self, conn: ConnId) {
        self.conn_owner.remove(&conn);
        self.server_decoders.remove(&conn);
        self.authenticated.remove(&conn);
        self.link_tail.remove(&(conn, true));
        self.link_tail.remove(&(conn, false));
    }

    /// Sends raw bytes from device `label` as if its transport wrote them:
    /// for tests of hostile input. Opens a connection if there is none.
    pub fn send_raw(&mut self, label: &str, bytes: Vec<u8>) {
        let Some(client) = self.clients.get(label) else {
            return;
        };
        let conn = match client.conn {
            Some(conn) => conn,
            None => match self.open_conn(label) {
                Some(conn) => conn,
                None => return,
            },
        };
        self.schedule(conn, true, Delivery::ToServer(conn, bytes));
    }
}
