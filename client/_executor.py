"""``mesh.Executor``: a :class:`concurrent.futures.Executor` whose calls run on the mesh.

Each ``submit`` is one mesh job and its future a :class:`MeshFuture` (a standard
``concurrent.futures.Future``, so ``wait``, ``as_completed`` and done-callbacks work).
A future stays pending until its job is final: the client cannot see a job start on
its node, so ``cancel()`` succeeds until the job has finished, and kills it wherever
it is, queued or running. Results are unpickled and futures resolved on one thread per
executor, never on the client's loop thread, so a slow done-callback delays this
executor's other futures (as in the standard executors) but never the network.
"""

from __future__ import annotations

import concurrent.futures
import itertools
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

from mesh.client._async import _Job, _split_options
from mesh.client._sync import Client

from mesh._initializer import Initialized
from mesh._serialize import function_name

__all__ = ["Executor", "MeshFuture"]

T = TypeVar("T")


class MeshFuture(concurrent.futures.Future[T]):
    """The future of one mesh job; ``jid`` is its job id. ``cancel()`` kills the job."""

    def __init__(self, jid: str, executor: Executor) -> None:
        super().__init__()
        self.jid = jid
        self._executor = executor

    def cancel(self) -> bool:
        """Cancel the future and kill its job, unless the job has finished already."""
        with self._condition:
            if self._state == concurrent.futures._base.FINISHED:
                return False
            if self._state == concurrent.futures._base.CANCELLED_AND_NOTIFIED:
                return True
        if not super().cancel():
            return False
        with self._condition:  # wake wait()/as_completed() now: no worker will do it for us
            if self._state != concurrent.futures._base.CANCELLED:
                return True  # another thread cancelled it at the same time
            self.set_running_or_notify_cancel()
        self._executor._cancelled(self)
        return True

    def result(self, timeout: float | None = None) -> T:
        try:
            return super().result(timeout)
        except KeyboardInterrupt:
            raise KeyboardInterrupt(
                f"stopped waiting; job {self.jid} goes on running on the mesh: "
                "future.cancel() or executor.shutdown(cancel_futures=True) stops it"
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
        _split_options(dict(options))  # unknown options fail here, not at the first submit
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

            self._client, self._owns_client = mesh._client(), False
        self._lock = threading.Lock()
        self._pending: dict[str, MeshFuture[Any]] = {}
        self._shutdown = False  # no more submissions
        self._draining = False  # shutdown is done with the client: release it once idle
        self._submitting = 0  # submissions between their shutdown check and their futures
        self._released = False
        self._finals: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
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
        ``timeout`` seconds from this call, the iterator raises ``TimeoutError`` and the
        jobs not finished are killed, as are the rest when it is closed early or a
        call raises.
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

    @staticmethod
    def _in_order(
        futures: list[MeshFuture[Any]], end: float | None, chunked: bool
    ) -> Iterator[Any]:
        futures.reverse()  # pop from the end: no reference kept to what was yielded
        try:
            while futures:
                future = futures.pop()
                try:
                    value = future.result(None if end is None else end - time.monotonic())
                finally:
                    future.cancel()  # on timeout: kill it too (a no-op once finished)
                del future
                if chunked:
                    yield from value
                else:
                    yield value
        finally:
            for future in futures:
                future.cancel()

    def _submit_jobs(
        self, fn: Callable[..., Any], arg_tuples: Iterable[tuple[Any, ...]], kwargs: dict[str, Any]
    ) -> list[MeshFuture[Any]]:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            if self._resolver is None:
                self._resolver = threading.Thread(
                    target=self._resolve, name="mesh-executor", daemon=True
                )
                self._resolver.start()
            self._submitting += 1
        jobs: list[_Job] = []
        futures: list[MeshFuture[Any]] = []
        a = self._client._async
        if self._init is not None:
            fn = Initialized(fn, *self._init)
        try:
            func, jids = a._prepare(fn, arg_tuples, kwargs)  # pickled on this thread
            jobs = [func.job(a._tag, k) for k in range(len(jids))]  # a future needs its job
            futures = [MeshFuture(jid, self) for jid in jids]
        finally:
            with self._lock:  # known before any of them can finish
                self._submitting -= 1
                self._pending.update(zip((j.jid for j in jobs), futures, strict=True))
                idle = not self._pending and not self._submitting
            if idle:  # this submission failed or was empty: the resolver may stop
                self._finals.put(None)
        # the loop thread only hands final jobs over; the resolver does the rest
        a._add_callback(jobs, self._finals.put)
        self._client._send(func)
        return futures

    # ---- resolving ----

    def _resolve(self) -> None:
        """The resolver thread: unpickle each final job's result into its future.

        It runs while futures are pending (an idle executor holds no thread), and the
        last one after shutdown releases the client."""
        value_of = self._client._async._value
        while True:
            job = self._finals.get()
            if job is not None:
                with self._lock:
                    future = self._pending.pop(job.jid, None)
                if future is not None and not future.cancelled():
                    self._settle(future, value_of, job)
                del future, job  # hold no result longer than its future does
            with self._lock:
                if self._pending or self._submitting:
                    continue
                self._resolver = None  # the next submission starts another
                release = self._draining
            break
        if release:
            self._release()

    @staticmethod
    def _settle(future: MeshFuture[Any], value_of: Callable[[_Job], Any], job: _Job) -> None:
        try:
            try:
                result = value_of(job)
            except BaseException as exc:  # the job's own exception, re-created
                future.set_exception(exc)
            else:
                future.set_result(result)
        except concurrent.futures.InvalidStateError:
            pass  # cancelled meanwhile

    def _cancelled(self, future: MeshFuture[Any]) -> None:
        with self._lock:
            known = self._pending.pop(future.jid, None) is not None
            idle = not self._pending and not self._submitting
        if known:
            self._client._kill_soon([future.jid])
        if idle:  # let the resolver stop
            self._finals.put(None)

    # ---- stopping ----

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """No more submissions; ``cancel_futures`` kills the jobs not finished.

        ``wait``: return once every future is done (and an executor's own client
        closed). Otherwise the futures still resolve in the background, and the
        executor's own client closes when the last one has.
        """
        with self._lock:
            self._shutdown = True
            pending = list(self._pending.values())
        if cancel_futures:
            stopped = [f for f in pending if _cancel_quietly(f)]
            with self._lock:
                for f in stopped:
                    self._pending.pop(f.jid, None)
            if stopped:
                if wait:
                    self._client.kill([f.jid for f in stopped])
                else:
                    self._client._kill_soon([f.jid for f in stopped])
        with self._lock:
            self._draining = True
            resolver = self._resolver
        if resolver is None:  # nothing pending: no resolver to do it
            self._release()
            return
        self._finals.put(None)  # a resolver waiting with nothing pending stops now
        if wait:
            concurrent.futures.wait(pending)
            if threading.current_thread() is not resolver:
                resolver.join()

    def _release(self) -> None:
        """Close our own client, once, when shut down and nothing is pending."""
        with self._lock:
            if self._released:
                return
            self._released = True
        if self._owns_client:
            self._client.close()


def _cancel_quietly(future: MeshFuture[Any]) -> bool:
    """Cancel a future without killing its job one by one (shutdown kills them together)."""
    if not concurrent.futures.Future.cancel(future):
        return False
    with future._condition:
        if future._state == concurrent.futures._base.CANCELLED:
            future.set_running_or_notify_cancel()
    return True


def _chunked(fn: Callable[..., T]) -> Callable[[tuple[tuple[Any, ...], ...]], list[T]]:
    """One job for several calls of ``fn`` (``Executor.map(chunksize=N)``).

    A closure, so it travels by value: nodes need not import this module."""

    def run_chunk(chunk: tuple[tuple[Any, ...], ...]) -> list[T]:
        return [fn(*args) for args in chunk]

    name = function_name(fn).rpartition(".")[2]
    run_chunk.__name__ = run_chunk.__qualname__ = f"{name}[chunk]"
    run_chunk.__module__ = getattr(fn, "__module__", None) or run_chunk.__module__
    return run_chunk
