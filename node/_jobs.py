"""The node's job table: a pure state machine from events to instructions.

Events come from the asyncio node (a client submitted, a worker is ready, a worker
reported results, a worker died, a kill was asked, time passed); each method returns
the instructions the node must carry out (send this batch to that worker, kill that
worker, deliver these results to that connection). No I/O, no clock: ``now`` is
passed in. Job states: queued -> processing -> done | error | killed.

Workers take batches of consecutive jobs of one function, sized so a batch is a few
milliseconds of work; a job that needs several cores reserves idle workers; a job
with a runtime limit runs alone, and so does one with ``kill_process``, whose worker is
retired once it reported the result (the pool starts a fresh one in its place), and one
whose sender is told when it starts (``notify_start``: a job waiting behind another in
a worker's batch has not started, and a future must not say it runs). When
a worker dies, the job it was running gets the blame only if it ran alone; the rest
of a batch is re-queued to run one by one ("suspects"), so a crashing job is always
identified on its own. A client's jobs run in its ``priority`` order (lower first;
among equal, in the order sent); other clients' jobs keep their places.
"""

from __future__ import annotations

import heapq
import itertools
import math
import re
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from mesh.node._job_types import (
    NODE_TRACKED_FUNCTIONS,
    Deliver,
    Dispatch,
    Func,
    HandBack,
    Instruction,
    Job,
    KillWorker,
    Notify,
    RetireWorker,
    RetryRefused,
)
from mesh.node._retained import Retained, RetainedSubmissions

from mesh._protocol import (
    DONE,
    ERROR,
    JOB_STATES,
    KILLED,
    PROCESSING,
    QUEUED,
    ErrorInfo,
    JobRecord,
    KillReason,
    Payload,
    RanItem,
    ResultItem,
)
from mesh.errors import ErrorKind

__all__ = ["JobTable", "retry_base"]

# A batch should take about this long; a longer one delays results and kills.
BATCH_TARGET_S = 0.01
MAX_BATCH = 512
_EWMA = 0.2
_RETRY_SUFFIX = re.compile(r"-r([0-9]+)$")


@dataclass(slots=True, eq=False)
class _Worker:
    wid: int
    batch: dict[str, Job] = field(default_factory=dict)
    reserved_for: str = ""  # jid of a multi-core job holding this idle worker
    reserving: list[int] = field(default_factory=list)
    # Functions this worker holds, most recent last. The worker keeps twice as many
    # (WORKER_FUNCTIONS), so every function listed here is still there.
    functions: OrderedDict[bytes, None] = field(default_factory=OrderedDict)
    stopping: bool = False  # being killed for its memory
    env: str = ""  # the job environment this worker runs in ("" the node's own)
    retiring: bool = False  # runs a kill_process job: no more work, retired after it


class JobTable:
    """All jobs a node knows, its queue and its workers' assignments."""

    def __init__(
        self, node_name: str, *, result_ttl_s: float = 3600.0, unclaimed_ttl_s: float = 86400.0
    ) -> None:
        self.node_name = node_name
        self.result_ttl_s = result_ttl_s
        self.unclaimed_ttl_s = unclaimed_ttl_s
        self.jobs: dict[str, Job] = {}
        self.queue: deque[Job] = deque()
        # Jobs waiting for workers of a job environment (_env), by environment key.
        self.env_queues: dict[str, deque[Job]] = {}
        self.workers: dict[int, _Worker] = {}
        self.capacity = 0  # workers the node is configured for (ready or starting)
        self.avg_run_s: float | None = None
        # A heap of (time, seq, jids): the results to forget then. One entry per event
        # (the jobs one worker report finished, one Ack), not per job: a map of 20,000
        # jobs would push 40,000 entries and pay a heap push for each.
        self._expiry: list[tuple[float, int, list[str]]] = []
        self._expiry_seq = itertools.count()
        self._unclaimed: tuple[float, list[str]] | None = None  # the newest finish entry
        self._out: dict[int, list[ResultItem]] = {}
        self._finished: list[Job] = []  # to be stored before their results go out
        self._back: dict[int, list[str]] = {}  # jobs handed back, by connection
        self._started: dict[int, list[str]] = {}  # started jobs to report, by connection
        self.draining = False  # leaving: no new work, queued jobs go back to their clients
        self.paused = False  # the machine is short of memory: queued jobs wait
        self._expired: list[str] = []  # to be removed from the store
        # Worker pools that cannot start a worker, by environment ("" the node's own):
        # their jobs fail with this error at once instead of waiting for a worker.
        self.broken: dict[str, ErrorInfo] = {}
        # The latest priority each connection queued jobs with: one no later than that
        # is queued at the end, with no search.
        self._latest: dict[int, int] = {}
        # Failed and killed jobs' submissions for a Retry, oldest first, within a budget.
        self.retained = RetainedSubmissions()

    # ---- queries ----

    @property
    def running(self) -> int:
        return sum(1 for w in self.workers.values() if w.batch or w.reserved_for)

    @property
    def queued(self) -> int:
        return len(self.queue) + sum(len(q) for q in self.env_queues.values())

    def _queue_of(self, func: Func) -> deque[Job]:
        if not func.env:
            return self.queue
        q = self.env_queues.get(func.env)
        if q is None:
            q = self.env_queues[func.env] = deque()
        return q

    def env_busy(self, env: str) -> bool:
        """Jobs of this environment are queued or running."""
        if self.env_queues.get(env):
            return True
        return any(w.env == env and (w.batch or w.reserved_for) for w in self.workers.values())

    def record(self, jid: str) -> JobRecord | None:
        j = self.jobs.get(jid)
        if j is None:
            return None
        err = ""
        if j.error is not None:
            err = j.error.traceback or f"{j.error.type_name}: {j.error.message}"
        return JobRecord(
            j.jid, j.state, self.node_name, j.func.name, j.label, j.submitted, j.started,
            j.finished, j.cpu_s, j.stdout, j.stderr, err, j.attempts,
        )  # fmt: skip

    def take_finished(self) -> list[Job]:
        """Jobs finished since the last call: the node stores them before delivering."""
        out, self._finished = self._finished, []
        return out

    def take_expired(self) -> list[str]:
        """Finished jobs forgotten since the last call."""
        out, self._expired = self._expired, []
        return out

    # ---- events ----

    def restore(self, jobs: list[Job], now: float) -> None:
        """Finished jobs from the store of a previous run: served again until they expire."""
        for job in jobs:
            self.jobs[job.jid] = job
        self._expire_at(now + self.result_ttl_s, [job.jid for job in jobs])

    def submit(
        self,
        conn: int,
        func: Func,
        items: tuple[tuple[str, Payload], ...],
        now: float,
        *,
        cores: int = 1,
        label: str = "",
        max_runtime: float = 0.0,
        retry: bool = False,
        notify_start: bool = False,
        priority: int = 5,
        kill_process: bool = False,
    ) -> list[Instruction]:
        """A client submitted jobs. A jid seen before is not run twice: the sender watches
        it; unless ``retry`` and its last attempt here killed its worker. With
        ``notify_start``, a Notify tells the sender when each one starts. They queue
        ahead of the sender's jobs of a later ``priority``; with ``kill_process`` each
        runs alone and its worker process is replaced afterwards."""
        fresh: list[Job] = []
        for jid, args in items:
            old = self.jobs.get(jid)
            died = (
                old is not None
                and old.error is not None
                and old.error.kind == ErrorKind.WORKER_DIED
            )
            if old is not None and not (retry and died):
                self._watch(old, conn)
                continue
            if self.draining:
                self._back.setdefault(conn, []).append(jid)
                continue
            job = Job(jid, func, args, conn, now, cores, label, max_runtime)
            job.notify_start, job.priority, job.kill_process = notify_start, priority, kill_process
            if old is not None:
                job.attempts = old.attempts
                self.retained.forget(jid)
            self.jobs[jid] = job
            if cores > max(self.capacity, 1) or cores < 1:
                self._finish(
                    job,
                    ERROR,
                    now,
                    error=ErrorInfo(ErrorKind.REJECTED, "ValueError", f"job needs {cores} "
                                    f"cores; node {self.node_name} has {self.capacity} workers"),
                )  # fmt: skip
                continue
            if func.env in self.broken:
                self._finish(job, ERROR, now, error=self.broken[func.env])
                continue
            fresh.append(job)
        if fresh:
            self._enqueue(self._queue_of(func), fresh, conn, priority)
        return self._schedule(now)

    def _enqueue(self, q: deque[Job], jobs: list[Job], conn: int, priority: int) -> None:
        """Queue ``jobs`` after the sender's of this priority or an earlier one, ahead of
        its first of a later one (whose place they take: others' jobs keep theirs)."""
        latest = self._latest.get(conn)
        self._latest[conn] = priority if latest is None else max(latest, priority)
        if latest is None or priority >= latest:
            q.extend(jobs)
            return
        at = next((i for i, j in enumerate(q) if j.owner == conn and j.priority > priority), None)
        if at is None:
            q.extend(jobs)
            return
        q.rotate(-at)
        q.extendleft(reversed(jobs))
        q.rotate(at)

    def watch(self, conn: int, jids: tuple[str, ...]) -> list[Instruction]:
        """Also deliver these jobs' results to ``conn`` (at once for finished ones)."""
        for jid in jids:
            job = self.jobs.get(jid)
            if job is not None:
                self._watch(job, conn)
        return self._flush()

    def _watch(self, job: Job, conn: int) -> None:
        if job.state in (DONE, ERROR, KILLED):
            self._out.setdefault(conn, []).append(job.item())
        elif conn != job.owner:
            if job.watchers is None:
                job.watchers = set()
            job.watchers.add(conn)

    def worker_ready(self, wid: int, now: float, env: str = "") -> list[Instruction]:
        self.workers[wid] = _Worker(wid, env=env)
        return self._schedule(now)

    def env_failed(self, env: str, error: ErrorInfo, now: float) -> list[Instruction]:
        """The environment could not be built: its queued jobs fail with ``error``."""
        for job in self.env_queues.pop(env, deque()):
            self._finish(job, ERROR, now, error=error)
        return self._flush()

    def workers_broken(self, env: str, error: ErrorInfo, now: float) -> list[Instruction]:
        """The workers of the node (``env`` "") or of a job environment cannot start:
        its queued jobs, and those submitted until ``workers_recovered``, fail with
        ``error`` (naming the node and the cause) instead of waiting for a worker."""
        self.broken[env] = error
        q = self.env_queues.pop(env, deque()) if env else self.queue
        for job in q:
            self._finish(job, ERROR, now, error=error)
        q.clear()
        return self._flush()

    def workers_recovered(self, env: str) -> None:
        """A worker of that pool started again: its jobs wait for workers as usual."""
        self.broken.pop(env, None)

    def remove_env_workers(self, env: str) -> list[int]:
        """The environment's (idle) workers are being shut down: forget them."""
        self.broken.pop(env, None)  # started again, its pool gets new tries
        wids = [wid for wid, w in self.workers.items() if w.env == env]
        for wid in wids:
            del self.workers[wid]
        return wids

    def worker_ran(self, wid: int, items: tuple[RanItem, ...], now: float) -> list[Instruction]:
        """A worker reported finished jobs (its batch may still be running)."""
        w = self.workers.get(wid)
        if w is None:
            return []
        for jid, state, blob, error, started, finished, cpu_s, out, err in items:
            found = w.batch.pop(jid, None)
            if found is None:
                continue
            job = found
            job.started, job.cpu_s, job.stdout, job.stderr = started, cpu_s, out, err
            self._observe(finished - started)
            self._finish(job, state, now, result=blob, error=error, finished=finished)
        if not w.batch:
            self._release(w)
            if w.retiring:  # its result goes out first (_flush), then the worker
                return [*self._schedule(now), RetireWorker(wid)]
        return self._schedule(now)

    def worker_died(self, wid: int, exit_desc: str, now: float) -> list[Instruction]:
        """A worker process is gone. Blame its job only if it ran alone; re-queue the rest."""
        w = self.workers.pop(wid, None)
        if w is None:
            return []
        self._release(w)
        batch = list(w.batch.values())
        requeue: list[Job] = []
        for job in batch:
            if job.kill_reason is not None:
                error = job.kill_reason.error_info(self.node_name, job.max_runtime)
                self._finish(job, KILLED, now, error=error)
            elif len(batch) == 1:
                job.attempts += 1
                self._finish(
                    job,
                    ERROR,
                    now,
                    error=ErrorInfo(
                        ErrorKind.WORKER_DIED,
                        "WorkerDied",
                        f"worker process on node {self.node_name} {exit_desc} while running "
                        f"{job.func.name}",
                    ),
                )
            else:
                job.state, job.worker, job.suspect = QUEUED, -1, True
                requeue.append(job)
        if requeue:
            self._queue_of(requeue[0].func).extendleft(reversed(requeue))
        return self._schedule(now)

    def kill(self, jids: tuple[str, ...], now: float) -> list[Instruction]:
        out: list[Instruction] = []
        for jid in jids:
            job = self.jobs.get(jid)
            if job is None:
                continue
            if job.state == QUEUED:
                try:
                    self._queue_of(job.func).remove(job)
                except ValueError:
                    pass
                error = KillReason(ErrorKind.KILLED).error_info(self.node_name, job.max_runtime)
                self._finish(job, KILLED, now, error=error)
            elif job.state == PROCESSING and job.kill_reason is None:
                job.kill_reason = KillReason(ErrorKind.KILLED)
                out.append(KillWorker(job.worker, f"killed: {jid}"))
        return out + self._schedule(now)

    def retry_refused(self, jid: str) -> str:
        """Why job ``jid`` cannot be run again by :meth:`retry` ("" if it can)."""
        job = self.jobs.get(jid)
        if job is None:
            return f"node {self.node_name} holds no job {jid}"
        if job.state not in (ERROR, KILLED):
            return f"job {jid} did not fail (it is {JOB_STATES[job.state]})"
        if job.func.env:  # its environment may be gone: only a client can ask for it again
            return f"job {jid} ran in a job environment (_env): submit it again from a script"
        if jid not in self.retained:
            return (f"node {self.node_name} no longer keeps job {jid}'s function and arguments "
                    f"(it keeps the latest failures' up to {self.retained.budget_bytes} bytes)")  # fmt: skip
        if self.draining:
            return f"node {self.node_name} is leaving"
        return ""

    def retry(self, jid: str, now: float) -> tuple[str, list[Instruction]]:
        """Run the failed or killed job ``jid`` again here as a new job, ``<jid>-r1`` (a
        retry of ``x-r1`` is ``x-r2``): same function, arguments, options and owner.
        Raises :class:`RetryRefused` with the reason when it cannot."""
        why = self.retry_refused(jid)
        if why:
            raise RetryRefused(why)
        kept = self.retained.get(jid)
        assert kept is not None  # retry_refused said so
        base, n = retry_base(jid)
        new = f"{base}-r{n + 1}"
        while new in self.jobs:
            n += 1
            new = f"{base}-r{n + 1}"
        out = self.submit(kept.owner, kept.func, ((new, kept.args),), now, cores=kept.cores,
                          label=kept.label, max_runtime=kept.max_runtime,
                          priority=kept.priority, kill_process=kept.kill_process)  # fmt: skip
        self.jobs[new].retry_of = jid
        return new, out

    def drain(self) -> list[Instruction]:
        """The node is leaving: take no new jobs and hand the queued ones back."""
        self.draining = True
        for q in (self.queue, *self.env_queues.values()):
            for job in q:
                self._back.setdefault(job.owner, []).append(job.jid)
                del self.jobs[job.jid]  # it runs elsewhere; a later ask here finds nothing
            q.clear()
        self.env_queues.clear()
        return self._flush()

    def recall(self, conn: int, jids: tuple[str, ...]) -> list[Instruction]:
        """Client ``conn`` wants back those of ``jids`` (its own) not started yet, to place
        them on a node with a free slot. Always exactly one HandBack, even empty: the
        client waits for this answer before it recalls from this node again."""
        back: list[str] = []
        for jid in jids:
            job = self.jobs.get(jid)
            if job is None or job.owner != conn or job.state != QUEUED:
                continue
            try:
                self._queue_of(job.func).remove(job)
            except ValueError:
                continue
            del self.jobs[jid]  # it runs elsewhere; a later ask here finds nothing
            back.append(jid)
        return [HandBack(conn, back, recall=True)]

    def set_paused(self, paused: bool, now: float) -> list[Instruction]:
        """Pause (the machine is short of memory) or resume starting queued jobs."""
        self.paused = paused
        return self._schedule(now)

    def over_memory(self, wid: int, rss: int, limit: int) -> list[Instruction]:
        """A worker grew past the memory limit: stop it. A job running alone is blamed;
        the jobs of a batch run again one by one, as after a crash."""
        w = self.workers.get(wid)
        if w is None or not w.batch or w.stopping:
            return []
        w.stopping = True
        if len(w.batch) == 1:
            (job,) = w.batch.values()
            job.kill_reason = job.kill_reason or KillReason(ErrorKind.MEMORY, rss, limit)
        return [KillWorker(wid, f"memory: {rss} bytes > {limit}")]

    def ack(self, jids: tuple[str, ...], now: float) -> None:
        """The client has these results: keep them for ``result_ttl_s`` more."""
        self._expire_at(now + self.result_ttl_s, [jid for jid in jids if jid in self.jobs])

    def tick(self, now: float) -> list[Instruction]:
        """Time passed: enforce runtime limits, forget expired results."""
        out: list[Instruction] = []
        for w in self.workers.values():
            for job in w.batch.values():
                if (
                    job.max_runtime > 0
                    and job.kill_reason is None
                    and job.started
                    and now - job.started > job.max_runtime
                ):
                    job.kill_reason = KillReason(ErrorKind.MAX_RUNTIME)
                    out.append(KillWorker(w.wid, f"max-runtime: {job.jid}"))
        while self._expiry and self._expiry[0][0] <= now:
            _, _, jids = heapq.heappop(self._expiry)
            for jid in jids:
                expired = self.jobs.get(jid)
                if expired is not None and expired.state in (DONE, ERROR, KILLED):
                    del self.jobs[jid]
                    self.retained.forget(jid)
                    self._expired.append(jid)
        self._unclaimed = None
        return out

    def disconnected(self, conn: int) -> None:
        """A client went away; its jobs keep running and their results wait to be fetched."""
        self._latest.pop(conn, None)
        for job in self.jobs.values():
            if job.watchers and conn in job.watchers:
                job.watchers.discard(conn)

    # ---- internals ----

    def _observe(self, run_s: float) -> None:
        run_s = max(run_s, 0.0)
        self.avg_run_s = (
            run_s if self.avg_run_s is None else (1 - _EWMA) * self.avg_run_s + _EWMA * run_s
        )

    def _finish(
        self,
        job: Job,
        state: int,
        now: float,
        *,
        result: Payload = b"",
        error: ErrorInfo | None = None,
        finished: float | None = None,
    ) -> None:
        job.state, job.result, job.error = state, result, error
        if state in (ERROR, KILLED) and job.args:
            self.retained.keep(job.jid, Retained(job.func, job.args, job.owner, job.cores, job.label,
                                                 job.max_runtime, job.priority, job.kill_process))  # fmt: skip
        job.args = b""  # it will not run again: free its (possibly shared) buffer
        job.finished = finished if finished is not None else now
        job.worker = -1
        self._finished.append(job)
        self._out.setdefault(job.owner, []).append(job.item())
        if job.watchers:
            for conn in job.watchers:
                self._out.setdefault(conn, []).append(job.item())
        expire = now + self.unclaimed_ttl_s
        last = self._unclaimed
        if last is not None and last[0] == expire:
            last[1].append(job.jid)  # finished in the same event: the same entry
        else:
            self._unclaimed = (expire, [job.jid])
            self._expire_at(expire, self._unclaimed[1])

    def _expire_at(self, at: float, jids: list[str]) -> None:
        """Forget these finished jobs at ``at`` (unless something keeps them longer)."""
        if jids:
            heapq.heappush(self._expiry, (at, next(self._expiry_seq), jids))

    def _release(self, w: _Worker) -> None:
        for other in w.reserving:
            ow = self.workers.get(other)
            if ow is not None:
                ow.reserved_for = ""
        w.reserving.clear()

    def _batch_size(self, head: Job, queued: int, workers: int) -> int:
        if head.alone:
            return 1
        by_queue = queued // (2 * max(workers, 1))
        if self.avg_run_s is None:
            return 1
        by_time = BATCH_TARGET_S / self.avg_run_s if self.avg_run_s > 0 else MAX_BATCH
        return max(1, min(MAX_BATCH, by_queue, math.floor(by_time)))

    def _schedule(self, now: float) -> list[Instruction]:
        out: list[Instruction] = []
        if self.paused:
            return self._flush()
        # Environment pools run beside the node's own: all of them together run at most
        # ``capacity`` jobs at once, so a node never runs more jobs than it has workers for.
        shared = any(w.env for w in self.workers.values())
        if self.queue:
            idle = [w for w in self.workers.values()
                    if not w.batch and not w.reserved_for and not w.env and not w.retiring]  # fmt: skip
            n_workers = len(self.workers) if not self.env_queues else sum(
                1 for w in self.workers.values() if not w.env)  # fmt: skip
            if shared:
                idle = idle[: self._free_slots()]
            self._schedule_queue(self.queue, idle, n_workers, now, out)
        for env, q in list(self.env_queues.items()):
            if q:
                mine = [w for w in self.workers.values() if w.env == env]
                idle = [w for w in mine if not w.batch and not w.reserved_for and not w.retiring]
                self._schedule_queue(q, idle[: self._free_slots()], len(mine), now, out)
            if not q:
                del self.env_queues[env]
        return out + self._flush()

    def _free_slots(self) -> int:
        busy = sum(1 for w in self.workers.values() if w.batch or w.reserved_for)
        return max(0, max(self.capacity, 1) - busy)

    def _schedule_queue(
        self, q: deque[Job], idle: list[_Worker], n_workers: int, now: float, out: list[Instruction]
    ) -> None:
        """Start jobs from the head of ``q`` on the ``idle`` workers (theirs alone)."""
        if q and idle:
            while q and idle:
                head = q[0]
                if head.cores > len(idle):
                    break  # wait for enough idle workers; keep order
                w = idle.pop()
                n = self._batch_size(head, len(q), n_workers)
                jobs = [q.popleft()]
                while q and len(jobs) < n:
                    j = q[0]
                    if j.func is not head.func or j.alone:
                        break
                    jobs.append(q.popleft())
                w.retiring = head.kill_process
                for j in jobs:
                    j.state, j.worker, j.started = PROCESSING, w.wid, now
                    w.batch[j.jid] = j
                    if j.notify_start:
                        self._started.setdefault(j.owner, []).append(j.jid)
                if head.cores > 1:
                    for _ in range(head.cores - 1):
                        other = idle.pop()
                        other.reserved_for = head.jid
                        w.reserving.append(other.wid)
                fhash = head.func.fhash
                send = fhash not in w.functions
                w.functions[fhash] = None
                w.functions.move_to_end(fhash)
                if len(w.functions) > NODE_TRACKED_FUNCTIONS:
                    w.functions.popitem(last=False)
                out.append(Dispatch(w.wid, head.func, send, jobs))

    def _flush(self) -> list[Instruction]:
        out: list[Instruction] = []
        if self._started:  # before any results: a job is seen to start, then to finish
            out.extend(Notify(conn, jids) for conn, jids in self._started.items())
            self._started = {}
        if self._out:
            out.extend(Deliver(conn, items) for conn, items in self._out.items())
            self._out = {}
        if self._back:
            out.extend(HandBack(conn, jids) for conn, jids in self._back.items())
            self._back = {}
        return out


def retry_base(jid: str) -> tuple[str, int]:
    """The job a chain of retries started from, and this one's retry number:
    ``("a-7", 0)`` for ``a-7``, ``("a-7", 2)`` for ``a-7-r2``."""
    m = _RETRY_SUFFIX.search(jid)
    return (jid[: m.start()], int(m.group(1))) if m else (jid, 0)
