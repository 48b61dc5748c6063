"""How the mesh's membership scales: N real ``mesh-node`` processes on 127.0.0.1, one
worker each; prints ONE JSON object (progress goes to stderr).

For each N (``--nodes``, default 10,25,50,100):

- all_listening_s: from the first node's start until every node printed its listening
  line (the seed first: the others are given its address with ``--peer``; with
  ``--mdns`` they all start at once and find each other over mDNS pinned to 127.0.0.1);
- full_membership_s: from the same start until every node has seen every other join;
- idle: nodes only (no client, no job ever), ``--settle-s`` (1 s) after full membership
  (the first seconds still carry the joins' news and the file links' first catalogs;
  ``--settle-s 20`` shows the steady state): CPU of all nodes
  with their workers over ``--idle-s`` (from /proc), per node, in % of one core; and
  the protocol messages a node sends per second, counted as TCP data segments of the
  nodes' sockets (``ss -ti``'s data_segs_out: the nodes write each frame at once,
  with TCP_NODELAY);
- rss_mib_per_node: resident memory of a node with its worker, after the idle window;
- client_sees_all_s: a client given the seed's address only, until it has a usable
  link to every node (it learns them from the seed's Members);
- client_idle_cpu_pct, client_links: that client's CPU (this process) over
  ``--client-idle-s`` with a link to every node and no job, in % of one core;
- tiny_map: a map of ``--map-items`` (10,000) trivial jobs, jobs/s;
- sleep_map: 2N jobs of 0.5 s: seconds, and how many nodes ran them;
- freeze: one node and its workers are SIGSTOPped (its sockets stay open, as on a
  suspended laptop): seconds until the first and until every other node dropped it,
  and until the client did; then SIGCONT, and seconds until every node has it back.

How a node "sees" and "drops" a peer is read from its log (``--log-level info``: the
``peer NAME (ADDR) joined`` and ``... lost`` lines), so observing costs the nodes
nothing. All N nodes share this machine's cores: on a 2-core machine the figures at
large N include the nodes' competition for the CPU. Every process started here is
stopped on exit, also on Ctrl-C or failure.

    .venv/bin/python bench/scale.py                      # N = 10, 25, 50, 100
    .venv/bin/python bench/scale.py --nodes 10,25        # chosen sizes
    .venv/bin/python bench/scale.py --nodes 3 --idle-s 1 --map-items 200   # a smoke run
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mesh
from bench._nodes import spawn_node, stop, wait_listening
from bench.core import cpu_s

PEER_EVENT = re.compile(r"peer (\S+) \((\S+)\) (joined|lost)")
SLEEP_JOB_S = 0.5
now = time.monotonic


def log(msg: str) -> None:
    print(f"[scale {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def noop(x: Any) -> Any:
    return x


def nap(x: int) -> int:
    time.sleep(SLEEP_JOB_S)
    return x


@dataclass
class Watched:
    """One node: its process, and the peers it has seen join and not lost, from its log."""

    name: str
    proc: subprocess.Popen[bytes]
    address: str = ""
    sees: set[str] = field(default_factory=set)
    events: list[tuple[float, str, bool]] = field(default_factory=list)  # (when, peer, joined)
    tail: list[str] = field(default_factory=list)  # its last log lines, for a failure
    changed: threading.Condition = field(default_factory=threading.Condition)

    def read_log(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            line = raw.decode(errors="replace").rstrip()
            m = PEER_EVENT.search(line)
            with self.changed:
                self.tail = [*self.tail[-19:], line]
                if m:
                    joined = m.group(3) == "joined"
                    (self.sees.add if joined else self.sees.discard)(m.group(1))
                    self.events.append((now(), m.group(1), joined))
                    self.changed.notify_all()

    def wait_first(
        self, done: Callable[[set[str]], bool], since: float, deadline: float
    ) -> float | None:
        """Wait until ``deadline`` at most for ``done(peers seen)``; then :meth:`first`."""
        with self.changed:
            self.changed.wait_for(lambda: done(self.sees), max(0.0, deadline - now()))
        return self.first(done, since)

    def first(self, done: Callable[[set[str]], bool], since: float) -> float | None:
        """When, at or after ``since``, the peers seen first made ``done`` true (log replay)."""
        sees: set[str] = set()
        checked = False
        with self.changed:
            for t, name, joined in self.events:
                if t >= since and not checked:
                    checked = True
                    if done(sees):
                        return since
                (sees.add if joined else sees.discard)(name)
                if t >= since and done(sees):
                    return t
        return since if not checked and done(sees) else None


class Mesh:
    """N nodes started at once and stopped together (the seed n0 first, see the docstring)."""

    def __init__(self, n: int, data: str, mdns: bool, log_level: str = "info") -> None:
        self.n, self.data, self.mdns = n, data, mdns
        self.secret = secrets.token_hex(32)
        self.log_level = log_level
        self.nodes: list[Watched] = []
        self.t0 = 0.0

    def _spawn(self, name: str, extra: tuple[str, ...]) -> Watched:
        proc = spawn_node(
            self.secret, name, 1, self.data, advertise=self.mdns,
            extra=("--log-level", self.log_level, *extra),
            stderr=subprocess.PIPE, new_session=True,
        )  # fmt: skip
        w = Watched(name, proc)
        self.nodes.append(w)  # before anything can fail: stop() must find it
        threading.Thread(target=w.read_log, name=f"log-{name}", daemon=True).start()
        return w

    def start(self) -> float:
        """Start every node; seconds until all listen."""
        self.t0 = now()
        seed = self._spawn("n0", ())
        seed.address = wait_listening(seed.proc, seed.name)
        extra = () if self.mdns else ("--peer", seed.address)
        rest = [self._spawn(f"n{i}", extra) for i in range(1, self.n)]
        for w in rest:
            w.address = wait_listening(w.proc, w.name)
        return now() - self.t0

    def wait(
        self,
        nodes: list[Watched],
        done: Callable[[Watched, set[str]], bool],
        since: float,
        timeout_s: float,
    ) -> list[float | None]:
        """For each of ``nodes``, seconds from ``since`` until the peers it sees made
        ``done`` true (None: not within ``timeout_s``)."""
        deadline = now() + timeout_s
        when: list[float | None] = []
        for w in nodes:
            t = w.wait_first(functools.partial(done, w), since, deadline)
            when.append(None if t is None else t - since)
        return when

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self.nodes]

    def signal_tree(self, w: Watched, sig: signal.Signals) -> None:
        """``sig`` to a node and its workers (each worker leads a process group of its own)."""
        for pid in _tree([w.proc.pid]):
            with _suppress_gone():
                os.kill(pid, sig)

    def stop(self) -> None:
        workers = set(_tree(self.pids())) - set(self.pids())
        for w in self.nodes:  # a frozen node would not hear SIGTERM
            self.signal_tree(w, signal.SIGCONT)
            if w.proc.poll() is None:
                w.proc.terminate()
        for w in self.nodes:
            stop(w.proc)
            if w.proc.stderr is not None:
                w.proc.stderr.close()
        for pid in workers:  # one that outlived its node (a worker's pid is its group's)
            with _suppress_gone():
                os.killpg(pid, signal.SIGKILL)


@contextmanager
def _suppress_gone() -> Iterator[None]:
    try:
        yield
    except (ProcessLookupError, PermissionError):
        pass


def _tree(pids: list[int]) -> list[int]:
    """``pids`` and all their descendants."""
    out: list[int] = []
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except (OSError, ValueError):
            continue
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in _tree(pids):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except (OSError, ValueError):
            continue
    return total


SS_PID = re.compile(r"pid=(\d+)")
SS_DATA_SEGS = re.compile(r"\bdata_segs_out:(\d+)")


def data_segments_out(pids: list[int]) -> int | None:
    """TCP data segments sent so far by the sockets of ``pids`` (``ss -tinp``; None
    without iproute2's ``ss``)."""
    wanted = set(pids)
    try:
        run = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True)
    except FileNotFoundError:
        return None
    out = run.stdout
    total, owned = 0, False
    for line in out.splitlines():
        if not line[:1].isspace():  # a socket's line; its details follow, indented
            owned = any(int(p) in wanted for p in SS_PID.findall(line))
        elif owned:
            m = SS_DATA_SEGS.search(line)
            total += int(m.group(1)) if m else 0
    return total


def r(x: float | None, nd: int = 3) -> float | None:
    return None if x is None else round(x, nd)


def _latest(times: list[float | None]) -> float | None:
    return None if any(t is None for t in times) else max(t for t in times if t is not None)


def measure(n: int, cfg: argparse.Namespace, data: str) -> dict[str, Any]:
    m = Mesh(n, data, cfg.mdns)
    out: dict[str, Any] = {"nodes": n}
    try:
        log(f"N={n}: starting")
        out["all_listening_s"] = r(m.start())
        names = {w.name for w in m.nodes}
        full = m.wait(m.nodes, lambda w, sees: sees >= names - {w.name}, m.t0, cfg.timeout_s)
        out["full_membership_s"] = r(_latest(full))
        out["nodes_seeing_all"] = sum(t is not None for t in full)

        log(f"N={n}: idle for {cfg.idle_s} s, {cfg.settle_s} s after full membership")
        time.sleep(cfg.settle_s)
        pids = m.pids()
        cpu0, segs0, t = cpu_s(pids), data_segments_out(pids), now()
        time.sleep(cfg.idle_s)
        cpu1, segs1, dt = cpu_s(pids), data_segments_out(pids), now() - t
        out["idle_cpu_pct_all_nodes"] = r((cpu1 - cpu0) / dt * 100, 2)
        out["idle_cpu_pct_per_node"] = r((cpu1 - cpu0) / dt * 100 / n, 3)
        out["idle_messages_per_node_per_s"] = (
            None if segs0 is None or segs1 is None else r((segs1 - segs0) / dt / n, 2)
        )
        out["rss_mib_per_node"] = r(rss_bytes(pids) / n / 2**20, 1)

        log(f"N={n}: client")
        t = now()
        with mesh.Client([m.nodes[0].address], m.secret) as c:
            deadline = t + cfg.timeout_s
            while sum(x.connected for x in c.nodes()) < n and now() < deadline:
                time.sleep(0.01)
            seen = sum(x.connected for x in c.nodes())
            out["client_sees_all_s"] = r(now() - t) if seen == n else None
            out["client_nodes_seen"] = seen

            # The client holds a link to every node: what that costs it while idle.
            time.sleep(1.0)
            cpu0, t = time.process_time(), now()
            time.sleep(cfg.client_idle_s)
            out["client_idle_cpu_pct"] = r((time.process_time() - cpu0) / (now() - t) * 100, 2)
            out["client_links"] = sum(x.connected for x in c.nodes())

            t = now()
            c.result(c.map(noop, range(cfg.map_items)), timeout=cfg.timeout_s)
            out["tiny_map"] = {
                "jobs": cfg.map_items,
                "jobs_per_s": r(cfg.map_items / (now() - t), 0),
            }

            t = now()
            jids = c.map(nap, range(2 * n))
            c.result(jids, timeout=cfg.timeout_s)
            used = {i.node for i in c.info(jids)}
            out["sleep_map"] = {"jobs": 2 * n, "job_s": SLEEP_JOB_S, "s": r(now() - t),
                                "nodes_used": len(used)}  # fmt: skip

            out["freeze"] = freeze(m, c, cfg.timeout_s)
    finally:
        log(f"N={n}: stopping")
        m.stop()
    return out


def freeze(m: Mesh, c: mesh.Client, timeout_s: float) -> dict[str, Any]:
    """SIGSTOP one node and its workers; until the others and the client drop it; back."""
    victim = m.nodes[-1]
    others = [w for w in m.nodes if w is not victim]
    m.signal_tree(victim, signal.SIGSTOP)
    t = now()
    try:
        client_s = None
        while now() - t < timeout_s:
            if not any(x.name == victim.name and x.connected for x in c.nodes()):
                client_s = now() - t
                break
            time.sleep(0.01)
        dropped = m.wait(others, lambda w, sees: victim.name not in sees, t, timeout_s)
    finally:
        m.signal_tree(victim, signal.SIGCONT)
    back = m.wait(others, lambda w, sees: victim.name in sees, now(), timeout_s)
    rejoined = _latest(back)
    known = [x for x in dropped if x is not None]
    return {
        "dropped_by_first_node_s": r(min(known)) if known else None,
        "dropped_by_all_nodes_s": r(_latest(dropped)),
        "dropped_by_client_s": r(client_s),
        "back_at_all_nodes_s": r(rejoined),
    }


def _machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "loadavg": [round(x, 2) for x in os.getloadavg()]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--nodes", default="10,25,50,100", help="comma-separated mesh sizes")
    p.add_argument("--idle-s", type=float, default=10.0, help="idle window (s)")
    p.add_argument("--settle-s", type=float, default=1.0,
                   help="wait after full membership before the idle window (s)")  # fmt: skip
    p.add_argument("--client-idle-s", type=float, default=5.0,
                   help="idle window of the client linked to every node (s)")  # fmt: skip
    p.add_argument("--map-items", type=int, default=10_000)
    p.add_argument("--mdns", action="store_true", help="find each other over mDNS, not --peer")
    p.add_argument("--timeout-s", type=float, default=120.0, help="per wait (s)")
    cfg = p.parse_args()
    try:
        sizes = [int(x) for x in cfg.nodes.split(",")]
    except ValueError:
        p.error(f"--nodes {cfg.nodes!r}: expected sizes like 10,25")
    if any(x < 2 for x in sizes):
        p.error(f"--nodes {cfg.nodes!r}: a mesh needs at least 2 nodes")
    # SIGTERM unwinds like Ctrl-C, through every finally that stops nodes.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    # Ctrl-C too when started from a shell's background job, which ignores SIGINT.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    os.environ["MESH_INTERFACES"] = "127.0.0.1"
    before = _machine()
    with tempfile.TemporaryDirectory(prefix="mesh-scale-") as data:
        results = [measure(n, cfg, data) for n in sizes]
    print(json.dumps({
        "machine": {**before, "loadavg_after": _machine()["loadavg"]},
        "discovery": "mdns" if cfg.mdns else "peer",
        "idle_s": cfg.idle_s,
        "settle_s": cfg.settle_s,
        "results": results,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
