"""Waiting for jobs, written once for both clients: ``result``, ``join``, ``iresult``,
``kill``'s wait, their timeouts, and what a stopped wait says.

A wait is a *plan*: a generator that yields steps (look these ids up, wait until these
jobs are final, wait for the next final one, here is a window of final jobs) and gets
the answers back. It holds the deadline, the windows, the order of ``iresult`` and the
error messages. The sync client carries a plan out on the caller's thread with thread
primitives (so a Ctrl-C stops the wait), the async client in its event loop; both only
answer steps. Jobs are looked at WAIT_WINDOW at a time, so waiting on a map of a million
jobs never gives them all an entry at once.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections import deque
from collections.abc import AsyncGenerator, Callable, Generator, Iterator, Sequence
from typing import Any, NamedTuple

from mesh.client._ledger import JobEntry, Ledger

from mesh.errors import MeshTimeout

__all__ = [
    "WAIT_WINDOW",
    "AllFinal",
    "Countdown",
    "Deadline",
    "Lookup",
    "NextFinal",
    "Picker",
    "Plan",
    "Ready",
    "Step",
    "Watch",
    "as_ids",
    "interrupted",
    "in_loop",
    "in_thread",
    "iresult_plan",
    "windows_plan",
]

# result/iresult/join look at this many jobs at a time (an entry each)
WAIT_WINDOW = 4096


class Lookup(NamedTuple):
    """Answer with the ledger's entries of ``ids`` (asking nodes about foreign ones)."""

    ids: list[str]


class AllFinal(NamedTuple):
    """Answer True once every one of ``jobs`` is final, False if ``left_s`` runs out first."""

    jobs: list[JobEntry]
    left_s: float | None


class Watch(NamedTuple):
    """Queue each of ``jobs`` as it becomes final, for the NextFinal steps to come."""

    jobs: list[JobEntry]


class NextFinal(NamedTuple):
    """Answer with the next job queued by Watch, or None if ``left_s`` runs out first."""

    left_s: float | None


class Ready(NamedTuple):
    """``jobs`` are final, in order: the waiter reads them (answer None)."""

    jobs: list[JobEntry]


Step = Lookup | AllFinal | Watch | NextFinal | Ready
Plan = Generator[Step, Any, None]


def as_ids(jids: str | Sequence[str]) -> list[str]:
    """One id or many, as a list."""
    return [jids] if isinstance(jids, str) else list(jids)


class Deadline:
    """``timeout_s`` from now (None: never), as the seconds left for each wait."""

    def __init__(self, timeout_s: float | None) -> None:
        self.timeout_s = timeout_s
        self._at = None if timeout_s is None else time.monotonic() + timeout_s

    def left_s(self) -> float | None:
        return None if self._at is None else max(0.0, self._at - time.monotonic())


class Countdown:
    """A callback for :meth:`Ledger.add_callback` that calls ``on_zero`` once the last of
    ``n`` jobs is final (on whichever thread finalised it)."""

    def __init__(self, n: int, on_zero: Callable[[], None]) -> None:
        self._left, self._on_zero = n, on_zero

    def __call__(self, _: JobEntry) -> None:
        self._left -= 1  # the ledger calls back under its lock: no race
        if self._left == 0:
            self._on_zero()


def windows_plan(ledger: Ledger, ids: list[str], timeout_s: float | None) -> Plan:
    """Wait for the jobs ``ids``, WAIT_WINDOW at a time, yielding each window Ready once
    all of it is final; MeshTimeout when ``timeout_s`` runs out first."""
    deadline = Deadline(timeout_s)
    for start in range(0, len(ids), WAIT_WINDOW):
        jobs = yield Lookup(ids[start : start + WAIT_WINDOW])
        pending = [j for j in jobs if not j.final]
        if pending and not (yield AllFinal(pending, deadline.left_s())):
            n = sum(1 for j in pending if not j.final)
            n += len(ledger.unfinished(ids[start + WAIT_WINDOW :]))
            raise MeshTimeout(f"{n} of {len(ids)} jobs not finished after {timeout_s} s")
        yield Ready(jobs)


def iresult_plan(ids: list[str], timeout_s: float | None, ordered: bool) -> Plan:
    """Yield each job Ready (alone) as it is final: in order, or in completion order.

    Jobs are watched WAIT_WINDOW to 2 x WAIT_WINDOW at a time, in order: for more jobs
    than that, "completion order" is that order within the jobs watched."""
    deadline = Deadline(timeout_s)
    picker = Picker(ids, ordered)
    while picker.more:
        if window := picker.to_watch():
            jobs = yield Lookup(window)
            picker.watch(jobs)
            yield Watch(jobs)
        while (job := picker.pick()) is None:
            came = yield NextFinal(deadline.left_s())
            if came is None:
                raise MeshTimeout(f"iresult: jobs not finished after {timeout_s} s")
            picker.arrived(came)
        yield Ready([job])


def in_thread(
    plan: Plan,
    ledger: Ledger,
    lookup: Callable[[list[str]], list[JobEntry]],
    ids: list[str],
    on_final: Callable[[JobEntry], None] | None = None,
    kill_on_cancel: bool = False,
    reply: Any = None,
) -> Iterator[list[JobEntry]]:
    """Carry out ``plan`` on the caller's thread (the sync client), yielding each window
    of final jobs: ``lookup`` answers Lookup, thread primitives the waits, ``on_final``
    (a progress bar) hears of each job looked up as it ends; ``reply`` answers the step
    the plan is at, if it was started. A Ctrl-C stops the wait, saying which of ``ids``
    go on (or are killed, with ``kill_on_cancel``)."""
    came: queue.SimpleQueue[JobEntry] | None = None  # made by Watch: result() never needs one
    try:
        while True:
            try:
                step = plan.send(reply)
            except StopIteration:
                return
            reply = None
            if isinstance(step, Lookup):
                reply = lookup(step.ids)
                if on_final is not None:
                    ledger.add_callback(reply, on_final)
            elif isinstance(step, AllFinal):
                # a bare lock, held until the last job ends: an Event is a Condition
                # and a lock more per wait, and a sequential call loop waits per call
                done = threading.Lock()
                done.acquire()
                ledger.add_callback(step.jobs, Countdown(len(step.jobs), done.release))
                left_s = step.left_s
                reply = done.acquire(timeout=-1 if left_s is None else left_s)
            elif isinstance(step, Watch):
                if came is None:
                    came = queue.SimpleQueue()
                ledger.add_callback(step.jobs, came.put)
            elif isinstance(step, NextFinal):
                if came is None:
                    came = queue.SimpleQueue()
                try:
                    reply = came.get(timeout=step.left_s)
                except queue.Empty:
                    reply = None
            else:
                assert isinstance(step, Ready)
                yield step.jobs
    except KeyboardInterrupt:
        left = ledger.unfinished(ids)
        if kill_on_cancel and left:
            ledger.kill_soon(left)
        raise interrupted(left, killed=kill_on_cancel) from None
    finally:
        plan.close()


async def in_loop(
    plan: Plan,
    ledger: Ledger,
    on_final: Callable[[JobEntry], None] | None = None,
    on_cancel: Callable[[], None] | None = None,
) -> AsyncGenerator[list[JobEntry], None]:
    """Carry out ``plan`` in the running event loop (the async client, whose loop thread
    finalises jobs), yielding each window of final jobs; ``on_final`` as for
    :func:`in_thread`. A cancelled task stops the wait after calling ``on_cancel``."""
    loop = asyncio.get_running_loop()
    came: asyncio.Queue[JobEntry] = asyncio.Queue()
    reply: Any = None
    try:
        while True:
            try:
                step = plan.send(reply)
            except StopIteration:
                return
            reply = None
            if isinstance(step, Lookup):
                reply = await ledger.lookup(step.ids)
                if on_final is not None:
                    ledger.add_callback(reply, on_final)
            elif isinstance(step, AllFinal):
                fut: asyncio.Future[None] = loop.create_future()
                ledger.add_callback(step.jobs, Countdown(len(step.jobs), _setter(fut)))
                try:
                    await asyncio.wait_for(asyncio.shield(fut), step.left_s)
                    reply = True
                except asyncio.TimeoutError:
                    reply = False
            elif isinstance(step, Watch):
                ledger.add_callback(step.jobs, came.put_nowait)
            elif isinstance(step, NextFinal):
                try:
                    reply = await asyncio.wait_for(came.get(), step.left_s)
                except asyncio.TimeoutError:
                    reply = None
            else:
                assert isinstance(step, Ready)
                yield step.jobs
    except asyncio.CancelledError:
        if on_cancel is not None:
            on_cancel()
        raise
    finally:
        plan.close()


def _setter(fut: asyncio.Future[None]) -> Callable[[], None]:
    """Resolve ``fut`` (once; on the loop thread, where the ledger calls back)."""

    def resolve() -> None:
        if not fut.done():
            fut.set_result(None)

    return resolve


class Picker:
    """``iresult``'s bookkeeping: which ids to watch next (WAIT_WINDOW to 2 x WAIT_WINDOW
    at a time, in order) and which job that came back to yield next (in order, or as
    they come)."""

    def __init__(self, ids: list[str], ordered: bool) -> None:
        self.ids, self.ordered = ids, ordered
        self.pos = 0  # ids[:pos] are watched
        self.outstanding = 0  # watched, not yielded yet
        self._watched: deque[JobEntry] = deque()  # ordered: the jobs to yield, in order
        self._ready: dict[str, int] = {}  # ordered: back, not yielded yet (by id)
        self._came: deque[JobEntry] = deque()  # in completion order: back, not yielded yet

    @property
    def more(self) -> bool:
        return self.pos < len(self.ids) or self.outstanding > 0

    def to_watch(self) -> list[str]:
        """The next window of ids to watch, or none while enough are watched."""
        if self.pos < len(self.ids) and self.outstanding < WAIT_WINDOW:
            return self.ids[self.pos : self.pos + WAIT_WINDOW]
        return []

    def watch(self, jobs: list[JobEntry]) -> None:
        self.pos += len(jobs)
        self.outstanding += len(jobs)
        if self.ordered:
            self._watched.extend(jobs)

    def arrived(self, job: JobEntry) -> None:
        """A watched job is final (its callback ran)."""
        if self.ordered:
            self._ready[job.jid] = self._ready.get(job.jid, 0) + 1
        else:
            self._came.append(job)

    def pick(self) -> JobEntry | None:
        """The job to yield now, or None: wait for one to arrive first."""
        if not self.ordered:
            job = self._came.popleft() if self._came else None
        elif self._watched and self._ready.get(jid := self._watched[0].jid):
            job = self._watched.popleft()
            if self._ready[jid] == 1:
                del self._ready[jid]
            else:
                self._ready[jid] -= 1
        else:
            job = None
        if job is not None:
            self.outstanding -= 1
        return job


def interrupted(left: list[str], killed: bool = False) -> KeyboardInterrupt:
    """Ctrl-C while waiting: say that the jobs ``left`` go on (or were ``killed``, with
    ``kill_on_cancel``), and how to stop them."""
    if not left:
        return KeyboardInterrupt("stopped waiting; every job had finished")
    some = " ".join(left[:3]) + (" ..." if len(left) > 3 else "")
    s = "s" if len(left) > 1 else ""
    if killed:
        return KeyboardInterrupt(f"stopped waiting; killing the {len(left)} job{s} left ({some})")
    return KeyboardInterrupt(
        f"stopped waiting; {len(left)} job{s} still running on the "
        f"mesh ({some}). To stop {'them' if len(left) > 1 else 'it'}: mesh.kill(jids) (or "
        f"client.kill(jids)) with the ids you waited on, or `mesh kill {some}` in a shell"
    )
