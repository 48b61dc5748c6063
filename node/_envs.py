"""Job environments (``_env``): cached virtual environments built on demand.

A requirement set (normalised, sorted) plus the node's Python version names an
environment ``DATA_DIR/envs/<key>/``: a venv made without pip (pip runs from the
node's own interpreter with ``--python``, so a build costs no ensurepip), whose
``_lanmesh_node.pth`` adds the node's own site-packages *after* the env's, so the
worker code and its dependencies (cloudpickle, msgpack) import there while the
env's packages take precedence. Packages come from pip's own configuration, the
node's ``--pip-option``s, and wheels pushed through ``mesh.files``
(``wheel:<sha256>:<filename>`` requirements, stored as
``.lanmesh-env/<sha256>/<filename>``, checked against that SHA-256 here, since the
store names blobs by its own hash, and copied into a wheelhouse).

One build per key at a time (later askers await the same future); a failed build is
remembered with pip's last lines until the set changes; ready environments past the
size budget are evicted least recently used first. ``index.json`` keeps, per key,
the requirements, status, size, last use and how many builds ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import site
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["EnvBuildError", "EnvCache", "normalise"]

WHEEL_PREFIX = "wheel:"
TAIL_LINES = 12
_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(.*)$", re.S)

# (sha256, file name) -> the path of a local copy of that pushed file (its store
# version verified; its SHA-256 is checked here)
WheelFetcher = Callable[[str, str], Awaitable[Path]]


class EnvBuildError(Exception):
    """Building an environment failed; the message ends with pip's last lines."""


def normalise(requirements: Iterable[str]) -> tuple[str, ...]:
    """Sorted, de-duplicated requirements; project names in PEP 503 form."""
    out = set()
    for raw in requirements:
        req = " ".join(str(raw).split())
        if not req:
            continue
        m = _NAME.match(req)
        if m and not req.startswith(WHEEL_PREFIX) and "/" not in req:
            name = re.sub(r"[-_.]+", "-", m.group(1)).lower()
            req = name + m.group(2).replace(" ", "")
        out.add(req)
    return tuple(sorted(out))


def _python_tag() -> str:
    return f"{sys.implementation.name}{sys.version_info[0]}.{sys.version_info[1]}"


@dataclass(frozen=True, slots=True)
class Env:
    key: str
    requirements: tuple[str, ...]
    path: Path

    @property
    def python(self) -> str:
        return str(self.path / "venv" / "bin" / "python")


class EnvCache:
    """The environments of one node's data dir; all methods run on the node's loop."""

    def __init__(
        self,
        data_dir: Path,
        *,
        node_name: str = "",
        python: str = sys.executable,
        pip_args: Iterable[str] = (),
        budget_bytes: int = 5 * 2**30,
        build_timeout_s: float = 900.0,
    ) -> None:
        self.root = data_dir / "envs"
        self.node_name = node_name
        self.python = python
        self.pip_args = tuple(pip_args)
        self.budget_bytes = budget_bytes
        self.build_timeout_s = build_timeout_s
        self._index_path = self.root / "index.json"
        self._builds: dict[str, asyncio.Future[Env]] = {}
        self._carried: dict[str, int] = {}  # key -> builds before `mesh envs --rebuild`
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            self.index: dict[str, dict[str, Any]] = json.loads(self._index_path.read_text())
        except (OSError, ValueError):
            self.index = {}
        # An interrupted build left a half-made env: forget it, it builds again.
        for key in [k for k, e in self.index.items() if e.get("status") == "building"]:
            self._remove(key)

    @staticmethod
    def key(requirements: Iterable[str]) -> str:
        text = "\n".join(normalise(requirements)) + "\n" + _python_tag()
        return hashlib.sha256(text.encode()).hexdigest()[:20]

    def _save(self) -> None:
        tmp = self._index_path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.index, indent=1, sort_keys=True))
        os.replace(tmp, self._index_path)

    def info(self) -> list[dict[str, Any]]:
        """Every environment: key, requirements, status, size, last use, builds, error."""
        return [dict(e, key=k) for k, e in sorted(self.index.items())]

    def ready(self, key: str) -> Env | None:
        e = self.index.get(key)
        if e is None or e.get("status") != "ready":
            return None
        return Env(key, tuple(e["requirements"]), self.root / key)

    def touch(self, key: str) -> None:
        """A job used this environment (written to disk at most once a second)."""
        e = self.index.get(key)
        if e is not None:
            now = time.time()
            saved, e["last_used"] = e.get("last_used", 0.0), now
            if now - saved > 1.0:
                self._save()

    def forget(self, key: str) -> str:
        """``mesh envs --rebuild``: remove a failed or ready environment (the caller makes
        sure none of its workers run) so its next job builds it again; its count of builds
        carries on. Returns the status it had, or "" (unknown, or building: left alone)."""
        status = str(self.index.get(key, {}).get("status", ""))
        if status not in ("failed", "ready"):
            return ""
        self._carried[key] = int(self.index[key].get("builds", 0))
        self._remove(key)
        return status

    def matching(self, what: str) -> list[str]:
        """The keys ``what`` names: a key prefix (4+ characters), one of the environment's
        requirements (normalised), a bare project name, or a pushed file's name."""
        what = what.strip()
        norm = normalise([what])
        if not norm:
            return []
        req = norm[0]
        bare = req if re.fullmatch(r"[a-z0-9][a-z0-9.-]*", req) else ""
        out = []
        for key, e in self.index.items():
            reqs = e.get("requirements", [])
            if (
                (len(what) >= 4 and key.startswith(what))
                or req in reqs
                or (bare and any(_project(r) == bare for r in reqs))
                or any(r.startswith(WHEEL_PREFIX) and r.split(":", 2)[2] == what for r in reqs)
            ):
                out.append(key)
        return sorted(out)

    async def ensure(self, requirements: Iterable[str], fetch: WheelFetcher | None = None) -> Env:
        """The ready environment for ``requirements``, built first if need be (once, however
        many jobs ask); raises EnvBuildError at once for a set that failed before."""
        reqs = normalise(requirements)
        key = self.key(reqs)
        e = self.index.get(key)
        if e is not None and e.get("status") == "failed":
            raise EnvBuildError(e.get("error", "the build failed"))
        env = self.ready(key)
        if env is not None:
            self.touch(key)
            return env
        fut = self._builds.get(key)
        if fut is None:
            fut = self._builds[key] = asyncio.get_running_loop().create_future()
            try:
                fut.set_result(await self._build(key, reqs, fetch))
            except BaseException as exc:
                fut.set_exception(exc)
                fut.exception()  # retrieved: waiters may all be gone
            finally:
                self._builds.pop(key, None)
        return await asyncio.shield(fut)

    async def _build(self, key: str, reqs: tuple[str, ...], fetch: WheelFetcher | None) -> Env:
        path = self.root / key
        shutil.rmtree(path, ignore_errors=True)
        path.mkdir(parents=True)
        prev = self.index.get(key, {})
        carried = self._carried.pop(key, 0)
        entry: dict[str, Any] = {
            "requirements": list(reqs),
            "python": _python_tag(),
            "status": "building",
            "size_bytes": 0,
            "created": time.time(),
            "last_used": time.time(),
            "builds": int(prev.get("builds", carried)) + 1,
            "error": "",
        }
        self.index[key] = entry
        self._save()
        log_path = path / "build.log"
        started = time.monotonic()
        with open(log_path, "ab") as log:  # noqa: ASYNC230 - a local file, small writes
            log.write(f"# {time.ctime()}: building {' '.join(reqs)}\n".encode())
            log.flush()
            try:
                args = await self._pip_requirements(reqs, fetch, log)
                await self._run(log, self.python, "-m", "venv", *self._venv_flags(),
                                str(path / "venv"))  # fmt: skip
                self._link_node_packages(path / "venv")
                py = Env(key, reqs, path).python
                pip = (
                    [self.python, "-m", "pip", "--python", py]
                    if self._has_pip()
                    else [py, "-m", "pip"]
                )
                await self._run(log, *pip, "install", "--no-input", "--disable-pip-version-check",
                                *self.pip_args, *args)  # fmt: skip
            except EnvBuildError as exc:
                log.write(f"# failed: {exc}\n".encode())
                tail = _tail(log_path)
                shutil.rmtree(path / "venv", ignore_errors=True)
                entry.update(status="failed", error=f"{exc}:\n{tail}")
                self._save()
                raise EnvBuildError(entry["error"]) from None
            except BaseException:
                shutil.rmtree(path, ignore_errors=True)
                self.index.pop(key, None)
                self._save()
                raise
            took = time.monotonic() - started
            log.write(f"# ready in {took:.2f} s\n".encode())
        entry.update(status="ready", size_bytes=_du(path), build_s=round(took, 3))
        self._save()
        return Env(key, reqs, path)

    def _has_pip(self) -> bool:
        if self.python != sys.executable:
            return False
        return importlib.util.find_spec("pip") is not None

    def _venv_flags(self) -> list[str]:
        return ["--without-pip"] if self._has_pip() else []

    async def _pip_requirements(
        self, reqs: tuple[str, ...], fetch: WheelFetcher | None, log: Any
    ) -> list[str]:
        """pip's arguments: pushed files become paths in the wheelhouse."""
        out = []
        for req in reqs:
            if not req.startswith(WHEEL_PREFIX):
                out.append(req)
                continue
            _, sha, filename = req.split(":", 2)
            if (
                not re.fullmatch(r"[0-9a-f]{64}", sha)
                or "/" in filename
                or filename in ("", ".", "..")
            ):
                raise EnvBuildError(f"bad pushed-file requirement {req!r}")
            dest = self.root / "wheelhouse" / sha / filename
            if not dest.exists():
                if fetch is None:
                    raise EnvBuildError(
                        f"{filename} ({sha[:12]}) was pushed, but this node has no file store"
                    )
                try:
                    src = await fetch(sha, filename)
                except Exception as exc:
                    raise EnvBuildError(
                        f"could not fetch the pushed file {filename}: {exc}"
                    ) from exc
                dest.parent.mkdir(parents=True, exist_ok=True)
                tmp = dest.with_name(dest.name + ".tmp")
                got = await asyncio.to_thread(_copy_sha256, src, tmp)
                if got != sha:
                    tmp.unlink()
                    raise EnvBuildError(
                        f"the pushed file {filename} has SHA-256 {got[:12]}, not {sha[:12]} "
                        "(it was replaced in mesh.files after the job was submitted?)"
                    )
                os.replace(tmp, dest)
            log.write(f"# {filename}: pushed file {sha[:12]}\n".encode())
            out.append(str(dest))
        return out

    def _link_node_packages(self, venv: Path) -> None:
        """Make the node's own packages importable in the env, after the env's own."""
        dirs = [
            d for d in (*site.getsitepackages(), site.getusersitepackages()) if os.path.isdir(d)
        ]
        root = Path(__file__).resolve().parent.parent  # where `node` and `mesh` live
        lines = [f"import site; site.addsitedir({d!r})" for d in dirs]
        lines.append(str(root))
        for sp in venv.glob("lib/python*/site-packages"):
            (sp / "_lanmesh_node.pth").write_text("\n".join(lines) + "\n")

    async def _run(self, log: Any, *argv: str) -> None:
        log.write(("$ " + " ".join(argv) + "\n").encode())
        log.flush()
        env = dict(os.environ, PIP_NO_INPUT="1", PYTHONDONTWRITEBYTECODE="")
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log, env=env
            )
        except OSError as exc:
            raise EnvBuildError(f"cannot run {argv[0]}: {exc}") from exc
        try:
            rc = await asyncio.wait_for(proc.wait(), self.build_timeout_s)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise EnvBuildError(f"{argv[2] if len(argv) > 2 else argv[0]} took longer than "
                                f"{self.build_timeout_s:g} s") from None  # fmt: skip
        except BaseException:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if rc != 0:
            what = "pip" if "pip" in argv else "venv"
            raise EnvBuildError(f"{what} exited with code {rc}")

    def evict(self, keep: Iterable[str] = ()) -> list[str]:
        """Remove ready environments, least recently used first, until the rest fit the
        budget; never those in ``keep`` (in use). Returns the keys removed."""
        keep = set(keep)
        ready = sorted(
            ((e["last_used"], k) for k, e in self.index.items() if e.get("status") == "ready"),
        )
        total = sum(self.index[k]["size_bytes"] for _, k in ready)
        gone = []
        for _, k in ready:
            if total <= self.budget_bytes:
                break
            if k in keep:
                continue
            total -= self.index[k]["size_bytes"]
            self._remove(k)
            gone.append(k)
        return gone

    def _remove(self, key: str) -> None:
        shutil.rmtree(self.root / key, ignore_errors=True)
        self.index.pop(key, None)
        self._save()


def _project(req: str) -> str:
    """The PEP 503 project name of a (normalised) requirement; "" for a pushed file."""
    m = _NAME.match(req)
    if req.startswith(WHEEL_PREFIX) or m is None:
        return ""
    return re.split(r"[^a-z0-9.-]", m.group(1).lower(), maxsplit=1)[0]


def _copy_sha256(src: Path, dest: Path) -> str:
    """Copy ``src`` to ``dest``; the SHA-256 (hex) of the bytes copied."""
    h = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        while chunk := fin.read(1 << 20):
            h.update(chunk)
            fout.write(chunk)
    return h.hexdigest()


def _tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith(("$ ", "# "))]
    return "\n".join(kept[-lines:])


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, f)).st_size
    return total
