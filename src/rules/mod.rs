//! Recording and alerting rules, Alertmanager notifications and ops hooks.
//!
//! ```text
//!  rule files ──file::parse──> GroupSpec ──Manager::apply──> one thread per group
//!     every interval (aligned): for each rule in order
//!        record: query ─> relabel ─> append (next rule sees it) ─> stale markers
//!        alert:  query ─> templates ─> inactive→pending→firing→inactive
//!                ─> ALERTS / ALERTS_FOR_STATE appended
//!     after the group: alerts due ─> Notifier (queue ─> POST /api/v2/alerts)
//!                      transitions ─> Hooks (exec / webhook, never blocking here)
//! ```
//!
//! Semantics follow Prometheus: `for` holds an alert pending, `keep_firing_for` keeps it
//! firing after its condition clears, resolved alerts are re-sent for 15 minutes, the
//! `for` state is restored after a restart from `ALERTS_FOR_STATE`, and an alert's
//! notifications are re-sent every `--rules.alert.resend-delay`.

pub(crate) mod file;
pub(crate) mod gofmt;
pub(crate) mod hooks;
pub(crate) mod notifier;
pub(crate) mod template;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value as Json};
use strata_query::{Engine, QueryValue};
use strata_storage::{is_stale_nan, Db, Labels, Matcher, STALE_NAN_BITS};

use crate::config::Config;
use file::{GroupSpec, RuleKind, RuleSpec};
use hooks::{HookEvent, Hooks};
use notifier::{AmAlert, Notifier};
use template::{Env, Template, Value};

/// How long a resolved alert is kept (and re-sent as resolved).
const RESOLVED_RETENTION_MS: i64 = 15 * 60 * 1000;

/// Settings from the command line.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) external_url: String,
    pub(crate) outage_tolerance_ms: i64,
    pub(crate) for_grace_period_ms: i64,
    pub(crate) resend_delay_ms: i64,
    /// Where hook runs are logged (`hook-runs.jsonl` in the data directory).
    pub(crate) audit_log: Option<PathBuf>,
}

/// Settings of the loaded configuration every evaluation reads.
struct Globals {
    external_labels: Vec<(String, String)>,
    external_url: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AlertState {
    Inactive,
    Pending,
    Firing,
}

impl AlertState {
    fn name(self) -> &'static str {
        match self {
            AlertState::Inactive => "inactive",
            AlertState::Pending => "pending",
            AlertState::Firing => "firing",
        }
    }
}

#[derive(Debug, Clone)]
struct Alert {
    state: AlertState,
    annotations: Vec<(String, String)>,
    value: f64,
    active_at: i64,
    fired_at: Option<i64>,
    resolved_at: Option<i64>,
    last_sent: Option<i64>,
    keep_firing_since: Option<i64>,
}

#[derive(Debug, Default)]
struct RuleState {
    health: &'static str,
    last_error: String,
    last_eval_wall: Option<SystemTime>,
    eval_seconds: f64,
    /// Alerting rules: alerts by label set.
    active: BTreeMap<Labels, Alert>,
    /// Series written at the previous evaluation, for stale markers.
    written: BTreeSet<Labels>,
}

/// A running group.
pub(crate) struct Group {
    spec: GroupSpec,
    interval_ms: i64,
    rules: Vec<Mutex<RuleState>>,
    last_eval_wall: Mutex<Option<SystemTime>>,
    last_duration: Mutex<f64>,
    evaluations: AtomicU64,
    failures: AtomicU64,
    missed: AtomicU64,
    /// Whether the `for` state was already restored (or needs no restoring).
    restored: AtomicBool,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until the wall clock reaches `at_ms` or `stop` is set; `true` when stopped.
pub(crate) fn sleep_until(stop: &(Mutex<bool>, Condvar), at_ms: i64) -> bool {
    let mut stopped = lock(&stop.0);
    loop {
        if *stopped {
            return true;
        }
        let wait = at_ms - now_ms();
        if wait <= 0 {
            return false;
        }
        stopped = stop
            .1
            .wait_timeout(stopped, Duration::from_millis(wait as u64))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// The wall clock in Unix milliseconds.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

struct Runner {
    stop: Arc<(Mutex<bool>, Condvar)>,
    handle: JoinHandle<()>,
}

/// Owns the rule groups, their threads, the notifier and the hooks.
pub(crate) struct Manager {
    db: Db,
    engine: Engine,
    opts: Options,
    globals: Mutex<Arc<Globals>>,
    groups: Mutex<Vec<Arc<Group>>>,
    runners: Mutex<Vec<Runner>>,
    pub(crate) notifier: Arc<Notifier>,
    pub(crate) hooks: Arc<Hooks>,
    /// The configuration in force.
    config: Mutex<Arc<Config>>,
    first_load: AtomicBool,
}

/// Everything loaded from a configuration, checked, before anything changes.
pub(crate) struct Loaded {
    config: Config,
    groups: Vec<GroupSpec>,
}

impl Loaded {
    pub(crate) fn config(&self) -> &Config {
        &self.config
    }
}

/// Reads a configuration's rule files. Errors name file, line and rule.
pub(crate) fn load(config: Config) -> Result<Loaded, Vec<String>> {
    let files = file::expand_globs(&config.base, &config.rule_files).map_err(|e| vec![e])?;
    let mut groups = Vec::new();
    let mut errors = Vec::new();
    for f in files {
        match file::load_file(&f) {
            Ok(g) => groups.extend(g),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(Loaded { config, groups })
    } else {
        Err(errors)
    }
}

impl Manager {
    pub(crate) fn new(db: Db, engine: Engine, opts: Options) -> Arc<Manager> {
        let notifier = Notifier::start();
        let hooks = Hooks::new(opts.audit_log.clone());
        Arc::new(Manager {
            db,
            engine,
            globals: Mutex::new(Arc::new(Globals {
                external_labels: Vec::new(),
                external_url: opts.external_url.clone(),
            })),
            opts,
            groups: Mutex::new(Vec::new()),
            runners: Mutex::new(Vec::new()),
            notifier,
            hooks,
            config: Mutex::new(Arc::new(Config::default())),
            first_load: AtomicBool::new(true),
        })
    }

    pub(crate) fn config(&self) -> Arc<Config> {
        lock(&self.config).clone()
    }

    /// Replaces the running groups with `loaded`'s. Alert state carries over for groups
    /// and rules that keep their file, name and expression.
    pub(crate) fn apply(self: &Arc<Self>, loaded: Loaded) {
        self.install(loaded, true);
    }

    /// [`Manager::apply`]; `run` false installs the groups without their threads.
    fn install(self: &Arc<Self>, loaded: Loaded, run: bool) {
        let Loaded { config, groups } = loaded;
        let first = self.first_load.swap(false, Ordering::SeqCst);
        *lock(&self.globals) = Arc::new(Globals {
            external_labels: config.external_labels.clone(),
            external_url: self.opts.external_url.clone(),
        });
        self.notifier.configure(config.alertmanagers.clone());
        self.hooks.configure(config.hooks.clone());
        let old: Vec<Arc<Group>> = lock(&self.groups).clone();
        self.stop_runners();
        let mut new_groups = Vec::new();
        for spec in groups {
            let interval_ms = spec.interval_ms.unwrap_or(config.evaluation_interval_ms);
            let prev = old
                .iter()
                .find(|g| g.spec.file == spec.file && g.spec.name == spec.name);
            let rules = spec
                .rules
                .iter()
                .map(|r| {
                    let carried = prev.and_then(|p| {
                        p.spec.rules.iter().position(|o| {
                            o.name() == r.name() && o.expr == r.expr && same_kind(o, r)
                        })
                    });
                    let st = match (prev, carried) {
                        (Some(p), Some(i)) => std::mem::take(&mut *lock(&p.rules[i])),
                        _ => RuleState {
                            health: "unknown",
                            ..RuleState::default()
                        },
                    };
                    Mutex::new(st)
                })
                .collect();
            new_groups.push(Arc::new(Group {
                spec,
                interval_ms,
                rules,
                last_eval_wall: Mutex::new(None),
                last_duration: Mutex::new(0.0),
                evaluations: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                missed: AtomicU64::new(0),
                restored: AtomicBool::new(!first),
            }));
        }
        // Series of removed groups go stale at once.
        for g in &old {
            if !new_groups
                .iter()
                .any(|n| n.spec.file == g.spec.file && n.spec.name == g.spec.name)
            {
                self.mark_group_stale(g);
            }
        }
        *lock(&self.groups) = new_groups.clone();
        *lock(&self.config) = Arc::new(config);
        if !run {
            return;
        }
        let mut runners = lock(&self.runners);
        for g in new_groups {
            let stop = Arc::new((Mutex::new(false), Condvar::new()));
            let me = Arc::clone(self);
            let s = Arc::clone(&stop);
            let name = format!("rules-{}", g.spec.name);
            let handle = std::thread::Builder::new()
                .name(name.chars().take(15).collect())
                .stack_size(strata_query::STACK_SIZE)
                .spawn(move || me.run_group(&g, &s));
            match handle {
                Ok(handle) => runners.push(Runner { stop, handle }),
                Err(e) => tracing::error!(error = %e, "cannot start a rule group thread"),
            }
        }
    }

    fn stop_runners(&self) {
        let runners: Vec<Runner> = std::mem::take(&mut *lock(&self.runners));
        for r in &runners {
            *lock(&r.stop.0) = true;
            r.stop.1.notify_all();
        }
        for r in runners {
            let _ = r.handle.join();
        }
    }

    /// Stops every group (at shutdown).
    pub(crate) fn stop(&self) {
        self.stop_runners();
        self.notifier.stop();
    }

    fn mark_group_stale(&self, g: &Group) {
        let stale = f64::from_bits(STALE_NAN_BITS);
        let ts = now_ms();
        let mut app = self.db.appender();
        for r in &g.rules {
            for l in std::mem::take(&mut lock(r).written) {
                let _ = app.append(&l, ts, stale);
            }
        }
        if let Err(e) = app.commit() {
            tracing::warn!(error = %e, group = %g.spec.name, "cannot write stale markers");
        }
    }

    fn run_group(&self, g: &Group, stop: &(Mutex<bool>, Condvar)) {
        let interval = g.interval_ms.max(1);
        let offset =
            (hash_str(&format!("{};{}", g.spec.file, g.spec.name)) % interval as u64) as i64;
        let aligned_after = |t: i64| {
            let adj = t - offset;
            adj - adj.rem_euclid(interval) + offset + interval
        };
        let mut next = aligned_after(now_ms() - interval);
        if next < now_ms() {
            next = aligned_after(now_ms());
        }
        loop {
            if sleep_until(stop, next) {
                return;
            }
            self.eval_group(g, next);
            let after = aligned_after(now_ms() - interval).max(next + interval);
            let now = now_ms();
            let mut n = after;
            if n <= now {
                let skipped = (now - n) / interval + 1;
                g.missed.fetch_add(skipped as u64, Ordering::Relaxed);
                n += skipped * interval;
            }
            next = n;
        }
    }

    /// Evaluates every rule of `g` at `ts` (milliseconds), in order.
    pub(crate) fn eval_group(&self, g: &Group, ts: i64) {
        let started = Instant::now();
        let globals = lock(&self.globals).clone();
        let mut to_send = Vec::new();
        let mut events = Vec::new();
        let restore = !g.restored.load(Ordering::Relaxed);
        for (i, rule) in g.spec.rules.iter().enumerate() {
            let t0 = Instant::now();
            let result = match &rule.kind {
                RuleKind::Record(name) => self.eval_record(g, i, rule, name, ts),
                RuleKind::Alert(name) => {
                    let out = self.eval_alert(g, i, rule, name, ts, &globals, restore);
                    out.map(|(send, ev)| {
                        to_send.extend(send);
                        events.extend(ev);
                    })
                }
            };
            g.evaluations.fetch_add(1, Ordering::Relaxed);
            let mut st = lock(&g.rules[i]);
            st.eval_seconds = t0.elapsed().as_secs_f64();
            st.last_eval_wall = Some(SystemTime::now());
            match result {
                Ok(()) => {
                    st.health = "ok";
                    st.last_error.clear();
                }
                Err(e) => {
                    g.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(group = %g.spec.name, rule = %rule.name(), error = %e, "rule evaluation failed");
                    st.health = "err";
                    st.last_error = e;
                }
            }
        }
        g.restored.store(true, Ordering::Relaxed);
        *lock(&g.last_eval_wall) = Some(SystemTime::now());
        *lock(&g.last_duration) = started.elapsed().as_secs_f64();
        if !to_send.is_empty() {
            self.notifier.send(to_send);
        }
        for e in events {
            self.hooks.dispatch(e);
        }
    }

    fn query_vector(&self, expr: &str, t: i64) -> Result<Vec<(Labels, f64)>, String> {
        let out = self
            .engine
            .instant_query(&self.db, expr, t)
            .map_err(|e| e.to_string())?;
        match out.value {
            QueryValue::Vector(v) => Ok(v.into_iter().map(|(l, _, v)| (l, v)).collect()),
            QueryValue::Scalar { v, .. } => Ok(vec![(Labels::empty(), v)]),
            other => Err(format!(
                "rule result is not a vector or scalar but a {}",
                other.type_name()
            )),
        }
    }

    fn write(
        &self,
        g: &Group,
        i: usize,
        series: Vec<(Labels, f64)>,
        ts: i64,
    ) -> Result<(), String> {
        let mut app = self.db.appender();
        let mut now_written = BTreeSet::new();
        for (l, v) in series {
            app.append(&l, ts, v).map_err(|e| e.to_string())?;
            now_written.insert(l);
        }
        let stale = f64::from_bits(STALE_NAN_BITS);
        let mut st = lock(&g.rules[i]);
        for gone in st.written.difference(&now_written) {
            app.append(gone, ts, stale).map_err(|e| e.to_string())?;
        }
        app.commit().map_err(|e| e.to_string())?;
        st.written = now_written;
        Ok(())
    }

    fn eval_record(
        &self,
        g: &Group,
        i: usize,
        rule: &RuleSpec,
        name: &str,
        ts: i64,
    ) -> Result<(), String> {
        let t = ts - g.spec.query_offset_ms.unwrap_or(0);
        let vector = self.query_vector(&rule.expr, t)?;
        let mut out: Vec<(Labels, f64)> = Vec::with_capacity(vector.len());
        let mut seen = BTreeSet::new();
        for (mut l, v) in vector {
            l.set("__name__", name);
            for (k, val, _) in &rule.labels {
                l.set(k, val);
            }
            if !seen.insert(l.clone()) {
                return Err(
                    "vector contains metrics with the same labelset after applying rule labels"
                        .into(),
                );
            }
            out.push((l, v));
        }
        if g.spec.limit > 0 && out.len() > g.spec.limit {
            return Err(format!(
                "exceeded limit of {} with {} series",
                g.spec.limit,
                out.len()
            ));
        }
        self.write(g, i, out, ts)
    }

    #[allow(clippy::too_many_arguments)]
    fn eval_alert(
        &self,
        g: &Group,
        i: usize,
        rule: &RuleSpec,
        name: &str,
        ts: i64,
        globals: &Globals,
        restore: bool,
    ) -> Result<(Vec<AmAlert>, Vec<HookEvent>), String> {
        let t = ts - g.spec.query_offset_ms.unwrap_or(0);
        let vector = self.query_vector(&rule.expr, t)?;
        let ext = Value::labels(
            globals
                .external_labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str())),
        );
        let query = |q: &str| -> Result<Vec<Value>, String> {
            Ok(self
                .query_vector(q, t)?
                .into_iter()
                .map(|(l, v)| Value::sample(labels_value(&l), v))
                .collect())
        };
        let env = Env {
            external_url: &globals.external_url,
            query: Some(&query),
        };
        let mut found: BTreeMap<Labels, (Vec<(String, String)>, f64)> = BTreeMap::new();
        for (l, v) in vector {
            let data = Value::Map(vec![
                ("ExternalLabels".into(), ext.clone()),
                (
                    "ExternalURL".into(),
                    Value::Str(globals.external_url.clone()),
                ),
                ("Labels".into(), labels_value(&l)),
                ("Value".into(), Value::Float(v)),
            ]);
            let expand = |t: &Template| {
                t.expand(&data, &env)
                    .unwrap_or_else(|e| format!("<error expanding template: {e}>"))
            };
            let mut out = l.clone();
            out.remove("__name__");
            for (k, _, tmpl) in &rule.labels {
                out.set(k, &expand(tmpl));
            }
            out.set("alertname", name);
            let annotations = rule
                .annotations
                .iter()
                .map(|(k, _, tmpl)| (k.clone(), expand(tmpl)))
                .collect();
            if found.insert(out, (annotations, v)).is_some() {
                return Err(
                    "vector contains metrics with the same labelset after applying alert labels"
                        .into(),
                );
            }
        }
        let mut restored_at = BTreeMap::new();
        if restore && rule.for_ms >= self.opts.for_grace_period_ms {
            for l in found.keys() {
                if let Some(at) = self.restore_active_at(l, rule.for_ms, ts) {
                    restored_at.insert(l.clone(), at);
                }
            }
        }
        let mut st = lock(&g.rules[i]);
        for (l, (annotations, v)) in found.iter() {
            if let Some(a) = st.active.get_mut(l) {
                if a.state != AlertState::Inactive {
                    a.value = *v;
                    a.annotations = annotations.clone();
                    continue;
                }
            }
            st.active.insert(
                l.clone(),
                Alert {
                    state: AlertState::Pending,
                    annotations: annotations.clone(),
                    value: *v,
                    active_at: restored_at.get(l).copied().unwrap_or(ts),
                    fired_at: None,
                    resolved_at: None,
                    last_sent: None,
                    keep_firing_since: None,
                },
            );
        }
        let mut events = Vec::new();
        let mut series = Vec::new();
        let mut remove = Vec::new();
        let mut active_count = 0;
        for (l, a) in st.active.iter_mut() {
            if !found.contains_key(l) {
                let mut keep_firing = false;
                if a.state == AlertState::Firing && rule.keep_firing_for_ms > 0 {
                    let since = *a.keep_firing_since.get_or_insert(ts);
                    keep_firing = ts - since < rule.keep_firing_for_ms;
                }
                if a.state == AlertState::Pending
                    || a.resolved_at
                        .is_some_and(|r| ts - r > RESOLVED_RETENTION_MS)
                {
                    remove.push(l.clone());
                }
                if a.state != AlertState::Inactive && !keep_firing {
                    if a.state == AlertState::Firing {
                        events.push(self.event(l, a, "resolved", rule, ts, globals));
                    }
                    a.state = AlertState::Inactive;
                    a.resolved_at = Some(ts);
                }
                if !keep_firing {
                    continue;
                }
            } else {
                a.keep_firing_since = None;
            }
            active_count += 1;
            if a.state == AlertState::Pending && ts - a.active_at >= rule.for_ms {
                a.state = AlertState::Firing;
                a.fired_at = Some(ts);
                events.push(self.event(l, a, "firing", rule, ts, globals));
            }
            let mut alerts = l.clone();
            alerts.set("__name__", "ALERTS");
            alerts.set("alertstate", a.state.name());
            series.push((alerts, 1.0));
            let mut for_state = l.clone();
            for_state.set("__name__", "ALERTS_FOR_STATE");
            series.push((for_state, (a.active_at / 1000) as f64));
        }
        for l in remove {
            st.active.remove(&l);
        }
        if g.spec.limit > 0 && active_count > g.spec.limit {
            st.active.clear();
            drop(st);
            self.write(g, i, Vec::new(), ts)?;
            return Err(format!(
                "exceeded limit of {} with {active_count} alerts",
                g.spec.limit
            ));
        }
        // Notifications due (Prometheus' needsSending).
        let valid_for = 4 * self.opts.resend_delay_ms.max(g.interval_ms);
        let mut send = Vec::new();
        for (l, a) in st.active.iter_mut() {
            if a.state == AlertState::Pending {
                continue;
            }
            let resolved_since_sent = match (a.resolved_at, a.last_sent) {
                (Some(r), Some(s)) => r > s,
                (Some(_), None) => true,
                _ => false,
            };
            let due = resolved_since_sent
                || a.last_sent
                    .is_none_or(|s| s + self.opts.resend_delay_ms < ts);
            if !due {
                continue;
            }
            a.last_sent = Some(ts);
            send.push(AmAlert {
                labels: with_external(l, &globals.external_labels),
                annotations: a.annotations.clone(),
                starts_at_ms: a.fired_at.unwrap_or(a.active_at),
                ends_at_ms: a.resolved_at.unwrap_or(ts + valid_for),
                generator_url: generator_url(&globals.external_url, &rule.expr),
            });
        }
        drop(st);
        self.write(g, i, series, ts)?;
        Ok((send, events))
    }

    fn event(
        &self,
        l: &Labels,
        a: &Alert,
        status: &'static str,
        rule: &RuleSpec,
        ts: i64,
        globals: &Globals,
    ) -> HookEvent {
        HookEvent {
            status,
            labels: l.clone(),
            annotations: a.annotations.clone(),
            value: a.value,
            starts_at_ms: a.fired_at.unwrap_or(ts),
            ends_at_ms: (status == "resolved").then_some(ts),
            generator_url: generator_url(&globals.external_url, &rule.expr),
            external_url: globals.external_url.clone(),
        }
    }

    /// When the alert with `labels` became active before a restart, adjusted as
    /// Prometheus does: time spent down does not count towards `for`, and an alert close
    /// to firing waits at least the grace period.
    fn restore_active_at(&self, labels: &Labels, for_ms: i64, ts: i64) -> Option<i64> {
        let mut want = labels.clone();
        want.set("__name__", "ALERTS_FOR_STATE");
        let matchers: Vec<Matcher> = want
            .iter()
            .map(|l| Matcher::equal(&*l.name, &*l.value))
            .collect();
        let q = self.db.querier(ts - self.opts.outage_tolerance_ms, ts);
        let series = q.select(&matchers).ok()?;
        let s = series.into_iter().find(|s| s.labels == want)?;
        let (down_at, v) = s.samples().filter(|(t, _)| *t < ts).last()?;
        if is_stale_nan(v) || !v.is_finite() {
            return None;
        }
        let restored = (v * 1000.0) as i64;
        let remaining = for_ms - (down_at - restored);
        Some(if remaining <= 0 {
            restored
        } else if remaining < self.opts.for_grace_period_ms {
            ts + self.opts.for_grace_period_ms - for_ms
        } else {
            restored + (ts - down_at)
        })
    }

    pub(crate) fn groups(&self) -> Vec<Arc<Group>> {
        lock(&self.groups).clone()
    }

    /// `/api/v1/rules`: `kind` is `alert` or `record` to keep one type only.
    pub(crate) fn rules_json(&self, f: &RuleFilter) -> Json {
        let mut groups = Vec::new();
        for g in self.groups() {
            if !f.groups.is_empty() && !f.groups.contains(&g.spec.name) {
                continue;
            }
            if !f.files.is_empty() && !f.files.contains(&g.spec.file) {
                continue;
            }
            let mut rules = Vec::new();
            for (spec, st) in g.spec.rules.iter().zip(&g.rules) {
                if !f.names.is_empty() && !f.names.iter().any(|n| n == spec.name()) {
                    continue;
                }
                let st = lock(st);
                let labels = rule_labels(spec);
                let common = |obj: &mut serde_json::Map<String, Json>| {
                    obj.insert("health".into(), json!(st.health));
                    if !st.last_error.is_empty() {
                        obj.insert("lastError".into(), json!(st.last_error));
                    }
                    obj.insert("evaluationTime".into(), json!(st.eval_seconds));
                    obj.insert("lastEvaluation".into(), json!(rfc3339(st.last_eval_wall)));
                };
                match &spec.kind {
                    RuleKind::Record(name) => {
                        if f.kind == Some("alert") {
                            continue;
                        }
                        let mut obj = serde_json::Map::new();
                        obj.insert("name".into(), json!(name));
                        obj.insert("query".into(), json!(spec.expr));
                        obj.insert("labels".into(), labels);
                        common(&mut obj);
                        obj.insert("type".into(), json!("recording"));
                        rules.push(Json::Object(obj));
                    }
                    RuleKind::Alert(name) => {
                        if f.kind == Some("record") {
                            continue;
                        }
                        let alerts: Vec<Json> = st
                            .active
                            .iter()
                            .filter(|(_, a)| a.state != AlertState::Inactive)
                            .map(|(l, a)| alert_json(l, a))
                            .collect();
                        let state = st
                            .active
                            .values()
                            .map(|a| a.state)
                            .filter(|s| *s != AlertState::Inactive)
                            .max_by_key(|s| match s {
                                AlertState::Firing => 2,
                                AlertState::Pending => 1,
                                AlertState::Inactive => 0,
                            })
                            .unwrap_or(AlertState::Inactive);
                        let mut obj = serde_json::Map::new();
                        obj.insert("state".into(), json!(state.name()));
                        obj.insert("name".into(), json!(name));
                        obj.insert("query".into(), json!(spec.expr));
                        obj.insert("duration".into(), seconds(spec.for_ms));
                        obj.insert("keepFiringFor".into(), seconds(spec.keep_firing_for_ms));
                        obj.insert("labels".into(), labels);
                        obj.insert(
                            "annotations".into(),
                            pairs_json(spec.annotations.iter().map(|(k, v, _)| (k, v))),
                        );
                        if !f.exclude_alerts {
                            obj.insert("alerts".into(), Json::Array(alerts));
                        }
                        common(&mut obj);
                        obj.insert("type".into(), json!("alerting"));
                        rules.push(Json::Object(obj));
                    }
                }
            }
            if rules.is_empty() && (f.kind.is_some() || !f.names.is_empty()) {
                continue;
            }
            groups.push(json!({
                "name": g.spec.name,
                "file": g.spec.file,
                "rules": rules,
                "interval": seconds(g.interval_ms),
                "limit": g.spec.limit,
                "evaluationTime": *lock(&g.last_duration),
                "lastEvaluation": rfc3339(*lock(&g.last_eval_wall)),
            }));
        }
        json!({ "groups": groups })
    }

    /// `/api/v1/alerts`: every pending and firing alert.
    pub(crate) fn alerts_json(&self) -> Json {
        let mut alerts = Vec::new();
        for g in self.groups() {
            for st in &g.rules {
                let st = lock(st);
                for (l, a) in &st.active {
                    if a.state != AlertState::Inactive {
                        alerts.push(alert_json(l, a));
                    }
                }
            }
        }
        json!({ "alerts": alerts })
    }

    /// Rule evaluation, notification and hook families for `/metrics`.
    pub(crate) fn metrics(&self, add: AddMetric<'_>) {
        let families: [(&str, &'static str, &str); 7] = [
            (
                "strata_rule_evaluations_total",
                "counter",
                "Rule evaluations.",
            ),
            (
                "strata_rule_evaluation_failures_total",
                "counter",
                "Rule evaluations that failed.",
            ),
            (
                "strata_rule_group_iterations_missed_total",
                "counter",
                "Group evaluations skipped because the previous one ran too long.",
            ),
            (
                "strata_rule_group_last_duration_seconds",
                "gauge",
                "How long the group's last evaluation took.",
            ),
            (
                "strata_rule_group_last_evaluation_timestamp_seconds",
                "gauge",
                "When the group was last evaluated.",
            ),
            (
                "strata_rule_group_interval_seconds",
                "gauge",
                "The group's evaluation interval.",
            ),
            ("strata_rule_group_rules", "gauge", "Rules in the group."),
        ];
        for g in self.groups() {
            let labels =
                Labels::from_pairs([("rule_group", format!("{};{}", g.spec.file, g.spec.name))]);
            for (fi, (name, typ, help)) in families.iter().enumerate() {
                let v = match fi {
                    0 => g.evaluations.load(Ordering::Relaxed) as f64,
                    1 => g.failures.load(Ordering::Relaxed) as f64,
                    2 => g.missed.load(Ordering::Relaxed) as f64,
                    3 => *lock(&g.last_duration),
                    4 => lock(&g.last_eval_wall)
                        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                        .map(|d| d.as_secs_f64())
                        .unwrap_or(0.0),
                    5 => g.interval_ms as f64 / 1000.0,
                    _ => g.spec.rules.len() as f64,
                };
                add(name, typ, help, labels.clone(), v);
            }
        }
        self.notifier.metrics(add);
        self.hooks.metrics(add);
    }
}

/// Adds one sample of a family to the `/metrics` exposition: name, type, help, labels.
pub(crate) type AddMetric<'a> = &'a mut dyn FnMut(&str, &'static str, &str, Labels, f64);

/// Filters of `/api/v1/rules`.
#[derive(Debug, Default)]
pub(crate) struct RuleFilter {
    pub(crate) kind: Option<&'static str>,
    pub(crate) names: Vec<String>,
    pub(crate) groups: Vec<String>,
    pub(crate) files: Vec<String>,
    pub(crate) exclude_alerts: bool,
}

/// Milliseconds as seconds, printed as Go prints a float64 (`60`, `1.5`).
fn seconds(ms: i64) -> Json {
    if ms % 1000 == 0 {
        json!(ms / 1000)
    } else {
        json!(ms as f64 / 1000.0)
    }
}

fn same_kind(a: &RuleSpec, b: &RuleSpec) -> bool {
    matches!(
        (&a.kind, &b.kind),
        (RuleKind::Record(_), RuleKind::Record(_)) | (RuleKind::Alert(_), RuleKind::Alert(_))
    )
}

fn hash_str(s: &str) -> u64 {
    // FNV-1a: stable across runs, so a group keeps its phase after a restart.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

fn labels_value(l: &Labels) -> Value {
    Value::labels(l.iter().map(|l| (&*l.name, &*l.value)))
}

fn with_external(l: &Labels, external: &[(String, String)]) -> Labels {
    let mut out = l.clone();
    for (k, v) in external {
        if out.get(k).is_none() {
            out.set(k, v);
        }
    }
    out
}

pub(crate) fn generator_url(external_url: &str, expr: &str) -> String {
    let e: String = form_urlencoded::byte_serialize(expr.as_bytes()).collect();
    format!(
        "{}/graph?g0.expr={e}&g0.tab=1",
        external_url.trim_end_matches('/')
    )
}

/// `{"name": "value", …}` of string pairs.
pub(crate) fn pairs_json<'a>(pairs: impl Iterator<Item = (&'a String, &'a String)>) -> Json {
    let mut m = serde_json::Map::new();
    for (k, v) in pairs {
        m.insert(k.clone(), json!(v));
    }
    Json::Object(m)
}

fn rule_labels(spec: &RuleSpec) -> Json {
    pairs_json(
        spec.labels
            .iter()
            .filter(|(_, v, _)| !v.is_empty())
            .map(|(k, v, _)| (k, v)),
    )
}

/// A label set as a JSON object, as Prometheus' API writes one.
pub(crate) fn labels_json(l: &Labels) -> Json {
    let mut m = serde_json::Map::new();
    for x in l.iter() {
        m.insert(x.name.to_string(), json!(&*x.value));
    }
    Json::Object(m)
}

fn alert_json(l: &Labels, a: &Alert) -> Json {
    let mut obj = serde_json::Map::new();
    obj.insert("labels".into(), labels_json(l));
    obj.insert(
        "annotations".into(),
        pairs_json(a.annotations.iter().map(|(k, v)| (k, v))),
    );
    obj.insert("state".into(), json!(a.state.name()));
    obj.insert("activeAt".into(), json!(rfc3339_ms(a.active_at)));
    if let Some(k) = a.keep_firing_since {
        obj.insert("keepFiringSince".into(), json!(rfc3339_ms(k)));
    }
    obj.insert("value".into(), json!(gofmt::format_e_shortest(a.value)));
    Json::Object(obj)
}

/// RFC 3339 with as many fraction digits as needed; Go's zero time when never.
fn rfc3339(t: Option<SystemTime>) -> String {
    match t.and_then(|t| t.duration_since(UNIX_EPOCH).ok()) {
        Some(d) => {
            let dt = chrono::DateTime::<chrono::Utc>::from(UNIX_EPOCH + d);
            dt.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
        }
        None => "0001-01-01T00:00:00Z".to_string(),
    }
}

pub(crate) fn rfc3339_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests;
