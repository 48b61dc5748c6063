"""mesh.files across hosts of the simulated LAN: replicas survive a host's death."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _netns import Host, lan, netns_available
from test_lan import LISTENING, client_env

WHY_NOT = netns_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no LAN testbed: {WHY_NOT}")


@contextmanager
def file_nodes(
    hosts: list[Host], secret: str, data: Path
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """A mesh-node per host (found over mDNS), holders lost for 1 s count as lost."""
    nodes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i, host in enumerate(hosts, 1):
            env = dict(os.environ, MESH_SECRET=secret, MESH_INTERFACES=host.address,
                       MESH_FILES_REREPLICATE_S="1")  # fmt: skip
            proc = subprocess.Popen(
                host.cmd(sys.executable, "-m", "node", "--name", f"host{i}", "--workers", "1",
                         "--data-dir", str(data / f"h{i}"), "--no-dashboard"),
                env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            nodes[f"host{i}"] = proc
            assert proc.stdout is not None
            m = LISTENING.match(proc.stdout.readline().decode().strip())
            assert m and m.group(2) == host.address
        yield nodes
    finally:
        for proc in nodes.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in nodes.values():
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


CLIENT = """
import json, os, sys, time, mesh
payload = os.urandom(3_000_000)
with mesh.Client() as c:
    deadline = time.monotonic() + 60
    while len(c.files.putf(b"probe", "probe", replicas=3).nodes) < 3:  # all linked
        assert time.monotonic() < deadline, "nodes never linked"
        time.sleep(0.5)
    info = c.files.putf(payload, "lan/data.bin", replicas=2)
    print(json.dumps(info.nodes), flush=True)
    victim = sys.stdin.readline().strip()  # the test killed this holder
    ok = c.files.getf("lan/data.bin").read() == payload
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        held = c.files.info("lan/data.bin").nodes
        if len(held) == 2 and victim not in held:
            break
        time.sleep(0.5)
    print(json.dumps({"ok": ok, "held": held}), flush=True)
"""


def test_a_replica_survives_a_host_killed_and_the_count_is_restored(tmp_path):
    secret = secrets.token_hex(32)
    with lan(4) as hosts, file_nodes(hosts[:3], secret, tmp_path) as nodes:
        client_host = hosts[3]
        # The client puts, names the holders, and is told on stdin which one was killed.
        proc = subprocess.Popen(
            client_host.cmd(sys.executable, "-c", CLIENT),
            env=client_env(client_host, secret), stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None and proc.stdin is not None
            first = proc.stdout.readline()
            assert first, proc.communicate(timeout=30)[1]
            holders = json.loads(first)
            assert len(holders) == 2
            victim = holders[0]
            nodes[victim].send_signal(signal.SIGKILL)
            nodes[victim].wait(10)
            out, err = proc.communicate(victim + "\n", timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        assert proc.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        assert report["ok"]
        assert len(report["held"]) == 2 and victim not in report["held"]
