//! The decimal encoding of full head chunks: byte-aligned or bit-packed, and several
//! times faster to decode than XOR. A full chunk whose values are all decimals of one
//! exponent — what exporters print: counters, sizes, hundredths of seconds — is rewritten
//! this way when it leaves the heap for a head chunk file; other chunks (NaN, stale
//! markers, ±Inf, results of float arithmetic) stay XOR. Byte layout in
//! `docs/format/chunks.md`.
//!
//! A value `v` is stored as the integer `m` with `m / 10^e == v` bit for bit, the
//! decoder's own division; a timestamp as its distance from the previous one less the
//! chunk's usual spacing. Those residuals are either zig-zag varints (one or two bytes
//! each for exporter data, where XOR spends a few bits per timestamp and tens per
//! changing value) or, when that is about as small, packed in a fixed number of bits
//! each: the decoder then reads every residual the same way, without a branch on its
//! length.

use crate::chunk::{grow_exact, GROWTH};
use crate::dense::{
    as_decimal, decimal_exponent, gcd, median_step, put_packed, zigzag_len, ExactDivisor,
    MAX_EXPONENT, POW10,
};
use crate::varint::{bytes_at, put_uvarint, put_varint, Cursor};

/// The top bit of a head chunk's stored sample count: the chunk is in this encoding.
pub(crate) const DECIMAL: u16 = 0x8000;

/// Set in a chunk's first byte (beside the exponent) when its residuals are bit-packed.
const PACKED: u8 = 0x80;
/// The widest packed residual: one little-endian 64-bit load holds any of them.
const MAX_WIDTH: u32 = 56;

/// The powers of ten up to the largest exponent, as integers.
const POW10_INT: [u64; MAX_EXPONENT + 1] = {
    let mut p = [1u64; MAX_EXPONENT + 1];
    let mut i = 1;
    while i <= MAX_EXPONENT {
        p[i] = p[i - 1] * 10;
        i += 1;
    }
    p
};

/// Encodes `samples` (time-ordered, 1 to 32,767 of them) into `out` (cleared first);
/// `false`, with `out` left unspecified, when some value is not a decimal this encoding
/// holds exactly. `scratch` is scratch space.
pub(crate) fn encode(samples: &[(i64, f64)], out: &mut Vec<u8>, scratch: &mut Vec<i64>) -> bool {
    let Some(&(t0, first)) = samples.first() else {
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
    let step = median_step(samples, scratch);
    let mantissas = scratch;
    'exponent: loop {
        if e > MAX_EXPONENT {
            return false;
        }
        mantissas.clear();
        for &(_, v) in samples {
            match as_decimal(v, e) {
                Some(m) => mantissas.push(m),
                None => {
                    e += 1;
                    continue 'exponent;
                }
            }
        }
        break;
    }
    let ms = &mantissas[..];
    let time_residual = |k: usize| {
        samples[k]
            .0
            .wrapping_sub(samples[k - 1].0)
            .wrapping_sub(step)
    };
    let delta = |k: usize| ms[k].wrapping_sub(ms[k - 1]);
    // What each layout takes: varints, or fixed widths from each residual's range.
    let (mut varint_bytes, mut factor) = (0usize, 0u64);
    let (mut t_min, mut t_max) = (i64::MAX, i64::MIN);
    for k in 1..samples.len() {
        let (rt, dm) = (time_residual(k), delta(k));
        varint_bytes += zigzag_len(rt) + zigzag_len(dm);
        (t_min, t_max) = (t_min.min(rt), t_max.max(rt));
        // Random increments reach 1 within a few deltas; a division each after that
        // would cost more than the rest of the encoding.
        if factor != 1 {
            factor = gcd(factor, dm.unsigned_abs());
        }
    }
    let factor = factor.clamp(1, i64::MAX as u64) as i64;
    // Without a common factor (random increments) no division is needed.
    let scaled = |k: usize| {
        if factor == 1 {
            delta(k)
        } else {
            delta(k) / factor
        }
    };
    let (mut m_min, mut m_max) = (i64::MAX, i64::MIN);
    for k in 1..samples.len() {
        let r = scaled(k);
        (m_min, m_max) = (m_min.min(r), m_max.max(r));
    }
    let n = samples.len() - 1;
    let (t_width, m_width, packed_bytes) = widths(n, (t_min, t_max), (m_min, m_max));
    let packed = packs(n, (t_width, m_width, packed_bytes), varint_bytes);

    out.clear();
    out.push(e as u8 | if packed { PACKED } else { 0 });
    put_varint(out, t0);
    put_varint(out, step);
    put_varint(out, ms[0]);
    if packed {
        put_varint(out, t_min);
        out.push(t_width as u8);
        put_uvarint(out, factor as u64);
        put_varint(out, m_min);
        out.push(m_width as u8);
        put_packed(out, (1..=n).map(time_residual), t_min, t_width as u8);
        put_packed(out, (1..=n).map(scaled), m_min, m_width as u8);
    } else {
        for k in 1..=n {
            put_varint(out, time_residual(k));
            put_varint(out, delta(k));
        }
    }
    true
}

/// The median of `r` (the element at index `len / 2` in sorted order, 0 when empty),
/// all of which lie in `[low, high]`: counted when that range is narrow (a scrape's
/// jitter), else selected in `room` (as long as `r`).
fn median_residual(r: &[i64], low: i64, high: i64, room: &mut [i64]) -> i64 {
    const NARROW: usize = 64;
    let mid = r.len() / 2;
    if r.is_empty() {
        return 0;
    }
    let range = high.wrapping_sub(low) as u64;
    if range < NARROW as u64 && r.len() <= usize::from(u16::MAX) {
        let mut counts = [0u16; NARROW];
        for &x in r {
            counts[x.wrapping_sub(low) as usize & (NARROW - 1)] += 1;
        }
        let mut seen = 0usize;
        for (i, &c) in counts.iter().enumerate() {
            seen += usize::from(c);
            if seen > mid {
                return low.wrapping_add(i as i64);
            }
        }
    }
    room.copy_from_slice(r);
    *room.select_nth_unstable(mid).1
}

/// The bits each of `n` time and mantissa residuals takes at a fixed width (from their
/// ranges, `(min, max)`), and the bytes the two packed sections take.
fn widths(n: usize, times: (i64, i64), mantissas: (i64, i64)) -> (u32, u32, usize) {
    let width = |(min, max): (i64, i64)| 64 - (max.wrapping_sub(min) as u64).leading_zeros();
    let (t_width, m_width) = (width(times), width(mantissas));
    let bytes = (n * t_width as usize).div_ceil(8) + (n * m_width as usize).div_ceil(8);
    (t_width, m_width, bytes)
}

/// Whether `n` residuals of the [`widths`] given are packed rather than written as
/// `varint_bytes` of varints: when within a quarter of the varints' size, as packed
/// residuals decode about twice as fast.
fn packs(
    n: usize,
    (t_width, m_width, packed_bytes): (u32, u32, usize),
    varint_bytes: usize,
) -> bool {
    n > 0
        && t_width <= MAX_WIDTH
        && m_width <= MAX_WIDTH
        && packed_bytes <= varint_bytes + varint_bytes / 4
}

/// Residuals of one kind packed `width` bits each, least significant bit first.
#[derive(Clone)]
struct Packed<'a> {
    bytes: &'a [u8],
    width: u32,
    mask: u64,
}

impl<'a> Packed<'a> {
    /// The section of `count` residuals that `r` is at, with its width byte read before.
    fn read(r: &mut Cursor<'a>, count: usize, width: u8) -> Option<Self> {
        let width = u32::from(width);
        if width > MAX_WIDTH {
            return None;
        }
        let bytes = r.bytes(count.checked_mul(width as usize)?.div_ceil(8))?;
        Some(Packed {
            bytes,
            width,
            mask: (1u64 << width) - 1,
        })
    }

    /// The `k`th residual, less the section's base.
    #[inline(always)]
    fn get(&self, k: usize) -> u64 {
        let bit = k * self.width as usize;
        let at = bit / 8;
        let word = u64::from_le_bytes(bytes_at(self.bytes, at));
        (word >> (bit % 8)) & self.mask
    }

    /// Unpacks the residuals from index `k` (a multiple of [`BATCH`]) into `out`; `buf`
    /// is scratch space.
    #[inline(always)]
    fn batch(&self, k: usize, buf: &mut [u8; BATCH_BYTES], out: &mut [u64; BATCH]) {
        let w = self.width as usize;
        let from = k * w / 8;
        let bytes = self.bytes.get(from..).unwrap_or(&[]);
        let n = bytes.len().min(BATCH * w / 8);
        buf[..n].copy_from_slice(&bytes[..n]);
        UNPACK[w](buf, out);
    }
}

/// Residuals unpacked at a time by [`DecimalIter::decode_while`].
const BATCH: usize = 64;
/// Bytes of a batch of the widest residuals, with room for the last 8-byte load.
const BATCH_BYTES: usize = BATCH * MAX_WIDTH as usize / 8 + 8;

/// Unpacks [`BATCH`] residuals of `W` bits from `src`, the first at bit 0: eight at a
/// time from `W` bytes, each with one load, a shift and a mask known at compile time.
fn unpack<const W: usize>(src: &[u8; BATCH_BYTES], out: &mut [u64; BATCH]) {
    let mask = (1u64 << W) - 1;
    for (g, group) in out.chunks_exact_mut(8).enumerate() {
        for (j, slot) in group.iter_mut().enumerate() {
            let bit = j * W;
            let at = g * W + bit / 8;
            let mut word = [0u8; 8];
            word.copy_from_slice(&src[at..at + 8]);
            *slot = (u64::from_le_bytes(word) >> (bit % 8)) & mask;
        }
    }
}

type Unpack = fn(&[u8; BATCH_BYTES], &mut [u64; BATCH]);

macro_rules! unpackers {
    ($($w:literal)*) => { [$(unpack::<$w> as Unpack),*] };
}

/// [`unpack`] for every width up to [`MAX_WIDTH`].
static UNPACK: [Unpack; MAX_WIDTH as usize + 1] = unpackers!(
    0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 27 28
    29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49 50 51 52 53 54 55 56
);

/// Where a bit-packed chunk's residuals come from.
#[derive(Clone)]
struct PackedResiduals<'a> {
    times: Packed<'a>,
    mantissas: Packed<'a>,
    /// Added to every time residual, with the step.
    t_base: i64,
    m_base: i64,
    factor: i64,
    /// The first mantissa, taken as the first sample's delta.
    m0: i64,
    /// The next residual's index.
    k: usize,
}

impl PackedResiduals<'_> {
    #[inline(always)]
    fn time(&self, k: usize) -> i64 {
        self.t_base.wrapping_add(self.times.get(k) as i64)
    }

    #[inline(always)]
    fn delta(&self, k: usize) -> i64 {
        self.m_base
            .wrapping_add(self.mantissas.get(k) as i64)
            .wrapping_mul(self.factor)
    }

    /// The samples after the one at (`t`, `m`) up to residual `end`, to `f` until it
    /// returns `false`; `value` makes a value of a mantissa.
    #[inline(always)]
    fn decode(
        &self,
        mut t: i64,
        mut m: i64,
        step: i64,
        end: usize,
        mut f: impl FnMut(i64, f64) -> bool,
        value: impl Fn(i64) -> f64,
    ) {
        let t_step = step.wrapping_add(self.t_base);
        let (m_base, factor) = (self.m_base, self.factor);
        let mut buf = [0u8; BATCH_BYTES];
        let (mut times, mut deltas) = ([0u64; BATCH], [0u64; BATCH]);
        let mut k = self.k;
        while k < end {
            let n = (end - k).min(BATCH);
            self.times.batch(k, &mut buf, &mut times);
            self.mantissas.batch(k, &mut buf, &mut deltas);
            for (&rt, &dm) in times[..n].iter().zip(&deltas[..n]) {
                t = t.wrapping_add(t_step).wrapping_add(rt as i64);
                m = m.wrapping_add(m_base.wrapping_add(dm as i64).wrapping_mul(factor));
                if !f(t, value(m)) {
                    return;
                }
            }
            k += n;
        }
    }
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
    /// Residuals bit-packed rather than varints after the header.
    packed: Option<PackedResiduals<'a>>,
}

impl<'a> DecimalIter<'a> {
    pub(crate) fn new(bytes: &'a [u8], count: u16) -> Self {
        let mut r = Cursor::new(bytes);
        let mut packed = None;
        let header = r.bytes(1).and_then(|b| b.first()).and_then(|&b| {
            let p = *POW10.get(usize::from(b & !PACKED))?;
            let (t0, step) = (r.varint()?, r.varint()?);
            if b & PACKED != 0 {
                let n = usize::from(count).checked_sub(1)?;
                let m0 = r.varint()?;
                let t_base = r.varint()?;
                let t_width = *r.bytes(1)?.first()?;
                let factor = i64::try_from(r.uvarint()?).ok()?;
                let m_base = r.varint()?;
                let m_width = *r.bytes(1)?.first()?;
                let times = Packed::read(&mut r, n, t_width)?;
                let mantissas = Packed::read(&mut r, n, m_width)?;
                packed = Some(PackedResiduals {
                    times,
                    mantissas,
                    t_base,
                    m_base,
                    factor,
                    m0,
                    k: 0,
                });
            }
            Some((p, t0, step))
        });
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
            packed: packed.filter(|_| remaining > 0),
        }
    }

    /// How many samples are not read yet.
    pub(crate) fn remaining(&self) -> u16 {
        self.remaining
    }

    /// Passes the samples not read yet to `f`, in order, until it returns `false`.
    #[inline]
    pub(crate) fn decode_while(mut self, mut f: impl FnMut(i64, f64) -> bool) {
        if self.packed.is_none() {
            if self.first {
                match self.next() {
                    Some((t, v)) if f(t, v) => {}
                    _ => return,
                }
            }
            // `m / 1` is `m`: integers skip the division.
            let pow = self.p;
            if pow == 1.0 {
                self.decode_varints(f, |m| m as f64);
            } else {
                self.decode_varints(f, |m| m as f64 / pow);
            }
            return;
        }
        // A packed chunk's first sample (from the header), and the rest of a batch read
        // partly through `next`, one at a time; then the rest a batch at a time, where
        // residuals of one width each take the same few instructions.
        while self.remaining > 0
            && (self.first || self.packed.as_ref().is_some_and(|p| p.k % BATCH != 0))
        {
            match self.next() {
                Some((t, v)) if f(t, v) => {}
                _ => return,
            }
        }
        let Some(p) = &self.packed else {
            return;
        };
        let end = p.k + usize::from(self.remaining);
        // `m / 1` is `m`: integers (the most common exponent) skip the division.
        let pow = self.p;
        if pow == 1.0 {
            p.decode(self.t, self.m, self.step, end, f, |m| m as f64);
        } else {
            p.decode(self.t, self.m, self.step, end, f, |m| m as f64 / pow);
        }
    }
}

impl DecimalIter<'_> {
    /// The varint layout's samples after the first, in one loop with the state in
    /// registers and one- and two-byte varints read inline.
    #[inline(always)]
    fn decode_varints(mut self, mut f: impl FnMut(i64, f64) -> bool, value: impl Fn(i64) -> f64) {
        let bytes = self.r.rest();
        let (mut t, mut m, step) = (self.t, self.m, self.step);
        let mut at = 0usize;
        for _ in 0..self.remaining {
            let (Some(dt), Some(dm)) = (zigzag_at(bytes, &mut at), zigzag_at(bytes, &mut at))
            else {
                // Truncated bytes: stop rather than yield garbage.
                return;
            };
            t = t.wrapping_add(step).wrapping_add(dt);
            m = m.wrapping_add(dm);
            if !f(t, value(m)) {
                return;
            }
        }
    }
}

/// The zig-zag varint at `*at`, moving `at` past it.
#[inline(always)]
fn zigzag_at(bytes: &[u8], at: &mut usize) -> Option<i64> {
    let &b0 = bytes.get(*at)?;
    let u = if b0 < 0x80 {
        *at += 1;
        u64::from(b0)
    } else {
        match bytes.get(*at + 1) {
            Some(&b1) if b1 < 0x80 => {
                *at += 2;
                u64::from(b0 & 0x7f) | u64::from(b1) << 7
            }
            _ => {
                let mut c = Cursor::new(bytes.get(*at..)?);
                let u = c.uvarint()?;
                *at = bytes.len() - c.rest().len();
                u
            }
        }
    };
    Some(((u >> 1) as i64) ^ -((u & 1) as i64))
}

impl Iterator for DecimalIter<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let first = std::mem::replace(&mut self.first, false);
        let deltas = match &mut self.packed {
            // The first sample's time offset is 0, its delta the first mantissa.
            Some(p) if first => Some((0, p.m0)),
            Some(p) => {
                let k = p.k;
                p.k += 1;
                Some((p.time(k), p.delta(k)))
            }
            None => {
                let dt = if first { Some(0) } else { self.r.varint() };
                dt.and_then(|dt| Some((dt, self.r.varint()?)))
            }
        };
        let Some((dt, dm)) = deltas else {
            // Truncated bytes: stop rather than yield garbage.
            self.remaining = 0;
            return None;
        };
        self.t = self.t.wrapping_add(self.step).wrapping_add(dt);
        self.m = self.m.wrapping_add(dm);
        Some((self.t, self.m as f64 / self.p))
    }
}

/// Samples between two marks of an open decimal chunk.
const MARK_EVERY: u16 = 32;

/// An open head chunk in the varint layout, appended to one sample at a time. The
/// chunk's exponent is the first value's (or the previous chunk's, when larger and the
/// value is exact at it); the step is the first spacing. A value the exponent cannot
/// hold is refused, and the caller writes the chunk again at a larger exponent or as
/// XOR.
///
/// Laid out in this order: what every append reads and writes first, the first time and
/// the marks (written once in 32 appends) last.
#[derive(Debug, Clone)]
#[repr(C)]
pub(crate) struct DecimalChunk {
    bytes: Vec<u8>,
    t: i64,
    step: i64,
    m: i64,
    count: u16,
    /// With no sample yet: the exponent to try first.
    e: u8,
    first_t: i64,
    /// The two latest marks, older first (index 0: none yet).
    marks: [StoredMark; 2],
}

/// A [`DecimalMark`] as the open chunk keeps it, in 16 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct StoredMark {
    m: i64,
    t_offset: u32,
    at: u16,
    index: u16,
}

/// Where decoding can start inside an open decimal chunk: the state before sample
/// `index`, whose residuals start at byte `at`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct DecimalMark {
    pub(crate) index: u16,
    pub(crate) at: usize,
    /// The time of the sample before `index`: every sample from `index` on is later.
    pub(crate) t: i64,
    m: i64,
    step: i64,
    e: u8,
}

impl DecimalChunk {
    /// An empty chunk writing into `bytes` (cleared); `e` is the exponent to try first.
    pub(crate) fn with_buffer(mut bytes: Vec<u8>, e: u8) -> Self {
        bytes.clear();
        DecimalChunk {
            bytes,
            count: 0,
            e: e.min(MAX_EXPONENT as u8),
            first_t: 0,
            t: 0,
            step: 0,
            m: 0,
            marks: [StoredMark::default(); 2],
        }
    }

    /// Appends a sample later than the last one; `false`, with the chunk unchanged,
    /// when the value is not a decimal of the chunk's exponent (or the chunk is full).
    #[inline]
    pub(crate) fn append(&mut self, t: i64, v: f64) -> bool {
        match self.count {
            0 => {
                let found = match as_decimal(v, usize::from(self.e)) {
                    Some(m) => Some((usize::from(self.e), m)),
                    None => decimal_exponent(v).and_then(|e| Some((e, as_decimal(v, e)?))),
                };
                let Some((e, m)) = found else {
                    return false;
                };
                self.e = e as u8;
                self.first_t = t;
                self.step = 0;
                self.write_header(m);
                self.m = m;
            }
            1 => {
                let Some(m) = as_decimal(v, usize::from(self.e)) else {
                    return false;
                };
                // The header is all there is so far: written again with the step.
                self.step = t.wrapping_sub(self.t);
                let m0 = self.m;
                self.bytes.clear();
                self.write_header(m0);
                put_varint(&mut self.bytes, 0);
                put_varint(&mut self.bytes, m.wrapping_sub(m0));
                self.m = m;
            }
            n if n >= DECIMAL - 1 => return false,
            n => {
                let Some(m) = as_decimal(v, usize::from(self.e)) else {
                    return false;
                };
                if n.is_multiple_of(MARK_EVERY) {
                    self.mark();
                }
                // A fixed step, not doubling: a head series holds its open chunk's
                // buffer until the chunk is full, and doubling would leave up to half of
                // it unused. It grows only when the two varints do not fit, to GROWTH
                // bytes past what is written (they take at most 20), so that each step
                // is used up before the next.
                let dt = t.wrapping_sub(self.t).wrapping_sub(self.step);
                let dm = m.wrapping_sub(self.m);
                if self.bytes.capacity() - self.bytes.len() < zigzag_len(dt) + zigzag_len(dm) {
                    grow_exact(&mut self.bytes, GROWTH);
                }
                put_varint(&mut self.bytes, dt);
                put_varint(&mut self.bytes, dm);
                self.m = m;
            }
        }
        self.t = t;
        self.count += 1;
        true
    }

    fn write_header(&mut self, m0: i64) {
        self.bytes.push(self.e);
        put_varint(&mut self.bytes, self.first_t);
        put_varint(&mut self.bytes, self.step);
        put_varint(&mut self.bytes, m0);
    }

    /// Keeps a mark before the sample about to be appended, when its state fits.
    fn mark(&mut self) {
        let (Ok(at), Ok(t_offset)) = (
            u16::try_from(self.bytes.len()),
            u32::try_from(self.t.wrapping_sub(self.first_t)),
        ) else {
            return;
        };
        self.marks = [
            self.marks[1],
            StoredMark {
                m: self.m,
                t_offset,
                at,
                index: self.count,
            },
        ];
    }

    /// The latest mark after which every sample is newer than `t`, if the chunk has one.
    pub(crate) fn mark_before(&self, t: i64) -> Option<DecimalMark> {
        self.marks
            .iter()
            .rev()
            .map(|m| DecimalMark {
                index: m.index,
                at: usize::from(m.at),
                t: self.first_t.wrapping_add(i64::from(m.t_offset)),
                m: m.m,
                step: self.step,
                e: self.e,
            })
            .find(|m| m.index > 0 && m.t < t)
    }

    /// A chunk of `samples` at exponent `e`, when every value is a decimal of it (else
    /// the buffer back); `bytes` is the buffer to write into.
    pub(crate) fn at_exponent(
        samples: impl IntoIterator<Item = (i64, f64)>,
        e: usize,
        bytes: Vec<u8>,
    ) -> Result<Self, Vec<u8>> {
        let mut c = DecimalChunk::with_buffer(bytes, e as u8);
        for (t, v) in samples {
            if !c.append(t, v) || usize::from(c.e) != e {
                return Err(c.bytes);
            }
        }
        Ok(c)
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.count)
    }

    pub(crate) fn exponent(&self) -> u8 {
        self.e
    }

    pub(crate) fn min_time(&self) -> i64 {
        self.first_t
    }

    pub(crate) fn max_time(&self) -> i64 {
        self.t
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Just past the last field every append reads or writes (`e`).
    #[cfg(test)]
    pub(crate) fn hot_end(&self) -> *const u8 {
        (&self.e as *const u8).wrapping_add(1)
    }

    /// The buffer's size.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.bytes.capacity()
    }

    /// The buffer, for the next chunk to reuse.
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.bytes
    }

    /// Writes the chunk into `out` (cleared first) as [`encode`] lays out a full chunk,
    /// from the residuals the chunk holds rather than from its values: the mantissas are
    /// already exact at the chunk's exponent, so no value is converted again. `false`
    /// (with `out` unspecified) for an empty chunk or bytes that do not parse. `scratch`
    /// is scratch space.
    ///
    /// The exponent is lowered by the powers of ten every mantissa shares (a chunk starts
    /// at its predecessor's exponent): `m / 10^e` and `(m / 10^k) / 10^(e-k)` are the same
    /// rational number of exact operands, so the decoder's correctly rounded division
    /// gives the same float. The step is the median spacing, as [`encode`] takes it.
    pub(crate) fn encode_full(&self, out: &mut Vec<u8>, scratch: &mut Vec<i64>) -> bool {
        let Some(n) = usize::from(self.count).checked_sub(1) else {
            return false;
        };
        let mut r = Cursor::new(&self.bytes);
        let header = r
            .bytes(1)
            .and_then(|b| b.first().copied())
            .and_then(|e| Some((e, r.varint()?, r.varint()?, r.varint()?)));
        let Some((e, t0, open_step, m0)) = header else {
            return false;
        };
        if usize::from(e) > MAX_EXPONENT {
            return false;
        }
        // The time residuals against the open chunk's step, the mantissa deltas, and room
        // to select the median in.
        scratch.clear();
        scratch.resize(3 * n, 0);
        let (times, rest) = scratch.split_at_mut(n);
        let (deltas, room) = rest.split_at_mut(n);
        let bytes = r.rest();
        let mut at = 0usize;
        let mut factor = 0u64;
        let (mut low, mut high) = (i64::MAX, i64::MIN);
        for (t, d) in times.iter_mut().zip(deltas.iter_mut()) {
            let (Some(dt), Some(dm)) = (zigzag_at(bytes, &mut at), zigzag_at(bytes, &mut at))
            else {
                return false;
            };
            (*t, *d) = (dt, dm);
            (low, high) = (low.min(dt), high.max(dt));
            if factor != 1 {
                factor = gcd(factor, dm.unsigned_abs());
            }
        }
        // The median spacing less the open chunk's step is the median of these residuals
        // (the first spacing is the open step itself, residual 0).
        let median = median_residual(times, low, high, room);
        let step = open_step.wrapping_add(median);
        // Powers of ten shared by the first mantissa and every delta.
        let shared = gcd(factor, m0.unsigned_abs());
        let mut k = 0;
        while k < usize::from(e) && (shared == 0 || shared.is_multiple_of(POW10_INT[k + 1])) {
            k += 1;
        }
        let by_power = ExactDivisor::new(POW10_INT[k]);
        let factor = (factor / POW10_INT[k]).clamp(1, i64::MAX as u64);

        let (mut varint_bytes, mut t_min, mut t_max) = (0usize, i64::MAX, i64::MIN);
        let (mut d_min, mut d_max) = (i64::MAX, i64::MIN);
        for (t, d) in times.iter_mut().zip(deltas.iter_mut()) {
            *t = t.wrapping_sub(median);
            if k > 0 {
                *d = by_power.divide(*d);
            }
            varint_bytes += zigzag_len(*t) + zigzag_len(*d);
            (t_min, t_max) = (t_min.min(*t), t_max.max(*t));
            (d_min, d_max) = (d_min.min(*d), d_max.max(*d));
        }
        // Every delta is a multiple of the factor, which is positive: dividing keeps the
        // order.
        let by_factor = ExactDivisor::new(factor);
        let (m_min, m_max) = (by_factor.divide(d_min), by_factor.divide(d_max));
        let (t_width, m_width, packed_bytes) = widths(n, (t_min, t_max), (m_min, m_max));
        let packed = packs(n, (t_width, m_width, packed_bytes), varint_bytes);

        out.clear();
        out.reserve(
            16 + if packed {
                packed_bytes + 24
            } else {
                varint_bytes
            },
        );
        out.push((usize::from(e) - k) as u8 | if packed { PACKED } else { 0 });
        put_varint(out, t0);
        put_varint(out, step);
        put_varint(out, by_power.divide(m0));
        if packed {
            put_varint(out, t_min);
            out.push(t_width as u8);
            put_uvarint(out, factor);
            put_varint(out, m_min);
            out.push(m_width as u8);
            put_packed(out, times.iter().copied(), t_min, t_width as u8);
            let scaled = deltas.iter().map(|&d| by_factor.divide(d));
            put_packed(out, scaled, m_min, m_width as u8);
        } else {
            for (&t, &d) in times.iter().zip(deltas.iter()) {
                put_varint(out, t);
                put_varint(out, d);
            }
        }
        true
    }

    pub(crate) fn iter(&self) -> DecimalIter<'_> {
        DecimalIter::new(&self.bytes, self.count)
    }
}

impl Default for DecimalChunk {
    /// An empty chunk without a buffer (nothing allocated).
    fn default() -> Self {
        DecimalChunk::with_buffer(Vec::new(), 0)
    }
}

impl<'a> DecimalIter<'a> {
    /// Decodes from `mark` of a chunk of `count` samples in the varint layout, `bytes`
    /// being the chunk's bytes from the mark's byte on.
    pub(crate) fn resume(bytes: &'a [u8], mark: &DecimalMark, count: u16) -> Self {
        let p = POW10.get(usize::from(mark.e)).copied();
        DecimalIter {
            r: Cursor::new(bytes),
            remaining: match p {
                Some(_) => count.saturating_sub(mark.index),
                None => 0,
            },
            t: mark.t,
            step: mark.step,
            m: mark.m,
            p: p.unwrap_or(1.0),
            first: false,
            packed: None,
        }
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
        // Read partly one at a time, then in bulk; and stopped in bulk.
        for split in [1, 2, 63, 64, 65, 100] {
            let mut it = DecimalIter::new(&bytes, n);
            let mut got: Vec<(i64, f64)> = it.by_ref().take(split).collect();
            it.decode_while(|t, v| {
                got.push((t, v));
                true
            });
            assert_eq!(bits(got), bits(samples.iter().copied()), "split at {split}");
            let mut stopped = Vec::new();
            DecimalIter::new(&bytes, n).decode_while(|t, v| {
                stopped.push((t, v));
                stopped.len() < split
            });
            assert_eq!(
                bits(stopped),
                bits(samples.iter().copied().take(split)),
                "stopped at {split}"
            );
        }
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

    /// Whether a chunk's residuals are bit-packed.
    fn is_packed(bytes: &[u8]) -> bool {
        bytes.first().is_some_and(|b| b & PACKED != 0)
    }

    /// A counter growing by a pseudo-random number of hundredths, and the same with one
    /// step of `jump` hundredths in the middle.
    fn counter(jump: Option<u64>) -> Vec<(i64, f64)> {
        let t = scrape_times(120, 5);
        let mut x = 99u64;
        let mut m = 5_000_000u64;
        t.iter()
            .enumerate()
            .map(|(i, &t)| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                m += match jump {
                    Some(j) if i == 60 => j,
                    _ => x % 80,
                };
                (t, m as f64 / 100.0)
            })
            .collect()
    }

    #[test]
    fn residuals_are_packed_unless_varints_are_much_smaller() {
        // Even increments: packed, and smaller than varints (80 hundredths need 7 bits,
        // a varint 8 or 16).
        let even = counter(None);
        let bytes = encoded(&even).unwrap_or_default();
        assert!(is_packed(&bytes), "{bytes:?}");
        let varints: usize = even
            .windows(2)
            .map(|w| 2 + usize::from(((w[1].1 - w[0].1) * 100.0).round() >= 64.0))
            .sum();
        assert!(bytes.len() < varints, "{} bytes", bytes.len());
        roundtrip(&even);
        // One step of 2^40 would widen every packed residual to 41 bits: varints.
        let jumpy = counter(Some(1 << 40));
        assert!(!is_packed(&encoded(&jumpy).unwrap_or_default()));
        roundtrip(&jumpy);
        // Common factors are taken out (whole 4 KiB blocks), down to zero bits for
        // constant deltas and a single sample.
        let t = scrape_times(120, 9);
        let blocks: Vec<(i64, f64)> = t
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, (1_000_000 + (i * 7919) % 240) as f64 * 4096.0))
            .collect();
        assert!(is_packed(&encoded(&blocks).unwrap_or_default()));
        roundtrip(&blocks);
        let regular: Vec<(i64, f64)> = (0..120).map(|i| (i * 15_000, i as f64 * 3.0)).collect();
        let bytes = encoded(&regular).unwrap_or_default();
        assert!(is_packed(&bytes) && bytes.len() < 16, "{bytes:?}");
        roundtrip(&regular);
        assert!(!is_packed(&encoded(&regular[..1]).unwrap_or_default()));
    }

    /// `samples` as an open chunk at exponent `e` (when every value is a decimal of it),
    /// written out by [`DecimalChunk::encode_full`].
    fn written_full(samples: &[(i64, f64)], e: usize) -> Option<Vec<u8>> {
        let chunk = DecimalChunk::at_exponent(samples.iter().copied(), e, Vec::new()).ok()?;
        let mut out = Vec::new();
        assert!(chunk.encode_full(&mut out, &mut Vec::new()), "{samples:?}");
        Some(out)
    }

    #[test]
    fn a_full_open_chunk_is_written_as_its_samples_would_be_encoded() {
        let t = scrape_times(120, 11);
        let mut cases: Vec<Vec<(i64, f64)>> = vec![
            counter(None),
            counter(Some(1 << 40)),
            t.iter().map(|&t| (t, 7.0)).collect(),
            t.iter().map(|&t| (t, 0.0)).collect(),
            t.iter()
                .enumerate()
                .map(|(i, &t)| (t, (i % 10) as f64 / 10.0))
                .collect(),
            t.iter()
                .enumerate()
                .map(|(i, &t)| (t, (1_000_000 + (i * 7919) % 240) as f64 * 4096.0))
                .collect(),
            t.iter()
                .enumerate()
                .map(|(i, &t)| (t, -1.0 - i as f64 * 0.25))
                .collect(),
            // A gap of half an hour after the first spacing, and one more later.
            t.iter()
                .enumerate()
                .map(|(i, &t)| {
                    (
                        t + if i > 0 { 1_800_000 } else { 0 } + if i > 90 { 60_000 } else { 0 },
                        i as f64,
                    )
                })
                .collect(),
        ];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..300 {
            let (n, e) = (1 + next() as usize % 120, next() as usize % 6);
            let jitter = next() % 40;
            let mut m = (next() % 2_000_000) as i64 - 1_000_000;
            let mut t = 1_700_000_000_000 + (next() % 1000) as i64;
            let mut samples = Vec::with_capacity(n);
            for _ in 0..n {
                samples.push((t, m as f64 / POW10[e]));
                t += 15_000
                    + (next() % (jitter + 1)) as i64
                    + if next() % 50 == 0 { 45_000 } else { 0 };
                m += match next() % 4 {
                    0 => 0,
                    1 => (next() % 100) as i64 * 10,
                    2 => (next() % 1_000_000) as i64 - 500_000,
                    _ => 1,
                };
            }
            cases.push(samples);
        }
        let mut lowered = 0;
        for samples in &cases {
            let least = samples
                .iter()
                .map(|&(_, v)| decimal_exponent(v).unwrap_or(MAX_EXPONENT))
                .max()
                .unwrap_or(0);
            let expected = encoded(samples).unwrap_or_else(|| panic!("{samples:?}"));
            // At the least exponent, and at larger ones as a chunk inherits them.
            for e in least..=(least + 3).min(MAX_EXPONENT) {
                let Some(bytes) = written_full(samples, e) else {
                    continue;
                };
                assert_eq!(bytes, expected, "at exponent {e}: {samples:?}");
                lowered += usize::from(e > least);
            }
        }
        assert!(
            lowered > 100,
            "{lowered} chunks written at a lowered exponent"
        );
        assert!(!DecimalChunk::default().encode_full(&mut Vec::new(), &mut Vec::new()));
    }

    #[test]
    fn damaged_bytes_end_early_and_never_panic() {
        let t = scrape_times(120, 11);
        let steady: Vec<(i64, f64)> = t
            .iter()
            .enumerate()
            .map(|(i, &t)| (t, (i * 1_234_567) as f64 / 1000.0))
            .collect();
        for samples in [steady, counter(None), counter(Some(1 << 40))] {
            damaged(&samples);
        }
    }

    fn damaged(samples: &[(i64, f64)]) {
        let bytes = encoded(samples).unwrap_or_default();
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
