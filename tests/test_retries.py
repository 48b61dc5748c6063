"""Retries with a budget: a job whose worker dies runs again, elsewhere where it can,
up to ``_retries`` times (default 3); a poison pill then fails with WorkerDied naming
every attempt; a user exception is never retried."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

import mesh


def poison_at(x, bad):
    if x == bad:
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 3


def dies_once(marker):
    """Kill the worker on the first attempt (noting the node's pid), succeed after."""
    path = Path(marker)
    if not path.exists():
        path.write_text(str(os.getppid()))
        os._exit(9)
    return os.getppid()


def raise_and_count(counter):
    with open(counter, "a") as f:
        f.write("ran\n")
    raise KeyError("no retry for me")


def test_a_poison_pill_fails_after_4_attempts_and_the_rest_complete(node_factory, secret):
    a, b = node_factory(name="a"), node_factory(name="b")
    with mesh.Client([a.address, b.address], secret) as c:
        jids = c.map(poison_at, range(100), bad=37)
        c.join(jids, timeout=120, ignore_errors=True)
        states = c.status(jids)
        assert [i for i, s in enumerate(states) if s != "done"] == [37]
        assert [c.result(j) for i, j in enumerate(jids) if i != 37] == [
            i * 3 for i in range(100) if i != 37
        ]
        with pytest.raises(mesh.WorkerDied, match="4 attempts") as ei:
            c.result(jids[37])
        message = str(ei.value)
        assert jids[37] in message and "poison_at" in message
        assert "a" in message.split("on nodes")[1] and "b" in message.split("on nodes")[1]
        assert "SIGKILL" in message or "signal 9" in message
        assert c.info(jids[37]).attempts == 4
        for node in (a, b):
            node.wait_workers(2)
        assert c.result(c.map(poison_at, range(6), bad=-1), timeout=30) == [0, 3, 6, 9, 12, 15]


def test_a_job_whose_worker_died_once_succeeds_on_the_other_node(node_factory, secret, tmp_path):
    a, b = node_factory(name="a"), node_factory(name="b")
    marker = tmp_path / "died-here"
    with mesh.Client([a.address, b.address], secret) as c:
        jid = c.call(dies_once, str(marker))
        ran_on = c.result(jid, timeout=60)
        first = int(marker.read_text())
        assert {first, ran_on} == {a.pid, b.pid}  # the retry went to the other node
        assert c.info(jid).attempts == 2  # it ran twice: its first worker died


def test_a_retry_on_the_same_node_when_it_is_the_only_one(node_factory, secret, tmp_path):
    solo = node_factory(name="solo")
    marker = tmp_path / "died-here"
    with mesh.Client([solo.address], secret) as c:
        assert c.result(c.call(dies_once, str(marker), _retries=1), timeout=60) == solo.pid
        with pytest.raises(mesh.WorkerDied, match="1 attempts"):
            c.result(c.call(poison_at, 1, bad=1, _retries=0), timeout=60)
        solo.wait_workers(2)


def test_a_user_exception_is_never_retried(nodes, client, tmp_path):
    counter = tmp_path / "runs"
    with pytest.raises(KeyError, match="no retry for me"):
        client.result(client.call(raise_and_count, str(counter)), timeout=30)
    assert counter.read_text() == "ran\n"
