"""Job handles: job ids that carry the type of their result, and that asyncio can await.

A :class:`Job` *is* its id (a ``str``), so everything that takes job ids takes handles,
and ids printed, stored or sent to another process stay plain strings. What it adds
is for editors and type checkers (``mesh.call(f, x)`` is a ``Job[R]`` when ``f``
returns ``R``, and ``mesh.result`` of it is an ``R``) and ``await job`` in asyncio code.
A handle finds the client that made it by the tag its id starts with, so it holds no
reference and costs no more memory than its id.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Generator
from typing import Any, Generic, TypeVar

__all__ = ["Job"]

T_co = TypeVar("T_co", covariant=True)


# What awaits a job for its client: ``await_job(jid)`` is ``yield from``-ed by ``await``.
AwaitJob = Callable[[str], Generator[Any, None, Any]]

# client tag (the part of a job id before "-") -> how the client of this process that
# uses it awaits a job (weakly: a handle keeps no client alive)
_owners: dict[str, weakref.WeakMethod[AwaitJob]] = {}


def register_owner(tag: str, await_job: AwaitJob) -> None:
    """``await_job`` (a client's bound method) waits for the jobs whose ids start with
    ``tag``: the last one registered, while its client lives."""

    def gone(ref: weakref.WeakMethod[AwaitJob]) -> None:
        if _owners.get(tag) is ref:
            del _owners[tag]

    _owners[tag] = weakref.WeakMethod(await_job, gone)


class Job(str, Generic[T_co]):
    """A job id, typed by its function's result; ``await job`` gives the result.

    ``await`` works in any running event loop, for jobs of an :class:`AsyncClient` or a
    :class:`Client` of this process; cancelling the awaiting task stops the wait, not
    the job. Pickled, a handle becomes its plain id.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (str, (str(self),))

    def __await__(self) -> Generator[Any, None, T_co]:
        ref = _owners.get(self.partition("-")[0])
        await_job = ref() if ref is not None else None
        if await_job is None:
            raise TypeError(
                f"job {str(self)!r} was not submitted by an open client of this process: "
                f"await client.result({str(self)!r}) on an AsyncClient instead"
            )
        result: T_co = yield from await_job(self)
        return result
