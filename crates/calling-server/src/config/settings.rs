//! [`Settings`]: every setting once, with its flag, environment variable,
//! file key and [`Bound`], layered (flags over environment over file) and
//! resolved into a [`ServerConfig`].

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use signaling_proto::SwitchboardConfig;

use super::{
    ClusterConfig, ConfigError, ConnectionLimits, DEFAULT_DATA_DIR, DEFAULT_LISTEN, Fallback,
    OperationsConfig, ServerConfig, TlsSource, system_clock,
};
use crate::admission::ServerLimits;
use crate::secret::SecretKey;
use crate::server_address::ServerAddress;
use crate::web_origin::WebOrigin;
use crate::webhook_url::WebhookUrl;

/// A numeric setting's default and allowed range: the command line, the
/// environment and the file are all checked against it.
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// The setting's key in the file (and, in kebab case, its flag).
    pub key: &'static str,
    /// The value when no source sets it.
    pub default: u64,
    /// The least allowed value.
    pub min: u64,
    /// The largest allowed value.
    pub max: u64,
}

impl Bound {
    /// `value`, or why it is out of range.
    pub fn check(&self, value: u64) -> Result<u64, String> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(format!(
                "{}: {value} is outside {}..={}",
                self.key, self.min, self.max
            ))
        }
    }

    /// The value of a flag or variable, checked.
    fn parse(&self, text: &str) -> Result<u64, String> {
        let value = text
            .parse()
            .map_err(|_| format!("{}: {text:?} is not a number", self.key))?;
        self.check(value)
    }

    /// The setting from whichever source set it, checked, or the default.
    fn resolve(&self, value: Option<u64>) -> Result<u64, ConfigError> {
        value
            .map_or(Ok(self.default), |value| self.check(value))
            .map_err(ConfigError::Invalid)
    }

    fn resolve_usize(&self, value: Option<u64>) -> Result<usize, ConfigError> {
        usize::try_from(self.resolve(value)?)
            .map_err(|_| ConfigError::Invalid(format!("{}: too large", self.key)))
    }

    fn resolve_secs(&self, value: Option<u64>) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(self.resolve(value)?))
    }

    /// A clap value parser enforcing the range.
    fn parser(self) -> impl Fn(&str) -> Result<u64, String> + Clone + Send + Sync + 'static {
        move |text: &str| self.parse(text)
    }
}

/// How long invitations ring unless a call says otherwise, in seconds.
pub const INVITE_TIMEOUT_SECS: Bound = Bound {
    key: "invite_timeout_secs",
    default: SwitchboardConfig::DEFAULT.default_invite_timeout.as_secs(),
    min: 1,
    max: 3_600,
};
/// The longest a call may ask invitations to ring, in seconds.
pub const MAX_INVITE_TIMEOUT_SECS: Bound = Bound {
    key: "max_invite_timeout_secs",
    default: SwitchboardConfig::DEFAULT.max_invite_timeout.as_secs(),
    min: 1,
    max: 3_600,
};
/// How long a broken connection's session waits for its client to resume,
/// in seconds (0: sessions end with their connection).
pub const RESUME_GRACE_SECS: Bound = Bound {
    key: "resume_grace_secs",
    default: SwitchboardConfig::DEFAULT.resume_grace.as_secs(),
    min: 0,
    max: 600,
};
/// The most members and invitees of one call.
pub const MAX_CALL_SIZE: Bound = Bound {
    key: "max_call_size",
    default: SwitchboardConfig::DEFAULT.max_call_size as u64,
    min: 2,
    max: 64,
};
/// Invitations one session may send a minute.
pub const INVITATIONS_PER_MINUTE: Bound = Bound {
    key: "invitations_per_minute",
    default: SwitchboardConfig::DEFAULT.invitations_per_minute as u64,
    min: 1,
    max: 100_000,
};
/// Invitations of one session that may ring at once.
pub const MAX_RINGING_PER_SESSION: Bound = Bound {
    key: "max_ringing_per_session",
    default: SwitchboardConfig::DEFAULT.max_ringing_per_session as u64,
    min: 1,
    max: 100_000,
};
/// Devices one user may be logged in on at once (1: a second login
/// replaces the first).
pub const MAX_DEVICES_PER_USER: Bound = Bound {
    key: "max_devices_per_user",
    default: 1,
    min: 1,
    max: 16,
};
/// QUIC endpoints on the listening port (0: one per core).
pub const QUIC_ENDPOINTS: Bound = Bound {
    key: "quic_endpoints",
    default: 0,
    min: 0,
    max: signaling_quic::MAX_ENDPOINTS as u64,
};
/// How long a drain waits for the server's calls to end, in seconds.
pub const DRAIN_LIMIT_SECS: Bound = Bound {
    key: "drain_limit_secs",
    default: 600,
    min: 0,
    max: 86_400,
};
/// How long a graceful shutdown waits for clients to get the notice, in seconds.
pub const SHUTDOWN_GRACE_SECS: Bound = Bound {
    key: "shutdown_grace_secs",
    default: 2,
    min: 0,
    max: 60,
};
/// How far in the future a UserSig's `TLS.time` may be, in seconds.
pub const USERSIG_MAX_SKEW_SECS: Bound = Bound {
    key: "usersig_max_skew_secs",
    default: calling_usersig::TimeBounds::DEFAULT.max_skew,
    min: 0,
    max: 86_400,
};
/// The longest UserSig lifetime (`TLS.expire`) accepted, in seconds.
pub const USERSIG_MAX_LIFETIME_SECS: Bound = Bound {
    key: "usersig_max_lifetime_secs",
    default: calling_usersig::TimeBounds::DEFAULT.max_lifetime,
    min: 60,
    max: 3_650 * 86_400,
};
/// Connections open at once that have not logged in yet.
pub const MAX_BEFORE_LOGIN: Bound = Bound {
    key: "max_before_login",
    default: ServerLimits::DEFAULT.max_before_login as u64,
    min: 1,
    max: 10_000_000,
};
/// Handshakes a second the server starts.
pub const HANDSHAKES_PER_SEC: Bound = Bound {
    key: "handshakes_per_sec",
    default: ServerLimits::DEFAULT.handshakes_per_sec as u64,
    min: 1,
    max: 10_000_000,
};
/// Audio datagrams a second one sender may have relayed.
pub const MEDIA_PACKETS_PER_SEC: Bound = Bound {
    key: "media_packets_per_sec",
    default: ConnectionLimits::DEFAULT.media_packets_per_sec as u64,
    min: 50,
    max: 100_000,
};
/// Audio bytes a second one sender may have relayed.
pub const MEDIA_BYTES_PER_SEC: Bound = Bound {
    key: "media_bytes_per_sec",
    default: ConnectionLimits::DEFAULT.media_bytes_per_sec as u64,
    min: 4_000,
    max: 100_000_000,
};
/// Signaling messages a second one connection may send after its burst.
pub const REQUESTS_PER_SEC: Bound = Bound {
    key: "requests_per_sec",
    default: ConnectionLimits::DEFAULT.requests_per_sec as u64,
    min: 1,
    max: 1_000_000,
};
/// Signaling messages one connection may send at once.
pub const REQUEST_BURST: Bound = Bound {
    key: "request_burst",
    default: ConnectionLimits::DEFAULT.request_burst as u64,
    min: 1,
    max: 1_000_000,
};
/// How long a write to a client may block, in seconds.
pub const WRITE_TIMEOUT_SECS: Bound = Bound {
    key: "write_timeout_secs",
    default: ConnectionLimits::DEFAULT.write_timeout.as_secs(),
    min: 1,
    max: 60,
};
/// Connections open at once.
pub const MAX_CONNECTIONS: Bound = Bound {
    key: "max_connections",
    default: ServerLimits::DEFAULT.max_connections as u64,
    min: 1,
    max: 10_000_000,
};
/// Connections open at once from one IP address.
pub const MAX_CONNECTIONS_PER_IP: Bound = Bound {
    key: "max_connections_per_ip",
    default: ServerLimits::DEFAULT.max_connections_per_ip as u64,
    min: 1,
    max: 10_000_000,
};
/// Open connections above which clients must prove their address first.
pub const VALIDATE_ADDRESSES_ABOVE: Bound = Bound {
    key: "validate_addresses_above",
    default: ServerLimits::DEFAULT.validate_addresses_above as u64,
    min: 0,
    max: 10_000_000,
};
/// How long a client has for its handshake, in seconds.
pub const HANDSHAKE_TIMEOUT_SECS: Bound = Bound {
    key: "handshake_timeout_secs",
    default: ServerLimits::DEFAULT.handshake_timeout.as_secs(),
    min: 1,
    max: 60,
};

/// Every setting of the server, once. Each field is one setting: its doc
/// is its help text, its name its key in the TOML file, its `arg` its flag
/// and environment variable; a numeric setting's default and range are
/// the [`Bound`] its parser names. Flags win over the environment (clap
/// reads both), which wins over the file ([`Settings::over`]).
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// UDP address to listen on [default: 0.0.0.0:4433]
    #[arg(long, env = "OPENCALLING_LISTEN", value_name = "ADDR")]
    pub listen: Option<SocketAddr>,
    /// QUIC endpoints sharing that port, each receiving on its own socket; 0: one per core [default: 0, 0..=128]
    #[arg(long = "quic-endpoints", env = "OPENCALLING_QUIC_ENDPOINTS", value_name = "N",
          value_parser = QUIC_ENDPOINTS.parser())]
    pub quic_endpoints: Option<u64>,
    /// TCP address of the fallback transport for UDP-blocked networks, `same` (the UDP address) or `off` [default: same]
    #[arg(
        long = "fallback-listen",
        env = "OPENCALLING_FALLBACK_LISTEN",
        value_name = "ADDR"
    )]
    pub fallback_listen: Option<Fallback>,
    /// Where development certificate, app and keys are kept [default: ./opencalling-data]
    #[arg(long, env = "OPENCALLING_DATA_DIR", value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Seconds an invitation rings unless the call says [default: 30, 1..=3600]
    #[arg(long = "invite-timeout", env = "OPENCALLING_INVITE_TIMEOUT_SECS", value_name = "SECS",
          value_parser = INVITE_TIMEOUT_SECS.parser())]
    pub invite_timeout_secs: Option<u64>,
    /// The longest a call may ask an invitation to ring, in seconds [default: 120, 1..=3600]
    #[arg(long = "max-invite-timeout", env = "OPENCALLING_MAX_INVITE_TIMEOUT_SECS",
          value_name = "SECS", value_parser = MAX_INVITE_TIMEOUT_SECS.parser())]
    pub max_invite_timeout_secs: Option<u64>,
    /// Seconds a session whose connection broke waits for its client to resume [default: 20, 0..=600]
    #[arg(long = "resume-grace", env = "OPENCALLING_RESUME_GRACE_SECS", value_name = "SECS",
          value_parser = RESUME_GRACE_SECS.parser())]
    pub resume_grace_secs: Option<u64>,
    /// Members and invitees one call may hold [default: 16, 2..=64]
    #[arg(long, env = "OPENCALLING_MAX_CALL_SIZE", value_name = "N",
          value_parser = MAX_CALL_SIZE.parser())]
    pub max_call_size: Option<u64>,
    /// Invitations one session may send a minute (each invitee counts) [default: 60, 1..=100000]
    #[arg(long, env = "OPENCALLING_INVITATIONS_PER_MINUTE", value_name = "N",
          value_parser = INVITATIONS_PER_MINUTE.parser())]
    pub invitations_per_minute: Option<u64>,
    /// Invitations of one session that may ring at once [default: 32, 1..=100000]
    #[arg(long, env = "OPENCALLING_MAX_RINGING_PER_SESSION", value_name = "N",
          value_parser = MAX_RINGING_PER_SESSION.parser())]
    pub max_ringing_per_session: Option<u64>,
    /// Devices one user may be logged in on at once, for apps that do not say; each rings, the first to answer takes the call [default: 1, 1..=16]
    #[arg(long, env = "OPENCALLING_MAX_DEVICES_PER_USER", value_name = "N",
          value_parser = MAX_DEVICES_PER_USER.parser())]
    pub max_devices_per_user: Option<u64>,
    /// This node's number, the high half of its call ids [default: random at each start]
    #[arg(long, env = "OPENCALLING_NODE_ID", value_name = "N")]
    pub node_id: Option<u32>,
    /// Seconds a graceful shutdown waits for clients to get the notice [default: 2, 0..=60]
    #[arg(long = "shutdown-grace", env = "OPENCALLING_SHUTDOWN_GRACE_SECS", value_name = "SECS",
          value_parser = SHUTDOWN_GRACE_SECS.parser())]
    pub shutdown_grace_secs: Option<u64>,
    /// Seconds a UserSig's issue time may lie in the future (clock skew) [default: 300, 0..=86400]
    #[arg(long, env = "OPENCALLING_USERSIG_MAX_SKEW_SECS", value_name = "SECS",
          value_parser = USERSIG_MAX_SKEW_SECS.parser())]
    pub usersig_max_skew_secs: Option<u64>,
    /// The longest UserSig lifetime accepted, in seconds [default: 15552000, 60..=315360000]
    #[arg(long, env = "OPENCALLING_USERSIG_MAX_LIFETIME_SECS", value_name = "SECS",
          value_parser = USERSIG_MAX_LIFETIME_SECS.parser())]
    pub usersig_max_lifetime_secs: Option<u64>,
    /// Invitations to offline users ring for their timeout (push wake-up); false: answered no response at once [default: true]
    #[arg(long, env = "OPENCALLING_RING_OFFLINE_INVITEES", value_name = "BOOL")]
    pub ring_offline_invitees: Option<bool>,
    /// TCP address of the HTTP listener for /metrics, /healthz, /readyz and /admin/ [default: off]
    #[arg(
        long = "http-listen",
        env = "OPENCALLING_HTTP_LISTEN",
        value_name = "ADDR"
    )]
    pub http_listen: Option<SocketAddr>,
    /// Bearer token of the admin API; without one the admin API refuses every request
    #[arg(
        long,
        env = "OPENCALLING_ADMIN_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub admin_token: Option<SecretKey>,
    /// Web site whose pages may use the fallback's WebSocket, as its origin (`https://app.example`; repeat the flag; comma-separated in the environment) [default: none; a development server also lets pages on this machine in]
    #[arg(
        long = "web-origin",
        env = "OPENCALLING_WEB_ORIGINS",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    pub web_origins: Vec<WebOrigin>,
    /// Server that clients of protocol version 6 are sent to when this one drains or shuts down, as `host:port` (repeat the flag, best first; comma-separated in the environment; at most 8) [default: none: they are only refused or closed]
    #[arg(
        long = "redirect-to",
        env = "OPENCALLING_REDIRECT_TO",
        value_name = "HOST:PORT",
        value_delimiter = ','
    )]
    pub redirect_to: Vec<ServerAddress>,
    /// URL call events are POSTed to (repeat the flag; comma-separated in the environment)
    #[arg(
        long = "webhook-url",
        env = "OPENCALLING_WEBHOOK_URLS",
        value_name = "URL",
        value_delimiter = ','
    )]
    pub webhook_urls: Vec<WebhookUrl>,
    /// Key the webhooks are signed with (HMAC-SHA256); required with webhook URLs
    #[arg(
        long,
        env = "OPENCALLING_WEBHOOK_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub webhook_key: Option<SecretKey>,
    /// File to append one JSON line per ended call to; reopened on SIGHUP [default: none]
    #[arg(
        long = "call-records",
        env = "OPENCALLING_CALL_RECORDS",
        value_name = "FILE"
    )]
    pub call_records: Option<PathBuf>,
    /// Seconds a drain waits for calls to end before the server stops [default: 600, 0..=86400]
    #[arg(long = "drain-limit", env = "OPENCALLING_DRAIN_LIMIT_SECS", value_name = "SECS",
          value_parser = DRAIN_LIMIT_SECS.parser())]
    pub drain_limit_secs: Option<u64>,
    /// Redis URL of the cluster's shared store: this server becomes one node of a cluster [default: none, a single server]
    #[arg(
        long,
        env = "OPENCALLING_REDIS",
        value_name = "URL",
        hide_env_values = true
    )]
    pub redis: Option<SecretKey>,
    /// Prefix of the cluster's Redis keys (clusters sharing one Redis differ in it) [default: opencalling]
    #[arg(
        long = "redis-prefix",
        env = "OPENCALLING_REDIS_PREFIX",
        value_name = "TEXT"
    )]
    pub redis_prefix: Option<String>,
    /// UDP address of the links between nodes (cluster mode) [default: 0.0.0.0:4434]
    #[arg(
        long = "cluster-listen",
        env = "OPENCALLING_CLUSTER_LISTEN",
        value_name = "ADDR"
    )]
    pub cluster_listen: Option<SocketAddr>,
    /// Address the other nodes reach this node's links at [default: --cluster-listen, which must then name an IP]
    #[arg(
        long = "cluster-advertise",
        env = "OPENCALLING_CLUSTER_ADVERTISE",
        value_name = "ADDR"
    )]
    pub cluster_advertise: Option<SocketAddr>,
    /// Key every node of the cluster shares, authenticating the links between nodes; required with --redis
    #[arg(
        long = "cluster-key",
        env = "OPENCALLING_CLUSTER_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    pub cluster_key: Option<SecretKey>,
    /// Connection limits.
    #[command(flatten)]
    pub limits: LimitSettings,
    /// Certificate chain, leaf first (PEM) [default: self-signed, made once in the data directory]
    #[arg(
        long = "cert",
        env = "OPENCALLING_CERT",
        value_name = "PEM",
        requires = "key"
    )]
    #[serde(skip)]
    pub cert: Option<PathBuf>,
    /// Private key of the certificate (PEM)
    #[arg(
        long = "key",
        env = "OPENCALLING_KEY",
        value_name = "PEM",
        requires = "cert"
    )]
    #[serde(skip)]
    pub key: Option<PathBuf>,
    /// Certificate and key, in the file.
    #[arg(skip)]
    pub tls: Option<FileTls>,
    /// An app's sdkAppId (with --secret-key); the file lists apps as `[[apps]]`
    #[arg(
        long,
        env = "OPENCALLING_SDK_APP_ID",
        value_name = "ID",
        requires = "secret_key"
    )]
    #[serde(skip)]
    pub sdk_app_id: Option<u32>,
    /// That app's secret key
    #[arg(
        long,
        env = "OPENCALLING_SECRET_KEY",
        value_name = "KEY",
        hide_env_values = true,
        requires = "sdk_app_id"
    )]
    #[serde(skip)]
    pub secret_key: Option<String>,
    /// The apps, in the file.
    #[arg(skip)]
    pub apps: Vec<FileApp>,
}

/// The connection limits, the `[limits]` table of the file.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitSettings {
    /// Connections open at once [default: 20000, 1..=10000000]
    #[arg(long, env = "OPENCALLING_MAX_CONNECTIONS", value_name = "N",
          value_parser = MAX_CONNECTIONS.parser())]
    pub max_connections: Option<u64>,
    /// Connections open at once from one IP address [default: 64, 1..=10000000]
    #[arg(long, env = "OPENCALLING_MAX_CONNECTIONS_PER_IP", value_name = "N",
          value_parser = MAX_CONNECTIONS_PER_IP.parser())]
    pub max_connections_per_ip: Option<u64>,
    /// Open connections above which a client proves its address first [default: 2000, 0..=10000000]
    #[arg(long, env = "OPENCALLING_VALIDATE_ADDRESSES_ABOVE", value_name = "N",
          value_parser = VALIDATE_ADDRESSES_ABOVE.parser())]
    pub validate_addresses_above: Option<u64>,
    /// Connections open at once that have not logged in yet [default: 1000, 1..=10000000]
    #[arg(long, env = "OPENCALLING_MAX_BEFORE_LOGIN", value_name = "N",
          value_parser = MAX_BEFORE_LOGIN.parser())]
    pub max_before_login: Option<u64>,
    /// Handshakes a second the server starts; past it Retry, then refusal [default: 1000, 1..=10000000]
    #[arg(long, env = "OPENCALLING_HANDSHAKES_PER_SEC", value_name = "N",
          value_parser = HANDSHAKES_PER_SEC.parser())]
    pub handshakes_per_sec: Option<u64>,
    /// Audio datagrams a second one sender may have relayed [default: 200, 50..=100000]
    #[arg(long, env = "OPENCALLING_MEDIA_PACKETS_PER_SEC", value_name = "N",
          value_parser = MEDIA_PACKETS_PER_SEC.parser())]
    pub media_packets_per_sec: Option<u64>,
    /// Audio bytes a second one sender may have relayed [default: 32000, 4000..=100000000]
    #[arg(long, env = "OPENCALLING_MEDIA_BYTES_PER_SEC", value_name = "N",
          value_parser = MEDIA_BYTES_PER_SEC.parser())]
    pub media_bytes_per_sec: Option<u64>,
    /// Signaling messages a second one connection may send after its burst [default: 20, 1..=1000000]
    #[arg(long, env = "OPENCALLING_REQUESTS_PER_SEC", value_name = "N",
          value_parser = REQUESTS_PER_SEC.parser())]
    pub requests_per_sec: Option<u64>,
    /// Signaling messages one connection may send at once [default: 300, 1..=1000000]
    #[arg(long, env = "OPENCALLING_REQUEST_BURST", value_name = "N",
          value_parser = REQUEST_BURST.parser())]
    pub request_burst: Option<u64>,
    /// Seconds a write to a client may block before it is closed as not reading [default: 5, 1..=60]
    #[arg(long = "write-timeout", env = "OPENCALLING_WRITE_TIMEOUT_SECS", value_name = "SECS",
          value_parser = WRITE_TIMEOUT_SECS.parser())]
    pub write_timeout_secs: Option<u64>,
    /// Seconds a client has to finish its handshake [default: 10, 1..=60]
    #[arg(long = "handshake-timeout", env = "OPENCALLING_HANDSHAKE_TIMEOUT_SECS",
          value_name = "SECS", value_parser = HANDSHAKE_TIMEOUT_SECS.parser())]
    pub handshake_timeout_secs: Option<u64>,
}

/// The `[tls]` table of the file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PEM).
    pub key: PathBuf,
}

/// One `[[apps]]` entry of the file.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApp {
    /// The app's sdkAppId.
    pub sdk_app_id: u32,
    /// Its secret key.
    pub secret_key: String,
    /// Devices one of its users may be logged in on at once (default: the
    /// server's `max_devices_per_user`).
    pub max_devices_per_user: Option<u64>,
}

impl fmt::Debug for FileApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileApp")
            .field("sdk_app_id", &self.sdk_app_id)
            .finish_non_exhaustive()
    }
}

/// A value from one source laid over the same value from a lower one
/// (flags over environment over file).
trait Layer {
    fn over(self, lower: Self) -> Self;
}

/// A setting given wins.
impl<T> Layer for Option<T> {
    fn over(self, lower: Self) -> Self {
        self.or(lower)
    }
}

/// A list of URLs given replaces the lower one whole.
impl Layer for Vec<WebhookUrl> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() { lower } else { self }
    }
}

/// A list of origins given replaces the lower one whole.
impl Layer for Vec<WebOrigin> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() { lower } else { self }
    }
}

/// A list of servers to redirect to given replaces the lower one whole.
impl Layer for Vec<ServerAddress> {
    fn over(self, lower: Self) -> Self {
        if self.is_empty() { lower } else { self }
    }
}

/// Apps add up; a later key for the same app replaces the earlier one
/// when the configuration is resolved.
impl Layer for Vec<FileApp> {
    fn over(self, mut lower: Self) -> Self {
        lower.extend(self);
        lower
    }
}

/// The servers clients are redirected to, at most as many as a client
/// takes.
fn redirect_to(servers: &[ServerAddress]) -> Result<Vec<String>, ConfigError> {
    if servers.len() > signaling_proto::MAX_REDIRECT_SERVERS {
        return Err(ConfigError::Invalid(format!(
            "redirect_to names {} servers; a client takes at most {}",
            servers.len(),
            signaling_proto::MAX_REDIRECT_SERVERS
        )));
    }
    Ok(servers.iter().map(ToString::to_string).collect())
}

/// Lays a settings struct over another field by field. Naming every field
/// here is checked by the compiler: a field left out is a missing field of
/// the struct literal.
macro_rules! layered {
    ($settings:ident { $($field:ident),* $(,)? }) => {
        impl Layer for $settings {
            fn over(self, lower: Self) -> Self {
                Self {
                    $($field: Layer::over(self.$field, lower.$field)),*
                }
            }
        }
    };
}

layered!(Settings {
    listen,
    quic_endpoints,
    fallback_listen,
    data_dir,
    invite_timeout_secs,
    max_invite_timeout_secs,
    resume_grace_secs,
    max_call_size,
    invitations_per_minute,
    max_ringing_per_session,
    max_devices_per_user,
    node_id,
    shutdown_grace_secs,
    usersig_max_skew_secs,
    usersig_max_lifetime_secs,
    ring_offline_invitees,
    http_listen,
    admin_token,
    web_origins,
    redirect_to,
    webhook_urls,
    webhook_key,
    call_records,
    drain_limit_secs,
    redis,
    redis_prefix,
    cluster_listen,
    cluster_advertise,
    cluster_key,
    limits,
    cert,
    key,
    tls,
    sdk_app_id,
    secret_key,
    apps,
});

layered!(LimitSettings {
    max_connections,
    max_connections_per_ip,
    validate_addresses_above,
    max_before_login,
    handshakes_per_sec,
    media_packets_per_sec,
    media_bytes_per_sec,
    requests_per_sec,
    request_burst,
    write_timeout_secs,
    handshake_timeout_secs,
});

/// The settings alone as a command line, for [`Settings::parse_from`].
#[derive(Debug, clap::Parser)]
struct SettingsOnly {
    #[command(flatten)]
    settings: Settings,
}

impl Settings {
    /// The settings of command-line `args` (the program's name first) and
    /// of the environment, flags winning, as the binary reads them.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        <SettingsOnly as clap::Parser>::try_parse_from(args).map(|only| only.settings)
    }

    /// The settings of a TOML file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.message().to_owned(),
        })
    }

    /// These settings where set, `lower`'s elsewhere (flags and
    /// environment over the file). Apps add up, a key of `self` replacing
    /// the same app's key in `lower`; a non-empty list of webhook URLs
    /// replaces `lower`'s.
    pub fn over(self, lower: Self) -> Self {
        Layer::over(self, lower)
    }

    /// The configuration these settings describe, every value checked
    /// against its range; unset ones take their defaults. `node_id`, when
    /// unset, is drawn at random.
    pub fn resolve(self) -> Result<ServerConfig, ConfigError> {
        let default_invite_timeout = INVITE_TIMEOUT_SECS.resolve_secs(self.invite_timeout_secs)?;
        let max_invite_timeout =
            MAX_INVITE_TIMEOUT_SECS.resolve_secs(self.max_invite_timeout_secs)?;
        if default_invite_timeout > max_invite_timeout {
            return Err(ConfigError::Invalid(format!(
                "invite_timeout_secs ({}) exceeds max_invite_timeout_secs ({})",
                default_invite_timeout.as_secs(),
                max_invite_timeout.as_secs()
            )));
        }
        let node_id = match self.node_id {
            Some(node_id) => node_id,
            None => random_node_id()?,
        };
        let tls = tls_source(self.cert, self.key, self.tls)?;
        let cluster = resolve_cluster(
            self.redis,
            self.redis_prefix,
            (self.cluster_listen, self.cluster_advertise),
            self.cluster_key,
        )?;
        let mut config = ServerConfig {
            cluster,
            listen: self.listen.unwrap_or(DEFAULT_LISTEN),
            quic_endpoints: QUIC_ENDPOINTS.resolve_usize(self.quic_endpoints)?,
            fallback: self.fallback_listen.unwrap_or(Fallback::SameAddress),
            web_origins: self.web_origins,
            redirect_to: redirect_to(&self.redirect_to)?,
            data_dir: self
                .data_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
            apps: Vec::new(),
            switchboard: SwitchboardConfig {
                default_invite_timeout,
                max_invite_timeout,
                max_call_size: MAX_CALL_SIZE.resolve_usize(self.max_call_size)?,
                node_id,
                invitations_per_minute: resolve_u32(
                    INVITATIONS_PER_MINUTE,
                    self.invitations_per_minute,
                )?,
                max_ringing_per_session: MAX_RINGING_PER_SESSION
                    .resolve_usize(self.max_ringing_per_session)?,
                resume_grace: RESUME_GRACE_SECS.resolve_secs(self.resume_grace_secs)?,
                ring_offline_invitees: self.ring_offline_invitees.unwrap_or(true),
            },
            max_devices_per_user: MAX_DEVICES_PER_USER.resolve_usize(self.max_devices_per_user)?,
            app_max_devices: BTreeMap::new(),
            limits: ServerLimits {
                max_connections: MAX_CONNECTIONS.resolve_usize(self.limits.max_connections)?,
                max_connections_per_ip: MAX_CONNECTIONS_PER_IP
                    .resolve_usize(self.limits.max_connections_per_ip)?,
                validate_addresses_above: VALIDATE_ADDRESSES_ABOVE
                    .resolve_usize(self.limits.validate_addresses_above)?,
                handshake_timeout: HANDSHAKE_TIMEOUT_SECS
                    .resolve_secs(self.limits.handshake_timeout_secs)?,
                max_before_login: MAX_BEFORE_LOGIN.resolve_usize(self.limits.max_before_login)?,
                handshakes_per_sec: HANDSHAKES_PER_SEC
                    .resolve_usize(self.limits.handshakes_per_sec)?,
            },
            connection_limits: ConnectionLimits {
                media_packets_per_sec: resolve_u32(
                    MEDIA_PACKETS_PER_SEC,
                    self.limits.media_packets_per_sec,
                )?,
                media_bytes_per_sec: resolve_u32(
                    MEDIA_BYTES_PER_SEC,
                    self.limits.media_bytes_per_sec,
                )?,
                requests_per_sec: resolve_u32(REQUESTS_PER_SEC, self.limits.requests_per_sec)?,
                request_burst: resolve_u32(REQUEST_BURST, self.limits.request_burst)?,
                write_timeout: WRITE_TIMEOUT_SECS.resolve_secs(self.limits.write_timeout_secs)?,
            },
            tls,
            clock: system_clock(),
            shutdown_grace: SHUTDOWN_GRACE_SECS.resolve_secs(self.shutdown_grace_secs)?,
            usersig_bounds: calling_usersig::TimeBounds {
                max_skew: USERSIG_MAX_SKEW_SECS.resolve(self.usersig_max_skew_secs)?,
                max_lifetime: USERSIG_MAX_LIFETIME_SECS.resolve(self.usersig_max_lifetime_secs)?,
            },
            operations: OperationsConfig {
                http_listen: self.http_listen,
                admin_token: self.admin_token,
                webhook_urls: self.webhook_urls,
                webhook_key: self.webhook_key,
                call_records: self.call_records,
                drain_limit: DRAIN_LIMIT_SECS.resolve_secs(self.drain_limit_secs)?,
            },
        };
        config.add_apps(self.apps, (self.sdk_app_id, self.secret_key))?;
        config.validate()?;
        Ok(config)
    }
}

impl ServerConfig {
    /// The file's apps, then the one the flags or environment name.
    fn add_apps(
        &mut self,
        apps: Vec<FileApp>,
        named: (Option<u32>, Option<String>),
    ) -> Result<(), ConfigError> {
        for app in apps {
            if let Some(max_devices) = app.max_devices_per_user {
                let max_devices = MAX_DEVICES_PER_USER.resolve_usize(Some(max_devices))?;
                self.app_max_devices.insert(app.sdk_app_id, max_devices);
            }
            self.add_app(app.sdk_app_id, SecretKey::new(app.secret_key))?;
        }
        match named {
            (Some(id), Some(key)) => self.add_app(id, SecretKey::new(key)),
            (None, None) => Ok(()),
            _ => Err(ConfigError::Invalid(
                "OPENCALLING_SDK_APP_ID and OPENCALLING_SECRET_KEY go together".into(),
            )),
        }
    }
}

/// The certificate: files named by flags, else by the file, else made.
fn tls_source(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    file: Option<FileTls>,
) -> Result<TlsSource, ConfigError> {
    Ok(match (cert, key, file) {
        (Some(cert), Some(key), _) => TlsSource::PemFiles { cert, key },
        (None, None, Some(file)) => TlsSource::PemFiles {
            cert: file.cert,
            key: file.key,
        },
        (None, None, None) => TlsSource::SelfSigned,
        _ => return Err(ConfigError::Invalid("--cert and --key go together".into())),
    })
}

/// The default UDP address of the links between nodes.
pub const DEFAULT_CLUSTER_LISTEN: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED), 4434);

/// Cluster mode, when a Redis URL is given: the key is required, and the
/// advertised address must be one another node can dial.
fn resolve_cluster(
    redis: Option<SecretKey>,
    prefix: Option<String>,
    (listen, advertise): (Option<SocketAddr>, Option<SocketAddr>),
    key: Option<SecretKey>,
) -> Result<Option<ClusterConfig>, ConfigError> {
    let Some(redis_url) = redis else {
        if key.is_some() || listen.is_some() || advertise.is_some() {
            return Err(ConfigError::Invalid(
                "the cluster settings need --redis (cluster mode)".into(),
            ));
        }
        return Ok(None);
    };
    let key = key.ok_or_else(|| {
        ConfigError::Invalid("--redis needs --cluster-key, shared by every node".into())
    })?;
    let listen = listen.unwrap_or(DEFAULT_CLUSTER_LISTEN);
    let advertise = advertise.unwrap_or(listen);
    // Port 0 is for tests: the port bound is advertised.
    if advertise.ip().is_unspecified() || (advertise.port() == 0 && listen.port() != 0) {
        return Err(ConfigError::Invalid(format!(
            "other nodes cannot dial {advertise}: set --cluster-advertise to this node's address"
        )));
    }
    let prefix = prefix.unwrap_or_else(|| "opencalling".into());
    if prefix.is_empty() || prefix.contains(['{', '}', ' ']) {
        return Err(ConfigError::Invalid(
            "--redis-prefix must be non-empty, without braces or spaces".into(),
        ));
    }
    Ok(Some(ClusterConfig {
        redis_url,
        prefix,
        listen,
        advertise,
        key,
    }))
}

/// A bound whose range fits a `u32`, resolved.
fn resolve_u32(bound: Bound, value: Option<u64>) -> Result<u32, ConfigError> {
    u32::try_from(bound.resolve(value)?)
        .map_err(|_| ConfigError::Invalid(format!("{}: too large", bound.key)))
}

pub(crate) fn random_node_id() -> Result<u32, ConfigError> {
    let mut bytes = [0; 4];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .map_err(|_| ConfigError::Invalid("the system random generator failed".into()))?;
    Ok(u32::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(args: &[&str]) -> Result<Settings, clap::Error> {
        Settings::parse_from(std::iter::once("calling-server").chain(args.iter().copied()))
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("opencalling-config-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn file_then_env_then_flags() {
        let dir = temp_dir("layers");
        let file = dir.join("server.toml");
        fs::write(
            &file,
            r#"
            listen = "127.0.0.1:5000"
            invite_timeout_secs = 20
            [limits]
            max_connections = 100
            [[apps]]
            sdk_app_id = 7
            secret_key = "file-key"
            "#,
        )
        .unwrap();
        let from_file = Settings::from_file(&file).unwrap();
        let config = from_file.clone().resolve().unwrap();
        assert_eq!(config.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(
            config.switchboard.default_invite_timeout,
            Duration::from_secs(20)
        );
        assert_eq!(config.limits.max_connections, 100);
        // What clap reads from OPENCALLING_INVITE_TIMEOUT_SECS and the app
        // variables (the binary's own test sets them for real).
        let from_env = Settings {
            invite_timeout_secs: Some(15),
            sdk_app_id: Some(7),
            secret_key: Some("env-key".into()),
            ..Settings::default()
        };
        let env_over_file = from_env.over(from_file);
        let config = env_over_file.clone().resolve().unwrap();
        assert_eq!(
            config.switchboard.default_invite_timeout,
            Duration::from_secs(15)
        );
        assert_eq!(config.apps.len(), 1, "the same app is replaced, not added");
        assert_eq!(config.apps[0].secret_key.expose(), "env-key");
        let config = flags(&["--invite-timeout", "10", "--listen", "127.0.0.1:6000"])
            .unwrap()
            .over(env_over_file)
            .resolve()
            .unwrap();
        assert_eq!(
            config.switchboard.default_invite_timeout,
            Duration::from_secs(10)
        );
        assert_eq!(config.listen.port(), 6000);
        assert_eq!(config.limits.max_connections, 100, "the file still counts");
        config.validate().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn layers_merge_field_by_field_lists_by_their_rules() {
        let url = |text: &str| text.parse::<WebhookUrl>().unwrap();
        let app = |id: u32| FileApp {
            sdk_app_id: id,
            secret_key: format!("key-{id}"),
            max_devices_per_user: None,
        };
        let lower = Settings {
            webhook_urls: vec![url("http://file.example/hook")],
            apps: vec![app(1)],
            limits: LimitSettings {
                max_connections: Some(100),
                request_burst: Some(50),
                ..LimitSettings::default()
            },
            ..Settings::default()
        };
        let upper = Settings {
            apps: vec![app(2)],
            limits: LimitSettings {
                request_burst: Some(60),
                ..LimitSettings::default()
            },
            ..Settings::default()
        };
        let merged = upper.clone().over(lower.clone());
        assert_eq!(
            merged.webhook_urls, lower.webhook_urls,
            "none given: the lower list"
        );
        let ids: Vec<u32> = merged.apps.iter().map(|app| app.sdk_app_id).collect();
        assert_eq!(ids, [1, 2], "apps add up");
        assert_eq!(
            merged.limits.max_connections,
            Some(100),
            "an unset limit falls through"
        );
        assert_eq!(merged.limits.request_burst, Some(60), "a set limit wins");
        let replaced = Settings {
            webhook_urls: vec![url("https://flag.example/hook")],
            ..upper
        }
        .over(lower);
        assert_eq!(replaced.webhook_urls, [url("https://flag.example/hook")]);
    }

    #[test]
    fn bad_configuration_says_what_is_wrong() {
        let dir = temp_dir("bad");
        let file = dir.join("server.toml");
        fs::write(&file, "lisen = \"x\"").unwrap();
        let error = Settings::from_file(&file).unwrap_err().to_string();
        assert!(error.contains("lisen"), "{error}");
        assert!(
            flags(&["--listen", "nowhere"])
                .unwrap_err()
                .to_string()
                .contains("nowhere")
        );
        assert!(flags(&["--bogus", "1"]).is_err());
        let only_id = Settings {
            sdk_app_id: Some(1),
            ..Settings::default()
        };
        assert!(only_id.resolve().is_err());
        assert!(
            flags(&["--cert", "only-cert.pem"]).is_err(),
            "--cert without --key"
        );
        let only_cert = Settings {
            cert: Some("only-cert.pem".into()),
            ..Settings::default()
        };
        assert!(only_cert.resolve().is_err(), "--cert without --key");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_layer_checks_the_same_range() {
        let dir = temp_dir("ranges");
        let file = dir.join("server.toml");
        fs::write(&file, "invite_timeout_secs = 9223372036854775807").unwrap();
        let error = Settings::from_file(&file)
            .unwrap()
            .resolve()
            .unwrap_err()
            .to_string();
        assert_eq!(
            error,
            "invite_timeout_secs: 9223372036854775807 is outside 1..=3600"
        );
        let error = flags(&["--invite-timeout", "0"]).unwrap_err().to_string();
        assert!(
            error.contains("invite_timeout_secs: 0 is outside 1..=3600"),
            "{error}"
        );
        let error = flags(&["--max-connections", "0"]).unwrap_err().to_string();
        assert!(error.contains("max_connections"), "{error}");
        let inverted = Settings {
            invite_timeout_secs: Some(60),
            max_invite_timeout_secs: Some(30),
            ..Settings::default()
        };
        assert!(inverted.resolve().is_err());
        let defaults = Settings::default().resolve().unwrap();
        assert_eq!(
            defaults.switchboard.default_invite_timeout,
            SwitchboardConfig::DEFAULT.default_invite_timeout
        );
        assert_eq!(
            defaults.limits.max_connections,
            ServerLimits::DEFAULT.max_connections
        );
        assert_eq!(defaults.listen, DEFAULT_LISTEN);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The help text of every numeric setting states its bound's default
    /// and range, so `--help` cannot drift from the values in force.
    #[test]
    fn help_states_each_bound() {
        use clap::CommandFactory;
        let command = SettingsOnly::command();
        let bounds = [
            INVITE_TIMEOUT_SECS,
            MAX_INVITE_TIMEOUT_SECS,
            MAX_CALL_SIZE,
            INVITATIONS_PER_MINUTE,
            MAX_RINGING_PER_SESSION,
            SHUTDOWN_GRACE_SECS,
            DRAIN_LIMIT_SECS,
            QUIC_ENDPOINTS,
            RESUME_GRACE_SECS,
            USERSIG_MAX_SKEW_SECS,
            USERSIG_MAX_LIFETIME_SECS,
            MAX_CONNECTIONS,
            MAX_CONNECTIONS_PER_IP,
            VALIDATE_ADDRESSES_ABOVE,
            HANDSHAKE_TIMEOUT_SECS,
            MAX_BEFORE_LOGIN,
            HANDSHAKES_PER_SEC,
            MEDIA_PACKETS_PER_SEC,
            MEDIA_BYTES_PER_SEC,
            REQUESTS_PER_SEC,
            REQUEST_BURST,
            WRITE_TIMEOUT_SECS,
        ];
        for bound in bounds {
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_id() == bound.key)
                .unwrap_or_else(|| panic!("no setting named {}", bound.key));
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            let stated = format!(
                "[default: {}, {}..={}]",
                bound.default, bound.min, bound.max
            );
            assert!(
                help.ends_with(&stated),
                "{}: {help:?} lacks {stated}",
                bound.key
            );
        }
    }

    #[test]
    fn secret_keys_never_print() {
        let mut config = ServerConfig::default();
        config
            .add_app(1, SecretKey::new("super-secret-value"))
            .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("super-secret-value"), "{printed}");
        let settings = Settings {
            apps: vec![FileApp {
                sdk_app_id: 1,
                secret_key: "super-secret-value".into(),
                max_devices_per_user: None,
            }],
            ..Settings::default()
        };
        let printed = format!("{settings:?}");
        assert!(!printed.contains("super-secret-value"), "{printed}");
        let operations = flags(&[
            "--admin-token",
            "super-secret-token",
            "--webhook-key",
            "super-secret-webhook-key",
            "--webhook-url",
            "http://127.0.0.1:9/hooks",
        ])
        .unwrap_or_else(|error| panic!("{error}"));
        let config = operations
            .clone()
            .resolve()
            .unwrap_or_else(|error| panic!("{error}"));
        for printed in [format!("{operations:?}"), format!("{config:?}")] {
            assert!(!printed.contains("super-secret"), "{printed}");
        }
    }

    #[test]
    fn webhooks_need_a_key_and_a_real_url() {
        let without_key = flags(&["--webhook-url", "http://127.0.0.1:9/hooks"]).unwrap();
        assert!(without_key.resolve().is_err());
        assert!(flags(&["--webhook-url", "ftp://example.com"]).is_err());
        assert!(flags(&["--admin-token", ""]).is_err(), "an empty token");
        let several = flags(&[
            "--webhook-url",
            "http://127.0.0.1:9/a",
            "--webhook-url",
            "http://127.0.0.1:9/b",
            "--webhook-key",
            "k",
        ])
        .unwrap()
        .resolve()
        .unwrap();
        assert_eq!(several.operations.webhook_urls.len(), 2);
    }
}

#[cfg(test)]
mod reference {
    //! docs/operations.md's configuration reference is this code's: the
    //! table there must be the one built here from the settings' flags,
    //! variables, file keys and help texts.

    use super::*;
    use clap::{Args, CommandFactory};

    /// The file key of a setting: a field of `Settings`, of its `[limits]`
    /// table, or of the `[tls]` and `[[apps]]` tables.
    fn file_key(id: &str, limits: &[String]) -> String {
        match id {
            "cert" | "key" => format!("[tls] {id}"),
            "sdk_app_id" | "secret_key" => format!("[[apps]] {id}"),
            _ if limits.iter().any(|limit| limit == id) => format!("[limits] {id}"),
            _ => id.to_owned(),
        }
    }

    fn table() -> String {
        let limits: Vec<String> = LimitSettings::augment_args(clap::Command::new("limits"))
            .get_arguments()
            .map(|arg| arg.get_id().to_string())
            .collect();
        let mut rows = vec![
            "| flag | environment | file key | meaning |".to_owned(),
            "| --- | --- | --- | --- |".to_owned(),
        ];
        for arg in SettingsOnly::command().get_arguments() {
            let Some(long) = arg.get_long() else {
                continue;
            };
            let env = arg
                .get_env()
                .map(|env| env.to_string_lossy().into_owned())
                .unwrap_or_default();
            let help = arg.get_help().map(ToString::to_string).unwrap_or_default();
            rows.push(format!(
                "| `--{long}` | `{env}` | `{}` | {help} |",
                file_key(arg.get_id().as_str(), &limits)
            ));
        }
        rows.join("\n")
    }

    #[test]
    fn the_configuration_reference_matches_the_code() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/operations.md");
        let text = fs::read_to_string(&path).unwrap_or_default();
        let documented = text
            .split_once("<!-- settings: begin -->\n")
            .and_then(|(_, rest)| rest.split_once("\n<!-- settings: end -->"))
            .map(|(table, _)| table.trim());
        let table = table();
        assert_eq!(
            documented,
            Some(table.as_str()),
            "docs/operations.md's settings table differs from the code; it should read:\n\n{table}\n"
        );
    }
}
