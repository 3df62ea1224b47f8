//! Admission: whether a new connection, from any transport, is worth a
//! handshake. One policy and one set of counts for every transport: the
//! connection cap, the per-address cap, the cap on connections not logged
//! in yet and the handshake budget. A transport describes its attempt
//! ([`Attempt`]) and carries out the [`Decision`]; a third transport is one
//! more caller. Sans-IO apart from the counts it shares: every decision
//! takes `now`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use signaling_proto::TokenBucket;

use crate::address::AddressBlock;

/// What the server admits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Connections open at once (handshaking included); more are refused.
    pub max_connections: usize,
    /// Connections open at once from one IP address (an IPv6 address
    /// counts by its /64, the block one subscriber usually holds); more are
    /// refused.
    pub max_connections_per_ip: usize,
    /// Above this many open connections, a client must prove its address
    /// (QUIC: a Retry round trip) before the server spends a handshake on it.
    pub validate_addresses_above: usize,
    /// How long a client has to finish the handshake and open its stream
    /// (closed with `TIMEOUT` past it); the server gives it as long again
    /// to send its login.
    pub handshake_timeout: Duration,
    /// Connections open at once that have not logged in yet; more are
    /// refused, so that
    /// connections that never log in cannot crowd out the users.
    pub max_before_login: usize,
    /// Handshakes a second the server starts (as many at once). Past it, a
    /// client that has not proved its address is asked to (a round trip
    /// that costs the server nothing), and one that has is refused: a
    /// handshake flood cannot take the CPU the logged-in users need.
    pub handshakes_per_sec: usize,
}

impl ServerLimits {
    /// The limits a server runs with unless configured otherwise.
    pub const DEFAULT: Self = Self {
        max_connections: 20_000,
        max_connections_per_ip: 64,
        validate_addresses_above: 2_000,
        handshake_timeout: Duration::from_secs(10),
        max_before_login: 1_000,
        handshakes_per_sec: 1_000,
    };
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// What the admission policy turned away so far (a snapshot).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AdmissionCounts {
    /// Refused: the connection cap was reached.
    pub refused_full: u64,
    /// Refused: the address (or /64) has its connections already.
    pub refused_per_address: u64,
    /// Refused: too many connections have not logged in yet.
    pub refused_before_login: u64,
    /// Refused: over the handshake budget, address already proved.
    pub refused_handshake_budget: u64,
    /// Asked to prove their address first (QUIC's Retry).
    pub retried: u64,
}

#[derive(Debug, Default)]
struct AdmissionCounters {
    refused_full: AtomicU64,
    refused_per_address: AtomicU64,
    refused_before_login: AtomicU64,
    refused_handshake_budget: AtomicU64,
    retried: AtomicU64,
}

/// Whether the client has shown that it receives at the address it
/// claims.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AddressProof {
    /// It has: a TCP handshake, or a QUIC Retry token.
    Proven,
    /// Not yet; `can_prove`: the transport can ask it to (QUIC can, once).
    Unproven { can_prove: bool },
}

/// A connection attempt as a transport describes it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Attempt {
    /// Where it comes from.
    pub(crate) remote: SocketAddr,
    /// Connections the transport has open now, handshaking included.
    pub(crate) open: usize,
    /// Whether the address is proved.
    pub(crate) address: AddressProof,
}

/// Why an attempt was turned away (for the log; the counts say how often).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Full,
    PerAddress,
    BeforeLogin,
    HandshakeBudget,
}

/// What the transport does with an attempt.
#[derive(Debug)]
pub(crate) enum Decision {
    /// Handshake; keep the slots as long as the connection.
    Admit(Admitted),
    /// Ask the client to prove its address, then decide again.
    ProveAddress,
    /// Turn it away.
    Refuse(Refusal),
}

/// The slots an admitted connection holds.
#[derive(Debug)]
pub(crate) struct Admitted {
    /// Its address block's place: held, never read, as long as the
    /// connection is served (dropping it frees the place).
    _address: AddressSlot,
    /// Its place among those not logged in yet, until the login.
    pub(crate) pre_login: PreLoginSlot,
}

/// The places held: per address block, and in all (kept beside the map so
/// that the cap over every transport is read without a walk of the map).
#[derive(Debug, Default)]
struct Held {
    by_block: HashMap<AddressBlock, usize>,
    total: usize,
}

type PerAddress = Arc<Mutex<Held>>;

/// The server's admission policy and its counts (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Admission {
    limits: ServerLimits,
    per_address: PerAddress,
    before_login: Arc<AtomicUsize>,
    handshakes: Mutex<TokenBucket>,
    counters: AdmissionCounters,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Admission {
    pub(crate) fn new(limits: ServerLimits) -> Self {
        // A handshake budget is a count well within f64's exact range.
        let per_sec = limits.handshakes_per_sec as f64;
        Self {
            limits,
            per_address: Arc::default(),
            before_login: Arc::default(),
            handshakes: Mutex::new(TokenBucket::new(per_sec, per_sec)),
            counters: AdmissionCounters::default(),
        }
    }

    /// How long an admitted connection has for its handshake.
    pub(crate) fn handshake_timeout(&self) -> Duration {
        self.limits.handshake_timeout
    }

    /// Decides on `attempt` at `now`, and counts what it turned away.
    pub(crate) fn decide(&self, attempt: Attempt, now: Instant) -> Decision {
        let counters = &self.counters;
        let unproven = matches!(attempt.address, AddressProof::Unproven { .. });
        let can_prove = attempt.address == AddressProof::Unproven { can_prove: true };
        if attempt.open > self.limits.max_connections {
            bump(&counters.refused_full);
            return Decision::Refuse(Refusal::Full);
        }
        if attempt.open > self.limits.validate_addresses_above && unproven {
            if can_prove {
                bump(&counters.retried);
                return Decision::ProveAddress;
            }
            bump(&counters.refused_full);
            return Decision::Refuse(Refusal::Full);
        }
        let within_budget = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(now, 1.0);
        if !within_budget {
            if can_prove {
                bump(&counters.retried);
                return Decision::ProveAddress;
            }
            bump(&counters.refused_handshake_budget);
            return Decision::Refuse(Refusal::HandshakeBudget);
        }
        let Some(pre_login) = PreLoginSlot::take(&self.before_login, self.limits.max_before_login)
        else {
            bump(&counters.refused_before_login);
            return Decision::Refuse(Refusal::BeforeLogin);
        };
        let Some(address) = AddressSlot::take(
            &self.per_address,
            AddressBlock::of(attempt.remote.ip()),
            self.limits.max_connections_per_ip,
        ) else {
            bump(&counters.refused_per_address);
            return Decision::Refuse(Refusal::PerAddress);
        };
        Decision::Admit(Admitted {
            _address: address,
            pre_login,
        })
    }

    /// Connections admitted and still held, over every transport.
    pub(crate) fn held(&self) -> usize {
        self.per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .total
    }

    /// Connections held now from `block`.
    #[cfg(test)]
    fn held_from(&self, block: AddressBlock) -> usize {
        self.per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .by_block
            .get(&block)
            .copied()
            .unwrap_or(0)
    }

    /// What was turned away so far.
    pub(crate) fn counts(&self) -> AdmissionCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        let counters = &self.counters;
        AdmissionCounts {
            refused_full: load(&counters.refused_full),
            refused_per_address: load(&counters.refused_per_address),
            refused_before_login: load(&counters.refused_before_login),
            refused_handshake_budget: load(&counters.refused_handshake_budget),
            retried: load(&counters.retried),
        }
    }
}

/// Counts a connection that has not logged in yet, until released or
/// dropped (see [`ServerLimits::max_before_login`]).
#[derive(Debug)]
pub(crate) struct PreLoginSlot {
    count: Option<Arc<AtomicUsize>>,
}

impl PreLoginSlot {
    fn take(count: &Arc<AtomicUsize>, max: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |now| {
                (now < max).then_some(now + 1)
            })
            .ok()?;
        Some(Self {
            count: Some(Arc::clone(count)),
        })
    }

    /// The connection logged in: it no longer counts as one that has not.
    pub(crate) fn release(&mut self) {
        if let Some(count) = self.count.take() {
            count.fetch_sub(1, Ordering::AcqRel);
        }
    }
}

impl Drop for PreLoginSlot {
    fn drop(&mut self) {
        self.release();
    }
}

/// Holds one of an address block's connection places until dropped.
#[derive(Debug)]
pub(crate) struct AddressSlot {
    per_address: PerAddress,
    block: AddressBlock,
}

impl AddressSlot {
    fn take(per_address: &PerAddress, block: AddressBlock, max: usize) -> Option<Self> {
        let mut held = per_address.lock().unwrap_or_else(PoisonError::into_inner);
        let count = held.by_block.entry(block).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        held.total += 1;
        Some(Self {
            per_address: Arc::clone(per_address),
            block,
        })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut held = self
            .per_address
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = held.by_block.get_mut(&self.block) {
            *count -= 1;
            if *count == 0 {
                held.by_block.remove(&self.block);
            }
            held.total -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(remote: &str, open: usize, address: AddressProof) -> Attempt {
        Attempt {
            remote: remote.parse().unwrap(),
            open,
            address,
        }
    }

    fn admitted(decision: Decision) -> Admitted {
        match decision {
            Decision::Admit(admitted) => admitted,
            other => panic!("refused: {other:?}"),
        }
    }

    const PROVEN: AddressProof = AddressProof::Proven;
    const CAN_PROVE: AddressProof = AddressProof::Unproven { can_prove: true };
    const PROVING_SPENT: AddressProof = AddressProof::Unproven { can_prove: false };

    #[test]
    fn the_per_address_cap_counts_a_slash_64_and_frees_on_drop() {
        let admission = Admission::new(ServerLimits {
            max_connections_per_ip: 2,
            ..ServerLimits::DEFAULT
        });
        let now = Instant::now();
        let first = admitted(admission.decide(attempt("[2001:db8::1]:1", 0, PROVEN), now));
        let _second = admitted(admission.decide(attempt("[2001:db8::2]:2", 1, CAN_PROVE), now));
        assert!(matches!(
            admission.decide(attempt("[2001:db8::ffff]:3", 2, PROVEN), now),
            Decision::Refuse(Refusal::PerAddress)
        ));
        // Another /64, another address: its own places.
        let _other = admitted(admission.decide(attempt("[2001:db8:0:1::1]:1", 2, PROVEN), now));
        let _v4 = admitted(admission.decide(attempt("192.0.2.1:1", 3, PROVEN), now));
        let block = AddressBlock::of("2001:db8::1".parse().unwrap());
        assert_eq!(admission.held_from(block), 2);
        assert_eq!(admission.held(), 4);
        drop(first);
        assert_eq!(admission.held_from(block), 1);
        let _again = admitted(admission.decide(attempt("[2001:db8::3]:4", 3, PROVEN), now));
        assert_eq!(admission.counts().refused_per_address, 1);
    }

    #[test]
    fn past_the_budget_an_unproven_address_is_asked_to_prove_and_a_proven_one_refused() {
        let admission = Admission::new(ServerLimits {
            handshakes_per_sec: 2,
            ..ServerLimits::DEFAULT
        });
        let now = Instant::now();
        let _kept: Vec<_> = (0..2)
            .map(|port| {
                admitted(admission.decide(attempt(&format!("192.0.2.1:{port}"), port, PROVEN), now))
            })
            .collect();
        assert!(matches!(
            admission.decide(attempt("192.0.2.2:1", 2, CAN_PROVE), now),
            Decision::ProveAddress
        ));
        // Proved (or unable to prove again): refused, not asked again.
        assert!(matches!(
            admission.decide(attempt("192.0.2.2:1", 2, PROVEN), now),
            Decision::Refuse(Refusal::HandshakeBudget)
        ));
        assert!(matches!(
            admission.decide(attempt("192.0.2.3:1", 2, PROVING_SPENT), now),
            Decision::Refuse(Refusal::HandshakeBudget)
        ));
        let counts = admission.counts();
        assert_eq!((counts.retried, counts.refused_handshake_budget), (1, 2));
        // A second later the budget has refilled.
        let later = now + Duration::from_secs(1);
        let _late = admitted(admission.decide(attempt("192.0.2.2:1", 2, PROVEN), later));
    }

    #[test]
    fn above_the_validation_threshold_only_proven_addresses_get_a_handshake() {
        let admission = Admission::new(ServerLimits {
            validate_addresses_above: 3,
            max_connections: 5,
            ..ServerLimits::DEFAULT
        });
        let now = Instant::now();
        let _below = admitted(admission.decide(attempt("192.0.2.1:1", 3, CAN_PROVE), now));
        assert!(matches!(
            admission.decide(attempt("192.0.2.1:2", 4, CAN_PROVE), now),
            Decision::ProveAddress
        ));
        assert!(matches!(
            admission.decide(attempt("192.0.2.1:2", 4, PROVING_SPENT), now),
            Decision::Refuse(Refusal::Full)
        ));
        let _proven = admitted(admission.decide(attempt("192.0.2.1:2", 4, PROVEN), now));
        // Past the cap nobody gets in, proven or not.
        assert!(matches!(
            admission.decide(attempt("192.0.2.1:3", 6, PROVEN), now),
            Decision::Refuse(Refusal::Full)
        ));
        let counts = admission.counts();
        assert_eq!((counts.retried, counts.refused_full), (1, 2));
    }

    #[test]
    fn connections_not_logged_in_have_their_own_cap_released_by_the_login() {
        let admission = Admission::new(ServerLimits {
            max_before_login: 2,
            ..ServerLimits::DEFAULT
        });
        let now = Instant::now();
        let mut first = admitted(admission.decide(attempt("192.0.2.1:1", 0, PROVEN), now));
        let _second = admitted(admission.decide(attempt("192.0.2.2:1", 1, PROVEN), now));
        assert!(matches!(
            admission.decide(attempt("192.0.2.3:1", 2, PROVEN), now),
            Decision::Refuse(Refusal::BeforeLogin)
        ));
        // A refusal for one cap takes no place in another.
        assert_eq!(admission.held(), 2);
        first.pre_login.release();
        first.pre_login.release();
        let _third = admitted(admission.decide(attempt("192.0.2.3:1", 2, PROVEN), now));
        assert!(matches!(
            admission.decide(attempt("192.0.2.4:1", 3, PROVEN), now),
            Decision::Refuse(Refusal::BeforeLogin)
        ));
        assert_eq!(admission.counts().refused_before_login, 2);
    }
}
