"""ErrorKind is exactly the set of error kinds the code emits, each mapped to its
exception and back; KillReason's errors as the user reads them (pure, exact output)."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import mesh
from mesh._protocol import ErrorInfo, KillReason
from mesh.errors import (
    DependencyFailed,
    EnvBuildFailed,
    ErrorKind,
    JobError,
    JobKilled,
    JobRejected,
    MaxRuntimeExceeded,
    MemoryLimitExceeded,
    MissingModule,
    NoNodesAvailable,
    WorkerDied,
    WorkerStartFailed,
)

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted(p for d in ("mesh", "node", "client") for p in (ROOT / d).rglob("*.py"))
KIND_VALUES = {k.value for k in ErrorKind}
# Calls whose first argument is the kind of the error they make.
EMITTERS = {"ErrorInfo", "KillReason"}


def _trees() -> Iterator[tuple[Path, ast.AST]]:
    for path in SOURCES:
        yield path.relative_to(ROOT), ast.parse(path.read_text(), str(path))


def _members(node: ast.AST) -> Iterator[ast.AST]:
    """The expressions a value may come from (both arms of ``a if c else b``)."""
    if isinstance(node, ast.IfExp):
        yield from _members(node.body)
        yield from _members(node.orelse)
    else:
        yield node


def _kind_member(node: ast.AST) -> str | None:
    """``X`` for an ``ErrorKind.X`` expression, else None."""
    if (
        isinstance(node, ast.Attribute)
        and isinstance(node.value, ast.Name)
        and node.value.id == "ErrorKind"
    ):
        return node.attr
    return None


def _emitted() -> tuple[set[str], list[str]]:
    """(ErrorKind members used where an error is made, places a kind is a bare string)."""
    emitted: set[str] = set()
    loose: list[str] = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            where = f"{path}:{getattr(node, 'lineno', '?')}"
            values: list[ast.AST] = []
            if isinstance(node, ast.Call) and node.args:
                name = getattr(node.func, "id", getattr(node.func, "attr", ""))
                if name in EMITTERS:
                    values = list(_members(node.args[0]))
            elif isinstance(node, ast.Assign):  # kind = ErrorKind.X if ... else ErrorKind.Y
                values = [v for v in _members(node.value) if _kind_member(v) is not None]
            elif isinstance(node, ast.ClassDef) and node.name == "FailKind":
                values = [s.value for s in node.body if isinstance(s, ast.Assign)]
            elif isinstance(node, ast.Tuple) and len(node.elts) in (5, 6):
                first, second = node.elts[0], node.elts[1]
                if (isinstance(first, ast.Constant) and first.value in KIND_VALUES
                        and isinstance(second, ast.Constant)):  # fmt: skip
                    loose.append(f"{where}: an error tuple of kind {first.value!r}")
            elif isinstance(node, ast.Compare):
                sides = [node.left, *node.comparators]
                reads_kind = any(isinstance(s, ast.Attribute) and s.attr == "kind" for s in sides)
                for s in sides:
                    if reads_kind and isinstance(s, ast.Constant) and isinstance(s.value, str):
                        loose.append(f"{where}: .kind compared with the string {s.value!r}")
            for value in values:
                member = _kind_member(value)
                if member is not None:
                    emitted.add(member)
                elif isinstance(value, ast.Constant):
                    loose.append(f"{where}: kind {value.value!r} given as a constant")
    return emitted, loose


def test_the_enum_is_exactly_the_kinds_emitted() -> None:
    emitted, loose = _emitted()
    assert loose == []  # every kind goes through ErrorKind
    assert emitted == {k.name for k in ErrorKind}


def test_the_scan_finds_a_loose_string_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scan itself can fail: an error built the old way, and an unknown member."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        'e = ("worker-died", "WorkerDied", "m", "", "")\n'
        'f = ErrorInfo("lost", "X", "m")\n'
        'if e.kind == "killed": pass\n'
        "g = ErrorInfo(ErrorKind.NOT_A_KIND, 'X', 'm')\n"
    )
    monkeypatch.setattr(f"{__name__}.SOURCES", [bad])
    monkeypatch.setattr(f"{__name__}.ROOT", tmp_path)
    emitted, loose = _emitted()
    assert loose == [
        "bad.py:1: an error tuple of kind 'worker-died'",
        "bad.py:2: kind 'lost' given as a constant",
        "bad.py:3: .kind compared with the string 'killed'",
    ]
    assert emitted == {"NOT_A_KIND"}


def test_each_kind_maps_to_its_exception_and_back() -> None:
    assert {k: k.exception for k in ErrorKind} == {
        ErrorKind.RAISED: JobError,
        ErrorKind.MISSING_MODULE: MissingModule,
        ErrorKind.WORKER_DIED: WorkerDied,
        ErrorKind.WORKER_START: WorkerStartFailed,
        ErrorKind.KILLED: JobKilled,
        ErrorKind.MAX_RUNTIME: MaxRuntimeExceeded,
        ErrorKind.MEMORY: MemoryLimitExceeded,
        ErrorKind.ENV_BUILD: EnvBuildFailed,
        ErrorKind.REJECTED: JobRejected,
        ErrorKind.NO_NODES: NoNodesAvailable,
        ErrorKind.DEPENDENCY: DependencyFailed,
    }
    for kind in ErrorKind:
        assert ErrorKind.of(kind.exception) is kind
    assert ErrorKind.of(ValueError) is None
    assert ErrorKind.of(mesh.MeshTimeout) is None

    class MyKilled(MaxRuntimeExceeded):
        pass

    assert ErrorKind.of(MyKilled) is ErrorKind.MAX_RUNTIME  # the most specific kind


def test_kinds_are_their_wire_strings() -> None:
    assert [k.value for k in ErrorKind] == [
        "raised", "missing-module", "worker-died", "worker-start", "killed", "max-runtime",
        "memory", "env-build", "rejected", "no-nodes", "dependency",
    ]  # fmt: skip
    assert ErrorKind("memory") is ErrorKind.MEMORY
    info = ErrorInfo(ErrorKind.WORKER_DIED, "WorkerDied", "m")
    assert type(info.kind) is str and info.kind == ErrorKind.WORKER_DIED == "worker-died"


# ---- KillReason: what a killed job's error says (messages unchanged) ----


def test_memory_kill_reason_names_sizes_in_mib_and_the_node() -> None:
    reason = KillReason(ErrorKind.MEMORY, rss_bytes=300 * 2**20, limit_bytes=200 * 2**20)
    assert reason.error_info("ws-07", 0.0) == (
        "memory",
        "MemoryLimitExceeded",
        "stopped at 300 MiB of memory, past the limit of 200 MiB per worker on node ws-07 "
        "(mesh-node --max-memory)",
        "",
        "",
    )
    big = KillReason(ErrorKind.MEMORY, 5000 * 2**20, 4096 * 2**20).error_info("n", 0.0)
    assert big.message.startswith("stopped at 5,000 MiB of memory, past the limit of 4,096 MiB")


def test_runtime_and_request_kill_reasons() -> None:
    assert KillReason(ErrorKind.MAX_RUNTIME).error_info("ws-07", 5.0) == (
        "max-runtime", "JobKilled", "killed after exceeding _max_runtime=5s", "", "")  # fmt: skip
    assert KillReason(ErrorKind.MAX_RUNTIME).error_info("ws-07", 0.25).message == (
        "killed after exceeding _max_runtime=0.25s")  # fmt: skip
    assert KillReason(ErrorKind.KILLED).error_info("ws-07", 5.0) == (
        "killed", "JobKilled", "killed on request", "", "")  # fmt: skip


def test_a_kill_reason_is_only_a_kill_kind() -> None:
    with pytest.raises(ValueError, match="not a reason to kill a job"):
        KillReason(ErrorKind.WORKER_DIED)
    assert KillReason(ErrorKind.MEMORY, 1, 2) == KillReason(ErrorKind.MEMORY, 1, 2)
    assert KillReason(ErrorKind.MEMORY, 1, 2) != KillReason(ErrorKind.MEMORY, 1, 3)
