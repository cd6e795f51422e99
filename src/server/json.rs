//! Prometheus' JSON envelope and value encodings, written directly into a buffer: sample
//! values are strings (`"NaN"`, `"+Inf"`), timestamps are Unix seconds as numbers.

use std::fmt::Write as _;

use std::time::Duration;

use strata_query::{QueryStats, QueryValue};
use strata_storage::Labels;

/// Appends `s` as a JSON string literal.
pub(crate) fn push_str(out: &mut String, s: &str) {
    out.reserve(s.len() + 2);
    out.push('"');
    // Most strings (label names and values) need no escape: they are copied whole.
    if !needs_escape(s.as_bytes()) {
        out.push_str(s);
        out.push('"');
        return;
    }
    // Runs of bytes that need no escape are copied whole. Every byte escaped is ASCII,
    // so the runs end on character boundaries.
    let mut run = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[run..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{:04x}", b);
        } else {
            out.push_str(escaped);
        }
        run = i + 1;
    }
    out.push_str(&s[run..]);
    out.push('"');
}

/// Whether a byte of `s` must be escaped in a JSON string: a control character, `"` or
/// `\`. Eight bytes at a time, the last word overlapping the one before, and shorter
/// strings read as overlapping halves: most strings are label names and values of a few
/// to a few dozen bytes, too short for vector loops to pay, and a copy into a padded
/// word would stall the load that follows it.
#[inline]
fn needs_escape(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES << 7;
    // A byte below `n` (at most 0x80) sets its high bit in `w - n` where it was clear
    // in `w`; a borrow only carries past a byte that is itself below `n`, so the test
    // is exact for the word as a whole.
    let below = |w: u64, n: u8| w.wrapping_sub(ONES * n as u64) & !w & HIGH;
    let has = |w: u64, b: u8| below(w ^ (ONES * b as u64), 1);
    let word = |w: u64| below(w, 0x20) | has(w, b'"') | has(w, b'\\') != 0;
    let u32_at = |i: usize| {
        let mut b = [0u8; 4];
        b.copy_from_slice(&s[i..i + 4]);
        u32::from_le_bytes(b) as u64
    };
    let n = s.len();
    match n {
        0 => false,
        // The first, middle and last bytes cover all; spaces fill the rest.
        1..=3 => {
            let spaces = (ONES * b' ' as u64) & !0xff_ffff;
            word(spaces | s[0] as u64 | (s[n / 2] as u64) << 8 | (s[n - 1] as u64) << 16)
        }
        4..=7 => word(u32_at(0) | u32_at(n - 4) << 32),
        _ => {
            let word_at = |i: usize| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&s[i..i + 8]);
                u64::from_le_bytes(b)
            };
            (0..n / 8).any(|k| word(word_at(8 * k))) || word(word_at(n - 8))
        }
    }
}

/// A float as Prometheus formats sample values: shortest exact decimal, no exponent.
pub(crate) fn push_value(out: &mut String, v: f64) {
    out.push('"');
    if v.is_nan() {
        out.push_str("NaN");
    } else if v == f64::INFINITY {
        out.push_str("+Inf");
    } else if v == f64::NEG_INFINITY {
        out.push_str("-Inf");
    } else {
        push_finite(out, v);
    }
    out.push('"');
}

/// A finite float as Go's `strconv.FormatFloat(v, 'f', -1, 64)` prints it: the shortest
/// digits that read back as `v`, never an exponent, and of two such equally close to `v`
/// the even one (Rust's `{}` takes the odd one there). Through `zmij`, several times
/// faster than the standard library; it prints an exponent for very large and very
/// small magnitudes (left to `{}`, whose digits are the same there) and `1.0` for a whole
/// number.
fn push_finite(out: &mut String, v: f64) {
    let mut buf = zmij::Buffer::new();
    match plain_digits(&mut buf, v) {
        Some(s) => out.push_str(s),
        None => {
            let _ = write!(out, "{v}");
        }
    }
}

/// `v`'s digits as [`push_finite`] writes them, through `zmij`; `None` where `zmij`
/// would write an exponent, and for the non-finite.
fn plain_digits(buf: &mut zmij::Buffer, v: f64) -> Option<&str> {
    if !v.is_finite() {
        return None;
    }
    let s = buf.format_finite(v);
    (!s.bytes().any(|b| b == b'e')).then(|| s.strip_suffix(".0").unwrap_or(s))
}

/// A millisecond timestamp as Unix seconds: `1435781451.781`, `60`.
pub(crate) fn push_time(out: &mut String, t_ms: i64) {
    let mut buf = [0u8; TIME_BYTES];
    let at = time_before(&mut buf, t_ms);
    push_ascii(out, &buf[at..]);
}

/// The most bytes [`time_before`] writes: a sign, 20 digits, a point and 3 digits.
const TIME_BYTES: usize = 25;

/// Writes a millisecond timestamp as Unix seconds at the end of `buf`; returns where it
/// starts.
#[inline]
fn time_before(buf: &mut [u8; TIME_BYTES], t_ms: i64) -> usize {
    let mut at = buf.len();
    let abs = t_ms.unsigned_abs();
    let (secs, ms) = (abs / 1000, abs % 1000);
    if ms != 0 {
        // Milliseconds as a fraction, its trailing zeros dropped.
        let (frac, digits) = match (ms % 100, ms % 10) {
            (0, _) => (ms / 100, 1),
            (_, 0) => (ms / 10, 2),
            _ => (ms, 3),
        };
        let digits_at = at - digits;
        // With their leading zeros: `.05` for 50 ms.
        buf[digits_at..at].fill(b'0');
        digits_before(&mut buf[digits_at..at], frac);
        at = digits_at - 1;
        buf[at] = b'.';
    }
    at = digits_before(&mut buf[..at], secs);
    if t_ms < 0 {
        at -= 1;
        buf[at] = b'-';
    }
    at
}

/// `00` to `99`, for writing numbers two digits at a time.
const PAIRS: &[u8; 200] = b"\
0001020304050607080910111213141516171819\
2021222324252627282930313233343536373839\
4041424344454647484950515253545556575859\
6061626364656667686970717273747576777879\
8081828384858687888990919293949596979899";

/// Writes `n` in decimal at the end of `buf` (room for its digits); returns where it
/// starts.
#[inline]
fn digits_before(buf: &mut [u8], mut n: u64) -> usize {
    let mut at = buf.len();
    while n >= 100 {
        let pair = (n % 100) as usize * 2;
        n /= 100;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    }
    if n >= 10 {
        let pair = n as usize * 2;
        at -= 2;
        buf[at..at + 2].copy_from_slice(&PAIRS[pair..pair + 2]);
    } else {
        at -= 1;
        buf[at] = b'0' + n as u8;
    }
    at
}

/// Appends bytes known to be ASCII: digits, signs, points, brackets, quotes, commas.
fn push_ascii(out: &mut String, bytes: &[u8]) {
    // Only ASCII is ever passed, so this never falls back; checking is a few
    // instructions for these few bytes.
    out.push_str(std::str::from_utf8(bytes).unwrap_or_default());
}

pub(crate) fn push_labels(out: &mut String, labels: &Labels) {
    // Room for the set unescaped, reserved once rather than string by string.
    let text: usize = labels.iter().map(|l| l.name.len() + l.value.len()).sum();
    out.reserve(text + 6 * labels.len() + 2);
    out.push('{');
    for (i, l) in labels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, &l.name);
        out.push(':');
        push_str(out, &l.value);
    }
    out.push('}');
}

/// `[<time>,"<value>"]`, composed on the stack and appended at once: a range query's
/// answer is mostly these.
fn push_point(out: &mut String, t: i64, v: f64) {
    let mut digits = zmij::Buffer::new();
    // Very large and very small magnitudes, and the non-finite, the long way.
    let Some(value) = plain_digits(&mut digits, v).map(str::as_bytes) else {
        out.push('[');
        push_time(out, t);
        out.push(',');
        push_value(out, v);
        out.push(']');
        return;
    };
    // `[`, the time, `,"`, the digits, `"]`.
    let mut buf = [0u8; 2 + TIME_BYTES + 64];
    let mut time = [0u8; TIME_BYTES];
    let from = time_before(&mut time, t);
    let time = &time[from..];
    let len = 1 + time.len() + 2 + value.len() + 2;
    if len > buf.len() {
        out.push('[');
        push_ascii(out, time);
        out.push_str(",\"");
        push_ascii(out, value);
        out.push_str("\"]");
        return;
    }
    buf[0] = b'[';
    let mut at = 1;
    for part in [time, b",\"", value, b"\"]"] {
        buf[at..at + part.len()].copy_from_slice(part);
        at += part.len();
    }
    push_ascii(out, &buf[..at]);
}

/// `{"status":"success","data":<data>}` where `data` writes itself into the buffer.
pub(crate) fn success(data: impl FnOnce(&mut String)) -> String {
    success_with(data, &[], &[])
}

/// Like [`success`], with `warnings` and `infos` when there are any.
pub(crate) fn success_with(
    data: impl FnOnce(&mut String),
    warnings: &[String],
    infos: &[String],
) -> String {
    let mut out = String::with_capacity(256);
    out.push_str("{\"status\":\"success\",\"data\":");
    data(&mut out);
    for (key, list) in [("warnings", warnings), ("infos", infos)] {
        if !list.is_empty() {
            out.push_str(",\"");
            out.push_str(key);
            out.push_str("\":");
            push_string_array(&mut out, list.iter().map(String::as_str));
        }
    }
    out.push('}');
    out
}

/// The `data` of a query answer.
pub(crate) fn push_query_value(out: &mut String, v: &QueryValue) {
    out.push_str("{\"resultType\":");
    push_str(out, v.type_name());
    out.push_str(",\"result\":");
    match v {
        QueryValue::Scalar { t, v } => push_point(out, *t, *v),
        QueryValue::String { t, s } => {
            out.push('[');
            push_time(out, *t);
            out.push(',');
            push_str(out, s);
            out.push(']');
        }
        QueryValue::Vector(samples) => {
            out.push('[');
            for (i, (labels, t, v)) in samples.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str("{\"metric\":");
                push_labels(out, labels);
                out.push_str(",\"value\":");
                push_point(out, *t, *v);
                out.push('}');
            }
            out.push(']');
        }
        QueryValue::Matrix(series) => {
            let points: usize = series.iter().map(|s| s.1.len()).sum();
            out.reserve(points * POINT_BYTES + series.len() * 128);
            out.push('[');
            push_matrix(out, series, points);
            out.push(']');
        }
    }
    out.push('}');
}

/// About how long a point of a matrix is written: `[1435781451.781,"0.123456789"]`.
const POINT_BYTES: usize = 36;

/// From this many points on, a matrix is written on two threads, in [`JSON_PARTS`] parts
/// taken in turn: a float's shortest decimal takes about a tenth of a microsecond.
const PARALLEL_JSON_POINTS: usize = 4_096;
/// The parts of a matrix written on two threads.
const JSON_PARTS: usize = 8;

type MatrixSeries = (Labels, Vec<(i64, f64)>);

/// The series of a matrix, comma-separated.
fn push_matrix(out: &mut String, series: &[MatrixSeries], points: usize) {
    if points < PARALLEL_JSON_POINTS || series.len() < 2 {
        push_matrix_series(out, series);
        return;
    }
    // Parts of about the same number of points, taken in turn by this thread and a
    // helper: a helper that wakes late writes fewer of them.
    let per = points.div_ceil(JSON_PARTS);
    let mut parts: Vec<&[MatrixSeries]> = Vec::with_capacity(JSON_PARTS + 1);
    let (mut start, mut seen) = (0, 0);
    for (i, s) in series.iter().enumerate() {
        seen += s.1.len();
        if seen >= per {
            parts.push(&series[start..=i]);
            (start, seen) = (i + 1, 0);
        }
    }
    if start < series.len() {
        parts.push(&series[start..]);
    }
    let written = strata_storage::helpers::in_parts(
        1,
        &parts,
        |part| {
            let points: usize = part.iter().map(|s| s.1.len()).sum();
            let mut b = String::with_capacity(points * POINT_BYTES + part.len() * 128);
            push_matrix_series(&mut b, part);
            b
        },
        |_| false,
    );
    for (i, (w, part)) in written.into_iter().zip(&parts).enumerate() {
        if i > 0 {
            out.push(',');
        }
        match w {
            Some(b) => out.push_str(&b),
            // The formatting does not panic; were it to, that part is written here.
            None => push_matrix_series(out, part),
        }
    }
}

fn push_matrix_series(out: &mut String, series: &[MatrixSeries]) {
    for (i, (labels, points)) in series.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"metric\":");
        push_labels(out, labels);
        out.push_str(",\"values\":[");
        for (j, &(t, v)) in points.iter().enumerate() {
            if j > 0 {
                out.push(',');
            }
            push_point(out, t, v);
        }
        out.push_str("]}");
    }
}

/// `,"stats":{...}` in Prometheus' shape: timings in seconds and sample counts.
pub(crate) fn push_stats(out: &mut String, stats: &QueryStats, queue: Duration) {
    let eval = stats.eval_time.as_secs_f64();
    let queue = queue.as_secs_f64();
    let _ = write!(
        out,
        ",\"stats\":{{\"timings\":{{\"evalTotalTime\":{eval},\"resultSortTime\":0,\"queryPreparationTime\":0,\"innerEvalTime\":{eval},\"execQueueTime\":{queue},\"execTotalTime\":{}}},\"samples\":{{\"totalQueryableSamples\":{},\"peakSamples\":{}}}}}",
        eval + queue,
        stats.total_queryable_samples,
        stats.samples_loaded
    );
}

/// A JSON array of strings.
pub(crate) fn push_string_array<'a>(out: &mut String, items: impl IntoIterator<Item = &'a str>) {
    out.push('[');
    for (i, s) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_str(out, s);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Floats print as `{}` prints them — random bit patterns of every magnitude, and the
    /// values series hold (whole numbers, decimals, rates) — except where two shortest
    /// forms are equally close, where Go takes the even last digit.
    #[test]
    fn floats_print_as_go_prints_them() {
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut values = vec![0.0, -0.0, 1.0, -1.0, 0.1, 1e21, 1e-7, 123_456_789.0, 5e-324];
        for i in 0..400_000u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            values.push(f64::from_bits(x));
            values.push((x % 1_000_000_007) as f64 / [1.0, 100.0, 1e3, 7.0][(i % 4) as usize]);
            values.push((x >> 11) as f64 * 2f64.powi((i % 80) as i32 - 40));
        }
        let (mut checked, mut ties) = (0, 0);
        for v in values.into_iter().filter(|v| v.is_finite()) {
            let mut ours = String::new();
            push_finite(&mut ours, v);
            let std = format!("{v}");
            if ours != std {
                // A tie: the same length, both read back as `v`, one unit apart in the
                // last digit, ours even.
                let last = |s: &str| s.bytes().last().map_or(0, |b| b - b'0');
                assert_eq!(ours.len(), std.len(), "{std} {ours}");
                assert_eq!(ours.parse::<f64>().ok(), Some(v), "{ours}");
                assert_eq!(std.parse::<f64>().ok(), Some(v), "{std}");
                assert_eq!(ours[..ours.len() - 1], std[..std.len() - 1], "{std} {ours}");
                assert_eq!(last(&ours) % 2, 0, "{std} {ours}");
                assert_eq!(last(&ours) + 1, last(&std), "{std} {ours}");
                ties += 1;
            }
            checked += 1;
        }
        assert!(checked > 1_000_000);
        assert!(ties < checked / 100, "{ties} ties");
        let mut tie = String::new();
        // 788576883783273.25, halfway between the two 16-digit forms.
        push_finite(&mut tie, f64::from_bits(0x4306_69a6_e849_b34a));
        assert_eq!(tie, "788576883783273.2");
    }

    /// A matrix written on two threads is the same text as one written on one, for
    /// splits anywhere, and is valid JSON.
    #[test]
    fn a_large_matrix_is_written_the_same_on_two_threads() {
        let series = |sizes: &[usize]| -> Vec<MatrixSeries> {
            sizes
                .iter()
                .enumerate()
                .map(|(i, &n)| {
                    let labels = Labels::from_pairs([("__name__", "m"), ("i", &*i.to_string())]);
                    let points = (0..n)
                        .map(|j| (1_700_000_000_000 + j as i64 * 15_001, j as f64 / 7.0))
                        .collect();
                    (labels, points)
                })
                .collect()
        };
        let big = PARALLEL_JSON_POINTS;
        for sizes in [
            vec![big, 1],
            vec![1, big],
            vec![big / 2, big / 2],
            vec![big / 3; 5],
            vec![0, big, 0],
            vec![big / 4 - 1; 3],
            vec![big / 20; 40],
            vec![7; 1000],
        ] {
            let m = series(&sizes);
            let mut serial = String::new();
            push_matrix_series(&mut serial, &m);
            let mut both = String::new();
            let points = sizes.iter().sum();
            push_matrix(&mut both, &m, points);
            assert_eq!(both, serial, "{sizes:?}");
            let parsed: serde_json::Value =
                serde_json::from_str(&format!("[{both}]")).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(parsed.as_array().map(Vec::len), Some(sizes.len()));
        }
    }

    #[test]
    fn a_point_is_its_time_and_value() {
        let times = [
            0,
            60_000,
            1_435_781_451_781,
            1_500,
            -1_500,
            7,
            i64::MAX,
            i64::MIN,
        ];
        let values = [
            0.0,
            -0.0,
            1.0,
            -3.0,
            0.1,
            137_780.385_656_592_58,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e21,
            -2.5e-7,
            f64::MAX,
            f64::MIN_POSITIVE,
            123_456_789_012_345_680.0,
        ];
        for t in times {
            for v in values {
                let mut got = String::new();
                push_point(&mut got, t, v);
                let mut want = String::from("[");
                push_time(&mut want, t);
                want.push(',');
                push_value(&mut want, v);
                want.push(']');
                assert_eq!(got, want, "{t} {v}");
            }
        }
    }

    #[test]
    fn values_and_times() {
        let mut s = String::new();
        for v in [
            1.0,
            0.1,
            f64::NAN,
            f64::INFINITY,
            f64::NEG_INFINITY,
            1e21,
            -2.5e-7,
        ] {
            push_value(&mut s, v);
            s.push(' ');
        }
        assert_eq!(
            s,
            r#""1" "0.1" "NaN" "+Inf" "-Inf" "1000000000000000000000" "-0.00000025" "#
        );
        let mut t = String::new();
        for ms in [60_000, 1_435_781_451_781, 1_500, -1_500] {
            push_time(&mut t, ms);
            t.push(' ');
        }
        assert_eq!(t, "60 1435781451.781 1.5 -1.5 ");
        // Every fraction against the formatting machinery.
        for ms in (0..3_000).chain([i64::MAX, i64::MIN, -1, 9_223_372_036_854_775_000]) {
            let mut t = String::new();
            push_time(&mut t, ms);
            let (sign, abs) = (if ms < 0 { "-" } else { "" }, ms.unsigned_abs());
            let frac = format!("{:03}", abs % 1000);
            let frac = frac.trim_end_matches('0');
            let want = if frac.is_empty() {
                format!("{sign}{}", abs / 1000)
            } else {
                format!("{sign}{}.{frac}", abs / 1000)
            };
            assert_eq!(t, want, "{ms}");
        }
    }

    #[test]
    fn escaping_is_valid_json() {
        let mut s = String::new();
        push_str(&mut s, "a\"b\\c\n\u{1}é");
        let back: String = serde_json::from_str(&s).unwrap();
        assert_eq!(back, "a\"b\\c\n\u{1}é");
        // Plain strings are copied whole; one character to escape anywhere in a long
        // string is still found.
        let long = "host-000:9100/node_network_receive_bytes_total/".repeat(3);
        for special in ["", "\"", "\\", "\n", "\u{1f}", "\u{7f}", "é"] {
            for at in [0, 1, 31, 32, 33, long.len()] {
                let mut text = long.clone();
                text.insert_str(at, special);
                let mut s = String::new();
                push_str(&mut s, &text);
                let back: String = serde_json::from_str(&s).unwrap();
                assert_eq!(back, text);
                assert_eq!(
                    s.len() == text.len() + 2,
                    !"\"\\\n\u{1f}".contains(special) || special.is_empty()
                );
            }
        }
    }
    /// The word-at-a-time test agrees with a byte-by-byte one for every byte value at
    /// every place in strings of up to three words, beside bytes that sit next to the
    /// ones escaped (`!`, `#`, `[`, `]`, 0x20, 0x7f, 0x80, 0xff).
    #[test]
    fn escapes_are_found_at_every_place() {
        let fill: [u8; 8] = [b'!', b'#', b'[', b']', b' ', 0x7f, 0x80, 0xff];
        for len in 1..=24 {
            for at in 0..len {
                for b in 0..=255u8 {
                    let mut s: Vec<u8> = (0..len).map(|i| fill[(i + len) % 8]).collect();
                    s[at] = b;
                    let bytewise = s.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
                    assert_eq!(needs_escape(&s), bytewise, "{s:?}");
                }
            }
        }
        assert!(!needs_escape(b""));
    }
}
