//! Bytes per sample on disk after blocks are cut, for a node-exporter-like day: 1,000
//! series per host (integer counters, steady-rate fractional counters, random-walk
//! gauges, constants), 15 s interval with millisecond jitter.
//!
//! Run: `cargo bench -p strata-storage --bench disk_size`.

#![allow(clippy::print_stdout)]

use strata_storage::{Db, Labels, Options};

const SERIES: usize = 1_000;
const STEP: i64 = 15_000;
const HOURS: i64 = 24;

/// A tiny deterministic generator, so runs compare.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn main() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = Db::open(
        dir.path(),
        Options {
            wal_fsync: false,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("open: {e}"));
    let labels: Vec<Labels> = (0..SERIES)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", format!("node_metric_{}", i / 10)),
                ("instance", "host-001:9100".to_string()),
                ("job", "node".to_string()),
                ("n", (i % 10).to_string()),
            ])
        })
        .collect();
    let mut rng = Rng(42);
    // Kinds: 0 integer counter, 1 steady fractional counter, 2 random-walk gauge, 3 constant.
    let mut values: Vec<f64> = (0..SERIES).map(|i| (i * 1000) as f64).collect();
    let steps = HOURS * 3600 * 1000 / STEP;
    let start = 1_700_000_000_000i64;
    let mut total = 0u64;
    for k in 0..steps {
        let mut app = db.appender();
        for (i, l) in labels.iter().enumerate() {
            let v = &mut values[i];
            match i % 4 {
                0 => *v += (rng.next() % 2000) as f64,
                1 => *v += 0.37 * 15.0,
                2 => *v = (*v + (rng.next() % 4096) as f64 - 2048.0).max(0.0),
                _ => {}
            }
            let jitter = (rng.next() % 5) as i64;
            app.append(l, start + k * STEP + jitter, *v)
                .unwrap_or_else(|e| panic!("{e}"));
            total += 1;
        }
        app.commit().unwrap_or_else(|e| panic!("{e}"));
        if k % 240 == 0 {
            db.compact_head().unwrap_or_else(|e| panic!("{e}"));
        }
    }
    db.compact_head().unwrap_or_else(|e| panic!("{e}"));
    let s = db.stats();
    println!(
        "{total} samples appended; {} in {} blocks taking {} bytes: {:.3} bytes/sample on disk",
        s.block_samples,
        s.blocks,
        s.block_bytes,
        s.block_bytes as f64 / s.block_samples as f64
    );
    println!(
        "head: {} samples in {} bytes of chunks ({:.3} bytes/sample); WAL {} bytes",
        s.samples,
        s.chunk_bytes,
        s.chunk_bytes as f64 / s.samples.max(1) as f64,
        s.wal_bytes
    );
}
