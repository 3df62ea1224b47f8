//! A call's media policy, sans-IO: received datagrams (with `now`) become
//! packets for the remote speakers' jitter buffers, loss reports and our
//! receiver features go out, and what the other members say decides how we
//! send (frame length; in-band FEC or DRED) and what loss the encoder is
//! told. It never reads a clock, opens a device or touches a thread:
//! `media.rs` runs it on the session task and carries its decisions to the
//! audio threads.
//!
//! Loss feedback: we measure what we lose of each remote speaker
//! ([`LossMeter`]) and send each one a loss report about once a second,
//! with our [`ReceiverFeatures`] (what we play, whether we decode DRED and
//! ask for it: [`ReceiverSays::ours`]). What the other members say about
//! our own audio arrives the same way and goes to the
//! [`SendPolicy`], which decides the frame length, FEC or DRED, and the
//! encoder's loss hint (the worst member's [`audio_pipeline::LossEstimate`]:
//! a bad second believed at once, a good one slowly, a path nobody has
//! measured yet protected). A report that arrives before our audio starts
//! is kept.
//!
//! Network quality: about once a second we tell every other member what
//! we know of our own network ([`PathQuality`]: the worst recent report of
//! our audio, the worst loss and jitter of theirs; the server writes in our
//! round trip and transport), and rate each member's network from what it
//! said (`quality.rs`).
//!
//! End-to-end encrypted audio: each member's packets are opened with the
//! keys it announced ([`FrameOpener`]) before they go to its jitter
//! buffer; one that does not open goes nowhere (it plays as silence), and
//! the glue hears of it once per member until its packets open again
//! ([`Received::KeyProblem`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use audio_pipeline::{HowToSend, LossMeter, MediaPacket, ReceiverSays, SendPolicy};
use calling_api::{KeyProblem, NetworkQuality};
use media_e2ee::{E2eeError, FrameOpener, KeyAnnouncement, MediaKey, OpenError};
use signaling_proto::datagram::MAX_HEADER_LEN;
use signaling_proto::{
    DatagramKind, FlowId, LossReport, MediaHeader, PathQuality, ReceiverFeatures,
};

use crate::quality::{Bitrate, Heard, InterarrivalJitter, classify};

/// A member's report of our audio (or the server's word about us) counts
/// this long for our own network's figures.
const REPORT_COUNTS_FOR: Duration = Duration::from_secs(3);

/// The flow the server returns our own network word on.
const OUR_WORD: FlowId = FlowId(0);

/// Percentage points an estimate of our own loss (a difference of two
/// counts over about 50 packets each, in windows that do not line up) is
/// taken down by: the noise of such a difference on a clean path.
const ESTIMATE_NOISE_PERCENT: u8 = 2;

/// How long a member's packets may arrive before its key does without a
/// word to the application: its announcement travels on the signaling
/// stream, its first packets beside it.
const KEY_GRACE: Duration = Duration::from_secs(1);

/// Remote speakers one call can hear at once.
pub(crate) const MAX_SPEAKERS: usize = 15;

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
    /// A word about someone's network (a member's, or ours as the server
    /// measured it): the levels may have changed.
    Quality,
    /// A member's audio does not open (end-to-end encryption): the first
    /// such packet for a wrong key, the first after [`KEY_GRACE`] for a
    /// missing one; then nothing until its packets open again.
    KeyProblem { flow: FlowId, problem: KeyProblem },
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
    /// The share we lost of it in our latest report, in percent.
    last_loss: Option<u8>,
    jitter: InterarrivalJitter,
    /// Bytes of its audio received, and the bitrate they make.
    bytes: u64,
    bitrate: Bitrate,
}

/// What we measure of one remote member, for the call's statistics.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MemberFigures {
    /// What it said of its own network (the server's round trip in it).
    pub(crate) said: Option<PathQuality>,
    pub(crate) quality: Option<NetworkQuality>,
    /// What we lose of its audio, in percent (our latest report).
    pub(crate) loss_received_percent: Option<u8>,
    /// The inter-arrival jitter of its audio, in ms.
    pub(crate) jitter_ms: Option<f64>,
    /// The bitrate of its audio as received.
    pub(crate) bitrate_kbps: Option<f64>,
}

/// See the [module docs](self).
#[derive(Debug)]
pub(crate) struct MediaSession {
    speakers: HashMap<FlowId, Speaker>,
    /// Whether our decoders recover lost frames from DRED.
    decodes_dred: bool,
    /// What the other members said of our audio, and what it makes of it.
    policy: SendPolicy<FlowId>,
    /// Each reporter's latest report of our audio, and when it came.
    reports_of_us: HashMap<FlowId, (u8, Instant)>,
    /// What each member said of its own network, and when.
    heard: HashMap<FlowId, Heard>,
    /// Our own latest word as the server returned it (flow 0), with its
    /// measurements of us in it.
    our_word: Option<Heard>,
    /// Whether the call's audio is encrypted end to end.
    encrypted: bool,
    /// Each member's announced keys.
    openers: HashMap<FlowId, FrameOpener>,
    /// Members whose packets do not open: since when, and what was said.
    key_trouble: HashMap<FlowId, KeyTrouble>,
}

/// A member whose packets do not open.
#[derive(Debug)]
struct KeyTrouble {
    since: Instant,
    told: Option<KeyProblem>,
}

impl MediaSession {
    pub(crate) fn new(low_latency: bool, decodes_dred: bool, encrypted: bool) -> Self {
        Self {
            speakers: HashMap::new(),
            decodes_dred,
            policy: SendPolicy::new(low_latency),
            reports_of_us: HashMap::new(),
            heard: HashMap::new(),
            our_word: None,
            encrypted,
            openers: HashMap::new(),
            key_trouble: HashMap::new(),
        }
    }

    /// Takes a key the member on `flow` (`sender`) announced, with the
    /// application's key material for it.
    pub(crate) fn add_key(
        &mut self,
        flow: FlowId,
        material: &MediaKey,
        sender: &str,
        announcement: &KeyAnnouncement,
    ) -> Result<(), E2eeError> {
        self.openers
            .entry(flow)
            .or_default()
            .add_key(material, sender, announcement)
    }

    /// A datagram from the server, received at `now`.
    pub(crate) fn handle_datagram(&mut self, now: Instant, datagram: &[u8]) -> Received {
        let Ok((header, payload)) = MediaHeader::decode(datagram) else {
            return Received::Nothing;
        };
        // Anything from a member says its network is up.
        if let Some(heard) = self.heard.get_mut(&header.flow_id) {
            heard.last_heard = now;
        }
        match header.kind {
            DatagramKind::Audio => self.on_audio(now, &header, payload),
            DatagramKind::Report => {
                if let Some(report) = LossReport::from_payload(payload) {
                    self.policy.on_report(header.flow_id, report.loss_percent);
                    self.reports_of_us
                        .insert(header.flow_id, (report.loss_percent, now));
                }
                Received::Nothing
            }
            DatagramKind::Quality => {
                if let Some(path) = PathQuality::from_payload(payload) {
                    let heard = Heard {
                        path,
                        last_heard: now,
                    };
                    if header.flow_id == OUR_WORD {
                        self.our_word = Some(heard);
                    } else {
                        self.heard.insert(header.flow_id, heard);
                    }
                    return Received::Quality;
                }
                Received::Nothing
            }
            DatagramKind::Features => match ReceiverFeatures::from_payload(payload) {
                Some(features) => {
                    let says = ReceiverSays {
                        plays_short_frames: features.plays_short_frames(),
                        decodes_dred: features.decodes_dred(),
                        wants_dred: features.wants_dred(),
                    };
                    Received::Features {
                        first: self.policy.on_says(header.flow_id, says),
                    }
                }
                None => Received::Nothing,
            },
            DatagramKind::Probe | DatagramKind::KeepAlive => Received::Nothing,
        }
    }

    fn on_audio(&mut self, now: Instant, header: &MediaHeader, payload: &[u8]) -> Received {
        let opened = if self.encrypted {
            match self.open(now, header, payload) {
                Ok(packet) => packet,
                Err(problem) => return self.key_trouble(now, header.flow_id, problem),
            }
        } else {
            MediaPacket::new(
                now,
                header.sequence,
                header.timestamp,
                header.voice_activity,
                payload,
            )
        };
        let Some(packet) = opened else {
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
                last_loss: None,
                jitter: InterarrivalJitter::default(),
                bytes: 0,
                bitrate: Bitrate::default(),
            });
        speaker.loss.on_packet(header.sequence);
        speaker.jitter.on_packet(now, header.timestamp);
        speaker.bytes += payload.len() as u64;
        Received::Audio {
            slot: speaker.slot,
            new_speaker,
            packet,
        }
    }

    /// The Opus packet sealed in an encrypted datagram's `payload`, opened
    /// with what its sender announced (see `media_e2ee`): the header is
    /// authenticated as its sender wrote it, with flow id 0.
    fn open(
        &mut self,
        now: Instant,
        header: &MediaHeader,
        payload: &[u8],
    ) -> Result<Option<MediaPacket>, OpenError> {
        let as_sent = MediaHeader {
            flow_id: FlowId(0),
            ..*header
        };
        let mut written = [0; MAX_HEADER_LEN];
        let Ok(len) = as_sent.encode(&[], &mut written) else {
            return Err(OpenError::Malformed);
        };
        let opener = self
            .openers
            .get_mut(&header.flow_id)
            .ok_or(OpenError::MissingKey(0))?;
        let opus = opener.open(&written[..len], payload)?;
        self.key_trouble.remove(&header.flow_id);
        Ok(MediaPacket::new(
            now,
            header.sequence,
            header.timestamp,
            header.voice_activity,
            opus,
        ))
    }

    /// A packet from `flow` did not open: a missing key is said once it
    /// has been missing for [`KEY_GRACE`], a wrong one at once; each once
    /// until the member's packets open again. A packet that is no SFrame
    /// at all is dropped without a word.
    fn key_trouble(&mut self, now: Instant, flow: FlowId, error: OpenError) -> Received {
        let problem = match error {
            OpenError::MissingKey(_) => KeyProblem::Missing,
            OpenError::WrongKey => KeyProblem::Wrong,
            OpenError::Malformed => return Received::Nothing,
        };
        let trouble = self.key_trouble.entry(flow).or_insert(KeyTrouble {
            since: now,
            told: None,
        });
        let due = problem == KeyProblem::Wrong || now.duration_since(trouble.since) >= KEY_GRACE;
        if !due || trouble.told == Some(problem) {
            return Received::Nothing;
        }
        trouble.told = Some(problem);
        Received::KeyProblem { flow, problem }
    }

    /// Wants 10 ms frames (`true`) or 20 ms ones.
    pub(crate) fn set_low_latency(&mut self, low_latency: bool) {
        self.policy.set_low_latency(low_latency);
    }

    /// What we tell the other members, as datagrams to send (the server
    /// delivers each to the member it names): to each of `members` (the
    /// call's other members now), what we play of its audio; to each remote
    /// speaker with enough packets due since the last report, what we lose
    /// of it; to everyone, what we know of our own network (`our_rtt_ms`:
    /// our connection's round trip, if measured). Called about once a
    /// second, at `now`.
    pub(crate) fn feedback(
        &mut self,
        now: Instant,
        members: &[FlowId],
        our_rtt_ms: Option<u16>,
    ) -> Vec<bytes::Bytes> {
        self.policy.set_receivers(members);
        let mut datagrams = Vec::new();
        for flow in members {
            let says = ReceiverSays::ours(
                self.decodes_dred,
                self.speakers.get(flow).map(|speaker| &speaker.loss),
            );
            let features = ReceiverFeatures(0)
                .with(ReceiverFeatures::SHORT_FRAMES, says.plays_short_frames)
                .with(ReceiverFeatures::DECODES_DRED, says.decodes_dred)
                .with(ReceiverFeatures::WANTS_DRED, says.wants_dred);
            datagrams.extend(feedback_datagram(
                DatagramKind::Features,
                *flow,
                &features.to_payload(),
            ));
        }
        for (flow, speaker) in &mut self.speakers {
            speaker.bitrate.read(now, speaker.bytes);
            let Some(loss_percent) = speaker.loss.report() else {
                continue;
            };
            speaker.last_loss = Some(loss_percent);
            let report = LossReport { loss_percent }.to_payload();
            datagrams.extend(feedback_datagram(DatagramKind::Report, *flow, &report));
        }
        if !members.is_empty() {
            // Our own flow: the server stamps it (and relays to everyone).
            let ours = self.our_path(now, members, our_rtt_ms).to_payload();
            datagrams.extend(feedback_datagram(DatagramKind::Quality, FlowId(0), &ours));
        }
        datagrams
    }

    /// What we know of our own network at `now`, among `members`.
    pub(crate) fn our_path(
        &self,
        now: Instant,
        members: &[FlowId],
        our_rtt_ms: Option<u16>,
    ) -> PathQuality {
        // What a member loses of our audio beyond what its own downlink
        // loses (as it says) is our uplink's; the member that says it best
        // is believed. (The server measures it exactly and tells the
        // others, never us.) The two counts' one-second windows do not line
        // up: on a lossy path the difference swings by about that path's
        // loss again, so only what exceeds twice it counts as ours.
        let uplink = members
            .iter()
            .filter_map(|flow| {
                let (lost, at) = self.reports_of_us.get(flow)?;
                if now.saturating_duration_since(*at) > REPORT_COUNTS_FOR {
                    return None;
                }
                let theirs = self
                    .heard
                    .get(flow)
                    .and_then(|heard| heard.path.downlink_loss_percent)
                    .unwrap_or(0);
                Some(lost.saturating_sub(theirs.saturating_mul(2)))
            })
            .min();
        // What we lose of a member's audio beyond what its uplink lost
        // (as the server measured and the member passed on) is ours: again
        // beyond twice it.
        let downlink = members
            .iter()
            .filter_map(|flow| {
                let lost = self.speakers.get(flow)?.last_loss?;
                let theirs = self
                    .heard
                    .get(flow)
                    .and_then(|heard| heard.path.uplink_loss_percent)
                    .unwrap_or(0);
                Some(lost.saturating_sub(theirs.saturating_mul(2)))
            })
            .max();
        let jitter = members
            .iter()
            .filter_map(|flow| self.speakers.get(flow))
            .map(|speaker| speaker.jitter.ms())
            .max_by(f64::total_cmp)
            .map(|ms| ms.round().min(f64::from(u16::MAX - 1)) as u16);
        // What the server measured of us (fresh), and our own estimates
        // less the noise of a difference of two one-second counts: the
        // worse of the two, so that a word lost on the way delays nothing.
        let measured = self
            .our_word
            .filter(|word| now.saturating_duration_since(word.last_heard) <= REPORT_COUNTS_FOR)
            .map(|word| word.path)
            .unwrap_or_default();
        let estimated =
            |loss: Option<u8>| loss.map(|loss| loss.saturating_sub(ESTIMATE_NOISE_PERCENT));
        let worse = |a: Option<u8>, b: Option<u8>| match (a, b) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        PathQuality {
            rtt_ms: our_rtt_ms,
            uplink_loss_percent: worse(measured.uplink_loss_percent, estimated(uplink)),
            downlink_loss_percent: worse(measured.downlink_loss_percent, estimated(downlink)),
            jitter_ms: jitter,
            transport: None,
        }
    }

    /// Our network's level at `now` (see [`Self::our_path`]).
    pub(crate) fn our_quality(
        &self,
        now: Instant,
        members: &[FlowId],
        our_rtt_ms: Option<u16>,
    ) -> NetworkQuality {
        classify(&self.our_path(now, members, our_rtt_ms))
    }

    /// What we know of member `flow` at `now`.
    pub(crate) fn member(&self, now: Instant, flow: FlowId) -> MemberFigures {
        let heard = self.heard.get(&flow);
        let speaker = self.speakers.get(&flow);
        MemberFigures {
            said: heard.map(|heard| heard.path),
            quality: heard.map(|heard| heard.level(now)),
            loss_received_percent: speaker.and_then(|speaker| speaker.last_loss),
            jitter_ms: speaker.map(|speaker| speaker.jitter.ms()),
            bitrate_kbps: speaker.and_then(|speaker| speaker.bitrate.kbps()),
        }
    }

    /// The loss hint for our encoder now (see [`SendPolicy::encoder_hint`]).
    pub(crate) fn encoder_hint(&self) -> u8 {
        self.policy.encoder_hint()
    }

    /// The encoder's hint once a member has reported what it loses of our
    /// audio; `None` before.
    pub(crate) fn reported_loss(&self) -> Option<u8> {
        self.policy.has_reports().then(|| self.encoder_hint())
    }

    /// Frame length and protection (see [`SendPolicy::how_to_send`]).
    pub(crate) fn how_to_send(&self) -> HowToSend {
        self.policy.how_to_send()
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

/// A loss report or our features, about `flow`, or our network's quality.
fn feedback_datagram(kind: DatagramKind, flow: FlowId, payload: &[u8]) -> Option<bytes::Bytes> {
    let mut datagram = [0; MAX_HEADER_LEN + PathQuality::LEN];
    let len = MediaHeader::about(kind, flow)
        .encode(payload, &mut datagram)
        .ok()?;
    Some(bytes::Bytes::copy_from_slice(&datagram[..len]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use audio_pipeline::{FrameDuration, Protection};
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
        let mut session = MediaSession::new(false, false, false);
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

    /// Alice's audio as her SDK seals it and the server relays it: sealed
    /// behind the header with flow 0, the flow stamped afterwards.
    fn sealed_audio(sealer: &mut media_e2ee::FrameSealer, sequence: u32) -> Vec<u8> {
        let header = MediaHeader {
            kind: DatagramKind::Audio,
            flow_id: FlowId(0),
            sequence,
            timestamp: sequence * 960,
            voice_activity: true,
            level_dbov: 30,
        };
        let mut written = [0; MAX_HEADER_LEN];
        let len = header.encode(&[], &mut written).unwrap();
        let mut datagram = bytes::BytesMut::from(sealer.seal(&written[..len], &[1, 2, 3]).unwrap());
        assert!(MediaHeader::restamp_flow(&mut datagram, ALICE));
        datagram.to_vec()
    }

    #[test]
    fn sealed_audio_opens_with_the_announced_key_and_problems_are_said_once() {
        let start = Instant::now();
        let keys = media_e2ee::MediaKeys::Shared(MediaKey::new([5; 32]).unwrap());
        let material = keys.key_of("alice").unwrap();
        let mut sealer = media_e2ee::FrameSealer::new(&keys, "alice", 0).unwrap();
        let mut session = MediaSession::new(false, false, true);
        // Before her key: nothing to play, and a word only after the grace.
        assert!(matches!(
            session.handle_datagram(start, &sealed_audio(&mut sealer, 1)),
            Received::Nothing
        ));
        let late = start + KEY_GRACE;
        assert!(matches!(
            session.handle_datagram(late, &sealed_audio(&mut sealer, 2)),
            Received::KeyProblem {
                flow: ALICE,
                problem: KeyProblem::Missing
            }
        ));
        assert!(matches!(
            session.handle_datagram(late, &sealed_audio(&mut sealer, 3)),
            Received::Nothing
        ));
        session
            .add_key(ALICE, &material, "alice", &sealer.announcement())
            .unwrap();
        assert!(matches!(
            session.handle_datagram(late, &sealed_audio(&mut sealer, 4)),
            Received::Audio { packet, .. } if packet.seq == 4 && packet.payload() == [1, 2, 3]
        ));
        // Her next key announced under her material for bob: wrong, said
        // at once, once.
        let mut next = media_e2ee::FrameSealer::new(&keys, "alice", 1).unwrap();
        session
            .add_key(ALICE, &material, "bob", &next.announcement())
            .unwrap();
        assert!(matches!(
            session.handle_datagram(late, &sealed_audio(&mut next, 5)),
            Received::KeyProblem {
                flow: ALICE,
                problem: KeyProblem::Wrong
            }
        ));
        assert!(matches!(
            session.handle_datagram(late, &sealed_audio(&mut next, 6)),
            Received::Nothing
        ));
        // Plain audio in an encrypted call plays nowhere.
        assert!(matches!(
            session.handle_datagram(late, &audio(ALICE, 7)),
            Received::Nothing | Received::KeyProblem { .. }
        ));
        assert!(!matches!(
            session.handle_datagram(late, &audio(ALICE, 8)),
            Received::Audio { .. }
        ));
    }

    /// A rotation as the SDK makes one: the new key arrives while the old
    /// one still seals, the switch comes later, and a late old-key frame
    /// crosses the first new-key ones. Every frame plays: a rotation costs
    /// no frame at all.
    #[test]
    fn every_frame_around_a_key_rotation_opens() {
        let start = Instant::now();
        let keys = media_e2ee::SenderKey::random(0).unwrap();
        let next = media_e2ee::SenderKey::random(1).unwrap();
        let sealer_of = |key: &media_e2ee::SenderKey| {
            media_e2ee::FrameSealer::announced(&key.material, "alice", key.announcement).unwrap()
        };
        let (mut old, mut new) = (sealer_of(&keys), sealer_of(&next));
        let mut session = MediaSession::new(false, false, true);
        session
            .add_key(ALICE, &keys.material, "alice", &keys.announcement)
            .unwrap();
        let mut arrivals: Vec<Vec<u8>> = (0..50).map(|seq| sealed_audio(&mut old, seq)).collect();
        let after: Vec<Vec<u8>> = (50..80).map(|seq| sealed_audio(&mut new, seq)).collect();
        let late_old = arrivals.pop().unwrap();
        arrivals.extend_from_slice(&after[..2]);
        arrivals.push(late_old);
        arrivals.extend_from_slice(&after[2..]);
        let mut played = 0;
        for (at, datagram) in arrivals.iter().enumerate() {
            if at == 25 {
                session
                    .add_key(ALICE, &next.material, "alice", &next.announcement)
                    .unwrap();
            }
            let now = start + Duration::from_millis(20 * at as u64);
            match session.handle_datagram(now, datagram) {
                Received::Audio { .. } => played += 1,
                other => panic!("frame {at}: {other:?}"),
            }
        }
        assert_eq!(played, 80);
    }

    #[test]
    fn losses_of_a_speaker_are_reported_to_it() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, false, false);
        // 100 packets due, every tenth lost.
        for sequence in (0..100).filter(|sequence| sequence % 10 != 5) {
            let at = start + Duration::from_millis(20 * u64::from(sequence));
            session.handle_datagram(at, &audio(ALICE, sequence));
        }
        let sent = decoded(&session.feedback(start, &[ALICE], None));
        assert!(
            sent.contains(&(DatagramKind::Report, ALICE, 10)),
            "{sent:?}"
        );
        assert!(
            sent.iter()
                .any(|(kind, flow, _)| *kind == DatagramKind::Features && *flow == ALICE)
        );
        // Nothing new since: no second report.
        let sent = decoded(&session.feedback(start, &[ALICE], None));
        assert!(!sent.iter().any(|(kind, ..)| *kind == DatagramKind::Report));
    }

    #[test]
    fn reports_set_the_hint_even_before_media() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, false, false);
        assert_eq!(session.reported_loss(), None);
        let unknown = session.encoder_hint();
        assert!(unknown > 0, "a path nobody measured is protected");
        // Reports before we sent or heard any audio count…
        session.handle_datagram(start, &report(30));
        session.handle_datagram(start + Duration::from_secs(1), &audio(BOB, 1));
        assert_eq!(session.reported_loss(), Some(30));
        // …and a clean second after a bad one lowers the hint only a little.
        for _ in 0..3 {
            session.handle_datagram(start, &report(0));
        }
        let hint = session.reported_loss().unwrap();
        assert!((15..30).contains(&hint), "{hint}");
    }

    /// What members say reaches the policy (its rules are tested in
    /// `audio_pipeline::policy`): DRED once the only other member decodes
    /// it and asks, 10 ms frames while it plays them and we want them.
    #[test]
    fn what_members_say_decides_how_we_send() {
        let start = Instant::now();
        let mut session = MediaSession::new(true, true, false);
        session.feedback(start, &[ALICE], None);
        assert!(matches!(
            session.handle_datagram(start, &features(ALICE, dred(true))),
            Received::Features { first: true }
        ));
        assert_eq!(session.how_to_send().frames, FrameDuration::Ms10);
        session.set_low_latency(false);
        assert_eq!(
            session.how_to_send(),
            HowToSend {
                frames: FrameDuration::Ms20,
                protection: Protection::Dred,
            }
        );
        assert!(matches!(
            session.handle_datagram(start, &features(ALICE, dred(false))),
            Received::Features { first: false }
        ));
        assert_eq!(session.how_to_send().protection, Protection::InBandFec);
    }

    #[test]
    fn we_ask_for_dred_while_our_losses_come_in_bursts() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, true, false);
        // Bursts of five lost packets.
        for sequence in (0..400).filter(|sequence| sequence % 20 >= 5) {
            let at = start + Duration::from_millis(20 * u64::from(sequence));
            session.handle_datagram(at, &audio(ALICE, sequence));
        }
        let asks = |session: &mut MediaSession| {
            decoded(&session.feedback(start, &[ALICE], None))
                .iter()
                .find(|(kind, ..)| *kind == DatagramKind::Features)
                .map(|(.., flags)| ReceiverFeatures(*flags))
                .unwrap()
        };
        let said = asks(&mut session);
        assert!(said.decodes_dred() && said.wants_dred(), "{said:?}");
        let mut plain = MediaSession::new(false, false, false);
        plain.handle_datagram(start, &audio(ALICE, 1));
        let said = asks(&mut plain);
        assert!(!said.decodes_dred() && !said.wants_dred(), "{said:?}");
    }

    fn quality_word(flow: FlowId, path: PathQuality) -> Vec<u8> {
        feedback_datagram(DatagramKind::Quality, flow, &path.to_payload())
            .unwrap()
            .to_vec()
    }

    /// On a virtual clock: what a member says of its network rates it
    /// (down after 3 s of silence), and our own network is rated from the
    /// reports of our audio and what we lose of theirs.
    #[test]
    fn members_and_our_own_network_are_rated() {
        let start = Instant::now();
        let mut session = MediaSession::new(false, false, false);
        assert_eq!(session.member(start, ALICE).quality, None, "never said");
        let said = PathQuality {
            rtt_ms: Some(40),
            uplink_loss_percent: Some(0),
            downlink_loss_percent: Some(10),
            jitter_ms: Some(5),
            transport: Some(signaling_proto::PathTransport::Quic),
        };
        session.handle_datagram(start, &quality_word(ALICE, said));
        let alice = session.member(start + Duration::from_secs(1), ALICE);
        assert_eq!(alice.said, Some(said));
        assert_eq!(alice.quality, Some(NetworkQuality::Bad), "10 % lost");
        let later = start + Duration::from_secs(3);
        assert_eq!(
            session.member(later, ALICE).quality,
            Some(NetworkQuality::Down)
        );
        // Bob's audio, though his next word was lost, says he is up.
        session.handle_datagram(start, &quality_word(BOB, said));
        session.handle_datagram(start + Duration::from_millis(2_500), &audio(BOB, 1));
        assert_eq!(
            session.member(later, BOB).quality,
            Some(NetworkQuality::Bad)
        );

        // Our own. Alice loses 15 % of our audio, and says her downlink
        // loses 10 %: within the swing of two counts on a 10 % path, so
        // nothing is ours; at 25 %, 5 beyond twice hers is, 3 past the
        // noise.
        session.handle_datagram(start, &report(15));
        assert_eq!(
            session.our_path(start, &[ALICE], None).uplink_loss_percent,
            Some(0)
        );
        session.handle_datagram(start, &report(25));
        assert_eq!(
            session.our_path(start, &[ALICE], None).uplink_loss_percent,
            Some(3)
        );
        // Her downlink is clean now: 5 % of our audio lost at her is ours
        // (3 past the noise); none of hers is lost at us.
        let clean_downlink = PathQuality {
            downlink_loss_percent: Some(0),
            ..said
        };
        session.handle_datagram(start, &quality_word(ALICE, clean_downlink));
        session.handle_datagram(start, &report(5));
        for sequence in 0..50 {
            let at = start + Duration::from_millis(20 * u64::from(sequence));
            session.handle_datagram(at, &audio(ALICE, sequence));
        }
        let second = start + Duration::from_secs(1);
        let sent = session.feedback(second, &[ALICE], Some(30));
        let ours = sent
            .iter()
            .find_map(|datagram| {
                let (header, payload) = MediaHeader::decode(datagram).unwrap();
                (header.kind == DatagramKind::Quality).then(|| PathQuality::from_payload(payload))
            })
            .flatten()
            .expect("we tell everyone of our network");
        assert_eq!(
            (
                ours.rtt_ms,
                ours.uplink_loss_percent,
                ours.downlink_loss_percent
            ),
            (Some(30), Some(3), Some(0))
        );
        assert_eq!(
            session.our_quality(second, &[ALICE], Some(30)),
            NetworkQuality::Poor
        );
        // A report older than 3 s no longer counts.
        let quiet = second + Duration::from_secs(4);
        assert_eq!(
            session.our_quality(quiet, &[ALICE], Some(30)),
            NetworkQuality::Excellent
        );
        // The server's word about us (flow 0) is believed over our
        // estimates while fresh: 9 % of what it sends us lost.
        let measured = PathQuality {
            uplink_loss_percent: Some(0),
            downlink_loss_percent: Some(9),
            ..PathQuality::default()
        };
        session.handle_datagram(quiet, &quality_word(OUR_WORD, measured));
        let ours = session.our_path(quiet, &[ALICE], Some(30));
        assert_eq!(
            (ours.uplink_loss_percent, ours.downlink_loss_percent),
            (Some(0), Some(9))
        );
        assert_eq!(
            session.member(quiet, OUR_WORD).quality,
            None,
            "not a member"
        );
        // Nobody to tell: nothing said.
        assert!(
            session
                .feedback(quiet, &[], Some(30))
                .iter()
                .all(|datagram| MediaHeader::decode(datagram).unwrap().0.kind
                    != DatagramKind::Quality)
        );
    }
}
