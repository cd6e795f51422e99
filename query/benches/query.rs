//! Range-query evaluation: `sum by (instance) (rate(x[5m]))` over 1,000 series for 6 h at
//! a 15 s step (1,441 steps, about 1.5 million samples read).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use strata_query::Engine;
use strata_storage::{Db, Labels, Options};

const SERIES: usize = 1_000;
const INSTANCES: usize = 100;
const START: i64 = 1_700_000_000_000;
const HOURS: i64 = 6;

fn load(db: &Db) {
    let labels: Vec<Labels> = (0..SERIES)
        .map(|i| {
            Labels::from_pairs([
                ("__name__", "x".to_string()),
                ("instance", format!("host-{:03}:9100", i % INSTANCES)),
                ("job", "node".to_string()),
                ("series", (i / INSTANCES).to_string()),
            ])
        })
        .collect();
    // 5 minutes of history before the first step, then 6 hours, every 15 s.
    let first = START - 5 * 60_000;
    let last = START + HOURS * 3_600_000;
    let mut t = first;
    let mut k = 0u64;
    while t <= last {
        let mut app = db.appender();
        for (i, l) in labels.iter().enumerate() {
            let v = (k * (1 + i as u64 % 5)) as f64;
            app.append(l, t + (i % 5) as i64, v)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        app.commit().unwrap_or_else(|e| panic!("{e}"));
        t += 15_000;
        k += 1;
    }
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
    load(&db);
    let engine = Engine::default();
    let end = START + HOURS * 3_600_000;
    let mut g = c.benchmark_group("query");
    g.sample_size(20);
    g.bench_function("sum_by_instance_rate_5m_1000_series_6h_15s", |b| {
        b.iter(|| {
            engine
                .range_query(
                    &db,
                    black_box("sum by (instance) (rate(x[5m]))"),
                    START,
                    end,
                    15_000,
                )
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    g.bench_function("instant_sum_rate_5m_1000_series", |b| {
        b.iter(|| {
            engine
                .instant_query(&db, black_box("sum(rate(x[5m]))"), end)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
