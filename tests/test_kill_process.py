"""``_kill_process=True``: the worker process that ran the job is replaced after it (its
result delivered first), on a real node with one worker."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from _helpers import wait_until
from conftest import NodeProc, solo_node

import mesh


def mark(value: int) -> int:
    """Leave state in the worker process: an attribute on a module it keeps imported."""
    import json

    json._lanmesh_test_mark = value  # type: ignore[attr-defined]
    return os.getpid()


def read_mark() -> int | None:
    import json

    return getattr(json, "_lanmesh_test_mark", None)


@pytest.fixture(scope="module")
def one_worker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProc, str]]:
    yield from solo_node(tmp_path_factory, "kill_process")


def test_each_kill_process_job_gets_a_fresh_worker_process(one_worker):
    node, secret = one_worker
    with mesh.Client([node.address], secret) as c:
        first = c.result(c.call(os.getpid, _kill_process=True), timeout=30)
        second = c.result(c.call(os.getpid, _kill_process=True), timeout=30)
        assert first != second
        # the slot is refilled: the node has its one worker again, a new process
        pids = wait_until(lambda: [p for p in node.worker_pids() if p not in (first, second)])
        (pid,) = pids
        assert c.result(c.call(os.getpid), timeout=30) == pid


def test_a_job_without_it_keeps_the_worker_process(one_worker):
    node, secret = one_worker
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(os.getpid), timeout=30) == c.result(c.call(os.getpid), timeout=30)


def test_state_left_by_a_kill_process_job_does_not_survive_it(one_worker):
    node, secret = one_worker
    with mesh.Client([node.address], secret) as c:
        # without the option, a worker keeps what a job left behind ...
        pid = c.result(c.call(mark, 1), timeout=30)
        assert c.result(c.call(read_mark), timeout=30) == 1
        # ... with it, the job still returns its result, and the next job starts clean
        assert c.result(c.call(mark, 2, _kill_process=True), timeout=30) == pid
        assert c.result(c.call(read_mark), timeout=30) is None


def test_a_map_with_kill_process_runs_each_job_in_its_own_process(one_worker):
    node, secret = one_worker
    with mesh.Client([node.address], secret) as c:
        pids = c.result(c.map(mark, range(3), _kill_process=True), timeout=60)
        assert len(set(pids)) == 3


def test_bad_values_are_refused_naming_the_option(one_worker):
    node, secret = one_worker
    with mesh.Client([node.address], secret) as c, pytest.raises(TypeError, match="_kill_process"):
        c.call(os.getpid, _kill_process="yes")
