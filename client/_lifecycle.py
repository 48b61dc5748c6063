"""A client's lifecycle, one state for both clients instead of a flag per phase."""

from __future__ import annotations

import enum

from mesh.errors import ConnectionClosed

__all__ = ["ClientState"]


class ClientState(enum.Enum):
    """Where a client is in its life; it only moves forward (a failed start goes back to
    NEW). DISCOVERING: listening for nodes over mDNS, before connecting; STARTING:
    connecting (nodes learned from now on connect by themselves); RUNNING: one node at
    least was usable; CLOSING: ``close()`` has begun; CLOSED: nothing is left running."""

    NEW = "new"
    DISCOVERING = "discovering"
    STARTING = "starting"
    RUNNING = "running"
    CLOSING = "closing"
    CLOSED = "closed"

    @property
    def closed(self) -> bool:
        """Closing or closed: no new work is taken."""
        return self in (ClientState.CLOSING, ClientState.CLOSED)

    def refuse(self, what: str) -> ConnectionClosed:
        """The error for doing ``what`` in this state: "cannot wait for job x: the client
        is closed"."""
        return ConnectionClosed(f"cannot {what}: the client is {self.value}")
