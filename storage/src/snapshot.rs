//! The head snapshot written at a clean shutdown, so the next start loads the head in
//! seconds instead of replaying the whole WAL. Byte format in `docs/format/wal.md`.
//!
//! ```text
//!  close: commits held off ─> WAL synced ─> head chunk files synced
//!         ─> chunks_head/snapshot (series, chunk references, open chunks; fsync, rename)
//!         ─> WAL rotated (later writes land after what the snapshot covers)
//!  open:  snapshot valid? ─> adopt the chunk files it names ─> restore series
//!         ─> remove the snapshot ─> replay only the WAL segments after it
//! ```
//!
//! A snapshot is used once: it is removed as soon as it is loaded, and by every WAL
//! checkpoint (which rewrites the log it refers to). Anything wrong with it — checksum,
//! a missing chunk file — means a full WAL replay, never an error.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::labels::{Label, Labels};
use crate::varint::{put_str, put_uvarint, put_varint, Cursor};
use crate::wal::sync_dir;
use crate::{Error, SeriesRef};

const MAGIC: &[u8; 8] = b"STRSNP01";
const FILE: &str = "snapshot";

/// A full chunk as the snapshot records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SnapChunk {
    /// In head chunk file `segment`, at `start..start + len`.
    Mapped {
        segment: u32,
        start: u32,
        len: u16,
        count: u16,
        min_t: i64,
        max_t: i64,
    },
    /// Kept on the heap (a chunk file could not be written): its bytes.
    Mem {
        count: u16,
        min_t: i64,
        max_t: i64,
        bytes: Vec<u8>,
    },
}

/// One series as the snapshot records it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnapSeries {
    pub(crate) sref: SeriesRef,
    pub(crate) labels: Labels,
    pub(crate) last_t: i64,
    pub(crate) last_v: u64,
    pub(crate) closed: Vec<SnapChunk>,
    /// The open chunk's samples.
    pub(crate) open: Vec<(i64, f64)>,
    pub(crate) ooo: Vec<(i64, f64)>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    /// The last WAL segment whose records the snapshot holds.
    pub(crate) wal_segment: u64,
    pub(crate) series: Vec<SnapSeries>,
}

impl Snapshot {
    /// For every head chunk file the snapshot names: the newest sample and the end of the
    /// last chunk in it.
    pub(crate) fn segments(&self) -> BTreeMap<u32, (i64, u64)> {
        let mut out: BTreeMap<u32, (i64, u64)> = BTreeMap::new();
        for s in &self.series {
            for c in &s.closed {
                if let SnapChunk::Mapped {
                    segment,
                    start,
                    len,
                    max_t,
                    ..
                } = c
                {
                    let e = out.entry(*segment).or_insert((i64::MIN, 0));
                    e.0 = e.0.max(*max_t);
                    e.1 = e.1.max(u64::from(*start) + u64::from(*len));
                }
            }
        }
        out
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes the snapshot into `dir` (aside, fsynced, renamed).
pub(crate) fn write(dir: &Path, snap: &Snapshot) -> Result<(), Error> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&snap.wal_segment.to_le_bytes());
    put_uvarint(&mut b, snap.series.len() as u64);
    for s in &snap.series {
        put_uvarint(&mut b, u64::from(s.sref.0));
        put_uvarint(&mut b, s.labels.len() as u64);
        for l in &s.labels {
            put_str(&mut b, &l.name);
            put_str(&mut b, &l.value);
        }
        put_varint(&mut b, s.last_t);
        b.extend_from_slice(&s.last_v.to_le_bytes());
        put_uvarint(&mut b, s.closed.len() as u64);
        for c in &s.closed {
            match c {
                SnapChunk::Mapped {
                    segment,
                    start,
                    len,
                    count,
                    min_t,
                    max_t,
                } => {
                    b.push(0);
                    put_uvarint(&mut b, u64::from(*segment));
                    put_uvarint(&mut b, u64::from(*start));
                    put_uvarint(&mut b, u64::from(*len));
                    put_uvarint(&mut b, u64::from(*count));
                    put_varint(&mut b, *min_t);
                    put_varint(&mut b, *max_t);
                }
                SnapChunk::Mem {
                    count,
                    min_t,
                    max_t,
                    bytes,
                } => {
                    b.push(1);
                    put_uvarint(&mut b, u64::from(*count));
                    put_varint(&mut b, *min_t);
                    put_varint(&mut b, *max_t);
                    put_uvarint(&mut b, bytes.len() as u64);
                    b.extend_from_slice(bytes);
                }
            }
        }
        for list in [&s.open, &s.ooo] {
            put_uvarint(&mut b, list.len() as u64);
            for &(t, v) in list.iter() {
                put_varint(&mut b, t);
                b.extend_from_slice(&v.to_bits().to_le_bytes());
            }
        }
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let tmp = dir.join(format!("{FILE}.tmp"));
    let mut f = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
    f.write_all(&b).map_err(|e| Error::io(&tmp, e))?;
    f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    let p = path(dir);
    fs::rename(&tmp, &p).map_err(|e| Error::io(&p, e))?;
    sync_dir(dir)
}

/// Reads the snapshot in `dir`: `Ok(None)` when there is none.
pub(crate) fn read(dir: &Path) -> Result<Option<Snapshot>, Error> {
    let p = path(dir);
    let bytes = match fs::read(&p) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(&p, e)),
    };
    let bad = |why: &str| Error::Corrupt(format!("{}: {why}", p.display()));
    if bytes.len() < MAGIC.len() + 12 || &bytes[..MAGIC.len()] != MAGIC {
        return Err(bad("bad magic"));
    }
    let (body, crc) = bytes.split_at(bytes.len() - 4);
    if crc32c::crc32c(body) != u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]) {
        return Err(bad("checksum mismatch"));
    }
    let mut r = Cursor::new(&body[MAGIC.len()..]);
    let m = || bad("malformed");
    let w = r.bytes(8).ok_or_else(m)?;
    let wal_segment = u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]);
    let n = r.uvarint().ok_or_else(m)? as usize;
    let mut series = Vec::with_capacity(n.min(body.len()));
    let small = |v: u64| -> Result<u32, Error> { u32::try_from(v).map_err(|_| m()) };
    for _ in 0..n {
        let sref = SeriesRef(small(r.uvarint().ok_or_else(m)?)?);
        let nl = r.uvarint().ok_or_else(m)? as usize;
        let mut ls = Vec::with_capacity(nl.min(64));
        for _ in 0..nl {
            let name = r.string().ok_or_else(m)?;
            let value = r.string().ok_or_else(m)?;
            ls.push(Label::new(name, value));
        }
        let last_t = r.varint().ok_or_else(m)?;
        let lv = r.bytes(8).ok_or_else(m)?;
        let last_v = u64::from_le_bytes([lv[0], lv[1], lv[2], lv[3], lv[4], lv[5], lv[6], lv[7]]);
        let nc = r.uvarint().ok_or_else(m)? as usize;
        let mut closed = Vec::with_capacity(nc.min(body.len()));
        for _ in 0..nc {
            let kind = *r.bytes(1).ok_or_else(m)?.first().ok_or_else(m)?;
            closed.push(match kind {
                0 => SnapChunk::Mapped {
                    segment: small(r.uvarint().ok_or_else(m)?)?,
                    start: small(r.uvarint().ok_or_else(m)?)?,
                    len: u16::try_from(r.uvarint().ok_or_else(m)?).map_err(|_| m())?,
                    count: u16::try_from(r.uvarint().ok_or_else(m)?).map_err(|_| m())?,
                    min_t: r.varint().ok_or_else(m)?,
                    max_t: r.varint().ok_or_else(m)?,
                },
                1 => {
                    let count = u16::try_from(r.uvarint().ok_or_else(m)?).map_err(|_| m())?;
                    let min_t = r.varint().ok_or_else(m)?;
                    let max_t = r.varint().ok_or_else(m)?;
                    let len = r.uvarint().ok_or_else(m)? as usize;
                    SnapChunk::Mem {
                        count,
                        min_t,
                        max_t,
                        bytes: r.bytes(len).ok_or_else(m)?.to_vec(),
                    }
                }
                _ => return Err(m()),
            });
        }
        let mut lists: [Vec<(i64, f64)>; 2] = [Vec::new(), Vec::new()];
        for list in &mut lists {
            let k = r.uvarint().ok_or_else(m)? as usize;
            list.reserve(k.min(body.len()));
            for _ in 0..k {
                let t = r.varint().ok_or_else(m)?;
                let v = r.f64().ok_or_else(m)?;
                list.push((t, v));
            }
        }
        let [open, ooo] = lists;
        series.push(SnapSeries {
            sref,
            labels: Labels::from_vec(ls),
            last_t,
            last_v,
            closed,
            open,
            ooo,
        });
    }
    if !r.done() {
        return Err(m());
    }
    Ok(Some(Snapshot {
        wal_segment,
        series,
    }))
}

/// Removes the snapshot, if there is one.
pub(crate) fn remove(dir: &Path) -> Result<(), Error> {
    let p = path(dir);
    match fs::remove_file(&p) {
        Ok(()) => sync_dir(dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(&p, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let snap = Snapshot {
            wal_segment: 7,
            series: vec![SnapSeries {
                sref: SeriesRef(3),
                labels: Labels::from_pairs([("__name__", "up"), ("job", "a")]),
                last_t: 50,
                last_v: 1.5f64.to_bits(),
                closed: vec![
                    SnapChunk::Mapped {
                        segment: 2,
                        start: 100,
                        len: 40,
                        count: 120,
                        min_t: 0,
                        max_t: 30,
                    },
                    SnapChunk::Mem {
                        count: 1,
                        min_t: 31,
                        max_t: 31,
                        bytes: vec![1, 2, 3],
                    },
                ],
                open: vec![(40, 1.0), (50, 1.5)],
                ooo: vec![(-5, f64::from_bits(crate::STALE_NAN_BITS))],
            }],
        };
        write(tmp.path(), &snap)?;
        let back = read(tmp.path())?.unwrap_or_else(|| panic!("no snapshot"));
        assert_eq!(back.wal_segment, 7);
        assert_eq!(back.series[0].closed, snap.series[0].closed);
        assert_eq!(back.series[0].ooo[0].1.to_bits(), crate::STALE_NAN_BITS);
        assert_eq!(back.segments().get(&2), Some(&(30, 140)));
        let p = path(tmp.path());
        let mut bytes = fs::read(&p).map_err(|e| Error::io(&p, e))?;
        bytes[20] ^= 1;
        fs::write(&p, &bytes).map_err(|e| Error::io(&p, e))?;
        assert!(read(tmp.path()).is_err());
        remove(tmp.path())?;
        assert!(read(tmp.path())?.is_none());
        Ok(())
    }
}
