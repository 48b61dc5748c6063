"""The dashboard's jobs view is the mesh's as a node sees it: a node's ``/api/jobs``
merges the jobs its peers hold (asked over its connections to them), its job page and
kill button reach jobs held by another node, and a peer that does not answer is named
in ``missing`` instead of holding the page up. Real nodes that know each other."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import test_dashboard
from _helpers import started_then_gated, wait_until
from conftest import NodeProc
from test_dashboard import all_jobs, api, dashboard, http, logged_in, shout

import mesh

KILL = {"method": "POST", "headers": {"X-Mesh": "1"}}
mesh2 = test_dashboard.mesh2  # two nodes that know each other (n2 names n1)
__all__ = ["logged_in"]  # its requests send the mesh's token, as test_dashboard's do


def running_on_both(
    c: mesh.Client, tmp_path: Path, n: int = 4
) -> tuple[list[Any], dict[str, str], Path]:
    """``n`` jobs (at most the 4 workers) that run until ``gate`` opens, spread over both
    nodes: (jids, node of each, gate)."""
    gate = tmp_path / "gate"
    started = [tmp_path / f"started-{i}" for i in range(n)]
    jids = c.map(started_then_gated, [str(s) for s in started], [str(gate)] * n, range(n))
    wait_until(lambda: all(s.exists() for s in started), what="every job to start")
    where = {i.jid: i.node for i in c.info(jids)}
    assert set(where.values()) == {"n1", "n2"}, where
    return jids, where, gate


def test_a_nodes_jobs_list_holds_its_peers_jobs_filtered_and_paged(mesh2, secret, tmp_path):
    n1, n2 = mesh2
    with mesh.Client([n.address for n in mesh2], secret, name="lister") as c:
        wide, where, gate = running_on_both(c, tmp_path)
        gate.touch()
        bad = c.map(pow, [0, 0, 0], [-1, -1, -1], _label="bad")
        c.join(wide)
        c.join(bad, ignore_errors=True)
        where.update((i.jid, i.node) for i in c.info(bad))
    with mesh.Client([n.address for n in mesh2], secret, name="other") as c:
        others = c.map(abs, range(-5, 0), _label="x")
        c.join(others)
        where.update((i.jid, i.node) for i in c.info(others))
    assert len(where) == 12

    for node in (n1, n2):  # each node's dashboard: both nodes' jobs
        url = dashboard(node)
        total, jobs = all_jobs(url, limit=1000)
        assert total == 12 and {j["jid"]: j["node"] for j in jobs} == where
        assert [j["submitted"] for j in jobs] == sorted((j["submitted"] for j in jobs),
                                                        reverse=True)  # fmt: skip
        page = api(url + "api/jobs")
        assert page["node"] == node.name and page["missing"] == []
        assert page["by_node"] == {n: sum(w == n for w in where.values()) for n in ("n1", "n2")}

        # filters apply on every node
        _, errors = all_jobs(url, "&status=error")
        assert sorted(j["jid"] for j in errors) == sorted(bad)
        assert {j["node"] for j in errors} == {where[j] for j in bad}
        _, listed = all_jobs(url, "&client=lister&status=done")
        assert sorted(j["jid"] for j in listed) == sorted(wide)
        assert {j["node"] for j in listed} == {"n1", "n2"}
        _, xs = all_jobs(url, "&label=x&client=other")
        assert sorted(j["jid"] for j in xs) == sorted(others)
        assert all_jobs(url, "&label=x&client=lister")[0] == 0

        # pages over the merged list: small pages add up to the whole, in order
        for limit in (1, 3, 7):
            paged: list[dict[str, Any]] = []
            while len(paged) < total:
                page = api(url + f"api/jobs?offset={len(paged)}&limit={limit}")
                assert page["total"] == 12 and page["offset"] == len(paged)
                assert len(page["jobs"]) == min(limit, total - len(paged))
                paged.extend(page["jobs"])
            assert [j["jid"] for j in paged] == [j["jid"] for j in jobs]
        page = api(url + "api/jobs?client=lister&offset=2&limit=5")
        assert page["total"] == 7
        assert page["jobs"] == [j for j in jobs if j["client"] == "lister"][2:7]
        assert api(url + "api/jobs?offset=12")["jobs"] == []


def test_a_job_page_shows_a_job_held_by_a_peer(mesh2, secret, tmp_path):
    n1, n2 = mesh2
    urls = {"n1": dashboard(n1), "n2": dashboard(n2)}
    with mesh.Client([n.address for n in mesh2], secret, name="paged") as c:
        jids, where, gate = running_on_both(c, tmp_path)
        for jid in jids:  # running elsewhere: its arguments are previewed by its node
            other = "n2" if where[jid] == "n1" else "n1"
            detail = api(urls[other] + f"api/jobs/{jid}")
            assert detail["node"] == where[jid] and detail["status"] == "processing"
            assert detail["client"] == "paged"
            assert detail["args_preview"] is not None and str(gate) in detail["args_preview"]
        gate.touch()
        c.join(jids)

        failed = c.map(shout, [f"job {i}" for i in range(6)], _label="loud")
        c.join(failed, ignore_errors=True)
        placed = {i.jid: i.node for i in c.info(failed)}
    for jid, node in placed.items():
        other = "n2" if node == "n1" else "n1"
        detail = api(urls[other] + f"api/jobs/{jid}")
        held = api(urls[node] + f"api/jobs/{jid}")
        # the same, asked anywhere; but only its holder can retry it
        assert (
            detail["retry_refused"]
            == f"its record is on node {node}: retry it from that node's dashboard"
        )
        assert held["retry_refused"] is None
        assert {**detail, "retry_refused": None} == held
        assert detail["node"] == node and detail["status"] == "error"
        assert detail["label"] == "loud" and detail["client"] == "paged"
        assert detail["stdout"].startswith("job ") and detail["stderr"] == "to stderr\n"
        assert detail["error"]["type"].endswith("ValueError")
        assert "boom: job " in detail["error"]["traceback"]
    status, _, body = http(urls["n1"] + "api/jobs/nosuch-1")
    assert status == 404 and b"nosuch-1" in body


def test_killing_a_peers_job_from_a_nodes_api(mesh2, secret, tmp_path):
    urls = {n.name: dashboard(n) for n in mesh2}
    with mesh.Client([n.address for n in mesh2], secret) as c:
        jids, where, gate = running_on_both(c, tmp_path)
        victims = {where[j]: j for j in jids}  # one job on each node
        for node, victim in victims.items():
            other = "n2" if node == "n1" else "n1"
            out = api(urls[other] + f"api/jobs/{victim}/kill", **KILL)
            assert (out["jid"], out["killed"], out["node"]) == (victim, True, node)
            assert out["status"] in ("processing", "killed")  # its worker is being stopped
            with pytest.raises(mesh.JobKilled):
                c.result(victim, timeout=20)
            assert c.status(victim) == "killed"
            again = api(urls[other] + f"api/jobs/{victim}/kill", **KILL)
            assert again == {"jid": victim, "killed": False, "status": "killed", "node": node}
        gate.touch()
        survivors = [j for j in jids if j not in victims.values()]
        assert c.result(survivors) == [jids.index(j) for j in survivors]
    status, _, body = http(urls["n1"] + "api/jobs/nosuch-1/kill", **KILL)
    assert status == 404 and b"nosuch-1" in body
    status, _, body = http(urls["n1"] + f"api/jobs/{jids[0]}/kill", method="POST")
    assert status == 403  # the header is still required


@pytest.fixture
def stopped() -> Iterator[list[NodeProc]]:
    """Nodes a test SIGSTOPs: continued afterwards, so they can be stopped."""
    nodes: list[NodeProc] = []
    yield nodes
    for node in nodes:
        os.kill(node.pid, signal.SIGCONT)


def test_a_stopped_peer_does_not_hold_up_the_jobs_list(mesh2, secret, tmp_path, stopped):
    n1, n2 = mesh2
    url = dashboard(n1)
    with mesh.Client([n.address for n in mesh2], secret) as c:
        jids, where, gate = running_on_both(c, tmp_path)
        gate.touch()
        c.join(jids)
    assert api(url + "api/jobs")["total"] == len(jids)

    stopped.append(n2)
    os.kill(n2.pid, signal.SIGSTOP)  # alive to the kernel, deaf to its peers
    page = api(url + "api/jobs")
    assert page["missing"] == ["n2"]
    mine = sorted(j for j in jids if where[j] == "n1")
    assert sorted(j["jid"] for j in page["jobs"]) == mine
    assert page["total"] == len(mine) and page["by_node"] == {"n1": len(mine)}
    theirs = next(j for j in jids if where[j] == "n2")
    status, _, body = http(url + f"api/jobs/{theirs}")
    assert status == 404 and b"no answer from n2" in body
    assert api(url + f"api/jobs/{mine[0]}")["node"] == "n1"  # its own jobs still show

    os.kill(n2.pid, signal.SIGCONT)  # back: its jobs are listed again
    wait_until(lambda: api(url + "api/jobs")["total"] == len(jids), timeout_s=30,
               what="n1 to list n2's jobs again")  # fmt: skip
