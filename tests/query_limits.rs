#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Limits protect the server: a query over a limit fails alone, with Prometheus' error
//! type, and everything else carries on. Also `stats`, `format_query`, exemplars.

mod common;

use common::{enc, write_body, Strata, Ts};

const BASE: i64 = 1_700_000_000_000;

fn load(strata: &Strata) {
    let series: Vec<Ts> = ["a", "b", "c"]
        .iter()
        .map(|i| Ts {
            labels: vec![("__name__", "work_total"), ("instance", i)],
            samples: (0..50).map(|k| (BASE + k * 15_000, k as f64)).collect(),
        })
        .collect();
    assert_eq!(strata.write(&write_body(&series)).status, 204);
}

fn at(offset_ms: i64) -> String {
    format!("{}", (BASE + offset_ms) as f64 / 1000.0)
}

#[test]
fn too_many_samples_fails_that_query_only() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &["--query.max-samples", "100"]);
    load(&strata);
    // 3 series x 50 samples in the window: over the limit of 100.
    let r = strata.get(&format!(
        "/api/v1/query?query={}&time={}",
        enc("sum_over_time(work_total[1h])"),
        at(49 * 15_000)
    ));
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(r.json()["errorType"], "execution");
    assert_eq!(
        r.json()["error"],
        "query processing would load too many samples into memory in query execution"
    );
    // A smaller query on the same server still works.
    let d = strata.query("sum(work_total)", &at(49 * 15_000));
    assert_eq!(d["result"][0]["value"][1], "147");
    assert_eq!(strata.get("/-/healthy").status, 200);
}

#[test]
fn a_query_past_its_timeout_gets_503() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    load(&strata);
    let r = strata.get(&format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=1&timeout=0.0001",
        enc("sum(rate(work_total[5m]))"),
        at(0),
        at(49 * 15_000)
    ));
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["errorType"], "timeout");
    assert_eq!(
        r.json()["error"],
        "query timed out in expression evaluation"
    );
    // Without the tiny timeout the same query answers.
    let r = strata.get(&format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=15",
        enc("sum(rate(work_total[5m]))"),
        at(300_000),
        at(49 * 15_000)
    ));
    assert_eq!(r.status, 200, "{}", r.body);
}

#[test]
fn queries_beyond_the_concurrency_limit_wait_rather_than_fail() {
    let dir = tempfile::tempdir().unwrap();
    let strata = std::sync::Arc::new(Strata::start(dir.path(), &["--query.max-concurrency", "1"]));
    load(&strata);
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let strata = std::sync::Arc::clone(&strata);
            std::thread::spawn(move || {
                strata
                    .get(&format!(
                        "/api/v1/query_range?query={}&start={}&end={}&step=1",
                        enc("sum(rate(work_total[5m]))"),
                        at(0),
                        at(49 * 15_000)
                    ))
                    .status
            })
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
}

#[test]
fn stats_format_query_and_exemplars() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    load(&strata);
    let r = strata.get(&format!(
        "/api/v1/query?query={}&time={}&stats=all",
        enc("work_total"),
        at(49 * 15_000)
    ));
    let v = r.json();
    assert_eq!(v["data"]["result"].as_array().unwrap().len(), 3);
    assert_eq!(v["data"]["stats"]["samples"]["totalQueryableSamples"], 3);
    assert!(v["data"]["stats"]["timings"]["evalTotalTime"].is_number());
    // Without the parameter there are no statistics.
    let r = strata.get(&format!("/api/v1/query?query=work_total&time={}", at(0)));
    assert!(r.json()["data"].get("stats").is_none());

    let r = strata.post_form(
        "/api/v1/format_query",
        &format!("query={}", enc("sum(rate(work_total[5m]))by(instance)")),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let pretty = r.json()["data"].as_str().unwrap().to_owned();
    assert!(pretty.contains("sum by (instance)"), "{pretty}");
    assert!(pretty.contains("rate(work_total[5m])"), "{pretty}");
    let r = strata.get(&format!("/api/v1/format_query?query={}", enc("sum(")));
    assert_eq!(r.status, 400);

    let r = strata.get("/api/v1/query_exemplars?query=test&start=1700000000000&end=1700003600000");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["data"], serde_json::json!([]));
}

/// strata_query_failures_total from /metrics.
fn query_failures(strata: &Strata) -> f64 {
    strata
        .get("/metrics")
        .body
        .lines()
        .find_map(|l| l.strip_prefix("strata_query_failures_total "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn a_query_whose_client_goes_away_stops() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    let names: Vec<String> = (0..2000).map(|i| i.to_string()).collect();
    let series: Vec<Ts> = names
        .iter()
        .map(|i| Ts {
            labels: vec![("__name__", "m"), ("i", i)],
            samples: (0..240).map(|k| (BASE + k * 15_000, k as f64)).collect(),
        })
        .collect();
    assert_eq!(strata.write(&write_body(&series)).status, 204);
    // How long the query takes when the client waits for it: the first of these, from
    // light to heavy, that takes long enough to tell (unoptimized builds are many times
    // slower than release ones).
    let mut chosen = None;
    for query in [
        "sum(count_over_time(m[1h]))",
        "sum(avg_over_time(m[10m]))",
        "sum(avg_over_time(m[1h]))",
    ] {
        let q = format!(
            "/api/v1/query_range?query={}&start={}&end={}&step=1",
            enc(query),
            BASE / 1000,
            BASE / 1000 + 3600
        );
        let started = Instant::now();
        assert_eq!(strata.get(&q).status, 200);
        let full = started.elapsed();
        if full > Duration::from_millis(300) {
            chosen = Some((q, full));
            break;
        }
    }
    let Some((q, full)) = chosen else {
        panic!("every query too light to tell");
    };
    assert_eq!(query_failures(&strata), 0.0);

    // The same query, from a client that goes away after a moment: the query stops
    // (counted as failed, 499 canceled) long before it would have finished.
    let mut s = std::net::TcpStream::connect(strata.addr).unwrap();
    write!(s, "GET {q} HTTP/1.1\r\nHost: strata\r\n\r\n").unwrap();
    std::thread::sleep(full / 5);
    drop(s);
    let gone = Instant::now();
    while query_failures(&strata) < 1.0 {
        assert!(
            gone.elapsed() < full / 2,
            "the query went on after its client left (full run {full:?})"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}
