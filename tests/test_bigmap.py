"""A map keeps only a window of pickled arguments: the rest are read from its sequences
as the nodes take jobs (issue 7). The window is shrunk here, so a few dozen jobs show
what a million would: ``EAGER_ARGS_BYTES`` is how much a map pickles before it returns.
"""

from __future__ import annotations

import dataclasses
import threading

import mesh.client._ledger as client_ledger
import mesh.client._waiting as client_waiting
import pytest
from _helpers import gated, square, wait_until

import mesh
from mesh._serialize import dumps_value


@pytest.fixture
def streamed(monkeypatch):
    """Maps pickle one job's arguments up front; every other job's as it is sent."""
    monkeypatch.setattr(client_ledger, "EAGER_ARGS_BYTES", 1)


def _pickled(c: mesh.Client, jids) -> int:
    find = c.ledger.find
    return sum(1 for j in jids if find(j).args)  # None: not read yet; b"": final


def _sent(c: mesh.Client) -> int:
    """Jobs of this client on its nodes, as its scheduler places them."""
    sched = c._async._sched
    return sum(len(sched.in_flight(n.address)) for n in c.nodes())  # by link key


def test_a_streamed_map_gives_every_result_in_order(client, streamed):
    jids = client.map(square, range(300))
    assert client.result(jids, timeout=60) == [x * x for x in range(300)]
    # several sequences, the shortest decides, as with builtin map
    jids = client.map(pow, [2] * 50, range(40), [1000] * 60)
    assert client.result(jids, timeout=60) == [pow(2, x, 1000) for x in range(40)]
    # a generator has no length: it is read at once, then pickled as jobs are sent
    jids = client.map(square, (x for x in range(120) if x % 3))
    assert client.result(jids, timeout=60) == [x * x for x in range(120) if x % 3]


def test_only_the_jobs_sent_have_their_arguments_pickled(client, streamed, tmp_path):
    gate = str(tmp_path / "gate")
    try:
        jids = client.map(gated, [gate] * 500, range(500))
        wait_until(lambda: _sent(client) >= 4, what="the nodes' first jobs")  # 2 nodes x 2 workers
        # a new function gets a shallow pipeline (2 per worker): 8 jobs at most. The two
        # counts are read one after the other while the loop thread sends: wait until
        # they agree (they must, once a send is done), then check the bound.
        wait_until(lambda: _pickled(client, jids) == _sent(client), what="pickled == sent")
        assert _pickled(client, jids) <= 8 and _sent(client) <= 8
    finally:
        (tmp_path / "gate").touch()
    assert client.result(jids, timeout=60) == list(range(500))
    assert _pickled(client, jids) == 0  # dropped once final


def test_jobs_killed_before_they_are_sent_keep_the_others_aligned(client, streamed, tmp_path):
    gate = str(tmp_path / "gate")
    try:
        jids = client.map(gated, [gate] * 60, range(60))
        wait_until(lambda: client.status(jids[0]) == "processing", what="a job to start")
        unsent = [j for j in jids[30:40] if client.ledger.find(j).args is None]
        assert len(unsent) == 10
        client.kill(unsent)
    finally:
        (tmp_path / "gate").touch()
    values = client.result(jids[:30] + jids[40:], timeout=60)
    assert values == list(range(30)) + list(range(40, 60))
    for j in unsent:
        with pytest.raises(mesh.JobKilled):
            client.result(j)


def test_an_item_that_cannot_be_pickled_fails_only_its_own_job(client, streamed):
    items = list(range(20))
    items[13] = threading.Lock()  # type: ignore[call-overload]
    jids = client.map(str, items)
    with pytest.raises(mesh.SerializationError, match=r"cannot pickle arguments of str"):
        client.result(jids[13], timeout=60)
    assert client.result(jids[:13] + jids[14:], timeout=60) == [
        str(x) for x in items if x != items[13]
    ]


def test_a_sequence_that_shrinks_after_map_fails_the_jobs_it_no_longer_has(
    client, streamed, tmp_path
):
    gate = str(tmp_path / "gate")
    values = list(range(40))
    try:
        first = client.map(gated, [gate] * 8, range(8))  # every worker busy: nothing else sent
        wait_until(lambda: _sent(client) == 8, what="the pipelines to fill")
        jids = client.map(square, values)
        del values[30:]
    finally:
        (tmp_path / "gate").touch()
    assert client.result(first, timeout=60) == list(range(8))
    assert client.result(jids[:30], timeout=60) == [x * x for x in range(30)]
    with pytest.raises(mesh.SerializationError, match=r"ended before job .*changed after map"):
        client.result(jids[35], timeout=60)


def test_held_arguments_bound_what_is_read_when_the_nodes_would_take_more(
    client, streamed, tmp_path
):
    a = client._async
    sched = a._sched
    sched.config = dataclasses.replace(sched.config, held_args_bytes=3000)
    opened, closed = tmp_path / "open", tmp_path / "closed"
    opened.touch()
    # quick jobs first: once some are back, the nodes offer deep pipelines; then 400 wait
    gates = [str(opened)] * 40 + [str(closed)] * 400
    try:
        jids = client.map(gated, gates, range(440))
        size = len(dumps_value((str(closed), 439)))  # the largest argument tuple
        # the scheduler counts the held bytes by the size of the map's first job
        wait_until(
            lambda: sched._held_bytes >= 3000 - size, what="the held arguments to reach the bound"
        )
        assert sched._held_bytes <= 3000 + size
        assert _pickled(client, jids) == _sent(client) <= 3000 // (size - 4) + 1
        rooms = [sched._view(n, True).room for n in sched._nodes.values()]
        assert max(rooms) > 100  # they would take more
    finally:
        closed.touch()
    assert client.result(jids, timeout=60) == list(range(440))
    assert sched._held_bytes == 0


def test_a_finished_map_keeps_no_object_per_job(client):
    jids = client.map(square, range(5000))
    assert client.result(jids, timeout=120) == [x * x for x in range(5000)]
    func, _ = client.ledger.locate(jids[0])
    assert not func.live  # every job compact: a flag, a node and its result's bytes
    assert func.done == bytearray(b"\x01" * 5000)
    # and still answers like any job
    assert client.result(jids[4321]) == 4321 * 4321
    assert client.status(jids[7]) == "done"
    assert client.info(jids[7]).node in {"n1", "n2"}


def test_waiting_on_a_big_map_looks_at_a_window_of_its_jobs(client, tmp_path, monkeypatch):
    monkeypatch.setattr(client_waiting, "WAIT_WINDOW", 50)
    gate = tmp_path / "gate"
    jids = client.map(gated, [str(gate)] * 600, range(600))
    func, _ = client.ledger.locate(jids[0])
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(client.result(jids, timeout=60)))
    waiter.start()
    try:
        wait_until(lambda: _sent(client) >= 4, what="jobs sent")
        wait_until(lambda: len(func.live) >= 50, what="the wait to look at its first window")
        # the jobs sent, and the waiter's window: not an object for each of the 600
        assert len(func.live) <= _sent(client) + 50
    finally:
        gate.touch()
        waiter.join(60)
    assert got == [list(range(600))]
    assert list(client.iresult(jids, ordered=False)) == list(range(600))  # all final: in order
    assert sorted(client.iresult(jids[::-1], ordered=False)) == list(range(600))
