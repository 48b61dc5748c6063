"""The ledger's API and the waiting plans, on their own: no node, no network (issue 15).

The ledger is pure client logic (job records, calls and maps, compaction, callbacks,
lookups), so these tests drive it directly, as the loop thread and the facades do, and
assert exact outputs. Real nodes exercise the same code in test_api/test_asyncio_api.
"""

from __future__ import annotations

import asyncio
import threading

import mesh.client._ledger as ledger_mod
import pytest
from mesh.client._ledger import UNKNOWN, Func, Ledger, count_items
from mesh.client._lifecycle import ClientState
from mesh.client._waiting import (
    AllFinal,
    Countdown,
    Lookup,
    NextFinal,
    Picker,
    Ready,
    Watch,
    as_ids,
    interrupted,
    iresult_plan,
    windows_plan,
)

from mesh._protocol import DONE, ERROR, KILLED, PROCESSING, QUEUED, ErrorInfo, ResultItem
from mesh._serialize import dumps_value, loads, pack_exception
from mesh.errors import (
    ConnectionClosed,
    ErrorKind,
    MeshTimeout,
    SerializationError,
    UnknownJob,
)


def add(a: int, b: int = 0) -> int:
    return a + b


def names(node_id: str) -> str:
    return {"n-1": "ws-01"}.get(node_id, node_id)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger("c0", names)


def done_items(led: Ledger, results: dict[int, object]) -> dict[int, ResultItem]:
    """Results items as a node sends them, for job numbers -> values."""
    return {n: ResultItem(f"{led.tag}-{n}", DONE, dumps_value(v), None) for n, v in results.items()}


# ---- preparing calls and maps ----


def test_prepare_numbers_jobs_consecutively_and_reads_options(ledger: Ledger) -> None:
    call, (jid,) = ledger.prepare(add, [(1, 2)], {"_label": "x", "_cores": 2, "_retries": 0})
    mapped, jids = ledger.prepare(add, zip(range(3), range(3), strict=True), {"b": 1}, 3)
    assert (jid, jids) == ("c0-1", ["c0-2", "c0-3", "c0-4"])
    assert (call.start, call.n, call.label, call.cores, call.retries) == (1, 1, "x", 2, 0)
    assert (mapped.start, mapped.n, mapped.label, mapped.cores, mapped.retries) == (2, 3, "", 1, 3)
    assert ledger.ids() == ["c0-1", "c0-2", "c0-3", "c0-4"]
    assert ledger.locate("c0-3") == (mapped, 1)
    assert ledger.locate("c0-5") is None and ledger.locate("c1-1") is None
    assert ledger.num("c0-12") == 12 and ledger.num("c0-x") is None and ledger.num("zz-1") is None


def test_prepare_refuses_bad_options_before_allocating_ids(ledger: Ledger) -> None:
    with pytest.raises(TypeError, match=r"unknown job option _colour= \(job options are _cores"):
        ledger.prepare(add, [(1,)], {"_colour": "red"})
    with pytest.raises(ValueError, match="_cores must be at least 1"):
        ledger.prepare(add, [(1,)], {"_cores": 0})
    assert ledger.ids() == []


def test_ids_are_consecutive_per_map_whatever_threads_prepare(ledger: Ledger) -> None:
    got: list[list[str]] = []
    lock = threading.Lock()

    def submit() -> None:
        for _ in range(20):
            _, jids = ledger.prepare(add, [(i,) for i in range(7)], {})
            with lock:
                got.append(list(jids))

    threads = [threading.Thread(target=submit) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for jids in got:
        nums = [ledger.num(j) for j in jids]
        assert nums == list(range(nums[0], nums[0] + 7))
    assert len(ledger.ids()) == 4 * 20 * 7


def test_count_items_reads_sequences_lazily_and_anything_else_at_once() -> None:
    assert count_items([[1, 2, 3], range(10), "ab"]) == 2  # zip stops at the shortest
    assert count_items([iter([1, 2])]) is None


def test_a_lazy_map_reads_its_sequence_in_order_as_jobs_leave(ledger, monkeypatch) -> None:
    monkeypatch.setattr(ledger_mod, "EAGER_ARGS_BYTES", 1)  # one job pickled up front
    func, jids = ledger.prepare(add, zip(range(5)), {}, 5)
    assert len(func.ahead) == 1 and func.source is not None
    dropped: list[int] = []
    # job 3 is killed before it is sent: its item is skipped, the others stay aligned
    ledger.fail(ledger.find(jids[2]), ErrorInfo(ErrorKind.KILLED, "JobKilled", "killed"))
    taken_func, taken = ledger.take([1, 2, 4, 5], dropped)
    assert taken_func is func and dropped == []
    assert [loads(j.args) for j in taken] == [(0,), (1,), (3,), (4,)]
    assert [j.state for j in taken] == [PROCESSING] * 4


def test_a_sequence_that_shrinks_fails_the_jobs_it_lacks(ledger, monkeypatch) -> None:
    monkeypatch.setattr(ledger_mod, "EAGER_ARGS_BYTES", 1)
    items = [1, 2, 3]
    _, jids = ledger.prepare(add, zip(items), {}, 3)
    items.pop()
    dropped: list[int] = []
    _, taken = ledger.take([1, 2, 3], dropped)
    assert [j.jid for j in taken] == jids[:2] and dropped == [3]
    job = ledger.find(jids[2])
    assert job.state == ERROR
    with pytest.raises(SerializationError, match=r"ended before job c0-3: they were changed"):
        ledger.value(job)


# ---- results, callbacks, compaction ----


def test_accept_finishes_jobs_calls_back_once_and_compacts(ledger: Ledger) -> None:
    func, jids = ledger.prepare(add, zip(range(4)), {}, 4)
    seen: list[tuple[str, int]] = []
    jobs = ledger.known(jids)
    ledger.add_callback(jobs, lambda j: seen.append((j.jid, j.state)))
    ledger.add_callback(jobs[:1], lambda j: seen.append(("second", j.state)))
    ledger.accept([1, 2], done_items(ledger, {1: "a", 2: "b"}), "n-1")
    assert seen == [("c0-1", DONE), ("second", DONE), ("c0-2", DONE)]
    assert ledger.unfinished(jids) == ["c0-3", "c0-4"]
    assert sorted(func.live) == [2, 3]  # done ones are compact: no entry each
    again = ledger.find("c0-1")
    assert (again.state, again.node, ledger.value(again)) == (DONE, "n-1", "a")
    ledger.add_callback([again], lambda j: seen.append(("late", j.state)))  # final: at once
    assert seen[-1] == ("late", DONE)
    assert func.came_at(0) is not None and func.came_at(3) is None


def test_a_failed_job_raises_its_own_exception_naming_its_node(ledger: Ledger) -> None:
    _, (jid,) = ledger.prepare(add, [(1,)], {})
    try:
        raise KeyError("k")
    except KeyError as exc:
        blob, info = pack_exception(exc)
    ledger.accept([1], {1: ResultItem(jid, ERROR, blob, info)}, "n-1")
    with pytest.raises(KeyError) as caught:
        ledger.value(ledger.find(jid))
    assert caught.value.node == "ws-01" and caught.value.jid == jid


def test_fail_nums_of_a_range_drops_the_unread_arguments(ledger, monkeypatch) -> None:
    monkeypatch.setattr(ledger_mod, "EAGER_ARGS_BYTES", 1)
    func, jids = ledger.prepare(add, zip(range(10)), {}, 10)
    ledger.fail_nums(range(1, 11), ErrorInfo(ErrorKind.NO_NODES, "NoNodesAvailable", "none"))
    assert not func.ahead and func.source is None
    assert ledger.unfinished(jids) == []
    with pytest.raises(Exception, match=r"none \[job c0-1\]$"):
        ledger.value(ledger.find(jids[0]))


def test_killed_jobs_are_killed_not_errors(ledger: Ledger) -> None:
    _, (jid,) = ledger.prepare(add, [(1,)], {})
    ledger.fail(ledger.find(jid), ErrorInfo(ErrorKind.KILLED, "JobKilled", "killed by the user"))
    assert ledger.find(jid).state == KILLED


def test_lost_requeue_and_started_record_what_the_scheduler_decided(ledger: Ledger) -> None:
    started: list[str] = []
    func, jids = ledger.prepare(add, zip(range(2)), {}, 2, on_start=started.append)
    ledger.take([1, 2], [])
    ledger.lost(1, 1, "n-1")
    ledger.requeue(jids[1])
    one, two = ledger.known(jids)
    assert (one.state, one.attempts, one.node) == (QUEUED, 1, "n-1")
    assert two.state == QUEUED
    ledger.started(jids[0])
    ledger.started("other-1")  # not this client's: nobody is told
    assert started == [jids[0]]
    assert ledger.entries(func) == [one, two]


# ---- jobs of other processes ----


def test_lookup_adopts_foreign_ids_the_nodes_know(ledger: Ledger) -> None:
    asked: list[tuple[str, ...]] = []

    async def ask(jids: tuple[str, ...]) -> dict[str, tuple[str, int]]:
        asked.append(jids)
        return {"zz-1": ("n-1", DONE)}

    async def run() -> None:
        ledger.attach(asyncio.get_running_loop(), lambda _: None, lambda _: None, ask)
        _, (mine,) = ledger.prepare(add, [(1,)], {})
        jobs = await ledger.lookup([mine, "zz-1"])
        assert [j.jid for j in jobs] == [mine, "zz-1"]
        assert (jobs[1].state, jobs[1].node) == (PROCESSING, "n-1")  # its result is on its way
        assert asked == [("zz-1",)]
        ledger.adopted_result(ResultItem("zz-1", DONE, dumps_value(5), None), "n-1")
        ledger.adopted_result(ResultItem("zz-1", ERROR, b"", None), "n-1")  # a late duplicate
        assert ledger.value(ledger.find("zz-1")) == 5
        with pytest.raises(UnknownJob, match="no reachable node knows job yy-1"):
            await ledger.lookup(["yy-1"])
        assert ledger.find("yy-1") is None
        with pytest.raises(TypeError, match="job ids are strings, got 7"):
            await ledger.lookup([7])  # type: ignore[list-item]

    asyncio.run(run())
    assert UNKNOWN < QUEUED


def test_lookup_of_a_foreign_id_needs_a_running_client(ledger: Ledger) -> None:
    with pytest.raises(ConnectionClosed, match="the client is not running"):
        asyncio.run(ledger.lookup(["zz-1"]))


# ---- the hand-over to the loop thread ----


def test_submits_from_any_thread_reach_the_loop_in_one_batch(ledger: Ledger) -> None:
    loop = asyncio.new_event_loop()
    batches: list[list[Func]] = []
    killed: list[list[str]] = []
    ledger.attach(loop, batches.append, killed.append, _no_ask)
    funcs = [ledger.prepare(add, [(i,)], {})[0] for i in range(3)]
    for f in funcs:
        ledger.submit(f)
    ledger.kill_soon(["c0-1"])
    ledger.kill_soon(["c0-2", "c0-3"])
    loop.call_soon(loop.stop)
    loop.run_forever()
    assert batches == [funcs] and killed == [["c0-1", "c0-2", "c0-3"]]
    ledger.detach()
    ledger.kill_soon(["c0-1"])  # closed: nothing to kill with, and no error
    with pytest.raises(ConnectionClosed, match=r"cannot submit \S*add: the client is not running"):
        ledger.submit(funcs[0])
    loop.close()


async def _no_ask(jids: tuple[str, ...]) -> dict[str, tuple[str, int]]:
    return {}


# ---- waiting plans ----


def test_a_wait_looks_up_windows_and_times_out_naming_what_is_left(ledger, monkeypatch) -> None:
    monkeypatch.setattr("mesh.client._waiting.WAIT_WINDOW", 2)
    _, jids = ledger.prepare(add, zip(range(5)), {}, 5)
    ledger.accept([1, 2], done_items(ledger, {1: 1, 2: 2}), "n-1")
    plan = windows_plan(ledger, jids, 3.0)
    step = next(plan)
    assert step == Lookup(jids[:2])
    first = ledger.known(step.ids)
    assert plan.send(first) == Ready(first)  # all final: no wait
    step = plan.send(None)
    assert step == Lookup(jids[2:4])
    second = ledger.known(step.ids)
    wait = plan.send(second)
    assert isinstance(wait, AllFinal) and wait.jobs == second and 0 < wait.left_s <= 3.0
    with pytest.raises(MeshTimeout, match=r"^3 of 5 jobs not finished after 3.0 s$"):
        plan.send(False)


def test_iresult_plans_yield_in_order_or_as_jobs_come(ledger: Ledger) -> None:
    _, jids = ledger.prepare(add, zip(range(3)), {}, 3)
    jobs = ledger.known(jids)
    for ordered, arrivals, expected in [
        (True, [jobs[2], jobs[0], jobs[1]], jids),
        (False, [jobs[2], jobs[0], jobs[1]], [jids[2], jids[0], jids[1]]),
    ]:
        plan = iresult_plan(jids, None, ordered)
        assert next(plan) == Lookup(jids)
        assert plan.send(jobs) == Watch(jobs)
        got, step, came = [], plan.send(None), iter(arrivals)
        while True:
            if isinstance(step, NextFinal):
                assert step.left_s is None
                step = plan.send(next(came))
            else:
                assert isinstance(step, Ready)
                got.append(step.jobs[0].jid)
                try:
                    step = plan.send(None)
                except StopIteration:
                    break
        assert got == expected


def test_iresult_plan_times_out() -> None:
    plan = iresult_plan(["c0-1"], 0.5, True)
    led = Ledger("c0", names)
    led.prepare(add, [(1,)], {})
    jobs = led.known(["c0-1"])
    next(plan)
    plan.send(jobs)
    assert isinstance(plan.send(None), NextFinal)
    with pytest.raises(MeshTimeout, match=r"^iresult: jobs not finished after 0.5 s$"):
        plan.send(None)


def test_the_picker_yields_a_repeated_id_once_per_place() -> None:
    led = Ledger("c0", names)
    led.prepare(add, [(1,)], {})
    (job,) = led.known(["c0-1"])
    picker = Picker(["c0-1", "c0-1"], ordered=True)
    picker.watch([job, job])
    assert picker.pick() is None
    picker.arrived(job)
    picker.arrived(job)
    assert [picker.pick(), picker.pick(), picker.pick()] == [job, job, None]
    assert not picker.more


def test_a_countdown_fires_once_at_zero() -> None:
    fired: list[int] = []
    count = Countdown(2, lambda: fired.append(1))
    led = Ledger("c0", names)
    _, jids = led.prepare(add, zip(range(2)), {}, 2)
    led.add_callback(led.known(jids), count)
    led.accept([1], done_items(led, {1: 1}), "n-1")
    assert fired == []
    led.accept([2], done_items(led, {2: 2}), "n-1")
    assert fired == [1]


def test_what_a_stopped_wait_says() -> None:
    assert str(interrupted([])) == "stopped waiting; every job had finished"
    assert str(interrupted(["a-1", "a-2", "a-3", "a-4"], killed=True)) == (
        "stopped waiting; killing the 4 jobs left (a-1 a-2 a-3 ...)"
    )
    assert str(interrupted(["a-1"])) == (
        "stopped waiting; 1 job still running on the mesh (a-1). To stop it: "
        "mesh.kill(jids) (or client.kill(jids)) with the ids you waited on, or "
        "`mesh kill a-1` in a shell"
    )
    assert as_ids("a-1") == ["a-1"] and as_ids(("a-1", "a-2")) == ["a-1", "a-2"]


def test_lifecycle_states_name_themselves_in_errors() -> None:
    assert [s.closed for s in ClientState] == [False, False, False, False, True, True]
    err = ClientState.CLOSED.refuse("wait for job c0-1")
    assert isinstance(err, ConnectionClosed)
    assert str(err) == "cannot wait for job c0-1: the client is closed"


def test_unfinished_numbers_name_a_maps_live_jobs_by_function_hash_and_label(
    ledger: Ledger,
) -> None:
    # what the client kills when the console kills a map (MapKilled: tag/hash/label)
    mapped, _ = ledger.prepare(add, zip(range(4), range(4), strict=True), {"_label": "m"}, 4)
    other, _ = ledger.prepare(add, [(9,)], {"_label": "other"})
    ledger.accept([1, 3], done_items(ledger, {1: 1, 3: 3}), "n-1")
    fh = mapped.fhash.hex()[:16]
    assert mapped.fhash == other.fhash  # one function, two labels
    assert ledger.unfinished_numbers(fh, "m") == [2, 4]
    assert ledger.unfinished_numbers(fh, "other") == [5]
    assert ledger.unfinished_numbers(fh, "nope") == []
    assert ledger.unfinished_numbers("0" * 16, "m") == []
