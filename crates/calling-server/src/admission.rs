//! Admission: whether a new connection, from any transport, is worth a
//! handshake. One policy and one set of counts for every transport: the
//! connection cap, the per-address cap, the cap on connections not logged
//! in yet and the handshake budget. A transport describes its attempt
//! ([`Attempt`]) and carries out the [`Decision`]; a third transport is one
//! more caller. Sans-IO apart from the counts it shares: every decision
//! takes `now`.
//!
//! The two budgets every source draws from are shared fairly between
//! networks (an IPv4 /24, an IPv6 /48: [`AddressPrefix`]), so that what one
//! network spends is not taken from the others:
//! - **before login**: when the places are all taken, a newcomer from a
//!   network holding fewer of them than the busiest one takes the place of
//!   that network's oldest connection not logged in yet (evicted: its
//!   task is told through its [`PreLoginSlot`]);
//! - **handshakes**: while the budget is contended (under half left), a
//!   network that has used its share (a quarter of the budget) is asked to
//!   prove its address or refused, and the rest is left to the others.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use signaling_proto::TokenBucket;
use tokio::sync::Notify;

use crate::address::{AddressBlock, AddressPrefix};

/// A network's share of the handshake budget while it is contended.
const HANDSHAKE_SHARE: f64 = 0.25;
/// Under this part of its burst left, the handshake budget is contended.
const CONTENDED_BELOW: f64 = 0.5;
/// Networks whose handshake share is remembered at most (the ones that
/// have refilled are forgotten first).
const MAX_REMEMBERED_SHARES: usize = 100_000;

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
    /// Connections open at once that have not logged in yet. Past it, a
    /// newcomer from a network (/24, /48) that holds fewer of them than the
    /// busiest network takes the place of that network's oldest one; any
    /// other is refused: connections that never log in cannot crowd out
    /// the users, nor one network the others.
    pub max_before_login: usize,
    /// Handshakes a second the server starts (as many at once). Past it, a
    /// client that has not proved its address is asked to (a round trip
    /// that costs the server nothing), and one that has is refused: a
    /// handshake flood cannot take the CPU the logged-in users need. While
    /// under half of it is left, a network (/24, /48) gets a quarter of it
    /// at most: one network's flood cannot take the others' handshakes.
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
    /// Refused: too many connections have not logged in yet (and the
    /// newcomer's network holds as many of them as any).
    pub refused_before_login: u64,
    /// Connections not logged in yet closed to give their place to a
    /// newcomer from a network holding fewer.
    pub evicted_before_login: u64,
    /// Refused: over the handshake budget (or its network's share of it),
    /// address already proved.
    pub refused_handshake_budget: u64,
    /// Asked to prove their address first (QUIC's Retry).
    pub retried: u64,
}

#[derive(Debug, Default)]
struct AdmissionCounters {
    refused_full: AtomicU64,
    refused_per_address: AtomicU64,
    refused_before_login: AtomicU64,
    evicted_before_login: AtomicU64,
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
    before_login: Arc<Mutex<BeforeLogin>>,
    handshakes: Mutex<HandshakeBudget>,
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
            per_address: Arc::default(),
            before_login: Arc::new(Mutex::new(BeforeLogin::new(limits.max_before_login))),
            handshakes: Mutex::new(HandshakeBudget::new(per_sec)),
            counters: AdmissionCounters::default(),
            limits,
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
        let prefix = AddressPrefix::of(attempt.remote.ip());
        let within_budget = self
            .handshakes
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .admit(prefix, now);
        if !within_budget {
            if can_prove {
                bump(&counters.retried);
                return Decision::ProveAddress;
            }
            bump(&counters.refused_handshake_budget);
            return Decision::Refuse(Refusal::HandshakeBudget);
        }
        // The address's place first: a newcomer refused for its address
        // must not have evicted anyone.
        let Some(address) = AddressSlot::take(
            &self.per_address,
            AddressBlock::of(attempt.remote.ip()),
            self.limits.max_connections_per_ip,
        ) else {
            bump(&counters.refused_per_address);
            return Decision::Refuse(Refusal::PerAddress);
        };
        let pre_login = match PreLoginSlot::take(&self.before_login, prefix) {
            Taken::Free(slot) => slot,
            Taken::Evicted(slot) => {
                bump(&counters.evicted_before_login);
                slot
            }
            Taken::Refused => {
                bump(&counters.refused_before_login);
                return Decision::Refuse(Refusal::BeforeLogin);
            }
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
            evicted_before_login: load(&counters.evicted_before_login),
            refused_handshake_budget: load(&counters.refused_handshake_budget),
            retried: load(&counters.retried),
        }
    }
}

/// The handshake budget and each network's share of it.
#[derive(Debug)]
struct HandshakeBudget {
    all: TokenBucket,
    share_per_sec: f64,
    shares: HashMap<AddressPrefix, TokenBucket>,
}

impl HandshakeBudget {
    fn new(per_sec: f64) -> Self {
        Self {
            all: TokenBucket::new(per_sec, per_sec),
            share_per_sec: per_sec * HANDSHAKE_SHARE,
            shares: HashMap::new(),
        }
    }

    /// Takes a handshake for `prefix` at `now`, if the budget allows.
    fn admit(&mut self, prefix: AddressPrefix, now: Instant) -> bool {
        if self.shares.len() >= MAX_REMEMBERED_SHARES && !self.shares.contains_key(&prefix) {
            self.shares
                .retain(|_, share| share.tokens(now) < share.burst());
            if self.shares.len() >= MAX_REMEMBERED_SHARES {
                // Over a hundred thousand networks at once: a flood this
                // wide is bounded by the budget as a whole.
                self.shares.clear();
            }
        }
        let share_per_sec = self.share_per_sec;
        let within_share = self
            .shares
            .entry(prefix)
            .or_insert_with(|| TokenBucket::new(share_per_sec, share_per_sec))
            .admit(now, 1.0);
        let contended = self.all.tokens(now) < self.all.burst() * CONTENDED_BELOW;
        if contended && !within_share {
            return false;
        }
        self.all.admit(now, 1.0)
    }
}

/// The connections not logged in yet, by network, oldest first.
#[derive(Debug)]
struct BeforeLogin {
    max: usize,
    total: usize,
    by_prefix: HashMap<AddressPrefix, VecDeque<Waiting>>,
    next_id: u64,
}

/// A connection not logged in yet, and how to tell it it was evicted.
#[derive(Debug)]
struct Waiting {
    id: u64,
    evicted: Arc<Notify>,
}

impl BeforeLogin {
    fn new(max: usize) -> Self {
        Self {
            max,
            total: 0,
            by_prefix: HashMap::new(),
            next_id: 0,
        }
    }

    /// Evicts the oldest connection of the network holding the most
    /// places, if it holds more than `prefix` would with one more.
    fn evict_for(&mut self, prefix: AddressPrefix) -> bool {
        let own = self.by_prefix.get(&prefix).map_or(0, VecDeque::len);
        let Some((&busiest, held)) = self
            .by_prefix
            .iter_mut()
            .max_by_key(|(_, waiting)| waiting.len())
        else {
            return false;
        };
        if own + 1 >= held.len() {
            return false;
        }
        let Some(oldest) = held.pop_front() else {
            return false;
        };
        oldest.evicted.notify_one();
        if held.is_empty() {
            self.by_prefix.remove(&busiest);
        }
        self.total -= 1;
        true
    }

    fn release(&mut self, prefix: AddressPrefix, id: u64) {
        let Some(waiting) = self.by_prefix.get_mut(&prefix) else {
            return;
        };
        let Some(position) = waiting.iter().position(|entry| entry.id == id) else {
            // Evicted: its place was given away already.
            return;
        };
        waiting.remove(position);
        if waiting.is_empty() {
            self.by_prefix.remove(&prefix);
        }
        self.total -= 1;
    }
}

/// How a place before login was got.
enum Taken {
    Free(PreLoginSlot),
    Evicted(PreLoginSlot),
    Refused,
}

/// Counts a connection that has not logged in yet, until released or
/// dropped (see [`ServerLimits::max_before_login`]); tells its task when it
/// was evicted.
#[derive(Debug)]
pub(crate) struct PreLoginSlot {
    book: Option<Arc<Mutex<BeforeLogin>>>,
    prefix: AddressPrefix,
    id: u64,
    evicted: Arc<Notify>,
}

impl PreLoginSlot {
    fn take(book: &Arc<Mutex<BeforeLogin>>, prefix: AddressPrefix) -> Taken {
        let mut before_login = book.lock().unwrap_or_else(PoisonError::into_inner);
        let evicted_one = if before_login.total < before_login.max {
            false
        } else if before_login.evict_for(prefix) {
            true
        } else {
            return Taken::Refused;
        };
        let id = before_login.next_id;
        before_login.next_id += 1;
        let evicted = Arc::new(Notify::new());
        before_login
            .by_prefix
            .entry(prefix)
            .or_default()
            .push_back(Waiting {
                id,
                evicted: Arc::clone(&evicted),
            });
        before_login.total += 1;
        let slot = Self {
            book: Some(Arc::clone(book)),
            prefix,
            id,
            evicted,
        };
        if evicted_one {
            Taken::Evicted(slot)
        } else {
            Taken::Free(slot)
        }
    }

    /// The connection logged in: it no longer counts as one that has not.
    pub(crate) fn release(&mut self) {
        if let Some(book) = self.book.take() {
            book.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .release(self.prefix, self.id);
        }
    }

    /// Completes when the place was given to a newcomer from a network
    /// holding fewer: the connection is to be closed. Never completes once
    /// released.
    pub(crate) async fn evicted(&self) {
        if self.book.is_none() {
            return std::future::pending().await;
        }
        self.evicted.notified().await;
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

    #[tokio::test]
    async fn a_network_holding_more_places_before_login_gives_its_oldest_to_a_newcomer() {
        let admission = Admission::new(ServerLimits {
            max_before_login: 4,
            ..ServerLimits::DEFAULT
        });
        let now = Instant::now();
        // One network takes every place.
        let crowd: Vec<_> = (1..=4)
            .map(|host| {
                admitted(admission.decide(attempt(&format!("198.51.100.{host}:1"), 0, PROVEN), now))
            })
            .collect();
        // Another address of that network gains nothing by evicting its own.
        assert!(matches!(
            admission.decide(attempt("198.51.100.9:1", 4, PROVEN), now),
            Decision::Refuse(Refusal::BeforeLogin)
        ));
        // A newcomer from another network takes the oldest's place.
        let newcomer = admitted(admission.decide(attempt("203.0.113.1:1", 4, PROVEN), now));
        tokio::time::timeout(Duration::from_secs(1), crowd[0].pre_login.evicted())
            .await
            .expect("the oldest of the busiest network is told");
        for younger in &crowd[1..] {
            let told = tokio::time::timeout(Duration::from_millis(10), younger.pre_login.evicted());
            assert!(told.await.is_err(), "only the oldest is evicted");
        }
        // 3 against 1 now: one more from the newcomer's network evicts again,
        // a third would leave them 2 against 2 and is refused.
        let _second = admitted(admission.decide(attempt("203.0.113.2:1", 4, PROVEN), now));
        assert!(matches!(
            admission.decide(attempt("203.0.113.3:1", 4, PROVEN), now),
            Decision::Refuse(Refusal::BeforeLogin)
        ));
        let counts = admission.counts();
        assert_eq!(
            (counts.evicted_before_login, counts.refused_before_login),
            (2, 2)
        );
        // The evicted one's place is gone already: dropping it frees nothing
        // twice, and a login frees a place for anyone.
        let mut crowd = crowd.into_iter();
        drop(crowd.next());
        assert!(matches!(
            admission.decide(attempt("203.0.113.3:1", 4, PROVEN), now),
            Decision::Refuse(Refusal::BeforeLogin)
        ));
        let mut logged_in = newcomer;
        logged_in.pre_login.release();
        let _third = admitted(admission.decide(attempt("192.0.2.77:1", 4, PROVEN), now));
        let told = tokio::time::timeout(Duration::from_millis(10), logged_in.pre_login.evicted());
        assert!(
            told.await.is_err(),
            "a connection logged in is never evicted"
        );
    }

    #[test]
    fn a_contended_handshake_budget_keeps_three_quarters_for_other_networks() {
        let admission = Admission::new(ServerLimits {
            handshakes_per_sec: 100,
            ..ServerLimits::DEFAULT
        });
        let start = Instant::now();
        let mut by_network = [0_usize; 2];
        // For ten seconds a flood from one network asks 500 handshakes a
        // second; the honest network asks 20 a second.
        for tick in 0..10_000_u64 {
            let now = start + Duration::from_millis(tick);
            if tick % 2 == 0
                && let Decision::Admit(kept) =
                    admission.decide(attempt("198.51.100.7:1", 0, PROVEN), now)
            {
                by_network[0] += 1;
                drop(kept);
            }
            if tick % 50 == 0 {
                match admission.decide(attempt("203.0.113.5:1", 0, PROVEN), now) {
                    Decision::Admit(kept) => {
                        by_network[1] += 1;
                        drop(kept);
                    }
                    other => panic!("the honest network was refused at {tick} ms: {other:?}"),
                }
            }
        }
        // The flood got what the honest network left, never the budget's
        // last half.
        assert_eq!(by_network[1], 200);
        assert!(by_network[0] <= 1_000 - 200 + 50, "{by_network:?}");
        assert!(
            by_network[0] >= 500,
            "a flood alone still gets served: {by_network:?}"
        );
    }
}
