//! Scraping `/metrics` endpoints, as Prometheus does for its `scrape_configs`.
//!
//! ```text
//!  static_configs + file_sd files (re-read when they change)
//!     ─> target labels (__address__, job, __scheme__, __metrics_path__, __param_*)
//!     ─> relabel_configs ─> active or dropped target
//!  one thread per active target, every scrape_interval (phase from the target's hash):
//!     GET (Accept: OpenMetrics, then text 0.0.4) ─> parse all ─> honor_labels
//!     ─> metric_relabel_configs ─> sample_limit ─> one commit ─> stale markers
//!     + up, scrape_duration_seconds, scrape_samples_scraped,
//!       scrape_samples_post_metric_relabeling, scrape_series_added
//! ```
//!
//! A scrape that fails in any way (connection, status, parse, limit) appends nothing but
//! `up 0` and the report series, and marks the previous scrape's series stale.

pub(crate) mod config;
pub(crate) mod relabel;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use serde_json::{json, Value as Json};
use strata_ingest::metadata::{MetadataStore, MetricMetadata, MetricType};
use strata_ingest::text::{parse_line, Dialect, TextLine};
use strata_storage::{Db, Labels, SeriesRef, STALE_NAN_BITS};

use crate::http;
use crate::rules::{labels_json, lock, now_ms, rfc3339_ms, sleep_until, AddMetric};
use config::{ScrapeConfig, TargetGroup};
use relabel::LabelMap;

/// What Prometheus 2.42 asks targets for.
const ACCEPT: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// Largest exposition body read.
const MAX_BODY: usize = 64 << 20;

/// Health and last results of a target, for `/api/v1/targets`.
#[derive(Debug, Clone)]
struct TargetState {
    health: &'static str,
    last_error: String,
    last_scrape_ms: Option<i64>,
    last_duration: f64,
    metadata: Vec<MetricMetadata>,
}

/// A target to scrape.
pub(crate) struct Target {
    job: String,
    discovered: LabelMap,
    labels: Labels,
    url: String,
    interval_ms: i64,
    timeout_ms: i64,
    cfg: Arc<ScrapeConfig>,
    state: Mutex<TargetState>,
}

/// A file_sd file as last read: its modification time, when it was read, its groups.
type SdFile = (Option<SystemTime>, Instant, Vec<TargetGroup>);

struct Loop {
    target: Arc<Target>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

#[derive(Default)]
struct Inner {
    configs: Vec<Arc<ScrapeConfig>>,
    base: PathBuf,
    loops: BTreeMap<String, Loop>,
    dropped: Vec<(String, LabelMap)>,
    /// file_sd errors, by file.
    sd_errors: BTreeMap<String, String>,
}

/// Runs every target's scrape loop and keeps the target lists current.
pub(crate) struct ScrapeManager {
    db: Db,
    metadata: Arc<MetadataStore>,
    inner: Mutex<Inner>,
    /// file_sd contents by path: modification time and what was read.
    files: Mutex<HashMap<PathBuf, SdFile>>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    discovery: Mutex<Option<JoinHandle<()>>>,
    scrapes: AtomicU64,
    failures: AtomicU64,
    micros: AtomicU64,
}

impl ScrapeManager {
    pub(crate) fn new(db: Db, metadata: Arc<MetadataStore>) -> Arc<ScrapeManager> {
        Arc::new(ScrapeManager {
            db,
            metadata,
            inner: Mutex::new(Inner::default()),
            files: Mutex::new(HashMap::new()),
            stop: Arc::new((Mutex::new(false), Condvar::new())),
            discovery: Mutex::new(None),
            scrapes: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            micros: AtomicU64::new(0),
        })
    }

    /// Installs new scrape configurations: unchanged targets keep scraping, removed ones
    /// stop (their series marked stale), new ones start.
    pub(crate) fn apply(self: &Arc<Self>, configs: Vec<ScrapeConfig>, base: PathBuf) {
        {
            let mut inner = lock(&self.inner);
            inner.configs = configs.into_iter().map(Arc::new).collect();
            inner.base = base;
        }
        self.sync();
        let mut d = lock(&self.discovery);
        if d.is_none() {
            let me = Arc::clone(self);
            *d = std::thread::Builder::new()
                .name("discovery".into())
                .spawn(move || me.discover())
                .map_err(|e| tracing::error!(error = %e, "cannot start target discovery"))
                .ok();
        }
    }

    /// Stops every scrape loop (at shutdown).
    pub(crate) fn stop(&self) {
        *lock(&self.stop.0) = true;
        self.stop.1.notify_all();
        if let Some(h) = lock(&self.discovery).take() {
            let _ = h.join();
        }
        let loops = std::mem::take(&mut lock(&self.inner).loops);
        for l in loops.values() {
            *lock(&l.stop.0) = true;
            l.stop.1.notify_all();
        }
        for (_, l) in loops {
            let _ = l.handle.join();
        }
    }

    /// Re-reads changed file_sd files every second.
    fn discover(self: Arc<Self>) {
        while !sleep_until(&self.stop, now_ms() + 1000) {
            self.sync();
        }
    }

    /// Target groups of a file_sd file, re-read when its modification time changes or
    /// its refresh interval has passed. A file that cannot be read or parsed keeps its
    /// last good content, as in Prometheus.
    fn file_groups(
        &self,
        path: &PathBuf,
        refresh_ms: i64,
        errors: &mut BTreeMap<String, String>,
    ) -> Vec<TargetGroup> {
        let mtime = std::fs::metadata(path).and_then(|m| m.modified()).ok();
        let mut files = lock(&self.files);
        if let Some((t, read_at, groups)) = files.get(path) {
            if *t == mtime && read_at.elapsed() < Duration::from_millis(refresh_ms as u64) {
                return groups.clone();
            }
        }
        let shown = path.display().to_string();
        let parsed = std::fs::read_to_string(path)
            .map_err(|e| e.to_string())
            .and_then(|text| {
                let n = crate::yaml::parse(&text).map_err(|e| e.to_string())?;
                if n.is_null() {
                    return Ok(Vec::new());
                }
                n.seq("target groups")
                    .map_err(|e| e.to_string())?
                    .iter()
                    .map(|g| config::target_group(g).map_err(|e| e.to_string()))
                    .collect::<Result<Vec<_>, _>>()
            });
        match parsed {
            Ok(groups) => {
                errors.remove(&shown);
                files.insert(path.clone(), (mtime, Instant::now(), groups.clone()));
                groups
            }
            Err(e) => {
                if errors.get(&shown) != Some(&e) {
                    tracing::warn!(file = %shown, error = %e, "file_sd: cannot read targets");
                }
                errors.insert(shown, e);
                files
                    .get(path)
                    .map(|(_, _, g)| g.clone())
                    .unwrap_or_default()
            }
        }
    }

    /// Computes every target and starts or stops loops to match.
    fn sync(self: &Arc<Self>) {
        let (configs, base) = {
            let inner = lock(&self.inner);
            (inner.configs.clone(), inner.base.clone())
        };
        let mut sd_errors = lock(&self.inner).sd_errors.clone();
        let mut wanted: BTreeMap<String, Arc<Target>> = BTreeMap::new();
        let mut dropped = Vec::new();
        for cfg in &configs {
            let mut groups: Vec<(TargetGroup, Option<String>)> = cfg
                .static_configs
                .iter()
                .map(|g| (g.clone(), None))
                .collect();
            for sd in &cfg.file_sd {
                let files = crate::rules::file::expand_globs(&base, &sd.files).unwrap_or_default();
                for f in files {
                    for g in self.file_groups(&f, sd.refresh_ms, &mut sd_errors) {
                        groups.push((g, Some(f.display().to_string())));
                    }
                }
            }
            for (g, file) in groups {
                for addr in &g.targets {
                    match build_target(cfg, &g, addr, file.as_deref()) {
                        Ok(Some(t)) => {
                            let key = format!(
                                "{}|{}|{}|{}|{}",
                                t.job,
                                t.labels.to_braced_string(),
                                t.url,
                                t.interval_ms,
                                t.timeout_ms
                            );
                            wanted.entry(key).or_insert_with(|| Arc::new(t));
                        }
                        Ok(None) => {}
                        Err(discovered) => dropped.push((cfg.job_name.clone(), discovered)),
                    }
                }
            }
        }
        let mut inner = lock(&self.inner);
        inner.dropped = dropped;
        inner.sd_errors = sd_errors;
        let running: Vec<String> = inner.loops.keys().cloned().collect();
        let mut stopping = Vec::new();
        for key in running {
            let same_cfg = wanted
                .get(&key)
                .zip(inner.loops.get(&key))
                .is_some_and(|(w, l)| Arc::ptr_eq(&w.cfg, &l.target.cfg));
            if !same_cfg {
                if let Some(l) = inner.loops.remove(&key) {
                    *lock(&l.stop.0) = true;
                    l.stop.1.notify_all();
                    stopping.push(l);
                }
            }
        }
        for (key, t) in wanted {
            if inner.loops.contains_key(&key) {
                continue;
            }
            let stop = Arc::new((Mutex::new(false), Condvar::new()));
            let me = Arc::clone(self);
            let (t2, s2) = (Arc::clone(&t), Arc::clone(&stop));
            match std::thread::Builder::new()
                .name("scrape".into())
                .spawn(move || me.run(&t2, &s2))
            {
                Ok(handle) => {
                    inner.loops.insert(
                        key,
                        Loop {
                            target: t,
                            stop,
                            handle,
                        },
                    );
                }
                Err(e) => tracing::error!(error = %e, "cannot start a scrape loop"),
            }
        }
        drop(inner);
        for l in stopping {
            let _ = l.handle.join();
        }
    }

    fn run(&self, t: &Target, stop: &(Mutex<bool>, Condvar)) {
        let interval = t.interval_ms.max(1);
        let offset = (t.labels.stable_hash() % interval as u64) as i64;
        let mut next = {
            let now = now_ms();
            let base = now - now.rem_euclid(interval) + offset;
            if base < now {
                base + interval
            } else {
                base
            }
        };
        let mut cache = ScrapeCache::default();
        loop {
            if sleep_until(stop, next) {
                self.end_of_run(t, &cache);
                return;
            }
            self.scrape_once(t, next, &mut cache);
            next += interval;
            let now = now_ms();
            if next <= now {
                next += ((now - next) / interval + 1) * interval;
            }
        }
    }

    /// Stale markers for everything a stopped target wrote.
    fn end_of_run(&self, t: &Target, cache: &ScrapeCache) {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let ts = now_ms();
        let mut app = self.db.appender();
        for e in &cache.entries {
            if let (Some(l), true) = (&e.labels, e.seen == cache.round) {
                let _ = app.append(l, ts, stale);
            }
        }
        for name in REPORT_SERIES {
            let _ = app.append(&report_labels(t, name), ts, stale);
        }
        if let Err(e) = app.commit() {
            tracing::warn!(error = %e, "cannot write stale markers for a stopped target");
        }
    }

    /// One scrape at `ts`; returns how many series it wrote.
    fn scrape_once(&self, t: &Target, ts: i64, cache: &mut ScrapeCache) -> usize {
        let started = Instant::now();
        let result = fetch(t).and_then(|(body, dialect)| parse_body(t, &body, dialect, ts, cache));
        let duration = started.elapsed().as_secs_f64();
        let stale = f64::from_bits(STALE_NAN_BITS);
        cache.round += 1;
        let round = cache.round;
        let mut app = self.db.appender();
        let mut written = 0;
        let mut added = 0;
        let mut refused = 0;
        let mut first_refusal = String::new();
        let (up, scraped, error, metadata) = match result {
            Ok(parsed) => {
                for &(idx, st, v) in &parsed.samples {
                    let e = &mut cache.entries[idx];
                    if e.seen == round {
                        continue; // the same series twice in one exposition
                    }
                    let Some(labels) = &e.labels else { continue };
                    if e.seen + 1 != round {
                        added += 1;
                    }
                    e.seen = round;
                    let appended = match e.sref {
                        Some(r) => app
                            .append_ref(r, st, v)
                            .or_else(|_| app.append(labels, st, v).map(|r| e.sref = Some(r))),
                        None => app.append(labels, st, v).map(|r| e.sref = Some(r)),
                    };
                    match appended {
                        Ok(()) => written += 1,
                        Err(err) => {
                            // As Prometheus: too old or out of order samples are
                            // counted and skipped; the scrape still succeeds.
                            refused += 1;
                            if first_refusal.is_empty() {
                                first_refusal = err.to_string();
                            }
                        }
                    }
                }
                (1.0, parsed.scraped, String::new(), parsed.metadata)
            }
            Err(e) => (0.0, 0, e, Vec::new()),
        };
        // Series of the previous scrape missing from this one go stale.
        for e in &cache.entries {
            if e.seen + 1 == round {
                if let Some(l) = &e.labels {
                    let _ = app.append(l, ts, stale);
                }
            }
        }
        cache.evict();
        for (name, v) in [
            ("up", up),
            ("scrape_duration_seconds", duration),
            ("scrape_samples_scraped", scraped as f64),
            ("scrape_samples_post_metric_relabeling", written as f64),
            ("scrape_series_added", added as f64),
        ] {
            let _ = app.append(&report_labels(t, name), ts, v);
        }
        // Metadata first: whoever sees the samples finds their HELP and TYPE too.
        if !metadata.is_empty() {
            self.metadata.record(&metadata);
        }
        if let Err(e) = app.commit() {
            tracing::warn!(error = %e, job = %t.job, "cannot store a scrape");
        }
        // The whole scrape: fetch, parse, relabel, append and commit.
        self.scrapes.fetch_add(1, Ordering::Relaxed);
        self.micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if up == 0.0 {
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
        let mut st = lock(&t.state);
        st.health = if up == 1.0 { "up" } else { "down" };
        st.last_error = if refused > 0 && error.is_empty() {
            format!("{refused} samples refused: {first_refusal}")
        } else {
            error
        };
        st.last_scrape_ms = Some(ts);
        st.last_duration = duration;
        if up == 1.0 {
            st.metadata = metadata;
        }
        written
    }

    /// `/api/v1/targets`; `state` is `active`, `dropped` or `any`.
    pub(crate) fn targets_json(&self, state: &str, pool: Option<&str>) -> Json {
        let inner = lock(&self.inner);
        let pool_ok = |job: &str| pool.is_none_or(|p| p == job);
        let mut active = Vec::new();
        if state != "dropped" {
            for l in inner.loops.values() {
                let t = &l.target;
                if !pool_ok(&t.job) {
                    continue;
                }
                let st = lock(&t.state).clone();
                active.push(json!({
                    "discoveredLabels": map_json(&t.discovered),
                    "labels": labels_json(&t.labels),
                    "scrapePool": t.job,
                    "scrapeUrl": t.url,
                    "globalUrl": t.url,
                    "lastError": st.last_error,
                    "lastScrape": st.last_scrape_ms.map(rfc3339_ms).unwrap_or_else(|| "0001-01-01T00:00:00Z".into()),
                    "lastScrapeDuration": st.last_duration,
                    "health": st.health,
                    "scrapeInterval": crate::format_duration(t.interval_ms),
                    "scrapeTimeout": crate::format_duration(t.timeout_ms),
                }));
            }
        }
        let mut dropped = Vec::new();
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for (job, d) in &inner.dropped {
            *counts.entry(job.clone()).or_default() += 1;
            if state != "active" && pool_ok(job) {
                dropped.push(json!({ "discoveredLabels": map_json(d) }));
            }
        }
        for c in &inner.configs {
            counts.entry(c.job_name.clone()).or_default();
        }
        json!({
            "activeTargets": active,
            "droppedTargets": dropped,
            "droppedTargetCounts": counts,
        })
    }

    /// `/api/v1/scrape_pools`.
    pub(crate) fn pools(&self) -> Vec<String> {
        lock(&self.inner)
            .configs
            .iter()
            .map(|c| c.job_name.clone())
            .collect()
    }

    /// `/api/v1/targets/metadata`: per target, the families of its last scrape.
    pub(crate) fn targets_metadata(
        &self,
        matches: &dyn Fn(&Labels) -> bool,
        metric: Option<&str>,
        limit: usize,
    ) -> Json {
        let inner = lock(&self.inner);
        let mut out = Vec::new();
        'targets: for l in inner.loops.values() {
            let t = &l.target;
            if !matches(&t.labels) {
                continue;
            }
            for m in &lock(&t.state).metadata {
                if metric.is_some_and(|n| n != m.family) {
                    continue;
                }
                if limit > 0 && out.len() >= limit {
                    break 'targets;
                }
                out.push(json!({
                    "target": labels_json(&t.labels),
                    "metric": m.family,
                    "type": m.kind.as_str(),
                    "help": m.help,
                    "unit": m.unit,
                }));
            }
        }
        Json::Array(out)
    }

    pub(crate) fn metrics(&self, add: AddMetric<'_>) {
        add(
            "strata_scrapes_total",
            "counter",
            "Scrapes of configured targets.",
            Labels::empty(),
            self.scrapes.load(Ordering::Relaxed) as f64,
        );
        add(
            "strata_scrape_failures_total",
            "counter",
            "Scrapes that failed (up 0).",
            Labels::empty(),
            self.failures.load(Ordering::Relaxed) as f64,
        );
        add(
            "strata_scrape_seconds_total",
            "counter",
            "Time spent on scrapes: fetching, parsing, relabeling, appending and committing.",
            Labels::empty(),
            self.micros.load(Ordering::Relaxed) as f64 / 1e6,
        );
        let inner = lock(&self.inner);
        let mut per_pool: BTreeMap<&str, usize> = BTreeMap::new();
        for c in &inner.configs {
            per_pool.entry(&c.job_name).or_default();
        }
        for l in inner.loops.values() {
            *per_pool.entry(&l.target.job).or_default() += 1;
        }
        for (pool, n) in per_pool {
            add(
                "strata_scrape_pool_targets",
                "gauge",
                "Active targets per scrape pool.",
                Labels::from_pairs([("scrape_job", pool)]),
                n as f64,
            );
        }
    }
}

const REPORT_SERIES: [&str; 5] = [
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
];

fn report_labels(t: &Target, name: &str) -> Labels {
    let mut l = t.labels.clone();
    l.set("__name__", name);
    l
}

fn map_json(m: &LabelMap) -> Json {
    Json::Object(m.iter().map(|(k, v)| (k.clone(), json!(v))).collect())
}

/// Builds a target as Prometheus does: `Ok(None)` for an empty address, `Err(discovered)`
/// when relabeling drops it.
fn build_target(
    cfg: &Arc<ScrapeConfig>,
    g: &TargetGroup,
    addr: &str,
    file: Option<&str>,
) -> Result<Option<Target>, LabelMap> {
    if addr.is_empty() {
        return Ok(None);
    }
    let mut l: LabelMap = g.labels.iter().cloned().collect();
    l.insert("__address__".into(), addr.to_string());
    if let Some(f) = file {
        l.insert("__meta_filepath".into(), f.to_string());
    }
    for (k, v) in [
        ("job", cfg.job_name.clone()),
        (
            "__scrape_interval__",
            crate::format_duration(cfg.interval_ms),
        ),
        ("__scrape_timeout__", crate::format_duration(cfg.timeout_ms)),
        ("__metrics_path__", cfg.metrics_path.clone()),
        ("__scheme__", cfg.scheme.clone()),
    ] {
        l.entry(k.to_string()).or_insert(v);
    }
    for (k, v) in &cfg.params {
        if let Some(first) = v.first() {
            l.insert(format!("__param_{k}"), first.clone());
        }
    }
    let discovered = l.clone();
    if !relabel::process(&cfg.relabel, &mut l) {
        return Err(discovered);
    }
    let Some(mut address) = l.get("__address__").cloned().filter(|a| !a.is_empty()) else {
        return Err(discovered);
    };
    if address.contains('/') {
        return Err(discovered);
    }
    let has_port = address
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok() && !h.ends_with(':'));
    let scheme = l
        .get("__scheme__")
        .cloned()
        .unwrap_or_else(|| "http".into());
    if !has_port {
        let port = if scheme == "https" { 443 } else { 80 };
        address = format!("{address}:{port}");
        l.insert("__address__".into(), address.clone());
    }
    let parse_d = |k: &str, default: i64| {
        l.get(k)
            .and_then(|v| strata_query::duration::parse_duration_ms(v))
            .filter(|d| *d > 0)
            .unwrap_or(default)
    };
    let interval_ms = parse_d("__scrape_interval__", cfg.interval_ms);
    let timeout_ms = parse_d("__scrape_timeout__", cfg.timeout_ms).min(interval_ms);
    let path = l.get("__metrics_path__").cloned().unwrap_or_default();
    let mut query: Vec<(String, String)> = Vec::new();
    for (k, vals) in &cfg.params {
        // The `__param_` label replaces the first value only, as in Prometheus.
        let first = l.get(&format!("__param_{k}"));
        for (i, v) in vals.iter().enumerate() {
            let v = if i == 0 { first.unwrap_or(v) } else { v };
            query.push((k.clone(), v.clone()));
        }
    }
    for (k, v) in &l {
        if let Some(p) = k.strip_prefix("__param_") {
            if !cfg.params.iter().any(|(n, _)| n == p) {
                query.push((p.to_string(), v.clone()));
            }
        }
    }
    let mut url = format!("{scheme}://{address}{path}");
    if !query.is_empty() {
        let q: String = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query.iter())
            .finish();
        url.push('?');
        url.push_str(&q);
    }
    l.entry("instance".into()).or_insert(address);
    let labels = Labels::from_pairs(
        l.iter()
            .filter(|(k, _)| !k.starts_with("__"))
            .map(|(k, v)| (k.as_str(), v.as_str())),
    );
    Ok(Some(Target {
        job: cfg.job_name.clone(),
        discovered,
        labels,
        url,
        interval_ms,
        timeout_ms,
        cfg: Arc::clone(cfg),
        state: Mutex::new(TargetState {
            health: "unknown",
            last_error: String::new(),
            last_scrape_ms: None,
            last_duration: 0.0,
            metadata: Vec::new(),
        }),
    }))
}

/// GETs the target; the body and the dialect its `Content-Type` names.
fn fetch(t: &Target) -> Result<(String, Dialect), String> {
    let url = http::Url::parse(&t.url).map_err(|e| e.to_string())?;
    let timeout_s = format!("{}", t.timeout_ms as f64 / 1000.0);
    let mut headers = vec![
        ("Accept", ACCEPT),
        ("User-Agent", concat!("strata/", env!("CARGO_PKG_VERSION"))),
        ("X-Prometheus-Scrape-Timeout-Seconds", timeout_s.as_str()),
    ];
    if let Some(a) = &t.cfg.auth {
        headers.push(("Authorization", a));
    }
    let r = http::request_tls(
        "GET",
        &url,
        &headers,
        b"",
        Duration::from_millis(t.timeout_ms.max(1) as u64),
        t.cfg.tls.as_ref(),
    )
    .map_err(|e| format!("Get {:?}: {e}", t.url))?;
    if r.status != 200 {
        return Err(format!("server returned HTTP status {}", r.status));
    }
    if r.body.len() > MAX_BODY {
        return Err(format!("body larger than {MAX_BODY} bytes"));
    }
    let dialect = match r.header("content-type") {
        Some(ct) if ct.starts_with("application/openmetrics-text") => Dialect::OpenMetrics,
        _ => Dialect::Prometheus,
    };
    if r.header("content-encoding")
        .is_some_and(|e| !e.eq_ignore_ascii_case("identity"))
    {
        return Err("compressed answers are not supported".into());
    }
    let body = String::from_utf8(r.body).map_err(|_| "the body is not valid UTF-8".to_string())?;
    Ok((body, dialect))
}

/// What a target's loop remembers between scrapes: the labels (after relabeling) and
/// series reference of every series text it has seen, and in which scrape it last saw
/// it, so a repeated series costs one hash lookup and vanished ones are found for stale
/// markers without building label sets.
pub(crate) struct ScrapeCache {
    index: HashMap<String, usize>,
    entries: Vec<CacheEntry>,
    /// Scrapes so far (failed ones included), plus one: `seen` 0 means never.
    round: u64,
}

impl Default for ScrapeCache {
    fn default() -> Self {
        ScrapeCache {
            index: HashMap::new(),
            entries: Vec::new(),
            round: 1,
        }
    }
}

struct CacheEntry {
    /// `None` when metric relabeling drops the series.
    labels: Option<Labels>,
    sref: Option<SeriesRef>,
    /// The scrape that last returned it.
    seen: u64,
}

impl ScrapeCache {
    /// Forgets series not seen in the last two scrapes once they outnumber the rest.
    fn evict(&mut self) {
        let keep_from = self.round.saturating_sub(1);
        let live = self.entries.iter().filter(|e| e.seen >= keep_from).count();
        if self.entries.len() <= 2 * live + 1024 {
            return;
        }
        let mut remap = vec![usize::MAX; self.entries.len()];
        let mut kept = Vec::with_capacity(live);
        for (i, e) in std::mem::take(&mut self.entries).into_iter().enumerate() {
            if e.seen >= keep_from {
                remap[i] = kept.len();
                kept.push(e);
            }
        }
        self.entries = kept;
        self.index.retain(|_, i| {
            *i = remap[*i];
            *i != usize::MAX
        });
    }
}

struct Parsed {
    /// Cache entry, timestamp, value.
    samples: Vec<(usize, i64, f64)>,
    scraped: usize,
    metadata: Vec<MetricMetadata>,
}

/// Parses a whole exposition; any malformed line fails the scrape.
fn parse_body(
    t: &Target,
    body: &str,
    dialect: Dialect,
    ts: i64,
    cache: &mut ScrapeCache,
) -> Result<Parsed, String> {
    let cfg = &t.cfg;
    let mut samples = Vec::new();
    let mut scraped = 0;
    let mut meta: BTreeMap<String, MetricMetadata> = BTreeMap::new();
    let mut ended = false;
    for (i, line) in body.lines().enumerate() {
        if ended {
            if line.trim().is_empty() {
                continue;
            }
            return Err(format!("line {}: content after # EOF", i + 1));
        }
        let parsed = parse_line(line, dialect).map_err(|e| format!("line {}: {e}", i + 1))?;
        match parsed {
            TextLine::Sample(s) => {
                scraped += 1;
                // The series text (everything before the value) keys the label cache.
                let key_end = line
                    .rfind('}')
                    .map(|p| p + 1)
                    .unwrap_or_else(|| line.find([' ', '\t']).unwrap_or(line.len()));
                let key = &line[..key_end];
                let idx = match cache.index.get(key) {
                    Some(&i) => i,
                    None => {
                        let labels = series_labels(t, s.name, &s.labels);
                        cache.entries.push(CacheEntry {
                            labels,
                            sref: None,
                            seen: 0,
                        });
                        cache.index.insert(key.to_string(), cache.entries.len() - 1);
                        cache.entries.len() - 1
                    }
                };
                let Some(labels) = &cache.entries[idx].labels else {
                    continue;
                };
                if cfg.label_limit > 0 && labels.len() > cfg.label_limit + 1 {
                    return Err(format!(
                        "label_limit exceeded (metric: {}, number of labels: {}, limit: {})",
                        s.name,
                        labels.len() - 1,
                        cfg.label_limit
                    ));
                }
                let st = match (cfg.honor_timestamps, s.timestamp_ms) {
                    (true, Some(x)) => x,
                    _ => ts,
                };
                samples.push((idx, st, s.value));
                if cfg.sample_limit > 0 && samples.len() > cfg.sample_limit {
                    return Err(format!(
                        "sample limit exceeded: more than {} samples",
                        cfg.sample_limit
                    ));
                }
            }
            TextLine::Help { name, text } => {
                meta.entry(name.to_string())
                    .or_insert_with(|| family(name))
                    .help = text.into_owned();
            }
            TextLine::Type { name, kind } => {
                meta.entry(name.to_string())
                    .or_insert_with(|| family(name))
                    .kind = MetricType::parse(kind);
            }
            TextLine::Unit { name, unit } => {
                meta.entry(name.to_string())
                    .or_insert_with(|| family(name))
                    .unit = unit.to_string();
            }
            TextLine::Eof => ended = true,
            TextLine::Nothing => {}
        }
    }
    if dialect == Dialect::OpenMetrics && !ended {
        return Err("data does not end with # EOF".into());
    }
    Ok(Parsed {
        samples,
        scraped,
        metadata: meta.into_values().collect(),
    })
}

fn family(name: &str) -> MetricMetadata {
    MetricMetadata {
        family: name.to_string(),
        ..MetricMetadata::default()
    }
}

/// A scraped series' labels after honor_labels and metric relabeling; `None` when
/// relabeling drops it.
fn series_labels(
    t: &Target,
    name: &str,
    pairs: &[(&str, std::borrow::Cow<'_, str>)],
) -> Option<Labels> {
    let mut l: LabelMap = pairs
        .iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.insert("__name__".into(), name.to_string());
    for tl in t.labels.iter() {
        let (k, v) = (&*tl.name, &*tl.value);
        match l.get(k) {
            Some(existing) if t.cfg.honor_labels => {
                let _ = existing;
            }
            Some(existing) => {
                let existing = existing.clone();
                let mut exported = format!("exported_{k}");
                while l.contains_key(&exported) {
                    exported = format!("exported_{exported}");
                }
                l.insert(exported, existing);
                l.insert(k.to_string(), v.to_string());
            }
            None => {
                l.insert(k.to_string(), v.to_string());
            }
        }
    }
    if !relabel::process(&t.cfg.metric_relabel, &mut l) {
        return None;
    }
    if l.get("__name__").is_none_or(|n| n.is_empty()) {
        return None;
    }
    Some(Labels::from_pairs(
        l.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}

#[cfg(test)]
mod tests;
