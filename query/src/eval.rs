//! The evaluator: every node of the expression yields its value at every step of the
//! query at once.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use promql_parser::label::{MatchOp, Matcher as ParsedMatcher};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{
    AggregateExpr, AtModifier, BinaryExpr, Call, Expr, LabelModifier, Offset,
    VectorMatchCardinality, VectorSelector,
};
use strata_storage::{
    is_stale_nan, read_ahead, Db, IntHash, Labels, MatchKind, Matcher, METRIC_NAME,
};

use crate::aggregate::{self, Param};
use crate::functions::{self, Window};
use crate::histogram::{bucket_fraction, bucket_quantile, Bucket};
use crate::QueryError;

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for the latest sample (Prometheus: 5 m).
    pub lookback_delta_ms: i64,
    /// The most steps a range query may have (Prometheus: 11,000).
    pub max_points_per_series: usize,
    /// The step of a subquery that names none (Prometheus: the evaluation interval, 1 m).
    pub default_subquery_step_ms: i64,
    /// Remove metric names only at the end of evaluation (Prometheus' feature flag
    /// `promql-delayed-name-removal`), so that `label_replace` can still read a name a
    /// function will drop. Off by default, as in Prometheus.
    pub delayed_name_removal: bool,
    /// Longest a query may run (Prometheus' `--query.timeout`, 2 m).
    pub timeout: Duration,
    /// Most samples a query may load (Prometheus' `--query.max-samples`, 50 million).
    pub max_samples: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lookback_delta_ms: 5 * 60 * 1000,
            max_points_per_series: 11_000,
            default_subquery_step_ms: 60_000,
            delayed_name_removal: false,
            timeout: Duration::from_secs(120),
            max_samples: 50_000_000,
        }
    }
}

/// The result of a query, in the shapes of the Prometheus HTTP API.
#[derive(Debug, Clone, PartialEq)]
pub enum QueryValue {
    Scalar {
        t: i64,
        v: f64,
    },
    String {
        t: i64,
        s: String,
    },
    /// An instant vector: labels, timestamp, value.
    Vector(Vec<(Labels, i64, f64)>),
    /// A range vector, or the result of a range query: labels and points.
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
}

impl QueryValue {
    /// The API's `resultType`.
    pub fn type_name(&self) -> &'static str {
        match self {
            QueryValue::Scalar { .. } => "scalar",
            QueryValue::String { .. } => "string",
            QueryValue::Vector(_) => "vector",
            QueryValue::Matrix(_) => "matrix",
        }
    }
}

/// Warnings and infos about a query's result, as Prometheus words them (with a
/// `(line:column)` suffix naming the sub-expression).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Annotations {
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

/// A query's result, its annotations, and what it cost.
#[derive(Debug, Clone, PartialEq)]
pub struct QueryOutput {
    pub value: QueryValue,
    pub annotations: Annotations,
    pub stats: QueryStats,
}

/// What a query cost, for `stats=all`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueryStats {
    /// Samples the query read at all its steps, counted as Prometheus'
    /// `totalQueryableSamples` (a sample seen by two steps counts twice).
    pub total_queryable_samples: u64,
    /// Samples loaded from the store.
    pub samples_loaded: u64,
    /// Time spent evaluating.
    pub eval_time: Duration,
}

/// Evaluates PromQL against a [`Db`].
#[derive(Debug, Clone, Default)]
pub struct Engine {
    opts: EngineOptions,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Self {
        Self { opts }
    }

    /// The engine's settings (lookback, limits).
    pub fn options(&self) -> &EngineOptions {
        &self.opts
    }

    /// Evaluates `query` at time `t` (milliseconds).
    pub fn instant_query(&self, db: &Db, query: &str, t: i64) -> Result<QueryOutput, QueryError> {
        self.instant_query_with_timeout(db, query, t, self.opts.timeout)
    }

    /// [`Engine::instant_query`] with a timeout shorter than the engine's.
    pub fn instant_query_with_timeout(
        &self,
        db: &Db,
        query: &str,
        t: i64,
        timeout: Duration,
    ) -> Result<QueryOutput, QueryError> {
        self.instant_query_cancellable(db, query, t, timeout, &NEVER)
    }

    /// [`Engine::instant_query_with_timeout`] that stops with [`QueryError::Canceled`]
    /// soon after `cancel` is set (the client went away).
    pub fn instant_query_cancellable(
        &self,
        db: &Db,
        query: &str,
        t: i64,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<QueryOutput, QueryError> {
        let started = Instant::now();
        let expr = crate::parse(query)?;
        let ctx = self.context(db, query, (t, t, 0), timeout, cancel);
        let ev = Evaluator {
            ctx: &ctx,
            start: t,
            step: 1,
            n: 1,
        };
        let value = match ev.eval(&expr)? {
            Val::Scalar(v) => QueryValue::Scalar { t, v: v[0] },
            Val::String(s) => QueryValue::String { t, s },
            Val::Vector(vs) => {
                let vs = finish_names(vs)?;
                let mut out: Vec<(Labels, i64, f64)> = vs
                    .into_iter()
                    .filter_map(|s| s.values[0].map(|v| (s.labels, t, v)))
                    .collect();
                if !defines_order(&expr) {
                    out.sort_by(|a, b| a.0.cmp(&b.0));
                }
                QueryValue::Vector(out)
            }
            Val::Matrix(m) => QueryValue::Matrix(m),
        };
        Ok(QueryOutput {
            value,
            stats: ctx.stats(started),
            annotations: ctx
                .annotations
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        })
    }

    /// Evaluates `query` at every `step` from `start` to `end` (milliseconds, inclusive).
    pub fn range_query(
        &self,
        db: &Db,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
    ) -> Result<QueryOutput, QueryError> {
        self.range_query_with_timeout(db, query, start, end, step, self.opts.timeout)
    }

    /// [`Engine::range_query`] with a timeout shorter than the engine's.
    pub fn range_query_with_timeout(
        &self,
        db: &Db,
        query: &str,
        start: i64,
        end: i64,
        step: i64,
        timeout: Duration,
    ) -> Result<QueryOutput, QueryError> {
        self.range_query_cancellable(db, query, (start, end, step), timeout, &NEVER)
    }

    /// [`Engine::range_query_with_timeout`] over `(start, end, step)` that stops with
    /// [`QueryError::Canceled`] soon after `cancel` is set.
    pub fn range_query_cancellable(
        &self,
        db: &Db,
        query: &str,
        (start, end, step): (i64, i64, i64),
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> Result<QueryOutput, QueryError> {
        let started = Instant::now();
        if end < start {
            return Err(QueryError::BadData(
                "end timestamp must not be before start time".into(),
            ));
        }
        if step <= 0 {
            return Err(QueryError::BadData(
                "zero or negative query resolution step widths are not accepted. Try a positive integer".into(),
            ));
        }
        let n = ((end - start) / step) as usize + 1;
        if n > self.opts.max_points_per_series {
            return Err(QueryError::BadData(format!(
                "exceeded maximum resolution of {} points per timeseries. Try decreasing the query resolution (?step=XX)",
                with_thousands(self.opts.max_points_per_series)
            )));
        }
        let expr = crate::parse(query)?;
        let vt = expr.value_type();
        if !matches!(vt, ValueType::Scalar | ValueType::Vector) {
            return Err(QueryError::BadData(format!(
                "invalid expression type \"{}\" for range query, must be Scalar or instant Vector",
                type_description(vt)
            )));
        }
        let ctx = self.context(db, query, (start, end, step), timeout, cancel);
        let ev = Evaluator {
            ctx: &ctx,
            start,
            step,
            n,
        };
        let ts = |i: usize| start + i as i64 * step;
        let mut out = match ev.eval(&expr)? {
            Val::Scalar(v) => vec![(
                Labels::empty(),
                v.into_iter().enumerate().map(|(i, v)| (ts(i), v)).collect(),
            )],
            Val::Vector(vs) => finish_names(vs)?
                .into_iter()
                .map(|s| {
                    let points: Vec<(i64, f64)> = s
                        .values
                        .iter()
                        .enumerate()
                        .filter_map(|(i, v)| v.map(|v| (ts(i), v)))
                        .collect();
                    (s.labels, points)
                })
                .filter(|(_, p)| !p.is_empty())
                .collect(),
            Val::String(_) | Val::Matrix(_) => {
                return Err(QueryError::BadData(
                    "range queries must yield a scalar or an instant vector".into(),
                ))
            }
        };
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(QueryOutput {
            value: QueryValue::Matrix(out),
            stats: ctx.stats(started),
            annotations: ctx
                .annotations
                .into_inner()
                .unwrap_or_else(PoisonError::into_inner),
        })
    }

    fn context<'a>(
        &self,
        db: &'a Db,
        query: &'a str,
        (start, end, step): (i64, i64, i64),
        timeout: Duration,
        cancel: &'a AtomicBool,
    ) -> Ctx<'a> {
        Ctx {
            db,
            query,
            annotations: Mutex::new(Annotations::default()),
            lookback: self.opts.lookback_delta_ms,
            query_start: start,
            query_end: end,
            query_step: step,
            delayed_name_removal: self.opts.delayed_name_removal,
            subquery_step: self.opts.default_subquery_step_ms,
            deadline: Instant::now() + timeout.min(self.opts.timeout),
            cancel,
            max_samples: self.opts.max_samples,
            loaded: AtomicUsize::new(0),
            queryable: AtomicU64::new(0),
        }
    }
}

/// Whether the result order of an instant query is part of its meaning (`sort`, `topk`).
fn defines_order(e: &Expr) -> bool {
    match e {
        Expr::Paren(p) => defines_order(&p.expr),
        Expr::Call(c) => matches!(
            c.func.name,
            "sort" | "sort_desc" | "sort_by_label" | "sort_by_label_desc"
        ),
        Expr::Aggregate(a) => matches!(a.op.to_string().as_str(), "topk" | "bottomk"),
        _ => false,
    }
}

/// `11000` as `11,000`.
fn with_thousands(n: usize) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn type_description(vt: ValueType) -> &'static str {
    match vt {
        ValueType::Vector => "instant vector",
        ValueType::Scalar => "scalar",
        ValueType::Matrix => "range vector",
        ValueType::String => "string",
    }
}

/// Most threads one query's window functions use.
const MAX_THREADS: usize = 4;
/// Below this many windows (series times steps) a window function over a range of steps
/// runs on the calling thread: starting threads (tens of microseconds) would cost more
/// than it saves. A window of a range query holds a few to hundreds of samples.
const PARALLEL_MIN_WINDOWS: usize = 16_384;
/// Below this many series a window function at one step, or an instant selection, runs
/// on the calling thread.
const PARALLEL_MIN_SERIES_INSTANT: usize = 2_048;

/// Series whose head chunk bytes are read ahead together ([`read_ahead`]) before they are
/// decoded: about 300 bytes a chunk, a few chunks each.
const READ_AHEAD_SERIES: usize = 512;

/// How many threads one query's evaluation uses at most.
fn query_threads() -> usize {
    strata_storage::cores().min(MAX_THREADS)
}

/// How many parts [`on_cores`] cuts its items into for each thread.
const PARTS_PER_THREAD: usize = 4;

/// `f` over `items` in contiguous parts on up to [`MAX_THREADS`] threads (the calling one
/// and parked helpers, [`strata_storage::helpers::in_parts`]) when there are `min_items` or more
/// (on the calling thread otherwise), the results concatenated in order; the first error
/// (in item order) wins. The threads take the parts in turn from a shared cursor, several
/// parts each: a helper that starts late (waking an idle core takes 0.1–0.3 ms on a
/// virtual machine) takes fewer, and the calling thread does not wait for one that
/// started behind it with half the work still to do, nor for one that has not started.
fn on_cores<T: Sync, R: Send>(
    items: &[T],
    min_items: usize,
    f: impl Fn(&[T]) -> Result<Vec<R>, QueryError> + Sync,
) -> Result<Vec<R>, QueryError> {
    let threads = query_threads();
    if threads < 2 || items.len() < min_items.max(2) {
        return f(items);
    }
    let per = items.len().div_ceil(threads * PARTS_PER_THREAD);
    let parts: Vec<&[T]> = items.chunks(per).collect();
    // The calling thread works too: one helper fewer to wake. The parts after a failed
    // one are not needed.
    let done = strata_storage::helpers::in_parts(
        threads.min(parts.len()) - 1,
        &parts,
        |part| f(part),
        Result::is_err,
    );
    let mut out = Vec::with_capacity(items.len());
    for d in done {
        match d {
            Some(r) => out.extend(r?),
            // A part is skipped after a failed one, whose error came first, or when its
            // evaluation panicked.
            None => {
                return Err(QueryError::Execution(
                    "a query evaluation thread panicked".into(),
                ))
            }
        }
    }
    Ok(out)
}

/// From this many selected series on, what an evaluation read is dropped on a thread of
/// its own ([`strata_storage::helpers::drop_later`]) rather than before the answer.
const DROP_LATER_SERIES: usize = 32;

/// Lets go of a selection's series: large ones on the dropper thread.
fn let_go<T: Send + 'static>(series: Vec<T>) {
    if series.len() >= DROP_LATER_SERIES {
        strata_storage::helpers::drop_later(series);
    }
}

/// A cancel flag nobody sets, for queries that cannot be canceled.
static NEVER: AtomicBool = AtomicBool::new(false);

/// What every evaluator of one query shares.
struct Ctx<'a> {
    db: &'a Db,
    /// The query text, for annotation positions.
    query: &'a str,
    annotations: Mutex<Annotations>,
    lookback: i64,
    /// The query's own start and end, which `@ start()` and `@ end()` refer to.
    query_start: i64,
    query_end: i64,
    /// The query's step (0 for an instant query), which `step()` reports.
    query_step: i64,
    delayed_name_removal: bool,
    subquery_step: i64,
    deadline: Instant,
    /// Set when the client went away.
    cancel: &'a AtomicBool,
    max_samples: usize,
    /// Samples loaded so far, against `max_samples`.
    loaded: AtomicUsize,
    queryable: AtomicU64,
}

impl Ctx<'_> {
    /// Fails the query once its time is up.
    fn check_deadline(&self) -> Result<(), QueryError> {
        if self.cancel.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(QueryError::Canceled(
                "query was canceled in expression evaluation".into(),
            ));
        }
        if Instant::now() > self.deadline {
            return Err(QueryError::Timeout(
                "query timed out in expression evaluation".into(),
            ));
        }
        Ok(())
    }

    /// Counts `n` more samples loaded, failing the query past the limit.
    fn load(&self, n: usize) -> Result<(), QueryError> {
        let total = self
            .loaded
            .fetch_add(n, Ordering::Relaxed)
            .saturating_add(n);
        if total > self.max_samples {
            return Err(QueryError::Execution(
                "query processing would load too many samples into memory in query execution"
                    .into(),
            ));
        }
        self.check_deadline()
    }

    fn stats(&self, started: Instant) -> QueryStats {
        QueryStats {
            total_queryable_samples: self.queryable.load(Ordering::Relaxed),
            samples_loaded: self.loaded.load(Ordering::Relaxed) as u64,
            eval_time: started.elapsed(),
        }
    }

    /// Records an annotation about the `arg`-th argument of the call of `func` (or the
    /// call itself); identical annotations are kept once.
    fn annotate(&self, warning: bool, text: String, func: &str, arg: Option<usize>) {
        let (line, col) = crate::position::call_position(self.query, func, arg).unwrap_or((1, 1));
        let kind = if warning { "warning" } else { "info" };
        let full = format!("PromQL {kind}: {text} ({line}:{col})");
        let mut a = self
            .annotations
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let list = if warning {
            &mut a.warnings
        } else {
            &mut a.infos
        };
        if !list.contains(&full) {
            list.push(full);
        }
    }

    fn invalid_quantile(&self, q: &[f64], func: &str, arg: usize) {
        if let Some(&bad) = q.iter().find(|q| q.is_nan() || **q < 0.0 || **q > 1.0) {
            self.annotate(
                true,
                format!(
                    "quantile value should be between 0 and 1, got {}",
                    go_float(bad)
                ),
                func,
                Some(arg),
            );
        }
    }
}

/// A float as Go's `%g` prints the values that appear in annotations.
fn go_float(v: f64) -> String {
    aggregate::format_value(v)
}

/// An instant-vector series: its value at each step, if any.
#[derive(Debug, Clone)]
pub(crate) struct StepSeries {
    pub(crate) labels: Labels,
    pub(crate) values: Vec<Option<f64>>,
    /// The metric name is to be removed at the end (delayed name removal).
    pub(crate) drop_name: bool,
}

impl StepSeries {
    pub(crate) fn new(labels: Labels, values: Vec<Option<f64>>) -> Self {
        Self {
            labels,
            values,
            drop_name: false,
        }
    }

    /// Sets a label; writing `__name__` keeps the name (cancels a delayed removal).
    pub(crate) fn set_label(&mut self, name: &str, value: &str) {
        self.labels.set(name, value);
        if name == METRIC_NAME {
            self.drop_name = false;
        }
    }

    /// Removes the metric name now, or marks it for removal at the end.
    pub(crate) fn drop_name(&mut self, delayed: bool) {
        if delayed {
            self.drop_name = true;
        } else {
            self.labels.remove(METRIC_NAME);
        }
    }
}

/// Applies delayed name removal at the end of evaluation.
fn finish_names(vs: Vec<StepSeries>) -> Result<Vec<StepSeries>, QueryError> {
    if !vs.iter().any(|s| s.drop_name) {
        return Ok(vs);
    }
    let vs = vs
        .into_iter()
        .map(|mut s| {
            if s.drop_name {
                s.labels.remove(METRIC_NAME);
                s.drop_name = false;
            }
            s
        })
        .collect();
    merge_same_labels(vs)
}

/// A value at every step.
enum Val {
    Scalar(Vec<f64>),
    Vector(Vec<StepSeries>),
    /// Only produced by a range selector or subquery at the top of an instant query.
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
    String(String),
}

/// Where a range input's points come from.
enum Points {
    /// A stored series, decoded (stale markers dropped) only when it is used, one at a
    /// time into a reused buffer.
    Stored(strata_storage::Series),
    /// Points a subquery computed.
    Computed(Vec<(i64, f64)>),
}

/// One series of a range input.
struct RangeSeries {
    labels: Labels,
    points: Points,
    /// The metric name is to be removed at the end (delayed name removal).
    drop_name: bool,
}

impl RangeSeries {
    /// The stored series behind it, if it is one.
    fn stored(&self) -> Option<&strata_storage::Series> {
        match &self.points {
            Points::Stored(s) => Some(s),
            Points::Computed(_) => None,
        }
    }
}

/// A window function's call with its arguments evaluated.
struct WindowCall {
    spec: functions::WindowSpec,
    input: RangeInput,
    scalars: Vec<Vec<f64>>,
    /// Metric names that get the "might not be a counter" info if a series of that
    /// name has output.
    non_counters: NonCounters,
}

/// The metric names of a `rate` or `increase` input that do not look like counters, and
/// which of them a series with output carries: those get an info, as in Prometheus.
/// (A deferred selection may hold series without samples in range, which have none.)
#[derive(Default)]
struct NonCounters {
    names: Vec<String>,
    seen: Vec<AtomicBool>,
}

impl NonCounters {
    fn of(input: &RangeInput) -> NonCounters {
        let names = non_counter_names(input);
        let seen = names.iter().map(|_| AtomicBool::new(false)).collect();
        NonCounters { names, seen }
    }

    /// Notes that a series with these labels has output.
    fn saw(&self, labels: &Labels) {
        if self.names.is_empty() {
            return;
        }
        let name = labels.metric_name();
        if let Some(k) = self.names.iter().position(|m| Some(m.as_str()) == name) {
            self.seen[k].store(true, Ordering::Relaxed);
        }
    }

    /// The names a series with output carries.
    fn seen(self) -> Vec<String> {
        self.names
            .into_iter()
            .zip(self.seen)
            .filter_map(|(n, seen)| seen.into_inner().then_some(n))
            .collect()
    }
}

/// Buffers one thread reuses from series to series while applying a window function.
struct WindowScratch {
    args: Vec<f64>,
    resets: Vec<u32>,
    buf: Vec<(i64, f64)>,
    /// Where each step's window ends in the samples ([`Evaluator::slide`]).
    ends: Vec<usize>,
    factors: functions::Factors,
    /// The thread's own, given back when done.
    templates: Templates,
}

impl Default for WindowScratch {
    fn default() -> Self {
        WindowScratch {
            args: Vec::new(),
            resets: Vec::new(),
            buf: Vec::new(),
            ends: Vec::new(),
            factors: functions::Factors::default(),
            templates: Templates::of_thread(),
        }
    }
}

impl Drop for WindowScratch {
    fn drop(&mut self) {
        std::mem::take(&mut self.templates).give_back();
    }
}

/// Where each step's window lay in the samples of series whose windows were walked, and
/// the factor of its edges ([`functions::edge_factor`]), by their timestamps. A scrape
/// stamps every series of a target with one time, so the next series of a target finds
/// its windows here instead of walking its samples and measuring its edges again,
/// whether it comes right after (a host's CPU modes) or after one series of every
/// other target (a histogram's buckets grouped across hosts).
///
/// Their buffers stay with the thread from one window function to the next
/// ([`Templates::of_thread`]): fresh ones would be written into cold memory.
#[derive(Default)]
struct Templates {
    /// By sample count, first and last timestamp: where in `list`.
    index: HashMap<(usize, i64, i64), usize, IntHash>,
    /// The first `used` are this window function's; the rest are buffers to reuse.
    list: Vec<Template>,
    used: usize,
    /// Bytes the templates in use hold.
    bytes: usize,
}

thread_local! {
    static KEPT_TEMPLATES: std::cell::Cell<Option<Templates>> = const { std::cell::Cell::new(None) };
}

#[derive(Default)]
struct Template {
    times: Vec<i64>,
    /// Per step: where the window starts and ends in the samples, and its edge factor.
    steps: Vec<(u32, u32, f64)>,
}

/// Bytes of templates one thread's windows keep before they stop taking new ones, which
/// bounds what keeping them costs when none serves: 20 hosts' timestamps over 6 hours at
/// 15 s fit, as do 100 hosts' over 2 hours.
const TEMPLATE_BYTES: usize = 640 << 10;

/// Templates one thread's windows keep at most.
const TEMPLATES: usize = 256;

impl Templates {
    /// This thread's templates, none in use, with the buffers the last window function
    /// on the thread left.
    fn of_thread() -> Templates {
        let mut t = KEPT_TEMPLATES.take().unwrap_or_default();
        t.index.clear();
        (t.used, t.bytes) = (0, 0);
        t
    }

    /// Keeps the buffers for the thread's next window function, unless they have grown
    /// past twice the bytes one may use.
    fn give_back(self) {
        let held: usize = self
            .list
            .iter()
            .map(|t| t.times.capacity() * 8 + t.steps.capacity() * 16)
            .sum();
        if held <= 2 * TEMPLATE_BYTES {
            KEPT_TEMPLATES.set(Some(self));
        }
    }

    /// What templates are found by: sample count, first and last timestamp.
    fn key(samples: &[(i64, f64)]) -> Option<(usize, i64, i64)> {
        Some((samples.len(), samples.first()?.0, samples.last()?.0))
    }

    /// The template for samples at these times, if one was kept.
    fn find(&self, samples: &[(i64, f64)], steps: usize) -> Option<&Template> {
        let t = self.list.get(*self.index.get(&Self::key(samples)?)?)?;
        (t.steps.len() == steps && same_times(samples, &t.times)).then_some(t)
    }

    /// Room for a template of these samples, whose times none has: a new one to fill.
    fn room(&mut self, samples: &[(i64, f64)], steps: usize) -> Option<&mut Template> {
        let key = Self::key(samples)?;
        let bytes = samples.len() * 8 + steps * 16;
        if self.bytes + bytes > TEMPLATE_BYTES
            || self.used == TEMPLATES
            || samples.len() > u32::MAX as usize
        {
            return None;
        }
        if self.index.contains_key(&key) {
            // Other times between the same ends: the first kept stays.
            return None;
        }
        self.bytes += bytes;
        self.index.insert(key, self.used);
        if self.used == self.list.len() {
            self.list.push(Template::default());
        }
        let t = self.list.get_mut(self.used)?;
        self.used += 1;
        t.times.clear();
        t.times.extend(samples.iter().map(|s| s.0));
        t.steps.clear();
        Some(t)
    }
}

/// Whether `samples` are at `times`, compared sixteen at a time without a branch each:
/// the loop the compiler unrolls and vectorises (a series' times are read whole when
/// they match, which they mostly do).
fn same_times(samples: &[(i64, f64)], times: &[i64]) -> bool {
    if samples.len() != times.len() {
        return false;
    }
    let (a, b) = (samples.chunks(16), times.chunks(16));
    a.zip(b)
        .all(|(s, t)| s.iter().zip(t).fold(0i64, |diff, (s, &t)| diff | (s.0 ^ t)) == 0)
}

/// The series of a range selector or subquery, with how to cut windows from them.
struct RangeInput {
    series: Vec<RangeSeries>,
    range: i64,
    offset: i64,
    /// A fixed evaluation time from `@`.
    at: Option<i64>,
    /// The one metric name every series has, when a selector's `__name__="..."` says so:
    /// then nothing needs to look at each series' name.
    one_name: Option<String>,
}

/// Evaluates expressions over one grid of steps. Subqueries evaluate their inner
/// expression with an evaluator of their own grid.
struct Evaluator<'a> {
    ctx: &'a Ctx<'a>,
    start: i64,
    step: i64,
    n: usize,
}

/// The binary operators that compute values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BinOp {
    Add,
    Sub,
    Mul,
    Div,
    Mod,
    Pow,
    Atan2,
    Eq,
    Ne,
    Gt,
    Lt,
    Ge,
    Le,
}

impl BinOp {
    fn parse(op: &str) -> Result<Self, QueryError> {
        Ok(match op {
            "+" => BinOp::Add,
            "-" => BinOp::Sub,
            "*" => BinOp::Mul,
            "/" => BinOp::Div,
            "%" => BinOp::Mod,
            "^" => BinOp::Pow,
            "atan2" => BinOp::Atan2,
            "==" => BinOp::Eq,
            "!=" => BinOp::Ne,
            ">" => BinOp::Gt,
            "<" => BinOp::Lt,
            ">=" => BinOp::Ge,
            "<=" => BinOp::Le,
            other => {
                return Err(QueryError::Unsupported(format!(
                    "the binary operator {other:?}"
                )))
            }
        })
    }

    fn is_comparison(self) -> bool {
        matches!(
            self,
            BinOp::Eq | BinOp::Ne | BinOp::Gt | BinOp::Lt | BinOp::Ge | BinOp::Le
        )
    }

    fn arith(self, l: f64, r: f64) -> f64 {
        match self {
            BinOp::Add => l + r,
            BinOp::Sub => l - r,
            BinOp::Mul => l * r,
            BinOp::Div => l / r,
            BinOp::Mod => l % r,
            BinOp::Pow => l.powf(r),
            BinOp::Atan2 => l.atan2(r),
            _ => f64::NAN,
        }
    }

    fn compare(self, l: f64, r: f64) -> bool {
        match self {
            BinOp::Eq => l == r,
            BinOp::Ne => l != r,
            BinOp::Gt => l > r,
            BinOp::Lt => l < r,
            BinOp::Ge => l >= r,
            BinOp::Le => l <= r,
            _ => false,
        }
    }

    /// Applies the operator; `kept` is the value a filtering comparison keeps. `None`
    /// when a comparison filters the element out.
    fn apply(self, l: f64, r: f64, return_bool: bool, kept: f64) -> Option<f64> {
        if !self.is_comparison() {
            return Some(self.arith(l, r));
        }
        let keep = self.compare(l, r);
        if return_bool {
            Some(if keep { 1.0 } else { 0.0 })
        } else if keep {
            Some(kept)
        } else {
            None
        }
    }

    /// Whether the result loses the metric name.
    fn drops_name(self, return_bool: bool) -> bool {
        !self.is_comparison() || return_bool
    }
}

fn offset_ms(o: &Option<Offset>) -> i64 {
    match o {
        None => 0,
        Some(Offset::Pos(d)) => d.as_millis() as i64,
        Some(Offset::Neg(d)) => -(d.as_millis() as i64),
    }
}

fn system_time_ms(t: &SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_millis() as i64,
        Err(e) => -(e.duration().as_millis() as i64),
    }
}

fn unwrap_parens(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => unwrap_parens(&p.expr),
        other => other,
    }
}

impl Evaluator<'_> {
    fn ts(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    fn end(&self) -> i64 {
        self.ts(self.n - 1)
    }

    fn resolve_at(&self, at: &Option<AtModifier>) -> Option<i64> {
        at.as_ref().map(|a| match a {
            AtModifier::Start => self.ctx.query_start,
            AtModifier::End => self.ctx.query_end,
            AtModifier::At(t) => system_time_ms(t),
        })
    }

    /// The earliest and latest evaluation time a selector sees.
    fn time_span(&self, at: Option<i64>) -> (i64, i64) {
        at.map_or((self.start, self.end()), |t| (t, t))
    }

    fn eval(&self, e: &Expr) -> Result<Val, QueryError> {
        match e {
            Expr::NumberLiteral(n) => Ok(Val::Scalar(vec![n.val; self.n])),
            Expr::StringLiteral(s) => Ok(Val::String(s.val.clone())),
            Expr::Paren(p) => self.eval(&p.expr),
            Expr::Unary(u) => match self.eval(&u.expr)? {
                Val::Scalar(v) => Ok(Val::Scalar(v.into_iter().map(|x| -x).collect())),
                Val::Vector(mut vs) => {
                    for s in &mut vs {
                        s.drop_name(self.ctx.delayed_name_removal);
                        for v in s.values.iter_mut().flatten() {
                            *v = -*v;
                        }
                    }
                    Ok(Val::Vector(merge_same_labels(vs)?))
                }
                _ => Err(QueryError::BadData(
                    "unary minus needs a scalar or an instant vector".into(),
                )),
            },
            Expr::VectorSelector(vs) => Ok(Val::Vector(self.instant_selector(vs, false)?)),
            Expr::MatrixSelector(_) | Expr::Subquery(_) => self.top_level_range(e),
            Expr::Call(c) => self.call(c),
            Expr::Aggregate(a) => self.aggregate(a),
            Expr::Binary(b) => self.binary(b),
            Expr::Extension(_) => Err(QueryError::Unsupported("extension expressions".into())),
        }
    }

    /// An instant selector at every step; with `timestamps`, each value is the timestamp
    /// (seconds) of the sample selected instead of its value.
    fn instant_selector(
        &self,
        vs: &VectorSelector,
        timestamps: bool,
    ) -> Result<Vec<StepSeries>, QueryError> {
        let at = self.resolve_at(&vs.at);
        let offset = offset_ms(&vs.offset);
        let (lo, hi) = self.time_span(at);
        let lookback = self.ctx.lookback;
        let matchers = selector_matchers(vs)?;
        // One evaluation time: the querier's range is that time's lookback window, so
        // the answer is the series' newest sample in range (which the head often knows
        // without decoding anything, or copying any chunk).
        let single = at.is_some() || self.n == 1;
        let querier = self.ctx.db.querier(lo - offset - lookback + 1, hi - offset);
        // Taken here, not deferred to the threads that read them: at 100 hosts
        // `min by (instance) (node_filesystem_avail_bytes)` took 20-25 % longer with a
        // deferred selection.
        let selected = if single {
            querier.select_newest(&matchers)?
        } else {
            querier.select(&matchers)?
        };
        let pick = |(t, v): (i64, f64)| if timestamps { t as f64 / 1000.0 } else { v };
        // Each series of a range query decodes its samples: spread by the work, as
        // window functions are.
        let min = if !single && self.parallel_windows(selected.len()) {
            2
        } else {
            PARALLEL_MIN_SERIES_INSTANT
        };
        // Dropped here: on the dropper thread, what this selection holds took longer to
        // let go of than it saved (`min by (instance) (node_filesystem_avail_bytes)` at
        // 100 hosts 5-10 % slower), unlike the deferred series of window functions.
        on_cores(&selected, min, |part| {
            let mut out = Vec::with_capacity(part.len());
            let mut samples = Vec::new();
            let mut ahead = None;
            for (k, series) in part.iter().enumerate() {
                if !single && k % READ_AHEAD_SERIES == 0 {
                    // The guard before lets its bytes go first.
                    drop(ahead.take());
                    let batch = &part[k..(k + READ_AHEAD_SERIES).min(part.len())];
                    ahead = Some(read_ahead(batch));
                }
                let mut values = vec![None; self.n];
                if single {
                    let last = series.last_sample();
                    self.ctx.load(usize::from(last.is_some()))?;
                    if let Some(s) = last.filter(|s| !is_stale_nan(s.1)) {
                        values.fill(Some(pick(s)));
                    }
                } else {
                    samples.clear();
                    series.samples_into(&mut samples);
                    self.ctx.load(samples.len())?;
                    let mut j = 0;
                    for (i, slot) in values.iter_mut().enumerate() {
                        let t = self.ts(i) - offset;
                        while j < samples.len() && samples[j].0 <= t {
                            j += 1;
                        }
                        if j > 0 {
                            let (st, sv) = samples[j - 1];
                            if st > t - lookback && !is_stale_nan(sv) {
                                *slot = Some(pick(samples[j - 1]));
                            }
                        }
                    }
                }
                let present = values.iter().filter(|v| v.is_some()).count() as u64;
                self.ctx.queryable.fetch_add(present, Ordering::Relaxed);
                if present > 0 {
                    out.push(StepSeries::new(series.labels.clone(), values));
                }
            }
            Ok(out)
        })
    }

    /// The series behind a range-vector argument: a range selector or a subquery.
    fn range_input(&self, e: &Expr) -> Result<RangeInput, QueryError> {
        match e {
            Expr::Paren(p) => self.range_input(&p.expr),
            Expr::MatrixSelector(ms) => {
                let vs = &ms.vs;
                let at = self.resolve_at(&vs.at);
                let offset = offset_ms(&vs.offset);
                let range = ms.range.as_millis() as i64;
                let (lo, hi) = self.time_span(at);
                let matchers = selector_matchers(vs)?;
                // Each series takes its chunks where its samples are read: on the
                // threads that share the series out.
                let selected = self
                    .ctx
                    .db
                    .querier(lo - offset - range + 1, hi - offset)
                    .select_deferred(&matchers)?;
                let series = selected
                    .into_iter()
                    .map(|mut s| RangeSeries {
                        // The series is only read for its samples from here on.
                        labels: std::mem::replace(&mut s.labels, Labels::empty()),
                        points: Points::Stored(s),
                        drop_name: false,
                    })
                    .collect();
                let one_name = matchers
                    .iter()
                    .find(|m| m.name == METRIC_NAME && matches!(m.kind, MatchKind::Equal))
                    .map(|m| m.value.clone());
                Ok(RangeInput {
                    series,
                    range,
                    offset,
                    at,
                    one_name,
                })
            }
            Expr::Subquery(sq) => {
                let at = self.resolve_at(&sq.at);
                let offset = offset_ms(&sq.offset);
                let range = sq.range.as_millis() as i64;
                let step = sq
                    .step
                    .map(|d| d.as_millis() as i64)
                    .filter(|&s| s > 0)
                    .unwrap_or(self.ctx.subquery_step);
                let (lo, hi) = self.time_span(at);
                // The first step-aligned time after the earliest window start.
                let first = lo - offset - range;
                let inner_start = first.div_euclid(step) * step
                    + if first.rem_euclid(step) == 0 { 0 } else { step };
                let inner_end = hi - offset;
                let mut series = Vec::new();
                if inner_end >= inner_start {
                    let n = (inner_end - inner_start) / step + 1;
                    if n > 50_000_000 {
                        return Err(QueryError::Execution(format!(
                            "subquery would evaluate {n} steps"
                        )));
                    }
                    let inner = Evaluator {
                        ctx: self.ctx,
                        start: inner_start,
                        step,
                        n: n as usize,
                    };
                    match inner.eval(&sq.expr)? {
                        Val::Vector(vs) => {
                            for s in vs {
                                let points: Vec<(i64, f64)> = s
                                    .values
                                    .iter()
                                    .enumerate()
                                    .filter_map(|(i, v)| v.map(|v| (inner.ts(i), v)))
                                    .collect();
                                self.ctx.load(points.len())?;
                                series.push(RangeSeries {
                                    labels: s.labels,
                                    points: Points::Computed(points),
                                    drop_name: s.drop_name,
                                });
                            }
                        }
                        _ => {
                            return Err(QueryError::BadData(
                                "subquery is only allowed on instant vectors".into(),
                            ))
                        }
                    }
                }
                Ok(RangeInput {
                    series,
                    range,
                    offset,
                    at,
                    one_name: None,
                })
            }
            _ => Err(QueryError::BadData(
                "expected a range vector (a range selector or a subquery)".into(),
            )),
        }
    }

    /// The window of `input` seen at step `i`: `(start, end]` and the sample slice.
    fn window_bounds(&self, input: &RangeInput, i: usize) -> (i64, i64) {
        let end = input.at.unwrap_or_else(|| self.ts(i)) - input.offset;
        (end - input.range, end)
    }

    /// A range selector or subquery at the top of an instant query: its raw points.
    fn top_level_range(&self, e: &Expr) -> Result<Val, QueryError> {
        if self.n != 1 {
            return Err(QueryError::BadData(
                "a range vector cannot be evaluated at several steps".into(),
            ));
        }
        let input = self.range_input(e)?;
        let (start, end) = self.window_bounds(&input, 0);
        let mut out = Vec::with_capacity(input.series.len());
        let mut buf = Vec::new();
        for s in &input.series {
            let p: Vec<(i64, f64)> = self
                .points(s, &mut buf)?
                .iter()
                .copied()
                .filter(|&(t, _)| t > start && t <= end)
                .collect();
            if !p.is_empty() {
                let mut labels = s.labels.clone();
                if s.drop_name {
                    labels.remove(METRIC_NAME);
                }
                out.push((labels, p));
            }
        }
        Ok(Val::Matrix(out))
    }

    /// The points of a range series, decoding a stored one into `buf`.
    fn points<'b>(
        &self,
        s: &'b RangeSeries,
        buf: &'b mut Vec<(i64, f64)>,
    ) -> Result<&'b [(i64, f64)], QueryError> {
        Ok(self.points_with_drops(s, buf)?.0)
    }

    /// [`Evaluator::points`], and whether any point is lower than the one before it.
    /// Stale markers are rare: one pass that writes nothing looks for them and for drops
    /// together, and only a series that has one is cleaned.
    #[allow(clippy::type_complexity)]
    fn points_with_drops<'b>(
        &self,
        s: &'b RangeSeries,
        buf: &'b mut Vec<(i64, f64)>,
    ) -> Result<(&'b [(i64, f64)], bool), QueryError> {
        let drops = |p: &[(i64, f64)]| {
            p.iter()
                .skip(1)
                .zip(p)
                .fold(false, |any, (b, a)| any | (b.1 < a.1))
        };
        match &s.points {
            Points::Computed(p) => Ok((p, drops(p))),
            Points::Stored(series) => {
                buf.clear();
                series.samples_into(buf);
                let first_stale = buf.first().is_some_and(|s| is_stale_nan(s.1));
                let (stale, mut dropping) = buf
                    .iter()
                    .skip(1)
                    .zip(buf.iter())
                    .fold((first_stale, false), |(stale, dropping), (b, a)| {
                        (stale | is_stale_nan(b.1), dropping | (b.1 < a.1))
                    });
                if stale {
                    buf.retain(|&(_, v)| !is_stale_nan(v));
                    dropping = drops(buf);
                }
                self.ctx.load(buf.len())?;
                Ok((buf, dropping))
            }
        }
    }

    /// Whether a window function over `series` series at this query's steps is worth
    /// spreading over threads.
    fn parallel_windows(&self, series: usize) -> bool {
        if self.n > 1 {
            series.saturating_mul(self.n) >= PARALLEL_MIN_WINDOWS
        } else {
            series >= PARALLEL_MIN_SERIES_INSTANT
        }
    }

    /// Applies a window function to every series of `input` at every step, the series
    /// split across the machine's cores when there are many.
    /// The output series take the input's labels.
    fn apply_windows(
        &self,
        mut input: RangeInput,
        spec: &functions::WindowSpec,
        scalars: &[Vec<f64>],
        non_counters: &NonCounters,
    ) -> Result<Vec<StepSeries>, QueryError> {
        let min = if self.parallel_windows(input.series.len()) {
            2
        } else {
            usize::MAX
        };
        let values = on_cores(&input.series, min, |part| {
            self.windows_of(&input, part, spec, scalars)
        })?;
        let distinct = self.windows_keep_labels_distinct(&input, spec);
        let mut out = Vec::with_capacity(values.iter().filter(|v| v.is_some()).count());
        for (series, values) in input.series.iter_mut().zip(values) {
            let Some(values) = values else {
                continue;
            };
            non_counters.saw(&series.labels);
            let mut s = StepSeries::new(std::mem::take(&mut series.labels), values);
            s.drop_name = series.drop_name;
            if !spec.keep_name {
                s.drop_name(self.ctx.delayed_name_removal);
            }
            out.push(s);
        }
        let_go(input.series);
        if distinct {
            Ok(out)
        } else {
            merge_same_labels(out)
        }
    }

    /// Whether applying `spec` to `input` cannot give two series the same labels. A range
    /// selector's series have distinct label sets; only removing names that differ right
    /// away can make two of them equal.
    fn windows_keep_labels_distinct(
        &self,
        input: &RangeInput,
        spec: &functions::WindowSpec,
    ) -> bool {
        if input.one_name.is_some() {
            // A selector's series, all of one name.
            return true;
        }
        let stored = input
            .series
            .iter()
            .all(|s| matches!(s.points, Points::Stored(_)));
        let first_name = input.series.first().and_then(|s| s.labels.metric_name());
        input.series.len() < 2
            || stored
                && (spec.keep_name
                    || self.ctx.delayed_name_removal
                    || input
                        .series
                        .iter()
                        .all(|s| s.labels.metric_name() == first_name))
    }

    /// Evaluates the arguments of a window function's call: its range vector and scalars.
    fn window_call(&self, c: &Call, spec: functions::WindowSpec) -> Result<WindowCall, QueryError> {
        let name = c.func.name;
        let range_arg = c.args.args.get(spec.range_arg).ok_or_else(|| {
            QueryError::BadData(format!(
                "{name}() is missing argument {}",
                spec.range_arg + 1
            ))
        })?;
        let input = self.range_input(range_arg)?;
        let mut scalars = Vec::new();
        for (j, a) in c.args.args.iter().enumerate() {
            if j != spec.range_arg {
                scalars.push(self.eval_scalar(a, &format!("argument {} of {name}()", j + 1))?);
            }
        }
        // Taken before the windows: their output takes the input's labels.
        let non_counters = if matches!(name, "rate" | "increase") {
            NonCounters::of(&input)
        } else {
            NonCounters::default()
        };
        Ok(WindowCall {
            spec,
            input,
            scalars,
            non_counters,
        })
    }

    /// What a window function's call notes once it has output: `rate` and `increase`
    /// over series whose names do not look like counters get an info, and
    /// `quantile_over_time` with a quantile outside [0, 1] a warning, as in Prometheus.
    fn note_output(&self, func: &str, scalars: &[Vec<f64>], non_counters: NonCounters) {
        if func == "quantile_over_time" {
            if let Some(q) = scalars.first() {
                self.ctx.invalid_quantile(q, func, 0);
            }
        }
        for metric in non_counters.seen() {
            self.ctx.annotate(
                false,
                format!("metric might not be a counter, name does not end in _total/_sum/_count/_bucket: {metric:?}"),
                func,
                Some(0),
            );
        }
    }

    /// `op(f(x[r]))` for an aggregation that folds values one at a time over a window
    /// function of a range selector, without holding every series' values: each group's
    /// members are evaluated and folded in turn, the groups spread over the cores. The
    /// same answer as evaluating the function, then the aggregation; `None` when `e` is
    /// not of that shape.
    fn aggregate_windows(
        &self,
        op: &str,
        kind: aggregate::Kind,
        e: &Expr,
        modifier: Option<&LabelModifier>,
    ) -> Result<Option<Vec<StepSeries>>, QueryError> {
        let Expr::Call(c) = unwrap_parens(e) else {
            return Ok(None);
        };
        let name = c.func.name;
        let Some(spec) = functions::window_function(name) else {
            return Ok(None);
        };
        let range_arg = c.args.args.get(spec.range_arg).map(|a| unwrap_parens(a));
        if !matches!(range_arg, Some(Expr::MatrixSelector(_))) {
            return Ok(None);
        }
        // Grouping by the name would see whether the function removed it.
        if let Some(LabelModifier::Include(by)) = modifier {
            if by.labels.iter().any(|n| n == METRIC_NAME) {
                return Ok(None);
            }
        }
        let WindowCall {
            spec,
            input,
            scalars,
            non_counters,
        } = self.window_call(c, spec)?;
        if !self.windows_keep_labels_distinct(&input, &spec) {
            // The function's own error about equal label sets comes first.
            let out = self.apply_windows(input, &spec, &scalars, &non_counters)?;
            if !out.is_empty() {
                self.note_output(name, &scalars, non_counters);
            }
            return Ok(Some(aggregate::aggregate(
                op,
                out,
                modifier,
                Param::None,
                self.n,
            )?));
        }
        // Groups in order of their first member, as the aggregation forms them.
        let (mut group_labels, members) =
            aggregate::group(input.series.iter().map(|s| &s.labels), modifier);
        // Runs of groups with about the same number of members, several per core.
        let per = input
            .series
            .len()
            .div_ceil(query_threads() * PARTS_PER_THREAD)
            .max(1);
        let mut runs: Vec<std::ops::Range<usize>> = Vec::new();
        let (mut start, mut size) = (0, 0);
        for (g, m) in members.iter().enumerate() {
            size += m.len();
            if size >= per {
                runs.push(start..g + 1);
                (start, size) = (g + 1, 0);
            }
        }
        if start < members.len() {
            runs.push(start..members.len());
        }
        let min_runs = if self.parallel_windows(input.series.len()) {
            2
        } else {
            usize::MAX
        };
        let mut done = on_cores(&runs, min_runs, |part| {
            let mut out = Vec::new();
            let mut scratch = WindowScratch::default();
            let mut values = vec![None; self.n];
            let groups: Vec<usize> = part.iter().flat_map(Clone::clone).collect();
            let mut ahead = None;
            for (k, &g) in groups.iter().enumerate() {
                if ahead.as_ref().is_none_or(|&(until, _)| k >= until) {
                    // The next groups, up to about READ_AHEAD_SERIES members; the guard
                    // before lets its bytes go first.
                    drop(ahead.take());
                    let (mut until, mut n) = (k, 0);
                    while until < groups.len() && n < READ_AHEAD_SERIES {
                        n += members[groups[until]].len();
                        until += 1;
                    }
                    let series = groups[k..until]
                        .iter()
                        .flat_map(|&g| &members[g])
                        .filter_map(|&m| input.series[m].stored());
                    ahead = Some((until, read_ahead(series)));
                }
                let mut acc = aggregate::GroupAcc::new(kind, self.n);
                let mut first = None;
                for &m in &members[g] {
                    let series = &input.series[m];
                    if self.window_values(
                        &input,
                        series,
                        &spec,
                        &scalars,
                        &mut scratch,
                        &mut values,
                    )? {
                        acc.add(&values);
                        first.get_or_insert(m);
                        non_counters.saw(&series.labels);
                    }
                }
                if let Some(first) = first {
                    out.push((first, g, acc.finish()));
                }
            }
            Ok(out)
        })?;
        if !done.is_empty() {
            self.note_output(name, &scalars, non_counters);
        }
        let_go(input.series);
        done.sort_unstable_by_key(|d| d.0);
        let drop_name = !spec.keep_name && self.ctx.delayed_name_removal;
        let mut out = Vec::with_capacity(done.len());
        for (_, g, values) in done {
            if values.iter().any(Option::is_some) {
                let mut s = StepSeries::new(std::mem::take(&mut group_labels[g]), values);
                s.drop_name = drop_name;
                out.push(s);
            }
        }
        Ok(Some(out))
    }

    /// The values of [`Evaluator::apply_windows`] for some of the series, in order; `None`
    /// for a series without any.
    #[allow(clippy::type_complexity)]
    fn windows_of(
        &self,
        input: &RangeInput,
        series_list: &[RangeSeries],
        spec: &functions::WindowSpec,
        scalars: &[Vec<f64>],
    ) -> Result<Vec<Option<Vec<Option<f64>>>>, QueryError> {
        let mut out = Vec::with_capacity(series_list.len());
        let mut scratch = WindowScratch::default();
        for batch in series_list.chunks(READ_AHEAD_SERIES) {
            let _ahead = read_ahead(batch.iter().filter_map(RangeSeries::stored));
            for series in batch {
                let mut values = vec![None; self.n];
                let any =
                    self.window_values(input, series, spec, scalars, &mut scratch, &mut values)?;
                out.push(any.then_some(values));
            }
        }
        Ok(out)
    }

    /// A window function's value for one series at every step, into `values` (one slot
    /// per step); returns whether any step has one.
    fn window_values(
        &self,
        input: &RangeInput,
        series: &RangeSeries,
        spec: &functions::WindowSpec,
        scalars: &[Vec<f64>],
        scratch: &mut WindowScratch,
        values: &mut [Option<f64>],
    ) -> Result<bool, QueryError> {
        self.ctx.check_deadline()?;
        let WindowScratch {
            args,
            resets,
            buf,
            ends,
            factors,
            templates,
        } = scratch;
        args.resize(scalars.len(), 0.0);
        let (samples, dropping) = self.points_with_drops(series, buf)?;
        // resets[j]: how many of samples[1..=j] are lower than their predecessor; left
        // empty when none is, as in most series (found without writes).
        resets.clear();
        if dropping {
            let mut count = 0u32;
            resets.push(0);
            for pair in samples.windows(2) {
                count += u32::from(pair[1].1 < pair[0].1);
                resets.push(count);
            }
        }
        let resets = &resets[..];
        let windows = (samples, resets);
        let kept = (&mut *ends, &mut *factors, &mut *templates);
        let queryable = match spec.extrapolated {
            // Monomorphic loops for the most common functions; the same arithmetic as
            // through `spec.f`.
            Some((true, true)) => {
                self.extrapolated_windows::<true, true>(input, windows, kept, values)?
            }
            Some((true, false)) => {
                self.extrapolated_windows::<true, false>(input, windows, kept, values)?
            }
            Some((false, false)) => {
                self.extrapolated_windows::<false, false>(input, windows, kept, values)?
            }
            _ => self.slide(input, samples, resets, ends, values, |i, _, w| {
                for (a, s) in args.iter_mut().zip(scalars) {
                    *a = s[i];
                }
                (spec.f)(w, args).map_err(QueryError::Execution)
            })?,
        };
        self.ctx.queryable.fetch_add(queryable, Ordering::Relaxed);
        Ok(values.iter().any(Option::is_some))
    }

    /// `f(step, where the window starts in samples, window)` at each step of `samples`
    /// into `values`; returns how many samples the windows held in all. `resets[j]`
    /// counts the drops in `samples[..=j]`; empty when there are none. `ends` is scratch
    /// space.
    #[inline(always)]
    fn slide(
        &self,
        input: &RangeInput,
        samples: &[(i64, f64)],
        resets: &[u32],
        ends: &mut Vec<usize>,
        values: &mut [Option<f64>],
        mut f: impl FnMut(usize, usize, &Window<'_>) -> Result<Option<f64>, QueryError>,
    ) -> Result<u64, QueryError> {
        let mut queryable = 0u64;
        let (mut lo, mut hi) = (0, 0);
        // A range of whole steps starts where the window that many steps before ended
        // (`rate(x[5m])` at a 1m step): its start is found without a search.
        let behind = if input.at.is_none() && self.step > 0 && input.range % self.step == 0 {
            (input.range / self.step) as usize
        } else {
            0
        };
        ends.clear();
        for (i, slot) in values.iter_mut().enumerate() {
            let (range_start, range_end) = self.window_bounds(input, i);
            if input.at.is_some() {
                lo = samples.partition_point(|s| s.0 <= range_start);
                hi = samples.partition_point(|s| s.0 <= range_end);
            } else {
                while hi < samples.len() && samples[hi].0 <= range_end {
                    hi += 1;
                }
                ends.push(hi);
                if behind > 0 && i >= behind {
                    lo = ends[i - behind];
                } else {
                    while lo < hi && samples[lo].0 <= range_start {
                        lo += 1;
                    }
                }
            }
            queryable += (hi - lo) as u64;
            let w = self.window(samples, resets, i, (lo, hi), (range_start, range_end));
            *slot = f(i, lo, &w)?;
        }
        Ok(queryable)
    }

    /// The window of step `i` over `samples[lo..hi]`, between the step's bounds.
    #[inline(always)]
    fn window<'s>(
        &self,
        samples: &'s [(i64, f64)],
        resets: &[u32],
        i: usize,
        (lo, hi): (usize, usize),
        (range_start, range_end): (i64, i64),
    ) -> Window<'s> {
        Window {
            samples: &samples[lo..hi],
            range_start,
            range_end,
            eval_time: self.ts(i),
            may_have_resets: hi > lo + 1 && !resets.is_empty() && resets[hi - 1] != resets[lo],
        }
    }

    /// `rate`, `increase` or `delta` at every step of `samples` into `values`, as
    /// [`Evaluator::slide`] with [`functions::extrapolated_rate_with`] gives them: the
    /// windows taken from a template when the samples lie at its times, else walked (and
    /// kept as a template while there is room). Returns how many samples the windows held
    /// in all.
    fn extrapolated_windows<const COUNTER: bool, const RATE: bool>(
        &self,
        input: &RangeInput,
        (samples, resets): (&[(i64, f64)], &[u32]),
        (ends, factors, templates): (&mut Vec<usize>, &mut functions::Factors, &mut Templates),
        values: &mut [Option<f64>],
    ) -> Result<u64, QueryError> {
        let (is_counter, is_rate) = (COUNTER, RATE);
        // With `@` every step has the same window: nothing to keep.
        let kept = input.at.is_none();
        if let Some(template) = kept
            .then(|| templates.find(samples, values.len()))
            .flatten()
        {
            let mut queryable = 0u64;
            for (i, (slot, &(lo, hi, factor))) in values.iter_mut().zip(&template.steps).enumerate()
            {
                let (lo, hi) = (lo as usize, hi as usize);
                queryable += (hi - lo) as u64;
                let bounds = self.window_bounds(input, i);
                let w = self.window(samples, resets, i, (lo, hi), bounds);
                *slot = functions::extrapolated_rate_by(&w, is_counter, is_rate, factor);
            }
            return Ok(queryable);
        }
        let Some(template) = kept
            .then(|| templates.room(samples, values.len()))
            .flatten()
        else {
            return self.slide(input, samples, resets, ends, values, |_, _, w| {
                Ok(functions::extrapolated_rate_with(
                    w,
                    is_counter,
                    is_rate,
                    Some(factors),
                ))
            });
        };
        let steps = &mut template.steps;
        self.slide(input, samples, resets, ends, values, |_, lo, w| {
            let factor = functions::edge_factor(w, is_rate, factors);
            steps.push((lo as u32, (lo + w.samples.len()) as u32, factor));
            Ok(functions::extrapolated_rate_by(
                w, is_counter, is_rate, factor,
            ))
        })
    }

    fn constant(&self, v: f64) -> Val {
        Val::Scalar(vec![v; self.n])
    }

    fn eval_scalar(&self, e: &Expr, what: &str) -> Result<Vec<f64>, QueryError> {
        match self.eval(e)? {
            Val::Scalar(v) => Ok(v),
            _ => Err(QueryError::BadData(format!("{what} must be a scalar"))),
        }
    }

    fn eval_vector(&self, e: &Expr, what: &str) -> Result<Vec<StepSeries>, QueryError> {
        match self.eval(e)? {
            Val::Vector(v) => Ok(v),
            _ => Err(QueryError::BadData(format!(
                "{what} must be an instant vector"
            ))),
        }
    }

    fn call(&self, c: &Call) -> Result<Val, QueryError> {
        let name = c.func.name;
        let args: Vec<&Expr> = c.args.args.iter().map(|a| a.as_ref()).collect();
        let arg = |i: usize| {
            args.get(i).copied().ok_or_else(|| {
                QueryError::BadData(format!("{name}() is missing argument {}", i + 1))
            })
        };
        if let Some(spec) = functions::window_function(name) {
            let w = self.window_call(c, spec)?;
            let out = self.apply_windows(w.input, &w.spec, &w.scalars, &w.non_counters)?;
            if !out.is_empty() {
                self.note_output(name, &w.scalars, w.non_counters);
            }
            return Ok(Val::Vector(out));
        }
        if let Some(f) = functions::value_function(name) {
            let vs = self.eval_vector(arg(0)?, &format!("the argument of {name}()"))?;
            return Ok(Val::Vector(map_values(
                vs,
                self.ctx.delayed_name_removal,
                |_, v| Some(f(v)),
            )?));
        }
        if let Some(f) = functions::date_function(name) {
            let vs = match args.first() {
                Some(a) => self.eval_vector(a, &format!("the argument of {name}()"))?,
                None => vec![StepSeries::new(
                    Labels::empty(),
                    (0..self.n)
                        .map(|i| Some(self.ts(i) as f64 / 1000.0))
                        .collect(),
                )],
            };
            return Ok(Val::Vector(map_values(
                vs,
                self.ctx.delayed_name_removal,
                |_, v| Some(f(v)),
            )?));
        }
        match name {
            "time" => Ok(Val::Scalar(
                (0..self.n).map(|i| self.ts(i) as f64 / 1000.0).collect(),
            )),
            "pi" => Ok(Val::Scalar(vec![std::f64::consts::PI; self.n])),
            "start" => Ok(self.constant(self.ctx.query_start as f64 / 1000.0)),
            "end" => Ok(self.constant(self.ctx.query_end as f64 / 1000.0)),
            "range" => {
                Ok(self.constant((self.ctx.query_end - self.ctx.query_start) as f64 / 1000.0))
            }
            "step" => Ok(self.constant(self.ctx.query_step as f64 / 1000.0)),
            "min_of" | "max_of" => {
                let a = self.eval_scalar(arg(0)?, &format!("the first argument of {name}()"))?;
                let b = self.eval_scalar(arg(1)?, &format!("the second argument of {name}()"))?;
                let f = if name == "min_of" {
                    functions::go_min
                } else {
                    functions::go_max
                };
                Ok(Val::Scalar(
                    a.iter().zip(&b).map(|(&x, &y)| f(x, y)).collect(),
                ))
            }
            "vector" => {
                let v = self.eval_scalar(arg(0)?, "the argument of vector()")?;
                Ok(Val::Vector(vec![StepSeries::new(
                    Labels::empty(),
                    v.into_iter().map(Some).collect(),
                )]))
            }
            "scalar" => {
                let vs = self.eval_vector(arg(0)?, "the argument of scalar()")?;
                Ok(Val::Scalar(
                    (0..self.n)
                        .map(|i| {
                            let mut present = vs.iter().filter_map(|s| s.values[i]);
                            match (present.next(), present.next()) {
                                (Some(v), None) => v,
                                _ => f64::NAN,
                            }
                        })
                        .collect(),
                ))
            }
            "timestamp" => {
                let a = arg(0)?;
                let mut vs = match unwrap_parens(a) {
                    Expr::VectorSelector(vs) => self.instant_selector(vs, true)?,
                    other => {
                        let mut vs = self.eval_vector(other, "the argument of timestamp()")?;
                        for s in &mut vs {
                            for (i, v) in s.values.iter_mut().enumerate() {
                                if v.is_some() {
                                    *v = Some(self.ts(i) as f64 / 1000.0);
                                }
                            }
                        }
                        vs
                    }
                };
                for s in &mut vs {
                    s.drop_name(self.ctx.delayed_name_removal);
                }
                Ok(Val::Vector(merge_same_labels(vs)?))
            }
            "round" => {
                let vs = self.eval_vector(arg(0)?, "the argument of round()")?;
                let to = match args.get(1) {
                    Some(a) => self.eval_scalar(a, "the precision of round()")?,
                    None => vec![1.0; self.n],
                };
                Ok(Val::Vector(map_values(
                    vs,
                    self.ctx.delayed_name_removal,
                    |i, v| Some(functions::round_to(v, to[i])),
                )?))
            }
            "clamp" | "clamp_min" | "clamp_max" => {
                let vs = self.eval_vector(arg(0)?, &format!("the argument of {name}()"))?;
                let first = self.eval_scalar(arg(1)?, &format!("the bound of {name}()"))?;
                let second = match name {
                    "clamp" => self.eval_scalar(arg(2)?, "the upper bound of clamp()")?,
                    _ => Vec::new(),
                };
                Ok(Val::Vector(map_values(
                    vs,
                    self.ctx.delayed_name_removal,
                    |i, v| match name {
                        "clamp" => {
                            let (min, max) = (first[i], second[i]);
                            (max >= min).then(|| functions::go_max(min, functions::go_min(max, v)))
                        }
                        "clamp_min" => Some(functions::go_max(first[i], v)),
                        _ => Some(functions::go_min(first[i], v)),
                    },
                )?))
            }
            "absent" => {
                let vs = self.eval_vector(arg(0)?, "the argument of absent()")?;
                let labels = absent_labels(arg(0)?);
                let values = (0..self.n)
                    .map(|i| vs.iter().all(|s| s.values[i].is_none()).then_some(1.0))
                    .collect();
                Ok(Val::Vector(non_empty(vec![StepSeries::new(
                    labels, values,
                )])))
            }
            "absent_over_time" => {
                let input = self.range_input(arg(0)?)?;
                let labels = absent_labels(arg(0)?);
                let mut present = vec![false; self.n];
                let mut buf = Vec::new();
                for s in &input.series {
                    let p = self.points(s, &mut buf)?;
                    for (i, seen) in present.iter_mut().enumerate() {
                        let (start, end) = self.window_bounds(&input, i);
                        *seen |= p.iter().any(|&(t, _)| t > start && t <= end);
                    }
                }
                let values = present.iter().map(|&p| (!p).then_some(1.0)).collect();
                Ok(Val::Vector(non_empty(vec![StepSeries::new(
                    labels, values,
                )])))
            }
            "label_replace" => self.label_replace(&args),
            "label_join" => self.label_join(&args),
            "sort" | "sort_desc" => {
                let mut vs = self.eval_vector(arg(0)?, &format!("the argument of {name}()"))?;
                self.sort_in_range_query(name);
                if self.n == 1 {
                    let desc = name == "sort_desc";
                    vs.sort_by(|a, b| {
                        let (x, y) = (
                            a.values[0].unwrap_or(f64::NAN),
                            b.values[0].unwrap_or(f64::NAN),
                        );
                        match (x.is_nan(), y.is_nan()) {
                            (true, true) => std::cmp::Ordering::Equal,
                            (true, false) => std::cmp::Ordering::Greater,
                            (false, true) => std::cmp::Ordering::Less,
                            _ if desc => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                            _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                        }
                    });
                }
                Ok(Val::Vector(vs))
            }
            "sort_by_label" | "sort_by_label_desc" => {
                let mut vs = self.eval_vector(arg(0)?, &format!("the argument of {name}()"))?;
                self.sort_in_range_query(name);
                let mut names = Vec::new();
                for a in &args[1..] {
                    match unwrap_parens(a) {
                        Expr::StringLiteral(s) => names.push(s.val.clone()),
                        _ => {
                            return Err(QueryError::BadData(format!("{name}() takes label names")))
                        }
                    }
                }
                let desc = name == "sort_by_label_desc";
                vs.sort_by(|a, b| {
                    let mut ord = std::cmp::Ordering::Equal;
                    for n in &names {
                        ord = natural_cmp(
                            a.labels.get(n).unwrap_or(""),
                            b.labels.get(n).unwrap_or(""),
                        );
                        if ord != std::cmp::Ordering::Equal {
                            break;
                        }
                    }
                    if ord == std::cmp::Ordering::Equal {
                        ord = a.labels.cmp(&b.labels);
                    }
                    if desc {
                        ord.reverse()
                    } else {
                        ord
                    }
                });
                Ok(Val::Vector(vs))
            }
            "histogram_quantiles" => {
                let vs = self.eval_vector(arg(0)?, "the buckets of histogram_quantiles()")?;
                let label = Self::string_arg(&args, 1, name)?;
                if !aggregate::is_valid_label_name(&label) {
                    return Err(QueryError::Execution(format!(
                        "invalid label name {label:?}"
                    )));
                }
                if vs.iter().any(|s| s.labels.get(&label).is_some()) {
                    return Err(QueryError::Execution(format!(
                        "label {label:?} already exists on the input of histogram_quantiles()"
                    )));
                }
                let mut out = Vec::new();
                let mut issues = HistogramIssues::default();
                for (k, a) in args.iter().enumerate().skip(2) {
                    let q = self.eval_scalar(a, "a quantile of histogram_quantiles()")?;
                    self.ctx.invalid_quantile(&q, name, k);
                    let text = quantile_label(q.first().copied().unwrap_or(f64::NAN));
                    for mut s in histogram_quantile(&q, vs.clone(), self.n, &mut issues)? {
                        s.labels.set(&label, &text);
                        out.push(s);
                    }
                }
                self.report(&issues, name, 0);
                Ok(Val::Vector(merge_same_labels(out)?))
            }
            "histogram_quantile" => {
                let q = self.eval_scalar(arg(0)?, "the quantile of histogram_quantile()")?;
                let vs = self.eval_vector(arg(1)?, "the buckets of histogram_quantile()")?;
                self.ctx.invalid_quantile(&q, name, 0);
                let mut issues = HistogramIssues::default();
                let out = histogram_quantile(&q, vs, self.n, &mut issues)?;
                self.report(&issues, name, 1);
                Ok(Val::Vector(out))
            }
            "histogram_fraction" => {
                let lower = self.eval_scalar(arg(0)?, "the lower bound of histogram_fraction()")?;
                let upper = self.eval_scalar(arg(1)?, "the upper bound of histogram_fraction()")?;
                let vs = self.eval_vector(arg(2)?, "the buckets of histogram_fraction()")?;
                let mut issues = HistogramIssues::default();
                let out = per_histogram(vs, self.n, &mut issues, |i, buckets| {
                    (bucket_fraction(lower[i], upper[i], buckets), false)
                })?;
                self.report(&issues, name, 2);
                Ok(Val::Vector(out))
            }
            _ => Err(QueryError::Unsupported(format!("the function {name}()"))),
        }
    }

    fn sort_in_range_query(&self, func: &str) {
        if self.ctx.query_step != 0 {
            self.ctx.annotate(
                true,
                "sort is ineffective for range queries since results are always ordered by labels"
                    .into(),
                func,
                None,
            );
        }
    }

    fn string_arg(args: &[&Expr], i: usize, f: &str) -> Result<String, QueryError> {
        match args.get(i).map(|a| unwrap_parens(a)) {
            Some(Expr::StringLiteral(s)) => Ok(s.val.clone()),
            _ => Err(QueryError::BadData(format!(
                "argument {} of {f}() must be a string",
                i + 1
            ))),
        }
    }

    fn label_replace(&self, args: &[&Expr]) -> Result<Val, QueryError> {
        let f = "label_replace";
        let arg0 = args
            .first()
            .ok_or_else(|| QueryError::BadData("label_replace() needs arguments".into()))?;
        let vs = self.eval_vector(arg0, "the argument of label_replace()")?;
        let dst = Self::string_arg(args, 1, f)?;
        let repl = Self::string_arg(args, 2, f)?;
        let src = Self::string_arg(args, 3, f)?;
        let re = Self::string_arg(args, 4, f)?;
        let regex = regex::Regex::new(&format!("^(?s:{re})$")).map_err(|_| {
            QueryError::BadData(format!(
                "invalid regular expression in label_replace(): {re}"
            ))
        })?;
        if !aggregate::is_valid_label_name(&dst) {
            return Err(QueryError::Execution(format!(
                "invalid destination label name in label_replace(): {dst}"
            )));
        }
        let mut out = Vec::with_capacity(vs.len());
        for mut s in vs {
            let value = s.labels.get(&src).unwrap_or("").to_owned();
            if let Some(caps) = regex.captures(&value) {
                let mut expanded = String::new();
                caps.expand(&repl, &mut expanded);
                s.set_label(&dst, &expanded);
            }
            out.push(s);
        }
        Ok(Val::Vector(merge_same_labels(out)?))
    }

    fn label_join(&self, args: &[&Expr]) -> Result<Val, QueryError> {
        let f = "label_join";
        let arg0 = args
            .first()
            .ok_or_else(|| QueryError::BadData("label_join() needs arguments".into()))?;
        let vs = self.eval_vector(arg0, "the argument of label_join()")?;
        let dst = Self::string_arg(args, 1, f)?;
        let sep = Self::string_arg(args, 2, f)?;
        let mut srcs = Vec::new();
        for i in 3..args.len() {
            srcs.push(Self::string_arg(args, i, f)?);
        }
        if !aggregate::is_valid_label_name(&dst) {
            return Err(QueryError::Execution(format!(
                "invalid destination label name in label_join(): {dst}"
            )));
        }
        let mut out = Vec::with_capacity(vs.len());
        for mut s in vs {
            let joined: Vec<&str> = srcs.iter().map(|n| s.labels.get(n).unwrap_or("")).collect();
            let joined = joined.join(&sep);
            s.set_label(&dst, &joined);
            out.push(s);
        }
        Ok(Val::Vector(merge_same_labels(out)?))
    }

    fn aggregate(&self, a: &AggregateExpr) -> Result<Val, QueryError> {
        let op = a.op.to_string();
        let param = match a.param.as_deref() {
            None => Param::None,
            Some(p) => match self.eval(p)? {
                Val::Scalar(v) => Param::Scalar(v),
                Val::String(s) => Param::String(s),
                _ => {
                    return Err(QueryError::BadData(format!(
                        "the parameter of {op} must be a scalar or a string"
                    )))
                }
            },
        };
        if let (Param::Scalar(q), "quantile") = (&param, op.as_str()) {
            self.ctx.invalid_quantile(q, "quantile", 0);
        }
        if let (Param::Scalar(r), "limit_ratio") = (&param, op.as_str()) {
            if let Some(&bad) = r.iter().find(|r| r.abs() > 1.0) {
                self.ctx.annotate(
                    true,
                    format!(
                        "ratio value should be between -1 and 1, got {}",
                        go_float(bad)
                    ),
                    "limit_ratio",
                    Some(0),
                );
            }
        }
        if let (Param::None, Some(kind)) = (&param, aggregate::Kind::of(&op)) {
            if let Some(out) = self.aggregate_windows(&op, kind, &a.expr, a.modifier.as_ref())? {
                return Ok(Val::Vector(out));
            }
        }
        let input = self.eval_vector(&a.expr, &format!("the argument of {op}"))?;
        Ok(Val::Vector(aggregate::aggregate(
            &op,
            input,
            a.modifier.as_ref(),
            param,
            self.n,
        )?))
    }

    fn binary(&self, b: &BinaryExpr) -> Result<Val, QueryError> {
        let op_name = b.op.to_string();
        let modifier = b.modifier.as_ref();
        if let Some(m) = modifier {
            if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                return Err(QueryError::Unsupported("fill modifiers".into()));
            }
        }
        let matching = modifier.and_then(|m| m.matching.as_ref());
        if matches!(op_name.as_str(), "and" | "or" | "unless") {
            let (Val::Vector(l), Val::Vector(r)) = (self.eval(&b.lhs)?, self.eval(&b.rhs)?) else {
                return Err(QueryError::BadData(format!(
                    "set operator {op_name} needs instant vectors on both sides"
                )));
            };
            return Ok(Val::Vector(self.set_operation(&op_name, l, r, matching)?));
        }
        let op = BinOp::parse(&op_name)?;
        let return_bool = modifier.is_some_and(|m| m.return_bool);
        let card = modifier.map_or(&VectorMatchCardinality::OneToOne, |m| &m.card);
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => Ok(Val::Scalar(
                l.iter()
                    .zip(&r)
                    .map(|(&l, &r)| op.apply(l, r, true, l).unwrap_or(f64::NAN))
                    .collect(),
            )),
            (Val::Vector(vs), Val::Scalar(s)) => vector_scalar(
                op,
                vs,
                &s,
                false,
                return_bool,
                self.ctx.delayed_name_removal,
            ),
            (Val::Scalar(s), Val::Vector(vs)) => {
                vector_scalar(op, vs, &s, true, return_bool, self.ctx.delayed_name_removal)
            }
            (Val::Vector(l), Val::Vector(r)) => Ok(Val::Vector(self.vector_match(
                op,
                l,
                r,
                matching,
                card,
                return_bool,
            )?)),
            _ => Err(QueryError::BadData(format!(
                "operator {op_name} needs scalars or instant vectors"
            ))),
        }
    }

    /// For each match signature of `vs`, at which steps some series has a value.
    fn presence(
        &self,
        vs: &[StepSeries],
        matching: Option<&LabelModifier>,
    ) -> HashMap<Labels, Vec<bool>> {
        let mut present: HashMap<Labels, Vec<bool>> = HashMap::new();
        for s in vs {
            let p = present
                .entry(signature(&s.labels, matching))
                .or_insert_with(|| vec![false; self.n]);
            for (slot, v) in p.iter_mut().zip(&s.values) {
                *slot |= v.is_some();
            }
        }
        present
    }

    fn set_operation(
        &self,
        op: &str,
        lhs: Vec<StepSeries>,
        rhs: Vec<StepSeries>,
        matching: Option<&LabelModifier>,
    ) -> Result<Vec<StepSeries>, QueryError> {
        match op {
            "and" | "unless" => {
                let right = self.presence(&rhs, matching);
                let keep_if_present = op == "and";
                let mut out = Vec::with_capacity(lhs.len());
                for mut s in lhs {
                    let p = right.get(&signature(&s.labels, matching));
                    for (i, v) in s.values.iter_mut().enumerate() {
                        let present = p.is_some_and(|p| p[i]);
                        if present != keep_if_present {
                            *v = None;
                        }
                    }
                    if s.values.iter().any(Option::is_some) {
                        out.push(s);
                    }
                }
                Ok(out)
            }
            _ => {
                let left = self.presence(&lhs, matching);
                let mut out = lhs;
                for mut s in rhs {
                    if let Some(p) = left.get(&signature(&s.labels, matching)) {
                        for (v, &taken) in s.values.iter_mut().zip(p) {
                            if taken {
                                *v = None;
                            }
                        }
                    }
                    if s.values.iter().any(Option::is_some) {
                        out.push(s);
                    }
                }
                merge_same_labels(out)
            }
        }
    }

    /// Vector matching for arithmetic and comparisons: one-to-one, or many-to-one /
    /// one-to-many with `group_left` / `group_right`.
    fn vector_match(
        &self,
        op: BinOp,
        lhs: Vec<StepSeries>,
        rhs: Vec<StepSeries>,
        matching: Option<&LabelModifier>,
        card: &VectorMatchCardinality,
        return_bool: bool,
    ) -> Result<Vec<StepSeries>, QueryError> {
        let (include, one_to_many) = match card {
            VectorMatchCardinality::ManyToOne(l) => (Some(&l.labels), false),
            VectorMatchCardinality::OneToMany(l) => (Some(&l.labels), true),
            _ => (None, false),
        };
        let (many, one) = if one_to_many { (rhs, lhs) } else { (lhs, rhs) };
        let one_side = if one_to_many { "left" } else { "right" };
        // The "one" side by signature: its value and series at each step.
        let mut one_index: HashMap<Labels, Vec<Option<(f64, usize)>>> = HashMap::new();
        for (idx, s) in one.iter().enumerate() {
            let sig = signature(&s.labels, matching);
            let slots = one_index.entry(sig).or_insert_with(|| vec![None; self.n]);
            for (slot, v) in slots.iter_mut().zip(&s.values) {
                if let Some(v) = *v {
                    if let Some((_, other)) = slot {
                        return Err(QueryError::Execution(format!(
                            "found duplicate series for the match group {} on the {one_side} hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                            signature(&s.labels, matching).to_braced_string(),
                            one[*other].labels.to_braced_string(),
                            s.labels.to_braced_string()
                        )));
                    }
                    *slot = Some((v, idx));
                }
            }
        }
        let mut matched: HashMap<Labels, Vec<bool>> = HashMap::new();
        let mut out: Vec<StepSeries> = Vec::new();
        let mut out_index: HashMap<Labels, usize> = HashMap::new();
        // Output series by (many-side series, one-side series).
        let mut pair_index: HashMap<(usize, usize), usize> = HashMap::new();
        for (mi, s) in many.iter().enumerate() {
            let sig = signature(&s.labels, matching);
            let Some(slots) = one_index.get(&sig) else {
                continue;
            };
            for i in 0..self.n {
                let (Some(mv), Some((ov, oi))) = (s.values[i], slots[i]) else {
                    continue;
                };
                if include.is_none() {
                    let seen = matched
                        .entry(sig.clone())
                        .or_insert_with(|| vec![false; self.n]);
                    if seen[i] {
                        return Err(QueryError::Execution(
                            "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                        ));
                    }
                    seen[i] = true;
                }
                let (l, r) = if one_to_many { (ov, mv) } else { (mv, ov) };
                let Some(value) = op.apply(l, r, return_bool, l) else {
                    continue;
                };
                let key = (mi, if include.is_some() { oi } else { 0 });
                let o = match pair_index.get(&key) {
                    Some(&o) => o,
                    None => {
                        let delayed = self.ctx.delayed_name_removal;
                        let labels = result_labels(
                            &s.labels,
                            &one[oi].labels,
                            op,
                            return_bool,
                            matching,
                            include,
                            delayed,
                        );
                        let o = *out_index.entry(labels.clone()).or_insert_with(|| {
                            let mut r = StepSeries::new(labels, vec![None; self.n]);
                            r.drop_name = s.drop_name || (delayed && op.drops_name(return_bool));
                            out.push(r);
                            out.len() - 1
                        });
                        pair_index.insert(key, o);
                        o
                    }
                };
                let slot = &mut out[o].values[i];
                if slot.is_some() {
                    return Err(QueryError::Execution(if include.is_some() {
                        "multiple matches for labels: grouping labels must ensure unique matches"
                            .into()
                    } else {
                        "vector cannot contain metrics with the same labelset".into()
                    }));
                }
                *slot = Some(value);
            }
        }
        Ok(out)
    }
}

/// The labels of a vector-matching result: the "many" side's labels, without the metric
/// name for arithmetic and `bool`, reduced per `on`/`ignoring` for one-to-one matches, and
/// with `group_x(...)` labels copied from the "one" side.
fn result_labels(
    many: &Labels,
    one: &Labels,
    op: BinOp,
    return_bool: bool,
    matching: Option<&LabelModifier>,
    include: Option<&Vec<String>>,
    delayed: bool,
) -> Labels {
    let mut labels = many.clone();
    if op.drops_name(return_bool) && !delayed {
        labels.remove(METRIC_NAME);
    }
    match include {
        None => match matching {
            Some(LabelModifier::Include(on)) => {
                labels.retain(|l| on.labels.iter().any(|n| n.as_str() == &*l.name))
            }
            Some(LabelModifier::Exclude(ignoring)) => {
                labels.retain(|l| !ignoring.labels.iter().any(|n| n.as_str() == &*l.name))
            }
            None => {}
        },
        Some(names) => {
            for n in names {
                match one.get(n) {
                    Some(v) => {
                        let v = v.to_owned();
                        labels.set(n, &v);
                    }
                    None => labels.remove(n),
                }
            }
        }
    }
    labels
}

fn vector_scalar(
    op: BinOp,
    mut vs: Vec<StepSeries>,
    scalar: &[f64],
    scalar_left: bool,
    return_bool: bool,
    delayed: bool,
) -> Result<Val, QueryError> {
    for s in &mut vs {
        for (v, &k) in s.values.iter_mut().zip(scalar) {
            if let Some(x) = *v {
                let (l, r) = if scalar_left { (k, x) } else { (x, k) };
                *v = op.apply(l, r, return_bool, x);
            }
        }
        if op.drops_name(return_bool) {
            s.drop_name(delayed);
        }
    }
    vs.retain(|s| s.values.iter().any(Option::is_some));
    Ok(Val::Vector(merge_same_labels(vs)?))
}

/// Applies `f(step, value)` to every value and drops the metric name.
fn map_values(
    mut vs: Vec<StepSeries>,
    delayed: bool,
    f: impl Fn(usize, f64) -> Option<f64>,
) -> Result<Vec<StepSeries>, QueryError> {
    for s in &mut vs {
        s.drop_name(delayed);
        for (i, v) in s.values.iter_mut().enumerate() {
            if let Some(x) = *v {
                *v = f(i, x);
            }
        }
    }
    vs.retain(|s| s.values.iter().any(Option::is_some));
    merge_same_labels(vs)
}

fn non_empty(mut vs: Vec<StepSeries>) -> Vec<StepSeries> {
    vs.retain(|s| s.values.iter().any(Option::is_some));
    vs
}

/// The labels `absent()` reports: the equality matchers of a selector argument, except
/// the metric name and names matched more than once.
fn absent_labels(e: &Expr) -> Labels {
    let vs = match e {
        Expr::VectorSelector(vs) => vs,
        Expr::MatrixSelector(ms) => &ms.vs,
        _ => return Labels::empty(),
    };
    let mut labels = Labels::empty();
    let mut has: Vec<&str> = Vec::new();
    for m in &vs.matchers.matchers {
        if m.name == METRIC_NAME {
            continue;
        }
        if m.op == MatchOp::Equal && !has.contains(&m.name.as_str()) {
            labels.set(&m.name, &m.value);
            has.push(&m.name);
        } else {
            labels.remove(&m.name);
        }
    }
    labels
}

/// One classic histogram: its labels (without `le`), metric name, and the upper bound and
/// series index of each bucket.
struct HistogramGroup {
    labels: Labels,
    name: String,
    buckets: Vec<(f64, usize)>,
}

/// What a histogram function noticed about its input.
#[derive(Default)]
struct HistogramIssues {
    /// `(le value, metric name)` of bucket series without a usable `le`.
    bad_le: Vec<(String, String)>,
    /// Metric names whose bucket counts had to be made monotonic.
    forced: Vec<String>,
}

impl Evaluator<'_> {
    /// Reports the issues of a histogram function's input about its `arg`-th argument.
    fn report(&self, issues: &HistogramIssues, func: &str, arg: usize) {
        for (le, name) in &issues.bad_le {
            self.ctx.annotate(
                true,
                format!("bucket label \"le\" is missing or has a malformed value of {le:?} for metric name {name:?}"),
                func,
                Some(arg),
            );
        }
        for name in &issues.forced {
            self.ctx.annotate(
                false,
                format!("input to histogram_quantile needed to be fixed for monotonicity (see https://prometheus.io/docs/prometheus/latest/querying/functions/#histogram_quantile) for metric name {name:?}"),
                func,
                Some(arg),
            );
        }
    }
}

fn histogram_quantile(
    q: &[f64],
    vs: Vec<StepSeries>,
    n: usize,
    issues: &mut HistogramIssues,
) -> Result<Vec<StepSeries>, QueryError> {
    per_histogram(vs, n, issues, |i, buckets| bucket_quantile(q[i], buckets))
}

/// Groups classic bucket series into histograms (labels without `le` and the metric
/// name) and computes `f(step, buckets)` for each at every step; `f` also says whether
/// it had to force the buckets monotonic.
fn per_histogram(
    vs: Vec<StepSeries>,
    n: usize,
    issues: &mut HistogramIssues,
    f: impl Fn(usize, &mut Vec<Bucket>) -> (f64, bool),
) -> Result<Vec<StepSeries>, QueryError> {
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut groups: Vec<HistogramGroup> = Vec::new();
    for (idx, s) in vs.iter().enumerate() {
        let name = s.labels.metric_name().unwrap_or("").to_owned();
        let le = s.labels.get("le").unwrap_or("");
        let Some(upper) = parse_le(le) else {
            issues.bad_le.push((le.to_owned(), name));
            continue;
        };
        // Grouped with the metric name, so that two histograms that differ only by name
        // end up as two results with the same labels: an error, as in Prometheus.
        let mut key = s.labels.clone();
        key.remove("le");
        let g = *index.entry(key.clone()).or_insert_with(|| {
            groups.push(HistogramGroup {
                labels: key,
                name,
                buckets: Vec::new(),
            });
            groups.len() - 1
        });
        groups[g].buckets.push((upper, idx));
    }
    let mut out = Vec::with_capacity(groups.len());
    let mut buckets = Vec::new();
    for HistogramGroup {
        mut labels,
        name,
        buckets: members,
    } in groups
    {
        labels.remove(METRIC_NAME);
        let mut values = vec![None; n];
        let mut forced = false;
        for (i, slot) in values.iter_mut().enumerate() {
            buckets.clear();
            buckets.extend(members.iter().filter_map(|&(upper, idx)| {
                vs[idx].values[i].map(|count| Bucket { upper, count })
            }));
            if !buckets.is_empty() {
                let (v, fixed) = f(i, &mut buckets);
                forced |= fixed;
                *slot = Some(v);
            }
        }
        if forced && !issues.forced.contains(&name) {
            issues.forced.push(name);
        }
        if values.iter().any(Option::is_some) {
            out.push(StepSeries::new(labels, values));
        }
    }
    merge_same_labels(out)
}

/// A quantile as `histogram_quantiles` labels it: `0.0`, `0.25`, `1.0`.
fn quantile_label(q: f64) -> String {
    let s = aggregate::format_value(q);
    if s.contains(['.', 'e', 'I', 'N']) {
        s
    } else {
        format!("{s}.0")
    }
}

fn parse_le(s: &str) -> Option<f64> {
    match s.trim() {
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        t => t.parse().ok(),
    }
}

/// Compares strings with runs of digits compared as numbers.
fn natural_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (mut x, mut y) = (a.as_bytes(), b.as_bytes());
    loop {
        match (x.first(), y.first()) {
            (None, None) => return std::cmp::Ordering::Equal,
            (None, Some(_)) => return std::cmp::Ordering::Less,
            (Some(_), None) => return std::cmp::Ordering::Greater,
            (Some(c), Some(d)) if c.is_ascii_digit() && d.is_ascii_digit() => {
                let xl = x.iter().take_while(|c| c.is_ascii_digit()).count();
                let yl = y.iter().take_while(|c| c.is_ascii_digit()).count();
                let xs = std::str::from_utf8(&x[..xl])
                    .unwrap_or("")
                    .trim_start_matches('0');
                let ys = std::str::from_utf8(&y[..yl])
                    .unwrap_or("")
                    .trim_start_matches('0');
                let ord = xs.len().cmp(&ys.len()).then_with(|| xs.cmp(ys));
                if ord != std::cmp::Ordering::Equal {
                    return ord;
                }
                x = &x[xl..];
                y = &y[yl..];
            }
            (Some(c), Some(d)) => {
                if c != d {
                    return c.cmp(d);
                }
                x = &x[1..];
                y = &y[1..];
            }
        }
    }
}

/// The storage matchers of a selector, its metric name included.
pub(crate) fn selector_matchers(vs: &VectorSelector) -> Result<Vec<Matcher>, QueryError> {
    if !vs.matchers.or_matchers.is_empty() {
        return Err(QueryError::Unsupported("`or` inside label matchers".into()));
    }
    let mut matchers: Vec<Matcher> = vs.matchers.matchers.iter().map(convert_matcher).collect();
    if let Some(name) = &vs.name {
        matchers.push(Matcher::equal(METRIC_NAME, name.as_str()));
    }
    Ok(matchers)
}

fn convert_matcher(m: &ParsedMatcher) -> Matcher {
    let kind = match &m.op {
        MatchOp::Equal => MatchKind::Equal,
        MatchOp::NotEqual => MatchKind::NotEqual,
        // The parser's regexes are already anchored.
        MatchOp::Re(re) => MatchKind::Regex(re.clone()),
        MatchOp::NotRe(re) => MatchKind::NotRegex(re.clone()),
    };
    Matcher {
        name: m.name.clone(),
        value: m.value.clone(),
        kind,
    }
}

/// The labels two series must share to match: `on(...)` keeps only those, `ignoring(...)`
/// drops those, and the metric name never takes part unless named in `on`.
fn signature(labels: &Labels, matching: Option<&LabelModifier>) -> Labels {
    let mut sig = labels.clone();
    match matching {
        Some(LabelModifier::Include(on)) => {
            sig.retain(|l| on.labels.iter().any(|n| n.as_str() == &*l.name));
        }
        Some(LabelModifier::Exclude(ignoring)) => {
            sig.retain(|l| {
                &*l.name != METRIC_NAME && !ignoring.labels.iter().any(|n| n.as_str() == &*l.name)
            });
        }
        None => sig.remove(METRIC_NAME),
    }
    sig
}

/// Merges series that ended up with the same labels (after a function or operator dropped
/// some); two values at the same step are Prometheus' "same labelset" error.
fn merge_same_labels(vs: Vec<StepSeries>) -> Result<Vec<StepSeries>, QueryError> {
    let mut index: HashMap<Labels, usize> = HashMap::with_capacity(vs.len());
    let mut out: Vec<StepSeries> = Vec::with_capacity(vs.len());
    for s in vs {
        match index.get(&s.labels) {
            None => {
                index.insert(s.labels.clone(), out.len());
                out.push(s);
            }
            Some(&i) => {
                let target = &mut out[i];
                target.drop_name |= s.drop_name;
                for (slot, v) in target.values.iter_mut().zip(s.values) {
                    if v.is_some() {
                        if slot.is_some() {
                            return Err(QueryError::Execution(
                                "vector cannot contain metrics with the same labelset".into(),
                            ));
                        }
                        *slot = v;
                    }
                }
            }
        }
    }
    Ok(out)
}

/// The distinct metric names of `input` that do not look like counters' (for `rate` and
/// `increase`).
fn non_counter_names(input: &RangeInput) -> Vec<String> {
    let looks_like_counter = |metric: &str| {
        ["_total", "_sum", "_count", "_bucket"]
            .iter()
            .any(|suffix| metric.ends_with(suffix))
    };
    if let Some(name) = &input.one_name {
        return if input.series.is_empty() || looks_like_counter(name) || name.is_empty() {
            Vec::new()
        } else {
            vec![name.clone()]
        };
    }
    let mut out: Vec<String> = Vec::new();
    for s in &input.series {
        let Some(metric) = s.labels.metric_name() else {
            continue;
        };
        if !looks_like_counter(metric) && !out.iter().any(|m| m == metric) {
            out.push(metric.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The sixteen-at-a-time comparison finds a differing time at every place, and
    /// a length that differs.
    #[test]
    fn times_differing_anywhere_are_found() {
        for n in [0usize, 1, 15, 16, 17, 40] {
            let samples: Vec<(i64, f64)> = (0..n as i64).map(|i| (i * 15_000, 1.0)).collect();
            let times: Vec<i64> = samples.iter().map(|s| s.0).collect();
            assert!(same_times(&samples, &times));
            for at in 0..n {
                let mut other = times.clone();
                other[at] += 1;
                assert!(!same_times(&samples, &other), "{n} samples, at {at}");
            }
            assert!(!same_times(&samples, &times[..n.saturating_sub(1)]) || n == 0);
        }
    }

    #[test]
    fn parts_on_cores_come_back_in_order() {
        let items: Vec<usize> = (0..1_000).collect();
        let out = on_cores(&items, 2, |part| Ok(part.iter().map(|i| i * 2).collect()));
        let expected: Vec<usize> = items.iter().map(|i| i * 2).collect();
        assert_eq!(out.ok(), Some(expected));
    }

    #[test]
    fn the_first_failing_part_gives_the_error() {
        let items: Vec<usize> = (0..1_000).collect();
        let out: Result<Vec<usize>, QueryError> = on_cores(&items, 2, |part| {
            // Every part from item 500 on fails, each naming its first item.
            match part.first() {
                Some(&first) if part.last() >= Some(&500) => {
                    Err(QueryError::Execution(format!("part from {first}")))
                }
                _ => Ok(part.to_vec()),
            }
        });
        // On one core the items are one part.
        let per = if query_threads() < 2 {
            items.len()
        } else {
            items.len().div_ceil(query_threads() * PARTS_PER_THREAD)
        };
        let first_failing = items
            .chunks(per)
            .find(|p| p.last() >= Some(&500))
            .and_then(|p| p.first().copied());
        match (out, first_failing) {
            (Err(QueryError::Execution(e)), Some(f)) => assert_eq!(e, format!("part from {f}")),
            (out, f) => panic!("expected the error of the part from {f:?}, got {out:?}"),
        }
    }
}
