//! Generated audio: silence, tones, chirps and clicks as capture sources,
//! and a sink that discards — for tests, probes and machines with no device.

use std::f32::consts::TAU;

use crate::{AudioFormat, AudioSink, AudioSource};

/// What a [`SyntheticSource`] produces.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// Digital silence.
    Silence,
    /// A sine at `frequency` Hz and `amplitude` (0..=1).
    Tone {
        /// Hz.
        frequency: f32,
        /// Peak amplitude.
        amplitude: f32,
    },
    /// A sine sweeping from `from` to `to` Hz over `period_ms`, repeating.
    Chirp {
        /// Start frequency.
        from: f32,
        /// End frequency.
        to: f32,
        /// Sweep length.
        period_ms: u32,
        /// Peak amplitude.
        amplitude: f32,
    },
    /// A short full-scale burst (1 ms) every `interval_ms`, silence between:
    /// a latency probe whose arrival is easy to find.
    Clicks {
        /// Time between clicks.
        interval_ms: u32,
    },
}

/// An endless generated signal.
#[derive(Debug, Clone)]
pub struct SyntheticSource {
    format: AudioFormat,
    signal: Signal,
    /// Frames produced so far.
    position: u64,
}

impl SyntheticSource {
    /// `signal` in `format` (every channel the same).
    pub fn new(format: AudioFormat, signal: Signal) -> Self {
        Self {
            format,
            signal,
            position: 0,
        }
    }

    /// The frame index of the next sample: a click probe's send time.
    pub fn position(&self) -> u64 {
        self.position
    }

    fn sample_at(&self, frame: u64) -> f32 {
        let rate = self.format.sample_rate as f32;
        match self.signal {
            Signal::Silence => 0.0,
            Signal::Tone {
                frequency,
                amplitude,
            } => {
                let t = (frame % u64::from(self.format.sample_rate)) as f32 / rate;
                amplitude * (TAU * frequency * t).sin()
            }
            Signal::Chirp {
                from,
                to,
                period_ms,
                amplitude,
            } => {
                let period = (u64::from(self.format.sample_rate) * u64::from(period_ms.max(1))
                    / 1000)
                    .max(1);
                let t = (frame % period) as f32 / rate;
                let length = period as f32 / rate;
                // Phase of a linear sweep: f(t) = from + (to - from) t / length.
                let phase = TAU * (from * t + (to - from) * t * t / (2.0 * length));
                amplitude * phase.sin()
            }
            Signal::Clicks { interval_ms } => {
                let interval = (u64::from(self.format.sample_rate) * u64::from(interval_ms.max(1))
                    / 1000)
                    .max(1);
                let click = u64::from(self.format.sample_rate) / 1000;
                if frame % interval < click { 1.0 } else { 0.0 }
            }
        }
    }
}

impl AudioSource for SyntheticSource {
    fn format(&self) -> AudioFormat {
        self.format
    }

    fn read(&mut self, out: &mut [f32]) -> usize {
        let channels = usize::from(self.format.channels.max(1));
        let frames = out.len() / channels;
        for frame_samples in out[..frames * channels].chunks_exact_mut(channels) {
            let value = self.sample_at(self.position);
            frame_samples.fill(value);
            self.position += 1;
        }
        frames * channels
    }
}

/// Discards what it is given, counting it.
#[derive(Debug, Clone)]
pub struct NullSink {
    format: AudioFormat,
    samples: u64,
}

impl NullSink {
    /// A sink accepting `format`.
    pub fn new(format: AudioFormat) -> Self {
        Self { format, samples: 0 }
    }

    /// Samples received so far.
    pub fn samples(&self) -> u64 {
        self.samples
    }
}

impl AudioSink for NullSink {
    fn format(&self) -> AudioFormat {
        self.format
    }

    fn write(&mut self, samples: &[f32]) {
        self.samples += samples.len() as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rms(samples: &[f32]) -> f32 {
        (samples.iter().map(|s| s * s).sum::<f32>() / samples.len() as f32).sqrt()
    }

    #[test]
    fn a_tone_has_the_right_level_and_period() {
        let mut tone = SyntheticSource::new(
            AudioFormat::mono(48_000),
            Signal::Tone {
                frequency: 1_000.0,
                amplitude: 0.5,
            },
        );
        let mut out = vec![0.0; 4_800];
        assert_eq!(tone.read(&mut out), 4_800);
        assert!((rms(&out) - 0.5 / 2f32.sqrt()).abs() < 0.01);
        // 1 kHz at 48 kHz: the signal repeats every 48 samples.
        assert!((out[100] - out[148]).abs() < 1e-3);
    }

    #[test]
    fn clicks_mark_their_interval_and_stereo_repeats_channels() {
        let mut clicks = SyntheticSource::new(
            AudioFormat {
                sample_rate: 8_000,
                channels: 2,
            },
            Signal::Clicks { interval_ms: 100 },
        );
        let mut out = vec![0.0; 2 * 1_600];
        clicks.read(&mut out);
        let loud: Vec<usize> = out
            .chunks(2)
            .enumerate()
            .filter(|(_, frame)| frame[0] > 0.5)
            .map(|(index, _)| index)
            .collect();
        assert_eq!(loud.len(), 16, "1 ms = 8 frames per click, two clicks");
        assert_eq!(loud[0], 0);
        assert_eq!(loud[8], 800);
        assert!(out.chunks(2).all(|frame| frame[0] == frame[1]));
        assert_eq!(clicks.position(), 1_600);
    }

    #[test]
    fn silence_and_null() {
        let mut silence = SyntheticSource::new(AudioFormat::mono(16_000), Signal::Silence);
        let mut out = vec![1.0; 160];
        silence.read(&mut out);
        assert!(out.iter().all(|s| *s == 0.0));
        let mut sink = NullSink::new(AudioFormat::mono(16_000));
        sink.write(&out);
        assert_eq!(sink.samples(), 160);
    }
}
