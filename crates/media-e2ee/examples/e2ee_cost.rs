//! What end-to-end encryption costs a call: the bytes sealing adds to each
//! packet (and their share of a 32 kbit/s stream), and the CPU time of
//! sealing and opening a frame beside the time the SDK's send path takes
//! to encode it.
//!
//! `cargo run --release -p media-e2ee --example e2ee_cost -- [SECONDS]`
//! (default 60 s of audio, three rounds; `cargo xtask bench` runs it).
//!
//! The send path is the SDK's own (`audio_pipeline::SendPath`, its default
//! encoder: 32 kbit/s, complexity 9, in-band FEC, 20 ms frames) fed a
//! voice-like signal; the sealer and opener are the SDK's, with the media
//! header as the SDK writes it in front. Every figure comes from this one
//! run on this machine; the ratio is what compares.

#![allow(clippy::print_stdout, clippy::unwrap_used)]

use std::time::{Duration, Instant};

use audio_pipeline::{EncoderConfig, SendPath};
use media_e2ee::{FrameOpener, FrameSealer, Identity, MediaKey, MediaKeys, SenderKey};

/// A voice-like signal: 12 harmonics of 140 Hz, swelling 4 times a second.
fn voice(n: usize) -> f32 {
    let t = n as f32 / 48_000.0;
    let swell = 0.6 + 0.4 * (std::f32::consts::TAU * 4.0 * t).sin();
    (1..=12)
        .map(|harmonic| {
            (std::f32::consts::TAU * 140.0 * harmonic as f32 * t).sin() / harmonic as f32
        })
        .sum::<f32>()
        * 0.1
        * swell
}

/// The packets the SDK's send path makes of `seconds` of voice, and the
/// time it took.
fn encode(seconds: usize) -> (Vec<Vec<u8>>, Duration) {
    let mut send = SendPath::new(48_000, 1, EncoderConfig::default()).unwrap();
    send.set_measured_loss(10.0).unwrap();
    let mut chunk = [0.0_f32; 480];
    let mut packets = Vec::with_capacity(seconds * 50);
    let mut took = Duration::ZERO;
    for read in 0..seconds * 100 {
        for (i, sample) in chunk.iter_mut().enumerate() {
            *sample = voice(read * 480 + i);
        }
        let started = Instant::now();
        send.push_capture(&chunk);
        while let Some(captured) = send.next_frame().unwrap() {
            if let Some(frame) = captured.frame() {
                packets.push(frame.payload.to_vec());
            }
        }
        took += started.elapsed();
    }
    (packets, took)
}

fn main() {
    let seconds: usize = std::env::args()
        .nth(1)
        .map_or(60, |arg| arg.parse().unwrap());
    let keys = MediaKeys::Shared(MediaKey::new([7; 32]).unwrap());
    // The media header as the SDK sends it: audio, flow 0, 11 bytes.
    let header = [0x10, 0, 0, 0, 0, 1, 0, 0, 3, 0xc0, 0x1e];
    let mut ratios = Vec::new();
    for round in 1..=3 {
        let (packets, encoding) = encode(seconds);
        let mut sealer = FrameSealer::new(&keys, "alice", 0).unwrap();
        let mut opener = FrameOpener::new();
        opener
            .add_key(
                &keys.key_of("alice").unwrap(),
                "alice",
                &sealer.announcement(),
            )
            .unwrap();
        let mut sealed_all = Vec::with_capacity(packets.len());
        let started = Instant::now();
        for packet in &packets {
            sealed_all.push(sealer.seal(&header, packet).unwrap().len());
        }
        let sealing = started.elapsed();
        // Opening needs the sealed bytes: seal again with a fresh key,
        // untimed, then time the opening alone.
        let mut again = FrameSealer::new(&keys, "alice", 1).unwrap();
        opener
            .add_key(
                &keys.key_of("alice").unwrap(),
                "alice",
                &again.announcement(),
            )
            .unwrap();
        let sealed: Vec<Vec<u8>> = packets
            .iter()
            .map(|packet| again.seal(&header, packet).unwrap()[header.len()..].to_vec())
            .collect();
        let started = Instant::now();
        for frame in &sealed {
            assert!(opener.open(&header, frame).is_ok());
        }
        let opening = started.elapsed();
        let frames = packets.len() as f64;
        let per_frame = |took: Duration| took.as_secs_f64() * 1e6 / frames;
        let payload: usize = packets.iter().map(Vec::len).sum();
        let added: usize = sealed_all
            .iter()
            .zip(&packets)
            .map(|(sealed, packet)| sealed - header.len() - packet.len())
            .sum();
        let ratio = (per_frame(sealing) + per_frame(opening)) / per_frame(encoding);
        ratios.push(ratio);
        println!(
            "round {round}: {} frames; encode {:.1} µs/frame, seal {:.2} µs, open {:.2} µs: seal + open = {:.2} % of encode; \
             Opus {:.1} B/packet, sealing adds {:.2} B/packet on average over {seconds} s",
            packets.len(),
            per_frame(encoding),
            per_frame(sealing),
            per_frame(opening),
            100.0 * ratio,
            payload as f64 / frames,
            added as f64 / frames,
        );
    }
    ratios.sort_by(f64::total_cmp);
    println!(
        "median: seal + open = {:.2} % of the send path's encode",
        100.0 * ratios[1]
    );
    // What a packet carries at each length of the SFrame counter, at 50
    // packets a second (20 ms frames).
    for (counter_bytes, lasts) in [
        (0, "the first 8 packets (0.16 s)"),
        (1, "to 5.1 s"),
        (2, "to 22 minutes"),
        (3, "to 3.8 days"),
    ] {
        let added = 1 + counter_bytes + media_e2ee::TAG_LEN;
        let kbps = f64::from(u32::try_from(added * 8 * 50).unwrap()) / 1000.0;
        println!(
            "{added} B/packet {lasts}: {kbps:.1} kbit/s, +{:.1} % on a 32 kbit/s stream",
            100.0 * kbps / 32.0
        );
    }
    built_in_keys();
}

/// Built-in keys: what one member costs a sender at each new key (a key
/// word sealed and opened), and a safety number, beside one 20 ms frame's
/// encode.
fn built_in_keys() {
    let (alice, bob) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let words = 200;
    let key = SenderKey::random(0).unwrap();
    let started = Instant::now();
    let sealed: Vec<Vec<u8>> = (0..words)
        .map(|_| {
            alice
                .seal_key("alice", "bob", bob.public_key(), &key)
                .unwrap()
        })
        .collect();
    let sealing = started.elapsed() / words;
    let started = Instant::now();
    for word in &sealed {
        assert!(
            bob.open_key("bob", "alice", alice.public_key(), word)
                .is_ok()
        );
    }
    let opening = started.elapsed() / words;
    let started = Instant::now();
    let numbers = 20;
    for _ in 0..numbers {
        std::hint::black_box(alice.safety_number("alice", "bob", bob.public_key()));
    }
    let numbering = started.elapsed() / numbers;
    let (_, encoding) = encode(2);
    let frame = encoding / 100;
    println!(
        concat!(
            "built-in keys: a key word ({} B, plus the {} B identity word once per call) ",
            "seals in {:?} and opens in {:?} ({:.1} and {:.1} frames' encode) per member and new key; ",
            "a safety number takes {:?}, once per member and call"
        ),
        media_e2ee::KEY_WORD_LEN,
        media_e2ee::IDENTITY_WORD_LEN,
        sealing,
        opening,
        sealing.as_secs_f64() / frame.as_secs_f64(),
        opening.as_secs_f64() / frame.as_secs_f64(),
        numbering,
    );
}
