"""The ``mesh-node`` daemon: an asyncio TCP server that runs jobs in its worker pool.

The node carries out what its pure :class:`JobTable` decides: it turns messages from
clients and workers into table events, and the table's instructions into messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO

from mesh.node._config import NodeConfig
from mesh.node._console import running_output
from mesh.node._console_web import console_answer
from mesh.node._dashboard import Dashboard, jobs_reply
from mesh.node._env_pools import ENV_WID_STRIDE, EnvPools
from mesh.node._envs import EnvBuildError, EnvCache, normalise
from mesh.node._files import FILE_MESSAGES, FILES_LINK, FileService
from mesh.node._job_types import (
    Deliver,
    Dispatch,
    Func,
    HandBack,
    Instruction,
    KillWorker,
    Notify,
    RetireWorker,
)
from mesh.node._jobs import JobTable
from mesh.node._peers import GOSSIP_LINK, GOSSIP_MESSAGES, PeerTable, load_node_id, unique_name
from mesh.node._persist import JobKeeper
from mesh.node._pool import WorkerPool
from mesh.node._proc import memory_in_use, pid_alive, rss_bytes
from mesh.node._shm import SharedBlocks
from mesh.node._store import JobStore

from mesh._auth import mesh_id
from mesh._connection import AdmissionGate, Connection
from mesh._discovery import Advert, Advertiser
from mesh._gossip import State, Update
from mesh._netif import default_route_ipv4
from mesh._protocol import (
    Ack,
    ConsoleQuery,
    ConsoleStats,
    EnvQuery,
    EnvReport,
    ErrorInfo,
    Goodbye,
    Handback,
    JobsQuery,
    Kill,
    Load,
    Members,
    MemberUpdate,
    Message,
    Peers,
    Ping,
    Pong,
    Query,
    RanItem,
    Recall,
    Records,
    Results,
    Run,
    Started,
    Submit,
    pushed_name,
)
from mesh._serialize import function_hash
from mesh.errors import ErrorKind, MeshError

__all__ = ["Node", "NodeConfig"]

log = logging.getLogger("mesh.node")

TICK_S = 0.1  # housekeeping while jobs are queued or running (runtime limits, memory)
LOAD_PUSH_S = 1.0  # a node tells its clients its load when it changed, this often at most
IDLE_TICK_S = 1.0  # and with none: results to expire, silent clients, the parent process


class Node:
    def __init__(self, config: NodeConfig) -> None:
        self.config = config
        # The name asked for; ``name`` is the one shown, with a suffix while another live
        # node shows this one (see _check_name).
        self.base_name = config.name or os.uname().nodename.split(".")[0] or "node"
        self.name = self.base_name
        self.node_id = ""  # kept in the data dir: read by start(), once it holds the dir's lock
        self.table = JobTable(self.name, result_ttl_s=config.result_ttl_s)
        self.table.capacity = config.workers
        self.port = config.port
        self._conns: dict[int, Connection] = {}
        self._conn_ids: dict[Connection, int] = {}
        self._funcs: dict[int, dict[bytes, Func]] = {}
        self._next_conn = 0
        self._server: asyncio.Server | None = None
        self._pool: WorkerPool | None = None
        self._log_file: IO[bytes] | None = None
        self._shm: SharedBlocks | None = None
        self._advertiser: Advertiser | None = None
        self.peers: PeerTable | None = None
        self._keeper: JobKeeper | None = None  # finished jobs, kept in the data dir
        self._ticker: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # work arrived: the idle tick hurries
        self._node_links: set[int] = set()  # connection ids of other nodes' links
        self._gossip_links: set[int] = set()  # ... of which their gossip links
        self._member_news: list[MemberUpdate] = []  # for the clients, sent on the next turn
        self._load_told: tuple[int, int] = (0, 0)  # (running, queued) the clients last heard
        self._load_told_at = 0.0
        self._stopped = asyncio.Event()
        self._hurry = asyncio.Event()  # a second stop request: do not wait for jobs
        self.dashboard: Dashboard | None = None
        self.client_names: dict[int, str] = {}  # connection id -> name from its handshake
        self.files: FileService | None = None  # mesh.files: blobs, catalog, replication
        self.envs: EnvCache | None = None  # _env: cached virtual environments
        self.env_pools: EnvPools | None = None  # ... and their workers
        self.gate = preauth_gate(config.max_preauth, config.max_preauth_per_source)

    # ---- lifecycle ----

    async def start(self) -> None:
        """Return once the node accepts connections; workers warm up in the background."""
        if self.config.dashboard is not None:  # first: a taken port fails before workers start
            host, port = self.config.dashboard
            self.dashboard = Dashboard(self, host, port, explicit=self.config.dashboard_token)
            self.dashboard.start()
        self.config.data_dir.mkdir(parents=True, exist_ok=True)
        self._keeper = JobKeeper(await asyncio.to_thread(JobStore, self.config.data_dir))
        self.node_id = await asyncio.to_thread(load_node_id, self.config.data_dir)
        stored = await asyncio.to_thread(self._keeper.load)
        self.table.restore(stored, time.time())
        if stored:
            log.info("serving %d finished jobs from %s", len(stored), self._keeper.path)
        self._log_file = await asyncio.to_thread(open, self.config.data_dir / "workers.log", "ab")
        self.files = FileService(self)  # before the workers start: they inherit its socket path
        await self.files.start()
        self.envs = await asyncio.to_thread(
            EnvCache,
            self.config.data_dir,
            node_name=self.name,
            pip_args=self.config.pip_args,
            budget_bytes=self.config.env_budget_bytes,
        )
        self.env_pools = EnvPools(
            self.envs,
            self.table,
            apply=self._apply,
            new_pool=self._new_pool,
            fetch=self._fetch_file,
            stopping=self._stopped.is_set,
            idle_s=self.config.env_idle_s,
        )
        self._shm = SharedBlocks(self.node_id, self.config.data_dir)
        self._pool = self._new_pool("", sys.executable, 0, self._worker_ready)
        self._pool.start()
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._new_connection, self.config.host, self.config.port, reuse_address=True
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._ticker = loop.create_task(self._tick())
        interfaces = self._mdns_interfaces() if self.config.advertise else []
        if interfaces:
            advert = Advert(self.node_id, self.name, self.host, self.port, self.config.workers,
                            os.cpu_count() or 1, mesh_id(self.config.secret))  # fmt: skip
            self._advertiser = Advertiser(advert, interfaces)
            await self._advertiser.start()
        self.peers = PeerTable(
            self.config.secret,
            node_id=self.node_id,
            name=self.name,
            address=self.address,
            workers=self.config.workers,
            on_change=self._peers_changed,
            on_renamed=self._check_name,
            on_member=self._member_changed,
            gossip=self.config.gossip,
        )
        await self.peers.start(self.config.peers, browse_on=interfaces)

    def _mdns_interfaces(self) -> list[str]:
        """Where to advertise and browse: the pinned interfaces, else the listening
        address unless it is loopback (never advertised unless named)."""
        if self.config.interfaces:
            return self.config.interfaces
        if ipaddress.ip_address(self.config.host).is_loopback:
            log.warning("not advertised: listening on loopback (name it with --interface)")
            return []
        if ipaddress.ip_address(self.config.host).is_unspecified:
            return []  # --host 0.0.0.0 with no --interface: nothing is chosen for the user
        return [self.config.host]

    @property
    def host(self) -> str:
        """The address other machines reach this node at (the listener's, unless wildcard)."""
        host = self.config.host
        if self.config.interfaces and host not in self.config.interfaces:
            return self.config.interfaces[0]
        if ipaddress.ip_address(host).is_unspecified:
            return default_route_ipv4() or "127.0.0.1"
        return host

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _peers_changed(self) -> None:
        """A peer joined: this node may have to show another name."""
        self._check_name()

    def _member_changed(self, u: Update, previous: State | None) -> None:
        """Gossip says a member joined, is suspected, died, left or is back: tell the
        clients (in one Members per turn of the loop, so a burst of joins is one message),
        which learn the mesh from this rather than from heartbeats of their own; and the
        file service, which swaps catalog digests with a member that joins."""
        if self.files is not None:
            self.files.member_changed(u, previous)
        if not self._member_news:
            asyncio.get_running_loop().call_soon(self._tell_members)
        self._member_news.append(u.wire())

    def _tell_members(self) -> None:
        msg, self._member_news = Members(tuple(self._member_news)), []
        for cid, conn in list(self._conns.items()):
            if not conn.closed and cid not in self._node_links:  # nodes hear it by gossip
                with contextlib.suppress(MeshError):
                    conn.send(msg)

    def _check_name(self) -> None:
        """Show a name no other live node shows (a node with a smaller id keeps it), and
        tell every connection (clients and peers) the new one in a Load."""
        assert self.peers is not None
        others = [(p.node_id, p.name) for p in self.peers.alive() if p.node_id]
        name = unique_name(self.base_name, self.node_id, self.name, others)
        if name == self.name:
            return
        log.warning("another live node also shows the name %r: this node (id %s) shows as %r",
                    self.name, self.node_id, name)  # fmt: skip
        self.name = self.table.node_name = self.peers.name = name
        if self.envs is not None:
            self.envs.node_name = name
        load = self._load()
        for conn in list(self._conns.values()):
            if not conn.closed:
                conn.send(load)

    async def serve_forever(self) -> None:
        await self._stopped.wait()

    def request_stop(self) -> None:
        """SIGTERM/SIGINT: leave gracefully; a second one leaves at once."""
        if self._stopped.is_set():
            self._hurry.set()
        self._stopped.set()

    async def stop(self) -> None:
        """Leave: stop being found and taking work, hand queued jobs back to their
        clients, let running jobs finish for up to ``grace_s``, then say goodbye."""
        self._stopped.set()
        if self._server is not None:
            self._server.close()  # no new connections; the open ones stay for results
        if self.dashboard is not None:
            await self.dashboard.close()
        if self.peers is not None:
            await self.peers.close()
        if self._advertiser is not None:
            with contextlib.suppress(Exception):
                await self._advertiser.close()  # goodbye packets first
        if self._pool is not None:
            self._apply(self.table.drain())
            await self._let_running_finish()
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        for conn in list(self._conns.values()):
            with contextlib.suppress(Exception):
                conn.send(Goodbye("node stopping"))
            conn.close()
        if self.env_pools is not None:
            await self.env_pools.close()
        if self._pool is not None:
            await self._pool.close()
        if self.files is not None:  # after the workers: jobs finishing in the grace use it
            await self.files.close()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
        if self._log_file is not None:
            self._log_file.close()
        if self._shm is not None:
            self._shm.close()
        if self._keeper is not None:
            await self._keeper.close()  # results finished before the stop survive it

    def _watch_memory(self) -> None:
        """Stop a worker past --max-memory; pause starting jobs while memory is short."""
        assert self._pool is not None
        limit = self.config.max_memory
        if limit:
            for wid, w in list(self.table.workers.items()):
                pool = self._pool_for(wid)
                pid = pool.pid(wid) if w.batch and pool is not None else None
                rss = rss_bytes(pid) if pid is not None else 0
                if rss > limit:
                    self._apply(self.table.over_memory(wid, rss, limit))
        used = memory_in_use()
        short = used > self.config.pause_above
        if short != self.table.paused:
            log.warning("%s new jobs: %.0f %% of this machine's memory is in use",
                        "pausing" if short else "resuming", used * 100)  # fmt: skip
            self._apply(self.table.set_paused(short, time.time()))

    async def _let_running_finish(self) -> None:
        running = self.table.running
        if not running or self.config.grace_s <= 0:
            return
        log.warning("leaving: %d running jobs may finish within %g s (stop again to "
                    "leave at once)", running, self.config.grace_s)  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.config.grace_s
        while self.table.running and not self._hurry.is_set():
            left = deadline - loop.time()
            if left <= 0:
                break
            with contextlib.suppress(asyncio.TimeoutError):  # wake to look at the table
                await asyncio.wait_for(self._hurry.wait(), min(left, 0.05))
        if self.table.running:
            log.warning("leaving with %d jobs still running: their clients run them again",
                        self.table.running)  # fmt: skip

    async def _tick(self) -> None:
        """Housekeeping: every TICK_S while there is work, else every IDLE_TICK_S (an
        idle node wakes about once a second), woken at once when work arrives."""
        while True:
            busy = self.table.running or self.table.queued
            self._wake.clear()
            if busy:
                await asyncio.sleep(TICK_S)
            else:
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), IDLE_TICK_S)
            self._apply(self.table.tick(time.time()))
            if self.peers is not None:
                self.peers.set_load(self.config.workers, self.table.running, self.table.queued)
            self._tell_load()
            self._watch_memory()
            if self._shm is not None:
                self._shm.expire()
            if self.env_pools is not None:
                self.env_pools.stop_idle()
            expired = self.table.take_expired()
            if expired and self._keeper is not None:
                self._keeper.forget(expired)
            now = asyncio.get_running_loop().time()
            for cid, conn in list(self._conns.items()):
                timeout = (self.config.node_link_timeout_s if cid in self._node_links
                           else self.config.client_timeout_s)  # fmt: skip
                if now - conn.last_alive > timeout:
                    conn.abort()  # a client that stopped pinging: its jobs carry on
            ppid = self.config.parent_pid
            if ppid is not None and not pid_alive(ppid):
                log.info("parent process %d is gone; stopping", ppid)
                self._stopped.set()

    # ---- connections ----

    def _new_connection(self) -> Connection:
        self._next_conn += 1
        cid = self._next_conn
        conn = Connection(
            "server",
            secret=self.config.secret,
            name=self.name,
            node_id=self.node_id,
            peer_label=f"connection {cid}",
            handshake_timeout_s=self.config.handshake_timeout_s,
            max_frame=self.config.max_frame,
            max_message=self.config.max_message,
            on_message=self._message,
            on_close=self._closed,
            on_ready=lambda conn: self._authenticated(cid, conn),
            allocate=self._shm.allocate if self._shm is not None else None,
            gate=self.gate,
        )
        return conn

    def _authenticated(self, cid: int, conn: Connection) -> None:
        """Registered before the connection's next message is read (it may follow at once)."""
        self._conns[cid] = conn
        self._conn_ids[conn] = cid
        self._funcs[cid] = {}
        self.client_names[cid] = conn.peer_name or conn.peer_label
        if len(self.client_names) > 10_000:  # the dashboard's; oldest connections go first
            del self.client_names[next(iter(self.client_names))]
        if (conn.peer_name or "").endswith((FILES_LINK, GOSSIP_LINK)):
            self._node_links.add(cid)  # another node's: quiet for long, and
        if (conn.peer_name or "").endswith(GOSSIP_LINK):
            self._gossip_links.add(cid)  # told all by gossip: no Load, no Peers
            return
        conn.send(self._load())
        if self.peers is not None and cid not in self._node_links:
            conn.send(Members(self.peers.snapshot(), full=True))

    def _closed(self, conn: Connection, reason: BaseException | None) -> None:
        cid = self._conn_ids.pop(conn, None)
        if cid is None:
            return
        self._conns.pop(cid, None)
        self._node_links.discard(cid)
        self._gossip_links.discard(cid)
        self._funcs.pop(cid, None)
        self.table.disconnected(cid)

    def _tell_load(self) -> None:
        """Tell the clients this node's load when it changed, at most every LOAD_PUSH_S:
        they place by it, and no longer ping idle links to hear it."""
        now = time.monotonic()
        told = (self.table.running, self.table.queued)
        if told == self._load_told or now < self._load_told_at + LOAD_PUSH_S:
            return
        self._load_told, self._load_told_at = told, now
        self.tell_clients(self._load())

    def kill(self, jids: tuple[str, ...]) -> None:
        """Kill these jobs held here, as a client's Kill does (also the dashboard's and
        the console's buttons): queued ones end now, running ones' workers are stopped."""
        self._apply(self.table.kill(jids, time.time()))

    def retry(self, jid: str) -> str:
        """Run the failed or killed job ``jid`` again here as a new job (the console's
        Retry) and return its id; :class:`RetryRefused` says why it cannot."""
        new, out = self.table.retry(jid, time.time())
        self._wake.set()  # an idle node's loop sleeps: the new job is work
        self._apply(out)
        return new

    def tell_clients(self, msg: Message) -> None:
        """Send ``msg`` to every client connected to this node (not to other nodes)."""
        for cid, conn in list(self._conns.items()):
            if not conn.closed and cid not in self._node_links:
                with contextlib.suppress(MeshError):
                    conn.send(msg)

    def _load(self) -> Load:
        return Load(
            self.node_id, self.name, self.config.workers, self.table.running, self.table.queued
        )

    def _message(self, conn: Connection, msg: Message) -> None:
        cid = self._conn_ids.get(conn)
        if cid is None:
            return
        now = time.time()
        if isinstance(msg, Submit):
            funcs = self._funcs[cid]
            func = funcs.get(msg.fhash)
            if func is None:
                if not msg.fblob:
                    conn.abort()  # a client that skips the function blob is broken
                    return
                if function_hash(msg.fblob) != msg.fhash:  # workers cache functions by id
                    log.warning("%s sent a function whose bytes do not match its id; closing",
                                conn.peer_label)  # fmt: skip
                    conn.abort()
                    return
                func = funcs[msg.fhash] = Func(msg.fhash, msg.fblob, msg.fname)
            if msg.env and self.env_pools is not None:
                reqs = normalise(msg.env)
                key = EnvCache.key(reqs)
                fkey = msg.fhash + key.encode()
                base, env_func = func, funcs.get(fkey)
                if env_func is None:
                    env_func = funcs[fkey] = Func(base.fhash, base.blob, base.name, env=key)
                func = env_func
                self.env_pools.want(key, reqs)
            self._wake.set()
            self._apply(
                self.table.submit(
                    cid,
                    func,
                    msg.items,
                    now,
                    cores=msg.cores,
                    label=msg.label,
                    max_runtime=msg.max_runtime,
                    retry=msg.retry,
                    notify_start=msg.notify_start,
                    priority=msg.priority,
                    kill_process=msg.kill_process,
                )
            )
        elif isinstance(msg, Ack):
            self.table.ack(msg.jids, now)
        elif isinstance(msg, Kill):
            self._apply(self.table.kill(msg.jids, now))
        elif isinstance(msg, Recall):
            self._apply(self.table.recall(cid, msg.jids))
        elif isinstance(msg, Query):
            records = tuple(r for r in map(self.table.record, msg.jids) if r is not None)
            conn.send(Records(msg.req, records))
            if msg.watch:
                self._apply(self.table.watch(cid, msg.jids))
        elif isinstance(msg, JobsQuery):  # a peer's dashboard lists the mesh's jobs
            conn.send(jobs_reply(self, msg))
        elif isinstance(msg, (ConsoleQuery, ConsoleStats)):  # a peer's mesh console
            conn.send(console_answer(self, msg))
        elif isinstance(msg, EnvQuery):  # mesh.env_info / `mesh envs [--rebuild]`
            pools = self.env_pools
            conn.send(pools.report(msg) if pools is not None else EnvReport(msg.req, ()))
        elif isinstance(msg, Ping):
            conn.send(Pong(msg.t, self.table.running, self.table.queued))
        elif isinstance(msg, GOSSIP_MESSAGES):
            if self.peers is not None:
                self.peers.received(conn, msg)
        elif isinstance(msg, Peers):
            if self.peers is not None:
                self.peers.heard(msg)
        elif isinstance(msg, Goodbye):
            conn.close()
        elif isinstance(msg, FILE_MESSAGES) and self.files is not None:
            self.files.handle(conn, msg)
        else:
            log.warning("unexpected %s from %s; closing", type(msg).__name__, conn.peer_label)
            conn.abort()

    # ---- workers ----

    # ---- job environments ----

    async def _fetch_file(self, sha: str, filename: str) -> Path:
        """A pushed file, by the store name the client put it under (``envs`` then
        checks its SHA-256 against ``sha``)."""
        if self.files is None:
            raise EnvBuildError("this node has no file store")
        return await self.files.ensure_named(pushed_name(sha, filename))

    def _new_pool(
        self, env: str, python: str, first_wid: int, on_ready: Callable[[int], None]
    ) -> WorkerPool:
        """A worker pool wired to this node: the node's own (``env`` empty) or an
        environment's, started from that environment's interpreter."""
        return WorkerPool(
            self.config.workers,
            share=self._shm.share if self._shm is not None else None,
            on_released=self._shm.released if self._shm is not None else None,
            max_memory=self.config.max_memory,
            on_ready=on_ready,
            on_ran=self._worker_ran,
            on_died=self._worker_died,
            on_broken=lambda cause, stderr: self._workers_broken(env, cause, stderr),
            on_recovered=lambda: self.table.workers_recovered(env),
            log_file=self._log_file,
            kill_grace_s=self.config.kill_grace_s,
            on_output=lambda msg: running_output(self.table.jobs, msg),
            python=python,
            first_wid=first_wid,
        )

    def _pool_for(self, wid: int) -> WorkerPool | None:
        if wid < ENV_WID_STRIDE:
            return self._pool
        return self.env_pools.pool_of(wid) if self.env_pools is not None else None

    def _worker_ready(self, wid: int) -> None:
        self._apply(self.table.worker_ready(wid, time.time()))

    def _worker_ran(self, wid: int, items: tuple[RanItem, ...]) -> None:
        self._apply(self.table.worker_ran(wid, items, time.time()))

    def _worker_died(self, wid: int, desc: str) -> None:
        self._apply(self.table.worker_died(wid, desc, time.time()))

    def _workers_broken(self, env: str, cause: str, stderr: str) -> None:
        """A pool cannot start workers: fail its jobs now, naming this node and why."""
        last = stderr.strip().splitlines()[-1] if stderr.strip() else "no output on stderr"
        whose = f"the job environment {env}'s" if env else "its"
        msg = (f"node {self.name} cannot start {whose} worker processes: {cause}; the last "
               f"said: {last} (more in {self.config.data_dir / 'workers.log'})")  # fmt: skip
        log.warning("%s; failing their jobs until a worker starts", msg)
        error = ErrorInfo(ErrorKind.WORKER_START, "WorkerStartFailed", msg, stderr)
        self._apply(self.table.workers_broken(env, error, time.time()))

    # ---- carrying out instructions ----

    def _apply(self, instructions: list[Instruction]) -> None:
        assert self._pool is not None
        # Results go out first, then workers get more, then results go to disk: the
        # store's commit is off both a waiting client's and an idle worker's path (a
        # worker waited for it between two jobs: ~1 ms of a 20 ms job), and a job's
        # result is still on disk before the node answers anything else (all of this
        # runs in one callback; a restarted node serves it again); a big result only a
        # moment later, written off the loop (see JobKeeper.save).
        finished = self.table.take_finished()
        for ins in instructions:
            if isinstance(ins, Notify):
                conn = self._conns.get(ins.conn)
                if conn is not None and not conn.closed:
                    conn.send(Started(tuple(ins.jids)))
            elif isinstance(ins, Deliver):
                conn = self._conns.get(ins.conn)
                if conn is not None and not conn.closed:
                    conn.send(
                        Results(tuple(ins.items), self.table.running, self.table.queued,
                                self.table.avg_run_s or 0.0)
                    )  # fmt: skip
        for ins in instructions:
            if isinstance(ins, Dispatch):
                f = ins.func
                run = Run(f.fhash, f.blob if ins.send_function else b"", f.name,
                          tuple((j.jid, j.args) for j in ins.jobs))  # fmt: skip
                pool = self._pool_for(ins.worker)
                if pool is None or not pool.send(ins.worker, run):
                    # The worker vanished between events; its death event re-queues.
                    log.info("worker %d gone before dispatch", ins.worker)
            elif isinstance(ins, KillWorker):
                log.info("killing worker %d (%s)", ins.worker, ins.reason)
                pool = self._pool_for(ins.worker)
                if pool is not None:
                    pool.kill(ins.worker)
            elif isinstance(ins, RetireWorker):
                pool = self._pool_for(ins.worker)
                if pool is not None:
                    pool.retire(ins.worker)
            elif isinstance(ins, HandBack):
                conn = self._conns.get(ins.conn)
                if conn is not None and not conn.closed:
                    conn.send(Handback(tuple(ins.jids), ins.recall, self.table.running,
                                       self.table.queued))  # fmt: skip
        if finished and self._keeper is not None:
            self._keeper.save(finished)

    @property
    def worker_pids(self) -> list[int]:
        pids = self._pool.pids if self._pool is not None else []
        return pids + (self.env_pools.pids if self.env_pools is not None else [])


def preauth_gate(total: int, per_source: int) -> AdmissionGate:
    """The caps on unauthenticated connections (0: derived from the open-files limit,
    which mesh-node raised to its hard limit first)."""
    if not total:
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        fds = 1 << 16 if soft == resource.RLIM_INFINITY else soft
        total = min(1024, max(16, fds // 4))
    return AdmissionGate(total, per_source or max(4, total // 4))
