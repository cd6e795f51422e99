//! The requests Grafana's Prometheus data source makes, in the order and form it makes
//! them, against strata and against a real Prometheus 2.42 holding the same data; the
//! answers are compared field by field. Needs the `prometheus` binary (Debian package
//! `prometheus`; `.ci/run` installs it).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::{enc, post_write, request, write_body, Prometheus, Strata, Ts};
use serde_json::Value;

const STEP_MS: i64 = 15_000;
const POINTS: i64 = 240;

/// A series' labels and samples, owned.
type Owned = (Vec<(String, String)>, Vec<(i64, f64)>);

/// One hour of node-exporter-like data for three hosts, ending near `end` (ms). Samples
/// sit 1.234 s off the query grid: Prometheus 3 (whose semantics strata follows) leaves
/// a sample exactly at the start of a range out, 2.42 takes it in, and the comparison is
/// about everything else.
fn data(end: i64) -> Vec<u8> {
    let start = end - (POINTS - 1) * STEP_MS - 1_234;
    let mut series: Vec<Owned> = Vec::new();
    for h in 0..3 {
        let instance = format!("host-{h}:9100");
        for (m, mode) in ["idle", "user", "system"].iter().enumerate() {
            let labels = vec![
                ("__name__".to_string(), "node_cpu_seconds_total".to_string()),
                ("cpu".to_string(), "0".to_string()),
                ("instance".to_string(), instance.clone()),
                ("job".to_string(), "node".to_string()),
                ("mode".to_string(), mode.to_string()),
            ];
            let samples = (0..POINTS)
                .map(|k| {
                    let v = (k * (15 - 4 * m as i64) * 100 + (k * 7 + h) % 13) as f64 / 100.0;
                    (start + k * STEP_MS, v)
                })
                .collect();
            series.push((labels, samples));
        }
        let labels = vec![
            ("__name__".to_string(), "node_load1".to_string()),
            ("instance".to_string(), instance.clone()),
            ("job".to_string(), "node".to_string()),
        ];
        let samples = (0..POINTS)
            .map(|k| (start + k * STEP_MS, ((k + h * 5) % 40) as f64 / 20.0))
            .collect();
        series.push((labels, samples));
    }
    let ts: Vec<Ts> = series
        .iter()
        .map(|(l, s)| Ts {
            labels: l.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect(),
            samples: s.clone(),
        })
        .collect();
    write_body(&ts)
}

struct Answer {
    status: u16,
    json: Value,
}

fn call(addr: std::net::SocketAddr, method: &str, path: &str, form: &str) -> Answer {
    let headers: &[(&str, &str)] = if method == "POST" {
        &[("Content-Type", "application/x-www-form-urlencoded")]
    } else {
        &[]
    };
    let r = request(addr, method, path, headers, form.as_bytes()).unwrap();
    let json = serde_json::from_str(&r.body).unwrap_or(Value::Null);
    Answer {
        status: r.status,
        json,
    }
}

/// Sorts arrays of objects (series) or strings (names, values), so that sets compare
/// regardless of order; arrays of points keep their order.
fn normalized(v: &Value) -> Value {
    match v {
        Value::Array(a) => {
            let mut items: Vec<Value> = a.iter().map(normalized).collect();
            if items.iter().all(|x| x.is_object() || x.is_string()) {
                items.sort_by_key(|x| x.to_string());
            }
            Value::Array(items)
        }
        Value::Object(o) => {
            Value::Object(o.iter().map(|(k, v)| (k.clone(), normalized(v))).collect())
        }
        other => other.clone(),
    }
}

/// Field by field; sample values (numbers in strings) may differ in the last bits of
/// float arithmetic (relative 1e-9), nothing else may differ.
fn assert_same(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let (kx, ky): (Vec<&String>, Vec<&String>) = (x.keys().collect(), y.keys().collect());
            assert_eq!(kx, ky, "{at}: fields");
            for (k, v) in x {
                assert_same(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                assert_same(v, w, &format!("{at}[{i}]"));
            }
        }
        (Value::String(x), Value::String(y)) if x != y => {
            let (fx, fy) = (x.parse::<f64>(), y.parse::<f64>());
            match (fx, fy) {
                (Ok(fx), Ok(fy)) if (fx - fy).abs() <= 1e-9 * (fx.abs() + fy.abs()) => {}
                _ => panic!("{at}: {x:?} != {y:?}"),
            }
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

#[test]
fn grafana_sees_the_same_answers_as_from_prometheus() {
    let prom = Prometheus::start().expect(
        "the prometheus binary is needed (apt-get install prometheus); .ci/run installs it",
    );
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let end = now / STEP_MS * STEP_MS;
    let body = data(end);
    for addr in [strata.addr, prom.addr] {
        let r = post_write(addr, &body).unwrap();
        assert_eq!(r.status / 100, 2, "{addr}: {}", r.body);
    }
    let (s, e) = ((end - POINTS * STEP_MS) / 1000, end / 1000);

    // Data source set-up: build info, then "Save & test" (1+1 at time 4, form POST).
    let b = call(strata.addr, "GET", "/api/v1/status/buildinfo", "");
    assert_eq!(b.status, 200);
    for f in [
        "version",
        "revision",
        "branch",
        "buildUser",
        "buildDate",
        "goVersion",
    ] {
        assert!(b.json["data"][f].is_string(), "buildinfo lacks {f}");
    }
    assert!(
        b.json["data"].get("features").is_none(),
        "a features map reads as Mimir"
    );

    // Requests whose answers must match Prometheus' exactly (data and status).
    let same: Vec<(&str, String, String)> = vec![
        ("POST", "/api/v1/query".into(), "query=1%2B1&time=4".into()),
        (
            "GET",
            format!("/api/v1/labels?start={s}&end={e}"),
            String::new(),
        ),
        (
            "GET",
            format!("/api/v1/label/__name__/values?start={s}&end={e}&limit=40000"),
            String::new(),
        ),
        (
            "GET",
            format!(
                "/api/v1/label/instance/values?match[]={}&start={s}&end={e}",
                enc("node_load1")
            ),
            String::new(),
        ),
        (
            "GET",
            format!(
                "/api/v1/series?match[]={}&start={s}&end={e}&limit=40000",
                enc("node_cpu_seconds_total{mode=\"idle\"}")
            ),
            String::new(),
        ),
        ("GET", "/api/v1/rules".into(), String::new()),
        ("GET", "/api/v1/metadata?limit=40000".into(), String::new()),
        ("GET", "/api/v1/alerts".into(), String::new()),
        ("GET", "/api/v1/alertmanagers".into(), String::new()),
        (
            "GET",
            format!(
                "/api/v1/query_exemplars?query=test&start={}&end={}",
                s * 1000,
                e * 1000
            ),
            String::new(),
        ),
        (
            "POST",
            "/api/v1/query_range".into(),
            format!(
                "query={}&start={s}&end={e}&step=15",
                enc("sum by (instance) (rate(node_cpu_seconds_total{mode!=\"idle\"}[5m]))")
            ),
        ),
        (
            "POST",
            "/api/v1/query_range".into(),
            format!(
                "query={}&start={s}&end={e}&step=60",
                enc("avg_over_time(node_load1[5m])")
            ),
        ),
        (
            "POST",
            "/api/v1/query".into(),
            format!("query={}&time={e}", enc("topk(2, node_load1)")),
        ),
        (
            "POST",
            "/api/v1/query".into(),
            format!(
                "query={}&time={e}",
                enc("count by (mode) (node_cpu_seconds_total)")
            ),
        ),
        // Errors: same status and error type.
        (
            "POST",
            "/api/v1/query".into(),
            format!("query={}&time={e}", enc("sum(rate(x[5m])")),
        ),
        (
            "POST",
            "/api/v1/query_range".into(),
            format!("query=up&start={e}&end={s}&step=15"),
        ),
    ];
    for (method, path, form) in &same {
        let a = call(strata.addr, method, path, form);
        let p = call(prom.addr, method, path, form);
        assert_eq!(a.status, p.status, "{method} {path} {form}: status");
        assert_eq!(a.json["status"], p.json["status"], "{method} {path} {form}");
        assert_eq!(
            a.json["errorType"], p.json["errorType"],
            "{method} {path} {form}"
        );
        assert_same(
            &normalized(&a.json["data"]),
            &normalized(&p.json["data"]),
            &format!("{method} {path} {form}: data"),
        );
    }

    // Grafana escapes label names with `U__` (Prometheus 3); 2.42 predates it, so strata's
    // answer is compared with 2.42's for the plain name.
    let a = call(
        strata.addr,
        "GET",
        &format!("/api/v1/label/U__instance/values?start={s}&end={e}"),
        "",
    );
    let p = call(
        prom.addr,
        "GET",
        &format!("/api/v1/label/instance/values?start={s}&end={e}"),
        "",
    );
    assert_eq!(a.json["data"], p.json["data"]);
    assert_eq!(a.json["data"].as_array().map(Vec::len), Some(3));

    // With stats (Grafana's query inspector): the sample count Grafana shows is there.
    let form = format!(
        "query={}&time={e}&stats=all",
        enc("rate(node_cpu_seconds_total[5m])")
    );
    let a = call(strata.addr, "POST", "/api/v1/query", &form);
    let p = call(prom.addr, "POST", "/api/v1/query", &form);
    assert_eq!(
        normalized(&a.json["data"]["result"]),
        normalized(&p.json["data"]["result"])
    );
    for x in [&a, &p] {
        assert!(
            x.json["data"]["stats"]["samples"]["totalQueryableSamples"]
                .as_u64()
                .unwrap()
                > 0
        );
    }

    // Status pages: the same fields (values are each server's own).
    for path in [
        "/api/v1/status/runtimeinfo",
        "/api/v1/status/flags",
        "/api/v1/status/config",
        "/api/v1/targets",
        "/api/v1/scrape_pools",
    ] {
        let a = call(strata.addr, "GET", path, "");
        let p = call(prom.addr, "GET", path, "");
        assert_eq!((a.status, p.status), (200, 200), "{path}");
        if let (Some(ao), Some(po)) = (a.json["data"].as_object(), p.json["data"].as_object()) {
            if path.ends_with("runtimeinfo")
                || path.ends_with("config")
                || path.ends_with("targets")
                || path.ends_with("scrape_pools")
            {
                for k in po.keys() {
                    assert!(ao.contains_key(k), "{path}: strata lacks {k}");
                }
            }
        }
    }
    let t = call(strata.addr, "GET", "/api/v1/targets/metadata", "");
    assert_eq!(t.status, 200);
}
