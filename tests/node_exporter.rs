//! strata's host collectors against a real node_exporter (Debian's
//! `prometheus-node-exporter`, started here on 127.0.0.1) reading the same machine: the
//! same families with the same label sets, and values that agree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, BTreeSet};

use common::{request, start_node_exporter};
use strata_ingest::text::{parse_line, Dialect, TextLine};

/// family -> labels (without __name__, sorted "k=v,...") -> value
type Families = BTreeMap<String, BTreeMap<String, f64>>;

fn key<'a>(pairs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut v: Vec<String> = pairs
        .filter(|(k, _)| *k != "__name__")
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    v.sort();
    v.join(",")
}

fn node_exporter() -> Families {
    let (_ne, addr) = start_node_exporter();
    let body = request(addr.parse().unwrap(), "GET", "/metrics", &[], &[])
        .unwrap()
        .body;
    let mut out = Families::new();
    for line in body.lines() {
        if let Ok(TextLine::Sample(s)) = parse_line(line, Dialect::Prometheus) {
            let k = key(s.labels.iter().map(|(n, v)| (*n, v.as_ref())));
            out.entry(s.name.to_string())
                .or_default()
                .insert(k, s.value);
        }
    }
    out
}

fn strata() -> Families {
    let mut samples = Vec::new();
    for c in strata_exporters::node_collectors("/proc") {
        c.collect(&mut samples)
            .unwrap_or_else(|e| panic!("{}: {e}", c.name()));
    }
    let mut out = Families::new();
    for s in samples {
        let name = s.labels.metric_name().unwrap().to_string();
        let k = key(s.labels.iter().map(|l| (&*l.name, &*l.value)));
        out.entry(name).or_default().insert(k, s.value);
    }
    out
}

#[test]
fn host_families_match_node_exporter() {
    let theirs = node_exporter();
    let ours = strata();
    // Families whose label sets must be identical.
    for family in [
        "node_cpu_seconds_total",
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
        "node_network_receive_packets_total",
        "node_network_receive_drop_total",
        "node_disk_read_bytes_total",
        "node_disk_written_bytes_total",
        "node_disk_io_time_seconds_total",
        "node_uname_info",
        "node_boot_time_seconds",
        "node_context_switches_total",
        "node_procs_running",
        "node_load1",
        "node_memory_MemTotal_bytes",
        "node_memory_MemAvailable_bytes",
        "node_time_seconds",
        "node_filesystem_size_bytes",
        "node_filesystem_avail_bytes",
        "node_filesystem_files",
        "node_filesystem_readonly",
    ] {
        let (a, b) = (ours.get(family), theirs.get(family));
        let (Some(a), Some(b)) = (a, b) else {
            panic!(
                "{family}: strata {:?}, node_exporter {:?}",
                a.is_some(),
                b.is_some()
            );
        };
        let (ka, kb): (BTreeSet<&String>, BTreeSet<&String>) =
            (a.keys().collect(), b.keys().collect());
        if family.starts_with("node_network_") {
            // node_exporter 1.5 reads network statistics over netlink, which in some
            // sandboxes leaves devices (the loopback) out; strata reads /proc/net/dev.
            assert!(
                ka.is_superset(&kb),
                "{family}: strata {ka:?}, node_exporter {kb:?}"
            );
        } else {
            assert_eq!(ka, kb, "{family}: label sets");
        }
    }
    // Pressure families: present in both or in neither.
    for family in [
        "node_pressure_cpu_waiting_seconds_total",
        "node_pressure_io_waiting_seconds_total",
        "node_pressure_io_stalled_seconds_total",
        "node_pressure_memory_waiting_seconds_total",
        "node_pressure_memory_stalled_seconds_total",
    ] {
        assert_eq!(
            ours.contains_key(family),
            theirs.contains_key(family),
            "{family}"
        );
    }
    // Values: constants equal; counters read a moment apart agree closely.
    let close = |family: &str, slack: f64| {
        for (k, theirs_v) in &theirs[family] {
            let ours_v = ours[family][k];
            assert!(
                (ours_v - theirs_v).abs() <= slack.max(theirs_v.abs() * 0.02),
                "{family}{{{k}}}: strata {ours_v}, node_exporter {theirs_v}"
            );
        }
    };
    close("node_boot_time_seconds", 1.0);
    close("node_memory_MemTotal_bytes", 0.0);
    close("node_uname_info", 0.0);
    close("node_time_seconds", 30.0);
    close("node_cpu_seconds_total", 30.0);
    close("node_disk_read_bytes_total", 64.0 * 1024.0 * 1024.0);
    close("node_filesystem_size_bytes", 0.0);
    close("node_filesystem_readonly", 0.0);
}
