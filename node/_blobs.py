"""A node's file store on disk: content-addressed blobs and the catalog of names.

Blobs live under ``DATA_DIR/blobs/ab/abcd...`` named by their content hash
(``mesh._hash``: BLAKE3, hex), so a file's name never becomes a path: no name can escape the data dir. A blob is written
with aiofiles to ``blobs/tmp/``, fsynced, and renamed into place only once its hash is
checked, so a crash never leaves a half-written blob under its final name (``tmp`` is
emptied at start). The catalog maps names to versions (hash, size, time, deleted) in
SQLite (WAL, like the job store); the later (time, hash) wins, and a delete is a
version too (a tombstone), so merging catalogs never resurrects a deleted file.
A store written when blobs were named by SHA-256 is rehashed once at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import aiofiles

from mesh._hash import HASH_NAME, hash_file, is_hash
from mesh._protocol import FileEntry
from mesh.errors import ConfigurationError

__all__ = ["BlobStore", "BlobWriter", "newer"]

SYNC_EVERY = 16 << 20

_SCHEMA = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT PRIMARY KEY,
    hash TEXT NOT NULL,
    size INTEGER NOT NULL,
    time REAL NOT NULL,
    deleted INTEGER NOT NULL,
    replicas INTEGER NOT NULL DEFAULT 0
)
"""
_COLUMNS = "(name, hash, size, time, deleted, replicas)"


def newer(a: FileEntry, b: FileEntry | None) -> bool:
    """True when version ``a`` wins over ``b`` (later time; the hash breaks ties)."""
    return b is None or (a[3], a[1], a[4]) > (b[3], b[1], b[4])


class BlobStore:
    """Blobs on disk (``have``: the hashes held) and the catalog of names (``entries``)."""

    def __init__(self, data_dir: Path) -> None:
        self.dir = data_dir / "blobs"
        self.tmp = self.dir / "tmp"
        shutil.rmtree(self.tmp, ignore_errors=True)  # writes a crash interrupted
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.have: set[str] = set()
        for sub in self.dir.iterdir():
            if sub.is_dir() and len(sub.name) == 2:
                self.have.update(p.name for p in sub.iterdir() if is_hash(p.name))
        self.path_db = data_dir / "files.sqlite3"
        try:
            self._db = sqlite3.connect(self.path_db, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(versions)")}
            if "replicas" not in columns:  # a catalog from before targets were kept
                self._db.execute(
                    "ALTER TABLE versions ADD COLUMN replicas INTEGER NOT NULL DEFAULT 0"
                )
            rows = self._db.execute(
                "SELECT name, hash, size, time, deleted, replicas FROM versions"
            ).fetchall()
            self.entries: dict[str, FileEntry] = {
                r[0]: (r[0], r[1], r[2], r[3], bool(r[4])) for r in rows
            }
            # name -> the copies its version was put with (0: not known)
            self.targets: dict[str, int] = {r[0]: r[5] for r in rows if r[5]}
        except sqlite3.Error as exc:
            raise ConfigurationError(f"cannot open the file catalog {self.path_db}: {exc}") from exc
        marker = self.dir / "HASH"
        if not marker.exists():
            if self.have or self.entries:
                self._rehash()
            marker.write_text(HASH_NAME + "\n")
        # Blobs whose hash was checked, with the (inode, size, mtime) they had then.
        self._verified: dict[str, tuple[int, int, int]] = {}

    def close(self) -> None:
        self._db.close()

    def _rehash(self) -> None:
        """A store from before BLAKE3 (blobs named by SHA-256): rename each blob to its
        new hash and rewrite the versions naming it. Versions of blobs held elsewhere
        are forgotten here: their holders rehash theirs and send them again."""
        renamed = {}
        for old in list(self.have):
            try:
                new = hash_file(self.path(old))
                final = self.path(new)
                final.parent.mkdir(exist_ok=True)
                os.replace(self.path(old), final)
            except OSError:
                continue
            renamed[old] = new
        self.have = set(renamed.values())
        self.entries = {
            n: (n, renamed.get(e[1], e[1]), e[2], e[3], e[4])
            for n, e in self.entries.items()
            if e[4] or e[1] in renamed
        }
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM versions")
            self._db.executemany(
                f"INSERT INTO versions {_COLUMNS} VALUES (?,?,?,?,?,?)",
                [(*e[:4], int(e[4]), self.targets.get(e[0], 0)) for e in self.entries.values()],
            )

    # ---- blobs ----

    def path(self, h: str) -> Path:
        if not is_hash(h):
            raise ValueError(f"not a blob hash: {h!r}")
        return self.dir / h[:2] / h

    def writer(self) -> BlobWriter:
        return BlobWriter(self)

    def remove(self, h: str) -> None:
        """Drop a blob (corrupt, or no version names it any more)."""
        self.have.discard(h)
        self._verified.pop(h, None)
        with contextlib.suppress(OSError):
            self.path(h).unlink()

    async def verify(self, h: str, *, again: bool = False) -> bool:
        """Whether blob ``h`` is on disk and its bytes still hash to ``h``.

        A check is remembered until the file's inode, size or mtime changes, so a
        blob read by many jobs is hashed once; bits that rot in place change none of
        those, so readers check as they read and ask for a check ``again``.
        """
        path = self.path(h)
        try:
            st = path.stat()
        except OSError:
            self.have.discard(h)
            return False
        stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
        if not again and self._verified.get(h) == stamp:
            return True
        ok = await asyncio.to_thread(_hash_or_empty, path) == h
        if ok:
            self._verified[h] = stamp
        else:
            self._verified.pop(h, None)
        return ok

    def trust(self, h: str) -> None:
        """A blob just written and checked: remember it as verified."""
        with contextlib.suppress(OSError):
            st = self.path(h).stat()
            self._verified[h] = (st.st_ino, st.st_size, st.st_mtime_ns)

    # ---- catalog ----

    def merge(self, entries: Iterable[FileEntry], targets: Sequence[int] = ()) -> list[FileEntry]:
        """Keep the versions that win over what we know; return those (persisted).
        ``targets``: the copies each was put with (0: not known), also learned for a
        version we hold already (a replica stored before its put's target was told)."""
        changed = []
        write = []
        for i, e in enumerate(entries):
            target = targets[i] if i < len(targets) else 0
            known = self.entries.get(e[0])
            if newer(e, known):
                self.entries[e[0]] = e
                changed.append(e)
                self.targets.pop(e[0], None)
            elif known != e or not target or self.targets.get(e[0]) == target:
                continue
            if target:
                self.targets[e[0]] = target
            write.append((*e[:4], int(e[4]), self.targets.get(e[0], 0)))
        if write:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany(
                    f"INSERT OR REPLACE INTO versions {_COLUMNS} VALUES (?,?,?,?,?,?)", write
                )
        return changed

    def target(self, name: str) -> int:
        """The copies the current version of ``name`` was put with (0: not known)."""
        return self.targets.get(name, 0)

    def live(self, prefix: str = "") -> list[FileEntry]:
        return sorted(e for n, e in self.entries.items() if not e[4] and n.startswith(prefix))

    def current(self, name: str) -> FileEntry | None:
        e = self.entries.get(name)
        return None if e is None or e[4] else e


class BlobWriter:
    """One blob being written: to a temp file, then fsynced and renamed into place.

    Every ``SYNC_EVERY`` bytes an fdatasync starts in a thread, not awaited, so the
    disk writes back while the next chunks arrive, and the fsync of ``commit`` finds
    little left to write (it was half the time of a 100 MB put).
    """

    def __init__(self, store: BlobStore) -> None:
        self._store = store
        self.temp = store.tmp / secrets.token_hex(8)
        self._f: Any = None
        self.size = 0
        self._synced = 0
        self._sync: asyncio.Future[None] | None = None

    async def open(self) -> None:
        self._f = await aiofiles.open(self.temp, "wb")

    async def write(self, data: bytes) -> None:
        await self._f.write(data)
        self.size += len(data)
        if self.size - self._synced >= SYNC_EVERY and (self._sync is None or self._sync.done()):
            await self._synced_so_far()  # raises the last one's error, if any
            self._synced = self.size
            self._sync = asyncio.ensure_future(asyncio.to_thread(os.fdatasync, self._f.fileno()))

    async def _synced_so_far(self) -> None:
        sync, self._sync = self._sync, None
        if sync is not None:
            await sync

    async def commit(self, h: str) -> Path:
        """Make the blob durable under its hash (the caller checked ``h``)."""
        f, self._f = self._f, None
        try:
            await self._synced_so_far()
            await f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
        finally:
            await f.close()
        final = self._store.path(h)
        final.parent.mkdir(exist_ok=True)
        os.chmod(self.temp, 0o400)  # jobs open blobs in place: read-only, the user's alone
        os.replace(self.temp, final)
        await asyncio.to_thread(_fsync_dir, final.parent)
        self._store.have.add(h)
        self._store.trust(h)
        return final

    async def abort(self) -> None:
        with contextlib.suppress(OSError):
            await self._synced_so_far()
        if self._f is not None:
            with contextlib.suppress(OSError):
                await self._f.close()
            self._f = None
        with contextlib.suppress(OSError):
            self.temp.unlink()


def _hash_or_empty(path: Path) -> str:
    try:
        return hash_file(path)
    except OSError:
        return ""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
