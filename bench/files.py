"""mesh.files throughput: put and get MB/s beside raw loopback TCP, and getf's first byte.

Two real nodes on 127.0.0.1 that know each other (their data dirs in a temp dir on
this machine's disk, so puts pay for fsync like a real node). For each size, ``put``
(1 replica: client -> node, the figure to hold against raw TCP; and 2 replicas, the
default) and ``get`` (node -> a local file), each byte checked by SHA-256 on both
ends; raw loopback TCP throughput is measured in the same run, and so is the disk's
own floor for a put: plain Python writing the same size to a new file in the nodes'
data dir (16 MiB writes of one buffer), then fdatasync, as a put must before it
returns. Then the time to first byte of ``getf`` inside a job whose node lacks the
blob (it pulls it from its peer first), and from a client. Prints one JSON object.
With ``--repeat N`` every figure is the median of N runs.

    python bench/files.py              # 1 MB, 100 MB and 1 GB
    python bench/files.py --quick      # 1 MB and 100 MB
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _nodes import start_node, stop  # type: ignore[import-not-found]

import mesh

MB = 1 << 20
perf = time.perf_counter


def log(msg: str) -> None:
    print(f"bench/files: {msg}", file=sys.stderr, flush=True)


def raw_tcp_mb_s(size: int) -> float:
    """Blocking sockets, receiver in a thread: what this machine's loopback gives."""
    chunk = memoryview(bytearray(MB))
    done: list[float] = []

    def receive(listener: socket.socket) -> None:
        conn, _ = listener.accept()
        with conn:
            buf = bytearray(MB)
            left = size
            while left > 0:
                n = conn.recv_into(buf, min(len(buf), left))
                if not n:
                    break
                left -= n
            conn.sendall(b"k")

    with socket.create_server(("127.0.0.1", 0)) as listener:
        t = threading.Thread(target=receive, args=(listener,), daemon=True)
        t.start()
        with socket.create_connection(listener.getsockname()) as s:
            t0 = perf()
            left = size
            while left > 0:
                n = min(MB, left)
                s.sendall(chunk[:n])
                left -= n
            assert s.recv(1) == b"k"
            done.append(perf() - t0)
        t.join()
    return size / MB / done[0]


def disk_mb_s(folder: Path, size: int) -> float:
    """Write ``size`` bytes to a new file in ``folder`` with big writes, then fdatasync:
    the most a put that returns once its bytes are durable can get from this disk."""
    block = memoryview(os.urandom(16 * MB))
    path = folder / f".disk-floor-{secrets.token_hex(4)}.bin"
    t0 = perf()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        left = size
        while left > 0:
            left -= os.write(fd, block[: min(len(block), left)])
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dt = perf() - t0
    path.unlink()
    return size / MB / dt


def median_of(repeat: int, measure: Any, *args: Any) -> float:
    return statistics.median(measure(*args) for _ in range(repeat))


def put_mb_s(c: mesh.Client, src: Path, name: str, replicas: int) -> float:
    """Put ``src`` as ``name`` with a new first block (so a new blob: no repeat
    replaces the blob of the one before), then delete it, untimed."""
    with open(src, "r+b") as f:
        f.write(os.urandom(8))
    t0 = perf()
    c.files.put(src, name, replicas=replicas)
    mb_s = src.stat().st_size / MB / (perf() - t0)
    c.files.delete(name)
    return mb_s


def get_mb_s(c: mesh.Client, name: str, size: int, dest: Path) -> float:
    t0 = perf()
    c.files.get(name, dest)
    mb_s = size / MB / (perf() - t0)
    dest.unlink()
    return mb_s


def make_file(path: Path, size: int) -> None:
    block = os.urandom(MB)
    with open(path, "wb") as f:
        for i in range(0, size, MB):
            f.write((block[:-8] + i.to_bytes(8, "big"))[: min(MB, size - i)])


def first_byte_in_job(name: str) -> tuple[str, float]:
    """On the job's node: seconds from asking for ``name`` to holding its first byte."""
    import mesh

    time.sleep(0.3)  # the jobs of a map of two run at once: one on each node
    t0 = time.perf_counter()
    with mesh.files.getf(name) as f:
        f.read(1)
        return f.name, time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="1 MB and 100 MB only")
    p.add_argument("--repeat", type=int, default=1, help="median of this many runs (default 1)")
    p.add_argument(
        "--dir", default=None, help="where nodes and test files live (default: a temp dir)"
    )
    args = p.parse_args()
    sizes = [1 * MB, 100 * MB] + ([] if args.quick else [1024 * MB])
    base = Path(args.dir or tempfile.mkdtemp(prefix="lanmesh-bench-files-"))
    base.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_hex(32)
    procs = []
    out: dict[str, Any] = {"cpus": os.cpu_count(), "sizes_mb": [s // MB for s in sizes],
                           "repeat": args.repeat}  # fmt: skip
    try:
        p1, a1 = start_node(secret, "n1", 1, str(base))
        procs.append(p1)
        p2, a2 = start_node(secret, "n2", 1, str(base), extra=("--peer", a1))
        procs.append(p2)
        with mesh.Client([a1, a2], secret) as c:
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:  # until puts reach both nodes
                if len(c.files.putf(b"probe", "probe", replicas=2).nodes) == 2:
                    break
                time.sleep(0.2)
            rows = []
            for size in sizes:
                src = base / f"src-{size // MB}MB.bin"
                make_file(src, size)
                row: dict[str, Any] = {"mb": size // MB}
                raw = median_of(args.repeat, raw_tcp_mb_s, max(size, 100 * MB))
                row["raw_tcp_mb_s"] = round(raw, 1)
                disk = median_of(args.repeat, disk_mb_s, base / "n1", size)
                row["disk_write_fdatasync_mb_s"] = round(disk, 1)
                for replicas in (1, 2):
                    name = f"bench/{size // MB}MB-r{replicas}"
                    mb_s = median_of(args.repeat, put_mb_s, c, src, name, replicas)
                    row[f"put_r{replicas}_mb_s"] = round(mb_s, 1)
                c.files.put(src, f"bench/{size // MB}MB-r1", replicas=1)  # for the gets
                mb_s = median_of(args.repeat, get_mb_s, c, f"bench/{size // MB}MB-r1", size,
                                 base / "dest.bin")  # fmt: skip
                row["get_mb_s"] = round(mb_s, 1)
                row["put_vs_raw"] = round(row["put_r1_mb_s"] / raw, 3)
                row["get_vs_raw"] = round(row["get_mb_s"] / raw, 3)
                row["put_vs_disk"] = round(row["put_r1_mb_s"] / disk, 3)
                log(json.dumps(row))
                rows.append(row)
                src.unlink()
                c.files.delete(f"bench/{size // MB}MB-r1")
            out["transfers"] = rows
            ttfb = {}
            for size in (1 * MB, 100 * MB):
                name = f"ttfb/{size // MB}MB"
                src = base / "ttfb.bin"
                make_file(src, size)
                c.files.put(src, name, replicas=1)
                (holder,) = c.files.info(name).nodes
                lacking = str(base / ("n2" if holder == "n1" else "n1"))
                got = c.result(c.map(first_byte_in_job, [name, name]))
                pulled = [s for path, s in got if path.startswith(lacking)]
                t0 = perf()
                with c.files.getf(name) as f:
                    f.read(1)
                client_s = perf() - t0
                ttfb[f"{size // MB}MB"] = {
                    "job_on_node_lacking_it_s": round(pulled[0], 4) if pulled else None,
                    "job_on_holder_s": round(min(s for p, s in got if not p.startswith(lacking)), 4)
                    if len(pulled) < 2 else None,
                    "client_getf_s": round(client_s, 4),
                }  # fmt: skip
                src.unlink()
            out["getf_first_byte"] = ttfb
            worst = min(min(r["put_vs_raw"], r["get_vs_raw"]) for r in rows)
            out["target_put_get_at_least_half_of_raw_tcp"] = {"worst_ratio": worst,
                                                              "met": worst >= 0.5}  # fmt: skip
    finally:
        for proc in procs:
            stop(proc)
        if args.dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
