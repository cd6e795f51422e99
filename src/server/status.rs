//! Status and discovery endpoints Grafana and Prometheus tools call, in Prometheus' shapes:
//! runtime information, flags, configuration, and the rule, alert, target and
//! Alertmanager lists (empty until strata evaluates rules and scrapes targets).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;

use axum::response::IntoResponse;

use super::{json, json_response, read_params, ApiError, AppState};
use crate::rules::RuleFilter;

fn owned(v: Vec<&str>) -> Vec<String> {
    v.into_iter().map(str::to_string).collect()
}

/// `/api/v1/rules` with Prometheus' filters: `type=alert|record`, `rule_name[]`,
/// `rule_group[]`, `file[]`, `exclude_alerts`.
pub(crate) async fn rules(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let params = match read_params(req).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let kind = match params.get("type").map(|s| s.to_ascii_lowercase()) {
        None => None,
        Some(t) if t.is_empty() => None,
        Some(t) if t == "alert" => Some("alert"),
        Some(t) if t == "record" => Some("record"),
        Some(t) => return ApiError::bad_data(format!("unsupported type {t:?}")).into_response(),
    };
    let filter = RuleFilter {
        kind,
        names: owned(params.all("rule_name[]")),
        groups: owned(params.all("rule_group[]")),
        files: owned(params.all("file[]")),
        exclude_alerts: params.get("exclude_alerts").is_some_and(|v| v == "true"),
    };
    let data = st.rules.rules_json(&filter);
    json_ok(&data)
}

pub(crate) async fn alerts(State(st): State<Arc<AppState>>) -> Response {
    let data = st.rules.alerts_json();
    json_ok(&data)
}

/// `/api/v1/hooks`: the configured hooks and their recent runs, newest first.
pub(crate) async fn hooks(State(st): State<Arc<AppState>>) -> Response {
    let data = st.rules.hooks.to_json();
    json_ok(&data)
}

/// `POST /-/reload`: reads the configuration again; when anything in it is invalid the
/// running rules stay and the answer says why.
pub(crate) async fn reload(State(st): State<Arc<AppState>>) -> Response {
    if !st.lifecycle_api {
        return (StatusCode::FORBIDDEN, "Lifecycle API is not enabled.\n").into_response();
    }
    match super::reload_config(&st).await {
        Ok(()) => (StatusCode::OK, "").into_response(),
        Err(e) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("failed to reload config: {e}\n"),
        )
            .into_response(),
    }
}

/// `{"status":"success","data":<data>}`.
fn json_ok(data: &serde_json::Value) -> Response {
    json_response(
        StatusCode::OK,
        json::success(|out| out.push_str(&data.to_string())),
    )
}

/// `/api/v1/targets` with `state=active|dropped|any` and `scrapePool`.
pub(crate) async fn targets(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let params = match read_params(req).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let state = params.get("state").unwrap_or("any").to_ascii_lowercase();
    if !matches!(state.as_str(), "active" | "dropped" | "any" | "") {
        return ApiError::bad_data(format!("invalid state {state:?}")).into_response();
    }
    json_ok(&st.scrape.targets_json(&state, params.get("scrapePool")))
}

/// `/api/v1/targets/metadata` with `match_target`, `metric` and `limit`.
pub(crate) async fn targets_metadata(State(st): State<Arc<AppState>>, req: Request) -> Response {
    let params = match read_params(req).await {
        Ok(p) => p,
        Err(e) => return e.into_response(),
    };
    let matchers = match params.get("match_target").filter(|s| !s.is_empty()) {
        Some(sel) => match strata_query::parse_selector(sel) {
            Ok(m) => m,
            Err(e) => return ApiError::from(e).into_response(),
        },
        None => Vec::new(),
    };
    let limit = match params.get("limit").map(str::parse::<i64>) {
        None => 0,
        Some(Ok(n)) if n >= 0 => n as usize,
        Some(_) => {
            return ApiError::bad_data("limit must be a non-negative number").into_response()
        }
    };
    let matches = |l: &strata_storage::Labels| {
        matchers
            .iter()
            .all(|m| m.matches(l.get(&m.name).unwrap_or("")))
    };
    json_ok(
        &st.scrape
            .targets_metadata(&matches, params.get("metric"), limit),
    )
}

pub(crate) async fn scrape_pools(State(st): State<Arc<AppState>>) -> Response {
    json_ok(&serde_json::json!({ "scrapePools": st.scrape.pools() }))
}

pub(crate) async fn alertmanagers(State(st): State<Arc<AppState>>) -> Response {
    let active: Vec<serde_json::Value> = st
        .rules
        .notifier
        .urls()
        .into_iter()
        .map(|u| serde_json::json!({ "url": u }))
        .collect();
    let data = serde_json::json!({ "activeAlertmanagers": active, "droppedAlertmanagers": [] });
    json_ok(&data)
}

/// The configuration file in force, as written.
pub(crate) async fn config(State(st): State<Arc<AppState>>) -> Response {
    let cfg = st.rules.config();
    let text = if cfg.text.is_empty() {
        "{}\n"
    } else {
        cfg.text.as_str()
    };
    json_response(
        StatusCode::OK,
        json::success(|out| {
            out.push_str("{\"yaml\":");
            json::push_str(out, text);
            out.push('}');
        }),
    )
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
    let threads = strata_storage::cores();
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
