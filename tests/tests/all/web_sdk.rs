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
use calling_api::EndReason;
use calling_facade::{CaptureDevice, PlaybackDevice};
use opencalling_tests::speech::{fixture, match_looped_speech};
use opencalling_tests::web::{Site, StaticSite, browser_certificate_hashes, demo_site, sdk_build};
use serde_json::{Value, json};
use signaling_proto::FlowId;

use crate::audio::{ONE_AT_A_TIME, record_path, user_with_options};
use crate::support::*;
use opencalling_tests::chromium::{Chromium, Page};

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
    (server, browser_certificate_hashes(&data_dir))
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
        self.login_with(server, hashes, way, json!({})).await;
    }

    /// [`WebUser::login`] with more options (`extra`'s fields).
    async fn login_with(&mut self, server: &TestServer, hashes: &[String], way: Way, extra: Value) {
        let mut options = json!({
            "server": address(server, hashes, way),
            "voiceProcessing": { "echoCancellation": false, "noiseSuppression": false, "autoGainControl": false },
        });
        if let (Some(options), Some(extra)) = (options.as_object_mut(), extra.as_object()) {
            options.extend(extra.clone());
        }
        self.call("init", json!([options])).await;
        let name = self.name.clone();
        self.call(
            "login",
            json!([server.app.sdk_app_id, name, server.sig(&name)]),
        )
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

    /// Waits until the page's volume reports say a remote member is heard
    /// (a call's audio starts a moment after its events, later still on a
    /// busy machine).
    async fn until_heard(&mut self) {
        let from = self.volumes.len();
        let wait = async {
            loop {
                self.take_events().await;
                let heard = self.volumes[from..].iter().any(|report| {
                    report[1].as_array().is_some_and(|users| {
                        users.iter().any(|user| {
                            user["userId"] != self.name.as_str()
                                && user["volume"].as_u64().unwrap_or(0) > 10
                        })
                    })
                });
                if heard {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        if tokio::time::timeout(EVENT_WAIT, wait).await.is_err() {
            panic!(
                "{}: nobody heard; console: {}",
                self.name,
                self.chromium.console()
            );
        }
    }

    /// Records what the page plays for `ms` once it hears someone, into a
    /// 48 kHz WAV at `path`.
    async fn record(&mut self, ms: u64, path: &Path) {
        self.until_heard().await;
        let recording = self.call("record", json!([ms])).await;
        save_recording(&recording, path);
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

/// Asserts `heard` (a 48 kHz recording) is `said` (a 16 kHz fixture,
/// which every microphone here says in a loop, from whenever it opened).
#[allow(
    clippy::print_stdout,
    reason = "the measured figures, for the log of a test run"
)]
fn assert_heard(said: &Path, heard: &Path, who: &str) {
    let (correlation, from_ms) = match_looped_speech(said, heard);
    println!(
        "{who}: correlation {correlation:.2} (the recording starts {from_ms:.0} ms into the speech)"
    );
    assert!(correlation >= 0.8, "{who}: correlation {correlation:.2}");
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

/// What the relay forwarded of `sender`'s audio, opened with the native
/// SDK's own opener and the key `sender` announced (from the server's tap
/// of the key words): how many of its frames there were, how many opened
/// as Opus that decodes.
fn open_relayed(
    words: &std::sync::mpsc::Receiver<(std::time::Instant, (calling_api::UserId, Vec<u8>))>,
    relayed: &std::sync::mpsc::Receiver<(std::time::Instant, bytes::Bytes)>,
    material: &media_e2ee::MediaKey,
    sender: &str,
) -> (usize, usize) {
    let mut opener = media_e2ee::FrameOpener::new();
    for (_, (from, payload)) in words.try_iter() {
        if from.as_str() == sender {
            let announcement = media_e2ee::KeyAnnouncement::from_bytes(&payload).unwrap();
            opener.add_key(material, sender, &announcement).unwrap();
        }
    }
    let mut flows: std::collections::HashMap<FlowId, (usize, usize)> =
        std::collections::HashMap::new();
    let mut decoder = audio_pipeline::Decoder::with_complexity(0).unwrap();
    let mut pcm = vec![0.0_f32; 5760];
    for frame in crate::e2ee::frames(relayed.try_iter()) {
        let counts = flows.entry(frame.flow).or_default();
        counts.0 += 1;
        if let Ok(opus) = opener.open(&frame.header, &frame.sealed)
            && decoder.decode(opus, &mut pcm).is_ok()
        {
            counts.1 += 1;
        }
    }
    flows
        .into_values()
        .max_by_key(|(_, opened)| *opened)
        .unwrap_or_default()
}

/// A page and a native app with one shared media key: each hears the
/// other; every frame the page sent, as the relay forwarded it, opens with
/// the native SDK's own opener and the key the page announced (the
/// WebCrypto SFrame and the native one agree); a page with a key cannot
/// call a native user without one (3008).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_and_a_native_user_share_an_end_to_end_encrypted_call() {
    let _browser = ONE_BROWSER.lock().await;
    let _audio = ONE_AT_A_TIME.lock().await;
    let (server, hashes) = start_server(test_config("web-e2ee")).await;
    let words = server.server.tap_member_keys();
    let relayed = server.server.tap_relay();
    let site = site().await;
    let key = "5a".repeat(32);
    let material = media_e2ee::MediaKey::from_hex(&key).unwrap();
    let (page_says, bob_says) = (fixture("speech-a-16k.wav"), fixture("speech-b-16k.wav"));
    let (page_hears, bob_hears) = (
        record_path("web-e2ee-page-hears"),
        record_path("web-e2ee-bob-hears"),
    );
    let mut alice = WebUser::open(&site, "alice", &page_says, &[]).await;
    alice
        .login_with(
            &server,
            &hashes,
            Way::WebTransport,
            json!({ "mediaKey": key }),
        )
        .await;
    let _carol = server.user("carol").await;
    let refused = alice.try_call("call", json!(["carol"])).await;
    assert_eq!(refused.map_err(|(code, _)| code), Err(3008));
    let mut bob = user_with_options(
        &server,
        "bob",
        CaptureDevice::Wav {
            path: bob_says.clone(),
            looping: true,
        },
        PlaybackDevice::Wav {
            path: bob_hears.clone(),
        },
        |options| {
            options.media_encryption = Some(calling_facade::MediaKeys::Shared(material.clone()))
        },
    )
    .await;
    alice.call("call", json!(["bob"])).await;
    bob.expect(&[invited("alice", &[])]).await;
    bob.calling.accept().await.unwrap();
    alice.expect(&enter_events("bob")).await;
    bob.expect(&enter("alice")).await;
    alice.record(4_000, &page_hears).await;
    alice.call("hangup", json!([])).await;
    alice.expect(&[event("onCallEnd", &[json!(0)])]).await;
    bob.expect_leave_then_end("alice", EndReason::Hangup).await;
    alice.expect_quiet(Duration::from_millis(300)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_heard(&page_says, &bob_hears, "bob hears the page");
    assert_heard(&bob_says, &page_hears, "the page hears bob");
    let (sent, opened) = open_relayed(&words, &relayed, &material, "alice");
    println!("the page's frames as relayed: {opened} of {sent} open with the native opener");
    assert!(sent > 100 && opened == sent, "{opened} of {sent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_calls_a_native_user_over_webtransport_and_they_hear_each_other() {
    page_calls_native(Way::WebTransport, "web-call").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_without_webtransport_calls_over_the_websocket_fallback() {
    page_calls_native(Way::WebSocket, "web-ws-call").await;
}

/// A test server whose invitations ring for 2 s, and its hashes.
async fn quick_timeout_server(tag: &str) -> (TestServer, Vec<String>) {
    let mut config = test_config(tag);
    config.switchboard.default_invite_timeout = Duration::from_secs(2);
    start_server(config).await
}

/// The page calls, and each way an invitation can end raises the native
/// SDK's events in the native order: busy, rejected, no answer; then the
/// page is called and the caller cancels, or nobody answers in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_sees_busy_reject_no_answer_cancel_and_timeout_as_the_native_sdk() {
    let _browser = ONE_BROWSER.lock().await;
    let (server, hashes) = quick_timeout_server("web-events").await;
    let site = site().await;
    let mut alice = WebUser::open(&site, "alice", &fixture("speech-a-16k.wav"), &[]).await;
    alice.login(&server, &hashes, Way::WebTransport).await;
    let mut bob = server.user("bob").await;
    let mut carol = server.user("carol").await;
    let mut dave = server.user("dave").await;

    // Busy: carol is in a call with dave.
    connect(&mut carol, &mut dave).await;
    alice.call("call", json!(["carol"])).await;
    alice
        .expect(&[
            event("onLineBusy", &[json!("carol")]),
            event("onCallEnd", &[json!(EndReason::LineBusy as u8)]),
        ])
        .await;

    // Rejected.
    alice.call("call", json!(["bob"])).await;
    bob.expect(&[invited("alice", &[])]).await;
    bob.calling.reject().await.unwrap();
    alice
        .expect(&[
            event("onReject", &[json!("bob")]),
            event("onCallEnd", &[json!(EndReason::Rejected as u8)]),
        ])
        .await;

    // No answer within the invitation's 2 s.
    alice.call("call", json!(["bob"])).await;
    bob.expect(&[invited("alice", &[])]).await;
    alice
        .expect(&[
            event("onNoResp", &[json!("bob")]),
            event("onCallEnd", &[json!(EndReason::NoResponse as u8)]),
        ])
        .await;
    bob.expect(&[calling_api::CallingEvent::CallingTimeOut])
        .await;

    // The page is called; the caller cancels.
    let invited_page = event(
        "onInvited",
        &[json!("bob"), json!([]), json!(false), json!(1)],
    );
    bob.calling
        .call("alice", calling_api::CallType::Audio)
        .await
        .unwrap();
    alice.expect(std::slice::from_ref(&invited_page)).await;
    bob.calling.hangup().await.unwrap();
    alice.expect(&[event("onCallingCancel", &[])]).await;
    bob.expect_end(EndReason::Cancelled).await;

    // The page is called and lets it ring out.
    bob.calling
        .call("alice", calling_api::CallType::Audio)
        .await
        .unwrap();
    alice
        .expect(&[invited_page, event("onCallingTimeOut", &[])])
        .await;
    let answered = alice.try_call("accept", json!([])).await;
    assert_eq!(
        answered.map_err(|(code, _)| code),
        Err(i64::from(calling_api::ErrorCode::NO_INVITATION.as_i32())),
        "nothing rings any more"
    );
    alice.expect_quiet(Duration::from_millis(300)).await;
}

/// A native user calls the page, which answers; mute on either side is
/// the other's onUserAudioAvailable; the page's volume reports carry both
/// users, the total only the remote one; the caller hangs up: the page
/// sees onUserLeave, then onCallEnd exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_native_user_calls_a_page_which_answers_mutes_and_hears_the_end_once() {
    let _browser = ONE_BROWSER.lock().await;
    let _audio = ONE_AT_A_TIME.lock().await;
    let (server, hashes) = start_server(test_config("web-answer")).await;
    let site = site().await;
    let mut alice = WebUser::open(&site, "alice", &fixture("speech-a-16k.wav"), &[]).await;
    alice.login(&server, &hashes, Way::WebTransport).await;
    let bob_hears = record_path("web-answer-bob-hears");
    let mut bob = native_speaker(&server, "bob", &fixture("speech-b-16k.wav"), &bob_hears).await;

    bob.calling
        .call("alice", calling_api::CallType::Audio)
        .await
        .unwrap();
    alice
        .expect(&[event(
            "onInvited",
            &[json!("bob"), json!([]), json!(false), json!(1)],
        )])
        .await;
    alice.call("accept", json!([])).await;
    alice.expect(&enter_events("bob")).await;
    bob.expect(&enter("alice")).await;

    bob.calling.set_mic_mute(true);
    alice
        .expect(&[event("onUserAudioAvailable", &[json!("bob"), json!(false)])])
        .await;
    bob.calling.set_mic_mute(false);
    alice
        .expect(&[event("onUserAudioAvailable", &[json!("bob"), json!(true)])])
        .await;
    alice.call("mute", json!([true])).await;
    bob.expect(&[calling_api::CallingEvent::UserAudioAvailable {
        user_id: uid("alice"),
        available: false,
    }])
    .await;
    alice.call("mute", json!([false])).await;
    bob.expect(&[calling_api::CallingEvent::UserAudioAvailable {
        user_id: uid("alice"),
        available: true,
    }])
    .await;
    let page_hears = record_path("web-answer-page-hears");
    alice.record(4_000, &page_hears).await;

    bob.calling.hangup().await.unwrap();
    bob.expect_end(EndReason::Hangup).await;
    alice
        .expect(&[
            event("onUserLeave", &[json!("bob")]),
            event("onCallEnd", &[json!(0)]),
        ])
        .await;
    alice.expect_quiet(Duration::from_secs(1)).await;
    // Every report names both users, the local one first; the total is
    // bob's alone, and he was heard.
    assert!(alice.volumes.len() >= 5, "{:?}", alice.volumes);
    for report in &alice.volumes {
        let users: Vec<&str> = report[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|user| user["userId"].as_str().unwrap())
            .collect();
        assert_eq!(users, ["alice", "bob"], "{report}");
        assert_eq!(report[2], report[1][1]["volume"], "{report}");
    }
    assert!(
        alice
            .volumes
            .iter()
            .any(|report| report[2].as_u64().unwrap() > 20),
        "{:?}",
        alice.volumes
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_heard(
        &fixture("speech-b-16k.wav"),
        &page_hears,
        "the page hears its caller",
    );
    assert_heard(
        &fixture("speech-a-16k.wav"),
        &bob_hears,
        "the caller hears the page",
    );
}

/// Two pages call each other and each hears the other's microphone; then
/// the caller invites two native users into a three-way call, and each of
/// them hears the page.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_call_each_other_and_a_page_joins_a_three_way_call_with_native_users() {
    let _browser = ONE_BROWSER.lock().await;
    let _audio = ONE_AT_A_TIME.lock().await;
    let (server, hashes) = start_server(test_config("web-pages")).await;
    let site = site().await;
    let (alice_says, bob_says) = (fixture("speech-a-16k.wav"), fixture("speech-b-16k.wav"));
    let mut alice = WebUser::open(&site, "alice", &alice_says, &[]).await;
    alice.login(&server, &hashes, Way::WebTransport).await;
    let mut bob = WebUser::open(&site, "bob", &bob_says, &[]).await;
    bob.login(&server, &hashes, Way::WebTransport).await;

    alice.call("call", json!(["bob"])).await;
    bob.expect(&[event(
        "onInvited",
        &[json!("alice"), json!([]), json!(false), json!(1)],
    )])
    .await;
    bob.call("accept", json!([])).await;
    alice.expect(&enter_events("bob")).await;
    bob.expect(&enter_events("alice")).await;
    let (alice_hears, bob_hears) = (
        record_path("web-pages-alice-hears"),
        record_path("web-pages-bob-hears"),
    );
    alice.until_heard().await;
    bob.until_heard().await;
    let (recorded_alice, recorded_bob) = tokio::join!(
        alice.page.eval("harness.record(4000)"),
        bob.page.eval("harness.record(4000)"),
    );
    save_recording(&recorded_alice["ok"], &alice_hears);
    save_recording(&recorded_bob["ok"], &bob_hears);
    assert_heard(&bob_says, &alice_hears, "a page hears a page");
    assert_heard(&alice_says, &bob_hears, "and the other way");
    bob.call("hangup", json!([])).await;
    bob.expect(&[event("onCallEnd", &[json!(0)])]).await;
    alice
        .expect(&[
            event("onUserLeave", &[json!("bob")]),
            event("onCallEnd", &[json!(0)]),
        ])
        .await;

    // Three-way: the page and two native users, carol talking, dave
    // silent: carol hears the page alone, the page hears carol alone.
    let (carol_hears, dave_hears, page_hears) = (
        record_path("web-three-carol-hears"),
        record_path("web-three-dave-hears"),
        record_path("web-three-page-hears"),
    );
    let mut carol = native_speaker(&server, "carol", &bob_says, &carol_hears).await;
    let mut dave = user_with_options(
        &server,
        "dave",
        CaptureDevice::Silence,
        PlaybackDevice::Wav { path: dave_hears },
        |_| {},
    )
    .await;
    alice.call("call", json!(["carol"])).await;
    carol.expect(&[invited("alice", &[])]).await;
    carol.calling.accept().await.unwrap();
    alice.expect(&enter_events("carol")).await;
    carol.expect(&enter("alice")).await;
    alice.call("call", json!(["dave"])).await;
    dave.expect(&[invited("alice", &["carol"])]).await;
    dave.calling.accept().await.unwrap();
    alice.expect(&enter_events("dave")).await;
    for user in ["alice", "carol"] {
        dave.expect(&enter(user)).await;
    }
    carol.expect(&enter("dave")).await;
    alice.record(4_000, &page_hears).await;
    alice.call("hangup", json!([])).await;
    alice.expect(&[event("onCallEnd", &[json!(0)])]).await;
    // The page left; carol leaves too: the call is over for dave.
    carol
        .expect(&[calling_api::CallingEvent::UserLeave {
            user_id: uid("alice"),
        }])
        .await;
    dave.expect(&[calling_api::CallingEvent::UserLeave {
        user_id: uid("alice"),
    }])
    .await;
    carol.calling.hangup().await.unwrap();
    dave.expect_leave_then_end("carol", EndReason::Hangup).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_heard(
        &alice_says,
        &carol_hears,
        "carol hears the page in a three-way call",
    );
    assert_heard(
        &bob_says,
        &page_hears,
        "the page hears carol in a three-way call",
    );
}

/// Writes a page's recording (`harness.record`'s value) as a WAV file.
fn save_recording(recording: &Value, path: &Path) {
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

/// What cannot work says so with its code, soon: a certificate hash that
/// is not the server's, an expired UserSig, a server that is down, a bad
/// user id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_gets_a_clear_code_for_a_wrong_hash_an_expired_usersig_and_a_server_that_is_down() {
    let _browser = ONE_BROWSER.lock().await;
    let (server, hashes) = start_server(test_config("web-refusals")).await;
    let site = site().await;
    let mut page = WebUser::open(&site, "alice", &fixture("speech-a-16k.wav"), &[]).await;
    let app = server.app.sdk_app_id;
    let login = |server: Value, sig: String| json!([{ "server": server, "reconnect": false }, app, "alice", sig]);
    let started = std::time::Instant::now();

    let wrong_hash = address(&server, &["ab".repeat(32)], Way::WebTransport);
    let refused = page
        .try_call("initAndLogin", login(wrong_hash, server.sig("alice")))
        .await;
    assert_eq!(refused.map_err(|(code, _)| code), Err(4007), "a wrong hash");

    let now = now();
    let expired = calling_server::usersig::generate(
        u64::from(app),
        server.app.secret_key.expose(),
        "alice",
        60,
        now - 3_600,
        None,
    );
    let refused = page
        .try_call(
            "initAndLogin",
            login(address(&server, &hashes, Way::WebTransport), expired),
        )
        .await;
    assert_eq!(
        refused.map_err(|(code, _)| code),
        Err(2011),
        "an expired UserSig"
    );

    let refused = page
        .try_call(
            "initAndLogin",
            login(address(&server, &hashes, Way::WebTransport), "x".into()),
        )
        .await;
    assert_eq!(
        refused.map_err(|(code, _)| code),
        Err(2010),
        "a malformed UserSig"
    );
    // The same instance logs in at once with a good one.
    let again = page
        .try_call("login", json!([app, "alice", server.sig("alice")]))
        .await;
    assert_eq!(again, Ok(Value::Null), "a login after a refusal");
    page.call("logout", json!([])).await;

    let down = address(&server, &hashes, Way::WebTransport);
    server.server.shutdown().await;
    let refused = page
        .try_call("initAndLogin", login(down, "sig".into()))
        .await;
    assert_eq!(
        refused.map_err(|(code, _)| code),
        Err(4007),
        "a server that is down"
    );
    assert!(
        started.elapsed() < Duration::from_secs(40),
        "every refusal came within the connect timeout: {:?}",
        started.elapsed()
    );
    let refused = page.try_call("login", json!([app, "a/b", "sig"])).await;
    assert_eq!(
        refused.map_err(|(code, _)| code),
        Err(1001),
        "a bad user id"
    );
}

/// The page's network goes away for 6 s in a call (a proxy drops
/// everything): the page says it is reconnecting, resumes its session when
/// the network is back, and the call goes on — bob hears of the break
/// and the return, and the page hears him again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_resumes_its_session_after_an_outage_and_the_call_goes_on() {
    let _browser = ONE_BROWSER.lock().await;
    let _audio = ONE_AT_A_TIME.lock().await;
    let (server, hashes) = start_server(test_config("web-resume")).await;
    let proxy = opencalling_tests::proxy::FaultProxy::start(server.server.local_addr()).await;
    let site = site().await;
    let mut alice = WebUser::open(&site, "alice", &fixture("speech-a-16k.wav"), &[]).await;
    let through_proxy = json!({
        "server": {
            "webTransportUrl": format!("https://127.0.0.1:{}/opencalling", proxy.addr.port()),
            "certificateHashes": hashes,
        },
        "voiceProcessing": { "echoCancellation": false, "noiseSuppression": false, "autoGainControl": false },
    });
    alice.call("init", json!([through_proxy])).await;
    alice
        .call(
            "login",
            json!([server.app.sdk_app_id, "alice", server.sig("alice")]),
        )
        .await;
    let bob_says = fixture("speech-b-16k.wav");
    let mut bob = native_speaker(&server, "bob", &bob_says, &record_path("web-resume-bob")).await;
    alice.call("call", json!(["bob"])).await;
    bob.expect(&[invited("alice", &[])]).await;
    bob.calling.accept().await.unwrap();
    alice.expect(&enter_events("bob")).await;
    bob.expect(&enter("alice")).await;

    proxy.blackhole(true);
    alice.expect(&[event("onReconnecting", &[])]).await;
    bob.expect(&[calling_api::CallingEvent::UserReconnecting {
        user_id: uid("alice"),
    }])
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    proxy.blackhole(false);
    alice.expect(&[event("onReconnected", &[])]).await;
    bob.expect(&[calling_api::CallingEvent::UserReconnected {
        user_id: uid("alice"),
    }])
    .await;
    let stats = alice.call("stats", json!([])).await;
    assert_eq!(stats["status"], "inCall", "{stats}");
    let page_hears = record_path("web-resume-page-hears");
    alice.record(3_500, &page_hears).await;
    assert_heard(
        &bob_says,
        &page_hears,
        "the page hears bob after the outage",
    );
    alice.call("hangup", json!([])).await;
    alice.expect(&[event("onCallEnd", &[json!(0)])]).await;
    bob.expect_leave_then_end("alice", EndReason::Hangup).await;
}

/// The web demo's page as a person uses it: log in from the list, call
/// the user the page offers (a native bot that answers), see the call
/// connect and the other side speak, hang up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_logs_in_on_the_demo_page_and_calls_a_native_user() {
    let _browser = ONE_BROWSER.lock().await;
    let config = test_config("web-demo-page");
    let data_dir = config.data_dir.clone();
    let server = TestServer::start_with(config).await;
    let hashes = browser_certificate_hashes(&data_dir);
    let site = demo_site(&server.app, &server.server, &hashes, "bot")
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let mut bot = native_speaker(
        &server,
        "bot",
        &fixture("speech-b-16k.wav"),
        &record_path("web-demo-bot-hears"),
    )
    .await;
    let chromium = Chromium::open(
        "about:blank",
        &temp_dir("chromium-demo"),
        &Chromium::fake_microphone(&fixture("speech-a-16k.wav")),
    );
    let mut page = chromium.page().await;
    page.open(&site.url("/"), "OpenCalling web demo").await;
    let state =
        |page: &'static str| format!("document.getElementById('state').textContent === {page:?}");
    let until = async |page: &mut Page, condition: String| -> bool {
        let wait = async {
            while page.eval(&condition).await != true {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        };
        tokio::time::timeout(EVENT_WAIT, wait).await.is_ok()
    };
    let log_of = async |page: &mut Page| {
        page.eval("document.getElementById('log').textContent")
            .await
    };
    let ready = "document.body.dataset.ready === 'yes'".to_owned();
    assert!(until(&mut page, ready).await, "the page never got ready");
    page.eval("document.getElementById('login').click()").await;
    assert!(
        until(&mut page, state("idle")).await,
        "not logged in: {}; console: {}",
        log_of(&mut page).await,
        chromium.console()
    );
    page.eval("document.getElementById('call').click()").await;
    bot.expect(&[invited("alice", &[])]).await;
    bot.calling.accept().await.unwrap();
    assert!(
        until(&mut page, state("in a call")).await,
        "no call: {}",
        log_of(&mut page).await
    );
    // The meter shows the bot speaking.
    let meter = "document.getElementById('volume').value > 20".to_owned();
    assert!(
        until(&mut page, meter).await,
        "silence: {}",
        log_of(&mut page).await
    );
    page.eval("document.getElementById('hangup').click()").await;
    assert!(
        until(&mut page, state("idle")).await,
        "no end: {}",
        log_of(&mut page).await
    );
    bot.expect(&enter("alice")).await;
    bot.expect_leave_then_end("alice", EndReason::Hangup).await;
    let log = page
        .eval("document.getElementById('log').textContent")
        .await;
    let log = log.as_str().unwrap();
    for line in ["logged in as alice", "bot entered", "the call is over"] {
        assert!(log.contains(line), "{line:?} not in the page's log: {log}");
    }
}

/// WebTransport first, the WebSocket 300 ms later: with both reachable
/// the page keeps WebTransport; with UDP going nowhere (a socket that
/// never answers) it is on the WebSocket within a second or two, not
/// after WebTransport's own timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_page_races_webtransport_against_the_websocket() {
    let _browser = ONE_BROWSER.lock().await;
    let (server, hashes) = start_server(test_config("web-race")).await;
    let site = site().await;
    let mut page = WebUser::open(
        &site,
        "alice",
        &fixture("speech-a-16k.wav"),
        &["--ignore-certificate-errors"],
    )
    .await;
    let black_hole = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let websocket = address(&server, &hashes, Way::WebSocket);
    let both = |quic_port: u16| {
        json!({
            "webTransportUrl": format!("https://127.0.0.1:{quic_port}/opencalling"),
            "certificateHashes": hashes,
            "webSocketUrl": websocket["webSocketUrl"],
        })
    };
    let app = server.app.sdk_app_id;
    for (quic_port, expected) in [
        (server.server.local_addr().port(), "webtransport"),
        (black_hole.local_addr().unwrap().port(), "websocket"),
    ] {
        let started = std::time::Instant::now();
        let options = json!({ "server": both(quic_port) });
        page.call(
            "initAndLogin",
            json!([options, app, "alice", server.sig("alice")]),
        )
        .await;
        let took = started.elapsed();
        let stats = page.call("stats", json!([])).await;
        assert_eq!(stats["transport"], expected, "{stats}");
        assert!(
            took < Duration::from_secs(5),
            "logged in over {expected} after {took:?}"
        );
    }
}
