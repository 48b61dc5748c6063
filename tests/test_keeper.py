"""The node's job persistence (node/_persist.py) on a real JobStore: what is saved
loads back field for field, big results are written off the loop and then served
from their file, and forgotten jobs are gone."""

from __future__ import annotations

from pathlib import Path

from mesh.node._job_types import Func, Job
from mesh.node._persist import JobKeeper
from mesh.node._store import BLOB_MIN, JobStore

from mesh._protocol import DONE, ERROR, ErrorInfo
from mesh.errors import ErrorKind


def _job(jid: str, result: bytes, state: int = DONE, error: ErrorInfo | None = None) -> Job:
    return Job(jid, Func(b"h", b"blob", "f"), b"args", 3, 10.0, label="lbl", state=state,
               started=11.0, finished=12.5, cpu_s=1.25, stdout="out", stderr="err",
               result=result, error=error, attempts=2)  # fmt: skip


async def test_saved_jobs_load_back_and_forgotten_ones_do_not(tmp_path: Path) -> None:
    error = ErrorInfo(ErrorKind.RAISED, "ValueError", "bad", "tb")
    big = bytes(range(256)) * (BLOB_MIN // 256 + 1)
    keeper = JobKeeper(JobStore(tmp_path))
    try:
        keeper.save([_job("a", b"small"), _job("b", b"", ERROR, error), _job("c", big)])
        await keeper.close()  # waits for the big write, as a stopping node does
        keeper = JobKeeper(JobStore(tmp_path))
        loaded = {j.jid: j for j in keeper.load()}
        assert sorted(loaded) == ["a", "b", "c"]
        a = loaded["a"]
        assert (a.func.name, a.label, a.state, a.submitted, a.started, a.finished) == (
            "f",
            "lbl",
            DONE,
            10.0,
            11.0,
            12.5,
        )
        assert (a.cpu_s, a.stdout, a.stderr, a.result, a.attempts) == (
            1.25,
            "out",
            "err",
            b"small",
            2,
        )
        assert a.owner == -1 and a.args == b""  # nobody owns a job restored from disk
        assert loaded["b"].error == error
        assert bytes(loaded["c"].result) == big
        keeper.forget(["a", "c"])
    finally:
        await keeper.close()
    store = JobStore(tmp_path)
    try:
        assert [j.jid for j in JobKeeper(store).load()] == ["b"]
    finally:
        store.close()


async def test_a_big_result_is_then_served_from_its_file(tmp_path: Path) -> None:
    keeper = JobKeeper(JobStore(tmp_path))
    job = _job("big", b"x" * BLOB_MIN)
    try:
        keeper.save([job])
    finally:
        await keeper.close()
    assert not isinstance(job.result, bytes)  # the node's copy swapped for the file's map
    assert bytes(job.result) == b"x" * BLOB_MIN
