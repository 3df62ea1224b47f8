//! The `calling-server` binary: runs the server, or issues a development
//! UserSig. `calling-server help` lists the commands and flags.

// The terminal is this binary's user interface; logs go through tracing.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use calling_server::config::{ServerConfig, development_app};
use calling_server::usersig;
use tracing_subscriber::EnvFilter;

const HELP: &str = "\
calling-server — OpenCalling's server

usage:
  calling-server [serve] [flags]         run the server (Ctrl-C or SIGTERM stops it gracefully)
  calling-server usersig --user ID [--expire SECS] [--app ID] [flags]
                                         print a UserSig for ID, signed with the app's key
                                         (default: the development app)
  calling-server help

flags (each overrides the environment, which overrides the file):
  --config FILE               TOML configuration (env OPENCALLING_CONFIG)
  --listen ADDR               UDP address, default 0.0.0.0:4433 (env OPENCALLING_LISTEN)
  --data-dir DIR              default ./opencalling-data (env OPENCALLING_DATA_DIR)
  --invite-timeout SECS       default 30 (env OPENCALLING_INVITE_TIMEOUT_SECS)
  --max-connections N         default 20000
  --max-connections-per-ip N  default 64
  --cert PEM --key PEM        certificate chain and key; default: a self-signed
                              certificate made once in the data directory
  apps: [[apps]] sdk_app_id/secret_key in the file, or OPENCALLING_SDK_APP_ID and
  OPENCALLING_SECRET_KEY; with none, a development app is made once and printed.

logging: RUST_LOG (default info)
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.first().map(String::as_str) {
        Some("serve") => ("serve", &args[1..]),
        Some("usersig") => ("usersig", &args[1..]),
        Some("help" | "--help" | "-h") => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        _ => ("serve", &args[..]),
    };
    let outcome = match command {
        "usersig" => issue_usersig(rest),
        _ => serve(rest),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("calling-server: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Splits `--flag value` pairs, taking out the command's own flags.
fn flag_pairs(args: &[String]) -> Result<Vec<(String, String)>, String> {
    let mut pairs = Vec::new();
    let mut iter = args.iter();
    while let Some(flag) = iter.next() {
        if !flag.starts_with("--") {
            return Err(format!(
                "unexpected argument {flag:?}; see `calling-server help`"
            ));
        }
        let value = iter.next().ok_or_else(|| format!("{flag} needs a value"))?;
        pairs.push((flag.clone(), value.clone()));
    }
    Ok(pairs)
}

/// Builds the configuration from file, environment and `flags`; returns the
/// flags the server configuration does not know, for the command to use.
fn configure(
    flags: Vec<(String, String)>,
    own: &[&str],
) -> Result<(ServerConfig, Vec<(String, String)>), String> {
    let mut config = ServerConfig::default();
    let file = flags
        .iter()
        .find(|(flag, _)| flag == "--config")
        .map(|(_, value)| value.clone())
        .or_else(|| std::env::var("OPENCALLING_CONFIG").ok());
    if let Some(file) = file {
        config
            .apply_file(file.as_ref())
            .map_err(|error| error.to_string())?;
    }
    config
        .apply_env(|name| std::env::var(name).ok())
        .map_err(|error| error.to_string())?;
    let mut unused = Vec::new();
    for (flag, value) in flags {
        if flag == "--config" {
            continue;
        }
        if own.contains(&flag.as_str()) {
            unused.push((flag, value));
        } else {
            config
                .apply_flag(&flag, &value)
                .map_err(|error| error.to_string())?;
        }
    }
    config.validate().map_err(|error| error.to_string())?;
    Ok((config, unused))
}

fn serve(args: &[String]) -> Result<(), String> {
    let (config, _) = configure(flag_pairs(args)?, &[])?;
    tracing_subscriber::fmt()
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
        }
        wait_for_stop_signal().await;
        println!("stopping: telling every client");
        server.shutdown().await;
        Ok(())
    })
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

fn issue_usersig(args: &[String]) -> Result<(), String> {
    let (config, own) = configure(flag_pairs(args)?, &["--user", "--expire", "--app"])?;
    let value = |name: &str| {
        own.iter()
            .find(|(flag, _)| flag == name)
            .map(|(_, value)| value.as_str())
    };
    let user = value("--user").ok_or("usersig needs --user ID")?;
    calling_api::UserId::new(user).map_err(|error| error.to_string())?;
    let expire: u64 = value("--expire")
        .map_or(Ok(180 * 86_400), str::parse)
        .map_err(|_| "--expire takes seconds")?;
    let app = match value("--app") {
        Some(id) => {
            let id: u32 = id.parse().map_err(|_| "--app takes an sdkAppId")?;
            config
                .apps
                .iter()
                .find(|app| app.sdk_app_id == id)
                .cloned()
                .ok_or_else(|| format!("app {id} is not configured"))?
        }
        None => match config.apps.first() {
            Some(app) => app.clone(),
            None => development_app(&config.data_dir)
                .map_err(|error| format!("data directory: {error}"))?,
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
