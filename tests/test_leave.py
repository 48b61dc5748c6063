"""Graceful leave: on SIGTERM a node takes no new work, hands its queued jobs back to
their clients, lets running ones finish within --grace, says goodbye and exits 0."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

from _helpers import wait_until

import mesh


def note_and_nap(i, folder, nap):
    with open(Path(folder) / str(i), "a") as f:
        f.write(f"{os.getppid()}\n")  # the node that ran it
    time.sleep(nap)
    return i


def test_sigterm_during_a_map_loses_no_job_and_exits_0(node_factory, secret, tmp_path):
    ran = tmp_path / "ran"
    ran.mkdir()
    leaving = node_factory(name="leaving", workers=1, extra=("--grace", "30"))
    staying = node_factory(name="staying", workers=1)
    with mesh.Client([leaving.address, staying.address], secret) as c:
        jids = c.map(note_and_nap, range(30), folder=str(ran), nap=0.3)
        wait_until(lambda: len(list(ran.iterdir())) >= 4, what="the map to get going")
        leaving.proc.send_signal(signal.SIGTERM)
        assert leaving.proc.wait(30) == 0
        assert c.result(jids, timeout=60) == list(range(30))
    runs = {p.name: p.read_text().split() for p in ran.iterdir()}
    assert {k: len(v) for k, v in runs.items()} == {str(i): 1 for i in range(30)}  # no re-run
    assert {int(v[0]) for v in runs.values()} == {leaving.pid, staying.pid}


def test_a_second_sigterm_leaves_at_once(node_factory, secret, tmp_path):
    node = node_factory(name="n", workers=1, extra=("--grace", "60"))
    with mesh.Client([node.address], secret) as c:
        c.call(note_and_nap, 0, str(tmp_path), 60)
        wait_until(lambda: (tmp_path / "0").exists(), what="the job to start")
        node.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)  # it is waiting for its running job now
        assert node.proc.poll() is None
        node.proc.send_signal(signal.SIGTERM)
        assert node.proc.wait(15) == 0
