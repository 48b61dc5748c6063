"""A joblib backend: ``Parallel``'s batches run as mesh jobs.

    import mesh.joblib          # registers the backend "mesh"
    with joblib.parallel_config(backend="mesh"):
        Parallel(n_jobs=-1)(delayed(f)(x) for x in xs)

``n_jobs=-1`` means the worker slots of the mesh that are free now (all of them when
none is), ``-2`` one fewer, and so on, as joblib counts cores. Each batch is one job
of a :class:`~mesh.client._executor.Executor`, so cancelling (joblib aborts a call whose
task raised) kills the jobs still running. ``parallel_config(backend="mesh", ...)``
takes ``client=``, or ``peers=``/``secret=``, and job options (``_cores=2``, ...).
Nested ``Parallel`` calls inside a job run sequentially: the job holds one slot.
"""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable, Iterable
from typing import Any

from joblib.parallel import (  # type: ignore[import-untyped]
    AutoBatchingMixin,
    ParallelBackendBase,
    SequentialBackend,
    register_parallel_backend,
)
from mesh.client._executor import Executor, MeshFuture
from mesh.client._sync import Client

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
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self._settings: dict[str, Any] = {"client": client, "peers": peers, "secret": secret}
        self._options = options
        self._executor: Executor | None = None
        self._lock = threading.Lock()
        self._futures: set[MeshFuture[Any]] = set()

    @property
    def executor(self) -> Executor:
        """The executor batches go through, made when first needed."""
        with self._lock:
            if self._executor is None:
                self._executor = Executor(**self._settings, **self._options)
            return self._executor

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        if n_jobs > 0:
            return n_jobs
        nodes = [n for n in self.executor.client.nodes() if n.connected]
        free = sum(max(0, n.workers - n.running - n.queued) for n in nodes)
        slots = free or sum(n.workers for n in nodes)
        return max(1, slots + 1 + n_jobs)

    def configure(self, n_jobs: int = 1, parallel: Any = None, **backend_args: Any) -> int:
        self.parallel = parallel
        return self.effective_n_jobs(n_jobs)

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
        for future in futures:
            future.cancel()

    def get_nested_backend(self) -> tuple[Any, int | None]:
        level = (self.nesting_level or 0) + 1
        return SequentialBackend(nesting_level=level), None

    def __reduce__(self) -> tuple[Any, ...]:
        # Shipped only as a job's nested backend: the receiving side gets a fresh one.
        return (MeshBackend, ())


def register() -> None:
    """Make ``backend="mesh"`` known to joblib."""
    register_parallel_backend("mesh", MeshBackend)
