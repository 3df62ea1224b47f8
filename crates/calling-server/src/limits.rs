//! What one connection may do, enforced in its own task: audio datagrams
//! and signaling messages through token buckets, at most a few requests
//! awaiting their replies. Every refusal is counted for the server's
//! statistics, and logged at most once a minute per connection.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use signaling_proto::{ConnId, TokenBucket};
use tracing::warn;

use crate::config::ConnectionLimits;

/// Requests of one connection the hub may hold unanswered. Each request
/// causes at most 18 messages to its sender (an invite of 16 users: the
/// ack, 16 answers and the end), so 8 never fill a 256-message outbox:
/// a client that pipelines is paced, never disconnected.
pub(crate) const MAX_REQUESTS_IN_FLIGHT: usize = 8;

/// How often one connection's refusals are logged, at most.
const WARN_EVERY: Duration = Duration::from_secs(60);

/// Refusals so far, server-wide.
#[derive(Debug, Default)]
pub(crate) struct LimitCounters {
    media_dropped: AtomicU64,
    requests_refused: AtomicU64,
    closed_for_flooding: AtomicU64,
    write_timeouts: AtomicU64,
    logins_delayed: AtomicU64,
}

/// A snapshot of the limits' counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LimitCounts {
    /// Audio datagrams dropped over a sender's rate, never relayed.
    pub media_dropped: u64,
    /// Signaling messages refused over a connection's rate.
    pub requests_refused: u64,
    /// Connections closed for going on over their rate (`RATE_LIMITED`).
    pub closed_for_flooding: u64,
    /// Connections closed because writes to them blocked (not reading).
    pub write_timeouts: u64,
    /// Logins answered late because their address kept failing.
    pub logins_delayed: u64,
}

impl LimitCounters {
    pub(crate) fn counts(&self) -> LimitCounts {
        LimitCounts {
            media_dropped: self.media_dropped.load(Ordering::Relaxed),
            requests_refused: self.requests_refused.load(Ordering::Relaxed),
            closed_for_flooding: self.closed_for_flooding.load(Ordering::Relaxed),
            write_timeouts: self.write_timeouts.load(Ordering::Relaxed),
            logins_delayed: self.logins_delayed.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn login_delayed(&self) {
        self.logins_delayed.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn write_timed_out(&self) {
        self.write_timeouts.fetch_add(1, Ordering::Relaxed);
    }
}

/// What a connection's next signaling message meets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Within the rate: pass it on.
    Admit,
    /// Over the rate: answer `RATE_LIMITED` (if it is a request) and drop it.
    Refuse,
    /// Over the rate for as long again: close the connection.
    Close,
}

/// One connection's budgets. Sans-IO: every call takes `now`.
#[derive(Debug)]
pub(crate) struct ConnectionBudget {
    conn: ConnId,
    packets: TokenBucket,
    bytes: TokenBucket,
    requests: TokenBucket,
    /// Refusals it may collect, at the request rate, before it is closed.
    patience: TokenBucket,
    last_warned: Option<Instant>,
}

impl ConnectionBudget {
    pub(crate) fn new(conn: ConnId, limits: &ConnectionLimits) -> Self {
        let per_second = |rate: u32| TokenBucket::new(f64::from(rate), f64::from(rate));
        let requests = TokenBucket::new(
            f64::from(limits.requests_per_sec),
            f64::from(limits.request_burst),
        );
        Self {
            conn,
            packets: per_second(limits.media_packets_per_sec),
            bytes: per_second(limits.media_bytes_per_sec),
            requests,
            patience: requests,
            last_warned: None,
        }
    }

    /// Whether an audio datagram of `len` bytes may be relayed.
    pub(crate) fn admit_datagram(
        &mut self,
        now: Instant,
        len: usize,
        counters: &LimitCounters,
    ) -> bool {
        // Datagrams are at most a few KiB: exact in f64.
        if self.packets.admit(now, 1.0) && self.bytes.admit(now, len as f64) {
            return true;
        }
        counters.media_dropped.fetch_add(1, Ordering::Relaxed);
        self.warn(now, "audio over its rate: dropped, not relayed");
        false
    }

    /// What the next signaling message meets.
    pub(crate) fn admit_message(&mut self, now: Instant, counters: &LimitCounters) -> Verdict {
        if self.requests.admit(now, 1.0) {
            return Verdict::Admit;
        }
        counters.requests_refused.fetch_add(1, Ordering::Relaxed);
        if self.patience.admit(now, 1.0) {
            self.warn(now, "signaling over its rate: refused");
            Verdict::Refuse
        } else {
            counters.closed_for_flooding.fetch_add(1, Ordering::Relaxed);
            warn!(conn = ?self.conn, "signaling over its rate for too long: closing");
            Verdict::Close
        }
    }

    fn warn(&mut self, now: Instant, what: &str) {
        if self
            .last_warned
            .is_none_or(|last| now.duration_since(last) >= WARN_EVERY)
        {
            self.last_warned = Some(now);
            warn!(conn = ?self.conn, what, "rate limit (logged once a minute per connection)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_is_refused_then_closed_and_audio_is_capped() {
        let limits = ConnectionLimits {
            requests_per_sec: 10,
            request_burst: 5,
            ..ConnectionLimits::DEFAULT
        };
        let counters = LimitCounters::default();
        let mut budget = ConnectionBudget::new(ConnId(1), &limits);
        let now = Instant::now();
        let verdicts: Vec<Verdict> = (0..12)
            .map(|_| budget.admit_message(now, &counters))
            .collect();
        assert_eq!(&verdicts[..5], [Verdict::Admit; 5]);
        assert_eq!(&verdicts[5..10], [Verdict::Refuse; 5]);
        assert_eq!(verdicts[10], Verdict::Close);
        let counts = counters.counts();
        assert_eq!(
            (counts.requests_refused, counts.closed_for_flooding),
            (7, 2)
        );

        let relayed = (0..1_000)
            .filter(|_| budget.admit_datagram(now, 100, &counters))
            .count();
        assert_eq!(
            relayed, limits.media_packets_per_sec as usize,
            "a second's worth of packets"
        );
        let mut big = ConnectionBudget::new(ConnId(2), &ConnectionLimits::DEFAULT);
        let relayed = (0..100)
            .filter(|_| big.admit_datagram(now, 1_200, &counters))
            .count();
        assert_eq!(relayed, 26, "a second's worth of bytes: 32000 / 1200");
    }
}
