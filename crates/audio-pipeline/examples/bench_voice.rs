//! Voice processing benchmarks, run by `cargo xtask bench`: the SDK's
//! chain (`VoiceProcessor`, sonora: high-pass, AEC3, NS, AGC2 — all on, as
//! the SDK runs it for a system microphone) beside no processing and beside
//! the `aec3` crate's linear pipeline (its defaults: high-pass, AEC3, NS,
//! AGC2, post filter), all three on the same simulated rooms
//! (`audio_device::room`) in the same run:
//!
//! - far-end single talk: echo return loss enhancement (ERLE) after 2 s,
//!   median over the fixtures × rooms of RT60 0.2, 0.4 and 0.8 s;
//! - a jump of the echo delay by 50, 100 and 150 ms (and −50) mid-call:
//!   the time until every loud quarter second is again cancelled by 20 dB;
//! - clock drift of ±100 ppm: ERLE over the last 10 s of 20;
//! - double talk: the near-end talker's PESQ-WB against their clean
//!   voice, after 3 s of far-end single talk;
//! - transparency: clean near-end speech, no echo, no noise;
//! - noise: speech at 5, 10 and 20 dB SNR in four generated noises (white,
//!   pink, babble made of the other fixtures, hum and fan);
//! - level: talkers from −45 to −10 dBFS, the level that comes out;
//! - CPU per 10 ms block as a share of one core, and allocations per
//!   block.
//!
//! usage: bench_voice FIXTURE_DIR OUT_DIR [PYTHON]  (PYTHON: numpy, pesq
//! and pystoi; without it the PESQ rows are left out.)
//! BENCH_VOICE_ONLY=echo,jump,drift,double,noise,level runs those rounds.

#![allow(
    unsafe_code,
    clippy::print_stdout,
    clippy::unwrap_used,
    clippy::too_many_lines,
    reason = "a benchmark script: a counting allocator, its report, its rounds in order"
)]

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aec3::nodes::audio::AudioFormat as Aec3Format;
use aec3::pipelines::linear::{self, LinearPipeline};
use audio_device::room::{RoomConfig, RoomControl, room};
use audio_device::{AudioFormat, AudioSink, AudioSource, WavSource};
use audio_pipeline::analysis::{energy, erle_db, seconds_until_cancelled};
use audio_pipeline::voice::BLOCK_SAMPLES;
use audio_pipeline::{Resampler, VoiceProcessing, VoiceProcessor};
use support::{global_lag, load_48k, pesq, write};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: same contract as ours.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const RATE: usize = 48_000;

/// A voice processing chain as the benchmark drives it.
trait Chain {
    fn render(&mut self, played: &[f32; BLOCK_SAMPLES]);
    fn capture(&mut self, block: &mut [f32; BLOCK_SAMPLES]);
    /// The SDK switched the output device (only ours acts on it).
    fn echo_path_changed(&mut self) {}
}

struct NoProcessing;

impl Chain for NoProcessing {
    fn render(&mut self, _: &[f32; BLOCK_SAMPLES]) {}
    fn capture(&mut self, _: &mut [f32; BLOCK_SAMPLES]) {}
}

/// The SDK's: what the capture thread runs.
struct Ours(VoiceProcessor);

impl Chain for Ours {
    fn render(&mut self, played: &[f32; BLOCK_SAMPLES]) {
        self.0.analyze_render(played);
    }
    fn capture(&mut self, block: &mut [f32; BLOCK_SAMPLES]) {
        self.0.process_capture(block);
    }
    fn echo_path_changed(&mut self) {
        self.0.echo_path_changed();
    }
}

/// sonora's own chain: its high-pass filter, AEC3, NS and AGC2.
struct SonoraChain {
    apm: sonora::AudioProcessing,
    input: [f32; BLOCK_SAMPLES],
    scratch: [f32; BLOCK_SAMPLES],
}

impl SonoraChain {
    fn new() -> Self {
        use sonora::config::{
            AdaptiveDigital, EchoCanceller, GainController2, HighPassFilter, MaxProcessingRate,
            NoiseSuppression, Pipeline,
        };
        let stream = sonora::StreamConfig::new(48_000, 1);
        let config = sonora::Config {
            pipeline: Pipeline {
                maximum_internal_processing_rate: MaxProcessingRate::Rate48kHz,
                ..Pipeline::default()
            },
            high_pass_filter: Some(HighPassFilter::default()),
            echo_canceller: Some(EchoCanceller::default()),
            noise_suppression: Some(NoiseSuppression::default()),
            gain_controller2: Some(GainController2 {
                adaptive_digital: Some(AdaptiveDigital::default()),
                ..GainController2::default()
            }),
            ..sonora::Config::default()
        };
        Self {
            apm: sonora::AudioProcessing::builder()
                .config(config)
                .capture_config(stream)
                .render_config(stream)
                .build(),
            input: [0.0; BLOCK_SAMPLES],
            scratch: [0.0; BLOCK_SAMPLES],
        }
    }
}

impl Chain for SonoraChain {
    fn render(&mut self, played: &[f32; BLOCK_SAMPLES]) {
        self.apm
            .process_render_f32(&[&played[..]], &mut [&mut self.scratch[..]])
            .unwrap();
    }
    fn capture(&mut self, block: &mut [f32; BLOCK_SAMPLES]) {
        self.input.copy_from_slice(block);
        self.apm
            .process_capture_f32(&[&self.input[..]], &mut [&mut block[..]])
            .unwrap();
    }
}

/// The `aec3` crate's standard chain at its defaults.
struct Aec3Crate {
    pipeline: LinearPipeline,
    input: [f32; BLOCK_SAMPLES],
}

impl Chain for Aec3Crate {
    fn render(&mut self, played: &[f32; BLOCK_SAMPLES]) {
        self.pipeline.handle_render_frame(played).unwrap();
    }
    fn capture(&mut self, block: &mut [f32; BLOCK_SAMPLES]) {
        self.input.copy_from_slice(block);
        self.pipeline
            .process_capture_frame(&self.input, block)
            .unwrap();
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    None,
    Ours,
    Sonora,
    Aec3,
}

const KINDS: [Kind; 4] = [Kind::None, Kind::Ours, Kind::Sonora, Kind::Aec3];
/// The chains that cancel echo.
const CANCELLERS: [Kind; 3] = [Kind::Ours, Kind::Sonora, Kind::Aec3];

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Self::None => "no processing",
            Self::Ours => "ours",
            Self::Sonora => "sonora's chain",
            Self::Aec3 => "aec3 crate",
        }
    }

    fn chain(self) -> Box<dyn Chain> {
        match self {
            Self::None => Box::new(NoProcessing),
            Self::Ours => Box::new(Ours(VoiceProcessor::new(VoiceProcessing::ALL))),
            Self::Sonora => Box::new(SonoraChain::new()),
            Self::Aec3 => {
                let format = Aec3Format::ten_ms(48_000, 1);
                Box::new(Aec3Crate {
                    pipeline: linear::builder(format, format).build().unwrap(),
                    input: [0.0; BLOCK_SAMPLES],
                })
            }
        }
    }
}

/// What the microphone hears besides the echo.
#[derive(Default, Clone)]
struct Scene {
    far: Vec<f32>,
    near: Option<Vec<f32>>,
    noise: Option<Vec<f32>>,
    room: RoomConfig,
    /// At this block, the echo delay moves by this many ms.
    jump: Option<(usize, i32)>,
    /// And the SDK knows it (it switched the device): the canceller
    /// starts afresh.
    jump_known: bool,
}

struct Run {
    microphone: Vec<f32>,
    sent: Vec<f32>,
    /// Processing time per block (capture and render).
    per_block: Duration,
    allocations_per_block: f64,
}

fn source(samples: &[f32]) -> Box<dyn AudioSource> {
    Box::new(WavSource::from_samples(
        AudioFormat::mono(48_000),
        samples.to_vec(),
    ))
}

/// The scene through the room and `kind`'s chain, 10 ms at a time, the
/// reference handed over before each block of capture as the SDK does.
fn run(scene: &Scene, kind: Kind) -> Run {
    let length = scene.far.len().max(scene.near.as_ref().map_or(0, Vec::len));
    let (mut speaker, mut microphone, control): (_, _, RoomControl) = room(
        scene.room,
        scene.near.as_deref().map(source),
        scene.noise.as_deref().map(source),
    );
    let mut chain = kind.chain();
    let mut far = [0.0; BLOCK_SAMPLES];
    let mut block = [0.0; BLOCK_SAMPLES];
    let (mut heard, mut sent) = (Vec::with_capacity(length), Vec::with_capacity(length));
    let mut busy = Duration::ZERO;
    let blocks = length / BLOCK_SAMPLES;
    let allocations_before = ALLOCATIONS.load(Ordering::Relaxed);
    for index in 0..blocks {
        if let Some((at, millis)) = scene.jump
            && at == index
        {
            control.jump_delay(millis);
            if scene.jump_known {
                chain.echo_path_changed();
            }
        }
        let start = index * BLOCK_SAMPLES;
        far.fill(0.0);
        if let Some(part) = scene
            .far
            .get(start..(start + BLOCK_SAMPLES).min(scene.far.len()))
        {
            far[..part.len()].copy_from_slice(part);
        }
        speaker.write(&far);
        microphone.read(&mut block);
        heard.extend_from_slice(&block);
        let began = Instant::now();
        COUNTING.with(|counting| counting.set(true));
        chain.render(&far);
        chain.capture(&mut block);
        COUNTING.with(|counting| counting.set(false));
        busy += began.elapsed();
        sent.extend_from_slice(&block);
    }
    Run {
        microphone: heard,
        sent,
        per_block: busy / blocks.max(1) as u32,
        allocations_per_block: (ALLOCATIONS.load(Ordering::Relaxed) - allocations_before) as f64
            / blocks.max(1) as f64,
    }
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

/// `samples` repeated to `length`.
fn looped(samples: &[f32], length: usize) -> Vec<f32> {
    samples.iter().copied().cycle().take(length).collect()
}

fn scaled(samples: &[f32], gain: f32) -> Vec<f32> {
    samples.iter().map(|sample| sample * gain).collect()
}

fn rms(samples: &[f32]) -> f64 {
    (energy(samples) / samples.len().max(1) as f64).sqrt()
}

/// The level of the speech in `samples` (the 10 ms blocks within 30 dB of
/// the loudest), dBFS.
fn speech_level_dbfs(samples: &[f32]) -> f64 {
    let blocks: Vec<f64> = samples.chunks(480).map(rms).collect();
    let loudest = blocks.iter().copied().fold(0.0, f64::max);
    let active: Vec<f64> = blocks
        .into_iter()
        .filter(|level| *level > loudest * 10_f64.powf(-30.0 / 20.0))
        .collect();
    let power = active.iter().map(|level| level * level).sum::<f64>() / active.len().max(1) as f64;
    10.0 * power.max(1e-20).log10()
}

/// 48 kHz → 16 kHz for scoring.
fn to_16k(samples: &[f32]) -> Vec<f32> {
    let mut down = Resampler::new(48_000, 1, 16_000, 1, 480).unwrap();
    down.push(samples);
    down.push(&vec![0.0; 4_800]);
    let mut out = vec![0.0; down.available_frames()];
    down.pop(&mut out);
    out
}

/// Writes `processed` (48 kHz) aligned to `reference` (16 kHz) for
/// scoring.
fn write_aligned(path: &Path, reference: &[f32], processed: &[f32]) {
    let down = to_16k(processed);
    let lag = global_lag(reference, &down);
    let aligned: Vec<f32> = (0..reference.len())
        .map(|index| down.get(index + lag).copied().unwrap_or(0.0))
        .collect();
    write(path, &aligned);
}

/// Generated noises at 48 kHz, `length` samples, unit RMS.
fn noises(length: usize, babble_from: &[Vec<f32>]) -> Vec<(&'static str, Vec<f32>)> {
    let mut state = 0x2545_F491_u64;
    let mut uniform = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f32 / (1_u64 << 53) as f32 * 2.0 - 1.0
    };
    let white: Vec<f32> = (0..length).map(|_| uniform()).collect();
    // Pink: Paul Kellet's filter of white noise.
    let mut b = [0.0_f32; 3];
    let pink: Vec<f32> = white
        .iter()
        .map(|x| {
            b[0] = 0.997_65 * b[0] + 0.099_046 * x;
            b[1] = 0.963 * b[1] + 0.296_516_4 * x;
            b[2] = 0.57 * b[2] + 1.052_691_3 * x;
            b[0] + b[1] + b[2] + 0.184_8 * x
        })
        .collect();
    let babble: Vec<f32> = (0..length)
        .map(|index| {
            babble_from
                .iter()
                .enumerate()
                .map(|(talker, speech)| speech[(index + talker * 7_919) % speech.len()])
                .sum()
        })
        .collect();
    // Hum and fan: mains at 50 Hz with harmonics over low-passed noise.
    let mut fan = 0.0_f32;
    let hum: Vec<f32> = white
        .iter()
        .enumerate()
        .map(|(index, x)| {
            fan = 0.98 * fan + 0.02 * x;
            let t = index as f32 / RATE as f32;
            let mains: f32 = [(50.0, 1.0), (100.0, 0.5), (150.0, 0.3)]
                .iter()
                .map(|(hz, gain)| gain * (std::f32::consts::TAU * hz * t).sin())
                .sum();
            0.3 * mains + 8.0 * fan
        })
        .collect();
    [
        ("white", white),
        ("pink", pink),
        ("babble", babble),
        ("hum+fan", hum),
    ]
    .into_iter()
    .map(|(name, noise)| {
        let gain = rms(&noise).recip() as f32;
        (name, scaled(&noise, gain))
    })
    .collect()
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_voice FIXTURE_DIR OUT_DIR [PYTHON]";
    let fixtures = PathBuf::from(args.first().expect(usage));
    let out_dir = PathBuf::from(args.get(1).expect(usage)).join("voice");
    let python = args.get(2).map(String::as_str);
    std::fs::create_dir_all(&out_dir).unwrap();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&fixtures)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wav"))
        .collect();
    paths.sort();
    let talkers: Vec<(Vec<f32>, Vec<f32>)> = paths.iter().map(|path| load_48k(path)).collect();
    let speech_48k: Vec<Vec<f32>> = talkers.iter().map(|(_, at_48k)| at_48k.clone()).collect();

    // BENCH_VOICE_ONLY=echo,jump,drift,double,noise,level: those rounds.
    let only = std::env::var("BENCH_VOICE_ONLY").ok();
    let wanted = |round: &str| {
        only.as_ref()
            .is_none_or(|only| only.split(',').any(|name| name == round))
    };
    if wanted("echo") {
        single_talk(&speech_48k);
    }
    if wanted("jump") {
        delay_jumps(&speech_48k);
    }
    if wanted("drift") {
        drift(&speech_48k);
    }
    let mut cpu = Vec::new();
    if wanted("double") {
        double_talk(&talkers, &out_dir, python, &mut cpu);
    }
    if wanted("noise") {
        transparency_and_noise(&talkers, &speech_48k, &out_dir, python);
    }
    if wanted("level") {
        level(&speech_48k);
    }
    println!("\n== CPU per 10 ms block (capture and render, double talk), one core");
    for (kind, per_block, allocations) in cpu {
        println!(
            "  {:<16} {:>7.1} µs = {:>5.2} % of a core, {allocations:.0} allocations a block",
            kind.name(),
            per_block.as_secs_f64() * 1e6,
            per_block.as_secs_f64() / 0.010 * 100.0
        );
    }
}

const ROOMS: [f32; 3] = [0.2, 0.4, 0.8];

fn single_talk(speech: &[Vec<f32>]) {
    println!("== far-end single talk: ERLE after 2 s (dB), fixtures × RT60 0.2/0.4/0.8 s, median");
    for kind in KINDS {
        let mut values = Vec::new();
        let mut by_room = [Vec::new(), Vec::new(), Vec::new()];
        for (index, far) in speech.iter().enumerate() {
            for (room_index, rt60) in ROOMS.into_iter().enumerate() {
                let scene = Scene {
                    far: far.clone(),
                    room: RoomConfig {
                        rt60_seconds: rt60,
                        seed: index as u64 + 1,
                        ..RoomConfig::default()
                    },
                    ..Scene::default()
                };
                let run = run(&scene, kind);
                let erle = erle_db(&run.microphone[2 * RATE..], &run.sent[2 * RATE..]);
                values.push(erle);
                by_room[room_index].push(erle);
            }
        }
        let rooms: Vec<String> = by_room
            .iter_mut()
            .map(|room| format!("{:.1}", median(room)))
            .collect();
        println!(
            "  {:<16} median {:>5.1} dB (min {:.1}); by RT60: {}",
            kind.name(),
            median(&mut values),
            values.iter().copied().fold(f64::MAX, f64::min),
            rooms.join(" / ")
        );
    }
    println!("  target: ≥ 30 dB");
}

/// The fixtures one after another, `seconds` long.
fn long_far_end(speech: &[Vec<f32>], seconds: usize) -> Vec<f32> {
    let all: Vec<f32> = speech.iter().flatten().copied().collect();
    looped(&all, seconds * RATE)
}

fn delay_jumps(speech: &[Vec<f32>]) {
    println!("\n== a jump of the echo delay at 8 s: seconds until ERLE is back over 20 dB");
    let far = long_far_end(speech, 16);
    let rows = CANCELLERS
        .into_iter()
        .map(|kind| (kind, false, kind.name()))
        .chain([(Kind::Ours, true, "ours, SDK knows")]);
    for (kind, jump_known, name) in rows {
        let mut row = Vec::new();
        for jump in [50, 100, 150, -50] {
            let scene = Scene {
                far: far.clone(),
                room: RoomConfig {
                    delay_ms: 100,
                    ..RoomConfig::default()
                },
                jump: Some((800, jump)),
                jump_known,
                ..Scene::default()
            };
            let run = run(&scene, kind);
            let recovery = seconds_until_cancelled(&run.microphone, &run.sent, 8 * RATE, 20.0);
            row.push(format!(
                "{jump:+} ms: {}",
                recovery.map_or("never".into(), |seconds| format!("{seconds:.2} s"))
            ));
        }
        println!("  {name:<16} {}", row.join(", "));
    }
    println!(
        "  target: ≤ 1 s (\"SDK knows\": the device switch that moved it was the SDK's own, and the canceller starts afresh)"
    );
}

fn drift(speech: &[Vec<f32>]) {
    println!("\n== clock drift: ERLE over the last 10 s of 20 (dB)");
    let far = long_far_end(speech, 20);
    for kind in CANCELLERS {
        let row: Vec<String> = [100.0, -100.0]
            .into_iter()
            .map(|drift_ppm| {
                let scene = Scene {
                    far: far.clone(),
                    room: RoomConfig {
                        drift_ppm,
                        ..RoomConfig::default()
                    },
                    ..Scene::default()
                };
                let run = run(&scene, kind);
                let erle = erle_db(&run.microphone[10 * RATE..], &run.sent[10 * RATE..]);
                format!("{drift_ppm:+} ppm: {erle:.1} dB")
            })
            .collect();
        println!("  {:<16} {}", kind.name(), row.join(", "));
    }
}

/// PESQ of each kind's file against `reference`, averaged per kind.
fn score(python: Option<&str>, jobs: &[(PathBuf, Vec<PathBuf>)]) -> Option<Vec<f64>> {
    let mut sums = vec![0.0; KINDS.len()];
    for (reference, degraded) in jobs {
        let scores = pesq(python, reference, degraded);
        for (sum, score) in sums.iter_mut().zip(scores) {
            *sum += score?[0];
        }
    }
    Some(
        sums.into_iter()
            .map(|sum| sum / jobs.len() as f64)
            .collect(),
    )
}

fn double_talk(
    talkers: &[(Vec<f32>, Vec<f32>)],
    out_dir: &Path,
    python: Option<&str>,
    cpu: &mut Vec<(Kind, Duration, f64)>,
) {
    println!("\n== double talk: the near-end talker's PESQ-WB against their clean voice");
    let warm_up = 3 * RATE;
    let mut jobs = Vec::new();
    let mut busy = vec![(Duration::ZERO, 0.0); KINDS.len()];
    for (index, (near_16k, near_48k)) in talkers.iter().enumerate() {
        let far = &talkers[(index + 1) % talkers.len()].1;
        let mut near = vec![0.0; warm_up];
        near.extend_from_slice(near_48k);
        let scene = Scene {
            far: looped(far, near.len()),
            near: Some(near),
            room: RoomConfig {
                seed: index as u64 + 1,
                ..RoomConfig::default()
            },
            ..Scene::default()
        };
        let reference = out_dir.join(format!("double-talk-{index}-reference.wav"));
        write(&reference, near_16k);
        let mut degraded = Vec::new();
        for (slot, kind) in KINDS.into_iter().enumerate() {
            let run = run(&scene, kind);
            busy[slot].0 += run.per_block;
            busy[slot].1 += run.allocations_per_block;
            let path = out_dir.join(format!("double-talk-{index}-{kind:?}.wav"));
            write_aligned(&path, near_16k, &run.sent[warm_up..]);
            degraded.push(path);
        }
        jobs.push((reference, degraded));
    }
    for (kind, (per_block, allocations)) in KINDS.into_iter().zip(busy) {
        cpu.push((
            kind,
            per_block / talkers.len() as u32,
            allocations / talkers.len() as f64,
        ));
    }
    match score(python, &jobs) {
        Some(scores) => {
            for (kind, pesq) in KINDS.into_iter().zip(&scores) {
                println!("  {:<16} PESQ {pesq:.2}", kind.name());
            }
            let best = scores[1..].iter().copied().fold(f64::MIN, f64::max);
            println!(
                "  target: ≥ {:.2} (no processing + 1.0) and ≥ {:.2} (best − 0.1): {}",
                scores[0] + 1.0,
                best - 0.1,
                if scores[1] >= scores[0] + 1.0 && scores[1] >= best - 0.1 {
                    "met"
                } else {
                    "MISSED"
                }
            );
        }
        None => println!("  (no PESQ: no python with pesq)"),
    }
}

fn transparency_and_noise(
    talkers: &[(Vec<f32>, Vec<f32>)],
    speech: &[Vec<f32>],
    out_dir: &Path,
    python: Option<&str>,
) {
    println!("\n== transparency and noise: PESQ-WB against the clean talker, mean over fixtures");
    let longest = speech.iter().map(Vec::len).max().unwrap_or(0);
    let noises = noises(longest, speech);
    let mut conditions: Vec<(String, Option<(&str, f64)>)> = vec![("clean".into(), None)];
    for (name, _) in &noises {
        for snr in [5.0, 10.0, 20.0] {
            conditions.push((format!("{name} {snr:.0} dB"), Some((name, snr))));
        }
    }
    for (label, noise) in conditions {
        let mut jobs = Vec::new();
        for (index, (near_16k, near_48k)) in talkers.iter().enumerate() {
            let noise = noise.map(|(name, snr)| {
                let (_, samples) = noises.iter().find(|(kind, _)| *kind == name).unwrap();
                let gain = rms(near_48k) * 10_f64.powf(-snr / 20.0);
                scaled(&samples[..near_48k.len()], gain as f32)
            });
            let scene = Scene {
                far: Vec::new(),
                near: Some(near_48k.clone()),
                noise,
                ..Scene::default()
            };
            let reference = out_dir.join(format!("noise-{index}-reference.wav"));
            write(&reference, near_16k);
            let degraded: Vec<PathBuf> = KINDS
                .into_iter()
                .map(|kind| {
                    let run = run(&scene, kind);
                    let path = out_dir.join(format!(
                        "noise-{index}-{}-{kind:?}.wav",
                        label.replace([' ', '+'], "-")
                    ));
                    write_aligned(&path, near_16k, &run.sent);
                    path
                })
                .collect();
            jobs.push((reference, degraded));
        }
        let Some(scores) = score(python, &jobs) else {
            println!("  (no PESQ: no python with pesq)");
            return;
        };
        let verdict = match noise {
            None => (scores[0] - scores[1] <= 0.1, "drop ≤ 0.1"),
            Some((_, snr)) if snr < 15.0 => (scores[1] - scores[0] >= 0.3, "gain ≥ 0.3"),
            Some(_) => (scores[1] >= scores[0] - 0.02, "no loss"),
        };
        println!(
            "  {label:<14} none {:.2}  ours {:.2} ({:+.2})  sonora's {:.2} ({:+.2})  aec3 crate {:.2} ({:+.2})   target {}: {}",
            scores[0],
            scores[1],
            scores[1] - scores[0],
            scores[2],
            scores[2] - scores[0],
            scores[3],
            scores[3] - scores[0],
            verdict.1,
            if verdict.0 { "met" } else { "MISSED" }
        );
    }
}

fn level(speech: &[Vec<f32>]) {
    println!("\n== level: a talker's speech level in and out (dBFS), the last 10 s of 20");
    for kind in CANCELLERS {
        let mut row = Vec::new();
        let mut outputs = Vec::new();
        for level_in in [-45.0, -35.0, -25.0, -18.0, -10.0] {
            let mut per_talker = Vec::new();
            for talker in speech {
                let gain = 10_f64.powf((level_in - speech_level_dbfs(talker)) / 20.0);
                let near = scaled(&looped(talker, 20 * RATE), gain as f32);
                let scene = Scene {
                    near: Some(near),
                    ..Scene::default()
                };
                let run = run(&scene, kind);
                per_talker.push(speech_level_dbfs(&run.sent[10 * RATE..]));
            }
            let out = per_talker.iter().sum::<f64>() / per_talker.len() as f64;
            outputs.push(out);
            row.push(format!("{level_in:.0} → {out:.1}"));
        }
        // The gain control's own target: where it brings quiet talkers.
        let target = outputs[..3].iter().sum::<f64>() / 3.0;
        let within = outputs
            .iter()
            .filter(|out| (*out - target).abs() <= 3.0)
            .count();
        println!(
            "  {:<16} {}   (target {target:.1}: {within} of {} within ±3 dB)",
            kind.name(),
            row.join(", "),
            outputs.len()
        );
    }
    println!("  target: every level within ±3 dB of where the gain control brings quiet talkers");
}
