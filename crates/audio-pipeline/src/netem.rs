//! A seeded network emulator for tests and benchmarks: random and burst
//! loss, delay with jitter (and so reordering), duplication. Deterministic
//! for a given seed; time is whatever the caller says it is.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// The emulated path.
#[derive(Debug, Clone, Copy)]
pub struct NetemConfig {
    /// Independent loss probability per packet (0–1).
    pub loss: f64,
    /// Bursty loss (Gilbert–Elliott): probability to enter the bad state
    /// per packet, to leave it, and the loss rate inside it.
    pub burst: Option<(f64, f64, f64)>,
    /// Fixed one-way delay.
    pub delay: Duration,
    /// Up to this much more delay, uniformly at random (reorders packets).
    pub jitter: Duration,
    /// Probability that a packet arrives twice (0–1).
    pub duplicate: f64,
    /// Seed.
    pub seed: u64,
}

impl Default for NetemConfig {
    fn default() -> Self {
        Self {
            loss: 0.0,
            burst: None,
            delay: Duration::from_millis(20),
            jitter: Duration::ZERO,
            duplicate: 0.0,
            seed: 1,
        }
    }
}

/// A small deterministic generator (SplitMix64).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) >> 11) as f64 / (1_u64 << 53) as f64
    }
}

/// Packets in flight on the emulated path.
#[derive(Debug)]
pub struct Netem<P> {
    config: NetemConfig,
    rng: Rng,
    in_bad_state: bool,
    in_flight: BinaryHeap<Reverse<(Instant, u64)>>,
    packets: std::collections::HashMap<u64, P>,
    next_id: u64,
    sent: u64,
    lost: u64,
}

impl<P: Clone> Netem<P> {
    /// An empty path.
    pub fn new(config: NetemConfig) -> Self {
        Self {
            rng: Rng(config.seed),
            config,
            in_bad_state: false,
            in_flight: BinaryHeap::new(),
            packets: std::collections::HashMap::new(),
            next_id: 0,
            sent: 0,
            lost: 0,
        }
    }

    fn schedule(&mut self, now: Instant, packet: P) {
        let jitter = self.config.jitter.mul_f64(self.rng.next_f64());
        let id = self.next_id;
        self.next_id += 1;
        self.packets.insert(id, packet);
        self.in_flight
            .push(Reverse((now + self.config.delay + jitter, id)));
    }

    /// Starts the losses and jitter over from `seed`, as a new path would
    /// have them (packets in flight keep their times): two runs that
    /// restart alike from some packet on lose the same packets from there.
    pub fn restart_pattern(&mut self, seed: u64) {
        self.rng = Rng(seed);
        self.in_bad_state = false;
    }

    /// Changes the path from now on (packets in flight keep their times).
    pub fn set_config(&mut self, config: NetemConfig) {
        self.config = config;
    }

    /// Sends `packet` at `now`; it may be lost, delayed or duplicated.
    pub fn send(&mut self, now: Instant, packet: P) {
        self.sent += 1;
        let lost = if let Some((enter, leave, bad_loss)) = self.config.burst {
            self.in_bad_state = if self.in_bad_state {
                self.rng.next_f64() >= leave
            } else {
                self.rng.next_f64() < enter
            };
            self.in_bad_state && self.rng.next_f64() < bad_loss
        } else {
            false
        } || self.rng.next_f64() < self.config.loss;
        if lost {
            self.lost += 1;
            return;
        }
        if self.rng.next_f64() < self.config.duplicate {
            self.schedule(now, packet.clone());
        }
        self.schedule(now, packet);
    }

    /// The next packet that has arrived by `now`, earliest first.
    pub fn receive(&mut self, now: Instant) -> Option<P> {
        self.receive_timed(now).map(|(_, packet)| packet)
    }

    /// The next packet that has arrived by `now`, earliest first, with the
    /// moment it arrived (a receiver reading late still knows when).
    pub fn receive_timed(&mut self, now: Instant) -> Option<(Instant, P)> {
        let Reverse((at, id)) = *self.in_flight.peek()?;
        if at > now {
            return None;
        }
        self.in_flight.pop();
        self.packets.remove(&id).map(|packet| (at, packet))
    }

    /// The loss actually applied so far, in percent.
    pub fn loss_percent(&self) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * self.lost as f64 / self.sent as f64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_delay_and_duplicates_are_as_configured_and_repeatable() {
        let run = |seed| {
            let mut path = Netem::new(NetemConfig {
                loss: 0.1,
                duplicate: 0.05,
                jitter: Duration::from_millis(40),
                seed,
                ..NetemConfig::default()
            });
            let start = Instant::now();
            let mut received = Vec::new();
            for n in 0..10_000_u32 {
                let now = start + Duration::from_millis(u64::from(n) * 20);
                path.send(now, n);
                while let Some(packet) = path.receive(now) {
                    received.push(packet);
                }
            }
            (path.loss_percent(), received)
        };
        let (loss, received) = run(7);
        assert!((loss - 10.0).abs() < 1.0, "{loss}");
        let reordered = received.windows(2).filter(|pair| pair[1] < pair[0]).count();
        assert!(reordered > 100, "40 ms of jitter on 20 ms packets reorders");
        assert!(
            received.len() > 9_200,
            "duplicates add back some of what was lost"
        );
        assert_eq!(run(7).1, received, "same seed, same run");
    }
}
