"""Finished jobs on disk, so a node restarted on the same ``--data-dir`` serves them again.

SQLite in WAL mode (the stdlib's): the node writes every batch of finished jobs here
in one transaction, right after it sent their results and before it does anything
else (answers a request, starts a job), so the commit is not on a waiting client's
path. ``synchronous=NORMAL``
makes a commit durable against the node's process dying (SIGKILL, a crash), which
is what this store is for; a power cut may lose the last commits, and the clients
then run those jobs again (at-least-once). Queued and running jobs are not stored:
their clients place them again when the node is lost.

Results of ``BLOB_MIN`` bytes or more are not put in SQLite (a 512 MiB one cost
seconds of copying, and SQLite refuses blobs past 1 GB): their bytes go to a file of
their own in ``results/`` beside the database, written by the node's store thread off
the event loop, and the row names the file. Read back, such a result is a read-only
mapping of its file, so a node serving it holds page cache, not a copy. Such a job is
durable once its file is written and its row committed, a moment after its result went
out (the loop does not wait for it); a stopping node waits for it.

One node owns a data dir at a time (an exclusive lock on ``node.lock``). The data dir
is private to the user running the node (0700, its files 0600): other local users must
not read results, arguments or stored files; :func:`private_data_dir` refuses one that
is open to them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import mmap
import os
import re
import sqlite3
import stat
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import IO, NamedTuple

import msgpack  # type: ignore[import-untyped]

from mesh._frames import ATTACH_MIN
from mesh._protocol import ErrorInfo, Payload
from mesh.errors import ConfigurationError

__all__ = ["BLOB_MIN", "JobStore", "StoredJob", "payload_size", "private_data_dir"]

log = logging.getLogger("mesh.node")

# Results this big (all their parts) are files in results/, not SQLite blobs.
BLOB_MIN = 1 << 20


class StoredJob(NamedTuple):
    """A finished job as the store keeps it (a row of its table, in column order)."""

    jid: str
    state: int
    fname: str
    label: str
    submitted: float
    started: float
    finished: float
    cpu_s: float
    stdout: str
    stderr: str
    result: Payload
    error: ErrorInfo | None
    attempts: int


# A result with out-of-band buffers is stored as this byte, then msgpack of its parts: a
# pickle starts with b"\x80" (PROTO), so the two never mix up.
_PARTS = b"\x00"
# A result kept in a file is stored as this byte, then msgpack of [file name, whether
# the result is a tuple of parts, the parts' sizes]: the file holds the parts end to end.
_FILE = b"\x01"
_FILE_NAME = re.compile(r"[0-9a-f]{32}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    jid TEXT PRIMARY KEY,
    state INTEGER NOT NULL,
    fname TEXT NOT NULL,
    label TEXT NOT NULL,
    submitted REAL NOT NULL,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    cpu_s REAL NOT NULL,
    stdout TEXT NOT NULL,
    stderr TEXT NOT NULL,
    result BLOB NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL
)
"""


class JobStore:
    """Finished jobs in SQLite, big results in files beside it.

    Thread-safe: the node saves small results on its loop (a cheap commit) and big ones
    from its store thread; the database is used under a lock, a result file is written
    outside it.
    """

    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "jobs.sqlite3"
        self.results_dir = data_dir / "results"
        private_data_dir(data_dir)
        self._lock: IO[str] | None = _lock_data_dir(data_dir)
        self._db_lock = threading.Lock()
        self._files: set[str] = set()  # jids whose result is a file
        try:
            with contextlib.suppress(FileExistsError):
                self.results_dir.mkdir(mode=0o700)
            _create_private(self.path)  # SQLite gives its -wal and -shm files this mode
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (sqlite3.Error, OSError) as exc:
            self._unlock()
            raise ConfigurationError(f"cannot open the job store {self.path}: {exc}") from exc

    def save(self, jobs: Iterable[StoredJob]) -> dict[str, Payload]:
        """Store finished jobs in one transaction; raises sqlite3.Error or OSError (say,
        disk full). A result of ``BLOB_MIN`` bytes or more is written to its file first
        (slow: call this from a thread), and returned, read back from that file, by jid:
        the caller may drop its own copy for it."""
        rows = []
        mapped: dict[str, Payload] = {}
        for j in jobs:
            if payload_size(j.result) >= BLOB_MIN:
                stored = self._write_file(j.jid, j.result)
                mapped[j.jid] = self._read_file(stored)
            else:
                stored = _flat(j.result)
            error = None if j.error is None else json.dumps(j.error)
            rows.append((*j[:10], stored, error, j.attempts))
        if not rows:
            return mapped
        with self._db_lock, self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )
            self._files.update(mapped)
        return mapped

    def forget(self, jids: Iterable[str]) -> None:
        """Remove these jobs, and the files of their big results."""
        rows = [(jid,) for jid in jids]
        if not rows:
            return
        with self._db_lock:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM jobs WHERE jid = ?", rows)
            gone = self._files.intersection(jid for (jid,) in rows)
            self._files -= gone
        for jid in gone:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.results_dir / _file_name(jid))

    def load(self) -> list[StoredJob]:
        """The stored jobs, oldest first. A job whose result file is missing or cut short
        is dropped (its client runs it again); files no job names are removed."""
        out: list[StoredJob] = []
        lost: list[str] = []
        with self._db_lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY finished").fetchall()
        for row in rows:
            job = StoredJob._make(row)  # the table's columns are the record's fields
            stored: bytes = job.result  # type: ignore[assignment]  # as the table holds it
            if stored[:1] == _FILE:
                try:
                    result = self._read_file(stored)
                except (OSError, ValueError) as exc:
                    log.warning("dropping job %s: its result file %s", job.jid, exc)
                    lost.append(job.jid)
                    continue
                self._files.add(job.jid)
            else:
                result = _parts(stored)
            text: str | None = job.error  # type: ignore[assignment]  # JSON in the table
            error = None if text is None else ErrorInfo.from_wire(json.loads(text))
            out.append(job._replace(result=result, error=error))
        self.forget(lost)
        named = {_file_name(jid) for jid in self._files}
        for entry in os.scandir(self.results_dir):
            if entry.name not in named:  # a write cut short, or a row replaced
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
        return out

    def close(self) -> None:
        with self._db_lock:
            self._db.close()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None

    def _write_file(self, jid: str, result: Payload) -> bytes:
        """Write a result's parts end to end to its file (0600); the row's value."""
        parts: tuple[bytes, ...] = result if isinstance(result, tuple) else (result,)
        name = _file_name(jid)
        final = self.results_dir / name
        tmp = self.results_dir / (name + ".tmp")  # renamed once whole: never half a result
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for part in parts:
                with memoryview(part) as view, view.cast("B") as data:
                    done = 0
                    while done < len(data):
                        done += os.write(fd, data[done:])
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        os.close(fd)
        os.replace(tmp, final)
        sizes = [len(p) for p in parts]
        packed: bytes = msgpack.packb([name, type(result) is tuple, sizes])
        return _FILE + packed

    def _read_file(self, stored: bytes) -> Payload:
        """A stored result file as a payload: read-only views of one mapping of it (small
        parts as bytes, which the codec sends inline)."""
        name, is_tuple, sizes = msgpack.unpackb(stored[1:])
        if not isinstance(name, str) or not _FILE_NAME.fullmatch(name):
            raise ValueError(f"names no result file ({name!r})")
        path = self.results_dir / name
        total = sum(sizes)
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size != total:
                raise ValueError(f"{path} is cut short ({size} of {total} bytes)")
            mem = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if total else b""
        view = memoryview(mem)
        parts: list[bytes] = []
        at = 0
        for n in sizes:
            part = view[at : at + n]
            parts.append(bytes(part) if n < ATTACH_MIN else part)  # type: ignore[arg-type]
            at += n
        return tuple(parts) if is_tuple else parts[0]


def payload_size(result: Payload) -> int:
    """Bytes of a result, all its parts."""
    if type(result) is tuple:
        return sum(len(p) for p in result)
    return len(result)


def _file_name(jid: str) -> str:
    """A result file's name: jids come from clients, so never a path of their making."""
    return hashlib.sha256(jid.encode()).hexdigest()[:32]

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.close()  # releases the lock
            self._lock = None


def _flat(result: Payload) -> bytes:
    if isinstance(result, tuple):
        packed: bytes = msgpack.packb([memoryview(p) for p in result], use_bin_type=True)
        return _PARTS + packed
    return result


def _parts(stored: bytes) -> Payload:
    if stored[:1] == _PARTS:
        parts: tuple[bytes, ...] = msgpack.unpackb(stored[1:], use_list=False)
        return parts
    return stored


def private_data_dir(data_dir: Path) -> None:
    """Create the data dir 0700, or check that other users cannot enter it.

    A dir an older lanmesh made 0755 (its files 0644) is refused rather than fixed
    silently, like a secret file others can read: the message gives the chmod to run.
    """
    try:
        data_dir.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigurationError(
            f"cannot create the data dir {data_dir}: {exc.strerror or exc}"
        ) from exc
    try:
        st = data_dir.stat()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot use the data dir {data_dir}: {exc.strerror or exc}"
        ) from exc
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigurationError(f"data dir {data_dir} is not a directory")
    if st.st_uid != os.geteuid():
        raise ConfigurationError(
            f"data dir {data_dir} belongs to uid {st.st_uid}, not to this user "
            f"(uid {os.geteuid()}); give this node a data dir of its own with --data-dir"
        )
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"data dir {data_dir} is open to other users (mode {stat.S_IMODE(st.st_mode):04o}): "
            "they could read job results and stored files; "
            f"run: chmod -R go-rwx {data_dir}"
        )


def _create_private(path: Path) -> None:
    """Create ``path`` 0600 if it is missing (whatever the process umask)."""
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _lock_data_dir(data_dir: Path) -> IO[str]:
    _create_private(data_dir / "node.lock")
    f = open(data_dir / "node.lock", "a+")  # noqa: SIM115 (held for the node's life)
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "another process"
        f.close()
        raise ConfigurationError(
            f"data dir {data_dir} is in use by another mesh-node ({holder}); "
            "give each node its own --data-dir"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f
