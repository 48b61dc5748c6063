"""Run an initializer once per worker process before the jobs that need it.

``mesh.Executor(initializer=f, initargs=a)`` (and joblib's backend) wrap each job's
function in :class:`Initialized`, which travels with the function (pickled with it,
cached by the worker like any function). In a worker, the first call with a given
``key`` runs ``f(*a)``; later calls with that key, in that process, do not. It lives in
the core, not in ``mesh.client``, so a worker imports nothing heavy for it.

Code shipped by value (from ``__main__`` or the user's own modules) gets its module's
globals afresh with each pickle, so a ``global`` the initializer set would be missing
from the next submission's functions. The globals the initializer names are therefore
carried over into each later pickle's globals, as if the module lived in the worker.
"""

from __future__ import annotations

import threading
import types
from collections.abc import Callable
from typing import Any

__all__ = ["Initialized"]

# key -> (the globals the initializer ran with, the global names its code uses), for
# the keys whose initializer has run in this process.
_done: dict[str, tuple[dict[str, Any], frozenset[str]]] = {}
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
        self.ready = False  # in this process: initialized, and its globals carried over
        # Job names (mesh.info, errors) show the function, not this wrapper.
        kind = type(fn)
        self.__module__ = getattr(fn, "__module__", None) or kind.__module__
        self.__qualname__ = getattr(fn, "__qualname__", None) or kind.__qualname__

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not self.ready:
            self._prepare()
        return self.fn(*args, **kwargs)

    def _prepare(self) -> None:
        ours = getattr(self.initializer, "__globals__", None)
        with _lock:
            done = _done.get(self.key)
            if done is None:
                self.initializer(*self.initargs)
                code = getattr(self.initializer, "__code__", None)
                names = _global_names(code) if isinstance(code, types.CodeType) else frozenset()
                _done[self.key] = ({} if ours is None else ours, names)
            elif ours is not None and ours is not done[0]:  # shipped by value, again
                first, names = done
                ours.update({name: first[name] for name in names if name in first})
        self.ready = True


def _global_names(code: types.CodeType) -> frozenset[str]:
    """Names a function's code (and the code nested in it) may read or set as globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return frozenset(names)
