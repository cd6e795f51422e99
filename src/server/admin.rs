//! `/api/v1/status/tsdb` and the TSDB admin API (`/api/v1/admin/tsdb/…`), which answers
//! only when `--enable-admin-api` is set.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::{blocking, json, json_response, read_params, selectors, ApiError, AppState};
use super::{MAX_TIME, MIN_TIME};

/// Default length of each top list in `/api/v1/status/tsdb`.
const DEFAULT_TSDB_LIMIT: usize = 10;

pub(crate) async fn tsdb_status(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let p = read_params(req).await?;
    let limit = match p.limit()? {
        0 => DEFAULT_TSDB_LIMIT,
        n => n,
    };
    let body = blocking(move || {
        let s = st.db.tsdb_status(limit);
        Ok(json::success(|out| {
            out.push_str("{\"headStats\":{\"numSeries\":");
            out.push_str(&s.num_series.to_string());
            out.push_str(",\"chunkCount\":");
            out.push_str(&s.chunk_count.to_string());
            // Prometheus reports an empty head with the extreme values of an int64.
            out.push_str(",\"minTime\":");
            out.push_str(&s.min_time.unwrap_or(i64::MAX).to_string());
            out.push_str(",\"maxTime\":");
            out.push_str(&s.max_time.unwrap_or(i64::MIN).to_string());
            out.push('}');
            for (key, list) in [
                ("seriesCountByMetricName", &s.postings.series_by_metric_name),
                (
                    "labelValueCountByLabelName",
                    &s.postings.values_by_label_name,
                ),
                ("memoryInBytesByLabelName", &s.postings.bytes_by_label_name),
                ("seriesCountByLabelValuePair", &s.postings.series_by_pair),
            ] {
                out.push_str(",\"");
                out.push_str(key);
                out.push_str("\":[");
                for (i, (name, value)) in list.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    out.push_str("{\"name\":");
                    json::push_str(out, name);
                    out.push_str(",\"value\":");
                    out.push_str(&value.to_string());
                    out.push('}');
                }
                out.push(']');
            }
            out.push('}');
        }))
    })
    .await?;
    Ok(json_response(StatusCode::OK, body))
}

fn check_enabled(st: &AppState) -> Result<(), ApiError> {
    if st.admin_api {
        Ok(())
    } else {
        Err(ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            error_type: "unavailable",
            message: "admin APIs disabled (start strata with --enable-admin-api)".into(),
        })
    }
}

pub(crate) async fn delete_series(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    check_enabled(&st)?;
    let p = read_params(req).await?;
    let sets = selectors(&p)?;
    if sets.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let (start, end) = (p.time_or("start", MIN_TIME)?, p.time_or("end", MAX_TIME)?);
    if end < start {
        return Err(ApiError::bad_data(
            "end timestamp must not be before start time",
        ));
    }
    blocking(move || {
        for m in &sets {
            st.db.delete_series(m, start, end)?;
        }
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn clean_tombstones(
    State(st): State<Arc<AppState>>,
) -> Result<Response, ApiError> {
    check_enabled(&st)?;
    blocking(move || st.db.clean_tombstones().map_err(ApiError::from)).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub(crate) async fn snapshot(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    check_enabled(&st)?;
    let p = read_params(req).await?;
    let skip_head = match p.get("skip_head") {
        None => false,
        Some(v) => v.parse::<bool>().map_err(|_| {
            ApiError::bad_data(format!(
                "invalid parameter \"skip_head\": cannot parse \"{v}\" as a boolean"
            ))
        })?,
    };
    let name = blocking(move || st.db.snapshot(!skip_head).map_err(ApiError::from)).await?;
    let body = json::success(|out| {
        out.push_str("{\"name\":");
        json::push_str(out, &name);
        out.push('}');
    });
    Ok(json_response(StatusCode::OK, body))
}
