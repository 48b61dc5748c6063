"""The link pool (mesh/_link.py): its reconnect policy ``Backoff`` (the exact schedule as
a pure function, its bad inputs); its keep mode (``Links.keep``) against real
connections to a real ``mesh._connection`` server on loopback (retries on the schedule,
a ready hook that refuses, a peer that closes, forget, close); and a client that gets
its link to a node back with it, from real nodes (a node not yet up at start, then one
restarted on its port)."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable

import pytest
from _helpers import wait_until
from conftest import NodeProc

import mesh
from mesh._auth import load_secret
from mesh._connection import Connection
from mesh._link import KEEP_BACKOFF, Backoff, Link, Links
from mesh._protocol import Message, Ping
from mesh.errors import MeshError


def test_backoff_schedule_doubles_from_first_to_cap() -> None:
    policy = Backoff(first_s=0.1, cap_s=5.0, jitter=0.0)
    assert [policy.delay_s(n) for n in range(9)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0]


def test_backoff_stays_at_cap_for_any_count() -> None:
    policy = Backoff(first_s=0.1, cap_s=5.0)
    assert policy.delay_s(10_000) == 5.0
    assert policy.delay_s(10**30, 0.0) == 2.5


def test_backoff_jitter_shortens_by_at_most_its_share() -> None:
    policy = Backoff(first_s=1.0, cap_s=30.0, jitter=0.5)
    assert [policy.delay_s(2, d) for d in (0.0, 0.5, 1.0)] == [2.0, 3.0, 4.0]
    assert [policy.delay_s(9, d) for d in (0.0, 0.25, 1.0)] == [15.0, 18.75, 30.0]


def test_backoff_other_factor_and_no_growth() -> None:
    assert [Backoff(1.0, 100.0, factor=3.0, jitter=0).delay_s(n) for n in range(6)] == [
        1.0, 3.0, 9.0, 27.0, 81.0, 100.0,
    ]  # fmt: skip
    assert [Backoff(0.5, 0.5, factor=1.0).delay_s(n) for n in (0, 1, 50)] == [0.5, 0.5, 0.5]


def test_the_keep_policy_is_the_issues() -> None:
    """Kept links (the client's node links) retry after 0.1 s doubling to 5 s."""
    assert Backoff(first_s=0.1, cap_s=5.0, factor=2.0, jitter=0.5) == KEEP_BACKOFF
    assert [KEEP_BACKOFF.delay_s(n) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"first_s": 0.0}, "first_s must be a positive number of seconds, not 0.0"),
        ({"first_s": float("nan")}, "first_s must be a positive number of seconds, not nan"),
        ({"first_s": 2.0, "cap_s": 1.0}, "cap_s must be at least first_s (2 s), not 1.0"),
        ({"cap_s": float("inf")}, "cap_s must be at least first_s (0.1 s), not inf"),
        ({"factor": 0.5}, "factor must be at least 1, not 0.5"),
        ({"jitter": 1.5}, "jitter must be within 0..1, not 1.5"),
    ],
)
def test_backoff_refuses_bad_settings(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError) as err:
        Backoff(**kwargs)
    assert str(err.value) == f"Backoff: {message}"


def test_backoff_refuses_bad_counts_and_draws() -> None:
    with pytest.raises(ValueError, match=r"^Backoff.delay_s: failures must be 0 or more, not -1$"):
        Backoff().delay_s(-1)
    with pytest.raises(ValueError, match=r"^Backoff.delay_s: draw must be within 0..1, not 1.5$"):
        Backoff().delay_s(0, 1.5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _usable(client: mesh.Client) -> set[str]:
    return {n.name for n in client.nodes() if n.connected}


def test_client_links_to_a_node_that_comes_up_late_and_back_after_a_restart(
    node_factory: Callable[..., NodeProc], secret: str
) -> None:
    first = node_factory(name="n1", workers=1)
    port = _free_port()  # nothing listens here yet: the client's link to it keeps failing
    with mesh.Client([first.address, f"127.0.0.1:{port}"], secret) as client:
        assert _usable(client) == {"n1"}
        late = node_factory(name="late", workers=1, port=port)
        wait_until(lambda: _usable(client) == {"n1", "late"}, what="the late node linked")
        assert client.result(client.map(abs, range(-20, 0))) == list(range(20, 0, -1))
        late.stop()
        wait_until(lambda: _usable(client) == {"n1"}, what="the stopped node's link lost")
        node_factory(name="late", workers=1, port=port)
        wait_until(lambda: _usable(client) == {"n1", "late"}, what="the link back after a restart")


# ---- the keep mode, against real connections ----


class _Server:
    """A real ``mesh._connection`` server on 127.0.0.1: it keeps every connection that
    authenticated, in order, and what they sent; ``changed`` is set at each."""

    def __init__(self, secret: bytes, changed: asyncio.Event) -> None:
        self.secret = secret
        self.hang_up = False  # close each connection once it authenticated
        self.conns: list[Connection] = []
        self.heard: list[Message] = []
        self.changed = changed
        self._server: asyncio.Server | None = None
        self.address = ""

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: Connection("server", secret=self.secret, name="srv", node_id="srv-id",
                               on_ready=self._ready, on_message=self._message),
            "127.0.0.1", 0,
        )  # fmt: skip
        self.address = f"127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self.address

    def _ready(self, conn: Connection) -> None:
        self.conns.append(conn)
        self.changed.set()
        if self.hang_up:
            conn.close()

    def _message(self, conn: Connection, msg: Message) -> None:
        self.heard.append(msg)
        self.changed.set()

    async def close(self) -> None:
        for conn in self.conns:
            conn.abort()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()


class _Owner:
    """A pool's owner that writes down what the pool tells it."""

    def __init__(self, secret: bytes) -> None:
        self.links = Links(secret, "keeper", on_message=self.message, on_close=self.closed,
                           on_fail=self.failed, connect_timeout_s=2.0)  # fmt: skip
        self.failures: list[tuple[int, float, str]] = []  # (failures, retry_s, error)
        self.readies: list[Connection] = []
        self.closes: list[Connection] = []
        self.changed = asyncio.Event()

    def message(self, link: Link, conn: Connection, msg: Message) -> None:
        pass

    def closed(self, link: Link, conn: Connection, reason: BaseException | None) -> None:
        """(Also called for a connection the pool closed itself: a refused one.)"""
        self.closes.append(conn)
        self.changed.set()

    def failed(self, link: Link, exc: BaseException) -> None:
        kept = link.keep is not None
        assert (link.retry is not None) == kept  # a kept link's next try is set first
        self.failures.append((link.failures, link.retry_s, str(exc)))
        self.changed.set()

    def ready(self, link: Link, conn: Connection) -> None:
        assert link.failures == 0  # the count starts over once ready
        self.readies.append(conn)
        self.changed.set()

    async def until(self, done: Callable[[], bool]) -> None:
        """Wait until ``done()``, checked at each change (a hang fails after 20 s: that
        is no speed bar, only a guard)."""
        while not done():
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), 20.0)


@pytest.fixture
def key(secret: str) -> bytes:
    return load_secret(secret)


@pytest.fixture
async def owner(key: bytes) -> AsyncIterator[_Owner]:
    made = _Owner(key)
    try:
        yield made
    finally:
        await made.links.close()


@pytest.fixture
async def server(key: bytes, owner: _Owner) -> AsyncIterator[_Server]:
    made = _Server(key, owner.changed)
    await made.start()
    try:
        yield made
    finally:
        await made.close()


def _other_tasks() -> set[asyncio.Task[object]]:
    return asyncio.all_tasks() - {asyncio.current_task()}  # type: ignore[operator]


async def test_a_kept_link_to_a_closed_port_retries_on_the_backoff_schedule(
    owner: _Owner,
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    link = owner.links.keep(address, Backoff(first_s=0.01, cap_s=0.04, jitter=0.0))
    await owner.until(lambda: len(owner.failures) >= 6)
    # Each failure in a row is counted once, and the next try waits the schedule's next
    # delay: 0.01 s doubling to the 0.04 s cap (one connect at a time, one timer).
    assert [(n, wait) for n, wait, _ in owner.failures[:6]] == [
        (1, 0.01), (2, 0.02), (3, 0.04), (4, 0.04), (5, 0.04), (6, 0.04),
    ]  # fmt: skip
    assert all(error.startswith(f"cannot reach node at {address}:") for *_, error in owner.failures)
    assert owner.readies == [] and owner.links.get(address) is link
    owner.links.idle_s = 1.0
    assert owner.links.idle_at(link) == float("inf")  # a kept link is never idle-closed


async def test_a_kept_link_waits_on_a_timer_not_a_task_and_forget_stops_it(
    owner: _Owner,
) -> None:
    address = f"127.0.0.1:{_free_port()}"
    link = owner.links.keep(address, Backoff(first_s=60.0, cap_s=60.0, jitter=0.0))
    await owner.until(lambda: len(owner.failures) == 1)
    await asyncio.sleep(0)  # (the connect's task ends right after telling its owner)
    timer = link.retry
    assert timer is not None and link.task is None and link.retry_s == 60.0
    assert _other_tasks() == set()  # nothing runs while nothing is due
    owner.links.forget(address)
    assert timer.cancelled() and link.retry is None and link.keep is None
    assert owner.links.get(address) is None and owner.failures[1:] == []


async def test_closing_the_pool_cancels_every_kept_links_timer(key: bytes) -> None:
    owner = _Owner(key)
    addresses = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
    try:
        kept = [owner.links.keep(a, Backoff(first_s=60.0, cap_s=60.0)) for a in addresses]
        await owner.until(lambda: len(owner.failures) == 2)
        timers = [link.retry for link in kept]
    finally:
        await owner.links.close()
    assert all(t is not None and t.cancelled() for t in timers)
    assert [link.retry for link in kept] == [None, None]
    assert _other_tasks() == set()
    owner.links.keep(addresses[0])  # a closed pool connects nothing more
    assert owner.links.get(addresses[0]) is kept[0] and kept[0].task is None
    assert kept[0].retry is None and _other_tasks() == set()


async def test_a_kept_link_whose_ready_hook_refuses_is_retried(
    owner: _Owner, server: _Server
) -> None:
    asked: list[Connection] = []

    async def ready(link: Link, conn: Connection) -> bool:
        asked.append(conn)
        if len(asked) == 2:
            raise MeshError("the node is not ready yet")
        return len(asked) > 2  # the first: refused; the third: ready

    link = owner.links.keep(server.address, Backoff(first_s=0.01, cap_s=0.02, jitter=0.0),
                            ready=ready, on_ready=owner.ready)  # fmt: skip
    await owner.until(lambda: len(owner.readies) == 1)
    assert owner.failures == [
        (1, 0.01, f"the link to {server.address} was refused when it opened"),
        (2, 0.02, "the node is not ready yet"),
    ]
    assert owner.readies == [asked[2]] and link.conn is asked[2] and link.failures == 0
    # Three real connections, the two refused ones closed by the pool.
    await owner.until(lambda: sum(c.closed for c in server.conns) == 2)
    assert len(server.conns) == 3 and [c.closed for c in server.conns] == [True, True, False]
    assert [c.closed for c in asked] == [True, True, False] and link.retry is None


async def test_a_kept_link_whose_peer_closes_it_reconnects(owner: _Owner, server: _Server) -> None:
    async def ready(link: Link, conn: Connection) -> bool:
        return True

    backoff = Backoff(first_s=0.01, cap_s=1.0, jitter=0.0)
    link = owner.links.keep(server.address, backoff, ready=ready, on_ready=owner.ready)
    await owner.until(lambda: len(owner.readies) == 1)
    first = owner.readies[0]
    server.conns[0].close()  # the node ends it
    await owner.until(lambda: len(owner.readies) == 2)
    assert owner.closes == [first] and first.closed
    assert link.retry_s == backoff.delay_s(0) == 0.01  # a link lost once ready: from 0 again
    assert link.conn is owner.readies[1] and not owner.readies[1].closed
    assert len(server.conns) == 2 and owner.failures == []


async def test_a_kept_link_queues_what_is_sent_until_its_hook_says_ready(
    owner: _Owner, server: _Server
) -> None:
    gate = asyncio.Event()

    async def ready(link: Link, conn: Connection) -> bool:
        await gate.wait()
        return True

    link = owner.links.keep(server.address, ready=ready, on_ready=owner.ready)
    await owner.until(lambda: len(server.conns) == 1)
    owner.links.send(server.address, Ping(1.0))
    assert link.pending == [Ping(1.0)]  # not sent while the hook has not said ready
    waiter = asyncio.ensure_future(owner.links.connected(server.address))
    await asyncio.sleep(0)
    assert not waiter.done()  # connected() waits for ready too
    gate.set()
    assert await waiter is owner.readies[0]
    await owner.until(lambda: bool(server.heard))
    assert server.heard == [Ping(1.0)] and link.pending == []


async def test_a_client_keeps_trying_a_node_that_hangs_up_before_its_load_report(
    node_factory: Callable[..., NodeProc], secret: str, owner: _Owner, server: _Server
) -> None:
    """The client's ready hook refuses a link whose node sends no Load (here: it hangs up
    once authenticated); the pool tries it again, the other node is used meanwhile."""
    node = node_factory(name="n1", workers=1)
    server.hang_up = True
    async with mesh.AsyncClient([node.address, server.address], secret) as client:
        await owner.until(lambda: len(server.conns) >= 3)  # tried again, and again
        assert {(n.address, n.connected) for n in client.nodes()} == {
            (node.address, True), (server.address, False),
        }  # fmt: skip
        assert await client.result(await client.call(abs, -3)) == 3
    assert all(conn.closed for conn in server.conns)


async def test_a_client_start_that_fails_keeps_no_link(
    secret: str, owner: _Owner, server: _Server
) -> None:
    server.hang_up = True
    client = mesh.AsyncClient([server.address], secret)
    with pytest.raises(mesh.NoNodesAvailable) as err:
        await client.start()
    assert str(err.value) == f"no node reachable: node at {server.address} closed the connection"
    tried = len(server.conns)
    await asyncio.sleep(0.5)  # five times the first retry's wait: a kept link would be back
    assert len(server.conns) == tried == 1
    await client.close()


async def test_an_on_demand_link_that_fails_is_not_retried_by_the_pool(owner: _Owner) -> None:
    """The node's owners (gossip, files) open links on demand: a failure is theirs to
    retry, so the pool sets no timer and counts nothing."""
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(MeshError, match=rf"^cannot reach node at {address}: "):
        await owner.links.connected(address)
    link = owner.links.get(address)
    assert link is not None and link.keep is None and link.retry is None
    assert link.failures == 0 and link.task is None and _other_tasks() == set()
    owner.links.idle_s = 1.0
    assert owner.links.idle_at(link) == link.used_at + 1.0  # closed when idle, as ever


async def test_a_ready_hook_that_breaks_is_logged_and_the_link_still_kept(
    owner: _Owner, server: _Server, caplog: pytest.LogCaptureFixture
) -> None:
    calls = 0

    async def ready(link: Link, conn: Connection) -> bool:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise KeyError("a bug in the owner")
        return True

    owner.links.keep(server.address, Backoff(first_s=0.01, cap_s=0.01, jitter=0.0),
                     ready=ready, on_ready=owner.ready)  # fmt: skip
    await owner.until(lambda: len(owner.readies) == 1)
    assert [(n, error) for n, _, error in owner.failures] == [(1, "'a bug in the owner'")]
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"the ready hook of the link to {server.address} failed"
    ]
    assert calls == 2 and len(server.conns) == 2 and server.conns[0].closed is True
