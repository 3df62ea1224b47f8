//! `opencalling`: calls from a terminal, on the SDK (`calling-facade`)
//! only. Without a command it is an interactive softphone (a terminal UI,
//! `phone.rs`). For scripts and bots, `answer` waits for calls and answers them by
//! rule, `call` places one; both play a WAV file, a tone or the system
//! microphone, record what they hear into a WAV file (or play it), print
//! every event (as text, or as one JSON object per line with `--json`),
//! and exit with a code that says how the last call ended. `devices` lists
//! the system's microphones and speakers.
//!
//! It never keeps state between runs and never works around the SDK: what
//! it cannot do through the SDK's API, it does not do.

#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "a command line: its output is its job"
)]

mod phone;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use calling_facade::dev::{DevServer, generate_test_user_sig};
use calling_facade::{
    AudioDevices, CallStats, CallStatus, CallType, CallingError, CallingEvent, CaptureDevice,
    CertFingerprint, ClientOptions, DeviceId, EndReason, ErrorCode, EventStream, MediaKeys,
    PlaybackDevice, ServerTrust, Signal, TRTCCalling, VoiceProcessing, list_audio_devices,
};
use clap::{Args, Parser, Subcommand};

/// Calls from a terminal, for scripts and bots.
#[derive(Debug, Parser)]
#[command(name = "opencalling", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    account: Account,
    #[command(flatten)]
    audio: Audio,
    /// Print every event as one JSON object per line
    #[arg(long, global = true)]
    json: bool,
    /// Print the call's statistics every second while in a call (network
    /// quality, round trip, loss, jitter, bitrate per member); with
    /// --json as `{"ms": …, "stats": …}` lines
    #[arg(long, global = true)]
    stats: bool,
    /// Without a command: the interactive softphone
    #[command(subcommand)]
    command: Option<Command>,
}

/// Where the server is and who logs in.
#[derive(Debug, Args)]
struct Account {
    /// A TOML file with any of: dev, server, fingerprint, app, user, usersig, secret_key, media_key, media_identity (flags and the environment win)
    #[arg(long, env = "OPENCALLING_CONFIG", value_name = "FILE", global = true)]
    config: Option<PathBuf>,
    /// A development server's data directory: its address, certificate and app
    #[arg(long, env = "OPENCALLING_DEV", value_name = "DATA_DIR", global = true)]
    dev: Option<PathBuf>,
    /// The server's host:port, or a deployment's servers separated by commas (tried in turn)
    #[arg(long, env = "OPENCALLING_SERVER", value_name = "ADDR", global = true)]
    server: Option<String>,
    /// The SHA-256 fingerprint of the server's certificate (hex) to trust
    #[arg(
        long,
        env = "OPENCALLING_SERVER_FINGERPRINT",
        value_name = "HEX",
        global = true
    )]
    fingerprint: Option<CertFingerprint>,
    /// The sdkAppId
    #[arg(long, env = "OPENCALLING_SDK_APP_ID", value_name = "ID", global = true)]
    app: Option<u32>,
    /// Who to log in as
    #[arg(long, env = "OPENCALLING_USER", value_name = "USER_ID", global = true)]
    user: Option<String>,
    /// The UserSig the application's backend issued
    #[arg(long, env = "OPENCALLING_USERSIG", value_name = "SIG", global = true)]
    usersig: Option<String>,
    /// Sign a UserSig with the app's secret key instead (development only)
    #[arg(
        long,
        env = "OPENCALLING_SECRET_KEY",
        value_name = "KEY",
        global = true
    )]
    secret_key: Option<String>,
    /// Seconds to wait for the server when connecting
    #[arg(long, value_name = "SECS", default_value_t = 5, global = true)]
    connect_timeout: u64,
    /// Which of the user's devices this is, on servers that ring several [default: a new random id]
    #[arg(long, env = "OPENCALLING_DEVICE_ID", value_name = "ID", global = true)]
    device_id: Option<DeviceId>,
    /// Encrypt calls end to end with this key every user shares (32 to 128
    /// hex digits); calls with devices that do not are refused
    #[arg(
        long,
        env = "OPENCALLING_MEDIA_KEY",
        value_name = "HEX",
        hide_env_values = true,
        global = true
    )]
    media_key: Option<String>,
    /// Encrypt calls end to end with keys made here, sealed to each
    /// member's identity key; this device's identity lives in this file
    /// (made if missing). Members' safety numbers are printed
    #[arg(
        long,
        env = "OPENCALLING_MEDIA_IDENTITY",
        value_name = "FILE",
        global = true,
        conflicts_with = "media_key"
    )]
    media_identity: Option<PathBuf>,
}

/// The account settings a `--config` file may hold.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AccountFile {
    dev: Option<PathBuf>,
    server: Option<String>,
    fingerprint: Option<String>,
    app: Option<u32>,
    user: Option<String>,
    usersig: Option<String>,
    secret_key: Option<String>,
    media_key: Option<String>,
    media_identity: Option<PathBuf>,
}

impl Account {
    /// These settings, with the `--config` file's where none was given.
    fn with_file(mut self) -> Result<Self, String> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(path)
            .map_err(|error| format!("{}: {error}", path.display()))?;
        let file: AccountFile = toml::from_str(&text)
            .map_err(|error| format!("{}: {}", path.display(), error.message()))?;
        let fingerprint = match file.fingerprint {
            Some(hex) => Some(
                hex.parse::<CertFingerprint>()
                    .map_err(|error| format!("{}: fingerprint: {error}", path.display()))?,
            ),
            None => None,
        };
        self.dev = self.dev.or(file.dev);
        self.server = self.server.or(file.server);
        self.fingerprint = self.fingerprint.or(fingerprint);
        self.app = self.app.or(file.app);
        self.user = self.user.or(file.user);
        self.usersig = self.usersig.or(file.usersig);
        self.secret_key = self.secret_key.or(file.secret_key);
        self.media_key = self.media_key.or(file.media_key);
        self.media_identity = self.media_identity.or(file.media_identity);
        Ok(self)
    }
}

/// What is said and what is heard.
#[derive(Debug, Args)]
struct Audio {
    /// Say this WAV file (played once, then silence)
    #[arg(long, value_name = "WAV", global = true)]
    input: Option<PathBuf>,
    /// Say a tone of this many Hz
    #[arg(long, value_name = "HZ", conflicts_with = "input", global = true)]
    tone: Option<f32>,
    /// Use this system microphone (see `opencalling devices`)
    #[arg(long, value_name = "NAME", global = true)]
    input_device: Option<String>,
    /// Record what is heard into this WAV file
    #[arg(long, value_name = "WAV", global = true)]
    output: Option<PathBuf>,
    /// Use this system speaker (see `opencalling devices`)
    #[arg(long, value_name = "NAME", conflicts_with = "output", global = true)]
    output_device: Option<String>,
    /// Do not cancel the speaker's echo from the microphone (on by default
    /// for a system microphone; files and tones are never processed)
    #[arg(long, global = true)]
    no_echo_cancellation: bool,
    /// Do not suppress background noise
    #[arg(long, global = true)]
    no_noise_suppression: bool,
    /// Do not control the microphone's level
    #[arg(long, global = true)]
    no_auto_gain: bool,
}

impl Audio {
    /// The voice processing of `options` less what the flags turn off.
    fn voice_processing(&self, options: &ClientOptions) -> VoiceProcessing {
        let mut voice = options.voice_processing_in_effect();
        voice.echo_cancellation &= !self.no_echo_cancellation;
        voice.noise_suppression &= !self.no_noise_suppression;
        voice.auto_gain &= !self.no_auto_gain;
        voice
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait for calls and answer them
    Answer {
        /// Reject invitations from this user (repeat for more)
        #[arg(long, value_name = "USER_ID")]
        reject_from: Vec<String>,
        /// Reject every invitation
        #[arg(long)]
        reject_all: bool,
        /// Hang up this many seconds after answering
        #[arg(long, value_name = "SECS")]
        hang_up_after: Option<u64>,
        /// Exit after this many calls
        #[arg(long, value_name = "N", default_value_t = 1)]
        calls: u32,
    },
    /// Call one or more users (into one call)
    Call {
        /// Who to call
        #[arg(required = true, value_name = "USER_ID")]
        users: Vec<String>,
        /// Hang up this many seconds after the first member enters
        #[arg(long, value_name = "SECS")]
        hang_up_after: Option<u64>,
        /// How long the invitation rings, in seconds (the server's default otherwise)
        #[arg(long, value_name = "SECS")]
        ring: Option<u32>,
    },
    /// List the system's microphones and speakers
    Devices,
}

/// How a run ends: the exit code says how the last call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// A call ended by a hang-up, or `devices` listed them.
    Done,
    /// A call ended otherwise.
    Ended(EndReason),
}

impl From<EndReason> for Outcome {
    fn from(reason: EndReason) -> Self {
        match reason {
            EndReason::Hangup => Self::Done,
            reason => Self::Ended(reason),
        }
    }
}

impl Outcome {
    /// 0 hung up (or stopped by a signal, after hanging up and logging
    /// out); 10 rejected, 11 no response, 12 line busy, 13 cancelled, 14
    /// timed out, 15 kicked (logged in elsewhere, or logged out by the
    /// server's operator), 16 server shutdown, 17 connection lost, 18
    /// answered or rejected elsewhere, 19 call ended by the operator; 1 an
    /// error; 2 a usage error.
    fn exit_code(self) -> u8 {
        match self {
            Self::Done | Self::Ended(EndReason::Hangup) => 0,
            Self::Ended(EndReason::Rejected) => 10,
            Self::Ended(EndReason::NoResponse) => 11,
            Self::Ended(EndReason::LineBusy) => 12,
            Self::Ended(EndReason::Cancelled) => 13,
            Self::Ended(EndReason::TimedOut) => 14,
            Self::Ended(EndReason::Kicked | EndReason::LoggedOutByOperator) => 15,
            Self::Ended(EndReason::ServerShutdown) => 16,
            Self::Ended(EndReason::ConnectionLost) => 17,
            Self::Ended(EndReason::EndedByOperator) => 19,
            Self::Ended(_) => 18,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        // Colours only for a person at a terminal, never in files or journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "error".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("opencalling: cannot start: {error}");
            return ExitCode::FAILURE;
        }
    };
    let json = cli.json;
    match runtime.block_on(run(cli)) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(message) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "error": message, "exit_code": 1 })
                );
            }
            eprintln!("opencalling: {message}");
            ExitCode::FAILURE
        }
    }
}

/// How a bot's session ended without a call's end, if `event` says so:
/// kicked (by a login elsewhere or the operator), or the server gone for
/// good (without reconnection).
fn session_end(event: &CallingEvent) -> Option<EndReason> {
    match event {
        CallingEvent::KickedOffline => Some(EndReason::Kicked),
        CallingEvent::Error { code, .. } if *code == ErrorCode::LOGGED_OUT_BY_OPERATOR => {
            Some(EndReason::LoggedOutByOperator)
        }
        CallingEvent::Error { code, .. } if *code == ErrorCode::SERVER_SHUTDOWN => {
            Some(EndReason::ServerShutdown)
        }
        _ => None,
    }
}

/// Ctrl-C or SIGTERM (a supervisor stopping the bot).
async fn stop_signal() {
    #[cfg(unix)]
    {
        let Ok(mut term) =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> Result<Outcome, String> {
    if matches!(cli.command, Some(Command::Devices)) {
        return devices();
    }
    let devices = audio_devices(&cli.audio)?;
    let account_settings = cli.account.with_file()?;
    let (mut options, app, user, user_sig) = account(&account_settings, devices)?;
    options.voice_processing = Some(cli.audio.voice_processing(&options));
    let calling = TRTCCalling::new(options);
    let mut printer = Printer {
        json: cli.json,
        started: Instant::now(),
        events: calling.events(),
    };
    calling
        .login(app, &user, &user_sig)
        .await
        .map_err(|error| format!("cannot log in as {user}: {}", describe(&error)))?;
    let Some(command) = cli.command else {
        let server = calling.options().server;
        let outcome = phone::run(Arc::clone(&calling), printer.events, user, server).await;
        calling.shutdown().await;
        return outcome.map(|()| Outcome::Done);
    };
    printer.status(&format!("logged in as {user}"));
    let stats = cli
        .stats
        .then(|| tokio::spawn(print_stats(Arc::clone(&calling), cli.json, printer.started)));
    let bot = async {
        match command {
            Command::Answer {
                reject_from,
                reject_all,
                hang_up_after,
                calls,
            } => {
                let rule = AnswerRule {
                    reject_from,
                    reject_all,
                    hang_up_after: hang_up_after.map(Duration::from_secs),
                };
                answer(&calling, &mut printer, &rule, calls).await
            }
            Command::Call {
                users,
                hang_up_after,
                ring,
            } => {
                call(
                    &calling,
                    &mut printer,
                    &users,
                    hang_up_after.map(Duration::from_secs),
                    ring,
                )
                .await
            }
            Command::Devices => Ok(Outcome::Done),
        }
    };
    let outcome = tokio::select! {
        outcome = bot => outcome,
        () = stop_signal() => {
            // Not a crash: the peer hears a hang-up, not a lost connection.
            printer.status("stopping: hanging up and logging out");
            if calling.hangup().await.is_ok() {
                // The call's end is printed, as for any hang-up.
                let ended = async {
                    while let Some(event) = printer.next().await {
                        if matches!(event, CallingEvent::CallEnded { .. }) {
                            return;
                        }
                    }
                };
                let _ = tokio::time::timeout(Duration::from_secs(2), ended).await;
            }
            Ok(Outcome::Done)
        }
    };
    if let Some(stats) = stats {
        stats.abort();
    }
    calling.shutdown().await;
    outcome
}

/// Prints the call's statistics each second while in a call.
async fn print_stats(calling: Arc<TRTCCalling>, json: bool, started: Instant) {
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    loop {
        every_second.tick().await;
        if !matches!(calling.status().call, CallStatus::InCall { .. }) {
            continue;
        }
        let Ok(stats) = calling.call_stats().await else {
            continue;
        };
        if json {
            let ms = started.elapsed().as_millis();
            println!(
                "{}",
                serde_json::json!({ "ms": ms, "stats": stats.to_json() })
            );
        } else {
            println!(
                "[{:>7.1}s]   {}",
                started.elapsed().as_secs_f64(),
                stats_line(&stats)
            );
        }
    }
}

/// The statistics in one line for a person.
fn stats_line(stats: &CallStats) -> String {
    let figure = |value: Option<String>| value.unwrap_or_else(|| "?".into());
    let local = &stats.local;
    let mut line = format!(
        "stats: you {} (rtt {} ms, loss sent {} % received {} %, {} kbps, {} ms frames)",
        local.quality,
        figure(local.rtt_ms.map(|rtt| rtt.to_string())),
        figure(local.loss_sent_percent.map(|loss| loss.to_string())),
        figure(local.loss_received_percent.map(|loss| loss.to_string())),
        figure(local.bitrate_kbps.map(|kbps| format!("{kbps:.0}"))),
        local.frame_ms,
    );
    for member in &stats.remote {
        line.push_str(&format!(
            "; {} {} (rtt {} ms, lost {} %, jitter {} ms, {} kbps)",
            member.user_id,
            member.quality,
            figure(member.rtt_ms.map(|rtt| rtt.to_string())),
            figure(member.loss_received_percent.map(|loss| loss.to_string())),
            figure(member.jitter_ms.map(|jitter| format!("{jitter:.1}"))),
            figure(member.bitrate_kbps.map(|kbps| format!("{kbps:.0}"))),
        ));
    }
    line
}

fn describe(error: &CallingError) -> String {
    let hint = if error.code == ErrorCode::CERTIFICATE_UNTRUSTED {
        " — give the server's fingerprint with --fingerprint, or its data directory with --dev"
    } else {
        ""
    };
    format!("{} ({}){hint}", error.desc, error.code.as_i32())
}

fn devices() -> Result<Outcome, String> {
    let devices = list_audio_devices().map_err(|error| describe(&error))?;
    if devices.is_empty() {
        println!("no audio devices");
    }
    for device in devices {
        let kind = match (device.input, device.output) {
            (true, true) => "microphone, speaker",
            (true, false) => "microphone",
            (false, true) => "speaker",
            (false, false) => "neither",
        };
        println!("{}\t{kind}", device.name);
    }
    Ok(Outcome::Done)
}

/// The devices the flags ask for; a system device must exist.
fn audio_devices(audio: &Audio) -> Result<AudioDevices, String> {
    let known = |name: &str, input: bool| -> Result<(), String> {
        let devices = list_audio_devices()
            .map_err(|error| format!("unknown audio device {name:?}: {}", describe(&error)))?;
        let found = devices
            .iter()
            .any(|device| device.name == name && if input { device.input } else { device.output });
        if found {
            Ok(())
        } else {
            Err(format!(
                "unknown audio device {name:?} (see `opencalling devices`)"
            ))
        }
    };
    let capture = match (&audio.input, audio.tone, &audio.input_device) {
        (Some(path), _, _) => CaptureDevice::Wav {
            path: path.clone(),
            looping: false,
        },
        (None, Some(frequency), _) => CaptureDevice::Synthetic(Signal::Tone {
            frequency,
            amplitude: 0.3,
        }),
        (None, None, Some(name)) => {
            known(name, true)?;
            CaptureDevice::System {
                name: Some(name.clone()),
            }
        }
        (None, None, None) => CaptureDevice::System { name: None },
    };
    let playback = match (&audio.output, &audio.output_device) {
        (Some(path), _) => PlaybackDevice::Wav { path: path.clone() },
        (None, Some(name)) => {
            known(name, false)?;
            PlaybackDevice::System {
                hands_free: Some(name.clone()),
                private: Some(name.clone()),
            }
        }
        (None, None) => PlaybackDevice::System {
            hands_free: None,
            private: None,
        },
    };
    Ok(AudioDevices { capture, playback })
}

/// The SDK's options, the app, the user and its UserSig, from `--dev` or
/// the flags.
fn account(
    account: &Account,
    devices: AudioDevices,
) -> Result<(ClientOptions, u32, String, String), String> {
    let user = account
        .user
        .clone()
        .ok_or("who logs in? --user USER_ID (or OPENCALLING_USER)")?;
    let dev = match &account.dev {
        Some(dir) => Some(
            DevServer::from_data_dir(dir)
                .map_err(|error| format!("{}: {}", dir.display(), describe(&error)))?,
        ),
        None => None,
    };
    let mut options = match (&dev, &account.server) {
        (_, Some(server)) => {
            let fingerprint = account
                .fingerprint
                .or(dev.as_ref().map(|dev| dev.fingerprint));
            let mut options = ClientOptions::default();
            options.server.clone_from(server);
            if let Some(fingerprint) = fingerprint {
                options.trust = ServerTrust::Fingerprint(fingerprint);
            }
            options
        }
        (Some(dev), None) => dev.options(),
        (None, None) => return Err("which server? --server ADDR or --dev DATA_DIR".into()),
    };
    options.audio = devices;
    options.connect_timeout = Duration::from_secs(account.connect_timeout);
    options.device_id.clone_from(&account.device_id);
    options.media_encryption = MediaKeys::from_settings(
        account.media_key.as_deref(),
        None,
        account.media_identity.as_deref(),
    )
    .map_err(|error| format!("--media-key or --media-identity: {error}"))?;
    let app = account
        .app
        .or(dev.as_ref().map(|dev| dev.sdk_app_id))
        .ok_or("which app? --app SDK_APP_ID")?;
    let user_sig = match (&account.usersig, &account.secret_key, &dev) {
        (Some(sig), _, _) => sig.clone(),
        (None, Some(key), _) => {
            generate_test_user_sig(app, key, &user, Duration::from_secs(86_400))
                .map_err(|error| describe(&error))?
        }
        (None, None, Some(dev)) => dev.user_sig(&user).map_err(|error| describe(&error))?,
        (None, None, None) => return Err("no UserSig: --usersig SIG or --secret-key KEY".into()),
    };
    Ok((options, app, user, user_sig))
}

/// Prints events and the tool's own status lines.
struct Printer {
    json: bool,
    started: Instant,
    events: EventStream,
}

impl Printer {
    fn millis(&self) -> u128 {
        self.started.elapsed().as_millis()
    }

    fn status(&self, what: &str) {
        if self.json {
            println!(
                "{}",
                serde_json::json!({ "ms": self.millis(), "status": what })
            );
        } else {
            println!("[{:>7.1}s] {what}", self.started.elapsed().as_secs_f64());
        }
    }

    fn event(&self, event: &CallingEvent) {
        if self.json {
            let name = event.original_name();
            println!(
                "{}",
                serde_json::json!({ "ms": self.millis(), "callback": name, "event": event })
            );
        } else if !matches!(event, CallingEvent::UserVoiceVolume { .. }) {
            println!("[{:>7.1}s]   {event}", self.started.elapsed().as_secs_f64());
        }
    }

    /// The next event, printed; `None` once the stream ends.
    async fn next(&mut self) -> Option<CallingEvent> {
        let event = self.events.recv().await?;
        self.event(&event);
        Some(event)
    }

    /// Events until the call ends (its reason) or `hang_up_at`, when the
    /// call is hung up and its end awaited.
    async fn until_call_ends(
        &mut self,
        calling: &TRTCCalling,
        hang_up_at: Option<tokio::time::Instant>,
    ) -> Result<EndReason, String> {
        let mut hung_up = false;
        loop {
            let hang_up = async {
                match hang_up_at {
                    Some(at) if !hung_up => tokio::time::sleep_until(at).await,
                    _ => std::future::pending().await,
                }
            };
            tokio::select! {
                event = self.next() => match event {
                    Some(CallingEvent::CallEnded { reason, .. }) => return Ok(reason),
                    Some(event) => {
                        if let Some(reason) = session_end(&event) {
                            return Ok(reason);
                        }
                    }
                    None => return Err("the SDK stopped".into()),
                },
                () = hang_up => {
                    hung_up = true;
                    self.status("hanging up");
                    calling.hangup().await.map_err(|error| describe(&error))?;
                }
            }
        }
    }
}

struct AnswerRule {
    reject_from: Vec<String>,
    reject_all: bool,
    hang_up_after: Option<Duration>,
}

async fn answer(
    calling: &TRTCCalling,
    printer: &mut Printer,
    rule: &AnswerRule,
    calls: u32,
) -> Result<Outcome, String> {
    printer.status("waiting for calls");
    let mut outcome = Outcome::Done;
    let mut answered = 0;
    while answered < calls {
        let Some(event) = printer.next().await else {
            return Err("the SDK stopped".into());
        };
        if let Some(reason) = session_end(&event) {
            return Ok(Outcome::Ended(reason));
        }
        let CallingEvent::Invited { sponsor, .. } = event else {
            continue;
        };
        answered += 1;
        if rule.reject_all || rule.reject_from.iter().any(|user| user == sponsor.as_str()) {
            printer.status(&format!("rejecting {sponsor}"));
            calling.reject().await.map_err(|error| describe(&error))?;
            outcome = Outcome::Ended(EndReason::Rejected);
            continue;
        }
        printer.status(&format!("answering {sponsor}"));
        if let Err(error) = calling.accept().await {
            // The caller gave up in the meantime: the events say how.
            printer.status(&format!("cannot answer: {}", describe(&error)));
            continue;
        }
        let hang_up_at = rule
            .hang_up_after
            .map(|after| tokio::time::Instant::now() + after);
        outcome = printer.until_call_ends(calling, hang_up_at).await?.into();
    }
    Ok(outcome)
}

async fn call(
    calling: &TRTCCalling,
    printer: &mut Printer,
    users: &[String],
    hang_up_after: Option<Duration>,
    ring: Option<u32>,
) -> Result<Outcome, String> {
    let options = calling_facade::CallOptions {
        timeout_ms: ring.map(|secs| secs.saturating_mul(1_000)),
        user_data: None,
    };
    for user in users {
        printer.status(&format!("calling {user}"));
        calling
            .call_with(user, CallType::Audio, options.clone())
            .await
            .map_err(|error| format!("cannot call {user}: {}", describe(&error)))?;
    }
    // The hang-up clock starts when someone enters.
    let mut hang_up_at = None;
    loop {
        let hang_up = async {
            match hang_up_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            event = printer.next() => match event {
                Some(CallingEvent::UserEnter { .. }) if hang_up_at.is_none() => {
                    hang_up_at = hang_up_after.map(|after| tokio::time::Instant::now() + after);
                }
                Some(CallingEvent::CallEnded { reason, .. }) => return Ok(reason.into()),
                Some(event) => {
                    if let Some(reason) = session_end(&event) {
                        return Ok(Outcome::Ended(reason));
                    }
                }
                None => return Err("the SDK stopped".into()),
            },
            () = hang_up => {
                return Ok(printer.until_call_ends(calling, hang_up_at).await?.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way a call ends has its own exit code, as documented.
    #[test]
    fn every_end_reason_has_its_exit_code() {
        let codes: Vec<u8> = [
            EndReason::Rejected,
            EndReason::NoResponse,
            EndReason::LineBusy,
            EndReason::Cancelled,
            EndReason::TimedOut,
            EndReason::Kicked,
            EndReason::ServerShutdown,
            EndReason::ConnectionLost,
            EndReason::AnsweredElsewhere,
            EndReason::EndedByOperator,
        ]
        .into_iter()
        .map(|reason| Outcome::Ended(reason).exit_code())
        .collect();
        assert_eq!(codes, [10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
        assert_eq!(Outcome::Ended(EndReason::Hangup).exit_code(), 0);
    }
}
