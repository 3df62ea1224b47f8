//! The header of audio datagrams (QUIC DATAGRAM frames).
//!
//! ```text
//! byte 0      version (high nibble) | kind (low nibble)
//! varint      flow id (LEB128, 1–5 bytes, as postcard encodes a u32)
//! 4 bytes     sequence, big-endian
//! 4 bytes     timestamp in 48 kHz ticks, big-endian
//! 1 byte      voice activity (bit 7) | level in -dBov, 0–127 (bits 0–6), as RFC 6464
//! rest        payload (an Opus packet for audio, a [`LossReport`] or a
//!             [`ReceiverFeatures`] byte, a [`PathQuality`])
//! ```
//!
//! Encoding and decoding never allocate: the audio path calls them per frame.

use crate::FlowId;

/// The header layout version this crate writes and reads.
pub const DATAGRAM_VERSION: u8 = 1;

/// The longest header: 1 + 5 + 4 + 4 + 1 bytes.
pub const MAX_HEADER_LEN: usize = 15;

/// What a datagram carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DatagramKind {
    /// An encoded audio frame.
    Audio = 0,
    /// A latency or reachability probe.
    Probe = 1,
    /// Keeps a media path open while nothing is sent (e.g. while muted).
    KeepAlive = 2,
    /// A receiver's loss report about one sender: the header's flow id
    /// names the sender the report is about, the payload is one byte, the
    /// share of that sender's packets lost since the previous report in
    /// percent (0–100). The server delivers it to that sender only,
    /// restamped with the reporter's flow ([`LossReport`]).
    Report = 3,
    /// A receiver's word about what it plays of one sender's audio: the
    /// flow id names the sender, the payload is one byte of flags
    /// ([`ReceiverFeatures`]). Delivered as a loss report is.
    Features = 4,
    /// A member's word about its own network ([`PathQuality`]), about once
    /// a second: relayed to every other member of the call, as audio is,
    /// with the sender's round-trip time and transport written in by the
    /// server, which measures them.
    Quality = 5,
}

/// The payload of a [`DatagramKind::Quality`] datagram, 7 bytes: what a
/// member knows of its own network. Each figure may be unknown (all bits
/// set on the wire).
///
/// ```text
/// 2 bytes  round-trip time to the server, ms, big-endian (written by the server)
/// 1 byte   uplink loss, %: of the sender's audio on its way to the server
///          (written by the server once it has counted 10 packets since the
///          sender's previous word; until then the sender's own estimate)
/// 1 byte   downlink loss, %: of what the server sends the sender (written by
///          the server from its transport's lost packets once 10 were sent since
///          the sender's previous word; until then the sender's own estimate)
/// 2 bytes  jitter, ms, big-endian: of the others' audio at the sender (the worst)
/// 1 byte   transport: 0 QUIC, 1 the fallback (written by the server)
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PathQuality {
    /// Round trip between the member and the server, in milliseconds.
    pub rtt_ms: Option<u16>,
    /// Share of the member's audio lost on its way to the server, in
    /// percent.
    pub uplink_loss_percent: Option<u8>,
    /// Share of the others' audio lost on its way from the server to the
    /// member, in percent.
    pub downlink_loss_percent: Option<u8>,
    /// Inter-arrival jitter of the others' audio at the member, in ms.
    pub jitter_ms: Option<u16>,
    /// How the member is connected.
    pub transport: Option<PathTransport>,
}

/// How a member reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathTransport {
    /// QUIC over UDP.
    Quic,
    /// The fallback: WebSocket over TLS over TCP.
    Fallback,
}

impl PathQuality {
    /// Bytes of the payload.
    pub const LEN: usize = 7;

    /// The payload bytes.
    pub fn to_payload(self) -> [u8; Self::LEN] {
        let [r0, r1] = self.rtt_ms.unwrap_or(u16::MAX).to_be_bytes();
        let [j0, j1] = self.jitter_ms.unwrap_or(u16::MAX).to_be_bytes();
        let percent = |loss: Option<u8>| loss.map_or(u8::MAX, |loss| loss.min(100));
        [
            r0,
            r1,
            percent(self.uplink_loss_percent),
            percent(self.downlink_loss_percent),
            j0,
            j1,
            transport_byte(self.transport),
        ]
    }

    /// Reads a payload; `None` unless it is 7 bytes with losses of at most
    /// 100 % (or unknown) and a known transport (or unknown).
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        let [r0, r1, up, down, j0, j1, transport] = *payload else {
            return None;
        };
        let percent = |byte: u8| match byte {
            0..=100 => Some(Some(byte)),
            u8::MAX => Some(None),
            _ => None,
        };
        let known = |value: u16| (value != u16::MAX).then_some(value);
        Some(Self {
            rtt_ms: known(u16::from_be_bytes([r0, r1])),
            uplink_loss_percent: percent(up)?,
            downlink_loss_percent: percent(down)?,
            jitter_ms: known(u16::from_be_bytes([j0, j1])),
            transport: match transport {
                0 => Some(PathTransport::Quic),
                1 => Some(PathTransport::Fallback),
                u8::MAX => None,
                _ => return None,
            },
        })
    }

    /// Writes the server's measurements into a payload in place: the
    /// round trip and the loss each way (each if measured, `measured`'s
    /// transport left as it is) and the transport. `false`, with nothing
    /// written, when `payload` is not a valid one.
    pub fn stamp(payload: &mut [u8], measured: Self, transport: PathTransport) -> bool {
        if Self::from_payload(payload).is_none() {
            return false;
        }
        if let Some(rtt) = measured.rtt_ms {
            payload[..2].copy_from_slice(&rtt.to_be_bytes());
        }
        if let Some(loss) = measured.uplink_loss_percent {
            payload[2] = loss.min(100);
        }
        if let Some(loss) = measured.downlink_loss_percent {
            payload[3] = loss.min(100);
        }
        payload[6] = transport_byte(Some(transport));
        true
    }
}

fn transport_byte(transport: Option<PathTransport>) -> u8 {
    match transport {
        Some(PathTransport::Quic) => 0,
        Some(PathTransport::Fallback) => 1,
        None => u8::MAX,
    }
}

/// The payload of a [`DatagramKind::Features`] datagram: one byte of
/// flags, bits this crate does not know kept (and meaning nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiverFeatures(pub u8);

impl ReceiverFeatures {
    /// Bit 0: plays Opus packets of any duration from 2.5 to 20 ms, so the
    /// sender may send 10 ms frames (the low-latency profile).
    pub const SHORT_FRAMES: u8 = 0b1;

    /// Bit 1: recovers lost frames from Opus's Deep REDundancy (DRED), so
    /// the sender may protect its audio with DRED instead of in-band FEC.
    pub const DECODES_DRED: u8 = 0b10;

    /// Bit 2: its losses of the sender's audio come in bursts (which FEC
    /// recovers only at their last packet): it asks for DRED. Meaningful
    /// only beside bit 1.
    pub const WANTS_DRED: u8 = 0b100;

    /// What every SDK of this version plays; the DRED bits depend on its
    /// decoder and its losses ([`ReceiverFeatures::with`]).
    pub const fn ours() -> Self {
        Self(Self::SHORT_FRAMES)
    }

    /// These features with `flag` set (`on`) or cleared.
    #[must_use]
    pub const fn with(self, flag: u8, on: bool) -> Self {
        if on {
            Self(self.0 | flag)
        } else {
            Self(self.0 & !flag)
        }
    }

    /// Whether the receiver plays 10 ms frames.
    pub const fn plays_short_frames(self) -> bool {
        self.0 & Self::SHORT_FRAMES != 0
    }

    /// Whether the receiver recovers lost frames from DRED.
    pub const fn decodes_dred(self) -> bool {
        self.0 & Self::DECODES_DRED != 0
    }

    /// Whether the receiver decodes DRED and asks for it.
    pub const fn wants_dred(self) -> bool {
        self.decodes_dred() && self.0 & Self::WANTS_DRED != 0
    }

    /// The payload bytes.
    pub const fn to_payload(self) -> [u8; 1] {
        [self.0]
    }

    /// Reads a payload; `None` unless it is exactly one byte.
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        match payload {
            [flags] => Some(Self(*flags)),
            _ => None,
        }
    }
}

/// The payload of a [`DatagramKind::Report`] datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LossReport {
    /// Packets lost since the previous report, in percent (0–100).
    pub loss_percent: u8,
}

impl LossReport {
    /// The payload bytes.
    pub fn to_payload(self) -> [u8; 1] {
        [self.loss_percent.min(100)]
    }

    /// Reads a payload; `None` unless it is one byte of at most 100.
    pub fn from_payload(payload: &[u8]) -> Option<Self> {
        match payload {
            [percent] if *percent <= 100 => Some(Self {
                loss_percent: *percent,
            }),
            _ => None,
        }
    }
}

impl DatagramKind {
    fn from_nibble(nibble: u8) -> Option<Self> {
        match nibble {
            0 => Some(Self::Audio),
            1 => Some(Self::Probe),
            2 => Some(Self::KeepAlive),
            3 => Some(Self::Report),
            4 => Some(Self::Features),
            5 => Some(Self::Quality),
            _ => None,
        }
    }
}

/// Why bytes are not a valid datagram, or a header does not fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// Fewer bytes than a header needs.
    #[error("datagram truncated: {len} bytes")]
    Truncated {
        /// Bytes present.
        len: usize,
    },
    /// A layout version this crate does not read.
    #[error("unsupported datagram version {0}")]
    UnsupportedVersion(u8),
    /// A kind this crate does not know.
    #[error("unknown datagram kind {0}")]
    UnknownKind(u8),
    /// The flow id varint is longer than 5 bytes or exceeds `u32`.
    #[error("invalid flow id varint")]
    InvalidFlowId,
    /// The level is above 127 -dBov.
    #[error("level {0} -dBov is out of range (0-127)")]
    InvalidLevel(u8),
    /// The output buffer is too small for header and payload.
    #[error("buffer of {capacity} bytes is too small; {needed} needed")]
    BufferTooSmall {
        /// Bytes needed.
        needed: usize,
        /// Bytes available.
        capacity: usize,
    },
}

/// The fields in front of every media datagram's payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MediaHeader {
    /// What follows.
    pub kind: DatagramKind,
    /// Whose audio: assigned over signaling; the server overwrites it with the
    /// sender's own flow before relaying.
    pub flow_id: FlowId,
    /// Per-flow packet counter, for loss and reorder detection.
    pub sequence: u32,
    /// Capture time of the first sample, in 48 kHz ticks.
    pub timestamp: u32,
    /// Whether the frame holds voice (RFC 6464's V bit).
    pub voice_activity: bool,
    /// Frame level in -dBov, 0 (loudest) to 127 (silence).
    pub level_dbov: u8,
}

impl MediaHeader {
    /// The header of a receiver's word about one sender — a loss report or
    /// its features (`kind`) about `flow`: sequence and timestamp 0, no
    /// voice, level 127, as docs/protocol.md says.
    pub const fn about(kind: DatagramKind, flow: FlowId) -> Self {
        Self {
            kind,
            flow_id: flow,
            sequence: 0,
            timestamp: 0,
            voice_activity: false,
            level_dbov: 127,
        }
    }

    /// Bytes this header takes on the wire.
    pub fn encoded_len(&self) -> usize {
        1 + varint_len(self.flow_id.0) + 4 + 4 + 1
    }

    /// Writes the header then `payload` into `out`; returns the bytes written.
    pub fn encode(&self, payload: &[u8], out: &mut [u8]) -> Result<usize, DatagramError> {
        if self.level_dbov > 127 {
            return Err(DatagramError::InvalidLevel(self.level_dbov));
        }
        let header_len = self.encoded_len();
        let needed = header_len + payload.len();
        let Some(out) = out.get_mut(..needed) else {
            return Err(DatagramError::BufferTooSmall {
                needed,
                capacity: out.len(),
            });
        };
        out[0] = (DATAGRAM_VERSION << 4) | self.kind as u8;
        let mut at = 1 + write_varint(self.flow_id.0, &mut out[1..]);
        out[at..at + 4].copy_from_slice(&self.sequence.to_be_bytes());
        at += 4;
        out[at..at + 4].copy_from_slice(&self.timestamp.to_be_bytes());
        at += 4;
        out[at] = (u8::from(self.voice_activity) << 7) | self.level_dbov;
        at += 1;
        out[at..].copy_from_slice(payload);
        Ok(needed)
    }

    /// Overwrites the flow id of the encoded media datagram `datagram` in
    /// place, when `flow` takes as many bytes as the flow id there (the
    /// relay's stamp without a copy); `false`, with nothing written, when it
    /// does not, or when `datagram` is no media datagram.
    pub fn restamp_flow(datagram: &mut [u8], flow: FlowId) -> bool {
        let Ok((_, payload)) = Self::decode(datagram) else {
            return false;
        };
        // Kind byte, flow id, sequence, timestamp, level, payload.
        let flow_len = datagram.len() - payload.len() - 10;
        if varint_len(flow.0) != flow_len {
            return false;
        }
        write_varint(flow.0, &mut datagram[1..]);
        true
    }

    /// Reads a header; returns it with the payload behind it.
    pub fn decode(datagram: &[u8]) -> Result<(Self, &[u8]), DatagramError> {
        let truncated = DatagramError::Truncated {
            len: datagram.len(),
        };
        let (&first, rest) = datagram.split_first().ok_or(truncated)?;
        let version = first >> 4;
        if version != DATAGRAM_VERSION {
            return Err(DatagramError::UnsupportedVersion(version));
        }
        let kind = DatagramKind::from_nibble(first & 0x0f)
            .ok_or(DatagramError::UnknownKind(first & 0x0f))?;
        let (flow_id, rest) = read_varint(rest).ok_or_else(|| {
            if rest.len() < 5 && rest.iter().all(|byte| byte & 0x80 != 0) {
                truncated
            } else {
                DatagramError::InvalidFlowId
            }
        })?;
        let (fixed, payload) = rest.split_first_chunk::<9>().ok_or(truncated)?;
        let [s0, s1, s2, s3, t0, t1, t2, t3, level] = *fixed;
        Ok((
            Self {
                kind,
                flow_id: FlowId(flow_id),
                sequence: u32::from_be_bytes([s0, s1, s2, s3]),
                timestamp: u32::from_be_bytes([t0, t1, t2, t3]),
                voice_activity: level & 0x80 != 0,
                level_dbov: level & 0x7f,
            },
            payload,
        ))
    }
}

fn varint_len(value: u32) -> usize {
    match value {
        0..0x80 => 1,
        0x80..0x4000 => 2,
        0x4000..0x20_0000 => 3,
        0x20_0000..0x1000_0000 => 4,
        _ => 5,
    }
}

/// Writes `value` as LEB128; `out` must hold `varint_len(value)` bytes.
fn write_varint(mut value: u32, out: &mut [u8]) -> usize {
    let mut written = 0;
    loop {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out[written] = low;
            return written + 1;
        }
        out[written] = low | 0x80;
        written += 1;
    }
}

/// Reads a LEB128 `u32`; `None` if it is unterminated, longer than 5 bytes or
/// overflows.
fn read_varint(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value: u32 = 0;
    for (index, &byte) in bytes.iter().enumerate().take(5) {
        let bits = u32::from(byte & 0x7f);
        if index == 4 && bits > 0x0f {
            return None;
        }
        value |= bits << (7 * index);
        if byte & 0x80 == 0 {
            return Some((value, &bytes[index + 1..]));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(flow: u32) -> MediaHeader {
        MediaHeader {
            kind: DatagramKind::Audio,
            flow_id: FlowId(flow),
            sequence: 0xdead_beef,
            timestamp: 960 * 3,
            voice_activity: true,
            level_dbov: 42,
        }
    }

    #[test]
    fn round_trips_every_varint_width() {
        let payload = [1, 2, 3, 4, 5];
        for flow in [
            0,
            0x7f,
            0x80,
            0x3fff,
            0x4000,
            0x1f_ffff,
            0x20_0000,
            u32::MAX,
        ] {
            let mut buf = [0; 64];
            let len = header(flow).encode(&payload, &mut buf).unwrap();
            assert_eq!(len, header(flow).encoded_len() + payload.len());
            let (decoded, rest) = MediaHeader::decode(&buf[..len]).unwrap();
            assert_eq!(decoded, header(flow));
            assert_eq!(rest, payload);
            // The varint is the one postcard writes for a u32.
            let postcard_varint = postcard::to_allocvec(&flow).unwrap();
            assert_eq!(&buf[1..1 + postcard_varint.len()], postcard_varint);
        }
    }

    #[test]
    fn documented_layout() {
        let mut buf = [0; MAX_HEADER_LEN];
        let len = header(300).encode(&[], &mut buf).unwrap();
        assert_eq!(
            &buf[..len],
            [
                0x10,
                0xac,
                0x02,
                0xde,
                0xad,
                0xbe,
                0xef,
                0,
                0,
                0x0b,
                0x40,
                0x80 | 42
            ]
        );
    }

    /// docs/protocol.md's example of a quality datagram's payload.
    #[test]
    fn path_quality_layout_and_the_servers_stamp() {
        let quality = PathQuality {
            rtt_ms: Some(48),
            uplink_loss_percent: Some(3),
            downlink_loss_percent: None,
            jitter_ms: Some(12),
            transport: None,
        };
        let mut payload = quality.to_payload();
        assert_eq!(payload, [0x00, 0x30, 0x03, 0xff, 0x00, 0x0c, 0xff]);
        assert_eq!(PathQuality::from_payload(&payload), Some(quality));
        let server = PathQuality {
            rtt_ms: Some(300),
            uplink_loss_percent: Some(7),
            downlink_loss_percent: Some(2),
            ..PathQuality::default()
        };
        assert!(PathQuality::stamp(
            &mut payload,
            server,
            PathTransport::Fallback
        ));
        assert_eq!(payload, [0x01, 0x2c, 0x07, 0x02, 0x00, 0x0c, 0x01]);
        assert!(PathQuality::stamp(
            &mut payload,
            PathQuality::default(),
            PathTransport::Quic
        ));
        assert_eq!(
            PathQuality::from_payload(&payload).map(|stamped| (stamped.rtt_ms, stamped.transport)),
            Some((Some(300), Some(PathTransport::Quic)))
        );
        assert_eq!(PathQuality::from_payload(&payload[..6]), None);
        assert_eq!(PathQuality::from_payload(&[0, 0, 101, 0, 0, 0, 0]), None);
        assert_eq!(PathQuality::from_payload(&[0, 0, 0, 0, 0, 0, 2]), None);
        let mut bad = [0, 0, 101, 0, 0, 0, 0];
        assert!(!PathQuality::stamp(
            &mut bad,
            PathQuality::default(),
            PathTransport::Quic
        ));
        assert_eq!(bad, [0, 0, 101, 0, 0, 0, 0], "nothing written");
    }

    #[test]
    fn receiver_features_are_one_byte_of_flags() {
        assert!(ReceiverFeatures::ours().plays_short_frames());
        assert!(!ReceiverFeatures(0b10).plays_short_frames());
        let dred = ReceiverFeatures::ours().with(ReceiverFeatures::DECODES_DRED, true);
        assert!(dred.decodes_dred() && !dred.wants_dred() && dred.plays_short_frames());
        let asking = dred.with(ReceiverFeatures::WANTS_DRED, true);
        assert_eq!(asking, ReceiverFeatures(0b111));
        assert!(asking.wants_dred());
        assert!(
            !ReceiverFeatures(0b101).wants_dred(),
            "asking without decoding means nothing"
        );
        assert_eq!(
            asking.with(ReceiverFeatures::DECODES_DRED, false),
            ReceiverFeatures(0b101)
        );
        assert_eq!(
            ReceiverFeatures::from_payload(&[0xff]),
            Some(ReceiverFeatures(0xff))
        );
        assert_eq!(ReceiverFeatures::from_payload(&[]), None);
        assert_eq!(ReceiverFeatures::from_payload(&[1, 0]), None);
        // The example in docs/protocol.md: flow 5's receiver plays 10 ms
        // frames.
        let mut buf = [0; MAX_HEADER_LEN + 1];
        let len = MediaHeader::about(DatagramKind::Features, FlowId(5))
            .encode(&ReceiverFeatures::ours().to_payload(), &mut buf)
            .unwrap();
        assert_eq!(
            &buf[..len],
            [0x14, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0x01]
        );
        let (decoded, payload) = MediaHeader::decode(&buf[..len]).unwrap();
        assert_eq!(decoded.kind, DatagramKind::Features);
        assert_eq!(
            ReceiverFeatures::from_payload(payload),
            Some(ReceiverFeatures::ours())
        );
        // And its second example: it also decodes DRED and asks for it.
        let asking = ReceiverFeatures::ours()
            .with(ReceiverFeatures::DECODES_DRED, true)
            .with(ReceiverFeatures::WANTS_DRED, true);
        let len = MediaHeader::about(DatagramKind::Features, FlowId(5))
            .encode(&asking.to_payload(), &mut buf)
            .unwrap();
        assert_eq!(
            &buf[..len],
            [0x14, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0x07]
        );
    }

    #[test]
    fn loss_reports_are_one_byte_of_at_most_100() {
        let report = LossReport { loss_percent: 12 };
        assert_eq!(report.to_payload(), [12]);
        assert_eq!(LossReport::from_payload(&[12]), Some(report));
        assert_eq!(LossReport::from_payload(&[101]), None);
        assert_eq!(LossReport::from_payload(&[]), None);
        assert_eq!(LossReport::from_payload(&[1, 2]), None);
        let mut buf = [0; MAX_HEADER_LEN + 1];
        let header = MediaHeader {
            kind: DatagramKind::Report,
            ..header(7)
        };
        let len = header.encode(&report.to_payload(), &mut buf).unwrap();
        assert_eq!(buf[0], 0x13);
        let (decoded, payload) = MediaHeader::decode(&buf[..len]).unwrap();
        assert_eq!(decoded.kind, DatagramKind::Report);
        assert_eq!(LossReport::from_payload(payload), Some(report));
        // The example in docs/protocol.md.
        let len = MediaHeader::about(DatagramKind::Report, FlowId(5))
            .encode(&LossReport { loss_percent: 12 }.to_payload(), &mut buf)
            .unwrap();
        assert_eq!(
            &buf[..len],
            [0x13, 0x05, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f, 0x0c]
        );
    }

    #[test]
    fn bad_input_is_an_error() {
        assert_eq!(
            MediaHeader::decode(&[]),
            Err(DatagramError::Truncated { len: 0 })
        );
        assert_eq!(
            MediaHeader::decode(&[0x20, 0]),
            Err(DatagramError::UnsupportedVersion(2))
        );
        assert_eq!(
            MediaHeader::decode(&[0x1f, 0]),
            Err(DatagramError::UnknownKind(15))
        );
        assert_eq!(
            MediaHeader::decode(&[
                0x10, 0xff, 0xff, 0xff, 0xff, 0x7f, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ]),
            Err(DatagramError::InvalidFlowId)
        );
        assert_eq!(
            MediaHeader::decode(&[0x10, 0x80]),
            Err(DatagramError::Truncated { len: 2 })
        );
        assert_eq!(
            MediaHeader::decode(&[0x10, 1, 0, 0]),
            Err(DatagramError::Truncated { len: 4 })
        );
        let mut small = [0; 8];
        assert_eq!(
            header(1).encode(&[0; 4], &mut small),
            Err(DatagramError::BufferTooSmall {
                needed: 15,
                capacity: 8
            })
        );
        let mut buf = [0; 32];
        let loud = MediaHeader {
            level_dbov: 128,
            ..header(1)
        };
        assert_eq!(
            loud.encode(&[], &mut buf),
            Err(DatagramError::InvalidLevel(128))
        );
    }

    #[test]
    fn restamping_in_place_keeps_everything_else() {
        let header = MediaHeader {
            kind: DatagramKind::Audio,
            flow_id: FlowId(5),
            sequence: 77,
            timestamp: 960,
            voice_activity: true,
            level_dbov: 30,
        };
        let mut datagram = [0_u8; MAX_HEADER_LEN + 3];
        let len = header.encode(b"opu", &mut datagram).unwrap();
        let datagram = &mut datagram[..len];
        assert!(MediaHeader::restamp_flow(datagram, FlowId(9)));
        let (stamped, payload) = MediaHeader::decode(datagram).unwrap();
        assert_eq!(
            stamped,
            MediaHeader {
                flow_id: FlowId(9),
                ..header
            }
        );
        assert_eq!(payload, b"opu");
        // A flow id of another length needs a new datagram: nothing written.
        assert!(!MediaHeader::restamp_flow(datagram, FlowId(300)));
        assert_eq!(MediaHeader::decode(datagram).unwrap().0.flow_id, FlowId(9));
        assert!(
            !MediaHeader::restamp_flow(&mut [0xff, 1, 2], FlowId(1)),
            "not a datagram"
        );
    }
}
