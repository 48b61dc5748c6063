"""The console scripts: ``mesh-node`` (start, listening line, signals, secret file) and
``mesh`` (secret, and jobs by id from a shell)."""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import square, started_then_gated, wait_until
from conftest import alive, children

import mesh

BIN = Path(sys.executable).parent
MESH_NODE = str(BIN / "mesh-node")
MESH = str(BIN / "mesh")
LINE = re.compile(r"mesh-node (\S+) listening on 127\.0\.0\.1:(\d+)\n")


def inverse(x):
    return 1 / x


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("MESH_SECRET", "MESH_SECRET_FILE", "MESH_PEERS")}  # fmt: skip
    env.update(extra)
    return env


class Started:
    def __init__(self, proc: subprocess.Popen[bytes], line: str) -> None:
        self.proc = proc
        self.line = line
        m = LINE.fullmatch(line)
        assert m, f"mesh-node printed {line!r}"
        self.name = m.group(1)
        self.address = f"127.0.0.1:{m.group(2)}"


@pytest.fixture
def run_node(tmp_path: Path) -> Iterator:
    started: list[subprocess.Popen[bytes]] = []

    def run(name: str, env: dict[str, str], workers: int = 1) -> Started:
        proc = subprocess.Popen(
            [MESH_NODE, "--host", "127.0.0.1", "--port", "0", "--name", name,
             "--workers", str(workers), "--data-dir", str(tmp_path / f"data-{name}")],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        )  # fmt: skip
        started.append(proc)
        assert proc.stdout is not None
        return Started(proc, proc.stdout.readline().decode())

    yield run
    for proc in started:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        proc.communicate()


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_mesh_node_prints_one_line_serves_and_exits_0_on_signal(run_node, secret, sig):
    node = run_node("clinode", clean_env(MESH_SECRET=secret), workers=2)
    assert node.name == "clinode"
    wait_until(lambda: len([p for p in children(node.proc.pid) if alive(p)]) == 2,
               what="two workers")  # fmt: skip
    workers = [p for p in children(node.proc.pid) if alive(p)]
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(square, 5), timeout=30) == 25

    node.proc.send_signal(sig)
    out, err = node.proc.communicate(timeout=20)
    assert node.proc.returncode == 0, err.decode(errors="replace")
    assert out == b"", f"more than one line on stdout: {out!r}"
    assert b"Traceback" not in err, err.decode(errors="replace")
    for pid in workers:
        wait_until(lambda pid=pid: not alive(pid), what=f"worker {pid} to exit")


def test_mesh_node_creates_the_secret_file_and_mesh_secret_prints_it(run_node, tmp_path):
    config = tmp_path / "config"
    env = clean_env(XDG_CONFIG_HOME=str(config))
    node = run_node("fresh", env)
    path = config / "lanmesh" / "secret"
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not path.parent.stat().st_mode & (stat.S_IWGRP | stat.S_IWOTH)
    secret = path.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{64}", secret)

    printed = subprocess.run([MESH, "secret"], env=env, capture_output=True, timeout=30)
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.decode() == secret + "\n"

    as_json = subprocess.run([MESH, "--json", "secret"], env=env, capture_output=True, timeout=30)
    assert json.loads(as_json.stdout) == {"secret": secret, "file": str(path)}

    # that secret is the node's: a client holding it gets work done, another does not
    with mesh.Client([node.address], printed.stdout.decode().strip()) as c:
        assert c.result(c.call(square, 6), timeout=30) == 36
    with pytest.raises(mesh.AuthenticationError):
        mesh.Client([node.address], os.urandom(32).hex())  # strong, and wrong

    # a second start keeps the secret it created
    node.proc.send_signal(signal.SIGTERM)
    node.proc.communicate(timeout=20)
    assert node.proc.returncode == 0
    again = run_node("fresh", env)
    assert path.read_text().strip() == secret
    with mesh.Client([again.address], secret) as c:
        assert c.result(c.call(square, 7), timeout=30) == 49


def mesh_cli(nodes, secret: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = clean_env(MESH_PEERS=",".join(n.address for n in nodes), MESH_SECRET=secret)
    return subprocess.run([MESH, *args], env=env, capture_output=True, text=True, timeout=60)


def test_mesh_status_and_result_by_job_id_from_a_shell(nodes, client, secret):
    jid = client.call(square, 12)
    assert client.result(jid) == 144

    r = mesh_cli(nodes, secret, "status", jid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{jid}\tdone\n"

    r = mesh_cli(nodes, secret, "result", jid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{jid}\t144\n"

    r = mesh_cli(nodes, secret, "--json", "status", jid)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {jid: "done"}

    r = mesh_cli(nodes, secret, "--json", "result", jid)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {jid: 144}


def big_bytes(n_bytes):
    return b"x" * n_bytes


def test_mesh_status_of_a_finished_job_with_a_large_result(nodes, client, secret):
    jid = client.call(big_bytes, 8 << 20)
    assert len(client.result(jid, timeout=30)) == 8 << 20
    r = mesh_cli(nodes, secret, "status", jid)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{jid}\tdone\n"


def test_mesh_cli_running_and_failed_jobs(nodes, client, secret, tmp_path):
    started, gate = tmp_path / "started", tmp_path / "gate"
    running = client.call(started_then_gated, str(started), str(gate), "late")
    failed = client.call(inverse, 0)
    wait_until(started.exists, what="job to start")
    client.join(failed, ignore_errors=True)

    r = mesh_cli(nodes, secret, "--json", "status", running, failed)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {running: "processing", failed: "error"}

    r = mesh_cli(nodes, secret, "result", failed)
    assert r.returncode == 1
    assert r.stdout.startswith(f"{failed}\t")
    assert "ZeroDivisionError" in r.stdout

    gate.touch()
    r = mesh_cli(nodes, secret, "result", running)
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"{running}\t'late'\n"


def test_mesh_cli_errors(nodes, secret):
    r = mesh_cli(nodes, secret, "status", "nosuch-1")
    assert r.returncode == 2
    assert r.stderr.startswith("mesh: ") and "nosuch-1" in r.stderr

    r = mesh_cli(nodes, os.urandom(32).hex(), "status", "nosuch-1")  # strong, and wrong
    assert r.returncode == 2
    assert nodes[0].address in r.stderr or nodes[1].address in r.stderr


def test_mesh_nodes_lists_nodes_in_table_and_json(nodes, secret):
    import json
    import os
    import subprocess

    env = dict(os.environ, MESH_PEERS=",".join(n.address for n in nodes), MESH_SECRET=secret)
    table = subprocess.run([sys.executable, "-m", "mesh.client._cli", "nodes"], env=env,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    lines = table.strip().splitlines()
    assert lines[0].split() == ["name", "address", "workers", "running", "queued", "connected"]
    assert sorted(line.split()[0] for line in lines[1:]) == ["n1", "n2"]
    out = subprocess.run([sys.executable, "-m", "mesh.client._cli", "--json", "nodes"], env=env,
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    rows = json.loads(out)
    assert {r["address"] for r in rows} == {n.address for n in nodes}
    assert all(r["workers"] == 2 and r["connected"] for r in rows)
