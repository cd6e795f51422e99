//! Query evaluation on dashboard-shaped data:
//!
//! - `x`: 1,000 counters (100 instances), 6 h at 15 s;
//! - `node_cpu_seconds_total`: 100 hosts x 2 CPUs x 8 modes, 6 h at 15 s;
//! - `http_request_duration_seconds_bucket`: 100 hosts x 10 buckets, 6 h at 15 s;
//! - `big`: 100,000 series with one sample each, for a regex selector.
//!
//! Range queries span the 6 h at a 15 s step (1,441 steps).

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use strata_query::Engine;
use strata_storage::{Db, Labels, Options};

const START: i64 = 1_700_000_000_000;
const HOURS: i64 = 6;
const MODES: [&str; 8] = [
    "idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice",
];
const LE: [&str; 10] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
];

/// Appends every series at every 15 s step from 5 minutes before START to the end.
fn load_counters(db: &Db, labels: &[Labels], rate: impl Fn(usize) -> f64) {
    let last = START + HOURS * 3_600_000;
    let mut t = START - 5 * 60_000;
    let mut k = 0u64;
    while t <= last {
        let mut app = db.appender();
        for (i, l) in labels.iter().enumerate() {
            app.append(l, t + (i % 7) as i64, (k as f64 * rate(i)).floor())
                .unwrap_or_else(|e| panic!("{e}"));
        }
        app.commit().unwrap_or_else(|e| panic!("{e}"));
        t += 15_000;
        k += 1;
    }
}

fn series(name: &str, extra: &[(&str, String)]) -> Labels {
    let mut pairs = vec![("__name__", name.to_string())];
    pairs.extend(extra.iter().map(|(k, v)| (*k, v.clone())));
    Labels::from_pairs(pairs)
}

fn open() -> (tempfile::TempDir, Db) {
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
    let (_dir, db) = open();
    let x: Vec<Labels> = (0..1_000)
        .map(|i| {
            series(
                "x",
                &[
                    ("instance", format!("host-{:03}:9100", i % 100)),
                    ("job", "node".into()),
                    ("series", (i / 100).to_string()),
                ],
            )
        })
        .collect();
    load_counters(&db, &x, |i| (1 + i % 5) as f64);
    let cpu: Vec<Labels> = (0..100)
        .flat_map(|h| {
            (0..2).flat_map(move |c| {
                MODES.iter().map(move |m| {
                    series(
                        "node_cpu_seconds_total",
                        &[
                            ("cpu", c.to_string()),
                            ("instance", format!("host-{h:03}:9100")),
                            ("job", "node".into()),
                            ("mode", m.to_string()),
                        ],
                    )
                })
            })
        })
        .collect();
    load_counters(&db, &cpu, |i| {
        if i % 8 == 0 {
            12.0
        } else {
            0.4 * (i % 8) as f64
        }
    });
    let buckets: Vec<Labels> = (0..100)
        .flat_map(|h| {
            LE.iter().map(move |le| {
                series(
                    "http_request_duration_seconds_bucket",
                    &[
                        ("instance", format!("host-{h:03}:8080")),
                        ("job", "api".into()),
                        ("le", le.to_string()),
                    ],
                )
            })
        })
        .collect();
    load_counters(&db, &buckets, |i| 3.0 * (1 + i % 10) as f64);
    let big: Vec<Labels> = (0..100_000)
        .map(|i| {
            series(
                "big",
                &[
                    ("path", format!("/api/v{}/item/{i}", i % 3)),
                    ("job", "web".into()),
                ],
            )
        })
        .collect();
    let mut app = db.appender();
    for l in &big {
        app.append(l, START + HOURS * 3_600_000, 1.0)
            .unwrap_or_else(|e| panic!("{e}"));
    }
    app.commit().unwrap_or_else(|e| panic!("{e}"));

    let engine = Engine::default();
    let end = START + HOURS * 3_600_000;
    let mut g = c.benchmark_group("query");
    g.sample_size(10);
    let range = |name: &str, q: &'static str, g: &mut criterion::BenchmarkGroup<'_, _>| {
        g.bench_function(name, |b| {
            b.iter(|| {
                engine
                    .range_query(&db, black_box(q), START, end, 15_000)
                    .unwrap_or_else(|e| panic!("{e}"))
            })
        });
    };
    range(
        "sum_by_instance_rate_5m_1000_series_6h_15s",
        "sum by (instance) (rate(x[5m]))",
        &mut g,
    );
    range(
        "cpu_busy_by_instance_100_hosts_6h_15s",
        r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#,
        &mut g,
    );
    range(
        "topk10_cpu_busy_100_hosts_6h_15s",
        r#"topk(10, sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m])))"#,
        &mut g,
    );
    range(
        "histogram_quantile_p99_100_hosts_6h_15s",
        "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))",
        &mut g,
    );
    g.bench_function("instant_sum_rate_5m_1000_series", |b| {
        b.iter(|| {
            engine
                .instant_query(&db, black_box("sum(rate(x[5m]))"), end)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    g.bench_function("instant_regex_selector_100000_series", |b| {
        b.iter(|| {
            engine
                .instant_query(&db, black_box(r#"count(big{path=~"/api/v1/.*"})"#), end)
                .unwrap_or_else(|e| panic!("{e}"))
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
