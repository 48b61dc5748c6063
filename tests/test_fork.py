"""A process forked after using mesh (multiprocessing's 'fork', joblib in a Pool) works.

The child of a fork inherits a client whose loop thread exists only in the parent:
its calls used to wait forever. Now the module-level calls make the child a client of
its own on the parent's nodes, an explicit ``Client`` raises at once saying what to
do, and nothing the child does (exiting included) stops the parent's local mesh.

Each case runs as its own script, a real process that forks real children, against
real nodes; a hang is caught by the script's own guard and fails the test.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

if not hasattr(os, "fork"):
    pytest.skip("needs os.fork", allow_module_level=True)

COMMON = textwrap.dedent(
    """
    import multiprocessing as mp
    import os
    import sys

    import mesh

    HANG_GUARD_S = 90  # a child that has not answered by then hung: the bug itself

    def square(x):
        return x * x

    def in_fork_child(target, *args):
        '''Run target(*args) in a multiprocessing 'fork' child; what it returned or raised.'''
        ctx = mp.get_context("fork")
        mine, theirs = ctx.Pipe()

        def child():
            try:
                theirs.send(("ok", target(*args)))
            except BaseException as exc:
                theirs.send(("raised", f"{type(exc).__name__}: {exc}"))

        proc = ctx.Process(target=child)
        proc.start()
        try:
            if not mine.poll(HANG_GUARD_S):
                return ("hung", proc.pid)
            return mine.recv()
        finally:
            if proc.is_alive() and not mine.poll(0):
                proc.kill()
            proc.join()
    """
)


def run_script(tmp_path: Path, body: str, env: dict[str, str]) -> list[str]:
    """Run COMMON + body as a script; its stdout lines. Its process group is killed
    if it outlives pytest's patience, so no forked child is left behind."""
    script = tmp_path / "forking.py"
    script.write_text(COMMON + textwrap.dedent(body))
    proc = subprocess.Popen(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=110)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the forking script hung:\n{out}\n{err}")
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 0, out + err
    return out.splitlines()


def test_a_fork_child_uses_the_default_client_of_its_own(nodes, secret, tmp_path):
    pytest.importorskip("joblib")
    lines = run_script(
        tmp_path,
        """
        def work(parent_jid):
            import joblib
            import mesh.joblib  # the backend "mesh", on the default client

            with joblib.parallel_config(backend="mesh"):
                through_joblib = joblib.Parallel(n_jobs=2)(
                    joblib.delayed(square)(x) for x in (4, 5)
                )
            return [
                mesh.result(mesh.call(square, 7), timeout=60),
                mesh.result(mesh.map(square, [1, 2, 3]), timeout=60),
                mesh.result(parent_jid, timeout=60),  # a job the parent submitted
                mesh.is_local(),
                through_joblib,
            ]

        jid = mesh.call(square, 3)  # the parent's default client, on MESH_PEERS
        print("parent", mesh.result(jid, timeout=60))
        print("child", in_fork_child(work, jid))
        print("parent again", mesh.result(mesh.call(square, 4), timeout=60))
        """,
        {"MESH_PEERS": ",".join(n.address for n in nodes), "MESH_SECRET": secret},
    )
    assert lines == [
        "parent 9",
        "child ('ok', [49, [1, 4, 9], 9, False, [16, 25]])",
        "parent again 16",
    ]


def test_an_explicit_client_in_a_fork_child_raises_at_once_saying_what_to_do(
    nodes, secret, tmp_path
):
    lines = run_script(
        tmp_path,
        f"""
        client = mesh.Client({[n.address for n in nodes]!r}, {secret!r})
        jid = client.call(square, 5)
        print("parent", client.result(jid, timeout=60))
        pending = client.call(square, 6)  # still known to the client: a wait used to hang

        def uses(what):
            return what()

        print("call", *in_fork_child(uses, lambda: client.call(square, 2)), sep=" | ")
        print("result", *in_fork_child(uses, lambda: client.result(pending, timeout=60)), sep=" | ")
        print("status", *in_fork_child(uses, lambda: client.status(jid)), sep=" | ")

        def cloned():
            with client.clone() as mine:
                return mine.result(mine.call(square, 8), timeout=60), mine.result(jid)

        print("clone", in_fork_child(cloned))
        print("parent again", client.result(client.call(square, 9), timeout=60))
        client.close()
        """,
        {},
    )
    assert lines[0] == "parent 25"
    for line, what in zip(lines[1:4], ("call", "result", "status"), strict=True):
        prefix = f"{what} | raised | ConnectionClosed: this mesh.Client was made in process "
        assert line.startswith(prefix), line
        assert "is a fork of it" in line and "client.clone()" in line, line
    assert lines[4:] == ["clone ('ok', (64, 25))", "parent again 81"]


def test_a_fork_child_exiting_leaves_the_parents_local_mesh_running(tmp_path):
    """os.fork and a normal exit, so the child runs the atexit handlers that close
    clients: they must not stop the nodes the parent owns, whether the child used the
    mesh or not."""
    lines = run_script(
        tmp_path,
        """
        def fork_and_exit(use_mesh):
            read_end, write_end = os.pipe()
            pid = os.fork()
            if pid == 0:  # the child: the ordinary way out, atexit and all
                os.close(read_end)
                if use_mesh:
                    answer = f"{mesh.result(mesh.call(square, 3), timeout=60)} {mesh.is_local()}"
                    os.write(write_end, answer.encode())
                sys.exit(0)
            os.close(write_end)
            with os.fdopen(read_end) as f:
                said = f.read()
            _, status = os.waitpid(pid, 0)
            return said, os.waitstatus_to_exitcode(status)

        mesh.local(nodes=1, workers=1)
        print("parent", mesh.result(mesh.call(square, 2), timeout=60), mesh.is_local())
        print("idle child", fork_and_exit(False))
        print("parent again", mesh.result(mesh.call(square, 4), timeout=60))
        print("busy child", fork_and_exit(True))
        print("parent again", mesh.result(mesh.call(square, 5), timeout=60), mesh.is_local())
        mesh.close()
        """,
        {},
    )
    assert lines == [
        "parent 4 True",
        "idle child ('', 0)",
        "parent again 16",
        "busy child ('9 True', 0)",
        "parent again 25 True",
    ]
