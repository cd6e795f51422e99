//! A query whose client went away stops with `Canceled`, and an uncanceled one runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use strata_query::{Engine, EngineOptions, QueryError};
use strata_storage::{Db, Labels, Options};

#[test]
fn a_canceled_query_stops() {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::open(dir.path(), Options::default()).unwrap();
    let mut app = db.appender();
    for i in 0..100 {
        let l = Labels::from_pairs([("__name__", "m".to_string()), ("i", i.to_string())]);
        for k in 0..10 {
            app.append(&l, k * 15_000, k as f64).unwrap();
        }
    }
    app.commit().unwrap();
    let engine = Engine::new(EngineOptions::default());
    let t = Duration::from_secs(10);
    let go = AtomicBool::new(false);
    let r = engine.range_query_cancellable(&db, "sum(rate(m[1m]))", (0, 135_000, 15_000), t, &go);
    assert!(r.is_ok());
    let stop = AtomicBool::new(true);
    let r = engine.range_query_cancellable(&db, "sum(rate(m[1m]))", (0, 135_000, 15_000), t, &stop);
    assert!(matches!(r, Err(QueryError::Canceled(_))), "{:?}", r.err());
    let r = engine.instant_query_cancellable(&db, "m", 135_000, t, &stop);
    assert!(matches!(r, Err(QueryError::Canceled(_))));
}
