#!/usr/bin/env python3
"""What one WAL commit costs the disk path: a write of about one remote-write request's
records followed by fdatasync, repeated, in three layouts of the segment file:

  append  each write grows the file (the size changes, so fdatasync writes the inode too)
  zeroed  the file runs ahead of the writes with zeros, 1 MiB at a time, as strata's WAL
          does (the size stays, so fdatasync writes the data only)
  falloc  the space ahead is reserved with posix_fallocate instead (unwritten extents,
          whose conversion is metadata again)

Prints wall and CPU time (user + system) per commit. The file lives in DIR (default: the
current directory), on the disk being measured; it is removed afterwards.

Usage: python3 benches/wal_sync.py [--dir DIR] [--commits N] [--bytes B] [--rounds R]
"""

import argparse
import os
import resource
import tempfile
import time

STEP = 1 << 20
ZEROS = bytes(64 << 10)


def run(layout: str, directory: str, commits: int, size: int) -> tuple[float, float]:
    record = os.urandom(size)
    fd, path = tempfile.mkstemp(dir=directory, prefix="wal-sync-")
    try:
        end = 0
        ahead = 0
        r0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.perf_counter()
        for _ in range(commits):
            new_end = end + size
            if layout != "append" and new_end > ahead:
                to = -(-new_end // STEP) * STEP
                if layout == "falloc":
                    os.posix_fallocate(fd, ahead, to - ahead)
                    ahead = to
                else:
                    while ahead < to:
                        n = min(len(ZEROS), to - ahead)
                        os.pwrite(fd, ZEROS[:n], ahead)
                        ahead += n
            os.pwrite(fd, record, end)
            end = new_end
            os.fdatasync(fd)
        wall = time.perf_counter() - t0
        r1 = resource.getrusage(resource.RUSAGE_SELF)
        cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    finally:
        os.close(fd)
        os.unlink(path)
    return wall / commits * 1e6, cpu / commits * 1e6


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dir", default=".", help="directory on the disk to measure")
    p.add_argument("--commits", type=int, default=3000)
    p.add_argument("--bytes", type=int, default=12_000, help="bytes per commit")
    p.add_argument("--rounds", type=int, default=2)
    a = p.parse_args()
    for _ in range(a.rounds):
        for layout in ("append", "zeroed", "falloc"):
            wall, cpu = run(layout, a.dir, a.commits, a.bytes)
            print(f"{layout:7s} {wall:7.1f} us wall  {cpu:6.1f} us CPU  per commit")


if __name__ == "__main__":
    main()
