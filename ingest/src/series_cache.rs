//! Remote-write senders send every series' labels with every sample, encoded the same way
//! each time. The cache maps those encoded bytes to the head series they name, so a series
//! seen before is appended without decoding, validating, sorting and hashing its labels
//! again, and without the head's label lookup.
//!
//! The key is a 122-bit digest of the bytes: two polynomial hashes modulo the prime
//! 2^61 − 1 with bases drawn at random when the cache is made. For two different label
//! encodings of at most `n` 7-byte words the chance that both hashes agree is at most
//! (n / 2^61)², whatever the bytes are (the bases are secret), so the cache keeps no copy
//! of the bytes: at 100 words and 10^7 series the chance of any confusion is under 10^-19.
//!
//! Only what passed validation is cached, and validation depends on the bytes alone (and
//! on write limits fixed for the process), so a hit may skip it. A cached reference may
//! name a series the head has since dropped (references are never reused); the appender
//! then reports it unknown and the caller takes the slow path, which refreshes the entry.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use strata_storage::SeriesRef;

/// 2^61 − 1, a Mersenne prime.
const P: u64 = (1 << 61) - 1;

/// Entries kept before the cache starts over: about 24 bytes each, so at most 100 MiB.
/// Series churn (a label that changes every deploy) would otherwise grow it forever.
const DEFAULT_MAX_ENTRIES: usize = 4 << 20;

/// The digest of a series' encoded labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key(u64, u64);

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: the map uses it as its hash.
        state.write_u64(self.0 ^ self.1.rotate_left(32));
    }
}

/// Passes a [`Key`]'s word through as the map's hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Not reached for `Key`; a plain fold keeps it a correct hasher.
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x100_0000_01B3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

/// Encoded labels → head series, shared by all writers of one database.
pub struct SeriesCache {
    bases: (u64, u64),
    map: RwLock<HashMap<Key, SeriesRef, BuildHasherDefault<KeyHasher>>>,
    max_entries: usize,
}

impl Default for SeriesCache {
    fn default() -> Self {
        Self::with_capacity_limit(DEFAULT_MAX_ENTRIES)
    }
}

impl SeriesCache {
    /// A cache that starts over once it holds `max_entries`.
    pub fn with_capacity_limit(max_entries: usize) -> Self {
        let base = |salt: u64| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(salt);
            // In [2, P): 0 and 1 would make a weak polynomial.
            2 + h.finish() % (P - 2)
        };
        Self {
            bases: (base(1), base(2)),
            map: RwLock::new(HashMap::default()),
            max_entries: max_entries.max(1),
        }
    }

    /// The digest of `bytes`.
    pub fn key(&self, bytes: &[u8]) -> Key {
        let (r1, r2) = self.bases;
        let (mut h1, mut h2) = (0u64, 0u64);
        let mut words = bytes.chunks_exact(7);
        for w in &mut words {
            let mut b = [0u8; 8];
            b[..7].copy_from_slice(w);
            let x = u64::from_le_bytes(b);
            h1 = add_mod(mul_mod(h1, r1), x);
            h2 = add_mod(mul_mod(h2, r2), x);
        }
        let rest = words.remainder();
        let mut b = [0u8; 8];
        b[..rest.len()].copy_from_slice(rest);
        // The last word is zero-padded; the length, as one more word, tells the padding
        // apart from zero bytes that were sent.
        for x in [u64::from_le_bytes(b), bytes.len() as u64 & P] {
            h1 = add_mod(mul_mod(h1, r1), x);
            h2 = add_mod(mul_mod(h2, r2), x);
        }
        Key(h1, h2)
    }

    /// Shared access for a request's lookups.
    pub fn reader(&self) -> CacheReader<'_> {
        CacheReader(self.map.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records what a request resolved.
    pub fn insert(&self, entries: impl IntoIterator<Item = (Key, SeriesRef)>) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        for (k, r) in entries {
            if map.len() >= self.max_entries {
                map.clear();
            }
            map.insert(k, r);
        }
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.map
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lookups under one read lock.
pub struct CacheReader<'a>(
    RwLockReadGuard<'a, HashMap<Key, SeriesRef, BuildHasherDefault<KeyHasher>>>,
);

impl CacheReader<'_> {
    pub fn get(&self, k: Key) -> Option<SeriesRef> {
        self.0.get(&k).copied()
    }
}

/// `a · b mod P` for `a, b < P`.
fn mul_mod(a: u64, b: u64) -> u64 {
    let p = u128::from(a) * u128::from(b);
    let s = (p as u64 & P) + (p >> 61) as u64;
    if s >= P {
        s - P
    } else {
        s
    }
}

/// `a + b mod P` for `a < P`, `b < 2^56`.
fn add_mod(a: u64, b: u64) -> u64 {
    let s = a + b;
    if s >= P {
        s - P
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_modulo_the_prime() {
        assert_eq!(mul_mod(P - 1, P - 1), 1);
        assert_eq!(mul_mod(P - 1, 2), P - 2);
        assert_eq!(mul_mod(1 << 60, 2), 1);
        assert_eq!(add_mod(P - 1, 1), 0);
        let (a, b) = (0x0123_4567_89AB_CDEF & P, 0x0FED_CBA9_8765_4321 & P);
        assert_eq!(
            u128::from(mul_mod(a, b)),
            u128::from(a) * u128::from(b) % u128::from(P)
        );
    }

    #[test]
    fn keys_tell_apart_padding_length_and_order() {
        let c = SeriesCache::default();
        let inputs: Vec<&[u8]> = vec![
            b"",
            b"\0",
            b"\0\0\0\0\0\0\0",
            b"\0\0\0\0\0\0\0\0",
            b"abcdefg",
            b"abcdefgh",
            b"bacdefg",
            b"__name__node_load1instancehost-1:9100",
            b"__name__node_load1instancehost-2:9100",
        ];
        for (i, a) in inputs.iter().enumerate() {
            assert_eq!(c.key(a), c.key(a));
            for b in &inputs[i + 1..] {
                assert_ne!(c.key(a), c.key(b), "{a:?} and {b:?}");
            }
        }
        // A second cache draws other bases.
        let d = SeriesCache::default();
        assert_ne!(c.key(b"abc"), d.key(b"abc"));
    }

    #[test]
    fn starts_over_when_full() {
        let c = SeriesCache::with_capacity_limit(3);
        c.insert((0..3u32).map(|i| (c.key(&i.to_le_bytes()), SeriesRef(i))));
        assert_eq!(c.len(), 3);
        assert_eq!(
            c.reader().get(c.key(&1u32.to_le_bytes())),
            Some(SeriesRef(1))
        );
        c.insert([(c.key(b"x"), SeriesRef(9))]);
        assert_eq!(c.len(), 1);
        assert_eq!(c.reader().get(c.key(b"x")), Some(SeriesRef(9)));
        assert_eq!(c.reader().get(c.key(&1u32.to_le_bytes())), None);
    }
}
