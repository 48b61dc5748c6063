"""Placement: a pure function of the peer table and the work, tested by its exact output."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st
from mesh.client._placement import NodeView, _fill, plan


def alloc(result: list[tuple[str, int]]) -> dict[str, int]:
    """The allocation as {key: count}, checking each node appears once with count > 0."""
    counts = dict(result)
    assert len(counts) == len(result), f"a node listed twice: {result}"
    assert all(c > 0 for c in counts.values()), result
    return counts


def test_nothing_to_place() -> None:
    nodes = [NodeView("a", 4, 0, 10)]
    assert plan(0, nodes) == []
    assert plan(-3, nodes) == []
    assert plan(5, []) == []
    assert plan(5, nodes, cores=0) == []


def test_single_job_goes_to_the_least_loaded_node() -> None:
    nodes = [NodeView("a", 4, 3, 10), NodeView("b", 4, 1, 10), NodeView("c", 4, 2, 10)]
    assert plan(1, nodes) == [("b", 1)]


def test_load_is_compared_per_worker() -> None:
    # a: 4/8 = 0.5 busy per worker; b: 1/1 = 1.0
    nodes = [NodeView("b", 1, 1, 10), NodeView("a", 8, 4, 10)]
    assert plan(1, nodes) == [("a", 1)]


def test_tie_goes_to_more_workers() -> None:
    nodes = [NodeView("a", 4, 0, 100), NodeView("b", 8, 0, 100), NodeView("c", 8, 0, 100)]
    assert plan(1, nodes) == [("b", 1)]
    # then b is busier per worker than c; a and c tie at 0 and c has more workers
    assert alloc(plan(2, nodes)) == {"b": 1, "c": 1}


def test_tie_with_equal_workers_goes_by_key() -> None:
    nodes = [NodeView("ws-2", 4, 2, 10), NodeView("ws-1", 4, 2, 10)]
    assert plan(1, nodes) == [("ws-1", 1)]
    assert plan(1, list(reversed(nodes))) == [("ws-1", 1)]


def test_answer_does_not_depend_on_the_order_of_the_peer_table() -> None:
    nodes = [
        NodeView("a", 4, 1, 9),
        NodeView("b", 8, 3, 20),
        NodeView("c", 2, 0, 3),
        NodeView("d", 8, 3, 20),
    ]
    expected = plan(23, nodes)
    assert sum(c for _, c in expected) == 23
    for perm in itertools.permutations(nodes):
        assert plan(23, list(perm)) == expected


def test_node_with_fewer_workers_than_cores_is_skipped() -> None:
    # x is idle but has one worker; a 2-core job cannot run there
    nodes = [NodeView("x", 1, 0, 10), NodeView("y", 4, 4, 10)]
    assert plan(3, nodes, cores=2) == [("y", 3)]
    assert plan(3, [NodeView("x", 1, 0, 10)], cores=2) == []


def test_node_with_room_below_cores_is_skipped() -> None:
    nodes = [NodeView("z", 4, 0, 1), NodeView("y", 4, 4, 10)]
    assert plan(1, nodes, cores=2) == [("y", 1)]


def test_multi_core_jobs_use_room_and_load_in_slots() -> None:
    # room 5 holds two 2-core jobs; each job lifts y's level by 2/4
    assert plan(10, [NodeView("y", 4, 0, 5)], cores=2) == [("y", 2)]
    # a (8 workers) starts at 0, b (4 workers) at 0.5: a takes 2 jobs (4 slots) to reach 0.5
    nodes = [NodeView("a", 8, 0, 100), NodeView("b", 4, 2, 100)]
    assert plan(2, nodes, cores=2) == [("a", 2)]
    assert alloc(plan(4, nodes, cores=2)) == {"a": 3, "b": 1}


def test_zero_room_gets_nothing() -> None:
    nodes = [NodeView("a", 4, 0, 0), NodeView("b", 4, 8, 5)]
    assert plan(3, nodes) == [("b", 3)]
    assert plan(3, [NodeView("a", 4, 0, 0), NodeView("c", 8, 0, 0)]) == []


def test_newly_seen_node_with_zero_load_gets_work_first() -> None:
    nodes = [NodeView("old", 4, 4, 10), NodeView("new", 4, 0, 10)]
    # new needs 4 jobs to reach old's level of 1 job per worker
    assert plan(4, nodes) == [("new", 4)]
    # then they alternate: new wins the tie by key, old catches up
    assert alloc(plan(6, nodes)) == {"new": 5, "old": 1}


def test_proportional_fill_by_workers() -> None:
    nodes = [NodeView("a", 1, 0, 1000), NodeView("b", 2, 0, 1000), NodeView("c", 4, 0, 1000)]
    assert alloc(plan(7, nodes)) == {"a": 1, "b": 2, "c": 4}
    assert alloc(plan(70, nodes)) == {"a": 10, "b": 20, "c": 40}
    assert alloc(plan(700, nodes)) == {"a": 100, "b": 200, "c": 400}


def test_proportional_fill_limited_by_room() -> None:
    nodes = [NodeView("a", 1, 0, 1000), NodeView("b", 2, 0, 1000), NodeView("c", 4, 0, 25)]
    # c fills up at 25; the remaining 45 go 1:2 to a and b
    assert alloc(plan(70, nodes)) == {"a": 15, "b": 30, "c": 25}


def test_n_larger_than_total_room() -> None:
    nodes = [NodeView("a", 4, 0, 3), NodeView("b", 2, 0, 2), NodeView("c", 8, 0, 0)]
    assert alloc(plan(100, nodes)) == {"a": 3, "b": 2}


nodes_strategy = st.lists(
    st.builds(
        NodeView,
        key=st.text("abcdef", min_size=1, max_size=3),
        workers=st.integers(0, 16),
        load=st.integers(0, 40),
        room=st.integers(0, 40),
    ),
    max_size=6,
    unique_by=lambda v: v.key,
)


@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 200), nodes=nodes_strategy, cores=st.integers(1, 4))
def test_water_filling_invariants(n: int, nodes: list[NodeView], cores: int) -> None:
    result = alloc(plan(n, nodes, cores))
    by_key = {v.key: v for v in nodes}
    eligible = [v for v in nodes if v.workers >= cores and v.room >= cores]
    assert set(result) <= {v.key for v in eligible}
    for key, count in result.items():
        assert count * cores <= by_key[key].room  # never beyond a node's credit
    assert sum(result.values()) == min(n, sum(v.room // cores for v in eligible))

    def level(v: NodeView, jobs: int) -> float:
        return (v.load + jobs * cores) / v.workers

    # least-loaded first: a node's last job went there while it was no busier than
    # any node that still had room at the end
    for key, count in result.items():
        before_last = level(by_key[key], count - 1)
        for other in eligible:
            given_other = result.get(other.key, 0)
            if (given_other + 1) * cores <= other.room:
                assert before_last <= level(other, given_other) + 1e-9, (key, other.key)


def test_a_big_split_over_alike_nodes_is_even_and_ties_go_by_key() -> None:
    alike = [NodeView(k, 1, 0, 10**6) for k in ("b", "c", "a")]
    assert plan(100_001, alike) == [("a", 33_334), ("b", 33_334), ("c", 33_333)]
    # levels are exact (from counts, not summed floats): thirds tie, and ties go by key
    nodes = [NodeView("n0", 3, 0, 257)] + [NodeView(f"n{i}", 3, 1, 300) for i in (1, 2, 3)]
    assert plan(544, nodes) == [("n0", 137), ("n1", 136), ("n2", 136), ("n3", 135)]


@settings(max_examples=300, deadline=None)
@given(nodes=nodes_strategy, cores=st.integers(1, 4), prefer=st.sets(st.text("abcdef", max_size=3)))
def test_a_single_call_goes_where_the_water_filling_puts_it(
    nodes: list[NodeView], cores: int, prefer: set[str]
) -> None:
    # plan(1) skips the heap (a call loop places one job per call): same answer
    assert plan(1, nodes, cores, prefer) == _fill(1, nodes, cores, prefer)


def test_a_single_call_breaks_ties_as_the_heap_does() -> None:
    nodes = [NodeView("b", 2, 2, 4), NodeView("a", 2, 2, 4), NodeView("c", 4, 4, 4)]
    assert plan(1, nodes) == [("c", 1)]  # level 1.0 all; more workers first
    assert plan(1, nodes, prefer={"b"}) == [("b", 1)]  # then a node that holds the files
    assert plan(1, nodes[:2]) == [("a", 1)]  # then by key
    assert plan(1, nodes, cores=3) == [("c", 1)]  # "a" and "b" have too few workers
    assert plan(1, [NodeView("a", 2, 0, 1)], cores=2) == []  # no room for 2 cores
