//! The text exposition format: parsing throughput on a node-exporter-like exposition, and
//! a 10,000-series scrape parsed and appended to the store.
//!
//! Run: `cargo bench -p strata-ingest --bench text`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use strata_ingest::text::{parse_line, Dialect, TextLine};
use strata_storage::{Db, Options};

/// `series` samples in node_exporter's style (HELP/TYPE lines, labels, float values).
fn exposition(series: usize) -> String {
    let mut s = String::new();
    let mut i = 0;
    while i < series {
        let family = i / 100;
        s.push_str(&format!(
            "# HELP node_metric_{family}_total Some counter of the node.\n# TYPE node_metric_{family}_total counter\n"
        ));
        for k in 0..100.min(series - i) {
            s.push_str(&format!(
                "node_metric_{family}_total{{cpu=\"{}\",device=\"eth{}\",mode=\"user\"}} {}.{:02}\n",
                k % 16,
                k / 16,
                1_000_000 + i * 37,
                k
            ));
            i += 1;
        }
    }
    s
}

fn bench(c: &mut Criterion) {
    let text = exposition(10_000);
    let mut g = c.benchmark_group("text");
    g.throughput(Throughput::Bytes(text.len() as u64));
    g.bench_function("parse_10000_series", |b| {
        b.iter(|| {
            let mut n = 0usize;
            for line in text.lines() {
                if let Ok(TextLine::Sample(s)) = parse_line(line, Dialect::Prometheus) {
                    n += s.labels.len();
                }
            }
            black_box(n)
        })
    });
    g.throughput(Throughput::Elements(10_000));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let db = Db::open(
        dir.path(),
        Options {
            wal_fsync: false,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let mut t = 1_700_000_000_000i64;
    g.bench_function("parse_and_append_10000_series_scrape", |b| {
        b.iter_batched(
            || {
                t += 15_000;
                t
            },
            |t| {
                let mut app = db.appender();
                for line in text.lines() {
                    if let Ok(TextLine::Sample(s)) = parse_line(line, Dialect::Prometheus) {
                        let mut pairs: Vec<(&str, &str)> = Vec::with_capacity(8);
                        pairs.push(("__name__", s.name));
                        pairs.extend(s.labels.iter().map(|(n, v)| (*n, v.as_ref())));
                        pairs.sort_unstable_by(|a, b| a.0.cmp(b.0));
                        app.append_pairs(&pairs, t, s.value)
                            .unwrap_or_else(|e| panic!("{e}"));
                    }
                }
                app.commit().unwrap_or_else(|e| panic!("{e}"))
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
