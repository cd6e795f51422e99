//! Load and faults together, bounded in time: two writers push as fast as strata
//! acknowledges while a reader runs range queries; the VictoriaMetrics that strata
//! forwards to (Debian's package) is stopped and started again, then strata itself is
//! `kill -9`ed and restarted. Every acknowledged sample is in strata afterwards and
//! arrives downstream exactly once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    enc, free_port, post_write, request, start_victoria_metrics, stop_gracefully, wait_for,
    write_body, Strata, Ts,
};

/// A request resent after strata's kill -9 repeats samples; VictoriaMetrics keeps one per
/// millisecond of each series.
const DEDUP: &[&str] = &["-dedup.minScrapeInterval=1ms"];

const SERIES: usize = 1_000;

/// Writer `w`'s request for round `r`: its own series, one sample each.
fn body(w: usize, r: i64, t: i64) -> Vec<u8> {
    let names: Vec<String> = (0..SERIES).map(|i| format!("w{w}-s{i}")).collect();
    let series: Vec<Ts> = names
        .iter()
        .map(|n| Ts {
            labels: vec![("__name__", "load_test"), ("s", n.as_str())],
            samples: vec![(t, r as f64)],
        })
        .collect();
    write_body(&series)
}

#[test]
fn sustained_load_with_receiver_outage_and_kill_9_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let vm_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let vm_dir = dir.path().join("vm");
    let mut vm = Some(start_victoria_metrics(&vm_dir, vm_addr, DEDUP));
    let config = dir.path().join("strata.yml");
    std::fs::write(
        &config,
        format!("remote_write:\n  - url: http://{vm_addr}/api/v1/write\n    queue_config: {{batch_send_deadline: 200ms, max_backoff: 500ms}}\n"),
    )
    .unwrap();
    let data = dir.path().join("strata");
    let args = ["--config.file", config.to_str().unwrap()];
    let strata = Strata::start(&data, &args);
    let current = Arc::new(Mutex::new(strata.addr));
    let mut strata = Some(strata);
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        - 3_600_000;
    let stop_writing = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicU64::new(0));
    let writers: Vec<_> = (0..2)
        .map(|w| {
            let (current, stop_writing, rounds) = (
                Arc::clone(&current),
                Arc::clone(&stop_writing),
                Arc::clone(&rounds),
            );
            std::thread::spawn(move || {
                let mut r = 0i64;
                while !stop_writing.load(Ordering::Relaxed) {
                    let b = body(w, r, t0 + r * 1000);
                    // Until acknowledged: strata may be down for a restart.
                    let deadline = Instant::now() + Duration::from_secs(60);
                    loop {
                        assert!(
                            Instant::now() < deadline,
                            "writer {w}: round {r} never acknowledged"
                        );
                        let addr = *current.lock().unwrap();
                        let ok = post_write(addr, &b).is_ok_and(|resp| resp.status == 204);
                        if ok {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    rounds.fetch_add(1, Ordering::Relaxed);
                    r += 1;
                }
                r
            })
        })
        .collect();
    let queries = Arc::new(AtomicU64::new(0));
    let querier = {
        let (current, stop_writing, queries) = (
            Arc::clone(&current),
            Arc::clone(&stop_writing),
            Arc::clone(&queries),
        );
        std::thread::spawn(move || {
            let path = format!(
                "/api/v1/query_range?query={}&start={}&end={}&step=15",
                enc("sum by (s) (rate(load_test[1m]))"),
                t0 / 1000,
                t0 / 1000 + 600
            );
            while !stop_writing.load(Ordering::Relaxed) {
                let addr = *current.lock().unwrap();
                if request(addr, "GET", &path, &[], &[]).is_ok_and(|r| r.status == 200) {
                    queries.fetch_add(1, Ordering::Relaxed);
                } else {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        })
    };
    let started = Instant::now();
    let at = |s: u64| {
        let wait = Duration::from_secs(s).saturating_sub(started.elapsed());
        std::thread::sleep(wait);
    };
    at(4);
    stop_gracefully(vm.take().unwrap());
    at(10);
    vm = Some(start_victoria_metrics(&vm_dir, vm_addr, DEDUP));
    at(14);
    strata.take().unwrap().kill9();
    let restarted = Strata::start(&data, &args);
    *current.lock().unwrap() = restarted.addr;
    strata = Some(restarted);
    at(20);
    stop_writing.store(true, Ordering::Relaxed);
    let per_writer: Vec<i64> = writers.into_iter().map(|w| w.join().unwrap()).collect();
    querier.join().unwrap();
    let strata = strata.unwrap();
    let total: i64 = per_writer.iter().map(|r| r * SERIES as i64).sum();
    assert!(total > 0 && queries.load(Ordering::Relaxed) > 0);
    let last = t0 + (per_writer.iter().max().unwrap() - 1) * 1000;
    let count_q = "sum(count_over_time(load_test[1d]))";
    // Everything acknowledged is in strata, once.
    let v = strata.query(count_q, &format!("{:.3}", last as f64 / 1e3));
    assert_eq!(
        v["result"][0]["value"][1]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap(),
        total
    );
    // And downstream, once.
    let path = format!(
        "/api/v1/query?query={}&time={:.3}",
        enc(count_q),
        last as f64 / 1e3
    );
    let got = wait_for(Duration::from_secs(120), "every sample downstream", || {
        let _ = request(vm_addr, "GET", "/internal/force_flush", &[], &[]);
        let r = request(vm_addr, "GET", &path, &[], &[]).ok()?;
        let n: i64 = r.json()["data"]["result"][0]["value"][1]
            .as_str()?
            .parse()
            .ok()?;
        (n >= total).then_some(n)
    });
    assert_eq!(got, total, "samples in VictoriaMetrics");
    let sum_q = "sum(sum_over_time(load_test[1d]))";
    let want_sum: f64 = per_writer
        .iter()
        .map(|&r| (0..r).map(|x| x as f64).sum::<f64>() * SERIES as f64)
        .sum();
    let r = request(
        vm_addr,
        "GET",
        &format!(
            "/api/v1/query?query={}&time={:.3}",
            enc(sum_q),
            last as f64 / 1e3
        ),
        &[],
        &[],
    )
    .unwrap();
    let got_sum: f64 = r.json()["data"]["result"][0]["value"][1]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(got_sum, want_sum, "values as written");
    if let Some(c) = vm.take() {
        stop_gracefully(c);
    }
}
