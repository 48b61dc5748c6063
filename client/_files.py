"""The client's side of ``mesh.files``: ``AsyncFiles`` (coroutines) and ``Files`` (sync).

Both work over whatever links they are given: an :class:`AsyncClient`'s connections
to its nodes, or, inside a job, one local connection to the job's own node (a unix
socket in the node's data dir, named by ``MESH_NODE_FILES``). There, ``getf`` opens
the node's verified copy of the blob in place (pulled from a peer first if the node
lacked it), so a job reads its input at disk speed and the node keeps the copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob as _glob
import io
import logging
import os
import tempfile
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Protocol, TypeVar

from mesh.client._file_streams import (
    StreamedFile,
    VerifiedFile,
    call_soon,
    restart_output,
    write_all,
)

from mesh._connection import Connection
from mesh._hash import hash_file, new_hash
from mesh._protocol import (
    FileDelete,
    FileEnd,
    FileEntry,
    FileGet,
    FileList,
    FilePut,
    FileReply,
    Holders,
    Message,
    Peers,
)
from mesh._tasks import TaskSet
from mesh._transfer import Stream, Transfers, file_chunks, reply_error
from mesh.errors import FileCorrupted, FilesError, MeshError, MeshFileNotFound, NoNodesAvailable

__all__ = ["AsyncFiles", "FileInfo", "Files", "SyncReport", "job_files"]

T = TypeVar("T")
log = logging.getLogger("mesh.client.files")
DEFAULT_REPLICAS = 2


class _Answered(Exception):
    """A node answered a transfer before its end (it held the blob already, or failed)."""


class _LinkLike(Protocol):
    conn: Connection | None
    node_id: str
    name: str
    workers: int
    running: int
    queued: int


@dataclass(frozen=True)
class FileInfo:
    """A file's current version (``mesh.files.info``)."""

    name: str
    size: int
    hash: str  # the content hash (mesh._hash: BLAKE3), hex
    time: float  # when this version was stored (epoch seconds)
    nodes: tuple[str, ...]  # names of the live nodes holding it
    node_ids: tuple[str, ...] = ()  # their ids, in the same order (names are for people)

    @classmethod
    def from_entry(cls, e: FileEntry, holders: Holders = ()) -> FileInfo:
        return cls(e[0], e[2], e[1], e[3], tuple(name for _, name in holders),
                   tuple(node_id for node_id, _ in holders))  # fmt: skip


@dataclass
class SyncReport:
    """What ``sync`` did: the names it sent, the ones already current, the bytes moved."""

    sent: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    bytes_sent: int = 0


class AsyncFiles:
    """``mesh.files`` as coroutines over the links ``links()`` returns (usable ones)."""

    def __init__(self, links: Callable[[], Sequence[_LinkLike]], *, local: bool = False) -> None:
        self._links = links
        self._local = local  # a job on its node's machine: blobs are opened in place
        self.transfers = Transfers()
        self._introduced: set[tuple[int, int]] = set()
        self._downloads = TaskSet("files", log)  # the streamed getf's

    async def close(self) -> None:
        """Stop the downloads of streamed ``getf`` files still open (their reads fail)."""
        await self._downloads.close()

    def handle(self, conn: Connection, msg: Any) -> bool:
        """A message from a node: True if it belonged to a files request."""
        return self.transfers.dispatch(conn, msg)

    def on_message(self, conn: Connection, msg: Message) -> None:
        self.transfers.dispatch(conn, msg)

    # ---- picking nodes ----

    def _usable(self) -> list[_LinkLike]:
        links = [lk for lk in self._links() if lk.conn is not None and not lk.conn.closed]
        if not links:
            raise NoNodesAvailable("no node reachable for mesh.files")
        self._introduce(links)
        return sorted(links, key=lambda lk: ((lk.running + lk.queued) / max(lk.workers, 1),
                                             lk.name))  # fmt: skip

    def _introduce(self, links: Sequence[_LinkLike]) -> None:
        """Tell each node the others this client uses, once per connection: nodes
        started without --peer (a local mesh) then find each other, share their
        catalogs and copy replicas."""
        keys = tuple(k for k in (getattr(lk, "key", "") for lk in links) if k)
        if len(keys) < 2:
            return
        for lk in links:
            conn = lk.conn
            if conn is not None and (id(conn), len(keys)) not in self._introduced:
                self._introduced.add((id(conn), len(keys)))
                conn.send(Peers(keys))

    def _conn(self, link: _LinkLike) -> Connection:
        assert link.conn is not None
        return link.conn

    async def _ask(self, msg_for: Callable[[int], Any], link: _LinkLike | None = None) -> FileReply:
        link = link or self._usable()[0]
        with self.transfers.open(self._conn(link)) as stream:
            stream.send(msg_for(stream.req))
            return await _reply(stream)

    # ---- the API ----

    async def put(self, path: str | os.PathLike[str], name: str | None = None,
                  replicas: int = DEFAULT_REPLICAS) -> FileInfo:  # fmt: skip
        """Store a local file under ``name`` (default: its file name); return once it is
        durable on ``replicas`` nodes (or all, if fewer)."""
        path = os.fspath(path)
        name = name if name is not None else os.path.basename(path)
        try:
            f = await asyncio.to_thread(_open_raw, path)
        except OSError as exc:
            raise FilesError(f"cannot read {path} to store it as {name!r}: {exc}",
                             name=name) from exc  # fmt: skip
        try:
            return await self._put(name, os.fstat(f.fileno()).st_size, f, replicas)
        finally:
            f.close()

    async def putf(self, fileobj: IO[bytes] | IO[str] | bytes | str, name: str,
                   replicas: int = DEFAULT_REPLICAS) -> FileInfo:  # fmt: skip
        """Store what a readable file object, ``bytes`` or ``str`` (as UTF-8) holds
        under ``name``."""
        if isinstance(fileobj, str):
            fileobj = fileobj.encode()
        if isinstance(fileobj, (bytes, bytearray, memoryview)):
            fileobj = io.BytesIO(bytes(fileobj))
        elif not callable(getattr(fileobj, "read", None)):
            raise TypeError(
                f"mesh.files.putf({name!r}) takes a readable file object, bytes or str, "
                f"not {type(fileobj).__name__}"
            )

        async def read(n: int) -> bytes:
            data = fileobj.read(n)
            return data.encode() if isinstance(data, str) else data

        return await self._put(name, -1, read, replicas)

    async def _put(self, name: str, size: int, source: Callable[[int], Any] | IO[bytes],
                   replicas: int, hash: str = "") -> FileInfo:  # fmt: skip
        """Send ``source`` (an unbuffered file, or an async ``read(n)``) as ``name``."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a file name is a non-empty str, not {name!r}")
        link = self._usable()[0]
        with self.transfers.open(self._conn(link)) as stream:
            stream.send(FilePut(stream.req, name, size, max(1, replicas), hash))
            try:
                if callable(source):
                    await stream.send_chunks(file_chunks(source))
                else:
                    await stream.send_file(source)
                reply = await _reply(stream)
            except FilesError as exc:
                raise type(exc)(f"storing {name!r} on node {link.name}: {exc}", name=name) from exc
            except MeshError as exc:
                raise FilesError(f"storing {name!r} on node {link.name} failed: {exc}",
                                 name=name) from exc  # fmt: skip
        err = reply_error(reply, name)
        if err is not None:
            raise err
        entry = reply.entries[0]
        holders = await self._top_up(entry, reply.holders[0] if reply.holders else (), replicas)
        return FileInfo.from_entry(entry, holders)

    async def _top_up(self, entry: FileEntry, holders: Holders, replicas: int) -> Holders:
        """Copy a version just stored to more of this client's nodes while it is on
        fewer than ``replicas``: the node that took the put may not have linked to the
        others yet (just after they started), but this client reaches them all. Each
        copy goes from a holder to the missing node through this client's own links;
        the holders are returned, the new ones included."""
        held = {node_id for node_id, _ in holders}
        if len(held) >= replicas:
            return holders
        links = [lk for lk in self._usable() if lk.node_id]
        source = next((lk for lk in links if lk.node_id in held), None)
        if source is None:
            return holders
        out = list(holders)
        for link in links:
            if len(held) >= replicas:
                break
            if link.node_id in held:
                continue
            try:
                await self._copy(entry, source, link, replicas)
            except MeshError as exc:  # that node cannot take it: the next one may
                log.warning("no copy of %r on node %s: %s", entry[0], link.name, exc)
                continue
            held.add(link.node_id)
            out.append((link.node_id, link.name))
        return tuple(out)

    async def _copy(self, entry: FileEntry, source: _LinkLike, dest: _LinkLike,
                    replicas: int) -> None:  # fmt: skip
        """Store version ``entry`` on ``dest``, its bytes relayed from ``source`` as they
        come (a window at a time: bounded memory whatever the size). A ``dest`` that
        holds the blob already answers at once and nothing more moves."""
        name, h, size, when = entry[0], entry[1], entry[2], entry[3]
        with self.transfers.open(self._conn(dest)) as put:
            put.send(FilePut(put.req, name, size, 1, h, when, replicas))
            try:
                digest = await self._relay(source, put, entry)
            except _Answered:
                pass  # its reply says how
            except BaseException as exc:  # dest drops what it got (a bad copy too)
                why = "corrupt" if isinstance(exc, FileCorrupted) else "stopped"
                with contextlib.suppress(MeshError):
                    put.send(FileEnd(put.req, "", f"{why}: the copy from node {source.name} "
                                     f"failed: {exc}"))  # fmt: skip
                raise
            else:
                put.send(FileEnd(put.req, digest))
            reply = await _reply(put)
        err = reply_error(reply, name)
        if err is not None:
            raise err

    async def _relay(self, source: _LinkLike, put: Stream, entry: FileEntry) -> str:
        """Pass the blob of ``entry`` from ``source`` on to transfer ``put`` chunk by
        chunk; its hash. _Answered when ``put``'s receiver answered before the end."""
        with self.transfers.open(self._conn(source)) as get:
            get.send(FileGet(get.req, "", entry[1]))
            err = reply_error(await _reply(get), entry[0])
            if err is not None:
                raise err

            async def forward(data: bytes) -> None:
                if not await put.send_chunk(data):
                    raise _Answered

            async def written(data: bytes) -> None:
                pass

            try:
                digest, _ = await get.receive_chunks(written, forward=forward)
            except BaseException as exc:  # the source stops sending
                with contextlib.suppress(MeshError):
                    get.send(FileReply(get.req, error_kind="failed",
                                       error=f"the copy was stopped: {exc!r}"))  # fmt: skip
                raise
            return digest

    async def info(self, name: str) -> FileInfo:
        """Size, hash, version time and holders of ``name``; MeshFileNotFound if none."""
        reply = await self._ask(lambda req: FileList(req, names=(name,)))
        if not reply.entries:
            raise MeshFileNotFound(f"no file {name!r} in the mesh file store", name=name)
        return FileInfo.from_entry(reply.entries[0], reply.holders[0] if reply.holders else ())

    async def _infos(self, names: Sequence[str]) -> dict[str, FileInfo]:
        reply = await self._ask(lambda req: FileList(req, names=tuple(names)))
        holders = reply.holders or ((),) * len(reply.entries)
        return {
            e[0]: FileInfo.from_entry(e, hs) for e, hs in zip(reply.entries, holders, strict=False)
        }

    async def holder_keys(self, names: Sequence[str], links: Sequence[Any]) -> frozenset[str]:
        """The keys of ``links`` to the nodes that hold the most of ``names`` (for ``_files``)."""
        reply = await self._ask(lambda req: FileList(req, names=tuple(names)))
        counts: dict[str, int] = {}
        for holders in reply.holders:
            for node_id, _ in holders:
                counts[node_id] = counts.get(node_id, 0) + 1
        if not counts:
            return frozenset()
        best = max(counts.values())
        return frozenset(lk.key for lk in links if counts.get(lk.node_id) == best)

    async def exists(self, name: str) -> bool:
        return bool((await self._ask(lambda req: FileList(req, names=(name,)))).entries)

    async def list(self, prefix: str = "") -> list[str]:
        """The names in the store that start with ``prefix``, sorted."""
        reply = await self._ask(lambda req: FileList(req, prefix))
        return [e[0] for e in reply.entries]

    async def delete(self, name: str) -> None:
        """Delete ``name`` everywhere (a tombstone: a node that was away learns it too)."""
        reply = await self._ask(lambda req: FileDelete(req, name))
        err = reply_error(reply, name)
        if err is not None:
            raise err

    async def _open_get(self, name: str) -> tuple[FileInfo, _LinkLike]:
        """The version of ``name`` and the least-loaded usable node that holds it."""
        info = await self.info(name)
        links = self._usable()
        holding = [lk for lk in links if lk.node_id and lk.node_id in info.node_ids]
        return info, (holding or links)[0]

    async def _download(
        self, name: str, out: IO[bytes], into: StreamedFile | None = None
    ) -> FileInfo:
        """Stream ``name`` into ``out``; one retry from another node on a bad copy.
        ``into`` (a streamed getf's file) hears of the size and of every chunk written."""
        errors: list[str] = []
        bad_on: list[str] = []  # nodes that sent a copy failing its hash check
        write = write_all(out)
        for attempt in range(2):
            info, link = await self._open_get(name)
            if attempt and len(self._usable()) > 1:
                others = [lk for lk in self._usable() if lk is not link]
                link = next((lk for lk in others if lk.node_id in info.node_ids), others[0])
            with self.transfers.open(self._conn(link)) as stream:
                stream.send(FileGet(stream.req, name))
                head = await _reply(stream)
                err = reply_error(head, name)
                if err is not None:
                    if bad_on and "no good copy left" not in str(err):
                        raise _no_good_copy(name, bad_on, "; ".join(errors)) from err
                    raise err
                entry = head.entries[0]
                if into is not None:
                    into.started(entry[2])
                try:
                    digest, _ = await stream.receive_chunks(
                        write, written=into.written if into is not None else None
                    )
                except FileCorrupted as exc:
                    bad_on.append(link.name)
                    errors.append(f"node {link.name}: {exc}")
                    restart_output(out, into, errors[-1])
                    continue
                except BaseException as exc:  # closed early, or a local error: stop the node
                    with contextlib.suppress(MeshError):
                        stream.send(FileReply(stream.req, error_kind="failed",
                                              error=f"the client stopped reading: {exc!r}"))  # fmt: skip
                    raise
            if digest != entry[1]:
                bad_on.append(link.name)
                errors.append(f"node {link.name} sent bytes hashing to {digest[:12]}")
                restart_output(out, into, errors[-1])
                continue
            return FileInfo.from_entry(entry, ())
        raise _no_good_copy(name, bad_on, "; ".join(errors))

    async def get(self, name: str, path: str | os.PathLike[str] | None = None) -> str:
        """Write ``name`` to ``path`` (default: its last component, here); return the path.

        The bytes go to a temp file beside ``path`` and are renamed into place once
        their hash checks out, so a failed get leaves no half-written file.
        """
        dest = os.fspath(path) if path is not None else os.path.basename(name) or name
        if self._local:
            src, entry = await self._local_path(name)
            if not await asyncio.to_thread(_copy_checked, src, dest, entry[1]):
                # Bits rotted on the node's disk: it checks and replaces its copy.
                src, entry = await self._local_path(name, bad=entry[1])
                if not await asyncio.to_thread(_copy_checked, src, dest, entry[1]):
                    raise FileCorrupted(f"the copy of {name!r} on this job's node failed its "
                                        "hash check twice", name=name)  # fmt: skip
            return dest
        temp, out = await asyncio.to_thread(_temp_beside, dest)
        try:
            await self._download(name, out)
            out.close()
            os.replace(temp, dest)
        except BaseException:
            out.close()
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        return dest

    async def getf(self, name: str) -> IO[bytes]:
        """A readable, seekable file object with the content of ``name``.

        Never loaded whole into memory: a job gets the node's own copy opened
        read-only; a client gets an unnamed temporary file on disk.
        """
        if self._local:
            path, entry = await self._local_path(name)
            loop = asyncio.get_running_loop()

            def replace(bad: str) -> tuple[str, FileEntry]:
                """From the reader's thread: the node checks its copy of ``bad`` and
                replaces it; the path of the good one (or FileCorrupted, saying where)."""
                if _running_loop() is loop:
                    raise FileCorrupted(f"the copy of {name!r} failed its hash check",
                                        name=name)  # fmt: skip
                coro = self._local_path(name, bad=bad)
                return asyncio.run_coroutine_threadsafe(coro, loop).result()

            raw = await asyncio.to_thread(VerifiedFile, path, name, entry, replace)
            return io.BufferedReader(raw, 1 << 20)
        out = await asyncio.to_thread(tempfile.TemporaryFile)
        try:
            await self._download(name, out)
        except BaseException:
            out.close()
            raise
        out.seek(0)
        return out

    async def getf_streamed(self, name: str) -> IO[bytes]:
        """``getf`` for a caller on another thread than this loop's (the sync ``Files``):
        the file comes back as soon as a node starts sending, and its reads wait for
        their bytes (see :class:`StreamedFile`). A job still opens its node's copy."""
        if self._local:
            return await self.getf(name)
        out = await asyncio.to_thread(tempfile.TemporaryFile, "w+b", 0)
        raw = StreamedFile(out, name)
        loop = asyncio.get_running_loop()

        async def download() -> None:
            try:
                await self._download(name, out, raw)
            except BaseException as exc:  # the reader raises it; the task ends here
                raw.finish(exc if isinstance(exc, Exception) else
                           FilesError(f"download of {name!r} stopped", name=name))  # fmt: skip
            else:
                raw.finish(None)

        task = self._downloads.spawn(download(), f"download {name!r}")
        raw.stop = lambda: call_soon(loop, task.cancel)
        try:
            await raw.wait_started()
        except BaseException:
            raw.close()
            raise
        return io.BufferedReader(raw, 1 << 20)

    async def _local_path(self, name: str, bad: str = "") -> tuple[str, FileEntry]:
        """The path of the node's own copy of ``name``, and its version. ``bad``: the
        copy read before failed its hash check (the node replaces it first)."""
        reply = await self._ask(lambda req: FileGet(req, name, local=True, bad=bad))
        err = reply_error(reply, name)
        if err is not None:
            raise err
        return reply.path, reply.entries[0]

    async def sync(self, source: str | os.PathLike[str], prefix: str = "",
                   replicas: int = DEFAULT_REPLICAS) -> SyncReport:  # fmt: skip
        """Upload the files of a folder (recursively) or a glob pattern whose content
        changed (by content hash): a folder's files are named ``prefix`` + their path inside
        it; a pattern's, ``prefix`` + their path as matched."""
        pairs = _sync_sources(os.fspath(source), prefix)
        hashes = await asyncio.gather(*(asyncio.to_thread(hash_file, p) for p, _ in pairs))
        current = await self._infos([n for _, n in pairs]) if pairs else {}
        report = SyncReport()
        for (path, name), h in zip(pairs, hashes, strict=True):
            known = current.get(name)
            if known is not None and known.hash == h:
                report.unchanged.append(name)
                continue
            f = await asyncio.to_thread(_open_raw, path)
            try:
                size = os.fstat(f.fileno()).st_size
                await self._put(name, size, f, replicas, hash=h)
            finally:
                f.close()
            report.sent.append(name)
            report.bytes_sent += size
        return report


def _sync_sources(source: str, prefix: str) -> list[tuple[str, str]]:
    if os.path.isdir(source):
        out = []
        for root, _, files in os.walk(source):
            for fn in sorted(files):
                full = os.path.join(root, fn)
                out.append((full, prefix + Path(os.path.relpath(full, source)).as_posix()))
        return sorted(out, key=lambda p: p[1])
    matched = sorted(p for p in _glob.glob(source, recursive=True) if os.path.isfile(p))
    if not matched and not _glob.has_magic(source):
        raise FileNotFoundError(f"mesh.files.sync: no such folder or file: {source}")
    return [(p, prefix + (Path(p).as_posix() if not os.path.isabs(p) else os.path.basename(p)))
            for p in matched]  # fmt: skip


def _temp_beside(dest: str) -> tuple[str, IO[bytes]]:
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".mesh-get-")
    return temp, os.fdopen(fd, "wb")


def _open_raw(path: str) -> IO[bytes]:
    return open(path, "rb", buffering=0)  # Stream.send_file reads into its own buffers


def _no_good_copy(name: str, nodes: Sequence[str], why: str) -> FileCorrupted:
    where = ", ".join(sorted(set(nodes)))
    s = "s" if len(set(nodes)) > 1 else ""
    return FileCorrupted(f"{name!r} is corrupted on node{s} {where}, no good copy left ({why})",
                         name=name)  # fmt: skip


def _copy_checked(src: str, dest: str, h: str) -> bool:
    """Copy blob ``src`` to ``dest`` through a temp file beside it, hashing as it goes
    (1 MiB at a time); rename it into place only if it hashes to ``h``. False if not."""
    folder = os.path.dirname(os.path.abspath(dest))
    os.makedirs(folder, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=folder, prefix=".mesh-get-")
    hasher = new_hash()
    buf = bytearray(1 << 20)
    try:
        with open(src, "rb", buffering=0) as f, os.fdopen(fd, "wb") as out, memoryview(buf) as view:
            while n := f.readinto(buf):
                with view[:n] as data:
                    hasher.update(data)
                    out.write(data)
        if hasher.hexdigest() != h:
            os.unlink(temp)
            return False
        os.replace(temp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return True


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


async def _reply(stream: Stream) -> FileReply:
    while True:
        msg = await stream.next()
        if isinstance(msg, FileReply):
            return msg


class Files:
    """``mesh.files`` for ordinary code: the :class:`AsyncFiles` calls, run on a loop thread."""

    def __init__(self, afiles: AsyncFiles,
                 run: Callable[[Coroutine[Any, Any, Any]], Any]) -> None:  # fmt: skip
        self._a = afiles
        self._run = run

    def put(self, path: str | os.PathLike[str], name: str | None = None,
            replicas: int = DEFAULT_REPLICAS) -> FileInfo:  # fmt: skip
        """Store a local file under ``name`` (default: its file name), durable on
        ``replicas`` nodes when this returns."""
        return self._run(self._a.put(path, name, replicas))  # type: ignore[no-any-return]

    def putf(self, fileobj: IO[bytes] | IO[str] | bytes | str, name: str,
             replicas: int = DEFAULT_REPLICAS) -> FileInfo:  # fmt: skip
        """Store the content of a readable file object, ``bytes`` or ``str`` (as UTF-8)
        under ``name``."""
        return self._run(self._a.putf(fileobj, name, replicas))  # type: ignore[no-any-return]

    def get(self, name: str, path: str | os.PathLike[str] | None = None) -> str:
        """Write ``name`` to a local ``path`` (default: its last component); return it."""
        return self._run(self._a.get(name, path))  # type: ignore[no-any-return]

    def getf(self, name: str) -> IO[bytes]:
        """A readable, seekable file object with the content of ``name``, returned as
        soon as its bytes start coming: reads wait for theirs. Reading to the end (a
        read that returns b"", or ``read()``) raises FileCorrupted if the content did
        not match its hash; bytes read before the end were not checked yet."""
        return self._run(self._a.getf_streamed(name))  # type: ignore[no-any-return]

    def delete(self, name: str) -> None:
        self._run(self._a.delete(name))

    def list(self, prefix: str = "") -> list[str]:
        return self._run(self._a.list(prefix))  # type: ignore[no-any-return]

    def exists(self, name: str) -> bool:
        return self._run(self._a.exists(name))  # type: ignore[no-any-return]

    def info(self, name: str) -> FileInfo:
        return self._run(self._a.info(name))  # type: ignore[no-any-return]

    def sync(self, source: str | os.PathLike[str], prefix: str = "",
             replicas: int = DEFAULT_REPLICAS) -> SyncReport:  # fmt: skip
        """Upload what changed (by content hash) in a folder or glob; say what was sent."""
        return self._run(self._a.sync(source, prefix, replicas))  # type: ignore[no-any-return]


# ---- inside a job: the job's own node ----


class _NodeLink:
    """The one link of a job: its node, over the node's unix socket."""

    def __init__(self) -> None:
        self.conn: Connection | None = None
        self.node_id = ""
        self.name = "this job's node"
        self.workers, self.running, self.queued = 1, 0, 0


_job_files: Files | None = None


def job_files() -> Files | None:
    """Inside a job (``MESH_NODE_FILES`` set by its node): ``mesh.files`` through the
    job's own node, connected on first use. Else None."""
    global _job_files
    path = os.environ.get("MESH_NODE_FILES")
    if not path:
        return None
    if _job_files is None:
        from mesh.client._sync import LoopThread

        thread = LoopThread("mesh-job-files")
        link = _NodeLink()
        afiles = AsyncFiles(lambda: [link], local=True)

        async def connect() -> None:
            loop = asyncio.get_running_loop()
            _, link.conn = await loop.create_unix_connection(
                lambda: Connection(
                    "plain", peer_label="this job's node", on_message=afiles.on_message
                ),
                path,
            )

        try:
            thread.run(connect())
        except OSError as exc:
            thread.stop()
            raise FilesError(
                f"cannot reach this job's node for mesh.files ({path}): {exc}"
            ) from exc
        _job_files = Files(afiles, thread.run)
    return _job_files
