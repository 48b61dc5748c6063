"""Chunked blob streams over a :class:`Connection`, for ``mesh.files`` (clients and nodes).

A transfer is one request id on one connection. The sender keeps at most ``WINDOW``
bytes unacknowledged; the receiver acknowledges what it has written, so neither side
ever holds more than a window of a file in memory, whatever its size. Both ends hash
what passes (the content hash, ``mesh._hash``) and the receiver checks the sender's
hash at the end: a transfer that fails leaves nothing behind and a retry starts
again from byte 0.

The bytes are handled off the event loop: a file is read and hashed in a worker
thread into a few reused buffers (one read ahead while the loop sends the last), and
received chunks are hashed in a worker thread and written off the loop (aiofiles on
the node), so the loop mostly moves frames (encryption and socket). A sent buffer is reused
once the receiver acknowledged it: its bytes have left this process.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import mmap
import os
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import IO

from mesh._connection import Connection
from mesh._frames import ATTACH_MIN, allocate_buffer, recycle_buffer
from mesh._hash import ContentHash, new_hash
from mesh._protocol import FileAck, FileChunk, FileEnd, FileReply, Message
from mesh.errors import ConnectionLost, FileCorrupted, FilesError, MeshError

__all__ = ["CHUNK", "WINDOW", "Stream", "Transfers"]

CHUNK = 4 << 20
WINDOW = 24 << 20
# send_file keeps at most this much unacknowledged (then a chunk being sent and one
# being read): enough to keep loopback busy, and a bounded set of reused buffers.
FILE_WINDOW = 16 << 20
POLL_S = 0.5  # how often a waiting transfer looks whether its connection is gone
IDLE_S = 60.0  # a peer that sends nothing for this long fails the transfer


class Stream:
    """One transfer's end: its inbox (replies, chunks, end) and its send window."""

    def __init__(self, owner: Transfers, conn: Connection, req: int) -> None:
        self._owner = owner
        self.conn = conn
        self.req = req
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.unacked = 0
        self.acked = 0  # bytes acknowledged since the stream opened
        self._room = asyncio.Event()
        # send_file's buffers sent and not yet acknowledged: (end offset, buffer). Once
        # acknowledged, their bytes have left this process: they go back to the pool
        # (mesh._frames.recycle_buffer) for the next chunk read.
        self._sent: deque[tuple[int, bytearray | mmap.mmap]] = deque()

    def close(self) -> None:
        self._owner._streams.pop((id(self.conn), self.req), None)
        self._sent.clear()  # maybe still queued for the socket: never reused

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acked(self, n: int) -> None:
        self.unacked -= n
        self.acked += n
        sent = self._sent
        while sent and sent[0][0] <= self.acked:
            buf = sent.popleft()[1]
            if len(buf) == CHUNK:  # a small file's own buffer is not worth keeping
                recycle_buffer(buf)
        if self.unacked < WINDOW:
            self._room.set()

    def _check(self) -> None:
        if self.conn.closed:
            raise self.conn.close_reason or ConnectionLost(
                f"connection to {self.conn.peer_label} closed"
            )

    def send(self, msg: Message) -> None:
        self._check()
        self.conn.send(msg)

    async def next(self) -> Message:
        """The next message of this transfer; ConnectionLost if its link goes."""
        waited = 0.0
        while True:
            if not self.inbox.empty():
                return self.inbox.get_nowait()
            self._check()
            try:
                return await asyncio.wait_for(self.inbox.get(), POLL_S)
            except asyncio.TimeoutError:
                waited += POLL_S
                if waited >= IDLE_S:
                    raise ConnectionLost(
                        f"{self.conn.peer_label} sent nothing for {IDLE_S:g} s"
                    ) from None

    async def send_chunks(
        self, chunks: AsyncIterator[bytes], expect: str = ""
    ) -> tuple[str, int] | None:
        """Send every chunk within the window, then FileEnd; return (hash, size).

        Returns None, having sent FileEnd with an error, when the receiver answered
        early (it holds the blob already, or failed): its FileReply is in the inbox.
        With ``expect`` (a stored blob's name), bytes that hash otherwise end with a
        "corrupt" FileEnd, so the receiver drops them.
        """
        h = new_hash()
        size = 0
        async for data in chunks:
            if not await self.send_chunk(data):
                return None
            # Inline: a 4 MB chunk hashes in under a millisecond, less than a thread hop.
            h.update(data)
            size += len(data)
        return self._end(h, size, expect)

    async def send_file(self, f: IO[bytes], expect: str = "") -> tuple[str, int] | None:
        """:meth:`send_chunks` for a file opened unbuffered (``buffering=0``), read
        from its position to its end: each chunk is read and hashed in a worker thread
        into a reused buffer while the loop sends the one before."""
        h = new_hash()
        size = 0
        loop = asyncio.get_running_loop()
        buf: bytearray | mmap.mmap | None = None
        with contextlib.suppress(OSError):  # a small file: one buffer of its size, plus one
            left = os.fstat(f.fileno()).st_size - f.tell()  # byte to see its end at once
            if left < CHUNK:
                buf = bytearray(max(left, 0) + 1)
        if buf is None:
            buf = allocate_buffer(CHUNK)
        reading = loop.run_in_executor(None, _read_hashed, f, buf, h)
        try:
            while n := await reading:
                end = n < len(buf)  # a short read: the file ends here
                data: bytes | bytearray | memoryview = (
                    memoryview(buf)[:n] if n >= ATTACH_MIN else buf[:n]
                )
                if not await self._wait_room(FILE_WINDOW):
                    return None
                cur = buf
                if not end:  # the next read runs while this chunk is encrypted and sent
                    buf = allocate_buffer(CHUNK)  # FILE_WINDOW bounds how many are out
                    reading = loop.run_in_executor(None, _read_hashed, f, buf, h)
                self._sent.append((self.acked + self.unacked + n, cur))
                self.unacked += n
                self.send(FileChunk(self.req, data))  # type: ignore[arg-type]
                size += n
                if end:
                    break
        finally:
            if not reading.done():  # cancelled, or the link failed: let the read finish
                reading.add_done_callback(_ignore_result)
        return self._end(h, size, expect)

    def _end(self, h: ContentHash, size: int, expect: str) -> tuple[str, int]:
        digest = h.hexdigest()
        if expect and digest != expect:
            why = f"corrupt: the sender's copy of blob {expect[:12]} failed its hash check"
            self.send(FileEnd(self.req, digest, why))
        else:
            self.send(FileEnd(self.req, digest))
        return digest, size

    async def _wait_room(self, limit: int = WINDOW) -> bool:
        """Wait until fewer than ``limit`` bytes are unacknowledged. False, having sent
        FileEnd with an error, when the receiver answered early (its FileReply is in
        the inbox)."""
        while self.unacked >= limit and self.inbox.empty():
            self._room.clear()
            self._check()
            try:
                await asyncio.wait_for(self._room.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
        if not self.inbox.empty():
            self.send(FileEnd(self.req, "", "stopped: the receiver answered"))
            return False
        return True

    async def send_chunk(self, data: bytes) -> bool:
        """Send one chunk once the window has room for it. False, having sent FileEnd
        with an error, when the receiver answered early (its FileReply is in the inbox)."""
        if not await self._wait_room():
            return False
        self.unacked += len(data)
        self.send(FileChunk(self.req, data))
        return True

    async def reply(self) -> FileReply:
        """The FileReply that ends this transfer (other messages before it are dropped)."""
        while True:
            msg = await self.next()
            if isinstance(msg, FileReply):
                return msg

    async def receive_chunks(
        self,
        write: Callable[[bytes], Awaitable[object]],
        *,
        forward: Callable[[bytes], Awaitable[None]] | None = None,
        written: Callable[[int], None] | None = None,
    ) -> tuple[str, int]:
        """Write every chunk until FileEnd, acknowledging each; return (hash, size).

        Each chunk is first passed on (``forward``), then hashed in a worker thread,
        then written (``await write(data)``: the node's blob through aiofiles, a
        client's file in a thread); ``written(size)`` follows each write.
        Raises FileCorrupted when the bytes do not match the sender's hash, and
        FilesError when the sender stopped (its reason) or answered instead.
        """
        h = new_hash()
        size = 0
        loop = asyncio.get_running_loop()
        while True:
            msg = await self.next()
            if isinstance(msg, FileChunk):
                data = msg.data
                del msg
                size += len(data)
                if forward is not None:
                    await forward(data)
                await loop.run_in_executor(None, h.update, data)
                await write(data)
                if written is not None:
                    written(size)
                self.send(FileAck(self.req, len(data)))
                if forward is None and not isinstance(data, bytes):
                    recycle_buffer(data)  # hashed, written and passed on to no one
                del data
            elif isinstance(msg, FileEnd):
                if msg.error.startswith("corrupt"):
                    raise FileCorrupted(f"{self.conn.peer_label} stopped sending: {msg.error}")
                if msg.error:
                    raise FilesError(f"{self.conn.peer_label} stopped sending: {msg.error}")
                digest = h.hexdigest()
                if digest != msg.hash:
                    raise FileCorrupted(
                        f"bytes from {self.conn.peer_label} do not match their hash "
                        f"(got {digest[:12]}, sent as {msg.hash[:12]})"
                    )
                return digest, size
            elif isinstance(msg, FileReply):
                raise FilesError(msg.error or f"{self.conn.peer_label} answered mid-transfer")


class Transfers:
    """The open transfers of one endpoint (a client, or a node), by (connection, req)."""

    def __init__(self) -> None:
        self._streams: dict[tuple[int, int], Stream] = {}
        self._reqs = itertools.count(1)

    def next_req(self) -> int:
        return next(self._reqs)

    def open(self, conn: Connection, req: int | None = None) -> Stream:
        """Register a transfer (before its first message can arrive)."""
        if req is None:
            req = self.next_req()
        stream = self._streams[(id(conn), req)] = Stream(self, conn, req)
        return stream

    def dispatch(self, conn: Connection, msg: Message) -> bool:
        """Route a transfer message to its stream. True if ``msg`` was one of ours
        (chunks of a transfer that already ended are dropped)."""
        if not isinstance(msg, (FileAck, FileChunk, FileEnd, FileReply)):
            return False
        stream = self._streams.get((id(conn), msg.req))
        if stream is None or stream.conn is not conn:
            return True
        if isinstance(msg, FileAck):
            stream._acked(msg.nbytes)
        else:
            stream.inbox.put_nowait(msg)
        return True

    def fail_all(self, conn: Connection) -> None:
        """Wake every transfer on a connection that closed (they then see it closed)."""
        for stream in list(self._streams.values()):
            if stream.conn is conn:
                stream._room.set()


def _read_full(f: IO[bytes], buf: bytearray | mmap.mmap) -> int:
    """Fill ``buf`` from an unbuffered file (short only at its end); bytes read."""
    view = memoryview(buf)
    got = 0
    with view:
        while got < len(view):
            n = f.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
    return got


def _read_hashed(f: IO[bytes], buf: bytearray | mmap.mmap, h: ContentHash) -> int:
    n = _read_full(f, buf)
    if n:
        with memoryview(buf) as view, view[:n] as data:
            h.update(data)
    return n


def _ignore_result(fut: asyncio.Future[int]) -> None:
    if not fut.cancelled():
        fut.exception()


async def file_chunks(read: Callable[[int], Awaitable[bytes]]) -> AsyncIterator[bytes]:
    """Chunks of CHUNK bytes from an async ``read(n)`` until it returns b""."""
    while True:
        data = await read(CHUNK)
        if not data:
            return
        yield data


def reply_error(msg: FileReply, name: str = "") -> MeshError | None:
    """The exception a FileReply stands for (about file ``name``), or None on success."""
    if not msg.error_kind:
        return None
    from mesh.errors import FileStoreFull, MeshFileNotFound

    cls: type[FilesError] = {
        "not-found": MeshFileNotFound,
        "disk": FileStoreFull,
        "corrupt": FileCorrupted,
    }.get(msg.error_kind, FilesError)
    return cls(msg.error, name=name)
