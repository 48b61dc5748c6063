"""Functions from the user's own modules run on nodes that never saw the file.

The seeds' closest-words pattern: a class with a method, and a module-level wrapper,
in a module next to the user's script. The nodes here run with a cwd and PYTHONPATH
that do not include the module's folder, so they can only have it by value.
"""

from __future__ import annotations

import importlib
import os
import secrets
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest
from conftest import NodeProc

import mesh

CLOSESTWORDS = textwrap.dedent(
    '''
    """The user's closestwords.py (a pure-Python Levenshtein, as the seeds use)."""

    def distance(a, b):
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]


    class ClosestWords:
        def __init__(self, words):
            self.words = list(words)

        def findClosestWords(self, word, n=3):
            return sorted(self.words, key=lambda w: (distance(word, w), w))[:n]


    def caller(obj, word):
        return obj.findClosestWords(word)
    '''
)

WORDS = ["the", "then", "they", "there", "these", "hello", "help", "world", "word", "would"]
QUERIES = ["hte", "wrld", "helo", "tehy"]


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    items = raw.decode(errors="replace").split("\0")
    return dict(item.split("=", 1) for item in items if "=" in item)


def assert_cannot_see(node: NodeProc, folder: Path) -> None:
    """Neither the node nor its workers run in ``folder`` or have it on PYTHONPATH."""
    for pid in [node.pid, *node.worker_pids()]:
        cwd = os.readlink(f"/proc/{pid}/cwd")
        assert not cwd.startswith(str(folder)), (pid, cwd)
        pythonpath = proc_env(pid).get("PYTHONPATH", "")
        assert str(folder) not in pythonpath, (pid, pythonpath)


def import_from(folder: Path, name: str, source: str) -> Iterator[ModuleType]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.py").write_text(source)
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(name)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)


@pytest.fixture
def closestwords(tmp_path: Path) -> Iterator[ModuleType]:
    name = f"closestwords_{secrets.token_hex(4)}"
    yield from import_from(tmp_path / "userdir", name, CLOSESTWORDS)


def test_function_and_bound_method_from_a_local_module(nodes, client, closestwords, tmp_path):
    for node in nodes:
        assert_cannot_see(node, tmp_path)
    cw = closestwords
    assert Path(cw.__file__).parent == tmp_path / "userdir"

    # a plain function
    assert client.result(client.call(cw.distance, "kitten", "sitting")) == 3
    jids = client.map(cw.distance, ["flaw", "gumbo", "book"], ["lawn", "gambol", "back"])
    assert client.result(jids) == [2, 2, 2]

    obj = cw.ClosestWords(WORDS)
    expected = [obj.findClosestWords(q) for q in QUERIES]
    # the module-level wrapper, with an instance of the module's class as argument
    assert client.result(client.map(cw.caller, [obj] * len(QUERIES), QUERIES)) == expected
    # the bound method itself
    assert client.result(client.map(obj.findClosestWords, QUERIES)) == expected
    assert client.result(client.call(obj.findClosestWords, "wrld", n=1)) == ["world"]
    # a result of the module's own class comes back as that class
    back = client.result(client.call(cw.ClosestWords, ["a", "b"]))
    assert isinstance(back, cw.ClosestWords) and back.words == ["a", "b"]


def test_a_second_local_module_imported_after_the_first_is_gone(nodes, client, tmp_path):
    """Modules come and go in a long session (tests, notebooks): each new one still ships."""
    for i in range(2):
        name = f"closestwords_{secrets.token_hex(4)}"
        folder = tmp_path / f"userdir{i}"
        gen = import_from(folder, name, CLOSESTWORDS)
        cw = next(gen)
        try:
            obj = cw.ClosestWords(WORDS)
            try:
                got = client.result(client.call(cw.caller, obj, "hte"), timeout=30)
            except mesh.MissingModule as exc:
                pytest.fail(f"local module #{i + 1} ({name}) was not shipped by value: {exc}")
            assert got == obj.findClosestWords("hte")
        finally:
            gen.close()
        assert name not in sys.modules


def test_module_missing_on_the_node_raises_missing_module(nodes, client, tmp_path):
    name = f"onlyhere_{secrets.token_hex(4)}"
    folder = tmp_path / "userlib"
    folder.mkdir()
    (folder / f"{name}.py").write_text("ANSWER = 42\n")
    for node in nodes:
        assert_cannot_see(node, tmp_path)

    # The job imports the module by name when it runs: nothing in the pickle refers to it.
    source = f"def uses_helper(x):\n    import {name}\n    return {name}.ANSWER + x\n"
    namespace: dict[str, object] = {}
    exec(compile(source, "<user script>", "exec"), namespace)
    uses_helper = namespace["uses_helper"]

    sys.path.insert(0, str(folder))
    try:
        assert uses_helper(1) == 43  # fine here, where the module is importable
        jid = client.call(uses_helper, 1)
        with pytest.raises(mesh.MissingModule) as ei:
            client.result(jid, timeout=30)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
    exc = ei.value
    assert isinstance(exc, ModuleNotFoundError)
    assert isinstance(exc, mesh.JobError)
    assert name in str(exc)
    assert exc.node in {n.name for n in nodes}
    assert exc.node in str(exc)
    assert exc.name == name
    assert client.status(jid) == "error"
    # the node is fine and still runs jobs
    assert client.result(client.call(pow, 2, 10)) == 1024


def test_a_module_in_a_namespace_package_ships_by_value(nodes, client, tmp_path):
    """``tools/helpers.py`` with no ``tools/__init__.py``: still the user's own code."""
    package = f"tools_{secrets.token_hex(4)}"
    (tmp_path / "proj" / package).mkdir(parents=True)
    (tmp_path / "proj" / package / "helpers.py").write_text("def triple(x):\n    return 3 * x\n")
    for node in nodes:
        assert_cannot_see(node, tmp_path)
    sys.path.insert(0, str(tmp_path / "proj"))
    try:
        helpers = importlib.import_module(f"{package}.helpers")
        assert getattr(sys.modules[package], "__file__", None) is None  # a namespace package
        assert client.result(client.map(helpers.triple, [1, 2]), timeout=30) == [3, 6]
    finally:
        sys.path.remove(str(tmp_path / "proj"))
        sys.modules.pop(f"{package}.helpers", None)
        sys.modules.pop(package, None)
