"""Shared fixtures: real ``mesh-node`` processes on 127.0.0.1, always torn down.

Every test runs with discovery pinned to loopback (MESH_INTERFACES) and without
inherited peers. A test that leaves a node, a worker process or a client loop
thread behind fails.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

# Nothing in the tests may advertise, browse or connect beyond loopback.
os.environ["MESH_INTERFACES"] = "127.0.0.1"
os.environ.pop("MESH_PEERS", None)
os.environ.pop("MESH_SECRET", None)

LISTENING = re.compile(r"^mesh-node (\S+) listening on (\S+):(\d+)$")


def children(pid: int) -> list[int]:
    """Direct child pids of ``pid`` (from /proc)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        # the command name may hold spaces; fields after the last ')' are fixed
        fields = stat.rsplit(")", 1)[1].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


@dataclass
class NodeProc:
    name: str
    host: str
    port: int
    proc: subprocess.Popen[bytes]
    data_dir: Path
    seen_workers: set[int] = field(default_factory=set)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def worker_pids(self) -> list[int]:
        pids = [p for p in children(self.proc.pid) if alive(p)]
        self.seen_workers.update(pids)
        return pids

    def wait_workers(self, n: int, timeout_s: float = 10.0) -> list[int]:
        """Wait until the node has ``n`` live worker processes (e.g. after a crash)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) == n:
                return pids
            time.sleep(0.05)
        raise AssertionError(f"node {self.name} has {self.worker_pids()} workers, expected {n}")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 15.0) -> int:
        self.worker_pids()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode


def start_node(
    secret: str,
    data_dir: Path,
    *,
    name: str = "n1",
    workers: int = 2,
    port: int = 0,
    extra: tuple[str, ...] = (),
    env: dict[str, str] | None = None,
    advertise: bool = False,
) -> NodeProc:
    """Start a real ``mesh-node`` on 127.0.0.1 and wait for its listening line."""
    full_env = dict(os.environ, MESH_SECRET=secret, **(env or {}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "mesh.node", "--host", "127.0.0.1", "--port", str(port), "--name", name,
         "--workers", str(workers), "--data-dir", str(data_dir),
         "--grace", "1", *(() if advertise else ("--no-advertise",)), *extra],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=full_env,
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    m = LISTENING.match(line)
    if not m:
        proc.kill()
        proc.wait()
        raise AssertionError(f"mesh-node printed {line!r}")
    return NodeProc(m.group(1), m.group(2), int(m.group(3)), proc, data_dir)


def stop_nodes(nodes: list[NodeProc]) -> None:
    """Stop every node, then fail if any worker it ever had outlived it (killing those)."""
    leaked = []
    for node in nodes:
        node.stop()
        for pid in node.seen_workers:
            deadline = time.monotonic() + 5
            while alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            if alive(pid):
                leaked.append(pid)
                os.kill(pid, signal.SIGKILL)
    assert not leaked, f"worker processes outlived their node: {leaked}"


def solo_node(
    tmp_path_factory: pytest.TempPathFactory, label: str
) -> Iterator[tuple[NodeProc, str]]:
    """For a module-scoped fixture: one node with one worker and its own secret, shared by
    a module's tests (each has its own client); stopped after them."""
    secret = secrets.token_hex(32)
    node = start_node(secret, Path(tmp_path_factory.mktemp(label)), workers=1)
    try:
        node.wait_workers(1)
        yield node, secret
    finally:
        stop_nodes([node])


@pytest.fixture
def secret() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def node_factory(secret: str, tmp_path: Path) -> Iterator[Callable[..., NodeProc]]:
    """Start nodes with ``node_factory(name=..., workers=...)``; all are stopped afterwards."""
    nodes: list[NodeProc] = []

    def make(**kwargs: object) -> NodeProc:
        name = str(kwargs.pop("name", f"n{len(nodes) + 1}"))
        node = start_node(secret, tmp_path / name, name=name, **kwargs)  # type: ignore[arg-type]
        nodes.append(node)
        node.wait_workers(int(kwargs.get("workers", 2)))  # type: ignore[call-overload]
        return node

    yield make
    stop_nodes(nodes)


@pytest.fixture
def nodes(node_factory: Callable[..., NodeProc]) -> list[NodeProc]:
    """Two real nodes with two workers each."""
    return [node_factory(name="n1"), node_factory(name="n2")]


@pytest.fixture
def client(nodes: list[NodeProc], secret: str) -> Iterator[object]:
    """A sync ``mesh.Client`` connected to the two nodes."""
    import mesh

    with mesh.Client([n.address for n in nodes], secret) as c:
        yield c


@pytest.fixture(autouse=True)
def _no_leaked_clients() -> Iterator[None]:
    yield
    import mesh

    mesh.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if not [t for t in threading.enumerate() if t.name == "mesh-client"]:
            break
        time.sleep(0.05)
    left = [t for t in threading.enumerate() if t.name == "mesh-client"]
    assert not left, f"client loop threads left running: {left}"
