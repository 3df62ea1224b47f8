//! The server endpoint and its admission policy: connection caps, per-IP
//! caps, address validation with Retry, stable reset keys.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use calling_api::ErrorCode;
use quinn::crypto::rustls::QuicServerConfig;
use signaling_proto::{ClientMessage, ServerMessage};
use tracing::debug;

use signaling_link::{FramedRecv, FramedSend, Link};
use signaling_proto::TokenBucket;

use crate::send_stats::{SendCounters, SendStats};
use crate::{
    AddressBlock, Quic, QuicMedia, QuicSend, ServerIdentity, TransportError, transport_config,
};

/// What one server endpoint admits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections open at once (handshaking included); more are refused.
    pub max_connections: usize,
    /// Connections open at once from one IP address (an IPv6 address
    /// counts by its /64, see [`AddressBlock`]); more are refused.
    pub max_connections_per_ip: usize,
    /// Above this many open connections, a client must prove its address
    /// with a Retry round trip before the server spends a handshake on it.
    pub validate_addresses_above: usize,
    /// How long a client has to finish the handshake and open its stream
    /// (closed with `TIMEOUT` past it); the server gives it as long again
    /// to send its login.
    pub handshake_timeout: Duration,
    /// Connections open at once that have not logged in yet (their
    /// [`PreLoginSlot`] not yet released); more are refused, so that
    /// connections that never log in cannot crowd out the users.
    pub max_before_login: usize,
    /// Handshakes a second the server starts (as many at once). Past it, a
    /// client that has not proved its address is sent a Retry (a round
    /// trip that costs the server nothing), and one that has is refused:
    /// a handshake flood cannot take the CPU the logged-in users need.
    pub handshakes_per_sec: usize,
}

impl ServerLimits {
    /// The limits a server runs with unless configured otherwise.
    pub const DEFAULT: Self = Self {
        max_connections: 20_000,
        max_connections_per_ip: 64,
        validate_addresses_above: 2_000,
        handshake_timeout: Duration::from_secs(10),
        max_before_login: 1_000,
        handshakes_per_sec: 1_000,
    };
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

type PerIp = Arc<Mutex<HashMap<AddressBlock, usize>>>;

/// The UDP socket buffers the server asks for.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// What the admission policy turned away so far (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    /// Refused: the connection cap was reached.
    pub refused_full: u64,
    /// Refused: the address (or /64) has its connections already.
    pub refused_per_address: u64,
    /// Refused: too many connections have not logged in yet.
    pub refused_before_login: u64,
    /// Refused: over the handshake budget, address already proved.
    pub refused_handshake_budget: u64,
    /// Sent a Retry to prove their address first.
    pub retried: u64,
}

#[derive(Debug, Default)]
struct AdmissionCounters {
    refused_full: AtomicU64,
    refused_per_address: AtomicU64,
    refused_before_login: AtomicU64,
    refused_handshake_budget: AtomicU64,
    retried: AtomicU64,
}

/// A handle on an endpoint's admission counters that outlives borrowing
/// the endpoint (the accept loop owns it).
#[derive(Debug, Clone)]
pub struct AdmissionStats(Arc<AdmissionCounters>);

impl AdmissionStats {
    /// What was turned away so far.
    pub fn counts(&self) -> AdmissionCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        AdmissionCounts {
            refused_full: load(&self.0.refused_full),
            refused_per_address: load(&self.0.refused_per_address),
            refused_before_login: load(&self.0.refused_before_login),
            refused_handshake_budget: load(&self.0.refused_handshake_budget),
            retried: load(&self.0.retried),
        }
    }
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The server side's QUIC configuration: TLS 1.3 (ring) with `identity`,
/// our ALPN and [`transport_config`]. [`QuicServer::bind`] uses it; so do
/// the benchmarks that drive quinn without our endpoint.
pub fn server_config(identity: &ServerIdentity) -> Result<quinn::ServerConfig, TransportError> {
    let mut tls = identity.server_config()?;
    tls.alpn_protocols = vec![crate::ALPN.to_vec()];
    let quic = QuicServerConfig::try_from(tls).map_err(|error| {
        TransportError::Certificate(format!("TLS 1.3 with a QUIC suite is required: {error}"))
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(transport_config());
    Ok(config)
}

/// The server's QUIC endpoint with its admission policy.
#[derive(Debug)]
pub struct QuicServer {
    /// One or more endpoints sharing one port (see [`QuicServer::bind`]).
    endpoints: Vec<quinn::Endpoint>,
    send_stats: SendStats,
    limits: ServerLimits,
    per_ip: PerIp,
    before_login: Arc<AtomicUsize>,
    handshakes: Mutex<TokenBucket>,
    counters: Arc<AdmissionCounters>,
}

impl QuicServer {
    /// Binds `addr` with `identity`, with `endpoints` QUIC endpoints on
    /// that one port (0: one per core this process may run on). Each
    /// endpoint receives on a socket of its own, so receiving and
    /// demultiplexing spread over the cores; the kernel steers each packet
    /// to the endpoint that owns its connection (see `steering.rs`), so
    /// a client that changes address keeps its connection. The admission
    /// policy counts over all of them. `reset_key` seeds the
    /// stateless-reset key and the connection-ID key: keep it stable
    /// across restarts so that a restarted server — with any number of
    /// endpoints — recognises its predecessor's connection IDs and resets
    /// them, and their clients learn at once that the connection is gone
    /// instead of waiting out the idle timeout.
    pub fn bind(
        addr: SocketAddr,
        identity: &ServerIdentity,
        limits: ServerLimits,
        reset_key: &[u8; 32],
        endpoints: usize,
    ) -> Result<Self, TransportError> {
        // One configuration for all endpoints: one token key, so a Retry or
        // NEW_TOKEN token from any endpoint is good at every other.
        let server_config = server_config(identity)?;
        let reset_hmac = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
        // Connection IDs must validate after a restart too, or the restarted
        // server drops the old clients' packets instead of resetting them.
        let cid_key = ring::hmac::sign(&reset_hmac, b"opencalling connection id key");
        let cid_key = cid_key.as_ref().to_vec();
        let count = match endpoints {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            count => count,
        }
        .min(crate::steering::MAX_ENDPOINTS);
        let sockets = crate::steering::bind_group(addr, count)?;
        let runtime = quinn::default_runtime().ok_or_else(|| {
            TransportError::Io(std::io::Error::other("no async runtime for quinn"))
        })?;
        let mut bound = Vec::with_capacity(sockets.len());
        #[cfg_attr(not(target_os = "linux"), allow(unused_mut))]
        let mut send_counters = Vec::with_capacity(sockets.len());
        for (index, socket) in sockets.into_iter().enumerate() {
            let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(reset_hmac.clone()));
            let cid_key = cid_key.clone();
            endpoint_config.cid_generator(move || {
                Box::new(crate::steering::SteeredCids::new(&cid_key, index, count))
            });
            // Bursts of handshakes overflow the default receive buffer (~200
            // KiB) and a lost handshake packet costs a client a second or
            // more. The kernel caps the request at net.core.rmem_max; best
            // effort.
            let udp_state = quinn::udp::UdpSocketState::new((&socket).into())?;
            if let Err(error) = udp_state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER) {
                tracing::debug!(%error, "could not enlarge the UDP receive buffer");
            }
            let granted = udp_state.recv_buffer_size((&socket).into()).unwrap_or(0);
            if index == 0 && granted < SOCKET_BUFFER {
                tracing::warn!(
                    granted_kib = granted / 1024,
                    wanted_kib = SOCKET_BUFFER / 1024,
                    "the UDP receive buffer is smaller than asked: raise net.core.rmem_max, \
                     or bursts of handshakes lose packets"
                );
            }
            let _ = udp_state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
            #[cfg(target_os = "linux")]
            let endpoint = {
                let counters = Arc::<SendCounters>::default();
                send_counters.push(Arc::clone(&counters));
                let socket = crate::batching::BatchingSocket::new(socket, udp_state, counters)?;
                quinn::Endpoint::new_with_abstract_socket(
                    endpoint_config,
                    Some(server_config.clone()),
                    socket,
                    Arc::clone(&runtime),
                )?
            };
            #[cfg(not(target_os = "linux"))]
            let endpoint = quinn::Endpoint::new(
                endpoint_config,
                Some(server_config.clone()),
                socket,
                Arc::clone(&runtime),
            )?;
            bound.push(endpoint);
        }
        // A handshake budget is a count well within f64's exact range.
        let per_sec = limits.handshakes_per_sec as f64;
        Ok(Self {
            endpoints: bound,
            send_stats: SendStats(send_counters),
            limits,
            per_ip: Arc::default(),
            before_login: Arc::default(),
            handshakes: Mutex::new(TokenBucket::new(per_sec, per_sec)),
            counters: Arc::default(),
        })
    }

    /// What its sockets send, counted (see [`SendStats::counts`]).
    pub fn send_stats(&self) -> SendStats {
        self.send_stats.clone()
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, TransportError> {
        let first = self.endpoints.first().ok_or_else(|| {
            TransportError::Io(std::io::Error::other("a server with no endpoint"))
        })?;
        Ok(first.local_addr()?)
    }

    /// Its admission counters, as a handle to keep.
    pub fn admission_stats(&self) -> AdmissionStats {
        AdmissionStats(Arc::clone(&self.counters))
    }

    /// The endpoints (stats, close, wait_idle), in steering order.
    pub fn endpoints(&self) -> &[quinn::Endpoint] {
        &self.endpoints
    }

    /// Connections open over all endpoints.
    pub fn open_connections(&self) -> usize {
        self.endpoints
            .iter()
            .map(quinn::Endpoint::open_connections)
            .sum()
    }

    /// The next attempt on any endpoint; `None` once they are closed.
    async fn next_incoming(&self) -> Option<quinn::Incoming> {
        if let [only] = self.endpoints.as_slice() {
            return only.accept().await;
        }
        let accepts = self
            .endpoints
            .iter()
            .map(|endpoint| Box::pin(endpoint.accept()));
        // Accept futures are cancel-safe: the ones not chosen lose nothing.
        futures_util::future::select_all(accepts).await.0
    }

    /// The next connection attempt that passes the admission policy; `None`
    /// once the endpoint is closed. Refused and retried attempts are handled
    /// here and never returned.
    pub async fn accept(&self) -> Option<AcceptedConnection> {
        loop {
            let incoming = self.next_incoming().await?;
            let remote = incoming.remote_address();
            let open = self.open_connections();
            if open > self.limits.max_connections {
                debug!(%remote, open, "connection cap reached: refused");
                bump(&self.counters.refused_full);
                incoming.refuse();
                continue;
            }
            if open > self.limits.validate_addresses_above && !incoming.remote_address_validated() {
                if incoming.may_retry() {
                    // Only a client that receives at its claimed address comes back.
                    bump(&self.counters.retried);
                    let _ = incoming.retry();
                } else {
                    bump(&self.counters.refused_full);
                    incoming.refuse();
                }
                continue;
            }
            let within_budget = self
                .handshakes
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .admit(Instant::now(), 1.0);
            if !within_budget {
                if !incoming.remote_address_validated() && incoming.may_retry() {
                    bump(&self.counters.retried);
                    let _ = incoming.retry();
                } else {
                    debug!(%remote, "handshake budget spent: refused");
                    bump(&self.counters.refused_handshake_budget);
                    incoming.refuse();
                }
                continue;
            }
            let Some(pre_login) =
                PreLoginSlot::take(&self.before_login, self.limits.max_before_login)
            else {
                debug!(%remote, "too many connections not logged in yet: refused");
                bump(&self.counters.refused_before_login);
                incoming.refuse();
                continue;
            };
            let Some(slot) = IpSlot::take(
                &self.per_ip,
                remote.ip(),
                self.limits.max_connections_per_ip,
            ) else {
                debug!(%remote, "per-IP cap reached: refused");
                bump(&self.counters.refused_per_address);
                incoming.refuse();
                continue;
            };
            return Some(AcceptedConnection {
                incoming,
                slot,
                pre_login,
                timeout: self.limits.handshake_timeout,
            });
        }
    }

    /// The admission policy for a connection of another transport (the
    /// fallback over TCP) from `remote`: the same handshake budget, the
    /// same cap on connections not logged in yet and per address block,
    /// shared with QUIC's. The slots are held as long as the connection
    /// (and, for the pre-login one, until its login). `None`: refused,
    /// and counted as QUIC's refusals are.
    pub fn admit_other_transport(&self, remote: SocketAddr) -> Option<(IpSlot, PreLoginSlot)> {
        let within_budget = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(Instant::now(), 1.0);
        if !within_budget {
            bump(&self.counters.refused_handshake_budget);
            return None;
        }
        let Some(pre_login) = PreLoginSlot::take(&self.before_login, self.limits.max_before_login)
        else {
            bump(&self.counters.refused_before_login);
            return None;
        };
        let Some(slot) = IpSlot::take(
            &self.per_ip,
            remote.ip(),
            self.limits.max_connections_per_ip,
        ) else {
            bump(&self.counters.refused_per_address);
            return None;
        };
        Some((slot, pre_login))
    }

    /// Connections open now from `ip`'s address block (the address, or
    /// its IPv6 /64).
    pub fn connections_from(&self, ip: IpAddr) -> usize {
        self.per_ip
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&AddressBlock::of(ip))
            .copied()
            .unwrap_or(0)
    }
}

/// Counts a connection that has not logged in yet, until released or
/// dropped (see [`ServerLimits::max_before_login`]).
#[derive(Debug)]
pub struct PreLoginSlot {
    count: Option<Arc<AtomicUsize>>,
}

impl PreLoginSlot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()?;
        Some(Self {
            count: Some(Arc::clone(count)),
        })
    }

    /// The connection logged in: it no longer counts as one that has not.
    pub fn release(&mut self) {
        if let Some(count) = self.count.take() {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for PreLoginSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Holds one of an address block's connection slots until dropped.
#[derive(Debug)]
pub struct IpSlot {
    per_ip: PerIp,
    ip: AddressBlock,
}

impl IpSlot {
    fn take(per_ip: &PerIp, ip: IpAddr, max: usize) -> Option<Self> {
        let ip = AddressBlock::of(ip);
        let mut counts = per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(ip).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Self {
            per_ip: Arc::clone(per_ip),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.per_ip.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// A connection attempt the policy admitted, before its handshake.
#[derive(Debug)]
pub struct AcceptedConnection {
    incoming: quinn::Incoming,
    slot: IpSlot,
    pre_login: PreLoginSlot,
    timeout: Duration,
}

/// An established server-side connection with its signaling stream.
#[derive(Debug)]
pub struct ServerConnection {
    /// The QUIC connection (datagrams, close).
    pub connection: quinn::Connection,
    /// Frames to the client.
    pub send: FramedSend<QuicSend, ServerMessage>,
    /// Frames from the client.
    pub recv: FramedRecv<quinn::RecvStream, ClientMessage>,
    /// The IP slot, released when this is dropped.
    pub slot: IpSlot,
    /// Counts this connection as not logged in yet until released.
    pub pre_login: PreLoginSlot,
}

impl ServerConnection {
    /// The connection as the transport seam sees it, the IP slot to keep
    /// as long as it is open, and the slot to release once it logged in.
    pub fn into_link(
        self,
    ) -> (
        Link<Quic, ClientMessage, ServerMessage>,
        IpSlot,
        PreLoginSlot,
    ) {
        let link = Link {
            media: QuicMedia(self.connection),
            send: self.send,
            recv: self.recv,
        };
        (link, self.slot, self.pre_login)
    }
}

impl AcceptedConnection {
    /// The client's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.incoming.remote_address()
    }

    /// Completes the handshake and accepts the client's signaling stream,
    /// within the handshake timeout.
    pub async fn establish(self) -> Result<ServerConnection, TransportError> {
        let Self {
            incoming,
            slot,
            pre_login,
            timeout,
        } = self;
        let deadline = tokio::time::Instant::now() + timeout;
        let connection = tokio::time::timeout_at(deadline, incoming)
            .await
            .map_err(|_| TransportError::TimedOut("handshake"))??;
        let (send, recv) = match tokio::time::timeout_at(deadline, connection.accept_bi()).await {
            Ok(stream) => stream?,
            Err(_) => {
                // Say why, rather than vanish with code 0.
                crate::close(
                    &connection,
                    ErrorCode::TIMEOUT,
                    "no signaling stream in time",
                );
                return Err(TransportError::TimedOut("signaling stream"));
            }
        };
        Ok(ServerConnection {
            connection,
            send: FramedSend::new(QuicSend(send)),
            recv: FramedRecv::new(recv),
            slot,
            pre_login,
        })
    }
}
