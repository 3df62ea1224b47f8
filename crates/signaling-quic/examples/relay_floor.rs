//! What QUIC itself costs a relay per forwarded datagram, without any I/O.
//!
//! `cargo run --release -p signaling-quic --example relay_floor [CALLS] [SECONDS]`
//!
//! The server's quinn-proto state machines — one endpoint and two
//! connections per 1v1 call, our transport settings, TLS 1.3 with
//! AES-128-GCM — driven in memory on a virtual clock, as a relay would
//! drive them with its own event loop (no tokio, no tasks, no locks, no
//! system calls): each member sends an 80-byte datagram every 20 ms, the
//! server decrypts it, hands it to the other member's connection, which
//! encrypts and sends it; ACKs, timers and the endpoint's bookkeeping
//! included. Only the server's calls are timed: what remains is the floor
//! a relay on quinn-proto pays before the kernel's per-packet cost
//! (measured by `calling-load --udp-baseline`) and before any scheduling.
//! The calls' connections are interleaved as real traffic would, so their
//! state is as cold in the caches as many calls make it.

#![allow(clippy::print_stdout, clippy::unwrap_used, clippy::expect_used)]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use quinn_proto::{
    ClientConfig, Connection, ConnectionHandle, DatagramEvent, Endpoint, EndpointConfig, Event,
    ServerConfig,
};
use signaling_quic::{ServerIdentity, ServerTrust, client_config, server_config};

const SERVER: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 4433);
const FRAME: Duration = Duration::from_millis(20);

/// One side's endpoint and its connections, indexed by handle.
struct Side {
    endpoint: Endpoint,
    connections: Vec<Option<Connection>>,
}

impl Side {
    fn new(server: Option<Arc<ServerConfig>>) -> Self {
        Self {
            endpoint: Endpoint::new(Arc::new(EndpointConfig::default()), server, true, None),
            connections: Vec::new(),
        }
    }

    fn insert(&mut self, handle: ConnectionHandle, connection: Connection) {
        if self.connections.len() <= handle.0 {
            self.connections.resize_with(handle.0 + 1, || None);
        }
        self.connections[handle.0] = Some(connection);
    }

    fn connection(&mut self, handle: ConnectionHandle) -> &mut Connection {
        self.connections[handle.0].as_mut().unwrap()
    }

    /// A packet arrives from `from`: into the endpoint, then its connection.
    fn receive(&mut self, now: Instant, from: SocketAddr, packet: &[u8], buf: &mut Vec<u8>) {
        let data = BytesMut::from(packet);
        match self.endpoint.handle(now, from, None, None, data, buf) {
            Some(DatagramEvent::ConnectionEvent(handle, event)) => {
                self.connection(handle).handle_event(event);
            }
            Some(DatagramEvent::NewConnection(incoming)) => {
                let (handle, connection) = self.endpoint.accept(incoming, now, buf, None).unwrap();
                self.insert(handle, connection);
            }
            Some(DatagramEvent::Response(_)) | None => {}
        }
    }

    /// Lets `handle` process what it received and its timers, trade
    /// endpoint events, and returns its packets.
    fn drive(&mut self, now: Instant, handle: ConnectionHandle, out: &mut Vec<Vec<u8>>) {
        let connection = self.connections[handle.0].as_mut().unwrap();
        if connection
            .poll_timeout()
            .is_some_and(|deadline| deadline <= now)
        {
            connection.handle_timeout(now);
        }
        while let Some(event) = connection.poll_endpoint_events() {
            if let Some(back) = self.endpoint.handle_event(handle, event) {
                connection.handle_event(back);
            }
        }
        let mut buf = Vec::with_capacity(1500);
        while let Some(transmit) = connection.poll_transmit(now, 1, &mut buf) {
            out.push(buf[..transmit.size].to_vec());
            buf.clear();
        }
    }

    /// Application events: whether the connection is up; datagrams received.
    fn events(&mut self, handle: ConnectionHandle) -> bool {
        let connection = self.connection(handle);
        let mut connected = false;
        while let Some(event) = connection.poll() {
            connected |= matches!(event, Event::Connected);
        }
        connected
    }
}

/// One call: two clients, each with its own address and connection, and
/// the server's handles for them.
struct Call {
    clients: [Side; 2],
    client_handles: [ConnectionHandle; 2],
    addresses: [SocketAddr; 2],
    server_handles: [Option<ConnectionHandle>; 2],
}

/// What the audio turns added up to.
#[derive(Default)]
struct Tally {
    server_time: Duration,
    forwarded: u64,
    delivered: u64,
    packets_out: u64,
}

/// Sets up `calls` calls, one handshake at a time (untimed).
fn connect_calls(
    server: &mut Side,
    client: &ClientConfig,
    calls: usize,
    now: &mut Instant,
) -> Vec<Call> {
    let mut buf = Vec::with_capacity(1500);
    (0..calls)
        .map(|call| {
            let mut clients = [Side::new(None), Side::new(None)];
            let mut client_handles = [ConnectionHandle(0); 2];
            let mut server_handles = [None; 2];
            let addresses = [0, 1].map(|member| {
                let port = 10_000 + (call * 2 + member) as u16;
                SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
            });
            for member in 0..2 {
                let (handle, connection) = clients[member]
                    .endpoint
                    .connect(*now, client.clone(), SERVER, "localhost")
                    .unwrap();
                clients[member].insert(handle, connection);
                client_handles[member] = handle;
                for _ in 0..20 {
                    let mut packets = Vec::new();
                    clients[member].drive(*now, handle, &mut packets);
                    for packet in &packets {
                        server.receive(*now, addresses[member], packet, &mut buf);
                    }
                    // Handshakes run one at a time: the newest connection
                    // is this member's.
                    let on_server = server
                        .connections
                        .iter()
                        .rposition(Option::is_some)
                        .map(ConnectionHandle);
                    server_handles[member] = on_server;
                    let mut answers = Vec::new();
                    if let Some(on_server) = on_server {
                        server.drive(*now, on_server, &mut answers);
                        server.events(on_server);
                    }
                    for packet in &answers {
                        clients[member].receive(*now, SERVER, packet, &mut buf);
                    }
                    if clients[member].events(handle) {
                        break;
                    }
                    *now += Duration::from_millis(1);
                }
            }
            Call {
                clients,
                client_handles,
                addresses,
                server_handles,
            }
        })
        .collect()
}

/// `speaker` of `call` sends one datagram; the server relays it to the
/// listener; the listener receives it and sends what ACKs it has. Only the
/// server's part is timed.
fn turn(server: &mut Side, call: &mut Call, speaker: usize, now: Instant, tally: &mut Tally) {
    let mut buf = Vec::with_capacity(1500);
    let listener = 1 - speaker;
    let (Some(from), Some(to)) = (call.server_handles[speaker], call.server_handles[listener])
    else {
        return;
    };
    let handle = call.client_handles[speaker];
    let payload = Bytes::from_static(&[0x55; 80]);
    if call.clients[speaker]
        .connection(handle)
        .datagrams()
        .send(payload, true)
        .is_err()
    {
        return;
    }
    let mut packets = Vec::new();
    call.clients[speaker].drive(now, handle, &mut packets);
    let mut to_listener = Vec::new();
    let mut to_speaker = Vec::new();
    let started = Instant::now();
    for packet in &packets {
        server.receive(now, call.addresses[speaker], packet, &mut buf);
    }
    server.events(from);
    while let Some(datagram) = server.connection(from).datagrams().recv() {
        if server
            .connection(to)
            .datagrams()
            .send(datagram, true)
            .is_ok()
        {
            tally.forwarded += 1;
        }
    }
    server.drive(now, to, &mut to_listener);
    server.drive(now, from, &mut to_speaker);
    tally.server_time += started.elapsed();
    tally.packets_out += (to_listener.len() + to_speaker.len()) as u64;
    let listener_handle = call.client_handles[listener];
    for packet in &to_listener {
        call.clients[listener].receive(now, SERVER, packet, &mut buf);
    }
    call.clients[listener].events(listener_handle);
    while call.clients[listener]
        .connection(listener_handle)
        .datagrams()
        .recv()
        .is_some()
    {
        tally.delivered += 1;
    }
    for packet in &to_speaker {
        call.clients[speaker].receive(now, SERVER, packet, &mut buf);
    }
    // The listener's ACKs, if it has any to send now.
    let mut acks = Vec::new();
    call.clients[listener].drive(now, listener_handle, &mut acks);
    let started = Instant::now();
    for packet in &acks {
        server.receive(now, call.addresses[listener], packet, &mut buf);
    }
    let mut answers = Vec::new();
    if !acks.is_empty() {
        server.drive(now, to, &mut answers);
    }
    tally.server_time += started.elapsed();
    tally.packets_out += answers.len() as u64;
    for packet in &answers {
        call.clients[listener].receive(now, SERVER, packet, &mut buf);
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let calls: usize = args.first().and_then(|n| n.parse().ok()).unwrap_or(300);
    let seconds: u64 = args.get(1).and_then(|n| n.parse().ok()).unwrap_or(10);
    let identity = ServerIdentity::self_signed(&["localhost".to_owned()]).unwrap();
    let client: ClientConfig =
        client_config(&ServerTrust::Fingerprint(identity.fingerprint())).unwrap();
    let mut server = Side::new(Some(Arc::new(server_config(&identity).unwrap())));
    let mut now = Instant::now();
    let mut all_calls = connect_calls(&mut server, &client, calls, &mut now);

    // Audio: every 20 ms each member of every call sends one datagram,
    // calls spread over the period.
    let mut tally = Tally::default();
    let step = FRAME / u32::try_from(calls.max(1)).unwrap_or(1);
    for _ in 0..seconds * 50 {
        for call in &mut all_calls {
            now += step;
            for speaker in 0..2 {
                turn(&mut server, call, speaker, now, &mut tally);
            }
        }
    }
    // Nothing is lost in memory: a loss here would be a harness fault and
    // would add loss recovery to the figure.
    let lost: u64 = server
        .connections
        .iter_mut()
        .flatten()
        .map(|connection| connection.stats().path.lost_packets)
        .sum();
    assert_eq!(lost, 0, "packets lost in memory");
    assert_eq!(
        tally.delivered, tally.forwarded,
        "every forwarded datagram arrives"
    );
    let per_datagram = tally.server_time.as_secs_f64() * 1e6 / tally.forwarded.max(1) as f64;
    println!(
        "quinn-proto alone, {calls} 1v1 calls, {seconds} s of audio: {} datagrams forwarded, \
         {} packets out; server state machines {per_datagram:.2} µs per forwarded datagram \
         (one core would carry {:.0} calls before any I/O or scheduling)",
        tally.forwarded,
        tally.packets_out,
        1e6 / (per_datagram * 100.0)
    );
    let aead = aead_per_datagram();
    println!(
        "beside it, the crypto alone a relay of sealed datagrams without QUIC's per-packet \
         state would pay (AES-128-GCM, one open and one seal of 80 bytes + header): \
         {aead:.2} µs per forwarded datagram"
    );
}

/// One AES-128-GCM open and one seal of an 80-byte payload with a 12-byte
/// header as associated data, as a relay of sealed datagrams would do per
/// forwarded datagram; keys of two calls' worth of members, alternating.
fn aead_per_datagram() -> f64 {
    use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
    let keys: Vec<LessSafeKey> = (0..600_u16)
        .map(|member| {
            let mut key = [0_u8; 16];
            key[..2].copy_from_slice(&member.to_le_bytes());
            LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &key).unwrap())
        })
        .collect();
    let header = [0x11_u8; 12];
    let rounds = 200_000_u32;
    let sealed: Vec<Vec<u8>> = keys
        .iter()
        .map(|key| {
            let mut packet = vec![0x55_u8; 80];
            key.seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(header),
                &mut packet,
            )
            .unwrap();
            packet
        })
        .collect();
    let mut packet = Vec::with_capacity(128);
    let started = Instant::now();
    for round in 0..rounds {
        let sender = round as usize % keys.len();
        let receiver = (sender + 1) % keys.len();
        packet.clear();
        packet.extend_from_slice(&sealed[sender]);
        let len = keys[sender]
            .open_in_place(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(header),
                &mut packet,
            )
            .unwrap()
            .len();
        packet.truncate(len);
        keys[receiver]
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key([0; 12]),
                Aad::from(header),
                &mut packet,
            )
            .unwrap();
        std::hint::black_box(&packet);
    }
    started.elapsed().as_secs_f64() * 1e6 / f64::from(rounds)
}
