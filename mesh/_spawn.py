"""How lanmesh starts its own Python processes (nodes of a local mesh, workers).

``python -m pkg`` puts the current directory first on ``sys.path``, so a user's
``mesh.py`` (or any module lanmesh imports) in the folder a node or a local mesh
starts in would run instead of lanmesh. These commands leave the cwd out.
"""

from __future__ import annotations

import sys

__all__ = ["module_command"]

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
