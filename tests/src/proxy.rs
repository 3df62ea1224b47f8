//! A UDP proxy on loopback between clients and the server whose faults the
//! test controls: a blackhole (nothing passes either way: a network outage,
//! a lift, a tunnel), random loss and added delay (a poor network), a
//! change of the source port the server sees (NAT rebinding, a new
//! network), and a new backend for new clients (a load balancer taking a
//! node out). One upstream socket per client address.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;

#[derive(Debug)]
struct Faults {
    /// Where new clients' packets go (a load balancer's backend).
    server: Mutex<SocketAddr>,
    blackhole: AtomicBool,
    /// The share of packets lost each way, as `f64` bits.
    loss: AtomicU64,
    /// Milliseconds added to each packet each way.
    delay_ms: AtomicU64,
    /// Packets that met the loss so far, toward the server and back, small
    /// (acknowledgements) and large (audio) apart.
    counted: [AtomicU64; 4],
    /// Bumped by each source-port change: upstreams of older generations
    /// are replaced at their client's next packet.
    generation: AtomicU64,
    /// The generation below which upstreams are closed: a NAT that forgot
    /// the old mapping, so what the server sends to the old port is lost.
    forgotten_below: AtomicU64,
    dropped: AtomicU64,
    /// When each packet from the server reached a client, and from a
    /// client left for the server.
    to_clients: Mutex<Vec<Instant>>,
    to_server: Mutex<Vec<Instant>>,
}

/// The proxy: clients connect to [`FaultProxy::addr`] instead of the server.
#[derive(Debug)]
pub struct FaultProxy {
    /// Where clients send.
    pub addr: SocketAddr,
    faults: Arc<Faults>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FaultProxy {
    /// A proxy to `server` on a free loopback port, letting everything
    /// through until told otherwise.
    ///
    /// # Panics
    /// If no loopback UDP socket can be bound: a test or benchmark tool.
    pub async fn start(server: SocketAddr) -> Self {
        let front = Arc::new(
            UdpSocket::bind("127.0.0.1:0")
                .await
                .expect("a loopback UDP socket"),
        );
        let addr = front.local_addr().expect("a bound socket's address");
        let faults = Arc::new(Faults {
            server: Mutex::new(server),
            blackhole: AtomicBool::new(false),
            loss: AtomicU64::new(0.0_f64.to_bits()),
            delay_ms: AtomicU64::new(0),
            counted: std::array::from_fn(|_| AtomicU64::new(0)),
            generation: AtomicU64::new(0),
            forgotten_below: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            to_clients: Mutex::default(),
            to_server: Mutex::default(),
        });
        let task = tokio::spawn(forward(front, Arc::clone(&faults)));
        Self { addr, faults, task }
    }

    /// Starts (`true`) or ends an outage: every packet either way is lost.
    pub fn blackhole(&self, on: bool) {
        self.faults.blackhole.store(on, Ordering::SeqCst);
    }

    /// From now on a share `loss` of the packets each way is lost, spread
    /// evenly (one in each run of ten for 0.1, small and large packets
    /// apart, so that what the SDK measures of its audio can be held to
    /// it), and the others arrive `delay` late (a poor network); `0.0` and
    /// zero end it.
    pub fn degrade(&self, loss: f64, delay: Duration) {
        self.faults.loss.store(loss.to_bits(), Ordering::SeqCst);
        let millis = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        self.faults.delay_ms.store(millis, Ordering::SeqCst);
    }

    /// From the next packet on, the server sees each client from a new
    /// source port.
    pub fn change_source_port(&self) {
        self.faults.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// A NAT rebinding as a home router does it: the old mapping is gone
    /// at once (what the server sends to the old port is lost) and each
    /// client's next packet opens a new one.
    pub fn rebind_forgetting_old(&self) {
        let new = self.faults.generation.fetch_add(1, Ordering::SeqCst) + 1;
        self.faults.forgotten_below.store(new, Ordering::SeqCst);
    }

    /// The longest time between two packets reaching a client from the
    /// server (`to_clients`) or the server from a client, within `from..to`
    /// (counted from `from` and up to `to` when nothing passed at the
    /// edges).
    pub fn longest_gap(&self, to_clients: bool, from: Instant, to: Instant) -> Duration {
        let times = if to_clients {
            &self.faults.to_clients
        } else {
            &self.faults.to_server
        };
        let times = times
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        longest_gap(&times, from, to)
    }

    /// From now on, clients not seen before go to `server` (as a load
    /// balancer sends new flows to another backend); those seen before
    /// stay with theirs.
    pub fn retarget(&self, server: SocketAddr) {
        *self
            .faults
            .server
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = server;
    }

    /// Packets lost to the blackhole or to the loss so far.
    pub fn dropped(&self) -> u64 {
        self.faults.dropped.load(Ordering::Relaxed)
    }
}

async fn forward(front: Arc<UdpSocket>, faults: Arc<Faults>) {
    let upstreams: Mutex<HashMap<SocketAddr, (u64, Arc<UdpSocket>)>> = Mutex::default();
    let mut buffer = vec![0_u8; 65_536];
    loop {
        let Ok((len, client)) = front.recv_from(&mut buffer).await else {
            return;
        };
        if faults.blackhole.load(Ordering::SeqCst) || faults.loses_one(true, len) {
            faults.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let generation = faults.generation.load(Ordering::SeqCst);
        let current = upstreams
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&client)
            .filter(|(made, _)| *made == generation)
            .map(|(_, upstream)| Arc::clone(upstream));
        let upstream = match current {
            Some(upstream) => upstream,
            None => {
                let Ok(upstream) = UdpSocket::bind("127.0.0.1:0").await else {
                    continue;
                };
                let server = *faults
                    .server
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                if upstream.connect(server).await.is_err() {
                    continue;
                }
                let upstream = Arc::new(upstream);
                tokio::spawn(back(
                    Arc::clone(&upstream),
                    Arc::clone(&front),
                    client,
                    Arc::clone(&faults),
                    generation,
                ));
                upstreams
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(client, (generation, Arc::clone(&upstream)));
                upstream
            }
        };
        match faults.delay() {
            None => {
                if upstream.send(&buffer[..len]).await.is_ok() {
                    record(&faults.to_server);
                }
            }
            Some(delay) => {
                let (packet, faults) = (buffer[..len].to_vec(), Arc::clone(&faults));
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if upstream.send(&packet).await.is_ok() {
                        record(&faults.to_server);
                    }
                });
            }
        }
    }
}

impl Faults {
    /// Whether the next packet of `len` bytes toward the server
    /// (`to_server`) or back is lost to [`FaultProxy::degrade`]'s loss: of
    /// each run of 1 / loss packets exactly one, at a seeded random place
    /// in the run (even, and never in step with a periodic sender, as every
    /// n-th would be), small packets (acknowledgements) and large ones
    /// (audio) counted apart, so that the audio loses exactly the share.
    fn loses_one(&self, to_server: bool, len: usize) -> bool {
        let loss = f64::from_bits(self.loss.load(Ordering::SeqCst));
        if loss <= 0.0 {
            return false;
        }
        // A run of at least one packet: the loss is at most 1.
        let run = (1.0 / loss).round().max(1.0) as u64;
        let class = usize::from(!to_server) * 2 + usize::from(len >= 90);
        let n = self.counted[class].fetch_add(1, Ordering::Relaxed);
        let mut z = (n / run).wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        n % run == (z ^ (z >> 31)) % run
    }

    /// The delay [`FaultProxy::degrade`] adds, if any.
    fn delay(&self) -> Option<Duration> {
        let millis = self.delay_ms.load(Ordering::SeqCst);
        (millis > 0).then(|| Duration::from_millis(millis))
    }
}

fn record(times: &Mutex<Vec<Instant>>) {
    times
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Instant::now());
}

/// The longest stretch of `from..to` without one of `times` (sorted).
pub fn longest_gap(times: &[Instant], from: Instant, to: Instant) -> Duration {
    let mut last = from;
    let mut longest = Duration::ZERO;
    for &at in times.iter().filter(|at| **at >= from && **at < to) {
        longest = longest.max(at - last);
        last = at;
    }
    longest.max(to - last)
}

/// The server's packets to `client`, through one upstream socket (an old
/// one keeps forwarding what the server still sends to its port).
async fn back(
    upstream: Arc<UdpSocket>,
    front: Arc<UdpSocket>,
    client: SocketAddr,
    faults: Arc<Faults>,
    generation: u64,
) {
    let mut buffer = vec![0_u8; 65_536];
    loop {
        let Ok(len) = upstream.recv(&mut buffer).await else {
            return;
        };
        if generation < faults.forgotten_below.load(Ordering::SeqCst) {
            return;
        }
        if faults.blackhole.load(Ordering::SeqCst) || faults.loses_one(false, len) {
            faults.dropped.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        match faults.delay() {
            None => {
                if front.send_to(&buffer[..len], client).await.is_ok() {
                    record(&faults.to_clients);
                }
            }
            Some(delay) => {
                let (packet, front, faults) = (
                    buffer[..len].to_vec(),
                    Arc::clone(&front),
                    Arc::clone(&faults),
                );
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if front.send_to(&packet, client).await.is_ok() {
                        record(&faults.to_clients);
                    }
                });
            }
        }
    }
}
