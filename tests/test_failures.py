"""Jobs that fail in every way a job can: the node survives each and keeps serving.

Most tests run on one node (two workers) with a client connected to it alone, so the
call that follows a failure is certain to run on the node that saw it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from _helpers import square, started_then_gated, wait_until
from conftest import NodeProc, alive

import mesh


class CustomError(Exception):
    """An exception type the node only knows because the client shipped it."""


def explode_in_job(x):
    raise ValueError(f"bad value {x}")


def raise_custom(x):
    raise CustomError("custom", x)


def exit_with_3():
    os._exit(3)


def segfault():
    import ctypes
    import resource

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file for this crash
    ctypes.string_at(0)


def sleeper(seconds):
    time.sleep(seconds)
    return "woke up"


def crash_at(x, bad):
    if x == bad:
        os._exit(7)
    return x * x


@pytest.fixture
def solo(node_factory) -> NodeProc:
    return node_factory(name="solo", workers=2)


@pytest.fixture
def c(solo: NodeProc, secret: str) -> Iterator[mesh.Client]:
    with mesh.Client([solo.address], secret) as client:
        yield client


def assert_serving(node: NodeProc, client: mesh.Client, before: set[int], replaced: int) -> None:
    """The node has its full worker count, ``replaced`` of them new, and runs jobs."""
    after = set(node.wait_workers(2))
    assert len(before - after) == replaced, (before, after)
    for pid in before - after:
        wait_until(lambda pid=pid: not alive(pid), what=f"worker {pid} to be gone")
    assert node.proc.poll() is None
    assert client.result(client.map(square, range(4)), timeout=30) == [0, 1, 4, 9]


def test_job_exception_is_reraised_with_remote_traceback(solo, c):
    before = set(solo.worker_pids())
    jid = c.call(explode_in_job, 7)
    with pytest.raises(ValueError, match="bad value 7") as ei:
        c.result(jid)
    exc = ei.value
    assert type(exc) is ValueError
    assert isinstance(exc.__cause__, mesh.RemoteTraceback)
    remote = str(exc.__cause__)
    assert "explode_in_job" in remote
    assert "ValueError: bad value 7" in remote
    assert exc.node == "solo"
    assert exc.jid == jid
    assert c.status(jid) == "error"
    # a raising job costs no worker
    assert_serving(solo, c, before, replaced=0)


def test_job_exception_of_a_class_defined_by_the_client(solo, c):
    with pytest.raises(CustomError) as ei:
        c.result(c.call(raise_custom, 5))
    assert ei.value.args == ("custom", 5)
    assert "raise_custom" in str(ei.value.__cause__)
    assert ei.value.node == "solo"


def test_worker_exiting_gives_worker_died_with_exit_code(solo, c):
    before = set(solo.worker_pids())
    jid = c.call(exit_with_3, _retries=0)  # one attempt: the retries have their own tests
    with pytest.raises(mesh.WorkerDied, match="exited with code 3") as ei:
        c.result(jid, timeout=30)
    assert ei.value.node == "solo"
    assert ei.value.jid == jid
    assert "exit_with_3" in str(ei.value)
    assert c.status(jid) == "error"
    assert_serving(solo, c, before, replaced=1)


def test_worker_segfault_gives_worker_died_naming_sigsegv(solo, c):
    before = set(solo.worker_pids())
    jid = c.call(segfault, _retries=0)
    with pytest.raises(mesh.WorkerDied, match="SIGSEGV") as ei:
        c.result(jid, timeout=30)
    assert ei.value.node == "solo"
    assert c.status(jid) == "error"
    assert_serving(solo, c, before, replaced=1)


def test_killed_running_job(solo, c, tmp_path):
    before = set(solo.worker_pids())
    started = tmp_path / "started"
    jid = c.call(started_then_gated, str(started), str(tmp_path / "never"), None)
    wait_until(started.exists, what="job to start")
    c.kill(jid)
    with pytest.raises(mesh.JobKilled):
        c.result(jid, timeout=30)
    assert c.status(jid) == "killed"
    assert_serving(solo, c, before, replaced=1)


def test_job_past_max_runtime(solo, c):
    before = set(solo.worker_pids())
    jid = c.call(sleeper, 30, _max_runtime=1)
    with pytest.raises(mesh.MaxRuntimeExceeded):
        c.result(jid, timeout=20)
    assert c.status(jid) == "killed"
    assert_serving(solo, c, before, replaced=1)


def test_crash_inside_a_map_of_many_trivial_jobs(client, nodes):
    n, bad = 1000, 613
    jids = client.map(crash_at, range(n), bad=bad)
    client.join(jids, timeout=60, ignore_errors=True)
    states = client.status(jids)
    assert [i for i, s in enumerate(states) if s != "done"] == [bad]
    assert states[bad] == "error"
    for i, jid in enumerate(jids):
        if i == bad:
            with pytest.raises(mesh.WorkerDied, match="exited with code 7"):
                client.result(jid)
        else:
            assert client.result(jid) == i * i
    for node in nodes:
        node.wait_workers(2)
    assert client.result(client.map(square, range(8))) == [i * i for i in range(8)]


def nap_then_double(x):
    time.sleep(0.05)
    return x * 2


def test_a_node_killed_mid_map_costs_only_time(node_factory, secret):
    """SIGKILL one of two nodes while a map runs: every result arrives, once, correct."""
    import signal

    first, second = node_factory(name="keep", workers=1), node_factory(name="doomed", workers=1)
    with mesh.Client([first.address, second.address], secret) as c:
        jids = c.map(nap_then_double, range(30))
        wait_until(lambda: "done" in c.status(jids), what="a first result")
        second.proc.send_signal(signal.SIGKILL)
        assert c.result(jids, timeout=60) == [x * 2 for x in range(30)]
        late = c.info(jids[-3:])
        assert {i.node for i in late} == {"keep"}
        assert first.proc.poll() is None


def test_with_every_node_gone_jobs_fail_with_no_nodes_available(node_factory, secret):
    """No node reachable for the configured time: unfinished jobs fail, nothing hangs."""
    import signal

    only = node_factory(name="only", workers=1)
    with mesh.Client([only.address], secret, no_nodes_timeout_s=1.0) as c:
        running = c.call(sleeper, 30)
        wait_until(lambda: c.status(running) == "processing", what="the job to start")
        only.proc.send_signal(signal.SIGKILL)
        with pytest.raises(mesh.NoNodesAvailable, match="no node reachable for 1 s"):
            c.result(running, timeout=30)
        later = c.call(square, 3)  # submitted while nothing is reachable
        with pytest.raises(mesh.NoNodesAvailable, match=r"only \(127\.0\.0\.1:\d+\)"):
            c.result(later, timeout=30)


def test_a_frozen_node_is_dropped_by_heartbeats_and_its_jobs_redone(node_factory, secret):
    """SIGSTOP (a hung machine or a cut link: no TCP reset) is noticed by missed heartbeats."""
    import signal

    alive_node = node_factory(name="alive", workers=1)
    frozen = node_factory(name="frozen", workers=1)
    with mesh.Client(
        [alive_node.address, frozen.address], secret, heartbeat_s=0.2, dead_after_s=1.0
    ) as c:
        jids = c.map(nap_then_double, range(30))
        wait_until(lambda: "done" in c.status(jids), what="a first result")
        frozen.proc.send_signal(signal.SIGSTOP)
        try:
            assert c.result(jids, timeout=60) == [x * 2 for x in range(30)]
            assert {i.node for i in c.info(jids[-3:])} == {"alive"}
        finally:
            frozen.proc.send_signal(signal.SIGCONT)
        # the frozen node wakes with stale work: nothing reaches the user twice
        time.sleep(0.5)
        assert c.result(jids, timeout=10) == [x * 2 for x in range(30)]
