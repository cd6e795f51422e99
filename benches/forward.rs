//! Remote write out at load: a running `strata serve` forwards everything it ingests to a
//! loopback receiver that reads each request and answers 204 (or 503 during an outage).
//!
//! - sustained: the workload pushed as fast as strata acknowledges it (two connections,
//!   2,000 samples per request, 10,000 node-exporter-like series), while forwarding runs;
//!   ingest and forwarding rates over the same window, and how long the queue takes to be
//!   empty after the last write;
//! - outage: the receiver answers 503 while the workload is pushed again, then recovers;
//!   the backlog's drain rate, compared with the ingest rate.
//!
//! Rates come from strata's own counters (`strata_remote_write_samples_sent_total`).
//! Run: `cargo bench --bench forward` (ROUNDS changes the size, MIN_SHARDS the queue's
//! `min_shards`, WAL_FSYNC=false turns the WAL's fsync off; loopback only).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{post_write, write_body, Strata, Ts};

const SERIES: usize = 10_000;
const PER_REQUEST: usize = 2_000;

/// A receiver that reads whole requests and answers 204, or 503 while `down`.
struct Sink {
    addr: SocketAddr,
    down: Arc<AtomicBool>,
    bytes: Arc<AtomicU64>,
}

fn sink() -> Sink {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let down = Arc::new(AtomicBool::new(false));
    let bytes = Arc::new(AtomicU64::new(0));
    let (d, b) = (Arc::clone(&down), Arc::clone(&bytes));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(c) = conn else { continue };
            let (d, b) = (Arc::clone(&d), Arc::clone(&b));
            std::thread::spawn(move || serve(c, &d, &b));
        }
    });
    Sink { addr, down, bytes }
}

fn serve(mut c: TcpStream, down: &AtomicBool, bytes: &AtomicU64) {
    let _ = c.set_read_timeout(Some(Duration::from_secs(30)));
    let mut raw = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    let (head_end, len) = loop {
        let Ok(n) = c.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&raw[..p]).to_ascii_lowercase();
            let len = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse::<usize>().ok())
                .unwrap_or(0);
            break (p + 4, len);
        }
    };
    while raw.len() < head_end + len {
        let Ok(n) = c.read(&mut buf) else { return };
        if n == 0 {
            return;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let status = if down.load(Ordering::Relaxed) {
        "503 Service Unavailable"
    } else {
        bytes.fetch_add(len as u64, Ordering::Relaxed);
        "204 No Content"
    };
    let _ = write!(
        c,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}

/// Remote-write bodies for `rounds` rounds from `start`: per round, one request per
/// block of 2,000 series, one sample each.
fn bodies(rounds: usize, start: i64) -> Vec<Vec<Vec<u8>>> {
    let names: Vec<(String, String, String)> = (0..SERIES)
        .map(|i| {
            (
                format!("host-{:03}:9100", i / 750),
                (i % 750 / 8).to_string(),
                [
                    "idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice",
                ][i % 8]
                    .to_string(),
            )
        })
        .collect();
    (0..rounds)
        .map(|r| {
            let t = start + r as i64 * 15_000 + (r % 7) as i64;
            names
                .chunks(PER_REQUEST)
                .enumerate()
                .map(|(b, block)| {
                    let series: Vec<Ts> = block
                        .iter()
                        .enumerate()
                        .map(|(i, (inst, cpu, mode))| Ts {
                            labels: vec![
                                ("__name__", "node_cpu_seconds_total"),
                                ("cpu", cpu),
                                ("instance", inst),
                                ("job", "node"),
                                ("mode", mode),
                            ],
                            samples: vec![(
                                t,
                                (r * 15) as f64 + (b * PER_REQUEST + i) as f64 * 0.01,
                            )],
                        })
                        .collect();
                    write_body(&series)
                })
                .collect()
        })
        .collect()
}

/// Pushes every round on two connections (each block always on the same one, so every
/// series stays in order); returns the time taken.
fn push(addr: SocketAddr, rounds: &[Vec<Vec<u8>>]) -> Duration {
    let started = Instant::now();
    std::thread::scope(|s| {
        for conn in 0..2 {
            s.spawn(move || {
                for round in rounds {
                    for body in round.iter().skip(conn).step_by(2) {
                        let r = post_write(addr, body).unwrap();
                        assert_eq!(r.status, 204, "{}", r.body);
                    }
                }
            });
        }
    });
    started.elapsed()
}

fn sent(strata: &Strata) -> f64 {
    let text = strata.get("/metrics").body;
    text.lines()
        .find(|l| l.starts_with("strata_remote_write_samples_sent_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

fn wait_sent(strata: &Strata, want: f64, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    while started.elapsed() < limit {
        if sent(strata) >= want {
            return Some(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(150);
    // MIN_SHARDS: `queue_config.min_shards` (default 1, as Prometheus).
    let min_shards: usize = std::env::var("MIN_SHARDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let sink = sink();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("strata.yml");
    std::fs::write(
        &config,
        format!(
            "remote_write:\n  - url: http://{}/api/v1/write\n    name: sink\n    queue_config: {{min_shards: {min_shards}, batch_send_deadline: 50ms, min_backoff: 100ms, max_backoff: 1s}}\n",
            sink.addr
        ),
    )
    .unwrap();
    // WAL_FSYNC=false: acknowledge before the WAL is fsynced (safe from a crash of the
    // process, not of the machine).
    let fsync = std::env::var("WAL_FSYNC").unwrap_or_else(|_| "true".into());
    let strata = Strata::start(
        &dir.path().join("data"),
        &[
            "--config.file",
            config.to_str().unwrap(),
            "--wal-fsync",
            &fsync,
        ],
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let start = now - (2 * rounds as i64 + 10) * 15_000;
    println!("encoding {rounds} rounds of {SERIES} series twice…");
    let first = bodies(rounds, start);
    let second = bodies(rounds, start + rounds as i64 * 15_000);
    let per_phase = (rounds * SERIES) as f64;

    // Sustained: ingest and forward at once.
    let before = sent(&strata);
    let took = push(strata.addr, &first);
    let during = sent(&strata) - before;
    let tail = wait_sent(&strata, before + per_phase, Duration::from_secs(300))
        .expect("everything forwarded");
    let ingest_rate = per_phase / took.as_secs_f64();
    let forward_rate = during / took.as_secs_f64();
    println!(
        "sustained: ingested {per_phase} samples in {:.2} s = {:.0} samples/s; forwarded {:.0} samples/s meanwhile; queue empty {:.2} s after the last write",
        took.as_secs_f64(),
        ingest_rate,
        forward_rate,
        tail.as_secs_f64()
    );

    // Outage: the backlog builds up, then drains.
    sink.down.store(true, Ordering::Relaxed);
    let before = sent(&strata);
    let took = push(strata.addr, &second);
    let backlog_ingest = per_phase / took.as_secs_f64();
    std::thread::sleep(Duration::from_secs(1));
    sink.down.store(false, Ordering::Relaxed);
    let drained =
        wait_sent(&strata, before + per_phase, Duration::from_secs(300)).expect("backlog drained");
    let drain_rate = per_phase / drained.as_secs_f64();
    println!(
        "outage: ingested {per_phase} samples at {backlog_ingest:.0} samples/s with the receiver down; backlog drained in {:.2} s = {drain_rate:.0} samples/s ({:.1}x the ingest rate)",
        drained.as_secs_f64(),
        drain_rate / backlog_ingest
    );
    println!(
        "receiver got {:.1} MiB of compressed requests ({:.2} bytes/sample)",
        sink.bytes.load(Ordering::Relaxed) as f64 / (1 << 20) as f64,
        sink.bytes.load(Ordering::Relaxed) as f64 / (2.0 * per_phase)
    );
    let text = strata.get("/metrics").body;
    for l in text.lines().filter(|l| {
        l.starts_with("strata_remote_write_shards{")
            || l.starts_with("strata_remote_write_samples_failed_total{")
    }) {
        println!("{l}");
    }
    drop(strata);
}
