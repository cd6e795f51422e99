//! Status and discovery endpoints Grafana and Prometheus tools call, in Prometheus' shapes:
//! runtime information, flags, configuration, and the rule, alert, target and
//! Alertmanager lists (empty until strata evaluates rules and scrapes targets).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use super::{json, json_response, read_params, ApiError, AppState};

/// A fixed answer: `{"status":"success","data":<data>}`.
fn fixed(data: &'static str) -> Response {
    json_response(StatusCode::OK, json::success(|out| out.push_str(data)))
}

pub(crate) async fn rules() -> Response {
    fixed(r#"{"groups":[]}"#)
}

pub(crate) async fn alerts() -> Response {
    fixed(r#"{"alerts":[]}"#)
}

pub(crate) async fn targets() -> Response {
    fixed(r#"{"activeTargets":[],"droppedTargets":[],"droppedTargetCounts":{}}"#)
}

pub(crate) async fn targets_metadata() -> Response {
    fixed("[]")
}

pub(crate) async fn scrape_pools() -> Response {
    fixed(r#"{"scrapePools":[]}"#)
}

pub(crate) async fn alertmanagers() -> Response {
    fixed(r#"{"activeAlertmanagers":[],"droppedAlertmanagers":[]}"#)
}

/// strata reads no configuration file yet: the loaded configuration is empty.
pub(crate) async fn config() -> Response {
    fixed(r#"{"yaml":"{}\n"}"#)
}

pub(crate) async fn flags(State(st): State<Arc<AppState>>) -> Response {
    let body = json::success(|out| {
        out.push('{');
        for (i, (k, v)) in st.flags.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            json::push_str(out, k);
            out.push(':');
            json::push_str(out, v);
        }
        out.push('}');
    });
    json_response(StatusCode::OK, body)
}

pub(crate) async fn runtimeinfo(State(st): State<Arc<AppState>>) -> Response {
    let started = st
        .started_at
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let cwd = std::env::current_dir()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let retention = st
        .flags
        .iter()
        .find(|(k, _)| k == "retention.time")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let body = json::success(|out| {
        out.push_str("{\"startTime\":");
        json::push_str(out, &started);
        out.push_str(",\"CWD\":");
        json::push_str(out, &cwd);
        out.push_str(",\"reloadConfigSuccess\":true,\"lastConfigTime\":");
        json::push_str(out, &started);
        out.push_str(",\"corruptionCount\":");
        out.push_str(&st.db.corrupt_blocks().to_string());
        out.push_str(",\"goroutineCount\":0,\"GOMAXPROCS\":");
        out.push_str(&threads.to_string());
        out.push_str(",\"GOMEMLIMIT\":0,\"GOGC\":\"\",\"GODEBUG\":\"\",\"storageRetention\":");
        json::push_str(out, &retention);
        out.push('}');
    });
    json_response(StatusCode::OK, body)
}

/// `/api/v1/metadata?metric=&limit=&limit_per_metric=`: `{family: [{type, help, unit}]}`.
pub(crate) async fn metadata(
    State(st): State<Arc<AppState>>,
    req: Request,
) -> Result<Response, ApiError> {
    let p = read_params(req).await?;
    let number = |name: &str| -> Result<usize, ApiError> {
        match p.get(name) {
            None => Ok(0),
            Some(raw) => raw.parse::<i64>().map(|n| n.max(0) as usize).map_err(|_| {
                ApiError::bad_data(format!(
                    "invalid parameter \"{name}\": cannot parse \"{raw}\""
                ))
            }),
        }
    };
    let (limit, per_metric) = (number("limit")?, number("limit_per_metric")?);
    let list = st.metadata.list(p.get("metric"), limit, per_metric);
    let body = json::success(|out| {
        out.push('{');
        let mut last: Option<&str> = None;
        for m in &list {
            if last != Some(m.family.as_str()) {
                if last.is_some() {
                    out.push_str("],");
                }
                json::push_str(out, &m.family);
                out.push_str(":[");
            } else {
                out.push(',');
            }
            out.push_str("{\"type\":");
            json::push_str(out, m.kind.as_str());
            out.push_str(",\"help\":");
            json::push_str(out, &m.help);
            out.push_str(",\"unit\":");
            json::push_str(out, &m.unit);
            out.push('}');
            last = Some(m.family.as_str());
        }
        if last.is_some() {
            out.push(']');
        }
        out.push('}');
    });
    Ok(json_response(StatusCode::OK, body))
}
