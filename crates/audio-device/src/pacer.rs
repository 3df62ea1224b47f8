//! Wall-clock pacing for loops that must run in real time (file playback,
//! synthetic capture, the SDK's capture and playout threads): a tick per
//! period, no drift.

use std::time::{Duration, Instant};

/// The most a paced loop may fall behind and still make up every tick it
/// missed. A loop late by less runs its missed ticks at once, so the
/// samples it moves per second stay exact: a playout thread that skipped
/// ticks after a scheduling hiccup would leave its device (and the echo
/// canceller's reference) short of what it played, which moves the echo
/// path as a device switch does. A loop later than this was stopped (a
/// suspended laptop, a debugger), and its ticks are skipped instead of
/// replayed in a burst.
pub const CATCH_UP_LIMIT: Duration = Duration::from_millis(250);

/// Paces a loop to the wall clock: one tick per period, without drift
/// (deadlines advance by whole periods, whatever the loop's jitter).
///
/// For real-time playback of files and synthetic sources; tests use a
/// virtual clock and no pacer.
#[derive(Debug)]
pub struct Pacer {
    period: Duration,
    next: Instant,
}

impl Pacer {
    /// A pacer ticking every `period`, the first tick now.
    pub fn new(period: Duration) -> Self {
        Self {
            period,
            next: Instant::now(),
        }
    }

    /// Sleeps until the next tick, then schedules the one after. A caller
    /// behind by up to [`CATCH_UP_LIMIT`] gets its missed ticks at once;
    /// one behind by more starts afresh from now.
    pub fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else if now - self.next > CATCH_UP_LIMIT.max(self.period) {
            self.next = now;
        }
        self.next += self.period;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_do_not_drift() {
        let mut pacer = Pacer::new(Duration::from_millis(5));
        let started = Instant::now();
        for _ in 0..20 {
            pacer.wait();
        }
        // 20 ticks, the first immediate: at least 19 periods have passed.
        assert!(started.elapsed() >= Duration::from_millis(95));
    }

    /// Counts the ticks `pacer` gives at once, without sleeping.
    fn ticks_due_now(pacer: &mut Pacer) -> usize {
        let mut due = 0;
        while pacer.next <= Instant::now() && due < 1_000 {
            pacer.wait();
            due += 1;
        }
        due
    }

    #[test]
    fn a_loop_that_fell_behind_makes_up_its_missed_ticks() {
        let period = Duration::from_millis(5);
        let mut pacer = Pacer::new(period);
        pacer.wait();
        // The loop was held up for eight periods (however long the
        // scheduler really took, the pacer's deadline says so).
        pacer.next -= 8 * period;
        let due = ticks_due_now(&mut pacer);
        assert!(due >= 8, "{due} ticks made up, 8 missed");
        // A slow machine may add a few more, never a burst of hundreds.
        assert!(due < 8 + 40, "{due}");
    }

    #[test]
    fn a_loop_that_was_stopped_starts_afresh() {
        let period = Duration::from_millis(5);
        let mut pacer = Pacer::new(period);
        pacer.wait();
        pacer.next -= CATCH_UP_LIMIT * 4;
        let due = ticks_due_now(&mut pacer);
        // One tick now, none of the missed ones replayed.
        assert!(due <= 2, "{due} ticks replayed after a stop");
    }
}
