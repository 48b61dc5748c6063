"""Job functions and small waiting helpers shared by the integration tests.

Jobs that must be *running* while a test looks at them wait on a gate file the test
creates, instead of sleeping for a fixed time: the test decides when they finish.
Every gate has a cap, so a test that fails half-way never leaves a job blocked for long.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

GATE_CAP_S = 30.0


def gated(gate: str, value: Any, cap_s: float = GATE_CAP_S) -> Any:
    """Return ``value`` once the file ``gate`` exists (a job the test releases)."""
    deadline = time.monotonic() + cap_s
    while not os.path.exists(gate):
        if time.monotonic() > deadline:
            raise TimeoutError(f"gate {gate} never opened")
        time.sleep(0.01)
    return value


def started_then_gated(started: str, gate: str, value: Any, cap_s: float = GATE_CAP_S) -> Any:
    """Create ``started`` (so the test knows the job is running), then wait for ``gate``."""
    Path(started).touch()
    return gated(gate, value, cap_s)


def touch(path: str) -> str:
    """A job with a visible side effect: create ``path``."""
    Path(path).touch()
    return path


def append_line(path: str, line: str) -> int:
    """A job with a countable side effect: append a line to ``path``."""
    with open(path, "a") as f:
        f.write(line + "\n")
    return len(line)


def square(x: int) -> int:
    return x * x


def wait_until(predicate: Callable[[], Any], timeout_s: float = 10.0, what: str = "") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what or predicate}")
        time.sleep(0.02)


def run_cli(capsys: Any, *args: str) -> tuple[int, str, str]:
    """Run ``mesh ARGS`` in this process: (exit code, stdout, stderr)."""
    import pytest
    from mesh.client._cli import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out, err = capsys.readouterr()
    code = exit_.value.code
    return (code if isinstance(code, int) else 1), out, err


def table(out: str) -> list[list[str]]:
    """A CLI table as rows of whitespace-separated cells."""
    return [line.split() for line in out.strip().splitlines()]


def job_ids(client: Any) -> list[str]:
    """Every job id a mesh.Client (or AsyncClient) has handed out, oldest first."""
    return client.ledger.ids()


def blob_path(node: Any, h: str) -> Path:
    """Where ``node`` (a conftest NodeProc) keeps the blob of hash ``h`` on its disk."""
    return Path(node.data_dir) / "blobs" / h[:2] / h
