//! The two directions of a call's audio, assembled from the parts:
//!
//! - [`SendPath`]: capture at the device's rate and channel count → 48 kHz
//!   mono → voice processing when asked ([`VoiceProcessor`]: echo
//!   cancellation, noise suppression, gain control, 10 ms at a time) → 20
//!   ms frames (10 ms for low latency, switchable between frames) → level
//!   meter → Opus; nothing is sent while muted, and DTX frames (the
//!   encoder's "nothing to say") are not sent either.
//! - [`ReceivePath`]: per remote speaker, packets handed over from the
//!   network thread through a lock-free ring ([`packet_ring`]) into that
//!   speaker's [`JitterBuffer`]; each pull (10 ms in playout) mixes every
//!   speaker.

use std::time::Instant;

use ringbuf::traits::{Consumer, Producer, Split};
use ringbuf::{HeapCons, HeapProd, HeapRb};

use crate::jitter::{JitterBuffer, JitterConfig, JitterStats};
use crate::voice::{BLOCK_SAMPLES, VoiceProcessor, VoiceStats};
use crate::{
    CodecError, Encoder, EncoderConfig, FRAME_SAMPLES, FrameDuration, MAX_PACKET, Mixer,
    Protection, Resampler, SAMPLE_RATE, is_dtx_frame, level,
};

/// One encoded frame ready to go into a datagram.
#[derive(Debug, Clone, Copy)]
pub struct OutgoingFrame<'a> {
    /// Per-sender packet counter (frames not sent do not count).
    pub seq: u32,
    /// 48 kHz ticks of the frame's first sample.
    pub timestamp: u32,
    /// Voice activity (RFC 6464's V bit).
    pub voice: bool,
    /// Level in −dBov.
    pub level_dbov: u8,
    /// The Opus packet.
    pub payload: &'a [u8],
}

/// The capture → network direction. See the [module docs](self).
pub struct SendPath {
    resampler: Resampler,
    encoder: Encoder,
    frame: [f32; FRAME_SAMPLES],
    duration: FrameDuration,
    /// The protection asked for; 10 ms frames get in-band FEC whatever it
    /// is (see [`SendPath::set_protection`]).
    protection: Protection,
    packet: [u8; MAX_PACKET],
    muted: bool,
    seq: u32,
    timestamp: u32,
    volume: u8,
    voice: Option<VoiceProcessor>,
}

impl std::fmt::Debug for SendPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendPath")
            .field("duration", &self.duration)
            .field("muted", &self.muted)
            .field("seq", &self.seq)
            .field("timestamp", &self.timestamp)
            .finish_non_exhaustive()
    }
}

/// Why a path could not be built.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The codec failed.
    #[error(transparent)]
    Codec(#[from] CodecError),
    /// The resampler cannot convert these rates.
    #[error(transparent)]
    Resampler(#[from] crate::resample::ResamplerError),
}

impl SendPath {
    /// For capture at `device_rate` Hz with `device_channels` channels: the
    /// encoder codes no more bandwidth than the device has.
    pub fn new(
        device_rate: u32,
        device_channels: u16,
        config: EncoderConfig,
    ) -> Result<Self, PathError> {
        let mut encoder = Encoder::new(config)?;
        encoder.limit_bandwidth_to_source(device_rate)?;
        Ok(Self {
            resampler: Resampler::new(
                device_rate,
                device_channels,
                SAMPLE_RATE,
                1,
                (device_rate / 100).max(1) as usize,
            )?,
            encoder,
            frame: [0.0; FRAME_SAMPLES],
            duration: FrameDuration::default(),
            protection: Protection::default(),
            packet: [0; MAX_PACKET],
            muted: false,
            seq: 0,
            timestamp: 0,
            volume: 0,
            voice: None,
        })
    }

    /// Runs `processor` on the capture (at 48 kHz mono, before the level
    /// meter and the encoder), muted or not, so that the echo canceller
    /// stays converged through a mute.
    pub fn with_voice_processing(mut self, processor: VoiceProcessor) -> Self {
        self.voice = Some(processor);
        self
    }

    /// The echo path changed in a way the caller knows of (another output
    /// device): the echo canceller starts afresh
    /// ([`VoiceProcessor::echo_path_changed`]).
    pub fn echo_path_changed(&mut self) {
        if let Some(voice) = &mut self.voice {
            voice.echo_path_changed();
        }
    }

    /// What the echo canceller measures; `None` without voice processing.
    pub fn voice_stats(&self) -> Option<VoiceStats> {
        self.voice.as_ref().map(VoiceProcessor::stats)
    }

    /// Captured samples, interleaved at the device's format.
    pub fn push_capture(&mut self, samples: &[f32]) {
        self.resampler.push(samples);
    }

    /// The frame duration from the next frame on (20 ms to start with).
    /// Receivers learn it from each packet, so it may change mid-stream.
    pub fn set_frame_duration(&mut self, duration: FrameDuration) {
        self.duration = duration;
    }

    /// The frame duration now.
    pub fn frame_duration(&self) -> FrameDuration {
        self.duration
    }

    /// Stops (`true`) or resumes sending.
    pub fn set_muted(&mut self, muted: bool) {
        self.muted = muted;
    }

    /// Packets from now on take at most `bytes` (see
    /// [`crate::Encoder::limit_packet`]).
    pub fn limit_packet(&mut self, bytes: usize) {
        self.encoder.limit_packet(bytes);
    }

    /// The loss the far end measures, for the encoder's FEC or DRED.
    pub fn set_measured_loss(&mut self, percent: f32) -> Result<(), CodecError> {
        self.encoder.set_measured_loss(percent)
    }

    /// Protects the audio with in-band FEC or DRED from the next frame on.
    /// DRED only in 20 ms frames: libopus puts none in a 10 ms packet at
    /// call bitrates (it leaves DRED out when a packet's share of bits holds
    /// fewer than two chunks), so 10 ms frames keep in-band FEC, or they
    /// would go unprotected.
    pub fn set_protection(&mut self, protection: Protection) -> Result<(), CodecError> {
        self.protection = protection;
        self.encoder.set_protection(self.protection_now())
    }

    /// How the encoder protects now (FEC in 10 ms frames, whatever was
    /// asked).
    pub fn protection(&self) -> Protection {
        self.encoder.protection()
    }

    fn protection_now(&self) -> Protection {
        match self.duration {
            FrameDuration::Ms20 => self.protection,
            FrameDuration::Ms10 => Protection::InBandFec,
        }
    }

    /// The local level (0–100) of the last frame, for `onUserVoiceVolume`
    /// (0 while muted).
    pub fn volume(&self) -> u8 {
        self.volume
    }

    /// The next frame of capture (20 or 10 ms: [`SendPath::set_frame_duration`]),
    /// once it is all in: `None` until then. Time always advances, so a
    /// muted or DTX frame is [`Captured::Nothing`]. `Err` only for a codec
    /// failure.
    pub fn next_frame(&mut self) -> Result<Option<Captured<'_>>, CodecError> {
        let samples = self.duration.samples();
        let frame = &mut self.frame[..samples];
        if !self.resampler.pop(frame) {
            return Ok(None);
        }
        if let Some(voice) = &mut self.voice {
            for block in frame.chunks_exact_mut(BLOCK_SAMPLES) {
                if let Ok(block) = <&mut [f32; BLOCK_SAMPLES]>::try_from(block) {
                    voice.process_capture(block);
                }
            }
        }
        let timestamp = self.timestamp;
        self.timestamp = self.timestamp.wrapping_add(samples as u32);
        if self.muted {
            self.volume = 0;
            return Ok(Some(Captured::Nothing));
        }
        self.encoder.set_protection(self.protection_now())?;
        let frame = &self.frame[..samples];
        self.volume = level::volume(frame);
        let len = self.encoder.encode(frame, &mut self.packet)?;
        if is_dtx_frame(len) {
            return Ok(Some(Captured::Nothing));
        }
        let voice = level::voice_activity(frame) && !self.encoder.in_dtx();
        self.seq = self.seq.wrapping_add(1);
        Ok(Some(Captured::Frame(OutgoingFrame {
            seq: self.seq,
            timestamp,
            voice,
            level_dbov: level::level_dbov(frame),
            payload: &self.packet[..len],
        })))
    }
}

/// What a frame of capture became.
#[derive(Debug, Clone, Copy)]
pub enum Captured<'a> {
    /// A frame to send.
    Frame(OutgoingFrame<'a>),
    /// Nothing to send: muted, or silence the encoder left out (DTX).
    Nothing,
}

impl<'a> Captured<'a> {
    /// The frame to send, if there is one.
    pub fn frame(self) -> Option<OutgoingFrame<'a>> {
        match self {
            Self::Frame(frame) => Some(frame),
            Self::Nothing => None,
        }
    }
}

/// A received packet, a fixed-size value that crosses threads through a ring.
#[derive(Clone, Copy)]
pub struct MediaPacket {
    /// When it arrived.
    pub arrived: Instant,
    /// Sender's packet counter.
    pub seq: u32,
    /// 48 kHz ticks.
    pub timestamp: u32,
    /// Voice activity.
    pub voice: bool,
    len: u16,
    data: [u8; MAX_PACKET],
}

impl std::fmt::Debug for MediaPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaPacket")
            .field("seq", &self.seq)
            .field("timestamp", &self.timestamp)
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

impl MediaPacket {
    /// A packet; `None` if the payload is larger than an Opus packet can be.
    pub fn new(
        arrived: Instant,
        seq: u32,
        timestamp: u32,
        voice: bool,
        payload: &[u8],
    ) -> Option<Self> {
        let len = u16::try_from(payload.len())
            .ok()
            .filter(|len| usize::from(*len) <= MAX_PACKET)?;
        let mut data = [0; MAX_PACKET];
        data[..payload.len()].copy_from_slice(payload);
        Some(Self {
            arrived,
            seq,
            timestamp,
            voice,
            len,
            data,
        })
    }

    /// The Opus payload.
    pub fn payload(&self) -> &[u8] {
        &self.data[..usize::from(self.len)]
    }
}

/// A lock-free handoff of packets from the network thread to the playout
/// thread: `capacity` packets, allocated once.
pub fn packet_ring(capacity: usize) -> (PacketSender, PacketReceiver) {
    let (producer, consumer) = HeapRb::<MediaPacket>::new(capacity.max(1)).split();
    (
        PacketSender {
            producer,
            dropped: 0,
        },
        PacketReceiver { consumer },
    )
}

/// The network side of a packet ring.
pub struct PacketSender {
    producer: HeapProd<MediaPacket>,
    dropped: u64,
}

impl std::fmt::Debug for PacketSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketSender")
            .field("dropped", &self.dropped)
            .finish_non_exhaustive()
    }
}

impl PacketSender {
    /// Hands a packet over; if the playout side has fallen behind and the
    /// ring is full, the packet is dropped and counted.
    pub fn send(&mut self, packet: MediaPacket) {
        if self.producer.try_push(packet).is_err() {
            self.dropped += 1;
        }
    }

    /// Packets dropped for lack of room.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// The playout side of a packet ring.
pub struct PacketReceiver {
    consumer: HeapCons<MediaPacket>,
}

impl std::fmt::Debug for PacketReceiver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PacketReceiver").finish_non_exhaustive()
    }
}

struct Speaker {
    packets: PacketReceiver,
    jitter: JitterBuffer,
    frame: [f32; FRAME_SAMPLES],
}

/// The network → playout direction for every remote speaker of a call.
pub struct ReceivePath {
    speakers: Vec<Speaker>,
    mixer: Mixer,
    jitter: JitterConfig,
}

impl std::fmt::Debug for ReceivePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReceivePath")
            .field("speakers", &self.speakers.len())
            .finish_non_exhaustive()
    }
}

impl Default for ReceivePath {
    fn default() -> Self {
        Self::new()
    }
}

impl ReceivePath {
    /// No speakers yet.
    pub fn new() -> Self {
        Self::with_jitter_config(JitterConfig::default())
    }

    /// No speakers yet; each one's jitter buffer (and decoder) runs with
    /// `jitter`.
    pub fn with_jitter_config(jitter: JitterConfig) -> Self {
        Self {
            speakers: Vec::new(),
            mixer: Mixer::new(16),
            jitter,
        }
    }

    /// Adds a speaker; returns the sender half the network thread feeds and
    /// the speaker's index.
    pub fn add_speaker(&mut self) -> Result<(PacketSender, usize), CodecError> {
        let (sender, packets) = packet_ring(64);
        Ok((sender, self.add_receiver(packets)?))
    }

    /// Adds a speaker fed through a ring made elsewhere (the network side
    /// keeps its sender); returns the speaker's index.
    pub fn add_receiver(&mut self, packets: PacketReceiver) -> Result<usize, CodecError> {
        self.speakers.push(Speaker {
            packets,
            jitter: JitterBuffer::new(self.jitter)?,
            frame: [0.0; FRAME_SAMPLES],
        });
        Ok(self.speakers.len() - 1)
    }

    /// Removes a speaker (indices after it shift down).
    pub fn remove_speaker(&mut self, index: usize) {
        if index < self.speakers.len() {
            self.speakers.remove(index);
        }
    }

    /// The next `out.len()` samples of every speaker (at most a frame;
    /// playout pulls [`PULL_SAMPLES`](crate::PULL_SAMPLES) every 5 ms),
    /// mixed into `out`; returns the total level (0–100). Each speaker's
    /// level is in [`ReceivePath::levels`].
    pub fn pull(&mut self, now: Instant, out: &mut [f32]) -> Result<u8, CodecError> {
        let len = out.len().min(FRAME_SAMPLES);
        for speaker in &mut self.speakers {
            while let Some(packet) = speaker.packets.consumer.try_pop() {
                speaker.jitter.insert(
                    packet.arrived,
                    packet.seq,
                    packet.timestamp,
                    packet.voice,
                    packet.payload(),
                );
            }
            speaker.jitter.pull(now, &mut speaker.frame[..len])?;
        }
        Ok(self.mixer.mix(
            self.speakers.iter().map(|speaker| &speaker.frame[..len]),
            &mut out[..len],
        ))
    }

    /// Each speaker's level in the last pull, in speaker order.
    pub fn levels(&self) -> &[u8] {
        self.mixer.levels()
    }

    /// A speaker's jitter statistics.
    pub fn stats(&self, index: usize) -> Option<JitterStats> {
        self.speakers
            .get(index)
            .map(|speaker| speaker.jitter.stats())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Of one second of voice-like capture in `duration` frames: packets
    /// with FEC, with DRED, of how many.
    fn protections_sent(
        send: &mut SendPath,
        decoder: &mut crate::Decoder,
        duration: FrameDuration,
        second: usize,
    ) -> (usize, usize, usize) {
        send.set_frame_duration(duration);
        let (mut fec, mut dred, mut packets) = (0, 0, 0);
        let voice: Vec<f32> = (second * 48_000..(second + 1) * 48_000)
            .map(crate::test_signal::voice_sample)
            .collect();
        for chunk in voice.chunks(480) {
            send.push_capture(chunk);
            while let Some(captured) = send.next_frame().unwrap() {
                if let Some(frame) = captured.frame() {
                    packets += 1;
                    fec += usize::from(crate::has_fec(frame.payload));
                    dred += usize::from(decoder.parse_dred(frame.payload).unwrap() > 0);
                }
            }
        }
        (fec, dred, packets)
    }

    #[test]
    fn ten_ms_frames_keep_fec_when_dred_is_asked() {
        let mut send = SendPath::new(48_000, 1, EncoderConfig::default()).unwrap();
        send.set_measured_loss(10.0).unwrap();
        send.set_protection(Protection::Dred).unwrap();
        let mut decoder = crate::Decoder::new().unwrap();
        let (fec, dred, packets) =
            protections_sent(&mut send, &mut decoder, FrameDuration::Ms20, 0);
        assert!(
            packets == 50 && fec == 0 && dred > 40,
            "20 ms: FEC {fec}, DRED {dred} of {packets}"
        );
        // libopus would put no DRED in these: FEC, or nothing protects.
        let (fec, dred, packets) =
            protections_sent(&mut send, &mut decoder, FrameDuration::Ms10, 1);
        assert!(
            packets == 100 && fec > 50 && dred == 0,
            "10 ms: FEC {fec}, DRED {dred} of {packets}"
        );
        let (fec, dred, packets) =
            protections_sent(&mut send, &mut decoder, FrameDuration::Ms20, 2);
        assert!(
            fec == 0 && dred > 40,
            "20 ms again: FEC {fec}, DRED {dred} of {packets}"
        );
    }

    #[test]
    fn a_44k1_stereo_capture_reaches_a_remote_mix() {
        let mut send = SendPath::new(44_100, 2, EncoderConfig::default()).unwrap();
        let mut receive = ReceivePath::new();
        let (mut network, _) = receive.add_speaker().unwrap();
        let start = Instant::now();
        let tone: Vec<f32> = (0..44_100 * 2)
            .flat_map(|n| {
                std::iter::repeat_n(
                    0.3 * (std::f32::consts::TAU * 300.0 * n as f32 / 44_100.0).sin(),
                    2,
                )
            })
            .collect();
        let mut out = [0.0; FRAME_SAMPLES];
        let mut loud_frames = 0;
        let mut sent = 0;
        for (index, chunk) in tone.chunks(882).enumerate() {
            send.push_capture(chunk);
            let now = start + Duration::from_millis(10 * index as u64);
            while let Some(captured) = send.next_frame().unwrap() {
                if let Some(frame) = captured.frame() {
                    network.send(
                        MediaPacket::new(
                            now,
                            frame.seq,
                            frame.timestamp,
                            frame.voice,
                            frame.payload,
                        )
                        .unwrap(),
                    );
                    sent += 1;
                }
            }
            if index % 2 == 1 {
                let total = receive.pull(now, &mut out).unwrap();
                if total > 50 {
                    loud_frames += 1;
                }
            }
        }
        assert!(sent > 90, "{sent} frames sent for 2 s");
        assert!(loud_frames > 80, "{loud_frames} loud frames played");
        assert!(send.volume() > 50);
        assert_eq!(receive.levels().len(), 1);
        assert_eq!(receive.stats(0).unwrap().concealed_samples, 0);
    }

    #[test]
    fn muted_sends_nothing_and_reads_zero() {
        let mut send = SendPath::new(48_000, 1, EncoderConfig::default()).unwrap();
        send.set_muted(true);
        send.push_capture(&[0.5; 4_800]);
        let mut frames = 0;
        while let Some(captured) = send.next_frame().unwrap() {
            assert!(captured.frame().is_none());
            frames += 1;
        }
        assert_eq!(frames, 5);
        assert_eq!(send.volume(), 0);
    }

    #[test]
    fn a_full_packet_ring_drops_and_counts() {
        let (mut sender, _receiver) = packet_ring(2);
        let now = Instant::now();
        for seq in 0..5 {
            sender.send(MediaPacket::new(now, seq, 0, true, &[1, 2, 3]).unwrap());
        }
        assert_eq!(sender.dropped(), 3);
        assert!(MediaPacket::new(now, 0, 0, true, &[0; MAX_PACKET + 1]).is_none());
    }
}
