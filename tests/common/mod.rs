//! Helpers for end-to-end tests: run the `strata` binary on a free loopback port with a
//! temporary data directory, talk HTTP/1.1 to it, and build remote-write bodies byte by
//! byte from the protobuf wire format (independently of strata's own decoder).

#![allow(dead_code, unreachable_pub, clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `strata serve`, killed when dropped.
pub struct Strata {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data_dir: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Strata {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Strata {
        Self::start_env(data_dir, extra, &[])
    }

    /// Like [`Strata::start`], with extra environment variables.
    pub fn start_env(data_dir: &Path, extra: &[&str], env: &[(&str, &str)]) -> Strata {
        Self::start_binary(
            Path::new(env!("CARGO_BIN_EXE_strata")),
            data_dir,
            extra,
            env,
        )
    }

    /// Like [`Strata::start_env`], running the binary at `bin`.
    pub fn start_binary(
        bin: &Path,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Strata {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        std::fs::create_dir_all(data_dir).expect("data dir");
        let log_path = data_dir.join("strata-test.log");
        let log = std::fs::File::create(&log_path).expect("log file");
        let child = Command::new(bin)
            .arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--listen")
            .arg(addr.to_string())
            // Tests that want the host collectors pass their own interval after this.
            .args(["--collect.interval", "0s"])
            .args(extra)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn strata");
        let s = Strata {
            child: Some(child),
            addr,
            data_dir: data_dir.to_owned(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = s.try_get("/-/ready") {
                if r.status == 200 {
                    return s;
                }
            }
            assert!(
                Instant::now() < deadline,
                "strata did not become ready; its log:\n{}",
                std::fs::read_to_string(&log_path).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the process has ended (reaping it if so).
    pub fn has_exited(&mut self) -> bool {
        matches!(
            self.child.as_mut().map(|c| c.try_wait()),
            Some(Ok(Some(_))) | None
        )
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL, then reap.
    pub fn kill9(mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait (bounded) for a clean exit; returns whether it exited 0.
    pub fn terminate(mut self) -> bool {
        let Some(mut c) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.success();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn try_get(&self, path: &str) -> std::io::Result<Response> {
        request(self.addr, "GET", path, &[], &[])
    }

    pub fn get(&self, path: &str) -> Response {
        self.try_get(path).expect("GET")
    }

    pub fn post_form(&self, path: &str, form: &str) -> Response {
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            form.as_bytes(),
        )
        .expect("POST")
    }

    pub fn write(&self, body: &[u8]) -> Response {
        post_write(self.addr, body).expect("POST write")
    }

    /// An instant query's JSON answer (`data`), asserting success.
    pub fn query(&self, q: &str, time: &str) -> serde_json::Value {
        let r = self.get(&format!("/api/v1/query?query={}&time={time}", enc(q)));
        assert_eq!(r.status, 200, "{q}: {}", r.body);
        let v = r.json();
        assert_eq!(v["status"], "success");
        v["data"].clone()
    }
}

impl Drop for Strata {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub struct Response {
    pub status: u16,
    pub headers: String,
    pub body: String,
    /// When the response's last byte had arrived (before it was parsed).
    pub received: std::time::Instant,
}

impl Response {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

/// Percent-encodes a query parameter.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// POSTs a remote-write 1.0 body (snappy protobuf) to `addr`, with the headers a sender
/// gives.
pub fn post_write(addr: SocketAddr, body: &[u8]) -> std::io::Result<Response> {
    request(
        addr,
        "POST",
        "/api/v1/write",
        &[
            ("Content-Type", "application/x-protobuf"),
            ("Content-Encoding", "snappy"),
            ("X-Prometheus-Remote-Write-Version", "0.1.0"),
        ],
        body,
    )
}

/// One HTTP/1.1 request with `Connection: close`; reads the whole answer (bounded).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let received = std::time::Instant::now();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(Response {
        status,
        headers: head.to_owned(),
        body,
        received,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

// --- protobuf wire format, written by hand from the remote-write 1.0 .proto ---------

pub fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

pub fn field_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    varint(out, ((field as u64) << 3) | 2);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A series to send: labels in the given order (possibly unsorted or invalid on purpose)
/// and `(timestamp_ms, value)` samples.
pub struct Ts<'a> {
    pub labels: Vec<(&'a str, &'a str)>,
    pub samples: Vec<(i64, f64)>,
}

/// `prometheus.WriteRequest` bytes (not compressed).
pub fn write_request_proto(series: &[Ts]) -> Vec<u8> {
    let mut req = Vec::new();
    for ts in series {
        let mut t = Vec::new();
        for (name, value) in &ts.labels {
            let mut l = Vec::new();
            field_bytes(&mut l, 1, name.as_bytes());
            field_bytes(&mut l, 2, value.as_bytes());
            field_bytes(&mut t, 1, &l);
        }
        for &(ts_ms, v) in &ts.samples {
            let mut s = Vec::new();
            s.push((1 << 3) | 1); // field 1, fixed64: value
            s.extend_from_slice(&v.to_bits().to_le_bytes());
            varint(&mut s, 2 << 3); // field 2, varint: timestamp
            varint(&mut s, ts_ms as u64);
            field_bytes(&mut t, 2, &s);
        }
        field_bytes(&mut req, 1, &t);
    }
    req
}

/// `io.prometheus.write.v2.Request` bytes, snappy-compressed: a symbol table (the empty
/// string first) and series of symbol references, each with its samples and, when
/// `help` is given, counter metadata.
pub fn write_body_v2(series: &[Ts], help: Option<&str>) -> Vec<u8> {
    fn sym(s: &str, symbols: &mut Vec<String>) -> u64 {
        match symbols.iter().position(|x| x == s) {
            Some(i) => i as u64,
            None => {
                symbols.push(s.to_string());
                (symbols.len() - 1) as u64
            }
        }
    }
    let mut table: Vec<String> = vec![String::new()];
    let mut body = Vec::new();
    let mut series_bytes = Vec::new();
    for ts in series {
        let mut t = Vec::new();
        let mut refs = Vec::new();
        for (name, value) in &ts.labels {
            varint(&mut refs, sym(name, &mut table));
            varint(&mut refs, sym(value, &mut table));
        }
        field_bytes(&mut t, 1, &refs);
        for &(ts_ms, v) in &ts.samples {
            let mut s = Vec::new();
            s.push((1 << 3) | 1);
            s.extend_from_slice(&v.to_bits().to_le_bytes());
            varint(&mut s, 2 << 3);
            varint(&mut s, ts_ms as u64);
            field_bytes(&mut t, 2, &s);
        }
        if let Some(h) = help {
            let mut m = Vec::new();
            varint(&mut m, 1 << 3);
            varint(&mut m, 1); // counter
            varint(&mut m, 3 << 3);
            varint(&mut m, sym(h, &mut table));
            field_bytes(&mut t, 5, &m);
        }
        field_bytes(&mut series_bytes, 5, &t);
    }
    for s in &table {
        field_bytes(&mut body, 4, s.as_bytes());
    }
    body.extend_from_slice(&series_bytes);
    snap::raw::Encoder::new().compress_vec(&body).unwrap()
}

/// A snappy-compressed remote-write body.
pub fn write_body(series: &[Ts]) -> Vec<u8> {
    snap::raw::Encoder::new()
        .compress_vec(&write_request_proto(series))
        .unwrap()
}

/// The `(value string)` of every series in an instant-vector answer, keyed by its
/// labels rendered as `k=v,k=v`.
pub fn vector_map(data: &serde_json::Value) -> std::collections::BTreeMap<String, String> {
    assert_eq!(data["resultType"], "vector", "{data}");
    data["result"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                labels_key(&s["metric"]),
                s["value"][1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

pub fn labels_key(metric: &serde_json::Value) -> String {
    let mut pairs: Vec<String> = metric
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        .collect();
    pairs.sort();
    pairs.join(",")
}

/// A real Prometheus (the `prometheus` binary, Debian's 2.42) on a free loopback port with
/// a temporary data directory and its remote-write receiver on; killed on drop.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// `None` when the binary is missing or does not become ready within a minute.
    pub fn start() -> Option<Prometheus> {
        Self::start_with("global:\n  scrape_interval: 15s\n", &[])
    }

    /// [`Prometheus::start`] with this configuration and these files beside it.
    pub fn start_with(config_text: &str, files: &[(&str, &str)]) -> Option<Prometheus> {
        let dir = tempfile::tempdir().ok()?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, config_text).ok()?;
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).ok()?;
        }
        // A port found free can be taken by another test's server before Prometheus
        // binds it: then Prometheus exits, and what answers there is not it. Tried again
        // on another port.
        for _ in 0..3 {
            let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().ok()?;
            let log = std::fs::File::create(dir.path().join("prometheus.log")).ok()?;
            let mut child = Command::new("prometheus")
                .arg(format!("--config.file={}", config.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--web.enable-remote-write-receiver")
                .arg("--log.level=warn")
                .stdout(Stdio::null())
                .stderr(Stdio::from(log))
                .spawn()
                .ok()?;
            if prometheus_ready(&mut child, addr) {
                return Some(Prometheus {
                    child,
                    addr,
                    _dir: dir,
                });
            }
            let _ = child.kill();
            let _ = child.wait();
            let _ = std::fs::remove_dir_all(dir.path().join("data"));
        }
        None
    }
}

/// Whether `child` answers as a ready Prometheus at `addr` within a minute; false once
/// it has exited.
fn prometheus_ready(child: &mut Child, addr: SocketAddr) -> bool {
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        if !matches!(child.try_wait(), Ok(None)) {
            return false;
        }
        let ready = request(addr, "GET", "/-/ready", &[], &[]).is_ok_and(|r| {
            r.status == 200 && r.body.contains("Prometheus") && r.body.contains("Ready")
        });
        if ready {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Debian's `prometheus-node-exporter` on a free loopback port; its address once it
/// answers `/metrics` (bounded wait).
pub fn start_node_exporter() -> (Proc, String) {
    let addr = format!("127.0.0.1:{}", free_port());
    let p = Proc(
        Command::new("prometheus-node-exporter")
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "prometheus-node-exporter is needed (apt-get install prometheus-node-exporter)",
            ),
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let up = request(addr.parse().unwrap(), "GET", "/metrics", &[], &[])
            .is_ok_and(|r| r.status == 200);
        if up {
            return (p, addr);
        }
        assert!(Instant::now() < deadline, "node_exporter did not answer");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Polls `f` every 50 ms until it returns `Some`, or fails the test after `timeout`
/// with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An HTTP server on loopback that answers every request with `status` and keeps
/// `(method, path, headers, body)` of each, for webhook receivers.
pub struct Receiver {
    pub addr: SocketAddr,
    pub got: std::sync::Arc<std::sync::Mutex<Vec<Received>>>,
    status: std::sync::Arc<std::sync::atomic::AtomicU16>,
}

#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().unwrap();
        let got = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let status = std::sync::Arc::new(std::sync::atomic::AtomicU16::new(200));
        let (g, st) = (got.clone(), status.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut c) = conn else { continue };
                let g = g.clone();
                let code = st.load(std::sync::atomic::Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    if let Some(r) = read_request(&mut c) {
                        g.lock().unwrap().push(r);
                        let _ = write!(
                            c,
                            "HTTP/1.1 {code} X\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
                        );
                    }
                });
            }
        });
        Receiver { addr, got, status }
    }

    /// Status code for the requests that follow.
    pub fn answer_with(&self, code: u16) {
        self.status.store(code, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

fn read_request(c: &mut TcpStream) -> Option<Received> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        let n = c.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(p) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break p;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split_whitespace();
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = raw[head_end + 4..].to_vec();
    while body.len() < len {
        let n = c.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&buf[..n]);
    }
    Some(Received {
        method,
        path,
        headers,
        body,
    })
}

/// Debian's Alertmanager on a free loopback port with its data in `dir`, sending every
/// notification to `webhook_url` at once (group_wait 0s, group_interval 1s).
pub fn start_alertmanager(dir: &Path, webhook_url: &str) -> (Proc, SocketAddr) {
    start_alertmanager_with(dir, webhook_url, None)
}

/// [`start_alertmanager`] serving https with `web_config` (Alertmanager's
/// `--web.config.file`) when given.
pub fn start_alertmanager_with(
    dir: &Path,
    webhook_url: &str,
    web_config: Option<&Path>,
) -> (Proc, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cfg = dir.join("alertmanager.yml");
    std::fs::write(
        &cfg,
        format!(
            "route:\n  receiver: hook\n  group_by: [alertname]\n  group_wait: 0s\n  group_interval: 1s\n  repeat_interval: 1h\nreceivers:\n  - name: hook\n    webhook_configs:\n      - url: {webhook_url}\n        send_resolved: true\n"
        ),
    )
    .unwrap();
    let p = Proc(
        Command::new("prometheus-alertmanager")
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!("--storage.path={}", dir.join("am-data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .args(web_config.map(|w| format!("--web.config.file={}", w.display())))
            .arg("--cluster.listen-address=")
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join("alertmanager.log")).unwrap(),
            ))
            .spawn()
            .expect("prometheus-alertmanager is needed (apt-get install prometheus-alertmanager)"),
    );
    wait_for(Duration::from_secs(30), "Alertmanager to start", || {
        if web_config.is_some() {
            // https: a connection accepted is enough to see it listening.
            return TcpStream::connect(addr).ok().map(|_| ());
        }
        request(addr, "GET", "/-/ready", &[], &[])
            .ok()
            .filter(|r| r.status == 200)
            .map(|_| ())
    });
    (p, addr)
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is needed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A test CA (`ca.pem`) and a certificate for 127.0.0.1 signed by it (`server.pem`,
/// `server.key`), in `dir`.
pub fn make_test_certificates(dir: &Path) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=strata test CA",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ],
    );
}

/// A VictoriaMetrics (Debian's `victoria-metrics`) on `addr` keeping its data in `dir`,
/// ready when returned. `extra` flags follow the defaults (100-year retention, no
/// latency offset, errors only in the log).
pub fn start_victoria_metrics(dir: &Path, addr: SocketAddr, extra: &[&str]) -> Child {
    let c = Command::new("victoria-metrics")
        .arg(format!("-storageDataPath={}", dir.display()))
        .arg(format!("-httpListenAddr={addr}"))
        .args([
            "-retentionPeriod=100y",
            "-search.latencyOffset=0s",
            "-loggerLevel=ERROR",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("victoria-metrics (Debian package; .ci/run installs it)");
    wait_for(Duration::from_secs(60), "victoria-metrics", || {
        request(addr, "GET", "/health", &[], &[])
            .ok()
            .filter(|r| r.status == 200)
    });
    c
}

/// SIGTERM, then wait (bounded) for the process to end; SIGKILL after 30 s.
pub fn stop_gracefully(mut c: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &c.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// A field of `/proc/<pid>/status` in KiB (`VmRSS`, `VmHWM`, `RssAnon`, …); 0 if absent.
pub fn proc_status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// CPU seconds a process has used, user and system, from `/proc/<pid>/stat`.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |x| x.1);
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}
