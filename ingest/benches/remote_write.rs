//! The write path: decode a realistic remote-write request (2,000 series of a
//! node-exporter-like host fleet, one sample each, as Prometheus batches them) and append
//! it to the store.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use strata_ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use strata_ingest::{Limits, SeriesCache};
use strata_storage::{Db, Options};

const SERIES: usize = 2_000;

fn request(t: i64) -> Vec<u8> {
    let modes = [
        "idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice",
    ];
    let timeseries = (0..SERIES)
        .map(|i| {
            let host = i / 100;
            let (cpu, mode) = ((i % 100) / 8, modes[i % 8]);
            let label = |n: &str, v: String| Label {
                name: n.into(),
                value: v,
            };
            TimeSeries {
                labels: vec![
                    label("__name__", "node_cpu_seconds_total".into()),
                    label("cpu", cpu.to_string()),
                    label("instance", format!("host-{host:03}.example.net:9100")),
                    label("job", "node".into()),
                    label("mode", mode.into()),
                ],
                samples: vec![Sample {
                    value: (t / 1000) as f64 * 0.37 + i as f64,
                    timestamp: t + (i % 7) as i64,
                }],
                histograms: vec![],
            }
        })
        .collect();
    let req = WriteRequest {
        timeseries,
        metadata: vec![],
    };
    snap::raw::Encoder::new()
        .compress_vec(&req.encode_to_vec())
        .unwrap_or_default()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("remote_write");
    g.throughput(Throughput::Elements(SERIES as u64));

    let body = request(1_700_000_000_000);
    g.bench_function("decode_2000", |b| {
        b.iter(|| strata_ingest::decode_write_request(black_box(&body), 32 << 20))
    });

    for fsync in [false, true] {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let db = Db::open(
            dir.path(),
            Options {
                wal_fsync: fsync,
                ..Options::default()
            },
        )
        .unwrap_or_else(|e| panic!("open: {e}"));
        let mut t = 1_700_000_000_000i64;
        let cache = SeriesCache::default();
        let name = if fsync {
            "decode_append_commit_2000_fsync"
        } else {
            "decode_append_commit_2000"
        };
        g.bench_function(name, |b| {
            b.iter_batched(
                || {
                    t += 15_000;
                    request(t)
                },
                |body| {
                    let req = strata_ingest::decode_write_request(&body, 32 << 20)
                        .unwrap_or_else(|e| panic!("{e}"));
                    let mut app = db.appender();
                    strata_ingest::write_to_store(&req, &mut app, &cache, &Limits::default())
                        .unwrap_or_else(|e| panic!("{e}"));
                    app.commit().unwrap_or_else(|e| panic!("{e}"))
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
