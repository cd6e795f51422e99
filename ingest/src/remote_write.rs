//! Prometheus remote write 1.0: `prometheus.WriteRequest`, snappy block format.

use strata_storage::{Appender, Labels, METRIC_NAME};

/// `prometheus.WriteRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct WriteRequest {
    #[prost(message, repeated, tag = "1")]
    pub timeseries: Vec<TimeSeries>,
    #[prost(message, repeated, tag = "3")]
    pub metadata: Vec<MetricMetadata>,
}

/// `prometheus.TimeSeries`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct TimeSeries {
    #[prost(message, repeated, tag = "1")]
    pub labels: Vec<Label>,
    #[prost(message, repeated, tag = "2")]
    pub samples: Vec<Sample>,
    /// Native histograms are not stored yet; their presence is detected and refused.
    #[prost(message, repeated, tag = "4")]
    pub histograms: Vec<Histogram>,
}

/// `prometheus.Label`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Label {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// `prometheus.Sample`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Sample {
    #[prost(double, tag = "1")]
    pub value: f64,
    #[prost(int64, tag = "2")]
    pub timestamp: i64,
}

/// `prometheus.MetricMetadata` (kept for later use; not stored yet).
#[derive(Clone, PartialEq, prost::Message)]
pub struct MetricMetadata {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(string, tag = "2")]
    pub metric_family_name: String,
    #[prost(string, tag = "4")]
    pub help: String,
    #[prost(string, tag = "5")]
    pub unit: String,
}

/// A native histogram; only its presence matters here.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Histogram {}

/// Why a write was refused.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("decompressing the body: {0}")]
    Snappy(String),
    #[error("body decompresses to {size} bytes, over the limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
    #[error("protobuf: {0}")]
    Protobuf(String),
    #[error("{0}")]
    InvalidSeries(String),
    #[error("series {0}: native histograms are not supported")]
    NativeHistogram(String),
    #[error(transparent)]
    Storage(#[from] strata_storage::Error),
}

impl IngestError {
    /// The HTTP status a remote-write client should get: 4xx are never worth a retry,
    /// 5xx are.
    pub fn status_code(&self) -> u16 {
        match self {
            IngestError::TooLarge { .. } => 413,
            IngestError::Storage(e) if !e.is_bad_input() => 500,
            _ => 400,
        }
    }
}

/// Decompresses and decodes a remote-write body. The decompressed size is read from the
/// snappy header and checked against `max_decompressed` before any allocation.
pub fn decode_write_request(
    body: &[u8],
    max_decompressed: usize,
) -> Result<WriteRequest, IngestError> {
    let size = snap::raw::decompress_len(body).map_err(|e| IngestError::Snappy(e.to_string()))?;
    if size > max_decompressed {
        return Err(IngestError::TooLarge {
            size,
            limit: max_decompressed,
        });
    }
    let mut raw = vec![0u8; size];
    snap::raw::Decoder::new()
        .decompress(body, &mut raw)
        .map_err(|e| IngestError::Snappy(e.to_string()))?;
    <WriteRequest as prost::Message>::decode(raw.as_slice())
        .map_err(|e| IngestError::Protobuf(e.to_string()))
}

/// Counts of what a request wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub series: usize,
    pub samples: usize,
}

/// Validates every series of `req`, then appends all samples to `app`. On error nothing of
/// the request may be committed: the caller drops the appender.
pub fn write_to_store(req: &WriteRequest, app: &mut Appender) -> Result<WriteStats, IngestError> {
    let mut label_sets = Vec::with_capacity(req.timeseries.len());
    for ts in &req.timeseries {
        let labels = validate_series(ts)?;
        if !ts.histograms.is_empty() {
            return Err(IngestError::NativeHistogram(labels.to_string()));
        }
        label_sets.push(labels);
    }
    let mut stats = WriteStats::default();
    for (ts, labels) in req.timeseries.iter().zip(&label_sets) {
        let mut samples = ts.samples.iter();
        let Some(first) = samples.next() else {
            continue;
        };
        let r = app.append(labels, first.timestamp, first.value)?;
        for s in samples {
            app.append_ref(r, s.timestamp, s.value)?;
        }
        stats.series += 1;
        stats.samples += ts.samples.len();
    }
    Ok(stats)
}

/// Checks a series' labels and returns them sorted.
fn validate_series(ts: &TimeSeries) -> Result<Labels, IngestError> {
    let describe = || {
        let pairs: Vec<String> = ts
            .labels
            .iter()
            .map(|l| format!("{}={:?}", l.name, l.value))
            .collect();
        format!("{{{}}}", pairs.join(", "))
    };
    let mut name = None;
    for l in &ts.labels {
        if l.name == METRIC_NAME {
            if !is_valid_metric_name(&l.value) {
                return Err(IngestError::InvalidSeries(format!(
                    "series {}: invalid metric name {:?}",
                    describe(),
                    l.value
                )));
            }
            name = Some(&l.value);
        } else if !is_valid_label_name(&l.name) {
            return Err(IngestError::InvalidSeries(format!(
                "series {}: invalid label name {:?}",
                describe(),
                l.name
            )));
        }
    }
    if name.is_none() {
        return Err(IngestError::InvalidSeries(format!(
            "series {}: no metric name (label {METRIC_NAME})",
            describe()
        )));
    }
    if let Some(dup) = Labels::duplicate_name(ts.labels.iter().map(|l| l.name.as_str())) {
        return Err(IngestError::InvalidSeries(format!(
            "series {}: label name {dup:?} appears more than once",
            describe()
        )));
    }
    Ok(Labels::from_pairs(
        ts.labels
            .iter()
            .map(|l| (l.name.as_str(), l.value.as_str())),
    ))
}

/// `[a-zA-Z_][a-zA-Z0-9_]*`, Prometheus' classic label name rule.
pub fn is_valid_label_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`, Prometheus' classic metric name rule.
pub fn is_valid_metric_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    fn series(labels: &[(&str, &str)], samples: &[(i64, f64)]) -> TimeSeries {
        TimeSeries {
            labels: labels
                .iter()
                .map(|(n, v)| Label {
                    name: n.to_string(),
                    value: v.to_string(),
                })
                .collect(),
            samples: samples
                .iter()
                .map(|&(timestamp, value)| Sample { value, timestamp })
                .collect(),
            histograms: vec![],
        }
    }

    fn encode(req: &WriteRequest) -> Vec<u8> {
        snap::raw::Encoder::new()
            .compress_vec(&req.encode_to_vec())
            .unwrap()
    }

    #[test]
    fn names() {
        assert!(is_valid_label_name("job_1"));
        assert!(!is_valid_label_name("1job"));
        assert!(!is_valid_label_name("a-b"));
        assert!(!is_valid_label_name(""));
        assert!(is_valid_metric_name("ns:rate5m"));
        assert!(!is_valid_label_name("ns:rate5m"));
    }

    #[test]
    fn decode_roundtrip_and_limits() {
        let req = WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1, 1.0)])],
            metadata: vec![],
        };
        let body = encode(&req);
        assert_eq!(decode_write_request(&body, 1 << 20).unwrap(), req);
        let err = decode_write_request(&body, 4).unwrap_err();
        assert_eq!(err.status_code(), 413);
        assert!(matches!(
            decode_write_request(b"\xff\xff\xff", 1 << 20),
            Err(IngestError::Snappy(_))
        ));
        let not_proto = snap::raw::Encoder::new().compress_vec(b"\x0a\xff").unwrap();
        assert!(matches!(
            decode_write_request(&not_proto, 1 << 20),
            Err(IngestError::Protobuf(_))
        ));
    }

    #[test]
    fn validation() {
        let ok = series(&[("job", "a"), ("__name__", "up")], &[]);
        assert_eq!(
            validate_series(&ok).unwrap(),
            Labels::from_pairs([("__name__", "up"), ("job", "a")])
        );
        let cases = [
            (series(&[("job", "a")], &[]), "no metric name"),
            (
                series(&[("__name__", "up"), ("bad-name", "a")], &[]),
                "invalid label name",
            ),
            (
                series(&[("__name__", "up"), ("a", "1"), ("a", "2")], &[]),
                "more than once",
            ),
            (series(&[("__name__", "9up")], &[]), "invalid metric name"),
        ];
        for (ts, want) in cases {
            let err = validate_series(&ts).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
