"""The raw streams behind ``mesh.files`` reads: a job's ``getf`` of its node's copy,
hashed as it is read (:class:`VerifiedFile`), and a client's ``getf`` fed by a download
as it arrives (:class:`StreamedFile`). client/_files.py opens them.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import threading
from collections.abc import Awaitable, Callable
from typing import IO, Any

from mesh._hash import new_hash
from mesh._protocol import FileEntry
from mesh.errors import FileCorrupted


class SeekableRaw(io.RawIOBase):
    """A readable, seekable raw stream over `_size` bytes; subclasses read at `_pos`."""

    _pos = 0
    _size = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_CUR:
            pos += self._pos
        elif whence == io.SEEK_END:
            pos += self._size
        elif whence != io.SEEK_SET:
            raise ValueError(f"invalid whence ({whence})")
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos


class VerifiedFile(SeekableRaw):
    """A job's ``getf``: its node's copy of a blob, read in place and hashed as it is
    read (in order; bytes skipped by a seek are hashed at the end). The bytes that reach
    the end of the file, and the end itself, are returned only once the whole content
    matched its hash. A bad copy (bits rotted on the disk) makes the node check and
    replace its copy from another holder; if nothing was read yet the good copy is read
    instead, else the read raises FileCorrupted (open it again), as it does when no
    good copy is left."""

    mode = "rb"

    def __init__(self, path: str, name: str, entry: FileEntry,
                 replace: Callable[[str], tuple[str, FileEntry]]) -> None:  # fmt: skip
        super().__init__()
        self._file = name
        self._replace = replace
        self._fd = -1
        self._open(path, entry)
        self._pos = 0
        self._given = False  # bytes were returned: a copy cannot be swapped under them
        self._swapped = False  # once only: a node that keeps a bad copy is not asked again

    def _open(self, path: str, entry: FileEntry) -> None:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self.name = path
        self._h, self._size = entry[1], entry[2]
        self._hasher = new_hash()
        self._hashed = 0  # bytes [0, _hashed) are in _hasher
        self._checked = False

    def fileno(self) -> int:
        return self._fd

    def readinto(self, b: Any) -> int:
        if self.closed:
            raise ValueError("I/O operation on closed file")
        with memoryview(b) as view, view.cast("B") as out:
            while True:
                want = min(len(out), self._size - self._pos)
                if want <= 0:
                    if not self._check_end():
                        continue  # a good copy instead of a bad one: read it
                    return 0
                with out[:want] as into:
                    got = pread_full(self._fd, into, self._pos)
                    if self._pos <= self._hashed < self._pos + got:
                        with into[self._hashed - self._pos : got] as fresh:
                            self._hasher.update(fresh)
                        self._hashed = self._pos + got
                if (got < want or self._pos + got >= self._size) and not self._check_end():
                    continue
                self._pos += got
                self._given = self._given or got > 0
                return got

    def readall(self) -> bytes:
        out = bytearray(max(0, self._size - self._pos))
        n = self.readinto(out) if out else self.readinto(bytearray(1))
        return bytes(out[:n])

    def _check_end(self) -> bool:
        """Hash what was not hashed yet and compare; True if the content is good. A bad
        copy: the node replaces it; False when the good one may be read instead."""
        if self._checked:
            return True
        buf = bytearray(1 << 20)
        with memoryview(buf) as view:
            while self._hashed < self._size:
                with view[: min(len(buf), self._size - self._hashed)] as into:
                    got = pread_full(self._fd, into, self._hashed)
                    if not got:
                        break
                    with into[:got] as fresh:
                        self._hasher.update(fresh)
                self._hashed += got
        if self._hashed == self._size and self._hasher.hexdigest() == self._h:
            self._checked = True
            return True
        bad = self._h
        path, entry = self._replace(bad)  # FileCorrupted if no good copy is left
        self._open(path, entry)
        if self._given or entry[1] != bad or self._swapped:
            raise FileCorrupted(
                f"the copy of {self._file!r} on this job's node failed its hash check after "
                "bytes of it were read; the node checked it and fetched a good copy if it "
                "could: open it again",
                name=self._file,
            )
        self._swapped = True
        return False

    def close(self) -> None:
        if not self.closed:
            super().close()
            os.close(self._fd)


def pread_full(fd: int, into: memoryview, offset: int) -> int:
    """Fill ``into`` from ``fd`` at ``offset`` (short only at the end of the file)."""
    got = 0
    while got < len(into):
        with into[got:] as rest:
            n = os.preadv(fd, [rest], offset + got)
        if not n:
            break
        got += n
    return got


def write_all(out: IO[bytes]) -> Callable[[bytes], Awaitable[None]]:
    """``out.write`` in a thread until every byte is written (an unbuffered file may
    write fewer)."""

    def write_all(data: bytes) -> None:
        with memoryview(data) as view:
            done = 0
            while done < len(view):
                with view[done:] as rest:
                    done += out.write(rest) or 0

    async def write(data: bytes) -> None:
        await asyncio.to_thread(write_all, data)

    return write


def restart_output(out: IO[bytes], into: StreamedFile | None, why: str) -> None:
    if into is not None:
        into.restart(why)
    out.seek(0)  # start again
    out.truncate()


def call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[[], object]) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nothing runs any more
        loop.call_soon_threadsafe(fn)


class StreamedFile(SeekableRaw):
    """A streamed ``getf``: the content of ``name`` arriving in an unnamed temp file,
    read from another thread than the loop's. A read waits until its bytes are written
    and returns what there is (at most a chunk's worth at a time). The end of the file
    (b"") comes only once the whole content matched its hash, and ``readall`` waits
    for that; if it did not match, the read raises FileCorrupted. A failed copy is
    fetched again from another node, unless bytes of it were already read."""

    def __init__(self, f: IO[bytes], name: str) -> None:
        super().__init__()
        self._f = f
        self.name = name
        self._cond = threading.Condition()
        self._size = -1  # known once a node answers
        self._have = 0  # bytes written to the temp file (of the current copy)
        self._done = False  # the content is all there and checked, or failed
        self._error: BaseException | None = None
        self._read_any = False
        self._pos = 0
        self._started: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.stop: Callable[[], None] = lambda: None

    # ---- the loop's side ----

    def started(self, size: int) -> None:
        with self._cond:
            self._size = size
        if not self._started.done():
            self._started.set_result(None)

    def written(self, have: int) -> None:
        with self._cond:
            self._have = have
            self._cond.notify_all()

    def restart(self, why: str) -> None:
        with self._cond:
            self._have = 0
            if self._read_any and self._error is None:
                self._error = FileCorrupted(
                    f"the copy of {self.name!r} being read failed its hash check ({why}); "
                    "open it again", name=self.name)  # fmt: skip
            self._cond.notify_all()

    def finish(self, error: BaseException | None) -> None:
        with self._cond:
            self._done = True
            if self._error is None:
                self._error = error
            self._cond.notify_all()
        if not self._started.done():
            if error is None:
                self._started.set_result(None)
            else:
                self._started.set_exception(error)

    async def wait_started(self) -> None:
        await asyncio.shield(self._started)

    # ---- the reader's side ----

    def _available(self, whole: bool = False) -> int:
        """Bytes readable at the position (0: the checked end), once there are any."""
        with self._cond:
            while True:
                if self.closed:
                    raise ValueError("I/O operation on closed file")
                if self._error is not None:
                    raise self._error
                if self._done:
                    return max(0, self._have - self._pos)
                if not whole and self._have > self._pos:
                    self._read_any = True
                    return self._have - self._pos
                self._cond.wait()

    def readinto(self, b: Any) -> int:
        with memoryview(b) as view:
            while True:
                n = self._available()
                if not n:
                    return 0
                with view[: min(n, len(view))] as into:
                    got = os.preadv(self._f.fileno(), [into], self._pos)
                if got:  # else a failed copy was cut short under us: wait again
                    self._pos += got
                    return got

    def readall(self) -> bytes:
        n = self._available(whole=True)
        out = bytearray(n)
        with memoryview(out) as view:
            done = 0
            while done < n:
                with view[done:] as rest:
                    got = os.preadv(self._f.fileno(), [rest], self._pos + done)
                if not got:
                    break
                done += got
        self._pos += done
        return bytes(out) if done == n else bytes(out[:done])

    def close(self) -> None:
        if not self.closed:
            self.stop()
            with self._cond:
                super().close()
                self._cond.notify_all()
            self._f.close()
