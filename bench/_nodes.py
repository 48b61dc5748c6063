"""Real ``mesh-node`` processes on 127.0.0.1 for the benchmarks (the tests have their own
fixtures in tests/conftest.py, with leak checks)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

LISTENING = re.compile(r"^mesh-node (\S+) listening on (\S+):(\d+)$")


def start_node(
    secret: str,
    name: str,
    workers: int,
    data: str,
    advertise: bool = False,
    port: int = 0,
    extra: tuple[str, ...] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a node (its data dir is ``data/name``); return it and its HOST:PORT."""
    env = dict(os.environ, MESH_SECRET=secret, MESH_INTERFACES="127.0.0.1")
    env.pop("MESH_PEERS", None)
    argv = [sys.executable, "-m", "mesh.node", "--host", "127.0.0.1", "--port", str(port),
            "--name", name, "--workers", str(workers), "--data-dir", os.path.join(data, name),
            *extra]  # fmt: skip
    if not advertise:
        argv.append("--no-advertise")
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    m = LISTENING.match(proc.stdout.readline().decode().strip())
    if not m:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"node {name} did not start")
    return proc, f"{m.group(2)}:{m.group(3)}"


def stop(proc: subprocess.Popen[bytes], sig_kill: bool = False) -> None:
    if proc.poll() is None:
        if sig_kill:
            proc.kill()
        else:
            proc.terminate()
        try:
            proc.wait(40)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()
