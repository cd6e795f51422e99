//! Head chunk files: a head chunk that is full leaves the heap for a file under
//! `<data-dir>/chunks_head/` and is read back with `pread`, so that an active series keeps
//! only its open chunk (and a small reference per full one) in memory.
//!
//! ```text
//!  OpenChunk full ──decimal or XOR──queue (64 KiB)──pwrite──> chunks_head/00000003 (pre-sized, sparse)
//!                  series keeps HeadChunk::File { file, start, len, count, min_t, span }
//!  query     <──pread── 8 KiB windows kept per thread (neighbouring chunks)
//!  block cut <──map───── the files, pages given back every 8 MiB touched
//! ```
//!
//! Reads do not go through a memory map: a series' chunks lie far apart in the files, and
//! every page fault on a map brings in the pages around it as well, so one query over a
//! few thousand series would map most of the files into the process (and its RSS).
//! The files' pages stay in the page cache, shared and reclaimable. A block cut is the
//! exception: it reads every chunk of a block range, in label order, which is nowhere
//! near write order, so each read would copy a window for one chunk. It maps the files
//! while it runs ([`HeadChunks::map_for_cut`]), giving the pages back to the page cache
//! whenever the stretches it has touched add up to [`MAP_BUDGET`].
//!
//! A full chunk whose values are all decimals of one exponent is written in the decimal
//! encoding (`crate::decimal`), which decodes about twice as fast; any other stays XOR.
//!
//! Records are queued per segment and written 64 KiB at a time, on rotation and before a
//! sync; a reader of a queued record copies it from the queue.
//!
//! The files are a cache of what the WAL holds: they are synced only for a head snapshot
//! (which refers to them), and removed at start unless that snapshot is loaded, when the
//! WAL replay writes them anew. A segment goes once every chunk in it is older than what
//! the head keeps. If a write fails (a full disk), the queued chunks stay readable in
//! memory, later chunks stay on the heap, and the failure is logged once.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::block::ChunkView;
use crate::chunk::XorIter;
use crate::decimal::{self, DecimalIter, DECIMAL};
use crate::head::{lock, ClosedChunk};
use crate::open::OpenChunk;
use crate::Error;

const MAGIC: &[u8; 8] = b"STRHCK01";
/// Size of a segment file (sparse: only what is written takes disk space).
const SEGMENT_SIZE: u64 = 64 << 20;
/// `len u32 | count u16 | crc32c u32` before each chunk's bytes.
const RECORD_HEADER: u64 = 10;

/// A full head chunk: on the heap, or in a head chunk file.
#[derive(Debug, Clone)]
pub(crate) enum HeadChunk {
    Mem(Arc<ClosedChunk>),
    /// 32 bytes with the tag: a series holds one per half hour or so of samples.
    File {
        file: Arc<SegmentFile>,
        min_t: i64,
        start: u32,
        /// `max_t - min_t`, or `u32::MAX` when larger (then read as unbounded).
        span: u32,
        len: u16,
        /// The sample count, with the [`DECIMAL`] bit when the chunk is in that encoding.
        count: u16,
    },
}

/// `max_t - min_t` as a [`HeadChunk::Mapped`] keeps it: `u32::MAX` when larger.
pub(crate) fn span(min_t: i64, max_t: i64) -> u32 {
    u32::try_from(max_t.saturating_sub(min_t)).unwrap_or(u32::MAX)
}

impl HeadChunk {
    /// The samples, decoding from memory or from the bytes read into `buf`.
    pub(crate) fn read<'a>(&'a self, buf: &'a mut Vec<u8>) -> HeadIter<'a> {
        match self {
            HeadChunk::Mem(c) => c.iter(),
            HeadChunk::File {
                file,
                start,
                len,
                count,
                ..
            } => {
                file.read(*start, *len, buf);
                HeadIter::new(buf, *count)
            }
        }
    }

    /// The encoded bytes, from memory or read into `buf`.
    pub(crate) fn bytes<'a>(&'a self, buf: &'a mut Vec<u8>) -> &'a [u8] {
        match self {
            HeadChunk::Mem(c) => c.bytes(),
            HeadChunk::File {
                file, start, len, ..
            } => {
                file.read(*start, *len, buf);
                buf
            }
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            HeadChunk::Mem(c) => c.len(),
            HeadChunk::File { count, .. } => usize::from(*count & !DECIMAL),
        }
    }

    /// The sample count, with the [`DECIMAL`] bit when the chunk is in that encoding.
    pub(crate) fn stored_count(&self) -> u16 {
        match self {
            HeadChunk::Mem(c) => c.stored_count(),
            HeadChunk::File { count, .. } => *count,
        }
    }

    pub(crate) fn encoded_len(&self) -> usize {
        match self {
            HeadChunk::Mem(c) => c.encoded_len(),
            HeadChunk::File { len, .. } => usize::from(*len),
        }
    }

    pub(crate) fn min_t(&self) -> i64 {
        match self {
            HeadChunk::Mem(c) => c.min_t,
            HeadChunk::File { min_t, .. } => *min_t,
        }
    }

    pub(crate) fn max_t(&self) -> i64 {
        match self {
            HeadChunk::Mem(c) => c.max_t,
            HeadChunk::File { min_t, span, .. } => match *span {
                u32::MAX => i64::MAX,
                d => min_t.saturating_add(i64::from(d)),
            },
        }
    }

    /// How a query reads it.
    pub(crate) fn view(&self) -> ChunkView {
        match self {
            HeadChunk::Mem(c) => ChunkView::Head(Arc::clone(c)),
            HeadChunk::File {
                file,
                start,
                len,
                count,
                min_t,
                ..
            } => ChunkView::HeadFile {
                file: Arc::clone(file),
                start: *start,
                len: *len,
                count: *count,
                min_t: *min_t,
                max_t: self.max_t(),
            },
        }
    }
}

/// The samples of a full head chunk, in whichever encoding it was written.
#[derive(Clone)]
pub(crate) enum HeadIter<'a> {
    Xor(XorIter<'a>),
    Decimal(DecimalIter<'a>),
}

impl<'a> HeadIter<'a> {
    /// A chunk's bytes and its stored count, whose [`DECIMAL`] bit names the encoding.
    pub(crate) fn new(bytes: &'a [u8], stored_count: u16) -> Self {
        if stored_count & DECIMAL != 0 {
            HeadIter::Decimal(DecimalIter::new(bytes, stored_count & !DECIMAL))
        } else {
            HeadIter::Xor(XorIter::new(bytes, stored_count))
        }
    }

    /// How many samples are not read yet.
    pub(crate) fn remaining(&self) -> u16 {
        match self {
            HeadIter::Xor(it) => it.remaining(),
            HeadIter::Decimal(it) => it.remaining(),
        }
    }

    /// Passes the samples not read yet to `f`, in order, until it returns `false`.
    #[inline]
    pub(crate) fn decode_while(self, f: impl FnMut(i64, f64) -> bool) {
        match self {
            HeadIter::Xor(it) => it.decode_while(f),
            HeadIter::Decimal(it) => it.decode_while(f),
        }
    }
}

impl<'a> From<XorIter<'a>> for HeadIter<'a> {
    fn from(it: XorIter<'a>) -> Self {
        HeadIter::Xor(it)
    }
}

impl Iterator for HeadIter<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        match self {
            HeadIter::Xor(it) => it.next(),
            HeadIter::Decimal(it) => it.next(),
        }
    }
}

/// Scratch space for rewriting full chunks: samples, encoded bytes, residuals.
type Rewrite = (Vec<(i64, f64)>, Vec<u8>, Vec<i64>);

thread_local! {
    static REWRITE: std::cell::RefCell<Rewrite> =
        const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// A head chunk file opened for reading.
pub(crate) struct SegmentFile {
    file: File,
    path: PathBuf,
    len: u64,
    /// Identifies the file in the per-thread read windows (an address could be reused).
    id: u64,
    /// Bytes in the file so far: what a read window may hold.
    written: AtomicU64,
    /// Records handed out but not yet in the file: written together, one system call
    /// per [`FLUSH_AT`] bytes instead of one per chunk. Readers of those ranges copy
    /// them from here. A failed write leaves them here, readable.
    pending: Mutex<Pending>,
}

/// Bytes for a segment file, not yet written to it.
#[derive(Default)]
struct Pending {
    /// Where `bytes` go in the file.
    at: u64,
    bytes: Vec<u8>,
}

/// Pending bytes that make a segment file write its records.
const FLUSH_AT: usize = 64 << 10;

/// Bytes one read brings in around a chunk: the chunks of series scraped together lie
/// side by side, and a query reads them one after another.
const WINDOW: usize = 8 << 10;
/// How far before the chunk asked for a window starts (label order is not write order).
const WINDOW_BEFORE: u64 = 2 << 10;
/// Windows kept per thread: one per age of chunk a series has in a query's range.
const WINDOWS: usize = 8;

/// Recently read stretches of head chunk files, per thread: file id, offset, bytes.
type Windows = crate::ring::Ring<(u64, u64, Vec<u8>), WINDOWS>;

thread_local! {
    static READ_WINDOWS: std::cell::RefCell<Windows> =
        const { std::cell::RefCell::new(Windows::new()) };
}

static NEXT_FILE_ID: AtomicU64 = AtomicU64::new(0);

/// Head chunk files mapped for this thread's reads ([`HeadChunks::map_for_cut`]),
/// looked up before the staged bytes and the windows.
#[derive(Default)]
struct Mapped {
    /// File id, the map of its first `written` bytes, and which [`MAP_STRETCH`]-sized
    /// stretches of it reads have touched since the pages were last given back.
    maps: Vec<(u64, memmap2::Mmap, Vec<u64>)>,
    /// Stretches touched, over all maps.
    touched: usize,
    /// Stretches touched at most before the pages go back ([`MAP_BUDGET`]).
    budget: usize,
    /// Times the pages went back.
    releases: usize,
}

thread_local! {
    static MAPPED: std::cell::RefCell<Mapped> = std::cell::RefCell::new(Mapped::default());
}

/// A page fault on a file map brings in the pages around the one touched, up to 64 KiB
/// aligned (the kernel's `fault_around_bytes`): touching a stretch this large counts as
/// mapping all of it.
const MAP_STRETCH: u64 = 64 << 10;

/// Bytes of mapped head chunk files a cut may hold in its RSS before giving them back.
/// A range of 20 exporters' 15,000 series spans about 15 MiB of the files: its cut gives
/// the pages back about nine times, and as each fault maps a whole stretch, reading them
/// in again takes about a thousand faults, a few milliseconds.
pub(crate) const MAP_BUDGET: usize = 8 << 20;

/// While alive, this thread reads head chunks through maps of their files; made by
/// [`HeadChunks::map_for_cut`].
pub(crate) struct CutMaps(());

impl CutMaps {
    /// How many times the maps' pages have gone back so far.
    pub(crate) fn releases(&self) -> usize {
        MAPPED.with_borrow(|m| m.releases)
    }
}

impl Drop for CutMaps {
    fn drop(&mut self) {
        MAPPED.with_borrow_mut(|m| {
            m.maps.clear();
            m.touched = 0;
        });
    }
}

/// Head chunk bytes read ahead on this thread ([`stage`]), looked up before the windows.
struct Staged {
    /// File id, first and end offset, and where its bytes start in `bytes`, of each
    /// stretch read; sorted by file id and offset.
    spans: Vec<(u64, u64, u64, usize)>,
    /// The bytes read, in `bytes[..used]`. What lies beyond is left from earlier reads,
    /// kept so that the next read need not zero its room first.
    bytes: Vec<u8>,
    used: usize,
}

thread_local! {
    static STAGED: std::cell::RefCell<Staged> = const {
        std::cell::RefCell::new(Staged {
            spans: Vec::new(),
            bytes: Vec::new(),
            used: 0,
        })
    };
}

/// Read-ahead buffers no [`stage`] holds: a stage takes one and [`unstage`] gives it
/// back, keeping at most one a core. Left with the threads, their number would follow
/// how many threads ever read ahead (every blocking thread that ran a query), a MiB each.
static SPARE: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// Chunks closer than this in a file are read together, the bytes between them too: a
/// system call costs about what copying a few KiB does (on this machine's guests a
/// `pread` of a cached file takes 0.43 µs for 256 bytes, 0.81 µs for 4 KiB and 0.97 µs
/// for 8 KiB). The series of one metric and host often lie 2-3 KiB apart (other metrics
/// of the same device in between).
const STAGE_GAP: u64 = 4 << 10;

/// Bytes one [`stage`] reads ahead at most; the chunks past them are left to the
/// windows. A stretch holds the chunks between the wanted ones too, and at 75,000
/// series a batch's stretches could add up to tens of MiB of resident memory.
pub(crate) const STAGE_BUDGET: usize = 1 << 20;

/// One read's length at most, so that a run of chunks longer than the budget is still
/// read ahead in part.
const STAGE_STRETCH: u64 = 128 << 10;

/// Reads the byte ranges `wanted` (a file, an offset, a length) of head chunk files
/// ahead, in file order, each stretch of nearby chunks with one system call; until
/// [`unstage`], this thread's [`SegmentFile::with_bytes`] serves them from here. A query
/// decodes its series in label order, which is not the order the chunks were written
/// in: read one by one, they cost a system call and a window's copy each. `wanted` is
/// sorted in place. Ranges not written to the file yet, or whose read fails, are left
/// to the windows, as are those past [`STAGE_BUDGET`]. Nothing is read ahead, and
/// `false` returned, when the chunks lie so far apart that a stretch would hold fewer
/// than two on average: a window, which also brings in a chunk's neighbours, costs as
/// many system calls then. Chunks decoded in an order that leaves their neighbours for
/// later (the members of `sum by (le)` groups, one bucket of every host before the
/// next) cost a window's read each otherwise.
pub(crate) fn stage(wanted: &mut [(&SegmentFile, u32, u16)]) -> bool {
    wanted.sort_unstable_by_key(|&(f, start, _)| (f.id, start));
    let runs = 1 + wanted
        .windows(2)
        .filter(|w| {
            let end = u64::from(w[0].1) + u64::from(w[0].2);
            w[1].0.id != w[0].0.id || u64::from(w[1].1) > end + STAGE_GAP
        })
        .count();
    if runs * 2 > wanted.len() {
        return false;
    }
    // The stretches, in file order, while they fit the budget.
    let mut stretches: Vec<(&SegmentFile, u64, u64)> = Vec::new();
    let mut total = 0usize;
    let mut i = 0;
    while i < wanted.len() {
        let (file, start, len) = wanted[i];
        let written = file.written.load(Ordering::Acquire);
        let from = u64::from(start);
        let mut to = from + u64::from(len);
        i += 1;
        if to > written {
            continue;
        }
        while let Some(&(next, s, l)) = wanted.get(i) {
            let end = u64::from(s) + u64::from(l);
            if next.id != file.id
                || u64::from(s) > to + STAGE_GAP
                || end > written
                || end - from > STAGE_STRETCH
            {
                break;
            }
            to = to.max(end);
            i += 1;
        }
        total += (to - from) as usize;
        if total > STAGE_BUDGET {
            break;
        }
        stretches.push((file, from, to));
    }
    if stretches.is_empty() {
        return false;
    }
    STAGED.with_borrow_mut(|st| {
        st.spans.clear();
        st.used = 0;
        if st.bytes.capacity() == 0 {
            if let Some(spare) = lock(&SPARE).pop() {
                st.bytes = spare;
            }
        }
        for (file, from, to) in stretches {
            let at = st.used;
            let end = at + (to - from) as usize;
            if st.bytes.len() < end {
                st.bytes.resize(end, 0);
            }
            if file
                .file
                .read_exact_at(&mut st.bytes[at..end], from)
                .is_ok()
            {
                st.spans.push((file.id, from, to, at));
                st.used = end;
            }
        }
    });
    true
}

/// How many bytes this thread holds read ahead.
#[cfg(test)]
pub(crate) fn staged_len() -> usize {
    STAGED.with_borrow(|st| st.used)
}

/// How many read-ahead buffers are kept for the next [`stage`].
#[cfg(test)]
pub(crate) fn spare_buffers() -> usize {
    lock(&SPARE).len()
}

/// Ends this thread's [`stage`]: reads go through the windows again.
pub(crate) fn unstage() {
    let bytes = STAGED.with_borrow_mut(|st| {
        st.spans.clear();
        st.used = 0;
        std::mem::take(&mut st.bytes)
    });
    if bytes.capacity() > 0 {
        let mut spare = lock(&SPARE);
        if spare.len() < crate::cores() {
            spare.push(bytes);
        }
    }
}

impl std::fmt::Debug for SegmentFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SegmentFile")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl SegmentFile {
    /// `written`: how many bytes of it hold chunks already.
    fn open(path: &Path, written: u64) -> Result<Self, Error> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        Ok(Self {
            file,
            path: path.to_owned(),
            len,
            id: NEXT_FILE_ID.fetch_add(1, Ordering::Relaxed),
            written: AtomicU64::new(written),
            pending: Mutex::new(Pending::default()),
        })
    }

    /// Queues a record for offset `at`, writing the queue out through `file` (this
    /// segment's file opened for writing) once it is large enough.
    fn append(&self, file: &File, at: u64, record: &[&[u8]]) -> Result<(), Error> {
        let mut p = lock(&self.pending);
        if p.bytes.is_empty() {
            p.at = at;
        }
        debug_assert_eq!(p.at + p.bytes.len() as u64, at);
        for part in record {
            p.bytes.extend_from_slice(part);
        }
        if p.bytes.len() >= FLUSH_AT {
            self.flush_locked(file, &mut p)?;
        }
        Ok(())
    }

    /// Writes the queued records to the file.
    fn flush(&self, file: &File) -> Result<(), Error> {
        self.flush_locked(file, &mut lock(&self.pending))
    }

    fn flush_locked(&self, file: &File, p: &mut Pending) -> Result<(), Error> {
        if p.bytes.is_empty() {
            return Ok(());
        }
        file.write_all_at(&p.bytes, p.at)
            .map_err(|e| Error::io(&self.path, e))?;
        self.written
            .store(p.at + p.bytes.len() as u64, Ordering::Release);
        p.bytes.clear();
        if p.bytes.capacity() > 2 * FLUSH_AT {
            p.bytes.shrink_to(FLUSH_AT);
        }
        Ok(())
    }

    /// The file's length.
    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Replaces `buf` with the `len` bytes at `start` ([`SegmentFile::with_bytes`]).
    pub(crate) fn read(&self, start: u32, len: u16, buf: &mut Vec<u8>) {
        buf.clear();
        self.with_bytes(start, len, |bytes| buf.extend_from_slice(bytes));
    }

    /// `f` over the `len` bytes at `start`. Only handed-out ranges are read, so a
    /// failure is the disk going bad: it is logged and `f` sees no bytes (the chunk reads
    /// as empty, never as wrong numbers).
    ///
    /// Reads go through a few windows kept per thread, so that the chunks lying next to
    /// each other cost one system call. A window holds only bytes written before it was
    /// read, which never change.
    pub(crate) fn with_bytes<R>(&self, start: u32, len: u16, f: impl FnOnce(&[u8]) -> R) -> R {
        let (from, to) = (u64::from(start), u64::from(start) + u64::from(len));
        if to > self.written.load(Ordering::Acquire) {
            let p = lock(&self.pending);
            if from >= p.at && to <= p.at + p.bytes.len() as u64 {
                return f(&p.bytes[(from - p.at) as usize..(to - p.at) as usize]);
            }
            // Written out meanwhile: read from the file.
        }
        let f = match self.mapped(from, to, f) {
            Ok(r) => return r,
            Err(f) => f,
        };
        if let Some((lo, hi)) = self.staged(from, to) {
            return STAGED.with_borrow(|st| f(st.bytes.get(lo..hi).unwrap_or(&[])));
        }
        READ_WINDOWS.with_borrow_mut(|w| match self.window(w, from, to) {
            Ok(bytes) => f(bytes),
            Err(e) => {
                tracing::error!(file = %self.path.display(), start, error = %e, "reading a head chunk failed");
                f(&[])
            }
        })
    }

    /// `f` over bytes `from..to` from this thread's map of the file, or `f` back when
    /// there is none holding them.
    fn mapped<R, F: FnOnce(&[u8]) -> R>(&self, from: u64, to: u64, f: F) -> Result<R, F> {
        MAPPED.with_borrow_mut(|m| {
            let Some(i) = m
                .maps
                .iter()
                .position(|(id, map, _)| *id == self.id && to <= map.len() as u64)
            else {
                return Err(f);
            };
            let stretch = (from / MAP_STRETCH) as usize;
            let (word, bit) = (stretch / 64, 1u64 << (stretch % 64));
            let seen = &mut m.maps[i].2;
            if seen.len() <= word {
                seen.resize(word + 1, 0);
            }
            if seen[word] & bit == 0 {
                if m.touched >= m.budget {
                    for (_, map, seen) in &mut m.maps {
                        crate::block::release_pages(map);
                        seen.iter_mut().for_each(|w| *w = 0);
                    }
                    m.touched = 0;
                    m.releases += 1;
                }
                m.maps[i].2[word] |= bit;
                m.touched += 1;
            }
            Ok(f(&m.maps[i].1[from as usize..to as usize]))
        })
    }

    /// Where bytes `from..to` of this file lie in this thread's staged bytes, if they do.
    fn staged(&self, from: u64, to: u64) -> Option<(usize, usize)> {
        STAGED.with_borrow(|st| {
            // The last stretch starting at or before `from` in this file.
            let i = st
                .spans
                .partition_point(|&(id, at, _, _)| (id, at) <= (self.id, from));
            let &(id, at, end, pos) = st.spans.get(i.checked_sub(1)?)?;
            let lo = pos + (from - at) as usize;
            (id == self.id && to <= end).then_some((lo, lo + (to - from) as usize))
        })
    }

    /// Bytes `from..to`, from a window of `w` holding them or from one read now.
    fn window<'w>(&self, w: &'w mut Windows, from: u64, to: u64) -> std::io::Result<&'w [u8]> {
        let holds = |(id, at, bytes): &(u64, u64, Vec<u8>)| {
            *id == self.id && *at <= from && to <= at + bytes.len() as u64
        };
        if !w.iter().any(holds) {
            let at = from.saturating_sub(WINDOW_BEFORE);
            let end = (at + WINDOW as u64)
                .min(self.written.load(Ordering::Acquire))
                .max(to);
            let mut bytes = w
                .victim()
                .map(|v| std::mem::take(&mut v.2))
                .unwrap_or_default();
            bytes.resize((end - at) as usize, 0);
            self.file.read_exact_at(&mut bytes, at)?;
            w.insert((self.id, at, bytes));
        }
        Ok(w.iter()
            .find(|e| holds(e))
            .map_or(&[][..], |(_, at, bytes)| {
                &bytes[(from - at) as usize..(to - at) as usize]
            }))
    }
}

struct Segment {
    index: u32,
    path: PathBuf,
    file: Arc<SegmentFile>,
    /// Newest sample of any chunk written to it.
    max_t: i64,
    /// Bytes written.
    used: u64,
}

struct Writer {
    next_index: u64,
    /// Live segments, oldest first; the last one is written to.
    segments: Vec<Segment>,
    file: Option<File>,
}

/// The head chunk files of a store (or, without a directory, none: chunks stay on the
/// heap).
pub(crate) struct HeadChunks {
    dir: Option<PathBuf>,
    writer: Mutex<Writer>,
    failed: AtomicBool,
    /// A chunk ends where a block range does (ranges are aligned to multiples of this),
    /// so that cutting a block never splits a chunk: the chunks before the cut go whole.
    pub(crate) range: i64,
}

/// The block range chunks align to unless the store sets its own.
const DEFAULT_RANGE: i64 = 2 * 3_600_000;

impl HeadChunks {
    /// Head chunk files in `dir`; files left by an earlier run are removed.
    pub(crate) fn open(dir: &Path) -> Result<Self, Error> {
        if dir.exists() {
            fs::remove_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        Ok(Self {
            dir: Some(dir.to_owned()),
            writer: Mutex::new(Writer {
                next_index: 0,
                segments: Vec::new(),
                file: None,
            }),
            failed: AtomicBool::new(false),
            range: DEFAULT_RANGE,
        })
    }

    /// Takes over the segment files a head snapshot names (`segments`: index → newest
    /// sample and bytes used), removing every other file; new chunks go to a new segment.
    /// Returns the files by segment index.
    pub(crate) fn adopt(
        dir: &Path,
        segments: &std::collections::BTreeMap<u32, (i64, u64)>,
    ) -> Result<(Self, std::collections::HashMap<u32, Arc<SegmentFile>>), Error> {
        let mut maps = std::collections::HashMap::new();
        let mut live = Vec::new();
        for (&index, &(max_t, used)) in segments {
            let path = dir.join(format!("{index:08}"));
            let file = Arc::new(SegmentFile::open(&path, used)?);
            if file.len() < used {
                return Err(Error::Corrupt(format!(
                    "{}: shorter than the snapshot says",
                    path.display()
                )));
            }
            maps.insert(index, Arc::clone(&file));
            live.push(Segment {
                index,
                path,
                file,
                max_t,
                used,
            });
        }
        for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let keep = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|i| segments.contains_key(&i))
                || entry.file_name() == "snapshot";
            if !keep {
                let p = entry.path();
                fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        let next_index = segments.keys().next_back().map_or(0, |&i| u64::from(i) + 1);
        Ok((
            Self {
                dir: Some(dir.to_owned()),
                writer: Mutex::new(Writer {
                    next_index,
                    segments: live,
                    file: None,
                }),
                failed: AtomicBool::new(false),
                range: DEFAULT_RANGE,
            },
            maps,
        ))
    }

    /// Flushes the segment files to stable storage (for a head snapshot), and says
    /// which segment each file is.
    pub(crate) fn sync(&self) -> Result<Vec<(Arc<SegmentFile>, u32)>, Error> {
        let w = lock(&self.writer);
        if let (Some(seg), Some(file)) = (w.segments.last(), &w.file) {
            seg.file.flush(file)?;
        }
        for s in &w.segments {
            File::open(&s.path)
                .and_then(|f| f.sync_data())
                .map_err(|e| Error::io(&s.path, e))?;
        }
        Ok(w.segments
            .iter()
            .map(|s| (Arc::clone(&s.file), s.index))
            .collect())
    }

    /// No files: full chunks stay on the heap.
    #[cfg(test)]
    pub(crate) fn in_memory() -> Self {
        Self {
            dir: None,
            writer: Mutex::new(Writer {
                next_index: 0,
                segments: Vec::new(),
                file: None,
            }),
            failed: AtomicBool::new(false),
            range: DEFAULT_RANGE,
        }
    }

    /// Copies a full chunk out of the heap (the caller reuses the chunk's buffer): to a
    /// head chunk file, in the decimal encoding when its values allow, else as it is.
    pub(crate) fn persist(&self, full: &OpenChunk) -> HeadChunk {
        let (min_t, max_t) = (full.min_time(), full.max_time());
        let (bytes, count) = (full.bytes(), full.len() as u16);
        let in_memory = |bytes: &[u8]| {
            HeadChunk::Mem(Arc::new(ClosedChunk::new(
                bytes.into(),
                full.stored_count(),
                min_t,
                max_t,
            )))
        };
        let Some(dir) = &self.dir else {
            return in_memory(bytes);
        };
        if self.failed.load(Ordering::Relaxed) {
            return in_memory(bytes);
        }
        let written = REWRITE.with_borrow_mut(|(samples, encoded, scratch)| {
            let rewritten = match full {
                // From its residuals: the values are decimals of its exponent already.
                OpenChunk::Decimal(d) => d.encode_full(encoded, scratch),
                // A chunk that left the decimal layout: its values decide (most hold
                // one that no exponent does).
                OpenChunk::Xor(_) => {
                    samples.clear();
                    samples.reserve(usize::from(count));
                    full.iter().decode_while(|t, v| {
                        samples.push((t, v));
                        true
                    });
                    samples.len() == usize::from(count)
                        && decimal::encode(samples, encoded, scratch)
                }
            };
            let (bytes, stored) = if rewritten {
                (&encoded[..], count | DECIMAL)
            } else {
                (bytes, full.stored_count())
            };
            let len = u16::try_from(bytes.len()).ok()?;
            Some(
                self.write(dir, bytes, stored, max_t)
                    .map(|(file, start)| (file, start, len, stored)),
            )
        });
        match written {
            None => in_memory(bytes),
            Some(Ok((file, start, len, count))) => HeadChunk::File {
                file,
                min_t,
                start,
                span: span(min_t, max_t),
                len,
                count,
            },
            Some(Err(e)) => {
                if !self.failed.swap(true, Ordering::Relaxed) {
                    tracing::warn!(error = %e, "writing a head chunk file failed; full chunks stay in memory from now on");
                }
                in_memory(bytes)
            }
        }
    }

    fn write(
        &self,
        dir: &Path,
        bytes: &[u8],
        count: u16,
        max_t: i64,
    ) -> Result<(Arc<SegmentFile>, u32), Error> {
        let mut w = lock(&self.writer);
        let need = RECORD_HEADER + bytes.len() as u64;
        let full = w
            .segments
            .last()
            .is_none_or(|s| s.used + need > SEGMENT_SIZE);
        if full || w.file.is_none() {
            self.rotate(&mut w, dir)?;
        }
        let Writer { segments, file, .. } = &mut *w;
        let (Some(seg), Some(file)) = (segments.last_mut(), file.as_ref()) else {
            return Err(Error::Corrupt("no head chunk segment".into()));
        };
        let record: [&[u8]; 4] = [
            &(bytes.len() as u32).to_le_bytes(),
            &count.to_le_bytes(),
            &crc32c::crc32c(bytes).to_le_bytes(),
            bytes,
        ];
        seg.file.append(file, seg.used, &record)?;
        let start = (seg.used + RECORD_HEADER) as u32;
        seg.used += need;
        seg.max_t = seg.max_t.max(max_t);
        Ok((Arc::clone(&seg.file), start))
    }

    fn rotate(&self, w: &mut Writer, dir: &Path) -> Result<(), Error> {
        if let (Some(seg), Some(file)) = (w.segments.last(), &w.file) {
            seg.file.flush(file)?;
        }
        let path = dir.join(format!("{:08}", w.next_index));
        let file = OpenOptions::new()
            .create_new(true)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.set_len(SEGMENT_SIZE)
            .map_err(|e| Error::io(&path, e))?;
        file.write_all_at(MAGIC, 0)
            .map_err(|e| Error::io(&path, e))?;
        // Readers only read ranges already handed out, which are never written again;
        // an unlinked file stays readable while they hold it.
        let reader = Arc::new(SegmentFile::open(&path, MAGIC.len() as u64)?);
        let index = w.next_index as u32;
        w.next_index += 1;
        w.segments.push(Segment {
            index,
            path,
            file: reader,
            max_t: i64::MIN,
            used: MAGIC.len() as u64,
        });
        w.file = Some(file);
        Ok(())
    }

    /// Removes the segments, other than the one written to, whose every chunk is older
    /// than `t` (the head has dropped them all).
    pub(crate) fn truncate_before(&self, t: i64) {
        let mut w = lock(&self.writer);
        let n = w.segments.len();
        let mut keep = Vec::with_capacity(n);
        for (i, s) in std::mem::take(&mut w.segments).into_iter().enumerate() {
            if i + 1 < n && s.max_t < t {
                if let Err(e) = fs::remove_file(&s.path) {
                    tracing::warn!(file = %s.path.display(), error = %e, "removing a head chunk file failed");
                }
            } else {
                keep.push(s);
            }
        }
        w.segments = keep;
    }

    /// Maps the head chunk files for this thread's reads until the guard drops: for a
    /// block cut, which reads every chunk of its range. A file that cannot be mapped is
    /// read through the windows. Only bytes written to a file before the call are mapped,
    /// and those never change (nor are the files ever shortened: a segment is sized once,
    /// and goes whole).
    pub(crate) fn map_for_cut(&self) -> CutMaps {
        let files: Vec<Arc<SegmentFile>> = lock(&self.writer)
            .segments
            .iter()
            .map(|s| Arc::clone(&s.file))
            .collect();
        MAPPED.with_borrow_mut(|m| {
            m.maps.clear();
            m.touched = 0;
            m.budget = MAP_BUDGET / MAP_STRETCH as usize;
            m.releases = 0;
            for f in files {
                let written = f.written.load(Ordering::Acquire);
                let Ok(len) = usize::try_from(written) else {
                    continue;
                };
                if len == 0 {
                    continue;
                }
                // SAFETY: the map is read-only and covers only bytes already written,
                // which are never written again; the file is never truncated (see above).
                #[allow(unsafe_code)]
                let map = unsafe { memmap2::MmapOptions::new().len(len).map(&f.file) };
                match map {
                    Ok(map) => m.maps.push((f.id, map, Vec::new())),
                    Err(e) => {
                        tracing::debug!(file = %f.path.display(), error = %e, "mapping a head chunk file failed; reading it in windows");
                    }
                }
            }
        });
        CutMaps(())
    }

    /// Bytes written to live segments.
    pub(crate) fn disk_size(&self) -> u64 {
        lock(&self.writer).segments.iter().map(|s| s.used).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_values_leave_the_heap_rewritten_and_others_as_xor() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let hc = HeadChunks::open(&tmp.path().join("chunks_head"))?;
        type Kind = (&'static str, fn(i64) -> f64, bool);
        let kinds: [Kind; 3] = [
            ("hundredths", |i| (500_000 + i * 1_234) as f64 / 100.0, true),
            (
                "a stale marker",
                |i| {
                    if i == 60 {
                        crate::stale_nan()
                    } else {
                        i as f64
                    }
                },
                false,
            ),
            ("float arithmetic", |i| i as f64 / 3.0, false),
        ];
        for (what, value, decimal) in kinds {
            let mut c = OpenChunk::new();
            let want: Vec<(i64, u64)> = (0..120)
                .map(|i| (1_000 + i * 15_000 + i % 4, value(i)))
                .inspect(|&(t, v)| c.append(t, v))
                .map(|(t, v)| (t, v.to_bits()))
                .collect();
            let p = hc.persist(&c);
            let HeadChunk::File { count, .. } = p else {
                panic!("{what}: not in a file");
            };
            assert_eq!(count & DECIMAL != 0, decimal, "{what}: encoding");
            assert_eq!(p.len(), 120, "{what}");
            let mut buf = Vec::new();
            let got: Vec<(i64, u64)> = p.read(&mut buf).map(|(t, v)| (t, v.to_bits())).collect();
            assert_eq!(got, want, "{what}: read back");
            // As a query reads it, through the view and the bulk decoder.
            let mut bulk = Vec::new();
            p.view().with_head_file(|it| {
                it.decode_while(|t, v| {
                    bulk.push((t, v.to_bits()));
                    true
                })
            });
            assert_eq!(bulk, want, "{what}: through the view");
        }
        Ok(())
    }

    #[test]
    fn chunks_round_trip_through_files_and_old_segments_go() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path().join("chunks_head");
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        fs::write(dir.join("00000000"), b"left over").map_err(|e| Error::io(&dir, e))?;
        let hc = HeadChunks::open(&dir)?;
        assert!(
            !dir.join("00000000").exists(),
            "files of an earlier run are removed"
        );
        let mut chunks = Vec::new();
        for k in 0..3 {
            let mut c = OpenChunk::new();
            for i in 0..120 {
                c.append(k * 1000 + i, (k * 1000 + i) as f64 / 4.0);
            }
            chunks.push(hc.persist(&c));
        }
        for (k, c) in chunks.iter().enumerate() {
            assert!(matches!(c, HeadChunk::File { .. }));
            let k = k as i64;
            let got: Vec<(i64, f64)> = c.read(&mut Vec::new()).collect();
            assert_eq!(got.len(), 120);
            assert_eq!(got[7], (k * 1000 + 7, (k * 1000 + 7) as f64 / 4.0));
            assert_eq!((c.min_t(), c.max_t()), (k * 1000, k * 1000 + 119));
        }
        assert!(hc.disk_size() > 3 * RECORD_HEADER);
        // Only the segment being written exists; it is never removed.
        hc.truncate_before(i64::MAX);
        assert!(dir.join("00000000").exists());
        let mem = HeadChunks::in_memory().persist(&OpenChunk::new());
        assert!(matches!(mem, HeadChunk::Mem(_)));
        Ok(())
    }

    /// A cut's maps serve the chunks written before they were made, in any order and
    /// across givings-back of their pages; chunks written later, or still queued, are read
    /// as before.
    #[test]
    fn mapped_reads_match_the_chunks_and_keep_to_their_budget() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let hc = HeadChunks::open(&tmp.path().join("chunks_head"))?;
        let mut k = 0i64;
        let mut next = || {
            let mut c = OpenChunk::new();
            for i in 0..120 {
                // Decimal and XOR chunks both.
                let v = if k % 2 == 0 {
                    (k * 31 + i * i) as f64 / 8.0
                } else {
                    ((k + i) as f64).sqrt()
                };
                c.append(k * 10_000 + i * 15 + i % 3, v);
            }
            k += 1;
            let want: Vec<(i64, f64)> = c.iter().collect();
            (hc.persist(&c), want)
        };
        let mut chunks = Vec::new();
        while hc.disk_size() < 6 * MAP_STRETCH {
            chunks.push(next());
        }
        let state = || MAPPED.with_borrow(|m| (m.maps.len(), m.touched, m.releases));
        let mut buf = Vec::new();
        {
            let _maps = hc.map_for_cut();
            assert_eq!(state().0, 1, "the one segment is mapped");
            MAPPED.with_borrow_mut(|m| m.budget = 2);
            // Chunks written now lie past the map.
            for _ in 0..50 {
                chunks.push(next());
            }
            // Far apart in the file, one after another: every read touches a new stretch.
            let n = chunks.len();
            for j in 0..n {
                let (c, want) = &chunks[(j * 61) % n];
                assert_eq!(&c.read(&mut buf).collect::<Vec<_>>(), want, "chunk {j}");
                assert!(state().1 <= 2, "{:?}", state());
            }
            assert!(state().2 >= 3, "pages went back: {:?}", state());
        }
        assert_eq!(state().0, 0, "the maps go with the guard");
        for (j, (c, want)) in chunks.iter().enumerate() {
            assert_eq!(&c.read(&mut buf).collect::<Vec<_>>(), want, "chunk {j}");
        }
        Ok(())
    }

    #[test]
    fn a_read_window_never_serves_bytes_written_after_it() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let hc = HeadChunks::open(&tmp.path().join("chunks_head"))?;
        let chunk = |k: i64| {
            let mut c = OpenChunk::new();
            for i in 0..120 {
                c.append(k * 10_000 + i * 15, (k * 7 + i) as f64 * 1.5);
            }
            c
        };
        // Each chunk is read right after it is written: its window reaches past the
        // bytes written so far, where the next chunk goes.
        let mut buf = Vec::new();
        for k in 0..40 {
            let c = chunk(k);
            let want: Vec<(i64, f64)> = c.iter().collect();
            let persisted = hc.persist(&c);
            assert!(matches!(persisted, HeadChunk::File { .. }));
            assert_eq!(
                persisted.read(&mut buf).collect::<Vec<_>>(),
                want,
                "chunk {k}"
            );
        }
        Ok(())
    }

    #[test]
    fn queued_chunks_read_back_before_and_after_they_reach_the_file() -> Result<(), Error> {
        let tmp = tempfile::tempdir().map_err(|e| Error::io(Path::new("tmp"), e))?;
        let dir = tmp.path().join("chunks_head");
        let hc = HeadChunks::open(&dir)?;
        let chunk = |k: i64| {
            let mut c = OpenChunk::new();
            for i in 0..120 {
                c.append(k * 10_000 + i * 15 + i % 3, (k * 31 + i * i) as f64 / 8.0);
            }
            c
        };
        // Enough chunks for a few writes of the queue, and to leave some in it, each read
        // at once (from the queue) and all read again at the end (from the file, but the
        // last ones).
        let queued = || {
            lock(&hc.writer)
                .segments
                .last()
                .map_or(0, |s| lock(&s.file.pending).bytes.len())
        };
        let mut buf = Vec::new();
        let mut written = Vec::new();
        let mut k = 0;
        while hc.disk_size() < 3 * FLUSH_AT as u64 || queued() == 0 {
            let c = chunk(k);
            let want: Vec<(i64, f64)> = c.iter().collect();
            let p = hc.persist(&c);
            assert_eq!(p.read(&mut buf).collect::<Vec<_>>(), want, "chunk {k}");
            written.push((p, want));
            k += 1;
        }
        let file = dir.join("00000000");
        let on_disk = || fs::metadata(&file).map(|m| m.len()).unwrap_or(0);
        let len = |p: &HeadChunk| match p {
            HeadChunk::File { start, len, .. } => u64::from(*start) + u64::from(*len),
            HeadChunk::Mem(_) => 0,
        };
        let end = written.iter().map(|(p, _)| len(p)).max().unwrap_or(0);
        // The file is preallocated; what shows the queue is whether its bytes are there.
        let tail_on_disk = |end: u64| -> Result<bool, Error> {
            let f = File::open(&file).map_err(|e| Error::io(&file, e))?;
            let mut last = [0u8; 16];
            f.read_exact_at(&mut last, end - 16)
                .map_err(|e| Error::io(&file, e))?;
            Ok(last != [0u8; 16])
        };
        assert!(on_disk() >= end);
        assert!(!tail_on_disk(end)?, "the last chunks wait in the queue");
        for (p, want) in &written {
            assert_eq!(&p.read(&mut buf).collect::<Vec<_>>(), want);
        }
        hc.sync()?;
        assert!(tail_on_disk(end)?, "a sync writes the queue out");
        for (p, want) in &written {
            assert_eq!(&p.read(&mut buf).collect::<Vec<_>>(), want);
        }
        Ok(())
    }
}
