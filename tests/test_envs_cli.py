"""What the nodes' job environments are, and rebuilding them: ``mesh.env_info``,
``mesh.env``, ``mesh envs [--json] [--rebuild ...]``, and an idle environment's workers
stopping. Real nodes, real venvs and pip, offline (wheels made by tests/test_envs.py's
helper, pip run with ``--no-index``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from _helpers import run_cli
from conftest import NodeProc
from test_envs import envs_index, make_wheel, toy_version

import mesh

NO_SUCH = "lanmesh-no-such-package==9.9"


def offline(wheels: Path, **more: str) -> dict[str, str]:
    return {"MESH_PIP_ARGS": f"--no-index --find-links {wheels}", **more}


@pytest.fixture
def wheels(tmp_path: Path) -> Path:
    make_wheel(tmp_path / "wheels", "lmtoy", "1.0")
    return tmp_path / "wheels"


@pytest.fixture
def n1(node_factory: Callable[..., NodeProc], wheels: Path) -> NodeProc:
    """A node named n1 that installs job environments from ``wheels`` only."""
    return node_factory(name="n1", env=offline(wheels))


@pytest.fixture
def cli(
    secret: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> Iterator[Callable[..., tuple[int, str, str]]]:
    """``cli(node, *ARGS)``: run ``mesh ARGS`` here against ``node``: (exit, stdout, stderr)."""
    monkeypatch.setenv("MESH_SECRET", secret)

    def run(node: NodeProc, *args: str) -> tuple[int, str, str]:
        monkeypatch.setenv("MESH_PEERS", node.address)
        return run_cli(capsys, *args)

    yield run


def test_env_normalises_a_named_environment(tmp_path: Path) -> None:
    wheel = make_wheel(tmp_path / "dist", "lmtoy", "1.0")
    toy = mesh.env("LMToy == 1.0", ["numpy>=2", "numpy >= 2"])
    assert toy == ("lmtoy==1.0", "numpy>=2")
    assert mesh.env(toy, "zlib-ng") == ("lmtoy==1.0", "numpy>=2", "zlib-ng")
    assert mesh.env(str(wheel)) == (str(wheel),)
    with pytest.raises(mesh.ConfigurationError, match="no such file"):
        mesh.env(str(tmp_path / "missing-1.0-py3-none-any.whl"))
    with pytest.raises(TypeError):
        mesh.env([1])  # type: ignore[list-item]


def test_env_info_shows_ready_and_failed_environments(n1: NodeProc, secret: str) -> None:
    node = n1
    toy = mesh.env("LMToy==1.0")
    with mesh.Client([node.address], secret) as c:
        assert c.env_info() == []
        t0 = time.time()
        assert c.result(c.call(toy_version, _env=toy), timeout=60) == "1.0"
        with pytest.raises(mesh.EnvBuildFailed):
            c.result(c.call(toy_version, _env=[NO_SUCH]), timeout=60)
        infos = {i.status: i for i in c.env_info()}
    assert set(infos) == {"ready", "failed"}
    ready, failed = infos["ready"], infos["failed"]
    assert ready.node == failed.node == "n1"
    assert ready.requirements == ("lmtoy==1.0",) and ready.builds == 1
    assert ready.size_bytes > 0 and ready.last_used >= t0 - 1 and ready.build_s > 0
    assert ready.error == "" and ready.key in envs_index(node)
    assert failed.requirements == (NO_SUCH,) and failed.builds == 1
    assert "No matching distribution" in failed.error, failed.error


def test_mesh_envs_table_and_json(
    n1: NodeProc, secret: str, cli: Callable[..., tuple[int, str, str]]
) -> None:
    node = n1
    code, out, _ = cli(node, "envs")
    assert (code, out.strip()) == (0, "no job environments on the reachable nodes")
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(toy_version, _env=["lmtoy==1.0"]), timeout=60) == "1.0"
        with pytest.raises(mesh.EnvBuildFailed):
            c.result(c.call(toy_version, _env=[NO_SUCH]), timeout=60)
    code, out, err = cli(node, "envs")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["node", "key", "requirements", "status", "size", "last", "use",
                                "builds"]  # fmt: skip
    rows = {line.split()[2]: line.split() for line in lines[1:3]}
    keys = {e["requirements"][0]: k for k, e in envs_index(node).items()}
    ready, failed = rows["lmtoy==1.0"], rows[NO_SUCH]
    assert ready[:2] == ["n1", keys["lmtoy==1.0"][:12]] and ready[3] == "ready"
    assert ready[-1] == failed[-1] == "1" and failed[3] == "failed"
    assert f"--- n1 {keys[NO_SUCH][:12]}: build failed ---" in out
    assert "No matching distribution" in out

    code, out, _ = cli(node, "envs", "--json")
    assert code == 0
    data = {e["requirements"][0]: e for e in json.loads(out)}
    assert data["lmtoy==1.0"]["status"] == "ready" and data["lmtoy==1.0"]["size_bytes"] > 0
    assert data["lmtoy==1.0"]["key"] == keys["lmtoy==1.0"] and data["lmtoy==1.0"]["builds"] == 1
    assert "No matching distribution" in data[NO_SUCH]["error"]


def test_rebuild_makes_the_next_job_build_again(
    n1: NodeProc, secret: str, wheels: Path, cli: Callable[..., tuple[int, str, str]]
) -> None:
    node = n1
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(toy_version, _env=["lmtoy==1.0"]), timeout=60) == "1.0"
        with pytest.raises(mesh.EnvBuildFailed, match="No matching distribution"):
            c.result(c.call(toy_version, _env=["lmtoy==3.0"]), timeout=60)
        (ready_key,) = [i.key for i in c.env_info() if i.status == "ready"]

        # A ready environment, named by its key prefix: removed, rebuilt by the next job.
        code, out, err = cli(node, "envs", "--rebuild", ready_key[:8])
        assert code == 0, err
        assert out.strip() == f"n1  {ready_key[:12]}  removed: its next job builds it again"
        assert ready_key not in envs_index(node)
        assert not (node.data_dir / "envs" / ready_key).exists()
        assert c.result(c.call(toy_version, _env=["lmtoy==1.0"]), timeout=60) == "1.0"
        assert envs_index(node)[ready_key]["builds"] == 2

        # A failed one stays failed (no pip run) until --rebuild, here by requirement.
        make_wheel(wheels, "lmtoy", "3.0")
        with pytest.raises(mesh.EnvBuildFailed, match="No matching distribution"):
            c.result(c.call(toy_version, _env=["lmtoy==3.0"]), timeout=60)
        code, out, err = cli(node, "envs", "--json", "--rebuild", "LMToy == 3.0")
        assert code == 0, err
        (done,) = json.loads(out)["rebuilt"]
        assert (done["node"], done["what"], done["outcome"]) == ("n1", "LMToy == 3.0", "forgotten")
        assert c.result(c.call(toy_version, _env=["lmtoy==3.0"]), timeout=60) == "3.0"
        infos = {i.requirements: i for i in c.env_info()}
        assert infos[("lmtoy==3.0",)].status == "ready" and infos[("lmtoy==3.0",)].builds == 2
        assert infos[("lmtoy==1.0",)].builds == 2

    code, out, err = cli(node, "envs", "--rebuild", "nothing-like-it")
    assert code == 2 and out == ""
    assert "no node has an environment matching 'nothing-like-it'" in err


def test_an_idle_environment_stops_its_workers_and_restarts(
    node_factory: Callable[..., NodeProc], secret: str, wheels: Path
) -> None:
    node = node_factory(name="n1", workers=2, env=offline(wheels, MESH_ENV_IDLE="2"))
    node.wait_workers(2)
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(toy_version, _env=["lmtoy==1.0"]), timeout=60) == "1.0"
        assert len(node.worker_pids()) == 4  # the node's pool and the environment's
        node.wait_workers(2, timeout_s=10)  # idle for 2 s: its pool stopped
        assert c.result(c.call(toy_version, _env=["lmtoy==1.0"]), timeout=60) == "1.0"
        (info,) = c.env_info()
        assert info.status == "ready" and info.builds == 1  # restarted, not rebuilt
