"""Shared memory for big job arguments: received once, read by the worker in place.

A client's big argument (1 MiB or more) is received straight into a file in
``/dev/shm`` that the node maps; the worker is sent the file's name and the
argument's length, not its bytes, and maps it copy-on-write, so a 50 MB argument
crosses one socket instead of two.

Blocks are reused. A worker closes its mapping of a block as soon as the job's
arguments are unpickled, unless something made while unpickling still reads it in
place (a NumPy array), and reports the blocks it closed. When the node is done with
a job's arguments, a block that every worker it was named to has reported closed goes
to a small free list, its pages faulted in and mapped: the next argument that fits
is received into it, sparing the file's creation, about 13,000 page faults per 50 MB
and the unlink. Any other block is unlinked then, as is a free block unused for
``FREE_IDLE_S``, and the whole folder is removed when the node stops; folders left by
a node that died are swept at the next start.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import shutil
import time
import weakref
from pathlib import Path

from mesh.node._proc import pid_alive

from mesh._frames import POPULATE_MAX, allocate_buffer
from mesh._protocol import Submit

__all__ = ["FREE_IDLE_S", "FREE_MAX_BLOCKS", "FREE_MAX_BYTES", "SHARE_MIN", "SharedBlocks"]

SHARE_MIN = 1 << 20
# The free list: at most this many blocks and bytes, each unused for at most FREE_IDLE_S.
FREE_MAX_BLOCKS = 4
FREE_MAX_BYTES = 256 << 20
FREE_IDLE_S = 30.0
_ROUND = 1 << 20  # capacities in whole MiB: an argument a few bytes longer still fits
_PREFIX = "lanmesh-"
# Fault a new block's pages in with one call (Linux 5.14+): 40 -> 31 ms for 50 MB here.
_MADV_POPULATE_WRITE = 23


class _Block:
    """A file in the node's folder and the node's mapping of all of it."""

    __slots__ = ("capacity", "lent", "mem", "path", "used_at")

    def __init__(self, path: str, mem: mmap.mmap) -> None:
        self.path = path
        self.mem = mem
        self.capacity = len(mem)
        # Times it was named to a worker in its current use and not yet reported closed.
        self.lent = 0
        self.used_at = 0.0


class SharedBlocks:
    def __init__(
        self,
        node_id: str,
        fallback_dir: Path,
        *,
        free_max_blocks: int = FREE_MAX_BLOCKS,
        free_max_bytes: int = FREE_MAX_BYTES,
        free_idle_s: float = FREE_IDLE_S,
    ) -> None:
        base = Path("/dev/shm")
        if not (base.is_dir() and os.access(base, os.W_OK)):
            base = fallback_dir
        self._sweep(base)
        self.dir = base / f"{_PREFIX}{os.getpid()}-{node_id}"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.free_max_blocks = free_max_blocks
        self.free_max_bytes = free_max_bytes
        self.free_idle_s = free_idle_s
        self._views: dict[int, _Block] = {}  # id of a buffer handed out -> its block
        self._in_use: dict[str, _Block] = {}  # path -> a block lent to a job's arguments
        self._free: list[_Block] = []  # least recently used first
        self._closed = False
        self.created = 0  # blocks made (a file each); reuses are allocations beyond that
        self.reused = 0

    @staticmethod
    def _sweep(base: Path) -> None:
        """Remove folders of nodes that died without cleaning up."""
        for entry in base.glob(f"{_PREFIX}*-*"):
            pid = entry.name[len(_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)

    def allocate(self, size: int, tag: int = Submit.TAG) -> bytearray | mmap.mmap | memoryview:
        """A receive buffer for a message of type ``tag``: a view of a shared block for
        the big arguments of a ``Submit`` (they go on to a worker), ordinary memory for
        anything else (a file chunk only passes through the node: a shared file costs
        it a file creation, page faults and an unlink for nothing)."""
        if size < SHARE_MIN or tag != Submit.TAG:
            return allocate_buffer(size, tag)
        block = self._take(size) or self._create(size)
        self._in_use[block.path] = block
        view = memoryview(block.mem)[:size]
        key = id(view)
        self._views[key] = block
        weakref.finalize(view, self._dropped, key, block)
        return view

    def _take(self, size: int) -> _Block | None:
        """The smallest free block that fits, if it is not twice too big."""
        fits = [b for b in self._free if size <= b.capacity <= 2 * size + _ROUND]
        if not fits:
            return None
        block = min(fits, key=lambda b: b.capacity)
        self._free.remove(block)
        self.reused += 1
        return block

    def _create(self, size: int) -> _Block:
        capacity = -(-size // _ROUND) * _ROUND
        path = str(self.dir / secrets.token_hex(8))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, capacity)
            mem = mmap.mmap(fd, capacity)
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        if capacity <= POPULATE_MAX:  # bigger: pages fault in as bytes arrive, the loop free
            with contextlib.suppress(OSError, ValueError, AttributeError):
                mem.madvise(_MADV_POPULATE_WRITE)
        self.created += 1
        return _Block(path, mem)

    def share(self, buffer: object) -> str | None:
        """The file name of a buffer made by :meth:`allocate`, else None. The caller
        names it to a worker, which must report it closed before the block is reused."""
        if type(buffer) is memoryview:
            block = self._views.get(id(buffer))
            if block is not None:
                block.lent += 1
                return block.path
        return None

    def released(self, paths: tuple[str, ...]) -> None:
        """A worker closed its mappings of these blocks (one name per mapping)."""
        for path in paths:
            block = self._in_use.get(path)
            if block is not None and block.lent > 0:
                block.lent -= 1

    def _dropped(self, key: int, block: _Block) -> None:
        """The node dropped a buffer it handed out: keep its block for reuse if no worker
        may still read it, else remove it."""
        self._views.pop(key, None)
        self._in_use.pop(block.path, None)
        if (
            self._closed
            or block.lent
            or block.capacity > self.free_max_bytes
            or self.free_max_blocks <= 0
        ):
            self._remove(block)
            return
        block.used_at = time.monotonic()
        self._free.append(block)
        while len(self._free) > self.free_max_blocks or self.free_bytes > self.free_max_bytes:
            self._remove(self._free.pop(0))

    @staticmethod
    def _remove(block: _Block) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(block.path)
        with contextlib.suppress(BufferError):
            block.mem.close()  # else when the last view of it goes

    def expire(self) -> None:
        """Remove free blocks unused for ``free_idle_s``: an idle node gives memory back."""
        now = time.monotonic()
        while self._free and now - self._free[0].used_at > self.free_idle_s:
            self._remove(self._free.pop(0))

    @property
    def free_bytes(self) -> int:
        return sum(b.capacity for b in self._free)

    def close(self) -> None:
        self._closed = True
        for block in self._free:
            self._remove(block)
        self._free.clear()
        shutil.rmtree(self.dir, ignore_errors=True)
