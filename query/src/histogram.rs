//! `histogram_quantile` over classic histograms: series of cumulative bucket counts with
//! an `le` label, interpolated linearly inside the bucket that holds the rank.

/// One bucket: its upper bound and cumulative count.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bucket {
    pub(crate) upper: f64,
    pub(crate) count: f64,
}

/// Tolerance under which differences between adjacent counts are float noise.
const SMALL_DELTA: f64 = 1e-12;

/// The φ-quantile of a set of classic buckets, or NaN when it is undefined (no `+Inf`
/// bucket, fewer than two buckets, no observations).
pub(crate) fn bucket_quantile(q: f64, buckets: &mut Vec<Bucket>) -> f64 {
    if q.is_nan() {
        return f64::NAN;
    }
    if q < 0.0 {
        return f64::NEG_INFINITY;
    }
    if q > 1.0 {
        return f64::INFINITY;
    }
    buckets.sort_by(|a, b| {
        a.upper
            .partial_cmp(&b.upper)
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    match buckets.last() {
        Some(b) if b.upper == f64::INFINITY => {}
        _ => return f64::NAN,
    }
    coalesce(buckets);
    ensure_monotonic(buckets);
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

/// Makes counts non-decreasing, ignoring float noise, as Prometheus does.
fn ensure_monotonic(buckets: &mut [Bucket]) {
    let Some(first) = buckets.first() else {
        return;
    };
    let mut prev = first.count;
    for b in buckets.iter_mut().skip(1) {
        let cur = b.count;
        if cur == prev {
            continue;
        }
        if almost_equal(prev, cur, SMALL_DELTA) || cur < prev {
            b.count = prev;
            continue;
        }
        prev = cur;
    }
}

pub(crate) fn almost_equal(a: f64, b: f64, epsilon: f64) -> bool {
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
        assert!((bucket_quantile(0.5, &mut v) - 0.3).abs() < 1e-12);
        let mut v = vec![b(0.1, 10.0), b(0.5, 30.0), b(f64::INFINITY, 40.0)];
        assert_eq!(bucket_quantile(0.99, &mut v), 0.5);
    }

    #[test]
    fn undefined_cases() {
        assert!(bucket_quantile(0.5, &mut vec![b(1.0, 1.0), b(2.0, 2.0)]).is_nan());
        assert!(bucket_quantile(0.5, &mut vec![b(f64::INFINITY, 0.0), b(1.0, 0.0)]).is_nan());
        assert_eq!(bucket_quantile(-1.0, &mut vec![]), f64::NEG_INFINITY);
    }
}
