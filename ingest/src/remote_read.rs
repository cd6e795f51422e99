//! Prometheus remote read: `prometheus.ReadRequest` in, `prometheus.ReadResponse` (the
//! `SAMPLES` response type) out, both snappy block format.

use crate::remote_write::{Label, TimeSeries};

/// `prometheus.ReadRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadRequest {
    #[prost(message, repeated, tag = "1")]
    pub queries: Vec<Query>,
    /// 0 = SAMPLES, 1 = STREAMED_XOR_CHUNKS.
    #[prost(int32, repeated, tag = "2")]
    pub accepted_response_types: Vec<i32>,
}

/// `prometheus.Query`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Query {
    #[prost(int64, tag = "1")]
    pub start_timestamp_ms: i64,
    #[prost(int64, tag = "2")]
    pub end_timestamp_ms: i64,
    #[prost(message, repeated, tag = "3")]
    pub matchers: Vec<LabelMatcher>,
}

/// `prometheus.LabelMatcher`: type 0 `=`, 1 `!=`, 2 `=~`, 3 `!~`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LabelMatcher {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(string, tag = "3")]
    pub value: String,
}

/// `prometheus.ReadResponse`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ReadResponse {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<QueryResult>,
}

/// `prometheus.QueryResult`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct QueryResult {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
}

/// The `SAMPLES` response type's number.
pub const SAMPLES: i32 = 0;
/// The `STREAMED_XOR_CHUNKS` response type's number.
pub const STREAMED_XOR_CHUNKS: i32 = 1;
/// `Content-Type` of a streamed chunks answer.
pub const STREAMED_CONTENT_TYPE: &str =
    "application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse";

/// `prometheus.ChunkedReadResponse`: one frame of a `STREAMED_XOR_CHUNKS` answer.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkedReadResponse {
    #[prost(message, repeated, tag = "1")]
    pub chunked_series: Vec<ChunkedSeries>,
    /// Which query of the request the series answer.
    #[prost(int64, tag = "2")]
    pub query_index: i64,
}

/// `prometheus.ChunkedSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ChunkedSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub chunks: Vec<Chunk>,
}

/// `prometheus.Chunk`: type 1 is XOR.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Chunk {
    #[prost(int64, tag = "1")]
    pub min_time_ms: i64,
    #[prost(int64, tag = "2")]
    pub max_time_ms: i64,
    #[prost(int32, tag = "3")]
    pub r#type: i32,
    #[prost(bytes = "vec", tag = "4")]
    pub data: Vec<u8>,
}

/// Appends one frame of a streamed answer: the message's length (uvarint), the CRC32C
/// of the message (big-endian), the message.
pub fn put_frame(out: &mut Vec<u8>, msg: &ChunkedReadResponse) {
    use prost::Message;
    let raw = msg.encode_to_vec();
    let mut n = raw.len() as u64;
    while n >= 0x80 {
        out.push(n as u8 | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
    out.extend_from_slice(&crc32c::crc32c(&raw).to_be_bytes());
    out.extend_from_slice(&raw);
}

/// Decompresses and decodes a read request (at most `max_decompressed` bytes).
pub fn decode_read_request(
    body: &[u8],
    max_decompressed: usize,
) -> Result<ReadRequest, crate::remote_write::IngestError> {
    use prost::Message;
    let raw = crate::remote_write::decompress(body, max_decompressed)?;
    ReadRequest::decode(raw.as_slice())
        .map_err(|e| crate::remote_write::IngestError::Protobuf(e.to_string()))
}

/// Encodes and compresses a read response.
pub fn encode_read_response(r: &ReadResponse) -> Vec<u8> {
    use prost::Message;
    let raw = r.encode_to_vec();
    snap::raw::Encoder::new()
        .compress_vec(&raw)
        .unwrap_or_default()
}

/// A label pair for responses.
pub fn label(name: &str, value: &str) -> Label {
    Label {
        name: name.to_string(),
        value: value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn round_trip() {
        let req = ReadRequest {
            queries: vec![Query {
                start_timestamp_ms: 1,
                end_timestamp_ms: 2,
                matchers: vec![LabelMatcher {
                    r#type: 2,
                    name: "__name__".into(),
                    value: "up|x".into(),
                }],
            }],
            accepted_response_types: vec![SAMPLES],
        };
        let body = snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap_or_default();
        assert_eq!(decode_read_request(&body, 1 << 20).ok(), Some(req));
        assert!(decode_read_request(b"not snappy", 1 << 20).is_err());
    }
}
