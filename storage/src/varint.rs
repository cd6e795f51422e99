//! LEB128 varints and a cursor over encoded bytes, shared by the WAL and block formats.
//! Readers return `None` on truncated or malformed input; they never panic.

pub(crate) fn put_uvarint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

pub(crate) fn put_varint(buf: &mut Vec<u8>, v: i64) {
    put_uvarint(buf, ((v << 1) ^ (v >> 63)) as u64);
}

pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
    put_uvarint(buf, s.len() as u64);
    buf.extend_from_slice(s.as_bytes());
}

/// `N` bytes of `buf` from `at`, zero past its end: a fixed-size load for bit-packed
/// fields, which may start in the last few bytes.
#[inline(always)]
pub(crate) fn bytes_at<const N: usize>(buf: &[u8], at: usize) -> [u8; N] {
    match buf.get(at..).and_then(|b| b.first_chunk::<N>()) {
        Some(w) => *w,
        None => {
            let mut w = [0u8; N];
            let tail = buf.get(at..).unwrap_or(&[]);
            let n = tail.len().min(N);
            w[..n].copy_from_slice(&tail[..n]);
            w
        }
    }
}

#[derive(Clone)]
pub(crate) struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    /// One byte, the usual case, without the loop.
    #[inline]
    pub(crate) fn uvarint(&mut self) -> Option<u64> {
        let &b = self.buf.get(self.pos)?;
        if b < 0x80 {
            self.pos += 1;
            return Some(u64::from(b));
        }
        self.uvarint_long()
    }

    fn uvarint_long(&mut self) -> Option<u64> {
        let mut v = 0u64;
        for i in 0..10 {
            let b = *self.buf.get(self.pos)?;
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Some(v);
            }
        }
        None
    }

    #[inline]
    pub(crate) fn varint(&mut self) -> Option<i64> {
        let u = self.uvarint()?;
        Some(((u >> 1) as i64) ^ -((u & 1) as i64))
    }

    pub(crate) fn bytes(&mut self, n: usize) -> Option<&'a [u8]> {
        let end = self.pos.checked_add(n)?;
        let s = self.buf.get(self.pos..end)?;
        self.pos = end;
        Some(s)
    }

    pub(crate) fn string(&mut self) -> Option<String> {
        let n = usize::try_from(self.uvarint()?).ok()?;
        let b = self.bytes(n)?;
        String::from_utf8(b.to_vec()).ok()
    }

    pub(crate) fn f64(&mut self) -> Option<f64> {
        let b = self.bytes(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(f64::from_bits(u64::from_le_bytes(a)))
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = self.buf.get(self.pos..).unwrap_or(&[]);
        self.pos = self.buf.len();
        rest
    }

    pub(crate) fn done(&self) -> bool {
        self.pos == self.buf.len()
    }
}
