"""Links from one node to others: authenticated connections (mesh/_connection.py) by
address, opened on demand or kept up. The node's membership (node/_peers.py) and its
file service (node/_files.py) each keep one pool of on-demand links, under the names
``NAME/gossip`` and ``NAME/files``; a client (client/_links.py) keeps its node links up
with one (issue 15: one link class, not one per service).

One connect at a time per address: every caller waits on the same attempt, and what is
sent meanwhile waits in a bounded queue, flushed once the link is up. A failed connect
drops that queue and is remembered (``error``, ``failing_since``). An on-demand link is
tried again when its owner next needs it (gossip retries with backoff, a transfer when
it needs the link); its owner asks :meth:`Links.next_idle` and calls
:meth:`Links.close_idle` from its own timer.

A kept link (:meth:`Links.keep`) is the pool's to keep up: each connect runs the
owner's async ready hook (the client waits for the node's first load report) and a
link that fails to connect, is refused by the hook or closes is connected again after
its :class:`Backoff` wait, from one ``loop.call_later`` timer per link (no sleeping
task: nothing runs while nothing is due); its failure count starts over once it was
ready. It is never closed as idle; :meth:`Links.forget` stops keeping it, closing the
pool cancels every timer. Liveness is not the link's business: the mesh's gossip says
who is alive, and the client pings the nodes it has jobs on (client/_links.py).

When to try a failed link again is one policy for every owner, :class:`Backoff`
(capped exponential with jitter): kept links and the gossip joins (node/_peers.py) use
it, so no owner hammers a node that is down.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from mesh._connection import Connection, open_connection
from mesh._protocol import Message
from mesh._tasks import TaskSet
from mesh.errors import MeshConnectionError, MeshError

__all__ = ["KEEP_BACKOFF", "Backoff", "Keep", "Link", "Links", "ReadyHook"]

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


# A kept link that is lost or cannot be reached is tried again after 0.1 s, doubling to
# 5 s (with jitter, so that the clients of a restarted node do not all knock at once).
KEEP_BACKOFF = Backoff(first_s=0.1, cap_s=5.0)


@dataclass(eq=False)
class Link:
    """One address's link: its connection while one is open, its connect in progress;
    while kept, how (``keep``), its failures in a row and the timer of its next try."""

    address: str
    conn: Connection | None = None
    task: asyncio.Task[None] | None = None
    pending: list[Message] = field(default_factory=list)
    used_at: float = 0.0
    busy: int = 0  # requests waiting for an answer on it: never idle meanwhile
    error: BaseException | None = None
    failing_since: float | None = None
    keep: Keep | None = None
    failures: int = 0  # connects failed (or refused) in a row while kept
    retry: asyncio.TimerHandle | None = None  # the next connect of a kept link
    retry_s: float = 0.0  # the wait before that connect

    @property
    def is_open(self) -> bool:
        return self.conn is not None and not self.conn.closed


# The owner's check of a new connection of a kept link: True when it is usable; False
# or a MeshError refuses it (it is closed and counts as a failure).
ReadyHook = Callable[[Link, Connection], Awaitable[bool]]


@dataclass(frozen=True)
class Keep:
    """How the pool keeps one link up (see :meth:`Links.keep`)."""

    backoff: Backoff = KEEP_BACKOFF
    ready: ReadyHook | None = None
    on_ready: Callable[[Link, Connection], None] | None = None


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


class Links:
    """A pool of links by address (see the module docstring).

    ``on_open(link, conn)`` sees each new connection first and returns False to refuse
    it (our own address by another name, a node already linked elsewhere): it is closed
    and its queue dropped (a kept link's refusal counts as a failure, so it is tried
    again). ``on_message`` and ``on_close`` get every link's traffic,
    ``on_fail`` each failed connect (of a kept link: each one its ready hook refused,
    too; ``link.failures`` counts them, ``link.retry_s`` is the wait before the next).
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
        self._rng = random.Random()  # the kept links' backoff jitter
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
        if link.conn is not None and not link.conn.closed and link.task is None:
            with contextlib.suppress(MeshError):
                link.conn.send(msg)
            return link
        if len(link.pending) < PENDING_MAX:
            link.pending.append(msg)
        self._open(link)
        return link

    async def connected(self, address: str) -> Connection:
        """The open (and, if kept, ready) link to ``address``, opened now if need be.
        Raises MeshError."""
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

    def keep(
        self,
        address: str,
        backoff: Backoff = KEEP_BACKOFF,
        *,
        ready: ReadyHook | None = None,
        on_ready: Callable[[Link, Connection], None] | None = None,
    ) -> Link:
        """Keep the link to ``address`` up from now on: connect it now (unless it is open
        or connecting), and again after each failure or close, ``backoff.delay_s(n)``
        after the n+1-th failure in a row (a link lost once it was ready: after
        ``delay_s(0)``). Each new connection is ``ready`` once the hook says so
        (without one: at once); ``on_ready(link, conn)`` then tells the owner it is
        usable, and the failure count starts over. :meth:`forget` stops keeping it."""
        link = self._link(address)
        link.keep = Keep(backoff, ready, on_ready)
        if not link.is_open and link.retry is None:
            self._open(link)
        return link

    def forget(self, address: str) -> None:
        """Drop (and close) the link to ``address``; a kept one is no longer kept."""
        link = self._links.pop(address, None)
        if link is None:
            return
        link.keep = None
        if link.retry is not None:
            link.retry.cancel()
            link.retry = None
        if link.conn is not None:
            link.conn.close()

    def idle_at(self, link: Link) -> float:
        """When ``link`` counts as idle (math.inf while it connects, a request waits or
        it is kept)."""
        if link.task is not None or link.busy or link.keep is not None:
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
        """Stop (and open no more) connects, kept links' timers too; the open links stay
        (an owner's goodbye)."""
        self._closing = True
        for link in self._links.values():
            if link.retry is not None:
                link.retry.cancel()
                link.retry = None
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

    def _ours(self, link: Link) -> bool:
        """Whether ``link`` is still this pool's to use (not forgotten, not closing)."""
        return not self._closing and self._links.get(link.address) is link

    async def _connect(self, link: Link) -> None:
        try:
            outcome = await self._attempt(link)
        finally:
            link.task = None
        if isinstance(outcome, BaseException):
            self._failed(link, outcome)
        elif outcome is None:
            link.pending.clear()
        elif link.keep is not None:
            link.failures = 0
            if link.keep.on_ready is not None:
                link.keep.on_ready(link, outcome)

    async def _attempt(self, link: Link) -> Connection | BaseException | None:
        """One connect: the ready connection, why it failed, or None when it is not
        wanted any more (the pool closing, the link forgotten, ``on_open`` refused it)."""
        try:
            host, port = _split(link.address)
            conn = await open_connection(
                host, port, self._secret, name=self.name, timeout_s=self._connect_timeout_s,
                on_message=lambda c, m: self._on_message(link, c, m),
                on_close=lambda c, r: self._closed(link, c, r),
            )  # fmt: skip
        except (MeshError, ValueError) as exc:
            return exc
        self.opened += 1
        if not self._ours(link):
            conn.close()
            return None
        if self._on_open is not None and not self._on_open(link, conn):
            conn.close()
            if link.keep is not None:  # kept: refused like by its hook, so tried again
                return MeshConnectionError(f"the link to {link.address} was refused")
            return None
        link.conn, link.error, link.failing_since = conn, None, None
        keep = link.keep
        if keep is not None and keep.ready is not None:
            refused = await self._ready(link, conn, keep.ready)
            if refused is not None or not self._ours(link):
                if link.conn is conn:  # (so that its close is no loss to _closed)
                    link.conn = None
                conn.close()
                return refused
        pending, link.pending = link.pending, []
        for msg in pending:
            with contextlib.suppress(MeshError):
                conn.send(msg)
        return conn

    async def _ready(self, link: Link, conn: Connection, hook: ReadyHook) -> Exception | None:
        """Run the ready hook on ``conn``: None if it is ready, else why not."""
        try:
            ok = await hook(link, conn)
        except MeshError as exc:
            return exc
        except asyncio.CancelledError:
            if link.conn is conn:
                link.conn = None
            conn.close()
            raise
        except Exception as exc:  # the owner's bug: logged, and the link still kept
            log.error("the ready hook of the link to %s failed", link.address, exc_info=exc)
            return exc
        if conn.closed:
            reason = conn.close_reason
            if isinstance(reason, MeshError):
                return reason
            return MeshConnectionError(
                f"the link to {link.address} closed: {reason or 'by the node'}"
            )
        if not ok:
            return MeshConnectionError(f"the link to {link.address} was refused when it opened")
        return None

    def _failed(self, link: Link, exc: BaseException) -> None:
        link.pending.clear()
        link.error = exc
        if link.failing_since is None:
            link.failing_since = self._loop.time()
        log.debug("no link to %s: %s", link.address, exc)
        if link.keep is not None:
            link.failures += 1
            self._retry_later(link)
        if self._on_fail is not None:
            self._on_fail(link, exc)

    def _retry_later(self, link: Link) -> None:
        """Set the timer of a kept link's next connect (one at a time, none while it is
        open or connecting)."""
        keep = link.keep
        if keep is None or link.retry is not None or link.task is not None or link.is_open:
            return
        if not self._ours(link):
            return
        link.retry_s = keep.backoff.delay_s(max(link.failures - 1, 0), self._rng.random())
        link.retry = self._loop.call_later(link.retry_s, self._retry, link)

    def _retry(self, link: Link) -> None:
        link.retry = None
        if link.keep is not None and self._ours(link) and not link.is_open:
            self._open(link)

    def _closed(self, link: Link, conn: Connection, reason: BaseException | None) -> None:
        lost = link.conn is conn
        if lost:
            link.conn, link.error = None, reason
        if self._on_close is not None:
            self._on_close(link, conn, reason)
        if lost:
            self._retry_later(link)
