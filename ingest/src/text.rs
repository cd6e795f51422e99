//! The Prometheus text exposition format (0.0.4) and OpenMetrics text (1.0), one line at a
//! time, without allocating for lines that need no unescaping.
//!
//! ```text
//!  # HELP node_load1 1m load average.
//!  # TYPE node_load1 gauge
//!  node_load1 0.21                                   (no timestamp)
//!  http_requests_total{method="post",code="200"} 1027 1395066363000   (ms; OpenMetrics: s)
//!  # EOF                                             (OpenMetrics only)
//! ```

use std::borrow::Cow;

use crate::remote_write::{is_valid_label_name, is_valid_metric_name};

/// Which dialect a line is read in: they differ in timestamp units and a few comments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// Prometheus text format: timestamps are integer milliseconds.
    Prometheus,
    /// OpenMetrics: timestamps are (possibly fractional) seconds; `# EOF` ends the text.
    OpenMetrics,
}

/// One sample line.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSample<'a> {
    pub name: &'a str,
    /// Label pairs as written (not sorted); values unescaped.
    pub labels: Vec<(&'a str, Cow<'a, str>)>,
    pub value: f64,
    /// Milliseconds, when the line has a timestamp.
    pub timestamp_ms: Option<i64>,
}

/// What one line holds.
#[derive(Debug, Clone, PartialEq)]
pub enum TextLine<'a> {
    Sample(TextSample<'a>),
    Help {
        name: &'a str,
        text: Cow<'a, str>,
    },
    Type {
        name: &'a str,
        kind: &'a str,
    },
    Unit {
        name: &'a str,
        unit: &'a str,
    },
    /// OpenMetrics' end marker.
    Eof,
    /// Blank lines and other comments.
    Nothing,
}

/// Parses one line (without its line break).
pub fn parse_line(line: &str, dialect: Dialect) -> Result<TextLine<'_>, String> {
    let line = line.strip_suffix('\r').unwrap_or(line);
    if let Some(rest) = line.strip_prefix('#') {
        return Ok(parse_comment(rest, dialect));
    }
    if line.trim().is_empty() {
        return Ok(TextLine::Nothing);
    }
    parse_sample(line, dialect).map(TextLine::Sample)
}

fn parse_comment(rest: &str, dialect: Dialect) -> TextLine<'_> {
    let rest = rest.trim_start();
    if rest == "EOF" && dialect == Dialect::OpenMetrics {
        return TextLine::Eof;
    }
    let mut parts = rest.splitn(3, [' ', '\t']);
    let (keyword, name, tail) = (
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
        parts.next().unwrap_or(""),
    );
    if name.is_empty() {
        return TextLine::Nothing;
    }
    match keyword {
        "HELP" => TextLine::Help {
            name,
            text: unescape(tail, false),
        },
        "TYPE" => TextLine::Type {
            name,
            kind: tail.trim(),
        },
        "UNIT" => TextLine::Unit {
            name,
            unit: tail.trim(),
        },
        _ => TextLine::Nothing,
    }
}

fn parse_sample(line: &str, dialect: Dialect) -> Result<TextSample<'_>, String> {
    let name_end = line.find(['{', ' ', '\t']).unwrap_or(line.len());
    let name = &line[..name_end];
    if !is_valid_metric_name(name) {
        return Err(format!("invalid metric name {name:?}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let (parsed, after) = parse_labels(body)?;
        labels = parsed;
        rest = after;
    }
    // OpenMetrics exemplars follow " # ": not samples, left out.
    if let Some(i) = rest.find(" # ") {
        rest = &rest[..i];
    }
    let mut fields = rest.split_ascii_whitespace();
    let value = fields
        .next()
        .ok_or_else(|| format!("metric {name}: no value"))?;
    let value =
        parse_value(value).ok_or_else(|| format!("metric {name}: invalid value {value:?}"))?;
    let timestamp_ms = match fields.next() {
        None => None,
        Some(t) => Some(
            parse_timestamp(t, dialect)
                .ok_or_else(|| format!("metric {name}: invalid timestamp {t:?}"))?,
        ),
    };
    if let Some(extra) = fields.next() {
        return Err(format!(
            "metric {name}: unexpected {extra:?} after the timestamp"
        ));
    }
    Ok(TextSample {
        name,
        labels,
        value,
        timestamp_ms,
    })
}

type ParsedLabels<'a> = (Vec<(&'a str, Cow<'a, str>)>, &'a str);

/// Parses `name="value",...}` and returns the pairs and what follows the brace.
fn parse_labels(mut s: &str) -> Result<ParsedLabels<'_>, String> {
    let mut out = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Ok((out, after));
        }
        let eq = s.find('=').ok_or("label without a value")?;
        let name = s[..eq].trim();
        if !is_valid_label_name(name) {
            return Err(format!("invalid label name {name:?}"));
        }
        s = s[eq + 1..].trim_start();
        let body = s
            .strip_prefix('"')
            .ok_or_else(|| format!("label {name}: value must be in double quotes"))?;
        // The closing quote is the first one not escaped.
        let bytes = body.as_bytes();
        let mut i = 0;
        let mut escaped = false;
        while i < bytes.len() && bytes[i] != b'"' {
            if bytes[i] == b'\\' {
                escaped = true;
                i += 1;
            }
            i += 1;
        }
        if i >= bytes.len() {
            return Err(format!("label {name}: unterminated value"));
        }
        let raw = &body[..i];
        let value = if escaped {
            unescape(raw, true)
        } else {
            Cow::Borrowed(raw)
        };
        if out.iter().any(|(n, _)| *n == name) {
            return Err(format!("label name {name:?} appears more than once"));
        }
        out.push((name, value));
        s = body[i + 1..].trim_start();
        if let Some(after) = s.strip_prefix(',') {
            s = after;
        } else if !s.starts_with('}') {
            return Err(format!(
                "label {name}: expected ',' or '}}' after the value"
            ));
        }
    }
}

/// Resolves `\\`, `\n` and (in label values) `\"`.
fn unescape(s: &str, quotes: bool) -> Cow<'_, str> {
    if !s.contains('\\') {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('\\') => out.push('\\'),
            Some('"') if quotes => out.push('"'),
            Some(other) => {
                out.push('\\');
                out.push(other);
            }
            None => out.push('\\'),
        }
    }
    Cow::Owned(out)
}

/// A sample value: a Go-style float, `NaN`, `+Inf`, `-Inf`.
pub fn parse_value(s: &str) -> Option<f64> {
    match s {
        "NaN" | "nan" => Some(f64::NAN),
        "+Inf" | "Inf" | "+inf" | "inf" => Some(f64::INFINITY),
        "-Inf" | "-inf" => Some(f64::NEG_INFINITY),
        _ if s
            .bytes()
            .any(|b| b.is_ascii_alphabetic() && b != b'e' && b != b'E') =>
        {
            None
        }
        _ => s.parse().ok(),
    }
}

fn parse_timestamp(s: &str, dialect: Dialect) -> Option<i64> {
    match dialect {
        Dialect::Prometheus => s.parse().ok(),
        Dialect::OpenMetrics => {
            let secs: f64 = s.parse().ok()?;
            let ms = (secs * 1000.0).round();
            (ms.is_finite() && ms.abs() < 9.2e18).then_some(ms as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(line: &str, d: Dialect) -> TextSample<'_> {
        match parse_line(line, d) {
            Ok(TextLine::Sample(s)) => s,
            other => panic!("{line}: {other:?}"),
        }
    }

    #[test]
    fn samples_in_both_dialects() {
        let s = sample(
            r#"http_requests_total{method="post",code="200"} 1027 1395066363000"#,
            Dialect::Prometheus,
        );
        assert_eq!(s.name, "http_requests_total");
        assert_eq!(
            s.labels,
            vec![
                ("method", Cow::Borrowed("post")),
                ("code", Cow::Borrowed("200"))
            ]
        );
        assert_eq!((s.value, s.timestamp_ms), (1027.0, Some(1_395_066_363_000)));
        let s = sample("node_load1 0.21", Dialect::Prometheus);
        assert_eq!((s.value, s.timestamp_ms, s.labels.len()), (0.21, None, 0));
        let s = sample("up{job=\"a\"} 1 1700000000.5", Dialect::OpenMetrics);
        assert_eq!(s.timestamp_ms, Some(1_700_000_000_500));
        let s = sample(
            r#"m{path="C:\\dir",q="say \"hi\"\n",} -Inf"#,
            Dialect::Prometheus,
        );
        assert_eq!(s.labels[0].1, "C:\\dir");
        assert_eq!(s.labels[1].1, "say \"hi\"\n");
        assert_eq!(s.value, f64::NEG_INFINITY);
        assert!(sample("m NaN", Dialect::Prometheus).value.is_nan());
        let s = sample(
            r#"foo_bucket{le="0.5"} 3 1700000000 # {trace_id="x"} 0.4 1700000000"#,
            Dialect::OpenMetrics,
        );
        assert_eq!((s.value, s.timestamp_ms), (3.0, Some(1_700_000_000_000)));
    }

    #[test]
    fn comments() {
        assert_eq!(
            parse_line("# HELP m some \\\\ help\\n", Dialect::Prometheus),
            Ok(TextLine::Help {
                name: "m",
                text: Cow::Owned("some \\ help\n".into())
            })
        );
        assert_eq!(
            parse_line("# TYPE m counter", Dialect::Prometheus),
            Ok(TextLine::Type {
                name: "m",
                kind: "counter"
            })
        );
        assert_eq!(parse_line("# EOF", Dialect::OpenMetrics), Ok(TextLine::Eof));
        assert_eq!(
            parse_line("# EOF", Dialect::Prometheus),
            Ok(TextLine::Nothing)
        );
        assert_eq!(parse_line("", Dialect::Prometheus), Ok(TextLine::Nothing));
        assert_eq!(
            parse_line("# free text", Dialect::Prometheus),
            Ok(TextLine::Nothing)
        );
    }

    #[test]
    fn bad_lines_are_errors() {
        for line in [
            "1bad 1",
            "m{a=\"1\" 1",
            "m{a=1} 1",
            "m{a=\"1\",a=\"2\"} 1",
            "m{1a=\"1\"} 1",
            "m",
            "m one",
            "m 1 2 3",
            "m 1 12.5",
            "m{a=\"unterminated} 1",
        ] {
            assert!(parse_line(line, Dialect::Prometheus).is_err(), "{line}");
        }
    }
}
