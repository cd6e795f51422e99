//! The write path: decode a realistic remote-write request (2,000 series of a
//! node-exporter-like host fleet, one sample each, as Prometheus batches them) and append
//! it to the store. `many_series` writes 50,000 series, 2,000 a request in turn, so that
//! each request finds its series out of the CPU's caches, as a busy server does.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use prost::Message;
use strata_ingest::remote_write::{Label, Sample, TimeSeries, WriteRequest};
use strata_ingest::{Limits, SeriesCache};
use strata_storage::{Db, Options};

const SERIES: usize = 2_000;

fn request(t: i64) -> Vec<u8> {
    request_from(t, 0)
}

/// Hosts `first_host..first_host + 20`.
fn request_from(t: i64, first_host: usize) -> Vec<u8> {
    let modes = [
        "idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice",
    ];
    let timeseries = (0..SERIES)
        .map(|i| {
            let host = first_host + i / 100;
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

/// A store in a temporary directory.
fn store(fsync: bool) -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db = Db::open(
        dir.path(),
        Options {
            wal_fsync: fsync,
            ..Options::default()
        },
    )
    .unwrap_or_else(|e| panic!("open: {e}"));
    (dir, db)
}

/// Decodes, appends and commits one request, as the server does.
fn write(db: &Db, cache: &SeriesCache, body: &[u8]) -> strata_storage::CommitStats {
    let req = strata_ingest::decode_write_request(body, 32 << 20).unwrap_or_else(|e| panic!("{e}"));
    let mut app = db.appender();
    strata_ingest::write_to_store(&req, &mut app, cache, &Limits::default())
        .unwrap_or_else(|e| panic!("{e}"));
    app.commit().unwrap_or_else(|e| panic!("{e}"))
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("remote_write");
    g.throughput(Throughput::Elements(SERIES as u64));

    let body = request(1_700_000_000_000);
    g.bench_function("decode_2000", |b| {
        b.iter(|| strata_ingest::decode_write_request(black_box(&body), 32 << 20))
    });

    // The digests of 2,000 series' encoded labels (about 100 bytes each).
    let regions: Vec<Vec<u8>> = (0..SERIES)
        .map(|i| {
            let labels = [
                ("__name__", "node_cpu_seconds_total".to_string()),
                ("cpu", (i % 64).to_string()),
                ("instance", format!("host-{:03}.example.net:9100", i / 100)),
                ("job", "node".to_string()),
                ("mode", "softirq".to_string()),
            ];
            TimeSeries {
                labels: labels
                    .into_iter()
                    .map(|(n, v)| Label {
                        name: n.into(),
                        value: v,
                    })
                    .collect(),
                samples: vec![],
                histograms: vec![],
            }
            .encode_to_vec()
        })
        .collect();
    let keys = SeriesCache::default();
    g.bench_function("cache_key_2000", |b| {
        b.iter(|| {
            for r in &regions {
                black_box(keys.key(black_box(r)));
            }
        })
    });

    for fsync in [false, true] {
        let (_dir, db) = store(fsync);
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
                |body| write(&db, &cache, &body),
                BatchSize::SmallInput,
            )
        });
    }

    // 25 requests of distinct series, sent in turn.
    let (_dir, db) = store(false);
    let cache = SeriesCache::default();
    let (mut t, mut turn) = (1_700_000_000_000i64, 0usize);
    g.bench_function("many_series_decode_append_commit_2000", |b| {
        b.iter_custom(|iters| {
            // Bodies are encoded 100 at a time, outside the timing.
            let mut spent = std::time::Duration::ZERO;
            let mut left = iters;
            while left > 0 {
                let n = left.min(100);
                left -= n;
                let bodies: Vec<Vec<u8>> = (0..n)
                    .map(|_| {
                        turn = (turn + 1) % 25;
                        if turn == 0 {
                            t += 15_000;
                        }
                        request_from(t, turn * 20)
                    })
                    .collect();
                let start = std::time::Instant::now();
                for body in &bodies {
                    black_box(write(&db, &cache, body));
                }
                spent += start.elapsed();
            }
            spent
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
