/// Why a query failed. The HTTP layer maps each kind once to Prometheus' `errorType`.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The query does not parse, or a parameter is invalid (`bad_data`, 400).
    #[error("{0}")]
    BadData(String),
    /// A feature of PromQL that strata does not evaluate yet (`execution`, 422).
    #[error("not supported yet: {0}")]
    Unsupported(String),
    /// The query is valid but cannot be evaluated on this data (`execution`, 422).
    #[error("{0}")]
    Execution(String),
    /// The query ran past its timeout (`timeout`, 503).
    #[error("{0}")]
    Timeout(String),
    /// The client went away and the query was stopped (`canceled`, 499).
    #[error("{0}")]
    Canceled(String),
    /// The store failed (`internal`, 500).
    #[error(transparent)]
    Storage(#[from] strata_storage::Error),
}
