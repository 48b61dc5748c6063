"""The worker pools of a node's job environments (``_env``): one pool per environment.

A job that names an environment is run by that environment's workers: the first such
job has it built (once), its pool started; a pool idle for ``idle_s`` stops, and
environments past the disk budget are evicted. The node owns one :class:`EnvPools`
and carries out the job table's instructions; this class only starts and stops pools.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from mesh.node._envs import Env, EnvBuildError, EnvCache, WheelFetcher
from mesh.node._job_types import Instruction
from mesh.node._jobs import JobTable
from mesh.node._pool import WorkerPool

from mesh._protocol import EnvQuery, EnvRecord, EnvReport, ErrorInfo
from mesh._tasks import TaskSet
from mesh.errors import ErrorKind

__all__ = ["ENV_WID_STRIDE", "EnvPools"]

log = logging.getLogger("mesh.node")  # the node's own log: these are its messages

ENV_WID_STRIDE = 1_000_000  # worker ids of the n-th environment's pool start at n * this

# (env key, interpreter, first worker id, on_ready) -> a pool wired to the node's callbacks.
PoolFactory = Callable[[str, str, int, Callable[[int], None]], WorkerPool]


class EnvPools:
    """The environments' worker pools, started on demand and stopped when idle or evicted.

    ``apply`` carries out the table's instructions (the node's), ``new_pool`` makes a
    pool wired to the node's worker callbacks, ``fetch`` brings a pushed file by its SHA
    and file name, and ``stopping`` says the node is leaving (no pool starts then).
    """

    def __init__(
        self,
        envs: EnvCache,
        table: JobTable,
        *,
        apply: Callable[[list[Instruction]], None],
        new_pool: PoolFactory,
        fetch: WheelFetcher,
        stopping: Callable[[], bool],
        idle_s: float,
    ) -> None:
        self.envs = envs
        self._table = table
        self._apply = apply
        self._new_pool = new_pool
        self._fetch = fetch
        self._stopping = stopping
        self._idle_s = idle_s
        self._pools: dict[str, WorkerPool] = {}  # env key -> its workers
        self._by_base: dict[int, WorkerPool] = {}  # wid // ENV_WID_STRIDE -> pool
        self._building: set[str] = set()
        self._tasks = TaskSet("environments", log)  # builds, and closing their pools
        self._busy_at: dict[str, float] = {}  # env key -> when its pool last had jobs
        self._count = 0

    def want(self, key: str, reqs: tuple[str, ...]) -> None:
        """Jobs need this environment: use its workers, or build it (once) and start them."""
        if key in self._pools:
            self.envs.touch(key)
            return
        if key in self._building:
            return
        self._building.add(key)
        self._tasks.spawn(self._build(key, reqs), f"build {key}")

    def pool_of(self, wid: int) -> WorkerPool | None:
        """The environment pool worker ``wid`` belongs to (None: the node's own, or gone)."""
        return self._by_base.get(wid // ENV_WID_STRIDE)

    @property
    def pids(self) -> list[int]:
        return [pid for pool in self._pools.values() for pid in pool.pids]

    def report(self, msg: EnvQuery) -> EnvReport:
        """The environments for env_info, after dropping those ``rebuild`` names (not one
        building or with jobs queued or running: its workers use it)."""
        done = []
        for what in msg.rebuild:
            for key in self.envs.matching(what):
                if key in self._building:
                    outcome = "building"
                elif self._table.env_busy(key):
                    outcome = "in use"
                else:
                    self._stop_pool(key)
                    was = self.envs.forget(key)
                    outcome = {"failed": "forgotten", "ready": "removed"}.get(was, "building")
                    log.info("environment %s: %s on request (mesh envs --rebuild)", key, outcome)
                done.append((what, key, outcome))
        envs: list[EnvRecord] = [
            (e["key"], tuple(e.get("requirements", ())), str(e.get("status", "")),
             int(e.get("size_bytes", 0)), float(e.get("last_used", 0.0)),
             int(e.get("builds", 0)), str(e.get("python", "")), float(e.get("build_s", 0.0)),
             str(e.get("error", "")))
            for e in self.envs.info()
        ]  # fmt: skip
        return EnvReport(msg.req, tuple(envs), tuple(done))

    def stop_idle(self) -> None:
        """Stop the workers of environments without jobs for ``idle_s``."""
        idle = self._idle_s
        if idle <= 0:
            return
        now = time.time()
        for key in list(self._pools):
            since = self._busy_at.setdefault(key, now)  # first seen: just started
            if self._table.env_busy(key):
                self._busy_at[key] = now
                continue
            last = max(since, float(self.envs.index.get(key, {}).get("last_used", 0.0)))
            if now - last > idle:
                log.info("environment %s idle for %g s: stopping its workers", key, idle)
                self._stop_pool(key)

    async def close(self) -> None:
        """The node leaves: end the builds (5 s at most), then stop every pool."""
        await self._tasks.close(timeout_s=5.0)
        for pool in list(self._pools.values()):
            await pool.close()

    async def _build(self, key: str, reqs: tuple[str, ...]) -> None:
        try:
            env = await self.envs.ensure(reqs, self._fetch)
        except EnvBuildError as exc:
            log.warning("%s", self._failed(key, reqs, str(exc)))
            return
        except Exception as exc:  # a bug of ours: the jobs still get an answer
            log.exception("building environment %s", key)
            self._failed(key, reqs, repr(exc))
            return
        finally:
            self._building.discard(key)
        if self._stopping():
            return
        self._start_pool(env)
        busy = {k for k in self._pools if self._table.env_busy(k)}
        for gone in self.envs.evict(keep=busy | {key}):
            log.info("environment %s evicted (least recently used, past the budget)", gone)
            self._stop_pool(gone)

    def _failed(self, key: str, reqs: tuple[str, ...], why: str) -> str:
        """Fail the jobs waiting for environment ``key``; the message they fail with."""
        msg = (f"node {self.envs.node_name} could not build the environment "
               f"_env={list(reqs)!r}: {why}")  # fmt: skip
        error = ErrorInfo(ErrorKind.ENV_BUILD, "EnvBuildFailed", msg)
        self._apply(self._table.env_failed(key, error, time.time()))
        return msg

    def _start_pool(self, env: Env) -> None:
        self._count += 1
        key = env.key

        def ready(wid: int) -> None:
            if self._pools.get(key) is pool:  # not a pool being shut down
                self._apply(self._table.worker_ready(wid, time.time(), env=key))

        pool = self._new_pool(key, env.python, self._count * ENV_WID_STRIDE, ready)
        self._pools[key] = pool
        self._by_base[self._count] = pool
        pool.start()

    def _stop_pool(self, key: str) -> None:
        self._busy_at.pop(key, None)
        pool = self._pools.pop(key, None)
        if pool is None:
            return
        self._by_base = {b: p for b, p in self._by_base.items() if p is not pool}
        self._table.remove_env_workers(key)
        self._tasks.spawn(pool.close(), f"close the pool of {key}")
