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
//!
//! Connection tasks run on every core at once: the routes and the counters
//! are split into shards by connection, each on cache lines of its own, so
//! two cores relaying for different connections seldom touch the same
//! lock or counter (one shared read lock and counter cost more per
//! datagram with every core added).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};

use bytes::Bytes;
use calling_api::CallId;
use signaling_link::MediaLink;
use signaling_proto::datagram::MAX_HEADER_LEN;
use signaling_proto::{ConnId, DatagramKind, FlowId, MediaHeader, PathQuality};

/// Where one member's audio goes.
#[derive(Debug)]
pub(crate) struct Route {
    /// The member's own flow, stamped on everything it sends.
    pub(crate) flow: FlowId,
    /// The other members on this server: their flows and connections.
    pub(crate) peers: Vec<(FlowId, Arc<dyn MediaLink>)>,
    /// The other members on other nodes of a cluster: their flows and a
    /// link to each alone, for what one member is told (a loss report,
    /// features).
    pub(crate) remote: Vec<(FlowId, Arc<dyn MediaLink>)>,
    /// The other nodes with members of the call: what every member hears
    /// goes once to each, which hands it to its members there.
    pub(crate) nodes: Vec<Arc<dyn MediaLink>>,
    /// The member's own link: where audio relayed by another node for it
    /// goes.
    pub(crate) own: Arc<dyn MediaLink>,
}

impl Route {
    /// Whether `flow` is one of the members this member hears.
    fn hears(&self, flow: FlowId) -> bool {
        self.peers
            .iter()
            .chain(&self.remote)
            .any(|(peer, _)| *peer == flow)
    }
}

/// Relay counters.
#[derive(Debug, Default)]
pub(crate) struct RelayStats {
    forwarded: AtomicU64,
    dropped_not_in_call: AtomicU64,
    dropped_malformed: AtomicU64,
    from_nodes: AtomicU64,
    dropped_from_nodes: AtomicU64,
    unsendable: AtomicU64,
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
    /// Datagrams another node relayed for a member here, delivered.
    pub from_nodes: u64,
    /// Datagrams another node relayed that were not for a member of the
    /// sender's call here (or not media): dropped.
    pub dropped_from_nodes: u64,
    /// Datagrams for a peer whose link would not take them (closed, or
    /// larger than its path carries after the flow stamp): not sent.
    pub unsendable: u64,
}

/// Shards of the routes and counters: well above the cores of a big
/// machine, so that cores seldom meet on one.
const SHARDS: usize = 64;

/// One shard, alone on its cache lines (128 bytes: two lines, as adjacent
/// lines are fetched in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Shard {
    routes: RwLock<HashMap<ConnId, Arc<Route>>>,
    stats: RelayStats,
}

/// A test's copy of what passes through the server (feature `relay-tap`):
/// each thing with when it passed, to the receiver `open` returned last.
#[cfg(feature = "relay-tap")]
#[derive(Debug)]
pub(crate) struct Tap<T>(
    std::sync::Mutex<Option<std::sync::mpsc::Sender<(std::time::Instant, T)>>>,
);

#[cfg(feature = "relay-tap")]
impl<T> Default for Tap<T> {
    fn default() -> Self {
        Self(std::sync::Mutex::new(None))
    }
}

#[cfg(feature = "relay-tap")]
impl<T> Tap<T> {
    /// From now on, copies go to the receiver returned; the one before
    /// stops.
    pub(crate) fn open(&self) -> std::sync::mpsc::Receiver<(std::time::Instant, T)> {
        let (copies, tap) = std::sync::mpsc::channel();
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Some(copies);
        tap
    }

    /// A copy (made only while a receiver is open).
    pub(crate) fn copy(&self, thing: impl FnOnce() -> T) {
        if let Some(copies) = &*self.0.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = copies.send((std::time::Instant::now(), thing()));
        }
    }
}

/// Routes of every connection in a call, shared by the hub and the
/// connection tasks.
#[derive(Debug)]
pub(crate) struct MediaRoutes {
    shards: Box<[Shard]>,
    /// In a cluster: each call's members on this node, for what another
    /// node sends once for all of them.
    calls: RwLock<HashMap<CallId, Arc<[ConnId]>>>,
    /// A test's copy of every datagram forwarded (feature `relay-tap`).
    #[cfg(feature = "relay-tap")]
    pub(crate) tap: Tap<Bytes>,
    /// A test's copy of every member's key word passed on (feature
    /// `relay-tap`): who sent it, its payload.
    #[cfg(feature = "relay-tap")]
    pub(crate) word_tap: Tap<(calling_api::UserId, Vec<u8>)>,
}

impl Default for MediaRoutes {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Shard::default()).collect(),
            calls: RwLock::default(),
            #[cfg(feature = "relay-tap")]
            tap: Tap::default(),
            #[cfg(feature = "relay-tap")]
            word_tap: Tap::default(),
        }
    }
}

impl MediaRoutes {
    /// `conn`'s shard. Connection ids are handed out in sequence, so
    /// connections spread evenly.
    fn shard(&self, conn: ConnId) -> &Shard {
        // The remainder is below SHARDS: it fits any usize.
        &self.shards[(conn.0 % SHARDS as u64) as usize]
    }

    pub(crate) fn set(&self, conn: ConnId, route: Option<Route>) {
        let mut routes = self
            .shard(conn)
            .routes
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        match route {
            Some(route) => {
                routes.insert(conn, Arc::new(route));
            }
            None => {
                routes.remove(&conn);
            }
        }
    }

    /// The members of `call_id` on this node (none: the call is over here).
    pub(crate) fn set_call(&self, call_id: CallId, members: &[ConnId]) {
        let mut calls = self.calls.write().unwrap_or_else(PoisonError::into_inner);
        if members.is_empty() {
            calls.remove(&call_id);
        } else {
            calls.insert(call_id, members.into());
        }
    }

    pub(crate) fn counts(&self) -> RelayCounts {
        let sum = |counter: fn(&RelayStats) -> &AtomicU64| {
            self.shards
                .iter()
                .map(|shard| counter(&shard.stats).load(Ordering::Relaxed))
                .sum()
        };
        RelayCounts {
            forwarded: sum(|stats| &stats.forwarded),
            dropped_not_in_call: sum(|stats| &stats.dropped_not_in_call),
            dropped_malformed: sum(|stats| &stats.dropped_malformed),
            from_nodes: sum(|stats| &stats.from_nodes),
            dropped_from_nodes: sum(|stats| &stats.dropped_from_nodes),
            unsendable: sum(|stats| &stats.unsendable),
        }
    }

    /// Forwards one datagram `conn` sent. The sender's flow id is stamped
    /// in place when the datagram's buffer is ours alone and the stamp
    /// fits (the usual case: then nothing is allocated per datagram, the
    /// peers share one buffer); otherwise into a copy.
    pub(crate) fn relay(&self, conn: ConnId, datagram: Bytes) {
        let shard = self.shard(conn);
        let stats = &shard.stats;
        let Ok((header, payload)) = MediaHeader::decode(&datagram) else {
            stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        // A loss report, features or a quality word the document calls
        // invalid goes no further: one byte, a report's at most 100 (%); a
        // quality word's seven bytes.
        let invalid = match header.kind {
            DatagramKind::Report => !matches!(payload, [percent] if *percent <= 100),
            DatagramKind::Features => payload.len() != 1,
            DatagramKind::Quality => PathQuality::from_payload(payload).is_none(),
            _ => false,
        };
        if invalid {
            stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let payload_start = datagram.len() - payload.len();
        let route = shard
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&conn)
            .cloned();
        let Some(route) = route else {
            stats.dropped_not_in_call.fetch_add(1, Ordering::Relaxed);
            return;
        };
        if route.peers.is_empty() && route.remote.is_empty() {
            return;
        }
        // The sender's word about who it is does not count: stamp its flow.
        let stamped = match datagram.try_into_mut() {
            Ok(mut owned) => {
                if MediaHeader::restamp_flow(&mut owned, route.flow) {
                    Some(owned.freeze())
                } else {
                    copy_stamped(header, route.flow, &owned[payload_start..])
                }
            }
            Err(shared) => copy_stamped(header, route.flow, &shared[payload_start..]),
        };
        let Some(bytes) = stamped else {
            stats.dropped_malformed.fetch_add(1, Ordering::Relaxed);
            return;
        };
        #[cfg(feature = "relay-tap")]
        self.tap.copy(|| bytes.clone());
        // A loss report or a receiver's features are for the sender they
        // name, nobody else.
        let about = matches!(header.kind, DatagramKind::Report | DatagramKind::Features)
            .then_some(header.flow_id);
        let send = |link: &Arc<dyn MediaLink>| {
            // A full datagram buffer makes quinn drop its oldest, not fail;
            // a peer whose connection just closed, or whose path cannot
            // carry this one, fails: counted.
            let counter = if link.send_datagram(bytes.clone()).is_ok() {
                &stats.forwarded
            } else {
                &stats.unsendable
            };
            counter.fetch_add(1, Ordering::Relaxed);
        };
        match about {
            Some(about) => route
                .peers
                .iter()
                .chain(&route.remote)
                .filter(|(flow, _)| *flow == about)
                .for_each(|(_, link)| send(link)),
            None => {
                route.peers.iter().for_each(|(_, link)| send(link));
                route.nodes.iter().for_each(send);
            }
        }
        // A member's word about its network goes back to it too, as the
        // server stamped it, with flow 0: what the server measured of it.
        if header.kind == DatagramKind::Quality {
            let sent_back = MediaHeader::decode(&bytes)
                .ok()
                .and_then(|(stamped, payload)| copy_stamped(stamped, FlowId(0), payload))
                .is_some_and(|echo| route.own.send_datagram(echo).is_ok());
            let counter = if sent_back {
                &stats.forwarded
            } else {
                &stats.unsendable
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl MediaRoutes {
    /// A datagram another node relayed for `conn`, already stamped there
    /// with its sender's flow: delivered only if that flow is one of the
    /// members `conn` hears (only members hear a call, across nodes too).
    pub(crate) fn deliver_from_node(&self, conn: ConnId, datagram: Bytes) {
        let shard = self.shard(conn);
        let stats = &shard.stats;
        let Ok((header, _)) = MediaHeader::decode(&datagram) else {
            stats.dropped_from_nodes.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let route = shard
            .routes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&conn)
            .cloned();
        // Audio and loss reports alike carry their sender's stamp.
        let member = route.filter(|route| route.hears(header.flow_id));
        match member {
            Some(route) if route.own.send_datagram(datagram).is_ok() => {
                stats.from_nodes.fetch_add(1, Ordering::Relaxed);
            }
            Some(_) => {
                stats.unsendable.fetch_add(1, Ordering::Relaxed);
            }
            None => {
                stats.dropped_from_nodes.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl MediaRoutes {
    /// A datagram another node relayed once for every member of `call_id`
    /// here, already stamped there with its sender's flow: delivered to
    /// each member here who hears that flow.
    pub(crate) fn deliver_to_call(&self, call_id: CallId, datagram: &Bytes) {
        let Ok((header, _)) = MediaHeader::decode(datagram) else {
            self.shards[0]
                .stats
                .dropped_from_nodes
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        let members = self
            .calls
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&call_id)
            .cloned();
        let Some(members) = members else {
            self.shards[0]
                .stats
                .dropped_from_nodes
                .fetch_add(1, Ordering::Relaxed);
            return;
        };
        for conn in members.iter() {
            let shard = self.shard(*conn);
            let route = shard
                .routes
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .get(conn)
                .cloned();
            let counter = match route {
                Some(route) if route.hears(header.flow_id) => {
                    if route.own.send_datagram(datagram.clone()).is_ok() {
                        &shard.stats.from_nodes
                    } else {
                        &shard.stats.unsendable
                    }
                }
                // The sender itself, or a member who no longer hears it.
                _ => continue,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// A new datagram: `header` stamped with `flow`, then `payload`.
fn copy_stamped(header: MediaHeader, flow: FlowId, payload: &[u8]) -> Option<Bytes> {
    let stamped = MediaHeader {
        flow_id: flow,
        ..header
    };
    let mut buffer = vec![0; MAX_HEADER_LEN + payload.len()];
    let len = stamped.encode(payload, &mut buffer).ok()?;
    buffer.truncate(len);
    Some(Bytes::from(buffer))
}

#[cfg(test)]
mod tests {
    //! The relay path's allocations, counted: a global allocator that
    //! counts what the current thread allocates while it is marked.

    // A global allocator is an unsafe trait; this one wraps the system's.
    #![allow(unsafe_code)]

    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;
    use std::sync::Mutex;

    use bytes::BytesMut;
    use calling_api::ErrorCode;
    use signaling_link::LinkClosed;

    use super::*;

    struct Counting;

    thread_local! {
        static COUNTING: Cell<bool> = const { Cell::new(false) };
        static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    }

    fn count() {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|count| count.set(count.get() + 1));
        }
    }

    // SAFETY: every call is forwarded unchanged to the system allocator.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            count();
            // SAFETY: same contract as ours.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            count();
            // SAFETY: same contract as ours.
            unsafe { System.dealloc(ptr, layout) }
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            count();
            // SAFETY: same contract as ours.
            unsafe { System.realloc(ptr, layout, new_size) }
        }
    }

    #[global_allocator]
    static ALLOCATOR: Counting = Counting;

    /// Allocations (and frees) `work` made on this thread.
    fn allocations(work: impl FnOnce()) -> usize {
        ALLOCATIONS.with(|count| count.set(0));
        COUNTING.with(|flag| flag.set(true));
        work();
        COUNTING.with(|flag| flag.set(false));
        ALLOCATIONS.with(Cell::get)
    }

    /// A peer that keeps what it gets, in room reserved beforehand.
    #[derive(Debug)]
    struct Peer(Mutex<Vec<Bytes>>);

    impl MediaLink for Peer {
        fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
            self.0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(datagram);
            Ok(())
        }

        fn close(&self, _: ErrorCode, _: &str) {}
    }

    /// The route of a member with flow 7 whose peers (flows 8, 9…) are
    /// `peers`.
    fn route_to<P: MediaLink>(peers: &[Arc<P>], own: Arc<dyn MediaLink>) -> Route {
        Route {
            flow: FlowId(7),
            peers: peers
                .iter()
                .zip(8..)
                .map(|(peer, flow)| (FlowId(flow), Arc::clone(peer) as Arc<dyn MediaLink>))
                .collect(),
            remote: Vec::new(),
            nodes: Vec::new(),
            own,
        }
    }

    /// A datagram as quinn hands one over: split out of the buffer of the
    /// packet that carried it, which is then dropped.
    fn received(claimed_flow: u32, sequence: u32) -> Bytes {
        let header = MediaHeader {
            kind: DatagramKind::Audio,
            flow_id: FlowId(claimed_flow),
            sequence,
            timestamp: sequence * 960,
            voice_activity: true,
            level_dbov: 25,
        };
        let mut packet = BytesMut::zeroed(1_500);
        let len = header
            .encode(&[0x55; 80], &mut packet)
            .unwrap_or_else(|error| panic!("{error}"));
        packet.split_to(len).freeze()
    }

    #[test]
    fn relaying_a_datagram_allocates_nothing() {
        let routes = MediaRoutes::default();
        let peers: Vec<Arc<Peer>> = (0..3)
            .map(|_| Arc::new(Peer(Mutex::new(Vec::with_capacity(200)))))
            .collect();
        let route = route_to(&peers, Arc::new(Peer(Mutex::new(Vec::new()))));
        routes.set(ConnId(1), Some(route));
        let datagrams: Vec<Bytes> = (0..100).map(|sequence| received(3, sequence)).collect();
        let mut datagrams = datagrams.into_iter();
        // The first one may set up what later ones reuse.
        routes.relay(ConnId(1), datagrams.next().unwrap_or_default());
        let made = allocations(|| {
            for datagram in datagrams.by_ref() {
                routes.relay(ConnId(1), datagram);
            }
        });
        assert_eq!(
            made, 0,
            "allocations while relaying 99 datagrams to 3 peers"
        );
        for peer in &peers {
            let got = peer.0.lock().unwrap_or_else(PoisonError::into_inner);
            assert_eq!(got.len(), 100);
            let (header, payload) =
                MediaHeader::decode(&got[99]).unwrap_or_else(|error| panic!("{error}"));
            assert_eq!(
                (header.flow_id, header.sequence),
                (FlowId(7), 99),
                "stamped"
            );
            assert_eq!(payload, [0x55; 80]);
        }
        assert_eq!(routes.counts().forwarded, 300);
        // A claimed flow id of another length cannot be stamped in place:
        // that datagram is copied (which the count sees).
        let longer = received(300, 100);
        let made = allocations(|| routes.relay(ConnId(1), longer));
        assert!(made > 0, "the copy path allocates, and is counted");
    }

    /// A peer whose path carries datagrams up to a size, as quinn's does.
    #[derive(Debug)]
    struct NarrowPeer {
        max: usize,
        got: Mutex<Vec<Bytes>>,
    }

    impl MediaLink for NarrowPeer {
        fn send_datagram(&self, datagram: Bytes) -> Result<(), LinkClosed> {
            if datagram.len() > self.max {
                return Err(LinkClosed);
            }
            self.got
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(datagram);
            Ok(())
        }

        fn close(&self, _: ErrorCode, _: &str) {}
    }

    /// A datagram that the flow stamp makes too large for a peer's path is
    /// counted, not lost without a trace.
    #[test]
    fn a_datagram_the_stamp_makes_too_large_is_counted() {
        let routes = MediaRoutes::default();
        let sent = received(0, 1);
        let peer = Arc::new(NarrowPeer {
            max: sent.len(),
            got: Mutex::new(Vec::new()),
        });
        let route = Route {
            // A flow id that takes two bytes where the sender wrote one.
            flow: FlowId(300),
            peers: vec![(FlowId(8), Arc::clone(&peer) as Arc<dyn MediaLink>)],
            remote: Vec::new(),
            nodes: Vec::new(),
            own: Arc::new(Peer(Mutex::new(Vec::new()))),
        };
        routes.set(ConnId(1), Some(route));
        routes.relay(ConnId(1), sent);
        let counts = routes.counts();
        assert_eq!((counts.forwarded, counts.unsendable), (0, 1));
        assert!(
            peer.got
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_empty()
        );
    }

    /// A loss report or receiver features of the wrong length, or a report
    /// over 100 %, is dropped at the server (counted malformed); valid
    /// ones go to the member they name.
    #[test]
    fn invalid_reports_and_features_go_nowhere() {
        let routes = MediaRoutes::default();
        let peer = Arc::new(Peer(Mutex::new(Vec::new())));
        let route = route_to(
            std::slice::from_ref(&peer),
            Arc::new(Peer(Mutex::new(Vec::new()))),
        );
        routes.set(ConnId(1), Some(route));
        let about = |kind: DatagramKind, payload: &[u8]| {
            let mut buffer = vec![0; MAX_HEADER_LEN + payload.len()];
            let len = MediaHeader::about(kind, FlowId(8))
                .encode(payload, &mut buffer)
                .unwrap_or_else(|error| panic!("{error}"));
            buffer.truncate(len);
            Bytes::from(buffer)
        };
        for (kind, payload) in [
            (DatagramKind::Report, &[101_u8][..]),
            (DatagramKind::Report, &[5, 5][..]),
            (DatagramKind::Report, &[][..]),
            (DatagramKind::Features, &[1, 0][..]),
        ] {
            routes.relay(ConnId(1), about(kind, payload));
        }
        assert_eq!(routes.counts().dropped_malformed, 4);
        routes.relay(ConnId(1), about(DatagramKind::Report, &[100]));
        routes.relay(ConnId(1), about(DatagramKind::Features, &[3]));
        assert_eq!(routes.counts().forwarded, 2);
        assert_eq!(
            peer.0.lock().unwrap_or_else(PoisonError::into_inner).len(),
            2
        );
    }

    /// A member's network word goes to every other member with its flow,
    /// and back to it with flow 0.
    #[test]
    fn a_network_word_goes_to_everyone_and_back_to_its_sender() {
        let routes = MediaRoutes::default();
        let peers: Vec<Arc<Peer>> = (0..2)
            .map(|_| Arc::new(Peer(Mutex::new(Vec::new()))))
            .collect();
        let own = Arc::new(Peer(Mutex::new(Vec::new())));
        let route = route_to(&peers, Arc::clone(&own) as Arc<dyn MediaLink>);
        routes.set(ConnId(1), Some(route));
        let word = PathQuality {
            rtt_ms: Some(20),
            ..PathQuality::default()
        }
        .to_payload();
        let mut buffer = vec![0; MAX_HEADER_LEN + word.len()];
        let len = MediaHeader::about(DatagramKind::Quality, FlowId(0))
            .encode(&word, &mut buffer)
            .unwrap_or_else(|error| panic!("{error}"));
        buffer.truncate(len);
        routes.relay(ConnId(1), Bytes::from(buffer));
        let flow_of = |peer: &Peer| {
            let got = peer.0.lock().unwrap_or_else(PoisonError::into_inner);
            got.iter()
                .map(|datagram| {
                    let (header, payload) =
                        MediaHeader::decode(datagram).unwrap_or_else(|error| panic!("{error}"));
                    assert_eq!(
                        PathQuality::from_payload(payload).and_then(|word| word.rtt_ms),
                        Some(20)
                    );
                    header.flow_id
                })
                .collect::<Vec<_>>()
        };
        for peer in &peers {
            assert_eq!(flow_of(peer), [FlowId(7)]);
        }
        assert_eq!(flow_of(&own), [FlowId(0)], "back to its sender");
        assert_eq!(routes.counts().forwarded, 3);
    }

    fn got(peer: &Peer) -> usize {
        peer.0.lock().unwrap_or_else(PoisonError::into_inner).len()
    }

    /// A member in a call with one member here (flow 8) and three on
    /// another node (flows 9–11): its audio goes to the one here and once
    /// to the other node; a loss report about flow 10 goes to that member
    /// alone.
    #[test]
    fn audio_crosses_to_another_node_once_and_a_report_to_its_member_alone() {
        let routes = MediaRoutes::default();
        let here = Arc::new(Peer(Mutex::new(Vec::new())));
        let there: Vec<Arc<Peer>> = (0..3)
            .map(|_| Arc::new(Peer(Mutex::new(Vec::new()))))
            .collect();
        let node = Arc::new(Peer(Mutex::new(Vec::new())));
        routes.set(
            ConnId(1),
            Some(Route {
                flow: FlowId(7),
                peers: vec![(FlowId(8), Arc::clone(&here) as Arc<dyn MediaLink>)],
                remote: there
                    .iter()
                    .zip(9..)
                    .map(|(peer, flow)| (FlowId(flow), Arc::clone(peer) as Arc<dyn MediaLink>))
                    .collect(),
                nodes: vec![Arc::clone(&node) as Arc<dyn MediaLink>],
                own: Arc::new(Peer(Mutex::new(Vec::new()))),
            }),
        );
        for sequence in 0..5 {
            routes.relay(ConnId(1), received(0, sequence));
        }
        assert_eq!((got(&here), got(&node)), (5, 5));
        assert!(there.iter().all(|peer| got(peer) == 0));
        let mut report = BytesMut::zeroed(64);
        let header = MediaHeader {
            kind: DatagramKind::Report,
            flow_id: FlowId(10),
            sequence: 0,
            timestamp: 0,
            voice_activity: false,
            level_dbov: 127,
        };
        let len = header
            .encode(&[3], &mut report)
            .unwrap_or_else(|error| panic!("{error}"));
        routes.relay(ConnId(1), report.split_to(len).freeze());
        assert_eq!(got(&there[1]), 1, "the member the report names");
        assert_eq!(
            (got(&here), got(&node), got(&there[0]), got(&there[2])),
            (5, 5, 0, 0)
        );
        assert_eq!(routes.counts().forwarded, 11);
    }

    /// What another node sends once for a call reaches every member here
    /// who hears its sender, and nobody else.
    #[test]
    fn a_datagram_for_a_call_reaches_each_member_here_who_hears_its_sender() {
        let routes = MediaRoutes::default();
        let members: Vec<Arc<Peer>> = (0..3)
            .map(|_| Arc::new(Peer(Mutex::new(Vec::new()))))
            .collect();
        let sender_link = Arc::new(Peer(Mutex::new(Vec::new())));
        for (index, member) in members.iter().enumerate() {
            // The third member's route does not have the sender (it left
            // the call while this datagram was on its way).
            let remote = if index < 2 {
                vec![(FlowId(42), Arc::clone(&sender_link) as Arc<dyn MediaLink>)]
            } else {
                vec![(FlowId(43), Arc::clone(&sender_link) as Arc<dyn MediaLink>)]
            };
            routes.set(
                ConnId(index as u64 + 1),
                Some(Route {
                    flow: FlowId(index as u32 + 1),
                    peers: Vec::new(),
                    remote,
                    nodes: Vec::new(),
                    own: Arc::clone(member) as Arc<dyn MediaLink>,
                }),
            );
        }
        let call = CallId(77);
        routes.set_call(call, &[ConnId(1), ConnId(2), ConnId(3)]);
        let stamped = received(42, 1);
        routes.deliver_to_call(call, &stamped);
        routes.deliver_to_call(CallId(78), &stamped);
        assert_eq!(
            members.iter().map(|m| got(m)).collect::<Vec<_>>(),
            [1, 1, 0]
        );
        assert_eq!(routes.counts().from_nodes, 2);
        assert_eq!(routes.counts().dropped_from_nodes, 1, "a call not here");
        routes.set_call(call, &[]);
        routes.deliver_to_call(call, &stamped);
        assert_eq!(
            members.iter().map(|m| got(m)).collect::<Vec<_>>(),
            [1, 1, 0]
        );
    }
}
