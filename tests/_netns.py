"""A simulated office LAN: network namespaces on one bridge that touches nothing else.

Each host is a namespace with one veth (``eth0``) whose peer sits on ``br0``, and
``br0`` lives in a namespace of its own, so no traffic can reach a physical
interface. Addresses come from 10.231.0.0/16, one /24 per test run. Everything
made is removed on exit, also when the test fails.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def netns_available() -> str | None:
    """None if namespaces can be made here, else why not."""
    probe = f"lmprobe{os.getpid()}"
    try:
        _ip("netns", "add", probe)
    except FileNotFoundError:
        return "the ip command (iproute2) is not installed"
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace: {exc.stderr.strip()}"
    _ip("netns", "del", probe)
    return None


@dataclass
class Host:
    ns: str
    address: str

    def cmd(self, *argv: str) -> list[str]:
        """A command line that runs ``argv`` inside this host."""
        return ["ip", "netns", "exec", self.ns, *argv]


@contextmanager
def lan(n_hosts: int) -> Iterator[list[Host]]:
    tag = f"lm{os.getpid() % 100000}"
    subnet = 10 + os.getpid() % 240  # 10.231.X.0/24 per run, so parallel runs do not meet
    bridge = f"{tag}br"
    made: list[str] = []
    try:
        _ip("netns", "add", bridge)
        made.append(bridge)
        _ip("-n", bridge, "link", "add", "br0", "type", "bridge")
        _ip("-n", bridge, "link", "set", "br0", "up")
        hosts = []
        for i in range(1, n_hosts + 1):
            ns = f"{tag}h{i}"
            _ip("netns", "add", ns)
            made.append(ns)
            _ip("-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
                "netns", bridge)  # fmt: skip
            address = f"10.231.{subnet}.{i}"
            _ip("-n", ns, "addr", "add", f"{address}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", bridge, "link", "set", f"p{i}", "master", "br0")
            _ip("-n", bridge, "link", "set", f"p{i}", "up")
            hosts.append(Host(ns, address))
        yield hosts
    finally:
        for ns in reversed(made):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
