"""The shape of the code, checked so that it cannot rot (issue 15).

- No module reaches into another module's underscore names: ``x._name`` is fine on
  ``self``/``cls`` or for a name this module defines, and nowhere else (the allow-list
  below says why for each exception). Private *modules* (``mesh._protocol``) are the
  package's, not a module's, so importing from them is fine.
- ``Client`` and ``AsyncClient`` are twins: the same methods with the same parameters.
"""

from __future__ import annotations

import ast
import inspect
import subprocess
import sys
from pathlib import Path

import pytest
from mesh.client import AsyncClient, Client

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("mesh", "node", "client")

# Underscore names that are public API of what they belong to.
PUBLIC_UNDERSCORE = {
    "_replace": "NamedTuple's API (the underscore only avoids clashing with field names)",
    "_asdict": "NamedTuple's API",
    "_fields": "NamedTuple's API",
    "_make": "NamedTuple's API",
    "_exit": "os._exit: how a forked child ends without running its parent's cleanup",
}

# (file, name): reaches that stay, and why.
ALLOWED = {
    ("mesh/_serialize.py", "_code_reduce"): "cloudpickle has no public hook to put back "
    "the real file name of a code object (its 3.x writes <dynamic-code>)",
    ("mesh/_serialize.py", "_extract_code_globals"): "cloudpickle's own test for which "
    "globals a function uses; no public equivalent",
    ("mesh/_serialize.py", "_should_pickle_by_reference"): "cloudpickle's own rule for "
    "by-reference vs by-value; lanmesh must agree with it exactly",
    ("client/_executor.py", "_register_atexit"): "threading's hook that runs before atexit "
    "handlers: what concurrent.futures itself uses for 'after interpreter shutdown'",
}


def _private_modules() -> set[str]:
    return {p.stem for d in PACKAGES for p in (ROOT / d).glob("_*.py")}


def _own_names(tree: ast.AST) -> set[str]:
    """The names a module defines: functions, classes, assigned names, arguments, import
    aliases, and attributes it assigns on ``self``/``cls``."""
    names: set[str] = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(n.name)
        elif isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store):
            names.add(n.id)
        elif isinstance(n, ast.arg):
            names.add(n.arg)
        elif isinstance(n, ast.alias):
            names.add((n.asname or n.name).split(".")[0])
        elif (
            isinstance(n, ast.Attribute)
            and isinstance(n.ctx, ast.Store)
            and isinstance(n.value, ast.Name)
            and n.value.id in ("self", "cls")
        ):
            names.add(n.attr)
    return names


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def reaches(source: str, private_modules: set[str]) -> list[tuple[int, str]]:
    """``(line, name)`` of each use of another module's underscore name in ``source``."""
    tree = ast.parse(source)
    own = _own_names(tree)
    out = []
    for n in ast.walk(tree):
        if isinstance(n, ast.Attribute) and _private(n.attr):
            if isinstance(n.value, ast.Name) and n.value.id in ("self", "cls"):
                continue
            if n.attr in own or n.attr in private_modules or n.attr in PUBLIC_UNDERSCORE:
                continue
            out.append((n.lineno, n.attr))
        elif isinstance(n, ast.ImportFrom) and n.module != "__future__":
            for alias in n.names:
                if _private(alias.name) and alias.name not in private_modules:
                    out.append((n.lineno, alias.name))
    return out


def test_no_module_reaches_into_another_modules_underscore_names() -> None:
    modules = _private_modules()
    found, used = [], set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            for line, name in reaches(path.read_text(), modules):
                if (rel, name) in ALLOWED:
                    used.add((rel, name))
                else:
                    found.append(f"{rel}:{line}: ._{name[1:]} belongs to another module")
    assert not found, "\n".join(found)
    assert used == set(ALLOWED), f"allow-list entries no longer needed: {set(ALLOWED) - used}"


def test_the_rule_sees_reaches_and_spares_what_a_module_owns() -> None:
    source = (
        "from mesh.client._async import _count\n"  # a private name of another module
        "from mesh.client import _ledger\n"  # a private module: the package's
        "class A:\n"
        "    def __init__(self):\n"
        "        self._mine = 1\n"
        "    def f(self, other, b):\n"
        "        other._mine\n"  # the attribute this module defines
        "        b._theirs\n"  # someone else's
        "        b.x._deep()\n"
        "        b._replace(x=1)\n"  # NamedTuple API
        "        return self._anything, cls._other, _ledger.Ledger\n"
    )
    assert reaches(source, {"_ledger", "_async"}) == [(1, "_count"), (8, "_theirs"), (9, "_deep")]


# ---- twins ----

# Methods only one twin has, and why.
ONE_SIDED = {
    "start": "AsyncClient only: Client connects in its constructor (a loop thread starts it)",
    "clone": "Client only: a client for a forked child (AsyncClient is not shared by forks)",
}


def _methods(cls: type) -> dict[str, inspect.Signature]:
    out = {}
    for name, member in inspect.getmembers(cls):
        if name.startswith("_") or isinstance(inspect.getattr_static(cls, name), property):
            continue
        if callable(member):
            out[name] = inspect.signature(member)
    return out


def _params(sig: inspect.Signature) -> list[tuple[str, object, object, object]]:
    return [
        (p.name, p.kind, p.default, p.annotation)
        for p in sig.parameters.values()
        if not p.name.startswith("_")  # Client's private constructor arguments
    ]


def test_client_and_async_client_have_the_same_methods() -> None:
    sync, aio = _methods(Client), _methods(AsyncClient)
    assert set(sync) ^ set(aio) == set(ONE_SIDED)


@pytest.mark.parametrize(
    "name", [*sorted(set(_methods(Client)) & set(_methods(AsyncClient))), "__init__"]
)
def test_twin_methods_take_the_same_arguments(name: str) -> None:
    sync = inspect.signature(getattr(Client, name))
    aio = inspect.signature(getattr(AsyncClient, name))
    assert _params(sync) == _params(aio)


def test_twin_properties_match() -> None:
    def props(cls: type) -> set[str]:
        return {n for n, v in vars(cls).items() if isinstance(v, property) and n[0] != "_"}

    assert props(Client) - {"is_local"} == props(AsyncClient)


# The wire, scheduler and job-table modules split out of mesh/_protocol.py,
# client/_scheduler.py and node/_jobs.py.
SPLIT_MODULES = (
    "mesh._wire",
    "mesh._msg_jobs",
    "mesh._msg_files",
    "mesh._msg_gossip",
    "mesh._msg_console",
    "mesh._protocol",
    "mesh.client._sched_types",
    "mesh.client._sched_queue",
    "mesh.client._scheduler",
    "mesh.node._job_types",
    "mesh.node._jobs",
)


def test_each_split_module_imports_first_without_a_cycle() -> None:
    """Each module can be the first one imported (a cycle would leave a name missing from
    a half-imported module), and mesh._protocol then has every message registered."""
    code = (
        "import importlib, sys\n"
        f"for name in {SPLIT_MODULES!r}:\n"
        "    for m in [m for m in sys.modules if m.startswith('mesh')]:\n"
        "        del sys.modules[m]\n"
        "    importlib.import_module(name)\n"
        "from mesh import _protocol\n"
        "print(len(_protocol._REGISTRY))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    registered = sum(p.read_text().count("\n@message(") for p in (ROOT / "mesh").glob("*.py"))
    assert done.stdout.strip() == str(registered)  # every family's messages registered
