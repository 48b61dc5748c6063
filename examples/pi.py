"""Estimate pi by throwing darts, on the mesh: PiCloud's Monte Carlo example, "correct" use.

Each job throws its share of the darts with its own random generator, seeded per
job, and returns how many landed inside the quarter circle; one ``mesh.map``
submits every job at once and one ``mesh.result`` collects the counts, which the
client adds up. The same jobs then run one after another in this process, so we
can print the speedup (and check the counts agree: the seeds make them identical).

    python examples/pi.py                # a local mesh of 2 nodes on 127.0.0.1
    MESH_PEERS=host1:7390,host2:7390 python examples/pi.py   # real machines
    python examples/pi.py --samples 200_000_000 --jobs 32
"""

from __future__ import annotations

import argparse
import collections
import math
import os
import random
import time

import mesh


def monte_carlo(num_tests: int, seed: int) -> int:
    """Throw ``num_tests`` darts at the unit square; return how many land in the quarter circle."""
    rng = random.Random(seed)  # each job its own stream: no two jobs throw the same darts
    rand = rng.random
    in_circle = 0
    for _ in range(num_tests):
        x = rand()
        y = rand()
        if x * x + y * y < 1.0:
            in_circle += 1
    return in_circle


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--samples",
        type=lambda s: int(s.replace("_", "")),
        default=32_000_000,
        help="darts in total (default 32,000,000)",
    )
    p.add_argument("--jobs", type=int, default=8, help="jobs to split them into (default 8)")
    p.add_argument("--seed", type=int, default=2010, help="base seed; job i uses seed + i")
    args = p.parse_args()
    per_job = args.samples // args.jobs
    total = per_job * args.jobs
    seeds = [args.seed + i for i in range(args.jobs)]

    if os.environ.get("MESH_PEERS", "").strip():
        client = mesh.connect()  # the nodes in MESH_PEERS, with the mesh secret
    else:
        client = mesh.local(2)  # two real nodes on 127.0.0.1, like PiCloud's simulator
    try:
        print(
            f"throwing {total:,} darts in {args.jobs} jobs on "
            f"{'a local mesh' if mesh.is_local() else 'the mesh'} of "
            f"{len(client.nodes())} nodes ...",
            flush=True,
        )

        t0 = time.perf_counter()
        jids = mesh.map(monte_carlo, [per_job] * args.jobs, seeds)  # all jobs at once
        counts = mesh.result(jids)  # one request for every count
        mesh_s = time.perf_counter() - t0
        in_circle = sum(counts)
        pi = 4 * in_circle / total

        used = collections.Counter(i.node for i in mesh.info(jids))
        print(f"pi is about {pi:.6f} (error {abs(pi - math.pi):.1e}), in {mesh_s:.2f} s")
        print("nodes used: " + ", ".join(f"{name} ({n} jobs)" for name, n in sorted(used.items())))

        print("the same jobs in this one process ...", flush=True)
        t0 = time.perf_counter()
        serial = sum(map(monte_carlo, [per_job] * args.jobs, seeds))
        serial_s = time.perf_counter() - t0
        same = "same counts" if serial == in_circle else "DIFFERENT counts (a bug!)"
        print(
            f"one process: {serial_s:.2f} s ({same}); speedup on the mesh: {serial_s / mesh_s:.2f}x"
        )
    finally:
        mesh.close()


if __name__ == "__main__":
    main()
