//! Wall-clock pacing for loops that must run in real time (file playback,
//! synthetic capture): a tick per period, no drift.

use std::time::{Duration, Instant};

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

    /// Sleeps until the next tick, then schedules the one after. If the
    /// caller fell more than a period behind, it skips ahead instead of
    /// bursting to catch up.
    pub fn wait(&mut self) {
        let now = Instant::now();
        if self.next > now {
            std::thread::sleep(self.next - now);
        } else if now - self.next > self.period {
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
}
