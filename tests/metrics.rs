//! `GET /metrics`: strata's own metrics and its host families in the text format, read
//! back with the parser, and linted by `promtool check metrics` (Debian's `prometheus`
//! package) no more strictly than node_exporter's own output is.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};

use common::{request, start_node_exporter, write_body, Strata, Ts};
use strata_ingest::text::{parse_line, Dialect, TextLine};

/// The problems `promtool check metrics` reports for `text`.
fn promtool_problems(text: &str) -> BTreeSet<String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed (apt-get install prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !all.contains("error while linting"),
        "promtool could not read the exposition: {all}"
    );
    all.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| match parse_line(l, Dialect::Prometheus) {
            Ok(TextLine::Sample(s)) if s.name == name => Some(s.value),
            _ => None,
        })
}

#[test]
fn metrics_parse_count_requests_and_pass_promtool_like_node_exporter() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    let body = write_body(&[Ts {
        labels: vec![("__name__", "m")],
        samples: vec![(1_700_000_000_000, 1.0)],
    }]);
    assert_eq!(strata.write(&body).status, 204);
    strata.query("m", "1700000000");

    let r = strata.get("/metrics");
    assert_eq!(r.status, 200);
    assert!(r
        .headers
        .to_ascii_lowercase()
        .contains("text/plain; version=0.0.4"));
    for line in r.body.lines() {
        parse_line(line, Dialect::Prometheus).unwrap_or_else(|e| panic!("{line}: {e}"));
    }
    assert_eq!(
        value(&r.body, "strata_remote_write_requests_total"),
        Some(1.0)
    );
    assert_eq!(
        value(&r.body, "strata_remote_write_samples_total"),
        Some(1.0)
    );
    assert!(value(&r.body, "strata_queries_total").unwrap() >= 1.0);
    assert_eq!(value(&r.body, "strata_head_series"), Some(1.0));
    assert!(value(&r.body, "process_resident_memory_bytes").unwrap() > 0.0);
    assert!(value(&r.body, "process_open_fds").unwrap() > 0.0);
    assert!(value(&r.body, "node_cpu_seconds_total").is_some());
    assert!(value(&r.body, "node_memory_MemTotal_bytes").unwrap() > 0.0);

    // promtool: nothing about strata's own families; about the host families, nothing
    // it does not also say about node_exporter's (whose meminfo names are not snake case).
    let ours = promtool_problems(&r.body);
    let (_ne, addr) = start_node_exporter();
    let theirs_text = request(addr.parse().unwrap(), "GET", "/metrics", &[], &[])
        .unwrap()
        .body;
    let theirs = promtool_problems(&theirs_text);
    for p in &ours {
        assert!(
            !p.starts_with("strata_") && !p.starts_with("process_"),
            "promtool on strata's own metrics: {p}"
        );
        assert!(
            theirs.contains(p),
            "promtool says of strata but not of node_exporter: {p}"
        );
    }
}

#[test]
fn collectors_can_be_switched_off() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &["--collector.disable", "cgroup,diskstats"]);
    let r = strata.get("/metrics");
    assert!(!r.body.contains("container_cpu_usage_seconds_total"));
    assert!(!r.body.contains("node_disk_"));
    assert!(r.body.contains("node_cpu_seconds_total"));
    drop(strata);
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--data-dir"])
        .arg(dir.path().join("other"))
        .args(["--collector.disable", "cpu"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no collector is called \"cpu\"") && err.contains("stat"),
        "{err}"
    );
}
