"""Job environments (``_env``) on real nodes, real venvs and real pip, all offline:
the wheels are made here, and the nodes run pip with ``--no-index``."""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import mesh
from tests.conftest import NodeProc


def make_wheel(dest: Path, name: str, version: str) -> Path:
    """A pure-Python wheel of package ``name`` whose ``VERSION`` is ``version``."""
    dist = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n",
        f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: lanmesh-tests\n"
        "Root-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
        record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
    record.append(f"{dist}/RECORD,,")
    files[f"{dist}/RECORD"] = "\n".join(record) + "\n"
    dest.mkdir(parents=True, exist_ok=True)
    out = dest / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


def toy_version() -> str:
    import lmtoy  # type: ignore[import-not-found]

    return str(lmtoy.VERSION)


def envs_index(node: NodeProc) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((node.data_dir / "envs" / "index.json").read_text())
    return data


OFFLINE = {"MESH_PIP_ARGS": "--no-index"}


def test_pushed_wheel_runs_and_the_env_is_reused(
    node_factory: Callable[..., NodeProc], secret: str, tmp_path: Path
) -> None:
    node = node_factory(name="n1", env=OFFLINE)
    wheel = make_wheel(tmp_path / "dist", "lmtoy", "1.0")
    with mesh.Client([node.address], secret) as c:
        with pytest.raises(mesh.MissingModule):  # the node lacks it...
            c.result(c.call(toy_version), timeout=30)
        t0 = time.monotonic()
        assert c.result(c.call(toy_version, _env=[str(wheel)]), timeout=60) == "1.0"
        first_s = time.monotonic() - t0
        t0 = time.monotonic()
        assert c.result(c.call(toy_version, _env=[str(wheel)]), timeout=60) == "1.0"
        cached_s = time.monotonic() - t0
        assert c.files.exists(f".lanmesh-env/{hashlib.sha256(wheel.read_bytes()).hexdigest()}"
                              f"/{wheel.name}")  # fmt: skip
    (entry,) = envs_index(node).values()
    assert entry["status"] == "ready" and entry["builds"] == 1
    print(f"\nfirst job with a new _env {first_s:.2f} s, next {cached_s:.3f} s")


def test_concurrent_jobs_cause_one_build(
    node_factory: Callable[..., NodeProc], secret: str, tmp_path: Path
) -> None:
    make_wheel(tmp_path / "wheels", "lmtoy", "1.0")
    node = node_factory(
        name="n1", env={"MESH_PIP_ARGS": f"--no-index --find-links {tmp_path}/wheels"}
    )
    with mesh.Client([node.address], secret) as c:
        jids = c.map(lambda _: toy_version(), range(8), _env=["lmtoy==1.0"])
        assert c.result(jids, timeout=60) == ["1.0"] * 8
    (entry,) = envs_index(node).values()
    assert entry["builds"] == 1
    (log,) = (node.data_dir / "envs").glob("*/build.log")
    assert log.read_text().count("building") == 1


def test_unresolvable_requirement_fails_fast_and_is_cached(
    node_factory: Callable[..., NodeProc], secret: str
) -> None:
    node = node_factory(name="n1", env=OFFLINE)
    with mesh.Client([node.address], secret) as c:
        t0 = time.monotonic()
        with pytest.raises(mesh.EnvBuildFailed) as info:
            c.result(c.call(toy_version, _env=["lanmesh-no-such-package==9.9"]), timeout=60)
        first_s = time.monotonic() - t0
        msg = str(info.value)
        assert "node n1" in msg and "No matching distribution" in msg, msg
        assert first_s < 20
        assert c.result(c.call(pow, 2, 10), timeout=30) == 1024  # the node is fine
        t0 = time.monotonic()
        with pytest.raises(mesh.EnvBuildFailed, match="No matching distribution"):
            c.result(c.call(toy_version, _env=["lanmesh-no-such-package==9.9"]), timeout=60)
        assert time.monotonic() - t0 < 1.0  # from the cache
    (entry,) = envs_index(node).values()
    assert entry["status"] == "failed" and entry["builds"] == 1


def test_two_versions_side_by_side(
    node_factory: Callable[..., NodeProc], secret: str, tmp_path: Path
) -> None:
    make_wheel(tmp_path / "wheels", "lmtoy", "1.0")
    make_wheel(tmp_path / "wheels", "lmtoy", "2.0")
    node = node_factory(
        name="n1", env={"MESH_PIP_ARGS": f"--no-index --find-links {tmp_path}/wheels"}
    )
    with mesh.Client([node.address], secret) as c:
        one = c.map(lambda _: toy_version(), range(4), _env=["lmtoy==1.0"])
        two = c.map(lambda _: toy_version(), range(4), _env=["lmtoy==2.0"])
        assert c.result(one + two, timeout=60) == ["1.0"] * 4 + ["2.0"] * 4
    assert sorted(e["requirements"][0] for e in envs_index(node).values()) == [
        "lmtoy==1.0",
        "lmtoy==2.0",
    ]


def test_eviction_past_the_budget_and_rebuild(
    node_factory: Callable[..., NodeProc], secret: str, tmp_path: Path
) -> None:
    make_wheel(tmp_path / "wheels", "lmtoy", "1.0")
    make_wheel(tmp_path / "wheels", "lmtoy", "2.0")
    node = node_factory(
        name="n1",
        env={"MESH_PIP_ARGS": f"--no-index --find-links {tmp_path}/wheels"},
        extra=("--env-budget", "1"),  # one byte: only the newest environment stays
    )
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(toy_version, _env=["lmtoy==1.0"]), timeout=60) == "1.0"
        (one_key,) = envs_index(node)
        assert c.result(c.call(toy_version, _env=["lmtoy==2.0"]), timeout=60) == "2.0"
        assert one_key not in envs_index(node)  # the least recently used went
        assert not (node.data_dir / "envs" / one_key).exists()
        assert c.result(c.call(toy_version, _env=["lmtoy==1.0"]), timeout=60) == "1.0"
        assert envs_index(node)[one_key]["builds"] == 1  # rebuilt from scratch
        assert list(envs_index(node)) == [one_key]


def test_requirement_sets_are_normalised() -> None:
    from mesh.node._envs import EnvCache, normalise

    assert normalise(["NumPy >= 2", "python_Levenshtein==0.25.1", "numpy>=2", " "]) == (
        "numpy>=2",
        "python-levenshtein==0.25.1",
    )
    assert EnvCache.key(["b", "A"]) == EnvCache.key(["a", "b", "a"]) != EnvCache.key(["a"])
