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

/// Parses a query, mapping the parser's message to [`QueryError::BadData`].
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr, QueryError> {
    promql_parser::parser::parse(query).map_err(QueryError::BadData)
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
