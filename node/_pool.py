"""The node's pool of warm worker processes.

Each worker is ``python -m mesh.node._worker`` in a session of its own (so a kill takes
the job's own subprocesses too), talking to the node over a socketpair. A worker
that exits for any reason is reported and replaced; one that cannot start is retried
with backoff. The node is a child subreaper: what a dead worker's job left running
comes to it and is ended.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from typing import IO, Any

from mesh.node._proc import become_subreaper, end_orphans, hide_from_jobs

from mesh._connection import Connection
from mesh._protocol import JobOutput, Message, Ran, RanItem, Run, WorkerReady
from mesh._spawn import job_environment, module_command
from mesh._tasks import TaskSet

__all__ = ["WorkerPool", "describe_exit", "sweep_orphans"]

log = logging.getLogger("mesh.node.pool")

# The last bytes, and lines, of a worker's stderr kept to say why it could not start.
STDERR_TAIL_BYTES = 8192
STDERR_TAIL_LINES = 12

# The live workers of every pool of this node, and how many are being started (their
# pids not known yet): what the orphan sweep must never take for a job's leftovers.
_live_workers: set[int] = set()
_starting = 0


def describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class _Proc:
    __slots__ = ("conn", "kill_timer", "proc", "wid")

    def __init__(self, wid: int, proc: asyncio.subprocess.Process, conn: Connection) -> None:
        self.wid = wid
        self.proc = proc
        self.conn = conn
        self.kill_timer: asyncio.TimerHandle | None = None


class _StderrTail:
    """A worker's stderr, read from a pipe on the loop: copied to the node's workers.log
    and its last STDERR_TAIL_BYTES kept, to say why a worker that cannot start died."""

    def __init__(self, fd: int, log_file: IO[bytes] | None) -> None:
        self._fd = fd
        self._log_file = log_file
        self._tail = b""
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self.drain)

    def drain(self) -> None:
        """Read what the pipe holds now (the reader calls this; so does the exit)."""
        while self._fd >= 0:
            try:
                chunk = os.read(self._fd, 65536)
            except BlockingIOError:
                return
            except OSError:
                chunk = b""
            if not chunk:
                self.close()
                return
            self._tail = (self._tail + chunk)[-STDERR_TAIL_BYTES:]
            if self._log_file is not None:
                with contextlib.suppress(OSError, ValueError):
                    self._log_file.write(chunk)
                    self._log_file.flush()

    def lines(self, n: int = STDERR_TAIL_LINES) -> str:
        """The last ``n`` non-empty lines written so far."""
        text = self._tail.decode("utf-8", "replace")
        return "\n".join([line for line in text.splitlines() if line.strip()][-n:])

    def close(self) -> None:
        if self._fd >= 0:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1


class WorkerPool:
    """Worker processes of one interpreter (the node's, or a job environment's).

    A worker that exits is replaced. One that exits before it is ready (a broken
    interpreter, a module that fails at import) is retried with capped exponential
    backoff; after ``broken_after`` such failures in a row, with no worker of the pool
    ready, ``on_broken(cause, stderr_tail)`` tells the node to fail the jobs it cannot
    run, until a worker starts again (``on_recovered``)."""

    def __init__(
        self,
        size: int,
        *,
        on_ready: Callable[[int], None],
        on_ran: Callable[[int, tuple[RanItem, ...]], None],
        on_died: Callable[[int, str], None],
        on_broken: Callable[[str, str], None] | None = None,
        on_recovered: Callable[[], None] | None = None,
        log_file: IO[bytes] | None = None,
        kill_grace_s: float = 5.0,
        share: Callable[[object], str | None] | None = None,
        on_released: Callable[[tuple[str, ...]], None] | None = None,
        max_memory: int = 0,
        python: str = sys.executable,
        first_wid: int = 0,
        restart_first_s: float = 0.1,
        restart_max_s: float = 10.0,
        broken_after: int = 3,
        on_output: Callable[[JobOutput], None] | None = None,
    ) -> None:
        self._on_output = on_output  # a running job's output so far (the dashboard shows it)
        self._share = share
        self._on_released = on_released  # shared blocks a worker closed (see node._shm)
        self._max_memory = max_memory  # the node's --max-memory: workers keep less free
        self.python = python  # a job environment's interpreter, or the node's own
        self.size = size
        self._on_ready = on_ready
        self._on_ran = on_ran
        self._on_died = on_died
        self._on_broken = on_broken
        self._on_recovered = on_recovered
        self._log_file = log_file
        self._kill_grace_s = kill_grace_s
        self._procs: dict[int, _Proc] = {}
        self._ready: set[int] = set()  # workers that said WorkerReady and are alive
        self._retiring: set[int] = set()  # stopped after a _kill_process job: not news
        self._tasks = TaskSet("pool", log)
        self._waiting: set[asyncio.Task[Any]] = set()  # tasks in a backoff before a spawn
        self._next_wid = first_wid  # pools of one node number their workers apart
        self._closing = False
        self._restart_first_s = restart_first_s
        self._restart_max_s = restart_max_s
        self._broken_after = broken_after
        self.failures = 0  # workers in a row that exited before they were ready
        self.broken = False  # on_broken was called, on_recovered not since

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self._procs.values()]

    def pid(self, wid: int) -> int | None:
        p = self._procs.get(wid)
        return None if p is None else p.proc.pid

    def start(self) -> None:
        become_subreaper()  # what a dead worker's job left running comes to the node
        if os.environ.get("MESH_SECRET"):  # in /proc/PID/environ for good: hide it from jobs
            hide_from_jobs()
        for _ in range(self.size):
            self._spawn()

    def _spawn(self, delay_s: float = 0.0) -> None:
        self._next_wid += 1
        self._tasks.spawn(self._run_worker(self._next_wid, delay_s), f"worker {self._next_wid}")

    def _ready_now(self, wid: int) -> None:
        self._ready.add(wid)
        self.failures = 0
        if self.broken:
            self.broken = False
            log.warning("worker %d started: taking jobs again", wid)
            if self._on_recovered is not None:
                self._on_recovered()
        self._on_ready(wid)

    def _failed_start(self, wid: int, desc: str, stderr: str) -> float:
        """A worker exited before it was ready: log why, maybe give up on jobs for now,
        and return how long to wait before the next try."""
        self.failures += 1
        delay_s = min(self._restart_max_s, self._restart_first_s * 2.0 ** (self.failures - 1))
        log.warning(
            "worker %d (%s) %s before it was ready (%d in a row); retrying in %.1f s. "
            "Its stderr ends:\n%s", wid, self.python, desc, self.failures, delay_s,
            stderr or "(nothing)",
        )  # fmt: skip
        if self.failures >= self._broken_after and not self._ready and not self.broken:
            self.broken = True
            if self._on_broken is not None:
                self._on_broken(f"{self.failures} worker processes in a row {desc} before "
                                "they were ready", stderr)  # fmt: skip
        return delay_s

    async def _run_worker(self, wid: int, delay_s: float = 0.0) -> None:
        """Own one worker process from spawn to exit, then start its replacement."""
        global _starting
        if delay_s > 0:
            waiting = asyncio.current_task()
            assert waiting is not None
            self._waiting.add(waiting)  # close() cancels a backoff rather than wait it out
            try:
                await asyncio.sleep(delay_s)
            finally:
                self._waiting.discard(waiting)
            if self._closing:
                return
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        err_r, err_w = os.pipe()
        _starting += 1
        try:
            proc = await asyncio.create_subprocess_exec(
                *module_command("mesh.node._worker", str(child.fileno()), str(os.getpid()),
                                str(self._max_memory), python=self.python),
                pass_fds=(child.fileno(),),
                env=job_environment(),  # read now: MESH_NODE_FILES is set after start
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=err_w,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            parent.close()
            os.close(err_r)
            delay_s = self._failed_start(wid, f"could not be started ({exc})", "")
            if not self._closing:
                self._spawn(delay_s)
            return
        finally:
            _starting -= 1
            child.close()
            os.close(err_w)
        _live_workers.add(proc.pid)
        stderr = _StderrTail(err_r, self._log_file)

        def on_message(_: Connection, msg: Message) -> None:
            if isinstance(msg, Ran):
                if msg.released and self._on_released is not None:
                    self._on_released(msg.released)  # before its jobs end and free the blocks
                self._on_ran(wid, msg.items)
            elif isinstance(msg, WorkerReady):
                self._ready_now(wid)
            elif isinstance(msg, JobOutput) and self._on_output is not None:
                self._on_output(msg)

        entry: _Proc | None = None
        try:
            _, conn = await loop.create_unix_connection(
                lambda: Connection(
                    "plain", peer_label=f"worker {wid}", on_message=on_message, share=self._share
                ),
                sock=parent,
            )
            entry = _Proc(wid, proc, conn)
            self._procs[wid] = entry
            returncode = await proc.wait()
        finally:
            was_ready = wid in self._ready
            self._ready.discard(wid)
            self._procs.pop(wid, None)
            _live_workers.discard(proc.pid)
            if entry is not None:
                if entry.kill_timer is not None:
                    entry.kill_timer.cancel()
                entry.conn.abort()
            stderr.drain()  # what it wrote before it exited is in the pipe now
            stderr.close()
        await sweep_orphans()
        if self._closing:
            return
        desc = describe_exit(returncode)
        delay_s = 0.0
        if wid in self._retiring:
            self._retiring.discard(wid)
            log.debug("worker %d (pid %d) retired after a _kill_process job", wid, proc.pid)
        elif was_ready:
            log.info("worker %d (pid %d) %s", wid, proc.pid, desc)
        else:
            delay_s = self._failed_start(wid, desc, stderr.lines())
        self._on_died(wid, desc)
        self._spawn(delay_s)

    def send(self, wid: int, msg: Run) -> bool:
        p = self._procs.get(wid)
        if p is None or p.conn.closed:
            return False
        p.conn.send(msg)
        return True

    def retire(self, wid: int) -> None:
        """Replace an idle worker with a fresh process (its job asked for _kill_process):
        stopped as by ``kill``; its slot is refilled as after any exit."""
        if wid in self._procs:
            self._retiring.add(wid)
            self.kill(wid)

    def kill(self, wid: int) -> None:
        """SIGTERM the worker's process group, SIGKILL after the grace period."""
        p = self._procs.get(wid)
        if p is None or p.proc.returncode is not None:
            return
        self._signal(p, signal.SIGTERM)
        if p.kill_timer is None:
            p.kill_timer = asyncio.get_running_loop().call_later(
                self._kill_grace_s, self._signal, p, signal.SIGKILL
            )

    @staticmethod
    def _signal(p: _Proc, sig: int) -> None:
        if p.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.proc.pid, sig)

    async def close(self) -> None:
        """Stop every worker (SIGTERM, then SIGKILL) and wait for them."""
        self._closing = True
        for task in list(self._waiting):
            task.cancel()
        for p in list(self._procs.values()):
            self._signal(p, signal.SIGTERM)
        if self._tasks:
            pending = await self._tasks.wait(self._kill_grace_s)
            for p in list(self._procs.values()):
                self._signal(p, signal.SIGKILL)
            if pending:
                await self._tasks.wait(2.0)
            self._tasks.cancel()
        await sweep_orphans()


async def sweep_orphans() -> None:
    """End what dead workers' jobs left running, now the node's children (see
    node._proc.end_orphans); not while a worker is starting, its pid not yet known."""
    for _ in range(100):
        if _starting:
            await asyncio.sleep(0.02)
            continue
        if not end_orphans(_live_workers):
            return
        await asyncio.sleep(0.01)
