//! Property tests of the input decoders, run for a bounded number of cases in every
//! `cargo test`: the remote-write 1.0 and 2.0 decoders and the text-format parser never
//! panic on arbitrary or mutated input; what they accept is well formed; valid requests
//! survive the round trip.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use proptest::prelude::*;
use strata_ingest::remote_write::{decode_write_request, write_to_store, DecodedWriteRequest};
use strata_ingest::{Limits, SeriesCache};
use strata_storage::{Db, Options};

/// One store for every case (appends that fail change nothing; the rest accumulate).
fn store() -> &'static Db {
    static STORE: std::sync::OnceLock<(tempfile::TempDir, Db)> = std::sync::OnceLock::new();
    &STORE
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let opts = Options {
                wal_fsync: false,
                ..Options::default()
            };
            let db = Db::open(dir.path(), opts).unwrap();
            (dir, db)
        })
        .1
}
use strata_ingest::text::{parse_line, Dialect};

/// Series as labels and samples.
type Series = Vec<(Vec<(String, String)>, Vec<(i64, f64)>)>;
/// Series as labels and sample value bits, for exact comparison.
type SeriesBits = Vec<(Vec<(String, String)>, Vec<(i64, u64)>)>;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn field(out: &mut Vec<u8>, f: u64, b: &[u8]) {
    varint(out, f << 3 | 2);
    varint(out, b.len() as u64);
    out.extend_from_slice(b);
}

/// A `prometheus.WriteRequest` from series of labels and samples.
fn encode(series: &Series) -> Vec<u8> {
    let mut req = Vec::new();
    for (labels, samples) in series {
        let mut ts = Vec::new();
        for (k, v) in labels {
            let mut l = Vec::new();
            field(&mut l, 1, k.as_bytes());
            field(&mut l, 2, v.as_bytes());
            field(&mut ts, 1, &l);
        }
        for (t, v) in samples {
            let mut s = vec![0x09];
            s.extend_from_slice(&v.to_bits().to_le_bytes());
            s.push(0x10);
            varint(&mut s, *t as u64);
            field(&mut ts, 2, &s);
        }
        field(&mut req, 1, &ts);
    }
    req
}

fn series_strategy() -> impl Strategy<Value = Series> {
    let label = ("[a-z_][a-z0-9_]{0,8}", "\\PC{1,12}");
    let labels = prop::collection::btree_map(label.0, label.1, 1..6)
        .prop_map(|m| m.into_iter().collect::<Vec<_>>());
    let samples = prop::collection::vec((any::<i64>(), any::<f64>()), 0..5);
    prop::collection::vec((labels, samples), 0..8)
}

/// A byte-level mutation: flip, insert, delete or truncate.
fn mutate(mut b: Vec<u8>, ops: &[(u8, usize, u8)]) -> Vec<u8> {
    for &(kind, at, byte) in ops {
        if b.is_empty() {
            b.push(byte);
            continue;
        }
        let i = at % b.len();
        match kind % 4 {
            0 => b[i] ^= byte | 1,
            1 => b.insert(i, byte),
            2 => {
                b.remove(i);
            }
            _ => b.truncate(i),
        }
    }
    b
}

/// `cases` cases from a fixed seed, so that CI runs the same inputs every time;
/// `FUZZ_SEED=<n>` explores others.
fn config(cases: u32) -> ProptestConfig {
    let seed = std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5EED_u64);
    ProptestConfig {
        cases,
        rng_seed: proptest::test_runner::RngSeed::Fixed(seed),
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    #![proptest_config(config(2_000))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(raw in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = DecodedWriteRequest::parse(raw.clone());
        let _ = DecodedWriteRequest::parse_v2(raw.clone());
        let _ = decode_write_request(&raw, 1 << 20);
    }

    #[test]
    fn valid_requests_round_trip_and_mutations_never_panic(
        series in series_strategy(),
        ops in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 1..6),
    ) {
        let raw = encode(&series);
        let d = DecodedWriteRequest::parse(raw.clone()).unwrap();
        prop_assert_eq!(d.series_count(), series.len());
        let got: SeriesBits = d
            .series()
            .map(|s| {
                (
                    s.label_bytes()
                        .unwrap()
                        .into_iter()
                        .map(|(k, v)| {
                            (String::from_utf8(k.to_vec()).unwrap(), String::from_utf8(v.to_vec()).unwrap())
                        })
                        .collect(),
                    s.samples().iter().map(|&(t, v)| (t, v.to_bits())).collect(),
                )
            })
            .collect();
        let want: SeriesBits = series
            .iter()
            .map(|(l, s)| (l.clone(), s.iter().map(|&(t, v)| (t, v.to_bits())).collect()))
            .collect();
        prop_assert_eq!(got, want);
        let compressed = snap::raw::Encoder::new().compress_vec(&raw).unwrap();
        prop_assert!(decode_write_request(&compressed, 1 << 20).is_ok());
        // Mutated: any answer but a panic, from decoding through validation and append
        // (invalid UTF-8 and label names are refused there, the whole request at once).
        let bad = mutate(raw, &ops);
        if let Ok(d) = DecodedWriteRequest::parse(bad.clone()) {
            let mut app = store().appender();
            match write_to_store(&d, &mut app, &SeriesCache::default(), &Limits::default()) {
                Ok(_) => {
                    for s in d.series() {
                        let labels = s.label_bytes();
                        prop_assert!(labels.is_ok(), "{:?}", labels.err());
                        for (k, v) in labels.unwrap_or_default() {
                            prop_assert!(std::str::from_utf8(k).is_ok() && std::str::from_utf8(v).is_ok());
                        }
                    }
                }
                Err(e) => prop_assert!(!e.to_string().is_empty()),
            }
        }
        let _ = DecodedWriteRequest::parse_v2(bad.clone());
        let _ = decode_write_request(&mutate(compressed, &ops), 1 << 20);
    }

    #[test]
    fn the_text_parser_never_panics(line in "\\PC{0,80}") {
        let _ = parse_line(&line, Dialect::Prometheus);
        let _ = parse_line(&line, Dialect::OpenMetrics);
    }

    #[test]
    fn mutated_exposition_lines_never_panic(
        name in "[a-z_]{1,10}",
        value in any::<f64>(),
        ts in any::<i64>(),
        ops in prop::collection::vec((any::<u8>(), any::<usize>(), any::<u8>()), 0..4),
    ) {
        let line = format!("{name}{{a=\"x\\\"y\",b=\"\\n\"}} {value} {ts}");
        let ok = parse_line(&line, Dialect::Prometheus);
        prop_assert!(ok.is_ok(), "{line}: {ok:?}");
        let bad = String::from_utf8_lossy(&mutate(line.into_bytes(), &ops)).into_owned();
        let _ = parse_line(&bad, Dialect::Prometheus);
        let _ = parse_line(&bad, Dialect::OpenMetrics);
    }
}
