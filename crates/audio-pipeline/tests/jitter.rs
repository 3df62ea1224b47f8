//! The jitter buffer under an emulated network, on a virtual clock: encoder
//! → netem → jitter buffer → decoder, deterministic for each seed.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use audio_pipeline::netem::{Netem, NetemConfig};
use audio_pipeline::{
    Encoder, EncoderConfig, FRAME_SAMPLES, FrameDuration, JitterBuffer, JitterConfig, JitterStats,
    MAX_PACKET, PULL_SAMPLES, Protection, is_dtx_frame,
};
use audio_pipeline::{analysis, level};

/// How often the receiver pulls a frame's worth (or two 10 ms pulls).
const FRAME: Duration = Duration::from_millis(20);

/// A deterministic speech-like signal: voiced "syllables" (harmonics of a
/// gliding pitch under an envelope) separated by short pauses.
fn speech_like(seconds: usize) -> Vec<f32> {
    let rate = 48_000.0;
    let total = seconds * 48_000;
    let mut out = vec![0.0_f32; total];
    let mut state = 12_345_u32;
    let mut random = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 8) as f32 / (1 << 24) as f32
    };
    let mut at = 0;
    while at < total {
        let syllable = (0.12 + 0.15 * random()) * rate;
        let pause = (0.03 + 0.12 * random()) * rate;
        let pitch = 100.0 + 120.0 * random();
        let glide = 0.6 + 0.8 * random();
        let mut phase = 0.0_f32;
        for n in 0..syllable as usize {
            let index = at + n;
            if index >= total {
                break;
            }
            let t = n as f32 / syllable;
            let f0 = pitch * (1.0 + 0.2 * (glide - 1.0) * t);
            phase += std::f32::consts::TAU * f0 / rate;
            let envelope = (std::f32::consts::PI * t).sin().powf(0.7);
            let mut sample = 0.0;
            for harmonic in 1..12 {
                let weight = 1.0 / harmonic as f32;
                sample += weight * (phase * harmonic as f32).sin();
            }
            out[index] = 0.15 * envelope * sample;
        }
        at += (syllable + pause) as usize;
    }
    out
}

#[derive(Clone)]
struct Packet {
    seq: u32,
    timestamp: u32,
    voice: bool,
    payload: Vec<u8>,
}

/// Encodes `signal` frame by frame, as a sender would (DTX frames unsent):
/// when each frame is sent (its end's timestamp: a frame leaves once its
/// last sample is in) and its packet. Frames are `frames.0` long, and
/// `frames.1` from the time (seconds) it says on; protection likewise.
fn encode(
    signal: &[f32],
    (loss_hint, protection, switch_protection): (f32, Protection, Option<(f64, Protection)>),
    dtx: bool,
    frames: (FrameDuration, Option<(f64, FrameDuration)>),
) -> Vec<(u32, Option<Packet>)> {
    let mut encoder = Encoder::new(EncoderConfig {
        dtx,
        ..EncoderConfig::default()
    })
    .unwrap();
    encoder.set_measured_loss(loss_hint).unwrap();
    encoder.set_protection(protection).unwrap();
    let mut packet = [0; MAX_PACKET];
    let mut seq = 0;
    let mut at = 0;
    let mut out = Vec::new();
    loop {
        let duration = match frames.1 {
            Some((from, later)) if at as f64 / 48_000.0 >= from => later,
            _ => frames.0,
        };
        if let Some((from, later)) = switch_protection
            && at as f64 / 48_000.0 >= from
        {
            encoder.set_protection(later).unwrap();
        }
        let Some(frame) = signal.get(at..at + duration.samples()) else {
            return out;
        };
        let timestamp = at as u32;
        at += duration.samples();
        let len = encoder.encode(frame, &mut packet).unwrap();
        if dtx && is_dtx_frame(len) {
            out.push((at as u32, None));
            continue;
        }
        seq += 1;
        out.push((
            at as u32,
            Some(Packet {
                seq,
                timestamp,
                voice: level::voice_activity(frame) && !encoder.in_dtx(),
                payload: packet[..len].to_vec(),
            }),
        ));
    }
}

struct Scenario {
    seconds: usize,
    /// Path settings from each time (seconds since start) on.
    network: Vec<(f64, NetemConfig)>,
    /// Sender clock speed relative to the receiver's (1.001 = 0.1 % fast).
    sender_speed: f64,
    /// The receiver starts pulling this late.
    receiver_starts: Duration,
    /// The sender is silent (sends nothing) over this span, in seconds.
    sender_pause: Option<(f64, f64)>,
    loss_hint: f32,
    /// How the sender protects its audio once it expects loss, and from a
    /// time (seconds) on.
    protection: Protection,
    switch_protection: Option<(f64, Protection)>,
    dtx: bool,
    /// The talker is silent over this span, in seconds (the input is zero).
    silence: Option<(f64, f64)>,
    /// Peak amplitude of a noise floor under the input (a real room's: its
    /// pauses are never digital silence).
    noise_floor: f32,
    /// Milliseconds of each pull: 20, 10, or playout's 5.
    pull_ms: u32,
    /// The sender's frames, and what they become from a time (seconds) on.
    frame: FrameDuration,
    switch_frame: Option<(f64, FrameDuration)>,
    /// The buffer's settings.
    config: JitterConfig,
}

impl Default for Scenario {
    fn default() -> Self {
        Self {
            seconds: 10,
            network: vec![(0.0, NetemConfig::default())],
            sender_speed: 1.0,
            receiver_starts: Duration::ZERO,
            sender_pause: None,
            loss_hint: 0.0,
            protection: Protection::InBandFec,
            switch_protection: None,
            dtx: false,
            silence: None,
            noise_floor: 0.0,
            pull_ms: 20,
            frame: FrameDuration::Ms20,
            switch_frame: None,
            config: JitterConfig::default(),
        }
    }
}

struct Outcome {
    seconds: usize,
    input: Vec<f32>,
    output: Vec<f32>,
    stats: JitterStats,
    /// (seconds, current delay ms, target ms, concealed samples so far) at every pull.
    trace: Vec<(f64, f64, f64, u64)>,
}

fn run(scenario: &Scenario) -> Outcome {
    let mut input = speech_like(scenario.seconds);
    if let Some((from, to)) = scenario.silence {
        input[(from * 48_000.0) as usize..(to * 48_000.0) as usize].fill(0.0);
    }
    let mut state = 99_u32;
    for sample in &mut input {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        let uniform = (state >> 8) as f32 / (1 << 24) as f32;
        *sample += scenario.noise_floor * (2.0 * uniform - 1.0);
    }
    let packets = encode(
        &input,
        (
            scenario.loss_hint,
            scenario.protection,
            scenario.switch_protection,
        ),
        scenario.dtx,
        (scenario.frame, scenario.switch_frame),
    );
    let start = Instant::now();
    let mut network: Netem<Packet> = Netem::new(scenario.network[0].1);
    let mut current_network = 0;
    let mut buffer = JitterBuffer::new(scenario.config).unwrap();
    let mut output = Vec::with_capacity(input.len() + 48_000);
    let mut trace = Vec::new();
    let pull = Duration::from_millis(u64::from(scenario.pull_ms));
    let pull_samples = 48 * scenario.pull_ms as usize;
    let mut next_send = 0;
    let mut next_pull = scenario.receiver_starts;
    let end = Duration::from_secs_f64(scenario.seconds as f64 / scenario.sender_speed)
        + Duration::from_millis(600);
    let mut out = [0.0; FRAME_SAMPLES];
    while next_pull < end {
        let send_at = packets.get(next_send).map_or(end, |(ends, _)| {
            Duration::from_secs_f64(f64::from(*ends) / 48_000.0 / scenario.sender_speed)
        });
        if next_send < packets.len() && send_at <= next_pull {
            let seconds = send_at.as_secs_f64();
            while current_network + 1 < scenario.network.len()
                && scenario.network[current_network + 1].0 <= seconds
            {
                current_network += 1;
                network.set_config(scenario.network[current_network].1);
            }
            let paused = scenario
                .sender_pause
                .is_some_and(|(from, to)| seconds >= from && seconds < to);
            if let ((_, Some(packet)), false) = (&packets[next_send], paused) {
                network.send(start + send_at, packet.clone());
            }
            next_send += 1;
            continue;
        }
        let now = start + next_pull;
        // Packets are read at the pull, stamped with when they arrived (as
        // the network thread stamps them).
        while let Some((arrived, packet)) = network.receive_timed(now) {
            buffer.insert(
                arrived,
                packet.seq,
                packet.timestamp,
                packet.voice,
                &packet.payload,
            );
        }
        buffer.pull(now, &mut out[..pull_samples]).unwrap();
        output.extend_from_slice(&out[..pull_samples]);
        let stats = buffer.stats();
        trace.push((
            next_pull.as_secs_f64(),
            stats.current_delay_ms,
            stats.target_delay_ms,
            stats.concealed_samples,
        ));
        next_pull += pull;
    }
    Outcome {
        seconds: scenario.seconds,
        input,
        output,
        stats: buffer.stats(),
        trace,
    }
}

/// The lag (in samples) that best aligns `output` with `input`, and the
/// normalised cross-correlation there, over the middle of the signal.
fn align(input: &[f32], output: &[f32]) -> (usize, f32) {
    let window = 48_000 * 3;
    let from = 48_000;
    let reference = &input[from..from + window];
    let score = |lag: usize| -> f32 {
        output
            .get(from + lag..from + lag + window)
            .map_or(-1.0, |candidate| analysis::ncc(reference, candidate) as f32)
    };
    // Coarse search every 16 samples over 0–400 ms, then refine.
    let coarse = (0..19_200)
        .step_by(16)
        .max_by(|a, b| score(*a).total_cmp(&score(*b)))
        .unwrap_or(0);
    let fine = (coarse.saturating_sub(16)..coarse + 16)
        .max_by(|a, b| score(*a).total_cmp(&score(*b)))
        .unwrap_or(coarse);
    (fine, score(fine))
}

/// The correlation with the input half a second at a time, each segment
/// at its own best lag within 50 ms of `align`'s, averaged over the
/// segments with speech: a delay the buffer moves in a pause is not
/// counted as distortion (what it does inside a syllable still is).
fn segment_correlation(input: &[f32], output: &[f32]) -> f32 {
    const SEGMENT: usize = 24_000;
    const SEARCH: usize = 2_400;
    let (global, _) = align(input, output);
    let mut scores = Vec::new();
    let mut from = 48_000;
    while from + SEGMENT + 48_000 <= input.len() {
        let reference = &input[from..from + SEGMENT];
        if level::voice_activity(reference) {
            let score = |lag: usize| -> f32 {
                output
                    .get(from + lag..from + lag + SEGMENT)
                    .map_or(-1.0, |candidate| analysis::ncc(reference, candidate) as f32)
            };
            let lags = global.saturating_sub(SEARCH)..global + SEARCH;
            let coarse = lags
                .step_by(16)
                .max_by(|a, b| score(*a).total_cmp(&score(*b)))
                .unwrap_or(global);
            let fine = (coarse.saturating_sub(16)..coarse + 16)
                .map(score)
                .fold(-1.0, f32::max);
            scores.push(fine);
        }
        from += SEGMENT;
    }
    scores.iter().sum::<f32>() / scores.len().max(1) as f32
}

impl Outcome {
    /// The target delay at the first pull from `seconds` on.
    fn target_at(&self, seconds: f64) -> f64 {
        self.trace
            .iter()
            .find(|(t, ..)| *t >= seconds)
            .map(|(_, _, target, _)| *target)
            .expect("a pull at that time")
    }

    /// Samples concealed while the sender was still talking: once its
    /// stream ends, the buffer conceals its last frames like any underrun.
    fn concealed_while_sending(&self) -> u64 {
        let before_end = self.seconds as f64 - 0.2;
        self.trace
            .iter()
            .take_while(|(t, ..)| *t < before_end)
            .last()
            .map_or(0, |(.., concealed)| *concealed)
    }
}

/// 10 % random loss (seed 3), the sender told to expect it (FEC on).
fn ten_percent_loss() -> Scenario {
    Scenario {
        network: vec![(
            0.0,
            NetemConfig {
                loss: 0.10,
                seed: 3,
                ..NetemConfig::default()
            },
        )],
        loss_hint: 10.0,
        ..Scenario::default()
    }
}

#[test]
fn a_clean_link_plays_the_input_back_without_concealment() {
    let outcome = run(&Scenario::default());
    let (delay, correlation) = align(&outcome.input, &outcome.output);
    assert!(correlation > 0.9, "correlation {correlation}");
    assert_eq!(outcome.concealed_while_sending(), 0, "{:?}", outcome.stats);
    assert_eq!(outcome.stats.late_packets, 0);
    // Input to output: the 20 ms frame (sent once it is all in), the
    // network's 20 ms, Opus's 6.5 ms look-ahead, and what the buffer holds
    // once it has converged: its target (a packet plus the jitter it
    // measured, the packet being the one playing) and no more than half a
    // packet over.
    let delay_ms = delay as f64 / 48.0;
    assert!((46.0..=60.0).contains(&delay_ms), "delay {delay_ms} ms");
    // Converged within a second of the first packet (it starts at the
    // conservative initial delay), and held there.
    for (at, current, target, _) in outcome
        .trace
        .iter()
        .filter(|(t, ..)| (1.0..9.5).contains(t))
    {
        assert!(
            *current <= target + 10.0,
            "at {at} s: {current} ms buffered, target {target} ms"
        );
    }
    let (_, _, target, _) = outcome.trace[outcome.trace.len() / 2];
    assert!(target <= 24.0, "a clean link's target: {target} ms");
}

#[test]
fn shorter_pulls_play_the_same_audio_no_later() {
    let frames = run(&Scenario::default());
    let (frame_delay, _) = align(&frames.input, &frames.output);
    let mut longer_delay = frame_delay;
    for pull_ms in [10, PULL_SAMPLES as u32 / 48] {
        let pulls = run(&Scenario {
            pull_ms,
            ..Scenario::default()
        });
        let (pull_delay, correlation) = align(&pulls.input, &pulls.output);
        assert!(correlation > 0.9, "{pull_ms} ms: correlation {correlation}");
        assert_eq!(pulls.concealed_while_sending(), 0, "{:?}", pulls.stats);
        assert!(
            pull_delay <= longer_delay,
            "{pull_ms} ms pulls: {pull_delay} > {longer_delay} samples"
        );
        assert_eq!(pulls.stats.output_samples, frames.stats.output_samples);
        longer_delay = pull_delay;
    }
}

#[test]
fn without_time_scaling_the_delay_moves_by_whole_frames() {
    // A lossy path (no pause is cut there), playout started at 20 ms: the
    // look-ahead frame is added by inserting concealed frames, not by
    // stretching speech.
    let outcome = run(&Scenario {
        config: JitterConfig {
            time_scaling: false,
            initial_delay: Duration::from_millis(20),
            ..JitterConfig::default()
        },
        ..ten_percent_loss()
    });
    let stats = outcome.stats;
    assert!(stats.expanded_samples > 0, "{stats:?}");
    assert_eq!(
        stats.expanded_samples % FRAME_SAMPLES as u64,
        0,
        "{stats:?}"
    );
    assert_eq!(
        stats.accelerated_samples % FRAME_SAMPLES as u64,
        0,
        "{stats:?}"
    );
    let correlation = segment_correlation(&outcome.input, &outcome.output);
    assert!(correlation > 0.7, "{correlation}");
}

#[test]
fn a_lossy_path_keeps_its_margin_in_pauses() {
    // Under loss, audio held over the target is what lets the next
    // packet's FEC arrive in time: pauses are not trimmed.
    let outcome = run(&ten_percent_loss());
    let clean = run(&Scenario::default());
    let (lossy_delay, _) = align(&outcome.input, &outcome.output);
    let (clean_delay, _) = align(&clean.input, &clean.output);
    // The look-ahead frame: a packet more than on a clean link.
    assert!(
        lossy_delay >= clean_delay + 48 * 15,
        "lossy {lossy_delay}, clean {clean_delay} samples"
    );
    // Trimming pauses here would cut ~300 ms in 10 s and conceal twice as
    // much (measured); kept, the buffer only time-scales what is over the
    // target by more than a packet.
    assert!(
        outcome.stats.accelerated_samples < 4_800,
        "{:?}",
        outcome.stats
    );
}

#[test]
fn ten_percent_loss_is_recovered_by_fec_within_a_margin_of_clean() {
    let clean = run(&Scenario::default());
    let lossy = run(&ten_percent_loss());
    let (_, clean_correlation) = align(&clean.input, &clean.output);
    let (_, lossy_correlation) = align(&lossy.input, &lossy.output);
    assert!(lossy.stats.fec_recovered > 20, "{:?}", lossy.stats);
    assert!(
        lossy.stats.concealed_samples > 0,
        "bursts of two losses still need PLC"
    );
    // Stated margin: the correlation with the original stays within 0.15 of
    // the clean run's.
    assert!(
        lossy_correlation > clean_correlation - 0.15,
        "clean {clean_correlation}, 10 % loss {lossy_correlation}"
    );
}

#[test]
fn jitter_raises_the_target_then_it_comes_back_down() {
    let jittery = NetemConfig {
        delay: Duration::from_millis(20),
        jitter: Duration::from_millis(40),
        seed: 5,
        ..NetemConfig::default()
    };
    let outcome = run(&Scenario {
        seconds: 40,
        network: vec![(0.0, jittery), (20.0, NetemConfig::default())],
        ..Scenario::default()
    });
    let at = |seconds: f64| {
        outcome
            .trace
            .iter()
            .find(|(t, ..)| *t >= seconds)
            .copied()
            .unwrap()
    };
    // Adapted after a few seconds: no more concealment while the jitter lasts.
    let (_, _, target_in_jitter, concealed_at_8) = at(8.0);
    let (_, _, _, concealed_at_20) = at(20.0);
    assert!(
        target_in_jitter >= 50.0,
        "target {target_in_jitter} ms under 40 ms of jitter"
    );
    assert_eq!(concealed_at_20, concealed_at_8, "no underruns once adapted");
    // Within 10 s of the jitter stopping, the target is below 60 ms.
    let (_, current, target_after, _) = at(30.0);
    assert!(
        target_after < 60.0,
        "target {target_after} ms 10 s after the jitter stopped"
    );
    assert!(
        current < 100.0,
        "the buffer followed the target down: {current} ms"
    );
    assert!(
        outcome.stats.accelerated_samples > 0,
        "delay came down by time-scaling"
    );
}

#[test]
fn clock_drift_keeps_the_delay_bounded_over_ten_minutes() {
    // Pulled as playout does (5 ms): with 20 ms pulls a frame that arrives
    // just after a pull waits a whole one, and as the drift moves arrivals
    // across the pulls the buffer cuts and conceals (199 concealments in
    // ten minutes at 1.001, against 1 with 10 ms pulls).
    for speed in [1.001, 0.999] {
        let outcome = run(&Scenario {
            seconds: 600,
            sender_speed: speed,
            pull_ms: PLAYOUT_PULL_MS,
            ..Scenario::default()
        });
        let settled: Vec<f64> = outcome
            .trace
            .iter()
            .filter(|(t, ..)| *t > 10.0)
            .map(|(_, current, ..)| *current)
            .collect();
        let highest = settled.iter().copied().fold(0.0, f64::max);
        let lowest = settled.iter().copied().fold(f64::MAX, f64::min);
        assert!(highest < 150.0, "speed {speed}: delay grew to {highest} ms");
        assert!(lowest > 0.0, "speed {speed}: the buffer ran dry");
        let concealed_share =
            outcome.stats.concealed_samples as f64 / outcome.stats.output_samples as f64;
        assert!(concealed_share < 0.01, "speed {speed}: {concealed_share}");
        if speed > 1.0 {
            assert!(outcome.stats.accelerated_samples > 0);
        } else {
            assert!(outcome.stats.expanded_samples > 0, "{:?}", outcome.stats);
        }
    }
}

#[test]
fn a_late_joiner_does_not_hold_seconds_of_audio() {
    let outcome = run(&Scenario {
        receiver_starts: Duration::from_secs(3),
        ..Scenario::default()
    });
    let first_pull = outcome.trace.first().unwrap().0;
    let after_settling = outcome
        .trace
        .iter()
        .find(|(t, ..)| *t >= first_pull + 0.5)
        .unwrap();
    assert!(
        after_settling.1 < after_settling.2 + 60.0,
        "{after_settling:?}"
    );
    assert!(
        outcome.stats.discarded_packets > 100,
        "the backlog was dropped, not played: {:?}",
        outcome.stats
    );
}

#[test]
fn a_speaker_who_pauses_for_seconds_resumes_at_the_target_delay() {
    let outcome = run(&Scenario {
        seconds: 12,
        sender_pause: Some((3.0, 8.0)),
        ..Scenario::default()
    });
    let resumed = outcome.trace.iter().find(|(t, ..)| *t >= 9.0).unwrap();
    assert!(resumed.1 < resumed.2 + 60.0, "{resumed:?}");
    // The pause is not loss: only the first frames of it may be concealed.
    assert!(
        outcome.concealed_while_sending() <= 3 * FRAME_SAMPLES as u64,
        "{:?}",
        outcome.stats
    );
}

#[test]
fn dtx_pauses_are_not_counted_as_loss() {
    let outcome = run(&Scenario {
        dtx: true,
        silence: Some((3.0, 6.0)),
        ..Scenario::default()
    });
    assert!(
        outcome.stats.packets_received < 400,
        "DTX left frames unsent: {:?}",
        outcome.stats
    );
    assert_eq!(outcome.concealed_while_sending(), 0, "{:?}", outcome.stats);
    let (_, correlation) = align(&outcome.input, &outcome.output);
    assert!(correlation > 0.85, "{correlation}");
}

#[test]
fn reordering_and_duplicates_are_absorbed() {
    let outcome = run(&Scenario {
        network: vec![(
            0.0,
            NetemConfig {
                jitter: Duration::from_millis(30),
                duplicate: 0.05,
                seed: 9,
                ..NetemConfig::default()
            },
        )],
        ..Scenario::default()
    });
    assert!(outcome.stats.duplicate_packets > 10, "{:?}", outcome.stats);
    let correlation = segment_correlation(&outcome.input, &outcome.output);
    assert!(correlation > 0.8, "{correlation}");
}

#[test]
fn hostile_packets_never_panic() {
    let mut buffer = JitterBuffer::new(JitterConfig::default()).unwrap();
    let now = Instant::now();
    let mut out = [0.0; FRAME_SAMPLES];
    for n in 0..200_u32 {
        let payload: Vec<u8> = (0..(n % 40) as u8)
            .map(|byte| byte.wrapping_mul(37))
            .collect();
        buffer.insert(
            now + FRAME * n,
            n.wrapping_mul(7919) % 300,
            n.wrapping_mul(104_729),
            n % 2 == 0,
            &payload,
        );
        let _ = buffer.pull(now + FRAME * n, &mut out);
        assert!(out.iter().all(|sample| sample.is_finite()));
    }
    buffer.insert(now, 1, 0, true, &[0; 5_000]);
}

#[test]
fn a_delay_step_raises_the_target_within_a_second() {
    let slower = NetemConfig {
        delay: Duration::from_millis(100),
        ..NetemConfig::default()
    };
    let outcome = run(&Scenario {
        network: vec![(0.0, NetemConfig::default()), (4.0, slower)],
        ..Scenario::default()
    });
    // Packets now come 80 ms later than before: late ones included, the
    // lateness histogram sees it at once.
    let (before, after) = (outcome.target_at(3.9), outcome.target_at(5.0));
    assert!(before < 60.0, "{before}");
    assert!(after >= 90.0, "target {after} ms a second after");
}

/// Ten seconds of speech over a clean link (packets 20 ms after they are
/// sent, pulled every 20 ms) except that packet `stall` and the one after
/// come with the packet after them (60 and 40 ms late) — or, with
/// `for_good`, every packet from `stall` on comes 40 ms later (a new
/// route). `stall` is the first packet from 2 s on whose four
/// predecessors and itself are voiced (`voiced`) or not. Returns the
/// stats, and the most the buffer held over its target at any pull from
/// 1.2 s after the stall, in milliseconds.
fn play_with_a_stall(voiced: bool, for_good: bool) -> (JitterStats, f64) {
    let input = speech_like(10);
    let packets: Vec<Option<Packet>> = encode(
        &input,
        (0.0, Protection::InBandFec, None),
        false,
        (FrameDuration::Ms20, None),
    )
    .into_iter()
    .map(|(_, packet)| packet)
    .collect();
    let is = |index: usize| {
        packets[index]
            .as_ref()
            .is_some_and(|packet| packet.voice == voiced)
    };
    let stall = (100..400)
        .find(|index| (index - 4..=*index).all(is))
        .expect("speech and pauses at some point");
    let start = Instant::now();
    let mut buffer = JitterBuffer::new(JitterConfig::default()).unwrap();
    let arrival = |index: usize| {
        let index = if for_good && index >= stall {
            index + 2
        } else if index == stall || index == stall + 1 {
            stall + 2
        } else {
            index
        };
        FRAME * u32::try_from(index + 1).unwrap()
    };
    let mut out = [0.0; FRAME_SAMPLES];
    let mut worst_over = f64::MIN;
    for pull in 1..500_u32 {
        let at = FRAME * pull;
        // Delivered in order of arrival: the late ones with the next.
        for (index, packet) in packets.iter().enumerate() {
            if let (Some(packet), true) = (packet, arrival(index) == at) {
                buffer.insert(
                    start + at,
                    packet.seq,
                    packet.timestamp,
                    packet.voice,
                    &packet.payload,
                );
            }
        }
        buffer.pull(start + at, &mut out).unwrap();
        let stats = buffer.stats();
        if at >= FRAME * u32::try_from(stall + 60).unwrap() {
            worst_over = worst_over.max(stats.current_delay_ms - stats.target_delay_ms);
        }
    }
    (buffer.stats(), worst_over)
}

#[test]
fn a_stall_does_not_hold_the_delay_high_for_seconds() {
    // While the talker speaks, the buffer runs dry at the stall, conceals
    // without giving up the late packets' slots, and so grows; then the
    // link is clean again. Late is not lost (both still play): a second
    // later the buffer is back at its target, instead of holding the extra
    // for seconds as on a lossy path.
    let (stats, worst) = play_with_a_stall(true, false);
    assert!(
        stats.concealment_events >= 1,
        "the stall ran the buffer dry: {stats:?}"
    );
    assert!(
        worst <= 10.0,
        "1.2 s after the stall, up to {worst} ms held over the target"
    );
}

#[test]
fn a_delay_step_in_a_pause_does_not_silence_the_rest_of_the_call() {
    // In a pause the sender still sends (voiceless packets; no DTX), and
    // the buffer, trimmed to its target, plays comfort noise when nothing
    // is there — moving on past the late packet's time. That packet is
    // still the next one to play: dropped as late, every later packet
    // would be as late (the path is 40 ms longer from then on), and
    // nothing would play again.
    let (stats, worst) = play_with_a_stall(false, true);
    assert!(
        stats.late_packets == 0 && stats.packets_received >= 495,
        "{stats:?}"
    );
    assert!(
        worst <= 10.0,
        "1.2 s after the stall, up to {worst} ms held over the target"
    );
}

#[test]
fn late_packets_in_a_pause_still_play() {
    // The same with two late packets only: they play (the delay grows by
    // what the buffer filled in meanwhile, and the next pause trims it).
    let (stats, worst) = play_with_a_stall(false, false);
    assert!(
        stats.late_packets == 0 && stats.packets_received >= 497,
        "{stats:?}"
    );
    assert!(worst <= 10.0, "up to {worst} ms held over the target");
}

/// Playout's pulls.
const PLAYOUT_PULL_MS: u32 = PULL_SAMPLES as u32 / 48;

/// The low-latency profile: 10 ms frames, pulled as playout does.
fn ten_ms_frames() -> Scenario {
    Scenario {
        frame: FrameDuration::Ms10,
        pull_ms: PLAYOUT_PULL_MS,
        ..Scenario::default()
    }
}

#[test]
fn ten_ms_frames_converge_to_a_lower_target_and_play_sooner() {
    let twenty = run(&Scenario {
        pull_ms: PLAYOUT_PULL_MS,
        ..Scenario::default()
    });
    let ten = run(&ten_ms_frames());
    let (twenty_delay, _) = align(&twenty.input, &twenty.output);
    let (ten_delay, correlation) = align(&ten.input, &ten.output);
    assert!(correlation > 0.9, "correlation {correlation}");
    assert_eq!(ten.concealed_while_sending(), 0, "{:?}", ten.stats);
    assert_eq!(ten.stats.late_packets, 0);
    // The target is a packet plus the lateness measured: 10 ms less, and
    // the buffer holds it within half a packet from a second on.
    for (at, current, target, _) in ten.trace.iter().filter(|(t, ..)| (1.0..9.5).contains(t)) {
        assert!(*target <= 14.0, "at {at} s: target {target} ms");
        assert!(
            *current <= target + 5.0,
            "at {at} s: {current} ms buffered, target {target} ms"
        );
    }
    // A 10 ms frame leaves 10 ms sooner; each buffer converges to within
    // half a packet of its target (5 ms here, 10 ms with 20 ms packets),
    // wherever in that band its start left it: at least 5 ms sooner.
    let (ten_ms, twenty_ms) = (ten_delay as f64 / 48.0, twenty_delay as f64 / 48.0);
    assert!(
        ten_ms + 5.0 <= twenty_ms,
        "10 ms frames play {ten_ms} ms after the input, 20 ms frames {twenty_ms} ms"
    );
}

#[test]
fn ten_ms_frames_under_loss_are_recovered_by_fec() {
    let clean = run(&ten_ms_frames());
    let lossy = run(&Scenario {
        frame: FrameDuration::Ms10,
        pull_ms: PLAYOUT_PULL_MS,
        ..ten_percent_loss()
    });
    assert!(lossy.stats.fec_recovered > 50, "{:?}", lossy.stats);
    // The look-ahead is a 10 ms packet: the target stays under 30 ms.
    let (_, _, target, _) = lossy.trace[lossy.trace.len() / 2];
    assert!(target <= 30.0, "a lossy link's target: {target} ms");
    let clean_score = segment_correlation(&clean.input, &clean.output);
    let lossy_score = segment_correlation(&lossy.input, &lossy.output);
    assert!(
        lossy_score > clean_score - 0.15,
        "10 % loss {lossy_score} against clean {clean_score}"
    );
}

#[test]
fn a_sender_switching_frame_duration_mid_stream_plays_on() {
    // 20 ms frames, then 10 ms ones from 4 s on (the low-latency profile
    // turned on mid-call), then back would be the same: each packet says
    // its duration.
    let outcome = run(&Scenario {
        switch_frame: Some((4.0, FrameDuration::Ms10)),
        pull_ms: PLAYOUT_PULL_MS,
        ..Scenario::default()
    });
    assert_eq!(outcome.concealed_while_sending(), 0, "{:?}", outcome.stats);
    assert!(segment_correlation(&outcome.input, &outcome.output) > 0.9);
    let (twenty, ten) = (outcome.target_at(3.5), outcome.target_at(6.0));
    assert!(twenty > 20.0, "20 ms packets: {twenty}");
    assert!(ten <= 14.0, "10 ms packets: {ten}");
}

/// Bursty loss (Gilbert–Elliott: bad 1 packet in 20, leaving it 35 % of
/// the time, 80 % lost inside; ~9 % lost in all), the sender protecting
/// with `protection`, pulled as playout does.
fn bursty_loss(protection: Protection) -> Scenario {
    Scenario {
        seconds: 20,
        network: vec![(
            0.0,
            NetemConfig {
                burst: Some((0.05, 0.35, 0.8)),
                seed: 5,
                ..NetemConfig::default()
            },
        )],
        loss_hint: 9.0,
        protection,
        pull_ms: PLAYOUT_PULL_MS,
        ..Scenario::default()
    }
}

#[test]
fn bursts_are_recovered_from_dred_with_the_look_ahead_they_need() {
    let fec = run(&bursty_loss(Protection::InBandFec));
    let dred = run(&bursty_loss(Protection::Dred));
    // FEC recovers a burst's last frame only; DRED the whole burst, once
    // the packet after it is in.
    assert!(
        dred.stats.dred_recovered > 2 * fec.stats.fec_recovered,
        "FEC {:?}\nDRED {:?}",
        fec.stats,
        dred.stats
    );
    assert!(
        dred.stats.concealed_samples * 3 < fec.stats.concealed_samples,
        "FEC {:?}\nDRED {:?}",
        fec.stats,
        dred.stats
    );
    // The look-ahead covers most bursts (three packets here), and no more
    // than 60 ms.
    let (fec_target, dred_target) = (fec.target_at(15.0), dred.target_at(15.0));
    assert!(
        dred_target >= fec_target + 20.0 && dred_target <= fec_target + 60.0,
        "targets: FEC {fec_target} ms, DRED {dred_target} ms"
    );
    // DRED is a vocoder: it keeps the speech, not the waveform, so the
    // waveform's correlation is only held within a margin (PESQ and STOI
    // in the benchmark score it).
    let fec_score = segment_correlation(&fec.input, &fec.output);
    let dred_score = segment_correlation(&dred.input, &dred.output);
    assert!(
        dred_score > fec_score - 0.05,
        "FEC {fec_score}, DRED {dred_score}"
    );
}

#[test]
fn jitter_is_absorbed_without_reshaping_speech() {
    // 0–40 ms more delay on each packet, at random (reordered): the newest
    // packet buffered is early or late by that much, so the audio buffered
    // swings by up to 40 ms around its mean with every packet. Playout
    // itself keeps its pace: once the target covers the jitter, speech is
    // neither stretched nor squeezed, and nothing is concealed.
    let outcome = run(&Scenario {
        seconds: 20,
        network: vec![(
            0.0,
            NetemConfig {
                jitter: Duration::from_millis(40),
                seed: 9,
                ..NetemConfig::default()
            },
        )],
        pull_ms: PLAYOUT_PULL_MS,
        ..Scenario::default()
    });
    let stats = outcome.stats;
    let reshaped = stats.accelerate_rate() + stats.expand_rate();
    assert!(
        reshaped < 0.01,
        "{:.3} of the output time-scaled: {stats:?}",
        reshaped
    );
    let score = segment_correlation(&outcome.input, &outcome.output);
    assert!(score > 0.9, "correlation {score}: {stats:?}");
}

#[test]
fn the_dred_look_ahead_goes_once_the_sender_is_back_on_fec() {
    // Bursty loss and DRED for 12 s; then the path loses single packets
    // and the sender is back on FEC (its receiver stopped asking).
    let bursty = bursty_loss(Protection::Dred);
    let outcome = run(&Scenario {
        network: vec![
            bursty.network[0],
            (
                12.0,
                NetemConfig {
                    loss: 0.10,
                    seed: 3,
                    ..NetemConfig::default()
                },
            ),
        ],
        switch_protection: Some((12.0, Protection::InBandFec)),
        ..bursty
    });
    let (with_dred, back_on_fec) = (outcome.target_at(10.0), outcome.target_at(12.5));
    // FEC's look-ahead is a packet; DRED's here two or three. Half a
    // second after the switch it is gone: the first loss the buffer meets
    // is read for DRED and has none.
    assert!(
        with_dred >= back_on_fec + 20.0,
        "target {with_dred} ms with DRED, {back_on_fec} ms back on FEC"
    );
    assert!(outcome.stats.dred_recovered > 0 && outcome.stats.fec_recovered > 0);
}

#[test]
fn ten_ms_frames_bring_the_delay_to_target_through_speech() {
    // A lossy path (no pause is cut there) whose delay drops by 60 ms at
    // 4 s, in 10 ms frames, over a room's noise floor (no frame is silent):
    // playout is 60 ms behind from then on, and no two pitch periods fit
    // in a 10 ms frame to splice one out, so whole frames go until it is
    // back within the band: under loss twice the clean band, 40 ms, plus
    // a pull. (Before: nothing moved it; 115 ms stayed buffered to the end
    // against a target of 22.)
    let path = |delay_ms| NetemConfig {
        delay: Duration::from_millis(delay_ms),
        loss: 0.10,
        seed: 3,
        ..NetemConfig::default()
    };
    let outcome = run(&Scenario {
        frame: FrameDuration::Ms10,
        pull_ms: PLAYOUT_PULL_MS,
        network: vec![(0.0, path(80)), (4.0, path(20))],
        noise_floor: 0.01,
        ..ten_percent_loss()
    });
    let stats = outcome.stats;
    assert!(stats.accelerated_samples > 0, "{stats:?}");
    assert_eq!(
        stats.accelerated_samples % 480,
        0,
        "whole frames: {stats:?}"
    );
    for (at, current, target, _) in outcome
        .trace
        .iter()
        .filter(|(t, ..)| (6.0..9.5).contains(t))
    {
        assert!(
            *current <= target + 50.0,
            "at {at} s: {current} ms buffered, target {target} ms"
        );
    }
    let correlation = segment_correlation(&outcome.input, &outcome.output);
    assert!(correlation > 0.7, "{correlation}");
}
