"""Results survive a node restart: finished jobs are on disk before a client hears of
them, and a node restarted on the same --data-dir serves them again."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from _helpers import wait_until

import mesh


def count_run(i, folder):
    """Note each run of item ``i`` (the test counts them), then return i squared."""
    with open(Path(folder) / str(i), "a") as f:
        f.write("run\n")
    if i >= 10:
        time.sleep(0.3)
    return i * i


def runs(folder: Path, i: int) -> int:
    path = folder / str(i)
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_results_finished_before_a_crash_are_served_after_restart(node_factory, secret, tmp_path):
    ran = tmp_path / "ran"
    ran.mkdir()
    node = node_factory(name="keeper")
    with mesh.Client([node.address], secret) as c:
        jids = c.map(count_run, range(10), folder=str(ran))
        c.join(jids, timeout=30)
        c.info(jids)  # the node answered after its results: they are on disk
    node.stop(signal.SIGKILL)
    again = node_factory(name="keeper", port=node.port)  # the same --data-dir
    with mesh.Client([again.address], secret) as c:  # another client asks by job id
        assert c.result(jids, timeout=30) == [i * i for i in range(10)]
        info = c.info(jids[3])
        assert info.node == "keeper" and info.status == "done"
    assert [runs(ran, i) for i in range(10)] == [1] * 10  # none ran again


def test_a_waiting_client_gets_every_result_across_a_restart(node_factory, secret, tmp_path):
    ran = tmp_path / "ran"
    ran.mkdir()
    node = node_factory(name="keeper", workers=1)
    with mesh.Client([node.address], secret) as c:
        jids = c.map(count_run, range(16), folder=str(ran))
        wait_until(lambda: runs(ran, 11) == 1, what="a slow job to start")
        node.stop(signal.SIGKILL)
        node_factory(name="keeper", port=node.port, workers=1)
        assert c.result(jids, timeout=60) == [i * i for i in range(16)]
    counts = [runs(ran, i) for i in range(16)]
    assert counts[:11] == [1] * 11, counts  # finished before the crash: never again
    assert all(1 <= n <= 2 for n in counts[11:]), counts  # at-least-once for the rest


def test_a_data_dir_in_use_is_refused_with_a_clear_error(node_factory, secret, tmp_path):
    owner = node_factory(name="owner")
    env = dict(os.environ, MESH_SECRET=secret)
    second = subprocess.run(
        [sys.executable, "-m", "mesh.node", "--host", "127.0.0.1", "--port", "0", "--no-advertise",
         "--data-dir", str(owner.data_dir)],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert second.returncode != 0
    assert f"data dir {owner.data_dir} is in use by another mesh-node (pid {owner.pid})" in (
        second.stderr
    )
    assert owner.proc.poll() is None
