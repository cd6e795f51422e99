//! strata-query: PromQL evaluation over strata's storage. It owns planning and evaluating
//! queries; syntax comes from `promql-parser`, samples from a storage [`Querier`]. It never
//! writes to the store.
//!
//! ```text
//!  text ──promql-parser──> Expr ──Evaluator──> values at every step ──> QueryValue
//!                                  │
//!                                  └─ selectors: Querier::select once per selector, then
//!                                     sliding windows over each series' samples
//! ```
//!
//! Instant and range queries share one evaluator: an instant query is a range query with
//! one step. Every node yields its value at all steps at once, so a selector reads each
//! series once for the whole range instead of once per step.
//!
//! [`Querier`]: strata_storage::Querier

mod aggregate;
pub mod duration;
mod error;
mod eval;
mod functions;
mod histogram;
mod position;
pub mod script;

pub use error::QueryError;
pub use eval::{Annotations, Engine, EngineOptions, QueryOutput, QueryStats, QueryValue};

/// Deepest nesting of parentheses, brackets and braces a query may have.
pub const MAX_NESTING: usize = 128;
/// Most operators (binary, unary minus, `and`/`or`/`unless`) a query may have.
pub const MAX_OPERATORS: usize = 2_000;
/// Stack for threads that parse or evaluate queries: enough for the deepest query
/// [`parse`] accepts, in debug builds too.
pub const STACK_SIZE: usize = 64 << 20;

/// Parses a query, mapping the parser's message to [`QueryError::BadData`]. Queries
/// nested deeper than [`MAX_NESTING`] or with more than [`MAX_OPERATORS`] operators are
/// refused before parsing: parsing and evaluation recurse once per level, and a hostile
/// query must not exhaust a thread's stack.
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr, QueryError> {
    if let Some(expr) = parsed::recall(query) {
        return Ok(expr);
    }
    check_shape(query)?;
    let expr = promql_parser::parser::parse(query).map_err(QueryError::BadData)?;
    parsed::remember(query, &expr);
    Ok(expr)
}

/// The syntax trees of recently parsed queries. A dashboard asks the same queries again
/// at every refresh, and parsing one takes tens of microseconds, a copy of its tree
/// about one.
mod parsed {
    use promql_parser::parser::Expr;
    use std::collections::HashMap;
    use std::sync::{Mutex, PoisonError};

    /// How many queries are remembered; all are forgotten when one more comes.
    pub(super) const QUERIES: usize = 256;
    /// Longer queries are not remembered.
    const LONGEST: usize = 4_096;

    static TREES: Mutex<Option<HashMap<String, Expr>>> = Mutex::new(None);

    pub(super) fn recall(query: &str) -> Option<Expr> {
        let trees = TREES.lock().unwrap_or_else(PoisonError::into_inner);
        trees.as_ref()?.get(query).cloned()
    }

    pub(super) fn remember(query: &str, expr: &Expr) {
        if query.len() > LONGEST {
            return;
        }
        let mut trees = TREES.lock().unwrap_or_else(PoisonError::into_inner);
        let trees = trees.get_or_insert_with(HashMap::new);
        if trees.len() >= QUERIES {
            trees.clear();
        }
        trees.insert(query.to_owned(), expr.clone());
    }
}

/// Counts nesting and operators outside string literals and label matchers.
fn check_shape(query: &str) -> Result<(), QueryError> {
    let b = query.as_bytes();
    let (mut depth, mut deepest, mut ops, mut braces) = (0usize, 0usize, 0usize, 0usize);
    let mut i = 0;
    while i < b.len() {
        let c = b[i];
        match c {
            b'"' | b'\'' | b'`' => {
                // Skip the literal (backslash escapes in the quoted forms).
                i += 1;
                while i < b.len() && b[i] != c {
                    if b[i] == b'\\' && c != b'`' {
                        i += 1;
                    }
                    i += 1;
                }
            }
            b'#' => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'(' | b'[' | b'{' => {
                depth += 1;
                deepest = deepest.max(depth);
                braces += usize::from(c == b'{');
            }
            b')' | b']' | b'}' => {
                depth = depth.saturating_sub(1);
                braces = braces.saturating_sub(usize::from(c == b'}'));
            }
            b'+' | b'-' | b'*' | b'/' | b'%' | b'^' | b'<' | b'>' | b'=' | b'!' if braces == 0 => {
                ops += 1;
            }
            c if c.is_ascii_alphabetic() || c == b'_' => {
                let start = i;
                while i + 1 < b.len() && (b[i + 1].is_ascii_alphanumeric() || b[i + 1] == b'_') {
                    i += 1;
                }
                let word = &query[start..=i];
                if braces == 0 && matches!(word, "and" | "or" | "unless" | "atan2") {
                    ops += 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    if deepest > MAX_NESTING {
        return Err(QueryError::BadData(format!(
            "query nests {deepest} levels deep, over the limit of {MAX_NESTING}"
        )));
    }
    if ops > MAX_OPERATORS {
        return Err(QueryError::BadData(format!(
            "query has {ops} operators, over the limit of {MAX_OPERATORS}"
        )));
    }
    Ok(())
}

/// Parses a series selector (`up{job="a"}`) as the `match[]` parameters of the series
/// and label APIs take it, returning storage matchers.
pub fn parse_selector(s: &str) -> Result<Vec<strata_storage::Matcher>, QueryError> {
    match parse(s)? {
        promql_parser::parser::Expr::VectorSelector(vs) => eval::selector_matchers(&vs),
        _ => Err(QueryError::BadData(format!(
            "invalid parameter \"match[]\": {s:?} is not a series selector"
        ))),
    }
}

#[cfg(test)]
mod shape_tests {
    use super::*;

    #[test]
    fn a_remembered_tree_is_the_one_parsing_gives() {
        // More queries than are remembered, twice over: each is recalled or parsed again.
        let queries: Vec<String> = (0..parsed::QUERIES + 10)
            .map(|i| {
                format!(
                    "sum by (instance) (rate(m_{i}{{job=\"j\"}}[{}m]))",
                    i % 7 + 1
                )
            })
            .collect();
        for _ in 0..2 {
            for q in &queries {
                let remembered = parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
                let fresh = promql_parser::parser::parse(q).unwrap_or_else(|e| panic!("{q}: {e}"));
                assert_eq!(format!("{remembered:?}"), format!("{fresh:?}"));
            }
        }
        // A query that fails fails every time.
        for _ in 0..2 {
            assert!(matches!(
                parse("sum(rate(m[5m])"),
                Err(QueryError::BadData(_))
            ));
        }
    }

    #[test]
    fn nesting_and_operators_are_counted_outside_literals_and_matchers() {
        let parens_in_string = format!("up{{job=\"{}\"}}", "(".repeat(500));
        assert!(check_shape(&parens_in_string).is_ok());
        let ops_in_matchers = format!("up{{{}}}", vec!["a!=\"x\""; 3000].join(","));
        assert!(check_shape(&ops_in_matchers).is_ok());
        assert!(check_shape("# ((((((\nup").is_ok());
        let deep = format!("{}1{}", "(".repeat(129), ")".repeat(129));
        assert!(
            matches!(check_shape(&deep), Err(QueryError::BadData(m)) if m.contains("129 levels"))
        );
        assert!(check_shape(&format!("{}1{}", "(".repeat(128), ")".repeat(128))).is_ok());
        let words = vec!["up"; 2_002].join(" unless ");
        assert!(
            matches!(check_shape(&words), Err(QueryError::BadData(m)) if m.contains("2001 operators"))
        );
        // Label names that read like operators count, but a real query stays far below.
        assert!(check_shape(&["sum by (and, or) (up)"; 10].join(" + ")).is_ok());
    }
}
