"""A user's own files never change what lanmesh runs, and its public names are ``mesh.X``.

Everyday file names (``client.py``, ``node.py``, ``mesh_anything.py``, a ``node/`` or
``client/`` folder without ``mesh/``) sit in the user script's folder, in the cwd, or
in the folder a node or a local mesh starts in. Each of them records that it was
imported (a marker file) and then raises: lanmesh must run jobs all the same and no
marker may appear. Real processes throughout (issue 14).
"""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import LISTENING, NodeProc

import mesh
import mesh.errors

USER_MODULE = """\
open({marker!r}, "w").close()
raise ImportError("the user's {what} was imported by lanmesh")
"""

# A user script: a map on the node given by argv (or on a local mesh), printed.
SCRIPT = """\
import sys

import mesh


def plus_one(x):
    return x + 1


address, secret = sys.argv[1], sys.argv[2]
client = mesh.local(nodes=1, workers=1) if address == "local" else mesh.Client([address], secret)
print(client.result(client.map(plus_one, [1, 2, 3]), timeout=60), type(client).__name__)
mesh.close()
"""
EXPECTED = "[2, 3, 4]"

LAYOUTS = {
    "modules": ("client.py", "node.py", "mesh_anything.py"),
    "packages": ("client/__init__.py", "node/__init__.py", "mesh_anything.py"),
}


def plant(folder: Path, markers: Path, layout: str, *, mesh_py: bool = False) -> None:
    """Fill ``folder`` with the user's files of ``layout`` (and a ``mesh.py``)."""
    for rel in (*LAYOUTS[layout], *(("mesh.py",) if mesh_py else ())):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        marker = markers / rel.replace("/", "_")
        path.write_text(USER_MODULE.format(marker=str(marker), what=rel))


@pytest.fixture
def markers(tmp_path: Path) -> Iterator[Path]:
    out = tmp_path / "markers"
    out.mkdir()
    yield out
    assert sorted(p.name for p in out.iterdir()) == [], "a user's file was imported"


def run_script(script: Path, cwd: Path, *args: str) -> str:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([sys.executable, str(script), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def write_script(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "user_script.py"
    script.write_text(SCRIPT)
    return script


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_the_planted_files_are_live(tmp_path, layout):
    """Control: imported, each planted file leaves its marker and raises."""
    markers = tmp_path / "control-markers"
    markers.mkdir()
    plant(tmp_path, markers, layout, mesh_py=True)
    for module in ("client", "node", "mesh_anything", "mesh"):
        proc = subprocess.run([sys.executable, "-c", f"import {module}"], cwd=tmp_path,
                              capture_output=True, text=True, timeout=60)  # fmt: skip
        assert proc.returncode != 0 and "was imported by lanmesh" in proc.stderr
    assert len(list(markers.iterdir())) == 4


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_files_beside_the_users_script(node_factory, secret, tmp_path, markers, layout):
    node = node_factory(name="beside", workers=1)
    folder = tmp_path / "project"
    script = write_script(folder)
    plant(folder, markers, layout)
    out = run_script(script, tmp_path, node.address, secret)
    assert out.split() == [*EXPECTED.split(), "Client"]


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_files_in_the_cwd_of_a_script_and_of_python_c(node_factory, secret, tmp_path, markers,
                                                      layout):  # fmt: skip
    node = node_factory(name="cwd", workers=1)
    cwd = tmp_path / "user-cwd"
    cwd.mkdir()
    plant(cwd, markers, layout)
    script = write_script(tmp_path / "elsewhere")
    assert EXPECTED in run_script(script, cwd, node.address, secret)
    # python -c puts the cwd itself first on sys.path
    code = SCRIPT.replace("sys.argv[1], sys.argv[2]", f"{node.address!r}, {secret!r}")
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert EXPECTED in proc.stdout


def start_node_in(folder: Path, secret: str, command: list[str], name: str) -> NodeProc:
    proc = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", "0", "--name", name, "--workers", "1",
         "--data-dir", str(folder.parent / f"{name}-data"), "--grace", "1", "--no-advertise"],
        cwd=folder, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
        env=dict(os.environ, MESH_SECRET=secret),
    )  # fmt: skip
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    m = LISTENING.match(line)
    if not m:
        proc.kill()
        proc.wait()
        raise AssertionError(f"mesh-node in {folder} printed {line!r}")
    return NodeProc(m.group(1), m.group(2), int(m.group(3)), proc, folder.parent)


@pytest.mark.parametrize("how", ["python -m mesh.node", "mesh-node"])
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_files_in_the_folder_a_node_starts_in(secret, tmp_path, markers, layout, how):
    folder = tmp_path / "node-cwd"
    folder.mkdir()
    # The console script never has its cwd on sys.path: there even a mesh.py is inert.
    plant(folder, markers, layout, mesh_py=how == "mesh-node")
    if how == "mesh-node":
        command = [str(Path(sys.executable).with_name("mesh-node"))]
    else:
        command = [sys.executable, "-m", "mesh.node"]
    node = start_node_in(folder, secret, command, "in-folder")
    try:
        script = write_script(tmp_path / "elsewhere")
        assert EXPECTED in run_script(script, tmp_path, node.address, secret)
        assert node.proc.poll() is None
    finally:
        node.stop()


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_files_in_the_folder_a_local_mesh_starts_in(tmp_path, markers, layout):
    folder = tmp_path / "local-cwd"
    folder.mkdir()
    plant(folder, markers, layout, mesh_py=True)  # the script is elsewhere: even mesh.py
    script = write_script(tmp_path / "elsewhere")
    out = run_script(script, folder, "local", "")
    assert EXPECTED in out


# ---- public names: mesh.X ----

PUBLIC_CLASSES = ["AsyncClient", "Client", "EnvInfo", "Executor", "Job", "JobInfo", "NodeInfo"]


@pytest.mark.parametrize("name", PUBLIC_CLASSES + mesh.errors.__all__)
def test_public_classes_are_named_mesh_x(name):
    cls = getattr(mesh, name)
    assert cls.__module__ == "mesh"
    assert cls.__qualname__ == name
    assert repr(cls) == f"<class 'mesh.{name}'>"


def example(cls: type[BaseException]) -> BaseException:
    if issubclass(cls, mesh.MissingModule):
        return cls("node n1 lacks module 'foo'", jid="j-1", node="n1", module="foo")
    if issubclass(cls, mesh.JobError):
        return cls(f"a {cls.__name__}", jid="j-1", node="n1", remote_traceback="Traceback ...")  # type: ignore[call-arg]
    return cls(f"a {cls.__name__}")


@pytest.mark.parametrize("name", mesh.errors.__all__)
def test_every_exception_survives_a_pickle_round_trip(name):
    exc = example(getattr(mesh, name))
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    if isinstance(exc, mesh.JobError):
        assert (back.jid, back.node, back.remote_traceback) == (
            exc.jid, exc.node, exc.remote_traceback)  # fmt: skip
    if isinstance(exc, mesh.MissingModule):
        assert back.name == "foo"


def test_pickled_exceptions_load_in_a_fresh_process_by_their_mesh_names():
    """As a job's exception travels: pickled on a node, loaded where only ``pickle`` ran."""
    blob = pickle.dumps([example(getattr(mesh, n)) for n in mesh.errors.__all__])
    code = ("import pickle, sys; excs = pickle.loads(sys.stdin.buffer.read()); "
            "print(' '.join(f'{type(e).__module__}.{type(e).__qualname__}' for e in excs))")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], input=blob, capture_output=True,
                          timeout=60, check=True)  # fmt: skip
    assert proc.stdout.decode().split() == [f"mesh.{n}" for n in mesh.errors.__all__]
