//! OpenCalling's audio processing, between the devices and the network:
//!
//! - [`Resampler`]: any device rate and channel count ↔ 48 kHz mono, with
//!   buffers allocated once (rubato);
//! - [`Encoder`] / [`Decoder`]: Opus, VoIP, 48 kHz mono, 20 ms frames, in-band
//!   FEC driven by the measured loss, DTX, configurable bitrate;
//! - [`JitterBuffer`]: per remote speaker, an adaptive jitter buffer modelled
//!   on WebRTC NetEq (FEC with one packet of look-ahead, PLC, reorder and
//!   duplicate handling, DTX gaps, a target delay that follows the measured
//!   lateness, time-scaling to move the delay inaudibly, NetEq-like
//!   [`JitterStats`]);
//! - [`LossMeter`]: what a receiver loses of one sender, for the loss
//!   report that drives the sender's FEC;
//! - [`Mixer`] with soft clipping, and [`level`] meters (0–100 from RMS dBFS);
//! - [`path`]: the send path (capture → Opus) and the receive path (packets
//!   → jitter buffers → mix), joined to the network thread by lock-free rings;
//! - [`analysis`]: delay and correlation of a recording against its source;
//! - [`netem`]: a seeded network emulator (loss, bursts, jitter, reordering,
//!   duplication, clock drift) for deterministic tests and benchmarks.
//!
//! Everything here is sans-IO: the jitter buffer takes `now` as an argument
//! and is tested with a virtual clock. This crate never touches the network
//! or an audio device.

pub mod analysis;
mod codec;
pub mod jitter;
pub mod level;
pub mod loss;
mod mixer;
pub mod netem;
pub mod path;
pub(crate) mod resample;
mod timescale;

pub use codec::{CodecError, Decoder, Encoder, EncoderConfig, is_dtx_frame};
pub use jitter::{JitterBuffer, JitterConfig, JitterStats, PullKind};
pub use loss::LossMeter;
pub use mixer::Mixer;
pub use path::{
    Captured, MediaPacket, OutgoingFrame, PacketReceiver, PacketSender, PathError, ReceivePath,
    SendPath, packet_ring,
};
pub use resample::{Resampler, ResamplerError};

/// The pipeline's sample rate.
pub const SAMPLE_RATE: u32 = 48_000;

/// Samples in one 20 ms frame at 48 kHz mono.
pub const FRAME_SAMPLES: usize = 960;

/// Largest Opus packet the pipeline produces or accepts.
pub const MAX_PACKET: usize = 1_275;
