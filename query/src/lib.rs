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

pub mod duration;
mod error;
mod eval;
mod functions;
pub mod script;

pub use error::QueryError;
pub use eval::{Engine, EngineOptions, QueryValue};

/// Parses a query, mapping the parser's message to [`QueryError::BadData`].
pub fn parse(query: &str) -> Result<promql_parser::parser::Expr, QueryError> {
    promql_parser::parser::parse(query).map_err(QueryError::BadData)
}
