//! The head: the in-memory, writable window of the store.
//!
//! ```text
//!   labels ──hash──> shard map ──> MemSeries ──> [closed chunks..., open chunk]
//!   (name, value) ──> postings (roaring bitmap of SeriesRef)
//! ```
//!
//! Series are found by a hash of their labels in one of [`SHARDS`] independently locked
//! maps (collisions are resolved by comparing labels); each series has its own lock, so
//! appends to different series never contend. Creating a series takes the series table and
//! postings write locks, which happens once per series, not per sample.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use crate::block::{holds_sample_in, ChunkView};
use crate::chunk::grow_exact;
use crate::decimal::DECIMAL;
use crate::head_chunks::{HeadChunk, HeadChunks, HeadIter, SegmentFile};
use crate::labels::Labels;
use crate::matcher::Matcher;
use crate::open::{OpenChunk, Resume};
use crate::postings::Postings;
use crate::snapshot::{SnapChunk, SnapSeries};
use crate::{Error, SeriesRef};

const SHARDS: usize = 64;
/// Samples per chunk before it is closed.
const SAMPLES_PER_CHUNK: usize = 120;

/// Locks a mutex, recovering the data if a panicking thread poisoned it: every critical
/// section in this module leaves its data consistent at each step.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An immutable, encoded chunk, or the end of one from a mark on.
#[derive(Debug)]
pub(crate) struct ClosedChunk {
    bytes: Box<[u8]>,
    count: u16,
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
    /// Where `bytes` start, when they are the chunk's tail from this mark on.
    from: Option<Resume>,
}

impl ClosedChunk {
    /// `count` is the stored count: with the [`crate::decimal::DECIMAL`] bit when the
    /// bytes are decimal.
    pub(crate) fn new(bytes: Box<[u8]>, count: u16, min_t: i64, max_t: i64) -> Self {
        Self {
            bytes,
            count,
            min_t,
            max_t,
            from: None,
        }
    }

    pub(crate) fn iter(&self) -> HeadIter<'_> {
        match &self.from {
            None => HeadIter::new(&self.bytes, self.count),
            Some(m) => m.iter(&self.bytes, self.count),
        }
    }

    /// The sample count, with the [`DECIMAL`] bit when the bytes are decimal.
    pub(crate) fn stored_count(&self) -> u16 {
        self.count
    }

    pub(crate) fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub(crate) fn len(&self) -> usize {
        usize::from(self.count & !DECIMAL)
    }

    pub(crate) fn encoded_len(&self) -> usize {
        self.bytes.len()
    }
}

/// The outcome of appending one sample to a series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AppendOutcome {
    /// Newer than every sample of the series: appended to its chunks.
    Appended,
    /// Same timestamp and bit-identical value as the last sample: a resend.
    Duplicate,
    /// Older than the last sample, or a new value for an existing timestamp: kept in the
    /// series' out-of-order samples, where it wins over what the chunks hold.
    OutOfOrder,
}

/// A series' samples. Laid out in this order: what an in-order append touches first (the
/// open chunk's hot fields lead it), then the rest.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct SeriesData {
    last_t: i64,
    last_v: u64,
    /// The open chunk takes no sample at or after this: the end of the block range its
    /// first sample is in (see [`HeadChunks::range`]).
    open_end: i64,
    open: OpenChunk,
    closed: Vec<HeadChunk>,
    /// Samples that arrived out of order (or rewrote a timestamp), sorted by time, one
    /// per timestamp; they win over the chunks' samples at the same timestamp.
    // A pointer to a vector, not a vector: 8 bytes instead of 24 in every series, most of
    // which never have out-of-order samples.
    #[allow(clippy::box_collection)]
    ooo: Option<Box<Vec<(i64, f64)>>>,
    /// Bumped whenever an out-of-order sample lands: a block cut tells by it whether
    /// samples it did not write arrived while it was writing.
    ooo_changes: u32,
}

/// The end of the aligned range of length `range` that holds `t`.
fn range_end(t: i64, range: i64) -> i64 {
    let range = range.max(1);
    t.div_euclid(range).saturating_add(1).saturating_mul(range)
}

/// What a block cut saw of a series when it wrote it (see [`SeriesData::changed_since`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct CutMark {
    last_t: i64,
    ooo_changes: u32,
    /// The series held samples older than the block's range (they arrived after the
    /// range was chosen): the block could not take them.
    pub(crate) older: bool,
}

impl SeriesData {
    fn new() -> Self {
        Self {
            closed: Vec::new(),
            open: OpenChunk::new(),
            ooo: None,
            last_t: i64::MIN,
            last_v: 0,
            open_end: i64::MIN,
            ooo_changes: 0,
        }
    }

    pub(crate) fn cut_mark(&self) -> CutMark {
        CutMark {
            last_t: self.last_t,
            ooo_changes: self.ooo_changes,
            older: false,
        }
    }

    /// Whether samples older than `t` may be missing from the block `mark` was taken
    /// for: older than its range, or arrived since — an out-of-order sample, or any new
    /// sample while the series had not reached `t`.
    fn changed_since(&self, mark: CutMark, t: i64) -> bool {
        mark.older
            || self.ooo_changes != mark.ooo_changes
            || (mark.last_t < t && self.last_t != mark.last_t)
    }

    /// Where the next append to the open chunk writes (an address to prefetch, which
    /// another append may move meanwhile).
    pub(crate) fn tail(&self) -> usize {
        self.open.tail() as usize
    }

    pub(crate) fn check(&self, t: i64, v: f64) -> AppendOutcome {
        if self.last_t == i64::MIN || t > self.last_t {
            return AppendOutcome::Appended;
        }
        // What a read returns at `t`, as far as cheaply known: the out-of-order sample, or
        // the last in-order one.
        let current = match self.ooo_at(t) {
            Some(bits) => Some(bits),
            None => (t == self.last_t).then_some(self.last_v),
        };
        if current == Some(v.to_bits()) {
            AppendOutcome::Duplicate
        } else {
            AppendOutcome::OutOfOrder
        }
    }

    /// The out-of-order samples (kept behind a pointer: most series never have any).
    fn ooo(&self) -> &[(i64, f64)] {
        self.ooo.as_deref().map_or(&[], Vec::as_slice)
    }

    fn retain_ooo(&mut self, keep: impl FnMut(&(i64, f64)) -> bool) {
        if let Some(ooo) = &mut self.ooo {
            ooo.retain(keep);
            if ooo.is_empty() {
                self.ooo = None;
            } else if ooo.capacity() > 2 * ooo.len() + 16 {
                ooo.shrink_to_fit();
            }
        }
    }

    fn ooo_at(&self, t: i64) -> Option<u64> {
        let ooo = self.ooo();
        ooo.binary_search_by_key(&t, |s| s.0)
            .ok()
            .map(|i| ooo[i].1.to_bits())
    }

    pub(crate) fn append(&mut self, t: i64, v: f64, chunks: &HeadChunks) -> AppendOutcome {
        let outcome = self.check(t, v);
        if outcome == AppendOutcome::OutOfOrder {
            self.ooo_changes = self.ooo_changes.wrapping_add(1);
            let ooo = self.ooo.get_or_insert_with(Box::default);
            match ooo.binary_search_by_key(&t, |s| s.0) {
                Ok(i) => ooo[i].1 = v,
                Err(i) => ooo.insert(i, (t, v)),
            }
        }
        if outcome == AppendOutcome::Appended {
            self.push_in_order(t, v, chunks);
            self.last_t = t;
            self.last_v = v.to_bits();
        }
        outcome
    }

    /// Whether appending a sample at `t` first writes the open chunk to a head chunk
    /// file: the sample is in order and the chunk is full or `t` is past its range.
    pub(crate) fn cuts_before(&self, t: i64) -> bool {
        (self.last_t == i64::MIN || t > self.last_t) && self.cut_due(t)
    }

    fn cut_due(&self, t: i64) -> bool {
        let n = self.open.len();
        n >= SAMPLES_PER_CHUNK || (n > 0 && t >= self.open_end)
    }

    fn push_in_order(&mut self, t: i64, v: f64, chunks: &HeadChunks) {
        if self.cut_due(t) {
            // One more chunk every half hour or so: grow exactly, no slack.
            if self.closed.len() == self.closed.capacity() {
                grow_exact(&mut self.closed, 1);
            }
            self.closed.push(chunks.persist(&self.open));
            self.open.reset();
        }
        if self.open.len() == 0 {
            self.open_end = range_end(t, chunks.range);
        }
        self.open.append(t, v);
    }

    /// The out-of-order samples in `[mint, maxt]`.
    pub(crate) fn ooo_in(&self, mint: i64, maxt: i64) -> Vec<(i64, f64)> {
        let ooo = self.ooo();
        let from = ooo.partition_point(|s| s.0 < mint);
        let to = ooo.partition_point(|s| s.0 <= maxt);
        ooo.get(from..to).unwrap_or(&[]).to_vec()
    }

    /// The chunks overlapping `[mint, maxt]`; the open chunk is copied.
    fn chunks_in(&self, mint: i64, maxt: i64) -> Vec<ChunkView> {
        // Sized exactly: a selection holds these for every series until the query ends.
        let mut out = Vec::with_capacity(self.chunk_count_in(mint, maxt));
        self.chunks_into(mint, maxt, &mut out);
        out
    }

    /// How many chunks [`SeriesData::chunks_into`] appends.
    pub(crate) fn chunk_count_in(&self, mint: i64, maxt: i64) -> usize {
        let inside = |c: &&HeadChunk| c.max_t() >= mint && c.min_t() <= maxt;
        self.closed.iter().filter(inside).count() + usize::from(self.open_in(mint, maxt))
    }

    fn open_in(&self, mint: i64, maxt: i64) -> bool {
        self.open.len() > 0 && self.open.max_time() >= mint && self.open.min_time() <= maxt
    }

    /// Appends the chunks overlapping `[mint, maxt]` to `out`; the open chunk is copied.
    pub(crate) fn chunks_into(&self, mint: i64, maxt: i64, out: &mut Vec<ChunkView>) {
        let inside = |c: &&HeadChunk| c.max_t() >= mint && c.min_t() <= maxt;
        let open = self.open_in(mint, maxt);
        out.extend(self.closed.iter().filter(inside).map(HeadChunk::view));
        if open {
            // From the latest mark before `mint`, when there is one: only the samples
            // after it are copied and decoded.
            let (bytes, min_t, from) = match self.open.tail_before(mint) {
                Some((tail, from)) => (tail, from.t() + 1, Some(from)),
                None => (self.open.bytes(), self.open.min_time(), None),
            };
            out.push(ChunkView::Head(Arc::new(ClosedChunk {
                bytes: bytes.into(),
                count: self.open.stored_count(),
                min_t,
                max_t: self.open.max_time(),
                from,
            })));
        }
    }

    /// The series' newest sample when it lies in `[mint, maxt]` and is known without
    /// decoding: the last appended one, while it is still the last sample of the chunks
    /// (no deletion took it) and no out-of-order sample could win over it.
    pub(crate) fn last_sample(&self, mint: i64, maxt: i64) -> Option<(i64, f64)> {
        if self.ooo.is_some() {
            return None;
        }
        let newest = if self.open.len() > 0 {
            self.open.max_time()
        } else {
            self.closed.last()?.max_t()
        };
        (newest == self.last_t && self.last_t >= mint && self.last_t <= maxt)
            .then(|| (self.last_t, f64::from_bits(self.last_v)))
    }

    /// Whether a sample lies in `[mint, maxt]`. A chunk's time range starts and ends at
    /// samples: only a chunk reaching past both ends is decoded.
    fn has_sample_in(&self, mint: i64, maxt: i64) -> bool {
        let inside = |t: i64| t >= mint && t <= maxt;
        if self.ooo().iter().any(|s| inside(s.0)) {
            return true;
        }
        let mut buf = Vec::new();
        self.closed
            .iter()
            .any(|c| holds_sample_in(c.min_t(), c.max_t(), mint, maxt, || c.read(&mut buf)))
            || (self.open.len() > 0
                && holds_sample_in(
                    self.open.min_time(),
                    self.open.max_time(),
                    mint,
                    maxt,
                    || self.open.iter(),
                ))
    }

    /// Every sample of the series, in time order, out-of-order ones merged in.
    pub(crate) fn samples(&self) -> Vec<(i64, f64)> {
        self.samples_before(i64::MAX)
    }

    /// [`SeriesData::samples`] older than `t`, and some newer ones: the in-order chunks
    /// starting at or after `t` are left undecoded.
    pub(crate) fn samples_before(&self, t: i64) -> Vec<(i64, f64)> {
        let mut out = Vec::with_capacity(self.sample_count());
        let mut buf = Vec::new();
        for c in self.closed.iter().take_while(|c| c.min_t() < t) {
            push_all(c.read(&mut buf), &mut out);
        }
        let all_closed = self.closed.last().is_none_or(|c| c.min_t() < t);
        if all_closed && self.open.len() > 0 && self.open.min_time() < t {
            push_all(self.open.iter(), &mut out);
        }
        if !self.ooo().is_empty() {
            out = merge_newest_wins(&out, self.ooo());
        }
        out
    }

    /// Keeps only the samples at or after `t`, re-encoded; the last sample seen is
    /// remembered, so a resend of it is still recognised.
    fn truncate_before(&mut self, t: i64, chunks: &HeadChunks) {
        // Whole chunks older than `t` go; when a chunk straddles `t` (or the open chunk
        // does), the series' chunks are written anew from `t` on.
        self.closed.retain(|c| c.max_t() >= t);
        let straddles = self.closed.first().is_some_and(|c| c.min_t() < t)
            || (self.closed.is_empty() && self.open.len() > 0 && self.open.min_time() < t);
        if straddles {
            let keep: Vec<(i64, f64)> = self
                .in_order_samples()
                .into_iter()
                .filter(|s| s.0 >= t)
                .collect();
            self.closed.clear();
            self.open = OpenChunk::new();
            for (t, v) in keep {
                self.push_in_order(t, v, chunks);
            }
        }
        self.retain_ooo(|s| s.0 >= t);
    }

    /// Removes the samples in `[mint, maxt]`; returns how many went.
    pub(crate) fn delete_range(&mut self, mint: i64, maxt: i64, chunks: &HeadChunks) -> usize {
        let before = self.sample_count();
        let in_range = |t: i64| t >= mint && t <= maxt;
        let chunks_hit = self
            .closed
            .iter()
            .any(|c| c.max_t() >= mint && c.min_t() <= maxt)
            || (self.open.len() > 0
                && self.open.max_time() >= mint
                && self.open.min_time() <= maxt);
        if chunks_hit {
            let keep: Vec<(i64, f64)> = self
                .in_order_samples()
                .into_iter()
                .filter(|s| !in_range(s.0))
                .collect();
            self.closed.clear();
            self.open = OpenChunk::new();
            for (t, v) in keep {
                self.push_in_order(t, v, chunks);
            }
        }
        self.retain_ooo(|s| !in_range(s.0));
        before - self.sample_count()
    }

    fn in_order_samples(&self) -> Vec<(i64, f64)> {
        let mut out = Vec::with_capacity(self.sample_count());
        let mut buf = Vec::new();
        for c in &self.closed {
            push_all(c.read(&mut buf), &mut out);
        }
        push_all(self.open.iter(), &mut out);
        out
    }

    /// The series as a head snapshot records it; `segment_of` names the head chunk file
    /// of a map.
    fn to_snapshot(&self, segment_of: &dyn Fn(&Arc<SegmentFile>) -> Option<u32>) -> SeriesSnapshot {
        let closed = self
            .closed
            .iter()
            .map(|c| {
                // Bytes as they are, XOR or decimal, with the stored count naming which.
                let mem = || SnapChunk::Mem {
                    count: c.stored_count(),
                    min_t: c.min_t(),
                    max_t: c.max_t(),
                    bytes: c.bytes(&mut Vec::new()).to_vec(),
                };
                match c {
                    HeadChunk::File {
                        file,
                        start,
                        len,
                        count,
                        min_t,
                        ..
                    } => match segment_of(file) {
                        Some(segment) => SnapChunk::Mapped {
                            segment,
                            start: *start,
                            len: *len,
                            count: *count,
                            min_t: *min_t,
                            max_t: c.max_t(),
                        },
                        None => mem(),
                    },
                    HeadChunk::Mem(_) => mem(),
                }
            })
            .collect();
        let open = (self.open.stored_count(), self.open.bytes().to_vec());
        (closed, open, self.ooo().to_vec())
    }

    fn first_time(&self) -> Option<i64> {
        let chunks = match self.closed.first() {
            Some(c) => Some(c.min_t()),
            None => (self.open.len() > 0).then(|| self.open.min_time()),
        };
        match (chunks, self.ooo().first()) {
            (Some(a), Some(b)) => Some(a.min(b.0)),
            (a, b) => a.or(b.map(|s| s.0)),
        }
    }

    fn sample_count(&self) -> usize {
        self.closed.iter().map(|c| c.len()).sum::<usize>() + self.open.len() + self.ooo().len()
    }

    fn chunk_bytes(&self) -> usize {
        self.closed.iter().map(|c| c.encoded_len()).sum::<usize>() + self.open.bytes().len()
    }
}

/// Merges two time-ordered sample lists (unique timestamps each); at a timestamp both
/// hold, `newer`'s sample wins.
pub(crate) fn merge_newest_wins(older: &[(i64, f64)], newer: &[(i64, f64)]) -> Vec<(i64, f64)> {
    let mut out = Vec::with_capacity(older.len() + newer.len());
    let (mut i, mut j) = (0, 0);
    while i < older.len() && j < newer.len() {
        let (a, b) = (older[i], newer[j]);
        if a.0 < b.0 {
            out.push(a);
            i += 1;
        } else {
            out.push(b);
            j += 1;
            if a.0 == b.0 {
                i += 1;
            }
        }
    }
    out.extend_from_slice(&older[i..]);
    out.extend_from_slice(&newer[j..]);
    out
}

/// A series' full chunks, open chunk (sample count and bytes) and out-of-order samples,
/// for a snapshot.
type SeriesSnapshot = (Vec<SnapChunk>, (u16, Vec<u8>), Vec<(i64, f64)>);

/// One series in the head. Laid out in this order: what an appender reads of it comes
/// first, right after the reference counts (see [`MemSeries::prefetch_for_append`]), then
/// what a commit's append touches (the lock and the hot part of [`SeriesData`]), within
/// [`HOT_BYTES`] of the allocation's start; what appends do not read comes last.
#[derive(Debug)]
#[repr(C)]
pub(crate) struct MemSeries {
    /// The newest in-order timestamp an appender stored, and where the open chunk's next
    /// append writes (for a prefetch), both as of that commit: an appender takes a sample
    /// newer than `newest` without the lock (see [`MemSeries::takes_without_lock`]).
    /// Only commits set them, under the lock and after their appends, and nothing
    /// else lowers the newest timestamp, so `newest` is never above the series'. At
    /// `i64::MIN` (no commit yet: a new series, or one loaded at start) appenders lock.
    newest: std::sync::atomic::AtomicI64,
    tail: std::sync::atomic::AtomicUsize,
    pub(crate) sref: SeriesRef,
    /// Whether a WAL series record for this series has been written.
    pub(crate) logged: AtomicBool,
    /// Whether the WAL knows it by a second reference (then it is never collected).
    aliased: AtomicBool,
    pub(crate) data: Mutex<SeriesData>,
    pub(crate) labels: Labels,
    /// The series' place in label order at the head's last ranking ([`Head::rank`]),
    /// tagged with that ranking's generation: `generation << 32 | place`. Zero, a
    /// generation no ranking has, until the series is first ranked.
    order: AtomicU64,
}

/// The bytes from the start of a series' allocation (its reference counts) through the
/// last field an in-order append of a decimal chunk reads or writes: three cache lines
/// wherever the allocation starts on a 16-byte boundary. Checked by a test.
const HOT_BYTES: usize = 136;

impl MemSeries {
    /// Whether a sample at `t` is newer than every sample the series holds, known
    /// without its lock; then also where the open chunk's next append writes, for a
    /// prefetch (any address will do). `None` when only the lock can tell.
    #[inline]
    pub(crate) fn takes_without_lock(&self, t: i64) -> Option<usize> {
        let newest = self.newest.load(Ordering::Acquire);
        (newest != i64::MIN && t > newest).then(|| self.tail.load(Ordering::Relaxed))
    }

    /// Publishes what [`MemSeries::takes_without_lock`] reads: called by a commit with
    /// `data` (this series' data) locked, after its appends.
    #[inline]
    pub(crate) fn publish(&self, data: &SeriesData) {
        self.tail.store(data.tail(), Ordering::Relaxed);
        if data.last_t != i64::MIN {
            self.newest.store(data.last_t, Ordering::Release);
        }
    }

    /// Whether the series holds a sample in `[mint, maxt]`.
    pub(crate) fn has_sample_in(&self, mint: i64, maxt: i64) -> bool {
        lock(&self.data).has_sample_in(mint, maxt)
    }

    /// Starts loading the series' memory (its reference counts included) into the cache.
    /// On this machine's CPUs a locked instruction waits for the prefetches before it, so
    /// loops prefetch a group of series and then work on them, which overlaps the
    /// group's cache misses; prefetching one series ahead would not.
    pub(crate) fn prefetch(self: &Arc<Self>) {
        Self::prefetch_lines(self, size_of::<MemSeries>() + 16);
    }

    /// Starts loading what a commit's in-order append touches: the first [`HOT_BYTES`].
    pub(crate) fn prefetch_for_commit(self: &Arc<Self>) {
        Self::prefetch_lines(self, HOT_BYTES);
    }

    /// Starts loading what an appender reads before the commit: the reference counts,
    /// `newest`, `tail` and `sref`, the first 40 bytes of the allocation (two lines at
    /// most).
    pub(crate) fn prefetch_for_append(self: &Arc<Self>) {
        Self::prefetch_lines(self, 40);
    }

    /// Prefetches the first `len` bytes of the series' allocation.
    fn prefetch_lines(self: &Arc<Self>, len: usize) {
        let start = Arc::as_ptr(self).cast::<u8>().wrapping_sub(16);
        for off in (0..len).step_by(64).chain([len - 1]) {
            crate::prefetch(start.wrapping_add(off));
        }
    }
}

/// How many series ahead a selection loads a series' memory while it reads their places.
const SERIES_AHEAD: usize = 8;

/// From this many matching series on, a selection sorts them and copies their chunk
/// views on two threads.
const PARALLEL_SELECT: usize = 2_048;

/// The chunk views in `[mint, maxt]` of each of `series` that has any there, with its
/// out-of-order samples and its newest sample (with `newest_only`, that sample alone
/// when the head knows it): the second half of [`Head::select`].
pub(crate) fn take_selected(
    series: &[Arc<MemSeries>],
    mint: i64,
    maxt: i64,
    newest_only: bool,
) -> Vec<SelectedSeries> {
    let mut out: Vec<SelectedSeries> = Vec::with_capacity(series.len());
    for s in series {
        let (chunks, ooo, last) = {
            let d = lock(&s.data);
            match d.last_sample(mint, maxt) {
                Some(last) if newest_only => (Vec::new(), Vec::new(), Some(last)),
                last => (d.chunks_in(mint, maxt), d.ooo_in(mint, maxt), last),
            }
        };
        if !chunks.is_empty() || !ooo.is_empty() || last.is_some() {
            out.push((s.labels.clone(), chunks, ooo, last));
        }
    }
    out
}

/// Sorts series by their labels; from [`PARALLEL_SELECT`] series on, in two halves on
/// two threads, then merged.
fn sort_by_labels(series: &mut Vec<Arc<MemSeries>>) {
    let by_labels = |a: &Arc<MemSeries>, b: &Arc<MemSeries>| a.labels.cmp(&b.labels);
    if series.len() < PARALLEL_SELECT {
        series.sort_by(by_labels);
        return;
    }
    let mid = series.len() / 2;
    let (front, back) = series.split_at_mut(mid);
    crate::helpers::join(|| front.sort_by(by_labels), || back.sort_by(by_labels));
    let back = series.split_off(mid);
    let front = std::mem::take(series);
    series.reserve_exact(front.len() + back.len());
    merge_by_labels(series, front, back);
}

/// Appends the series of two lists sorted by labels to `out`, in label order. Ties take
/// `a`'s first, as a stable sort of `a` then `b` would.
fn merge_by_labels(
    out: &mut Vec<Arc<MemSeries>>,
    a: impl IntoIterator<Item = Arc<MemSeries>>,
    b: impl IntoIterator<Item = Arc<MemSeries>>,
) {
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    while let (Some(x), Some(y)) = (a.peek(), b.peek()) {
        let next = if y.labels < x.labels {
            b.next()
        } else {
            a.next()
        };
        out.extend(next);
    }
    out.extend(a);
    out.extend(b);
}

/// Appends every sample of `it` to `out`, through the bulk decoder.
fn push_all(it: HeadIter<'_>, out: &mut Vec<(i64, f64)>) {
    out.reserve(usize::from(it.remaining()));
    it.decode_while(|t, v| {
        out.push((t, v));
        true
    });
}

/// The head's copy of `s`, which becomes `s` itself when the head has none.
fn intern(symbols: &mut HashSet<Arc<str>>, s: &Arc<str>) -> Arc<str> {
    match symbols.get(&**s) {
        Some(known) => Arc::clone(known),
        None => {
            symbols.insert(Arc::clone(s));
            Arc::clone(s)
        }
    }
}

/// A head series as selected: labels, chunks, out-of-order samples in the range, and its
/// newest sample when that is known without decoding (see [`SeriesData::last_sample`]).
pub(crate) type SelectedSeries = (Labels, Vec<ChunkView>, Vec<(i64, f64)>, Option<(i64, f64)>);

/// What a batch of appends stored: published to the head's atomics once per batch.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Batch {
    pub(crate) samples: u64,
    pub(crate) min_t: i64,
    pub(crate) max_t: i64,
}

impl Default for Batch {
    fn default() -> Self {
        Self {
            samples: 0,
            min_t: i64::MAX,
            max_t: i64::MIN,
        }
    }
}

/// Samples, encoded bytes and chunks held by the head.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ChunkStats {
    pub(crate) samples: u64,
    pub(crate) bytes: u64,
    pub(crate) chunks: u64,
}

/// Counters kept by the head.
#[derive(Debug, Default)]
pub(crate) struct HeadCounters {
    pub(crate) samples_appended: AtomicU64,
    pub(crate) samples_dropped: AtomicU64,
}

/// The series with one label hash: one, but for a hash collision.
#[derive(Debug)]
enum Bucket {
    One(Arc<MemSeries>),
    Many(Vec<Arc<MemSeries>>),
}

impl Bucket {
    /// Removes `s`; returns whether the bucket is now empty.
    fn remove(&mut self, s: &Arc<MemSeries>) -> bool {
        match self {
            Bucket::One(one) => Arc::ptr_eq(one, s),
            Bucket::Many(v) => {
                v.retain(|x| !Arc::ptr_eq(x, s));
                if v.len() == 1 {
                    let last = Arc::clone(&v[0]);
                    *self = Bucket::One(last);
                }
                v_is_empty(self)
            }
        }
    }

    fn find(&self, is_it: impl Fn(&Labels) -> bool) -> Option<&Arc<MemSeries>> {
        match self {
            Bucket::One(s) => is_it(&s.labels).then_some(s),
            Bucket::Many(v) => v.iter().find(|s| is_it(&s.labels)),
        }
    }

    fn push(&mut self, s: Arc<MemSeries>) {
        match self {
            Bucket::One(first) => *self = Bucket::Many(vec![Arc::clone(first), s]),
            Bucket::Many(v) => v.push(s),
        }
    }
}

fn v_is_empty(b: &Bucket) -> bool {
    matches!(b, Bucket::Many(v) if v.is_empty())
}

/// Series of one shard by label hash (no allocation besides the map's for a bucket of
/// one, which nearly every bucket is).
type SeriesByHash = HashMap<u64, Bucket, crate::labels::MixState>;

pub(crate) struct Head {
    shards: Box<[Mutex<SeriesByHash>]>,
    /// Every label name and value once; series labels point into it.
    symbols: Mutex<HashSet<Arc<str>>>,
    series: RwLock<Vec<Option<Arc<MemSeries>>>>,
    postings: RwLock<Postings>,
    num_series: AtomicU64,
    min_t: AtomicI64,
    max_t: AtomicI64,
    /// Where full chunks go.
    pub(crate) chunks: HeadChunks,
    /// Samples older than this are in blocks (older samples that still arrive are kept
    /// out of order and cut into blocks of their own).
    pub(crate) min_valid: AtomicI64,
    pub(crate) counters: HeadCounters,
    /// The generation of the last complete ranking of the series by labels (see
    /// [`Head::rank`]); zero before the first.
    ranked: AtomicU64,
    /// Series created since the last ranking began.
    unranked: AtomicU64,
    /// Held by the ranking under way.
    ranking: Mutex<()>,
    /// Truncations begun ([`Head::truncate_written`]), each after its block was listed.
    pub(crate) truncations: AtomicU64,
}

/// Limits on creating series: in total and per metric name.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct SeriesLimits {
    pub(crate) total: Option<usize>,
    pub(crate) per_metric: Option<usize>,
}

/// Which limit refused a new series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LimitHit {
    Total,
    PerMetric,
}

/// Without a limit a series is always found or created.
fn unreachable_without_limit(_: LimitHit) -> Arc<MemSeries> {
    panic!("find_or_create without a limit returned no series")
}

impl Head {
    pub(crate) fn new(chunks: HeadChunks) -> Self {
        Self {
            chunks,
            shards: (0..SHARDS)
                .map(|_| Mutex::new(HashMap::default()))
                .collect(),
            symbols: Mutex::new(HashSet::new()),
            series: RwLock::new(Vec::new()),
            postings: RwLock::new(Postings::default()),
            num_series: AtomicU64::new(0),
            min_t: AtomicI64::new(i64::MAX),
            max_t: AtomicI64::new(i64::MIN),
            min_valid: AtomicI64::new(i64::MIN),
            counters: HeadCounters::default(),
            ranked: AtomicU64::new(0),
            unranked: AtomicU64::new(0),
            ranking: Mutex::new(()),
            truncations: AtomicU64::new(0),
        }
    }

    /// Aligns chunks to block ranges of this length from now on.
    pub(crate) fn set_chunk_range(&mut self, range: i64) {
        self.chunks.range = range.max(1);
    }

    /// Finds the series with exactly these labels, creating it if absent. A given `sref`
    /// (WAL replay) is used as the new series' reference.
    pub(crate) fn get_or_create(&self, labels: &Labels, sref: Option<SeriesRef>) -> Arc<MemSeries> {
        self.get_or_create_with(
            labels.stable_hash(),
            |l| l == labels,
            || labels.clone(),
            sref,
        )
    }

    /// Finds the series with label hash `hash` for which `is_it` holds, creating it from
    /// `make()` if absent; `make` runs only for a new series.
    pub(crate) fn get_or_create_with(
        &self,
        hash: u64,
        is_it: impl Fn(&Labels) -> bool,
        make: impl FnOnce() -> Labels,
        sref: Option<SeriesRef>,
    ) -> Arc<MemSeries> {
        self.find_or_create(hash, is_it, make, sref, SeriesLimits::default())
            .unwrap_or_else(unreachable_without_limit)
    }

    /// Like [`Head::get_or_create_with`], for an appender: the reference it takes (under
    /// the shard lock) keeps the series from being collected until it lets go (see
    /// [`Head::collect_empty_series`]). Fails when the series would be new and a limit is
    /// reached.
    pub(crate) fn get_or_create_limited(
        &self,
        hash: u64,
        is_it: impl Fn(&Labels) -> bool,
        make: impl FnOnce() -> Labels,
        limits: SeriesLimits,
    ) -> Result<Arc<MemSeries>, LimitHit> {
        self.find_or_create(hash, is_it, make, None, limits)
    }

    fn find_or_create(
        &self,
        hash: u64,
        is_it: impl Fn(&Labels) -> bool,
        make: impl FnOnce() -> Labels,
        sref: Option<SeriesRef>,
        limits: SeriesLimits,
    ) -> Result<Arc<MemSeries>, LimitHit> {
        let mut shard = lock(&self.shards[(hash as usize) % SHARDS]);
        if let Some(s) = shard.get(&hash).and_then(|b| b.find(&is_it)) {
            let s = Arc::clone(s);
            drop(shard);
            if let Some(r) = sref {
                if r != s.sref {
                    // The WAL names this series by a second reference: alias it.
                    s.aliased.store(true, Ordering::Release);
                    self.put_series(r, Arc::clone(&s));
                }
            }
            return Ok(s);
        }
        if limits
            .total
            .is_some_and(|l| self.num_series.load(Ordering::Relaxed) >= l as u64)
        {
            return Err(LimitHit::Total);
        }
        let mut labels = make();
        if let Some(l) = limits.per_metric {
            let name = labels.get(crate::METRIC_NAME).unwrap_or_default();
            let have = self
                .postings
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .count(crate::METRIC_NAME, name);
            if have >= l as u64 {
                return Err(LimitHit::PerMetric);
            }
        }
        {
            let mut symbols = lock(&self.symbols);
            labels.intern(|s| intern(&mut symbols, s));
        }
        let mut table = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let r = sref.unwrap_or(SeriesRef(table.len() as u32));
        let s = Arc::new(MemSeries {
            sref: r,
            labels,
            logged: AtomicBool::new(sref.is_some()),
            aliased: AtomicBool::new(false),
            order: AtomicU64::new(0),
            newest: std::sync::atomic::AtomicI64::new(i64::MIN),
            tail: std::sync::atomic::AtomicUsize::new(0),
            data: Mutex::new(SeriesData::new()),
        });
        let idx = r.0 as usize;
        if table.len() <= idx {
            table.resize(idx + 1, None);
        }
        table[idx] = Some(Arc::clone(&s));
        drop(table);
        self.postings
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .add(r, &s.labels);
        match shard.get_mut(&hash) {
            Some(b) => b.push(Arc::clone(&s)),
            None => {
                shard.insert(hash, Bucket::One(Arc::clone(&s)));
            }
        }
        self.num_series.fetch_add(1, Ordering::Relaxed);
        // After the series is in the table: a ranking that reset the count finds it.
        self.unranked.fetch_add(1, Ordering::AcqRel);
        Ok(s)
    }

    fn put_series(&self, r: SeriesRef, s: Arc<MemSeries>) {
        let mut table = self.series.write().unwrap_or_else(PoisonError::into_inner);
        let idx = r.0 as usize;
        if table.len() <= idx {
            table.resize(idx + 1, None);
        }
        table[idx] = Some(s);
    }

    /// Replaces each string with the head's equal one, adding those it lacks: a block's
    /// labels then share the head's strings, and comparing a series' labels in both
    /// settles on pointers.
    pub(crate) fn intern_symbols(&self, strings: &mut [Arc<str>]) {
        let mut symbols = lock(&self.symbols);
        for s in strings {
            *s = intern(&mut symbols, s);
        }
    }

    /// The head's own handle of a label set equal to `labels`, when it has that series:
    /// a block that takes it shares the head's set, which then compares by address.
    pub(crate) fn shared_labels(&self, labels: &Labels) -> Option<Labels> {
        let hash = labels.stable_hash();
        let shard = lock(&self.shards[(hash as usize) % SHARDS]);
        shard
            .get(&hash)
            .and_then(|b| b.find(|l| l == labels))
            .map(|s| s.labels.clone())
    }

    pub(crate) fn series_by_ref(&self, r: SeriesRef) -> Option<Arc<MemSeries>> {
        let table = self.series.read().unwrap_or_else(PoisonError::into_inner);
        table.get(r.0 as usize).and_then(|s| s.clone())
    }

    /// A snapshot of the head for a fast restart: every series with its chunk references
    /// (after syncing the head chunk files), open chunk and out-of-order samples.
    pub(crate) fn write_snapshot(&self, out: &mut crate::snapshot::Writer) -> Result<u64, Error> {
        let files = self.chunks.sync()?;
        let segment_of = |m: &Arc<SegmentFile>| {
            files
                .iter()
                .find(|(x, _)| Arc::ptr_eq(x, m))
                .map(|&(_, i)| i)
        };
        let live = self.live_series();
        for s in &live {
            let snap = {
                let d = lock(&s.data);
                let (closed, open, ooo) = d.to_snapshot(&segment_of);
                SnapSeries {
                    sref: s.sref,
                    labels: s.labels.clone(),
                    last_t: d.last_t,
                    last_v: d.last_v,
                    closed,
                    open,
                    ooo,
                }
            };
            out.series(&snap)?;
        }
        Ok(live.len() as u64)
    }

    /// Fills an empty head from a snapshot, its chunk files opened in `files`; returns
    /// the number of series.
    pub(crate) fn restore(
        &self,
        snap: &mut crate::snapshot::Reader,
        files: &HashMap<u32, Arc<SegmentFile>>,
    ) -> Result<u64, Error> {
        let bad = |why: String| Error::Corrupt(format!("head snapshot: {why}"));
        let mut batch = Batch::default();
        let mut n = 0;
        while let Some(s) = snap.next_series()? {
            n += 1;
            let mut closed = Vec::with_capacity(s.closed.len());
            for c in s.closed {
                closed.push(match c {
                    SnapChunk::Mapped {
                        segment,
                        start,
                        len,
                        count,
                        min_t,
                        max_t,
                    } => {
                        let file = files
                            .get(&segment)
                            .ok_or_else(|| bad(format!("no chunk file {segment}")))?;
                        if u64::from(start) + u64::from(len) > file.len() {
                            return Err(bad(format!("a chunk past the end of file {segment}")));
                        }
                        HeadChunk::File {
                            file: Arc::clone(file),
                            min_t,
                            start,
                            span: crate::head_chunks::span(min_t, max_t),
                            len,
                            count,
                        }
                    }
                    SnapChunk::Mem {
                        count,
                        min_t,
                        max_t,
                        bytes,
                    } => HeadChunk::Mem(Arc::new(ClosedChunk::new(
                        bytes.into_boxed_slice(),
                        count,
                        min_t,
                        max_t,
                    ))),
                });
            }
            let mut data = SeriesData::new();
            data.closed = closed;
            for (t, v) in HeadIter::new(&s.open.1, s.open.0) {
                data.open.append(t, v);
            }
            data.open_end = range_end(data.open.min_time(), self.chunks.range);
            if !s.ooo.is_empty() {
                data.ooo = Some(Box::new(s.ooo));
            }
            data.last_t = s.last_t;
            data.last_v = s.last_v;
            if let Some(first) = data.first_time() {
                batch.samples += data.sample_count() as u64;
                batch.min_t = batch.min_t.min(first);
                batch.max_t = batch
                    .max_t
                    .max(s.last_t)
                    .max(data.ooo().last().map_or(i64::MIN, |o| o.0));
            }
            let series = self.get_or_create(&s.labels, Some(s.sref));
            *lock(&series.data) = data;
        }
        self.apply_batch(&batch);
        Ok(n)
    }

    /// Drops the series that hold no sample any more, unless something else holds them
    /// (an appender about to commit to one, a query, a snapshot): from the shard maps,
    /// the reference table, the postings and (for strings no other series uses) the
    /// symbol set. Returns how many went.
    ///
    /// What holds a series shows in its reference count: the table, its shard and the
    /// candidate list make three. Every other reference is taken from the table or a
    /// shard under their locks, which this holds while it looks, so none can appear
    /// between the look and the removal; one that goes away meanwhile only leaves the
    /// series for the next cut.
    fn collect_empty_series(&self, candidates: Vec<Arc<MemSeries>>) -> usize {
        let mut gone: Vec<Arc<MemSeries>> = Vec::new();
        for s in candidates {
            let hash = s.labels.stable_hash();
            let mut shard = lock(&self.shards[(hash as usize) % SHARDS]);
            let mut table = self.series.write().unwrap_or_else(PoisonError::into_inner);
            if Arc::strong_count(&s) > 3
                || s.aliased.load(Ordering::Acquire)
                || lock(&s.data).sample_count() > 0
            {
                continue;
            }
            if let Some(b) = shard.get_mut(&hash) {
                if b.remove(&s) {
                    shard.remove(&hash);
                }
            }
            if let Some(slot) = table.get_mut(s.sref.0 as usize) {
                if slot.as_ref().is_some_and(|x| Arc::ptr_eq(x, &s)) {
                    *slot = None;
                }
            }
            gone.push(s);
        }
        if gone.is_empty() {
            return 0;
        }
        {
            let mut postings = self
                .postings
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            for s in &gone {
                postings.remove(s.sref, &s.labels);
            }
        }
        self.num_series
            .fetch_sub(gone.len() as u64, Ordering::Relaxed);
        let n = gone.len();
        drop(gone);
        lock(&self.symbols).retain(|s| Arc::strong_count(s) > 1);
        n
    }

    /// Appends under the series lock, noting what it stored in `batch`; the head's
    /// counters and time range are updated once per batch by [`Head::apply_batch`].
    pub(crate) fn append_locked(&self, data: &mut SeriesData, t: i64, v: f64, batch: &mut Batch) {
        match data.append(t, v, &self.chunks) {
            AppendOutcome::Appended | AppendOutcome::OutOfOrder => {
                batch.samples += 1;
                batch.min_t = batch.min_t.min(t);
                batch.max_t = batch.max_t.max(t);
            }
            AppendOutcome::Duplicate => {}
        }
    }

    /// Publishes what a batch of appends stored.
    pub(crate) fn apply_batch(&self, batch: &Batch) {
        if batch.samples == 0 {
            return;
        }
        self.counters
            .samples_appended
            .fetch_add(batch.samples, Ordering::Relaxed);
        self.min_t.fetch_min(batch.min_t, Ordering::Relaxed);
        self.max_t.fetch_max(batch.max_t, Ordering::Relaxed);
    }

    /// Runs `f` with the series table read-locked: lookups by reference without
    /// reference-count traffic, for replay.
    pub(crate) fn with_table<T>(&self, f: impl FnOnce(&[Option<Arc<MemSeries>>]) -> T) -> T {
        let table = self.series.read().unwrap_or_else(PoisonError::into_inner);
        f(&table)
    }

    /// The distinct series matching `matchers`.
    pub(crate) fn matching(&self, matchers: &[Matcher]) -> Vec<Arc<MemSeries>> {
        // Only a series named by a second reference can come twice.
        let mut seen = HashSet::new();
        let mut out = self.matching_with_aliases(matchers);
        out.retain(|s| !s.aliased.load(Ordering::Acquire) || seen.insert(Arc::as_ptr(s)));
        out
    }

    /// [`Head::matching`] with a series once per reference that names it.
    fn matching_with_aliases(&self, matchers: &[Matcher]) -> Vec<Arc<MemSeries>> {
        let refs = self
            .postings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .select(matchers);
        let table = self.series.read().unwrap_or_else(PoisonError::into_inner);
        refs.iter()
            .filter_map(|r| table.get(r as usize).and_then(|s| s.clone()))
            .collect()
    }

    pub(crate) fn postings_count(&self, matchers: &[Matcher]) -> u64 {
        self.postings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .select(matchers)
            .len()
    }

    /// Removes the samples in `[mint, maxt]` of one series.
    pub(crate) fn delete_range(&self, s: &MemSeries, mint: i64, maxt: i64) {
        lock(&s.data).delete_range(mint, maxt, &self.chunks);
    }

    /// Every series of the head, once each (aliases left out).
    pub(crate) fn live_series(&self) -> Vec<Arc<MemSeries>> {
        let table = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut seen = HashSet::new();
        table
            .iter()
            .flatten()
            .filter(|s| seen.insert(Arc::as_ptr(s)))
            .cloned()
            .collect()
    }

    /// Drops the samples older than `t`, which a block now holds, from the series the cut
    /// wrote (`written`) and that are unchanged since (by their marks: commits go on while
    /// a block is written); the others keep them for the next cut, which writes them as
    /// an overlapping block.
    pub(crate) fn truncate_written(&self, t: i64, written: &HashMap<usize, CutMark>) {
        // Counted before any series loses a sample: a deferred selection that sees the
        // count unchanged after taking a series' chunks took them whole.
        self.truncations.fetch_add(1, Ordering::AcqRel);
        self.min_valid.fetch_max(t, Ordering::Relaxed);
        let mut min = i64::MAX;
        let mut empty = Vec::new();
        for s in self.live_series() {
            let mut d = lock(&s.data);
            let unchanged = written
                .get(&(Arc::as_ptr(&s) as usize))
                .is_some_and(|&mark| !d.changed_since(mark, t));
            if unchanged {
                d.truncate_before(t, &self.chunks);
            }
            match d.first_time() {
                Some(f) => min = min.min(f),
                None => {
                    drop(d);
                    empty.push(s);
                }
            }
        }
        let collected = self.collect_empty_series(empty);
        if collected > 0 {
            tracing::debug!(
                series = collected,
                "dropped series without samples from the head"
            );
        }
        // Head chunk files go once older than every sample kept.
        self.chunks.truncate_before(t.min(min));
        self.min_t.store(min, Ordering::Relaxed);
        if min == i64::MAX {
            self.max_t.store(i64::MIN, Ordering::Relaxed);
        }
    }

    /// The series `matchers` select with samples in `[mint, maxt]`, sorted by labels.
    /// With `newest_only`, a series whose newest sample in range is known comes without
    /// chunks, as that sample alone.
    pub(crate) fn select(
        &self,
        matchers: &[Matcher],
        mint: i64,
        maxt: i64,
        newest_only: bool,
    ) -> Vec<SelectedSeries> {
        let series = self.matching_sorted(matchers);
        let parallel = series.len() >= PARALLEL_SELECT;
        let take = |part: &[Arc<MemSeries>]| take_selected(part, mint, maxt, newest_only);
        if !parallel {
            return take(&series);
        }
        let (front, back) = series.split_at(series.len() / 2);
        let (mut out, back) = crate::helpers::join(|| take(front), || take(back));
        out.extend(back);
        out
    }

    /// The series matching `matchers`, sorted by labels, each once: the first half of
    /// [`Head::select`], whose second is [`take_selected`].
    pub(crate) fn matching_sorted(&self, matchers: &[Matcher]) -> Vec<Arc<MemSeries>> {
        let mut series = self.matching_with_aliases(matchers);
        self.sort_selected(&mut series);
        // An alias sorts next to the series it names.
        series.dedup_by(|a, b| Arc::ptr_eq(a, b));
        series
    }

    /// Sorts `series` by labels: those the last ranking placed by their place (one
    /// integer each), the others by their labels, merged in. Sorted as pointers: moving
    /// the selections themselves costs more than the comparisons.
    fn sort_selected(&self, series: &mut Vec<Arc<MemSeries>>) {
        let generation = self.ranked.load(Ordering::Acquire);
        let mut placed: Vec<(u32, Arc<MemSeries>)> = Vec::with_capacity(series.len());
        let mut rest = Vec::new();
        if generation > 0 {
            // Moved, not cloned: no locked instruction waits for the series loaded ahead.
            let mut all = std::mem::take(series).into_iter();
            while let Some(s) = all.next() {
                if let Some(ahead) = all.as_slice().get(SERIES_AHEAD) {
                    ahead.prefetch();
                }
                let order = s.order.load(Ordering::Relaxed);
                if order >> 32 == generation {
                    placed.push((order as u32, s));
                } else {
                    rest.push(s);
                }
            }
        } else {
            rest = std::mem::take(series);
        }
        if placed.is_empty() {
            sort_by_labels(&mut rest);
            *series = rest;
            return;
        }
        // Places are unique but for aliases, which are one series.
        placed.sort_unstable_by_key(|p| p.0);
        series.clear();
        if rest.is_empty() {
            series.extend(placed.into_iter().map(|p| p.1));
            return;
        }
        sort_by_labels(&mut rest);
        merge_by_labels(series, placed.into_iter().map(|p| p.1), rest);
    }

    /// Places every series in label order, so that a selection sorts them by one integer
    /// each rather than by their labels; a no-op when no series was created since the
    /// last ranking. Series created during a ranking wait for the next one.
    pub(crate) fn rank(&self) {
        let _one = lock(&self.ranking);
        let previous = self.ranked.load(Ordering::Acquire);
        // Reset before the series are listed: one created from here on counts for the
        // next ranking.
        if self.unranked.swap(0, Ordering::AcqRel) == 0 && previous > 0 {
            return;
        }
        let mut all = self.live_series();
        all.sort_unstable_by(|a, b| a.labels.cmp(&b.labels));
        let generation = previous + 1;
        for (place, s) in all.iter().enumerate() {
            s.order
                .store(generation << 32 | place as u64, Ordering::Relaxed);
        }
        self.ranked.store(generation, Ordering::Release);
    }

    /// Label names of the whole head, sorted.
    pub(crate) fn label_names(&self) -> Vec<String> {
        self.postings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .names()
    }

    /// Values of one label in the whole head, sorted.
    pub(crate) fn label_values(&self, name: &str) -> Vec<String> {
        self.postings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .values(name)
    }

    pub(crate) fn num_series(&self) -> u64 {
        self.num_series.load(Ordering::Relaxed)
    }

    pub(crate) fn time_range(&self) -> Option<(i64, i64)> {
        let (a, b) = (
            self.min_t.load(Ordering::Relaxed),
            self.max_t.load(Ordering::Relaxed),
        );
        (a <= b).then_some((a, b))
    }

    /// Total samples and encoded chunk bytes held.
    pub(crate) fn chunk_stats(&self) -> ChunkStats {
        let table = self.series.read().unwrap_or_else(PoisonError::into_inner);
        let mut out = ChunkStats::default();
        let mut seen = std::collections::HashSet::new();
        for s in table.iter().flatten() {
            if seen.insert(Arc::as_ptr(s)) {
                let d = lock(&s.data);
                out.samples += d.sample_count() as u64;
                out.bytes += d.chunk_bytes() as u64;
                out.chunks += d.closed.len() as u64 + u64::from(d.open.len() > 0);
            }
        }
        out
    }

    /// Cardinality figures of the head's index, top `limit` of each.
    pub(crate) fn postings_stats(&self, limit: usize) -> crate::postings::PostingsStats {
        self.postings
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .stats(limit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ls(pairs: &[(&str, &str)]) -> Labels {
        Labels::from_pairs(pairs.iter().copied())
    }

    #[test]
    fn an_in_order_append_touches_only_the_first_hot_bytes_of_a_series() {
        let head = Head::new(HeadChunks::in_memory());
        let s = head.get_or_create(&ls(&[("__name__", "up")]), None);
        let mut b = Batch::default();
        for i in 0..3 {
            head.append_locked(&mut lock(&s.data), i * 15_000, 1.5, &mut b);
        }
        // The allocation starts with the two reference counts.
        let start = Arc::as_ptr(&s) as usize - 2 * size_of::<usize>();
        let end_of = |p: usize, len: usize| p + len - start;
        let d = lock(&s.data);
        let OpenChunk::Decimal(open) = &d.open else {
            panic!("the open chunk is not decimal");
        };
        let ends = [
            end_of(&s.newest as *const _ as usize, 8),
            end_of(&s.tail as *const _ as usize, 8),
            end_of(&s.sref as *const _ as usize, 4),
            end_of(&s.logged as *const _ as usize, 1),
            // The lock's state precedes the data it guards.
            end_of(&*d as *const SeriesData as usize, 0),
            end_of(&d.last_t as *const _ as usize, 8),
            end_of(&d.last_v as *const _ as usize, 8),
            end_of(&d.open_end as *const _ as usize, 8),
            end_of(open.hot_end() as usize, 0),
        ];
        for (i, &e) in ends.iter().enumerate() {
            assert!(e <= HOT_BYTES, "field {i} ends at {e}, past {HOT_BYTES}");
        }
        assert!(end_of(&s.sref as *const _ as usize, 4) <= 40);
        // The cold fields follow.
        assert!(end_of(&d.closed as *const _ as usize, 0) >= HOT_BYTES);
        assert!(end_of(&s.labels as *const _ as usize, 0) >= HOT_BYTES);
    }

    #[test]
    fn postings_select_all_matcher_kinds() -> Result<(), crate::Error> {
        let head = Head::new(HeadChunks::in_memory());
        for (i, job) in ["api", "web", "db"].iter().enumerate() {
            let s = head.get_or_create(&ls(&[("__name__", "up"), ("job", job)]), None);
            let mut b = Batch::default();
            head.append_locked(&mut lock(&s.data), i as i64, 1.0, &mut b);
            head.apply_batch(&b);
        }
        let s = head.get_or_create(&ls(&[("__name__", "up")]), None);
        let mut b = Batch::default();
        head.append_locked(&mut lock(&s.data), 10, 1.0, &mut b);
        head.apply_batch(&b);
        let jobs = |ms: &[Matcher]| -> Vec<Option<String>> {
            head.select(ms, i64::MIN, i64::MAX, false)
                .into_iter()
                .map(|(l, _, _, _)| l.get("job").map(str::to_owned))
                .collect()
        };
        let up = Matcher::equal("__name__", "up");
        assert_eq!(
            jobs(&[up.clone(), Matcher::equal("job", "web")]),
            vec![Some("web".into())]
        );
        assert_eq!(
            jobs(&[up.clone(), Matcher::not_equal("job", "web")]).len(),
            3
        );
        assert_eq!(
            jobs(&[up.clone(), Matcher::regex("job", "a.*|d.")?]).len(),
            2
        );
        assert_eq!(jobs(&[up.clone(), Matcher::equal("job", "")]), vec![None]);
        assert_eq!(
            jobs(&[up.clone(), Matcher::not_regex("job", ".+")?]),
            vec![None]
        );
        assert!(jobs(&[Matcher::equal("job", "nope")]).is_empty());
        Ok(())
    }

    #[test]
    fn selections_sort_ranked_and_new_series_together() -> Result<(), crate::Error> {
        let head = Head::new(HeadChunks::in_memory());
        let create = |k: u64| {
            let l = ls(&[("__name__", "m"), ("k", &format!("{k:04}"))]);
            let s = head.get_or_create(&l, None);
            let mut b = Batch::default();
            head.append_locked(&mut lock(&s.data), 1_000, k as f64, &mut b);
            head.apply_batch(&b);
            l
        };
        let order = |ms: &[Matcher]| -> Vec<Labels> {
            head.select(ms, 0, 2_000, false)
                .into_iter()
                .map(|s| s.0)
                .collect()
        };
        let m = [Matcher::equal("__name__", "m")];
        // Created out of label order, then ranked.
        let mut want: Vec<Labels> = (0..300).map(|i| create((i * 37) % 300 * 2)).collect();
        head.rank();
        want.sort();
        assert_eq!(order(&m), want);
        // New series fall before, between and after the ranked ones; a second reference
        // to a ranked one and to a new one changes nothing.
        for k in [1, 3, 301, 599, 1_000, 1_001] {
            want.push(create(k));
        }
        head.get_or_create(&want[5], Some(SeriesRef(10_000)));
        head.get_or_create(&want[302], Some(SeriesRef(10_001)));
        want.sort();
        assert_eq!(order(&m), want);
        // 0000 to 0009 (even ones and two new ones) and 1000.
        assert_eq!(order(&[Matcher::regex("k", "000.|1000")?]).len(), 8);
        // A new ranking places them all; one with nothing new keeps the places.
        head.rank();
        let generation = head.ranked.load(Ordering::Acquire);
        assert_eq!(order(&m), want);
        head.rank();
        assert_eq!(head.ranked.load(Ordering::Acquire), generation);
        assert_eq!(order(&m), want);
        Ok(())
    }

    #[test]
    fn large_selections_are_sorted_once_each_on_two_threads() -> Result<(), crate::Error> {
        let head = Head::new(HeadChunks::in_memory());
        let n = PARALLEL_SELECT as u64 + 1_001;
        // Created in an order unrelated to label order.
        let mut want = Vec::new();
        for i in 0..n {
            let k = (i * 7_919) % n;
            let l = ls(&[("__name__", "m"), ("k", &format!("{k:x}")), ("z", "1")]);
            let s = head.get_or_create(&l, None);
            let mut b = Batch::default();
            head.append_locked(&mut lock(&s.data), 1_000, k as f64, &mut b);
            head.apply_batch(&b);
            want.push(l);
        }
        // Some named by a second reference too, as a write-ahead log replay does: each
        // still comes once. (After the others, whose references come one after another.)
        for (k, l) in want.iter().enumerate().step_by(100) {
            head.get_or_create(l, Some(SeriesRef(1_000_000 + k as u32)));
        }
        want.sort();
        let all = head.select(&[Matcher::equal("__name__", "m")], 0, 2_000, false);
        let got: Vec<Labels> = all.iter().map(|s| s.0.clone()).collect();
        assert_eq!(got.len(), want.len());
        if let Some(i) = (0..got.len()).find(|&i| got[i] != want[i]) {
            panic!("at {i}: {:?} against {:?}", got[i], want[i]);
        }
        // Each with its own samples.
        for (l, chunks, _, _) in &all {
            let k = u64::from_str_radix(l.get("k").unwrap_or_default(), 16).ok();
            let v: Vec<f64> = chunks.iter().flat_map(|c| c.iter()).map(|s| s.1).collect();
            assert_eq!(v, vec![k.unwrap_or(u64::MAX) as f64]);
        }
        // A small selection, on one thread, agrees.
        let few = head.select(&[Matcher::regex("k", "1.")?], 0, 2_000, false);
        let few: Vec<Labels> = few.into_iter().map(|s| s.0).collect();
        let expect: Vec<Labels> = want
            .iter()
            .filter(|l| {
                l.get("k")
                    .is_some_and(|k| k.len() == 2 && k.starts_with('1'))
            })
            .cloned()
            .collect();
        assert_eq!(few, expect);
        Ok(())
    }

    #[test]
    fn recent_samples_are_read_from_a_mark_of_the_open_chunk() {
        let head = Head::new(HeadChunks::in_memory());
        let s = head.get_or_create(&ls(&[("__name__", "x")]), None);
        // One closed chunk and 110 samples in the open one.
        let n = SAMPLES_PER_CHUNK as i64 + 110;
        for i in 0..n {
            let mut b = Batch::default();
            head.append_locked(&mut lock(&s.data), i * 15_000, (i * i) as f64, &mut b);
            head.apply_batch(&b);
        }
        let mut resumed = 0;
        for k in 0..n {
            let mint = k * 15_000;
            let sel = head.select(&[Matcher::equal("__name__", "x")], mint, i64::MAX, false);
            let got: Vec<(i64, f64)> = sel[0]
                .1
                .iter()
                .flat_map(|c| c.iter())
                .filter(|s| s.0 >= mint)
                .collect();
            let want: Vec<(i64, f64)> = (k..n).map(|i| (i * 15_000, (i * i) as f64)).collect();
            assert_eq!(got, want, "from sample {k}");
            resumed += sel[0]
                .1
                .iter()
                .filter(|c| matches!(c, ChunkView::Head(c) if c.from.is_some()))
                .count();
        }
        // The open chunk keeps its marks at 64 and 96: they serve windows from them on.
        assert_eq!(resumed, 110 - 64);
    }

    #[test]
    fn chunks_are_cut_and_read_across() {
        let head = Head::new(HeadChunks::in_memory());
        let s = head.get_or_create(&ls(&[("__name__", "x")]), None);
        for i in 0..1000 {
            let mut b = Batch::default();
            head.append_locked(&mut lock(&s.data), i * 15_000, i as f64, &mut b);
            head.apply_batch(&b);
        }
        let sel = head.select(
            &[Matcher::equal("__name__", "x")],
            15_000 * 100,
            15_000 * 300,
            false,
        );
        let chunks = &sel[0].1;
        assert!(chunks.len() >= 2);
        let n = chunks
            .iter()
            .flat_map(|c| c.iter())
            .filter(|(t, _)| (15_000 * 100..=15_000 * 300).contains(t))
            .count();
        assert_eq!(n, 201);
    }

    #[test]
    fn duplicates_and_out_of_order() {
        let hc = HeadChunks::in_memory();
        let mut d = SeriesData::new();
        assert_eq!(d.append(10, 1.0, &hc), AppendOutcome::Appended);
        assert_eq!(d.append(10, 1.0, &hc), AppendOutcome::Duplicate);
        assert_eq!(d.append(20, 3.0, &hc), AppendOutcome::Appended);
        // A new value for an existing timestamp wins; so does an older sample.
        assert_eq!(d.append(10, 2.0, &hc), AppendOutcome::OutOfOrder);
        assert_eq!(d.append(5, 4.0, &hc), AppendOutcome::OutOfOrder);
        assert_eq!(d.append(5, 4.0, &hc), AppendOutcome::Duplicate);
        assert_eq!(d.samples(), vec![(5, 4.0), (10, 2.0), (20, 3.0)]);
        // Writing the first value again is a write too: the last one wins.
        assert_eq!(d.append(10, 1.0, &hc), AppendOutcome::OutOfOrder);
        assert_eq!(d.samples(), vec![(5, 4.0), (10, 1.0), (20, 3.0)]);
        assert_eq!(d.first_time(), Some(5));
        d.truncate_before(10, &hc);
        assert_eq!(d.samples(), vec![(10, 1.0), (20, 3.0)]);
        d.truncate_before(21, &hc);
        assert!(d.samples().is_empty());
        assert_eq!(d.append(20, 3.0, &hc), AppendOutcome::Duplicate);
    }

    #[test]
    fn chunks_end_at_range_boundaries_and_a_cut_there_keeps_the_rest() {
        let mut hc = HeadChunks::in_memory();
        hc.range = 1_000;
        let mut d = SeriesData::new();
        // 15 samples a range: far fewer than a chunk holds.
        for t in (0..5_000).step_by(66) {
            assert_eq!(d.append(t, t as f64, &hc), AppendOutcome::Appended);
        }
        let spans: Vec<(i64, i64)> = d.closed.iter().map(|c| (c.min_t(), c.max_t())).collect();
        assert_eq!(spans.len(), 4, "{spans:?}");
        for (i, &(min, max)) in spans.iter().enumerate() {
            let start = i as i64 * 1_000;
            assert!(min >= start && max < start + 1_000, "{spans:?}");
        }
        assert!(d.open.min_time() >= 4_000);
        let before = d.samples();
        // Cut at a boundary: the chunks after it stay as they are, not written anew.
        let at = |c: &HeadChunk| match c {
            HeadChunk::Mem(c) => Arc::as_ptr(c) as usize,
            HeadChunk::File { .. } => 0,
        };
        let kept: Vec<usize> = d.closed[2..].iter().map(at).collect();
        d.truncate_before(2_000, &hc);
        let after: Vec<usize> = d.closed.iter().map(at).collect();
        assert_eq!(kept, after);
        let want: Vec<(i64, f64)> = before.into_iter().filter(|s| s.0 >= 2_000).collect();
        assert_eq!(d.samples(), want);
        // A head that starts again mid-range ends its first chunk at the next boundary.
        let mut d = SeriesData::new();
        for t in [2_500, 2_900, 3_000, 3_100] {
            d.append(t, 1.0, &hc);
        }
        assert_eq!(d.closed.len(), 1);
        assert_eq!((d.closed[0].min_t(), d.closed[0].max_t()), (2_500, 2_900));
    }

    #[test]
    fn samples_before_a_time_decode_only_the_chunks_that_start_before_it() {
        let mut hc = HeadChunks::in_memory();
        hc.range = 1_000;
        let mut d = SeriesData::new();
        for t in (0..5_000).step_by(66) {
            d.append(t, t as f64, &hc);
        }
        // Out-of-order samples, one on each side of the cut.
        d.append(1_001, -1.0, &hc);
        d.append(3_001, -3.0, &hc);
        let all = d.samples();
        for t in [
            0,
            1,
            999,
            1_000,
            1_001,
            2_500,
            4_000,
            4_001,
            4_999,
            5_000,
            i64::MAX,
        ] {
            let got = d.samples_before(t);
            let want: Vec<(i64, f64)> = all.iter().copied().filter(|s| s.0 < t).collect();
            let older: Vec<(i64, f64)> = got.iter().copied().filter(|s| s.0 < t).collect();
            assert_eq!(older, want, "before {t}");
            // Whole chunks after `t` are left out: at most the one holding `t` is read
            // past it, plus the out-of-order samples.
            assert!(
                got.len() <= want.len() + 17,
                "before {t}: {} samples",
                got.len()
            );
        }
        assert_eq!(all.len(), 78, "every sample, out-of-order ones included");
    }

    #[test]
    fn series_with_colliding_hashes_stay_apart() {
        let head = Head::new(HeadChunks::in_memory());
        let (a, b, c) = (ls(&[("x", "a")]), ls(&[("x", "b")]), ls(&[("x", "c")]));
        let sa = head.get_or_create_with(42, |l| *l == a, || a.clone(), None);
        let sb = head.get_or_create_with(42, |l| *l == b, || b.clone(), None);
        let sc = head.get_or_create_with(42, |l| *l == c, || c.clone(), None);
        assert!(sa.sref != sb.sref && sb.sref != sc.sref);
        let again = head.get_or_create_with(42, |l| *l == b, || b.clone(), None);
        assert_eq!(again.sref, sb.sref);
        assert_eq!(head.num_series(), 3);
    }

    #[test]
    fn merge_newest_wins_prefers_the_newer_list() {
        let older = [(1, 1.0), (2, 2.0), (4, 4.0)];
        let newer = [(0, 0.5), (2, 20.0), (5, 50.0)];
        assert_eq!(
            merge_newest_wins(&older, &newer),
            vec![(0, 0.5), (1, 1.0), (2, 20.0), (4, 4.0), (5, 50.0)]
        );
    }

    #[test]
    fn a_snapshot_keeps_chunks_on_the_heap_in_their_own_encoding() -> Result<(), crate::Error> {
        // Without chunk files every full chunk stays on the heap: decimal ones as their
        // varints, the others as XOR.
        let head = Head::new(HeadChunks::in_memory());
        type Value = fn(i64) -> f64;
        let decimal: Value = |k| k as f64 / 4.0;
        let xor: Value = |k| k as f64 * 0.1;
        for (name, value) in [("decimal", decimal), ("xor", xor)] {
            let s = head.get_or_create(&ls(&[("__name__", name)]), None);
            let mut b = Batch::default();
            for k in 0..300 {
                head.append_locked(&mut lock(&s.data), k * 15_000, value(k), &mut b);
            }
            head.apply_batch(&b);
        }
        let samples = |h: &Head| -> Vec<(String, Vec<(i64, u64)>)> {
            h.live_series()
                .iter()
                .map(|s| {
                    let d = lock(&s.data);
                    let bits = d.samples().iter().map(|&(t, v)| (t, v.to_bits())).collect();
                    (s.labels.to_string(), bits)
                })
                .collect()
        };
        let stored = |h: &Head| -> Vec<bool> {
            h.live_series()
                .iter()
                .flat_map(|s| {
                    let d = lock(&s.data);
                    d.closed
                        .iter()
                        .map(|c| matches!(c, HeadChunk::Mem(_)) && c.stored_count() & DECIMAL != 0)
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        let before = samples(&head);
        assert_eq!(before.len(), 2);
        assert!(before.iter().all(|(_, s)| s.len() == 300));
        let decimal_before = stored(&head);
        assert!(decimal_before.contains(&true) && decimal_before.contains(&false));

        let dir = tempfile::tempdir().map_err(|e| Error::io(std::path::Path::new("tmp"), e))?;
        let mut w = crate::snapshot::Writer::create(dir.path(), 0)?;
        head.write_snapshot(&mut w)?;
        w.finish()?;
        let Some(mut r) = crate::snapshot::Reader::open(dir.path())? else {
            panic!("no snapshot written");
        };
        let restored = Head::new(HeadChunks::in_memory());
        assert_eq!(restored.restore(&mut r, &HashMap::new())?, 2);
        assert_eq!(samples(&restored), before);
        assert_eq!(stored(&restored), decimal_before);
        Ok(())
    }
}
