"""A joblib backend: ``Parallel``'s batches run as mesh jobs.

    import mesh.joblib          # registers the backend "mesh"
    with joblib.parallel_config(backend="mesh"):
        Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

``n_jobs=-1`` means the worker slots of the mesh that are free now (all of them when
none is), ``-2`` one fewer, and so on, as joblib counts cores. Each batch is one job
of a :class:`~mesh.client._executor.Executor`, whose ``kill`` stops the batches left
when joblib aborts a call whose task raised, running or not. ``parallel_config(backend="mesh", ...)``
takes ``client=``, or ``peers=``/``secret=``, and job options (``_cores=2``, ...).
``initializer``/``initargs`` (there or in ``Parallel(...)``) run once in each worker
process before the first batch of this backend it runs (see ``mesh.Executor``).
Nested ``Parallel`` calls inside a job run sequentially: the job holds one slot. That
holds for ``backend="mesh"`` named inside a job too (workers know the name without
``import mesh.joblib``), unless it is given a client or peers of its own.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import Any

from joblib._parallel_backends import FallbackToBackend  # type: ignore[import-untyped]
from joblib.parallel import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
    register_parallel_backend,
)
from mesh.client._executor import Executor, MeshFuture
from mesh.client._sync import Client

from mesh._joblib_hook import in_worker

__all__ = ["MeshBackend", "register"]


class MeshBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's view of the mesh: a pool of as many workers as the mesh has free."""

    supports_retrieve_callback = True
    default_n_jobs = -1
    # A batch crosses the network: aim for batches that run long enough to hide that.
    MIN_IDEAL_BATCH_DURATION = 0.2
    MAX_IDEAL_BATCH_DURATION = 1.0

    def __init__(
        self,
        client: Client | None = None,
        peers: str | Iterable[str] | None = None,
        secret: str | bytes | None = None,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._client = client
        self._connect = (peers, secret)
        self._options = options
        # (initializer, initargs): the backend's own, and the current call's
        self._own_init: tuple[Callable[..., object] | None, tuple[Any, ...]] = (
            initializer,
            tuple(initargs),
        )
        self._init = self._own_init
        self._executor: Executor | None = None
        self._executor_init = self._init
        self._lock = threading.Lock()
        self._futures: set[MeshFuture[Any]] = set()

    @property
    def executor(self) -> Executor:
        """The executor batches go through: made when first needed, and again when its
        client was closed (``mesh.close()``, a new ``mesh.connect``) or the initializer
        changed."""
        with self._lock:
            ex = self._executor
            if ex is None or ex.client.closed or not _same(self._executor_init, self._init):
                if self._client is None and self._connect != (None, None):
                    self._client = Client(*self._connect)  # ours, for every later call
                initializer, initargs = self._init
                self._executor = ex = Executor(
                    client=self._client,
                    initializer=initializer,
                    initargs=initargs,
                    **self._options,
                )
                self._executor_init = self._init
            return ex

    def _sequential_here(self) -> bool:
        """In a mesh job with no mesh named: batches run in the job, which holds one slot
        (a job has no secret, and its caller already counted the mesh's cores)."""
        return in_worker() and self._client is None and self._connect == (None, None)

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs > 0:
            return n_jobs
        if self._sequential_here():
            return 1
        nodes = [n for n in self.executor.client.nodes() if n.connected]
        free = sum(max(0, n.workers - n.running - n.queued) for n in nodes)
        slots = free or sum(n.workers for n in nodes)
        return max(1, slots + 1 + n_jobs)

    def configure(
        self,
        n_jobs: int = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        **backend_args: Any,
    ) -> int:
        """Called by each ``Parallel`` call; its ``initializer``/``initargs`` win over the
        backend's own (``parallel_config(backend="mesh", initializer=...)``)."""
        if self._sequential_here():
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        self._init = self._own_init if initializer is None else (initializer, tuple(initargs))
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

    def terminate(self) -> None:
        """The end of a ``Parallel`` call: the next starts from the default batch size."""
        self.reset_batch_stats()

    def submit(self, func: Callable[[], Any], callback: Callable[..., Any] | None = None) -> Any:
        future = self.executor.submit(func)
        with self._lock:
            self._futures.add(future)
        future.add_done_callback(self._forget)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _forget(self, future: concurrent.futures.Future[Any]) -> None:
        with self._lock:
            self._futures.discard(future)

    def retrieve_result_callback(self, future: MeshFuture[Any]) -> Any:
        return future.result()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """A task failed: kill the batches still running (the executor stays usable)."""
        with self._lock:
            futures = list(self._futures)
        self.executor.kill(futures)

    def get_nested_backend(self) -> tuple[Any, int | None]:
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None

    def __reduce__(self) -> tuple[Any, ...]:
        # Shipped only as a job's nested backend: the receiving side gets a fresh one.
        return (MeshBackend, ())


def _same(a: object, b: object) -> bool:
    """Equal initializer settings (the same initializer runs once per worker); objects
    that cannot say (NumPy arrays among initargs) are the same only when identical."""
    try:
        return bool(a == b)
    except Exception:
        return a is b


def register() -> None:
    """Make ``backend="mesh"`` known to joblib."""
    register_parallel_backend("mesh", MeshBackend)
