#![doc = include_str!("../README.md")]

mod address;
mod admission;
mod certificates;
mod cluster;
pub mod cluster_store;
pub mod config;
mod connection;
mod hub;
mod limits;
mod metrics;
mod ops;
pub mod records;
mod relay;
mod secret;
mod server_address;
mod stamped;
mod throttle;
mod web_origin;
mod webhook_url;
pub mod webhooks;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use admission::{AddressProof, Attempt, Decision};

use calling_api::ErrorCode;
use signaling_quic::QuicServer;
use signaling_tls::{CertFingerprint, ServerIdentity};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

pub use admission::{AdmissionCounts, ServerLimits};
/// The UserSig scheme (the `calling-usersig` crate).
pub use calling_usersig as usersig;
pub use config::{
    AppCredentials, OperationsConfig, SecretKey, ServerConfig, Settings, TlsSource, UnixClock,
};
pub use hub::{AdminReply, AdminRequest, DrainState};
pub use limits::LimitCounts;
pub use metrics::HubStats;
pub use ops::{OPS_HEADER_TIMEOUT, OPS_MAX_CONNECTIONS};
pub use relay::RelayCounts;
pub use server_core::ClusterStatus;
pub use stamped::StampedEvent;

use crate::hub::HubInput;

/// Starts the hub over the core of a single server (a switchboard of its
/// own) or of one node of a cluster (a node id of its own for this
/// process's life, a restarted process being a new node; its links; its
/// place in the store).
fn spawn_hub(
    config: &ServerConfig,
    (hub, inputs): (&mpsc::Sender<HubInput>, mpsc::Receiver<HubInput>),
    routes: &Arc<relay::MediaRoutes>,
    ops: hub::HubOps,
) -> Result<tokio::task::JoinHandle<()>, ServerError> {
    let now = std::time::Instant::now();
    let tokens: server_core::TokenSource = Box::new(hub::new_token);
    let Some(cluster_config) = &config.cluster else {
        let switchboard = signaling_proto::Switchboard::new(config.switchboard.clone());
        let mut core = server_core::ServerCore::new(switchboard, hub::OUTBOX_LIMITS, tokens, now);
        core.set_redirect(&config.redirect_to);
        let task = hub::run(core, None, inputs, Arc::clone(routes), ops);
        return Ok(tokio::spawn(task));
    };
    let node = calling_cluster::NodeId(config::random_node_id()?);
    let weak = hub.downgrade();
    let post = cluster::HubPost::new(move |input| {
        let weak = weak.clone();
        async move {
            if let Some(hub) = weak.upgrade() {
                // An error: the hub is gone, the server stopping.
                let _ = hub.send(HubInput::Cluster(input)).await;
            }
        }
    });
    let (published, io) = cluster::start(cluster_config, node, post, Arc::clone(routes))?;
    let mut node_config = calling_cluster::NodeConfig::new(node, published);
    node_config.switchboard = config.switchboard.clone();
    let node = calling_cluster::ClusterNode::new(node_config, now);
    let board = server_core::ClusterBoard::new(node, config.switchboard.resume_grace, now);
    let mut core = server_core::ServerCore::new(board, hub::OUTBOX_LIMITS, tokens, now);
    core.set_redirect(&config.redirect_to);
    let task = hub::run(core, Some(io), inputs, Arc::clone(routes), ops);
    Ok(tokio::spawn(task))
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The data directory could not be used.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The server's certificate could not be loaded or made.
    #[error("server certificate: {0}")]
    Certificate(#[from] signaling_tls::TlsError),
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Transport(#[from] signaling_quic::TransportError),
    /// Cluster mode could not start.
    #[error("cluster mode: {0}")]
    Cluster(#[from] cluster::ClusterError),
    /// The fallback transport's TCP listener could not start.
    #[error(
        "fallback transport on TCP {addr}: {source} (choose another with --fallback-listen, or `off`)"
    )]
    FallbackBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The fallback transport's TLS configuration could not be built.
    #[error("fallback transport: {0}")]
    Fallback(signaling_ws::WsError),
    /// The operations listener could not start.
    #[error("HTTP listener on {addr}: {source} (choose another with --http-listen)")]
    HttpBind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The webhooks' TLS configuration could not be built.
    #[error("webhooks: {0}")]
    WebhookTls(rustls::Error),
}

/// What every connection task shares.
#[derive(Debug)]
struct Shared {
    apps: HashMap<u32, SecretKey>,
    /// How many devices a user of each app may be logged in on.
    max_devices: HashMap<u32, usize>,
    clock: UnixClockDebug,
    usersig_bounds: calling_usersig::TimeBounds,
    throttle: throttle::LoginThrottle,
    connection_limits: config::ConnectionLimits,
    limit_counters: limits::LimitCounters,
    /// How long a connection has to send its login.
    login_timeout: Duration,
    /// Whose pages may use the fallback's WebSocket.
    web_origins: Arc<[config::WebOrigin]>,
    /// A development server (no apps configured) lets pages on this
    /// machine in too.
    development: bool,
    hub: mpsc::Sender<HubInput>,
    next_conn: AtomicU64,
    grace: Duration,
    routes: Arc<relay::MediaRoutes>,
    metrics: Arc<metrics::Metrics>,
    /// Whether a new connection, from any transport, gets a handshake.
    admission: admission::Admission,
}

impl Shared {
    fn new(
        config: &ServerConfig,
        apps: Vec<AppCredentials>,
        hub: mpsc::Sender<HubInput>,
        routes: Arc<relay::MediaRoutes>,
        metrics: Arc<metrics::Metrics>,
    ) -> Self {
        Self {
            max_devices: apps
                .iter()
                .map(|app| (app.sdk_app_id, config.max_devices_for(app.sdk_app_id)))
                .collect(),
            apps: apps
                .into_iter()
                .map(|app| (app.sdk_app_id, app.secret_key))
                .collect(),
            clock: UnixClockDebug(Arc::clone(&config.clock)),
            usersig_bounds: config.usersig_bounds,
            throttle: throttle::LoginThrottle::default(),
            connection_limits: config.connection_limits,
            limit_counters: limits::LimitCounters::default(),
            login_timeout: config.limits.handshake_timeout,
            web_origins: config.web_origins.clone().into(),
            development: config.apps.is_empty(),
            hub,
            next_conn: AtomicU64::new(1),
            grace: config.shutdown_grace,
            routes,
            metrics,
            admission: admission::Admission::new(config.limits.clone()),
        }
    }
}

/// The clock, with a `Debug` that does not try to print a closure.
struct UnixClockDebug(UnixClock);

impl std::fmt::Debug for UnixClockDebug {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UnixClock")
    }
}

/// Reopens the server's call records file.
#[derive(Debug, Clone)]
pub struct CallRecordsReopener(Arc<tokio::sync::Notify>);

impl CallRecordsReopener {
    /// Reopens the file (the records go on in a new file at the same path).
    pub fn reopen(&self) {
        self.0.notify_one();
    }
}

/// A server running on the current tokio runtime.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    fallback_addr: Option<SocketAddr>,
    fingerprint: CertFingerprint,
    development_app: Option<AppCredentials>,
    hub: mpsc::Sender<HubInput>,
    stop_accepting: watch::Sender<bool>,
    accept_task: tokio::task::JoinHandle<()>,
    hub_task: tokio::task::JoinHandle<()>,
    /// A critical task ended on its own: nothing left to wait for.
    failed: bool,
    endpoints: Vec<quinn::Endpoint>,
    grace: Duration,
    relay: Arc<relay::MediaRoutes>,
    shared: Arc<Shared>,
    http_addr: Option<SocketAddr>,
    drain: watch::Receiver<DrainState>,
    drain_limit: Duration,
    reopen_records: Option<Arc<tokio::sync::Notify>>,
    liveness: Arc<ops::Liveness>,
    /// The operations listener, webhook and record tasks: stopped last.
    ops_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// The QUIC endpoints of `config`, on one port.
fn bind_quic(
    config: &ServerConfig,
    certificates: &certificates::Certificates,
    reset_key: &[u8; 32],
) -> Result<QuicServer, ServerError> {
    let tls = signaling_quic::server_config_with(certificates.chooser.server_config()?)?;
    let quic = QuicServer::bind_with(config.listen, tls, reset_key, config.quic_endpoints)?;
    debug!(endpoints = quic.endpoints().len(), "QUIC endpoints bound");
    Ok(quic)
}

/// Starts a server with `config` on the current tokio runtime.
pub async fn start(config: ServerConfig) -> Result<RunningServer, ServerError> {
    config.validate()?;
    let data_dir_error = |source| ServerError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    std::fs::create_dir_all(&config.data_dir).map_err(data_dir_error)?;
    let (apps, development_app) = if config.apps.is_empty() {
        let app = config::development_app(&config.data_dir).map_err(data_dir_error)?;
        (vec![app.clone()], Some(app))
    } else {
        (config.apps.clone(), None)
    };
    let certificates = certificates::load(&config)?;
    let reset_key = config::reset_key(&config.data_dir).map_err(data_dir_error)?;
    let (quic, local_addr, (fallback, fallback_addr)) =
        bind_both(&config, &certificates, &reset_key).await?;
    let endpoints = quic.endpoints().to_vec();
    let sends = quic.send_stats();

    let (hub_tx, hub_rx) = mpsc::channel(4096);
    let routes = Arc::new(relay::MediaRoutes::default());
    let metrics = Arc::new(metrics::Metrics::new());
    let operations = &config.operations;
    let EventSinks {
        sinks,
        webhook_queue,
        reopen_records,
        mut ops_tasks,
    } = start_event_sinks(operations, &metrics)?;
    let (hub_ops, drain) = hub::HubOps::new(Arc::clone(&metrics), sinks);
    let hub_task = spawn_hub(&config, (&hub_tx, hub_rx), &routes, hub_ops)?;
    let shared = Arc::new(Shared::new(
        &config,
        apps,
        hub_tx.clone(),
        Arc::clone(&routes),
        Arc::clone(&metrics),
    ));
    let liveness = Arc::new(ops::Liveness::default());
    let (stop_accepting, stop_rx) = watch::channel(false);
    let accept_alive = liveness.accept_loop_guard();
    let accept_task = tokio::spawn(accept_loop(
        quic,
        fallback,
        Arc::clone(&shared),
        (stop_rx, accept_alive),
    ));
    let http_addr = match operations.http_listen {
        Some(addr) => {
            let state = ops::OpsState {
                metrics: Arc::clone(&metrics),
                hub: hub_tx.clone(),
                shared: Arc::clone(&shared),
                sends,
                admin_token: operations.admin_token.clone(),
                drain: drain.clone(),
                liveness: Arc::clone(&liveness),
                webhook_queue,
            };
            let (task, bound) = start_ops_listener(addr, state).await?;
            ops_tasks.push(task);
            Some(bound)
        }
        None => None,
    };
    let relay = routes;
    let fingerprint = certificates.identity.fingerprint();
    let rotation = publish_banner(&config, certificates, local_addr, development_app.as_ref());
    ops_tasks.extend(rotation.map_err(data_dir_error)?);
    info!(%local_addr, ?fallback_addr, ?http_addr, %fingerprint, development = development_app.is_some(), "listening");
    Ok(RunningServer {
        local_addr,
        fallback_addr,
        fingerprint,
        development_app,
        hub: hub_tx,
        stop_accepting,
        accept_task,
        hub_task,
        failed: false,
        endpoints,
        grace: config.shutdown_grace,
        relay,
        shared,
        http_addr,
        drain,
        drain_limit: config.operations.drain_limit,
        reopen_records,
        liveness,
        ops_tasks,
    })
}

/// Writes where the server listens and how to trust it (see
/// [`config::BANNER_FILE`]); in development mode starts the task that
/// rotates the browser certificates and publishes each new pair.
fn publish_banner(
    config: &ServerConfig,
    certificates: certificates::Certificates,
    listen: SocketAddr,
    development_app: Option<&AppCredentials>,
) -> std::io::Result<Option<tokio::task::JoinHandle<()>>> {
    let banner = config::Banner {
        listen,
        fingerprint: certificates.identity.fingerprint(),
        sdk_app_id: development_app
            .or(config.apps.first())
            .map(|app| app.sdk_app_id),
        development_app: development_app.cloned(),
        browser_certificate_hashes: certificates.browser_hashes(),
    };
    config::write_banner(&config.data_dir, &banner)?;
    Ok(certificates.browser.map(|browser| {
        tokio::spawn(certificates::rotate(
            browser,
            certificates.chooser,
            config.data_dir.clone(),
            banner,
        ))
    }))
}

/// The tasks that take the hub's call events, and their queues.
struct EventSinks {
    sinks: Vec<hub::EventSink>,
    webhook_queue: Option<mpsc::Sender<Arc<StampedEvent>>>,
    reopen_records: Option<Arc<tokio::sync::Notify>>,
    ops_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the webhook sender and the call records writer, if configured.
fn start_event_sinks(
    operations: &OperationsConfig,
    metrics: &Arc<metrics::Metrics>,
) -> Result<EventSinks, ServerError> {
    let mut started = EventSinks {
        sinks: Vec::new(),
        webhook_queue: None,
        reopen_records: None,
        ops_tasks: Vec::new(),
    };
    if let (false, Some(key)) = (operations.webhook_urls.is_empty(), &operations.webhook_key) {
        let (queue, events) = mpsc::channel(webhooks::QUEUE_PER_URL);
        let tls = webhooks::system_trust().map_err(ServerError::WebhookTls)?;
        started.ops_tasks.push(tokio::spawn(webhooks::run(
            events,
            operations.webhook_urls.clone(),
            key.clone(),
            tls,
            Arc::clone(metrics),
        )));
        started.webhook_queue = Some(queue.clone());
        started.sinks.push(hub::EventSink {
            queue,
            dropped: |metrics| metrics.webhook("dropped"),
        });
    }
    if let Some(path) = &operations.call_records {
        let (queue, events) = mpsc::channel(records::QUEUE);
        let reopen = Arc::new(tokio::sync::Notify::new());
        started.ops_tasks.push(tokio::spawn(records::run(
            events,
            path.clone(),
            Arc::clone(&reopen),
            Arc::clone(metrics),
        )));
        started.sinks.push(hub::EventSink {
            queue,
            dropped: |metrics| metrics.call_record("dropped"),
        });
        started.reopen_records = Some(reopen);
    }
    Ok(started)
}

/// Binds the operations listener and serves it.
async fn start_ops_listener(
    addr: SocketAddr,
    state: ops::OpsState,
) -> Result<(tokio::task::JoinHandle<()>, SocketAddr), ServerError> {
    let bind_error = |source| ServerError::HttpBind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    Ok((tokio::spawn(ops::serve(listener, Arc::new(state))), bound))
}

/// The fallback transport's listener and its TLS configuration.
type FallbackListener = (tokio::net::TcpListener, Arc<rustls::ServerConfig>);

/// Binds the fallback transport's TCP listener where `fallback` says (the
/// QUIC address `quic` by default); returns it and its address.
/// Binds the QUIC endpoints and the fallback listener. On any port (port
/// 0, as tests ask) with the fallback on the same port, the port the UDP
/// socket got may be taken on TCP by some other socket: then both are
/// bound again, on another port (a few tries).
async fn bind_both(
    config: &ServerConfig,
    certificates: &certificates::Certificates,
    reset_key: &[u8; 32],
) -> Result<
    (
        QuicServer,
        SocketAddr,
        (Option<FallbackListener>, Option<SocketAddr>),
    ),
    ServerError,
> {
    let mut tries = 0;
    loop {
        tries += 1;
        let quic = bind_quic(config, certificates, reset_key)?;
        let local_addr = quic.local_addr()?;
        match bind_fallback(config.fallback, local_addr, &certificates.identity).await {
            Err(ServerError::FallbackBind { source, .. })
                if config.listen.port() == 0
                    && config.fallback == config::Fallback::SameAddress
                    && source.kind() == std::io::ErrorKind::AddrInUse
                    && tries < 5 =>
            {
                debug!(%local_addr, "the fallback's TCP port is taken: binding both again");
            }
            fallback => return Ok((quic, local_addr, fallback?)),
        }
    }
}

async fn bind_fallback(
    fallback: config::Fallback,
    quic: SocketAddr,
    identity: &ServerIdentity,
) -> Result<(Option<FallbackListener>, Option<SocketAddr>), ServerError> {
    let addr = match fallback {
        config::Fallback::Off => return Ok((None, None)),
        config::Fallback::SameAddress => quic,
        config::Fallback::At(addr) => addr,
    };
    let bind_error = |source| ServerError::FallbackBind { addr, source };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(bind_error)?;
    let bound = listener.local_addr().map_err(bind_error)?;
    let tls = signaling_ws::server_tls(identity).map_err(ServerError::Fallback)?;
    Ok((Some((listener, tls)), Some(bound)))
}

/// How long the fallback listener rests after an accept failed (out of
/// descriptors, say): the failure would repeat at once, and a loop that
/// retries it spins a core while QUIC users need it.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// The next fallback connection, once the back-off after a failed accept
/// (`resting_until`) has passed.
async fn accept_fallback(
    fallback: Option<&FallbackListener>,
    resting_until: Option<tokio::time::Instant>,
) -> std::io::Result<(tokio::net::TcpStream, SocketAddr)> {
    let Some((listener, _)) = fallback else {
        return std::future::pending().await;
    };
    if let Some(until) = resting_until {
        tokio::time::sleep_until(until).await;
    }
    listener.accept().await
}

/// Accepts connections until told to stop; `_alive` marks it dead
/// (`/healthz`) when this ends, even by a panic.
async fn accept_loop(
    quic: QuicServer,
    fallback: Option<FallbackListener>,
    shared: Arc<Shared>,
    (mut stop, _alive): (watch::Receiver<bool>, ops::AcceptLoopAlive),
) {
    let mut connections = JoinSet::new();
    let mut fallback_resting_until = None;
    loop {
        tokio::select! {
            attempt = quic.accept() => match attempt {
                Some(attempt) => {
                    let remote = attempt.remote_address();
                    let address = if attempt.address_validated() {
                        AddressProof::Proven
                    } else {
                        AddressProof::Unproven { can_prove: attempt.may_retry() }
                    };
                    let open = quic.open_connections();
                    match shared.admission.decide(Attempt { remote, open, address }, Instant::now()) {
                        Decision::Admit(admitted) => {
                            connections.spawn(connection::serve(attempt, admitted, Arc::clone(&shared)));
                        }
                        Decision::ProveAddress => attempt.retry(),
                        Decision::Refuse(refusal) => {
                            debug!(%remote, ?refusal, "connection refused by the admission policy");
                            attempt.refuse();
                        }
                    }
                }
                None => break,
            },
            accepted = accept_fallback(fallback.as_ref(), fallback_resting_until) => match accepted {
                Ok((tcp, remote)) => {
                    fallback_resting_until = None;
                    // TCP's handshake proved the address; the cap counts
                    // the connections of every transport.
                    let attempt = Attempt {
                        remote,
                        open: shared.admission.held(),
                        address: AddressProof::Proven,
                    };
                    let admitted = match shared.admission.decide(attempt, Instant::now()) {
                        Decision::Admit(admitted) => admitted,
                        refused => {
                            debug!(%remote, ?refused, "fallback connection refused by the admission policy");
                            continue;
                        }
                    };
                    if let Some((_, tls)) = &fallback {
                        let serve = connection::serve_fallback(tcp, remote, Arc::clone(tls), admitted, Arc::clone(&shared));
                        connections.spawn(serve);
                    }
                }
                Err(error) => {
                    if fallback_resting_until.is_none() {
                        warn!(%error, "fallback accept failed: resting before the next");
                    } else {
                        debug!(%error, "fallback accept failed again");
                    }
                    fallback_resting_until = Some(tokio::time::Instant::now() + ACCEPT_BACKOFF);
                }
            },
            // Reap finished connection tasks as they end.
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = stop.changed() => break,
        }
    }
    // Shutting down: give every connection the grace period to deliver its
    // notice, then stop what is left.
    let drained = tokio::time::timeout(shared.grace + Duration::from_secs(1), async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        warn!(
            left = connections.len(),
            "connections still open after the grace period"
        );
        connections.abort_all();
    }
}

/// Says how a critical task ended.
fn why_ended(task: &str, ended: Result<(), tokio::task::JoinError>) -> String {
    match ended {
        Ok(()) => format!("{task} ended"),
        Err(error) if error.is_panic() => {
            let panic = error.into_panic();
            let message = panic
                .downcast_ref::<&str>()
                .map(|text| (*text).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            format!("{task} panicked: {message}")
        }
        Err(_) => format!("{task} was cancelled"),
    }
}

impl RunningServer {
    /// The address the server listens on (with the real port when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The TCP address of the fallback transport, if it listens.
    pub fn fallback_addr(&self) -> Option<SocketAddr> {
        self.fallback_addr
    }

    /// The operations listener's address (`/metrics`, `/healthz`,
    /// `/readyz`, `/admin/`), if it listens.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Asks the hub what the admin API asks; `None` if the hub is gone.
    pub async fn admin(&self, request: AdminRequest) -> Option<AdminReply> {
        let (reply, answer) = oneshot::channel();
        self.hub
            .send(HubInput::Admin { request, reply })
            .await
            .ok()?;
        answer.await.ok()
    }

    /// Starts a drain: no new login or call; [`RunningServer::drained`]
    /// resolves once the calls are over or the drain limit passed.
    pub async fn drain(&self) {
        let _ = self.admin(AdminRequest::Drain).await;
    }

    /// Resolves once a drain (asked here or through the admin API) is
    /// done: no call left, or the drain limit passed since it started.
    /// Never resolves without a drain.
    pub fn drained(&self) -> impl Future<Output = ()> + Send + 'static + use<> {
        let mut drain = self.drain.clone();
        let limit = self.drain_limit;
        async move {
            if drain.wait_for(|state| state.draining).await.is_err() {
                return std::future::pending().await;
            }
            let over = drain.wait_for(|state| state.calls == 0);
            if tokio::time::timeout(limit, over).await.is_err() {
                let calls = drain.borrow().calls;
                warn!(calls, "drain limit reached with calls left: they end now");
            }
        }
    }

    /// What reopens the call records file (after a log rotation moved
    /// it); `None` without one.
    pub fn call_records_reopener(&self) -> Option<CallRecordsReopener> {
        self.reopen_records.clone().map(CallRecordsReopener)
    }

    /// The certificate's fingerprint, for clients that trust it that way.
    pub fn fingerprint(&self) -> CertFingerprint {
        self.fingerprint
    }

    /// The development app, when the server runs in development mode.
    pub fn development_app(&self) -> Option<&AppCredentials> {
        self.development_app.as_ref()
    }

    /// Live figures from the switchboard.
    pub async fn stats(&self) -> Option<HubStats> {
        let (reply, answer) = oneshot::channel();
        self.hub.send(HubInput::Stats { reply }).await.ok()?;
        answer.await.ok()
    }

    /// What the audio relay has done so far.
    pub fn relay_counts(&self) -> RelayCounts {
        self.relay.counts()
    }

    /// A test hook (feature `relay-tap`, never in a deployment's server):
    /// from now on a copy of every datagram a client sends that the relay
    /// forwards, as it forwards it, with when, goes to the receiver
    /// returned. What the server could read of a call's audio.
    #[cfg(feature = "relay-tap")]
    pub fn tap_relay(&self) -> std::sync::mpsc::Receiver<(std::time::Instant, bytes::Bytes)> {
        self.relay.tap.open()
    }

    /// A test hook (feature `relay-tap`): from now on a copy of every
    /// member's key word (`MemberKey`) this server passes on to a client
    /// of its own, with when and its sender, goes to the receiver
    /// returned. What the server could read of a call's keys.
    #[cfg(feature = "relay-tap")]
    pub fn tap_member_keys(
        &self,
    ) -> std::sync::mpsc::Receiver<(std::time::Instant, (calling_api::UserId, Vec<u8>))> {
        self.relay.word_tap.open()
    }

    /// What the per-connection limits have refused so far.
    pub fn limit_counts(&self) -> LimitCounts {
        self.shared.limit_counters.counts()
    }

    /// What the admission policy has turned away so far.
    pub fn admission_counts(&self) -> AdmissionCounts {
        self.shared.admission.counts()
    }

    /// Resolves, with why, when a task the server cannot live without (the
    /// hub, or the accept loop) has ended although nobody asked it to: the
    /// process still answers QUIC then, but serves nobody. The binary logs
    /// it and exits non-zero, so that a supervisor restarts it; an
    /// embedding program should do the same. Never resolves otherwise.
    pub async fn failure(&mut self) -> String {
        if self.failed {
            return "a critical task had already ended".into();
        }
        let why = tokio::select! {
            ended = &mut self.hub_task => why_ended("the hub", ended),
            ended = &mut self.accept_task => why_ended("the accept loop", ended),
        };
        self.failed = true;
        why
    }

    /// Connections open on each QUIC endpoint, in steering order (see
    /// [`config::ServerConfig::quic_endpoints`]).
    pub fn connections_per_endpoint(&self) -> Vec<usize> {
        self.endpoints
            .iter()
            .map(quinn::Endpoint::open_connections)
            .collect()
    }

    /// Graceful shutdown: every call ends with the server-shutdown reason,
    /// every client is told and its connection closed, then the endpoint.
    pub async fn shutdown(self) {
        self.liveness.stopping();
        if self.failed {
            // The hub or the accept loop is gone: close what is left.
            self.accept_task.abort();
            self.hub_task.abort();
            for endpoint in &self.endpoints {
                signaling_quic::close_endpoint(endpoint, ErrorCode::SERVER_SHUTDOWN);
            }
            return;
        }
        let (done, finished) = oneshot::channel();
        if self.hub.send(HubInput::Shutdown { done }).await.is_ok() {
            let _ = finished.await;
        }
        let _ = self.stop_accepting.send(true);
        let _ = self.accept_task.await;
        for endpoint in &self.endpoints {
            signaling_quic::close_endpoint(endpoint, ErrorCode::SERVER_SHUTDOWN);
        }
        let idle = async {
            for endpoint in &self.endpoints {
                endpoint.wait_idle().await;
            }
        };
        let _ = tokio::time::timeout(self.grace, idle).await;
        self.hub_task.abort();
        // The last events (the shutdown's call ends) reach the records
        // and webhook queues before this; what is still queued is lost.
        for task in &self.ops_tasks {
            task.abort();
        }
        info!("stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_dead_hub_is_a_failure_that_says_why() {
        let dir =
            std::env::temp_dir().join(format!("opencalling-supervision-{}", std::process::id()));
        let mut server = start(ServerConfig {
            listen: "127.0.0.1:0".parse().unwrap_or(config::DEFAULT_LISTEN),
            data_dir: dir.clone(),
            operations: OperationsConfig {
                http_listen: "127.0.0.1:0".parse().ok(),
                ..OperationsConfig::default()
            },
            ..ServerConfig::default()
        })
        .await
        .unwrap_or_else(|error| panic!("{error}"));
        let http = server
            .http_addr()
            .unwrap_or_else(|| panic!("no HTTP listener"));
        assert_eq!(status(http, "/healthz").await, "200");
        assert_eq!(status(http, "/readyz").await, "200");
        // Nothing has died: no failure yet.
        let early = tokio::time::timeout(Duration::from_millis(100), server.failure()).await;
        assert!(early.is_err(), "a healthy server reports no failure");
        server.hub_task.abort();
        let why = tokio::time::timeout(Duration::from_secs(5), server.failure())
            .await
            .unwrap_or_else(|_| panic!("the dead hub was not noticed"));
        assert_eq!(why, "the hub was cancelled");
        assert_eq!(status(http, "/healthz").await, "503");
        assert_eq!(status(http, "/readyz").await, "503");
        server.shutdown().await;
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The status code of a GET.
    async fn status(http: SocketAddr, path: &'static str) -> String {
        use std::io::{Read, Write};
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = std::net::TcpStream::connect(http)?;
            write!(
                stream,
                "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
            )?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            Ok::<_, std::io::Error>(answer)
        })
        .await
        .unwrap_or_else(|error| panic!("{error}"))
        .unwrap_or_else(|error| panic!("{error}"));
        answer.get(9..12).unwrap_or_default().to_owned()
    }

    #[tokio::test]
    async fn a_panic_is_reported_with_its_message() {
        let task = tokio::spawn(async { panic!("switchboard bug: test") });
        let why = why_ended("the hub", task.await);
        assert_eq!(why, "the hub panicked: switchboard bug: test");
    }
}
