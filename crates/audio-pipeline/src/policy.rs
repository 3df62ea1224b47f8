//! How a sender sends, decided from what its receivers say — sans-IO, the
//! same code in a call and in the audio benchmark.
//!
//! Each receiver says, about once a second, what it plays of our audio
//! ([`ReceiverSays`]) and what it lost of it (a percentage, kept as a
//! [`LossEstimate`]). From that:
//!
//! - **frames**: 10 ms when this sender wants low latency and every
//!   receiver plays them; 20 ms otherwise (a receiver that never said
//!   anything keeps the call at 20 ms);
//! - **protection**: DRED in 20 ms frames while every receiver decodes it
//!   and at least half of them ask for it (their losses come in bursts);
//!   in-band FEC otherwise (libopus sends no DRED in 10 ms frames);
//! - **the encoder's loss hint**: the worst receiver's estimate, which
//!   rises with a bad second at once, falls slowly, and protects a path
//!   nobody has measured yet ([`LossEstimate`]). Neither FEC nor DRED sends
//!   anything at a hint of 0.

use std::collections::HashMap;
use std::hash::Hash;

use crate::{FrameDuration, LossEstimate, LossMeter, Protection};

/// What one receiver says it does with our audio.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReceiverSays {
    /// It plays 10 ms frames.
    pub plays_short_frames: bool,
    /// Its decoder recovers lost frames from DRED.
    pub decodes_dred: bool,
    /// It asks for DRED: its losses of our audio come in bursts.
    pub wants_dred: bool,
}

impl ReceiverSays {
    /// What a receiver with this pipeline says about a sender whose
    /// packets `meter` counts (`None`: none heard yet): it plays 10 ms
    /// frames, and asks for DRED when its decoder recovers from it and its
    /// losses come in bursts.
    pub fn ours(decodes_dred: bool, meter: Option<&LossMeter>) -> Self {
        Self {
            plays_short_frames: true,
            decodes_dred,
            wants_dred: decodes_dred && meter.is_some_and(LossMeter::bursty),
        }
    }
}

/// How to send our audio now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HowToSend {
    /// Frame length.
    pub frames: FrameDuration,
    /// FEC or DRED.
    pub protection: Protection,
}

/// The sender's side of the negotiation, per receiver `K`. See the
/// [module docs](self).
#[derive(Debug, Clone)]
pub struct SendPolicy<K> {
    low_latency: bool,
    /// The call's other members, as last listed.
    receivers: Vec<K>,
    says: HashMap<K, ReceiverSays>,
    losses: HashMap<K, LossEstimate>,
}

impl<K: Copy + Eq + Hash> SendPolicy<K> {
    /// Nobody to send to yet; `low_latency`: wants 10 ms frames.
    pub fn new(low_latency: bool) -> Self {
        Self {
            low_latency,
            receivers: Vec::new(),
            says: HashMap::new(),
            losses: HashMap::new(),
        }
    }

    /// Wants 10 ms frames (`true`) or 20 ms ones.
    pub fn set_low_latency(&mut self, low_latency: bool) {
        self.low_latency = low_latency;
    }

    /// The call's other members now: whoever left takes what it said with
    /// it.
    pub fn set_receivers(&mut self, receivers: &[K]) {
        if self.receivers != receivers {
            self.receivers = receivers.to_vec();
            self.says.retain(|receiver, _| receivers.contains(receiver));
            self.losses
                .retain(|receiver, _| receivers.contains(receiver));
        }
    }

    /// `receiver` said what it plays; `true` the first time it did.
    pub fn on_says(&mut self, receiver: K, says: ReceiverSays) -> bool {
        self.says.insert(receiver, says).is_none()
    }

    /// `receiver` reported losing `percent` of our audio since its last
    /// report (a report before the members are listed is kept).
    pub fn on_report(&mut self, receiver: K, percent: u8) {
        self.losses.entry(receiver).or_default().on_report(percent);
    }

    /// See the [module docs](self).
    pub fn how_to_send(&self) -> HowToSend {
        let everyone = |has: fn(&ReceiverSays) -> bool| {
            !self.receivers.is_empty()
                && self
                    .receivers
                    .iter()
                    .all(|receiver| self.says.get(receiver).is_some_and(has))
        };
        let short = self.low_latency && everyone(|says| says.plays_short_frames);
        let asking = self
            .receivers
            .iter()
            .filter(|receiver| self.says.get(receiver).is_some_and(|says| says.wants_dred))
            .count();
        let dred = !short
            && everyone(|says| says.decodes_dred)
            && asking > 0
            && 2 * asking >= self.receivers.len();
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

    /// Whether any receiver has reported its loss yet.
    pub fn has_reports(&self) -> bool {
        !self.losses.is_empty()
    }

    /// The loss hint for the encoder, in percent: the worst receiver's
    /// estimate (one not heard from yet counts as an unknown path).
    pub fn encoder_hint(&self) -> u8 {
        let unknown = LossEstimate::new();
        let worst = if self.receivers.is_empty() {
            self.losses
                .values()
                .map(LossEstimate::percent)
                .fold(unknown.percent(), f64::max)
        } else {
            self.receivers
                .iter()
                .map(|receiver| self.losses.get(receiver).unwrap_or(&unknown).percent())
                .fold(0.0, f64::max)
        };
        worst.round().clamp(0.0, 100.0) as u8
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALICE: u32 = 1;
    const BOB: u32 = 2;

    fn dred(asking: bool) -> ReceiverSays {
        ReceiverSays {
            plays_short_frames: true,
            decodes_dred: true,
            wants_dred: asking,
        }
    }

    const FEC_20: HowToSend = HowToSend {
        frames: FrameDuration::Ms20,
        protection: Protection::InBandFec,
    };

    #[test]
    fn dred_while_every_receiver_decodes_it_and_half_ask() {
        let mut policy = SendPolicy::new(false);
        assert_eq!(policy.how_to_send(), FEC_20, "nobody said anything");
        policy.set_receivers(&[ALICE, BOB]);
        assert!(policy.on_says(ALICE, dred(true)));
        assert_eq!(policy.how_to_send(), FEC_20, "bob said nothing");
        policy.on_says(BOB, dred(false));
        assert_eq!(policy.how_to_send().protection, Protection::Dred);
        assert!(!policy.on_says(ALICE, dred(false)));
        assert_eq!(policy.how_to_send(), FEC_20, "nobody asks any more");
        policy.on_says(BOB, dred(true));
        assert_eq!(policy.how_to_send().protection, Protection::Dred);
        policy.set_receivers(&[ALICE, BOB, 3]);
        assert_eq!(policy.how_to_send(), FEC_20, "a new member said nothing");
        policy.set_receivers(&[ALICE]);
        assert_eq!(policy.how_to_send(), FEC_20, "alice does not ask");
    }

    #[test]
    fn short_frames_when_everyone_plays_them_and_then_fec() {
        let mut policy = SendPolicy::new(true);
        policy.set_receivers(&[ALICE]);
        policy.on_says(ALICE, dred(true));
        assert_eq!(
            policy.how_to_send(),
            HowToSend {
                frames: FrameDuration::Ms10,
                protection: Protection::InBandFec,
            }
        );
        policy.set_low_latency(false);
        assert_eq!(policy.how_to_send().protection, Protection::Dred);
        policy.set_low_latency(true);
        policy.on_says(
            ALICE,
            ReceiverSays {
                plays_short_frames: false,
                ..dred(true)
            },
        );
        assert_eq!(policy.how_to_send().frames, FrameDuration::Ms20);
    }

    /// The hint on the virtual clock of reports, one a second, for paths
    /// people have: it protects a call's start, holds through a bursty
    /// path's quiet seconds, follows a path that worsens at once and one
    /// that improves within seconds, and is 0 on a clean one.
    #[test]
    fn the_hint_follows_the_path_not_the_last_second() {
        let start = LossEstimate::START_PERCENT.round() as u8;
        let hints = |reports: &[u8]| {
            let mut policy = SendPolicy::new(false);
            policy.set_receivers(&[ALICE]);
            let mut hints = vec![policy.encoder_hint()];
            for report in reports {
                policy.on_report(ALICE, *report);
                hints.push(policy.encoder_hint());
            }
            hints
        };
        // Clean: protected until known, then nothing.
        assert_eq!(hints(&[0; 6]), [start, start, start, 0, 0, 0, 0]);
        // Bursty (~10 % on average; seconds between 0 and 28 %): never
        // down to 0, never far under the average after the first burst.
        let bursty = [
            0, 0, 28, 0, 0, 14, 0, 22, 0, 0, 0, 18, 0, 6, 0, 26, 0, 0, 12, 0,
        ];
        let hinted = hints(&bursty);
        assert!(hinted.iter().all(|hint| *hint >= 5), "{hinted:?}");
        // Random 10 %: close to 10.
        let random = [9, 11, 10, 8, 12, 10, 9, 11, 10, 10];
        let hinted = hints(&random);
        assert!(
            hinted.iter().all(|hint| (8..=12).contains(hint)),
            "{hinted:?}"
        );
        // Worsening: from 2 % to 20 %, half of it the next second.
        let hinted = hints(&[2, 2, 2, 2, 20, 20]);
        assert!(hinted[5] >= 10 && hinted[6] >= 15, "{hinted:?}");
        // Improving: from 20 % to clean, under 5 % within 15 s.
        let mut improving = vec![20; 5];
        improving.extend([0; 15]);
        let hinted = hints(&improving);
        assert!(hinted[6] >= 15, "one clean second: {hinted:?}");
        assert!(*hinted.last().unwrap() < 5, "{hinted:?}");
        // The worst receiver decides; one not heard from is unknown.
        let mut policy = SendPolicy::new(false);
        policy.set_receivers(&[ALICE, BOB]);
        for _ in 0..4 {
            policy.on_report(ALICE, 0);
        }
        assert_eq!(policy.encoder_hint(), start, "bob's path is unknown");
        for _ in 0..4 {
            policy.on_report(BOB, 7);
        }
        assert_eq!(policy.encoder_hint(), 7);
    }

    /// One second per entry of a one-to-one call on the virtual clock:
    /// 50 packets a second through `paths` (each for its seconds), the
    /// receiver's meter reporting and saying what it wants once a second,
    /// the sender's hint and protection after each.
    fn negotiate(paths: &[(crate::netem::NetemConfig, u32)]) -> Vec<(u8, Protection)> {
        use crate::netem::Netem;
        use std::time::{Duration, Instant};
        let origin = Instant::now();
        let mut network: Netem<u32> = Netem::new(paths[0].0);
        let mut meter = LossMeter::new();
        let mut policy = SendPolicy::new(false);
        policy.set_receivers(&[ALICE]);
        let mut seq = 0_u32;
        let mut seconds = Vec::new();
        for (config, duration) in paths {
            network.set_config(*config);
            for _ in 0..*duration {
                for _ in 0..50 {
                    seq += 1;
                    let now = origin + Duration::from_millis(20 * u64::from(seq));
                    network.send(now, seq);
                    while let Some(received) = network.receive(now) {
                        meter.on_packet(received);
                    }
                }
                policy.on_says(ALICE, ReceiverSays::ours(true, Some(&meter)));
                if let Some(percent) = meter.report() {
                    policy.on_report(ALICE, percent);
                }
                seconds.push((policy.encoder_hint(), policy.how_to_send().protection));
            }
        }
        seconds
    }

    #[test]
    fn on_the_virtual_clock_protection_holds_on_bursty_paths_and_follows_changes() {
        use crate::netem::NetemConfig;
        let bursty = NetemConfig {
            burst: Some((0.05, 0.35, 0.8)),
            seed: 15,
            ..NetemConfig::default()
        };
        let random = |loss: f64| NetemConfig {
            loss,
            seed: 13,
            ..NetemConfig::default()
        };
        let clean = NetemConfig::default();

        // Bursty (~9 %): DRED within 10 s, then every second DRED with a
        // hint that never falls to nothing between bursts.
        let seconds = negotiate(&[(bursty, 60)]);
        assert!(
            seconds[10..]
                .iter()
                .all(|(hint, protection)| *hint >= 3 && *protection == Protection::Dred),
            "{seconds:?}"
        );
        // Random 10 %: FEC, hinted near the path's loss.
        let seconds = negotiate(&[(random(0.10), 30)]);
        assert!(
            seconds[5..]
                .iter()
                .all(|(hint, protection)| (6..=20).contains(hint)
                    && *protection == Protection::InBandFec),
            "{seconds:?}"
        );
        // Worsening: clean, then 20 % random: believed within 2 s.
        let seconds = negotiate(&[(clean, 10), (random(0.20), 10)]);
        assert_eq!(seconds[9].0, 0, "{seconds:?}");
        assert!(seconds[11].0 >= 10, "{seconds:?}");
        // Improving: bursty, then clean: nothing is spent on protection
        // within half a minute.
        let seconds = negotiate(&[(bursty, 20), (clean, 35)]);
        assert!(seconds.last().unwrap().0 <= 1, "{seconds:?}");
    }

    #[test]
    fn a_report_before_the_members_are_listed_counts() {
        let mut policy = SendPolicy::new(false);
        assert!(!policy.has_reports());
        policy.on_report(ALICE, 30);
        assert!(policy.has_reports());
        assert_eq!(policy.encoder_hint(), 30);
        policy.set_receivers(&[ALICE]);
        assert_eq!(policy.encoder_hint(), 30);
        // Whoever leaves takes its reports along.
        policy.set_receivers(&[BOB]);
        assert_eq!(
            policy.encoder_hint(),
            LossEstimate::START_PERCENT.round() as u8
        );
    }
}
