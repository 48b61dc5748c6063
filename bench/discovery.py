"""Discovery, liveness and placement figures on 127.0.0.1; prints one JSON object.

- node_start_to_first_use_s: a client is waiting on a map; a node is started (it
  probes and announces over mDNS); seconds until a job starts on it.
- crash_to_replaced_s: a node is SIGKILLed mid-map; seconds until the first of its
  jobs starts again elsewhere (the TCP reset path; a silent node takes the
  heartbeat's dead_after_s, 5 s, on top).
- placement: the pure placement function's cost, for 3 and 50 peers.

Usage: python bench/discovery.py [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mesh
from bench._nodes import start_node, stop
from mesh.client._placement import NodeView, plan


def nap(x: int) -> int:
    time.sleep(0.05)
    return x


def node_start_to_first_use(data: str) -> float:
    secret = secrets.token_hex(32)
    os.environ["MESH_INTERFACES"] = "127.0.0.1"
    first, _ = start_node(secret, "first", 1, data, advertise=True)
    late = None
    try:
        with mesh.Client(secret=secret) as c:
            jids = c.map(nap, range(200))
            t0 = time.time()
            late, _ = start_node(secret, "late", 1, data, advertise=True)
            c.result(jids, timeout=120)
            starts = [i.started for i in c.info(jids) if i.node == "late" and i.started]
            return min(starts) - t0
    finally:
        stop(first)
        if late is not None:
            stop(late)


def crash_to_replaced(data: str) -> float:
    secret = secrets.token_hex(32)
    a, addr_a = start_node(secret, "a", 1, data, advertise=False)
    b, addr_b = start_node(secret, "b", 1, data, advertise=False)
    try:
        with mesh.Client([addr_a, addr_b], secret) as c:
            jids = c.map(nap, range(60))
            time.sleep(0.5)
            b.send_signal(signal.SIGKILL)
            t_kill = time.time()
            c.result(jids, timeout=120)
            infos = []
            for jid in jids:  # records of jobs finished on "b" died with it
                try:
                    infos.append(c.info(jid))
                except mesh.UnknownJob:
                    continue
            redone = [
                i.started for i in infos if i.node == "a" and i.started and i.started > t_kill
            ]
            return min(redone) - t_kill
    finally:
        stop(a)
        stop(b)


def placement_us(peers: int, jobs: int = 10_000) -> dict[str, float]:
    """Microseconds per job when placing a 10,000-job map at once, and per 1-job call."""
    views = [NodeView(f"n{i}", 1 + i % 8, i % 5, 10_000) for i in range(peers)]
    t = time.perf_counter()
    for _ in range(20):
        plan(jobs, views)
    batch = (time.perf_counter() - t) / 20 / jobs
    t = time.perf_counter()
    for _ in range(2000):
        plan(1, views)
    single = (time.perf_counter() - t) / 2000
    return {"map_us_per_job": round(batch * 1e6, 3), "single_call_us": round(single * 1e6, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as data:
        starts = [node_start_to_first_use(data) for _ in range(args.repeat)]
        crashes = [crash_to_replaced(data) for _ in range(args.repeat)]
    print(json.dumps({
        "node_start_to_first_use_s": round(statistics.median(starts), 3),
        "node_start_runs_s": [round(s, 3) for s in starts],
        "crash_to_replaced_s": round(statistics.median(crashes), 3),
        "crash_runs_s": [round(s, 3) for s in crashes],
        "placement": {"3_peers": placement_us(3), "50_peers": placement_us(50)},
    }))  # fmt: skip


if __name__ == "__main__":
    main()
