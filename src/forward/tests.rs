use std::sync::Arc;

use strata_ingest::remote_write::DecodedWriteRequest;

use super::config::{self, Protocol};
use super::{encode, Batch, SeriesEntry};

/// Per series of a request: its labels and samples (value bits).
type Content = Vec<(Vec<(String, String)>, Vec<(i64, u64)>)>;

fn series(pairs: &[(&str, &str)]) -> Arc<SeriesEntry> {
    let labels: Vec<(String, String)> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let v1_labels = encode::v1_labels(&labels);
    Arc::new(SeriesEntry { labels, v1_labels })
}

/// What a decoded request holds: per series its labels and samples.
fn decoded(d: &DecodedWriteRequest) -> Content {
    d.series()
        .map(|s| {
            let labels = s
                .label_bytes()
                .unwrap()
                .into_iter()
                .map(|(k, v)| {
                    (
                        String::from_utf8_lossy(k).into_owned(),
                        String::from_utf8_lossy(v).into_owned(),
                    )
                })
                .collect();
            let samples = s.samples().iter().map(|&(t, v)| (t, v.to_bits())).collect();
            (labels, samples)
        })
        .collect()
}

fn batch() -> (Batch, Content) {
    let a = series(&[("__name__", "up"), ("job", "a")]);
    let b = series(&[("__name__", "up"), ("job", "b"), ("zone", "é")]);
    let stale = strata_storage::stale_nan();
    let batch: Batch = vec![
        (Arc::clone(&a), 1_000, 1.0),
        (Arc::clone(&b), 1_000, -2.5),
        (Arc::clone(&a), 2_000, stale),
        (Arc::clone(&b), -5, f64::INFINITY),
    ];
    let owned = |s: &SeriesEntry| s.labels.clone();
    let want = vec![
        (
            owned(&a),
            vec![(1_000, 1f64.to_bits()), (2_000, stale.to_bits())],
        ),
        (
            owned(&b),
            vec![(1_000, (-2.5f64).to_bits()), (-5, f64::INFINITY.to_bits())],
        ),
    ];
    (batch, want)
}

/// Both encodings read back by strata's own decoder (written independently, from the
/// protobuf definitions): samples grouped per series in order, NaN bits exact.
#[test]
fn requests_decode_to_the_batch() {
    let (batch, want) = batch();
    let mut raw = Vec::new();
    encode::v1(&batch, &mut raw);
    let d = DecodedWriteRequest::parse(raw.clone()).unwrap();
    assert_eq!(decoded(&d), want);
    encode::v2(&batch, &mut raw);
    let d = DecodedWriteRequest::parse_v2(raw).unwrap();
    assert_eq!(decoded(&d), want);
}

fn parse(text: &str) -> Result<Vec<config::RemoteWriteConfig>, String> {
    let root = crate::yaml::parse(text).map_err(|e| e.to_string())?;
    config::parse(&root, std::path::Path::new(".")).map_err(|e| e.to_string())
}

#[test]
fn configuration_defaults_and_errors() {
    let c = parse("- url: http://127.0.0.1:8428/api/v1/write\n").unwrap();
    assert_eq!(c[0].protocol, Protocol::V1);
    assert_eq!(c[0].queue, config::QueueConfig::default());
    assert_eq!(c[0].timeout_ms, 30_000);
    assert_eq!(c[0].name.len(), 6, "a name made from the URL");
    let c = parse(
        "- url: https://mimir.example/api/v1/push\n  name: mimir\n  protobuf_message: io.prometheus.write.v2.Request\n  bearer_token: t\n  headers: {X-Scope-OrgID: fleet}\n  queue_config: {max_shards: 4, max_samples_per_send: 500, batch_send_deadline: 1s}\n",
    )
    .unwrap();
    assert_eq!(c[0].name, "mimir");
    assert_eq!(c[0].protocol, Protocol::V2);
    assert_eq!(c[0].auth.as_deref(), Some("Bearer t"));
    assert!(c[0].tls.is_some());
    assert_eq!(c[0].queue.max_shards, 4);
    assert_eq!(c[0].queue.batch_send_deadline_ms, 1000);
    for (text, why) in [
        ("- name: x\n", "url for remote_write is empty"),
        ("- url: ftp://x/\n", "http:// or https://"),
        (
            "- url: http://x/\n  protobuf_message: foo\n",
            "unknown remote write protobuf message",
        ),
        (
            "- url: http://x/\n  headers: {Content-Type: x}\n",
            "reserved header",
        ),
        (
            "- url: http://x/\n  queue_config: {min_shards: 5, max_shards: 2}\n",
            "min_shards",
        ),
        (
            "- url: http://x/\n  queue_config: {capacity: 0}\n",
            "at least 1",
        ),
        ("- url: http://x/\n  queue_config: {shards: 2}\n", "shards"),
        (
            "- url: http://x/\n  bearer_token: a\n  basic_auth: {username: u}\n",
            "at most one",
        ),
        (
            "- {url: 'http://x/', name: a}\n- {url: 'http://y/', name: a}\n",
            "multiple remote write",
        ),
        ("- url: http://x/\n  name: a/b\n", "may only hold"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(why), "{text}: {e}");
    }
}

#[test]
fn shards_follow_the_backlog_within_bounds() {
    use super::shards_for;
    // Busy shards, or a reader waiting for room: double, up to max_shards.
    assert_eq!(shards_for(2, 0.9, 0.0, false, 1, 50), 4);
    assert_eq!(shards_for(2, 0.5, 0.5, false, 1, 50), 4);
    assert_eq!(shards_for(40, 0.9, 0.0, false, 1, 50), 50);
    // Idle: halve, down to min_shards.
    assert_eq!(shards_for(8, 0.1, 0.0, false, 1, 50), 4);
    assert_eq!(shards_for(1, 0.0, 0.0, false, 1, 50), 1);
    assert_eq!(shards_for(4, 0.0, 0.0, false, 3, 50), 3);
    // In between, or while requests fail: unchanged.
    assert_eq!(shards_for(4, 0.5, 0.1, false, 1, 50), 4);
    assert_eq!(shards_for(4, 1.0, 1.0, true, 1, 50), 4);
}
