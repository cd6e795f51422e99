//! `strata import`: the real binary backfills text files into blocks that `strata serve`
//! then answers from.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fmt::Write as _;
use std::process::Command;

use common::{vector_map, Strata};

const BASE_S: i64 = 1_700_000_000;

fn import(dir: &std::path::Path, file: &std::path::Path, extra: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_strata"))
        .arg("import")
        .arg("--data-dir")
        .arg(dir)
        .args(extra)
        .arg(file)
        .output()
        .expect("run strata import")
}

/// Three hours at 15 s of two counters and a gauge, OpenMetrics (seconds).
fn openmetrics() -> String {
    let mut s = String::from("# HELP jobs_total Jobs done.\n# TYPE jobs_total counter\n");
    for k in 0..720 {
        let t = BASE_S + k * 15;
        for w in ["a", "b"] {
            writeln!(s, "jobs_total{{worker=\"{w}\"}} {k} {t}").unwrap();
        }
    }
    s.push_str("# TYPE temp gauge\n");
    for k in 0..720 {
        writeln!(s, "temp {}.5 {}.250", k % 7, BASE_S + k * 15).unwrap();
    }
    s.push_str("# EOF\n");
    s
}

fn count(strata: &Strata, sel: &str, key: &str) -> u64 {
    let t = (BASE_S + 719 * 15 + 1).to_string();
    let v = vector_map(&strata.query(&format!("count_over_time({sel}[3h])"), &t));
    v.get(key).map_or(0, |s| s.parse().unwrap())
}

#[test]
fn imports_openmetrics_and_prometheus_text() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let om = dir.path().join("backfill.om");
    std::fs::write(&om, openmetrics()).unwrap();
    let out = import(&data, &om, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains("imported 2160 samples of 3 series"), "{said}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("importing"));

    // Prometheus text (milliseconds): rewrites one sample and adds a series.
    let prom = dir.path().join("more.prom");
    std::fs::write(
        &prom,
        format!(
            "jobs_total{{worker=\"a\"}} 1000 {}\nnew_metric 1 {}\n",
            BASE_S * 1000,
            BASE_S * 1000
        ),
    )
    .unwrap();
    let out = import(&data, &prom, &[]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let strata = Strata::start(&data, &[]);
    assert_eq!(count(&strata, "jobs_total", "worker=a"), 720);
    assert_eq!(count(&strata, "jobs_total", "worker=b"), 720);
    assert_eq!(count(&strata, "temp", ""), 720);
    let v = vector_map(&strata.query("jobs_total{worker=\"a\"}", &BASE_S.to_string()));
    assert_eq!(
        v["__name__=jobs_total,worker=a"], "1000",
        "the later import wins"
    );
    let v = vector_map(&strata.query("temp", &(BASE_S + 31).to_string()));
    assert_eq!(v["__name__=temp"], "2.5");

    // While strata serves the directory, import refuses with the reason.
    let out = import(&data, &prom, &[]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("in use"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_bad_line_is_reported_and_nothing_is_imported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for (name, body, want) in [
        ("bad.prom", "ok 1 1000\nbroken{ 1 2000\n", "line 2"),
        ("nots.prom", "ok 1 1000\nok 2\n", "no timestamp"),
        ("after.om", "ok 1 1\n# EOF\nok 2 2\n# EOF\n", "after # EOF"),
    ] {
        let file = dir.path().join(name);
        std::fs::write(&file, body).unwrap();
        let out = import(&data, &file, &[]);
        assert!(!out.status.success(), "{name}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{name}: {err}");
    }
    let blocks = std::fs::read_dir(data.join("blocks"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(blocks, 0, "nothing was written");
}
