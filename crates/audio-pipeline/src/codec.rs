//! Opus for calls: 48 kHz mono, 20 ms frames (10 ms for the low-latency
//! profile), VoIP mode, in-band FEC and DTX on the encoder; decode, FEC
//! recovery and concealment on the decoder, which runs libopus directly
//! (`opusic-sys`, built with its neural concealment and enhancement) at a
//! chosen complexity.
//! The encoder's loss hint is whatever [`Encoder::set_measured_loss`] is
//! told, down to 0 (the SDK feeds it its receivers' loss reports).

use crate::{FRAME_SAMPLES, MAX_PACKET, SAMPLE_RATE};

/// An Opus call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// An encoder call (through the `opus` crate).
    #[error("opus: {0}")]
    Opus(#[from] opus::Error),
    /// A decoder call (libopus directly), with libopus's error code.
    #[error("opus decoder: {what} failed (libopus error {code})")]
    Decoder {
        /// What was asked.
        what: &'static str,
        /// libopus's code (negative).
        code: i32,
    },
}

/// How the encoder runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncoderConfig {
    /// Target bitrate in bits per second (default 32 kbps: in-band FEC needs
    /// at least ~20 kbps wideband to carry anything).
    pub bitrate: i32,
    /// Opus complexity 0–10.
    pub complexity: i32,
    /// Discontinuous transmission while silent.
    pub dtx: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        Self {
            bitrate: 32_000,
            complexity: 9,
            dtx: false,
        }
    }
}

/// Opus encoder: 48 kHz mono VoIP, in-band FEC on.
pub struct Encoder {
    inner: opus::Encoder,
    loss_percent: i32,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("loss_percent", &self.loss_percent)
            .finish_non_exhaustive()
    }
}

impl Encoder {
    /// A new encoder.
    pub fn new(config: EncoderConfig) -> Result<Self, CodecError> {
        let mut inner =
            opus::Encoder::new(SAMPLE_RATE, opus::Channels::Mono, opus::Application::Voip)?;
        inner.set_bitrate(opus::Bitrate::Bits(config.bitrate))?;
        inner.set_complexity(config.complexity)?;
        inner.set_inband_fec(true)?;
        inner.set_dtx(config.dtx)?;
        // In-band FEC only carries data once the encoder expects loss, and
        // costs quality when there is none: start at none and follow what
        // the receivers measure.
        inner.set_packet_loss_perc(0)?;
        Ok(Self {
            inner,
            loss_percent: 0,
        })
    }

    /// Tells the encoder the loss the receivers measure (0–100). Telling it
    /// more loss than there is costs quality, so this follows measurement.
    pub fn set_measured_loss(&mut self, percent: f32) -> Result<(), CodecError> {
        let percent = (percent.round() as i32).clamp(0, 100);
        if percent != self.loss_percent {
            // At 0 Opus sends no FEC: on a clean link its bits go to the
            // audio itself.
            self.inner.set_packet_loss_perc(percent)?;
            self.loss_percent = percent;
        }
        Ok(())
    }

    /// Changes the bitrate.
    pub fn set_bitrate(&mut self, bitrate: i32) -> Result<(), CodecError> {
        Ok(self.inner.set_bitrate(opus::Bitrate::Bits(bitrate))?)
    }

    /// Encodes one frame into `out`: 10 or 20 ms (480 or 960 samples; any
    /// Opus frame size is taken, others are an error). Returns the packet
    /// length (1–2 bytes while DTX is silent).
    pub fn encode(
        &mut self,
        frame: &[f32],
        out: &mut [u8; MAX_PACKET],
    ) -> Result<usize, CodecError> {
        Ok(self.inner.encode_float(frame, out)?)
    }

    /// Whether the encoder is in DTX (sending comfort noise only): the
    /// voice-activity flag to put in the datagram header is the opposite.
    pub fn in_dtx(&mut self) -> bool {
        self.inner.get_in_dtx().unwrap_or(false)
    }

    /// The encoder's look-ahead in samples (part of the mouth-to-ear delay).
    pub fn lookahead(&mut self) -> Result<usize, CodecError> {
        Ok(usize::try_from(self.inner.get_lookahead()?).unwrap_or(0))
    }
}

/// Whether an encoded frame of `len` bytes is a DTX frame: the encoder's
/// "nothing to say" that a sender need not transmit.
pub fn is_dtx_frame(len: usize) -> bool {
    len <= 2
}

/// How hard the decoder works on what was lost or degraded: libopus's
/// decoder complexity. Below 5 classic concealment; 5 adds Deep PLC (a
/// neural network conceals lost frames), 6 LACE and 7 NoLACE (neural
/// enhancement of every decoded frame, NoLACE the stronger). Only the
/// receiving side changes: any sender's packets decode. The default is
/// NoLACE, the best of the four on the project's speech at every loss but
/// bursty (docs/benchmarks.md), at ~0.5 % of a core per remote speaker;
/// 5 keeps Deep PLC without the per-frame cost.
pub const DEFAULT_DECODER_COMPLEXITY: u8 = 7;

/// Opus decoder: 48 kHz mono, libopus through `opusic-sys` (the `opus`
/// crate does not expose the decoder's complexity, which turns on the
/// neural concealment and enhancement).
pub struct Decoder {
    state: std::ptr::NonNull<opusic_sys::OpusDecoder>,
    complexity: u8,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("complexity", &self.complexity)
            .finish_non_exhaustive()
    }
}

// The FFI calls of this type are its only unsafe code.
#[allow(unsafe_code)]
mod ffi {
    use super::{CodecError, FRAME_SAMPLES, SAMPLE_RATE};
    use std::ptr::NonNull;

    pub(super) fn create() -> Result<NonNull<opusic_sys::OpusDecoder>, CodecError> {
        let mut code = 0;
        let rate = i32::try_from(SAMPLE_RATE).unwrap_or(48_000);
        // SAFETY: `code` is a valid out-pointer for the call's duration.
        let state = unsafe { opusic_sys::opus_decoder_create(rate, 1, &raw mut code) };
        match NonNull::new(state) {
            Some(state) if code == opusic_sys::OPUS_OK => Ok(state),
            Some(state) => {
                destroy(state);
                Err(CodecError::Decoder {
                    what: "create",
                    code,
                })
            }
            None => Err(CodecError::Decoder {
                what: "create",
                code,
            }),
        }
    }

    pub(super) fn destroy(state: NonNull<opusic_sys::OpusDecoder>) {
        // SAFETY: `state` came from `opus_decoder_create` and is destroyed
        // once, by its only owner.
        unsafe { opusic_sys::opus_decoder_destroy(state.as_ptr()) }
    }

    pub(super) fn set_complexity(
        state: NonNull<opusic_sys::OpusDecoder>,
        complexity: i32,
    ) -> Result<(), CodecError> {
        // SAFETY: a live decoder; this request takes one `opus_int32`.
        let code = unsafe {
            opusic_sys::opus_decoder_ctl(
                state.as_ptr(),
                opusic_sys::OPUS_SET_COMPLEXITY_REQUEST,
                complexity,
            )
        };
        if code == opusic_sys::OPUS_OK {
            Ok(())
        } else {
            Err(CodecError::Decoder {
                what: "set complexity",
                code,
            })
        }
    }

    /// One frame from `packet` (`None`: conceal `out.len()` samples), or
    /// from its FEC (also `out.len()` samples: the lost frame's duration).
    pub(super) fn decode(
        state: NonNull<opusic_sys::OpusDecoder>,
        packet: Option<&[u8]>,
        fec: bool,
        out: &mut [f32],
    ) -> Result<usize, CodecError> {
        let (data, len) = match packet {
            Some(packet) => (
                packet.as_ptr(),
                i32::try_from(packet.len()).map_err(|_| CodecError::Decoder {
                    what: "decode",
                    code: opusic_sys::OPUS_BAD_ARG,
                })?,
            ),
            None => (std::ptr::null(), 0),
        };
        let frame = i32::try_from(out.len().min(FRAME_SAMPLES)).unwrap_or(960);
        // SAFETY: a live decoder; `data` is null (conceal) or `len` readable
        // bytes; `out` has room for `frame` mono samples.
        let decoded = unsafe {
            opusic_sys::opus_decode_float(
                state.as_ptr(),
                data,
                len,
                out.as_mut_ptr(),
                frame,
                i32::from(fec),
            )
        };
        usize::try_from(decoded).map_err(|_| CodecError::Decoder {
            what: "decode",
            code: decoded,
        })
    }

    /// Samples at 48 kHz the packet decodes to (`None`: not a valid one).
    pub(super) fn packet_samples(packet: &[u8]) -> Option<usize> {
        let len = i32::try_from(packet.len()).ok()?;
        let rate = i32::try_from(SAMPLE_RATE).unwrap_or(48_000);
        // SAFETY: `packet` is `len` readable bytes; libopus only reads them.
        let samples = unsafe { opusic_sys::opus_packet_get_nb_samples(packet.as_ptr(), len, rate) };
        usize::try_from(samples).ok().filter(|samples| *samples > 0)
    }
}

/// How many samples (48 kHz) an Opus packet decodes to, read from its
/// table of contents; `None` for bytes that are not a valid packet. A
/// receiver learns each packet's duration this way: senders may use 10 or
/// 20 ms frames.
pub fn packet_samples(packet: &[u8]) -> Option<usize> {
    ffi::packet_samples(packet)
}

// SAFETY: a libopus decoder is plain memory with no tie to a thread; it is
// only reached through `&mut self`, so one thread at a time.
#[allow(unsafe_code)]
unsafe impl Send for Decoder {}

impl Drop for Decoder {
    fn drop(&mut self) {
        ffi::destroy(self.state);
    }
}

impl Decoder {
    /// A new decoder at [`DEFAULT_DECODER_COMPLEXITY`].
    pub fn new() -> Result<Self, CodecError> {
        Self::with_complexity(DEFAULT_DECODER_COMPLEXITY)
    }

    /// A new decoder at `complexity` (0–10; see
    /// [`DEFAULT_DECODER_COMPLEXITY`]).
    pub fn with_complexity(complexity: u8) -> Result<Self, CodecError> {
        let decoder = Self {
            state: ffi::create()?,
            complexity,
        };
        ffi::set_complexity(decoder.state, i32::from(complexity.min(10)))?;
        Ok(decoder)
    }

    /// Its complexity.
    pub fn complexity(&self) -> u8 {
        self.complexity
    }

    /// Decodes a packet of at most 20 ms into the start of `out`; returns
    /// its samples (a packet longer than `out` is an error).
    pub fn decode(&mut self, packet: &[u8], out: &mut [f32]) -> Result<usize, CodecError> {
        ffi::decode(self.state, Some(packet), false, out)
    }

    /// Recovers the frame *before* `next_packet` from its in-band FEC data
    /// (falls back to concealment inside libopus when there is none):
    /// `out.len()` samples, the lost frame's duration.
    pub fn decode_fec(&mut self, next_packet: &[u8], out: &mut [f32]) -> Result<(), CodecError> {
        let decoded = ffi::decode(self.state, Some(next_packet), true, out)?;
        fill_after(out, decoded);
        Ok(())
    }

    /// Conceals one missing frame of `out.len()` samples (PLC; Deep PLC
    /// from complexity 5).
    pub fn conceal(&mut self, out: &mut [f32]) -> Result<(), CodecError> {
        let decoded = ffi::decode(self.state, None, false, out)?;
        fill_after(out, decoded);
        Ok(())
    }
}

/// Silence after the `decoded` samples libopus gave.
fn fill_after(out: &mut [f32], decoded: usize) {
    if let Some(rest) = out.get_mut(decoded..) {
        rest.fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(frame: usize) -> [f32; FRAME_SAMPLES] {
        std::array::from_fn(|n| {
            0.3 * (std::f32::consts::TAU * 440.0 * (frame * FRAME_SAMPLES + n) as f32 / 48_000.0)
                .sin()
        })
    }

    #[test]
    fn a_tone_survives_a_round_trip() {
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        let mut decoder = Decoder::new().unwrap();
        let mut packet = [0; MAX_PACKET];
        let mut out = [0.0; FRAME_SAMPLES];
        let mut energy_in = 0.0;
        let mut energy_out = 0.0;
        for frame in 0..50 {
            let input = tone(frame);
            let len = encoder.encode(&input, &mut packet).unwrap();
            assert!(len > 10 && len < 200, "{len} bytes");
            decoder.decode(&packet[..len], &mut out).unwrap();
            if frame > 5 {
                energy_in += input.iter().map(|s| s * s).sum::<f32>();
                energy_out += out.iter().map(|s| s * s).sum::<f32>();
            }
        }
        assert!(
            (energy_out / energy_in - 1.0).abs() < 0.2,
            "{}",
            energy_out / energy_in
        );
        assert!(encoder.lookahead().unwrap() > 0);
    }

    #[test]
    fn ten_ms_frames_round_trip_and_say_their_duration() {
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        let mut decoder = Decoder::new().unwrap();
        let mut packet = [0; MAX_PACKET];
        let mut out = [0.0; FRAME_SAMPLES];
        let (mut energy_in, mut energy_out) = (0.0, 0.0);
        for frame in 0..100 {
            let input = &tone(frame / 2)[(frame % 2) * 480..][..480];
            let len = encoder.encode(input, &mut packet).unwrap();
            assert_eq!(packet_samples(&packet[..len]), Some(480));
            assert_eq!(decoder.decode(&packet[..len], &mut out).unwrap(), 480);
            if frame > 10 {
                energy_in += input.iter().map(|s| s * s).sum::<f32>();
                energy_out += out[..480].iter().map(|s| s * s).sum::<f32>();
            }
        }
        assert!(
            (energy_out / energy_in - 1.0).abs() < 0.2,
            "{}",
            energy_out / energy_in
        );
        let len = encoder.encode(&tone(0), &mut packet).unwrap();
        assert_eq!(packet_samples(&packet[..len]), Some(960));
        assert!(
            encoder.encode(&tone(0)[..500], &mut packet).is_err(),
            "not an Opus frame size"
        );
        assert_eq!(packet_samples(&[]), None);
    }

    #[test]
    fn every_decoder_complexity_decodes_the_same_stream() {
        // Only the receiver chooses: one sender's packets, four receivers.
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        encoder.set_measured_loss(10.0).unwrap();
        let mut packet = [0; MAX_PACKET];
        let packets: Vec<Vec<u8>> = (0..60)
            .map(|frame| {
                let len = encoder.encode(&tone(frame), &mut packet).unwrap();
                packet[..len].to_vec()
            })
            .collect();
        for complexity in [0, 5, 6, 7, 10] {
            let mut decoder = Decoder::with_complexity(complexity).unwrap();
            assert_eq!(decoder.complexity(), complexity);
            let mut out = [0.0; FRAME_SAMPLES];
            let (mut energy_in, mut energy_out) = (0.0, 0.0);
            for (frame, packet) in packets.iter().enumerate() {
                if frame % 10 == 9 {
                    decoder.conceal(&mut out).unwrap();
                    assert!(out.iter().all(|s| s.is_finite()));
                    assert!(
                        out.iter().any(|s| s.abs() > 0.01),
                        "complexity {complexity}: concealment continues the tone"
                    );
                    continue;
                }
                decoder.decode(packet, &mut out).unwrap();
                if frame > 5 && frame % 10 != 0 {
                    energy_in += tone(frame).iter().map(|s| s * s).sum::<f32>();
                    energy_out += out.iter().map(|s| s * s).sum::<f32>();
                }
            }
            assert!(
                (energy_out / energy_in - 1.0).abs() < 0.25,
                "complexity {complexity}: {}",
                energy_out / energy_in
            );
        }
    }

    #[test]
    fn dtx_sends_almost_nothing_for_silence() {
        let mut encoder = Encoder::new(EncoderConfig {
            dtx: true,
            ..EncoderConfig::default()
        })
        .unwrap();
        let mut packet = [0; MAX_PACKET];
        let silence = [0.0; FRAME_SAMPLES];
        let lengths: Vec<usize> = (0..100)
            .map(|_| encoder.encode(&silence, &mut packet).unwrap())
            .collect();
        // One- or two-byte frames (not worth sending), with a comfort-noise
        // update every 400 ms.
        let tiny = lengths[20..].iter().filter(|len| **len <= 2).count();
        assert!(tiny >= 70, "{lengths:?}");
        assert!(is_dtx_frame(1) && !is_dtx_frame(21));
    }

    #[test]
    fn concealment_and_fec_produce_a_frame() {
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        encoder.set_measured_loss(10.0).unwrap();
        let mut decoder = Decoder::new().unwrap();
        let mut packet = [0; MAX_PACKET];
        let mut out = [0.0; FRAME_SAMPLES];
        for frame in 0..10 {
            let len = encoder.encode(&tone(frame), &mut packet).unwrap();
            decoder.decode(&packet[..len], &mut out).unwrap();
        }
        decoder.conceal(&mut out).unwrap();
        assert!(out.iter().any(|s| s.abs() > 0.01), "PLC continues the tone");
        let len = encoder.encode(&tone(11), &mut packet).unwrap();
        decoder.decode_fec(&packet[..len], &mut out).unwrap();
        assert!(out.iter().any(|s| s.abs() > 0.01));
        assert!(
            decoder.decode(&[0xff; 3], &mut out).is_err() || out.iter().all(|s| s.is_finite()),
            "garbage never panics"
        );
    }
}
