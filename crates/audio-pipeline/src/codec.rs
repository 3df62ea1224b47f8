//! Opus for calls: 48 kHz mono, 20 ms frames (10 ms for the low-latency
//! profile), VoIP mode, DTX on request, and loss protection — in-band FEC
//! or Deep REDundancy (DRED) — on the encoder; decode, FEC and DRED
//! recovery and concealment on the decoder. Both run libopus directly
//! (`opusic-sys`, built with its neural concealment, enhancement and
//! DRED).
//! The encoder's loss hint is whatever [`Encoder::set_measured_loss`] is
//! told, down to 0 (the SDK feeds it its receivers' loss reports).

use crate::{FRAME_SAMPLES, MAX_PACKET, SAMPLE_RATE};

/// The smallest packet limit [`Encoder::limit_packet`] takes: room for a
/// 20 ms frame at 40 kbps, far below any datagram a transport carries.
pub const MIN_PACKET_LIMIT: usize = 100;

/// An Opus call that failed.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// An encoder call, with libopus's error code.
    #[error("opus encoder: {what} failed (libopus error {code})")]
    Encoder {
        /// What was asked.
        what: &'static str,
        /// libopus's code (negative).
        code: i32,
    },
    /// A decoder call, with libopus's error code.
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

/// How a sender protects its audio against loss, once loss is expected.
///
/// In-band FEC puts a coarse copy of each frame in the next packet: a
/// single lost packet is recovered well, a burst only at its last frame.
/// DRED (Deep REDundancy) puts a neural encoding of the last
/// [`DRED_MS`] of audio in every packet, so the packet after a burst
/// carries the whole burst — but its bits come out of the primary
/// encoding, and a single loss is recovered worse than by FEC
/// (docs/benchmarks.md, our receive path at equal bits: +0.14 PESQ over
/// FEC on bursty loss, −0.76 at 5 % random).
/// Beside FEC, DRED gets no bits at call bitrates, so it is one or the
/// other. A receiver needs a decoder with Deep PLC
/// ([`Decoder::decodes_dred`]) to use DRED; any receiver decodes the
/// packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Protection {
    /// Opus in-band FEC (the default).
    #[default]
    InBandFec,
    /// DRED instead of FEC.
    Dred,
}

/// Audio that DRED carries in each packet while the encoder expects loss:
/// bursts longer than this are concealed past it.
pub const DRED_MS: u32 = 100;

/// The encoder's bitrate setting while DRED is on, as a share of the
/// bitrate asked for, so that the packets carry about as many bits as with
/// FEC: libopus sends ~18 % over its setting with DRED (37.1 against
/// 31.3 kbps with FEC on the speech fixtures at 32 kbps; 32.0 scaled).
pub const DRED_BITRATE_SCALE: f64 = 0.84;

/// Opus encoder: 48 kHz mono VoIP, libopus through `opusic-sys` (the `opus`
/// crate has no DRED).
pub struct Encoder {
    state: std::ptr::NonNull<opusic_sys::OpusEncoder>,
    /// The bitrate asked for: what goes on the wire, either protection.
    bitrate: i32,
    loss_percent: i32,
    protection: Protection,
    /// The largest packet it may produce (see [`Encoder::limit_packet`]).
    max_packet: usize,
}

impl std::fmt::Debug for Encoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Encoder")
            .field("loss_percent", &self.loss_percent)
            .field("protection", &self.protection)
            .finish_non_exhaustive()
    }
}

// SAFETY: a libopus encoder is plain memory with no tie to a thread; it is
// only reached through `&mut self`, so one thread at a time.
#[allow(unsafe_code)]
unsafe impl Send for Encoder {}

impl Drop for Encoder {
    fn drop(&mut self) {
        encoder_ffi::destroy(self.state);
    }
}

impl Encoder {
    /// A new encoder, protecting with in-band FEC.
    pub fn new(config: EncoderConfig) -> Result<Self, CodecError> {
        let encoder = Self {
            state: encoder_ffi::create()?,
            bitrate: config.bitrate,
            loss_percent: 0,
            protection: Protection::InBandFec,
            max_packet: MAX_PACKET,
        };
        encoder.set(
            "set complexity",
            opusic_sys::OPUS_SET_COMPLEXITY_REQUEST,
            config.complexity,
        )?;
        encoder.set(
            "set dtx",
            opusic_sys::OPUS_SET_DTX_REQUEST,
            i32::from(config.dtx),
        )?;
        // In-band FEC only carries data once the encoder expects loss, and
        // costs quality when there is none: start at none and follow what
        // the receivers measure.
        encoder.apply_protection()?;
        Ok(encoder)
    }

    fn set(&self, what: &'static str, request: i32, value: i32) -> Result<(), CodecError> {
        encoder_ffi::ctl_set(self.state, request, value)
            .map_err(|code| CodecError::Encoder { what, code })
    }

    fn get(&self, what: &'static str, request: i32) -> Result<i32, CodecError> {
        encoder_ffi::ctl_get(self.state, request).map_err(|code| CodecError::Encoder { what, code })
    }

    /// FEC or DRED per [`Protection`], for the loss hint now: at a hint of
    /// 0 neither sends anything (on a clean link their bits go to the
    /// audio itself).
    fn apply_protection(&self) -> Result<(), CodecError> {
        let dred = self.protection == Protection::Dred && self.loss_percent > 0;
        let bitrate = if dred {
            (f64::from(self.bitrate) * DRED_BITRATE_SCALE) as i32
        } else {
            self.bitrate
        };
        self.set("set bitrate", opusic_sys::OPUS_SET_BITRATE_REQUEST, bitrate)?;
        self.set(
            "set in-band FEC",
            opusic_sys::OPUS_SET_INBAND_FEC_REQUEST,
            i32::from(self.protection == Protection::InBandFec),
        )?;
        self.set(
            "set loss hint",
            opusic_sys::OPUS_SET_PACKET_LOSS_PERC_REQUEST,
            self.loss_percent,
        )?;
        // DRED's duration counts 10 ms units.
        let dred_units = if dred { (DRED_MS / 10) as i32 } else { 0 };
        self.set(
            "set DRED duration",
            opusic_sys::OPUS_SET_DRED_DURATION_REQUEST,
            dred_units,
        )
    }

    /// Tells the encoder the loss the receivers measure (0–100). Telling it
    /// more loss than there is costs quality, so this follows measurement.
    pub fn set_measured_loss(&mut self, percent: f32) -> Result<(), CodecError> {
        let percent = (percent.round() as i32).clamp(0, 100);
        if percent != self.loss_percent {
            self.loss_percent = percent;
            self.apply_protection()?;
        }
        Ok(())
    }

    /// Protects with FEC or DRED from the next frame on.
    pub fn set_protection(&mut self, protection: Protection) -> Result<(), CodecError> {
        if protection != self.protection {
            self.protection = protection;
            self.apply_protection()?;
        }
        Ok(())
    }

    /// How it protects now.
    pub fn protection(&self) -> Protection {
        self.protection
    }

    /// Codes no more audio bandwidth than a source sampled at
    /// `source_rate` Hz has (half its rate): a 16 kHz microphone is coded
    /// wideband, its bits spent below 8 kHz. libopus's own detection would
    /// not go under super-wideband at call bitrates, coding empty bands.
    pub fn limit_bandwidth_to_source(&mut self, source_rate: u32) -> Result<(), CodecError> {
        let bandwidth = match source_rate {
            ..=8_000 => opusic_sys::OPUS_BANDWIDTH_NARROWBAND,
            8_001..=12_000 => opusic_sys::OPUS_BANDWIDTH_MEDIUMBAND,
            12_001..=16_000 => opusic_sys::OPUS_BANDWIDTH_WIDEBAND,
            16_001..=24_000 => opusic_sys::OPUS_BANDWIDTH_SUPERWIDEBAND,
            _ => opusic_sys::OPUS_BANDWIDTH_FULLBAND,
        };
        self.set(
            "set max bandwidth",
            opusic_sys::OPUS_SET_MAX_BANDWIDTH_REQUEST,
            bandwidth,
        )
    }

    /// Changes the bitrate (what goes on the wire, either protection).
    pub fn set_bitrate(&mut self, bitrate: i32) -> Result<(), CodecError> {
        self.bitrate = bitrate;
        self.apply_protection()
    }

    /// Packets from now on take at most `bytes` (at least
    /// [`MIN_PACKET_LIMIT`], at most [`MAX_PACKET`]): libopus codes a frame
    /// that would not fit with fewer bits instead. What a transport can
    /// carry in one datagram, less the header, is the limit to set.
    pub fn limit_packet(&mut self, bytes: usize) {
        self.max_packet = bytes.clamp(MIN_PACKET_LIMIT, MAX_PACKET);
    }

    /// Encodes one frame into `out`: 10 or 20 ms (480 or 960 samples; any
    /// Opus frame size is taken, others are an error). Returns the packet
    /// length (1–2 bytes while DTX is silent), at most the limit set.
    pub fn encode(
        &mut self,
        frame: &[f32],
        out: &mut [u8; MAX_PACKET],
    ) -> Result<usize, CodecError> {
        encoder_ffi::encode(self.state, frame, &mut out[..self.max_packet])
    }

    /// Whether the encoder is in DTX (sending comfort noise only): the
    /// voice-activity flag to put in the datagram header is the opposite.
    pub fn in_dtx(&mut self) -> bool {
        self.get("get in DTX", opusic_sys::OPUS_GET_IN_DTX_REQUEST)
            .is_ok_and(|in_dtx| in_dtx != 0)
    }

    /// The encoder's look-ahead in samples (part of the mouth-to-ear delay).
    pub fn lookahead(&mut self) -> Result<usize, CodecError> {
        let samples = self.get("get look-ahead", opusic_sys::OPUS_GET_LOOKAHEAD_REQUEST)?;
        Ok(usize::try_from(samples).unwrap_or(0))
    }
}

// The encoder's FFI calls are its only unsafe code.
#[allow(unsafe_code)]
mod encoder_ffi {
    use super::{CodecError, MAX_PACKET, SAMPLE_RATE};
    use std::ptr::NonNull;

    pub(super) fn create() -> Result<NonNull<opusic_sys::OpusEncoder>, CodecError> {
        let mut code = 0;
        let rate = i32::try_from(SAMPLE_RATE).unwrap_or(48_000);
        // SAFETY: `code` is a valid out-pointer for the call's duration.
        let state = unsafe {
            opusic_sys::opus_encoder_create(
                rate,
                1,
                opusic_sys::OPUS_APPLICATION_VOIP,
                &raw mut code,
            )
        };
        super::created(state, code, destroy).map_err(|code| CodecError::Encoder {
            what: "create",
            code,
        })
    }

    pub(super) fn destroy(state: NonNull<opusic_sys::OpusEncoder>) {
        // SAFETY: `state` came from `opus_encoder_create` and is destroyed
        // once, by its only owner.
        unsafe { opusic_sys::opus_encoder_destroy(state.as_ptr()) }
    }

    /// A setter request that takes one `opus_int32`; `Err` is libopus's code.
    pub(super) fn ctl_set(
        state: NonNull<opusic_sys::OpusEncoder>,
        request: i32,
        value: i32,
    ) -> Result<(), i32> {
        // SAFETY: a live encoder; every request this is called with takes
        // one `opus_int32` by value.
        let code = unsafe { opusic_sys::opus_encoder_ctl(state.as_ptr(), request, value) };
        if code == opusic_sys::OPUS_OK {
            Ok(())
        } else {
            Err(code)
        }
    }

    /// A getter request that writes one `opus_int32`.
    pub(super) fn ctl_get(
        state: NonNull<opusic_sys::OpusEncoder>,
        request: i32,
    ) -> Result<i32, i32> {
        let mut value = 0_i32;
        // SAFETY: a live encoder; every request this is called with writes
        // one `opus_int32` through the pointer, which outlives the call.
        let code = unsafe { opusic_sys::opus_encoder_ctl(state.as_ptr(), request, &raw mut value) };
        if code == opusic_sys::OPUS_OK {
            Ok(value)
        } else {
            Err(code)
        }
    }

    pub(super) fn encode(
        state: NonNull<opusic_sys::OpusEncoder>,
        frame: &[f32],
        out: &mut [u8],
    ) -> Result<usize, CodecError> {
        let capacity = i32::try_from(out.len().min(MAX_PACKET)).unwrap_or(0);
        let samples = i32::try_from(frame.len()).map_err(|_| CodecError::Encoder {
            what: "encode",
            code: opusic_sys::OPUS_BAD_ARG,
        })?;
        // SAFETY: a live encoder; `frame` holds `samples` mono samples and
        // `out` `capacity` writable bytes (libopus checks the frame size).
        let len = unsafe {
            opusic_sys::opus_encode_float(
                state.as_ptr(),
                frame.as_ptr(),
                samples,
                out.as_mut_ptr(),
                capacity,
            )
        };
        usize::try_from(len).map_err(|_| CodecError::Encoder {
            what: "encode",
            code: len,
        })
    }
}

/// What a libopus constructor returned: its state, or its error code (a
/// state made despite an error is destroyed).
fn created<T>(
    state: *mut T,
    code: i32,
    destroy: impl FnOnce(std::ptr::NonNull<T>),
) -> Result<std::ptr::NonNull<T>, i32> {
    match std::ptr::NonNull::new(state) {
        Some(state) if code == opusic_sys::OPUS_OK => Ok(state),
        Some(state) => {
            destroy(state);
            Err(code)
        }
        None => Err(code),
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

/// The lowest decoder complexity that recovers frames from DRED.
pub const MIN_DRED_COMPLEXITY: u8 = 5;

/// Whether `packet` carries in-band FEC (a coarse copy of the frame
/// before it): a sender protecting with DRED sends none.
pub fn has_fec(packet: &[u8]) -> bool {
    ffi::has_fec(packet)
}

/// Opus decoder: 48 kHz mono, libopus through `opusic-sys` (the `opus`
/// crate does not expose the decoder's complexity, which turns on the
/// neural concealment and enhancement, nor DRED).
pub struct Decoder {
    state: std::ptr::NonNull<opusic_sys::OpusDecoder>,
    complexity: u8,
    /// DRED's own decoder and the redundancy last parsed, from complexity
    /// 5 (DRED is decoded through Deep PLC); allocated with the decoder.
    dred: Option<ffi::Dred>,
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
        super::created(state, code, destroy).map_err(|code| CodecError::Decoder {
            what: "create",
            code,
        })
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

    /// DRED's decoder (its model) and one parsed redundancy, each
    /// allocated once.
    pub(super) struct Dred {
        decoder: NonNull<opusic_sys::OpusDREDDecoder>,
        parsed: NonNull<opusic_sys::OpusDRED>,
    }

    impl Dred {
        pub(super) fn create() -> Result<Self, CodecError> {
            let error = |what| move |code| CodecError::Decoder { what, code };
            let mut code = 0;
            // SAFETY: `code` is a valid out-pointer for each call.
            let decoder = unsafe { opusic_sys::opus_dred_decoder_create(&raw mut code) };
            let decoder = super::created(decoder, code, |decoder| {
                // SAFETY: created above, destroyed once.
                unsafe { opusic_sys::opus_dred_decoder_destroy(decoder.as_ptr()) }
            })
            .map_err(error("create DRED decoder"))?;
            // `opus_dred_alloc` writes the code only when it fails.
            code = opusic_sys::OPUS_OK;
            // SAFETY: as above.
            let parsed = unsafe { opusic_sys::opus_dred_alloc(&raw mut code) };
            let parsed = super::created(parsed, code, |parsed| {
                // SAFETY: allocated above, freed once.
                unsafe { opusic_sys::opus_dred_free(parsed.as_ptr()) }
            });
            match parsed {
                Ok(parsed) => Ok(Self { decoder, parsed }),
                Err(code) => {
                    // SAFETY: created above, destroyed once.
                    unsafe { opusic_sys::opus_dred_decoder_destroy(decoder.as_ptr()) }
                    Err(error("allocate DRED")(code))
                }
            }
        }

        /// Parses and decodes the DRED in `packet`, up to `max_samples`
        /// before it; returns how many samples before the packet's start
        /// it covers (0: it carries none).
        pub(super) fn parse(
            &mut self,
            packet: &[u8],
            max_samples: i32,
        ) -> Result<usize, CodecError> {
            let error = |code| CodecError::Decoder {
                what: "parse DRED",
                code,
            };
            let len = i32::try_from(packet.len()).map_err(|_| error(opusic_sys::OPUS_BAD_ARG))?;
            let rate = i32::try_from(SAMPLE_RATE).unwrap_or(48_000);
            let mut end = 0;
            // SAFETY: live DRED decoder and state, each owned by `self`;
            // `packet` is `len` readable bytes; `end` outlives the call.
            let covered = unsafe {
                opusic_sys::opus_dred_parse(
                    self.decoder.as_ptr(),
                    self.parsed.as_ptr(),
                    packet.as_ptr(),
                    len,
                    max_samples,
                    rate,
                    &raw mut end,
                    0,
                )
            };
            usize::try_from(covered).map_err(|_| error(covered))
        }

        /// Decodes `out.len()` samples starting `offset` samples before the
        /// start of the packet last parsed.
        pub(super) fn decode(
            &self,
            state: NonNull<opusic_sys::OpusDecoder>,
            offset: i32,
            out: &mut [f32],
        ) -> Result<usize, CodecError> {
            let frame = i32::try_from(out.len().min(FRAME_SAMPLES)).unwrap_or(960);
            // SAFETY: a live decoder and a parsed DRED state owned by
            // `self`; `out` has room for `frame` mono samples.
            let decoded = unsafe {
                opusic_sys::opus_decoder_dred_decode_float(
                    state.as_ptr(),
                    self.parsed.as_ptr(),
                    offset,
                    out.as_mut_ptr(),
                    frame,
                )
            };
            usize::try_from(decoded).map_err(|_| CodecError::Decoder {
                what: "decode DRED",
                code: decoded,
            })
        }
    }

    impl Drop for Dred {
        fn drop(&mut self) {
            // SAFETY: both came from their constructors and are freed once,
            // by their only owner.
            unsafe {
                opusic_sys::opus_dred_decoder_destroy(self.decoder.as_ptr());
                opusic_sys::opus_dred_free(self.parsed.as_ptr());
            }
        }
    }

    /// Whether `packet` carries in-band FEC for the frame before it.
    pub(super) fn has_fec(packet: &[u8]) -> bool {
        let Ok(len) = i32::try_from(packet.len()) else {
            return false;
        };
        // SAFETY: `packet` is `len` readable bytes; libopus only reads them.
        unsafe { opusic_sys::opus_packet_has_lbrr(packet.as_ptr(), len) > 0 }
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

// SAFETY: a libopus decoder (and DRED's decoder and state) is plain memory
// with no tie to a thread; it is only reached through `&mut self`, so one
// thread at a time.
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
            dred: if complexity >= MIN_DRED_COMPLEXITY {
                Some(ffi::Dred::create()?)
            } else {
                None
            },
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

    /// Whether this decoder recovers lost frames from DRED (complexity 5
    /// and up: DRED is decoded through Deep PLC).
    pub fn decodes_dred(&self) -> bool {
        self.dred.is_some()
    }

    /// Reads the DRED that `packet` carries; returns how many samples
    /// before its start it can recover (0: none, or this decoder does not
    /// decode DRED). [`Decoder::decode_dred`] then recovers from it.
    pub fn parse_dred(&mut self, packet: &[u8]) -> Result<usize, CodecError> {
        match &mut self.dred {
            Some(dred) => dred.parse(packet, (DRED_MS * 48) as i32),
            None => Ok(0),
        }
    }

    /// Recovers the `out.len()` samples that start `offset` samples before
    /// the start of the packet [`Decoder::parse_dred`] last read (conceals
    /// where its DRED does not reach).
    pub fn decode_dred(&mut self, offset: usize, out: &mut [f32]) -> Result<(), CodecError> {
        let Some(dred) = &self.dred else {
            return self.conceal(out);
        };
        let offset = i32::try_from(offset).map_err(|_| CodecError::Decoder {
            what: "decode DRED",
            code: opusic_sys::OPUS_BAD_ARG,
        })?;
        let decoded = dred.decode(self.state, offset, out)?;
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

    /// The limit a transport sets holds for every packet, even at a
    /// bitrate that would take more; the packets still decode.
    #[test]
    fn packets_keep_within_the_limit_set() {
        let mut encoder = Encoder::new(EncoderConfig {
            bitrate: 510_000,
            ..EncoderConfig::default()
        })
        .unwrap();
        let mut decoder = Decoder::new().unwrap();
        let mut packet = [0; MAX_PACKET];
        let mut out = [0.0; FRAME_SAMPLES];
        let noise = |frame: usize| -> [f32; FRAME_SAMPLES] {
            std::array::from_fn(|n| {
                let x = ((frame * FRAME_SAMPLES + n) as u32).wrapping_mul(2_654_435_761);
                (x >> 8) as f32 / (1 << 24) as f32 - 0.5
            })
        };
        let unlimited = encoder.encode(&noise(0), &mut packet).unwrap();
        assert!(unlimited > 600, "{unlimited} bytes unlimited");
        encoder.limit_packet(300);
        for frame in 1..20 {
            let len = encoder.encode(&noise(frame), &mut packet).unwrap();
            assert!(len <= 300, "{len} bytes over the limit");
            decoder.decode(&packet[..len], &mut out).unwrap();
        }
        encoder.limit_packet(0);
        let len = encoder.encode(&noise(20), &mut packet).unwrap();
        assert!(len <= MIN_PACKET_LIMIT, "{len}");
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

    /// The audio bandwidth an Opus packet codes, in Hz, from its TOC byte
    /// (RFC 6716, 3.1).
    fn coded_bandwidth_hz(packet: &[u8]) -> u32 {
        match packet[0] >> 3 {
            0..=3 | 16..=19 => 4_000,
            4..=7 => 6_000,
            8..=11 | 20..=23 => 8_000,
            12..=13 | 24..=27 => 12_000,
            _ => 20_000,
        }
    }

    #[test]
    fn a_source_is_coded_no_wider_than_it_is() {
        let widest = |source_rate: Option<u32>| {
            let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
            if let Some(rate) = source_rate {
                encoder.limit_bandwidth_to_source(rate).unwrap();
            }
            let mut packet = [0; MAX_PACKET];
            (0..50)
                .map(|frame| {
                    let len = encoder.encode(&voice(frame), &mut packet).unwrap();
                    coded_bandwidth_hz(&packet[..len])
                })
                .max()
                .unwrap()
        };
        // Unlimited, libopus codes past 8 kHz at 32 kbps.
        assert!(widest(None) > 8_000);
        assert!(widest(Some(48_000)) > 8_000);
        assert_eq!(widest(Some(16_000)), 8_000);
        assert_eq!(widest(Some(8_000)), 4_000);
    }

    /// Frame `frame` of a voice-like signal.
    fn voice(frame: usize) -> [f32; FRAME_SAMPLES] {
        std::array::from_fn(|n| crate::test_signal::voice_sample(frame * FRAME_SAMPLES + n))
    }

    fn protected_packets(protection: Protection, frames: usize) -> Vec<Vec<u8>> {
        let mut encoder = Encoder::new(EncoderConfig::default()).unwrap();
        encoder.set_protection(protection).unwrap();
        encoder.set_measured_loss(10.0).unwrap();
        assert_eq!(encoder.protection(), protection);
        let mut packet = [0; MAX_PACKET];
        (0..frames)
            .map(|frame| {
                let len = encoder.encode(&voice(frame), &mut packet).unwrap();
                packet[..len].to_vec()
            })
            .collect()
    }

    #[test]
    fn dred_replaces_fec_and_recovers_a_burst() {
        let fec = protected_packets(Protection::InBandFec, 60);
        let dred = protected_packets(Protection::Dred, 60);
        // FEC rides with the frames the encoder takes for voice (most).
        assert!(fec.iter().filter(|packet| has_fec(packet)).count() > 25);
        assert!(dred.iter().all(|packet| !has_fec(packet)));
        let mut decoder = Decoder::new().unwrap();
        assert!(decoder.decodes_dred());
        assert_eq!(decoder.parse_dred(&fec[50]).unwrap(), 0, "FEC only");
        // Frames 47, 48 and 49 lost: packet 50 carries them.
        let mut out = [0.0; FRAME_SAMPLES];
        for packet in &dred[..47] {
            decoder.decode(packet, &mut out).unwrap();
        }
        let covered = decoder.parse_dred(&dred[50]).unwrap();
        assert!(covered >= 3 * FRAME_SAMPLES, "{covered} samples");
        let (mut energy_in, mut energy_out) = (0.0, 0.0);
        for lost in 47..50 {
            decoder
                .decode_dred((50 - lost) * FRAME_SAMPLES, &mut out)
                .unwrap();
            assert!(out.iter().all(|sample| sample.is_finite()));
            energy_in += voice(lost).iter().map(|s| s * s).sum::<f32>();
            energy_out += out.iter().map(|s| s * s).sum::<f32>();
        }
        let ratio = energy_out / energy_in;
        assert!((0.5..2.0).contains(&ratio), "recovered energy {ratio}");
        decoder.decode(&dred[50], &mut out).unwrap();
        // Classic decoders neither need nor read it, and still decode the
        // packets.
        let mut classic = Decoder::with_complexity(0).unwrap();
        assert!(!classic.decodes_dred());
        assert_eq!(classic.parse_dred(&dred[50]).unwrap(), 0);
        assert_eq!(classic.decode(&dred[50], &mut out).unwrap(), FRAME_SAMPLES);
        assert!(
            decoder.parse_dred(&[0xff; 3]).unwrap_or(0) == 0,
            "garbage is no DRED"
        );
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
