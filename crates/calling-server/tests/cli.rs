//! The `calling-server` binary as a person or a script runs it: settings
//! from flags and the environment, checked at start-up; `usersig` only for
//! an app a server actually uses.

use std::path::PathBuf;
use std::process::{Command, Output};

fn server() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_calling-server"));
    // Nothing from the calling environment leaks into these runs.
    for (name, _) in std::env::vars() {
        if name.starts_with("OPENCALLING_") {
            command.env_remove(name);
        }
    }
    command
}

fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("opencalling-cli-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn out_of_range_settings_are_refused_from_flags_and_environment() {
    let output = server().args(["--invite-timeout", "0"]).output().unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("invite_timeout_secs: 0 is outside 1..=3600"),
        "{}",
        stderr(&output)
    );
    let output = server()
        .env("OPENCALLING_MAX_INVITE_TIMEOUT_SECS", "9223372036854775807")
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("max_invite_timeout_secs: 9223372036854775807 is outside"),
        "{}",
        stderr(&output)
    );
    let dir = temp_dir("file-range");
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("server.toml");
    std::fs::write(&file, "[limits]\nhandshake_timeout_secs = 0\n").unwrap();
    let output = server().arg("--config").arg(&file).output().unwrap();
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("handshake_timeout_secs: 0 is outside 1..=60"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn help_lists_every_setting_with_its_variable() {
    let output = server().arg("help").output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--listen",
        "OPENCALLING_LISTEN",
        "--invite-timeout",
        "OPENCALLING_INVITE_TIMEOUT_SECS",
        "--max-connections-per-ip",
        "--config",
        "usersig",
    ] {
        assert!(help.contains(needle), "help lacks {needle}:\n{help}");
    }
}

/// `usersig --help` lists what finds an app, not the server's forty
/// settings.
#[test]
fn usersig_help_lists_only_its_own_flags() {
    let output = server().args(["usersig", "--help"]).output().unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for needle in [
        "--user",
        "--expire",
        "--app",
        "--config",
        "--data-dir",
        "--secret-key",
    ] {
        assert!(
            help.contains(needle),
            "usersig help lacks {needle}:\n{help}"
        );
    }
    for stranger in ["--listen", "--invite-timeout", "--redis", "--admin-token"] {
        assert!(
            !help.contains(stranger),
            "usersig help lists {stranger}:\n{help}"
        );
    }
}

#[test]
fn usersig_signs_only_for_a_development_app_a_server_made() {
    let dir = temp_dir("usersig");
    let output = server()
        .args(["usersig", "--user", "alice", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(!output.status.success(), "minted for an app nobody serves");
    assert!(
        stderr(&output).contains("no development app in"),
        "{}",
        stderr(&output)
    );
    assert!(!dir.exists(), "nothing was made there");

    let app = calling_server::config::development_app(&dir).unwrap();
    let output = server()
        .args(["usersig", "--user", "alice", "--data-dir"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    let sig = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    calling_server::usersig::verify(
        &sig,
        u64::from(app.sdk_app_id),
        app.secret_key.expose(),
        "alice",
        now,
    )
    .unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `probe` as a container health check would run it.
fn probe(url: &str) -> Output {
    server()
        .args(["probe", url])
        .output()
        .unwrap_or_else(|error| panic!("{error}"))
}

#[test]
fn probe_follows_health_and_a_drained_server_exits_by_itself() {
    use std::io::{Read, Write};
    use std::time::{Duration, Instant};
    let dir = temp_dir("drain");
    let http = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = server()
        .args(["--listen", "127.0.0.1:0", "--fallback-listen", "off"])
        .arg("--data-dir")
        .arg(&dir)
        .args(["--http-listen", &http.to_string(), "--admin-token", "t0ken"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log, read as it comes so that the pipe never fills.
    let mut log = child.stderr.take().unwrap();
    let log = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = log.read_to_string(&mut text);
        text
    });
    let healthz = format!("http://{http}/healthz");
    let started = Instant::now();
    while !probe(&healthz).status.success() {
        assert!(started.elapsed() < Duration::from_secs(20), "never healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(probe(&format!("http://{http}/readyz")).status.success());
    let missing = probe(&format!("http://{http}/nothing"));
    assert!(!missing.status.success());
    assert!(
        stderr(&missing).contains("answered 404"),
        "{}",
        stderr(&missing)
    );

    let mut admin = std::net::TcpStream::connect(http).unwrap();
    write!(
        admin,
        "POST /admin/drain HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t0ken\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut answer = String::new();
    admin.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 202"), "{answer}");
    // No call runs: the drain is over at once, and the process exits 0.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still running");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        !probe(&healthz).status.success(),
        "nothing answers any more"
    );
    // Logged to a pipe, as to a file or journald: no colour codes.
    let log = log.join().unwrap();
    assert!(log.contains("INFO"), "{log}");
    assert!(!log.contains('\u{1b}'), "ANSI escapes in a log: {log:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
