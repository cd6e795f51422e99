use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("data directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    #[error("a series needs at least one label")]
    EmptyLabels,
    #[error("invalid matcher: {0}")]
    InvalidMatcher(String),
    #[error("unknown series reference {0}")]
    UnknownSeries(u32),
    #[error("the write-ahead log refuses writes after an unrecoverable failure: {0}")]
    WalPoisoned(String),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("series {labels}: sample at {t} is out of order and older than the out-of-order window allows (oldest accepted: {oldest})")]
    OutOfBounds { labels: String, t: i64, oldest: i64 },
    #[error("series {labels} would be new, but the store holds its limit of {limit} series (--storage.max-series); samples of existing series are still accepted")]
    SeriesLimit { labels: String, limit: usize },
    #[error("series {labels} would be new, but metric {metric:?} has its limit of {limit} series (--storage.max-series-per-metric); samples of existing series are still accepted")]
    SeriesPerMetricLimit {
        labels: String,
        metric: String,
        limit: usize,
    },
}

impl Error {
    /// Whether the error is the caller's (bad input) rather than the store's.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::OutOfBounds { .. }
                | Error::SeriesLimit { .. }
                | Error::SeriesPerMetricLimit { .. }
                | Error::EmptyLabels
                | Error::InvalidMatcher(_)
                | Error::UnknownSeries(_)
        )
    }
}
