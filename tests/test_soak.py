"""Nothing lost under churn: nodes killed mid-map, nodes restarted under load."""

from __future__ import annotations

import os
import random
import signal
import sys
import time

from _helpers import wait_until

import mesh

# The same soak as bench/soak.py, short here (the benchmark runs it for minutes).
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from bench.soak import soak


def partial_sum(chunk):
    import time

    time.sleep(0.02)
    return sum(x * x for x in chunk)


def test_map_reduce_survives_two_random_node_kills(node_factory, secret, tmp_path):
    nodes = [node_factory(name=f"k{i}", workers=1) for i in range(4)]
    chunks = [list(range(i * 100, (i + 1) * 100)) for i in range(256)]
    victims = random.sample(nodes, 2)
    with mesh.Client([n.address for n in nodes], secret) as c:
        jids = c.map(partial_sum, chunks)
        for victim in victims:
            wait_until(lambda: c.status(jids).count("done") > 40, what="progress")
            victim.stop(signal.SIGKILL)
            time.sleep(0.2)
        assert sum(c.result(jids, timeout=120)) == sum(x * x for x in range(25_600))


def test_soak_every_result_arrives_exactly_once():
    result = soak(clients=4, jobs=150, nodes=3, restart_every_s=2.0, duration_s=6.0)
    assert result["restarts"] >= 2, result
    assert result["lost"] == 0 and result["duplicated"] == 0, result


def test_a_big_map_keeps_every_node_alive(nodes, client):
    """60,000 jobs: the client's loop stays responsive (placement is bounded per pump),
    so no node is ever dropped for missed heartbeats; with _retries=0 a drop would
    fail jobs instead of hiding in re-runs."""
    jids = client.map(abs, range(-60_000, 0), _retries=0)
    assert client.result(jids, timeout=300) == list(range(60_000, 0, -1))
