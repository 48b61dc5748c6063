"""Scripts, REPLs and notebooks: exiting, Ctrl-C, and functions typed in at a prompt.

Each test runs a real Python process against real nodes. A process that should end
gets a generous deadline: it is a guard against hanging, not a speed test.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import wait_until

import mesh

EXIT_GUARD_S = 5.0  # issue 8: a script that exits without waiting ends within 5 s
HERE = Path(__file__).parent


_spawned: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _end_spawned() -> Iterator[None]:
    """Scripts a test started are ended with it, also when it fails."""
    yield
    while _spawned:
        proc = _spawned.pop()
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(HERE), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, *args, "-c", textwrap.dedent(code)] if args != ("-i",) else
        [sys.executable, "-i", "-q"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=env,
    )  # fmt: skip
    _spawned.append(proc)
    return proc


def read_marker(proc: subprocess.Popen[str], marker: str) -> str:
    """The first stdout line starting with ``marker`` (its rest), or fail with stderr."""
    assert proc.stdout is not None
    for line in proc.stdout:
        if line.startswith(marker):
            return line[len(marker) :].strip()
    proc.wait(10)
    raise AssertionError(
        f"no {marker!r} line; stderr:\n{proc.stderr.read() if proc.stderr else ''}"
    )


def finish(proc: subprocess.Popen[str], timeout_s: float) -> tuple[int, str]:
    """Wait for the process to end (kill it and fail if it hangs): (returncode, stderr)."""
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"process still running after {timeout_s} s; stderr:\n{err}") from None
    return proc.returncode, err


def test_a_script_that_starts_jobs_and_exits_without_waiting_ends_at_once(nodes, secret):
    proc = spawn(f"""
        import json, time, mesh

        def nap(s):
            time.sleep(s)
            return s

        mesh.connect({[n.address for n in nodes]!r}, {secret!r})
        jids = mesh.map(nap, [60] * 6)                       # more than the 4 workers
        own = mesh.Client({[n.address for n in nodes]!r}, {secret!r})   # never closed
        jids.append(own.call(nap, 60))
        ex = mesh.Executor(client=own)                      # never shut down
        jids += [ex.submit(nap, 60).jid for _ in range(2)]
        print("SUBMITTED", json.dumps(jids), flush=True)
    """)
    jids = json.loads(read_marker(proc, "SUBMITTED"))
    code, err = finish(proc, EXIT_GUARD_S)
    assert code == 0, err
    assert "Traceback" not in err and "Exception" not in err, err
    # the jobs were handed over before the script ended, and outlive it
    with mesh.Client([n.address for n in nodes], secret) as c:
        wait_until(lambda: set(c.status(jids)) <= {"queued", "processing"}, what="jobs known")
        c.kill(jids)


def test_a_script_on_a_local_mesh_exits_and_stops_its_nodes():
    proc = spawn("""
        import os, time, mesh

        def nap(s):
            time.sleep(s)
            return s

        c = mesh.local(nodes=2, workers=2)
        jids = mesh.map(nap, [60] * 3)
        while mesh.status(jids) != ["processing"] * 3:
            time.sleep(0.05)
        print("NODES", *c._local.pids, flush=True)
    """)
    pids = [int(p) for p in read_marker(proc, "NODES").split()]
    code, err = finish(proc, EXIT_GUARD_S + 10)  # stopping nodes may take their kill grace
    assert code == 0, err
    for pid in pids:
        wait_until(lambda pid=pid: not _alive(pid), timeout_s=10, what=f"local node {pid} to stop")


def _alive(pid: int) -> bool:
    from conftest import alive

    return alive(pid)


@pytest.mark.parametrize("wait", ["result", "iresult", "join", "future", "kill_on_cancel"])
def test_ctrl_c_while_waiting_stops_the_wait_and_says_how_to_kill(nodes, secret, tmp_path, wait):
    gate = tmp_path / "gate"
    # Everything the wait needs is set up before the marker prints, so the signal
    # always lands in the wait itself (a future's submit starts the executor's thread).
    setup, waiting = {
        "result": ("pass", "mesh.result(jids)"),
        "iresult": ("pass", "list(mesh.iresult(jids))"),
        "join": ("pass", "mesh.join(jids)"),
        "future": ("f = mesh.Executor().submit(gated, GATE, 0); jids.append(f.jid)", "f.result()"),
        "kill_on_cancel": ("pass", "mesh.default_client().result(jids, kill_on_cancel=True)"),
    }[wait]
    # A terminal gives a script Python's Ctrl-C handler; a runner that started the tests
    # in the background may hand SIGINT down ignored, so the script asks for it itself.
    proc = spawn(f"""
        import json, signal, mesh
        signal.signal(signal.SIGINT, signal.default_int_handler)
        from _helpers import gated
        GATE = {str(gate)!r}
        mesh.connect({[n.address for n in nodes]!r}, {secret!r})
        jids = mesh.map(gated, [GATE] * 3, range(3))
        {setup}
        print("WAITING", json.dumps(jids), flush=True)
        {waiting}
    """)
    jids = json.loads(read_marker(proc, "WAITING"))
    with mesh.Client([n.address for n in nodes], secret) as c:

        def placed() -> bool:
            """Every job is on a node, queued or running (a busy node may queue one)."""
            try:
                return all(s in ("queued", "processing") for s in c.status(jids))
            except mesh.UnknownJob:  # the script's map has not reached the nodes yet
                return False

        wait_until(placed, timeout_s=30, what="jobs to reach the nodes")
        proc.send_signal(signal.SIGINT)
        code, err = finish(proc, 10)
        assert code != 0
        last = err.strip().splitlines()[-1]
        assert last.startswith("KeyboardInterrupt: stopped waiting"), err
        if wait == "future":
            assert "future.cancel()" in last
        elif wait == "kill_on_cancel":  # the wait's own jobs are killed, as asked
            assert last.endswith(f"killing the 3 jobs left ({' '.join(jids)})"), err
            wait_until(lambda: c.status(jids) == ["killed"] * 3, what="the jobs to be killed")
            return
        else:
            assert "3 jobs still running" in last and "mesh.kill(jids)" in last
            assert f"mesh kill {' '.join(jids)}" in last
        # stopping the wait did not stop the jobs
        assert all(s in ("queued", "processing") for s in c.status(jids))
        gate.touch()
        assert c.result(jids, timeout=30) == [0, 1, 2] + ([0] if wait == "future" else [])


def test_functions_typed_at_a_prompt_lambdas_and_closures_run_on_nodes(nodes, secret):
    """As in IPython or a notebook: nothing the nodes could import by name."""
    proc = spawn("", "-i")
    session = textwrap.dedent(f"""
        import mesh
        c = mesh.connect({[n.address for n in nodes]!r}, {secret!r})
        def cube(x):
            return x ** 3

        def make_scaler(k):
            def scale(x):
                return cube(x) * k
            return scale

        scale = make_scaler(10)
        print("RESULTS", mesh.result([mesh.call(cube, 2), mesh.call(lambda x: x + 1, 1), mesh.call(scale, 2)]))
        print("MAPPED", list(mesh.Executor().map(lambda x, y: x * y, [1, 2, 3], [4, 5, 6], chunksize=2)))
    """)  # fmt: skip
    out, err = proc.communicate(session, timeout=60)  # EOF ends the session
    assert proc.returncode == 0, err
    assert "RESULTS [8, 2, 80]" in out, err
    assert "MAPPED [4, 10, 18]" in out, err
