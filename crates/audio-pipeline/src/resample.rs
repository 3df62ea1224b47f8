//! Rate and channel conversion (rubato) between devices and the pipeline's
//! 48 kHz mono, with every buffer allocated once.

use std::collections::VecDeque;

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Async, FixedAsync, Indexing, PolynomialDegree, Resampler as _};

/// Converts interleaved audio at one rate and channel count to another
/// (device ↔ the pipeline's 48 kHz mono), a chunk at a time.
///
/// Channels are mixed down (averaged) or duplicated up; the rate is
/// converted by rubato's polynomial resampler. Every buffer is allocated at
/// construction: [`Resampler::push`] and [`Resampler::pop`] never allocate as
/// long as the caller keeps less than a few chunks queued.
pub struct Resampler {
    in_channels: usize,
    out_channels: usize,
    inner: Option<Async<f32>>,
    /// Mono input waiting for a whole chunk.
    pending: Vec<f32>,
    chunk: usize,
    scratch_out: Vec<f32>,
    /// Mono output ready to pop.
    ready: VecDeque<f32>,
}

impl std::fmt::Debug for Resampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resampler")
            .field("in_channels", &self.in_channels)
            .field("out_channels", &self.out_channels)
            .field("converts_rate", &self.inner.is_some())
            .field("ready", &self.ready.len())
            .finish_non_exhaustive()
    }
}

/// A resampler that cannot be built for these rates.
#[derive(Debug, thiserror::Error)]
#[error("cannot resample {from} Hz to {to} Hz: {reason}")]
pub struct ResamplerError {
    from: u32,
    to: u32,
    reason: String,
}

impl Resampler {
    /// From `in_rate` Hz × `in_channels` to `out_rate` Hz × `out_channels`,
    /// processing `chunk` input frames at a time (10 ms is a good choice).
    pub fn new(
        in_rate: u32,
        in_channels: u16,
        out_rate: u32,
        out_channels: u16,
        chunk: usize,
    ) -> Result<Self, ResamplerError> {
        let chunk = chunk.max(1);
        let inner = if in_rate == out_rate {
            None
        } else {
            let ratio = f64::from(out_rate) / f64::from(in_rate.max(1));
            Some(
                Async::<f32>::new_poly(
                    ratio,
                    1.1,
                    PolynomialDegree::Cubic,
                    chunk,
                    1,
                    FixedAsync::Input,
                )
                .map_err(|error| ResamplerError {
                    from: in_rate,
                    to: out_rate,
                    reason: error.to_string(),
                })?,
            )
        };
        let max_out = inner
            .as_ref()
            .map_or(chunk, |inner| inner.output_frames_max());
        Ok(Self {
            in_channels: usize::from(in_channels.max(1)),
            out_channels: usize::from(out_channels.max(1)),
            inner,
            pending: Vec::with_capacity(chunk * 4),
            chunk,
            scratch_out: vec![0.0; max_out],
            ready: VecDeque::with_capacity(max_out * 8),
        })
    }

    /// Adds interleaved input.
    pub fn push(&mut self, interleaved: &[f32]) {
        for frame in interleaved.chunks_exact(self.in_channels) {
            let mono = frame.iter().sum::<f32>() / self.in_channels as f32;
            self.pending.push(mono);
            if self.pending.len() == self.chunk {
                self.convert_pending();
            }
        }
    }

    fn convert_pending(&mut self) {
        match self.inner.as_mut() {
            None => self.ready.extend(self.pending.iter().copied()),
            Some(inner) => {
                let capacity = self.scratch_out.len();
                let converted = InterleavedSlice::new(&self.pending[..], 1, self.chunk)
                    .ok()
                    .and_then(|input| {
                        let mut output =
                            InterleavedSlice::new_mut(&mut self.scratch_out[..], 1, capacity)
                                .ok()?;
                        inner
                            .process_into_buffer(&input, &mut output, Some(&Indexing::new()))
                            .ok()
                    });
                match converted {
                    Some((_, written)) => self
                        .ready
                        .extend(self.scratch_out[..written].iter().copied()),
                    // Sizes are fixed at construction; a failure here is a bug.
                    None => tracing::error!("resampling a chunk failed; it is dropped"),
                }
            }
        }
        self.pending.clear();
    }

    /// Output frames ready.
    pub fn available_frames(&self) -> usize {
        self.ready.len()
    }

    /// Fills `out` (interleaved, `out_channels`) if enough is ready; returns
    /// whether it did.
    pub fn pop(&mut self, out: &mut [f32]) -> bool {
        let frames = out.len() / self.out_channels;
        if self.ready.len() < frames {
            return false;
        }
        for frame in out.chunks_exact_mut(self.out_channels) {
            let sample = self.ready.pop_front().unwrap_or(0.0);
            frame.fill(sample);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, channels: usize, hz: f32, frames: usize) -> Vec<f32> {
        (0..frames)
            .flat_map(|n| {
                std::iter::repeat_n(
                    0.5 * (std::f32::consts::TAU * hz * n as f32 / rate as f32).sin(),
                    channels,
                )
            })
            .collect()
    }

    #[test]
    fn converts_44k1_stereo_to_48k_mono_keeping_the_tone() {
        let mut resampler = Resampler::new(44_100, 2, 48_000, 1, 441).unwrap();
        resampler.push(&tone(44_100, 2, 1_000.0, 44_100));
        let available = resampler.available_frames();
        assert!((47_000..=48_000).contains(&available), "{available}");
        let mut out = vec![0.0; 9_600];
        assert!(resampler.pop(&mut out));
        // 1 kHz at 48 kHz repeats every 48 samples.
        let steady = &out[2_000..9_000];
        let error: f32 = steady
            .iter()
            .zip(&steady[48..])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0, f32::max);
        assert!(error < 0.02, "{error}");
        let rms = (steady.iter().map(|s| s * s).sum::<f32>() / steady.len() as f32).sqrt();
        assert!((rms - 0.5 / 2f32.sqrt()).abs() < 0.02);
    }

    #[test]
    fn same_rate_only_changes_channels() {
        let mut resampler = Resampler::new(48_000, 1, 48_000, 2, 480).unwrap();
        resampler.push(&[0.25; 960]);
        let mut out = [0.0; 1_920];
        assert!(resampler.pop(&mut out));
        assert!(out.iter().all(|s| *s == 0.25));
        assert!(!resampler.pop(&mut out), "nothing left");
    }
}
