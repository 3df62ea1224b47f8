//! What the cluster asks of its shared store, and an in-memory store on a
//! virtual clock for the deterministic tests.
//!
//! The store is Redis in production (the server's adapter runs each
//! request as one atomic script); these are the requests' meanings, which
//! [`MemoryStore`] implements the same way. A request is atomic: nothing
//! else happens in the store between its reads and its writes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::wire::NodeId;

/// Who holds the control role, in which term, reachable where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlHolder {
    /// The node.
    pub node: NodeId,
    /// The term: counted up by the store each time the role changes hands,
    /// never reused.
    pub term: u64,
    /// Where the node's trunk listener is (`host:port`).
    pub addr: String,
}

/// One request to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreRequest {
    /// Registers `node` at `addr` for `lease` (again: extends it).
    Register {
        /// The node.
        node: NodeId,
        /// Its trunk listener.
        addr: String,
        /// How long the entry lives unless renewed.
        lease: Duration,
    },
    /// Removes `node` from the registry (it is leaving).
    Deregister {
        /// The node.
        node: NodeId,
    },
    /// Claims the control role: if `node` holds it in `term`, extends it;
    /// if nobody holds it and `take` is set, `node` takes it, in `term`
    /// again if no one took the role since (`term` is the one it last
    /// held), else in a new term. Terms count up from the highest the store
    /// or the claimant has seen, so a store that lost its data (restarted
    /// without persistence) never hands out an old term again. Answered
    /// with whoever holds the role afterwards.
    ClaimControl {
        /// The claimant.
        node: NodeId,
        /// Its trunk listener.
        addr: String,
        /// The term the claimant held last, if any.
        term: Option<u64>,
        /// The highest term the claimant has seen.
        highest_seen: u64,
        /// Whether to take the role if it is free; `false`: only ask who
        /// holds it.
        take: bool,
        /// How long the role lasts unless claimed again.
        lease: Duration,
    },
    /// Gives up the control role if `node` holds it in `term`.
    ReleaseControl {
        /// The holder.
        node: NodeId,
        /// Its term.
        term: u64,
    },
    /// Lists the registered nodes whose entries have not lapsed.
    LiveNodes,
}

/// The store's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreReply {
    /// Done (register, deregister, release).
    Done,
    /// The holder of the control role after a claim; `None` if nobody
    /// holds it (and the claim did not take it).
    Control(Option<ControlHolder>),
    /// The live nodes and their addresses, sorted.
    Nodes(Vec<(NodeId, String)>),
    /// The store could not be reached, or failed: nothing is known.
    Unreachable,
}

/// A store in memory with expiry on a virtual clock: the store of the
/// deterministic tests. Not a Redis stand-in for the integration tests,
/// which run a real `redis-server`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    nodes: BTreeMap<NodeId, (String, Instant)>,
    control: Option<(ControlHolder, Instant)>,
    terms: u64,
    unreachable: bool,
    requests: u64,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Makes the store unreachable (every request answers
    /// [`StoreReply::Unreachable`]) or reachable again; what it holds
    /// survives, as a restarted Redis with persistence, and expiries run
    /// on.
    pub fn set_reachable(&mut self, reachable: bool) {
        self.unreachable = !reachable;
    }

    /// A restart that loses everything (no persistence): registrations,
    /// the role and the term count.
    pub fn restart(&mut self) {
        self.nodes.clear();
        self.control = None;
        self.terms = 0;
    }

    /// Requests answered so far (unreachable ones not counted).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// Applies one request at `now` (the store's clock).
    pub fn apply(&mut self, now: Instant, request: &StoreRequest) -> StoreReply {
        if self.unreachable {
            return StoreReply::Unreachable;
        }
        self.requests += 1;
        self.nodes.retain(|_, (_, expires)| *expires > now);
        if self
            .control
            .as_ref()
            .is_some_and(|(_, expires)| *expires <= now)
        {
            self.control = None;
        }
        match request {
            StoreRequest::Register { node, addr, lease } => {
                self.nodes.insert(*node, (addr.clone(), now + *lease));
                StoreReply::Done
            }
            StoreRequest::Deregister { node } => {
                self.nodes.remove(node);
                StoreReply::Done
            }
            StoreRequest::ClaimControl {
                node,
                addr,
                term,
                highest_seen,
                take,
                lease,
            } => {
                self.terms = self.terms.max(*highest_seen);
                match &mut self.control {
                    Some((holder, expires)) => {
                        if holder.node == *node && Some(holder.term) == *term {
                            *expires = now + *lease;
                        }
                    }
                    None if !take => {}
                    None => {
                        let term = match term {
                            Some(term) if *term == self.terms => *term,
                            _ => {
                                self.terms += 1;
                                self.terms
                            }
                        };
                        let holder = ControlHolder {
                            node: *node,
                            term,
                            addr: addr.clone(),
                        };
                        self.control = Some((holder, now + *lease));
                    }
                }
                StoreReply::Control(self.control.as_ref().map(|(holder, _)| holder.clone()))
            }
            StoreRequest::ReleaseControl { node, term } => {
                if self
                    .control
                    .as_ref()
                    .is_some_and(|(holder, _)| holder.node == *node && holder.term == *term)
                {
                    self.control = None;
                }
                StoreReply::Done
            }
            StoreRequest::LiveNodes => StoreReply::Nodes(
                self.nodes
                    .iter()
                    .map(|(node, (addr, _))| (*node, addr.clone()))
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(3);

    fn claim(node: u32, term: Option<u64>) -> StoreRequest {
        StoreRequest::ClaimControl {
            node: NodeId(node),
            addr: format!("n{node}"),
            term,
            highest_seen: term.unwrap_or(0),
            take: true,
            lease: LEASE,
        }
    }

    fn holder(reply: StoreReply) -> (NodeId, u64) {
        match reply {
            StoreReply::Control(Some(holder)) => (holder.node, holder.term),
            other => panic!("not a holder: {other:?}"),
        }
    }

    #[test]
    fn the_role_has_one_holder_and_changes_hands_with_a_new_term() {
        let start = Instant::now();
        let mut store = MemoryStore::new();
        assert_eq!(holder(store.apply(start, &claim(1, None))), (NodeId(1), 1));
        assert_eq!(holder(store.apply(start, &claim(2, None))), (NodeId(1), 1));
        // Lapsed, then re-taken by its holder in its own term: no one
        // took it in between.
        let later = start + LEASE;
        assert_eq!(
            holder(store.apply(later, &claim(1, Some(1)))),
            (NodeId(1), 1)
        );
        // Lapsed again; another node takes it: a new term, and the old
        // holder's claim of its old term no longer extends anything.
        let later = later + LEASE;
        assert_eq!(holder(store.apply(later, &claim(2, None))), (NodeId(2), 2));
        assert_eq!(
            holder(store.apply(later, &claim(1, Some(1)))),
            (NodeId(2), 2)
        );
        store.apply(
            later,
            &StoreRequest::ReleaseControl {
                node: NodeId(2),
                term: 2,
            },
        );
        assert_eq!(
            holder(store.apply(later, &claim(1, Some(1)))),
            (NodeId(1), 3)
        );
        // Lost everything: the holder takes its term back, and a node that
        // only asks takes nothing.
        store.restart();
        let ask = StoreRequest::ClaimControl {
            node: NodeId(2),
            addr: "n2".into(),
            term: None,
            highest_seen: 3,
            take: false,
            lease: LEASE,
        };
        assert_eq!(store.apply(later, &ask), StoreReply::Control(None));
        assert_eq!(
            holder(store.apply(later, &claim(1, Some(3)))),
            (NodeId(1), 3)
        );
        store.restart();
        let StoreRequest::ClaimControl {
            node,
            addr,
            term,
            highest_seen,
            lease,
            ..
        } = ask
        else {
            unreachable!()
        };
        let take = StoreRequest::ClaimControl {
            node,
            addr,
            term,
            highest_seen,
            take: true,
            lease,
        };
        assert_eq!(
            holder(store.apply(later, &take)),
            (NodeId(2), 4),
            "never an old term"
        );
    }

    #[test]
    fn registrations_lapse_and_an_unreachable_store_answers_nothing() {
        let start = Instant::now();
        let mut store = MemoryStore::new();
        for node in [1, 2] {
            store.apply(
                start,
                &StoreRequest::Register {
                    node: NodeId(node),
                    addr: format!("n{node}"),
                    lease: LEASE,
                },
            );
        }
        store.apply(
            start + LEASE / 2,
            &StoreRequest::Register {
                node: NodeId(2),
                addr: "n2".into(),
                lease: LEASE,
            },
        );
        assert_eq!(
            store.apply(start + LEASE, &StoreRequest::LiveNodes),
            StoreReply::Nodes(vec![(NodeId(2), "n2".into())])
        );
        store.set_reachable(false);
        assert_eq!(
            store.apply(start, &StoreRequest::LiveNodes),
            StoreReply::Unreachable
        );
    }
}
