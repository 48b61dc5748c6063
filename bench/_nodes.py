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
    proc = spawn_node(secret, name, workers, data, advertise, port, extra)
    return proc, wait_listening(proc, name)


def spawn_node(
    secret: str,
    name: str,
    workers: int,
    data: str,
    advertise: bool = False,
    port: int = 0,
    extra: tuple[str, ...] = (),
    *,
    stderr: int | None = None,
    new_session: bool = False,
) -> subprocess.Popen[bytes]:
    """Start a node without waiting for it (many start at once); see :func:`wait_listening`.

    ``new_session`` makes it the leader of its own process group, so that a signal to
    the group (SIGSTOP: a frozen machine) reaches its workers too.
    """
    env = dict(os.environ, MESH_SECRET=secret, MESH_INTERFACES="127.0.0.1")
    env.pop("MESH_PEERS", None)
    argv = [sys.executable, "-m", "mesh.node", "--host", "127.0.0.1", "--port", str(port),
            "--name", name, "--workers", str(workers), "--data-dir", os.path.join(data, name),
            *extra]  # fmt: skip
    if not advertise:
        argv.append("--no-advertise")
    return subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, stderr=stderr,
        start_new_session=new_session,
    )  # fmt: skip


def wait_listening(proc: subprocess.Popen[bytes], name: str) -> str:
    """The HOST:PORT a started node prints once it listens; stops it if it prints else."""
    assert proc.stdout is not None
    m = LISTENING.match(proc.stdout.readline().decode().strip())
    if not m:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"node {name} did not start")
    return f"{m.group(2)}:{m.group(3)}"


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
