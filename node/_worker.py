"""A worker process: runs jobs for its node, isolated from it.

Started as ``python -m mesh.node._worker FD`` with one end of a socketpair; speaks the
same frame codec as the network, without MACs (the pipe never leaves the node).
Blocking and single-threaded on purpose: a job that crashes or is killed takes
this process and nothing else. Results are flushed at least every few
milliseconds, and at once after any job that took that long.

Big arguments arrive as the node's shared memory blocks, mapped here; a block is
closed and reported back as soon as the arguments are unpickled unless something
made while unpickling still holds it (a NumPy array reading it in place), so the
node can receive a later argument into it. Big allocations come from a heap that
stays faulted in between jobs (see _keep_big_allocations).
"""

from __future__ import annotations

import contextlib
import io
import math
import mmap
import os
import select
import signal
import socket
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mesh.node._job_types import WORKER_FUNCTIONS
from mesh.node._proc import become_subreaper, end_descendants, has_children

from mesh._frames import FrameCodec
from mesh._joblib_hook import install as install_joblib_hook
from mesh._protocol import (
    DONE,
    ERROR,
    ErrorInfo,
    JobOutput,
    Payload,
    Ran,
    RanItem,
    Run,
    WorkerReady,
    open_shared_file,
    shared_path,
)
from mesh._serialize import dumps_payload, load_function, loads, pack_exception
from mesh.errors import ErrorKind

FLUSH_EVERY_S = 0.005
OUTPUT_EVERY_S, OUTPUT_SENDS = 0.25, 2  # a running job's output reaches the node this often
# Processes a job leaves running get SIGTERM when it returns, then SIGKILL after this.
CHILD_GRACE_S = 1.0
_PR_SET_PDEATHSIG = 1
CAPTURE_BYTES = 64 * 1024
# glibc's mallopt parameters, and how much freed memory the heap may keep: half the
# node's --max-memory (at most 1 GiB), 256 MiB without one; all of it goes back after
# IDLE_TRIM_S without a job.
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
KEEP_NO_LIMIT = 256 << 20
IDLE_TRIM_S = 1.0
TRIM_CHECK_S = 0.002
_PAGE = os.sysconf("SC_PAGE_SIZE")


class _Capture(io.StringIO):
    """stdout/stderr of one job; keeps the last CAPTURE_BYTES characters. ``on_write``
    hears of each write, so the node can show the text while the job runs."""

    def __init__(self, on_write: Callable[[], None] | None = None) -> None:
        super().__init__()
        self._on_write = on_write

    def write(self, s: str) -> int:
        n = super().write(s)
        if self._on_write is not None:
            self._on_write()
        return n

    def tail(self) -> str:
        text = self.getvalue()
        return text[-CAPTURE_BYTES:] if len(text) > CAPTURE_BYTES else text


class _OutputStream:
    """Sends a running job's output tail to the node as it grows, at most OUTPUT_SENDS
    times per OUTPUT_EVERY_S (print's text and its newline are two writes: both go), so
    a chatty job costs the pipe little. Text held back by that limit goes by a one-shot
    timer at the window's end; ``close`` (the job ended: Ran carries the text) stops it."""

    def __init__(self, worker: Worker, jid: str) -> None:
        self.worker, self.jid = worker, jid
        self.out = _Capture(self.wrote)
        self.err = _Capture(self.wrote)
        self.window_s = 0.0
        self.sends = 0
        self.timer: threading.Timer | None = None
        self.closed = False

    def reuse(self, jid: str) -> bool:
        """Take the next job, if this one's output stayed empty (the common case for
        short jobs: two captures fewer per job); False if it wrote (a fresh stream then,
        so text a thread of the last job writes late never lands in the next job's)."""
        if self.timer is not None or self.out.tell() or self.err.tell():
            return False
        self.jid, self.window_s, self.sends, self.closed = jid, 0.0, 0, False
        return True

    def wrote(self) -> None:
        now = time.monotonic()
        if now - self.window_s >= OUTPUT_EVERY_S:
            self.window_s, self.sends = now, 0
        if self.sends < OUTPUT_SENDS:
            self.sends += 1
            self.send()
        elif self.timer is None and not self.closed:
            self.timer = threading.Timer(self.window_s + OUTPUT_EVERY_S - now, self.late)
            self.timer.daemon = True
            self.timer.start()

    def late(self) -> None:
        self.timer = None
        self.window_s, self.sends = time.monotonic(), 1
        if not self.closed:
            self.send()

    def send(self) -> None:
        with contextlib.suppress(OSError):  # the node went away: the main loop sees it
            self.worker.send(JobOutput(self.jid, self.out.tail(), self.err.tail()))

    def close(self) -> None:
        self.closed = True
        if self.timer is not None:
            self.timer.cancel()


def _keep_big_allocations(keep_bytes: int) -> Callable[[], object] | None:
    """Serve big allocations from the heap, and keep up to ``keep_bytes`` of freed memory
    there (glibc only; elsewhere nothing changes). glibc maps every allocation over
    32 MB afresh, so each 50 MB ``bytes`` argument cost 12,000 page faults (28 ms of a
    39 ms copy here); from a warm heap it costs the copy. Returns ``malloc_trim(0)``,
    which gives all free memory back, or None."""
    try:
        import ctypes

        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - glibc only: mallopt means its own there
        mallopt, trim = libc.mallopt, libc.malloc_trim
    except (OSError, AttributeError):
        return None
    if not mallopt(_M_TRIM_THRESHOLD, min(keep_bytes, (1 << 31) - 1)):
        return None
    if not mallopt(_M_MMAP_MAX, 0):
        return None
    return lambda: trim(0)


def _refs(blocks: list[mmap.mmap]) -> list[int]:
    """Reference counts, compared before and after unpickling over these blocks."""
    return [sys.getrefcount(b) for b in blocks]


class Worker:
    def __init__(self, sock: socket.socket, max_memory: int = 0) -> None:
        self.sock = sock
        self.codec = FrameCodec(authenticated=False, open_shared=self._open_block)
        self.functions: OrderedDict[bytes, Callable[..., Any] | ErrorInfo] = OrderedDict()
        self.out: list[RanItem] = []
        self.last_flush = time.monotonic()
        # The node's shared blocks mapped for the current Run: id -> (block, path); and
        # the paths of those closed since the last report.
        self.blocks: dict[int, tuple[mmap.mmap, str]] = {}
        self.released: list[str] = []
        # Freed memory the heap keeps: trimmed after a job when resident memory passes
        # half the node's limit (its memory watch must not see memory merely kept free),
        # and after IDLE_TRIM_S without work.
        self.keep_bytes = min(max_memory // 2, 1 << 30) if max_memory > 0 else KEEP_NO_LIMIT
        self.trim = _keep_big_allocations(self.keep_bytes)
        self.heap_dirty = False
        self._statm = os.open("/proc/self/statm", os.O_RDONLY) if self.trim else -1
        self._statm_at = -math.inf
        # What a job may change and the next job must not inherit: the working directory
        # and the environment (the bytes dict behind os.environ and os.environb, compared
        # in well under a microsecond where dict(os.environ) takes tens).
        self.home = os.getcwd()
        self._environ: dict[bytes, bytes] = vars(os.environb)["_data"]
        self._environ_before = dict(self._environ)
        self._send_lock = threading.Lock()

    def send(self, msg: Ran | WorkerReady | JobOutput) -> None:
        with self._send_lock:  # a job's own threads may print (JobOutput) meanwhile
            for chunk in self.codec.send(msg):
                self.sock.sendall(chunk)

    def flush(self) -> None:
        if self.out or self.released:
            self.send(Ran(tuple(self.out), tuple(self.released)))
            self.out = []
            self.released = []
        self.last_flush = time.monotonic()

    def _open_block(self, data: bytes) -> mmap.mmap:
        block = open_shared_file(data)
        self.blocks[id(block)] = (block, shared_path(data))
        return block

    def _blocks_in(self, payload: Payload | bytes) -> list[mmap.mmap]:
        parts = payload if type(payload) is tuple else (payload,)
        return [p for p in parts if id(p) in self.blocks]  # type: ignore[misc]

    def _release(self, blocks: list[mmap.mmap], refs: list[int] | None = None) -> None:
        """Close these blocks and report them, unless unpickling left anything holding
        one: a new reference (``refs``: the counts before) or an export (BufferError)."""
        now = _refs(blocks)
        for i, block in enumerate(blocks):
            _, path = self.blocks.pop(id(block))
            if refs is not None and now[i] != refs[i]:
                continue  # a reconstructor kept the buffer object itself
            try:
                block.close()
            except BufferError:
                continue  # read in place: the node removes the block when the job ends
            self.released.append(path)

    def _after_job(self) -> None:
        """Give freed memory back if the heap keeps more than its share of the limit."""
        if self.trim is None:
            return
        self.heap_dirty = True
        # Reading statm costs more than a tiny job: look at most every TRIM_CHECK_S (a
        # job cannot fault in enough memory to matter much faster than that).
        now = time.monotonic()
        if now - self._statm_at < TRIM_CHECK_S:
            return
        self._statm_at = now
        if int(os.pread(self._statm, 128, 0).split()[1]) * _PAGE > self.keep_bytes:
            self.trim()

    def _reset(self) -> None:
        """Undo what the job left behind, before the next job: the processes it started
        (subprocesses, daemons: this worker is their subreaper), its working directory
        and its changes to the environment."""
        if has_children():
            end_descendants(CHILD_GRACE_S)
        try:
            moved = os.getcwd() != self.home
        except OSError:  # the job removed the directory it moved to
            moved = True
        if moved:
            try:
                os.chdir(self.home)
            except OSError:
                os.chdir("/")  # the node's own directory is gone: somewhere that exists
        if self._environ != self._environ_before:
            for key in [k for k in self._environ if k not in self._environ_before]:
                del os.environb[key]
            for key, value in self._environ_before.items():
                if self._environ.get(key) != value:
                    os.environb[key] = value

    def function(self, run: Run) -> Callable[..., Any] | ErrorInfo:
        fn = self.functions.get(run.fhash)
        if fn is None:
            try:
                fn = load_function(run.fblob)  # a big one is in a block: closed after the run
            except BaseException as exc:  # a missing module, or a class that moved
                fn = pack_exception(exc)[1]
                if fn.kind != ErrorKind.MISSING_MODULE:
                    fn = ErrorInfo(ErrorKind.RAISED, fn.type_name,
                                   f"cannot unpickle {run.fname}: {fn.message}", fn.traceback,
                                   fn.module)  # fmt: skip
            self.functions[run.fhash] = fn
            if len(self.functions) > WORKER_FUNCTIONS:
                self.functions.popitem(last=False)
        else:
            self.functions.move_to_end(run.fhash)
        return fn

    def run(self, run: Run) -> None:
        fn = self.function(run)
        real_out, real_err = sys.stdout, sys.stderr
        stream: _OutputStream | None = None
        for jid, args_blob in run.items:
            started = time.time()
            cpu0 = time.process_time()
            if stream is None or not stream.reuse(jid):
                stream = _OutputStream(self, jid)
            out, err = stream.out, stream.err
            blob: Payload = b""
            error: ErrorInfo | None = None
            if isinstance(fn, ErrorInfo):
                error = fn
            else:
                sys.stdout, sys.stderr = out, err
                blocks = self._blocks_in(args_blob)
                try:
                    refs = _refs(blocks)
                    try:
                        args = loads(args_blob)  # big buffers: read in place, see dumps_payload
                    finally:
                        if blocks:
                            self._release(blocks, refs)
                    value = fn(*args)
                except BaseException as exc:
                    blob, error = pack_exception(exc, skip_frames=1)
                else:
                    try:
                        blob = dumps_payload(value, f"the result of {run.fname}")
                    except Exception as exc:
                        error = ErrorInfo(ErrorKind.RAISED, "mesh.errors.SerializationError",
                                          str(exc))  # fmt: skip
                finally:
                    sys.stdout, sys.stderr = real_out, real_err
                    stream.close()
            finished = time.time()
            self.out.append(
                RanItem(
                    jid,
                    DONE if error is None else ERROR,
                    blob,
                    error,
                    started,
                    finished,
                    time.process_time() - cpu0,
                    out.tail(),
                    err.tail(),
                )
            )
            self._after_job()
            self._reset()
            if time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
                self.flush()
        if self.blocks:  # the function's blob, or arguments of a function that failed to load
            self._release([block for block, _ in list(self.blocks.values())])
        self.flush()

    def serve(self) -> None:
        self.send(WorkerReady(os.getpid()))
        buf = bytearray(1 << 20)  # reused: no fresh pages per read
        view = memoryview(buf)
        poll = select.poll()
        poll.register(self.sock, select.POLLIN)
        while True:
            idle = self.heap_dirty and not poll.poll(IDLE_TRIM_S * 1000)
            if idle and self.trim is not None:
                self.trim()  # no job for a while: give back the memory the heap kept
                self.heap_dirty = False
                continue
            n = self.sock.recv_into(buf)
            if not n:
                return
            for msg in self.codec.receive(view[:n]):
                if isinstance(msg, Run):
                    self.run(msg)
                del msg  # nor keep the last Run (and what holds its blocks) while idle


def _die_with_node(node_pid: int) -> None:
    """Have the kernel SIGKILL this worker when its node dies (Linux), even mid-job."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return  # not Linux: the worker still exits at its next read of the closed pipe
    if os.getppid() != node_pid:  # the node died before we asked
        os._exit(1)


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the node decides when we stop
    become_subreaper()  # a job's orphaned processes come to us, to be ended after it
    if len(sys.argv) > 2:
        _die_with_node(int(sys.argv[2]))
    sock = socket.socket(fileno=int(sys.argv[1]))
    max_memory = int(sys.argv[3]) if len(sys.argv) > 3 else 0
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    install_joblib_hook()  # a job may name joblib's backend "mesh" without importing it
    try:
        Worker(sock, max_memory).serve()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the node is gone; so are we


if __name__ == "__main__":
    main()
