"""Chunked blob streams over a :class:`Connection`, for ``mesh.files`` (clients and nodes).

A transfer is one request id on one connection. The sender keeps at most ``WINDOW``
bytes unacknowledged; the receiver acknowledges what it has written, so neither side
ever holds more than a window of a file in memory, whatever its size. Both ends hash
what passes (the content hash, ``mesh._hash``) and the receiver checks the sender's
hash at the end: a transfer that fails leaves nothing behind and a retry starts
again from byte 0.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable

from mesh._connection import Connection
from mesh._hash import new_hash
from mesh._protocol import FileAck, FileChunk, FileEnd, FileReply, Message
from mesh.errors import ConnectionLost, FileCorrupted, FilesError, MeshError

__all__ = ["CHUNK", "WINDOW", "Stream", "Transfers"]

CHUNK = 4 << 20
WINDOW = 24 << 20
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
        self._room = asyncio.Event()

    def close(self) -> None:
        self._owner._streams.pop((id(self.conn), self.req), None)

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acked(self, n: int) -> None:
        self.unacked -= n
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
        digest = h.hexdigest()
        if expect and digest != expect:
            why = f"corrupt: the sender's copy of blob {expect[:12]} failed its hash check"
            self.send(FileEnd(self.req, digest, why))
        else:
            self.send(FileEnd(self.req, digest))
        return digest, size

    async def send_chunk(self, data: bytes) -> bool:
        """Send one chunk once the window has room for it. False, having sent FileEnd
        with an error, when the receiver answered early (its FileReply is in the inbox)."""
        while self.unacked >= WINDOW and self.inbox.empty():
            self._room.clear()
            self._check()
            try:
                await asyncio.wait_for(self._room.wait(), POLL_S)
            except asyncio.TimeoutError:
                pass
        if not self.inbox.empty():
            self.send(FileEnd(self.req, "", "stopped: the receiver answered"))
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

    async def receive_chunks(self, write: Callable[[bytes], Awaitable[None]]) -> tuple[str, int]:
        """Write every chunk until FileEnd, acknowledging each; return (hash, size).

        Raises FileCorrupted when the bytes do not match the sender's hash, and
        FilesError when the sender stopped (its reason) or answered instead.
        """
        h = new_hash()
        size = 0
        while True:
            msg = await self.next()
            if isinstance(msg, FileChunk):
                data = msg.data
                size += len(data)
                h.update(data)
                await write(data)
                self.send(FileAck(self.req, len(data)))
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
