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
from collections.abc import Generator
from typing import Any, Generic, Protocol, TypeVar

__all__ = ["Job"]

T_co = TypeVar("T_co", covariant=True)


class _Owner(Protocol):
    def _await_job(self, job: str) -> Generator[Any, None, Any]: ...


# client tag (the part of a job id before "-") -> the client of this process that uses it
_owners: weakref.WeakValueDictionary[str, _Owner] = weakref.WeakValueDictionary()


def register_owner(tag: str, owner: _Owner) -> None:
    """``owner`` waits for the jobs whose ids start with ``tag``: the last one registered."""
    _owners[tag] = owner


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
        owner = _owners.get(self.partition("-")[0])
        if owner is None:
            raise TypeError(
                f"job {str(self)!r} was not submitted by an open client of this process: "
                f"await client.result({str(self)!r}) on an AsyncClient instead"
            )
        result: T_co = yield from owner._await_job(self)
        return result
