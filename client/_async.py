"""The client, written once, in asyncio. The sync :class:`Client` runs it on a loop thread.

All mutable state belongs to the event loop's thread, except the ledger's "any thread"
methods (preparing calls and maps, looking jobs up, waiting), so a script's ``map``
pickles on its own thread while the loop keeps sending.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import secrets
import time
from collections.abc import (
    AsyncGenerator,
    AsyncIterator,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Sequence,
)
from contextlib import aclosing
from typing import Any, TypeVar, overload

from mesh.client._files import AsyncFiles
from mesh.client._funcs import Intake
from mesh.client._handle import Job, register_owner
from mesh.client._ledger import Func, JobEntry, Ledger, count_items
from mesh.client._lifecycle import ClientState
from mesh.client._links import ClientLinks, Heard, NodeLink
from mesh.client._local import LocalMesh
from mesh.client._options import env_requirements
from mesh.client._progress import Progress, watch
from mesh.client._records import EnvInfo, EnvRebuild, JobInfo, NodeInfo, job_info
from mesh.client._scheduler import (
    Accept,
    AskRuns,
    Batch,
    Fail,
    Instruction,
    Lost,
    Outcome,
    Run,
    Scheduler,
    SchedulerConfig,
    Send,
    Stop,
)
from mesh.client._scheduler import Ack as AckResults
from mesh.client._scheduler import Recall as RecallJobs
from mesh.client._waiting import (
    Plan,
    as_ids,
    in_loop,
    iresult_plan,
    windows_plan,
)

from mesh._auth import load_secret
from mesh._connection import Connection
from mesh._discovery import parse_peers, peers_from_env
from mesh._protocol import (
    DONE,
    JOB_STATES,
    PROCESSING,
    ErrorInfo,
    Handback,
    Kill,
    Load,
    MapKilled,
    Message,
    Pong,
    Recall,
    ResultItem,
    Results,
    Started,
)
from mesh._tasks import TaskSet
from mesh.errors import ErrorKind, MeshError, MeshTimeout

__all__ = ["AsyncClient"]

log = logging.getLogger("mesh.client")


T = TypeVar("T")


# Error kinds a node reports for an attempt that cost the job nothing of its own doing:
# its worker died, or the node could not start one. Retried like a lost node.
_LOST_ATTEMPT = frozenset({ErrorKind.WORKER_DIED, ErrorKind.WORKER_START})


class AsyncClient:
    """A connection to a set of mesh nodes, with the whole job API as coroutines."""

    def __init__(
        self,
        peers: str | Iterable[str] | None = None,
        secret: str | bytes | None = None,
        *,
        name: str = "",
        connect_timeout_s: float = 5.0,
        no_nodes_timeout_s: float = 30.0,
        discovery_window_s: float = 1.5,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 5.0,
    ) -> None:
        self._state = ClientState.NEW
        named = parse_peers(peers) if peers is not None else peers_from_env()
        # the nodes: found (mDNS, gossip) or named, connected, heartbeated, reconnected
        self._links = ClientLinks(
            named, load_secret(secret), name or f"client-{os.getpid()}",
            lifecycle=lambda: self._state, spawn=self._spawn, on_up=self._node_up,
            on_lost=self._node_lost, on_message=self._on_message,
            busy=lambda key: bool(self._sched.in_flight(key)),
            connect_timeout_s=connect_timeout_s, discovery_window_s=discovery_window_s,
            heartbeat_s=heartbeat_s, dead_after_s=dead_after_s,
        )  # fmt: skip
        self._tag = secrets.token_hex(3)
        # every call and map, and the jobs of other processes waited for
        self.ledger = Ledger(self._tag, self._links.node_name)
        register_owner(self._tag, self._await_job)  # its Job handles can be awaited
        # Where and when this client's jobs run (with no node reachable for
        # no_nodes_timeout_s, unfinished jobs fail instead of waiting forever).
        self._sched = Scheduler(self._tag, SchedulerConfig(no_nodes_timeout_s=no_nodes_timeout_s))
        self._timer: asyncio.TimerHandle | None = None  # calls tick at the scheduler's wake_at
        self._timer_at: float | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks = TaskSet("client", log)
        self._local_mesh: LocalMesh | None = None  # started by AsyncClient.local()
        self.files = AsyncFiles(self._links.usable)  # mesh.files over these same links
        # calls and maps on their way to the scheduler (_env pushed, _files located)
        self._intake = Intake(self.ledger, self.files, self._links.usable, self._spawn,
                              self._place, self._fail_unsent)  # fmt: skip

    # ---- lifecycle ----

    @classmethod
    async def local(cls, nodes: int = 2, workers: int | None = None) -> AsyncClient:
        """Start an embedded mesh of ``nodes`` real node processes on 127.0.0.1 and connect:
        ``async with await AsyncClient.local() as c: ...``; closing stops the nodes."""
        mesh = LocalMesh(nodes, workers)
        addresses = await asyncio.to_thread(mesh.start)
        client = cls(addresses, mesh.secret)
        client._local_mesh = mesh
        try:
            return await client.start()
        except BaseException:
            await asyncio.to_thread(mesh.close)
            raise

    async def start(self) -> AsyncClient:
        """Connect to every peer; succeed if at least one answers. Once: again is a no-op.

        A start that fails leaves the client NEW (it may be started again)."""
        if self._state is ClientState.RUNNING:
            return self
        if self._state is not ClientState.NEW:
            raise self._state.refuse("start it")
        self._loop = asyncio.get_running_loop()
        self.ledger.attach(self._loop, self._intake.add, self._kill_soon, self._ask_adopted)
        try:
            await self._start()
        except BaseException:
            if not self._state.closed:
                self._state = ClientState.NEW
            self.ledger.detach()
            await self._links.stop_listening()
            raise
        self._state = ClientState.RUNNING
        return self

    async def _start(self) -> None:
        if self._links.discover:
            self._state = ClientState.DISCOVERING
            await self._links.find_nodes()
        self._state = ClientState.STARTING  # nodes learned from now on connect by themselves
        await self._links.connect_all()

    async def __aenter__(self) -> AsyncClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Say goodbye to every node and stop every task; stop the local mesh if this
        client started one. Again: a no-op."""
        if self._state.closed:
            return
        self._state = ClientState.CLOSING
        self.ledger.detach()
        try:
            await self._close()
        finally:
            self._state = ClientState.CLOSED

    async def _close(self) -> None:
        await self._links.stop_listening()
        if self._timer is not None:
            self._timer.cancel()
        await self.files.close()
        # A connect that had just finished may swallow its cancellation: wait for
        # every task first, so goodbye() below sees every connection.
        await self._tasks.close()
        self._links.goodbye()
        if self._local_mesh is not None:
            await asyncio.to_thread(self._local_mesh.close)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    # ---- messages from nodes ----

    def _on_message(self, link: NodeLink, conn: Connection, msg: Message) -> None:
        if isinstance(msg, Results):
            self._on_results(link, msg)
        elif isinstance(msg, Load):
            self._apply(self._sched.load(link.key, time.time(), workers=msg.workers,
                                         running=msg.running, queued=msg.queued, name=link.name))  # fmt: skip
        elif isinstance(msg, Pong):
            self._apply(self._sched.load(link.key, time.time(), running=msg.running,
                                         queued=msg.queued))  # fmt: skip
        elif isinstance(msg, Handback):
            self._handed_back(link, msg)
        elif isinstance(msg, Started):
            for jid in msg.jids:  # each job's own call or map: Submits may mix several
                self.ledger.started(jid)
        elif isinstance(msg, MapKilled):
            self._map_killed(link, msg.key)
        else:
            self.files.handle(conn, msg)  # mesh.files replies and chunks

    def _map_killed(self, link: NodeLink, key: str) -> None:
        """The console killed a map (``key``: client tag / function hash / label): kill
        what this client still holds of it too, jobs not sent yet included."""
        tag, _, rest = key.partition("/")
        fhash_hex, _, label = rest.partition("/")
        if tag != self._tag or not fhash_hex:
            return
        nums = self.ledger.unfinished_numbers(fhash_hex, label)
        if nums:
            log.info("node %s: map %s killed from the console; killing its %d unfinished "
                     "jobs here", link.name, key, len(nums))  # fmt: skip
            self._apply(self._sched.kill(nums, time.time()))

    def _on_results(self, link: NodeLink, msg: Results) -> None:
        """Results: this client's jobs go to the scheduler (it says which are final),
        jobs adopted from other processes straight to the ledger."""
        link.running, link.queued = msg.running, msg.queued
        now = time.time()
        tag = self._tag
        outcomes: list[Outcome] = []
        mine: dict[int, ResultItem] = {}
        adopted: list[str] = []
        for item in msg.items:
            jid, state, _, error = item
            t, _, n = jid.rpartition("-")
            if t == tag and n.isdigit():
                num = int(n)
                mine[num] = item
                if error is not None and error.kind in _LOST_ATTEMPT:
                    outcomes.append(Outcome(num, state, error.message or error.kind, error))
                else:  # a final error: what jobs depending on it name
                    outcomes.append(Outcome(num, state, "", error))
            else:
                adopted.append(jid)
                self.ledger.adopted_result(item, link.node_id)
        if adopted:
            self._links.ack(link, adopted)
        if outcomes:
            out = self._sched.results(link.key, outcomes, now, running=msg.running,
                                      queued=msg.queued, avg_run_s=msg.avg_run_s)  # fmt: skip
            self._apply(out, mine)

    def _handed_back(self, link: NodeLink, msg: Handback) -> None:
        """Jobs the node did not start: it is leaving, or it answers our Recall. The
        scheduler places them again (no attempt lost)."""
        tag = self._tag
        nums = []
        for jid in msg.jids:
            t, _, n = jid.rpartition("-")
            if t == tag and n.isdigit():
                nums.append(int(n))
                self.ledger.requeue(jid)
        if not msg.recall:
            log.info("node %s is leaving; placing %d jobs elsewhere", link.name, len(nums))
        if msg.running >= 0:
            link.running, link.queued = msg.running, msg.queued
        load = (msg.running, msg.queued) if msg.running >= 0 else None
        self._apply(self._sched.handed_back(link.key, nums, time.time(),
                                            leaving=not msg.recall, load=load))  # fmt: skip

    def _node_lost(self, link: NodeLink, reason: BaseException | None) -> None:
        """``link`` closed (lost, Goodbye, a missed heartbeat): its jobs are placed again."""
        out = self._sched.node_lost(link.key, str(reason), time.time())
        lost = sum(1 for ins in out if isinstance(ins, Lost))
        if lost:
            log.warning("lost %s (%s); %d jobs lost an attempt", link.name, reason, lost)
        self._apply(out)

    # ---- carrying out the scheduler's instructions ----

    def _node_up(self, link: NodeLink) -> None:
        """``link`` is connected and reported its load: the scheduler may place work there."""
        self._apply(self._sched.node_up(link.key, link.name, link.workers, time.time(),
                                        running=link.running, queued=link.queued))  # fmt: skip

    def _apply(self, out: list[Instruction], items: dict[int, ResultItem] | None = None) -> None:
        """Carry out the scheduler's instructions, in order (``items``: the results they
        accept); then set the timer for its next ``tick``."""
        dropped: list[int] = []
        for ins in out:
            if isinstance(ins, Send):
                self._send(ins, dropped)
            elif isinstance(ins, Accept):
                assert items is not None
                link = self._links.by_key.get(ins.node)
                self.ledger.accept(ins.nums, items, link.node_id if link is not None else "")
            elif isinstance(ins, AckResults):
                link = self._links.by_key.get(ins.node)
                if link is not None:  # (an Ack comes with the results it acknowledges)
                    if items is not None:
                        self._links.ack(link, [items[n].jid for n in ins.nums])
                    else:
                        self._links.ack(link, [self._sched.jid(n) for n in ins.nums])
            elif isinstance(ins, Lost):
                lost_on = self._links.by_key.get(ins.key)
                self.ledger.lost(ins.num, ins.attempts, lost_on.node_id if lost_on else "")
            elif isinstance(ins, Fail):
                self.ledger.fail_nums(ins.nums, ins.info)
            elif isinstance(ins, Stop | RecallJobs):
                link = self._links.by_key.get(ins.node)
                if link is not None:
                    jids = tuple(self._sched.jid(n) for n in ins.nums)
                    link.send(Kill(jids) if isinstance(ins, Stop) else Recall(jids))
            else:
                self._spawn(self._ask_runs(ins))
        if dropped:
            self._apply(self._sched.dropped(dropped, time.time()))
        else:
            self._set_timer()

    def _set_timer(self) -> None:
        at = self._sched.wake_at()
        if at == self._timer_at or self._loop is None or self._state.closed:
            return
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = at
        self._timer = None if at is None else self._loop.call_later(
            max(0.0, at - time.time()), self._tick
        )  # fmt: skip

    def _tick(self) -> None:
        self._timer = self._timer_at = None
        if not self._state.closed:
            self._apply(self._sched.tick(time.time()))

    def _send(self, ins: Send, dropped: list[int]) -> None:
        """Submit ``ins.nums`` to its node, reading their arguments the first time (a job
        whose arguments cannot be read or pickled fails here: ``dropped``)."""
        link = self._links.by_key[ins.node]
        if link.conn is None or link.conn.closed:  # its close is on its way: not sent,
            self._apply(self._sched.handed_back(ins.node, ins.nums, time.time()))  # no loss
            return
        func, jobs = self.ledger.take(ins.nums, dropped)
        if func is not None and jobs:
            link.submit(ins.work, func.blob, jobs, ins.retry)

    async def _ask_runs(self, ins: AskRuns) -> None:
        """A speculative map wants run times: ask the node, answer the scheduler."""
        link = self._links.by_key.get(ins.node)
        if link is None or not link.usable:
            return
        try:
            heard = await self._links.query([link], tuple(self._sched.jid(n) for n in ins.nums))
        except MeshError:
            return
        found = [(h.record, self.ledger.num(h.record.jid)) for h in heard]
        got = [Run(num, r.state, r.started, r.finished) for r, num in found if num is not None]
        if not self._state.closed:
            self._apply(self._sched.runs(ins.node, got, time.time()))

    def _place(self, batches: list[Batch]) -> None:
        """Calls and maps ready to be placed (from the intake): the scheduler's now."""
        self._apply(self._sched.submit_all(batches, time.time()))

    def _fail_unsent(self, func: Func, error: ErrorInfo) -> None:
        """A call or map the scheduler never saw fails whole (its _env could not be pushed,
        or a job it depends on failed); the scheduler fails what was held for it."""
        self.ledger.fail_unsent(func, error)
        self._apply(self._sched.dropped(range(func.start, func.start + func.n), time.time(), error))

    def _kill_soon(self, jids: list[str]) -> None:
        """Loop thread: kill jobs handed over by ``Ledger.kill_soon`` (a future's cancel)."""
        if not self._state.closed:
            self._spawn(self.kill(jids))  # owned by the client: close() awaits it

    async def _ask_adopted(self, jids: tuple[str, ...]) -> dict[str, tuple[str, int]]:
        """Ask every node about ids of other processes and have their results sent here
        (watch): the node id and state of each id a node knows, a finished copy first."""
        known: dict[str, tuple[str, int]] = {}
        for heard in await self._links.query(self._links.usable(), jids, watch=True):
            jid, state = heard.record.jid, heard.record.state
            if jid not in known or state >= DONE:
                known[jid] = (heard.link.node_id, state)
        return known

    # ---- the API ----

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Job[T]:
        """Run ``fn(*args, **kwargs)`` on the mesh; return its job id (awaitable) at once."""
        if self._state.closed:
            raise self._state.refuse("call")
        func, (jid,) = self.ledger.prepare(fn, [args], kwargs)
        self._intake.add([func])
        return jid

    async def map(
        self, fn: Callable[..., T], /, *sequences: Iterable[Any], **kwargs: Any
    ) -> list[Job[T]]:
        """Like builtin ``map``: one job per item; return the job ids (awaitable) at once."""
        if not sequences:
            raise TypeError("map() needs at least one sequence")
        if self._state.closed:
            raise self._state.refuse("map")
        func, jids = self.ledger.prepare(
            fn, zip(*sequences, strict=False), kwargs, count_items(sequences)
        )
        self._intake.add([func])
        return jids

    def _wait(
        self, plan: Plan, ids: list[str], bar: Progress | None = None, kill_on_cancel: bool = False
    ) -> aclosing[AsyncGenerator[list[JobEntry], None]]:
        """Carry out a waiting plan in this loop (client/_waiting.py): its final windows."""
        on_cancel = functools.partial(self._kill_soon, ids) if kill_on_cancel else None
        return aclosing(in_loop(plan, self.ledger, bar.job_done if bar else None, on_cancel))

    @overload  # a Job is also a Sequence[str]: the first match wins
    async def result(  # type: ignore[overload-overlap]
        self, jids: Job[T], timeout: float | None = None, progress: bool | None = None, *,
        kill_on_cancel: bool = False,
    ) -> T: ...  # fmt: skip
    @overload
    async def result(
        self, jids: str, timeout: float | None = None, progress: bool | None = None, *,
        kill_on_cancel: bool = False,
    ) -> Any: ...  # fmt: skip
    @overload
    async def result(
        self, jids: Sequence[Job[T]], timeout: float | None = None, progress: bool | None = None,
        *, kill_on_cancel: bool = False,
    ) -> list[T]: ...  # fmt: skip
    @overload
    async def result(
        self, jids: Sequence[str], timeout: float | None = None, progress: bool | None = None, *,
        kill_on_cancel: bool = False,
    ) -> list[Any]: ...  # fmt: skip

    async def result(self, jids: str | Sequence[str], timeout: float | None = None,
                     progress: bool | None = None, *, kill_on_cancel: bool = False) -> Any:  # fmt: skip
        """The result of one job, or the list of results of many; raises a job's exception
        or :class:`MeshTimeout`. ``progress``: a bar on stderr (True), none (False), or one
        for waits past 2 s (None); only ever on a terminal.

        Cancelling the awaiting task stops the wait and leaves the jobs running, unless
        ``kill_on_cancel``: then the jobs not finished yet are killed.
        """
        single = isinstance(jids, str)
        ids = as_ids(jids)
        values: list[Any] = []
        with watch(len(ids), progress, single=single) as bar:
            plan = windows_plan(self.ledger, ids, timeout)
            async with self._wait(plan, ids, bar, kill_on_cancel) as windows:
                async for jobs in windows:
                    values.extend(self.ledger.value(j) for j in jobs)
        return values[0] if single else values

    def _await_job(self, job: str) -> Generator[Any, None, Any]:
        """``await job`` (see :class:`Job`): its result, in this client's loop."""
        if self._state.closed:
            raise self._state.refuse(f"wait for job {job}")
        return self.result(job).__await__()

    async def join(self, jids: str | Sequence[str], timeout: float | None = None,
                   ignore_errors: bool = False, progress: bool | None = None, *,
                   kill_on_cancel: bool = False) -> None:  # fmt: skip
        """Wait for jobs to finish; raise the first failed job's exception unless
        ``ignore_errors``. ``progress`` and ``kill_on_cancel`` as for :meth:`result`."""
        ids = as_ids(jids)
        with watch(len(ids), progress, single=isinstance(jids, str)) as bar:
            plan = windows_plan(self.ledger, ids, timeout)
            async with self._wait(plan, ids, bar, kill_on_cancel) as windows:
                async for jobs in windows:
                    for j in jobs:
                        if j.state != DONE and not ignore_errors:
                            self.ledger.value(j)

    @overload
    def iresult(
        self, jids: Sequence[Job[T]], timeout: float | None = None, ordered: bool = True,
        progress: bool | None = None, *, kill_on_cancel: bool = False,
    ) -> AsyncIterator[T]: ...  # fmt: skip
    @overload
    def iresult(
        self, jids: Sequence[str], timeout: float | None = None, ordered: bool = True,
        progress: bool | None = None, *, kill_on_cancel: bool = False,
    ) -> AsyncIterator[Any]: ...  # fmt: skip

    async def iresult(self, jids: Sequence[str], timeout: float | None = None,
                      ordered: bool = True, progress: bool | None = None, *,
                      kill_on_cancel: bool = False) -> AsyncIterator[Any]:  # fmt: skip
        """Yield results as jobs finish: in order, or in completion order (``async for``).
        ``progress`` and ``kill_on_cancel`` as for :meth:`result`.

        Jobs are watched WAIT_WINDOW to 2 x WAIT_WINDOW at a time, in order: for more
        jobs than that, "completion order" is that order within the jobs watched."""
        ids = as_ids(jids)
        with watch(len(ids), progress) as bar:
            plan = iresult_plan(ids, timeout, ordered)
            async with self._wait(plan, ids, bar, kill_on_cancel) as windows:
                async for (job,) in windows:
                    yield self.ledger.value(job)

    async def status(self, jids: str | Sequence[str]) -> str | list[str]:
        """'queued', 'processing', 'done', 'error' or 'killed' (one, or a list). A job
        whose node is gone answers with what this client knows of it."""
        jobs = await self.ledger.lookup(as_ids(jids))
        by_link: dict[NodeLink, list[str]] = {}
        for j in jobs:
            if j.state == PROCESSING:  # the node knows better: queued there, or done already
                link = self._where(j)
                if link is not None and link.usable:
                    by_link.setdefault(link, []).append(j.jid)
        heard = await self._links.records(by_link)
        names = []
        for j in jobs:
            state = j.state
            if not j.final and j.jid in heard and state == PROCESSING:
                state = heard[j.jid].record.state
            names.append(JOB_STATES[state])
        return names[0] if isinstance(jids, str) else names

    def _where(self, j: JobEntry) -> NodeLink | None:
        """The link to the node that runs job ``j`` (or ran it last)."""
        if j.func is not None and not j.final:
            key = self._sched.node_of(int(j.jid.rpartition("-")[2]))
            if key:
                return self._links.by_key.get(key)
        return self._links.link_of(j.node)

    async def kill(self, jids: str | Sequence[str], timeout: float = 10.0) -> None:
        """Stop queued or running jobs (a running job's worker is terminated); wait until they stop."""
        jobs = await self.ledger.lookup(as_ids(jids))
        mine: list[int] = []
        by_link: dict[str, list[str]] = {}
        for j in jobs:
            if j.final:
                continue
            if j.func is not None:  # the scheduler fails unsent ones, stops sent ones
                mine.append(int(j.jid.rpartition("-")[2]))
            else:  # adopted: ask everyone
                for lk in self._links.usable():
                    by_link.setdefault(lk.key, []).append(j.jid)
        if mine:
            self._apply(self._sched.kill(mine, time.time()))
        for key, asked in by_link.items():
            self._links.by_key[key].send(Kill(tuple(asked)))
        ids = [j.jid for j in jobs]
        try:
            async with self._wait(windows_plan(self.ledger, ids, timeout), ids) as w:
                async for _ in w:
                    pass
        except MeshTimeout:
            pass

    async def info(self, jids: str | Sequence[str]) -> JobInfo | list[JobInfo]:
        """Node, times, CPU seconds, captured stdout/stderr and error text of jobs. A job
        whose node is gone gets what this client knows, with ``record_lost`` set."""
        jobs = await self.ledger.lookup(as_ids(jids))
        by_link: dict[NodeLink, list[str]] = {}
        for j in jobs:
            link = self._where(j)
            if link is not None and link.usable:
                by_link.setdefault(link, []).append(j.jid)
        heard = await self._links.records(by_link)
        out = [self._info(j, heard.get(j.jid)) for j in jobs]
        return out[0] if isinstance(jids, str) else out

    def _info(self, j: JobEntry, heard: Heard | None) -> JobInfo:
        if heard is None:
            return job_info(j, None, "", self._links.node_name)
        return job_info(j, heard.record, heard.link.node_id, self._links.node_name)

    def nodes(self) -> list[NodeInfo]:
        """The nodes this client knows, by name."""
        return self._links.nodes()

    async def env_info(self) -> list[EnvInfo]:
        """The job environments (``_env``) of every reachable node: requirements, status,
        size, last use, builds, and for a failed build pip's last lines."""
        infos, _ = await self._links.envs(())
        return infos

    async def rebuild_env(self, *what: str) -> list[EnvRebuild]:
        """Drop the environments ``what`` names (key prefixes, requirements, project names,
        pushed or local wheel files) on every node, so their next job builds them again;
        a failed build is forgotten. Those building or in use are left alone."""
        reqs, _ = env_requirements(list(what))  # a local wheel: by hash, as _env sends it
        _, done = await self._links.envs(tuple(reqs))
        return done

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def state(self) -> ClientState:
        """Where the client is in its life: NEW, DISCOVERING, STARTING, RUNNING, CLOSING,
        CLOSED."""
        return self._state
