//! The server's configuration: defaults, then an optional TOML file, then
//! environment variables, then command-line flags, each overriding the one
//! before. Every setting is defined once, in [`Settings`] (clap's derive
//! for flags and environment, serde for the file), with the [`Bound`] that
//! gives a numeric one its default and range. With no app configured the
//! server runs in development mode.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::admission::ServerLimits;
use serde::Deserialize;
use signaling_proto::SwitchboardConfig;

pub use crate::secret::SecretKey;
pub use crate::web_origin::WebOrigin;
use crate::webhook_url::WebhookUrl;

mod banner;
mod data_dir;
mod settings;

pub use banner::{BANNER_FILE, Banner, write_banner};
pub use data_dir::{DEVELOPMENT_SDK_APP_ID, development_app, existing_development_app, reset_key};
pub(crate) use settings::random_node_id;
pub use settings::*;

/// One application the server serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppCredentials {
    /// Its sdkAppId.
    pub sdk_app_id: u32,
    /// The key its backend signs UserSigs with.
    pub secret_key: SecretKey,
}

/// Where the TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsSource {
    /// A self-signed certificate made once and kept in the data directory:
    /// clients trust it by fingerprint.
    SelfSigned,
    /// A certificate chain and key in PEM files.
    PemFiles {
        /// Certificate chain, leaf first.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
}

/// The wall clock UserSigs are checked against, in unix seconds; tests
/// inject a fixed one.
pub type UnixClock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The system clock.
pub fn system_clock() -> UnixClock {
    Arc::new(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    })
}

/// What one client connection may do: audio datagrams and requests per
/// second (token buckets holding a second's worth, or `request_burst`
/// requests), and how long a write to it may block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Audio datagrams per second one sender may have relayed.
    pub media_packets_per_sec: u32,
    /// Audio bytes per second one sender may have relayed.
    pub media_bytes_per_sec: u32,
    /// Signaling messages per second, once the burst is spent.
    pub requests_per_sec: u32,
    /// Signaling messages a client may send at once (honest pipelining).
    pub request_burst: u32,
    /// How long a write to a client may block before it counts as not
    /// reading and is closed.
    pub write_timeout: Duration,
}

impl ConnectionLimits {
    /// A little above a real call: 100 Opus frames a second (the
    /// low-latency profile's 10 ms frames; 50 otherwise) of at most a few
    /// hundred bytes, plus a loss report and a word of features a second
    /// per other member (130 a second in a 16-member call).
    pub const DEFAULT: Self = Self {
        media_packets_per_sec: 200,
        media_bytes_per_sec: 32_000,
        requests_per_sec: 20,
        request_burst: 300,
        write_timeout: Duration::from_secs(5),
    };
}

/// Everything the server needs to run, resolved from [`Settings`] (or
/// built directly by an embedding program or a test).
#[derive(Clone)]
#[non_exhaustive]
pub struct ServerConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// QUIC endpoints on that address, each with its own socket and
    /// receive task (0: one per core the process may run on).
    pub quic_endpoints: usize,
    /// Where the fallback transport (WebSocket over TLS over TCP, for
    /// networks that block UDP) listens.
    pub fallback: Fallback,
    /// Web sites whose pages may use the fallback's WebSocket (a
    /// browser's `Origin`); a development server also lets pages on this
    /// machine in. Native clients send no origin and are not judged.
    pub web_origins: Vec<WebOrigin>,
    /// Servers (`host:port`, best first) clients of protocol version 6
    /// are sent to when this one drains or shuts down.
    pub redirect_to: Vec<String>,
    /// Where the development certificate, app and reset key are kept.
    pub data_dir: PathBuf,
    /// The apps served; empty means development mode (one app, made once).
    pub apps: Vec<AppCredentials>,
    /// The call rules: invitation timeouts, call size, node id.
    pub switchboard: SwitchboardConfig,
    /// How many devices a user may be logged in on at once, for an app
    /// that `app_max_devices` does not name (1: a second login replaces
    /// the first, as in the calling component).
    pub max_devices_per_user: usize,
    /// Apps with their own number of devices per user.
    pub app_max_devices: BTreeMap<u32, usize>,
    /// Connection limits.
    pub limits: ServerLimits,
    /// What one connection may do.
    pub connection_limits: ConnectionLimits,
    /// Certificate source.
    pub tls: TlsSource,
    /// Clock for UserSig expiry.
    pub clock: UnixClock,
    /// How long a graceful shutdown waits for clients to receive the notice.
    pub shutdown_grace: Duration,
    /// The bounds on a UserSig's times (clock skew, lifetime).
    pub usersig_bounds: calling_usersig::TimeBounds,
    /// Metrics, health, admin API, webhooks, call records, drains.
    pub operations: OperationsConfig,
    /// Cluster mode: several nodes sharing one address book through Redis;
    /// `None`: a single server, the zero-configuration default.
    pub cluster: Option<ClusterConfig>,
}

/// How a node joins its cluster (see `calling-cluster` and
/// docs/decisions/0007).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The Redis URL (`redis://[:password@]host:port/[db]`); it may hold
    /// a password, so it is kept as a secret and never printed.
    pub redis_url: SecretKey,
    /// The prefix of the cluster's Redis keys: clusters sharing one Redis
    /// differ in it.
    pub prefix: String,
    /// UDP address of the node links (QUIC between nodes).
    pub listen: SocketAddr,
    /// The address other nodes reach this node's links at.
    pub advertise: SocketAddr,
    /// The key every node of the cluster shares: node links are
    /// authenticated with it (HMAC-SHA256 bound to the TLS session).
    pub key: SecretKey,
}

/// What the server offers its operator.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct OperationsConfig {
    /// Where the HTTP listener for `/metrics`, `/healthz`, `/readyz` and
    /// `/admin/` listens; `None`: nowhere.
    pub http_listen: Option<SocketAddr>,
    /// The admin API's bearer token; `None`: the admin API refuses all.
    pub admin_token: Option<SecretKey>,
    /// Where call events are POSTed.
    pub webhook_urls: Vec<WebhookUrl>,
    /// The key webhooks are signed with (required with URLs).
    pub webhook_key: Option<SecretKey>,
    /// The file call records are appended to.
    pub call_records: Option<PathBuf>,
    /// How long a drain waits for calls to end before the server stops.
    pub drain_limit: Duration,
}

impl Default for OperationsConfig {
    fn default() -> Self {
        Self {
            http_listen: None,
            admin_token: None,
            webhook_urls: Vec::new(),
            webhook_key: None,
            call_records: None,
            drain_limit: Duration::from_secs(DRAIN_LIMIT_SECS.default),
        }
    }
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("fallback", &self.fallback)
            .field("web_origins", &self.web_origins)
            .field("redirect_to", &self.redirect_to)
            .field("data_dir", &self.data_dir)
            .field("apps", &self.apps)
            .field("switchboard", &self.switchboard)
            .field("max_devices_per_user", &self.max_devices_per_user)
            .field("app_max_devices", &self.app_max_devices)
            .field("limits", &self.limits)
            .field("connection_limits", &self.connection_limits)
            .field("tls", &self.tls)
            .field("shutdown_grace", &self.shutdown_grace)
            .field("usersig_bounds", &self.usersig_bounds)
            .field("operations", &self.operations)
            .finish_non_exhaustive()
    }
}

/// The port the server listens on by default.
pub const DEFAULT_PORT: u16 = 4433;

/// The address the server listens on by default.
pub const DEFAULT_LISTEN: SocketAddr = SocketAddr::new(
    std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
    DEFAULT_PORT,
);

/// Where the fallback transport listens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Fallback {
    /// TCP on the QUIC address and port (the default): a client needs to
    /// know one address.
    SameAddress,
    /// TCP on this address (443 in production, where firewalls let TLS
    /// through).
    At(SocketAddr),
    /// No fallback: clients behind UDP-blocking networks cannot connect.
    Off,
}

impl std::str::FromStr for Fallback {
    type Err = String;

    /// `off`, `same` or an address.
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "off" => Ok(Self::Off),
            "same" => Ok(Self::SameAddress),
            _ => text
                .parse()
                .map(Self::At)
                .map_err(|_| format!("{text:?} is not an address, `same` or `off`")),
        }
    }
}

impl<'de> Deserialize<'de> for Fallback {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The data directory by default, relative to the working directory.
pub const DEFAULT_DATA_DIR: &str = "opencalling-data";

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN,
            quic_endpoints: QUIC_ENDPOINTS.default as usize,
            fallback: Fallback::SameAddress,
            web_origins: Vec::new(),
            redirect_to: Vec::new(),
            data_dir: PathBuf::from(DEFAULT_DATA_DIR),
            apps: Vec::new(),
            switchboard: SwitchboardConfig::DEFAULT,
            max_devices_per_user: MAX_DEVICES_PER_USER.default as usize,
            app_max_devices: BTreeMap::new(),
            limits: ServerLimits::DEFAULT,
            connection_limits: ConnectionLimits::DEFAULT,
            tls: TlsSource::SelfSigned,
            clock: system_clock(),
            shutdown_grace: Duration::from_secs(SHUTDOWN_GRACE_SECS.default),
            usersig_bounds: calling_usersig::TimeBounds::DEFAULT,
            operations: OperationsConfig::default(),
            cluster: None,
        }
    }
}

/// A configuration that cannot be used, with what is wrong.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A setting has a value outside its range, or settings contradict.
    #[error("{0}")]
    Invalid(String),
}

impl ServerConfig {
    /// The defaults, listening on `listen` and keeping the development
    /// certificate and app in `data_dir`: what a test or an embedding
    /// program starts from before changing what it needs.
    pub fn at(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            listen,
            data_dir: data_dir.into(),
            ..Self::default()
        }
    }

    fn add_app(&mut self, sdk_app_id: u32, secret_key: SecretKey) -> Result<(), ConfigError> {
        if secret_key.expose().is_empty() {
            return Err(ConfigError::Invalid(format!(
                "app {sdk_app_id}: empty secret key"
            )));
        }
        self.apps.retain(|app| app.sdk_app_id != sdk_app_id);
        self.apps.push(AppCredentials {
            sdk_app_id,
            secret_key,
        });
        Ok(())
    }

    /// How many devices a user of `sdk_app_id` may be logged in on at once.
    pub fn max_devices_for(&self, sdk_app_id: u32) -> usize {
        self.app_max_devices
            .get(&sdk_app_id)
            .copied()
            .unwrap_or(self.max_devices_per_user)
    }

    /// Checks what a configuration built in code may get wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let TlsSource::PemFiles { cert, key } = &self.tls
            && (cert.as_os_str().is_empty() || key.as_os_str().is_empty())
        {
            return Err(ConfigError::Invalid("--cert and --key go together".into()));
        }
        let devices =
            std::iter::once(&self.max_devices_per_user).chain(self.app_max_devices.values());
        for max_devices in devices {
            let bound = MAX_DEVICES_PER_USER;
            if !(bound.min..=bound.max).contains(&(*max_devices as u64)) {
                return Err(ConfigError::Invalid(format!(
                    "{} is {max_devices}; it must be {} to {}",
                    bound.key, bound.min, bound.max
                )));
            }
        }
        if self.switchboard.default_invite_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "the invitation timeout must be positive".into(),
            ));
        }
        if !self.operations.webhook_urls.is_empty() && self.operations.webhook_key.is_none() {
            return Err(ConfigError::Invalid(
                "webhook_urls need a webhook_key to sign them with".into(),
            ));
        }
        if self.limits.max_connections == 0 || self.limits.max_connections_per_ip == 0 {
            return Err(ConfigError::Invalid(
                "connection limits must be positive".into(),
            ));
        }
        Ok(())
    }
}
