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
"""

from __future__ import annotations

import enum
import math
import statistics
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from mesh.client._placement import NodeView, plan

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

DEFAULT_PRIORITY = 5  # PiCloud's default _priority: lower runs first


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The scheduler's knobs; tests shrink them here rather than patching constants."""

    pipeline_s: float = 0.05  # keep about this much of a measured function queued per slot
    # Jobs at least this long get no queue at a node: a round trip costs them under 1 %.
    long_job_s: float = 0.1
    max_depth: int = 4096  # jobs in flight per worker slot, at most
    unmeasured_depth: int = 2  # per slot, for a function none of whose jobs came back yet
    no_nodes_timeout_s: float = 30.0  # with no node usable this long, unfinished jobs fail
    # _speculative=True: from this share of a map done, a job running longer than
    # ``straggler`` x the median run time (and at least ``min_straggler_s``) gets a copy.
    speculate_after: float = 0.75
    straggler: float = 1.5
    min_straggler_s: float = 0.2
    speculate_every_s: float = 0.25
    speculate_sample: int = 50  # done jobs whose run times give the median
    # Pickled arguments of unfinished jobs held for retries before a lazy map's jobs stop
    # leaving the queue (their arguments are read from its sequences as they leave it).
    held_args_bytes: int = 64 << 20
    recall: bool = True  # nodes answer Recall (with a hand-back of what they did not start)


class FailKind(enum.Enum):
    """Why the scheduler failed a job; the value is the error kind on the wire."""

    WORKER_DIED = ErrorKind.WORKER_DIED  # its attempts all ended with their worker or node dying
    REJECTED = ErrorKind.REJECTED  # it needs more cores than the largest node has
    NO_NODES = ErrorKind.NO_NODES  # no node was usable for no_nodes_timeout_s
    WORKER_START = ErrorKind.WORKER_START  # its attempts all met nodes that could not start
    KILLED = ErrorKind.KILLED  # killed on request before it was sent
    DEPENDENCY = ErrorKind.DEPENDENCY  # a job it depends on (_depends_on) failed

    @property
    def exception(self) -> str:
        """The exception type the client raises for it (by name, as ErrorInfo carries)."""
        return _EXCEPTIONS[self]

    def error_info(self, message: str) -> ErrorInfo:
        return ErrorInfo(self.value, self.exception, message)


_EXCEPTIONS = {
    FailKind.WORKER_DIED: "WorkerDied",
    FailKind.REJECTED: "ValueError",
    FailKind.NO_NODES: "NoNodesAvailable",
    FailKind.WORKER_START: "WorkerStartFailed",
    FailKind.KILLED: "JobKilled",
    FailKind.DEPENDENCY: "DependencyFailed",
}


# ---- what comes in ----


@dataclass(frozen=True, slots=True)
class Work:
    """What jobs that can travel in one Submit share: function and placement options."""

    fhash: bytes
    name: str
    cores: int = 1
    label: str = ""
    max_runtime_s: float = 0.0
    env: tuple[str, ...] = ()
    prefer: frozenset[str] = frozenset()  # keys of nodes holding its _files
    notify_start: bool = False  # its node tells when each job starts (mesh.Executor)
    priority: int = DEFAULT_PRIORITY  # _priority: lower runs first, here and on nodes
    kill_process: bool = False  # _kill_process: its worker is replaced after each job


@dataclass(frozen=True, slots=True)
class Batch:
    """A call (n=1) or map: jobs ``first`` to ``first + n - 1``, all of ``work``."""

    first: int
    n: int
    work: Work
    retries: int = 3
    speculative: bool = False
    lazy: bool = False  # its arguments are read from its sequences as its jobs leave
    job_bytes: int = 0  # pickled arguments of one job (an estimate): held until it ends
    # _depends_on: jobs of this client, not final when this was made, that must end
    # done before any of these is placed (the client fails a call or map whose
    # dependency failed already; one not submitted yet is waited for)
    after: tuple[int, ...] = ()


class Outcome(NamedTuple):
    """One finished job in a node's Results."""

    num: int
    state: int  # DONE, ERROR or KILLED
    # error kind "worker-died" or "worker-start": the node's message (the attempt is lost)
    died: str = ""
    # the error as the node sent it: a "worker-start" one is what the job fails with
    # once its retries are spent (it names the node and why its workers do not start);
    # a final one is what jobs depending on it name
    error: ErrorInfo | None = None


class Run(NamedTuple):
    """A job's times from a node's record (0.0: not yet), answering AskRuns."""

    num: int
    state: int
    started: float
    finished: float


# ---- what goes out ----


@dataclass(frozen=True, slots=True)
class Send:
    """Submit ``nums`` (all of ``work``) to ``node``. ``retry``: some ran before and
    killed their worker; ``copy``: a speculative second copy of a running job."""

    node: str
    work: Work
    nums: tuple[int, ...]
    retry: bool = False
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Accept:
    """These results from ``node`` are final: the ledger keeps them (others are ignored)."""

    node: str
    nums: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Lost:
    """An attempt of job ``num`` ended with its worker or node dying (``attempts`` so far)."""

    num: int
    node: str  # the node's name
    attempts: int
    key: str = ""  # the node's key


@dataclass(frozen=True, slots=True)
class Fail:
    """These jobs fail here, with no result from a node. A range for jobs never sent."""

    nums: range | tuple[int, ...]
    kind: FailKind
    message: str
    error: ErrorInfo | None = None  # the node's own error, when the job fails with it

    @property
    def info(self) -> ErrorInfo:
        """The error the jobs fail with, as a node would have sent it."""
        return self.error or self.kind.error_info(self.message)


@dataclass(frozen=True, slots=True)
class Stop:
    """Kill the copies of ``nums`` on ``node`` (killed on request, or another copy won)."""

    node: str
    nums: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Recall:
    """Ask ``node`` to hand back those of ``nums`` it has not started. It answers with one
    hand-back (``handed_back(..., leaving=False)``), empty if it started them all."""

    node: str
    nums: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """The client holds these results; ``node`` may expire them after its TTL."""

    node: str
    nums: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AskRuns:
    """Ask ``node`` for the records of ``nums``; answer with ``runs()``."""

    node: str
    nums: tuple[int, ...]


Instruction = Send | Accept | Lost | Fail | Stop | Recall | Ack | AskRuns


# ---- state ----


@dataclass(slots=True, eq=False)
class _Open:
    """A call or map with jobs not final yet; jobs ``next`` to ``n - 1`` are unsent."""

    spec: Batch
    open: int  # jobs not final yet
    next: int = 0
    killed: set[int] = field(default_factory=set)  # unsent indexes killed on request
    finished: int = 0  # jobs that came back from a node (for _speculative)
    sample: list[tuple[int, str]] = field(default_factory=list)  # (num, node) of done jobs
    runs_s: list[float] = field(default_factory=list)  # their run times, once asked
    median_s: float = 0.0
    check_at: float = 0.0  # next speculation check
    deps: set[int] = field(default_factory=set)  # _depends_on jobs not done yet: held

    @property
    def left(self) -> int:
        return self.spec.n - self.next

    @property
    def priority(self) -> int:
        return self.spec.work.priority


@dataclass(slots=True, eq=False)
class _Flight:
    """A job that left its call or map: on a node (``node``, perhaps a ``twin`` copy), or
    waiting to be placed again (``node == ""``)."""

    num: int
    batch: _Open
    node: str = ""
    twin: str = ""  # the node running a speculative copy
    attempts: int = 0
    tried: tuple[tuple[str, str], ...] = ()  # (name, key) of nodes where an attempt died
    recalling: bool = False
    started_on: str = ""  # a recall found it running on this node: not recalled from it

    @property
    def priority(self) -> int:
        return self.batch.spec.work.priority


@dataclass(slots=True, eq=False)
class _Node:
    key: str
    name: str
    workers: int = 0
    running: int = 0
    queued: int = 0
    avg_run_s: float = 0.0
    up: bool = False
    draining: bool = False  # leaving: no new work
    recalling: bool = False  # a Recall awaits its hand-back
    recall_slots: int = 0  # slots that Recall frees for jobs of an earlier priority
    error: str = ""  # why it was last lost
    inflight: dict[int, _Flight] = field(default_factory=dict)  # ours there, in send order
    slots: int = 0  # slots our jobs there take
    priorities: dict[int, int] = field(default_factory=dict)  # ours there, by priority

    @property
    def usable(self) -> bool:
        return self.up and self.workers > 0

    @property
    def load(self) -> int:
        """Slots busy or promised: ours in flight plus others' reported work."""
        return self.slots + max(0, self.running + self.queued - len(self.inflight))


class Scheduler:
    """Where the client's jobs go and what happens when they come back or do not."""

    def __init__(self, tag: str, config: SchedulerConfig | None = None) -> None:
        self.tag = tag
        self.config = config or SchedulerConfig()
        self._nodes: dict[str, _Node] = {}
        self._open: dict[int, _Open] = {}  # by first job number
        self._speculative: dict[int, _Open] = {}  # those of _open with _speculative=True
        self._pending: deque[_Open | _Flight] = deque()  # what waits to be placed, in order
        self._flights: dict[int, _Flight] = {}  # jobs out of their batch, not final
        self._measured: set[bytes] = set()  # functions some job of which came back
        self._no_nodes_since: float | None = None
        self._held_bytes = 0  # pickled arguments of jobs that left their batch (estimated)
        self._held: dict[int, _Open] = {}  # calls and maps waiting for _depends_on, by first
        self._dependents: dict[int, list[_Open]] = {}  # job -> held batches waiting for it
        # jobs others wait for that ended since they last heard: (num, None if done else
        # its error). Only those: the client checks its own records for jobs already final.
        self._ended: list[tuple[int, ErrorInfo | None]] = []
        # Whether jobs of different priorities were submitted: until then no node's jobs
        # are counted by priority, and nothing is recalled for one (see _recall_for).
        self._priority = DEFAULT_PRIORITY
        self._mixed = False

    # ---- queries ----

    def jid(self, num: int) -> str:
        return f"{self.tag}-{num}"

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
            if isinstance(e, _Open):
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
        """Calls and maps made in a burst, in order: queued, then placed together (calls
        of one function in a row share Submits)."""
        for batch in batches:
            if batch.n <= 0:
                continue
            if batch.work.cores < 1:
                raise ValueError(f"_cores must be at least 1, not {batch.work.cores}")
            b = self._open[batch.first] = _Open(batch, batch.n)
            if batch.work.priority != self._priority and not self._mixed:
                self._count_priorities()
            if batch.speculative:
                b.check_at = now + self.config.speculate_every_s
                self._speculative[batch.first] = b
            b.deps = {d for d in batch.after if d < batch.first}  # later ids: see the client
            if b.deps:
                self._held[batch.first] = b
                for d in b.deps:
                    self._dependents.setdefault(d, []).append(b)
            else:
                self._enqueue(b)
            self._watch_for_no_nodes(now)
        return self._place()

    def node_up(
        self, key: str, name: str, workers: int, now: float, *, running: int = 0, queued: int = 0
    ) -> list[Instruction]:
        """A node's connection is authenticated and it reported its load: it takes work."""
        node = self._nodes.get(key)
        if node is None:
            node = self._nodes[key] = _Node(key, name)
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
        crashed: list[tuple[_Flight, Outcome]] = []
        for o in outcomes:
            f = self._flights.get(o.num)
            if f is None:
                continue  # final already, or not ours: a late duplicate
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
        again: list[_Flight] = []
        for f, o in crashed:
            if self._attempt_lost(f, key, o.died, out, o.error):
                again.append(f)
        self._requeue(again)
        return out + self._place()

    def handed_back(
        self, key: str, nums: Iterable[int], now: float, *, leaving: bool = True
    ) -> list[Instruction]:
        """A node gave back jobs it had not started; they are placed again, no attempt
        lost. ``leaving``: it is draining (takes no new work); else it answers a Recall."""
        node = self._nodes.get(key)
        if node is None:
            return []
        if leaving:
            node.draining = True
        else:
            node.recalling = False
            given = set(nums := tuple(nums))
            for f in node.inflight.values():
                if f.recalling and f.num not in given:
                    f.started_on = key  # not handed back: it runs there
                f.recalling = False
        back: list[_Flight] = []
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
        again: list[_Flight] = []
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

    # ---- placement ----

    def _view(self, node: _Node, measured: bool) -> NodeView:
        """``node`` for placement. ``measured``: the work's run time is known, so the node's
        average sizes its pipeline (none for long jobs); else a new function (perhaps slow)
        gets a small one, so one node cannot take a whole CPU-bound map."""
        c = self.config
        if measured and node.avg_run_s >= c.long_job_s:
            depth = 1
        elif measured and node.avg_run_s > 0:
            depth = min(c.max_depth, max(2, math.ceil(c.pipeline_s / node.avg_run_s)))
        else:
            depth = c.unmeasured_depth
        return NodeView(node.key, node.workers, node.load, node.workers * depth - node.slots)

    def _place(self) -> list[Instruction]:
        """Place what waits, least-loaded first within each node's credit; then, with a
        slot free and nothing waiting, recall our jobs queued behind others."""
        out: list[Instruction] = []
        self._propagate(out)
        nodes = [n for n in self._nodes.values() if n.usable and not n.draining]
        head: _Open | _Flight | None = None
        while self._pending and nodes and (head := self._head()) is not None:
            work = head.spec.work if isinstance(head, _Open) else head.batch.spec.work
            tried = () if isinstance(head, _Open) else head.tried
            candidates = nodes
            if tried:  # a retry goes alone, to a node it has not died on where one exists
                avoid = {k for _, k in tried}
                candidates = [n for n in nodes if n.key not in avoid] or nodes
            views = [self._view(n, work.fhash in self._measured) for n in candidates]
            room = sum(max(v.room, 0) for v in views) // work.cores
            if isinstance(head, _Open) and head.spec.lazy:  # reads its sequences: bounded
                left_bytes = self.config.held_args_bytes - self._held_bytes
                room = min(room, max(0, left_bytes // max(head.spec.job_bytes, 1)))
                if room == 0 and any(n.inflight for n in nodes):
                    break  # enough arguments held: results coming back place more
            if isinstance(head, _Open) and head.left > 1:
                group = min(max(1, room), head.left)
            else:
                group = 1 if tried else self._group_length(work, max(1, room))
            allocation = plan(group, views, work.cores, work.prefer)
            if not allocation:
                biggest = max(n.workers for n in nodes)
                if work.cores <= biggest:
                    break  # no credit left: results coming back place more
                rejected = self._take(work, group)
                for f in rejected:
                    self._close(f)
                fail = Fail(tuple(f.num for f in rejected), FailKind.REJECTED,
                            f"job needs {work.cores} cores; the largest node has {biggest}")  # fmt: skip
                self._end(fail.nums, fail.info)
                out.append(fail)
                self._propagate(out)
                continue
            for key, count in allocation:
                flights = self._take(work, count)
                for f in flights:
                    self._place_on(f, key)
                out.append(Send(key, work, tuple(f.num for f in flights),
                                any(f.attempts for f in flights)))  # fmt: skip
        if self.config.recall and nodes:
            head = self._head()
            if head is None:
                self._recall(nodes, out)
            else:
                self._recall_for(head, nodes, out)
        return out

    def _recall_for(
        self, head: _Open | _Flight, nodes: list[_Node], out: list[Instruction]
    ) -> None:
        """Jobs wait here with no room for them: recall ours of a later priority that nodes
        hold but have not started (the newest sent first), enough for those waiting ahead
        of them, so a job of an earlier priority does not wait behind them."""
        if not self._mixed:
            return
        first = head.priority
        # (by the counts, not the jobs: this runs whenever jobs wait for room)
        worst = max((p for n in nodes if not n.recalling for p in n.priorities), default=first)
        if worst <= first:
            return
        need = 0  # slots wanted by jobs waiting here ahead of the worst recallable ones
        for e in self._pending:
            if e.priority >= worst or need >= 1 << 16:
                break
            if isinstance(e, _Open):
                need += (e.left - len(e.killed)) * e.spec.work.cores
            elif self._flights.get(e.num) is e and not e.node:
                need += e.batch.spec.work.cores
        need -= sum(n.recall_slots for n in self._nodes.values() if n.recalling)  # on their way
        for n in nodes:
            if n.recalling or need <= 0:
                continue
            nums: list[int] = []
            n.recall_slots = 0
            for f in reversed(n.inflight.values()):
                if need <= 0 or f.started_on == n.key:
                    break  # the jobs sent before a started one have started too
                if f.priority <= first or f.node != n.key or f.twin or f.recalling:
                    continue
                f.recalling = True
                nums.append(f.num)
                need -= f.batch.spec.work.cores
                n.recall_slots += f.batch.spec.work.cores
            if nums:
                n.recalling = True
                out.append(Recall(n.key, tuple(reversed(nums))))

    def _recall(self, nodes: list[_Node], out: list[Instruction]) -> None:
        """Nodes with a free slot and nothing waiting here: recall our jobs queued on busy
        nodes (the newest sent: the least likely to have started), enough to fill the free
        slots or half of what waits there (both sides end about level), within the idle
        nodes' credit."""
        busy = [n for n in nodes if n.inflight and not n.recalling and n.load > n.workers]
        idle = [n for n in nodes if n.workers > n.load] if busy else []
        if not idle:
            return
        offer = sum(max(0, self._view(n, True).room) for n in idle)
        free = sum(n.workers - n.load for n in idle)
        widest = max(n.workers - n.load for n in idle)
        busy.sort(key=lambda n: (-(n.load - n.workers) / n.workers, n.key))
        for n in busy:
            excess = n.load - n.workers  # slots of work queued there, ours at the tail
            budget = min(offer, max(free, -(-excess // 2)))
            nums: list[int] = []
            for f in reversed(n.inflight.values()):
                cores = f.batch.spec.work.cores
                if excess < cores or budget < cores or f.started_on == n.key:
                    break  # the jobs sent before a started one have started too
                excess -= cores
                if f.node != n.key or f.twin or f.recalling or cores > widest:
                    continue
                f.recalling = True
                nums.append(f.num)
                budget -= cores
                offer -= cores
                free -= cores
            if nums:
                n.recalling, n.recall_slots = True, 0
                out.append(Recall(n.key, tuple(reversed(nums))))

    def _group_length(self, work: Work, limit: int) -> int:
        """How many single jobs from the head of the queue (at most ``limit``) go as one
        group: calls of the same work in a row (a loop of ``call(f, x)``), and jobs back
        to be placed again. Bounded, so a long queue costs a placement no more than the
        nodes can take."""
        n = 0
        for e in self._pending:
            if n >= limit:
                break
            if isinstance(e, _Open):
                if e.left != 1 or e.killed or e.spec.work != work:
                    break
            elif (self._flights.get(e.num) is not e or e.node or e.tried
                  or e.batch.spec.work != work):  # fmt: skip
                break
            n += 1
        return max(n, 1)

    def _head(self) -> _Open | _Flight | None:
        """The first entry waiting to be placed; drops maps all sent and jobs final."""
        pending = self._pending
        while pending:
            e = pending[0]
            if isinstance(e, _Open):
                while e.next < e.spec.n and e.next in e.killed:
                    e.killed.discard(e.next)
                    e.next += 1
                if e.next < e.spec.n:
                    return e
            elif self._flights.get(e.num) is e and not e.node:
                return e
            pending.popleft()
        return None

    def _count_priorities(self) -> None:
        """Jobs of another priority than all before: count each node's jobs by priority
        from now on (a client that never sets one pays nothing for it)."""
        self._mixed = True
        for node in self._nodes.values():
            for f in node.inflight.values():
                node.priorities[f.priority] = node.priorities.get(f.priority, 0) + 1

    def _enqueue(self, b: _Open) -> None:
        """Queue a call or map to be placed: after those of its priority or an earlier one."""
        pending, p = self._pending, b.priority
        i = len(pending)
        while i > 0 and pending[i - 1].priority > p:
            i -= 1
        pending.insert(i, b)

    def _requeue(self, flights: list[_Flight]) -> None:
        """Jobs back to be placed again (handed back, or their attempt lost) go first among
        those of their priority, in the order given."""
        pending = self._pending
        for f in reversed(flights):
            i, p = 0, f.priority
            while i < len(pending) and pending[i].priority < p:
                i += 1
            pending.insert(i, f)

    def _end(self, nums: Iterable[int], error: ErrorInfo) -> None:
        """Jobs ``nums`` failed with ``error``: those held for them will hear it."""
        if self._dependents:
            self._ended.extend((n, error) for n in nums if n in self._dependents)

    def _propagate(self, out: list[Instruction]) -> None:
        """Tell held calls and maps about jobs that ended: a done one may release them to be
        placed; a failed one fails them whole (they never ran), and their own dependents."""
        while self._ended:
            num, error = self._ended.pop(0)
            for b in self._dependents.pop(num, ()):
                if self._held.get(b.spec.first) is not b:
                    continue  # failed or killed already
                if error is None:
                    b.deps.discard(num)
                    if not b.deps:
                        del self._held[b.spec.first]
                        self._enqueue(b)
                    continue
                del self._held[b.spec.first]
                why = dependency_failed(self.jid(num), error)
                fail = self._fail_unsent(b, FailKind.DEPENDENCY, why, out)
                if fail is not None:
                    self._end(fail.nums, fail.info)
                for d in b.deps:
                    waiting = self._dependents.get(d)
                    if waiting is not None and b in waiting:
                        waiting.remove(b)
                        if not waiting:
                            del self._dependents[d]
                self._forget_if_done(b)

    def _fail_unsent(
        self, b: _Open, kind: FailKind, message: str, out: list[Instruction]
    ) -> Fail | None:
        """Fail the jobs of ``b`` not sent yet (and not killed): none of them will be."""
        if b.left <= 0:
            return None
        first = b.spec.first
        unsent = range(first + b.next, first + b.spec.n)
        killed = {first + k for k in b.killed}
        nums: range | tuple[int, ...] = (
            tuple(x for x in unsent if x not in killed) if killed else unsent
        )
        b.open -= len(nums)
        b.next, b.killed = b.spec.n, set()
        if not nums:
            return None
        fail = Fail(nums, kind, message)
        out.append(fail)
        return fail

    def _take(self, work: Work, count: int) -> list[_Flight]:
        """Take up to ``count`` jobs of ``work`` off the head of the queue."""
        out: list[_Flight] = []
        while len(out) < count and (head := self._head()) is not None:
            if isinstance(head, _Open):
                if head.spec.work is not work and head.spec.work != work:
                    break
                f = _Flight(head.spec.first + head.next, head)
                self._flights[f.num] = f
                self._held_bytes += head.spec.job_bytes
                head.next += 1
            else:
                if head.batch.spec.work != work or (out and head.tried):
                    break  # a retry goes alone (see _place)
                f = head
                self._pending.popleft()
            out.append(f)
        return out

    def _place_on(self, f: _Flight, key: str, copy: bool = False) -> None:
        node = self._nodes[key]
        if copy:
            f.twin = key
        else:
            f.node = key
        node.inflight[f.num] = f
        node.slots += f.batch.spec.work.cores
        if self._mixed:
            p = f.priority
            node.priorities[p] = node.priorities.get(p, 0) + 1

    def _unplace(self, f: _Flight, key: str) -> None:
        node = self._nodes.get(key)
        if node is not None and node.inflight.pop(f.num, None) is not None:
            node.slots -= f.batch.spec.work.cores
            if self._mixed:
                p = f.priority
                left = node.priorities[p] - 1
                if left:
                    node.priorities[p] = left
                else:
                    del node.priorities[p]

    def _spare(self, f: _Flight, exclude: str) -> _Node | None:
        """The least-loaded node other than ``exclude`` with a free slot for ``f``."""
        cores = f.batch.spec.work.cores
        best: _Node | None = None
        best_level = 0.0
        for n in self._nodes.values():
            if n.key == exclude or not n.usable or n.draining or n.load + cores > n.workers:
                continue
            level = n.load / n.workers
            if best is None or level < best_level:
                best, best_level = n, level
        return best

    # ---- jobs ending ----

    def _attempt_lost(
        self, f: _Flight, key: str, why: str, out: list[Instruction], error: ErrorInfo | None = None
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

    def _close(self, f: _Flight) -> None:
        """``f`` is final: forget it (a copy of it left in the queue is skipped)."""
        if self._flights.pop(f.num, None) is not None:
            self._held_bytes -= f.batch.spec.job_bytes
        f.batch.open -= 1
        self._forget_if_done(f.batch)

    def _forget_if_done(self, b: _Open) -> None:
        if b.open == 0:
            self._open.pop(b.spec.first, None)
            self._speculative.pop(b.spec.first, None)
            self._held.pop(b.spec.first, None)

    def _batch_of(self, num: int) -> _Open | None:
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

    def _check_stragglers(self, b: _Open, out: list[Instruction]) -> None:
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


def dependency_failed(jid: str, error: ErrorInfo) -> str:
    """Why a job depending on job ``jid``, which failed with ``error``, does not run."""
    if error.kind == ErrorKind.DEPENDENCY:
        return f"it depends on job {jid}, which did not run: {error.message}"
    name = error.type_name.removeprefix("builtins.")
    return f"it depends on job {jid}, which failed ({name}: {error.message})"


def _final_error(o: Outcome) -> ErrorInfo:
    """The error a job that ended without a result (``o``) ended with, for its dependents."""
    if o.error is not None:
        return o.error
    if o.state == KILLED:
        return ErrorInfo(ErrorKind.KILLED, "JobKilled", "killed")
    return ErrorInfo(ErrorKind.RAISED, "JobError", "it raised an exception")
