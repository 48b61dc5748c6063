"""Calls and maps on their way from the ledger to the scheduler.

A prepared call or map (a :class:`Func`) reaches the scheduler as a :class:`Batch` once
it can be placed: one whose ``_env`` names local wheels waits until they are pushed
through mesh.files (once per client and hash: nodes fetch them by hash), one with
``_files`` until the nodes holding those files are known (a placement tie-breaker).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterable
from typing import Any

from mesh.client._files import AsyncFiles
from mesh.client._ledger import Func, Ledger
from mesh.client._links import NodeLink
from mesh.client._scheduler import Batch, Work, dependency_failed

from mesh._protocol import DONE, ErrorInfo
from mesh.errors import ErrorKind, MeshError

__all__ = ["Intake"]


class Intake:
    """Hands calls and maps to the scheduler (``place``) when they can be placed."""

    def __init__(
        self,
        ledger: Ledger,
        files: AsyncFiles,
        usable: Callable[[], list[NodeLink]],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        place: Callable[[list[Batch]], None],
        fail: Callable[[Func, ErrorInfo], None],
    ) -> None:
        self._ledger, self._files, self._usable = ledger, files, usable
        self._spawn, self._place, self._fail = spawn, place, fail
        self._pushed: set[str] = set()  # _env files already in the store

    def add(self, funcs: Iterable[Func]) -> None:
        """Loop thread: give prepared calls and maps to the scheduler (in order) once it
        can place them; calls made in a burst go out together."""
        ready = []
        for func in funcs:
            if func.push:
                self._spawn(self._after_push(func))  # first: the _env's local files
            elif func.files and func.prefer is None:
                self._spawn(self._near_files(func))  # first: which nodes hold them
            else:
                after = self._pending_deps(func) if func.after else ()
                if after is None:
                    continue  # a dependency failed: so did the call or map
                work = Work(func.fhash, func.name, func.cores, func.label, func.max_runtime,
                            func.env, func.prefer or frozenset(),
                            notify_start=func.on_start is not None, priority=func.priority,
                            kill_process=func.kill_process)  # fmt: skip
                count, size = func.pickled
                ready.append(Batch(func.start, func.n, work, func.retries, func.speculative,
                                   func.source is not None, size // max(count, 1), after))  # fmt: skip
        if ready:
            self._place(ready)

    def _pending_deps(self, func: Func) -> tuple[int, ...] | None:
        """The numbers of ``func``'s dependencies not final yet (those done are met).
        None: one failed, was killed or is not this client's, and ``func`` failed whole
        with DependencyFailed naming it."""
        ledger = self._ledger
        pending: list[int] = []
        for jid in func.after:
            num = ledger.num(jid)
            found = ledger.locate_num(num) if num is not None and num < func.start else None
            if found is None:
                why = (f"it depends on job {jid}, which this client does not know (only "
                       "its own earlier jobs can be waited for)")  # fmt: skip
            elif not found[0].is_final(found[1]):
                pending.append(found[0].start + found[1])
                continue
            else:
                dep = found[0].job(ledger.tag, found[1])
                if dep.state == DONE:
                    continue
                failed = dep.error or ErrorInfo(ErrorKind.RAISED, "JobError", "failed")
                why = dependency_failed(jid, failed)
            self._fail(func, ErrorInfo(ErrorKind.DEPENDENCY, "DependencyFailed", why))
            return None
        return tuple(pending)

    async def _after_push(self, func: Func) -> None:
        """Push the local wheels of an ``_env`` through mesh.files, then queue the jobs."""
        for path, name in func.push:
            if name in self._pushed:
                continue
            try:
                if not await self._files.exists(name):
                    await self._files.put(path, name)
            except MeshError as exc:
                msg = f"_env: could not push {path} through mesh.files: {exc}"
                self._fail(func, ErrorInfo(ErrorKind.ENV_BUILD, "EnvBuildFailed", msg))
                return
            self._pushed.add(name)
        func.push = ()
        self.add([func])

    async def _near_files(self, func: Func) -> None:
        """Learn which nodes hold the jobs' ``_files``, then queue them."""
        try:
            func.prefer = await self._files.holder_keys(func.files, self._usable())
        except MeshError:
            func.prefer = frozenset()  # no preference: the job still runs
        self.add([func])
