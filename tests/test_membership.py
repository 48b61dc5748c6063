"""Gossip membership between real ``mesh-node`` processes (issue 16): nodes join
through one seed, a node that leaves is marked left, a frozen node (SIGSTOP: its
sockets stay open) is declared dead by the others and rejoins by itself once it
runs again, and an idle node's gossip is a bounded number of messages per probe.

Each node's view is read from its dashboard's JSON (``/api/nodes``): the ``member``
state of every peer and the ``membership`` debug counters of the node itself."""

from __future__ import annotations

import json
import os
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _helpers import wait_until
from _wire import Session, closed_by_peer, connect
from conftest import NodeProc, children

from mesh._auth import dashboard_token
from mesh._frames import HANDSHAKE, HEADER, MAC_SIZE, MSG
from mesh._protocol import GossipNews, encode


def api_nodes(node: NodeProc, secret: str) -> list[dict[str, Any]]:
    """A node's /api/nodes rows: itself first, then every peer it knows."""
    base = wait_until(lambda: _read(node.data_dir / "dashboard"), what=f"{node.name}'s dashboard")
    auth = {"Authorization": f"Bearer {dashboard_token(secret.encode())}"}
    req = urllib.request.Request(base + "api/nodes", headers=auth)
    with urllib.request.urlopen(req, timeout=10) as resp:
        rows: list[dict[str, Any]] = json.loads(resp.read())["nodes"]
    return rows


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def members(node: NodeProc, secret: str) -> dict[str, str]:
    """What ``node`` holds of each peer, by address: alive, suspect, dead, left."""
    return {r["address"]: r["member"] for r in api_nodes(node, secret)[1:]}


def counters(node: NodeProc, secret: str) -> dict[str, int]:
    stats: dict[str, int] = api_nodes(node, secret)[0]["membership"]
    return stats


def sees(
    node: NodeProc, others: list[NodeProc], secret: str, state: str = "alive"
) -> Callable[[], bool]:
    return lambda: all(members(node, secret).get(o.address) == state for o in others)


def group(node: NodeProc) -> list[int]:
    """A node's process and its workers (the node's process group, but for the tests'
    runner, which shares it)."""
    return [node.pid, *children(node.pid)]


def test_nodes_join_through_one_seed_and_learn_each_other_by_gossip(node_factory, secret):
    a = node_factory(name="a", workers=1)
    b = node_factory(name="b", workers=1, extra=("--peer", a.address))
    c = node_factory(name="c", workers=1, extra=("--peer", b.address))  # never names a
    nodes = [a, b, c]
    for n in nodes:
        others = [o for o in nodes if o is not n]
        wait_until(sees(n, others, secret), what=f"{n.name} to see {[o.name for o in others]}")
    rows = {r["address"]: r for r in api_nodes(a, secret)}
    assert rows[c.address]["name"] == "c" and rows[c.address]["workers"] == 1
    assert rows[a.address]["membership"]["members"] == 2


def test_a_node_that_leaves_is_marked_left_by_the_others(node_factory, secret):
    a = node_factory(name="a", workers=1)
    b = node_factory(name="b", workers=1, extra=("--peer", a.address))
    c = node_factory(name="c", workers=1, extra=("--peer", a.address))
    for n, others in ((a, [b, c]), (b, [a, c]), (c, [a, b])):
        wait_until(sees(n, others, secret), what=f"{n.name} to see the others")
    assert c.stop() == 0  # SIGTERM: a graceful leave, said by gossip
    for n in (a, b):
        wait_until(sees(n, [c], secret, "left"), what=f"{n.name} to mark c left")
        assert members(n, secret)[(b if n is a else a).address] == "alive"


def test_a_frozen_node_is_declared_dead_and_rejoins_by_itself(node_factory, secret):
    a = node_factory(name="a", workers=1)
    b = node_factory(name="b", workers=1, extra=("--peer", a.address))
    f = node_factory(name="f", workers=1, extra=("--peer", a.address))
    for n, others in ((a, [b, f]), (b, [a, f]), (f, [a, b])):
        wait_until(sees(n, others, secret), what=f"{n.name} to see the others")
    frozen = group(f)
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        for n in (a, b):  # suspected, then dead (not left: it said nothing)
            wait_until(sees(n, [f], secret, "dead"), timeout_s=30, what=f"{n.name} to drop f")
        assert members(a, secret)[b.address] == "alive"
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)
    # Nobody restarts or names it: it learns it was declared dead and refutes.
    for n in (a, b):
        wait_until(sees(n, [f], secret), timeout_s=30, what=f"{n.name} to have f back")
    wait_until(sees(f, [a, b], secret), what="f to see a and b")


def test_an_idle_node_sends_a_bounded_number_of_gossip_messages_per_probe(node_factory, secret):
    nodes = [node_factory(name="n0", workers=1)]
    nodes += [node_factory(name=f"n{i}", workers=1, extra=("--peer", nodes[0].address))
              for i in range(1, 5)]  # fmt: skip
    for n in nodes:
        wait_until(sees(n, [o for o in nodes if o is not n], secret), what=f"{n.name} to see all")
    watched = nodes[1]
    wait_until(lambda: counters(watched, secret)["probes"] >= 10, what="10 probes")
    before = counters(watched, secret)
    wait_until(lambda: counters(watched, secret)["probes"] >= before["probes"] + 20,
               timeout_s=60, what="20 more probes")  # fmt: skip
    after = counters(watched, secret)
    probes = after["probes"] - before["probes"]
    # SWIM with no news: per probe period one ping out, on average one ack out (to the
    # others' pings) and a handful of news; nothing grows with the size of the mesh.
    sent, received = after["sent"] - before["sent"], after["received"] - before["received"]
    assert sent <= 3 * probes + 10, (probes, sent)
    assert received <= 3 * probes + 10, (probes, received)
    assert after["timer_runs"] - before["timer_runs"] <= 4 * probes + 10, (before, after)
    assert after["links"] <= 4 and after["members"] == 4


def test_gossip_without_the_secret_is_refused_and_a_bad_member_closes_only_its_link(
    node_factory, secret
):
    a = node_factory(name="a", workers=1)
    b = node_factory(name="b", workers=1, extra=("--peer", a.address))
    wait_until(sees(a, [b], secret), what="a to see b")
    forged = ("e" * 12, "evil", "127.0.0.1:9", 99, 0, "e" * 12, 8, 0, 0)
    # No secret: a gossip message in a handshake frame, then in a session frame with a
    # made-up MAC, in place of the handshake's first message.
    news = encode(GossipNews((forged,)))
    for frame in (HEADER.pack(len(news), HANDSHAKE) + news,
                  HEADER.pack(len(news), MSG) + news + b"\x00" * MAC_SIZE):  # fmt: skip
        with connect(a.host, a.port) as raw:
            raw.sendall(frame)
            assert closed_by_peer(raw)
    # The secret, but a member with no HOST:PORT: that link is closed, nothing else.
    with Session(a.host, a.port, secret.encode()) as s:
        s.send(GossipNews(((*forged[:2], "nowhere", *forged[3:]),)))
        assert closed_by_peer(s.sock)
    assert members(a, secret) == {b.address: "alive"}
    assert "evil" not in {r["name"] for r in api_nodes(a, secret)}
