//! Crashes at the riskiest steps of a block cut, the WAL's truncation and a merge (test-only
//! fault points: `STRATA_FAULT` makes strata abort there, as `kill -9` would stop it).
//! After a restart every acknowledged sample is back, once.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::{request, vector_map, write_body, Strata, Ts};

const BASE: i64 = 1_700_000_000_000;
const MINUTES: i64 = 14;

/// One request per minute of one-per-second samples, for the given minutes; returns the
/// samples acknowledged before the process went away.
fn write_until_crash(strata: &mut Strata, minutes: std::ops::Range<i64>) -> Vec<(i64, f64)> {
    let mut acked = Vec::new();
    for minute in minutes {
        let samples: Vec<(i64, f64)> = (0..60)
            .map(|s| {
                let i = minute * 60 + s;
                (BASE + i * 1000, i as f64)
            })
            .collect();
        let body = write_body(&[Ts {
            labels: vec![("__name__", "seq"), ("writer", "crash")],
            samples: samples.clone(),
        }]);
        let sent = request(
            strata.addr,
            "POST",
            "/api/v1/write",
            &[
                ("Content-Type", "application/x-protobuf"),
                ("Content-Encoding", "snappy"),
            ],
            &body,
        );
        match sent {
            Ok(r) if r.status == 204 => acked.extend(samples),
            _ => break,
        }
        // Give the background cut a moment, as a real sender's pacing would.
        std::thread::sleep(Duration::from_millis(30));
        if strata.has_exited() {
            break;
        }
    }
    acked
}

/// The blocks' `(minTime, maxTime, numSamples)`, from their `meta.json` files, oldest
/// first.
fn blocks(dir: &std::path::Path) -> Vec<(i64, i64, u64)> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir.join("blocks"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || name.starts_with("corrupt") {
            continue;
        }
        let Ok(b) = std::fs::read(e.path().join("meta.json")) else {
            continue;
        };
        let m: serde_json::Value = serde_json::from_slice(&b).unwrap();
        found.push((
            m["minTime"].as_i64().unwrap(),
            m["maxTime"].as_i64().unwrap(),
            m["numSamples"].as_u64().unwrap(),
        ));
    }
    found.sort();
    found
}

fn overlap(blocks: &[(i64, i64, u64)]) -> bool {
    blocks.windows(2).any(|w| w[1].0 < w[0].1)
}

fn check(strata: &Strata, acked: &[(i64, f64)]) {
    let last = acked.last().unwrap().0;
    let t = format!("{}", last as f64 / 1000.0);
    let window = format!("{}s", (last - BASE) / 1000 + 1);
    let sel = format!("seq{{writer=\"crash\"}}[{window}]");
    let count = vector_map(&strata.query(&format!("count_over_time({sel})"), &t));
    let sum = vector_map(&strata.query(&format!("sum_over_time({sel})"), &t));
    assert_eq!(count["writer=crash"], acked.len().to_string());
    let want: f64 = acked.iter().map(|s| s.1).sum();
    assert_eq!(sum["writer=crash"], want.to_string());
}

fn crash_at(point: &str) {
    crash_after(point, 0);
}

/// As [`crash_at`], the fault armed only after `clean_minutes` of writes and a clean
/// restart (a head snapshot).
fn crash_after(point: &str, clean_minutes: i64) {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--storage.block-range", "1m"];
    let mut acked = Vec::new();
    if clean_minutes > 0 {
        let mut strata = Strata::start(dir.path(), &args);
        acked = write_until_crash(&mut strata, 0..clean_minutes);
        assert_eq!(acked.len() as i64, clean_minutes * 60);
        assert!(strata.terminate(), "{point}: no clean stop");
    }
    let mut strata = Strata::start_env(dir.path(), &args, &[("STRATA_FAULT", point)]);
    acked.extend(write_until_crash(&mut strata, clean_minutes..MINUTES));
    let deadline = Instant::now() + Duration::from_secs(30);
    while !strata.has_exited() {
        assert!(
            Instant::now() < deadline,
            "{point}: the fault point was never reached"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(acked.len() >= 60, "{point}: nothing was acknowledged");
    let log = std::fs::read_to_string(dir.path().join("strata-test.log")).unwrap_or_default();
    assert!(
        log.contains(&format!("point=\"{point}\"")),
        "{point}: strata ended without reaching the point:\n{log}"
    );

    let strata = Strata::start(dir.path(), &args);
    check(&strata, &acked);
    // A crash between a block's rename and the WAL's truncation leaves the block's samples
    // in the log too: replay puts them back in the head, and the next cut writes them
    // again, as an overlapping block, which a merge then folds into the first (queries
    // see each sample once meanwhile). Maintenance after the restart settles the blocks:
    // no overlap, and each holds exactly the acknowledged samples of its range.
    let deadline = Instant::now() + Duration::from_secs(30);
    let settled = loop {
        let found = blocks(dir.path());
        if !overlap(&found) {
            break found;
        }
        assert!(
            Instant::now() < deadline,
            "{point}: overlapping blocks stay: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    for &(min, max, n) in &settled {
        let want = acked.iter().filter(|s| s.0 >= min && s.0 < max).count();
        assert_eq!(
            n, want as u64,
            "{point}: block [{min}, {max}) holds {n} samples for {want} acknowledged"
        );
    }
    check(&strata, &acked);
    strata.kill9();
    let strata = Strata::start(dir.path(), &args);
    check(&strata, &acked);
}

#[test]
fn crash_with_a_block_written_but_not_renamed() {
    crash_at("block-written");
}

#[test]
fn crash_with_a_block_in_place_before_the_head_is_truncated() {
    crash_at("block-renamed");
}

#[test]
fn crash_with_the_series_kept_aside_before_the_wal_start_moves() {
    crash_at("series-checkpoint-written");
}

/// After a start from a head snapshot the segments before it were not read: the first
/// cut writes the head into a checkpoint instead.
#[test]
fn crash_with_a_checkpoint_written_before_old_segments_go() {
    crash_after("checkpoint-written", 3);
}

#[test]
fn crash_in_the_middle_of_removing_merged_blocks() {
    crash_at("merge-input-removed");
}

/// A cut that ends a merge range is written with the blocks before it in that range; a
/// crash while those are removed leaves them beside the block that holds their samples.
#[test]
fn crash_in_the_middle_of_removing_a_merged_cuts_partners() {
    crash_at("cut-partner-removed");
}
