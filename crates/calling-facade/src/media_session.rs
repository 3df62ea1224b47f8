//! A call's media policy, sans-IO: received datagrams (with `now`) become
//! packets for the remote speakers' jitter buffers, loss reports and our
//! receiver features go out, and what the other members say decides how we
//! send (frame length; in-band FEC or DRED) and what loss the encoder is
//! told. It never reads a clock, opens a device or touches a thread:
//! `media.rs` runs it on the session task and carries its decisions to the
//! audio threads.
//!
//! Loss feedback: we measure what we lose of each remote speaker
//! ([`LossMeter`]) and send each one a loss report about once a second;
//! reports about our own audio arrive the same way, and the worst since the
//! encoder was last told is what it is told next, so in-band FEC follows
//! the path. A report that arrives before our audio starts is kept.
//!
//! Low latency: with it on we send 10 ms frames instead of 20 ms — but only
//! once every other member of the call has said it plays them
//! ([`ReceiverFeatures`], sent to each member once a second with the loss
//! reports); a member who never says so keeps the call at 20 ms.
//!
//! DRED: a receiver whose decoder recovers from DRED says so in the same
//! features, and asks for it while its losses of that member's audio come
//! in bursts ([`LossMeter::bursty`]). We protect with DRED instead of
//! in-band FEC while every other member decodes it and at least half of
//! them ask, in 20 ms frames only (libopus sends no DRED in 10 ms ones);
//! otherwise, and with any member that never said a word, with FEC.

use std::collections::HashMap;
use std::time::Instant;

use audio_pipeline::{FrameDuration, LossMeter, MediaPacket, Protection};
use signaling_proto::datagram::MAX_HEADER_LEN;
use signaling_proto::{DatagramKind, FlowId, LossReport, MediaHeader, ReceiverFeatures};

/// Remote speakers one call can hear at once.
pub(crate) const MAX_SPEAKERS: usize = 15;

/// How we send our audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct HowToSend {
    pub(crate) frames: FrameDuration,
    pub(crate) protection: Protection,
}

/// What one received datagram asks of the glue.
#[derive(Debug)]
#[expect(
    clippy::large_enum_variant,
    reason = "the packet is moved straight into its ring: boxing it would allocate per packet"
)]
pub(crate) enum Received {
    /// Audio for the speaker in `slot`; `new_speaker`: heard for the first
    /// time, its jitter buffer is to be made.
    Audio {
        slot: usize,
        new_speaker: bool,
        packet: MediaPacket,
    },
    /// A member said what it plays of our audio: how to send may have
    /// changed. `first`: the first time it said so, and it should hear our
    /// features now (its first word may have come before our audio started,
    /// and so before it heard ours).
    Features { first: bool },
    /// Nothing to do (a report kept, a stray kind, or a datagram that does
    /// not decode).
    Nothing,
}

/// One remote speaker.
#[derive(Debug)]
struct Speaker {
    /// Its slot in the playout thread.
    slot: usize,
    /// What we lose of its packets, for our reports to it.
    loss: LossMeter,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct MediaSession {
    speakers: HashMap<FlowId, Speaker>,
    /// Whether this user wants 10 ms frames.
    low_latency: bool,
    /// Whether our decoders recover lost frames from DRED.
    decodes_dred: bool,
    /// The other members' flows, as last listed.
    members: Vec<FlowId>,
    /// What each of them said it plays of our audio.
    features: HashMap<FlowId, ReceiverFeatures>,
    /// The worst loss reported about our audio since the encoder was last
    /// told.
    worst_report: Option<u8>,
}

impl MediaSession {
    pub(crate) fn new(low_latency: bool, decodes_dred: bool) -> Self {
        Self {
            speakers: HashMap::new(),
            low_latency,
            decodes_dred,
            members: Vec::new(),
            features: HashMap::new(),
            worst_report: None,
        }
    }

    /// A datagram from the server, received at `now`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Received {
        let Ok((header, payload)) = MediaHeader::decode(datagram) else {
            return Received::Nothing;
        };
        match header.kind {
            DatagramKind::Audio => self.on_audio(now, &header, payload),
            DatagramKind::Report => {
                if let Some(report) = LossReport::from_payload(payload) {
                    let worst = self.worst_report.unwrap_or(0).max(report.loss_percent);
                    self.worst_report = Some(worst);
                }
                Received::Nothing
            }
            DatagramKind::Features => match ReceiverFeatures::from_payload(payload) {
                Some(features) => Received::Features {
                    first: self.features.insert(header.flow_id, features).is_none(),
                },
                None => Received::Nothing,
            },
            DatagramKind::Probe | DatagramKind::KeepAlive => Received::Nothing,
        }
    }

    fn on_audio(&mut self, now: Instant, header: &MediaHeader, payload: &[u8]) -> Received {
        let Some(packet) = MediaPacket::new(
            now,
            header.sequence,
            header.timestamp,
            header.voice_activity,
            payload,
        ) else {
            return Received::Nothing;
        };
        let heard = self.speakers.len();
        let new_speaker = !self.speakers.contains_key(&header.flow_id);
        if new_speaker && heard == MAX_SPEAKERS {
            return Received::Nothing;
        }
        let speaker = self
            .speakers
            .entry(header.flow_id)
            .or_insert_with(|| Speaker {
                slot: heard,
                loss: LossMeter::new(),
            });
        speaker.loss.on_packet(header.sequence);
        Received::Audio {
            slot: speaker.slot,
            new_speaker,
            packet,
        }
    }

    /// Wants 10 ms frames (`true`) or 20 ms ones.
    pub(crate) fn set_low_latency(&mut self, low_latency: bool) {
        self.low_latency = low_latency;
    }

    /// What we tell the other members, as datagrams to send (the server
    /// delivers each to the member it names): to each of `members` (the
    /// call's other members now), what we play of its audio; to each remote
    /// speaker with enough packets due since the last report, what we lose
    /// of it. Called about once a second.
    pub(crate) fn feedback(&mut self, members: &[FlowId]) -> Vec<bytes::Bytes> {
        if self.members != members {
            self.members = members.to_vec();
            self.features.retain(|flow, _| members.contains(flow));
        }
        let mut datagrams = Vec::new();
        let features =
            ReceiverFeatures::ours().with(ReceiverFeatures::DECODES_DRED, self.decodes_dred);
        for flow in members {
            let bursty = self
                .speakers
                .get(flow)
                .is_some_and(|speaker| speaker.loss.bursty());
            let features = features.with(ReceiverFeatures::WANTS_DRED, self.decodes_dred && bursty);
            datagrams.extend(feedback_datagram(
                DatagramKind::Features,
                *flow,
                &features.to_payload(),
            ));
        }
        for (flow, speaker) in &mut self.speakers {
            let Some(loss_percent) = speaker.loss.report() else {
                continue;
            };
            let report = LossReport { loss_percent }.to_payload();
            datagrams.extend(feedback_datagram(DatagramKind::Report, *flow, &report));
        }
        datagrams
    }

    /// The worst loss reported about our audio since the last call: what
    /// the encoder is to be told now (`None`: no news, keep the last).
    pub(crate) fn take_loss_report(&mut self) -> Option<u8> {
        self.worst_report.take()
    }

    /// 10 ms frames when wanted and every other member said it plays them;
    /// DRED in 20 ms frames when every other member decodes it and at least
    /// half ask; in-band FEC otherwise.
    pub(crate) fn how_to_send(&self) -> HowToSend {
        let everyone = |has: fn(ReceiverFeatures) -> bool| {
            !self.members.is_empty()
                && self.members.iter().all(|flow| {
                    self.features
                        .get(flow)
                        .is_some_and(|features| has(*features))
                })
        };
        let short = self.low_latency && everyone(ReceiverFeatures::plays_short_frames);
        let asking = self
            .members
            .iter()
            .filter(|flow| self.features.get(flow).is_some_and(|f| f.wants_dred()))
            .count();
        let dred = !short
            && everyone(ReceiverFeatures::decodes_dred)
            && asking > 0
            && 2 * asking >= self.members.len();
        HowToSend {
            frames: if short {
                FrameDuration::Ms10
            } else {
                FrameDuration::Ms20
            },
            protection: if dred {
                Protection::Dred
            } else {
                Protection::InBandFec
            },
        }
    }

    /// The playout slot of `flow`, once heard.
    pub(crate) fn slot_of(&self, flow: FlowId) -> Option<usize> {
        self.speakers.get(&flow).map(|speaker| speaker.slot)
    }

    /// Every remote flow heard, with its slot.
    pub(crate) fn heard(&self) -> impl Iterator<Item = (FlowId, usize)> + '_ {
        self.speakers
            .iter()
            .map(|(flow, speaker)| (*flow, speaker.slot))
    }
}

/// A loss report or our features, about `flow`.
fn feedback_datagram(kind: DatagramKind, flow: FlowId, payload: &[u8; 1]) -> Option<bytes::Bytes> {
    let mut datagram = [0; MAX_HEADER_LEN + 1];
    let len = MediaHeader::about(kind, flow)
        .encode(payload, &mut datagram)
        .ok()?;
    Some(bytes::Bytes::copy_from_slice(&datagram[..len]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const ALICE: FlowId = FlowId(1);
    const BOB: FlowId = FlowId(2);

    fn audio(flow: FlowId, sequence: u32) -> Vec<u8> {
        let header = MediaHeader {
            kind: DatagramKind::Audio,
            flow_id: flow,
            sequence,
            timestamp: sequence * 960,
            voice_activity: true,
            level_dbov: 30,
        };
        let mut datagram = vec![0; MAX_HEADER_LEN + 3];
        let len = header.encode(&[1, 2, 3], &mut datagram).unwrap();
        datagram.truncate(len);
        datagram
    }

    fn report(loss_percent: u8) -> Vec<u8> {
        // The server delivers a report about our audio stamped with the
        // reporter's flow.
        feedback_datagram(
            DatagramKind::Report,
            ALICE,
            &LossReport { loss_percent }.to_payload(),
        )
        .unwrap()
        .to_vec()
    }

    fn features(flow: FlowId, features: ReceiverFeatures) -> Vec<u8> {
        feedback_datagram(DatagramKind::Features, flow, &features.to_payload())
            .unwrap()
            .to_vec()
    }

    fn dred(asking: bool) -> ReceiverFeatures {
        ReceiverFeatures::ours()
            .with(ReceiverFeatures::DECODES_DRED, true)
            .with(ReceiverFeatures::WANTS_DRED, asking)
    }

    /// Decodes our feedback datagrams: (kind, flow, payload byte).
    fn decoded(datagrams: &[bytes::Bytes]) -> Vec<(DatagramKind, FlowId, u8)> {
        datagrams
            .iter()
            .map(|datagram| {
                let (header, payload) = MediaHeader::decode(datagram).unwrap();
                (header.kind, header.flow_id, payload[0])
            })
            .collect()
    }

    #[test]
    fn audio_becomes_packets_per_speaker_stamped_with_now() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, false);
        let later = start + Duration::from_millis(20);
        let received = session.handle_datagram(start, &audio(ALICE, 7));
        assert!(matches!(
            received,
            Received::Audio { slot: 0, new_speaker: true, packet } if packet.seq == 7 && packet.arrived == start
        ));
        assert!(matches!(
            session.handle_datagram(later, &audio(ALICE, 8)),
            Received::Audio { slot: 0, new_speaker: false, packet } if packet.arrived == later
        ));
        assert!(matches!(
            session.handle_datagram(later, &audio(BOB, 1)),
            Received::Audio {
                slot: 1,
                new_speaker: true,
                ..
            }
        ));
        assert_eq!(session.slot_of(BOB), Some(1));
        // Past the speakers a call can hear, more are not heard.
        for flow in 3..=u32::try_from(MAX_SPEAKERS).unwrap() {
            session.handle_datagram(later, &audio(FlowId(flow), 1));
        }
        assert!(matches!(
            session.handle_datagram(later, &audio(FlowId(99), 1)),
            Received::Nothing
        ));
        assert_eq!(session.heard().count(), MAX_SPEAKERS);
        assert!(matches!(
            session.handle_datagram(later, &[0xff, 0, 1]),
            Received::Nothing
        ));
    }

    #[test]
    fn losses_of_a_speaker_are_reported_to_it() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, false);
        // 100 packets due, every tenth lost.
        for sequence in (0..100).filter(|sequence| sequence % 10 != 5) {
            let at = start + Duration::from_millis(20 * u64::from(sequence));
            session.handle_datagram(at, &audio(ALICE, sequence));
        }
        let sent = decoded(&session.feedback(&[ALICE]));
        assert!(
            sent.contains(&(DatagramKind::Report, ALICE, 10)),
            "{sent:?}"
        );
        assert!(
            sent.iter()
                .any(|(kind, flow, _)| *kind == DatagramKind::Features && *flow == ALICE)
        );
        // Nothing new since: no second report.
        let sent = decoded(&session.feedback(&[ALICE]));
        assert!(!sent.iter().any(|(kind, ..)| *kind == DatagramKind::Report));
    }

    #[test]
    fn a_report_that_arrives_before_media_is_kept() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, false);
        assert_eq!(session.take_loss_report(), None);
        // Reports before we sent or heard any audio: the worst is kept…
        session.handle_datagram(start, &report(12));
        session.handle_datagram(start, &report(30));
        session.handle_datagram(start, &report(4));
        session.handle_datagram(start + Duration::from_secs(1), &audio(BOB, 1));
        // …until the encoder is told it, once.
        assert_eq!(session.take_loss_report(), Some(30));
        assert_eq!(session.take_loss_report(), None);
        session.handle_datagram(start, &report(0));
        assert_eq!(
            session.take_loss_report(),
            Some(0),
            "a clean path is news too"
        );
    }

    #[test]
    fn a_sender_that_stops_being_asked_for_dred_goes_back_to_fec() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, true);
        let fec_20 = HowToSend {
            frames: FrameDuration::Ms20,
            protection: Protection::InBandFec,
        };
        assert_eq!(session.how_to_send(), fec_20, "nobody said anything");
        session.feedback(&[ALICE, BOB]);
        assert!(matches!(
            session.handle_datagram(start, &features(ALICE, dred(true))),
            Received::Features { first: true }
        ));
        assert_eq!(
            session.how_to_send(),
            fec_20,
            "bob never said he decodes DRED"
        );
        session.handle_datagram(start, &features(BOB, dred(false)));
        // Half of them ask, all decode it.
        assert_eq!(session.how_to_send().protection, Protection::Dred);
        assert!(matches!(
            session.handle_datagram(start, &features(ALICE, dred(false))),
            Received::Features { first: false }
        ));
        assert_eq!(session.how_to_send(), fec_20, "nobody asks any more");
        session.handle_datagram(start, &features(BOB, dred(true)));
        assert_eq!(session.how_to_send().protection, Protection::Dred);
        // A new member who said nothing yet holds the call at FEC.
        session.feedback(&[ALICE, BOB, FlowId(3)]);
        assert_eq!(session.how_to_send(), fec_20);
        // A member who leaves takes its word with it.
        session.feedback(&[ALICE]);
        assert_eq!(session.how_to_send(), fec_20, "alice does not ask");
    }

    #[test]
    fn ten_ms_frames_keep_fec() {
        let start = Instant::now();
        let mut session = MediaSession::new(true, true);
        session.feedback(&[ALICE]);
        session.handle_datagram(start, &features(ALICE, dred(true)));
        assert_eq!(
            session.how_to_send(),
            HowToSend {
                frames: FrameDuration::Ms10,
                protection: Protection::InBandFec,
            },
            "libopus sends no DRED in 10 ms frames"
        );
        session.set_low_latency(false);
        assert_eq!(
            session.how_to_send(),
            HowToSend {
                frames: FrameDuration::Ms20,
                protection: Protection::Dred,
            }
        );
        // A member who plays only 20 ms frames holds the call there.
        session.set_low_latency(true);
        let long_only = ReceiverFeatures(0).with(ReceiverFeatures::DECODES_DRED, true);
        session.handle_datagram(start, &features(ALICE, long_only));
        assert_eq!(session.how_to_send().frames, FrameDuration::Ms20);
    }

    #[test]
    fn we_ask_for_dred_while_our_losses_come_in_bursts() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, true);
        // Bursts of five lost packets.
        for sequence in (0..400).filter(|sequence| sequence % 20 >= 5) {
            let at = start + Duration::from_millis(20 * u64::from(sequence));
            session.handle_datagram(at, &audio(ALICE, sequence));
        }
        let asks = |session: &mut MediaSession| {
            decoded(&session.feedback(&[ALICE]))
                .iter()
                .find(|(kind, ..)| *kind == DatagramKind::Features)
                .map(|(.., flags)| ReceiverFeatures(*flags))
                .unwrap()
        };
        let said = asks(&mut session);
        assert!(said.decodes_dred() && said.wants_dred(), "{said:?}");
        let mut plain = MediaSession::new(false, false);
        plain.handle_datagram(start, &audio(ALICE, 1));
        let said = asks(&mut plain);
        assert!(!said.decodes_dred() && !said.wants_dred(), "{said:?}");
    }
}
