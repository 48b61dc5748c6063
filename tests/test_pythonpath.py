"""A client whose packages are on PYTHONPATH, not in site-packages (issue 14 §5).

The client here is the bare interpreter (``python -S``: no site-packages at all) with
PYTHONPATH naming a folder of COPIES of lanmesh's dependencies (as ``pip install
--target`` leaves them: packages beside their ``*.dist-info``) and lanmesh laid out as it
installs. Copies, not symlinks: a symlink would resolve into the venv's site-packages
and hide the case. Those packages must travel by reference; the user's module beside
the script must still travel by value, to real nodes that cannot see it.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from test_local_modules import assert_cannot_see

ROOT = Path(__file__).resolve().parent.parent


def requirements_closure(name: str) -> list[importlib.metadata.Distribution]:
    """``name``'s distribution and every one it needs (no extras), as installed here."""
    out: dict[str, importlib.metadata.Distribution] = {}
    todo = [name]
    while todo:
        dist = importlib.metadata.distribution(todo.pop())
        key = dist.metadata["Name"].lower().replace("_", "-")
        if key in out:
            continue
        out[key] = dist
        for line in dist.requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(out.values())


def copy_distribution(dist: importlib.metadata.Distribution, dest: Path) -> None:
    """Copy the files a distribution installed (its RECORD) into ``dest``."""
    root = Path(str(dist.locate_file("")))
    for f in dist.files or ():
        if f.parts[0] == ".." or f.parts[0] == "__pycache__" or "__pycache__" in f.parts:
            continue  # scripts in bin/, and byte code the interpreter makes again
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)


def mesh_layout(dest: Path) -> None:
    """lanmesh as its wheel lays it out (client/ and node/ inside mesh/), copied."""
    skip = shutil.ignore_patterns("__pycache__")
    shutil.copytree(ROOT / "mesh", dest / "mesh", ignore=skip)
    shutil.copytree(ROOT / "node", dest / "mesh" / "node", ignore=skip)
    shutil.copytree(ROOT / "client", dest / "mesh" / "client", ignore=skip)


@pytest.fixture(scope="module")
def deps_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("pythonpath")
    for dist in requirements_closure("lanmesh"):
        if dist.metadata["Name"] != "lanmesh":  # an editable install: laid out below
            copy_distribution(dist, dest)
    mesh_layout(dest)
    return dest


def base_python() -> str:
    """The interpreter the venv was made from: it has none of the venv's packages."""
    return getattr(sys, "_base_executable", None) or sys.executable


SCRIPT = textwrap.dedent(
    """
    import sys

    import cloudpickle
    import mesh
    import shapes  # the user's own module, beside this script

    def square(x):
        return x * x

    deps = sys.argv[1]
    assert sys.flags.no_site, "site-packages must be out of the picture"
    for module in (cloudpickle, mesh):
        assert module.__file__.startswith(deps), module.__file__
    print("main", mesh.result(mesh.map(square, range(5)), timeout=60))
    print("beside", mesh.result(mesh.call(shapes.area, 3, 4), timeout=60))
    print("kw", mesh.result(mesh.call(shapes.Box(2).scaled, factor=5), timeout=60).side)
    """
)

SHAPES = textwrap.dedent(
    """
    class Box:
        def __init__(self, side):
            self.side = side

        def scaled(self, factor):
            return Box(self.side * factor)


    def area(w, h):
        return w * h
    """
)


def test_a_client_with_its_packages_on_pythonpath_runs_jobs(
    nodes, secret, deps_dir: Path, tmp_path: Path
) -> None:
    project = tmp_path / "project"
    project.mkdir()
    (project / "job.py").write_text(SCRIPT)
    (project / "shapes.py").write_text(SHAPES)
    for node in nodes:
        assert_cannot_see(node, project)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env.update(
        PYTHONPATH=str(deps_dir),
        MESH_PEERS=",".join(n.address for n in nodes),
        MESH_SECRET=secret,
    )
    proc = subprocess.run(
        [base_python(), "-S", "-s", str(project / "job.py"), str(deps_dir)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["main [0, 1, 4, 9, 16]", "beside 12", "kw 10"]
