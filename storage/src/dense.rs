//! The dense chunk encoding used in blocks: exact for every float64, and several times
//! smaller than XOR chunks on exporter data. Byte layout in `docs/format/chunks.md`.
//!
//! Timestamps are stored as their offsets from a regular grid (scrapes are periodic and
//! jitter by milliseconds); values that are decimals with at most 15 fractional digits —
//! everything a text exposition format can print — become integers `m / 10^e`, stored as
//! deltas or deltas of deltas, whichever is smaller; values that do not round-trip that
//! way (NaN, the stale marker, ±Inf, -0.0, results of float arithmetic) are kept as raw
//! bits in an exception list. Residuals are bit-packed, range-coded or written as
//! varints, whichever is smallest; varints are compressed with zstd where it may win.

use std::cell::RefCell;

use crate::varint::{bytes_at, put_uvarint, put_varint, Cursor};
use crate::Error;

/// Largest decimal exponent tried: 10^15 keeps `m` within 2^53 for values below 9.
pub(crate) const MAX_EXPONENT: usize = 15;
/// A chunk with more exceptions than one in this many samples is not dense material.
const MAX_EXCEPTION_SHARE: usize = 4;
/// Integers up to 2^53 are exact in a float64.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;
/// zstd level for blocks. Sections are small (a chunk's times or values): higher levels
/// gain nothing on them (level 9: 2,711,683 bytes, level 3: 2,711,739 in `disk_size`)
/// and cost ingest the CPU of every block cut.
const ZSTD_LEVEL: i32 = 3;

pub(crate) const POW10: [f64; MAX_EXPONENT + 1] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

/// The exponent of the shortest decimal `m / 10^e` that is exactly `v`, if any.
pub(crate) fn decimal_exponent(v: f64) -> Option<usize> {
    if !v.is_finite() {
        return None;
    }
    (0..=MAX_EXPONENT).find(|&e| as_decimal(v, e).is_some())
}

/// `m` such that `m / 10^e` is bit for bit `v`.
#[inline]
pub(crate) fn as_decimal(v: f64, e: usize) -> Option<i64> {
    let p = POW10[e];
    let x = v * p;
    // Below 2^53 the integer part converts exactly.
    if x.is_nan() || x.abs() >= EXACT_INT {
        return None;
    }
    // `x` rounded half away from zero, as `f64::round` does, without its library call:
    // the fraction left by truncation is exact.
    let mut m = x as i64;
    let frac = x - m as f64;
    if frac >= 0.5 {
        m += 1;
    } else if frac <= -0.5 {
        m -= 1;
    }
    if m.unsigned_abs() >= EXACT_INT as u64 {
        return None;
    }
    // Checked as the decoder computes it (which also refuses -0.0); a division by 1 is
    // exact, and skipped.
    let back = if e == 0 { m as f64 } else { m as f64 / p };
    (back.to_bits() == v.to_bits()).then_some(m)
}

/// The bytes of `v`'s zig-zag varint: its significant bits (at least one) by sevens,
/// as `(bits * 9 + 64) / 64` computes it for every length from 1 to 64 bits.
#[inline]
pub(crate) fn zigzag_len(v: i64) -> usize {
    let u = ((v << 1) ^ (v >> 63)) as u64;
    let top = 63 - (u | 1).leading_zeros() as usize;
    (top * 9 + 73) / 64
}

/// Encodes the timestamps of `samples` (strictly increasing, not empty) as a time
/// section: the first, the grid step, then each one's offset from the grid.
pub(crate) fn encode_times(samples: &[(i64, f64)]) -> Result<Vec<u8>, Error> {
    let mut times = Vec::with_capacity(samples.len() + 16);
    let Some(&(t0, _)) = samples.first() else {
        return pack(times);
    };
    let step = median_step(samples, &mut Vec::new());
    put_varint(&mut times, t0);
    put_varint(&mut times, step);
    let mut grid = t0;
    for &(t, _) in &samples[1..] {
        let d = t.wrapping_sub(grid.wrapping_add(step));
        put_varint(&mut times, d);
        grid = next_grid(grid, step, d);
    }
    pack(times)
}

/// Encodes the values of `samples` as a value section, or `None` when they are not
/// decimal enough for this encoding to pay.
pub(crate) fn encode_values(samples: &[(i64, f64)]) -> Result<Option<Vec<u8>>, Error> {
    let n = samples.len();
    // Decimal exponent: the largest any value needs; values needing none are exceptions.
    // A value exact at the largest so far needs no more, and only the others are searched.
    // Each value's mantissa at the exponent of its time, kept: only those before the
    // last rise of the exponent (none, when the first value has the largest) are found
    // again at the final one.
    let mut exponent = 0;
    let mut mantissas: Vec<Option<i64>> = Vec::with_capacity(n);
    let mut stale = 0;
    for (i, &(_, v)) in samples.iter().enumerate() {
        let mut m = as_decimal(v, exponent);
        if m.is_none() {
            let e = exponent.max(decimal_exponent(v).unwrap_or(0));
            if e != exponent {
                exponent = e;
                stale = i;
                m = as_decimal(v, exponent);
            }
        }
        mantissas.push(m);
    }
    for (m, &(_, v)) in mantissas[..stale].iter_mut().zip(samples) {
        *m = as_decimal(v, exponent);
    }
    let mut exceptions: Vec<(usize, u64)> = Vec::new();
    let mut ints: Vec<i64> = Vec::with_capacity(n);
    for (i, (m, &(_, v))) in mantissas.into_iter().zip(samples).enumerate() {
        match m {
            Some(m) => ints.push(m),
            None => exceptions.push((i, v.to_bits())),
        }
    }
    if n == 0 || exceptions.len() * MAX_EXCEPTION_SHARE > n {
        return Ok(None);
    }

    let mut values = Vec::with_capacity(n * 2 + 16);
    put_uvarint(&mut values, exceptions.len() as u64);
    let mut last = 0usize;
    for &(i, bits) in &exceptions {
        put_uvarint(&mut values, (i - last) as u64);
        values.extend_from_slice(&bits.to_le_bytes());
        last = i;
    }
    encode_mantissas(
        values,
        &ints,
        |order| exponent as u8 | (order << 4),
        may_compress_below,
    )
    .map(Some)
}

/// Encodes the values of `samples` as their float64 bit patterns, taken as integers: for
/// series whose values are not decimals (sums of measured durations, results of
/// arithmetic), where it is often smaller than XOR chunks and shares the series' time
/// section with the others scraped with it.
pub(crate) fn encode_float_values(samples: &[(i64, f64)]) -> Result<Vec<u8>, Error> {
    let ints: Vec<i64> = samples.iter().map(|&(_, v)| v.to_bits() as i64).collect();
    let mut values = Vec::with_capacity(samples.len() * 8 + 16);
    put_uvarint(&mut values, 0);
    encode_mantissas(
        values,
        &ints,
        |order| (order & ORDER) | ((FLOAT_BITS | (order & !ORDER)) << 4),
        may_compress_below,
    )
}

/// The order bits of a value section's head (its high 4 bits), or of the argument of
/// [`encode_mantissas`]' `head`.
const ORDER: u8 = 3;
/// In a value section's order bits: the values are float64 bit patterns, and the low 4
/// bits of the head hold the order.
const FLOAT_BITS: u8 = 3;

/// Appends to `values` (the exceptions, already written) the head byte, made by `head`
/// from the order and the [`PACKED`] or [`RANGED`] flag, and `ints` by their deltas or
/// deltas of deltas, in whichever form is smallest; zstd-compressed varints are among
/// the forms only where `try_zstd` (the varints, the size to beat) allows.
fn encode_mantissas(
    mut values: Vec<u8>,
    ints: &[i64],
    head: impl Fn(u8) -> u8,
    try_zstd: impl FnOnce(&[u8], usize) -> bool,
) -> Result<Vec<u8>, Error> {
    // First value, common factor of the deltas, then the deltas (or deltas of deltas)
    // divided by it.
    let deltas: Vec<i64> = ints.windows(2).map(|w| w[1].wrapping_sub(w[0])).collect();
    let mut factor = 0u64;
    for &d in &deltas {
        factor = gcd(factor, d.unsigned_abs());
        // Random increments reach 1 within a few deltas; nothing divides further.
        if factor == 1 {
            break;
        }
    }
    let factor = factor.clamp(1, i64::MAX as u64) as i64;
    let deltas: Vec<i64> = if factor == 1 {
        deltas
    } else {
        deltas.iter().map(|&d| d / factor).collect()
    };
    // Residuals of order 1 (the deltas) and order 2 (the first delta, then deltas of
    // deltas).
    let mut second = Vec::with_capacity(deltas.len());
    if let Some(&d0) = deltas.first() {
        second.push(d0);
        second.extend(deltas.windows(2).map(|w| w[1].wrapping_sub(w[0])));
    }
    let orders = [(1u8, &deltas), (2u8, &second)];
    let cost = |r: &[i64]| -> usize { r.iter().map(|&d| zigzag_len(d)).sum() };
    let prefix = values.len();
    let header = |values: &mut Vec<u8>, order: u8| {
        values.truncate(prefix);
        values.push(head(order));
        if let Some(&first) = ints.first() {
            put_varint(values, first);
            put_uvarint(values, factor as u64);
        }
    };
    // Varints: best when small residuals dominate, once zstd-compressed (tried last).
    let (order, r) = if cost(&second) < cost(&deltas) {
        orders[1]
    } else {
        orders[0]
    };
    let mut varints = values.clone();
    header(&mut varints, order);
    for &x in r {
        put_varint(&mut varints, x);
    }
    let mut best = pack_raw(&varints);
    let mut grouped = false;
    // Bit-packed or range-coded: best when residuals spread evenly over a range (random
    // increments), which byte-wise compression codes a few bits above their entropy. Each
    // is taken when smaller, as is.
    let (first_span, second_span) = (span(&deltas), span(&second));
    let (order, r, (spread, base)) = if second_span.0 < first_span.0 {
        (2u8, &second, second_span)
    } else {
        (1u8, &deltas, first_span)
    };
    let width = (64 - spread.leading_zeros()) as u8;
    header(&mut values, order | PACKED);
    put_varint(&mut values, base);
    values.push(width);
    put_packed(&mut values, r.iter().copied(), base, width);
    if values.len() < best.len() {
        best = pack_raw(&values);
    }
    // A power-of-two radix packs into exactly as many bits, without the coder's state.
    let radix = spread.wrapping_add(1);
    if (2..=MAX_RADIX).contains(&radix) && !radix.is_power_of_two() {
        header(&mut values, order | RANGED);
        put_varint(&mut values, base);
        put_uvarint(&mut values, radix);
        put_ranged(&mut values, r, base, radix);
        if values.len() < best.len() {
            best = pack_raw(&values);
        }
        // The same digits in groups, each one number below `radix^k`: within a few bytes
        // of range coding, and the groups decode independently of each other where the
        // range coder's digits wait for one another. Taken unless larger by more than
        // two bytes and 0.5 %.
        if let Some((k, width)) = group_shape(radix) {
            header(&mut values, order | GROUPED);
            put_varint(&mut values, base);
            put_uvarint(&mut values, radix);
            let digits = |g: &[i64]| {
                g.iter()
                    .rev()
                    .fold(0u64, |x, &v| x * radix + v.wrapping_sub(base) as u64)
                    as i64
            };
            put_packed(&mut values, r.chunks(k).map(digits), 0, width);
            if values.len() <= best.len() + 2 + best.len() / 200 {
                best = pack_raw(&values);
                grouped = true;
            }
        }
    }
    // zstd last, as it costs more than all of the above, and only where it may win.
    // Grouped digits keep the same allowance against it.
    let beats = |z: &[u8], best: &[u8]| {
        z.len() < best.len() && (!grouped || z.len() + 2 + z.len() / 200 < best.len() - 1)
    };
    if try_zstd(&varints, best.len() - 1) {
        let z = pack(varints)?;
        if beats(&z, &best) {
            best = z;
        }
    }
    Ok(best)
}

/// Whether zstd might compress `bytes` to fewer than `bar` bytes, which costs more than
/// the rest of a section's encoding to find out. Its output takes at least
/// [`ZSTD_MIN_FRAME`] bytes, and its literals about their order-0 entropy at least;
/// only repeats could take it lower, and residuals too spread out to reach the bar that
/// way are random increments, which do not repeat. This is an estimate, not a bound:
/// on the 30,000 value sections of `vs_peers`' 20-host cuts zstd is tried on 75 (on
/// every one before), and wins on the same 2 as when always tried; `disk_size` writes
/// the same bytes either way.
fn may_compress_below(bytes: &[u8], bar: usize) -> bool {
    if bar <= ZSTD_MIN_FRAME || bytes.len() <= ZSTD_MIN_FRAME {
        return false;
    }
    let mut counts = [0u32; 256];
    for &b in bytes {
        counts[usize::from(b)] += 1;
    }
    let n = bytes.len() as f64;
    let mut bits = 0.0;
    let mut symbols = 0u32;
    for &c in counts.iter().filter(|&&c| c > 0) {
        bits += f64::from(c) * (n / f64::from(c)).log2();
        symbols += 1;
    }
    // The entropy of the bytes seen falls short of that of their source by about
    // (symbols - 1) / (2 ln 2) bits in all (Miller–Madow): so many bytes cannot show
    // how rare the rare symbols are.
    bits += f64::from(symbols - 1) / (2.0 * std::f64::consts::LN_2);
    ZSTD_MIN_FRAME + ((bits / 8.0) as usize) < bar
}

/// The smallest zstd frame: magic number (4 bytes), frame header (at least 2) and block
/// header (3).
const ZSTD_MIN_FRAME: usize = 9;

/// How many digits of `radix` a group holds (the most whose every value fits
/// [`GROUP_BITS`]), and the bits a group takes; `None` when that is one digit.
fn group_shape(radix: u64) -> Option<(usize, u8)> {
    let (mut k, mut top) = (0usize, 1u128);
    while top * u128::from(radix) <= 1u128 << GROUP_BITS && k < GROUP_BATCH {
        top *= u128::from(radix);
        k += 1;
    }
    let width = 128 - (top - 1).leading_zeros();
    (k >= 2).then_some((k, width as u8))
}

/// The widest group of [`GROUPED`] digits.
const GROUP_BITS: u32 = 64;

/// Reads the digits written as groups by [`encode_mantissas`]: a batch of groups is
/// decoded at a time, each group's divisions independent of the others'.
struct GroupDecoder<'a> {
    bytes: &'a [u8],
    width: u32,
    k: usize,
    radix: u64,
    by_radix: Divisor,
    base: i64,
    /// Groups in the section, and the next one to decode.
    groups: usize,
    next_group: usize,
    buf: [u64; GROUP_BATCH],
    len: usize,
    at: usize,
}

/// Digits decoded at a time: whole groups of at most this many.
const GROUP_BATCH: usize = 64;

impl<'a> GroupDecoder<'a> {
    /// The section of `digits` digits at `r`, after its base and radix.
    fn new(r: &mut Cursor<'a>, digits: usize, radix: u64, base: i64) -> Option<Self> {
        if !(2..=MAX_RADIX).contains(&radix) {
            return None;
        }
        let (k, width) = group_shape(radix)?;
        let groups = digits.div_ceil(k);
        let bytes = r.bytes(groups.checked_mul(usize::from(width))?.div_ceil(8))?;
        Some(GroupDecoder {
            bytes,
            width: u32::from(width),
            k,
            radix,
            by_radix: Divisor::new(radix),
            base,
            groups,
            next_group: 0,
            buf: [0; GROUP_BATCH],
            len: 0,
            at: 0,
        })
    }

    #[inline(always)]
    fn next(&mut self) -> Option<i64> {
        if self.at == self.len {
            self.refill()?;
        }
        let d = self.buf[self.at];
        self.at += 1;
        Some(self.base.wrapping_add(d as i64))
    }

    /// Decodes the next batch of groups into `buf`; `None` past the last group, or at a
    /// group that is not below `radix^k` (damaged bytes).
    fn refill(&mut self) -> Option<()> {
        let n = (self.groups - self.next_group).min(GROUP_BATCH / self.k);
        if n == 0 {
            return None;
        }
        let mask = u64::MAX >> (64 - self.width);
        let mut leftover = 0;
        for (g, out) in
            (self.next_group..self.next_group + n).zip(self.buf.chunks_exact_mut(self.k))
        {
            let bit = g * self.width as usize;
            let at = bit / 8;
            // Up to 64 bits from any bit offset: 16 bytes.
            let word = u128::from_le_bytes(bytes_at(self.bytes, at));
            let mut x = (word >> (bit % 8)) as u64 & mask;
            for d in out.iter_mut() {
                let q = self.by_radix.div(x);
                *d = x - q * self.radix;
                x = q;
            }
            leftover |= x;
        }
        if leftover != 0 {
            return None;
        }
        self.next_group += n;
        self.len = n * self.k;
        self.at = 0;
        Some(())
    }
}

/// Set in a value section's order when its residuals are bit-packed.
const PACKED: u8 = 4;
/// Set in a value section's order when its residuals are range-coded.
const RANGED: u8 = 8;
/// A value section's order when its residuals are digits in groups ([`GroupDecoder`]).
const GROUPED: u8 = PACKED | RANGED;
/// The range coder's state stays in `[radix, 256·radix)` between digits: a `u64`.
const MAX_RADIX: u64 = 1 << 55;

/// The difference between the largest and the smallest residual, and the smallest.
fn span(r: &[i64]) -> (u64, i64) {
    let (Some(&min), Some(&max)) = (r.iter().min(), r.iter().max()) else {
        return (0, 0);
    };
    (max.wrapping_sub(min) as u64, min)
}

/// Appends `r[i] - base` coded as digits of base `radix` (an asymmetric numeral system in
/// which every digit is equally likely): `log2(radix)` bits each, after the coder's final
/// state as a `uvarint`. Digits go in last to first, so that the reader gets them first
/// to last; the bytes come out in reading order.
fn put_ranged(out: &mut Vec<u8>, r: &[i64], base: i64, radix: u64) {
    let start = out.len();
    let mut x = radix;
    for &v in r.iter().rev() {
        while x >= 256 {
            out.push(x as u8);
            x >>= 8;
        }
        x = x * radix + v.wrapping_sub(base) as u64;
    }
    out[start..].reverse();
    let mut state = Vec::with_capacity(10);
    put_uvarint(&mut state, x);
    out.splice(start..start, state);
}

/// Reads the digits written by [`put_ranged`]: they take the rest of `bytes`.
struct RangeDecoder<'a> {
    bytes: &'a [u8],
    at: usize,
    x: u64,
    radix: u64,
    by_radix: Divisor,
    base: i64,
}

/// Division by one divisor fixed ahead, as a multiplication and shifts (Granlund and
/// Montgomery, "Division by invariant integers using multiplication", 1994, figure 4.1):
/// the range decoder divides its state once per digit, each division waiting for the one
/// before, and a hardware division takes several times as long.
#[derive(Clone, Copy, Debug)]
struct Divisor {
    magic: u64,
    /// `ceil(log2(d)) - 1`.
    shift: u32,
}

impl Divisor {
    /// For `d >= 2`.
    fn new(d: u64) -> Divisor {
        debug_assert!(d >= 2);
        // ceil(log2(d)), in 1..=64.
        let l = 64 - (d - 1).leading_zeros();
        // (2^64 * (2^l - d)) / d + 1 < 2^64, as 2^l - d < d.
        let magic = ((((1u128 << l) - u128::from(d)) << 64) / u128::from(d) + 1) as u64;
        Divisor {
            magic,
            shift: l - 1,
        }
    }

    /// `n / d`, for every `n`.
    #[inline(always)]
    fn div(self, n: u64) -> u64 {
        let t = ((u128::from(self.magic) * u128::from(n)) >> 64) as u64;
        (t + ((n - t) >> 1)) >> self.shift
    }
}

impl<'a> RangeDecoder<'a> {
    fn new(r: &mut Cursor<'a>, radix: u64, base: i64) -> Option<Self> {
        if !(2..=MAX_RADIX).contains(&radix) {
            return None;
        }
        let x = r.uvarint()?;
        Some(RangeDecoder {
            bytes: r.rest(),
            at: 0,
            x,
            radix,
            by_radix: Divisor::new(radix),
            base,
        })
    }

    #[inline(always)]
    fn next(&mut self) -> Option<i64> {
        let q = self.by_radix.div(self.x);
        let digit = self.x - q * self.radix;
        self.x = q;
        // Below the radix, so the shift cannot overflow.
        while self.x < self.radix {
            let b = *self.bytes.get(self.at)?;
            self.x = (self.x << 8) | u64::from(b);
            self.at += 1;
        }
        Some(self.base.wrapping_add(digit as i64))
    }

    /// Whether the digits read were exactly the ones written: the state is back where
    /// the writer started and every byte was read.
    fn finished(&self) -> bool {
        self.x == self.radix && self.at == self.bytes.len()
    }
}

/// Where a value section's residuals come from.
// Lives on the stack while one section decodes; a box would allocate per section.
#[allow(clippy::large_enum_variant)]
enum Residuals<'a> {
    Varints,
    Packed(Unpacker<'a>),
    Ranged(RangeDecoder<'a>),
    Grouped(GroupDecoder<'a>),
}

/// Appends `r[i] - base` in `width` bits each, least significant bit first: gathered in
/// a 64-bit word, written eight bytes at a time.
pub(crate) fn put_packed(
    out: &mut Vec<u8>,
    r: impl IntoIterator<Item = i64>,
    base: i64,
    width: u8,
) {
    let w = u32::from(width.min(64));
    if w == 0 {
        return;
    }
    let (mut acc, mut bits) = (0u64, 0u32);
    for x in r {
        let v = x.wrapping_sub(base) as u64;
        acc |= v << bits;
        if bits + w >= 64 {
            out.extend_from_slice(&acc.to_le_bytes());
            // The bits of `v` that did not fit (none when it ended the word exactly).
            acc = v.checked_shr(64 - bits).unwrap_or(0);
            bits = bits + w - 64;
        } else {
            bits += w;
        }
    }
    out.extend_from_slice(&acc.to_le_bytes()[..bits.div_ceil(8) as usize]);
}

/// Reads `width`-bit residuals written by [`put_packed`].
struct Unpacker<'a> {
    bytes: &'a [u8],
    at: usize,
    acc: u128,
    bits: u32,
    width: u32,
    base: i64,
}

impl Unpacker<'_> {
    fn next(&mut self) -> Option<i64> {
        while self.bits < self.width {
            let b = *self.bytes.get(self.at)?;
            self.acc |= u128::from(b) << self.bits;
            self.at += 1;
            self.bits += 8;
        }
        let mask = if self.width == 64 {
            u64::MAX
        } else {
            (1u64 << self.width) - 1
        };
        let x = self.acc as u64 & mask;
        self.acc >>= self.width;
        self.bits -= self.width;
        Some(self.base.wrapping_add(x as i64))
    }
}

/// A section holding `raw` uncompressed.
fn pack_raw(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + 1);
    out.push(0);
    out.extend_from_slice(raw);
    out
}

/// zstd level for a block's index, one section of about 35 bytes a series: unlike the
/// small chunk sections it gains from a higher level. For 15,000 series of exporter
/// data (535 KB): level 3 129 KB in 1.4 ms, level 7 116 KB in 3.3 ms, level 9 117 KB
/// in 4.5 ms, level 19 98 KB in 94 ms.
const INDEX_ZSTD_LEVEL: i32 = 7;

/// A section as [`pack`] makes it, for a block's index.
pub(crate) fn pack_index(raw: Vec<u8>) -> Result<Vec<u8>, Error> {
    let packed =
        compress_index(&raw).map_err(|e| Error::Corrupt(format!("compressing an index: {e}")))?;
    if packed.len() < raw.len() {
        let mut out = Vec::with_capacity(packed.len() + 1);
        out.push(1);
        out.extend_from_slice(&packed);
        Ok(out)
    } else {
        Ok(pack_raw(&raw))
    }
}

/// zstd at [`INDEX_ZSTD_LEVEL`] with its match finder's window and tables capped. The
/// level's own, for an index of a few MB (75,000 series), take 5.5 MiB while a block is
/// written; the capped ones 1.1 MiB. A series' entry repeats the same series' of the
/// previous host (750 entries, about 26 KB, before it), well within the window.
fn compress_index(raw: &[u8]) -> std::io::Result<Vec<u8>> {
    use zstd::zstd_safe::CParameter;
    let mut c = zstd::bulk::Compressor::new(INDEX_ZSTD_LEVEL)?;
    c.set_parameter(CParameter::WindowLog(INDEX_WINDOW_LOG))?;
    c.set_parameter(CParameter::HashLog(INDEX_WINDOW_LOG))?;
    c.set_parameter(CParameter::ChainLog(INDEX_WINDOW_LOG - 1))?;
    c.compress(raw)
}

/// The index compressor's window, 128 KiB, and its hash table's size (log 2).
const INDEX_WINDOW_LOG: u32 = 17;

/// The bytes of a section written by [`pack`] or [`pack_index`], at most `bound` of them.
pub(crate) fn unpack_section(section: &[u8], bound: usize) -> Result<Vec<u8>, Error> {
    unpack(section, bound).map(std::borrow::Cow::into_owned)
}

/// A section: a byte saying whether the rest is zstd-compressed, then the bytes,
/// compressed only when that makes them smaller.
fn pack(raw: Vec<u8>) -> Result<Vec<u8>, Error> {
    thread_local! {
        static COMPRESSOR: RefCell<Option<zstd::bulk::Compressor<'static>>> =
            const { RefCell::new(None) };
    }
    let packed = COMPRESSOR
        .with_borrow_mut(|c| {
            let c = match c {
                Some(c) => c,
                None => c.insert(zstd::bulk::Compressor::new(ZSTD_LEVEL)?),
            };
            c.compress(&raw)
        })
        .map_err(|e| Error::Corrupt(format!("compressing a chunk: {e}")))?;
    let (flag, body) = if packed.len() < raw.len() {
        (1u8, packed)
    } else {
        (0u8, raw)
    };
    let mut out = Vec::with_capacity(body.len() + 1);
    out.push(flag);
    out.extend_from_slice(&body);
    Ok(out)
}

/// The greatest common divisor (0 with 0 gives 0), by shifts and subtractions: no
/// division, which costs tens of cycles each.
pub(crate) fn gcd(mut a: u64, mut b: u64) -> u64 {
    if a == 0 || b == 0 {
        return a | b;
    }
    let twos = (a | b).trailing_zeros();
    a >>= a.trailing_zeros();
    loop {
        b >>= b.trailing_zeros();
        if a > b {
            std::mem::swap(&mut a, &mut b);
        }
        b -= a;
        if b == 0 {
            return a << twos;
        }
    }
}

/// Division by one divisor of numbers known to be its multiples, as a shift and a
/// multiplication by the odd part's inverse modulo 2^64.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ExactDivisor {
    twos: u32,
    inverse: u64,
}

impl ExactDivisor {
    /// For `d >= 1`.
    pub(crate) fn new(d: u64) -> Self {
        let twos = d.trailing_zeros().min(63);
        let odd = d >> twos;
        // Newton's iteration doubles the correct low bits: an odd number is its own
        // inverse modulo 8, then 6, 12, 24, 48 and 96 bits.
        let mut inverse = odd;
        for _ in 0..5 {
            inverse = inverse.wrapping_mul(2u64.wrapping_sub(odd.wrapping_mul(inverse)));
        }
        ExactDivisor { twos, inverse }
    }

    /// `n / d` for `n` a multiple of `d` (any other `n` gives a meaningless result).
    #[inline]
    pub(crate) fn divide(&self, n: i64) -> i64 {
        (n >> self.twos).wrapping_mul(self.inverse as i64)
    }
}

/// The most common spacing of the timestamps, approximated by the median; `deltas` is
/// scratch space.
pub(crate) fn median_step(samples: &[(i64, f64)], deltas: &mut Vec<i64>) -> i64 {
    deltas.clear();
    deltas.extend(samples.windows(2).map(|w| w[1].0.wrapping_sub(w[0].0)));
    if deltas.is_empty() {
        return 0;
    }
    let mid = deltas.len() / 2;
    *deltas.select_nth_unstable(mid).1
}

/// The grid point after `grid` given the sample's offset `d` from the expected point: a
/// small offset is jitter (the grid goes on), a large one a gap (the grid restarts at the
/// sample).
fn next_grid(grid: i64, step: i64, d: i64) -> i64 {
    let expected = grid.wrapping_add(step);
    if d.unsigned_abs() <= step.unsigned_abs() / 2 {
        expected
    } else {
        expected.wrapping_add(d)
    }
}

/// Decodes a time section of `count` timestamps into `out` (appended, values 0).
/// Corrupt input gives an error, never a panic.
pub(crate) fn decode_times(
    section: &[u8],
    count: usize,
    out: &mut Vec<(i64, f64)>,
) -> Result<(), Error> {
    if count == 0 {
        return Ok(());
    }
    // Every timestamp takes at most 10 bytes.
    let times = unpack(section, count.saturating_mul(10).saturating_add(32))?;
    let mut r = Cursor::new(&times);
    out.reserve(count);
    let t0 = r.varint().ok_or_else(malformed)?;
    let step = r.varint().ok_or_else(malformed)?;
    out.push((t0, 0.0));
    let mut grid = t0;
    for _ in 1..count {
        let d = r.varint().ok_or_else(malformed)?;
        out.push((grid.wrapping_add(step).wrapping_add(d), 0.0));
        grid = next_grid(grid, step, d);
    }
    if !r.done() {
        return Err(malformed());
    }
    Ok(())
}

/// Decodes a value section into the values of `samples`.
pub(crate) fn decode_values(section: &[u8], samples: &mut [(i64, f64)]) -> Result<(), Error> {
    let count = samples.len();
    // Every value takes at most 10 bytes, or 18 as an exception.
    let values = unpack(section, count.saturating_mul(18).saturating_add(32))?;
    let mut r = Cursor::new(&values);
    let nexc = r.uvarint().ok_or_else(malformed)? as usize;
    if nexc > count {
        return Err(malformed());
    }
    let mut exceptions = Vec::with_capacity(nexc);
    let mut at = 0usize;
    for i in 0..nexc {
        let gap = r.uvarint().ok_or_else(malformed)? as usize;
        if i > 0 && gap == 0 {
            return Err(malformed());
        }
        at = at.checked_add(gap).ok_or_else(malformed)?;
        let b = r.bytes(8).ok_or_else(malformed)?;
        let bits = u64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]);
        samples.get_mut(at).ok_or_else(malformed)?.1 = f64::from_bits(bits);
        exceptions.push(at);
    }
    let head = *r
        .bytes(1)
        .ok_or_else(malformed)?
        .first()
        .ok_or_else(malformed)?;
    let (low, high) = (head & 0x0f, head >> 4);
    let (coding, kind) = (high & !ORDER, high & ORDER);
    // Float bit patterns keep their order in the low bits; decimals their exponent.
    let (order, p, float_bits) = if kind == FLOAT_BITS {
        (low, 1.0, true)
    } else {
        (
            kind,
            *POW10.get(usize::from(low)).ok_or_else(malformed)?,
            false,
        )
    };
    if !matches!(order, 1 | 2) {
        return Err(malformed());
    }
    let decimals = count - nexc;
    if decimals > 0 {
        let first = r.varint().ok_or_else(malformed)?;
        let factor = r.uvarint().ok_or_else(malformed)? as i64;
        let mantissas = Mantissas {
            first,
            factor,
            second_order: order == 2,
            p,
            float_bits,
        };
        let residuals = match coding {
            0 => Residuals::Varints,
            PACKED => {
                let base = r.varint().ok_or_else(malformed)?;
                let width = *r.bytes(1).and_then(|b| b.first()).ok_or_else(malformed)?;
                if width > 64 {
                    return Err(malformed());
                }
                let len = ((decimals - 1) * width as usize).div_ceil(8);
                Residuals::Packed(Unpacker {
                    bytes: r.bytes(len).ok_or_else(malformed)?,
                    at: 0,
                    acc: 0,
                    bits: 0,
                    width: u32::from(width),
                    base,
                })
            }
            RANGED => {
                let base = r.varint().ok_or_else(malformed)?;
                let radix = r.uvarint().ok_or_else(malformed)?;
                Residuals::Ranged(RangeDecoder::new(&mut r, radix, base).ok_or_else(malformed)?)
            }
            GROUPED => {
                let base = r.varint().ok_or_else(malformed)?;
                let radix = r.uvarint().ok_or_else(malformed)?;
                Residuals::Grouped(
                    GroupDecoder::new(&mut r, decimals - 1, radix, base).ok_or_else(malformed)?,
                )
            }
            _ => return Err(malformed()),
        };
        let done = if nexc == 0 {
            mantissas.fill_from(samples.iter_mut(), residuals, &mut r)
        } else {
            let mut exc = exceptions.iter().copied().peekable();
            let slots = samples.iter_mut().enumerate().filter_map(|(i, s)| {
                if exc.peek() == Some(&i) {
                    exc.next();
                    None
                } else {
                    Some(s)
                }
            });
            mantissas.fill_from(slots, residuals, &mut r)
        };
        done.ok_or_else(malformed)?;
    }
    if !r.done() {
        return Err(malformed());
    }
    Ok(())
}

/// How the decimal values of a section follow from their residuals.
struct Mantissas {
    first: i64,
    factor: i64,
    second_order: bool,
    /// Decimals are `m / p`.
    p: f64,
    /// Or the values are the bit patterns `m`.
    float_bits: bool,
}

impl Mantissas {
    /// Writes the decimal values into `slots` from `residuals`, one loop per kind of
    /// residual. `None` when the residuals end early or do not end where they should.
    fn fill_from<'s>(
        &self,
        slots: impl Iterator<Item = &'s mut (i64, f64)>,
        residuals: Residuals<'_>,
        r: &mut Cursor<'_>,
    ) -> Option<()> {
        match residuals {
            Residuals::Varints => self.fill(slots, || r.varint()),
            Residuals::Packed(mut u) => self.fill(slots, || u.next()),
            Residuals::Grouped(mut g) => self.fill(slots, || g.next()),
            Residuals::Ranged(mut d) => {
                self.fill(slots, || d.next())?;
                d.finished().then_some(())
            }
        }
    }

    fn fill<'s>(
        &self,
        mut slots: impl Iterator<Item = &'s mut (i64, f64)>,
        mut next: impl FnMut() -> Option<i64>,
    ) -> Option<()> {
        let value = |m: i64| {
            if self.float_bits {
                f64::from_bits(m as u64)
            } else {
                m as f64 / self.p
            }
        };
        let (mut m, mut d) = (self.first, 0i64);
        if let Some(s) = slots.next() {
            s.1 = value(m);
        }
        for s in slots {
            let x = next()?;
            if self.second_order {
                d = d.wrapping_add(x);
                m = m.wrapping_add(d.wrapping_mul(self.factor));
            } else {
                m = m.wrapping_add(x.wrapping_mul(self.factor));
            }
            s.1 = value(m);
        }
        Some(())
    }
}

fn malformed() -> Error {
    Error::Corrupt("malformed dense chunk".into())
}

/// The bytes of a section (see [`pack`]), at most `bound` of them.
fn unpack(section: &[u8], bound: usize) -> Result<std::borrow::Cow<'_, [u8]>, Error> {
    match section.split_first() {
        Some((0, raw)) => Ok(std::borrow::Cow::Borrowed(raw)),
        Some((1, packed)) => {
            // A decompression context per thread: creating one costs more than a chunk.
            thread_local! {
                static DECOMPRESSOR: RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { RefCell::new(None) };
            }
            DECOMPRESSOR
                .with_borrow_mut(|d| {
                    let d = match d {
                        Some(d) => d,
                        None => d.insert(zstd::bulk::Decompressor::new()?),
                    };
                    d.decompress(packed, bound)
                })
                .map(std::borrow::Cow::Owned)
                .map_err(|e| Error::Corrupt(format!("malformed dense chunk: decompressing: {e}")))
        }
        _ => Err(malformed()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(samples: &[(i64, f64)]) -> Option<usize> {
        let times = encode_times(samples).unwrap_or_else(|e| panic!("{e}"));
        let values = encode_values(samples).unwrap_or_else(|e| panic!("{e}"))?;
        let mut got = Vec::new();
        decode_times(&times, samples.len(), &mut got).unwrap_or_else(|e| panic!("{e}"));
        decode_values(&values, &mut got).unwrap_or_else(|e| panic!("{e}"));
        let bits = |s: &[(i64, f64)]| -> Vec<(i64, u64)> {
            s.iter().map(|&(t, v)| (t, v.to_bits())).collect()
        };
        assert_eq!(bits(&got), bits(samples));
        Some(times.len() + values.len())
    }

    /// The decimal check against its definition with `f64::round`, and the exponent of a
    /// chunk against the largest exponent any value needs.
    #[test]
    fn decimals_are_found_as_their_definition_finds_them() {
        let reference = |v: f64, e: usize| {
            let p = POW10[e];
            let m = (v * p).round();
            if m.is_nan() || m.abs() >= EXACT_INT {
                return None;
            }
            let m = m as i64;
            ((m as f64 / p).to_bits() == v.to_bits()).then_some(m)
        };
        let mut rng = Rng(11);
        let mut values = vec![
            0.0,
            -0.0,
            0.5,
            -0.5,
            1.5,
            -2.5,
            0.125,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            EXACT_INT,
            EXACT_INT - 1.0,
            -(EXACT_INT - 1.0),
            EXACT_INT / 2.0 - 0.5,
            1e300,
            -1e-300,
            f64::MIN_POSITIVE,
            0.1 + 0.2,
        ];
        for _ in 0..20_000 {
            let e = (rng.next() % 8) as i32;
            let m = (rng.next() % 10_000_000_000) as i64 - 5_000_000_000;
            values.push(m as f64 / 10f64.powi(e));
            values.push(f64::from_bits(rng.next()));
            values.push((rng.next() % 1_000_000) as f64 + 0.5);
        }
        for &v in &values {
            for e in 0..=MAX_EXPONENT {
                assert_eq!(as_decimal(v, e), reference(v, e), "{v:e} at 10^-{e}");
            }
        }
        // Chunks of decimals of mixed exponents, one value in each that is not.
        let decimals: Vec<f64> = values.iter().copied().skip(18).step_by(3).collect();
        let chunks: Vec<Vec<f64>> = decimals
            .chunks(20)
            .zip(values.iter().skip(19).step_by(3))
            .map(|(c, &odd)| c.iter().copied().chain([odd]).collect())
            .collect();
        let mut checked = 0;
        for chunk in &chunks {
            let samples: Vec<(i64, f64)> = chunk
                .iter()
                .enumerate()
                .map(|(i, &v)| (i as i64, v))
                .collect();
            let want = chunk.iter().filter_map(|&v| decimal_exponent(v)).max();
            let got = encode_values(&samples).unwrap_or_else(|e| panic!("{e}"));
            if let (Some(want), Some(got)) = (want, got) {
                // The head byte after the exceptions holds the exponent in its low bits.
                let raw = unpack_section(&got, 1 << 16).unwrap_or_else(|e| panic!("{e}"));
                checked += 1;
                let mut r = Cursor::new(&raw);
                let exceptions = r.uvarint().unwrap_or_default();
                for _ in 0..exceptions {
                    r.uvarint();
                    r.bytes(8);
                }
                let head = r.bytes(1).and_then(|b| b.first().copied());
                assert_eq!(head.map(|h| usize::from(h & 15)), Some(want), "{chunk:?}");
            }
        }
        assert!(
            checked > 900,
            "{checked} of {} chunks checked",
            chunks.len()
        );
    }

    #[test]
    fn gcd_and_exact_division_match_the_hardwares() {
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let slow_gcd = |mut a: u64, mut b: u64| {
            while b != 0 {
                (a, b) = (b, a % b);
            }
            a
        };
        for _ in 0..20_000 {
            let shift = next() % 64;
            let (a, b) = (next() >> shift, next() >> (next() % 64));
            let common = 1 + next() % 5000;
            for (a, b) in [
                (a, b),
                (a.wrapping_mul(common) >> 8, b.wrapping_mul(common) >> 8),
                (a, 0),
                (0, b),
            ] {
                assert_eq!(gcd(a, b), slow_gcd(a, b), "gcd({a}, {b})");
            }
            let d = (next() >> shift).max(1);
            let by = ExactDivisor::new(d);
            let k = (next() as i64) >> (next() % 64);
            if let Some(n) = k.checked_mul(d as i64).filter(|_| d <= i64::MAX as u64) {
                assert_eq!(by.divide(n), n / d as i64, "{n} / {d}");
            }
        }
        assert_eq!(gcd(0, 0), 0);
        assert_eq!(ExactDivisor::new(1).divide(-7), -7);
        assert_eq!(ExactDivisor::new(4096).divide(-4096 * 3), -3);
    }

    #[test]
    fn zigzag_lengths_are_the_bytes_written() {
        let mut values = vec![0i64, -1, 1, i64::MIN, i64::MAX];
        for b in 0..63 {
            values.extend([(1i64 << b) - 1, 1i64 << b, -(1i64 << b), -(1i64 << b) - 1]);
        }
        for v in values {
            let mut out = Vec::new();
            put_varint(&mut out, v);
            assert_eq!(zigzag_len(v), out.len(), "{v}");
        }
    }

    #[test]
    fn packed_residuals_of_every_width_read_back() {
        let mut x = 0x2545_F491_4F6C_DD1Du64;
        for width in 1..=64u32 {
            for n in [0usize, 1, 7, 8, 9, 63, 64, 65, 119] {
                let mask = if width == 64 {
                    u64::MAX
                } else {
                    (1 << width) - 1
                };
                let base = -12_345i64;
                let r: Vec<i64> = (0..n)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        base.wrapping_add((x & mask) as i64)
                    })
                    .collect();
                let mut out = vec![0xAA];
                put_packed(&mut out, r.iter().copied(), base, width as u8);
                assert_eq!(
                    out.len(),
                    1 + (n * width as usize).div_ceil(8),
                    "{width} bits, {n}"
                );
                let mut u = Unpacker {
                    bytes: &out[1..],
                    at: 0,
                    acc: 0,
                    bits: 0,
                    width,
                    base,
                };
                let back: Vec<i64> = (0..n).map_while(|_| u.next()).collect();
                assert_eq!(back, r, "{width} bits, {n}");
            }
        }
    }

    #[test]
    fn division_by_a_fixed_divisor_matches_the_hardwares() {
        let mut rng = Rng(7);
        let mut divisors: Vec<u64> = (2..=1_000).collect();
        divisors.extend([
            3 << 20,
            (1 << 24) - 1,
            (1 << 24) + 1,
            (1 << 32) - 1,
            (1 << 32) + 1,
            MAX_RADIX - 1,
            MAX_RADIX,
            1 << 63,
            (1 << 63) + 1,
            u64::MAX - 1,
            u64::MAX,
        ]);
        divisors.extend((0..2_000).map(|_| 2 + rng.next() % (MAX_RADIX - 1)));
        divisors.extend((0..500).map(|_| (rng.next() >> (rng.next() % 62)).max(2)));
        for d in divisors {
            let by = Divisor::new(d);
            let mut numerators = vec![0, 1, d - 1, d, d.wrapping_add(1), u64::MAX, u64::MAX - 1];
            numerators.extend(
                d.checked_mul(255)
                    .into_iter()
                    .flat_map(|x| [x - 1, x, x.wrapping_add(1)]),
            );
            numerators.extend(d.checked_mul(256).map(|x| x - 1));
            numerators.extend((0..50).map(|_| rng.next()));
            numerators.extend((0..50).map(|_| rng.next() % d.saturating_mul(256)));
            for n in numerators {
                assert_eq!(by.div(n), n / d, "{n} / {d}");
            }
        }
    }

    /// A deterministic generator, so failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            self.0 >> 17
        }
    }

    #[test]
    fn exporter_like_series_are_exact_and_small() {
        let mut rng = Rng(7);
        let mut cpu = 123_456i64;
        let samples: Vec<(i64, f64)> = (0..480)
            .map(|i| {
                cpu += 1490 + (rng.next() % 17) as i64 - 8;
                (
                    1_700_000_000_000 + i * 15_000 + (rng.next() % 5) as i64,
                    cpu as f64 / 100.0,
                )
            })
            .collect();
        let size = round_trip(&samples).unwrap_or_else(|| panic!("not dense"));
        assert!(size < 480 * 2, "{size} bytes");
        let constant: Vec<(i64, f64)> = (0..480).map(|i| (i * 15_000, 8.0e9)).collect();
        let size = round_trip(&constant).unwrap_or_else(|| panic!("not dense"));
        assert!(size < 64, "{size} bytes");
    }

    /// zstd is left out where it cannot win: sections come out as small as when it is
    /// always tried, on series where it wins (rare and periodic steps, bursts) and where
    /// it does not, where it is then mostly not tried at all.
    #[test]
    fn zstd_is_tried_only_where_it_may_win() -> Result<(), Error> {
        let mut rng = Rng(11);
        type Step = Box<dyn FnMut(usize, &mut Rng) -> i64>;
        let mut kinds: Vec<(&str, Step)> = vec![
            ("constant", Box::new(|_, _| 0)),
            ("steady", Box::new(|_, _| 1_500)),
            (
                "rare",
                Box::new(|i, r| {
                    if i % 53 == 7 {
                        (r.next() % 9) as i64
                    } else {
                        0
                    }
                }),
            ),
            ("periodic", Box::new(|i, _| if i % 4 == 0 { 5 } else { 0 })),
            (
                "two levels",
                Box::new(|i, _| if i % 2 == 0 { 3 } else { -3 }),
            ),
            (
                "bursts",
                Box::new(|i, r| {
                    if (i / 40) % 3 == 0 {
                        (r.next() % 1_000) as i64
                    } else {
                        0
                    }
                }),
            ),
            ("jitter", Box::new(|_, r| 1_500 + (r.next() % 3) as i64 - 1)),
            (
                "sparse big",
                Box::new(|_, r| {
                    if r.next() % 10 == 0 {
                        (r.next() % 1_000_000) as i64
                    } else {
                        0
                    }
                }),
            ),
            ("random 40", Box::new(|_, r| (r.next() % 41) as i64)),
            ("random 1400", Box::new(|_, r| (r.next() % 1_401) as i64)),
            ("random 2^19", Box::new(|_, r| (r.next() % 500_001) as i64)),
            ("walk", Box::new(|_, r| (r.next() % 481) as i64 - 240)),
            (
                "repeated random",
                Box::new(|i, _| [17, 3, 250, 96, 1_200, 41, 7][i % 7]),
            ),
        ];
        let (mut tried, mut skipped) = (0, 0);
        for (name, step) in &mut kinds {
            for n in [2, 30, 120, 480, 1_440] {
                let mut v = 1_000_000i64;
                let ints: Vec<i64> = (0..n)
                    .map(|i| {
                        v += step(i, &mut rng);
                        v
                    })
                    .collect();
                let head = |order: u8| 2 | (order << 4);
                let always = encode_mantissas(vec![0], &ints, head, |_, _| true)?;
                let chosen = encode_mantissas(vec![0], &ints, head, may_compress_below)?;
                assert!(
                    chosen.len() <= always.len(),
                    "{name}, {n}: {} bytes, {} with zstd always tried",
                    chosen.len(),
                    always.len()
                );
                let mut best = Vec::new();
                let _ = encode_mantissas(vec![0], &ints, head, |b, bar| {
                    best.push(may_compress_below(b, bar));
                    false
                });
                if best.first() == Some(&true) {
                    tried += 1;
                } else {
                    skipped += 1;
                }
                let mut out: Vec<(i64, f64)> = vec![(0, 0.0); n];
                decode_values(&chosen, &mut out)?;
                let back: Vec<i64> = out
                    .iter()
                    .map(|&(_, x)| (x * 100.0).round() as i64)
                    .collect();
                assert_eq!(back, ints, "{name}, {n}");
            }
        }
        assert!(
            tried >= 10 && skipped >= 20,
            "tried {tried}, skipped {skipped}"
        );
        Ok(())
    }

    /// Calls `check` on `rounds` copies of `section`, each with one bit flipped, whole
    /// and cut short at a random place.
    fn damaged(section: &[u8], rng: &mut Rng, rounds: usize, mut check: impl FnMut(&[u8])) {
        for _ in 0..rounds {
            let mut b = section.to_vec();
            let at = (rng.next() as usize) % b.len();
            b[at] ^= 1 << (rng.next() % 8);
            let cut = (rng.next() as usize) % b.len();
            check(&b);
            check(&b[..cut]);
        }
    }

    #[test]
    fn evenly_spread_increments_are_coded_near_their_entropy() {
        // Counters growing by a random amount up to a maximum (bytes, events, ticks of
        // 1/100 s), and gauges wandering by up to ± half of it (blocks of 4 KiB, whole
        // units): every residual is equally likely over `max + 1` values, `log2(max + 1)`
        // bits a sample. Powers of two are bit-packed, other spans coded as digits in
        // groups; either way the section is within 32 bytes of that.
        let mut rng = Rng(5);
        for (max, multiplier, divisor, signed, coding) in [
            // 19 bits packed is 0.07 bits above: about the coder's state in 480.
            (500_000u64, 1.0, 1.0, false, &[PACKED, RANGED, GROUPED][..]),
            (40, 1.0, 1.0, false, &[GROUPED, RANGED]),
            (80, 1.0, 100.0, false, &[GROUPED, RANGED]),
            (1_400, 1.0, 100.0, false, &[GROUPED, RANGED]),
            (240, 4096.0, 1.0, true, &[GROUPED, RANGED]),
            (2, 1024.0, 1.0, true, &[GROUPED, RANGED]),
            (255, 1.0, 1.0, false, &[PACKED, GROUPED]),
            ((1 << 40) - 1, 1.0, 1.0, false, &[PACKED]),
            // Too wide for two digits in a group.
            (3 << 38, 1.0, 1.0, false, &[RANGED]),
        ] {
            for n in [2, 3, 480, 1_440] {
                let mut v = 1_000_000i64;
                let samples: Vec<(i64, f64)> = (0..n)
                    .map(|i| {
                        let step = (rng.next() % (max + 1)) as i64;
                        v += if signed { step - max as i64 / 2 } else { step };
                        (i * 15_000, v as f64 * multiplier / divisor)
                    })
                    .collect();
                round_trip(&samples).unwrap_or_else(|| panic!("not dense"));
                let values = encode_values(&samples)
                    .unwrap_or_else(|e| panic!("{e}"))
                    .unwrap_or_else(|| panic!("not dense"));
                if n < 480 {
                    continue;
                }
                let entropy = ((max + 1) as f64).log2() * (n - 1) as f64 / 8.0;
                assert!(
                    (values.len() as f64) < entropy + 32.0,
                    "max {max}: {} bytes, entropy {entropy:.0}",
                    values.len()
                );
                // Raw section, no exceptions: the head follows the exception count.
                assert_eq!(values[..2], [0, 0], "max {max}");
                let used = (values[2] >> 4) & (PACKED | RANGED);
                assert!(coding.contains(&used), "max {max}, n {n}: {used}");
                // A 2 h block's section: the groups' few bits of rounding stay within
                // the range coder's state.
                if n == 480 && coding == [GROUPED, RANGED] {
                    assert_eq!(used, GROUPED, "max {max}");
                }
                // Every flipped bit and cut is an error or a different answer, never a
                // panic.
                damaged(&values, &mut Rng(max), 2000, |bytes| {
                    let mut out = samples.clone();
                    let _ = decode_values(bytes, &mut out);
                });
            }
        }
    }

    #[test]
    fn range_coded_residuals_around_exceptions() {
        // A counter of events with a stale marker and a NaN in it, and a reset.
        let mut rng = Rng(9);
        let stale = f64::from_bits(crate::STALE_NAN_BITS);
        let mut v = 0i64;
        let mut samples: Vec<(i64, f64)> = (0..720)
            .map(|i| {
                v += (rng.next() % 41) as i64;
                (i * 15_000, v as f64)
            })
            .collect();
        samples[0].1 = stale;
        samples[100].1 = f64::NAN;
        samples[400].1 = 3.0;
        samples[719].1 = stale;
        round_trip(&samples).unwrap_or_else(|| panic!("not dense"));
        let values = encode_values(&samples)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("not dense"));
        damaged(&values, &mut Rng(4), 2000, |bytes| {
            let mut out = samples.clone();
            let _ = decode_values(bytes, &mut out);
        });
    }

    /// `samples` encoded as float bit patterns and decoded again, bit for bit; the
    /// section's size.
    fn float_round_trip(samples: &[(i64, f64)]) -> usize {
        let values = encode_float_values(samples).unwrap_or_else(|e| panic!("{e}"));
        let mut got: Vec<(i64, f64)> = samples.iter().map(|&(t, _)| (t, 0.0)).collect();
        decode_values(&values, &mut got).unwrap_or_else(|e| panic!("{e}"));
        let bits = |s: &[(i64, f64)]| -> Vec<u64> { s.iter().map(|&(_, v)| v.to_bits()).collect() };
        assert_eq!(bits(&got), bits(samples));
        values.len()
    }

    #[test]
    fn float_values_are_exact_and_smaller_than_xor() {
        // A histogram's `_sum`: a counter adding measured durations, full precision.
        let mut rng = Rng(21);
        let mut v = 0.0;
        let sum: Vec<(i64, f64)> = (0..480)
            .map(|i| {
                v += (rng.next() >> 11) as f64 / (1u64 << 42) as f64 * 3.0;
                (i * 15_000 + (rng.next() % 5) as i64, v)
            })
            .collect();
        assert!(encode_values(&sum)
            .unwrap_or_else(|e| panic!("{e}"))
            .is_none());
        let dense = float_round_trip(&sum);
        let mut xor = crate::chunk::XorChunk::new();
        for &(t, v) in &sum[..120] {
            xor.append(t, v);
        }
        let xor = xor.into_encoded().0.len() * 4;
        // About 44 bits of increment a sample, against XOR's meaningful bits, their
        // headers and the jittered timestamps.
        assert!(dense * 5 < xor * 4, "{dense} bytes against {xor} as XOR");

        // Anything at all, special values included, comes back bit for bit.
        let stale = f64::from_bits(crate::STALE_NAN_BITS);
        let mut odd: Vec<(i64, f64)> = (0..300)
            .map(|i| (i, f64::from_bits(rng.next() << 17 ^ rng.next())))
            .collect();
        for (i, v) in [
            f64::NAN,
            stale,
            -0.0,
            0.0,
            f64::INFINITY,
            -f64::INFINITY,
            f64::MIN,
            f64::MAX,
        ]
        .into_iter()
        .enumerate()
        {
            odd[i * 7].1 = v;
        }
        float_round_trip(&odd);
        float_round_trip(&odd[..1]);
        float_round_trip(&odd[..2]);
        float_round_trip(&[(1, 0.1 + 0.2), (2, 0.1 + 0.2), (3, 0.1 + 0.2)]);

        for samples in [&sum, &odd] {
            let values = encode_float_values(samples).unwrap_or_else(|e| panic!("{e}"));
            damaged(&values, &mut Rng(8), 2000, |bytes| {
                let mut out = samples.clone();
                let _ = decode_values(bytes, &mut out);
            });
        }
    }

    #[test]
    fn special_values_and_gaps_are_exact() {
        let stale = f64::from_bits(crate::STALE_NAN_BITS);
        let mut samples: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, i as f64 * 0.5)).collect();
        samples[3].1 = f64::NAN;
        samples[10].1 = stale;
        samples[11].1 = f64::INFINITY;
        samples[12].1 = -0.0;
        samples[50].0 += 7; // jitter
        for s in &mut samples[60..] {
            s.0 += 3_600_000; // a gap
        }
        round_trip(&samples).unwrap_or_else(|| panic!("not dense"));
        round_trip(&samples[..1]).unwrap_or_else(|| panic!("not dense"));
        round_trip(&[(5, stale), (6, 1.0), (7, 2.0), (8, 3.0), (9, 4.0)])
            .unwrap_or_else(|| panic!("not dense"));
        // Extremes of time and value.
        round_trip(&[(i64::MIN, 1e300), (0, -1e-300), (i64::MAX, 0.1)]);
        round_trip(&[(-5, 1e15), (-4, 123_456_789.012_345), (1 << 60, 0.3)]);
    }

    #[test]
    fn arbitrary_floats_fall_back_or_stay_exact() {
        let mut rng = Rng(11);
        for _ in 0..200 {
            let n = 1 + (rng.next() % 300) as usize;
            let mut t = (rng.next() as i64) - (1 << 40);
            let samples: Vec<(i64, f64)> = (0..n)
                .map(|_| {
                    t += 1 + (rng.next() % 30_000) as i64;
                    let v = match rng.next() % 4 {
                        0 => f64::from_bits(rng.next() << 17 | rng.next()),
                        1 => (rng.next() % 10_000) as f64 / 1000.0,
                        2 => 0.1 + 0.2,
                        _ => (rng.next() % 1000) as f64,
                    };
                    (t, v)
                })
                .collect();
            round_trip(&samples);
        }
    }

    #[test]
    fn corrupt_payloads_are_errors_not_panics() {
        let samples: Vec<(i64, f64)> = (0..200).map(|i| (i * 15_000, i as f64 / 4.0)).collect();
        let times = encode_times(&samples).unwrap_or_else(|e| panic!("{e}"));
        let values = encode_values(&samples)
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|| panic!("not dense"));
        let mut rng = Rng(3);
        for section in [times, values] {
            damaged(&section, &mut rng, 1000, |bytes| {
                let mut out = Vec::new();
                let _ = decode_times(bytes, samples.len(), &mut out);
                let mut out = samples.clone();
                let _ = decode_values(bytes, &mut out);
            });
        }
    }
}
