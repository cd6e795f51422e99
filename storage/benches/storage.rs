//! Storage hot paths: appending through the public API (WAL write + head), and selecting
//! series through the postings index.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use strata_storage::{Db, Labels, Matcher, Options};

const SERIES: usize = 10_000;

fn labels() -> Vec<Labels> {
    (0..SERIES)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", format!("metric_{}", i % 100)),
                ("instance", format!("host-{:03}:9100", i / 100)),
                ("job", "node".to_string()),
            ])
        })
        .collect()
}

/// A store in a fresh temporary directory, the WAL not synced.
fn fresh_store() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = Db::open(
        dir.path(),
        Options {
            wal_fsync: false,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("open: {e}"));
    (dir, db)
}

fn bench(c: &mut Criterion) {
    let (_dir, db) = fresh_store();
    let ls = labels();
    let mut g = c.benchmark_group("storage");
    g.throughput(Throughput::Elements(SERIES as u64));
    let mut t = 1_700_000_000_000i64;
    g.bench_function("append_commit_10000_series_one_sample", |b| {
        b.iter_batched(
            || {
                t += 15_000;
                t
            },
            |t| {
                let mut app = db.appender();
                for (i, l) in ls.iter().enumerate() {
                    app.append(l, t, i as f64).unwrap_or_else(|e| panic!("{e}"));
                }
                app.commit().unwrap_or_else(|e| panic!("{e}"))
            },
            BatchSize::SmallInput,
        )
    });
    g.throughput(Throughput::Elements(1));
    let m = [
        Matcher::equal("__name__", "metric_7"),
        Matcher::equal("instance", "host-042:9100"),
    ];
    let q = db.querier(i64::MIN, i64::MAX);
    g.bench_function("select_1_of_10000_by_two_labels", |b| {
        b.iter(|| q.select(black_box(&m)).unwrap_or_else(|e| panic!("{e}")))
    });
    g.finish();
    read(c);
}

/// Reading every sample of 1,000 series over 12 h: from memory-mapped blocks (dense
/// chunks) and from the head (XOR chunks).
fn read(c: &mut Criterion) {
    const N: usize = 1_000;
    const STEPS: i64 = 18 * 240;
    let start = 1_700_000_000_000i64;
    let fill = |opts: Options| {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let db = Db::open(dir.path(), opts).unwrap_or_else(|e| panic!("open: {e}"));
        let ls: Vec<Labels> = (0..N)
            .map(|i| Labels::from_pairs([("__name__", "cpu".to_string()), ("n", i.to_string())]))
            .collect();
        for k in 0..STEPS {
            let mut app = db.appender();
            for (i, l) in ls.iter().enumerate() {
                let v = (k * (100 + i as i64) + (k * 7 + i as i64) % 13) as f64 / 100.0;
                app.append(l, start + k * 15_000 + k % 3, v)
                    .unwrap_or_else(|e| panic!("{e}"));
            }
            app.commit().unwrap_or_else(|e| panic!("{e}"));
            if k % 240 == 0 {
                db.maintain().unwrap_or_else(|e| panic!("{e}"));
            }
        }
        db.maintain().unwrap_or_else(|e| panic!("{e}"));
        (dir, db)
    };
    let (_d1, blocks) = fill(Options {
        wal_fsync: false,
        ..Options::default()
    });
    let (_d2, head) = fill(Options {
        wal_fsync: false,
        block_range_ms: 100 * 3_600_000,
        ..Options::default()
    });
    let mut g = c.benchmark_group("read");
    g.throughput(Throughput::Elements(N as u64 * 12 * 240));
    g.sample_size(10);
    let m = [Matcher::equal("__name__", "cpu")];
    for (name, db) in [("blocks_dense", &blocks), ("head_xor", &head)] {
        g.bench_function(format!("{name}_1000_series_12h"), |b| {
            // As queries read them: into one buffer reused from series to series.
            let mut buf = Vec::new();
            b.iter(|| {
                let q = db.querier(start, start + 12 * 3_600_000);
                let mut n = 0usize;
                for s in q.select(&m).unwrap_or_else(|e| panic!("{e}")) {
                    buf.clear();
                    s.samples_into(&mut buf);
                    n += buf.len();
                }
                assert_eq!(n, N * 12 * 240 + N);
                n
            })
        });
    }
    g.finish();
}

/// XOR-encoding one chunk of 120 samples, as the head appends them: an integer counter, a
/// counter in hundredths, a random-walk gauge with full-precision steps and a constant, each
/// 15 s apart with a few milliseconds of jitter.
fn encode(c: &mut Criterion) {
    let mut x = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut kinds: Vec<Vec<(i64, f64)>> = Vec::new();
    for kind in 0..4 {
        let (mut t, mut v) = (1_700_000_000_000i64, 1_000.0f64);
        let mut ticks = 100_000u64;
        kinds.push(
            (0..120)
                .map(|_| {
                    t += 15_000 + (next() % 5) as i64;
                    match kind {
                        0 => v += (next() % 64) as f64,
                        1 => {
                            ticks += next() % 1_500;
                            v = ticks as f64 / 100.0;
                        }
                        2 => v += (next() % 1_000) as f64 / 997.0 - 0.5,
                        _ => {}
                    }
                    (t, v)
                })
                .collect(),
        );
    }
    let mut g = c.benchmark_group("chunk");
    g.throughput(Throughput::Elements(4 * 120));
    g.bench_function("xor_encode_4_kinds_120_samples", |b| {
        b.iter(|| {
            kinds
                .iter()
                .map(|k| strata_storage::prometheus_xor_chunk(black_box(k)).len())
                .sum::<usize>()
        })
    });
    g.finish();
}

/// A block cut: 2,000 series, 3.5 h of 15 s samples in the head (chunks in head chunk
/// files), the oldest 2 h written as a block and the WAL truncated after it.
fn cut(c: &mut Criterion) {
    const N: usize = 2_000;
    const STEPS: i64 = 14 * 60;
    let start = 1_700_006_400_000i64;
    let ls: Vec<Labels> = (0..N)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", format!("metric_{}", i % 50)),
                ("instance", format!("host-{:03}:9100", i / 50)),
            ])
        })
        .collect();
    let mut g = c.benchmark_group("cut");
    g.sample_size(10);
    g.throughput(Throughput::Elements(N as u64 * 480));
    g.bench_function("head_block_2000_series_2h", |b| {
        b.iter_batched(
            || {
                let (dir, db) = fresh_store();
                for k in 0..STEPS {
                    let mut app = db.appender();
                    for (i, l) in ls.iter().enumerate() {
                        let v = (k * (1 + i as i64 % 7)) as f64;
                        app.append(l, start + k * 15_000 + (k + i as i64) % 5, v)
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                    app.commit().unwrap_or_else(|e| panic!("{e}"));
                }
                (dir, db)
            },
            |(dir, db)| {
                let cut = db.compact_head().unwrap_or_else(|e| panic!("{e}"));
                assert_eq!(cut.len(), 1);
                (dir, db)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, bench, encode, cut);
criterion_main!(benches);
