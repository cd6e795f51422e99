#!/usr/bin/env python3
"""Compares the query latency of two strata builds on copies of one store.

Usage:
  benches/ab_queries.py OLD_BINARY NEW_BINARY STORE_DIR END_SECONDS [--pairs 4]
      [--rounds 41] [--hours 6] [--query NAME=PROMQL ...]

STORE_DIR is a strata data directory (make one with
`ONLY=strata KEEP_SECONDS=600 cargo bench --bench vs_peers`, which prints where its data is
and where the data ends; copy the directory while it runs). END_SECONDS is that end.
Each pair starts both builds afresh on their own copies of the store (127.0.0.1, free
ports), then asks every query `--rounds` times of each, alternating which goes first.
Every other pair swaps the order in which they start. Printed per query: each pair's
ratio of medians, new / old, and their geometric mean.
Without --query, the range queries of `vs_peers` are used, over the last `--hours`. A
query that starts with `/` is a path asked as it is (`/api/v1/series?match[]=...`), with
the same `start` and `end`.
"""

import argparse
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

DEFAULT_QUERIES = {
    "cpu busy": 'sum by (instance) (rate(node_cpu_seconds_total{mode!="idle"}[5m]))',
    "topk": "topk(5, sum by (instance) (rate(node_network_receive_bytes_total[5m])))",
    "p99": "histogram_quantile(0.99, sum by (le, handler) "
    "(rate(http_request_duration_seconds_bucket[5m])))",
    "fs avail": "min by (instance) (node_filesystem_avail_bytes)",
}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port, path, timeout=30.0):
    """Seconds the whole answer took, and its status line."""
    start = time.perf_counter()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            b = s.recv(1 << 20)
            if not b:
                break
            chunks.append(b)
    head = b"".join(chunks[:1])[:40]
    return time.perf_counter() - start, head.split(b"\r\n", 1)[0]


def start(binary, store, workdir):
    data = os.path.join(workdir, f"data-{free_port()}")
    shutil.copytree(store, data, symlinks=True)
    port = free_port()
    log = open(os.path.join(workdir, f"{os.path.basename(data)}.log"), "wb")
    proc = subprocess.Popen(
        [binary, "serve", "--data-dir", data, "--listen", f"127.0.0.1:{port}",
         "--collect.interval", "0s"],
        stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if b"200" in get(port, "/-/ready", timeout=1)[1]:
                return proc, port
        except OSError:
            pass
        if proc.poll() is not None:
            sys.exit(f"{binary} exited; see {log.name}")
        time.sleep(0.2)
    proc.kill()
    sys.exit(f"{binary} was not ready in 60 s")


def main():
    p = argparse.ArgumentParser()
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("store")
    p.add_argument("end", type=float)
    p.add_argument("--pairs", type=int, default=4)
    p.add_argument("--rounds", type=int, default=41)
    p.add_argument("--hours", type=float, default=6)
    p.add_argument("--query", action="append", default=[])
    a = p.parse_args()
    queries = dict(q.split("=", 1) for q in a.query) or DEFAULT_QUERIES
    begin = a.end - a.hours * 3600 + 600
    # A query given as a path (the series or labels API) is asked over the same range.
    paths = {
        name: (q if q.startswith("/") else "/api/v1/query_range?query="
               + urllib.parse.quote(q, safe="") + "&step=60")
        + f"&start={begin}&end={a.end}"
        for name, q in queries.items()
    }
    ratios = {name: [] for name in paths}
    for pair in range(a.pairs):
        with tempfile.TemporaryDirectory() as work:
            order = [a.old, a.new] if pair % 2 == 0 else [a.new, a.old]
            procs = {b: start(b, a.store, work) for b in order}
            try:
                time.sleep(2)
                for name, path in paths.items():
                    took = {a.old: [], a.new: []}
                    for b in (a.old, a.new):
                        for _ in range(3):
                            _, status = get(procs[b][1], path)
                            if b"200" not in status:
                                sys.exit(f"{name}: {status!r} from {b}")
                    for r in range(a.rounds):
                        turn = (a.old, a.new) if r % 2 == 0 else (a.new, a.old)
                        for b in turn:
                            took[b].append(get(procs[b][1], path)[0])
                            time.sleep(0.004)
                    ratios[name].append(
                        statistics.median(took[a.new]) / statistics.median(took[a.old]))
            finally:
                for proc, _ in procs.values():
                    proc.terminate()
                for proc, _ in procs.values():
                    try:
                        proc.wait(timeout=30)
                    except subprocess.TimeoutExpired:
                        proc.kill()
    for name, rs in ratios.items():
        mean = math.exp(sum(map(math.log, rs)) / len(rs))
        print(f"{name}: new/old {mean:.3f} (pairs: {', '.join(f'{r:.2f}' for r in rs)})")


if __name__ == "__main__":
    main()
