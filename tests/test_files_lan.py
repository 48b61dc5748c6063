"""mesh.files across hosts of the simulated LAN: replicas survive a host's death."""

from __future__ import annotations

import json
import secrets
import signal
import subprocess
import sys
from contextlib import AbstractContextManager
from pathlib import Path

import pytest
from _netns import Host, lan, netns_available
from test_lan import client_env, lan_nodes

WHY_NOT = netns_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no LAN testbed: {WHY_NOT}")


def file_nodes(
    hosts: list[Host], secret: str, data: Path
) -> AbstractContextManager[dict[str, subprocess.Popen[bytes]]]:
    """A mesh-node per host (found over mDNS); holders lost for 1 s count as lost."""
    return lan_nodes(hosts, secret, data, env={"MESH_FILES_REREPLICATE_S": "1"},
                     extra=("--no-dashboard",))  # fmt: skip


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
