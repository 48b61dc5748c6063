"""No job waits behind a slow one while a core is idle (issue 15), against real nodes.

Two nodes with one worker each, one slow job and nine quick ones. The slow job blocks
until a file appears, and the test creates that file only once the nine quick results
have arrived: a quick job left queued behind the slow one could not finish before it,
so the wait for the nine would run out (MeshTimeout) instead. The test checks the order
in which results arrive, not their speed.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import gated, square, wait_until

import mesh

# Bounds for a failing run only (a passing one finishes in well under a second): the
# slow job outlives the wait for the quick ones, so a quick one stuck behind it cannot
# arrive late and pass.
QUICK_WAIT_S = 60.0
SLOW_CAP_S = 600.0


@pytest.fixture
def two_single_worker_nodes(node_factory: Callable[..., Any], secret: str) -> Iterator[Any]:
    nodes = [node_factory(name="h1", workers=1), node_factory(name="h2", workers=1)]
    with mesh.Client([n.address for n in nodes], secret) as c:
        yield c


def _quick_then_release(c: mesh.Client, quick: list[str], gate: Path) -> list[int]:
    """The quick jobs' results as they arrive; then open the slow job's gate."""
    try:
        return list(c.iresult(quick, timeout=QUICK_WAIT_S, ordered=False))
    finally:
        gate.touch()


def test_calls_do_not_wait_behind_a_slow_one(two_single_worker_nodes, tmp_path):
    c = two_single_worker_nodes
    gate = tmp_path / "gate"
    slow = c.call(gated, str(gate), "slow", SLOW_CAP_S)
    quick = [c.call(square, x) for x in range(9)]
    got = _quick_then_release(c, quick, gate)
    assert sorted(got) == [x * x for x in range(9)]
    assert c.result(slow, timeout=QUICK_WAIT_S) == "slow"
    # every quick job ran on the node the slow one did not hold, or before it started
    assert {c.info(j).node for j in quick} <= {"h1", "h2"}


def test_a_map_does_not_wait_behind_its_slow_first_job(two_single_worker_nodes, tmp_path):
    c = two_single_worker_nodes
    gate = tmp_path / "gate"
    values = ["slow", *range(9)]
    jids = c.map(_slow_or_square, [str(gate)] * 10, values)
    got = _quick_then_release(c, jids[1:], gate)
    assert sorted(got) == [x * x for x in range(9)]
    assert c.result(jids, timeout=QUICK_WAIT_S) == ["slow"] + [x * x for x in range(9)]


def test_joblib_does_not_wait_behind_a_slow_task(two_single_worker_nodes, tmp_path):
    joblib = pytest.importorskip("joblib")
    import mesh.joblib  # noqa: F401  (registers the backend)

    c = two_single_worker_nodes
    gate = tmp_path / "gate"
    tasks = [joblib.delayed(_slow_or_square)(str(gate), "slow")]
    tasks += [joblib.delayed(_slow_or_square)(str(gate), x) for x in range(9)]
    got: list[Any] = []
    failed: list[BaseException] = []

    def consume() -> None:
        try:
            with joblib.parallel_config(backend="mesh", client=c):
                parallel = joblib.Parallel(
                    n_jobs=-1, batch_size=1, pre_dispatch="all", return_as="generator_unordered"
                )
                for value in parallel(tasks):
                    got.append(value)
        except BaseException as exc:  # reported by the test thread
            failed.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    try:
        wait_until(
            lambda: len(got) >= 9 or failed, timeout_s=QUICK_WAIT_S, what="the nine quick tasks"
        )
        assert not failed, failed
        assert sorted(got[:9]) == [x * x for x in range(9)]  # "slow" is not among them
    finally:
        gate.touch()
        consumer.join(QUICK_WAIT_S)
    assert not consumer.is_alive() and not failed, failed
    assert got[9] == "slow"


def _slow_or_square(gate: str, value: Any) -> Any:
    """``"slow"`` waits for ``gate``; a number is squared at once."""
    if value == "slow":
        return gated(gate, value, SLOW_CAP_S)
    return square(value)
