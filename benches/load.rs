//! strata under sustained load with everything on: two writers push node-exporter-like
//! remote-write requests (2,000 samples each) at a fixed rate, a reader runs dashboard
//! range queries without pause, and every sample is forwarded to a real VictoriaMetrics
//! (Debian package `victoria-metrics`), which is stopped for 15 s in the middle and started
//! again. Reported: write latency percentiles, strata's RSS after warm-up and at the end,
//! query latency, and whether VictoriaMetrics holds exactly the samples strata acknowledged.
//!
//! Run: `cargo bench --bench load` (RATE samples/s, SECONDS; loopback only). Without
//! `victoria-metrics` on the PATH it says how to get it and exits.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::net::SocketAddr;

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    enc, free_port, post_write, proc_status_kib, request, start_victoria_metrics, stop_gracefully,
    wait_for, write_body, Strata, Ts,
};

const SERIES_PER_WRITER: usize = 10_000;
const PER_REQUEST: usize = 2_000;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// One writer's requests for round `r`: its own 10,000 series, one sample each.
fn round_bodies(writer: usize, r: i64, t: i64) -> Vec<Vec<u8>> {
    let names: Vec<(String, String)> = (0..SERIES_PER_WRITER)
        .map(|i| {
            (
                format!("w{writer}-host-{:03}:9100", i / 750),
                format!("c{}", i % 750),
            )
        })
        .collect();
    names
        .chunks(PER_REQUEST)
        .map(|block| {
            let series: Vec<Ts> = block
                .iter()
                .map(|(inst, c)| Ts {
                    labels: vec![
                        ("__name__", "load_counter_total"),
                        ("c", c.as_str()),
                        ("instance", inst.as_str()),
                        ("job", "node"),
                    ],
                    samples: vec![(t, (r * 10) as f64 + 0.25)],
                })
                .collect();
            write_body(&series)
        })
        .collect()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if Command::new("victoria-metrics")
        .arg("-help")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_err()
    {
        println!("victoria-metrics is not installed: apt-get install victoria-metrics");
        return;
    }
    let rate: f64 = std::env::var("RATE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000.0);
    let seconds: u64 = std::env::var("SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(60);
    let dir = tempfile::tempdir().unwrap();
    let vm_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let vm_dir = dir.path().join("vm");
    let mut vm = Some(start_victoria_metrics(
        &vm_dir,
        vm_addr,
        &["-dedup.minScrapeInterval=1ms"],
    ));
    let config = dir.path().join("strata.yml");
    std::fs::write(
        &config,
        format!("remote_write:\n  - url: http://{vm_addr}/api/v1/write\n    name: vm\n    queue_config: {{max_backoff: 1s}}\n"),
    )
    .unwrap();
    // MALLOC_ARENA_MAX is passed on to strata, to see what glibc's per-thread arenas hold.
    let arenas = std::env::var("MALLOC_ARENA_MAX").unwrap_or_default();
    let env: Vec<(&str, &str)> = if arenas.is_empty() {
        Vec::new()
    } else {
        vec![("MALLOC_ARENA_MAX", arenas.as_str())]
    };
    let strata = Strata::start_env(
        &dir.path().join("strata"),
        &["--config.file", config.to_str().unwrap()],
        &env,
    );
    let addr = strata.addr;
    let pid = strata.pid();
    // Rounds spaced 15 s apart in sample time, ending now.
    let rounds_per_writer =
        ((rate * seconds as f64) / (2.0 * SERIES_PER_WRITER as f64)).ceil() as i64;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let t0 = now - (rounds_per_writer + 4) * 15_000;
    println!(
        "{rate} samples/s for {seconds} s: 2 writers × {SERIES_PER_WRITER} series, {rounds_per_writer} rounds each; VictoriaMetrics down from 20 s to 35 s"
    );
    let latencies = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let acked = Arc::new(AtomicU64::new(0));
    // Newest sample time acknowledged: queries look at the hour before it.
    let newest = Arc::new(std::sync::atomic::AtomicI64::new(t0));
    let done = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let request_interval = Duration::from_secs_f64(2.0 * PER_REQUEST as f64 / rate);
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (lat, acked, newest) = (
                Arc::clone(&latencies),
                Arc::clone(&acked),
                Arc::clone(&newest),
            );
            std::thread::spawn(move || {
                let mut next = Instant::now();
                for r in 0..rounds_per_writer {
                    for body in round_bodies(w, r, t0 + r * 15_000) {
                        let now = Instant::now();
                        if next > now {
                            std::thread::sleep(next - now);
                        }
                        next += request_interval;
                        let sent = Instant::now();
                        let resp = post_write(addr, &body).unwrap();
                        let took = sent.elapsed();
                        assert_eq!(resp.status, 204, "{}", resp.body);
                        lat.lock().unwrap().push(took);
                        acked.fetch_add(PER_REQUEST as u64, Ordering::Relaxed);
                        newest.fetch_max(t0 + r * 15_000, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    let query_times = Arc::new(Mutex::new(Vec::<Duration>::new()));
    let querier = {
        let (qt, done, newest) = (
            Arc::clone(&query_times),
            Arc::clone(&done),
            Arc::clone(&newest),
        );
        std::thread::spawn(move || {
            let qs = [
                "sum by (instance) (rate(load_counter_total[5m]))",
                "topk(5, sum by (instance) (rate(load_counter_total[5m])))",
                "count(load_counter_total)",
            ];
            let mut i = 0;
            // NO_QUERIES=1 leaves the reader out, to see what queries cost.
            if std::env::var_os("NO_QUERIES").is_some() {
                return;
            }
            while !done.load(Ordering::Relaxed) {
                let end = newest.load(Ordering::Relaxed) / 1000;
                let path = format!(
                    "/api/v1/query_range?query={}&start={}&end={end}&step=60",
                    enc(qs[i % qs.len()]),
                    end - 3600
                );
                let t = Instant::now();
                let r = request(addr, "GET", &path, &[], &[]).unwrap();
                assert_eq!(r.status, 200, "{}", r.body);
                qt.lock().unwrap().push(t.elapsed());
                i += 1;
            }
        })
    };
    let mut rss_samples = Vec::new();
    let mut vm_stopped = false;
    while writers.iter().any(|w| !w.is_finished()) {
        std::thread::sleep(Duration::from_secs(1));
        let at = started.elapsed();
        rss_samples.push((
            at,
            proc_status_kib(pid, "VmRSS") as f64 / 1024.0,
            proc_status_kib(pid, "RssAnon") as f64 / 1024.0,
        ));
        if at >= Duration::from_secs(20) && !vm_stopped {
            if let Some(c) = vm.take() {
                stop_gracefully(c);
            }
            vm_stopped = true;
        }
        if at >= Duration::from_secs(35) && vm.is_none() {
            vm = Some(start_victoria_metrics(
                &vm_dir,
                vm_addr,
                &["-dedup.minScrapeInterval=1ms"],
            ));
        }
    }
    for w in writers {
        w.join().unwrap();
    }
    let took = started.elapsed();
    done.store(true, Ordering::Relaxed);
    querier.join().unwrap();
    if vm.is_none() {
        vm = Some(start_victoria_metrics(
            &vm_dir,
            vm_addr,
            &["-dedup.minScrapeInterval=1ms"],
        ));
    }
    let total = acked.load(Ordering::Relaxed);
    let end_ms = t0 + (rounds_per_writer - 1) * 15_000;
    let q = format!(
        "/api/v1/query?query={}&time={}",
        enc("sum(count_over_time(load_counter_total[1d]))"),
        end_ms as f64 / 1e3
    );
    let arrived = Instant::now();
    let downstream = wait_for(Duration::from_secs(300), "every sample downstream", || {
        let _ = request(vm_addr, "GET", "/internal/force_flush", &[], &[]);
        let r = request(vm_addr, "GET", &q, &[], &[]).ok()?;
        let v: f64 = r.json()["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()?;
        (v as u64 >= total).then_some(v as u64)
    });
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let mut qt = query_times.lock().unwrap().clone();
    qt.sort();
    let at10 = rss_samples
        .iter()
        .find(|(t, _, _)| *t >= Duration::from_secs(10))
        .map_or((0.0, 0.0), |x| (x.1, x.2));
    let peak = rss_samples.iter().map(|x| x.1).fold(0.0, f64::max);
    let last = rss_samples.last().map_or((0.0, 0.0), |x| (x.1, x.2));
    println!(
        "ingested {total} samples in {:.1} s = {:.0} samples/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    println!(
        "write latency: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms over {} requests",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        lat.len()
    );
    println!(
        "queries: {} range queries, p50 {:.1} ms, p99 {:.1} ms",
        qt.len(),
        percentile(&qt, 0.5).as_secs_f64() * 1e3,
        percentile(&qt, 0.99).as_secs_f64() * 1e3
    );
    println!(
        "strata RSS: {:.0} MiB at 10 s (anonymous {:.0}), peak {peak:.0} MiB, {:.0} MiB at the end (anonymous {:.0}; the rest is mapped head chunk files)",
        at10.0, at10.1, last.0, last.1
    );
    let every10: Vec<String> = rss_samples
        .iter()
        .filter(|(t, _, _)| t.as_secs() % 10 == 0)
        .map(|(t, rss, anon)| format!("{}s {rss:.0} ({anon:.0})", t.as_secs()))
        .collect();
    println!("RSS (anonymous) in MiB every 10 s: {}", every10.join(", "));
    println!(
        "VictoriaMetrics holds {downstream} samples of {total} acknowledged ({}), the backlog drained {:.1} s after the last write",
        if downstream == total { "exactly" } else { "MISMATCH" },
        arrived.elapsed().as_secs_f64()
    );
    if let Some(c) = vm.take() {
        stop_gracefully(c);
    }
}
