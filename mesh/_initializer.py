"""Run an initializer once per worker process before the jobs that need it.

``mesh.Executor(initializer=f, initargs=a)`` (and joblib's backend) wrap each job's
function in :class:`Initialized`, which travels with the function (pickled once per
submission, cached by the worker like any function). In a worker, the first call with
a given ``key`` runs ``f(*a)``; later calls with that key, in that process, do not. It
lives in the core, not in ``mesh.client``, so a worker imports nothing heavy for it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Initialized"]

# Keys whose initializer has run in this process.
_done: set[str] = set()
_lock = threading.Lock()


class Initialized:
    """``fn``, called after ``initializer(*initargs)`` ran once in this process for ``key``.

    An initializer that raises fails the job it ran before, with its own exception, and
    is tried again before this key's next job in the process."""

    def __init__(
        self,
        fn: Callable[..., Any],
        key: str,
        initializer: Callable[..., object],
        initargs: tuple[Any, ...],
    ) -> None:
        self.fn = fn
        self.key = key
        self.initializer = initializer
        self.initargs = initargs
        # Job names (mesh.info, errors) show the function, not this wrapper.
        kind = type(fn)
        self.__module__ = getattr(fn, "__module__", None) or kind.__module__
        self.__qualname__ = getattr(fn, "__qualname__", None) or kind.__qualname__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.key not in _done:
            with _lock:
                if self.key not in _done:
                    self.initializer(*self.initargs)
                    _done.add(self.key)
        return self.fn(*args, **kwargs)
