//! Exactly-once, in-order delivery between a node and the control across
//! reconnections.
//!
//! A node trunk runs over a reliable ordered stream (a QUIC stream between
//! nodes), which loses nothing while it lives but can break. Each side
//! keeps [`TrunkBooks`]: the messages it sent in the current term that the
//! other side has not acknowledged, and how many it received. On every
//! connection both sides first send a [`TrunkFrame::Hello`] with their
//! count; each then resends exactly what the other missed, and only then
//! anything new. Nothing is delivered twice (a message the other side
//! counted is never resent) and nothing is lost while the books last.
//! Acknowledgements ride in [`TrunkFrame::Ack`] every
//! [`ACK_EVERY`] messages and whenever the glue flushes them (a timer).
//!
//! The books belong to one term of the control (see [`crate::lease`]): a
//! new control starts new books on both sides, and a hello from another
//! term is refused.

use std::collections::VecDeque;

use signaling_proto::{Replay, ReplayError};

use crate::wire::{NodeId, TrunkFrame};

/// A side acknowledges after this many messages without waiting for its
/// timer.
pub const ACK_EVERY: u64 = 32;

/// Why a trunk cannot go on: the glue drops the connection (and, for a
/// lost count, the books: the node's sessions cannot be carried over).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrunkError {
    /// The other side is in another term of the control.
    #[error("the peer is in term {peer}, this side in term {ours}")]
    OtherTerm {
        /// This side's term.
        ours: u64,
        /// The peer's.
        peer: u64,
    },
    /// A node trunk reached a node that does not host the control.
    #[error("this node does not host the cluster's control")]
    NotHosting,
    /// A frame out of place: a message before the hello, a reset sent to
    /// the control.
    #[error("out of place on a node trunk: {0}")]
    OutOfPlace(&'static str),
    /// The other side's count cannot be reconciled with ours, or too many
    /// messages wait for its acknowledgement: the books are broken.
    #[error("the trunk's books are broken: {0}")]
    Books(#[from] ReplayError),
}

/// One side's books of one node trunk. See the [module docs](self).
#[derive(Debug)]
pub struct TrunkBooks<M> {
    me: NodeId,
    term: u64,
    incarnation: u64,
    replay: Replay<M>,
    /// A connection is up.
    connected: bool,
    /// The peer's hello arrived on it: new messages may go out.
    peer_ready: bool,
    /// The count last told the peer.
    told_received: u64,
    outbox: VecDeque<TrunkFrame<M>>,
}

impl<M: Clone> TrunkBooks<M> {
    /// Empty books for `me` in `term` (and `incarnation`, see
    /// [`TrunkFrame::Hello`]), keeping at most `capacity` messages that wait
    /// for the peer's acknowledgement.
    pub fn new(me: NodeId, term: u64, incarnation: u64, capacity: usize) -> Self {
        Self {
            me,
            term,
            incarnation,
            replay: Replay::new(capacity),
            connected: false,
            peer_ready: false,
            told_received: 0,
            outbox: VecDeque::new(),
        }
    }

    /// The term these books belong to.
    pub fn term(&self) -> u64 {
        self.term
    }

    /// Whether a connection is up and the peer's hello arrived.
    pub fn is_ready(&self) -> bool {
        self.peer_ready
    }

    /// Sends `message`: now if the trunk is ready, else after the next
    /// hello. An error if the peer has left too many unacknowledged.
    pub fn send(&mut self, message: M) -> Result<(), TrunkError> {
        self.replay.record_sent(&message)?;
        if self.peer_ready {
            self.outbox.push_back(TrunkFrame::Message(message));
        }
        Ok(())
    }

    /// A new connection is up: our hello goes first.
    pub fn connected(&mut self) {
        self.outbox.clear();
        self.connected = true;
        self.peer_ready = false;
        self.told_received = self.replay.received();
        self.outbox.push_back(TrunkFrame::Hello {
            node: self.me,
            term: self.term,
            incarnation: self.incarnation,
            received: self.replay.received(),
        });
    }

    /// The connection broke: frames not yet written are dropped (they are
    /// resent from the books after the next hello).
    pub fn disconnected(&mut self) {
        self.connected = false;
        self.peer_ready = false;
        self.outbox.clear();
    }

    /// A frame from the peer; a message is returned for delivery, exactly
    /// once. An error means the connection must be dropped.
    pub fn handle_frame<I>(&mut self, frame: TrunkFrame<I>) -> Result<Option<I>, TrunkError> {
        match frame {
            TrunkFrame::Hello { term, received, .. } => {
                if term != self.term {
                    return Err(TrunkError::OtherTerm {
                        ours: self.term,
                        peer: term,
                    });
                }
                self.replay.acknowledge(received)?;
                for message in self.replay.unacknowledged() {
                    self.outbox.push_back(TrunkFrame::Message(message.clone()));
                }
                self.peer_ready = true;
                Ok(None)
            }
            TrunkFrame::Message(message) => {
                if !self.peer_ready {
                    return Err(TrunkError::OutOfPlace("a message before the hello"));
                }
                self.replay.record_received();
                if self.replay.received() - self.told_received >= ACK_EVERY {
                    self.flush_ack();
                }
                Ok(Some(message))
            }
            TrunkFrame::Ack { received } => {
                self.replay.acknowledge(received)?;
                Ok(None)
            }
            // Handled above the books (by the node); here it is out of place.
            TrunkFrame::Reset => Err(TrunkError::OutOfPlace("a reset")),
        }
    }

    /// Queues an acknowledgement if messages arrived since the last one
    /// (the glue calls it on a timer).
    pub fn flush_ack(&mut self) {
        let received = self.replay.received();
        if self.peer_ready && received > self.told_received {
            self.told_received = received;
            self.outbox.push_back(TrunkFrame::Ack { received });
        }
    }

    /// The next frame to write, until `None`.
    pub fn poll_frame(&mut self) -> Option<TrunkFrame<M>> {
        if !self.connected {
            return None;
        }
        self.outbox.pop_front()
    }

    /// How many sent messages wait for the peer's acknowledgement.
    pub fn unacknowledged(&self) -> usize {
        self.replay.unacknowledged_len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Moves every frame `from` has queued to `to`, returning what `to`
    /// delivered.
    fn pump(from: &mut TrunkBooks<u32>, to: &mut TrunkBooks<u32>) -> Vec<u32> {
        let mut delivered = Vec::new();
        while let Some(frame) = from.poll_frame() {
            if let Some(message) = to.handle_frame(frame).expect("a valid frame") {
                delivered.push(message);
            }
        }
        delivered
    }

    #[test]
    fn a_broken_connection_loses_and_repeats_nothing() {
        let mut node = TrunkBooks::new(NodeId(1), 5, 0, 1024);
        let mut control = TrunkBooks::new(NodeId(2), 5, 0, 1024);
        node.connected();
        control.connected();
        pump(&mut node, &mut control);
        pump(&mut control, &mut node);
        for n in 0..10 {
            node.send(n).unwrap();
        }
        // Six arrive, then the connection breaks with four in flight.
        let mut delivered = Vec::new();
        for _ in 0..6 {
            let frame = node.poll_frame().unwrap();
            delivered.extend(control.handle_frame(frame).unwrap());
        }
        node.disconnected();
        control.disconnected();
        node.send(10).unwrap();
        node.connected();
        control.connected();
        pump(&mut node, &mut control);
        delivered.extend(pump(&mut control, &mut node));
        delivered.extend(pump(&mut node, &mut control));
        assert_eq!(delivered, (0..=10).collect::<Vec<_>>());
        // Acknowledged through the hello: nothing kept but nothing lost.
        control.flush_ack();
        pump(&mut control, &mut node);
        assert_eq!(node.unacknowledged(), 0);
    }

    #[test]
    fn acknowledgements_come_every_so_many_messages() {
        let mut node = TrunkBooks::new(NodeId(1), 1, 0, 1024);
        let mut control = TrunkBooks::new(NodeId(2), 1, 0, 1024);
        node.connected();
        control.connected();
        pump(&mut node, &mut control);
        pump(&mut control, &mut node);
        for n in 0..u32::try_from(ACK_EVERY).unwrap() {
            node.send(n).unwrap();
        }
        pump(&mut node, &mut control);
        pump(&mut control, &mut node);
        assert_eq!(node.unacknowledged(), 0);
    }

    #[test]
    fn wrong_term_early_message_and_impossible_counts_are_errors() {
        let mut control = TrunkBooks::<u32>::new(NodeId(2), 3, 0, 4);
        control.connected();
        assert_eq!(
            control.handle_frame(TrunkFrame::<u32>::Message(1)),
            Err(TrunkError::OutOfPlace("a message before the hello"))
        );
        assert_eq!(
            control.handle_frame(TrunkFrame::<u32>::Hello {
                node: NodeId(1),
                term: 2,
                incarnation: 0,
                received: 0
            }),
            Err(TrunkError::OtherTerm { ours: 3, peer: 2 })
        );
        assert!(matches!(
            control.handle_frame(TrunkFrame::<u32>::Hello {
                node: NodeId(1),
                term: 3,
                incarnation: 0,
                received: 9
            }),
            Err(TrunkError::Books(_))
        ));
        for n in 0..4 {
            control.send(n).unwrap();
        }
        assert!(matches!(control.send(4), Err(TrunkError::Books(_))));
    }
}
