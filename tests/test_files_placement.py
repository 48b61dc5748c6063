"""``_files=``: placement prefers the nodes holding a job's files, as a tie-breaker only."""

from __future__ import annotations

import os
import time

from mesh.client._placement import NodeView, plan
from test_files import linked, peered

import mesh


def test_a_preferred_node_wins_ties_only() -> None:
    a, b = NodeView("a", 2, 0, 8), NodeView("b", 2, 0, 8)
    assert plan(1, [a, b]) == [("a", 1)]
    assert plan(1, [a, b], prefer={"b"}) == [("b", 1)]
    assert plan(2, [a, b], prefer={"b"}) == [("a", 1), ("b", 1)]  # no node left idle
    busy_b = NodeView("b", 2, 2, 8)
    assert plan(1, [a, busy_b], prefer={"b"}) == [("a", 1)]  # load comes first


def where(_: int) -> str:
    time.sleep(0.05)
    return os.environ["MESH_NODE_FILES"]


def put_here(i: int) -> str:
    import mesh

    time.sleep(0.3)  # both jobs run at once: one on each node
    return mesh.files.putf(f"content {i}".encode(), f"held/{i}.bin", replicas=1).name


def test_jobs_with_files_go_where_the_files_are(node_factory, secret, tmp_path) -> None:
    nodes = peered(node_factory, 2)
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
        # One job per node stores a file there only: each node holds one of them, so
        # no fixed tie-break order could place every job below next to its file.
        names = c.result(c.map(put_here, range(2)))
        holders = {name: c.files.info(name).nodes for name in names}
        assert sorted(n for (n,) in holders.values()) == ["n1", "n2"]
        for name, (holder,) in holders.items():
            for _ in range(3):  # both nodes idle each time: the holder wins the tie
                jid = c.call(where, 0, _files=[name])
                c.result(jid)
                assert c.info(jid).node == holder
        # A map on idle nodes still uses both: a preference never idles a node.
        jids = c.map(where, range(2), _files=names[0])
        c.result(jids)
        assert {c.info(j).node for j in jids} == {"n1", "n2"}
        # A name nobody holds is no reason to fail: the job runs, and may raise itself.
        assert c.result(c.call(where, 0, _files=["missing"]))
