//! Remote write out: every sample committed to strata is forwarded to the `remote_write`
//! URLs of the configuration (Mimir, Thanos Receive, VictoriaMetrics, Cortex, Prometheus).
//!
//! ```text
//!  WAL ──> reader (series table, external labels, write_relabel_configs)
//!             │ samples, sharded by series
//!             ├──> shard 1 ──> batch ──> encode 1.0|2.0 ──> snappy ──> POST, retry/backoff
//!             └──> shard n ──> …
//!  position file <── oldest sample not yet sent by every shard
//! ```
//!
//! The queue reads strata's own WAL, so nothing is buffered only in memory: a receiver
//! outage blocks the shards, the reader waits, and the WAL segments it has not read are held
//! through checkpoints. A new queue starts at the end of the WAL: it forwards what is
//! written from then on.
//!
//! Progress is kept in `<data-dir>/remote-write/<name>/`: `position`, the WAL position
//! before which every shard has sent everything (saved twice a second; it is where reading
//! resumes); `shards`, the shard count; and `shard-<i>`, written by shard `i` around each
//! request: the end of the last WAL record it has sent (`done`) and of the last it has
//! attempted. After a restart (even `kill -9`) a shard skips what it had sent, and sends
//! what it was sending when stopped — possibly delivered, possibly not — as batches of
//! their own, taking a 4xx for them as "already there" (a receiver such as Prometheus
//! refuses a sample older than the newest of its series), so every sample arrives once.
//!
//! Each series stays on one shard, so its samples arrive in order. 5xx, 429 and
//! connection errors are retried with exponential backoff (honouring `Retry-After`); other
//! 4xx answers drop the batch, counted. Shards are added while they are busy or the reader
//! waits on them, and removed while idle, between `min_shards` and `max_shards`.

pub(crate) mod config;
mod encode;
#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use strata_storage::{Db, Labels, SeriesRef, WalPosition, WalRecord};

use crate::rules::{lock, AddMetric};
use crate::scrape::relabel::{self, LabelMap};
use config::{Protocol, RemoteWriteConfig};

/// A series as sent: labels after external labels and relabeling, and their 1.0 encoding.
#[derive(Debug)]
pub(crate) struct SeriesEntry {
    labels: Vec<(String, String)>,
    v1_labels: Vec<u8>,
}

/// Samples to send, each with its series.
pub(crate) type Batch = Vec<(Arc<SeriesEntry>, i64, f64)>;

/// Maps keyed by integers (series references, pointers), hashed with one
/// multiplication: SipHash showed in profiles of the forwarding path.
pub(crate) type IdMap<K, V> = HashMap<K, V, strata_storage::IntHash>;

/// A shard's share of one WAL record.
struct Item {
    seq: u64,
    /// Position after the record.
    end: WalPosition,
    /// Attempted before a restart: maybe delivered already.
    resent: bool,
    batch: Batch,
}

/// The remote-write queues of the current configuration.
pub(crate) struct RemoteWrite {
    db: Db,
    dir: PathBuf,
    queues: Mutex<Vec<Queue>>,
}

struct Queue {
    cfg: RemoteWriteConfig,
    external: Vec<(String, String)>,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

/// What a queue's threads share: its settings, stop signal and counters.
struct Shared {
    cfg: RemoteWriteConfig,
    url: crate::http::Url,
    external: Vec<(String, String)>,
    stop: AtomicBool,
    /// Wakes sleeping retries on stop.
    stop_signal: (Mutex<bool>, Condvar),
    read: AtomicU64,
    sent: AtomicU64,
    failed: AtomicU64,
    retried: AtomicU64,
    dropped: AtomicU64,
    resent: AtomicU64,
    pending: AtomicI64,
    bytes: AtomicU64,
    requests: AtomicU64,
    shards: AtomicUsize,
    skipped_bytes: AtomicU64,
    highest_read_ms: AtomicI64,
    highest_sent_ms: AtomicI64,
    /// Requests that failed since the last reshard (no resharding while failing).
    recent_failures: AtomicU64,
    last_error: Mutex<String>,
}

struct Shard {
    /// `shard-<i>`: this shard's progress.
    progress: Progress,
    state: Mutex<ShardState>,
    /// Signals both ways: samples queued (to the shard) and room made (to the reader).
    cv: Condvar,
    /// Time spent in successful requests, for resharding.
    busy_micros: AtomicU64,
}

#[derive(Default)]
struct ShardState {
    queue: VecDeque<Item>,
    queued: usize,
    /// Oldest record sequence number of the batch being sent.
    inflight: Option<u64>,
    /// Send partial batches at once (draining for a reshard).
    flush: bool,
    stop: bool,
}

impl Shard {
    /// The oldest record sequence number this shard has not finished sending.
    fn oldest(&self) -> u64 {
        let st = lock(&self.state);
        let queued = st.queue.front().map_or(u64::MAX, |i| i.seq);
        st.inflight.unwrap_or(u64::MAX).min(queued)
    }
}

impl RemoteWrite {
    pub(crate) fn new(db: Db, data_dir: &Path) -> Arc<RemoteWrite> {
        Arc::new(RemoteWrite {
            db,
            dir: data_dir.join("remote-write"),
            queues: Mutex::new(Vec::new()),
        })
    }

    /// Runs exactly the queues of `configs`: unchanged ones keep running, others stop or
    /// start.
    pub(crate) fn apply(&self, configs: &[RemoteWriteConfig], external: &[(String, String)]) {
        let mut queues = lock(&self.queues);
        let mut keep = Vec::new();
        for q in queues.drain(..) {
            if configs.contains(&q.cfg) && q.external == external {
                keep.push(q);
            } else {
                stop_queue(q);
            }
        }
        for c in configs {
            if keep.iter().any(|q| q.cfg == *c) {
                continue;
            }
            match self.start(c.clone(), external.to_vec()) {
                Ok(q) => keep.push(q),
                Err(e) => tracing::error!(url = %c.url, error = %e, "remote write not started"),
            }
        }
        *queues = keep;
    }

    fn start(
        &self,
        cfg: RemoteWriteConfig,
        external: Vec<(String, String)>,
    ) -> anyhow::Result<Queue> {
        let url = crate::http::Url::parse(&cfg.url)?;
        let dir = self.dir.join(&cfg.name);
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        let shared = Arc::new(Shared {
            cfg: cfg.clone(),
            url,
            external: external.clone(),
            stop: AtomicBool::new(false),
            stop_signal: (Mutex::new(false), Condvar::new()),
            read: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            retried: AtomicU64::new(0),
            dropped: AtomicU64::new(0),
            resent: AtomicU64::new(0),
            pending: AtomicI64::new(0),
            bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            shards: AtomicUsize::new(0),
            skipped_bytes: AtomicU64::new(0),
            highest_read_ms: AtomicI64::new(0),
            highest_sent_ms: AtomicI64::new(0),
            recent_failures: AtomicU64::new(0),
            last_error: Mutex::new(String::new()),
        });
        let db = self.db.clone();
        let sh = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("remote-write-{}", cfg.name))
            .spawn(move || run(db, sh, dir))
            .map_err(|e| anyhow::anyhow!("starting the queue thread: {e}"))?;
        tracing::info!(url = %cfg.url, name = %cfg.name, "remote write started");
        Ok(Queue {
            cfg,
            external,
            shared,
            thread: Some(thread),
        })
    }

    /// Stops every queue, saving where each stopped.
    pub(crate) fn stop(&self) {
        for q in lock(&self.queues).drain(..) {
            stop_queue(q);
        }
    }

    pub(crate) fn metrics(&self, add: AddMetric<'_>) {
        let queues = lock(&self.queues);
        for q in queues.iter() {
            let s = &q.shared;
            let labels = Labels::from_pairs([
                ("remote_name", q.cfg.name.as_str()),
                ("url", q.cfg.url.as_str()),
            ]);
            let c = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
            let read_ms = s.highest_read_ms.load(Ordering::Relaxed);
            let sent_ms = s.highest_sent_ms.load(Ordering::Relaxed);
            let pending = s.pending.load(Ordering::Relaxed).max(0);
            let rows: [(&str, &'static str, &str, f64); 14] = [
                ("strata_remote_write_samples_read_total", "counter", "Samples read from the WAL to forward.", c(&s.read)),
                ("strata_remote_write_samples_sent_total", "counter", "Samples the receiver accepted.", c(&s.sent)),
                ("strata_remote_write_samples_failed_total", "counter", "Samples the receiver refused with a 4xx other than 429 (not retried).", c(&s.failed)),
                ("strata_remote_write_samples_retried_total", "counter", "Samples sent again after a 5xx, a 429 or a connection error.", c(&s.retried)),
                ("strata_remote_write_samples_dropped_total", "counter", "Samples not sent: dropped by write_relabel_configs or of an unknown series.", c(&s.dropped)),
                ("strata_remote_write_samples_resent_total", "counter", "Samples sent again after a restart because their request's answer was not recorded.", c(&s.resent)),
                ("strata_remote_write_samples_pending", "gauge", "Samples read from the WAL and not yet accepted by the receiver.", pending as f64),
                ("strata_remote_write_sent_bytes_total", "counter", "Compressed request bytes accepted by the receiver.", c(&s.bytes)),
                ("strata_remote_write_requests_total", "counter", "Requests the receiver accepted.", c(&s.requests)),
                ("strata_remote_write_shards", "gauge", "Shards sending in parallel.", s.shards.load(Ordering::Relaxed) as f64),
                ("strata_remote_write_wal_skipped_bytes_total", "counter", "WAL bytes passed over because they were deleted or damaged before they were read.", c(&s.skipped_bytes)),
                ("strata_remote_write_highest_read_timestamp_seconds", "gauge", "Newest sample timestamp read from the WAL.", read_ms as f64 / 1e3),
                ("strata_remote_write_highest_sent_timestamp_seconds", "gauge", "Newest sample timestamp the receiver accepted.", sent_ms as f64 / 1e3),
                ("strata_remote_write_lag_seconds", "gauge", "How far sending is behind reading, by sample timestamp (0 when nothing is pending).", if pending > 0 { ((read_ms - sent_ms).max(0)) as f64 / 1e3 } else { 0.0 }),
            ];
            for (name, kind, help, v) in rows {
                add(name, kind, help, labels.clone(), v);
            }
        }
    }
}

fn stop_queue(mut q: Queue) {
    q.shared.stop.store(true, Ordering::SeqCst);
    *lock(&q.shared.stop_signal.0) = true;
    q.shared.stop_signal.1.notify_all();
    if let Some(t) = q.thread.take() {
        let _ = t.join();
    }
    tracing::info!(url = %q.cfg.url, "remote write stopped");
}

/// Reads a progress file: whitespace-separated numbers.
fn read_numbers(path: &Path) -> Option<Vec<u64>> {
    let text = std::fs::read_to_string(path).ok()?;
    text.split_whitespace().map(|x| x.parse().ok()).collect()
}

fn read_position(path: &Path) -> Option<WalPosition> {
    match read_numbers(path)?.as_slice() {
        [segment, offset] => Some(WalPosition {
            segment: *segment,
            offset: *offset,
        }),
        _ => None,
    }
}

/// Replaces a progress file (not synced: it must survive the process, not the machine;
/// older progress only means samples sent again).
fn write_numbers(path: &Path, numbers: &[u64]) {
    let text: Vec<String> = numbers.iter().map(u64::to_string).collect();
    let tmp = path.with_extension("tmp");
    let result =
        std::fs::write(&tmp, text.join(" ") + "\n").and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = result {
        tracing::warn!(path = %path.display(), error = %e, "saving remote-write progress failed");
    }
}

/// A shard's progress file, rewritten in place (one small `pwrite`, no rename) around
/// every request: `done` and `attempted` positions as four fixed-width numbers.
struct Progress {
    path: PathBuf,
    file: Option<std::fs::File>,
}

impl Progress {
    fn open(path: PathBuf) -> Progress {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path);
        if let Err(e) = &file {
            tracing::warn!(path = %path.display(), error = %e, "opening remote-write progress failed");
        }
        Progress {
            path,
            file: file.ok(),
        }
    }

    fn set(&self, done: WalPosition, attempted: WalPosition) {
        use std::os::unix::fs::FileExt;
        let text = format!(
            "{:020} {:020} {:020} {:020}\n",
            done.segment, done.offset, attempted.segment, attempted.offset
        );
        let Some(f) = &self.file else { return };
        if let Err(e) = f.write_all_at(text.as_bytes(), 0) {
            tracing::warn!(path = %self.path.display(), error = %e, "saving remote-write progress failed");
        }
    }
}

fn write_position(path: &Path, pos: WalPosition) {
    write_numbers(path, &[pos.segment, pos.offset]);
}

/// A shard's progress from before a restart: records up to `done` sent, up to
/// `attempted` maybe sent.
#[derive(Debug, Clone, Copy)]
struct Resume {
    done: WalPosition,
    attempted: WalPosition,
}

/// The shard count and each shard's progress saved in `dir`, with `done` raised to
/// `start` (everything before the position is sent by every shard).
fn read_resume(dir: &Path, start: WalPosition) -> Option<Vec<Resume>> {
    let n = match read_numbers(&dir.join("shards"))?.as_slice() {
        [n] if *n > 0 && *n < 100_000 => *n as usize,
        _ => return None,
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let r = match read_numbers(&dir.join(format!("shard-{i}"))).as_deref() {
            Some(&[ds, doff, as_, aoff]) => Resume {
                done: WalPosition {
                    segment: ds,
                    offset: doff,
                }
                .max(start),
                attempted: WalPosition {
                    segment: as_,
                    offset: aoff,
                },
            },
            _ => Resume {
                done: start,
                attempted: start,
            },
        };
        out.push(r);
    }
    Some(out)
}

/// The series as sent, or `None` when relabeling drops it.
fn entry(labels: &Labels, s: &Shared) -> Option<Arc<SeriesEntry>> {
    let mut map: LabelMap = labels
        .iter()
        .map(|l| (l.name.to_string(), l.value.to_string()))
        .collect();
    for (k, v) in &s.external {
        map.entry(k.clone()).or_insert_with(|| v.clone());
    }
    if !relabel::process(&s.cfg.relabel, &mut map) || map.is_empty() {
        return None;
    }
    let labels: Vec<(String, String)> = map.into_iter().filter(|(_, v)| !v.is_empty()).collect();
    let v1_labels = encode::v1_labels(&labels);
    Some(Arc::new(SeriesEntry { labels, v1_labels }))
}

/// The queue's reader: WAL records to shards, position bookkeeping, resharding.
fn run(db: Db, s: Arc<Shared>, dir: PathBuf) {
    let pos_file = dir.join("position");
    let start = read_position(&pos_file).unwrap_or_else(|| db.wal_end());
    let mut resume = read_resume(&dir, start);
    let hold = db.hold_wal(start.segment);
    let mut reader = db.wal_reader(start);
    let q = s.cfg.queue.clone();
    let first = resume.as_ref().map_or(q.min_shards, Vec::len);
    let mut shards = start_shards(&s, &dir, first, start, resume.as_deref());
    let mut series: IdMap<SeriesRef, Option<Arc<SeriesEntry>>> = IdMap::default();
    // Sequence number of each record read and the position after it, until sent.
    let mut marks: VecDeque<(u64, WalPosition)> = VecDeque::new();
    let mut next_seq = 0u64;
    let mut committed = start;
    let mut saved = start;
    let mut last_save = Instant::now();
    let mut last_reshard = Instant::now();
    let mut waited = Duration::ZERO;
    let mut per_shard: Vec<Batch> = vec![Vec::new(); shards.len()];
    write_position(&pos_file, start);
    while !s.stop.load(Ordering::Relaxed) {
        let read = reader.read(8 << 20, |rec, end| {
            if let WalRecord::Series(list) = &rec {
                for (r, l) in list {
                    series.insert(*r, entry(l, &s));
                }
            }
            if let WalRecord::Samples(list) = rec {
                let mut n = 0u64;
                let mut highest = i64::MIN;
                let nshards = per_shard.len();
                for (r, t, v) in list {
                    n += 1;
                    highest = highest.max(t);
                    let e = series
                        .entry(r)
                        .or_insert_with(|| db.series_labels(r).and_then(|l| entry(&l, &s)));
                    match e {
                        Some(e) => per_shard[r.0 as usize % nshards].push((Arc::clone(e), t, v)),
                        None => {
                            s.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                s.read.fetch_add(n, Ordering::Relaxed);
                s.highest_read_ms.fetch_max(highest, Ordering::Relaxed);
                for (i, (shard, batch)) in shards.iter().zip(per_shard.iter_mut()).enumerate() {
                    if batch.is_empty() {
                        continue;
                    }
                    let r = resume.as_ref().and_then(|r| r.get(i));
                    if r.is_some_and(|r| end <= r.done) {
                        batch.clear();
                        continue;
                    }
                    let item = Item {
                        seq: next_seq,
                        end,
                        resent: r.is_some_and(|r| end <= r.attempted),
                        batch: std::mem::take(batch),
                    };
                    waited += enqueue(&s, shard, item);
                }
            }
            marks.push_back((next_seq, end));
            next_seq += 1;
        });
        let read = match read {
            Ok(n) => n,
            Err(e) => {
                *lock(&s.last_error) = format!("reading the WAL: {e}");
                tracing::warn!(error = %e, "remote write: reading the WAL failed");
                0
            }
        };
        s.skipped_bytes
            .store(reader.skipped_bytes(), Ordering::Relaxed);
        committed = advance(&shards, &mut marks, next_seq, committed);
        if committed != saved && last_save.elapsed() >= Duration::from_millis(500) {
            write_position(&pos_file, committed);
            hold.set(committed.segment);
            saved = committed;
            last_save = Instant::now();
            // Past every attempt of the previous run: nothing more to skip or resend.
            if resume
                .as_ref()
                .is_some_and(|r| r.iter().all(|r| r.attempted <= committed))
            {
                resume = None;
            }
        }
        if last_reshard.elapsed() >= Duration::from_secs(10) {
            let want = desired_shards(&s, &shards, last_reshard.elapsed(), waited);
            if want != shards.len() && resume.is_none() && drain(&s, &shards) {
                tracing::info!(from = shards.len(), to = want, url = %s.cfg.url, "resharding remote write");
                stop_shards(&shards);
                committed = advance(&shards, &mut marks, next_seq, committed);
                write_position(&pos_file, committed);
                saved = committed;
                shards = start_shards(&s, &dir, want, committed, None);
                per_shard = vec![Vec::new(); shards.len()];
            }
            waited = Duration::ZERO;
            last_reshard = Instant::now();
            s.recent_failures.store(0, Ordering::Relaxed);
        }
        if read == 0 {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    stop_shards(&shards);
    committed = advance(&shards, &mut marks, next_seq, committed);
    write_position(&pos_file, committed);
}

/// The position before which every shard has sent everything: pops the marks of records
/// older than the oldest one a shard still holds.
fn advance(
    shards: &[Arc<Shard>],
    marks: &mut VecDeque<(u64, WalPosition)>,
    next_seq: u64,
    mut committed: WalPosition,
) -> WalPosition {
    let done = shards
        .iter()
        .map(|sh| sh.oldest())
        .min()
        .unwrap_or(u64::MAX)
        .min(next_seq);
    while let Some(&(seq, p)) = marks.front() {
        if seq >= done {
            break;
        }
        committed = p;
        marks.pop_front();
    }
    committed
}

/// Queues `item` on `shard`, waiting while the shard is full. Returns the time waited.
fn enqueue(s: &Shared, shard: &Shard, item: Item) -> Duration {
    let started = Instant::now();
    let cap = s.cfg.queue.capacity.max(s.cfg.queue.max_samples_per_send);
    let mut st = lock(&shard.state);
    while st.queued > 0 && st.queued + item.batch.len() > cap && !s.stop.load(Ordering::Relaxed) {
        st = shard
            .cv
            .wait_timeout(st, Duration::from_millis(100))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
    if s.stop.load(Ordering::Relaxed) {
        return started.elapsed();
    }
    s.pending
        .fetch_add(item.batch.len() as i64, Ordering::Relaxed);
    st.queued += item.batch.len();
    st.queue.push_back(item);
    shard.cv.notify_all();
    started.elapsed()
}

/// Shards wanted from how busy sending kept them and how long the reader waited for room.
fn desired_shards(s: &Shared, shards: &[Arc<Shard>], over: Duration, waited: Duration) -> usize {
    let q = &s.cfg.queue;
    let n = shards.len();
    let busy: u64 = shards
        .iter()
        .map(|sh| sh.busy_micros.swap(0, Ordering::Relaxed))
        .sum();
    let util = busy as f64 / (over.as_micros().max(1) as f64 * n as f64);
    let behind = waited.as_secs_f64() / over.as_secs_f64().max(1e-3);
    let failing = s.recent_failures.load(Ordering::Relaxed) > 0;
    shards_for(n, util, behind, failing, q.min_shards, q.max_shards)
}

/// The shard count to move to from `n`: doubled while shards were busy sending more than
/// 70 % of the time or the reader waited for room more than 20 % of it, halved while they
/// were busy less than 20 %, unchanged while requests fail (more shards would only retry
/// more); always within `[min, max]`.
fn shards_for(n: usize, util: f64, behind: f64, failing: bool, min: usize, max: usize) -> usize {
    let want = if failing {
        n
    } else if util > 0.7 || behind > 0.2 {
        n * 2
    } else if util < 0.2 {
        n / 2
    } else {
        n
    };
    want.clamp(min, max)
}

/// Waits until every shard has sent everything queued; false if stopped first.
fn drain(s: &Shared, shards: &[Arc<Shard>]) -> bool {
    for sh in shards {
        lock(&sh.state).flush = true;
        sh.cv.notify_all();
    }
    let ok = loop {
        if s.stop.load(Ordering::Relaxed) {
            break false;
        }
        if shards.iter().all(|sh| sh.oldest() == u64::MAX) {
            break true;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    for sh in shards {
        lock(&sh.state).flush = false;
    }
    ok
}

/// Starts `n` shards with their progress files (from `resume`, or all at `at`), after
/// recording the count.
fn start_shards(
    s: &Arc<Shared>,
    dir: &Path,
    n: usize,
    at: WalPosition,
    resume: Option<&[Resume]>,
) -> Vec<Arc<Shard>> {
    let n = n.max(1);
    write_numbers(&dir.join("shards"), &[n as u64]);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let progress = Progress::open(dir.join(format!("shard-{i}")));
        if resume.is_none() {
            progress.set(at, at);
        }
        let shard = Arc::new(Shard {
            progress,
            state: Mutex::new(ShardState::default()),
            cv: Condvar::new(),
            busy_micros: AtomicU64::new(0),
        });
        let (sh, ss) = (Arc::clone(&shard), Arc::clone(s));
        let done = resume.and_then(|r| r.get(i)).map_or(at, |r| r.done);
        let spawned = std::thread::Builder::new()
            .name(format!("remote-write-{}-{i}", s.cfg.name))
            .spawn(move || shard_loop(&ss, &sh, done));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting a remote-write shard failed");
            break;
        }
        out.push(shard);
    }
    s.shards.store(out.len(), Ordering::Relaxed);
    out
}

/// Tells shards to end; they leave after their current request.
fn stop_shards(shards: &[Arc<Shard>]) {
    for sh in shards {
        lock(&sh.state).stop = true;
        sh.cv.notify_all();
    }
}

fn shard_loop(s: &Shared, shard: &Shard, mut done: WalPosition) {
    let q = &s.cfg.queue;
    let mut batch: Batch = Vec::with_capacity(q.max_samples_per_send);
    let mut raw = Vec::new();
    loop {
        let (resent, last_end) = {
            let mut st = lock(&shard.state);
            let mut deadline: Option<Instant> = None;
            loop {
                if st.stop || s.stop.load(Ordering::Relaxed) {
                    return;
                }
                let ready = st.queued >= q.max_samples_per_send
                    || st.queue.front().is_some_and(|i| i.resent)
                    || (st.queued > 0
                        && (st.flush || deadline.is_some_and(|d| Instant::now() >= d)));
                if ready {
                    break;
                }
                if st.queued > 0 && deadline.is_none() {
                    deadline = Some(
                        Instant::now() + Duration::from_millis(q.batch_send_deadline_ms as u64),
                    );
                }
                let wait = deadline.map_or(Duration::from_millis(200), |d| {
                    d.saturating_duration_since(Instant::now())
                        .min(Duration::from_millis(200))
                });
                st = shard
                    .cv
                    .wait_timeout(st, wait)
                    .map(|(g, _)| g)
                    .unwrap_or_else(|p| p.into_inner().0);
            }
            // Whole items only, so that `done` is exact; resent items go alone.
            let resent = st.queue.front().is_some_and(|i| i.resent);
            st.inflight = st.queue.front().map(|i| i.seq);
            let mut last_end = done;
            while let Some(front) = st.queue.front() {
                let fits =
                    batch.is_empty() || batch.len() + front.batch.len() <= q.max_samples_per_send;
                if front.resent != resent || !fits {
                    break;
                }
                if let Some(item) = st.queue.pop_front() {
                    last_end = item.end;
                    batch.extend(item.batch);
                }
            }
            st.queued -= batch.len();
            shard.cv.notify_all();
            (resent, last_end)
        };
        shard.progress.set(done, last_end);
        if send(s, shard, &batch, &mut raw, resent) {
            done = last_end;
            shard.progress.set(done, done);
        }
        s.pending.fetch_sub(batch.len() as i64, Ordering::Relaxed);
        batch.clear();
        lock(&shard.state).inflight = None;
    }
}

/// Sends one batch until it is accepted, refused for good, or the queue stops; false
/// when stopped first. A `resent` batch refused with a 4xx was delivered before.
fn send(s: &Shared, shard: &Shard, batch: &Batch, raw: &mut Vec<u8>, resent: bool) -> bool {
    let q = &s.cfg.queue;
    let content_type = match s.cfg.protocol {
        Protocol::V1 => {
            encode::v1(batch, raw);
            ("application/x-protobuf", "0.1.0")
        }
        Protocol::V2 => {
            encode::v2(batch, raw);
            (
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
                "2.0.0",
            )
        }
    };
    let body = match snap::raw::Encoder::new().compress_vec(raw) {
        Ok(b) => b,
        Err(e) => {
            *lock(&s.last_error) = format!("compressing a batch: {e}");
            s.failed.fetch_add(batch.len() as u64, Ordering::Relaxed);
            return true;
        }
    };
    let user_agent = concat!("strata/", env!("CARGO_PKG_VERSION"));
    let mut headers: Vec<(&str, &str)> = vec![
        ("Content-Encoding", "snappy"),
        ("Content-Type", content_type.0),
        ("X-Prometheus-Remote-Write-Version", content_type.1),
        ("User-Agent", user_agent),
    ];
    if let Some(a) = &s.cfg.auth {
        headers.push(("Authorization", a));
    }
    for (k, v) in &s.cfg.headers {
        headers.push((k, v));
    }
    let n = batch.len() as u64;
    if resent {
        s.resent.fetch_add(n, Ordering::Relaxed);
    }
    let mut backoff = q.min_backoff_ms.max(1) as u64;
    loop {
        if s.stop.load(Ordering::Relaxed) {
            return false;
        }
        let started = Instant::now();
        let res = crate::http::request_tls(
            "POST",
            &s.url,
            &headers,
            &body,
            Duration::from_millis(s.cfg.timeout_ms as u64),
            s.cfg.tls.as_ref(),
        );
        let wait_ms = match res {
            Ok(r) if (200..300).contains(&r.status) => {
                shard
                    .busy_micros
                    .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
                s.sent.fetch_add(n, Ordering::Relaxed);
                s.bytes.fetch_add(body.len() as u64, Ordering::Relaxed);
                s.requests.fetch_add(1, Ordering::Relaxed);
                let newest = batch.iter().map(|x| x.1).max().unwrap_or(0);
                s.highest_sent_ms.fetch_max(newest, Ordering::Relaxed);
                return true;
            }
            Ok(r) if r.status == 429 || r.status >= 500 => {
                *lock(&s.last_error) = format!(
                    "server returned HTTP status {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(512)]).trim()
                );
                let after = r
                    .header("retry-after")
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(|secs| secs.min(300) * 1000);
                after.unwrap_or(backoff)
            }
            Ok(_) if resent => return true,
            Ok(r) => {
                let msg = format!(
                    "server returned HTTP status {}: {}",
                    r.status,
                    String::from_utf8_lossy(&r.body[..r.body.len().min(512)]).trim()
                );
                tracing::warn!(url = %s.cfg.url, samples = n, error = %msg, "remote write batch refused; dropped");
                *lock(&s.last_error) = msg;
                s.failed.fetch_add(n, Ordering::Relaxed);
                return true;
            }
            Err(e) => {
                *lock(&s.last_error) = e.to_string();
                backoff
            }
        };
        s.retried.fetch_add(n, Ordering::Relaxed);
        if s.recent_failures.fetch_add(1, Ordering::Relaxed) == 0 {
            tracing::warn!(url = %s.cfg.url, error = %lock(&s.last_error), retry_in_ms = wait_ms, "remote write failed; retrying");
        }
        if crate::rules::sleep_until(&s.stop_signal, crate::rules::now_ms() + wait_ms as i64) {
            return false;
        }
        backoff = (backoff * 2).min(q.max_backoff_ms.max(1) as u64);
    }
}
