"""The mesh on a simulated office LAN (network namespaces + a private bridge)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys

import pytest
from _netns import lan, netns_available

WHY_NOT = netns_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no LAN testbed: {WHY_NOT}")

LISTENING = re.compile(r"^mesh-node (\S+) listening on (\S+):(\d+)$")

CLIENT = """
import json, mesh
def where(x):
    import socket, time
    time.sleep(0.05)
    return x * x
with mesh.Client() as c:  # no peers anywhere: discovery on the LAN
    jids = c.map(where, range(60))
    results = c.result(jids, timeout=60)
    print(json.dumps({"ok": results == [x * x for x in range(60)],
                      "found": sorted(n.name for n in c.nodes()),
                      "used": sorted({i.node for i in c.info(jids)})}))
"""


def test_a_client_with_no_configuration_finds_three_hosts_and_uses_them(tmp_path):
    secret = secrets.token_hex(32)
    with lan(4) as hosts:
        *node_hosts, client_host = hosts
        nodes = []
        try:
            for i, host in enumerate(node_hosts, 1):
                env = dict(os.environ, MESH_SECRET=secret, MESH_INTERFACES=host.address)
                proc = subprocess.Popen(
                    host.cmd(sys.executable, "-m", "node", "--name", f"host{i}", "--workers", "1",
                             "--data-dir", str(tmp_path / f"h{i}"), "--port", "7390"),
                    env=env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                )  # fmt: skip
                nodes.append(proc)
                assert proc.stdout is not None
                line = proc.stdout.readline().decode().strip()
                m = LISTENING.match(line)
                assert m and m.group(2) == host.address, line
            env = dict(os.environ, MESH_SECRET=secret, MESH_INTERFACES=client_host.address)
            env.pop("MESH_PEERS", None)
            out = subprocess.run(
                client_host.cmd(sys.executable, "-c", CLIENT),
                env=env, capture_output=True, text=True, timeout=120,
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            report = json.loads(out.stdout.strip().splitlines()[-1])
            assert report["ok"]
            assert report["found"] == ["host1", "host2", "host3"]
            assert report["used"] == ["host1", "host2", "host3"]
        finally:
            for proc in nodes:
                proc.terminate()
            for proc in nodes:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
