//! The `calling-server` binary: runs the server, or issues a development
//! UserSig. `calling-server help` lists the commands and every setting
//! (`calling_server::Settings`, with its flag, variable and default).

// The terminal is this binary's user interface; logs go through tracing.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use calling_server::Settings;
use calling_server::config::{ServerConfig, existing_development_app};
use calling_server::usersig;
use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// OpenCalling's server: UserSig auth, presence, call routing and audio relay.
///
/// Settings come from flags, then the environment, then a TOML file
/// (--config), then defaults. With no app configured the server runs in
/// development mode and prints its app and key. Logging: RUST_LOG (default
/// info).
#[derive(Debug, Parser)]
#[command(
    name = "calling-server",
    version,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: Configured,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server (the default); Ctrl-C or SIGTERM stops it gracefully, SIGHUP
    /// reopens the call records file, and it exits by itself once a drain
    /// (admin API) is over.
    Serve(Box<Configured>),
    /// Print a UserSig for a user, signed with an app's key (by default the
    /// first configured app, or the development app).
    Usersig {
        /// The user the UserSig is for.
        #[arg(long = "user", value_name = "ID")]
        user: String,
        /// Its lifetime in seconds.
        #[arg(long, value_name = "SECS", default_value_t = 180 * 86_400)]
        expire: u64,
        /// The sdkAppId of a configured app.
        #[arg(long = "app", value_name = "ID")]
        app: Option<u32>,
        #[command(flatten)]
        apps: AppSource,
    },
    /// Exit 0 when a running server's HTTP listener answers 200 at URL
    /// (a container's health check); 1 otherwise, saying why.
    Probe {
        /// The URL to GET (http only).
        #[arg(default_value = "http://127.0.0.1:9090/healthz")]
        url: String,
    },
}

/// Where `usersig` finds the apps: the settings that name them, and no
/// other (its help lists only these).
#[derive(Debug, Clone, clap::Args)]
struct AppSource {
    /// TOML configuration file (its apps and data directory)
    #[arg(long = "config", env = "OPENCALLING_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    /// Where the development app is kept [default: ./opencalling-data]
    #[arg(long, env = "OPENCALLING_DATA_DIR", value_name = "DIR")]
    data_dir: Option<std::path::PathBuf>,
    /// An app's sdkAppId (with --secret-key)
    #[arg(
        long,
        env = "OPENCALLING_SDK_APP_ID",
        value_name = "ID",
        requires = "secret_key"
    )]
    sdk_app_id: Option<u32>,
    /// That app's secret key
    #[arg(
        long,
        env = "OPENCALLING_SECRET_KEY",
        value_name = "KEY",
        hide_env_values = true,
        requires = "sdk_app_id"
    )]
    secret_key: Option<String>,
}

impl From<AppSource> for Configured {
    fn from(source: AppSource) -> Self {
        let settings = Settings {
            data_dir: source.data_dir,
            sdk_app_id: source.sdk_app_id,
            secret_key: source.secret_key,
            ..Settings::default()
        };
        Self {
            config: source.config,
            settings,
        }
    }
}

/// The settings, and the file they may come from.
#[derive(Debug, Clone, clap::Args)]
struct Configured {
    /// TOML configuration file
    #[arg(long = "config", env = "OPENCALLING_CONFIG", value_name = "FILE")]
    config: Option<std::path::PathBuf>,
    #[command(flatten)]
    settings: Settings,
}

impl Configured {
    /// Flags and environment over the file, resolved and checked.
    fn resolve(self) -> Result<ServerConfig, String> {
        let file = match &self.config {
            Some(path) => Settings::from_file(path).map_err(|error| error.to_string())?,
            None => Settings::default(),
        };
        self.settings
            .over(file)
            .resolve()
            .map_err(|error| error.to_string())
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(configured)) => serve(*configured),
        Some(Command::Usersig {
            user,
            expire,
            app,
            apps,
        }) => issue_usersig(&user, expire, app, apps.into()),
        Some(Command::Probe { url }) => probe(&url),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("calling-server: {message}");
            ExitCode::FAILURE
        }
    }
}

fn serve(configured: Configured) -> Result<(), String> {
    let config = configured.resolve()?;
    let config_data_dir = config.data_dir.clone();
    let in_cluster = config.cluster.is_some();
    tracing_subscriber::fmt()
        // Colours only for a person at a terminal, never in files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // Logs to stderr; stdout carries the banner (address, fingerprint).
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Runtime::new()
        .map_err(|error| format!("cannot start the runtime: {error}"))?;
    runtime.block_on(async {
        let server = calling_server::start(config)
            .await
            .map_err(|error| error.to_string())?;
        println!("OpenCalling server listening on {}", server.local_addr());
        println!("certificate fingerprint (sha256): {}", server.fingerprint());
        if let Some(app) = server.development_app() {
            // Printed on purpose, to the terminal and never to the log: a
            // development server is useless to a new user without it.
            println!("DEVELOPMENT MODE — do not expose this server");
            println!("  sdkAppId:   {}", app.sdk_app_id);
            println!("  secret key: {}", app.secret_key.expose());
            println!("  issue a UserSig with: calling-server usersig --user alice");
            println!(
                "  (for scripts: {} holds the address, fingerprint and app as JSON)",
                config_data_dir
                    .join(calling_server::config::BANNER_FILE)
                    .display()
            );
        }
        if let Some(http) = server.http_addr() {
            println!("operations (metrics, health, admin) on http://{http}");
        }
        let mut server = server;
        let drained = server.drained();
        let reopener = server.call_records_reopener();
        let reopen = reopen_records_on_hangup(reopener);
        tokio::pin!(drained, reopen);
        let mut outcome = tokio::select! {
            () = wait_for_stop_signal() => Stop::Signal,
            () = &mut reopen => Stop::Signal,
            () = &mut drained => Stop::Drained,
            why = server.failure() => Stop::Failed(why),
        };
        if in_cluster && outcome == Stop::Signal {
            // A node of a cluster drains first: its idle users move to the
            // other nodes, its calls finish (up to the drain limit). A
            // second signal stops it at once.
            println!(
                "draining: idle users move to other nodes, calls finish (signal again to stop now)"
            );
            server.drain().await;
            outcome = tokio::select! {
                () = wait_for_stop_signal() => Stop::Signal,
                () = &mut drained => Stop::Drained,
                why = server.failure() => Stop::Failed(why),
            };
        }
        let failure = match outcome {
            Stop::Signal => None,
            Stop::Drained => {
                println!("drained: stopping");
                None
            }
            Stop::Failed(why) => Some(why),
        };
        if let Some(why) = failure {
            // Serving nobody while looking alive helps nobody: exit, and
            // let the supervisor start a fresh process.
            tracing::error!(why, "a critical task died: exiting");
            server.shutdown().await;
            return Err(format!("a critical task died: {why}"));
        }
        println!("stopping: telling every client");
        server.shutdown().await;
        Ok(())
    })
}

/// Why the server stops.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    /// Ctrl-C or SIGTERM.
    Signal,
    /// A drain is over.
    Drained,
    /// A critical task died, saying why.
    Failed(String),
}

/// Reopens the call records file at each SIGHUP (log rotation); never
/// returns.
async fn reopen_records_on_hangup(reopener: Option<calling_server::CallRecordsReopener>) {
    #[cfg(unix)]
    if let Some(reopener) = reopener {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            while hangup.recv().await.is_some() {
                reopener.reopen();
            }
        }
    }
    #[cfg(not(unix))]
    let _ = reopener;
    std::future::pending().await
}

async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = terminate.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// One GET over HTTP/1.1 with a 5 s limit; `Ok` for a 200.
fn probe(url: &str) -> Result<(), String> {
    use std::io::{Read, Write};
    let uri: hyper::Uri = url.parse().map_err(|error| format!("{url}: {error}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!("{url}: only http:// is probed"));
    }
    let host = uri.host().ok_or_else(|| format!("{url}: no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let path = uri.path_and_query().map_or("/", |path| path.as_str());
    let limit = Duration::from_secs(5);
    let address = std::net::ToSocketAddrs::to_socket_addrs(&(host.trim_matches(['[', ']']), port))
        .map_err(|error| format!("{url}: {error}"))?
        .next()
        .ok_or_else(|| format!("{url}: no address"))?;
    let mut stream = std::net::TcpStream::connect_timeout(&address, limit)
        .map_err(|error| format!("{url}: {error}"))?;
    let _ = stream.set_read_timeout(Some(limit));
    let _ = stream.set_write_timeout(Some(limit));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|error| format!("{url}: {error}"))?;
    let mut head = [0_u8; 12];
    stream
        .read_exact(&mut head)
        .map_err(|error| format!("{url}: {error}"))?;
    match &head[9..12] {
        b"200" => Ok(()),
        status => Err(format!(
            "{url}: answered {}",
            String::from_utf8_lossy(status)
        )),
    }
}

fn issue_usersig(
    user: &str,
    expire: u64,
    app: Option<u32>,
    configured: Configured,
) -> Result<(), String> {
    let config = configured.resolve()?;
    calling_api::UserId::new(user).map_err(|error| error.to_string())?;
    let app = match app {
        Some(id) => config
            .apps
            .iter()
            .find(|app| app.sdk_app_id == id)
            .cloned()
            .ok_or_else(|| format!("app {id} is not configured"))?,
        None => match config.apps.first() {
            Some(app) => app.clone(),
            // A key made here would be one no server checks against.
            None => existing_development_app(&config.data_dir).ok_or_else(|| {
                format!(
                    "no development app in {}: start the server with this data directory \
                     first (or name the running server's with --data-dir); a UserSig for \
                     a new app would be refused by it",
                    config.data_dir.display()
                )
            })?,
        },
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs();
    let sig = usersig::generate(
        u64::from(app.sdk_app_id),
        app.secret_key.expose(),
        user,
        expire,
        now,
        None,
    );
    println!("{sig}");
    Ok(())
}
