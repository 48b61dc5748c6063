"""The embedded local mesh: real ``mesh-node`` processes on 127.0.0.1 (PiCloud's simulator).

Each node is a child process with a fresh secret, a temporary data dir and a port
the kernel picks; it stops by itself if this process dies.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import shutil
import signal
import subprocess
import tempfile
import time

from mesh._spawn import job_environment, module_command
from mesh.errors import MeshError

__all__ = ["LocalMesh"]

_LISTENING = re.compile(r"^mesh-node (\S+) listening on (\S+):(\d+)$")


class LocalMesh:
    def __init__(
        self, nodes: int = 2, workers: int | None = None, *, start_timeout_s: float = 30.0
    ) -> None:
        if nodes < 1:
            raise ValueError("a local mesh needs at least one node")
        cores = os.cpu_count() or 1
        self.nodes = nodes
        # Share the machine's cores between the nodes instead of oversubscribing them.
        self.workers = workers if workers is not None else max(1, cores // nodes)
        self.secret = secrets.token_hex(32)
        self.addresses: list[str] = []
        self._procs: list[subprocess.Popen[bytes]] = []
        self._dir: str | None = None
        self._timeout_s = start_timeout_s

    def start(self) -> list[str]:
        """Start the nodes and return their addresses once all listen."""
        self._dir = tempfile.mkdtemp(prefix="lanmesh-local-")
        # The secret goes in a 0600 file, never the nodes' environment: whatever a
        # process's environment holds, every process it starts inherits.
        secret_file = os.path.join(self._dir, "secret")
        fd = os.open(secret_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(self.secret + "\n")
        env = job_environment()
        env.pop("MESH_PEERS", None)  # a local mesh joins no other nodes
        try:
            for i in range(1, self.nodes + 1):
                self._procs.append(
                    subprocess.Popen(
                        module_command("mesh.node", "--host", "127.0.0.1", "--port", "0",
                         "--name", f"local-{i}", "--workers", str(self.workers),
                         "--data-dir", os.path.join(self._dir, f"node-{i}"),
                         "--parent-pid", str(os.getpid()), "--no-advertise",
                         "--secret-file", secret_file,
                         "--grace", "0"),  # closing a local mesh ends its jobs at once
                        env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                    )
                )  # fmt: skip
            for proc in self._procs:
                self.addresses.append(self._await_listening(proc))
        except BaseException:
            self.close()
            raise
        return self.addresses

    def _await_listening(self, proc: subprocess.Popen[bytes]) -> str:
        assert proc.stdout is not None
        deadline = time.monotonic() + self._timeout_s
        line = b""
        while not line.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None:
                raise MeshError(
                    f"local mesh node (pid {proc.pid}) did not start: "
                    + ("timed out" if proc.poll() is None else f"exit code {proc.returncode}")
                )
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if ready:
                chunk = os.read(proc.stdout.fileno(), 1)
                if not chunk:
                    continue
                line += chunk
        m = _LISTENING.match(line.decode().strip())
        if not m:
            raise MeshError(f"local mesh node printed {line!r}, expected its listening line")
        return f"{m.group(2)}:{m.group(3)}"

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._procs]

    def close(self) -> None:
        """Stop every node (SIGTERM, then SIGKILL) and remove their data."""
        for p in self._procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 8.0
        for p in self._procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()
        self._procs.clear()
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
