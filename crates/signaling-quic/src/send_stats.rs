//! What the server's UDP sockets send, counted: [`SendCounters`] per
//! socket (the batching socket bumps them), [`SendStats`] over all of a
//! server's sockets for the metrics.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

/// What a server's UDP sockets have sent: `packets` in `calls` system
/// calls (several packets a call where the sends are batched, Linux);
/// `dropped` the packets the kernel refused.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SendCounts {
    /// Packets handed to the kernel.
    pub packets: u64,
    /// `sendmmsg` and `sendmsg` calls that sent them.
    pub calls: u64,
    /// Packets the kernel refused, dropped.
    pub dropped: u64,
}

/// One socket's send counters (see [`SendCounts`]).
#[derive(Debug, Default)]
pub(crate) struct SendCounters {
    pub(crate) packets: AtomicU64,
    pub(crate) calls: AtomicU64,
    pub(crate) dropped: AtomicU64,
}

impl SendCounters {
    pub(crate) fn counts(&self) -> SendCounts {
        let load = |counter: &AtomicU64| counter.load(Ordering::Relaxed);
        SendCounts {
            packets: load(&self.packets),
            calls: load(&self.calls),
            dropped: load(&self.dropped),
        }
    }
}

/// A handle on what a server's sockets have sent, for metrics; it outlives
/// the server harmlessly.
#[derive(Debug, Clone, Default)]
pub struct SendStats(pub(crate) Vec<Arc<SendCounters>>);

impl SendStats {
    /// What was sent so far, all endpoints together. On Linux the packets
    /// of many connections leave in one `sendmmsg` (`packets / calls` is
    /// the mean batch); elsewhere nothing is counted.
    pub fn counts(&self) -> SendCounts {
        self.0.iter().fold(SendCounts::default(), |sum, counters| {
            let counts = counters.counts();
            SendCounts {
                packets: sum.packets + counts.packets,
                calls: sum.calls + counts.calls,
                dropped: sum.dropped + counts.dropped,
            }
        })
    }
}
