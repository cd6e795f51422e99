//! Being pulled from: Prometheus remote read (`POST /api/v1/read`, the `SAMPLES` and
//! `STREAMED_XOR_CHUNKS` response types, in the order the client prefers) and federation
//! (`GET /federate?match[]=…`), both with the configuration's external labels applied as
//! Prometheus applies its own.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use strata_ingest::remote_read::{
    self, Chunk, ChunkedReadResponse, ChunkedSeries, QueryResult, ReadResponse, SAMPLES,
    STREAMED_XOR_CHUNKS,
};
use strata_ingest::remote_write::{Sample, TimeSeries};
use strata_storage::{is_stale_nan, Labels, Matcher};

use super::{blocking, now_ms, read_body, read_params, ApiError, AppState};

fn external_labels(st: &AppState) -> Vec<(String, String)> {
    st.rules.config().external_labels.clone()
}

/// `POST /api/v1/read`.
pub(crate) async fn read(State(st): State<Arc<AppState>>, body: Body) -> Response {
    let body = match read_body(body, st.max_write_bytes).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let st2 = Arc::clone(&st);
    let result = blocking(move || answer_read(&st2, &body)).await;
    match result {
        Ok(Answer::Samples(bytes)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "application/x-protobuf"),
                (header::CONTENT_ENCODING, "snappy"),
            ],
            bytes,
        )
            .into_response(),
        Ok(Answer::Chunks(bytes)) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, remote_read::STREAMED_CONTENT_TYPE)],
            bytes,
        )
            .into_response(),
        // Remote read clients show the body of an error answer as text.
        Err(e) => (e.status_code(), format!("{}\n", e.message())).into_response(),
    }
}

/// A series' labels (external labels added) and samples.
type SeriesSamples = (Labels, Vec<(i64, f64)>);

/// A remote-read answer in the response type the client asked for first.
enum Answer {
    /// `SAMPLES`: a snappy-compressed `ReadResponse`.
    Samples(Vec<u8>),
    /// `STREAMED_XOR_CHUNKS`: `ChunkedReadResponse` frames.
    Chunks(Vec<u8>),
}

/// Samples per chunk of a streamed answer, as Prometheus' head chunks.
const CHUNK_SAMPLES: usize = 120;
/// A frame of a streamed answer is closed once its chunks pass this many bytes.
const FRAME_BYTES: usize = 1 << 20;

fn answer_read(st: &AppState, body: &[u8]) -> Result<Answer, ApiError> {
    let req = remote_read::decode_read_request(body, st.max_write_bytes)
        .map_err(|e| ApiError::bad_data(e.to_string()))?;
    // The first accepted type strata implements; none given means SAMPLES.
    let streamed = match req
        .accepted_response_types
        .iter()
        .find(|t| **t == SAMPLES || **t == STREAMED_XOR_CHUNKS)
    {
        Some(&t) => t == STREAMED_XOR_CHUNKS,
        None if req.accepted_response_types.is_empty() => false,
        None => {
            return Err(ApiError::bad_data(
                "none of the accepted response types is supported: strata answers SAMPLES and STREAMED_XOR_CHUNKS",
            ))
        }
    };
    let external = external_labels(st);
    let limit = st.engine.options().max_samples;
    let mut total = 0usize;
    let mut results = Vec::with_capacity(req.queries.len());
    let mut frames = Vec::new();
    for (qi, q) in req.queries.iter().enumerate() {
        let series = select(st, q, &external, &mut total, limit)?;
        let label_list = |labels: &Labels| {
            labels
                .iter()
                .map(|l| remote_read::label(&l.name, &l.value))
                .collect::<Vec<_>>()
        };
        if streamed {
            let mut frame = ChunkedReadResponse {
                chunked_series: Vec::new(),
                query_index: qi as i64,
            };
            let mut bytes = 0;
            for (labels, samples) in &series {
                let chunks: Vec<Chunk> = samples
                    .chunks(CHUNK_SAMPLES)
                    .map(|part| Chunk {
                        min_time_ms: part[0].0,
                        max_time_ms: part[part.len() - 1].0,
                        r#type: 1,
                        data: strata_storage::prometheus_xor_chunk(part),
                    })
                    .collect();
                bytes += chunks.iter().map(|c| c.data.len()).sum::<usize>();
                frame.chunked_series.push(ChunkedSeries {
                    labels: label_list(labels),
                    chunks,
                });
                if bytes >= FRAME_BYTES {
                    remote_read::put_frame(&mut frames, &frame);
                    frame.chunked_series.clear();
                    bytes = 0;
                }
            }
            if !frame.chunked_series.is_empty() {
                remote_read::put_frame(&mut frames, &frame);
            }
        } else {
            let timeseries = series
                .iter()
                .map(|(labels, samples)| TimeSeries {
                    labels: label_list(labels),
                    samples: samples
                        .iter()
                        .map(|&(t, v)| Sample {
                            value: v,
                            timestamp: t,
                        })
                        .collect(),
                    histograms: Vec::new(),
                })
                .collect();
            results.push(QueryResult { timeseries });
        }
    }
    if streamed {
        return Ok(Answer::Chunks(frames));
    }
    Ok(Answer::Samples(remote_read::encode_read_response(
        &ReadResponse { results },
    )))
}

/// The series one query of a read request selects, with the external labels added, and
/// their samples in range (stale markers left out). `total` counts samples against
/// `limit` across the request's queries.
fn select(
    st: &AppState,
    q: &remote_read::Query,
    external: &[(String, String)],
    total: &mut usize,
    limit: usize,
) -> Result<Vec<SeriesSamples>, ApiError> {
    let mut matchers = Vec::with_capacity(q.matchers.len());
    for m in &q.matchers {
        let matcher = match m.r#type {
            0 => Matcher::equal(&m.name, &m.value),
            1 => Matcher::not_equal(&m.name, &m.value),
            2 => Matcher::regex(m.name.as_str(), &m.value)
                .map_err(|e| ApiError::bad_data(e.to_string()))?,
            3 => Matcher::not_regex(m.name.as_str(), &m.value)
                .map_err(|e| ApiError::bad_data(e.to_string()))?,
            t => return Err(ApiError::bad_data(format!("unknown matcher type {t}"))),
        };
        // A matcher on an external label is decided here, as Prometheus does: the
        // stored series do not carry it.
        if let Some((_, v)) = external.iter().find(|(k, _)| *k == m.name) {
            if matcher.matches(v) {
                continue;
            }
            return Ok(Vec::new());
        }
        matchers.push(matcher);
    }
    if matchers.is_empty() {
        return Ok(Vec::new());
    }
    let querier = st.db.querier(q.start_timestamp_ms, q.end_timestamp_ms);
    let series = querier
        .select(&matchers)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let mut out = Vec::with_capacity(series.len());
    for s in series {
        let samples: Vec<(i64, f64)> = s
            .samples()
            .filter(|(t, v)| {
                *t >= q.start_timestamp_ms && *t <= q.end_timestamp_ms && !is_stale_nan(*v)
            })
            .collect();
        if samples.is_empty() {
            continue;
        }
        *total += samples.len();
        if *total > limit {
            return Err(ApiError::bad_data(format!(
                "exceeded sample limit ({limit})"
            )));
        }
        let mut labels = s.labels.clone();
        for (k, v) in external {
            if labels.get(k).is_none() {
                labels.set(k, v);
            }
        }
        out.push((labels, samples));
    }
    Ok(out)
}

/// `GET /federate?match[]=…`: the latest sample (within the lookback) of every series the
/// selectors match, in the text format, with the external labels added.
pub(crate) async fn federate(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let params = match read_params(req).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let selectors: Vec<String> = params
        .all("match[]")
        .into_iter()
        .map(str::to_string)
        .collect();
    let st2 = Arc::clone(&st);
    let result = blocking(move || {
        let mut sets = Vec::new();
        for s in &selectors {
            sets.push(strata_query::parse_selector(s).map_err(ApiError::from)?);
        }
        Ok(render_federation(&st2, &sets))
    })
    .await;
    match result {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (e.status_code(), format!("{}\n", e.message())).into_response(),
    }
}

fn render_federation(st: &AppState, sets: &[Vec<Matcher>]) -> String {
    let now = now_ms();
    let lookback = st.engine.options().lookback_delta_ms;
    let querier = st.db.querier(now - lookback, now);
    let external = external_labels(st);
    // By metric name, then labels: the latest sample of each series.
    let mut latest: BTreeMap<Labels, (i64, f64)> = BTreeMap::new();
    for matchers in sets {
        let Ok(series) = querier.select(matchers) else {
            continue;
        };
        for s in series {
            let last = s.samples().filter(|(t, _)| *t <= now).last();
            let Some((t, v)) = last else { continue };
            if is_stale_nan(v) || t < now - lookback {
                continue;
            }
            let mut labels = s.labels.clone();
            for (k, val) in &external {
                if labels.get(k).is_none() {
                    labels.set(k, val);
                }
            }
            latest.insert(labels, (t, v));
        }
    }
    let mut by_name: BTreeMap<String, Vec<(Labels, i64, f64)>> = BTreeMap::new();
    for (l, (t, v)) in latest {
        let name = l.metric_name().unwrap_or("").to_string();
        by_name.entry(name).or_default().push((l, t, v));
    }
    let mut out = String::new();
    for (name, series) in by_name {
        let _ = writeln!(out, "# TYPE {name} untyped");
        for (l, t, v) in series {
            out.push_str(&name);
            super::metrics::push_labels(&mut out, &l);
            out.push(' ');
            super::metrics::push_value(&mut out, v);
            let _ = writeln!(out, " {t}");
        }
    }
    out
}
