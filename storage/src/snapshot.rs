//! The head snapshot written at a clean shutdown, so the next start loads the head in
//! seconds instead of replaying the whole WAL. Byte format in `docs/format/wal.md`.
//!
//! ```text
//!  close: commits held off ─> WAL synced ─> head chunk files synced
//!         ─> chunks_head/snapshot, series by series (fsync, rename)
//!         ─> WAL rotated (later writes land after what the snapshot covers)
//!  open:  checksum of the whole file ─> adopt the chunk files it names
//!         ─> restore series one record at a time ─> remove the snapshot
//!         ─> replay only the WAL segments after it
//! ```
//!
//! Both directions stream: neither the writer nor the reader holds more than one series
//! record, the distinct label strings and the chunk-file table, so a shutdown or a start
//! costs little memory beyond the head itself.
//!
//! A snapshot is used once: it is removed as soon as it is loaded, and by every WAL
//! checkpoint (which rewrites the log it refers to). Anything wrong with it — checksum,
//! an older format, a missing chunk file — means a full WAL replay, never an error.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{BufRead, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::labels::{Label, Labels};
use crate::varint::{put_str, put_uvarint, put_varint, Cursor};
use crate::wal::sync_dir;
use crate::{Error, SeriesRef};

const MAGIC: &[u8; 8] = b"STRSNP02";
const FILE: &str = "snapshot";
/// Magic and WAL segment.
const HEADER: u64 = 16;
/// Segment-table offset and checksum.
const TRAILER: u64 = 12;

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
    /// The open chunk: its sample count and XOR bytes.
    pub(crate) open: (u16, Vec<u8>),
    pub(crate) ooo: Vec<(i64, f64)>,
}

/// For every head chunk file a snapshot names: the newest sample and the end of the last
/// chunk in it.
pub(crate) type Segments = BTreeMap<u32, (i64, u64)>;

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Writes a snapshot into `dir`: aside, series by series, then fsynced and renamed by
/// [`Writer::finish`]. A writer dropped before `finish` leaves no snapshot.
pub(crate) struct Writer {
    dir: PathBuf,
    tmp: PathBuf,
    out: BufWriter<File>,
    crc: u32,
    written: u64,
    /// One series record, reused.
    rec: Vec<u8>,
    len: Vec<u8>,
    /// Every label string written so far and its symbol number.
    symbols: HashMap<Arc<str>, u64>,
    segments: Segments,
}

impl Writer {
    pub(crate) fn create(dir: &Path, wal_segment: u64) -> Result<Writer, Error> {
        let tmp = dir.join(format!("{FILE}.tmp"));
        let file = File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut w = Writer {
            dir: dir.to_owned(),
            tmp,
            out: BufWriter::with_capacity(1 << 20, file),
            crc: 0,
            written: 0,
            rec: Vec::new(),
            len: Vec::new(),
            symbols: HashMap::new(),
            segments: Segments::new(),
        };
        w.put(MAGIC)?;
        w.put(&wal_segment.to_le_bytes())?;
        Ok(w)
    }

    fn put(&mut self, b: &[u8]) -> Result<(), Error> {
        self.crc = crc32c::crc32c_append(self.crc, b);
        self.written += b.len() as u64;
        self.out.write_all(b).map_err(|e| Error::io(&self.tmp, e))
    }

    /// Appends one series.
    pub(crate) fn series(&mut self, s: &SnapSeries) -> Result<(), Error> {
        let mut b = std::mem::take(&mut self.rec);
        b.clear();
        put_uvarint(&mut b, u64::from(s.sref.0));
        put_uvarint(&mut b, s.labels.len() as u64);
        for l in &s.labels {
            for text in [&l.name, &l.value] {
                match self.symbols.get(text) {
                    Some(&k) => put_uvarint(&mut b, k + 1),
                    None => {
                        b.push(0);
                        put_str(&mut b, text);
                        let k = self.symbols.len() as u64;
                        self.symbols.insert(Arc::clone(text), k);
                    }
                }
            }
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
                    let e = self.segments.entry(*segment).or_insert((i64::MIN, 0));
                    e.0 = e.0.max(*max_t);
                    e.1 = e.1.max(u64::from(*start) + u64::from(*len));
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
        put_uvarint(&mut b, u64::from(s.open.0));
        put_uvarint(&mut b, s.open.1.len() as u64);
        b.extend_from_slice(&s.open.1);
        put_uvarint(&mut b, s.ooo.len() as u64);
        for &(t, v) in &s.ooo {
            put_varint(&mut b, t);
            b.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        let mut len = std::mem::take(&mut self.len);
        len.clear();
        put_uvarint(&mut len, b.len() as u64);
        let r = self.put(&len).and_then(|()| self.put(&b));
        self.rec = b;
        self.len = len;
        r
    }

    /// Ends the series, writes the chunk-file table and the checksum, syncs and renames
    /// the file into place.
    pub(crate) fn finish(mut self) -> Result<(), Error> {
        self.put(&[0])?;
        let table_at = self.written;
        let mut t = Vec::new();
        put_uvarint(&mut t, self.segments.len() as u64);
        for (&segment, &(max_t, used)) in &self.segments {
            put_uvarint(&mut t, u64::from(segment));
            put_varint(&mut t, max_t);
            put_uvarint(&mut t, used);
        }
        t.extend_from_slice(&table_at.to_le_bytes());
        self.put(&t)?;
        let crc = self.crc.to_le_bytes();
        self.out
            .write_all(&crc)
            .map_err(|e| Error::io(&self.tmp, e))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| Error::io(&self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&self.tmp, e))?;
        let p = path(&self.dir);
        fs::rename(&self.tmp, &p).map_err(|e| Error::io(&p, e))?;
        sync_dir(&self.dir)
    }
}

/// Reads a snapshot series by series, after [`Reader::open`] has checked the whole file.
pub(crate) struct Reader {
    path: PathBuf,
    input: BufReader<File>,
    wal_segment: u64,
    segments: Segments,
    /// Where the series records end (the terminating zero).
    records_end: u64,
    at: u64,
    symbols: Vec<Arc<str>>,
    rec: Vec<u8>,
}

impl Reader {
    /// Opens the snapshot in `dir` (`Ok(None)` when there is none), checks its checksum
    /// and reads its chunk-file table.
    pub(crate) fn open(dir: &Path) -> Result<Option<Reader>, Error> {
        let p = path(dir);
        let mut file = match File::open(&p) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(&p, e)),
        };
        let io = |e| Error::io(&p, e);
        let bad = |why: &str| Error::Corrupt(format!("{}: {why}", p.display()));
        let size = file.metadata().map_err(io)?.len();
        if size < HEADER + 1 + TRAILER {
            return Err(bad("too short"));
        }
        let mut header = [0u8; HEADER as usize];
        file.read_exact(&mut header).map_err(io)?;
        if &header[..8] != MAGIC {
            return Err(bad("not a snapshot of this version"));
        }
        // The whole file is checked before anything in it is used.
        let mut crc = crc32c::crc32c(&header);
        let mut left = size - 4 - HEADER;
        let mut buf = vec![0u8; 1 << 20];
        while left > 0 {
            let n = left.min(buf.len() as u64) as usize;
            file.read_exact(&mut buf[..n]).map_err(io)?;
            crc = crc32c::crc32c_append(crc, &buf[..n]);
            left -= n as u64;
        }
        let mut stored = [0u8; 4];
        file.read_exact(&mut stored).map_err(io)?;
        if crc != u32::from_le_bytes(stored) {
            return Err(bad("checksum mismatch"));
        }
        let mut at = [0u8; 8];
        file.seek(SeekFrom::Start(size - TRAILER)).map_err(io)?;
        file.read_exact(&mut at).map_err(io)?;
        let table_at = u64::from_le_bytes(at);
        if table_at < HEADER + 1 || table_at > size - TRAILER {
            return Err(bad("malformed"));
        }
        let mut table = vec![0u8; (size - TRAILER - table_at) as usize];
        file.seek(SeekFrom::Start(table_at)).map_err(io)?;
        file.read_exact(&mut table).map_err(io)?;
        let segments = parse_segments(&table).ok_or_else(|| bad("malformed"))?;
        file.seek(SeekFrom::Start(HEADER)).map_err(io)?;
        let w = &header[8..];
        Ok(Some(Reader {
            path: p.clone(),
            input: BufReader::with_capacity(1 << 20, file),
            wal_segment: u64::from_le_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]]),
            segments,
            records_end: table_at - 1,
            at: HEADER,
            symbols: Vec::new(),
            rec: Vec::new(),
        }))
    }

    /// The last WAL segment whose records the snapshot holds.
    pub(crate) fn wal_segment(&self) -> u64 {
        self.wal_segment
    }

    /// The head chunk files the snapshot's chunks lie in.
    pub(crate) fn segments(&self) -> &Segments {
        &self.segments
    }

    /// The next series, `Ok(None)` after the last.
    pub(crate) fn next_series(&mut self) -> Result<Option<SnapSeries>, Error> {
        let bad = || Error::Corrupt(format!("{}: malformed", self.path.display()));
        let len = read_uvarint(&mut self.input).map_err(|e| Error::io(&self.path, e))?;
        let Some((len, n)) = len else {
            return Err(bad());
        };
        self.at += n;
        if len == 0 {
            return if self.at == self.records_end + 1 {
                Ok(None)
            } else {
                Err(bad())
            };
        }
        if self.at + len > self.records_end {
            return Err(bad());
        }
        self.rec.resize(len as usize, 0);
        self.input
            .read_exact(&mut self.rec)
            .map_err(|e| Error::io(&self.path, e))?;
        self.at += len;
        parse_series(&self.rec, &mut self.symbols)
            .map(Some)
            .ok_or_else(bad)
    }
}

/// A uvarint read byte by byte and how many bytes it took; `None` when malformed.
fn read_uvarint(r: &mut impl BufRead) -> std::io::Result<Option<(u64, u64)>> {
    let mut v = 0u64;
    for i in 0..10u32 {
        let mut b = [0u8; 1];
        r.read_exact(&mut b)?;
        v |= u64::from(b[0] & 0x7f) << (7 * i);
        if b[0] < 0x80 {
            return Ok(Some((v, u64::from(i) + 1)));
        }
    }
    Ok(None)
}

fn parse_segments(b: &[u8]) -> Option<Segments> {
    let mut r = Cursor::new(b);
    let n = r.uvarint()?;
    let mut out = Segments::new();
    for _ in 0..n {
        let segment = u32::try_from(r.uvarint()?).ok()?;
        let max_t = r.varint()?;
        let used = r.uvarint()?;
        out.insert(segment, (max_t, used));
    }
    r.done().then_some(out)
}

fn parse_series(b: &[u8], symbols: &mut Vec<Arc<str>>) -> Option<SnapSeries> {
    let mut r = Cursor::new(b);
    let small = |v: u64| u32::try_from(v).ok();
    let short = |v: u64| u16::try_from(v).ok();
    let sref = SeriesRef(small(r.uvarint()?)?);
    let nl = r.uvarint()? as usize;
    let mut ls = Vec::with_capacity(nl.min(64));
    for _ in 0..nl {
        let mut pair: [Option<Arc<str>>; 2] = [None, None];
        for text in &mut pair {
            *text = Some(match r.uvarint()? {
                0 => {
                    let s: Arc<str> = Arc::from(r.string()?);
                    symbols.push(Arc::clone(&s));
                    s
                }
                k => Arc::clone(symbols.get(usize::try_from(k - 1).ok()?)?),
            });
        }
        let [name, value] = pair;
        ls.push(Label::new(name?, value?));
    }
    let last_t = r.varint()?;
    let last_v = r.f64()?.to_bits();
    let nc = r.uvarint()? as usize;
    let mut closed = Vec::with_capacity(nc.min(b.len()));
    for _ in 0..nc {
        closed.push(match r.bytes(1)?.first()? {
            0 => SnapChunk::Mapped {
                segment: small(r.uvarint()?)?,
                start: small(r.uvarint()?)?,
                len: short(r.uvarint()?)?,
                count: short(r.uvarint()?)?,
                min_t: r.varint()?,
                max_t: r.varint()?,
            },
            1 => {
                let count = short(r.uvarint()?)?;
                let min_t = r.varint()?;
                let max_t = r.varint()?;
                let len = r.uvarint()? as usize;
                SnapChunk::Mem {
                    count,
                    min_t,
                    max_t,
                    bytes: r.bytes(len)?.to_vec(),
                }
            }
            _ => return None,
        });
    }
    let open_count = short(r.uvarint()?)?;
    let open_len = r.uvarint()? as usize;
    let open = (open_count, r.bytes(open_len)?.to_vec());
    let k = r.uvarint()? as usize;
    let mut ooo = Vec::with_capacity(k.min(b.len()));
    for _ in 0..k {
        ooo.push((r.varint()?, r.f64()?));
    }
    r.done().then(|| SnapSeries {
        sref,
        labels: Labels::from_vec(ls),
        last_t,
        last_v,
        closed,
        open,
        ooo,
    })
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

    fn series(sref: u32, host: &str, open: (u16, Vec<u8>)) -> SnapSeries {
        SnapSeries {
            sref: SeriesRef(sref),
            labels: Labels::from_pairs([("__name__", "up"), ("instance", host), ("job", "a")]),
            last_t: 50,
            last_v: 1.5f64.to_bits(),
            closed: vec![
                SnapChunk::Mapped {
                    segment: 2,
                    start: 100 * sref,
                    len: 40,
                    count: 120,
                    min_t: 0,
                    max_t: 30 + i64::from(sref),
                },
                SnapChunk::Mem {
                    count: 1,
                    min_t: 31,
                    max_t: 31,
                    bytes: vec![1, 2, 3],
                },
            ],
            open,
            ooo: vec![(-5, 2.5)],
        }
    }

    fn write_all(dir: &Path, all: &[SnapSeries]) -> Result<(), Error> {
        let mut w = Writer::create(dir, 7)?;
        for s in all {
            w.series(s)?;
        }
        w.finish()
    }

    fn read_all(dir: &Path) -> Result<Option<(u64, Segments, Vec<SnapSeries>)>, Error> {
        let Some(mut r) = Reader::open(dir)? else {
            return Ok(None);
        };
        let mut out = Vec::new();
        while let Some(s) = r.next_series()? {
            out.push(s);
        }
        Ok(Some((r.wal_segment(), r.segments().clone(), out)))
    }

    #[test]
    fn round_trip_and_corruption() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let all = vec![
            series(3, "a:9100", (2, vec![9, 8, 7])),
            series(4, "b:9100", (0, Vec::new())),
            series(5, "a:9100", (1, vec![1])),
        ];
        write_all(tmp.path(), &all)?;
        let (wal_segment, segments, back) =
            read_all(tmp.path())?.unwrap_or_else(|| panic!("no snapshot"));
        assert_eq!(wal_segment, 7);
        assert_eq!(back, all);
        // Label strings are written once: the third series shares the first's.
        let instance = |s: &SnapSeries| Arc::clone(&s.labels.iter().nth(1).unwrap().value);
        assert!(Arc::ptr_eq(&instance(&back[0]), &instance(&back[2])));
        assert_eq!(segments.get(&2), Some(&(35, 540)));
        let p = path(tmp.path());
        let good = fs::read(&p).map_err(|e| Error::io(&p, e))?;
        for at in [3, 20, good.len() / 2, good.len() - 13, good.len() - 1] {
            let mut bytes = good.clone();
            bytes[at] ^= 1;
            fs::write(&p, &bytes).map_err(|e| Error::io(&p, e))?;
            assert!(
                read_all(tmp.path()).is_err(),
                "flipped byte {at} went unnoticed"
            );
        }
        fs::write(&p, &good[..good.len() - 1]).map_err(|e| Error::io(&p, e))?;
        assert!(read_all(tmp.path()).is_err());
        remove(tmp.path())?;
        assert!(read_all(tmp.path())?.is_none());
        Ok(())
    }

    #[test]
    fn an_empty_head_round_trips() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        write_all(tmp.path(), &[])?;
        let back = read_all(tmp.path())?.unwrap_or_else(|| panic!("no snapshot"));
        assert!(back.1.is_empty() && back.2.is_empty());
        Ok(())
    }
}
