"""Soak: several clients map against a few nodes while one node after another is
SIGKILLed and restarted on the same port and data dir. Prints one JSON object.

Every job's result must arrive exactly once and be right: ``lost`` counts jobs whose
result never came or was wrong, ``duplicated`` results delivered twice to a user.
Both must be 0. ``runs_over_jobs`` shows how much work the restarts cost (jobs run
again after their node died: at-least-once).

Usage: python bench/soak.py [--clients 4] [--jobs 5000] [--nodes 3]
                            [--restart-every 20] [--duration 120]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import sys
import tempfile
import threading
import time
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mesh
from bench._nodes import start_node, stop


def work(x: int, salt: int, nap: float, folder: str) -> int:
    """A job that takes ``nap`` seconds and notes that it ran (to count re-runs)."""
    import time

    with open(os.path.join(folder, f"{salt}-{x}"), "a") as f:
        f.write(".")
    time.sleep(nap)
    return x * x + salt


def soak(
    clients: int = 4,
    jobs: int = 5000,
    nodes: int = 3,
    restart_every_s: float = 20.0,
    duration_s: float = 120.0,
    workers: int = 1,
) -> dict[str, Any]:
    secret = secrets.token_hex(32)
    with tempfile.TemporaryDirectory(prefix="lanmesh-soak-") as data:
        ran = os.path.join(data, "ran")
        os.mkdir(ran)
        procs: list[Any] = []
        addresses: list[str] = []
        for i in range(nodes):
            proc, address = start_node(secret, f"s{i}", workers, data, extra=("--grace", "0"))
            procs.append(proc)
            addresses.append(address)
        # Sized so the whole soak takes about duration_s on nodes * workers slots.
        nap = max(0.0, duration_s * nodes * workers / (clients * jobs) * 0.8)
        done = threading.Event()
        restarts: list[float] = []

        def restarter() -> None:
            i = 0
            while not done.wait(restart_every_s):
                k = i % nodes
                stop(procs[k], sig_kill=True)
                port = int(addresses[k].rsplit(":", 1)[1])
                procs[k], _ = start_node(secret, f"s{k}", workers, data, port=port,
                                         extra=("--grace", "0"))  # fmt: skip
                restarts.append(time.time())
                i += 1

        outcome: dict[int, tuple[int, int]] = {}  # client -> (lost, duplicated)

        def client(n: int) -> None:
            with mesh.Client(addresses, secret) as c:
                jids = c.map(work, range(jobs), salt=n, nap=nap, folder=ran)
                seen: dict[int, int] = {}
                for value in c.iresult(jids, ordered=False, timeout=duration_s * 5 + 120):
                    seen[value] = seen.get(value, 0) + 1
                expected = {x * x + n for x in range(jobs)}
                lost = len(expected - set(seen)) + len(set(seen) - expected)
                outcome[n] = (lost, sum(k - 1 for k in seen.values() if k > 1))

        t0 = time.time()
        threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
        killer = threading.Thread(target=restarter)
        for t in threads:
            t.start()
        killer.start()
        for t in threads:
            t.join()
        done.set()
        killer.join()
        elapsed = time.time() - t0
        for proc in procs:
            stop(proc)
        runs = sum(os.path.getsize(os.path.join(ran, f)) for f in os.listdir(ran))
    total = clients * jobs
    return {
        "clients": clients,
        "jobs": total,
        "nodes": nodes,
        "restarts": len(restarts),
        "elapsed_s": round(elapsed, 1),
        "lost": sum(o[0] for o in outcome.values()) + (clients - len(outcome)) * jobs,
        "duplicated": sum(o[1] for o in outcome.values()),
        "runs_over_jobs": round(runs / total, 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--jobs", type=int, default=5000, help="jobs per client")
    p.add_argument("--nodes", type=int, default=3)
    p.add_argument("--restart-every", type=float, default=20.0, metavar="S")
    p.add_argument("--duration", type=float, default=120.0, metavar="S")
    args = p.parse_args()
    result = soak(args.clients, args.jobs, args.nodes, args.restart_every, args.duration)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
