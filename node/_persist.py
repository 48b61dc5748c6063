"""Finished jobs kept on disk, so a restarted node serves their results again.

The glue between the node's job table and its :class:`JobStore`: small results are
committed on the loop (a cheap INSERT), big ones written from one store thread so the
loop keeps answering while hundreds of MB go to disk; expired jobs are removed there too.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from mesh.node._job_types import Func, Job
from mesh.node._store import BLOB_MIN, JobStore, StoredJob, payload_size

from mesh._protocol import Payload
from mesh._tasks import TaskSet

__all__ = ["JobKeeper"]

log = logging.getLogger("mesh.node")  # the node's own log: these are its messages


class JobKeeper:
    """Saves finished jobs to ``store`` and forgets expired ones, off the loop when big."""

    def __init__(self, store: JobStore) -> None:
        self.store = store
        # Big results are written to their files here, one at a time, off the loop (and
        # expired jobs removed); the tasks not yet done, awaited before the store closes.
        self._thread = ThreadPoolExecutor(1, thread_name_prefix="mesh-store")
        self._writes = TaskSet("store", log)

    @property
    def path(self) -> Path:
        return self.store.path

    def load(self) -> list[Job]:
        """The finished jobs the store holds (blocking: run it in a thread)."""
        return [_from_store(row) for row in self.store.load()]

    def save(self, finished: list[Job]) -> None:
        """Commit finished jobs. Small results are committed here and now (a cheap INSERT);
        big ones (``BLOB_MIN`` bytes or more) go to files from the store thread, so the
        loop keeps answering heartbeats and other clients while hundreds of MB are
        written. Such a job survives a crash once its write is done, and a stop always."""
        big = [j for j in finished if payload_size(j.result) >= BLOB_MIN]
        small = [j for j in finished if payload_size(j.result) < BLOB_MIN] if big else finished
        if small:
            try:
                self.store.save(map(_to_store, small))
            except sqlite3.Error as exc:  # results still go out; a restart loses them
                log.error("could not store %d finished jobs in %s: %s",
                          len(small), self.store.path, exc)  # fmt: skip
        if big:
            self._writes.spawn(self._save_big(big))

    def forget(self, jids: list[str]) -> None:
        """Remove expired jobs from the store (a big result's file too) off the loop."""
        self._writes.spawn(self._forget(jids))

    async def close(self) -> None:
        """Wait for the writes under way (results finished before a stop survive it),
        then close the store."""
        await self._writes.wait()
        self._thread.shutdown()
        self.store.close()

    async def _save_big(self, jobs: list[Job]) -> None:
        store = self.store
        rows = [_to_store(j) for j in jobs]
        loop = asyncio.get_running_loop()
        try:
            mapped = await loop.run_in_executor(self._thread, store.save, rows)
        except (sqlite3.Error, OSError) as exc:  # the results went out; a restart loses them
            log.error("could not store %d finished jobs in %s: %s",
                      len(rows), store.path, exc)  # fmt: skip
            return
        except Exception:  # a bug of ours: the node carries on
            log.exception("storing %d finished jobs", len(rows))
            return
        _use_files(jobs, rows, mapped)
        # Often the last reference to the node's copy: unmapping 512 MiB takes ~0.1 s, there.
        await loop.run_in_executor(self._thread, rows.clear)

    async def _forget(self, jids: list[str]) -> None:
        store = self.store
        try:
            await asyncio.get_running_loop().run_in_executor(self._thread, store.forget, jids)
        except (sqlite3.Error, OSError) as exc:  # restarted, the node serves them a while more
            log.error("could not remove %d expired jobs from %s: %s", len(jids), store.path, exc)


def _to_store(j: Job) -> StoredJob:
    return StoredJob(j.jid, j.state, j.func.name, j.label, j.submitted, j.started, j.finished,
                     j.cpu_s, j.stdout, j.stderr, j.result, j.error, j.attempts)  # fmt: skip


def _use_files(jobs: list[Job], rows: list[StoredJob], mapped: dict[str, Payload]) -> None:
    """Serve these jobs' big results from their files: the same bytes, in page cache, so
    the node's own copy (hundreds of MB) goes once its last send is done. Not a job
    that got another result meanwhile."""
    for job, row in zip(jobs, rows, strict=True):
        if job.jid in mapped and job.result is row.result:
            job.result = mapped[job.jid]


def _from_store(row: StoredJob) -> Job:
    jid, state, fname, label, submitted, started, finished, cpu_s, out, err, result, error, n = row
    job = Job(jid, Func(b"", b"", fname), b"", -1, submitted, label=label, state=state,
              started=started, finished=finished, cpu_s=cpu_s, stdout=out, stderr=err,
              result=result, error=error, attempts=n)  # fmt: skip
    return job
