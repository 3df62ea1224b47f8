//! The server endpoint: several sockets on one port, stable reset keys, and
//! every connection attempt handed to the caller, who decides (refuse,
//! Retry or handshake): the admission policy is the server's, the same for
//! every transport.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use calling_api::ErrorCode;
use quinn::crypto::rustls::QuicServerConfig;
use signaling_link::{FramedRecv, FramedSend, Link};
use signaling_proto::{ClientMessage, ServerMessage};

use crate::send_stats::{SendCounters, SendStats};
use crate::{Quic, QuicMedia, QuicSend, ServerIdentity, TransportError, server_transport_config};

/// The UDP socket buffers the server asks for.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// The server side's QUIC configuration: TLS 1.3 (ring) with `identity`,
/// our ALPN (and HTTP/3's) and [`server_transport_config`]. [`QuicServer::bind`]
/// uses it; so do the benchmarks that drive quinn without our endpoint.
pub fn server_config(identity: &ServerIdentity) -> Result<quinn::ServerConfig, TransportError> {
    server_config_with(identity.server_config()?)
}

/// [`server_config`] over a TLS configuration of the caller's (one that
/// chooses its certificate per client, say); its ALPN is replaced by ours,
/// and HTTP/3's for browsers (see [`QuicAttempt::establish_any`]).
pub fn server_config_with(
    mut tls: rustls::ServerConfig,
) -> Result<quinn::ServerConfig, TransportError> {
    tls.alpn_protocols = vec![
        crate::ALPN.to_vec(),
        signaling_tls::WEBTRANSPORT_ALPN.to_vec(),
    ];
    let quic = QuicServerConfig::try_from(tls).map_err(|error| {
        TransportError::Certificate(format!("TLS 1.3 with a QUIC suite is required: {error}"))
    })?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(server_transport_config());
    Ok(config)
}

/// The server's QUIC endpoints on one port.
#[derive(Debug)]
pub struct QuicServer {
    /// One or more endpoints sharing one port (see [`QuicServer::bind`]).
    endpoints: Vec<quinn::Endpoint>,
    send_stats: SendStats,
}

impl QuicServer {
    /// Binds `addr` with `identity`, with `endpoints` QUIC endpoints on
    /// that one port (0: one per core this process may run on). Each
    /// endpoint receives on a socket of its own, so receiving and
    /// demultiplexing spread over the cores; the kernel steers each packet
    /// to the endpoint that owns its connection (see `steering.rs`), so
    /// a client that changes address keeps its connection. `reset_key` seeds the
    /// stateless-reset key and the connection-ID key: keep it stable
    /// across restarts so that a restarted server — with any number of
    /// endpoints — recognises its predecessor's connection IDs and resets
    /// them, and their clients learn at once that the connection is gone
    /// instead of waiting out the idle timeout.
    pub fn bind(
        addr: SocketAddr,
        identity: &ServerIdentity,
        reset_key: &[u8; 32],
        endpoints: usize,
    ) -> Result<Self, TransportError> {
        Self::bind_with(addr, server_config(identity)?, reset_key, endpoints)
    }

    /// [`bind`](Self::bind) with a QUIC configuration of the caller's
    /// ([`server_config_with`]).
    pub fn bind_with(
        addr: SocketAddr,
        server_config: quinn::ServerConfig,
        reset_key: &[u8; 32],
        endpoints: usize,
    ) -> Result<Self, TransportError> {
        // One configuration for all endpoints: one token key, so a Retry or
        // NEW_TOKEN token from any endpoint is good at every other.
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
        Ok(Self {
            endpoints: bound,
            send_stats: SendStats(send_counters),
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

    /// The next connection attempt, before any handshake work; `None` once
    /// the endpoints are closed. The caller decides what becomes of it.
    pub async fn accept(&self) -> Option<QuicAttempt> {
        self.next_incoming().await.map(QuicAttempt)
    }
}

/// A connection attempt, before its handshake: refuse it, ask the client
/// to prove its address (Retry), or complete the handshake.
#[derive(Debug)]
pub struct QuicAttempt(quinn::Incoming);

/// A connection after its QUIC handshake, by the protocol its client
/// chose (ALPN).
#[derive(Debug)]
pub enum Established {
    /// A native client's (our ALPN), with its signaling stream.
    Native(ServerConnection),
    /// A browser's (HTTP/3, for WebTransport): the WebTransport layer
    /// (`signaling-webtransport`) takes it from here.
    Http3(quinn::Connection),
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
}

impl ServerConnection {
    /// The connection as the transport seam sees it.
    pub fn into_link(self) -> Link<Quic, ClientMessage, ServerMessage> {
        Link {
            media: QuicMedia(self.connection),
            send: self.send,
            recv: self.recv,
        }
    }
}

impl QuicAttempt {
    /// The client's address.
    pub fn remote_address(&self) -> SocketAddr {
        self.0.remote_address()
    }

    /// Whether the client proved it receives at its address (it came back
    /// with a Retry token).
    pub fn address_validated(&self) -> bool {
        self.0.remote_address_validated()
    }

    /// Whether a Retry may still be sent (not after one already was).
    pub fn may_retry(&self) -> bool {
        self.0.may_retry()
    }

    /// Asks the client to prove its address: a round trip that costs the
    /// server nothing; the attempt comes back through
    /// [`QuicServer::accept`] if the client receives there.
    pub fn retry(self) {
        // Only fails when a Retry was already sent; then refuse instead.
        if let Err(refused) = self.0.retry() {
            refused.into_incoming().refuse();
        }
    }

    /// Turns the attempt away with a close the client sees at once.
    pub fn refuse(self) {
        self.0.refuse();
    }

    /// Completes the handshake and accepts a native client's signaling
    /// stream, within `timeout`. A browser's connection is closed
    /// (`PROTOCOL_MISMATCH`): where browsers are served, see
    /// [`QuicAttempt::establish_any`].
    pub async fn establish(self, timeout: Duration) -> Result<ServerConnection, TransportError> {
        match self.establish_any(timeout).await? {
            Established::Native(connection) => Ok(connection),
            Established::Http3(connection) => {
                crate::close(
                    &connection,
                    ErrorCode::PROTOCOL_MISMATCH,
                    "this endpoint serves no browsers",
                );
                Err(TransportError::NotNative)
            }
        }
    }

    /// Completes the handshake within `timeout`: a native client's
    /// connection with its signaling stream, or a browser's HTTP/3 one.
    pub async fn establish_any(self, timeout: Duration) -> Result<Established, TransportError> {
        let incoming = self.0;
        let deadline = tokio::time::Instant::now() + timeout;
        let connection = tokio::time::timeout_at(deadline, incoming)
            .await
            .map_err(|_| TransportError::TimedOut("handshake"))??;
        let chosen = connection
            .handshake_data()
            .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|data| data.protocol);
        if chosen.as_deref() == Some(signaling_tls::WEBTRANSPORT_ALPN) {
            return Ok(Established::Http3(connection));
        }
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
        Ok(Established::Native(ServerConnection {
            connection,
            send: FramedSend::new(QuicSend(send)),
            recv: FramedRecv::new(recv),
        }))
    }
}
