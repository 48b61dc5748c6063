"""The node's job table: events in, exact instructions out, no I/O and no clock."""

from __future__ import annotations

import pytest
from mesh.node._job_types import (
    Deliver,
    Dispatch,
    Func,
    HandBack,
    Job,
    KillWorker,
    Notify,
    RetireWorker,
    RetryRefused,
)
from mesh.node._jobs import MAX_BATCH, JobTable, retry_base
from mesh.node._retained import RETAINED_OVERHEAD

from mesh._protocol import DONE, ERROR, KILLED, PROCESSING, QUEUED, ErrorInfo, RanItem
from mesh.errors import ErrorKind

OWNER, OTHER = 1, 2
F = Func(b"f" * 16, b"blob-f", "work.square")
G = Func(b"g" * 16, b"blob-g", "work.cube")
KILLED_ON_REQUEST = ("killed", "JobKilled", "killed on request", "", "")


def table(capacity: int = 4, **ttls: float) -> JobTable:
    t = JobTable("ws-07", **ttls)
    t.capacity = capacity
    return t


def items(*jids: str) -> tuple[tuple[str, bytes], ...]:
    return tuple((jid, f"args-{jid}".encode()) for jid in jids)


def ran(jid: str, started: float = 1.0, finished: float = 1.0, state: int = DONE):
    """One RanItem as a worker reports it."""
    return RanItem(jid, state, f"result-{jid}".encode(), None, started, finished, 0.25, "out", "")


def done(jid: str) -> tuple[str, int, bytes, None]:
    return (jid, DONE, f"result-{jid}".encode(), None)


def jobs(t: JobTable, *jids: str) -> list[Job]:
    return [t.jobs[j] for j in jids]


def warm_up(t: JobTable, wid: int, run_s: float = 0.0, now: float = 1.0) -> None:
    """Run one job of F on ``wid`` so avg_run_s is known and the worker holds F."""
    t.submit(OWNER, F, items("warm"), now)
    assert t.worker_ready(wid, now) == [Dispatch(wid, F, True, jobs(t, "warm"))]
    out = t.worker_ran(wid, (ran("warm", 0.0, run_s),), now)
    assert out == [Deliver(OWNER, [done("warm")])]
    assert t.avg_run_s == run_s


# ---- submit and dispatch ----


def test_submit_with_no_workers_dispatches_nothing() -> None:
    t = table()
    assert t.submit(OWNER, F, items("j1", "j2"), 0.5) == []
    assert t.queued == 2 and t.running == 0
    assert [j.state for j in t.jobs.values()] == [QUEUED, QUEUED]
    assert t.record("j1") == (
        "j1", QUEUED, "ws-07", "work.square", "", 0.5, 0.0, 0.0, 0.0, "", "", "", 0,
    )  # fmt: skip


def test_worker_ready_dispatches_and_sends_the_function_once() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    assert t.worker_ready(10, 1.0) == [Dispatch(10, F, True, jobs(t, "j1"))]
    assert t.jobs["j1"].state == PROCESSING and t.jobs["j1"].worker == 10
    assert t.running == 1 and t.queued == 0
    t.worker_ran(10, (ran("j1"),), 2.0)
    assert t.submit(OWNER, F, items("j2"), 3.0) == [Dispatch(10, F, False, jobs(t, "j2"))]


def test_a_new_function_or_a_new_worker_gets_the_blob() -> None:
    t = table()
    warm_up(t, 10)
    assert t.submit(OWNER, G, items("g1"), 2.0) == [Dispatch(10, G, True, jobs(t, "g1"))]
    assert t.worker_ready(11, 2.0) == []
    assert t.submit(OWNER, F, items("f1"), 2.0) == [Dispatch(11, F, True, jobs(t, "f1"))]


def test_worker_ran_delivers_to_the_owner() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    out = t.worker_ran(10, (ran("j1", started=1.1, finished=1.6),), 2.0)
    assert out == [Deliver(OWNER, [("j1", DONE, b"result-j1", None)])]
    assert t.running == 0
    assert t.record("j1") == (
        "j1", DONE, "ws-07", "work.square", "", 0.0, 1.1, 1.6, 0.25, "out", "", "", 0,
    )  # fmt: skip


def test_worker_ran_with_an_error_delivers_it() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    err = ErrorInfo(
        ErrorKind.RAISED, "builtins.ValueError", "bad", "Traceback...\nValueError: bad\n"
    )
    item = RanItem("j1", ERROR, b"pickled", err, 1.0, 1.2, 0.1, "", "warn")
    assert t.worker_ran(10, (item,), 2.0) == [Deliver(OWNER, [("j1", ERROR, b"pickled", err)])]
    assert t.record("j1").error == "Traceback...\nValueError: bad\n"


def test_worker_ran_from_an_unknown_worker_or_job_is_ignored() -> None:
    t = table()
    assert t.worker_ran(99, (ran("j1"),), 1.0) == []
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    assert t.worker_ran(10, (ran("nope"),), 1.0) == []
    assert t.jobs["j1"].state == PROCESSING


# ---- kill ----


def test_kill_of_a_queued_job_delivers_killed_at_once() -> None:
    t = table()
    t.submit(OWNER, F, items("j1", "j2"), 0.0)
    assert t.kill(("j1",), 5.0) == [Deliver(OWNER, [("j1", KILLED, b"", KILLED_ON_REQUEST)])]
    assert list(t.queue) == jobs(t, "j2")
    assert t.worker_ready(10, 6.0) == [Dispatch(10, F, True, jobs(t, "j2"))]


def test_kill_of_a_running_job_kills_its_worker() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    assert t.kill(("j1",), 3.0) == [KillWorker(10, "killed: j1")]
    assert t.kill(("j1",), 3.5) == []  # asked twice, killed once
    assert t.jobs["j1"].state == PROCESSING
    out = t.worker_died(10, "was killed by signal 9", 4.0)
    assert out == [Deliver(OWNER, [("j1", KILLED, b"", KILLED_ON_REQUEST)])]
    assert 10 not in t.workers


def test_kill_of_unknown_or_finished_jobs_does_nothing() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    t.worker_ran(10, (ran("j1"),), 2.0)
    assert t.kill(("j1", "nope"), 3.0) == []
    assert t.jobs["j1"].state == DONE


def test_kill_one_job_of_a_batch_requeues_the_others() -> None:
    t = table()
    warm_up(t, 10)
    t.submit(OWNER, F, items("a", "b", "c", "d", "e", "f", "g", "h"), 2.0)
    assert len(t.workers[10].batch) == 4  # 8 queued // (2 * 1 worker)
    assert t.kill(("b",), 3.0) == [KillWorker(10, "killed: b")]
    out = t.worker_died(10, "was killed by signal 9", 4.0)
    assert out == [Deliver(OWNER, [("b", KILLED, b"", KILLED_ON_REQUEST)])]
    assert list(t.queue) == jobs(t, "a", "c", "d", "e", "f", "g", "h")
    assert [j.suspect for j in t.queue] == [True, True, True, False, False, False, False]


# ---- workers dying ----


def test_worker_died_with_a_single_job_blames_it() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    out = t.worker_died(10, "exited with code -11 (SIGSEGV)", 2.0)
    message = (
        "worker process on node ws-07 exited with code -11 (SIGSEGV) while running work.square"
    )
    assert out == [
        Deliver(OWNER, [("j1", ERROR, b"", ("worker-died", "WorkerDied", message, "", ""))])
    ]
    assert t.jobs["j1"].attempts == 1
    assert t.record("j1").error == f"WorkerDied: {message}"
    assert t.worker_died(10, "again", 3.0) == []  # already gone


def test_worker_died_with_a_batch_requeues_suspects_one_at_a_time() -> None:
    t = table()
    warm_up(t, 10)
    names = [f"j{i}" for i in range(1, 9)]
    out = t.submit(OWNER, F, items(*names), 2.0)
    assert out == [Dispatch(10, F, False, jobs(t, "j1", "j2", "j3", "j4"))]
    assert t.worker_died(10, "exited with code 1", 3.0) == []  # nobody blamed, no worker left
    assert list(t.queue) == jobs(t, *names)
    assert all(j.state == QUEUED and j.worker == -1 for j in t.queue)
    assert [j.suspect for j in t.queue] == [True] * 4 + [False] * 4
    # a fresh worker gets the suspects alone, in order
    assert t.worker_ready(11, 4.0) == [Dispatch(11, F, True, jobs(t, "j1"))]
    assert t.worker_ran(11, (ran("j1"),), 5.0) == [
        Dispatch(11, F, False, jobs(t, "j2")),
        Deliver(OWNER, [done("j1")]),
    ]
    # j2 is the crasher: alone, it gets the blame
    out = t.worker_died(11, "exited with code -11", 6.0)
    assert out == [
        Deliver(
            OWNER,
            [("j2", ERROR, b"", ("worker-died", "WorkerDied",
              "worker process on node ws-07 exited with code -11 while running work.square",
              "", ""))],
        )
    ]  # fmt: skip
    assert t.worker_ready(12, 7.0) == [Dispatch(12, F, True, jobs(t, "j3"))]
    assert t.worker_ran(12, (ran("j3"),), 8.0)[0] == Dispatch(12, F, False, jobs(t, "j4"))
    # the last suspect done, the innocent rest go as a batch again: 4 queued // 2 = 2
    assert t.worker_ran(12, (ran("j4"),), 9.0)[0] == Dispatch(12, F, False, jobs(t, "j5", "j6"))


# ---- max runtime ----


def test_max_runtime_kills_via_tick() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 10.0, max_runtime=5.0)
    assert t.worker_ready(10, 10.0) == [Dispatch(10, F, True, jobs(t, "j1"))]
    assert t.tick(14.0) == []
    assert t.tick(15.0) == []  # exactly at the limit is still allowed
    assert t.tick(15.5) == [KillWorker(10, "max-runtime: j1")]
    assert t.tick(16.0) == []  # once
    out = t.worker_died(10, "was killed by signal 9", 16.0)
    error = ("max-runtime", "JobKilled", "killed after exceeding _max_runtime=5s", "", "")
    assert out == [Deliver(OWNER, [("j1", KILLED, b"", error)])]


def test_jobs_with_max_runtime_run_alone() -> None:
    t = table()
    warm_up(t, 10)
    t.worker_ready(11, 1.0)
    limited = t.submit(OWNER, F, items(*[f"j{i}" for i in range(8)]), 2.0, max_runtime=60.0)
    assert limited == [Dispatch(11, F, True, jobs(t, "j0")), Dispatch(10, F, False, jobs(t, "j1"))]


# ---- cores ----


def test_multi_core_job_reserves_a_second_idle_worker() -> None:
    t = table(capacity=2)
    t.worker_ready(10, 0.0)
    t.worker_ready(11, 0.0)
    assert t.submit(OWNER, F, items("big"), 1.0, cores=2) == [Dispatch(11, F, True, jobs(t, "big"))]
    assert t.workers[10].reserved_for == "big"
    assert t.running == 2
    assert t.submit(OWNER, F, items("small"), 1.0) == []  # no idle worker left
    assert t.queued == 1
    out = t.worker_ran(11, (ran("big"),), 2.0)
    assert out == [Dispatch(11, F, False, jobs(t, "small")), Deliver(OWNER, [done("big")])]
    assert t.workers[10].reserved_for == ""


def test_multi_core_job_waits_for_enough_idle_workers() -> None:
    t = table(capacity=2)
    t.worker_ready(10, 0.0)
    assert t.submit(OWNER, F, items("big", "small"), 1.0, cores=2) == []
    assert t.worker_ready(11, 2.0) == [Dispatch(11, F, True, jobs(t, "big"))]
    assert t.workers[10].reserved_for == "big"


def test_multi_core_job_dying_frees_its_reserved_worker() -> None:
    t = table(capacity=2)
    t.worker_ready(10, 0.0)
    t.worker_ready(11, 0.0)
    t.submit(OWNER, F, items("big"), 1.0, cores=2)
    assert t.submit(OWNER, F, items("small"), 1.0) == []
    out = t.worker_died(11, "exited with code 1", 2.0)
    assert out[0] == Dispatch(10, F, True, jobs(t, "small"))
    assert out[1].items[0][:2] == ("big", ERROR)
    assert t.workers[10].reserved_for == ""


def test_cores_larger_than_capacity_is_rejected() -> None:
    t = table(capacity=2)
    t.worker_ready(10, 0.0)
    out = t.submit(OWNER, F, items("huge"), 1.0, cores=3)
    error = ("rejected", "ValueError", "job needs 3 cores; node ws-07 has 2 workers", "", "")
    assert out == [Deliver(OWNER, [("huge", ERROR, b"", error)])]
    assert t.queued == 0 and t.running == 0


def test_zero_cores_is_rejected() -> None:
    t = table()
    out = t.submit(OWNER, F, items("none"), 1.0, cores=0)
    assert len(out) == 1 and out[0].items[0][1] == ERROR
    assert out[0].items[0][3][0] == "rejected"


# ---- duplicates and watchers ----


def test_duplicate_jid_is_not_run_twice() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    assert t.submit(OWNER, F, items("j1"), 0.1) == []
    assert t.queued == 1
    assert t.worker_ready(10, 1.0) == [Dispatch(10, F, True, jobs(t, "j1"))]
    assert t.worker_ready(11, 1.0) == []
    # resent by another connection while running: that connection hears the result too
    assert t.submit(OTHER, F, items("j1"), 1.5) == []
    assert t.worker_ran(10, (ran("j1"),), 2.0) == [
        Deliver(OWNER, [done("j1")]),
        Deliver(OTHER, [done("j1")]),
    ]
    # resent after it finished: the result at once, no new run
    assert t.submit(OTHER, F, items("j1"), 3.0) == [Deliver(OTHER, [done("j1")])]
    assert t.queued == 0 and t.running == 0


def test_watch_from_a_second_connection_gets_the_result() -> None:
    t = table()
    t.submit(OWNER, F, items("j1", "j2"), 0.0)
    t.worker_ready(10, 1.0)
    assert t.watch(OTHER, ("j1", "unknown")) == []
    assert t.worker_ran(10, (ran("j1"),), 2.0) == [
        Dispatch(10, F, False, jobs(t, "j2")),
        Deliver(OWNER, [done("j1")]),
        Deliver(OTHER, [done("j1")]),
    ]
    assert t.watch(OTHER, ("j1",)) == [Deliver(OTHER, [done("j1")])]  # finished: at once


def test_watch_by_the_owner_does_not_deliver_twice() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    assert t.watch(OWNER, ("j1",)) == []
    assert t.worker_ran(10, (ran("j1"),), 2.0) == [Deliver(OWNER, [done("j1")])]


def test_disconnected_watcher_hears_nothing() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    t.watch(OTHER, ("j1",))
    t.disconnected(OTHER)
    assert t.worker_ran(10, (ran("j1"),), 2.0) == [Deliver(OWNER, [done("j1")])]


# ---- expiry ----


def test_ack_then_tick_after_result_ttl_forgets_the_job() -> None:
    t = table(result_ttl_s=10.0, unclaimed_ttl_s=1000.0)
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    t.worker_ran(10, (ran("j1"),), 2.0)
    t.ack(("j1",), 3.0)
    assert t.tick(12.9) == []
    assert t.record("j1") is not None
    t.tick(13.0)
    assert t.record("j1") is None
    assert "j1" not in t.jobs


def test_unacked_result_is_forgotten_after_unclaimed_ttl() -> None:
    t = table(result_ttl_s=10.0, unclaimed_ttl_s=100.0)
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    t.worker_ran(10, (ran("j1"),), 2.0)
    t.tick(101.9)
    assert "j1" in t.jobs
    t.tick(102.0)
    assert "j1" not in t.jobs


def test_results_finished_or_acked_together_expire_together_from_one_entry() -> None:
    t = table(result_ttl_s=10.0, unclaimed_ttl_s=100.0)
    warm_up(t, 10, now=0.0)  # "warm": finished at 0.0, never acked
    names = [f"j{i}" for i in range(8)]
    (dispatch,) = t.submit(OWNER, F, items(*names), 1.0)  # 8 queued // 2: a batch of 4
    assert [j.jid for j in dispatch.jobs] == ["j0", "j1", "j2", "j3"]
    t.worker_ran(10, tuple(ran(j.jid) for j in dispatch.jobs), 2.0)
    assert len(t._expiry) == 2  # "warm"; then j0-j3 (one report), not one per job
    t.ack(("j0", "j1", "nosuch"), 3.0)
    assert len(t._expiry) == 3
    t.tick(13.0)  # j0 and j1: acked, kept result_ttl_s
    assert t.take_expired() == ["j0", "j1"] and "j2" in t.jobs
    t.tick(100.0)  # warm: finished at 0.0, unclaimed_ttl_s
    assert t.take_expired() == ["warm"]
    t.tick(102.0)
    assert t.take_expired() == ["j2", "j3"]


def test_tick_never_forgets_a_running_job() -> None:
    t = table(result_ttl_s=1.0, unclaimed_ttl_s=1.0)
    t.submit(OWNER, F, items("j1"), 0.0)
    t.worker_ready(10, 1.0)
    t.ack(("j1",), 1.0)
    t.tick(50.0)
    assert t.jobs["j1"].state == PROCESSING


# ---- batch sizing ----


def test_batch_is_one_job_until_the_run_time_is_known() -> None:
    t = table()
    t.worker_ready(10, 0.0)
    names = [f"j{i:02}" for i in range(40)]
    assert t.submit(OWNER, F, items(*names), 1.0) == [Dispatch(10, F, True, jobs(t, "j00"))]
    assert t.avg_run_s is None
    out = t.worker_ran(10, (ran("j00", 1.0, 1.0),), 2.0)  # a job that takes no time
    assert t.avg_run_s == 0.0
    # 39 queued over 1 worker: half the queue per batch, 19 jobs
    assert out[0] == Dispatch(10, F, False, jobs(t, *names[1:20]))


def test_batch_is_sized_by_run_time() -> None:
    t = table()
    warm_up(t, 10, run_s=0.001)
    names = [f"j{i:03}" for i in range(100)]
    out = t.submit(OWNER, F, items(*names), 2.0)
    assert out == [Dispatch(10, F, False, jobs(t, *names[:10]))]  # 10 ms / 1 ms


def test_batch_is_capped() -> None:
    t = table()
    warm_up(t, 10, run_s=0.0)
    names = [f"j{i:04}" for i in range(4 * MAX_BATCH)]
    out = t.submit(OWNER, F, items(*names), 2.0)
    assert len(out) == 1 and len(out[0].jobs) == MAX_BATCH


def test_batch_holds_one_function() -> None:
    t = table()
    warm_up(t, 10, run_s=0.0)
    assert t.submit(OWNER, F, items("busy"), 2.0) == [Dispatch(10, F, False, jobs(t, "busy"))]
    assert t.submit(OWNER, F, items("f1", "f2"), 2.0) == []
    assert t.submit(OWNER, G, items(*[f"g{i}" for i in range(10)]), 2.0) == []
    # 12 queued // 2 would allow 6, but the batch stops where the function changes
    out = t.worker_ran(10, (ran("busy", 1.0, 1.0),), 3.0)
    assert out[0] == Dispatch(10, F, False, jobs(t, "f1", "f2"))
    out = t.worker_ran(10, (ran("f1", 1.0, 1.0), ran("f2", 1.0, 1.0)), 4.0)
    assert out[0] == Dispatch(10, G, True, jobs(t, "g0", "g1", "g2", "g3", "g4"))


@pytest.mark.parametrize("queued", [2, 3])
def test_short_queue_gets_single_job_batches(queued: int) -> None:
    t = table()
    warm_up(t, 10, run_s=0.0)
    names = [f"j{i}" for i in range(queued)]
    out = t.submit(OWNER, F, items(*names), 2.0)
    assert out == [Dispatch(10, F, False, jobs(t, names[0]))]


# ---- retries, leaving, memory ----


def test_a_retry_runs_a_jid_whose_worker_died_here_again() -> None:
    t = table()
    t.submit(OWNER, F, items("j1"), 1.0)
    t.worker_ready(1, 1.0)
    t.worker_died(1, "was killed by SIGKILL", 2.0)
    assert t.jobs["j1"].state == ERROR
    t.worker_ready(2, 3.0)
    assert t.submit(OWNER, F, items("j1"), 3.0) == [Deliver(OWNER, [t.jobs["j1"].item()])]
    out = t.submit(OWNER, F, items("j1"), 4.0, retry=True)
    assert out == [Dispatch(2, F, True, jobs(t, "j1"))]
    assert t.jobs["j1"].attempts == 1


def test_drain_hands_queued_jobs_back_and_refuses_new_ones() -> None:
    t = table()
    t.worker_ready(1, 1.0)
    t.submit(OWNER, F, items("run", "q1", "q2"), 1.0)
    assert t.drain() == [HandBack(OWNER, ["q1", "q2"])]
    assert t.queued == 0 and "q1" not in t.jobs and t.jobs["run"].state == PROCESSING
    assert t.submit(OTHER, F, items("late"), 2.0) == [HandBack(OTHER, ["late"])]
    assert t.worker_ran(1, (ran("run"),), 3.0) == [Deliver(OWNER, [done("run")])]


def test_recall_hands_back_what_has_not_started_and_keeps_running_ones() -> None:
    t = table(capacity=1)
    t.worker_ready(1, 1.0)
    t.submit(OWNER, F, items("run"), 1.0)
    t.submit(OWNER, F, items("q1", "q2", "q3"), 1.5)
    assert t.jobs["run"].state == PROCESSING
    assert t.recall(OWNER, ("run", "q3", "q1")) == [HandBack(OWNER, ["q3", "q1"], recall=True)]
    assert [j.jid for j in t.queue] == ["q2"]
    assert "q1" not in t.jobs and "q3" not in t.jobs and t.jobs["run"].state == PROCESSING
    # the node still takes new work (it is not leaving), and a recalled id comes back fresh
    t.submit(OWNER, F, items("q1"), 2.0)
    assert [j.jid for j in t.queue] == ["q2", "q1"] and t.jobs["q1"].attempts == 0
    assert t.worker_ran(1, (ran("run"),), 3.0) == [
        Dispatch(1, F, False, jobs(t, "q2")),
        Deliver(OWNER, [done("run")]),
    ]


def test_recall_always_answers_once_even_when_nothing_is_handed_back() -> None:
    t = table(capacity=1)
    t.worker_ready(1, 1.0)
    t.submit(OWNER, F, items("run", "q1"), 1.0)
    t.worker_ran(1, (ran("run"),), 2.0)  # q1 now runs
    assert t.jobs["q1"].state == PROCESSING
    assert t.recall(OWNER, ("run", "q1", "unknown")) == [HandBack(OWNER, [], recall=True)]
    assert t.recall(OWNER, ()) == [HandBack(OWNER, [], recall=True)]


def test_recall_gives_back_only_the_askers_own_jobs() -> None:
    t = table(capacity=1)
    t.worker_ready(1, 1.0)
    t.submit(OWNER, F, items("run"), 1.0)
    t.submit(OTHER, F, items("theirs"), 1.0)
    t.submit(OWNER, G, items("mine"), 1.0)
    assert t.recall(OWNER, ("theirs", "mine")) == [HandBack(OWNER, ["mine"], recall=True)]
    assert [j.jid for j in t.queue] == ["theirs"] and "mine" not in t.jobs


def test_recall_takes_jobs_out_of_an_env_queue() -> None:
    t = table(capacity=1)
    e = Func(b"e" * 16, b"blob-e", "work.env", env="env-key")
    t.submit(OWNER, e, items("e1", "e2"), 1.0)
    assert t.recall(OWNER, ("e2",)) == [HandBack(OWNER, ["e2"], recall=True)]
    assert [j.jid for j in t.env_queues["env-key"]] == ["e1"] and t.queued == 1


def test_over_memory_blames_a_job_running_alone() -> None:
    t = table()
    t.worker_ready(1, 1.0)
    t.submit(OWNER, F, items("big"), 1.0)
    assert t.over_memory(1, 300 * 2**20, 200 * 2**20) == [
        KillWorker(1, f"memory: {300 * 2**20} bytes > {200 * 2**20}")
    ]
    assert t.over_memory(1, 310 * 2**20, 200 * 2**20) == []  # once
    t.worker_died(1, "was killed by SIGTERM", 2.0)
    job = t.jobs["big"]
    assert job.state == KILLED and job.error is not None
    assert job.error[:2] == ("memory", "MemoryLimitExceeded")
    assert "300 MiB" in job.error[2] and "200 MiB" in job.error[2] and "ws-07" in job.error[2]


def test_over_memory_in_a_batch_reruns_its_jobs_one_by_one() -> None:
    t = table()
    warm_up(t, 1, run_s=0.0001)
    t.submit(OWNER, F, items(*(f"j{i}" for i in range(8))), 2.0)
    t.worker_ready(2, 2.0)
    (batch,) = [w for w in t.workers.values() if len(w.batch) > 1]
    t.over_memory(batch.wid, 2, 1)
    t.worker_died(batch.wid, "was killed by SIGTERM", 3.0)
    assert all(j.state != KILLED for j in t.jobs.values())
    assert any(j.suspect for j in t.jobs.values())


def test_paused_starts_nothing_until_resumed() -> None:
    t = table()
    t.set_paused(True, 1.0)
    t.worker_ready(1, 1.0)
    assert t.submit(OWNER, F, items("j1"), 1.0) == []
    assert t.set_paused(False, 2.0) == [Dispatch(1, F, True, jobs(t, "j1"))]


def test_environment_workers_share_the_nodes_slots() -> None:
    t = table(capacity=1)
    envf = Func(b"e" * 16, b"blob-e", "work.env", env="k1")
    t.worker_ready(1, 1.0)
    t.worker_ready(1_000_000, 1.0, env="k1")
    assert t.submit(OWNER, F, items("plain"), 1.0) == [Dispatch(1, F, True, jobs(t, "plain"))]
    assert t.submit(OWNER, envf, items("in-env"), 1.0) == []  # the one slot is taken
    out = t.worker_ran(1, (ran("plain"),), 2.0)
    assert Dispatch(1_000_000, envf, True, jobs(t, "in-env")) in out


# ---- start notifications (Submit.notify_start: mesh.Executor's RUNNING futures) ----


def test_jobs_submitted_with_notify_start_are_reported_as_they_start() -> None:
    t = table(capacity=2)
    assert t.submit(OWNER, F, items("j1", "j2", "j3"), 0.0, notify_start=True) == []
    out = t.worker_ready(10, 1.0) + t.worker_ready(11, 1.0)
    assert out == [
        Dispatch(10, F, True, jobs(t, "j1")), Notify(OWNER, ["j1"]),
        Dispatch(11, F, True, jobs(t, "j2")), Notify(OWNER, ["j2"]),
    ]  # fmt: skip
    # a result and the next start in one event: the start goes out first
    assert t.worker_ran(10, (ran("j1"),), 2.0) == [
        Dispatch(10, F, False, jobs(t, "j3")), Notify(OWNER, ["j3"]), Deliver(OWNER, [done("j1")]),
    ]  # fmt: skip


def test_jobs_told_as_they_start_run_one_per_worker_however_short() -> None:
    # Batched, "b" would wait behind "a" in the worker while its future said RUNNING
    # (and refused a cancel): each goes alone, and is told when it really starts.
    t = table(capacity=2)
    warm_up(t, 10)
    t.worker_ready(11, 1.0)
    out = t.submit(OWNER, F, items("a", "b", "c", "d"), 2.0, notify_start=True)
    assert out == [
        Dispatch(11, F, True, jobs(t, "a")), Dispatch(10, F, False, jobs(t, "b")),
        Notify(OWNER, ["a", "b"]),
    ]  # fmt: skip
    assert t.worker_ran(10, (ran("b"),), 3.0)[:2] == [
        Dispatch(10, F, False, jobs(t, "c")), Notify(OWNER, ["c"]),
    ]  # fmt: skip


def test_jobs_without_notify_start_are_not_reported() -> None:
    t = table(capacity=1)
    t.submit(OWNER, F, items("plain"), 0.0)
    t.submit(OTHER, G, items("told"), 0.0, notify_start=True)
    assert t.worker_ready(10, 1.0) == [Dispatch(10, F, True, jobs(t, "plain"))]
    assert t.worker_ran(10, (ran("plain"),), 2.0) == [
        Dispatch(10, G, True, jobs(t, "told")), Notify(OTHER, ["told"]),
        Deliver(OWNER, [done("plain")]),
    ]  # fmt: skip


def test_a_job_told_as_it_starts_that_dies_with_its_worker_is_blamed_alone() -> None:
    # (it ran alone: its worker's death is its own, and the client runs it again)
    t = table(capacity=1)
    warm_up(t, 10)
    (dispatch, _) = t.submit(OWNER, F, items("a", "b", "c", "d"), 2.0, notify_start=True)
    assert [j.jid for j in dispatch.jobs] == ["a"]
    (deliver,) = t.worker_died(10, "was killed by signal 9", 3.0)
    assert isinstance(deliver, Deliver) and [i.jid for i in deliver.items] == ["a"]
    assert deliver.items[0].error is not None
    assert deliver.items[0].error.kind == ErrorKind.WORKER_DIED
    assert t.worker_ready(11, 4.0) == [Dispatch(11, F, True, jobs(t, "b")), Notify(OWNER, ["b"])]


def test_a_queued_job_killed_before_it_starts_is_never_reported() -> None:
    t = table(capacity=1)
    t.submit(OWNER, F, items("j1"), 0.0, notify_start=True)
    assert t.kill(("j1",), 1.0) == [Deliver(OWNER, [("j1", KILLED, b"", KILLED_ON_REQUEST)])]
    assert t.worker_ready(10, 2.0) == []


# ---- _kill_process and _priority ----


def test_a_kill_process_job_runs_alone_and_its_worker_is_retired_after_its_result() -> None:
    t = table(capacity=1)
    warm_up(t, 1)  # F is measured quick: its jobs would go in batches
    out = t.submit(OWNER, F, items("k1", "k2"), 2.0, kill_process=True)
    assert out == [Dispatch(1, F, False, jobs(t, "k1"))]
    assert t.jobs["k1"].state == PROCESSING and t.jobs["k2"].state == QUEUED
    out = t.worker_ran(1, (ran("k1"),), 3.0)
    # the result first, then the worker goes; k2 waits for a fresh one
    assert out == [Deliver(OWNER, [done("k1")]), RetireWorker(1)]
    assert t.jobs["k2"].state == QUEUED
    assert t.worker_died(1, "was killed by SIGTERM", 3.5) == []  # retired: nobody blamed
    assert t.worker_ready(2, 4.0) == [Dispatch(2, F, True, jobs(t, "k2"))]
    assert t.worker_ran(2, (ran("k2"),), 5.0) == [Deliver(OWNER, [done("k2")]), RetireWorker(2)]


def test_a_job_without_kill_process_keeps_its_worker() -> None:
    t = table(capacity=1)
    t.worker_ready(1, 0.0)
    t.submit(OWNER, F, items("a", "b"), 1.0)
    assert t.worker_ran(1, (ran("a"),), 2.0) == [
        Dispatch(1, F, False, jobs(t, "b")),
        Deliver(OWNER, [done("a")]),
    ]


def test_a_senders_earlier_priority_jobs_go_ahead_of_its_later_ones_only() -> None:
    t = table(capacity=1)
    t.submit(OWNER, F, items("low1", "low2"), 1.0, priority=9)
    t.submit(OTHER, F, items("theirs"), 1.0, priority=9)
    t.submit(OWNER, F, items("mid"), 1.0)  # the default, 5
    t.submit(OTHER, F, items("their-high"), 1.0, priority=1)  # takes the place of theirs
    t.submit(OWNER, F, items("high"), 1.0, priority=1)
    t.submit(OWNER, F, items("low3"), 1.0, priority=9)
    assert [j.jid for j in t.queue] == [
        "high", "mid", "low1", "low2", "their-high", "theirs", "low3",
    ]  # fmt: skip
    assert t.worker_ready(1, 2.0) == [Dispatch(1, F, True, jobs(t, "high"))]


# ---- the console's Retry: failed jobs' submissions, kept within a byte budget ----


def failed(t: JobTable, wid: int, jid: str, now: float) -> None:
    """Run ``jid`` (submitted before) on ``wid`` and have it raise."""
    err = ErrorInfo(ErrorKind.RAISED, "OSError", "no file", "", "")
    t.worker_ready(wid, now)
    t.worker_ran(wid, (RanItem(jid, ERROR, b"", err, now, now, 0.0, "", ""),), now)


def test_a_failed_job_runs_again_as_a_new_job_with_its_submission() -> None:
    t = table()
    t.submit(OWNER, F, items("c-3"), 0.0, label="nightly", max_runtime=9.0, priority=2)
    failed(t, 10, "c-3", 1.0)
    assert t.retry_refused("c-3") == ""
    assert t.jobs["c-3"].args == b""  # the job itself let go of it: the table keeps it
    new, out = t.retry("c-3", 2.0)
    assert new == "c-3-r1"
    j = t.jobs["c-3-r1"]
    assert out == [Dispatch(10, F, False, [j])]
    assert (j.args, j.owner, j.label, j.max_runtime, j.priority, j.retry_of, j.submitted) == (
        b"args-c-3", OWNER, "nightly", 9.0, 2, "c-3", 2.0)  # fmt: skip
    assert t.jobs["c-3"].state == ERROR  # the failed record stays as it was
    out = t.worker_ran(10, (ran("c-3-r1"),), 3.0)
    assert out == [Deliver(OWNER, [done("c-3-r1")])]
    assert t.retry_refused("c-3-r1") == "job c-3-r1 did not fail (it is done)"
    # a retry of a retry counts on from the first job; taken numbers are skipped
    new, _ = t.retry("c-3", 4.0)
    assert new == "c-3-r2"
    assert retry_base("c-3-r2") == ("c-3", 2) and retry_base("c-3") == ("c-3", 0)


def test_a_killed_job_can_be_retried_and_a_done_or_unknown_one_cannot() -> None:
    t = table()
    t.submit(OWNER, F, items("k-1", "d-1"), 0.0)
    t.kill(("k-1",), 1.0)
    assert t.retry("k-1", 2.0)[0] == "k-1-r1"
    t.worker_ready(10, 3.0)
    t.worker_ran(10, (ran("d-1"), ran("k-1-r1")), 4.0)
    with pytest.raises(RetryRefused, match=r"^job d-1 did not fail \(it is done\)$"):
        t.retry("d-1", 5.0)
    assert t.retry_refused("nosuch-1") == "node ws-07 holds no job nosuch-1"
    t.submit(OWNER, Func(F.fhash, F.blob, F.name, env="venv-1"), items("v-1"), 5.0)
    t.kill(("v-1",), 5.0)
    assert t.retry_refused("v-1") == (
        "job v-1 ran in a job environment (_env): submit it again from a script"
    )
    t.drain()
    t.submit(OWNER, F, items("x-1"), 6.0)  # handed back: not kept here
    assert t.retry_refused("k-1") == "node ws-07 is leaving"


def test_failed_submissions_past_the_budget_drop_the_oldest_first() -> None:
    t = table()
    each = len(b"args-e-1") + RETAINED_OVERHEAD  # a function's blob counts once
    t.retained.budget_bytes = len(F.blob) + 2 * each
    t.submit(OWNER, F, items("e-1", "e-2", "e-3"), 0.0)
    t.kill(("e-1", "e-2", "e-3"), 1.0)
    assert list(t.retained) == ["e-2", "e-3"]
    assert t.retained.bytes == len(F.blob) + 2 * each
    assert t.retry_refused("e-1") == (
        "node ws-07 no longer keeps job e-1's function and arguments (it keeps the latest "
        f"failures' up to {t.retained.budget_bytes} bytes)"
    )
    # a submission bigger than the whole budget is not kept, and drops nothing
    t.submit(OWNER, F, (("big-1", b"x" * 1000),), 2.0)
    t.kill(("big-1",), 3.0)
    assert list(t.retained) == ["e-2", "e-3"]
    # another function's failure pushes out the oldest, and its blob counts too
    t.submit(OWNER, G, items("g-1"), 4.0)
    t.kill(("g-1",), 4.0)
    assert list(t.retained) == ["g-1"]
    assert t.retained.bytes == len(G.blob) + each
    # a job forgotten by the table is forgotten here too
    t.tick(4.0 + t.unclaimed_ttl_s)
    assert not t.retained and t.retained.bytes == 0 and t.retained.functions == 0
