"""Small process helpers shared by the node's parts: liveness, and ending process trees.

A job may start processes (``subprocess.Popen``, a double-forked daemon) and return.
Workers and the node are child subreapers (Linux): a process orphaned below them
becomes their child instead of init's, so they can find it and end it with its job.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Collection

__all__ = [
    "become_subreaper",
    "descendants",
    "end_descendants",
    "end_orphans",
    "has_children",
    "hide_from_jobs",
    "pid_alive",
]

_PR_SET_DUMPABLE = 4
_PR_SET_CHILD_SUBREAPER = 36


def pid_alive(pid: int) -> bool:
    """True while a process with this pid exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def become_subreaper() -> bool:
    """Adopt this process's orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``);
    False where the platform has no such thing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def hide_from_jobs() -> bool:
    """Make this process (the node) non-dumpable (Linux ``PR_SET_DUMPABLE`` 0): other
    processes of its user, its jobs among them, can then neither read its
    ``/proc/PID/environ`` (which keeps the ``MESH_SECRET`` it was started with, whatever
    ``os.environ`` says now) or memory, nor ptrace it (nor can its user's debuggers:
    hence only for a node started with the secret in its environment). Workers are
    exec'd afresh, so this does not pass on to them. False where the platform has no
    such thing."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) == 0)
    except (OSError, AttributeError):
        return False


def has_children() -> bool:
    """Whether this process has any child, live or a zombie (one syscall, no /proc)."""
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _process_table() -> dict[int, tuple[int, int]]:
    """pid -> (parent pid, session id) of every process visible in /proc."""
    table: dict[int, tuple[int, int]] = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return table
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # gone meanwhile
        # the command name may hold spaces or ')': the fixed fields follow the last ')'
        fields = stat.rsplit(b")", 1)[1].split()
        table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def _below(table: dict[int, tuple[int, int]], roots: Collection[int]) -> list[int]:
    kids: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    out: list[int] = []
    todo = list(roots)
    while todo:
        for child in kids.get(todo.pop(), ()):
            out.append(child)
            todo.append(child)
    return out


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children, grandchildren...), from /proc."""
    return _below(_process_table(), (pid,))


def _kill(pids: Collection[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _reap_any() -> None:
    """Collect every child that has exited (this process owns all its children)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0]:
            pass


def end_descendants(grace_s: float) -> int:
    """End every process below this one: SIGTERM, SIGKILL what is left after ``grace_s``,
    and reap them. For a worker between jobs (its only children are a job's); being a
    subreaper, it finds orphaned grandchildren among its children. Returns how many."""
    if not has_children():
        return 0
    me = os.getpid()
    found = set(descendants(me))
    _kill(found, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while True:
        _reap_any()
        if not has_children():
            return len(found)
        if time.monotonic() >= deadline:
            break
        time.sleep(0.01)
    for _ in range(100):  # a tree that forks as it dies: each round takes what is left
        left = descendants(me)
        found.update(left)
        _kill(left, signal.SIGKILL)
        time.sleep(0.005)
        _reap_any()
        if not has_children():
            break
    return len(found)


def end_orphans(keep: Collection[int]) -> int:
    """SIGKILL the processes a dead worker left to this node (its subreaper), with all
    below them, and reap those that have exited: the children of this process in
    another session than its own (workers have sessions of their own, so do daemons;
    what the node itself starts shares its session), except the workers in ``keep``.
    Returns how many it found: call again until 0, as the killed ones' children come
    to this process in turn. Only these pids are waited for, never -1: asyncio waits
    for the node's other children itself."""
    table = _process_table()
    me, my_sid = os.getpid(), os.getsid(0)
    roots = [p for p, (pp, sid) in table.items() if pp == me and sid != my_sid and p not in keep]
    if roots:
        _kill([*roots, *_below(table, roots)], signal.SIGKILL)
        for pid in roots:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, os.WNOHANG)
    return len(roots)


_PAGE = os.sysconf("SC_PAGE_SIZE")


def rss_bytes(pid: int) -> int:
    """Resident bytes of a process (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return 0


def memory_in_use() -> float:
    """The share of this machine's memory in use (1 - MemAvailable / MemTotal)."""
    total = avail = 0
    try:
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                if line.startswith(b"MemTotal:"):
                    total = int(line.split()[1])
                elif line.startswith(b"MemAvailable:"):
                    avail = int(line.split()[1])
                    break
    except (OSError, ValueError):
        return 0.0
    return 1 - avail / total if total else 0.0


def default_max_memory(workers: int) -> int:
    """A worker's share of the memory a node may fill: 80 % of the machine's."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * _PAGE
    except (ValueError, OSError):
        return 0
    return int(total * 0.8 / max(workers, 1))
