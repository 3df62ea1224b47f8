//! What a receiver loses of one sender's packets, interval by interval, for
//! the report that lets the sender's encoder protect as much as the path
//! needs (Opus in-band FEC follows the loss it is told).
//!
//! Senders number only the packets they send (silence left out by DTX is
//! not numbered), so a gap in sequence numbers is loss, and its length a
//! burst's: the meter also says whether losses come in bursts
//! ([`LossMeter::bursty`]), which in-band FEC recovers badly and DRED
//! well. Sans-IO: the glue calls [`LossMeter::on_packet`] per packet and
//! [`LossMeter::report`] once per reporting interval.

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
}

impl LossMeter {
    /// The fewest packets a report speaks for: fewer say little (a second
    /// of speech is 50).
    pub const MIN_DUE: u32 = 10;

    /// Mean packets per gap from which losses count as bursty: random
    /// loss of p% has runs of 1 / (1 − p) on average (1.25 at 20 %), a
    /// congested or fading path's are longer.
    pub const BURSTY_MEAN_GAP: f64 = 1.5;

    /// The fewest recent gaps [`LossMeter::bursty`] judges from.
    const MIN_GAPS: f64 = 2.0;

    /// How much of the past each report keeps (a few seconds' memory).
    const GAP_MEMORY: f64 = 0.8;

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
    /// packets or more per gap): then DRED recovers them better than
    /// in-band FEC, which only recovers a burst's last packet. (A packet
    /// that arrives out of order after a later one first counts as a gap.)
    pub fn bursty(&self) -> bool {
        self.mean_gap()
            .is_some_and(|mean| mean >= Self::BURSTY_MEAN_GAP)
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
}
