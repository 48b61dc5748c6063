"""A worker's life: what a job may see and what it may leave behind, with real nodes.

The secret never reaches a job's environment (issue 18); a job's children, working
directory and environment changes end with the job; a worker that cannot start is
retried with backoff and, while it cannot, the node fails its jobs with the cause
(issue 14).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from _helpers import gated, wait_until
from conftest import LISTENING, alive, start_node
from mesh.node._job_types import Deliver, Dispatch, Func
from mesh.node._jobs import JobTable

import mesh
from mesh._protocol import ERROR, QUEUED, ErrorInfo
from mesh.errors import ErrorKind, WorkerStartFailed


def environment_seen_by_job() -> dict[str, object]:
    """What a job can read of the credentials: its own environment, a child's, its node's."""
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    try:
        with open(f"/proc/{os.getppid()}/environ", "rb") as f:
            node_env = f.read().split(b"\0")
    except PermissionError:
        node_env = [b"(unreadable)"]
    return {
        "own": {k: v for k, v in os.environ.items() if k.startswith("MESH_")},
        "child": [line for line in child.splitlines() if line.startswith("MESH_SECRET")],
        "node_has_secret": any(e.startswith(b"MESH_SECRET") for e in node_env),
    }


# ---- the secret never reaches a job ----


def test_secret_of_a_node_started_with_mesh_secret_never_reaches_its_jobs(node_factory, secret):
    node = node_factory(name="sec", workers=1, env={"MESH_SECRET_FILE": "/nonexistent/secret"})
    with mesh.Client([node.address], secret) as c:
        seen = c.result(c.call(environment_seen_by_job), timeout=30)
    assert "MESH_SECRET" not in seen["own"] and "MESH_SECRET_FILE" not in seen["own"]
    assert "MESH_NODE_FILES" in seen["own"]  # what jobs need still reaches them
    assert seen["child"] == []


def node_command_of_another_user(folder: Path) -> tuple[list[str], dict[str, str]]:
    """How to start ``python -m mesh.node`` as a user whose processes the tests cannot
    read otherwise: this user, unless the tests run as root (root reads every process's
    /proc files); then ``nobody``, with the system's Python of the same minor version
    (the venv's lies under root's home) and lanmesh laid out in ``folder``."""
    if os.geteuid() != 0:
        return [sys.executable, "-P", "-m", "mesh.node"], {}
    system = f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}"
    if shutil.which("setpriv") is None or not os.path.exists(system):
        pytest.skip(f"running as root without setpriv or {system}: no other user to run as")
    root = Path(__file__).resolve().parent.parent
    pkg = folder / "mesh"
    pkg.mkdir()
    for f in (root / "mesh").glob("*.py"):
        (pkg / f.name).symlink_to(f)
    for sub in ("node", "client"):
        (pkg / sub).symlink_to(root / sub)
    site = next(p for p in sys.path if p.endswith("site-packages"))
    command = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups",
               system, "-P", "-m", "mesh.node"]  # fmt: skip
    return command, {"PYTHONPATH": f"{folder}:{site}"}


def test_secret_in_the_environment_a_node_started_with_is_out_of_its_jobs_reach(secret):
    """The README's own way, ``MESH_SECRET=... mesh-node``: the node's /proc environ
    still holds it, and its jobs (of its own user) must not be able to read it there."""
    with tempfile.TemporaryDirectory(prefix="lanmesh-test-") as holder:  # not under root's
        os.chmod(holder, 0o755)
        command, env = node_command_of_another_user(Path(holder))
        data = Path(holder) / "data"
        data.mkdir(mode=0o700)
        if os.geteuid() == 0:
            os.chown(data, pwd.getpwnam("nobody").pw_uid, -1)
        proc = subprocess.Popen(
            [*command, "--host", "127.0.0.1", "--port", "0", "--name", "other", "--workers",
             "1", "--data-dir", str(data), "--no-advertise", "--grace", "0"],
            cwd="/", stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env=dict(os.environ, MESH_SECRET=secret, **env),
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            m = LISTENING.match(proc.stdout.readline().decode().strip())
            assert m, "the node did not start"
            with mesh.Client([f"{m.group(2)}:{m.group(3)}"], secret) as c:
                seen = c.result(c.call(environment_seen_by_job), timeout=30)
        finally:
            proc.terminate()
            proc.wait(30)
            if proc.stdout is not None:
                proc.stdout.close()
    assert "MESH_SECRET" not in seen["own"]
    assert seen["child"] == []
    assert seen["node_has_secret"] is False


def test_secret_of_a_local_mesh_never_reaches_its_jobs(monkeypatch):
    monkeypatch.setenv("MESH_SECRET", "the user's own secret: " + "x" * 40)
    c = mesh.local(nodes=1, workers=1)
    try:
        seen = mesh.result(mesh.call(environment_seen_by_job), timeout=30)
        local_secret = c._local.secret if c._local is not None else ""  # type: ignore[attr-defined]
    finally:
        mesh.close()
    assert local_secret
    assert "MESH_SECRET" not in seen["own"] and "MESH_SECRET_FILE" not in seen["own"]
    assert seen["child"] == []
    assert seen["node_has_secret"] is False  # nor in the environment of its node


# ---- jobs that leave things behind ----


def gone(pid: int) -> bool:
    """The process has exited and been reaped (no zombie left either)."""
    return not os.path.exists(f"/proc/{pid}")


def start_sleeper() -> tuple[int, bool]:
    """A child the job does not wait for."""
    proc = subprocess.Popen(["sleep", "1000"])
    return proc.pid, alive(proc.pid)


def start_daemon() -> tuple[int, bool]:
    """A double-forked daemon in a session of its own: its parent (sh) exits at once."""
    out = subprocess.run(["sh", "-c", "setsid sleep 1000 >/dev/null 2>&1 & echo $!"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    pid = int(out)
    return pid, alive(pid)


def start_daemon_then_wait(pid_file: str, gate: str) -> int:
    """A daemon as above, its pid written to ``pid_file``; then block until ``gate``."""
    pid, _ = start_daemon()
    with open(pid_file + ".tmp", "w") as f:
        f.write(str(pid))
    os.rename(pid_file + ".tmp", pid_file)
    return int(gated(gate, pid))


def read_pid(path: str) -> int:
    with open(path) as f:
        return int(f.read())


@pytest.mark.parametrize("job", [start_sleeper, start_daemon], ids=["popen", "daemon"])
def test_processes_a_job_leaves_running_end_when_it_returns(node_factory, secret, job):
    node = node_factory(name="tidy", workers=1)
    with mesh.Client([node.address], secret) as c:
        pid, was_alive = c.result(c.call(job), timeout=30)
        assert was_alive  # running when the job returned
        wait_until(lambda: gone(pid), what=f"pid {pid} to be ended and reaped")
        assert c.result(c.call(int, "7"), timeout=30) == 7  # the worker carries on


def test_daemon_of_a_killed_job_ends_with_its_worker(node_factory, secret, tmp_path):
    node = node_factory(name="killed", workers=1)
    pid_file, gate = str(tmp_path / "pid"), str(tmp_path / "gate")
    with mesh.Client([node.address], secret) as c:
        jid = c.call(start_daemon_then_wait, pid_file, gate)
        wait_until(lambda: os.path.exists(pid_file), what="the daemon's pid")
        pid = read_pid(pid_file)
        assert alive(pid)
        c.kill(jid)
        wait_until(lambda: gone(pid), what=f"daemon {pid} to be ended and reaped")
        assert c.status(jid) == "killed"
        assert c.result(c.call(int, "8"), timeout=30) == 8


def test_daemon_of_a_running_job_ends_when_the_node_stops(node_factory, secret, tmp_path):
    node = node_factory(name="stopped", workers=1)
    pid_file, gate = str(tmp_path / "pid"), str(tmp_path / "gate")
    with mesh.Client([node.address], secret) as c:
        c.call(start_daemon_then_wait, pid_file, gate)
        wait_until(lambda: os.path.exists(pid_file), what="the daemon's pid")
        pid = read_pid(pid_file)
        assert alive(pid)
        node.stop()
    wait_until(lambda: not alive(pid), what=f"daemon {pid} to end with its node")


def move_and_change_environment(where: str) -> str:
    os.chdir(where)
    os.environ["LANMESH_TEST_LEAK"] = "leaked"
    os.environ["HOME"] = "/changed"
    del os.environ["MESH_NODE_FILES"]
    return os.getcwd()


def cwd_and_environment() -> tuple[str, str | None, str | None, bool]:
    return (os.getcwd(), os.environ.get("LANMESH_TEST_LEAK"), os.environ.get("HOME"),
            "MESH_NODE_FILES" in os.environ)  # fmt: skip


def test_cwd_and_environment_changes_do_not_outlive_the_job(node_factory, secret, tmp_path):
    node = node_factory(name="clean", workers=1)  # one worker: every job runs in it
    with mesh.Client([node.address], secret) as c:
        before = c.result(c.call(cwd_and_environment), timeout=30)
        assert before[1] is None and before[3]
        assert c.result(c.call(move_and_change_environment, str(tmp_path)), timeout=30) == str(
            tmp_path
        )
        after = c.result(c.call(cwd_and_environment), timeout=30)
    assert after == before


# ---- a worker that cannot start ----

BROKEN_SITECUSTOMIZE = """\
import os, sys
if "mesh.node._worker" in sys.orig_argv and not os.path.exists({heal!r}):
    sys.stderr.write("Traceback (most recent call last):\\n"
                     "ImportError: lanmesh test: this worker is broken on purpose\\n")
    sys.stderr.flush()
    os._exit(3)
"""


def test_node_whose_workers_cannot_start_fails_jobs_with_the_cause(secret, tmp_path, capfd):
    """Workers die at import (a sitecustomize on the node's PYTHONPATH): a call gets
    WorkerStartFailed naming the node and the worker's last stderr line, not a timeout;
    once workers start again the node runs jobs."""
    site = tmp_path / "site"
    site.mkdir()
    heal = tmp_path / "healed"
    (site / "sitecustomize.py").write_text(BROKEN_SITECUSTOMIZE.format(heal=str(heal)))
    node = start_node(secret, tmp_path / "data", name="broken", workers=1,
                      env={"PYTHONPATH": str(site)})  # fmt: skip
    try:
        with mesh.Client([node.address], secret) as c:
            with pytest.raises(WorkerStartFailed) as err:
                c.result(c.call(int, "1"), timeout=60)
            message = str(err.value)
            assert "node broken cannot start its worker processes" in message
            assert "exited with code 3 before they were ready" in message
            assert "ImportError: lanmesh test: this worker is broken on purpose" in message
            assert "broken on purpose" in err.value.remote_traceback
            assert err.value.node == "broken"
            # While broken, a new job fails at once with the same cause.
            with pytest.raises(WorkerStartFailed, match="broken on purpose"):
                c.result(c.call(int, "2"), timeout=60)
            heal.touch()

            def runs() -> bool:
                try:
                    return c.result(c.call(int, "3"), timeout=60) == 3
                except WorkerStartFailed:
                    return False

            wait_until(runs, timeout_s=60, what="the node to take jobs again")
        assert node.proc.poll() is None
    finally:
        node.stop()
    log = (tmp_path / "data" / "workers.log").read_text()
    assert "broken on purpose" in log  # stderr still reaches the node's workers.log
    # The node's own log (its stderr, inherited from this test) warned with the cause.
    node_log = capfd.readouterr().err
    assert "before it was ready (1 in a row); retrying in 0.1 s" in node_log
    assert "Its stderr ends:\nTraceback (most recent call last):\nImportError: lanmesh" in node_log
    assert "taking jobs again" in node_log


def test_jobs_a_broken_node_fails_run_on_a_node_that_works(node_factory, secret, tmp_path):
    """With a healthy node beside the broken one, a job the broken node fails with
    WorkerStartFailed is placed again on the healthy node (as after a dead worker),
    and every job of a map runs there; none waits for a timeout."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        BROKEN_SITECUSTOMIZE.format(heal=str(tmp_path / "never"))
    )
    broken = start_node(secret, tmp_path / "data", name="broken", workers=1,
                        env={"PYTHONPATH": str(site)})  # fmt: skip
    good = node_factory(name="good", workers=1)
    try:
        with mesh.Client([broken.address, good.address], secret) as c:
            jids = c.map(int, [str(i) for i in range(8)])
            assert c.result(jids, timeout=60) == list(range(8))
            assert {i.node for i in c.info(jids)} == {"good"}
    finally:
        broken.stop()


# ---- the job table's side of a pool that cannot start workers (pure, exact output) ----

BROKEN = ErrorInfo(ErrorKind.WORKER_START, "WorkerStartFailed",
                   "node ws-07 cannot start its worker processes", "ImportError: x")  # fmt: skip


def test_table_fails_queued_and_new_jobs_of_a_broken_pool_until_it_recovers() -> None:
    f = Func(b"f" * 16, b"blob-f", "work.square")
    in_env = Func(b"f" * 16, b"blob-f", "work.square", env="env1")
    t = JobTable("ws-07")
    t.capacity = 2
    assert t.submit(1, f, (("j1", b"a"), ("j2", b"b")), 1.0) == []
    assert t.submit(2, in_env, (("e1", b"c"),), 1.0) == []
    out = t.workers_broken("", BROKEN, 2.0)
    assert out == [Deliver(1, [("j1", ERROR, b"", BROKEN), ("j2", ERROR, b"", BROKEN)])]
    assert t.queued == 1  # the environment's job waits for its own pool
    assert t.submit(1, f, (("j3", b"c"),), 3.0) == [Deliver(1, [("j3", ERROR, b"", BROKEN)])]
    t.workers_recovered("")
    assert t.submit(1, f, (("j4", b"d"),), 4.0) == []
    assert [j.state for j in (t.jobs["j4"], t.jobs["e1"])] == [QUEUED, QUEUED]
    assert t.worker_ready(7, 5.0) == [Dispatch(7, f, True, [t.jobs["j4"]])]


def test_table_fails_only_the_broken_environments_jobs() -> None:
    f = Func(b"f" * 16, b"blob-f", "work.square")
    in_env = Func(b"f" * 16, b"blob-f", "work.square", env="env1")
    t = JobTable("ws-07")
    t.capacity = 2
    t.submit(1, f, (("j1", b"a"),), 1.0)
    t.submit(2, in_env, (("e1", b"c"),), 1.0)
    assert t.workers_broken("env1", BROKEN, 2.0) == [Deliver(2, [("e1", ERROR, b"", BROKEN)])]
    assert t.jobs["j1"].state == QUEUED
    t.remove_env_workers("env1")  # its pool stopped: the next one gets fresh tries
    assert t.submit(2, in_env, (("e2", b"d"),), 3.0) == []
