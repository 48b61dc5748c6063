"""joblib's own ``test_parallel.py``, run against the "mesh" backend on real nodes.

joblib's tests are not copied: ``test_joblib_parallel.py`` imports them from the
installed ``joblib.test.test_parallel``, after ``mesh.joblib`` registered the backend
and "mesh" was added to the backend lists that module builds at import. Only the
"mesh" parametrisations run (``pytest_collection_modifyitems``), on two session-wide
nodes that the default client reaches through MESH_PEERS/MESH_SECRET. The cases a
remote backend cannot pass are marked here, each with its reason (see README, joblib).
"""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import NodeProc, start_node, stop_nodes

# Marks joblib's test module uses (unknown marks are warnings, and warnings errors).
JOBLIB_MARKS = ("thread_unsafe: joblib's own mark", "no_cover: joblib's own mark")

# joblib warns, by design, when a generator it returned is dropped before its end
# (joblib's own test settings do not turn that warning into an error; ours do).
JOBLIB_WARNINGS = (
    "ignore:.*tasks which were still being processed by the workers have been cancelled:UserWarning",
    "ignore:.*tasks have been successfully executed +but not used:UserWarning",
)

# The mesh cases that cannot pass, by joblib test name: each is run and must fail
# (strict xfail), so a fix shows. Listed in README.md (joblib).
MANAGER = (
    "joblib shares state through a multiprocessing.Manager proxy, which authenticates "
    "with the test process's authkey: only that process's own children have it, and "
    "mesh workers are the nodes' processes (mesh's initializer: tests/test_joblib.py)"
)
LOKY_PARENT = (
    "the outer Parallel runs on loky, whose worker processes never imported mesh.joblib; "
    "joblib has no plugin discovery, so only lanmesh's own workers know the name 'mesh'"
)
XFAILS: dict[str, str] = {
    "test_nested_loop[loky-mesh]": LOKY_PARENT,
    "test_nested_loop[back_compat_backend-mesh]": LOKY_PARENT,
    "test_backend_nesting_level[parallel_config-mesh-loky]": LOKY_PARENT,
    "test_backend_nesting_level[parallel_backend-mesh-loky]": LOKY_PARENT,
    "test_parallel_with_interactively_defined_functions": (
        "joblib's script runs in a fresh interpreter and names backend='mesh' without "
        "`import mesh.joblib`, which is what registers it there"
    ),
    "test_error_capture": (
        "reads a local pool's private `_pool`/`_workers` attribute; the mesh backend's "
        "pool is the mesh (the errors it checks before that are raised as expected)"
    ),
    "test_dispatch_multiprocessing": MANAGER,
    "test_initializer_context": MANAGER,
    "test_initializer_parallel": MANAGER,
    "test_auto_memmap_on_arrays_from_generator": (
        "expects arguments as np.memmap views of a shared temp file; mesh workers are on "
        "other machines, so arrays travel by value"
    ),
    "test_memmapping_leaks": (
        "checks joblib's shared-memory temp folder (memmapping), which a backend on "
        "other machines does not use"
    ),
}


def pytest_configure(config: pytest.Config) -> None:
    for line in JOBLIB_MARKS:
        config.addinivalue_line("markers", line)


def _is_mesh(value: Any) -> bool:
    from mesh.joblib import MeshBackend

    return value == "mesh" or isinstance(value, MeshBackend)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep joblib's cases whose parameters name the mesh backend; mark the known ones."""
    here = Path(__file__).parent
    keep, drop = [], []
    for item in items:
        if here not in Path(str(item.path)).parents:
            keep.append(item)
            continue
        callspec = getattr(item, "callspec", None)
        params = callspec.params.values() if callspec is not None else ()
        if not any(_is_mesh(v) for v in params):
            drop.append(item)
            continue
        base = item.originalname if isinstance(item, pytest.Function) else item.name
        reason = XFAILS.get(item.name) or XFAILS.get(base)
        if reason:
            item.add_marker(pytest.mark.xfail(reason=reason, strict=True))
        for spec in JOBLIB_WARNINGS:
            item.add_marker(pytest.mark.filterwarnings(spec))
        keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(scope="package")
def mesh_nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[list[NodeProc], str]]:
    """Two real nodes (two workers each) for this folder's cases, and their secret;
    stopped when the folder is done."""
    secret = secrets.token_hex(32)
    root = tmp_path_factory.mktemp("joblib-suite")
    nodes: list[NodeProc] = []
    try:
        for name in ("j1", "j2"):
            nodes.append(start_node(secret, root / name, name=name, workers=2))
        for node in nodes:
            node.wait_workers(2)
        yield nodes, secret
    finally:
        stop_nodes(nodes)


@pytest.fixture(autouse=True)
def _on_the_mesh(mesh_nodes: tuple[list[NodeProc], str], monkeypatch: pytest.MonkeyPatch) -> None:
    """Every case of this folder runs with these nodes as its default mesh, found through
    MESH_PEERS/MESH_SECRET as a user's script would (the default client is closed after
    each case by the suite's own fixture)."""
    nodes, secret = mesh_nodes
    monkeypatch.setenv("MESH_PEERS", ",".join(n.address for n in nodes))
    monkeypatch.setenv("MESH_SECRET", secret)
