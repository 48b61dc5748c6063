"""Shared memory for big job arguments: received once, read by the worker in place.

A client's big argument (1 MiB or more) is received straight into a file in
``/dev/shm`` that the node maps; the worker is sent the file's name, not its bytes,
and maps it read-only, so a 50 MB argument crosses one socket instead of two. A file
is unlinked as soon as the node drops its buffer (the job finished or was killed),
and the whole folder is removed when the node stops; folders left by a node that
died are swept at the next start.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import secrets
import shutil
import weakref
from pathlib import Path

from mesh._frames import allocate_buffer
from mesh._protocol import Submit
from node._proc import pid_alive

__all__ = ["SharedBlocks", "SHARE_MIN"]

SHARE_MIN = 1 << 20
_PREFIX = "lanmesh-"


class SharedBlocks:
    def __init__(self, node_id: str, fallback_dir: Path) -> None:
        base = Path("/dev/shm")
        if not (base.is_dir() and os.access(base, os.W_OK)):
            base = fallback_dir
        self._sweep(base)
        self.dir = base / f"{_PREFIX}{os.getpid()}-{node_id}"
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._paths: dict[int, str] = {}

    @staticmethod
    def _sweep(base: Path) -> None:
        """Remove folders of nodes that died without cleaning up."""
        for entry in base.glob(f"{_PREFIX}*-*"):
            pid = entry.name[len(_PREFIX) :].split("-", 1)[0]
            if pid.isdigit() and not pid_alive(int(pid)):
                shutil.rmtree(entry, ignore_errors=True)

    def allocate(self, size: int, tag: int = Submit.TAG) -> bytearray | mmap.mmap:
        """A receive buffer for a message of type ``tag``: a shared file for the big
        arguments of a ``Submit`` (they go on to a worker), ordinary memory for anything
        else (a file chunk only passes through the node: a shared file costs it a file
        creation, page faults and an unlink for nothing)."""
        if size < SHARE_MIN or tag != Submit.TAG:
            return allocate_buffer(size, tag)
        path = str(self.dir / secrets.token_hex(8))
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            block = mmap.mmap(fd, size)
        except OSError:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        key = id(block)
        self._paths[key] = path
        weakref.finalize(block, self._release, key, path)
        return block

    def _release(self, key: int, path: str) -> None:
        self._paths.pop(key, None)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)

    def share(self, buffer: object) -> str | None:
        """The file name of a buffer made by :meth:`allocate`, else None."""
        if type(buffer) is mmap.mmap:
            return self._paths.get(id(buffer))
        return None

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
