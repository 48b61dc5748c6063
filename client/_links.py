"""The client's connections to nodes: one :class:`NodeLink` per node, found by mDNS,
gossip or named, kept up from start, heartbeated; and what is asked of nodes over them
(job records, environments) and acknowledged (results).

:class:`ClientLinks` owns the links and the discovery browser. It tells its client three
things: a node is usable (``on_up``), a node is lost (``on_lost``), and every message it
does not answer itself (``on_message``: results, loads, hand-backs, starts, files). Its
connections are the link pool's (mesh/_link.py ``Links``), which keeps each node's link
up (``Links.keep``: reconnects with the ``Backoff`` after a failure or a loss); the
client's ready hook waits for the node's first load report, so a node is usable once
it said how many workers it offers. A ``NodeLink`` is what the client's scheduler needs
of a node (load, functions sent, pings, names); the heartbeat (pings of busy links) is
the client's liveness policy, not the link's.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any, NamedTuple

from mesh.client._ledger import JobEntry
from mesh.client._lifecycle import ClientState
from mesh.client._records import EnvInfo, EnvRebuild, NodeInfo
from mesh.client._scheduler import Work

from mesh._connection import Connection, heartbeats
from mesh._discovery import Advert, Browser, interfaces_from_env, parse_peers
from mesh._gossip import State, Update
from mesh._link import Link, Links
from mesh._netif import default_route_ipv4
from mesh._protocol import (
    Ack,
    EnvQuery,
    EnvReport,
    Goodbye,
    JobRecord,
    Load,
    Members,
    Message,
    Peers,
    Ping,
    Pong,
    Query,
    Records,
    Submit,
)
from mesh.errors import (
    AuthenticationError,
    ConnectionLost,
    MeshConnectionError,
    MeshError,
    NoNodesAvailable,
    RemoteProtocolError,
)

__all__ = ["ClientLinks", "Heard", "NodeLink"]

log = logging.getLogger("mesh.client")

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
SUBMIT_BATCH = 4096  # jobs per Submit message, at most


class NodeLink:
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
        self.loaded_on: Connection | None = None  # the connection its last Load came on
        self.loaded: asyncio.Event | None = None  # set by a Load while a connect waits
        self.pinged_at = 0.0  # loop time of our last Ping
        self.unanswered_since: float | None = None  # our first Ping not answered yet
        self.learned = False  # found by mDNS or gossip (maybe a known node's other address)

    @property
    def usable(self) -> bool:
        return self.conn is not None and not self.conn.closed and self.workers > 0

    def send(self, msg: Message) -> bool:
        """Send ``msg`` if connected; False if not (its close is on its way)."""
        if self.conn is None or self.conn.closed:
            return False
        self.conn.send(msg)
        return True

    def submit(self, work: Work, blob: bytes, jobs: Sequence[JobEntry], retry: bool) -> None:
        """Send ``jobs`` (their arguments read) in Submits of at most SUBMIT_BATCH, with
        the function's ``blob`` the first time this connection gets ``work``'s function."""
        assert self.conn is not None
        for start in range(0, len(jobs), SUBMIT_BATCH):
            batch = jobs[start : start + SUBMIT_BATCH]
            fresh = work.fhash not in self.sent_funcs
            self.sent_funcs.add(work.fhash)
            self.conn.send(
                Submit(work.fhash, blob if fresh else b"", work.name,
                       tuple((j.jid, j.args) for j in batch),  # type: ignore[misc]  # read
                       work.cores, work.label, work.max_runtime_s, retry=retry, env=work.env,
                       notify_start=work.notify_start, priority=work.priority,
                       kill_process=work.kill_process)
            )  # fmt: skip


class Heard(NamedTuple):
    """A job record, and the link to the node that sent it."""

    link: NodeLink
    record: JobRecord


class ClientLinks:
    """Every node this client knows, by address (``by_key``), and how it reaches them."""

    def __init__(
        self,
        named: Iterable[tuple[str, int]],
        secret: bytes,
        name: str,
        *,
        lifecycle: Callable[[], ClientState],
        spawn: Callable[[Coroutine[Any, Any, Any]], None],
        on_up: Callable[[NodeLink], None],
        on_lost: Callable[[NodeLink, BaseException | None], None],
        on_message: Callable[[NodeLink, Connection, Message], None],
        busy: Callable[[str], bool],
        connect_timeout_s: float,
        discovery_window_s: float,
        heartbeat_s: float,
        dead_after_s: float,
    ) -> None:
        self.by_key = {f"{h}:{p}": NodeLink(h, p) for h, p in named}
        # No peers named: find this mesh's nodes over mDNS when starting.
        self.discover = not self.by_key
        self._secret, self._name = secret, name
        self._lifecycle, self._spawn = lifecycle, spawn
        self._on_up, self._on_lost, self._on_message = on_up, on_lost, on_message
        self._busy = busy  # whether this client has jobs on the node of a link key
        self._connect_timeout_s = connect_timeout_s
        self._discovery_window_s = discovery_window_s
        self._heartbeat_s, self._dead_after_s = heartbeat_s, dead_after_s
        self._browser: Browser | None = None
        self._aliases: set[str] = set()  # addresses that turned out to be a known node
        # node id -> the name it last showed (for jobs whose node is gone, or has a new id)
        self._names: dict[str, str] = {}
        # node id -> the highest incarnation its nodes' gossip told us (older news is ignored)
        self._incarnations: dict[str, int] = {}
        self._acks: dict[NodeLink, list[str]] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._requests: dict[int, tuple[asyncio.Future[list[Heard]], list[Heard], set[str]]] = {}
        self._req_ids = itertools.count(1)
        self._env_requests: dict[int, asyncio.Future[EnvReport]] = {}  # env_info
        self._pool: Links | None = None  # made in the loop, at the first connect
        self._progress = asyncio.Event()  # a link became ready or failed (connect_all)

    def _links(self) -> Links:
        """The link pool that makes this client's connections (created on first use)."""
        if self._pool is None:
            self._pool = Links(
                self._secret, self._name, on_message=self._pool_message,
                on_close=self._pool_closed, on_fail=self._pool_failed,
                connect_timeout_s=self._connect_timeout_s,
            )  # fmt: skip
        return self._pool

    def _pool_message(self, link: Link, conn: Connection, msg: Message) -> None:
        node = self.by_key.get(link.address)
        if node is not None:
            self._handle(node, conn, msg)

    def _pool_closed(self, link: Link, conn: Connection, reason: BaseException | None) -> None:
        node = self.by_key.get(link.address)
        if node is not None:
            if node.loaded is not None:  # a connect waiting for its Load: it will not come
                node.loaded.set()
            self._closed(node, conn, reason)

    def _pool_failed(self, link: Link, exc: BaseException) -> None:
        """A connect to a kept node link failed, or its node sent no load report (the
        pool tries again after its backoff)."""
        node = self.by_key.get(link.address)
        if node is None:
            return
        node.error = exc
        if link.failures == 1 and node.conn is None:  # the first failure of a node never up
            log.warning("node %s not reachable (trying again): %s", node.key, exc)
        else:
            log.debug("node %s not reachable (failure %d): %s", node.key, link.failures, exc)
        self._progress.set()

    def _keep(self, node: NodeLink) -> None:
        """Have the pool keep ``node``'s link up (connect now, again when lost)."""
        self._links().keep(node.key, ready=self._ready, on_ready=self._up)

    async def _ready(self, link: Link, conn: Connection) -> bool:
        """The pool's ready hook: a new connection to a node is usable once the node's
        first Load said how many workers it offers (within connect_timeout_s); else it
        is refused (the pool closes it and tries again later)."""
        node = self.by_key.get(link.address)
        if node is None:
            return False
        node.node_id = conn.peer_id
        if node.loaded_on is not conn and not conn.closed:  # no Load came with the handshake
            node.workers = 0
            node.name = conn.peer_name or node.key
            node.loaded = loaded = asyncio.Event()
            try:
                await asyncio.wait_for(loaded.wait(), self._connect_timeout_s)
            except asyncio.TimeoutError:
                pass
            finally:
                node.loaded = None
        self._names[conn.peer_id] = node.name
        if conn.closed or node.loaded_on is not conn or node.workers == 0:
            if isinstance(conn.close_reason, MeshError):
                raise conn.close_reason
            raise MeshConnectionError(f"{node.key} sent no load report")
        return True

    def _up(self, link: Link, conn: Connection) -> None:
        """The pool's on_ready: ``conn`` to a node is usable; a node found again under
        another address (a node names itself as it sees fit) is forgotten instead."""
        node = self.by_key.get(link.address)
        if node is None:
            return
        if node.learned and any(
            other is not node and other.node_id == node.node_id for other in self.by_key.values()
        ):
            del self.by_key[node.key]  # first, so that its close is no loss to _closed
            self._aliases.add(node.key)
            self._links().forget(node.key)
        else:
            node.conn, node.error, node.sent_funcs = conn, None, set()
            self._on_up(node)
        self._progress.set()

    # ---- starting ----

    async def find_nodes(self) -> None:
        """Listen for this mesh's nodes over mDNS for the discovery window; the browser
        stays on, so nodes that appear later join. NoNodesAvailable if none answered."""
        interfaces = interfaces_from_env() or [a for a in [default_route_ipv4()] if a]
        self._browser = Browser(self._secret, interfaces, self._node_found)
        await self._browser.start()
        await self._browser.settle(self._discovery_window_s)
        if not self._browser.found:
            raise NoNodesAvailable(
                f"no lanmesh node of this mesh answered on {', '.join(interfaces) or 'no interface'}"
                f" within {self._discovery_window_s:g} s (set MESH_PEERS to name nodes)"
            )

    async def connect_all(self) -> None:
        """Keep a link to every node known; return once one is usable and the others had
        CONNECT_GRACE_S more (a silent candidate, such as a fake advert that copies a
        node's record and holds the socket, never holds up the start; those still
        connecting join in the background, like a node found later), or raise why none
        is once each was tried. A start that fails keeps no link."""
        nodes = list(self.by_key.values())
        try:
            for node in nodes:
                self._keep(node)
            await self._first_usable(nodes)
        except BaseException:
            for key in list(self.by_key):  # (nodes learned meanwhile too)
                self._links().forget(key)
            raise
        self._spawn(self._heartbeat())

    async def _first_usable(self, nodes: list[NodeLink]) -> None:
        loop = asyncio.get_running_loop()
        pool = self._links()

        def tried(node: NodeLink) -> bool:
            link = pool.get(node.key)
            return link is None or link.failures > 0

        deadline: float | None = None
        while True:
            now = loop.time()
            if deadline is None and any(n.usable for n in nodes):
                deadline = now + CONNECT_GRACE_S
            if all(n.usable or tried(n) for n in nodes):
                break
            if deadline is not None and now >= deadline:
                break  # the grace is over
            self._progress.clear()
            try:
                await asyncio.wait_for(
                    self._progress.wait(), None if deadline is None else deadline - now
                )
            except asyncio.TimeoutError:
                pass
        if any(n.usable for n in nodes):
            return
        errors = [n.error for n in nodes if n.error is not None]
        auth = [e for e in errors if isinstance(e, AuthenticationError)]
        if auth:
            raise auth[0]
        raise NoNodesAvailable("no node reachable: " + "; ".join(str(e) for e in errors))

    def _node_found(self, advert: Advert) -> None:
        """The browser heard of a node of this mesh."""
        self.learn(advert.host, advert.port)

    def learn(self, host: str, port: int) -> None:
        """A node found by mDNS or named by a node's Peers; once connecting, it joins now."""
        key = f"{host}:{port}"
        state = self._lifecycle()
        if key in self.by_key or key in self._aliases or state.closed:
            return
        node = self.by_key[key] = NodeLink(host, port)
        node.learned = True
        if state in (ClientState.STARTING, ClientState.RUNNING):
            self._keep(node)

    async def _heartbeat(self) -> None:
        """A cheap liveness check of the links this client uses, besides the mesh's word.

        This is the client's liveness policy, not the link's (the pool keeps links up;
        whether a node answers in time is for the client to judge). The nodes' gossip
        tells this client of members that join and die (Members, see _members), so no
        link needs a heartbeat to learn of deaths. Pings remain where
        gossip cannot speak: a link with our jobs in flight is pinged each heartbeat
        (a node cut off from this client alone, or a one-node mesh, has nobody to declare
        it dead), an idle one every IDLE_PING_S (so the node keeps it). A link whose
        Ping has had no answer, nor any other frame, for dead_after_s is lost and its
        jobs placed again. mDNS records linger for minutes: liveness never comes from it.
        """
        loop = asyncio.get_running_loop()
        async for on_time in heartbeats(self._heartbeat_s, lambda: not self._lifecycle().closed):
            now = loop.time()
            for link in list(self.by_key.values()):
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
                if self._busy(link.key) or now - link.pinged_at >= IDLE_PING_S:
                    self.ping(link)

    def ping(self, link: NodeLink) -> None:
        """Ping ``link``'s node: its Pong reports its load, and an answer, or any frame,
        within dead_after_s keeps the link (the heartbeat judges)."""
        conn = link.conn
        if conn is None or conn.closed:
            return
        now = asyncio.get_running_loop().time()
        link.pinged_at = now
        if link.unanswered_since is None:
            link.unanswered_since = now
        with contextlib.suppress(MeshError):
            conn.send(Ping(now))

    # ---- messages ----

    def _handle(self, link: NodeLink, conn: Connection, msg: Message) -> None:
        """What the links answer themselves; the rest goes to the client."""
        if isinstance(msg, Load):
            link.workers, link.running, link.queued = msg.workers, msg.running, msg.queued
            link.name = msg.name or link.name
            link.loaded_on = conn
            if conn.peer_id:
                self._names[conn.peer_id] = link.name
            if link.loaded is not None:
                link.loaded.set()
            self._on_message(link, conn, msg)
        elif isinstance(msg, Pong):
            link.running, link.queued = msg.running, msg.queued
            self._on_message(link, conn, msg)
        elif isinstance(msg, Records):
            entry = self._requests.get(msg.req)
            if entry is not None:
                fut, records, waiting = entry
                records.extend(Heard(link, r) for r in msg.records)
                waiting.discard(link.key)
                if not waiting:
                    del self._requests[msg.req]
                    if not fut.done():
                        fut.set_result(records)
        elif isinstance(msg, Members):
            self._members(link, conn, msg)
        elif isinstance(msg, Peers):
            for host, port in parse_peers(msg.addrs, strict=False):
                self.learn(host, port)
        elif isinstance(msg, EnvReport):
            env_fut = self._env_requests.pop(msg.req, None)
            if env_fut is not None and not env_fut.done():
                env_fut.set_result(msg)
        elif isinstance(msg, Goodbye):
            conn.close()
        else:
            self._on_message(link, conn, msg)

    def _members(self, link: NodeLink, conn: Connection, msg: Members) -> None:
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
            if u.state <= State.SUSPECT:  # suspects still take work
                for host, port in parse_peers((u.address,), strict=False):
                    self.learn(host, port)
            elif u.state == State.DEAD:
                for lk in list(self.by_key.values()):
                    if lk.node_id == u.node_id and lk.conn is not None and not lk.conn.closed:
                        self._declared_dead(lk, lk.conn, told_by)

    def _declared_dead(self, link: NodeLink, conn: Connection, told_by: str) -> None:
        """Gossip declared the node of ``link`` dead: drop the link, unless the node spoke
        to us a moment ago (SWIM needs seconds of silence; a node that was only slow to
        answer its peers' probes): then our own ping decides, within dead_after_s."""
        now = asyncio.get_running_loop().time()
        if now - conn.last_alive < DOUBT_S:
            log.info("node %s (%s) declared dead by the mesh (told by %s) but heard from "
                     "%.1f s ago: checking it ourselves", link.name, link.key, told_by,
                     now - conn.last_alive)  # fmt: skip
            self.ping(link)
            return
        conn.abort(ConnectionLost(f"node {link.name} ({link.key}) declared dead by the "
                                  f"mesh's gossip (no answer to its probes; told by {told_by})"))  # fmt: skip

    def _closed(self, link: NodeLink, conn: Connection, reason: BaseException | None) -> None:
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
        if not self._lifecycle().closed:
            self._on_lost(link, reason)  # (the pool connects it again)

    def ack(self, link: NodeLink, jids: list[str]) -> None:
        """Acknowledge results in batches: one Ack per link every ACK_DELAY_S at most."""
        self._acks.setdefault(link, []).extend(jids)
        if self._ack_timer is None:
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self.flush_acks)

    def flush_acks(self) -> None:
        self._ack_timer = None
        acks, self._acks = self._acks, {}
        for link, jids in acks.items():
            if link.conn is not None and not link.conn.closed:
                link.conn.send(Ack(tuple(jids)))

    # ---- looking up ----

    def usable(self) -> list[NodeLink]:
        return [lk for lk in self.by_key.values() if lk.usable]

    def link_of(self, node_id: str) -> NodeLink | None:
        """The link to node ``node_id`` (reachable or not), if this client has one."""
        return next((lk for lk in self.by_key.values() if lk.node_id == node_id and node_id), None)

    def node_name(self, node_id: str) -> str:
        """The name node ``node_id`` last showed this client (its id if it never did)."""
        return self._names.get(node_id, node_id)

    def nodes(self) -> list[NodeInfo]:
        """The nodes this client knows, by name."""
        out = [
            NodeInfo(lk.name, lk.node_id, lk.key, lk.workers, lk.running, lk.queued, lk.usable)
            for lk in self.by_key.values()
        ]
        return sorted(out, key=lambda n: (n.name, n.node_id, n.address))

    async def query(
        self, links: list[NodeLink], jids: tuple[str, ...], watch: bool = False
    ) -> list[Heard]:
        """The records ``links`` hold of ``jids``, each with the link it came from."""
        if not links or not jids:
            return []
        req = next(self._req_ids)
        fut: asyncio.Future[list[Heard]] = asyncio.get_running_loop().create_future()
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

    async def records(self, by_link: dict[NodeLink, list[str]]) -> dict[str, Heard]:
        """Ask each link about its jobs, all at once: the records heard, by job id. A
        node that is lost or does not answer meanwhile leaves its jobs out."""
        asked = list(by_link.items())
        answers = await asyncio.gather(
            *(self.query([link], tuple(ids)) for link, ids in asked), return_exceptions=True
        )
        heard: dict[str, Heard] = {}
        for (link, _), answer in zip(asked, answers, strict=True):
            if isinstance(answer, MeshError):
                log.info("node %s (%s) did not answer about jobs: %s", link.name, link.key, answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                heard.update((h.record.jid, h) for h in answer)
        return heard

    async def envs(self, rebuild: tuple[str, ...]) -> tuple[list[EnvInfo], list[EnvRebuild]]:
        """Every reachable node's environments, after it drops those ``rebuild`` names."""
        links = self.usable()
        if not links:
            raise NoNodesAvailable("no node is reachable to ask about its environments")
        loop = asyncio.get_running_loop()
        asked: dict[int, tuple[NodeLink, asyncio.Future[EnvReport]]] = {}
        for lk in links:
            assert lk.conn is not None
            req = next(self._req_ids)
            fut: asyncio.Future[EnvReport] = loop.create_future()
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

    # ---- closing ----

    async def stop_listening(self) -> None:
        """Closing, first: no more nodes are found, and results held are acknowledged
        (so nodes may expire them after their TTL, not a day). When the client closes
        (not a start that failed, which may be tried again), no more links are made."""
        if self._pool is not None and self._lifecycle().closed:
            await self._pool.stop_connecting()
        if self._browser is not None:
            await self._browser.close()
            self._browser = None
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        self.flush_acks()

    def goodbye(self) -> None:
        """Closing, last (its tasks are done): say goodbye to every node and close."""
        for link in self.by_key.values():
            if link.conn is not None and not link.conn.closed:
                try:
                    link.conn.send(Goodbye("client closing"))
                except MeshError:
                    pass
                link.conn.close()
