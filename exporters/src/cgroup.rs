//! cAdvisor-compatible container families read from the cgroup filesystem, for cgroup v2
//! (unified), v1, and hybrid hosts (v1 controllers beside a v2 `unified` mount: the v1
//! controllers are read).
//!
//! ```text
//!  /sys/fs/cgroup ─┬─ cgroup.controllers? ──> v2: one tree, cpu.stat, memory.*, io.stat, pids
//!                  └─ cpuacct/, memory/, cpu/, pids/, blkio/ ──> v1: a tree per controller
//!  every cgroup ──> container_*{id="/path", name, image} (name and image for Docker
//!                   containers whose config is readable, else empty)
//! ```
//!
//! Every cgroup is reported, as cAdvisor reports raw cgroups; `id` is its path from the
//! root (`/` for the root), so `/system.slice/docker-<id>.scope` and `/docker/<id>` keep
//! the paths dashboards filter on.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use strata_storage::Labels;

use crate::{Collector, ExporterError, Sample};

/// Kernel clock ticks per second in `cpuacct.stat`.
const USER_HZ: f64 = 100.0;
/// Deepest cgroup nesting walked.
const MAX_DEPTH: usize = 16;
/// Most cgroups reported in one collection.
const MAX_CGROUPS: usize = 10_000;

/// The cgroup collector, rooted at a cgroup mount point (normally `/sys/fs/cgroup`).
pub struct Cgroups {
    root: PathBuf,
    /// Where Docker keeps container configs (normally `/var/lib/docker/containers`).
    docker: PathBuf,
    /// procfs, for containers' network counters (normally `/proc`).
    proc: PathBuf,
    /// containerd's task state, for CRI containers' pod and container names.
    containerd: PathBuf,
    /// Docker's engine API socket, asked when a container's config cannot be read.
    docker_socket: PathBuf,
    /// What the engine answered, by container id (`None`: it does not know it).
    engine_cache: std::sync::Mutex<std::collections::HashMap<String, Option<Identity>>>,
}

impl Cgroups {
    pub fn new(root: impl Into<PathBuf>, docker_containers: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            docker: docker_containers.into(),
            proc: PathBuf::from("/proc"),
            containerd: PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/k8s.io"),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            engine_cache: Default::default(),
        }
    }

    /// Asks the Docker engine at `socket` (normally `/var/run/docker.sock`) for names and
    /// images that Docker's on-disk configs do not give.
    pub fn with_docker_socket(mut self, socket: impl Into<PathBuf>) -> Self {
        self.docker_socket = socket.into();
        self
    }

    /// A container's identity from the Docker engine API, asked once per container.
    fn engine_identity(&self, cid: &str) -> Option<Identity> {
        let mut cache = self
            .engine_cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(known) = cache.get(cid) {
            return known.clone();
        }
        let found = if self.docker_socket.exists() {
            engine_inspect(&self.docker_socket, cid)
        } else {
            None
        };
        if cache.len() > 50_000 {
            cache.clear();
        }
        cache.insert(cid.to_string(), found.clone());
        found
    }

    /// Reads containerd's OCI bundles from `state` instead of its default place.
    pub fn with_containerd(mut self, state: impl Into<PathBuf>) -> Self {
        self.containerd = state.into();
        self
    }

    /// Reads processes' network counters from `proc` instead of `/proc`.
    pub fn with_proc(mut self, proc: impl Into<PathBuf>) -> Self {
        self.proc = proc.into();
        self
    }

    /// `container_network_*_total{interface}` of a container with a network namespace of
    /// its own, read through one of its processes (`/proc/<pid>/net/dev`).
    fn network(&self, cgroup_dir: &Path, e: &mut Emit<'_>) {
        let procs = read_trim(&cgroup_dir.join("cgroup.procs"))
            .or_else(|| read_trim(&cgroup_dir.join("tasks")))
            .unwrap_or_default();
        let Some(pid) = procs.lines().next().filter(|p| !p.is_empty()) else {
            return;
        };
        let ns = |p: &Path| std::fs::read_link(p).ok();
        let theirs = ns(&self.proc.join(pid).join("ns/net"));
        if theirs.is_none() || theirs == ns(&self.proc.join("self/ns/net")) {
            // The host's namespace: its counters are the host's, not the container's.
            return;
        }
        let Ok(text) = std::fs::read_to_string(self.proc.join(pid).join("net/dev")) else {
            return;
        };
        for line in text.lines().skip(2) {
            let Some((dev, rest)) = line.split_once(':') else {
                continue;
            };
            let dev = dev.trim();
            if dev == "lo" {
                continue;
            }
            let f: Vec<f64> = rest
                .split_whitespace()
                .map(|x| x.parse::<f64>().unwrap_or(0.0))
                .collect();
            if f.len() < 16 {
                continue;
            }
            let i = [("interface", dev)];
            e.put("container_network_receive_bytes_total", &i, f[0]);
            e.put("container_network_receive_packets_total", &i, f[1]);
            e.put("container_network_receive_errors_total", &i, f[2]);
            e.put("container_network_receive_packets_dropped_total", &i, f[3]);
            e.put("container_network_transmit_bytes_total", &i, f[8]);
            e.put("container_network_transmit_packets_total", &i, f[9]);
            e.put("container_network_transmit_errors_total", &i, f[10]);
            e.put(
                "container_network_transmit_packets_dropped_total",
                &i,
                f[11],
            );
        }
    }
}

fn read_trim(p: &Path) -> Option<String> {
    std::fs::read_to_string(p)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_num(p: &Path) -> Option<f64> {
    read_trim(p)?.parse::<f64>().ok()
}

/// Non-empty lines of a file (`cgroup.procs`, `tasks`), if it can be read.
fn count_lines(p: &Path) -> Option<f64> {
    std::fs::read_to_string(p)
        .ok()
        .map(|t| t.lines().filter(|l| !l.trim().is_empty()).count() as f64)
}

/// `container_processes` (entries of `cgroup.procs`) and `container_threads`
/// (`pids.current`, or the entries of `cgroup.threads` / `tasks`), as cAdvisor counts them.
fn tasks(e: &mut Emit<'_>, procs_dir: &Path, pids_dir: &Path) {
    e.opt(
        "container_processes",
        count_lines(&procs_dir.join("cgroup.procs")),
    );
    let threads = read_num(&pids_dir.join("pids.current"))
        .or_else(|| count_lines(&procs_dir.join("cgroup.threads")))
        .or_else(|| count_lines(&procs_dir.join("tasks")));
    e.opt("container_threads", threads);
}

/// `container_memory_failures_total{failure_type,scope}` from `memory.stat`: page faults of
/// the cgroup itself (`container`) and of its subtree (`hierarchy`). Version 2 counts
/// hierarchically only, so both scopes carry the same figures, as in cAdvisor.
fn failures(
    e: &mut Emit<'_>,
    stat: &[(String, f64)],
    container: (&str, &str),
    hierarchy: (&str, &str),
) {
    for (scope, (minor, major)) in [("container", container), ("hierarchy", hierarchy)] {
        if let (Some(pg), Some(maj)) = (keyed(stat, minor), keyed(stat, major)) {
            e.put(
                "container_memory_failures_total",
                &[("failure_type", "pgfault"), ("scope", scope)],
                pg,
            );
            e.put(
                "container_memory_failures_total",
                &[("failure_type", "pgmajfault"), ("scope", scope)],
                maj,
            );
        }
    }
}

/// `key value` lines (`cpu.stat`, `memory.stat`, `memory.events`).
fn flat_keyed(p: &Path) -> Vec<(String, f64)> {
    std::fs::read_to_string(p)
        .map(|s| {
            s.lines()
                .filter_map(|l| {
                    let (k, v) = l.split_once(' ')?;
                    Some((k.to_string(), v.trim().parse::<f64>().ok()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn keyed(list: &[(String, f64)], key: &str) -> Option<f64> {
    list.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
}

/// Every cgroup directory under `base`, as paths relative to it (`""` for `base`).
fn walk(base: &Path) -> Vec<PathBuf> {
    let mut out = vec![PathBuf::new()];
    let mut i = 0;
    while i < out.len() && out.len() < MAX_CGROUPS {
        let rel = out[i].clone();
        i += 1;
        if rel.components().count() >= MAX_DEPTH {
            continue;
        }
        let Ok(entries) = std::fs::read_dir(base.join(&rel)) else {
            continue;
        };
        let mut children: Vec<PathBuf> = entries
            .filter_map(|e| e.ok())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| rel.join(e.file_name()))
            .collect();
        children.sort();
        out.extend(children);
    }
    out.truncate(MAX_CGROUPS);
    out
}

/// A Docker, containerd or Podman container id in a cgroup path's last element.
fn container_id(id: &str) -> Option<&str> {
    let last = id.rsplit('/').next().unwrap_or("");
    let hex = |s: &str| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit());
    for (prefix, suffix) in [
        ("docker-", ".scope"),
        ("cri-containerd-", ".scope"),
        ("libpod-", ".scope"),
        ("crio-", ".scope"),
        ("", ""),
    ] {
        if let Some(core) = last
            .strip_prefix(prefix)
            .and_then(|s| s.strip_suffix(suffix))
        {
            if hex(core) {
                return Some(core);
            }
        }
    }
    None
}

/// What is known of a container besides its cgroup path.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Identity {
    name: String,
    image: String,
    pod: String,
    namespace: String,
    container: String,
}

/// A Docker container's identity from its on-disk config, when readable (Kubernetes
/// pods run by Docker carry their pod in the container's labels).
fn docker_identity(docker: &Path, cid: &str) -> Option<Identity> {
    let text = std::fs::read_to_string(docker.join(cid).join("config.v2.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let label = |k: &str| v["Config"]["Labels"][k].as_str().unwrap_or("").to_string();
    Some(Identity {
        name: v["Name"].as_str()?.trim_start_matches('/').to_string(),
        image: v["Config"]["Image"].as_str().unwrap_or("").to_string(),
        pod: label("io.kubernetes.pod.name"),
        namespace: label("io.kubernetes.pod.namespace"),
        container: label("io.kubernetes.container.name"),
    })
}

/// `GET /containers/<id>/json` on Docker's engine socket (HTTP/1.0 over a Unix socket,
/// two seconds at most).
fn engine_inspect(socket: &Path, cid: &str) -> Option<Identity> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).ok()?;
    let limit = Some(std::time::Duration::from_secs(2));
    s.set_read_timeout(limit).ok()?;
    s.set_write_timeout(limit).ok()?;
    // One write: a request split over several could be half read when the engine
    // answers, and the engine's close would then reset the connection.
    let request = format!("GET /containers/{cid}/json HTTP/1.0\r\nHost: docker\r\n\r\n");
    s.write_all(request.as_bytes()).ok()?;
    let mut raw = Vec::new();
    s.take(4 << 20).read_to_end(&mut raw).ok()?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") && !head.starts_with("HTTP/1.0 200") {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(body).ok()?;
    let label = |k: &str| v["Config"]["Labels"][k].as_str().unwrap_or("").to_string();
    Some(Identity {
        name: v["Name"].as_str()?.trim_start_matches('/').to_string(),
        image: v["Config"]["Image"].as_str().unwrap_or("").to_string(),
        pod: label("io.kubernetes.pod.name"),
        namespace: label("io.kubernetes.pod.namespace"),
        container: label("io.kubernetes.container.name"),
    })
}

/// A containerd (CRI) container's identity from the annotations of its OCI bundle
/// (`<state>/<id>/config.json`), when readable.
fn containerd_identity(state: &Path, cid: &str) -> Option<Identity> {
    let text = std::fs::read_to_string(state.join(cid).join("config.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    let a = |k: &str| v["annotations"][k].as_str().unwrap_or("").to_string();
    let container = a("io.kubernetes.cri.container-name");
    if container.is_empty() {
        return None;
    }
    Some(Identity {
        name: container.clone(),
        image: a("io.kubernetes.cri.image-name"),
        pod: a("io.kubernetes.cri.sandbox-name"),
        namespace: a("io.kubernetes.cri.sandbox-namespace"),
        container,
    })
}

/// cAdvisor's conversion of a v2 `cpu.weight` (1–10000) to v1 shares (2–262144).
fn weight_to_shares(weight: f64) -> f64 {
    (2.0 + ((weight - 1.0) * 262_142.0) / 9_999.0).round()
}

/// Appends the samples of one cgroup.
struct Emit<'a> {
    out: &'a mut Vec<Sample>,
    id: &'a str,
    who: &'a Identity,
}

impl Emit<'_> {
    fn put(&mut self, metric: &str, extra: &[(&str, &str)], v: f64) {
        let w = self.who;
        let labels = [
            ("__name__", metric),
            ("id", self.id),
            ("image", w.image.as_str()),
            ("name", w.name.as_str()),
            ("pod", w.pod.as_str()),
            ("namespace", w.namespace.as_str()),
            ("container", w.container.as_str()),
        ];
        self.out.push(Sample {
            labels: Labels::from_pairs(labels.iter().copied().chain(extra.iter().copied())),
            value: v,
        });
    }

    fn opt(&mut self, metric: &str, v: Option<f64>) {
        if let Some(v) = v {
            self.put(metric, &[], v);
        }
    }
}

/// PSI totals (µs) of a `*.pressure` file, as `container_pressure_<res>_{waiting,stalled}_seconds_total`.
fn pressure(e: &mut Emit<'_>, file: &Path, resource: &str) {
    let Ok(text) = std::fs::read_to_string(file) else {
        return;
    };
    for line in text.lines() {
        let mut f = line.split_whitespace();
        let kind = match f.next() {
            Some("some") => "waiting",
            Some("full") => "stalled",
            _ => continue,
        };
        if let Some(total) = f
            .find_map(|x| x.strip_prefix("total="))
            .and_then(|t| t.parse::<f64>().ok())
        {
            e.put(
                &format!("container_pressure_{resource}_{kind}_seconds_total"),
                &[],
                total / 1e6,
            );
        }
    }
}

impl Cgroups {
    fn v2(&self, rel: &Path, e: &mut Emit<'_>) {
        let d = self.root.join(rel);
        let cpu = flat_keyed(&d.join("cpu.stat"));
        if let Some(u) = keyed(&cpu, "usage_usec") {
            e.put(
                "container_cpu_usage_seconds_total",
                &[("cpu", "total")],
                u / 1e6,
            );
        }
        e.opt(
            "container_cpu_user_seconds_total",
            keyed(&cpu, "user_usec").map(|v| v / 1e6),
        );
        e.opt(
            "container_cpu_system_seconds_total",
            keyed(&cpu, "system_usec").map(|v| v / 1e6),
        );
        e.opt("container_cpu_cfs_periods_total", keyed(&cpu, "nr_periods"));
        e.opt(
            "container_cpu_cfs_throttled_periods_total",
            keyed(&cpu, "nr_throttled"),
        );
        e.opt(
            "container_cpu_cfs_throttled_seconds_total",
            keyed(&cpu, "throttled_usec").map(|v| v / 1e6),
        );
        if let Some(max) = read_trim(&d.join("cpu.max")) {
            let mut f = max.split_whitespace();
            let (quota, period) = (f.next(), f.next().and_then(|p| p.parse::<f64>().ok()));
            if let Some(q) = quota.and_then(|q| q.parse::<f64>().ok()) {
                e.put("container_spec_cpu_quota", &[], q);
            }
            e.opt("container_spec_cpu_period", period);
        }
        e.opt(
            "container_spec_cpu_shares",
            read_num(&d.join("cpu.weight")).map(weight_to_shares),
        );
        let usage = read_num(&d.join("memory.current"));
        let mem = flat_keyed(&d.join("memory.stat"));
        e.opt("container_memory_usage_bytes", usage);
        if let Some(u) = usage {
            let inactive = keyed(&mem, "inactive_file").unwrap_or(0.0);
            e.put(
                "container_memory_working_set_bytes",
                &[],
                (u - inactive).max(0.0),
            );
        }
        e.opt("container_memory_rss", keyed(&mem, "anon"));
        e.opt("container_memory_cache", keyed(&mem, "file"));
        e.opt(
            "container_memory_swap",
            read_num(&d.join("memory.swap.current")),
        );
        if let Some(limit) = read_trim(&d.join("memory.max")) {
            // "max" is no limit, which cAdvisor reports as 0.
            e.put(
                "container_spec_memory_limit_bytes",
                &[],
                limit.parse::<f64>().unwrap_or(0.0),
            );
        }
        let events = flat_keyed(&d.join("memory.events"));
        e.opt("container_memory_failcnt", keyed(&events, "max"));
        e.opt("container_oom_events_total", keyed(&events, "oom_kill"));
        tasks(e, &d, &d);
        failures(
            e,
            &mem,
            ("pgfault", "pgmajfault"),
            ("pgfault", "pgmajfault"),
        );
        if let Ok(io) = std::fs::read_to_string(d.join("io.stat")) {
            let (mut r, mut w) = (0.0, 0.0);
            for line in io.lines() {
                for kv in line.split_whitespace().skip(1) {
                    match kv.split_once('=') {
                        Some(("rbytes", v)) => r += v.parse::<f64>().unwrap_or(0.0),
                        Some(("wbytes", v)) => w += v.parse::<f64>().unwrap_or(0.0),
                        _ => {}
                    }
                }
            }
            e.put("container_fs_reads_bytes_total", &[], r);
            e.put("container_fs_writes_bytes_total", &[], w);
        }
        for res in ["cpu", "memory", "io"] {
            pressure(e, &d.join(format!("{res}.pressure")), res);
        }
    }

    /// The directory of a v1 controller (mounted alone or combined, `cpu,cpuacct`).
    fn v1_dir(&self, controller: &str) -> Option<PathBuf> {
        let alone = self.root.join(controller);
        if alone.is_dir() {
            return Some(alone);
        }
        std::fs::read_dir(&self.root)
            .ok()?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.split(',').any(|c| c == controller))
            })
    }

    fn v1(&self, rel: &Path, e: &mut Emit<'_>) {
        if let Some(acct) = self.v1_dir("cpuacct").map(|b| b.join(rel)) {
            if let Some(ns) = read_num(&acct.join("cpuacct.usage")) {
                e.put(
                    "container_cpu_usage_seconds_total",
                    &[("cpu", "total")],
                    ns / 1e9,
                );
            }
            let stat = flat_keyed(&acct.join("cpuacct.stat"));
            e.opt(
                "container_cpu_user_seconds_total",
                keyed(&stat, "user").map(|t| t / USER_HZ),
            );
            e.opt(
                "container_cpu_system_seconds_total",
                keyed(&stat, "system").map(|t| t / USER_HZ),
            );
        }
        if let Some(cpu) = self.v1_dir("cpu").map(|b| b.join(rel)) {
            let stat = flat_keyed(&cpu.join("cpu.stat"));
            e.opt(
                "container_cpu_cfs_periods_total",
                keyed(&stat, "nr_periods"),
            );
            e.opt(
                "container_cpu_cfs_throttled_periods_total",
                keyed(&stat, "nr_throttled"),
            );
            e.opt(
                "container_cpu_cfs_throttled_seconds_total",
                keyed(&stat, "throttled_time").map(|ns| ns / 1e9),
            );
            // -1 is no quota: cAdvisor leaves the quota out then.
            e.opt(
                "container_spec_cpu_quota",
                read_num(&cpu.join("cpu.cfs_quota_us")).filter(|q| *q >= 0.0),
            );
            e.opt(
                "container_spec_cpu_period",
                read_num(&cpu.join("cpu.cfs_period_us")),
            );
            e.opt(
                "container_spec_cpu_shares",
                read_num(&cpu.join("cpu.shares")),
            );
        }
        if let Some(mem) = self.v1_dir("memory").map(|b| b.join(rel)) {
            let usage = read_num(&mem.join("memory.usage_in_bytes"));
            let stat = flat_keyed(&mem.join("memory.stat"));
            e.opt("container_memory_usage_bytes", usage);
            if let Some(u) = usage {
                let inactive = keyed(&stat, "total_inactive_file").unwrap_or(0.0);
                e.put(
                    "container_memory_working_set_bytes",
                    &[],
                    (u - inactive).max(0.0),
                );
            }
            failures(
                e,
                &stat,
                ("pgfault", "pgmajfault"),
                ("total_pgfault", "total_pgmajfault"),
            );
            e.opt("container_memory_rss", keyed(&stat, "total_rss"));
            e.opt("container_memory_cache", keyed(&stat, "total_cache"));
            if let (Some(memsw), Some(u)) =
                (read_num(&mem.join("memory.memsw.usage_in_bytes")), usage)
            {
                e.put("container_memory_swap", &[], (memsw - u).max(0.0));
            }
            e.opt(
                "container_memory_failcnt",
                read_num(&mem.join("memory.failcnt")),
            );
            if let Some(limit) = read_num(&mem.join("memory.limit_in_bytes")) {
                // Unlimited is a page-rounded maximum: cAdvisor reports it as 0.
                let unlimited = limit >= 9.0e18 || limit >= (1u64 << 62) as f64;
                e.put(
                    "container_spec_memory_limit_bytes",
                    &[],
                    if unlimited { 0.0 } else { limit },
                );
            }
            let oom = std::fs::read_to_string(mem.join("memory.oom_control"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .find_map(|l| l.strip_prefix("oom_kill "))
                        .and_then(|v| v.trim().parse::<f64>().ok())
                });
            e.opt("container_oom_events_total", oom);
        }
        let pids = self.v1_dir("pids").map(|b| b.join(rel));
        let cpu = self.v1_dir("cpu").map(|b| b.join(rel));
        if let Some(dir) = pids.as_ref().or(cpu.as_ref()) {
            tasks(e, dir, pids.as_ref().unwrap_or(dir));
        }
        if let Some(blkio) = self.v1_dir("blkio").map(|b| b.join(rel)) {
            if let Ok(t) = std::fs::read_to_string(blkio.join("blkio.throttle.io_service_bytes")) {
                let (mut r, mut w) = (0.0, 0.0);
                for line in t.lines() {
                    let f: Vec<&str> = line.split_whitespace().collect();
                    if f.len() == 3 {
                        let v = f[2].parse::<f64>().unwrap_or(0.0);
                        match f[1] {
                            "Read" => r += v,
                            "Write" => w += v,
                            _ => {}
                        }
                    }
                }
                e.put("container_fs_reads_bytes_total", &[], r);
                e.put("container_fs_writes_bytes_total", &[], w);
            }
        }
    }
}

impl Collector for Cgroups {
    fn name(&self) -> &'static str {
        "cgroup"
    }

    fn job(&self) -> &'static str {
        "cadvisor"
    }

    fn collect(&self, out: &mut Vec<Sample>) -> Result<(), ExporterError> {
        let unified = self.root.join("cgroup.controllers").exists();
        let base = if unified {
            self.root.clone()
        } else {
            self.v1_dir("cpuacct")
                .or_else(|| self.v1_dir("memory"))
                .ok_or_else(|| ExporterError::Parse {
                    path: self.root.clone(),
                    reason: "neither a cgroup v2 mount nor v1 cpuacct or memory controllers".into(),
                })?
        };
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        // v1: a cgroup may exist in some hierarchies only (a memory limit without a CPU
        // cgroup): every controller's tree counts.
        let mut paths: Vec<PathBuf> = walk(&base);
        if !unified {
            let mut all: std::collections::BTreeSet<PathBuf> = paths.into_iter().collect();
            for c in ["memory", "cpu", "pids", "blkio"] {
                if let Some(dir) = self.v1_dir(c) {
                    all.extend(walk(&dir));
                }
            }
            paths = all.into_iter().take(MAX_CGROUPS).collect();
        }
        for rel in paths {
            let id = format!("/{}", rel.display());
            let id = if id == "/" {
                id
            } else {
                id.trim_end_matches('/').to_string()
            };
            let who = container_id(&id)
                .and_then(|cid| {
                    docker_identity(&self.docker, cid)
                        .or_else(|| containerd_identity(&self.containerd, cid))
                        .or_else(|| self.engine_identity(cid))
                })
                .unwrap_or_default();
            let mut e = Emit {
                out,
                id: &id,
                who: &who,
            };
            if unified {
                self.v2(&rel, &mut e);
            } else {
                self.v1(&rel, &mut e);
            }
            let dir = if base.join(&rel).is_dir() {
                base.join(&rel)
            } else {
                // Only in other v1 hierarchies.
                ["memory", "cpu", "pids", "blkio"]
                    .iter()
                    .filter_map(|c| self.v1_dir(c))
                    .map(|d| d.join(&rel))
                    .find(|d| d.is_dir())
                    .unwrap_or_else(|| base.join(&rel))
            };
            // Any cgroup whose processes live in a network namespace of their own: a
            // container, a pod, or a service with a private network.
            if id != "/" {
                self.network(&dir, &mut e);
            }
            let started = std::fs::metadata(&dir)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
                .map(|d| d.as_secs_f64());
            e.opt("container_start_time_seconds", started);
            e.put("container_last_seen", &[], now);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        for (name, text) in files {
            let p = dir.path().join(name);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
            }
            std::fs::write(p, text).unwrap_or_else(|e| panic!("{e}"));
        }
        dir
    }

    fn get(out: &[Sample], metric: &str, id: &str) -> Option<f64> {
        out.iter()
            .find(|s| s.labels.metric_name() == Some(metric) && s.labels.get("id") == Some(id))
            .map(|s| s.value)
    }

    const DOCKER: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    /// `container_memory_failures_total{failure_type,scope}` of cgroup `id`.
    fn fault(out: &[Sample], id: &str, ty: &str, scope: &str) -> Option<f64> {
        out.iter()
            .find(|s| {
                s.labels.metric_name() == Some("container_memory_failures_total")
                    && s.labels.get("id") == Some(id)
                    && s.labels.get("failure_type") == Some(ty)
                    && s.labels.get("scope") == Some(scope)
            })
            .map(|s| s.value)
    }

    #[test]
    fn cgroup_v2_with_a_docker_container() {
        let scope = format!("system.slice/docker-{DOCKER}.scope");
        let files = [
            ("cgroup.controllers".to_string(), "cpu memory io pids\n".to_string()),
            ("cpu.stat".into(), "usage_usec 9000000\nuser_usec 6000000\nsystem_usec 3000000\n".into()),
            (format!("{scope}/cpu.stat"), "usage_usec 2500000\nuser_usec 2000000\nsystem_usec 500000\nnr_periods 100\nnr_throttled 7\nthrottled_usec 350000\n".into()),
            (format!("{scope}/cpu.max"), "50000 100000\n".into()),
            (format!("{scope}/cpu.weight"), "100\n".into()),
            (format!("{scope}/memory.current"), "104857600\n".into()),
            (format!("{scope}/memory.stat"), "anon 52428800\nfile 41943040\ninactive_file 20971520\npgfault 5000\npgmajfault 7\n".into()),
            (format!("{scope}/memory.max"), "max\n".into()),
            (format!("{scope}/memory.swap.current"), "4096\n".into()),
            (format!("{scope}/memory.events"), "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n".into()),
            (format!("{scope}/pids.current"), "12\n".into()),
            (format!("{scope}/io.stat"), "8:0 rbytes=1000 wbytes=2000 rios=1 wios=2\n8:16 rbytes=24 wbytes=48 rios=1 wios=1\n".into()),
            (format!("{scope}/memory.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=2500000\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=1000000\n".into()),
            (format!("docker/{DOCKER}/config.v2.json"), r#"{"Name":"/web","Config":{"Image":"nginx:1.25"}}"#.into()),
            (format!("{scope}/cgroup.procs"), "4242\n4243\n".into()),
            ("proc/4242/net/dev".into(), "Inter-|   Receive\n face |bytes\n    lo: 9 9 0 0 0 0 0 0 9 9 0 0 0 0 0 0\n  eth0: 1000 10 1 2 0 0 0 0 3000 30 3 4 0 0 0 0\n".into()),
        ];
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let dir = tree(&refs);
        // The container's process is in a network namespace of its own.
        std::fs::create_dir_all(dir.path().join("proc/4242/ns")).unwrap_or_else(|e| panic!("{e}"));
        std::fs::create_dir_all(dir.path().join("proc/self/ns")).unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("net:[4026532001]", dir.path().join("proc/4242/ns/net"))
            .unwrap_or_else(|e| panic!("{e}"));
        std::os::unix::fs::symlink("net:[4026531992]", dir.path().join("proc/self/ns/net"))
            .unwrap_or_else(|e| panic!("{e}"));
        let c =
            Cgroups::new(dir.path(), dir.path().join("docker")).with_proc(dir.path().join("proc"));
        let mut out = Vec::new();
        c.collect(&mut out).unwrap_or_else(|e| panic!("{e}"));
        let id = format!("/{scope}");
        assert_eq!(
            get(&out, "container_cpu_usage_seconds_total", &id),
            Some(2.5)
        );
        assert_eq!(
            get(&out, "container_cpu_usage_seconds_total", "/"),
            Some(9.0)
        );
        assert_eq!(
            get(&out, "container_cpu_cfs_throttled_periods_total", &id),
            Some(7.0)
        );
        assert_eq!(
            get(&out, "container_cpu_cfs_throttled_seconds_total", &id),
            Some(0.35)
        );
        assert_eq!(get(&out, "container_spec_cpu_quota", &id), Some(50_000.0));
        assert_eq!(get(&out, "container_spec_cpu_period", &id), Some(100_000.0));
        assert_eq!(get(&out, "container_spec_cpu_shares", &id), Some(2597.0));
        assert_eq!(
            get(&out, "container_memory_usage_bytes", &id),
            Some(104_857_600.0)
        );
        assert_eq!(
            get(&out, "container_memory_working_set_bytes", &id),
            Some(83_886_080.0)
        );
        assert_eq!(get(&out, "container_memory_rss", &id), Some(52_428_800.0));
        assert_eq!(get(&out, "container_memory_cache", &id), Some(41_943_040.0));
        assert_eq!(
            get(&out, "container_spec_memory_limit_bytes", &id),
            Some(0.0)
        );
        assert_eq!(get(&out, "container_memory_failcnt", &id), Some(3.0));
        assert_eq!(get(&out, "container_oom_events_total", &id), Some(1.0));
        assert_eq!(get(&out, "container_processes", &id), Some(2.0));
        assert_eq!(get(&out, "container_threads", &id), Some(12.0));
        let fault = |ty: &str, scope: &str| fault(&out, &id, ty, scope);
        assert_eq!(fault("pgfault", "container"), Some(5000.0));
        assert_eq!(fault("pgmajfault", "hierarchy"), Some(7.0));
        assert_eq!(
            get(&out, "container_fs_reads_bytes_total", &id),
            Some(1024.0)
        );
        assert_eq!(
            get(&out, "container_fs_writes_bytes_total", &id),
            Some(2048.0)
        );
        assert_eq!(
            get(&out, "container_pressure_memory_stalled_seconds_total", &id),
            Some(1.0)
        );
        let s = out
            .iter()
            .find(|s| s.labels.get("id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no sample for {id}"));
        assert_eq!(s.labels.get("name"), Some("web"));
        assert_eq!(s.labels.get("image"), Some("nginx:1.25"));
        assert!(get(&out, "container_last_seen", &id).is_some_and(|t| t > 1.7e9));
        assert_eq!(
            get(&out, "container_network_receive_bytes_total", &id),
            Some(1000.0)
        );
        assert_eq!(
            get(
                &out,
                "container_network_transmit_packets_dropped_total",
                &id
            ),
            Some(4.0)
        );
        assert!(
            !out.iter().any(|s| s.labels.get("interface") == Some("lo")),
            "the loopback is not reported"
        );
    }

    #[test]
    fn cgroup_v1_hybrid_with_combined_controllers() {
        let files = [
            ("unified/cgroup.controllers".to_string(), String::new()),
            ("cpu,cpuacct/cpuacct.usage".into(), "5000000000\n".into()),
            (format!("cpu,cpuacct/docker/{DOCKER}/cpuacct.usage"), "1500000000\n".into()),
            (format!("cpu,cpuacct/docker/{DOCKER}/cpuacct.stat"), "user 100\nsystem 50\n".into()),
            (format!("cpu,cpuacct/docker/{DOCKER}/cpu.stat"), "nr_periods 10\nnr_throttled 2\nthrottled_time 2000000000\n".into()),
            (format!("cpu,cpuacct/docker/{DOCKER}/cpu.cfs_quota_us"), "-1\n".into()),
            (format!("cpu,cpuacct/docker/{DOCKER}/cpu.shares"), "1024\n".into()),
            (format!("memory/docker/{DOCKER}/memory.usage_in_bytes"), "2000000\n".into()),
            (format!("memory/docker/{DOCKER}/memory.stat"), "cache 100\nrss 200\ntotal_cache 1000\ntotal_rss 500000\ntotal_inactive_file 300000\npgfault 10\npgmajfault 1\ntotal_pgfault 100\ntotal_pgmajfault 2\n".into()),
            (format!("memory/docker/{DOCKER}/memory.limit_in_bytes"), "9223372036854771712\n".into()),
            (format!("memory/docker/{DOCKER}/memory.failcnt"), "4\n".into()),
            (format!("pids/docker/{DOCKER}/pids.current"), "3\n".into()),
            (format!("pids/docker/{DOCKER}/cgroup.procs"), "7001\n".into()),
            (format!("blkio/docker/{DOCKER}/blkio.throttle.io_service_bytes"), "8:0 Read 4096\n8:0 Write 8192\n8:0 Total 12288\nTotal 12288\n".into()),
            ("memory/sandbox/memory.usage_in_bytes".into(), "4096\n".into()),
        ];
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let dir = tree(&refs);
        let c = Cgroups::new(dir.path(), dir.path().join("no-docker"));
        let mut out = Vec::new();
        c.collect(&mut out).unwrap_or_else(|e| panic!("{e}"));
        let id = format!("/docker/{DOCKER}");
        assert_eq!(
            get(&out, "container_cpu_usage_seconds_total", "/"),
            Some(5.0)
        );
        assert_eq!(
            get(&out, "container_cpu_usage_seconds_total", &id),
            Some(1.5)
        );
        assert_eq!(
            get(&out, "container_cpu_user_seconds_total", &id),
            Some(1.0)
        );
        assert_eq!(
            get(&out, "container_cpu_cfs_throttled_seconds_total", &id),
            Some(2.0)
        );
        assert_eq!(get(&out, "container_spec_cpu_quota", &id), None);
        assert_eq!(get(&out, "container_spec_cpu_shares", &id), Some(1024.0));
        assert_eq!(
            get(&out, "container_memory_working_set_bytes", &id),
            Some(1_700_000.0)
        );
        assert_eq!(get(&out, "container_memory_rss", &id), Some(500_000.0));
        assert_eq!(
            get(&out, "container_spec_memory_limit_bytes", &id),
            Some(0.0)
        );
        assert_eq!(get(&out, "container_memory_failcnt", &id), Some(4.0));
        assert_eq!(get(&out, "container_processes", &id), Some(1.0));
        assert_eq!(get(&out, "container_threads", &id), Some(3.0));
        let fault = |ty: &str, scope: &str| fault(&out, &id, ty, scope);
        assert_eq!(fault("pgfault", "container"), Some(10.0));
        assert_eq!(fault("pgfault", "hierarchy"), Some(100.0));
        assert_eq!(fault("pgmajfault", "hierarchy"), Some(2.0));
        assert_eq!(
            get(&out, "container_fs_reads_bytes_total", &id),
            Some(4096.0)
        );
        assert_eq!(
            get(&out, "container_memory_usage_bytes", "/sandbox"),
            Some(4096.0),
            "a cgroup in the memory hierarchy only"
        );
        let s = out
            .iter()
            .find(|s| s.labels.get("id") == Some(id.as_str()))
            .unwrap_or_else(|| panic!("no sample"));
        assert_eq!(
            s.labels.get("name"),
            None,
            "no config: empty name, no label"
        );
    }

    #[test]
    fn kubernetes_pods_from_containerd_annotations() {
        let scope = format!("kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234.slice/cri-containerd-{DOCKER}.scope");
        let files = [
            ("cg/cgroup.controllers".to_string(), String::new()),
            (format!("cg/{scope}/cpu.stat"), "usage_usec 1000000\n".to_string()),
            (
                format!("k8s/{DOCKER}/config.json"),
                r#"{"annotations":{"io.kubernetes.cri.container-name":"app","io.kubernetes.cri.sandbox-name":"web-7d9f","io.kubernetes.cri.sandbox-namespace":"shop","io.kubernetes.cri.image-name":"registry/web:2"}}"#.to_string(),
            ),
        ];
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let dir = tree(&refs);
        let c = Cgroups::new(dir.path().join("cg"), dir.path().join("no-docker"))
            .with_containerd(dir.path().join("k8s"));
        let mut out = Vec::new();
        c.collect(&mut out).unwrap_or_else(|e| panic!("{e}"));
        let id = format!("/{scope}");
        let s = out
            .iter()
            .find(|s| {
                s.labels.metric_name() == Some("container_cpu_usage_seconds_total")
                    && s.labels.get("id") == Some(id.as_str())
            })
            .unwrap_or_else(|| panic!("no sample for {id}"));
        assert_eq!(s.value, 1.0);
        assert_eq!(s.labels.get("pod"), Some("web-7d9f"));
        assert_eq!(s.labels.get("namespace"), Some("shop"));
        assert_eq!(s.labels.get("container"), Some("app"));
        assert_eq!(s.labels.get("image"), Some("registry/web:2"));
    }

    #[test]
    fn ids_from_runtimes_paths() {
        assert_eq!(container_id(&format!("/docker/{DOCKER}")), Some(DOCKER));
        assert_eq!(
            container_id(&format!("/system.slice/docker-{DOCKER}.scope")),
            Some(DOCKER)
        );
        assert_eq!(
            container_id(&format!(
                "/kubepods.slice/kubepods-pod1.slice/cri-containerd-{DOCKER}.scope"
            )),
            Some(DOCKER)
        );
        assert_eq!(
            container_id(&format!("/machine.slice/libpod-{DOCKER}.scope")),
            Some(DOCKER)
        );
        assert_eq!(container_id("/system.slice/sshd.service"), None);
        assert_eq!(weight_to_shares(1.0), 2.0);
        assert_eq!(weight_to_shares(10_000.0), 262_144.0);
    }

    #[test]
    fn this_machine() {
        // The real cgroup mount of the machine running the tests, whatever its layout.
        let c = Cgroups::new("/sys/fs/cgroup", "/var/lib/docker/containers");
        let mut out = Vec::new();
        c.collect(&mut out).unwrap_or_else(|e| panic!("{e}"));
        assert!(get(&out, "container_cpu_usage_seconds_total", "/").unwrap_or(0.0) > 0.0);
    }

    #[test]
    fn names_come_from_the_docker_engine_when_the_config_is_unreadable() {
        use std::io::{Read, Write};
        let scope = format!("system.slice/docker-{DOCKER}.scope");
        let files = [
            ("cgroup.controllers".to_string(), "cpu memory\n".to_string()),
            (format!("{scope}/memory.current"), "4096\n".into()),
        ];
        let refs: Vec<(&str, &str)> = files
            .iter()
            .map(|(a, b)| (a.as_str(), b.as_str()))
            .collect();
        let dir = tree(&refs);
        let socket = dir.path().join("docker.sock");
        let listener =
            std::os::unix::net::UnixListener::bind(&socket).unwrap_or_else(|e| panic!("{e}"));
        let served = std::thread::spawn(move || {
            let mut requests = Vec::new();
            // The engine is asked once; the second collection uses the cache.
            let Ok((mut c, _)) = listener.accept() else {
                return requests;
            };
            let mut raw = Vec::new();
            let mut buf = [0u8; 1024];
            while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => raw.extend_from_slice(&buf[..n]),
                }
            }
            requests.push(String::from_utf8_lossy(&raw).to_string());
            let body = r#"{"Name":"/api","Config":{"Image":"registry/api:7","Labels":{}}}"#;
            let _ = write!(
                c,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            requests
        });
        let c =
            Cgroups::new(dir.path(), dir.path().join("no-docker-dir")).with_docker_socket(&socket);
        for _ in 0..2 {
            let mut out = Vec::new();
            c.collect(&mut out).unwrap_or_else(|e| panic!("{e}"));
            let s = out
                .iter()
                .find(|s| s.labels.get("id") == Some(&*format!("/{scope}")))
                .unwrap_or_else(|| panic!("no sample for the container"));
            assert_eq!(s.labels.get("name"), Some("api"));
            assert_eq!(s.labels.get("image"), Some("registry/api:7"));
        }
        let requests = served.join().unwrap_or_default();
        assert_eq!(requests.len(), 1);
        assert!(
            requests[0].starts_with(&format!("GET /containers/{DOCKER}/json HTTP/1.0\r\n")),
            "{}",
            requests[0]
        );
    }
}
