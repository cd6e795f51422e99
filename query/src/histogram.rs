//! `histogram_quantile` over classic histograms: series of cumulative bucket counts with
//! an `le` label, interpolated linearly inside the bucket that holds the rank.

/// One bucket: its upper bound and cumulative count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    pub(crate) upper: f64,
    pub(crate) count: f64,
}

/// Relative difference under which adjacent counts are float noise.
const SMALL_DELTA: f64 = 1e-12;

/// The φ-quantile of a set of classic buckets, or NaN when it is undefined (no `+Inf`
/// bucket, fewer than two buckets, no observations); and whether decreasing counts had to
/// be raised to make the buckets monotonic.
pub(crate) fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> (f64, bool) {
    if q.is_nan() {
        return (f64::NAN, false);
    }
    if q < 0.0 {
        return (f64::NEG_INFINITY, false);
    }
    if q > 1.0 {
        return (f64::INFINITY, false);
    }
    let mut forced = false;
    let v = quantile_of_sorted(q, buckets, &mut forced);
    (v, forced)
}

/// Sorts the buckets, merges equal bounds and repairs their counts, as both histogram
/// functions need. `None` when there is no `+Inf` bucket; otherwise whether decreasing
/// counts had to be raised.
fn prepare(buckets: &mut Vec<Bucket>) -> Option<bool> {
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    match buckets.last() {
        Some(b) if b.upper == f64::INFINITY => {}
        _ => return None,
    }
    coalesce(buckets);
    correct_precision_errors(buckets);
    Some(ensure_monotonic(buckets))
}

fn quantile_of_sorted(q: f64, buckets: &mut Vec<Bucket>, forced: &mut bool) -> f64 {
    let Some(fixed) = prepare(buckets) else {
        return f64::NAN;
    };
    *forced = fixed;
    if buckets.len() < 2 {
        return f64::NAN;
    }
    let observations = buckets[buckets.len() - 1].count;
    if observations == 0.0 {
        return f64::NAN;
    }
    let mut rank = q * observations;
    // The first bucket (not counting +Inf) whose count reaches the rank.
    let b = buckets[..buckets.len() - 1]
        .iter()
        .position(|x| x.count >= rank)
        .unwrap_or(buckets.len() - 1);
    if b == buckets.len() - 1 {
        return buckets[buckets.len() - 2].upper;
    }
    if b == 0 && buckets[0].upper <= 0.0 {
        return buckets[0].upper;
    }
    let (mut start, end, mut count) = (0.0, buckets[b].upper, buckets[b].count);
    if b > 0 {
        start = buckets[b - 1].upper;
        count -= buckets[b - 1].count;
        rank -= buckets[b - 1].count;
    }
    start + (end - start) * (rank / count)
}

/// Merges buckets with the same upper bound by adding their counts.
fn coalesce(buckets: &mut Vec<Bucket>) {
    let mut out: Vec<Bucket> = Vec::with_capacity(buckets.len());
    for b in buckets.drain(..) {
        match out.last_mut() {
            Some(last) if last.upper == b.upper => last.count += b.count,
            _ => out.push(b),
        }
    }
    *buckets = out;
}

/// Treats relative differences up to [`SMALL_DELTA`] between adjacent counts as equal.
fn correct_precision_errors(buckets: &mut [Bucket]) {
    let Some(first) = buckets.first() else {
        return;
    };
    let mut prev = first.count;
    for b in buckets.iter_mut().skip(1) {
        let delta = (b.count - prev).abs();
        if delta == 0.0 {
            continue;
        }
        if delta / b.count <= SMALL_DELTA {
            b.count = prev;
        } else {
            prev = b.count;
        }
    }
}

/// Removes decreases between successive counts (the running maximum); returns whether
/// any count was raised.
fn ensure_monotonic(buckets: &mut [Bucket]) -> bool {
    let Some(first) = buckets.first() else {
        return false;
    };
    let mut max = first.count;
    let mut forced = false;
    for b in buckets.iter_mut().skip(1) {
        if b.count > max {
            max = b.count;
        } else if b.count < max {
            b.count = max;
            forced = true;
        }
    }
    forced
}

/// The fraction of observations between `lower` and `upper` in a set of classic buckets.
/// The lowest bucket starts at 0 when its upper bound is positive and at -Inf otherwise;
/// an infinite-width bucket holds its observations at its finite end.
pub(crate) fn bucket_fraction(lower: f64, upper: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if prepare(buckets).is_none() {
        return f64::NAN;
    }
    let total = buckets[buckets.len() - 1].count;
    if total == 0.0 || lower.is_nan() || upper.is_nan() {
        return f64::NAN;
    }
    if lower >= upper {
        return 0.0;
    }
    let (mut rank, mut lower_rank, mut upper_rank) = (0.0, total, total);
    let (mut lower_set, mut upper_set) = (false, false);
    for (i, b) in buckets.iter().enumerate() {
        let start = match i {
            0 if b.upper > 0.0 => 0.0,
            0 => f64::NEG_INFINITY,
            _ => buckets[i - 1].upper,
        };
        let count = b.count - rank;
        let at = |v: f64| {
            if start == f64::NEG_INFINITY {
                rank + count
            } else {
                rank + count * (v - start) / (b.upper - start)
            }
        };
        if !lower_set && start >= lower {
            lower_rank = rank;
            lower_set = true;
        }
        if !upper_set && start >= upper {
            upper_rank = rank;
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        if !lower_set && start < lower && b.upper > lower {
            lower_rank = at(lower);
            lower_set = true;
        }
        if !upper_set && start < upper && b.upper > upper {
            upper_rank = at(upper);
            upper_set = true;
        }
        if lower_set && upper_set {
            break;
        }
        rank = b.count;
    }
    (upper_rank.min(total) - lower_rank.min(total)) / total
}

#[cfg(test)]
fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
    if a.is_nan() && b.is_nan() {
        return true;
    }
    if a == b {
        return true;
    }
    let abs_sum = a.abs() + b.abs();
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || abs_sum < f64::MIN_POSITIVE {
        return diff < epsilon * f64::MIN_POSITIVE;
    }
    diff / abs_sum.min(f64::MAX) < epsilon
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b(upper: f64, count: f64) -> Bucket {
        Bucket { upper, count }
    }

    #[test]
    fn interpolates_inside_the_bucket() {
        let mut v = vec![b(0.1, 10.0), b(0.5, 30.0), b(f64::INFINITY, 40.0)];
        // rank 20 falls halfway through (0.1, 0.5].
        assert!((bucket_quantile(0.5, &mut v).0 - 0.3).abs() < 1e-12);
        let mut v = vec![b(0.1, 10.0), b(0.5, 30.0), b(f64::INFINITY, 40.0)];
        assert_eq!(bucket_quantile(0.99, &mut v).0, 0.5);
    }

    #[test]
    fn fractions() {
        let mut v = vec![
            b(1.0, 1.0),
            b(2.0, 3.0),
            b(3.0, 6.0),
            b(f64::INFINITY, 100.0),
        ];
        assert!(almost_equal(bucket_fraction(0.0, 1.5, &mut v), 0.02, 1e-12));
        assert!(almost_equal(
            bucket_fraction(400.0, f64::INFINITY, &mut v),
            0.94,
            1e-12
        ));
        assert_eq!(bucket_fraction(4.0, 5.0, &mut v), 0.0);
        let mut v = vec![
            b(-3.0, 10.0),
            b(-2.0, 12.0),
            b(-1.0, 15.0),
            b(f64::INFINITY, 100.0),
        ];
        assert!(almost_equal(
            bucket_fraction(-4.0, -2.0, &mut v),
            0.02,
            1e-12
        ));
        assert!(almost_equal(
            bucket_fraction(f64::NEG_INFINITY, -1.5, &mut v),
            0.135,
            1e-12
        ));
    }

    #[test]
    fn undefined_cases() {
        assert!(bucket_quantile(0.5, &mut vec![b(1.0, 1.0), b(2.0, 2.0)])
            .0
            .is_nan());
        assert!(
            bucket_quantile(0.5, &mut vec![b(f64::INFINITY, 0.0), b(1.0, 0.0)])
                .0
                .is_nan()
        );
        assert_eq!(bucket_quantile(-1.0, &mut vec![]).0, f64::NEG_INFINITY);
    }
}
