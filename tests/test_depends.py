"""Job order on a real node: ``_depends_on`` holds a job until the jobs it names are done
(and fails it, naming them, when one failed); ``_priority`` runs lower numbers first."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from _helpers import append_line, gated, started_then_gated, touch, wait_until
from conftest import NodeProc, solo_node

import mesh


def write_after(gate: str, path: str, text: str) -> str:
    """Write ``text`` to ``path`` once the test opens ``gate``."""
    gated(gate, None)
    Path(path).write_text(text)
    return text


def extend(src: str, dst: str, suffix: str) -> str:
    """Read what an earlier job wrote (FileNotFoundError if it has not) and pass it on."""
    text = Path(src).read_text() + suffix
    Path(dst).write_text(text)
    return text


def fail(message: str) -> None:
    raise ValueError(message)


def dies_once(marker: str, counter: str) -> str:
    """Kill its worker on the first attempt, succeed on the next; count attempts."""
    append_line(counter, "attempt")
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(9)
    return "made it"


def read_lines(path: str) -> list[str]:
    return Path(path).read_text().split()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProc, str]]:
    yield from solo_node(tmp_path_factory, "depends")


@pytest.fixture
def c(node: tuple[NodeProc, str]) -> Iterator[mesh.Client]:
    with mesh.Client([node[0].address], node[1]) as client:
        yield client


def test_a_chain_runs_in_order_each_job_reading_what_the_last_wrote(c, tmp_path):
    gate, a_out, b_out = (str(tmp_path / n) for n in ("gate", "a.txt", "b.txt"))
    a = c.call(write_after, gate, a_out, "a")
    b = c.call(extend, a_out, b_out, "b", _depends_on=a)
    last = c.call(extend, b_out, str(tmp_path / "c.txt"), "c", _depends_on=[b])
    wait_until(lambda: c.status(a) == "processing")
    assert c.status([b, last]) == ["queued", "queued"]  # held here while a runs
    Path(gate).touch()
    assert c.result(last, timeout=30) == "abc"
    assert c.info(b).started >= c.info(a).finished


def test_a_failed_dependency_fails_its_dependents_naming_it(c, tmp_path):
    a = c.call(fail, "boom")
    b = c.call(touch, str(tmp_path / "b"), _depends_on=a)
    rest = c.map(touch, [str(tmp_path / "m1"), str(tmp_path / "m2")], _depends_on=b)
    with pytest.raises(mesh.DependencyFailed) as ei:
        c.result(b, timeout=30)
    assert f"depends on job {a}, which failed (ValueError: boom)" in str(ei.value)
    assert ei.value.jid == b
    for jid in rest:
        with pytest.raises(mesh.DependencyFailed, match=f"depends on job {b}, which did not run"):
            c.result(jid, timeout=30)
    assert c.status([b, *rest]) == ["error"] * 3
    assert not list(tmp_path.iterdir())  # none of them ran
    # a dependency that failed before the call was made fails it at once, the same way
    late = c.call(touch, str(tmp_path / "late"), _depends_on=a)
    with pytest.raises(mesh.DependencyFailed, match="ValueError: boom"):
        c.result(late, timeout=30)


def test_a_killed_or_unknown_dependency_fails_the_job(c, tmp_path):
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    a = c.call(started_then_gated, started, gate, 1)
    b = c.call(touch, str(tmp_path / "b"), _depends_on=a)
    wait_until(lambda: os.path.exists(started))
    c.kill(a)
    with pytest.raises(mesh.DependencyFailed, match=f"depends on job {a}, which failed .JobKilled"):
        c.result(b, timeout=30)
    stranger = c.call(touch, str(tmp_path / "s"), _depends_on="0123abcd-7")
    with pytest.raises(mesh.DependencyFailed, match="0123abcd-7, which this client does not know"):
        c.result(stranger, timeout=30)
    assert not os.path.exists(tmp_path / "b") and not os.path.exists(tmp_path / "s")


def test_a_held_job_killed_never_runs(c, tmp_path):
    gate, src = str(tmp_path / "gate"), str(tmp_path / "src")
    a = c.call(write_after, gate, src, "a")
    b = c.call(extend, src, str(tmp_path / "b"), "b", _depends_on=a)
    c.kill(b)
    Path(gate).touch()
    assert c.result(a, timeout=30) == "a"
    with pytest.raises(mesh.JobKilled):
        c.result(b, timeout=30)
    assert c.status(b) == "killed" and not os.path.exists(tmp_path / "b")


def test_a_map_depends_on_a_call_and_a_call_on_a_map(c, tmp_path):
    gate, src = str(tmp_path / "gate"), str(tmp_path / "src")
    a = c.call(write_after, gate, src, "x")
    outs = [str(tmp_path / f"out{i}") for i in range(4)]
    m = c.map(extend, [src] * 4, outs, ["0", "1", "2", "3"], _depends_on=a)
    joined = c.call(read_lines, str(tmp_path / "all"), _depends_on=m)
    Path(tmp_path / "all").write_text("")  # exists now; the maps' outputs decide the rest
    c2 = c.call(extend, outs[3], str(tmp_path / "after3"), "!", _depends_on=m[3])
    Path(gate).touch()
    assert c.result(m, timeout=30) == ["x0", "x1", "x2", "x3"]
    assert c.result(c2, timeout=30) == "x3!"
    assert c.result(joined, timeout=30) == []
    assert c.info(joined).started >= max(c.info(j).finished for j in m)


def test_a_dependency_retried_after_its_worker_died_releases_its_dependent_once(c, tmp_path):
    marker, counter, log = (str(tmp_path / n) for n in ("marker", "counter", "log"))
    a = c.call(dies_once, marker, counter, _retries=2)
    b = c.call(append_line, log, "b", _depends_on=a)
    assert c.result(b, timeout=60) == 1
    assert c.result(a, timeout=30) == "made it"
    assert read_lines(counter) == ["attempt", "attempt"]
    assert read_lines(log) == ["b"]
    assert c.info(a).attempts == 2


def test_a_long_chain_made_in_a_burst_runs_in_order(c, tmp_path):
    log = str(tmp_path / "log")
    jid = c.call(append_line, log, "0")
    for i in range(1, 30):
        jid = c.call(append_line, log, str(i), _depends_on=jid)
    c.result(jid, timeout=60)
    assert read_lines(log) == [str(i) for i in range(30)]


def test_cloud_programs_catch_a_failed_dependency_as_cloud_exception(node, tmp_path):
    import mesh.cloud as cloud

    mesh.connect([node[0].address], node[1])
    a = cloud.call(fail, "boom")
    b = cloud.call(touch, str(tmp_path / "b"), _depends_on=a)
    with pytest.raises(cloud.CloudException) as ei:
        cloud.result(b)
    assert isinstance(ei.value, mesh.DependencyFailed)
    assert ei.value.jid == b and a in str(ei.value)


def test_bad_dependencies_and_priorities_are_refused_naming_the_option(c):
    with pytest.raises(TypeError, match="_depends_on"):
        c.call(touch, "x", _depends_on=[1, 2])
    with pytest.raises(TypeError, match="_priority"):
        c.call(touch, "x", _priority="high")


def test_waiting_jobs_run_in_priority_order(c, tmp_path):
    """One worker, busy: jobs of priority 9 then of priority 1 are made; the 1s run first,
    each kind in the order it was made (those of 9 sent to the node come back for them)."""
    started, gate, log = (str(tmp_path / n) for n in ("started", "gate", "log"))
    blocker = c.call(started_then_gated, started, gate, 0)
    wait_until(lambda: os.path.exists(started))
    low = [c.call(append_line, log, f"low{i}", _priority=9) for i in (1, 2)]
    wait_until(lambda: c.info(low[0]).node)  # sent: queued on the node
    high = [c.call(append_line, log, f"high{i}", _priority=1) for i in (1, 2)]
    Path(gate).touch()
    c.result([blocker, *low, *high], timeout=30)
    assert read_lines(log) == ["high1", "high2", "low1", "low2"]
