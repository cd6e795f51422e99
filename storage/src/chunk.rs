//! Compressed chunks of samples: delta-of-delta timestamps and XOR-encoded values
//! (the Gorilla scheme). The byte format is specified in `docs/format/chunks.md`.
//!
//! A chunk is appended to in time order by one writer ([`XorChunk::append`]) and can be
//! read while it is open ([`XorChunk::iter`] reads what has been written so far). Values are
//! stored bit-exactly, so NaN payloads such as the Prometheus stale marker survive.

/// Bytes an open chunk's buffer grows by (XOR or decimal).
pub(crate) const GROWTH: usize = 64;

/// Makes room in `v` for exactly `extra` more elements by moving them into a new
/// allocation, where `Vec::reserve_exact` would `realloc`. glibc's `realloc` locks the
/// buffer's arena every time, and the ingest threads, which append to the same series
/// and share two arenas, wait on each other there; a small `malloc` and `free` take
/// the lock only when the calling thread's own cache cannot serve them. For the small,
/// often grown buffers of the head.
pub(crate) fn grow_exact<T>(v: &mut Vec<T>, extra: usize) {
    let mut next = Vec::with_capacity(v.len().saturating_add(extra));
    next.append(v);
    *v = next;
}

/// A bit-level writer over a byte vector. The last byte may be partially filled.
#[derive(Debug, Clone, Default)]
struct BitWriter {
    bytes: Vec<u8>,
    /// Number of bits still free in the last byte (0..=7; 0 means a new byte is needed).
    free: u8,
}

impl BitWriter {
    /// Starts a new byte. The buffer grows by a fixed step, not by doubling: a head
    /// series keeps its open chunk in memory, and doubling would leave up to half of it
    /// unused.
    #[inline]
    fn new_byte(&mut self) {
        if self.bytes.len() == self.bytes.capacity() {
            grow_exact(&mut self.bytes, GROWTH);
        }
        self.bytes.push(0);
        self.free = 8;
    }

    #[inline]
    fn write_bit(&mut self, bit: bool) {
        if self.free == 0 {
            self.new_byte();
        }
        self.free -= 1;
        if bit {
            if let Some(last) = self.bytes.last_mut() {
                *last |= 1 << self.free;
            }
        }
    }

    /// Writes the low `n` bits of `v` (`n` at most 64), most significant first: the free
    /// bits of the last byte first, then whole bytes at once.
    #[inline]
    fn write_bits(&mut self, v: u64, n: u8) {
        if n == 0 {
            return;
        }
        let mut n = u32::from(n.min(64));
        let v = if n == 64 { v } else { v & ((1u64 << n) - 1) };
        let free = u32::from(self.free);
        if free > 0 {
            if let Some(last) = self.bytes.last_mut() {
                if n <= free {
                    *last |= (v << (free - n)) as u8;
                    self.free -= n as u8;
                    return;
                }
                n -= free;
                // The top `free` of the value's bits.
                *last |= (v >> n) as u8;
            }
        }
        // Byte-aligned now: the low `n` bits (1 to 64) left-aligned, then as many bytes
        // as they take.
        // All eight bytes go in with one store (those past the bits are zero), and the
        // length is then set back: cheaper than copying a slice of varying length.
        let whole = n.div_ceil(8) as usize;
        let len = self.bytes.len();
        if self.bytes.capacity() - len < 8 {
            grow_exact(&mut self.bytes, GROWTH);
        }
        self.bytes.extend_from_slice(&(v << (64 - n)).to_be_bytes());
        self.bytes.truncate(len + whole);
        self.free = (whole as u32 * 8 - n) as u8;
    }

    fn write_uvarint(&mut self, mut v: u64) {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                self.write_bits(byte as u64, 8);
                return;
            }
            self.write_bits((byte | 0x80) as u64, 8);
        }
    }

    fn write_varint(&mut self, v: i64) {
        self.write_uvarint(((v << 1) ^ (v >> 63)) as u64);
    }
}

/// A bit-level reader over a byte slice: up to 64 unread bits wait left-aligned in a
/// register, refilled eight bytes at a time, so a field is a shift and a mask.
#[derive(Clone)]
struct BitReader<'a> {
    bytes: &'a [u8],
    /// The next byte to load into `acc`.
    next: usize,
    /// Unread bits, most significant first; the bits below `have` are zero.
    acc: u64,
    have: u32,
}

impl<'a> BitReader<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        Self {
            bytes,
            next: 0,
            acc: 0,
            have: 0,
        }
    }

    /// Loads whole bytes until at least 57 bits wait or the input ends.
    #[inline(always)]
    fn refill(&mut self) {
        let room = (64 - self.have) / 8;
        if room == 0 {
            return;
        }
        if let Some(w) = self.bytes.get(self.next..self.next + 8) {
            let mut a = [0u8; 8];
            a.copy_from_slice(w);
            let w = u64::from_be_bytes(a);
            let bits = 8 * room;
            self.acc |= (w >> (64 - bits)) << (64 - self.have - bits);
            self.next += room as usize;
            self.have += bits;
        } else {
            while self.have <= 56 {
                let Some(&b) = self.bytes.get(self.next) else {
                    break;
                };
                self.acc |= u64::from(b) << (56 - self.have);
                self.next += 1;
                self.have += 8;
            }
        }
    }

    /// Bits not read yet.
    #[inline]
    fn remaining(&self) -> usize {
        self.have as usize + (self.bytes.len() - self.next) * 8
    }

    /// The next `n` (1..=56) bits without consuming them; `None` past the end.
    #[inline(always)]
    fn peek(&mut self, n: u32) -> Option<u64> {
        debug_assert!((1..=56).contains(&n));
        if self.have < n {
            self.refill();
            if self.have < n {
                return None;
            }
        }
        Some(self.acc >> (64 - n))
    }

    /// Drops `n` bits already seen by [`BitReader::peek`].
    #[inline(always)]
    fn consume(&mut self, n: u32) {
        debug_assert!(n <= self.have && n < 64);
        self.acc <<= n;
        self.have -= n;
    }

    #[inline(always)]
    fn read_bit(&mut self) -> Option<bool> {
        let b = self.peek(1)?;
        self.consume(1);
        Some(b == 1)
    }

    /// The next `n` (0..=64) bits; `None` past the end.
    #[inline(always)]
    fn read_bits(&mut self, n: u8) -> Option<u64> {
        let n = u32::from(n);
        match n {
            0 => Some(0),
            1..=56 => {
                let v = self.peek(n)?;
                self.consume(n);
                Some(v)
            }
            _ => self.read_long(n),
        }
    }

    /// [`BitReader::read_bits`] for 57 to 64 bits (a first value, a full XOR): two reads.
    #[inline(always)]
    fn read_long(&mut self, n: u32) -> Option<u64> {
        if self.remaining() < n as usize || n > 64 {
            return None;
        }
        let hi = self.peek(32)?;
        self.consume(32);
        let lo = self.peek(n - 32)?;
        self.consume(n - 32);
        Some(hi << (n - 32) | lo)
    }

    fn read_uvarint(&mut self) -> Option<u64> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let b = self.read_bits(8)?;
            v |= (b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    fn read_varint(&mut self) -> Option<i64> {
        let u = self.read_uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }
}

/// An XOR chunk: an open or closed sequence of `(timestamp_ms, value)` samples.
#[derive(Debug, Clone)]
pub(crate) struct XorChunk {
    bits: BitWriter,
    count: u16,
    first_t: i64,
    t: i64,
    t_delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
    /// The two latest marks, older first (index 0: none yet).
    marks: [StoredMark; 2],
}

/// A [`Mark`] as an open chunk keeps it, in 24 bytes: its time from the chunk's first
/// sample. A state that does not fit is not kept.
#[derive(Debug, Clone, Copy, Default)]
struct StoredMark {
    v: u64,
    t_offset: u32,
    t_delta: i32,
    bit: u16,
    index: u16,
    leading: u8,
    trailing: u8,
}

/// Samples between two [`Mark`]s of a chunk.
const MARK_EVERY: u16 = 32;

/// Where decoding can start inside a chunk: the decoder's state before sample `index`.
/// A query of the newest minutes of a series decodes its open chunk from the latest mark
/// before them instead of from the chunk's first sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mark {
    /// The sample decoding starts at; 0 for no mark.
    pub(crate) index: u16,
    /// That sample's first bit in the chunk's bytes.
    bit: u32,
    /// The time of the sample before it: every sample from `index` on is later.
    pub(crate) t: i64,
    t_delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
}

impl Default for XorChunk {
    fn default() -> Self {
        Self::new()
    }
}

impl XorChunk {
    pub(crate) fn new() -> Self {
        Self::new_with(Vec::with_capacity(32))
    }

    /// An empty chunk writing into `bytes` (which must be empty).
    pub(crate) fn with_buffer(bytes: Vec<u8>) -> Self {
        Self::new_with(bytes)
    }

    /// The buffer, for the next chunk to reuse.
    pub(crate) fn into_buffer(self) -> Vec<u8> {
        self.bits.bytes
    }

    fn new_with(bytes: Vec<u8>) -> Self {
        Self {
            bits: BitWriter { bytes, free: 0 },
            count: 0,
            first_t: 0,
            t: 0,
            t_delta: 0,
            v: 0,
            leading: 0xff,
            trailing: 0,
            marks: [StoredMark::default(); 2],
        }
    }

    /// The latest mark after which every sample is newer than `t`, if the chunk has one.
    pub(crate) fn mark_before(&self, t: i64) -> Option<Mark> {
        self.marks
            .iter()
            .rev()
            .map(|m| Mark {
                index: m.index,
                bit: u32::from(m.bit),
                t: self.first_t + i64::from(m.t_offset),
                t_delta: i64::from(m.t_delta),
                v: m.v,
                leading: m.leading,
                trailing: m.trailing,
            })
            .find(|m| m.index > 0 && m.t < t)
    }

    /// The chunk's bytes from the one holding `m`'s first bit, and `m` with its bit
    /// counted from that byte: what [`XorIter::resume`] decodes from.
    pub(crate) fn tail_from(&self, m: &Mark) -> (&[u8], Mark) {
        let at = (m.bit / 8) as usize;
        let mut from = *m;
        from.bit %= 8;
        (self.bytes().get(at..).unwrap_or_default(), from)
    }

    /// Keeps a mark before the sample about to be appended, when its state fits.
    fn mark(&mut self) {
        let bit = self.bits.bytes.len() * 8 - usize::from(self.bits.free);
        let (Ok(bit), Ok(t_offset), Ok(t_delta)) = (
            u16::try_from(bit),
            u32::try_from(self.t - self.first_t),
            i32::try_from(self.t_delta),
        ) else {
            return;
        };
        self.marks = [
            self.marks[1],
            StoredMark {
                v: self.v,
                t_offset,
                t_delta,
                bit,
                index: self.count,
                // Before its first new window the writer has none; the reader starts from
                // zero and reads one before it uses it.
                leading: if self.leading == 0xff {
                    0
                } else {
                    self.leading
                },
                trailing: self.trailing,
            },
        ];
    }

    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    pub(crate) fn min_time(&self) -> i64 {
        self.first_t
    }

    pub(crate) fn max_time(&self) -> i64 {
        self.t
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bits.bytes
    }

    /// Appends a sample. The caller guarantees `t` is greater than the last timestamp.
    pub(crate) fn append(&mut self, t: i64, v: f64) {
        let vbits = v.to_bits();
        if self.count >= 2 && self.count.is_multiple_of(MARK_EVERY) {
            self.mark();
        }
        match self.count {
            0 => {
                self.bits.write_varint(t);
                self.bits.write_bits(vbits, 64);
                self.first_t = t;
            }
            1 => {
                let delta = t - self.t;
                self.bits.write_uvarint(delta as u64);
                self.write_value(vbits);
                self.t_delta = delta;
            }
            _ => {
                let delta = t - self.t;
                let dod = delta - self.t_delta;
                // The prefix and the field in one write where they fit in 64 bits.
                let field = |bits: u32| (dod as u64) & ((1u64 << bits) - 1);
                match dod {
                    0 => self.bits.write_bit(false),
                    -8191..=8192 => self.bits.write_bits((0b10 << 14) | field(14), 16),
                    -65535..=65536 => self.bits.write_bits((0b110 << 17) | field(17), 20),
                    -524287..=524288 => self.bits.write_bits((0b1110 << 20) | field(20), 24),
                    _ => {
                        self.bits.write_bits(0b1111, 4);
                        self.bits.write_bits(dod as u64, 64);
                    }
                }
                self.write_value(vbits);
                self.t_delta = delta;
            }
        }
        self.t = t;
        self.v = vbits;
        self.count += 1;
    }

    fn write_value(&mut self, vbits: u64) {
        let x = vbits ^ self.v;
        if x == 0 {
            self.bits.write_bit(false);
            return;
        }
        let leading = (x.leading_zeros() as u8).min(31);
        let trailing = x.trailing_zeros() as u8;
        if self.leading != 0xff && leading >= self.leading && trailing >= self.trailing {
            // Reuse the previous window: `10`, then the window's bits.
            let sig = 64 - self.leading - self.trailing;
            if sig <= 62 {
                self.bits
                    .write_bits((0b10 << sig) | (x >> self.trailing), sig + 2);
            } else {
                self.bits.write_bits(0b10, 2);
                self.bits.write_bits(x >> self.trailing, sig);
            }
        } else {
            self.leading = leading;
            self.trailing = trailing;
            let sig = 64 - leading - trailing;
            // `11`, 5 bits of leading zeros, 6 of length (64 significant bits are stored
            // as 0), then the bits.
            let head = (0b11 << 11) | (u64::from(leading) << 6) | u64::from(sig & 63);
            if sig <= 51 {
                self.bits
                    .write_bits((head << sig) | (x >> trailing), sig + 13);
            } else {
                self.bits.write_bits(head, 13);
                self.bits.write_bits(x >> trailing, sig);
            }
        }
    }

    /// Iterates over the samples written so far.
    pub(crate) fn iter(&self) -> XorIter<'_> {
        XorIter::new(self.bytes(), self.count)
    }

    /// Freezes the chunk into its encoded bytes and sample count.
    pub(crate) fn into_encoded(self) -> (Box<[u8]>, u16) {
        (self.bits.bytes.into_boxed_slice(), self.count)
    }
}

/// `samples` (strictly increasing timestamps, at most `u16::MAX`) as a Prometheus XOR
/// chunk: the sample count as a big-endian `u16`, then the same bit stream strata's XOR
/// chunks hold — what remote read's `STREAMED_XOR_CHUNKS` response carries.
pub fn prometheus_xor_chunk(samples: &[(i64, f64)]) -> Vec<u8> {
    let mut c = XorChunk::new();
    for &(t, v) in samples.iter().take(u16::MAX as usize) {
        c.append(t, v);
    }
    let (bits, count) = c.into_encoded();
    let mut out = Vec::with_capacity(2 + bits.len());
    out.extend_from_slice(&count.to_be_bytes());
    out.extend_from_slice(&bits);
    out
}

/// Decodes samples from encoded chunk bytes.
#[derive(Clone)]
pub(crate) struct XorIter<'a> {
    r: BitReader<'a>,
    remaining: u16,
    read: u16,
    s: XorState,
}

/// What decoding the next sample of an XOR chunk starts from.
#[derive(Clone, Copy)]
struct XorState {
    t: i64,
    t_delta: i64,
    v: u64,
    leading: u8,
    trailing: u8,
}

impl XorState {
    /// The next value: a repeat, or an XOR with the previous one's bits.
    #[inline(always)]
    fn read_value(&mut self, r: &mut BitReader<'_>) -> Option<()> {
        if !r.read_bit()? {
            return Some(());
        }
        if r.read_bit()? {
            self.leading = r.read_bits(5)? as u8;
            let mut sig = r.read_bits(6)? as u8;
            if sig == 0 {
                sig = 64;
            }
            self.trailing = 64u8.checked_sub(self.leading + sig)?;
        }
        let sig = 64 - self.leading - self.trailing;
        let x = r.read_bits(sig)?;
        self.v ^= x << self.trailing;
        Some(())
    }

    /// A sample after the second: a delta of the time delta, then the value. The usual
    /// shapes are read with one check for bits each and no jump on the delta's width.
    #[inline(always)]
    fn read_later(&mut self, r: &mut BitReader<'_>) -> Option<(i64, f64)> {
        // The time: a prefix 0, 10, 110 or 1110 and a field of 0, 14, 17 or 20 bits, or
        // 1111 and 64 bits.
        if r.have < 24 {
            r.refill();
        }
        let prefix = (!r.acc).leading_zeros().min(4);
        if prefix == 4 {
            if r.have < 4 {
                return None;
            }
            r.consume(4);
            self.t_delta += r.read_bits(64)? as i64;
        } else {
            const WIDTH: [u32; 4] = [0, 14, 17, 20];
            let width = WIDTH[prefix as usize];
            let used = prefix + 1 + width;
            if used > r.have {
                return None;
            }
            // The field's bits; none for width 0 (two shifts keep each below 64).
            let raw = ((r.acc << (prefix + 1)) >> 32) >> (32 - width);
            r.consume(used);
            // Fields hold -(2^(w-1) - 1) ..= 2^(w-1): above half is negative.
            let half = (1u64 << width) >> 1;
            let dod = raw as i64 - if raw > half { 1i64 << width } else { 0 };
            self.t_delta += dod;
        }
        self.t += self.t_delta;
        // The value: 0 for a repeat, 10 for an XOR within the last window of bits, 11 for
        // a new window (5 bits of leading zeros, 6 of length) and the XOR.
        if r.have < 13 {
            r.refill();
        }
        if r.have == 0 {
            return None;
        }
        if r.acc >> 63 == 1 {
            if r.have < 2 {
                return None;
            }
            let new_window = (r.acc >> 62) & 1 == 1;
            r.consume(2);
            if new_window {
                if r.have < 11 {
                    return None;
                }
                let fields = r.acc >> 53;
                r.consume(11);
                self.leading = (fields >> 6) as u8;
                let sig = match (fields & 63) as u8 {
                    0 => 64,
                    n => n,
                };
                self.trailing = 64u8.checked_sub(self.leading + sig)?;
            }
            let sig = 64 - self.leading - self.trailing;
            let x = r.read_bits(sig)?;
            self.v ^= x << self.trailing;
        } else {
            r.consume(1);
        }
        Some((self.t, f64::from_bits(self.v)))
    }
}

impl<'a> XorIter<'a> {
    pub(crate) fn new(bytes: &'a [u8], count: u16) -> Self {
        Self {
            r: BitReader::new(bytes),
            remaining: count,
            read: 0,
            s: XorState {
                t: 0,
                t_delta: 0,
                v: 0,
                leading: 0,
                trailing: 0,
            },
        }
    }

    fn step(&mut self) -> Option<(i64, f64)> {
        let s = &mut self.s;
        match self.read {
            0 => {
                s.t = self.r.read_varint()?;
                s.v = self.r.read_bits(64)?;
            }
            1 => {
                s.t_delta = self.r.read_uvarint()? as i64;
                s.t += s.t_delta;
                s.read_value(&mut self.r)?;
            }
            _ => {
                self.read += 1;
                return s.read_later(&mut self.r);
            }
        }
        self.read += 1;
        Some((s.t, f64::from_bits(s.v)))
    }

    /// Decodes from `mark` of a chunk of `count` samples, `bytes` being the chunk's
    /// bytes from the one holding the mark's first bit.
    pub(crate) fn resume(bytes: &'a [u8], mark: &Mark, count: u16) -> Self {
        let mut r = BitReader::new(bytes);
        let skip = (mark.bit % 8) as u8;
        let ok = r.read_bits(skip).is_some() && mark.index >= 2;
        Self {
            r,
            remaining: if ok {
                count.saturating_sub(mark.index)
            } else {
                0
            },
            read: mark.index,
            s: XorState {
                t: mark.t,
                t_delta: mark.t_delta,
                v: mark.v,
                leading: mark.leading,
                trailing: mark.trailing,
            },
        }
    }

    /// How many samples are not read yet.
    pub(crate) fn remaining(&self) -> u16 {
        self.remaining
    }

    /// Passes the samples not read yet to `f`, in order, until it returns `false`; stops
    /// at truncated bytes as [`Iterator::next`] does. Faster than `next`: past the first
    /// two samples the decoder's state lives in registers.
    #[inline]
    pub(crate) fn decode_while(mut self, mut f: impl FnMut(i64, f64) -> bool) {
        while self.read < 2 {
            match self.next() {
                Some((t, v)) if f(t, v) => {}
                _ => return,
            }
        }
        let (mut r, mut s) = (self.r.clone(), self.s);
        for _ in 0..self.remaining {
            match s.read_later(&mut r) {
                Some((t, v)) if f(t, v) => {}
                _ => return,
            }
        }
    }
}

impl Iterator for XorIter<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        let s = self.step();
        if s.is_none() {
            // Truncated bytes: stop rather than yield garbage.
            self.remaining = 0;
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grow_exact_keeps_the_elements_and_adds_exactly_the_room_asked_for() {
        let mut v: Vec<u16> = Vec::with_capacity(3);
        v.extend([7, 8, 9]);
        grow_exact(&mut v, 5);
        assert_eq!(v, [7, 8, 9]);
        assert_eq!(v.capacity(), 8);
        let mut empty: Vec<u8> = Vec::new();
        grow_exact(&mut empty, GROWTH);
        assert!(empty.is_empty());
        assert_eq!(empty.capacity(), GROWTH);
    }

    #[test]
    fn bit_writes_match_writing_one_bit_at_a_time() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut fast = BitWriter::default();
        let mut slow = BitWriter::default();
        for _ in 0..20_000 {
            let r = next();
            let n = (r % 65) as u8;
            let v = next();
            if r & 0x100 == 0 {
                fast.write_bit(v & 1 == 1);
                slow.write_bit(v & 1 == 1);
                continue;
            }
            fast.write_bits(v, n);
            for i in (0..n).rev() {
                slow.write_bit((v >> i) & 1 == 1);
            }
            assert_eq!(fast.free, slow.free);
        }
        assert_eq!(fast.bytes, slow.bytes);
    }

    fn roundtrip(samples: &[(i64, f64)]) {
        let mut c = XorChunk::new();
        for &(t, v) in samples {
            c.append(t, v);
        }
        let got: Vec<(i64, u64)> = c.iter().map(|(t, v)| (t, v.to_bits())).collect();
        let want: Vec<(i64, u64)> = samples.iter().map(|&(t, v)| (t, v.to_bits())).collect();
        assert_eq!(got, want);
        let (bytes, n) = c.into_encoded();
        let again: Vec<(i64, u64)> = XorIter::new(&bytes, n)
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        assert_eq!(again, want);
        // The bulk decoder yields the same, and stops where it is told to.
        for stop in [0, 1, 2, 3, want.len() / 2, want.len()] {
            let mut bulk = Vec::new();
            XorIter::new(&bytes, n).decode_while(|t, v| {
                bulk.push((t, v.to_bits()));
                bulk.len() < stop
            });
            assert_eq!(bulk, want[..stop.max(1).min(want.len())]);
        }
    }

    #[test]
    fn regular_counter() {
        let s: Vec<(i64, f64)> = (0..120)
            .map(|i| (1_000 + i * 15_000, i as f64 * 3.0))
            .collect();
        roundtrip(&s);
    }

    #[test]
    fn special_values_survive_bit_exactly() {
        let stale = f64::from_bits(0x7ff0_0000_0000_0002);
        roundtrip(&[
            (0, 1.0),
            (10, f64::NAN),
            (20, stale),
            (30, f64::INFINITY),
            (40, f64::NEG_INFINITY),
            (50, -0.0),
            (60, f64::MIN_POSITIVE),
            (70, f64::MAX),
        ]);
    }

    #[test]
    fn jittered_and_huge_gaps() {
        let mut s = Vec::new();
        let mut t = -5_000_000i64;
        let mut x: u64 = 7;
        for i in 0..500 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let jitter = (x >> 40) as i64 % 7;
            t += match i % 50 {
                0 => 1 << 40,
                7 => 600_000,
                13 => 70_000,
                21 => 15_000 + 8192,
                22 => 15_000,
                31 => 15_000 + 65536,
                32 => 15_000,
                _ => 15_000 + jitter,
            };
            s.push((t, f64::from_bits(x)));
        }
        roundtrip(&s);
    }

    #[test]
    fn decoding_from_a_mark_yields_every_later_sample() {
        let mut x: u64 = 11;
        let mut t = 1_000i64;
        let mut samples = Vec::new();
        for i in 0..150 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            t += 15_000 + (x >> 60) as i64 + if i == 70 { 1 << 30 } else { 0 };
            let v = match i % 5 {
                0 => 1.0,
                1 => (x >> 11) as f64,
                2 => f64::from_bits(x),
                _ => i as f64 * 0.25,
            };
            samples.push((t, v));
        }
        let mut c = XorChunk::new();
        let bits = |s: &[(i64, f64)]| -> Vec<(i64, u64)> {
            s.iter().map(|&(t, v)| (t, v.to_bits())).collect()
        };
        let mut marked = 0;
        for (n, &(t, v)) in samples.iter().enumerate() {
            c.append(t, v);
            let count = n as u16 + 1;
            for &(from_t, _) in &samples[..=n] {
                let Some(m) = c.mark_before(from_t) else {
                    continue;
                };
                marked += 1;
                let i = usize::from(m.index);
                assert_eq!(m.t, samples[i - 1].0);
                assert!(m.t < from_t);
                // As a query copies it: from the byte of the mark's first bit.
                let (tail, from) = c.tail_from(&m);
                let mut got = Vec::new();
                XorIter::resume(tail, &from, count).decode_while(|t, v| {
                    got.push((t, v.to_bits()));
                    true
                });
                assert_eq!(got, bits(&samples[i..=n]), "{count} samples, mark at {i}");
            }
        }
        // Marks at 32, 64, 96 and 128, two kept at a time.
        assert_eq!(c.marks.map(|m| m.index), [96, 128]);
        // A gap that does not fit a kept mark's time leaves the chunk without new marks.
        let mut c = XorChunk::new();
        for i in 0..100 {
            c.append(i * 15_000 + if i > 40 { 1 << 40 } else { 0 }, 1.0);
        }
        assert_eq!(c.marks.map(|m| m.index), [0, 32]);
        assert!(marked > 1_000);
    }

    #[test]
    fn time_deltas_at_the_edges_of_each_width() {
        // Each field width's top positive and bottom negative delta of deltas, and one
        // past each.
        let mut s = vec![(0i64, 0.0), (15_000, 1.0)];
        let mut delta = 15_000i64;
        for w in [14u32, 17, 20] {
            let half = 1i64 << (w - 1);
            for dod in [half, -(half - 1), half + 1, -half, 0] {
                delta += dod;
                delta = delta.max(1);
                let (t, v) = s[s.len() - 1];
                s.push((t + delta, v + 0.5));
            }
        }
        roundtrip(&s);
    }

    #[test]
    fn truncated_bytes_stop_cleanly() {
        let mut c = XorChunk::new();
        for i in 0..50 {
            c.append(i * 1000, i as f64 * 0.1);
        }
        let bytes = c.bytes();
        let cut = &bytes[..bytes.len() / 2];
        let n = XorIter::new(cut, 50).count();
        assert!(n < 50);
        let all: Vec<(i64, u64)> = XorIter::new(bytes, 50)
            .map(|(t, v)| (t, v.to_bits()))
            .collect();
        assert_eq!(all.len(), 50);
        for len in 0..bytes.len() {
            let cut = &bytes[..len];
            let one: Vec<(i64, u64)> = XorIter::new(cut, 50)
                .map(|(t, v)| (t, v.to_bits()))
                .collect();
            let mut bulk = Vec::new();
            XorIter::new(cut, 50).decode_while(|t, v| {
                bulk.push((t, v.to_bits()));
                true
            });
            assert_eq!(bulk, one, "cut at {len} bytes");
            // What a cut chunk yields is the start of what the whole one does.
            assert_eq!(one, all[..one.len()], "cut at {len} bytes");
        }
    }
}
