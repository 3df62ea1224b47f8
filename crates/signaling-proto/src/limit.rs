//! A token bucket: `rate` tokens a second, at most `burst` saved up. The
//! switchboard limits invitations with it, the server's glue requests and
//! audio datagrams. Sans-IO: every call takes `now`.

use std::time::Instant;

/// See the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket refilling `rate` tokens a second, holding at most
    /// `burst` (at least 1).
    pub fn new(rate: f64, burst: f64) -> Self {
        let burst = burst.max(1.0);
        Self {
            rate: rate.max(0.0),
            burst,
            tokens: burst,
            last: None,
        }
    }

    /// Takes `cost` tokens at `now` if there are that many; `false` (and
    /// nothing taken) if not.
    pub fn admit(&mut self, now: Instant, cost: f64) -> bool {
        if self.tokens(now) >= cost {
            self.tokens -= cost;
            true
        } else {
            false
        }
    }

    /// The tokens there are at `now` (refilled, none taken).
    pub fn tokens(&mut self, now: Instant) -> f64 {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        }
        self.last = Some(now);
        self.tokens
    }

    /// The most it holds.
    pub fn burst(&self) -> f64 {
        self.burst
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_burst_then_the_rate() {
        let start = Instant::now();
        let mut bucket = TokenBucket::new(10.0, 5.0);
        let admitted = (0..20).filter(|_| bucket.admit(start, 1.0)).count();
        assert_eq!(admitted, 5, "the burst");
        // One second later: ten more, never more than the burst at once.
        let later = start + Duration::from_secs(1);
        let admitted = (0..20).filter(|_| bucket.admit(later, 1.0)).count();
        assert_eq!(admitted, 5, "refilled to the burst, not beyond");
        let later = later + Duration::from_millis(100);
        assert!(bucket.admit(later, 1.0));
        assert!(!bucket.admit(later, 1.0));
        // A clock that goes backwards refills nothing.
        assert!(!bucket.admit(start, 1.0));
        // Costs: bytes, say.
        let mut bytes = TokenBucket::new(1_000.0, 1_500.0);
        assert!(bytes.admit(start, 1_200.0));
        assert!(!bytes.admit(start, 400.0));
        assert!(bytes.admit(start, 300.0));
    }
}
