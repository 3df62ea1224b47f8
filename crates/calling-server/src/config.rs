//! The server's configuration: defaults, then an optional TOML file, then
//! environment variables, then command-line flags, each overriding the one
//! before. With nothing configured the server runs in development mode.

use std::fmt;
use std::fs;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Deserialize;
use signaling_quic::ServerLimits;

/// An app's secret key. Never printed by `Debug` or `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps a key.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    /// The key itself, for signing and verifying only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey(<redacted>)")
    }
}

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

/// Everything the server needs to run.
#[derive(Clone)]
pub struct ServerConfig {
    /// UDP address to listen on.
    pub listen: SocketAddr,
    /// Where the development certificate, app and reset key are kept.
    pub data_dir: PathBuf,
    /// The apps served; empty means development mode (one app, made once).
    pub apps: Vec<AppCredentials>,
    /// How long invitations ring unless a call says otherwise.
    pub invite_timeout: Duration,
    /// The longest a call may ask invitations to ring.
    pub max_invite_timeout: Duration,
    /// Connection limits.
    pub limits: ServerLimits,
    /// Certificate source.
    pub tls: TlsSource,
    /// Clock for UserSig expiry.
    pub clock: UnixClock,
    /// How long a graceful shutdown waits for clients to receive the notice.
    pub shutdown_grace: Duration,
}

impl fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("apps", &self.apps)
            .field("invite_timeout", &self.invite_timeout)
            .field("max_invite_timeout", &self.max_invite_timeout)
            .field("limits", &self.limits)
            .field("tls", &self.tls)
            .field("shutdown_grace", &self.shutdown_grace)
            .finish_non_exhaustive()
    }
}

/// The port the server listens on by default.
pub const DEFAULT_PORT: u16 = 4433;

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], DEFAULT_PORT)),
            data_dir: PathBuf::from("opencalling-data"),
            apps: Vec::new(),
            invite_timeout: Duration::from_secs(30),
            max_invite_timeout: Duration::from_secs(600),
            limits: ServerLimits::default(),
            tls: TlsSource::SelfSigned,
            clock: system_clock(),
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// A configuration that cannot be used, with what is wrong.
#[derive(Debug, thiserror::Error)]
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
    /// A flag or variable has a bad value or is unknown.
    #[error("{0}")]
    Invalid(String),
}

/// The optional TOML file, all fields optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    data_dir: Option<PathBuf>,
    invite_timeout_secs: Option<u64>,
    max_invite_timeout_secs: Option<u64>,
    tls: Option<FileTls>,
    limits: Option<FileLimits>,
    #[serde(default)]
    apps: Vec<FileApp>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    max_connections: Option<usize>,
    max_connections_per_ip: Option<usize>,
    validate_addresses_above: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileApp {
    sdk_app_id: u32,
    secret_key: String,
}

impl fmt::Debug for FileApp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileApp")
            .field("sdk_app_id", &self.sdk_app_id)
            .finish_non_exhaustive()
    }
}

fn parse_addr(what: &str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| {
        ConfigError::Invalid(format!(
            "{what}: {value:?} is not an address like 0.0.0.0:4433"
        ))
    })
}

fn parse_number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, ConfigError> {
    value
        .parse()
        .map_err(|_| ConfigError::Invalid(format!("{what}: {value:?} is not a number")))
}

impl ServerConfig {
    /// Applies a TOML file.
    pub fn apply_file(&mut self, path: &Path) -> Result<(), ConfigError> {
        let text = fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let file: FileConfig = toml::from_str(&text).map_err(|error| ConfigError::Parse {
            path: path.to_owned(),
            message: error.message().to_owned(),
        })?;
        if let Some(listen) = &file.listen {
            self.listen = parse_addr("listen", listen)?;
        }
        if let Some(dir) = file.data_dir {
            self.data_dir = dir;
        }
        if let Some(secs) = file.invite_timeout_secs {
            self.invite_timeout = Duration::from_secs(secs);
        }
        if let Some(secs) = file.max_invite_timeout_secs {
            self.max_invite_timeout = Duration::from_secs(secs);
        }
        if let Some(tls) = file.tls {
            self.tls = TlsSource::PemFiles {
                cert: tls.cert,
                key: tls.key,
            };
        }
        if let Some(limits) = file.limits {
            if let Some(value) = limits.max_connections {
                self.limits.max_connections = value;
            }
            if let Some(value) = limits.max_connections_per_ip {
                self.limits.max_connections_per_ip = value;
            }
            if let Some(value) = limits.validate_addresses_above {
                self.limits.validate_addresses_above = value;
            }
        }
        for app in file.apps {
            self.add_app(app.sdk_app_id, SecretKey::new(app.secret_key))?;
        }
        Ok(())
    }

    /// Applies the `OPENCALLING_*` environment variables found by `lookup`
    /// (`std::env::var` in the binary).
    pub fn apply_env(
        &mut self,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        if let Some(listen) = lookup("OPENCALLING_LISTEN") {
            self.listen = parse_addr("OPENCALLING_LISTEN", &listen)?;
        }
        if let Some(dir) = lookup("OPENCALLING_DATA_DIR") {
            self.data_dir = PathBuf::from(dir);
        }
        if let Some(secs) = lookup("OPENCALLING_INVITE_TIMEOUT_SECS") {
            self.invite_timeout =
                Duration::from_secs(parse_number("OPENCALLING_INVITE_TIMEOUT_SECS", &secs)?);
        }
        match (
            lookup("OPENCALLING_SDK_APP_ID"),
            lookup("OPENCALLING_SECRET_KEY"),
        ) {
            (Some(id), Some(key)) => self.add_app(
                parse_number("OPENCALLING_SDK_APP_ID", &id)?,
                SecretKey::new(key),
            )?,
            (None, None) => {}
            _ => {
                return Err(ConfigError::Invalid(
                    "OPENCALLING_SDK_APP_ID and OPENCALLING_SECRET_KEY go together".into(),
                ));
            }
        }
        Ok(())
    }

    /// Applies one `--flag value` pair of the `serve` command.
    pub fn apply_flag(&mut self, flag: &str, value: &str) -> Result<(), ConfigError> {
        match flag {
            "--listen" => self.listen = parse_addr(flag, value)?,
            "--data-dir" => self.data_dir = PathBuf::from(value),
            "--invite-timeout" => {
                self.invite_timeout = Duration::from_secs(parse_number(flag, value)?)
            }
            "--max-connections" => self.limits.max_connections = parse_number(flag, value)?,
            "--max-connections-per-ip" => {
                self.limits.max_connections_per_ip = parse_number(flag, value)?
            }
            "--cert" | "--key" => {
                let (mut cert, mut key) = match &self.tls {
                    TlsSource::PemFiles { cert, key } => (cert.clone(), key.clone()),
                    TlsSource::SelfSigned => (PathBuf::new(), PathBuf::new()),
                };
                if flag == "--cert" {
                    cert = PathBuf::from(value);
                } else {
                    key = PathBuf::from(value);
                }
                self.tls = TlsSource::PemFiles { cert, key };
            }
            other => return Err(ConfigError::Invalid(format!("unknown flag {other}"))),
        }
        Ok(())
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

    /// Checks what can only be checked once every source is in.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let TlsSource::PemFiles { cert, key } = &self.tls {
            if cert.as_os_str().is_empty() || key.as_os_str().is_empty() {
                return Err(ConfigError::Invalid("--cert and --key go together".into()));
            }
        }
        if self.invite_timeout.is_zero() {
            return Err(ConfigError::Invalid(
                "the invitation timeout must be positive".into(),
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

/// The sdkAppId of the development app.
pub const DEVELOPMENT_SDK_APP_ID: u32 = 1_400_000_000;

const DEV_APP_FILE: &str = "development-app.key";
const RESET_KEY_FILE: &str = "stateless-reset.key";

/// The development app kept in `data_dir`: its key is made once, at random,
/// and reused so that UserSigs issued for it stay valid across restarts.
pub fn development_app(data_dir: &Path) -> std::io::Result<AppCredentials> {
    let secret = load_or_create_secret(&data_dir.join(DEV_APP_FILE))?;
    Ok(AppCredentials {
        sdk_app_id: DEVELOPMENT_SDK_APP_ID,
        secret_key: SecretKey::new(hex(&secret)),
    })
}

/// The stateless-reset key seed kept in `data_dir`.
pub fn reset_key(data_dir: &Path) -> std::io::Result<[u8; 32]> {
    load_or_create_secret(&data_dir.join(RESET_KEY_FILE))
}

fn load_or_create_secret(path: &Path) -> std::io::Result<[u8; 32]> {
    if let Ok(bytes) = fs::read(path) {
        if let Ok(secret) = <[u8; 32]>::try_from(bytes.as_slice()) {
            return Ok(secret);
        }
    }
    let mut secret = [0; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
        .map_err(|_| std::io::Error::other("the system random generator failed"))?;
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir)?;
    }
    signaling_quic::write_private(path, &secret)?;
    Ok(secret)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let mut config = ServerConfig::default();
        config.apply_file(&file).unwrap();
        assert_eq!(config.listen, "127.0.0.1:5000".parse().unwrap());
        assert_eq!(config.invite_timeout, Duration::from_secs(20));
        assert_eq!(config.limits.max_connections, 100);
        config
            .apply_env(|name| match name {
                "OPENCALLING_INVITE_TIMEOUT_SECS" => Some("15".into()),
                "OPENCALLING_SDK_APP_ID" => Some("7".into()),
                "OPENCALLING_SECRET_KEY" => Some("env-key".into()),
                _ => None,
            })
            .unwrap();
        assert_eq!(config.invite_timeout, Duration::from_secs(15));
        assert_eq!(config.apps.len(), 1, "the same app is replaced, not added");
        assert_eq!(config.apps[0].secret_key.expose(), "env-key");
        config.apply_flag("--invite-timeout", "10").unwrap();
        config.apply_flag("--listen", "127.0.0.1:6000").unwrap();
        assert_eq!(config.invite_timeout, Duration::from_secs(10));
        assert_eq!(config.listen.port(), 6000);
        config.validate().unwrap();
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn bad_configuration_says_what_is_wrong() {
        let dir = temp_dir("bad");
        let file = dir.join("server.toml");
        fs::write(&file, "lisen = \"x\"").unwrap();
        let error = ServerConfig::default()
            .apply_file(&file)
            .unwrap_err()
            .to_string();
        assert!(error.contains("lisen"), "{error}");
        let mut config = ServerConfig::default();
        assert!(
            config
                .apply_flag("--listen", "nowhere")
                .unwrap_err()
                .to_string()
                .contains("nowhere")
        );
        assert!(config.apply_flag("--bogus", "1").is_err());
        assert!(
            config
                .apply_env(|name| (name == "OPENCALLING_SDK_APP_ID").then(|| "1".into()))
                .is_err()
        );
        config.apply_flag("--cert", "only-cert.pem").unwrap();
        assert!(config.validate().is_err(), "--cert without --key");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn secret_keys_never_print() {
        let mut config = ServerConfig::default();
        config
            .add_app(1, SecretKey::new("super-secret-value"))
            .unwrap();
        let printed = format!("{config:?}");
        assert!(!printed.contains("super-secret-value"), "{printed}");
    }

    #[test]
    fn development_secrets_are_made_once() {
        let dir = temp_dir("dev");
        let first = development_app(&dir).unwrap();
        let second = development_app(&dir).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.secret_key.expose().len(), 64);
        assert_eq!(reset_key(&dir).unwrap(), reset_key(&dir).unwrap());
        fs::remove_dir_all(&dir).unwrap();
    }
}
