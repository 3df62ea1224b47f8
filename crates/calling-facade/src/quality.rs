//! Network quality, sans-IO: what each member's path is like, from the
//! figures the SDK measures (loss, jitter) and the server measures (round
//! trip), as a level like the original's successor reports
//! ([`NetworkQuality`]). The thresholds are written down once, here and in
//! docs/protocol.md.

use std::time::{Duration, Instant};

use audio_pipeline::{JitterStats, VoiceStats};
use calling_api::{NetworkQuality, UserId};
use signaling_proto::{PathQuality, PathTransport};

/// A figure's bounds for each level: under the first it is excellent,
/// under the second good, then poor, then bad; at or over the last, very
/// bad. A path's level is its worst figure's.
const LOSS_PERCENT: [u8; 4] = [1, 3, 8, 15];
const RTT_MS: [u16; 4] = [100, 200, 350, 600];
const JITTER_MS: [u16; 4] = [20, 40, 80, 150];

/// Nothing from a member for this long (no audio, report or word): its
/// network counts as down.
pub(crate) const SILENT_FOR_DOWN: Duration = Duration::from_secs(3);

/// The level of one figure against its bounds.
fn level_of<T: PartialOrd + Copy>(value: T, bounds: [T; 4]) -> NetworkQuality {
    let levels = [
        NetworkQuality::Excellent,
        NetworkQuality::Good,
        NetworkQuality::Poor,
        NetworkQuality::Bad,
    ];
    bounds
        .iter()
        .zip(levels)
        .find(|(bound, _)| value < **bound)
        .map_or(NetworkQuality::VeryBad, |(_, level)| level)
}

/// A path's level: its worst known figure's; unknown with no figure.
pub(crate) fn classify(path: &PathQuality) -> NetworkQuality {
    let loss = path
        .uplink_loss_percent
        .into_iter()
        .chain(path.downlink_loss_percent)
        .max()
        .map(|loss| level_of(loss, LOSS_PERCENT));
    let rtt = path.rtt_ms.map(|rtt| level_of(rtt, RTT_MS));
    let jitter = path.jitter_ms.map(|jitter| level_of(jitter, JITTER_MS));
    [loss, rtt, jitter]
        .into_iter()
        .flatten()
        .max_by_key(|level| *level as u8)
        .unwrap_or(NetworkQuality::Unknown)
}

/// RFC 3550's inter-arrival jitter of one sender's packets (section
/// 6.4.1): the mean deviation of the difference in transit time between
/// consecutive packets, smoothed over about 16 packets.
#[derive(Debug, Default)]
pub(crate) struct InterarrivalJitter {
    /// The previous packet's arrival and RTP-style timestamp (48 kHz).
    previous: Option<(Instant, u32)>,
    jitter_ticks: f64,
}

impl InterarrivalJitter {
    /// A packet stamped `timestamp` (48 kHz ticks) arrived at `now`.
    pub(crate) fn on_packet(&mut self, now: Instant, timestamp: u32) {
        if let Some((arrived, stamped)) = self.previous
            && now >= arrived
        {
            // Packets out of order are measured too, as RFC 3550 does.
            let arrival_ticks = (now - arrived).as_secs_f64() * 48_000.0;
            let sent_ticks = f64::from(timestamp.wrapping_sub(stamped) as i32);
            let deviation = (arrival_ticks - sent_ticks).abs();
            self.jitter_ticks += (deviation - self.jitter_ticks) / 16.0;
        }
        self.previous = Some((now, timestamp));
    }

    /// The jitter so far, in milliseconds.
    pub(crate) fn ms(&self) -> f64 {
        self.jitter_ticks / 48.0
    }
}

/// What one member said of its network, and when we last heard anything
/// from it (its audio, its reports, its word).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Heard {
    pub(crate) path: PathQuality,
    pub(crate) last_heard: Instant,
}

impl Heard {
    /// The member's level at `now`: down once nothing at all has come from
    /// it for [`SILENT_FOR_DOWN`]; while its audio comes, a word lost on
    /// the way leaves the last one standing.
    pub(crate) fn level(&self, now: Instant) -> NetworkQuality {
        if now.saturating_duration_since(self.last_heard) >= SILENT_FOR_DOWN {
            NetworkQuality::Down
        } else {
            classify(&self.path)
        }
    }
}

/// A bitrate measured between two readings of a byte count.
#[derive(Debug, Default)]
pub(crate) struct Bitrate {
    last: Option<(Instant, u64)>,
    kbps: Option<f64>,
}

impl Bitrate {
    /// Reads `bytes` at `now`: the rate since the last reading counts
    /// once the readings are half a second or more apart.
    pub(crate) fn read(&mut self, now: Instant, bytes: u64) {
        match self.last {
            Some((at, before))
                if now.saturating_duration_since(at) >= Duration::from_millis(500) =>
            {
                let seconds = (now - at).as_secs_f64();
                self.kbps = Some(bytes.saturating_sub(before) as f64 * 8.0 / 1_000.0 / seconds);
                self.last = Some((now, bytes));
            }
            Some(_) => {}
            None => self.last = Some((now, bytes)),
        }
    }

    /// The latest rate, in kbit/s.
    pub(crate) fn kbps(&self) -> Option<f64> {
        self.kbps
    }
}

/// How a member reaches the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MediaTransport {
    /// QUIC over UDP.
    Quic,
    /// The fallback: WebSocket over TLS over TCP (no round trip measured).
    Fallback,
}

impl From<PathTransport> for MediaTransport {
    fn from(transport: PathTransport) -> Self {
        match transport {
            PathTransport::Quic => Self::Quic,
            PathTransport::Fallback => Self::Fallback,
        }
    }
}

impl std::fmt::Display for MediaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Quic => "quic",
            Self::Fallback => "fallback",
        })
    }
}

/// The call's statistics ([`crate::TRTCCalling::call_stats`]): the local
/// user's, and each other member's.
#[derive(Debug, Clone, Default)]
pub struct CallStats {
    /// The local user.
    pub local: LocalStats,
    /// Each other member of the call, in the order of the call's members.
    pub remote: Vec<MemberStats>,
}

/// What the local user's side of the call is like.
#[derive(Debug, Clone, Default)]
pub struct LocalStats {
    /// Our network's level (down while reconnecting).
    pub quality: NetworkQuality,
    /// Our connection's round trip to the server, in ms (QUIC measures
    /// it; `None` over the fallback).
    pub rtt_ms: Option<u16>,
    /// Share of our audio the other members lose, in percent: the worst
    /// of their reports of the last 3 s.
    pub loss_sent_percent: Option<u8>,
    /// Share of the others' audio we lose, in percent: the worst of our
    /// latest reports.
    pub loss_received_percent: Option<u8>,
    /// The worst inter-arrival jitter of the others' audio, in ms.
    pub jitter_ms: Option<u16>,
    /// What we send, in kbit/s (Opus and headers).
    pub bitrate_kbps: Option<f64>,
    /// Our frames' length: 20 ms, or 10 with the low-latency profile.
    pub frame_ms: u8,
    /// How we reach the server.
    pub transport: Option<MediaTransport>,
    /// The echo canceller's figures, when the call runs it.
    pub voice: Option<VoiceStats>,
}

/// What one other member's side of the call is like.
#[derive(Debug, Clone)]
pub struct MemberStats {
    /// The member.
    pub user_id: UserId,
    /// Its network's level, from what its SDK says of it and the round trip
    /// the server measured ([`NetworkQuality::Unknown`] for an SDK that
    /// does not say).
    pub quality: NetworkQuality,
    /// Its round trip to the server, in ms, as the server measures it.
    pub rtt_ms: Option<u16>,
    /// Share of its audio the others lose, in percent (its word).
    pub uplink_loss_percent: Option<u8>,
    /// Share of the others' audio it loses, in percent (its word).
    pub downlink_loss_percent: Option<u8>,
    /// Share of its audio we lose, in percent (our latest report).
    pub loss_received_percent: Option<u8>,
    /// The inter-arrival jitter of its audio at us, in ms.
    pub jitter_ms: Option<f64>,
    /// Its audio as we receive it, in kbit/s.
    pub bitrate_kbps: Option<f64>,
    /// How it reaches the server (the server says).
    pub transport: Option<MediaTransport>,
    /// Its audio in our jitter buffer: delay, concealment, FEC and DRED
    /// recoveries, frame length. `None` until it has spoken.
    pub audio: Option<JitterStats>,
}

#[cfg(feature = "json")]
impl CallStats {
    /// The statistics as JSON, for the bindings (docs/bindings.md): the
    /// fields as named here, quality levels and transports as words,
    /// unknown figures `null`.
    pub fn to_json(&self) -> serde_json::Value {
        use serde_json::json;
        let local = &self.local;
        let remote: Vec<serde_json::Value> = self
            .remote
            .iter()
            .map(|member| {
                let audio = member.audio.map(|audio| {
                    json!({
                        "buffer_delay_ms": audio.current_delay_ms,
                        "target_delay_ms": audio.target_delay_ms,
                        "concealed_percent": 100.0 * audio.concealed_samples as f64
                            / audio.output_samples.max(1) as f64,
                        "fec_recovered": audio.fec_recovered,
                        "dred_recovered": audio.dred_recovered,
                        "late_packets": audio.late_packets,
                        "frame_ms": audio.packet_ms,
                    })
                });
                json!({
                    "user_id": member.user_id.as_str(),
                    "quality": member.quality.to_string(),
                    "rtt_ms": member.rtt_ms,
                    "uplink_loss_percent": member.uplink_loss_percent,
                    "downlink_loss_percent": member.downlink_loss_percent,
                    "loss_received_percent": member.loss_received_percent,
                    "jitter_ms": member.jitter_ms,
                    "bitrate_kbps": member.bitrate_kbps,
                    "transport": member.transport.map(|transport| transport.to_string()),
                    "audio": audio,
                })
            })
            .collect();
        let voice = local.voice.map(|voice| {
            json!({
                "echo_delay_ms": voice.echo_delay_ms,
                "echo_return_loss_db": voice.echo_return_loss_db,
                "echo_return_loss_enhancement_db": voice.echo_return_loss_enhancement_db,
            })
        });
        json!({
            "local": {
                "quality": local.quality.to_string(),
                "rtt_ms": local.rtt_ms,
                "loss_sent_percent": local.loss_sent_percent,
                "loss_received_percent": local.loss_received_percent,
                "jitter_ms": local.jitter_ms,
                "bitrate_kbps": local.bitrate_kbps,
                "frame_ms": local.frame_ms,
                "transport": local.transport.map(|transport| transport.to_string()),
                "voice": voice,
            },
            "remote": remote,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(loss: Option<u8>, rtt: Option<u16>, jitter: Option<u16>) -> PathQuality {
        PathQuality {
            rtt_ms: rtt,
            uplink_loss_percent: loss,
            downlink_loss_percent: None,
            jitter_ms: jitter,
            transport: None,
        }
    }

    #[test]
    fn the_worst_figure_decides_and_unknown_figures_do_not_count() {
        use NetworkQuality::*;
        assert_eq!(classify(&PathQuality::default()), Unknown);
        assert_eq!(classify(&path(Some(0), Some(30), Some(5))), Excellent);
        assert_eq!(classify(&path(Some(2), Some(30), Some(5))), Good);
        assert_eq!(classify(&path(Some(0), Some(250), None)), Poor);
        assert_eq!(classify(&path(Some(10), Some(30), Some(5))), Bad);
        assert_eq!(classify(&path(None, None, Some(150))), VeryBad);
        assert_eq!(classify(&path(Some(15), None, None)), VeryBad);
        // Either direction's loss counts.
        let downlink = PathQuality {
            downlink_loss_percent: Some(9),
            ..path(Some(0), Some(20), None)
        };
        assert_eq!(classify(&downlink), Bad);
    }

    #[test]
    fn jitter_is_rfc_3550s_on_a_virtual_clock() {
        let start = Instant::now();
        let mut steady = InterarrivalJitter::default();
        for packet in 0..100_u32 {
            steady.on_packet(
                start + Duration::from_millis(20 * u64::from(packet)),
                packet * 960,
            );
        }
        assert!(steady.ms() < 0.01, "{}", steady.ms());
        // Every other packet 10 ms late: each transit differs by 10 ms from
        // the one before, so the jitter converges on 10 ms.
        let mut alternating = InterarrivalJitter::default();
        for packet in 0..200_u32 {
            let late = if packet % 2 == 1 { 10 } else { 0 };
            let at = start + Duration::from_millis(20 * u64::from(packet) + late);
            alternating.on_packet(at, packet * 960);
        }
        assert!(
            (alternating.ms() - 10.0).abs() < 0.5,
            "{}",
            alternating.ms()
        );
    }

    #[test]
    fn a_member_silent_for_three_seconds_is_down() {
        let start = Instant::now();
        let heard = Heard {
            path: path(Some(0), Some(20), Some(2)),
            last_heard: start,
        };
        assert_eq!(
            heard.level(start + Duration::from_secs(2)),
            NetworkQuality::Excellent
        );
        assert_eq!(heard.level(start + SILENT_FOR_DOWN), NetworkQuality::Down);
    }
}
