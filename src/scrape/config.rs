//! `scrape_configs`: the subset of Prometheus' scrape configuration strata acts on.

use std::collections::BTreeSet;

use super::relabel::{self, Rule};
use crate::yaml::{Node, PosError};

#[derive(Debug, Clone)]
pub(crate) struct ScrapeConfig {
    pub(crate) job_name: String,
    pub(crate) interval_ms: i64,
    pub(crate) timeout_ms: i64,
    pub(crate) metrics_path: String,
    /// URL parameters; the first value of each also becomes `__param_<name>`.
    pub(crate) params: Vec<(String, Vec<String>)>,
    pub(crate) scheme: String,
    pub(crate) honor_labels: bool,
    pub(crate) honor_timestamps: bool,
    /// `Authorization` from `basic_auth`, `bearer_token` or `authorization`.
    pub(crate) auth: Option<String>,
    pub(crate) static_configs: Vec<TargetGroup>,
    pub(crate) file_sd: Vec<FileSd>,
    pub(crate) relabel: Vec<Rule>,
    pub(crate) metric_relabel: Vec<Rule>,
    /// Most samples a scrape may yield after metric relabeling (0: no limit).
    pub(crate) sample_limit: usize,
    /// Most labels a sample may carry (0: no limit).
    pub(crate) label_limit: usize,
    /// `tls_config`, for `https` targets.
    pub(crate) tls: Option<crate::http::Tls>,
}

/// Targets and the labels they share.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TargetGroup {
    pub(crate) targets: Vec<String>,
    pub(crate) labels: Vec<(String, String)>,
}

#[derive(Debug, Clone)]
pub(crate) struct FileSd {
    pub(crate) files: Vec<String>,
    pub(crate) refresh_ms: i64,
}

/// Parses `scrape_configs` with the global defaults.
pub(crate) fn parse(
    n: &Node,
    global_interval_ms: i64,
    global_timeout_ms: i64,
    base: &std::path::Path,
) -> Result<Vec<ScrapeConfig>, PosError> {
    let mut out: Vec<ScrapeConfig> = Vec::new();
    let mut names = BTreeSet::new();
    for c in n.seq("scrape_configs")? {
        let sc = one(c, global_interval_ms, global_timeout_ms, base)?;
        if !names.insert(sc.job_name.clone()) {
            return Err(c.err(format!(
                "found multiple scrape configs with job name {:?}",
                sc.job_name
            )));
        }
        out.push(sc);
    }
    Ok(out)
}

fn one(
    c: &Node,
    global_interval_ms: i64,
    global_timeout_ms: i64,
    base: &std::path::Path,
) -> Result<ScrapeConfig, PosError> {
    let mut sc = ScrapeConfig {
        job_name: String::new(),
        interval_ms: global_interval_ms,
        timeout_ms: 0,
        metrics_path: "/metrics".into(),
        params: Vec::new(),
        scheme: "http".into(),
        honor_labels: false,
        honor_timestamps: true,
        auth: None,
        static_configs: Vec::new(),
        file_sd: Vec::new(),
        relabel: Vec::new(),
        metric_relabel: Vec::new(),
        sample_limit: 0,
        label_limit: 0,
        tls: None,
    };
    let mut tls_opts = crate::http::TlsOptions::default();
    let mut timeout = None;
    for (k, v) in c.fields(
        "scrape config",
        &[
            "job_name",
            "scrape_interval",
            "scrape_timeout",
            "metrics_path",
            "params",
            "scheme",
            "honor_labels",
            "honor_timestamps",
            "basic_auth",
            "bearer_token",
            "authorization",
            "static_configs",
            "file_sd_configs",
            "relabel_configs",
            "metric_relabel_configs",
            "sample_limit",
            "label_limit",
            "follow_redirects",
            "enable_http2",
            "tls_config",
        ],
    )? {
        match k {
            "job_name" => sc.job_name = v.str(k)?.to_string(),
            "scrape_interval" => {
                sc.interval_ms = v.duration_ms(k)?;
                if sc.interval_ms <= 0 {
                    return Err(v.err("scrape_interval must be greater than zero"));
                }
            }
            "scrape_timeout" => timeout = Some(v.duration_ms(k)?),
            "metrics_path" => sc.metrics_path = v.str(k)?.to_string(),
            "params" => {
                for (pk, pv) in v.map(k)? {
                    sc.params
                        .push((pk.str("a key")?.to_string(), pv.strings("params")?));
                }
            }
            "scheme" => sc.scheme = v.str(k)?.to_string(),
            "honor_labels" => sc.honor_labels = bool_of(v, k)?,
            "honor_timestamps" => sc.honor_timestamps = bool_of(v, k)?,
            "bearer_token" | "authorization" | "basic_auth" => sc.auth = auth_header(k, v)?,
            "static_configs" => {
                for g in v.seq(k)? {
                    sc.static_configs.push(target_group(g)?);
                }
            }
            "file_sd_configs" => {
                for f in v.seq(k)? {
                    let mut sd = FileSd {
                        files: Vec::new(),
                        refresh_ms: 5 * 60_000,
                    };
                    for (fk, fv) in f.fields("file_sd config", &["files", "refresh_interval"])? {
                        if fk == "files" {
                            sd.files = fv.strings(fk)?;
                        } else {
                            sd.refresh_ms = fv.duration_ms(fk)?.max(1000);
                        }
                    }
                    sd.files.retain(|f| !f.is_empty());
                    if sd.files.is_empty() {
                        return Err(f.err("file_sd_configs needs at least one file"));
                    }
                    sc.file_sd.push(sd);
                }
            }
            "relabel_configs" => sc.relabel = relabel::parse_list(v)?,
            "metric_relabel_configs" => sc.metric_relabel = relabel::parse_list(v)?,
            "tls_config" => tls_opts = tls_options(v, base)?,
            "sample_limit" => sc.sample_limit = v.uint(k)? as usize,
            "label_limit" => sc.label_limit = v.uint(k)? as usize,
            _ => {}
        }
    }
    if sc.job_name.is_empty() {
        return Err(c.err("job_name is empty"));
    }
    match sc.scheme.as_str() {
        "http" => {}
        "https" => {
            let tls = crate::http::Tls::new(&tls_opts)
                .map_err(|e| c.err(format!("job {:?}: tls_config: {e}", sc.job_name)))?;
            sc.tls = Some(tls);
        }
        other => {
            return Err(c.err(format!(
                "job {:?}: scheme {other:?} is not http or https",
                sc.job_name
            )))
        }
    }
    sc.timeout_ms = match timeout {
        Some(t) if t > sc.interval_ms => {
            return Err(c.err(format!(
                "scrape timeout greater than scrape interval for scrape config with job name {:?}",
                sc.job_name
            )))
        }
        Some(t) if t > 0 => t,
        _ => global_timeout_ms.min(sc.interval_ms),
    };
    Ok(sc)
}

/// The `Authorization` header of a `bearer_token`, `authorization` or `basic_auth` field
/// (`k`), as Prometheus sends it.
pub(crate) fn auth_header(k: &str, v: &Node) -> Result<Option<String>, PosError> {
    Ok(Some(match k {
        "bearer_token" => format!("Bearer {}", v.str(k)?),
        "authorization" => {
            let mut typ = "Bearer".to_string();
            let mut cred = String::new();
            for (ak, av) in v.fields("authorization", &["type", "credentials"])? {
                if ak == "type" {
                    typ = av.str(ak)?.to_string();
                } else {
                    cred = av.str(ak)?.to_string();
                }
            }
            format!("{typ} {cred}")
        }
        "basic_auth" => {
            let mut user = String::new();
            let mut pass = String::new();
            for (bk, bv) in v.fields("basic_auth", &["username", "password"])? {
                if bk == "username" {
                    user = bv.str(bk)?.to_string();
                } else {
                    pass = bv.str(bk)?.to_string();
                }
            }
            format!(
                "Basic {}",
                crate::config::base64(format!("{user}:{pass}").as_bytes())
            )
        }
        _ => return Ok(None),
    }))
}

/// Prometheus' `tls_config`: `ca_file`, `cert_file`, `key_file`, `server_name`,
/// `insecure_skip_verify`.
/// Relative file names are taken from `base`, the configuration file's directory.
pub(crate) fn tls_options(
    v: &Node,
    base: &std::path::Path,
) -> Result<crate::http::TlsOptions, PosError> {
    let mut o = crate::http::TlsOptions::default();
    for (k, n) in v.fields(
        "tls_config",
        &[
            "ca_file",
            "cert_file",
            "key_file",
            "server_name",
            "insecure_skip_verify",
            "min_version",
        ],
    )? {
        let path = || n.str(k).map(|s| Some(base.join(s)));
        match k {
            "ca_file" => o.ca_file = path()?,
            "cert_file" => o.cert_file = path()?,
            "key_file" => o.key_file = path()?,
            "server_name" => o.server_name = Some(n.str(k)?.to_string()),
            "insecure_skip_verify" => o.insecure_skip_verify = bool_of(n, k)?,
            _ => {}
        }
    }
    Ok(o)
}

fn bool_of(v: &Node, what: &str) -> Result<bool, PosError> {
    match v.str(what)? {
        "true" | "True" | "TRUE" => Ok(true),
        "false" | "False" | "FALSE" => Ok(false),
        s => Err(v.err(format!("{what}: {s:?} is not a boolean"))),
    }
}

/// `{targets: [...], labels: {...}}`, from a static config or a file_sd file.
pub(crate) fn target_group(g: &Node) -> Result<TargetGroup, PosError> {
    let mut tg = TargetGroup {
        targets: Vec::new(),
        labels: Vec::new(),
    };
    for (k, v) in g.fields("target group", &["targets", "labels"])? {
        if k == "targets" {
            tg.targets = v.strings(k)?;
        } else {
            tg.labels = v.string_map(k)?;
            for (name, _) in &tg.labels {
                if !strata_ingest::remote_write::is_valid_label_name(name) {
                    return Err(v.err(format!("{name:?} is not a valid label name")));
                }
            }
        }
    }
    Ok(tg)
}
