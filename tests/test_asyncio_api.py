"""``mesh.AsyncClient`` for asyncio programs, on real nodes: coroutines, awaitable job
handles, ``async for`` over ``iresult``, and what cancelling a waiting task does."""

from __future__ import annotations

import asyncio
import inspect
import pickle

import pytest
from _helpers import gated, square, started_then_gated, wait_until
from mesh.client import ClientState

import mesh


def first_waits_for_gate(i, gate):
    return gated(gate, i) if i == 0 else i


def inverse(x):
    return 1 / x


@pytest.fixture
async def aclient(nodes, secret):
    async with mesh.AsyncClient([n.address for n in nodes], secret) as c:
        yield c
    assert c.closed


async def test_a_client_moves_through_one_lifecycle_state(nodes, secret):
    c = mesh.AsyncClient([n.address for n in nodes], secret)
    assert c.state is ClientState.NEW and not c.closed
    assert await c.start() is c and c.state is ClientState.RUNNING
    assert await c.start() is c  # again: a no-op
    await c.close()
    assert c.state is ClientState.CLOSED and c.closed
    await c.close()  # again: a no-op
    with pytest.raises(mesh.ConnectionClosed, match=r"^cannot call: the client is closed$"):
        await c.call(square, 1)
    with pytest.raises(mesh.ConnectionClosed, match=r"^cannot map: the client is closed$"):
        await c.map(square, [1])
    with pytest.raises(mesh.ConnectionClosed, match=r"^cannot start it: the client is closed$"):
        await c.start()


async def wait_for_status(c, jid, state):
    for _ in range(500):
        if await c.status(jid) == state:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"job {jid} is {await c.status(jid)!r}, expected {state!r}")


def test_every_api_call_is_a_coroutine_function():
    for name in ("start", "close", "call", "map", "result", "join", "status", "kill", "info"):
        assert inspect.iscoroutinefunction(getattr(mesh.AsyncClient, name)), name
    assert inspect.isasyncgenfunction(mesh.AsyncClient.iresult)


async def test_the_whole_api_as_coroutines(aclient, nodes):
    job = await aclient.call(square, 12)
    assert isinstance(job, mesh.Job) and isinstance(job, str)
    assert await aclient.result(job) == 144
    jobs = await aclient.map(square, range(5))
    assert await aclient.result(jobs) == [0, 1, 4, 9, 16]
    assert await aclient.join(jobs) is None
    assert await aclient.status(jobs) == ["done"] * 5
    info = await aclient.info(job)
    assert info.status == "done" and info.node in {n.name for n in nodes}
    assert {n.name for n in aclient.nodes()} == {n.name for n in nodes}
    with pytest.raises(ZeroDivisionError):
        await aclient.result(await aclient.call(inverse, 0))


async def test_job_handles_are_awaitable(aclient):
    job = await aclient.call(square, 9)
    assert await job == 81
    assert await job == 81  # again: the result stays
    jobs = await aclient.map(inverse, [1, 0])
    assert await jobs[0] == 1.0
    with pytest.raises(ZeroDivisionError):
        await jobs[1]


async def test_gather_of_a_thousand_calls(aclient):
    jobs = await asyncio.gather(*(aclient.call(square, i) for i in range(1000)))
    assert len(set(jobs)) == 1000
    assert await asyncio.gather(*jobs) == [i * i for i in range(1000)]


async def test_async_for_over_iresult_in_order_and_in_completion_order(aclient, tmp_path):
    gate = tmp_path / "gate"
    jobs = await aclient.map(first_waits_for_gate, range(4), [str(gate)] * 4)
    seen = []
    async for value in aclient.iresult(jobs, timeout=30, ordered=False):
        seen.append(value)
        if len(seen) == 3:
            assert sorted(seen) == [1, 2, 3]  # job 0 cannot finish before the gate opens
            assert await aclient.status(jobs[0]) == "processing"
            gate.touch()
    assert seen[3] == 0
    assert [v async for v in aclient.iresult(jobs)] == [0, 1, 2, 3]


async def test_iresult_timeout(aclient, tmp_path):
    jobs = [await aclient.call(square, 3), await aclient.call(gated, str(tmp_path / "g"), 1)]
    assert await aclient.result(jobs[0], timeout=30) == 9  # final before the short timeout
    it = aclient.iresult(jobs, timeout=0.3)
    assert await it.__anext__() == 9
    with pytest.raises(mesh.MeshTimeout):
        await it.__anext__()
    await aclient.kill(jobs[1])


async def test_cancelling_the_waiting_task_leaves_the_job_running(aclient, tmp_path):
    started, gate = tmp_path / "started", tmp_path / "gate"
    job = await aclient.call(started_then_gated, str(started), str(gate), "finished")
    waiter = asyncio.ensure_future(job)
    other = asyncio.create_task(aclient.result([job]))
    await asyncio.to_thread(wait_until, started.exists, 10, "job to start")
    waiter.cancel()
    other.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    with pytest.raises(asyncio.CancelledError):
        await other
    assert await aclient.status(job) == "processing"
    gate.touch()
    assert await job == "finished"


async def test_a_timeout_around_the_await_leaves_the_job_running(aclient, tmp_path):
    gate = tmp_path / "gate"
    job = await aclient.call(gated, str(gate), "late")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(job, 0.2)
    with pytest.raises(mesh.MeshTimeout):
        await aclient.result(job, timeout=0.1)
    assert await aclient.status(job) in ("queued", "processing")
    gate.touch()
    assert await job == "late"


async def test_cancelling_with_kill_on_cancel_kills_the_jobs(aclient, tmp_path):
    started, never = tmp_path / "started", tmp_path / "never"
    job = await aclient.call(started_then_gated, str(started), str(never), "unreachable")
    waiter = asyncio.create_task(aclient.result(job, kill_on_cancel=True))
    await asyncio.to_thread(wait_until, started.exists, 10, "job to start")
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await wait_for_status(aclient, job, "killed")
    with pytest.raises(mesh.JobKilled):
        await job


async def test_a_sync_clients_jobs_can_be_awaited_too(client, tmp_path):
    job = client.call(square, 4)
    assert await job == 16
    gate = tmp_path / "gate"
    slow = client.call(gated, str(gate), "slow")
    waiter = asyncio.ensure_future(slow)
    await asyncio.sleep(0.2)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    gate.touch()
    assert await slow == "slow"
    assert client.result(slow) == "slow"
    client.close()
    with pytest.raises(
        mesh.ConnectionClosed, match=f"^cannot wait for job {slow}: the client is closed$"
    ):
        await slow


async def test_a_handle_is_its_id(aclient, nodes, secret):
    job = await aclient.call(square, 5)
    assert await job == 25
    plain = pickle.loads(pickle.dumps(job))
    assert plain == job and type(plain) is str
    # another client knows the job by its plain id
    async with mesh.AsyncClient([n.address for n in nodes], secret) as other:
        assert await other.result(str(job)) == 25
    with pytest.raises(TypeError, match="not submitted by an open client"):
        await mesh.Job("nosuch-1")


async def test_async_client_local_starts_and_stops_its_own_nodes():
    async with await mesh.AsyncClient.local(nodes=2, workers=1) as c:
        assert sorted(n.name for n in c.nodes()) == ["local-1", "local-2"]
        assert await c.result(await c.map(abs, [-1, -2, -3])) == [1, 2, 3]
        procs = list(c._local_mesh._procs)
    assert c.closed and procs
    assert all(p.poll() is not None for p in procs)  # the nodes were stopped and reaped
