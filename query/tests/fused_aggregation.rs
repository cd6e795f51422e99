//! An aggregation over a window function of a range selector is folded series by series
//! (`sum by (g) (rate(m[5m]))` never holds every series' values); it must give exactly
//! what evaluating the function and then the aggregation gives. `f(m[5m]) * 1` takes
//! the general path, so each query is compared with that form, bit for bit.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use strata_query::{Engine, EngineOptions, QueryValue};
use strata_storage::{Db, Labels, Options};

const HOUR: i64 = 3_600_000;

/// 400 series of `m` in groups of uneven size, with gaps, counter resets and late starts.
fn db(dir: &std::path::Path) -> Db {
    let db = Db::open(dir, Options::default()).unwrap();
    let mut app = db.appender();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for i in 0..400u64 {
        let l = Labels::from_pairs([
            ("__name__", "m".to_string()),
            ("g", ((i * i) % 9).to_string()),
            ("h", i.to_string()),
        ]);
        let first = if i % 10 == 0 { 120 } else { 0 };
        let mut v = 0.0;
        for k in first..240u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            if (k + i) % 37 < 5 {
                continue;
            }
            v += (x % 1000) as f64 / 7.0;
            if x.is_multiple_of(97) {
                v = 0.0;
            }
            app.append(&l, k as i64 * 15_000, v).unwrap();
        }
    }
    app.commit().unwrap();
    db
}

#[test]
fn folded_aggregations_equal_the_general_path() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    for delayed_name_removal in [false, true] {
        let engine = Engine::new(EngineOptions {
            delayed_name_removal,
            ..EngineOptions::default()
        });
        let mut compared = 0;
        for op in [
            "sum", "avg", "min", "max", "count", "group", "stddev", "stdvar",
        ] {
            for modifier in ["", "by (g)", "without (h)"] {
                for f in ["rate((m[5m]))", "quantile_over_time(0.3, m[10m])"] {
                    let folded = format!("{op} {modifier} ({f})");
                    let general = format!("{op} {modifier} ({f} * 1)");
                    let a = engine.range_query(&db, &folded, 0, HOUR, 60_000).unwrap();
                    let b = engine.range_query(&db, &general, 0, HOUR, 60_000).unwrap();
                    assert_eq!(
                        format!("{:?}", a.value),
                        format!("{:?}", b.value),
                        "{folded}"
                    );
                    assert!(
                        matches!(&a.value, QueryValue::Matrix(m) if !m.is_empty()),
                        "{folded}: empty"
                    );
                    for t in [HOUR / 4, HOUR - 7_000] {
                        let a = engine.instant_query(&db, &folded, t).unwrap();
                        let b = engine.instant_query(&db, &general, t).unwrap();
                        assert_eq!(
                            format!("{:?}", a.value),
                            format!("{:?}", b.value),
                            "{folded} at {t}"
                        );
                    }
                    compared += 1;
                }
            }
        }
        assert_eq!(compared, 48);
    }
}

#[test]
fn series_that_collide_once_named_apart_are_still_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut app = db.appender();
    for name in ["a_total", "b_total"] {
        let l = Labels::from_pairs([("__name__", name), ("job", "x")]);
        for k in 0..20 {
            app.append(&l, k * 15_000, k as f64).unwrap();
        }
    }
    app.commit().unwrap();
    let engine = Engine::new(EngineOptions::default());
    let q = r#"sum(rate({__name__=~"a_total|b_total"}[1m]))"#;
    let err = engine.instant_query(&db, q, 285_000).err();
    assert!(
        err.as_ref()
            .is_some_and(|e| e.to_string().contains("same labelset")),
        "{err:?}"
    );
}

/// An instant vector's series and values' bits, sorted.
fn vector_bits(v: &[(Labels, i64, f64)]) -> Vec<(String, u64)> {
    let mut bits: Vec<(String, u64)> = v
        .iter()
        .map(|(l, _, x)| (l.to_string(), x.to_bits()))
        .collect();
    bits.sort();
    bits
}

/// A matrix's series and the bits of their values at `t`, sorted.
fn step_bits(m: &[(Labels, Vec<(i64, f64)>)], t: i64) -> Vec<(String, u64)> {
    let mut bits: Vec<(String, u64)> = m
        .iter()
        .filter_map(|(l, points)| {
            let &(_, x) = points.iter().find(|p| p.0 == t)?;
            Some((l.to_string(), x.to_bits()))
        })
        .collect();
    bits.sort();
    bits
}

/// Each step of a range query is the instant query at that step's time, bit for bit:
/// ranges of whole steps take a window's start from the window that many steps before,
/// and samples lie exactly on window edges here.
#[test]
fn range_query_steps_equal_instant_queries() {
    let dir = tempfile::tempdir().unwrap();
    let db = db(dir.path());
    let engine = Engine::default();
    let mut compared = 0;
    for f in [
        "rate(m[5m])",
        "increase(m[1m])",
        "count_over_time(m[3m])",
        "max_over_time(m[5m] offset 30s)",
        "rate(m[90s])",
    ] {
        for step in [15_000, 60_000, 90_000, 120_000] {
            let (start, end) = (HOUR / 2 + 7_500, HOUR + 15_000);
            let range = engine.range_query(&db, f, start, end, step).unwrap();
            let QueryValue::Matrix(m) = range.value else {
                panic!("{f}: not a matrix");
            };
            let mut t = start;
            while t <= end {
                let QueryValue::Vector(v) = engine.instant_query(&db, f, t).unwrap().value else {
                    panic!("{f} at {t}: not a vector");
                };
                let (want, got) = (vector_bits(&v), step_bits(&m, t));
                assert!(!want.is_empty(), "{f} at {t}: empty");
                assert_eq!(got, want, "{f} at {t}, step {step}");
                compared += 1;
                t += step;
            }
        }
    }
    assert!(compared > 300, "{compared}");
}

/// Over series with stale markers, drops and counters near zero, each step of a range
/// query is the instant query fixed with `@` at that step's time, bit for bit: windows
/// found by walking the samples step after step, or taken from the series before when
/// the samples lie at the same times (what a range query does), and by searching them
/// (what `@` does) hold the same samples, cleaned the same way. Series come in targets
/// of five that share their scrape times.
#[test]
fn range_steps_equal_instant_queries_fixed_with_at() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut app = db.appender();
    let mut x = 0x2545_f491_4f6c_dd1du64;
    for i in 0..60u64 {
        let target = i / 5;
        let l = Labels::from_pairs([
            ("__name__", "m".to_string()),
            ("h", i.to_string()),
            ("t", target.to_string()),
        ]);
        let mut v = 0.0;
        for k in 0..240u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // A few ms of jitter, the same for a target's series; for half of the
            // targets only in the middle hour, so that their times differ only there.
            let jitter = if target % 2 == 0 && !(100..140).contains(&k) {
                0
            } else {
                (target * 7_919 + k * 104_729) % 5
            };
            let t = k as i64 * 15_000 + jitter as i64;
            // A third of the series go away for a scrape now and then, some for a
            // while; the others have no stale marker.
            if (i % 3 == 0 && x.is_multiple_of(29)) || (i % 9 == 0 && (100..140).contains(&k)) {
                app.append(&l, t, strata_storage::stale_nan()).unwrap();
                continue;
            }
            // Some counters creep up from zero for a while: the time to zero counts.
            v += if i % 4 == 1 && k < 40 {
                (x % 3) as f64 / 100.0
            } else {
                (x % 1000) as f64 / 8.0
            };
            if x.is_multiple_of(31) {
                v /= 3.0;
            }
            if x.is_multiple_of(53) {
                v = 0.0;
            }
            app.append(&l, t, v).unwrap();
        }
    }
    app.commit().unwrap();
    let engine = Engine::default();
    let mut drops_seen = 0.0;
    for f in [
        "rate(m[5m])",
        "increase(m[2m])",
        "delta(m[5m])",
        "resets(m[5m])",
        "changes(m[3m])",
        "irate(m[1m])",
        "count_over_time(m[3m])",
        "sum_over_time(m[5m])",
        "sum by (t) (rate(m[5m]))",
        "max by (t) (increase(m[3m]))",
    ] {
        let (start, end, step) = (300_000, HOUR, 60_000);
        let QueryValue::Matrix(m) = engine.range_query(&db, f, start, end, step).unwrap().value
        else {
            panic!("{f}: not a matrix");
        };
        let mut t = start;
        while t <= end {
            let fixed = f.replace("])", &format!("] @ {})", t as f64 / 1000.0));
            let QueryValue::Vector(v) = engine.instant_query(&db, &fixed, t).unwrap().value else {
                panic!("{fixed}: not a vector");
            };
            let (want, got) = (vector_bits(&v), step_bits(&m, t));
            assert_eq!(got, want, "{f} at {t}");
            assert!(!want.is_empty(), "{f} at {t}: nothing compared");
            if f.starts_with("resets") {
                drops_seen += v.iter().map(|s| s.2).sum::<f64>();
            }
            t += step;
        }
    }
    assert!(drops_seen > 0.0, "no window held a drop");
}
