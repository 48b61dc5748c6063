"""Pure client logic: how much work a node is offered (no nodes needed)."""

from mesh.client._scheduler import Accept, Ack, Batch, Outcome, Scheduler, Send, Work

from mesh._protocol import DONE

F = Work(b"f" * 16, "work.square")


def test_a_new_function_gets_a_shallow_pipeline_even_on_a_node_known_to_be_fast() -> None:
    s = Scheduler("c0")
    s.node_up("a", "ws-a", 2, 0.0)
    s.load("a", 0.0, running=0, queued=0, avg_run_s=1e-5)  # the node's last work was trivial...
    # ...but this map's function has not come back yet: it may be CPU-bound.
    assert s.submit(Batch(1, 100, F), 0.0) == [Send("a", F, (1, 2, 3, 4))]  # 2 per worker
    # once its jobs are seen to be that fast, the node is kept busy with a deep queue
    out = s.results("a", [Outcome(1, DONE)], 0.1, running=2, queued=1, avg_run_s=1e-5)
    assert out == [Accept("a", (1,)), Ack("a", (1,)), Send("a", F, tuple(range(5, 101)))]


def test_long_jobs_get_no_queue_at_the_node() -> None:
    s = Scheduler("c0")
    s.node_up("a", "ws-a", 2, 0.0)
    assert s.submit(Batch(1, 10, F), 0.0) == [Send("a", F, (1, 2, 3, 4))]  # unmeasured: 2 each
    # CPU-bound: one job per worker, the next when a result is back
    out = s.results("a", [Outcome(1, DONE)], 1.0, running=2, queued=1, avg_run_s=0.15)
    assert out == [Accept("a", (1,)), Ack("a", (1,))]  # 3 of ours there already
    out = s.results("a", [Outcome(2, DONE), Outcome(3, DONE)], 2.0, running=1, queued=0)
    assert out == [Accept("a", (2, 3)), Ack("a", (2, 3)), Send("a", F, (5,))]


def test_a_map_reads_sequences_as_it_goes_and_anything_else_at_once():
    from mesh.client._ledger import count_items as _count

    assert _count([[1, 2, 3], range(10), "ab"]) == 2  # zip stops at the shortest
    assert _count([range(5)]) == 5
    assert _count([iter([1, 2])]) is None  # an iterator: no length
    assert _count([(x for x in range(3))]) is None
    assert _count([{"a": 1}, [1]]) is None  # a mapping is not a Sequence: read at once
