"""``mesh.Executor``: a :class:`concurrent.futures.Executor` whose calls run on the mesh.

Each ``submit`` is one mesh job and its future a :class:`MeshFuture` (a standard
``concurrent.futures.Future``, so ``wait``, ``as_completed`` and done-callbacks work).
Futures follow the standard's states: PENDING while the job waits, RUNNING once its
node has started it (the executor's Submits ask nodes for a Started message), then
FINISHED (a running job placed again, its node lost, stays RUNNING). As the standard
says, only a pending future can be cancelled: its job is withdrawn from the queue it
waits in; a running job is stopped with ``mesh.kill`` or :meth:`Executor.kill`.
Results are unpickled and futures resolved on one thread per executor, never on the
client's loop thread, so a slow done-callback delays this executor's other futures (as
in the standard executors) but never the network.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures._base import CANCELLED, PENDING, RUNNING
from typing import Any, TypeVar

from mesh.client._ledger import JobEntry
from mesh.client._options import split_options
from mesh.client._sync import Client

from mesh._initializer import Initialized
from mesh._serialize import function_name
from mesh.errors import ConnectionClosed

__all__ = ["Executor", "MeshFuture"]

T = TypeVar("T")

# How often a waiting resolver looks whether its client was closed (mesh.close(), a
# Client closed by its owner): no job of a closed client becomes final.
CLOSED_CHECK_S = 1.0

# Whether the interpreter has begun to exit: submit then raises the standard error.
_exiting = False


class MeshFuture(concurrent.futures.Future[T]):
    """The future of one mesh job; ``jid`` is its job id.

    ``cancel()`` succeeds while the job waits (it is withdrawn and never runs; one
    whose start notice is still on its way is stopped) and returns False once it runs,
    as for any standard future: ``mesh.kill(future.jid)`` (or ``executor.client.kill``)
    stops a running job, terminating its worker process.
    """

    def __init__(self, jid: str, executor: Executor) -> None:
        super().__init__()
        self.jid = jid
        self._executor = executor

    def cancel(self) -> bool:
        """Cancel the future if it is pending, and withdraw its job; False once it runs."""
        if not super().cancel():
            return False
        self._executor._withdraw([self])
        return True

    def _stop_running(self) -> bool:
        """Cancel a running future, which ``cancel()`` refuses (its job is being killed):
        done as ``Future.cancel`` does it. False if it was not running."""
        with self._condition:
            if self._state != RUNNING:
                return False
            self._state = CANCELLED
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]
        return True

    def _notify_cancelled(self) -> None:
        """A cancelled future's job is final: CANCELLED -> CANCELLED_AND_NOTIFIED, which
        wakes ``wait()`` and ``as_completed()`` (ThreadPoolExecutor's worker does the same
        when it reaches a cancelled item)."""
        with self._condition:
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()

    def _mark_running(self) -> None:
        """Its job started: PENDING -> RUNNING, unless it was cancelled meanwhile."""
        with self._condition:
            if self._state == PENDING:
                self.set_running_or_notify_cancel()

    def result(self, timeout: float | None = None) -> T:
        try:
            return super().result(timeout)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"stopped waiting; job {self.jid} goes on running on the mesh: future.cancel() "
                f"withdraws it while it waits, mesh.kill({self.jid!r}) stops it running"
            ) from None


class Executor(concurrent.futures.Executor):
    """Run calls on the mesh through the ``concurrent.futures`` interface.

    ``Executor()`` uses the module-level client (the one ``mesh.call`` uses);
    ``Executor(peers, secret)`` connects a client of its own, closed by ``shutdown``;
    ``Executor(client=c)`` uses ``c`` and leaves it open. Keyword arguments are job
    options (``_cores``, ``_label``, ``_max_runtime``, ``_retries``) for every job;
    ``submit(fn, *args, _label=...)`` sets them for one.

    ``initializer(*initargs)`` runs once in each worker process that runs this
    executor's jobs, before the first of them (it travels with the jobs; an
    initializer that raises fails that job and is tried again before the next).
    """

    def __init__(
        self,
        peers: str | Iterable[str] | None = None,
        secret: str | bytes | None = None,
        *,
        client: Client | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        **options: Any,
    ) -> None:
        plain = [k for k in options if not k.startswith("_")]
        if plain:
            raise TypeError(
                f"Executor() got unexpected keyword arguments {', '.join(plain)} "
                "(it takes peers, secret, client and job options beginning with _)"
            )
        split_options(dict(options))  # unknown options fail here, not at the first submit
        if initializer is not None and not callable(initializer):
            raise TypeError(f"initializer must be callable, got {initializer!r}")
        # One key per executor: a worker runs the initializer once for all its jobs.
        self._init = (
            (uuid.uuid4().hex, initializer, tuple(initargs)) if initializer is not None else None
        )
        self._options = options
        if client is not None:
            if peers is not None or secret is not None:
                raise TypeError("give either client= or peers/secret, not both")
            self._client, self._owns_client = client, False
        elif peers is not None or secret is not None:
            self._client, self._owns_client = Client(peers, secret), True
        else:
            import mesh

            self._client, self._owns_client = mesh.default_client(), False
        self._lock = threading.Lock()
        # futures whose jobs are not final yet (a cancelled one stays until its job is:
        # then waiters hear of it, as ThreadPoolExecutor's do when a worker gets to it)
        self._pending: dict[str, MeshFuture[Any]] = {}
        self._withdrawn: set[str] = set()  # jobs of cancelled futures, killed once
        self._shutdown = False  # no more submissions
        self._draining = False  # shutdown is done with the client: release it once idle
        self._submitting = 0  # submissions between their shutdown check and their futures
        self._released = False
        # for the resolver: final jobs, ids of jobs started (str), None to look again
        self._inbox: queue.SimpleQueue[JobEntry | str | None] = queue.SimpleQueue()
        self._resolver: threading.Thread | None = None

    @property
    def client(self) -> Client:
        """The sync client this executor submits through."""
        return self._client

    @property
    def workers(self) -> int:
        """Worker slots of the nodes connected now: how many jobs run at once."""
        return sum(n.workers for n in self._client.nodes() if n.connected)

    # ---- submitting ----

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> MeshFuture[T]:
        """Run ``fn(*args, **kwargs)`` as one mesh job; its future at once."""
        (future,) = self._submit_jobs(fn, [args], {**self._options, **kwargs})
        return future

    def map(
        self,
        fn: Callable[..., T],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int = 1,
    ) -> Iterator[T]:
        """Like builtin ``map``, in order, with every call submitted before this returns.

        ``chunksize`` items go in one job (fewer round trips for small calls). Past
        ``timeout`` seconds from this call, the iterator raises ``TimeoutError``; then,
        or when it is closed early or a call raises, the calls not finished are stopped,
        running or not (their futures are the iterator's own: nobody else waits on them).
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1")
        end = None if timeout is None else time.monotonic() + timeout
        args = zip(*iterables, strict=False)
        if chunksize == 1:
            futures = self._submit_jobs(fn, args, dict(self._options))
        else:
            chunks = iter(lambda: tuple(itertools.islice(args, chunksize)), ())
            futures = self._submit_jobs(_chunked(fn), ((c,) for c in chunks), dict(self._options))
        return self._in_order(futures, end, chunked=chunksize > 1)

    def _in_order(
        self, futures: list[MeshFuture[Any]], end: float | None, chunked: bool
    ) -> Iterator[Any]:
        # Nothing yielded stays referenced here: futures are popped, results yielded
        # without a name (test_free_reference of CPython's suite).
        futures.reverse()
        try:
            while futures:
                if chunked:
                    chunk = self._result_or_stop(futures.pop(), end)
                    chunk.reverse()
                    while chunk:
                        yield chunk.pop()
                else:
                    yield self._result_or_stop(futures.pop(), end)
        finally:
            self.kill(futures)

    def _result_or_stop(self, future: MeshFuture[Any], end: float | None) -> Any:
        try:
            return future.result(None if end is None else end - time.monotonic())
        except BaseException:
            self.kill([future])  # timed out or interrupted: it goes too
            raise
        finally:
            del future

    def kill(self, futures: Iterable[MeshFuture[Any]]) -> None:
        """Cancel these futures, running or not, and stop their jobs; never blocks.

        For callers that own the futures, as ``map`` and the joblib backend do:
        ``cancel()`` spares a running future, as the standard says; this one does not
        (its job is killed, its worker process terminated)."""
        stopped = [f for f in futures if f._stop_running() or f.cancel()]
        self._withdraw(stopped)

    def _submit_jobs(
        self, fn: Callable[..., Any], arg_tuples: Iterable[tuple[Any, ...]], kwargs: dict[str, Any]
    ) -> list[MeshFuture[Any]]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if _exiting:
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            if self._client.closed:
                raise RuntimeError(
                    "cannot schedule new futures: the executor's mesh client is closed"
                )
            if self._resolver is None:
                self._resolver = threading.Thread(
                    target=self._resolve, name="mesh-executor", daemon=True
                )
                self._resolver.start()
            self._submitting += 1
        jobs: list[JobEntry] = []
        futures: list[MeshFuture[Any]] = []
        ledger = self._client.ledger
        if self._init is not None:
            fn = Initialized(fn, *self._init)
        try:
            # pickled on this thread; nodes tell when each job starts (futures -> RUNNING)
            func, jids = ledger.prepare(fn, arg_tuples, kwargs, on_start=self._inbox.put)
            jobs = ledger.entries(func)  # a future needs its job
            futures = [MeshFuture(jid, self) for jid in jids]
        finally:
            with self._lock:  # known before any of them can finish
                self._submitting -= 1
                self._pending.update(zip((j.jid for j in jobs), futures, strict=True))
                idle = not self._pending and not self._submitting
            if idle:  # this submission failed or was empty: the resolver may stop
                self._inbox.put(None)
        # the loop thread only hands final jobs over; the resolver does the rest
        ledger.add_callback(jobs, self._inbox.put)
        ledger.submit(func)
        return futures

    # ---- resolving ----

    def _resolve(self) -> None:
        """The resolver thread: unpickle each final job's result into its future, and
        mark futures running as their jobs start.

        It runs while futures are pending (an idle executor holds no thread), and the
        last one after shutdown releases the client."""
        value_of = self._client.ledger.value
        while True:
            try:
                item = self._inbox.get(timeout=CLOSED_CHECK_S)
            except queue.Empty:
                item = None
                if self._client.closed:
                    self._abandon()
            if isinstance(item, str):  # a job started
                with self._lock:
                    started = self._pending.get(item)
                if started is not None:
                    started._mark_running()
                del started
            elif item is not None:
                with self._lock:
                    future = self._pending.pop(item.jid, None)
                    self._withdrawn.discard(item.jid)
                if future is not None:
                    self._settle(future, value_of, item)
                del future  # hold no result longer than its future does
            del item
            with self._lock:
                if self._pending or self._submitting:
                    continue
                self._resolver = None  # the next submission starts another
                release = self._draining
            break
        if release:
            self._release()

    def _abandon(self) -> None:
        """The client was closed with futures pending: none will hear from its job, so
        cancelled ones are notified and the others fail with ConnectionClosed."""
        with self._lock:
            left, self._pending = self._pending, {}
            self._withdrawn.clear()
        for future in left.values():
            if not future.cancelled():
                with contextlib.suppress(concurrent.futures.InvalidStateError):
                    future.set_exception(
                        ConnectionClosed(
                            f"the mesh client of this executor was closed before job "
                            f"{future.jid} finished; the job may still run on its node"
                        )
                    )
            future._notify_cancelled()

    @staticmethod
    def _settle(
        future: MeshFuture[Any], value_of: Callable[[JobEntry], Any], job: JobEntry
    ) -> None:
        if not future.cancelled():
            try:
                try:
                    result = value_of(job)
                except BaseException as exc:  # the job's own exception, re-created
                    future.set_exception(exc)
                else:
                    future.set_result(result)
                return
            except concurrent.futures.InvalidStateError:
                pass  # cancelled meanwhile
        future._notify_cancelled()

    def _withdraw(self, futures: list[MeshFuture[Any]]) -> None:
        """These futures were cancelled: kill their jobs (once each), still queued."""
        with self._lock:
            jids = [f.jid for f in futures if f.jid in self._pending]
            jids = [j for j in jids if j not in self._withdrawn]
            self._withdrawn.update(jids)
        if not jids:
            return
        if self._client.closed:  # no job will tell: waiters hear of it now
            with self._lock:
                gone = [f for f in (self._pending.pop(j, None) for j in jids) if f is not None]
                idle = not self._pending and not self._submitting
            for f in gone:
                f._notify_cancelled()
            if idle:
                self._inbox.put(None)
            return
        self._client.ledger.kill_soon(jids)

    # ---- stopping ----

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; ``cancel_futures`` cancels the futures still pending.

        ``wait``: return once every future is done (and an executor's own client
        closed). Otherwise the futures still resolve in the background, and the
        executor's own client closes when the last one has. Jobs already running go
        on, as in the standard executors (``mesh.kill`` stops them).
        """
        with self._lock:
            self._shutdown = True
            pending = list(self._pending.values())
        if cancel_futures:
            self._withdraw([f for f in pending if concurrent.futures.Future.cancel(f)])
        with self._lock:
            self._draining = True
            resolver = self._resolver
        if resolver is None:  # nothing pending: no resolver to do it
            self._release()
            return
        self._inbox.put(None)  # a resolver waiting with nothing pending stops now
        if wait and threading.current_thread() is not resolver:
            concurrent.futures.wait(pending)
            resolver.join()

    def _release(self) -> None:
        """Close our own client, once, when shut down and nothing is pending."""
        with self._lock:
            if self._released:
                return
            self._released = True
        if self._owns_client:
            self._client.close()


def _interpreter_exit() -> None:
    """Unlike ThreadPoolExecutor, exit does not wait for pending futures: their jobs
    were handed to nodes, which run them on (a script ends at once, as with mesh.map)."""
    global _exiting
    _exiting = True


# Before atexit handlers, as concurrent.futures does: a submit from an atexit handler
# gets the standard error, not that of a client closed at exit.
try:
    threading._register_atexit(_interpreter_exit)  # type: ignore[attr-defined]
except RuntimeError:  # imported while the interpreter exits
    _exiting = True


def _chunked(fn: Callable[..., T]) -> Callable[[tuple[tuple[Any, ...], ...]], list[T]]:
    """One job for several calls of ``fn`` (``Executor.map(chunksize=N)``).

    A closure, so it travels by value: nodes need not import this module."""

    def run_chunk(chunk: tuple[tuple[Any, ...], ...]) -> list[T]:
        return [fn(*args) for args in chunk]

    name = function_name(fn).rpartition(".")[2]
    run_chunk.__name__ = run_chunk.__qualname__ = f"{name}[chunk]"
    run_chunk.__module__ = getattr(fn, "__module__", None) or run_chunk.__module__
    return run_chunk
