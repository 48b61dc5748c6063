"""The mesh console with 100,000 jobs in the mesh: how long its pages' requests take.

Starts 3 real nodes on 127.0.0.1 (n2 and n3 name n1), runs real jobs through them
(one map of ``--big`` jobs and ``--maps`` maps of ``--small`` jobs each, trivial
functions, so the job tables hold what a day of work would), then times each request
a console page makes to n1's dashboard, ``--repeat`` times: n1 asks n2 and n3 and
merges. Prints one JSON object: per request, the median and the worst in ms, and the
size of the answer.

Usage: python bench/console.py [--big 50000] [--maps 500] [--small 100] [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from _nodes import start_node, stop  # noqa: E402

import mesh  # noqa: E402
from mesh._auth import dashboard_token  # noqa: E402


def noop(x: int) -> int:
    return x


def small(x: int) -> int:
    return x + 1


def get(url: str, token: str) -> tuple[float, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=120) as resp:
        body = resp.read()
    return (time.perf_counter() - t0) * 1000, body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=50_000)
    ap.add_argument("--maps", type=int, default=500)
    ap.add_argument("--small", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    secret = secrets.token_hex(32)
    token = dashboard_token(secret.encode())
    with tempfile.TemporaryDirectory() as data:
        procs = []
        try:
            p1, a1 = start_node(secret, "n1", 2, data)
            procs.append(p1)
            addrs = [a1]
            for name in ("n2", "n3"):
                p, a = start_node(secret, name, 2, data, extra=("--peer", a1))
                procs.append(p)
                addrs.append(a)
            t0 = time.perf_counter()
            with mesh.Client(addrs, secret, name="bench") as c:
                deadline = time.monotonic() + 20
                while len(c.nodes()) < 3 and time.monotonic() < deadline:
                    time.sleep(0.05)
                big = c.map(noop, range(args.big), _label="big")
                maps = [c.map(small, range(args.small), _label=f"m{i}") for i in range(args.maps)]
                c.join(big)
                for m in maps:
                    c.join(m)
            jobs = args.big + args.maps * args.small
            run_s = time.perf_counter() - t0
            with open(os.path.join(data, "n1", "dashboard")) as f:
                base = f.read().strip()
            get(base + "api/nodes", token)  # the first connection starts the dashboard
            listed = json.loads(get(base + "api/jobs?group=1&label=big", token)[1])
            key = listed["jobs"][0]["key"]
            q = urllib.parse.quote(key, safe="")
            groups = args.maps + 1
            requests = {
                "jobs_grouped_first_page": "api/jobs?group=1&limit=50",
                "jobs_grouped_last_page": f"api/jobs?group=1&limit=50&offset={groups - 50}",
                "jobs_grouped_filtered": "api/jobs?group=1&status=done&function=small",
                "jobs_first_page": "api/jobs?limit=50",
                "jobs_last_page": f"api/jobs?limit=50&offset={jobs - 50}",
                "jobs_console_filtered": "api/jobs?limit=50&function=noop&node=n2",
                "map_jobs_first_page": f"api/jobs?limit=50&map={q}",
                "map_page": f"api/map?key={q}",
                "stats_5_min": "api/stats",
            }
            out: dict[str, object] = {"nodes": 3, "workers_per_node": 2, "jobs": jobs,
                                      "groups": groups, "run_s": round(run_s, 1),
                                      "repeat": args.repeat}  # fmt: skip
            for name, path in requests.items():
                times, size, total = [], 0, None
                for _ in range(args.repeat):
                    ms, body = get(base + path, token)
                    times.append(ms)
                    size = len(body)
                    total = json.loads(body).get("total", total)
                out[name] = {"median_ms": round(statistics.median(times), 1),
                             "max_ms": round(max(times), 1), "bytes": size,
                             **({"total": total} if total is not None else {})}  # fmt: skip
            print(json.dumps(out, indent=1))
        finally:
            for p in procs:
                stop(p)


if __name__ == "__main__":
    main()
