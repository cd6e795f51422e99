//! Hostile input against a running strata: each is answered with a 4xx (or served within
//! bounds), the process stays healthy, and memory stays bounded.
//! - queries nested or chained past the engine's limits (they used to overflow a stack),
//!   and the deepest ones accepted;
//! - regular expressions: huge, and invalid;
//! - range queries asking for too many points;
//! - remote write: a decompression bomb, malformed UTF-8 in a label, a series with 100,000
//!   labels, and hundreds of thousands of new series against `--storage.max-series`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{enc, proc_status_kib, write_request_proto, Strata, Ts};

fn post_query(strata: &Strata, path: &str, form: &str) -> (u16, String) {
    let r = strata.post_form(path, form);
    (r.status, r.body)
}

#[test]
fn hostile_queries_get_4xx_and_the_process_stays_up() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    let q = |expr: &str| {
        post_query(
            &strata,
            "/api/v1/query",
            &format!("query={}&time=100", enc(expr)),
        )
    };
    let deep = format!("{}1{}", "(".repeat(100_000), ")".repeat(100_000));
    let (status, body) = q(&deep);
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("levels deep, over the limit of 128"),
        "{body}"
    );
    let chain = vec!["1"; 50_001].join("+");
    let (status, body) = q(&chain);
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("operators, over the limit"), "{body}");
    let unary = format!("{}1", "-".repeat(50_000));
    assert_eq!(q(&unary).0, 400);
    // Inside the limits, the deepest shapes evaluate (on a stack sized for them).
    let (status, body) = q(&vec!["1"; 2_001].join("+"));
    assert_eq!(status, 200, "{body}");
    assert!(body.contains(r#""2001""#), "{body}");
    let nested = format!("{}vector(1){}", "abs(".repeat(127), ")".repeat(127));
    assert_eq!(q(&nested).0, 200);
    let or_chain = vec!["up"; 2_001].join(" or ");
    assert_eq!(q(&or_chain).0, 200);
    // Regular expressions.
    let huge = format!("{{__name__=~\"{}\"}}", "(a|b)*c".repeat(5_000));
    let (status, _) = q(&huge);
    assert!(status == 200 || status == 400, "{status}");
    let (status, body) = q(r#"{__name__=~"a{1000}{1000}"}"#);
    assert_eq!(status, 400, "{body}");
    let (status, body) = q(r#"{__name__=~"(unclosed"}"#);
    assert_eq!(status, 400, "{body}");
    // Too many points.
    let (status, body) = post_query(
        &strata,
        "/api/v1/query_range",
        "query=1&start=0&end=1000000000&step=0.001",
    );
    assert_eq!(status, 400, "{body}");
    // The same paths through the series API.
    let r = strata.post_form("/api/v1/series", &format!("match[]={}", enc(&deep)));
    assert_eq!(r.status, 400, "{}", r.body);
    // A URL that long is refused before any of it is parsed.
    let r = strata.get(&format!("/api/v1/series?match[]={}", enc(&deep)));
    assert_eq!(r.status, 431);
    assert_eq!(strata.get("/-/healthy").status, 200);
    assert_eq!(q("1+1").0, 200);
}

#[test]
fn hostile_writes_get_4xx_and_memory_stays_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &["--storage.max-series", "20000"]);
    // A snappy header claiming 1 GiB: refused before anything is allocated for it.
    let mut bomb = vec![0x80, 0x80, 0x80, 0x80, 0x04];
    bomb.extend_from_slice(&[0u8; 64]);
    let r = strata.write(&bomb);
    assert_eq!(r.status, 413, "{}", r.body);
    // Malformed UTF-8 in a label value.
    let mut raw = write_request_proto(&[Ts {
        labels: vec![("__name__", "m"), ("x", "QQQ")],
        samples: vec![(1000, 1.0)],
    }]);
    let at = raw.windows(3).position(|w| w == b"QQQ").unwrap();
    raw[at..at + 3].copy_from_slice(&[0xff, 0xfe, 0xfd]);
    let body = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
    let r = strata.write(&body);
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.to_lowercase().contains("utf-8"), "{}", r.body);
    // One series with 100,000 labels.
    let names: Vec<String> = (0..100_000).map(|i| format!("l{i:06}")).collect();
    let mut labels: Vec<(&str, &str)> = vec![("__name__", "wide")];
    labels.extend(names.iter().map(|n| (n.as_str(), "v")));
    let raw = write_request_proto(&[Ts {
        labels,
        samples: vec![(1000, 1.0)],
    }]);
    let r = strata.write(&snap::raw::Encoder::new().compress_vec(&raw).unwrap());
    assert!(
        r.status == 400 || r.status == 413,
        "{} {}",
        r.status,
        r.body
    );

    // Cardinality explosion: 300,000 new series in requests of 2,000; only the first
    // 20,000 are admitted, the rest refused with 429, and memory stops growing.
    let values: Vec<String> = (0..300_000).map(|i| format!("value-{i}")).collect();
    let mut rss_at_limit = 0;
    let mut refused = 0;
    for (n, chunk) in values.chunks(2_000).enumerate() {
        let series: Vec<Ts> = chunk
            .iter()
            .map(|v| Ts {
                labels: vec![("__name__", "explode"), ("id", v.as_str())],
                samples: vec![(1000, 1.0)],
            })
            .collect();
        let body = snap::raw::Encoder::new()
            .compress_vec(&write_request_proto(&series))
            .unwrap();
        let r = strata.write(&body);
        if r.status == 429 {
            refused += 1;
        } else {
            assert_eq!(r.status, 204, "{}", r.body);
        }
        if n == 10 {
            rss_at_limit = proc_status_kib(strata.pid(), "VmRSS");
        }
    }
    assert_eq!(refused, 140, "every request past the limit refused");
    let rss_after = proc_status_kib(strata.pid(), "VmRSS");
    assert!(
        rss_after < rss_at_limit + 64 * 1024,
        "RSS grew from {rss_at_limit} KiB to {rss_after} KiB while every write was refused"
    );
    let v = strata.query("count(explode)", "10");
    assert_eq!(v["result"][0]["value"][1], "20000");
    assert_eq!(strata.get("/-/healthy").status, 200);
}
