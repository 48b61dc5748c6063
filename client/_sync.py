"""The sync facade: an :class:`AsyncClient` on a background event-loop thread.

Scripts, notebooks and IPython call plain functions; the loop thread does the
networking. ``map`` pickles on the caller's thread and hands the jobs over; waiting
uses thread primitives set by the loop, so a Ctrl-C while waiting stops the wait.

A client belongs to the process that made it: a forked child has a copy of it whose
loop thread does not exist, so its calls raise at once instead of waiting forever,
and closing it there touches nothing of the parent's (``clone()`` makes the child one).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Sequence
from typing import Any, Generic, TypeVar, overload

from mesh.client import _async as _async_mod
from mesh.client import _progress
from mesh.client._async import (
    AsyncClient,
    EnvInfo,
    EnvRebuild,
    JobInfo,
    NodeInfo,
    _count,
    _Func,
    _Job,
    _Picker,
)
from mesh.client._files import Files
from mesh.client._handle import Job, register_owner
from mesh.client._local import LocalMesh

from mesh._protocol import DONE
from mesh.errors import ConnectionClosed, MeshTimeout

__all__ = ["Client"]

T = TypeVar("T")
_clients: weakref.WeakSet[Client] = weakref.WeakSet()


class _LoopThread:
    """An event loop running forever on a daemon thread."""

    def __init__(self, name: str) -> None:
        self.pid = os.getpid()  # after a fork the thread exists in this process only
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        if self.pid != os.getpid():
            coro.close()
            raise _forked(self.pid)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
        if threading.current_thread() is not self.thread:
            self.thread.join(5.0)


class _Gathered(Generic[T]):
    """Items handed to the loop thread from any thread, in batches: the first item since
    the last batch schedules ``flush(batch)`` on the loop; the ones added before it runs
    ride along, so a burst wakes the loop thread once."""

    def __init__(self, loop: asyncio.AbstractEventLoop, flush: Callable[[list[T]], None]) -> None:
        self._loop, self._flush = loop, flush
        self._lock = threading.Lock()
        self._items: list[T] = []

    def add(self, items: Iterable[T]) -> None:
        """Any thread, never blocks. RuntimeError if the loop has closed."""
        with self._lock:
            first = not self._items
            self._items.extend(items)
            if not self._items:
                return
        if first:
            self._loop.call_soon_threadsafe(self._take)

    def _take(self) -> None:
        with self._lock:
            items, self._items = self._items, []
        self._flush(items)


class Client:
    """A mesh client for ordinary code. ``with mesh.Client(peers=[...]) as c: c.map(...)``."""

    def __init__(
        self,
        peers: str | Iterable[str] | None = None,
        secret: str | bytes | None = None,
        *,
        name: str = "",
        connect_timeout_s: float = 5.0,
        no_nodes_timeout_s: float = 30.0,
        discovery_window_s: float = 1.5,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 5.0,
        _local: LocalMesh | None = None,
    ) -> None:
        self._local = _local
        self._borrowed_local = False  # a clone() of a local mesh's client
        # What clone() connects with: the same nodes, secret and settings.
        self._twin = functools.partial(
            Client, peers, secret, name=name, connect_timeout_s=connect_timeout_s,
            no_nodes_timeout_s=no_nodes_timeout_s, discovery_window_s=discovery_window_s,
            heartbeat_s=heartbeat_s, dead_after_s=dead_after_s,
        )  # fmt: skip
        self._thread = _LoopThread("mesh-client")
        self._closed = False
        # Calls and maps prepared on callers' threads, and jobs to kill (a future's
        # cancel), on their way to the loop thread.
        self._outbox = _Gathered[_Func](self._thread.loop, self._enqueue)
        self._kills = _Gathered[str](self._thread.loop, self._flush_kills)
        try:
            self._async = AsyncClient(
                peers,
                secret,
                name=name,
                connect_timeout_s=connect_timeout_s,
                no_nodes_timeout_s=no_nodes_timeout_s,
                discovery_window_s=discovery_window_s,
                heartbeat_s=heartbeat_s,
                dead_after_s=dead_after_s,
            )
            self._thread.run(self._async.start())
        except BaseException:
            self._thread.stop()
            if _local is not None:
                _local.close()
            raise
        register_owner(self._async._tag, self)  # `await job` waits on our loop thread
        self.files = Files(self._async.files, self._thread.run)  # mesh.files
        _clients.add(self)

    @classmethod
    def local(cls, nodes: int = 2, workers: int | None = None) -> Client:
        """Start an embedded mesh of ``nodes`` real node processes on 127.0.0.1 and connect."""
        mesh = LocalMesh(nodes, workers)
        addresses = mesh.start()
        return cls(addresses, mesh.secret, _local=mesh)

    def clone(self) -> Client:
        """A new client on the same nodes, with the same secret and settings.

        It owns no local mesh: closing it leaves this client's nodes running. A forked
        child uses one (the module-level calls make theirs by themselves)."""
        twin = self._twin()
        twin._borrowed_local = self.is_local
        return twin

    @property
    def is_local(self) -> bool:
        return self._local is not None or self._borrowed_local

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; stop the local mesh if this client started one."""
        if self._closed:
            return
        self._closed = True
        if self._thread.pid != os.getpid():
            return  # a forked child's copy: the loop, links and local mesh are the parent's
        try:
            self._thread.run(self._async.close(), timeout=5.0)
        except Exception:
            pass
        self._thread.stop()
        if self._local is not None:
            self._local.close()

    # ---- submitting ----

    def call(self, func: Callable[..., T], /, *args: Any, **kwargs: Any) -> Job[T]:
        """Run ``func(*args, **kwargs)`` on the mesh; return its job id at once."""
        self._check_process()  # before _prepare, whose lock a parent's thread may hold
        prepared, (jid,) = self._async._prepare(func, [args], kwargs)
        self._send(prepared)
        return jid

    def map(
        self, func: Callable[..., T], /, *sequences: Iterable[Any], **kwargs: Any
    ) -> list[Job[T]]:
        """Like builtin ``map``, one job per item; return the list of job ids at once."""
        if not sequences:
            raise TypeError("map() needs at least one sequence")
        self._check_process()
        prepared, jids = self._async._prepare(
            func, zip(*sequences, strict=False), kwargs, _count(sequences)
        )
        self._send(prepared)
        return jids

    def _send(self, func: _Func) -> None:
        """Hand a call or map prepared on this thread to the loop thread, which places it.

        Calls made before the loop thread gets to them go in one batch: a loop of calls
        wakes the loop thread once per batch, not once per call, and its jobs of one
        function share Submits."""
        self._check_process()
        self._outbox.add((func,))

    def _enqueue(self, funcs: list[_Func]) -> None:
        self._async._enqueue_many(funcs)

    # ---- waiting ----

    def _check_process(self) -> None:
        if self._thread.pid != os.getpid():
            raise _forked(self._thread.pid)

    def _jobs(self, ids: Sequence[str]) -> list[_Job]:
        self._check_process()  # else waiting on jobs the parent's thread would finish
        find = self._async._find
        jobs = [find(j) for j in ids]
        if any(j is None for j in jobs):  # ids from another process: ask the nodes

            async def adopt() -> list[_Job]:
                found, adopted = self._async._lookup(ids)
                await self._async._adopt(adopted)
                return found

            return self._thread.run(adopt())
        return jobs  # type: ignore[return-value]

    def _windows(
        self, ids: list[str], timeout: float | None, bar: _progress.Progress | None = None
    ) -> Iterator[list[_Job]]:
        """The jobs ``ids``, WAIT_WINDOW at a time, each window once all of it is final
        (so a wait on a million jobs never gives them all an object at once)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for start in range(0, len(ids), _async_mod.WAIT_WINDOW):
            jobs = self._jobs(ids[start : start + _async_mod.WAIT_WINDOW])
            if bar is not None:
                self._async._add_callback(jobs, bar.job_done)
            self._wait(jobs, deadline, timeout, ids, start + _async_mod.WAIT_WINDOW)
            yield jobs

    def _wait(self, jobs: list[_Job], deadline: float | None, timeout: float | None,
              ids: list[str], later: int) -> None:  # fmt: skip
        """Wait until ``jobs`` (``ids`` up to ``later``) are final."""
        pending = [j for j in jobs if not j.final]
        if not pending:
            return
        done = threading.Event()
        left = [len(pending)]

        def on_final(_: _Job) -> None:
            left[0] -= 1
            if left[0] == 0:
                done.set()

        self._async._add_callback(pending, on_final)
        try:
            finished = done.wait(
                None if deadline is None else max(0.0, deadline - time.monotonic())
            )
        except KeyboardInterrupt:
            raise _interrupted(self._async._unfinished(ids)) from None
        if not finished:
            n = sum(1 for j in pending if not j.final) + len(self._async._unfinished(ids[later:]))
            raise MeshTimeout(f"{n} of {len(ids)} jobs not finished after {timeout} s")

    @overload  # a Job is also a Sequence[str]: the first match wins
    def result(  # type: ignore[overload-overlap]
        self, jids: Job[T], timeout: float | None = None, progress: bool | None = None
    ) -> T: ...
    @overload
    def result(
        self, jids: str, timeout: float | None = None, progress: bool | None = None
    ) -> Any: ...
    @overload
    def result(
        self, jids: Sequence[Job[T]], timeout: float | None = None, progress: bool | None = None
    ) -> list[T]: ...
    @overload
    def result(
        self, jids: Sequence[str], timeout: float | None = None, progress: bool | None = None
    ) -> list[Any]: ...

    def result(self, jids: str | Sequence[str], timeout: float | None = None,
               progress: bool | None = None) -> Any:  # fmt: skip
        """The result of one job, or the list of results of many, in order.

        Raises the first failed job's exception (with its remote traceback as
        ``__cause__``) or :class:`MeshTimeout` (a ``TimeoutError``). ``progress``:
        a bar on stderr (True), none (False), or one for waits past 2 s (None); only
        ever on a terminal.
        """
        single = isinstance(jids, str)
        ids = [jids] if single else list(jids)
        value = self._async._value
        values: list[Any] = []
        with _progress.watch(len(ids), progress, single=single) as bar:
            for jobs in self._windows(ids, timeout, bar):  # type: ignore[arg-type]
                values.extend(value(j) for j in jobs)
        return values[0] if single else values

    def join(self, jids: str | Sequence[str], timeout: float | None = None,
             ignore_errors: bool = False) -> None:  # fmt: skip
        """Wait for jobs to finish; raise the first failure unless ``ignore_errors``."""
        for jobs in self._windows([jids] if isinstance(jids, str) else list(jids), timeout):
            for j in jobs:
                if j.state != DONE and not ignore_errors:
                    self._async._value(j)

    @overload
    def iresult(
        self, jids: Sequence[Job[T]], timeout: float | None = None, ordered: bool = True,
        progress: bool | None = None,
    ) -> Iterator[T]: ...  # fmt: skip
    @overload
    def iresult(
        self, jids: Sequence[str], timeout: float | None = None, ordered: bool = True,
        progress: bool | None = None,
    ) -> Iterator[Any]: ...  # fmt: skip

    def iresult(self, jids: Sequence[str], timeout: float | None = None,
                ordered: bool = True, progress: bool | None = None) -> Iterator[Any]:  # fmt: skip
        """Yield results as they finish: in submission order, or in completion order.

        ``progress`` as for :meth:`result`: the bar moves while the results are iterated.
        Jobs are watched WAIT_WINDOW to 2 x WAIT_WINDOW at a time, in order: for more
        jobs than that, "completion order" is that order within the jobs watched.
        """
        ids = [jids] if isinstance(jids, str) else list(jids)
        # Unknown ids fail here, not when the results are iterated.
        first = self._jobs(ids[: _async_mod.WAIT_WINDOW])
        bar = _progress.make(len(ids), progress)
        return _progress.track(bar, self._iresult(ids, first, timeout, ordered, bar))

    def _iresult(self, ids: list[str], first: list[_Job], timeout: float | None, ordered: bool,
                 bar: _progress.Progress | None) -> Iterator[Any]:  # fmt: skip
        deadline = None if timeout is None else time.monotonic() + timeout
        value = self._async._value
        picker = _Picker(ids, ordered)
        q: queue.SimpleQueue[_Job] = queue.SimpleQueue()
        looked_up: list[_Job] | None = first  # the first window, looked up by iresult()
        while picker.more:
            if window := picker.to_watch():
                jobs = looked_up if looked_up is not None else self._jobs(window)
                looked_up = None
                picker.watch(jobs)
                if bar is not None:
                    self._async._add_callback(jobs, bar.job_done)
                self._async._add_callback(jobs, q.put)
            while (job := picker.pick()) is None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    picker.arrived(q.get(timeout=left))
                except queue.Empty:
                    raise MeshTimeout(f"iresult: jobs not finished after {timeout} s") from None
                except KeyboardInterrupt:
                    raise _interrupted(self._async._unfinished(ids)) from None
            yield value(job)

    # ---- asking ----

    def status(self, jids: str | Sequence[str]) -> str | list[str]:
        return self._thread.run(self._async.status(jids))

    def kill(self, jids: str | Sequence[str]) -> None:
        self._thread.run(self._async.kill(jids))

    def _kill_soon(self, jids: Sequence[str]) -> None:
        """Any thread, never blocks: have these jobs killed (a future's ``cancel``).

        Ids gathered before the loop thread gets to them go in one kill."""
        if self._closed or self._thread.pid != os.getpid():
            return
        with contextlib.suppress(RuntimeError):  # the loop has just closed: nothing to kill with
            self._kills.add(jids)

    def _flush_kills(self, ids: list[str]) -> None:
        if not self._async.closed:
            self._async._spawn(self._async.kill(ids))  # owned: the client's close awaits it

    def _await_job(self, job: str) -> Generator[Any, None, Any]:
        """``await job`` in the caller's event loop, waiting on this client's loop thread."""
        if self._closed:
            raise ConnectionClosed(f"cannot wait for job {job}: its client is closed")
        self._check_process()
        done = asyncio.run_coroutine_threadsafe(self._async.result(job), self._thread.loop)
        return asyncio.wrap_future(done).__await__()

    def info(self, jids: str | Sequence[str]) -> JobInfo | list[JobInfo]:
        return self._thread.run(self._async.info(jids))

    def nodes(self) -> list[NodeInfo]:
        return self._async.nodes()

    def env_info(self) -> list[EnvInfo]:
        """The job environments (``_env``) of every reachable node (see AsyncClient)."""
        return self._thread.run(self._async.env_info())

    def rebuild_env(self, *what: str) -> list[EnvRebuild]:
        """Drop the environments ``what`` names, so their next job builds them again."""
        return self._thread.run(self._async.rebuild_env(*what))


def _forked(parent: int) -> ConnectionClosed:
    return ConnectionClosed(
        f"this mesh.Client was made in process {parent}; process {os.getpid()} is a fork of "
        "it, where the client's connections and loop thread do not exist. Make a client in "
        "the child: client.clone() (same nodes and secret) or mesh.Client(...); the "
        "module-level mesh.call/map/result reconnect by themselves after a fork"
    )


def _interrupted(left: list[str]) -> KeyboardInterrupt:
    """Ctrl-C while waiting: say that the jobs ``left`` go on, and how to stop them."""
    if not left:
        return KeyboardInterrupt("stopped waiting; every job had finished")
    some = " ".join(left[:3]) + (" ..." if len(left) > 3 else "")
    return KeyboardInterrupt(
        f"stopped waiting; {len(left)} job{'s' if len(left) > 1 else ''} still running on the "
        f"mesh ({some}). To stop {'them' if len(left) > 1 else 'it'}: mesh.kill(jids) (or "
        f"client.kill(jids)) with the ids you waited on, or `mesh kill {some}` in a shell"
    )


@atexit.register
def _close_all() -> None:
    for c in list(_clients):
        c.close()
