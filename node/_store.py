"""Finished jobs on disk, so a node restarted on the same ``--data-dir`` serves them again.

SQLite in WAL mode (the stdlib's): the node writes every batch of finished jobs here
in one transaction, right after it sent their results and before it does anything
else (answers a request, starts a job), so the commit is not on a waiting client's
path. ``synchronous=NORMAL``
makes a commit durable against the node's process dying (SIGKILL, a crash), which
is what this store is for; a power cut may lose the last commits, and the clients
then run those jobs again (at-least-once). Queued and running jobs are not stored:
their clients place them again when the node is lost.

One node owns a data dir at a time (an exclusive lock on ``node.lock``). The data dir
is private to the user running the node (0700, its files 0600): other local users must
not read results, arguments or stored files; :func:`private_data_dir` refuses one that
is open to them.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import IO

import msgpack  # type: ignore[import-untyped]

from mesh._protocol import ErrorInfo, Payload
from mesh.errors import ConfigurationError

__all__ = ["JobStore", "StoredJob", "private_data_dir"]

# jid, state, fname, label, submitted, started, finished, cpu_s, stdout, stderr,
# result, error, attempts
StoredJob = tuple[
    str, int, str, str, float, float, float, float, str, str, Payload, ErrorInfo | None, int
]
# A result with out-of-band buffers is stored as this byte, then msgpack of its parts: a
# pickle starts with b"\x80" (PROTO), so the two never mix up.
_PARTS = b"\x00"

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
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / "jobs.sqlite3"
        private_data_dir(data_dir)
        self._lock: IO[str] | None = _lock_data_dir(data_dir)
        try:
            _create_private(self.path)  # SQLite gives its -wal and -shm files this mode
            # Opened in a helper thread, then used from the node's loop thread only.
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            self._unlock()
            raise ConfigurationError(f"cannot open the job store {self.path}: {exc}") from exc

    def save(self, jobs: Iterable[StoredJob]) -> None:
        """Store finished jobs in one transaction; raises sqlite3.Error (say, disk full)."""
        rows = [
            (*j[:10], _flat(j[10]), None if j[11] is None else json.dumps(j[11]), j[12])
            for j in jobs
        ]
        if not rows:
            return
        with self._db:  # one transaction
            self._db.execute("BEGIN")
            self._db.executemany(
                "INSERT OR REPLACE INTO jobs VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )

    def forget(self, jids: Iterable[str]) -> None:
        rows = [(jid,) for jid in jids]
        if rows:
            with self._db:
                self._db.execute("BEGIN")
                self._db.executemany("DELETE FROM jobs WHERE jid = ?", rows)

    def load(self) -> list[StoredJob]:
        out: list[StoredJob] = []
        for row in self._db.execute("SELECT * FROM jobs ORDER BY finished"):
            error = None if row[11] is None else tuple(json.loads(row[11]))
            out.append((*row[:10], _parts(row[10]), error, row[12]))
        return out

    def close(self) -> None:
        self._db.close()
        self._unlock()

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
