"""The client's scheduler: a pure state machine from events to instructions.

The twin of the node's job table (node/_jobs.py). Events come from the async client: a
call or map was submitted, a node came up, reported its load, sent results, handed jobs
back or was lost, a kill was asked, time passed. Each method returns the instructions
the client carries out, in order: send these jobs to that node, accept these results,
fail these jobs, stop or recall copies, acknowledge results, ask a node for run times.
No I/O and no clock: ``now`` is passed in, in wall-clock seconds (``time.time()``), the
clock nodes' job records use, so a run time read from a node compares with it.

Jobs are numbers: job N of a client with tag T has the id ``T-N``. Their arguments and
results live in the ledger, not here; the scheduler holds a job only while it waits in
a call or map not yet sent (a range: a map of a million jobs is one entry), runs on a
node, or waits to be placed again.

Placement is least-loaded first (:func:`plan`), each node holding our jobs up to its
free slots plus a small pipeline. No job waits behind a slow one while a slot is free:
when a node has a free slot and nothing waits here, the jobs of ours queued behind
others on a busy node are recalled (the node hands back those it has not started) and
placed again.

Jobs run in priority order (``_priority``: lower first, then in submission order), and a
job waiting here recalls ours of a later priority queued on a full node. A call or map
with ``_depends_on`` is held (not placed) until those jobs are done; if one of them
fails, it fails without running, and so do the jobs that depend on it.

This module is the event API. What it composes lives beside it: the records that go in
and the instructions that come out in client/_sched_types.py (re-exported here), and
the state, queue, held jobs and placement in client/_sched_queue.py
(:class:`SchedulerQueue`, the base of :class:`Scheduler`).
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence

from mesh.client._sched_queue import Flight, NodeState, OpenBatch, SchedulerQueue
from mesh.client._sched_types import (
    DEFAULT_PRIORITY,
    Accept,
    Ack,
    AskRuns,
    Batch,
    Fail,
    FailKind,
    Instruction,
    Lost,
    Outcome,
    Recall,
    Run,
    SchedulerConfig,
    Send,
    Stop,
    Work,
    dependency_failed,
)

from mesh._protocol import DONE, KILLED, PROCESSING, ErrorInfo
from mesh.errors import ErrorKind

__all__ = [
    "DEFAULT_PRIORITY",
    "Accept",
    "Ack",
    "AskRuns",
    "Batch",
    "Fail",
    "FailKind",
    "Instruction",
    "Lost",
    "Outcome",
    "Recall",
    "Run",
    "Scheduler",
    "SchedulerConfig",
    "Send",
    "Stop",
    "Work",
    "dependency_failed",
]


class Scheduler(SchedulerQueue):
    """Where the client's jobs go and what happens when they come back or do not."""

    # ---- queries ----

    def in_flight(self, key: str) -> tuple[int, ...]:
        """Our jobs on node ``key``, in the order sent (copies included)."""
        node = self._nodes.get(key)
        return tuple(node.inflight) if node is not None else ()

    def node_of(self, num: int) -> str:
        """The node running job ``num`` ("": waiting here, final, or not this client's)."""
        f = self._flights.get(num)
        return f.node if f is not None else ""

    def waiting(self) -> list[int]:
        """Jobs waiting here to be placed (never sent, or back to be placed again), in order."""
        out: list[int] = []
        for e in self._pending:
            if isinstance(e, OpenBatch):
                first = e.spec.first
                out.extend(first + k for k in range(e.next, e.spec.n) if k not in e.killed)
            elif self._flights.get(e.num) is e and not e.node:
                out.append(e.num)
        return out

    def held(self) -> list[int]:
        """Jobs held until the jobs they depend on are done (``_depends_on``), in order."""
        out: list[int] = []
        for b in sorted(self._held.values(), key=lambda b: b.spec.first):
            out.extend(b.spec.first + k for k in range(b.spec.n) if k not in b.killed)
        return out

    def unfinished(self) -> int:
        """Jobs not final yet, as the scheduler sees them."""
        return sum(b.open for b in self._open.values())

    def wake_at(self) -> float | None:
        """When ``tick`` has something to do next (None: not until another event)."""
        times = [b.check_at for b in self._speculative.values()]
        if self._no_nodes_since is not None:
            times.append(self._no_nodes_since + self.config.no_nodes_timeout_s)
        return min(times) if times else None

    # ---- events ----

    def submit(self, batch: Batch, now: float) -> list[Instruction]:
        """A call or map was prepared (ids allocated, function pickled): queue and place it."""
        return self.submit_all((batch,), now)

    def submit_all(self, batches: Iterable[Batch], now: float) -> list[Instruction]:
        """Calls and maps made in a burst, in order: queued, then placed together. Calls
        of one function and options in a row (numbered in a row) join into one batch, as
        if they were a map: a loop of ``call(f, x)`` costs the scheduler what a map does."""
        added = False
        last: OpenBatch | None = None  # made by this burst, still open to more calls
        joined: list[Batch] = []  # the calls that joined ``last``
        for batch in batches:
            if batch.n <= 0:
                continue
            added = True
            if batch.work.cores < 1:
                raise ValueError(f"_cores must be at least 1, not {batch.work.cores}")
            if last is not None and _joins(last.spec, last.open, batch):
                joined.append(batch)
                last.open += batch.n
                continue
            if joined:
                _grow(last, joined)
            b = self._open[batch.first] = OpenBatch(batch, batch.n)
            last = b if _joinable(batch) else None
            if batch.work.priority != self._priority and not self._mixed:
                self._count_priorities()
            if batch.speculative:
                b.check_at = now + self.config.speculate_every_s
                self._speculative[batch.first] = b
            if batch.after:
                b.deps = {d for d in batch.after if d < batch.first}  # later ids: see the client
            if b.deps:
                self._held[batch.first] = b
                for d in b.deps:
                    self._dependents.setdefault(d, []).append(b)
            else:
                self._enqueue(b)
        if joined:
            _grow(last, joined)
        if added:
            self._watch_for_no_nodes(now)
        return self._place()

    def node_up(
        self, key: str, name: str, workers: int, now: float, *, running: int = 0, queued: int = 0
    ) -> list[Instruction]:
        """A node's connection is authenticated and it reported its load: it takes work."""
        node = self._nodes.get(key)
        if node is None:
            node = self._nodes[key] = NodeState(key, name)
        node.name = name or key
        node.up, node.draining, node.recalling, node.error = True, False, False, ""
        node.workers, node.running, node.queued = workers, running, queued
        if node.usable:
            self._no_nodes_since = None
        return self._place()

    def load(
        self,
        key: str,
        now: float,
        *,
        workers: int | None = None,
        running: int,
        queued: int,
        avg_run_s: float = 0.0,
        name: str = "",
    ) -> list[Instruction]:
        """A node reported its load (Load, Pong): place what now fits. ``name``: the name
        it shows now (a node that met another of its name takes a suffix)."""
        node = self._nodes.get(key)
        if node is None or not node.up:
            return []
        if name:
            node.name = name
        if workers is not None:
            node.workers = workers
        node.running, node.queued = running, queued
        if avg_run_s > 0:
            node.avg_run_s = avg_run_s
        if node.usable:
            self._no_nodes_since = None
        return self._place()

    def results(
        self,
        key: str,
        outcomes: Sequence[Outcome],
        now: float,
        *,
        running: int | None = None,
        queued: int | None = None,
        avg_run_s: float = 0.0,
    ) -> list[Instruction]:
        """A node sent finished jobs. The first result of a job wins (its other copy is
        stopped); a worker that died costs an attempt, and the job runs again elsewhere
        while it has ``retries`` left. Every item is acknowledged, duplicates too."""
        node = self._nodes.get(key)
        if node is not None:
            if running is not None:
                node.running = running
            if queued is not None:
                node.queued = queued
            if avg_run_s > 0:
                node.avg_run_s = avg_run_s
        out: list[Instruction] = []
        accepted: list[int] = []
        stops: dict[str, list[int]] = {}
        crashed: list[tuple[Flight, Outcome]] = []
        for o in outcomes:
            f = self._flights.get(o.num)
            if f is None:
                continue  # final already, or not ours: a late duplicate
            if f.node == key and not f.twin:  # the common case: one copy, this node's
                self._unplace(f, key)
                others: list[str] = []
            else:
                copies = [k for k in (f.node, f.twin) if k]
                if o.died and not copies:
                    continue  # a stale attempt: the job waits here to be placed again already
                for k in copies:
                    self._unplace(f, k)
                others = [k for k in copies if k != key]
            f.node = f.twin = ""
            if o.died:
                if others and self._nodes[others[0]].usable:  # its other copy carries on
                    self._place_on(f, others[0])
                else:
                    crashed.append((f, o))
                continue
            for k in others:
                stops.setdefault(k, []).append(o.num)
            b = f.batch
            b.finished += 1
            self._measured.add(b.spec.work.fhash)
            if (
                b.spec.speculative
                and o.state == DONE
                and len(b.sample) < self.config.speculate_sample
            ):
                b.sample.append((o.num, key))
            self._close(f)
            if o.num in self._dependents:
                self._ended.append((o.num, None if o.state == DONE else _final_error(o)))
            accepted.append(o.num)
        if accepted:
            out.append(Accept(key, tuple(accepted)))
        out.extend(Stop(k, tuple(nums)) for k, nums in stops.items())
        if outcomes:
            out.append(Ack(key, tuple(o.num for o in outcomes)))
        again: list[Flight] = []
        for f, o in crashed:
            if self._attempt_lost(f, key, o.died, out, o.error):
                again.append(f)
        self._requeue(again)
        return out + self._place()

    def handed_back(
        self,
        key: str,
        nums: Iterable[int],
        now: float,
        *,
        leaving: bool = True,
        load: tuple[int, int] | None = None,
    ) -> list[Instruction]:
        """A node gave back jobs it had not started; they are placed again, no attempt
        lost. ``leaving``: it is draining (takes no new work); else it answers a Recall.
        ``load``: its (running, queued) once they left (its last report counted them:
        they would pass for others' work there and keep ours off it)."""
        node = self._nodes.get(key)
        if node is None:
            return []
        if load is not None:
            node.running, node.queued = load
        if leaving:
            node.draining = True
        else:
            node.recalling = False
            given = set(nums := tuple(nums))
            for f in node.inflight.values():
                if f.recalling and f.num not in given:
                    f.started_on = key  # not handed back: it runs there
                f.recalling = False
        back: list[Flight] = []
        for num in nums:
            back_f = node.inflight.get(num)
            if back_f is None:
                continue
            f = back_f
            self._unplace(f, key)
            f.recalling = False
            if f.twin == key:
                f.twin = ""  # a speculative copy: its first copy runs on
            elif f.twin:
                f.node, f.twin = f.twin, ""  # its copy carries on alone
            else:
                f.node = ""
                back.append(f)
        self._requeue(back)
        return self._place()

    def node_lost(self, key: str, reason: str, now: float) -> list[Instruction]:
        """A node's connection closed (lost, left, or silent too long). Its jobs cost an
        attempt and run elsewhere, unless a speculative copy runs on elsewhere."""
        node = self._nodes.get(key)
        if node is None:
            return []
        node.up, node.recalling, node.error = False, False, reason
        lost = list(node.inflight.values())
        node.inflight.clear()
        node.slots = 0
        node.priorities.clear()
        out: list[Instruction] = []
        again: list[Flight] = []
        why = f"node {node.name} ({key}) was lost while running it ({reason})"
        for f in lost:
            f.recalling = False
            other = f.twin if f.node == key else f.node
            if f.twin and other and self._nodes[other].usable:
                f.node, f.twin = other, ""  # its other copy carries on alone
                continue
            if other:
                self._unplace(f, other)
            f.node = f.twin = ""
            if self._attempt_lost(f, key, why, out):
                again.append(f)
        self._requeue(again)
        self._watch_for_no_nodes(now)
        return out + self._place()

    def kill(self, nums: Iterable[int], now: float) -> list[Instruction]:
        """Kill jobs: those not sent fail at once; nodes stop the copies they hold (their
        KILLED results come back as results)."""
        out: list[Instruction] = []
        here: list[int] = []
        stops: dict[str, list[int]] = {}
        for num in dict.fromkeys(nums):  # each once, in order
            f = self._flights.get(num)
            if f is not None:
                if f.node or f.twin:
                    for k in (f.node, f.twin):
                        if k:
                            stops.setdefault(k, []).append(num)
                else:  # waiting to be placed again
                    self._close(f)
                    here.append(num)
                continue
            b = self._batch_of(num)
            if (
                b is not None
                and num - b.spec.first >= b.next
                and num - b.spec.first not in b.killed
            ):
                b.killed.add(num - b.spec.first)
                b.open -= 1
                self._forget_if_done(b)
                here.append(num)
        if here:
            ins = Fail(tuple(here), FailKind.KILLED, "killed on request before it started")
            self._end(here, ins.info)
            out.append(ins)
        out.extend(Stop(k, tuple(v)) for k, v in stops.items())
        return out + self._place()  # nothing left waiting here: a free node may recall

    def dropped(
        self, nums: Iterable[int], now: float, error: ErrorInfo | None = None
    ) -> list[Instruction]:
        """The client failed these jobs itself, with ``error``: while sending them (their
        arguments could not be read or pickled), or before this scheduler saw them (an
        _env that could not be pushed). Forget them, give their slots to others, and
        fail the jobs that depend on them."""
        error = error or ErrorInfo(ErrorKind.RAISED, "SerializationError",
                                   "its arguments could not be sent")  # fmt: skip
        nums = nums if isinstance(nums, Sequence) else tuple(nums)  # (read twice)
        for num in nums:
            f = self._flights.get(num)
            if f is not None:
                for k in (f.node, f.twin):
                    if k:
                        self._unplace(f, k)
                f.node = f.twin = ""
                self._close(f)
        self._end(nums, error)
        return self._place()

    def tick(self, now: float) -> list[Instruction]:
        """Time passed: fail work after no_nodes_timeout_s without a node; look for
        stragglers of _speculative maps."""
        out: list[Instruction] = []
        since = self._no_nodes_since
        if since is not None and now >= since + self.config.no_nodes_timeout_s:
            self._no_nodes_since = None
            if not any(n.usable for n in self._nodes.values()):
                self._fail_all(out)
        for b in list(self._open.values()):
            if b.spec.speculative and now >= b.check_at:
                b.check_at = now + self.config.speculate_every_s
                self._check_stragglers(b, out)
        return out

    def runs(self, key: str, runs: Sequence[Run], now: float) -> list[Instruction]:
        """A node's records, answering AskRuns: done ones give the median run time of
        their map; one running longer than ``straggler`` x that gets a copy elsewhere."""
        out: list[Instruction] = []
        for r in runs:
            b = self._batch_of(r.num)
            if b is None:
                continue
            if r.state == DONE and r.finished and r.started and not b.median_s:
                b.runs_s.append(r.finished - r.started)
            f = self._flights.get(r.num)
            if (f is None or f.node != key or f.twin or r.state != PROCESSING or not r.started
                    or not b.median_s):  # fmt: skip
                continue
            limit = max(self.config.straggler * b.median_s, self.config.min_straggler_s)
            if now - r.started < limit:
                continue
            spare = self._spare(f, exclude=key)
            if spare is not None:
                self._place_on(f, spare.key, copy=True)
                out.append(Send(spare.key, b.spec.work, (f.num,), bool(f.attempts), copy=True))
        for b in self._open.values():
            if b.runs_s and not b.median_s:
                b.median_s = statistics.median(b.runs_s)
        return out

    # ---- jobs ending ----

    def _attempt_lost(
        self, f: Flight, key: str, why: str, out: list[Instruction], error: ErrorInfo | None = None
    ) -> bool:
        """An attempt ended with its worker or node dying (or with a node that cannot start
        workers, ``error``): True to place it again, else it has used its retries and fails
        with WorkerDied naming every attempt, or with the node's own worker-start error."""
        node = self._nodes.get(key)
        name = node.name if node is not None else key
        f.attempts += 1
        f.tried += ((name, key),)
        out.append(Lost(f.num, name, f.attempts, key))
        if f.attempts <= f.batch.spec.retries:
            return True
        self._close(f)
        if error is not None and error.kind == ErrorKind.WORKER_START:
            fail = Fail((f.num,), FailKind.WORKER_START, error.message, error)
        else:
            fail = Fail((f.num,), FailKind.WORKER_DIED,
                        f"job {self.jid(f.num)} ({f.batch.spec.work.name}) failed {f.attempts} "
                        f"attempts, on nodes {', '.join(n for n, _ in f.tried)}; the last: {why}")  # fmt: skip
        self._end((f.num,), fail.info)
        out.append(fail)
        return False

    def _batch_of(self, num: int) -> OpenBatch | None:
        f = self._flights.get(num)
        if f is not None:
            return f.batch
        for b in self._open.values():  # few: calls and maps with unfinished jobs
            if b.spec.first <= num < b.spec.first + b.spec.n:
                return b
        return None

    def _watch_for_no_nodes(self, now: float) -> None:
        if self._no_nodes_since is None and not any(n.usable for n in self._nodes.values()):
            self._no_nodes_since = now

    def _fail_all(self, out: list[Instruction]) -> None:
        """No node for no_nodes_timeout_s: every unfinished job fails."""
        why = "; ".join(f"{n.name} ({n.key}): {n.error}" for n in self._nodes.values())
        message = f"no node reachable for {self.config.no_nodes_timeout_s:g} s ({why})"
        for b in list(self._open.values()):
            self._fail_unsent(b, FailKind.NO_NODES, message, out)
        flights = list(self._flights.values())
        for f in flights:
            for k in (f.node, f.twin):
                if k:
                    self._unplace(f, k)
            f.node = f.twin = ""
            self._close(f)
        if flights:
            out.append(Fail(tuple(f.num for f in flights), FailKind.NO_NODES, message))
        self._pending.clear()
        self._open.clear()
        self._speculative.clear()
        self._held.clear()
        self._dependents.clear()
        self._ended.clear()

    def _check_stragglers(self, b: OpenBatch, out: list[Instruction]) -> None:
        """Most of a speculative map is done: learn its median run time from a sample of
        done jobs, then ask the nodes running the rest how long they have run."""
        if b.finished < self.config.speculate_after * b.spec.n:
            return
        by_node: dict[str, list[int]] = {}
        if not b.median_s:
            if b.runs_s:
                return  # asked already: answers still coming
            for num, key in b.sample:
                if key in self._nodes and self._nodes[key].usable:
                    by_node.setdefault(key, []).append(num)
        else:
            for f in self._flights.values():
                if f.batch is b and f.node and not f.twin and self._nodes[f.node].usable:
                    by_node.setdefault(f.node, []).append(f.num)
        out.extend(AskRuns(k, tuple(v)) for k, v in by_node.items())


def _final_error(o: Outcome) -> ErrorInfo:
    """The error a job that ended without a result (``o``) ended with, for its dependents."""
    if o.error is not None:
        return o.error
    if o.state == KILLED:
        return ErrorInfo(ErrorKind.KILLED, "JobKilled", "killed")
    return ErrorInfo(ErrorKind.RAISED, "JobError", "it raised an exception")


def _joinable(batch: Batch) -> bool:
    """Whether later calls may join ``batch`` (see submit_all): not a map whose arguments
    are read as it goes, nor one held or speculated on (those are tracked per batch)."""
    return not (batch.lazy or batch.after or batch.speculative)


def _joins(into: Batch, n: int, batch: Batch) -> bool:
    """Whether ``batch`` continues ``into`` (grown to ``n`` jobs so far): the next
    numbers, the same work and options."""
    return (
        into.first + n == batch.first
        and _joinable(batch)
        and into.retries == batch.retries
        and (into.work is batch.work or into.work == batch.work)
    )


def _grow(b: OpenBatch | None, joined: list[Batch]) -> None:
    """``b`` takes the jobs of the calls that joined it (its count of open jobs did), once
    per burst: a NamedTuple's _replace costs more than a call's whole placement."""
    assert b is not None
    spec = b.spec
    b.spec = spec._replace(n=spec.n + sum(j.n for j in joined),
                           job_bytes=max(spec.job_bytes, *(j.job_bytes for j in joined)))  # fmt: skip
    joined.clear()
