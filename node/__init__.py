"""The ``mesh-node`` daemon: runs jobs sent by authenticated mesh clients."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mesh.node._server import Node, NodeConfig

__all__ = ["Node", "NodeConfig"]


def __getattr__(name: str) -> Any:
    # Lazy: a worker process imports mesh.node._jobs and must not pay for the server,
    # the dashboard and the file service it never runs (about a quarter of a second).
    if name in __all__:
        from mesh.node import _server

        return getattr(_server, name)
    raise AttributeError(f"module 'mesh.node' has no attribute {name!r}")
