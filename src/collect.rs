//! The collection loop: runs the built-in collectors on an interval and appends what they
//! read straight into the store, with no HTTP hop. A series that a collection no longer
//! reports (a network device removed, a filesystem unmounted) gets a stale marker, as
//! Prometheus writes one for a series that disappears from a scrape. The families'
//! HELP and TYPE go to the metadata store for `/api/v1/metadata`.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_exporters::{describe, Collector, Sample};
use strata_ingest::metadata::{MetadataStore, MetricMetadata, MetricType};
use strata_storage::{stale_nan, Db, Labels};

/// Collects every `interval_ms` until the runtime shuts down.
pub(crate) async fn run(
    db: Db,
    metadata: Arc<MetadataStore>,
    interval_ms: i64,
    paths: strata_exporters::HostPaths,
    disabled: Vec<String>,
    state: Option<Arc<crate::server::AppState>>,
) {
    let instance = std::fs::read_to_string(paths.proc.join("sys/kernel/hostname"))
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let mut collectors = strata_exporters::host_collectors_at(&paths);
    collectors.retain(|c| !disabled.iter().any(|d| d == c.name()));
    let collectors = Arc::new(collectors);
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.unsigned_abs()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(interval_ms, instance = %instance, "collecting host metrics");
    let mut previous: Arc<HashSet<Labels>> = Arc::default();
    loop {
        tick.tick().await;
        let (db, collectors, instance, metadata) = (
            db.clone(),
            collectors.clone(),
            instance.clone(),
            metadata.clone(),
        );
        let prev = Arc::clone(&previous);
        let state = state.clone();
        let done = tokio::task::spawn_blocking(move || {
            // strata's own figures, stored under job "strata" like any collector's.
            let own = state
                .map(|st| crate::server::metrics::self_samples(&st))
                .unwrap_or_default();
            collect_once(&db, &collectors, &instance, &metadata, &prev, own)
        });
        match done.await {
            Ok(seen) => previous = Arc::new(seen),
            Err(e) => tracing::error!(error = %e, "collection task failed"),
        }
    }
}

/// One collection; returns the series it appended.
pub(crate) fn collect_once(
    db: &Db,
    collectors: &[Box<dyn Collector>],
    instance: &str,
    metadata: &MetadataStore,
    previous: &HashSet<Labels>,
    own: (Vec<Sample>, Vec<MetricMetadata>),
) -> HashSet<Labels> {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut samples: Vec<Sample> = Vec::new();
    let mut jobs: Vec<(usize, &'static str)> = Vec::new();
    for c in collectors {
        let from = samples.len();
        let started = std::time::Instant::now();
        let ok = match c.collect(&mut samples) {
            Ok(()) => 1.0,
            Err(e) => {
                tracing::warn!(collector = c.name(), error = %e, "collector failed");
                0.0
            }
        };
        samples.extend(collector_samples(
            c.name(),
            started.elapsed().as_secs_f64(),
            ok,
        ));
        jobs.push((from, c.job()));
    }
    let (own_samples, own_meta) = own;
    let own_from = samples.len();
    jobs.push((own_from, "strata"));
    samples.extend(own_samples);
    let mut seen: HashSet<Labels> = HashSet::with_capacity(samples.len());
    let mut families: Vec<MetricMetadata> = Vec::new();
    let mut app = db.appender();
    for (i, mut s) in samples.into_iter().enumerate() {
        let job = jobs
            .iter()
            .rev()
            .find(|(from, _)| *from <= i)
            .map_or("node", |j| j.1);
        s.labels.set("job", job);
        s.labels.set("instance", instance);
        if let Some(name) = s.labels.metric_name().filter(|_| i < own_from) {
            if families.last().is_none_or(|f| f.family != name) {
                let (kind, help) = describe(name);
                families.push(MetricMetadata {
                    family: name.to_string(),
                    kind: if kind == "counter" {
                        MetricType::Counter
                    } else {
                        MetricType::Gauge
                    },
                    help,
                    unit: String::new(),
                });
            }
        }
        if let Err(e) = app.append(&s.labels, t, s.value) {
            tracing::warn!(series = %s.labels, error = %e, "collected sample refused");
        }
        seen.insert(s.labels);
    }
    for gone in previous.difference(&seen) {
        if let Err(e) = app.append(gone, t, stale_nan()) {
            tracing::warn!(series = %gone, error = %e, "stale marker refused");
        }
    }
    // Metadata first: whoever sees the samples finds their HELP and TYPE too.
    families.dedup_by(|a, b| a.family == b.family);
    metadata.record(&families);
    metadata.record(&own_meta);
    if let Err(e) = app.commit() {
        tracing::error!(error = %e, "storing collected samples failed");
    }
    seen
}

/// node_exporter's own figures for one collector: `node_scrape_collector_duration_seconds`
/// and `node_scrape_collector_success`.
pub(crate) fn collector_samples(name: &str, seconds: f64, ok: f64) -> [Sample; 2] {
    [
        Sample {
            labels: Labels::from_pairs([
                ("__name__", "node_scrape_collector_duration_seconds"),
                ("collector", name),
            ]),
            value: seconds,
        },
        Sample {
            labels: Labels::from_pairs([
                ("__name__", "node_scrape_collector_success"),
                ("collector", name),
            ]),
            value: ok,
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use strata_exporters::ExporterError;
    use strata_storage::{is_stale_nan, Matcher, Options};

    /// Reports the devices in the shared list, one sample each.
    struct Devices(Arc<Mutex<Vec<&'static str>>>);

    impl Collector for Devices {
        fn name(&self) -> &'static str {
            "devices"
        }
        fn collect(&self, out: &mut Vec<Sample>) -> Result<(), ExporterError> {
            for d in self.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
                out.push(Sample {
                    labels: Labels::from_pairs([
                        ("__name__", "node_network_receive_bytes_total"),
                        ("device", d),
                    ]),
                    value: 1.0,
                });
            }
            Ok(())
        }
    }

    #[test]
    fn a_vanished_series_gets_a_stale_marker_and_families_get_metadata() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let db = Db::open(dir.path(), Options::default()).unwrap_or_else(|e| panic!("{e}"));
        let meta = MetadataStore::default();
        let list = Arc::new(Mutex::new(vec!["eth0", "eth1"]));
        let collectors: Vec<Box<dyn Collector>> = vec![Box::new(Devices(Arc::clone(&list)))];
        let first = collect_once(
            &db,
            &collectors,
            "box",
            &meta,
            &HashSet::new(),
            Default::default(),
        );
        // Two devices, and the collector's own duration and success.
        assert_eq!(first.len(), 4);
        let own = db
            .querier(i64::MIN, i64::MAX)
            .select(&[Matcher::equal("__name__", "node_scrape_collector_success")])
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(own[0].labels.get("collector"), Some("devices"));
        assert_eq!(own[0].samples().next().map(|s| s.1), Some(1.0));
        std::thread::sleep(Duration::from_millis(5));
        // eth1 goes away.
        list.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|d| *d == "eth0");
        let second = collect_once(&db, &collectors, "box", &meta, &first, Default::default());
        assert_eq!(second.len(), 3);
        let q = db.querier(i64::MIN, i64::MAX);
        let eth1 = q
            .select(&[Matcher::equal("device", "eth1")])
            .unwrap_or_else(|e| panic!("{e}"));
        let samples: Vec<(i64, f64)> = eth1[0].samples().collect();
        assert_eq!(samples.len(), 2);
        assert!(is_stale_nan(samples[1].1));
        let m = meta.list(Some("node_network_receive_bytes_total"), 0, 0);
        assert_eq!(m[0].kind, MetricType::Counter);
        assert!(!m[0].help.is_empty());
    }
}
