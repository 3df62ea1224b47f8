//! What the load generator counts: relay delays in a lock-free histogram
//! that processes merge, and a process's CPU time and memory from `/proc`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Bucket width of the delay histogram.
const BUCKET_US: u64 = 10;
/// Delays up to this many buckets are told apart; longer ones share the last.
const BUCKETS: usize = 10_000;

/// Relay delays, counted in 10 µs buckets up to 100 ms, from any thread.
#[derive(Debug)]
pub(crate) struct DelayHistogram {
    buckets: Vec<AtomicU64>,
}

impl DelayHistogram {
    pub(crate) fn new() -> Self {
        Self {
            buckets: (0..=BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    pub(crate) fn record(&self, delay_us: u64) {
        let index = usize::try_from(delay_us / BUCKET_US).map_or(BUCKETS, |i| i.min(BUCKETS));
        if let Some(bucket) = self.buckets.get(index) {
            bucket.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The non-empty buckets as (index, count), and every bucket emptied.
    pub(crate) fn take(&self) -> Vec<(u32, u64)> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(index, bucket)| {
                let count = bucket.swap(0, Ordering::Relaxed);
                let index = u32::try_from(index).ok()?;
                (count > 0).then_some((index, count))
            })
            .collect()
    }
}

/// The `quantile` (0..=1) of merged sparse histograms, as a delay (the
/// upper edge of its bucket).
pub(crate) fn quantile(buckets: &[(u32, u64)], quantile: f64) -> Duration {
    let mut sorted = buckets.to_vec();
    sorted.sort_unstable();
    let total: u64 = sorted.iter().map(|(_, count)| count).sum();
    if total == 0 {
        return Duration::ZERO;
    }
    // Counts are far below 2^52: exact in f64.
    let rank = ((total as f64 * quantile).ceil() as u64).clamp(1, total);
    let mut seen = 0;
    for (index, count) in sorted {
        seen += count;
        if seen >= rank {
            return Duration::from_micros((u64::from(index) + 1) * BUCKET_US);
        }
    }
    Duration::ZERO
}

/// CPU time (user + system) a process has used; zero when unknown.
pub(crate) fn cpu_time(pid: u32) -> Duration {
    process_stats::ProcessStats::of(pid).map_or(Duration::ZERO, |stats| stats.cpu)
}

/// Resident set size of a process, in KiB; zero when unknown.
pub(crate) fn rss_kib(pid: u32) -> u64 {
    process_stats::ProcessStats::of(pid).map_or(0, |stats| stats.resident_kib())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_merged_histograms() {
        let a = DelayHistogram::new();
        let b = DelayHistogram::new();
        for delay in 0..99 {
            a.record(delay * 10 + 5);
        }
        b.record(50_000);
        let mut merged = a.take();
        merged.extend(b.take());
        assert_eq!(quantile(&merged, 0.5), Duration::from_micros(500));
        assert_eq!(quantile(&merged, 0.99), Duration::from_micros(990));
        assert_eq!(quantile(&merged, 1.0), Duration::from_micros(50_010));
        assert!(a.take().is_empty(), "taking empties the histogram");
        assert_eq!(quantile(&[], 0.99), Duration::ZERO);
    }

    #[test]
    fn long_delays_share_the_last_bucket() {
        let histogram = DelayHistogram::new();
        histogram.record(u64::MAX);
        histogram.record(10_000_000);
        assert_eq!(histogram.take(), vec![(10_000, 2)]);
    }

    #[test]
    fn this_process_uses_cpu_and_memory() {
        let pid = std::process::id();
        let start = std::time::Instant::now();
        let mut spin = 0_u64;
        while start.elapsed() < Duration::from_millis(50) {
            spin = spin.wrapping_add(1);
        }
        assert!(spin > 0);
        assert!(cpu_time(pid) > Duration::ZERO);
        assert!(rss_kib(pid) > 0);
        assert_eq!(rss_kib(u32::MAX), 0);
    }
}
