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

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = Db::open(
        dir.path(),
        Options {
            wal_fsync: false,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("open: {e}"));
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
}

criterion_group!(benches, bench);
criterion_main!(benches);
