//! Side by side with Prometheus: the same remote-write workload into strata and a
//! Prometheus (Debian package `prometheus`, 2.42 with its remote-write receiver on), then
//! the same dashboard queries against both, timed over loopback HTTP (median of several
//! runs), checking that both return the same series and values.
//!
//! Run: `cargo bench --bench vs_prometheus`. Without `prometheus` on the PATH it says how
//! to get it and exits. Everything listens on 127.0.0.1 with temporary directories.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{enc, request, write_body, Prometheus, Strata, Ts};

const HOSTS: usize = 100;
const MODES: [&str; 8] = [
    "idle", "user", "system", "iowait", "irq", "softirq", "steal", "nice",
];
const LE: [&str; 10] = [
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "+Inf",
];
const STEP_MS: i64 = 15_000;
const HOURS: i64 = 6;
const RUNS: usize = 7;

struct Series {
    labels: Vec<(String, String)>,
    /// Increase per step (counters) or level (gauges).
    rate: f64,
    counter: bool,
    /// Whether the counter counts whole events (histogram buckets) rather than seconds.
    integer: bool,
}

fn workload() -> Vec<Series> {
    let mut out = Vec::new();
    let l = |pairs: &[(&str, String)]| {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    };
    for h in 0..HOSTS {
        let instance = format!("host-{h:03}:9100");
        // Distinct per host, so that topk has no ties to break.
        let host_factor = 1.0 + h as f64 * 0.013;
        for cpu in 0..2 {
            for (m, mode) in MODES.iter().enumerate() {
                out.push(Series {
                    labels: l(&[
                        ("__name__", "node_cpu_seconds_total".into()),
                        ("cpu", cpu.to_string()),
                        ("instance", instance.clone()),
                        ("job", "node".into()),
                        ("mode", mode.to_string()),
                    ]),
                    rate: if m == 0 {
                        12.0
                    } else {
                        0.37 * m as f64 * host_factor
                    },
                    counter: true,
                    integer: false,
                });
            }
        }
        out.push(Series {
            labels: l(&[
                ("__name__", "node_load1".into()),
                ("instance", instance.clone()),
                ("job", "node".into()),
            ]),
            rate: (h % 7) as f64 * 0.25,
            counter: false,
            integer: false,
        });
        for (b, le) in LE.iter().enumerate() {
            out.push(Series {
                labels: l(&[
                    ("__name__", "http_request_duration_seconds_bucket".into()),
                    ("instance", format!("host-{h:03}:8080")),
                    ("job", "api".into()),
                    ("le", le.to_string()),
                ]),
                rate: 3.0 * (b + 1) as f64 * host_factor,
                counter: true,
                integer: true,
            });
        }
    }
    out
}

/// Remote-write bodies in time order, about 2,000 samples each.
fn bodies(series: &[Series], start: i64, steps: i64) -> (Vec<Vec<u8>>, usize) {
    let mut out = Vec::new();
    let mut batch: Vec<(usize, i64, f64)> = Vec::new();
    let mut total = 0;
    let flush = |batch: &mut Vec<(usize, i64, f64)>, out: &mut Vec<Vec<u8>>| {
        let ts: Vec<Ts> = batch
            .iter()
            .map(|&(i, t, v)| Ts {
                labels: series[i]
                    .labels
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str()))
                    .collect(),
                samples: vec![(t, v)],
            })
            .collect();
        out.push(write_body(&ts));
        batch.clear();
    };
    for k in 0..steps {
        for (i, s) in series.iter().enumerate() {
            // 1-7 ms of jitter: no sample sits exactly on a window boundary, where
            // Prometheus 2 (closed windows) and 3 (left-open) would differ by design.
            let t = start + k * STEP_MS + 1 + (i % 7) as i64;
            let v = if s.counter && s.integer {
                (k as f64 * s.rate).floor()
            } else if s.counter {
                k as f64 * s.rate
            } else {
                s.rate + ((k + i as i64) % 5) as f64 * 0.1
            };
            batch.push((i, t, v));
            total += 1;
            if batch.len() == 2_000 {
                flush(&mut batch, &mut out);
            }
        }
    }
    if !batch.is_empty() {
        flush(&mut batch, &mut out);
    }
    (out, total)
}

fn push(addr: SocketAddr, bodies: &[Vec<u8>]) -> Duration {
    let started = Instant::now();
    for b in bodies {
        let r = request(
            addr,
            "POST",
            "/api/v1/write",
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "snappy"),
                ("X-Prometheus-Remote-Write-Version", "0.1.0"),
            ],
            b,
        )
        .unwrap();
        assert!(
            r.status / 100 == 2,
            "{addr}: write answered {}: {}",
            r.status,
            r.body
        );
    }
    started.elapsed()
}

/// One query's answer as `labels -> [(t, v)]`, and how long it took.
fn run(addr: SocketAddr, path: &str) -> (BTreeMap<String, Vec<(f64, f64)>>, Duration) {
    let started = Instant::now();
    let r = request(addr, "GET", path, &[], &[]).unwrap();
    let took = started.elapsed();
    assert_eq!(r.status, 200, "{addr}{path}: {}", r.body);
    let v = r.json();
    let mut out = BTreeMap::new();
    let parse = |p: &serde_json::Value| {
        let v = p[1].as_str().unwrap();
        let v = match v {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            other => other.parse().unwrap(),
        };
        (p[0].as_f64().unwrap(), v)
    };
    for s in v["data"]["result"].as_array().unwrap() {
        let points: Vec<(f64, f64)> = match s.get("values") {
            Some(vals) => vals.as_array().unwrap().iter().map(parse).collect(),
            None => vec![parse(&s["value"])],
        };
        out.insert(common::labels_key(&s["metric"]), points);
    }
    (out, took)
}

fn same(a: &BTreeMap<String, Vec<(f64, f64)>>, b: &BTreeMap<String, Vec<(f64, f64)>>) -> bool {
    a.len() == b.len()
        && a.iter().zip(b).all(|((ka, pa), (kb, pb))| {
            ka == kb
                && pa.len() == pb.len()
                && pa.iter().zip(pb).all(|(x, y)| {
                    x.0 == y.0
                        && (x.1 == y.1
                            || (x.1.is_nan() && y.1.is_nan())
                            || (x.1 - y.1).abs() <= 1e-9 * (x.1.abs() + y.1.abs()))
                })
        })
}

/// The first difference between two answers, for the report.
fn first_difference(
    a: &BTreeMap<String, Vec<(f64, f64)>>,
    b: &BTreeMap<String, Vec<(f64, f64)>>,
) -> String {
    if a.len() != b.len() {
        return format!("{} series vs {}", a.len(), b.len());
    }
    for ((ka, pa), (kb, pb)) in a.iter().zip(b) {
        if ka != kb {
            return format!("series {ka} vs {kb}");
        }
        if pa.len() != pb.len() {
            return format!("{ka}: {} points vs {}", pa.len(), pb.len());
        }
        for (x, y) in pa.iter().zip(pb) {
            if x != y {
                return format!("{ka} at {}: {} vs {} (t {})", x.0, x.1, y.1, y.0);
            }
        }
    }
    String::new()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if Command::new("prometheus")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("prometheus is not installed: `apt-get install prometheus` (Debian 12 ships 2.42), then run again.");
        return;
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let steps = HOURS * 3_600_000 / STEP_MS + 21;
    let start = (now - (steps + 2) * STEP_MS) / STEP_MS * STEP_MS;
    let series = workload();
    let (bodies, samples) = bodies(&series, start, steps);
    println!(
        "workload: {} series, {} samples in {} requests, {} h at 15 s",
        series.len(),
        samples,
        bodies.len(),
        HOURS
    );

    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    let prom = Prometheus::start().expect("prometheus did not start");
    let ts = push(strata.addr, &bodies);
    let tp = push(prom.addr, &bodies);
    println!(
        "ingest (one connection, fsync on for strata): strata {:.2} s ({:.0} samples/s), prometheus {:.2} s ({:.0} samples/s)",
        ts.as_secs_f64(),
        samples as f64 / ts.as_secs_f64(),
        tp.as_secs_f64(),
        samples as f64 / tp.as_secs_f64()
    );

    let end = start + (steps - 1) * STEP_MS;
    let range_start = end - HOURS * 3_600_000;
    let secs = |ms: i64| format!("{}", ms as f64 / 1000.0);
    let queries: [(&str, &str, bool); 6] = [
        ("cpu busy by instance", r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#, true),
        ("topk(10) cpu busy", r#"topk(10, sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m])))"#, true),
        ("p99 latency", "histogram_quantile(0.99, sum by (le) (rate(http_request_duration_seconds_bucket[5m])))", true),
        ("avg load by job", "avg by (job) (node_load1)", true),
        ("instant cpu busy", r#"sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))"#, false),
        ("instant count by mode", "count by (mode) (node_cpu_seconds_total)", false),
    ];
    println!();
    println!("| query | kind | strata (median) | prometheus 2.42 (median) | prometheus / strata | same result |");
    println!("|---|---|---:|---:|---:|---|");
    for (name, q, is_range) in queries {
        let path = if is_range {
            format!(
                "/api/v1/query_range?query={}&start={}&end={}&step=15",
                enc(q),
                secs(range_start),
                secs(end)
            )
        } else {
            format!("/api/v1/query?query={}&time={}", enc(q), secs(end))
        };
        let (rs, _) = run(strata.addr, &path);
        let (rp, _) = run(prom.addr, &path);
        if !same(&rs, &rp) {
            println!("{name}: {}", first_difference(&rs, &rp));
        }
        let mut t_s = Vec::new();
        let mut t_p = Vec::new();
        for _ in 0..RUNS {
            t_s.push(run(strata.addr, &path).1);
            t_p.push(run(prom.addr, &path).1);
        }
        let (ms, mp) = (median(t_s), median(t_p));
        println!(
            "| `{name}` | {} | {:.1} ms | {:.1} ms | {:.2}x | {} |",
            if is_range {
                "range 6 h / 15 s"
            } else {
                "instant"
            },
            ms.as_secs_f64() * 1e3,
            mp.as_secs_f64() * 1e3,
            mp.as_secs_f64() / ms.as_secs_f64(),
            if same(&rs, &rp) { "yes" } else { "NO" }
        );
    }
    if let Ok(secs) = std::env::var("VS_KEEP_SECONDS") {
        println!(
            "strata on {}, prometheus on {}; end time {}",
            strata.addr,
            prom.addr,
            secs_of(end)
        );
        std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(60)));
    }
}

fn secs_of(ms: i64) -> String {
    format!("{}", ms as f64 / 1000.0)
}
