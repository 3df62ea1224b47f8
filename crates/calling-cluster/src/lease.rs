//! Leases: how a node knows it still holds something the store grants for a
//! while (its place in the node registry, the control role).
//!
//! The store (Redis) keeps a key for `duration` from the moment it applies
//! a request. The holder cannot know that moment, only when it *sent* the
//! request, which is earlier: so it counts its lease from the send time,
//! shortened by a margin for clocks that run at different rates
//! ([`Lease::valid_until`]). When the store cannot be reached the lease
//! simply runs out; another node can take it over only after the store's
//! key expired, which is later. That is the whole safety argument: two
//! nodes never both believe they hold the control role at one instant of
//! the store's clock, as long as clock rates differ by less than the
//! margin.
//!
//! Sans-IO: [`Lease::poll_request`] says when to ask the store,
//! [`Lease::handle_reply`] takes its answer, [`Lease::holds`] is the truth
//! at `now`.

use std::time::{Duration, Instant};

/// What to ask the store for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseRequest {
    /// Take the lease if nobody holds it.
    Acquire,
    /// Extend the lease this node holds.
    Renew,
}

/// The store's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseReply {
    /// Granted (taken or extended) for the lease's duration.
    Granted,
    /// Someone else holds it (or held it after ours lapsed).
    Refused,
    /// The store could not be reached or failed: nothing is known.
    Unreachable,
}

/// How a lease is timed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseTiming {
    /// How long the store keeps a granted lease.
    pub duration: Duration,
    /// How often a holder renews (a third of the duration leaves two
    /// chances before it lapses).
    pub renew_every: Duration,
    /// How soon to ask again after an unreachable store.
    pub retry_after: Duration,
}

impl LeaseTiming {
    /// A node is dead to the others 3 s after its last renewal at most:
    /// renewed every second, retried every 250 ms.
    pub const DEFAULT: Self = Self {
        duration: Duration::from_secs(3),
        renew_every: Duration::from_secs(1),
        retry_after: Duration::from_millis(250),
    };

    /// How long a grant counts for the holder: the duration less 10 %,
    /// the margin for clocks that run at different rates.
    pub fn trusted(&self) -> Duration {
        self.duration - self.duration / 10
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Not held; ask (again) at `next`.
    Free { next: Instant },
    /// Held until `valid_until`; renew at `next`.
    Held { valid_until: Instant, next: Instant },
}

/// One lease as its (would-be) holder sees it. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Lease {
    timing: LeaseTiming,
    state: State,
    /// A request is out, sent at this instant.
    in_flight: Option<(Instant, LeaseRequest)>,
}

impl Lease {
    /// A lease not yet held, to be asked for at once.
    pub fn new(timing: LeaseTiming, now: Instant) -> Self {
        Self {
            timing,
            state: State::Free { next: now },
            in_flight: None,
        }
    }

    /// Whether the lease is held at `now`.
    pub fn holds(&self, now: Instant) -> bool {
        matches!(self.state, State::Held { valid_until, .. } if now < valid_until)
    }

    /// Until when a held lease counts.
    pub fn valid_until(&self) -> Option<Instant> {
        match self.state {
            State::Held { valid_until, .. } => Some(valid_until),
            State::Free { .. } => None,
        }
    }

    /// The request to send now, if one is due; it counts as sent at `now`.
    /// Call it whenever [`Lease::poll_timeout`] comes: it is also where a
    /// held lease lapses.
    pub fn poll_request(&mut self, now: Instant) -> Option<LeaseRequest> {
        if let State::Held { valid_until, next } = self.state
            && now >= valid_until
        {
            // Lapsed while the store was away: it may be someone
            // else's by now, and is asked for afresh.
            self.state = State::Free { next };
        }
        if self.in_flight.is_some() {
            return None;
        }
        let request = match self.state {
            State::Free { next } if now >= next => LeaseRequest::Acquire,
            State::Held { next, .. } if now >= next => LeaseRequest::Renew,
            _ => return None,
        };
        self.in_flight = Some((now, request));
        Some(request)
    }

    /// The store's answer to the request in flight, arriving at `now`.
    pub fn handle_reply(&mut self, now: Instant, reply: LeaseReply) {
        let Some((sent_at, _)) = self.in_flight.take() else {
            return;
        };
        let retry = now + self.timing.retry_after;
        self.state = match (reply, self.state) {
            (LeaseReply::Granted, _) if now < sent_at + self.timing.trusted() => State::Held {
                valid_until: sent_at + self.timing.trusted(),
                next: sent_at + self.timing.renew_every,
            },
            // Granted, but the answer came too late to count on.
            (LeaseReply::Granted, _) => State::Free { next: now },
            // Someone else holds it: ask again as often as a holder renews.
            (LeaseReply::Refused, _) => State::Free {
                next: now + self.timing.renew_every,
            },
            (LeaseReply::Unreachable, State::Held { valid_until, .. }) if now < valid_until => {
                State::Held {
                    valid_until,
                    next: retry,
                }
            }
            (LeaseReply::Unreachable, _) => State::Free { next: retry },
        };
    }

    /// The request in flight got no answer (the glue gave up on it): as an
    /// unreachable store.
    pub fn handle_lost_request(&mut self, now: Instant) {
        self.handle_reply(now, LeaseReply::Unreachable);
    }

    /// Asks again by `at` at the latest while the lease is not held (a
    /// follower whose holder went quiet wants to know sooner who holds it).
    pub fn ask_by(&mut self, at: Instant) {
        if let State::Free { next } = &mut self.state {
            *next = (*next).min(at);
        }
    }

    /// Gives the lease up (the glue also deletes the key).
    pub fn release(&mut self, now: Instant) {
        self.in_flight = None;
        self.state = State::Free {
            next: now + self.timing.retry_after,
        };
    }

    /// When to come back: the next request, or the lapse of a held lease.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.in_flight.is_some() {
            return self.valid_until();
        }
        Some(match self.state {
            State::Free { next } => next,
            State::Held { valid_until, next } => next.min(valid_until),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: LeaseTiming = LeaseTiming::DEFAULT;

    #[test]
    fn a_grant_counts_from_the_send_less_the_margin() {
        let start = Instant::now();
        let mut lease = Lease::new(TIMING, start);
        assert_eq!(lease.poll_request(start), Some(LeaseRequest::Acquire));
        assert_eq!(lease.poll_request(start), None, "one request at a time");
        // The answer takes 500 ms; the lease still counts from the send.
        lease.handle_reply(start + Duration::from_millis(500), LeaseReply::Granted);
        assert!(lease.holds(start + Duration::from_millis(2_699)));
        assert!(!lease.holds(start + Duration::from_millis(2_700)));
        assert_eq!(lease.poll_request(start + Duration::from_millis(999)), None);
        assert_eq!(
            lease.poll_request(start + TIMING.renew_every),
            Some(LeaseRequest::Renew)
        );
    }

    #[test]
    fn an_unreachable_store_lets_the_lease_lapse_and_then_it_is_acquired_anew() {
        let start = Instant::now();
        let mut lease = Lease::new(TIMING, start);
        lease.poll_request(start);
        lease.handle_reply(start, LeaseReply::Granted);
        let mut now = start + TIMING.renew_every;
        while lease.holds(now) {
            if lease.poll_request(now).is_some() {
                lease.handle_reply(now, LeaseReply::Unreachable);
            }
            now += Duration::from_millis(50);
        }
        assert!(now <= start + TIMING.trusted() + Duration::from_millis(50));
        // The lapse itself is a deadline; the next request follows the
        // retry pace, and asks for the lease afresh.
        assert_eq!(lease.poll_timeout(), Some(start + TIMING.trusted()));
        let mut request = None;
        while request.is_none() {
            now += Duration::from_millis(50);
            request = lease.poll_request(now);
        }
        assert!(now <= start + TIMING.trusted() + TIMING.retry_after);
        assert_eq!(request, Some(LeaseRequest::Acquire));
        lease.handle_reply(now, LeaseReply::Refused);
        assert!(!lease.holds(now));
        assert_eq!(lease.poll_timeout(), Some(now + TIMING.renew_every));
    }
}
