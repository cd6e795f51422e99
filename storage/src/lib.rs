//! strata-storage: the time-series store. It owns samples on disk and in memory; it knows
//! nothing of HTTP, wire formats or PromQL.
//!
//! ```text
//!  Appender::append ──> (validate order) ──> Appender::commit
//!                                              │
//!                                              ├─> WAL segment (CRC32C records, fdatasync)
//!                                              └─> Head: series ──> open chunk (decimal or XOR)
//!                                                        postings: label pair ──> roaring bitmap
//!  Querier::select(matchers) ──> postings ──> series ──> chunk snapshots ──> samples
//! ```
//!
//! ```no_run
//! use strata_storage::{Db, Labels, Matcher, Options};
//! # fn main() -> Result<(), strata_storage::Error> {
//! let db = Db::open("data", Options::default())?;
//! let mut app = db.appender();
//! let up = Labels::from_pairs([("__name__", "up"), ("job", "node")]);
//! let r = app.append(&up, 1_000, 1.0)?;
//! app.append_ref(r, 16_000, 1.0)?;
//! app.commit()?; // durable once this returns
//! let q = db.querier(0, 20_000);
//! for series in q.select(&[Matcher::equal("job", "node")])? {
//!     for (t, v) in series.samples() { let _ = (t, v); }
//! }
//! # Ok(()) }
//! ```

mod block;
mod chunk;
mod db;
mod decimal;
mod dense;
mod error;
mod fault;
mod head;
mod head_chunks;
pub mod helpers;
mod labels;
mod matcher;
mod open;
mod postings;
mod ring;
mod snapshot;
mod varint;
mod wal;

pub use block::BlockMeta;
pub use chunk::prometheus_xor_chunk;
pub use db::{
    read_ahead, Appender, CommitStats, Db, Options, Querier, ReadAhead, Samples, Series,
    SeriesSamples, Stats, TsdbStatus, Unsynced, WalHold,
};
pub use error::Error;
pub use labels::{hash_labels, Label, Labels, MixHasher, MixState as IntHash, METRIC_NAME};
pub use matcher::{MatchKind, Matcher};
pub use postings::PostingsStats;
pub use wal::{Record as WalRecord, ReplayReport, WalPosition, WalReader};

/// The bit pattern of Prometheus' stale marker, a NaN that means "this series ended".
pub const STALE_NAN_BITS: u64 = 0x7ff0_0000_0000_0002;

/// Whether `v` is the stale marker (as opposed to any other NaN).
pub fn is_stale_nan(v: f64) -> bool {
    v.to_bits() == STALE_NAN_BITS
}

/// The stale marker as a float.
pub fn stale_nan() -> f64 {
    f64::from_bits(STALE_NAN_BITS)
}

/// How many cores this process may run on, found once. The standard library's
/// `available_parallelism` reads the cgroup quota files at every call: about 50 µs on
/// this kind of host, a twentieth of a short query that asked for it twice.
pub fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// A dense reference to a series in this store's head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesRef(pub u32);

/// Asks the CPU to start loading the cache line holding `p` and returns at once, so that
/// a loop can have the lines of the next few items on their way while it works on this
/// one. Any address will do: a prefetch reads nothing the program sees and never faults.
#[inline(always)]
pub fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    #[allow(unsafe_code)]
    // SAFETY: `prefetcht0` has no architectural effect and cannot fault, whatever the
    // address; SSE, which provides it, is part of every x86-64 CPU.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
