//! Functions over range windows (`rate`, `*_over_time`, …) and over instant values.
//!
//! Window functions see the samples of one series with timestamps in the left-open window
//! `(range_start, range_end]`, stale markers already removed, and return the value at that
//! step or `None` for no output.

/// One range window of one series.
pub(crate) struct Window<'a> {
    pub(crate) samples: &'a [(i64, f64)],
    pub(crate) range_start: i64,
    pub(crate) range_end: i64,
    /// The evaluation time of the step (used by `predict_linear`).
    pub(crate) eval_time: i64,
    /// Whether some sample in the window is lower than the one before it (a counter
    /// reset). `true` when unknown.
    pub(crate) may_have_resets: bool,
}

/// A function of a range window and the values of its scalar arguments at that step.
pub(crate) type WindowFn = fn(&Window<'_>, &[f64]) -> Result<Option<f64>, String>;

/// How a window function is called.
pub(crate) struct WindowSpec {
    pub(crate) f: WindowFn,
    /// Whether the output keeps the metric name.
    pub(crate) keep_name: bool,
    /// Index of the range-vector argument; the others are scalars.
    pub(crate) range_arg: usize,
    /// For `rate`, `increase` and `delta`: whether the function treats its input as a
    /// counter and whether it divides by the range. Evaluation calls these directly
    /// rather than through `f`, which lets the compiler fold them into its loop.
    pub(crate) extrapolated: Option<(bool, bool)>,
}

/// Looks up a window function by name.
pub(crate) fn window_function(name: &str) -> Option<WindowSpec> {
    let spec = |f: WindowFn, keep_name: bool| WindowSpec {
        f,
        keep_name,
        range_arg: 0,
        extrapolated: None,
    };
    let extrapolated = |f: WindowFn, counter: bool, rate: bool| WindowSpec {
        extrapolated: Some((counter, rate)),
        ..spec(f, false)
    };
    Some(match name {
        "rate" => extrapolated(|w, _| Ok(extrapolated_rate(w, true, true)), true, true),
        "increase" => extrapolated(|w, _| Ok(extrapolated_rate(w, true, false)), true, false),
        "delta" => extrapolated(|w, _| Ok(extrapolated_rate(w, false, false)), false, false),
        "irate" => spec(|w, _| Ok(instant_delta(w, true)), false),
        "idelta" => spec(|w, _| Ok(instant_delta(w, false)), false),
        "sum_over_time" => spec(|w, _| Ok(sum_over_time(w)), false),
        "avg_over_time" => spec(|w, _| Ok(avg_over_time(w)), false),
        "count_over_time" => spec(|w, _| Ok(non_empty(w).map(|s| s.len() as f64)), false),
        "min_over_time" => spec(|w, _| Ok(min_over_time(w)), false),
        "max_over_time" => spec(|w, _| Ok(max_over_time(w)), false),
        "last_over_time" => spec(|w, _| Ok(w.samples.last().map(|s| s.1)), true),
        "first_over_time" => spec(|w, _| Ok(w.samples.first().map(|s| s.1)), true),
        "present_over_time" => spec(|w, _| Ok(non_empty(w).map(|_| 1.0)), false),
        "changes" => spec(|w, _| Ok(changes(w)), false),
        "resets" => spec(|w, _| Ok(resets(w)), false),
        "deriv" => spec(|w, _| Ok(deriv(w)), false),
        "stddev_over_time" => spec(|w, _| Ok(stdvar_over_time(w).map(f64::sqrt)), false),
        "stdvar_over_time" => spec(|w, _| Ok(stdvar_over_time(w)), false),
        "mad_over_time" => spec(|w, _| Ok(mad_over_time(w)), false),
        "ts_of_last_over_time" => spec(
            |w, _| Ok(w.samples.last().map(|s| s.0 as f64 / 1000.0)),
            false,
        ),
        "ts_of_first_over_time" => spec(
            |w, _| Ok(w.samples.first().map(|s| s.0 as f64 / 1000.0)),
            false,
        ),
        "ts_of_min_over_time" => spec(|w, _| Ok(ts_of_extreme(w, |a, b| a < b)), false),
        "ts_of_max_over_time" => spec(|w, _| Ok(ts_of_extreme(w, |a, b| a > b)), false),
        "predict_linear" => spec(|w, args| Ok(predict_linear(w, args[0])), false),
        "double_exponential_smoothing" => spec(double_exponential_smoothing, false),
        "quantile_over_time" => WindowSpec {
            f: |w, args| {
                let s = non_empty(w).map(|s| s.iter().map(|p| p.1).collect::<Vec<f64>>());
                Ok(s.map(|mut v| quantile(args[0], &mut v)))
            },
            keep_name: false,
            range_arg: 1,
            extrapolated: None,
        },
        _ => return None,
    })
}

/// Looks up a function applied to each value of an instant vector.
pub(crate) fn value_function(name: &str) -> Option<fn(f64) -> f64> {
    Some(match name {
        "abs" => f64::abs,
        "ceil" => f64::ceil,
        "floor" => f64::floor,
        "exp" => f64::exp,
        "sqrt" => f64::sqrt,
        "ln" => f64::ln,
        "log2" => f64::log2,
        "log10" => f64::log10,
        "sin" => f64::sin,
        "cos" => f64::cos,
        "tan" => f64::tan,
        "asin" => f64::asin,
        "acos" => f64::acos,
        "atan" => f64::atan,
        "sinh" => f64::sinh,
        "cosh" => f64::cosh,
        "tanh" => f64::tanh,
        "asinh" => f64::asinh,
        "acosh" => f64::acosh,
        "atanh" => f64::atanh,
        "deg" => |v| v * 180.0 / std::f64::consts::PI,
        "rad" => |v| v * std::f64::consts::PI / 180.0,
        "sgn" => |v: f64| {
            if v > 0.0 {
                1.0
            } else if v < 0.0 {
                -1.0
            } else {
                v
            }
        },
        _ => return None,
    })
}

/// Go's `math.Max`: NaN wins.
pub(crate) fn go_max(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.max(b)
    }
}

/// Go's `math.Min`: NaN wins.
pub(crate) fn go_min(a: f64, b: f64) -> f64 {
    if a.is_nan() || b.is_nan() {
        f64::NAN
    } else {
        a.min(b)
    }
}

/// `round(v, to_nearest)` as Prometheus computes it.
pub(crate) fn round_to(v: f64, to_nearest: f64) -> f64 {
    let inv = 1.0 / to_nearest;
    (v * inv + 0.5).floor() / inv
}

/// The date functions: a Unix time in seconds to a calendar field, in UTC.
pub(crate) fn date_function(name: &str) -> Option<fn(f64) -> f64> {
    use chrono::{Datelike, Timelike};
    fn at(v: f64) -> Option<chrono::DateTime<chrono::Utc>> {
        if !v.is_finite() {
            return None;
        }
        chrono::DateTime::from_timestamp(v.trunc() as i64, 0)
    }
    fn field(v: f64, f: impl Fn(chrono::DateTime<chrono::Utc>) -> u32) -> f64 {
        at(v).map_or(f64::NAN, |t| f(t) as f64)
    }
    Some(match name {
        "year" => |v| at(v).map_or(f64::NAN, |t| t.year() as f64),
        "month" => |v| field(v, |t| t.month()),
        "day_of_month" => |v| field(v, |t| t.day()),
        "day_of_week" => |v| field(v, |t| t.weekday().num_days_from_sunday()),
        "day_of_year" => |v| field(v, |t| t.ordinal()),
        "hour" => |v| field(v, |t| t.hour()),
        "minute" => |v| field(v, |t| t.minute()),
        "days_in_month" => |v| {
            field(v, |t| {
                let (y, m) = (t.year(), t.month());
                let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
                match (
                    chrono::NaiveDate::from_ymd_opt(y, m, 1),
                    chrono::NaiveDate::from_ymd_opt(ny, nm, 1),
                ) {
                    (Some(a), Some(b)) => (b - a).num_days() as u32,
                    _ => 0,
                }
            })
        },
        _ => return None,
    })
}

fn non_empty<'a>(w: &Window<'a>) -> Option<&'a [(i64, f64)]> {
    (!w.samples.is_empty()).then_some(w.samples)
}

/// Kahan-Babuška-Neumaier summation step: adds `inc` to `sum` with compensation `c`.
pub(crate) fn kahan_sum_inc(inc: f64, sum: f64, c: f64) -> (f64, f64) {
    let t = sum + inc;
    let c = if t.is_infinite() {
        0.0
    } else if sum.abs() >= inc.abs() {
        c + ((sum - t) + inc)
    } else {
        c + ((inc - t) + sum)
    };
    (t, c)
}

/// `rate`, `increase` and `delta`: the change over the window, extrapolated towards the
/// window's edges the way Prometheus does it, bit for bit. Divisions whose result cannot
/// change the answer are left out: the average spacing when both edges lie clearly
/// within it, the time to zero when the first value is at least twice the increase.
#[inline(always)]
pub(crate) fn extrapolated_rate(w: &Window<'_>, is_counter: bool, is_rate: bool) -> Option<f64> {
    extrapolated_rate_with(w, is_counter, is_rate, None)
}

/// [`extrapolated_rate`], the extrapolation factor taken from `factors` when it does not
/// depend on the values.
#[inline(always)]
pub(crate) fn extrapolated_rate_with(
    w: &Window<'_>,
    is_counter: bool,
    is_rate: bool,
    factors: Option<&mut Factors>,
) -> Option<f64> {
    let c = change(w, is_counter)?;
    let factor = match factors {
        Some(f) if !c.near_zero => f.get(c.edges, c.range, is_rate),
        _ => extrapolation(
            c.edges,
            c.range,
            c.near_zero.then(|| c.first / c.result),
            is_rate,
        ),
    };
    Some(c.result * factor)
}

/// [`extrapolated_rate`] of a window whose edges' factor (what [`extrapolation`] gives
/// without the time to zero) is known, unless the time to zero may cut the
/// extrapolation short.
#[inline(always)]
pub(crate) fn extrapolated_rate_by(
    w: &Window<'_>,
    is_counter: bool,
    is_rate: bool,
    edge_factor: f64,
) -> Option<f64> {
    let c = change(w, is_counter)?;
    let factor = if c.near_zero {
        extrapolation(c.edges, c.range, Some(c.first / c.result), is_rate)
    } else {
        edge_factor
    };
    Some(c.result * factor)
}

/// What extrapolation starts from: the change over a window of two samples or more
/// (counter resets added back), its first value, its edges and its range.
struct Change {
    result: f64,
    first: f64,
    /// Whether the time to zero may cut the extrapolation short.
    near_zero: bool,
    edges: Edges,
    range: i64,
}

#[inline(always)]
fn change(w: &Window<'_>, is_counter: bool) -> Option<Change> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (first_v, last_v) = (s[0].1, s[s.len() - 1].1);
    let mut result = last_v - first_v;
    if is_counter && w.may_have_resets {
        let mut prev = first_v;
        for &(_, v) in &s[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
        }
    }
    // A counter cannot go below zero: extrapolation stops where it would have been zero.
    // With the first value at least twice the increase, that point lies at least two
    // sampled intervals before the first sample, beyond where extrapolation stops anyway
    // (below 1.1 average spacings, or half of one).
    let near_zero = is_counter && result > 0.0 && first_v >= 0.0 && first_v < result * 2.0;
    Some(Change {
        result,
        first: first_v,
        near_zero,
        edges: edges(s, w),
        range: w.range_end - w.range_start,
    })
}

/// The edges of `w`, whose samples `s` are two or more.
#[inline(always)]
fn edges(s: &[(i64, f64)], w: &Window<'_>) -> Edges {
    let (first_t, last_t) = (s[0].0, s[s.len() - 1].0);
    Edges {
        to_start: first_t - w.range_start,
        to_end: w.range_end - last_t,
        sampled: last_t - first_t,
        count: s.len(),
    }
}

/// The factor of a window's edges ([`Edges`]), without the time to zero: what
/// [`extrapolated_rate_by`] multiplies by for windows of samples at the same times,
/// whatever their values (`NaN` for fewer than two samples).
#[inline(always)]
pub(crate) fn edge_factor(w: &Window<'_>, is_rate: bool, factors: &mut Factors) -> f64 {
    let s = w.samples;
    if s.len() < 2 {
        return f64::NAN;
    }
    factors.get(edges(s, w), w.range_end - w.range_start, is_rate)
}

/// Where a window's first and last samples lie, in milliseconds, and how many it holds:
/// all that extrapolation looks at but the values.
#[derive(Clone, Copy)]
pub(crate) struct Edges {
    to_start: i64,
    to_end: i64,
    sampled: i64,
    count: usize,
}

/// What the change over a window is multiplied by: the extrapolated interval over the
/// sampled one, over the range in seconds for `rate`. `zero_share` is the first value
/// over the change, when the time to zero may cut the extrapolation short.
#[inline(always)]
fn extrapolation(e: Edges, range: i64, zero_share: Option<f64>, is_rate: bool) -> f64 {
    let sampled_interval = e.sampled as f64 / 1000.0;
    let intervals = (e.count - 1) as f64;
    let mut to_start = e.to_start as f64 / 1000.0;
    let mut to_end = e.to_end as f64 / 1000.0;
    // `to * intervals < sampled_interval * 1.1`, with a margin far above the rounding of
    // either side, means `to < avg_between * 1.1` as computed below.
    let clearly_within = |to: f64| to * intervals <= sampled_interval * 1.099_999_9;
    if !(clearly_within(to_start) && clearly_within(to_end)) {
        let avg_between = sampled_interval / intervals;
        let threshold = avg_between * 1.1;
        if to_start >= threshold {
            to_start = avg_between / 2.0;
        }
        if to_end >= threshold {
            to_end = avg_between / 2.0;
        }
    }
    if let Some(share) = zero_share {
        let to_zero = sampled_interval * share;
        if to_zero < to_start {
            to_start = to_zero;
        }
    }
    let mut factor = (sampled_interval + to_start + to_end) / sampled_interval;
    if is_rate {
        factor /= range as f64 / 1000.0;
    }
    factor
}

/// Extrapolation factors of recent windows by their [`Edges`], for one range and one
/// function. Series scraped together have their samples at the same distances from the
/// steps' window edges, which repeat from step to step up to a few milliseconds of
/// jitter: most windows find their factor here instead of computing it with four
/// divisions, the costliest part of a `rate`.
pub(crate) struct Factors {
    slots: Box<[(u64, f64); FACTOR_SLOTS]>,
    /// The range and function the slots hold factors for.
    of: (i64, bool),
}

const FACTOR_SLOTS: usize = 256;
const EMPTY_SLOT: u64 = u64::MAX;

impl Default for Factors {
    fn default() -> Self {
        Factors {
            slots: Box::new([(EMPTY_SLOT, 0.0); FACTOR_SLOTS]),
            of: (0, false),
        }
    }
}

impl Factors {
    #[inline(always)]
    pub(crate) fn get(&mut self, e: Edges, range: i64, is_rate: bool) -> f64 {
        // Both distances below 2^24 ms (4.6 h) and fewer than 2^15 samples: one key,
        // never the empty slot's.
        // `sampled` follows from the others and the range.
        const BELOW: i64 = 1 << 24;
        if !(0..BELOW).contains(&e.to_start)
            || !(0..BELOW).contains(&e.to_end)
            || e.count >= 1 << 15
        {
            return extrapolation(e, range, None, is_rate);
        }
        if self.of != (range, is_rate) {
            self.slots.fill((EMPTY_SLOT, 0.0));
            self.of = (range, is_rate);
        }
        let key = e.to_start as u64 | (e.to_end as u64) << 24 | (e.count as u64) << 48;
        let slot = &mut self.slots[(key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as usize];
        if slot.0 != key {
            *slot = (key, extrapolation(e, range, None, is_rate));
        }
        slot.1
    }
}

/// `irate` and `idelta`: from the last two samples of the window.
fn instant_delta(w: &Window<'_>, is_rate: bool) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (prev_t, prev_v) = s[s.len() - 2];
    let (last_t, last_v) = s[s.len() - 1];
    let mut result = if is_rate && last_v < prev_v {
        last_v // counter reset
    } else {
        last_v - prev_v
    };
    if is_rate {
        let interval = last_t - prev_t;
        if interval == 0 {
            return None;
        }
        result /= interval as f64 / 1000.0;
    }
    Some(result)
}

fn sum_over_time(w: &Window<'_>) -> Option<f64> {
    let s = non_empty(w)?;
    let (sum, c) = s
        .iter()
        .fold((0.0, 0.0), |(sum, c), &(_, v)| kahan_sum_inc(v, sum, c));
    Some(sum + c)
}

fn avg_over_time(w: &Window<'_>) -> Option<f64> {
    let s = non_empty(w)?;
    let mut mean = MeanAccumulator::default();
    for &(_, v) in s {
        mean.add(v);
    }
    Some(mean.result())
}

fn min_over_time(w: &Window<'_>) -> Option<f64> {
    let s = non_empty(w)?;
    Some(
        s.iter()
            .skip(1)
            .fold(s[0].1, |m, &(_, v)| if v < m || m.is_nan() { v } else { m }),
    )
}

fn max_over_time(w: &Window<'_>) -> Option<f64> {
    let s = non_empty(w)?;
    Some(
        s.iter()
            .skip(1)
            .fold(s[0].1, |m, &(_, v)| if v > m || m.is_nan() { v } else { m }),
    )
}

fn changes(w: &Window<'_>) -> Option<f64> {
    let s = non_empty(w)?;
    let n = s
        .windows(2)
        .filter(|p| !(p[0].1 == p[1].1 || (p[0].1.is_nan() && p[1].1.is_nan())))
        .count();
    Some(n as f64)
}

fn resets(w: &Window<'_>) -> Option<f64> {
    let s = non_empty(w)?;
    Some(s.windows(2).filter(|p| p[1].1 < p[0].1).count() as f64)
}

/// Least-squares slope and intercept at `intercept_time`, with compensated sums, as
/// Prometheus' `linearRegression`.
fn linear_regression(s: &[(i64, f64)], intercept_time: i64) -> (f64, f64) {
    let (mut n, mut sx, mut cx, mut sy, mut cy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    let (mut sxy, mut cxy, mut sx2, mut cx2) = (0.0, 0.0, 0.0, 0.0);
    let init_y = s[0].1;
    let mut const_y = true;
    for (i, &(t, v)) in s.iter().enumerate() {
        if const_y && i > 0 && v != init_y {
            const_y = false;
        }
        n += 1.0;
        let x = (t - intercept_time) as f64 / 1e3;
        (sx, cx) = kahan_sum_inc(x, sx, cx);
        (sy, cy) = kahan_sum_inc(v, sy, cy);
        (sxy, cxy) = kahan_sum_inc(x * v, sxy, cxy);
        (sx2, cx2) = kahan_sum_inc(x * x, sx2, cx2);
    }
    if const_y {
        if init_y.is_infinite() {
            return (f64::NAN, f64::NAN);
        }
        return (0.0, init_y);
    }
    let (sx, sy, sxy, sx2) = (sx + cx, sy + cy, sxy + cxy, sx2 + cx2);
    let cov = sxy - sx * sy / n;
    let var = sx2 - sx * sx / n;
    let slope = cov / var;
    (slope, sy / n - slope * sx / n)
}

fn deriv(w: &Window<'_>) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    Some(linear_regression(s, s[0].0).0)
}

fn predict_linear(w: &Window<'_>, seconds: f64) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (slope, intercept) = linear_regression(s, w.eval_time);
    Some(intercept + slope * seconds)
}

fn stdvar_over_time(w: &Window<'_>) -> Option<f64> {
    let s = non_empty(w)?;
    let (mut count, mut mean, mut c_mean, mut aux, mut c_aux) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(_, v) in s {
        count += 1.0;
        let delta = v - (mean + c_mean);
        (mean, c_mean) = kahan_sum_inc(delta / count, mean, c_mean);
        (aux, c_aux) = kahan_sum_inc(delta * (v - (mean + c_mean)), aux, c_aux);
    }
    Some((aux + c_aux) / count)
}

fn mad_over_time(w: &Window<'_>) -> Option<f64> {
    let s = non_empty(w)?;
    if s.iter().any(|p| p.1.is_nan()) {
        return Some(f64::NAN);
    }
    let mut values: Vec<f64> = s.iter().map(|p| p.1).collect();
    let median = quantile(0.5, &mut values);
    let mut dev: Vec<f64> = s.iter().map(|p| (p.1 - median).abs()).collect();
    Some(quantile(0.5, &mut dev))
}

fn ts_of_extreme(w: &Window<'_>, better: fn(f64, f64) -> bool) -> Option<f64> {
    let s = non_empty(w)?;
    let mut best = s[0];
    for &p in &s[1..] {
        if better(p.1, best.1) || (best.1.is_nan() && !p.1.is_nan()) {
            best = p;
        }
    }
    Some(best.0 as f64 / 1000.0)
}

fn double_exponential_smoothing(w: &Window<'_>, args: &[f64]) -> Result<Option<f64>, String> {
    let (sf, tf) = (args[0], args[1]);
    if !(sf > 0.0 && sf < 1.0) {
        return Err(format!(
            "invalid smoothing factor. Expected: 0 < sf < 1, got: {sf}"
        ));
    }
    if !(tf > 0.0 && tf < 1.0) {
        return Err(format!(
            "invalid trend factor. Expected: 0 < tf < 1, got: {tf}"
        ));
    }
    let s = w.samples;
    if s.len() < 2 {
        return Ok(None);
    }
    let (mut s0, mut s1, mut b) = (0.0, s[0].1, s[1].1 - s[0].1);
    for (i, &(_, v)) in s.iter().enumerate().skip(1) {
        let x = sf * v;
        if i > 1 {
            b = tf * (s1 - s0) + (1.0 - tf) * b;
        }
        let y = (1.0 - sf) * (s1 + b);
        s0 = s1;
        s1 = x + y;
    }
    Ok(Some(s1))
}

/// The φ-quantile of `values` with Prometheus' interpolation; NaN sorts lowest.
pub(crate) fn quantile(q: f64, values: &mut [f64]) -> f64 {
    if values.is_empty() || q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    values.sort_by(|a, b| match (a.is_nan(), b.is_nan()) {
        (true, true) => std::cmp::Ordering::Equal,
        (true, false) => std::cmp::Ordering::Less,
        (false, true) => std::cmp::Ordering::Greater,
        _ => a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal),
    });
    let n = values.len() as f64;
    let rank = q * (n - 1.0);
    let lower = rank.floor().max(0.0);
    let upper = (lower + 1.0).min(n - 1.0);
    let weight = rank - rank.floor();
    values[lower as usize] * (1.0 - weight) + values[upper as usize] * weight
}

/// An average that stays exact with compensated summation and switches to an incremental
/// mean when the plain sum would overflow, as Prometheus computes `avg`.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MeanAccumulator {
    count: f64,
    sum: f64,
    c: f64,
    mean: f64,
    incremental: bool,
}

impl MeanAccumulator {
    pub(crate) fn add(&mut self, v: f64) {
        self.count += 1.0;
        if self.count == 1.0 {
            self.sum = v;
            self.mean = v;
            return;
        }
        if !self.incremental {
            let (sum, c) = kahan_sum_inc(v, self.sum, self.c);
            if !sum.is_infinite() {
                self.sum = sum;
                self.c = c;
                return;
            }
            self.incremental = true;
            self.mean = self.sum / (self.count - 1.0);
            self.c /= self.count - 1.0;
        }
        if self.mean.is_infinite() {
            if v.is_infinite() && (self.mean > 0.0) == (v > 0.0) {
                return;
            }
            if !v.is_infinite() && !v.is_nan() {
                return;
            }
        }
        let current = self.mean + self.c;
        let (mean, c) = kahan_sum_inc(v / self.count - current / self.count, self.mean, self.c);
        self.mean = mean;
        self.c = c;
    }

    pub(crate) fn result(&self) -> f64 {
        if self.incremental {
            self.mean + self.c
        } else {
            self.sum / self.count + self.c / self.count
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(samples: &[(i64, f64)], start: i64, end: i64) -> Window<'_> {
        Window {
            samples,
            range_start: start,
            range_end: end,
            eval_time: end,
            may_have_resets: true,
        }
    }

    /// Prometheus' extrapolation as written there: every division made.
    fn rate_as_written(w: &Window<'_>, is_counter: bool, is_rate: bool) -> Option<f64> {
        let s = w.samples;
        if s.len() < 2 {
            return None;
        }
        let (first_t, first_v) = s[0];
        let (last_t, last_v) = s[s.len() - 1];
        let mut result = last_v - first_v;
        if is_counter {
            for p in s.windows(2) {
                if p[1].1 < p[0].1 {
                    result += p[0].1;
                }
            }
        }
        let sampled_interval = (last_t - first_t) as f64 / 1000.0;
        let avg_between = sampled_interval / (s.len() - 1) as f64;
        let mut to_start = (first_t - w.range_start) as f64 / 1000.0;
        let mut to_end = (w.range_end - last_t) as f64 / 1000.0;
        let threshold = avg_between * 1.1;
        if to_start >= threshold {
            to_start = avg_between / 2.0;
        }
        if is_counter && result > 0.0 && first_v >= 0.0 {
            let to_zero = sampled_interval * (first_v / result);
            if to_zero < to_start {
                to_start = to_zero;
            }
        }
        if to_end >= threshold {
            to_end = avg_between / 2.0;
        }
        let mut factor = (sampled_interval + to_start + to_end) / sampled_interval;
        if is_rate {
            factor /= (w.range_end - w.range_start) as f64 / 1000.0;
        }
        Some(result * factor)
    }

    /// Pseudo-random numbers below each call's bound (xorshift), from `seed`.
    fn numbers_below(mut seed: u64) -> impl FnMut(u64) -> u64 {
        move |n| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        }
    }

    #[test]
    fn rate_without_needless_divisions_is_bit_for_bit_prometheus() {
        let mut next = numbers_below(0x2545_f491_4f6c_dd1du64);
        let mut samples = Vec::new();
        for round in 0..200_000 {
            // Scrapes 15 s apart with jitter, or irregular; edges near 1.1 spacings;
            // counters starting near zero (extrapolation stops at zero), dropping, or
            // large; gauges going down.
            let spacing = [15_000, 10_000, 1, 60_000][round % 4];
            let n = 2 + next(25) as usize;
            let start = next(1 << 40) as i64;
            let mut t = start + next(spacing as u64 * 2) as i64;
            let mut v = match next(3) {
                0 => next(5) as f64,
                1 => next(1_000_000_000) as f64 / 100.0,
                _ => -(next(1000) as f64),
            };
            samples.clear();
            for _ in 0..n {
                samples.push((t, v));
                let jitter = if spacing > 3 { next(7) as i64 - 3 } else { 0 };
                t += spacing + jitter + if next(10) == 0 { spacing } else { 0 };
                v += match next(12) {
                    0 => -v / 2.0,
                    1 => -(next(50) as f64),
                    _ => next(100) as f64 / 10.0,
                };
            }
            let last = samples[n - 1].0;
            let end = last + next(spacing as u64 * 2) as i64;
            let start = start.min(end - 1);
            let win = w(&samples, start, end);
            for (counter, rate) in [(true, true), (true, false), (false, false)] {
                let want = rate_as_written(&win, counter, rate).map(f64::to_bits);
                let got = extrapolated_rate(&win, counter, rate).map(f64::to_bits);
                assert_eq!(got, want, "{samples:?} ({start}, {end}]");
            }
        }
    }

    /// Windows stepping over series scraped together, as a range query cuts them: the
    /// factors found again in [`Factors`] give what computing each one gives, through
    /// counters near zero, resets, gauges, ranges that change and edges out of the key.
    #[test]
    fn remembered_factors_give_what_computing_them_gives() {
        let mut next = numbers_below(0x9e37_79b9_7f4a_7c15u64);
        let mut factors = Factors::default();
        let (mut windows, mut keys) = (0usize, std::collections::HashSet::new());
        for round in 0..40 {
            let range = [300_000, 60_000, 3_600_000, 20_000_000][round % 4];
            // Eight series scraped at the same moments, 15 s apart with up to 4 ms of
            // jitter and one scrape in eight missed (windows with the same edges and
            // different counts, edges beyond 1.1 spacings); some start near zero, some
            // drop, some are gauges.
            let times: Vec<i64> = (0..2_000)
                .filter_map(|k| {
                    let jitter = next(5) as i64;
                    (next(8) != 0).then_some(1_700_000_000_000 + k * 15_000 + jitter)
                })
                .collect();
            for series in 0..8u64 {
                let mut v = if series % 2 == 0 { next(3) as f64 } else { 1e6 };
                let samples: Vec<(i64, f64)> = times
                    .iter()
                    .map(|&t| {
                        v += match next(40) {
                            0 if series % 4 == 1 => -v,
                            1 if series == 7 => -(next(100) as f64),
                            _ => next(1_000) as f64 / 100.0,
                        };
                        (t, v)
                    })
                    .collect();
                for step in 0..100 {
                    let end = 1_700_000_000_000 + range + step * 60_000 + 7;
                    let lo = samples.partition_point(|s| s.0 <= end - range);
                    let hi = samples.partition_point(|s| s.0 <= end);
                    let win = w(&samples[lo..hi], end - range, end);
                    for (counter, rate) in [(true, true), (true, false), (false, false)] {
                        let want = rate_as_written(&win, counter, rate).map(f64::to_bits);
                        let got = extrapolated_rate_with(&win, counter, rate, Some(&mut factors))
                            .map(f64::to_bits);
                        assert_eq!(got, want, "range {range}, step {step}, series {series}");
                    }
                    windows += 1;
                    if let (Some(f), Some(l)) = (win.samples.first(), win.samples.last()) {
                        keys.insert((range, f.0 - (end - range), end - l.0, win.samples.len()));
                    }
                }
            }
        }
        // Most windows met edges seen before: the remembered factors were used.
        assert!(
            keys.len() * 4 < windows,
            "{} keys, {windows} windows",
            keys.len()
        );
    }

    #[test]
    fn rate_of_a_steady_counter_is_exact() {
        // 0, 10, 20, ... every 15 s; window (0, 300 s] holds 20 samples.
        let s: Vec<(i64, f64)> = (1..=20).map(|i| (i * 15_000, i as f64 * 10.0)).collect();
        let r = extrapolated_rate(&w(&s, 0, 300_000), true, true).unwrap();
        assert!((r - 10.0 / 15.0).abs() < 1e-12, "{r}");
    }

    #[test]
    fn counter_reset_is_compensated() {
        let s = [(10_000, 5.0), (20_000, 10.0), (30_000, 2.0), (40_000, 7.0)];
        // Increase is (10-5) + 2 + 5 = 12 over 30 s sampled. The start gap (10 s) is
        // within 1.1 average intervals and is extrapolated in full; the end gap (20 s) is
        // not, so only half an interval (5 s) is added there: 12 * 45 / 30.
        let inc = extrapolated_rate(&w(&s, 0, 60_000), true, false).unwrap();
        assert!((inc - 18.0).abs() < 1e-9, "{inc}");
        let irate = instant_delta(&w(&s, 0, 60_000), true).unwrap();
        assert!((irate - 0.5).abs() < 1e-12);
    }

    #[test]
    fn kahan_keeps_small_terms() {
        let s = [(1, 1e100), (2, 1.0), (3, -1e100)];
        assert_eq!(sum_over_time(&w(&s, 0, 3)), Some(1.0));
    }

    #[test]
    fn mean_survives_overflow() {
        let mut m = MeanAccumulator::default();
        m.add(f64::MAX);
        m.add(f64::MAX);
        assert_eq!(m.result(), f64::MAX);
    }
}
