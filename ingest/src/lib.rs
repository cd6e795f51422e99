//! strata-ingest: wire formats into strata. It owns decoding and validating what clients
//! send and handing it to the storage appender; it never writes to disk itself and knows
//! nothing of HTTP beyond the status code each error deserves.
//!
//! ```text
//!  body ──snappy (length checked first)──> protobuf ──> validate every series ──> Appender ──> commit
//! ```
//!
//! A request is all or nothing: every series is validated before the first sample is
//! appended, and an error while appending rolls the whole request back. A series whose
//! encoded labels were validated before is found in the [`SeriesCache`] instead.

pub mod metadata;
pub mod remote_read;
pub mod remote_write;
pub mod series_cache;
pub mod text;

pub use remote_write::{
    decode_write_request, decode_write_request_v2, write_to_store, DecodedWriteRequest,
    IngestError, Limits, WriteRequest,
};
pub use series_cache::SeriesCache;

/// The largest snappy-compressed body whose content fits in `max_decompressed` bytes; a
/// larger body can be refused before it is read.
pub fn max_compressed_len(max_decompressed: usize) -> usize {
    snap::raw::max_compress_len(max_decompressed)
}
