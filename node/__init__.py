"""The ``mesh-node`` daemon: runs jobs sent by authenticated mesh clients."""

from mesh.node._server import Node, NodeConfig

__all__ = ["Node", "NodeConfig"]
