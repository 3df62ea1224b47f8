//! Audio benchmarks, run by `cargo xtask bench`:
//!
//! - CPU per 20 ms frame of the send path (resample, level, Opus encode) and
//!   of the receive path (packet ring, jitter buffer, decode, mix), each as a
//!   ratio to raw libopus encode / decode measured in the same run;
//! - what each decoder complexity costs per frame (classic, Deep PLC,
//!   LACE, NoLACE);
//! - wideband PESQ and STOI of the speech fixtures through encoder →
//!   emulated network → jitter buffer → decoder (pulled 5 ms at a time, as
//!   playout does) at 0, 5, 10, 20 % random loss, one bursty pattern and
//!   40 ms of jitter, each under several loss patterns (seeds), negotiated
//!   as a call negotiates (the receiver's loss meter reports once a second,
//!   the sender's `SendPolicy` picks FEC or DRED and the loss hint: nothing
//!   fixed in advance), in a call's steady state: each fixture twice in a
//!   row through one path, the second pass scored; the "cold" column plays
//!   it once from the call's start. The path's loss pattern starts over
//!   with the scored speech in every run, so cold and warm, ours and plain,
//!   meet the same losses. Our columns: each decoder complexity, without
//!   time-scaling, the low-latency profile's 10 ms frames, a fixed 80 ms
//!   delay, cold, FEC only and DRED only; beside plain libopus (FEC from
//!   the next packet when it arrived, PLC otherwise, no clock) at 48 kHz in
//!   20 and 10 ms frames, with DRED instead of FEC (each lost frame from the
//!   DRED of the first packet after it, within four packets) at the bitrate
//!   setting and at equal bits, with FEC and the ML decoder (Deep PLC,
//!   NoLACE), and at the talkers' own 16 kHz — the plain ones told the
//!   path's true loss; each output aligned to the original utterance by
//!   utterance (a jitter buffer may move its delay in a pause); each
//!   target met or missed; and what each protection puts on the wire;
//! - what DRED costs to encode and to recover a frame from.
//!
//! BENCH_AUDIO_ONLY=TEXT runs only the conditions whose name holds TEXT,
//! without the CPU figures; BENCH_AUDIO_SEEDS=N sets the loss patterns.
//!
//! usage: bench_audio FIXTURE_DIR OUT_DIR [PYTHON]  (PYTHON: a python with
//! numpy, pesq and pystoi; without it the scoring part only writes the WAV
//! files).

#![allow(clippy::print_stdout, clippy::unwrap_used)]

mod support;

use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use audio_pipeline::netem::{Netem, NetemConfig};
use audio_pipeline::{
    DEFAULT_DECODER_COMPLEXITY, Decoder, EncoderConfig, FRAME_SAMPLES, FrameDuration, JitterConfig,
    LossMeter, MAX_PACKET, MIN_DRED_COMPLEXITY, MediaPacket, PULL_SAMPLES, Protection, ReceivePath,
    ReceiverSays, Resampler, SendPath, SendPolicy,
};
use support::{global_lag, load_48k, pesq, write};

/// 16 kHz speech at 48 kHz, through the resampler a 16 kHz capture device
/// goes through in our sender.
fn upsample_16k(samples: &[f32]) -> Vec<f32> {
    let mut up = Resampler::new(16_000, 1, 48_000, 1, 160).unwrap();
    up.push(samples);
    up.push(&vec![0.0; 1_600]);
    let mut at_48k = vec![0.0; up.available_frames()];
    up.pop(&mut at_48k);
    at_48k
}

fn per_frame_micros(elapsed: Duration, frames: usize) -> f64 {
    elapsed.as_secs_f64() * 1e6 / frames as f64
}

fn cpu(speech: &[f32]) {
    let frames: Vec<[f32; FRAME_SAMPLES]> = speech
        .chunks_exact(FRAME_SAMPLES)
        .map(|chunk| chunk.try_into().unwrap())
        .collect();
    let rounds = 3_000 / frames.len().max(1) + 1;
    let total = frames.len() * rounds;
    let mut best = [Duration::MAX; 4];
    for _ in 0..3 {
        // Raw libopus encode, the same settings.
        let mut raw =
            opus::Encoder::new(48_000, opus::Channels::Mono, opus::Application::Voip).unwrap();
        raw.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
        raw.set_complexity(9).unwrap();
        raw.set_inband_fec(true).unwrap();
        // Our encoder's hint on a clean link.
        raw.set_packet_loss_perc(0).unwrap();
        let mut packet = [0_u8; MAX_PACKET];
        let mut packets = Vec::with_capacity(total);
        let started = Instant::now();
        for frame in frames.iter().cycle().take(total) {
            let len = raw.encode_float(frame, &mut packet).unwrap();
            packets.push(packet[..len].to_vec());
        }
        best[0] = best[0].min(started.elapsed());

        let mut send = SendPath::new(48_000, 1, EncoderConfig::default()).unwrap();
        let started = Instant::now();
        for frame in frames.iter().cycle().take(total) {
            send.push_capture(frame);
            while let Some(out) = send.next_frame().unwrap() {
                black_box(out);
            }
        }
        best[1] = best[1].min(started.elapsed());

        // Raw libopus decode with the receive path's settings (its decoder
        // complexity: the neural enhancement is libopus's own work).
        let mut decoder = Decoder::new().unwrap();
        let mut pcm = [0.0_f32; FRAME_SAMPLES];
        let started = Instant::now();
        for packet in &packets {
            decoder.decode(packet, &mut pcm).unwrap();
            black_box(&pcm);
        }
        best[2] = best[2].min(started.elapsed());

        let started = Instant::now();
        receive_speakers(&packets, 1, DEFAULT_DECODER_COMPLEXITY);
        best[3] = best[3].min(started.elapsed());
    }
    let [encode, send, decode, receive] = best.map(|elapsed| per_frame_micros(elapsed, total));
    println!("CPU per 20 ms frame, {total} frames of speech, best of 3");
    println!("  raw libopus encode           {encode:>7.1} µs");
    println!(
        "  send path (level+mute+encode){send:>7.1} µs   {:.2}x raw encode (target <= 1.3x)",
        send / encode
    );
    println!(
        "  raw libopus decode           {decode:>7.1} µs   (decoder complexity {DEFAULT_DECODER_COMPLEXITY})"
    );
    println!(
        "  receive path (ring+jitter+decode+mix) {receive:>7.1} µs   {:.2}x raw decode (target <= 1.3x)",
        receive / decode
    );
    neural_costs(&frames);
    dred_costs(&frames);
    group_call_cost(&frames);
}

/// What DRED costs per frame: encoding with it (100 ms in each packet, 10 %
/// expected loss) beside encoding with in-band FEC at the same hint, and
/// recovering a lost frame from it beside concealing one (best of 3).
fn dred_costs(frames: &[[f32; FRAME_SAMPLES]]) {
    let encode = |protection: Protection| -> (Duration, Vec<Vec<u8>>) {
        let mut best = Duration::MAX;
        let mut packets = Vec::new();
        for _ in 0..3 {
            let mut encoder = audio_pipeline::Encoder::new(EncoderConfig::default()).unwrap();
            encoder.set_protection(protection).unwrap();
            encoder.set_measured_loss(10.0).unwrap();
            let started = Instant::now();
            packets = encode_all(&mut encoder, frames);
            best = best.min(started.elapsed());
        }
        (best, packets)
    };
    let (fec, fec_packets) = encode(Protection::InBandFec);
    let (dred, packets) = encode(Protection::Dred);
    let bytes = |packets: &[Vec<u8>]| packets.iter().map(Vec::len).sum::<usize>() / packets.len();
    println!(
        "  encode at 10 % expected loss: FEC {:.1} µs ({} bytes a packet), DRED {:.1} µs ({} bytes), {:.2}x",
        per_frame_micros(fec, frames.len()),
        bytes(&fec_packets),
        per_frame_micros(dred, frames.len()),
        bytes(&packets),
        dred.as_secs_f64() / fec.as_secs_f64()
    );
    // Every 4th frame lost: one decoder recovers it from the next packet's
    // DRED, its twin conceals it.
    let (mut recover, mut conceal) = (Duration::MAX, Duration::MAX);
    for _ in 0..3 {
        let mut decoder = Decoder::new().unwrap();
        let mut twin = Decoder::new().unwrap();
        let mut pcm = [0.0_f32; FRAME_SAMPLES];
        let (mut recovering, mut concealing) = (Duration::ZERO, Duration::ZERO);
        for (index, packet) in packets.iter().enumerate() {
            if index % 4 == 3 {
                let started = Instant::now();
                twin.conceal(&mut pcm).unwrap();
                concealing += started.elapsed();
                let next = packets.get(index + 1).unwrap_or(packet);
                let started = Instant::now();
                decoder.parse_dred(next).unwrap();
                decoder.decode_dred(FRAME_SAMPLES, &mut pcm).unwrap();
                recovering += started.elapsed();
            } else {
                decoder.decode(packet, &mut pcm).unwrap();
                twin.decode(packet, &mut pcm).unwrap();
            }
            black_box(&pcm);
        }
        recover = recover.min(recovering);
        conceal = conceal.min(concealing);
    }
    let lost = (packets.len() / 4).max(1);
    println!(
        "  a lost frame at complexity {DEFAULT_DECODER_COMPLEXITY}: from DRED (parse + decode) {:.1} µs, concealed {:.1} µs",
        per_frame_micros(recover, lost),
        per_frame_micros(conceal, lost)
    );
}

/// The receive path of `speakers` remote speakers who all send `packets`
/// (20 ms each), pulled 5 ms at a time as playout does.
fn receive_speakers(packets: &[Vec<u8>], speakers: usize, decoder_complexity: u8) {
    let mut receive = ReceivePath::with_jitter_config(JitterConfig {
        decoder_complexity,
        ..JitterConfig::default()
    });
    let mut rings: Vec<_> = (0..speakers)
        .map(|_| receive.add_speaker().unwrap().0)
        .collect();
    let origin = Instant::now();
    let mut out = [0.0; PULL_SAMPLES];
    for (index, packet) in packets.iter().enumerate() {
        let now = origin + Duration::from_millis(20 * index as u64);
        for ring in &mut rings {
            ring.send(
                MediaPacket::new(
                    now,
                    index as u32 + 1,
                    (index * FRAME_SAMPLES) as u32,
                    true,
                    packet,
                )
                .unwrap(),
            );
        }
        for pull in 0..(FRAME_SAMPLES / PULL_SAMPLES) as u64 {
            let at = now + Duration::from_micros(5_000 * pull);
            receive.pull(at, &mut out).unwrap();
            black_box(&out);
        }
    }
}

/// What a 16-member call costs a receiving client: 15 remote speakers, all
/// talking at once (the worst case), decoded, buffered and mixed, as a
/// share of one core, at the default decoder complexity and at classic
/// decoding; beside 15 raw libopus decoders at the same complexity.
fn group_call_cost(frames: &[[f32; FRAME_SAMPLES]]) {
    let packets = our_packets(&frames[..frames.len().min(500)]);
    let audio_seconds = packets.len() as f64 * 0.02;
    println!(
        "  a 16-member call at the receiving client: 15 speakers at once, {audio_seconds:.0} s of audio, best of 3, share of one core"
    );
    for complexity in [DEFAULT_DECODER_COMPLEXITY, 0] {
        let (mut ours, mut raw) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            let started = Instant::now();
            receive_speakers(&packets, 15, complexity);
            ours = ours.min(started.elapsed());
            let mut decoders: Vec<Decoder> = (0..15)
                .map(|_| Decoder::with_complexity(complexity).unwrap())
                .collect();
            let mut pcm = [0.0_f32; FRAME_SAMPLES];
            let started = Instant::now();
            for packet in &packets {
                for decoder in &mut decoders {
                    decoder.decode(packet, &mut pcm).unwrap();
                    black_box(&pcm);
                }
            }
            raw = raw.min(started.elapsed());
        }
        let share = |elapsed: Duration| 100.0 * elapsed.as_secs_f64() / audio_seconds;
        println!(
            "    decoder complexity {complexity}: receive path {:.1} % of a core, raw libopus decode {:.1} % ({:.2}x)",
            share(ours),
            share(raw),
            ours.as_secs_f64() / raw.as_secs_f64()
        );
    }
}

/// `frames` through our encoder at its defaults, one packet each.
fn our_packets(frames: &[[f32; FRAME_SAMPLES]]) -> Vec<Vec<u8>> {
    let mut encoder = audio_pipeline::Encoder::new(EncoderConfig::default()).unwrap();
    encode_all(&mut encoder, frames)
}

/// `frames` through `encoder`, one packet each.
fn encode_all(
    encoder: &mut audio_pipeline::Encoder,
    frames: &[[f32; FRAME_SAMPLES]],
) -> Vec<Vec<u8>> {
    let mut packet = [0_u8; MAX_PACKET];
    frames
        .iter()
        .map(|frame| {
            let len = encoder.encode(frame, &mut packet).unwrap();
            packet[..len].to_vec()
        })
        .collect()
}

/// What each decoder complexity costs per frame decoded and per frame
/// concealed, in absolute µs (best of 3).
fn neural_costs(frames: &[[f32; FRAME_SAMPLES]]) {
    let packets = our_packets(frames);
    println!("  per frame by decoder complexity: decode / conceal (every 4th frame lost)");
    for complexity in [0, 5, 6, 7] {
        let (mut decode, mut conceal) = (Duration::MAX, Duration::MAX);
        for _ in 0..3 {
            let mut decoder = Decoder::with_complexity(complexity).unwrap();
            let mut pcm = [0.0_f32; FRAME_SAMPLES];
            let (mut decoding, mut concealing) = (Duration::ZERO, Duration::ZERO);
            for (index, packet) in packets.iter().enumerate() {
                let started = Instant::now();
                if index % 4 == 3 {
                    decoder.conceal(&mut pcm).unwrap();
                    concealing += started.elapsed();
                } else {
                    decoder.decode(packet, &mut pcm).unwrap();
                    decoding += started.elapsed();
                }
                black_box(&pcm);
            }
            decode = decode.min(decoding);
            conceal = conceal.min(concealing);
        }
        let lost = packets.len() / 4;
        println!(
            "    {complexity} ({:<18}) {:>7.1} µs / {:>7.1} µs",
            match complexity {
                0 => "classic",
                5 => "Deep PLC",
                6 => "Deep PLC + LACE",
                _ => "Deep PLC + NoLACE",
            },
            per_frame_micros(decode, packets.len() - lost),
            per_frame_micros(conceal, lost.max(1))
        );
    }
}

#[derive(Clone, Copy)]
struct Condition {
    name: &'static str,
    config: NetemConfig,
    /// Where the scored speech starts in the input (16 kHz samples): every
    /// system's path starts its pattern over ([`Netem::restart_pattern`])
    /// with the packet that carries it, so the scored speech meets the same
    /// losses cold and warm, ours and plain.
    scored_from_16k: usize,
}

impl Condition {
    fn scored_pattern_seed(&self) -> u64 {
        self.config.seed ^ 0x5c0_7ed
    }

    /// The index of the packet of `frame_16k` samples that starts the
    /// scored speech.
    fn scored_packet(&self, frame_16k: usize) -> usize {
        self.scored_from_16k / frame_16k
    }
}

/// How our pipeline runs in one column.
#[derive(Clone, Copy)]
struct Ours {
    decoder_complexity: u8,
    time_scaling: bool,
    frame: FrameDuration,
    /// `None`: chosen as the SDK does, by whether the receiver's losses
    /// are bursty.
    protection: Option<Protection>,
    fixed_ms: Option<u64>,
    /// Scored from the path's first packet, not after a pass of warm-up.
    cold: bool,
}

/// The Opus payload our encoder sends for `speech_48k` (20 ms frames,
/// the default bitrate setting) with `protection` at a loss hint of
/// `loss_percent`, in kbps.
fn audio_kbps(speech_48k: &[f32], protection: Protection, loss_percent: f64) -> f64 {
    let mut encoder = audio_pipeline::Encoder::new(EncoderConfig::default()).unwrap();
    encoder.set_protection(protection).unwrap();
    encoder.set_measured_loss(loss_percent as f32).unwrap();
    let mut packet = [0_u8; MAX_PACKET];
    let frames = speech_48k.chunks_exact(FRAME_SAMPLES);
    let seconds = frames.len() as f64 * 0.02;
    let bytes: usize = frames
        .map(|frame| encoder.encode(frame, &mut packet).unwrap())
        .sum();
    bytes as f64 * 8.0 / seconds / 1e3
}

/// What the sender's negotiation did over one run.
#[derive(Debug, Default, Clone, Copy)]
struct Negotiated {
    /// Packets sent with DRED on (DRED chosen and a loss hint above 0).
    dred_packets: usize,
    packets: usize,
    /// The loss hint the encoder was told, summed over packets.
    hint_sum: f64,
}

impl Negotiated {
    fn add(&mut self, other: Self) {
        self.dred_packets += other.dred_packets;
        self.packets += other.packets;
        self.hint_sum += other.hint_sum;
    }
}

/// The receiver in the benchmark's one-to-one call, for the sender's
/// [`SendPolicy`].
const RECEIVER: u8 = 1;

/// Our pipeline: 16 kHz capture → send path → netem → receive path → 16 kHz,
/// in 5 ms steps (capture, delivery, a playout pull each), negotiated as a
/// call negotiates: the receiver counts what arrives ([`LossMeter`]) and,
/// once a second, reports its loss and says what it plays and whether it
/// asks for DRED ([`ReceiverSays::ours`]); the sender's [`SendPolicy`]
/// sets the frame length, FEC or DRED, and the encoder's loss hint (the
/// feedback reaches it at once: loopback).
fn through_pipeline(
    original_16k: &[f32],
    condition: &Condition,
    ours: Ours,
) -> (Vec<f32>, f64, Negotiated) {
    let Ours {
        decoder_complexity,
        time_scaling,
        frame: duration,
        protection,
        fixed_ms,
        cold: _,
    } = ours;
    let mut send = SendPath::new(16_000, 1, EncoderConfig::default()).unwrap();
    let mut policy = SendPolicy::new(duration == FrameDuration::Ms10);
    policy.set_receivers(&[RECEIVER]);
    let mut meter = LossMeter::new();
    let decodes_dred = decoder_complexity >= MIN_DRED_COMPLEXITY;
    let mut negotiated = Negotiated::default();
    let mut network: Netem<MediaPacket> = Netem::new(condition.config);
    let mut config = JitterConfig {
        decoder_complexity,
        time_scaling,
        ..JitterConfig::default()
    };
    if let Some(fixed) = fixed_ms {
        config.initial_delay = Duration::from_millis(fixed);
        config.min_delay = Duration::from_millis(fixed);
        config.max_delay = Duration::from_millis(fixed);
    }
    let mut receive = ReceivePath::with_jitter_config(config);
    let (mut ring, _) = receive.add_speaker().unwrap();
    let mut down = Resampler::new(48_000, 1, 16_000, 1, 480).unwrap();
    let origin = Instant::now();
    let mut out = [0.0; PULL_SAMPLES];
    let mut padded = original_16k.to_vec();
    padded.extend(std::iter::repeat_n(0.0, 16_000));
    let mut degraded = Vec::with_capacity(padded.len());
    let step_16k = PULL_SAMPLES / 3;
    for (index, chunk) in padded.chunks(step_16k).enumerate() {
        let now = origin + Duration::from_micros(5_000 * index as u64);
        if index % 200 == 0 {
            if let Some(percent) = meter.report() {
                policy.on_report(RECEIVER, percent);
            }
            policy.on_says(RECEIVER, ReceiverSays::ours(decodes_dred, Some(&meter)));
            let how = policy.how_to_send();
            send.set_frame_duration(how.frames);
            send.set_protection(protection.unwrap_or(how.protection))
                .unwrap();
            send.set_measured_loss(f32::from(policy.encoder_hint()))
                .unwrap();
        }
        send.push_capture(chunk);
        let hint = policy.encoder_hint();
        let dred_on = send.protection() == Protection::Dred && hint > 0;
        let frame_16k = 16 * send.frame_duration().millis() as usize;
        while let Some(captured) = send.next_frame().unwrap() {
            if let Some(frame) = captured.frame() {
                // Sequence numbers start at 1.
                if (frame.seq as usize - 1) * frame_16k == condition.scored_from_16k {
                    network.restart_pattern(condition.scored_pattern_seed());
                }
                negotiated.packets += 1;
                negotiated.hint_sum += f64::from(hint);
                negotiated.dred_packets += usize::from(dred_on);
                network.send(
                    now,
                    MediaPacket::new(now, frame.seq, frame.timestamp, frame.voice, frame.payload)
                        .unwrap(),
                );
            }
        }
        while let Some(mut packet) = network.receive(now) {
            packet.arrived = now;
            meter.on_packet(packet.seq);
            ring.send(packet);
        }
        receive.pull(now, &mut out).unwrap();
        down.push(&out);
        let mut chunk_16k = [0.0; PULL_SAMPLES / 3];
        while down.pop(&mut chunk_16k) {
            degraded.extend_from_slice(&chunk_16k);
        }
    }
    (degraded, network.loss_percent(), negotiated)
}

/// One fixture as the benchmark plays it: a call's steady state, so the
/// same speech twice in a row through one path (the loss reports have set
/// the sender's protection, the receiving buffer has learned the path),
/// the second pass scored; the cold columns play it once.
struct Input {
    original: Vec<f32>,
    twice_16k: Vec<f32>,
    twice_48k: Vec<f32>,
    /// Where the second pass starts in `twice_16k`.
    second_pass_16k: usize,
    /// Where the scored pass starts in an output of `twice_*` at 16 kHz,
    /// a little early (the output's delay is found by alignment).
    cut: usize,
}

impl Input {
    fn load(path: &Path) -> Self {
        let (original, _) = load_48k(path);
        // 100 ms or a little more of silence between the passes, so the
        // second starts on a 10 and a 20 ms frame's boundary.
        let gap = 1_600 + (320 - original.len() % 320) % 320;
        let first_16k = original.len() + gap;
        let twice_16k: Vec<f32> = original
            .iter()
            .copied()
            .chain(std::iter::repeat_n(0.0, gap))
            .chain(original.iter().copied())
            .collect();
        // Through the resampler our sender uses: the plain systems' 20 ms
        // frames line up with ours, so the same packet carries the same
        // speech in every system.
        let twice_48k = upsample_16k(&twice_16k);
        let cut = first_16k.saturating_sub(800);
        Self {
            original,
            twice_16k,
            twice_48k,
            second_pass_16k: first_16k,
            cut,
        }
    }

    /// The scored pass of an output of `twice_*`, aligned to the original.
    fn scored(&self, degraded: &[f32]) -> Vec<f32> {
        align_to(&self.original, degraded.get(self.cut..).unwrap_or_default())
    }
}

/// Plain libopus with the same losses: no buffer; a lost frame is
/// recovered from the next packet's FEC when that one arrived, else PLC.
/// `speech` is at `rate` Hz (48 kHz, or the source's own 16 kHz), and so
/// are the encoder and decoder; the output at 16 kHz.
fn through_plain_libopus(
    speech: &[f32],
    rate: u32,
    condition: &Condition,
    loss_hint: f64,
    duration: FrameDuration,
) -> Vec<f32> {
    let mut encoder =
        opus::Encoder::new(rate, opus::Channels::Mono, opus::Application::Voip).unwrap();
    encoder.set_bitrate(opus::Bitrate::Bits(32_000)).unwrap();
    encoder.set_complexity(9).unwrap();
    encoder.set_inband_fec(true).unwrap();
    // The same hint as our sender: the expected loss, 0 on a clean link.
    encoder
        .set_packet_loss_perc((loss_hint.round() as i32).clamp(0, 100))
        .unwrap();
    let mut network: Netem<(usize, Vec<u8>)> = Netem::new(NetemConfig {
        jitter: Duration::ZERO,
        duplicate: 0.0,
        ..condition.config
    });
    let origin = Instant::now();
    let mut packet = [0_u8; MAX_PACKET];
    let frame_samples = (rate / 1_000 * duration.millis()) as usize;
    let frames: Vec<&[f32]> = speech.chunks_exact(frame_samples).collect();
    let mut received: Vec<Option<Vec<u8>>> = vec![None; frames.len()];
    let scored_packet = condition.scored_packet(16 * duration.millis() as usize);
    for (index, frame) in frames.iter().enumerate() {
        let len = encoder.encode_float(frame, &mut packet).unwrap();
        let now = origin + Duration::from_millis(u64::from(duration.millis()) * index as u64);
        if index == scored_packet {
            network.restart_pattern(condition.scored_pattern_seed());
        }
        network.send(now, (index, packet[..len].to_vec()));
    }
    while let Some((index, payload)) = network.receive(origin + Duration::from_secs(3_600)) {
        received[index] = Some(payload);
    }
    let mut decoder = opus::Decoder::new(rate, opus::Channels::Mono).unwrap();
    let mut pcm = vec![0.0_f32; frame_samples];
    let mut out = Vec::with_capacity(speech.len());
    for index in 0..frames.len() {
        match (
            &received[index],
            received.get(index + 1).and_then(Option::as_ref),
        ) {
            (Some(payload), _) => decoder.decode_float(payload, &mut pcm, false).unwrap(),
            (None, Some(next)) => decoder.decode_float(next, &mut pcm, true).unwrap(),
            (None, None) => decoder.decode_float(&[], &mut pcm, false).unwrap(),
        };
        out.extend_from_slice(&pcm);
    }
    if rate == 16_000 {
        return out;
    }
    let mut down = Resampler::new(rate, 1, 16_000, 1, (rate / 100) as usize).unwrap();
    down.push(&out);
    let mut degraded = vec![0.0; down.available_frames()];
    down.pop(&mut degraded);
    degraded
}

/// The reference cut into utterances: boundaries in the middle of each
/// pause of 100 ms or more (10 ms frames 30 dB under the loudest).
fn utterances(reference: &[f32]) -> Vec<(usize, usize)> {
    const FRAME: usize = 160;
    let energies: Vec<f64> = reference
        .chunks(FRAME)
        .map(|frame| frame.iter().map(|x| f64::from(*x).powi(2)).sum::<f64>())
        .collect();
    let loudest = energies.iter().copied().fold(0.0, f64::max);
    let mut cuts = vec![0];
    let mut pause_from = None;
    for (index, energy) in energies.iter().chain([&f64::MAX]).enumerate() {
        let quiet = *energy < loudest * 1e-3;
        match (quiet, pause_from) {
            (true, None) => pause_from = Some(index),
            (false, Some(from)) => {
                if index - from >= 10 && from > 0 {
                    cuts.push((from + index) / 2 * FRAME);
                }
                pause_from = None;
            }
            _ => {}
        }
    }
    cuts.push(reference.len());
    cuts.dedup();
    cuts.windows(2).map(|pair| (pair[0], pair[1])).collect()
}

/// `degraded` aligned to `reference` utterance by utterance: each shifted
/// by the lag (within ±80 ms of the first 3 s's) that matches it best, so
/// a delay that moves in a pause (a jitter buffer adapting) is not scored
/// as distortion; whatever moves inside an utterance still is. The
/// baseline is aligned the same way.
fn align_to(reference: &[f32], degraded: &[f32]) -> Vec<f32> {
    const SEARCH: usize = 1_280;
    let global = global_lag(reference, degraded);
    let mut aligned = vec![0.0; reference.len()];
    for (from, to) in utterances(reference) {
        let segment = &reference[from..to];
        let score = |lag: usize| -> f64 {
            let candidate = degraded.get(from + lag..(to + lag).min(degraded.len()));
            candidate.map_or(f64::MIN, |candidate| {
                let dot: f64 = segment
                    .iter()
                    .zip(candidate)
                    .map(|(a, b)| f64::from(*a) * f64::from(*b))
                    .sum();
                let norm: f64 = candidate.iter().map(|b| f64::from(*b).powi(2)).sum();
                dot / norm.sqrt().max(1e-9)
            })
        };
        let lags = global.saturating_sub(SEARCH)..global + SEARCH;
        let coarse = lags
            .step_by(8)
            .max_by(|a, b| score(*a).total_cmp(&score(*b)))
            .unwrap_or(global);
        let lag = (coarse.saturating_sub(8)..coarse + 8)
            .max_by(|a, b| score(*a).total_cmp(&score(*b)))
            .unwrap_or(coarse);
        for (index, sample) in aligned[from..to].iter_mut().enumerate() {
            *sample = degraded.get(from + lag + index).copied().unwrap_or(0.0);
        }
    }
    aligned
}

#[allow(
    clippy::too_many_lines,
    reason = "one benchmark round by round, with its baseline beside it"
)]
fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let fixtures = PathBuf::from(
        args.first()
            .expect("usage: bench_audio FIXTURE_DIR OUT_DIR [PYTHON]"),
    );
    let out_dir = PathBuf::from(
        args.get(1)
            .expect("usage: bench_audio FIXTURE_DIR OUT_DIR [PYTHON]"),
    );
    let python = args.get(2).map(String::as_str);
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut fixture_paths: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wav"))
        .collect();
    fixture_paths.sort();

    let (_, first_48k) = load_48k(&fixture_paths[0]);
    // BENCH_AUDIO_ONLY=TEXT: only the conditions whose name holds TEXT,
    // and no CPU figures (for a quick look at one condition).
    let only = std::env::var("BENCH_AUDIO_ONLY").ok();
    // BENCH_AUDIO_SEEDS=N: loss patterns per condition and fixture (3).
    let seeds: usize = std::env::var("BENCH_AUDIO_SEEDS")
        .ok()
        .and_then(|seeds| seeds.parse().ok())
        .unwrap_or(3)
        .max(1);
    if only.is_none() {
        cpu(&first_48k);
    }

    let conditions = [
        Condition {
            name: "0% loss",
            config: NetemConfig {
                seed: 11,
                ..NetemConfig::default()
            },
            scored_from_16k: 0,
        },
        Condition {
            name: "5% random",
            config: NetemConfig {
                loss: 0.05,
                seed: 12,
                ..NetemConfig::default()
            },
            scored_from_16k: 0,
        },
        Condition {
            name: "10% random",
            config: NetemConfig {
                loss: 0.10,
                seed: 13,
                ..NetemConfig::default()
            },
            scored_from_16k: 0,
        },
        Condition {
            name: "20% random",
            config: NetemConfig {
                loss: 0.20,
                seed: 14,
                ..NetemConfig::default()
            },
            scored_from_16k: 0,
        },
        Condition {
            name: "bursty (~10%)",
            config: NetemConfig {
                burst: Some((0.05, 0.35, 0.8)),
                seed: 15,
                ..NetemConfig::default()
            },
            scored_from_16k: 0,
        },
        // No loss, each packet 0–40 ms later than the last (reordered):
        // plain libopus decodes every packet as if in time, a receiver
        // with no clock.
        Condition {
            name: "40 ms jitter",
            config: NetemConfig {
                jitter: Duration::from_millis(40),
                seed: 16,
                ..NetemConfig::default()
            },
            scored_from_16k: 0,
        },
    ];
    // Our columns, then plain libopus.
    let default = Ours {
        decoder_complexity: DEFAULT_DECODER_COMPLEXITY,
        time_scaling: true,
        frame: FrameDuration::Ms20,
        protection: None,
        fixed_ms: None,
        cold: false,
    };
    let mut columns: Vec<(&str, Ours)> = [
        (0, "0 classic"),
        (5, "5 DeepPLC"),
        (6, "6 LACE"),
        (7, "7 NoLACE"),
    ]
    .into_iter()
    .map(|(complexity, name)| {
        (
            name,
            Ours {
                decoder_complexity: complexity,
                ..default
            },
        )
    })
    .collect();
    columns.push((
        "7, no tscale",
        Ours {
            time_scaling: false,
            ..default
        },
    ));
    columns.push((
        "7, 10 ms",
        Ours {
            frame: FrameDuration::Ms10,
            ..default
        },
    ));
    columns.push((
        "7, fixed 80",
        Ours {
            fixed_ms: Some(80),
            ..default
        },
    ));
    columns.push((
        "7, cold",
        Ours {
            cold: true,
            ..default
        },
    ));
    columns.push((
        "7, FEC only",
        Ours {
            protection: Some(Protection::InBandFec),
            ..default
        },
    ));
    columns.push((
        "7, DRED only",
        Ours {
            protection: Some(Protection::Dred),
            ..default
        },
    ));
    let default_column = columns
        .iter()
        .position(|(_, ours)| {
            ours.decoder_complexity == DEFAULT_DECODER_COMPLEXITY
                && ours.time_scaling
                && ours.frame == FrameDuration::Ms20
                && ours.protection.is_none()
        })
        .unwrap_or(0);
    let cold_column = columns.iter().position(|(_, ours)| ours.cold);
    let mut rows = Vec::new();
    for condition in &conditions {
        if only
            .as_deref()
            .is_some_and(|only| !condition.name.contains(only))
        {
            continue;
        }
        let mut negotiated = [Negotiated::default(); 2];
        let mut scores: Vec<Vec<Option<[f64; 2]>>> = vec![Vec::new(); columns.len() + PLAIN];
        let mut measured_loss = 0.0;
        let mut kbps = [0.0; 2];
        // Each fixture under `seeds` loss patterns of the condition: one
        // pattern's scores move by ±0.1–0.2 with where its losses fall.
        let runs = (fixture_paths.len() * seeds) as f64;
        for (fixture, seed) in fixture_paths
            .iter()
            .flat_map(|fixture| (0..seeds as u64).map(move |seed| (fixture, seed)))
        {
            let input = Input::load(fixture);
            let condition = &Condition {
                name: condition.name,
                config: NetemConfig {
                    seed: condition.config.seed + 1_000 * seed,
                    ..condition.config
                },
                scored_from_16k: input.second_pass_16k,
            };
            let stem = fixture.file_stem().unwrap().to_string_lossy().to_string();
            let tag = format!(
                "{}-{seed}",
                condition.name.replace(['%', ' ', '(', ')', '~'], "")
            );
            let mut paths = Vec::new();
            // The same seed gives every run the same losses.
            let mut fixture_loss = 0.0;
            for (index, (_, ours)) in columns.iter().enumerate() {
                let degraded = if ours.cold {
                    let cold = Condition {
                        scored_from_16k: 0,
                        ..*condition
                    };
                    let (degraded, _, run) = through_pipeline(&input.original, &cold, *ours);
                    negotiated[1].add(run);
                    align_to(&input.original, &degraded)
                } else {
                    let (degraded, loss, run) =
                        through_pipeline(&input.twice_16k, condition, *ours);
                    fixture_loss = loss;
                    if index == default_column {
                        negotiated[0].add(run);
                    }
                    input.scored(&degraded)
                };
                let path = out_dir.join(format!("{stem}-{tag}-ours-{index}.wav"));
                write(&path, &degraded);
                paths.push(path);
            }
            measured_loss += fixture_loss / runs;
            for (sum, protection) in kbps
                .iter_mut()
                .zip([Protection::InBandFec, Protection::Dred])
            {
                *sum += audio_kbps(&input.twice_48k, protection, fixture_loss) / runs;
            }
            for duration in [FrameDuration::Ms20, FrameDuration::Ms10] {
                let plain = input.scored(&through_plain_libopus(
                    &input.twice_48k,
                    48_000,
                    condition,
                    fixture_loss,
                    duration,
                ));
                let plain_path =
                    out_dir.join(format!("{stem}-{tag}-plain-{}ms.wav", duration.millis()));
                write(&plain_path, &plain);
                paths.push(plain_path);
            }
            for (equal_bits, name) in [(false, "dred"), (true, "dred-equal-bits")] {
                let dred = input.scored(&dred::through_plain_libopus_with_dred(
                    &input.twice_48k,
                    condition,
                    fixture_loss,
                    equal_bits,
                ));
                let dred_path = out_dir.join(format!("{stem}-{tag}-plain-{name}.wav"));
                write(&dred_path, &dred);
                paths.push(dred_path);
            }
            let ml = input.scored(&dred::through_plain_libopus_ml(
                &input.twice_48k,
                condition,
                fixture_loss,
            ));
            let ml_path = out_dir.join(format!("{stem}-{tag}-plain-ml.wav"));
            write(&ml_path, &ml);
            paths.push(ml_path);
            let at_source_rate = input.scored(&through_plain_libopus(
                &input.twice_16k,
                16_000,
                condition,
                fixture_loss,
                FrameDuration::Ms20,
            ));
            let source_path = out_dir.join(format!("{stem}-{tag}-plain-16k.wav"));
            write(&source_path, &at_source_rate);
            paths.push(source_path);
            for (column, score) in pesq(python, fixture, &paths).into_iter().enumerate() {
                scores[column].push(score);
            }
        }
        let mean = |scores: &[Option<[f64; 2]>], which: usize| -> Option<f64> {
            let values: Option<Vec<f64>> =
                scores.iter().map(|score| score.map(|s| s[which])).collect();
            values.map(|values| values.iter().sum::<f64>() / values.len() as f64)
        };
        let means: Vec<[Option<f64>; 2]> = scores
            .iter()
            .map(|column| [mean(column, 0), mean(column, 1)])
            .collect();
        println!(
            "  {}: audio on the wire at this loss hint, FEC {:.1} kbps, DRED {:.1} kbps ({:.2}x)",
            condition.name,
            kbps[0],
            kbps[1],
            kbps[1] / kbps[0]
        );
        for (run, what) in negotiated.iter().zip(["steady state", "cold start"]) {
            println!(
                "  {}: negotiated ({what}): DRED on {:.0} % of packets, mean loss hint {:.1} %",
                condition.name,
                100.0 * run.dred_packets as f64 / run.packets.max(1) as f64,
                run.hint_sum / run.packets.max(1) as f64,
            );
        }
        rows.push((condition, measured_loss, means));
    }
    let show = |score: Option<f64>, digits: usize| {
        score.map_or("n/a".to_owned(), |score| format!("{score:.digits$}"))
    };
    for (which, title, digits) in [(0, "wideband PESQ (P.862.2)", 2), (1, "STOI", 3)] {
        println!(
            "\n{title} of the speech fixtures, 32 kbps, 20 ms frames unless said, by the receive path's decoder complexity (default {DEFAULT_DECODER_COMPLEXITY})"
        );
        let mut header = format!("  {:<15} {:>6}", "condition", "loss");
        for (name, _) in &columns {
            header.push_str(&format!(" {name:>12}"));
        }
        println!(
            "{header} {:>11} {:>13} {:>13} {:>13} {:>13} {:>13}   targets (ours = default column)",
            "plain opus",
            "plain, 10 ms",
            "plain + DRED",
            "DRED, = bits",
            "plain + ML",
            "plain, 16 kHz"
        );
        for (condition, loss, means) in &rows {
            let verdict = targets(condition, means, which, default_column, cold_column);
            let mut line = format!("  {:<15} {loss:>5.1}%", condition.name);
            for column in &means[..columns.len()] {
                line.push_str(&format!(" {:>12}", show(column[which], digits)));
            }
            let plain = |k: usize| show(means[columns.len() + k][which], digits);
            println!(
                "{line} {:>11} {:>13} {:>13} {:>13} {:>13} {:>13}   {verdict}",
                plain(0),
                plain(1),
                plain(2),
                plain(3),
                plain(4),
                plain(5)
            );
        }
    }
    println!("  degraded files in {}", out_dir.display());
}

/// The plain anchors after our columns: libopus 20 ms, 10 ms, with DRED,
/// with DRED at equal bits, with FEC and the ML decoder, and at the
/// source's own 16 kHz.
const PLAIN: usize = 6;

/// Each target of one condition's row, met or missed (`which`: 0 PESQ, 1
/// STOI): ours at least plain libopus with the ML decoder and FEC (STOI
/// within 0.01), and at least plain libopus at the talkers' 16 kHz;
/// bursty, at least plain with DRED at equal bits − 0.05; under loss, the
/// cold start within 0.15 of the steady state.
fn targets(
    condition: &Condition,
    means: &[[Option<f64>; 2]],
    which: usize,
    default_column: usize,
    cold_column: Option<usize>,
) -> String {
    let plain_start = means.len() - PLAIN;
    let Some(ours) = means[default_column][which] else {
        return String::new();
    };
    let mut checks = Vec::new();
    let mut check = |name: &str, anchor: Option<f64>, slack: f64| {
        if let Some(anchor) = anchor {
            let difference = ours - anchor;
            let met = if difference >= -slack - 1e-9 {
                "met"
            } else {
                "MISSED"
            };
            checks.push(format!("{name} {difference:+.3} ({met})"));
        }
    };
    let stoi_slack = if which == 1 { 0.01 } else { 0.0 };
    check("vs plain+ML", means[plain_start + 4][which], stoi_slack);
    check("vs plain 16k", means[plain_start + 5][which], stoi_slack);
    if condition.config.burst.is_some() && which == 0 {
        check("vs DRED=bits", means[plain_start + 3][which], 0.05);
    }
    let lossy = condition.config.loss > 0.0 || condition.config.burst.is_some();
    if let (true, 0, Some(cold)) = (lossy, which, cold_column.and_then(|c| means[c][which])) {
        let difference = cold - ours;
        let met = if difference >= -0.15 { "met" } else { "MISSED" };
        checks.push(format!("cold {difference:+.2} ({met})"));
    }
    checks.join(", ")
}

/// Plain libopus with Deep REDundancy instead of in-band FEC, through
/// `opusic-sys` directly (neither the `opus` crate nor our codec has the
/// DRED calls): the encoder at the same bitrate with FEC off and 100 ms of
/// DRED once loss is expected; the decoder (complexity 5, Deep PLC, which
/// DRED decodes through) recovers each lost frame from the DRED of the
/// first packet received after it, within four packets, knowing every
/// loss in advance as the FEC baseline does; PLC otherwise.
mod dred {
    #![allow(
        unsafe_code,
        clippy::cast_possible_truncation,
        clippy::cast_possible_wrap
    )]

    use super::{
        Condition, Duration, FRAME_SAMPLES, Instant, MAX_PACKET, Netem, NetemConfig, Resampler,
    };
    use opusic_sys as opus;

    pub(super) fn through_plain_libopus_with_dred(
        speech_48k: &[f32],
        condition: &Condition,
        loss_hint: f64,
        equal_bits: bool,
    ) -> Vec<f32> {
        let hint = (loss_hint.round() as i32).clamp(0, 100);
        let frames: Vec<&[f32]> = speech_48k.chunks_exact(FRAME_SAMPLES).collect();
        let packets = encode(&frames, hint, Redundancy::Dred { equal_bits });
        decode(
            &through(condition, packets),
            5,
            Redundancy::Dred { equal_bits },
        )
    }

    /// Plain libopus 1.6 with in-band FEC, decoded by the ML decoder
    /// (complexity 7: Deep PLC and NoLACE): a lost frame from the next
    /// packet's FEC when that one arrived, else concealed.
    pub(super) fn through_plain_libopus_ml(
        speech_48k: &[f32],
        condition: &Condition,
        loss_hint: f64,
    ) -> Vec<f32> {
        let hint = (loss_hint.round() as i32).clamp(0, 100);
        let frames: Vec<&[f32]> = speech_48k.chunks_exact(FRAME_SAMPLES).collect();
        let packets = encode(&frames, hint, Redundancy::Fec);
        decode(&through(condition, packets), 7, Redundancy::Fec)
    }

    #[derive(Clone, Copy)]
    enum Redundancy {
        Fec,
        Dred { equal_bits: bool },
    }

    /// The packets that `condition` lets through (no jitter: no clock),
    /// down to 16 kHz once decoded.
    fn through(condition: &Condition, packets: Vec<Vec<u8>>) -> Vec<Option<Vec<u8>>> {
        let mut network: Netem<(usize, Vec<u8>)> = Netem::new(NetemConfig {
            jitter: Duration::ZERO,
            duplicate: 0.0,
            ..condition.config
        });
        let origin = Instant::now();
        let mut received: Vec<Option<Vec<u8>>> = vec![None; packets.len()];
        let scored_packet = condition.scored_packet(320);
        for (index, packet) in packets.into_iter().enumerate() {
            let now = origin + Duration::from_millis(20 * index as u64);
            if index == scored_packet {
                network.restart_pattern(condition.scored_pattern_seed());
            }
            network.send(now, (index, packet));
        }
        while let Some((index, payload)) = network.receive(origin + Duration::from_secs(3_600)) {
            received[index] = Some(payload);
        }
        received
    }

    fn to_16k(out: &[f32]) -> Vec<f32> {
        let mut down = Resampler::new(48_000, 1, 16_000, 1, 480).unwrap();
        down.push(out);
        let mut degraded = vec![0.0; down.available_frames()];
        down.pop(&mut degraded);
        degraded
    }

    /// 32 kbps with in-band FEC; or FEC off and 100 ms of DRED once loss
    /// is expected, at the same setting or at equal bits on the wire.
    fn encode(frames: &[&[f32]], loss_hint: i32, redundancy: Redundancy) -> Vec<Vec<u8>> {
        let mut error = 0;
        let mut packets = Vec::with_capacity(frames.len());
        // SAFETY: the encoder comes from its constructor, is checked for
        // null, used only here and destroyed once; buffers are passed with
        // their true lengths.
        unsafe {
            let encoder =
                opus::opus_encoder_create(48_000, 1, opus::OPUS_APPLICATION_VOIP, &raw mut error);
            assert!(
                !encoder.is_null() && error == opus::OPUS_OK,
                "encoder: {error}"
            );
            let (fec, dred_frames, equal_bits) = match redundancy {
                Redundancy::Fec => (1_i32, 0_i32, false),
                Redundancy::Dred { equal_bits } => {
                    (0, if loss_hint > 0 { 10 } else { 0 }, equal_bits)
                }
            };
            // The same bits on the wire as the FEC baseline: libopus sends
            // more than its setting with DRED on (as our encoder scales it).
            let bitrate = if dred_frames > 0 && equal_bits {
                (32_000.0 * audio_pipeline::DRED_BITRATE_SCALE) as i32
            } else {
                32_000
            };
            opus::opus_encoder_ctl(encoder, opus::OPUS_SET_BITRATE_REQUEST, bitrate);
            opus::opus_encoder_ctl(encoder, opus::OPUS_SET_COMPLEXITY_REQUEST, 9_i32);
            // The fixtures are 16 kHz talkers: coded wideband, as our
            // sender codes them (libopus alone would code super-wideband).
            opus::opus_encoder_ctl(
                encoder,
                opus::OPUS_SET_MAX_BANDWIDTH_REQUEST,
                opus::OPUS_BANDWIDTH_WIDEBAND,
            );
            // Beside in-band FEC, DRED gets almost no bits at 32 kbps.
            opus::opus_encoder_ctl(encoder, opus::OPUS_SET_INBAND_FEC_REQUEST, fec);
            opus::opus_encoder_ctl(encoder, opus::OPUS_SET_PACKET_LOSS_PERC_REQUEST, loss_hint);
            opus::opus_encoder_ctl(encoder, opus::OPUS_SET_DRED_DURATION_REQUEST, dred_frames);
            let mut packet = [0_u8; MAX_PACKET];
            for samples in frames {
                let len = opus::opus_encode_float(
                    encoder,
                    samples.as_ptr(),
                    FRAME_SAMPLES as i32,
                    packet.as_mut_ptr(),
                    MAX_PACKET as i32,
                );
                assert!(len > 0, "encode: {len}");
                packets.push(packet[..len as usize].to_vec());
            }
            opus::opus_encoder_destroy(encoder);
        }
        packets
    }

    /// Each received packet decoded at decoder `complexity`; each lost
    /// frame from the FEC of the next packet, or from the DRED of the
    /// first packet after it (within four), else concealed; at 16 kHz.
    fn decode(received: &[Option<Vec<u8>>], complexity: i32, redundancy: Redundancy) -> Vec<f32> {
        let frame = FRAME_SAMPLES as i32;
        let mut error = 0;
        let mut out = Vec::with_capacity(received.len() * FRAME_SAMPLES);
        // SAFETY: as in `encode`.
        unsafe {
            let decoder = opus::opus_decoder_create(48_000, 1, &raw mut error);
            assert!(
                !decoder.is_null() && error == opus::OPUS_OK,
                "decoder: {error}"
            );
            opus::opus_decoder_ctl(decoder, opus::OPUS_SET_COMPLEXITY_REQUEST, complexity);
            let dred_decoder = opus::opus_dred_decoder_create(&raw mut error);
            let dred = opus::opus_dred_alloc(&raw mut error);
            assert!(!dred_decoder.is_null() && !dred.is_null(), "dred: {error}");
            let mut pcm = [0.0_f32; FRAME_SAMPLES];
            for index in 0..received.len() {
                if let Some(payload) = &received[index] {
                    let decoded = opus::opus_decode_float(
                        decoder,
                        payload.as_ptr(),
                        payload.len() as i32,
                        pcm.as_mut_ptr(),
                        frame,
                        0,
                    );
                    assert!(decoded > 0, "decode: {decoded}");
                    out.extend_from_slice(&pcm);
                    continue;
                }
                let mut recovered = false;
                if let (Redundancy::Fec, Some(Some(next))) = (redundancy, received.get(index + 1)) {
                    recovered = opus::opus_decode_float(
                        decoder,
                        next.as_ptr(),
                        next.len() as i32,
                        pcm.as_mut_ptr(),
                        frame,
                        1,
                    ) > 0;
                }
                let after = (index + 1..(index + 5).min(received.len()))
                    .find_map(|later| received[later].as_ref().map(|packet| (later, packet)))
                    .filter(|_| matches!(redundancy, Redundancy::Dred { .. }));
                if let Some((later, packet)) = after {
                    let mut end = 0;
                    let available = opus::opus_dred_parse(
                        dred_decoder,
                        dred,
                        packet.as_ptr(),
                        packet.len() as i32,
                        48_000,
                        48_000,
                        &raw mut end,
                        0,
                    );
                    let offset = ((later - index) * FRAME_SAMPLES) as i32;
                    recovered = available >= offset
                        && opus::opus_decoder_dred_decode_float(
                            decoder,
                            dred,
                            offset,
                            pcm.as_mut_ptr(),
                            frame,
                        ) > 0;
                }
                if !recovered {
                    opus::opus_decode_float(
                        decoder,
                        std::ptr::null(),
                        0,
                        pcm.as_mut_ptr(),
                        frame,
                        0,
                    );
                }
                out.extend_from_slice(&pcm);
            }
            opus::opus_decoder_destroy(decoder);
            opus::opus_dred_decoder_destroy(dred_decoder);
            opus::opus_dred_free(dred);
        }
        to_16k(&out)
    }
}
