//! Rules, alerts and hooks end to end: strata evaluates rules over data pushed by the
//! test, notifies a real Alertmanager (Debian's `prometheus-alertmanager`) whose receiver
//! is a webhook served here, and runs hooks: a webhook, a real `ansible-playbook`, and
//! commands that hang, fail and flap.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{post_write, request, wait_for, write_body, Receiver, Strata, Ts};

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn push(s: &Strata, labels: &[(&str, &str)], v: f64) {
    let r = s.write(&write_body(&[Ts {
        labels: labels.to_vec(),
        samples: vec![(now_ms(), v)],
    }]));
    assert_eq!(r.status, 204, "{}", r.body);
}

fn start_with_config(dir: &Path, config: &str, rules: &str, extra: &[&str]) -> Strata {
    std::fs::write(dir.join("rules.yml"), rules).unwrap();
    std::fs::write(dir.join("strata.yml"), config).unwrap();
    let cfg = dir.join("strata.yml");
    let mut args = vec![
        "--config.file",
        cfg.to_str().unwrap(),
        "--rules.alert.resend-delay",
        "1s",
    ];
    args.extend_from_slice(extra);
    Strata::start(&dir.join("data"), &args)
}

fn hook_runs(s: &Strata, hook: &str) -> Vec<serde_json::Value> {
    let v = s.get("/api/v1/hooks").json();
    v["data"]["runs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["hook"] == hook)
        .cloned()
        .collect()
}

#[test]
fn alerts_reach_a_real_alertmanager_and_a_webhook_hook() {
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start();
    let (_am, am_addr) =
        common::start_alertmanager(dir.path(), &format!("http://{}/am", receiver.addr));
    let config = format!(
        r#"global:
  evaluation_interval: 1s
  external_labels: {{cluster: ci}}
rule_files: [rules.yml]
alerting:
  alertmanagers:
    - static_configs: [{{targets: ["{am_addr}"]}}]
hooks:
  - name: chat
    on: [firing, resolved]
    match: {{severity: critical}}
    webhook:
      url: "http://{}/hook"
      bearer_token: t0k
      headers: {{X-Team: storage}}
"#,
        receiver.addr
    );
    let rules = r#"groups:
- name: disks
  rules:
  - alert: DiskFull
    expr: disk_used_ratio > 0.9
    labels:
      severity: critical
    annotations:
      summary: "{{ $labels.mount }} on {{ $labels.instance }} at {{ $value | humanizePercentage }}"
"#;
    let s = start_with_config(dir.path(), &config, rules, &[]);
    let series = [
        ("__name__", "disk_used_ratio"),
        ("instance", "db-1"),
        ("mount", "/data"),
    ];
    push(&s, &series, 0.95);

    // Alertmanager's own API lists the alert, with strata's labels and annotations.
    let am_alert = wait_for(Duration::from_secs(30), "the alert in Alertmanager", || {
        let r = request(am_addr, "GET", "/api/v2/alerts", &[], &[]).ok()?;
        let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
        v.as_array()?
            .iter()
            .find(|a| a["labels"]["alertname"] == "DiskFull")
            .cloned()
    });
    assert_eq!(am_alert["labels"]["cluster"], "ci", "{am_alert}");
    assert_eq!(am_alert["labels"]["severity"], "critical");
    assert_eq!(am_alert["labels"]["instance"], "db-1");
    assert_eq!(am_alert["annotations"]["summary"], "/data on db-1 at 95%");
    assert_eq!(am_alert["status"]["state"], "active");
    let gen = am_alert["generatorURL"].as_str().unwrap();
    assert!(
        gen.starts_with(&format!("http://{}/graph?g0.expr=", s.addr)),
        "{gen}"
    );

    // Alertmanager's receiver and strata's own webhook hook both get it.
    let from_am = wait_for(Duration::from_secs(30), "Alertmanager's webhook", || {
        receiver
            .received()
            .into_iter()
            .find(|r| r.path == "/am" && r.json()["status"] == "firing")
    });
    assert_eq!(
        from_am.json()["alerts"][0]["labels"]["alertname"],
        "DiskFull"
    );
    let hook = wait_for(Duration::from_secs(30), "the webhook hook", || {
        receiver
            .received()
            .into_iter()
            .find(|r| r.path == "/hook" && r.json()["status"] == "firing")
    });
    let body = hook.json();
    assert_eq!(body["version"], "4");
    assert_eq!(body["receiver"], "chat");
    assert_eq!(body["groupLabels"]["alertname"], "DiskFull");
    assert_eq!(body["commonLabels"]["mount"], "/data");
    assert_eq!(body["commonAnnotations"]["summary"], "/data on db-1 at 95%");
    assert_eq!(body["alerts"][0]["status"], "firing");
    assert_eq!(body["externalURL"], format!("http://{}", s.addr));
    let header = |name: &str| {
        hook.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    };
    assert_eq!(header("authorization").as_deref(), Some("Bearer t0k"));
    assert_eq!(header("x-team").as_deref(), Some("storage"));

    // strata's API and metrics show the same.
    let ams = s.get("/api/v1/alertmanagers").json();
    assert_eq!(
        ams["data"]["activeAlertmanagers"][0]["url"],
        format!("http://{am_addr}/api/v2/alerts")
    );
    let alerts = s.get("/api/v1/alerts").json();
    assert_eq!(alerts["data"]["alerts"][0]["state"], "firing");
    let sent = wait_for(Duration::from_secs(10), "the sent counter", || {
        let m = s.get("/metrics").body;
        m.lines()
            .find(|l| l.starts_with("strata_notifications_sent_total{"))
            .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .filter(|v| *v > 0.0)
    });
    assert!(sent >= 1.0);
    let runs = hook_runs(&s, "chat");
    assert_eq!(runs[0]["result"], "success", "{runs:?}");
    assert_eq!(runs[0]["httpStatus"], 200);

    // The condition clears: Alertmanager and the hook hear it is resolved.
    push(&s, &series, 0.5);
    wait_for(Duration::from_secs(30), "the resolved notification", || {
        receiver
            .received()
            .into_iter()
            .find(|r| r.path == "/am" && r.json()["status"] == "resolved")
    });
    let resolved = wait_for(Duration::from_secs(30), "the resolved hook", || {
        receiver
            .received()
            .into_iter()
            .find(|r| r.path == "/hook" && r.json()["status"] == "resolved")
    });
    assert_ne!(
        resolved.json()["alerts"][0]["endsAt"],
        "0001-01-01T00:00:00Z"
    );
    let audit = std::fs::read_to_string(dir.path().join("data/hook-runs.jsonl")).unwrap();
    assert_eq!(audit.lines().count(), 2, "{audit}");
}

fn which(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

#[test]
fn a_firing_rule_runs_an_ansible_playbook() {
    let ansible = ansible_playbook();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("inventory.ini"),
        "localhost ansible_connection=local ansible_python_interpreter=\"{{ ansible_playbook_python }}\"\n",
    )
    .unwrap();
    std::fs::write(
        d.join("restart.yml"),
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: restart (marker)\n      ansible.builtin.copy:\n        content: \"{{ target }} restarted\\n\"\n        dest: \"{{ marker }}\"\n",
    )
    .unwrap();
    let marker = d.join("restarted.txt");
    let config = format!(
        r#"global: {{evaluation_interval: 1s}}
rule_files: [rules.yml]
hooks:
  - name: restart-service
    match: {{alertname: ServiceDown}}
    exec:
      command: ["{}", -i, inventory.ini, restart.yml, -e, "target={{{{ $labels.instance }}}}", -e, "marker={}"]
      dir: "{}"
      env: {{ANSIBLE_LOCAL_TEMP: "{}", ANSIBLE_HOME: "{}", ANSIBLE_NOCOLOR: "1"}}
      timeout: 2m
    cooldown: 10m
"#,
        ansible.display(),
        marker.display(),
        d.display(),
        d.join("ansible-tmp").display(),
        d.join("ansible-home").display(),
    );
    let rules =
        "groups:\n- name: services\n  rules:\n  - alert: ServiceDown\n    expr: service_up == 0\n";
    let s = start_with_config(d, &config, rules, &[]);
    push(
        &s,
        &[("__name__", "service_up"), ("instance", "web-7")],
        0.0,
    );
    let content = wait_for(Duration::from_secs(120), "the playbook's marker", || {
        std::fs::read_to_string(&marker).ok()
    });
    assert_eq!(content, "web-7 restarted\n");
    let run = wait_for(Duration::from_secs(30), "the run record", || {
        hook_runs(&s, "restart-service").into_iter().next()
    });
    assert_eq!(run["result"], "success", "{run}");
    assert_eq!(run["exitCode"], 0);
    assert!(
        run["output"].as_str().unwrap().contains("changed=1"),
        "{run}"
    );
}

/// The real `ansible-playbook` script (pyenv-style shims resolved).
fn ansible_playbook() -> PathBuf {
    let shim = which("ansible-playbook")
        .expect("ansible-playbook is needed (pip install ansible-core; .ci/run installs it)");
    Command::new("python3")
        .args([
            "-c",
            "import shutil,sys; print(shutil.which(sys.argv[1]))",
            "ansible-playbook",
        ])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| PathBuf::from(s.trim()))
        .filter(|p| p.is_file())
        .unwrap_or(shim)
}

/// `examples/ops` as shipped (copied, with the marker file and the evaluation interval
/// moved for the test): the demo alert fires on strata's own host metrics and the hook's
/// playbook runs.
#[test]
fn the_ops_example_runs() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/ops");
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let marker = d.join("demo-marker.txt");
    for f in ["strata.yml", "rules.yml", "restart.yml", "inventory.ini"] {
        let text = std::fs::read_to_string(src.join(f)).unwrap();
        let text = text
            .replace("/tmp/strata-ops-demo.txt", marker.to_str().unwrap())
            .replace("evaluation_interval: 15s", "evaluation_interval: 1s")
            .replace(
                "- ansible-playbook\n",
                &format!("- {}\n", ansible_playbook().display()),
            );
        std::fs::write(d.join(f), text).unwrap();
    }
    let check = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["check", "config"])
        .arg(d.join("strata.yml"))
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "{}",
        String::from_utf8_lossy(&check.stdout)
    );
    let cfg = d.join("strata.yml");
    let s = Strata::start_env(
        &d.join("data"),
        &[
            "--config.file",
            cfg.to_str().unwrap(),
            "--collect.interval",
            "1s",
        ],
        &[
            (
                "ANSIBLE_LOCAL_TEMP",
                d.join("ansible-tmp").to_str().unwrap(),
            ),
            ("ANSIBLE_HOME", d.join("ansible-home").to_str().unwrap()),
        ],
    );
    let content = wait_for(Duration::from_secs(120), "the demo marker", || {
        std::fs::read_to_string(&marker).ok()
    });
    assert_eq!(content, "demo-web restarted by strata\n");
    let run = wait_for(Duration::from_secs(30), "the run record", || {
        hook_runs(&s, "restart-service").into_iter().next()
    });
    assert_eq!(run["result"], "success", "{run}");
    assert_eq!(run["alertname"], "DemoServiceDown");
}

#[test]
fn hooks_that_hang_fail_or_flap_are_contained() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let counter = d.join("runs.txt");
    let config = format!(
        r#"global: {{evaluation_interval: 1s}}
rule_files: [rules.yml]
hooks:
  - name: hang
    match: {{alertname: Flappy}}
    exec: {{command: [sleep, "30"], timeout: 1s}}
    cooldown: 1h
  - name: fail
    match: {{alertname: Flappy}}
    exec: {{command: [sh, -c, "echo oops >&2; exit 7"]}}
    cooldown: 1h
  - name: flap
    on: [firing, resolved]
    match: {{alertname: Flappy}}
    exec: {{command: [sh, -c, "echo $STRATA_ALERT_STATUS >> {}"]}}
    cooldown: 1h
"#,
        counter.display()
    );
    let rules = "groups:\n- name: g\n  rules:\n  - alert: Flappy\n    expr: flappy > 0\n";
    let s = start_with_config(d, &config, rules, &[]);
    let series = [("__name__", "flappy"), ("instance", "x")];
    // Three firing/resolved cycles, each waited for through the alerts API.
    for _ in 0..3 {
        push(&s, &series, 1.0);
        wait_for(Duration::from_secs(20), "firing", || {
            let a = s.get("/api/v1/alerts").json();
            (a["data"]["alerts"][0]["state"] == "firing").then_some(())
        });
        push(&s, &series, 0.0);
        wait_for(Duration::from_secs(20), "resolved", || {
            let a = s.get("/api/v1/alerts").json();
            a["data"]["alerts"].as_array()?.is_empty().then_some(())
        });
    }
    let hang = wait_for(Duration::from_secs(20), "the hanging run", || {
        hook_runs(&s, "hang").into_iter().next()
    });
    assert_eq!(hang["result"], "timeout", "{hang}");
    assert!(hang["durationSeconds"].as_f64().unwrap() < 10.0, "{hang}");
    let fail = wait_for(Duration::from_secs(20), "the failing run", || {
        hook_runs(&s, "fail").into_iter().next()
    });
    assert_eq!(fail["result"], "failure");
    assert_eq!(fail["exitCode"], 7);
    assert!(fail["output"].as_str().unwrap().contains("oops"), "{fail}");
    // Six transitions, one run: the cooldown holds.
    let flap = wait_for(Duration::from_secs(20), "the flapping hook's run", || {
        std::fs::read_to_string(&counter).ok()
    });
    assert_eq!(flap, "firing\n");
    assert_eq!(hook_runs(&s, "flap").len(), 1);
    let metrics = s.get("/metrics").body;
    for want in [
        "strata_hook_runs_total{hook=\"hang\",result=\"timeout\"} 1",
        "strata_hook_runs_total{hook=\"fail\",result=\"failure\"} 1",
        "strata_hook_runs_total{hook=\"flap\",result=\"success\"} 1",
        "strata_hook_skipped_total{hook=\"flap\",reason=\"cooldown\"} 5",
        "strata_hook_duration_seconds_count{hook=\"hang\"} 1",
    ] {
        assert!(metrics.contains(want), "{want} missing from:\n{metrics}");
    }
    // No hook process is left behind.
    let ps = Command::new("pgrep")
        .args(["-f", "^sleep 30$"])
        .output()
        .unwrap();
    assert!(
        ps.stdout.is_empty(),
        "{}",
        String::from_utf8_lossy(&ps.stdout)
    );
}

#[test]
fn reload_refuses_bad_rules_and_keeps_the_running_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let config = "global: {evaluation_interval: 1s}\nrule_files: [rules.yml]\n";
    let good = "groups:\n- name: g\n  rules:\n  - record: one\n    expr: vector(1)\n";
    let s = start_with_config(d, config, good, &["--web.enable-lifecycle"]);
    std::fs::write(
        d.join("rules.yml"),
        "groups:\n- name: g\n  rules:\n  - record: two\n    expr: sum(\n",
    )
    .unwrap();
    let r = request(s.addr, "POST", "/-/reload", &[], &[]).unwrap();
    assert_eq!(r.status, 500);
    let msg = r.body.clone();
    assert!(
        msg.contains("rules.yml: 5:11: group \"g\", rule 1, \"two\": could not parse expression"),
        "{msg}"
    );
    let rules = s.get("/api/v1/rules").json();
    assert_eq!(rules["data"]["groups"][0]["rules"][0]["name"], "one");
    wait_for(Duration::from_secs(10), "the recorded series", || {
        let v = s.query("one", &format!("{}", now_ms() as f64 / 1000.0));
        (v["result"][0]["value"][1] == "1").then_some(())
    });
    std::fs::write(
        d.join("rules.yml"),
        "groups:\n- name: g\n  rules:\n  - record: two\n    expr: vector(2)\n",
    )
    .unwrap();
    // SIGHUP reloads too.
    Command::new("kill")
        .args(["-HUP", &s.pid().to_string()])
        .status()
        .unwrap();
    wait_for(Duration::from_secs(10), "the reloaded rules", || {
        let rules = s.get("/api/v1/rules").json();
        (rules["data"]["groups"][0]["rules"][0]["name"] == "two").then_some(())
    });
    let cfg = s.get("/api/v1/status/config").json();
    assert_eq!(cfg["data"]["yaml"], config);
    // Without --web.enable-lifecycle the endpoint is refused.
    let other = Strata::start(&d.join("data2"), &[]);
    let r = request(other.addr, "POST", "/-/reload", &[], &[]).unwrap();
    assert_eq!(r.status, 403);
}

/// `strata check rules` and `promtool check rules` (Prometheus 2.42) agree on which files
/// are valid.
#[test]
fn strata_and_promtool_agree_on_rule_files() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str)] = &[
        ("recording", "groups:\n  - name: example\n    rules:\n    - record: code:prometheus_http_requests_total:sum\n      expr: sum by (code) (prometheus_http_requests_total)\n"),
        ("alerting", "groups:\n- name: example\n  rules:\n  - alert: HighRequestLatency\n    expr: job:request_latency_seconds:mean5m{job=\"myjob\"} > 0.5\n    for: 10m\n    keep_firing_for: 5m\n    labels:\n      severity: page\n    annotations:\n      summary: High request latency\n      description: \"{{ $labels.instance }} at {{ $value | humanizeDuration }}, {{ printf \\\"%.2f\\\" $value }}\"\n"),
        ("empty", ""),
        ("templates", "groups:\n- name: t\n  rules:\n  - alert: A\n    expr: up == 0\n    annotations:\n      x: \"{{ if gt $value 1.0 }}{{ $labels.job | toUpper }}{{ else }}{{ reReplaceAll \\\"a\\\" \\\"b\\\" $labels.job }}{{ end }}\"\n      y: \"{{ range query \\\"up\\\" }}{{ .Labels.instance }}{{ end }}\"\n"),
        ("bad-expr", "groups:\n- name: g\n  rules:\n  - record: x\n    expr: sum(up\n"),
        ("bad-record-name", "groups:\n- name: g\n  rules:\n  - record: bad-name\n    expr: up\n"),
        ("annotations-on-record", "groups:\n- name: g\n  rules:\n  - record: x\n    expr: up\n    annotations: {a: b}\n"),
        ("unknown-field", "groups:\n- name: g\n  rules:\n  - alert: x\n    expr: up\n    bogus: 1\n"),
        ("duplicate-group", "groups:\n- name: g\n  rules: []\n- name: g\n  rules: []\n"),
        ("bad-template", "groups:\n- name: g\n  rules:\n  - alert: x\n    expr: up\n    annotations: {s: \"{{ nosuch }}\"}\n"),
        ("bad-label-name", "groups:\n- name: g\n  rules:\n  - alert: x\n    expr: up\n    labels: {\"1a\": b}\n"),
        ("bad-duration", "groups:\n- name: g\n  rules:\n  - alert: x\n    expr: up\n    for: 5x\n"),
        ("record-and-alert", "groups:\n- name: g\n  rules:\n  - alert: x\n    record: y\n    expr: up\n"),
        ("no-expr", "groups:\n- name: g\n  rules:\n  - alert: q\n"),
        ("for-on-record", "groups:\n- name: g\n  rules:\n  - record: x\n    expr: up\n    for: 1m\n"),
        ("empty-group-name", "groups:\n- name: \"\"\n  rules: []\n"),
        ("not-yaml", "groups: [\n"),
    ];
    for (name, text) in cases {
        let path = dir.path().join(format!("{name}.yml"));
        std::fs::write(&path, text).unwrap();
        let promtool = Command::new("promtool")
            .args(["check", "rules"])
            .arg(&path)
            .output()
            .expect("promtool is needed (apt-get install prometheus)");
        let strata = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["check", "rules"])
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(
            strata.status.success(),
            promtool.status.success(),
            "{name}: promtool said\n{}{}\nstrata said\n{}",
            String::from_utf8_lossy(&promtool.stdout),
            String::from_utf8_lossy(&promtool.stderr),
            String::from_utf8_lossy(&strata.stdout),
        );
    }
}

/// The same rule file in Prometheus 2.42 and in strata, over the same data: `/api/v1/rules`
/// and `/api/v1/alerts` carry the same fields and the same values where they do not
/// depend on timing.
#[test]
fn rules_and_alerts_api_match_prometheus() {
    let rules = r#"groups:
- name: shapes
  interval: 1s
  rules:
  - record: job:up:sum
    expr: sum by (job) (up)
    labels:
      source: rule
  - alert: InstanceDown
    expr: up == 0
    for: 0s
    keep_firing_for: 1m
    labels:
      severity: page
    annotations:
      summary: "{{ $labels.instance }} down, value {{ $value }}"
  - alert: NeverFires
    expr: up > 100
    for: 5m
"#;
    let prom = common::Prometheus::start_with(
        "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n",
        &[("rules.yml", rules)],
    )
    .expect("prometheus is needed (apt-get install prometheus)");
    let dir = tempfile::tempdir().unwrap();
    let s = start_with_config(
        dir.path(),
        "global:\n  evaluation_interval: 1s\nrule_files: [rules.yml]\n",
        rules,
        &[],
    );
    let body = write_body(&[
        Ts {
            labels: vec![("__name__", "up"), ("instance", "a:9100"), ("job", "node")],
            samples: vec![(now_ms(), 0.0)],
        },
        Ts {
            labels: vec![("__name__", "up"), ("instance", "b:9100"), ("job", "node")],
            samples: vec![(now_ms(), 1.0)],
        },
    ]);
    for addr in [prom.addr, s.addr] {
        let r = post_write(addr, &body).unwrap();
        assert!(r.status / 100 == 2, "{addr}: {} {}", r.status, r.body);
    }
    let get = |addr, path: &str| -> serde_json::Value {
        serde_json::from_str(&request(addr, "GET", path, &[], &[]).unwrap().body).unwrap()
    };
    let firing = |addr| {
        wait_for(Duration::from_secs(30), "a firing alert", || {
            let v = get(addr, "/api/v1/alerts");
            (v["data"]["alerts"][0]["state"] == "firing").then_some(v)
        })
    };
    let (pa, sa) = (firing(prom.addr), firing(s.addr));
    let (pr, sr) = (
        get(prom.addr, "/api/v1/rules"),
        get(s.addr, "/api/v1/rules"),
    );

    fn keys(v: &serde_json::Value) -> Vec<String> {
        let mut k: Vec<String> = v.as_object().unwrap().keys().cloned().collect();
        k.sort();
        k
    }
    let (pg, sg) = (&pr["data"]["groups"][0], &sr["data"]["groups"][0]);
    assert_eq!(keys(pg), keys(sg), "group fields");
    for f in ["name", "interval", "limit"] {
        assert_eq!(pg[f], sg[f], "group {f}");
    }
    for i in 0..3 {
        let (p, r) = (&pg["rules"][i], &sg["rules"][i]);
        assert_eq!(keys(p), keys(r), "rule {i} fields: {p} vs {r}");
        for f in [
            "name",
            "query",
            "labels",
            "annotations",
            "health",
            "type",
            "state",
            "duration",
            "keepFiringFor",
        ] {
            assert_eq!(p[f], r[f], "rule {i} {f}");
        }
        if let Some(alerts) = p["alerts"].as_array() {
            assert_eq!(alerts.len(), r["alerts"].as_array().unwrap().len());
            for (a, b) in alerts.iter().zip(r["alerts"].as_array().unwrap()) {
                assert_eq!(keys(a), keys(b), "alert fields");
                for f in ["labels", "annotations", "state", "value"] {
                    assert_eq!(a[f], b[f], "alert {f}");
                }
            }
        }
    }
    let (a, b) = (&pa["data"]["alerts"][0], &sa["data"]["alerts"][0]);
    assert_eq!(keys(a), keys(b));
    assert_eq!(a["labels"], b["labels"]);
    assert_eq!(a["annotations"]["summary"], "a:9100 down, value 0");
    assert_eq!(a["annotations"], b["annotations"]);
    // The type filter.
    let only = get(s.addr, "/api/v1/rules?type=record");
    let prom_only = get(prom.addr, "/api/v1/rules?type=record");
    assert_eq!(
        only["data"]["groups"][0]["rules"].as_array().unwrap().len(),
        prom_only["data"]["groups"][0]["rules"]
            .as_array()
            .unwrap()
            .len()
    );
}

/// Alerts reach an Alertmanager that serves https, verified against the test's CA.
#[test]
fn alerts_reach_an_https_alertmanager() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    common::make_test_certificates(d);
    std::fs::write(
        d.join("am-web.yml"),
        format!(
            "tls_server_config:\n  cert_file: {}\n  key_file: {}\n",
            d.join("server.pem").display(),
            d.join("server.key").display()
        ),
    )
    .unwrap();
    let receiver = Receiver::start();
    let (_am, am_addr) = common::start_alertmanager_with(
        d,
        &format!("http://{}/am", receiver.addr),
        Some(&d.join("am-web.yml")),
    );
    let config = format!(
        "global: {{evaluation_interval: 1s}}\nrule_files: [rules.yml]\nalerting:\n  alertmanagers:\n    - scheme: https\n      tls_config: {{ca_file: ca.pem}}\n      static_configs: [{{targets: [\"{am_addr}\"]}}]\n"
    );
    let rules = "groups:\n- name: g\n  rules:\n  - alert: Secure\n    expr: vector(1)\n";
    let s = start_with_config(d, &config, rules, &[]);
    let got = wait_for(Duration::from_secs(30), "the alert through https", || {
        receiver
            .received()
            .into_iter()
            .find(|r| r.path == "/am" && r.json()["alerts"][0]["labels"]["alertname"] == "Secure")
    });
    assert_eq!(got.json()["status"], "firing");
    let ams = s.get("/api/v1/alertmanagers").json();
    assert_eq!(
        ams["data"]["activeAlertmanagers"][0]["url"],
        format!("https://{am_addr}/api/v2/alerts")
    );
}
