//! The decimal encoding of full head chunks: byte-aligned, and several times faster to
//! decode than XOR. A full chunk whose values are all decimals of one exponent — what
//! exporters print: counters, sizes, hundredths of seconds — is rewritten this way when
//! it leaves the heap for a head chunk file; other chunks (NaN, stale markers, ±Inf,
//! results of float arithmetic) stay XOR. Byte layout in `docs/format/chunks.md`.
//!
//! A value `v` is stored as the integer `m` with `m / 10^e == v` bit for bit, the
//! decoder's own division; a timestamp as its distance from the previous one less the
//! chunk's usual spacing. Both are zig-zag varints, one or two bytes each for exporter
//! data, where XOR spends a few bits per timestamp and tens per changing value.

use crate::dense::{as_decimal, decimal_exponent, median_step, MAX_EXPONENT, POW10};
use crate::varint::{put_varint, Cursor};

/// The top bit of a head chunk's stored sample count: the chunk is in this encoding.
pub(crate) const DECIMAL: u16 = 0x8000;

/// Encodes `samples` (time-ordered, 1 to 32,767 of them) into `out` (cleared first);
/// `false`, with `out` left unspecified, when some value is not a decimal this encoding
/// holds exactly. `deltas` is scratch space.
pub(crate) fn encode(samples: &[(i64, f64)], out: &mut Vec<u8>, deltas: &mut Vec<i64>) -> bool {
    let Some(&(_, first)) = samples.first() else {
        return false;
    };
    if samples.len() >= usize::from(DECIMAL) {
        return false;
    }
    // From the smallest exponent the first value takes, raised until every value is exact
    // at it (a value exact at a smaller exponent need not be at a larger one).
    let Some(mut e) = decimal_exponent(first) else {
        return false;
    };
    let step = median_step(samples, deltas);
    'exponent: while e <= MAX_EXPONENT {
        out.clear();
        out.push(e as u8);
        put_varint(out, samples[0].0);
        put_varint(out, step);
        let (mut prev_t, mut prev_m) = (samples[0].0, 0i64);
        for (i, &(t, v)) in samples.iter().enumerate() {
            let Some(m) = as_decimal(v, e) else {
                e += 1;
                continue 'exponent;
            };
            if i > 0 {
                put_varint(out, t.wrapping_sub(prev_t).wrapping_sub(step));
            }
            put_varint(out, m.wrapping_sub(prev_m));
            (prev_t, prev_m) = (t, m);
        }
        return true;
    }
    false
}

/// Decodes a decimal chunk of `count` samples. Truncated or malformed bytes end it
/// early (never a panic), as a damaged XOR chunk does.
#[derive(Clone)]
pub(crate) struct DecimalIter<'a> {
    r: Cursor<'a>,
    remaining: u16,
    /// The next timestamp is the previous one plus `step` plus its stored offset.
    t: i64,
    step: i64,
    m: i64,
    p: f64,
    first: bool,
}

impl<'a> DecimalIter<'a> {
    pub(crate) fn new(bytes: &'a [u8], count: u16) -> Self {
        let mut r = Cursor::new(bytes);
        let header = r
            .bytes(1)
            .and_then(|e| e.first())
            .and_then(|&e| POW10.get(usize::from(e)))
            .and_then(|&p| Some((p, r.varint()?, r.varint()?)));
        let (p, t0, step, remaining) =
            header.map_or((1.0, 0, 0, 0), |(p, t0, step)| (p, t0, step, count));
        DecimalIter {
            r,
            remaining,
            // The first sample's offset is 0: the first delta read lands on `t0`.
            t: t0.wrapping_sub(step),
            step,
            m: 0,
            p,
            first: true,
        }
    }

    /// How many samples are not read yet.
    pub(crate) fn remaining(&self) -> u16 {
        self.remaining
    }

    /// Passes the samples not read yet to `f`, in order, until it returns `false`.
    #[inline]
    pub(crate) fn decode_while(self, mut f: impl FnMut(i64, f64) -> bool) {
        for (t, v) in self {
            if !f(t, v) {
                return;
            }
        }
    }
}

impl Iterator for DecimalIter<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        // The first sample's time offset is not stored: it is 0.
        let dt = if self.first {
            self.first = false;
            Some(0)
        } else {
            self.r.varint()
        };
        let Some((dt, dm)) = dt.and_then(|dt| Some((dt, self.r.varint()?))) else {
            // Truncated bytes: stop rather than yield garbage.
            self.remaining = 0;
            return None;
        };
        self.t = self.t.wrapping_add(self.step).wrapping_add(dt);
        self.m = self.m.wrapping_add(dm);
        Some((self.t, self.m as f64 / self.p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(samples: &[(i64, f64)]) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        encode(samples, &mut out, &mut Vec::new()).then_some(out)
    }

    fn bits(samples: impl IntoIterator<Item = (i64, f64)>) -> Vec<(i64, u64)> {
        samples.into_iter().map(|(t, v)| (t, v.to_bits())).collect()
    }

    /// Encodes, then checks the iterator and the bulk decoder give back every bit.
    fn roundtrip(samples: &[(i64, f64)]) {
        let bytes = encoded(samples).unwrap_or_else(|| panic!("not encodable: {samples:?}"));
        let n = samples.len() as u16;
        assert_eq!(
            bits(DecimalIter::new(&bytes, n)),
            bits(samples.iter().copied())
        );
        let mut bulk = Vec::new();
        DecimalIter::new(&bytes, n).decode_while(|t, v| {
            bulk.push((t, v));
            true
        });
        assert_eq!(bits(bulk), bits(samples.iter().copied()));
    }

    /// A scrape every 15 s with a few milliseconds of jitter, from a pseudo-random walk.
    fn scrape_times(n: usize, seed: u64) -> Vec<i64> {
        let mut x = seed;
        (0..n as i64)
            .map(|i| {
                x = x
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                1_700_000_000_000 + i * 15_000 + (x >> 61) as i64
            })
            .collect()
    }

    #[test]
    fn exporter_values_round_trip_bit_for_bit() {
        let t = scrape_times(120, 7);
        let kinds: Vec<Box<dyn Fn(usize) -> f64>> = vec![
            // Integer counters, hundredths of seconds, KiB sizes, load averages,
            // constants, negative gauges, values that need a larger exponent later on.
            Box::new(|i| (i * 37) as f64),
            Box::new(|i| (123_456 + i * 1_337 % 1_500) as f64 / 100.0),
            Box::new(|i| (8_000_000 + i * 4) as f64 * 1024.0),
            Box::new(|i| [0.52, 0.61, 1.07, 0.98][i % 4]),
            Box::new(|_| 1.0),
            Box::new(|i| -1.0 - (i as f64) * 0.25),
            Box::new(|i| if i < 60 { 1.5 } else { 2.123_456_789 }),
            Box::new(|i| (i % 10) as f64 / 10.0),
            Box::new(|_| 0.0),
            Box::new(|i| 9.007_199_254_740_99e15 - i as f64),
        ];
        for f in &kinds {
            let samples: Vec<(i64, f64)> = t.iter().enumerate().map(|(i, &t)| (t, f(i))).collect();
            roundtrip(&samples);
            roundtrip(&samples[..1]);
            roundtrip(&samples[..2]);
        }
    }

    #[test]
    fn gaps_and_irregular_times_round_trip() {
        let times = [
            -5_000,
            0,
            1,
            15_000,
            15_001,
            3_600_000,
            3_615_003,
            1 << 40,
            (1 << 40) + 7,
        ];
        let samples: Vec<(i64, f64)> = times.iter().map(|&t| (t, t as f64 / 1000.0)).collect();
        roundtrip(&samples);
    }

    #[test]
    fn values_that_are_not_decimals_stay_out() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        for odd in [
            f64::NAN,
            stale,
            f64::INFINITY,
            f64::NEG_INFINITY,
            -0.0,
            0.1 + 0.2,
            1e300,
            f64::MIN_POSITIVE,
        ] {
            let samples = [(0, 1.0), (15_000, odd), (30_000, 2.0)];
            assert!(encoded(&samples).is_none(), "{odd:?} was encoded");
        }
        assert!(encoded(&[]).is_none());
    }

    #[test]
    fn smaller_than_xor_for_counters() {
        let t = scrape_times(120, 3);
        let samples: Vec<(i64, f64)> = t
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, (1_000_000 + i * i * 97 % 1_500) as f64 / 100.0))
            .collect();
        let dec = encoded(&samples).map(|b| b.len());
        let xor = crate::chunk::prometheus_xor_chunk(&samples).len();
        assert!(
            dec.is_some_and(|d| d < xor),
            "decimal {dec:?} bytes, XOR {xor}"
        );
    }

    #[test]
    fn damaged_bytes_end_early_and_never_panic() {
        let t = scrape_times(120, 11);
        let samples: Vec<(i64, f64)> = t
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, (i * 1_234_567) as f64 / 1000.0))
            .collect();
        let bytes = encoded(&samples).unwrap_or_default();
        let want = bits(samples.iter().copied());
        // Every truncation yields a prefix of the samples.
        for cut in 0..bytes.len() {
            let got = bits(DecimalIter::new(&bytes[..cut], 120));
            assert!(got.len() < want.len());
            assert_eq!(got, want[..got.len()], "cut at {cut}");
        }
        // Any byte changed, and counts larger than what is stored: at most `count`
        // samples, no panic.
        let mut x = 5u64;
        for _ in 0..2_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let mut bad = bytes.clone();
            let at = (x as usize) % bad.len();
            bad[at] = (x >> 32) as u8;
            assert!(DecimalIter::new(&bad, 120).count() <= 120);
            assert!(DecimalIter::new(&bad, 32_767).count() <= 32_767);
        }
        assert_eq!(DecimalIter::new(&[], 5).count(), 0);
        assert_eq!(DecimalIter::new(&[200, 0, 0, 0], 5).count(), 0);
    }
}
