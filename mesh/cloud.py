"""PiCloud's ``cloud`` module on the mesh: ``import mesh.cloud as cloud``.

A program written for PiCloud runs with that one line changed. Every name keeps
PiCloud's meaning where a LAN mesh can honour it, and says what it does instead
where it cannot (the README's "Coming from PiCloud" table lists each one):

- ``start_simulator()`` starts an embedded local mesh (PiCloud's simulator ran on
  multiprocessing); ``is_simulated()`` says whether one is in use; ``setkey()``
  chooses the real mesh (the nodes found on the LAN or in ``MESH_PEERS``). Its keys
  are not used: on a LAN the mesh secret plays their role.
- A failed job raises :class:`CloudException` from ``result``/``iresult``/``join``,
  as PiCloud did. The exception is also an instance of the job's own exception type
  (a ``ZeroDivisionError`` raised by the job is caught by ``except
  ZeroDivisionError`` and by ``except cloud.CloudException``); it is raised from
  the original exception, whose own cause holds the remote traceback.
- PiCloud's job options are translated to the mesh's (see :func:`translate_options`).
"""

from __future__ import annotations

import builtins
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import mesh
from mesh import files
from mesh.errors import MeshError, MeshTimeout

if TYPE_CHECKING:
    from mesh.client import JobInfo

__all__ = [
    "CloudException",
    "CloudTimeoutError",
    "call",
    "close",
    "files",
    "info",
    "is_simulated",
    "iresult",
    "join",
    "kill",
    "map",
    "result",
    "setkey",
    "start_simulator",
    "status",
    "translate_options",
]

T = TypeVar("T")

# PiCloud's core types. A LAN's machines are what they are: the type is checked, and
# its core count becomes the slots the job occupies.
_TYPE_CORES = {"c1": 1, "c2": 1, "m1": 1, "s1": 1, "f2": 2}


class CloudException(MeshError):
    """A PiCloud program's view of a failed job: ``except cloud.CloudException``.

    Raised by ``result``/``iresult``/``join`` of this module; ``jid`` names the job.
    """

    jid: str = ""


class CloudTimeoutError(CloudException, MeshTimeout):
    """``result``/``join`` ran out of time (PiCloud's name); also a ``TimeoutError``."""


_combined: dict[type[BaseException], type[BaseException]] = {}


def _as_cloud(exc: BaseException) -> BaseException:
    """``exc`` as an instance of both its own type and :class:`CloudException`."""
    if isinstance(exc, CloudException) or not isinstance(exc, Exception):
        return exc
    if isinstance(exc, MeshTimeout):
        new: BaseException = CloudTimeoutError(*exc.args)
    else:
        try:
            both = _combined.get(type(exc))
            if both is None:
                both = _combined[type(exc)] = type(
                    type(exc).__name__, (CloudException, type(exc)), {}
                )
            new = both.__new__(both)
            new.args = exc.args
        except TypeError:  # a type that cannot be combined (a layout conflict): ours alone
            new = CloudException(f"{type(exc).__name__}: {exc}")
        else:
            new.__dict__.update(getattr(exc, "__dict__", {}))
    new.__traceback__ = exc.__traceback__
    jid = getattr(exc, "jid", "")
    if isinstance(jid, str):
        new.jid = jid  # type: ignore[attr-defined]
    return new


def translate_options(kwargs: dict[str, Any]) -> dict[str, Any]:
    """PiCloud's job options as the mesh's; other keyword arguments pass unchanged.

    ``_high_cpu=True``: accepted; every mesh job has a whole core (a worker slot) already.
    ``_type="c1"|"c2"|"m1"|"s1"|"f2"``: checked; ``f2`` occupies 2 slots (``_cores=2``).
    ``_cores``, ``_label``, ``_env``, ``_retries``: as the mesh's own.
    ``_max_runtime``: PiCloud's minutes, converted to the mesh's seconds.
    ``_restartable=False``: ``_retries=0`` (a job that must not run twice).
    ``_depends_on``, ``_kill_process``, ``_priority``: the mesh's own, which are PiCloud's
    (held until those jobs are done; a fresh worker process after the job; lower first).
    ``_profile``, ``_fast_serialization``: accepted, no effect on a mesh.
    """
    out = dict(kwargs)
    high_cpu = out.pop("_high_cpu", False)
    if not isinstance(high_cpu, bool):
        raise TypeError(f"_high_cpu must be True or False, not {high_cpu!r}")
    kind = out.pop("_type", None)
    if kind is not None:
        if kind not in _TYPE_CORES:
            raise ValueError(f"_type {kind!r} is not a PiCloud type ({', '.join(_TYPE_CORES)})")
        out.setdefault("_cores", _TYPE_CORES[kind])
    if "_max_runtime" in out and out["_max_runtime"] is not None:
        out["_max_runtime"] = float(out["_max_runtime"]) * 60.0
    restartable = out.pop("_restartable", True)
    if not restartable:
        out.setdefault("_retries", 0)
    priority = out.get("_priority")
    if priority is None:
        out.pop("_priority", None)  # PiCloud's default
    elif isinstance(priority, bool) or not isinstance(priority, int):
        raise TypeError(f"_priority must be an integer, not {priority!r}")
    out.pop("_profile", None)
    out.pop("_fast_serialization", None)
    return out


def call(func: Callable[..., T], /, *args: Any, **kwargs: Any) -> mesh.Job[T]:
    """Run ``func(*args, **kwargs)`` on the mesh; return its job id at once."""
    return mesh.call(func, *args, **translate_options(kwargs))


def map(func: Callable[..., T], /, *sequences: Iterable[Any], **kwargs: Any) -> list[mesh.Job[T]]:
    """One job per item, like builtin ``map``; return the job ids at once."""
    return mesh.map(func, *sequences, **translate_options(kwargs))


def result(jids: str | Sequence[str], timeout: float | None = None) -> Any:
    """The result of a job, or the list of results of several; a failure raises
    :class:`CloudException` (also of the job's own exception type)."""
    try:
        return mesh.result(jids, timeout)
    except Exception as exc:
        raise _as_cloud(exc) from exc


def iresult(jids: Sequence[str], timeout: float | None = None) -> Iterator[Any]:
    """Results as an iterator, in order; a failure raises :class:`CloudException`."""
    it = mesh.iresult(jids, timeout)
    while True:
        try:
            value = next(it)
        except StopIteration:
            return
        except Exception as exc:
            raise _as_cloud(exc) from exc
        yield value


def join(jids: str | Sequence[str], timeout: float | None = None) -> None:
    """Wait for the jobs to finish; a failure raises :class:`CloudException`."""
    try:
        mesh.join(jids, timeout)
    except Exception as exc:
        raise _as_cloud(exc) from exc


def status(jids: str | Sequence[str]) -> str | builtins.list[str]:
    """'queued', 'processing', 'done', 'error' or 'killed' (one, or a list)."""
    return mesh.status(jids)


def kill(jids: str | Sequence[str]) -> None:
    """Stop queued or running jobs."""
    mesh.kill(jids)


def info(jids: str | Sequence[str]) -> JobInfo | builtins.list[JobInfo]:
    """Where and when jobs ran, their CPU time, output and error (``mesh.info``)."""
    return mesh.info(jids)


def start_simulator(force_restart: bool = False) -> None:
    """Run jobs on an embedded local mesh on this machine (PiCloud's simulator)."""
    if force_restart or not mesh.is_local():
        mesh.local()


def is_simulated() -> bool:
    """True while jobs run on an embedded local mesh."""
    return mesh.is_local()


def setkey(api_key: object = None, api_secretkey: object = None, server_url: object = None,
           restart: bool = False) -> None:  # fmt: skip
    """Use the real mesh: the nodes in ``MESH_PEERS`` or found on the LAN, with the
    mesh secret from ``MESH_SECRET`` or the secret file. PiCloud's keys are not used."""
    del api_key, api_secretkey, server_url, restart
    mesh.connect()


def close() -> None:
    """Disconnect (and stop a simulator), as ``mesh.close``."""
    mesh.close()
