//! Benchmark of the switchboard's call logic: a full call (invite, ring,
//! accept, enter, hang up) driven straight through `Switchboard`, beside the
//! baseline of merely encoding and decoding that call's messages, measured
//! in the same run. `cargo xtask bench` runs it.
//!
//! Arguments: `[users] [calls]` (default 10000 users, 200000 calls).

#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use calling_api::{CallType, UserId};
use signaling_proto::frame::{decode_payload, encode_frame};
use signaling_proto::{
    ClientMessage, ConnId, Output, PROTOCOL_VERSION, RequestId, ServerMessage, Switchboard,
    SwitchboardConfig,
};

fn main() {
    let mut args = std::env::args().skip(1).map(|arg| arg.parse::<usize>());
    let users = args.next().and_then(Result::ok).unwrap_or(10_000).max(2);
    let calls = args.next().and_then(Result::ok).unwrap_or(200_000).max(1);

    let ids: Vec<UserId> = (0..users)
        .filter_map(|n| UserId::new(format!("user{n}")).ok())
        .collect();
    let origin = Instant::now();
    let mut switchboard = Switchboard::new(SwitchboardConfig::default());
    for (n, id) in ids.iter().enumerate() {
        switchboard.handle_login(origin, ConnId(n as u64), id.clone(), PROTOCOL_VERSION);
    }
    while switchboard.poll_output().is_some() {}

    // Warm up, then measure each side twice, interleaved, keeping the best.
    let mut best_switchboard = Duration::MAX;
    let mut best_codec = Duration::MAX;
    let mut sent = 0;
    for _ in 0..2 {
        let (elapsed, messages) = run_calls(&mut switchboard, &ids, calls, origin);
        best_switchboard = best_switchboard.min(elapsed);
        sent = messages;
        best_codec = best_codec.min(codec_baseline(&ids, calls));
    }
    let per_call = best_switchboard.as_secs_f64() * 1e6 / calls as f64;
    let codec_per_call = best_codec.as_secs_f64() * 1e6 / calls as f64;
    println!("switchboard benchmark: {users} logged-in users, {calls} calls, best of 2");
    println!(
        "  call logic (invite → ring → accept → enter → hangup): {per_call:.2} µs per call, {:.0} calls/s",
        1e6 / per_call
    );
    println!(
        "  baseline (encode + decode that call's {} messages):  {codec_per_call:.2} µs per call",
        sent / calls
    );
    println!(
        "  ratio call logic / codec baseline: {:.2}x",
        per_call / codec_per_call
    );
    if let Err(broken) = switchboard.check_invariants() {
        println!("  INVARIANT BROKEN after the run: {broken}");
        std::process::exit(1);
    }
}

fn run_calls(
    switchboard: &mut Switchboard,
    ids: &[UserId],
    calls: usize,
    origin: Instant,
) -> (Duration, usize) {
    let mut messages = 0;
    let started = Instant::now();
    for n in 0..calls {
        let caller = (2 * n) % ids.len();
        let callee = (2 * n + 1) % ids.len();
        let now = origin + Duration::from_millis(n as u64);
        let request = RequestId(n as u32);
        switchboard.handle_message(
            now,
            ConnId(caller as u64),
            ClientMessage::Invite {
                request_id: request,
                call_id: None,
                user_ids: vec![ids[callee].clone()],
                call_type: CallType::Audio,
                timeout_ms: None,
                user_data: None,
            },
        );
        let mut call_id = None;
        while let Some(output) = switchboard.poll_output() {
            if let Output::Send {
                message: ServerMessage::Invited { call_id: id, .. },
                ..
            } = &output
            {
                call_id = Some(*id);
            }
            messages += usize::from(matches!(output, Output::Send { .. }));
        }
        let Some(call_id) = call_id else {
            panic!("call {n} did not ring");
        };
        switchboard.handle_message(
            now,
            ConnId(callee as u64),
            ClientMessage::Accept {
                request_id: request,
                call_id,
            },
        );
        switchboard.handle_message(
            now,
            ConnId(caller as u64),
            ClientMessage::Hangup {
                request_id: request,
            },
        );
        while let Some(output) = switchboard.poll_output() {
            // Membership outputs are the relay's, not messages on the wire.
            messages += usize::from(matches!(output, Output::Send { .. }));
            black_box(output);
        }
    }
    (started.elapsed(), messages)
}

/// Encodes and decodes the frames of one call, as the glue would: the floor
/// any call logic sits on.
fn codec_baseline(ids: &[UserId], calls: usize) -> Duration {
    let mut buffer = Vec::with_capacity(256);
    let started = Instant::now();
    for n in 0..calls {
        let caller = ids[(2 * n) % ids.len()].clone();
        let callee = ids[(2 * n + 1) % ids.len()].clone();
        let request_id = RequestId(n as u32);
        let call_id = calling_api::CallId(n as u64);
        let client = [
            ClientMessage::Invite {
                request_id,
                call_id: None,
                user_ids: vec![callee.clone()],
                call_type: CallType::Audio,
                timeout_ms: None,
                user_data: None,
            },
            ClientMessage::Accept {
                request_id,
                call_id,
            },
            ClientMessage::Hangup { request_id },
        ];
        let server = [
            ServerMessage::Ack {
                request_id,
                call_id: Some(call_id),
            },
            ServerMessage::Invited {
                call_id,
                sponsor: caller.clone(),
                user_ids: Vec::new(),
                call_type: CallType::Audio,
                user_data: None,
                timeout_ms: 30_000,
            },
            ServerMessage::Ack {
                request_id,
                call_id: Some(call_id),
            },
            ServerMessage::UserEntered {
                call_id,
                user_id: callee.clone(),
                flow_id: signaling_proto::FlowId(2),
                audio_available: true,
            },
            ServerMessage::UserEntered {
                call_id,
                user_id: caller,
                flow_id: signaling_proto::FlowId(1),
                audio_available: true,
            },
            ServerMessage::Ack {
                request_id,
                call_id: Some(call_id),
            },
            ServerMessage::CallEnded {
                call_id,
                reason: calling_api::EndReason::Hangup,
            },
            ServerMessage::UserLeft {
                call_id,
                user_id: callee,
            },
            ServerMessage::CallEnded {
                call_id,
                reason: calling_api::EndReason::Hangup,
            },
        ];
        for message in &client {
            buffer.clear();
            let _ = encode_frame(message, &mut buffer);
            black_box(decode_payload::<ClientMessage>(&buffer[4..]).ok());
        }
        for message in &server {
            buffer.clear();
            let _ = encode_frame(message, &mut buffer);
            black_box(decode_payload::<ServerMessage>(&buffer[4..]).ok());
        }
    }
    started.elapsed()
}
