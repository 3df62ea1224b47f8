//! `cargo xtask web-demo`: a development server, a native SDK user "bot"
//! that answers every call and says a speech sample, and a web page
//! (`web/demo`, on the `opencalling-web` SDK) served on
//! <http://127.0.0.1:8080> where a person logs in and calls the bot, a
//! softphone in a terminal, or another tab. Runs until Ctrl-C, or for
//! `--seconds N`; `--port P` serves the page elsewhere.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::Duration;

use calling_facade::{
    AudioDevices, CallingEvent, CaptureDevice, ClientOptions, PlaybackDevice, TRTCCalling,
};
use opencalling_tests::server::{development_server, user_sig};
use opencalling_tests::speech;
use opencalling_tests::web::{DEMO_USERS, browser_certificate_hashes, demo_site};

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value_of = |flag: &str| {
        args.iter()
            .position(|arg| arg == flag)
            .and_then(|at| args.get(at + 1))
            .map(|value| {
                value
                    .parse::<u64>()
                    .unwrap_or_else(|_| panic!("{flag} takes a number"))
            })
    };
    let port = value_of("--port").unwrap_or(8080);
    let seconds = value_of("--seconds");

    let (server, data_dir) = development_server("web-demo").await;
    let app = server.development_app().cloned().unwrap();
    let hashes = browser_certificate_hashes(&data_dir);
    let site = demo_site(&app, &server, &hashes, "bot")
        .serve(([127, 0, 0, 1], u16::try_from(port).unwrap()).into())
        .await
        .unwrap_or_else(|error| {
            panic!("port {port} for the page: {error} (choose another with --port)")
        });
    let quic_port = server.local_addr().port();

    let mut options =
        ClientOptions::development(format!("127.0.0.1:{quic_port}"), server.fingerprint());
    options.audio = AudioDevices {
        capture: CaptureDevice::Wav {
            path: speech::fixture("speech-b-16k.wav"),
            looping: true,
        },
        playback: PlaybackDevice::Null,
    };
    let bot = TRTCCalling::new(options);
    let mut events = bot.events();
    bot.login(app.sdk_app_id, "bot", &user_sig(&app, "bot"))
        .await
        .unwrap();

    println!("OpenCalling web demo");
    println!(
        "  the page:   {}  (Chromium or Chrome: WebTransport and WebCodecs)",
        site.url("/")
    );
    println!(
        "  log in there as {} and call \"bot\" (it answers and talks), or each other from two tabs",
        DEMO_USERS.join(", ")
    );
    println!(
        "  a softphone: cargo xtask run --release -p opencalling-cli -- --dev {} --user dave",
        data_dir.display()
    );
    println!(
        "  the server: {} (data in {})",
        server.local_addr(),
        data_dir.display()
    );

    let serve_bot = async {
        while let Some(event) = events.recv().await {
            if event.is_report() {
                continue;
            }
            println!("bot: {event:?}");
            if matches!(event, CallingEvent::Invited { .. })
                && let Err(error) = bot.accept().await
            {
                println!("bot: accept failed: {error}");
            }
        }
    };
    let stop = async {
        match seconds {
            Some(seconds) => tokio::time::sleep(Duration::from_secs(seconds)).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        () = serve_bot => {}
        () = stop => {}
    }
    let _ = bot.logout().await;
    drop(site);
    server.shutdown().await;
    let _ = std::fs::remove_dir_all(&data_dir);
}
