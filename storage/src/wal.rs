//! The write-ahead log: every accepted series and sample is written here, and fsynced per
//! the configured policy, before the write is acknowledged. The byte format is specified in
//! `docs/format/wal.md`.
//!
//! ```text
//!  commit ──> encode records ──> one pwrite(2) into the zeros ahead ──> fdatasync ──> ack
//!  open   ──> read segments in order, 4 MiB at a time ──> decode ──> head
//!                  (torn tail: truncate, report; trailing zeros: cut, silently)
//! ```
//!
//! The WAL never panics on what it reads back: a record that fails its length or CRC32C
//! check ends replay at the last good record; the rest of that segment and every later
//! segment are removed, and the loss is reported.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::labels::{Label, Labels};
use crate::varint::{put_str, put_uvarint, put_varint, Cursor};
use crate::{Error, SeriesRef};

const MAGIC: &[u8; 8] = b"STRWAL01";
const HEADER_LEN: usize = 9; // kind u8, len u32, crc u32
const KIND_SERIES: u8 = 1;
const KIND_SAMPLES: u8 = 2;
const KIND_DELETES: u8 = 3;
/// Samples a checkpoint copied from older segments: replayed like samples, but not new.
const KIND_CHECKPOINT_SAMPLES: u8 = 4;
/// Samples in the compact layout (see [`encode_samples`]); written uncompressed.
const KIND_SAMPLES_COMPACT: u8 = 5;
/// Checkpoint samples in the compact layout.
const KIND_CHECKPOINT_SAMPLES_COMPACT: u8 = 6;
/// File in the WAL directory naming the first segment replay needs (the newest
/// checkpoint); older segments are kept only while a reader holds them.
const START_FILE: &str = "start";
const FLAG_SNAPPY: u8 = 0x80;
/// Payloads larger than this are snappy-compressed.
const COMPRESS_MIN: usize = 4096;
/// Samples per checkpoint record: small enough that rewriting the head never needs a
/// large buffer (the writer keeps its buffers for reuse).
const CHECKPOINT_RECORD: usize = 65_536;
/// No record may claim to be larger than this; a larger length is corruption.
const MAX_RECORD: usize = 256 << 20;
/// The segment being written is extended with zeros this far at a time, ahead of its
/// records. A write inside the zeroed part leaves the file's size alone, so the
/// fdatasync that follows it writes the data only, not the inode as well: one disk write
/// where a growing file takes two.
const ZEROED_STEP: u64 = 1 << 20;
/// What a record's `kind` byte is in the zeros after the last record: no record has it.
const KIND_NONE: u8 = 0;

/// A decoded WAL record.
#[derive(Debug, PartialEq)]
pub enum Record {
    /// Series created, with the references later records use.
    Series(Vec<(SeriesRef, Labels)>),
    /// Samples committed.
    Samples(Vec<(SeriesRef, i64, f64)>),
    /// Samples of a series in `[mint, maxt]` deleted.
    Deletes(Vec<(SeriesRef, i64, i64)>),
    /// Samples a checkpoint copied from the segments it replaced; they were logged before
    /// as [`Record::Samples`].
    CheckpointSamples(Vec<(SeriesRef, i64, f64)>),
}

/// What replay found.
#[derive(Debug, Default, Clone)]
pub struct ReplayReport {
    pub segments: usize,
    pub records: u64,
    pub series: u64,
    pub samples: u64,
    /// Set when replay stopped early: which file, at which offset, and why.
    pub corruption: Option<String>,
    /// Bytes removed from the WAL by the repair.
    pub dropped_bytes: u64,
    /// The newest sample timestamp of each segment replayed (`i64::MIN` for none).
    pub(crate) segment_max_t: Vec<(u64, i64)>,
    /// Samples passed over at replay, being in blocks already.
    pub(crate) skipped_samples: u64,
    /// Series loaded from the head snapshot of a clean shutdown (the WAL segments it
    /// covers were not replayed); 0 when there was none.
    pub snapshot_series: u64,
}

fn segment_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("{index:08}"))
}

/// The series records replay reads before segment `index` when the start file names it:
/// laid out as a segment, written by [`WalWriter::drop_before`].
fn checkpoint_path(dir: &Path, index: u64) -> PathBuf {
    dir.join(format!("checkpoint.{index:08}"))
}

/// Removes every series checkpoint file but the one for segment `keep`.
fn remove_checkpoints(dir: &Path, keep: Option<u64>) -> Result<(), Error> {
    let keep = keep.map(|k| checkpoint_path(dir, k));
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let named = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("checkpoint."));
        if named && Some(&path) != keep.as_ref() {
            fs::remove_file(&path).map_err(|e| Error::io(&path, e))?;
        }
    }
    Ok(())
}

/// Segment indexes present in `dir`, ascending.
fn list_segments(dir: &Path) -> Result<Vec<u64>, Error> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if let Some(i) = name.to_str().and_then(|s| s.parse::<u64>().ok()) {
            out.push(i);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// Replays every segment in `dir` through `apply`, repairing a torn or corrupt tail.
/// Returns the report and the index the next segment should use.
pub(crate) fn replay(
    dir: &Path,
    from_segment: u64,
    mut apply: impl FnMut(Record),
) -> Result<(ReplayReport, u64), Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let all = list_segments(dir)?;
    let next = all.last().map_or(0, |i| i + 1);
    let start = read_start(dir);
    let mut report = ReplayReport::default();
    let mut window = Window::default();
    // Series whose records were in segments dropped since: needed unless a head snapshot
    // from later on holds them.
    let checkpoint = checkpoint_path(dir, start.index);
    if from_segment <= start.index && checkpoint.exists() {
        let mut file = File::open(&checkpoint).map_err(|e| Error::io(&checkpoint, e))?;
        let (good_len, end) = replay_segment(&mut file, &mut window, &mut apply, &mut report)
            .map_err(|e| Error::io(&checkpoint, e))?;
        if let SegmentEnd::Damaged(problem) = end {
            // Written whole and synced before the start file named it: damage here is
            // the disk's. The series it lost take their samples with them.
            report.corruption = Some(format!(
                "{}: offset {good_len}: {problem}",
                checkpoint.display()
            ));
        }
    }
    let from_segment = from_segment.max(start.index);
    let segments: Vec<u64> = all.into_iter().filter(|&i| i >= from_segment).collect();
    for (pos, &index) in segments.iter().enumerate() {
        let path = segment_path(dir, index);
        let mut file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        let size = file.metadata().map_err(|e| Error::io(&path, e))?.len();
        report.segments += 1;
        let floor = start.floor(index);
        let mut max_t = i64::MIN;
        let mut skipped = 0u64;
        let mut apply_above_floor = |mut rec: Record| {
            if let Record::Samples(list) | Record::CheckpointSamples(list) = &mut rec {
                if let Some(m) = list.iter().map(|s| s.1).max() {
                    max_t = max_t.max(m);
                }
                if floor > i64::MIN {
                    let before = list.len();
                    list.retain(|s| s.1 >= floor);
                    skipped += (before - list.len()) as u64;
                }
            }
            apply(rec);
        };
        let (good_len, end) =
            replay_segment(&mut file, &mut window, &mut apply_above_floor, &mut report)
                .map_err(|e| Error::io(&path, e))?;
        report.skipped_samples += skipped;
        report.segment_max_t.push((index, max_t));
        if end == SegmentEnd::Zeros {
            // A segment the writer left with zeros ahead of its records (a crash, or a
            // stop without a head snapshot): cut to its records, as a closed segment is,
            // so that readers find its end where its file ends.
            truncate(&path, good_len)?;
        }
        if let SegmentEnd::Damaged(problem) = end {
            report.corruption = Some(format!("{}: offset {good_len}: {problem}", path.display()));
            report.dropped_bytes += size.saturating_sub(good_len);
            truncate(&path, good_len)?;
            for &later in &segments[pos + 1..] {
                let p = segment_path(dir, later);
                report.dropped_bytes += fs::metadata(&p).map(|m| m.len()).unwrap_or(0);
                fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
            break;
        }
    }
    Ok((report, next))
}

/// What the start file says: the first segment replay needs and, line by line after it,
/// floors — `(boundary, floor)`: samples older than `floor` in segments before
/// `boundary` are in blocks already, and replay passes over them.
#[derive(Debug, Default, Clone, PartialEq)]
struct Start {
    index: u64,
    floors: Vec<(u64, i64)>,
}

impl Start {
    /// The floor for samples of `segment`: the highest of the floors whose boundary lies
    /// after it (`i64::MIN`: none).
    fn floor(&self, segment: u64) -> i64 {
        self.floors
            .iter()
            .filter(|f| f.0 > segment)
            .map(|f| f.1)
            .max()
            .unwrap_or(i64::MIN)
    }
}

/// The start file (a start at 0 without one; lines that do not parse are ignored, the
/// floors being an optimisation only — see [`Start`]).
fn read_start(dir: &Path) -> Start {
    let text = fs::read_to_string(dir.join(START_FILE)).unwrap_or_default();
    let mut lines = text.lines();
    let index = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    let floors = lines
        .filter_map(|l| {
            let (b, f) = l.trim().split_once(' ')?;
            Some((b.parse().ok()?, f.parse().ok()?))
        })
        .collect();
    Start { index, floors }
}

/// Replaces the start file, atomically.
fn write_start(dir: &Path, start: &Start) -> Result<(), Error> {
    let tmp = dir.join("start.tmp");
    let mut text = format!("{}\n", start.index);
    for (b, f) in &start.floors {
        text.push_str(&format!("{b} {f}\n"));
    }
    replace_file(dir, &tmp, &dir.join(START_FILE), text.as_bytes())
}

/// Puts `bytes` at `dst` atomically: written to `tmp` and synced, renamed, the directory
/// synced.
fn replace_file(dir: &Path, tmp: &Path, dst: &Path, bytes: &[u8]) -> Result<(), Error> {
    let mut f = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| Error::io(tmp, e))?;
    fs::rename(tmp, dst).map_err(|e| Error::io(dst, e))?;
    sync_dir(dir)
}

fn truncate(path: &Path, len: u64) -> Result<(), Error> {
    let f = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    f.set_len(len).map_err(|e| Error::io(path, e))?;
    f.sync_all().map_err(|e| Error::io(path, e))
}

/// Replays one segment's bytes. Returns the length of the good prefix and, if replay
/// stopped before the end, why.
/// The part of a segment read but not yet replayed: segments are read a few MiB at a
/// time, never whole.
#[derive(Default)]
struct Window {
    buf: Vec<u8>,
    /// Where the unread part of `buf` starts.
    start: usize,
}

/// How much a window reads at once.
const WINDOW: usize = 4 << 20;

impl Window {
    fn unread(&self) -> &[u8] {
        &self.buf[self.start..]
    }

    /// Reads from `r` until at least `want` bytes are unread or the input ends.
    fn fill(&mut self, r: &mut impl Read, want: usize) -> io::Result<()> {
        if self.buf.len() - self.start >= want {
            return Ok(());
        }
        self.buf.drain(..self.start);
        self.start = 0;
        let mut filled = self.buf.len();
        self.buf.resize(want.max(WINDOW), 0);
        let mut result = Ok(());
        while filled < want {
            match r.read(&mut self.buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.buf.truncate(filled);
        result
    }
}

/// How a segment's records end.
#[derive(Debug, PartialEq)]
enum SegmentEnd {
    /// At the end of the file.
    Clean,
    /// Where the zeros a writer put ahead of its records begin: nothing follows.
    Zeros,
    /// At a damaged or torn record, for this reason.
    Damaged(String),
}

/// Replays one segment read from `r`; returns how many bytes of it were good and how its
/// records end.
fn replay_segment(
    r: &mut impl Read,
    window: &mut Window,
    apply: &mut impl FnMut(Record),
    report: &mut ReplayReport,
) -> io::Result<(u64, SegmentEnd)> {
    window.buf.clear();
    window.start = 0;
    window.fill(r, MAGIC.len())?;
    if window.unread().len() < MAGIC.len() {
        return Ok((0, SegmentEnd::Damaged("segment header is torn".into())));
    }
    if &window.unread()[..MAGIC.len()] != MAGIC {
        return Ok((
            0,
            SegmentEnd::Damaged("segment header magic does not match".into()),
        ));
    }
    window.start += MAGIC.len();
    let mut off = MAGIC.len() as u64;
    let mut scratch = Vec::new();
    loop {
        window.fill(r, HEADER_LEN)?;
        let head = window.unread();
        if head.is_empty() {
            return Ok((off, SegmentEnd::Clean));
        }
        if head[0] == KIND_NONE {
            // The zeroed space after the last record, if zeros are all there is: a write
            // torn by a crash can leave a record's later pages on disk without its first.
            return Ok(if rest_is_zero(r, window)? {
                (off, SegmentEnd::Zeros)
            } else {
                (
                    off,
                    SegmentEnd::Damaged("bytes after the end of the records".into()),
                )
            });
        }
        if head.len() >= HEADER_LEN {
            let len = u32::from_le_bytes([head[1], head[2], head[3], head[4]]) as usize;
            if len <= MAX_RECORD {
                window.fill(r, HEADER_LEN + len)?;
            }
        }
        match read_record(window.unread(), &mut scratch) {
            Ok((rec, used)) => {
                report.records += 1;
                match &rec {
                    Record::Series(s) => report.series += s.len() as u64,
                    Record::Samples(s) | Record::CheckpointSamples(s) => {
                        report.samples += s.len() as u64
                    }
                    Record::Deletes(_) => {}
                }
                apply(rec);
                window.start += used;
                off += used as u64;
            }
            Err(why) => return Ok((off, SegmentEnd::Damaged(why))),
        }
    }
}

/// Whether every byte left in `window` and `r` is zero.
fn rest_is_zero(r: &mut impl Read, window: &mut Window) -> io::Result<bool> {
    loop {
        if window.unread().iter().any(|&b| b != 0) {
            return Ok(false);
        }
        window.start = window.buf.len();
        window.fill(r, 1)?;
        if window.unread().is_empty() {
            return Ok(true);
        }
    }
}

/// Decodes the record at the start of `buf`; returns it and the bytes it used.
fn read_record(buf: &[u8], scratch: &mut Vec<u8>) -> Result<(Record, usize), String> {
    if buf.len() < HEADER_LEN {
        return Err("record header is torn".into());
    }
    let kind = buf[0];
    let len = u32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
    let crc = u32::from_le_bytes([buf[5], buf[6], buf[7], buf[8]]);
    if len > MAX_RECORD {
        return Err(format!("record length {len} is implausible"));
    }
    let end = HEADER_LEN + len;
    if buf.len() < end {
        return Err(format!(
            "record of {len} bytes is torn ({} present)",
            buf.len() - HEADER_LEN
        ));
    }
    let payload = &buf[HEADER_LEN..end];
    let want = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    if want != crc {
        return Err("record checksum mismatch".into());
    }
    let body: &[u8] = if kind & FLAG_SNAPPY != 0 {
        let n = snap::raw::decompress_len(payload).map_err(|e| e.to_string())?;
        if n > MAX_RECORD {
            return Err(format!("record decompresses to {n} bytes"));
        }
        scratch.resize(n, 0);
        snap::raw::Decoder::new()
            .decompress(payload, scratch)
            .map_err(|e| e.to_string())?;
        scratch
    } else {
        payload
    };
    let rec = match kind & !FLAG_SNAPPY {
        KIND_SERIES => Record::Series(decode_series(body).ok_or("malformed series record")?),
        KIND_SAMPLES => Record::Samples(decode_samples(body).ok_or("malformed samples record")?),
        KIND_CHECKPOINT_SAMPLES => Record::CheckpointSamples(
            decode_samples(body).ok_or("malformed checkpoint samples record")?,
        ),
        KIND_SAMPLES_COMPACT => {
            Record::Samples(decode_compact_samples(body).ok_or("malformed samples record")?)
        }
        KIND_CHECKPOINT_SAMPLES_COMPACT => Record::CheckpointSamples(
            decode_compact_samples(body).ok_or("malformed checkpoint samples record")?,
        ),
        KIND_DELETES => Record::Deletes(decode_deletes(body).ok_or("malformed deletes record")?),
        k => return Err(format!("unknown record kind {k}")),
    };
    Ok((rec, end))
}

fn decode_series(body: &[u8]) -> Option<Vec<(SeriesRef, Labels)>> {
    let mut c = Cursor::new(body);
    let n = c.uvarint()? as usize;
    let mut out = Vec::with_capacity(n.min(body.len()));
    for _ in 0..n {
        let r = SeriesRef(u32::try_from(c.uvarint()?).ok()?);
        let nl = c.uvarint()? as usize;
        let mut ls = Vec::with_capacity(nl.min(body.len()));
        for _ in 0..nl {
            let name = c.string()?;
            let value = c.string()?;
            ls.push(Label::new(name, value));
        }
        out.push((r, Labels::from_vec(ls)));
    }
    c.done().then_some(out)
}

fn decode_deletes(body: &[u8]) -> Option<Vec<(SeriesRef, i64, i64)>> {
    let mut c = Cursor::new(body);
    let n = c.uvarint()? as usize;
    let mut out = Vec::with_capacity(n.min(body.len()));
    for _ in 0..n {
        let r = SeriesRef(u32::try_from(c.uvarint()?).ok()?);
        out.push((r, c.varint()?, c.varint()?));
    }
    c.done().then_some(out)
}

/// A series record's payload.
fn encode_series(body: &mut Vec<u8>, series: &[(SeriesRef, &Labels)]) {
    put_uvarint(body, series.len() as u64);
    for (r, ls) in series {
        put_uvarint(body, r.0 as u64);
        put_uvarint(body, ls.len() as u64);
        for l in ls.iter() {
            put_str(body, &l.name);
            put_str(body, &l.value);
        }
    }
}

/// The compact samples layout: per sample, one uvarint holding the zig-zag difference to
/// the previous sample's reference (shifted left by 4) and the number of bytes the value
/// takes (low 4 bits), then the zig-zag difference to the previous timestamp, then the
/// value's big-endian bytes up to its last non-zero one. Counters of whole numbers and
/// most constants take 1 to 4 value bytes instead of 8, and nothing needs compressing.
fn encode_samples(body: &mut Vec<u8>, samples: &[(SeriesRef, i64, f64)]) {
    put_uvarint(body, samples.len() as u64);
    body.reserve(samples.len() * 12);
    let (mut prev_r, mut prev_t) = (0i64, 0i64);
    for &(r, t, v) in samples {
        let bits = v.to_bits();
        let len = 8 - (bits.trailing_zeros() / 8) as usize;
        let dr = i64::from(r.0) - prev_r;
        let zr = ((dr << 1) ^ (dr >> 63)) as u64;
        put_uvarint(body, (zr << 4) | len as u64);
        put_varint(body, t.wrapping_sub(prev_t));
        body.extend_from_slice(&bits.to_be_bytes()[..len]);
        prev_r = i64::from(r.0);
        prev_t = t;
    }
}

fn decode_compact_samples(body: &[u8]) -> Option<Vec<(SeriesRef, i64, f64)>> {
    let mut c = Cursor::new(body);
    let n = c.uvarint()? as usize;
    let mut out = Vec::with_capacity(n.min(body.len() / 2 + 1));
    let (mut r, mut t) = (0i64, 0i64);
    for _ in 0..n {
        let head = c.uvarint()?;
        let len = (head & 15) as usize;
        let zr = head >> 4;
        r = r.wrapping_add(((zr >> 1) as i64) ^ -((zr & 1) as i64));
        t = t.wrapping_add(c.varint()?);
        if len > 8 {
            return None;
        }
        let mut be = [0u8; 8];
        be[..len].copy_from_slice(c.bytes(len)?);
        out.push((
            SeriesRef(u32::try_from(r).ok()?),
            t,
            f64::from_bits(u64::from_be_bytes(be)),
        ));
    }
    c.done().then_some(out)
}

fn decode_samples(body: &[u8]) -> Option<Vec<(SeriesRef, i64, f64)>> {
    let mut c = Cursor::new(body);
    let n = c.uvarint()? as usize;
    let mut out = Vec::with_capacity(n.min(body.len() / 10 + 1));
    let mut t = 0i64;
    for _ in 0..n {
        let r = SeriesRef(u32::try_from(c.uvarint()?).ok()?);
        t = t.wrapping_add(c.varint()?);
        let v = c.f64()?;
        out.push((r, t, v));
    }
    c.done().then_some(out)
}

/// Appends records to the current segment and rotates segments by size. Syncing is the
/// caller's choice ([`WalWriter::file`] gives the handle to sync), so that concurrent
/// commits can share one fdatasync.
pub(crate) struct WalWriter {
    dir: PathBuf,
    index: u64,
    file: Arc<File>,
    /// Where the next record goes: the end of the records written.
    size: u64,
    /// The file's length: zeros from `size` on.
    zeroed: u64,
    segment_max: u64,
    /// Number of successful writes so far.
    seq: u64,
    /// Set when a failed write could not be undone; every later write fails with it.
    poisoned: Option<String>,
    buf: Vec<u8>,
    body: Vec<u8>,
    /// What the start file says.
    start: Start,
    /// The newest sample timestamp of each segment whose every record is known (written
    /// here or replayed), ascending by segment; `i64::MIN` for none.
    max_t: Vec<(u64, i64)>,
}

impl WalWriter {
    pub(crate) fn create(dir: &Path, index: u64, segment_max: u64) -> Result<Self, Error> {
        let (file, size) = new_segment(dir, index)?;
        Ok(Self {
            dir: dir.to_owned(),
            index,
            file: Arc::new(file),
            size,
            zeroed: size,
            segment_max,
            seq: 0,
            poisoned: None,
            buf: Vec::new(),
            body: Vec::new(),
            start: read_start(dir),
            max_t: vec![(index, i64::MIN)],
        })
    }

    /// Takes what replay learned of the segments before this writer's.
    pub(crate) fn adopt(&mut self, report: &ReplayReport) {
        let mut known = report.segment_max_t.clone();
        known.retain(|k| k.0 < self.index);
        known.append(&mut self.max_t);
        self.max_t = known;
    }

    /// Writes a series record and a samples record with one write. Either slice may be
    /// empty. Not synced: see [`WalWriter::file`].
    pub(crate) fn write(
        &mut self,
        series: &[(SeriesRef, &Labels)],
        samples: &[(SeriesRef, i64, f64)],
    ) -> Result<(), Error> {
        self.write_kind(series, samples, KIND_SAMPLES_COMPACT)
    }

    fn write_kind(
        &mut self,
        series: &[(SeriesRef, &Labels)],
        samples: &[(SeriesRef, i64, f64)],
        samples_kind: u8,
    ) -> Result<(), Error> {
        if let Some(p) = &self.poisoned {
            return Err(Error::WalPoisoned(p.clone()));
        }
        self.buf.clear();
        if !series.is_empty() {
            self.body.clear();
            encode_series(&mut self.body, series);
            frame(&mut self.buf, KIND_SERIES, &self.body, true);
        }
        if !samples.is_empty() {
            self.body.clear();
            encode_samples(&mut self.body, samples);
            frame(&mut self.buf, samples_kind, &self.body, false);
        }
        self.append_buf()?;
        if let Some(newest) = samples.iter().map(|s| s.1).max() {
            match self.max_t.last_mut() {
                Some(last) if last.0 == self.index => last.1 = last.1.max(newest),
                _ => self.max_t.push((self.index, newest)),
            }
        }
        Ok(())
    }

    /// Writes a deletes record. Not synced: see [`WalWriter::file`].
    pub(crate) fn write_deletes(&mut self, deletes: &[(SeriesRef, i64, i64)]) -> Result<(), Error> {
        if let Some(p) = &self.poisoned {
            return Err(Error::WalPoisoned(p.clone()));
        }
        self.buf.clear();
        self.body.clear();
        put_uvarint(&mut self.body, deletes.len() as u64);
        for &(r, mint, maxt) in deletes {
            put_uvarint(&mut self.body, r.0 as u64);
            put_varint(&mut self.body, mint);
            put_varint(&mut self.body, maxt);
        }
        frame(&mut self.buf, KIND_DELETES, &self.body, true);
        self.append_buf()
    }

    /// Appends the framed records in `buf` to the current segment with one write.
    fn append_buf(&mut self) -> Result<(), Error> {
        if self.buf.is_empty() {
            return Ok(());
        }
        if self.size > MAGIC.len() as u64 && self.size + self.buf.len() as u64 > self.segment_max {
            self.rotate()?;
        }
        let path = segment_path(&self.dir, self.index);
        let end = self.size + self.buf.len() as u64;
        let written = self
            .zero_through(end)
            .and_then(|()| self.file.write_all_at(&self.buf, self.size));
        if let Err(e) = written {
            // Cut off whatever part of the record reached the file, so that later records
            // are not hidden behind a torn one at replay.
            let undone = self.file.set_len(self.size);
            self.zeroed = self.size;
            if let Err(e2) = undone {
                self.poisoned = Some(format!("{}: {e}; undoing it failed: {e2}", path.display()));
            }
            return Err(Error::io(&path, e));
        }
        self.size = end;
        self.seq += 1;
        Ok(())
    }

    /// Extends the segment with zeros, if need be, so that it reaches at least `end`.
    fn zero_through(&mut self, end: u64) -> io::Result<()> {
        /// Zeros to write from: static, so that no fresh memory is faulted in each time.
        static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
        if end <= self.zeroed {
            return Ok(());
        }
        let to = end.next_multiple_of(ZEROED_STEP);
        while self.zeroed < to {
            let n = (to - self.zeroed).min(ZEROS.len() as u64);
            self.file.write_all_at(&ZEROS[..n as usize], self.zeroed)?;
            self.zeroed += n;
        }
        Ok(())
    }

    /// The segment being written.
    pub(crate) fn index(&self) -> u64 {
        self.index
    }

    /// Closes the current segment (synced) and starts the next.
    pub(crate) fn start_segment(&mut self) -> Result<(), Error> {
        self.rotate()
    }

    /// Bytes in the segment being written.
    pub(crate) fn size(&self) -> u64 {
        self.size
    }

    /// Number of successful writes so far.
    pub(crate) fn seq(&self) -> u64 {
        self.seq
    }

    /// The current segment, to sync outside the writer's lock.
    pub(crate) fn file(&self) -> Arc<File> {
        Arc::clone(&self.file)
    }

    fn rotate(&mut self) -> Result<(), Error> {
        let path = segment_path(&self.dir, self.index);
        // Cut to its records before the next segment exists: a reader takes a segment's
        // length as final once a later one exists.
        self.file
            .set_len(self.size)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| Error::io(&path, e))?;
        self.zeroed = self.size;
        let (file, size) = new_segment(&self.dir, self.index + 1)?;
        self.index += 1;
        self.file = Arc::new(file);
        self.size = size;
        self.zeroed = size;
        self.max_t.push((self.index, i64::MIN));
        Ok(())
    }

    /// Replaces the whole log with a checkpoint: a new segment holding `series` and
    /// `samples`, synced and named in the start file, after which every older segment is
    /// deleted — but none at or after `keep_from`, the oldest segment a [`WalReader`]
    /// still needs. A crash in between leaves old segments and a complete or torn
    /// checkpoint, both of which replay to the same head (resent samples are ignored).
    /// `samples_of(i, out)` appends the samples of `series[i]`; they are written in
    /// records of [`CHECKPOINT_RECORD`], so the whole head is never copied at once.
    pub(crate) fn checkpoint(
        &mut self,
        series: &[(SeriesRef, &Labels)],
        mut samples_of: impl FnMut(usize, &mut Vec<(SeriesRef, i64, f64)>),
        keep_from: u64,
    ) -> Result<(), Error> {
        self.rotate()?;
        let first = self.index;
        for part in series.chunks(100_000) {
            self.write(part, &[])?;
        }
        let mut batch = Vec::new();
        for i in 0..series.len() {
            samples_of(i, &mut batch);
            if batch.len() >= CHECKPOINT_RECORD {
                self.write_kind(&[], &batch, KIND_CHECKPOINT_SAMPLES_COMPACT)?;
                batch.clear();
            }
        }
        if !batch.is_empty() {
            self.write_kind(&[], &batch, KIND_CHECKPOINT_SAMPLES_COMPACT)?;
        }
        self.sync()?;
        crate::fault::point("checkpoint-written");
        self.start = Start {
            index: first,
            floors: Vec::new(),
        };
        write_start(&self.dir, &self.start)?;
        self.max_t.retain(|k| k.0 >= first);
        self.remove_before(keep_from.min(first))?;
        remove_checkpoints(&self.dir, None)?;
        sync_dir(&self.dir)
    }

    fn remove_before(&self, index: u64) -> Result<(), Error> {
        for old in list_segments(&self.dir)?.into_iter().filter(|&i| i < index) {
            let p = segment_path(&self.dir, old);
            fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
        }
        Ok(())
    }

    /// After a block cut, when the head holds nothing older than `floor`: the log is
    /// told that every sample older than `floor` logged so far is in blocks (replay
    /// passes over them), and the segments holding nothing newer are deleted — but none
    /// at or after `keep_from`, the oldest segment a [`WalReader`] still needs. The
    /// series records those segments held are written first to a checkpoint file for
    /// `series`, the head's live series, which replay reads before the first segment
    /// kept. No sample is copied, unlike [`WalWriter::checkpoint`].
    ///
    /// Returns false, having changed nothing, when a segment replay would read is not
    /// known record by record (a head snapshot's start passed over it): the caller
    /// checkpoints instead.
    ///
    /// A crash before the start file is replaced leaves the log as it was; after it, the
    /// older segments and checkpoint files are leftovers replay ignores and the next call
    /// removes.
    pub(crate) fn drop_before(
        &mut self,
        floor: i64,
        series: &[(SeriesRef, &Labels)],
        keep_from: u64,
    ) -> Result<bool, Error> {
        let segments: Vec<u64> = list_segments(&self.dir)?
            .into_iter()
            .filter(|&i| i >= self.start.index && i <= self.index)
            .collect();
        let mut newest = Vec::with_capacity(segments.len());
        for &i in &segments {
            match self.max_t.binary_search_by_key(&i, |k| k.0) {
                Ok(at) => newest.push((i, self.max_t[at].1)),
                Err(_) => return Ok(false),
            }
        }
        // Everything logged so far goes before the boundary.
        self.rotate()?;
        let boundary = self.index;
        let first_kept = newest
            .iter()
            .find(|k| k.1 >= floor)
            .map_or(boundary, |k| k.0);
        if first_kept > self.start.index {
            let mut out = MAGIC.to_vec();
            for part in series.chunks(100_000) {
                self.body.clear();
                encode_series(&mut self.body, part);
                frame(&mut out, KIND_SERIES, &self.body, true);
            }
            replace_file(
                &self.dir,
                &self.dir.join("checkpoint.tmp"),
                &checkpoint_path(&self.dir, first_kept),
                &out,
            )?;
        }
        crate::fault::point("series-checkpoint-written");
        let mut floors: Vec<(u64, i64)> = self
            .start
            .floors
            .iter()
            .copied()
            .filter(|f| f.0 > first_kept)
            .collect();
        floors.push((boundary, floor));
        self.start = Start {
            index: first_kept,
            floors,
        };
        write_start(&self.dir, &self.start)?;
        self.max_t.retain(|k| k.0 >= first_kept);
        self.remove_before(keep_from.min(first_kept))?;
        remove_checkpoints(&self.dir, Some(first_kept))?;
        sync_dir(&self.dir)?;
        Ok(true)
    }

    /// Flushes everything to stable storage.
    pub(crate) fn sync(&mut self) -> Result<(), Error> {
        let path = segment_path(&self.dir, self.index);
        self.file.sync_all().map_err(|e| Error::io(&path, e))
    }

    /// Bytes in all segments of the WAL directory: of the current one, its records
    /// without the zeros ahead of them.
    pub(crate) fn disk_size(&self) -> u64 {
        list_segments(&self.dir)
            .unwrap_or_default()
            .iter()
            .filter_map(|&i| {
                if i == self.index {
                    return Some(self.size);
                }
                fs::metadata(segment_path(&self.dir, i))
                    .ok()
                    .map(|m| m.len())
            })
            .sum()
    }
}

/// Reads into `buf` from `offset` until it is full or the file ends: the bytes read.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// A place in the WAL: a segment and a byte offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct WalPosition {
    pub segment: u64,
    pub offset: u64,
}

impl std::fmt::Display for WalPosition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// Reads the WAL while it is written, for forwarding: every record after a position, in
/// log order, as soon as it is complete on disk. A record cut short at the end of the
/// newest segment is one still being written and is read at a later call.
pub struct WalReader {
    dir: PathBuf,
    pos: WalPosition,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    read_size: usize,
    skipped: u64,
}

impl WalReader {
    pub(crate) fn new(dir: &Path, pos: WalPosition) -> Self {
        WalReader {
            dir: dir.to_owned(),
            pos,
            buf: Vec::new(),
            scratch: Vec::new(),
            read_size: 4 << 20,
            skipped: 0,
        }
    }

    /// Where the next record starts.
    pub fn position(&self) -> WalPosition {
        self.pos
    }

    /// Bytes passed over because their segment was deleted before it was read or held a
    /// damaged record.
    pub fn skipped_bytes(&self) -> u64 {
        self.skipped
    }

    /// Calls `f` with each complete record after the position and the position after it,
    /// until about `max_bytes` were read or the end of the log. Returns the records read:
    /// 0 means the reader is at the end of what is written.
    pub fn read(
        &mut self,
        max_bytes: usize,
        mut f: impl FnMut(Record, WalPosition),
    ) -> Result<usize, Error> {
        let mut records = 0;
        let mut bytes = 0;
        while bytes < max_bytes {
            let path = segment_path(&self.dir, self.pos.segment);
            let file = match File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    if !self.next_segment()? {
                        return Ok(records);
                    }
                    continue;
                }
                Err(e) => return Err(Error::io(&path, e)),
            };
            // Whether a later segment exists is asked before the length: once it exists,
            // this one is complete, and a length taken afterwards is its final one.
            let later = self.later_segment()?;
            let len = file.metadata().map_err(|e| Error::io(&path, e))?.len();
            if self.pos.offset < MAGIC.len() as u64 {
                if len < MAGIC.len() as u64 {
                    if later.is_some() && !self.next_segment()? {
                        return Ok(records);
                    }
                    if later.is_none() {
                        return Ok(records);
                    }
                    continue;
                }
                self.pos.offset = MAGIC.len() as u64;
            }
            if self.pos.offset >= len {
                if later.is_none() || !self.next_segment()? {
                    return Ok(records);
                }
                continue;
            }
            let want = ((len - self.pos.offset) as usize).min(self.read_size);
            self.buf.resize(want, 0);
            // Up to `want` bytes: the newest segment may be cut to its records (losing
            // the zeros ahead of them) after its length was taken.
            let got = read_at_most(&file, &mut self.buf, self.pos.offset)
                .map_err(|e| Error::io(&path, e))?;
            self.buf.truncate(got);
            let mut off = 0;
            let mut problem = None;
            let mut zeros = false;
            while off < self.buf.len() {
                let rest = &self.buf[off..];
                if rest[0] == KIND_NONE {
                    // The zeros ahead of the records: the next one is not written yet.
                    zeros = true;
                    break;
                }
                if rest.len() < HEADER_LEN {
                    break;
                }
                let n = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
                if n <= MAX_RECORD && rest.len() < HEADER_LEN + n {
                    break;
                }
                match read_record(rest, &mut self.scratch) {
                    Ok((rec, used)) => {
                        off += used;
                        records += 1;
                        f(
                            rec,
                            WalPosition {
                                segment: self.pos.segment,
                                offset: self.pos.offset + off as u64,
                            },
                        );
                    }
                    Err(why) => {
                        problem = Some(why);
                        break;
                    }
                }
            }
            self.pos.offset += off as u64;
            bytes += off;
            if zeros {
                // A segment is cut to its records before the next one is made, so zeros
                // are the newest segment's, unless its writer stopped without cutting
                // them (a restart's replay cuts them): either way its records end here.
                if later.is_none() || !self.next_segment()? {
                    return Ok(records);
                }
            } else if problem.is_some() {
                // Damaged: what follows in this segment cannot be trusted. At the end of
                // the log, wait for the repair a restart makes.
                if later.is_none() {
                    return Ok(records);
                }
                self.skipped += len - self.pos.offset;
                if !self.next_segment()? {
                    return Ok(records);
                }
            } else if off == 0 {
                // A record longer than one read, or one still being written.
                if want == self.read_size && self.read_size < MAX_RECORD + HEADER_LEN {
                    self.read_size *= 2;
                } else {
                    return Ok(records);
                }
            } else if off < self.buf.len() && later.is_none() && want < self.read_size {
                // The rest is a record still being written.
                return Ok(records);
            }
        }
        Ok(records)
    }

    /// The first segment after the current one, if any.
    fn later_segment(&self) -> Result<Option<u64>, Error> {
        Ok(list_segments(&self.dir)?
            .into_iter()
            .find(|&i| i > self.pos.segment))
    }

    /// Moves to the start of the next segment; false when there is none.
    fn next_segment(&mut self) -> Result<bool, Error> {
        let Some(next) = self.later_segment()? else {
            return Ok(false);
        };
        self.pos = WalPosition {
            segment: next,
            offset: 0,
        };
        Ok(true)
    }
}

/// Frames `body` as a record of `kind`, snappy-compressed when `compress` allows, the
/// body is large enough and compressing makes it smaller.
fn frame(out: &mut Vec<u8>, kind: u8, body: &[u8], compress: bool) {
    let compressed;
    let (kind, payload) = if compress && body.len() >= COMPRESS_MIN {
        match snap::raw::Encoder::new().compress_vec(body) {
            Ok(c) if c.len() < body.len() => {
                compressed = c;
                (kind | FLAG_SNAPPY, compressed.as_slice())
            }
            _ => (kind, body),
        }
    } else {
        (kind, body)
    };
    let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
    out.push(kind);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out.extend_from_slice(payload);
}

fn new_segment(dir: &Path, index: u64) -> Result<(File, u64), Error> {
    let path = segment_path(dir, index);
    // Written at offsets, not appended: the file runs ahead of the records with zeros.
    let mut file = OpenOptions::new()
        .create_new(true)
        .write(true)
        .open(&path)
        .map_err(|e| Error::io(&path, e))?;
    file.write_all(MAGIC).map_err(|e| Error::io(&path, e))?;
    file.sync_all().map_err(|e| Error::io(&path, e))?;
    sync_dir(dir)?;
    Ok((file, MAGIC.len() as u64))
}

/// Makes a directory entry change (create, rename, delete) durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<(), Error> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io(dir, e))
}

impl Error {
    pub(crate) fn io(path: &Path, source: io::Error) -> Self {
        Error::Io {
            path: path.to_owned(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(dir: &Path) -> (Vec<Record>, ReplayReport, u64) {
        let mut recs = Vec::new();
        let (report, next) = replay(dir, 0, |r| recs.push(r)).expect("replay");
        (recs, report, next)
    }

    #[test]
    fn roundtrip_and_compression() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let ls = Labels::from_pairs([("__name__", "up"), ("job", "a")]);
        let mut w = WalWriter::create(dir, 0, 1 << 20)?;
        w.write(&[(SeriesRef(3), &ls)], &[(SeriesRef(3), 1000, 1.5)])?;
        let many: Vec<_> = (0..2000).map(|i| (SeriesRef(3), 2000 + i, 0.0)).collect();
        w.write(&[], &many)?;
        drop(w);
        let (recs, report, next) = collect(dir);
        assert_eq!(next, 1);
        assert!(report.corruption.is_none());
        assert_eq!(report.samples, 2001);
        assert_eq!(recs[0], Record::Series(vec![(SeriesRef(3), ls)]));
        assert_eq!(recs[1], Record::Samples(vec![(SeriesRef(3), 1000, 1.5)]));
        assert_eq!(recs[2], Record::Samples(many));
        Ok(())
    }

    #[test]
    fn compact_samples_keep_every_value_bit_and_any_order() {
        let values = [
            0.0,
            -0.0,
            1.0,
            123_456.0,
            0.1,
            -7.25e300,
            f64::MIN_POSITIVE,
            f64::INFINITY,
            f64::NAN,
            f64::from_bits(crate::STALE_NAN_BITS),
            f64::from_bits(1),
        ];
        let refs = [0u32, 5, 3, u32::MAX, 0, 77, 77];
        let times = [
            0i64,
            -5,
            i64::MAX,
            i64::MIN,
            1_700_000_000_000,
            1_700_000_000_001,
        ];
        let mut samples = Vec::new();
        for (i, &v) in values.iter().enumerate() {
            for (j, &r) in refs.iter().enumerate() {
                samples.push((SeriesRef(r), times[(i + j) % times.len()], v));
            }
        }
        let mut body = Vec::new();
        encode_samples(&mut body, &samples);
        let back = decode_compact_samples(&body).expect("decodes");
        let bits = |v: &[(SeriesRef, i64, f64)]| -> Vec<(u32, i64, u64)> {
            v.iter().map(|s| (s.0 .0, s.1, s.2.to_bits())).collect()
        };
        assert_eq!(bits(&back), bits(&samples));
        // Every cut short of the end is refused, never misread.
        for end in 0..body.len() {
            assert!(decode_compact_samples(&body[..end]).is_none(), "{end}");
        }
        // Whole numbers take few bytes: about 6 a sample here, where the earlier layout
        // took 11 before compression.
        let counter: Vec<_> = (0..100)
            .map(|i| {
                (
                    SeriesRef(i),
                    1_700_000_000_000 + i64::from(i),
                    1e6 + f64::from(i),
                )
            })
            .collect();
        body.clear();
        encode_samples(&mut body, &counter);
        assert!(body.len() <= 100 * 6 + 10, "{}", body.len());
    }

    #[test]
    fn samples_records_of_the_earlier_layout_still_replay() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let samples: Vec<_> = (0..600u32)
            .map(|i| (SeriesRef(i % 7), 1_000 + i64::from(i), f64::from(i) * 0.5))
            .collect();
        // As the previous writer laid them out: reference, time delta, 8 bytes LE.
        let mut body = Vec::new();
        put_uvarint(&mut body, samples.len() as u64);
        let mut prev = 0i64;
        for &(r, t, v) in &samples {
            put_uvarint(&mut body, u64::from(r.0));
            put_varint(&mut body, t - prev);
            prev = t;
            body.extend_from_slice(&v.to_bits().to_le_bytes());
        }
        let mut buf = MAGIC.to_vec();
        frame(&mut buf, KIND_SAMPLES, &body, true);
        frame(&mut buf, KIND_CHECKPOINT_SAMPLES, &body, true);
        assert!(
            buf[MAGIC.len()] & FLAG_SNAPPY != 0,
            "large enough to be compressed"
        );
        let seg = segment_path(dir, 0);
        fs::write(&seg, &buf).map_err(|e| Error::io(&seg, e))?;
        let (recs, report, _) = collect(dir);
        assert!(report.corruption.is_none());
        assert_eq!(
            recs,
            vec![
                Record::Samples(samples.clone()),
                Record::CheckpointSamples(samples)
            ]
        );
        Ok(())
    }

    #[test]
    fn torn_tail_is_truncated_and_later_segments_dropped() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let mut w = WalWriter::create(dir, 0, 1 << 20)?;
        w.write(&[], &[(SeriesRef(1), 1, 1.0)])?;
        w.write(&[], &[(SeriesRef(1), 2, 2.0)])?;
        let full = w.size();
        drop(w);
        let seg0 = segment_path(dir, 0);
        let f = OpenOptions::new()
            .write(true)
            .open(&seg0)
            .map_err(|e| Error::io(&seg0, e))?;
        f.set_len(full - 3).map_err(|e| Error::io(&seg0, e))?;
        WalWriter::create(dir, 1, 1 << 20)?.write(&[], &[(SeriesRef(1), 3, 3.0)])?;

        let (recs, report, _) = collect(dir);
        assert_eq!(recs.len(), 1);
        assert!(report.corruption.as_deref().unwrap_or("").contains("torn"));
        assert!(!segment_path(dir, 1).exists());
        // A second replay is clean: the repair is durable.
        let (recs2, report2, _) = collect(dir);
        assert_eq!(recs2.len(), 1);
        assert!(report2.corruption.is_none());
        Ok(())
    }

    #[test]
    fn flipped_byte_is_detected() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let mut w = WalWriter::create(dir, 0, 1 << 20)?;
        w.write(&[], &[(SeriesRef(1), 1, 1.0)])?;
        w.write(&[], &[(SeriesRef(1), 2, 2.0)])?;
        let last = w.size() as usize - 1;
        drop(w);
        let seg0 = segment_path(dir, 0);
        let mut bytes = fs::read(&seg0).map_err(|e| Error::io(&seg0, e))?;
        bytes[last] ^= 0x10;
        fs::write(&seg0, &bytes).map_err(|e| Error::io(&seg0, e))?;
        let (recs, report, _) = collect(dir);
        assert_eq!(recs.len(), 1);
        assert!(report
            .corruption
            .as_deref()
            .unwrap_or("")
            .contains("checksum"));
        Ok(())
    }

    fn file_len(path: &Path) -> u64 {
        fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn the_segment_runs_ahead_with_zeros_and_replays_to_its_records() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let seg0 = segment_path(dir, 0);
        let mut w = WalWriter::create(dir, 0, 64 << 20)?;
        w.write(&[], &[(SeriesRef(1), 1, 1.0)])?;
        let zeroed = file_len(&seg0);
        assert_eq!(zeroed, ZEROED_STEP, "the first write zeroes a step ahead");
        // Writes inside the zeroed space leave the file's length alone (no inode to sync)
        // until a record crosses its end.
        let mut t = 2;
        while w.size() + 100 < zeroed {
            w.write(&[], &[(SeriesRef(1), t, t as f64)])?;
            assert_eq!(file_len(&seg0), zeroed);
            t += 1;
        }
        let many: Vec<_> = (0..1000).map(|i| (SeriesRef(2), i, 0.5)).collect();
        w.write(&[], &many)?;
        assert_eq!(file_len(&seg0), 2 * ZEROED_STEP);
        let records = w.size();
        drop(w);

        // A writer that stopped without cutting its zeros (a crash): replay ends at the
        // last record without calling it damage, and cuts the file there.
        let (recs, report, next) = collect(dir);
        assert!(report.corruption.is_none(), "{:?}", report.corruption);
        assert_eq!(report.dropped_bytes, 0);
        assert_eq!(recs.len() as i64, t);
        assert_eq!(recs.last(), Some(&Record::Samples(many)));
        assert_eq!(next, 1);
        assert_eq!(file_len(&seg0), records);
        Ok(())
    }

    #[test]
    fn bytes_after_the_zeros_begin_are_damage() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let seg0 = segment_path(dir, 0);
        let mut w = WalWriter::create(dir, 0, 64 << 20)?;
        w.write(&[], &[(SeriesRef(1), 1, 1.0)])?;
        w.write(&[], &[(SeriesRef(1), 2, 2.0)])?;
        let records = w.size();
        drop(w);
        // A record torn by a crash whose first page never reached the disk: zeros where
        // it starts, some of its bytes further on.
        let f = OpenOptions::new()
            .write(true)
            .open(&seg0)
            .map_err(|e| Error::io(&seg0, e))?;
        f.write_all_at(&[7, 7, 7], records + 5000)
            .map_err(|e| Error::io(&seg0, e))?;
        let (recs, report, _) = collect(dir);
        assert_eq!(recs.len(), 2);
        let why = report.corruption.unwrap_or_default();
        assert!(why.contains("after the end of the records"), "{why}");
        assert_eq!(report.dropped_bytes, ZEROED_STEP - records);
        assert_eq!(file_len(&seg0), records);
        Ok(())
    }

    #[test]
    fn a_closed_segment_is_cut_to_its_records() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let mut w = WalWriter::create(dir, 0, 4096)?;
        let mut closed = 0;
        for i in 0..40 {
            let (index, records) = (w.index(), w.size());
            let batch: Vec<_> = (0..50)
                .map(|j| (SeriesRef(j), i64::from(i), 0.25))
                .collect();
            w.write(&[], &batch)?;
            if w.index() != index {
                assert_eq!(file_len(&segment_path(dir, index)), records);
                closed += 1;
            }
        }
        assert!(closed >= 2, "rotated {closed} times");
        assert_eq!(file_len(&segment_path(dir, w.index())), ZEROED_STEP);
        Ok(())
    }

    #[test]
    fn a_reader_waits_at_the_zeros_and_goes_on_past_them() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let mut w = WalWriter::create(dir, 0, 8192)?;
        let mut r = WalReader::new(dir, WalPosition::default());
        let mut seen: Vec<i64> = Vec::new();
        let mut read = |r: &mut WalReader| -> Result<usize, Error> {
            r.read(1 << 20, |rec, _| {
                if let Record::Samples(s) = rec {
                    seen.extend(s.iter().map(|x| x.1));
                }
            })
        };
        for t in 0..3 {
            w.write(&[], &[(SeriesRef(1), t, 1.0)])?;
        }
        assert_eq!(read(&mut r)?, 3);
        assert_eq!(read(&mut r)?, 0, "nothing past the records");
        assert_eq!(r.skipped_bytes(), 0);
        // Into the next segments: each is cut to its records once the next exists.
        let mut t = 3;
        while w.index() < 2 {
            let batch: Vec<_> = (0..40).map(|j| (SeriesRef(j), t, 0.5)).collect();
            w.write(&[], &batch)?;
            t += 1;
        }
        assert!(read(&mut r)? > 0);
        assert_eq!(read(&mut r)?, 0);
        assert_eq!(r.skipped_bytes(), 0);
        assert_eq!(
            r.position(),
            WalPosition {
                segment: 2,
                offset: w.size()
            }
        );
        let mut times = seen;
        times.dedup();
        assert_eq!(times, (0..t).collect::<Vec<_>>());
        Ok(())
    }

    /// Gives at most 1,000 bytes per read, and an interruption every seventh call.
    struct Dribble<'a>(&'a [u8], u32);

    impl Read for Dribble<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.1 += 1;
            if self.1.is_multiple_of(7) {
                return Err(io::ErrorKind::Interrupted.into());
            }
            let n = buf.len().min(self.0.len()).min(1000);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn records_larger_than_the_read_window_and_split_reads_replay_whole() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path();
        let mut w = WalWriter::create(dir, 0, 1 << 30)?;
        let small = [(SeriesRef(1), 1, 1.0)];
        // Values that do not compress: the record is larger than a window.
        let big: Vec<_> = (0..400_000u32)
            .map(|i| {
                (
                    SeriesRef(i),
                    i64::from(i) * 7919,
                    f64::from(i.wrapping_mul(2_654_435_761)).sqrt(),
                )
            })
            .collect();
        w.write(&[], &small)?;
        w.write(&[], &big)?;
        w.write(&[], &small)?;
        let end = w.size() as usize;
        drop(w);
        let seg0 = segment_path(dir, 0);
        let mut bytes = fs::read(&seg0).map_err(|e| Error::io(&seg0, e))?;
        bytes.truncate(end);
        assert!(bytes.len() > WINDOW + 1000, "the big record fits a window");
        for cut in [bytes.len(), bytes.len() - 3, WINDOW + 5] {
            let mut recs = Vec::new();
            let mut report = ReplayReport::default();
            let (good, problem) = replay_segment(
                &mut Dribble(&bytes[..cut], 0),
                &mut Window::default(),
                &mut |r| recs.push(r),
                &mut report,
            )
            .map_err(|e| Error::io(&seg0, e))?;
            let whole = cut == bytes.len();
            assert_eq!(
                problem == SegmentEnd::Clean,
                whole,
                "cut at {cut}: {problem:?}"
            );
            assert_eq!(
                recs.len(),
                if cut > WINDOW + 5 { 2 } else { 1 } + usize::from(whole)
            );
            assert_eq!(recs.get(1).is_some(), cut > WINDOW + 5);
            if let Some(Record::Samples(got)) = recs.get(1) {
                assert_eq!(got.len(), big.len());
                assert!(got
                    .iter()
                    .zip(&big)
                    .all(|(a, b)| a.0 == b.0 && a.1 == b.1 && a.2.to_bits() == b.2.to_bits()));
            }
            assert!(good <= cut as u64);
        }
        Ok(())
    }
}
