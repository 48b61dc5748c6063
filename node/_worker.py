"""A worker process: runs jobs for its node, isolated from it.

Started as ``python -m node._worker FD`` with one end of a socketpair; speaks the
same frame codec as the network, without MACs (the pipe never leaves the node).
Blocking and single-threaded on purpose: a job that crashes or is killed takes
this process and nothing else. Results are flushed at least every few
milliseconds, and at once after any job that took that long.
"""

from __future__ import annotations

import io
import os
import signal
import socket
import sys
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from mesh._frames import FrameCodec
from mesh._protocol import DONE, ERROR, ErrorInfo, Payload, Ran, RanItem, Run, WorkerReady
from mesh._serialize import dumps_payload, load_function, loads, pack_exception
from node._jobs import WORKER_FUNCTIONS

FLUSH_EVERY_S = 0.005
_PR_SET_PDEATHSIG = 1
CAPTURE_BYTES = 64 * 1024


class _Capture(io.StringIO):
    """stdout/stderr of one job; keeps the last CAPTURE_BYTES characters."""

    def tail(self) -> str:
        text = self.getvalue()
        return text[-CAPTURE_BYTES:] if len(text) > CAPTURE_BYTES else text


class Worker:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.codec = FrameCodec(authenticated=False, open_shared=True)
        self.functions: OrderedDict[bytes, Callable[..., Any] | ErrorInfo] = OrderedDict()
        self.out: list[RanItem] = []
        self.last_flush = time.monotonic()

    def send(self, msg: Ran | WorkerReady) -> None:
        for chunk in self.codec.send(msg):
            self.sock.sendall(chunk)

    def flush(self) -> None:
        if self.out:
            self.send(Ran(tuple(self.out)))
            self.out = []
        self.last_flush = time.monotonic()

    def function(self, run: Run) -> Callable[..., Any] | ErrorInfo:
        fn = self.functions.get(run.fhash)
        if fn is None:
            try:
                fn = load_function(run.fblob)
            except BaseException as exc:  # a missing module, or a class that moved
                fn = pack_exception(exc)[1]
                if fn[0] != "missing-module":
                    fn = ("raised", fn[1], f"cannot unpickle {run.fname}: {fn[2]}", fn[3], fn[4])
            self.functions[run.fhash] = fn
            if len(self.functions) > WORKER_FUNCTIONS:
                self.functions.popitem(last=False)
        else:
            self.functions.move_to_end(run.fhash)
        return fn

    def run(self, run: Run) -> None:
        fn = self.function(run)
        real_out, real_err = sys.stdout, sys.stderr
        for jid, args_blob in run.items:
            started = time.time()
            cpu0 = time.process_time()
            out = _Capture()
            err = _Capture()
            blob: Payload = b""
            error: ErrorInfo | None = None
            if isinstance(fn, tuple):
                error = fn
            else:
                sys.stdout, sys.stderr = out, err
                try:
                    args = loads(args_blob)  # big buffers: read in place, see dumps_payload
                    value = fn(*args)
                except BaseException as exc:
                    blob, error = pack_exception(exc, skip_frames=1)
                else:
                    try:
                        blob = dumps_payload(value, f"the result of {run.fname}")
                    except Exception as exc:
                        error = ("raised", "mesh.errors.SerializationError", str(exc), "", "")
                finally:
                    sys.stdout, sys.stderr = real_out, real_err
            finished = time.time()
            self.out.append(
                (
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
            if time.monotonic() - self.last_flush >= FLUSH_EVERY_S:
                self.flush()
        self.flush()

    def serve(self) -> None:
        self.send(WorkerReady(os.getpid()))
        buf = bytearray(1 << 20)  # reused: no fresh pages per read
        view = memoryview(buf)
        while True:
            n = self.sock.recv_into(buf)
            if not n:
                return
            for msg in self.codec.receive(view[:n]):
                if isinstance(msg, Run):
                    self.run(msg)


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
    if len(sys.argv) > 2:
        _die_with_node(int(sys.argv[2]))
    sock = socket.socket(fileno=int(sys.argv[1]))
    sys.stdin = open(os.devnull)  # noqa: SIM115 - lives as long as the process
    try:
        Worker(sock).serve()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the node is gone; so are we


if __name__ == "__main__":
    main()
