#![doc = include_str!("../README.md")]

#[cfg(feature = "cpal")]
pub mod devices;
mod pacer;
pub mod probe;
pub mod realtime;
#[cfg(feature = "room")]
pub mod room;
mod synthetic;
mod wav;

pub use pacer::{CATCH_UP_LIMIT, Pacer};
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

    /// Frames of silence the device has played since it opened because
    /// nothing was waiting to be played (underruns). Each one plays
    /// whatever is written after it that much later, which moves the echo
    /// path: the SDK puts as much silence into its echo canceller's
    /// reference, so that the canceller never has to find the echo again.
    /// Files and sinks that cannot underrun say 0.
    fn underrun_frames(&self) -> u64 {
        0
    }
}
