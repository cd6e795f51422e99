//! The configuration file (`--config.file`), in Prometheus' layout where the two overlap:
//!
//! ```yaml
//! scrape_configs: [{job_name: node, static_configs: [{targets: ["10.0.0.5:9100"]}]}]
//! global:
//!   evaluation_interval: 1m
//!   external_labels: {cluster: eu1}
//! rule_files: [rules/*.yml]
//! alerting:
//!   alertmanagers:
//!     - static_configs: [{targets: ["127.0.0.1:9093"]}]
//! hooks:
//!   - name: restart-web
//!     match: {alertname: ContainerDown}
//!     on: [firing]
//!     exec: {command: [ansible-playbook, restart.yml, -e, "target={{ $labels.instance }}"], timeout: 2m}
//!     cooldown: 10m
//! ```
//!
//! Every field is checked at load and an unknown one is refused with its line, so a typo
//! never silently turns a feature off. Sections of a Prometheus configuration that strata
//! does not act on (`remote_read`, `storage`, …) are accepted and reported as
//! warnings.

use std::path::{Path, PathBuf};

use strata_storage::Matcher;

use crate::rules::template::Template;
use crate::yaml::{self, Node, PosError};

#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// The file's own text, for `/api/v1/status/config`.
    pub(crate) text: String,
    /// Directory relative paths are taken from.
    pub(crate) base: PathBuf,
    pub(crate) evaluation_interval_ms: i64,
    pub(crate) external_labels: Vec<(String, String)>,
    pub(crate) rule_files: Vec<String>,
    pub(crate) alertmanagers: Vec<AlertmanagerConfig>,
    pub(crate) hooks: Vec<HookConfig>,
    pub(crate) scrape_configs: Vec<crate::scrape::config::ScrapeConfig>,
    pub(crate) remote_write: Vec<crate::forward::config::RemoteWriteConfig>,
    /// Sections read but not acted on.
    pub(crate) warnings: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            text: String::new(),
            base: PathBuf::from("."),
            evaluation_interval_ms: 60_000,
            external_labels: Vec::new(),
            rule_files: Vec::new(),
            alertmanagers: Vec::new(),
            hooks: Vec::new(),
            scrape_configs: Vec::new(),
            remote_write: Vec::new(),
            warnings: Vec::new(),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct AlertmanagerConfig {
    /// `http://host:port/prefix/api/v2/alerts` for each target.
    pub(crate) urls: Vec<String>,
    pub(crate) timeout_ms: i64,
    pub(crate) headers: Vec<(String, String)>,
    /// `tls_config`, for `https` Alertmanagers.
    pub(crate) tls: Option<crate::http::Tls>,
}

#[derive(Debug, Clone)]
pub(crate) struct HookConfig {
    pub(crate) name: String,
    pub(crate) matchers: Vec<Matcher>,
    pub(crate) on_firing: bool,
    pub(crate) on_resolved: bool,
    pub(crate) action: HookAction,
    pub(crate) cooldown_ms: i64,
    pub(crate) max_concurrent: usize,
}

#[derive(Debug, Clone)]
pub(crate) enum HookAction {
    Exec {
        /// Each argument is a template, expanded as a whole argument.
        command: Vec<Template>,
        /// The arguments as written, for the API.
        argv: Vec<String>,
        /// Working directory: `dir`, relative to the configuration file's directory, or
        /// that directory itself.
        dir: Option<PathBuf>,
        env: Vec<(String, String)>,
        timeout_ms: i64,
    },
    Webhook {
        url: String,
        headers: Vec<(String, String)>,
        bearer_token: Option<String>,
        timeout_ms: i64,
        retries: u32,
    },
}

/// Prometheus sections accepted and not acted on.
const PROMETHEUS_ONLY: [&str; 4] = ["scrape_config_files", "remote_read", "storage", "tracing"];

impl Config {
    /// Reads and checks a configuration file.
    pub(crate) fn load(path: &Path) -> Result<Config, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Config::parse(&text, base).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub(crate) fn parse(text: &str, base: PathBuf) -> Result<Config, PosError> {
        let root = yaml::parse(text)?;
        let mut cfg = Config {
            text: text.to_string(),
            base,
            ..Config::default()
        };
        let mut allowed = vec![
            "global",
            "rule_files",
            "alerting",
            "hooks",
            "scrape_configs",
            "remote_write",
        ];
        allowed.extend(PROMETHEUS_ONLY);
        let fields = root.fields("config", &allowed)?;
        // Global defaults first: scrape configs inherit them wherever they are written.
        let mut scrape_interval_ms = 60_000;
        let mut scrape_timeout_ms = 10_000;
        for (k, v) in &fields {
            if *k == "global" {
                (scrape_interval_ms, scrape_timeout_ms) = cfg.global(v)?;
            }
        }
        for (k, v) in fields {
            match k {
                "global" => {}
                "scrape_configs" => {
                    cfg.scrape_configs = crate::scrape::config::parse(
                        v,
                        scrape_interval_ms,
                        scrape_timeout_ms,
                        &cfg.base,
                    )?;
                }
                "rule_files" => cfg.rule_files = v.strings("rule_files")?,
                "remote_write" if !v.is_null() => {
                    cfg.remote_write = crate::forward::config::parse(v, &cfg.base)?;
                }
                "alerting" => cfg.alerting(v)?,
                "hooks" => {
                    for h in v.seq("hooks")? {
                        let mut hook = hook(h)?;
                        // Commands run in the configuration's directory unless told
                        // otherwise; a relative `dir` is taken from there too.
                        if let HookAction::Exec { dir, .. } = &mut hook.action {
                            *dir = Some(match dir.take() {
                                Some(d) if d.is_relative() => cfg.base.join(d),
                                Some(d) => d,
                                None => cfg.base.clone(),
                            });
                        }
                        if cfg.hooks.iter().any(|x| x.name == hook.name) {
                            return Err(h.err(format!("hook name {:?} is repeated", hook.name)));
                        }
                        cfg.hooks.push(hook);
                    }
                }
                other => {
                    if !v.is_null() {
                        cfg.warnings.push(format!(
                            "{other} (line {}) is not used by strata and was ignored",
                            v.line
                        ));
                    }
                }
            }
        }
        Ok(cfg)
    }

    /// Reads `global`; returns the scrape interval and timeout defaults.
    fn global(&mut self, v: &Node) -> Result<(i64, i64), PosError> {
        let mut scrape = (60_000, 10_000);
        let mut timeout = None;
        let fields = v.fields(
            "global",
            &[
                "evaluation_interval",
                "external_labels",
                "scrape_interval",
                "scrape_timeout",
                "query_log_file",
            ],
        )?;
        for (k, v) in fields {
            match k {
                "evaluation_interval" => {
                    let ms = v.duration_ms(k)?;
                    if ms <= 0 {
                        return Err(v.err("evaluation_interval must be greater than zero"));
                    }
                    self.evaluation_interval_ms = ms;
                }
                "external_labels" => {
                    self.external_labels = v.string_map(k)?;
                    for (name, _) in &self.external_labels {
                        if !strata_ingest::remote_write::is_valid_label_name(name) {
                            return Err(v.err(format!("{name:?} is not a valid label name")));
                        }
                    }
                    self.external_labels.sort();
                }
                "scrape_interval" => {
                    scrape.0 = v.duration_ms(k)?;
                    if scrape.0 <= 0 {
                        return Err(v.err("scrape_interval must be greater than zero"));
                    }
                }
                "scrape_timeout" => timeout = Some(v.duration_ms(k)?.max(1)),
                _ => {}
            }
        }
        // As in Prometheus: an unset timeout is 10s, or the interval when that is shorter.
        match timeout {
            Some(t) if t > scrape.0 => {
                return Err(v.err("global scrape timeout greater than scrape interval"))
            }
            Some(t) => scrape.1 = t,
            None => scrape.1 = scrape.1.min(scrape.0),
        }
        Ok(scrape)
    }

    fn alerting(&mut self, v: &Node) -> Result<(), PosError> {
        for (k, v) in v.fields("alerting", &["alertmanagers", "alert_relabel_configs"])? {
            if k == "alert_relabel_configs" {
                if !v.seq(k)?.is_empty() {
                    return Err(v.err("alert_relabel_configs is not supported"));
                }
                continue;
            }
            for am in v.seq(k)? {
                self.alertmanagers.push(alertmanager(am, &self.base)?);
            }
        }
        Ok(())
    }
}

fn alertmanager(v: &Node, base: &Path) -> Result<AlertmanagerConfig, PosError> {
    let mut scheme = "http".to_string();
    let mut tls_opts = crate::http::TlsOptions::default();
    let mut prefix = String::new();
    let mut api = "v2".to_string();
    let mut targets = Vec::new();
    let mut timeout_ms = 10_000;
    let mut headers = Vec::new();
    let fields = v.fields(
        "alertmanager config",
        &[
            "static_configs",
            "scheme",
            "path_prefix",
            "timeout",
            "api_version",
            "basic_auth",
            "authorization",
            "bearer_token",
            "follow_redirects",
            "enable_http2",
            "tls_config",
        ],
    )?;
    for (k, n) in fields {
        match k {
            "tls_config" => tls_opts = crate::scrape::config::tls_options(n, base)?,
            "static_configs" => {
                for sc in n.seq(k)? {
                    for (sk, sv) in sc.fields("static config", &["targets", "labels"])? {
                        if sk == "targets" {
                            targets.extend(sv.strings("targets")?);
                        }
                    }
                }
            }
            "scheme" => scheme = n.str(k)?.to_string(),
            "path_prefix" => prefix = n.str(k)?.trim_end_matches('/').to_string(),
            "timeout" => timeout_ms = n.duration_ms(k)?.max(1),
            "api_version" => api = n.str(k)?.to_string(),
            "bearer_token" => {
                headers.push(("Authorization".to_string(), format!("Bearer {}", n.str(k)?)))
            }
            "authorization" => {
                let mut typ = "Bearer".to_string();
                let mut cred = String::new();
                for (ak, av) in n.fields("authorization", &["type", "credentials"])? {
                    if ak == "type" {
                        typ = av.str(ak)?.to_string();
                    } else {
                        cred = av.str(ak)?.to_string();
                    }
                }
                headers.push(("Authorization".to_string(), format!("{typ} {cred}")));
            }
            "basic_auth" => {
                let mut user = String::new();
                let mut pass = String::new();
                for (bk, bv) in n.fields("basic_auth", &["username", "password"])? {
                    if bk == "username" {
                        user = bv.str(bk)?.to_string();
                    } else {
                        pass = bv.str(bk)?.to_string();
                    }
                }
                headers.push((
                    "Authorization".to_string(),
                    format!("Basic {}", base64(format!("{user}:{pass}").as_bytes())),
                ));
            }
            _ => {}
        }
    }
    let tls = match scheme.as_str() {
        "http" => None,
        "https" => Some(
            crate::http::Tls::new(&tls_opts)
                .map_err(|e| v.err(format!("alertmanager tls_config: {e}")))?,
        ),
        other => {
            return Err(v.err(format!(
                "alertmanager scheme {other:?} is not http or https"
            )))
        }
    };
    if api != "v2" {
        return Err(v.err(format!(
            "alertmanager api_version {api:?} is not supported (only v2)"
        )));
    }
    let mut urls = Vec::new();
    for t in targets {
        if t.contains('/') || t.is_empty() {
            return Err(v.err(format!("{t:?} is not a host:port target")));
        }
        urls.push(format!("{scheme}://{t}{prefix}/api/v2/alerts"));
    }
    Ok(AlertmanagerConfig {
        urls,
        timeout_ms,
        headers,
        tls,
    })
}

fn hook(v: &Node) -> Result<HookConfig, PosError> {
    let mut name = String::new();
    let mut matchers = Vec::new();
    let mut on_firing = true;
    let mut on_resolved = false;
    let mut action = None;
    let mut cooldown_ms = 0;
    let mut max_concurrent = 1;
    let fields = v.fields(
        "hook",
        &[
            "name",
            "match",
            "match_re",
            "matchers",
            "on",
            "exec",
            "webhook",
            "cooldown",
            "max_concurrent",
        ],
    )?;
    for (k, n) in fields {
        match k {
            "name" => name = n.str(k)?.to_string(),
            "match" | "match_re" => {
                for (lk, lv) in n.string_map(k)? {
                    let m = if k == "match" {
                        Matcher::equal(&lk, &lv)
                    } else {
                        Matcher::regex(lk.as_str(), &lv)
                            .map_err(|e| n.err(format!("match_re {lk}: {e}")))?
                    };
                    matchers.push(m);
                }
            }
            "matchers" => {
                for s in n.strings(k)? {
                    let sel = format!("{{{s}}}");
                    let ms = strata_query::parse_selector(&sel)
                        .map_err(|e| n.err(format!("matcher {s:?}: {e}")))?;
                    matchers.extend(ms);
                }
            }
            "on" => {
                on_firing = false;
                for s in n.strings(k)? {
                    match s.as_str() {
                        "firing" => on_firing = true,
                        "resolved" => on_resolved = true,
                        other => {
                            return Err(n.err(format!("on: {other:?} is not firing or resolved")))
                        }
                    }
                }
            }
            "exec" => action = Some(exec(n)?),
            "webhook" => {
                if action.is_some() {
                    return Err(n.err("a hook has either exec or webhook, not both"));
                }
                action = Some(webhook(n)?);
            }
            "cooldown" => cooldown_ms = n.duration_ms(k)?,
            _ => {
                max_concurrent = n.uint(k)? as usize;
                if max_concurrent == 0 {
                    return Err(n.err("max_concurrent must be at least 1"));
                }
            }
        }
    }
    if name.is_empty() {
        return Err(v.err("a hook needs a name"));
    }
    let action =
        action.ok_or_else(|| v.err(format!("hook {name:?} has neither exec nor webhook")))?;
    Ok(HookConfig {
        name,
        matchers,
        on_firing,
        on_resolved,
        action,
        cooldown_ms,
        max_concurrent,
    })
}

fn exec(v: &Node) -> Result<HookAction, PosError> {
    let mut argv = Vec::new();
    let mut dir = None;
    let mut env = Vec::new();
    let mut timeout_ms = 60_000;
    for (k, n) in v.fields("exec", &["command", "dir", "env", "timeout"])? {
        match k {
            "command" => argv = n.strings(k)?,
            "dir" => dir = Some(PathBuf::from(n.str(k)?)),
            "env" => env = n.string_map(k)?,
            _ => timeout_ms = n.duration_ms(k)?.max(1),
        }
    }
    if argv.first().is_none_or(String::is_empty) {
        return Err(v.err("exec needs a command: a list of program and arguments"));
    }
    let mut command = Vec::new();
    for a in &argv {
        command.push(Template::parse("hook", a).map_err(|e| v.err(e))?);
    }
    Ok(HookAction::Exec {
        command,
        argv,
        dir,
        env,
        timeout_ms,
    })
}

fn webhook(v: &Node) -> Result<HookAction, PosError> {
    let mut url = String::new();
    let mut headers = Vec::new();
    let mut bearer_token = None;
    let mut timeout_ms = 10_000;
    let mut retries = 3;
    for (k, n) in v.fields(
        "webhook",
        &["url", "headers", "bearer_token", "timeout", "retries"],
    )? {
        match k {
            "url" => url = n.str(k)?.to_string(),
            "headers" => headers = n.string_map(k)?,
            "bearer_token" => bearer_token = Some(n.str(k)?.to_string()),
            "timeout" => timeout_ms = n.duration_ms(k)?.max(1),
            _ => retries = n.uint(k)?.min(20) as u32,
        }
    }
    crate::http::Url::parse(&url).map_err(|e| v.err(format!("webhook url: {e}")))?;
    Ok(HookAction::Webhook {
        url,
        headers,
        bearer_token,
        timeout_ms,
        retries,
    })
}

/// Standard base64 with padding (basic auth).
pub(crate) fn base64(data: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_config() {
        let text = r#"
global:
  evaluation_interval: 10s
  scrape_interval: 15s
  external_labels: {cluster: eu1}
rule_files: ["rules/*.yml"]
alerting:
  alertmanagers:
    - static_configs: [{targets: ["127.0.0.1:9093", "127.0.0.1:9094"]}]
      path_prefix: /am/
      basic_auth: {username: a, password: b}
remote_write:
  - url: http://x
remote_read:
  - url: http://y
hooks:
  - name: restart-web
    match: {alertname: ContainerDown}
    matchers: ['severity=~"crit.*"']
    on: [firing, resolved]
    exec:
      command: [ansible-playbook, restart.yml, -e, "target={{ $labels.instance }}"]
      timeout: 2m
    cooldown: 10m
    max_concurrent: 2
  - name: chat
    webhook: {url: "http://127.0.0.1:8080/hook", timeout: 5s, bearer_token: t}
"#;
        let c = Config::parse(text, PathBuf::from("/etc/strata")).unwrap();
        assert_eq!(c.evaluation_interval_ms, 10_000);
        assert_eq!(c.external_labels, [("cluster".into(), "eu1".into())]);
        assert_eq!(c.rule_files, ["rules/*.yml"]);
        assert_eq!(
            c.alertmanagers[0].urls,
            [
                "http://127.0.0.1:9093/am/api/v2/alerts",
                "http://127.0.0.1:9094/am/api/v2/alerts"
            ]
        );
        assert_eq!(c.alertmanagers[0].headers[0].1, "Basic YTpi");
        assert_eq!(c.warnings.len(), 1, "remote_read: {:?}", c.warnings);
        assert_eq!(c.remote_write[0].url, "http://x");
        let h = &c.hooks[0];
        assert_eq!(h.matchers.len(), 2);
        assert!(h.on_firing && h.on_resolved);
        assert_eq!((h.cooldown_ms, h.max_concurrent), (600_000, 2));
        match &h.action {
            HookAction::Exec {
                argv, timeout_ms, ..
            } => {
                assert_eq!(argv.len(), 4);
                assert_eq!(*timeout_ms, 120_000);
            }
            HookAction::Webhook { .. } => panic!("exec expected"),
        }
        assert!(matches!(
            c.hooks[1].action,
            HookAction::Webhook { retries: 3, .. }
        ));
        assert!(c.hooks[1].on_firing && !c.hooks[1].on_resolved);
    }

    #[test]
    fn mistakes_are_refused_with_their_line() {
        for (text, frag) in [
            ("globl: {}\n", "1:1: field globl not found in config"),
            (
                "global:\n  evaluation_interval: 1x\n",
                "2:24: evaluation_interval: not a valid duration",
            ),
            (
                "hooks:\n  - name: a\n    exec: {command: []}\n",
                "exec needs a command",
            ),
            (
                "hooks:\n  - name: a\n    exec: {command: [x, \"{{ nope }}\"]}\n",
                "function \"nope\" not defined",
            ),
            (
                "hooks:\n  - name: a\n    on: [fired]\n    exec: {command: [x]}\n",
                "not firing or resolved",
            ),
            (
                "hooks:\n  - name: a\n    webhook: {url: \"ftp://x\"}\n",
                "http:// or https://",
            ),
            ("hooks:\n  - exec: {command: [x]}\n", "needs a name"),
            (
                "alerting:\n  alertmanagers:\n  - scheme: ftp\n",
                "not http or https",
            ),
        ] {
            let e = Config::parse(text, PathBuf::new()).unwrap_err().to_string();
            assert!(e.contains(frag), "{text}: {e}");
        }
        assert_eq!(base64(b"user:pass"), "dXNlcjpwYXNz");
        assert_eq!(base64(b"ab"), "YWI=");
    }
}
