//! A cluster node's IO: the glue around `calling-cluster`'s sans-IO
//! [`ClusterNode`], which lives in the hub task.
//!
//! - **Store**: each request the node asks for runs on Redis in a task of
//!   its own ([`RedisStore`]); the answer comes back to the hub.
//! - **Node trunks**: QUIC between nodes, on a UDP port of their own
//!   (`--cluster-listen`), ALPN `opencalling-node/1`. Each node makes a
//!   self-signed certificate at start and publishes its fingerprint with its
//!   address in the store (`"<ip:port> <fingerprint>"`); a dialer pins it.
//!   Both ends then prove they hold the cluster key: an HMAC-SHA256 of the
//!   TLS session's exported keying material, so a proof cannot be replayed
//!   on another connection. The connection's first stream carries the
//!   control trunk's frames (a follower dials the control); its datagrams
//!   carry media.
//! - **Media** ([`Mesh`]): a member on another node is a [`MediaLink`]
//!   that sends each datagram (already stamped with its sender's flow) to
//!   that node, prefixed with the member's connection number there; the
//!   receiving node hands it to the relay, which delivers it only to a
//!   member of the sender's call. Connections to other nodes are made when
//!   a route first needs them, to the addresses of the store's registry.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use calling_api::{CallId, ErrorCode};
use calling_cluster::{
    ClusterNode, ControlHolder, FromControl, NodeConn, NodeId, NodeOutput, StoreReply,
    StoreRequest, ToControl, TrunkFrame,
};
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};
use signaling_link::{FramedRecv, FramedSend, LinkClosed, MediaLink};
use signaling_proto::ConnId;
use signaling_quic::QuicSend;
use signaling_tls::{CertFingerprint, ServerIdentity, ServerTrust};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::cluster_store::RedisStore;
use crate::config::{ClusterConfig, SecretKey};
use crate::relay::MediaRoutes;

/// The node trunks' ALPN.
const NODE_ALPN: &[u8] = b"opencalling-node/1";
/// The exporter label the key proofs are bound to.
const EXPORTER_LABEL: &[u8] = b"EXPORTER-opencalling-node-auth";
/// A dead node trunk is noticed within this (keep-alives every third).
const NODE_IDLE_TIMEOUT: Duration = Duration::from_secs(3);
/// How often the registry is read for the other nodes' addresses.
const ADDRESS_BOOK_EVERY: Duration = Duration::from_secs(2);

/// Why cluster mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// The Redis URL is unusable.
    #[error(transparent)]
    Store(#[from] crate::cluster_store::StoreSetupError),
    /// The node trunks' socket or TLS.
    #[error("node trunks: {0}")]
    Trunks(String),
}

/// What the cluster's IO brings the hub.
#[derive(Debug)]
pub(crate) enum IoInput {
    Store {
        id: u64,
        reply: StoreReply,
    },
    ControlUp {
        generation: u64,
    },
    ControlDown {
        generation: u64,
    },
    ControlFrame {
        generation: u64,
        frame: TrunkFrame<FromControl>,
    },
    NodeUp {
        node: NodeId,
        trunk: u64,
        frames: mpsc::UnboundedSender<TrunkFrame<FromControl>>,
    },
    NodeFrame {
        node: NodeId,
        trunk: u64,
        frame: TrunkFrame<ToControl>,
    },
    NodeDown {
        node: NodeId,
        trunk: u64,
    },
}

/// What a node sends first on a node trunk: who it is, what the link is
/// for, and its proof of the cluster key.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeAuth {
    node: NodeId,
    control: bool,
    proof: [u8; 32],
}

/// Every frame of a node trunk's stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum NodeWire<M> {
    Auth(NodeAuth),
    Frame(TrunkFrame<M>),
}

/// A node's address as published: `"<ip:port> <fingerprint hex>"`.
pub(crate) fn published_address(addr: SocketAddr, fingerprint: &CertFingerprint) -> String {
    format!("{addr} {fingerprint}")
}

fn parse_published(text: &str) -> Option<(SocketAddr, CertFingerprint)> {
    let (addr, fingerprint) = text.split_once(' ')?;
    Some((addr.parse().ok()?, fingerprint.parse().ok()?))
}

/// The proof of the cluster key for `node` in `role` on `connection`.
fn proof(
    key: &SecretKey,
    connection: &quinn::Connection,
    role: u8,
    node: NodeId,
) -> Option<[u8; 32]> {
    let mut exported = [0_u8; 32];
    connection
        .export_keying_material(&mut exported, EXPORTER_LABEL, &[role])
        .ok()?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, key.expose().as_bytes());
    let mut context = ring::hmac::Context::with_key(&key);
    context.update(&[role]);
    context.update(&node.0.to_be_bytes());
    context.update(&exported);
    let tag = context.sign();
    let mut proof = [0_u8; 32];
    proof.copy_from_slice(tag.as_ref());
    Some(proof)
}

fn proof_holds(key: &SecretKey, connection: &quinn::Connection, role: u8, auth: &NodeAuth) -> bool {
    proof(key, connection, role, auth.node)
        .is_some_and(|expected| crate::secret::same_bytes(&expected, &auth.proof))
}

const DIALER: u8 = b'd';
const ACCEPTOR: u8 = b'a';

/// The media side of the node trunks: connections to other nodes by id,
/// their addresses, and the relay that takes what they bring.
#[derive(Debug)]
pub(crate) struct Mesh {
    me: NodeId,
    key: SecretKey,
    endpoint: quinn::Endpoint,
    routes: Arc<MediaRoutes>,
    connections: RwLock<HashMap<NodeId, quinn::Connection>>,
    addresses: RwLock<HashMap<NodeId, String>>,
    dialing: Mutex<std::collections::HashSet<NodeId>>,
}

impl Mesh {
    /// A link to the member `at`, on another node.
    pub(crate) fn link_to(self: &Arc<Self>, at: NodeConn) -> Arc<dyn MediaLink> {
        Arc::new(RemoteMember {
            mesh: Arc::clone(self),
            at,
        })
    }

    /// A link to every member of `call_id` on `node`: what they all hear
    /// crosses to that node once, and it hands a copy to each.
    pub(crate) fn link_to_call(
        self: &Arc<Self>,
        node: NodeId,
        call_id: CallId,
    ) -> Arc<dyn MediaLink> {
        Arc::new(RemoteCall {
            mesh: Arc::clone(self),
            node,
            call_id,
        })
    }

    /// Sends `datagram` to `node` with its `tag` (see [`MediaTag`]).
    fn send(self: &Arc<Self>, node: NodeId, tag: MediaTag, datagram: &[u8]) {
        let connection = self
            .connections
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .cloned();
        let Some(connection) = connection else {
            self.dial_media(node);
            return;
        };
        let mut tagged = BytesMut::with_capacity(8 + datagram.len());
        tagged.put_u64(tag.encode());
        tagged.extend_from_slice(datagram);
        if connection.send_datagram(tagged.freeze()).is_err() {
            self.forget(node, &connection);
        }
    }

    fn forget(&self, node: NodeId, connection: &quinn::Connection) {
        let mut connections = self
            .connections
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        if connections
            .get(&node)
            .is_some_and(|kept| kept.stable_id() == connection.stable_id())
        {
            connections.remove(&node);
        }
    }

    /// Keeps `connection` to `node` for media and starts reading its
    /// datagrams.
    fn adopt(self: &Arc<Self>, node: NodeId, connection: quinn::Connection) {
        self.connections
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node, connection.clone());
        let mesh = Arc::clone(self);
        tokio::spawn(async move {
            while let Ok(datagram) = connection.read_datagram().await {
                let Some(tag) = datagram.get(..8).and_then(|tag| tag.try_into().ok()) else {
                    continue;
                };
                match MediaTag::decode(u64::from_be_bytes(tag)) {
                    MediaTag::Member(conn) => mesh
                        .routes
                        .deliver_from_node(ConnId(conn), datagram.slice(8..)),
                    MediaTag::Call(call_id) => {
                        mesh.routes.deliver_to_call(call_id, &datagram.slice(8..));
                    }
                }
            }
            mesh.forget(node, &connection);
        });
    }

    /// Dials `node` for media, once at a time, if its address is known.
    fn dial_media(self: &Arc<Self>, node: NodeId) {
        let address = self
            .addresses
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&node)
            .cloned();
        let Some(address) = address else {
            return;
        };
        if !self
            .dialing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(node)
        {
            return;
        }
        let mesh = Arc::clone(self);
        tokio::spawn(async move {
            match dial(&mesh, &address, false).await {
                Ok((connection, peer, _, _)) if peer == node => mesh.adopt(node, connection),
                Ok((connection, peer, _, _)) => {
                    warn!(%node, %peer, "a node's address answered as another node");
                    connection.close(0_u32.into(), b"wrong node");
                }
                Err(error) => debug!(%node, %error, "media link to a node failed"),
            }
            mesh.dialing
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&node);
        });
    }
}

/// Whom a datagram between nodes is for: its first 8 bytes, big-endian.
/// A member's connection number on the receiving node, or (the top bit
/// set) every member of a call there. Connection numbers count up from 1
/// and call ids are `term << 32 | counter` with terms far below 2^31, so
/// neither reaches the top bit; a node of an older build reads a call's tag
/// as a connection it does not have, and drops the datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum MediaTag {
    Member(u64),
    Call(CallId),
}

const CALL_TAG: u64 = 1 << 63;

impl MediaTag {
    fn encode(self) -> u64 {
        match self {
            Self::Member(conn) => conn & !CALL_TAG,
            Self::Call(call_id) => call_id.0 | CALL_TAG,
        }
    }

    fn decode(tag: u64) -> Self {
        if tag & CALL_TAG == 0 {
            Self::Member(tag)
        } else {
            Self::Call(CallId(tag & !CALL_TAG))
        }
    }
}

/// A call member on another node, as the relay sees it.
#[derive(Debug)]
struct RemoteMember {
    mesh: Arc<Mesh>,
    at: NodeConn,
}

impl MediaLink for RemoteMember {
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
        // A node not reachable yet loses this datagram, as a full buffer
        // would; the link itself is never "closed".
        self.mesh
            .send(self.at.node, MediaTag::Member(self.at.conn), &datagram);
        Ok(())
    }

    fn close(&self, _: ErrorCode, _: &str) {}
}

/// Every member of a call on another node, as the relay sees them.
#[derive(Debug)]
struct RemoteCall {
    mesh: Arc<Mesh>,
    node: NodeId,
    call_id: CallId,
}

impl MediaLink for RemoteCall {
    fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
        self.mesh
            .send(self.node, MediaTag::Call(self.call_id), &datagram);
        Ok(())
    }

    fn close(&self, _: ErrorCode, _: &str) {}
}

type DialedTrunk = (
    quinn::Connection,
    NodeId,
    FramedSend<QuicSend, NodeWire<ToControl>>,
    FramedRecv<quinn::RecvStream, NodeWire<FromControl>>,
);

/// Connects to the node published at `address`, proves the key and checks
/// its proof; `control`: the stream will carry the control trunk.
async fn dial(mesh: &Mesh, address: &str, control: bool) -> Result<DialedTrunk, String> {
    let (addr, fingerprint) =
        parse_published(address).ok_or_else(|| format!("unusable address {address:?}"))?;
    let tls = signaling_tls::tls_client_config(&ServerTrust::Fingerprint(fingerprint))
        .map_err(|error| error.to_string())?;
    let mut tls = tls;
    tls.alpn_protocols = vec![NODE_ALPN.to_vec()];
    let quic = QuicClientConfig::try_from(tls).map_err(|error| error.to_string())?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    config.transport_config(node_transport());
    let connecting = mesh
        .endpoint
        .connect_with(config, addr, "opencalling-node")
        .map_err(|error| error.to_string())?;
    let connection = tokio::time::timeout(NODE_IDLE_TIMEOUT, connecting)
        .await
        .map_err(|_| "timed out".to_owned())?
        .map_err(|error| error.to_string())?;
    let (send, recv) = connection
        .open_bi()
        .await
        .map_err(|error| error.to_string())?;
    let mut send = FramedSend::new(QuicSend(send));
    let mut recv = FramedRecv::new(recv);
    let mine = proof(&mesh.key, &connection, DIALER, mesh.me).ok_or("no keying material")?;
    send.send(&NodeWire::Auth(NodeAuth {
        node: mesh.me,
        control,
        proof: mine,
    }))
    .await
    .map_err(|error| error.to_string())?;
    let answer = tokio::time::timeout(NODE_IDLE_TIMEOUT, recv.recv())
        .await
        .map_err(|_| "no answer to the key proof".to_owned())?
        .map_err(|error| error.to_string())?;
    match answer {
        Some(NodeWire::Auth(auth)) if proof_holds(&mesh.key, &connection, ACCEPTOR, &auth) => {
            Ok((connection, auth.node, send, recv))
        }
        _ => {
            connection.close(0_u32.into(), b"key");
            Err("the node does not hold the cluster key".into())
        }
    }
}

fn node_transport() -> Arc<quinn::TransportConfig> {
    let mut transport = quinn::TransportConfig::default();
    transport.max_idle_timeout(NODE_IDLE_TIMEOUT.try_into().ok());
    transport.keep_alive_interval(Some(NODE_IDLE_TIMEOUT / 3));
    transport.datagram_receive_buffer_size(Some(4 << 20));
    transport.datagram_send_buffer_size(4 << 20);
    Arc::new(transport)
}

/// The hub's handle on the cluster's IO. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct ClusterIo {
    hub: HubPost,
    store: RedisStore,
    mesh: Arc<Mesh>,
    /// The control trunk's dialer: its generation, task and frame queue.
    control: Option<(
        u64,
        JoinHandle<()>,
        mpsc::UnboundedSender<TrunkFrame<ToControl>>,
    )>,
    generation: u64,
    /// Trunks from other nodes to this node's control, by node.
    nodes: HashMap<NodeId, (u64, mpsc::UnboundedSender<TrunkFrame<FromControl>>)>,
    tasks: Vec<JoinHandle<()>>,
}

impl Drop for ClusterIo {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some((_, task, _)) = &self.control {
            task.abort();
        }
    }
}

/// Starts a node: its trunk listener, its store, its address book. The
/// node's published address (with the certificate's fingerprint) is the
/// first value; the sans-IO node is made with it by the caller.
pub(crate) fn start(
    config: &ClusterConfig,
    me: NodeId,
    hub: HubPost,
    routes: Arc<MediaRoutes>,
) -> Result<(String, ClusterIo), ClusterError> {
    let identity = ServerIdentity::self_signed(&["opencalling-node".to_owned()])
        .map_err(|error| ClusterError::Trunks(error.to_string()))?;
    let mut tls = identity
        .server_config()
        .map_err(|error| ClusterError::Trunks(error.to_string()))?;
    tls.alpn_protocols = vec![NODE_ALPN.to_vec()];
    let quic =
        QuicServerConfig::try_from(tls).map_err(|error| ClusterError::Trunks(error.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(node_transport());
    let endpoint = quinn::Endpoint::server(server, config.listen)
        .map_err(|error| ClusterError::Trunks(format!("{}: {error}", config.listen)))?;
    let advertise = if config.listen.port() == 0 {
        // Tests bind port 0: advertise the port actually bound.
        let bound = endpoint
            .local_addr()
            .map_err(|error| ClusterError::Trunks(error.to_string()))?;
        SocketAddr::new(config.advertise.ip(), bound.port())
    } else {
        config.advertise
    };
    let published = published_address(advertise, &identity.fingerprint());
    let store = RedisStore::new(config.redis_url.expose(), &config.prefix)?;
    let mesh = Arc::new(Mesh {
        me,
        key: config.key.clone(),
        endpoint: endpoint.clone(),
        routes,
        connections: RwLock::new(HashMap::new()),
        addresses: RwLock::new(HashMap::new()),
        dialing: Mutex::new(std::collections::HashSet::new()),
    });
    info!(node = %me, trunks = %advertise, "cluster node: trunks listening");
    let tasks = vec![
        tokio::spawn(accept_trunks(Arc::clone(&mesh), hub.clone())),
        tokio::spawn(keep_address_book(Arc::clone(&mesh), store.clone())),
    ];
    let io = ClusterIo {
        hub,
        store,
        mesh,
        control: None,
        generation: 0,
        nodes: HashMap::new(),
        tasks,
    };
    Ok((published, io))
}

async fn keep_address_book(mesh: Arc<Mesh>, store: RedisStore) {
    loop {
        if let StoreReply::Nodes(nodes) = store.run(&StoreRequest::LiveNodes).await {
            *mesh
                .addresses
                .write()
                .unwrap_or_else(PoisonError::into_inner) = nodes.into_iter().collect();
        }
        tokio::time::sleep(ADDRESS_BOOK_EVERY).await;
    }
}

/// Accepts node trunks: each proves the key; a control trunk's frames go to
/// the hub; every trunk's datagrams to the relay.
async fn accept_trunks(mesh: Arc<Mesh>, hub: HubPost) {
    let mut next_trunk = 0_u64;
    while let Some(incoming) = mesh.endpoint.accept().await {
        next_trunk += 1;
        let trunk = next_trunk;
        let mesh = Arc::clone(&mesh);
        let hub = hub.clone();
        tokio::spawn(async move {
            if let Err(error) = serve_trunk(mesh, hub, incoming, trunk).await {
                debug!(%error, "a node trunk ended");
            }
        });
    }
}

async fn serve_trunk(
    mesh: Arc<Mesh>,
    hub: HubPost,
    incoming: quinn::Incoming,
    trunk: u64,
) -> Result<(), String> {
    let connection = tokio::time::timeout(NODE_IDLE_TIMEOUT, incoming)
        .await
        .map_err(|_| "handshake timed out".to_owned())?
        .map_err(|error| error.to_string())?;
    let (send, recv) = tokio::time::timeout(NODE_IDLE_TIMEOUT, connection.accept_bi())
        .await
        .map_err(|_| "no stream".to_owned())?
        .map_err(|error| error.to_string())?;
    let mut send: FramedSend<QuicSend, NodeWire<FromControl>> = FramedSend::new(QuicSend(send));
    let mut recv: FramedRecv<quinn::RecvStream, NodeWire<ToControl>> = FramedRecv::new(recv);
    let auth = match tokio::time::timeout(NODE_IDLE_TIMEOUT, recv.recv()).await {
        Ok(Ok(Some(NodeWire::Auth(auth))))
            if proof_holds(&mesh.key, &connection, DIALER, &auth) =>
        {
            auth
        }
        _ => {
            connection.close(0_u32.into(), b"key");
            return Err("a node trunk without the cluster key: refused".into());
        }
    };
    let mine = proof(&mesh.key, &connection, ACCEPTOR, mesh.me).ok_or("no keying material")?;
    send.send(&NodeWire::Auth(NodeAuth {
        node: mesh.me,
        control: auth.control,
        proof: mine,
    }))
    .await
    .map_err(|error| error.to_string())?;
    let node = auth.node;
    mesh.adopt(node, connection.clone());
    if !auth.control {
        connection.closed().await;
        return Ok(());
    }
    let (frames, mut outgoing) = mpsc::unbounded_channel();
    hub.post(IoInput::NodeUp {
        node,
        trunk,
        frames,
    })
    .await;
    loop {
        tokio::select! {
            frame = outgoing.recv() => {
                let Some(frame) = frame else { break };
                if send.send(&NodeWire::Frame(frame)).await.is_err() {
                    break;
                }
            }
            received = recv.recv() => match received {
                Ok(Some(NodeWire::Frame(frame))) => hub.post(IoInput::NodeFrame { node, trunk, frame }).await,
                _ => break,
            },
        }
    }
    hub.post(IoInput::NodeDown { node, trunk }).await;
    connection.close(0_u32.into(), b"");
    Ok(())
}

/// The hub's queue as the cluster's tasks see it. `post` hands it an
/// [`IoInput`], waiting for room: a trunk frame dropped here would be
/// counted by neither side's books, so nothing is dropped (the link's
/// reader waits instead, and so does its peer). Once the hub is gone (the
/// server stopping) it does nothing. The hub makes it, so this module
/// names no type of the hub's.
#[derive(Clone)]
pub(crate) struct HubPost(Arc<dyn Fn(IoInput) -> PostFuture + Send + Sync>);

type PostFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

impl HubPost {
    pub(crate) fn new<F, Posted>(post: F) -> Self
    where
        F: Fn(IoInput) -> Posted + Send + Sync + 'static,
        Posted: std::future::Future<Output = ()> + Send + 'static,
    {
        Self(Arc::new(move |input| Box::pin(post(input))))
    }

    async fn post(&self, input: IoInput) {
        (self.0)(input).await;
    }
}

impl std::fmt::Debug for HubPost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HubPost")
    }
}

/// Keeps the control trunk to `holder` up: connect, prove, carry frames;
/// after a break, again, with backoff.
async fn keep_control_trunk(
    mesh: Arc<Mesh>,
    hub: HubPost,
    holder: ControlHolder,
    generation: u64,
    mut outgoing: mpsc::UnboundedReceiver<TrunkFrame<ToControl>>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        match dial(&mesh, &holder.addr, true).await {
            Ok((connection, peer, mut send, mut recv)) if peer == holder.node => {
                backoff = Duration::from_millis(100);
                mesh.adopt(peer, connection.clone());
                // Frames queued for an earlier connection are stale: the
                // books resend after the new hello.
                while outgoing.try_recv().is_ok() {}
                hub.post(IoInput::ControlUp { generation }).await;
                loop {
                    tokio::select! {
                        frame = outgoing.recv() => {
                            let Some(frame) = frame else { return };
                            if send.send(&NodeWire::Frame(frame)).await.is_err() {
                                break;
                            }
                        }
                        received = recv.recv() => match received {
                            Ok(Some(NodeWire::Frame(frame))) => {
                                hub.post(IoInput::ControlFrame { generation, frame }).await;
                            }
                            _ => break,
                        },
                    }
                }
                connection.close(0_u32.into(), b"");
                hub.post(IoInput::ControlDown { generation }).await;
            }
            Ok((connection, peer, ..)) => {
                warn!(expected = %holder.node, %peer, "the control's address answered as another node");
                connection.close(0_u32.into(), b"wrong node");
            }
            Err(error) => debug!(%error, control = %holder.node, "control trunk failed"),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

impl ClusterIo {
    /// The media side, for the hub's routes.
    pub(crate) fn mesh(&self) -> Arc<Mesh> {
        Arc::clone(&self.mesh)
    }

    /// Carries out one IO output of the node.
    pub(crate) fn carry_out(&mut self, output: NodeOutput) {
        match output {
            NodeOutput::Store { id, request } => {
                let store = self.store.clone();
                let hub = self.hub.clone();
                tokio::spawn(async move {
                    let reply = store.run(&request).await;
                    hub.post(IoInput::Store { id, reply }).await;
                });
            }
            NodeOutput::Dial(holder) => {
                self.hang();
                self.generation += 1;
                let (frames, outgoing) = mpsc::unbounded_channel();
                let task = tokio::spawn(keep_control_trunk(
                    Arc::clone(&self.mesh),
                    self.hub.clone(),
                    holder,
                    self.generation,
                    outgoing,
                ));
                self.control = Some((self.generation, task, frames));
            }
            NodeOutput::Hang => self.hang(),
            NodeOutput::ToControl(frame) => {
                if let Some((_, _, frames)) = &self.control {
                    let _ = frames.send(frame);
                }
            }
            NodeOutput::ToNode { node, frame } => {
                if let Some((_, frames)) = self.nodes.get(&node) {
                    let _ = frames.send(frame);
                }
            }
            NodeOutput::DropNode { node } => {
                // Dropping the queue ends that trunk's task, which closes it.
                self.nodes.remove(&node);
            }
            // The board's: it never hands these to the IO.
            NodeOutput::Deliver(_)
            | NodeOutput::SessionsLost { .. }
            | NodeOutput::Event(_)
            | NodeOutput::ReportSessions => {}
        }
    }

    fn hang(&mut self) {
        if let Some((_, task, _)) = self.control.take() {
            task.abort();
        }
    }

    /// Hands an IO input to the node.
    pub(crate) fn apply(&mut self, node: &mut ClusterNode, now: Instant, input: IoInput) {
        let current = self.control.as_ref().map(|(generation, ..)| *generation);
        match input {
            IoInput::Store { id, reply } => node.handle_store_reply(now, id, reply),
            IoInput::ControlUp { generation } if Some(generation) == current => {
                node.handle_control_trunk_up(now);
            }
            IoInput::ControlDown { generation } if Some(generation) == current => {
                node.handle_control_trunk_down(now);
            }
            IoInput::ControlFrame { generation, frame } if Some(generation) == current => {
                if let Err(error) = node.handle_control_frame(now, frame) {
                    warn!(%error, "the control link broke its rules: reconnecting");
                    node.handle_control_trunk_down(now);
                    if let Some(holder) = node.control_holder().cloned() {
                        self.carry_out(NodeOutput::Dial(holder));
                    }
                }
            }
            IoInput::ControlUp { .. }
            | IoInput::ControlDown { .. }
            | IoInput::ControlFrame { .. } => {}
            IoInput::NodeUp {
                node: from,
                trunk,
                frames,
            } => {
                self.nodes.insert(from, (trunk, frames));
            }
            IoInput::NodeFrame {
                node: from,
                trunk,
                frame,
            } => {
                if self.nodes.get(&from).map(|(kept, _)| *kept) != Some(trunk) {
                    return;
                }
                if let Err(error) = node.handle_node_frame(now, from, frame) {
                    warn!(%error, node = %from, "a node trunk broke its rules: dropped");
                    self.nodes.remove(&from);
                    node.handle_node_trunk_down(now, from);
                }
            }
            IoInput::NodeDown { node: from, trunk } => {
                if self.nodes.get(&from).map(|(kept, _)| *kept) == Some(trunk) {
                    self.nodes.remove(&from);
                    node.handle_node_trunk_down(now, from);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn published_addresses_round_trip_and_nonsense_does_not_parse() {
        let fingerprint = CertFingerprint([7; 32]);
        let addr: SocketAddr = "10.0.0.2:4434".parse().unwrap_or_else(|_| unreachable!());
        let text = published_address(addr, &fingerprint);
        assert_eq!(parse_published(&text), Some((addr, fingerprint)));
        for nonsense in ["", "10.0.0.2:4434", "x y", "10.0.0.2:4434 zz"] {
            assert_eq!(parse_published(nonsense), None, "{nonsense:?}");
        }
    }

    #[test]
    fn a_media_tag_names_a_member_or_a_call() {
        for tag in [
            MediaTag::Member(1),
            MediaTag::Member(u64::from(u32::MAX) + 5),
            MediaTag::Call(CallId(7 << 32 | 3)),
            MediaTag::Call(CallId(0)),
        ] {
            assert_eq!(MediaTag::decode(tag.encode()), tag);
        }
    }
}
