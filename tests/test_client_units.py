"""Pure client logic: how much work a node is offered (no nodes needed)."""

from mesh.client._async import _Link


def test_a_new_function_gets_a_shallow_pipeline_even_on_a_node_known_to_be_fast() -> None:
    link = _Link("127.0.0.1", 7390)
    link.workers = 2
    link.avg_run_s = 1e-5  # the node's last work was trivial...
    # ...but this map's function has not come back yet: it may be CPU-bound.
    assert link.view(measured=False).room == 2 * 2
    # once its jobs are seen to be that fast, the node is kept busy with a deep queue
    assert link.view(measured=True).room == 2 * 4096


def test_long_jobs_get_no_queue_at_the_node() -> None:
    link = _Link("127.0.0.1", 7390)
    link.workers = 2
    link.avg_run_s = 0.15  # CPU-bound: one job per worker, the next when a result is back
    assert link.view(measured=True).room == 2 * 1
    assert link.view(measured=False).room == 2 * 2  # unmeasured: the usual 2
    link.inflight_slots = 2
    assert link.view(measured=True).room == 0


def test_room_shrinks_with_jobs_in_flight_and_load_counts_other_clients() -> None:
    link = _Link("127.0.0.1", 7390)
    link.workers = 4
    link.avg_run_s = 0.05  # 50 ms jobs: depth 2
    link.inflight_slots = 3
    link.running, link.queued = 4, 6  # 10 at the node, of which ours: none listed
    view = link.view()
    assert view.room == 4 * 2 - 3
    assert view.load == 3 + 10


def test_a_map_reads_sequences_as_it_goes_and_anything_else_at_once():
    from mesh.client._async import _count

    assert _count([[1, 2, 3], range(10), "ab"]) == 2  # zip stops at the shortest
    assert _count([range(5)]) == 5
    assert _count([iter([1, 2])]) is None  # an iterator: no length
    assert _count([(x for x in range(3))]) is None
    assert _count([{"a": 1}, [1]]) is None  # a mapping is not a Sequence: read at once
