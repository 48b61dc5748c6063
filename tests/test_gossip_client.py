"""A client learns the mesh from the nodes' gossip (issue 16): the nodes it is linked to
push it ``Members`` (joins, suspicions, deaths, comebacks), so it connects to a node
that joins later without mDNS or being named, and drops a frozen node when the mesh
declares it dead, its running job placed again and finished elsewhere, with its own
heartbeat's ``dead_after_s`` far beyond the test's reach.

Real nodes on 127.0.0.1, none advertised: ``--peer`` seeds only."""

from __future__ import annotations

import os
import signal
from pathlib import Path

from _helpers import gated, wait_until
from conftest import NodeProc, children

import mesh
from mesh._gossip import State, Update
from mesh._protocol import Members, decode, encode

# The client's own heartbeat would need this long: a drop within the tests' waits is
# the gossip's doing.
NO_HEARTBEAT_DROP_S = 600.0


def usable(c: mesh.Client) -> set[str]:
    return {n.name for n in c.nodes() if n.connected and n.workers}


def group(node: NodeProc) -> list[int]:
    return [node.pid, *children(node.pid)]


def test_members_travel_as_gossip_updates_byte_exact():
    u = Update("ab" * 6, "ws-07", "10.0.0.7:7390", 3, State.DEAD, "cd" * 6, 4, 1, 0)
    msg = Members((u.wire(),), full=True)
    raw = encode(msg)
    assert raw == (
        b"\x93U\x91\x99\xacabababababab\xa5ws-07\xad10.0.0.7:7390\x03\x02\xaccdcdcdcdcdcd"
        b"\x04\x01\x00\xc3"
    )
    assert decode(raw) == msg
    assert Update.from_wire(decode(raw).updates[0], "test") == u  # type: ignore[attr-defined]


def test_a_client_learns_of_a_node_that_joins_later_from_gossip_alone(node_factory, secret):
    a = node_factory(name="a", workers=1)
    b = node_factory(name="b", workers=1, extra=("--peer", a.address))
    with mesh.Client([a.address], secret, dead_after_s=NO_HEARTBEAT_DROP_S) as c:
        wait_until(lambda: usable(c) == {"a", "b"}, what=f"a and b: {c.nodes()}")
        # c names only b: no mDNS, the client never named it; a's gossip hears of it.
        node_factory(name="c", workers=1, extra=("--peer", b.address))
        wait_until(lambda: usable(c) == {"a", "b", "c"}, what=f"a, b and c: {c.nodes()}")
        jids = c.map(abs, range(-6, 0))
        assert c.result(jids, timeout=60) == [6, 5, 4, 3, 2, 1]


def test_a_frozen_node_is_dropped_on_the_mesh_word_and_its_job_finishes_elsewhere(
    node_factory, secret, tmp_path: Path
):
    a = node_factory(name="a", workers=1)
    node_factory(name="b", workers=1, extra=("--peer", a.address))
    f = node_factory(name="f", workers=1, extra=("--peer", a.address))
    gate = str(tmp_path / "gate")
    with mesh.Client([a.address], secret, dead_after_s=NO_HEARTBEAT_DROP_S) as c:
        wait_until(lambda: usable(c) == {"a", "b", "f"}, what=f"3 nodes: {c.nodes()}")
        jids = c.map(gated, [gate] * 3, range(3))

        def running_on() -> dict[str, str]:
            return {i.node: jid for jid, i in zip(jids, c.info(jids), strict=True)
                    if i.status == "processing"}  # fmt: skip

        wait_until(lambda: set(running_on()) == {"a", "b", "f"}, what="a job on each node")
        on_f = running_on()["f"]
        frozen = group(f)
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        try:
            wait_until(lambda: "f" not in usable(c), timeout_s=30, what="the client to drop f")
            Path(gate).touch()
            assert c.result(jids, timeout=60) == [0, 1, 2]
            info = c.info(on_f)
            assert info.node in {"a", "b"} and info.attempts == 2, info
        finally:
            for pid in frozen:
                os.kill(pid, signal.SIGCONT)
        # Nobody names it again: it refutes its death, and the client links to it anew.
        wait_until(lambda: usable(c) == {"a", "b", "f"}, timeout_s=30, what="f back")
        assert c.result(c.call(abs, -7), timeout=60) == 7
