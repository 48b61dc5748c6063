"""The node's pool of warm worker processes.

Each worker is ``python -m mesh.node._worker`` in a session of its own (so a kill takes
the job's own subprocesses too), talking to the node over a socketpair. A worker
that exits for any reason is reported and replaced at once.
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
from typing import IO

from mesh._connection import Connection
from mesh._protocol import Message, Ran, RanItem, Run, WorkerReady
from mesh._spawn import job_environment, module_command

__all__ = ["WorkerPool", "describe_exit"]

log = logging.getLogger("mesh.node.pool")


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


class WorkerPool:
    def __init__(
        self,
        size: int,
        *,
        on_ready: Callable[[int], None],
        on_ran: Callable[[int, tuple[RanItem, ...]], None],
        on_died: Callable[[int, str], None],
        log_file: IO[bytes] | None = None,
        kill_grace_s: float = 5.0,
        share: Callable[[object], str | None] | None = None,
        on_released: Callable[[tuple[str, ...]], None] | None = None,
        max_memory: int = 0,
        python: str = sys.executable,
        first_wid: int = 0,
    ) -> None:
        self._share = share
        self._on_released = on_released  # shared blocks a worker closed (see node._shm)
        self._max_memory = max_memory  # the node's --max-memory: workers keep less free
        self.python = python  # a job environment's interpreter, or the node's own
        self.size = size
        self._on_ready = on_ready
        self._on_ran = on_ran
        self._on_died = on_died
        self._log_file = log_file
        self._kill_grace_s = kill_grace_s
        self._procs: dict[int, _Proc] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._next_wid = first_wid  # pools of one node number their workers apart
        self._closing = False

    @property
    def pids(self) -> list[int]:
        return [p.proc.pid for p in self._procs.values()]

    def pid(self, wid: int) -> int | None:
        p = self._procs.get(wid)
        return None if p is None else p.proc.pid

    def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        self._next_wid += 1
        task = asyncio.get_running_loop().create_task(self._run_worker(self._next_wid))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run_worker(self, wid: int) -> None:
        """Own one worker process from spawn to exit, then start its replacement."""
        loop = asyncio.get_running_loop()
        parent, child = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *module_command("mesh.node._worker", str(child.fileno()), str(os.getpid()),
                                str(self._max_memory), python=self.python),
                pass_fds=(child.fileno(),),
                env=job_environment(),  # read now: MESH_NODE_FILES is set after start
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._log_file if self._log_file is not None else subprocess.DEVNULL,
                start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            parent.close()
            log.error("cannot start a worker process: %s", exc)
            await asyncio.sleep(1.0)
            if not self._closing:
                self._spawn()
            return
        finally:
            child.close()

        def on_message(_: Connection, msg: Message) -> None:
            if isinstance(msg, Ran):
                if msg.released and self._on_released is not None:
                    self._on_released(msg.released)  # before its jobs end and free the blocks
                self._on_ran(wid, msg.items)
            elif isinstance(msg, WorkerReady):
                self._on_ready(wid)

        _, conn = await loop.create_unix_connection(
            lambda: Connection(
                "plain", peer_label=f"worker {wid}", on_message=on_message, share=self._share
            ),
            sock=parent,
        )
        entry = _Proc(wid, proc, conn)
        self._procs[wid] = entry
        try:
            returncode = await proc.wait()
        finally:
            self._procs.pop(wid, None)
            if entry.kill_timer is not None:
                entry.kill_timer.cancel()
            conn.abort()
        if self._closing:
            return
        desc = describe_exit(returncode)
        log.info("worker %d (pid %d) %s", wid, proc.pid, desc)
        self._on_died(wid, desc)
        self._spawn()

    def send(self, wid: int, msg: Run) -> bool:
        p = self._procs.get(wid)
        if p is None or p.conn.closed:
            return False
        p.conn.send(msg)
        return True

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
        for p in list(self._procs.values()):
            self._signal(p, signal.SIGTERM)
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self._kill_grace_s)
            for p in list(self._procs.values()):
                self._signal(p, signal.SIGKILL)
            if pending:
                await asyncio.wait(pending, timeout=2.0)
            for t in pending:
                t.cancel()
