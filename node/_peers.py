"""A node's table of the other nodes of its mesh, kept by SWIM gossip (mesh/_gossip.py).

Addresses come from mDNS adverts (the browser), ``--peer``/``MESH_PEERS`` (networks
that block multicast) and ``Peers`` messages; each is a seed this node swaps full
state with (``GossipSync``), retried with backoff until one answers. From then on the
members, their names and their load come from gossip, whose instructions this table
carries out: one timer armed for what is due next (nothing runs on a fixed clock), and
gossip messages over the mesh's authenticated links.

Connection policy: a node opens a link (an authenticated connection, as a client's;
the pool is mesh/_link.py's, shared with the file service) to a member only when
gossip has something to send it, and closes it after ``link_idle_s`` with no traffic
either way, or longer in a big mesh: ``LINK_IDLE_ROUNDS`` rounds of probes (one probe
period per member), at most ``LINK_IDLE_MAX_S``. A round-robin probe comes back to each
member once a round, so a link is never closed just before its next probe: a probe
costs one ping and one ack, never a handshake (measured at 50 nodes with a 20 s idle
close, reconnecting for every probe cost more CPU than the probes). A node then holds
a link to each member it probes (an idle socket costs no CPU), plus inbound ones.
Replies go back on the link a message came in on. Liveness is gossip's: no
heartbeats on these links. A member declared dead is sent our state again (with
backoff, like a seed) so that a frozen node that wakes learns it and refutes.

A node is its id (kept in its data dir, so a restart is the same node); its name is
for people, and :func:`unique_name` keeps names unique among the live nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import re
import secrets
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from mesh._connection import Connection
from mesh._discovery import Advert, Browser, parse_peers
from mesh._gossip import Changed, Gossip, GossipConfig, Instruction, Send, State, Update
from mesh._link import Backoff, Link, Links
from mesh._protocol import (
    ConsoleReply,
    ConsoleSeries,
    Goodbye,
    GossipAck,
    GossipNews,
    GossipPing,
    GossipPingReq,
    GossipSync,
    JobsReply,
    MemberUpdate,
    Message,
    Peers,
)
from mesh.errors import MeshError, RemoteProtocolError

__all__ = ["GOSSIP_MESSAGES", "GOSSIP_LINK", "Peer", "PeerTable", "load_node_id", "unique_name"]

log = logging.getLogger("mesh.node.peers")

GOSSIP_MESSAGES = (GossipPing, GossipAck, GossipPingReq, GossipSync, GossipNews)
# A node names its gossip links "NAME/gossip" in the handshake: the node at the other
# end sends them no Load or Peers (gossip tells members all of that).
GOSSIP_LINK = "/gossip"
MIN_TIMER_S = 0.002  # the timer never spins, whatever gossip says is due
# A gossip link stays open at least this long past its last use, and longer in a big
# mesh: until the next round of probes comes back to that member (a round is one probe
# period per member), so a probe never pays for a new handshake; at most LINK_IDLE_MAX_S.
LINK_IDLE_ROUNDS = 2.5
LINK_IDLE_MAX_S = 300.0

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
    """Another node: a gossip member, or only an address (a seed) until it answers."""

    host: str
    port: int
    static: bool = False  # named by --peer/MESH_PEERS: never forgotten
    name: str = ""
    node_id: str = ""
    workers: int = 0
    running: int = 0
    queued: int = 0
    state: State | None = None  # what gossip says; None: not a member (yet)
    conn: Connection | None = None  # our link to it, while one is open
    error: BaseException | None = None
    failing_since: float | None = None

    @property
    def key(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def alive(self) -> bool:
        """A member gossip holds alive (or only suspects: suspects still take work)."""
        return self.state is not None and self.state <= State.SUSPECT


@dataclass(eq=False)
class _Join:
    """An address we push our state to until it answers (a seed, a dead member)."""

    since: float
    next_at: float
    pushes: int  # pushes so far, unanswered (the backoff's count)
    static: bool


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class PeerTable:
    """The other nodes this node knows, kept by gossip: see the module docstring."""

    def __init__(
        self,
        secret: bytes,
        *,
        node_id: str,
        name: str,
        address: str,
        workers: int = 0,
        on_change: Callable[[], None] | None = None,
        on_renamed: Callable[[], None] | None = None,
        on_member: Callable[[Update, State | None], None] | None = None,
        gossip: GossipConfig | None = None,
        connect_timeout_s: float = 5.0,
        link_idle_s: float = 20.0,
        retry_s: float = 1.0,
        max_retry_s: float = 30.0,
        forget_after_s: float = 600.0,
        rng: random.Random | None = None,
    ) -> None:
        self._secret = secret
        self.node_id, self._name, self.address = node_id, name, address
        self._loop = asyncio.get_running_loop()
        self.gossip = Gossip(node_id, name, address, now=self._loop.time(),
                             rng=rng or random.Random(), config=gossip, workers=workers)  # fmt: skip
        self._on_change = on_change  # a member joined
        self._on_renamed = on_renamed  # a live member now shows another name
        self._on_member = on_member  # a member is new or changed state (clients are told)
        self._connect_timeout_s = connect_timeout_s
        self._link_idle_s = link_idle_s
        # Joins are pushed again with the links' backoff policy (mesh/_link.py); the
        # jitter has its own source, so a seeded ``rng`` still drives gossip alone.
        self._retry = Backoff(first_s=retry_s, cap_s=max_retry_s)
        self._retry_rng = random.Random()
        self._forget_after_s = forget_after_s
        self.peers: dict[str, Peer] = {}  # by address
        self._by_id: dict[str, Peer] = {}
        self._addr_ids: dict[str, str] = {}  # address -> node id its link showed
        self._ignored = {address}  # ourselves, and other addresses of known nodes
        # Our gossip links (and the dashboard's requests), opened when gossip needs one.
        self._links = Links(secret, name + GOSSIP_LINK, on_message=self._link_message,
                            on_close=self._link_closed, on_open=self._link_opened,
                            on_fail=self._link_failed,
                            connect_timeout_s=connect_timeout_s, idle_s=link_idle_s)  # fmt: skip
        self._joining: dict[str, _Join] = {}
        # Links that came in (to our server): replies to what they sent go back on them.
        self._origins: weakref.WeakValueDictionary[str, Connection] = weakref.WeakValueDictionary()
        self._origin_of: weakref.WeakKeyDictionary[Connection, str] = weakref.WeakKeyDictionary()
        self._next_origin = 0
        self._browser: Browser | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._leaving = False  # close() is telling members that this node leaves
        self._load: tuple[int, int, int] | None = None  # wanted, not yet told
        self._load_at = 0.0
        # Requests to peers awaiting their reply (by request id): see request().
        self._pending: dict[int, tuple[Connection, asyncio.Future[Message]]] = {}
        self._next_req = 0
        # Debug counters (the dashboard's /api/nodes shows them): what membership costs.
        self.counters = {"sent": 0, "received": 0, "probes": 0, "timer_runs": 0}

    # ---- lifecycle ----

    async def start(self, static: list[tuple[str, int]], browse_on: list[str]) -> None:
        """Join through ``static`` peers and, with interfaces given, browse mDNS on them."""
        for host, port in static:
            self.add(host, port, static=True)
        if browse_on:
            self._browser = Browser(self._secret, browse_on, self._found)
            await self._browser.start()
        self._arm()

    async def close(self) -> None:
        """Leave: tell a few members (gossip spreads it), then close every link."""
        self._leaving = True  # links may still open, to carry the leave
        if self._timer is not None:
            self._timer.cancel()
        if self._browser is not None:
            with contextlib.suppress(Exception):
                await self._browser.close()
        for ins in self.gossip.leave(self._loop.time()):
            if isinstance(ins, Send):
                self._send(ins.to, ins.msg)
        told = self._links.close_soon()
        if told:  # links still connecting: give them a moment to carry the news
            await asyncio.wait(told, timeout=self._connect_timeout_s / 5)
        await self._links.close()  # each after what is queued on it: our leave

    # ---- what the node reads ----

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, name: str) -> None:
        """This node shows another name now: gossip spreads it."""
        self._name = name
        self._links.name = name + GOSSIP_LINK
        self.gossip.set_name(name)
        self._arm()

    def alive(self) -> list[Peer]:
        return [p for p in self.peers.values() if p.alive]

    def addresses(self) -> tuple[str, ...]:
        """This node first, then every live peer: what a ``Peers`` message carries."""
        return (self.address, *(p.key for p in self.alive()))

    def snapshot(self) -> tuple[MemberUpdate, ...]:
        """This node first, then every live member, as gossip holds them: the ``Members``
        a client gets on connect."""
        return (self.gossip.me.wire(), *(u.wire() for u in self.gossip.live()))

    def peer(self, node_id: str) -> Peer | None:
        """The member with that node id, if gossip knows it."""
        return self._by_id.get(node_id)

    def gone(self, node_id: str) -> bool:
        """Gossip holds that node dead or left (False for one it does not know)."""
        peer = self._by_id.get(node_id)
        return peer is not None and peer.state is not None and peer.state >= State.DEAD

    def stats(self) -> dict[str, int]:
        """Membership's debug counters, and how many members and links there are now."""
        return {**self.counters, "links_opened": self._links.opened,
                "members": len(self.alive()), "links": self._links.open_count()}  # fmt: skip

    def set_load(self, workers: int, running: int, queued: int) -> None:
        """This node's load; spread at most once per probe period when it changed."""
        if (workers, running, queued) != tuple(self.gossip.me[6:]):
            self._load = (workers, running, queued)
            self._arm()

    async def request(
        self, peer: Peer, make: Callable[[int], Message], timeout_s: float
    ) -> Message:
        """Send ``make(req)`` to ``peer`` (over a link opened if need be); its reply.

        Raises TimeoutError when no reply comes in ``timeout_s``, MeshError when the
        peer cannot be reached or the link goes down meanwhile.
        """
        conn = await asyncio.wait_for(self._links.connected(peer.key), timeout_s)
        link = self._links.get(peer.key)
        self._next_req += 1
        req = self._next_req
        fut: asyncio.Future[Message] = self._loop.create_future()
        self._pending[req] = (conn, fut)
        if link is not None:
            link.busy += 1  # not closed as idle while the answer is awaited
        try:
            conn.send(make(req))
            return await asyncio.wait_for(fut, timeout_s)
        finally:
            self._pending.pop(req, None)
            if link is not None:
                link.busy -= 1

    # ---- learning of addresses ----

    def add(self, host: str, port: int, *, static: bool = False) -> None:
        """An address of a node of the mesh, maybe: swap state with it until it answers."""
        key = f"{host}:{port}"
        if self._leaving or key in self._ignored:
            return
        peer = self.peers.get(key)
        if peer is None:
            peer = self.peers[key] = Peer(host, port, static=static)
        peer.static = peer.static or static
        if not peer.alive:
            self._want_join(key, static)

    def heard(self, msg: Peers) -> None:
        """A connection named the nodes it knows."""
        for host, port in parse_peers(msg.addrs, strict=False):
            self.add(host, port)

    def _found(self, advert: Advert) -> None:
        if advert.node_id == self.node_id:
            return
        known = self._by_id.get(advert.node_id)
        if known is None or not known.alive:
            self.add(advert.host, advert.port)

    def _want_join(self, address: str, static: bool) -> None:
        if self._leaving or address in self._ignored:
            return
        join = self._joining.get(address)
        if join is not None:
            join.static = join.static or static
            return
        now = self._loop.time()
        self._joining[address] = _Join(now, now, 0, static)
        self._arm()

    # ---- gossip in, gossip out ----

    def received(self, conn: Connection, msg: Message) -> None:
        """A gossip message on a link that came in to our server."""
        origin = self._origin_of.get(conn)
        if origin is None:
            self._next_origin += 1
            origin = f"link {self._next_origin} ({conn.peer_label})"
            self._origin_of[conn] = origin
            self._origins[origin] = conn
        self._received(origin, msg, conn)

    def _received(self, origin: str, msg: Message, conn: Connection) -> None:
        if self._leaving:
            return
        self.counters["received"] += 1
        if isinstance(msg, GossipSync) and msg.reply:
            self._joining.pop(origin, None)  # the address answered: joined through it
        try:
            out = self.gossip.received(origin, msg, self._loop.time())
        except RemoteProtocolError as exc:
            log.warning("%s; closing that link", exc)
            conn.abort(exc)
            return
        self._carry_out(out)
        self._arm()

    def _carry_out(self, out: list[Instruction]) -> None:
        for ins in out:
            if isinstance(ins, Send):
                self._send(ins.to, ins.msg)
            elif isinstance(ins, Changed):
                self._changed(ins)

    def _send(self, to: str, msg: Message) -> None:
        self.counters["sent"] += 1
        inbound = self._origins.get(to)
        if inbound is not None or to.startswith("link "):
            if inbound is not None and not inbound.closed:
                with contextlib.suppress(MeshError):
                    inbound.send(msg)
            return
        if to in self._ignored:
            return
        self._links.send(to, msg)

    def _link_failed(self, link: Link, exc: BaseException) -> None:
        peer = self.peers.get(link.address)
        if peer is not None:
            peer.error = exc
            if peer.failing_since is None:
                peer.failing_since = self._loop.time()

    def _link_opened(self, link: Link, conn: Connection) -> bool:
        """A new gossip link: refused if it reached ourselves, or a node we know by
        another address (the address is forgotten then)."""
        address = link.address
        if conn.peer_id == self.node_id:  # our own address, by another name
            self._loop.call_soon(self._forget_address, address)
            return False
        self._addr_ids[address] = conn.peer_id
        known = self._by_id.get(conn.peer_id)
        if known is not None and known.key != address:  # a node we know by its own address
            self._loop.call_soon(self._forget_address, address)
            return False
        peer = self.peers.get(address)
        if peer is not None:
            peer.conn, peer.error, peer.failing_since = conn, None, None
        return True

    def _forget_address(self, address: str) -> None:
        self._ignored.add(address)
        self._joining.pop(address, None)
        self._links.forget(address)
        peer = self.peers.get(address)
        if peer is not None and not peer.node_id:
            del self.peers[address]

    def _link_message(self, link: Link, conn: Connection, msg: Message) -> None:
        if isinstance(msg, GOSSIP_MESSAGES):
            self._received(link.address, msg, conn)
        elif isinstance(msg, (JobsReply, ConsoleReply, ConsoleSeries)):
            pending = self._pending.get(msg.req)
            if pending is not None and pending[0] is conn and not pending[1].done():
                pending[1].set_result(msg)
        elif isinstance(msg, Goodbye):
            conn.close()

    def _link_closed(self, link: Link, conn: Connection, reason: BaseException | None) -> None:
        for c, fut in self._pending.values():  # requests on it get no answer now
            if c is conn and not fut.done():
                fut.set_exception(MeshError(f"peer {link.address}: connection lost ({reason})"))
        peer = self.peers.get(link.address)
        if peer is not None and peer.conn is conn:
            peer.conn, peer.error = None, reason

    # ---- the peer table follows gossip ----

    def _changed(self, ch: Changed) -> None:
        u = ch.member
        peer = self._by_id.get(u.node_id)
        if peer is None:
            peer = self.peers.get(u.address)
            if peer is None or (peer.node_id and peer.node_id != u.node_id):
                # New, or the address now belongs to another node (a new data dir).
                host, port = _split(u.address)
                peer = self.peers[u.address] = Peer(host, port, static=bool(peer and peer.static))
            self._by_id[u.node_id] = peer
            for address, node_id in list(self._addr_ids.items()):
                if node_id == u.node_id and address != u.address:
                    self._forget_address(address)  # a seed's other name for this node
        elif peer.key != u.address:  # the same node, listening elsewhere now
            if self.peers.get(peer.key) is peer:
                del self.peers[peer.key]
            peer.host, peer.port = _split(u.address)
            self.peers[u.address] = peer
        was_alive, old_name = peer.alive, peer.name
        round_s = self.gossip.config.probe_interval_s * len(self.gossip.live())
        self._links.idle_s = max(
            self._link_idle_s, min(LINK_IDLE_MAX_S, LINK_IDLE_ROUNDS * round_s)
        )
        peer.node_id, peer.name, peer.state = u.node_id, u.name, u.state
        peer.workers, peer.running, peer.queued = u.workers, u.running, u.queued
        if self._on_member is not None and ch.previous != u.state:  # not a mere load change
            self._on_member(u, ch.previous)
        link = self._links.get(peer.key)
        peer.conn = link.conn if link is not None else None
        if peer.alive and not was_alive:
            peer.failing_since = None
            self._joining.pop(peer.key, None)
            # The peer is part of the line's template, not an argument: the log's repeat
            # filter (mesh/_logging.py) then bounds each peer's lines, not all peers'
            # together (a 50-node start logs 49 joins; bench/scale.py reads them).
            log.info(f"peer {peer.name} ({peer.key}) joined: {peer.workers} workers")
            if self._on_change is not None:
                self._on_change()
        elif was_alive and not peer.alive:
            why = "it left" if u.state == State.LEFT else "no answer to gossip probes"
            log.info(f"peer {peer.name} ({peer.key}) lost: {why}")
            if u.state == State.DEAD:  # frozen, maybe: it learns it was dead and refutes
                self._want_join(peer.key, peer.static)
        elif peer.alive and old_name and old_name != peer.name and self._on_renamed is not None:
            self._on_renamed()

    # ---- the one timer ----

    def _arm(self) -> None:
        """(Re)arm the timer for the first thing due: gossip's, a join, an idle link."""
        if self._leaving:
            return
        due = self.gossip.next_due()
        for join in self._joining.values():
            due = min(due, join.next_at)
        due = min(due, self._links.next_idle())
        if self._load is not None:
            due = min(due, self._load_at)
        if self._timer is not None:
            if self._timer.when() == due:
                return
            self._timer.cancel()
            self._timer = None
        if due < math.inf:
            due = max(due, self._loop.time() + MIN_TIMER_S)
            self._timer = self._loop.call_at(due, self._run)

    def _run(self) -> None:
        self._timer = None
        if self._leaving:
            return
        now = self._loop.time()
        self.counters["timer_runs"] += 1
        if self._load is not None and now >= self._load_at:
            self.gossip.set_load(*self._load)
            self._load, self._load_at = None, now + self.gossip.config.probe_interval_s
        try:
            out = self.gossip.tick(now)
            self.counters["probes"] += sum(
                1 for i in out if isinstance(i, Send) and isinstance(i.msg, GossipPing)
            )
            self._carry_out(out)
            self._joins(now)
            self._links.close_idle(now)
            self._forget(now)
        finally:
            self._arm()

    def _joins(self, now: float) -> None:
        """Push our state to each address being joined that is due, with backoff."""
        for address, join in list(self._joining.items()):
            if now < join.next_at:
                continue
            if not join.static and now - join.since > self._forget_after_s:
                log.info("forgetting peer %s: no answer for %g s", address, now - join.since)
                del self._joining[address]
                peer = self.peers.get(address)
                if peer is not None and not peer.alive and not peer.static:
                    del self.peers[address]
                continue
            join.next_at = now + self._retry.delay_s(join.pushes, self._retry_rng.random())
            join.pushes += 1
            self._carry_out(self.gossip.join([address], now))

    def _forget(self, now: float) -> None:
        """Members gossip has forgotten (dead long enough) leave the table too."""
        if not any(p.state is not None and p.state >= State.DEAD for p in self._by_id.values()):
            return
        known = {u.node_id for u in self.gossip.members()}
        for node_id, peer in list(self._by_id.items()):
            if node_id not in known:
                del self._by_id[node_id]
                if self.peers.get(peer.key) is peer and not peer.static:
                    del self.peers[peer.key]
                elif peer.static:
                    peer.state = None  # a seed again: it is still being joined
