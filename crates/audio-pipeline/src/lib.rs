#![doc = include_str!("../README.md")]

pub mod analysis;
mod codec;
pub mod jitter;
pub mod level;
pub mod loss;
mod mixer;
pub mod netem;
pub mod path;
pub mod policy;
pub(crate) mod resample;
#[cfg(test)]
mod test_signal;
mod timescale;
pub mod voice;

pub use codec::{
    CodecError, DEFAULT_DECODER_COMPLEXITY, DRED_BITRATE_SCALE, DRED_MS, Decoder, Encoder,
    EncoderConfig, MIN_DRED_COMPLEXITY, MIN_PACKET_LIMIT, Protection, has_fec, is_dtx_frame,
    packet_samples,
};
pub use jitter::{JitterBuffer, JitterConfig, JitterStats, PullKind};
pub use loss::{LossEstimate, LossMeter};
pub use mixer::Mixer;
pub use path::{
    Captured, MediaPacket, OutgoingFrame, PacketReceiver, PacketSender, PathError, ReceivePath,
    SendPath, packet_ring,
};
pub use policy::{HowToSend, ReceiverSays, SendPolicy};
pub use resample::{Resampler, ResamplerError};
pub use voice::{
    ReferenceReader, ReferenceWriter, VoiceProcessing, VoiceProcessor, VoiceStats, echo_reference,
};

/// The pipeline's sample rate.
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in one 20 ms frame at 48 kHz mono: the longest frame the
/// pipeline sends or plays.
pub const FRAME_SAMPLES: usize = 960;

/// How much audio one packet carries. 20 ms is the default; 10 ms is the
/// low-latency profile's: each frame leaves 10 ms sooner and the receiver
/// may hold 10 ms less, for more packets (and header bytes) a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FrameDuration {
    /// 10 ms, 480 samples.
    Ms10,
    /// 20 ms, 960 samples.
    #[default]
    Ms20,
}

impl FrameDuration {
    /// Samples at 48 kHz.
    pub const fn samples(self) -> usize {
        match self {
            Self::Ms10 => 480,
            Self::Ms20 => FRAME_SAMPLES,
        }
    }

    /// Milliseconds.
    pub const fn millis(self) -> u32 {
        match self {
            Self::Ms10 => 10,
            Self::Ms20 => 20,
        }
    }
}

/// Samples of one 5 ms playout pull: playout takes audio in pieces shorter
/// than a frame, so a frame starts playing as soon as its first piece is
/// due (NetEq pulls 10 ms; 5 ms took another ~5 ms off mouth to ear, for
/// 200 wake-ups a second instead of 100).
pub const PULL_SAMPLES: usize = 240;

/// Largest Opus packet the pipeline produces or accepts.
pub const MAX_PACKET: usize = 1_275;
