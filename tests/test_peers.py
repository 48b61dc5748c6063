"""Nodes know each other: ``--peer``/``MESH_PEERS`` and the nodes' own ``Peers`` gossip
feed one peer table per node, so naming one node is enough to use the whole mesh."""

from __future__ import annotations

import collections
import secrets
import signal

from _helpers import wait_until
from conftest import start_node

import mesh
from mesh._discovery import parse_peers


def nap(x):
    import time

    time.sleep(0.02)
    return x


def connected(c: mesh.Client) -> set[str]:
    return {n.name for n in c.nodes() if n.connected and n.workers}


def test_parse_peers_from_a_node_skips_bad_items():
    assert parse_peers(("10.231.0.2:7391", "nonsense:x", "", "h"), strict=False) == [
        ("10.231.0.2", 7391),
        ("h", 7390),
    ]
    assert parse_peers((), strict=False) == []


def test_one_named_node_reveals_the_whole_mesh(node_factory, secret, tmp_path):
    a = node_factory(name="a")
    b = node_factory(name="b", extra=("--peer", a.address))
    c = node_factory(name="c", env={"MESH_PEERS": b.address})  # the same table, from the env
    stranger = start_node(  # another mesh's node names "a": it must never be used
        secrets.token_hex(32), tmp_path / "x", name="x", extra=("--peer", a.address)
    )
    try:
        # The client names only "c"; "c" knows "b", which knows "a" and tells "c" of it.
        with mesh.Client([c.address], secret) as cl:
            wait_until(lambda: connected(cl) == {"a", "b", "c"}, what=f"3 nodes: {cl.nodes()}")
            jids = cl.map(nap, range(150))
            assert cl.result(jids, timeout=120) == list(range(150))
            used = collections.Counter(i.node for i in cl.info(jids))
            assert set(used) == {"a", "b", "c"}, used
            assert "x" not in {n.name for n in cl.nodes()}
    finally:
        stranger.stop()


def test_a_node_drops_a_dead_peer_from_what_it_tells(node_factory, secret):
    a = node_factory(name="a")
    b = node_factory(name="b", extra=("--peer", a.address))

    def seen_through_a() -> set[str]:
        """The nodes a fresh client that names only "a" hears of."""
        with mesh.Client([a.address], secret) as cl:
            return {n.address for n in cl.nodes()}

    # "a" learned of "b" from b's connection to it (b named a, not the other way).
    wait_until(lambda: seen_through_a() == {a.address, b.address}, what="a to tell of b")
    b.stop(signal.SIGKILL)
    wait_until(lambda: seen_through_a() == {a.address}, timeout_s=15, what="a to drop b")


def test_mesh_nodes_lists_the_nodes_a_named_node_knows(node_factory, secret):
    import json
    import os
    import subprocess
    import sys

    a = node_factory(name="a")
    b = node_factory(name="b", extra=("--peer", a.address))
    env = dict(os.environ, MESH_PEERS=b.address, MESH_SECRET=secret)

    def listed() -> dict[str, bool]:
        out = subprocess.run([sys.executable, "-m", "mesh.client._cli", "--json", "nodes"], env=env,
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
        return {r["name"]: r["connected"] for r in json.loads(out)}

    wait_until(lambda: listed() == {"a": True, "b": True}, what="mesh nodes to list a and b")
