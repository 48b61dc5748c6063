"""The whole user API against real nodes on 127.0.0.1.

``client`` is a sync ``mesh.Client`` on two real nodes with two workers each. Jobs that
must be running while the test looks at them wait on a gate file (see ``_helpers``).
"""

from __future__ import annotations

import os
import sys
import time

import pytest
from _helpers import gated, square, started_then_gated, wait_until
from conftest import alive, children
from mesh.client import ClientState

import mesh


def scaled_sum(x, y, scale=1):
    return (x + y) * scale


def inverse(x):
    return 1 / x


def sleep_then(value, delay):
    time.sleep(delay)
    return value


def first_waits_for_gate(i, gate):
    if i == 0:
        return gated(gate, i)
    return i


def chatty(n):
    print(f"to stdout {n}")
    print(f"to stderr {n}", file=sys.stderr)
    t0 = time.process_time()
    while time.process_time() - t0 < 0.02:  # burn a little CPU so cpu_s is measurable
        pass
    return n + 1


def sleeper(seconds):
    time.sleep(seconds)
    return "woke up"


def test_call_and_result_of_one_id_and_of_a_list(client):
    jid = client.call(square, 12)
    assert isinstance(jid, str) and jid.isprintable() and jid
    assert client.result(jid) == 144

    jids = [client.call(square, i) for i in range(5)]
    assert len(set(jids)) == 5
    assert client.result(jids) == [0, 1, 4, 9, 16]
    # a list with one id still gives a list; the same id twice gives the value twice
    assert client.result([jid]) == [144]
    assert client.result([jid, jid]) == [144, 144]


TOTALS: list[int] = []


def read_totals(i):
    return (i, list(TOTALS))


def test_calls_in_a_loop_see_the_globals_as_they_were_when_each_was_made(client):
    jobs = []
    for i in range(3):
        TOTALS.append(i)
        jobs.append(client.call(read_totals, i))
    try:
        assert client.result(jobs, timeout=30) == [(0, [0]), (1, [0, 1]), (2, [0, 1, 2])]
        # a burst of calls of one function all come back, in order
        assert client.result([client.call(square, i) for i in range(300)], timeout=60) == [
            i * i for i in range(300)
        ]
    finally:
        TOTALS.clear()


def test_call_passes_keyword_arguments(client):
    assert client.result(client.call(scaled_sum, 1, y=2, scale=10)) == 30


def test_map_with_several_sequences_and_constant_kwargs(client):
    jids = client.map(scaled_sum, [1, 2, 3], [10, 20, 30], scale=3)
    assert len(jids) == 3
    assert client.result(jids) == [33, 66, 99]

    # like builtin map: stops at the shortest sequence, any iterables work
    jids = client.map(scaled_sum, range(10), (x * 100 for x in range(2)))
    assert client.result(jids) == [0, 101]

    with pytest.raises(TypeError):
        client.map(scaled_sum)


def test_result_timeout_raises_timeout_error_and_the_job_keeps_running(client, tmp_path):
    gate = tmp_path / "gate"
    jid = client.call(gated, str(gate), "finished")
    wait_until(lambda: client.status(jid) == "processing", what="job to start")

    with pytest.raises(TimeoutError) as ei:
        client.result(jid, timeout=0.2)
    assert isinstance(ei.value, mesh.MeshTimeout)
    with pytest.raises(mesh.MeshTimeout):
        client.result([jid], timeout=0.1)
    with pytest.raises(TimeoutError):
        client.join(jid, timeout=0.1)

    assert client.status(jid) == "processing"  # the timeout did not stop it
    gate.touch()
    assert client.result(jid, timeout=30) == "finished"
    assert client.status(jid) == "done"


def test_iresult_in_submission_order(client):
    # job 0 takes longest, yet comes first
    jids = client.map(sleep_then, ["a", "b", "c", "d"], [0.4, 0.0, 0.0, 0.0])
    assert list(client.iresult(jids, timeout=30)) == ["a", "b", "c", "d"]


def test_iresult_in_completion_order(client, tmp_path):
    gate = tmp_path / "gate"
    jids = client.map(first_waits_for_gate, range(4), [str(gate)] * 4)
    it = client.iresult(jids, timeout=30, ordered=False)
    # job 0 cannot finish before the gate opens: the other three come first
    first_three = [next(it) for _ in range(3)]
    assert sorted(first_three) == [1, 2, 3]
    assert client.status(jids[0]) == "processing"
    gate.touch()
    assert next(it) == 0
    with pytest.raises(StopIteration):
        next(it)


def test_iresult_timeout(client, tmp_path):
    gate = tmp_path / "gate"
    jids = [client.call(square, 3), client.call(gated, str(gate), "late")]
    assert client.result(jids[0], timeout=30) == 9  # final before the short timeout starts
    it = client.iresult(jids, timeout=0.5)
    assert next(it) == 9
    with pytest.raises(TimeoutError):
        next(it)
    gate.touch()
    assert client.result(jids, timeout=30) == [9, "late"]


def test_join_waits_raises_the_first_error_or_ignores_errors(client):
    jids = client.map(sleep_then, range(4), [0.05] * 4)
    assert client.join(jids, timeout=30) is None
    assert client.status(jids) == ["done"] * 4

    jids = client.map(inverse, [1, 0, 2])
    with pytest.raises(ZeroDivisionError):
        client.join(jids, timeout=30)
    assert client.join(jids, timeout=30, ignore_errors=True) is None
    assert client.status(jids) == ["done", "error", "done"]
    assert client.result(jids[2]) == 0.5
    with pytest.raises(ZeroDivisionError):
        client.result(jids)


def test_status_processing_then_done(client, tmp_path):
    started, gate = tmp_path / "started", tmp_path / "gate"
    jid = client.call(started_then_gated, str(started), str(gate), 7)
    wait_until(started.exists, what="job to start")
    assert client.status(jid) == "processing"
    assert client.status([jid]) == ["processing"]
    gate.touch()
    assert client.result(jid, timeout=30) == 7
    assert client.status(jid) == "done"


def test_status_queued_on_a_busy_node_and_kill_of_a_queued_job(node_factory, secret, tmp_path):
    solo = node_factory(name="solo", workers=1)
    started, gate = tmp_path / "started", tmp_path / "gate"
    with mesh.Client([solo.address], secret) as c:
        running = c.call(started_then_gated, str(started), str(gate), "ran")
        wait_until(started.exists, what="first job to start")
        waiting = c.call(square, 5)
        extra = c.call(square, 6)
        # the node holds them in its queue: its record says queued
        wait_until(lambda: c.info(waiting).node == "solo", what="node to hold the job")
        assert c.info(waiting).status == "queued"
        assert c.status([running, waiting]) == ["processing", "queued"]

        c.kill(extra)
        assert c.status(extra) == "killed"
        with pytest.raises(mesh.JobKilled):
            c.result(extra)

        gate.touch()
        assert c.result([running, waiting], timeout=30) == ["ran", 25]
        assert c.status([running, waiting, extra]) == ["done", "done", "killed"]
        assert solo.proc.poll() is None


def test_kill_a_running_job(client, nodes, tmp_path):
    started, gate = tmp_path / "started", tmp_path / "never"
    jid = client.call(started_then_gated, str(started), str(gate), "unreachable")
    wait_until(started.exists, what="job to start")
    assert client.status(jid) == "processing"
    before = {n.name: set(n.worker_pids()) for n in nodes}

    client.kill(jid)
    assert client.status(jid) == "killed"
    with pytest.raises(mesh.JobKilled) as ei:
        client.result(jid)
    assert not isinstance(ei.value, mesh.MaxRuntimeExceeded)
    info = client.info(jid)
    assert info.status == "killed"
    node = next(n for n in nodes if n.name == info.node)
    # its worker process was terminated and replaced
    after = set(node.wait_workers(2))
    assert len(before[node.name] - after) == 1
    assert client.result(client.call(square, 4)) == 16


def speaks_if_odd(x):
    if x % 2:
        print(f"odd {x}")
    return x


def test_each_job_of_a_batch_keeps_its_own_output(client):
    # A worker hands a job's empty output streams to the next job: the text of each
    # job must still be its own, whatever its neighbours in the batch wrote.
    jids = client.map(speaks_if_odd, range(40))
    assert client.result(jids) == list(range(40))
    for x, info in enumerate(client.info(jids)):
        assert info.stdout == (f"odd {x}\n" if x % 2 else ""), (x, info.stdout)
        assert info.stderr == ""


def test_info_node_times_cpu_and_captured_output(client, nodes):
    t0 = time.time()
    jid = client.call(chatty, 41, _label="talks")
    assert client.result(jid) == 42
    info = client.info(jid)
    assert info.jid == jid
    assert info.status == "done"
    assert info.node in {n.name for n in nodes}
    assert "chatty" in info.function
    assert info.label == "talks"
    assert info.started is not None and info.finished is not None
    assert t0 - 1 <= info.submitted <= info.started <= info.finished <= time.time() + 1
    assert info.cpu_s > 0
    assert "to stdout 41" in info.stdout
    assert "to stderr 41" in info.stderr
    assert "to stderr" not in info.stdout
    assert info.error == ""

    bad = client.call(inverse, 0)
    client.join(bad, ignore_errors=True)
    bad_info = client.info(bad)
    assert bad_info.status == "error"
    assert "ZeroDivisionError" in bad_info.error

    both = client.info([jid, bad])
    assert [i.jid for i in both] == [jid, bad]


def test_label_option_never_reaches_the_function(client):
    jid = client.call(square, 3, _label="my label")
    assert client.result(jid) == 9  # square() would reject an unexpected keyword
    assert client.info(jid).label == "my label"
    jids = client.map(square, [1, 2], _label="mapped")
    assert client.result(jids) == [1, 4]
    assert [i.label for i in client.info(jids)] == ["mapped", "mapped"]
    # a burst of calls of one function shares Submits only where the options agree
    labels = ["a", "a", "b", "", "a"]
    burst = [client.call(square, i, _label=label) for i, label in enumerate(labels)]
    assert client.result(burst) == [0, 1, 4, 9, 16]
    assert [i.label for i in client.info(burst)] == labels


def test_max_runtime_kills_the_job(client, nodes):
    jid = client.call(sleeper, 30, _max_runtime=1)
    with pytest.raises(mesh.MaxRuntimeExceeded) as ei:
        client.result(jid, timeout=20)
    assert isinstance(ei.value, mesh.JobKilled)
    assert "_max_runtime" in str(ei.value)
    assert client.status(jid) == "killed"
    for n in nodes:
        n.wait_workers(2)
    # a job under its limit is not affected
    assert client.result(client.call(sleep_then, "ok", 0.05, _max_runtime=20), timeout=30) == "ok"


def test_unknown_option_raises_type_error(client):
    with pytest.raises(TypeError, match="_bogus"):
        client.call(square, 2, _bogus=1)
    with pytest.raises(TypeError, match="_high_cpu"):
        client.map(square, [1, 2], _high_cpu=True)
    assert client.result(client.call(square, 2)) == 4


def test_job_ids_stay_valid_across_clients(client, nodes, secret, tmp_path):
    count = 100
    finished = client.map(square, range(count))
    assert client.result(finished) == [i * i for i in range(count)]
    done = finished[9]
    started, gate = tmp_path / "started", tmp_path / "gate"
    running = client.call(started_then_gated, str(started), str(gate), "late")
    wait_until(started.exists, what="job to start")

    with mesh.Client([n.address for n in nodes], secret) as second:
        # each id is new to this client: its first status asks the nodes (one at a time,
        # as `mesh status JID` from a shell would)
        states = [second.status(jid) for jid in finished]
        wrong = [s for s in states if s != "done"]
        assert not wrong, f"{len(wrong)} of {count} finished jobs reported as {set(wrong)}"
        assert second.result(done) == 81
        assert second.result(finished) == [i * i for i in range(count)]
        assert second.info(done).node in {n.name for n in nodes}
        assert second.status(running) == "processing"
        gate.touch()
        assert second.result(running, timeout=30) == "late"
        assert second.status(running) == "done"
        with pytest.raises(mesh.UnknownJob):
            second.status("nosuch-1")
    assert client.result(running, timeout=30) == "late"


def big_bytes(n_bytes):
    return b"x" * n_bytes


def test_status_from_another_client_of_a_finished_job_with_a_large_result(client, nodes, secret):
    jid = client.call(big_bytes, 8 << 20)  # more than one frame's worth
    assert len(client.result(jid, timeout=30)) == 8 << 20
    assert client.status(jid) == "done"
    with mesh.Client([n.address for n in nodes], secret) as second:
        assert second.status(jid) == "done"
        assert len(second.result(jid, timeout=30)) == 8 << 20


def test_module_level_facade_with_connect(nodes, secret):
    c = mesh.connect(peers=[n.address for n in nodes], secret=secret)
    assert isinstance(c, mesh.Client)
    assert not mesh.is_local()
    jid = mesh.call(square, 11)
    assert mesh.result(jid) == 121
    jids = mesh.map(scaled_sum, [1, 2], [3, 4], scale=2)
    mesh.join(jids)
    assert mesh.status(jids) == ["done", "done"]
    assert mesh.result(jids) == [8, 12]
    assert list(mesh.iresult(jids)) == [8, 12]
    assert mesh.info(jid).node in {n.name for n in nodes}
    assert c.state is ClientState.RUNNING
    mesh.close()
    assert c.closed and c.state is ClientState.CLOSED
    with pytest.raises(mesh.ConnectionClosed, match=r"^cannot call: the client is closed$"):
        c.call(square, 1)
    with pytest.raises(mesh.ConnectionClosed, match=r"^cannot map: the client is closed$"):
        c.map(square, [1])


def test_module_level_local_mesh_starts_and_stops_its_nodes():
    mesh.local(nodes=2)
    assert mesh.is_local()
    assert mesh.result(mesh.map(square, range(6))) == [0, 1, 4, 9, 16, 25]

    default = mesh._default
    assert default is not None and default._local is not None
    node_pids = list(default._local.pids)
    assert len(node_pids) == 2 and all(alive(p) for p in node_pids)
    worker_pids = [w for p in node_pids for w in children(p)]
    assert worker_pids

    mesh.close()
    assert not mesh.is_local()
    assert default.closed
    for pid in node_pids + worker_pids:
        wait_until(lambda pid=pid: not alive(pid), timeout_s=10, what=f"pid {pid} to exit")


def byte_sum(blob):
    return sum(blob[::4096]), len(blob)


def test_a_big_argument_arrives_intact_and_leaves_no_shared_file(node_factory, secret):
    """Its block is kept for the next big argument (node._shm's bounded free list),
    and removed with the node's folder when the node stops."""
    import glob

    from mesh.node._shm import FREE_MAX_BLOCKS

    node = node_factory(name="shm")
    blob = os.urandom(6 << 20)
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(byte_sum, blob), timeout=60) == (sum(blob[::4096]), len(blob))
    dirs = glob.glob(f"/dev/shm/lanmesh-{node.pid}-*")
    assert dirs, "nodes keep their shared buffers under /dev/shm"
    assert all(len(os.listdir(d)) <= FREE_MAX_BLOCKS for d in dirs)
    node.stop()
    assert not any(os.path.exists(d) for d in dirs), "shared files removed with the node"


def test_a_job_outlives_the_process_that_submitted_it(nodes, secret):
    """A script submits and exits; later another process gets the result by its id."""
    code = (
        "import mesh, sys\n"
        "def slow(x):\n"
        "    import time; time.sleep(0.5); return x * 10\n"
        f"c = mesh.Client({[n.address for n in nodes]!r}, {secret!r})\n"
        "print(c.call(slow, 7))\n"
        "c.close()\n"
    )
    import subprocess

    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    jid = done.stdout.strip()
    with mesh.Client([n.address for n in nodes], secret) as later:
        assert later.result(jid, timeout=30) == 70
        assert later.status(jid) == "done"
