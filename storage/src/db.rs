//! The public face of the store: [`Db`], [`Appender`] and [`Querier`].

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};

use crate::block::{
    block_name, write_block, write_block_with, write_tombstones, Block, BlockMeta, ChunkIter,
    ChunkView, NewBlock,
};
use crate::head::{
    lock, merge_newest_wins, AppendOutcome, Batch, CutMark, Head, LimitHit, MemSeries,
    SelectedSeries, SeriesLimits,
};
use crate::head_chunks::{self, HeadChunks, HeadIter, SegmentFile};
use crate::labels::Labels;
use crate::matcher::Matcher;
use crate::wal::{self, Record, ReplayReport, WalPosition, WalReader, WalWriter};
use crate::{Error, SeriesRef};

/// How the store is run.
#[derive(Debug, Clone)]
pub struct Options {
    /// fsync the WAL before a commit returns. On by default: a commit that returned
    /// survives power loss. Off trades that for throughput (the data still survives a crash
    /// of the process, not of the machine).
    pub wal_fsync: bool,
    /// Size at which a WAL segment is closed and the next one started.
    pub wal_segment_size: u64,
    /// Time range of a block cut from the head, milliseconds (Prometheus: 2 h). The head
    /// is cut once it spans one and a half of these.
    pub block_range_ms: i64,
    /// Blocks ending this long before the newest sample are deleted (Prometheus'
    /// `--storage.tsdb.retention.time`, 15 d). `None` keeps everything.
    pub retention_ms: Option<i64>,
    /// Oldest blocks are deleted while blocks, WAL and head chunk files together take more
    /// than this.
    pub retention_bytes: Option<u64>,
    /// Samples older than this before the newest sample in the head are refused.
    /// `None` (the default) accepts samples of any age: they are stored out of order and
    /// reach blocks at the next cut.
    pub ooo_window_ms: Option<i64>,
    /// Most series the head may hold: appends that would create more fail with
    /// [`Error::SeriesLimit`]; samples of existing series are still accepted.
    pub max_series: Option<usize>,
    /// Most series one metric name may have in the head: appends that would create more
    /// fail with [`Error::SeriesPerMetricLimit`].
    pub max_series_per_metric: Option<usize>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            wal_fsync: true,
            wal_segment_size: 128 << 20,
            block_range_ms: 2 * 3_600_000,
            retention_ms: Some(15 * 24 * 3_600_000),
            retention_bytes: None,
            ooo_window_ms: None,
            max_series: None,
            max_series_per_metric: None,
        }
    }
}

/// What the store holds, for status pages and `/metrics`.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub series: u64,
    pub samples: u64,
    pub chunk_bytes: u64,
    pub wal_bytes: u64,
    /// Bytes of full head chunks written to `chunks_head/`.
    pub head_chunk_file_bytes: u64,
    pub samples_appended: u64,
    /// Samples dropped at WAL replay because their series record was missing.
    pub samples_dropped: u64,
    /// Oldest and newest sample timestamp in the head, milliseconds.
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
    pub blocks: u64,
    pub block_bytes: u64,
    pub block_samples: u64,
}

/// A series' labels and samples.
pub type SeriesSamples = (Labels, Vec<(i64, f64)>);

/// The head's figures for `/api/v1/status/tsdb`.
#[derive(Debug, Clone, Default)]
pub struct TsdbStatus {
    pub num_series: u64,
    pub chunk_count: u64,
    pub min_time: Option<i64>,
    pub max_time: Option<i64>,
    pub postings: crate::postings::PostingsStats,
}

struct Wal {
    writer: Mutex<WalWriter>,
    /// Held while syncing, so that commits waiting meanwhile share the next fdatasync.
    syncing: Mutex<()>,
    /// Sequence number of the last write known to be on stable storage.
    durable: AtomicU64,
    fsync: bool,
}

impl Wal {
    /// [`Db::sync_wal`]; `dir` names the WAL in an error.
    fn sync_through(&self, unsynced: Unsynced, dir: &Path) -> Result<(), Error> {
        if self.is_durable(unsynced) {
            return Ok(());
        }
        let _syncing = lock(&self.syncing);
        // A sync that ended while this waited may have covered it.
        if !self.is_durable(unsynced) {
            // Writes up to `target` are in the current segment or in older segments,
            // which were synced when they were closed.
            let (target, current) = {
                let w = lock(&self.writer);
                (w.seq(), w.file())
            };
            current
                .sync_data()
                .map_err(|e| Error::io(&dir.join("wal"), e))?;
            self.durable.store(target, Ordering::Release);
        }
        Ok(())
    }

    fn is_durable(&self, unsynced: Unsynced) -> bool {
        self.durable.load(Ordering::Acquire) >= unsynced.0
    }
}

struct DbInner {
    dir: PathBuf,
    opts: Options,
    head: Head,
    wal: Wal,
    /// Persisted blocks, oldest first.
    blocks: RwLock<Vec<Arc<Block>>>,
    /// Held (shared) by a commit from its WAL write until its samples are in the head,
    /// and (exclusively) by a block cut, so that a cut sees every logged sample.
    apply_gate: RwLock<()>,
    /// Held while cutting blocks; one cut at a time.
    cutting: Mutex<()>,
    /// How many [`Db::maintain`] calls are running.
    maintaining: AtomicUsize,
    /// The sequence number of the next block written.
    next_seq: AtomicU64,
    replay: ReplayReport,
    /// Oldest WAL segment each live [`WalHold`] still needs.
    holds: Mutex<Vec<std::sync::Weak<AtomicU64>>>,
    _lock: File,
}

/// Keeps WAL segments from a segment on from being deleted by checkpoints, for a
/// [`WalReader`] that has not read them yet. Released when dropped.
#[derive(Debug)]
pub struct WalHold(Arc<AtomicU64>);

impl WalHold {
    /// Moves the hold to `segment`: older segments may now go.
    pub fn set(&self, segment: u64) {
        self.0.store(segment, Ordering::Release);
    }
}

/// A time-series database rooted at one directory.
///
/// Cheap to clone; all clones share the same store.
#[derive(Clone)]
pub struct Db {
    inner: Arc<DbInner>,
}

impl DbInner {
    /// The persisted blocks, oldest first (a copy of the list).
    fn block_list(&self) -> Vec<Arc<Block>> {
        self.blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The oldest WAL segment a live hold needs (`u64::MAX`: none).
    fn oldest_held(&self) -> u64 {
        lock(&self.holds)
            .iter()
            .filter_map(|w| w.upgrade())
            .map(|h| h.load(Ordering::Acquire))
            .min()
            .unwrap_or(u64::MAX)
    }
}

impl Db {
    /// Opens (creating if needed) the store in `dir`, replaying its WAL. Only one process
    /// may have a directory open at a time.
    pub fn open(dir: impl AsRef<Path>, opts: Options) -> Result<Db, Error> {
        let dir = dir.as_ref().to_owned();
        fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let lock_path = dir.join("lock");
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        if lock_file.try_lock().is_err() {
            return Err(Error::Locked(dir));
        }
        let hc_dir = dir.join("chunks_head");
        let (head, from_segment, snapshot_series) = load_snapshot(&hc_dir, opts.block_range_ms)?;
        let wal_dir = dir.join("wal");
        let (mut replay, next) = replay_wal(&wal_dir, from_segment, &head)?;
        // After the replay, so that the blocks' label sets of series the head has are the
        // head's own.
        let blocks = open_blocks(&dir.join("blocks"), &head)?;
        if let Some(max) = blocks.iter().map(|b| b.meta.max_time).max() {
            head.min_valid.store(max, Ordering::Relaxed);
        }
        let next_seq = blocks
            .iter()
            .flat_map(|b| b.meta.sources.iter().copied().chain([b.meta.seq]))
            .max()
            .map_or(1, |s| s + 1);
        replay.snapshot_series = snapshot_series;
        if let Some(c) = &replay.corruption {
            tracing::warn!(
                corruption = %c,
                dropped_bytes = replay.dropped_bytes,
                "wal replay stopped at a damaged record; the damaged tail was removed"
            );
        }
        let mut writer = WalWriter::create(&wal_dir, next, opts.wal_segment_size)?;
        writer.adopt(&replay);
        // Selections of the loaded series sort by place from the first query on.
        head.rank();
        let fsync = opts.wal_fsync;
        Ok(Db {
            inner: Arc::new(DbInner {
                dir,
                opts,
                blocks: RwLock::new(blocks),
                apply_gate: RwLock::new(()),
                cutting: Mutex::new(()),
                maintaining: AtomicUsize::new(0),
                next_seq: AtomicU64::new(next_seq),
                head,
                wal: Wal {
                    writer: Mutex::new(writer),
                    syncing: Mutex::new(()),
                    durable: AtomicU64::new(0),
                    fsync,
                },
                replay,
                holds: Mutex::new(Vec::new()),
                _lock: lock_file,
            }),
        })
    }

    /// The directory the store lives in.
    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    /// A reader of the WAL from `pos` on, for forwarding what is written.
    pub fn wal_reader(&self, pos: WalPosition) -> WalReader {
        WalReader::new(&self.inner.dir.join("wal"), pos)
    }

    /// Where the next WAL record will be written: a reader started here sees everything
    /// committed from now on.
    pub fn wal_end(&self) -> WalPosition {
        let wal = lock(&self.inner.wal.writer);
        WalPosition {
            segment: wal.index(),
            offset: wal.size(),
        }
    }

    /// Keeps WAL segments from `segment` on until the hold is moved or dropped.
    pub fn hold_wal(&self, segment: u64) -> WalHold {
        let hold = Arc::new(AtomicU64::new(segment));
        let mut holds = lock(&self.inner.holds);
        holds.retain(|w| w.strong_count() > 0);
        holds.push(Arc::downgrade(&hold));
        WalHold(hold)
    }

    /// The labels of a series of the head by the reference the WAL names it by.
    pub fn series_labels(&self, r: SeriesRef) -> Option<Labels> {
        self.inner.head.series_by_ref(r).map(|s| s.labels.clone())
    }

    /// What WAL replay found when the store was opened.
    pub fn replay_report(&self) -> &ReplayReport {
        &self.inner.replay
    }

    /// A new appender. Appenders are independent; use one per request or thread.
    pub fn appender(&self) -> Appender {
        Appender {
            db: Arc::clone(&self.inner),
            series: Vec::new(),
            local: RefIndex::default(),
            pending: Vec::new(),
            tails: Vec::new(),
            refs: Vec::new(),
            samples: Vec::new(),
        }
    }

    /// A querier over samples with timestamps in `[mint, maxt]` (milliseconds).
    pub fn querier(&self, mint: i64, maxt: i64) -> Querier {
        Querier {
            db: Arc::clone(&self.inner),
            mint,
            maxt,
        }
    }

    /// The head's figures for `/api/v1/status/tsdb`: series, chunks, time range and the
    /// top `limit` of each cardinality list.
    pub fn tsdb_status(&self, limit: usize) -> TsdbStatus {
        let head = &self.inner.head;
        let range = head.time_range();
        TsdbStatus {
            num_series: head.num_series(),
            chunk_count: head.chunk_stats().chunks,
            min_time: range.map(|r| r.0),
            max_time: range.map(|r| r.1),
            postings: head.postings_stats(limit),
        }
    }

    /// Blocks moved aside as corrupt (`blocks/corrupt-*`).
    pub fn corrupt_blocks(&self) -> u64 {
        fs::read_dir(self.inner.dir.join("blocks"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("corrupt-"))
                    .count() as u64
            })
            .unwrap_or(0)
    }

    /// How many head series match `matchers`: the postings lookup alone.
    pub fn head_postings_count(&self, matchers: &[Matcher]) -> u64 {
        self.inner.head.postings_count(matchers)
    }

    pub fn stats(&self) -> Stats {
        let head = &self.inner.head;
        let cs = head.chunk_stats();
        let (samples, chunk_bytes) = (cs.samples, cs.bytes);
        let wal_bytes = lock(&self.inner.wal.writer).disk_size();
        let range = head.time_range();
        let blocks = self.blocks();
        Stats {
            blocks: blocks.len() as u64,
            block_bytes: blocks.iter().map(|b| b.bytes).sum(),
            block_samples: blocks.iter().map(|b| b.meta.num_samples).sum(),
            series: head.num_series(),
            samples,
            chunk_bytes,
            wal_bytes,
            head_chunk_file_bytes: head.chunks.disk_size(),
            samples_appended: head.counters.samples_appended.load(Ordering::Relaxed),
            samples_dropped: head.counters.samples_dropped.load(Ordering::Relaxed),
            min_time: range.map(|r| r.0),
            max_time: range.map(|r| r.1),
        }
    }

    fn blocks(&self) -> Vec<Arc<Block>> {
        self.inner.block_list()
    }

    /// The persisted blocks, oldest first.
    pub fn block_metas(&self) -> Vec<BlockMeta> {
        self.blocks().iter().map(|b| b.meta.clone()).collect()
    }

    /// Whether the head spans enough to cut a block and no [`Db::maintain`] runs (a
    /// running one cuts while the head spans enough, and is not to be queued behind).
    pub fn needs_compaction(&self) -> bool {
        let range = self.inner.opts.block_range_ms.max(1);
        self.inner.maintaining.load(Ordering::Acquire) == 0
            && self
                .inner
                .head
                .time_range()
                .is_some_and(|(min, max)| max - min > range + range / 2)
    }

    /// Makes the WAL writes through `unsynced` durable (group commit: one fdatasync
    /// covers every write made before it started, so commits waiting meanwhile share
    /// it). Returns at once when they are already synced, or the WAL is not synced per
    /// commit (`wal_fsync` off).
    pub fn sync_wal(&self, unsynced: Unsynced) -> Result<(), Error> {
        self.inner.wal.sync_through(unsynced, &self.inner.dir)
    }

    /// Whether the WAL writes through `unsynced` are on stable storage already.
    pub fn is_durable(&self, unsynced: Unsynced) -> bool {
        self.inner.wal.is_durable(unsynced)
    }

    /// Cuts the head's oldest block ranges into blocks while the head spans more than one
    /// and a half block ranges, then checkpoints the WAL down to what the head still
    /// holds. Returns the blocks written. Ingest waits while a block is cut.
    pub fn compact_head(&self) -> Result<Vec<BlockMeta>, Error> {
        let inner = &self.inner;
        let Ok(_cutting) = inner.cutting.try_lock() else {
            return Ok(Vec::new());
        };
        let range = inner.opts.block_range_ms.max(1);
        let mut written = Vec::new();
        let mut previous = None;
        for round in 0.. {
            let gate = || {
                inner
                    .apply_gate
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
            };
            let Some((min, max)) = inner.head.time_range() else {
                break;
            };
            if max - min <= range + range / 2 {
                break;
            }
            let mut bmin = min.div_euclid(range) * range;
            let spanned = (min, max);
            // Commits go on while the block is written: a series that may have received
            // samples the block lacks meanwhile keeps its older samples in the head (see
            // `Head::truncate_written`), and the next round writes them. A range cut
            // again — those leftovers — or a fifth round is written with commits held
            // off, its range chosen anew under that hold, so the loop ends.
            let hold = previous == Some(bmin) || round >= 4;
            let started = std::time::Instant::now();
            let cpu_started = thread_cpu_time();
            let held = hold.then(gate);
            if hold {
                let Some((min, _)) = inner.head.time_range() else {
                    break;
                };
                bmin = min.div_euclid(range) * range;
            }
            let bmax = bmin + range;
            previous = Some(bmin);
            // A cut that completes a range of the first merge level is written together
            // with the blocks before it in that range: the merge that would follow,
            // without encoding the cut's samples twice.
            let partners = if hold {
                Vec::new()
            } else {
                self.cut_partners(bmin, bmax)
            };
            let new = NewBlock {
                min_time: partners.first().map_or(bmin, |b| b.meta.min_time),
                max_time: bmax,
                seq: inner.next_seq.fetch_add(1, Ordering::Relaxed),
                sources: partners.iter().map(|b| b.meta.seq).collect(),
            };
            let blocks_dir = inner.dir.join("blocks");
            let (dir, marks) =
                write_head_block(&inner.head, &blocks_dir, bmin, bmax, new, true, &partners)?;
            let wrote = started.elapsed();
            let wrote_cpu = thread_cpu_time().saturating_sub(cpu_started);
            let block = Arc::new(open_block(&inner.head, &dir)?);
            let waiting = std::time::Instant::now();
            let _gate = held.unwrap_or_else(gate);
            let mut wal = lock(&inner.wal.writer);
            written.push(block.meta.clone());
            {
                let mut list = inner.blocks.write().unwrap_or_else(PoisonError::into_inner);
                list.retain(|b| !partners.iter().any(|p| Arc::ptr_eq(b, p)));
                list.push(block);
                list.sort_by_key(|b| (b.meta.min_time, b.meta.seq));
            }
            inner.head.truncate_written(bmax, &marks);
            // The WAL now only needs what the head holds: the segments with nothing
            // newer than the head's oldest sample go, their series kept aside.
            let live = inner.head.live_series();
            let records: Vec<(SeriesRef, &Labels)> =
                live.iter().map(|s| (s.sref, &s.labels)).collect();
            let floor = inner.head.time_range().map_or(i64::MAX, |(min, _)| min);
            if !wal.drop_before(floor, &records, inner.oldest_held())? {
                // Segments replay would read are not known record by record (a start
                // from a head snapshot passed over them): the head is written anew.
                wal.checkpoint(
                    &records,
                    |i, out| {
                        let s = &live[i];
                        out.extend(
                            lock(&s.data)
                                .samples()
                                .into_iter()
                                .map(|(t, v)| (s.sref, t, v)),
                        );
                    },
                    inner.oldest_held(),
                )?;
            }
            // A head snapshot refers to the log just rewritten.
            crate::snapshot::remove(&inner.dir.join("chunks_head"))?;
            drop(wal);
            drop(_gate);
            let waited = if hold { started } else { waiting }.elapsed();
            // The new block is in place and listed: its partners go, as a merge's inputs.
            for b in &partners {
                remove_block(&blocks_dir, &b.meta)?;
                crate::fault::point("cut-partner-removed");
            }
            tracing::info!(
                block = %dir.display(),
                series = written.last().map_or(0, |m| m.num_series),
                min_time = bmin,
                max_time = bmax,
                merged_blocks = partners.len(),
                head_min = spanned.0,
                head_max = spanned.1,
                block_ms = wrote.as_millis() as u64,
                block_cpu_ms = wrote_cpu.as_millis() as u64,
                commits_waited_ms = waited.as_millis() as u64,
                "cut a block from the head"
            );
        }
        Ok(written)
    }

    /// The blocks a cut of `[bmin, bmax)` is written together with, oldest first: those
    /// filling the rest of the first merge level's range (three block ranges) the cut
    /// ends, when no block overlaps another, the cut or the range's start. Empty
    /// otherwise, or when that level is past the merge cap (see [`Db::compact_blocks`]).
    fn cut_partners(&self, bmin: i64, bmax: i64) -> Vec<Arc<Block>> {
        let base = self.inner.opts.block_range_ms.max(1);
        let level = base.saturating_mul(3);
        if level > self.merge_cap() {
            return Vec::new();
        }
        let start = bmin.div_euclid(level) * level;
        if start.checked_add(level) != Some(bmax) {
            return Vec::new();
        }
        let mut partners = Vec::new();
        let mut end = start;
        for b in self.blocks() {
            if b.meta.max_time <= start || b.meta.min_time >= bmax {
                continue;
            }
            if b.meta.min_time < end || b.meta.max_time > bmin {
                return Vec::new();
            }
            end = b.meta.max_time;
            partners.push(b);
        }
        partners
    }

    /// The largest range blocks are merged to: a tenth of the retention time (at least
    /// one block range), unbounded without one.
    fn merge_cap(&self) -> i64 {
        let base = self.inner.opts.block_range_ms.max(1);
        self.inner
            .opts
            .retention_ms
            .map_or(i64::MAX, |r| (r / 10).max(base))
    }

    /// Merges adjacent blocks into larger ones: ranges grow threefold per level (2 h, 6 h,
    /// 18 h, …), up to a tenth of the retention time. A range is merged once a newer
    /// block exists past its end. The merged block is in place before its inputs are
    /// deleted; leftovers of a crash in between are removed at the next start.
    pub fn compact_blocks(&self) -> Result<Vec<BlockMeta>, Error> {
        let inner = &self.inner;
        let Ok(_cutting) = inner.cutting.try_lock() else {
            return Ok(Vec::new());
        };
        let base = inner.opts.block_range_ms.max(1);
        let cap = self.merge_cap();
        let mut written = Vec::new();
        // Overlapping blocks (out-of-order samples cut after their range was persisted)
        // merge first, each connected group into one block.
        while let Some(group) = overlapping_group(&self.blocks()) {
            written.push(self.merge(&group)?);
        }
        let mut range = base.saturating_mul(3);
        while range <= cap {
            loop {
                let blocks = self.blocks();
                // Nothing older than this can still arrive: a range ending at or before it
                // is complete.
                let settled = blocks
                    .iter()
                    .map(|b| b.meta.max_time)
                    .chain([inner.head.min_valid.load(Ordering::Relaxed)])
                    .max()
                    .unwrap_or(i64::MIN);
                // The first aligned range with two or more blocks that is complete.
                let mut group: Vec<Arc<Block>> = Vec::new();
                let mut start = None;
                for b in &blocks {
                    let s = b.meta.min_time.div_euclid(range) * range;
                    if Some(s) != start {
                        if group.len() > 1 {
                            break;
                        }
                        group.clear();
                        start = Some(s);
                    }
                    if b.meta.max_time <= s + range {
                        group.push(Arc::clone(b));
                    }
                }
                let Some(s) = start else { break };
                if group.len() < 2 || settled < s + range {
                    break;
                }
                let meta = self.merge(&group)?;
                written.push(meta);
            }
            range = range.saturating_mul(3);
        }
        Ok(written)
    }

    /// Writes one block holding everything of `group` and swaps it in. Where inputs
    /// overlap, the sample of the later-written block wins.
    fn merge(&self, group: &[Arc<Block>]) -> Result<BlockMeta, Error> {
        let inner = &self.inner;
        let min = group.iter().map(|b| b.meta.min_time).min().unwrap_or(0);
        let max = group.iter().map(|b| b.meta.max_time).max().unwrap_or(0);
        let mut by_seq: Vec<&Arc<Block>> = group.iter().collect();
        by_seq.sort_by_key(|b| b.meta.seq);
        // Chunks are looked up, decoded and merged one series at a time as the new block
        // is written, so no input is copied whole.
        let mut refs = Vec::new();
        block_series_refs(by_seq.iter().copied(), &mut refs);
        refs.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
        let (labels, starts) = group_by_labels(&refs);
        let blocks_dir = inner.dir.join("blocks");
        let new = NewBlock {
            min_time: min,
            max_time: max,
            seq: inner.next_seq.fetch_add(1, Ordering::Relaxed),
            sources: group.iter().map(|b| b.meta.seq).collect(),
        };
        // Samples read since the inputs last gave their pages back.
        let mut read = 0usize;
        let dir = write_block_with(
            &blocks_dir,
            &labels,
            |i| {
                if read >= crate::block::RELEASE_EVERY / 2 {
                    group.iter().for_each(|b| b.release_pages());
                    read = 0;
                }
                let mut merged: Vec<(i64, f64)> = Vec::new();
                for &(_, k, r) in &refs[starts[i]..starts[i + 1]] {
                    let from = merged.len();
                    append_block_series(by_seq[k], r, &mut merged);
                    // An input overlapping the ones before it: its samples win.
                    if from > 0 && merged.len() > from && merged[from].0 <= merged[from - 1].0 {
                        let samples = merged.split_off(from);
                        merged = merge_newest_wins(&merged, &samples);
                    }
                }
                // About two bytes a sample in the inputs' chunks.
                read += 2 * merged.len();
                Cow::Owned(merged)
            },
            new,
        )?;
        let merged = Arc::new(open_block(&inner.head, &dir)?);
        let meta = merged.meta.clone();
        {
            let mut list = inner.blocks.write().unwrap_or_else(PoisonError::into_inner);
            list.retain(|b| !group.iter().any(|g| Arc::ptr_eq(b, g)));
            list.push(merged);
            list.sort_by_key(|b| (b.meta.min_time, b.meta.seq));
        }
        for b in group {
            remove_block(&blocks_dir, &b.meta)?;
            crate::fault::point("merge-input-removed");
        }
        tracing::info!(
            min_time = min,
            max_time = max,
            inputs = group.len(),
            series = labels.len(),
            "merged blocks"
        );
        Ok(meta)
    }

    /// Deletes whole blocks, oldest first: those past the retention time (relative to the
    /// newest sample), then while blocks, WAL and head chunk files exceed the retention
    /// size. Returns at once, deleting nothing, while a cut or merge runs.
    pub fn apply_retention(&self) -> Result<Vec<BlockMeta>, Error> {
        let inner = &self.inner;
        // Not while a cut or merge reads a block it would delete: the maintenance after
        // it applies the retention.
        let Ok(_cutting) = inner.cutting.try_lock() else {
            return Ok(Vec::new());
        };
        let newest = inner
            .head
            .time_range()
            .map(|r| r.1)
            .into_iter()
            .chain(self.blocks().iter().map(|b| b.meta.max_time - 1))
            .max();
        let Some(newest) = newest else {
            return Ok(Vec::new());
        };
        let mut deleted = Vec::new();
        loop {
            let blocks = self.blocks();
            let Some(oldest) = blocks.first() else { break };
            let too_old = inner
                .opts
                .retention_ms
                .is_some_and(|r| oldest.meta.max_time <= newest - r);
            let too_big = inner.opts.retention_bytes.is_some_and(|limit| {
                let wal = lock(&inner.wal.writer).disk_size();
                let head_chunks = inner.head.chunks.disk_size();
                blocks.iter().map(|b| b.bytes).sum::<u64>() + wal + head_chunks > limit
            });
            if !too_old && !too_big {
                break;
            }
            inner
                .blocks
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .retain(|b| !Arc::ptr_eq(b, oldest));
            remove_block(&inner.dir.join("blocks"), &oldest.meta)?;
            tracing::info!(
                min_time = oldest.meta.min_time,
                max_time = oldest.meta.max_time,
                reason = if too_old {
                    "retention time"
                } else {
                    "retention size"
                },
                "deleted a block"
            );
            deleted.push(oldest.meta.clone());
        }
        Ok(deleted)
    }

    /// Deletes the samples in `[mint, maxt]` of every series matching `matchers`: from
    /// the head (logged in the WAL, so a replay deletes them again) and, as tombstones,
    /// from blocks. Returns the number of series touched. Samples written afterwards are
    /// not affected.
    pub fn delete_series(&self, matchers: &[Matcher], mint: i64, maxt: i64) -> Result<u64, Error> {
        let inner = &self.inner;
        let _cutting = lock(&inner.cutting);
        let mut touched = 0u64;
        for b in self.blocks() {
            if b.meta.max_time <= mint || b.meta.min_time > maxt {
                continue;
            }
            let ids = b.matching(matchers);
            if ids.is_empty() {
                continue;
            }
            touched += ids.len() as u64;
            let mut tombstones = b.tombstones.clone();
            for id in ids {
                tombstones.entry(id).or_default().push((mint, maxt));
            }
            write_tombstones(&b.dir, &tombstones)?;
            let reopened = Arc::new(open_block(&inner.head, &b.dir)?);
            let mut list = inner.blocks.write().unwrap_or_else(PoisonError::into_inner);
            for slot in list.iter_mut() {
                if Arc::ptr_eq(slot, &b) {
                    *slot = Arc::clone(&reopened);
                }
            }
        }
        // No commit may sit between its WAL write and its head update while the deletion
        // is logged and applied, or a replay would order them differently.
        let _gate = inner
            .apply_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let series = inner.head.matching(matchers);
        if !series.is_empty() {
            let deletes: Vec<(SeriesRef, i64, i64)> =
                series.iter().map(|s| (s.sref, mint, maxt)).collect();
            {
                let mut w = lock(&inner.wal.writer);
                // The series records must precede the deletes at replay.
                let unlogged: Vec<(SeriesRef, &Labels)> = series
                    .iter()
                    .filter(|s| !s.logged.load(Ordering::Acquire))
                    .map(|s| (s.sref, &s.labels))
                    .collect();
                w.write(&unlogged, &[])?;
                for s in &series {
                    s.logged.store(true, Ordering::Release);
                }
                w.write_deletes(&deletes)?;
                w.sync()?;
            }
            for s in &series {
                inner.head.delete_range(s, mint, maxt);
            }
            touched += series.len() as u64;
        }
        tracing::info!(series = touched, mint, maxt, "deleted series data");
        Ok(touched)
    }

    /// Rewrites every block that has tombstones without the deleted samples. Returns the
    /// blocks written.
    pub fn clean_tombstones(&self) -> Result<Vec<BlockMeta>, Error> {
        let _cutting = lock(&self.inner.cutting);
        let mut written = Vec::new();
        for b in self.blocks() {
            if !b.tombstones.is_empty() {
                written.push(self.merge(std::slice::from_ref(&b))?);
            }
        }
        Ok(written)
    }

    /// Writes a snapshot of the store to `<data-dir>/snapshots/<name>/` and returns the
    /// name: every block hard-linked, and (with `with_head`) the head written as one more
    /// block. The snapshot directory can be opened as a data directory of its own.
    pub fn snapshot(&self, with_head: bool) -> Result<String, Error> {
        let inner = &self.inner;
        let _cutting = lock(&inner.cutting);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let name = format!(
            "{}-{:016x}",
            snapshot_time(now.as_secs() as i64),
            crc32c::crc32c(&now.as_nanos().to_le_bytes()) as u64
                | (u64::from(std::process::id()) << 32)
        );
        let root = inner.dir.join("snapshots").join(&name);
        let blocks_dir = root.join("blocks");
        fs::create_dir_all(&blocks_dir).map_err(|e| Error::io(&blocks_dir, e))?;
        for b in self.blocks() {
            let Some(dir_name) = b.dir.file_name() else {
                continue;
            };
            let target = blocks_dir.join(dir_name);
            fs::create_dir_all(&target).map_err(|e| Error::io(&target, e))?;
            for file in ["chunks", "index", "meta.json", "tombstones"] {
                let from = b.dir.join(file);
                if file == "tombstones" && !from.exists() {
                    continue;
                }
                fs::hard_link(&from, target.join(file)).map_err(|e| Error::io(&from, e))?;
            }
        }
        if with_head {
            if let Some((min, max)) = inner.head.time_range() {
                let new = NewBlock {
                    min_time: min,
                    max_time: max.saturating_add(1),
                    seq: inner.next_seq.fetch_add(1, Ordering::Relaxed),
                    sources: Vec::new(),
                };
                write_head_block(
                    &inner.head,
                    &blocks_dir,
                    min,
                    max.saturating_add(1),
                    new,
                    false,
                    &[],
                )?;
            }
        }
        crate::wal::sync_dir(&blocks_dir)?;
        tracing::info!(snapshot = %root.display(), "wrote a snapshot");
        Ok(name)
    }

    /// Writes samples straight into blocks, past the head and the WAL: backfill of large
    /// volumes (`strata import`). Samples are split by aligned block range, sorted, and a
    /// series' timestamp given twice keeps the value given last. The blocks may overlap
    /// existing ones; [`Db::compact_blocks`] merges them. Returns the blocks written.
    pub fn write_blocks(&self, series: Vec<SeriesSamples>) -> Result<Vec<BlockMeta>, Error> {
        let inner = &self.inner;
        let _cutting = lock(&inner.cutting);
        let range = inner.opts.block_range_ms.max(1);
        let mut by_range: std::collections::BTreeMap<i64, Vec<SeriesSamples>> =
            std::collections::BTreeMap::new();
        for (labels, mut samples) in series {
            if labels.is_empty() {
                return Err(Error::EmptyLabels);
            }
            // Stable: among equal timestamps the last given stays last, and wins below.
            samples.sort_by_key(|s| s.0);
            let mut deduped: Vec<(i64, f64)> = Vec::with_capacity(samples.len());
            for s in samples {
                match deduped.last_mut() {
                    Some(last) if last.0 == s.0 => *last = s,
                    _ => deduped.push(s),
                }
            }
            let mut start = 0;
            while start < deduped.len() {
                let bmin = deduped[start].0.div_euclid(range) * range;
                let end =
                    start + deduped[start..].partition_point(|s| s.0 < bmin.saturating_add(range));
                by_range
                    .entry(bmin)
                    .or_default()
                    .push((labels.clone(), deduped[start..end].to_vec()));
                start = end;
            }
        }
        let blocks_dir = inner.dir.join("blocks");
        let mut written = Vec::new();
        for (bmin, mut list) in by_range {
            list.sort_by(|a, b| a.0.cmp(&b.0));
            let new = NewBlock {
                min_time: bmin,
                max_time: bmin.saturating_add(range),
                seq: inner.next_seq.fetch_add(1, Ordering::Relaxed),
                sources: Vec::new(),
            };
            let dir = write_block(&blocks_dir, &list, new)?;
            let block = Arc::new(open_block(&inner.head, &dir)?);
            written.push(block.meta.clone());
            let mut blocks = inner.blocks.write().unwrap_or_else(PoisonError::into_inner);
            blocks.push(block);
            blocks.sort_by_key(|b| (b.meta.min_time, b.meta.seq));
        }
        Ok(written)
    }

    /// Cuts blocks from the head, merges blocks and applies retention.
    pub fn maintain(&self) -> Result<(), Error> {
        struct Running<'a>(&'a AtomicUsize);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        self.inner.maintaining.fetch_add(1, Ordering::AcqRel);
        let _running = Running(&self.inner.maintaining);
        self.compact_head()?;
        self.compact_blocks()?;
        self.apply_retention()?;
        self.inner.head.rank();
        Ok(())
    }

    /// Flushes the WAL to stable storage and writes a snapshot of the head, so that the
    /// next start loads the head instead of replaying the WAL. Called on shutdown.
    /// Writes after it are still safe: they go to a WAL segment the snapshot does not
    /// cover, and are replayed on top of it.
    pub fn close(&self) -> Result<(), Error> {
        let inner = &self.inner;
        let _cutting = lock(&inner.cutting);
        let _gate = inner
            .apply_gate
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut wal = lock(&inner.wal.writer);
        wal.sync()?;
        let started = std::time::Instant::now();
        let mut out = crate::snapshot::Writer::create(&inner.dir.join("chunks_head"), wal.index())?;
        let series = inner.head.write_snapshot(&mut out)?;
        out.finish()?;
        wal.start_segment()?;
        tracing::info!(
            series,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "wrote the head snapshot"
        );
        Ok(())
    }
}

/// Series whose memory an appender prefetches at once (see [`MemSeries::prefetch`]).
const GROUP: usize = 8;
/// How many series ahead [`Appender::append_refs`] loads what it reads of a series.
/// Nothing there waits for the loads in flight (no locked instruction), so they overlap.
const APPEND_AHEAD: usize = 16;

/// An appender's entries by series reference: an open-addressing table (linear probing,
/// at most half full) of `(reference, index + 1)`, `0` marking a free slot. Eight bytes a
/// series and one multiplication to find its slot: a request's worth fits the L1 cache.
#[derive(Default)]
struct RefIndex {
    /// A power of two in length, or empty.
    slots: Vec<(u32, u32)>,
    len: usize,
}

impl RefIndex {
    fn home(&self, r: SeriesRef) -> usize {
        let spread = u64::from(r.0).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
        (spread as usize) & (self.slots.len() - 1)
    }

    #[inline]
    fn get(&self, r: SeriesRef) -> Option<usize> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = self.home(r);
        loop {
            let (k, v) = self.slots[i];
            if v == 0 {
                return None;
            }
            if k == r.0 {
                return Some(v as usize - 1);
            }
            i = (i + 1) & mask;
        }
    }

    /// Records `r` at `idx`; `r` must not be in the table yet.
    fn insert(&mut self, r: SeriesRef, idx: usize) {
        self.reserve(1);
        // Indexes count series of one appender, which holds fewer than u32::MAX.
        self.place((r.0, (idx as u32).saturating_add(1)));
        self.len += 1;
    }

    /// Puts `entry` in the first free slot from its reference's home.
    fn place(&mut self, entry: (u32, u32)) {
        let mask = self.slots.len() - 1;
        let mut i = self.home(SeriesRef(entry.0));
        while self.slots[i].1 != 0 {
            i = (i + 1) & mask;
        }
        self.slots[i] = entry;
    }

    /// Makes room for `more` entries without growing.
    fn reserve(&mut self, more: usize) {
        let want = ((self.len + more) * 2).next_power_of_two().max(16);
        if want <= self.slots.len() {
            return;
        }
        let old = std::mem::replace(&mut self.slots, vec![(0, 0); want]);
        for entry in old.into_iter().filter(|s| s.1 != 0) {
            self.place(entry);
        }
    }
}

/// An appender's [`Appender::push`], on its parts: checks the sample at `t` against the
/// series `s` (the appender's entry `idx`) and what the appender holds for it, and
/// takes it.
#[allow(clippy::too_many_arguments)]
#[inline]
fn push_sample(
    db: &DbInner,
    pending: &mut [i64],
    tails: &mut [usize],
    samples: &mut Vec<(u32, i64, f64)>,
    s: &MemSeries,
    idx: usize,
    t: i64,
    v: f64,
) -> Result<(), Error> {
    let stored = match s.takes_without_lock(t) {
        Some(tail) => {
            tails[idx] = tail;
            AppendOutcome::Appended
        }
        None => {
            let data = lock(&s.data);
            tails[idx] = data.tail();
            data.check(t, v)
        }
    };
    let waiting = pending[idx];
    let outcome = match stored {
        _ if waiting == i64::MIN => stored,
        AppendOutcome::Appended if t > waiting => AppendOutcome::Appended,
        _ => AppendOutcome::OutOfOrder,
    };
    if outcome == AppendOutcome::Duplicate {
        return Ok(());
    }
    if let Some(window) = db.opts.ooo_window_ms {
        let head = &db.head;
        let persisted = t < head.min_valid.load(Ordering::Relaxed);
        if persisted || outcome == AppendOutcome::OutOfOrder {
            let oldest = head
                .time_range()
                .map_or(i64::MIN, |r| r.1.saturating_sub(window));
            if t < oldest {
                return Err(Error::OutOfBounds {
                    labels: s.labels.to_string(),
                    t,
                    oldest,
                });
            }
        }
    }
    pending[idx] = waiting.max(t);
    samples.push((idx as u32, t, v));
    Ok(())
}

/// Collects samples and writes them to the store atomically on [`Appender::commit`].
///
/// Nothing appended is visible to queries or durable until `commit` returns `Ok`. Dropping
/// an appender without committing discards its samples.
pub struct Appender {
    db: Arc<DbInner>,
    series: Vec<Arc<MemSeries>>,
    local: RefIndex,
    /// Newest timestamp waiting for commit per entry of `series` (`i64::MIN`: none).
    pending: Vec<i64>,
    /// Where each entry of `series` appends next, as last seen: prefetched by the commit.
    tails: Vec<usize>,
    /// The reference of each entry of `series`, side by side for the WAL record: read
    /// there for every sample, it would otherwise load each series' memory again.
    refs: Vec<SeriesRef>,
    samples: Vec<(u32, i64, f64)>,
}

/// What a commit wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitStats {
    pub samples: usize,
    pub new_series: usize,
}

/// A commit's WAL write that may not be on stable storage yet ([`Db::sync_wal`]).
/// Ordered: syncing through one covers every earlier one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
#[must_use = "the samples are not durable until the WAL is synced through this"]
pub struct Unsynced(u64);

impl Appender {
    /// Adds a sample for the series with `labels` (sorted, unique names, non-empty),
    /// returning the series' reference for [`Appender::append_ref`].
    pub fn append(&mut self, labels: &Labels, t: i64, v: f64) -> Result<SeriesRef, Error> {
        if labels.is_empty() {
            return Err(Error::EmptyLabels);
        }
        let s = self
            .db
            .head
            .get_or_create_limited(
                labels.stable_hash(),
                |l| l == labels,
                || labels.clone(),
                self.limits(),
            )
            .map_err(|k| self.limit_error(k, labels))?;
        self.append_series(s, t, v)
    }

    /// Like [`Appender::append`], for labels given as `(name, value)` pairs sorted by name
    /// with unique names and non-empty values (what [`Labels`] would hold). Nothing is
    /// allocated when the series exists.
    pub fn append_pairs(
        &mut self,
        pairs: &[(&str, &str)],
        t: i64,
        v: f64,
    ) -> Result<SeriesRef, Error> {
        if pairs.is_empty() {
            return Err(Error::EmptyLabels);
        }
        debug_assert!(pairs.windows(2).all(|w| w[0].0 < w[1].0));
        let hash = crate::labels::hash_pairs(pairs.iter().copied());
        let s = self
            .db
            .head
            .get_or_create_limited(
                hash,
                |l| l.eq_pairs(pairs),
                || Labels::from_pairs(pairs.iter().copied()),
                self.limits(),
            )
            .map_err(|k| self.limit_error(k, &Labels::from_pairs(pairs.iter().copied())))?;
        self.append_series(s, t, v)
    }

    fn limits(&self) -> SeriesLimits {
        SeriesLimits {
            total: self.db.opts.max_series,
            per_metric: self.db.opts.max_series_per_metric,
        }
    }

    fn limit_error(&self, kind: LimitHit, labels: &Labels) -> Error {
        match kind {
            LimitHit::Total => Error::SeriesLimit {
                labels: labels.to_string(),
                limit: self.db.opts.max_series.unwrap_or(0),
            },
            LimitHit::PerMetric => Error::SeriesPerMetricLimit {
                labels: labels.to_string(),
                metric: labels
                    .get(crate::METRIC_NAME)
                    .unwrap_or_default()
                    .to_string(),
                limit: self.db.opts.max_series_per_metric.unwrap_or(0),
            },
        }
    }

    fn append_series(&mut self, s: Arc<MemSeries>, t: i64, v: f64) -> Result<SeriesRef, Error> {
        let r = s.sref;
        let idx = match self.local.get(r) {
            Some(i) => i,
            None => self.add_series(s),
        };
        self.push(idx, t, v)?;
        Ok(r)
    }

    /// Adds a sample for a series already returned by [`Appender::append`].
    pub fn append_ref(&mut self, r: SeriesRef, t: i64, v: f64) -> Result<(), Error> {
        let idx = match self.local.get(r) {
            Some(i) => i,
            None => {
                let s = self
                    .db
                    .head
                    .series_by_ref(r)
                    .ok_or(Error::UnknownSeries(r.0))?;
                self.add_series(s)
            }
        };
        self.push(idx, t, v)
    }

    /// Appends the samples of series known by reference, in order: `(reference,
    /// samples)`. Stops at the first reference the head does not know (it may have
    /// dropped the series) and returns its position, for the caller to append that one by
    /// labels and go on with the rest; `None` once all are appended. Like
    /// [`Appender::append_ref`], with one lock of the series table for all of them and
    /// the memory of eight series at a time loaded together (see
    /// [`MemSeries::prefetch`]).
    pub fn append_refs(
        &mut self,
        items: &[(SeriesRef, &[(i64, f64)])],
    ) -> Result<Option<usize>, Error> {
        let db = Arc::clone(&self.db);
        db.head.with_table(|table| {
            // The series new to this appender, taken into it (their reference counts
            // raised) after the loop: a locked instruction waits for the cache misses
            // in flight, so the loop has none, and its loads of the next series overlap.
            let mut taken: Vec<&Arc<MemSeries>> = Vec::with_capacity(items.len());
            let outcome = (|| {
                // Each series' first line is loaded APPEND_AHEAD series before its turn.
                let ahead = |i: usize| {
                    if let Some(Some(s)) = items.get(i).and_then(|x| table.get(x.0 .0 as usize)) {
                        s.prefetch_for_append();
                    }
                };
                (0..APPEND_AHEAD).for_each(ahead);
                for (i, &(r, samples)) in items.iter().enumerate() {
                    ahead(i + APPEND_AHEAD);
                    let (idx, s) = match self.local.get(r) {
                        Some(at) => match self.series.get(at) {
                            Some(s) => (at, &**s),
                            None => (at, &**taken[at - self.series.len()]),
                        },
                        None => {
                            let Some(Some(s)) = table.get(r.0 as usize) else {
                                return Ok(Some(i));
                            };
                            taken.push(s);
                            (self.add_entry(r, s.sref), &**s)
                        }
                    };
                    for &(t, v) in samples {
                        push_sample(
                            &self.db,
                            &mut self.pending,
                            &mut self.tails,
                            &mut self.samples,
                            s,
                            idx,
                            t,
                            v,
                        )?;
                    }
                }
                Ok(None)
            })();
            self.series.extend(taken.into_iter().map(Arc::clone));
            outcome
        })
    }

    /// Takes a series into the appender (holding it keeps the head from dropping it):
    /// its index.
    fn add_series(&mut self, s: Arc<MemSeries>) -> usize {
        let idx = self.add_entry(s.sref, s.sref);
        self.series.push(s);
        idx
    }

    /// The entries of a series but its place in `series`, which the caller fills: its
    /// index. `r` is the reference the caller named it by, `sref` its own (the WAL may
    /// know a series by a second reference; its records name the series' own).
    fn add_entry(&mut self, r: SeriesRef, sref: SeriesRef) -> usize {
        let idx = self.pending.len();
        self.pending.push(i64::MIN);
        self.tails.push(0);
        self.refs.push(sref);
        self.local.insert(r, idx);
        idx
    }

    fn push(&mut self, idx: usize, t: i64, v: f64) -> Result<(), Error> {
        push_sample(
            &self.db,
            &mut self.pending,
            &mut self.tails,
            &mut self.samples,
            &self.series[idx],
            idx,
            t,
            v,
        )
    }

    /// Makes room for `series` more series and `samples` more samples, so that a large
    /// write does not grow the appender's tables step by step.
    pub fn reserve(&mut self, series: usize, samples: usize) {
        self.series.reserve(series);
        self.pending.reserve(series);
        self.tails.reserve(series);
        self.refs.reserve(series);
        self.local.reserve(series);
        self.samples.reserve(samples);
    }

    /// Number of samples waiting for commit.
    pub fn pending(&self) -> usize {
        self.samples.len()
    }

    /// Writes the samples to the WAL (synced per the fsync policy) and then to the head.
    /// When this returns `Ok`, the samples survive a crash. When it fails in the sync,
    /// they may be in the head (and answer queries) without being durable.
    pub fn commit(self) -> Result<CommitStats, Error> {
        let db = Arc::clone(&self.db);
        let (stats, unsynced) = self.commit_unsynced()?;
        db.wal.sync_through(unsynced, &db.dir)?;
        Ok(stats)
    }

    /// [`Appender::commit`] without waiting for the WAL sync: the samples are in the WAL
    /// file and in the head, and survive a crash of the process but not yet of the
    /// machine until [`Db::sync_wal`] with the returned [`Unsynced`] (or a later one)
    /// succeeds. A writer that acknowledges only after that sync can hand the wait to
    /// another thread and meanwhile decode its next request.
    pub fn commit_unsynced(self) -> Result<(CommitStats, Unsynced), Error> {
        if self.samples.is_empty() {
            return Ok((CommitStats::default(), Unsynced(0)));
        }
        let db = &self.db;
        let wal_samples: Vec<(SeriesRef, i64, f64)> = self
            .samples
            .iter()
            .map(|&(i, t, v)| (self.refs[i as usize], t, v))
            .collect();
        let new_series;
        // Until the samples are in the head, a block cut must wait: it would otherwise
        // checkpoint the WAL without them.
        let _gate = db.apply_gate.read().unwrap_or_else(PoisonError::into_inner);
        let seq = {
            let mut w = lock(&db.wal.writer);
            // Series first logged by this commit. Checked under the WAL lock so that
            // exactly one commit writes each series record, before any of its samples.
            let fresh: Vec<&Arc<MemSeries>> = self
                .series
                .iter()
                .filter(|s| !s.logged.load(Ordering::Acquire))
                .collect();
            let records: Vec<(SeriesRef, &Labels)> =
                fresh.iter().map(|s| (s.sref, &s.labels)).collect();
            w.write(&records, &wal_samples)?;
            for s in &fresh {
                s.logged.store(true, Ordering::Release);
            }
            new_series = fresh.len();
            w.seq()
        };
        let mut batch = Batch::default();
        let mut i = 0;
        // Runs of samples of series whose open chunk an append would write out (from the
        // sample that would cut it): appended last, sorted by target and then by labels,
        // so that the chunks this commit fills lie in the head chunk file as a dashboard
        // reads them (one metric of each target) rather than in the order the request
        // listed the series (say, every metric of a network device before the next
        // device's).
        let mut cuts: Vec<std::ops::Range<usize>> = Vec::new();
        let mut held: Vec<bool> = Vec::new();
        // Samples arrive grouped by series; the next GROUP series are prefetched together.
        let mut fetched = 0;
        while i < self.samples.len() {
            if i >= fetched {
                let mut seen = 0;
                let mut last = u32::MAX;
                fetched = i;
                while fetched < self.samples.len() && seen < GROUP {
                    let idx = self.samples[fetched].0;
                    if idx != last {
                        self.series[idx as usize].prefetch_for_commit();
                        crate::prefetch(self.tails[idx as usize] as *const u8);
                        last = idx;
                        seen += 1;
                    }
                    fetched += 1;
                }
            }
            let idx = self.samples[i].0;
            let s = &self.series[idx as usize];
            if held.get(idx as usize).is_some_and(|&h| h) {
                let end = self.run_end(i);
                cuts.push(i..end);
                i = end;
                continue;
            }
            let mut data = lock(&s.data);
            while i < self.samples.len() && self.samples[i].0 == idx {
                let (_, t, v) = self.samples[i];
                if data.cuts_before(t) {
                    let end = self.run_end(i);
                    cuts.push(i..end);
                    if held.is_empty() {
                        held = vec![false; self.series.len()];
                    }
                    held[idx as usize] = true;
                    i = end;
                    break;
                }
                db.head.append_locked(&mut data, t, v, &mut batch);
                i += 1;
            }
            s.publish(&data);
        }
        // A series' runs keep their order. About one commit in 120 sorts (a series cuts
        // a chunk every 120 samples), up to all of its request's series.
        if !cuts.is_empty() {
            let mut keyed: Vec<(&str, &Labels, usize, usize)> = cuts
                .iter()
                .map(|run| {
                    let labels = &self.series[self.samples[run.start].0 as usize].labels;
                    (
                        labels.get("instance").unwrap_or(""),
                        labels,
                        run.start,
                        run.end,
                    )
                })
                .collect();
            keyed.sort_unstable();
            cuts.clear();
            cuts.extend(keyed.into_iter().map(|k| k.2..k.3));
        }
        for run in cuts {
            let s = &self.series[self.samples[run.start].0 as usize];
            let mut data = lock(&s.data);
            for &(_, t, v) in &self.samples[run] {
                db.head.append_locked(&mut data, t, v, &mut batch);
            }
            s.publish(&data);
        }
        db.head.apply_batch(&batch);
        let unsynced = Unsynced(if db.wal.fsync { seq } else { 0 });
        Ok((
            CommitStats {
                samples: self.samples.len(),
                new_series,
            },
            unsynced,
        ))
    }

    /// Where the run of samples of one series that starts at `i` ends.
    fn run_end(&self, i: usize) -> usize {
        let idx = self.samples[i].0;
        i + self.samples[i..].iter().take_while(|s| s.0 == idx).count()
    }

    /// Discards everything appended.
    pub fn rollback(self) {}
}

/// One series selected by a [`Querier`]: its labels and its samples in the query range.
#[derive(Clone)]
pub struct Series {
    pub labels: Labels,
    mint: i64,
    maxt: i64,
    /// The chunks, taken when the series is selected or, for a deferred selection
    /// ([`Querier::select_deferred`]), on first use.
    views: OnceLock<Views>,
    /// Where a deferred selection takes the chunks from.
    deferred: Option<Deferred>,
}

impl fmt::Debug for Series {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Series")
            .field("labels", &self.labels)
            .field("mint", &self.mint)
            .field("maxt", &self.maxt)
            .field("views", &self.views.get())
            .field("deferred", &self.deferred.is_some())
            .finish()
    }
}

/// The chunks of a [`Series`] in the querier's range.
#[derive(Debug, Clone, Default)]
struct Views {
    /// Time-ordered and disjoint, or (when `overlapping`) in order of precedence: at a
    /// timestamp several hold, the last one's sample wins.
    chunks: Vec<ChunkView>,
    overlapping: bool,
    /// The newest sample in range, when the head knew it without decoding.
    last: Option<(i64, f64)>,
}

impl Views {
    /// `chunks`: in time order, or when some overlap, in order of precedence. `last`: the
    /// head's newest sample of the series in range, if known; kept only when no view
    /// reaches past it.
    fn new(chunks: Vec<ChunkView>, last: Option<(i64, f64)>) -> Views {
        let (overlapping, end) = overlap(chunks.iter());
        Views {
            chunks,
            overlapping,
            last: last.filter(|l| l.0 >= end),
        }
    }

    /// [`Views::new`] from the chunks of several sources in time order, `tags` naming
    /// each source's rank and where its chunks start: sorted by rank (stably) when
    /// out-of-order data or a rewrite overlaps other data.
    fn from_tagged(
        mut chunks: Vec<ChunkView>,
        tags: &[(u64, usize)],
        last: Option<(i64, f64)>,
    ) -> Views {
        if overlap(chunks.iter()).0 {
            let mut ranked: Vec<(u64, ChunkView)> = Vec::with_capacity(chunks.len());
            for (i, c) in chunks.drain(..).enumerate() {
                let rank = tags
                    .iter()
                    .take_while(|&&(_, from)| from <= i)
                    .last()
                    .map_or(0, |&(rank, _)| rank);
                ranked.push((rank, c));
            }
            ranked.sort_by_key(|v| v.0);
            chunks.extend(ranked.into_iter().map(|v| v.1));
        }
        Views::new(chunks, last)
    }
}

/// What the series of a deferred selection share: the blocks it read, and each series'
/// position in them.
struct DeferredSelection {
    db: Arc<DbInner>,
    blocks: Vec<Arc<Block>>,
    /// Series by series, the position in each of `blocks` ([`ABSENT`] when not there).
    positions: Vec<u32>,
    /// [`Head::truncations`](crate::head::Head) before the block list was read.
    truncations: u64,
}

/// No position in a block.
const ABSENT: u32 = u32::MAX;

/// How many series ahead a deferred selection's merge loads label sets.
const LABELS_AHEAD: usize = 8;

/// How a series of a deferred selection takes its chunks.
#[derive(Clone)]
struct Deferred {
    selection: Arc<DeferredSelection>,
    head: Option<Arc<MemSeries>>,
    /// The series' place in the selection.
    at: u32,
}

impl Series {
    fn new(
        labels: Labels,
        chunks: Vec<ChunkView>,
        mint: i64,
        maxt: i64,
        last: Option<(i64, f64)>,
    ) -> Series {
        Series::with_views(labels, Views::new(chunks, last), mint, maxt)
    }

    fn with_views(labels: Labels, views: Views, mint: i64, maxt: i64) -> Series {
        Series {
            labels,
            mint,
            maxt,
            views: OnceLock::from(views),
            deferred: None,
        }
    }

    /// The chunks, taken now if the selection was deferred.
    fn views(&self) -> &Views {
        self.views.get_or_init(|| self.take_views())
    }

    /// A deferred series' chunks: its blocks' in block order, then the head's. When a
    /// block cut truncated the head since the selection read its block list, the blocks
    /// cut since are looked up too: they hold what the head may have let go.
    fn take_views(&self) -> Views {
        let Some(d) = &self.deferred else {
            return Views::default();
        };
        let (mint, maxt) = (self.mint, self.maxt);
        let sel = &*d.selection;
        let n = sel.blocks.len();
        let at = d.at as usize * n;
        let positions = sel.positions.get(at..at + n).unwrap_or(&[]);
        let mut chunks = Vec::new();
        let mut tags: Vec<(u64, usize)> = Vec::with_capacity(n + 2);
        for (b, &r) in sel.blocks.iter().zip(positions) {
            if r != ABSENT {
                tags.push((b.meta.seq, chunks.len()));
                b.views_into(r, mint, maxt, &mut chunks);
            }
        }
        let mut last = None;
        if let Some(s) = &d.head {
            let data = lock(&s.data);
            last = data.last_sample(mint, maxt);
            tags.push((HEAD_CHUNKS, chunks.len()));
            chunks.reserve_exact(data.chunk_count_in(mint, maxt));
            data.chunks_into(mint, maxt, &mut chunks);
            let ooo = data.ooo_in(mint, maxt);
            drop(data);
            if !ooo.is_empty() {
                tags.push((HEAD_OUT_OF_ORDER, chunks.len()));
                chunks.push(ChunkView::Samples(ooo.into()));
            }
        }
        // Looked up by the head series' labels: the caller may have taken the series'
        // own out of it (the query engine does). A series the head did not hold when
        // selected has no samples in a block cut since.
        let head_labels = d.head.as_ref().map(|s| &s.labels);
        let truncated = sel.db.head.truncations.load(Ordering::Acquire) != sel.truncations;
        if let Some(labels) = head_labels.filter(|_| truncated) {
            for b in sel.db.block_list() {
                let known = sel.blocks.iter().any(|k| k.meta.seq == b.meta.seq);
                if known || !b.overlaps(mint, maxt) {
                    continue;
                }
                if let Some(r) = b.position_of(labels) {
                    tags.push((b.meta.seq, chunks.len()));
                    b.views_into(r, mint, maxt, &mut chunks);
                }
            }
        }
        Views::from_tagged(chunks, &tags, last)
    }

    /// The newest sample in the querier's range (stale markers included), without
    /// decoding when the head knows it.
    pub fn last_sample(&self) -> Option<(i64, f64)> {
        if let Some(last) = self.views().last {
            return Some(last);
        }
        self.samples().last()
    }

    /// Selected for its newest sample only ([`Querier::select_newest`]): no chunks,
    /// that sample.
    fn newest_only(&self) -> Option<(i64, f64)> {
        let v = self.views();
        if v.chunks.is_empty() {
            v.last
        } else {
            None
        }
    }

    /// The head chunk file ranges this series' samples in range are read from.
    fn head_file_ranges<'s>(&'s self, out: &mut Vec<(&'s SegmentFile, u32, u16)>) {
        for c in &self.views().chunks {
            if let ChunkView::HeadFile {
                file,
                start,
                len,
                min_t,
                max_t,
                ..
            } = c
            {
                if *max_t >= self.mint && *min_t <= self.maxt {
                    out.push((file, *start, *len));
                }
            }
        }
    }

    /// Appends [`Series::samples`] to `out`: the same samples, decoded chunk by chunk
    /// without going through the iterator's per-sample dispatch.
    pub fn samples_into(&self, out: &mut Vec<(i64, f64)>) {
        if let Some(newest) = self.newest_only() {
            out.push(newest);
            return;
        }
        let views = self.views();
        if views.overlapping {
            out.extend(self.samples());
            return;
        }
        let (mint, maxt) = (self.mint, self.maxt);
        let mut last = i64::MIN;
        for c in &views.chunks {
            let (a, z) = c.time_range();
            if z < mint || a > maxt {
                continue;
            }
            if let ChunkView::HeadFile { .. } = c {
                c.with_head_file(|it| take_encoded_in_range(it, out, mint, maxt, &mut last));
                continue;
            }
            let from = out.len();
            if c.append_dense(out) {
                // Decoded in place: keep what lies in the range and after the samples
                // already taken.
                let new = &out[from..];
                let lo = new.partition_point(|s| s.0 < mint || s.0 <= last);
                let hi = new.partition_point(|s| s.0 <= maxt);
                out.truncate(from + hi.max(lo));
                out.drain(from..from + lo);
                if let Some(&(t, _)) = out[from..].last() {
                    last = t;
                }
                continue;
            }
            match c.iter() {
                ChunkIter::Encoded(it) => take_encoded_in_range(it, out, mint, maxt, &mut last),
                ChunkIter::Decoded(it) => take_in_range(it, out, mint, maxt, &mut last),
                ChunkIter::Slice(it) => take_in_range(it, out, mint, maxt, &mut last),
            }
        }
    }

    /// Whether any sample lies in the querier's range. A view's time range starts and
    /// ends at samples, so only a view reaching past both ends of the range is decoded.
    fn has_samples(&self) -> bool {
        self.newest_only().is_some()
            || self.views().chunks.iter().any(|v| {
                let (a, z) = v.time_range();
                crate::block::holds_sample_in(a, z, self.mint, self.maxt, || v.iter())
            })
    }

    /// The samples with timestamps in the querier's range, in time order. Stale markers
    /// are included; callers decide what they mean.
    pub fn samples(&self) -> Samples<'_> {
        if let Some(newest) = self.newest_only() {
            return Samples(SamplesInner::Merged(vec![newest].into_iter()));
        }
        let views = self.views();
        if !views.overlapping {
            return Samples(SamplesInner::Plain {
                chunks: views.chunks.iter(),
                current: None,
                mint: self.mint,
                maxt: self.maxt,
                last: i64::MIN,
            });
        }
        let mut merged: Vec<(i64, f64)> = Vec::new();
        for c in &views.chunks {
            let part: Vec<(i64, f64)> = c
                .iter()
                .filter(|&(t, _)| t >= self.mint && t <= self.maxt)
                .collect();
            merged = if merged.is_empty() {
                part
            } else {
                merge_newest_wins(&merged, &part)
            };
        }
        Samples(SamplesInner::Merged(merged.into_iter()))
    }
}

/// From this many series in all sources, a selection merges them in two halves side by
/// side. Below it the second thread costs more than it saves: its start, and waking the
/// other core when it has been idle (0.2-0.3 ms on this machine's guests). On a 20-host
/// store with two blocks, merging on one thread is 4-7 % faster for `cpu busy` (3,360
/// series in all) and 2 % at 8,640; even at 13,440; the split 5 % faster at 17,040.
const PARALLEL_MERGE: usize = 12_288;

/// A block's sequence number and its selected series, sorted by labels.
type BlockSelection = (u64, Vec<(Labels, Vec<ChunkView>)>);

/// The series of the blocks (each list tagged with its block's sequence number, sorted
/// by labels) and of the head (sorted by labels), merged into one list sorted by labels:
/// a series' views are its blocks' chunks in block order, then the head's chunks, then
/// its out-of-order samples, each source's list moved once into the series' own.
fn merge_sources(
    mut blocks: Vec<BlockSelection>,
    mut head: Vec<SelectedSeries>,
    mint: i64,
    maxt: i64,
) -> Vec<Series> {
    let mut at = vec![0usize; blocks.len()];
    let mut head_at = 0;
    let mut out = Vec::with_capacity(
        head.len()
            .max(blocks.iter().map(|b| b.1.len()).max().unwrap_or(0)),
    );
    // Which sources hold the next series, and where each source's views start.
    let mut holding: Vec<usize> = Vec::with_capacity(blocks.len());
    let mut tags: Vec<(u64, usize)> = Vec::with_capacity(blocks.len() + 2);
    loop {
        // The smallest label set any source has next.
        let mut least: Option<&Labels> = None;
        for (k, (_, list)) in blocks.iter().enumerate() {
            if let Some((l, _)) = list.get(at[k]) {
                if least.is_none_or(|m| l < m) {
                    least = Some(l);
                }
            }
        }
        let in_head = head.get(head_at).map(|h| &h.0);
        if let Some(h) = in_head {
            if least.is_none_or(|m| h < m) {
                least = Some(h);
            }
        }
        let Some(least) = least else {
            break;
        };
        holding.clear();
        let mut count = 0;
        for (k, (_, list)) in blocks.iter().enumerate() {
            if let Some((l, views)) = list.get(at[k]) {
                if l == least {
                    holding.push(k);
                    count += views.len();
                }
            }
        }
        let head_holds = in_head == Some(least);
        let mut labels = None;
        let mut chunks: Vec<ChunkView> = Vec::with_capacity(count + if head_holds { 6 } else { 0 });
        tags.clear();
        for &k in &holding {
            let (seq, list) = &mut blocks[k];
            if let Some((l, views)) = list.get_mut(at[k]) {
                labels.get_or_insert_with(|| std::mem::replace(l, Labels::empty()));
                tags.push((*seq, chunks.len()));
                // Taken, so that the source's list is freed now rather than with all.
                chunks.extend(std::mem::take(views));
            }
            at[k] += 1;
        }
        let mut last = None;
        if head_holds {
            if let Some((l, views, ooo, newest)) = head.get_mut(head_at) {
                labels.get_or_insert_with(|| std::mem::replace(l, Labels::empty()));
                tags.push((HEAD_CHUNKS, chunks.len()));
                if views.is_empty() && ooo.is_empty() {
                    // Selected for its newest sample only: that sample stands for the head.
                    chunks.extend(newest.map(|n| ChunkView::Samples(Arc::new([n]))));
                }
                chunks.extend(std::mem::take(views));
                if !ooo.is_empty() {
                    tags.push((HEAD_OUT_OF_ORDER, chunks.len()));
                    chunks.push(ChunkView::Samples(std::mem::take(ooo).into()));
                }
                last = *newest;
            }
            head_at += 1;
        }
        let labels = labels.unwrap_or_else(Labels::empty);
        let views = Views::from_tagged(chunks, &tags, last);
        out.push(Series::with_views(labels, views, mint, maxt));
    }
    out
}

/// The union of two sorted lists without repeats, sorted and without repeats.
fn merge_sorted<T: Ord>(a: Vec<T>, b: Vec<T>) -> Vec<T> {
    if b.is_empty() {
        return a;
    }
    if a.is_empty() {
        return b;
    }
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut a, mut b) = (a.into_iter().peekable(), b.into_iter().peekable());
    loop {
        let next = match (a.peek(), b.peek()) {
            (Some(x), Some(y)) => match x.cmp(y) {
                std::cmp::Ordering::Less => a.next(),
                std::cmp::Ordering::Greater => b.next(),
                std::cmp::Ordering::Equal => {
                    b.next();
                    a.next()
                }
            },
            (Some(_), None) => a.next(),
            (None, Some(_)) => b.next(),
            (None, None) => break,
        };
        if let Some(v) = next {
            if out.last() != Some(&v) {
                out.push(v);
            }
        }
    }
    out
}

/// Whether any view starts at or before the end of an earlier one, and the latest end.
fn overlap<'a>(views: impl Iterator<Item = &'a ChunkView>) -> (bool, i64) {
    let mut end = i64::MIN;
    let mut overlapping = false;
    for v in views {
        let (a, z) = v.time_range();
        overlapping |= a <= end;
        end = end.max(z);
    }
    (overlapping, end)
}

/// Appends the samples of `it` in `[mint, maxt]` newer than `last` to `out`, as
/// [`Samples`] yields them (a block cut may briefly show a sample both in its new block
/// and in the head: only strictly newer samples are taken).
fn take_in_range(
    it: impl Iterator<Item = (i64, f64)>,
    out: &mut Vec<(i64, f64)>,
    mint: i64,
    maxt: i64,
    last: &mut i64,
) {
    for (t, v) in it {
        if t > maxt {
            break;
        }
        if t >= mint && t > *last {
            out.push((t, v));
            *last = t;
        }
    }
}

/// Reads ahead, in file order and a stretch of neighbouring chunks at a time, the head
/// chunk bytes that `series` will decode: this thread's [`Series::samples_into`] and
/// [`Series::samples`] take them from memory until the guard is dropped. Worth it before
/// decoding many series, whose chunks lie in write order rather than in the order the
/// series are read; the answers are the same either way.
pub fn read_ahead<'a>(series: impl IntoIterator<Item = &'a Series>) -> ReadAhead {
    let mut wanted = Vec::new();
    for s in series {
        s.head_file_ranges(&mut wanted);
    }
    let staged = wanted.len() >= 2 && head_chunks::stage(&mut wanted);
    ReadAhead {
        staged,
        _thread: std::marker::PhantomData,
    }
}

/// Head chunk bytes read ahead for this thread ([`read_ahead`]), until dropped.
#[must_use = "the bytes are let go when this is dropped"]
pub struct ReadAhead {
    staged: bool,
    /// The bytes belong to the thread that read them.
    _thread: std::marker::PhantomData<*const ()>,
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        if self.staged {
            head_chunks::unstage();
        }
    }
}

/// [`take_in_range`] for an XOR or decimal chunk, through its faster
/// [`HeadIter::decode_while`].
fn take_encoded_in_range(
    it: HeadIter<'_>,
    out: &mut Vec<(i64, f64)>,
    mint: i64,
    maxt: i64,
    last: &mut i64,
) {
    out.reserve(usize::from(it.remaining()));
    let mut newest = *last;
    it.decode_while(|t, v| {
        if t > maxt {
            return false;
        }
        if t >= mint && t > newest {
            out.push((t, v));
            newest = t;
        }
        true
    });
    *last = newest;
}

/// The samples of a [`Series`] in time order.
pub struct Samples<'a>(SamplesInner<'a>);

enum SamplesInner<'a> {
    Plain {
        chunks: std::slice::Iter<'a, ChunkView>,
        current: Option<ChunkIter<'a>>,
        mint: i64,
        maxt: i64,
        last: i64,
    },
    Merged(std::vec::IntoIter<(i64, f64)>),
}

impl Iterator for Samples<'_> {
    type Item = (i64, f64);

    #[inline]
    fn next(&mut self) -> Option<(i64, f64)> {
        match &mut self.0 {
            SamplesInner::Merged(it) => it.next(),
            SamplesInner::Plain {
                chunks,
                current,
                mint,
                maxt,
                last,
            } => loop {
                if let Some(it) = current {
                    match it.next() {
                        Some((t, _)) if t < *mint => continue,
                        // A query that overlaps a block cut may see a sample both in the
                        // new block and in the head not yet truncated: only strictly
                        // newer samples are yielded.
                        Some((t, v)) if t <= *maxt && t > *last => {
                            *last = t;
                            return Some((t, v));
                        }
                        Some((t, _)) if t <= *maxt => continue,
                        // Past the range or the chunk's end: on to the next chunk.
                        _ => *current = None,
                    }
                }
                *current = Some(chunks.next()?.iter());
            },
        }
    }
}

/// Reads a fixed time range of the store.
pub struct Querier {
    db: Arc<DbInner>,
    mint: i64,
    maxt: i64,
}

/// Precedence of the head's chunks and out-of-order samples over every block.
const HEAD_CHUNKS: u64 = u64::MAX - 1;
const HEAD_OUT_OF_ORDER: u64 = u64::MAX;

impl Querier {
    /// Series matching every matcher with at least one sample in range, sorted by labels.
    pub fn select(&self, matchers: &[Matcher]) -> Result<Vec<Series>, Error> {
        self.select_with(matchers, false)
    }

    /// Like [`Querier::select`], for callers that only want each series' newest sample
    /// in range ([`Series::last_sample`]), as an instant selector at one time does: a
    /// head series that knows it comes without its chunks, and its
    /// [`Series::samples`] are that one sample (with a block's samples, if a block
    /// reaches into the range).
    pub fn select_newest(&self, matchers: &[Matcher]) -> Result<Vec<Series>, Error> {
        self.select_with(matchers, true)
    }

    /// Like [`Querier::select`], but each series takes its chunks only when its samples
    /// are first read: the series a query spreads over threads are read there, each
    /// thread taking its own series' chunks. Here only the series are matched and put in
    /// label order. A series may have no sample in range (it reads as none).
    pub fn select_deferred(&self, matchers: &[Matcher]) -> Result<Vec<Series>, Error> {
        let (mint, maxt) = (self.mint, self.maxt);
        let head = self.db.head.matching_sorted(matchers);
        // Before the block list: a block cut lists its block before it truncates the
        // head, so a series that sees this count unchanged after taking its chunks from
        // the head misses nothing (see `Series::take_views`).
        let truncations = self.db.head.truncations.load(Ordering::Acquire);
        let blocks: Vec<Arc<Block>> = self
            .db
            .block_list()
            .into_iter()
            .filter(|b| b.overlaps(mint, maxt))
            .collect();
        let lists: Vec<Vec<u32>> = blocks
            .iter()
            .map(|b| {
                let mut p = b.matching_in(matchers, mint, maxt);
                if !b.sorted {
                    p.sort_by(|&x, &y| {
                        b.series_labels(x as usize)
                            .cmp(&b.series_labels(y as usize))
                    });
                }
                p
            })
            .collect();
        // The sources' lists merged by labels; a block holds the head's own label sets
        // (see `open_block`), so most comparisons settle on an address.
        let n = blocks.len();
        let mut at = vec![0usize; n];
        let mut positions =
            Vec::with_capacity(head.len().max(lists.first().map_or(0, Vec::len)) * n);
        let mut found: Vec<(Labels, Option<Arc<MemSeries>>)> = Vec::with_capacity(head.len());
        let mut head_at = 0;
        loop {
            // Label sets lie apart in memory: later ones are loaded while this one is
            // merged (each is cloned here, and read again to group the series).
            if let Some(s) = head.get(head_at + LABELS_AHEAD) {
                s.labels.prefetch();
            }
            let block_labels = |k: usize, at: &[usize]| {
                lists[k]
                    .get(at[k])
                    .and_then(|&r| blocks[k].series_labels(r as usize))
            };
            let mut least: Option<&Labels> = head.get(head_at).map(|s| &s.labels);
            for k in 0..n {
                if let Some(l) = block_labels(k, &at) {
                    if least.is_none_or(|m| l < m) {
                        least = Some(l);
                    }
                }
            }
            let Some(least) = least.cloned() else {
                break;
            };
            for k in 0..n {
                if block_labels(k, &at) == Some(&least) {
                    positions.push(lists[k][at[k]]);
                    at[k] += 1;
                } else {
                    positions.push(ABSENT);
                }
            }
            let in_head = head.get(head_at).filter(|s| s.labels == least).cloned();
            head_at += usize::from(in_head.is_some());
            found.push((least, in_head));
        }
        let selection = Arc::new(DeferredSelection {
            db: Arc::clone(&self.db),
            blocks,
            positions,
            truncations,
        });
        Ok(found
            .into_iter()
            .enumerate()
            .map(|(i, (labels, head))| Series {
                labels,
                mint,
                maxt,
                views: OnceLock::new(),
                deferred: Some(Deferred {
                    selection: Arc::clone(&selection),
                    head,
                    at: i as u32,
                }),
            })
            .collect())
    }

    fn select_with(&self, matchers: &[Matcher], newest_only: bool) -> Result<Vec<Series>, Error> {
        // The head first, then the block list: a block cut pushes its block before it
        // truncates the head, so in this order nothing is missed (see `samples`).
        let head = self
            .db
            .head
            .select(matchers, self.mint, self.maxt, newest_only);
        // Only blocks reaching into the range take part: queries of recent data merge
        // nothing. Each block's series come sorted by labels, their views ranked by the
        // block.
        let blocks: Vec<Arc<Block>> = self
            .db
            .blocks
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .filter(|b| b.overlaps(self.mint, self.maxt))
            .cloned()
            .collect();
        if blocks.is_empty() {
            // The head's chunks, then its out-of-order samples: time order, or else the
            // order of precedence.
            let mut out: Vec<Series> = head
                .into_iter()
                .map(|(labels, mut chunks, ooo, last)| {
                    if !ooo.is_empty() {
                        chunks.push(ChunkView::Samples(ooo.into()));
                    }
                    Series::new(labels, chunks, self.mint, self.maxt, last)
                })
                .collect();
            out.retain(Series::has_samples);
            return Ok(out);
        }
        let positions: Vec<Vec<u32>> = blocks
            .iter()
            .map(|b| b.matching_in(matchers, self.mint, self.maxt))
            .collect();
        // Blocks are sorted by start: a series' views are its blocks' chunks, then the
        // head's. Each source lists its series sorted by labels, and a block holds the
        // head's own label sets (see `open_block`): the lists are merged, most
        // comparisons settled by address, each series' views moved once into its own
        // list. Many series are merged in two halves split at a label, side by side.
        let merge = |head: Vec<SelectedSeries>, positions: Vec<&[u32]>| {
            let from_blocks: Vec<BlockSelection> = blocks
                .iter()
                .zip(positions)
                .map(|(b, p)| {
                    let mut list = b.select_positions(p, self.mint, self.maxt);
                    if !b.sorted {
                        list.sort_by(|x, y| x.0.cmp(&y.0));
                    }
                    (b.meta.seq, list)
                })
                .collect();
            let mut out = merge_sources(from_blocks, head, self.mint, self.maxt);
            out.retain(Series::has_samples);
            out
        };
        let total = head.len() + positions.iter().map(Vec::len).sum::<usize>();
        let split =
            (total >= PARALLEL_MERGE && blocks.iter().all(|b| b.sorted) && crate::cores() >= 2)
                .then(|| head.get(head.len() / 2).map(|h| h.0.clone()))
                .flatten();
        let Some(split) = split else {
            return Ok(merge(head, positions.iter().map(Vec::as_slice).collect()));
        };
        let mut front = head;
        let back = front.split_off(front.partition_point(|h| h.0 < split));
        let (fronts, backs): (Vec<&[u32]>, Vec<&[u32]>) = blocks
            .iter()
            .zip(&positions)
            .map(|(b, p)| {
                let at =
                    p.partition_point(|&r| b.series_labels(r as usize).is_some_and(|l| *l < split));
                p.split_at(at)
            })
            .unzip();
        let (mut out, later) = crate::helpers::join(|| merge(front, fronts), || merge(back, backs));
        out.extend(later);
        Ok(out)
    }

    /// The labels of the series `matchers` select with a sample in range, sorted and
    /// unique: [`Querier::select`] without reading the samples.
    pub fn series_labels(&self, matchers: &[Matcher]) -> Result<Vec<Labels>, Error> {
        self.with_series_labels(matchers, |all| all.iter().map(|&l| l.clone()).collect())
    }

    /// At most how many series `matchers` select: the postings lookups of the head and
    /// of the blocks in range, summed (a series in several counts in each). Tells a
    /// caller, for a fraction of the selection's cost, whether it is a small one.
    pub fn series_bound(&self, matchers: &[Matcher]) -> u64 {
        let blocks = self.db.block_list();
        let in_blocks: u64 = blocks
            .iter()
            .map(|b| b.count_in(matchers, self.mint, self.maxt))
            .sum();
        self.db.head.postings_count(matchers) + in_blocks
    }

    /// `f` over what [`Querier::series_labels`] returns, borrowed from the head and the
    /// blocks rather than copied.
    pub fn with_series_labels<R>(
        &self,
        matchers: &[Matcher],
        f: impl FnOnce(&[&Labels]) -> R,
    ) -> Result<R, Error> {
        // A series usually lies in the head and in several blocks, which hold the head's
        // own label set (see `open_block`): the blocks' sorted lists are merged (equal
        // sets compare by address), and only the head's series no block shares are
        // looked at in range and merged in, taken in label order from the head's ranking
        // (one integer a series to sort by).
        let head = self.db.head.matching_sorted(matchers);
        let blocks = self.db.block_list();
        let mut out: Vec<&Labels> = Vec::new();
        for b in &blocks {
            let mut more = b.select_labels(matchers, self.mint, self.maxt);
            if !b.sorted {
                more.sort_unstable();
            }
            out = merge_sorted(out, more);
        }
        let mut shared: Vec<usize> = out.iter().filter_map(|l| l.set_address()).collect();
        shared.sort_unstable();
        let rest: Vec<&Labels> = head
            .iter()
            .filter(|s| {
                s.labels
                    .set_address()
                    .is_none_or(|a| shared.binary_search(&a).is_err())
                    && s.has_sample_in(self.mint, self.maxt)
            })
            .map(|s| &s.labels)
            .collect();
        debug_assert!(rest.windows(2).all(|w| w[0] < w[1]));
        Ok(f(&merge_sorted(out, rest)))
    }

    /// Label names, sorted. With matchers, only of the series they select in range.
    pub fn label_names(&self, matchers: &[Matcher]) -> Result<Vec<String>, Error> {
        if matchers.is_empty() {
            let mut names = self.db.head.label_names();
            for b in self.db.block_list() {
                names.extend(b.label_names());
            }
            names.sort_unstable();
            names.dedup();
            return Ok(names);
        }
        let mut names: Vec<String> = self
            .select(matchers)?
            .iter()
            .flat_map(|s| s.labels.iter().map(|l| l.name.to_string()))
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    /// Values of label `name`, sorted. With matchers, only of the series they select.
    pub fn label_values(&self, name: &str, matchers: &[Matcher]) -> Result<Vec<String>, Error> {
        if matchers.is_empty() {
            let mut values = self.db.head.label_values(name);
            for b in self
                .db
                .blocks
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .iter()
            {
                values.extend(b.label_values(name));
            }
            values.sort_unstable();
            values.dedup();
            return Ok(values);
        }
        let mut values: Vec<String> = self
            .select(matchers)?
            .iter()
            .filter_map(|s| s.labels.get(name).map(str::to_owned))
            .collect();
        values.sort_unstable();
        values.dedup();
        Ok(values)
    }
}

/// Deletes a block's directory: renamed first, so a crash never leaves half a block under
/// its real name.
fn remove_block(blocks_dir: &Path, meta: &BlockMeta) -> Result<(), Error> {
    let name = block_name(meta);
    let dir = blocks_dir.join(&name);
    let doomed = blocks_dir.join(format!(".deleting-{name}"));
    fs::rename(&dir, &doomed).map_err(|e| Error::io(&dir, e))?;
    crate::wal::sync_dir(blocks_dir)?;
    fs::remove_dir_all(&doomed).map_err(|e| Error::io(&doomed, e))
}

/// Every series of `blocks` as (labels, the block's index in `blocks`, position in it),
/// appended to `refs` block by block.
fn block_series_refs<'a>(
    blocks: impl IntoIterator<Item = &'a Arc<Block>>,
    refs: &mut Vec<(&'a Labels, usize, u32)>,
) {
    for (k, b) in blocks.into_iter().enumerate() {
        for r in 0..b.series_count() {
            if let Some(l) = b.series_labels(r) {
                refs.push((l, k, r as u32));
            }
        }
    }
}

/// The distinct labels of `refs` (sorted by labels) and where each one's run starts:
/// series i of a new block is `labels[i]`, from `refs[starts[i]..starts[i + 1]]`.
fn group_by_labels<'a>(refs: &[(&'a Labels, usize, u32)]) -> (Vec<&'a Labels>, Vec<usize>) {
    let mut labels: Vec<&Labels> = Vec::new();
    let mut starts: Vec<usize> = Vec::new();
    for (j, r) in refs.iter().enumerate() {
        if labels.last() != Some(&r.0) {
            labels.push(r.0);
            starts.push(j);
        }
    }
    starts.push(refs.len());
    (labels, starts)
}

/// Appends every sample of series `r` of `block`, its deleted ones left out, to `out`.
fn append_block_series(block: &Block, r: u32, out: &mut Vec<(i64, f64)>) {
    for c in block.views(r, i64::MIN, i64::MAX) {
        if !c.append_dense(out) {
            out.extend(c.iter());
        }
    }
}

/// Writes the head's samples in `[mint, maxt)` as a block, series by series: only one
/// series' samples are decoded at a time. With `partners` (blocks older than `mint`,
/// oldest first, not overlapping each other), their samples go into the same block,
/// before the head's. Returns its directory and, `with_marks` (for a cut, which
/// truncates the head after it), what it saw of each head series, by series address.
fn write_head_block(
    head: &Head,
    blocks_dir: &Path,
    mint: i64,
    maxt: i64,
    new: NewBlock,
    with_marks: bool,
    partners: &[Arc<Block>],
) -> Result<(PathBuf, HashMap<usize, CutMark>), Error> {
    let mut live = head.live_series();
    live.sort_by(|a, b| a.labels.cmp(&b.labels));
    // Every series as (labels, source, position): source `partners.len()` is the head,
    // and goes after the partners' samples of the same labels.
    let in_head = partners.len();
    let mut refs: Vec<(&Labels, usize, u32)> =
        Vec::with_capacity(live.len() + partners.iter().map(|b| b.series_count()).sum::<usize>());
    block_series_refs(partners, &mut refs);
    refs.extend(
        live.iter()
            .enumerate()
            .map(|(i, s)| (&s.labels, in_head, i as u32)),
    );
    if !partners.is_empty() {
        refs.sort_by(|a, b| a.0.cmp(b.0).then(a.1.cmp(&b.1)));
    }
    let (labels, starts) = group_by_labels(&refs);
    let mut marks = HashMap::with_capacity(if with_marks { live.len() } else { 0 });
    // Every chunk of the range is read, in label order: through maps of the files.
    let maps = head.chunks.map_for_cut();
    // Samples read from partners since they last gave their pages back.
    let mut read = 0usize;
    let dir = write_block_with(
        blocks_dir,
        &labels,
        |i| {
            let mut out: Vec<(i64, f64)> = Vec::new();
            for &(_, k, r) in &refs[starts[i]..starts[i + 1]] {
                if k < in_head {
                    if read >= crate::block::RELEASE_EVERY / 2 {
                        partners.iter().for_each(|b| b.release_pages());
                        read = 0;
                    }
                    let from = out.len();
                    append_block_series(&partners[k], r, &mut out);
                    // About two bytes a sample in the partners' chunks.
                    read += 2 * (out.len() - from);
                    continue;
                }
                let s = &live[r as usize];
                let data = lock(&s.data);
                let mut mark = data.cut_mark();
                let mut v = data.samples_before(maxt);
                drop(data);
                mark.older = v.first().is_some_and(|p| p.0 < mint);
                if with_marks {
                    marks.insert(Arc::as_ptr(s) as usize, mark);
                }
                v.retain(|p| p.0 >= mint && p.0 < maxt);
                if out.is_empty() {
                    out = v;
                } else {
                    out.extend(v);
                }
            }
            Cow::Owned(out)
        },
        new,
    )?;
    if maps.releases() > 0 {
        tracing::debug!(
            times = maps.releases(),
            "a cut gave back its mapped head chunk pages"
        );
    }
    Ok((dir, marks))
}

/// CPU time this thread has used: what a block cut costs, apart from the time it waits
/// for a CPU while ingest goes on. Zero where the clock cannot be read.
fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only writes it.
    #[allow(unsafe_code)]
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } == 0;
    if !ok {
        return std::time::Duration::ZERO;
    }
    std::time::Duration::new(
        ts.tv_sec.max(0) as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    )
}

/// A head loaded from the snapshot a clean shutdown left in `dir` (which is then removed),
/// or an empty one with the head chunk files cleared. Returns the head, the first WAL
/// segment still to replay and the number of series loaded.
fn load_snapshot(dir: &Path, chunk_range: i64) -> Result<(Head, u64, u64), Error> {
    let new_head = |chunks| {
        let mut head = Head::new(chunks);
        head.set_chunk_range(chunk_range);
        head
    };
    let loaded = match crate::snapshot::Reader::open(dir) {
        Ok(Some(mut snap)) => {
            let segment = snap.wal_segment();
            let restored = HeadChunks::adopt(dir, snap.segments()).and_then(|(chunks, files)| {
                let head = new_head(chunks);
                head.restore(&mut snap, &files).map(|n| (head, n))
            });
            match restored {
                Ok((head, n)) => Some((head, segment + 1, n)),
                Err(e) => {
                    tracing::warn!(error = %e, "the head snapshot could not be loaded; replaying the whole WAL");
                    None
                }
            }
        }
        Ok(None) => None,
        Err(e) => {
            tracing::warn!(error = %e, "the head snapshot is damaged; replaying the whole WAL");
            None
        }
    };
    crate::snapshot::remove(dir).or_else(|e| {
        // Without the directory there is nothing to remove.
        if dir.exists() {
            Err(e)
        } else {
            Ok(())
        }
    })?;
    match loaded {
        Some(l) => Ok(l),
        None => Ok((new_head(HeadChunks::open(dir)?), 0, 0)),
    }
}

/// Samples gathered before they are sorted by series and applied: applying a series'
/// samples together touches its chunk once rather than once per sample. About four
/// samples per series, within these bounds: up to four batches are alive at once (24
/// bytes a sample), which at 75,000 series is the difference between a 200 and a 600 MiB
/// peak for the same replay time.
const REPLAY_BATCH: std::ops::RangeInclusive<usize> = (1 << 20)..=(4 << 20);

/// Replays the WAL into `head`. This thread reads and decodes records, creates series
/// and gathers samples into batches sorted by series (stably: each series keeps its log
/// order); another thread applies the batches and deletions, in log order.
fn replay_wal(
    wal_dir: &Path,
    from_segment: u64,
    head: &Head,
) -> Result<(ReplayReport, u64), Error> {
    type Samples = Vec<(SeriesRef, i64, f64)>;
    std::thread::scope(|scope| {
        let (tx, rx) = std::sync::mpsc::sync_channel::<Record>(1);
        // Applied batches come back, emptied, to be filled again: no fresh pages to fault
        // in for every batch.
        let (back_tx, back_rx) = std::sync::mpsc::channel::<Samples>();
        let applier = scope.spawn(move || {
            for rec in rx {
                apply_record(head, &rec, |_| true);
                if let Record::Samples(mut v) = rec {
                    v.clear();
                    let _ = back_tx.send(v);
                }
            }
        });
        let mut pending: Samples = Vec::new();
        let mut counts: Vec<usize> = Vec::new();
        let mut flush = |pending: &mut Samples| {
            if !pending.is_empty() {
                let mut sorted = back_rx.try_recv().unwrap_or_default();
                sort_by_series(pending, &mut sorted, &mut counts);
                pending.clear();
                // The applier only stops early by panicking; nothing to do then.
                let _ = tx.send(Record::Samples(sorted));
            }
        };
        let replayed = wal::replay(wal_dir, from_segment, |rec| match rec {
            // Series here and at once: every batch sent later may use them.
            Record::Series(list) => {
                for (r, labels) in list {
                    head.get_or_create(&labels, Some(r));
                }
            }
            Record::Samples(list) | Record::CheckpointSamples(list) => {
                let batch = (head.num_series() as usize * 4)
                    .clamp(*REPLAY_BATCH.start(), *REPLAY_BATCH.end());
                if pending.capacity() == 0 {
                    pending.reserve(batch + list.len());
                }
                pending.extend_from_slice(&list);
                if pending.len() >= batch {
                    flush(&mut pending);
                }
            }
            Record::Deletes(list) => {
                flush(&mut pending);
                let _ = tx.send(Record::Deletes(list));
            }
        });
        flush(&mut pending);
        drop(tx);
        if applier.join().is_err() {
            return Err(Error::Corrupt("the WAL replay thread panicked".into()));
        }
        replayed
    })
}

/// Counting sort of `src` into `dst` by series reference, keeping the order of each
/// series' samples: linear, where a comparison sort of a batch costs several passes.
fn sort_by_series(
    src: &[(SeriesRef, i64, f64)],
    dst: &mut Vec<(SeriesRef, i64, f64)>,
    counts: &mut Vec<usize>,
) {
    let max = src.iter().map(|s| s.0 .0 as usize).max().unwrap_or(0);
    counts.clear();
    counts.resize(max + 2, 0);
    for s in src {
        counts[s.0 .0 as usize + 1] += 1;
    }
    for i in 1..counts.len() {
        counts[i] += counts[i - 1];
    }
    dst.clear();
    dst.resize(src.len(), (SeriesRef(0), 0, 0.0));
    for &s in src {
        let at = &mut counts[s.0 .0 as usize];
        dst[*at] = s;
        *at += 1;
    }
}

/// Applies the samples and deletions of `rec` for the series `mine` accepts.
fn apply_record(head: &Head, rec: &Record, mine: impl Fn(SeriesRef) -> bool) {
    match rec {
        Record::Series(_) => {}
        Record::Samples(list) | Record::CheckpointSamples(list) => {
            let mut batch = Batch::default();
            let mut dropped = 0u64;
            head.with_table(|table| {
                let mut i = 0;
                while i < list.len() {
                    let r = list[i].0;
                    let mut j = i;
                    while j < list.len() && list[j].0 == r {
                        j += 1;
                    }
                    if mine(r) {
                        match table.get(r.0 as usize).and_then(Option::as_ref) {
                            Some(s) => {
                                let mut data = lock(&s.data);
                                for &(_, t, v) in &list[i..j] {
                                    head.append_locked(&mut data, t, v, &mut batch);
                                }
                            }
                            None => dropped += (j - i) as u64,
                        }
                    }
                    i = j;
                }
            });
            head.apply_batch(&batch);
            head.counters
                .samples_dropped
                .fetch_add(dropped, Ordering::Relaxed);
        }
        Record::Deletes(list) => {
            for &(r, mint, maxt) in list {
                if mine(r) {
                    if let Some(s) = head.series_by_ref(r) {
                        head.delete_range(&s, mint, maxt);
                    }
                }
            }
        }
    }
}

/// `YYYYMMDDTHHMMSSZ` for seconds since the epoch (UTC).
fn snapshot_time(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}{m:02}{d:02}T{:02}{:02}{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The first connected group of overlapping blocks (`blocks` sorted by start), if any.
fn overlapping_group(blocks: &[Arc<Block>]) -> Option<Vec<Arc<Block>>> {
    let mut group: Vec<Arc<Block>> = Vec::new();
    let mut end = i64::MIN;
    for b in blocks {
        if b.meta.min_time < end {
            group.push(Arc::clone(b));
            end = end.max(b.meta.max_time);
            continue;
        }
        if group.len() > 1 {
            break;
        }
        group.clear();
        group.push(Arc::clone(b));
        end = b.meta.max_time;
    }
    (group.len() > 1).then_some(group)
}

/// Opens a block whose strings the head shares (see [`Head::intern_symbols`]).
fn open_block(head: &Head, dir: &Path) -> Result<Block, Error> {
    Block::open_interned(
        dir,
        |symbols| head.intern_symbols(symbols),
        |labels| head.shared_labels(labels),
    )
}

/// Opens every block under `dir`, oldest first. A block that fails its checks is moved
/// aside (renamed with a `corrupt-` prefix) and reported; the others keep serving.
fn open_blocks(dir: &Path, head: &Head) -> Result<Vec<Arc<Block>>, Error> {
    fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let mut blocks = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if name.starts_with(".tmp-") || name.starts_with(".deleting-") {
            // A cut that crashed before its rename (the WAL or the inputs still hold its
            // samples), or a deletion that crashed half-way.
            fs::remove_dir_all(&path).map_err(|e| Error::io(&path, e))?;
            continue;
        }
        if name.starts_with("corrupt-") || !path.is_dir() {
            continue;
        }
        match open_block(head, &path) {
            Ok(b) => blocks.push(Arc::new(b)),
            Err(e) => {
                let aside = dir.join(format!("corrupt-{name}"));
                tracing::error!(
                    block = %path.display(),
                    error = %e,
                    moved_to = %aside.display(),
                    "block failed its checks and was moved aside"
                );
                fs::rename(&path, &aside).map_err(|e| Error::io(&path, e))?;
            }
        }
    }
    blocks.sort_by_key(|b| (b.meta.min_time, b.meta.seq));
    // A block that another names as a source is an input of a merge that crashed before
    // deleting it: the merged block holds its samples.
    let merged: std::collections::HashSet<u64> = blocks
        .iter()
        .flat_map(|b| b.meta.sources.iter().copied())
        .collect();
    let mut kept = Vec::with_capacity(blocks.len());
    for b in blocks {
        if merged.contains(&b.meta.seq) {
            tracing::warn!(
                min_time = b.meta.min_time,
                max_time = b.meta.max_time,
                seq = b.meta.seq,
                "removing a block left over from an interrupted merge"
            );
            remove_block(dir, &b.meta)?;
        } else {
            kept.push(b);
        }
    }
    Ok(kept)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_appenders_reference_index_finds_every_entry_and_nothing_else() {
        let mut ix = RefIndex::default();
        assert_eq!(ix.get(SeriesRef(0)), None);
        // Extremes, runs that share homes, and growth from empty and from a reservation.
        let refs: Vec<u32> = [0, 1, u32::MAX, u32::MAX - 1]
            .into_iter()
            .chain((0..3000).map(|i| 17 + i * 64))
            .chain(500_000..501_000)
            .collect();
        for (idx, &r) in refs.iter().enumerate() {
            if idx == 100 {
                ix.reserve(2000);
            }
            ix.insert(SeriesRef(r), idx);
        }
        assert_eq!(ix.len, refs.len());
        assert!(ix.slots.len() >= 2 * refs.len());
        for (idx, &r) in refs.iter().enumerate() {
            assert_eq!(ix.get(SeriesRef(r)), Some(idx), "{r}");
        }
        for r in [2, 3, 18, 501_000, 499_999, u32::MAX - 2] {
            assert_eq!(ix.get(SeriesRef(r)), None, "{r}");
        }
    }

    #[test]
    fn sorted_lists_merge_into_one_without_repeats() {
        assert_eq!(
            merge_sorted(vec![1, 3, 5], vec![1, 2, 2, 5, 6]),
            vec![1, 2, 3, 5, 6]
        );
        assert_eq!(merge_sorted(Vec::new(), vec![4, 6]), vec![4, 6]);
        assert_eq!(merge_sorted(vec![7], Vec::new()), vec![7]);
    }

    fn tmp() -> tempfile::TempDir {
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
    }

    /// A store whose commits do not sync the WAL, cutting blocks of `block_range_ms`.
    fn open_cutting(dir: &Path, block_range_ms: i64) -> Result<Db, Error> {
        Db::open(
            dir,
            Options {
                block_range_ms,
                wal_fsync: false,
                ..Options::default()
            },
        )
    }

    /// A store whose commits do not sync the WAL.
    fn open_without_fsync(dir: &Path) -> Result<Db, Error> {
        Db::open(
            dir,
            Options {
                wal_fsync: false,
                ..Options::default()
            },
        )
    }

    fn up(job: &str) -> Labels {
        Labels::from_pairs([("__name__", "up"), ("job", job)])
    }

    fn read_all(db: &Db, job: &str) -> Vec<(i64, f64)> {
        let q = db.querier(i64::MIN, i64::MAX);
        q.select(&[Matcher::equal("job", job)])
            .unwrap_or_default()
            .iter()
            .flat_map(|s| s.samples().collect::<Vec<_>>())
            .collect()
    }

    /// Every sample of the store, by labels then time, values as bits.
    fn everything(db: &Db) -> Vec<(String, i64, u64)> {
        let mut out = Vec::new();
        for s in db
            .querier(i64::MIN, i64::MAX)
            .select(&[Matcher::regex("job", ".+").unwrap_or_else(|e| panic!("{e}"))])
            .unwrap_or_default()
        {
            let key = s.labels.to_string();
            out.extend(s.samples().map(|(t, v)| (key.clone(), t, v.to_bits())));
        }
        out.sort();
        out
    }

    #[test]
    fn an_unsynced_commit_is_queryable_and_durable_once_synced() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(dir.path(), Options::default())?;
        let commit = |t: i64| -> Result<Unsynced, Error> {
            let mut app = db.appender();
            app.append(&up("a"), t, 1.0)?;
            Ok(app.commit_unsynced()?.1)
        };
        let first = commit(1_000)?;
        let second = commit(2_000)?;
        assert!(first < second);
        // In the head before the sync; not yet known durable.
        assert_eq!(read_all(&db, "a"), vec![(1_000, 1.0), (2_000, 1.0)]);
        assert!(!db.is_durable(first) && !db.is_durable(second));
        // One sync through the later write covers the earlier one.
        db.sync_wal(second)?;
        assert!(db.is_durable(first) && db.is_durable(second));
        let third = commit(3_000)?;
        assert!(!db.is_durable(third));
        // A commit that appended nothing needs no sync.
        assert!(db.is_durable(db.appender().commit_unsynced()?.1));
        drop(db);
        // Without fsync per commit, every commit counts as durable at once.
        let dir = tmp();
        let db = open_without_fsync(dir.path())?;
        let mut app = db.appender();
        app.append(&up("b"), 1_000, 2.0)?;
        assert!(db.is_durable(app.commit_unsynced()?.1));
        Ok(())
    }

    #[test]
    fn read_ahead_gives_the_same_samples_as_reading_chunk_by_chunk() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(dir.path(), Options::default())?;
        // More chunk bytes than one read-ahead holds: the rest come through the windows.
        let ls: Vec<Labels> = (0..1_200).map(|i| up(&format!("j{i:04}"))).collect();
        for k in 0..1_000i64 {
            let mut app = db.appender();
            for (i, l) in ls.iter().enumerate() {
                let i = i as i64;
                // Counters in hundredths (decimal chunks), and every tenth series with a
                // NaN now and then (XOR chunks).
                let v = if i % 10 == 0 && k % 97 == 0 {
                    f64::NAN
                } else {
                    (k * (50 + i) + k % 7) as f64 / 100.0
                };
                app.append(l, k * 15_000 + i % 5, v)?;
            }
            app.commit()?;
        }
        let q = db.querier(3_000_000, 14_000_000);
        let mut series = q.select(&[Matcher::regex("job", ".+")?])?;
        // Neither label order nor write order.
        series.reverse();
        series.rotate_left(77);
        let bits = |s: &[(i64, f64)]| -> Vec<(i64, u64)> {
            s.iter().map(|&(t, v)| (t, v.to_bits())).collect()
        };
        let mut one_by_one = Vec::new();
        for s in &series {
            let mut buf = Vec::new();
            s.samples_into(&mut buf);
            one_by_one.push(bits(&buf));
        }
        let ahead = read_ahead(&series);
        assert!(
            ahead.staged,
            "the chunks of series scraped together lie close"
        );
        let staged = head_chunks::staged_len();
        assert!(
            staged > head_chunks::STAGE_BUDGET / 2 && staged <= head_chunks::STAGE_BUDGET,
            "{staged} bytes read ahead"
        );
        for (s, want) in series.iter().zip(&one_by_one) {
            let mut buf = Vec::new();
            s.samples_into(&mut buf);
            assert_eq!(&bits(&buf), want, "{}", s.labels);
            assert_eq!(&bits(&s.samples().collect::<Vec<_>>()), want);
        }
        drop(ahead);
        // One series' chunks lie a chunk of every other series apart: no stretch holds
        // two, and the windows read them.
        assert!(!read_ahead(&series[..1]).staged);
        // Read ahead for some series only: the others read as before.
        let some = read_ahead(series.iter().step_by(3));
        for (s, want) in series.iter().zip(&one_by_one) {
            let mut buf = Vec::new();
            s.samples_into(&mut buf);
            assert_eq!(&bits(&buf), want, "{}", s.labels);
        }
        assert!(one_by_one.iter().all(|s| s.len() > 600));
        drop(some);
        // A read-ahead buffer is held while its read lasts; afterwards at most one a core
        // is kept, however many threads read ahead at once.
        let threads = crate::cores() + 2;
        let together = std::sync::Barrier::new(threads);
        std::thread::scope(|scope| {
            for _ in 0..threads {
                scope.spawn(|| {
                    let ahead = read_ahead(&series);
                    assert!(ahead.staged);
                    together.wait();
                });
            }
        });
        // Other tests may take some meanwhile; none can push their number past the bound.
        let spare = head_chunks::spare_buffers();
        assert!(spare <= crate::cores(), "{spare} buffers kept");
        Ok(())
    }

    #[test]
    fn append_refs_stops_at_an_unknown_reference() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(dir.path(), Options::default())?;
        let mut app = db.appender();
        let refs: Vec<SeriesRef> = (0..20)
            .map(|i| app.append(&up(&format!("j{i}")), 1_000, f64::from(i)))
            .collect::<Result<_, _>>()?;
        app.commit()?;
        // Groups of eight and more, one series twice, one reference unknown.
        let s2: Vec<Vec<(i64, f64)>> = (0..20).map(|i| vec![(2_000, f64::from(i) + 0.5)]).collect();
        let mut items: Vec<(SeriesRef, &[(i64, f64)])> = refs
            .iter()
            .zip(&s2)
            .map(|(&r, s)| (r, s.as_slice()))
            .collect();
        let later = [(3_000, 9.0)];
        // A series again within one call, before the appender holds it.
        items.insert(9, (refs[5], &later));
        items.insert(13, (SeriesRef(999), &later));
        items.push((refs[3], &later));
        let mut app = db.appender();
        assert_eq!(app.append_refs(&items)?, Some(13));
        assert_eq!(app.append_refs(&items[14..])?, None);
        app.commit()?;
        for i in 0..20 {
            let mut want = vec![(1_000, f64::from(i)), (2_000, f64::from(i) + 0.5)];
            if i == 3 || i == 5 {
                want.push((3_000, 9.0));
            }
            assert_eq!(read_all(&db, &format!("j{i}")), want, "j{i}");
        }
        Ok(())
    }

    #[test]
    fn commits_during_block_cuts_lose_nothing() -> Result<(), Error> {
        let dir = tmp();
        let opts = || Options {
            block_range_ms: 10_000,
            wal_fsync: false,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts())?;
        let done = std::sync::atomic::AtomicBool::new(false);
        let want = std::thread::scope(|sc| {
            let writer = sc.spawn(|| -> Result<Vec<(String, i64, u64)>, Error> {
                let mut want: std::collections::BTreeMap<(String, i64), u64> =
                    std::collections::BTreeMap::new();
                let mut put = |app: &mut Appender, job: String, t: i64, v: f64| {
                    let l = up(&job);
                    let r = app.append(&l, t, v);
                    want.insert((l.to_string(), t), v.to_bits());
                    r.map(|_| ())
                };
                for round in 0..1_500i64 {
                    let mut app = db.appender();
                    // Steady series, a series far behind them, an old sample rewritten
                    // now and then, and new series starting in the past.
                    for i in 0..100 {
                        put(&mut app, format!("s{i}"), round * 100, round as f64)?;
                    }
                    put(&mut app, "lagging".into(), round * 7, round as f64)?;
                    if round % 13 == 0 && round > 200 {
                        put(
                            &mut app,
                            format!("s{}", round % 100),
                            round * 100 - 15_050,
                            -1.0,
                        )?;
                    }
                    if round % 11 == 0 {
                        put(&mut app, format!("late{round}"), round * 50, 0.5)?;
                    }
                    app.commit()?;
                }
                done.store(true, Ordering::Release);
                Ok(want.into_iter().map(|((k, t), v)| (k, t, v)).collect())
            });
            let mut cuts = 0;
            while !done.load(Ordering::Acquire) {
                cuts += db.compact_head()?.len();
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            assert!(cuts > 10, "{cuts} cuts");
            writer
                .join()
                .unwrap_or_else(|_| panic!("the writer panicked"))
        })?;
        db.compact_head()?;
        db.compact_blocks()?;
        let same = |got: Vec<(String, i64, u64)>| {
            let (got, want): (std::collections::BTreeSet<_>, std::collections::BTreeSet<_>) =
                (got.into_iter().collect(), want.iter().cloned().collect());
            let missing: Vec<_> = want.difference(&got).take(5).collect();
            let extra: Vec<_> = got.difference(&want).take(5).collect();
            assert!(
                missing.is_empty() && extra.is_empty(),
                "missing {missing:?}, extra {extra:?}"
            );
        };
        same(everything(&db));
        drop(db);
        let db = Db::open(dir.path(), opts())?;
        same(everything(&db));
        Ok(())
    }

    /// A store cutting one-minute blocks, its WAL unsynced.
    fn minute_blocks(dir: &tempfile::TempDir) -> Result<Db, Error> {
        Db::open(
            dir.path(),
            Options {
                block_range_ms: 60_000,
                wal_fsync: false,
                ..Options::default()
            },
        )
    }

    /// A deferred series whose labels its caller took out (as the query engine does),
    /// read after a block cut truncated the head under it, still finds what the cut
    /// moved into the new block.
    #[test]
    fn a_deferred_series_without_its_labels_finds_a_block_cut_since() -> Result<(), Error> {
        let dir = tmp();
        let db = minute_blocks(&dir)?;
        let mut app = db.appender();
        for t in 0..200i64 {
            for job in ["a", "b"] {
                app.append(&up(job), t * 1_000, t as f64)?;
            }
        }
        app.commit()?;
        let q = db.querier(i64::MIN, i64::MAX);
        let mut selected = q.select_deferred(&[Matcher::equal("__name__", "up")])?;
        for s in &mut selected {
            s.labels = Labels::empty();
        }
        assert!(!db.compact_head()?.is_empty(), "no block was cut");
        for s in &selected {
            let mut got = Vec::new();
            s.samples_into(&mut got);
            assert_eq!(got.len(), 200, "{} samples", got.len());
            assert!(got
                .iter()
                .enumerate()
                .all(|(i, &(t, _))| t == i as i64 * 1_000));
        }
        Ok(())
    }

    /// Queries that run while blocks are cut see every sample committed before they
    /// started: counted through a deferred selection, read ahead as the engine reads,
    /// and through a plain one, while a writer commits and the head is cut beside them.
    #[test]
    fn queries_during_block_cuts_see_every_committed_sample() -> Result<(), Error> {
        let dir = tmp();
        let db = minute_blocks(&dir)?;
        let committed = AtomicU64::new(0);
        let done = std::sync::atomic::AtomicBool::new(false);
        let all = || Matcher::regex("job", ".+").unwrap_or_else(|e| panic!("{e}"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        std::thread::scope(|sc| -> Result<(), Error> {
            sc.spawn(|| {
                while !done.load(Ordering::Acquire) && std::time::Instant::now() < deadline {
                    let _ = db.compact_head();
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            });
            let writer = sc.spawn(|| -> Result<(), Error> {
                let labels: Vec<Labels> = (0..400).map(|i| up(&format!("s{i:03}"))).collect();
                for round in 0..3_000i64 {
                    let mut app = db.appender();
                    for (i, l) in labels.iter().enumerate() {
                        app.append(l, round * 1_000 + i as i64, (round * 3) as f64)?;
                    }
                    app.commit()?;
                    committed.fetch_add(labels.len() as u64, Ordering::Release);
                }
                Ok(())
            });
            let mut queries = 0;
            while !writer.is_finished() && std::time::Instant::now() < deadline {
                let before = committed.load(Ordering::Acquire);
                let q = db.querier(i64::MIN, i64::MAX);
                let deferred = q.select_deferred(&[all()])?;
                let mut n = 0;
                for part in deferred.chunks(64) {
                    let _ahead = read_ahead(part);
                    let mut buf = Vec::new();
                    for s in part {
                        buf.clear();
                        s.samples_into(&mut buf);
                        n += buf.len() as u64;
                    }
                }
                assert!(
                    n >= before,
                    "a deferred selection counted {n} of {before} samples"
                );
                let plain: u64 = q
                    .select(&[all()])?
                    .iter()
                    .map(|s| s.samples().count() as u64)
                    .sum();
                assert!(
                    plain >= before,
                    "a selection counted {plain} of {before} samples"
                );
                queries += 1;
            }
            done.store(true, Ordering::Release);
            writer
                .join()
                .unwrap_or_else(|_| panic!("the writer panicked"))?;
            assert!(queries > 5, "{queries} queries");
            Ok(())
        })?;
        assert!(!db.blocks().is_empty());
        Ok(())
    }

    /// `last_sample` (the head's shortcut) against decoding everything, over `[lo, hi]`.
    fn check_last(db: &Db, job: &str, lo: i64, hi: i64) -> Option<(i64, f64)> {
        let q = db.querier(lo, hi);
        let selected = q.select(&[Matcher::equal("job", job)]).unwrap_or_default();
        // The labels alone, without reading samples, name the same series.
        let labels: Vec<Labels> = selected.iter().map(|s| s.labels.clone()).collect();
        let alone = q.series_labels(&[Matcher::equal("job", job)]);
        assert_eq!(
            alone.ok(),
            Some(labels.clone()),
            "job {job} in [{lo}, {hi}]"
        );
        // The postings' bound is one.
        let bound = q.series_bound(&[Matcher::equal("job", job)]);
        assert!(bound >= labels.len() as u64, "{bound} for {labels:?}");
        // Selected for the newest sample alone: the same series and the same sample.
        let newest = q
            .select_newest(&[Matcher::equal("job", job)])
            .unwrap_or_default();
        let newest_labels: Vec<Labels> = newest.iter().map(|s| s.labels.clone()).collect();
        assert_eq!(newest_labels, labels, "job {job} in [{lo}, {hi}]");
        let s = selected.first()?;
        let all: Vec<(i64, f64)> = s.samples().collect();
        let mut into = Vec::new();
        s.samples_into(&mut into);
        assert_eq!(into, all, "job {job} in [{lo}, {hi}]");
        let decoded = all.last().copied();
        assert_eq!(s.last_sample(), decoded, "job {job} in [{lo}, {hi}]");
        let n = &newest[0];
        assert_eq!(
            n.last_sample(),
            decoded,
            "job {job} in [{lo}, {hi}], newest only"
        );
        assert_eq!(
            n.samples().last(),
            decoded,
            "job {job} in [{lo}, {hi}], newest only"
        );
        let mut into = Vec::new();
        n.samples_into(&mut into);
        assert_eq!(
            into.last().copied(),
            decoded,
            "job {job} in [{lo}, {hi}], newest only"
        );
        decoded
    }

    #[test]
    fn newest_sample_without_decoding_matches_the_samples() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(dir.path(), Options::default())?;
        let mut app = db.appender();
        for i in 1..=300 {
            app.append(&up("a"), i * 1000, i as f64)?;
            app.append(&up("b"), i * 1000, i as f64)?;
            app.append(&up("c"), i * 1000, i as f64)?;
        }
        app.commit()?;
        assert_eq!(check_last(&db, "a", 0, 400_000), Some((300_000, 300.0)));
        assert_eq!(check_last(&db, "a", 0, 150_500), Some((150_000, 150.0)));
        assert_eq!(check_last(&db, "a", 400_000, 500_000), None);
        // A new value for the newest timestamp wins over the one appended first.
        let mut app = db.appender();
        app.append(&up("b"), 300_000, -1.0)?;
        app.commit()?;
        assert_eq!(check_last(&db, "b", 0, 400_000), Some((300_000, -1.0)));
        // Deleting the newest samples leaves the older ones as the newest.
        db.delete_series(&[Matcher::equal("job", "c")], 250_000, 300_000)?;
        assert_eq!(check_last(&db, "c", 0, 400_000), Some((249_000, 249.0)));
        // A block holding samples newer than the head's (an import) takes precedence.
        db.write_blocks(vec![(up("a"), vec![(350_000, 350.0)])])?;
        assert_eq!(check_last(&db, "a", 0, 400_000), Some((350_000, 350.0)));
        assert_eq!(check_last(&db, "a", 0, 320_000), Some((300_000, 300.0)));
        // Deleted from the block: gone from the labels too.
        db.delete_series(&[Matcher::equal("job", "a")], 340_000, 360_000)?;
        assert_eq!(check_last(&db, "a", 330_000, 400_000), None);
        assert_eq!(check_last(&db, "a", 0, 400_000), Some((300_000, 300.0)));
        Ok(())
    }

    #[test]
    fn block_samples_cut_to_the_range_match_the_iterator() -> Result<(), Error> {
        // Dense block chunks are decoded in place and cut to the querier's range; the
        // head continues the series after them.
        let dir = tmp();
        let db = Db::open(dir.path(), Options::default())?;
        let older: Vec<(i64, f64)> = (1..=400).map(|i| (i * 1000, i as f64 / 4.0)).collect();
        db.write_blocks(vec![(up("d"), older)])?;
        let mut app = db.appender();
        for i in 401..=450 {
            app.append(&up("d"), i * 1000, i as f64 / 4.0)?;
        }
        app.commit()?;
        for (lo, hi) in [
            (0, 500_000),
            (1_000, 400_000),
            (1_001, 399_999),
            (150_500, 250_500),
            (399_000, 402_000),
            (400_500, 450_000),
            (0, 999),
        ] {
            let want = (lo.max(1_000)..=hi.min(450_000))
                .rev()
                .find(|t| t % 1000 == 0)
                .map(|t| (t, (t / 1000) as f64 / 4.0));
            assert_eq!(check_last(&db, "d", lo, hi), want, "[{lo}, {hi}]");
        }
        Ok(())
    }

    #[test]
    fn commit_is_visible_and_survives_reopen() -> Result<(), Error> {
        let dir = tmp();
        {
            let db = Db::open(dir.path(), Options::default())?;
            let mut app = db.appender();
            let r = app.append(&up("a"), 1000, 1.0)?;
            app.append_ref(r, 2000, 2.0)?;
            assert!(
                read_all(&db, "a").is_empty(),
                "uncommitted samples are invisible"
            );
            assert_eq!(
                app.commit()?,
                CommitStats {
                    samples: 2,
                    new_series: 1
                }
            );
            assert_eq!(read_all(&db, "a"), vec![(1000, 1.0), (2000, 2.0)]);
            // Dropped without close: like a crash after the commit.
        }
        let db = Db::open(dir.path(), Options::default())?;
        assert_eq!(read_all(&db, "a"), vec![(1000, 1.0), (2000, 2.0)]);
        assert_eq!(db.replay_report().samples, 2);
        // The reopened store appends to the same series.
        let mut app = db.appender();
        app.append(&up("a"), 3000, 3.0)?;
        assert_eq!(app.commit()?.new_series, 0);
        drop(db);
        let db = Db::open(dir.path(), Options::default())?;
        assert_eq!(read_all(&db, "a").len(), 3);
        assert_eq!(db.stats().series, 1);
        Ok(())
    }

    #[test]
    fn chunks_a_commit_fills_lie_in_the_head_chunk_file_by_target_then_labels() -> Result<(), Error>
    {
        let dir = tmp();
        let db = Db::open(dir.path(), Options::default())?;
        // Two targets of three metrics, each listed against that order; the 121st commit
        // writes out every series' first chunk, and has a second sample of one series.
        let series = |instance: &str, name: &str| {
            Labels::from_pairs([("__name__", name), ("instance", instance)])
        };
        let listed: Vec<Labels> = ["b", "a"]
            .iter()
            .flat_map(|i| ["z", "y", "x"].map(|n| series(i, n)))
            .collect();
        for k in 0..=120i64 {
            let mut app = db.appender();
            for labels in &listed {
                app.append(labels, k * 1000, k as f64)?;
            }
            if k == 120 {
                app.append(&series("b", "x"), k * 1000 + 500, k as f64)?;
            }
            app.commit()?;
        }
        let mut written = Vec::new();
        for s in db.querier(i64::MIN, i64::MAX).select(&[])? {
            let mut ranges = Vec::new();
            s.head_file_ranges(&mut ranges);
            assert_eq!(ranges.len(), 1, "{}: one full chunk", s.labels);
            written.push((ranges[0].1, s.labels.to_string()));
        }
        written.sort();
        let order: Vec<&str> = written.iter().map(|w| w.1.as_str()).collect();
        assert_eq!(
            order,
            [
                r#"x{instance="a"}"#,
                r#"y{instance="a"}"#,
                r#"z{instance="a"}"#,
                r#"x{instance="b"}"#,
                r#"y{instance="b"}"#,
                r#"z{instance="b"}"#,
            ]
        );
        // The series cut before its two samples of the last commit kept both, in order.
        let q = db.querier(i64::MIN, i64::MAX);
        let samples: Vec<(i64, f64)> = q
            .select(&[
                Matcher::equal("__name__", "x"),
                Matcher::equal("instance", "b"),
            ])?
            .iter()
            .flat_map(|s| s.samples().collect::<Vec<_>>())
            .collect();
        assert_eq!(samples.len(), 122);
        assert!(samples.is_sorted_by_key(|s| s.0));
        Ok(())
    }

    #[test]
    fn samples_appended_by_a_second_reference_are_logged_by_the_series_own() -> Result<(), Error> {
        let dir = tmp();
        {
            let db = Db::open(dir.path(), Options::default())?;
            let mut app = db.appender();
            let own = app.append(&up("a"), 1_000, 1.0)?;
            app.commit()?;
            // As a replay does when the WAL names the series by another reference.
            let alias = SeriesRef(own.0 + 100);
            db.inner.head.get_or_create(&up("a"), Some(alias));
            let mut app = db.appender();
            let samples = [(2_000, 2.0)];
            assert_eq!(app.append_refs(&[(alias, &samples[..])])?, None);
            app.commit()?;
            assert_eq!(read_all(&db, "a"), [(1_000, 1.0), (2_000, 2.0)]);
        }
        // The WAL's series records know only the series' own reference.
        let db = Db::open(dir.path(), Options::default())?;
        assert_eq!(read_all(&db, "a"), [(1_000, 1.0), (2_000, 2.0)]);
        Ok(())
    }

    #[test]
    fn second_open_of_a_directory_is_refused() -> Result<(), Error> {
        let dir = tmp();
        let _db = Db::open(dir.path(), Options::default())?;
        assert!(matches!(
            Db::open(dir.path(), Options::default()),
            Err(Error::Locked(_))
        ));
        Ok(())
    }

    /// The directory of the block starting at `min` (the first if several do).
    fn block_dir(blocks: &Path, min: i64) -> PathBuf {
        let prefix = format!("{min:016}-");
        let mut names: Vec<String> = std::fs::read_dir(blocks)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.starts_with(&prefix))
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        blocks.join(names.first().cloned().unwrap_or(prefix))
    }

    #[test]
    fn out_of_order_samples_are_kept_and_the_last_write_wins() -> Result<(), Error> {
        let dir = tmp();
        {
            let db = Db::open(dir.path(), Options::default())?;
            let mut app = db.appender();
            app.append(&up("a"), 2000, 2.0)?;
            app.append(&up("a"), 1000, 1.0)?;
            app.commit()?;
            assert_eq!(read_all(&db, "a"), vec![(1000, 1.0), (2000, 2.0)]);
            let mut app = db.appender();
            app.append(&up("a"), 2000, 2.0)?; // identical resend
            app.append(&up("a"), 1000, 1.0)?; // identical resend of an out-of-order one
            assert_eq!(app.commit()?.samples, 0);
            let mut app = db.appender();
            app.append(&up("a"), 2000, 5.0)?;
            app.append(&up("a"), 1500, 1.5)?;
            app.append(&up("a"), 1500, 1.75)?;
            app.commit()?;
            let want = vec![(1000, 1.0), (1500, 1.75), (2000, 5.0)];
            assert_eq!(read_all(&db, "a"), want);
            // A range that starts between samples.
            let q = db.querier(1200, 1800);
            let got: Vec<(i64, f64)> = q.select(&[Matcher::equal("job", "a")])?[0]
                .samples()
                .collect();
            assert_eq!(got, vec![(1500, 1.75)]);
        }
        // The WAL replays the same outcome.
        let db = Db::open(dir.path(), Options::default())?;
        assert_eq!(
            read_all(&db, "a"),
            vec![(1000, 1.0), (1500, 1.75), (2000, 5.0)]
        );
        Ok(())
    }

    /// A sample newer than a series' last commit is taken without the series' lock;
    /// anything else, and every sample of a series loaded at start until its first
    /// commit, goes through it: resends stay duplicates and old samples stay refused
    /// before and after a restart.
    #[test]
    fn only_samples_newer_than_the_last_commit_skip_the_series_lock() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            ooo_window_ms: Some(500),
            ..Options::default()
        };
        let series = |db: &Db| {
            let live = db.inner.head.live_series();
            assert_eq!(live.len(), 1);
            Arc::clone(&live[0])
        };
        for restarted in [false, true] {
            let db = Db::open(dir.path(), opts.clone())?;
            if !restarted {
                let mut app = db.appender();
                app.append(&up("a"), 2000, 2.0)?;
                app.commit()?;
                let s = series(&db);
                assert!(s.takes_without_lock(2001).is_some());
                assert!(s.takes_without_lock(2000).is_none());
            } else {
                // Loaded from the WAL: nothing committed yet, so everything locks.
                assert!(series(&db).takes_without_lock(1 << 40).is_none());
            }
            let mut app = db.appender();
            app.append(&up("a"), 2000, 2.0)?;
            assert!(matches!(
                app.append(&up("a"), 1000, 1.0),
                Err(Error::OutOfBounds { oldest: 1500, .. })
            ));
            assert_eq!(app.commit()?.samples, 0, "a resend is a duplicate");
            assert_eq!(read_all(&db, "a"), vec![(2000, 2.0)]);
        }
        let db = Db::open(dir.path(), opts)?;
        let mut app = db.appender();
        app.append(&up("a"), 3000, 3.0)?;
        app.commit()?;
        let s = series(&db);
        assert!(s.takes_without_lock(3001).is_some());
        assert!(s.takes_without_lock(3000).is_none());
        assert_eq!(read_all(&db, "a"), vec![(2000, 2.0), (3000, 3.0)]);
        Ok(())
    }

    #[test]
    fn the_out_of_order_window_refuses_what_is_older() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(
            dir.path(),
            Options {
                ooo_window_ms: Some(500),
                ..Options::default()
            },
        )?;
        let mut app = db.appender();
        app.append(&up("a"), 2000, 2.0)?;
        app.commit()?;
        let mut app = db.appender();
        app.append(&up("a"), 1600, 1.6)?;
        assert!(matches!(
            app.append(&up("a"), 1000, 1.0),
            Err(Error::OutOfBounds { oldest: 1500, .. })
        ));
        // A new series is in order however old its first sample.
        app.append(&up("b"), 10, 1.0)?;
        app.commit()?;
        assert_eq!(read_all(&db, "a"), vec![(1600, 1.6), (2000, 2.0)]);
        assert_eq!(read_all(&db, "b"), vec![(10, 1.0)]);
        Ok(())
    }

    #[test]
    fn backfilled_samples_reach_blocks_and_win_over_older_ones() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            retention_ms: Some(1_000_000),
            ..Options::default()
        };
        let mut want = nine_blocks(dir.path(), &opts)?;
        let db = Db::open(dir.path(), opts.clone())?;
        // Rewrite two persisted samples and add one between them, then a sample older
        // than every block.
        let mut app = db.appender();
        app.append(&up("a"), 5_000, -5.0)?;
        app.append(&up("a"), 5_500, 5.5)?;
        app.append(&up("a"), 25_000, -25.0)?;
        app.append(&up("a"), -50_000, -50.0)?;
        app.commit()?;
        want[5].1 = -5.0;
        want[25].1 = -25.0;
        want.insert(6, (5_500, 5.5));
        want.insert(0, (-50_000, -50.0));
        assert_eq!(read_all(&db, "a"), want, "queryable at once");
        // The cut writes them into blocks of their own, overlapping older ones.
        let cut = db.compact_head()?;
        assert_eq!(cut.len(), 3, "{cut:?}");
        assert_eq!(read_all(&db, "a"), want, "read across overlapping blocks");
        // Merging resolves the overlaps.
        db.compact_blocks()?;
        let metas = db.block_metas();
        for w in metas.windows(2) {
            assert!(w[0].max_time <= w[1].min_time, "{metas:?}");
        }
        assert_eq!(read_all(&db, "a"), want);
        drop(db);
        let db = Db::open(dir.path(), opts)?;
        assert_eq!(read_all(&db, "a"), want, "after reopening");
        Ok(())
    }

    #[test]
    fn blocks_share_the_heads_label_sets_and_series_lists_merge_them_once() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            ..Options::default()
        };
        let labels = up;
        // Every block holding series `name` holds the head's own set for it.
        let shared_with_head = |db: &Db, name: &str| {
            let l = labels(name);
            let head = db.inner.head.shared_labels(&l);
            let blocks = db.blocks();
            let held: Vec<&Labels> = blocks
                .iter()
                .flat_map(|b| (0..).map_while(|r| b.series_labels(r)))
                .filter(|s| **s == l)
                .collect();
            !held.is_empty()
                && held
                    .iter()
                    .all(|s| head.as_ref().is_some_and(|h| h.same_set(s)))
        };
        let check = |db: &Db| -> Result<(), Error> {
            let got = db
                .querier(0, 100_000)
                .series_labels(&[Matcher::equal("__name__", "up")])?;
            let want: Vec<Labels> = ["a", "b", "c"].iter().map(|n| labels(n)).collect();
            assert_eq!(got, want);
            // Past "a"'s samples.
            let got = db
                .querier(30_000, 100_000)
                .series_labels(&[Matcher::equal("__name__", "up")])?;
            assert_eq!(got, vec![labels("b"), labels("c")]);
            // Only "a" and "b", from blocks alone.
            let got = db
                .querier(0, 9_000)
                .series_labels(&[Matcher::equal("__name__", "up")])?;
            assert_eq!(got, vec![labels("a"), labels("b")]);
            Ok(())
        };
        {
            let db = Db::open(dir.path(), opts.clone())?;
            // "a" only in blocks once cut, "b" in blocks and the head, "c" only in the head.
            let mut app = db.appender();
            for t in (0..20_000).step_by(1_000) {
                app.append(&labels("a"), t, 1.0)?;
                app.append(&labels("b"), t, 2.0)?;
            }
            app.commit()?;
            let mut app = db.appender();
            for t in (20_000..40_000).step_by(1_000) {
                app.append(&labels("b"), t, 2.0)?;
                app.append(&labels("c"), t, 3.0)?;
            }
            app.commit()?;
            assert!(!db.compact_head()?.is_empty());
            assert!(
                shared_with_head(&db, "b"),
                "a cut block holds the head's set"
            );
            check(&db)?;
        }
        // Blocks open after the WAL's replay: they share the head's sets again.
        let db = Db::open(dir.path(), opts)?;
        assert!(shared_with_head(&db, "b"), "after reopening");
        check(&db)
    }

    /// Appenders that take a series before its first commit each check, under the WAL
    /// lock, whether its series record is written yet: exactly one writes it.
    #[test]
    fn a_series_taken_by_several_appenders_is_logged_once() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(dir.path(), Options::default())?;
        let start = db.wal_end();
        let mut first = db.appender();
        let r = first.append(&up("x"), 1_000, 1.0)?;
        let mut second = db.appender();
        assert_eq!(second.append_refs(&[(r, &[(2_000, 2.0)])])?, None);
        let mut third = db.appender();
        assert_eq!(third.append_refs(&[(r, &[(3_000, 3.0)])])?, None);
        // The second commits first and writes the record; the first then does not.
        assert_eq!(second.commit()?.new_series, 1);
        assert_eq!(first.commit()?.new_series, 0);
        assert_eq!(third.commit()?.new_series, 0);
        let mut late = db.appender();
        assert_eq!(late.append_refs(&[(r, &[(4_000, 4.0)])])?, None);
        assert_eq!(late.commit()?.new_series, 0);

        let (mut records, mut samples) = (0, 0);
        let mut reader = db.wal_reader(start);
        while reader.read(1 << 20, |rec, _| match rec {
            Record::Series(list) => records += list.iter().filter(|(sr, _)| *sr == r).count(),
            Record::Samples(list) => samples += list.len(),
            _ => {}
        })? > 0
        {}
        assert_eq!((records, samples), (1, 4));
        drop(db);
        let db = Db::open(dir.path(), Options::default())?;
        assert_eq!(
            read_all(&db, "x"),
            vec![(1_000, 1.0), (2_000, 2.0), (3_000, 3.0), (4_000, 4.0)]
        );
        Ok(())
    }

    #[test]
    fn rollback_series_written_later_is_logged_once() -> Result<(), Error> {
        let dir = tmp();
        {
            let db = Db::open(dir.path(), Options::default())?;
            let mut app = db.appender();
            app.append(&up("x"), 1000, 1.0)?;
            app.rollback();
            let mut app = db.appender();
            app.append(&up("x"), 2000, 2.0)?;
            assert_eq!(app.commit()?.new_series, 1);
        }
        let db = Db::open(dir.path(), Options::default())?;
        assert_eq!(read_all(&db, "x"), vec![(2000, 2.0)]);
        Ok(())
    }

    /// Every sample committed, read back through a [`WalReader`] in order, and held
    /// segments outlive the cuts without being replayed again.
    #[test]
    fn a_wal_reader_sees_each_commit_once_across_checkpoints() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            wal_segment_size: 4096,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts.clone())?;
        let mut reader = db.wal_reader(db.wal_end());
        let hold = db.hold_wal(reader.position().segment);
        let mut labels: HashMap<SeriesRef, Labels> = HashMap::new();
        let mut seen: Vec<(String, i64, f64)> = Vec::new();
        let mut copied = 0usize;
        let mut drain = |reader: &mut WalReader| -> Result<(), Error> {
            while reader.read(1 << 20, |rec, _| match rec {
                Record::Series(list) => labels.extend(list),
                Record::Samples(list) => {
                    for (r, t, v) in list {
                        let job = labels[&r].get("job").unwrap_or_default().to_string();
                        seen.push((job, t, v));
                    }
                }
                Record::CheckpointSamples(list) => copied += list.len(),
                Record::Deletes(_) => {}
            })? > 0
            {}
            Ok(())
        };
        let mut want = Vec::new();
        for i in 0..50i64 {
            let mut app = db.appender();
            app.append(&up("a"), i * 1000, i as f64)?;
            app.append(&up("b"), i * 1000, -i as f64)?;
            app.commit()?;
            want.push(("a".to_string(), i * 1000, i as f64));
            want.push(("b".to_string(), i * 1000, -i as f64));
            if i == 20 {
                drain(&mut reader)?;
            }
        }
        // Cut blocks while the reader is behind: its segments stay.
        assert!(!db.compact_head()?.is_empty());
        drain(&mut reader)?;
        assert_eq!(seen, want, "every commit once, in order");
        // Four cuts, none copying a sample: the segments older than the head go, the
        // rest stay, their older samples passed over at replay.
        assert_eq!(copied, 0, "no sample copied");
        assert_eq!(reader.skipped_bytes(), 0);
        hold.set(reader.position().segment);
        drop(db);
        // Replay starts at the checkpoint: held old segments add nothing twice.
        let db = Db::open(dir.path(), opts)?;
        assert_eq!(db.stats().samples, 20);
        let all: Vec<(i64, f64)> = (0..50).map(|i| (i * 1000, i as f64)).collect();
        assert_eq!(read_all(&db, "a"), all);
        Ok(())
    }

    /// A cut deletes the segments with nothing newer than the head's oldest sample and
    /// keeps their series aside; a later start reads those series first and passes over
    /// what blocks hold, also after several cuts and with samples arriving late.
    #[test]
    fn cuts_drop_older_segments_without_copying_samples() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            wal_segment_size: 256,
            ..Options::default()
        };
        let mut want = Vec::new();
        {
            let db = Db::open(dir.path(), opts.clone())?;
            for i in 0..50i64 {
                let mut app = db.appender();
                app.append(&up("a"), i * 1000, i as f64)?;
                app.append(&up(&format!("only-{}", i / 10)), i * 1000, 1.0)?;
                app.commit()?;
                want.push((i * 1000, i as f64));
            }
            let before = db.stats().wal_bytes;
            assert_eq!(db.compact_head()?.len(), 4);
            let after = db.stats().wal_bytes;
            assert!(
                after * 2 < before,
                "the WAL went from {before} to {after} bytes"
            );
            let wal = dir.path().join("wal");
            let names: Vec<String> = std::fs::read_dir(&wal)
                .map_err(|e| Error::io(&wal, e))?
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            assert!(
                names.iter().any(|n| n.starts_with("checkpoint.")),
                "{names:?}"
            );
            // A late sample for a range in blocks, and more in order.
            let mut app = db.appender();
            app.append(&up("a"), 5_500, 5.5)?;
            app.commit()?;
            want.push((5_500, 5.5));
            for i in 50..75i64 {
                let mut app = db.appender();
                app.append(&up("a"), i * 1000, i as f64)?;
                app.commit()?;
                want.push((i * 1000, i as f64));
            }
            db.compact_head()?;
        }
        want.sort_by_key(|s| s.0);
        let db = Db::open(dir.path(), opts.clone())?;
        assert!(db.replay_report().corruption.is_none());
        // `a`'s series record was in the first segment, long dropped.
        assert_eq!(read_all(&db, "a"), want);
        // Each block sample once: the head holds only what no block has.
        let in_blocks: u64 = db.block_metas().iter().map(|m| m.num_samples).sum();
        assert_eq!(in_blocks + db.stats().samples, want.len() as u64 + 50);
        assert!(db.replay_report().skipped_samples > 0);
        Ok(())
    }

    #[test]
    fn blocks_share_the_heads_strings() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            ..Options::default()
        };
        let shared =
            |db: &Db| -> Result<bool, Error> {
                let head = db.inner.head.matching(&[Matcher::equal("job", "a")]);
                let blocks = db.inner.block_list();
                let Some(block) = blocks.first() else {
                    return Ok(false);
                };
                let in_block = block.select_labels(&[Matcher::equal("job", "a")], 0, 5_000);
                Ok(head.len() == 1
                    && in_block.len() == 1
                    && head[0].labels.iter().zip(in_block[0].iter()).all(|(h, b)| {
                        Arc::ptr_eq(&h.name, &b.name) && Arc::ptr_eq(&h.value, &b.value)
                    }))
            };
        {
            let db = Db::open(dir.path(), opts.clone())?;
            for t in 0..30 {
                let mut app = db.appender();
                app.append(&up("a"), t * 1000, 1.0)?;
                app.commit()?;
            }
            db.compact_head()?;
            assert!(shared(&db)?, "a block cut now");
        }
        // Opened again: the head is read back first, then the blocks take its strings.
        let db = Db::open(dir.path(), opts)?;
        assert!(shared(&db)?, "a block opened at start");
        Ok(())
    }

    #[test]
    fn blocks_are_cut_and_everything_still_reads() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            ..Options::default()
        };
        let want: Vec<(i64, f64)> = (0..50).map(|i| (i * 1000, i as f64)).collect();
        {
            let db = Db::open(dir.path(), opts.clone())?;
            for &(t, v) in &want {
                let mut app = db.appender();
                app.append(&up("a"), t, v)?;
                app.append(&up("b"), t, -v)?;
                app.commit()?;
            }
            let wal_before = db.stats().wal_bytes;
            let cut = db.compact_head()?;
            // The head spans 49 s: cuts [0,10), [10,20), [20,30) and [30,40) leave 9 s.
            // The third ends the merge range [0,30): it is written with the two blocks
            // before it, as one block.
            let ranges: Vec<(i64, i64)> = cut.iter().map(|m| (m.min_time, m.max_time)).collect();
            assert_eq!(
                ranges,
                vec![(0, 10_000), (10_000, 20_000), (0, 30_000), (30_000, 40_000)]
            );
            let samples: Vec<u64> = cut.iter().map(|m| m.num_samples).collect();
            assert_eq!(samples, vec![20, 20, 60, 20]);
            assert_eq!(cut[2].sources, vec![cut[0].seq, cut[1].seq]);
            let listed: Vec<(i64, i64)> = db
                .block_metas()
                .iter()
                .map(|m| (m.min_time, m.max_time))
                .collect();
            assert_eq!(listed, vec![(0, 30_000), (30_000, 40_000)]);
            let on_disk = std::fs::read_dir(dir.path().join("blocks"))
                .map_err(|e| Error::io(dir.path(), e))?
                .count();
            assert_eq!(on_disk, 2, "the merged cut's partners are deleted");
            assert_eq!(read_all(&db, "a"), want);
            let stats = db.stats();
            assert_eq!(stats.samples, 20, "the head keeps only [40 s, 50 s)");
            // One segment holds everything, newer samples too: it stays, and nothing is
            // copied.
            assert!(stats.wal_bytes >= wal_before);
            // Range reads across the boundary between blocks and head.
            let q = db.querier(35_000, 44_000);
            let s = q.select(&[Matcher::equal("job", "b")])?;
            let got: Vec<(i64, f64)> = s[0].samples().collect();
            assert_eq!(got.first(), Some(&(35_000, -35.0)));
            assert_eq!(got.last(), Some(&(44_000, -44.0)));
            assert_eq!(q.label_values("job", &[])?, vec!["a", "b"]);
        }
        // Reopen: blocks from disk, the head from the WAL, which passes over the 80
        // samples the blocks hold.
        let db = Db::open(dir.path(), opts.clone())?;
        assert_eq!(read_all(&db, "a"), want);
        assert_eq!(db.stats().blocks, 2);
        assert_eq!(db.stats().samples, 20);
        assert_eq!(db.replay_report().skipped_samples, 80);
        let mut app = db.appender();
        app.append(&up("a"), 50_000, 50.0)?;
        app.commit()?;
        drop(db);

        // A corrupt block is moved aside; the rest keeps serving.
        let blocks = dir.path().join("blocks");
        let first = block_dir(&blocks, 0);
        let first_name = first
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let chunks = first.join("chunks");
        let mut bytes = std::fs::read(&chunks).map_err(|e| Error::io(&chunks, e))?;
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&chunks, &bytes).map_err(|e| Error::io(&chunks, e))?;
        let db = Db::open(dir.path(), opts)?;
        assert_eq!(db.stats().blocks, 1);
        assert!(blocks.join(format!("corrupt-{first_name}")).exists());
        let got = read_all(&db, "a");
        assert_eq!(
            got.len(),
            21,
            "everything but the corrupt block's thirty samples"
        );
        assert_eq!(got.first(), Some(&(30_000, 30.0)));
        Ok(())
    }

    /// Nine 10 s blocks and a head of [90 s, 99 s]. Cut under a retention whose merge cap
    /// is one block range, so that no cut is written together with the blocks before it.
    fn nine_blocks(dir: &Path, opts: &Options) -> Result<Vec<(i64, f64)>, Error> {
        let unmerged = Options {
            retention_ms: Some(opts.block_range_ms * 10),
            ..opts.clone()
        };
        let db = Db::open(dir, unmerged)?;
        let want: Vec<(i64, f64)> = (0..100).map(|i| (i * 1000, i as f64)).collect();
        for &(t, v) in &want {
            let mut app = db.appender();
            app.append(&up("a"), t, v)?;
            app.commit()?;
        }
        db.compact_head()?;
        assert_eq!(db.stats().blocks, 9);
        Ok(want)
    }

    #[test]
    fn blocks_merge_into_larger_ranges() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            retention_ms: Some(1_000_000),
            ..Options::default()
        };
        let want = nine_blocks(dir.path(), &opts)?;
        let db = Db::open(dir.path(), opts.clone())?;
        // 10 s blocks merge into 30 s ones, those into one of 90 s (a tenth of the
        // retention, 100 s, caps the growth).
        let merged = db.compact_blocks()?;
        assert_eq!(merged.len(), 4);
        let ranges: Vec<(i64, i64)> = db
            .block_metas()
            .iter()
            .map(|m| (m.min_time, m.max_time))
            .collect();
        assert_eq!(ranges, vec![(0, 90_000)]);
        assert_eq!(read_all(&db, "a"), want);
        drop(db);
        let db = Db::open(dir.path(), opts)?;
        assert_eq!(read_all(&db, "a"), want);
        assert_eq!(
            std::fs::read_dir(dir.path().join("blocks"))
                .map(|d| d.count())
                .unwrap_or(0),
            1,
            "the merged inputs are gone"
        );
        Ok(())
    }

    #[test]
    fn retention_deletes_whole_blocks_oldest_first() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            retention_ms: Some(45_000),
            ..Options::default()
        };
        nine_blocks(dir.path(), &opts)?;
        let db = Db::open(dir.path(), opts)?;
        // Newest sample 99 s: blocks ending at or before 54 s go.
        let deleted = db.apply_retention()?;
        assert_eq!(deleted.len(), 5);
        assert_eq!(read_all(&db, "a").first(), Some(&(50_000, 50.0)));
        assert!(!block_dir(&dir.path().join("blocks"), 0).exists());
        drop(db);
        // By size: blocks go while blocks and WAL exceed the limit; the head stays.
        let db = Db::open(
            dir.path(),
            Options {
                block_range_ms: 10_000,
                retention_ms: None,
                retention_bytes: Some(1),
                ..Options::default()
            },
        )?;
        db.apply_retention()?;
        assert_eq!(db.stats().blocks, 0);
        assert_eq!(read_all(&db, "a").first(), Some(&(90_000, 90.0)));
        Ok(())
    }

    #[test]
    fn deletes_reach_head_and_blocks_and_survive_replay() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            retention_ms: Some(1_000_000),
            ..Options::default()
        };
        let want = nine_blocks(dir.path(), &opts)?;
        {
            let db = Db::open(dir.path(), opts.clone())?;
            let mut app = db.appender();
            app.append(&up("b"), 95_000, 1.0)?;
            app.commit()?;
            // 5 s .. 94 s of job a: across five blocks and the head.
            let touched = db.delete_series(&[Matcher::equal("job", "a")], 5_000, 94_000)?;
            assert!(touched >= 2, "{touched}");
            // Written after the deletion, inside its range: kept.
            let mut app = db.appender();
            app.append(&up("a"), 93_500, 93.5)?;
            app.commit()?;
            let got = read_all(&db, "a");
            let mut expect: Vec<(i64, f64)> = want
                .iter()
                .copied()
                .filter(|s| s.0 < 5_000 || s.0 > 94_000)
                .collect();
            expect.insert(5, (93_500, 93.5));
            assert_eq!(got, expect);
            assert_eq!(read_all(&db, "b"), vec![(95_000, 1.0)]);
            assert!(db.blocks().iter().any(|b| !b.tombstones.is_empty()));
        }
        // Tombstones from disk, the head's deletion from the WAL.
        let db = Db::open(dir.path(), opts.clone())?;
        let got = read_all(&db, "a");
        assert_eq!(got.len(), 5 + 1 + 5, "{got:?}");
        // Cleaning rewrites the blocks without the deleted samples.
        let bytes_before: u64 = db.blocks().iter().map(|b| b.bytes).sum();
        let cleaned = db.clean_tombstones()?;
        assert!(!cleaned.is_empty());
        assert!(db.blocks().iter().all(|b| b.tombstones.is_empty()));
        assert!(db.blocks().iter().map(|b| b.bytes).sum::<u64>() < bytes_before);
        assert_eq!(read_all(&db, "a"), got);
        drop(db);
        let db = Db::open(dir.path(), opts)?;
        assert_eq!(read_all(&db, "a"), got);
        Ok(())
    }

    #[test]
    fn a_snapshot_opens_as_a_store_of_its_own() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            retention_ms: Some(1_000_000),
            ..Options::default()
        };
        let want = nine_blocks(dir.path(), &opts)?;
        let db = Db::open(dir.path(), opts.clone())?;
        let name = db.snapshot(true)?;
        assert!(name.len() > 16 && name.contains('T'), "{name}");
        let without_head = db.snapshot(false)?;
        drop(db);
        let snap = Db::open(dir.path().join("snapshots").join(&name), opts.clone())?;
        assert_eq!(read_all(&snap, "a"), want);
        let snap = Db::open(dir.path().join("snapshots").join(&without_head), opts)?;
        assert_eq!(read_all(&snap, "a"), want[..90].to_vec());
        Ok(())
    }

    #[test]
    fn tsdb_status_counts_the_head() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(dir.path(), Options::default())?;
        let mut app = db.appender();
        for i in 0..5 {
            app.append(&up(&format!("j{i}")), 1000, 1.0)?;
        }
        app.append(
            &Labels::from_pairs([("__name__", "down"), ("job", "j0")]),
            2000,
            1.0,
        )?;
        app.commit()?;
        let s = db.tsdb_status(2);
        assert_eq!(s.num_series, 6);
        assert_eq!(s.chunk_count, 6);
        assert_eq!((s.min_time, s.max_time), (Some(1000), Some(2000)));
        assert_eq!(
            s.postings.series_by_metric_name,
            vec![("up".to_string(), 5), ("down".to_string(), 1)]
        );
        assert_eq!(
            s.postings.values_by_label_name,
            vec![("job".to_string(), 5), ("__name__".to_string(), 2)]
        );
        assert_eq!(
            s.postings.series_by_pair,
            vec![("__name__=up".to_string(), 5), ("job=j0".to_string(), 2)]
        );
        assert_eq!(s.postings.bytes_by_label_name[0], ("job".to_string(), 10));
        Ok(())
    }

    #[test]
    fn a_series_written_after_others_were_cut_reads_whole() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 60_000,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts.clone())?;
        let samples: Vec<(i64, f64)> = (0..600).map(|i| (i * 1000, i as f64)).collect();
        for job in ["a", "b"] {
            let mut app = db.appender();
            for &(t, v) in &samples {
                app.append(&up(job), t, v)?;
            }
            app.commit()?;
            db.compact_head()?;
            assert_eq!(read_all(&db, job), samples, "{job} after its cut");
        }
        db.maintain()?;
        assert_eq!(read_all(&db, "a"), samples);
        assert_eq!(read_all(&db, "b"), samples);
        drop(db);
        let db = Db::open(dir.path(), opts)?;
        assert_eq!(read_all(&db, "b"), samples);
        Ok(())
    }

    #[test]
    fn backfill_during_cuts_loses_nothing() -> Result<(), Error> {
        let dir = tmp();
        let db = open_cutting(dir.path(), 60_000)?;
        let samples: Vec<(i64, f64)> = (0..600).map(|i| (i * 1000, i as f64)).collect();
        let mut app = db.appender();
        for &(t, v) in &samples {
            app.append(&up("a"), t, v)?;
        }
        app.commit()?;
        // Series written one by one, oldest sample first, while blocks are being cut.
        std::thread::scope(|scope| -> Result<(), Error> {
            let cutter = scope.spawn(|| -> Result<(), Error> {
                for _ in 0..200 {
                    db.compact_head()?;
                }
                Ok(())
            });
            for j in 0..20 {
                let mut app = db.appender();
                for &(t, v) in &samples {
                    app.append(&up(&format!("b{j}")), t, v)?;
                }
                app.commit()?;
            }
            cutter
                .join()
                .unwrap_or_else(|_| Err(Error::Corrupt("cutter".into())))
        })?;
        db.maintain()?;
        for j in 0..20 {
            assert_eq!(read_all(&db, &format!("b{j}")), samples, "b{j}");
        }
        Ok(())
    }

    #[test]
    fn blocks_written_directly_split_by_range_and_merge_with_the_rest() -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            retention_ms: Some(1_000_000),
            ..Options::default()
        };
        let mut want = nine_blocks(dir.path(), &opts)?;
        let db = Db::open(dir.path(), opts.clone())?;
        // 25 s of job b, unsorted, one timestamp twice; and one rewrite of job a.
        let mut b: Vec<(i64, f64)> = (0..25).rev().map(|i| (i * 1000, i as f64)).collect();
        b.push((3000, 33.0));
        let written = db.write_blocks(vec![(up("b"), b), (up("a"), vec![(15_000, -15.0)])])?;
        assert_eq!(written.len(), 3);
        let mut want_b: Vec<(i64, f64)> = (0..25).map(|i| (i * 1000, i as f64)).collect();
        want_b[3].1 = 33.0;
        want[15].1 = -15.0;
        assert_eq!(read_all(&db, "b"), want_b);
        assert_eq!(read_all(&db, "a"), want);
        db.compact_blocks()?;
        let metas = db.block_metas();
        for w in metas.windows(2) {
            assert!(w[0].max_time <= w[1].min_time, "{metas:?}");
        }
        assert_eq!(read_all(&db, "b"), want_b);
        assert_eq!(read_all(&db, "a"), want);
        Ok(())
    }

    #[test]
    fn series_in_any_subset_of_blocks_and_head_merge_once_in_label_order() -> Result<(), Error> {
        // 16 series merge in one pass; 8,000 (about 16,000 in all sources, more than
        // PARALLEL_MERGE) in two halves split at a label.
        for n in [16i64, 8_000] {
            let dir = tmp();
            let db = open_cutting(dir.path(), 10_000)?;
            // Series j{i} has samples in the 10 s ranges k = 0, 1, 2 whose bit is set in
            // i (three blocks once cut) and in range 3 (the head) when i is odd; a rewrite
            // in an imported block wins over the first block.
            let name = |i: i64| up(&format!("j{i:04}"));
            let mut want = std::collections::BTreeMap::new();
            for k in 0..4i64 {
                let mut app = db.appender();
                for i in 0..n {
                    let present = if k == 3 {
                        i % 2 == 1
                    } else {
                        i & (1 << k) != 0
                    };
                    if present {
                        for t in [k * 10_000 + 1_000, k * 10_000 + 6_000] {
                            let v = (i * 100 + t / 1000) as f64;
                            app.append(&name(i), t, v)?;
                            want.insert((name(i).to_string(), t), v);
                        }
                    }
                }
                app.commit()?;
                db.maintain()?;
            }
            db.write_blocks(vec![(name(1), vec![(1_000, -1.0)])])?;
            want.insert((name(1).to_string(), 1_000), -1.0);
            assert!(db.block_metas().len() >= 3);
            let q = db.querier(i64::MIN, i64::MAX);
            let series = q.select(&[Matcher::regex("job", ".+")?])?;
            let names: Vec<String> = series.iter().map(|s| s.labels.to_string()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            sorted.dedup();
            assert_eq!(names, sorted, "sorted by labels, each once");
            // Every eighth series has no sample in any source.
            assert_eq!(names.len() as i64, n - n / 8, "every series with a sample");
            let got: std::collections::BTreeMap<(String, i64), f64> = series
                .iter()
                .flat_map(|s| {
                    let key = s.labels.to_string();
                    s.samples().map(move |(t, v)| ((key.clone(), t), v))
                })
                .collect();
            assert_eq!(got, want, "{n} series");
            // A deferred selection: the same series with the same samples, taken as they
            // are read (on two threads, as a query reads them).
            let deferred = q.select_deferred(&[Matcher::regex("job", ".+")?])?;
            let (front, back) = deferred.split_at(deferred.len() / 2);
            let read = |part: &[Series]| -> Vec<(String, Vec<(i64, f64)>)> {
                part.iter()
                    .map(|s| (s.labels.to_string(), s.samples().collect()))
                    .collect()
            };
            let (mut read_all, later) = crate::helpers::join(|| read(front), || read(back));
            read_all.extend(later);
            let eager: Vec<(String, Vec<(i64, f64)>)> = series
                .iter()
                .map(|s| (s.labels.to_string(), s.samples().collect()))
                .collect();
            assert_eq!(read_all, eager, "{n} series, deferred");
        }
        Ok(())
    }

    #[test]
    fn a_deferred_selection_read_after_a_block_cut_misses_nothing() -> Result<(), Error> {
        let dir = tmp();
        let db = open_cutting(dir.path(), 10_000)?;
        let mut app = db.appender();
        let mut want = std::collections::BTreeMap::new();
        for i in 0..50 {
            for t in (0..35_000).step_by(1_000) {
                let v = (i * 1_000 + t / 1_000) as f64;
                app.append(&up(&format!("s{i:02}")), t, v)?;
                want.insert((format!("s{i:02}"), t), v);
            }
        }
        app.commit()?;
        // Selected while the head holds everything; some series read before the cut,
        // the rest after it moved their older samples into blocks and out of the head.
        let q = db.querier(i64::MIN, i64::MAX);
        let selected = q.select_deferred(&[Matcher::regex("job", "s.*")?])?;
        assert_eq!(selected.len(), 50);
        let read = |s: &Series| -> Vec<((String, i64), f64)> {
            let job = s.labels.get("job").unwrap_or_default().to_owned();
            s.samples().map(|(t, v)| ((job.clone(), t), v)).collect()
        };
        let mut got: std::collections::BTreeMap<(String, i64), f64> =
            selected[..10].iter().flat_map(read).collect();
        assert!(!db.compact_head()?.is_empty(), "a block cut");
        assert!(
            read_all(&db, "s20").len() == 35 && db.inner.head.chunk_stats().samples < 50 * 35,
            "the cut truncated the head"
        );
        got.extend(selected[10..].iter().flat_map(read));
        assert_eq!(got, want);
        Ok(())
    }

    #[test]
    fn replay_sorting_keeps_each_series_in_log_order() {
        let src: Vec<(SeriesRef, i64, f64)> = vec![
            (SeriesRef(3), 5, 1.0),
            (SeriesRef(1), 9, 2.0),
            (SeriesRef(3), 2, 3.0),
            (SeriesRef(0), 1, 4.0),
            (SeriesRef(1), 9, 5.0),
        ];
        let (mut dst, mut counts) = (Vec::new(), Vec::new());
        sort_by_series(&src, &mut dst, &mut counts);
        assert_eq!(
            dst,
            vec![
                (SeriesRef(0), 1, 4.0),
                (SeriesRef(1), 9, 2.0),
                (SeriesRef(1), 9, 5.0),
                (SeriesRef(3), 5, 1.0),
                (SeriesRef(3), 2, 3.0),
            ]
        );
    }

    #[test]
    fn series_left_without_samples_leave_the_head_unless_an_appender_holds_them(
    ) -> Result<(), Error> {
        let dir = tmp();
        let opts = Options {
            block_range_ms: 10_000,
            ..Options::default()
        };
        let db = Db::open(dir.path(), opts.clone())?;
        let mut app = db.appender();
        for i in 0..5 {
            app.append(&up("gone"), i * 1000, i as f64)?;
        }
        for i in 0..30 {
            app.append(&up("stays"), i * 1000, i as f64)?;
        }
        app.commit()?;
        let mut held = db.appender();
        held.append(&up("held"), 2000, 2.0)?;
        db.compact_head()?;
        assert_eq!(db.tsdb_status(10).num_series, 2, "gone left the head");
        assert_eq!(db.head_postings_count(&[Matcher::equal("job", "gone")]), 0);
        assert_eq!(read_all(&db, "gone").len(), 5, "its samples are in blocks");
        held.commit()?;
        assert_eq!(read_all(&db, "held"), vec![(2000, 2.0)]);
        // The same labels again make a new series.
        let mut app = db.appender();
        app.append(&up("gone"), 31_000, 31.0)?;
        app.commit()?;
        assert_eq!(read_all(&db, "gone").len(), 6);
        drop(db);
        let db = Db::open(dir.path(), opts)?;
        assert_eq!(read_all(&db, "gone").len(), 6);
        assert_eq!(read_all(&db, "held"), vec![(2000, 2.0)]);
        assert_eq!(read_all(&db, "stays").len(), 30);
        Ok(())
    }

    #[test]
    fn a_clean_close_leaves_a_head_snapshot_that_the_next_open_loads() -> Result<(), Error> {
        let dir = tmp();
        let mut want: Vec<(i64, f64)> = (0..300).map(|i| (i * 1000, i as f64 / 8.0)).collect();
        let odd = [(1, 2.5), (2, f64::INFINITY), (3, 0.1 + 0.2), (4, 7.0)];
        {
            let db = Db::open(dir.path(), Options::default())?;
            let mut app = db.appender();
            for &(t, v) in &want {
                app.append(&up("a"), t, v)?;
            }
            app.append(&up("b"), 5, 1.0)?;
            // An open chunk that turned XOR (a value no decimal holds) beside the
            // decimal ones.
            for &(t, v) in &odd {
                app.append(&up("c"), t, v)?;
            }
            app.commit()?;
            let mut app = db.appender();
            app.append(&up("a"), 1500, -1.5)?; // out of order
            app.commit()?;
            db.close()?;
            // Written after the snapshot: replayed on top of it.
            let mut app = db.appender();
            app.append(&up("a"), 400_000, 400.0)?;
            app.commit()?;
        }
        want.insert(2, (1500, -1.5));
        want.push((400_000, 400.0));
        {
            let db = Db::open(dir.path(), Options::default())?;
            let r = db.replay_report();
            assert_eq!(r.snapshot_series, 3);
            assert_eq!(
                r.samples, 1,
                "only what came after the snapshot is replayed"
            );
            assert_eq!(read_all(&db, "a"), want);
            assert_eq!(read_all(&db, "b"), vec![(5, 1.0)]);
            assert_eq!(read_all(&db, "c"), odd);
            // The loaded head keeps working: more chunks, a resend recognised.
            let mut app = db.appender();
            for i in 401..700 {
                app.append(&up("a"), i * 1000, i as f64)?;
            }
            app.append(&up("b"), 5, 1.0)?;
            assert_eq!(app.commit()?.samples, 299);
            for i in 401..700 {
                want.push((i * 1000, i as f64));
            }
            assert_eq!(read_all(&db, "a"), want);
            // No close: as after a crash.
        }
        let db = Db::open(dir.path(), Options::default())?;
        assert_eq!(
            db.replay_report().snapshot_series,
            0,
            "a snapshot is used once"
        );
        assert_eq!(read_all(&db, "a"), want);
        assert_eq!(read_all(&db, "b"), vec![(5, 1.0)]);
        assert_eq!(read_all(&db, "c"), odd);
        Ok(())
    }

    #[test]
    fn the_per_metric_limit_refuses_new_series_of_that_metric_only() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(
            dir.path(),
            Options {
                wal_fsync: false,
                max_series_per_metric: Some(2),
                ..Options::default()
            },
        )?;
        let l = |m: &str, i: u32| {
            Labels::from_pairs([("__name__", m.to_string()), ("i", i.to_string())])
        };
        let mut app = db.appender();
        app.append(&l("m", 1), 1000, 1.0)?;
        app.append(&l("m", 2), 1000, 1.0)?;
        let e = app.append(&l("m", 3), 1000, 1.0).unwrap_err();
        assert!(
            matches!(&e, Error::SeriesPerMetricLimit { metric, limit: 2, .. } if metric == "m"),
            "{e}"
        );
        assert!(e.is_bad_input());
        // Other metrics and existing series go on.
        app.append(&l("other", 3), 1000, 1.0)?;
        app.append(&l("m", 1), 2000, 2.0)?;
        assert_eq!(app.commit()?.samples, 4);
        assert_eq!(db.stats().series, 3);
        Ok(())
    }

    #[test]
    fn the_series_limit_refuses_new_series_only() -> Result<(), Error> {
        let dir = tmp();
        let db = Db::open(
            dir.path(),
            Options {
                wal_fsync: false,
                max_series: Some(2),
                ..Options::default()
            },
        )?;
        let l = |i: u32| Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]);
        let mut app = db.appender();
        app.append(&l(1), 1000, 1.0)?;
        app.append_pairs(&[("__name__", "m"), ("i", "2")], 1000, 2.0)?;
        app.commit()?;
        let mut app = db.appender();
        let e = app.append(&l(3), 2000, 3.0).unwrap_err();
        assert!(matches!(e, Error::SeriesLimit { limit: 2, .. }), "{e}");
        assert!(e.is_bad_input());
        let e = app
            .append_pairs(&[("__name__", "m"), ("i", "4")], 2000, 4.0)
            .unwrap_err();
        assert!(matches!(e, Error::SeriesLimit { .. }), "{e}");
        // Existing series keep ingesting.
        app.append(&l(1), 2000, 1.5)?;
        app.append_pairs(&[("__name__", "m"), ("i", "2")], 2000, 2.5)?;
        app.commit()?;
        assert_eq!(db.stats().series, 2);
        Ok(())
    }

    #[test]
    fn concurrent_appenders() -> Result<(), Error> {
        let dir = tmp();
        let db = open_without_fsync(dir.path())?;
        std::thread::scope(|scope| {
            for w in 0..4 {
                let db = db.clone();
                scope.spawn(move || -> Result<(), Error> {
                    for batch in 0..50 {
                        let mut app = db.appender();
                        for s in 0..20 {
                            let l = Labels::from_pairs([
                                ("__name__", "m".to_string()),
                                ("w", w.to_string()),
                                ("s", s.to_string()),
                            ]);
                            app.append(&l, batch * 1000, batch as f64)?;
                        }
                        app.commit()?;
                    }
                    Ok(())
                });
            }
        });
        let stats = db.stats();
        assert_eq!(stats.series, 80);
        assert_eq!(stats.samples, 80 * 50);
        drop(db);
        let db = Db::open(dir.path(), Options::default())?;
        assert_eq!(db.stats().samples, 80 * 50);
        Ok(())
    }
}
