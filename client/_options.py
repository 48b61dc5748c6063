"""Job options: the keyword arguments beginning with ``_`` that configure a call or map
and never reach its function (``_cores``, ``_label``, ``_env``, ``_files``...)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

from mesh._protocol import pushed_name
from mesh.errors import ConfigurationError

__all__ = [
    "DIST_SUFFIXES",
    "OPTIONS",
    "depends_on",
    "env_requirements",
    "file_names",
    "split_options",
]

OPTIONS = ("_cores", "_label", "_max_runtime", "_retries", "_speculative", "_env", "_files",
           "_depends_on", "_kill_process", "_priority")  # fmt: skip

# What a local file named in ``_env=`` ends with to be pushed (a wheel or an sdist).
DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2")


def split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """The function's keyword arguments and the job options, apart; an unknown option
    is a TypeError naming the known ones."""
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("_")}
    for k in opts:
        if k not in OPTIONS:
            raise TypeError(f"unknown job option {k}= (job options are {', '.join(OPTIONS)})")
    return kwargs, opts


def file_names(files: Any) -> tuple[str, ...]:
    """``_files=``: a name or names of mesh files the job reads."""
    if not files:
        return ()
    names = (files,) if isinstance(files, str) else tuple(files)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"_files= takes mesh file names (str), not {files!r}")
    return names


def depends_on(jids: Any) -> tuple[str, ...]:
    """``_depends_on=``: a job id or job ids (a call's or a map's) that must be done first."""
    if jids is None:
        return ()
    out = (jids,) if isinstance(jids, str) else tuple(jids)
    if not all(isinstance(j, str) for j in out):
        raise TypeError(f"_depends_on= takes job ids (str, as call/map return), not {jids!r}")
    return out


def env_requirements(env: Any) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``_env=``: pip requirements, and local wheels or sdists to push through mesh.files
    (by hash: a ``wheel:<sha256>:<file name>`` requirement). Returns (requirements,
    (path, store name) of the files to push)."""
    if not env:
        return (), ()
    reqs = (env,) if isinstance(env, str) else tuple(env)
    if not all(isinstance(r, str) for r in reqs):
        raise TypeError(f"_env= takes requirement strings, not {env!r}")
    out, push = [], []
    for req in reqs:
        req = req.strip()
        local = req.endswith(DIST_SUFFIXES) and (
            req.startswith((".", "/", "~")) or os.sep in req or os.path.exists(req)
        )
        if not local:
            out.append(req)
            continue
        path = os.path.expanduser(req)
        try:
            sha = _sha256_file(path)
        except OSError as exc:
            raise ConfigurationError(f"_env: cannot read {req}: {exc}") from exc
        filename = os.path.basename(path)
        out.append(f"wheel:{sha}:{filename}")
        push.append((path, pushed_name(sha, filename)))
    return tuple(out), tuple(push)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()
