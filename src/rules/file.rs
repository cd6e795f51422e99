//! Rule files in Prometheus' format: `groups` of `record` and `alert` rules. Parsing
//! checks everything `promtool check rules` checks (and names file, line and rule in the
//! same words), so a file refused here is refused before anything runs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use strata_ingest::remote_write::{is_valid_label_name, is_valid_metric_name};

use super::template::Template;
use crate::yaml::{self, Node};

/// One rule group as written.
#[derive(Debug, Clone)]
pub(crate) struct GroupSpec {
    pub(crate) name: String,
    pub(crate) file: String,
    /// `interval`; the global evaluation interval when absent.
    pub(crate) interval_ms: Option<i64>,
    /// `query_offset`: evaluate this far in the past.
    pub(crate) query_offset_ms: Option<i64>,
    /// `limit`: most series a rule may produce (0 = none).
    pub(crate) limit: usize,
    /// `labels`, added to every rule's output (a rule's own labels win).
    pub(crate) labels: Vec<(String, String)>,
    pub(crate) rules: Vec<Arc<RuleSpec>>,
}

#[derive(Debug)]
pub(crate) enum RuleKind {
    Record(String),
    Alert(String),
}

#[derive(Debug)]
pub(crate) struct RuleSpec {
    pub(crate) kind: RuleKind,
    pub(crate) expr: String,
    pub(crate) for_ms: i64,
    pub(crate) keep_firing_for_ms: i64,
    /// Labels with their templates (group labels merged in).
    pub(crate) labels: Vec<(String, String, Template)>,
    pub(crate) annotations: Vec<(String, String, Template)>,
}

impl RuleSpec {
    pub(crate) fn name(&self) -> &str {
        match &self.kind {
            RuleKind::Record(n) | RuleKind::Alert(n) => n,
        }
    }
}

/// Reads and checks one rule file. Errors are complete lines
/// (`rules.yml: 12:13: group "g", rule 3, "x": …`).
pub(crate) fn load_file(path: &Path) -> Result<Vec<GroupSpec>, Vec<String>> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| vec![format!("{shown}: {e}")])?;
    parse(&shown, &text)
}

/// Parses and checks the text of a rule file named `file`.
pub(crate) fn parse(file: &str, text: &str) -> Result<Vec<GroupSpec>, Vec<String>> {
    let root = yaml::parse(text).map_err(|e| vec![format!("{file}: {e}")])?;
    let mut errors = Vec::new();
    let mut groups = Vec::new();
    let at = |e: yaml::PosError| vec![format!("{file}: {e}")];
    if root.is_null() {
        return Ok(groups);
    }
    for (key, value) in root.fields("rule file", &["groups"]).map_err(at)? {
        debug_assert_eq!(key, "groups");
        for g in value.seq("groups").map_err(at)? {
            match parse_group(file, g, &mut errors) {
                Ok(spec) => {
                    if groups.iter().any(|x: &GroupSpec| x.name == spec.name) {
                        errors.push(format!(
                            "{file}: {}:{}: groupname: {:?} is repeated in the same file",
                            g.line, g.col, spec.name
                        ));
                    } else if spec.name.is_empty() {
                        errors.push(format!(
                            "{file}: {}:{}: Groupname must not be empty",
                            g.line, g.col
                        ));
                    } else {
                        groups.push(spec);
                    }
                }
                Err(e) => errors.push(format!("{file}: {e}")),
            }
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

fn parse_group(
    file: &str,
    g: &Node,
    errors: &mut Vec<String>,
) -> Result<GroupSpec, yaml::PosError> {
    let mut spec = GroupSpec {
        name: String::new(),
        file: file.to_string(),
        interval_ms: None,
        query_offset_ms: None,
        limit: 0,
        labels: Vec::new(),
        rules: Vec::new(),
    };
    let fields = g.fields(
        "rule group",
        &[
            "name",
            "interval",
            "query_offset",
            "limit",
            "labels",
            "rules",
        ],
    )?;
    let mut rule_nodes: &[Node] = &[];
    for (k, v) in fields {
        match k {
            "name" => spec.name = v.str("name")?.to_string(),
            "interval" => spec.interval_ms = Some(v.duration_ms("interval")?).filter(|i| *i > 0),
            "query_offset" => spec.query_offset_ms = Some(v.duration_ms("query_offset")?),
            "limit" => {
                let s = v.str("limit")?;
                let n: i64 = s
                    .parse()
                    .map_err(|_| v.err(format!("limit: {s:?} is not an integer")))?;
                spec.limit = n.max(0) as usize;
            }
            "labels" => spec.labels = v.string_map("labels")?,
            _ => rule_nodes = v.seq("rules")?,
        }
    }
    for (k, _) in &spec.labels {
        if !is_valid_label_name(k) || k == "__name__" {
            errors.push(format!(
                "{file}: group {:?}: invalid label name: {k}",
                spec.name
            ));
        }
    }
    for (i, r) in rule_nodes.iter().enumerate() {
        match parse_rule(&spec, r) {
            Ok(rule) => spec.rules.push(Arc::new(rule)),
            Err(errs) => {
                for (pos, name, msg) in errs {
                    let pos = pos.map(|(l, c)| format!("{l}:{c}: ")).unwrap_or_default();
                    errors.push(format!(
                        "{file}: {pos}group {:?}, rule {}, {name:?}: {msg}",
                        spec.name,
                        i + 1
                    ));
                }
            }
        }
    }
    Ok(spec)
}

type RuleErrors = Vec<(Option<(usize, usize)>, String, String)>;

fn parse_rule(group: &GroupSpec, r: &Node) -> Result<RuleSpec, RuleErrors> {
    let mut errs: RuleErrors = Vec::new();
    let fields = r
        .fields(
            "rule",
            &[
                "record",
                "alert",
                "expr",
                "for",
                "keep_firing_for",
                "labels",
                "annotations",
            ],
        )
        .map_err(|e| vec![(Some((e.line, e.col)), String::new(), e.msg)])?;
    let mut record: Option<&Node> = None;
    let mut alert: Option<&Node> = None;
    let mut expr: Option<&Node> = None;
    let mut for_node = None;
    let mut keep_node = None;
    let mut labels = Vec::new();
    let mut annotations = Vec::new();
    let mut annotations_node = None;
    let one = |e: yaml::PosError| vec![(Some((e.line, e.col)), String::new(), e.msg)];
    for (k, v) in fields {
        match k {
            "record" => record = Some(v),
            "alert" => alert = Some(v),
            "expr" => expr = Some(v),
            "for" => for_node = Some(v),
            "keep_firing_for" => keep_node = Some(v),
            "labels" => labels = v.string_map("labels").map_err(one)?,
            _ => {
                annotations = v.string_map("annotations").map_err(one)?;
                annotations_node = Some(v);
            }
        }
    }
    let text = |n: Option<&Node>| -> Result<String, RuleErrors> {
        n.map(|n| n.str("value").map(str::to_string))
            .transpose()
            .map(Option::unwrap_or_default)
            .map_err(one)
    };
    let record_s = text(record)?;
    let alert_s = text(alert)?;
    let name = if record_s.is_empty() {
        alert_s.clone()
    } else {
        record_s.clone()
    };
    let pos_of = |n: Option<&Node>| n.map(|n| (n.line, n.col));
    let rule_pos = pos_of(record.or(alert));
    let for_ms = for_node
        .map(|n| n.duration_ms("for"))
        .transpose()
        .map_err(one)?
        .unwrap_or(0);
    let keep_ms = keep_node
        .map(|n| n.duration_ms("keep_firing_for"))
        .transpose()
        .map_err(one)?
        .unwrap_or(0);
    if !record_s.is_empty() && !alert_s.is_empty() {
        errs.push((
            rule_pos,
            name.clone(),
            "only one of 'record' and 'alert' must be set".into(),
        ));
    }
    if record_s.is_empty() && alert_s.is_empty() {
        errs.push((
            None,
            name.clone(),
            "one of 'record' or 'alert' must be set".into(),
        ));
    }
    let expr_s = text(expr)?;
    if expr_s.is_empty() {
        errs.push((
            None,
            name.clone(),
            "field 'expr' must be set in rule".into(),
        ));
    } else if let Err(e) = strata_query::parse(&expr_s) {
        errs.push((
            pos_of(expr),
            name.clone(),
            format!("could not parse expression: {e}"),
        ));
    }
    if !record_s.is_empty() {
        if annotations_node.is_some_and(|n| !n.is_null()) && !annotations.is_empty() {
            errs.push((
                rule_pos,
                name.clone(),
                "invalid field 'annotations' in recording rule".into(),
            ));
        }
        if for_ms != 0 {
            errs.push((
                rule_pos,
                name.clone(),
                "invalid field 'for' in recording rule".into(),
            ));
        }
        if keep_ms != 0 {
            errs.push((
                rule_pos,
                name.clone(),
                "invalid field 'keep_firing_for' in recording rule".into(),
            ));
        }
        if !is_valid_metric_name(&record_s) {
            errs.push((
                rule_pos,
                name.clone(),
                format!("invalid recording rule name: {record_s}"),
            ));
        }
    }
    for (k, _) in &labels {
        if !is_valid_label_name(k) || k == "__name__" {
            errs.push((None, name.clone(), format!("invalid label name: {k}")));
        }
    }
    for (k, _) in &annotations {
        if !is_valid_label_name(k) {
            errs.push((None, name.clone(), format!("invalid annotation name: {k}")));
        }
    }
    // Group labels first; the rule's own override them.
    let mut merged: Vec<(String, String)> = group
        .labels
        .iter()
        .filter(|(k, _)| !labels.iter().any(|(rk, _)| rk == k))
        .cloned()
        .collect();
    merged.extend(labels);
    let tmpl_name = format!("__alert_{name}");
    let mut compile = |items: Vec<(String, String)>, what: &str| {
        let mut out = Vec::new();
        for (k, v) in items {
            // Recording rules' labels are not templates in Prometheus.
            if !alert_s.is_empty() {
                match Template::parse(&tmpl_name, &v) {
                    Ok(t) => out.push((k, v, t)),
                    Err(e) => errs.push((None, name.clone(), format!("{what} {k:?}: {e}"))),
                }
            } else {
                let t = Template::plain(&v);
                out.push((k, v, t));
            }
        }
        out
    };
    let labels = compile(merged, "label");
    let annotations = compile(annotations, "annotation");
    if !errs.is_empty() {
        return Err(errs);
    }
    Ok(RuleSpec {
        kind: if record_s.is_empty() {
            RuleKind::Alert(alert_s)
        } else {
            RuleKind::Record(record_s)
        },
        expr: expr_s,
        for_ms,
        keep_firing_for_ms: keep_ms,
        labels,
        annotations,
    })
}

/// Expands `rule_files` globs (relative to `base`) into files, sorted, without
/// duplicates. A pattern that matches nothing is not an error, as in Prometheus.
pub(crate) fn expand_globs(base: &Path, patterns: &[String]) -> Result<Vec<PathBuf>, String> {
    let mut out = Vec::new();
    for p in patterns {
        let full = if Path::new(p).is_absolute() {
            PathBuf::from(p)
        } else {
            base.join(p)
        };
        let mut found = Vec::new();
        glob_into(&full, &mut found).map_err(|e| format!("rule_files {p:?}: {e}"))?;
        found.sort();
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

fn has_wildcard(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

fn glob_into(pattern: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut bases = vec![PathBuf::new()];
    let comps: Vec<_> = pattern.components().collect();
    for (i, c) in comps.iter().enumerate() {
        let s = c.as_os_str().to_string_lossy().to_string();
        let last = i + 1 == comps.len();
        let mut next = Vec::new();
        for b in &bases {
            if has_wildcard(&s) {
                let dir = if b.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    b.as_path()
                };
                let Ok(entries) = std::fs::read_dir(dir) else {
                    continue;
                };
                for e in entries.flatten() {
                    let name = e.file_name().to_string_lossy().to_string();
                    if name.starts_with('.') && !s.starts_with('.') {
                        continue;
                    }
                    if wildcard_match(s.as_bytes(), name.as_bytes()) {
                        next.push(b.join(&name));
                    }
                }
            } else {
                next.push(b.join(c.as_os_str()));
            }
        }
        if last {
            next.retain(|p| p.is_file());
        }
        bases = next;
    }
    out.extend(bases);
    Ok(())
}

/// Shell-style matching of one path component: `*`, `?`, `[abc]`, `[a-z]`, `[!x]`.
fn wildcard_match(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => {
            wildcard_match(&p[1..], s) || (!s.is_empty() && wildcard_match(p, &s[1..]))
        }
        (Some(b'?'), Some(_)) => wildcard_match(&p[1..], &s[1..]),
        (Some(b'['), Some(&c)) => {
            let Some(end) = p.iter().skip(1).position(|&x| x == b']').map(|i| i + 1) else {
                return false;
            };
            let mut class = &p[1..end];
            let negate = matches!(class.first(), Some(b'!' | b'^'));
            if negate {
                class = &class[1..];
            }
            let mut hit = false;
            let mut i = 0;
            while i < class.len() {
                if i + 2 < class.len() && class[i + 1] == b'-' {
                    hit |= class[i] <= c && c <= class[i + 2];
                    i += 3;
                } else {
                    hit |= class[i] == c;
                    i += 1;
                }
            }
            hit != negate && wildcard_match(&p[end + 1..], &s[1..])
        }
        (Some(a), Some(b)) => a == b && wildcard_match(&p[1..], &s[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_documentation_examples_load() {
        let rec = "groups:\n  - name: example\n    rules:\n    - record: code:prometheus_http_requests_total:sum\n      expr: sum by (code) (prometheus_http_requests_total)\n";
        let g = parse("rec.yml", rec).unwrap();
        assert_eq!(
            g[0].rules[0].name(),
            "code:prometheus_http_requests_total:sum"
        );
        let alert = r#"groups:
- name: example
  labels:
    team: myteam
  rules:
  - alert: HighRequestLatency
    expr: job:request_latency_seconds:mean5m{job="myjob"} > 0.5
    for: 10m
    keep_firing_for: 5m
    labels:
      severity: page
    annotations:
      summary: High request latency on {{ $labels.instance }}
      description: "{{ $labels.instance }} of job {{ $labels.job }} has been above 0.5s (current value: {{ $value }})"
"#;
        let g = parse("alert.yml", alert).unwrap();
        let r = &g[0].rules[0];
        assert_eq!((r.for_ms, r.keep_firing_for_ms), (600_000, 300_000));
        let names: Vec<&str> = r.labels.iter().map(|l| l.0.as_str()).collect();
        assert_eq!(names, ["team", "severity"]);
        assert!(parse("empty.yml", "").unwrap().is_empty());
    }

    #[test]
    fn errors_read_like_promtool() {
        let text = "groups:\n- name: g\n  rules:\n  - record: \"bad-name\"\n    expr: sum(up)\n  - record: x\n    expr: sum(up\n  - alert: z\n    expr: up\n    labels: {\"1a\": b}\n    annotations: {summary: \"{{ nosuch }}\"}\n- name: g\n  rules: []\n";
        let e = parse("a.yml", text).unwrap_err();
        assert_eq!(
            e[0],
            "a.yml: 4:13: group \"g\", rule 1, \"bad-name\": invalid recording rule name: bad-name"
        );
        assert!(
            e[1].starts_with(
                "a.yml: 7:11: group \"g\", rule 2, \"x\": could not parse expression:"
            ),
            "{}",
            e[1]
        );
        assert_eq!(
            e[2],
            "a.yml: group \"g\", rule 3, \"z\": invalid label name: 1a"
        );
        assert_eq!(
            e[3],
            "a.yml: group \"g\", rule 3, \"z\": annotation \"summary\": template: __alert_z:1: function \"nosuch\" not defined"
        );
        assert_eq!(
            e[4],
            "a.yml: 12:3: groupname: \"g\" is repeated in the same file"
        );
        let e = parse(
            "b.yml",
            "groups:\n- name: g\n  rules:\n  - alert: x\n    expr: up\n    bogus: 1\n",
        )
        .unwrap_err();
        assert_eq!(
            e,
            ["b.yml: 6:5: group \"g\", rule 1, \"\": field bogus not found in rule"]
        );
        let e = parse(
            "c.yml",
            "groups:\n- name: g\n  rules:\n  - record: x\n    expr: up\n    for: 1m\n",
        )
        .unwrap_err();
        assert!(
            e[0].ends_with("invalid field 'for' in recording rule"),
            "{e:?}"
        );
        let e = parse(
            "d.yml",
            "groups:\n- name: g\n  rules:\n  - alert: x\n    expr: up\n    for: 5x\n",
        )
        .unwrap_err();
        assert!(
            e[0].contains("not a valid duration string: \"5x\""),
            "{e:?}"
        );
    }

    #[test]
    fn globs() {
        let dir = tempfile::tempdir().unwrap();
        for f in ["a.yml", "b.yaml", "c.txt", "sub/d.yml"] {
            let p = dir.path().join(f);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "").unwrap();
        }
        let got = expand_globs(
            dir.path(),
            &[
                "*.y*ml".into(),
                "sub/*.yml".into(),
                "a.yml".into(),
                "none/*.yml".into(),
            ],
        )
        .unwrap();
        let names: Vec<String> = got
            .iter()
            .map(|p| p.strip_prefix(dir.path()).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["a.yml", "b.yaml", "sub/d.yml"]);
        assert!(wildcard_match(b"r[0-9].yml", b"r5.yml"));
        assert!(!wildcard_match(b"r[!0-9].yml", b"r5.yml"));
    }
}
