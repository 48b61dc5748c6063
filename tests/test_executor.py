"""``mesh.Executor`` behaves as a ``concurrent.futures.Executor``, on real nodes.

Two nodes with two workers each. Jobs that must still be running while a test looks
at them wait on a gate file (``_helpers``), so no test depends on timing.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import threading

import pytest
from _helpers import gated, job_ids, square, started_then_gated, touch, wait_until

import mesh


def inverse(x):
    return 1 / x


def add(x, y, scale=1):
    return (x + y) * scale


def pid_of(_):
    return os.getpid()


def resolver_threads():
    return [t for t in threading.enumerate() if t.name == "mesh-executor"]


@pytest.fixture
def executor(nodes, secret):
    ex = mesh.Executor([n.address for n in nodes], secret)
    yield ex
    ex.client.kill(job_ids(ex.client))  # running jobs a test left behind: shutdown waits for them
    ex.shutdown(wait=True, cancel_futures=True)
    wait_until(lambda: not resolver_threads(), timeout_s=10, what="the resolver thread to stop")


def test_it_is_a_concurrent_futures_executor_on_the_whole_mesh(executor):
    assert isinstance(executor, cf.Executor)
    assert executor.workers == 4
    future = executor.submit(square, 7)
    assert isinstance(future, cf.Future)
    assert future.result(timeout=30) == 49
    assert future.done() and not future.cancelled() and not future.running()
    assert future.exception() is None
    assert executor.client.status(future.jid) == "done"


def test_submit_passes_arguments_and_job_options(executor):
    future = executor.submit(add, 1, y=2, scale=10, _label="added")
    assert future.result(timeout=30) == 30
    assert executor.client.info(future.jid).label == "added"
    with pytest.raises(TypeError, match="_bogus"):
        executor.submit(square, 2, _bogus=1)


def test_executor_wide_job_options(nodes, secret):
    with mesh.Executor([n.address for n in nodes], secret, _label="every job") as ex:
        futures = [ex.submit(square, i) for i in range(3)]
        assert [f.result(timeout=30) for f in futures] == [0, 1, 4]
        assert {ex.client.info(f.jid).label for f in futures} == {"every job"}
    with pytest.raises(TypeError, match="_high_cpu"):
        mesh.Executor([n.address for n in nodes], secret, _high_cpu=True)
    with pytest.raises(TypeError, match="max_workers"):
        mesh.Executor([n.address for n in nodes], secret, max_workers=4)


def test_a_failing_call_sets_the_exception(executor):
    future = executor.submit(inverse, 0)
    error = future.exception(timeout=30)
    assert isinstance(error, ZeroDivisionError)
    assert error.jid == future.jid
    with pytest.raises(ZeroDivisionError):
        future.result()


def test_result_and_exception_time_out_while_the_job_goes_on(executor, tmp_path):
    gate = tmp_path / "gate"
    future = executor.submit(gated, str(gate), "late")
    with pytest.raises(cf.TimeoutError):
        future.result(timeout=0.2)
    with pytest.raises(cf.TimeoutError):
        future.exception(timeout=0.1)
    assert not future.done()
    gate.touch()
    assert future.result(timeout=30) == "late"


def test_a_future_runs_once_its_node_starts_the_job_and_is_no_longer_cancellable(
    executor, tmp_path
):
    started, gate = tmp_path / "started", tmp_path / "gate"
    future = executor.submit(started_then_gated, str(started), str(gate), "finished")
    wait_until(started.exists, what="job to start")
    wait_until(future.running, what="the node's Started to reach the future")
    assert not future.done() and not future.cancelled()

    assert future.cancel() is False  # the standard: a running future is not cancelled
    assert future.running() and executor.client.status(future.jid) == "processing"
    gate.touch()
    assert future.result(timeout=30) == "finished"


def test_mesh_kill_stops_a_running_job(executor, nodes, tmp_path):
    started, never = tmp_path / "started", tmp_path / "never"
    future = executor.submit(started_then_gated, str(started), str(never), "unreachable")
    wait_until(future.running, what="job to start")
    before = {n.name: set(n.worker_pids()) for n in nodes}
    called = []
    future.add_done_callback(called.append)

    executor.client.kill(future.jid)  # what mesh.kill(future.jid) does on the default client
    with pytest.raises(mesh.JobKilled):
        future.result(timeout=30)
    assert future.done() and not future.cancelled()
    assert called == [future]
    assert executor.client.status(future.jid) == "killed"
    node = next(n for n in nodes if n.name == executor.client.info(future.jid).node)
    after = set(node.wait_workers(2))
    assert len(before[node.name] - after) == 1  # its worker was terminated and replaced


def test_executor_kill_stops_its_futures_running_or_waiting(node_factory, secret, tmp_path):
    solo = node_factory(name="solo", workers=1)
    never = str(tmp_path / "never")
    with mesh.Executor([solo.address], secret) as ex:
        running = ex.submit(gated, never, "r")
        wait_until(running.running, what="the first job to start")
        waiting = ex.submit(gated, never, "w")
        finished_gate = tmp_path / "open"
        called = []
        running.add_done_callback(called.append)
        ex.kill([running, waiting])
        assert running.cancelled() and waiting.cancelled()  # cancel() spares a running one
        assert called == [running]
        assert cf.wait([running, waiting], timeout=30).not_done == set()  # once both stopped
        assert ex.client.status([running.jid, waiting.jid]) == ["killed", "killed"]
        finished_gate.touch()
        assert ex.submit(gated, str(finished_gate), "next").result(timeout=30) == "next"


def test_cancel_of_a_queued_job_means_it_never_runs(node_factory, secret, tmp_path):
    solo = node_factory(name="solo", workers=1)
    started, gate, ran = tmp_path / "started", tmp_path / "gate", tmp_path / "ran"
    with mesh.Executor([solo.address], secret) as ex:
        first = ex.submit(started_then_gated, str(started), str(gate), "first")
        wait_until(started.exists, what="first job to start")
        queued = ex.submit(touch, str(ran))
        called = []
        queued.add_done_callback(called.append)
        assert queued.cancel() is True
        assert queued.cancelled() and queued.done() and called == [queued]
        with pytest.raises(cf.CancelledError):
            queued.result()
        assert queued.cancel() is True  # again: still cancelled
        wait_until(lambda: ex.client.status(queued.jid) == "killed", what="queued job killed")
        assert cf.wait([queued], timeout=30).done == {queued}  # its waiters were told
        gate.touch()
        assert first.result(timeout=30) == "first"
    assert not ran.exists()


def test_cancel_after_the_job_finished_returns_false(executor):
    future = executor.submit(square, 3)
    assert future.result(timeout=30) == 9
    assert future.cancel() is False
    assert not future.cancelled()
    assert future.result() == 9


def test_done_callbacks_run_once_off_the_network_thread(executor):
    seen = []
    done = threading.Event()

    def callback(f):
        # a callback may use the client: it does not run on the client's loop thread
        seen.append((f.result(), executor.client.status(f.jid)))
        done.set()

    future = executor.submit(square, 5)
    future.add_done_callback(callback)
    assert done.wait(30)
    assert seen == [(25, "done")]
    late = []
    future.add_done_callback(late.append)  # already done: called at once
    assert late == [future]


def test_as_completed_yields_in_completion_order(executor, tmp_path):
    gate = tmp_path / "gate"
    slow = executor.submit(gated, str(gate), "slow")
    fast = [executor.submit(square, i) for i in range(3)]
    it = cf.as_completed([slow, *fast], timeout=30)
    first_three = {next(it) for _ in range(3)}
    assert first_three == set(fast)
    assert not slow.done()
    gate.touch()
    assert next(it) is slow
    with pytest.raises(StopIteration):
        next(it)


def test_as_completed_times_out(executor, tmp_path):
    gate = tmp_path / "gate"
    future = executor.submit(gated, str(gate), "later")
    with pytest.raises(cf.TimeoutError):
        for _ in cf.as_completed([future], timeout=0.3):
            pass
    gate.touch()
    assert future.result(timeout=30) == "later"


def test_wait_return_conditions(executor, tmp_path):
    gate = tmp_path / "gate"
    slow = executor.submit(gated, str(gate), "slow")
    quick = executor.submit(square, 2)
    failing = executor.submit(inverse, 0)

    done, not_done = cf.wait([slow, quick], timeout=30, return_when=cf.FIRST_COMPLETED)
    assert quick in done and slow in not_done

    done, not_done = cf.wait([slow, failing], timeout=30, return_when=cf.FIRST_EXCEPTION)
    assert done == {failing} and not_done == {slow}

    done, not_done = cf.wait([slow, quick], timeout=0.2)
    assert done == {quick} and not_done == {slow}

    gate.touch()
    done, not_done = cf.wait([slow, quick, failing], timeout=30)
    assert done == {slow, quick, failing} and not not_done


def test_wait_counts_a_cancelled_future_as_done_once_its_job_is_withdrawn(
    node_factory, secret, tmp_path
):
    solo = node_factory(name="solo", workers=1)
    gate = tmp_path / "gate"
    with mesh.Executor([solo.address], secret) as ex:
        running = ex.submit(gated, str(gate), "running")
        wait_until(running.running, what="the first job to start")
        blocked = ex.submit(gated, str(gate), "queued")
        waiting = []
        waiter = threading.Thread(target=lambda: waiting.append(cf.wait([blocked], timeout=30)))
        waiter.start()
        assert blocked.cancel() is True
        waiter.join(30)
        assert not waiter.is_alive()
        done, not_done = waiting[0]
        assert done == {blocked} and not not_done
        gate.touch()
        assert running.result(timeout=30) == "running"
        assert ex.client.status(blocked.jid) == "killed"


def test_map_keeps_the_order_of_its_input(executor, tmp_path):
    gate = tmp_path / "gate"
    # the first call finishes last, yet comes first
    results = executor.map(gated, [str(gate), str(tmp_path)], ["first", "second"])
    gate.touch()
    assert list(results) == ["first", "second"]
    assert list(executor.map(add, range(5), range(10, 100))) == [10, 12, 14, 16, 18]
    assert list(executor.map(square, [])) == []


def test_map_submits_everything_before_the_first_result_is_asked_for(executor, tmp_path):
    marks = [tmp_path / f"m{i}" for i in range(6)]
    results = executor.map(touch, [str(m) for m in marks])
    wait_until(lambda: all(m.exists() for m in marks), what="every call to run")
    assert list(results) == [str(m) for m in marks]


def test_map_chunks_calls_into_fewer_jobs(executor):
    jobs_before = len(job_ids(executor.client))
    results = list(executor.map(add, range(23), range(23), chunksize=5))
    assert results == [2 * i for i in range(23)]
    assert len(job_ids(executor.client)) - jobs_before == 5  # ceil(23 / 5)
    # the calls of one chunk ran in one worker process, one after the other
    pids = list(executor.map(pid_of, range(12), chunksize=4))
    assert all(len(set(pids[i : i + 4])) == 1 for i in range(0, 12, 4))
    with pytest.raises(ValueError):
        executor.map(square, [1], chunksize=0)


def test_map_raises_the_first_failure_in_order(executor):
    results = executor.map(inverse, [1, 2, 0, 4])
    assert next(results) == 1.0
    assert next(results) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(results)
    chunked = executor.map(inverse, [1, 2, 0, 4], chunksize=2)
    assert next(chunked) == 1.0 and next(chunked) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(chunked)


def test_map_timeout_raises_and_kills_what_is_left(executor, tmp_path):
    gate = tmp_path / "never"
    client = executor.client
    jobs_before = set(job_ids(client))
    results = executor.map(gated, [str(tmp_path)] + [str(gate)] * 3, ["ready", "a", "b", "c"],
                           timeout=1.0)  # fmt: skip
    assert next(results) == "ready"
    with pytest.raises(cf.TimeoutError):
        next(results)
    mapped = [j for j in job_ids(client) if j not in jobs_before]
    wait_until(lambda: client.status(mapped) == ["done", "killed", "killed", "killed"],
               what="the calls left to be killed")  # fmt: skip


def test_shutdown_waits_then_refuses_new_work(nodes, secret, tmp_path):
    gate = tmp_path / "gate"
    ex = mesh.Executor([n.address for n in nodes], secret)
    future = ex.submit(gated, str(gate), "finished")
    opener = threading.Timer(0.3, gate.touch)
    opener.start()
    ex.shutdown(wait=True)
    opener.join()
    assert future.done() and future.result() == "finished"
    assert ex.client.closed  # its own client
    assert not resolver_threads()
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError):
        ex.map(square, [1])
    ex.shutdown()  # twice is fine


def test_shutdown_without_waiting_lets_futures_finish(nodes, secret, tmp_path):
    gate = tmp_path / "gate"
    ex = mesh.Executor([n.address for n in nodes], secret)
    future = ex.submit(gated, str(gate), "later")
    ex.shutdown(wait=False)
    assert not future.done()
    assert not ex.client.closed  # a future still needs it
    gate.touch()
    assert future.result(timeout=30) == "later"
    wait_until(lambda: ex.client.closed, what="its own client to close")
    wait_until(lambda: not resolver_threads(), what="the resolver to stop")


def test_shutdown_cancel_futures_withdraws_the_waiting_jobs_and_lets_the_running_finish(
    nodes, secret, tmp_path
):
    gate = tmp_path / "gate"
    with mesh.Client([n.address for n in nodes], secret) as observer:
        ex = mesh.Executor([n.address for n in nodes], secret)
        try:
            # both nodes' 4 workers known before the jobs are placed (a client starts
            # once one node answers; the other joins a moment later)
            wait_until(lambda: ex.workers == 4, what="both nodes connected")
            finished = ex.submit(square, 4)
            assert finished.result(timeout=30) == 16
            futures = [ex.submit(gated, str(gate), i) for i in range(7)]  # 4 run, 3 wait
            wait_until(lambda: sum(f.running() for f in futures) == 4, timeout_s=30,
                       what="four jobs to start")  # fmt: skip
            running = [f for f in futures if f.running()]
            waiting = [f for f in futures if not f.running()]
            ex.shutdown(wait=False, cancel_futures=True)
            assert all(f.cancelled() for f in waiting)
            assert not any(f.cancelled() for f in running) and not finished.cancelled()
            wait_until(lambda: observer.status([f.jid for f in waiting]) == ["killed"] * 3,
                       what="the waiting jobs to be withdrawn")  # fmt: skip
            assert observer.status([f.jid for f in running]) == ["processing"] * 4
            gate.touch()
            assert [f.result(timeout=30) for f in running] == [futures.index(f) for f in running]
            # the resolver closes the client as its last act: once it is gone, so is the loop
            wait_until(lambda: not resolver_threads(), timeout_s=30, what="the resolver to stop")
            assert ex.client.closed
        finally:  # a failure above must not leave the executor's client to the next tests
            gate.touch()
            ex.shutdown(wait=True, cancel_futures=True)
            ex.client.close()


def test_an_executor_on_a_given_client_leaves_it_open(client):
    with mesh.Executor(client=client) as ex:
        assert ex.client is client
        assert ex.submit(square, 6).result(timeout=30) == 36
    assert not client.closed
    assert client.result(client.call(square, 2)) == 4
    with pytest.raises(TypeError):
        mesh.Executor(["127.0.0.1:1"], client=client)


def test_closing_the_client_under_an_executor_settles_its_futures(node_factory, secret, tmp_path):
    solo = node_factory(name="solo", workers=1)
    gate = tmp_path / "gate"
    own = mesh.Client([solo.address], secret)
    ex = mesh.Executor(client=own)
    running = ex.submit(gated, str(gate), "r")
    wait_until(running.running, what="the job to start")
    waiting = ex.submit(gated, str(gate), "w")
    own.close()  # before anything is final: no job will ever tell the executor
    assert waiting.cancel() is True
    assert cf.wait([running, waiting], timeout=30).not_done == set()
    with pytest.raises(mesh.ConnectionClosed, match=f"before job {running.jid} finished"):
        running.result()
    assert waiting.cancelled()
    wait_until(lambda: not resolver_threads(), what="the resolver to stop")
    with pytest.raises(RuntimeError, match="client is closed"):
        ex.submit(square, 1)
    gate.touch()


def test_the_default_executor_uses_the_module_level_client(nodes, secret):
    mesh.connect([n.address for n in nodes], secret)
    with mesh.Executor() as ex:
        assert ex.client is mesh._default
        assert list(ex.map(square, range(4))) == [0, 1, 4, 9]
    assert not mesh._default.closed


def test_lambdas_and_closures_travel_by_value(executor):
    offset = 100

    def shifted(x):
        return x + offset

    assert executor.submit(lambda x: x * 3, 5).result(timeout=30) == 15
    assert list(executor.map(shifted, range(3))) == [100, 101, 102]
    assert list(executor.map(lambda a, b: a - b, [5, 6], [1, 2], chunksize=2)) == [4, 4]


def test_many_futures(executor):
    futures = [executor.submit(square, i) for i in range(300)]
    done, not_done = cf.wait(futures, timeout=60)
    assert done == set(futures) and not not_done
    assert [f.result() for f in futures] == [i * i for i in range(300)]
    # with nothing pending, an executor holds no thread
    wait_until(lambda: not resolver_threads(), what="the idle resolver to stop")
    assert executor.submit(square, 2).result(timeout=30) == 4  # and starts one when needed
