//! Loss, both ends of it: what a receiver loses of one sender's packets,
//! interval by interval ([`LossMeter`]), for the report that lets the
//! sender's encoder protect as much as the path needs; and what the sender
//! makes of those reports ([`LossEstimate`]): one second's loss swings
//! widely on a bursty path, so the sender believes a rise at once and a
//! fall slowly.
//!
//! Senders number only the packets they send (silence left out by DTX is
//! not numbered), so a gap in sequence numbers is loss, and its length a
//! burst's: the meter also says whether losses come in bursts
//! ([`LossMeter::bursty`]), which in-band FEC recovers badly and DRED
//! well. Sans-IO: the glue calls [`LossMeter::on_packet`] per packet and
//! [`LossMeter::report`] once per reporting interval, and hands each
//! report to the sender's [`LossEstimate::on_report`].

/// Counts one sender's packets between reports. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct LossMeter {
    /// The highest sequence number the last report covered.
    reported_up_to: Option<u32>,
    /// The highest sequence number seen.
    highest: Option<u32>,
    /// Packets seen since the last report.
    received: u32,
    /// Gaps (runs of lost packets) and the packets in them, recent ones
    /// weighing most (each report scales the past down).
    recent_gaps: f64,
    recent_gap_packets: f64,
    /// The judgement [`LossMeter::bursty`] holds while too few recent gaps
    /// speak for another: a path that was bursty stays so through a clean
    /// stretch.
    was_bursty: bool,
}

impl LossMeter {
    /// The fewest packets a report speaks for: fewer say little (a second
    /// of speech is 50).
    pub const MIN_DUE: u32 = 10;

    /// Mean packets per gap from which losses count as bursty: random
    /// loss of p% has runs of 1 / (1 − p) on average (1.25 at 20 %), a
    /// congested or fading path's are longer.
    pub const BURSTY_MEAN_GAP: f64 = 1.5;

    /// Mean packets per gap under which losses that were bursty count as
    /// single again: between the two the judgement stays as it was, so
    /// the sender does not switch its protection back and forth.
    pub const SINGLE_MEAN_GAP: f64 = 1.3;

    /// The fewest recent gaps [`LossMeter::bursty`] judges from.
    const MIN_GAPS: f64 = 2.0;

    /// How much of the past each report keeps (about ten seconds' memory:
    /// a bursty path has quiet seconds between its bursts).
    const GAP_MEMORY: f64 = 0.9;

    /// Nothing seen yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A packet with sequence number `seq` arrived.
    pub fn on_packet(&mut self, seq: u32) {
        if self.reported_up_to.is_none() {
            self.reported_up_to = Some(seq.wrapping_sub(1));
        }
        self.highest = match self.highest {
            // Later in sequence space (wrapping): it moves the front.
            Some(highest) if seq.wrapping_sub(highest) > u32::MAX / 2 => Some(highest),
            Some(highest) => {
                let gap = seq.wrapping_sub(highest).saturating_sub(1);
                if gap > 0 {
                    self.recent_gaps += 1.0;
                    self.recent_gap_packets += f64::from(gap);
                }
                Some(seq)
            }
            None => Some(seq),
        };
        self.received = self.received.saturating_add(1);
    }

    /// The share of packets lost since the last report, in percent (0–100);
    /// `None` while fewer than [`LossMeter::MIN_DUE`] packets were due since
    /// then (silence, or a start): they count towards the next report.
    pub fn report(&mut self) -> Option<u8> {
        let (base, highest) = (self.reported_up_to?, self.highest?);
        let expected = highest.wrapping_sub(base);
        if !(Self::MIN_DUE..=u32::MAX / 2).contains(&expected) {
            return None;
        }
        let lost = expected.saturating_sub(self.received);
        self.was_bursty = self.bursty();
        self.reported_up_to = Some(highest);
        self.received = 0;
        self.recent_gaps *= Self::GAP_MEMORY;
        self.recent_gap_packets *= Self::GAP_MEMORY;
        u8::try_from(u64::from(lost) * 100 / u64::from(expected)).ok()
    }
}

impl LossMeter {
    /// Packets per gap in sequence numbers, recently; `None` until a few
    /// gaps were seen.
    pub fn mean_gap(&self) -> Option<f64> {
        (self.recent_gaps >= Self::MIN_GAPS).then(|| self.recent_gap_packets / self.recent_gaps)
    }

    /// Whether recent losses come in bursts ([`LossMeter::BURSTY_MEAN_GAP`]
    /// packets or more per gap; once so, until under
    /// [`LossMeter::SINGLE_MEAN_GAP`]; as it was while too few gaps were
    /// seen lately): then DRED recovers them better than in-band FEC, which
    /// only recovers a burst's last packet. (A packet that arrives out of
    /// order after a later one first counts as a gap.)
    pub fn bursty(&self) -> bool {
        match self.mean_gap() {
            Some(mean) if self.was_bursty => mean >= Self::SINGLE_MEAN_GAP,
            Some(mean) => mean >= Self::BURSTY_MEAN_GAP,
            None => self.was_bursty,
        }
    }
}

/// What a sender believes one receiver loses of its audio, from that
/// receiver's reports (about one a second): a report above the estimate
/// moves it half way at once, one below only a tenth of the way, so a
/// quiet second between bursts does not take the protection away, while
/// a path that really got better is believed within ten seconds or so.
/// Until [`LossEstimate::KNOWN_AFTER`] reports came, the path is not known
/// and the estimate is at least [`LossEstimate::START_PERCENT`]: a call's
/// first seconds are protected before anyone has measured them.
#[derive(Debug, Clone, Copy, Default)]
pub struct LossEstimate {
    reports: u32,
    percent: f64,
}

impl LossEstimate {
    /// Reports after which the path counts as known.
    pub const KNOWN_AFTER: u32 = 3;

    /// The loss assumed until the path is known, in percent: what a lossy
    /// mobile path loses, enough for FEC to carry every frame's
    /// redundancy, at a small cost on a clean one for a few seconds.
    pub const START_PERCENT: f64 = 10.0;

    /// How far one report above the estimate moves it.
    const RISE: f64 = 0.5;

    /// How far one report below the estimate moves it.
    const FALL: f64 = 0.1;

    /// Nothing reported yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// The receiver reported `percent` lost since its last report.
    pub fn on_report(&mut self, percent: u8) {
        let reported = f64::from(percent.min(100));
        self.percent = if self.reports == 0 {
            reported
        } else {
            let weight = if reported > self.percent {
                Self::RISE
            } else {
                Self::FALL
            };
            self.percent + weight * (reported - self.percent)
        };
        self.reports = self.reports.saturating_add(1);
    }

    /// Whether enough reports came to go by them alone.
    pub fn known(&self) -> bool {
        self.reports >= Self::KNOWN_AFTER
    }

    /// The loss to protect against, in percent (0–100).
    pub fn percent(&self) -> f64 {
        if self.known() {
            self.percent
        } else {
            self.percent.max(Self::START_PERCENT)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_loss_and_silence_is_not() {
        let mut meter = LossMeter::new();
        assert_eq!(meter.report(), None, "nothing heard");
        for seq in 100..200 {
            if seq % 10 != 3 {
                meter.on_packet(seq);
            }
        }
        assert_eq!(meter.report(), Some(10));
        // A pause: nothing was sent, nothing is due.
        assert_eq!(meter.report(), None);
        // A few packets wait for more before they are reported.
        for seq in 200..205 {
            meter.on_packet(seq);
        }
        assert_eq!(meter.report(), None);
        for seq in 205..250 {
            meter.on_packet(seq);
        }
        assert_eq!(meter.report(), Some(0));
    }

    #[test]
    fn reordering_and_duplicates_do_not_count_as_loss_and_wrapping_works() {
        let mut meter = LossMeter::new();
        for seq in [u32::MAX - 2, u32::MAX, u32::MAX - 1, 0, 1, 1, 2, 3, 4, 5, 6] {
            meter.on_packet(seq);
        }
        assert_eq!(meter.report(), Some(0), "10 due, 11 arrived");
        for seq in (7..27).filter(|seq| seq % 4 != 0) {
            meter.on_packet(seq);
        }
        assert_eq!(meter.report(), Some(25), "5 of 20 lost");
    }

    #[test]
    fn runs_of_losses_are_bursty_and_single_ones_are_not() {
        let mut single = LossMeter::new();
        let mut runs = LossMeter::new();
        for seq in 0..400 {
            // 10 % lost one at a time; 10 % lost three at a time.
            if seq % 10 != 5 {
                single.on_packet(seq);
            }
            if seq % 30 >= 3 {
                runs.on_packet(seq);
            }
            if seq % 50 == 49 {
                assert!(single.report().is_some() && runs.report().is_some());
            }
        }
        assert_eq!(single.mean_gap(), Some(1.0));
        assert!(!single.bursty());
        assert!(runs.bursty(), "{:?}", runs.mean_gap());
        // A few gaps are not evidence yet.
        let mut early = LossMeter::new();
        for seq in [0, 3, 4, 5, 6] {
            early.on_packet(seq);
        }
        assert_eq!(early.mean_gap(), None);
        assert!(!early.bursty());
    }

    /// Feeds `meter` one second (50 packets from `first`) in which the
    /// packets `lost` says are lost, and reports.
    fn second(meter: &mut LossMeter, first: u32, lost: impl Fn(u32) -> bool) -> Option<u8> {
        for seq in (first..first + 50).filter(|seq| !lost(*seq)) {
            meter.on_packet(seq);
        }
        meter.report()
    }

    #[test]
    fn a_bursty_path_stays_bursty_through_quiet_seconds_and_the_middle_ground() {
        let mut meter = LossMeter::new();
        // Three seconds with a burst of four each: bursty.
        for start in [0, 50, 100] {
            second(&mut meter, start, |seq| {
                (start + 10..start + 14).contains(&seq)
            });
        }
        assert!(meter.bursty(), "{:?}", meter.mean_gap());
        // Nineteen clean seconds: the gaps fade from memory, the judgement stays.
        for start in (150..1_100).step_by(50) {
            assert_eq!(second(&mut meter, start, |_| false), Some(0));
        }
        assert_eq!(meter.mean_gap(), None);
        assert!(meter.bursty());
        // Gaps of one, one and two packets (1.33 a gap, between the two
        // thresholds): it stays bursty; single losses turn it.
        let between = |start: u32| move |seq: u32| [5, 20, 30, 31].contains(&(seq - start));
        let single = |start: u32| move |seq: u32| [5, 20, 30, 35].contains(&(seq - start));
        for start in (1_100..2_100).step_by(50) {
            second(&mut meter, start, between(start));
        }
        assert!(meter.bursty(), "{:?}", meter.mean_gap());
        for start in (2_100..3_100).step_by(50) {
            second(&mut meter, start, single(start));
        }
        assert!(!meter.bursty(), "{:?}", meter.mean_gap());
        // From the start, 1.33 a gap never counted as bursty.
        let mut fresh = LossMeter::new();
        for start in (0..1_000).step_by(50) {
            second(&mut fresh, start, between(start));
        }
        assert!(!fresh.bursty(), "{:?}", fresh.mean_gap());
    }

    #[test]
    fn the_estimate_believes_a_rise_at_once_and_a_fall_slowly() {
        let mut estimate = LossEstimate::new();
        assert!(!estimate.known());
        assert_eq!(estimate.percent(), LossEstimate::START_PERCENT);
        // A clean path: protected until known, then nothing.
        for _ in 0..LossEstimate::KNOWN_AFTER {
            assert_eq!(estimate.percent(), LossEstimate::START_PERCENT);
            estimate.on_report(0);
        }
        assert!(estimate.known());
        assert_eq!(estimate.percent(), 0.0);
        // A burst: half way at once.
        estimate.on_report(30);
        assert_eq!(estimate.percent(), 15.0);
        // One quiet second takes a tenth of it away, not all of it.
        estimate.on_report(0);
        assert!((estimate.percent() - 13.5).abs() < 1e-9);
        // Ten quiet seconds take it under 5 %.
        for _ in 0..10 {
            estimate.on_report(0);
        }
        assert!(estimate.percent() < 5.0, "{}", estimate.percent());
        // A start on a lossier path than the default goes by the reports.
        let mut lossy = LossEstimate::new();
        lossy.on_report(25);
        assert_eq!(lossy.percent(), 25.0);
    }
}
