"""bench/scale.py on 3 real nodes: one JSON object of sane figures (none asserted
against a target), and no process left behind, also when interrupted."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

SCALE = Path(__file__).resolve().parent.parent / "bench" / "scale.py"


def descendants(pid: int) -> set[int]:
    out: set[int] = set()
    todo = [pid]
    while todo:
        p = todo.pop()
        kids: set[int] = set()
        try:
            for task in os.listdir(f"/proc/{p}/task"):  # each thread's children
                with open(f"/proc/{p}/task/{task}/children") as f:
                    kids |= {int(c) for c in f.read().split()}
        except OSError:
            continue
        todo.extend(kids - out)
        out |= kids
    return out


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_a_run_at_three_nodes_prints_one_json_object_of_sane_figures() -> None:
    run = subprocess.run(
        [sys.executable, str(SCALE), "--nodes", "3", "--idle-s", "1", "--map-items", "200",
         "--client-idle-s", "1"],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["machine"]["cpus"] == os.cpu_count() and out["discovery"] == "peer"
    (r,) = out["results"]
    assert r["nodes"] == 3 and r["nodes_seeing_all"] == 3 and r["client_nodes_seen"] == 3
    assert 0 < r["all_listening_s"] <= r["full_membership_s"]
    assert r["idle_cpu_pct_all_nodes"] >= 0 and r["idle_cpu_pct_per_node"] >= 0
    assert abs(r["idle_cpu_pct_all_nodes"] - 3 * r["idle_cpu_pct_per_node"]) < 0.01
    assert r["idle_messages_per_node_per_s"] > 0  # membership is kept by some messages
    assert r["rss_mib_per_node"] > 10  # a Python node and its worker
    assert r["client_sees_all_s"] > 0
    assert r["client_links"] == 3 and r["client_idle_cpu_pct"] >= 0
    assert r["tiny_map"]["jobs"] == 200 and r["tiny_map"]["jobs_per_s"] > 0
    sleep = r["sleep_map"]
    assert sleep["jobs"] == 6 and sleep["s"] >= sleep["job_s"] == 0.5
    assert 1 <= sleep["nodes_used"] <= 3
    freeze = r["freeze"]
    assert 0 < freeze["dropped_by_first_node_s"] <= freeze["dropped_by_all_nodes_s"]
    assert freeze["dropped_by_client_s"] > 0
    assert freeze["back_at_all_nodes_s"] is not None  # SIGCONT: it rejoined by itself


def test_an_interrupted_run_stops_every_node_and_worker_it_started() -> None:
    proc = subprocess.Popen(
        [sys.executable, str(SCALE), "--nodes", "3", "--idle-s", "30"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True,
    )  # fmt: skip
    started: set[int] = set()
    try:
        assert proc.stderr is not None
        for line in proc.stderr:  # the nodes are up and the idle window has begun
            if "idle for" in line:
                break
        started = descendants(proc.pid)
        assert len([p for p in started if alive(p)]) >= 6  # 3 nodes, 3 workers
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
        assert proc.returncode != 0
        assert [p for p in started if alive(p)] == []
    finally:  # a failure above must not leave the nodes (own sessions) running either
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()
        for pid in started | descendants(proc.pid):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
