//! Failed logins slow their own address down, never anyone else's: after a
//! few failures in a row, each further login from that address is answered
//! only after a delay that doubles with every failure (capped), and a
//! success forgets the address. IPv6 addresses count by their /64, the
//! block one subscriber usually holds.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::address::AddressBlock;

/// Failures an address may have before its logins are delayed.
const FREE_FAILURES: u32 = 3;
/// The first delay; it doubles with each further failure…
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// …up to this (below the login deadline, so an honest user still gets in).
const MAX_DELAY: Duration = Duration::from_secs(5);
/// An address with no failure for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses remembered at most; the oldest are forgotten first.
const MAX_ADDRESSES: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Failed logins per address. Sans-IO: every call takes `now`.
#[derive(Debug, Default)]
pub(crate) struct LoginThrottle {
    failures: Mutex<HashMap<AddressBlock, Failures>>,
}

impl LoginThrottle {
    /// How long a login from `address` must wait before it is checked.
    pub(crate) fn delay(&self, address: AddressBlock, now: Instant) -> Duration {
        let failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        let Some(record) = failures.get(&address) else {
            return Duration::ZERO;
        };
        if record.count < FREE_FAILURES || now.duration_since(record.last) > FORGET_AFTER {
            return Duration::ZERO;
        }
        let doublings = (record.count - FREE_FAILURES).min(16);
        let delay = FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY);
        (record.last + delay).saturating_duration_since(now)
    }

    /// A login from `address` failed at `now`.
    pub(crate) fn failed(&self, address: AddressBlock, now: Instant) {
        let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
        if failures.len() >= MAX_ADDRESSES && !failures.contains_key(&address) {
            failures.retain(|_, record| now.duration_since(record.last) <= FORGET_AFTER);
            if failures.len() >= MAX_ADDRESSES
                && let Some(oldest) = failures
                    .iter()
                    .min_by_key(|(_, record)| record.last)
                    .map(|(key, _)| *key)
            {
                failures.remove(&oldest);
            }
        }
        let record = failures.entry(address).or_insert(Failures {
            count: 0,
            last: now,
        });
        if now.duration_since(record.last) > FORGET_AFTER {
            record.count = 0;
        }
        record.count = record.count.saturating_add(1);
        record.last = now;
    }

    /// A login from `address` succeeded: it starts afresh.
    pub(crate) fn succeeded(&self, address: AddressBlock) {
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_per_failure_for_that_address_only() {
        let throttle = LoginThrottle::default();
        let start = Instant::now();
        let mallory = AddressBlock::of("192.0.2.1".parse().unwrap());
        let alice = AddressBlock::of("192.0.2.2".parse().unwrap());
        for _ in 0..FREE_FAILURES {
            assert_eq!(throttle.delay(mallory, start), Duration::ZERO);
            throttle.failed(mallory, start);
        }
        assert_eq!(throttle.delay(mallory, start), FIRST_DELAY);
        throttle.failed(mallory, start);
        assert_eq!(throttle.delay(mallory, start), FIRST_DELAY * 2);
        for _ in 0..20 {
            throttle.failed(mallory, start);
        }
        assert_eq!(throttle.delay(mallory, start), MAX_DELAY);
        assert_eq!(
            throttle.delay(mallory, start + Duration::from_secs(2)),
            MAX_DELAY - Duration::from_secs(2)
        );
        assert_eq!(throttle.delay(alice, start), Duration::ZERO);
        assert_eq!(
            throttle.delay(mallory, start + FORGET_AFTER + Duration::from_secs(1)),
            Duration::ZERO
        );
        throttle.succeeded(mallory);
        assert_eq!(throttle.delay(mallory, start), Duration::ZERO);
    }
}
