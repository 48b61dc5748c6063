"""The file service's view of its peers: who holds what, and keeping catalogs the same.

Split from node/_files.py (which serves requests and moves bytes): this owns the file
links to the live peers, the anti-entropy that converges catalogs (FileDigest, then
FileCatalog for the buckets that differ; see node/_files.py's docstring), the record of
which peers hold which blobs, and the replica repair that copies a lost holder's blobs
elsewhere once it stays lost. FileService owns one and delegates to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from mesh.node._blobs import BlobStore
from mesh.node._digest import catalog_digest, differing, in_buckets, set_digest

from mesh._connection import Connection
from mesh._gossip import State, Update
from mesh._hash import is_hash
from mesh._link import Links
from mesh._protocol import FileCatalog, FileDigest, FileEntry, FileList, FileReply, Holders, Message
from mesh._tasks import TaskSet
from mesh._transfer import Transfers
from mesh.errors import ConnectionLost, FilesError, MeshError, RemoteProtocolError

if TYPE_CHECKING:
    from mesh.node._peers import Peer
    from mesh.node._server import Node

__all__ = ["FILES_LINK", "FileSync"]

log = logging.getLogger("mesh.node.files")  # the same logger as node/_files.py: one service

FILES_LINK = "/files"  # a node names its file links "NAME/files" in the handshake
SETTLE_S = 2.0  # a put or delete waits this long at most for peers to hear of it
ASK_UNLINKED_S = 60.0  # a peer unreachable for longer is not asked about unknown names


def _rereplicate_after_s() -> float:
    """How long a holder may be missing before the others copy its blobs elsewhere."""
    try:
        return float(os.environ.get("MESH_FILES_REREPLICATE_S", "30"))
    except ValueError:
        return 30.0


class FileSync:
    """The peers' side of a node's file service: its file links, catalog exchange,
    who holds which blob, and replica repair. ``replicate(entry, copies)`` is the
    service's push of a version to ``copies`` more peers (how many took it)."""

    def __init__(self, node: Node, transfers: Transfers, tasks: TaskSet,
                 replicate: Callable[[FileEntry, int], Awaitable[int]]) -> None:  # fmt: skip
        self.node = node
        self.transfers = transfers
        self.store: BlobStore | None = None  # set by start()
        self.holders: dict[str, set[str]] = {}  # blob hash -> ids of *other* nodes holding it
        self.names: dict[str, str] = {}  # node id -> node name
        # blob hash -> names of the nodes whose copy failed its hash check (until a good
        # copy is back here), so "no good copy left" can say where the bad ones were
        self.corrupt: dict[str, set[str]] = {}
        # What catalog exchange costs (the dashboard shows them; tests count them).
        self.counters = {"digests_sent": 0, "digests_received": 0, "catalogs_sent": 0,
                         "entries_sent": 0}  # fmt: skip
        self._tasks = tasks
        self._replicate = replicate
        self._net: Links | None = None  # our file links, by address (mesh/_link.py)
        self._links: dict[str, Connection] = {}  # peer node id -> our file link to it
        self._ids: dict[str, str] = {}  # "host:port" -> node id, as our file links found
        self._linking: set[str] = set()
        self._seen: dict[str, float] = {}  # peer node id -> loop time gossip last spoke of it
        self._restore_at: asyncio.TimerHandle | None = None
        self._started = 0.0
        self._rereplicate_s = _rereplicate_after_s()
        self._restoring = False

    @property
    def label(self) -> str:
        return f"node {self.node.name} ({self.node.address})"

    def start(self, store: BlobStore, on_message: Callable[[Connection, Message], None]) -> None:
        """Open for links (``on_message`` handles what arrives on them) and schedule the
        first replica check."""
        self.store = store
        self._started = asyncio.get_running_loop().time()
        # The far end closes a node's link quiet for long (node_link_timeout_s); the next
        # use opens it again, with a digest: no pings, no timer here.
        self._net = Links(self.node.config.secret, self.node.name + FILES_LINK,
                          on_message=lambda _, conn, msg: on_message(conn, msg),
                          on_close=lambda _, conn, __: self.transfers.fail_all(conn))  # fmt: skip
        # Holders named in the catalog but never seen since this start: checked then.
        self._restore_later(self._rereplicate_s)

    def cancel_restore(self) -> None:
        """No more replica checks (the service is closing)."""
        if self._restore_at is not None:
            self._restore_at.cancel()

    async def close(self) -> None:
        if self._net is not None:
            await self._net.close()

    async def ask_peers(self, names: tuple[str, ...]) -> None:
        """Names we do not know: ask every peer we know before saying "not found" (a
        version stored a moment ago on a node whose link to us is not up yet), also
        the ones our table has heard of but not reached yet (see :meth:`askable`)."""
        assert self.store is not None
        store = self.store

        async def ask(conn: Connection) -> None:
            with self.transfers.open(conn) as stream:
                stream.send(FileList(stream.req, names=names, ask_peers=False))
                while not isinstance(reply := await stream.next(), FileReply):
                    pass
            entries = [e for e in reply.entries if e[4] or is_hash(e[1])]
            for entry, holders in zip(entries, reply.holders, strict=False):
                for node_id, name in holders:
                    if node_id != self.node.node_id:
                        self.holders.setdefault(entry[1], set()).add(node_id)
                        self.names[node_id] = name
            before = {e[0]: store.entries.get(e[0]) for e in entries}
            if store.merge(entries):
                self._collect([o[1] for o in before.values() if o is not None and o[1]])

        await self._all_links(ask, self.askable())

    async def _all_links(self, ask: Any, peers: list[Peer] | None = None) -> None:
        """Run ``ask(conn)`` on a link to every live peer (or ``peers``) at once
        (linking first where there is none yet), for SETTLE_S at most."""

        async def on(peer: Peer) -> None:
            await ask(await self.link(peer))

        tasks = [asyncio.ensure_future(on(p)) for p in (self.alive() if peers is None else peers)]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=SETTLE_S)
        for t in pending:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled():
                t.exception()  # a peer that failed to answer is no one's error

    def holders_of(self, h: str) -> Holders:
        assert self.store is not None
        out = [(self.node.node_id, self.node.name)] if h in self.store.have else []
        alive = {p.node_id: p.name for p in self.alive()}  # the names they show now
        out += sorted((i, alive[i]) for i in self.holders.get(h, ()) if i in alive)
        return tuple(out)

    async def settle(self, names: tuple[str, ...]) -> None:
        """Wait until every linked peer has merged what we just told it about ``names``
        (a question asked behind it on the same link is answered after it), so a
        client that hears "done" finds the change on any node it asks next."""

        async def ask(conn: Connection) -> None:
            with self.transfers.open(conn) as stream:
                stream.send(FileList(stream.req, names=names, ask_peers=False))
                while not isinstance(await stream.next(), FileReply):
                    pass

        await self._all_links(ask)

    def commit(self, entries: list[FileEntry], targets: tuple[int, ...] = ()) -> None:
        """Record versions here (with the copies each was put with) and tell every peer;
        drop blobs no version names now."""
        assert self.store is not None
        before = {e[0]: self.store.entries.get(e[0]) for e in entries}
        changed = self.store.merge(entries, targets)
        if changed:
            self.broadcast(self._versions(changed))
            self._collect([old[1] for old in before.values() if old is not None and old[1]])

    def _versions(self, entries: list[FileEntry], **kw: Any) -> FileCatalog:
        """A FileCatalog telling ``entries``, with their targets."""
        assert self.store is not None
        targets = tuple(self.store.target(e[0]) for e in entries)
        return FileCatalog(self.node.node_id, self.node.name, tuple(entries), replicas=targets,
                           **kw)  # fmt: skip

    def _collect(self, hashes: list[str]) -> None:
        assert self.store is not None
        named = {e[1] for e in self.store.entries.values() if not e[4]}
        gone = [h for h in hashes if h not in named and h in self.store.have]
        for h in gone:
            self.store.remove(h)
        if gone:
            self.broadcast(FileCatalog(self.node.node_id, self.node.name, (), gone=tuple(gone)))

    def _digest_of_mine(self, *, reply: bool = False) -> FileDigest:
        assert self.store is not None
        buckets = () if reply else catalog_digest(self.store.entries.values())
        return FileDigest(self.node.node_id, self.node.name, buckets,
                          set_digest(self.store.have), reply)  # fmt: skip

    def _send_digest(self, conn: Connection, *, reply: bool = False) -> None:
        self.counters["digests_sent"] += 1
        with contextlib.suppress(MeshError):
            conn.send(self._digest_of_mine(reply=reply))

    def on_digest(self, conn: Connection, msg: FileDigest) -> None:
        """A peer's digest: send it our versions of the buckets that differ and ask for
        its own; ask for its blob list if ours of it differs; answer with our digest."""
        assert self.store is not None
        self.counters["digests_received"] += 1
        self.names[msg.node_id] = msg.name
        try:
            diff = (differing(catalog_digest(self.store.entries.values()), msg.buckets,
                              f"{msg.name} ({conn.peer_label})") if msg.buckets else ())  # fmt: skip
        except RemoteProtocolError as exc:
            log.warning("%s; closing that link", exc)
            conn.abort(exc)
            return
        if not msg.reply:
            self._send_digest(conn, reply=True)
        theirs = {h for h, ids in self.holders.items() if msg.node_id in ids}
        want_have = set_digest(theirs) != msg.have
        if diff or want_have:
            self._send_catalog(conn, self._versions(
                in_buckets(self.store.entries.values(), diff), want=diff, want_have=want_have))  # fmt: skip

    def _send_catalog(self, conn: Connection, msg: FileCatalog) -> None:
        self.counters["catalogs_sent"] += 1
        self.counters["entries_sent"] += len(msg.entries)
        with contextlib.suppress(MeshError):
            conn.send(msg)

    def on_catalog(self, conn: Connection, msg: FileCatalog) -> None:
        assert self.store is not None
        self.names[msg.node_id] = msg.name
        if msg.full:
            for ids in self.holders.values():
                ids.discard(msg.node_id)
        for h in msg.have:
            self.holders.setdefault(h, set()).add(msg.node_id)
        for h in msg.gone:
            self.holders.get(h, set()).discard(msg.node_id)
        for h in msg.corrupt[: len(msg.gone)]:
            self.corrupt.setdefault(h, set()).add(msg.name)
        targets = msg.replicas + (0,) * (len(msg.entries) - len(msg.replicas))
        pairs = [
            (e, t) for e, t in zip(msg.entries, targets, strict=False) if e[4] or is_hash(e[1])
        ]
        if pairs:
            entries = [e for e, _ in pairs]
            before = {e[0]: self.store.entries.get(e[0]) for e in entries}
            changed = self.store.merge(entries, [t for _, t in pairs])
            if changed:  # gossip what was news to us: a peer the sender misses hears it
                self.broadcast(self._versions(changed), skip=msg.node_id)
                self._collect([o[1] for o in before.values() if o is not None and o[1]])
        if msg.want or msg.want_have:  # its answer to our digest: our side of those buckets
            have = tuple(self.store.have) if msg.want_have else ()
            self._send_catalog(conn, self._versions(
                in_buckets(self.store.entries.values(), msg.want), have=have,
                full=msg.want_have))  # fmt: skip

    def broadcast(self, msg: FileCatalog, skip: str = "") -> None:
        """A change, to every live peer: on its link, or on a new link (whose digest
        carries the change) for a peer with none."""
        for peer in self.alive():
            if peer.node_id == skip:
                continue
            conn = self._links.get(peer.node_id)
            if conn is not None and not conn.closed:
                self._send_catalog(conn, msg)
            elif peer.node_id not in self._linking:
                self._linking.add(peer.node_id)
                self._tasks.spawn(self._connect(peer))

    def announce_have(self, h: str) -> None:
        self.broadcast(FileCatalog(self.node.node_id, self.node.name, (), have=(h,)))

    def alive(self) -> list[Peer]:
        peers = self.node.peers
        return [p for p in peers.alive() if p.node_id] if peers is not None else []

    def _alive_ids(self) -> set[str]:
        return {p.node_id for p in self.alive()}

    def askable(self) -> list[Peer]:
        """The live peers, and the ones the peer table has heard of (from a client or a
        node) but never reached, for ASK_UNLINKED_S after its first try: just after start,
        a node that holds a file may be known before the table has linked to it. A peer
        that was linked and is lost is not asked (it would only cost a timeout)."""
        peers = self.node.peers
        if peers is None:
            return []
        now = asyncio.get_running_loop().time()
        return [
            p for p in peers.peers.values()
            if p.alive or (not p.node_id and (p.failing_since is None
                                              or now - p.failing_since < ASK_UNLINKED_S))
        ]  # fmt: skip

    def reachable(self) -> list[Peer]:
        """The live peers, and the others we hold a file link to (asked by ask_peers)."""
        peers = self.node.peers
        if peers is None:
            return []
        return [p for p in peers.peers.values() if p.alive or self._linked(self.id_of(p))]

    def _linked(self, node_id: str) -> bool:
        conn = self._links.get(node_id) if node_id else None
        return conn is not None and not conn.closed

    def id_of(self, peer: Peer) -> str:
        """A peer's node id: from the table, or from our own file link to its address."""
        return peer.node_id or self._ids.get(peer.key, "")

    async def link(self, peer: Peer) -> Connection:
        node_id = self.id_of(peer)
        if node_id == self.node.node_id:
            raise FilesError(f"{peer.key} is {self.label} itself")
        conn = self._links.get(node_id) if node_id else None
        if conn is not None and not conn.closed:
            return conn
        if self._net is None:
            raise FilesError(f"{self.label}'s file service is not started")
        self._net.name = self.node.name + FILES_LINK  # (the node may have been renamed)
        conn = await self._net.connected(peer.key)
        node_id = self._ids[peer.key] = conn.peer_id
        if node_id == self.node.node_id:  # our own address, as a client named it
            self._net.forget(peer.key)
            raise FilesError(f"{peer.key} is {self.label} itself")
        old = self._links.get(node_id)
        if old is conn:  # another task linked meanwhile, on this same connect
            return conn
        if old is not None and not old.closed:  # ... or at another address of that node
            self._net.forget(peer.key)
            return old
        self._links[node_id] = conn
        self.names[node_id] = conn.peer_name or peer.name or peer.key
        self._send_digest(conn)  # anti-entropy: only what differs follows
        return conn

    async def _connect(self, peer: Peer) -> None:
        try:
            await self.link(peer)
        except MeshError as exc:
            log.info("no file link to %s yet: %s", peer.name, exc)
        finally:
            self._linking.discard(peer.node_id)

    def member_changed(self, u: Update, previous: State | None) -> None:
        """Gossip says a member joined, came back, died or left (node/_server.py). A
        member that joins gets a link, so our digest; a lost one's link is dropped and
        its blobs are copied elsewhere if it stays lost (see _restore_replicas)."""
        now = asyncio.get_running_loop().time()
        self._seen[u.node_id] = now
        peers = self.node.peers
        if u.state <= State.SUSPECT:
            if previous is None or previous >= State.DEAD:
                peer = peers.peer(u.node_id) if peers is not None else None
                if peer is not None and u.node_id not in self._linking:
                    self._linking.add(u.node_id)
                    self._tasks.spawn(self._connect(peer))
            return
        conn = self._links.get(u.node_id)
        if conn is not None and not conn.closed:
            how = "left" if u.state == State.LEFT else "dead"
            conn.abort(ConnectionLost(f"file link to {u.name}: gossip declared that node {how}"))
        self._restore_later(self._rereplicate_s + 0.1)

    def _restore_later(self, delay_s: float) -> None:
        """Check replica counts in ``delay_s`` (the earliest check asked for wins)."""
        loop = asyncio.get_running_loop()
        at = loop.time() + delay_s
        if self._restore_at is not None:
            if self._restore_at.when() <= at:
                return
            self._restore_at.cancel()
        self._restore_at = loop.call_at(at, self._restore_due)

    def _restore_due(self) -> None:
        self._restore_at = None
        if self._restoring:  # copies still under way: look again once they are done
            self._restore_later(1.0)
            return
        self._restoring = True
        self._tasks.spawn(self._restore_replicas(asyncio.get_running_loop().time()))

    async def _restore_replicas(self, now: float) -> None:
        """A holder missing for good: the first live holder (by id) copies its blobs."""
        try:
            await self._restore_replicas_now(now)
        finally:
            self._restoring = False

    async def _restore_replicas_now(self, now: float) -> None:
        assert self.store is not None
        alive = self._alive_ids()
        for entry in self.store.live():
            h = entry[1]
            ids = self.holders.get(h)
            if not ids or h not in self.store.have:
                continue
            lost = {
                i for i in ids
                if i not in alive
                and now - self._seen.get(i, self._started) > self._rereplicate_s
            }  # fmt: skip
            if not lost:
                continue
            live = {self.node.node_id} | (ids & alive)
            # As many as the put asked for, counting every live copy (pulled ones too);
            # a version whose target is not known here replaces the lost ones.
            target = self.store.target(entry[0])
            need = target - len(live) if target else len(lost)
            if need > 0 and min(live) == self.node.node_id:
                made = await self._replicate(entry, need)
                log.info("%r lost %d holders; copied it to %d nodes", entry[0], len(lost), made)
            ids -= lost
