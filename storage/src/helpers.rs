//! Helper threads that wait, parked, for a query or a request to share its work with them.
//!
//! A thread spawned for each parallel part of a query costs its caller 30–60 µs and starts
//! 190–280 µs later on this 2-vCPU machine; a parked helper costs a wake-up (under 10 µs)
//! and runs 130–180 µs later. A helper's turn that has not started when the caller is done
//! with the work is withdrawn, so the caller never waits for a core to wake for nothing.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};

/// One participant's turn at a shared piece of work.
struct Turn {
    /// The work, borrowed from the caller of [`together`], which does not return before
    /// this turn is withdrawn or has ended.
    work: *const (dyn Fn() + Sync + 'static),
    call: Arc<Call>,
}

// SAFETY: the pointee is `Sync`, and it outlives every use of the pointer (see `together`).
#[allow(unsafe_code)]
unsafe impl Send for Turn {}

/// What a caller of [`together`] waits on.
#[derive(Default)]
struct Call {
    /// Turns started and not yet ended, and whether one of them panicked.
    running: Mutex<(usize, bool)>,
    ended: Condvar,
}

struct Pool {
    queue: Mutex<Queue>,
    wake: Condvar,
}

#[derive(Default)]
struct Queue {
    turns: VecDeque<Turn>,
    /// Helper threads started so far.
    threads: usize,
}

fn pool() -> &'static Pool {
    static POOL: OnceLock<Pool> = OnceLock::new();
    POOL.get_or_init(|| Pool {
        queue: Mutex::new(Queue::default()),
        wake: Condvar::new(),
    })
}

/// Runs `work` on the calling thread and on up to `helpers` helper threads at the same
/// time; `work` shares itself out (a cursor over parts, say). Returns once every helper
/// that took a turn is done with it; a turn not yet taken by then is withdrawn. Returns
/// whether any call of `work` panicked (the panic itself is not passed on).
pub fn together(helpers: usize, work: &(dyn Fn() + Sync)) -> bool {
    let pool = pool();
    let call = Arc::new(Call::default());
    // SAFETY: only the lifetime is erased. The pointer is used by a helper that took the
    // turn from the queue; below, this function removes its turns still queued and then
    // waits until every turn taken has ended, so `work` outlives every use.
    #[allow(unsafe_code)]
    let erased: *const (dyn Fn() + Sync + 'static) = unsafe {
        std::mem::transmute::<*const (dyn Fn() + Sync + '_), *const (dyn Fn() + Sync + 'static)>(
            work,
        )
    };
    if helpers > 0 {
        let mut q = pool.queue.lock().unwrap_or_else(PoisonError::into_inner);
        for _ in 0..helpers {
            q.turns.push_back(Turn {
                work: erased,
                call: Arc::clone(&call),
            });
        }
        // Helpers are started as the work asks for them and stay parked between calls.
        while q.threads < helpers {
            let started = std::thread::Builder::new()
                .name("helper".into())
                .spawn(help);
            if started.is_err() {
                break;
            }
            q.threads += 1;
        }
        drop(q);
        for _ in 0..helpers {
            pool.wake.notify_one();
        }
    }
    let mut panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err();
    if helpers > 0 {
        let mut q = pool.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.turns.retain(|t| !Arc::ptr_eq(&t.call, &call));
        drop(q);
        let mut running = call.running.lock().unwrap_or_else(PoisonError::into_inner);
        while running.0 > 0 {
            running = call
                .ended
                .wait(running)
                .unwrap_or_else(PoisonError::into_inner);
        }
        panicked |= running.1;
    }
    panicked
}

/// `f` over each of `parts`, taken in turn by the calling thread and up to `helpers`
/// helpers, the results in the parts' order. After a result for which `stop` holds, no
/// further part is taken. `None` for a part not done: one after a stop, or one whose `f`
/// panicked (the panic itself is not passed on).
pub fn in_parts<P: Sync, R: Send>(
    helpers: usize,
    parts: &[P],
    f: impl Fn(&P) -> R + Sync,
    stop: impl Fn(&R) -> bool + Sync,
) -> Vec<Option<R>> {
    let done: Vec<Mutex<Option<R>>> = parts.iter().map(|_| Mutex::new(None)).collect();
    let next = AtomicUsize::new(0);
    together(helpers, &|| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(part) = parts.get(i) else { return };
        let r = f(part);
        let stopping = stop(&r);
        put(&done[i], r);
        if stopping {
            next.fetch_max(parts.len(), Ordering::Relaxed);
            return;
        }
    });
    done.into_iter()
        .map(|d| d.into_inner().unwrap_or_else(PoisonError::into_inner))
        .collect()
}

/// `a()` on the calling thread and `b()` on a helper, or both on the calling thread when
/// no helper has taken `b` by the time `a` is done. A panic in either goes on here.
pub fn join<A: Send, B: Send>(
    a: impl FnOnce() -> A + Send,
    b: impl FnOnce() -> B + Send,
) -> (A, B) {
    let (a, b) = (Mutex::new(Some(a)), Mutex::new(Some(b)));
    let (ra, rb) = (Mutex::new(None), Mutex::new(None));
    let panicked = together(1, &|| {
        if let Some(f) = take(&a) {
            put(&ra, f());
        }
        if let Some(f) = take(&b) {
            put(&rb, f());
        }
    });
    match (take(&ra), take(&rb)) {
        (Some(x), Some(y)) if !panicked => (x, y),
        _ => panic!("a part run beside a helper thread panicked"),
    }
}

/// Drops `v` on a thread kept for that, off the caller's path: what a query read (the
/// chunk views of thousands of series: reference counts and small buffers, 0.2-0.3 ms
/// for a thousand) is let go while its answer is sent rather than before. Dropped here
/// when that thread cannot be started.
pub fn drop_later<T: Send + 'static>(v: T) {
    type Garbage = Box<dyn Send>;
    static DROPPER: OnceLock<Option<std::sync::mpsc::Sender<Garbage>>> = OnceLock::new();
    let dropper = DROPPER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<Garbage>();
        std::thread::Builder::new()
            .name("dropper".into())
            .spawn(move || rx.into_iter().for_each(drop))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = dropper {
        // A send fails only when the thread is gone; the value then comes back here.
        drop(tx.send(Box::new(v)));
    }
}

fn take<T>(m: &Mutex<Option<T>>) -> Option<T> {
    m.lock().unwrap_or_else(PoisonError::into_inner).take()
}

fn put<T>(m: &Mutex<Option<T>>, v: T) {
    *m.lock().unwrap_or_else(PoisonError::into_inner) = Some(v);
}

/// A helper thread: takes turns as they come, parked in between.
fn help() {
    let pool = pool();
    loop {
        let turn = {
            let mut q = pool.queue.lock().unwrap_or_else(PoisonError::into_inner);
            loop {
                if let Some(t) = q.turns.pop_front() {
                    // Counted as started while the queue is locked: the caller, which
                    // withdraws under the same lock, then waits for it.
                    t.call
                        .running
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .0 += 1;
                    break t;
                }
                q = pool.wake.wait(q).unwrap_or_else(PoisonError::into_inner);
            }
        };
        // SAFETY: the caller of `together` waits for this turn to end (above).
        #[allow(unsafe_code)]
        let work = unsafe { &*turn.work };
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)).is_err();
        let mut running = turn
            .call
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        running.0 -= 1;
        running.1 |= panicked;
        turn.call.ended.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn every_part_is_done_once_and_borrowed_data_outlives_the_helpers() {
        for _ in 0..200 {
            let parts: Vec<AtomicUsize> = (0..64).map(|_| AtomicUsize::new(0)).collect();
            let next = AtomicUsize::new(0);
            let panicked = together(3, &|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(p) = parts.get(i) else { return };
                p.fetch_add(1, Ordering::Relaxed);
            });
            assert!(!panicked);
            assert!(parts.iter().all(|p| p.load(Ordering::Relaxed) == 1));
        }
    }

    #[test]
    fn in_parts_keeps_order_and_stops_after_a_stop() {
        let parts: Vec<usize> = (0..100).collect();
        let all = in_parts(1, &parts, |&i| i * 3, |_| false);
        assert_eq!(all, parts.iter().map(|&i| Some(i * 3)).collect::<Vec<_>>());
        // On the calling thread alone the parts go in order: none after the stop.
        let stopped = in_parts(0, &parts, |&i| i, |&r| r == 40);
        assert!(stopped[..=40].iter().all(Option::is_some));
        assert!(stopped[41..].iter().all(Option::is_none));
    }

    #[test]
    fn join_gives_both_results_whoever_runs_them() {
        for i in 0..200u64 {
            let mut v: Vec<u64> = (0..1000).map(|k| (k * 7919 + i) % 1000).collect();
            let (front, back) = v.split_at_mut(500);
            let (x, y) = join(
                || {
                    front.sort_unstable();
                    front[0]
                },
                || {
                    back.sort_unstable();
                    back.len()
                },
            );
            assert_eq!((x, y), (*v[..500].iter().min().unwrap(), 500));
            assert!(v[..500].is_sorted() && v[500..].is_sorted());
        }
    }

    #[test]
    fn what_is_dropped_later_is_dropped_off_the_calling_thread() {
        struct Noted(Arc<Mutex<Option<std::thread::ThreadId>>>);
        impl Drop for Noted {
            fn drop(&mut self) {
                *self.0.lock().unwrap_or_else(PoisonError::into_inner) =
                    Some(std::thread::current().id());
            }
        }
        let by = Arc::new(Mutex::new(None));
        drop_later(Noted(Arc::clone(&by)));
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let dropper = loop {
            if let Some(id) = *by.lock().unwrap_or_else(PoisonError::into_inner) {
                break id;
            }
            assert!(std::time::Instant::now() < until, "not dropped in 10 s");
            std::thread::sleep(std::time::Duration::from_millis(1));
        };
        assert_ne!(dropper, std::thread::current().id());
    }

    #[test]
    fn a_panicking_helper_is_reported_and_the_pool_goes_on() {
        let calls = AtomicUsize::new(0);
        let panicked = together(1, &|| {
            // The second participant to arrive panics, whichever thread it is.
            if calls.fetch_add(1, Ordering::SeqCst) == 1 {
                panic!("a part failed");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        });
        // The helper may have been withdrawn before it started: then nothing panicked.
        assert_eq!(panicked, calls.load(Ordering::SeqCst) == 2);
        let done = AtomicUsize::new(0);
        assert!(!together(1, &|| {
            done.fetch_add(1, Ordering::SeqCst);
        }));
        assert!(done.load(Ordering::SeqCst) >= 1);
    }
}
