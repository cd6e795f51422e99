//! The collection loop: runs the built-in collectors on an interval and appends what they
//! read straight into the store, with no HTTP hop.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use strata_exporters::{node_collectors, Collector, Sample};
use strata_storage::Db;

/// Collects every `interval_ms` until the runtime shuts down.
pub(crate) async fn run(db: Db, interval_ms: i64) {
    let instance = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into());
    let collectors = std::sync::Arc::new(node_collectors("/proc"));
    let mut tick = tokio::time::interval(Duration::from_millis(interval_ms.unsigned_abs()));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!(interval_ms, instance = %instance, "collecting host metrics");
    loop {
        tick.tick().await;
        let (db, collectors, instance) = (db.clone(), collectors.clone(), instance.clone());
        let done = tokio::task::spawn_blocking(move || collect_once(&db, &collectors, &instance));
        if let Err(e) = done.await {
            tracing::error!(error = %e, "collection task failed");
        }
    }
}

fn collect_once(db: &Db, collectors: &[Box<dyn Collector>], instance: &str) {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let mut samples: Vec<Sample> = Vec::new();
    for c in collectors {
        if let Err(e) = c.collect(&mut samples) {
            tracing::warn!(collector = c.name(), error = %e, "collector failed");
        }
    }
    let mut app = db.appender();
    for mut s in samples {
        s.labels.set("job", "node");
        s.labels.set("instance", instance);
        if let Err(e) = app.append(&s.labels, t, s.value) {
            tracing::warn!(series = %s.labels, error = %e, "collected sample refused");
        }
    }
    if let Err(e) = app.commit() {
        tracing::error!(error = %e, "storing collected samples failed");
    }
}
