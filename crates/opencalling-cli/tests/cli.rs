//! The `opencalling` binary as a script runs it, against a real server in
//! this process: `answer` and `call` with WAV files (the recordings judged
//! against what was said, as the audio tests do), the JSON event lines,
//! the exit codes, and bad input as a one-line error.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use calling_facade::dev::DevServer;
use calling_facade::{
    AudioDevices, CallType, CallingEvent, CaptureDevice, PlaybackDevice, TRTCCalling,
};
use opencalling_tests::speech::{fixture, match_speech};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(20);

fn temp_path(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("opencalling-cli-{tag}-{}", std::process::id()))
}

async fn server(tag: &str) -> (calling_server::RunningServer, PathBuf) {
    opencalling_tests::server::development_server(&format!("cli-{tag}")).await
}

fn opencalling(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_opencalling"));
    // Nothing from the calling environment leaks into these runs.
    for (name, _) in std::env::vars() {
        if name.starts_with("OPENCALLING_") {
            command.env_remove(name);
        }
    }
    command
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Waits for `events` to ring.
async fn next_invitation(events: &mut calling_facade::EventStream) {
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(CallingEvent::Invited { .. }) => return,
            Some(_) => {}
            None => panic!("the events ended"),
        }
    }
}

/// The child's stdout lines, each a JSON object, read until one matches.
struct JsonLines {
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
    seen: Vec<serde_json::Value>,
}

impl JsonLines {
    fn of(child: &mut Child) -> Self {
        Self {
            lines: BufReader::new(child.stdout.take().unwrap()).lines(),
            seen: Vec::new(),
        }
    }

    async fn until(&mut self, want: impl Fn(&serde_json::Value) -> bool) {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let value: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|error| panic!("not JSON: {line:?}: {error}"));
                assert!(value.is_object(), "not an object: {line}");
                let done = want(&value);
                self.seen.push(value);
                if done {
                    return;
                }
            }
            panic!("stdout ended first: {:?}", self.seen);
        })
        .await
        .unwrap();
    }

    /// Every line until the child closes its stdout.
    async fn rest(&mut self) {
        tokio::time::timeout(WAIT, async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                let value: serde_json::Value = serde_json::from_str(&line)
                    .unwrap_or_else(|error| panic!("not JSON: {line:?}: {error}"));
                assert!(value.is_object(), "not an object: {line}");
                self.seen.push(value);
            }
        })
        .await
        .unwrap();
    }

    fn callbacks(&self) -> Vec<String> {
        self.seen
            .iter()
            .filter_map(|value| value["callback"].as_str().map(str::to_owned))
            .collect()
    }
}

/// An SDK user of the development server in `data_dir` saying `says` and
/// recording into `hears`, logged in.
async fn sdk_user(data_dir: &Path, name: &str, says: &Path, hears: &Path) -> Arc<TRTCCalling> {
    let dev = DevServer::from_data_dir(data_dir).unwrap();
    let mut options = dev.options();
    options.audio = AudioDevices {
        capture: CaptureDevice::Wav {
            path: says.to_owned(),
            looping: false,
        },
        playback: PlaybackDevice::Wav {
            path: hears.to_owned(),
        },
    };
    let calling = TRTCCalling::new(options);
    calling
        .login(dev.sdk_app_id, name, &dev.user_sig(name).unwrap())
        .await
        .unwrap();
    calling
}

async fn exit_code(child: Child) -> (i32, String) {
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output.status.code().unwrap_or(-1), stderr)
}

fn assert_heard(said: &Path, heard: &Path, who: &str) {
    let (correlation, delay_ms) = match_speech(said, heard);
    assert!(
        correlation > 0.8,
        "{who}: correlation {correlation:.2} at {delay_ms:.0} ms"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_plays_a_file_records_the_caller_and_hangs_up() {
    let (server, data_dir) = server("answer").await;
    let (bot_hears, alice_hears) = (temp_path("bot-hears.wav"), temp_path("alice-hears.wav"));
    let (bot_says, alice_says) = (fixture("speech-a-16k.wav"), fixture("speech-b-16k.wav"));
    let mut bot = opencalling(&[
        "--dev",
        data_dir.to_str().unwrap(),
        "--user",
        "bot",
        "--input",
        bot_says.to_str().unwrap(),
        "--output",
        bot_hears.to_str().unwrap(),
        "--json",
        "--stats",
        "answer",
        "--hang-up-after",
        "4",
    ])
    .spawn()
    .unwrap();
    let mut lines = JsonLines::of(&mut bot);
    lines
        .until(|line| line["status"] == "waiting for calls")
        .await;

    let alice = sdk_user(&data_dir, "alice", &alice_says, &alice_hears).await;
    let mut events = alice.events();
    alice.call("bot", CallType::Audio).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(CallingEvent::CallEnd) => break,
            Some(_) => {}
            None => panic!("alice's events ended"),
        }
    }
    lines.rest().await;
    let (code, stderr) = exit_code(bot).await;
    assert_eq!(code, 0, "hung up: {stderr}");
    let callbacks = lines.callbacks();
    for expected in ["onInvited", "onUserEnter", "onUserVoiceVolume", "onCallEnd"] {
        assert!(
            callbacks.iter().any(|name| name == expected),
            "{expected} missing: {callbacks:?}"
        );
    }
    let ended = lines
        .seen
        .iter()
        .find(|line| line["event"]["CallEnded"].is_object())
        .expect("the call's end and reason");
    assert_eq!(ended["event"]["CallEnded"]["reason"], "Hangup");
    // --stats: a line a second in the call, alice among the members.
    let stats: Vec<_> = lines
        .seen
        .iter()
        .filter(|line| line["stats"].is_object())
        .collect();
    assert!(stats.len() >= 2, "{} stats lines", stats.len());
    let last = stats[stats.len() - 1];
    assert_eq!(last["stats"]["remote"][0]["user_id"], "alice", "{last}");
    assert_eq!(last["stats"]["local"]["transport"], "quic", "{last}");
    alice.shutdown().await;
    assert_heard(&alice_says, &bot_hears, "the bot hears alice");
    assert_heard(&bot_says, &alice_hears, "alice hears the bot");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_plays_a_file_and_its_exit_code_says_how_the_call_ended() {
    let (server, data_dir) = server("call").await;
    let (bob_hears, caller_hears) = (temp_path("bob-hears.wav"), temp_path("caller-hears.wav"));
    let (caller_says, bob_says) = (fixture("speech-a-16k.wav"), fixture("speech-b-16k.wav"));
    let bob = sdk_user(&data_dir, "bob", &bob_says, &bob_hears).await;
    let mut bob_events = bob.events();
    let dir = data_dir.to_str().unwrap().to_owned();
    let call = |extra: &[&str]| {
        let mut args = vec![
            "--dev",
            &dir,
            "--user",
            "caller",
            "--input",
            caller_says.to_str().unwrap(),
            "--output",
            caller_hears.to_str().unwrap(),
            "--json",
            "call",
            "bob",
        ];
        args.extend_from_slice(extra);
        opencalling(&args).spawn().unwrap()
    };
    // Bob rejects: exit code 10. The account comes from a config file.
    let config = temp_path("caller.toml");
    std::fs::write(
        &config,
        format!(
            "dev = {:?}\nuser = \"caller\"\n",
            data_dir.display().to_string()
        ),
    )
    .unwrap();
    let mut caller = opencalling(&[
        "--config",
        config.to_str().unwrap(),
        "--input",
        caller_says.to_str().unwrap(),
        "--json",
        "call",
        "bob",
    ])
    .spawn()
    .unwrap();
    let mut lines = JsonLines::of(&mut caller);
    next_invitation(&mut bob_events).await;
    bob.reject().await.unwrap();
    lines.rest().await;
    let (code, stderr) = exit_code(caller).await;
    assert_eq!(code, 10, "rejected: {stderr}");
    assert!(lines.callbacks().contains(&"onReject".to_owned()));

    // Bob answers; the caller hangs up after 4 s: exit code 0.
    let mut caller = call(&["--hang-up-after", "4"]);
    let mut lines = JsonLines::of(&mut caller);
    next_invitation(&mut bob_events).await;
    bob.accept().await.unwrap();
    lines.rest().await;
    let (code, stderr) = exit_code(caller).await;
    assert_eq!(code, 0, "hung up: {stderr}");
    bob.shutdown().await;
    assert_heard(&caller_says, &bob_hears, "bob hears the caller");
    assert_heard(&bob_says, &caller_hears, "the caller hears bob");
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// The mistakes `bad_input_is_a_one_line_error` makes, each with what its
/// one line must say.
fn bad_input_cases<'a>(
    dir: &'a str,
    address: &'a str,
    fingerprint: &'a str,
    stranger: &'a str,
    bad_config: &'a str,
) -> [(&'static str, Vec<&'a str>, &'static str); 7] {
    [
        (
            "unreachable server",
            vec![
                "--server",
                "127.0.0.1:1",
                "--fingerprint",
                fingerprint,
                "--app",
                "1",
                "--usersig",
                "x",
                "--user",
                "a",
                "--connect-timeout",
                "1",
                "call",
                "b",
            ],
            "QUIC (UDP): no server answered",
        ),
        (
            "wrong fingerprint",
            vec![
                "--dev",
                dir,
                "--server",
                address,
                "--fingerprint",
                stranger,
                "--user",
                "a",
                "call",
                "b",
            ],
            "not the trusted one",
        ),
        (
            "no fingerprint",
            vec![
                "--server",
                address,
                "--app",
                "1",
                "--usersig",
                "x",
                "--user",
                "a",
                "call",
                "b",
            ],
            "not signed by an authority",
        ),
        (
            "bad UserSig",
            vec![
                "--dev",
                dir,
                "--user",
                "a",
                "--usersig",
                "garbage",
                "call",
                "b",
            ],
            "UserSig",
        ),
        (
            "unknown device",
            vec![
                "--dev",
                dir,
                "--user",
                "a",
                "--input-device",
                "no such microphone",
                "call",
                "b",
            ],
            "unknown audio device",
        ),
        (
            "no server",
            vec!["--user", "a", "call", "b"],
            "which server",
        ),
        (
            "a config file with a typo",
            vec!["--config", bad_config, "call", "b"],
            "unknown field",
        ),
    ]
}

/// Each mistake is one line on stderr and exit code 1, never a hang.
#[tokio::test]
async fn bad_input_is_a_one_line_error() {
    let (server, data_dir) = server("bad-input").await;
    let dir = data_dir.to_str().unwrap();
    let address = server.local_addr().to_string();
    let fingerprint = server.fingerprint().to_string();
    let stranger = "00".repeat(32);
    let bad_config = temp_path("bad.toml");
    std::fs::write(&bad_config, "usr = \"a\"\n").unwrap();
    let bad_config = bad_config.to_str().unwrap();
    let cases = bad_input_cases(dir, &address, &fingerprint, &stranger, bad_config);
    for (what, args, says) in cases {
        let (code, stderr) = exit_code(opencalling(&args).spawn().unwrap()).await;
        assert_eq!(code, 1, "{what}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{what}: {stderr}");
        assert!(stderr.contains(says), "{what}: {stderr}");
        match what {
            // Both transports are named, not just the fallback's refusal.
            "unreachable server" => assert!(stderr.contains("fallback (TCP)"), "{stderr}"),
            "wrong fingerprint" | "no fingerprint" => {
                assert!(stderr.contains("--fingerprint"), "{stderr}");
            }
            _ => {}
        }
        assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    }
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// A bot waiting for calls.
fn idle_bot(data_dir: &Path, user: &str) -> Child {
    opencalling(&[
        "--dev",
        data_dir.to_str().unwrap(),
        "--user",
        user,
        "--tone",
        "440",
        "--json",
        "answer",
    ])
    .spawn()
    .unwrap()
}

/// A supervisor can rely on the bots: one the operator logs out exits 15
/// at once (it used to wait forever), and one stopped with SIGTERM in a
/// call hangs up first (the peer hears a hang-up, not a lost connection
/// 20 s later). Call ids in the JSON lines are strings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bots_leave_when_logged_out_and_hang_up_when_stopped() {
    let (server, data_dir) = server("bots-leave").await;
    // Logged out by the operator while idle.
    let mut kicked = idle_bot(&data_dir, "kicked");
    let mut lines = JsonLines::of(&mut kicked);
    lines
        .until(|line| line["status"] == "waiting for calls")
        .await;
    let kick = calling_server::AdminRequest::Kick(calling_facade::UserId::new("kicked").unwrap());
    assert!(server.admin(kick).await.is_some());
    lines.rest().await;
    let (code, stderr) = exit_code(kicked).await;
    assert_eq!(code, 15, "logged out by the operator: {stderr}");
    assert!(
        lines
            .seen
            .iter()
            .any(|line| line["event"]["Error"]["code"] == 4013),
        "{:?}",
        lines.seen
    );

    // Stopped in a call.
    let mut bot = idle_bot(&data_dir, "bot");
    let mut lines = JsonLines::of(&mut bot);
    lines
        .until(|line| line["status"] == "waiting for calls")
        .await;
    let silence = temp_path("silence.wav");
    let alice = sdk_user(&data_dir, "alice", &fixture("speech-a-16k.wav"), &silence).await;
    let mut events = alice.events();
    alice.call("bot", CallType::Audio).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(CallingEvent::UserEnter { .. }) => break,
            Some(_) => {}
            None => panic!("alice's events ended"),
        }
    }
    lines.until(|line| line["callback"] == "onUserEnter").await;
    let pid = bot.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    let stopped = std::time::Instant::now();
    let reason = loop {
        match tokio::time::timeout(WAIT, events.recv()).await.unwrap() {
            Some(CallingEvent::CallEnded { reason, .. }) => break reason,
            Some(_) => {}
            None => panic!("alice's events ended"),
        }
    };
    assert_eq!(reason, calling_facade::EndReason::Hangup);
    assert!(
        stopped.elapsed() < Duration::from_secs(5),
        "hung up {:?} after SIGTERM",
        stopped.elapsed()
    );
    lines.rest().await;
    let (code, stderr) = exit_code(bot).await;
    assert_eq!(code, 0, "stopped cleanly: {stderr}");
    let ended = lines
        .seen
        .iter()
        .find(|line| line["event"]["CallEnded"].is_object())
        .expect("the call's end");
    assert!(
        ended["event"]["CallEnded"]["call_id"].is_string(),
        "a call id is a string: {ended}"
    );
    alice.shutdown().await;
    server.shutdown().await;
    let _ = std::fs::remove_file(&silence);
    let _ = std::fs::remove_dir_all(&data_dir);
}
