"""The scheduler's state and its queue: what waits to be placed (in priority order),
calls and maps held for their ``_depends_on``, where each job is, and placement and
recall over the nodes. :class:`~mesh.client._scheduler.Scheduler` builds on
:class:`SchedulerQueue` with the events; this module is its half that decides where
jobs go. Pure: no I/O, no clock.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field

from mesh.client._placement import NodeView, plan
from mesh.client._sched_types import (
    DEFAULT_PRIORITY,
    Batch,
    Fail,
    FailKind,
    Instruction,
    Recall,
    SchedulerConfig,
    Send,
    Work,
    dependency_failed,
)

from mesh._protocol import ErrorInfo

# ---- state ----


@dataclass(slots=True, eq=False)
class OpenBatch:
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
class Flight:
    """A job that left its call or map: on a node (``node``, perhaps a ``twin`` copy), or
    waiting to be placed again (``node == ""``)."""

    num: int
    batch: OpenBatch
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
class NodeState:
    """A node as the scheduler sees it: its slots and load, and our jobs there."""

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
    inflight: dict[int, Flight] = field(default_factory=dict)  # ours there, in send order
    slots: int = 0  # slots our jobs there take
    priorities: dict[int, int] = field(default_factory=dict)  # ours there, by priority

    @property
    def usable(self) -> bool:
        return self.up and self.workers > 0

    @property
    def load(self) -> int:
        """Slots busy or promised: ours in flight plus others' reported work."""
        return self.slots + max(0, self.running + self.queued - len(self.inflight))


class SchedulerQueue:
    """The scheduler's state, its queue and placement (the events are in Scheduler)."""

    def __init__(self, tag: str, config: SchedulerConfig | None = None) -> None:
        self.tag = tag
        self.config = config or SchedulerConfig()
        self._nodes: dict[str, NodeState] = {}
        self._open: dict[int, OpenBatch] = {}  # by first job number
        self._speculative: dict[int, OpenBatch] = {}  # those of _open with _speculative=True
        self._pending: deque[OpenBatch | Flight] = deque()  # what waits to be placed, in order
        self._flights: dict[int, Flight] = {}  # jobs out of their batch, not final
        self._measured: set[bytes] = set()  # functions some job of which came back
        self._no_nodes_since: float | None = None
        self._held_bytes = 0  # pickled arguments of jobs that left their batch (estimated)
        self._held: dict[int, OpenBatch] = {}  # calls and maps waiting for _depends_on, by first
        self._dependents: dict[int, list[OpenBatch]] = {}  # job -> held batches waiting for it
        # jobs others wait for that ended since they last heard: (num, None if done else
        # its error). Only those: the client checks its own records for jobs already final.
        self._ended: list[tuple[int, ErrorInfo | None]] = []
        # Whether jobs of different priorities were submitted: until then no node's jobs
        # are counted by priority, and nothing is recalled for one (see _recall_for).
        self._priority = DEFAULT_PRIORITY
        self._mixed = False

    def jid(self, num: int) -> str:
        return f"{self.tag}-{num}"

    # ---- placement and recall ----

    def _view(self, node: NodeState, measured: bool) -> NodeView:
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
        head: OpenBatch | Flight | None = None
        while self._pending and nodes and (head := self._head()) is not None:
            work = head.spec.work if isinstance(head, OpenBatch) else head.batch.spec.work
            tried = () if isinstance(head, OpenBatch) else head.tried
            candidates = nodes
            if tried:  # a retry goes alone, to a node it has not died on where one exists
                avoid = {k for _, k in tried}
                candidates = [n for n in nodes if n.key not in avoid] or nodes
            views = [self._view(n, work.fhash in self._measured) for n in candidates]
            room = sum(max(v.room, 0) for v in views) // work.cores
            if isinstance(head, OpenBatch) and head.spec.lazy:  # reads its sequences: bounded
                left_bytes = self.config.held_args_bytes - self._held_bytes
                room = min(room, max(0, left_bytes // max(head.spec.job_bytes, 1)))
                if room == 0 and any(n.inflight for n in nodes):
                    break  # enough arguments held: results coming back place more
            if isinstance(head, OpenBatch) and head.left > 1:
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
        self, head: OpenBatch | Flight, nodes: list[NodeState], out: list[Instruction]
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
            if isinstance(e, OpenBatch):
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

    def _recall(self, nodes: list[NodeState], out: list[Instruction]) -> None:
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
            if isinstance(e, OpenBatch):
                if e.left != 1 or e.killed or e.spec.work != work:
                    break
            elif (self._flights.get(e.num) is not e or e.node or e.tried
                  or e.batch.spec.work != work):  # fmt: skip
                break
            n += 1
        return max(n, 1)

    def _head(self) -> OpenBatch | Flight | None:
        """The first entry waiting to be placed; drops maps all sent and jobs final."""
        pending = self._pending
        while pending:
            e = pending[0]
            if isinstance(e, OpenBatch):
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

    def _enqueue(self, b: OpenBatch) -> None:
        """Queue a call or map to be placed: after those of its priority or an earlier one."""
        pending, p = self._pending, b.priority
        i = len(pending)
        while i > 0 and pending[i - 1].priority > p:
            i -= 1
        pending.insert(i, b)

    def _requeue(self, flights: list[Flight]) -> None:
        """Jobs back to be placed again (handed back, or their attempt lost) go first among
        those of their priority, in the order given."""
        pending = self._pending
        for f in reversed(flights):
            i, p = 0, f.priority
            while i < len(pending) and pending[i].priority < p:
                i += 1
            pending.insert(i, f)

    # ---- held calls and maps (_depends_on) ----

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
        self, b: OpenBatch, kind: FailKind, message: str, out: list[Instruction]
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

    # ---- where each job is ----

    def _take(self, work: Work, count: int) -> list[Flight]:
        """Take up to ``count`` jobs of ``work`` off the head of the queue."""
        out: list[Flight] = []
        while len(out) < count and (head := self._head()) is not None:
            if isinstance(head, OpenBatch):
                if head.spec.work is not work and head.spec.work != work:
                    break
                f = Flight(head.spec.first + head.next, head)
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

    def _place_on(self, f: Flight, key: str, copy: bool = False) -> None:
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

    def _unplace(self, f: Flight, key: str) -> None:
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

    def _spare(self, f: Flight, exclude: str) -> NodeState | None:
        """The least-loaded node other than ``exclude`` with a free slot for ``f``."""
        cores = f.batch.spec.work.cores
        best: NodeState | None = None
        best_level = 0.0
        for n in self._nodes.values():
            if n.key == exclude or not n.usable or n.draining or n.load + cores > n.workers:
                continue
            level = n.load / n.workers
            if best is None or level < best_level:
                best, best_level = n, level
        return best

    def _close(self, f: Flight) -> None:
        """``f`` is final: forget it (a copy of it left in the queue is skipped)."""
        if self._flights.pop(f.num, None) is not None:
            self._held_bytes -= f.batch.spec.job_bytes
        f.batch.open -= 1
        self._forget_if_done(f.batch)

    def _forget_if_done(self, b: OpenBatch) -> None:
        if b.open == 0:
            self._open.pop(b.spec.first, None)
            self._speculative.pop(b.spec.first, None)
            self._held.pop(b.spec.first, None)
