//! OpenCalling's fuzzing harness, on stable Rust: no sanitizer runtime, no
//! nightly, just seeded random and mutated input for a time budget, to
//! every decoder that reads bytes from outside (frames, messages, the
//! handshake, datagrams, loss reports, the login check, UserSigs, the
//! server's TOML file) and to the switchboard as random message sequences
//! from many connections, with its invariants checked after every input.
//!
//! `cargo xtask ci` runs it for a few seconds; `cargo xtask fuzz [SECONDS]`
//! for longer (release build). A failure prints the target, the run's seed
//! and the failing case's, with the panic message, and exits non-zero:
//! `--seed` reruns the same cases in the same order.
//! Decoders may refuse anything; they may never panic or hang, and the
//! switchboard may never break an invariant.
//!
//! ```text
//! calling-fuzz [--seconds N] [--seed S]
//! ```

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;
use std::time::{Duration, Instant};

use calling_api::{CallId, CallType, DeviceId, ErrorCode, UserId};
use signaling_proto::SplitMix64;
use signaling_proto::frame::{FrameDecoder, decode_payload, frame_to_vec, handshake_version};
use signaling_proto::{
    ClientMessage, ConnId, Credentials, DatagramKind, DeviceLogin, FlowId, LoginRefusal,
    LossReport, MediaEncryption, MediaHeader, PROTOCOL_VERSION, RequestId, ServerMessage,
    Switchboard, SwitchboardConfig, UserSig, check_login,
};

fn main() -> ExitCode {
    let mut seconds = 10.0_f64;
    let mut seed = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let value = args.next();
        match (arg.as_str(), value.as_deref().map(str::parse::<f64>)) {
            ("--seconds", Some(Ok(value))) => seconds = value,
            ("--seed", Some(Ok(value))) => seed = Some(value as u64),
            _ => {
                eprintln!("usage: calling-fuzz [--seconds N] [--seed S]");
                return ExitCode::FAILURE;
            }
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |since| since.as_nanos() as u64)
    });
    let targets: [(&str, Target); 6] = [
        ("frames", fuzz_frames),
        ("handshake and login", fuzz_login),
        ("datagrams", fuzz_datagrams),
        ("usersig", fuzz_usersig),
        ("config file", fuzz_config),
        ("switchboard", fuzz_switchboard),
    ];
    let corpus = corpus();
    // Failures are reported below, with their seed: no backtrace noise.
    std::panic::set_hook(Box::new(|_| {}));
    let budget = Duration::from_secs_f64(seconds / targets.len() as f64);
    println!(
        "calling-fuzz: seed {seed}, {seconds} s over {} targets",
        targets.len()
    );
    for (index, (name, target)) in targets.iter().enumerate() {
        let started = Instant::now();
        let mut runs = 0_u64;
        let mut rng = SplitMix64::new(seed ^ (index as u64).wrapping_mul(0x9e37_79b9));
        while started.elapsed() < budget {
            let case_seed = rng.next_u64();
            let mut case = SplitMix64::new(case_seed);
            let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                target(&mut case, &corpus)
            }));
            if let Err(panic) = result {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|text| (*text).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                eprintln!(
                    "calling-fuzz: {name} FAILED (run seed {seed}, case seed {case_seed}): {message}"
                );
                return ExitCode::FAILURE;
            }
            runs += 1;
        }
        println!("  {name:<20} {runs:>9} cases, no failure");
    }
    println!("fuzz: {} passed, 0 failed", targets.len());
    ExitCode::SUCCESS
}

/// One fuzz target: runs a case drawn from the generator (and the corpus
/// of valid encodings) and returns its input, for the report.
type Target = fn(&mut SplitMix64, &[Vec<u8>]) -> Vec<u8>;

fn user(id: &str) -> UserId {
    UserId::new(id).unwrap_or_else(|error| panic!("test user id: {error}"))
}

/// Valid encodings to mutate: every kind of frame the peers exchange.
fn corpus() -> Vec<Vec<u8>> {
    let client = [
        ClientMessage::Login {
            protocol_version: PROTOCOL_VERSION,
            sdk_app_id: 1_400_000_000,
            user_id: user("alice"),
            user_sig: "sig".into(),
            device_id: None,
            media_encryption: signaling_proto::MediaEncryption::None,
        },
        ClientMessage::Invite {
            request_id: RequestId(2),
            call_id: Some(CallId(1 << 40 | 7)),
            user_ids: vec![user("bob"), user("carol")],
            call_type: CallType::Video,
            timeout_ms: Some(30_000),
            user_data: Some("data".into()),
        },
        ClientMessage::Accept {
            request_id: RequestId(3),
            call_id: CallId(1),
        },
        ClientMessage::Hangup {
            request_id: RequestId(4),
        },
        ClientMessage::Microphone { muted: true },
        ClientMessage::Ping { nonce: u64::MAX },
        ClientMessage::MemberKey {
            to: user("bob"),
            payload: vec![1, 0, 0xaa],
        },
    ];
    let server = [
        ServerMessage::Invited {
            call_id: CallId(9),
            sponsor: user("alice"),
            user_ids: vec![user("bob")],
            call_type: CallType::Audio,
            user_data: None,
            timeout_ms: 600_000,
        },
        ServerMessage::Error {
            request_id: Some(RequestId(2)),
            code: ErrorCode::CANNOT_CALL_SELF,
            message: "no".into(),
        },
    ];
    let mut corpus: Vec<Vec<u8>> = client
        .iter()
        .filter_map(|message| frame_to_vec(message).ok())
        .chain(
            server
                .iter()
                .filter_map(|message| frame_to_vec(message).ok()),
        )
        .collect();
    let mut datagram = [0_u8; 64];
    let header = MediaHeader {
        kind: DatagramKind::Audio,
        flow_id: FlowId(300),
        sequence: 0xdead_beef,
        timestamp: 960,
        voice_activity: true,
        level_dbov: 42,
    };
    if let Ok(len) = header.encode(b"opus payload", &mut datagram) {
        corpus.push(datagram[..len].to_vec());
    }
    corpus
}

/// A random mutation of a random corpus entry, or random bytes.
fn mutated(rng: &mut SplitMix64, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut bytes = if rng.below(8) == 0 || corpus.is_empty() {
        (0..rng.below(64)).map(|_| rng.next_u64() as u8).collect()
    } else {
        corpus[rng.below(corpus.len() as u64) as usize].clone()
    };
    for _ in 0..=rng.below(4) {
        let len = bytes.len() as u64;
        match rng.below(6) {
            0 if len > 0 => {
                let at = rng.below(len) as usize;
                bytes[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let at = rng.below(len) as usize;
                bytes[at] = rng.next_u64() as u8;
            }
            2 => {
                let at = rng.below(len + 1) as usize;
                bytes.insert(at, rng.next_u64() as u8);
            }
            3 if len > 0 => {
                bytes.remove(rng.below(len) as usize);
            }
            4 => bytes.truncate(rng.below(len + 1) as usize),
            _ => {
                let other = &corpus[rng.below(corpus.len() as u64) as usize];
                let at = rng.below(other.len() as u64 + 1) as usize;
                bytes.extend_from_slice(&other[at..]);
            }
        }
    }
    bytes
}

/// The frame decoder over a stream cut at random, then each payload as
/// every message type.
fn fuzz_frames(rng: &mut SplitMix64, corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut stream = Vec::new();
    for _ in 0..=rng.below(3) {
        stream.extend(mutated(rng, corpus));
    }
    let mut decoder = FrameDecoder::new();
    let mut at = 0;
    while at < stream.len() {
        let step = (1 + rng.below(32) as usize).min(stream.len() - at);
        decoder.push(&stream[at..at + step]);
        at += step;
        while let Ok(Some(payload)) = decoder.next_frame() {
            let _ = decode_payload::<ClientMessage>(&payload);
            let _ = decode_payload::<ServerMessage>(&payload);
            let _ = handshake_version(&payload);
        }
    }
    let _ = decoder.finish();
    stream
}

/// A deployment for the login check: app 1400000000, UserSig "ok".
struct Fuzzed;

impl Credentials for Fuzzed {
    fn serves_app(&self, sdk_app_id: u32) -> bool {
        sdk_app_id == 1_400_000_000
    }

    fn verify(&self, _: u32, _: &UserId, user_sig: &UserSig) -> Result<(), LoginRefusal> {
        if user_sig.0 == "ok" {
            Ok(())
        } else {
            Err(LoginRefusal::new(ErrorCode::USERSIG_BAD_SIGNATURE, "no"))
        }
    }
}

fn fuzz_login(rng: &mut SplitMix64, corpus: &[Vec<u8>]) -> Vec<u8> {
    let bytes = mutated(rng, corpus);
    let payload = bytes.get(4..).unwrap_or(&bytes);
    let _ = check_login(payload, &Fuzzed);
    bytes
}

fn fuzz_datagrams(rng: &mut SplitMix64, corpus: &[Vec<u8>]) -> Vec<u8> {
    let bytes = mutated(rng, corpus);
    if let Ok((header, payload)) = MediaHeader::decode(&bytes) {
        let _ = LossReport::from_payload(payload);
        // What decodes re-encodes, and decodes back to the same (the bytes
        // may differ: a flow id varint with redundant zero groups decodes).
        let mut out = vec![0; bytes.len() + 16];
        let len = header
            .encode(payload, &mut out)
            .unwrap_or_else(|error| panic!("a decoded header does not encode: {error}"));
        let again = MediaHeader::decode(&out[..len])
            .unwrap_or_else(|error| panic!("a re-encoded header does not decode: {error}"));
        assert_eq!(
            again,
            (header, payload),
            "decode, encode, decode changed it"
        );
    }
    bytes
}

fn fuzz_usersig(rng: &mut SplitMix64, _: &[Vec<u8>]) -> Vec<u8> {
    const KEY: &str = "fuzz-key";
    let now = 1_700_000_000;
    let valid = calling_usersig::generate(1_400_000_000, KEY, "alice", 86_400, now, None);
    let mut bytes = valid.into_bytes();
    let corpus = [bytes.clone()];
    bytes = mutated(rng, &corpus);
    let text = String::from_utf8_lossy(&bytes);
    if let Ok(claims) = calling_usersig::verify(&text, 1_400_000_000, KEY, "alice", now) {
        let _ = calling_usersig::TimeBounds::DEFAULT.check(&claims, now);
    }
    bytes
}

fn fuzz_config(rng: &mut SplitMix64, _: &[Vec<u8>]) -> Vec<u8> {
    let valid = b"listen = \"127.0.0.1:5000\"\ninvite_timeout_secs = 20\n[limits]\nmax_connections = 100\nrequest_burst = 300\n[[apps]]\nsdk_app_id = 7\nsecret_key = \"k\"\n";
    let bytes = mutated(rng, &[valid.to_vec()]);
    let text = String::from_utf8_lossy(&bytes);
    if let Ok(settings) = toml::from_str::<calling_server::Settings>(&text) {
        let _ = settings.resolve();
    }
    bytes
}

/// Random messages from random connections, logins and disconnects, and
/// time jumps, with every invariant checked after every input.
#[allow(
    clippy::too_many_lines,
    reason = "one match arm per kind of input: splitting it hides which inputs exist"
)]
fn fuzz_switchboard(rng: &mut SplitMix64, _: &[Vec<u8>]) -> Vec<u8> {
    let users = ["u0", "u1", "u2", "u3", "u4"];
    let origin = Instant::now();
    let mut now = origin;
    let mut switchboard = Switchboard::new(SwitchboardConfig {
        max_call_size: 4,
        invitations_per_minute: 30,
        max_ringing_per_session: 3,
        ..SwitchboardConfig::DEFAULT
    });
    let mut trace = Vec::new();
    let mut known_calls = vec![CallId(1)];
    for _ in 0..200 {
        let conn = ConnId(rng.below(8));
        let pick = |rng: &mut SplitMix64| user(users[rng.below(users.len() as u64) as usize]);
        let request_id = RequestId(rng.below(4) as u32);
        let call_id = known_calls[rng.below(known_calls.len() as u64) as usize];
        let action = rng.below(15);
        trace.push(action as u8);
        match action {
            0 => {
                // No device, or one of three, under an app's limit of 1 to 3.
                let device = ["d0", "d1", "d2"]
                    .get(rng.below(4) as usize)
                    .and_then(|name| DeviceId::new(*name).ok());
                // Devices that encrypt end to end and devices that do not.
                let media_encryption = match rng.below(8) {
                    0 => MediaEncryption::AppKeys,
                    1 => MediaEncryption::BuiltIn,
                    _ => MediaEncryption::None,
                };
                let login = DeviceLogin {
                    device,
                    max_devices: 1 + rng.below(3) as usize,
                    media_encryption,
                };
                let version = 1 + rng.below(PROTOCOL_VERSION.into()) as u16;
                switchboard.handle_device_login(now, conn, pick(rng), version, login);
            }
            1 => switchboard.handle_disconnect(now, conn),
            2 => now += Duration::from_millis(rng.below(40_000)),
            3 => switchboard.handle_timeout(now),
            4 => {
                let invitees = (0..=rng.below(5)).map(|_| pick(rng)).collect();
                let into_call = (rng.below(2) == 0).then_some(call_id);
                let message = ClientMessage::Invite {
                    request_id,
                    call_id: into_call,
                    user_ids: invitees,
                    call_type: if rng.below(4) == 0 {
                        CallType::Video
                    } else {
                        CallType::Audio
                    },
                    timeout_ms: [None, Some(0), Some(1), Some(u32::MAX)][rng.below(4) as usize],
                    user_data: (rng.below(8) == 0).then(|| "x".repeat(rng.below(5_000) as usize)),
                };
                switchboard.handle_message(now, conn, message);
            }
            5 => switchboard.handle_message(
                now,
                conn,
                ClientMessage::Accept {
                    request_id,
                    call_id,
                },
            ),
            6 => switchboard.handle_message(
                now,
                conn,
                ClientMessage::Reject {
                    request_id,
                    call_id,
                },
            ),
            7 => switchboard.handle_message(now, conn, ClientMessage::Hangup { request_id }),
            8 => switchboard.handle_message(now, conn, ClientMessage::Logout { request_id }),
            9 => switchboard.handle_message(
                now,
                conn,
                ClientMessage::Microphone {
                    muted: rng.below(2) == 0,
                },
            ),
            10 => switchboard.shutdown(now),
            11 => {
                let _ = switchboard.handle_resume(now, conn);
            }
            12 => switchboard.handle_expelled(now, conn),
            13 => switchboard.handle_message(
                now,
                conn,
                ClientMessage::MemberKey {
                    to: pick(rng),
                    payload: vec![1; rng.below(1_100) as usize],
                },
            ),
            _ => switchboard.handle_message(
                now,
                conn,
                ClientMessage::Login {
                    protocol_version: PROTOCOL_VERSION,
                    sdk_app_id: 1,
                    user_id: pick(rng),
                    user_sig: "s".into(),
                    device_id: None,
                    media_encryption: signaling_proto::MediaEncryption::None,
                },
            ),
        }
        while let Some(output) = switchboard.poll_output() {
            if let signaling_proto::Output::Send {
                message:
                    ServerMessage::Ack {
                        call_id: Some(call),
                        ..
                    },
                ..
            } = output
                && !known_calls.contains(&call)
            {
                known_calls.push(call);
            }
        }
        if let Err(broken) = switchboard.check_invariants() {
            panic!("switchboard invariant broken: {broken}");
        }
    }
    trace
}
