//! A hasher for keys this side hands out itself (connection numbers), not
//! keys a client chooses.
//!
//! The standard library's SipHash defends a map against keys chosen to
//! collide; a connection number is counted up by the server (or by a node
//! of its own cluster), so nobody outside can choose one, and the maps
//! keyed by them are the largest of a cluster's control (a million
//! sessions rebuilt at once after a takeover). A multiply-and-rotate hash
//! (the one rustc uses for its own tables) costs a few nanoseconds instead
//! of twenty. Maps keyed by anything a client sends (user ids) keep
//! SipHash.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Multiply-and-rotate over the key's words; see the [module docs](self).
#[derive(Debug, Clone, Copy, Default)]
pub struct CountedKeyHasher(u64);

const SEED: u64 = 0x51_7c_c1_b7_27_22_0a_95;

impl CountedKeyHasher {
    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(SEED);
    }
}

impl Hasher for CountedKeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0_u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }

    fn write_u8(&mut self, value: u8) {
        self.add(u64::from(value));
    }

    fn write_u32(&mut self, value: u32) {
        self.add(u64::from(value));
    }

    fn write_u64(&mut self, value: u64) {
        self.add(value);
    }

    fn write_usize(&mut self, value: usize) {
        self.add(value as u64);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

/// A map keyed by numbers this side counts out (see the [module
/// docs](self)).
pub type CountedKeyMap<K, V> = HashMap<K, V, BuildHasherDefault<CountedKeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ConnId;

    #[test]
    fn sequential_keys_spread_and_every_word_counts() {
        let mut map: CountedKeyMap<ConnId, u64> = CountedKeyMap::default();
        for n in 0..10_000 {
            map.insert(ConnId(n), n);
        }
        assert!((0..10_000).all(|n| map.get(&ConnId(n)) == Some(&n)));
        let hash = |bytes: &[u8]| {
            let mut hasher = CountedKeyHasher::default();
            hasher.write(bytes);
            hasher.finish()
        };
        assert_ne!(
            hash(&[1, 0, 0, 0, 0, 0, 0, 0, 0]),
            hash(&[1, 0, 0, 0, 0, 0, 0, 0, 1])
        );
        // Sequential numbers land in different buckets of a small table
        // (the low bits pick the bucket).
        let buckets: std::collections::BTreeSet<u64> = (0..64_u64)
            .map(|n| {
                let mut hasher = CountedKeyHasher::default();
                hasher.write_u64(n);
                hasher.finish() & 63
            })
            .collect();
        assert_eq!(buckets.len(), 64);
    }
}
