use std::io;
use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("data directory {} is in use by another process", .0.display())]
    Locked(PathBuf),
    #[error("series {labels}: sample at {t} is out of order (the series already has a sample at {last})")]
    OutOfOrder { labels: String, t: i64, last: i64 },
    #[error("series {labels}: a different value for timestamp {t} is already stored")]
    DuplicateTimestamp { labels: String, t: i64 },
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
    #[error("series {labels}: sample at {t} is older than the data already persisted in blocks (up to {min_valid})")]
    OutOfBounds {
        labels: String,
        t: i64,
        min_valid: i64,
    },
}

impl Error {
    /// Whether the error is the caller's (bad input) rather than the store's.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            Error::OutOfOrder { .. }
                | Error::OutOfBounds { .. }
                | Error::DuplicateTimestamp { .. }
                | Error::EmptyLabels
                | Error::InvalidMatcher(_)
                | Error::UnknownSeries(_)
        )
    }
}
