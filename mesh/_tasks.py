"""One owner for a component's background tasks.

A bare ``loop.create_task`` can be garbage-collected mid-run ("Task was destroyed but
it is pending"), loses its exception ("Task exception was never retrieved") and
outlives its component's ``close()``. A :class:`TaskSet` keeps a strong reference
to each task until it ends, logs every failure with the task's name, and on
:meth:`close` cancels what is left and awaits it (Trio's nursery, minus the
cancel-all-on-first-error: one failed request must not stop a node).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

__all__ = ["TaskSet"]

_T = TypeVar("_T")


class TaskSet:
    """Background tasks of one component (``owner`` names it in log lines).

    A task that raises is logged at ERROR with its name and traceback, except the
    exception types in ``quiet`` (expected endings, such as a peer going away
    mid-answer), logged at INFO. Cancellation is never logged.
    """

    def __init__(
        self,
        owner: str,
        logger: logging.Logger,
        *,
        quiet: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.owner = owner
        self._log = logger
        self._quiet = quiet
        self._tasks: set[asyncio.Task[Any]] = set()
        self.closed = False

    def spawn(self, coro: Coroutine[Any, Any, _T], name: str = "") -> asyncio.Task[_T]:
        """Run ``coro`` as a task of this set, named ``"<owner>: <name>"`` (by default
        the coroutine function's name). Once :meth:`close` began, the task is cancelled
        before it runs a line."""
        name = name or getattr(coro, "__qualname__", "task")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.owner}: {name}")
        self._tasks.add(task)
        task.add_done_callback(self._done)
        if self.closed:
            task.cancel()
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()  # retrieved here, so asyncio never warns of it
        if exc is None:
            return
        if isinstance(exc, self._quiet):
            self._log.info("%s ended: %s", task.get_name(), exc)
        else:
            self._log.error("%s failed", task.get_name(), exc_info=exc)

    def __len__(self) -> int:
        return len(self._tasks)

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(set(self._tasks))

    async def wait(self, timeout_s: float | None = None) -> set[asyncio.Task[Any]]:
        """Wait (without cancelling) for the tasks running now to end, at most
        ``timeout_s``; returns those still running."""
        if not self._tasks:
            return set()
        _, pending = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        return pending

    def cancel(self) -> None:
        """Cancel every task now; :meth:`close` also awaits them."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self, timeout_s: float | None = None) -> None:
        """Start no more tasks, cancel the running ones and await their end (a task may
        swallow its cancellation and finish what it was doing: it is awaited too),
        waiting at most ``timeout_s`` if given."""
        self.closed = True
        self.cancel()
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=timeout_s)
