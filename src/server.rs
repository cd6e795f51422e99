//! The HTTP API: Prometheus' query and metadata endpoints, remote write in, health.
//!
//! ```text
//!  POST /api/v1/write ──> body (size-capped) ──> strata-ingest ──> Appender::commit ──> 204
//!  /api/v1/query{,_range}, /series, /labels, /label/<n>/values
//!        ──> Params (query string + form body) ──> strata-query / Querier ──> JSON
//! ```
//!
//! Decoding, evaluation and WAL syncs run on the blocking pool so that a heavy query or a
//! slow disk never stalls the reactor.

mod admin;
pub(crate) mod auth;
mod json;
pub(crate) mod listener;
pub(crate) mod metrics;
mod params;
mod pull;
mod status;
mod ui;
pub(crate) mod wal_sync;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use strata_ingest::IngestError;
use strata_query::{Engine, QueryError, QueryOutput};
use strata_storage::{Db, Labels, Matcher, Unsynced};
use tokio::sync::Semaphore;

use listener::ConnSocket;
use params::Params;

/// Largest form-encoded request body (queries, `match[]` lists).
const MAX_FORM_BYTES: usize = 8 << 20;
/// Time bounds used when a request gives none.
const MIN_TIME: i64 = i64::MIN / 2;
const MAX_TIME: i64 = i64::MAX / 2;

/// What every handler shares.
pub(crate) struct AppState {
    pub(crate) db: Db,
    pub(crate) engine: Engine,
    /// Largest decompressed remote-write body accepted.
    pub(crate) max_write_bytes: usize,
    pub(crate) started: Instant,
    /// Queries evaluating at once; more wait for a slot (`--query.max-concurrency`).
    pub(crate) query_slots: Arc<Semaphore>,
    /// The engine's timeout, the longest a `timeout` parameter may ask for.
    pub(crate) query_timeout: Duration,
    /// Whether `/api/v1/admin/…` answers (`--enable-admin-api`).
    pub(crate) admin_api: bool,
    /// Wall-clock start, for `/api/v1/status/runtimeinfo`.
    pub(crate) started_at: chrono::DateTime<chrono::Utc>,
    /// Every flag and its value, for `/api/v1/status/flags`.
    pub(crate) flags: Vec<(String, String)>,
    /// Metric metadata received with remote write.
    pub(crate) metadata: Arc<strata_ingest::metadata::MetadataStore>,
    /// Request counters for `/metrics`.
    pub(crate) counters: metrics::ServerCounters,
    /// Collectors turned off (`--collector.disable`).
    pub(crate) disabled_collectors: Vec<String>,
    /// Where the host's /proc, cgroup tree and root are (`--path.*`).
    pub(crate) host_paths: strata_exporters::HostPaths,
    /// Rules, alerts, notifications and hooks.
    pub(crate) rules: Arc<crate::rules::Manager>,
    /// Scrape targets and their loops.
    pub(crate) scrape: Arc<crate::scrape::ScrapeManager>,
    /// Forwarding queues (`remote_write`).
    pub(crate) remote_write: Arc<crate::forward::RemoteWrite>,
    /// `--web.config.file` and the TLS configuration in use, when serving HTTPS.
    pub(crate) web_tls: Option<(listener::WebConfig, listener::TlsState)>,
    /// Where the configuration is reloaded from.
    pub(crate) config_file: Option<std::path::PathBuf>,
    /// Whether `POST /-/reload` is allowed (`--web.enable-lifecycle`).
    pub(crate) lifecycle_api: bool,
    /// Per-request limits on remote-write bodies.
    pub(crate) write_limits: strata_ingest::Limits,
    /// Remote-write senders' encoded labels → head series.
    pub(crate) series_cache: strata_ingest::SeriesCache,
    /// Status for writes refused by the series limit (429 by default, or 400).
    pub(crate) series_limit_status: StatusCode,
    /// Credentials per kind of request (`--web.auth-file`), when required.
    pub(crate) auth: Option<Arc<auth::Auth>>,
    /// Where remote writes wait for their WAL sync.
    pub(crate) wal_sync: Arc<wal_sync::WalSync>,
}

pub(crate) fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/write", post(write))
        .route("/api/v1/read", post(pull::read))
        .route("/federate", get(pull::federate))
        .route("/api/v1/query", get(query).post(query))
        .route("/api/v1/query_range", get(query_range).post(query_range))
        .route("/api/v1/series", get(series).post(series))
        .route("/api/v1/labels", get(labels).post(labels))
        .route("/api/v1/label/{name}/values", get(label_values))
        .route("/api/v1/format_query", get(format_query).post(format_query))
        .route(
            "/api/v1/query_exemplars",
            get(query_exemplars).post(query_exemplars),
        )
        .route("/api/v1/status/buildinfo", get(buildinfo))
        .route("/api/v1/status/tsdb", get(admin::tsdb_status))
        .route("/api/v1/status/runtimeinfo", get(status::runtimeinfo))
        .route("/api/v1/status/flags", get(status::flags))
        .route("/api/v1/status/config", get(status::config))
        .route("/api/v1/rules", get(status::rules))
        .route("/api/v1/metadata", get(status::metadata))
        .route("/api/v1/alerts", get(status::alerts))
        .route("/api/v1/targets", get(status::targets))
        .route("/api/v1/targets/metadata", get(status::targets_metadata))
        .route("/api/v1/scrape_pools", get(status::scrape_pools))
        .route("/api/v1/hooks", get(status::hooks))
        .route("/-/reload", post(status::reload).put(status::reload))
        .route("/api/v1/alertmanagers", get(status::alertmanagers))
        .route(
            "/api/v1/admin/tsdb/delete_series",
            post(admin::delete_series).put(admin::delete_series),
        )
        .route(
            "/api/v1/admin/tsdb/clean_tombstones",
            post(admin::clean_tombstones).put(admin::clean_tombstones),
        )
        .route(
            "/api/v1/admin/tsdb/snapshot",
            post(admin::snapshot).put(admin::snapshot),
        )
        .route("/metrics", get(metrics::metrics))
        .route("/", get(ui::index))
        .route("/ui/app.js", get(ui::app_js))
        .route("/ui/style.css", get(ui::style))
        .route("/graph", get(ui::graph))
        .route("/-/healthy", get(|| async { "Strata is Healthy.\n" }))
        .route("/-/ready", get(|| async { "Strata is Ready.\n" }))
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&state),
            auth::check,
        ))
        .with_state(state)
}

/// Reads the configuration file again and applies it; on any error the running rules,
/// Alertmanagers and hooks stay as they are.
pub(crate) async fn reload_config(st: &Arc<AppState>) -> Result<(), String> {
    let Some(path) = st.config_file.clone() else {
        return Err("strata was started without --config.file".into());
    };
    let manager = Arc::clone(&st.rules);
    let scraper = Arc::clone(&st.scrape);
    let remote_write = Arc::clone(&st.remote_write);
    let result = tokio::task::spawn_blocking(move || {
        let loaded = crate::load_config(&path)?;
        scraper.apply(
            loaded.config().scrape_configs.clone(),
            loaded.config().base.clone(),
        );
        remote_write.apply(
            &loaded.config().remote_write,
            &loaded.config().external_labels,
        );
        manager.apply(loaded);
        Ok::<_, String>(manager.groups().len())
    })
    .await
    .map_err(|e| e.to_string())?;
    match result {
        Ok(groups) => {
            tracing::info!(groups, "configuration reloaded");
            Ok(())
        }
        Err(e) => {
            tracing::error!(error = %e, "configuration reload failed; the previous one stays");
            Err(e)
        }
    }
}

/// Reloads the configuration on every SIGHUP.
pub(crate) async fn reload_on_sighup(st: Arc<AppState>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    while hup.recv().await.is_some() {
        if let Some((web, state)) = &st.web_tls {
            match listener::reload_tls(web, state) {
                Ok(()) => tracing::info!(file = %web.path.display(), "TLS certificate reloaded"),
                Err(e) => {
                    tracing::error!(error = %e, "TLS reload failed; the previous certificate stays")
                }
            }
        }
        if st.config_file.is_some() {
            let _ = reload_config(&st).await;
        }
    }
}

/// An API failure with Prometheus' `errorType` and status code.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    error_type: &'static str,
    message: String,
}

impl ApiError {
    pub(crate) fn status_code(&self) -> StatusCode {
        self.status
    }

    pub(crate) fn message(&self) -> &str {
        &self.message
    }

    pub(crate) fn bad_data(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            error_type: "bad_data",
            message: message.into(),
        }
    }

    fn internal(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            error_type: "internal",
            message: message.into(),
        }
    }
}

impl From<QueryError> for ApiError {
    fn from(e: QueryError) -> Self {
        let (status, error_type) = match &e {
            QueryError::BadData(_) => (StatusCode::BAD_REQUEST, "bad_data"),
            QueryError::Unsupported(_) | QueryError::Execution(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "execution")
            }
            QueryError::Timeout(_) => (StatusCode::SERVICE_UNAVAILABLE, "timeout"),
            QueryError::Canceled(_) => (
                StatusCode::from_u16(499).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
                "canceled",
            ),
            QueryError::Storage(se) if se.is_bad_input() => (StatusCode::BAD_REQUEST, "bad_data"),
            QueryError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
        };
        Self {
            status,
            error_type,
            message: e.to_string(),
        }
    }
}

impl From<strata_storage::Error> for ApiError {
    fn from(e: strata_storage::Error) -> Self {
        QueryError::Storage(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = String::with_capacity(64 + self.message.len());
        body.push_str("{\"status\":\"error\",\"errorType\":");
        json::push_str(&mut body, self.error_type);
        body.push_str(",\"error\":");
        json::push_str(&mut body, &self.message);
        body.push('}');
        json_response(self.status, body)
    }
}

fn json_response(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Reads the parameters of a GET, or of a POST with a form-encoded body.
async fn read_params(req: Request) -> Result<Params, ApiError> {
    let query = req.uri().query().map(str::to_owned);
    let is_form = req.method() == Method::POST
        && req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
    if !is_form {
        return Ok(Params::parse(query.as_deref(), None));
    }
    let body = read_body(req.into_body(), MAX_FORM_BYTES).await?;
    Ok(Params::parse(query.as_deref(), Some(&body)))
}

/// Reads a whole body, refusing more than `limit` bytes with 413.
async fn read_body(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => Err(ApiError {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            error_type: "bad_data",
            message: format!("request body is over the limit of {limit} bytes"),
        }),
        Err(e) => Err(ApiError::bad_data(format!("reading request body: {e}"))),
    }
}

/// Ends the task it holds when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Sets `flag` once the client closes its end of the connection on `socket`, from a task
/// of its own: a handler that evaluates on its own thread holds up the connection's task,
/// which would otherwise notice. The socket is watched through a duplicate, registered
/// apart from the connection's own; `None` if that cannot be set up (the query then runs
/// to its end or its timeout).
fn watch_client(socket: ConnSocket, flag: Arc<AtomicBool>) -> Option<AbortOnDrop> {
    // SAFETY: the socket stays open while its request is handled (see `ConnSocket`), and
    // the borrow ends with the duplicate made from it.
    #[allow(unsafe_code)]
    let socket = unsafe { std::os::fd::BorrowedFd::borrow_raw(socket.0) };
    let dup = std::net::TcpStream::from(socket.try_clone_to_owned().ok()?);
    let watched = tokio::net::TcpStream::from_std(dup).ok()?;
    Some(AbortOnDrop(tokio::spawn(async move {
        let mut byte = [0u8; 1];
        loop {
            let Ok(ready) = watched.ready(tokio::io::Interest::READABLE).await else {
                return;
            };
            // Readable: the client's end (a read would give 0 bytes), or bytes of a next
            // request, after which the close is a readiness of its own.
            if ready.is_read_closed() || matches!(watched.peek(&mut byte).await, Ok(0) | Err(_)) {
                flag.store(true, std::sync::atomic::Ordering::Relaxed);
                return;
            }
            let _ = watched.try_io(tokio::io::Interest::READABLE, || {
                Err::<(), _>(std::io::ErrorKind::WouldBlock.into())
            });
        }
    })))
}

/// Runs CPU- or disk-bound work on the blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("worker failed: {e}")))?
}

/// Runs `f`, which blocks for a short while (metadata lookups), on this worker thread:
/// the runtime moves its other tasks to another thread meanwhile, and the request skips
/// the two thread switches a hand-off to the blocking pool costs.
fn blocking_here<T>(f: impl FnOnce() -> Result<T, ApiError>) -> Result<T, ApiError> {
    tokio::task::block_in_place(f)
}

/// A series lookup that selects at most this many series (by the postings, before time
/// ranges) is answered on the worker that read its request, without
/// [`blocking_here`]: a fraction of a millisecond of work, which the hand-off of the
/// worker's other tasks to another thread would lengthen by a good part.
const ANSWER_HERE_SERIES: u64 = 5_000;

/// The query timeout a request asks for, bounded by the server's.
fn timeout_param(st: &AppState, p: &Params) -> Result<Duration, ApiError> {
    match p.get("timeout") {
        None => Ok(st.query_timeout),
        Some(_) => {
            let ms = p.duration("timeout")?;
            Ok(Duration::from_millis(ms.max(0) as u64).min(st.query_timeout))
        }
    }
}

/// A query that loaded this many samples (tens of milliseconds of work) gives the memory
/// it freed back to the system, once queries pause.
const TRIM_AFTER_SAMPLES: u64 = 1_000_000;
/// How long no large query must end before the heap is trimmed: a dashboard's burst of
/// queries reuses what the one before freed instead of faulting it in again.
const TRIM_AFTER_PAUSE: Duration = Duration::from_secs(1);
/// Large queries that end without a pause between them trim every this many, so that a
/// steady stream of them cannot leave the heap untrimmed.
const TRIM_EVERY: u64 = 32;

/// Trims the heap once large queries pause for [`TRIM_AFTER_PAUSE`], or at every
/// [`TRIM_EVERY`]th large query.
fn trim_when_queries_pause() {
    static LARGE_QUERIES: AtomicU64 = AtomicU64::new(0);
    let n = LARGE_QUERIES.fetch_add(1, std::sync::atomic::Ordering::AcqRel) + 1;
    if n.is_multiple_of(TRIM_EVERY) {
        tokio::task::spawn_blocking(give_back_free_memory);
        return;
    }
    tokio::spawn(async move {
        tokio::time::sleep(TRIM_AFTER_PAUSE).await;
        if LARGE_QUERIES.load(std::sync::atomic::Ordering::Acquire) == n {
            tokio::task::spawn_blocking(give_back_free_memory);
        }
    });
}

/// Returns the allocator's free pages to the system. Large queries allocate on several
/// threads and the allocator keeps what they free in per-thread arenas; without this the
/// resident size after each large query grows by what the previous one left scattered.
fn give_back_free_memory() {
    // One trim at a time: queries that end together share it.
    static TRIMMING: AtomicBool = AtomicBool::new(false);
    if TRIMMING.swap(true, std::sync::atomic::Ordering::AcqRel) {
        return;
    }
    let started = Instant::now();
    // SAFETY: malloc_trim takes no pointers and only releases memory the allocator
    // holds unused.
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
    tracing::debug!(
        micros = started.elapsed().as_micros() as u64,
        "trimmed the heap"
    );
    TRIMMING.store(false, std::sync::atomic::Ordering::Release);
}

/// The socket of the connection `req` came on; `None` for a request that did not come
/// through strata's listener.
fn client_socket(req: &Request) -> Option<ConnSocket> {
    req.extensions()
        .get::<axum::extract::ConnectInfo<ConnSocket>>()
        .map(|c| c.0)
}

/// Runs a query on the request's worker thread once a query slot is free, and encodes its
/// answer. The runtime moves the worker's other tasks to another thread meanwhile; a
/// hand-off to the blocking pool and back would cost two thread wake-ups, each of which
/// takes 0.1–0.3 ms when it wakes an idle core. The evaluation stops at its next check
/// when the client on `socket` goes away.
async fn run_query(
    st: Arc<AppState>,
    socket: Option<ConnSocket>,
    with_stats: bool,
    eval: impl FnOnce(&AppState, &AtomicBool) -> Result<QueryOutput, QueryError>,
) -> Result<Response, ApiError> {
    let queued = Instant::now();
    let permit = Arc::clone(&st.query_slots)
        .acquire_owned()
        .await
        .map_err(|_| ApiError::internal("the query queue is closed"))?;
    let queue_time = queued.elapsed();
    let flag = Arc::new(AtomicBool::new(false));
    let _watch = socket.and_then(|s| watch_client(s, Arc::clone(&flag)));
    let body = blocking_here(move || {
        let _permit = permit;
        let started = Instant::now();
        let r = eval(&st, &flag);
        let c = &st.counters;
        c.queries.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        c.query_micros.fetch_add(
            started.elapsed().as_micros() as u64,
            std::sync::atomic::Ordering::Relaxed,
        );
        if r.is_err() {
            c.query_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let r = r?;
        let body = json::success_with(
            |out| {
                json::push_query_value(out, &r.value);
                if with_stats {
                    // Reopen the data object to add the statistics next to the result.
                    out.pop();
                    json::push_stats(out, &r.stats, queue_time);
                    out.push('}');
                }
            },
            &r.annotations.warnings,
            &r.annotations.infos,
        );
        Ok((body, r.stats.samples_loaded))
    })?;
    let (body, loaded) = body;
    if loaded >= TRIM_AFTER_SAMPLES {
        trim_when_queries_pause();
    }
    Ok(json_response(StatusCode::OK, body))
}

async fn query(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let socket = client_socket(&req);
    let p = read_params(req).await?;
    let q = p
        .get("query")
        .ok_or_else(|| ApiError::bad_data("invalid parameter \"query\": no query given"))?
        .to_owned();
    let t = p.time_or("time", now_ms())?;
    let timeout = timeout_param(&st, &p)?;
    let with_stats = p.get("stats").is_some();
    run_query(st, socket, with_stats, move |st, cancel| {
        st.engine
            .instant_query_cancellable(&st.db, &q, t, timeout, cancel)
    })
    .await
}

async fn query_range(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let socket = client_socket(&req);
    let p = read_params(req).await?;
    let q = p
        .get("query")
        .ok_or_else(|| ApiError::bad_data("invalid parameter \"query\": no query given"))?
        .to_owned();
    let start = p.time("start")?;
    let end = p.time("end")?;
    let step = p.duration("step")?;
    let timeout = timeout_param(&st, &p)?;
    let with_stats = p.get("stats").is_some();
    run_query(st, socket, with_stats, move |st, cancel| {
        st.engine
            .range_query_cancellable(&st.db, &q, (start, end, step), timeout, cancel)
    })
    .await
}

async fn format_query(req: Request) -> Result<Response, ApiError> {
    let p = read_params(req).await?;
    let q = p
        .get("query")
        .ok_or_else(|| ApiError::bad_data("invalid parameter \"query\": no query given"))?;
    let expr = strata_query::parse(q)?;
    let body = json::success(|out| json::push_str(out, &expr.prettify()));
    Ok(json_response(StatusCode::OK, body))
}

/// strata keeps no exemplars: a valid request gets an empty list.
async fn query_exemplars(req: Request) -> Result<Response, ApiError> {
    let p = read_params(req).await?;
    let q = p
        .get("query")
        .ok_or_else(|| ApiError::bad_data("invalid parameter \"query\": no query given"))?;
    strata_query::parse(q)?;
    p.time_or("start", MIN_TIME)?;
    p.time_or("end", MAX_TIME)?;
    Ok(json_response(
        StatusCode::OK,
        json::success(|out| out.push_str("[]")),
    ))
}

/// The `match[]` selectors of a request, parsed.
fn selectors(p: &Params) -> Result<Vec<Vec<Matcher>>, ApiError> {
    p.all("match[]")
        .into_iter()
        .map(|s| strata_query::parse_selector(s).map_err(ApiError::from))
        .collect()
}

async fn series(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let p = read_params(req).await?;
    let sets = selectors(&p)?;
    if sets.is_empty() {
        return Err(ApiError::bad_data("no match[] parameter provided"));
    }
    let (start, end) = (p.time_or("start", MIN_TIME)?, p.time_or("end", MAX_TIME)?);
    let limit = p.limit()?;
    let q = st.db.querier(start, end);
    let small = sets
        .iter()
        .try_fold(0u64, |n, m| n.checked_add(q.series_bound(m)))
        .is_some_and(|n| n <= ANSWER_HERE_SERIES);
    let answer = move || {
        let n = if limit > 0 { limit } else { usize::MAX };
        let write = |found: &[&Labels]| {
            json::success(|out| {
                out.push('[');
                for (i, l) in found.iter().take(n).enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    // The label sets lie apart on the heap: loads started a few sets
                    // ahead overlap.
                    if let Some(ahead) = found.get(i + 4) {
                        ahead.prefetch();
                    }
                    json::push_labels(out, l);
                }
                out.push(']');
            })
        };
        if let [m] = &sets[..] {
            // Written straight from the head's and the blocks' label sets.
            return Ok(q.with_series_labels(m, write)?);
        }
        // Each set's labels come sorted and unique; several sets are merged.
        let mut found: Vec<Labels> = Vec::new();
        for m in &sets {
            found.extend(q.series_labels(m)?);
        }
        found.sort_unstable();
        found.dedup();
        let refs: Vec<&Labels> = found.iter().collect();
        Ok(write(&refs))
    };
    let body = if small {
        answer()?
    } else {
        blocking_here(answer)?
    };
    Ok(json_response(StatusCode::OK, body))
}

async fn labels(State(st): State<Arc<AppState>>, req: Request) -> Result<Response, ApiError> {
    let p = read_params(req).await?;
    names_or_values(st, p, None).await
}

async fn label_values(
    State(st): State<Arc<AppState>>,
    Path(name): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    // Names outside the classic character set come `U__`-escaped (Prometheus 3, and
    // Grafana's metric browser); strata stores classic names only, so any other name has
    // no values.
    let name = unescape_label_name(&name);
    if name.is_empty() || name.contains('\0') {
        return Err(ApiError::bad_data(format!("invalid label name: {name:?}")));
    }
    let p = read_params(req).await?;
    names_or_values(st, p, Some(name)).await
}

/// Decodes Prometheus' `U__` escaping of a label name: after the prefix, `__` is `_` and
/// `_<hex>_` is the character with that code point. A name that is not validly escaped
/// is taken as it is.
fn unescape_label_name(name: &str) -> String {
    let Some(rest) = name.strip_prefix("U__") else {
        return name.to_string();
    };
    let mut out = String::with_capacity(rest.len());
    let mut chars = rest.chars();
    while let Some(c) = chars.next() {
        if c != '_' {
            out.push(c);
            continue;
        }
        let mut hex = String::new();
        let mut closed = false;
        for h in chars.by_ref() {
            if h == '_' {
                closed = true;
                break;
            }
            hex.push(h);
        }
        if !closed {
            return name.to_string();
        }
        if hex.is_empty() {
            out.push('_');
            continue;
        }
        match u32::from_str_radix(&hex, 16).ok().and_then(char::from_u32) {
            Some(ch) => out.push(ch),
            None => return name.to_string(),
        }
    }
    out
}

/// `/labels` (when `name` is `None`) and `/label/<name>/values`.
async fn names_or_values(
    st: Arc<AppState>,
    p: Params,
    name: Option<String>,
) -> Result<Response, ApiError> {
    let sets = selectors(&p)?;
    let (start, end) = (p.time_or("start", MIN_TIME)?, p.time_or("end", MAX_TIME)?);
    let limit = p.limit()?;
    let body = blocking(move || {
        let q = st.db.querier(start, end);
        let lookup = |m: &[Matcher]| match &name {
            None => q.label_names(m),
            Some(n) => q.label_values(n, m),
        };
        let mut found: BTreeSet<String> = BTreeSet::new();
        if sets.is_empty() {
            found.extend(lookup(&[])?);
        }
        for m in &sets {
            found.extend(lookup(m)?);
        }
        let n = if limit > 0 { limit } else { usize::MAX };
        Ok(json::success(|out| {
            json::push_string_array(out, found.iter().take(n).map(String::as_str))
        }))
    })
    .await?;
    Ok(json_response(StatusCode::OK, body))
}

async fn buildinfo(State(st): State<Arc<AppState>>) -> Response {
    let uptime = st.started.elapsed().as_secs();
    let body = json::success(|out| {
        out.push_str("{\"version\":\"3.0.0\",\"revision\":");
        json::push_str(out, concat!("strata-", env!("CARGO_PKG_VERSION")));
        out.push_str(",\"branch\":\"\",\"buildUser\":\"\",\"buildDate\":\"\",\"goVersion\":");
        json::push_str(
            out,
            &format!("strata {} (uptime {uptime}s)", env!("CARGO_PKG_VERSION")),
        );
        out.push('}');
    });
    json_response(StatusCode::OK, body)
}

/// Cuts blocks from the head when it spans enough, on the blocking pool.
pub(crate) fn compact_in_background(db: &Db) {
    if !db.needs_compaction() {
        return;
    }
    maintain_in_background(db);
}

fn maintain_in_background(db: &Db) {
    let db = db.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = db.maintain() {
            tracing::error!(error = %e, "storage maintenance failed; the data stays where it was");
        }
    });
}

/// Every `every`: cuts blocks, merges them and applies retention.
pub(crate) async fn compact_periodically(db: Db, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        maintain_in_background(&db);
    }
}

/// Compressed remote-write bodies up to this size are stored on the worker that read
/// them (about 10,000 samples of exporter data; senders batch 2,000 by default).
const INLINE_WRITE_BYTES: usize = 256 << 10;

/// Decodes a remote-write body and commits its samples without waiting for the WAL
/// sync; the number of series and samples written, and what must be synced before the
/// write is acknowledged ([`wal_sync::WalSync::durable`]).
fn store_write(
    st: &AppState,
    bytes: &[u8],
    v2: bool,
) -> Result<(usize, usize, Unsynced), IngestError> {
    let req = if v2 {
        strata_ingest::decode_write_request_v2(bytes, st.max_write_bytes)?
    } else {
        strata_ingest::decode_write_request(bytes, st.max_write_bytes)?
    };
    let mut app = st.db.appender();
    let stats = strata_ingest::write_to_store(&req, &mut app, &st.series_cache, &st.write_limits)?;
    let (_, unsynced) = app.commit_unsynced()?;
    st.metadata.record(req.metadata());
    Ok((stats.series, stats.samples, unsynced))
}

/// Remote write 1.0. 204 only once every sample is in the WAL, synced.
async fn write(State(st): State<Arc<AppState>>, headers: HeaderMap, body: Body) -> Response {
    let st_counters = &st.counters;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    // Remote write 2.0 names its message in the content type; 1.0 names its own or
    // nothing.
    let v2 = content_type.contains("io.prometheus.write.v2.Request");
    if content_type.contains("proto=") && !v2 && !content_type.contains("prometheus.WriteRequest") {
        st_counters
            .write_requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        st_counters
            .write_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return (
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "unknown remote-write message {content_type:?}: send prometheus.WriteRequest or io.prometheus.write.v2.Request\n"
            ),
        )
            .into_response();
    }
    let limit = strata_ingest::max_compressed_len(st.max_write_bytes);
    let db = st.db.clone();
    let bytes = match read_body(body, limit).await {
        Ok(b) => b,
        Err(e) => {
            st_counters
                .write_requests
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            st_counters
                .write_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return (e.status, format!("{}\n", e.message)).into_response();
        }
    };
    // A request of the usual size is decoded and committed on the worker that read it.
    // A sender keeps a few requests in flight and waits for each answer, so ingest is
    // bound by the latency of one request, and handing it to the blocking pool and back
    // (two context switches and their scheduling delays) cost more than the work: 3.1-3.9 M
    // samples/s through the pool, 5.7-6.1 M inline (100 hosts, 4 connections, 2 cores).
    // Larger bodies, whose decoding alone takes milliseconds, go to the blocking pool.
    // Either way the answer waits for the WAL's fdatasync on the sync thread, and the
    // worker serves other requests meanwhile.
    let result = if bytes.len() <= INLINE_WRITE_BYTES {
        store_write(&st, &bytes, v2)
    } else {
        let worker = Arc::clone(&st);
        match tokio::task::spawn_blocking(move || store_write(&worker, &bytes, v2)).await {
            Ok(r) => r,
            Err(e) => {
                for c in [&st_counters.write_requests, &st_counters.write_failures] {
                    c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
                return (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("worker failed: {e}\n"),
                )
                    .into_response();
            }
        }
    };
    let result = match result {
        Ok((series, samples, unsynced)) => st
            .wal_sync
            .durable(unsynced)
            .await
            .map(|()| (series, samples))
            .map_err(IngestError::Storage),
        Err(e) => Err(e),
    };
    st_counters
        .write_requests
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if result.is_err() {
        st_counters
            .write_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    match result {
        Ok((series, samples)) => {
            st_counters
                .write_samples
                .fetch_add(samples as u64, std::sync::atomic::Ordering::Relaxed);
            tracing::trace!(series, samples, "remote write stored");
            compact_in_background(&db);
            let written = [
                (
                    "x-prometheus-remote-write-samples-written",
                    samples.to_string(),
                ),
                (
                    "x-prometheus-remote-write-histograms-written",
                    "0".to_string(),
                ),
                (
                    "x-prometheus-remote-write-exemplars-written",
                    "0".to_string(),
                ),
            ];
            let mut r = StatusCode::NO_CONTENT.into_response();
            for (k, v) in written {
                if let Ok(v) = axum::http::HeaderValue::from_str(&v) {
                    r.headers_mut().insert(k, v);
                }
            }
            r
        }
        Err(e) => {
            let reason = match &e {
                IngestError::Limit { reason, .. } => Some(*reason),
                IngestError::Storage(strata_storage::Error::SeriesLimit { .. }) => Some("series"),
                IngestError::Storage(strata_storage::Error::SeriesPerMetricLimit { .. }) => {
                    Some("series_per_metric")
                }
                _ => None,
            };
            if let Some(r) = reason {
                st_counters.refused(r);
            }
            let status = if matches!(reason, Some("series" | "series_per_metric")) {
                st.series_limit_status
            } else {
                StatusCode::from_u16(e.status_code()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            };
            if status.is_server_error() {
                tracing::error!(error = %e, "remote write failed");
            } else {
                tracing::debug!(error = %e, "remote write refused");
            }
            (status, format!("{e}\n")).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::unescape_label_name as u;

    #[test]
    fn u_escaped_label_names() {
        assert_eq!(u("job"), "job");
        assert_eq!(u("U__job"), "job");
        assert_eq!(u("U__a__b"), "a_b");
        assert_eq!(u("U__http_2e_status"), "http.status");
        assert_eq!(u("U___1f600_"), "\u{1f600}");
        assert_eq!(u("U__bad_zz_"), "U__bad_zz_");
        assert_eq!(u("U__open_2e"), "U__open_2e");
    }
}
