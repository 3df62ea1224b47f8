//! `bench web-latency [SECONDS]`: the click probe's mouth-to-ear latency
//! from a native user to a page in headless Chromium and from the page to
//! a native user, beside native to native in the same run, over one
//! server in this process; and the CPU a call costs Chromium (every one
//! of its processes) beside what it costs this process (the server and
//! the native SDKs).

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use audio_device::probe::{ClickDetector, ClickProbe};
use calling_facade::{
    AudioDevices, CallType, CallingEvent, CaptureDevice, ClientOptions, CustomSink, CustomSource,
    PlaybackDevice, TRTCCalling,
};
use opencalling_tests::chromium::{Chromium, Page};
use opencalling_tests::web::{Site, browser_certificate_hashes, sdk_build};
use process_stats::ProcessStats;
use serde_json::json;

use super::{click_latency, click_percentiles, in_process_server, now_unix};

/// Wall-clock milliseconds of `instant` (the page stamps in wall-clock
/// milliseconds; both clocks are this machine's).
struct WallClock {
    instant: Instant,
    unix_ms: f64,
}

impl WallClock {
    fn now() -> Self {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs_f64()
            * 1e3;
        Self {
            instant: Instant::now(),
            unix_ms,
        }
    }

    /// `wall` (Unix ms) as an Instant of this process.
    fn instant_of(&self, wall: f64) -> Instant {
        let offset = wall - self.unix_ms;
        if offset >= 0.0 {
            self.instant + Duration::from_secs_f64(offset / 1e3)
        } else {
            self.instant - Duration::from_secs_f64(-offset / 1e3)
        }
    }
}

/// CPU time of Chromium: the process it started as and every descendant.
fn chromium_cpu(root: u32) -> Duration {
    let mut parents = std::collections::HashMap::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let parent = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|ppid| ppid.parse::<u32>().ok());
        if let Some(parent) = parent {
            parents.insert(pid, parent);
        }
    }
    let descends = |mut pid: u32| {
        while pid != root {
            match parents.get(&pid) {
                Some(&parent) if parent != 0 && parent != pid => pid = parent,
                _ => return false,
            }
        }
        true
    };
    parents
        .keys()
        .filter(|pid| descends(**pid))
        .filter_map(|pid| ProcessStats::of(*pid))
        .map(|stats| stats.cpu)
        .sum()
}

fn own_cpu() -> Duration {
    ProcessStats::own()
        .map(|stats| stats.cpu)
        .unwrap_or_default()
}

fn print_clicks(what: &str, sent: &[Instant], received: &[Instant]) -> Option<Duration> {
    match click_percentiles(sent, received) {
        Some((p50, p95, clicks)) => {
            println!(
                "  {what}: p50 {:.1} ms, p95 {:.1} ms ({clicks} clicks)",
                p50.as_secs_f64() * 1e3,
                p95.as_secs_f64() * 1e3
            );
            Some(p50)
        }
        None => {
            println!(
                "  {what}: no click heard ({} said, {} heard)",
                sent.len(),
                received.len()
            );
            None
        }
    }
}

/// A page's options for this server: WebTransport with the development
/// hashes; the page's own microphone is the click probe or silence.
fn page_options(server: &calling_server::RunningServer, hashes: &[String]) -> serde_json::Value {
    json!({
        "server": {
            "webTransportUrl": format!("https://127.0.0.1:{}/opencalling", server.local_addr().port()),
            "certificateHashes": hashes,
        },
        "voiceProcessing": { "echoCancellation": false, "noiseSuppression": false, "autoGainControl": false },
    })
}

async fn eval_ok(page: &mut Page, expression: &str) -> serde_json::Value {
    let reply = page.eval(expression).await;
    assert!(reply["error"].is_null(), "{expression}: {reply}");
    reply["ok"].clone()
}

/// What both page calls need: the server's app, native options, the page
/// and its options.
struct Bench {
    app: calling_server::AppCredentials,
    options: ClientOptions,
    page_options: serde_json::Value,
    chromium: Chromium,
    page: Page,
    seconds: u64,
}

/// The CPU a native → page call cost, per second of call.
struct CallCpu {
    chromium_ms_per_s: f64,
    own_ms_per_s: f64,
}

impl Bench {
    fn sig(&self, user: &str) -> String {
        calling_server::usersig::generate(
            u64::from(self.app.sdk_app_id),
            self.app.secret_key.expose(),
            user,
            3_600,
            now_unix(),
            None,
        )
    }

    /// A native click probe (alice) calls the page (bob), which detects
    /// the clicks it plays: the p50, and the call's CPU.
    async fn native_to_page(&mut self) -> (Option<Duration>, CallCpu) {
        let (probe, said) = ClickProbe::new();
        let mut alice_options = self.options.clone();
        alice_options.audio = AudioDevices {
            capture: CaptureDevice::Custom(CustomSource(Arc::new(std::sync::Mutex::new(probe)))),
            playback: PlaybackDevice::Null,
        };
        let alice = TRTCCalling::new(alice_options);
        alice
            .login(self.app.sdk_app_id, "alice", &self.sig("alice"))
            .await
            .unwrap();
        let login = format!(
            "harness.login({}, 'bob', {:?})",
            self.app.sdk_app_id,
            self.sig("bob")
        );
        let page = &mut self.page;
        eval_ok(page, &format!("harness.init({})", self.page_options)).await;
        eval_ok(page, &login).await;
        alice.call("bob", CallType::Audio).await.unwrap();
        let until_invited = async {
            loop {
                let events = eval_ok(page, "harness.events()").await;
                let rang = events
                    .as_array()
                    .is_some_and(|events| events.iter().any(|event| event[0] == "onInvited"));
                if rang {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(10), until_invited)
            .await
            .expect("the page rings");
        eval_ok(page, "harness.accept()").await;
        eval_ok(page, "harness.detectClicks()").await;
        let clock = WallClock::now();
        let pid = self.chromium.pid();
        let (chromium_before, own_before, started) = (chromium_cpu(pid), own_cpu(), Instant::now());
        tokio::time::sleep(Duration::from_secs(self.seconds)).await;
        let call_seconds = started.elapsed().as_secs_f64();
        let cpu = CallCpu {
            chromium_ms_per_s: (chromium_cpu(pid) - chromium_before).as_secs_f64() * 1e3
                / call_seconds,
            own_ms_per_s: (own_cpu() - own_before).as_secs_f64() * 1e3 / call_seconds,
        };
        let clicks = eval_ok(page, "harness.clicks()").await;
        let stamps = |name: &str| -> Vec<Instant> {
            clicks[name]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(serde_json::Value::as_f64)
                .map(|wall| clock.instant_of(wall))
                .collect()
        };
        let stats = eval_ok(page, "harness.stats()").await;
        alice.hangup().await.unwrap();
        let said = said.lock().unwrap().clone();
        let p50 = print_clicks(
            "native → page (played by the page's playout worklet)",
            &said,
            &stamps("heard"),
        );
        print_clicks(
            "native → page, the browser's output latency included (headless: its fake output's)",
            &said,
            &stamps("heardAtSpeaker"),
        );
        println!("    the page's audio: {}", stats["audio"]);
        eval_ok(page, "harness.destroy()").await;
        alice.destroy();
        (p50, cpu)
    }

    /// The page (alice, a microphone of clicks) calls a native detector
    /// (bob): the p50.
    async fn page_to_native(&mut self) -> Option<Duration> {
        let (detector, heard) = ClickDetector::new();
        let mut bob_options = self.options.clone();
        bob_options.audio = AudioDevices {
            capture: CaptureDevice::Silence,
            playback: PlaybackDevice::Custom(CustomSink(Arc::new(std::sync::Mutex::new(detector)))),
        };
        let bob = TRTCCalling::new(bob_options);
        let mut bob_events = bob.events();
        bob.login(self.app.sdk_app_id, "bob", &self.sig("bob"))
            .await
            .unwrap();
        let init = format!(
            "harness.initWithClickMicrophone({}, {})",
            self.page_options,
            self.seconds + 5
        );
        let login = format!(
            "harness.login({}, 'alice', {:?})",
            self.app.sdk_app_id,
            self.sig("alice")
        );
        let page = &mut self.page;
        eval_ok(page, &init).await;
        eval_ok(page, &login).await;
        eval_ok(page, "harness.call('bob')").await;
        while !matches!(bob_events.recv().await, Some(CallingEvent::Invited { .. })) {}
        bob.accept().await.unwrap();
        tokio::time::sleep(Duration::from_secs(self.seconds)).await;
        let clock = WallClock::now();
        let said: Vec<Instant> = eval_ok(page, "harness.clicks()").await["said"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(serde_json::Value::as_f64)
            .map(|wall| clock.instant_of(wall))
            .filter(|said| *said <= Instant::now())
            .collect();
        eval_ok(page, "harness.hangup()").await;
        let heard = heard.lock().unwrap().clone();
        bob.destroy();
        print_clicks("page → native", &said, &heard)
    }
}

pub(crate) async fn web_latency(seconds: u64) {
    let (server, app, data_dir) = in_process_server("opencalling-bench-web").await;
    let hashes = browser_certificate_hashes(&data_dir);
    let site = Site::default()
        .folder("/sdk/", sdk_build())
        .folder(
            "/",
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web"),
        )
        .serve("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let options = ClientOptions::development(server.local_addr().to_string(), server.fingerprint());
    println!(
        "mouth-to-ear latency of the click probe, {seconds} s calls over loopback, one server, 20 ms frames:"
    );
    // Native to native, the baseline, with this process's CPU during it.
    let cpu_before = own_cpu();
    let (sent, received, _) = click_latency(seconds, [&options, &options], &app).await;
    let native_cpu = own_cpu() - cpu_before;
    let native = print_clicks("native → native (baseline)", &sent, &received);

    let profile =
        std::env::temp_dir().join(format!("opencalling-bench-chromium-{}", std::process::id()));
    // The page's microphone in the native → page call: Chromium's fake
    // device (its beeps go to a native user who plays nothing).
    let fake_microphone = [
        "--use-fake-ui-for-media-stream".to_owned(),
        "--use-fake-device-for-media-stream".to_owned(),
    ];
    let chromium = Chromium::open("about:blank", &profile, &fake_microphone);
    let mut page = chromium.page().await;
    page.open(&site.url("/harness.html"), "ready").await;
    let mut bench = Bench {
        page_options: page_options(&server, &hashes),
        app,
        options,
        chromium,
        page,
        seconds,
    };
    let (to_page, cpu) = bench.native_to_page().await;
    let from_page = bench.page_to_native().await;
    drop(bench);
    let _ = std::fs::remove_dir_all(&profile);

    if let Some(native) = native {
        for (what, p50) in [("native → page", to_page), ("page → native", from_page)] {
            let Some(p50) = p50 else { continue };
            let extra = (p50.as_secs_f64() - native.as_secs_f64()) * 1e3;
            println!(
                "  {what}: {extra:+.1} ms beside native → native; target ≤ +20 ms: {}",
                if extra <= 20.0 { "met" } else { "MISSED" }
            );
        }
    }
    println!("CPU of a call, per second of call (this machine's cores, loopback):");
    println!(
        "  Chromium, every process, one page in a call (native → page): {:.1} ms/s",
        cpu.chromium_ms_per_s
    );
    println!(
        "  this process, server and one native SDK (the same call): {:.1} ms/s",
        cpu.own_ms_per_s
    );
    println!(
        "  this process, server and two native SDKs (native → native, its setup included): {:.1} ms/s",
        native_cpu.as_secs_f64() * 1e3 / seconds as f64
    );
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}
