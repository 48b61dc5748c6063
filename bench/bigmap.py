"""A huge map of trivial jobs on a local mesh of 2 nodes: time, client memory and the
client loop's worst stall. Prints one JSON object.

- client_rss_*_mib: the client process's resident memory before the map, right after
  ``map`` returned (every job prepared, most not sent yet), and its peak;
- max_loop_lag_s: the longest the client's event loop was kept from a 50 ms timer
  (a stall of seconds makes heartbeats look missed and drops nodes);
- the map runs with ``_retries=0``: a node dropped by mistake fails jobs, and the run.

With ``--item-kib K`` every job's argument is one shared K KiB bytes object: the
user's list costs nothing, and the client's memory shows the pickled arguments it keeps.

Usage: python bench/bigmap.py [--jobs 1000000] [--item-kib 0]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mesh


def noop(x: int) -> int:
    return x


def size(b: bytes) -> int:
    return len(b)


def rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", type=int, default=1_000_000)
    p.add_argument("--item-kib", type=int, default=0, help="argument size (0: the job's index)")
    args = p.parse_args()
    lags: list[float] = []

    async def probe() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(0.05)
            lags.append(time.perf_counter() - t - 0.05)

    with mesh.Client.local(2) as c:
        c.result(c.map(noop, range(1000)))  # warm: functions cached, pipelines measured
        watcher = asyncio.run_coroutine_threadsafe(probe(), c._thread.loop)
        before = rss_mib()
        t0 = time.perf_counter()
        if args.item_kib:
            jids = c.map(size, [bytes(args.item_kib << 10)] * args.jobs, _retries=0)
        else:
            jids = c.map(noop, range(args.jobs), _retries=0)
        after_map = rss_mib()
        got = sum(1 for _ in c.iresult(jids, timeout=3600))
        elapsed = time.perf_counter() - t0
        watcher.cancel()
    print(json.dumps({
        "jobs": args.jobs,
        "item_kib": args.item_kib,
        "results": got,
        "seconds": round(elapsed, 1),
        "jobs_per_s": round(args.jobs / elapsed),
        "client_rss_before_mib": round(before),
        "client_rss_after_map_mib": round(after_map),
        "client_rss_peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "max_loop_lag_s": round(max(lags, default=0.0), 3),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
