//! WAL syncs for remote write, on a thread of their own.
//!
//! A remote write is acknowledged only once its samples are in the WAL on stable storage.
//! Waiting for the fdatasync on the HTTP worker that decoded the request leaves that
//! worker idle meanwhile (about 0.1 ms a sync on local disks, once per request or group
//! of requests), and the other workers wait for the same sync behind the group-commit
//! lock: on two cores, a quarter of the ingest rate. Here a request commits without the
//! sync ([`strata_storage::Appender::commit_unsynced`]), registers what it needs synced,
//! and awaits; the worker decodes the next request meanwhile. The sync thread takes every
//! request registered while the previous sync ran and covers them with one fdatasync.
//!
//! ```text
//!  worker: decode ─> WAL write + head ─> register ─> await ··········· answer 204
//!  sync thread:                  (waiting) ─> take all ─> fdatasync ─> wake them ─┘
//! ```

use std::io;
use std::sync::{Arc, Condvar, Mutex, PoisonError};

use strata_storage::{Db, Error, Unsynced};

use crate::rules::lock;
use tokio::sync::oneshot;

type Waiter = oneshot::Sender<Result<(), Arc<Error>>>;

#[derive(Default)]
struct Queue {
    waiting: Vec<(Unsynced, Waiter)>,
    stopped: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// Hands WAL syncs to a thread of their own; stops it when dropped (or [`WalSync::stop`]).
pub(crate) struct WalSync {
    db: Db,
    shared: Arc<Shared>,
}

impl WalSync {
    /// Starts the sync thread for `db`.
    pub(crate) fn start(db: Db) -> io::Result<WalSync> {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue::default()),
            wake: Condvar::new(),
        });
        let (thread_db, thread_shared) = (db.clone(), Arc::clone(&shared));
        std::thread::Builder::new()
            .name("wal-sync".into())
            .spawn(move || sync_loop(&thread_db, &thread_shared))?;
        Ok(WalSync { db, shared })
    }

    /// Returns once the WAL writes through `unsynced` are on stable storage, or with the
    /// sync's error.
    pub(crate) async fn durable(&self, unsynced: Unsynced) -> Result<(), Error> {
        if self.db.is_durable(unsynced) {
            return Ok(());
        }
        let (tx, rx) = oneshot::channel();
        let first = {
            let mut q = lock(&self.shared.queue);
            if q.stopped {
                drop(q);
                // Shutting down: the caller's worker syncs itself.
                return self.db.sync_wal(unsynced);
            }
            q.waiting.push((unsynced, tx));
            q.waiting.len() == 1
        };
        // The thread checks the queue under its lock before it waits, so a notification
        // is needed only when the queue was empty (saving a system call per request).
        if first {
            self.shared.wake.notify_one();
        }
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(copy_error(&e)),
            // The thread is gone (it does not panic); sync here.
            Err(_) => self.db.sync_wal(unsynced),
        }
    }

    /// Ends the sync thread once it has answered every request registered.
    pub(crate) fn stop(&self) {
        lock(&self.shared.queue).stopped = true;
        self.shared.wake.notify_one();
    }
}

impl Drop for WalSync {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The nice value the sync thread asks for. It runs for a few microseconds at a time
/// (about 5 % of a core at full ingest) and is woken two or three times per sync; at the
/// workers' priority each wake waited 61 µs on average for a busy CPU (`perf sched
/// timehist`, 20-host ingest on 2 vCPUs), and every acknowledgment with it.
const SYNC_NICE: libc::c_int = -10;

/// Raises the calling thread's priority to [`SYNC_NICE`] where the process may (root, or
/// `CAP_SYS_NICE`); elsewhere it stays as it is.
fn raise_priority() {
    // SAFETY: `gettid` takes no arguments; `setpriority` changes only this thread's nice
    // value (Linux keeps one per thread) and reports failure through its result.
    #[allow(unsafe_code)]
    let raised = unsafe {
        let tid = libc::gettid();
        libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, SYNC_NICE) == 0
    };
    if !raised {
        tracing::debug!(
            nice = SYNC_NICE,
            "the WAL sync thread keeps the default priority (no permission to raise it)"
        );
    }
}

fn sync_loop(db: &Db, shared: &Shared) {
    raise_priority();
    loop {
        let batch = {
            let mut q = lock(&shared.queue);
            while q.waiting.is_empty() && !q.stopped {
                q = shared.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
            if q.waiting.is_empty() {
                return;
            }
            std::mem::take(&mut q.waiting)
        };
        let through = batch.iter().map(|&(u, _)| u).max().unwrap_or_default();
        let result = db.sync_wal(through).map_err(Arc::new);
        for (_, tx) in batch {
            // A waiter that went away (its connection closed) needs no answer.
            let _ = tx.send(result.clone());
        }
    }
}

/// The same error again, for each of the requests one failed sync answers.
fn copy_error(e: &Error) -> Error {
    match e {
        Error::Io { path, source } => Error::Io {
            path: path.clone(),
            source: io::Error::new(source.kind(), source.to_string()),
        },
        other => Error::Io {
            path: "wal".into(),
            source: io::Error::other(other.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_storage::{Labels, Options};

    fn labels(name: &str) -> Labels {
        Labels::from_pairs([("__name__", name)])
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_commits_are_durable_once_awaited() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::open(dir.path(), Options::default()).unwrap();
        let sync = Arc::new(WalSync::start(db.clone()).unwrap());
        let mut tasks = Vec::new();
        for i in 0..16 {
            let (db, sync) = (db.clone(), Arc::clone(&sync));
            tasks.push(tokio::spawn(async move {
                let mut app = db.appender();
                app.append(&labels(&format!("m{i}")), 1_000, i as f64)
                    .unwrap();
                let (stats, unsynced) = app.commit_unsynced().unwrap();
                assert_eq!(stats.samples, 1);
                sync.durable(unsynced).await.unwrap();
                assert!(db.is_durable(unsynced));
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        sync.stop();
        // Stopped: a late request syncs on its own worker and still returns durable.
        let mut app = db.appender();
        app.append(&labels("late"), 2_000, 1.0).unwrap();
        let (_, unsynced) = app.commit_unsynced().unwrap();
        assert!(!db.is_durable(unsynced));
        sync.durable(unsynced).await.unwrap();
        assert!(db.is_durable(unsynced));
    }
}
