"""A node is its id, not its name; names are unique in a mesh; info and status answer
after a node is lost.

Two real nodes with the same ``--name`` (so the same hostname, as two cloned office
images would have) run one mesh: jobs, info, status, kill and results after a restart
all find the node by its id, and the node with the greater id shows as ``name-2``.
A node SIGKILLed mid-map leaves the client to answer for the jobs it ran.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import run_cli, started_then_gated, table, wait_until
from conftest import NodeProc, start_node, stop_nodes
from mesh.client._records import JobInfo, runs
from mesh.node._peers import NODE_ID_FILE, load_node_id, unique_name

import mesh
from mesh._auth import dashboard_token

# ---- pure: the name a node shows, its id, what attempts count ----


def test_the_smallest_id_keeps_a_name_and_the_others_take_the_first_free_suffixes():
    others = [("0b", "vm"), ("0c", "vm")]
    assert unique_name("vm", "0a", "vm", others) == "vm"  # the smallest id keeps it
    # Seeing the same mesh, the other two never pick the same suffix.
    assert unique_name("vm", "0b", "vm", [("0a", "vm"), ("0c", "vm")]) == "vm-2"
    assert unique_name("vm", "0c", "vm", [("0a", "vm"), ("0b", "vm")]) == "vm-3"
    # One that renamed already is seen by its new name: the next one skips it.
    assert unique_name("vm", "0c", "vm", [("0a", "vm"), ("0b", "vm-2")]) == "vm-3"
    # A suffix another node shows as its own name is taken too.
    assert unique_name("vm", "0b", "vm", [("0a", "vm"), ("0d", "vm-2")]) == "vm-3"


def test_a_name_is_kept_while_no_smaller_id_shows_it_and_never_given_back():
    assert unique_name("vm", "0a", "vm", []) == "vm"
    assert unique_name("vm", "0b", "vm", [("0c", "vm"), ("0a", "db")]) == "vm"
    # Renamed, it stays renamed though the node it clashed with is gone.
    assert unique_name("vm", "0b", "vm-2", []) == "vm-2"
    # Its suffix taken by a smaller id meanwhile: the next free one.
    assert unique_name("vm", "0b", "vm-2", [("0a", "vm-2"), ("0c", "vm")]) == "vm-3"


def test_a_node_id_is_made_once_and_kept_in_the_data_dir(tmp_path):
    first = load_node_id(tmp_path, machine="m1")
    path = tmp_path / NODE_ID_FILE
    assert path.read_text() == f"{first}\nm1\n"
    assert path.stat().st_mode & 0o777 == 0o600  # the data dir's files are private
    assert load_node_id(tmp_path, machine="m1") == first  # a restart is the same node
    assert len(first) == 12 and int(first, 16) >= 0
    assert load_node_id(tmp_path) == load_node_id(tmp_path)  # this machine's own id


def test_a_data_dir_cloned_to_another_machine_gets_a_new_id_there(tmp_path):
    first = load_node_id(tmp_path, machine="m1")
    second = load_node_id(tmp_path, machine="m2")  # the disk image, booted elsewhere
    assert second != first and (tmp_path / NODE_ID_FILE).read_text() == f"{second}\nm2\n"
    assert load_node_id(tmp_path, machine="m2") == second


def test_a_garbled_node_id_file_gives_a_new_id_not_a_crash(tmp_path):
    (tmp_path / NODE_ID_FILE).write_text("not an id\n")
    new = load_node_id(tmp_path, machine="")
    assert new != "not" and len(new) == 12
    assert (tmp_path / NODE_ID_FILE).read_text() == new + "\n"
    assert os.listdir(tmp_path) == [NODE_ID_FILE]  # no temp file left behind


def test_attempts_count_runs_as_users_read_them():
    assert runs(0, started=False, died_last=False) == 0  # queued: not run yet
    assert runs(0, started=True, died_last=False) == 1  # ran once
    assert runs(1, started=True, died_last=False) == 2  # died once, then ran
    assert runs(4, started=True, died_last=True) == 4  # died four times: four runs


def test_job_info_documents_its_new_fields_with_defaults():
    info = JobInfo("t-1", "done", "a", "f", "", 1.0, None, None, 0.0, "", "", "", 1)
    assert (info.node_id, info.record_lost) == ("", False)
    assert "record_lost" in (JobInfo.__doc__ or "") and "attempts" in (JobInfo.__doc__ or "")


# ---- real nodes with one name ----


def ran_where(x: int) -> tuple[int, int]:
    """x and the pid of the node that ran it (a worker's parent)."""
    time.sleep(0.02)
    return x, os.getppid()


def note_then(i: int, folder: str, gate: str) -> tuple[int, int]:
    """Append the node's pid to ``folder/i`` (one line a run), wait for ``gate`` (none:
    no wait). Returns (i, the node's pid)."""
    with open(Path(folder) / str(i), "a") as f:
        f.write(f"{os.getppid()}\n")
    while gate and not os.path.exists(gate):
        time.sleep(0.01)
    return i, os.getppid()


@pytest.fixture
def start(secret: str, tmp_path: Path) -> Iterator[Callable[..., NodeProc]]:
    """``start(dir, name=..., **kw)``: a real node on its own data dir ``dir`` (names
    may repeat); every node is stopped afterwards, and none may leave a worker."""
    procs: list[NodeProc] = []

    def make(data: str, name: str, workers: int = 2, **kwargs: object) -> NodeProc:
        node = start_node(secret, tmp_path / data, name=name, workers=workers, **kwargs)  # type: ignore[arg-type]
        procs.append(node)
        node.wait_workers(workers)
        return node

    yield make
    stop_nodes(procs)


def _read(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def get_json(url: str, secret: str) -> Any:
    """A dashboard's JSON API, logged in with the mesh's token."""
    auth = {"Authorization": f"Bearer {dashboard_token(secret.encode())}"}
    with urllib.request.urlopen(urllib.request.Request(url, headers=auth), timeout=10) as resp:
        return json.loads(resp.read())


def node_id_of(node: NodeProc) -> str:
    return (node.data_dir / NODE_ID_FILE).read_text().split()[0]


def names(c: mesh.Client) -> list[tuple[str, str]]:
    return [(n.name, n.address) for n in c.nodes() if n.connected]


def test_two_nodes_with_one_name_are_two_nodes(start, secret, tmp_path, capsys, monkeypatch):
    a = start("a", name="vm")
    b = start("b", name="vm", extra=("--peer", a.address))
    first, second = sorted([a, b], key=node_id_of)  # the greater id takes the suffix
    want = [("vm", first.address), ("vm-2", second.address)]
    shown = {first.pid: "vm", second.pid: "vm-2"}
    ids = {a.pid: node_id_of(a), b.pid: node_id_of(b)}
    with mesh.Client([a.address, b.address], secret) as c:
        wait_until(lambda: names(c) == want, what=f"names {want}")

        assert {n.node_id for n in c.nodes()} == set(ids.values())
        monkeypatch.setenv("MESH_SECRET", secret)
        code, out, _ = run_cli(capsys, "--peers", f"{a.address},{b.address}", "nodes")
        assert code == 0 and [r[:2] for r in table(out)[1:]] == [list(w) for w in want]

        jids = c.map(ran_where, range(24))
        results = c.result(jids, timeout=60)
        assert [x for x, _ in results] == list(range(24))
        assert {pid for _, pid in results} == {a.pid, b.pid}  # both nodes ran some
        infos = c.info(jids)
        assert [i.jid for i in infos] == jids
        for (_, pid), info in zip(results, infos, strict=True):
            assert (info.node_id, info.node) == (ids[pid], shown[pid]), info
            assert (info.status, info.attempts, info.record_lost) == ("done", 1, False)
        assert c.status(jids) == ["done"] * 24

        # a's dashboard: both nodes by their names and ids, each job with its node's id,
        # and a job page's link (?node=ID) reaching the record on the other node.
        base = wait_until(lambda: _read(a.data_dir / "dashboard"), what="a's dashboard")
        rows = get_json(base + "api/nodes", secret)["nodes"]
        assert sorted((r["name"], r["node_id"]) for r in rows) == sorted(
            (shown[p], ids[p]) for p in ids
        )
        listed = {j["jid"]: j for j in get_json(base + "api/jobs?limit=100", secret)["jobs"]}
        for jid, (_, pid) in zip(jids, results, strict=True):
            row = listed[jid]
            assert (row["node"], row["node_id"], row["attempts"]) == (shown[pid], ids[pid], 1)
        far = next(j for j, (_, pid) in zip(jids, results, strict=True) if pid == b.pid)
        page = get_json(base + f"api/jobs/{far}?node={ids[b.pid]}", secret)
        assert (page["node_id"], page["node"], page["status"]) == (ids[b.pid], shown[b.pid], "done")

        # Jobs running on both nodes are killed, each on its own node.
        gate, began = tmp_path / "gate", tmp_path / "began"
        began.mkdir()
        slow = c.map(started_then_gated, [str(began / str(i)) for i in range(4)],
                     [str(gate)] * 4, range(4))  # fmt: skip
        wait_until(lambda: len(os.listdir(began)) == 4, what="4 jobs running")
        assert {i.node_id for i in c.info(slow)} == set(ids.values())
        c.kill(slow)
        assert c.status(slow) == ["killed"] * 4
        gate.touch()

    # b restarts on its data dir: the same node (its id), serving what it ran.
    b.stop()
    again = start("b", name="vm", port=b.port, extra=("--peer", a.address))
    assert node_id_of(again) == ids[b.pid]
    ids[again.pid], shown[again.pid] = ids[b.pid], shown[b.pid]
    with mesh.Client([a.address, again.address], secret) as c:  # another client, by id
        wait_until(lambda: names(c) == want, what=f"names {want} again")
        assert c.result(jids, timeout=60) == results
        infos = c.info(jids)
        for (_, pid), info in zip(results, infos, strict=True):
            assert (info.node_id, info.node, info.status) == (ids[pid], shown[pid], "done")
        assert c.status(slow) == ["killed"] * 4


def test_info_and_status_answer_for_every_job_after_a_node_is_killed(start, secret, tmp_path):
    a = start("a", name="a")
    b = start("b", name="b", extra=("--peer", a.address))
    runs_dir, gate = tmp_path / "runs", tmp_path / "gate"
    runs_dir.mkdir()

    def ran_on(i: int) -> list[int]:
        path = runs_dir / str(i)
        return [int(x) for x in path.read_text().split()] if path.exists() else []

    with mesh.Client([a.address, b.address], secret) as c:
        # both nodes linked before the map (a client starts once one node answers)
        wait_until(lambda: sum(n.connected and n.workers == 2 for n in c.nodes()) == 2,
                   what="both nodes linked, their workers known")  # fmt: skip
        # Jobs finished on b; then b is killed in the middle of a map, a job running there.
        # (eight quick jobs may all fit a's slots and pipeline, and b's workers may still
        # be starting on a loaded machine, its jobs recalled to a: map again until b ran some)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for f in runs_dir.iterdir():
                f.unlink()
            jids = c.map(note_then, range(8), folder=str(runs_dir), gate="")
            quick = c.result(jids, timeout=60)
            if b.pid in {pid for _, pid in quick}:
                break
        assert b.pid in {pid for _, pid in quick}
        jids += c.map(note_then, range(8, 16), folder=str(runs_dir), gate=str(gate))
        wait_until(lambda: any(ran_on(i) == [b.pid] for i in range(8, 16)), what="b running")
        b.stop(signal.SIGKILL)
        gate.touch()
        results = c.result(jids, timeout=60)
        assert [i for i, _ in results] == list(range(16))

        states = c.status(jids)  # no UnknownJob for the jobs b ran
        infos = c.info(jids)
        assert states == ["done"] * 16 and [i.status for i in infos] == states
        lost = 0
        for i, ((_, pid), info) in enumerate(zip(results, infos, strict=True)):
            if pid == b.pid:  # finished on b before it died: the client's own account
                lost += 1
                assert (info.node, info.record_lost, info.attempts) == ("b", True, 1), info
                assert info.finished is not None and info.submitted <= info.finished
                assert info.started is None and info.function == "test_identity.note_then"
            else:
                assert (info.node, info.record_lost) == ("a", False), info
                assert info.started is not None and info.finished is not None
                if ran_on(i) == [b.pid, a.pid]:  # started on b, died with it, ran on a
                    assert info.attempts == 2, info
                elif ran_on(i) == [a.pid] and i < 8:
                    assert info.attempts == 1, info
        assert lost == sum(1 for _, pid in results if pid == b.pid) > 0

    # Another client never held those jobs: it answers for what a live node knows
    # and raises only for the ids nobody knows.
    on_a = [j for j, (_, pid) in zip(jids, results, strict=True) if pid == a.pid]
    on_b = [j for j, (_, pid) in zip(jids, results, strict=True) if pid == b.pid]
    with mesh.Client([a.address], secret) as other:
        assert [i.node for i in other.info(on_a)] == ["a"] * len(on_a)
        with pytest.raises(mesh.UnknownJob, match=on_b[0]):
            other.info(on_a[:1] + on_b)


def test_three_nodes_with_one_name_settle_on_three_names(start, secret):
    a = start("a", name="pi", workers=1)
    b = start("b", name="pi", workers=1, extra=("--peer", a.address))
    c = start("c", name="pi", workers=1, extra=("--peer", a.address))
    smallest = min([a, b, c], key=node_id_of)
    with mesh.Client([a.address, b.address, c.address], secret) as client:
        wait_until(
            lambda: sorted(n for n, _ in names(client)) == ["pi", "pi-2", "pi-3"],
            what="three names",
        )
        assert {addr: n for n, addr in names(client)}[smallest.address] == "pi"
        jids = client.map(ran_where, range(6))
        client.join(jids, timeout=60)
        shown = {addr: n for n, addr in names(client)}
        by_id = {n.node_id: shown[n.address] for n in client.nodes()}
        assert all(i.node == by_id[i.node_id] for i in client.info(jids))
