"""Stragglers: with ``_speculative=True``, once most of a map is done, a job running far
longer than the median gets a copy on a node with a free worker; the first result
wins, the other copy is killed, and the user sees each result once."""

from __future__ import annotations

import os
from pathlib import Path

import mesh


def step(i, folder):
    """Slow (3 s) on the node started with LANMESH_TEST_SLOW set, fast (0.1 s) elsewhere;
    notes where each copy ran."""
    import time

    slow = bool(os.environ.get("LANMESH_TEST_SLOW"))
    with open(Path(folder) / str(i), "a") as f:
        f.write("slow\n" if slow else "fast\n")
    time.sleep(3.0 if slow else 0.1)
    return i * 10


def test_a_slow_nodes_jobs_get_copies_and_each_result_arrives_once(node_factory, secret, tmp_path):
    ran = tmp_path / "ran"
    ran.mkdir()
    fast = node_factory(name="fast", workers=2)
    slow = node_factory(name="slow", workers=1, env={"LANMESH_TEST_SLOW": "1"})
    with mesh.Client([fast.address, slow.address], secret) as c:
        jids = c.map(step, range(24), folder=str(ran), _speculative=True)
        got = list(c.iresult(jids, ordered=False, timeout=120))
        assert sorted(got) == [i * 10 for i in range(24)]  # each once
        winners = [i.node for i in c.info(jids)]
    copies = {p.name: p.read_text().split() for p in ran.iterdir()}
    twice = [k for k, v in copies.items() if sorted(v) == ["fast", "slow"]]
    assert twice, copies  # the slow node's running job got a copy on the fast node
    assert all(winners[int(k)] == "fast" for k in twice)  # and the copy won
    slow.wait_workers(1)  # the losing copy's worker was killed and replaced


def test_without_speculative_nothing_runs_twice(node_factory, secret, tmp_path):
    ran = tmp_path / "ran"
    ran.mkdir()
    fast = node_factory(name="fast", workers=2)
    slow = node_factory(name="slow", workers=1, env={"LANMESH_TEST_SLOW": "1"})
    with mesh.Client([fast.address, slow.address], secret) as c:
        jids = c.map(step, range(8), folder=str(ran))
        assert c.result(jids, timeout=120) == [i * 10 for i in range(8)]
    assert all(len(p.read_text().split()) == 1 for p in ran.iterdir())
