//! Crash points for tests: with `STRATA_FAULT=<point>` in its environment, the process
//! aborts the first time it reaches that point — no destructors, no flushes, as `kill -9`
//! would stop it — so tests can check what a crash at that exact step leaves behind.
//!
//! Points: `block-written` (a block's files are synced in its temporary directory),
//! `block-renamed` (the block is in place, the head not yet truncated),
//! `series-checkpoint-written` (after a cut: the live series are written aside, the WAL's
//! start file not yet replaced), `checkpoint-written` (a WAL checkpoint of the whole head,
//! made when replay did not read every segment, is synced, older segments not yet
//! deleted), `merge-input-removed` (a merged block is in place and one of its inputs
//! deleted).

use std::sync::OnceLock;

pub(crate) fn point(name: &str) {
    static WANTED: OnceLock<Option<String>> = OnceLock::new();
    let wanted = WANTED.get_or_init(|| std::env::var("STRATA_FAULT").ok());
    if wanted.as_deref() == Some(name) {
        tracing::error!(point = name, "STRATA_FAULT: aborting at this point");
        std::process::abort();
    }
}
