//! The TypeScript SDK (`web/opencalling-web`) in headless Chromium against
//! a real server: pages that log in, call and are called by native SDK
//! users and each other, over WebTransport and over the WebSocket
//! fallback, with a fake microphone saying a speech fixture. The page
//! (`tests/web/harness.html`) is driven over DevTools (`chromium.rs`); its
//! events are compared, in order and with their arguments, with what the
//! native SDK's scenario tests expect; what it plays is recorded inside it
//! and judged as the native audio tests judge a recording.

use std::path::Path;
use std::time::Duration;

use audio_device::{AudioFormat, AudioSink, WavSink};
use calling_facade::{CaptureDevice, PlaybackDevice};
use calling_api::EndReason;
use opencalling_tests::speech::{fixture, match_speech};
use opencalling_tests::web::{Site, StaticSite, sdk_build};
use serde_json::{Value, json};

use crate::audio::{ONE_AT_A_TIME, record_path, user_with_options};
use crate::chromium::{Chromium, Page};
use crate::support::*;

/// Browsers are heavy on two cores: one at a time.
static ONE_BROWSER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How a page reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Way {
    WebTransport,
    /// WebTransport left out: the WebSocket fallback.
    WebSocket,
}

/// The site the pages load: the SDK's build at `/sdk/`, the harness at `/`.
async fn site() -> StaticSite {
    Site::default()
        .folder("/sdk/", sdk_build())
        .folder("/", Path::new(env!("CARGO_MANIFEST_DIR")).join("web"))
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap()
}

/// A server, and the browser certificate hashes it publishes in
/// `server.json`.
async fn start_server(config: calling_server::config::ServerConfig) -> (TestServer, Vec<String>) {
    let data_dir = config.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let text = std::fs::read_to_string(data_dir.join("server.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let hashes = json["browser_certificate_hashes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|hash| hash.as_str().unwrap().to_owned())
        .collect();
    (server, hashes)
}

/// The SDK's `CallingOptions.server` for `server`, one way.
fn address(server: &TestServer, hashes: &[String], way: Way) -> Value {
    match way {
        Way::WebTransport => json!({
            "webTransportUrl": format!("https://127.0.0.1:{}/opencalling", server.server.local_addr().port()),
            "certificateHashes": hashes,
        }),
        Way::WebSocket => json!({
            "webSocketUrl": format!("wss://127.0.0.1:{}/opencalling", server.server.fallback_addr().unwrap().port()),
        }),
    }
}

/// A page in its own Chromium, its microphone saying `says`.
struct WebUser {
    name: String,
    page: Page,
    chromium: Chromium,
    /// Events taken from the page, `onUserVoiceVolume` aside.
    events: Vec<Value>,
    volumes: Vec<Value>,
}

impl WebUser {
    async fn open(site: &StaticSite, name: &str, says: &Path, extra: &[&str]) -> Self {
        let mut flags = Chromium::fake_microphone(says);
        flags.extend(extra.iter().map(|flag| (*flag).to_owned()));
        let chromium = Chromium::open(
            "about:blank",
            &temp_dir(&format!("chromium-{name}")),
            &flags,
        );
        let mut page = chromium.page().await;
        page.open(&site.url("/harness.html"), "ready").await;
        Self {
            name: name.to_owned(),
            page,
            chromium,
            events: Vec::new(),
            volumes: Vec::new(),
        }
    }

    /// Calls `harness.method(...args)`: the value, or the error's code and
    /// message.
    async fn try_call(&mut self, method: &str, args: Value) -> Result<Value, (i64, String)> {
        let reply = self
            .page
            .eval(&format!("harness.{method}(...{args})"))
            .await;
        match reply["error"].as_i64() {
            Some(code) => Err((code, reply["message"].as_str().unwrap_or("").to_owned())),
            None => Ok(reply["ok"].clone()),
        }
    }

    async fn call(&mut self, method: &str, args: Value) -> Value {
        match self.try_call(method, args).await {
            Ok(value) => value,
            Err((code, message)) => panic!(
                "{}: {method} failed with {code} {message}; console: {}",
                self.name,
                self.chromium.console()
            ),
        }
    }

    /// A new instance of the SDK on `server`, logged in as this user.
    async fn login(&mut self, server: &TestServer, hashes: &[String], way: Way) {
        let options = json!({
            "server": address(server, hashes, way),
            "voiceProcessing": { "echoCancellation": false, "noiseSuppression": false, "autoGainControl": false },
        });
        self.call("init", json!([options])).await;
        let name = self.name.clone();
        self.call("login", json!([server.app.sdk_app_id, name, server.sig(&name)]))
            .await;
    }

    /// Takes what the page raised since the last time.
    async fn take_events(&mut self) {
        let taken = self.call("events", json!([])).await;
        for event in taken.as_array().unwrap() {
            if event[0] == "onUserVoiceVolume" {
                self.volumes.push(event.clone());
            } else {
                self.events.push(event.clone());
            }
        }
    }

    /// Waits for the next events, in order, each as `[name, ...args]`.
    async fn expect(&mut self, expected: &[Value]) {
        let wait = async {
            while self.events.len() < expected.len() {
                self.take_events().await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        if tokio::time::timeout(EVENT_WAIT, wait).await.is_err() {
            panic!(
                "{}: waited for {expected:?}, got {:?}; console: {}",
                self.name,
                self.events,
                self.chromium.console()
            );
        }
        let got: Vec<Value> = self.events.drain(..expected.len()).collect();
        assert_eq!(got, expected, "{}: events", self.name);
    }

    /// Asserts nothing but volume reports comes for `quiet`.
    async fn expect_quiet(&mut self, quiet: Duration) {
        tokio::time::sleep(quiet).await;
        self.take_events().await;
        assert!(self.events.is_empty(), "{}: {:?}", self.name, self.events);
    }

    /// Records what the page plays for `ms`, into a 48 kHz WAV at `path`.
    async fn record(&mut self, ms: u64, path: &Path) {
        let recording = self.call("record", json!([ms])).await;
        assert_eq!(recording["sampleRate"], 48_000);
        let bytes = base64_decode(recording["samples"].as_str().unwrap());
        let samples: Vec<f32> = bytes
            .chunks_exact(4)
            .map(|chunk| f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]))
            .collect();
        let mut sink = WavSink::create(path, AudioFormat::mono(48_000)).unwrap();
        sink.write(&samples);
        sink.finish().unwrap();
    }
}

fn base64_decode(text: &str) -> Vec<u8> {
    let value = |byte: u8| match byte {
        b'A'..=b'Z' => u32::from(byte - b'A'),
        b'a'..=b'z' => u32::from(byte - b'a') + 26,
        b'0'..=b'9' => u32::from(byte - b'0') + 52,
        b'+' => 62,
        b'/' => 63,
        _ => panic!("not base64: {byte}"),
    };
    let digits: Vec<u8> = text.bytes().filter(|byte| *byte != b'=').collect();
    let mut out = Vec::with_capacity(digits.len() * 3 / 4);
    for chunk in digits.chunks(4) {
        let mut word = 0;
        for (index, digit) in chunk.iter().enumerate() {
            word |= value(*digit) << (18 - 6 * index);
        }
        let bytes = word.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn event(name: &str, args: &[Value]) -> Value {
    let mut event = vec![json!(name)];
    event.extend_from_slice(args);
    Value::Array(event)
}

fn enter_events(user: &str) -> [Value; 2] {
    [
        event("onUserEnter", &[json!(user)]),
        event("onUserAudioAvailable", &[json!(user), json!(true)]),
    ]
}

/// A native user whose microphone says `says` and whose speaker records
/// into `hears`.
async fn native_speaker(server: &TestServer, name: &str, says: &Path, hears: &Path) -> User {
    user_with_options(
        server,
        name,
        CaptureDevice::Wav {
            path: says.to_owned(),
            looping: true,
        },
        PlaybackDevice::Wav {
            path: hears.to_owned(),
        },
        |_| {},
    )
    .await
}

/// Asserts `heard` (a 48 kHz recording) is `said` (a 16 kHz fixture).
fn assert_heard(said: &Path, heard: &Path, who: &str) {
    let (correlation, delay_ms) = match_speech(said, heard);
    println!("{who}: correlation {correlation:.2}, delay {delay_ms:.0} ms");
    assert!(
        correlation >= 0.8,
        "{who}: correlation {correlation:.2} at {delay_ms:.0} ms"
    );
}

/// A page calls a native user, they talk for 4 s, the page hangs up:
/// each recording matches what the other side said, and the page's events
/// are the native SDK's.
async fn page_calls_native(way: Way, tag: &str) {
    let _browser = ONE_BROWSER.lock().await;
    let _audio = ONE_AT_A_TIME.lock().await;
    let (server, hashes) = start_server(test_config(tag)).await;
    let site = site().await;
    let (page_says, bob_says) = (fixture("speech-a-16k.wav"), fixture("speech-b-16k.wav"));
    let (page_hears, bob_hears) = (
        record_path(&format!("{tag}-page-hears")),
        record_path(&format!("{tag}-bob-hears")),
    );
    // A development server's fallback certificate is not one a browser
    // trusts (WebTransport's certificate hashes do not apply to TLS over
    // TCP): the test tells Chromium to accept it.
    let extra: &[&str] = match way {
        Way::WebTransport => &[],
        Way::WebSocket => &["--ignore-certificate-errors"],
    };
    let mut alice = WebUser::open(&site, "alice", &page_says, extra).await;
    alice.login(&server, &hashes, way).await;
    let mut bob = native_speaker(&server, "bob", &bob_says, &bob_hears).await;

    alice.call("call", json!(["bob"])).await;
    bob.expect(&[invited("alice", &[])]).await;
    bob.calling.accept().await.unwrap();
    alice.expect(&enter_events("bob")).await;
    bob.expect(&enter("alice")).await;
    let stats = alice.call("stats", json!([])).await;
    let expected_transport = match way {
        Way::WebTransport => "webtransport",
        Way::WebSocket => "websocket",
    };
    assert_eq!(stats["transport"], expected_transport, "{stats}");
    alice.record(4_000, &page_hears).await;
    alice.call("hangup", json!([])).await;
    alice.expect(&[event("onCallEnd", &[json!(0)])]).await;
    bob.expect_leave_then_end("alice", EndReason::Hangup).await;
    alice.expect_quiet(Duration::from_millis(500)).await;
    // The page heard bob speak while they talked: its volume reports say so.
    assert!(
        alice
            .volumes
            .iter()
            .any(|report| report[2].as_u64().unwrap_or(0) > 20),
        "{:?}",
        alice.volumes
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_heard(&page_says, &bob_hears, "bob hears the page");
    assert_heard(&bob_says, &page_hears, "the page hears bob");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_calls_a_native_user_over_webtransport_and_they_hear_each_other() {
    page_calls_native(Way::WebTransport, "web-call").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_webtransport_calls_over_the_websocket_fallback() {
    page_calls_native(Way::WebSocket, "web-ws-call").await;
}
