//! A simulated room (feature `room`): a loudspeaker and a microphone in
//! one space, for testing and measuring echo cancellation without
//! hardware.
//!
//! What the [`RoomSpeaker`] is given reaches the [`RoomMicrophone`] the
//! way a laptop's speaker reaches its own microphone: soft-clipped by a
//! small loudspeaker, through a room's impulse response (generated for a
//! reverberation time, [`impulse_response`]), attenuated (the echo
//! return loss), after a delay that can jump mid-call
//! ([`RoomControl::jump_delay`]), and read by a microphone whose clock may
//! drift from the speaker's. The microphone also hears a near-end talker
//! and background noise, from any [`AudioSource`].
//!
//! The two halves share a lock-free ring: the speaker (the playout thread)
//! convolves and pushes, the microphone (the capture thread) pops, so the
//! pair works as the SDK's devices in a real call. The delay is what is in
//! flight between them: when the playout thread falls behind and the
//! microphone reads what was in flight, the echo comes sooner from then
//! on, as between two devices whose buffers drained
//! ([`RoomControl::echo_delay_ms`] says what the microphone hears now) —
//! but never sooner than [`DEVICE_LATENCY_MS`] after the speaker was given
//! it: a loudspeaker that ran dry starts again behind its own buffer, and
//! no echo reaches a microphone before the sound was played. Used from one thread —
//! play a block, then capture one — it is deterministic, for benchmarks.
//!
//! The impulse response is what Schroeder's statistical model of a
//! diffuse field gives: a direct path, a few early reflections, and
//! Gaussian noise decaying by 60 dB over the reverberation time. It is not
//! an acoustic simulation of a given room, and says so.

use std::sync::Arc;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use rustfft::num_complex::Complex32;
use rustfft::{Fft, FftPlanner};

use crate::{AudioFormat, AudioSink, AudioSource};

/// The room's sample rate: both halves are 48 kHz mono.
pub const ROOM_RATE: u32 = 48_000;

/// Samples in the convolver's block (10 ms).
const BLOCK: usize = 480;

/// The least time from the speaker's input to the microphone's output:
/// the two devices' own buffers, converters and the air, which no
/// scheduling can shorten.
pub const DEVICE_LATENCY_MS: u32 = 10;

/// [`DEVICE_LATENCY_MS`] in samples.
const DEVICE_LATENCY: usize = DEVICE_LATENCY_MS as usize * ROOM_RATE as usize / 1000;

/// How a room sounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoomConfig {
    /// Reverberation time (RT60), seconds: 0.2 is a furnished small office,
    /// 0.8 a bare meeting room.
    pub rt60_seconds: f32,
    /// From the speaker to the microphone, milliseconds (the devices'
    /// buffers and the air).
    pub delay_ms: u32,
    /// How much quieter the echo is than what the speaker is given, dB (a
    /// laptop: 0–10).
    pub echo_return_loss_db: f32,
    /// How hard the loudspeaker is driven into its soft clipping: 0 is a
    /// linear speaker, 1 clips a full-scale signal by about 2.4 dB.
    pub loudspeaker_drive: f32,
    /// How much faster the microphone's clock runs than the speaker's, in
    /// parts per million (two sound cards: ±100).
    pub drift_ppm: f32,
    /// From the loudspeaker to the microphone, metres (a laptop: 0.15).
    pub speaker_distance_m: f32,
    /// The room's volume, cubic metres (an office: 30–100).
    pub room_volume_m3: f32,
    /// Seeds the impulse response's noise.
    pub seed: u64,
}

impl RoomConfig {
    /// How much louder the direct path is than the reverberation, dB (see
    /// [`impulse_response`]).
    pub fn direct_to_reverberant_db(&self) -> f32 {
        let critical_distance =
            0.057 * (self.room_volume_m3.max(1.0) / self.rt60_seconds.clamp(0.05, 2.0)).sqrt();
        20.0 * (critical_distance / self.speaker_distance_m.max(0.01)).log10()
    }
}

impl Default for RoomConfig {
    fn default() -> Self {
        Self {
            rt60_seconds: 0.4,
            delay_ms: 60,
            echo_return_loss_db: 6.0,
            loudspeaker_drive: 0.5,
            drift_ppm: 0.0,
            speaker_distance_m: 0.15,
            room_volume_m3: 50.0,
            seed: 1,
        }
    }
}

/// A room impulse response at [`ROOM_RATE`] for `config`'s reverberation
/// time, speaker distance and room volume, scaled so that its energy is 1
/// (the echo's level is set by [`RoomConfig::echo_return_loss_db`]). Its
/// length is the time the response takes to fall by 60 dB.
///
/// The direct path and the diffuse tail share the energy as Sabine's
/// critical distance says: `r_c = 0.057·√(V/RT60)` metres, and the direct
/// path is `20·log10(r_c / r)` dB louder than the tail at distance `r`
/// (a laptop's speaker 15 cm from its microphone in a 50 m³ room: 13 dB
/// at RT60 0.4 s, 10 dB at 0.8 s).
pub fn impulse_response(config: &RoomConfig) -> Vec<f32> {
    let rt60 = config.rt60_seconds.clamp(0.05, 2.0);
    let length = (rt60 * ROOM_RATE as f32) as usize;
    let mut noise = Gaussian::new(config.seed);
    // Amplitude falls by 10^-3 (60 dB) over rt60.
    let decay_per_sample = (-3.0 * std::f32::consts::LN_10 / (rt60 * ROOM_RATE as f32)).exp();
    // The diffuse tail starts after the first reflection's gap (2 ms), so
    // the direct path stays the first and loudest arrival.
    let gap = (0.002 * ROOM_RATE as f32) as usize;
    let mut tail = Vec::with_capacity(length);
    let mut envelope = 1.0_f32;
    for index in 0..length {
        let fade_in = (index.saturating_sub(gap) as f32 / gap as f32).min(1.0);
        tail.push(fade_in * envelope * noise.next());
        envelope *= decay_per_sample;
    }
    // Early reflections: a desk, a wall, the ceiling.
    for (at_ms, gain) in [(2.9_f32, -0.6_f32), (7.3, 0.45), (11.8, -0.35)] {
        let index = (at_ms * ROOM_RATE as f32 / 1000.0) as usize;
        if let Some(sample) = tail.get_mut(index) {
            *sample += gain * (-3.0 * std::f32::consts::LN_10 * at_ms / 1000.0 / rt60).exp() * 4.0;
        }
    }
    let tail_energy: f32 = tail.iter().map(|sample| sample * sample).sum();
    let wanted_tail_energy = 10_f32.powf(-config.direct_to_reverberant_db() / 10.0);
    let tail_scale = (wanted_tail_energy / tail_energy.max(f32::MIN_POSITIVE)).sqrt();
    let mut response: Vec<f32> = tail.iter().map(|sample| sample * tail_scale).collect();
    response[0] = 1.0;
    let energy: f32 = response.iter().map(|sample| sample * sample).sum();
    let scale = energy.sqrt().recip();
    response.iter_mut().for_each(|sample| *sample *= scale);
    response
}

/// Standard normal samples from a small deterministic generator
/// (xorshift64*, Box–Muller): the room must not depend on a random crate.
struct Gaussian {
    state: u64,
    spare: Option<f32>,
}

impl Gaussian {
    fn new(seed: u64) -> Self {
        Self {
            state: seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1,
            spare: None,
        }
    }

    fn uniform(&mut self) -> f32 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 40;
        (bits as f32 + 0.5) / (1_u64 << 24) as f32
    }

    fn next(&mut self) -> f32 {
        if let Some(spare) = self.spare.take() {
            return spare;
        }
        let radius = (-2.0 * self.uniform().ln()).sqrt();
        let angle = std::f32::consts::TAU * self.uniform();
        self.spare = Some(radius * angle.sin());
        radius * angle.cos()
    }
}

/// Uniformly partitioned FFT convolution in [`BLOCK`]-sample blocks: a
/// 0.8 s response costs 80 spectrum products a block, not 38,400
/// multiplications a sample.
struct Convolver {
    forward: Arc<dyn Fft<f32>>,
    inverse: Arc<dyn Fft<f32>>,
    /// The response's partitions, each a 2·BLOCK spectrum.
    partitions: Vec<Vec<Complex32>>,
    /// Spectra of the last inputs, newest at `newest`.
    history: Vec<Vec<Complex32>>,
    newest: usize,
    previous_block: Vec<f32>,
    work: Vec<Complex32>,
    accumulator: Vec<Complex32>,
    scratch: Vec<Complex32>,
}

impl Convolver {
    fn new(response: &[f32]) -> Self {
        let size = 2 * BLOCK;
        let mut planner = FftPlanner::new();
        let forward = planner.plan_fft_forward(size);
        let inverse = planner.plan_fft_inverse(size);
        let scratch_len = forward
            .get_inplace_scratch_len()
            .max(inverse.get_inplace_scratch_len());
        let mut scratch = vec![Complex32::default(); scratch_len];
        let partitions: Vec<Vec<Complex32>> = response
            .chunks(BLOCK)
            .map(|part| {
                let mut spectrum = vec![Complex32::default(); size];
                for (slot, sample) in spectrum.iter_mut().zip(part) {
                    slot.re = *sample;
                }
                forward.process_with_scratch(&mut spectrum, &mut scratch);
                spectrum
            })
            .collect();
        let count = partitions.len().max(1);
        Self {
            forward,
            inverse,
            partitions,
            history: vec![vec![Complex32::default(); size]; count],
            newest: 0,
            previous_block: vec![0.0; BLOCK],
            work: vec![Complex32::default(); size],
            accumulator: vec![Complex32::default(); size],
            scratch,
        }
    }

    /// Convolves one block in place (overlap-save).
    fn process(&mut self, block: &mut [f32; BLOCK]) {
        let size = 2 * BLOCK;
        for (slot, sample) in self
            .work
            .iter_mut()
            .zip(self.previous_block.iter().chain(block.iter()))
        {
            *slot = Complex32::new(*sample, 0.0);
        }
        self.previous_block.copy_from_slice(block);
        self.forward
            .process_with_scratch(&mut self.work, &mut self.scratch);
        let count = self.history.len();
        self.newest = (self.newest + 1) % count;
        self.history[self.newest].copy_from_slice(&self.work);
        self.accumulator.fill(Complex32::default());
        for (age, partition) in self.partitions.iter().enumerate() {
            let input = &self.history[(self.newest + count - age) % count];
            for ((sum, x), h) in self.accumulator.iter_mut().zip(input).zip(partition) {
                *sum += x * h;
            }
        }
        self.inverse
            .process_with_scratch(&mut self.accumulator, &mut self.scratch);
        let scale = 1.0 / size as f32;
        for (out, value) in block.iter_mut().zip(&self.accumulator[BLOCK..]) {
            *out = value.re * scale;
        }
    }
}

/// A room: the speaker half, the microphone half, and a handle to move
/// the echo's delay. See the [module docs](self).
pub fn room(
    config: RoomConfig,
    near_end: Option<Box<dyn AudioSource>>,
    noise: Option<Box<dyn AudioSource>>,
) -> (RoomSpeaker, RoomMicrophone, RoomControl) {
    let response = impulse_response(&config);
    // Two seconds of echo in flight: far more than any delay or any gap
    // between the playout and capture threads.
    let (mut producer, consumer) = HeapRb::<f32>::new(2 * ROOM_RATE as usize).split();
    let delay = (config.delay_ms as usize * ROOM_RATE as usize / 1000).min(ROOM_RATE as usize);
    producer.push_iter(std::iter::repeat_n(0.0, delay));
    let delay_change = Arc::new(AtomicI32::new(0));
    let dropout = Arc::new(AtomicU32::new(0));
    let underrun = Arc::new(AtomicU64::new(0));
    let heard_delay = Arc::new(AtomicU32::new(u32::try_from(delay).unwrap_or(u32::MAX)));
    let speaker = RoomSpeaker {
        convolver: Convolver::new(&response),
        gain: 10_f32.powf(-config.echo_return_loss_db / 20.0),
        drive: config.loudspeaker_drive.max(0.0),
        pending: [0.0; BLOCK],
        filled: 0,
        echo: producer,
        dropout: Arc::clone(&dropout),
        underrun,
    };
    let microphone = RoomMicrophone {
        echo: consumer,
        drift: Stretch::new(1.0 / (1.0 + f64::from(config.drift_ppm) * 1e-6)),
        delay_change: Arc::clone(&delay_change),
        heard_delay: Arc::clone(&heard_delay),
        silence_to_insert: 0,
        earlier: delay,
        gap: 0,
        near_end: near_end.map(Mono48k::new),
        noise: noise.map(Mono48k::new),
        near_end_scratch: Vec::new(),
    };
    let control = RoomControl {
        delay_change,
        dropout,
        heard_delay,
    };
    (speaker, microphone, control)
}

/// Moves a room's echo delay while it plays, and says what it is.
#[derive(Debug, Clone)]
pub struct RoomControl {
    delay_change: Arc<AtomicI32>,
    dropout: Arc<AtomicU32>,
    heard_delay: Arc<AtomicU32>,
}

impl RoomControl {
    /// Makes the echo arrive `millis` later (negative: sooner) from the
    /// microphone's next read: a device switch, a Bluetooth headset.
    pub fn jump_delay(&self, millis: i32) {
        self.delay_change
            .fetch_add(millis * (ROOM_RATE / 1000) as i32, Ordering::Relaxed);
    }

    /// The loudspeaker's device underruns for `millis` before it plays what
    /// it is given next: that much silence, after which everything plays
    /// (and echoes) `millis` later, as after a real device's underrun. The
    /// speaker reports it ([`AudioSink::underrun_frames`]), as a device
    /// does; a [`jump_delay`](Self::jump_delay) is a move nobody reports.
    pub fn drop_out(&self, millis: u32) {
        self.dropout
            .fetch_add(millis * (ROOM_RATE / 1000), Ordering::Relaxed);
    }

    /// The echo's delay as the microphone's latest read left it: what is in
    /// flight between the halves, milliseconds. The configured delay until
    /// a jump, or until the playout side falls behind the microphone.
    pub fn echo_delay_ms(&self) -> u32 {
        // The microphone's interpolation holds a sample more than is in
        // flight: to the nearest millisecond.
        let per_ms = ROOM_RATE / 1000;
        (self.heard_delay.load(Ordering::Relaxed) + per_ms / 2) / per_ms
    }
}

/// The loudspeaker: 48 kHz mono in; the echo goes to the microphone.
pub struct RoomSpeaker {
    convolver: Convolver,
    gain: f32,
    drive: f32,
    pending: [f32; BLOCK],
    filled: usize,
    echo: HeapProd<f32>,
    /// Silence still to be played before the next write, in samples.
    dropout: Arc<AtomicU32>,
    /// Silence played so far for dropouts, in samples.
    underrun: Arc<AtomicU64>,
}

impl std::fmt::Debug for RoomSpeaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomSpeaker")
            .field("gain", &self.gain)
            .field("drive", &self.drive)
            .finish_non_exhaustive()
    }
}

impl RoomSpeaker {
    /// A small loudspeaker's soft clipping: `tanh(d·x)/d`, linear for small
    /// signals and for `d = 0`.
    fn loudspeaker(&self, sample: f32) -> f32 {
        if self.drive <= f32::EPSILON {
            sample
        } else {
            (self.drive * sample).tanh() / self.drive
        }
    }
}

impl AudioSink for RoomSpeaker {
    fn format(&self) -> AudioFormat {
        AudioFormat::mono(ROOM_RATE)
    }

    fn write(&mut self, samples: &[f32]) {
        let silence = self.dropout.swap(0, Ordering::Relaxed);
        if silence > 0 {
            // Through the room like any sound: the reverberation of what
            // played before the dropout goes on ringing in it.
            for _ in 0..silence {
                self.play(0.0);
            }
            self.underrun
                .fetch_add(u64::from(silence), Ordering::Relaxed);
        }
        for sample in samples {
            self.play(*sample);
        }
    }

    fn underrun_frames(&self) -> u64 {
        self.underrun.load(Ordering::Relaxed)
    }
}

impl RoomSpeaker {
    fn play(&mut self, sample: f32) {
        self.pending[self.filled] = self.loudspeaker(sample);
        self.filled += 1;
        if self.filled == BLOCK {
            self.convolver.process(&mut self.pending);
            let gain = self.gain;
            // A full ring (nobody captures) drops the echo, as a
            // microphone that is not open hears nothing.
            self.echo
                .push_iter(self.pending.iter().map(|sample| sample * gain));
            self.filled = 0;
        }
    }
}

/// The microphone: the echo, the near-end talker and the noise, 48 kHz
/// mono.
pub struct RoomMicrophone {
    echo: HeapCons<f32>,
    /// The echo at the microphone's clock: drift.
    drift: Stretch,
    delay_change: Arc<AtomicI32>,
    /// What is in flight after the latest read, for [`RoomControl`].
    heard_delay: Arc<AtomicU32>,
    /// Samples of silence still to go in before the waiting echo (a delay
    /// that jumped up).
    silence_to_insert: usize,
    /// Of the echo waiting in the ring, how much was written before the
    /// latest read: what the speaker is playing out now.
    earlier: usize,
    /// Silence between that and what the speaker was given since: a
    /// speaker that ran (nearly) dry plays new sound no sooner than the
    /// devices' latency.
    gap: usize,
    near_end: Option<Mono48k>,
    noise: Option<Mono48k>,
    near_end_scratch: Vec<f32>,
}

impl std::fmt::Debug for RoomMicrophone {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomMicrophone")
            .field("drift", &self.drift.step)
            .field("echo_waiting", &self.echo.occupied_len())
            .finish_non_exhaustive()
    }
}

impl RoomMicrophone {
    fn apply_delay_change(&mut self) {
        let change = self.delay_change.swap(0, Ordering::Relaxed);
        if change < 0 {
            // Sooner: what would have been heard in between is never heard.
            let mut skip = change.unsigned_abs() as usize;
            let inserted = skip.min(self.silence_to_insert);
            self.silence_to_insert -= inserted;
            skip -= inserted;
            let earlier = skip.min(self.earlier);
            self.echo.skip(earlier);
            self.earlier -= earlier;
            skip -= earlier;
            let gap = skip.min(self.gap);
            self.gap -= gap;
            skip -= gap;
            self.echo.skip(skip.min(self.echo.occupied_len()));
        } else {
            // Later: silence goes in before what is waiting.
            self.silence_to_insert += change.unsigned_abs() as usize;
        }
    }

    /// What the speaker was given since the latest read goes behind what
    /// it is playing, at least the devices' latency from now.
    fn place_what_was_written(&mut self) {
        let written = self.echo.occupied_len().saturating_sub(self.earlier);
        if written > 0 && self.gap == 0 {
            self.gap = DEVICE_LATENCY.saturating_sub(self.silence_to_insert + self.earlier);
        }
    }

    fn next_echo(&mut self) -> f32 {
        if self.silence_to_insert > 0 {
            self.silence_to_insert -= 1;
            return 0.0;
        }
        if self.earlier > 0 {
            self.earlier -= 1;
        } else if self.gap > 0 {
            self.gap -= 1;
            return 0.0;
        }
        self.echo.try_pop().unwrap_or(0.0)
    }
}

impl AudioSource for RoomMicrophone {
    fn format(&self) -> AudioFormat {
        AudioFormat::mono(ROOM_RATE)
    }

    fn read(&mut self, out: &mut [f32]) -> usize {
        self.apply_delay_change();
        self.place_what_was_written();
        let mut drift = self.drift;
        drift.read(out, || self.next_echo());
        self.drift = drift;
        if self.gap == 0 {
            self.earlier = self.echo.occupied_len();
        }
        // What the speaker is given next is heard this much later.
        let in_flight =
            (self.echo.occupied_len() + self.silence_to_insert + self.gap).max(DEVICE_LATENCY);
        self.heard_delay.store(
            u32::try_from(in_flight).unwrap_or(u32::MAX),
            Ordering::Relaxed,
        );
        self.near_end_scratch.resize(out.len(), 0.0);
        for source in [&mut self.near_end, &mut self.noise].into_iter().flatten() {
            source.read(&mut self.near_end_scratch);
            for (sample, add) in out.iter_mut().zip(&self.near_end_scratch) {
                *sample += add;
            }
        }
        out.len()
    }
}

/// A stream read at another rate by linear interpolation: `step` input
/// samples per output sample.
#[derive(Debug, Clone, Copy)]
struct Stretch {
    step: f64,
    /// Fractional position between `current` and `next`.
    position: f64,
    started: bool,
    current: f32,
    next: f32,
}

impl Stretch {
    fn new(step: f64) -> Self {
        Self {
            step,
            position: 0.0,
            started: false,
            current: 0.0,
            next: 0.0,
        }
    }

    /// Fills `out`, taking input samples from `input` as they are needed.
    fn read(&mut self, out: &mut [f32], mut input: impl FnMut() -> f32) {
        if !self.started {
            self.started = true;
            self.current = input();
            self.next = input();
        }
        for sample in out.iter_mut() {
            *sample = self.current + self.position as f32 * (self.next - self.current);
            self.position += self.step;
            while self.position >= 1.0 {
                self.position -= 1.0;
                self.current = self.next;
                self.next = input();
            }
        }
    }
}

/// Any source read as 48 kHz mono (the first channel, linear
/// interpolation between its samples): near-end talkers and noise come
/// from 16 kHz files.
struct Mono48k {
    source: Box<dyn AudioSource>,
    rate: Stretch,
    frame: Vec<f32>,
}

impl Mono48k {
    fn new(source: Box<dyn AudioSource>) -> Self {
        let format = source.format();
        Self {
            rate: Stretch::new(f64::from(format.sample_rate) / f64::from(ROOM_RATE)),
            frame: vec![0.0; usize::from(format.channels.max(1))],
            source,
        }
    }

    fn read(&mut self, out: &mut [f32]) {
        let (source, frame) = (&mut self.source, &mut self.frame);
        self.rate.read(out, || {
            if source.read(frame) < frame.len() {
                0.0
            } else {
                frame[0]
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Signal, SyntheticSource};

    fn energy(samples: &[f32]) -> f32 {
        samples.iter().map(|sample| sample * sample).sum()
    }

    /// Seconds for the Schroeder backward integral to fall from −5 to −25
    /// dB, times 3: the T20 estimate of RT60.
    fn t20_seconds(response: &[f32]) -> f32 {
        let total = energy(response);
        let mut remaining = total;
        let (mut at_5, mut at_25) = (None, None);
        for (index, sample) in response.iter().enumerate() {
            let level = 10.0 * (remaining / total).log10();
            if at_5.is_none() && level <= -5.0 {
                at_5 = Some(index);
            }
            if at_25.is_none() && level <= -25.0 {
                at_25 = Some(index);
                break;
            }
            remaining -= sample * sample;
        }
        let span = at_25.unwrap() - at_5.unwrap();
        3.0 * span as f32 / ROOM_RATE as f32
    }

    #[test]
    fn impulse_responses_have_unit_energy_and_their_reverberation_time() {
        for rt60 in [0.2_f32, 0.4, 0.8] {
            let config = RoomConfig {
                rt60_seconds: rt60,
                seed: 7,
                // Far from the speaker, where the tail dominates and sets
                // the decay the test measures.
                speaker_distance_m: 3.0,
                ..RoomConfig::default()
            };
            let response = impulse_response(&config);
            assert!((energy(&response) - 1.0).abs() < 1e-3, "{rt60}");
            assert_eq!(response.len(), (rt60 * ROOM_RATE as f32) as usize);
            let measured = t20_seconds(&response);
            assert!(
                (measured - rt60).abs() < 0.15 * rt60,
                "RT60 {rt60} s measured {measured} s"
            );
            // The direct path is the loudest tap.
            let loudest = response
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                .unwrap()
                .0;
            assert_eq!(loudest, 0);
        }
        let seeded = |seed| {
            impulse_response(&RoomConfig {
                seed,
                ..RoomConfig::default()
            })
        };
        assert_eq!(seeded(5), seeded(5));
        assert_ne!(seeded(5), seeded(6));
    }

    #[test]
    fn the_direct_path_and_the_tail_share_the_energy_as_sabine_says() {
        for (rt60, expected_db) in [(0.4_f32, 12.6_f32), (0.8, 9.5)] {
            let config = RoomConfig {
                rt60_seconds: rt60,
                ..RoomConfig::default()
            };
            assert!((config.direct_to_reverberant_db() - expected_db).abs() < 0.1);
            let response = impulse_response(&config);
            let direct = response[0] * response[0];
            let measured = 10.0 * (direct / (1.0 - direct)).log10();
            assert!(
                (measured - expected_db).abs() < 0.1,
                "RT60 {rt60}: {measured} dB"
            );
        }
    }

    /// Plays `far` through the room 10 ms at a time, capturing as much.
    fn through(
        speaker: &mut RoomSpeaker,
        microphone: &mut RoomMicrophone,
        far: &[f32],
    ) -> Vec<f32> {
        let mut heard = Vec::with_capacity(far.len());
        let mut block = [0.0; BLOCK];
        for chunk in far.chunks(BLOCK) {
            speaker.write(chunk);
            microphone.read(&mut block[..chunk.len()]);
            heard.extend_from_slice(&block[..chunk.len()]);
        }
        heard
    }

    fn click_train(seconds: usize) -> Vec<f32> {
        let mut far = vec![0.0; seconds * ROOM_RATE as usize];
        for click in far.iter_mut().step_by(ROOM_RATE as usize / 2) {
            *click = 0.5;
        }
        far
    }

    /// Index of the loudest sample in each half second.
    fn arrivals(heard: &[f32]) -> Vec<usize> {
        heard
            .chunks(ROOM_RATE as usize / 2)
            .map(|half| {
                half.iter()
                    .enumerate()
                    .max_by(|a, b| a.1.abs().total_cmp(&b.1.abs()))
                    .unwrap()
                    .0
            })
            .collect()
    }

    #[test]
    fn the_echo_arrives_after_the_delay_at_the_echo_return_loss() {
        let config = RoomConfig {
            rt60_seconds: 0.2,
            delay_ms: 80,
            echo_return_loss_db: 10.0,
            loudspeaker_drive: 0.0,
            ..RoomConfig::default()
        };
        let (mut speaker, mut microphone, _) = room(config, None, None);
        let far = click_train(2);
        let heard = through(&mut speaker, &mut microphone, &far);
        for arrival in arrivals(&heard) {
            assert_eq!(arrival, 80 * 48, "the direct path after 80 ms");
        }
        // Energy: each click's echo is 10 dB (a tenth) of the click's.
        let ratio = energy(&heard) / energy(&far);
        assert!((ratio - 0.1).abs() < 0.01, "echo energy ratio {ratio}");
    }

    #[test]
    fn the_delay_jumps_when_told() {
        let config = RoomConfig {
            rt60_seconds: 0.2,
            delay_ms: 50,
            ..RoomConfig::default()
        };
        let (mut speaker, mut microphone, control) = room(config, None, None);
        let far = click_train(1);
        let before = arrivals(&through(&mut speaker, &mut microphone, &far));
        control.jump_delay(120);
        let later = arrivals(&through(&mut speaker, &mut microphone, &far));
        control.jump_delay(-150);
        let sooner = arrivals(&through(&mut speaker, &mut microphone, &far));
        assert_eq!(before, [50 * 48, 50 * 48]);
        assert_eq!(later, [170 * 48, 170 * 48]);
        assert_eq!(sooner, [20 * 48, 20 * 48]);
    }

    #[test]
    fn a_dropout_plays_silence_delays_what_follows_and_is_reported() {
        let config = RoomConfig {
            rt60_seconds: 0.2,
            delay_ms: 50,
            ..RoomConfig::default()
        };
        let (mut speaker, mut microphone, control) = room(config, None, None);
        let far = click_train(1);
        let before = arrivals(&through(&mut speaker, &mut microphone, &far));
        assert_eq!(speaker.underrun_frames(), 0);
        control.drop_out(100);
        let after = arrivals(&through(&mut speaker, &mut microphone, &far));
        let later = arrivals(&through(&mut speaker, &mut microphone, &far));
        assert_eq!(before, [50 * 48, 50 * 48]);
        // The clicks given after the dropout are heard 100 ms later, for
        // good: the device plays everything that much later.
        assert_eq!(after, [150 * 48, 150 * 48]);
        assert_eq!(later, [150 * 48, 150 * 48]);
        assert_eq!(speaker.underrun_frames(), 100 * 48, "the silence reported");
        assert_eq!(control.echo_delay_ms(), 150);
    }

    #[test]
    fn the_delay_in_effect_follows_jumps_and_a_playout_that_falls_behind() {
        let config = RoomConfig {
            rt60_seconds: 0.2,
            delay_ms: 60,
            ..RoomConfig::default()
        };
        let (mut speaker, mut microphone, control) = room(config, None, None);
        let mut block = [0.1_f32; BLOCK];
        speaker.write(&block);
        microphone.read(&mut block);
        assert_eq!(control.echo_delay_ms(), 60);
        control.jump_delay(40);
        speaker.write(&block);
        microphone.read(&mut block);
        assert_eq!(control.echo_delay_ms(), 100);
        // The playout side stalls for 70 ms: the microphone reads what was
        // in flight, and the echo is 30 ms sooner from then on.
        let mut stall = vec![0.0; 70 * 48];
        microphone.read(&mut stall);
        assert_eq!(control.echo_delay_ms(), 30);
    }

    #[test]
    fn an_echo_never_comes_sooner_than_the_devices_latency() {
        let (mut speaker, mut microphone, control) = room(RoomConfig::default(), None, None);
        // The playout side gives nothing for 100 ms: the speaker runs dry,
        // and what it is given next still takes the devices' latency.
        let mut stall = vec![0.0; 100 * 48];
        microphone.read(&mut stall);
        assert_eq!(control.echo_delay_ms(), DEVICE_LATENCY_MS);
        speaker.write(&[1.0_f32; BLOCK]);
        let mut heard = vec![0.0; 10 * BLOCK];
        for block in heard.chunks_mut(BLOCK) {
            microphone.read(block);
        }
        let first = heard.iter().position(|sample| sample.abs() > 1e-3).unwrap();
        // Within a millisecond after it: the direct path's flight through
        // the air.
        assert!(
            (DEVICE_LATENCY..DEVICE_LATENCY + 48).contains(&first),
            "first heard at sample {first}"
        );
    }

    #[test]
    fn a_drifting_microphone_hears_the_echo_ever_later() {
        let config = RoomConfig {
            rt60_seconds: 0.2,
            delay_ms: 50,
            drift_ppm: 100.0,
            loudspeaker_drive: 0.0,
            ..RoomConfig::default()
        };
        let (mut speaker, mut microphone, _) = room(config, None, None);
        let heard = through(&mut speaker, &mut microphone, &click_train(20));
        let arrivals = arrivals(&heard);
        // 100 ppm of 48 kHz: the microphone takes 4.8 samples a second
        // more than the speaker gives, so the half second between two
        // clicks lasts 2.4 samples longer at the microphone.
        let first = arrivals[1] as f32;
        let last = arrivals[39] as f32;
        let drift = last - first;
        assert!((drift - 38.0 * 2.4).abs() <= 2.0, "drifted {drift} samples");
    }

    #[test]
    fn the_loudspeaker_clips_softly() {
        let config = RoomConfig {
            loudspeaker_drive: 1.0,
            ..RoomConfig::default()
        };
        let (speaker, _, _) = room(config, None, None);
        assert!((speaker.loudspeaker(0.01) - 0.01).abs() < 1e-5);
        assert!((speaker.loudspeaker(1.0) - 1.0_f32.tanh()).abs() < 1e-6);
        assert!(speaker.loudspeaker(4.0) < 1.0);
    }

    #[test]
    fn the_microphone_hears_the_near_end_and_the_noise_beside_the_echo() {
        let tone = |frequency, amplitude| -> Box<dyn AudioSource> {
            Box::new(SyntheticSource::new(
                AudioFormat::mono(16_000),
                Signal::Tone {
                    frequency,
                    amplitude,
                },
            ))
        };
        let (mut speaker, mut microphone, _) = room(
            RoomConfig::default(),
            Some(tone(500.0, 0.3)),
            Some(tone(3_000.0, 0.1)),
        );
        let heard = through(&mut speaker, &mut microphone, &vec![0.0; 48_000]);
        let rms = (energy(&heard[4_800..]) / (heard.len() - 4_800) as f32).sqrt();
        let expected = ((0.3_f32 * 0.3 + 0.1 * 0.1) / 2.0).sqrt();
        assert!(
            (rms - expected).abs() < 0.01,
            "rms {rms}, expected {expected}"
        );
    }
}
