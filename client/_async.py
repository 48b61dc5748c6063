"""The client, written once, in asyncio. The sync :class:`Client` runs it on a loop thread.

All mutable state belongs to the event loop's thread, except the ledger's "any thread"
methods (preparing calls and maps, looking jobs up, waiting), so a script's ``map``
pickles on its own thread while the loop keeps sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
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
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar, overload

from mesh.client._files import AsyncFiles
from mesh.client._handle import Job, register_owner
from mesh.client._ledger import Func, JobEntry, Ledger, count_items
from mesh.client._lifecycle import ClientState
from mesh.client._local import LocalMesh
from mesh.client._options import env_requirements
from mesh.client._progress import Progress, watch
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
    Work,
    dependency_failed,
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
from mesh._connection import Connection, heartbeats, open_connection
from mesh._discovery import Advert, Browser, interfaces_from_env, parse_peers, peers_from_env
from mesh._gossip import State as MemberState
from mesh._gossip import Update
from mesh._netif import default_route_ipv4
from mesh._protocol import (
    DONE,
    ERROR,
    JOB_STATES,
    PROCESSING,
    QUEUED,
    Ack,
    EnvQuery,
    EnvReport,
    ErrorInfo,
    Goodbye,
    Handback,
    JobRecord,
    Kill,
    Load,
    Members,
    Message,
    Peers,
    Ping,
    Pong,
    Query,
    Recall,
    Records,
    ResultItem,
    Results,
    Started,
    Submit,
)
from mesh._serialize import traceback_text
from mesh._tasks import TaskSet
from mesh.errors import (
    AuthenticationError,
    ConnectionLost,
    ErrorKind,
    MeshConnectionError,
    MeshError,
    MeshTimeout,
    NoNodesAvailable,
    RemoteProtocolError,
)

__all__ = ["AsyncClient", "EnvInfo", "EnvRebuild", "JobInfo", "NodeInfo", "parse_peers"]

log = logging.getLogger("mesh.client")

SUBMIT_BATCH = 4096  # jobs per Submit message, at most
RECONNECT_S = 1.0
# Once one node is usable, how long start() waits for the others before it returns.
CONNECT_GRACE_S = 0.25
# An idle link (none of our jobs on that node) is pinged this seldom: often enough for
# the node, which closes client links silent for 30 s; the mesh's gossip (Members) is
# what tells this client of a node that died.
IDLE_PING_S = 10.0
# A node gossip declares dead that sent us something this recently is checked by our
# own ping instead of dropped (it was slow to answer its peers, not gone).
DOUBT_S = 1.0
ACK_DELAY_S = 0.02

T = TypeVar("T")


@dataclass(frozen=True)
class JobInfo:
    """What a node recorded about a job (``mesh.info``).

    ``node`` is the name the node shows (unique in a mesh, for people); ``node_id`` is
    the node itself. ``attempts`` counts the job's runs as a user reads them: 0 while it
    has not started, 1 for a job that ran once, 2 for one whose first worker (or node)
    died and that ran again. ``record_lost``: the node that ran the job is gone (or does
    not answer, or no longer holds its record), so the rest is what this client knows:
    status, node, ``submitted`` (when the call or map was made), ``finished`` (when the
    result reached this client), attempts and the error; ``started``, CPU time and
    output are then unknown (None, 0.0, "").
    """

    jid: str
    status: str
    node: str
    function: str
    label: str
    submitted: float
    started: float | None
    finished: float | None
    cpu_s: float
    stdout: str
    stderr: str
    error: str
    attempts: int
    node_id: str = ""
    record_lost: bool = False

    @classmethod
    def from_record(cls, r: JobRecord, node_id: str = "", attempts: int | None = None) -> JobInfo:
        return cls(
            jid=r.jid, status=JOB_STATES[r.state], node=r.node, function=r.function,
            label=r.label, submitted=r.submitted, started=r.started or None,
            finished=r.finished or None, cpu_s=r.cpu_s, stdout=r.stdout, stderr=r.stderr,
            error=r.error, attempts=r.attempts if attempts is None else attempts,
            node_id=node_id,
        )  # fmt: skip


def runs(deaths: int, started: bool, died_last: bool) -> int:
    """How many times a job ran, as ``JobInfo.attempts`` tells users: the attempts that
    ended with their worker or node dying, and the last one if it started and did not."""
    return deaths + (1 if started and not died_last else 0)


@dataclass(frozen=True)
class NodeInfo:
    """A node as this client sees it: ``name`` for people (unique in a mesh: a node
    whose name another live node shows takes a suffix, ``vm-2``), ``node_id`` the node."""

    name: str
    node_id: str
    address: str
    workers: int
    running: int
    queued: int
    connected: bool


@dataclass(frozen=True)
class EnvInfo:
    """A job environment (``_env``) a node holds (``mesh.env_info``)."""

    node: str
    key: str
    requirements: tuple[str, ...]  # pushed files as "wheel:<sha256>:<file name>"
    status: str  # "ready", "building" or "failed"
    size_bytes: int
    last_used: float  # epoch seconds
    builds: int
    python: str
    build_s: float  # how long the last build took (0.0: not finished)
    error: str  # failed: why, ending with the last lines of pip's build log


@dataclass(frozen=True)
class EnvRebuild:
    """What ``rebuild_env`` did on a node: ``outcome`` is "forgotten" (a failed build:
    the next job tries again), "removed" (a ready environment: the next job builds it
    again), or "building" / "in use" (left alone)."""

    node: str
    what: str
    key: str
    outcome: str


class _Link:
    """One node: its connection, its last reported load, and the functions it holds."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.key = f"{host}:{port}"
        self.conn: Connection | None = None
        self.name = self.key
        self.node_id = ""
        self.workers = 0
        self.running = 0
        self.queued = 0
        self.sent_funcs: set[bytes] = set()
        self.error: BaseException | None = None
        self.loaded: asyncio.Event | None = None  # set by the node's first Load
        self.pinged_at = 0.0  # loop time of our last Ping
        self.unanswered_since: float | None = None  # our first Ping not answered yet

    @property
    def usable(self) -> bool:
        return self.conn is not None and not self.conn.closed and self.workers > 0


class _Heard(NamedTuple):
    """A job record, and the link to the node that sent it."""

    link: _Link
    record: JobRecord


# Error kinds of a job that ran on a node (others: it failed before it started, or in
# this client, or its worker died)
_RAN_KINDS = frozenset({ErrorKind.RAISED, ErrorKind.MAX_RUNTIME, ErrorKind.MEMORY})


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
        self._discovery_window_s = discovery_window_s
        self._browser: Browser | None = None
        self._state = ClientState.NEW
        self._aliases: set[str] = set()  # addresses that turned out to be a known node
        # node id -> the name it last showed (for jobs whose node is gone, or has a new id)
        self._names: dict[str, str] = {}
        self._heartbeat_s = heartbeat_s
        self._dead_after_s = dead_after_s
        # node id -> the highest incarnation its nodes' gossip told us (older news is ignored)
        self._incarnations: dict[str, int] = {}
        named = parse_peers(peers) if peers is not None else peers_from_env()
        # No peers anywhere: find this mesh's nodes over mDNS when starting.
        self._discover = not named
        self._links = {f"{h}:{p}": _Link(h, p) for h, p in named}
        self._secret = load_secret(secret)
        self._name = name or f"client-{os.getpid()}"
        self._tag = secrets.token_hex(3)
        # every call and map, and the jobs of other processes waited for
        self.ledger = Ledger(self._tag, self._node_name)
        register_owner(self._tag, self._await_job)  # its Job handles can be awaited
        self._connect_timeout_s = connect_timeout_s
        # Where and when this client's jobs run (with no node reachable for
        # no_nodes_timeout_s, unfinished jobs fail instead of waiting forever).
        self._sched = Scheduler(self._tag, SchedulerConfig(no_nodes_timeout_s=no_nodes_timeout_s))
        self._timer: asyncio.TimerHandle | None = None  # calls tick at the scheduler's wake_at
        self._timer_at: float | None = None
        self._acks: dict[_Link, list[str]] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._requests: dict[int, tuple[asyncio.Future[list[_Heard]], list[_Heard], set[str]]] = {}
        self._req_ids = itertools.count(1)
        self._env_requests: dict[int, asyncio.Future[EnvReport]] = {}  # env_info
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks = TaskSet("client", log)
        self._local_mesh: LocalMesh | None = None  # started by AsyncClient.local()
        self.files = AsyncFiles(self._usable)  # mesh.files over these same links
        self._pushed: set[str] = set()  # _env files already in the store

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
        self.ledger.attach(self._loop, self._enqueue_many, self._kill_soon, self._ask_adopted)
        try:
            await self._start()
        except BaseException:
            if not self._state.closed:
                self._state = ClientState.NEW
            self.ledger.detach()
            if self._browser is not None:
                await self._browser.close()
                self._browser = None
            raise
        self._state = ClientState.RUNNING
        return self

    async def _start(self) -> None:
        if self._discover:
            self._state = ClientState.DISCOVERING
            interfaces = interfaces_from_env() or [a for a in [default_route_ipv4()] if a]
            # The browser stays on: nodes that appear later join (see _node_found).
            self._browser = Browser(self._secret, interfaces, self._node_found)
            await self._browser.start()
            await self._browser.settle(self._discovery_window_s)
            adverts = list(self._browser.found.values())
            if not adverts:
                raise NoNodesAvailable(
                    f"no lanmesh node of this mesh answered on {', '.join(interfaces) or 'no interface'}"
                    f" within {self._discovery_window_s:g} s (set MESH_PEERS to name nodes)"
                )
        links = list(self._links.values())
        self._state = ClientState.STARTING  # nodes learned from now on connect by themselves
        errors, later = await self._connect_first(links)
        if not any(lk.usable for lk in links):
            auth = [e for e in errors if isinstance(e, AuthenticationError)]
            if auth:
                raise auth[0]
            raise NoNodesAvailable(
                "no node reachable: "
                + "; ".join(str(e) for e in errors if isinstance(e, Exception))
            )
        for link in links:
            if link.usable:
                self._node_up(link)
            elif link not in later:  # (those still connecting join in _join_later)
                log.warning("%s: %s", link.key, link.error)
                self._spawn(self._reconnect(link))
        self._spawn(self._heartbeat())

    async def _connect_first(self, links: list[_Link]) -> tuple[list[BaseException], set[_Link]]:
        """Connect to every candidate at once and return when one is usable and the rest
        had CONNECT_GRACE_S more, or when all failed: a silent candidate (a fake advert
        that copies a node's record and holds the socket) never holds up the start.

        Returns the failures and the links still connecting, which carry on in the
        background and join when ready, like a node found later (_join)."""
        assert self._loop is not None
        tasks = {self._loop.create_task(self._connect(lk)): lk for lk in links}
        pending = set(tasks)
        errors: list[BaseException] = []
        deadline: float | None = None
        try:
            while pending:
                wait_s = None if deadline is None else max(0.0, deadline - self._loop.time())
                done, pending = await asyncio.wait(
                    pending, timeout=wait_s, return_when=asyncio.FIRST_COMPLETED
                )
                errors += [exc for t in done if (exc := t.exception()) is not None]
                if not done:
                    break  # the grace is over
                if deadline is None and any(lk.usable for lk in links):
                    deadline = self._loop.time() + CONNECT_GRACE_S
        except BaseException:
            for t in pending:
                t.cancel()
            raise
        for t in pending:
            self._spawn(self._join_later(t, tasks[t]))
        return errors, {tasks[t] for t in pending}

    async def _join_later(self, connecting: asyncio.Task[None], link: _Link) -> None:
        try:
            await connecting
        except MeshError as exc:
            log.warning("%s: %s", link.key, exc)
            self._spawn(self._reconnect(link))
            return
        if link.usable:
            self._node_up(link)

    def _node_found(self, advert: Advert) -> None:
        """The browser heard of a node of this mesh."""
        self._learn(advert.host, advert.port)

    def _learn(self, host: str, port: int) -> None:
        """A node found by mDNS or named by a node's Peers; once connecting, it joins now."""
        key = f"{host}:{port}"
        if key in self._links or key in self._aliases or self._state.closed:
            return
        link = self._links[key] = _Link(host, port)
        if self._state in (ClientState.STARTING, ClientState.RUNNING):
            self._spawn(self._join(link))

    async def _join(self, link: _Link) -> None:
        try:
            await self._connect(link)
        except MeshError as exc:
            log.warning("node %s found but not reachable: %s", link.key, exc)
            self._spawn(self._reconnect(link))
            return
        assert link.conn is not None
        if any(lk is not link and lk.node_id == link.node_id for lk in self._links.values()):
            # Another address of a node we already use (a node names itself as it sees fit).
            del self._links[link.key]
            self._aliases.add(link.key)
            conn, link.conn = link.conn, None  # so that its close is no loss to _on_close
            conn.close()
            return
        self._node_up(link)

    async def _heartbeat(self) -> None:
        """A cheap liveness check of the links this client uses, besides the mesh's word.

        The nodes' gossip tells this client of members that join and die (Members, see
        _members), so no link needs a heartbeat to learn of deaths. Pings remain where
        gossip cannot speak: a link with our jobs in flight is pinged each heartbeat
        (a node cut off from this client alone, or a one-node mesh, has nobody to declare
        it dead), an idle one every IDLE_PING_S (so the node keeps it). A link whose
        Ping has had no answer, nor any other frame, for dead_after_s is lost and its
        jobs placed again. mDNS records linger for minutes: liveness never comes from it.
        """
        assert self._loop is not None
        async for on_time in heartbeats(self._heartbeat_s, lambda: not self._state.closed):
            now = self._loop.time()
            for link in list(self._links.values()):
                conn = link.conn
                if conn is None or conn.closed:
                    continue
                since = link.unanswered_since
                if since is not None and conn.last_alive >= since:
                    since = link.unanswered_since = None  # it answered (or sent anything)
                # on_time: our own loop was not stalled, so what it sent has been read.
                if since is not None and on_time and now - since > self._dead_after_s:
                    conn.abort(ConnectionLost(f"node {link.name} ({link.key}) missed "
                                              f"heartbeats for {self._dead_after_s:g} s"))  # fmt: skip
                    continue
                busy = bool(self._sched.in_flight(link.key))
                if busy or now - link.pinged_at >= IDLE_PING_S:
                    link.pinged_at = now
                    if since is None:
                        link.unanswered_since = now
                    with contextlib.suppress(MeshError):
                        conn.send(Ping(now))

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
        if self._browser is not None:
            await self._browser.close()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        if self._timer is not None:
            self._timer.cancel()
        self._flush_acks()  # so nodes may expire what we hold after their TTL, not a day
        await self.files.close()
        # A connect that had just finished may swallow its cancellation: wait for
        # every task first, so the loop below sees every connection.
        await self._tasks.close()
        for link in self._links.values():
            if link.conn is not None and not link.conn.closed:
                try:
                    link.conn.send(Goodbye("client closing"))
                except MeshError:
                    pass
                link.conn.close()
        if self._local_mesh is not None:
            await asyncio.to_thread(self._local_mesh.close)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    async def _connect(self, link: _Link) -> None:
        # The node's first message (Load) may arrive before open_connection returns.
        link.loaded = loaded = asyncio.Event()
        link.workers = 0
        try:
            conn = await open_connection(
                link.host,
                link.port,
                self._secret,
                name=self._name,
                timeout_s=self._connect_timeout_s,
                on_message=lambda c, m: self._on_message(link, c, m),
                on_close=lambda c, r: self._on_close(link, c, r),
            )
        except MeshError as exc:
            link.error = exc
            raise
        link.conn = conn
        if not loaded.is_set():  # else its Load came first, with the name it shows now
            link.name = conn.peer_name or link.key
        link.node_id = conn.peer_id
        self._names[conn.peer_id] = link.name
        link.sent_funcs = set()
        link.error = None
        # link.workers is set by the node's first message (Load), which follows at once.
        try:
            await asyncio.wait_for(loaded.wait(), self._connect_timeout_s)
        except asyncio.TimeoutError:
            pass
        if conn.closed or link.workers == 0:
            link.error = conn.close_reason or MeshConnectionError(f"{link.key} sent no load report")
            raise link.error

    async def _reconnect(self, link: _Link) -> None:
        while not self._state.closed and not link.usable:
            await asyncio.sleep(RECONNECT_S)
            try:
                await self._connect(link)
            except MeshError:
                continue
            self._node_up(link)

    # ---- messages from nodes ----

    def _on_message(self, link: _Link, conn: Connection, msg: Message) -> None:
        if isinstance(msg, Results):
            self._on_results(link, msg)
        elif isinstance(msg, Load):
            link.workers, link.running, link.queued = msg.workers, msg.running, msg.queued
            link.name = msg.name or link.name
            if conn.peer_id:
                self._names[conn.peer_id] = link.name
            if link.loaded is not None:
                link.loaded.set()
            self._apply(self._sched.load(link.key, time.time(), workers=msg.workers,
                                         running=msg.running, queued=msg.queued, name=link.name))  # fmt: skip
        elif isinstance(msg, Records):
            entry = self._requests.get(msg.req)
            if entry is not None:
                fut, records, waiting = entry
                records.extend(_Heard(link, r) for r in msg.records)
                waiting.discard(link.key)
                if not waiting:
                    del self._requests[msg.req]
                    if not fut.done():
                        fut.set_result(records)
        elif isinstance(msg, Pong):
            link.running, link.queued = msg.running, msg.queued
            self._apply(self._sched.load(link.key, time.time(), running=msg.running,
                                         queued=msg.queued))  # fmt: skip
        elif isinstance(msg, Handback):
            self._handed_back(link, msg)
        elif isinstance(msg, Started):
            for jid in msg.jids:  # each job's own call or map: Submits may mix several
                self.ledger.started(jid)
        elif isinstance(msg, Members):
            self._members(link, conn, msg)
        elif isinstance(msg, Peers):
            for host, port in parse_peers(msg.addrs, strict=False):
                self._learn(host, port)
        elif isinstance(msg, EnvReport):
            env_fut = self._env_requests.pop(msg.req, None)
            if env_fut is not None and not env_fut.done():
                env_fut.set_result(msg)
        elif isinstance(msg, Goodbye):
            conn.close()
        else:
            self.files.handle(conn, msg)  # mesh.files replies and chunks

    def _members(self, link: _Link, conn: Connection, msg: Members) -> None:
        """What a node's gossip says of the mesh: connect to members that join or come
        back; drop the link to a member declared dead (its jobs are placed again, and
        the link reconnects by itself if it wakes). A member that left is not dropped
        here: it still delivers the results of the jobs it runs, then closes its links."""
        told_by = f"node {link.name} ({link.key})"
        try:
            updates = [Update.from_wire(raw, told_by) for raw in msg.updates]
        except RemoteProtocolError as exc:
            log.warning("%s; closing that link", exc)
            conn.abort(exc)
            return
        for u in updates:
            if u.incarnation < self._incarnations.get(u.node_id, -1):
                continue  # older news than what we heard already
            self._incarnations[u.node_id] = u.incarnation
            if u.state <= MemberState.SUSPECT:  # suspects still take work
                for host, port in parse_peers((u.address,), strict=False):
                    self._learn(host, port)
            elif u.state == MemberState.DEAD:
                for lk in list(self._links.values()):
                    if lk.node_id == u.node_id and lk.conn is not None and not lk.conn.closed:
                        self._declared_dead(lk, lk.conn, told_by)

    def _declared_dead(self, link: _Link, conn: Connection, told_by: str) -> None:
        """Gossip declared the node of ``link`` dead: drop the link, unless the node spoke
        to us a moment ago (SWIM needs seconds of silence; a node that was only slow to
        answer its peers' probes): then our own ping decides, within dead_after_s."""
        assert self._loop is not None
        now = self._loop.time()
        if now - conn.last_alive < DOUBT_S:
            log.info("node %s (%s) declared dead by the mesh (told by %s) but heard from "
                     "%.1f s ago: checking it ourselves", link.name, link.key, told_by,
                     now - conn.last_alive)  # fmt: skip
            link.pinged_at = now
            if link.unanswered_since is None:
                link.unanswered_since = now
            with contextlib.suppress(MeshError):
                conn.send(Ping(now))
            return
        conn.abort(ConnectionLost(f"node {link.name} ({link.key}) declared dead by the "
                                  f"mesh's gossip (no answer to its probes; told by {told_by})"))  # fmt: skip

    def _on_results(self, link: _Link, msg: Results) -> None:
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
            self._ack(link, adopted)
        if outcomes:
            out = self._sched.results(link.key, outcomes, now, running=msg.running,
                                      queued=msg.queued, avg_run_s=msg.avg_run_s)  # fmt: skip
            self._apply(out, mine)

    def _handed_back(self, link: _Link, msg: Handback) -> None:
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
        self._apply(self._sched.handed_back(link.key, nums, time.time(), leaving=not msg.recall))

    def _ack(self, link: _Link, jids: list[str]) -> None:
        """Acknowledge results in batches: one Ack per link every ACK_DELAY_S at most."""
        self._acks.setdefault(link, []).extend(jids)
        if self._ack_timer is None and self._loop is not None:
            self._ack_timer = self._loop.call_later(ACK_DELAY_S, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_timer = None
        acks, self._acks = self._acks, {}
        for link, jids in acks.items():
            if link.conn is not None and not link.conn.closed:
                link.conn.send(Ack(tuple(jids)))

    def _on_close(self, link: _Link, conn: Connection, reason: BaseException | None) -> None:
        if conn is not link.conn:
            return
        link.error = reason
        for req, (fut, records, waiting) in list(self._requests.items()):
            if link.key in waiting:
                waiting.discard(link.key)
                if not waiting:
                    del self._requests[req]
                    if not fut.done():
                        fut.set_result(records)
        if not self._state.closed:
            out = self._sched.node_lost(link.key, str(reason), time.time())
            lost = sum(1 for ins in out if isinstance(ins, Lost))
            if lost:
                log.warning("lost %s (%s); %d jobs lost an attempt", link.name, reason, lost)
            self._apply(out)
            self._spawn(self._reconnect(link))

    # ---- carrying out the scheduler's instructions ----

    def _node_up(self, link: _Link) -> None:
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
                link = self._links.get(ins.node)
                self.ledger.accept(ins.nums, items, link.node_id if link is not None else "")
            elif isinstance(ins, AckResults):
                link = self._links.get(ins.node)
                if link is not None:  # (an Ack comes with the results it acknowledges)
                    if items is not None:
                        self._ack(link, [items[n].jid for n in ins.nums])
                    else:
                        self._ack(link, [self._sched.jid(n) for n in ins.nums])
            elif isinstance(ins, Lost):
                lost_on = self._links.get(ins.key)
                self.ledger.lost(ins.num, ins.attempts, lost_on.node_id if lost_on else "")
            elif isinstance(ins, Fail):
                self.ledger.fail_nums(ins.nums, ins.info)
            elif isinstance(ins, Stop | RecallJobs):
                link = self._links.get(ins.node)
                if link is not None and link.conn is not None and not link.conn.closed:
                    jids = tuple(self._sched.jid(n) for n in ins.nums)
                    link.conn.send(Kill(jids) if isinstance(ins, Stop) else Recall(jids))
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
        link = self._links[ins.node]
        conn = link.conn
        if conn is None or conn.closed:  # its close is on its way: not sent, no attempt lost
            self._apply(self._sched.handed_back(ins.node, ins.nums, time.time()))
            return
        func, jobs = self.ledger.take(ins.nums, dropped)
        if func is None or not jobs:
            return
        w = ins.work
        for start in range(0, len(jobs), SUBMIT_BATCH):
            batch = jobs[start : start + SUBMIT_BATCH]
            fresh = w.fhash not in link.sent_funcs
            link.sent_funcs.add(w.fhash)
            conn.send(
                Submit(w.fhash, func.blob if fresh else b"", w.name,
                       tuple((j.jid, j.args) for j in batch),  # type: ignore[misc]  # read above
                       w.cores, w.label, w.max_runtime_s, retry=ins.retry, env=w.env,
                       notify_start=w.notify_start, priority=w.priority,
                       kill_process=w.kill_process)
            )  # fmt: skip

    async def _ask_runs(self, ins: AskRuns) -> None:
        """A speculative map wants run times: ask the node, answer the scheduler."""
        link = self._links.get(ins.node)
        if link is None or not link.usable:
            return
        try:
            heard = await self._query([link], tuple(self._sched.jid(n) for n in ins.nums))
        except MeshError:
            return
        found = [(h.record, self.ledger.num(h.record.jid)) for h in heard]
        got = [Run(num, r.state, r.started, r.finished) for r, num in found if num is not None]
        if not self._state.closed:
            self._apply(self._sched.runs(ins.node, got, time.time()))

    def _enqueue(self, func: Func) -> None:
        """Loop thread: queue a prepared call or map and place what can be placed now."""
        self._enqueue_many([func])

    def _enqueue_many(self, funcs: Iterable[Func]) -> None:
        """Loop thread: give prepared calls and maps to the scheduler (in order) once it
        can place them; calls made in a burst go out together."""
        ready = []
        for func in funcs:
            if func.push:
                self._spawn(self._enqueue_after_push(func))  # first: the _env's local files
            elif func.files and func.prefer is None:
                self._spawn(self._enqueue_near_files(func))  # first: which nodes hold them
            else:
                after = self._pending_deps(func)
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
            self._apply(self._sched.submit_all(ready, time.time()))

    def _pending_deps(self, func: Func) -> tuple[int, ...] | None:
        """Loop thread: the numbers of ``func``'s dependencies not final yet (those done are
        met). None: one failed, was killed or is not this client's, and ``func`` failed
        whole with DependencyFailed naming it."""
        pending: list[int] = []
        for jid in func.after:
            num = self.ledger.num(jid)
            found = self.ledger.locate_num(num) if num is not None and num < func.start else None
            if found is None:
                why = (f"it depends on job {jid}, which this client does not know (only "
                       "its own earlier jobs can be waited for)")  # fmt: skip
            elif not found[0].is_final(found[1]):
                pending.append(found[0].start + found[1])
                continue
            else:
                dep = found[0].job(self.ledger.tag, found[1])
                if dep.state == DONE:
                    continue
                failed = dep.error or ErrorInfo(ErrorKind.RAISED, "JobError", "failed")
                why = dependency_failed(jid, failed)
            self._fail_unsent(func, ErrorInfo(ErrorKind.DEPENDENCY, "DependencyFailed", why))
            return None
        return tuple(pending)

    def _fail_unsent(self, func: Func, error: ErrorInfo) -> None:
        """A call or map the scheduler never saw fails whole (its _env could not be pushed,
        or a job it depends on failed); the scheduler fails what was held for it."""
        self.ledger.fail_unsent(func, error)
        self._apply(self._sched.dropped(range(func.start, func.start + func.n), time.time(), error))

    async def _enqueue_after_push(self, func: Func) -> None:
        """Push the local wheels of an ``_env`` through mesh.files (once per client and
        hash; the nodes then fetch them by hash), then queue the jobs."""
        for path, name in func.push:
            if name in self._pushed:
                continue
            try:
                if not await self.files.exists(name):
                    await self.files.put(path, name)
            except MeshError as exc:
                msg = f"_env: could not push {path} through mesh.files: {exc}"
                self._fail_unsent(func, ErrorInfo(ErrorKind.ENV_BUILD, "EnvBuildFailed", msg))
                return
            self._pushed.add(name)
        func.push = ()
        self._enqueue(func)

    async def _enqueue_near_files(self, func: Func) -> None:
        """Learn which nodes hold the jobs' ``_files`` (a placement tie-breaker), then queue."""
        try:
            func.prefer = await self.files.holder_keys(func.files, self._usable())
        except MeshError:
            func.prefer = frozenset()  # no preference: the job still runs
        self._enqueue(func)

    def _kill_soon(self, jids: list[str]) -> None:
        """Loop thread: kill jobs handed over by ``Ledger.kill_soon`` (a future's cancel)."""
        if not self._state.closed:
            self._spawn(self.kill(jids))  # owned by the client: close() awaits it

    async def _ask_adopted(self, jids: tuple[str, ...]) -> dict[str, tuple[str, int]]:
        """Ask every node about ids of other processes and have their results sent here
        (watch): the node id and state of each id a node knows, a finished copy first."""
        known: dict[str, tuple[str, int]] = {}
        for heard in await self._query(self._usable(), jids, watch=True):
            jid, state = heard.record.jid, heard.record.state
            if jid not in known or state >= DONE:
                known[jid] = (heard.link.node_id, state)
        return known

    def _usable(self) -> list[_Link]:
        return [lk for lk in self._links.values() if lk.usable]

    async def _query(
        self, links: list[_Link], jids: tuple[str, ...], watch: bool = False
    ) -> list[_Heard]:
        """The records ``links`` hold of ``jids``, each with the link it came from."""
        if not links or not jids:
            return []
        assert self._loop is not None
        req = next(self._req_ids)
        fut: asyncio.Future[list[_Heard]] = self._loop.create_future()
        self._requests[req] = (fut, [], {lk.key for lk in links})
        for lk in links:
            assert lk.conn is not None
            lk.conn.send(Query(req, jids, watch))
        try:
            return await asyncio.wait_for(fut, self._connect_timeout_s)
        except asyncio.TimeoutError:
            self._requests.pop(req, None)
            raise MeshConnectionError(
                f"nodes did not answer a query about {len(jids)} jobs"
            ) from None

    # ---- the API ----

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Job[T]:
        """Run ``fn(*args, **kwargs)`` on the mesh; return its job id (awaitable) at once."""
        func, (jid,) = self.ledger.prepare(fn, [args], kwargs)
        self._enqueue(func)
        return jid

    async def map(
        self, fn: Callable[..., T], /, *sequences: Iterable[Any], **kwargs: Any
    ) -> list[Job[T]]:
        """Like builtin ``map``: one job per item; return the job ids (awaitable) at once."""
        if not sequences:
            raise TypeError("map() needs at least one sequence")
        func, jids = self.ledger.prepare(
            fn, zip(*sequences, strict=False), kwargs, count_items(sequences)
        )
        self._enqueue(func)
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
        by_link: dict[_Link, list[str]] = {}
        for j in jobs:
            if j.state == PROCESSING:  # the node knows better: queued there, or done already
                link = self._where(j)
                if link is not None and link.usable:
                    by_link.setdefault(link, []).append(j.jid)
        heard = await self._records(by_link)
        names = []
        for j in jobs:
            state = j.state
            if not j.final and j.jid in heard and state == PROCESSING:
                state = heard[j.jid].record.state
            names.append(JOB_STATES[state])
        return names[0] if isinstance(jids, str) else names

    async def _records(self, by_link: dict[_Link, list[str]]) -> dict[str, _Heard]:
        """Ask each link about its jobs, all at once: the records heard, by job id. A
        node that is lost or does not answer meanwhile leaves its jobs out."""
        asked = list(by_link.items())
        answers = await asyncio.gather(
            *(self._query([link], tuple(ids)) for link, ids in asked), return_exceptions=True
        )
        heard: dict[str, _Heard] = {}
        for (link, _), answer in zip(asked, answers, strict=True):
            if isinstance(answer, MeshError):
                log.info("node %s (%s) did not answer about jobs: %s", link.name, link.key, answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                heard.update((h.record.jid, h) for h in answer)
        return heard

    def _where(self, j: JobEntry) -> _Link | None:
        """The link to the node that runs job ``j`` (or ran it last)."""
        if j.func is not None and not j.final:
            key = self._sched.node_of(int(j.jid.rpartition("-")[2]))
            if key:
                return self._links.get(key)
        return self._link_of(j.node)

    def _link_of(self, node_id: str) -> _Link | None:
        """The link to node ``node_id`` (reachable or not), if this client has one."""
        return next((lk for lk in self._links.values() if lk.node_id == node_id and node_id), None)

    def _node_name(self, node_id: str) -> str:
        """The name node ``node_id`` last showed this client (its id if it never did)."""
        return self._names.get(node_id, node_id)

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
                for lk in self._usable():
                    by_link.setdefault(lk.key, []).append(j.jid)
        if mine:
            self._apply(self._sched.kill(mine, time.time()))
        for key, asked in by_link.items():
            conn = self._links[key].conn
            if conn is not None and not conn.closed:
                conn.send(Kill(tuple(asked)))
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
        by_link: dict[_Link, list[str]] = {}
        for j in jobs:
            link = self._where(j)
            if link is not None and link.usable:
                by_link.setdefault(link, []).append(j.jid)
        heard = await self._records(by_link)
        out = [self._info(j, heard.get(j.jid)) for j in jobs]
        return out[0] if isinstance(jids, str) else out

    def _info(self, j: JobEntry, heard: _Heard | None) -> JobInfo:
        """``mesh.info`` of one job: its node's record, or what this client knows."""
        kind = j.error.kind if j.final and j.error is not None else ""
        if heard is not None:
            link, r = heard
            died_last = kind == ErrorKind.WORKER_DIED or (
                r.state == ERROR and r.error.startswith("WorkerDied")
            )
            attempts = runs(max(j.attempts, r.attempts), bool(r.started), died_last)
            info = JobInfo.from_record(r, link.node_id, attempts)
            if j.final and j.error is not None and j.error.tb_data is not None:  # our source
                info = replace(info, error=traceback_text(j.error))
            return info
        started = j.state == DONE or kind in _RAN_KINDS
        func, k = j.func, 0
        if func is not None:
            k = self.ledger.index(j)
        err = ""
        if j.error is not None:
            err = traceback_text(j.error) or f"{j.error.type_name}: {j.error.message}"
        return JobInfo(
            j.jid, JOB_STATES[max(j.state, QUEUED)], self._node_name(j.node) if j.node else "",
            func.name if func is not None else "", j.label,
            func.submitted if func is not None else 0.0, None,
            func.came_at(k) if func is not None and j.final else None, 0.0, "", "", err,
            runs(j.attempts, started, kind == ErrorKind.WORKER_DIED), node_id=j.node,
            # a node ran it (or holds it) but no reachable node has its record now
            record_lost=bool(j.node) and j.state != QUEUED,
        )  # fmt: skip

    def nodes(self) -> list[NodeInfo]:
        """The nodes this client knows, by name."""
        out = [
            NodeInfo(lk.name, lk.node_id, lk.key, lk.workers, lk.running, lk.queued, lk.usable)
            for lk in self._links.values()
        ]
        return sorted(out, key=lambda n: (n.name, n.node_id, n.address))

    async def env_info(self) -> list[EnvInfo]:
        """The job environments (``_env``) of every reachable node: requirements, status,
        size, last use, builds, and for a failed build pip's last lines."""
        infos, _ = await self._env_query(())
        return infos

    async def rebuild_env(self, *what: str) -> list[EnvRebuild]:
        """Drop the environments ``what`` names (key prefixes, requirements, project names,
        pushed or local wheel files) on every node, so their next job builds them again;
        a failed build is forgotten. Those building or in use are left alone."""
        reqs, _ = env_requirements(list(what))  # a local wheel: by hash, as _env sends it
        _, done = await self._env_query(tuple(reqs))
        return done

    async def _env_query(self, rebuild: tuple[str, ...]) -> tuple[list[EnvInfo], list[EnvRebuild]]:
        links = self._usable()
        if not links:
            raise NoNodesAvailable("no node is reachable to ask about its environments")
        assert self._loop is not None
        asked: dict[int, tuple[_Link, asyncio.Future[EnvReport]]] = {}
        for lk in links:
            assert lk.conn is not None
            req = next(self._req_ids)
            fut: asyncio.Future[EnvReport] = self._loop.create_future()
            self._env_requests[req] = fut
            asked[req] = (lk, fut)
            lk.conn.send(EnvQuery(req, rebuild))
        try:
            await asyncio.wait([f for _, f in asked.values()], timeout=self._connect_timeout_s)
        finally:
            for req in asked:
                self._env_requests.pop(req, None)
        missing = [lk.name for lk, f in asked.values() if not f.done()]
        if missing:  # a node lost meanwhile, or too busy to answer
            raise MeshConnectionError(f"{', '.join(missing)} did not answer about environments")
        reports = [(lk.name, f.result()) for lk, f in asked.values()]
        infos = [EnvInfo(node, *r) for node, report in reports for r in report.envs]
        infos.sort(key=lambda e: (e.node, -e.last_used, e.key))
        done = [EnvRebuild(node, *d) for node, report in reports for d in report.rebuilt]
        return infos, done

    @property
    def closed(self) -> bool:
        return self._state.closed

    @property
    def state(self) -> ClientState:
        """Where the client is in its life: NEW, DISCOVERING, STARTING, RUNNING, CLOSING,
        CLOSED."""
        return self._state
