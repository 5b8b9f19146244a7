//! The hasher of the daemon's hot maps (inodes, open files, locks).
//!
//! std's default SipHash-1-3 resists hash flooding, but the keys here are
//! chosen by the daemon (nodeids and file handles from counters) or by the
//! source filesystem (device and inode numbers), never by a user, and it
//! cost ~240 instructions per lookup: 15% of the daemon's instructions per
//! created file (callgrind, bench/README.md). This is a folded multiply
//! (as foldhash and ahash's fallback do): a few instructions per word, and
//! both the low bits (hashbrown's bucket) and the high bits (its tag, and
//! dashmap's shard) depend on every input bit.

use std::hash::{BuildHasherDefault, Hasher};

use dashmap::DashMap;

/// A concurrent map with [`FastHasher`].
pub type FastMap<K, V> = DashMap<K, V, BuildHasherDefault<FastHasher>>;

/// 2^64 / the golden ratio, odd: consecutive keys land far apart in the
/// high bits (Fibonacci hashing; a constant with close rational
/// approximations, such as pi's fraction, clusters them).
const K: u64 = 0x9e37_79b9_7f4a_7c15;

#[derive(Default, Clone, Copy)]
pub struct FastHasher(u64);

impl FastHasher {
    #[inline]
    fn add(&mut self, word: u64) {
        let m = u128::from(self.0 ^ word) * u128::from(K);
        self.0 = (m as u64) ^ ((m >> 64) as u64);
    }
}

impl Hasher for FastHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(w));
        }
        self.add(bytes.len() as u64);
    }

    #[inline]
    fn write_u8(&mut self, n: u8) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u16(&mut self, n: u16) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }

    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }

    #[inline]
    fn write_usize(&mut self, n: usize) {
        self.add(n as u64);
    }

    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;
    use std::hash::{BuildHasher, Hash};

    fn h<T: Hash>(v: T) -> u64 {
        BuildHasherDefault::<FastHasher>::default().hash_one(v)
    }

    #[test]
    fn sequential_keys_spread_over_low_and_high_bits() {
        // 4096 consecutive nodeids: the low 12 bits (a table's bucket) and
        // the top 12 bits (tag and shard) should take most of their values.
        let low: HashSet<u64> = (1000..5096u64).map(|k| h(k) & 0xfff).collect();
        let high: HashSet<u64> = (1000..5096u64).map(|k| h(k) >> 52).collect();
        assert!(low.len() > 2400, "low bits: {} distinct", low.len());
        assert!(high.len() > 2400, "high bits: {} distinct", high.len());
    }

    #[test]
    fn pairs_in_either_order_differ() {
        assert_ne!(h((1u64, 2u64)), h((2u64, 1u64)));
        assert_ne!(h((0u64, 7u64)), h((7u64, 0u64)));
        assert_ne!(h(b"ab".as_slice()), h(b"ab\0".as_slice()));
    }

    #[test]
    fn a_map_with_it_works() {
        let m: FastMap<(u64, u64), u32> = FastMap::default();
        for i in 0..10_000u64 {
            m.insert((i >> 3, i), i as u32);
        }
        assert_eq!(m.len(), 10_000);
        assert_eq!(m.get(&(5, 42)).map(|v| *v), Some(42));
        assert!(m.get(&(6, 42)).is_none());
    }
}
