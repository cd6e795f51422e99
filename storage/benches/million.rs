//! One million active series: resident memory per series, append throughput, WAL replay
//! speed and postings lookups — issue 3's scale figures.
//!
//! 1,000 hosts × 1,000 series (node-exporter-like labels: `__name__`, `instance`, `job`
//! and one of `cpu`/`device`/`mode`), appended in scrape rounds (one sample per series
//! per 15 s) from two threads, WAL fsync off.
//!
//! Run: `cargo bench -p strata-storage --bench million` (about two minutes, ~3 GB RAM).
//! `ROUNDS=n` changes the number of scrape rounds (default 240: one hour).

#![allow(clippy::print_stdout)]

use std::time::Instant;

use strata_storage::{Db, Labels, Matcher, Options, SeriesRef};

const HOSTS: usize = 1_000;
const PER_HOST: usize = 1_000;
const STEP: i64 = 15_000;

/// Resident set size of this process, bytes.
fn rss() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

fn labels(host: usize, i: usize) -> Labels {
    let (name, extra) = match i % 4 {
        0 => ("node_cpu_seconds_total", ("cpu", format!("{}", i % 64))),
        1 => (
            "node_network_receive_bytes_total",
            ("device", format!("eth{}", i % 8)),
        ),
        2 => (
            "node_filesystem_avail_bytes",
            ("device", format!("/dev/sd{}", i % 26)),
        ),
        _ => ("node_vmstat_x", ("mode", format!("m{i}"))),
    };
    Labels::from_pairs([
        ("__name__", name.to_string()),
        ("instance", format!("host-{host:04}:9100")),
        ("job", "node".to_string()),
        (extra.0, extra.1),
        ("n", format!("{}", i / 4)),
    ])
}

fn main() {
    let rounds: i64 = std::env::var("ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(240);
    let opts = Options {
        wal_fsync: false,
        // No cut during the run: everything stays in the head.
        block_range_ms: 100 * 3_600_000,
        ..Options::default()
    };
    // REPLAY_DIR=<dir>: only time the replay of a store a previous run kept (KEEP_DIR).
    if let Ok(d) = std::env::var("REPLAY_DIR") {
        let t0 = Instant::now();
        let db = Db::open(&d, opts).unwrap_or_else(|e| panic!("reopen: {e}"));
        let r = db.replay_report();
        println!(
            "replayed {} samples in {:.2} s: {:.1} M samples/s",
            r.samples,
            t0.elapsed().as_secs_f64(),
            r.samples as f64 / t0.elapsed().as_secs_f64() / 1e6
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let path = match std::env::var("KEEP_DIR") {
        Ok(d) => {
            let _ = std::fs::remove_dir_all(&d);
            std::path::PathBuf::from(d)
        }
        Err(_) => tmp.path().to_path_buf(),
    };
    // Measured before any label exists, so that label memory counts.
    let base_rss = rss();
    let all: Vec<(usize, usize)> = (0..HOSTS)
        .flat_map(|h| (0..PER_HOST).map(move |i| (h, i)))
        .collect();
    let db = Db::open(&path, opts.clone()).unwrap_or_else(|e| panic!("open: {e}"));
    let start = 1_700_000_000_000i64;

    // Round 0 creates the series.
    let t0 = Instant::now();
    let refs: Vec<SeriesRef> = std::thread::scope(|s| {
        let halves: Vec<_> = all
            .chunks(all.len() / 2)
            .map(|part| {
                let db = &db;
                s.spawn(move || {
                    let mut refs = Vec::with_capacity(part.len());
                    for batch in part.chunks(10_000) {
                        let mut app = db.appender();
                        for &(h, i) in batch {
                            let l = labels(h, i);
                            refs.push(app.append(&l, start, 1.0).unwrap_or_else(|e| panic!("{e}")));
                        }
                        app.commit().unwrap_or_else(|e| panic!("{e}"));
                    }
                    refs
                })
            })
            .collect();
        halves
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_else(|_| panic!("appender")))
            .collect()
    });
    let create = t0.elapsed();
    drop(all);
    println!(
        "created {} series in {:.2} s ({:.0} series/s)",
        refs.len(),
        create.as_secs_f64(),
        refs.len() as f64 / create.as_secs_f64()
    );

    // Scrape rounds through append_ref, two threads, 10,000 samples per commit.
    let t0 = Instant::now();
    for k in 1..=rounds {
        let t = start + k * STEP;
        std::thread::scope(|s| {
            for part in refs.chunks(refs.len() / 2) {
                let db = &db;
                s.spawn(move || {
                    for batch in part.chunks(10_000) {
                        let mut app = db.appender();
                        for (j, &r) in batch.iter().enumerate() {
                            let v = (k * 100 + (j as i64 % 17)) as f64;
                            app.append_ref(r, t, v).unwrap_or_else(|e| panic!("{e}"));
                        }
                        app.commit().unwrap_or_else(|e| panic!("{e}"));
                    }
                });
            }
        });
    }
    let append = t0.elapsed();
    let samples = refs.len() as f64 * rounds as f64;
    println!(
        "appended {samples:.0} samples in {:.2} s: {:.2} M samples/s (2 threads)",
        append.as_secs_f64(),
        samples / append.as_secs_f64() / 1e6
    );
    let used = rss().saturating_sub(base_rss);
    let stats = db.stats();
    println!(
        "resident: {:.1} MiB over the start, {:.0} bytes per series ({} samples per series; head chunks {:.1} MiB)",
        used as f64 / (1 << 20) as f64,
        used as f64 / refs.len() as f64,
        rounds + 1,
        stats.chunk_bytes as f64 / (1 << 20) as f64
    );

    // Postings: one host's series among a million.
    let q = db.querier(i64::MIN, i64::MAX);
    let m = [
        Matcher::equal("instance", "host-0421:9100"),
        Matcher::equal("__name__", "node_cpu_seconds_total"),
    ];
    let n = 2_000;
    let t0 = Instant::now();
    let mut found = 0;
    for _ in 0..n {
        found = db.head_postings_count(&m);
    }
    println!(
        "postings for 1 of {HOSTS} hosts x one metric ({found} series of {}): {:.1} µs",
        refs.len(),
        t0.elapsed().as_secs_f64() * 1e6 / n as f64
    );
    let t0 = Instant::now();
    let sel = q.select(&m).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "select with samples ({} series): {:.1} µs",
        sel.len(),
        t0.elapsed().as_secs_f64() * 1e6
    );
    drop(sel);
    drop(q);

    // WAL replay.
    drop(db);
    let t0 = Instant::now();
    let db = Db::open(&path, opts).unwrap_or_else(|e| panic!("reopen: {e}"));
    let took = t0.elapsed();
    let r = db.replay_report();
    println!(
        "after a crash, replayed {} series and {} samples ({:.0} MiB of WAL) in {:.2} s: {:.1} M samples/s",
        r.series,
        r.samples,
        db.stats().wal_bytes as f64 / (1 << 20) as f64,
        took.as_secs_f64(),
        r.samples as f64 / took.as_secs_f64() / 1e6
    );

    // A clean shutdown writes a head snapshot; the next start loads it.
    let t0 = Instant::now();
    db.close().unwrap_or_else(|e| panic!("close: {e}"));
    let closed = t0.elapsed();
    drop(db);
    let t0 = Instant::now();
    let db = Db::open(&path, Options { ..opts_again() }).unwrap_or_else(|e| panic!("reopen: {e}"));
    let took = t0.elapsed();
    let r = db.replay_report();
    println!(
        "clean shutdown: head snapshot written in {:.2} s; next start loaded {} series and replayed {} samples in {:.2} s",
        closed.as_secs_f64(),
        r.snapshot_series,
        r.samples,
        took.as_secs_f64()
    );
}

fn opts_again() -> Options {
    Options {
        wal_fsync: false,
        block_range_ms: 100 * 3_600_000,
        ..Options::default()
    }
}
