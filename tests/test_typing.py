"""Editors and type checkers see what the API returns (``mypy --strict`` on user code)."""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def installed_layout(dest: Path) -> Path:
    """``dest`` holding ``mesh/`` as a wheel lays it out (client/ and node/ inside it),
    built of symlinks to the checkout, as `make typecheck` builds it for mypy."""
    pkg = dest / "mesh"
    pkg.mkdir(parents=True)
    for f in (ROOT / "mesh").iterdir():
        if f.suffix == ".py" or f.name == "py.typed":
            (pkg / f.name).symlink_to(f)
    for sub in ("node", "client"):
        (pkg / sub).symlink_to(ROOT / sub)
    return dest


USER_CODE = textwrap.dedent(
    """
    import mesh

    def f(x: int) -> int:
        return x

    jid = mesh.call(f, 1)
    reveal_type(jid)                                  # Job[int]
    reveal_type(mesh.result(jid))                     # int
    reveal_type(mesh.result([jid]))                   # list[int]
    reveal_type(mesh.result("an-id-from-elsewhere"))  # Any
    reveal_type(mesh.map(f, [1]))                     # list[Job[int]]
    for r in mesh.iresult(mesh.map(f, [1])):
        reveal_type(r)                                # int
    future = mesh.Executor().submit(f, 1)
    reveal_type(future.result())                      # int
    reveal_type(mesh.Executor().map(f, [1]))          # Iterator[int]

    async def main(c: mesh.AsyncClient) -> None:
        job = await c.call(f, 1)
        reveal_type(await job)                        # int
        reveal_type(await c.result(await c.map(f, [1])))  # list[int]
        async for value in c.iresult([job]):
            reveal_type(value)                        # int
    """
)

EXPECTED = [
    "mesh.client._handle.Job[int]",
    "int",
    "list[int]",
    "Any",
    "list[mesh.client._handle.Job[int]]",
    "int",
    "int",
    "typing.Iterator[int]",
    "int",
    "list[int]",
    "int",
]


def test_calls_return_typed_job_handles_and_results(tmp_path, monkeypatch):
    api = pytest.importorskip("mypy.api")
    source = tmp_path / "user_script.py"
    source.write_text(USER_CODE)
    monkeypatch.chdir(installed_layout(tmp_path / "site"))  # the package as it installs
    out, err, code = api.run(
        ["--strict", "--cache-dir", str(tmp_path / "cache"), "--python-version",
         f"{sys.version_info[0]}.{sys.version_info[1]}", str(source)]
    )  # fmt: skip
    revealed = re.findall(r'Revealed type is "([^"]+)"', out)
    assert revealed == EXPECTED, out + err
    assert code == 0, out + err


def test_type_information_is_shipped():
    pyproject = (ROOT / "pyproject.toml").read_text()
    section = pyproject.split("[tool.setuptools.package-data]", 1)[1].split("\n[", 1)[0]
    # the facade's types come from mesh.client (the repository's client/ folder)
    for package, folder in (("mesh", "mesh"), ('"mesh.client"', "client")):
        assert (ROOT / folder / "py.typed").is_file()
        assert re.search(rf'^{package} = \[.*"py.typed".*\]$', section, re.M), section
