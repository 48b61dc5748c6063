"""Make joblib's ``backend="mesh"`` known in worker processes, lazily.

A job may name the backend (``Parallel(backend="mesh")``, or scikit-learn code run
under ``parallel_config(backend="mesh")``) without importing ``mesh.joblib``. The
worker installs this import hook at start: it costs nothing until the job imports
``joblib.parallel``, and then only puts a stand-in under "mesh" in joblib's
``BACKENDS`` (``Parallel(backend=...)`` looks nowhere else), so ``mesh.joblib`` itself
is imported when a job first makes the backend.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = ["install", "in_worker"]

_installed = False


def in_worker() -> bool:
    """True in a mesh worker process (where this hook was installed)."""
    return _installed


def _mesh_backend(*args: Any, **kwargs: Any) -> Any:
    """joblib's factory for "mesh" until first used: then the real class replaces it."""
    backend = importlib.import_module("mesh.joblib").MeshBackend  # registers it as it imports
    return backend(*args, **kwargs)


def _register(parallel: ModuleType) -> None:
    backends = getattr(parallel, "BACKENDS", None)
    if isinstance(backends, dict):
        backends.setdefault("mesh", _mesh_backend)


class _JoblibParallelHook(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loading of ``joblib.parallel`` once."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if name != "joblib.parallel":
            return None
        sys.meta_path.remove(self)  # the real finders answer; we are done after this
        spec = importlib.util.find_spec(name)
        loader = spec.loader if spec is not None else None
        if spec is None or loader is None or not hasattr(loader, "exec_module"):
            return spec
        exec_module = loader.exec_module

        def exec_and_register(module: ModuleType) -> None:
            exec_module(module)
            _register(module)

        loader.exec_module = exec_and_register  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Register "mesh" with joblib in this process as soon as joblib is imported."""
    global _installed
    if _installed:
        return
    _installed = True
    parallel = sys.modules.get("joblib.parallel")
    if parallel is not None:
        _register(parallel)
    else:
        sys.meta_path.insert(0, _JoblibParallelHook())
