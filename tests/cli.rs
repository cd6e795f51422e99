//! `strata query` and `strata series` against a running strata, as a person at a
//! terminal would use them.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{free_port, write_body, Strata, Ts};

const BASE: i64 = 1_700_000_000_000;

fn strata_cmd(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .output()
        .expect("run strata");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn query_and_series_print_tables() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    let body = write_body(&[
        Ts {
            labels: vec![("__name__", "temp"), ("room", "a")],
            samples: (0..10)
                .map(|i| (BASE + i * 60_000, 20.0 + i as f64))
                .collect(),
        },
        Ts {
            labels: vec![("__name__", "temp"), ("room", "b")],
            samples: (0..10).map(|i| (BASE + i * 60_000, 10.0)).collect(),
        },
    ]);
    assert_eq!(strata.write(&body).status, 204);
    let url = format!("http://{}", strata.addr);
    let at = ((BASE + 540_000) / 1000).to_string();

    let (ok, out, err) = strata_cmd(&["query", "--url", &url, "--time", &at, "temp"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines[0].starts_with("SERIES") && lines[0].contains("VALUE"),
        "{out}"
    );
    assert!(
        out.contains("temp{room=\"a\"}") && out.contains("29"),
        "{out}"
    );
    assert!(out.contains("2023-11-14T22:22:20.000Z"), "{out}");

    let (ok, out, _) = strata_cmd(&["query", "--url", &url, "--time", &at, "--json", "sum(temp)"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["result"][0]["value"][1], "39");

    let start = (BASE / 1000).to_string();
    let (ok, out, err) = strata_cmd(&[
        "query",
        "--url",
        &url,
        "--start",
        &start,
        "--end",
        &at,
        "--step",
        "3m",
        "temp{room=\"a\"}",
    ]);
    assert!(ok, "{err}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("  20")).count(),
        4,
        "{out}"
    );

    let (ok, out, _) = strata_cmd(&["series", "--url", &url, "temp"]);
    assert!(ok);
    assert_eq!(out.lines().count(), 2, "{out}");

    // Errors say what went wrong and exit non-zero.
    let (ok, _, err) = strata_cmd(&["query", "--url", &url, "sum(temp"]);
    assert!(!ok);
    assert!(err.contains("bad_data"), "{err}");
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let (ok, _, err) = strata_cmd(&["query", "--url", &nobody, "up"]);
    assert!(!ok);
    assert!(err.contains("is `strata serve` running"), "{err}");
    let (ok, _, err) = strata_cmd(&["query", "--url", "https://x", "up"]);
    assert!(!ok && err.contains("http://host:port"), "{err}");
}
