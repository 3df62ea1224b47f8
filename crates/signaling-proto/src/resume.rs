//! The bookkeeping that lets a session outlive its connection, the same at
//! both ends: each side numbers the messages it sends in a session (see
//! [`ClientMessage::is_numbered`](crate::ClientMessage::is_numbered) and
//! [`ServerMessage::is_numbered`](crate::ServerMessage::is_numbered)), keeps
//! those the other side has not acknowledged, and counts those it received.
//! After a resume each side learns how many of its messages the other got
//! and resends the rest, in order, so that nothing is lost or delivered
//! twice.
//!
//! Acknowledgements travel in heartbeats and in the resume handshake; this
//! type only keeps the books and never reads a clock or touches a socket.

use std::collections::VecDeque;

/// What cannot be reconciled: the session cannot be resumed faithfully.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The peer claims a count outside what was sent and kept: it lies, or
    /// it is another session's count.
    #[error("the peer acknowledges {claimed} messages; {kept_from} to {sent} are possible")]
    OutOfRange {
        /// The peer's count.
        claimed: u64,
        /// The lowest count it could have (what was acknowledged before).
        kept_from: u64,
        /// The highest: everything sent.
        sent: u64,
    },
    /// More messages wait for an acknowledgement than the buffer keeps.
    #[error("more than {0} messages wait for an acknowledgement")]
    Full(usize),
}

/// One side's numbered messages: sent and not yet acknowledged, and how
/// many came from the other side. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct Replay<M> {
    sent: u64,
    unacknowledged: VecDeque<M>,
    received: u64,
    capacity: usize,
}

impl<M: Clone> Replay<M> {
    /// An empty book that keeps at most `capacity` unacknowledged messages.
    pub fn new(capacity: usize) -> Self {
        Self {
            sent: 0,
            unacknowledged: VecDeque::new(),
            received: 0,
            capacity,
        }
    }

    /// Keeps `message`, just sent, until the peer acknowledges it. Past the
    /// capacity the message is not kept and the book can no longer resume.
    pub fn record_sent(&mut self, message: &M) -> Result<(), ReplayError> {
        if self.unacknowledged.len() >= self.capacity {
            return Err(ReplayError::Full(self.capacity));
        }
        self.sent += 1;
        self.unacknowledged.push_back(message.clone());
        Ok(())
    }

    /// Counts one numbered message received from the peer.
    pub fn record_received(&mut self) {
        self.received += 1;
    }

    /// How many numbered messages came from the peer.
    pub fn received(&self) -> u64 {
        self.received
    }

    /// How many numbered messages were sent.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    /// How many sent messages the peer has not acknowledged.
    pub fn unacknowledged_len(&self) -> usize {
        self.unacknowledged.len()
    }

    /// The peer has received `peer_received` of our messages: forget those.
    /// A count lower than an earlier one, or higher than what was sent, is
    /// an error and changes nothing.
    pub fn acknowledge(&mut self, peer_received: u64) -> Result<(), ReplayError> {
        let kept_from = self.sent - self.unacknowledged.len() as u64;
        if peer_received < kept_from || peer_received > self.sent {
            return Err(ReplayError::OutOfRange {
                claimed: peer_received,
                kept_from,
                sent: self.sent,
            });
        }
        let drop = usize::try_from(peer_received - kept_from).unwrap_or(usize::MAX);
        self.unacknowledged
            .drain(..drop.min(self.unacknowledged.len()));
        Ok(())
    }

    /// The messages to resend after a resume, oldest first: those the peer
    /// has not acknowledged. They stay kept until it does.
    pub fn unacknowledged(&self) -> impl Iterator<Item = &M> {
        self.unacknowledged.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resends_exactly_what_the_peer_missed() {
        let mut book = Replay::new(4);
        for message in ["a", "b", "c"] {
            book.record_sent(&message).unwrap();
        }
        book.acknowledge(1).unwrap();
        assert_eq!(
            book.unacknowledged().copied().collect::<Vec<_>>(),
            ["b", "c"]
        );
        // The same count again, e.g. a heartbeat, then the resume's.
        book.acknowledge(1).unwrap();
        book.acknowledge(2).unwrap();
        assert_eq!(book.unacknowledged().copied().collect::<Vec<_>>(), ["c"]);
        assert_eq!(book.sent(), 3);
        book.record_received();
        assert_eq!(book.received(), 1);
    }

    #[test]
    fn impossible_counts_and_overflow_are_errors() {
        let mut book = Replay::new(2);
        book.record_sent(&1).unwrap();
        book.record_sent(&2).unwrap();
        assert_eq!(book.record_sent(&3), Err(ReplayError::Full(2)));
        assert_eq!(book.sent(), 2, "an unkept message is not counted");
        book.acknowledge(1).unwrap();
        assert!(matches!(
            book.acknowledge(0),
            Err(ReplayError::OutOfRange { kept_from: 1, .. })
        ));
        assert!(matches!(
            book.acknowledge(3),
            Err(ReplayError::OutOfRange { sent: 2, .. })
        ));
        assert_eq!(book.unacknowledged_len(), 1);
    }
}
