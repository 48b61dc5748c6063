"""The mesh on a simulated office LAN (network namespaces + a private bridge)."""

from __future__ import annotations

import json
import os
import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from _netns import Host, lan, netns_available

WHY_NOT = netns_available()
pytestmark = pytest.mark.skipif(WHY_NOT is not None, reason=f"no LAN testbed: {WHY_NOT}")

LISTENING = re.compile(r"^mesh-node (\S+) listening on (\S+):(\d+)$")


@contextmanager
def lan_nodes(
    hosts: list[Host],
    secret: str,
    data: Path,
    env: dict[str, str] | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """A mesh-node (1 worker, advertising) in each host, named host1, host2, ...;
    all stopped afterwards, also when the test fails."""
    nodes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for i, host in enumerate(hosts, 1):
            node_env = dict(os.environ, MESH_SECRET=secret, MESH_INTERFACES=host.address,
                            **(env or {}))  # fmt: skip
            proc = subprocess.Popen(
                host.cmd(sys.executable, "-m", "mesh.node", "--name", f"host{i}", "--workers", "1",
                         "--data-dir", str(data / f"h{i}"), *extra),
                env=node_env, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            )  # fmt: skip
            nodes[f"host{i}"] = proc
            assert proc.stdout is not None
            line = proc.stdout.readline().decode().strip()
            m = LISTENING.match(line)
            assert m and m.group(2) == host.address, line
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


def client_env(host: Host, secret: str) -> dict[str, str]:
    env = dict(os.environ, MESH_SECRET=secret, MESH_INTERFACES=host.address)
    env.pop("MESH_PEERS", None)
    return env


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
        with lan_nodes(node_hosts, secret, tmp_path):
            out = subprocess.run(
                client_host.cmd(sys.executable, "-c", CLIENT),
                env=client_env(client_host, secret), capture_output=True, text=True, timeout=120,
            )  # fmt: skip
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout.strip().splitlines()[-1])
        assert report["ok"]
        assert report["found"] == ["host1", "host2", "host3"]
        assert report["used"] == ["host1", "host2", "host3"]


CUT_CLIENT = """
import json, os, sys, time, mesh
def nap(x):
    import time
    time.sleep(0.1)
    return x
with mesh.Client() as c:
    jids = c.map(nap, range(150))
    c.result(jids[0], timeout=60)
    print("cut-now", flush=True)
    seen = list(c.iresult(jids, timeout=120, ordered=False))
    deadline = time.monotonic() + 60
    while not os.path.exists(sys.argv[1]) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(2.0)  # the cut node is back: anything it sends now must change nothing
    again = c.result(jids, timeout=30)
    print(json.dumps({"count": len(seen), "distinct": len(set(seen)),
                      "ok": sorted(seen) == list(range(150)) and again == list(range(150))}))
"""


def test_a_node_whose_link_is_cut_has_its_jobs_redone_and_nothing_arrives_twice(tmp_path):
    secret = secrets.token_hex(32)
    restored = tmp_path / "restored"
    with lan(4) as hosts:
        *node_hosts, client_host = hosts
        with lan_nodes(node_hosts, secret, tmp_path):
            client = subprocess.Popen(
                client_host.cmd(sys.executable, "-c", CUT_CLIENT, str(restored)),
                env=client_env(client_host, secret),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            )  # fmt: skip
            try:
                assert client.stdout is not None
                assert client.stdout.readline().strip() == "cut-now"
                cut = node_hosts[2]
                subprocess.run(["ip", "-n", cut.ns, "link", "set", "eth0", "down"], check=True)
                time.sleep(10)
                subprocess.run(["ip", "-n", cut.ns, "link", "set", "eth0", "up"], check=True)
                restored.touch()
                out, err = client.communicate(timeout=120)
            finally:
                if client.poll() is None:
                    client.kill()
                    client.wait()
        assert client.returncode == 0, err
        report = json.loads(out.strip().splitlines()[-1])
        # every result arrived exactly once and right, also after the cut node came back
        assert report["ok"] and report["count"] == report["distinct"] == 150
