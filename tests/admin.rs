//! The TSDB admin API and `/api/v1/status/tsdb`, over real HTTP against the real binary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{enc, vector_map, write_body, Strata, Ts};

const BASE: i64 = 1_700_000_000_000;

fn write_minutes(strata: &Strata, job: &str, minutes: i64) {
    let samples: Vec<(i64, f64)> = (0..minutes * 60)
        .map(|i| (BASE + i * 1000, i as f64))
        .collect();
    let body = write_body(&[Ts {
        labels: vec![("__name__", "seq"), ("job", job)],
        samples,
    }]);
    assert_eq!(strata.write(&body).status, 204);
}

/// count_over_time of `seq{job}` over the ten minutes after BASE.
fn count(strata: &Strata, job: &str) -> u64 {
    let t = format!("{}", (BASE + 599_000) as f64 / 1000.0);
    let v = vector_map(&strata.query(&format!("count_over_time(seq{{job=\"{job}\"}}[600s])"), &t));
    v.get(&format!("job={job}"))
        .map_or(0, |s| s.parse().unwrap())
}

#[test]
fn admin_endpoints_are_off_unless_enabled() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    for path in [
        "/api/v1/admin/tsdb/delete_series",
        "/api/v1/admin/tsdb/clean_tombstones",
        "/api/v1/admin/tsdb/snapshot",
    ] {
        let r = strata.post_form(path, "match[]=up");
        assert_eq!(r.status, 503, "{path}: {}", r.body);
        let v = r.json();
        assert_eq!(v["errorType"], "unavailable");
        assert!(v["error"].as_str().unwrap().contains("--enable-admin-api"));
    }
    assert!(!dir.path().join("snapshots").exists());
}

#[test]
fn delete_series_clean_tombstones_and_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--enable-admin-api", "--storage.block-range", "1m"];
    let strata = Strata::start(dir.path(), &args);
    write_minutes(&strata, "a", 10);
    write_minutes(&strata, "b", 10);
    assert_eq!(count(&strata, "a"), 600);
    assert_eq!(count(&strata, "b"), 600);

    // Bad requests change nothing.
    let r = strata.post_form("/api/v1/admin/tsdb/delete_series", "");
    assert_eq!(r.status, 400, "{}", r.body);
    let r = strata.post_form("/api/v1/admin/tsdb/delete_series", "match[]=seq{");
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(count(&strata, "a"), 600);

    // Delete minutes 2..5 of job a (inclusive bounds, as Prometheus).
    let form = format!(
        "match[]={}&start={}&end={}",
        enc("seq{job=\"a\"}"),
        (BASE + 120_000) / 1000,
        (BASE + 299_000) / 1000
    );
    let r = strata.post_form("/api/v1/admin/tsdb/delete_series", &form);
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(count(&strata, "a"), 420);
    assert_eq!(count(&strata, "b"), 600);

    // The deletion survives kill -9.
    strata.kill9();
    let strata = Strata::start(dir.path(), &args);
    assert_eq!(count(&strata, "a"), 420);

    let r = strata.post_form("/api/v1/admin/tsdb/clean_tombstones", "");
    assert_eq!(r.status, 204, "{}", r.body);
    assert_eq!(count(&strata, "a"), 420);

    let r = strata.post_form("/api/v1/admin/tsdb/snapshot", "");
    assert_eq!(r.status, 200, "{}", r.body);
    let name = r.json()["data"]["name"].as_str().unwrap().to_string();
    let snap = dir.path().join("snapshots").join(&name);
    assert!(snap.join("blocks").is_dir(), "{}", snap.display());
    strata.terminate();

    // The snapshot is a data directory of its own.
    let copy = tempfile::tempdir().unwrap();
    let mut stack = vec![(snap.clone(), copy.path().to_path_buf())];
    while let Some((from, to)) = stack.pop() {
        std::fs::create_dir_all(&to).unwrap();
        for e in std::fs::read_dir(&from).unwrap() {
            let e = e.unwrap();
            if e.file_type().unwrap().is_dir() {
                stack.push((e.path(), to.join(e.file_name())));
            } else {
                std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
            }
        }
    }
    let restored = Strata::start(copy.path(), &[]);
    assert_eq!(count(&restored, "a"), 420);
    assert_eq!(count(&restored, "b"), 600);
}

#[test]
fn tsdb_status_has_prometheus_shape() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    write_minutes(&strata, "a", 1);
    write_minutes(&strata, "b", 1);
    let r = strata.get("/api/v1/status/tsdb?limit=1");
    assert_eq!(r.status, 200, "{}", r.body);
    let d = &r.json()["data"];
    assert_eq!(d["headStats"]["numSeries"], 2);
    assert!(d["headStats"]["chunkCount"].as_u64().unwrap() >= 2);
    assert_eq!(d["headStats"]["minTime"], BASE);
    assert_eq!(d["headStats"]["maxTime"], BASE + 59_000);
    assert_eq!(d["seriesCountByMetricName"][0]["name"], "seq");
    assert_eq!(d["seriesCountByMetricName"][0]["value"], 2);
    assert_eq!(d["seriesCountByMetricName"].as_array().unwrap().len(), 1);
    assert_eq!(d["labelValueCountByLabelName"][0]["name"], "job");
    assert_eq!(d["memoryInBytesByLabelName"][0]["name"], "__name__");
    assert_eq!(d["memoryInBytesByLabelName"][0]["value"], 3);
    assert_eq!(d["seriesCountByLabelValuePair"][0]["value"], 2);
    let r = strata.get("/api/v1/status/tsdb?limit=x");
    assert_eq!(r.status, 400);
}
