#![allow(clippy::unwrap_used, clippy::expect_used)]

//! A 2xx to a write means the samples survive a restart, `kill -9`, and a torn WAL tail.

mod common;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{vector_map, write_body, Strata, Ts};

const BASE: i64 = 1_700_000_000_000;

/// Writes sample `i` (value `i`, at BASE + i s) of series `seq{writer=w}`.
fn write_seq(strata: &Strata, writer: &str, i: i64) -> u16 {
    let body = write_body(&[Ts {
        labels: vec![("__name__", "seq"), ("writer", writer)],
        samples: vec![(BASE + i * 1000, i as f64)],
    }]);
    strata.write(&body).status
}

/// How many samples of `seq{writer=w}` are stored at or before sample `last`, and their sum.
fn count_and_sum(strata: &Strata, writer: &str, last: i64) -> (u64, f64) {
    let t = format!("{}", (BASE + last * 1000) as f64 / 1000.0);
    let window = format!("{}s", last + 1);
    let sel = format!("seq{{writer=\"{writer}\"}}[{window}]");
    let count = vector_map(&strata.query(&format!("count_over_time({sel})"), &t));
    let sum = vector_map(&strata.query(&format!("sum_over_time({sel})"), &t));
    let key = format!("writer={writer}");
    (
        count.get(&key).map_or(0, |v| v.parse().unwrap()),
        sum.get(&key).map_or(0.0, |v| v.parse().unwrap()),
    )
}

#[test]
fn data_survives_a_clean_restart() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    for i in 0..50 {
        assert_eq!(write_seq(&strata, "w", i), 204);
    }
    let before = count_and_sum(&strata, "w", 49);
    assert_eq!(before, (50, (0..50).sum::<i64>() as f64));
    assert!(
        strata.terminate(),
        "SIGTERM should end strata with status 0"
    );

    let strata = Strata::start(dir.path(), &[]);
    assert_eq!(count_and_sum(&strata, "w", 49), before);
    // And it keeps appending to the same series.
    assert_eq!(write_seq(&strata, "w", 50), 204);
    assert_eq!(count_and_sum(&strata, "w", 50).0, 51);
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    for i in 0..100 {
        assert_eq!(write_seq(&strata, "w", i), 204);
    }
    // Killed right after the last acknowledgement: no chance to flush anything else.
    strata.kill9();
    let strata = Strata::start(dir.path(), &[]);
    assert_eq!(
        count_and_sum(&strata, "w", 99),
        (100, (0..100).sum::<i64>() as f64)
    );
}

#[test]
fn kill_9_during_concurrent_writes_loses_nothing_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Arc::new(Strata::start(dir.path(), &[]));
    let writers = ["a", "b", "c"];
    let acked: Vec<Arc<AtomicI64>> = writers
        .iter()
        .map(|_| Arc::new(AtomicI64::new(-1)))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(20);
    let handles: Vec<_> = writers
        .iter()
        .zip(&acked)
        .map(|(w, acked)| {
            let strata = Arc::clone(&strata);
            let acked = Arc::clone(acked);
            let w = w.to_string();
            std::thread::spawn(move || {
                let mut i = 0;
                // Bounded: stops at the first failed request (strata killed) or deadline.
                while Instant::now() < deadline {
                    let body = write_body(&[Ts {
                        labels: vec![("__name__", "seq"), ("writer", &w)],
                        samples: vec![(BASE + i * 1000, i as f64)],
                    }]);
                    match common::request(
                        strata.addr,
                        "POST",
                        "/api/v1/write",
                        &[("Content-Type", "application/x-protobuf")],
                        &body,
                    ) {
                        Ok(r) if r.status == 204 => acked.store(i, Ordering::SeqCst),
                        _ => break,
                    }
                    i += 1;
                }
            })
        })
        .collect();
    // Let the writers get going, then kill mid-stream.
    let start = Instant::now();
    while acked.iter().any(|a| a.load(Ordering::SeqCst) < 20)
        && start.elapsed() < Duration::from_secs(10)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pid = strata.pid();
    let _ = std::process::Command::new("kill")
        .arg("-9")
        .arg(pid.to_string())
        .status();
    for h in handles {
        h.join().unwrap();
    }
    drop(strata);

    let strata = Strata::start(dir.path(), &[]);
    for (w, acked) in writers.iter().zip(&acked) {
        let last = acked.load(Ordering::SeqCst);
        assert!(
            last >= 20,
            "writer {w} got too few acknowledgements ({last})"
        );
        let (count, sum) = count_and_sum(&strata, w, last);
        assert_eq!(
            count,
            (last + 1) as u64,
            "writer {w}: acknowledged samples lost"
        );
        assert_eq!(sum, (0..=last).sum::<i64>() as f64);
    }
}

#[test]
fn a_torn_wal_tail_is_cut_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    for i in 0..10 {
        assert_eq!(write_seq(&strata, "w", i), 204);
    }
    strata.kill9();
    // Half a record after the last one in the newest segment, as a crash mid-write
    // leaves it: in the zeros the segment runs ahead with (the last record ends in the
    // value 9's last byte, which is not zero).
    let wal = dir.path().join("wal");
    let mut segs: Vec<_> = std::fs::read_dir(&wal)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    let last = segs.last().unwrap();
    let mut bytes = std::fs::read(last).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    assert!(bytes.len() > end + 10, "zeros follow the records");
    bytes[end..end + 10].copy_from_slice(&[5, 200, 0, 0, 0, 1, 2, 3, 4, 5]);
    std::fs::write(last, &bytes).unwrap();

    let strata = Strata::start(dir.path(), &[]);
    assert_eq!(count_and_sum(&strata, "w", 9).0, 10);
    assert_eq!(write_seq(&strata, "w", 10), 204);
    strata.kill9();
    let strata = Strata::start(dir.path(), &[]);
    assert_eq!(count_and_sum(&strata, "w", 10).0, 11);
}

#[test]
fn blocks_are_cut_from_the_head_and_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &["--storage.block-range", "1m"]);
    // Ten minutes of one sample per second, in order, a minute per request.
    for minute in 0..10 {
        let samples: Vec<(i64, f64)> = (0..60)
            .map(|s| {
                let i = minute * 60 + s;
                (BASE + i * 1000, i as f64)
            })
            .collect();
        let body = write_body(&[Ts {
            labels: vec![("__name__", "seq"), ("writer", "blocks")],
            samples,
        }]);
        assert_eq!(strata.write(&body).status, 204);
    }
    // Blocks are cut (and merged) in the background; wait until they hold at least eight
    // of the ten minutes (bounded).
    let blocks = dir.path().join("blocks");
    let deadline = Instant::now() + Duration::from_secs(30);
    let samples_in_blocks = || -> u64 {
        std::fs::read_dir(&blocks)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| !e.file_name().to_string_lossy().starts_with(['.', 'c']))
                    .filter_map(|e| std::fs::read(e.path().join("meta.json")).ok())
                    .filter_map(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                    .filter_map(|m| m["numSamples"].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    while samples_in_blocks() < 480 {
        assert!(Instant::now() < deadline, "no blocks were cut");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        count_and_sum(&strata, "blocks", 599),
        (600, (0..600).sum::<i64>() as f64)
    );
    strata.kill9();
    let strata = Strata::start(dir.path(), &["--storage.block-range", "1m"]);
    assert_eq!(
        count_and_sum(&strata, "blocks", 599),
        (600, (0..600).sum::<i64>() as f64)
    );
    // Backfill into the range blocks already hold: accepted, queryable at once, and the
    // last write wins (sample 0 becomes 1000; the total grows by 1000).
    let body = write_body(&[Ts {
        labels: vec![("__name__", "seq"), ("writer", "blocks")],
        samples: vec![(BASE, 1000.0)],
    }]);
    assert_eq!(strata.write(&body).status, 204);
    let total = (0..600).sum::<i64>() as f64 + 1000.0;
    assert_eq!(count_and_sum(&strata, "blocks", 599), (600, total));
    strata.kill9();
    let strata = Strata::start(dir.path(), &["--storage.block-range", "1m"]);
    assert_eq!(count_and_sum(&strata, "blocks", 599), (600, total));
}

#[test]
fn the_out_of_order_window_refuses_older_samples() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &["--storage.ooo-window", "10s"]);
    assert_eq!(write_seq(&strata, "w", 100), 204);
    assert_eq!(write_seq(&strata, "w", 95), 204, "inside the window");
    let body = write_body(&[Ts {
        labels: vec![("__name__", "seq"), ("writer", "w")],
        samples: vec![(BASE + 50_000, 50.0)],
    }]);
    let r = strata.write(&body);
    assert_eq!(r.status, 400);
    assert!(r.body.contains("out-of-order window"), "{}", r.body);
    assert_eq!(count_and_sum(&strata, "w", 100), (2, 195.0));
}

/// The nice value of thread `name` of process `pid`, once it runs.
fn thread_nice(pid: u32, name: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        for task in std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .flatten()
        {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim_end() != name {
                continue;
            }
            let stat = std::fs::read_to_string(path.join("stat")).unwrap();
            // After the parenthesized name: state is field 3 of stat(5), nice field 19.
            let after = stat.rsplit_once(')').unwrap().1;
            return after.split_whitespace().nth(16).unwrap().parse().unwrap();
        }
        assert!(Instant::now() < deadline, "no thread {name} in 10 s");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether this test may raise a thread's priority to nice -10, as the server tries to.
fn may_raise_priority() -> bool {
    std::thread::spawn(|| {
        // SAFETY: `gettid` takes no arguments; `setpriority` changes only this thread,
        // which ends right after.
        #[allow(unsafe_code)]
        unsafe {
            libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, -10) == 0
        }
    })
    .join()
    .unwrap()
}

#[test]
fn the_wal_sync_thread_runs_at_a_raised_priority_where_it_may() {
    let dir = tempfile::tempdir().unwrap();
    let strata = Strata::start(dir.path(), &[]);
    // Acknowledged, so the sync thread has run.
    assert_eq!(write_seq(&strata, "nice", 1), 204);
    let nice = thread_nice(strata.pid(), "wal-sync");
    if may_raise_priority() {
        assert_eq!(nice, -10, "the sync thread kept its priority");
    } else {
        assert_eq!(
            nice, 0,
            "the sync thread's priority changed without permission"
        );
    }
    // The workers keep theirs.
    assert_eq!(thread_nice(strata.pid(), "tokio-rt-worker"), 0);
    assert_eq!(count_and_sum(&strata, "nice", 1), (1, 1.0));
}
