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
import functools
import os
import threading
import weakref
from collections.abc import Callable, Coroutine, Generator, Iterable, Iterator, Sequence
from typing import Any, TypeVar, overload

from mesh.client._async import AsyncClient
from mesh.client._files import Files
from mesh.client._handle import Job, register_owner
from mesh.client._ledger import JobEntry, count_items
from mesh.client._lifecycle import ClientState
from mesh.client._local import LocalMesh
from mesh.client._progress import Progress, make, track, watch
from mesh.client._records import EnvInfo, EnvRebuild, JobInfo, NodeInfo
from mesh.client._waiting import (
    Lookup,
    Plan,
    as_ids,
    in_thread,
    iresult_plan,
    windows_plan,
)

from mesh._protocol import DONE
from mesh.errors import ConnectionClosed

__all__ = ["Client"]

T = TypeVar("T")
_clients: weakref.WeakSet[Client] = weakref.WeakSet()


class LoopThread:
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
        self._thread = LoopThread("mesh-client")
        self._state = ClientState.STARTING
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
            self._state = ClientState.CLOSED
            self._thread.stop()
            if _local is not None:
                _local.close()
            raise
        self._state = ClientState.RUNNING
        # what the client knows of its jobs: shared with the loop thread
        self.ledger = self._async.ledger
        register_owner(self.ledger.tag, self._await_job)  # `await job` waits here
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
        return self._state.closed

    @property
    def state(self) -> ClientState:
        """Where the client is in its life: STARTING (in its constructor), RUNNING,
        CLOSING, CLOSED."""
        return self._state

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Disconnect; stop the local mesh if this client started one."""
        if self._state.closed:
            return
        self._state = ClientState.CLOSING
        if self._thread.pid != os.getpid():
            self._state = ClientState.CLOSED
            return  # a forked child's copy: the loop, links and local mesh are the parent's
        try:
            self._thread.run(self._async.close(), timeout=5.0)
        except Exception:
            pass
        self._thread.stop()
        if self._local is not None:
            self._local.close()
        self._state = ClientState.CLOSED

    # ---- submitting ----

    def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Job[T]:
        """Run ``fn(*args, **kwargs)`` on the mesh; return its job id at once."""
        self._check_open("call")  # before prepare(), whose lock a parent's thread may hold
        func, (jid,) = self.ledger.prepare(fn, [args], kwargs)
        self.ledger.submit(func)  # a loop of calls wakes the loop thread once per batch
        return jid

    def map(
        self, fn: Callable[..., T], /, *sequences: Iterable[Any], **kwargs: Any
    ) -> list[Job[T]]:
        """Like builtin ``map``, one job per item; return the list of job ids at once."""
        if not sequences:
            raise TypeError("map() needs at least one sequence")
        self._check_open("map")
        func, jids = self.ledger.prepare(
            fn, zip(*sequences, strict=False), kwargs, count_items(sequences)
        )
        self.ledger.submit(func)
        return jids

    # ---- waiting ----

    def _check_process(self) -> None:
        if self._thread.pid != os.getpid():
            raise _forked(self._thread.pid)

    def _check_open(self, what: str) -> None:
        self._check_process()
        if self._state.closed:
            raise self._state.refuse(what)

    def _jobs(self, ids: Sequence[str]) -> list[JobEntry]:
        self._check_process()  # else waiting on jobs the parent's thread would finish
        found = self.ledger.known(ids)
        if found is None:  # ids from another process: the loop thread asks the nodes
            return self._thread.run(self.ledger.lookup(ids))
        return found

    def _wait(
        self, plan: Plan, ids: list[str], bar: Progress | None = None,
        kill_on_cancel: bool = False, reply: Any = None,
    ) -> Iterator[list[JobEntry]]:  # fmt: skip
        """Carry out a waiting plan on this thread (client/_waiting.py): its final windows."""
        on_final = bar.job_done if bar is not None else None
        return in_thread(plan, self.ledger, self._jobs, ids, on_final, kill_on_cancel, reply)

    @overload  # a Job is also a Sequence[str]: the first match wins
    def result(  # type: ignore[overload-overlap]
        self, jids: Job[T], timeout: float | None = None, progress: bool | None = None, *,
        kill_on_cancel: bool = False,
    ) -> T: ...  # fmt: skip
    @overload
    def result(
        self, jids: str, timeout: float | None = None, progress: bool | None = None, *,
        kill_on_cancel: bool = False,
    ) -> Any: ...  # fmt: skip
    @overload
    def result(
        self, jids: Sequence[Job[T]], timeout: float | None = None, progress: bool | None = None,
        *, kill_on_cancel: bool = False,
    ) -> list[T]: ...  # fmt: skip
    @overload
    def result(
        self, jids: Sequence[str], timeout: float | None = None, progress: bool | None = None, *,
        kill_on_cancel: bool = False,
    ) -> list[Any]: ...  # fmt: skip

    def result(self, jids: str | Sequence[str], timeout: float | None = None,
               progress: bool | None = None, *, kill_on_cancel: bool = False) -> Any:  # fmt: skip
        """The result of one job, or the list of results of many, in order.

        Raises the first failed job's exception (with its remote traceback as
        ``__cause__``) or :class:`MeshTimeout` (a ``TimeoutError``). ``progress``:
        a bar on stderr (True), none (False), or one for waits past 2 s (None); only
        ever on a terminal. A Ctrl-C stops the wait and leaves the jobs running, unless
        ``kill_on_cancel``: then the jobs not finished yet are killed.
        """
        single = isinstance(jids, str)
        ids = as_ids(jids)
        value = self.ledger.value
        values: list[Any] = []
        with watch(len(ids), progress, single=single) as bar:
            plan = windows_plan(self.ledger, ids, timeout)
            for jobs in self._wait(plan, ids, bar, kill_on_cancel):
                values.extend(value(j) for j in jobs)
        return values[0] if single else values

    def join(self, jids: str | Sequence[str], timeout: float | None = None,
             ignore_errors: bool = False, progress: bool | None = None, *,
             kill_on_cancel: bool = False) -> None:  # fmt: skip
        """Wait for jobs to finish; raise the first failure unless ``ignore_errors``.
        ``progress`` and ``kill_on_cancel`` as for :meth:`result`."""
        ids = as_ids(jids)
        with watch(len(ids), progress, single=isinstance(jids, str)) as bar:
            plan = windows_plan(self.ledger, ids, timeout)
            for jobs in self._wait(plan, ids, bar, kill_on_cancel):
                for j in jobs:
                    if j.state != DONE and not ignore_errors:
                        self.ledger.value(j)

    @overload
    def iresult(
        self, jids: Sequence[Job[T]], timeout: float | None = None, ordered: bool = True,
        progress: bool | None = None, *, kill_on_cancel: bool = False,
    ) -> Iterator[T]: ...  # fmt: skip
    @overload
    def iresult(
        self, jids: Sequence[str], timeout: float | None = None, ordered: bool = True,
        progress: bool | None = None, *, kill_on_cancel: bool = False,
    ) -> Iterator[Any]: ...  # fmt: skip

    def iresult(self, jids: Sequence[str], timeout: float | None = None,
                ordered: bool = True, progress: bool | None = None, *,
                kill_on_cancel: bool = False) -> Iterator[Any]:  # fmt: skip
        """Yield results as they finish: in submission order, or in completion order.

        ``progress`` and ``kill_on_cancel`` as for :meth:`result`: the bar moves while
        the results are iterated. Jobs are watched WAIT_WINDOW to 2 x WAIT_WINDOW at a
        time, in order: for more jobs than that, "completion order" is that order within
        the jobs watched.
        """
        ids = as_ids(jids)
        plan = iresult_plan(ids, timeout, ordered)
        step = next(plan, None)  # its first Lookup: unknown ids fail here, not when iterated
        first = self._jobs(step.ids) if isinstance(step, Lookup) else None
        bar = make(len(ids), progress)
        if bar is not None and first is not None:
            self.ledger.add_callback(first, bar.job_done)
        value = self.ledger.value
        windows = self._wait(plan, ids, bar, kill_on_cancel, first)
        return track(bar, (value(job) for (job,) in windows))

    # ---- asking ----

    def status(self, jids: str | Sequence[str]) -> str | list[str]:
        return self._thread.run(self._async.status(jids))

    def kill(self, jids: str | Sequence[str], timeout: float = 10.0) -> None:
        """Stop queued or running jobs (a running job's worker is terminated); wait until
        they stop, ``timeout`` seconds at most."""
        self._thread.run(self._async.kill(jids, timeout))

    def _await_job(self, job: str) -> Generator[Any, None, Any]:
        """``await job`` in the caller's event loop, waiting on this client's loop thread."""
        self._check_open(f"wait for job {job}")
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


@atexit.register
def _close_all() -> None:
    for c in list(_clients):
        c.close()
