"""lanmesh: run Python functions in parallel on every idle core of the LAN.

    import mesh
    jids = mesh.map(sum_primes, range(100_000, 100_010))
    print(mesh.result(jids))

The module-level functions use a default client: the peers given to
:func:`connect` or in ``MESH_PEERS``, else an embedded local mesh (with a one-line
notice). ``Client`` and ``AsyncClient`` give explicit control; ``Executor`` is a
``concurrent.futures.Executor`` on the mesh, and ``import mesh.joblib`` adds a joblib
backend. This package shares the protocol with nodes and imports the client only when
first used.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar, overload

from mesh.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionClosed,
    ConnectionLost,
    DependencyFailed,
    EnvBuildFailed,
    FileCorrupted,
    FilesError,
    FileStoreFull,
    JobError,
    JobKilled,
    JobRejected,
    LocalProtocolError,
    MaxRuntimeExceeded,
    MemoryLimitExceeded,
    MeshConnectionError,
    MeshError,
    MeshFileNotFound,
    MeshTimeout,
    MissingModule,
    NoNodesAvailable,
    ProtocolError,
    RemoteProtocolError,
    RemoteTraceback,
    SerializationError,
    UnknownJob,
    VersionMismatch,
    WorkerDied,
    WorkerStartFailed,
)

if TYPE_CHECKING:
    from mesh.client import AsyncClient, Client, Executor, Job, JobInfo, NodeInfo
    from mesh.client._records import EnvInfo

__version__ = "0.1.0"
__all__ = [
    "AsyncClient", "Client", "Executor", "Job", "JobInfo", "NodeInfo", "EnvInfo", "call", "connect", "default_client", "open_client", "env", "env_info", "info", "iresult", "is_local", "join",
    "kill", "local", "map", "result", "status", "close", "files",
    "AuthenticationError", "ConfigurationError", "ConnectionClosed", "ConnectionLost", "DependencyFailed", "EnvBuildFailed", "FileCorrupted", "FilesError", "FileStoreFull", "JobError", "JobKilled", "JobRejected", "LocalProtocolError", "MaxRuntimeExceeded", "MemoryLimitExceeded", "MeshConnectionError", "MeshError", "MeshFileNotFound", "MeshTimeout", "MissingModule", "NoNodesAvailable", "ProtocolError", "RemoteProtocolError", "RemoteTraceback", "SerializationError", "UnknownJob", "VersionMismatch", "WorkerDied", "WorkerStartFailed",
]  # fmt: skip

T = TypeVar("T")
_lock = threading.Lock()
_default: Client | None = None
# In a forked child: the parent's default client, whose nodes the child's own default
# client connects to. Kept, never used nor closed here: its thread, links and local
# mesh are the parent's.
_inherited: Client | None = None


def _after_fork_in_child() -> None:
    """The child of a fork gets a default client of its own, made at its first call."""
    global _lock, _default, _inherited
    _lock = threading.Lock()  # a parent's thread may have held it at the fork
    if _default is not None and not _default.closed:
        _inherited = _default
    _default = None


os.register_at_fork(after_in_child=_after_fork_in_child)


def __getattr__(name: str) -> Any:
    if name in ("Client", "AsyncClient", "Executor", "Job", "JobInfo", "NodeInfo"):
        import importlib

        return getattr(importlib.import_module("mesh.client"), name)
    if name == "EnvInfo":
        from mesh.client._records import EnvInfo

        return EnvInfo
    if name == "files":  # mesh.files, the file store (imports the client when first used)
        import importlib

        return importlib.import_module("mesh.files")
    raise AttributeError(f"module 'mesh' has no attribute {name!r}")


def _set_default(new: Client) -> Client:
    global _default
    with _lock:
        old, _default = _default, new
    if old is not None and old is not new:
        old.close()
    return new


def default_client() -> Client:
    """The client the module-level calls use (``mesh.call``...), connected on first use:
    the nodes of :func:`connect`, else ``MESH_PEERS``, else those found over mDNS, else an
    embedded local mesh. ``mesh.Executor()`` and the joblib backend use it too."""
    global _default
    with _lock:
        if _default is not None and not _default.closed:
            return _default
        if _inherited is not None:  # a forked child: the parent's nodes, never its local mesh
            _default = _inherited.clone()
            return _default
        from mesh.client import Client

        try:
            _default = Client()  # MESH_PEERS, else the nodes of this mesh found over mDNS
            return _default
        except (NoNodesAvailable, ConfigurationError) as exc:
            if os.environ.get("MESH_PEERS", "").strip():
                raise  # nodes were named: failing to reach them is the user's answer
            # Why: none answered, discovery could not run (no interface), no secret...
            why = str(exc)
        nodes = int(os.environ.get("MESH_LOCAL_NODES", "2"))
        print(
            f"mesh: no nodes found (MESH_PEERS unset): {why}; starting a local mesh of "
            f"{nodes} nodes on 127.0.0.1",
            file=sys.stderr,
        )
        _default = Client.local(nodes)
        return _default


def open_client() -> Client | None:
    """The client the module-level calls use, if one is open now; None if none is (this
    starts nothing: ``mesh.files`` inside a job then goes through the job's node)."""
    client = _default
    return client if client is not None and not client.closed else None


def connect(peers: str | Iterable[str] | None = None, secret: str | bytes | None = None,
            **kwargs: Any) -> Client:  # fmt: skip
    """Use these nodes (``["host:7390", ...]``, or ``MESH_PEERS``) for the module-level calls."""
    from mesh.client import Client

    return _set_default(Client(peers, secret, **kwargs))


def local(nodes: int = 2, workers: int | None = None) -> Client:
    """Start an embedded mesh of real nodes on 127.0.0.1 and use it (PiCloud's simulator)."""
    from mesh.client import Client

    return _set_default(Client.local(nodes, workers))


def is_local() -> bool:
    """True when the module-level calls run on an embedded local mesh."""
    client = _default if _default is not None else _inherited
    return client is not None and not client.closed and client.is_local


def close() -> None:
    """Disconnect the default client (and stop its local mesh, if any)."""
    global _default, _inherited
    with _lock:
        old, _default, _inherited = _default, None, None
    if old is not None:
        old.close()


def call(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> Job[T]:
    """Run ``func(*args, **kwargs)`` on the mesh; return its job id at once.

    The id is a :class:`Job` (a ``str``) typed by ``func``'s result, so ``result(jid)``
    has that type; ``await jid`` waits for it in asyncio code.
    """
    return default_client().call(func, *args, **kwargs)


def map(func: Callable[..., T], /, *sequences: Iterable[Any], **kwargs: Any) -> list[Job[T]]:
    """Like builtin ``map``: one job per item; return the job ids at once."""
    return default_client().map(func, *sequences, **kwargs)


@overload  # a Job is also a Sequence[str]: the first match wins
def result(  # type: ignore[overload-overlap]
    jids: Job[T], timeout: float | None = None, progress: bool | None = None
) -> T: ...
@overload
def result(jids: str, timeout: float | None = None, progress: bool | None = None) -> Any: ...
@overload
def result(
    jids: Sequence[Job[T]], timeout: float | None = None, progress: bool | None = None
) -> list[T]: ...
@overload
def result(
    jids: Sequence[str], timeout: float | None = None, progress: bool | None = None
) -> list[Any]: ...


def result(
    jids: str | Sequence[str], timeout: float | None = None, progress: bool | None = None
) -> Any:
    """The result of one job, or the list of results of many, in order.

    ``progress``: a bar on stderr (True), none (False), or one once the wait passes
    2 s (None, the default); only ever on a terminal.
    """
    return default_client().result(jids, timeout, progress)


@overload
def iresult(
    jids: Sequence[Job[T]], timeout: float | None = None, ordered: bool = True,
    progress: bool | None = None,
) -> Iterator[T]: ...  # fmt: skip
@overload
def iresult(
    jids: Sequence[str], timeout: float | None = None, ordered: bool = True,
    progress: bool | None = None,
) -> Iterator[Any]: ...  # fmt: skip


def iresult(
    jids: Sequence[str], timeout: float | None = None, ordered: bool = True,
    progress: bool | None = None,
) -> Iterator[Any]:  # fmt: skip
    """Yield results as they finish (in order, or in completion order); ``progress``
    as for :func:`result`."""
    return default_client().iresult(jids, timeout, ordered, progress)


def join(
    jids: str | Sequence[str],
    timeout: float | None = None,
    ignore_errors: bool = False,
    progress: bool | None = None,
) -> None:
    """Wait for jobs to finish; raise the first failure unless ``ignore_errors``."""
    default_client().join(jids, timeout, ignore_errors, progress)


def status(jids: str | Sequence[str]) -> str | list[str]:
    """'queued', 'processing', 'done', 'error' or 'killed' (one, or a list)."""
    return default_client().status(jids)


def kill(jids: str | Sequence[str]) -> None:
    """Stop queued or running jobs; a running job's worker process is terminated."""
    default_client().kill(jids)


def info(jids: str | Sequence[str]) -> JobInfo | list[JobInfo]:
    """Node, submit/start/finish times, CPU seconds, captured output and error of jobs."""
    return default_client().info(jids)


def env_info() -> list[EnvInfo]:
    """The job environments (``_env``) every reachable node holds: requirements, status
    ("ready", "building", "failed"), size, last use, builds, and a failed build's error
    with pip's last lines. ``mesh envs`` prints them."""
    return default_client().env_info()


def env(*requirements: str | Iterable[str]) -> tuple[str, ...]:
    """A named environment, defined once: ``ML = mesh.env("numpy>=2", "./dist/mylib.whl")``
    then ``mesh.map(f, xs, _env=ML)``. Requirements (strings, or other ``env``s to
    combine) come back sorted, de-duplicated, project names in PEP 503 form: the set a
    node keys its cached environment by, so equal sets share one environment. A local
    wheel or sdist becomes an absolute path (it must exist); its bytes are hashed and
    pushed when a job uses it, so a rebuilt file is picked up."""
    from mesh.client._options import DIST_SUFFIXES
    from mesh.node._envs import normalise

    out: list[str] = []
    for item in requirements:
        reqs = [item] if isinstance(item, str) else list(item)
        for req in reqs:
            if not isinstance(req, str):
                raise TypeError(f"mesh.env takes requirement strings, not {req!r}")
            req = req.strip()
            if req.endswith(DIST_SUFFIXES) and (
                req.startswith((".", "/", "~")) or os.sep in req or os.path.exists(req)
            ):
                path = os.path.abspath(os.path.expanduser(req))
                if not os.path.isfile(path):
                    raise ConfigurationError(f"mesh.env: no such file {req}")
                req = path
            out.append(req)
    return normalise(out)
