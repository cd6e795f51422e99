//! Prometheus remote write 1.0: `prometheus.WriteRequest`, snappy block format.

use strata_storage::{Appender, SeriesRef, METRIC_NAME};

use crate::series_cache::{Key, SeriesCache};

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
    #[error("{message}")]
    Limit {
        /// Which limit: `labels`, `label_name_length`, `label_value_length`, `samples`.
        reason: &'static str,
        message: String,
    },
    #[error(transparent)]
    Storage(#[from] strata_storage::Error),
}

/// Per-request limits on what a writer may send (0: no limit).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub max_labels_per_series: usize,
    pub max_label_name_length: usize,
    pub max_label_value_length: usize,
    pub max_samples_per_request: usize,
}

impl Limits {
    fn over(limit: usize, n: usize) -> bool {
        limit > 0 && n > limit
    }

    /// The label limits, for one series and its `labels`.
    fn check_series(
        &self,
        s: &SeriesView<'_>,
        labels: &[LabelBytes<'_>],
    ) -> Result<(), IngestError> {
        let n = labels.len();
        if Self::over(self.max_labels_per_series, n) {
            return Err(IngestError::Limit {
                reason: "labels",
                message: format!(
                    "series {} has {n} labels, over the limit of {}",
                    s.display_name(),
                    self.max_labels_per_series
                ),
            });
        }
        for &(name, value) in labels {
            if Self::over(self.max_label_name_length, name.len()) {
                return Err(IngestError::Limit {
                    reason: "label_name_length",
                    message: format!(
                        "series {}: a label name of {} bytes is over the limit of {}",
                        s.display_name(),
                        name.len(),
                        self.max_label_name_length
                    ),
                });
            }
            if Self::over(self.max_label_value_length, value.len()) {
                return Err(IngestError::Limit {
                    reason: "label_value_length",
                    message: format!(
                        "series {}: the value of label {:?} is {} bytes, over the limit of {}",
                        s.display_name(),
                        String::from_utf8_lossy(name),
                        value.len(),
                        self.max_label_value_length
                    ),
                });
            }
        }
        Ok(())
    }

    /// The sample limit, for a whole request.
    fn check_samples(&self, samples: usize) -> Result<(), IngestError> {
        if Self::over(self.max_samples_per_request, samples) {
            return Err(IngestError::Limit {
                reason: "samples",
                message: format!(
                    "the request has {samples} samples, over the limit of {} per request",
                    self.max_samples_per_request
                ),
            });
        }
        Ok(())
    }
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
) -> Result<DecodedWriteRequest, IngestError> {
    DecodedWriteRequest::parse(decompress(body, max_decompressed)?)
}

/// Like [`decode_write_request`], for a remote write 2.0 body
/// (`io.prometheus.write.v2.Request`).
pub fn decode_write_request_v2(
    body: &[u8],
    max_decompressed: usize,
) -> Result<DecodedWriteRequest, IngestError> {
    DecodedWriteRequest::parse_v2(decompress(body, max_decompressed)?)
}

/// A snappy body decompressed, its size checked against `max_decompressed` from the
/// header before anything is allocated.
pub fn decompress(body: &[u8], max_decompressed: usize) -> Result<Vec<u8>, IngestError> {
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
    Ok(raw)
}

/// A decoded `prometheus.WriteRequest` that borrows every label string from the
/// decompressed buffer: series, labels and samples live in three flat arrays, so decoding
/// allocates a handful of times per request, not per series or per sample.
#[derive(Debug, Default)]
pub struct DecodedWriteRequest {
    raw: Vec<u8>,
    series: Vec<SeriesSpan>,
    labels: Vec<LabelSpan>,
    samples: Vec<(i64, f64)>,
    metadata: Vec<crate::metadata::MetricMetadata>,
}

#[derive(Debug, Clone, Copy)]
struct SeriesSpan {
    /// The bytes of the label fields that come before every other field of the series
    /// (as encoders write all of them): read only when the labels are asked for
    /// ([`SeriesView::label_bytes`]), as a series the cache knows needs none of them.
    leading: (u32, u32),
    /// Labels after other fields (rare; and every label of remote write 2.0, whose
    /// labels refer to a per-request symbol table), read as the request is parsed.
    labels: (u32, u32),
    samples: (u32, u32),
    has_histograms: bool,
    /// `leading`, when it holds every label: what [`SeriesCache`] keys on.
    encoded_labels: Option<(u32, u32)>,
}

/// Byte ranges of a label's name and value in the buffer.
#[derive(Debug, Clone, Copy, Default)]
struct LabelSpan {
    name: (u32, u32),
    value: (u32, u32),
}

/// A label's name and value as sent (UTF-8 not yet checked).
pub type LabelBytes<'a> = (&'a [u8], &'a [u8]);

/// One series of a decoded request.
#[derive(Debug, Clone, Copy)]
pub struct SeriesView<'a> {
    req: &'a DecodedWriteRequest,
    span: SeriesSpan,
}

impl<'a> SeriesView<'a> {
    /// The metric name (or the first label) for messages, at most 200 characters.
    pub fn display_name(&self) -> String {
        let labels = self.label_bytes().unwrap_or_default();
        let name = labels
            .iter()
            .find(|(n, _)| *n == b"__name__")
            .or_else(|| labels.first())
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        name.chars().take(200).collect()
    }

    /// The labels as sent: raw bytes (UTF-8 not yet checked), in the sender's order. The
    /// label messages before the series' other fields are read here, so a malformed one
    /// is reported here rather than by [`DecodedWriteRequest::parse`].
    pub fn label_bytes(&self) -> Result<Vec<LabelBytes<'a>>, IngestError> {
        let raw = &self.req.raw;
        let bytes = |r: (u32, u32)| raw.get(r.0 as usize..r.1 as usize).unwrap_or(&[]);
        let mut out = Vec::new();
        let (start, end) = self.span.leading;
        let mut run = Pb {
            buf: raw,
            pos: start as usize,
            end: end as usize,
        };
        while !run.done() {
            let (_, wire) = run.tag()?;
            run.expect_wire(wire, WIRE_LEN, "label")?;
            let l = run.message()?.label()?;
            out.push((bytes(l.name), bytes(l.value)));
        }
        out.extend(
            self.req.labels[self.span.labels.0 as usize..self.span.labels.1 as usize]
                .iter()
                .map(|l| (bytes(l.name), bytes(l.value))),
        );
        Ok(out)
    }

    /// `(timestamp_ms, value)` samples as sent.
    pub fn samples(&self) -> &'a [(i64, f64)] {
        &self.req.samples[self.span.samples.0 as usize..self.span.samples.1 as usize]
    }

    pub fn has_histograms(&self) -> bool {
        self.span.has_histograms
    }
}

/// A malformed message, described. One word wide, so that the reader's results come back
/// in registers.
#[derive(Debug)]
#[expect(
    clippy::box_collection,
    reason = "a thin pointer keeps `Result<u64, PbError>` in two registers"
)]
struct PbError(Box<String>);

impl From<PbError> for IngestError {
    fn from(e: PbError) -> Self {
        IngestError::Protobuf(*e.0)
    }
}

/// A protobuf reader over a byte slice, positions relative to the whole buffer.
struct Pb<'a> {
    buf: &'a [u8],
    pos: usize,
    end: usize,
}

const WIRE_VARINT: u64 = 0;
const WIRE_FIXED64: u64 = 1;
const WIRE_LEN: u64 = 2;
const WIRE_FIXED32: u64 = 5;

impl<'a> Pb<'a> {
    #[cold]
    #[inline(never)]
    fn err(&self, what: &str) -> PbError {
        PbError(Box::new(format!("{what} at byte {}", self.pos)))
    }

    fn done(&self) -> bool {
        self.pos >= self.end
    }

    #[inline(always)]
    fn varint(&mut self) -> Result<u64, PbError> {
        // Tags, lengths and most small numbers take one byte.
        if let Some(&b) = self.buf.get(self.pos).filter(|_| self.pos < self.end) {
            if b < 0x80 {
                self.pos += 1;
                return Ok(u64::from(b));
            }
        }
        self.varint_long()
    }

    #[inline(never)]
    fn varint_long(&mut self) -> Result<u64, PbError> {
        let mut v = 0u64;
        for i in 0..10 {
            if self.pos >= self.end {
                return Err(self.err("truncated varint"));
            }
            let b = self.buf[self.pos];
            self.pos += 1;
            v |= ((b & 0x7f) as u64) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(self.err("varint longer than 10 bytes"))
    }

    /// The next field's number and wire type.
    #[inline]
    fn tag(&mut self) -> Result<(u64, u64), PbError> {
        let t = self.varint()?;
        if t >> 3 == 0 {
            return Err(self.err("field number 0"));
        }
        Ok((t >> 3, t & 7))
    }

    /// A length-delimited field: its start and end.
    #[inline]
    fn len_delimited(&mut self) -> Result<(usize, usize), PbError> {
        let n = self.varint()?;
        let start = self.pos;
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| start.checked_add(n))
            .filter(|&e| e <= self.end)
            .ok_or_else(|| self.err("length-delimited field runs past its message"))?;
        self.pos = end;
        Ok((start, end))
    }

    fn fixed64(&mut self) -> Result<u64, PbError> {
        if self.end - self.pos < 8 {
            return Err(self.err("truncated fixed64"));
        }
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.buf[self.pos..self.pos + 8]);
        self.pos += 8;
        Ok(u64::from_le_bytes(b))
    }

    fn skip(&mut self, wire: u64) -> Result<(), PbError> {
        match wire {
            WIRE_VARINT => self.varint().map(|_| ()),
            WIRE_FIXED64 => self.fixed64().map(|_| ()),
            WIRE_LEN => self.len_delimited().map(|_| ()),
            WIRE_FIXED32 => {
                if self.end - self.pos < 4 {
                    return Err(self.err("truncated fixed32"));
                }
                self.pos += 4;
                Ok(())
            }
            w => Err(self.err(&format!("unsupported wire type {w}"))),
        }
    }

    /// A length-delimited field read as an embedded message.
    fn message(&mut self) -> Result<Pb<'a>, PbError> {
        let (start, end) = self.len_delimited()?;
        Ok(Pb {
            buf: self.buf,
            pos: start,
            end,
        })
    }

    /// A `Label` message as encoders write it: name (field 1), then value (field 2),
    /// each under 128 bytes, nothing else. `None` (and nothing read) for any other
    /// form, which the general loop then reads.
    #[inline]
    fn short_label(&self) -> Option<LabelSpan> {
        let b = self.buf.get(self.pos..self.end)?;
        let (&[0x0a, n], rest) = b.split_first_chunk::<2>()? else {
            return None;
        };
        let n = usize::from(n);
        let (&[0x12, m], _) = rest.get(n..)?.split_first_chunk::<2>()? else {
            return None;
        };
        let m = usize::from(m);
        if n >= 0x80 || m >= 0x80 || 4 + n + m != b.len() {
            return None;
        }
        let base = u32::try_from(self.pos)
            .ok()
            .filter(|_| u32::try_from(self.end).is_ok())?;
        let at = |x: usize| base + x as u32;
        Some(LabelSpan {
            name: (at(2), at(2 + n)),
            value: (at(4 + n), at(4 + n + m)),
        })
    }

    /// A `Label` message: name (1) and value (2), other fields skipped.
    fn label(mut self) -> Result<LabelSpan, PbError> {
        if let Some(label) = self.short_label() {
            return Ok(label);
        }
        let mut label = LabelSpan::default();
        while !self.done() {
            let (f, w) = self.tag()?;
            match f {
                1 | 2 => {
                    self.expect_wire(w, WIRE_LEN, "label string")?;
                    let (a, b) = self.len_delimited()?;
                    let r = match (u32::try_from(a), u32::try_from(b)) {
                        (Ok(a), Ok(b)) => (a, b),
                        _ => return Err(self.err("message over 4 GiB")),
                    };
                    if f == 1 {
                        label.name = r;
                    } else {
                        label.value = r;
                    }
                }
                _ => self.skip(w)?,
            }
        }
        Ok(label)
    }

    /// A `Sample` message as encoders write it: value (field 1), then timestamp (field
    /// 2), nothing else. `None` (and nothing read) for any other form, which the general
    /// loop then reads.
    #[inline]
    fn short_sample(&self) -> Option<(i64, f64)> {
        let b = self.buf.get(self.pos..self.end)?;
        let (&[0x09], rest) = b.split_first_chunk::<1>()? else {
            return None;
        };
        let (value, rest) = rest.split_first_chunk::<8>()?;
        let (&[0x10], time) = rest.split_first_chunk::<1>()? else {
            return None;
        };
        // A varint that ends exactly where the message does: every byte but its last
        // has the high bit set.
        let (&last, init) = time.split_last()?;
        if init.len() >= 10 || last >= 0x80 || init.iter().any(|&x| x < 0x80) {
            return None;
        }
        let t = time
            .iter()
            .enumerate()
            .fold(0u64, |t, (i, &x)| t | (u64::from(x & 0x7f) << (7 * i)));
        Some((t as i64, f64::from_bits(u64::from_le_bytes(*value))))
    }

    /// A `Sample` message (the same in 1.0 and 2.0): value (1, double) and timestamp
    /// (2, int64).
    fn sample(mut self) -> Result<(i64, f64), PbError> {
        if let Some(sample) = self.short_sample() {
            return Ok(sample);
        }
        let (mut value, mut timestamp) = (0.0f64, 0i64);
        while !self.done() {
            let (f, w) = self.tag()?;
            match f {
                1 => {
                    self.expect_wire(w, WIRE_FIXED64, "sample value")?;
                    value = f64::from_bits(self.fixed64()?);
                }
                2 => {
                    self.expect_wire(w, WIRE_VARINT, "sample timestamp")?;
                    timestamp = self.varint()? as i64;
                }
                _ => self.skip(w)?,
            }
        }
        Ok((timestamp, value))
    }

    #[inline]
    fn expect_wire(&self, got: u64, want: u64, field: &str) -> Result<(), PbError> {
        if got == want {
            Ok(())
        } else {
            Err(self.wire_err(got, want, field))
        }
    }

    #[cold]
    #[inline(never)]
    fn wire_err(&self, got: u64, want: u64, field: &str) -> PbError {
        self.err(&format!("{field} has wire type {got}, expected {want}"))
    }
}

fn span(r: (usize, usize)) -> Result<(u32, u32), IngestError> {
    match (u32::try_from(r.0), u32::try_from(r.1)) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(IngestError::Protobuf("message over 4 GiB".into())),
    }
}

impl DecodedWriteRequest {
    /// The metric metadata the request carries (Prometheus sends it in requests of its
    /// own).
    pub fn metadata(&self) -> &[crate::metadata::MetricMetadata] {
        &self.metadata
    }

    /// Parses `prometheus.WriteRequest` bytes.
    pub fn parse(raw: Vec<u8>) -> Result<Self, IngestError> {
        // Sized from the bytes, so that the arrays are not copied as they grow: a label
        // takes 20 bytes or more on the wire, a series with its sample 200 or more as
        // exporters label them (more samples a series grow the array as usual). Capacity
        // not filled is never touched.
        let mut req = DecodedWriteRequest {
            raw: Vec::new(),
            series: Vec::with_capacity(raw.len() / 200),
            labels: Vec::with_capacity(raw.len() / 20),
            samples: Vec::with_capacity(raw.len() / 200),
            metadata: Vec::new(),
        };
        let mut top = Pb {
            buf: &raw,
            pos: 0,
            end: raw.len(),
        };
        while !top.done() {
            let (field, wire) = top.tag()?;
            if field == 3 {
                top.expect_wire(wire, WIRE_LEN, "metadata")?;
                let mut m = top.message()?;
                let mut meta = crate::metadata::MetricMetadata::default();
                while !m.done() {
                    let (f, w) = m.tag()?;
                    match f {
                        1 => {
                            m.expect_wire(w, WIRE_VARINT, "metadata type")?;
                            meta.kind = crate::metadata::MetricType::from_wire(m.varint()?);
                        }
                        2 | 4 | 5 => {
                            m.expect_wire(w, WIRE_LEN, "metadata string")?;
                            let (a, b) = m.len_delimited()?;
                            let text = std::str::from_utf8(raw.get(a..b).unwrap_or(&[]))
                                .map_err(|_| {
                                    IngestError::Protobuf("metadata is not valid UTF-8".into())
                                })?
                                .to_string();
                            match f {
                                2 => meta.family = text,
                                4 => meta.help = text,
                                _ => meta.unit = text,
                            }
                        }
                        _ => m.skip(w)?,
                    }
                }
                if !meta.family.is_empty() {
                    req.metadata.push(meta);
                }
                continue;
            }
            if field != 1 {
                // Anything newer: ignored.
                top.skip(wire)?;
                continue;
            }
            top.expect_wire(wire, WIRE_LEN, "timeseries")?;
            let mut ts = top.message()?;
            let first_label = req.labels.len();
            let first_sample = req.samples.len();
            let mut has_histograms = false;
            let labels_start = ts.pos;
            let mut leading_end = ts.pos;
            let mut other_fields = false;
            while !ts.done() {
                let (field, wire) = ts.tag()?;
                match field {
                    1 if !other_fields => {
                        // Only framed here; read when the labels are asked for.
                        ts.expect_wire(wire, WIRE_LEN, "label")?;
                        ts.len_delimited()?;
                        leading_end = ts.pos;
                        continue;
                    }
                    1 => {
                        ts.expect_wire(wire, WIRE_LEN, "label")?;
                        req.labels.push(ts.message()?.label()?);
                    }
                    2 => {
                        ts.expect_wire(wire, WIRE_LEN, "sample")?;
                        req.samples.push(ts.message()?.sample()?);
                    }
                    4 => {
                        has_histograms = true;
                        ts.skip(wire)?;
                    }
                    _ => ts.skip(wire)?,
                }
                other_fields = true;
            }
            let leading = span((labels_start, leading_end))?;
            req.series.push(SeriesSpan {
                leading,
                labels: span((first_label, req.labels.len()))?,
                samples: span((first_sample, req.samples.len()))?,
                has_histograms,
                encoded_labels: (req.labels.len() == first_label).then_some(leading),
            });
        }
        req.raw = raw;
        Ok(req)
    }

    /// Parses `io.prometheus.write.v2.Request` bytes: a symbol table (field 4, the first
    /// symbol empty) and series (field 5) whose labels are pairs of symbol references.
    /// The result reads exactly like a 1.0 request.
    pub fn parse_v2(raw: Vec<u8>) -> Result<Self, IngestError> {
        let mut req = DecodedWriteRequest::default();
        let mut symbols: Vec<(u32, u32)> = Vec::new();
        // Series' label references, resolved once every symbol is known.
        let mut refs: Vec<u32> = Vec::new();
        struct V2Series {
            refs: (usize, usize),
            samples: (u32, u32),
            has_histograms: bool,
            metadata: Option<(u64, u32, u32)>,
        }
        let mut list: Vec<V2Series> = Vec::new();
        let mut top = Pb {
            buf: &raw,
            pos: 0,
            end: raw.len(),
        };
        while !top.done() {
            let (field, wire) = top.tag()?;
            match field {
                4 => {
                    top.expect_wire(wire, WIRE_LEN, "symbol")?;
                    symbols.push(span(top.len_delimited()?)?);
                }
                5 => {
                    top.expect_wire(wire, WIRE_LEN, "timeseries")?;
                    let mut ts = top.message()?;
                    let first_ref = refs.len();
                    let first_sample = req.samples.len();
                    let mut has_histograms = false;
                    let mut metadata = None;
                    while !ts.done() {
                        let (f, w) = ts.tag()?;
                        match (f, w) {
                            (1, WIRE_LEN) => {
                                let mut packed = ts.message()?;
                                while !packed.done() {
                                    refs.push(u32::try_from(packed.varint()?).map_err(|_| {
                                        IngestError::Protobuf("label reference over 2^32".into())
                                    })?);
                                }
                            }
                            (1, WIRE_VARINT) => {
                                refs.push(u32::try_from(ts.varint()?).map_err(|_| {
                                    IngestError::Protobuf("label reference over 2^32".into())
                                })?);
                            }
                            (2, _) => {
                                ts.expect_wire(w, WIRE_LEN, "sample")?;
                                req.samples.push(ts.message()?.sample()?);
                            }
                            (3, _) => {
                                has_histograms = true;
                                ts.skip(w)?;
                            }
                            (5, _) => {
                                ts.expect_wire(w, WIRE_LEN, "metadata")?;
                                let mut m = ts.message()?;
                                let (mut kind, mut help, mut unit) = (0u64, 0u32, 0u32);
                                while !m.done() {
                                    let (f, w) = m.tag()?;
                                    match (f, w) {
                                        (1, WIRE_VARINT) => kind = m.varint()?,
                                        (3 | 4, WIRE_VARINT) => {
                                            let r = u32::try_from(m.varint()?).map_err(|_| {
                                                IngestError::Protobuf(
                                                    "symbol reference over 2^32".into(),
                                                )
                                            })?;
                                            if f == 3 {
                                                help = r;
                                            } else {
                                                unit = r;
                                            }
                                        }
                                        _ => m.skip(w)?,
                                    }
                                }
                                metadata = Some((kind, help, unit));
                            }
                            // Exemplars (4) and created timestamps (6) are not stored.
                            _ => ts.skip(w)?,
                        }
                    }
                    if !(refs.len() - first_ref).is_multiple_of(2) {
                        return Err(IngestError::Protobuf(
                            "a series has an odd number of label references".into(),
                        ));
                    }
                    list.push(V2Series {
                        refs: (first_ref, refs.len()),
                        samples: span((first_sample, req.samples.len()))?,
                        has_histograms,
                        metadata,
                    });
                }
                _ => top.skip(wire)?,
            }
        }
        if symbols.first().is_some_and(|&(a, b)| a != b) {
            return Err(IngestError::Protobuf(
                "the first symbol must be the empty string".into(),
            ));
        }
        let sym = |r: u32| -> Result<(u32, u32), IngestError> {
            symbols.get(r as usize).copied().ok_or_else(|| {
                IngestError::Protobuf(format!(
                    "symbol reference {r} is past the {} symbols",
                    symbols.len()
                ))
            })
        };
        let text = |r: (u32, u32)| -> String {
            String::from_utf8_lossy(raw.get(r.0 as usize..r.1 as usize).unwrap_or(&[])).into_owned()
        };
        for s in list {
            let first_label = req.labels.len();
            let mut family = None;
            for pair in refs[s.refs.0..s.refs.1].chunks(2) {
                let (name, value) = (sym(pair[0])?, sym(pair[1])?);
                if raw.get(name.0 as usize..name.1 as usize) == Some(&b"__name__"[..]) {
                    family = Some(value);
                }
                req.labels.push(LabelSpan { name, value });
            }
            if let (Some((kind, help, unit)), Some(family)) = (s.metadata, family) {
                if kind != 0 || help != 0 || unit != 0 {
                    req.metadata.push(crate::metadata::MetricMetadata {
                        family: text(family),
                        kind: crate::metadata::MetricType::from_wire(kind),
                        help: text(sym(help)?),
                        unit: text(sym(unit)?),
                    });
                }
            }
            req.series.push(SeriesSpan {
                leading: (0, 0),
                labels: span((first_label, req.labels.len()))?,
                samples: s.samples,
                has_histograms: s.has_histograms,
                encoded_labels: None,
            });
        }
        req.raw = raw;
        Ok(req)
    }

    pub fn series_count(&self) -> usize {
        self.series.len()
    }

    pub fn sample_count(&self) -> usize {
        self.samples.len()
    }

    pub fn series(&self) -> impl Iterator<Item = SeriesView<'_>> {
        self.series
            .iter()
            .map(move |&span| SeriesView { req: self, span })
    }
}

/// Counts of what a request wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    pub series: usize,
    pub samples: usize,
}

/// Where a series of a request goes (its cache key, if any, is kept beside).
enum Target {
    /// A series seen before, by its encoded labels.
    Cached(SeriesRef),
    /// Labels checked now: a range of the validated pairs.
    Checked(usize, usize),
}

/// Validates every series of `req` (against `limits` too), then appends all samples to
/// `app`. On error nothing of the request may be committed: the caller drops the
/// appender. Series whose encoded labels `cache` knows skip validation and the head's
/// label lookup; the others are added to it.
pub fn write_to_store(
    req: &DecodedWriteRequest,
    app: &mut Appender,
    cache: &SeriesCache,
    limits: &Limits,
) -> Result<WriteStats, IngestError> {
    limits.check_samples(req.sample_count())?;
    // Checked series' labels, sorted and validated, back to back.
    let mut pairs: Vec<(&str, &str)> = Vec::new();
    let mut targets: Vec<Target> = Vec::with_capacity(req.series.len());
    let mut scratch: Vec<(&str, &str)> = Vec::new();
    let keys: Vec<Option<Key>>;
    {
        let known = cache.reader();
        // Keys first, each one's slot prefetched: the lookups then overlap their misses.
        keys = req
            .series()
            .map(|s| {
                let k = s
                    .span
                    .encoded_labels
                    .map(|(a, b)| cache.key(&req.raw[a as usize..b as usize]));
                if let Some(k) = k {
                    known.prefetch(k);
                }
                k
            })
            .collect();
        for (s, key) in req.series().zip(&keys) {
            if let Some(r) = key.and_then(|k| known.get(k)) {
                if !s.has_histograms() {
                    targets.push(Target::Cached(r));
                    continue;
                }
            }
            let (a, b) = check_labels(&s, limits, &mut scratch, &mut pairs)?;
            targets.push(Target::Checked(a, b));
        }
    }
    let mut stats = WriteStats::default();
    let mut learned: Vec<(Key, SeriesRef)> = Vec::new();
    app.reserve(req.series_count(), req.sample_count());
    let views: Vec<SeriesView<'_>> = req.series().collect();
    // A run of cached series goes to the appender in one call.
    let mut run: Vec<(SeriesRef, &[(i64, f64)])> = Vec::with_capacity(targets.len());
    let mut run_pos: Vec<usize> = Vec::with_capacity(targets.len());
    let mut i = 0;
    while i < targets.len() {
        if let Target::Checked(a, b) = targets[i] {
            let s = &views[i];
            if let Some((&(t, v), rest)) = s.samples().split_first() {
                let r = app.append_pairs(&pairs[a..b], t, v)?;
                if let Some(k) = keys[i] {
                    learned.push((k, r));
                }
                for &(t, v) in rest {
                    app.append_ref(r, t, v)?;
                }
                stats.series += 1;
                stats.samples += 1 + rest.len();
            }
            i += 1;
            continue;
        }
        run.clear();
        run_pos.clear();
        while let Some(&Target::Cached(r)) = targets.get(i) {
            let samples = views[i].samples();
            if !samples.is_empty() {
                run.push((r, samples));
                run_pos.push(i);
                stats.series += 1;
                stats.samples += samples.len();
            }
            i += 1;
        }
        let mut from = 0;
        while let Some(k) = app.append_refs(&run[from..])? {
            // The head dropped that series since: by labels, as a new one.
            let at = run_pos[from + k];
            let s = &views[at];
            let (a, b) = check_labels(s, limits, &mut scratch, &mut pairs)?;
            let samples = s.samples();
            let r = app.append_pairs(&pairs[a..b], samples[0].0, samples[0].1)?;
            for &(t, v) in &samples[1..] {
                app.append_ref(r, t, v)?;
            }
            if let Some(k) = keys[at] {
                learned.push((k, r));
            }
            from += k + 1;
        }
    }
    if !learned.is_empty() {
        cache.insert(learned);
    }
    Ok(stats)
}

/// Checks a series' labels (UTF-8, names, limits) and that it carries no native
/// histogram, and appends them, sorted and without empty values, to `pairs`: the range
/// they take there.
fn check_labels<'a>(
    s: &SeriesView<'a>,
    limits: &Limits,
    scratch: &mut Vec<(&'a str, &'a str)>,
    pairs: &mut Vec<(&'a str, &'a str)>,
) -> Result<(usize, usize), IngestError> {
    let labels = s.label_bytes()?;
    limits.check_series(s, &labels)?;
    scratch.clear();
    for (n, v) in labels {
        let (Ok(n), Ok(v)) = (std::str::from_utf8(n), std::str::from_utf8(v)) else {
            return Err(IngestError::InvalidSeries(format!(
                "series {}: a label is not valid UTF-8",
                describe(scratch)
            )));
        };
        scratch.push((n, v));
    }
    scratch.sort_unstable_by(|a, b| a.0.cmp(b.0));
    validate_series(scratch)?;
    if s.has_histograms() {
        return Err(IngestError::NativeHistogram(describe(scratch)));
    }
    let start = pairs.len();
    pairs.extend(scratch.iter().filter(|(_, v)| !v.is_empty()));
    Ok((start, pairs.len()))
}

/// `{name="value", ...}` for error messages.
fn describe(pairs: &[(&str, &str)]) -> String {
    let parts: Vec<String> = pairs.iter().map(|(n, v)| format!("{n}={v:?}")).collect();
    format!("{{{}}}", parts.join(", "))
}

/// Checks a series' labels, sorted by name (empty values included).
fn validate_series(sorted: &[(&str, &str)]) -> Result<(), IngestError> {
    let mut name = None;
    for &(n, v) in sorted {
        if n == METRIC_NAME {
            if !v.is_empty() && !is_valid_metric_name(v) {
                return Err(IngestError::InvalidSeries(format!(
                    "series {}: invalid metric name {v:?}",
                    describe(sorted)
                )));
            }
            name = Some(v).filter(|v| !v.is_empty());
        } else if !is_valid_label_name(n) {
            return Err(IngestError::InvalidSeries(format!(
                "series {}: invalid label name {n:?}",
                describe(sorted)
            )));
        }
    }
    if name.is_none() {
        return Err(IngestError::InvalidSeries(format!(
            "series {}: no metric name (label {METRIC_NAME})",
            describe(sorted)
        )));
    }
    if let Some(w) = sorted.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(IngestError::InvalidSeries(format!(
            "series {}: label name {:?} appears more than once",
            describe(sorted),
            w[0].0
        )));
    }
    Ok(())
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

    /// A series for [`v2`]: label references and samples.
    type V2Series<'a> = (&'a [u64], &'a [(i64, f64)]);

    /// `io.prometheus.write.v2.Request` bytes from symbols and series.
    fn v2(symbols: &[&str], series: &[V2Series<'_>]) -> Vec<u8> {
        fn varint(out: &mut Vec<u8>, mut v: u64) {
            while v >= 0x80 {
                out.push((v as u8) | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }
        fn field(out: &mut Vec<u8>, n: u64, bytes: &[u8]) {
            varint(out, (n << 3) | 2);
            varint(out, bytes.len() as u64);
            out.extend_from_slice(bytes);
        }
        let mut out = Vec::new();
        for s in symbols {
            field(&mut out, 4, s.as_bytes());
        }
        for (refs, samples) in series {
            let mut t = Vec::new();
            let mut packed = Vec::new();
            for &r in *refs {
                varint(&mut packed, r);
            }
            field(&mut t, 1, &packed);
            for &(ts, v) in *samples {
                let mut sm = vec![(1 << 3) | 1];
                sm.extend_from_slice(&v.to_bits().to_le_bytes());
                varint(&mut sm, 2 << 3);
                varint(&mut sm, ts as u64);
                field(&mut t, 2, &sm);
            }
            field(&mut out, 5, &t);
        }
        out
    }

    #[test]
    fn remote_write_2_reads_like_1() {
        let raw = v2(
            &["", "__name__", "up", "job", "a"],
            &[(&[1, 2, 3, 4], &[(7, 1.5)])],
        );
        let d = DecodedWriteRequest::parse_v2(raw).unwrap();
        let s: Vec<SeriesView<'_>> = d.series().collect();
        let labels: Vec<(&[u8], &[u8])> = s[0].label_bytes().unwrap();
        assert_eq!(
            labels,
            vec![(&b"__name__"[..], &b"up"[..]), (&b"job"[..], &b"a"[..])]
        );
        assert_eq!(s[0].samples(), &[(7, 1.5)]);
        for (raw, why) in [
            (v2(&["", "a"], &[(&[1], &[])]), "odd number"),
            (v2(&["", "a"], &[(&[1, 5], &[])]), "symbol reference 5"),
            (v2(&["x", "a"], &[(&[1, 1], &[])]), "first symbol"),
        ] {
            let e = DecodedWriteRequest::parse_v2(raw).unwrap_err();
            assert!(e.to_string().contains(why), "{e}");
        }
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

    fn decoded(req: &WriteRequest) -> DecodedWriteRequest {
        DecodedWriteRequest::parse(req.encode_to_vec()).unwrap()
    }

    /// The samples of the series named `name` (and `host`) in `db`.
    fn stored(db: &strata_storage::Db, name: &str, host: &str) -> Vec<(i64, f64)> {
        let q = db.querier(i64::MIN, i64::MAX);
        let m = [
            strata_storage::Matcher::equal(METRIC_NAME, name),
            strata_storage::Matcher::equal("host", host),
        ];
        let found = q.select(&m).unwrap();
        assert!(found.len() <= 1);
        found.iter().flat_map(|s| s.samples()).collect()
    }

    /// Writes `req` through the cache, committing on success.
    fn write(
        db: &strata_storage::Db,
        cache: &SeriesCache,
        req: &WriteRequest,
    ) -> Result<WriteStats, IngestError> {
        let d = decoded(req);
        let mut app = db.appender();
        let stats = write_to_store(&d, &mut app, cache, &Limits::default())?;
        app.commit()?;
        Ok(stats)
    }

    #[test]
    fn cached_series_skip_the_lookup_and_stay_correct() {
        let dir = tempfile::tempdir().unwrap();
        let db = strata_storage::Db::open(dir.path(), strata_storage::Options::default()).unwrap();
        let cache = SeriesCache::default();
        let hosts = ["a", "b", "c"];
        let req = |t: i64| WriteRequest {
            timeseries: hosts
                .iter()
                .enumerate()
                .map(|(i, h)| {
                    series(
                        &[("__name__", "up"), ("host", h)],
                        &[(t, i as f64 + t as f64)],
                    )
                })
                .collect(),
            metadata: vec![],
        };
        assert_eq!(write(&db, &cache, &req(1000)).unwrap().samples, 3);
        assert_eq!(cache.len(), 3);
        // The key is the series' encoded label fields.
        let labels_only = series(&[("__name__", "up"), ("host", "b")], &[]).encode_to_vec();
        let b = cache.reader().get(cache.key(&labels_only)).unwrap();
        assert_eq!(
            db.series_labels(b).unwrap(),
            strata_storage::Labels::from_pairs([("__name__", "up"), ("host", "b")])
        );
        assert_eq!(write(&db, &cache, &req(2000)).unwrap().samples, 3);
        assert_eq!(cache.len(), 3);
        for (i, h) in hosts.iter().enumerate() {
            let i = i as f64;
            assert_eq!(
                stored(&db, "up", h),
                vec![(1000, i + 1000.0), (2000, i + 2000.0)]
            );
        }

        // A reference the head no longer knows (as after a series left it): appended by
        // labels, to the right series, and the entry is refreshed.
        cache.insert([(cache.key(&labels_only), SeriesRef(u32::MAX - 1))]);
        assert_eq!(write(&db, &cache, &req(3000)).unwrap().samples, 3);
        assert_eq!(cache.reader().get(cache.key(&labels_only)), Some(b));
        assert_eq!(stored(&db, "up", "b").last(), Some(&(3000, 3001.0)));

        // Cached or not, one bad series refuses the whole request.
        let mut bad = req(4000);
        bad.timeseries.push(series(
            &[("__name__", "up"), ("bad-name", "x")],
            &[(4000, 1.0)],
        ));
        assert!(matches!(
            write(&db, &cache, &bad),
            Err(IngestError::InvalidSeries(_))
        ));
        let mut hist = req(4000);
        hist.timeseries[0].histograms.push(Histogram {});
        assert!(matches!(
            write(&db, &cache, &hist),
            Err(IngestError::NativeHistogram(_))
        ));
        for h in hosts {
            assert_eq!(stored(&db, "up", h).last().map(|s| s.0), Some(3000));
        }
    }

    #[test]
    fn labels_after_samples_are_read_but_not_cached() {
        // Field order is free in protobuf: a label after the samples still belongs to the
        // series, so such a series has no single run of label bytes to key on.
        let mut raw = Vec::new();
        let head = series(&[("__name__", "up")], &[(5, 1.0)]).encode_to_vec();
        let tail = series(&[("host", "z")], &[]).encode_to_vec();
        let body = [head, tail].concat();
        raw.push(0x0a);
        raw.push(body.len() as u8);
        raw.extend_from_slice(&body);
        let d = DecodedWriteRequest::parse(raw).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let db = strata_storage::Db::open(dir.path(), strata_storage::Options::default()).unwrap();
        let cache = SeriesCache::default();
        for _ in 0..2 {
            let mut app = db.appender();
            write_to_store(&d, &mut app, &cache, &Limits::default()).unwrap();
            app.commit().unwrap();
        }
        assert_eq!(cache.len(), 0);
        assert_eq!(stored(&db, "up", "z"), vec![(5, 1.0)]);
    }

    /// The labels before a series' samples are only framed when the request is parsed
    /// and read when the series is stored: a label message damaged inside is refused
    /// then, with the whole request, and nothing is stored; so is one whose bytes the
    /// cache knew before the damage, as those are other bytes.
    #[test]
    fn damaged_leading_labels_are_refused_when_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = strata_storage::Db::open(dir.path(), strata_storage::Options::default()).unwrap();
        let cache = SeriesCache::default();
        let good = |host: &str| series(&[("__name__", "up"), ("host", host)], &[(5, 1.0)]);
        write(
            &db,
            &cache,
            &WriteRequest {
                timeseries: vec![good("a")],
                metadata: vec![],
            },
        )
        .unwrap();
        assert_eq!(cache.len(), 1);
        for host in ["a", "b"] {
            let mut bytes = WriteRequest {
                timeseries: vec![good("b"), good(host)],
                metadata: vec![],
            }
            .encode_to_vec();
            // The second series' first label: 0x0a, its length, then the name field
            // (0x0a, 8, "__name__"); its length becomes 0x7f, past the label's end.
            let at = bytes.len() - good(host).encoded_len();
            assert_eq!(&bytes[at..at + 4], &[0x0a, 14, 0x0a, 8]);
            bytes[at + 3] = 0x7f;
            let d = DecodedWriteRequest::parse(bytes).unwrap();
            let mut app = db.appender();
            let err = write_to_store(&d, &mut app, &cache, &Limits::default()).unwrap_err();
            assert!(matches!(err, IngestError::Protobuf(_)), "{err}");
            drop(app);
            assert_eq!(stored(&db, "up", "b"), vec![], "{host}");
        }
        assert_eq!(stored(&db, "up", "a"), vec![(5, 1.0)]);
    }

    #[test]
    fn decode_agrees_with_prost() {
        let req = WriteRequest {
            timeseries: vec![
                series(
                    &[("__name__", "up"), ("job", "a")],
                    &[(1, 1.0), (-5, f64::NAN)],
                ),
                series(&[("__name__", "x")], &[]),
            ],
            metadata: vec![MetricMetadata {
                r#type: 1,
                metric_family_name: "up".into(),
                help: "h".into(),
                unit: String::new(),
            }],
        };
        let d = decoded(&req);
        assert_eq!(d.series_count(), 2);
        assert_eq!(
            d.metadata(),
            &[crate::metadata::MetricMetadata {
                family: "up".into(),
                kind: crate::metadata::MetricType::Counter,
                help: "h".into(),
                unit: String::new(),
            }]
        );
        let s: Vec<SeriesView<'_>> = d.series().collect();
        let labels: Vec<(&[u8], &[u8])> = s[0].label_bytes().unwrap();
        assert_eq!(
            labels,
            vec![(&b"__name__"[..], &b"up"[..]), (&b"job"[..], &b"a"[..])]
        );
        assert_eq!(s[0].samples()[0], (1, 1.0));
        assert_eq!(s[0].samples()[1].0, -5);
        assert!(s[0].samples()[1].1.is_nan());
        assert!(s[1].samples().is_empty());
    }

    #[test]
    fn samples_in_every_encoding_read_alike() {
        let read = |bytes: &[u8]| {
            Pb {
                buf: bytes,
                pos: 0,
                end: bytes.len(),
            }
            .sample()
            .map_err(|e| e.0)
        };
        let times = [
            0,
            1,
            127,
            128,
            1_796_632_942_500,
            i64::MAX,
            -1,
            -5,
            i64::MIN,
        ];
        let values = [0.0, -0.0, 1.5, f64::INFINITY, f64::from_bits(1), 1e300];
        for &timestamp in &times {
            for &value in &values {
                let bytes = Sample { value, timestamp }.encode_to_vec();
                let back = Sample::decode(&bytes[..]).unwrap();
                let got = read(&bytes).unwrap();
                assert_eq!(got.0, back.timestamp, "{bytes:?}");
                assert_eq!(got.1.to_bits(), back.value.to_bits(), "{bytes:?}");
                assert_eq!(got.0, timestamp);
            }
        }
        // Other orders and forms, which only the general loop takes.
        let mut swapped = vec![0x10, 0x05, 0x09];
        swapped.extend_from_slice(&2.5f64.to_le_bytes());
        assert_eq!(read(&swapped).unwrap(), (5, 2.5));
        let mut padded = vec![0x09];
        padded.extend_from_slice(&2.5f64.to_le_bytes());
        padded.extend_from_slice(&[0x10, 0x85, 0x80, 0x00]);
        assert_eq!(
            read(&padded).unwrap(),
            (5, 2.5),
            "a varint with padding bytes"
        );
        let mut extra = padded.clone();
        extra.extend_from_slice(&[0x18, 0x01]);
        assert_eq!(read(&extra).unwrap(), (5, 2.5), "an unknown field after");
        // Varints that run past the message or past ten bytes are refused.
        let mut open = padded.clone();
        open.extend_from_slice(&[0x10, 0x85]);
        assert!(read(&open).is_err());
        let mut long = vec![0x09];
        long.extend_from_slice(&2.5f64.to_le_bytes());
        long.push(0x10);
        long.extend_from_slice(&[0xff; 10]);
        long.push(0x01);
        assert!(read(&long).is_err());
    }

    #[test]
    fn labels_in_every_encoding_read_alike() {
        let long = "v".repeat(300);
        // A label with a field of its own (ignored), value before name, no value.
        let odd: Vec<u8> = [
            &[0x0a, 8, 0x12, 1, b'a', 0x0a, 1, b'n', 0x18, 7][..],
            &[0x0a, 6, 0x12, 1, b'b', 0x0a, 1, b'm'][..],
            &[0x0a, 3, 0x0a, 1, b'e'][..],
        ]
        .concat();
        let plain = series(
            &[("__name__", "up"), ("long", &long), ("", "")],
            &[(1, 2.0)],
        );
        let mut raw = Vec::new();
        for body in [plain.encode_to_vec(), odd] {
            raw.push(0x0a);
            prost::encoding::encode_varint(body.len() as u64, &mut raw);
            raw.extend_from_slice(&body);
        }
        let d = DecodedWriteRequest::parse(raw).unwrap();
        let s: Vec<SeriesView<'_>> = d.series().collect();
        let got: Vec<Vec<(&[u8], &[u8])>> = s.iter().map(|s| s.label_bytes().unwrap()).collect();
        assert_eq!(
            got,
            vec![
                vec![
                    (&b"__name__"[..], &b"up"[..]),
                    (b"long", long.as_bytes()),
                    (b"", b"")
                ],
                vec![(&b"n"[..], &b"a"[..]), (b"m", b"b"), (b"e", b"")],
            ]
        );
    }

    #[test]
    fn decode_refuses_malformed_bytes() {
        let good = WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1, 1.0)])],
            metadata: vec![],
        }
        .encode_to_vec();
        // Every truncation of a valid message is either a valid prefix or an error; none
        // panics.
        for n in 0..good.len() {
            let _ = DecodedWriteRequest::parse(good[..n].to_vec());
        }
        assert!(DecodedWriteRequest::parse(vec![0x0a, 0xff]).is_err());
        assert!(DecodedWriteRequest::parse(vec![0x0b]).is_err()); // wire type 3
        assert!(DecodedWriteRequest::parse(vec![0x09, 1, 2]).is_err()); // truncated fixed64
    }

    #[test]
    fn decode_roundtrip_and_limits() {
        let req = WriteRequest {
            timeseries: vec![series(&[("__name__", "up")], &[(1, 1.0)])],
            metadata: vec![],
        };
        let body = encode(&req);
        assert_eq!(
            decode_write_request(&body, 1 << 20).unwrap().sample_count(),
            1
        );
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
        let sorted = |ls: &[(&'static str, &'static str)]| {
            let mut v = ls.to_vec();
            v.sort_unstable_by(|a, b| a.0.cmp(b.0));
            v
        };
        assert!(validate_series(&sorted(&[("job", "a"), ("__name__", "up")])).is_ok());
        let cases = [
            (sorted(&[("job", "a")]), "no metric name"),
            (sorted(&[("__name__", ""), ("job", "a")]), "no metric name"),
            (
                sorted(&[("__name__", "up"), ("bad-name", "a")]),
                "invalid label name",
            ),
            (
                sorted(&[("__name__", "up"), ("a", "1"), ("a", "2")]),
                "more than once",
            ),
            (
                sorted(&[("__name__", "up"), ("a", "1"), ("a", "")]),
                "more than once",
            ),
            (sorted(&[("__name__", "9up")]), "invalid metric name"),
        ];
        for (ls, want) in cases {
            let err = validate_series(&ls).unwrap_err().to_string();
            assert!(err.contains(want), "{err} should contain {want}");
        }
    }
}
