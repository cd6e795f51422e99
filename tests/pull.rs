//! Being pulled from, by a real Prometheus (Debian's 2.42): one configured with
//! `remote_read` pointing at strata answers strata's history through its own PromQL, and
//! the same Prometheus federates strata's latest samples from `/federate`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{enc, request, wait_for, write_body, Strata, Ts};
use serde_json::Value;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

fn get(addr: std::net::SocketAddr, path: &str) -> Value {
    let r = request(addr, "GET", path, &[], &[]).unwrap();
    assert_eq!(r.status, 200, "{path}: {}", r.body);
    serde_json::from_str(&r.body).unwrap()
}

#[test]
fn prometheus_reads_remotely_from_strata_and_federates_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("strata.yml"),
        "global:\n  external_labels: {site: edge1}\n",
    )
    .unwrap();
    let cfg = dir.path().join("strata.yml");
    let s = Strata::start(
        &dir.path().join("data"),
        &["--config.file", cfg.to_str().unwrap()],
    );
    let now = now_ms();
    // Two hours of history Prometheus never scraped, and a gauge fresh enough to federate.
    let history: Vec<(i64, f64)> = (0..480)
        .map(|i| (now - 7_200_000 + i * 15_000, i as f64))
        .collect();
    let body = write_body(&[
        Ts {
            labels: vec![("__name__", "edge_history_total"), ("host", "h1")],
            samples: history.clone(),
        },
        Ts {
            labels: vec![("__name__", "edge_temperature"), ("host", "h1")],
            samples: vec![(now - 30_000, 21.5), (now - 1_000, 22.25)],
        },
    ]);
    assert_eq!(s.write(&body).status, 204);

    let config = format!(
        r#"global:
  scrape_interval: 1s
remote_read:
  - url: http://{addr}/api/v1/read
    read_recent: true
scrape_configs:
  - job_name: federate
    honor_labels: true
    metrics_path: /federate
    params:
      "match[]": ['{{__name__=~"edge_.*"}}']
    static_configs:
      - targets: ["{addr}"]
"#,
        addr = s.addr
    );
    let prom = common::Prometheus::start_with(&config, &[])
        .expect("prometheus is needed (apt-get install prometheus)");

    // Remote read: Prometheus' own range query over strata's history.
    let end = now as f64 / 1000.0;
    let q = format!(
        "/api/v1/query_range?query={}&start={}&end={end}&step=60",
        enc("edge_history_total{host=\"h1\"}"),
        end - 7_000.0
    );
    let via_prom = get(prom.addr, &q);
    let via_strata = get(s.addr, &q);
    let values = |v: &Value| v["data"]["result"][0]["values"].clone();
    assert_eq!(
        via_prom["data"]["result"].as_array().unwrap().len(),
        1,
        "{via_prom}"
    );
    assert_eq!(values(&via_prom), values(&via_strata));
    assert!(values(&via_prom).as_array().unwrap().len() > 100);
    // The external label is on what strata sends, and matches on it are honoured.
    assert_eq!(via_prom["data"]["result"][0]["metric"]["site"], "edge1");
    let other_site = get(
        prom.addr,
        &format!(
            "/api/v1/query?query={}&time={end}",
            enc("edge_history_total{site=\"elsewhere\"}")
        ),
    );
    assert!(other_site["data"]["result"].as_array().unwrap().is_empty());

    // Federation: Prometheus scrapes /federate and stores the latest gauge value.
    let fed = wait_for(Duration::from_secs(30), "the federated gauge", || {
        let v = get(
            prom.addr,
            &format!(
                "/api/v1/query?query={}",
                enc("edge_temperature{job=\"federate\"}")
            ),
        );
        let r = v["data"]["result"].as_array()?.first()?.clone();
        Some(r)
    });
    assert_eq!(fed["value"][1], "22.25");
    assert_eq!(fed["metric"]["site"], "edge1");
    assert_eq!(fed["metric"]["host"], "h1");
    // The text strata serves.
    let text = request(
        s.addr,
        "GET",
        &format!("/federate?match[]={}", enc("edge_temperature")),
        &[],
        &[],
    )
    .unwrap();
    assert_eq!(text.status, 200);
    assert!(
        text.body.starts_with("# TYPE edge_temperature untyped\n"),
        "{}",
        text.body
    );
    assert!(
        text.body.contains(&format!(
            "edge_temperature{{host=\"h1\",site=\"edge1\"}} 22.25 {}",
            now - 1_000
        )),
        "{}",
        text.body
    );
}

#[test]
fn bad_pull_requests_get_a_clear_4xx() {
    let dir = tempfile::tempdir().unwrap();
    let s = Strata::start(dir.path(), &[]);
    let r = request(s.addr, "POST", "/api/v1/read", &[], b"not snappy at all").unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(!r.body.is_empty());
    let r = request(s.addr, "GET", "/federate?match[]=%7Bbad", &[], &[]).unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(s.get("/-/healthy").status, 200);
}

/// POST over a plain socket, keeping the answer's bytes: status, headers, body.
fn post_bytes(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> (u16, String, Vec<u8>) {
    use std::io::{Read, Write};
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        c,
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/x-protobuf\r\nContent-Encoding: snappy\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .unwrap();
    c.write_all(body).unwrap();
    let mut raw = Vec::new();
    c.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        let mut out = Vec::new();
        let mut b = &body[..];
        loop {
            let e = b.windows(2).position(|w| w == b"\r\n").unwrap();
            let n =
                usize::from_str_radix(std::str::from_utf8(&b[..e]).unwrap().trim(), 16).unwrap();
            if n == 0 {
                break;
            }
            out.extend_from_slice(&b[e + 2..e + 2 + n]);
            b = &b[e + 4 + n..];
        }
        body = out;
    }
    (status, head, body)
}

fn pb_varint(b: &[u8], pos: &mut usize) -> u64 {
    let mut v = 0u64;
    let mut shift = 0;
    loop {
        let x = b[*pos];
        *pos += 1;
        v |= u64::from(x & 0x7f) << shift;
        if x < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// The fields of a protobuf message: (field number, varint value or bytes).
fn pb_fields(b: &[u8]) -> Vec<(u64, u64, &[u8])> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < b.len() {
        let tag = pb_varint(b, &mut pos);
        match tag & 7 {
            0 => out.push((tag >> 3, pb_varint(b, &mut pos), &b[0..0])),
            2 => {
                let n = pb_varint(b, &mut pos) as usize;
                out.push((tag >> 3, 0, &b[pos..pos + n]));
                pos += n;
            }
            w => panic!("wire type {w}"),
        }
    }
    out
}

/// CRC-32C (Castagnoli), bit by bit.
fn crc32c(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

struct Bits<'a> {
    b: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> u64 {
        let v = (self.b[self.pos / 8] >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        u64::from(v)
    }
    fn bits(&mut self, n: u32) -> u64 {
        (0..n).fold(0, |acc, _| acc << 1 | self.bit())
    }
    fn uvarint(&mut self) -> u64 {
        let mut v = 0u64;
        let mut shift = 0;
        loop {
            let x = self.bits(8);
            v |= (x & 0x7f) << shift;
            if x < 0x80 {
                return v;
            }
            shift += 7;
        }
    }
}

/// Decodes a Prometheus XOR chunk as Prometheus' format defines it: a big-endian u16
/// sample count, then delta-of-delta timestamps and XOR-ed values.
fn decode_xor(data: &[u8]) -> Vec<(i64, u64)> {
    let n = u16::from_be_bytes([data[0], data[1]]) as usize;
    let mut r = Bits {
        b: &data[2..],
        pos: 0,
    };
    let mut out = Vec::with_capacity(n);
    let (mut t, mut delta, mut v) = (0i64, 0i64, 0u64);
    let (mut leading, mut trailing) = (0u32, 0u32);
    for i in 0..n {
        if i == 0 {
            let z = r.uvarint();
            t = ((z >> 1) as i64) ^ -((z & 1) as i64);
            v = r.bits(64);
        } else {
            if i == 1 {
                delta = r.uvarint() as i64;
            } else {
                let mut ones = 0;
                while ones < 4 && r.bit() == 1 {
                    ones += 1;
                }
                let size = [0, 14, 17, 20, 64][ones];
                let mut dod = r.bits(size) as i64;
                if size > 0 && size < 64 && dod > 1 << (size - 1) {
                    dod -= 1 << size;
                }
                delta += dod;
            }
            t += delta;
            if r.bit() == 1 {
                if r.bit() == 1 {
                    leading = r.bits(5) as u32;
                    let mut sig = r.bits(6) as u32;
                    if sig == 0 {
                        sig = 64;
                    }
                    trailing = 64 - leading - sig;
                }
                let sig = 64 - leading - trailing;
                v ^= r.bits(sig) << trailing;
            }
        }
        out.push((t, v));
    }
    out
}

#[test]
fn streamed_xor_chunks_decode_to_the_samples_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = Strata::start(dir.path(), &[]);
    let base = now_ms() - 3_600_000;
    // Jittered and gapped timestamps (every delta-of-delta size), awkward values.
    let mut t = base;
    let a: Vec<(i64, f64)> = (0..300i64)
        .map(|i| {
            t += match i % 7 {
                0 => 15_000,
                1 => 15_003,
                2 => 14_990,
                3 => 120_000,
                4 => 15_000,
                5 => 1_000_000,
                _ => 86_400_000 / 1000,
            };
            let v = match i % 6 {
                0 => i as f64,
                1 => -0.1 * i as f64,
                2 => f64::INFINITY,
                3 => f64::NAN,
                4 => 1e300,
                _ => i as f64,
            };
            (t, v)
        })
        .collect();
    let b: Vec<(i64, f64)> = (0..5).map(|i| (base + i * 15_000, 42.0)).collect();
    let body = write_body(&[
        Ts {
            labels: vec![("__name__", "chunky"), ("k", "a")],
            samples: a.clone(),
        },
        Ts {
            labels: vec![("__name__", "chunky"), ("k", "b")],
            samples: b.clone(),
        },
    ]);
    assert_eq!(s.write(&body).status, 204);

    // ReadRequest: one query for chunky{}, accepting STREAMED_XOR_CHUNKS first.
    let mut matcher = Vec::new();
    common::field_bytes(&mut matcher, 2, b"__name__");
    common::field_bytes(&mut matcher, 3, b"chunky");
    let mut query = vec![0x08];
    common::varint(&mut query, (base - 1) as u64);
    query.push(0x10);
    common::varint(&mut query, (t + 1) as u64);
    common::field_bytes(&mut query, 3, &matcher);
    let mut req = Vec::new();
    common::field_bytes(&mut req, 1, &query);
    req.extend_from_slice(&[0x10, 1, 0x10, 0]);
    let compressed = snap::raw::Encoder::new().compress_vec(&req).unwrap();
    let (status, head, frames) = post_bytes(s.addr, "/api/v1/read", &compressed);
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&frames));
    assert!(
        head.contains("application/x-streamed-protobuf; proto=prometheus.ChunkedReadResponse"),
        "{head}"
    );
    let mut got: Vec<(String, Vec<(i64, u64)>)> = Vec::new();
    let mut pos = 0;
    while pos < frames.len() {
        let n = pb_varint(&frames, &mut pos) as usize;
        let crc = u32::from_be_bytes(frames[pos..pos + 4].try_into().unwrap());
        pos += 4;
        let msg = &frames[pos..pos + n];
        pos += n;
        assert_eq!(crc32c(msg), crc, "frame checksum");
        for (f, _, series) in pb_fields(msg) {
            if f != 1 {
                continue;
            }
            let mut key = String::new();
            let mut samples = Vec::new();
            for (sf, _, sb) in pb_fields(series) {
                match sf {
                    1 => {
                        let l = pb_fields(sb);
                        key.push_str(&format!(
                            "{}={},",
                            String::from_utf8_lossy(l[0].2),
                            String::from_utf8_lossy(l[1].2)
                        ));
                    }
                    2 => {
                        let c = pb_fields(sb);
                        let (min_t, max_t) = (c[0].1 as i64, c[1].1 as i64);
                        assert_eq!(c[2].1, 1, "XOR chunk type");
                        let decoded = decode_xor(c[3].2);
                        assert!(decoded.len() <= 120);
                        assert_eq!((decoded[0].0, decoded[decoded.len() - 1].0), (min_t, max_t));
                        samples.extend(decoded);
                    }
                    _ => {}
                }
            }
            got.push((key, samples));
        }
    }
    let bits = |v: &[(i64, f64)]| v.iter().map(|&(t, x)| (t, x.to_bits())).collect::<Vec<_>>();
    assert_eq!(
        got,
        vec![
            ("__name__=chunky,k=a,".to_string(), bits(&a)),
            ("__name__=chunky,k=b,".to_string(), bits(&b)),
        ]
    );
    // A client that accepts only types strata lacks is told so.
    let only_unknown = [&req[..req.len() - 4], &[0x10, 7][..]].concat();
    let compressed = snap::raw::Encoder::new()
        .compress_vec(&only_unknown)
        .unwrap();
    let (status, _, body) = post_bytes(s.addr, "/api/v1/read", &compressed);
    assert_eq!(status, 400);
    assert!(String::from_utf8_lossy(&body).contains("STREAMED_XOR_CHUNKS"));
}
