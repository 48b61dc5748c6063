"""Sum the primes below n, for ten large n: builtin ``map`` against ``mesh.map``.

The seed's first example (PiCloud's ``prime1.sum_primes``). Each call is pure CPU,
so the ten calls run at once on the mesh's free cores, while builtin ``map`` runs
them one after another in this process. As in the seed, small n show the fixed
cost of a job and large n show the speedup.

    python examples/primes.py            # a local mesh of 2 nodes on 127.0.0.1
    MESH_PEERS=host1:7390,host2:7390 python examples/primes.py   # real machines
"""

from __future__ import annotations

import math
import os
import sys
import time

import mesh


def isprime(n: int) -> bool:
    """True if n is prime (trial division, deliberately slow)."""
    if n < 2:
        return False
    if n == 2:
        return True
    limit = math.ceil(math.sqrt(n))
    i = 2
    while i <= limit:
        if n % i == 0:
            return False
        i += 1
    return True


def sum_primes(n: int) -> int:
    """The sum of all primes below n."""
    return sum([x for x in range(2, n) if isprime(x)])


def main() -> None:
    # The largest start is chosen so the serial run takes a few seconds on a laptop core.
    starts = [int(a) for a in sys.argv[1:]] or [1_000, 10_000, 220_000]
    if os.environ.get("MESH_PEERS", "").strip():
        client = mesh.connect()  # the nodes in MESH_PEERS, with the mesh secret
    else:
        client = mesh.local()  # two real nodes on 127.0.0.1, like PiCloud's simulator
    try:
        nodes = client.nodes()
        slots = sum(n.workers for n in nodes)
        print(
            f"mesh: {len(nodes)} nodes, {slots} worker slots ({', '.join(n.name for n in nodes)})"
        )
        mesh.result(mesh.map(sum_primes, range(10)))  # warm the workers once

        print(f"{'n':>24}  {'builtin map':>12}  {'mesh.map':>10}  {'speedup':>8}")
        for start in starts:
            ns = range(start, start + 10)

            t0 = time.perf_counter()
            expected = list(map(sum_primes, ns))
            serial_s = time.perf_counter() - t0

            t0 = time.perf_counter()
            jids = mesh.map(sum_primes, ns)
            got = mesh.result(jids)
            mesh_s = time.perf_counter() - t0

            assert got == expected, "the mesh returned different sums"
            label = f"range({start:,}, {start + 10:,})"
            print(f"{label:>24}  {serial_s:>10.3f} s  {mesh_s:>8.3f} s  {serial_s / mesh_s:>7.2f}x")
    finally:
        mesh.close()


if __name__ == "__main__":
    main()
