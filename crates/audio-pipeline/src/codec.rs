//! Opus for calls: 48 kHz mono, 20 ms frames, VoIP mode, in-band FEC and
//! DTX on the encoder; decode, FEC recovery and concealment on the decoder.
//! The encoder's loss hint is whatever [`Encoder::set_measured_loss`] is
//! told, never below 1 % (the SDK feeds it its receivers' loss reports).

use crate::{FRAME_SAMPLES, MAX_PACKET, SAMPLE_RATE};

/// An Opus call that failed.
#[derive(Debug, thiserror::Error)]
#[error("opus: {0}")]
pub struct CodecError(#[from] opus::Error);

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

/// Opus encoder: 48 kHz mono VoIP, 20 ms frames, in-band FEC on.
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

    /// Encodes one 20 ms frame (960 samples) into `out`; returns the packet
    /// length (1–2 bytes while DTX is silent).
    pub fn encode(
        &mut self,
        frame: &[f32; FRAME_SAMPLES],
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

/// Opus decoder: 48 kHz mono.
pub struct Decoder {
    inner: opus::Decoder,
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder").finish_non_exhaustive()
    }
}

impl Decoder {
    /// A new decoder.
    pub fn new() -> Result<Self, CodecError> {
        Ok(Self {
            inner: opus::Decoder::new(SAMPLE_RATE, opus::Channels::Mono)?,
        })
    }

    /// Decodes a packet into exactly one 20 ms frame.
    pub fn decode(
        &mut self,
        packet: &[u8],
        out: &mut [f32; FRAME_SAMPLES],
    ) -> Result<(), CodecError> {
        let decoded = self.inner.decode_float(packet, out, false)?;
        out[decoded.min(FRAME_SAMPLES)..].fill(0.0);
        Ok(())
    }

    /// Recovers the frame *before* `next_packet` from its in-band FEC data
    /// (falls back to concealment inside libopus when there is none).
    pub fn decode_fec(
        &mut self,
        next_packet: &[u8],
        out: &mut [f32; FRAME_SAMPLES],
    ) -> Result<(), CodecError> {
        let decoded = self.inner.decode_float(next_packet, out, true)?;
        out[decoded.min(FRAME_SAMPLES)..].fill(0.0);
        Ok(())
    }

    /// Conceals one missing frame (PLC).
    pub fn conceal(&mut self, out: &mut [f32; FRAME_SAMPLES]) -> Result<(), CodecError> {
        let decoded = self.inner.decode_float(&[], out, false)?;
        out[decoded.min(FRAME_SAMPLES)..].fill(0.0);
        Ok(())
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
