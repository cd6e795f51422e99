//! A full collection of a host with 200 containers: the cgroup collector over a cgroup v2
//! tree of 200 Docker-named container scopes (real kernel file formats, in a temporary
//! directory), plus the node collectors on this machine's /proc.
//!
//! Run: `cargo bench -p strata-exporters --bench collect`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use strata_exporters::{node_collectors, Cgroups, Collector};

fn tree(containers: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let root = dir.path();
    let write = |rel: &str, text: &str| {
        let p = root.join(rel);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        std::fs::write(p, text).unwrap_or_else(|e| panic!("{e}"));
    };
    write("cgroup.controllers", "cpuset cpu io memory pids\n");
    for i in 0..containers {
        let scope = format!("system.slice/docker-{i:064x}.scope");
        write(&format!("{scope}/cpu.stat"), "usage_usec 123456789\nuser_usec 100000000\nsystem_usec 23456789\nnr_periods 1000\nnr_throttled 17\nthrottled_usec 123456\nnr_bursts 0\nburst_usec 0\n");
        write(&format!("{scope}/cpu.max"), "100000 100000\n");
        write(&format!("{scope}/cpu.weight"), "100\n");
        write(&format!("{scope}/memory.current"), "268435456\n");
        write(&format!("{scope}/memory.stat"), "anon 134217728\nfile 67108864\nkernel 4194304\nkernel_stack 65536\npagetables 524288\nsock 0\nshmem 0\nfile_mapped 8388608\nfile_dirty 0\nfile_writeback 0\nswapcached 0\nanon_thp 0\ninactive_anon 0\nactive_anon 134217728\ninactive_file 33554432\nactive_file 33554432\nunevictable 0\n");
        write(&format!("{scope}/memory.max"), "1073741824\n");
        write(&format!("{scope}/memory.swap.current"), "0\n");
        write(
            &format!("{scope}/memory.events"),
            "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
        );
        write(&format!("{scope}/pids.current"), "7\n");
        write(
            &format!("{scope}/io.stat"),
            "8:0 rbytes=1048576 wbytes=2097152 rios=100 wios=200 dbytes=0 dios=0\n",
        );
        write(&format!("{scope}/cpu.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=12345\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
        write(&format!("{scope}/memory.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
        write(&format!("{scope}/io.pressure"), "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n");
    }
    dir
}

fn bench(c: &mut Criterion) {
    let dir = tree(200);
    let cgroups = Cgroups::new(dir.path(), dir.path().join("none"));
    let node = node_collectors("/proc");
    let mut g = c.benchmark_group("collect");
    g.bench_function("cgroup_v2_200_containers", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(8192);
            cgroups.collect(&mut out).unwrap_or_else(|e| panic!("{e}"));
            black_box(out.len())
        })
    });
    g.bench_function("node_collectors_this_host", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(2048);
            for c in &node {
                let _ = c.collect(&mut out);
            }
            black_box(out.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
