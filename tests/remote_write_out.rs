//! Remote write out: strata forwarding to real receivers — Debian's VictoriaMetrics and
//! Prometheus (remote-write receiver on) — through a 60 s outage of both and `kill -9`s of
//! strata, every sample counted downstream; and 2.0 forwarding to another strata with
//! relabeling, external labels and a refused batch.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    enc, free_port, request, start_victoria_metrics, stop_gracefully, wait_for, write_body, Strata,
    Ts,
};

const SERIES: usize = 20;

/// A receiver process that can be stopped and started again on the same port and data.
struct Peer {
    name: &'static str,
    addr: SocketAddr,
    dir: PathBuf,
    child: Option<Child>,
}

impl Peer {
    fn new(name: &'static str, root: &Path) -> Peer {
        Peer {
            name,
            addr: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            dir: root.join(name),
            child: None,
        }
    }

    fn start(&mut self) {
        std::fs::create_dir_all(&self.dir).unwrap();
        if self.name == "victoria-metrics" {
            // A batch resent after strata's kill -9 may repeat samples; VictoriaMetrics
            // keeps one per millisecond of each series.
            self.child = Some(start_victoria_metrics(
                &self.dir.join("data"),
                self.addr,
                &["-dedup.minScrapeInterval=1ms"],
            ));
            return;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .unwrap();
        let config = self.dir.join("prometheus.yml");
        std::fs::write(&config, "global:\n  scrape_interval: 15s\n").unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                self.dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={}", self.addr))
            .arg("--web.enable-remote-write-receiver")
            .arg("--log.level=warn")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", self.name));
        self.child = Some(child);
        wait_for(Duration::from_secs(60), self.name, || {
            request(self.addr, "GET", "/-/ready", &[], &[])
                .ok()
                .filter(|r| r.status == 200)
        });
    }

    /// SIGTERM and wait: both flush what they acknowledged.
    fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_gracefully(c);
        }
    }

    /// The value of a scalar-valued instant query at `time_ms`, if it has one.
    fn query_value(&self, q: &str, time_ms: i64) -> Option<f64> {
        let path = format!(
            "/api/v1/query?query={}&time={:.3}",
            enc(q),
            time_ms as f64 / 1e3
        );
        let r = request(self.addr, "GET", &path, &[], &[]).ok()?;
        if r.status != 200 {
            return None;
        }
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        v["data"]["result"][0]["value"][1].as_str()?.parse().ok()
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn have(cmd: &str) -> bool {
    Command::new(cmd)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Pushes one round: a sample for each series at `t`, value `round * 100 + series`.
/// Retries until strata acknowledges it (it may be restarting).
fn push_round(strata: &Strata, round: i64, t: i64) {
    let names: Vec<String> = (0..SERIES).map(|i| format!("s{i}")).collect();
    let series: Vec<Ts> = names
        .iter()
        .enumerate()
        .map(|(i, n)| Ts {
            labels: vec![("__name__", "rw_test"), ("series", n.as_str())],
            samples: vec![(t, (round * 100 + i as i64) as f64)],
        })
        .collect();
    let body = write_body(&series);
    let r = strata.write(&body);
    assert!(
        r.status == 204 || r.status == 200,
        "write: {} {}",
        r.status,
        r.body
    );
}

/// Sum over rounds and series of the values pushed.
fn expected_sum(rounds: i64) -> f64 {
    (0..rounds)
        .map(|r| {
            (0..SERIES as i64)
                .map(|i| (r * 100 + i) as f64)
                .sum::<f64>()
        })
        .sum()
}

fn metric(strata: &Strata, name: &str, queue: &str) -> f64 {
    let text = strata.get("/metrics").body;
    let prefix = format!("{name}{{remote_name=\"{queue}\"");
    text.lines()
        .find(|l| l.starts_with(&prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} for {queue} not in /metrics"))
}

#[test]
fn every_sample_reaches_victoria_metrics_and_prometheus_through_outages_and_kills() {
    if !have("victoria-metrics") && !have("prometheus") {
        panic!(
            "victoria-metrics and prometheus are needed (Debian packages; .ci/run installs them)"
        );
    }
    let root = tempfile::tempdir().unwrap();
    let mut vm = Peer::new("victoria-metrics", root.path());
    let mut prom = Peer::new("prometheus", root.path());
    vm.start();
    prom.start();
    let queue = "queue_config: {batch_send_deadline: 200ms, min_backoff: 50ms, max_backoff: 1s, max_samples_per_send: 50}";
    let config = root.path().join("strata.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  external_labels: {{site: lab}}\nremote_write:\n  - url: http://{}/api/v1/write\n    name: vm\n    {queue}\n  - url: http://{}/api/v1/write\n    name: prom\n    {queue}\n",
            vm.addr, prom.addr
        ),
    )
    .unwrap();
    let data = root.path().join("strata");
    let args = ["--config.file", config.to_str().unwrap()];
    let mut strata = Strata::start(&data, &args);
    let t0 = chrono_now_ms() - 10 * 60_000;
    let mut round = 0i64;
    let push_for = |strata: &Strata, d: Duration, round: &mut i64| {
        let end = Instant::now() + d;
        while Instant::now() < end {
            push_round(strata, *round, t0 + *round * 1000);
            *round += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    push_for(&strata, Duration::from_secs(3), &mut round);

    // Both receivers down for 60 s; strata killed and restarted in the middle.
    vm.stop();
    prom.stop();
    let outage = Instant::now();
    push_for(&strata, Duration::from_secs(25), &mut round);
    strata.kill9();
    strata = Strata::start(&data, &args);
    push_for(&strata, Duration::from_secs(25), &mut round);
    let left = Duration::from_secs(60).saturating_sub(outage.elapsed());
    push_for(&strata, left, &mut round);
    assert!(metric(&strata, "strata_remote_write_samples_pending", "vm") > 0.0);
    vm.start();
    prom.start();

    // Killed again while sending: what was in flight is sent once more, not lost.
    push_for(&strata, Duration::from_secs(2), &mut round);
    strata.kill9();
    strata = Strata::start(&data, &args);
    push_for(&strata, Duration::from_secs(3), &mut round);

    let want_count = (round * SERIES as i64) as f64;
    let want_sum = expected_sum(round);
    let at = t0 + (round - 1) * 1000;
    let count_q = r#"sum(count_over_time(rw_test{site="lab"}[30m]))"#;
    let sum_q = r#"sum(sum_over_time(rw_test{site="lab"}[30m]))"#;
    for peer in [&vm, &prom] {
        let got = wait_for(Duration::from_secs(120), peer.name, || {
            if peer.name == "victoria-metrics" {
                let _ = request(peer.addr, "GET", "/internal/force_flush", &[], &[]);
            }
            peer.query_value(count_q, at).filter(|&c| c >= want_count)
        });
        assert_eq!(got, want_count, "{}: samples counted downstream", peer.name);
        assert_eq!(
            peer.query_value(sum_q, at),
            Some(want_sum),
            "{}: values as sent",
            peer.name
        );
        assert_eq!(
            peer.query_value(r#"count(count_over_time(rw_test{site="lab"}[30m]))"#, at),
            Some(SERIES as f64),
            "{}: series with the external label",
            peer.name
        );
    }
    for q in ["vm", "prom"] {
        assert_eq!(
            metric(&strata, "strata_remote_write_samples_failed_total", q),
            0.0
        );
    }
    // Retries happened during the outage (counted before the last restart, so only the
    // reading side is checked here) and nothing is left.
    wait_for(Duration::from_secs(30), "queues empty", || {
        (metric(&strata, "strata_remote_write_samples_pending", "vm") == 0.0
            && metric(&strata, "strata_remote_write_samples_pending", "prom") == 0.0)
            .then_some(())
    });
    assert!(strata.terminate(), "strata stops cleanly");
}

fn chrono_now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn forwards_with_protocol_2_relabeling_and_external_labels_and_counts_refusals() {
    let root = tempfile::tempdir().unwrap();
    // The receiver: another strata refusing series of more than 4 labels.
    let receiver = Strata::start(
        &root.path().join("receiver"),
        &["--write.max-labels-per-series", "4"],
    );
    let config = root.path().join("strata.yml");
    std::fs::write(
        &config,
        format!(
            r#"global:
  external_labels: {{site: lab}}
remote_write:
  - url: http://{}/api/v1/write
    name: v2
    protobuf_message: io.prometheus.write.v2.Request
    write_relabel_configs:
      - {{source_labels: [__name__], regex: drop_me, action: drop}}
      - {{target_label: forwarded, replacement: "yes"}}
    queue_config: {{batch_send_deadline: 100ms, min_backoff: 20ms, max_backoff: 200ms}}
"#,
            receiver.addr
        ),
    )
    .unwrap();
    let strata = Strata::start(
        &root.path().join("sender"),
        &["--config.file", config.to_str().unwrap()],
    );
    let now = chrono_now_ms();
    let ok: Vec<(i64, f64)> = (0..5)
        .map(|i| (now - 5000 + i * 1000, i as f64 + 0.5))
        .collect();
    let body = write_body(&[
        Ts {
            labels: vec![("__name__", "keep_me"), ("job", "j")],
            samples: ok.clone(),
        },
        Ts {
            labels: vec![("__name__", "drop_me"), ("job", "j")],
            samples: ok.clone(),
        },
    ]);
    assert_eq!(strata.write(&body).status, 204);
    let q = r#"keep_me{site="lab",forwarded="yes",job="j"}[1m]"#;
    let got = wait_for(Duration::from_secs(30), "forwarded samples", || {
        let d = receiver.query(q, &format!("{:.3}", now as f64 / 1e3));
        let values = d["result"][0]["values"].as_array()?.clone();
        (values.len() == ok.len()).then_some(values)
    });
    let got: Vec<(i64, f64)> = got
        .iter()
        .map(|v| {
            (
                (v[0].as_f64().unwrap() * 1000.0).round() as i64,
                v[1].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, ok, "samples as written, in order");
    assert_eq!(
        receiver.query("count(drop_me)", &format!("{:.3}", now as f64 / 1e3))["result"],
        serde_json::json!([]),
        "the relabel rule dropped the series"
    );
    assert_eq!(
        metric(&strata, "strata_remote_write_samples_dropped_total", "v2"),
        5.0
    );
    // Five labels after the external and relabeled ones: the receiver answers 400, the
    // batch is dropped and counted, not retried.
    let body = write_body(&[Ts {
        labels: vec![("__name__", "wide"), ("a", "1"), ("b", "2")],
        samples: vec![(now, 1.0)],
    }]);
    assert_eq!(strata.write(&body).status, 204);
    wait_for(Duration::from_secs(30), "refusal counted", || {
        (metric(&strata, "strata_remote_write_samples_failed_total", "v2") == 1.0).then_some(())
    });
    assert_eq!(
        metric(&strata, "strata_remote_write_samples_retried_total", "v2"),
        0.0
    );
    assert_eq!(
        metric(&strata, "strata_remote_write_samples_sent_total", "v2"),
        5.0
    );
}

#[test]
fn a_503_with_retry_after_is_retried_after_the_delay_asked() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    // A receiver that answers its first two requests 503 with `Retry-After: 1`.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let arrivals: Arc<Mutex<Vec<Instant>>> = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&arrivals);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let mut raw = Vec::new();
            let mut buf = [0u8; 8192];
            let complete = loop {
                let Ok(n) = c.read(&mut buf) else { break false };
                if n == 0 {
                    break false;
                }
                raw.extend_from_slice(&buf[..n]);
                if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&raw[..p]).to_ascii_lowercase();
                    let len: usize = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    if raw.len() >= p + 4 + len {
                        break true;
                    }
                }
            };
            if !complete {
                continue;
            }
            let n = {
                let mut a = seen.lock().unwrap();
                a.push(Instant::now());
                a.len()
            };
            let answer = if n <= 2 {
                "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            } else {
                "HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            };
            let _ = c.write_all(answer.as_bytes());
        }
    });
    let root = tempfile::tempdir().unwrap();
    let config = root.path().join("strata.yml");
    std::fs::write(
        &config,
        format!("remote_write:\n  - url: http://{addr}/api/v1/write\n    name: r\n    queue_config: {{batch_send_deadline: 50ms, min_backoff: 10ms, max_backoff: 100ms}}\n"),
    )
    .unwrap();
    let strata = Strata::start(
        &root.path().join("data"),
        &["--config.file", config.to_str().unwrap()],
    );
    let body = write_body(&[Ts {
        labels: vec![("__name__", "retry_me")],
        samples: vec![(chrono_now_ms(), 1.0)],
    }]);
    assert_eq!(strata.write(&body).status, 204);
    wait_for(Duration::from_secs(30), "delivered", || {
        (metric(&strata, "strata_remote_write_samples_sent_total", "r") == 1.0).then_some(())
    });
    let a = arrivals.lock().unwrap().clone();
    assert_eq!(a.len(), 3, "two refusals, then the delivery");
    for w in a.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            gap >= Duration::from_millis(950),
            "retried after {gap:?}, before the second Retry-After asked for"
        );
    }
    assert_eq!(
        metric(&strata, "strata_remote_write_samples_retried_total", "r"),
        2.0
    );
    assert_eq!(
        metric(&strata, "strata_remote_write_samples_failed_total", "r"),
        0.0
    );
}
