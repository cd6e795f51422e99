//! Helper threads that wait, parked, for a query or a request to share its work with them.
//!
//! A thread spawned for each parallel part of a query costs its caller 30–60 µs and starts
//! 190–280 µs later on this 2-vCPU machine; a parked helper costs a wake-up (under 10 µs)
//! and runs 130–180 µs later. A helper's turn that has not started when the caller is done
//! with the work is withdrawn, so the caller never waits for a core to wake for nothing.
//!
//! Helpers are kept off the CPU their caller runs on ([`keep_off`]), and a caller waits
//! for its helpers awake. Left to itself, the scheduler of a small virtual machine may
//! queue a woken helper behind its caller on the caller's CPU while the other one idles,
//! and wake a caller that slept onto its helper's CPU: the two halves of a query then run
//! one after the other, 2–3 ms late (seen with `perf sched timehist` on a 2-vCPU guest).

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
    /// Their thread ids, for [`keep_off`].
    tids: Vec<libc::pid_t>,
    /// The CPU the helpers are kept off now.
    kept_off: Option<usize>,
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
        // A helper sharing out work of its own leaves the placement as it is.
        if let Some(cpu) = current_cpu().filter(|_| !IS_HELPER.get()) {
            if q.kept_off != Some(cpu) {
                keep_off(&q.tids, cpu);
                q.kept_off = Some(cpu);
            }
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
        // Waits awake, giving way to any thread ready on this CPU: woken from a sleep by
        // the helper, the caller would be placed on the helper's CPU and share it with
        // that helper in the next piece of work.
        loop {
            let running = call.running.lock().unwrap_or_else(PoisonError::into_inner);
            if running.0 == 0 {
                panicked |= running.1;
                break;
            }
            drop(running);
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            std::thread::yield_now();
        }
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

thread_local! {
    /// Whether this thread is a helper.
    static IS_HELPER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// The CPUs the process's main thread may run on, unless they cannot be read.
fn affinity() -> Option<libc::cpu_set_t> {
    // SAFETY: `getpid` takes no arguments. An all-zero `cpu_set_t` is an empty set; the
    // kernel writes at most its size into it.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let main = libc::getpid();
        (libc::sched_getaffinity(main, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0)
            .then_some(set)
    }
}

/// The CPUs this process may run on (its main thread's, when first asked): two or more,
/// or none when the helpers cannot be placed (one CPU, or the set is unknown).
fn cpus() -> &'static [usize] {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| {
        let Some(set) = affinity() else {
            return Vec::new();
        };
        // SAFETY: `CPU_ISSET` reads the set in bounds for every CPU below `CPU_SETSIZE`.
        #[allow(unsafe_code)]
        let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| unsafe { libc::CPU_ISSET(c, &set) })
            .collect();
        if cpus.len() >= 2 {
            cpus
        } else {
            Vec::new()
        }
    })
}

/// The CPU the calling thread runs on, when helpers can be placed.
fn current_cpu() -> Option<usize> {
    if cpus().is_empty() {
        return None;
    }
    // SAFETY: no arguments; returns the CPU number or -1.
    #[allow(unsafe_code)]
    let cpu = unsafe { libc::sched_getcpu() };
    usize::try_from(cpu).ok()
}

/// Lets the threads `tids` run on any of the process's CPUs but `cpu`.
fn keep_off(tids: &[libc::pid_t], cpu: usize) {
    for &tid in tids {
        set_cpus(tid, |c| c != cpu);
    }
}

/// Lets thread `tid` run on the process's CPUs that `keep` keeps. A failure (a sandbox
/// that forbids it) leaves it where it may run.
fn set_cpus(tid: libc::pid_t, keep: impl Fn(usize) -> bool) {
    // SAFETY: an all-zero `cpu_set_t` is an empty set; `CPU_SET` writes within it for
    // CPUs below `CPU_SETSIZE`, which every CPU `cpus` found is; the kernel only reads
    // the set, of the size given.
    #[allow(unsafe_code)]
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus().iter().filter(|&&c| keep(c)) {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// A helper thread: takes turns as they come, parked in between.
fn help() {
    let pool = pool();
    {
        // SAFETY: no arguments; returns the calling thread's id.
        #[allow(unsafe_code)]
        let tid = unsafe { libc::gettid() };
        IS_HELPER.set(true);
        let mut q = pool.queue.lock().unwrap_or_else(PoisonError::into_inner);
        q.tids.push(tid);
        if let Some(cpu) = q.kept_off {
            keep_off(&[tid], cpu);
        }
    }
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
