//! An emulated lossy path: a UDP proxy on loopback between one client and
//! the server that drops a seeded share of the datagrams both ways. QUIC
//! retransmits the signaling; the audio has to live with the loss.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::net::UdpSocket;

/// Forwards UDP between clients and `server`, dropping `loss` of the
/// packets in each direction. One upstream socket per client address.
pub struct LossyProxy {
    pub addr: SocketAddr,
    pub dropped: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for LossyProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A small seeded generator (the same SplitMix64 the emulators use).
fn next_unit(state: &mut u64) -> f64 {
    *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    ((z ^ (z >> 31)) >> 11) as f64 / (1_u64 << 53) as f64
}

impl LossyProxy {
    pub async fn start(server: SocketAddr, loss: f64, seed: u64) -> Self {
        let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
        let addr = front.local_addr().unwrap();
        let dropped = Arc::new(AtomicU64::new(0));
        let counter = Arc::clone(&dropped);
        let task = tokio::spawn(async move {
            let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
            let mut state = seed;
            let mut buffer = vec![0_u8; 65_536];
            loop {
                let Ok((len, client)) = front.recv_from(&mut buffer).await else {
                    return;
                };
                let upstream = match upstreams.get(&client) {
                    Some(upstream) => Arc::clone(upstream),
                    None => {
                        let upstream = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                        upstream.connect(server).await.unwrap();
                        // The way back, with its own losses.
                        let (back, front, counter) = (
                            Arc::clone(&upstream),
                            Arc::clone(&front),
                            Arc::clone(&counter),
                        );
                        let mut back_state = state ^ 0x5555;
                        tokio::spawn(async move {
                            let mut buffer = vec![0_u8; 65_536];
                            while let Ok(len) = back.recv(&mut buffer).await {
                                if next_unit(&mut back_state) < loss {
                                    counter.fetch_add(1, Ordering::Relaxed);
                                    continue;
                                }
                                let _ = front.send_to(&buffer[..len], client).await;
                            }
                        });
                        upstreams.insert(client, Arc::clone(&upstream));
                        upstream
                    }
                };
                if next_unit(&mut state) < loss {
                    counter.fetch_add(1, Ordering::Relaxed);
                    continue;
                }
                let _ = upstream.send(&buffer[..len]).await;
            }
        });
        Self {
            addr,
            dropped,
            task,
        }
    }
}
