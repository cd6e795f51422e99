//! A runner for Prometheus' PromQL test-script format (`load`, `clear`, `eval instant`,
//! `eval range`, expectations), evaluating in-process against strata's store and engine.
//!
//! Native-histogram samples are not loaded, and evals that touch them (or start
//! timestamps) are counted as skipped. Warnings and infos are not produced by the engine
//! yet, so an eval that expects one fails.

use promql_parser::parser::{Expr, VectorSelector};
use strata_storage::{stale_nan, Db, Labels, Matcher};

use crate::duration::parse_duration_ms;
use crate::{Engine, QueryValue};

/// The outcome of one script.
#[derive(Debug, Default, Clone)]
pub struct ScriptReport {
    pub passed: usize,
    pub failed: usize,
    pub skipped: usize,
    /// One line per failed eval: `line N: query: reason`.
    pub failures: Vec<String>,
}

/// Runs a script. `new_db` is called for a fresh, empty store at the start and at every
/// `clear`. Returns an error only for a script that cannot be read at all.
pub fn run_script(
    text: &str,
    engine: &Engine,
    new_db: &mut dyn FnMut() -> Result<Db, String>,
) -> Result<ScriptReport, String> {
    let mut report = ScriptReport::default();
    let mut db = new_db()?;
    // Series whose samples could not be loaded (native histograms, start timestamps):
    // evals whose selectors match one of them are skipped.
    let mut unloadable: Vec<Labels> = Vec::new();
    let lines: Vec<&str> = text.lines().collect();
    let mut i = 0;
    while i < lines.len() {
        let header = lines[i].trim();
        let header_line = i + 1;
        i += 1;
        if header.is_empty() || header.starts_with('#') {
            continue;
        }
        let word = header
            .split_whitespace()
            .next()
            .unwrap_or("")
            .to_ascii_lowercase();
        let mut body = Vec::new();
        // `clear` has no body: a command may follow it on the next line.
        while word != "clear" && i < lines.len() {
            let l = lines[i].trim();
            if l.is_empty() || l.starts_with('#') {
                break;
            }
            body.push((i + 1, l));
            i += 1;
        }
        if word == "clear" {
            db = new_db()?;
            unloadable.clear();
        } else if word == "load" || word == "load_with_nhcb" {
            let step = header
                .split_whitespace()
                .nth(1)
                .and_then(parse_duration_ms)
                .ok_or_else(|| format!("line {header_line}: bad load step"))?;
            load(&db, step, &body, word == "load_with_nhcb", &mut unloadable)
                .map_err(|e| format!("line {header_line}: {e}"))?;
        } else if word.starts_with("eval") {
            match eval_case(&db, engine, header, &body, &unloadable) {
                Outcome::Pass => report.passed += 1,
                Outcome::Skip => report.skipped += 1,
                Outcome::Fail(why) => {
                    report.failed += 1;
                    report
                        .failures
                        .push(format!("line {header_line}: {header}: {why}"));
                }
            }
        } else {
            return Err(format!("line {header_line}: unknown command {word:?}"));
        }
    }
    Ok(report)
}

enum Outcome {
    Pass,
    Skip,
    Fail(String),
}

fn load(
    db: &Db,
    step: i64,
    body: &[(usize, &str)],
    nhcb: bool,
    unloadable: &mut Vec<Labels>,
) -> Result<(), String> {
    // A series defined twice in one block keeps only its later line.
    let mut series: Vec<(Labels, Vec<Option<f64>>)> = Vec::new();
    for &(line, text) in body {
        let (labels, rest) = parse_series(text).map_err(|e| format!("line {line}: {e}"))?;
        let name = labels.metric_name().unwrap_or("").to_owned();
        if rest.starts_with("@st") || text.contains("@st ") || rest.contains("{{") {
            unloadable.push(labels);
            continue;
        }
        if nhcb {
            // The block also holds a native histogram named without the suffix.
            for suffix in ["_bucket", "_count", "_sum"] {
                if let Some(base) = name.strip_suffix(suffix) {
                    let mut h = labels.clone();
                    h.remove("le");
                    h.set("__name__", base);
                    unloadable.push(h);
                }
            }
        }
        let values = parse_values(rest).map_err(|e| format!("line {line}: {e}"))?;
        match series.iter_mut().find(|s| s.0 == labels) {
            Some(s) => s.1 = values,
            None => series.push((labels, values)),
        }
    }
    let mut app = db.appender();
    for (labels, values) in &series {
        for (k, v) in values.iter().enumerate() {
            if let Some(v) = *v {
                // Loads are cumulative; a later load's sample for a timestamp an earlier
                // one filled replaces it.
                let _ = app.append(labels, k as i64 * step, v);
            }
        }
    }
    app.commit().map(|_| ()).map_err(|e| e.to_string())
}

/// An expected error or annotation text: `(is_regex, text)`; empty text matches any.
type Expected = (bool, String);

struct Expectations {
    fail: Option<Expected>,
    warn: Vec<Expected>,
    info: Vec<Expected>,
    no_warn: bool,
    no_info: bool,
    ordered: bool,
    range_vector: Option<(i64, i64, i64)>,
    string: Option<String>,
}

fn eval_case(
    db: &Db,
    engine: &Engine,
    header: &str,
    body: &[(usize, &str)],
    unloadable: &[Labels],
) -> Outcome {
    let mut words = header.splitn(2, char::is_whitespace);
    let cmd = words.next().unwrap_or("").to_ascii_lowercase();
    let rest = words.next().unwrap_or("").trim();
    let mut exp = Expectations {
        fail: (cmd == "eval_fail").then(|| (false, String::new())),
        warn: if cmd == "eval_warn" {
            vec![(false, String::new())]
        } else {
            vec![]
        },
        info: if cmd == "eval_info" {
            vec![(false, String::new())]
        } else {
            vec![]
        },
        no_warn: false,
        no_info: false,
        ordered: cmd == "eval_ordered",
        range_vector: None,
        string: None,
    };
    let mut results: Vec<&str> = Vec::new();
    for &(_, l) in body {
        if let Some(e) = l.strip_prefix("expect ") {
            let e = e.trim();
            let (kind, arg) = e.split_once(' ').unwrap_or((e, ""));
            match kind {
                "fail" => exp.fail = Some(parse_fail_arg(arg.trim())),
                "warn" => exp.warn.push(parse_fail_arg(arg.trim())),
                "info" => exp.info.push(parse_fail_arg(arg.trim())),
                "no_warn" => exp.no_warn = true,
                "no_info" => exp.no_info = true,
                "ordered" => exp.ordered = true,
                "range" => match parse_range_vector(arg) {
                    Some(r) => exp.range_vector = Some(r),
                    None => return Outcome::Fail(format!("bad expect line {l:?}")),
                },
                "string" => exp.string = Some(unquote(arg.trim()).unwrap_or_default()),
                _ => return Outcome::Fail(format!("unknown expectation {l:?}")),
            }
        } else if let Some(m) = l.strip_prefix("expected_fail_message ") {
            exp.fail = Some((false, m.trim().to_owned()));
        } else if let Some(m) = l.strip_prefix("expected_fail_regexp ") {
            exp.fail = Some((true, m.trim().to_owned()));
        } else {
            if l.contains("{{") {
                return Outcome::Skip;
            }
            results.push(l);
        }
    }

    enum Kind {
        Instant(i64),
        Range(i64, i64, i64),
    }
    let (kind, query) = if let Some(r) = rest.strip_prefix("instant at ") {
        let (t, q) = r.trim().split_once(char::is_whitespace).unwrap_or((r, ""));
        match parse_duration_ms(t) {
            Some(t) => (Kind::Instant(t), q.trim()),
            None => return Outcome::Fail(format!("bad time {t:?}")),
        }
    } else if let Some(r) = rest.strip_prefix("range from ") {
        let parts: Vec<&str> = r.splitn(6, char::is_whitespace).collect();
        if parts.len() < 6 || parts[1] != "to" || parts[3] != "step" {
            return Outcome::Fail("bad range header".into());
        }
        match (
            parse_duration_ms(parts[0]),
            parse_duration_ms(parts[2]),
            parse_duration_ms(parts[4]),
        ) {
            (Some(a), Some(b), Some(s)) => (Kind::Range(a, b, s), parts[5].trim()),
            _ => return Outcome::Fail("bad range times".into()),
        }
    } else {
        return Outcome::Fail("unknown eval form".into());
    };

    if touches(query, unloadable) {
        return Outcome::Skip;
    }

    let result = match kind {
        Kind::Instant(t) => engine.instant_query(db, query, t),
        Kind::Range(a, b, s) => engine.range_query(db, query, a, b, s),
    };
    let value = match (result, &exp.fail) {
        (Err(e), Some((is_re, want))) => {
            let msg = e.to_string();
            if want.is_empty() {
                return Outcome::Pass;
            }
            let ok = text_matches(&(*is_re, want.clone()), &msg);
            return if ok {
                Outcome::Pass
            } else {
                Outcome::Fail(format!("failed with {msg:?}, expected {want:?}"))
            };
        }
        (Err(e), None) => return Outcome::Fail(format!("unexpected error: {e}")),
        (Ok(_), Some(_)) => return Outcome::Fail("expected an error, got a result".into()),
        (Ok(v), None) => v,
    };
    if let Err(why) = check_annotations(
        "warning",
        &exp.warn,
        exp.no_warn,
        &value.annotations.warnings,
    )
    .and_then(|()| check_annotations("info", &exp.info, exp.no_info, &value.annotations.infos))
    {
        return Outcome::Fail(why);
    }
    let value = value.value;
    let grid = match kind {
        Kind::Instant(_) => None,
        Kind::Range(start, _, step) => Some((start, step)),
    };
    match compare(&value, &grid, &results, &exp) {
        Ok(()) => Outcome::Pass,
        Err(why) => Outcome::Fail(why),
    }
}

fn text_matches(want: &Expected, got: &str) -> bool {
    let (is_re, text) = want;
    if text.is_empty() {
        true
    } else if *is_re {
        regex::Regex::new(text).is_ok_and(|re| re.is_match(got))
    } else {
        got == text
    }
}

/// Checks returned annotations of one kind against the expectation lines.
fn check_annotations(
    kind: &str,
    want: &[Expected],
    none: bool,
    got: &[String],
) -> Result<(), String> {
    if none && !got.is_empty() {
        return Err(format!("expected no {kind} annotation, got {got:?}"));
    }
    if want.is_empty() {
        return Ok(());
    }
    if got.is_empty() {
        return Err(format!("expected a {kind} annotation, got none"));
    }
    if let Some(w) = want
        .iter()
        .find(|w| !got.iter().any(|g| text_matches(w, g)))
    {
        return Err(format!("expected {kind} {:?}, got {got:?}", w.1));
    }
    if let Some(g) = got
        .iter()
        .find(|g| !want.iter().any(|w| text_matches(w, g)))
    {
        return Err(format!("unexpected {kind} {g:?}"));
    }
    Ok(())
}

fn parse_fail_arg(arg: &str) -> (bool, String) {
    if let Some(m) = arg.strip_prefix("msg:") {
        (false, m.trim().to_owned())
    } else if let Some(r) = arg.strip_prefix("regex:") {
        (true, r.trim().to_owned())
    } else {
        (false, String::new())
    }
}

fn parse_range_vector(arg: &str) -> Option<(i64, i64, i64)> {
    // "vector from <a> to <b> step <s>"
    let w: Vec<&str> = arg.split_whitespace().collect();
    if w.len() != 7 || w[0] != "vector" || w[1] != "from" || w[3] != "to" || w[5] != "step" {
        return None;
    }
    Some((
        parse_duration_ms(w[2])?,
        parse_duration_ms(w[4])?,
        parse_duration_ms(w[6])?,
    ))
}

/// Whether any selector of the query matches one of the `series`.
fn touches(query: &str, series: &[Labels]) -> bool {
    if series.is_empty() {
        return false;
    }
    let Ok(expr) = crate::parse(query) else {
        // Not parseable here (e.g. native-histogram operators): match by metric name.
        return series
            .iter()
            .filter_map(|l| l.metric_name())
            .any(|n| names_identifier(query, n));
    };
    let mut selectors = Vec::new();
    collect_selectors(&expr, &mut selectors);
    selectors.iter().any(|vs| {
        let Ok(matchers) = crate::eval::selector_matchers(vs) else {
            return false;
        };
        series.iter().any(|l| matches_all(&matchers, l))
    })
}

/// Whether `name` occurs in `query` as a whole identifier.
fn names_identifier(query: &str, name: &str) -> bool {
    let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':');
    !name.is_empty()
        && query.match_indices(name).any(|(i, _)| {
            !ident(query[..i].chars().next_back()) && !ident(query[i + name.len()..].chars().next())
        })
}

fn matches_all(matchers: &[Matcher], labels: &Labels) -> bool {
    matchers
        .iter()
        .all(|m| m.matches(labels.get(&m.name).unwrap_or("")))
}

fn collect_selectors<'a>(e: &'a Expr, out: &mut Vec<&'a VectorSelector>) {
    match e {
        Expr::VectorSelector(vs) => out.push(vs),
        Expr::MatrixSelector(ms) => out.push(&ms.vs),
        Expr::Aggregate(a) => {
            collect_selectors(&a.expr, out);
            if let Some(p) = &a.param {
                collect_selectors(p, out);
            }
        }
        Expr::Unary(u) => collect_selectors(&u.expr, out),
        Expr::Binary(b) => {
            collect_selectors(&b.lhs, out);
            collect_selectors(&b.rhs, out);
        }
        Expr::Paren(p) => collect_selectors(&p.expr, out),
        Expr::Subquery(s) => collect_selectors(&s.expr, out),
        Expr::Call(c) => {
            for a in &c.args.args {
                collect_selectors(a, out);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

fn compare(
    value: &QueryValue,
    grid: &Option<(i64, i64)>,
    results: &[&str],
    exp: &Expectations,
) -> Result<(), String> {
    if let Some(s) = &exp.string {
        return match value {
            QueryValue::String { s: got, .. } if got == s => Ok(()),
            other => Err(format!("expected string {s:?}, got {other:?}")),
        };
    }
    // A bare number: a scalar.
    if results.len() == 1 && parse_float(results[0]).is_some() {
        let want = parse_float(results[0]).unwrap_or(f64::NAN);
        return match value {
            QueryValue::Scalar { v, .. } if close(*v, want) => Ok(()),
            other => Err(format!("expected scalar {want}, got {}", describe(other))),
        };
    }
    let mut expected: Vec<(Labels, Vec<Option<f64>>)> = Vec::with_capacity(results.len());
    for r in results {
        let (labels, rest) = parse_series(r)?;
        expected.push((labels, parse_values(rest)?));
    }
    match (value, grid, exp.range_vector) {
        (QueryValue::Vector(got), None, None) => {
            if got.len() != expected.len() {
                return Err(format!(
                    "expected {} series, got {}: {}",
                    expected.len(),
                    got.len(),
                    describe(value)
                ));
            }
            for (k, (labels, vals)) in expected.iter().enumerate() {
                let want = vals.first().copied().flatten().unwrap_or(f64::NAN);
                let found = if exp.ordered {
                    got.get(k).filter(|g| &g.0 == labels)
                } else {
                    got.iter().find(|g| &g.0 == labels)
                };
                match found {
                    Some(g) if close(g.2, want) => {}
                    Some(g) => return Err(format!("{labels}: expected {want}, got {}", g.2)),
                    None => return Err(format!("missing {labels} (got {})", describe(value))),
                }
            }
            Ok(())
        }
        (QueryValue::Matrix(got), Some((start, step)), None) => {
            compare_matrix(got, &expected, *start, *step, value)
        }
        (QueryValue::Matrix(got), None, Some((start, _end, step))) => {
            compare_matrix(got, &expected, start, step, value)
        }
        (other, _, _) => Err(format!("unexpected result type: {}", describe(other))),
    }
}

fn compare_matrix(
    got: &[(Labels, Vec<(i64, f64)>)],
    expected: &[(Labels, Vec<Option<f64>>)],
    start: i64,
    step: i64,
    whole: &QueryValue,
) -> Result<(), String> {
    let expected: Vec<&(Labels, Vec<Option<f64>>)> = expected
        .iter()
        .filter(|(_, v)| v.iter().any(Option::is_some))
        .collect();
    if got.len() != expected.len() {
        return Err(format!(
            "expected {} series, got {}: {}",
            expected.len(),
            got.len(),
            describe(whole)
        ));
    }
    for (labels, vals) in expected {
        let Some((_, points)) = got.iter().find(|g| &g.0 == labels) else {
            return Err(format!("missing {labels} (got {})", describe(whole)));
        };
        let want: Vec<(i64, f64)> = vals
            .iter()
            .enumerate()
            .filter_map(|(k, v)| v.map(|v| (start + k as i64 * step, v)))
            .collect();
        let same = want.len() == points.len()
            && want
                .iter()
                .zip(points)
                .all(|(a, b)| a.0 == b.0 && close(a.1, b.1));
        if !same {
            return Err(format!("{labels}: expected {want:?}, got {points:?}"));
        }
    }
    Ok(())
}

fn describe(v: &QueryValue) -> String {
    let s = format!("{v:?}");
    if s.len() > 300 {
        format!(
            "{}…",
            &s[..s.char_indices().nth(300).map_or(s.len(), |c| c.0)]
        )
    } else {
        s
    }
}

/// Float equality as the reference harness defines it.
fn close(a: f64, b: f64) -> bool {
    if a.is_nan() || b.is_nan() {
        return a.is_nan() && b.is_nan();
    }
    if a.is_infinite() || b.is_infinite() {
        return a == b;
    }
    if a == b {
        return true;
    }
    let diff = (a - b).abs();
    if a == 0.0 || b == 0.0 || a.abs() + b.abs() < f64::MIN_POSITIVE {
        return diff < 1e-6 * f64::MIN_POSITIVE;
    }
    diff / (a.abs() + b.abs()) < 1e-6
}

/// Whether an item is written in hexadecimal (allowed for scalar results only).
fn is_hex(s: &str) -> bool {
    s.trim_start_matches(['+', '-'])
        .to_ascii_lowercase()
        .starts_with("0x")
}

fn parse_float(s: &str) -> Option<f64> {
    let t = s.trim();
    let lower = t.to_ascii_lowercase();
    let unsigned = lower.trim_start_matches(['+', '-']);
    let neg = lower.starts_with('-');
    let v = match unsigned {
        "inf" => f64::INFINITY,
        "nan" => return Some(f64::NAN),
        _ if unsigned.starts_with("0x") => i64::from_str_radix(&unsigned[2..], 16).ok()? as f64,
        _ => unsigned.parse::<f64>().ok()?,
    };
    if lower.starts_with(['+', '-']) && unsigned.starts_with(['+', '-']) {
        return None;
    }
    Some(if neg { -v } else { v })
}

/// Expands a values notation (`1 2 _ stale 0+10x3 _x2 5x2`) into one entry per step.
fn parse_values(s: &str) -> Result<Vec<Option<f64>>, String> {
    let mut out = Vec::new();
    for item in s.split_whitespace() {
        if item == "_" {
            out.push(None);
        } else if let Some(n) = item.strip_prefix("_x") {
            let n: usize = n.parse().map_err(|_| format!("bad item {item:?}"))?;
            out.extend(std::iter::repeat_n(None, n));
        } else if item.eq_ignore_ascii_case("stale") {
            out.push(Some(stale_nan()));
        } else if let Some(v) = parse_float(item).filter(|_| !is_hex(item)) {
            out.push(Some(v));
        } else if let Some((head, n)) = item.rsplit_once('x') {
            let n: usize = n.parse().map_err(|_| format!("bad item {item:?}"))?;
            // `A+DxN` / `A-DxN`; the operator is the first sign after the first character.
            let split = head
                .char_indices()
                .skip(1)
                .find(|&(i, c)| (c == '+' || c == '-') && !head[..i].ends_with(['e', 'E']));
            let (a, d) = match split {
                Some((i, c)) => {
                    let a = parse_float(&head[..i]).ok_or(format!("bad item {item:?}"))?;
                    let d = parse_float(&head[i + 1..]).ok_or(format!("bad item {item:?}"))?;
                    (a, if c == '-' { -d } else { d })
                }
                None => (parse_float(head).ok_or(format!("bad item {item:?}"))?, 0.0),
            };
            let mut v = a;
            for _ in 0..=n {
                out.push(Some(v));
                v += d;
            }
        } else {
            return Err(format!("bad item {item:?}"));
        }
    }
    Ok(out)
}

/// Parses a series descriptor (`name`, `name{a="x"}`, `{__name__="n"}`, `{"quoted.name"}`)
/// at the start of `s`; returns its labels and the rest of the line.
fn parse_series(s: &str) -> Result<(Labels, &str), String> {
    let s = s.trim_start();
    let name_end = s
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(s.len());
    let mut pairs: Vec<(String, String)> = Vec::new();
    if name_end > 0 {
        pairs.push(("__name__".into(), s[..name_end].to_owned()));
    }
    let mut rest = &s[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut cur = inner;
        loop {
            cur = cur.trim_start();
            if let Some(after) = cur.strip_prefix('}') {
                rest = after;
                break;
            }
            let (name, after) = if cur.starts_with(['"', '\'', '`']) {
                let (q, after) = take_quoted(cur)?;
                (q, after)
            } else {
                let end = cur
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .ok_or("unterminated label set")?;
                (cur[..end].to_owned(), &cur[end..])
            };
            let after = after.trim_start();
            if let Some(v) = after.strip_prefix('=') {
                let (value, after) = take_quoted(v.trim_start())?;
                pairs.push((name, value));
                cur = after;
            } else {
                // A bare quoted name inside braces is the metric name.
                pairs.push(("__name__".into(), name));
                cur = after;
            }
            cur = cur.trim_start();
            cur = cur.strip_prefix(',').unwrap_or(cur);
        }
    }
    Ok((Labels::from_pairs(pairs), rest.trim()))
}

fn take_quoted(s: &str) -> Result<(String, &str), String> {
    let q = s.chars().next().ok_or("expected a quoted string")?;
    if !matches!(q, '"' | '\'' | '`') {
        return Err(format!("expected a quoted string at {s:?}"));
    }
    let mut out = String::new();
    let mut chars = s.char_indices().skip(1);
    while let Some((i, c)) = chars.next() {
        if c == q {
            return Ok((out, &s[i + 1..]));
        }
        if c == '\\' && q != '`' {
            match chars.next() {
                Some((_, 'n')) => out.push('\n'),
                Some((_, 't')) => out.push('\t'),
                Some((_, '\\')) => out.push('\\'),
                Some((_, c)) => out.push(c),
                None => break,
            }
        } else {
            out.push(c);
        }
    }
    Err("unterminated string".into())
}

fn unquote(s: &str) -> Option<String> {
    take_quoted(s).ok().map(|(v, _)| v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_notation() {
        let v = parse_values("0+10x3 _ stale 1x2 _x2 5-2x1 -1e3").unwrap();
        let f: Vec<String> = v.iter().map(|x| format!("{x:?}")).collect();
        assert_eq!(
            f,
            [
                "Some(0.0)",
                "Some(10.0)",
                "Some(20.0)",
                "Some(30.0)",
                "None",
                "Some(NaN)",
                "Some(1.0)",
                "Some(1.0)",
                "Some(1.0)",
                "None",
                "None",
                "Some(5.0)",
                "Some(3.0)",
                "Some(-1000.0)"
            ]
        );
    }

    #[test]
    fn series_descriptors() {
        let (l, rest) = parse_series(r#"http_requests{job="api", path='/a\'b',} 1 2"#).unwrap();
        assert_eq!(
            l,
            Labels::from_pairs([
                ("__name__", "http_requests"),
                ("job", "api"),
                ("path", "/a'b")
            ])
        );
        assert_eq!(rest, "1 2");
        let (l, _) = parse_series(r#"{"my.metric", a="x"} 1"#).unwrap();
        assert_eq!(l.metric_name(), Some("my.metric"));
        let (l, rest) = parse_series("{} 3").unwrap();
        assert!(l.is_empty());
        assert_eq!(rest, "3");
    }

    #[test]
    fn float_closeness() {
        assert!(close(1.0, 1.0 + 1e-9));
        assert!(!close(1.0, 1.01));
        assert!(close(f64::NAN, f64::NAN));
        assert!(!close(f64::INFINITY, f64::MAX));
    }
}
