//! Voice processing in the capture path: a high-pass filter, acoustic
//! echo cancellation, noise suppression and automatic gain control, in
//! that order, each from a maintained implementation (decision 0009 says
//! which and why, with what each measured):
//!
//! - the high-pass filter: a second-order Butterworth at 80 Hz (a biquad);
//! - echo cancellation: WebRTC's AEC3 through `sonora`, its pure Rust port;
//! - noise suppression: RNNoise through `nnnoiseless`, its Rust port;
//! - gain control: WebRTC's AGC2 (adaptive digital gain and limiter)
//!   through `sonora`.
//!
//! (sonora's own noise suppressor forces its own high-pass filter on, a
//! steep elliptic one whose group delay near 100 Hz smears a voice's
//! fundamental: clean speech lost 0.9 PESQ through it alone.)
//!
//! The canceller needs what the speaker plays. The playout thread hands
//! each mix it plays to the capture thread through a lock-free ring
//! ([`echo_reference`]); before each 10 ms block of capture the capture
//! thread feeds the canceller one 10 ms block of that reference (and the
//! blocks it could not feed before, when the playout thread was late),
//! then the captured block: one block of what was played for each block
//! recorded, as a device pair plays and records. AEC3 finds the delay
//! between the two itself, and its render buffer absorbs the jitter
//! between the two threads. What waits beyond that is the playout's lead
//! over the speaker, which grows when the speaker underruns (the SDK
//! writes the silence it played into the reference): it stays in the ring,
//! not handed to AEC3 in a burst, which AEC3 takes for a moved echo and
//! starts over.
//!
//! Everything runs at 48 kHz mono in 10 ms blocks, on the capture thread
//! (never in a device callback). The hand-over and the reference's
//! analysis never allocate (a test counts); AEC3 and AGC2 as sonora ports
//! them allocate small buffers on every block, which `bench_voice` counts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nnnoiseless::DenoiseState;
use ringbuf::traits::{Consumer, Observer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};
use sonora::config::{
    AdaptiveDigital, AnalogMicGainEmulation, CaptureLevelAdjustment, EchoCanceller,
    GainController2, MaxProcessingRate, Pipeline,
};
use sonora::{AudioProcessing, Config, StreamConfig};

use crate::SAMPLE_RATE;

/// Samples in one block of voice processing: 10 ms at 48 kHz.
pub const BLOCK_SAMPLES: usize = 480;

/// Which stages of voice processing run. The high-pass filter runs
/// whenever any of them does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VoiceProcessing {
    /// Acoustic echo cancellation: what the speaker plays is removed from
    /// what the microphone hears.
    pub echo_cancellation: bool,
    /// Stationary background noise (fans, hum, traffic) is suppressed.
    pub noise_suppression: bool,
    /// The voice is brought to a steady level, quiet and loud talkers
    /// alike.
    pub auto_gain: bool,
}

impl VoiceProcessing {
    /// All three: what a microphone in a room needs.
    pub const ALL: Self = Self {
        echo_cancellation: true,
        noise_suppression: true,
        auto_gain: true,
    };

    /// None: the capture is sent as it is (files, tones, test signals).
    pub const NONE: Self = Self {
        echo_cancellation: false,
        noise_suppression: false,
        auto_gain: false,
    };

    /// Whether any stage runs.
    pub const fn any(self) -> bool {
        self.echo_cancellation || self.noise_suppression || self.auto_gain
    }
}

/// A sonora instance at 48 kHz mono with only `config`'s stages.
fn sonora(config: Config) -> AudioProcessing {
    let stream = StreamConfig::new(SAMPLE_RATE, 1);
    AudioProcessing::builder()
        .config(Config {
            pipeline: Pipeline {
                // Full band: the encoder codes up to 20 kHz.
                maximum_internal_processing_rate: MaxProcessingRate::Rate48kHz,
                ..Pipeline::default()
            },
            ..config
        })
        .capture_config(stream)
        .render_config(stream)
        .build()
}

fn echo_canceller() -> AudioProcessing {
    sonora(Config {
        echo_canceller: Some(EchoCanceller {
            // Ours runs before it (see the module docs).
            enforce_high_pass_filtering: false,
            ..EchoCanceller::default()
        }),
        ..Config::default()
    })
}

/// AGC2 as WebRTC runs it for a microphone whose volume it may lower: the
/// input volume controller on an emulated analog gain (a loud talker is
/// turned down), then the adaptive digital gain (a quiet one is turned up,
/// 6 dB a second at most) and the limiter. The digital gain starts at 0 dB
/// rather than sonora's 15: a talker at a normal level is not clipped by
/// the limiter for the first seconds of a call (clean speech lost 0.32
/// PESQ from 15 dB, 0.09 from 0 dB), and a quiet one reaches the target
/// within about four seconds. The headroom is 3 dB rather than 5: with 5,
/// talkers at -18 and -10 dBFS came out 3-5 dB above quiet ones (the
/// digital gain stops at 0 dB and the volume controller only trims); with
/// 3 all five bench levels land within 3 dB of quiet ones (-10 dBFS
/// comes out at -18.0, -45 at -20.8).
fn gain_controller() -> AudioProcessing {
    sonora(Config {
        capture_level_adjustment: Some(CaptureLevelAdjustment {
            analog_mic_gain_emulation: Some(AnalogMicGainEmulation { initial_level: 255 }),
            ..CaptureLevelAdjustment::default()
        }),
        gain_controller2: Some(GainController2 {
            input_volume_controller: true,
            adaptive_digital: Some(AdaptiveDigital {
                initial_gain_db: 0.0,
                headroom_db: 3.0,
                ..AdaptiveDigital::default()
            }),
            ..GainController2::default()
        }),
        ..Config::default()
    })
}

/// A second-order Butterworth high-pass at 80 Hz (RBJ's cookbook biquad,
/// direct form I in `f64`): removes DC, rumble and handling noise below
/// a voice, with a group delay of a few milliseconds at 100 Hz.
#[derive(Debug, Clone, Copy)]
struct HighPass {
    b: [f64; 3],
    a: [f64; 2],
    x: [f64; 2],
    y: [f64; 2],
}

impl HighPass {
    fn new(cutoff_hz: f64) -> Self {
        let omega = std::f64::consts::TAU * cutoff_hz / f64::from(SAMPLE_RATE);
        let alpha = omega.sin() / std::f64::consts::SQRT_2;
        let cos = omega.cos();
        let a0 = 1.0 + alpha;
        Self {
            b: [
                (1.0 + cos) / 2.0 / a0,
                -(1.0 + cos) / a0,
                (1.0 + cos) / 2.0 / a0,
            ],
            a: [-2.0 * cos / a0, (1.0 - alpha) / a0],
            x: [0.0; 2],
            y: [0.0; 2],
        }
    }

    fn process(&mut self, block: &mut [f32]) {
        for sample in block {
            let x = f64::from(*sample);
            let y = self.b[0] * x + self.b[1] * self.x[0] + self.b[2] * self.x[1]
                - self.a[0] * self.y[0]
                - self.a[1] * self.y[1];
            self.x = [x, self.x[0]];
            self.y = [y, self.y[0]];
            *sample = y as f32;
        }
    }
}

/// RNNoise's scale: 16-bit sample values.
const RNNOISE_SCALE: f32 = 32_768.0;

/// What the echo canceller measures, for the SDK's statistics.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct VoiceStats {
    /// The echo path's delay the canceller found, in milliseconds: from
    /// the playout thread's hand-over to the microphone.
    pub echo_delay_ms: Option<u16>,
    /// Echo return loss, dB: how much quieter the echo reaches the
    /// microphone than what was played.
    pub echo_return_loss_db: Option<f32>,
    /// Echo return loss enhancement, dB: how much the canceller took off
    /// the echo.
    pub echo_return_loss_enhancement_db: Option<f32>,
}

/// The echo canceller and its companions for one call's capture. See the
/// [module docs](self).
pub struct VoiceProcessor {
    settings: VoiceProcessing,
    high_pass: HighPass,
    echo: Option<AudioProcessing>,
    denoise: Option<Box<DenoiseState<'static>>>,
    gain: Option<AudioProcessing>,
    reference: Option<ReferenceReader>,
    render_block: [f32; BLOCK_SAMPLES],
    capture_block: [f32; BLOCK_SAMPLES],
    render_blocks: u64,
    /// Reference blocks due to the canceller that had not arrived when
    /// their capture block was processed.
    reference_owed: usize,
    /// Whether the reference waiting at the first capture was taken.
    reference_started: bool,
}

/// The most of the reference that may wait for the capture thread before
/// the canceller is handed the excess at once: a speaker that underran
/// this much in all is behind by more than any echo path the canceller
/// covers, and starts over anyway.
const MAX_REFERENCE_LEAD_BLOCKS: usize = 30;

impl std::fmt::Debug for VoiceProcessor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VoiceProcessor")
            .field("settings", &self.settings)
            .field("render_blocks", &self.render_blocks)
            .finish_non_exhaustive()
    }
}

impl VoiceProcessor {
    /// The stages `settings` names, at 48 kHz mono. Echo cancellation
    /// needs a reference ([`VoiceProcessor::with_reference`] or
    /// [`VoiceProcessor::analyze_render`]); without one it has nothing to
    /// cancel and passes the capture through.
    pub fn new(settings: VoiceProcessing) -> Self {
        Self {
            settings,
            high_pass: HighPass::new(80.0),
            echo: settings.echo_cancellation.then(echo_canceller),
            denoise: settings.noise_suppression.then(DenoiseState::new),
            gain: settings.auto_gain.then(gain_controller),
            reference: None,
            render_block: [0.0; BLOCK_SAMPLES],
            capture_block: [0.0; BLOCK_SAMPLES],
            render_blocks: 0,
            reference_owed: 0,
            reference_started: false,
        }
    }

    /// Takes what the speaker plays from `reference` before each block of
    /// capture.
    pub fn with_reference(mut self, reference: ReferenceReader) -> Self {
        self.reference = Some(reference);
        self
    }

    /// The stages that run.
    pub fn settings(&self) -> VoiceProcessing {
        self.settings
    }

    /// Starts the echo canceller afresh: the echo path changed in a way the
    /// SDK knows of (another output device, another route). A converged
    /// canceller takes about 2.5 s to find a moved echo by itself; a fresh
    /// one suppresses from its first block and converges within a second.
    /// Allocates: called from the capture thread, never a device callback.
    pub fn echo_path_changed(&mut self) {
        if self.echo.is_some() {
            self.echo = Some(echo_canceller());
        }
    }

    /// Tells the canceller one block of what the speaker plays.
    pub fn analyze_render(&mut self, block: &[f32; BLOCK_SAMPLES]) {
        let Some(echo) = &mut self.echo else {
            return;
        };
        self.render_blocks += 1;
        let (input, output) = (&block[..], &mut self.render_block[..]);
        // Only the format can make this fail, and it is fixed at 48 kHz
        // mono; a refused block is one block less of reference.
        let _ = echo.process_render_f32(&[input], &mut [output]);
    }

    /// Processes one block of capture in place, after feeding the
    /// canceller the reference due for it (see the [module docs](self)).
    pub fn process_capture(&mut self, block: &mut [f32; BLOCK_SAMPLES]) {
        if let Some(mut reference) = self.reference.take() {
            // At the first capture, whatever the playout wrote before
            // capture began goes over.
            let first = !self.reference_started;
            self.reference_started = true;
            let due = if first {
                usize::MAX
            } else {
                1 + self.reference_owed
            };
            let mut fed = 0;
            while (fed < due || reference.waiting_blocks() > MAX_REFERENCE_LEAD_BLOCKS)
                && reference.pop_block(&mut self.render_block)
            {
                let played = self.render_block;
                self.analyze_render(&played);
                fed += 1;
            }
            // A playout that stopped for good owes nothing beyond what the
            // canceller covers.
            self.reference_owed = if first {
                0
            } else {
                due.saturating_sub(fed).min(MAX_REFERENCE_LEAD_BLOCKS)
            };
            self.reference = Some(reference);
        }
        if !self.settings.any() {
            return;
        }
        self.high_pass.process(block);
        if let Some(echo) = &mut self.echo {
            run_capture(echo, block, &mut self.capture_block);
        }
        if let Some(denoise) = &mut self.denoise {
            for (scaled, sample) in self.capture_block.iter_mut().zip(block.iter()) {
                *scaled = sample * RNNOISE_SCALE;
            }
            denoise.process_frame(block, &self.capture_block);
            for sample in block.iter_mut() {
                *sample /= RNNOISE_SCALE;
            }
        }
        if let Some(gain) = &mut self.gain {
            run_capture(gain, block, &mut self.capture_block);
        }
    }

    /// What the canceller measures now.
    pub fn stats(&self) -> VoiceStats {
        let Some(echo) = &self.echo else {
            return VoiceStats::default();
        };
        let stats = echo.statistics();
        VoiceStats {
            echo_delay_ms: stats
                .delay_ms
                .and_then(|delay| u16::try_from(delay.max(0)).ok()),
            echo_return_loss_db: stats.echo_return_loss.map(|erl| erl as f32),
            echo_return_loss_enhancement_db: stats
                .echo_return_loss_enhancement
                .map(|erle| erle as f32),
        }
    }
}

/// One block of capture through a sonora stage, in place; a block it
/// refuses (only a wrong format could be) passes unchanged.
fn run_capture(
    apm: &mut AudioProcessing,
    block: &mut [f32; BLOCK_SAMPLES],
    input: &mut [f32; BLOCK_SAMPLES],
) {
    input.copy_from_slice(block);
    if apm
        .process_capture_f32(&[&input[..]], &mut [&mut block[..]])
        .is_err()
    {
        block.copy_from_slice(input);
    }
}

/// A lock-free hand-over of what the speaker plays (48 kHz mono), from the
/// playout thread to the capture thread: `capacity_ms` of it, allocated
/// once. Returns the playout side and the capture side.
pub fn echo_reference(capacity_ms: u32) -> (ReferenceWriter, ReferenceReader) {
    let capacity = (SAMPLE_RATE / 1000 * capacity_ms.max(20)) as usize;
    let (producer, consumer) = HeapRb::<f32>::new(capacity).split();
    let dropped = Arc::new(AtomicU64::new(0));
    (
        ReferenceWriter {
            producer,
            dropped: Arc::clone(&dropped),
        },
        ReferenceReader { consumer, dropped },
    )
}

/// The playout side of [`echo_reference`].
pub struct ReferenceWriter {
    producer: HeapProd<f32>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for ReferenceWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceWriter").finish_non_exhaustive()
    }
}

impl ReferenceWriter {
    /// Hands over what was just played. If the capture side has stopped
    /// taking it (no capture, a stalled thread), what does not fit is
    /// dropped and counted.
    pub fn write(&mut self, played: &[f32]) {
        let pushed = self.producer.push_slice(played);
        if pushed < played.len() {
            self.dropped
                .fetch_add((played.len() - pushed) as u64, Ordering::Relaxed);
        }
    }

    /// Hands over `samples` of silence the device played on its own (an
    /// underrun): what is written next was played that much later, and
    /// the canceller's reference must say so, or it sees the echo move.
    pub fn write_silence(&mut self, samples: usize) {
        let pushed = self.producer.push_iter(std::iter::repeat_n(0.0, samples));
        if pushed < samples {
            self.dropped
                .fetch_add((samples - pushed) as u64, Ordering::Relaxed);
        }
    }
}

/// The capture side of [`echo_reference`].
pub struct ReferenceReader {
    consumer: HeapCons<f32>,
    dropped: Arc<AtomicU64>,
}

impl std::fmt::Debug for ReferenceReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReferenceReader")
            .field("waiting", &self.consumer.occupied_len())
            .finish_non_exhaustive()
    }
}

impl ReferenceReader {
    /// Whole blocks waiting.
    fn waiting_blocks(&self) -> usize {
        self.consumer.occupied_len() / BLOCK_SAMPLES
    }

    /// The next whole block, if one has arrived.
    fn pop_block(&mut self, block: &mut [f32; BLOCK_SAMPLES]) -> bool {
        if self.consumer.occupied_len() < BLOCK_SAMPLES {
            return false;
        }
        self.consumer.pop_slice(block) == BLOCK_SAMPLES
    }

    /// Samples of reference dropped because the capture side did not take
    /// them in time.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
