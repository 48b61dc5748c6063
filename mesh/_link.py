"""Links from one node to others: authenticated connections (mesh/_connection.py) by
address, opened on demand and closed when idle. The node's membership (node/_peers.py)
and its file service (node/_files.py) each keep one pool, under the names
``NAME/gossip`` and ``NAME/files``, and a client (client/_links.py) one for its node
links (issue 15: one link class, not one per service).

One connect at a time per address: every caller waits on the same attempt, and what is
sent meanwhile waits in a bounded queue, flushed once the link is up. A failed connect
drops that queue and is remembered (``error``, ``failing_since``); when to try again is
the owner's call (gossip retries with backoff, a transfer when it needs the link). The
pool runs no task or timer of its own: its owner asks :meth:`Links.next_idle` and calls
:meth:`Links.close_idle` from its own timer, so nothing runs while nothing happens.
Liveness is not the link's business either: the mesh's gossip says who is alive.

When to try a failed link again is one policy for every owner, :class:`Backoff`
(capped exponential with jitter): the client's node links (client/_links.py) and the
gossip joins (node/_peers.py) use it, so no owner hammers a node that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

from mesh._connection import Connection, open_connection
from mesh._protocol import Message
from mesh._tasks import TaskSet
from mesh.errors import MeshError

__all__ = ["Backoff", "Link", "Links"]

log = logging.getLogger("mesh.link")

PENDING_MAX = 64  # messages queued for a link that is still connecting


@dataclass(frozen=True)
class Backoff:
    """When to try again after failures: ``first_s`` doubling (by ``factor``) up to
    ``cap_s``, each delay shortened by up to ``jitter`` of itself so that many owners
    that lost the same node do not retry in step. The owner counts its failures and
    starts again from 0 after a success."""

    first_s: float = 0.1
    cap_s: float = 5.0
    factor: float = 2.0
    jitter: float = 0.5

    def __post_init__(self) -> None:
        if not (math.isfinite(self.first_s) and self.first_s > 0):
            raise ValueError(
                f"Backoff: first_s must be a positive number of seconds, not {self.first_s!r}"
            )
        if not (math.isfinite(self.cap_s) and self.cap_s >= self.first_s):
            raise ValueError(
                f"Backoff: cap_s must be at least first_s ({self.first_s:g} s), not {self.cap_s!r}"
            )
        if not (math.isfinite(self.factor) and self.factor >= 1):
            raise ValueError(f"Backoff: factor must be at least 1, not {self.factor!r}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff: jitter must be within 0..1, not {self.jitter!r}")

    def delay_s(self, failures: int, draw: float = 1.0) -> float:
        """The wait after ``failures`` failures in a row (0: the first retry), for a
        ``draw`` in [0, 1) from the owner's random source (1.0: no jitter)."""
        if failures < 0:
            raise ValueError(f"Backoff.delay_s: failures must be 0 or more, not {failures}")
        if not 0 <= draw <= 1:
            raise ValueError(f"Backoff.delay_s: draw must be within 0..1, not {draw!r}")
        full = self.cap_s
        if self.factor == 1 or failures < math.log(self.cap_s / self.first_s, self.factor):
            full = min(self.cap_s, self.first_s * self.factor**failures)
        return full * (1 - self.jitter * (1 - draw))


@dataclass(eq=False)
class Link:
    """One address's link: its connection while one is open, its connect in progress."""

    address: str
    conn: Connection | None = None
    task: asyncio.Task[None] | None = None
    pending: list[Message] = field(default_factory=list)
    used_at: float = 0.0
    busy: int = 0  # requests waiting for an answer on it: never idle meanwhile
    error: BaseException | None = None
    failing_since: float | None = None

    @property
    def is_open(self) -> bool:
        return self.conn is not None and not self.conn.closed


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Links:
    """A pool of links by address (see the module docstring).

    ``on_open(link, conn)`` sees each new connection first and returns False to refuse
    it (our own address by another name, a node already linked elsewhere): it is closed
    and its queue dropped. ``on_message`` and ``on_close`` get every link's traffic,
    ``on_fail`` each failed connect.
    """

    def __init__(
        self,
        secret: bytes,
        name: str,
        *,
        on_message: Callable[[Link, Connection, Message], None],
        on_close: Callable[[Link, Connection, BaseException | None], None] | None = None,
        on_open: Callable[[Link, Connection], bool] | None = None,
        on_fail: Callable[[Link, BaseException], None] | None = None,
        connect_timeout_s: float = 5.0,
        idle_s: float = math.inf,
    ) -> None:
        self._secret = secret
        self.name = name  # shown in the handshake; the owner updates it on a rename
        self._on_message = on_message
        self._on_close = on_close
        self._on_open = on_open
        self._on_fail = on_fail
        self._connect_timeout_s = connect_timeout_s
        self.idle_s = idle_s  # the owner may change it (membership: with the mesh's size)
        self._loop = asyncio.get_running_loop()
        self._links: dict[str, Link] = {}
        self._tasks = TaskSet(f"links of {name}", log)
        self._closing = False
        self.opened = 0  # connections made since start (a debug counter)

    def get(self, address: str) -> Link | None:
        return self._links.get(address)

    def values(self) -> list[Link]:
        return list(self._links.values())

    def open_count(self) -> int:
        return sum(1 for link in self._links.values() if link.is_open)

    def send(self, address: str, msg: Message) -> Link:
        """Send on the link to ``address``, opening it (and queueing ``msg``) if need be."""
        link = self._link(address)
        link.used_at = self._loop.time()
        if link.conn is not None and not link.conn.closed:
            with contextlib.suppress(MeshError):
                link.conn.send(msg)
            return link
        if len(link.pending) < PENDING_MAX:
            link.pending.append(msg)
        self._open(link)
        return link

    async def connected(self, address: str) -> Connection:
        """The open link to ``address``, opened now if need be. Raises MeshError."""
        link = self._link(address)
        link.used_at = self._loop.time()
        if not link.is_open:
            self._open(link)
            if link.task is not None:
                await asyncio.shield(link.task)
        if link.conn is None or link.conn.closed:
            if isinstance(link.error, MeshError):  # its kind matters (AuthenticationError)
                raise link.error
            raise MeshError(f"node at {address} cannot be reached: {link.error or 'no link'}")
        return link.conn

    def forget(self, address: str) -> None:
        """Drop (and close) the link to ``address``."""
        link = self._links.pop(address, None)
        if link is not None and link.conn is not None:
            link.conn.close()

    def idle_at(self, link: Link) -> float:
        """When ``link`` counts as idle (math.inf while it connects or a request waits)."""
        if link.task is not None or link.busy:
            return math.inf
        last = max(link.used_at, link.conn.last_alive if link.conn is not None else 0.0)
        return last + self.idle_s

    def next_idle(self) -> float:
        return min((self.idle_at(link) for link in self._links.values()), default=math.inf)

    def close_idle(self, now: float) -> None:
        """Close the links idle at ``now`` (their next use opens them again)."""
        for address, link in list(self._links.items()):
            if now >= self.idle_at(link):
                self.forget(address)

    def close_soon(self) -> list[asyncio.Task[None]]:
        """The connects in progress (a leaving node gives them a moment to carry news)."""
        return [link.task for link in self._links.values() if link.task is not None]

    async def stop_connecting(self) -> None:
        """Stop (and open no more) connects; the open links stay (an owner's goodbye)."""
        self._closing = True
        await self._tasks.close()

    async def close(self) -> None:
        """Stop connecting, then close every link after what is queued on it."""
        await self.stop_connecting()  # first, so that a connect finishing now is closed below
        for link in self._links.values():
            if link.conn is not None:
                link.conn.close()

    # ---- inside ----

    def _link(self, address: str) -> Link:
        link = self._links.get(address)
        if link is None:
            link = self._links[address] = Link(address)
        return link

    def _open(self, link: Link) -> None:
        if link.task is None and not self._closing:
            link.task = self._tasks.spawn(self._connect(link), f"connect {link.address}")

    async def _connect(self, link: Link) -> None:
        try:
            host, port = _split(link.address)
            conn = await open_connection(
                host, port, self._secret, name=self.name, timeout_s=self._connect_timeout_s,
                on_message=lambda c, m: self._on_message(link, c, m),
                on_close=lambda c, r: self._closed(link, c, r),
            )  # fmt: skip
        except (MeshError, ValueError) as exc:
            link.pending.clear()
            link.error = exc
            if link.failing_since is None:
                link.failing_since = self._loop.time()
            log.debug("no link to %s: %s", link.address, exc)
            if self._on_fail is not None:
                self._on_fail(link, exc)
            return
        finally:
            link.task = None
        self.opened += 1
        if self._closing or (self._on_open is not None and not self._on_open(link, conn)):
            conn.close()
            link.pending.clear()
            return
        link.conn, link.error, link.failing_since = conn, None, None
        pending, link.pending = link.pending, []
        for msg in pending:
            with contextlib.suppress(MeshError):
                conn.send(msg)

    def _closed(self, link: Link, conn: Connection, reason: BaseException | None) -> None:
        if link.conn is conn:
            link.conn, link.error = None, reason
        if self._on_close is not None:
            self._on_close(link, conn, reason)
