//! Remote-write senders send every series' labels with every sample, encoded the same way
//! each time. The cache maps those encoded bytes to the head series they name, so a series
//! seen before is appended without decoding, validating, sorting and hashing its labels
//! again, and without the head's label lookup.
//!
//! The key is the length of the bytes and a digest of them, drawn with secret random
//! constants chosen when the cache is made, so that whatever the bytes are, two different
//! label encodings get the same key only by a chance too small to matter, and the cache
//! keeps no copy of the bytes:
//!
//! - Up to [`NH_MAX_BYTES`], two NH sums (the first layer of UMAC): the bytes as 64-bit
//!   words `m`, zero-padded to a multiple of 16 bytes, and `Σ (m₂ᵢ + k₂ᵢ)·(m₂ᵢ₊₁ + k₂ᵢ₊₁)
//!   mod 2^128` with all additions modulo 2^64, the second sum with the key words shifted
//!   by two (a Toeplitz pair). For two different inputs of one length NH agrees with
//!   probability at most 2^-64, the Toeplitz pair at most 2^-128; inputs of different
//!   lengths have different keys. One 64×64-bit multiplication per 8 bytes.
//! - Longer inputs: two polynomial hashes modulo the prime 2^61 − 1 with random bases.
//!   For two different inputs of at most `n` 7-byte words both agree with probability at
//!   most (n / 2^61)².
//!
//! At 10^7 series of one length the chance of any confusion is under 10^-24 with NH and,
//! at 200 words, under 10^-17 with the polynomials.
//!
//! Only what passed validation is cached, and validation depends on the bytes alone (and
//! on write limits fixed for the process), so a hit may skip it. A cached reference may
//! name a series the head has since dropped (references are never reused); the appender
//! then reports it unknown and the caller takes the slow path, which refreshes the entry.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::{PoisonError, RwLock, RwLockReadGuard};

use strata_storage::SeriesRef;

/// 2^61 − 1, a Mersenne prime.
const P: u64 = (1 << 61) - 1;

/// Entries kept before the cache starts over: 24–64 bytes each, so at most 256 MiB.
/// Series churn (a label that changes every deploy) would otherwise grow it forever.
const DEFAULT_MAX_ENTRIES: usize = 4 << 20;

/// Inputs up to this length are digested by NH, longer ones by the polynomials.
const NH_MAX_BYTES: usize = 1024;
/// NH key words: one per 8 bytes, and two more for the second, shifted sum.
const NH_KEY_WORDS: usize = NH_MAX_BYTES / 8 + 2;

/// The digest of a series' encoded labels, and their length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Key {
    digest: [u64; 4],
    len: u32,
}

impl Key {
    /// Where the key starts looking in a table of `mask + 1` slots. The digest's high
    /// words are products' high halves, well mixed; low bits of a product are not.
    fn home(&self, mask: usize) -> usize {
        let x = (self.digest[1] ^ self.digest[3]).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        ((x >> 32) as usize) & mask
    }
}

/// An open-addressing table (linear probing) of keys and references: 40 bytes a series,
/// and a lookup's slot can be prefetched, which a general-purpose map does not allow.
#[derive(Default)]
struct Table {
    /// A power of two in length (or empty); `r == 0` marks a free slot.
    slots: Vec<Slot>,
    len: usize,
}

/// The key's fields held flat rather than as a [`Key`]: a nested key would pad the slot
/// from 40 bytes to 48.
#[derive(Debug, Clone, Copy, Default)]
struct Slot {
    digest: [u64; 4],
    len: u32,
    /// The reference plus one.
    r: u32,
}

impl Slot {
    fn key(&self) -> Key {
        Key {
            digest: self.digest,
            len: self.len,
        }
    }

    fn holds(&self, k: &Key) -> bool {
        self.key() == *k
    }
}

impl Table {
    fn home(&self, k: Key) -> usize {
        k.home(self.slots.len().wrapping_sub(1))
    }

    fn prefetch(&self, k: Key) {
        if !self.slots.is_empty() {
            // A slot may straddle two cache lines: both its ends.
            let slot: *const Slot = &self.slots[self.home(k)];
            strata_storage::prefetch(slot);
            strata_storage::prefetch(slot.cast::<u8>().wrapping_add(size_of::<Slot>() - 1));
        }
    }

    fn get(&self, k: Key) -> Option<SeriesRef> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(k);
        loop {
            let s = &self.slots[i];
            if s.r == 0 {
                return None;
            }
            if s.holds(&k) {
                return Some(SeriesRef(s.r - 1));
            }
            i = (i + 1) & mask;
        }
    }

    fn insert(&mut self, k: Key, r: SeriesRef) {
        let Some(stored) = r.0.checked_add(1) else {
            return;
        };
        // At most three quarters full, so that probes stay short and always end.
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            let old = std::mem::take(&mut self.slots);
            self.slots = vec![Slot::default(); (old.len() * 2).max(1024)];
            self.len = 0;
            for s in old.into_iter().filter(|s| s.r != 0) {
                self.put(s.key(), s.r);
            }
        }
        self.put(k, stored);
    }

    /// Sets `k`'s slot to `stored` (the reference plus one).
    fn put(&mut self, k: Key, stored: u32) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(k);
        loop {
            let s = &mut self.slots[i];
            if s.r == 0 {
                *s = Slot {
                    digest: k.digest,
                    len: k.len,
                    r: stored,
                };
                self.len += 1;
                return;
            }
            if s.holds(&k) {
                s.r = stored;
                return;
            }
            i = (i + 1) & mask;
        }
    }
}

/// Encoded labels → head series, shared by all writers of one database.
pub struct SeriesCache {
    /// NH's key words.
    nh: Box<[u64; NH_KEY_WORDS]>,
    /// Each polynomial base to the powers 0 to 8.
    powers: [[u64; 9]; 2],
    table: RwLock<Table>,
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
        let random = |salt: u64| {
            let mut h = RandomState::new().build_hasher();
            h.write_u64(salt);
            h.finish()
        };
        // In [2, P): 0 and 1 would make a weak polynomial.
        let base = |salt: u64| 2 + random(salt) % (P - 2);
        let mut nh = Box::new([0u64; NH_KEY_WORDS]);
        for (i, k) in nh.iter_mut().enumerate() {
            *k = random(3 + i as u64);
        }
        let powers = |r: u64| {
            let mut p = [1u64; 9];
            for i in 1..9 {
                p[i] = mul_mod(p[i - 1], r);
            }
            p
        };
        Self {
            nh,
            powers: [powers(base(1)), powers(base(2))],
            table: RwLock::new(Table::default()),
            max_entries: max_entries.max(1),
        }
    }

    /// The key of `bytes`.
    pub fn key(&self, bytes: &[u8]) -> Key {
        // Longer inputs than any cache could hold are refused before they get here.
        let len = bytes.len() as u32;
        let digest = if bytes.len() <= NH_MAX_BYTES {
            self.nh(bytes)
        } else {
            let (h1, h2) = self.polynomials(bytes);
            [h1, h2, 0, 0]
        };
        Key { digest, len }
    }

    /// The two NH sums of `bytes` (at most [`NH_MAX_BYTES`]), each as its low and high
    /// word.
    #[inline]
    fn nh(&self, bytes: &[u8]) -> [u64; 4] {
        let term = |m: u128, k: &[u64]| {
            let (a, b) = (m as u64, (m >> 64) as u64);
            u128::from(a.wrapping_add(k[0])) * u128::from(b.wrapping_add(k[1]))
        };
        let (mut s1, mut s2) = (0u128, 0u128);
        let blocks = bytes.chunks_exact(16);
        let rest = blocks.remainder().len();
        // The first sum takes key words 2i and 2i + 1, the second 2i + 2 and 2i + 3.
        let mut k1 = self.nh.chunks_exact(2);
        let mut k2 = self.nh[2..].chunks_exact(2);
        for c in blocks {
            let m = u128::from_le_bytes(c.try_into().unwrap_or_default());
            if let (Some(a), Some(b)) = (k1.next(), k2.next()) {
                s1 = s1.wrapping_add(term(m, a));
                s2 = s2.wrapping_add(term(m, b));
            }
        }
        if rest > 0 {
            // The last block zero-padded: read as the 16 bytes ending the input, shifted
            // down past those the blocks before took.
            let m = if bytes.len() >= 16 {
                let end: &[u8; 16] = bytes[bytes.len() - 16..].try_into().unwrap_or(&[0; 16]);
                u128::from_le_bytes(*end) >> (8 * (16 - rest))
            } else {
                let mut last = [0u8; 16];
                last[..rest].copy_from_slice(bytes);
                u128::from_le_bytes(last)
            };
            if let (Some(a), Some(b)) = (k1.next(), k2.next()) {
                s1 = s1.wrapping_add(term(m, a));
                s2 = s2.wrapping_add(term(m, b));
            }
        }
        [s1 as u64, (s1 >> 64) as u64, s2 as u64, (s2 >> 64) as u64]
    }

    /// The two polynomial hashes of `bytes`.
    fn polynomials(&self, bytes: &[u8]) -> (u64, u64) {
        let wide = |a: u64, b: u64| u128::from(a) * u128::from(b);
        let [a, b] = &self.powers;
        let (mut h1, mut h2) = (0u64, 0u64);
        // Eight words a step, then four words a step once fewer than eight are left.
        let mut wide_blocks = bytes.chunks_exact(7 * 8);
        for c in &mut wide_blocks {
            let x = words::<8>(c);
            h1 = step(h1, &x, a);
            h2 = step(h2, &x, b);
        }
        let mut blocks = wide_blocks.remainder().chunks_exact(7 * 4);
        for c in &mut blocks {
            let x = words::<4>(c);
            h1 = step(h1, &x, a);
            h2 = step(h2, &x, b);
        }
        // What is left in one more step: its whole words, the last word zero-padded
        // (possibly all padding), and the length, as one more word, which tells the
        // padding apart from zero bytes that were sent. Two to five words.
        let rest = blocks.remainder();
        let mut tail = [0u64; 5];
        let whole = rest.len() / 7;
        for (t, w) in tail.iter_mut().zip(rest.chunks_exact(7)) {
            let mut b = [0u8; 8];
            b[..7].copy_from_slice(w);
            *t = u64::from_le_bytes(b);
        }
        tail[whole] = rest[whole * 7..]
            .iter()
            .rev()
            .fold(0, |v, &b| (v << 8) | u64::from(b));
        tail[whole + 1] = bytes.len() as u64 & P;
        let k = whole + 2;
        let last = |h: u64, p: &[u64; 9]| {
            let mut sum = wide(h, p[k]);
            for (j, &t) in tail[..k].iter().enumerate() {
                sum += wide(t, p[k - 1 - j]);
            }
            reduce(sum)
        };
        (last(h1, a), last(h2, b))
    }

    /// Shared access for a request's lookups.
    pub fn reader(&self) -> CacheReader<'_> {
        CacheReader(self.table.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Records what a request resolved.
    pub fn insert(&self, entries: impl IntoIterator<Item = (Key, SeriesRef)>) {
        let mut table = self.table.write().unwrap_or_else(PoisonError::into_inner);
        for (k, r) in entries {
            if table.len >= self.max_entries {
                *table = Table::default();
            }
            table.insert(k, r);
        }
    }

    /// Number of cached series.
    pub fn len(&self) -> usize {
        self.table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Lookups under one read lock.
pub struct CacheReader<'a>(RwLockReadGuard<'a, Table>);

impl CacheReader<'_> {
    pub fn get(&self, k: Key) -> Option<SeriesRef> {
        self.0.get(k)
    }

    /// Starts loading where [`CacheReader::get`] will look for `k`: a request computes
    /// all its keys first, then looks them up with the cache misses overlapped.
    pub fn prefetch(&self, k: Key) {
        self.0.prefetch(k);
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

/// The `N` 7-byte words of `c` (`7 * N` bytes), little-endian.
#[inline(always)]
fn words<const N: usize>(c: &[u8]) -> [u64; N] {
    const LOW56: u64 = (1 << 56) - 1;
    let at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&c[i..i + 8]);
        u64::from_le_bytes(b)
    };
    // The last word is read from one byte earlier, so as not to run past the block.
    std::array::from_fn(|i| {
        if i + 1 < N {
            at(7 * i) & LOW56
        } else {
            at(7 * i - 1) >> 8
        }
    })
}

/// `N` steps of `h·r + x` at once: `h·r^N + x₁·r^(N-1) + … + x_N`, the multiplications
/// independent of each other and summed before one reduction (below 2^123 for `N ≤ 8`,
/// as `h, r^i < 2^61` and `x < 2^56`). `p` holds `r` to the powers 0 to 8.
#[inline(always)]
fn step<const N: usize>(h: u64, x: &[u64; N], p: &[u64; 9]) -> u64 {
    let mut sum = u128::from(h) * u128::from(p[N]);
    for (i, &w) in x.iter().enumerate() {
        sum += u128::from(w) * u128::from(p[N - 1 - i]);
    }
    reduce(sum)
}

/// `s mod P` for `s < 2^125`.
fn reduce(s: u128) -> u64 {
    let hi = (s >> 61) as u64;
    let t = (s as u64 & P) + (hi & P) + (hi >> 61);
    let t = (t & P) + (t >> 61);
    if t >= P {
        t - P
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `a + b mod P` for `a, b < P`.
    fn add_mod(a: u64, b: u64) -> u64 {
        let s = a + b;
        if s >= P {
            s - P
        } else {
            s
        }
    }

    #[test]
    fn arithmetic_modulo_the_prime() {
        assert_eq!(mul_mod(P - 1, P - 1), 1);
        assert_eq!(mul_mod(P - 1, 2), P - 2);
        assert_eq!(mul_mod(1 << 60, 2), 1);
        assert_eq!(add_mod(P - 1, 1), 0);
        for s in [
            0u128,
            1,
            u128::from(P),
            u128::from(P) * 2,
            (1 << 125) - 1,
            (1 << 122) + 12345,
        ] {
            assert_eq!(u128::from(reduce(s)), s % u128::from(P), "{s}");
        }
        let (a, b) = (0x0123_4567_89AB_CDEF & P, 0x0FED_CBA9_8765_4321 & P);
        assert_eq!(
            u128::from(mul_mod(a, b)),
            u128::from(a) * u128::from(b) % u128::from(P)
        );
    }

    #[test]
    fn short_keys_are_the_nh_toeplitz_pair_and_the_length() {
        let c = SeriesCache::default();
        let k = &c.nh[..];
        let bytes: Vec<u8> = (0..NH_MAX_BYTES + 20)
            .map(|i| (i as u8).wrapping_mul(91) ^ 0x3C)
            .collect();
        for n in 0..=NH_MAX_BYTES {
            let mut padded = bytes[..n].to_vec();
            padded.resize(n.div_ceil(16) * 16, 0);
            let words: Vec<u64> = padded
                .chunks(8)
                .map(|w| u64::from_le_bytes(w.try_into().unwrap_or_default()))
                .collect();
            let sum = |shift: usize| {
                (0..words.len() / 2).fold(0u128, |s, i| {
                    let a = words[2 * i].wrapping_add(k[2 * i + shift]);
                    let b = words[2 * i + 1].wrapping_add(k[2 * i + 1 + shift]);
                    s.wrapping_add(u128::from(a) * u128::from(b))
                })
            };
            let (s1, s2) = (sum(0), sum(2));
            let want = Key {
                digest: [s1 as u64, (s1 >> 64) as u64, s2 as u64, (s2 >> 64) as u64],
                len: n as u32,
            };
            assert_eq!(c.key(&bytes[..n]), want, "{n} bytes");
        }
        let long = &bytes[..NH_MAX_BYTES + 1];
        let (h1, h2) = c.polynomials(long);
        assert_eq!(
            c.key(long),
            Key {
                digest: [h1, h2, 0, 0],
                len: long.len() as u32
            }
        );
    }

    #[test]
    fn one_changed_byte_anywhere_changes_the_key() {
        let c = SeriesCache::default();
        for n in [1, 15, 16, 17, 100, 255, NH_MAX_BYTES, NH_MAX_BYTES + 9] {
            let bytes: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            let k = c.key(&bytes);
            for at in 0..n {
                let mut other = bytes.clone();
                other[at] ^= 1 << (at % 8);
                assert_ne!(c.key(&other), k, "{n} bytes, at {at}");
            }
        }
    }

    #[test]
    fn long_keys_are_the_polynomials_of_the_seven_byte_words_and_the_length() {
        let c = SeriesCache::default();
        let (r1, r2) = (c.powers[0][1], c.powers[1][1]);
        let bytes: Vec<u8> = (0..120u8).map(|i| i.wrapping_mul(37) ^ 0xA5).collect();
        for n in 0..=bytes.len() {
            let b = &bytes[..n];
            let mut words: Vec<u64> = b
                .chunks(7)
                .map(|w| {
                    let mut a = [0u8; 8];
                    a[..w.len()].copy_from_slice(w);
                    u64::from_le_bytes(a)
                })
                .collect();
            if n % 7 == 0 {
                words.push(0);
            }
            words.push(n as u64);
            let horner = |r: u64| words.iter().fold(0, |h, &w| add_mod(mul_mod(h, r), w));
            assert_eq!(c.polynomials(b), (horner(r1), horner(r2)), "{n} bytes");
        }
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
    fn grows_and_finds_every_key() {
        let c = SeriesCache::default();
        let key = |i: u32| c.key(format!("series-{i}").as_bytes());
        for chunk in (0..10_000u32).collect::<Vec<_>>().chunks(777) {
            c.insert(chunk.iter().map(|&i| (key(i), SeriesRef(i))));
        }
        assert_eq!(c.len(), 10_000);
        let r = c.reader();
        for i in 0..10_000 {
            r.prefetch(key(i));
            assert_eq!(r.get(key(i)), Some(SeriesRef(i)));
        }
        assert_eq!(r.get(key(10_000)), None);
        drop(r);
        // A key seen again takes its new reference; the last reference cannot be kept.
        c.insert([
            (key(5), SeriesRef(50_000)),
            (key(20_000), SeriesRef(u32::MAX)),
        ]);
        assert_eq!(c.len(), 10_000);
        assert_eq!(c.reader().get(key(5)), Some(SeriesRef(50_000)));
        assert_eq!(c.reader().get(key(20_000)), None);
        assert_eq!(SeriesCache::default().reader().get(key(1)), None);
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
