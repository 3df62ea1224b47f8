//! Failed logins slow down the account they tried and the address they
//! came from, never anyone else's:
//!
//! - **By account** (app, user): every login attempt takes a ticket, and
//!   after a few attempts since the account's last success each ticket is
//!   spaced after the one before by a delay that doubles with every attempt
//!   (capped). Parallel connections queue behind each other, so a storm of
//!   them gets no more guesses than one connection would; a ticket further
//!   out than the cap is refused at once (`RATE_LIMITED`) rather than held.
//!   Only the account's own success resets it.
//! - **By address** (an IPv6 address by its /64): after a few failures in a
//!   row each login from it waits a delay that doubles with every failure
//!   (capped); a success forgives one failure, so logging in to one's own
//!   account between guesses at others gains nothing.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use calling_api::UserId;

use crate::address::AddressBlock;

/// Attempts (failures, for an address) allowed before logins are delayed.
const FREE_FAILURES: u32 = 3;
/// The first delay; it doubles with each further failure…
const FIRST_DELAY: Duration = Duration::from_millis(100);
/// …up to this (below the login deadline, so an honest user still gets in).
const MAX_DELAY: Duration = Duration::from_secs(5);
/// An address or account with no failure for this long starts afresh.
const FORGET_AFTER: Duration = Duration::from_secs(600);
/// Addresses (and accounts) remembered at most; the oldest are forgotten
/// first.
const MAX_REMEMBERED: usize = 100_000;

/// An account: the app and the user in it.
pub(crate) type Account = (u32, UserId);

/// The delay after `count` failures (or attempts).
fn delay_after(count: u32) -> Duration {
    if count < FREE_FAILURES {
        return Duration::ZERO;
    }
    let doublings = (count - FREE_FAILURES).min(16);
    FIRST_DELAY.saturating_mul(1 << doublings).min(MAX_DELAY)
}

/// Failures from one address.
#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

/// Login attempts at one account since its last success.
#[derive(Debug, Clone, Copy)]
struct Attempts {
    count: u32,
    /// When the next attempt may be checked.
    next_ticket: Instant,
    last: Instant,
}

/// What a login attempt is to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ticket {
    /// Wait this long, then be checked.
    CheckAfter(Duration),
    /// Refused unchecked: the account's queue reaches past the cap.
    Refused,
}

/// Records kept per key, at most [`MAX_REMEMBERED`], the stale ones and
/// then the oldest forgotten first.
#[derive(Debug)]
struct Remembered<K, V>(HashMap<K, V>);

impl<K: Hash + Eq + Clone, V> Remembered<K, V> {
    fn entry(&mut self, key: &K, now: Instant, last: impl Fn(&V) -> Instant, new: V) -> &mut V {
        if self.0.len() >= MAX_REMEMBERED && !self.0.contains_key(key) {
            self.0
                .retain(|_, record| now.saturating_duration_since(last(record)) <= FORGET_AFTER);
            if self.0.len() >= MAX_REMEMBERED
                && let Some(oldest) = self
                    .0
                    .iter()
                    .min_by_key(|(_, record)| last(record))
                    .map(|(key, _)| key.clone())
            {
                self.0.remove(&oldest);
            }
        }
        self.0.entry(key.clone()).or_insert(new)
    }
}

impl<K, V> Default for Remembered<K, V> {
    fn default() -> Self {
        Self(HashMap::new())
    }
}

#[derive(Debug, Default)]
struct Books {
    addresses: Remembered<AddressBlock, Failures>,
    accounts: Remembered<Account, Attempts>,
}

/// Failed logins per address and per account. Sans-IO: every call takes
/// `now`.
#[derive(Debug, Default)]
pub(crate) struct LoginThrottle {
    books: Mutex<Books>,
}

impl LoginThrottle {
    fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A login from `address` for `account` (`None`: its frame names none)
    /// arrives at `now`: how long it waits before it is checked, or that it
    /// is refused unchecked. Every ticket counts as an attempt at the
    /// account until the account's next success.
    pub(crate) fn ticket(
        &self,
        address: AddressBlock,
        account: Option<&Account>,
        now: Instant,
    ) -> Ticket {
        let mut books = self.books();
        let address_wait = books
            .addresses
            .0
            .get(&address)
            .map_or(Duration::ZERO, |record| {
                if now.saturating_duration_since(record.last) > FORGET_AFTER {
                    return Duration::ZERO;
                }
                (record.last + delay_after(record.count)).saturating_duration_since(now)
            });
        let Some(account) = account else {
            return Ticket::CheckAfter(address_wait);
        };
        let fresh = Attempts {
            count: 0,
            next_ticket: now,
            last: now,
        };
        let record = books
            .accounts
            .entry(account, now, |record| record.last, fresh);
        if now.saturating_duration_since(record.last) > FORGET_AFTER {
            *record = fresh;
        }
        let slot = record.next_ticket.max(now);
        let account_wait = slot - now;
        if account_wait > MAX_DELAY {
            return Ticket::Refused;
        }
        record.count = record.count.saturating_add(1);
        record.next_ticket = slot + delay_after(record.count);
        record.last = now;
        Ticket::CheckAfter(address_wait.max(account_wait))
    }

    /// A login from `address` failed at `now`.
    pub(crate) fn failed(&self, address: AddressBlock, now: Instant) {
        let mut books = self.books();
        let fresh = Failures {
            count: 0,
            last: now,
        };
        let record = books
            .addresses
            .entry(&address, now, |record| record.last, fresh);
        if now.saturating_duration_since(record.last) > FORGET_AFTER {
            record.count = 0;
        }
        record.count = record.count.saturating_add(1);
        record.last = now;
    }

    /// A login from `address` for `account` succeeded: the account starts
    /// afresh, the address is forgiven one failure.
    pub(crate) fn succeeded(&self, address: AddressBlock, account: &Account) {
        let mut books = self.books();
        books.accounts.0.remove(account);
        if let Some(record) = books.addresses.0.get_mut(&address) {
            record.count = record.count.saturating_sub(1);
            if record.count == 0 {
                books.addresses.0.remove(&address);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(user: &str) -> Account {
        (1, UserId::new(user).unwrap())
    }

    fn wait(ticket: Ticket) -> Duration {
        match ticket {
            Ticket::CheckAfter(wait) => wait,
            Ticket::Refused => panic!("refused"),
        }
    }

    #[test]
    fn address_delays_double_per_failure_for_that_address_only() {
        let throttle = LoginThrottle::default();
        let start = Instant::now();
        let mallory = AddressBlock::of("192.0.2.1".parse().unwrap());
        let alice = AddressBlock::of("192.0.2.2".parse().unwrap());
        for _ in 0..FREE_FAILURES {
            assert_eq!(wait(throttle.ticket(mallory, None, start)), Duration::ZERO);
            throttle.failed(mallory, start);
        }
        assert_eq!(wait(throttle.ticket(mallory, None, start)), FIRST_DELAY);
        throttle.failed(mallory, start);
        assert_eq!(wait(throttle.ticket(mallory, None, start)), FIRST_DELAY * 2);
        for _ in 0..20 {
            throttle.failed(mallory, start);
        }
        assert_eq!(wait(throttle.ticket(mallory, None, start)), MAX_DELAY);
        assert_eq!(
            wait(throttle.ticket(mallory, None, start + Duration::from_secs(2))),
            MAX_DELAY - Duration::from_secs(2)
        );
        assert_eq!(wait(throttle.ticket(alice, None, start)), Duration::ZERO);
        let later = start + FORGET_AFTER + Duration::from_secs(1);
        assert_eq!(wait(throttle.ticket(mallory, None, later)), Duration::ZERO);
    }

    #[test]
    fn parallel_attempts_at_one_account_queue_and_the_queue_has_an_end() {
        let throttle = LoginThrottle::default();
        let now = Instant::now();
        let bob = account("bob");
        // Sixty connections at once, from sixty addresses: three free, then
        // spaced 100, 200, 400… ms after each other, and the ones that
        // would wait past the cap are refused at once.
        let tickets: Vec<_> = (0..60_u8)
            .map(|host| {
                let address = AddressBlock::of(format!("198.51.100.{host}").parse().unwrap());
                throttle.ticket(address, Some(&bob), now)
            })
            .collect();
        let waits: Vec<_> = tickets
            .iter()
            .filter_map(|ticket| match ticket {
                Ticket::CheckAfter(wait) => Some(wait.as_millis()),
                Ticket::Refused => None,
            })
            .collect();
        assert_eq!(waits, [0, 0, 0, 100, 300, 700, 1_500, 3_100]);
        // Another account is not slowed.
        let carol = account("carol");
        let here = AddressBlock::of("198.51.100.1".parse().unwrap());
        assert_eq!(
            wait(throttle.ticket(here, Some(&carol), now)),
            Duration::ZERO
        );
    }

    #[test]
    fn only_the_accounts_own_success_resets_it_and_a_success_forgives_an_address_one_failure() {
        let throttle = LoginThrottle::default();
        let start = Instant::now();
        let here = AddressBlock::of("192.0.2.9".parse().unwrap());
        let (victim, own) = (account("victim"), account("mallory"));
        // Three bad guesses at the victim, one good login at one's own
        // account, over and over: the guesses are spaced further and
        // further apart.
        let mut now = start;
        let mut guess_waits = Vec::new();
        for _ in 0..4 {
            for _ in 0..3 {
                let waited = wait(throttle.ticket(here, Some(&victim), now));
                now += waited;
                guess_waits.push(waited.as_millis());
                throttle.failed(here, now);
            }
            let waited = wait(throttle.ticket(here, Some(&own), now));
            now += waited;
            throttle.succeeded(here, &own);
        }
        // (Mallory's own logins wait too: the address's delay.)
        assert_eq!(guess_waits[..3], [0, 0, 0], "{guess_waits:?}");
        assert_eq!(guess_waits[10..], [5_000, 5_000], "{guess_waits:?}");
        let guessing: u128 = guess_waits.iter().sum();
        assert!(guessing >= 15_000, "{guess_waits:?}");
        // The victim's own success resets the victim's account.
        throttle.succeeded(here, &victim);
        let elsewhere = AddressBlock::of("203.0.113.1".parse().unwrap());
        assert_eq!(
            wait(throttle.ticket(elsewhere, Some(&victim), now)),
            Duration::ZERO
        );
    }
}
