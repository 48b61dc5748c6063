"""The ``mesh`` command's newer commands (token, jobs, job, kill, files, demo, --help of
each), in table and ``--json`` form, against real nodes, with their exit codes."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
import test_dashboard
from _helpers import run_cli, started_then_gated, table, wait_until
from mesh.client._cli import main
from test_dashboard import dashboard

from mesh._auth import dashboard_token

COMMANDS = ["secret", "token", "nodes", "jobs", "job", "status", "result", "info", "kill",
            "files", "demo"]  # fmt: skip


def fails(x):
    print("about to fail")
    raise KeyError(x)


def square(x):
    return x * x


@pytest.fixture
def cli(nodes, secret, monkeypatch, capsys):
    """Run ``mesh ARGS`` in this process against the two nodes: (exit code, stdout, stderr)."""
    monkeypatch.setenv("MESH_SECRET", secret)
    monkeypatch.setenv("MESH_PEERS", ",".join(n.address for n in nodes))
    monkeypatch.setenv("MESH_DASHBOARD", ",".join(dashboard(n) for n in nodes))

    return lambda *args: run_cli(capsys, *args)


@pytest.mark.parametrize("command", COMMANDS)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mesh {command}") and "--json" in out


def test_usage_errors_exit_2(capsys):
    for argv in (["frobnicate"], ["kill"], ["jobs", "--limit", "many"], []):
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    assert "usage: mesh" in capsys.readouterr().err


def test_token_is_the_dashboards(cli, secret):
    assert cli("token") == (0, dashboard_token(secret.encode()) + "\n", "")
    code, out, _ = cli("token", "--json")
    assert code == 0 and json.loads(out) == {"token": dashboard_token(secret.encode())}


def test_nodes_table_and_json(cli, nodes):
    code, out, _ = cli("nodes")
    rows = table(out)
    assert code == 0 and rows[0] == ["name", "address", "workers", "running", "queued", "connected"]
    assert sorted(r[0] for r in rows[1:]) == ["n1", "n2"]
    code, out, _ = cli("nodes", "--json")  # --json after the command works too
    assert code == 0 and {r["address"] for r in json.loads(out)} == {n.address for n in nodes}


def test_jobs_lists_every_dashboards_jobs_with_filters(cli, client):
    good = client.map(square, range(6), _label="sq")
    bad = client.call(fails, 1, _label="bad")
    assert client.result(good) == [0, 1, 4, 9, 16, 25]
    client.join(bad, ignore_errors=True)

    code, out, _ = cli("jobs")
    rows = table(out)
    assert code == 0
    assert rows[0] == ["jid", "status", "node", "function", "label", "client", "submitted",
                       "run", "time"]  # fmt: skip
    # both nodes' jobs (newest first by the nodes' own receipt times: checked below)
    assert sorted(r[0] for r in rows[1:]) == sorted([*good, bad])
    assert {r[2] for r in rows[1:]} <= {"n1", "n2"}
    listed = [r[0] for r in rows[1:]]

    code, out, _ = cli("jobs", "--json")
    submitted = [j["submitted"] for j in json.loads(out)["jobs"]]
    assert submitted == sorted(submitted, reverse=True)

    code, out, _ = cli("jobs", "--json", "--label", "sq")
    data = json.loads(out)
    assert code == 0 and data["total"] == 6
    assert sorted(j["jid"] for j in data["jobs"]) == sorted(good)
    assert all(j["status"] == "done" and j["label"] == "sq" for j in data["jobs"])

    code, out, _ = cli("--json", "jobs", "--status", "error")
    assert [j["jid"] for j in json.loads(out)["jobs"]] == [bad]
    code, out, _ = cli("jobs", "--limit", "2", "--offset", "1")
    assert [r[0] for r in table(out)[1:3]] == listed[1:3]
    assert "(2 of 7 jobs" in out
    code, out, _ = cli("jobs", "--status", "running")
    assert code == 2 and out == ""


mesh2 = test_dashboard.mesh2  # two nodes that know each other


def test_jobs_from_one_dashboard_lists_the_whole_mesh(mesh2, secret, monkeypatch, capsys):
    import mesh

    n1, n2 = mesh2  # nodes that know each other
    monkeypatch.setenv("MESH_SECRET", secret)
    monkeypatch.delenv("MESH_DASHBOARD", raising=False)
    with mesh.Client([n.address for n in mesh2], secret, name="wide") as c:
        jids = c.map(square, range(40), _label="sq")
        assert c.result(jids) == [x * x for x in range(40)]
        where = {i.jid: i.node for i in c.info(jids)}

    def jobs(*args: str) -> dict:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(["jobs", "--json", "--limit", "100", *args])
        assert exit_.value.code == 0
        return json.loads(capsys.readouterr().out)

    one = jobs("--dashboard", dashboard(n1))
    assert one["total"] == 40 and one["missing"] == []
    assert {j["jid"]: j["node"] for j in one["jobs"]} == where
    # both dashboards list the same jobs: each once, counted once
    both = jobs("--dashboard", f"{dashboard(n1)},{dashboard(n2)}")
    assert both["total"] == 40 and [j["jid"] for j in both["jobs"]] == [
        j["jid"] for j in one["jobs"]
    ]
    paged = jobs("--dashboard", dashboard(n2), "--offset", "5", "--limit", "10")
    assert [j["jid"] for j in paged["jobs"]] == [j["jid"] for j in one["jobs"][5:15]]
    assert jobs("--dashboard", dashboard(n1), "--dashboard", dashboard(n2), "--offset", "5",
                "--limit", "10")["jobs"] == paged["jobs"]  # fmt: skip
    with pytest.raises(SystemExit) as exit_:
        main(["jobs", "--dashboard", dashboard(n2), "--label", "sq", "--limit", "3"])
    out = capsys.readouterr().out
    assert exit_.value.code == 0 and "(3 of 40 jobs" in out
    assert {r[2] for r in table(out)[1:4]} <= {"n1", "n2"}


def test_jobs_errors_exit_2(cli, nodes, monkeypatch, tmp_path):
    code, _, err = cli("jobs", "--dashboard", "http://127.0.0.1:1/")
    assert code == 2 and "no dashboard at http://127.0.0.1:1/" in err
    # without --dashboard/MESH_DASHBOARD: the URL this user's node wrote, in its data dir
    monkeypatch.delenv("MESH_DASHBOARD")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path))
    (tmp_path / "lanmesh").mkdir()
    (tmp_path / "lanmesh" / "dashboard").write_text(dashboard(nodes[0]))
    code, out, _ = cli("jobs", "--json")
    assert code == 0 and json.loads(out)["total"] == 0


def test_exposed_dashboard_and_the_wrong_secret(node_factory, secret, monkeypatch, capsys):
    node = node_factory(name="exposed", extra=("--dashboard", "127.0.0.1:0"))
    monkeypatch.setenv("MESH_DASHBOARD", dashboard(node))
    monkeypatch.setenv("MESH_SECRET", secret)
    with pytest.raises(SystemExit) as exit_:
        main(["jobs", "--json"])  # the token comes from this machine's secret
    assert exit_.value.code == 0 and json.loads(capsys.readouterr().out)["total"] == 0
    monkeypatch.setenv("MESH_SECRET", secrets.token_hex(32))  # another mesh
    with pytest.raises(SystemExit) as exit_:
        main(["jobs"])
    err = capsys.readouterr().err  # it cannot prove itself to a client of another mesh
    assert exit_.value.code == 2 and "could not prove it is a dashboard of this mesh" in err


def test_job_prints_a_block_or_json(cli, client):
    bad = client.call(fails, 7, _label="bad")
    client.join(bad, ignore_errors=True)
    code, out, _ = cli("job", bad)
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines()[:11])
    assert fields["job"] == bad and fields["status"] == "error" and fields["label"] == "bad"
    assert fields["node"] in ("n1", "n2") and fields["function"].endswith("fails")
    assert "--- stdout ---\nabout to fail" in out and "KeyError: 7" in out

    code, out, _ = cli("job", "--json", bad)
    [info] = json.loads(out)
    assert info["jid"] == bad and info["status"] == "error" and info["stdout"] == "about to fail\n"
    code, _, err = cli("job", "nosuch-1")
    assert code == 2 and "nosuch-1" in err


def test_kill_and_result_table_and_json(cli, client, tmp_path):
    started, gate = tmp_path / "started", tmp_path / "gate"
    running = client.call(started_then_gated, str(started), str(gate), "never")
    wait_until(started.exists, what="the job to start")
    code, out, _ = cli("kill", running)
    assert (code, out) == (0, f"{running}\tkilled\n")
    # this client hears of it from the node's result, a moment after the CLI's kill
    wait_until(lambda: client.status(running) == "killed", what="the kill reaches the client")
    code, out, _ = cli("kill", "--json", running)
    assert code == 0 and json.loads(out) == {running: "killed"}
    code, _, err = cli("kill", "nosuch-1")
    assert code == 2 and "nosuch-1" in err

    ok = client.call(square, 9)
    code, out, _ = cli("result", ok)
    assert (code, out) == (0, f"{ok}\t81\n")
    code, out, _ = cli("result", "--json", ok, running)
    assert code == 1  # a job failed (killed)
    data = json.loads(out)
    assert data[ok] == 81 and data[running].startswith("JobKilled")


def test_files_on_an_empty_store(cli):
    # the file store's commands, in full, are in test_files_cli.py
    assert cli("files", "ls") == (0, "no files in the store\n", "")
    assert cli("files", "ls", "--json") == (0, "[]\n", "")
    code, out, err = cli("files", "rm", "nothing")
    assert (code, out) == (2, "") and err.startswith("mesh: no file 'nothing' in the mesh file")


def test_demo_estimates_pi_on_the_mesh(cli):
    code, out, _ = cli("demo", "--jobs", "4", "--samples", "20000", "--json")
    data = json.loads(out)
    assert code == 0
    assert 2.9 < data["pi"] < 3.4 and data["samples"] == 80_000 and data["jobs"] == 4
    assert sum(data["nodes"].values()) == 4 and set(data["nodes"]) <= {"n1", "n2"}
    code, out, _ = cli("demo", "--jobs", "2", "--samples", "1000")
    assert code == 0 and out.startswith("pi is about ") and "2,000 random points in 2 jobs" in out


def test_the_mesh_script_runs_the_new_commands(nodes, secret):
    env_peers = ",".join(n.address for n in nodes)
    mesh_bin = str(Path(sys.executable).parent / "mesh")
    proc = subprocess.run(
        [mesh_bin, "--peers", env_peers, "--json", "jobs", "--dashboard", dashboard(nodes[0])],
        capture_output=True, text=True, timeout=60,
        env={"MESH_SECRET": secret, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"total": 0, "offset": 0, "jobs": [], "missing": []}
