//! strata's listener: HTTPS from `--web.config.file` (used by a real Prometheus 2.42 that
//! scrapes strata and remote-writes to it over TLS; the certificate re-read on SIGHUP),
//! slow clients cut off by `--web.read-timeout`, and `--web.max-connections`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{enc, free_port, make_test_certificates, wait_for, Proc, Prometheus, Strata};

/// GET over TLS trusting only `ca`; the status line and body, or why it failed.
fn https_get(addr: SocketAddr, ca: &Path, path: &str) -> Result<(u16, String), String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).map_err(|e| e.to_string())? {
        roots
            .add(c.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    }
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    write!(
        tls,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| e.to_string())?;
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        Err(e) => return Err(e.to_string()),
    }
    let text = String::from_utf8_lossy(&raw).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no status line in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|x| x.1)
        .unwrap_or("")
        .to_string();
    Ok((status, body))
}

#[test]
fn https_with_a_real_prometheus_and_a_certificate_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join("first");
    let second = dir.path().join("second");
    std::fs::create_dir_all(&first).unwrap();
    std::fs::create_dir_all(&second).unwrap();
    make_test_certificates(&first);
    make_test_certificates(&second);
    // The files strata serves, replaced by the second pair before the reload.
    std::fs::copy(first.join("server.pem"), dir.path().join("tls.pem")).unwrap();
    std::fs::copy(first.join("server.key"), dir.path().join("tls.key")).unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: tls.pem\n  key_file: tls.key\n",
    )
    .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let data = dir.path().join("data");
    let child = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["serve", "--collect.interval", "0s", "--listen"])
        .arg(addr.to_string())
        .arg("--data-dir")
        .arg(&data)
        .arg("--web.config.file")
        .arg(&web)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let strata = Proc(child);
    let ca1 = first.join("ca.pem");
    let ca2 = second.join("ca.pem");
    wait_for(Duration::from_secs(30), "strata over https", || {
        https_get(addr, &ca1, "/-/ready")
            .ok()
            .filter(|r| r.0 == 200)
    });
    // Plain HTTP on the TLS port gets no HTTP answer.
    let plain = common::request(addr, "GET", "/-/ready", &[], &[]);
    assert!(plain.map(|r| r.status != 200).unwrap_or(true));
    assert!(
        https_get(addr, &ca2, "/-/ready").is_err(),
        "an untrusted CA is refused"
    );

    // A real Prometheus scrapes strata and remote-writes to it, both over TLS.
    let config = format!(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: strata\n    scheme: https\n    tls_config: {{ca_file: {ca}}}\n    static_configs: [{{targets: ['{addr}']}}]\nremote_write:\n  - url: https://{addr}/api/v1/write\n    tls_config: {{ca_file: {ca}}}\n    queue_config: {{batch_send_deadline: 1s}}\n",
        ca = ca1.display()
    );
    let prom = Prometheus::start_with(&config, &[]).expect("prometheus");
    let q = format!("/api/v1/query?query={}", enc(r#"up{job="strata"} == 1"#));
    wait_for(
        Duration::from_secs(60),
        "Prometheus' samples in strata",
        || {
            let (status, body) = https_get(addr, &ca1, &q).ok()?;
            (status == 200 && body.contains(r#""job":"strata""#)).then_some(())
        },
    );
    drop(prom);

    // New certificate from another CA, then SIGHUP: new handshakes present it.
    std::fs::copy(second.join("server.pem"), dir.path().join("tls.pem")).unwrap();
    std::fs::copy(second.join("server.key"), dir.path().join("tls.key")).unwrap();
    Command::new("kill")
        .args(["-HUP", &strata.0.id().to_string()])
        .status()
        .unwrap();
    wait_for(Duration::from_secs(10), "the reloaded certificate", || {
        https_get(addr, &ca2, "/-/ready")
            .ok()
            .filter(|r| r.0 == 200)
    });
    assert!(https_get(addr, &ca1, "/-/ready").is_err());
    // A broken file on reload keeps the certificate in use.
    std::fs::write(dir.path().join("tls.pem"), "not a certificate").unwrap();
    Command::new("kill")
        .args(["-HUP", &strata.0.id().to_string()])
        .status()
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(https_get(addr, &ca2, "/-/ready").map(|r| r.0), Ok(200));
}

#[test]
fn a_bad_web_config_stops_startup_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let web = dir.path().join("web.yml");
    std::fs::write(
        &web,
        "tls_server_config:\n  cert_file: missing.pem\n  key_file: k\n",
    )
    .unwrap();
    // strata refuses to start, naming what is wrong.
    let refused = |why: &str| {
        let out = Command::new(env!("CARGO_BIN_EXE_strata"))
            .args(["serve", "--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .arg("--web.config.file")
            .arg(&web)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && err.contains(why), "{err}");
    };
    refused("missing.pem");
    std::fs::write(&web, "tls_server_config: {cert_file: a}\nbasic: 1\n").unwrap();
    refused("basic");
}

/// Reads until the server closes the connection or `limit` passes; whether it closed.
fn closed_within(c: &mut TcpStream, limit: Duration) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + limit;
    let mut buf = [0u8; 1024];
    while Instant::now() < end {
        match c.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn slow_clients_are_cut_off_and_connections_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(
        dir.path(),
        &["--web.read-timeout", "1s", "--web.max-connections", "3"],
    );
    // Headers that never end.
    let mut slow = TcpStream::connect(strata.addr).unwrap();
    slow.write_all(b"GET /api/v1/labels HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    // A body trickling in: 10 of 1,000 bytes, one per 200 ms.
    let mut trickle = TcpStream::connect(strata.addr).unwrap();
    trickle
        .write_all(b"POST /api/v1/write HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        .unwrap();
    let started = Instant::now();
    for _ in 0..10 {
        let _ = trickle.write_all(b"x");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        closed_within(&mut slow, Duration::from_secs(5)),
        "headers cut off"
    );
    assert!(
        closed_within(&mut trickle, Duration::from_secs(5)),
        "slow body cut off"
    );
    assert!(started.elapsed() < Duration::from_secs(8));
    assert_eq!(strata.get("/-/ready").status, 200, "others are served");

    // Three idle connections take every slot: a fourth waits until one goes.
    let idle: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(strata.addr).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut waiting = TcpStream::connect(strata.addr).unwrap();
    waiting
        .write_all(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    waiting
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut buf = [0u8; 256];
    assert!(
        waiting.read(&mut buf).is_err(),
        "no answer while every slot is taken"
    );
    drop(idle);
    waiting
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = waiting.read_to_end(&mut answer);
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"),
        "served once a slot is free: {:?}",
        String::from_utf8_lossy(&answer)
    );
}
