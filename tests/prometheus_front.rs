//! A real Prometheus (Debian's 2.42) scraping a real node_exporter (Debian's
//! `prometheus-node-exporter`) and remote-writing to strata: after a few scrapes the same
//! queries return the same series and values from both, and `promtool query` prints the
//! same for both. `.ci/run` installs both packages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{enc, free_port, request, start_node_exporter, Proc, Strata};
use serde_json::Value;

fn wait_ready(addr: &str, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let ok =
            request(addr.parse().unwrap(), "GET", path, &[], &[]).is_ok_and(|r| r.status == 200);
        if ok {
            return;
        }
        assert!(Instant::now() < deadline, "{addr}{path} never became ready");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn get(addr: std::net::SocketAddr, path: &str) -> Value {
    let r = request(addr, "GET", path, &[], &[]).unwrap();
    assert_eq!(r.status, 200, "{addr}{path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

/// `{labels} -> value` of an instant vector.
fn vector(v: &Value) -> std::collections::BTreeMap<String, f64> {
    v["data"]["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["metric"].to_string(),
                s["value"][1].as_str().unwrap().parse::<f64>().unwrap(),
            )
        })
        .collect()
}

#[test]
fn prometheus_remote_writing_to_strata_gives_the_same_answers() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(&dir.path().join("strata"), &[]);

    let (_node_exporter, ne_addr) = start_node_exporter();

    let prom_addr: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let config = dir.path().join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: node\n    static_configs:\n      - targets: ['{ne_addr}']\n\
             remote_write:\n  - url: http://{}/api/v1/write\n    queue_config:\n      batch_send_deadline: 500ms\n      min_backoff: 100ms\n    metadata_config:\n      send_interval: 1s\n",
            strata.addr
        ),
    )
    .unwrap();
    let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
    let _prometheus = Proc(
        Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("prom").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("prometheus is needed (apt-get install prometheus)"),
    );
    wait_ready(&prom_addr.to_string(), "/-/ready");

    // Wait (bounded) until strata holds five scrapes of node_exporter.
    let deadline = Instant::now() + Duration::from_secs(90);
    let t = loop {
        let c = get(
            strata.addr,
            &format!(
                "/api/v1/query?query={}",
                enc("count_over_time(up{job=\"node\"}[1m])")
            ),
        );
        let n = c["data"]["result"][0]["value"][1]
            .as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(0.0);
        if n >= 5.0 {
            // The newest scrape strata has: both servers answer at that instant.
            let ts = get(
                strata.addr,
                &format!("/api/v1/query?query={}", enc("timestamp(up{job=\"node\"})")),
            );
            // Half a second after it: a range never starts exactly on a sample (2.42
            // includes such a sample, Prometheus 3 and strata do not).
            let last: f64 = ts["data"]["result"][0]["value"][1]
                .as_str()
                .unwrap()
                .parse()
                .unwrap();
            break format!("{:.3}", last + 0.5);
        }
        assert!(
            Instant::now() < deadline,
            "strata did not receive five scrapes; prometheus log:\n{}",
            std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(250));
    };

    // A scrape's samples may come in several remote-write requests: give the rest of the
    // scrape at `t` time to arrive (the queue sends at least every 500 ms).
    std::thread::sleep(Duration::from_secs(2));

    for q in [
        "up",
        "node_load1",
        "node_memory_MemTotal_bytes",
        "count by (mode) (node_cpu_seconds_total)",
        "sum by (mode) (rate(node_cpu_seconds_total[3s]))",
        "scrape_samples_scraped",
        "count({job=\"node\"})",
    ] {
        let path = format!("/api/v1/query?query={}&time={t}", enc(q));
        let a = vector(&get(strata.addr, &path));
        let b = vector(&get(prom_addr, &path));
        assert!(!a.is_empty(), "{q}: strata has nothing");
        assert_eq!(
            a.keys().collect::<Vec<_>>(),
            b.keys().collect::<Vec<_>>(),
            "{q}: series"
        );
        for (k, x) in &a {
            let y = b[k];
            assert!(
                (x - y).abs() <= 1e-9 * (x.abs() + y.abs()) || (x.is_nan() && y.is_nan()),
                "{q} {k}: strata {x}, prometheus {y}"
            );
        }
    }

    // Metadata: Prometheus' from its scrapes, strata's from remote write (sent every
    // second here), bounded wait.
    let deadline = Instant::now() + Duration::from_secs(30);
    for metric in [
        "node_load1",
        "node_cpu_seconds_total",
        "node_memory_MemTotal_bytes",
    ] {
        let path = format!("/api/v1/metadata?metric={metric}");
        let want = get(prom_addr, &path)["data"].clone();
        assert!(want[metric][0]["help"].is_string(), "{metric}: {want}");
        loop {
            let got = get(strata.addr, &path)["data"].clone();
            if got == want {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{metric}: strata {got}, prometheus {want}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // promtool prints the same for both servers.
    for args in [
        vec!["query", "instant", "--time", &t, "", "node_load1"],
        vec!["query", "labels", "", "job"],
        vec!["query", "series", "--match", "node_load1", ""],
    ] {
        let run = |addr: std::net::SocketAddr| {
            let url = format!("http://{addr}");
            let args: Vec<&str> = args
                .iter()
                .map(|a| if a.is_empty() { url.as_str() } else { a })
                .collect();
            let out = Command::new("promtool")
                .args(&args)
                .output()
                .expect("promtool");
            assert!(
                out.status.success(),
                "promtool {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let (a, b) = (run(strata.addr), run(prom_addr));
        assert!(
            !a.trim().is_empty(),
            "promtool {args:?} printed nothing for strata"
        );
        assert_eq!(a, b, "promtool {args:?}");
    }
}
