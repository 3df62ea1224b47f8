//! What the server's per-datagram rate limit costs: two token buckets
//! (packets, bytes) and a clock read, as the connection task pays them for
//! every audio datagram, beside the clock read alone (the floor) in the
//! same run. `cargo xtask bench` runs it; the relay benchmark puts the
//! figure beside the ~15–20 µs a forwarded datagram costs.

#![allow(clippy::print_stdout)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use signaling_proto::TokenBucket;

fn main() {
    const ROUNDS: u32 = 5_000_000;
    let mut best_limited = Duration::MAX;
    let mut best_clock = Duration::MAX;
    for _ in 0..3 {
        let mut packets = TokenBucket::new(100.0, 100.0);
        let mut bytes = TokenBucket::new(32_000.0, 32_000.0);
        let started = Instant::now();
        for _ in 0..ROUNDS {
            let now = Instant::now();
            black_box(packets.admit(now, 1.0) && bytes.admit(now, black_box(160.0)));
        }
        best_limited = best_limited.min(started.elapsed());
        let started = Instant::now();
        for _ in 0..ROUNDS {
            black_box(Instant::now());
        }
        best_clock = best_clock.min(started.elapsed());
    }
    let per = |total: Duration| total.as_secs_f64() * 1e9 / f64::from(ROUNDS);
    let (limited, clock) = (per(best_limited), per(best_clock));
    println!("per-datagram rate limit, best of 3 × {ROUNDS} datagrams");
    println!("  clock read alone (floor):           {clock:6.1} ns");
    println!("  clock read + packet and byte buckets: {limited:6.1} ns");
    println!(
        "  the limit's cost: {:.1} ns per datagram, {:.2} % of a 15 µs forwarded datagram",
        limited,
        limited / 15_000.0 * 100.0
    );
}
