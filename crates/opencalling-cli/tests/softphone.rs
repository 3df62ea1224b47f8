//! The interactive softphone in a real terminal: tmux runs two of them
//! against a server in this process (`send-keys` types, `capture-pane`
//! reads the screen). One calls, the other sees the prompt and accepts,
//! both show the call with moving level bars (tone inputs), a mute shows on
//! the other screen, a hang-up returns both to idle.

#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

const WAIT: Duration = Duration::from_secs(20);

/// One tmux server of our own (its socket name), killed when dropped.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let output = Command::new("tmux")
            .arg("-L")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("tmux is installed (cargo xtask ci installs it)");
        assert!(
            output.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    fn screen(&self, pane: &str) -> String {
        self.run(&["capture-pane", "-p", "-t", pane])
    }

    fn keys(&self, pane: &str, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", pane];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until `pane`'s screen satisfies `want`; returns the screen.
    fn until(&self, pane: &str, what: &str, want: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let screen = self.screen(pane);
            if want(&screen) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{pane}: no {what} within {WAIT:?}; the screen:\n{screen}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// The level shown on `user`'s line of a screen.
fn level_of(screen: &str, user: &str) -> Option<u8> {
    let line = screen
        .lines()
        .find(|line| line.trim_start_matches('│').trim_start().starts_with(user))?;
    let after_bar = line.split(']').nth(1)?;
    after_bar.split_whitespace().next()?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_softphones_call_each_other_in_real_terminals() {
    let (server, data_dir) = opencalling_tests::server::development_server("softphone").await;
    let tmux = Tmux {
        socket: format!("opencalling-test-{}", std::process::id()),
    };
    let dir = data_dir.clone();
    tokio::task::spawn_blocking(move || {
        for (user, tone) in [("alice", "440"), ("bob", "660")] {
            let heard = dir.join(format!("{user}-hears.wav"));
            let args = format!("--tone {tone} --output {}", heard.display());
            start_phone(&tmux, &dir, user, &args);
        }
        dial(&tmux, "alice", "bob");
        tmux.until("bob", "incoming call", |screen| {
            screen.contains("incoming call from alice")
        });
        tmux.keys("bob", &["a"]);
        for (user, other) in [("alice", "bob"), ("bob", "alice")] {
            tmux.until(user, "the call", |screen| screen.contains("in a call"));
            // The other's bar moves: its tone is heard.
            tmux.until(user, "a moving level bar", |screen| {
                level_of(screen, other).is_some_and(|level| level > 0)
            });
            // Loopback is an excellent or good network (a busy machine
            // adds jitter): four or five bars for the other.
            tmux.until(user, "network quality bars", |screen| {
                screen
                    .lines()
                    .any(|line| line.contains(other) && line.contains("net ▮▮▮▮"))
            });
        }
        tmux.keys("bob", &["m"]);
        tmux.until("alice", "bob muted", |screen| {
            screen
                .lines()
                .any(|line| line.contains("bob") && line.contains("muted"))
        });
        tmux.until("bob", "own mute", |screen| screen.contains("MUTED"));
        tmux.keys("alice", &["h"]);
        for user in ["alice", "bob"] {
            tmux.until(user, "idle", |screen| screen.contains("idle"));
        }
        tmux.keys("alice", &["q"]);
        tmux.keys("bob", &["q"]);
    })
    .await
    .unwrap();
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}

/// Starts a softphone for `user` of the development server in `data_dir`
/// in its own tmux session, with `args` (audio, another address), and
/// waits for its login.
fn start_phone(tmux: &Tmux, data_dir: &std::path::Path, user: &str, args: &str) {
    let binary = env!("CARGO_BIN_EXE_opencalling");
    let command = format!("{binary} --dev {} --user {user} {args}", data_dir.display());
    tmux.run(&[
        "new-session",
        "-d",
        "-s",
        user,
        "-x",
        "110",
        "-y",
        "30",
        &command,
    ]);
    tmux.until(user, "login", |screen| {
        screen.contains(&format!("{user} @")) && screen.contains("connected")
    });
}

/// The status line: the screen's second line.
fn call_line(screen: &str) -> &str {
    screen.lines().nth(1).unwrap_or_default()
}

fn dial(tmux: &Tmux, from: &str, to: &str) {
    tmux.keys(from, &["c"]);
    tmux.keys(from, &["-l", to]);
    tmux.keys(from, &["Enter"]);
}

/// What once left a screen stale, each seen on the screen: a rejected or
/// hung-up invitation leaves the invitee's prompt, a refused call leaves
/// "calling …", and a lost connection mid-call shows "reconnecting" and
/// lets `h` end the call at once (it used to wait for a timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_softphone_screen_follows_the_sdk_not_a_subset_of_events() {
    let (server, data_dir) = opencalling_tests::server::development_server("phone-stale").await;
    let proxy = opencalling_tests::proxy::FaultProxy::start(server.local_addr()).await;
    let tmux = Tmux {
        socket: format!("opencalling-stale-{}", std::process::id()),
    };
    let silent = "--tone 440 --output /dev/null";
    start_phone(&tmux, &data_dir, "bob", silent);
    // Alice reaches the server through a proxy that can go dark.
    let through_proxy = format!("{silent} --server {}", proxy.addr);
    start_phone(&tmux, &data_dir, "alice", &through_proxy);
    let tmux = std::sync::Arc::new(tmux);
    let phones = std::sync::Arc::clone(&tmux);
    tokio::task::spawn_blocking(move || {
        let tmux = phones;
        // Rejected, then hung up from the ringing side: both screens idle.
        for key in ["r", "h"] {
            dial(&tmux, "alice", "bob");
            tmux.until("bob", "incoming call", |screen| {
                screen.contains("incoming call from alice")
            });
            tmux.keys("bob", &[key]);
            for user in ["bob", "alice"] {
                tmux.until(user, "idle after the refusal", |screen| {
                    call_line(screen).contains("idle") && !screen.contains("incoming call")
                });
            }
        }
        // Calling yourself, or a user id that cannot be: refused, and the
        // status line does not stay on "calling".
        for nobody in ["alice", "b@d"] {
            dial(&tmux, "alice", nobody);
            tmux.until("alice", "the refusal", |screen| {
                screen.contains(&format!("call {nobody}:"))
            });
            let screen = tmux.until("alice", "idle", |screen| call_line(screen).contains("idle"));
            assert!(!call_line(&screen).contains("calling"), "{screen}");
        }
        // In a call when alice's network goes dark.
        dial(&tmux, "alice", "bob");
        tmux.until("bob", "incoming call", |screen| {
            screen.contains("incoming call from alice")
        });
        tmux.keys("bob", &["a"]);
        tmux.until("alice", "the call", |screen| {
            call_line(screen).contains("in a call")
        });
    })
    .await
    .unwrap();
    proxy.blackhole(true);
    let phones = std::sync::Arc::clone(&tmux);
    tokio::task::spawn_blocking(move || {
        let tmux = phones;
        tmux.until("alice", "reconnecting", |screen| {
            screen.contains("RECONNECTING") && call_line(screen).contains("reconnecting")
        });
        let pressed = Instant::now();
        tmux.keys("alice", &["h"]);
        tmux.until("alice", "idle at once", |screen| {
            call_line(screen).contains("idle")
        });
        assert!(
            pressed.elapsed() < Duration::from_secs(3),
            "the hang-up waited {:?} for a server it cannot reach",
            pressed.elapsed()
        );
    })
    .await
    .unwrap();
    proxy.blackhole(false);
    let phones = std::sync::Arc::clone(&tmux);
    tokio::task::spawn_blocking(move || {
        let tmux = phones;
        tmux.until("alice", "connected again", |screen| {
            !screen.contains("RECONNECTING") && screen.contains("connected")
        });
        // Bob heard alice leave once her hang-up reached the server.
        tmux.until("bob", "idle", |screen| call_line(screen).contains("idle"));
        tmux.keys("alice", &["q"]);
        tmux.keys("bob", &["q"]);
    })
    .await
    .unwrap();
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}
