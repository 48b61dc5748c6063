"""``mesh files ls|put|get|rm|info``: the mesh file store from a shell, in table and
``--json`` form, against two real nodes, with their exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from _helpers import run_cli, table, wait_until
from blake3 import blake3
from conftest import NodeProc
from mesh.client._cli import main

import mesh

ACTIONS = ["ls", "put", "get", "rm", "info"]


@pytest.fixture
def nodes(node_factory, secret, tmp_path) -> list[NodeProc]:
    """Two nodes, n2 naming n1, whose file links are up: a put lands on both."""
    n1 = node_factory(name="n1", workers=1)
    n2 = node_factory(name="n2", workers=1, extra=("--peer", n1.address))
    with mesh.Client([n1.address, n2.address], secret) as c:

        def both_hold_a_probe() -> bool:
            return len(c.files.putf(b"probe", "probe", replicas=2).nodes) == 2

        wait_until(both_hold_a_probe, timeout_s=20, what="the nodes' file links")
        c.files.delete("probe")
    return [n1, n2]


@pytest.fixture
def cli(nodes, secret, monkeypatch, capsys):
    """Run ``mesh ARGS`` in this process against the two nodes: (exit code, stdout, stderr)."""
    monkeypatch.setenv("MESH_SECRET", secret)
    monkeypatch.setenv("MESH_PEERS", ",".join(n.address for n in nodes))

    return lambda *args: run_cli(capsys, *args)


@pytest.mark.parametrize("action", ACTIONS)
def test_every_files_action_has_help(action, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["files", action, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: mesh files {action}") and "--json" in out


def test_files_usage_errors_exit_2(capsys):
    for argv in (["files"], ["files", "cp"], ["files", "rm"], ["files", "get"],
                 ["files", "put", "a", "--replicas", "many"]):  # fmt: skip
        with pytest.raises(SystemExit) as exit_:
            main(argv)
        assert exit_.value.code == 2, argv
    assert "usage: mesh files" in capsys.readouterr().err


def test_put_ls_info_get_rm_as_tables(cli, nodes, tmp_path, monkeypatch):
    src = tmp_path / "report.txt"
    src.write_bytes(b"hello mesh files\n" * 100)  # 1700 bytes
    digest = blake3(src.read_bytes()).hexdigest()

    code, out, err = cli("files", "put", str(src), "docs/report.txt")
    assert (code, err) == (0, "")
    assert out.startswith(f"stored docs/report.txt (1.66 KiB, version {digest[:12]}) on ")
    assert sorted(out.strip().rsplit(" on ", 1)[1].split(", ")) == ["n1", "n2"]  # 2 replicas
    code, out, _ = cli("files", "put", str(src), "--replicas", "1")  # named after the file
    assert code == 0 and out.startswith("stored report.txt (1.66 KiB")

    code, out, _ = cli("files", "ls")
    rows = table(out)
    assert code == 0 and rows[0] == ["name", "size", "version", "stored", "nodes"]
    assert [r[0] for r in rows[1:]] == ["docs/report.txt", "report.txt"]
    docs = rows[1]
    assert docs[1:4] == ["1.66", "KiB", digest[:12]]  # size, version (then date, time, nodes)
    assert sorted(docs[-1].split(",")) == ["n1", "n2"]
    code, out, _ = cli("files", "ls", "docs/")
    assert code == 0 and [r[0] for r in table(out)[1:]] == ["docs/report.txt"]
    code, out, _ = cli("files", "ls", "nothing/")
    assert (code, out) == (0, "no files starting with 'nothing/' in the store\n")

    code, out, _ = cli("files", "info", "docs/report.txt")
    fields = dict(line.split(None, 1) for line in out.strip().splitlines())
    assert code == 0 and fields["name"] == "docs/report.txt"
    assert fields["size"] == "1.66 KiB (1,700 bytes)" and fields["hash"] == digest
    assert sorted(fields["nodes"].split(", ")) == ["n1", "n2"]

    monkeypatch.chdir(tmp_path)
    dest = tmp_path / "out" / "copy.txt"
    dest.parent.mkdir()
    code, out, _ = cli("files", "get", "docs/report.txt", str(dest))
    assert (code, out) == (0, f"wrote docs/report.txt to {dest} (1.66 KiB)\n")
    assert dest.read_bytes() == src.read_bytes()
    src.unlink()
    code, out, _ = cli("files", "get", "docs/report.txt")  # default: the last component, here
    assert code == 0 and (tmp_path / "report.txt").read_bytes() == dest.read_bytes()

    code, out, err = cli("files", "rm", "docs/report.txt", "report.txt")
    assert (code, out, err) == (0, "removed docs/report.txt\nremoved report.txt\n", "")
    code, out, _ = cli("files", "ls")
    assert (code, out) == (0, "no files in the store\n")


def test_files_json(cli, tmp_path):
    src = tmp_path / "data.bin"
    payload = os.urandom(5000)
    src.write_bytes(payload)
    digest = blake3(payload).hexdigest()

    code, out, _ = cli("files", "put", "--json", str(src), "a/data.bin")
    stored = json.loads(out)
    assert code == 0 and stored["name"] == "a/data.bin" and stored["size"] == 5000
    assert stored["hash"] == digest and sorted(stored["nodes"]) == ["n1", "n2"]
    other = tmp_path / "other.bin"
    other.write_bytes(payload[::-1])  # new content: one copy (the same content is held twice)
    code, out, _ = cli("--json", "files", "put", str(other), "b/data.bin", "--replicas", "1")
    assert code == 0 and len(json.loads(out)["nodes"]) == 1

    code, out, _ = cli("files", "ls", "--json")
    listed = json.loads(out)
    assert code == 0 and [f["name"] for f in listed] == ["a/data.bin", "b/data.bin"]
    assert listed[0] == stored and listed[1]["hash"] == blake3(payload[::-1]).hexdigest()
    code, out, _ = cli("files", "ls", "b/", "--json")
    assert [f["name"] for f in json.loads(out)] == ["b/data.bin"]
    code, out, _ = cli("files", "ls", "c/", "--json")
    assert (code, json.loads(out)) == (0, [])

    code, out, _ = cli("files", "info", "--json", "a/data.bin")
    assert (code, json.loads(out)) == (0, stored)

    dest = tmp_path / "back.bin"
    code, out, _ = cli("files", "get", "--json", "b/data.bin", str(dest))
    assert (code, json.loads(out)) == (0, {"name": "b/data.bin", "path": str(dest), "size": 5000})
    assert dest.read_bytes() == payload[::-1]

    code, out, err = cli("files", "rm", "--json", "a/data.bin", "nope", "b/data.bin")
    assert code == 2  # one name was missing: the others are removed all the same
    assert json.loads(out) == {"removed": ["a/data.bin", "b/data.bin"], "missing": ["nope"]}
    assert err.startswith("mesh: no file 'nope' in the mesh file store") and err.count("\n") == 1
    code, out, _ = cli("files", "ls", "--json")
    assert (code, json.loads(out)) == (0, [])


def test_missing_names_and_paths_exit_2_with_the_message(cli, tmp_path, secret, nodes):
    for argv in (("files", "info", "ghost"), ("files", "get", "ghost", str(tmp_path / "g")),
                 ("files", "rm", "ghost"), ("files", "info", "--json", "ghost")):  # fmt: skip
        code, out, err = cli(*argv)
        assert (code, out) == (2, ""), argv
        assert err.startswith("mesh: no file 'ghost' in the mesh file store"), (argv, err)
    assert not (tmp_path / "g").exists()  # a failed get leaves nothing behind

    code, out, err = cli("files", "put", str(tmp_path / "absent.txt"))
    assert (code, out) == (2, "")
    assert err.startswith("mesh: cannot read ") and "absent.txt" in err
    code, out, err = cli("files", "put", __file__, "--replicas", "0")
    assert (code, out, err) == (2, "", "mesh: --replicas must be at least 1\n")

    # what the CLI stored, the API sees (one store, not a twin of it)
    with mesh.Client([n.address for n in nodes], secret) as c:
        assert c.files.list() == []
        c.files.putf(b"from the api", "api.txt")
    code, out, _ = cli("files", "ls")
    assert code == 0 and table(out)[1][:3] == ["api.txt", "12", "B"]


def test_the_mesh_script_runs_files(nodes, secret, tmp_path):
    mesh_bin = str(Path(sys.executable).parent / "mesh")
    env = {"MESH_SECRET": secret, "PATH": "/usr/bin:/bin", "HOME": "/nonexistent",
           "MESH_PEERS": ",".join(n.address for n in nodes)}  # fmt: skip
    src = tmp_path / "x.txt"
    src.write_text("x")

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([mesh_bin, *args], capture_output=True, text=True, timeout=60,
                              env=env)  # fmt: skip

    proc = run("files", "put", str(src))
    assert proc.returncode == 0, proc.stderr
    proc = run("--json", "files", "ls")
    assert proc.returncode == 0, proc.stderr
    assert [f["name"] for f in json.loads(proc.stdout)] == ["x.txt"]
    proc = run("files", "info", "nope")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("mesh: no file 'nope' in the mesh file store")
