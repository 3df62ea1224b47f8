//! The audio relay: each member's datagrams go to every other member of its
//! call and nowhere else, stamped with the sender's own flow id; a loss
//! report goes only to the member whose flow it names.
//!
//! The hub, which owns membership, publishes a [`Route`] per connection
//! whenever a call's members change (the switchboard's membership output);
//! connection tasks read their own route for every datagram (a read lock,
//! never held across an await). A connection with no route (in no call, or
//! alone in one) sends nowhere. The relay never decodes or mixes audio, and
//! sees peers only as [`MediaLink`]s.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use signaling_link::MediaLink;
use signaling_proto::datagram::MAX_HEADER_LEN;
use signaling_proto::{ConnId, DatagramKind, FlowId, MediaHeader};

/// Where one member's audio goes.
#[derive(Debug)]
pub(crate) struct Route {
    /// The member's own flow, stamped on everything it sends.
    pub(crate) flow: FlowId,
    /// The other members' flows and media links.
    pub(crate) peers: Vec<(FlowId, Arc<dyn MediaLink>)>,
}

/// Relay counters.
#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    forwarded: AtomicU64,
    dropped_not_in_call: AtomicU64,
    dropped_malformed: AtomicU64,
}

/// A snapshot of the relay counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RelayCounts {
    /// Datagrams sent on to a peer (one per peer).
    pub forwarded: u64,
    /// Datagrams from a connection that is in no call (or not yet entered).
    pub dropped_not_in_call: u64,
    /// Datagrams that are not media datagrams.
    pub dropped_malformed: u64,
}

/// Routes of every connection in a call, shared by the hub and the
/// connection tasks.
#[derive(Debug, Default)]
pub(crate) struct MediaRoutes {
    routes: RwLock<HashMap<ConnId, Arc<Route>>>,
    stats: RelayStats,
}

impl MediaRoutes {
    pub(crate) fn set(&self, conn: ConnId, route: Option<Route>) {
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        match route {
            Some(route) => {
                routes.insert(conn, Arc::new(route));
            }
            None => {
                routes.remove(&conn);
            }
        }
    }

    fn route(&self, conn: ConnId) -> Option<Arc<Route>> {
        self.routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&conn)
            .cloned()
    }

    pub(crate) fn counts(&self) -> RelayCounts {
        RelayCounts {
            forwarded: self.stats.forwarded.load(Ordering::Relaxed),
            dropped_not_in_call: self.stats.dropped_not_in_call.load(Ordering::Relaxed),
            dropped_malformed: self.stats.dropped_malformed.load(Ordering::Relaxed),
        }
    }

    /// Forwards one datagram `conn` sent.
    pub(crate) fn relay(&self, conn: ConnId, datagram: &[u8]) {
        let Ok((header, payload)) = MediaHeader::decode(datagram) else {
            self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let Some(route) = self.route(conn) else {
            self.stats
                .dropped_not_in_call
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        if route.peers.is_empty() {
            return;
        }
        // The sender's word about who it is does not count: stamp its flow.
        let stamped = MediaHeader {
            flow_id: route.flow,
            ..header
        };
        let mut buffer = vec![0; MAX_HEADER_LEN + payload.len()];
        let Ok(len) = stamped.encode(payload, &mut buffer) else {
            self.stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        buffer.truncate(len);
        let bytes = Bytes::from(buffer);
        // A loss report is for the sender it names, nobody else.
        let about = (header.kind == DatagramKind::Report).then_some(header.flow_id);
        for (flow, peer) in &route.peers {
            if about.is_some_and(|about| about != *flow) {
                continue;
            }
            // A peer whose connection just closed, or whose datagram buffer
            // is full (quinn then drops its oldest), is not our problem here.
            if peer.send_datagram(bytes.clone()).is_ok() {
                self.stats.forwarded.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}
