//! Bytes per sample on disk after blocks are cut, for a node-exporter-like day of one host.
//!
//! The 1,000 series mirror what node_exporter exposes on a typical host, with values as a
//! scrape parses them from the text format (so decimals are the nearest float64 of what
//! the exporter printed):
//!
//! | share | kind | example | step per 15 s |
//! |---|---|---|---|
//! | 35 % | constants | `node_uname_info`, filesystem sizes, error counters at 0 | none |
//! | 20 % | integer counters | packets, interrupts, context switches | 0..63 |
//! | 15 % | steady-rate counters in hundredths | `node_cpu_seconds_total` | rate ± 0.08 |
//! | 5 % | byte counters | network bytes | 0..128 KiB |
//! | 5 % | sector counters | disk bytes (multiples of 512) | 0..255 sectors |
//! | 10 % | memory gauges in KiB | `node_memory_*_bytes` | ± 16 KiB random walk |
//! | 10 % | gauges in hundredths | load average, temperatures | ± 0.10 random walk |
//!
//! Every series of a scrape shares its timestamp: 15 s apart plus 0–4 ms of jitter.
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

#[derive(Clone, Copy)]
enum Kind {
    Constant,
    IntCounter,
    RateCounter { hundredths_per_step: i64 },
    ByteCounter,
    SectorCounter,
    MemoryGauge,
    HundredthsGauge,
}

/// The kind of series `i` of a host, in the shares of the table above.
fn kind(i: usize) -> Kind {
    match i % 20 {
        0..=6 => Kind::Constant,
        7..=10 => Kind::IntCounter,
        11..=13 => Kind::RateCounter {
            hundredths_per_step: 10 + (i as i64 * 37) % 1490,
        },
        14 => Kind::ByteCounter,
        15 => Kind::SectorCounter,
        16 | 17 => Kind::MemoryGauge,
        _ => Kind::HundredthsGauge,
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
    let kinds: Vec<Kind> = (0..SERIES).map(kind).collect();
    // Integer state per series; the float is derived as the text format would give it.
    let mut state: Vec<i64> = (0..SERIES)
        .map(|i| 1_000_000 + (i as i64 * 7919) % 1_000_000)
        .collect();
    let steps = HOURS * 3600 * 1000 / STEP;
    let start = 1_700_000_000_000i64;
    let mut total = 0u64;
    for k in 0..steps {
        let t = start + k * STEP + (rng.next() % 5) as i64;
        let mut app = db.appender();
        for (i, l) in labels.iter().enumerate() {
            let s = &mut state[i];
            let r = rng.next() as i64;
            let v = match kinds[i] {
                Kind::Constant => *s as f64,
                Kind::IntCounter => {
                    *s += r % 64;
                    *s as f64
                }
                Kind::RateCounter {
                    hundredths_per_step,
                } => {
                    *s += hundredths_per_step + r % 17 - 8;
                    *s as f64 / 100.0
                }
                Kind::ByteCounter => {
                    *s += r % 131_072;
                    *s as f64
                }
                Kind::SectorCounter => {
                    *s += r % 256;
                    (*s * 512) as f64
                }
                Kind::MemoryGauge => {
                    *s = (*s + r % 33 - 16).max(0);
                    (*s * 1024) as f64
                }
                Kind::HundredthsGauge => {
                    *s = (*s + r % 21 - 10).max(0);
                    *s as f64 / 100.0
                }
            };
            app.append(l, t, v).unwrap_or_else(|e| panic!("{e}"));
            total += 1;
        }
        app.commit().unwrap_or_else(|e| panic!("{e}"));
        if k % 240 == 0 {
            db.maintain().unwrap_or_else(|e| panic!("{e}"));
        }
    }
    db.maintain().unwrap_or_else(|e| panic!("{e}"));
    let s = db.stats();
    println!(
        "{total} samples appended; {} in {} blocks taking {} bytes: {:.3} bytes/sample on disk",
        s.block_samples,
        s.blocks,
        s.block_bytes,
        s.block_bytes as f64 / s.block_samples as f64
    );
    println!(
        "head: {} samples in {} bytes of XOR chunks ({:.3} bytes/sample); WAL {} bytes",
        s.samples,
        s.chunk_bytes,
        s.chunk_bytes as f64 / s.samples.max(1) as f64,
        s.wal_bytes
    );
}
