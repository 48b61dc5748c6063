"""How lanmesh starts its own Python processes (nodes of a local mesh, workers).

``python -m pkg`` puts the current directory first on ``sys.path``, so a user's
``mesh.py`` (or any module lanmesh imports) in the folder a node or a local mesh
starts in would run instead of lanmesh. These commands leave the cwd out.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

__all__ = ["CREDENTIAL_VARIABLES", "job_environment", "module_command"]

# Environment variables that hold, or point at, a mesh credential. Jobs run code the
# node was sent: none of these may reach them (nor the processes they start).
CREDENTIAL_VARIABLES = ("MESH_SECRET", "MESH_SECRET_FILE")

# Python < 3.11 has no -P: drop sys.path[0] ('' for -c) by hand, then run the module.
_RUN_WITHOUT_CWD = (
    "import sys, runpy; del sys.path[0]; sys.argv[0] = {m!r}; "
    "runpy.run_module({m!r}, run_name='__main__', alter_sys=True)"
)


def module_command(module: str, *args: str, python: str = sys.executable) -> list[str]:
    """The argv that runs ``python -m module args...`` without the cwd on sys.path."""
    if sys.version_info >= (3, 11):
        return [python, "-P", "-m", module, *args]
    return [python, "-c", _RUN_WITHOUT_CWD.format(m=module), *args]


def job_environment(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment a worker (and so every job) starts with: ``environ`` (default
    the node's) without the mesh credentials."""
    env = dict(os.environ if environ is None else environ)
    for name in CREDENTIAL_VARIABLES:
        env.pop(name, None)
    return env
