#![allow(clippy::unwrap_used, clippy::expect_used)]

//! The walking skeleton end to end: remote write in over real HTTP, PromQL and the
//! metadata API out, the way Prometheus' clients and Grafana call them.

mod common;

use common::{enc, vector_map, write_body, Strata, Ts};

/// 2023-11-14T22:13:20Z, in milliseconds.
const BASE: i64 = 1_700_000_000_000;

fn load(strata: &Strata) {
    // Two counters and a gauge, 15 s apart, 21 samples each (5 minutes).
    let a: Vec<(i64, f64)> = (0..=20)
        .map(|i| (BASE + i * 15_000, i as f64 * 10.0))
        .collect();
    let b: Vec<(i64, f64)> = (0..=20)
        .map(|i| (BASE + i * 15_000, i as f64 * 20.0))
        .collect();
    let g: Vec<(i64, f64)> = (0..=20)
        .map(|i| {
            (
                BASE + i * 15_000,
                [1.5, f64::NAN, f64::INFINITY][i as usize % 3],
            )
        })
        .collect();
    let body = write_body(&[
        Ts {
            labels: vec![
                ("__name__", "http_requests_total"),
                ("job", "api"),
                ("instance", "a"),
            ],
            samples: a,
        },
        Ts {
            // Unsorted on purpose: labels are sorted on the way in, not refused.
            labels: vec![
                ("job", "api"),
                ("instance", "b"),
                ("__name__", "http_requests_total"),
            ],
            samples: b,
        },
        Ts {
            labels: vec![("__name__", "room_temp"), ("room", "lab")],
            samples: g,
        },
    ]);
    let r = strata.write(&body);
    assert_eq!(r.status, 204, "{}", r.body);
}

fn secs(ms: i64) -> String {
    format!("{}", ms as f64 / 1000.0)
}

#[test]
fn remote_write_then_instant_and_range_queries() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    load(&strata);

    // Instant: the latest sample at or before the evaluation time.
    let t = secs(BASE + 300_000);
    let got = vector_map(&strata.query("http_requests_total", &t));
    assert_eq!(got.len(), 2);
    assert_eq!(
        got["__name__=http_requests_total,instance=a,job=api"],
        "200"
    );
    assert_eq!(
        got["__name__=http_requests_total,instance=b,job=api"],
        "400"
    );

    // Special values come back as Prometheus spells them.
    let at = |i: i64| secs(BASE + i * 15_000);
    assert_eq!(
        vector_map(&strata.query("room_temp", &at(0)))["__name__=room_temp,room=lab"],
        "1.5"
    );
    assert_eq!(
        vector_map(&strata.query("room_temp", &at(1)))["__name__=room_temp,room=lab"],
        "NaN"
    );
    assert_eq!(
        vector_map(&strata.query("room_temp", &at(2)))["__name__=room_temp,room=lab"],
        "+Inf"
    );
    assert_eq!(
        vector_map(&strata.query("-room_temp", &at(2)))["room=lab"],
        "-Inf"
    );

    // rate over the whole 5 minutes: 10 per 15 s and 20 per 15 s.
    let got = vector_map(&strata.query("sum by (instance) (rate(http_requests_total[5m]))", &t));
    let a: f64 = got["instance=a"].parse().unwrap();
    let b: f64 = got["instance=b"].parse().unwrap();
    assert!((a - 10.0 / 15.0).abs() < 1e-9, "{a}");
    assert!((b - 20.0 / 15.0).abs() < 1e-9, "{b}");

    // A rate over a name that does not look like a counter carries Prometheus' info.
    let r = strata.get(&format!(
        "/api/v1/query?query={}&time={t}",
        enc("rate(room_temp[5m])")
    ));
    assert_eq!(
        r.json()["infos"],
        serde_json::json!([
            "PromQL info: metric might not be a counter, name does not end in _total/_sum/_count/_bucket: \"room_temp\" (1:6)"
        ])
    );
    let r = strata.get(&format!(
        "/api/v1/query?query={}&time={t}",
        enc("rate(http_requests_total[5m])")
    ));
    assert!(r.json().get("infos").is_none());

    // Scalar answer, and the timestamp as Unix seconds with the millisecond fraction.
    let d = strata.query("1 + 1", "4.5");
    assert_eq!(d["resultType"], "scalar");
    assert_eq!(d["result"][0].as_f64(), Some(4.5));
    assert_eq!(d["result"][1], "2");

    // Range query: every step, exact values.
    let r = strata.get(&format!(
        "/api/v1/query_range?query={}&start={}&end={}&step=60",
        enc("http_requests_total{instance=\"a\"}"),
        secs(BASE),
        secs(BASE + 240_000)
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["data"]["resultType"], "matrix");
    let series = v["data"]["result"].as_array().unwrap();
    assert_eq!(series.len(), 1);
    let values: Vec<(f64, String)> = series[0]["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_f64().unwrap(), p[1].as_str().unwrap().to_owned()))
        .collect();
    let want: Vec<(f64, String)> = (0..5)
        .map(|k| ((BASE + k * 60_000) as f64 / 1000.0, (k * 40).to_string()))
        .collect();
    assert_eq!(values, want);

    // RFC 3339 times and duration steps are accepted too; POST form like Grafana sends.
    let r = strata.post_form(
        "/api/v1/query_range",
        &format!(
            "query={}&start=2023-11-14T22:13:20Z&end=2023-11-14T22:17:20Z&step=2m",
            enc("sum(http_requests_total)")
        ),
    );
    assert_eq!(r.status, 200, "{}", r.body);
    let pts = r.json()["data"]["result"][0]["values"].clone();
    assert_eq!(pts.as_array().unwrap().len(), 3);
    assert_eq!(pts[2][1], "480");
}

#[test]
fn metadata_endpoints() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    load(&strata);

    let r = strata.get(&format!(
        "/api/v1/series?match[]={}",
        enc("http_requests_total")
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    let series: Vec<String> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(common::labels_key)
        .collect();
    assert_eq!(
        series,
        vec![
            "__name__=http_requests_total,instance=a,job=api",
            "__name__=http_requests_total,instance=b,job=api"
        ]
    );

    let r = strata.post_form(
        "/api/v1/series",
        &format!(
            "match[]={}&match[]={}",
            enc("room_temp"),
            enc("{instance=\"b\"}")
        ),
    );
    assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);

    let r = strata.get("/api/v1/labels");
    assert_eq!(
        r.json()["data"],
        serde_json::json!(["__name__", "instance", "job", "room"])
    );
    let r = strata.get(&format!("/api/v1/labels?match[]={}", enc("room_temp")));
    assert_eq!(r.json()["data"], serde_json::json!(["__name__", "room"]));

    let r = strata.get("/api/v1/label/__name__/values");
    assert_eq!(
        r.json()["data"],
        serde_json::json!(["http_requests_total", "room_temp"])
    );
    let r = strata.get(&format!(
        "/api/v1/label/instance/values?match[]={}",
        enc("{job=\"api\"}")
    ));
    assert_eq!(r.json()["data"], serde_json::json!(["a", "b"]));

    // Time bounds narrow the answer: nothing was written before BASE.
    let r = strata.get(&format!(
        "/api/v1/series?match[]=http_requests_total&start=0&end={}",
        secs(BASE - 1000)
    ));
    assert_eq!(r.json()["data"], serde_json::json!([]));

    let r = strata.get("/api/v1/series");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "no match[] parameter provided");

    let r = strata.get("/api/v1/status/buildinfo");
    let b = r.json();
    assert_eq!(b["status"], "success");
    for field in [
        "version",
        "revision",
        "branch",
        "buildUser",
        "buildDate",
        "goVersion",
    ] {
        assert!(b["data"][field].is_string(), "buildinfo lacks {field}");
    }
    assert!(b["data"].get("features").is_none());

    assert_eq!(strata.get("/-/healthy").status, 200);
    assert_eq!(strata.get("/-/ready").status, 200);
}

#[test]
fn query_errors_use_prometheus_types() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);

    let r = strata.get(&format!("/api/v1/query?query={}", enc("sum(rate(x[5m])")));
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["status"], "error");
    assert_eq!(v["errorType"], "bad_data");
    assert!(!v["error"].as_str().unwrap().is_empty());

    let r = strata.get(&format!("/api/v1/query?query={}", enc("up + fill(0) up")));
    assert_eq!(r.status, 422);
    assert_eq!(r.json()["errorType"], "execution");
    assert_eq!(r.json()["error"], "not supported yet: fill modifiers");

    let r = strata.get("/api/v1/query?query=up&time=yesterday");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "invalid parameter \"time\": cannot parse \"yesterday\" to a valid timestamp"
    );

    let r = strata.get("/api/v1/query_range?query=up&start=10&end=0&step=1");
    assert_eq!(r.status, 400);
    assert_eq!(
        r.json()["error"],
        "end timestamp must not be before start time"
    );

    let r = strata.get("/api/v1/query_range?query=up&start=0&end=100000&step=1");
    assert_eq!(r.status, 400);
    assert!(r.json()["error"]
        .as_str()
        .unwrap()
        .contains("11,000 points"));

    let r = strata.get(&format!(
        "/api/v1/query_range?query={}&start=0&end=10&step=1",
        enc("up[5m]")
    ));
    assert_eq!(r.status, 400);
    assert!(
        r.json()["error"].as_str().unwrap().contains("range vector"),
        "{}",
        r.body
    );

    let r = strata.get("/api/v1/query");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errorType"], "bad_data");

    // Warnings travel in the envelope, as Prometheus sends them.
    let r = strata.get(&format!(
        "/api/v1/query_range?query={}&start=0&end=60&step=30",
        enc("sort(vector(1))")
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.json()["warnings"],
        serde_json::json!([
            "PromQL warning: sort is ineffective for range queries since results are always ordered by labels (1:1)"
        ])
    );
    let r = strata.get(&format!("/api/v1/query?query={}", enc("vector(1)")));
    assert!(r.json().get("warnings").is_none());
}

#[test]
fn host_metrics_are_collected_into_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &["--collect.interval", "1s"]);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let r = strata.get(&format!(
            "/api/v1/query?query={}",
            enc("node_memory_MemTotal_bytes")
        ));
        let v = r.json();
        if let Some(s) = v["data"]["result"].as_array().and_then(|a| a.first()) {
            assert_eq!(s["metric"]["job"], "node");
            assert!(s["metric"]["instance"]
                .as_str()
                .is_some_and(|i| !i.is_empty()));
            let bytes: f64 = s["value"][1].as_str().unwrap().parse().unwrap();
            assert!(bytes > 0.0);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no host metrics after 20 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let names = strata.get("/api/v1/label/__name__/values").json();
    let names: Vec<&str> = names["data"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n.as_str())
        .collect();
    for family in [
        "node_load1",
        "node_cpu_seconds_total",
        "node_network_receive_bytes_total",
        "node_filesystem_size_bytes",
        "container_cpu_usage_seconds_total",
        "container_memory_working_set_bytes",
    ] {
        assert!(names.contains(&family), "{family} not collected: {names:?}");
    }
    // The root cgroup's CPU, under cAdvisor's job, and help and type for the families.
    let q = strata.query(
        "container_cpu_usage_seconds_total{id=\"/\",job=\"cadvisor\",cpu=\"total\"}",
        &format!(
            "{}",
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_secs()
                + 1
        ),
    );
    assert_eq!(q["result"].as_array().map(Vec::len), Some(1), "{q}");
    let meta = strata
        .get("/api/v1/metadata?metric=node_cpu_seconds_total")
        .json();
    assert_eq!(meta["data"]["node_cpu_seconds_total"][0]["type"], "counter");
}

#[test]
fn remote_write_2_0_is_stored_and_counted_in_the_answer() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    let body = common::write_body_v2(
        &[
            common::Ts {
                labels: vec![("__name__", "jobs_total"), ("job", "a")],
                samples: vec![(1_700_000_000_000, 1.0), (1_700_000_015_000, 2.0)],
            },
            common::Ts {
                labels: vec![("__name__", "jobs_total"), ("job", "b")],
                samples: vec![(1_700_000_000_000, 5.0)],
            },
        ],
        Some("Jobs done."),
    );
    let r = common::request(
        strata.addr,
        "POST",
        "/api/v1/write",
        &[
            (
                "Content-Type",
                "application/x-protobuf;proto=io.prometheus.write.v2.Request",
            ),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "2.0.0"),
        ],
        &body,
    )
    .unwrap();
    assert_eq!(r.status, 204, "{}", r.body);
    let headers = r.headers.to_ascii_lowercase();
    assert!(
        headers.contains("x-prometheus-remote-write-samples-written: 3"),
        "{headers}"
    );
    assert!(headers.contains("x-prometheus-remote-write-histograms-written: 0"));
    let v = common::vector_map(&strata.query("jobs_total", "1700000015"));
    assert_eq!(v["__name__=jobs_total,job=a"], "2");
    assert_eq!(v["__name__=jobs_total,job=b"], "5");
    let meta = strata.get("/api/v1/metadata?metric=jobs_total").json();
    assert_eq!(meta["data"]["jobs_total"][0]["type"], "counter");
    assert_eq!(meta["data"]["jobs_total"][0]["help"], "Jobs done.");
}
