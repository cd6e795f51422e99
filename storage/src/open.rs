//! The open chunk of a head series: where its newest samples are appended. Decimal
//! values (what exporters print) go into the decimal encoding's varint layout, which a
//! query decodes two to three times faster than XOR; a value that is not a decimal of
//! any exponent the chunk can take turns the chunk into XOR until it is full.

use crate::chunk::{Mark, XorChunk, XorIter};
use crate::decimal::{DecimalChunk, DecimalIter, DecimalMark, DECIMAL};
use crate::dense::{decimal_exponent, MAX_EXPONENT};
use crate::head_chunks::HeadIter;

/// Tag first, then the chunk: the decimal chunk's hot fields right after the tag (see
/// `SeriesData`'s layout).
#[derive(Debug, Clone)]
#[repr(C, u8)]
pub(crate) enum OpenChunk {
    Decimal(DecimalChunk),
    Xor(XorChunk),
}

/// Where a query starts decoding a copy of the open chunk's tail.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Resume {
    Xor(Mark),
    Decimal(DecimalMark),
}

impl Resume {
    /// The time of the sample before the mark.
    pub(crate) fn t(&self) -> i64 {
        match self {
            Resume::Xor(m) => m.t,
            Resume::Decimal(m) => m.t,
        }
    }

    /// Decodes the chunk's `bytes` from the mark's byte on; `stored_count` is the whole
    /// chunk's.
    pub(crate) fn iter<'a>(&self, bytes: &'a [u8], stored_count: u16) -> HeadIter<'a> {
        match self {
            Resume::Xor(m) => HeadIter::Xor(XorIter::resume(bytes, m, stored_count)),
            Resume::Decimal(m) => {
                HeadIter::Decimal(DecimalIter::resume(bytes, m, stored_count & !DECIMAL))
            }
        }
    }
}

/// The buffer a chunk starts with: its header and the first few samples.
const FIRST_BYTES: usize = 32;

impl Default for OpenChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl OpenChunk {
    pub(crate) fn new() -> Self {
        OpenChunk::Decimal(DecimalChunk::with_buffer(
            Vec::with_capacity(FIRST_BYTES),
            0,
        ))
    }

    /// Appends a sample. The caller guarantees `t` is greater than the last timestamp.
    #[inline]
    pub(crate) fn append(&mut self, t: i64, v: f64) {
        match self {
            OpenChunk::Decimal(d) => {
                if !d.append(t, v) {
                    self.rewrite(t, v);
                }
            }
            OpenChunk::Xor(x) => x.append(t, v),
        }
    }

    /// The chunk written again with `(t, v)` appended: at the smallest larger exponent
    /// that holds every value, else as XOR.
    #[cold]
    fn rewrite(&mut self, t: i64, v: f64) {
        let OpenChunk::Decimal(d) = self else {
            return;
        };
        let mut samples: Vec<(i64, f64)> = Vec::with_capacity(d.len() + 1);
        samples.extend(d.iter());
        samples.push((t, v));
        let floor = usize::from(d.exponent());
        let mut bytes = std::mem::take(d).into_buffer();
        if let Some(least) = decimal_exponent(v) {
            for e in least.max(floor)..=MAX_EXPONENT {
                match DecimalChunk::at_exponent(samples.iter().copied(), e, bytes) {
                    Ok(c) => {
                        *d = c;
                        return;
                    }
                    Err(b) => bytes = b,
                }
            }
        }
        bytes.clear();
        let mut x = XorChunk::with_buffer(bytes);
        for (t, v) in samples {
            x.append(t, v);
        }
        *self = OpenChunk::Xor(x);
    }

    /// Empties the chunk for the next one, keeping its exponent when decimal (a series'
    /// next chunk most likely needs it again). The buffer is given back for one of
    /// [`FIRST_BYTES`]: the chunk grows again in small steps, so that a series holds
    /// about what its open chunk has written (about 3 bytes a sample in this layout)
    /// rather than what its largest one did.
    pub(crate) fn reset(&mut self) {
        let empty = OpenChunk::Decimal(DecimalChunk::default());
        let (mut bytes, e) = match std::mem::replace(self, empty) {
            OpenChunk::Decimal(d) => {
                let e = d.exponent();
                (d.into_buffer(), e)
            }
            OpenChunk::Xor(x) => (x.into_buffer(), 0),
        };
        if bytes.capacity() > FIRST_BYTES {
            // A new buffer rather than a shrinking `realloc` (see `grow_exact`).
            bytes = Vec::with_capacity(FIRST_BYTES);
        }
        bytes.clear();
        *self = OpenChunk::Decimal(DecimalChunk::with_buffer(bytes, e));
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            OpenChunk::Decimal(d) => d.len(),
            OpenChunk::Xor(x) => x.len(),
        }
    }

    /// The sample count as head chunk files and snapshots store it: with the
    /// [`DECIMAL`] bit when the bytes are decimal.
    pub(crate) fn stored_count(&self) -> u16 {
        match self {
            OpenChunk::Decimal(d) => d.len() as u16 | DECIMAL,
            OpenChunk::Xor(x) => x.len() as u16,
        }
    }

    pub(crate) fn min_time(&self) -> i64 {
        match self {
            OpenChunk::Decimal(d) => d.min_time(),
            OpenChunk::Xor(x) => x.min_time(),
        }
    }

    pub(crate) fn max_time(&self) -> i64 {
        match self {
            OpenChunk::Decimal(d) => d.max_time(),
            OpenChunk::Xor(x) => x.max_time(),
        }
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        match self {
            OpenChunk::Decimal(d) => d.bytes(),
            OpenChunk::Xor(x) => x.bytes(),
        }
    }

    /// Where the next append writes: for [`crate::prefetch`].
    pub(crate) fn tail(&self) -> *const u8 {
        let b = self.bytes();
        b.as_ptr().wrapping_add(b.len().saturating_sub(1))
    }

    pub(crate) fn iter(&self) -> HeadIter<'_> {
        match self {
            OpenChunk::Decimal(d) => HeadIter::Decimal(d.iter()),
            OpenChunk::Xor(x) => HeadIter::Xor(x.iter()),
        }
    }

    /// The latest mark after which every sample is newer than `t`, and the chunk's bytes
    /// from that mark on: what a query of the newest minutes copies and decodes.
    pub(crate) fn tail_before(&self, t: i64) -> Option<(&[u8], Resume)> {
        match self {
            OpenChunk::Decimal(d) => {
                let m = d.mark_before(t)?;
                Some((
                    d.bytes().get(m.at..).unwrap_or_default(),
                    Resume::Decimal(m),
                ))
            }
            OpenChunk::Xor(x) => {
                let m = x.mark_before(t)?;
                let (tail, from) = x.tail_from(&m);
                Some((tail, Resume::Xor(from)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bits(samples: impl IntoIterator<Item = (i64, f64)>) -> Vec<(i64, u64)> {
        samples.into_iter().map(|(t, v)| (t, v.to_bits())).collect()
    }

    /// Appends `samples` to a new chunk; checks every way of reading it gives them back
    /// bit for bit, and returns the chunk.
    fn filled(samples: &[(i64, f64)]) -> OpenChunk {
        let mut c = OpenChunk::new();
        for &(t, v) in samples {
            c.append(t, v);
        }
        check(&c, samples);
        c
    }

    fn check(c: &OpenChunk, samples: &[(i64, f64)]) {
        let want = bits(samples.iter().copied());
        assert_eq!(c.len(), samples.len());
        assert_eq!(bits(c.iter()), want);
        let mut bulk = Vec::new();
        c.iter().decode_while(|t, v| {
            bulk.push((t, v));
            true
        });
        assert_eq!(bits(bulk), want);
        // As a head chunk file or a snapshot keeps it: bytes and stored count.
        assert_eq!(bits(HeadIter::new(c.bytes(), c.stored_count())), want);
        if let (Some(&(t0, _)), Some(&(tn, _))) = (samples.first(), samples.last()) {
            assert_eq!((c.min_time(), c.max_time()), (t0, tn));
        }
        // From the latest mark before each time (only the two latest are kept): every
        // sample after the mark.
        if samples.len() > 33 {
            assert!(c.tail_before(i64::MAX).is_some(), "no mark");
        }
        for &(t, _) in samples {
            let Some((tail, from)) = c.tail_before(t) else {
                continue;
            };
            assert!(from.t() < t);
            let got = bits(from.iter(tail, c.stored_count()));
            let after: Vec<_> = want.iter().copied().filter(|s| s.0 > from.t()).collect();
            assert_eq!(got, after, "from the mark before {t}");
        }
    }

    fn times(n: usize) -> impl Iterator<Item = i64> {
        (0..n as i64).map(|i| 1_700_000_000_000 + i * 15_000 + (i * 7) % 5)
    }

    #[test]
    fn exporter_values_stay_decimal() {
        let kinds: [fn(i64) -> f64; 4] = [
            |i| (i * 1_234) as f64,
            |i| (i * i * 37 + 5) as f64 / 100.0,
            |i| ((i * 7919) % 200 - 100) as f64 / 4.0,
            |_| 1.0,
        ];
        for value in kinds {
            let samples: Vec<_> = times(120).zip(0..).map(|(t, i)| (t, value(i))).collect();
            let c = filled(&samples);
            assert!(matches!(c, OpenChunk::Decimal(_)));
            assert_ne!(c.stored_count() & DECIMAL, 0);
        }
    }

    #[test]
    fn a_value_needing_more_digits_raises_the_exponent() {
        // 1, 1.5, 1.25, 1.125, ...: each a digit longer than the one before.
        let samples: Vec<_> = times(40)
            .zip(0..)
            .map(|(t, i)| (t, 1.0 + 1.0 / f64::from(1u32 << (i % 8).min(6))))
            .collect();
        let c = filled(&samples);
        let OpenChunk::Decimal(d) = &c else {
            panic!("not decimal");
        };
        assert_eq!(d.exponent(), 6);
    }

    #[test]
    fn other_values_turn_the_chunk_into_xor() {
        for odd in [
            f64::NAN,
            f64::INFINITY,
            -0.0,
            0.1 + 0.2,
            1e300,
            f64::MIN_POSITIVE,
        ] {
            let mut samples: Vec<_> = times(70).map(|t| (t, (t % 1_000) as f64)).collect();
            samples[50].1 = odd;
            let c = filled(&samples);
            assert!(matches!(c, OpenChunk::Xor(_)), "{odd}");
            // The first value already: XOR from the start.
            samples[0].1 = odd;
            filled(&samples);
        }
    }

    #[test]
    fn reset_keeps_the_exponent_and_a_small_buffer() {
        let mut c = filled(&times(100).map(|t| (t, 0.25)).collect::<Vec<_>>());
        c.reset();
        assert_eq!(c.len(), 0);
        // Only a small buffer is kept.
        let OpenChunk::Decimal(d) = &c else {
            panic!("not decimal");
        };
        assert!(d.capacity() <= FIRST_BYTES, "{} bytes kept", d.capacity());
        let next: Vec<_> = times(10).map(|t| (t + 10_000_000, 3.0)).collect();
        for &(t, v) in &next {
            c.append(t, v);
        }
        check(&c, &next);
        let OpenChunk::Decimal(d) = &c else {
            panic!("not decimal");
        };
        assert_eq!(d.exponent(), 2);
        // After XOR, the next chunk is decimal again.
        let mut c = filled(&[(1, f64::NAN), (2, 1.0)]);
        c.reset();
        c.append(3, 2.0);
        assert!(matches!(c, OpenChunk::Decimal(_)));
        check(&c, &[(3, 2.0)]);
    }

    #[test]
    fn irregular_times_and_huge_values_round_trip() {
        let samples = [
            (-5_000, 9.0e15),
            (1, -9.0e15),
            (2, 0.0),
            (i64::MAX / 4, 1.0),
            (i64::MAX / 2, 123_456.789),
        ];
        filled(&samples);
        let mut many: Vec<_> = times(119).map(|t| (t, (t % 977) as f64)).collect();
        many[60].0 += 1;
        many[61].0 += 3_600_000;
        for s in &mut many[62..] {
            s.0 += 3_600_000;
        }
        filled(&many);
    }
}
