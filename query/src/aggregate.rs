//! Aggregation operators: `sum avg min max count group stddev stdvar quantile topk bottomk
//! count_values`, with `by` / `without`, at every step.

use std::collections::HashMap;

use promql_parser::parser::LabelModifier;
use strata_storage::{hash_labels, IntHash, Label, Labels, METRIC_NAME};

use crate::eval::StepSeries;
use crate::functions::{kahan_sum_inc, quantile, MeanAccumulator};
use crate::QueryError;

/// The parameter of an aggregation, evaluated.
pub(crate) enum Param {
    None,
    /// A scalar at each step (`topk`, `bottomk`, `quantile`).
    Scalar(Vec<f64>),
    /// A label name (`count_values`).
    String(String),
}

/// The output labels of an aggregation group: `by` keeps the listed labels, `without`
/// drops them and the metric name.
pub(crate) fn grouping_labels(labels: &Labels, modifier: Option<&LabelModifier>) -> Labels {
    Labels::from_vec(grouped(labels, modifier).cloned().collect())
}

/// The labels of `labels` that [`grouping_labels`] keeps, in order.
fn grouped<'a>(
    labels: &'a Labels,
    modifier: Option<&'a LabelModifier>,
) -> impl Iterator<Item = &'a Label> + Clone {
    labels.iter().filter(move |l| match modifier {
        None => false,
        Some(LabelModifier::Include(by)) => by.labels.iter().any(|n| n.as_str() == &*l.name),
        Some(LabelModifier::Exclude(without)) => {
            &*l.name != METRIC_NAME && !without.labels.iter().any(|n| n.as_str() == &*l.name)
        }
    })
}

/// Evaluates `op` over `input`. The result of `topk`/`bottomk` is ordered by rank (for
/// an instant query's output order); everything else in group order.
pub(crate) fn aggregate(
    op: &str,
    input: Vec<StepSeries>,
    modifier: Option<&LabelModifier>,
    param: Param,
    n: usize,
) -> Result<Vec<StepSeries>, QueryError> {
    let kind = match op {
        "quantile" => return quantile_agg(input, modifier, param, n),
        "topk" => return top_k(input, modifier, param, n, true),
        "bottomk" => return top_k(input, modifier, param, n, false),
        "count_values" => return count_values(input, modifier, param, n),
        "limitk" => return limit_k(input, modifier, param, n),
        "limit_ratio" => return limit_ratio(input, param, n),
        other => match Kind::of(other) {
            Some(kind) => kind,
            None => return Err(QueryError::Unsupported(format!("the aggregation {other}"))),
        },
    };
    let (groups, members) = group(input.iter().map(|s| &s.labels), modifier);
    let mut out = Vec::with_capacity(groups.len());
    for (labels, idxs) in groups.into_iter().zip(members) {
        let mut acc = GroupAcc::new(kind, n);
        for &s in &idxs {
            acc.add(&input[s].values);
        }
        let values = acc.finish();
        if values.iter().any(Option::is_some) {
            let mut s = StepSeries::new(labels, values);
            s.drop_name = idxs.iter().any(|&m| input[m].drop_name);
            out.push(s);
        }
    }
    Ok(out)
}

/// Groups the input: each group's labels and the indexes of its members, in order of
/// first appearance.
pub(crate) fn group<'a>(
    input: impl Iterator<Item = &'a Labels>,
    modifier: Option<&LabelModifier>,
) -> (Vec<Labels>, Vec<Vec<usize>>) {
    // Groups by the hash of their labels, which are built only for a new group; groups
    // whose hashes collide are told apart by their labels.
    let mut index: HashMap<u64, Vec<usize>, IntHash> = HashMap::default();
    // Groups also by where their labels' strings lie: a store hands out one copy of each
    // name and value, so most series find their group without reading text. Strings in
    // two places still meet through `index`.
    let mut by_address: HashMap<Addresses, usize, IntHash> = HashMap::default();
    let mut labels: Vec<Labels> = Vec::new();
    let mut members: Vec<Vec<usize>> = Vec::new();
    for (i, series_labels) in input.enumerate() {
        let key = grouped(series_labels, modifier);
        let addresses = addresses(key.clone());
        if let Some(&g) = addresses.as_ref().and_then(|a| by_address.get(a)) {
            members[g].push(i);
            continue;
        }
        let same = index.entry(hash_labels(key.clone())).or_default();
        let g = match same.iter().find(|&&g| labels[g].iter().eq(key.clone())) {
            Some(&g) => g,
            None => {
                labels.push(Labels::from_vec(key.cloned().collect()));
                members.push(Vec::new());
                same.push(members.len() - 1);
                members.len() - 1
            }
        };
        members[g].push(i);
        if let Some(a) = addresses {
            by_address.insert(a, g);
        }
    }
    (labels, members)
}

/// The addresses of up to [`ADDRESSED`] labels' names and values, in order.
#[derive(PartialEq, Eq)]
struct Addresses([usize; 2 * ADDRESSED]);
const ADDRESSED: usize = 4;

impl std::hash::Hash for Addresses {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        // A word at a time: the integer hasher takes bytes one by one.
        for &a in &self.0 {
            state.write_usize(a);
        }
    }
}

/// `None` for more than [`ADDRESSED`] labels.
fn addresses<'a>(labels: impl Iterator<Item = &'a Label>) -> Option<Addresses> {
    let mut a = [0; 2 * ADDRESSED];
    for (i, l) in labels.enumerate() {
        if i == ADDRESSED {
            return None;
        }
        a[2 * i] = l.name.as_ptr() as usize;
        a[2 * i + 1] = l.value.as_ptr() as usize;
    }
    Some(Addresses(a))
}

fn scalar_param(param: Param, op: &str) -> Result<Vec<f64>, QueryError> {
    match param {
        Param::Scalar(v) => Ok(v),
        _ => Err(QueryError::BadData(format!(
            "{op} needs a scalar parameter"
        ))),
    }
}

fn quantile_agg(
    input: Vec<StepSeries>,
    modifier: Option<&LabelModifier>,
    param: Param,
    n: usize,
) -> Result<Vec<StepSeries>, QueryError> {
    let q = scalar_param(param, "quantile")?;
    let (groups, members) = group(input.iter().map(|s| &s.labels), modifier);
    let mut out = Vec::with_capacity(groups.len());
    let mut buf = Vec::new();
    for (labels, idxs) in groups.into_iter().zip(members) {
        let mut values = vec![None; n];
        for (i, slot) in values.iter_mut().enumerate() {
            buf.clear();
            buf.extend(idxs.iter().filter_map(|&s| input[s].values[i]));
            if !buf.is_empty() {
                *slot = Some(quantile(q[i], &mut buf));
            }
        }
        if values.iter().any(Option::is_some) {
            let mut s = StepSeries::new(labels, values);
            s.drop_name = idxs.iter().any(|&m| input[m].drop_name);
            out.push(s);
        }
    }
    Ok(out)
}

fn top_k(
    input: Vec<StepSeries>,
    modifier: Option<&LabelModifier>,
    param: Param,
    n: usize,
    top: bool,
) -> Result<Vec<StepSeries>, QueryError> {
    let op = if top { "topk" } else { "bottomk" };
    let k = scalar_param(param, op)?;
    let (_, members) = group(input.iter().map(|s| &s.labels), modifier);
    let mut keep = vec![vec![false; n]; input.len()];
    // For an instant query: the output order, group by group, best first.
    let mut order: Vec<usize> = Vec::new();
    let mut cand: Vec<(f64, usize)> = Vec::new();
    for &k in &k {
        if k.is_nan() {
            return Err(QueryError::Execution("Parameter value is NaN".into()));
        }
        if k > i64::MAX as f64 || k < i64::MIN as f64 {
            return Err(QueryError::Execution(format!(
                "Scalar value {k} overflows int64"
            )));
        }
    }
    for idxs in &members {
        let columns: Vec<(usize, &[Option<f64>])> =
            idxs.iter().map(|&s| (s, &input[s].values[..])).collect();
        for i in 0..n {
            let k = k[i] as i64;
            if k < 1 {
                continue;
            }
            let take = k.min(idxs.len() as i64) as usize;
            if take <= FEW {
                // The few best kept in rank order as the members go by: most values
                // are turned away by one comparison with the worst kept.
                let values = columns
                    .iter()
                    .filter_map(|&(s, c)| c.get(i).copied().flatten().map(|v| (v, s)));
                if top {
                    few_best::<true>(values, take, &mut cand);
                } else {
                    few_best::<false>(values, take, &mut cand);
                }
                for &(_, s) in &cand {
                    keep[s][i] = true;
                    if n == 1 {
                        order.push(s);
                    }
                }
                continue;
            }
            cand.clear();
            cand.extend(
                idxs.iter()
                    .filter_map(|&s| input[s].values[i].map(|v| (v, s))),
            );
            // Best first; NaN always ranks last; equal values in input order.
            let rank = |&(x, a): &(f64, usize), &(y, b): &(f64, usize)| {
                match (x.is_nan(), y.is_nan()) {
                    (true, true) => std::cmp::Ordering::Equal,
                    (true, false) => std::cmp::Ordering::Greater,
                    (false, true) => std::cmp::Ordering::Less,
                    _ if top => y.partial_cmp(&x).unwrap_or(std::cmp::Ordering::Equal),
                    _ => x.partial_cmp(&y).unwrap_or(std::cmp::Ordering::Equal),
                }
                .then(a.cmp(&b))
            };
            let take = take.min(cand.len());
            if take < cand.len() {
                // The best `take` first; a range query needs only which they are.
                cand.select_nth_unstable_by(take, rank);
                if n == 1 {
                    cand[..take].sort_unstable_by(rank);
                }
            } else if n == 1 {
                cand.sort_unstable_by(rank);
            }
            for &(_, s) in &cand[..take] {
                keep[s][i] = true;
                if n == 1 {
                    order.push(s);
                }
            }
        }
    }
    if n != 1 {
        order = (0..input.len()).collect();
    }
    let mut input: Vec<Option<StepSeries>> = input.into_iter().map(Some).collect();
    let mut out = Vec::with_capacity(order.len());
    for s in order {
        if let Some(mut series) = input[s].take() {
            for (v, &k) in series.values.iter_mut().zip(&keep[s]) {
                if !k {
                    *v = None;
                }
            }
            if series.values.iter().any(Option::is_some) {
                out.push(series);
            }
        }
    }
    Ok(out)
}

/// Up to this many kept per step and group, `topk` and `bottomk` insert each value into
/// the kept ones in order; above, they select among all the step's values.
const FEW: usize = 32;

/// The `take` best of `values` (value, series) into `best`, best first, as a stable sort
/// of them would order them: NaN last, equal values in the order they come.
fn few_best<const TOP: bool>(
    values: impl Iterator<Item = (f64, usize)>,
    take: usize,
    best: &mut Vec<(f64, usize)>,
) {
    // Whether `v` ranks strictly before `w`.
    let before = |v: f64, w: f64| {
        if TOP {
            v > w || (w.is_nan() && !v.is_nan())
        } else {
            v < w || (w.is_nan() && !v.is_nan())
        }
    };
    best.clear();
    if take == 0 {
        return;
    }
    for (v, s) in values {
        if best.len() == take {
            // An equal value came later, so it ranks after the worst kept.
            match best.last() {
                Some(&(worst, _)) if before(v, worst) => best.pop(),
                _ => continue,
            };
        }
        // After every kept value that ranks at least as well.
        best.push((v, s));
        let mut at = best.len() - 1;
        while at > 0 && before(v, best[at - 1].0) {
            best[at] = best[at - 1];
            at -= 1;
        }
        best[at] = (v, s);
    }
}

/// `limitk`: at each step, the first `k` series of each group that have a value.
fn limit_k(
    input: Vec<StepSeries>,
    modifier: Option<&LabelModifier>,
    param: Param,
    n: usize,
) -> Result<Vec<StepSeries>, QueryError> {
    let k = scalar_param(param, "limitk")?;
    if k.iter().any(|k| k.is_nan()) {
        return Err(QueryError::Execution("Parameter value is NaN".into()));
    }
    let (_, members) = group(input.iter().map(|s| &s.labels), modifier);
    let mut keep = vec![vec![false; n]; input.len()];
    for idxs in &members {
        for (i, &k) in k.iter().enumerate() {
            let k = k.clamp(0.0, usize::MAX as f64) as usize;
            for &s in idxs
                .iter()
                .filter(|&&s| input[s].values[i].is_some())
                .take(k)
            {
                keep[s][i] = true;
            }
        }
    }
    Ok(filter_steps(input, &keep))
}

/// `limit_ratio(r, v)`: a deterministic sample of the series by a hash of their labels;
/// `r` and `r - 1` select complementary sets.
fn limit_ratio(
    input: Vec<StepSeries>,
    param: Param,
    n: usize,
) -> Result<Vec<StepSeries>, QueryError> {
    let r = scalar_param(param, "limit_ratio")?;
    if r.iter().any(|r| r.is_nan()) {
        return Err(QueryError::Execution("Ratio value is NaN".into()));
    }
    let mut keep = vec![vec![false; n]; input.len()];
    for (s, series) in input.iter().enumerate() {
        let position = series.labels.stable_hash() as f64 / u64::MAX as f64;
        for (i, &r) in r.iter().enumerate() {
            let r = r.clamp(-1.0, 1.0);
            keep[s][i] = if r >= 0.0 {
                position < r
            } else {
                position >= 1.0 + r
            };
        }
    }
    Ok(filter_steps(input, &keep))
}

/// Keeps each series' values only at the steps marked in `keep`.
fn filter_steps(input: Vec<StepSeries>, keep: &[Vec<bool>]) -> Vec<StepSeries> {
    input
        .into_iter()
        .zip(keep)
        .filter_map(|(mut s, keep)| {
            for (v, &k) in s.values.iter_mut().zip(keep) {
                if !k {
                    *v = None;
                }
            }
            s.values.iter().any(Option::is_some).then_some(s)
        })
        .collect()
}

fn count_values(
    input: Vec<StepSeries>,
    modifier: Option<&LabelModifier>,
    param: Param,
    n: usize,
) -> Result<Vec<StepSeries>, QueryError> {
    let Param::String(label) = param else {
        return Err(QueryError::BadData(
            "count_values needs a label name".into(),
        ));
    };
    if !is_valid_label_name(&label) {
        return Err(QueryError::Execution(format!(
            "invalid label name {label:?}"
        )));
    }
    let mut index: HashMap<Labels, usize> = HashMap::new();
    let mut out: Vec<StepSeries> = Vec::new();
    for s in &input {
        let base = grouping_labels(&s.labels, modifier);
        for (i, v) in s.values.iter().enumerate() {
            let Some(v) = *v else { continue };
            let mut key = base.clone();
            key.set(&label, &format_value(v));
            let g = *index.entry(key.clone()).or_insert_with(|| {
                out.push(StepSeries::new(key, vec![None; n]));
                out.len() - 1
            });
            let slot = &mut out[g].values[i];
            *slot = Some(slot.unwrap_or(0.0) + 1.0);
        }
    }
    Ok(out)
}

/// A float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` writes it.
pub(crate) fn format_value(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v == f64::INFINITY {
        "+Inf".into()
    } else if v == f64::NEG_INFINITY {
        "-Inf".into()
    } else {
        format!("{v}")
    }
}

pub(crate) fn is_valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sum,
    Avg,
    Min,
    Max,
    Count,
    Group,
    Stddev,
    Stdvar,
}

impl Kind {
    /// The aggregations that fold their group's values one at a time.
    pub(crate) fn of(op: &str) -> Option<Kind> {
        Some(match op {
            "sum" => Kind::Sum,
            "avg" => Kind::Avg,
            "min" => Kind::Min,
            "max" => Kind::Max,
            "count" => Kind::Count,
            "group" => Kind::Group,
            "stddev" => Kind::Stddev,
            "stdvar" => Kind::Stdvar,
            _ => return None,
        })
    }
}

/// One group's aggregation at every step, fed one member series at a time (members in
/// group order, so every step sees its values in the same order however they arrive).
pub(crate) enum GroupAcc {
    /// `sum`, the most common, in a compact form: the Kahan sum and its compensation.
    Sum(Vec<Option<(f64, f64)>>),
    Any {
        kind: Kind,
        steps: Vec<Option<Acc>>,
    },
}

impl GroupAcc {
    pub(crate) fn new(kind: Kind, n: usize) -> Self {
        match kind {
            Kind::Sum => GroupAcc::Sum(vec![None; n]),
            _ => GroupAcc::Any {
                kind,
                steps: vec![None; n],
            },
        }
    }

    /// Adds a member's value at every step where it has one.
    pub(crate) fn add(&mut self, values: &[Option<f64>]) {
        match self {
            GroupAcc::Sum(steps) => {
                for (slot, v) in steps.iter_mut().zip(values) {
                    if let Some(v) = *v {
                        *slot = Some(match *slot {
                            Some((sum, c)) => kahan_sum_inc(v, sum, c),
                            None => (v, 0.0),
                        });
                    }
                }
            }
            GroupAcc::Any { kind, steps } => {
                for (slot, v) in steps.iter_mut().zip(values) {
                    if let Some(v) = *v {
                        match slot {
                            Some(a) => a.add(*kind, v),
                            None => *slot = Some(Acc::new(v)),
                        }
                    }
                }
            }
        }
    }

    pub(crate) fn finish(self) -> Vec<Option<f64>> {
        match self {
            GroupAcc::Sum(steps) => steps
                .into_iter()
                .map(|a| a.map(|(sum, c)| sum + c))
                .collect(),
            GroupAcc::Any { kind, steps } => steps
                .into_iter()
                .map(|a| a.map(|a| a.result(kind)))
                .collect(),
        }
    }
}

/// The running state of one aggregation group at one step.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Acc {
    value: f64,
    c: f64,
    count: f64,
    mean: MeanAccumulator,
    welford_mean: f64,
    welford_m2: f64,
    /// Whether every value so far was finite (a NaN or infinity makes the spread NaN).
    finite: bool,
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
            welford_mean: v,
            welford_m2: 0.0,
            finite: v.is_finite(),
        }
    }

    fn add(&mut self, kind: Kind, v: f64) {
        self.count += 1.0;
        match kind {
            Kind::Sum => (self.value, self.c) = kahan_sum_inc(v, self.value, self.c),
            Kind::Avg => self.mean.add(v),
            Kind::Min => {
                if self.value > v || self.value.is_nan() {
                    self.value = v;
                }
            }
            Kind::Max => {
                if self.value < v || self.value.is_nan() {
                    self.value = v;
                }
            }
            Kind::Stddev | Kind::Stdvar => {
                self.finite &= v.is_finite();
                let delta = v - self.welford_mean;
                self.welford_mean += delta / self.count;
                self.welford_m2 += delta * (v - self.welford_mean);
            }
            Kind::Count | Kind::Group => {}
        }
    }

    fn result(&self, kind: Kind) -> f64 {
        match kind {
            Kind::Sum => self.value + self.c,
            Kind::Avg => self.mean.result(),
            Kind::Min | Kind::Max => self.value,
            Kind::Count => self.count,
            Kind::Group => 1.0,
            Kind::Stdvar | Kind::Stddev if !self.finite => f64::NAN,
            Kind::Stdvar => self.welford_m2 / self.count,
            Kind::Stddev => (self.welford_m2 / self.count).sqrt(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `topk`/`bottomk` as a stable sort of each step's values, best first: what each
    /// series keeps, and the order of those kept at the first step.
    fn reference(values: &[Vec<Option<f64>>], k: usize, top: bool) -> (Vec<Vec<bool>>, Vec<usize>) {
        let n = values[0].len();
        let mut keep = vec![vec![false; n]; values.len()];
        let mut first = Vec::new();
        for i in 0..n {
            let mut cand: Vec<usize> = (0..values.len())
                .filter(|&s| values[s][i].is_some())
                .collect();
            let v = |s: usize| values[s][i].unwrap_or(f64::NAN);
            cand.sort_by(|&a, &b| match (v(a).is_nan(), v(b).is_nan()) {
                (true, true) => std::cmp::Ordering::Equal,
                (true, false) => std::cmp::Ordering::Greater,
                (false, true) => std::cmp::Ordering::Less,
                _ if top => v(b).total_cmp(&v(a)),
                _ => v(a).total_cmp(&v(b)),
            });
            for &s in cand.iter().take(k) {
                keep[s][i] = true;
                if i == 0 {
                    first.push(s);
                }
            }
        }
        (keep, first)
    }

    #[test]
    fn groups_are_found_by_text_whether_or_not_strings_are_shared() {
        use std::sync::Arc;
        let promql_parser::parser::Expr::Aggregate(agg) =
            crate::parse("sum by (instance, job) (x)").unwrap_or_else(|e| panic!("{e}"))
        else {
            panic!("not an aggregation")
        };
        let text = |s: &str| -> Arc<str> { Arc::from(s) };
        let shared = text("a");
        let label = |name: Arc<str>, value: &Arc<str>| Label {
            name,
            value: Arc::clone(value),
        };
        let inputs = [
            // One string in both labels' values: a different group for each name.
            Labels::from_vec(vec![label(text("instance"), &shared)]),
            Labels::from_vec(vec![label(text("job"), &shared)]),
            // The same text in other allocations, and the shared one again.
            Labels::from_pairs([("instance", "a"), ("zone", "1")]),
            Labels::from_vec(vec![label(text("instance"), &shared)]),
            Labels::from_pairs([("job", "a")]),
            Labels::from_pairs([("instance", "b")]),
            // Both labels kept.
            Labels::from_pairs([("instance", "a"), ("job", "a")]),
        ];
        let (groups, members) = group(inputs.iter(), agg.modifier.as_ref());
        let shown: Vec<String> = groups.iter().map(ToString::to_string).collect();
        assert_eq!(
            shown,
            [
                r#"{instance="a"}"#,
                r#"{job="a"}"#,
                r#"{instance="b"}"#,
                r#"{instance="a", job="a"}"#
            ]
        );
        assert_eq!(members, [vec![0, 2, 3], vec![1, 4], vec![5], vec![6]]);
    }

    #[test]
    fn topk_keeps_the_stable_sorts_choice_with_ties_and_nan() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = move |m: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % m
        };
        for case in 0..300 {
            // Up to 80 series, so that k crosses FEW: both ways of choosing are checked.
            let (series, n) = (1 + next(80) as usize, 1 + next(20) as usize);
            // Few distinct values, so that ties cross the k-th place often.
            let values: Vec<Vec<Option<f64>>> = (0..series)
                .map(|_| {
                    (0..n)
                        .map(|_| match next(12) {
                            0 => None,
                            1 => Some(f64::NAN),
                            v => Some(v as f64 % 5.0),
                        })
                        .collect()
                })
                .collect();
            let k = next(series as u64 + 2) as usize;
            for top in [true, false] {
                let input: Vec<StepSeries> = values
                    .iter()
                    .enumerate()
                    .map(|(s, v)| {
                        StepSeries::new(Labels::from_pairs([("s", s.to_string())]), v.clone())
                    })
                    .collect();
                let out = top_k(input, None, Param::Scalar(vec![k as f64; n]), n, top)
                    .unwrap_or_else(|e| panic!("{e}"));
                let (want, first) = reference(&values, k, top);
                let mut got = vec![vec![false; n]; series];
                let mut order = Vec::new();
                for s in &out {
                    let i: usize = s.labels.get("s").and_then(|v| v.parse().ok()).unwrap_or(0);
                    for (j, v) in s.values.iter().enumerate() {
                        got[i][j] = v.is_some();
                    }
                    order.push(i);
                }
                assert_eq!(got, want, "case {case}, k {k}, top {top}");
                if n == 1 {
                    assert_eq!(order, first, "case {case}: an instant query's order");
                }
            }
        }
    }
}
