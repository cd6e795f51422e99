//! The evaluator: every node of the expression yields its value at every step of the
//! query at once.

use std::collections::HashMap;

use promql_parser::label::{MatchOp, Matcher as ParsedMatcher};
use promql_parser::parser::value::ValueType;
use promql_parser::parser::{
    AggregateExpr, BinaryExpr, Call, Expr, LabelModifier, MatrixSelector, Offset,
    VectorMatchCardinality, VectorSelector,
};
use strata_storage::{is_stale_nan, Db, Labels, MatchKind, Matcher, Series, METRIC_NAME};

use crate::functions::{self, kahan_sum_inc, MeanAccumulator, Window};
use crate::QueryError;

/// Tunables of the engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// How far back an instant selector looks for the latest sample (Prometheus: 5 m).
    pub lookback_delta_ms: i64,
    /// The most steps a range query may have (Prometheus: 11,000).
    pub max_points_per_series: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            lookback_delta_ms: 5 * 60 * 1000,
            max_points_per_series: 11_000,
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

/// Evaluates PromQL against a [`Db`].
#[derive(Debug, Clone, Default)]
pub struct Engine {
    opts: EngineOptions,
}

impl Engine {
    pub fn new(opts: EngineOptions) -> Self {
        Self { opts }
    }

    /// Evaluates `query` at time `t` (milliseconds).
    pub fn instant_query(&self, db: &Db, query: &str, t: i64) -> Result<QueryValue, QueryError> {
        let expr = crate::parse(query)?;
        let ev = Evaluator {
            db,
            start: t,
            step: 1,
            n: 1,
            lookback: self.opts.lookback_delta_ms,
        };
        Ok(match ev.eval(&expr)? {
            Val::Scalar(v) => QueryValue::Scalar { t, v: v[0] },
            Val::String(s) => QueryValue::String { t, s },
            Val::Vector(vs) => {
                let mut out: Vec<(Labels, i64, f64)> = vs
                    .into_iter()
                    .filter_map(|s| s.values[0].map(|v| (s.labels, t, v)))
                    .collect();
                out.sort_by(|a, b| a.0.cmp(&b.0));
                QueryValue::Vector(out)
            }
            Val::Matrix(m) => QueryValue::Matrix(m),
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
    ) -> Result<QueryValue, QueryError> {
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
        let ev = Evaluator {
            db,
            start,
            step,
            n,
            lookback: self.opts.lookback_delta_ms,
        };
        let ts = |i: usize| start + i as i64 * step;
        let mut out = match ev.eval(&expr)? {
            Val::Scalar(v) => vec![(
                Labels::empty(),
                v.into_iter().enumerate().map(|(i, v)| (ts(i), v)).collect(),
            )],
            Val::Vector(vs) => vs
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
        Ok(QueryValue::Matrix(out))
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

/// An instant-vector series: its value at each step, if any.
#[derive(Debug, Clone)]
struct StepSeries {
    labels: Labels,
    values: Vec<Option<f64>>,
}

/// A value at every step.
enum Val {
    Scalar(Vec<f64>),
    Vector(Vec<StepSeries>),
    /// Only produced by a range selector at the top of an instant query.
    Matrix(Vec<(Labels, Vec<(i64, f64)>)>),
    String(String),
}

struct Evaluator<'a> {
    db: &'a Db,
    start: i64,
    step: i64,
    n: usize,
    lookback: i64,
}

/// The binary operators strata evaluates.
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

    /// Applies the operator to a pair of elements where the vector side (if any) is `l`
    /// when `vector_left`. Returns `None` when a comparison filters the element out.
    fn apply(self, l: f64, r: f64, return_bool: bool, vector_value: f64) -> Option<f64> {
        if !self.is_comparison() {
            return Some(self.arith(l, r));
        }
        let keep = self.compare(l, r);
        if return_bool {
            Some(if keep { 1.0 } else { 0.0 })
        } else if keep {
            Some(vector_value)
        } else {
            None
        }
    }
}

impl Evaluator<'_> {
    fn ts(&self, i: usize) -> i64 {
        self.start + i as i64 * self.step
    }

    fn end(&self) -> i64 {
        self.ts(self.n - 1)
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
                        s.labels.remove(METRIC_NAME);
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
            Expr::VectorSelector(vs) => self.vector_selector(vs),
            Expr::MatrixSelector(ms) => self.matrix_selector(ms),
            Expr::Call(c) => self.call(c),
            Expr::Aggregate(a) => self.aggregate(a),
            Expr::Binary(b) => self.binary(b),
            Expr::Subquery(_) => Err(QueryError::Unsupported("subqueries".into())),
            Expr::Extension(_) => Err(QueryError::Unsupported("extension expressions".into())),
        }
    }

    /// Selects the series of `vs` with samples that any step can see through a window of
    /// `window` milliseconds. Returns them with the selector's offset.
    fn select(&self, vs: &VectorSelector, window: i64) -> Result<(Vec<Series>, i64), QueryError> {
        if vs.at.is_some() {
            return Err(QueryError::Unsupported("the @ modifier".into()));
        }
        let matchers = selector_matchers(vs)?;
        let offset = match &vs.offset {
            None => 0,
            Some(Offset::Pos(d)) => d.as_millis() as i64,
            Some(Offset::Neg(d)) => -(d.as_millis() as i64),
        };
        // Windows are left-open: a window ending at t covers (t - window, t].
        let mint = self.start - offset - window + 1;
        let maxt = self.end() - offset;
        let series = self.db.querier(mint, maxt).select(&matchers)?;
        Ok((series, offset))
    }

    fn vector_selector(&self, vs: &VectorSelector) -> Result<Val, QueryError> {
        let (selected, offset) = self.select(vs, self.lookback)?;
        let mut out = Vec::with_capacity(selected.len());
        let mut samples = Vec::new();
        for series in selected {
            samples.clear();
            samples.extend(series.samples());
            let mut values = vec![None; self.n];
            let mut j = 0;
            let mut any = false;
            for (i, slot) in values.iter_mut().enumerate() {
                let t = self.ts(i) - offset;
                while j < samples.len() && samples[j].0 <= t {
                    j += 1;
                }
                if j > 0 {
                    let (st, sv) = samples[j - 1];
                    if st > t - self.lookback && !is_stale_nan(sv) {
                        *slot = Some(sv);
                        any = true;
                    }
                }
            }
            if any {
                out.push(StepSeries {
                    labels: series.labels,
                    values,
                });
            }
        }
        Ok(Val::Vector(out))
    }

    /// A bare range selector: only meaningful at the top of an instant query.
    fn matrix_selector(&self, ms: &MatrixSelector) -> Result<Val, QueryError> {
        if self.n != 1 {
            return Err(QueryError::BadData(
                "a range vector cannot be evaluated at several steps".into(),
            ));
        }
        let range = ms.range.as_millis() as i64;
        let (selected, offset) = self.select(&ms.vs, range)?;
        let end = self.start - offset;
        let out = selected
            .into_iter()
            .map(|s| {
                let points: Vec<(i64, f64)> = s
                    .samples()
                    .filter(|&(t, v)| t > end - range && t <= end && !is_stale_nan(v))
                    .collect();
                (s.labels, points)
            })
            .filter(|(_, p)| !p.is_empty())
            .collect();
        Ok(Val::Matrix(out))
    }

    fn call(&self, c: &Call) -> Result<Val, QueryError> {
        let name = c.func.name;
        let args = &c.args.args;
        if let Some((f, keep_name)) = functions::window_function(name) {
            return match args.first().map(|a| a.as_ref()) {
                Some(Expr::MatrixSelector(ms)) => self.window_call(ms, f, keep_name),
                Some(Expr::Subquery(_)) => Err(QueryError::Unsupported("subqueries".into())),
                _ => Err(QueryError::BadData(format!(
                    "{name}() needs a range vector"
                ))),
            };
        }
        if let Some(f) = functions::value_function(name) {
            let Some(arg) = args.first() else {
                return Err(QueryError::BadData(format!("{name}() needs an argument")));
            };
            let Val::Vector(mut vs) = self.eval(arg)? else {
                return Err(QueryError::BadData(format!(
                    "{name}() needs an instant vector"
                )));
            };
            for s in &mut vs {
                s.labels.remove(METRIC_NAME);
                for v in s.values.iter_mut().flatten() {
                    *v = f(*v);
                }
            }
            return Ok(Val::Vector(merge_same_labels(vs)?));
        }
        match name {
            "time" => Ok(Val::Scalar(
                (0..self.n).map(|i| self.ts(i) as f64 / 1000.0).collect(),
            )),
            "vector" => match args.first().map(|a| self.eval(a)).transpose()? {
                Some(Val::Scalar(v)) => Ok(Val::Vector(vec![StepSeries {
                    labels: Labels::empty(),
                    values: v.into_iter().map(Some).collect(),
                }])),
                _ => Err(QueryError::BadData("vector() needs a scalar".into())),
            },
            "scalar" => match args.first().map(|a| self.eval(a)).transpose()? {
                Some(Val::Vector(vs)) => Ok(Val::Scalar(
                    (0..self.n)
                        .map(|i| {
                            let mut present = vs.iter().filter_map(|s| s.values[i]);
                            match (present.next(), present.next()) {
                                (Some(v), None) => v,
                                _ => f64::NAN,
                            }
                        })
                        .collect(),
                )),
                _ => Err(QueryError::BadData(
                    "scalar() needs an instant vector".into(),
                )),
            },
            _ => Err(QueryError::Unsupported(format!("the function {name}()"))),
        }
    }

    fn window_call(
        &self,
        ms: &MatrixSelector,
        f: functions::WindowFn,
        keep_name: bool,
    ) -> Result<Val, QueryError> {
        let range = ms.range.as_millis() as i64;
        let (selected, offset) = self.select(&ms.vs, range)?;
        let mut out = Vec::with_capacity(selected.len());
        let mut samples = Vec::new();
        for series in selected {
            samples.clear();
            samples.extend(series.samples().filter(|&(_, v)| !is_stale_nan(v)));
            let mut values = vec![None; self.n];
            let (mut lo, mut hi) = (0, 0);
            let mut any = false;
            for (i, slot) in values.iter_mut().enumerate() {
                let range_end = self.ts(i) - offset;
                let range_start = range_end - range;
                while hi < samples.len() && samples[hi].0 <= range_end {
                    hi += 1;
                }
                while lo < hi && samples[lo].0 <= range_start {
                    lo += 1;
                }
                *slot = f(&Window {
                    samples: &samples[lo..hi],
                    range_start,
                    range_end,
                });
                any |= slot.is_some();
            }
            if any {
                let mut labels = series.labels;
                if !keep_name {
                    labels.remove(METRIC_NAME);
                }
                out.push(StepSeries { labels, values });
            }
        }
        Ok(Val::Vector(merge_same_labels(out)?))
    }

    fn aggregate(&self, a: &AggregateExpr) -> Result<Val, QueryError> {
        let op = a.op.to_string();
        let kind = match op.as_str() {
            "sum" => AggKind::Sum,
            "avg" => AggKind::Avg,
            "min" => AggKind::Min,
            "max" => AggKind::Max,
            "count" => AggKind::Count,
            other => {
                return Err(QueryError::Unsupported(format!("the aggregation {other}")));
            }
        };
        let Val::Vector(input) = self.eval(&a.expr)? else {
            return Err(QueryError::BadData(format!("{op} needs an instant vector")));
        };
        let mut index: HashMap<Labels, usize> = HashMap::new();
        let mut groups: Vec<(Labels, Vec<Option<Acc>>)> = Vec::new();
        for s in input {
            let key = grouping_labels(&s.labels, a.modifier.as_ref());
            let g = *index.entry(key.clone()).or_insert_with(|| {
                groups.push((key, vec![None; self.n]));
                groups.len() - 1
            });
            let accs = &mut groups[g].1;
            for (acc, v) in accs.iter_mut().zip(&s.values) {
                if let Some(v) = *v {
                    match acc {
                        Some(acc) => acc.add(kind, v),
                        None => *acc = Some(Acc::new(v)),
                    }
                }
            }
        }
        Ok(Val::Vector(
            groups
                .into_iter()
                .map(|(labels, accs)| StepSeries {
                    labels,
                    values: accs
                        .into_iter()
                        .map(|a| a.map(|a| a.result(kind)))
                        .collect(),
                })
                .collect(),
        ))
    }

    fn binary(&self, b: &BinaryExpr) -> Result<Val, QueryError> {
        let op_name = b.op.to_string();
        if matches!(op_name.as_str(), "and" | "or" | "unless") {
            return Err(QueryError::Unsupported(format!(
                "the set operator {op_name}"
            )));
        }
        let op = BinOp::parse(&op_name)?;
        let modifier = b.modifier.as_ref();
        if let Some(m) = modifier {
            if matches!(
                m.card,
                VectorMatchCardinality::ManyToOne(_) | VectorMatchCardinality::OneToMany(_)
            ) {
                return Err(QueryError::Unsupported("group_left / group_right".into()));
            }
            if m.fill_values.lhs.is_some() || m.fill_values.rhs.is_some() {
                return Err(QueryError::Unsupported("fill modifiers".into()));
            }
        }
        let return_bool = modifier.is_some_and(|m| m.return_bool);
        let lhs = self.eval(&b.lhs)?;
        let rhs = self.eval(&b.rhs)?;
        match (lhs, rhs) {
            (Val::Scalar(l), Val::Scalar(r)) => Ok(Val::Scalar(
                l.iter()
                    .zip(&r)
                    .map(|(&l, &r)| op.apply(l, r, true, l).unwrap_or(f64::NAN))
                    .collect(),
            )),
            (Val::Vector(vs), Val::Scalar(s)) => vector_scalar(op, vs, &s, false, return_bool),
            (Val::Scalar(s), Val::Vector(vs)) => vector_scalar(op, vs, &s, true, return_bool),
            (Val::Vector(l), Val::Vector(r)) => self.vector_vector(
                op,
                l,
                r,
                modifier.and_then(|m| m.matching.as_ref()),
                return_bool,
            ),
            _ => Err(QueryError::BadData(format!(
                "operator {op_name} needs scalars or instant vectors"
            ))),
        }
    }

    /// One-to-one vector matching.
    fn vector_vector(
        &self,
        op: BinOp,
        lhs: Vec<StepSeries>,
        rhs: Vec<StepSeries>,
        matching: Option<&LabelModifier>,
        return_bool: bool,
    ) -> Result<Val, QueryError> {
        // The right side, by match signature: its value and series at each step.
        let mut right: HashMap<Labels, Vec<Option<(f64, usize)>>> = HashMap::new();
        for (idx, s) in rhs.iter().enumerate() {
            let sig = signature(&s.labels, matching);
            let slots = right.entry(sig).or_insert_with(|| vec![None; self.n]);
            for (slot, v) in slots.iter_mut().zip(&s.values) {
                if let Some(v) = *v {
                    if let Some((_, other)) = slot {
                        return Err(QueryError::Execution(format!(
                            "found duplicate series for the match group {} on the right hand-side of the operation: [{}, {}];many-to-many matching not allowed: matching labels must be unique on one side",
                            signature(&s.labels, matching).to_braced_string(),
                            rhs[*other].labels.to_braced_string(),
                            s.labels.to_braced_string()
                        )));
                    }
                    *slot = Some((v, idx));
                }
            }
        }
        let mut matched: HashMap<Labels, Vec<bool>> = HashMap::new();
        let mut out = Vec::with_capacity(lhs.len());
        for s in lhs {
            let sig = signature(&s.labels, matching);
            let Some(slots) = right.get(&sig) else {
                continue;
            };
            let mut values = vec![None; self.n];
            let mut any = false;
            for i in 0..self.n {
                let (Some(l), Some((r, _))) = (s.values[i], slots[i]) else {
                    continue;
                };
                let seen = matched
                    .entry(sig.clone())
                    .or_insert_with(|| vec![false; self.n]);
                if seen[i] {
                    return Err(QueryError::Execution(
                        "multiple matches for labels: many-to-one matching must be explicit (group_left/group_right)".into(),
                    ));
                }
                seen[i] = true;
                values[i] = op.apply(l, r, return_bool, l);
                any |= values[i].is_some();
            }
            if any {
                let mut labels = s.labels;
                if !op.is_comparison() || return_bool {
                    labels.remove(METRIC_NAME);
                }
                match matching {
                    Some(LabelModifier::Include(on)) => {
                        labels.retain(|l| on.labels.iter().any(|n| n == &l.name))
                    }
                    Some(LabelModifier::Exclude(ignoring)) => {
                        labels.retain(|l| !ignoring.labels.iter().any(|n| n == &l.name))
                    }
                    None => {}
                }
                out.push(StepSeries { labels, values });
            }
        }
        Ok(Val::Vector(merge_same_labels(out)?))
    }
}

fn vector_scalar(
    op: BinOp,
    mut vs: Vec<StepSeries>,
    scalar: &[f64],
    scalar_left: bool,
    return_bool: bool,
) -> Result<Val, QueryError> {
    for s in &mut vs {
        for (v, &k) in s.values.iter_mut().zip(scalar) {
            if let Some(x) = *v {
                let (l, r) = if scalar_left { (k, x) } else { (x, k) };
                *v = op.apply(l, r, return_bool, x);
            }
        }
        if !op.is_comparison() || return_bool {
            s.labels.remove(METRIC_NAME);
        }
    }
    vs.retain(|s| s.values.iter().any(Option::is_some));
    Ok(Val::Vector(merge_same_labels(vs)?))
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
            sig.retain(|l| on.labels.iter().any(|n| n == &l.name));
        }
        Some(LabelModifier::Exclude(ignoring)) => {
            sig.retain(|l| l.name != METRIC_NAME && !ignoring.labels.iter().any(|n| n == &l.name));
        }
        None => sig.remove(METRIC_NAME),
    }
    sig
}

/// The output labels of an aggregation group: `by` keeps the listed labels, `without`
/// drops them and the metric name.
fn grouping_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    match modifier {
        None => Labels::empty(),
        Some(LabelModifier::Include(by)) => {
            let mut l = labels.clone();
            l.retain(|l| by.labels.iter().any(|n| n == &l.name));
            l
        }
        Some(LabelModifier::Exclude(without)) => {
            let mut l = labels.clone();
            l.retain(|l| l.name != METRIC_NAME && !without.labels.iter().any(|n| n == &l.name));
            l
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AggKind {
    Sum,
    Avg,
    Min,
    Max,
    Count,
}

/// The running state of one aggregation group at one step.
#[derive(Debug, Clone, Copy)]
struct Acc {
    value: f64,
    c: f64,
    count: f64,
    mean: MeanAccumulator,
}

impl Acc {
    fn new(v: f64) -> Self {
        let mut mean = MeanAccumulator::default();
        mean.add(v);
        Self {
            value: v,
            c: 0.0,
            count: 1.0,
            mean,
        }
    }

    fn add(&mut self, kind: AggKind, v: f64) {
        self.count += 1.0;
        match kind {
            AggKind::Sum => (self.value, self.c) = kahan_sum_inc(v, self.value, self.c),
            AggKind::Avg => self.mean.add(v),
            AggKind::Min => {
                if self.value > v || self.value.is_nan() {
                    self.value = v;
                }
            }
            AggKind::Max => {
                if self.value < v || self.value.is_nan() {
                    self.value = v;
                }
            }
            AggKind::Count => {}
        }
    }

    fn result(&self, kind: AggKind) -> f64 {
        match kind {
            AggKind::Sum => self.value + self.c,
            AggKind::Avg => self.mean.result(),
            AggKind::Min | AggKind::Max => self.value,
            AggKind::Count => self.count,
        }
    }
}
