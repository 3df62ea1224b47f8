//! Headless Chromium (Debian's, installed by `cargo xtask ci`) driven over
//! the DevTools protocol: a page is opened, expressions are evaluated in it
//! (promises awaited, values returned as JSON). Enough of a driver for the
//! browser tests and the web benchmark, with no driver to install: the
//! protocol is JSON over the WebSocket Chromium opens on a loopback port.
//! A test tool: anything unexpected panics, with what happened.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// Debian's Chromium binary (the `/usr/bin/chromium` wrapper script is not
/// needed, and prints errors in some shells).
pub const CHROMIUM: &str = "/usr/lib/chromium/chromium";

/// How long Chromium may take to start and open its DevTools port on a
/// busy machine.
const START_WAIT: Duration = Duration::from_secs(30);

/// The longest an expression may take (a login that never answers is a
/// failure, not a hang).
const EVAL_WAIT: Duration = Duration::from_secs(60);

/// Headless Chromium, killed when dropped; its log (the page's console
/// included) in the profile's folder.
#[derive(Debug)]
pub struct Chromium {
    child: std::process::Child,
    profile: PathBuf,
    log: PathBuf,
}

impl Chromium {
    /// Starts Chromium showing `page`, with `extra` flags, its profile in
    /// `profile` (made afresh).
    ///
    /// # Panics
    /// If the profile cannot be made or Chromium cannot start.
    pub fn open(page: &str, profile: &Path, extra: &[String]) -> Self {
        let log = profile.join("chromium.log");
        let _ = std::fs::remove_dir_all(profile);
        std::fs::create_dir_all(profile).expect("a profile folder for Chromium");
        let child = std::process::Command::new(CHROMIUM)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--enable-logging=stderr",
                "--remote-debugging-port=0",
                "--autoplay-policy=no-user-gesture-required",
            ])
            .args(extra)
            .arg(format!("--user-data-dir={}", profile.display()))
            .arg(page)
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).expect("Chromium's log file"))
            .spawn()
            .unwrap_or_else(|error| {
                panic!("{CHROMIUM} does not start ({error}); `cargo xtask ci` installs it")
            });
        Self {
            child,
            profile: profile.to_owned(),
            log,
        }
    }

    /// Flags for a fake microphone that says `wav` (looped) and is granted
    /// without asking.
    pub fn fake_microphone(wav: &Path) -> Vec<String> {
        vec![
            "--use-fake-ui-for-media-stream".to_owned(),
            "--use-fake-device-for-media-stream".to_owned(),
            format!("--use-file-for-fake-audio-capture={}", wav.display()),
        ]
    }

    /// The process Chromium started as (its others descend from it).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the page wrote to its console.
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|line| line.contains("CONSOLE"))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The DevTools connection to the page Chromium opened: the browser's
    /// endpoint (its port and path in `DevToolsActivePort`), attached to
    /// the page's target.
    ///
    /// # Panics
    /// If Chromium does not open its port in time or shows no page.
    pub async fn page(&self) -> Page {
        let port_file = self.profile.join("DevToolsActivePort");
        let (port, path) = tokio::time::timeout(START_WAIT, async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&port_file) {
                    let mut lines = text.lines();
                    if let (Some(Ok(port)), Some(path)) =
                        (lines.next().map(str::parse::<u16>), lines.next())
                    {
                        return (port, path.to_owned());
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await
        .expect("Chromium opens its DevTools port");
        let tcp = TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("Chromium's DevTools port answers");
        let url = format!("ws://127.0.0.1:{port}{path}");
        let (socket, _) = tokio_tungstenite::client_async(url, tcp)
            .await
            .expect("Chromium's DevTools WebSocket opens");
        let mut page = Page {
            socket,
            next_id: 1,
            session: None,
        };
        let targets = page.command("Target.getTargets", json!({})).await;
        let target = targets["targetInfos"]
            .as_array()
            .and_then(|targets| targets.iter().find(|target| target["type"] == "page"))
            .expect("Chromium shows a page")["targetId"]
            .clone();
        let attached = page
            .command(
                "Target.attachToTarget",
                json!({ "targetId": target, "flatten": true }),
            )
            .await;
        page.session = attached["sessionId"].as_str().map(str::to_owned);
        assert!(
            page.session.is_some(),
            "attached without a session: {attached}"
        );
        page
    }
}

impl Drop for Chromium {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A page under DevTools control.
#[derive(Debug)]
pub struct Page {
    socket: tokio_tungstenite::WebSocketStream<TcpStream>,
    next_id: u64,
    /// The page's session on the browser's endpoint, once attached.
    session: Option<String>,
}

impl Page {
    /// Sends one DevTools command; its result (events in between are
    /// skipped).
    ///
    /// # Panics
    /// If the connection fails or the command is refused.
    pub async fn command(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = &self.session {
            message["sessionId"] = json!(session);
        }
        self.socket
            .send(Message::text(message.to_string()))
            .await
            .expect("a DevTools command goes out");
        loop {
            let text = match self.socket.next().await {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(_)) => continue,
                other => panic!("{method}: the DevTools connection ended: {other:?}"),
            };
            let reply: Value = serde_json::from_str(&text).expect("DevTools speaks JSON");
            if reply["id"] == id {
                assert!(reply["error"].is_null(), "{method}: {reply}");
                return reply["result"].clone();
            }
        }
    }

    /// Evaluates `expression` in the page (a promise is awaited); its
    /// value as JSON.
    ///
    /// # Panics
    /// If it throws, or takes longer than a minute.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let evaluate = self.command(
            "Runtime.evaluate",
            json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
        );
        let result = tokio::time::timeout(EVAL_WAIT, evaluate)
            .await
            .unwrap_or_else(|_| panic!("{expression}: no answer within {EVAL_WAIT:?}"));
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {}",
            result["exceptionDetails"]
        );
        result["result"]["value"].clone()
    }

    /// Goes to `url` and waits until the page's title is `title`.
    ///
    /// # Panics
    /// If that takes longer than Chromium's start may.
    pub async fn open(&mut self, url: &str, title: &str) {
        self.command("Page.navigate", json!({ "url": url })).await;
        let wait = async {
            while self.eval("document.title").await != title {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(START_WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("{url} never said {title}"));
    }
}
