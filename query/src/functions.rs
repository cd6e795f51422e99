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
}

/// A function of a range window.
pub(crate) type WindowFn = fn(&Window<'_>) -> Option<f64>;

/// Looks up a window function by name: the function, and whether it keeps the metric name.
pub(crate) fn window_function(name: &str) -> Option<(WindowFn, bool)> {
    Some(match name {
        "rate" => (|w| extrapolated_rate(w, true, true), false),
        "increase" => (|w| extrapolated_rate(w, true, false), false),
        "delta" => (|w| extrapolated_rate(w, false, false), false),
        "irate" => (|w| instant_delta(w, true), false),
        "idelta" => (|w| instant_delta(w, false), false),
        "sum_over_time" => (sum_over_time, false),
        "avg_over_time" => (avg_over_time, false),
        "count_over_time" => (|w| non_empty(w).map(|s| s.len() as f64), false),
        "min_over_time" => (min_over_time, false),
        "max_over_time" => (max_over_time, false),
        "last_over_time" => (|w| w.samples.last().map(|s| s.1), true),
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
/// window's edges the way Prometheus does it.
fn extrapolated_rate(w: &Window<'_>, is_counter: bool, is_rate: bool) -> Option<f64> {
    let s = w.samples;
    if s.len() < 2 {
        return None;
    }
    let (first_t, first_v) = s[0];
    let (last_t, last_v) = s[s.len() - 1];
    let mut result = last_v - first_v;
    if is_counter {
        let mut prev = first_v;
        for &(_, v) in &s[1..] {
            if v < prev {
                result += prev;
            }
            prev = v;
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
        // A counter cannot go below zero: do not extrapolate past the point where it
        // would have been zero.
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
        }
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
