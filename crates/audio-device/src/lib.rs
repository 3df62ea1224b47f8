//! OpenCalling's audio capture and playback, behind two small traits:
//! [`AudioSource`] (capture: something that produces samples) and
//! [`AudioSink`] (playback: something that consumes them).
//!
//! Backends:
//! - [`WavSource`] / [`WavSink`]: WAV files (any sample rate and channel
//!   count in, 16-bit PCM out), for bots and tests;
//! - [`SyntheticSource`]: silence, a tone, a chirp, or clicks for latency
//!   probes; [`NullSink`]: counts and discards;
//! - real devices (feature `cpal`): `devices::Microphone` and
//!   `devices::Speaker`, selected by name or the system default, with
//!   `devices::OutputRoutes` for the hands-free route.
//!
//! Time: sources and sinks are pulled and pushed by the caller, who owns the
//! clock: as fast as possible under a test's virtual clock, or paced to the
//! wall clock with [`Pacer`].
//!
//! # The real-time contract
//!
//! A device callback never allocates, locks, logs or blocks. PCM crosses
//! between the callback thread and the pipeline thread through the
//! pre-allocated lock-free SPSC rings of [`realtime`]; an underrun plays
//! silence and an overrun drops samples, each counted in an atomic that a
//! normal thread reads ([`realtime::XrunCounters`]). A test checks that the
//! callback side does not allocate.
//!
//! # Feature flags
//!
//! - `cpal`: real devices through cpal. Off by default; on Linux it needs
//!   the ALSA headers (`libasound2-dev`) to build.
//!
//! This crate never touches Opus, resampling or the network.

#[cfg(feature = "cpal")]
pub mod devices;
mod pacer;
pub mod realtime;
mod synthetic;
mod wav;

pub use pacer::Pacer;
pub use synthetic::{NullSink, Signal, SyntheticSource};
pub use wav::{WavError, WavSink, WavSource};

/// Sample rate and channel count of interleaved `f32` PCM in -1.0..=1.0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AudioFormat {
    /// Frames per second.
    pub sample_rate: u32,
    /// Samples per frame (interleaved).
    pub channels: u16,
}

impl AudioFormat {
    /// Mono at `sample_rate`.
    pub const fn mono(sample_rate: u32) -> Self {
        Self {
            sample_rate,
            channels: 1,
        }
    }

    /// Interleaved samples in `millis` milliseconds.
    pub fn samples_in_ms(self, millis: u32) -> usize {
        (u64::from(self.sample_rate) * u64::from(millis) / 1000) as usize
            * usize::from(self.channels)
    }
}

/// Something that captures audio.
pub trait AudioSource: Send {
    /// The format of what [`AudioSource::read`] returns.
    fn format(&self) -> AudioFormat;

    /// Fills `out` with the next interleaved samples; returns how many were
    /// written. Fewer than `out.len()` means the source has ended (a WAV file
    /// ran out); the rest of `out` is left untouched.
    fn read(&mut self, out: &mut [f32]) -> usize;
}

/// Something that plays audio.
pub trait AudioSink: Send {
    /// The format [`AudioSink::write`] expects.
    fn format(&self) -> AudioFormat;

    /// Plays (or stores) interleaved samples.
    fn write(&mut self, samples: &[f32]);
}
