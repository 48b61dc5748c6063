"""The node's side of ``mesh.files``: requests, replication, pulls and catalog exchange.

Clients reach it over their authenticated connections; jobs reach it over a unix
socket in the data dir (``files.sock``, mode 0600, its path in ``MESH_NODE_FILES``
for the workers): only this user can connect, as only the node's own socketpair
reaches its workers, and no secret passes through the environment of every
process a job starts. Other nodes are reached over file links this service opens
to the live peers of the node's peer table, when a member joins (or comes back) and
when there is something to send; the far end closes a link quiet for long.

Catalogs converge by anti-entropy, not by sending them whole: on each new link a node
sends a FileDigest (per-bucket hashes of its catalog, node/_digest.py, and one hash of
the blobs it holds); the other answers with its versions of the buckets that differ
and asks for the sender's (FileCatalog ``want``), and for its blob list if that
differs. Every change then goes to the linked peers as it happens (and a peer with no
link gets a link, so a digest). Nothing runs on a timer while nothing changes: an idle
mesh sends no catalog traffic. A change a peer missed (its link broke mid-send) is
repaired by the digest of the next link, or of its coming back; a name a node has not
heard of is asked of the peers before "not found" (ask_peers).

This module serves requests and moves bytes (put, get, pull); the peers' side (file
links, catalog exchange, who holds which blob, replica repair) is FileSync, in
node/_file_sync.py, which FileService owns.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import tempfile
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from mesh.node._blobs import BlobStore
from mesh.node._file_sync import FILES_LINK, FileSync

from mesh._connection import Connection
from mesh._gossip import State, Update
from mesh._hash import is_hash
from mesh._protocol import (
    FileAck,
    FileCatalog,
    FileChunk,
    FileDelete,
    FileDigest,
    FileEnd,
    FileEntry,
    FileGet,
    FileList,
    FilePut,
    FileReply,
    Holders,
    Message,
)
from mesh._tasks import TaskSet
from mesh._transfer import Stream, Transfers
from mesh.errors import (
    FileCorrupted,
    FilesError,
    FileStoreFull,
    MeshError,
    MeshFileNotFound,
)

if TYPE_CHECKING:
    from mesh.node._peers import Peer
    from mesh.node._server import Node

__all__ = ["FILES_LINK", "FILE_MESSAGES", "FileService"]

log = logging.getLogger("mesh.node.files")

# Every message this service handles (the node routes them here).
FILE_MESSAGES = (FilePut, FileChunk, FileAck, FileEnd, FileGet, FileReply, FileList, FileDelete,
                 FileCatalog, FileDigest)  # fmt: skip
MAX_NAME = 4096


def _open_raw(path: Path) -> IO[bytes]:
    return open(path, "rb", buffering=0)  # Stream.send_file reads into its own buffers


def _bad_name(name: str) -> str | None:
    if not name:
        return "a file name cannot be empty"
    if len(name) > MAX_NAME or "\0" in name:
        return f"file name {name[:40]!r}... is too long or holds a NUL byte"
    return None


class _Forward:
    """A copy of a put being passed on to a peer as it arrives. A peer that fails is
    dropped (the put copies to another from disk afterwards); the put goes on."""

    def __init__(self, peer: Peer, stream: Stream) -> None:
        self.peer = peer
        self.stream = stream
        self.ended = False  # FileEnd sent (or the link is gone): nothing more to send

    async def send(self, data: bytes) -> None:
        if self.ended:
            return
        try:
            if not await self.stream.send_chunk(data):
                self.ended = True  # it answered early: its FileReply says why
        except MeshError as exc:
            log.warning("copy to %s stopped: %s", self.peer.name, exc)
            self.ended = True

    def end(self, h: str) -> None:
        """All sent: FileEnd with the hash this node checked (the peer checks it too)."""
        if not self.ended:
            self.ended = True
            with contextlib.suppress(MeshError):  # a lost link: its reply() says so
                self.stream.send(FileEnd(self.stream.req, h))

    def stop(self, why: str) -> None:
        if not self.ended:
            self.ended = True
            with contextlib.suppress(MeshError):
                self.stream.send(FileEnd(self.stream.req, "", f"stopped: {why}"))
            self.stream.close()


class FileService:
    def __init__(self, node: Node) -> None:
        self.node = node
        self.store: BlobStore | None = None
        self.transfers = Transfers()
        # A request whose connection went away mid-answer (MeshError) has no one to tell.
        self._tasks = TaskSet("files", log, quiet=(MeshError,))
        # The peers: links, catalog exchange, who holds what, replica repair.
        self.sync = FileSync(node, self.transfers, self._tasks, self._replicate)
        self.counters = self.sync.counters  # (the dashboard reads them here)
        self._pulls: dict[str, asyncio.Future[Path]] = {}
        self._unix: asyncio.AbstractServer | None = None
        self._sock_dir: str | None = None
        self.socket_path = ""

    @property
    def label(self) -> str:
        return self.sync.label

    # ---- lifecycle ----

    async def start(self) -> None:
        data_dir = self.node.config.data_dir
        self.store = await asyncio.to_thread(BlobStore, data_dir)
        path = str(data_dir / "files.sock")
        if len(path) > 100:  # AF_UNIX paths are short: a private temp dir instead
            self._sock_dir = tempfile.mkdtemp(prefix="lanmesh-files-")
            path = os.path.join(self._sock_dir, "files.sock")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        loop = asyncio.get_running_loop()
        old = os.umask(0o177)
        try:
            self._unix = await loop.create_unix_server(self._local_connection, path)
        finally:
            os.umask(old)
        self.socket_path = path
        os.environ["MESH_NODE_FILES"] = path  # the workers started after this inherit it
        self.sync.start(self.store, self.handle)

    async def close(self) -> None:
        self.sync.cancel_restore()
        await self._tasks.close()
        await self.sync.close()
        if self._unix is not None:
            self._unix.close()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
        if self._sock_dir is not None:
            with contextlib.suppress(OSError):
                os.rmdir(self._sock_dir)
        if self.store is not None:
            self.store.close()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._tasks.spawn(coro)

    def member_changed(self, u: Update, previous: State | None) -> None:
        """Gossip says a member joined, came back, died or left (node/_server.py)."""
        self.sync.member_changed(u, previous)

    def _local_connection(self) -> Connection:
        return Connection("plain", peer_label="a job on this node", on_message=self.handle)

    # ---- messages ----

    def handle(self, conn: Connection, msg: Message) -> None:
        """A files message from a client, a job, or another node (ours to answer)."""
        if self.transfers.dispatch(conn, msg):
            return
        if self.store is None:
            return
        if isinstance(msg, FilePut):
            self._spawn(self._put(self.transfers.open(conn, msg.req), msg))
        elif isinstance(msg, FileGet):
            self._spawn(self._get(self.transfers.open(conn, msg.req), msg))
        elif isinstance(msg, FileList):
            missing = [n for n in msg.names if self.store.current(n) is None]
            if missing and msg.ask_peers and self.sync.askable():
                self._spawn(self._ask_then(missing, self._list, conn, msg))
            else:
                self._list(conn, msg)
        elif isinstance(msg, FileDelete):
            if self.store.current(msg.name) is None and self.sync.askable():
                self._spawn(self._ask_then([msg.name], self._delete, conn, msg))
            else:
                self._delete(conn, msg)
        elif isinstance(msg, FileCatalog):
            self.sync.on_catalog(conn, msg)
        elif isinstance(msg, FileDigest):
            self.sync.on_digest(conn, msg)

    async def _ask_then(self, names: list[str], then: Any, conn: Connection, msg: Any) -> None:
        await self.sync.ask_peers(tuple(names))
        then(conn, msg)

    # ---- read-only views (the dashboard) ----

    def catalog(self, prefix: str = "") -> list[tuple[FileEntry, Holders]]:
        """The live versions this node knows, by name, each with its live holders."""
        if self.store is None:
            return []
        return [(e, self.sync.holders_of(e[1])) for e in self.store.live(prefix)]

    def held(self) -> dict[str, tuple[int, int]]:
        """Node id -> (blobs, bytes) it holds: this node's from its blob store, the
        peers' from what they announced (sizes from the catalog's versions)."""
        if self.store is None:
            return {}
        sizes = {e[1]: e[2] for e in self.store.entries.values() if not e[4]}
        out: dict[str, tuple[int, int]] = {}
        for h in self.store.have:
            size = sizes.get(h)
            if size is None:  # no live version names it (about to be collected)
                with contextlib.suppress(OSError):
                    size = self.store.path(h).stat().st_size
            count, total = out.get(self.node.node_id, (0, 0))
            out[self.node.node_id] = (count + 1, total + (size or 0))
        for h, ids in self.sync.holders.items():
            for node_id in ids:
                count, total = out.get(node_id, (0, 0))
                out[node_id] = (count + 1, total + sizes.get(h, 0))
        return out

    def _reply(self, conn: Connection, msg: FileReply) -> None:
        if not conn.closed:
            conn.send(msg)

    def _list(self, conn: Connection, msg: FileList) -> None:
        assert self.store is not None
        if msg.names:
            entries = [e for e in map(self.store.current, msg.names) if e is not None]
        else:
            entries = self.store.live(msg.prefix)
        self._reply(conn, FileReply(msg.req, tuple(entries),
                                    tuple(self.sync.holders_of(e[1]) for e in entries)))  # fmt: skip

    def _delete(self, conn: Connection, msg: FileDelete) -> None:
        assert self.store is not None
        entry = self.store.current(msg.name)
        if entry is None:
            self._reply(conn, FileReply(msg.req, error_kind="not-found",
                        error=f"no file {msg.name!r} in the mesh file store ({self.label})"))  # fmt: skip
            return
        tomb = (msg.name, "", 0, max(time.time(), entry[3] + 1e-6), True)
        self.sync.commit([tomb])
        self._spawn(self._settle_then_reply(conn, (msg.name,), FileReply(msg.req, (tomb,))))

    async def _settle_then_reply(self, conn: Connection, names: tuple[str, ...],
                                 reply: FileReply) -> None:  # fmt: skip
        await self.sync.settle(names)
        self._reply(conn, reply)

    # ---- put ----

    async def _put(self, stream: Stream, msg: FilePut) -> None:
        assert self.store is not None
        with stream:
            bad = _bad_name(msg.name)
            if bad is not None:
                stream.send(FileReply(msg.req, error_kind="invalid", error=bad))
                return
            h = msg.hash
            copies = 0
            if h and is_hash(h) and h in self.store.have and await self.store.verify(h):
                size = self.store.path(h).stat().st_size  # held already: nothing moves
            else:
                forwards = await self._forwards(msg) if msg.replicas > 1 else []
                expect = msg.hash if msg.time else ""  # a copy of a stored version
                try:
                    h, size = await self._receive(stream, msg.name, forwards, expect)
                except FilesError as exc:
                    if not stream.conn.closed:
                        kind = "disk" if isinstance(exc, FileStoreFull) else "failed"
                        stream.send(FileReply(msg.req, error_kind=kind, error=str(exc)))
                    return
                except MeshError as exc:
                    log.info("put of %r from %s failed: %s", msg.name, stream.conn.peer_label, exc)
                    return
                self.sync.announce_have(h)
                copies = await self._forwarded(forwards, h)
            entry = (msg.name, h, size, msg.time or time.time(), False)
            if msg.replicas - 1 > copies:  # peers that failed mid-way: copy from disk
                await self._replicate(entry, msg.replicas - 1 - copies)
            self.sync.commit([entry], (msg.target if msg.time else msg.replicas,))
            if not msg.time:  # the client's own put (not a replica): read-your-writes
                await self.sync.settle((msg.name,))
            if not stream.conn.closed:
                stream.send(FileReply(msg.req, (entry,), (self.sync.holders_of(h),)))

    async def _forwards(self, msg: FilePut) -> list[_Forward]:
        """Transfers to the peers that take the other copies of a put as its bytes
        arrive, so two copies cost about what one does (each peer checks the hash)."""
        known = self.sync.holders.get(msg.hash, set()) if msg.hash else set()
        peers = self._by_load([p for p in self.sync.alive() if p.node_id not in known])
        peers = peers[: msg.replicas - 1]
        links = await asyncio.gather(*(self.sync.link(p) for p in peers), return_exceptions=True)
        out = []
        when = time.time()  # superseded by this node's version once the put is done
        for peer, conn in zip(peers, links, strict=True):
            if isinstance(conn, MeshError):
                log.info("no copy of %r on %s as it arrives: %s", msg.name, peer.name, conn)
                continue
            if isinstance(conn, BaseException):
                raise conn
            stream = self.transfers.open(conn)
            stream.send(FilePut(stream.req, msg.name, msg.size, 1, msg.hash, when, msg.replicas))
            out.append(_Forward(peer, stream))
        return out

    async def _forwarded(self, forwards: list[_Forward], h: str) -> int:
        """Wait for the peers' answers on the forwarded copies of blob ``h`` (ended by
        :meth:`_receive`); how many stored it."""

        async def end(fw: _Forward) -> bool:
            with fw.stream:
                try:
                    reply = await fw.stream.reply()
                except MeshError as exc:
                    log.warning("copy of blob %s to %s failed: %s", h[:12], fw.peer.name, exc)
                    return False
            if reply.error_kind:
                log.warning("copy of blob %s to %s failed: %s", h[:12], fw.peer.name, reply.error)
                return False
            self.sync.holders.setdefault(h, set()).add(fw.peer.node_id)
            return True

        return sum(await asyncio.gather(*(end(fw) for fw in forwards)))

    async def _receive(self, stream: Stream, name: str, forwards: Sequence[_Forward] = (),
                       expect: str = "") -> tuple[str, int]:  # fmt: skip
        """Receive a blob into the store (temp file, fsync, rename), each chunk passed
        on to ``forwards`` first; (hash, size). The forwards end as soon as the hash
        checks out, before this node's fsync: if that fails the peers keep good copies
        of a put that failed here (the client retries; the content is what it sent).
        ``expect``: the blob a copy stands for; other bytes raise FileCorrupted."""
        assert self.store is not None
        writer = self.store.writer()

        async def forward(data: bytes) -> None:
            for fw in forwards:
                await fw.send(data)

        try:
            await writer.open()
            h, size = await stream.receive_chunks(
                writer.write, forward=forward if forwards else None
            )
            if expect and h != expect:
                raise FileCorrupted(f"the copy of blob {expect[:12]} from "
                                    f"{stream.conn.peer_label} hashes to {h[:12]}", name=name)  # fmt: skip
            for fw in forwards:  # the hash checked out: the peers fsync while we do
                fw.end(h)
            await writer.commit(h)
            return h, size
        except BaseException as exc:
            await writer.abort()
            for fw in forwards:  # not yet ended: the peers drop what they got
                fw.stop(f"the copy on {self.label} failed")
            if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise FileStoreFull(
                    f"{self.label} has no space left storing {name!r} "
                    f"({self.store.dir}): {exc.strerror}", name=name,
                ) from exc  # fmt: skip
            if isinstance(exc, OSError):
                raise FilesError(f"{self.label} could not store {name!r}: {exc}",
                                 name=name) from exc  # fmt: skip
            raise

    def _by_load(self, peers: list[Peer]) -> list[Peer]:
        return sorted(peers, key=lambda p: ((p.running + p.queued) / max(p.workers, 1), p.name))

    async def _replicate(self, entry: FileEntry, copies: int) -> int:
        """Push blob and version to ``copies`` least-loaded peers lacking it; how many took it."""
        h = entry[1]
        assert self.store is not None
        lacking = [p for p in self.sync.alive() if p.node_id not in self.sync.holders.get(h, set())]
        done = 0
        for peer in self._by_load(lacking):
            if done >= copies or h not in self.store.have:  # ours was found bad meanwhile
                break
            try:
                await self._push(peer, entry)
                done += 1
            except MeshError as exc:
                log.warning("could not copy %r to %s: %s", entry[0], peer.name, exc)
        return done

    async def _push(self, peer: Peer, entry: FileEntry) -> None:
        assert self.store is not None
        conn = await self.sync.link(peer)
        h = entry[1]
        with self.transfers.open(conn) as stream:
            target = self.store.target(entry[0])
            stream.send(FilePut(stream.req, entry[0], entry[2], 1, h, entry[3], target))
            try:
                f = await asyncio.to_thread(_open_raw, self.store.path(h))
            except OSError as exc:
                raise FilesError(f"{self.label} lost blob {h[:12]}: {exc}") from exc
            try:
                sent = await stream.send_file(f, expect=h)
            finally:
                f.close()
            if sent is not None and sent[0] != h:  # never copy bad bytes: replace ours
                log.error("blob %s (%r) failed its hash check; fetching a good copy", h,
                          entry[0])  # fmt: skip
                self._drop(h, corrupt=True)
                raise FileCorrupted(f"{self.label}'s copy of {entry[0]!r} failed its hash check")
            while True:
                reply = await stream.next()
                if isinstance(reply, FileReply):
                    break
            if reply.error_kind:
                raise FilesError(reply.error)
        self.sync.holders.setdefault(h, set()).add(peer.node_id)

    # ---- get and pull ----

    async def _get(self, stream: Stream, msg: FileGet) -> None:
        assert self.store is not None
        with stream:
            # A reader found our copy bad: check it ourselves (whoever says so).
            bad = msg.bad if is_hash(msg.bad) and msg.bad in self.store.have else ""
            if bad and not await self.store.verify(bad, again=True):
                log.error("blob %s (%r) failed its hash check on read; fetching a good copy",
                          bad, msg.name)  # fmt: skip
                self._drop(bad, corrupt=True)
            if msg.hash:  # another node pulling a blob: only what we hold
                entry: FileEntry | None = ("", msg.hash, 0, 0.0, False)
                if not is_hash(msg.hash) or msg.hash not in self.store.have:
                    entry = None
            else:
                entry = self.store.current(msg.name)
                if entry is None and self.sync.askable():
                    await self.sync.ask_peers((msg.name,))
                    entry = self.store.current(msg.name)
            if entry is None:
                what = f"file {msg.name!r}" if msg.name else f"blob {msg.hash[:12]}"
                stream.send(FileReply(msg.req, error_kind="not-found",
                                      error=f"no {what} in the mesh file store ({self.label})"))  # fmt: skip
                return
            h = entry[1]
            try:
                if msg.local or not msg.hash:
                    path = await self.ensure_local(h, msg.name)
                else:
                    path = self.store.path(h)
            except FilesError as exc:
                kind = "corrupt" if isinstance(exc, FileCorrupted) else "unavailable"
                stream.send(FileReply(msg.req, error_kind=kind, error=str(exc)))
                return
            except MeshError as exc:
                stream.send(FileReply(msg.req, error_kind="unavailable", error=str(exc)))
                return
            if msg.local and stream.conn.role == "plain":  # only a job on this machine
                stream.send(FileReply(msg.req, (entry,), path=str(path)))
                return
            try:
                f = await asyncio.to_thread(_open_raw, path)
            except OSError as exc:
                self.store.remove(h)
                stream.send(FileReply(msg.req, error_kind="unavailable",
                                      error=f"{self.label} lost blob {h[:12]}: {exc}"))  # fmt: skip
                return
            stream.send(FileReply(msg.req, (entry,)))
            try:
                sent = await stream.send_file(f, expect=h)
            except MeshError as exc:
                log.info("sending %r to %s stopped: %s", msg.name or h, stream.conn.peer_label, exc)
                return
            finally:
                f.close()
            if sent is not None and sent[0] != h:
                log.error("blob %s (%r) failed its hash check; fetching a good copy", h,
                          msg.name)  # fmt: skip
                self._drop(h, corrupt=True)

    def _drop(self, h: str, *, corrupt: bool = False) -> None:
        """Forget our copy of blob ``h``. A ``corrupt`` one (it failed its hash check)
        is replaced: a good copy is fetched from another holder, if a version names it."""
        assert self.store is not None
        self.store.remove(h)
        bad = (h,) if corrupt else ()
        self.sync.broadcast(
            FileCatalog(self.node.node_id, self.node.name, (), gone=(h,), corrupt=bad)
        )
        if corrupt:
            self.sync.corrupt.setdefault(h, set()).add(self.node.name)
            named = next((e[0] for e in self.store.live() if e[1] == h), None)
            if named is not None:
                self._spawn(self._refetch(h, named))

    async def _refetch(self, h: str, name: str) -> None:
        try:
            await self.ensure_local(h, name)
        except MeshError as exc:
            log.error("no good copy of %r to replace the corrupted one: %s", name, exc)

    async def ensure_local(self, h: str, name: str = "") -> Path:
        """The path of a verified copy of blob ``h`` here, pulled from a peer if need be."""
        assert self.store is not None
        if h in self.store.have:
            if await self.store.verify(h):
                return self.store.path(h)
            log.error("blob %s (%r) failed its hash check; fetching it again", h, name)
            self._drop(h, corrupt=True)
        pending = self._pulls.get(h)
        if pending is None:
            pending = self._pulls[h] = asyncio.get_running_loop().create_future()
            self._spawn(self._pull(h, name, pending))
        return await asyncio.shield(pending)

    async def ensure_named(self, name: str) -> Path:
        """The path of a verified local copy of the current version of ``name``
        (asking the peers first if this node has not heard of it)."""
        assert self.store is not None
        entry = self.store.current(name)
        if entry is None and self.sync.askable():
            await self.sync.ask_peers((name,))
            entry = self.store.current(name)
        if entry is None:
            raise MeshFileNotFound(f"no file {name!r} in the mesh file store ({self.label})",
                                   name=name)  # fmt: skip
        return await self.ensure_local(entry[1], name)

    async def _pull(self, h: str, name: str, done: asyncio.Future[Path]) -> None:
        errors = []
        failed = False  # a holder failed otherwise than with a bad copy
        bad = self.sync.corrupt.setdefault(h, set())
        try:
            held = self.sync.holders.get(h, set())
            holders = [p for p in self.sync.reachable() if self.sync.id_of(p) in held]
            for peer in self._by_load(holders):
                try:
                    path = await self._pull_from(peer, h, name)
                except FileCorrupted as exc:
                    bad.add(peer.name)
                    errors.append(f"{peer.name}: {exc}")
                    continue
                except MeshError as exc:
                    failed = True
                    errors.append(f"{peer.name}: {exc}")
                    continue
                self.sync.corrupt.pop(h, None)
                done.set_result(path)
                return
            what = f"{name!r} (blob {h[:12]})" if name else f"blob {h[:12]}"
            why = "; ".join(errors) or "no live node holds it"
            if bad and not failed:  # every copy we know of is bad: say where they were
                where = ", ".join(sorted(bad))
                done.set_exception(FileCorrupted(
                    f"{what} is corrupted on node{'s' if len(bad) > 1 else ''} {where}, no "
                    f"good copy left (checked by {self.label}{'; ' + why if errors else ''})", name=name))  # fmt: skip
            else:
                done.set_exception(FilesError(f"{self.label} could not fetch {what}: {why}",
                                              name=name))  # fmt: skip
        except BaseException as exc:
            if not done.done():
                done.set_exception(exc)
            raise
        finally:
            if not bad:
                self.sync.corrupt.pop(h, None)
            self._pulls.pop(h, None)
            if done.done() and not done.cancelled():
                done.exception()  # retrieved: nobody may be waiting any more

    async def _pull_from(self, peer: Peer, h: str, name: str) -> Path:
        conn = await self.sync.link(peer)
        with self.transfers.open(conn) as stream:
            stream.send(FileGet(stream.req, "", h))
            head = await stream.next()
            if not isinstance(head, FileReply) or head.error_kind:
                err = head.error if isinstance(head, FileReply) else "unexpected answer"
                self.sync.holders.get(h, set()).discard(self.sync.id_of(peer))
                raise FilesError(err)
            got, _ = await self._receive(stream, name or h[:12])
        if got != h:
            raise FileCorrupted(f"blob from {peer.name} hashes to {got[:12]}, not {h[:12]}")
        log.info("pulled %r (%s) from %s", name, h[:12], peer.name)
        self.sync.announce_have(h)
        assert self.store is not None
        return self.store.path(h)

    # ---- peers ----
