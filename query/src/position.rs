//! Positions of sub-expressions in the query text, for annotation suffixes like `(1:25)`.
//!
//! The parser does not keep positions, so a call is found in the text by name: the first
//! call of that function, and within it the start of an argument, skipping over nested
//! brackets and string literals.

/// The 1-based `(line, column)` of the first call of `func` in `query`, or of its `arg`-th
/// argument (0-based).
pub(crate) fn call_position(query: &str, func: &str, arg: Option<usize>) -> Option<(usize, usize)> {
    let b = query.as_bytes();
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b':';
    let mut from = 0;
    while let Some(i) = query[from..].find(func).map(|i| i + from) {
        from = i + func.len();
        if i > 0 && ident(b[i - 1]) {
            continue;
        }
        let mut j = i + func.len();
        if j < b.len() && ident(b[j]) {
            continue;
        }
        while j < b.len() && b[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= b.len() || b[j] != b'(' {
            continue;
        }
        let Some(k) = arg else {
            return Some(line_col(query, i));
        };
        return argument_start(b, j + 1, k).map(|p| line_col(query, p));
    }
    None
}

/// The offset where argument `k` starts, scanning from just after the opening `(`.
fn argument_start(b: &[u8], mut i: usize, k: usize) -> Option<usize> {
    let mut depth = 0usize;
    let mut seen = 0usize;
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    if k == 0 {
        return Some(skip_ws(i));
    }
    while i < b.len() {
        match b[i] {
            b'(' | b'[' | b'{' => depth += 1,
            b')' | b']' | b'}' => {
                if depth == 0 {
                    return None;
                }
                depth -= 1;
            }
            q @ (b'"' | b'\'' | b'`') => {
                i += 1;
                while i < b.len() && b[i] != q {
                    if b[i] == b'\\' && q != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b',' if depth == 0 => {
                seen += 1;
                if seen == k {
                    return Some(skip_ws(i + 1));
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn line_col(query: &str, offset: usize) -> (usize, usize) {
    let before = &query[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map_or(0, |p| p + 1) + 1;
    (line, col)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        assert_eq!(call_position("sort(series)", "sort", None), Some((1, 1)));
        assert_eq!(
            call_position("sum(sort(series))", "sort", None),
            Some((1, 5))
        );
        assert_eq!(
            call_position(
                "histogram_quantile(0.8, series)",
                "histogram_quantile",
                Some(1)
            ),
            Some((1, 25))
        );
        assert_eq!(
            call_position(
                "histogram_fraction(-Inf, 1, series)",
                "histogram_fraction",
                Some(2)
            ),
            Some((1, 29))
        );
        assert_eq!(
            call_position("f(g(1, 2), \"a,b\", x)", "f", Some(2)),
            Some((1, 19))
        );
        assert_eq!(call_position("sorted(x)", "sort", None), None);
    }
}
