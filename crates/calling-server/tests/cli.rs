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
