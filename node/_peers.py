"""A node's table of the other nodes of its mesh, kept alive by heartbeats.

Peers come from three places that all feed this one table: mDNS adverts (the
browser), ``--peer``/``MESH_PEERS`` (networks that block multicast), and the
``Peers`` messages other nodes send (so naming one node is enough to learn the
mesh). Each peer is reached over an authenticated connection, as a client would;
its load arrives in ``Load`` and ``Pong``. A peer silent for ``dead_after_s`` is
dropped and retried with backoff; one that was only heard of, never named, is
forgotten after ``forget_after_s`` of failures (mDNS records of crashed nodes
linger for an hour).

A node is its id (kept in its data dir, so a restart is the same node); its name is
for people, and :func:`unique_name` keeps names unique among the live nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mesh._connection import Connection, heartbeats, open_connection
from mesh._discovery import Advert, Browser, parse_peers
from mesh._protocol import Goodbye, JobsReply, Load, Message, Peers, Pong
from mesh.errors import MeshError

__all__ = ["Peer", "PeerTable", "load_node_id", "unique_name"]

log = logging.getLogger("mesh.node.peers")

NODE_ID_FILE = "node_id"
MACHINE_ID_FILES = ("/etc/machine-id", "/var/lib/dbus/machine-id")
_NODE_ID = re.compile(r"[0-9a-f]{8,64}")


def machine_id() -> str:
    """This machine's id (systemd's /etc/machine-id), or "" where there is none."""
    for path in MACHINE_ID_FILES:
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = Path(path).read_text(encoding="ascii").strip()
            if text:
                return text
    return ""


def load_node_id(data_dir: Path, machine: str | None = None) -> str:
    """This node's id: read from its data dir, or made and stored there on first start.

    Job records, file holders and clients know a node by its id, so the id outlives
    restarts on the same data dir (the caller holds the data dir's lock). The file
    names the machine it was made on (``machine``, default :func:`machine_id`): a data
    dir copied to another machine with a cloned disk image gets a new id there, so two
    machines never pass for one node."""
    machine = machine_id() if machine is None else machine
    path = data_dir / NODE_ID_FILE
    try:
        text = path.read_text(encoding="ascii")
    except FileNotFoundError:
        text = ""
    except (OSError, UnicodeDecodeError) as exc:
        log.warning("cannot read the node id in %s (%s): this node takes a new id", path, exc)
        text = ""
    node_id, made_on = [*text.split(), "", ""][:2]
    if _NODE_ID.fullmatch(node_id) and (made_on == machine or not made_on):
        return node_id
    if _NODE_ID.fullmatch(node_id):
        log.warning("the node id in %s was made on another machine (%s; a cloned disk "
                    "image?): this node takes a new id", path, made_on)  # fmt: skip
    elif text.strip():
        log.warning("%s holds no node id (%r): this node takes a new id", path, text[:40])
    node_id = secrets.token_hex(6)
    tmp = path.with_name(f".{NODE_ID_FILE}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(f"{node_id}\n{machine}\n" if machine else f"{node_id}\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)  # never half a file: a crash leaves the old one or the new one
    return node_id


def unique_name(base: str, node_id: str, current: str, others: Iterable[tuple[str, str]]) -> str:
    """The name this node shows, given the (node id, name) of the other live nodes.

    Of the nodes showing one name, the one with the smallest id keeps it; the others
    take ``base-2``, ``base-3``... (the first free ones, in id order), so two nodes that
    see the same mesh never both rename, nor pick the same suffix. A node keeps its
    name while no node with a smaller id shows it (a rename is never undone).
    """
    others = list(others)
    taken = {name for _, name in others}
    ahead = sum(1 for i, name in others if name == current and i < node_id)
    if not ahead:
        return current
    k = 1
    while True:
        k += 1
        candidate = f"{base}-{k}"
        if candidate not in taken and candidate != current:
            ahead -= 1
            if not ahead:
                return candidate


@dataclass(eq=False)
class Peer:
    host: str
    port: int
    static: bool = False  # named by --peer/MESH_PEERS: never forgotten
    name: str = ""
    node_id: str = ""
    workers: int = 0
    running: int = 0
    queued: int = 0
    conn: Connection | None = None
    error: BaseException | None = None
    failing_since: float | None = None
    closed: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        return self.conn is not None and not self.conn.closed and self.workers > 0


class PeerTable:
    """The other nodes this node knows, each with its connection and last load."""

    def __init__(
        self,
        secret: bytes,
        *,
        node_id: str,
        name: str,
        address: str,
        on_change: Callable[[], None] | None = None,
        on_renamed: Callable[[], None] | None = None,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 5.0,
        connect_timeout_s: float = 5.0,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
        forget_after_s: float = 600.0,
    ) -> None:
        self._secret = secret
        self.node_id, self.name, self.address = node_id, name, address
        self._on_change = on_change
        self._on_renamed = on_renamed  # a live peer now shows another name
        self._heartbeat_s, self._dead_after_s = heartbeat_s, dead_after_s
        self._connect_timeout_s = connect_timeout_s
        self._retry_s, self._max_retry_s = retry_s, max_retry_s
        self._forget_after_s = forget_after_s
        self.peers: dict[str, Peer] = {}
        self._ignored = {address}  # ourselves, and other addresses of known nodes
        self._browser: Browser | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        # Requests to peers awaiting their reply (by request id): see request().
        self._pending: dict[int, tuple[Connection, asyncio.Future[Message]]] = {}
        self._next_req = 0

    async def start(self, static: list[tuple[str, int]], browse_on: list[str]) -> None:
        """Connect to ``static`` peers and, with interfaces given, browse mDNS on them."""
        for host, port in static:
            self.add(host, port, static=True)
        self._spawn(self._heartbeat())
        if browse_on:
            self._browser = Browser(self._secret, browse_on, self._found)
            await self._browser.start()

    async def close(self) -> None:
        self._closing = True
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:  # first, so that a connect finishing now is closed below
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self.peers.values():
            if peer.conn is not None and not peer.conn.closed:
                with contextlib.suppress(MeshError):
                    peer.conn.send(Goodbye("node stopping"))
                peer.conn.close()

    def alive(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.alive]

    async def request(
        self, peer: Peer, make: Callable[[int], Message], timeout_s: float
    ) -> Message:
        """Send ``make(req)`` to ``peer`` over its connection and return its reply.

        Raises TimeoutError when no reply comes in ``timeout_s``, MeshError when the
        connection is down or goes down meanwhile.
        """
        conn = peer.conn
        if conn is None or conn.closed:
            raise MeshError(f"peer {peer.name or peer.key} is not connected")
        self._next_req += 1
        req = self._next_req
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        self._pending[req] = (conn, fut)
        try:
            conn.send(make(req))
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._pending.pop(req, None)

    def _replied(self, conn: Connection, req: int, msg: Message) -> None:
        pending = self._pending.get(req)
        if pending is not None and pending[0] is conn and not pending[1].done():
            pending[1].set_result(msg)

    def addresses(self) -> tuple[str, ...]:
        """This node first, then every live peer: what a ``Peers`` message carries."""
        return (self.address, *(p.key for p in self.alive()))

    # ---- learning of peers ----

    def add(self, host: str, port: int, *, static: bool = False) -> None:
        key = f"{host}:{port}"
        if self._closing or key in self._ignored:
            return
        peer = self.peers.get(key)
        if peer is not None:
            peer.static = peer.static or static
            return
        peer = self.peers[key] = Peer(host, port, static=static)
        self._spawn(self._maintain(peer))

    def heard(self, msg: Peers) -> None:
        """Another node (or a connection to us) named the nodes it knows."""
        for host, port in parse_peers(msg.addrs, strict=False):
            self.add(host, port)

    def _found(self, advert: Advert) -> None:
        if advert.node_id != self.node_id:
            self.add(advert.host, advert.port)

    # ---- keeping connections ----

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _maintain(self, peer: Peer) -> None:
        """Connect, wait for the connection to end, back off, and again, until forgotten."""
        loop = asyncio.get_running_loop()
        delay = self._retry_s
        while not self._closing:
            try:
                await self._connect(peer)
            except MeshError as exc:
                peer.error = exc
                if peer.failing_since is None:
                    peer.failing_since = loop.time()
                elif not peer.static and loop.time() - peer.failing_since > self._forget_after_s:
                    log.info("forgetting peer %s: unreachable since long (%s)", peer.key, exc)
                    del self.peers[peer.key]
                    return
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._max_retry_s)
                continue
            if peer.conn is None:  # it was ourselves, or a node we know by another address
                return
            delay = self._retry_s
            peer.failing_since = None
            log.info("peer %s (%s) joined: %d workers", peer.name, peer.key, peer.workers)
            if self._on_change is not None:
                self._on_change()
            await peer.closed.wait()
            peer.workers = 0
            log.info("peer %s (%s) lost: %s", peer.name, peer.key, peer.error)
            await asyncio.sleep(self._retry_s)

    async def _connect(self, peer: Peer) -> None:
        peer.closed.clear()
        loaded = asyncio.Event()

        def on_message(conn: Connection, msg: Message) -> None:
            if isinstance(msg, Pong):
                peer.running, peer.queued = msg.running, msg.queued
            elif isinstance(msg, Load):
                peer.workers, peer.running, peer.queued = msg.workers, msg.running, msg.queued
                renamed = loaded.is_set() and msg.name and msg.name != peer.name
                peer.name = msg.name or peer.name
                loaded.set()
                if renamed and self._on_renamed is not None:
                    self._on_renamed()
            elif isinstance(msg, Peers):
                self.heard(msg)
            elif isinstance(msg, JobsReply):
                self._replied(conn, msg.req, msg)
            elif isinstance(msg, Goodbye):
                conn.close()

        def on_close(conn: Connection, reason: BaseException | None) -> None:
            for c, fut in self._pending.values():  # requests on it get no answer now
                if c is conn and not fut.done():
                    fut.set_exception(MeshError(f"peer {peer.name or peer.key}: connection lost"))
            if conn is peer.conn:
                peer.error = reason
                peer.closed.set()

        conn = await open_connection(
            peer.host, peer.port, self._secret, name=self.name,
            timeout_s=self._connect_timeout_s, on_message=on_message, on_close=on_close,
        )  # fmt: skip
        if conn.peer_id == self.node_id or any(
            p is not peer and p.node_id == conn.peer_id for p in self.peers.values()
        ):
            conn.close()
            del self.peers[peer.key]
            self._ignored.add(peer.key)
            return
        peer.conn, peer.node_id = conn, conn.peer_id
        if not loaded.is_set():  # else its Load came first, with the name it shows now
            peer.name = conn.peer_name or peer.key
        conn.send(Peers(self.addresses()))  # so a peer that named nobody learns of us
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(loaded.wait(), self._connect_timeout_s)
        if conn.closed or not loaded.is_set():
            conn.abort()
            peer.conn = None
            raise peer.error or MeshError(f"peer {peer.key} sent no load report")

    async def _heartbeat(self) -> None:
        async for on_time in heartbeats(self._heartbeat_s, lambda: not self._closing):
            for peer in list(self.peers.values()):
                if peer.conn is not None:
                    peer.conn.keepalive(self._dead_after_s, f"peer {peer.name} ({peer.key})",
                                        judge=on_time)  # fmt: skip
