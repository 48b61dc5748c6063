"""mesh._tasks.TaskSet: every background task has an owner that logs its failure by
name, and close() cancels and awaits what is left (real asyncio, no mocks)."""

from __future__ import annotations

import asyncio
import gc
import logging
import warnings

import pytest

from mesh._tasks import TaskSet

log = logging.getLogger("test.tasks")


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_a_failing_task_is_logged_at_error_with_its_name(caplog: pytest.LogCaptureFixture) -> None:
    async def boom() -> None:
        raise ValueError("no luck")

    async def main() -> None:
        tasks = TaskSet("files", log)
        task = tasks.spawn(boom(), "download 'a.txt'")
        assert task.get_name() == "files: download 'a.txt'"
        await asyncio.wait([task])
        assert len(tasks) == 0

    with caplog.at_level(logging.INFO, logger="test.tasks"):
        run(main())
    (record,) = caplog.records
    assert (record.levelno, record.getMessage()) == (
        logging.ERROR, "files: download 'a.txt' failed")  # fmt: skip
    assert record.exc_info is not None and str(record.exc_info[1]) == "no luck"


def test_the_default_name_is_the_coroutine_function(caplog: pytest.LogCaptureFixture) -> None:
    async def reconnect() -> None:
        raise OSError("reset")

    async def main() -> None:
        tasks = TaskSet("client", log)
        await asyncio.wait([tasks.spawn(reconnect())])

    with caplog.at_level(logging.INFO, logger="test.tasks"):
        run(main())
    assert [r.getMessage() for r in caplog.records] == [
        "client: test_the_default_name_is_the_coroutine_function.<locals>.reconnect failed"
    ]


def test_quiet_failures_are_info_and_success_or_cancel_log_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def gone() -> None:
        raise ConnectionResetError("peer left")

    async def fine() -> int:
        return 3

    async def forever() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        tasks = TaskSet("files", log, quiet=(ConnectionError,))
        done = tasks.spawn(fine(), "fine")
        quiet = tasks.spawn(gone(), "request 7")
        slow = tasks.spawn(forever(), "forever")
        await asyncio.wait([done, quiet])
        assert done.result() == 3
        await tasks.close()
        assert slow.cancelled()

    with caplog.at_level(logging.DEBUG, logger="test.tasks"):
        run(main())
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.INFO, "files: request 7 ended: peer left")
    ]


def test_close_cancels_and_awaits_even_a_task_that_finishes_its_cleanup() -> None:
    steps: list[str] = []

    async def careful() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            steps.append("cancelled")
            await asyncio.sleep(0)  # cleanup that itself awaits
            steps.append("cleaned up")
            raise

    async def main() -> None:
        tasks = TaskSet("node", log)
        tasks.spawn(careful(), "careful")
        tasks.spawn(careful(), "careful too")
        await asyncio.sleep(0)  # both are waiting now
        await tasks.close()
        assert steps == ["cancelled", "cancelled", "cleaned up", "cleaned up"]
        assert len(tasks) == 0

    run(main())


def test_a_task_spawned_after_close_never_runs() -> None:
    ran: list[int] = []

    async def job() -> None:
        ran.append(1)

    async def main() -> None:
        tasks = TaskSet("client", log)
        await tasks.close()
        late = tasks.spawn(job(), "late")
        await asyncio.wait([late])
        assert late.cancelled() and ran == []

    run(main())


def test_wait_returns_the_tasks_still_running_without_cancelling_them() -> None:
    async def main() -> None:
        tasks = TaskSet("pool", log)
        gate = asyncio.Event()

        async def worker() -> None:
            await gate.wait()

        w = tasks.spawn(worker(), "worker 1")
        assert await tasks.wait(0.0) == {w}
        assert not w.cancelled()
        gate.set()
        assert await tasks.wait() == set()
        assert w.done() and not w.cancelled()

    run(main())


def test_no_task_warnings_when_the_set_is_dropped_after_close() -> None:
    """Neither "Task was destroyed but it is pending" nor "exception was never retrieved"."""

    async def fails() -> None:
        raise RuntimeError("x")

    async def main() -> None:
        tasks = TaskSet("t", log)
        tasks.spawn(fails(), "fails")
        tasks.spawn(asyncio.sleep(3600), "sleeps")
        await asyncio.sleep(0)
        await tasks.close()

    errors: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda r: errors.append(r.getMessage())  # type: ignore[method-assign]
    asyncio_log = logging.getLogger("asyncio")
    asyncio_log.addHandler(handler)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(main())
            gc.collect()
    finally:
        asyncio_log.removeHandler(handler)
    assert errors == []
