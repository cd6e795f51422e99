#![allow(clippy::unwrap_used, clippy::expect_used)]

//! Bad remote-write input gets a 4xx with the reason and stores nothing of the request.

mod common;

use common::{enc, write_body, write_request_proto, Strata, Ts};

const BASE: i64 = 1_700_000_000_000;

fn stored_series(strata: &Strata) -> usize {
    let r = strata.get(&format!(
        "/api/v1/series?match[]={}",
        enc("{__name__=~\".+\"}")
    ));
    assert_eq!(r.status, 200, "{}", r.body);
    r.json()["data"].as_array().unwrap().len()
}

fn good() -> Ts<'static> {
    Ts {
        labels: vec![("__name__", "good_metric"), ("job", "ok")],
        samples: vec![(BASE, 1.0)],
    }
}

/// Sends `body`, checks the status and that the message mentions `reason`, and that the
/// store is still empty.
fn refused(strata: &Strata, body: &[u8], status: u16, reason: &str) {
    let r = strata.write(body);
    assert_eq!(r.status, status, "body: {}", r.body);
    assert!(
        r.body.contains(reason),
        "{:?} should mention {reason:?}",
        r.body
    );
    assert_eq!(
        stored_series(strata),
        0,
        "a refused request stored something"
    );
}

#[test]
fn each_bad_request_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &["--write.max-bytes", "4096"]);

    refused(
        &strata,
        b"this is not snappy",
        400,
        "decompressing the body",
    );

    let not_proto = snap::raw::Encoder::new()
        .compress_vec(&[0x0a, 0xff, 0xff, 0x01])
        .unwrap();
    refused(&strata, &not_proto, 400, "protobuf");

    // Each bad series travels with a good one, which must not be stored either.
    let no_name = Ts {
        labels: vec![("job", "x")],
        samples: vec![(BASE, 1.0)],
    };
    refused(
        &strata,
        &write_body(&[good(), no_name]),
        400,
        "no metric name",
    );

    let bad_label = Ts {
        labels: vec![("__name__", "m"), ("bad-name", "x")],
        samples: vec![(BASE, 1.0)],
    };
    refused(
        &strata,
        &write_body(&[good(), bad_label]),
        400,
        "invalid label name \"bad-name\"",
    );

    let bad_metric = Ts {
        labels: vec![("__name__", "0day")],
        samples: vec![(BASE, 1.0)],
    };
    refused(
        &strata,
        &write_body(&[good(), bad_metric]),
        400,
        "invalid metric name",
    );

    let dup = Ts {
        labels: vec![("__name__", "m"), ("job", "a"), ("job", "b")],
        samples: vec![(BASE, 1.0)],
    };
    refused(
        &strata,
        &write_body(&[good(), dup]),
        400,
        "label name \"job\" appears more than once",
    );

    // Over the decompressed limit: refused from the snappy header, before decoding.
    // Repetitive, so that it compresses to far less than it decompresses to.
    let big: Vec<(i64, f64)> = vec![(BASE, 1.0); 1000];
    let big_body = write_body(&[Ts {
        labels: vec![("__name__", "big")],
        samples: big,
    }]);
    assert!(big_body.len() < 4096);
    assert!(write_request_proto(&[good()]).len() < 4096);
    refused(&strata, &big_body, 413, "over the limit of 4096 bytes");

    // Over the compressed limit: refused while reading the body.
    let junk = vec![0u8; 64 << 10];
    refused(&strata, &junk, 413, "over the limit");

    // An unknown message type: 415, which senders take as "use another".
    let r = common::request(
        strata.addr,
        "POST",
        "/api/v1/write",
        &[(
            "Content-Type",
            "application/x-protobuf;proto=io.prometheus.write.v3.Request",
        )],
        &write_body(&[good()]),
    )
    .unwrap();
    assert_eq!(r.status, 415);
    // Remote write 2.0 naming a symbol it does not have: 400, nothing stored.
    let mut bad_v2 = Vec::new();
    for (field, bytes) in [(4u8, &b""[..]), (4, b"__name__")] {
        bad_v2.push((field << 3) | 2);
        bad_v2.push(bytes.len() as u8);
        bad_v2.extend_from_slice(bytes);
    }
    bad_v2.extend_from_slice(&[(5 << 3) | 2, 4, (1 << 3) | 2, 2, 1, 9]);
    let r = common::request(
        strata.addr,
        "POST",
        "/api/v1/write",
        &[(
            "Content-Type",
            "application/x-protobuf;proto=io.prometheus.write.v2.Request",
        )],
        &snap::raw::Encoder::new().compress_vec(&bad_v2).unwrap(),
    )
    .unwrap();
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(r.body.contains("symbol reference 9"), "{}", r.body);
    assert_eq!(stored_series(&strata), 0);

    // The process is still healthy and a good request still works.
    assert_eq!(strata.get("/-/healthy").status, 200);
    assert_eq!(strata.write(&write_body(&[good()])).status, 204);
    assert_eq!(stored_series(&strata), 1);
}

#[test]
fn resending_an_acknowledged_request_is_harmless() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    let body = write_body(&[good()]);
    assert_eq!(strata.write(&body).status, 204);
    // A sender that retries after a lost answer sends identical samples again.
    assert_eq!(strata.write(&body).status, 204);
    let r = strata.get(&format!(
        "/api/v1/query?query={}&time={}",
        enc("count_over_time(good_metric[1m])"),
        BASE / 1000
    ));
    assert_eq!(r.json()["data"]["result"][0]["value"][1], "1");
}
