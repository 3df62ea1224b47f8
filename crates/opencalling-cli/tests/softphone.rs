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
    let binary = env!("CARGO_BIN_EXE_opencalling");
    for (user, tone) in [("alice", "440"), ("bob", "660")] {
        let heard = data_dir.join(format!("{user}-hears.wav"));
        let command = format!(
            "{binary} --dev {} --user {user} --tone {tone} --output {}",
            data_dir.display(),
            heard.display()
        );
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
    }
    tokio::task::spawn_blocking(move || {
        for user in ["alice", "bob"] {
            tmux.until(user, "login", |screen| {
                screen.contains(&format!("{user} @")) && screen.contains("connected")
            });
        }
        tmux.keys("alice", &["c"]);
        tmux.keys("alice", &["-l", "bob"]);
        tmux.keys("alice", &["Enter"]);
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
