//! Write limits over real HTTP: the series limit refuses new series (429, or 400 as
//! configured) while existing series keep ingesting; labels per series, label name and
//! value lengths and samples per request are refused with 400 and the reason; every
//! refusal is counted on /metrics and changes nothing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{write_body, Strata, Ts};

fn one(labels: Vec<(&str, &str)>, t: i64) -> Vec<u8> {
    write_body(&[Ts {
        labels,
        samples: vec![(t, 1.0)],
    }])
}

#[test]
fn limits_refuse_with_reasons_and_existing_series_keep_ingesting() {
    let dir = tempfile::tempdir().unwrap();
    let args = [
        "--storage.max-series",
        "3",
        "--write.max-labels-per-series",
        "4",
        "--write.max-label-value-length",
        "20",
        "--write.max-label-name-length",
        "10",
        "--write.max-samples-per-request",
        "5",
    ];
    let s = Strata::start(dir.path(), &args);
    for i in ["a", "b", "c"] {
        assert_eq!(
            s.write(&one(vec![("__name__", "m"), ("i", i)], 1000))
                .status,
            204
        );
    }
    let r = s.write(&one(vec![("__name__", "m"), ("i", "d")], 1000));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.body.contains("limit of 3 series"), "{}", r.body);
    // The existing series still ingest.
    assert_eq!(
        s.write(&one(vec![("__name__", "m"), ("i", "a")], 2000))
            .status,
        204
    );

    let too_many = one(
        vec![
            ("__name__", "m"),
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("i", "a"),
        ],
        3000,
    );
    let r = s.write(&too_many);
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("has 5 labels, over the limit of 4"),
        "{}",
        r.body
    );
    let long = "x".repeat(21);
    let r = s.write(&one(vec![("__name__", "m"), ("i", &long)], 3000));
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("21 bytes, over the limit of 20"),
        "{}",
        r.body
    );
    let r = s.write(&one(vec![("__name__", "m"), ("a_long_name", "1")], 3000));
    assert_eq!(r.status, 400);
    assert!(r.body.contains("label name of 11 bytes"), "{}", r.body);
    let r = s.write(&write_body(&[Ts {
        labels: vec![("__name__", "m"), ("i", "a")],
        samples: (0..6).map(|k| (4000 + k, 1.0)).collect(),
    }]));
    assert_eq!(r.status, 400);
    assert!(
        r.body.contains("6 samples, over the limit of 5"),
        "{}",
        r.body
    );

    // Nothing of the refused requests was stored.
    let v = s.query("count(m)", "5");
    assert_eq!(v["result"][0]["value"][1], "3");
    let m = s.get("/metrics").body;
    for (limit, n) in [
        ("series", 1),
        ("labels", 1),
        ("label_value_length", 1),
        ("label_name_length", 1),
        ("samples", 1),
    ] {
        let line = format!("strata_remote_write_limited_total{{limit=\"{limit}\"}} {n}");
        assert!(m.contains(&line), "{line} missing");
    }
    drop(s);

    // Configured to answer 400, so that senders drop rather than retry.
    let s = Strata::start(
        dir.path(),
        &[&args[..], &["--storage.series-limit-status", "400"]].concat(),
    );
    let r = s.write(&one(vec![("__name__", "m"), ("i", "e")], 5000));
    assert_eq!(r.status, 400, "{}", r.body);
}

#[test]
fn the_per_metric_limit_refuses_new_series_of_that_metric_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = Strata::start(dir.path(), &["--storage.max-series-per-metric", "2"]);
    for i in ["a", "b"] {
        assert_eq!(
            s.write(&one(vec![("__name__", "m"), ("i", i)], 1000))
                .status,
            204
        );
    }
    let r = s.write(&one(vec![("__name__", "m"), ("i", "c")], 1000));
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(
        r.body.contains(r#"metric "m" has its limit of 2 series"#),
        "{}",
        r.body
    );
    // Another metric, and the existing series, still ingest.
    assert_eq!(
        s.write(&one(vec![("__name__", "n"), ("i", "c")], 1000))
            .status,
        204
    );
    assert_eq!(
        s.write(&one(vec![("__name__", "m"), ("i", "a")], 2000))
            .status,
        204
    );
    assert_eq!(s.query("count(m)", "5")["result"][0]["value"][1], "2");
    assert!(s
        .get("/metrics")
        .body
        .contains(r#"strata_remote_write_limited_total{limit="series_per_metric"} 1"#));
}
