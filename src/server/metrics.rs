//! `GET /metrics`: strata's own metrics and the host families of its collectors, in the
//! Prometheus text format (0.0.4), so any Prometheus can scrape strata as it scrapes
//! node_exporter.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use strata_exporters::{describe, Sample};
use strata_ingest::metadata::{MetricMetadata, MetricType};
use strata_storage::Labels;

use super::AppState;
use crate::rules::AddMetric;

/// Counters the HTTP layer keeps.
#[derive(Debug, Default)]
pub(crate) struct ServerCounters {
    pub(crate) write_requests: AtomicU64,
    pub(crate) write_failures: AtomicU64,
    pub(crate) write_samples: AtomicU64,
    pub(crate) queries: AtomicU64,
    pub(crate) query_failures: AtomicU64,
    /// Microseconds spent evaluating queries.
    pub(crate) query_micros: AtomicU64,
    /// Writes refused by a limit, by which.
    pub(crate) limited: std::sync::Mutex<BTreeMap<&'static str, u64>>,
    /// Requests refused for want of credentials (`--web.auth-file`).
    pub(crate) unauthorized: AtomicU64,
}

impl ServerCounters {
    pub(crate) fn refused(&self, reason: &'static str) {
        *self
            .limited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(reason)
            .or_default() += 1;
    }
}

/// One family's type and help.
struct Family {
    kind: &'static str,
    help: String,
    /// Sample name (a histogram's `_bucket`, `_sum`, `_count`), labels, value.
    samples: Vec<(String, Labels, f64)>,
}

/// A sample value in the text exposition format.
pub(crate) fn push_value(out: &mut String, v: f64) {
    if v.is_nan() {
        out.push_str("NaN");
    } else if v.is_infinite() {
        out.push_str(if v > 0.0 { "+Inf" } else { "-Inf" });
    } else {
        let _ = write!(out, "{v}");
    }
}

/// `{name="value",…}` without `__name__`, escaped for the text exposition format.
pub(crate) fn push_labels(out: &mut String, labels: &Labels) {
    let mut first = true;
    for l in labels.iter().filter(|l| &*l.name != "__name__") {
        out.push(if first { '{' } else { ',' });
        first = false;
        out.push_str(&l.name);
        out.push_str("=\"");
        for c in l.value.chars() {
            match c {
                '\\' => out.push_str("\\\\"),
                '"' => out.push_str("\\\""),
                '\n' => out.push_str("\\n"),
                c => out.push(c),
            }
        }
        out.push('"');
    }
    if !first {
        out.push('}');
    }
}

/// The process' own figures from procfs.
fn process_metrics(add: &mut impl FnMut(&str, &'static str, &str, f64)) {
    const USER_HZ: f64 = 100.0;
    let page = 4096.0;
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat") {
        // Fields after the command name, which may contain spaces, in parentheses.
        if let Some(rest) = stat.rsplit_once(')').map(|r| r.1) {
            let f: Vec<&str> = rest.split_whitespace().collect();
            let num = |i: usize| f.get(i).and_then(|s| s.parse::<f64>().ok());
            if let (Some(u), Some(s)) = (num(11), num(12)) {
                add(
                    "process_cpu_seconds_total",
                    "counter",
                    "Total user and system CPU time spent in seconds.",
                    (u + s) / USER_HZ,
                );
            }
            if let (Some(start), Ok(up)) = (num(19), std::fs::read_to_string("/proc/stat")) {
                if let Some(btime) = up
                    .lines()
                    .find_map(|l| l.strip_prefix("btime "))
                    .and_then(|b| b.trim().parse::<f64>().ok())
                {
                    add(
                        "process_start_time_seconds",
                        "gauge",
                        "Start time of the process since unix epoch in seconds.",
                        btime + start / USER_HZ,
                    );
                }
            }
            if let Some(v) = num(20) {
                add(
                    "process_virtual_memory_bytes",
                    "gauge",
                    "Virtual memory size in bytes.",
                    v,
                );
            }
            if let Some(r) = num(21) {
                add(
                    "process_resident_memory_bytes",
                    "gauge",
                    "Resident memory size in bytes.",
                    r * page,
                );
            }
        }
    }
    if let Ok(d) = std::fs::read_dir("/proc/self/fd") {
        add(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            d.count() as f64,
        );
    }
    if let Ok(limits) = std::fs::read_to_string("/proc/self/limits") {
        if let Some(v) = limits
            .lines()
            .find(|l| l.starts_with("Max open files"))
            .and_then(|l| l.split_whitespace().nth(3))
            .and_then(|s| s.parse::<f64>().ok())
        {
            add(
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
                v,
            );
        }
    }
}

/// strata's own families (`strata_*`, `process_*`), without the host collectors'.
pub(crate) fn self_metrics(st: &AppState, add_labeled: AddMetric<'_>) {
    let c = &st.counters;
    let db = st.db.stats();
    let plain: Vec<(&str, &'static str, &str, f64)> = vec![
        (
            "strata_remote_write_requests_total",
            "counter",
            "Remote-write requests received.",
            c.write_requests.load(Ordering::Relaxed) as f64,
        ),
        (
            "strata_remote_write_failures_total",
            "counter",
            "Remote-write requests refused or failed.",
            c.write_failures.load(Ordering::Relaxed) as f64,
        ),
        (
            "strata_remote_write_samples_total",
            "counter",
            "Samples stored from remote write.",
            c.write_samples.load(Ordering::Relaxed) as f64,
        ),
        (
            "strata_http_unauthorized_total",
            "counter",
            "Requests refused for want of the credentials their kind needs.",
            c.unauthorized.load(Ordering::Relaxed) as f64,
        ),
        (
            "strata_queries_total",
            "counter",
            "PromQL queries evaluated (instant and range).",
            c.queries.load(Ordering::Relaxed) as f64,
        ),
        (
            "strata_query_failures_total",
            "counter",
            "PromQL queries that failed.",
            c.query_failures.load(Ordering::Relaxed) as f64,
        ),
        (
            "strata_query_seconds_total",
            "counter",
            "Time spent evaluating PromQL queries.",
            c.query_micros.load(Ordering::Relaxed) as f64 / 1e6,
        ),
        (
            "strata_head_series",
            "gauge",
            "Series in the head.",
            db.series as f64,
        ),
        (
            "strata_head_samples",
            "gauge",
            "Samples in the head.",
            db.samples as f64,
        ),
        (
            "strata_head_chunk_bytes",
            "gauge",
            "Bytes of encoded chunks in the head.",
            db.chunk_bytes as f64,
        ),
        (
            "strata_head_chunk_file_bytes",
            "gauge",
            "Bytes of full head chunks written to chunks_head/.",
            db.head_chunk_file_bytes as f64,
        ),
        (
            "strata_head_samples_appended_total",
            "counter",
            "Samples appended to the head.",
            db.samples_appended as f64,
        ),
        (
            "strata_wal_bytes",
            "gauge",
            "Bytes of WAL segments on disk.",
            db.wal_bytes as f64,
        ),
        (
            "strata_blocks",
            "gauge",
            "Persisted blocks.",
            db.blocks as f64,
        ),
        (
            "strata_block_bytes",
            "gauge",
            "Bytes of persisted blocks.",
            db.block_bytes as f64,
        ),
        (
            "strata_block_samples",
            "gauge",
            "Samples in persisted blocks.",
            db.block_samples as f64,
        ),
        (
            "strata_metadata_dropped_total",
            "counter",
            "Metric metadata entries dropped because the store was full.",
            st.metadata.dropped() as f64,
        ),
    ];
    for (name, kind, help, v) in plain {
        add_labeled(name, kind, help, Labels::default(), v);
    }
    add_labeled(
        "strata_build_info",
        "gauge",
        "A metric with a constant '1' value labeled by version.",
        Labels::from_pairs([("version", env!("CARGO_PKG_VERSION"))]),
        1.0,
    );
    process_metrics(&mut |name, kind, help, v| add_labeled(name, kind, help, Labels::default(), v));
    for reason in [
        "series",
        "series_per_metric",
        "labels",
        "label_name_length",
        "label_value_length",
        "samples",
    ] {
        let n = c
            .limited
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(reason)
            .copied()
            .unwrap_or(0);
        add_labeled(
            "strata_remote_write_limited_total",
            "counter",
            "Remote-write requests refused by a limit, by limit.",
            Labels::from_pairs([("limit", reason)]),
            n as f64,
        );
    }
    st.rules.metrics(add_labeled);
    st.remote_write.metrics(add_labeled);
    st.scrape.metrics(add_labeled);
}

/// The family a sample belongs to: a histogram's or summary's `_bucket`, `_sum` and
/// `_count` samples belong to the name without the suffix.
fn family_of<'a>(name: &'a str, kind: &str) -> &'a str {
    match kind {
        "histogram" | "summary" => ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .unwrap_or(name),
        _ => name,
    }
}

/// strata's own samples with their families' metadata, for the collection loop to store
/// (job `strata`).
pub(crate) fn self_samples(st: &AppState) -> (Vec<Sample>, Vec<MetricMetadata>) {
    let mut samples = Vec::new();
    let mut meta: Vec<MetricMetadata> = Vec::new();
    self_metrics(st, &mut |name, kind, help, mut labels, v| {
        let family = family_of(name, kind);
        if meta.last().is_none_or(|m| m.family != family) {
            meta.push(MetricMetadata {
                family: family.to_string(),
                kind: MetricType::parse(kind),
                help: help.to_string(),
                unit: String::new(),
            });
        }
        labels.set("__name__", name);
        samples.push(Sample { labels, value: v });
    });
    meta.dedup_by(|a, b| a.family == b.family);
    (samples, meta)
}

/// The whole exposition.
pub(crate) fn render(st: &AppState) -> String {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    let mut add_labeled = |name: &str, kind: &'static str, help: &str, labels: Labels, v: f64| {
        let family = family_of(name, kind);
        families
            .entry(family.to_string())
            .or_insert_with(|| Family {
                kind,
                help: help.to_string(),
                samples: Vec::new(),
            })
            .samples
            .push((name.to_string(), labels, v));
    };
    self_metrics(st, &mut add_labeled);

    let mut host: Vec<Sample> = Vec::new();
    let mut failed = 0.0;
    for c in strata_exporters::host_collectors_at(&st.host_paths)
        .into_iter()
        .filter(|c| !st.disabled_collectors.iter().any(|d| d == c.name()))
    {
        let started = std::time::Instant::now();
        let ok = if c.collect(&mut host).is_err() {
            failed += 1.0;
            0.0
        } else {
            1.0
        };
        host.extend(crate::collect::collector_samples(
            c.name(),
            started.elapsed().as_secs_f64(),
            ok,
        ));
    }
    add_labeled(
        "strata_collector_failures",
        "gauge",
        "Host collectors that failed in this scrape.",
        Labels::default(),
        failed,
    );
    for s in host {
        let Some(name) = s.labels.metric_name().map(str::to_string) else {
            continue;
        };
        let (kind, help) = describe(&name);
        add_labeled(&name, kind, &help, s.labels, s.value);
    }

    let mut out = String::with_capacity(64 * 1024);
    for (name, f) in &families {
        out.push_str("# HELP ");
        out.push_str(name);
        out.push(' ');
        out.push_str(&f.help.replace('\\', "\\\\").replace('\n', "\\n"));
        out.push_str("\n# TYPE ");
        out.push_str(name);
        out.push(' ');
        out.push_str(f.kind);
        out.push('\n');
        for (sample, labels, v) in &f.samples {
            out.push_str(sample);
            push_labels(&mut out, labels);
            out.push(' ');
            push_value(&mut out, *v);
            out.push('\n');
        }
    }
    out
}

pub(crate) async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    match tokio::task::spawn_blocking(move || render(&st)).await {
        Ok(body) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            body,
        )
            .into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("collecting failed: {e}\n"),
        )
            .into_response(),
    }
}
