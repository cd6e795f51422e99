//! `remote_write:` in the configuration file, as Prometheus writes it.

use std::path::Path;

use crate::scrape::relabel::{self, Rule};
use crate::yaml::{Node, PosError};

/// Which message the queue sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `prometheus.WriteRequest` (remote write 1.0).
    V1,
    /// `io.prometheus.write.v2.Request` (remote write 2.0).
    V2,
}

/// `queue_config`, with Prometheus 3's defaults.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct QueueConfig {
    /// Samples buffered per shard.
    pub(crate) capacity: usize,
    pub(crate) min_shards: usize,
    pub(crate) max_shards: usize,
    pub(crate) max_samples_per_send: usize,
    pub(crate) batch_send_deadline_ms: i64,
    pub(crate) min_backoff_ms: i64,
    pub(crate) max_backoff_ms: i64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            capacity: 10_000,
            min_shards: 1,
            max_shards: 50,
            max_samples_per_send: 2_000,
            batch_send_deadline_ms: 5_000,
            min_backoff_ms: 30,
            max_backoff_ms: 5_000,
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct RemoteWriteConfig {
    pub(crate) url: String,
    /// `name`, or one made from the URL: names the queue in metrics and its position file.
    pub(crate) name: String,
    pub(crate) timeout_ms: i64,
    pub(crate) headers: Vec<(String, String)>,
    /// `Authorization` from `basic_auth`, `bearer_token` or `authorization`.
    pub(crate) auth: Option<String>,
    pub(crate) tls: Option<crate::http::Tls>,
    pub(crate) relabel: Vec<Rule>,
    pub(crate) protocol: Protocol,
    pub(crate) queue: QueueConfig,
}

impl PartialEq for RemoteWriteConfig {
    /// Same destination and settings: a reload keeps the running queue.
    fn eq(&self, o: &Self) -> bool {
        self.url == o.url
            && self.name == o.name
            && self.timeout_ms == o.timeout_ms
            && self.headers == o.headers
            && self.auth == o.auth
            && self.tls.is_some() == o.tls.is_some()
            && format!("{:?}", self.relabel) == format!("{:?}", o.relabel)
            && self.protocol == o.protocol
            && self.queue == o.queue
    }
}

/// Fields Prometheus has that change nothing here (strata stores no exemplars, native
/// histograms or metadata in the WAL).
const IGNORED: [&str; 5] = [
    "send_exemplars",
    "send_native_histograms",
    "metadata_config",
    "follow_redirects",
    "enable_http2",
];

/// Reads the `remote_write` list.
pub(crate) fn parse(n: &Node, base: &Path) -> Result<Vec<RemoteWriteConfig>, PosError> {
    let mut out: Vec<RemoteWriteConfig> = Vec::new();
    for c in n.seq("remote_write")? {
        let rw = one(c, base)?;
        if out.iter().any(|o| o.name == rw.name) {
            return Err(c.err(format!(
                "found multiple remote write configs with job name {:?}",
                rw.name
            )));
        }
        out.push(rw);
    }
    Ok(out)
}

fn one(c: &Node, base: &Path) -> Result<RemoteWriteConfig, PosError> {
    let mut allowed = vec![
        "url",
        "name",
        "remote_timeout",
        "headers",
        "basic_auth",
        "bearer_token",
        "authorization",
        "tls_config",
        "write_relabel_configs",
        "protobuf_message",
        "queue_config",
    ];
    allowed.extend(IGNORED);
    let mut url = None;
    let mut name = None;
    let mut rw = RemoteWriteConfig {
        url: String::new(),
        name: String::new(),
        timeout_ms: 30_000,
        headers: Vec::new(),
        auth: None,
        tls: None,
        relabel: Vec::new(),
        protocol: Protocol::V1,
        queue: QueueConfig::default(),
    };
    let mut tls_opts = None;
    for (k, v) in c.fields("remote_write config", &allowed)? {
        match k {
            "url" => url = Some(v.str(k)?.to_string()),
            "name" => name = Some(v.str(k)?.to_string()),
            "remote_timeout" => rw.timeout_ms = v.duration_ms(k)?.max(1),
            "headers" => {
                rw.headers = v.string_map(k)?;
                for (h, _) in &rw.headers {
                    let lower = h.to_ascii_lowercase();
                    if matches!(
                        lower.as_str(),
                        "authorization"
                            | "content-encoding"
                            | "content-length"
                            | "content-type"
                            | "host"
                            | "user-agent"
                            | "x-prometheus-remote-write-version"
                    ) {
                        return Err(v.err(format!("{h} is a reserved header. It must not be changed")));
                    }
                }
            }
            "basic_auth" | "bearer_token" | "authorization" => {
                if rw.auth.is_some() {
                    return Err(v.err("at most one of basic_auth, bearer_token and authorization may be configured"));
                }
                rw.auth = crate::scrape::config::auth_header(k, v)?;
            }
            "tls_config" => tls_opts = Some(crate::scrape::config::tls_options(v, base)?),
            "write_relabel_configs" => rw.relabel = relabel::parse_list(v)?,
            "protobuf_message" => {
                rw.protocol = match v.str(k)? {
                    "prometheus.WriteRequest" => Protocol::V1,
                    "io.prometheus.write.v2.Request" => Protocol::V2,
                    other => {
                        return Err(v.err(format!(
                            "unknown remote write protobuf message {other:?}, supported: prometheus.WriteRequest, io.prometheus.write.v2.Request"
                        )))
                    }
                }
            }
            "queue_config" => rw.queue = queue(v)?,
            _ => {}
        }
    }
    let Some(url) = url.filter(|u| !u.is_empty()) else {
        return Err(c.err("url for remote_write is empty"));
    };
    let parsed = crate::http::Url::parse(&url).map_err(|e| c.err(e.to_string()))?;
    if parsed.tls || tls_opts.is_some() {
        let tls = crate::http::Tls::new(&tls_opts.unwrap_or_default())
            .map_err(|e| c.err(format!("remote_write {url:?}: tls_config: {e}")))?;
        rw.tls = Some(tls);
    }
    rw.name = match name {
        Some(n) if !n.is_empty() => {
            if !n
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || matches!(ch, '-' | '_' | '.'))
            {
                return Err(c.err(format!(
                    "remote_write name {n:?} may only hold letters, digits, '-', '_' and '.'"
                )));
            }
            n
        }
        _ => {
            use md5::Digest;
            let digest = md5::Md5::digest(url.as_bytes());
            digest[..3].iter().map(|b| format!("{b:02x}")).collect()
        }
    };
    rw.url = url;
    Ok(rw)
}

fn queue(n: &Node) -> Result<QueueConfig, PosError> {
    let mut q = QueueConfig::default();
    for (k, v) in n.fields(
        "queue_config",
        &[
            "capacity",
            "min_shards",
            "max_shards",
            "max_samples_per_send",
            "batch_send_deadline",
            "min_backoff",
            "max_backoff",
            "retry_on_http_429",
            "sample_age_limit",
        ],
    )? {
        let count = |v: &Node| -> Result<usize, PosError> {
            let n = v.uint(k)? as usize;
            if n == 0 {
                return Err(v.err(format!("{k} must be at least 1")));
            }
            Ok(n)
        };
        match k {
            "capacity" => q.capacity = count(v)?,
            "min_shards" => q.min_shards = count(v)?,
            "max_shards" => q.max_shards = count(v)?,
            "max_samples_per_send" => q.max_samples_per_send = count(v)?,
            "batch_send_deadline" => q.batch_send_deadline_ms = v.duration_ms(k)?.max(1),
            "min_backoff" => q.min_backoff_ms = v.duration_ms(k)?.max(1),
            "max_backoff" => q.max_backoff_ms = v.duration_ms(k)?.max(1),
            _ => {}
        }
    }
    if q.min_shards > q.max_shards {
        return Err(n.err("min_shards is greater than max_shards"));
    }
    if q.min_backoff_ms > q.max_backoff_ms {
        return Err(n.err("min_backoff is greater than max_backoff"));
    }
    Ok(q)
}
