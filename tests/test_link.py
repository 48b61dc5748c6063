"""The links' reconnect policy (mesh/_link.py ``Backoff``): the exact schedule as a pure
function, its bad inputs, and a client that gets its link to a node back with it, from
real nodes on loopback (a node not yet up at start, then one restarted on its port)."""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest
from _helpers import wait_until
from conftest import NodeProc
from mesh.client._links import RECONNECT

import mesh
from mesh._link import Backoff


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


def test_client_reconnect_policy_is_the_issues() -> None:
    assert Backoff(first_s=0.1, cap_s=5.0, factor=2.0, jitter=0.5) == RECONNECT
    assert [RECONNECT.delay_s(n) for n in range(8)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


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
