//! Where helper threads run: off the CPU of the thread that shares work with them. Alone
//! in its test binary, so that no other test shares the helpers meanwhile.

#![allow(unsafe_code)]

use std::sync::Mutex;
use std::thread::ThreadId;
use std::time::Duration;

use strata_storage::helpers::together;

/// The CPUs the calling thread may run on.
fn allowed() -> Vec<usize> {
    // SAFETY: an all-zero `cpu_set_t` is an empty set; the kernel writes at most its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// Lets the calling thread run on `cpus` only.
fn run_on(cpus: &[usize]) {
    // SAFETY: as in `allowed`; `CPU_SET` writes within the set for these CPUs.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        assert_eq!(
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

#[test]
fn helpers_run_off_the_cpu_of_the_thread_that_shares_the_work() {
    let all = allowed();
    if all.len() < 2 {
        return;
    }
    // The caller moves from CPU to CPU, held on each so that it cannot move meanwhile;
    // its helper must follow, to another one.
    let caller = std::thread::current().id();
    let mut both = 0;
    for round in 0..100 {
        let cpu = all[round % all.len()];
        run_on(&[cpu]);
        let seen: Mutex<Vec<(ThreadId, usize, Vec<usize>)>> = Mutex::new(Vec::new());
        together(1, &|| {
            // SAFETY: no arguments; the CPU number or -1.
            let at = unsafe { libc::sched_getcpu() };
            let entry = (std::thread::current().id(), at as usize, allowed());
            seen.lock().unwrap_or_else(|e| e.into_inner()).push(entry);
            // Long enough for the helper to start while the caller still works.
            std::thread::sleep(Duration::from_millis(2));
        });
        for (id, at, may) in seen.into_inner().unwrap_or_else(|e| e.into_inner()) {
            if id == caller {
                assert_eq!(at, cpu);
                continue;
            }
            assert_ne!(at, cpu, "round {round}: a helper ran on its caller's CPU");
            assert!(
                !may.contains(&cpu),
                "round {round}: a helper may run on {cpu}"
            );
            assert_eq!(
                may.len(),
                all.len() - 1,
                "round {round}: helper kept off more"
            );
            both += 1;
        }
    }
    run_on(&all);
    assert!(both > 0, "no helper took a turn in 100 calls");
}
