//! A development-mode server on loopback with a private data directory,
//! for the tests, the demo and the benchmarks.

use std::path::PathBuf;

use std::time::{SystemTime, UNIX_EPOCH};

use calling_server::config::ServerConfig;
use calling_server::{AppCredentials, RunningServer, usersig};

/// A development server on 127.0.0.1 (any port) with a fresh data
/// directory named after `tag`; remove the directory when done.
///
/// # Panics
/// If the server cannot start: a test tool.
pub async fn development_server(tag: &str) -> (RunningServer, PathBuf) {
    let data_dir = std::env::temp_dir().join(format!("opencalling-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let listen = "127.0.0.1:0".parse().expect("a loopback address");
    let server = calling_server::start(ServerConfig::at(listen, data_dir.clone()))
        .await
        .expect("a development server starts");
    (server, data_dir)
}

/// A UserSig for `user` of `app`, issued now for an hour.
pub fn user_sig(app: &AppCredentials, user: &str) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs());
    usersig::generate(
        u64::from(app.sdk_app_id),
        app.secret_key.expose(),
        user,
        3_600,
        now,
        None,
    )
}
