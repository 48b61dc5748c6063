"""The mesh console's arithmetic as pure functions: a node's jobs filtered and grouped
into maps, the groups of many nodes merged, paged and counted once, the map's curve
and run-time histogram, and jobs finished / workers busy per second. Exact outputs."""

from __future__ import annotations

from mesh.node._console import (
    Group,
    attempts,
    group_key,
    histogram,
    map_row,
    merge_groups,
    missing_parts,
    progress_curve,
    select,
    series,
    total_groups,
)
from mesh.node._job_types import Func, Job

from mesh._protocol import (
    DONE,
    ERROR,
    PROCESSING,
    QUEUED,
    ConsoleQuery,
    ConsoleReply,
    ConsoleStats,
    ErrorInfo,
    JobSummary,
    decode,
    encode,
)
from mesh.errors import ErrorKind

F = bytes.fromhex("ab" * 32)
G = bytes.fromhex("cd" * 32)


def job(jid: str, state: int, sub: float, start: float = 0.0, fin: float = 0.0,
        fn: str = "m.f", label: str = "", client: str = "alice", node: str = "n1") -> JobSummary:  # fmt: skip
    """A job's row as ``summary`` below makes it from its Job."""
    return (jid, state, fn, label, client, node, sub, start, fin, 0.0, 1 if start else 0, 1)


CLIENTS = {1: "alice", 2: "bob"}


def summary(j: Job) -> JobSummary:
    return (j.jid, j.state, j.func.name, j.label, CLIENTS[j.owner], j.kill_reason or "n1",
            j.submitted, j.started, j.finished, 0.0, 1 if j.started else 0, 1)  # fmt: skip


def jobs_of(*rows: JobSummary) -> list[Job]:
    """The node's Jobs for these rows, newest first, as its table gives them (the node's
    name rides in ``kill_reason``, which these jobs do not use)."""
    out = []
    for s in sorted(rows, key=lambda s: s[6], reverse=True):
        jid, state, fn, label, client, node, sub, start, fin = s[:9]
        func = Func(F if fn == "m.f" else G, b"", fn)
        owner = next(k for k, v in CLIENTS.items() if v == client)
        out.append(Job(jid, func, b"", owner, sub, label=label, state=state, started=start,
                       finished=fin, kill_reason=node))  # fmt: skip
    return out


def sel(q: ConsoleQuery, rows: list[JobSummary], node: str = "n1") -> ConsoleReply:
    return select(q, jobs_of(*rows), node, lambda j: CLIENTS[j.owner], summary)


def test_group_key_is_client_prefix_function_and_label():
    assert group_key("a1b2c3-17", F, "") == "a1b2c3/abababababababab/"
    assert group_key("x-y-3", G, "run/1") == "x-y/cdcdcdcdcdcdcdcd/run/1"


def test_a_nodes_groups_count_every_state_newest_first():
    jobs = [
        job("t-0", DONE, 10.0, 11.0, 12.0), job("t-1", DONE, 10.0, 11.0, 14.0),
        job("t-2", PROCESSING, 10.5, 13.0), job("t-3", QUEUED, 11.0),
        job("t-4", ERROR, 20.0, 20.5, 21.0, fn="m.g"),
    ]  # fmt: skip
    reply = sel(ConsoleQuery(7), jobs, "n1")
    kf, kg = group_key("t-0", F, ""), group_key("t-4", G, "")
    assert reply == ConsoleReply(
        7,
        groups=(
            (kg, "m.g", "", "alice", (0, 0, 0, 1, 0), 20.0, 20.0, 20.5, 21.0, 0.5, 4, 4,
             (job("t-4", ERROR, 20.0, 20.5, 21.0, fn="m.g"),)),
            (kf, "m.f", "", "alice", (1, 1, 2, 0, 0), 11.0, 10.0, 11.0, 14.0, 4.0, 0, 3, ()),
        ),
        total=2, all_keys=(kg, kf),
    )  # fmt: skip


def test_filters_apply_on_the_node_and_status_keeps_whole_groups():
    jobs = [
        job("t-0", DONE, 1.0, 1.0, 2.0, label="a"), job("t-1", ERROR, 2.0, 2.0, 3.0, label="a"),
        job("t-2", DONE, 3.0, 3.0, 4.0, label="b"), job("u-0", DONE, 4.0, 4.0, 5.0, client="bob"),
    ]  # fmt: skip
    errors = sel(ConsoleQuery(1, status=(ERROR,)), jobs, "n1")
    assert [(g[2], g[4]) for g in errors.groups] == [("a", (0, 0, 1, 1, 0))]  # counts: all jobs
    assert sel(ConsoleQuery(1, label="b"), jobs, "n1").total == 1
    assert [g[3] for g in sel(ConsoleQuery(1, client="bob"), jobs, "n1").groups] == ["bob"]
    assert sel(ConsoleQuery(1, function="F"), jobs, "n1").total == 3  # part of the name
    assert sel(ConsoleQuery(1, function="nope"), jobs, "n1").total == 0
    assert sel(ConsoleQuery(1, node="n2"), jobs, "n1") == ConsoleReply(1)
    rows = sel(ConsoleQuery(1, grouped=False, status=(DONE,), offset=1, limit=2), jobs, "n1")
    assert [s[0] for s in rows.rows] == ["t-2", "t-0"] and rows.total == 3
    key_a = group_key("t-0", F, "a")
    rows = sel(ConsoleQuery(1, grouped=False, keys=(key_a,)), jobs, "n1")
    assert [s[0] for s in rows.rows] == ["t-1", "t-0"] and rows.total == 2


def test_groups_spread_over_nodes_merge_into_one_row():
    key = group_key("t-0", F, "")
    n1 = sel(ConsoleQuery(1), [job("t-0", DONE, 10.0, 10.0, 11.0),
                                  job("t-2", PROCESSING, 10.0, 11.0)], "n1")  # fmt: skip
    n2 = sel(ConsoleQuery(1), [job("t-1", DONE, 10.2, 10.1, 12.0, node="n2"),
                                  job("t-3", QUEUED, 10.2, node="n2")], "n2")  # fmt: skip
    (g,) = merge_groups([("n1", n1), ("n2", n2)])
    assert (g.key, g.counts, g.low, g.high, g.nodes) == (key, [1, 1, 2, 0, 0], 0, 3, ["n1", "n2"])
    row = map_row(g, now_s=12.0)
    assert row == {
        "kind": "map", "key": key, "function": "m.f", "label": "", "client": "alice",
        "jobs": 4, "counts": {"queued": 1, "processing": 1, "done": 2, "error": 0, "killed": 0},
        "submitted": 10.2, "first_submitted": 10.0, "started": 10.0, "finished": None,
        "first_jid": "t-0", "last_jid": "t-3", "nodes": ["n1", "n2"], "progress": 0.5,
        "rate_per_s": 1.0, "eta_s": 2.0, "mean_run_s": 1.45,
    }  # fmt: skip
    # a group of one job on each of two nodes is a map; one job alone stays that job
    one = sel(ConsoleQuery(1), [job("s-0", DONE, 1.0, 1.0, 2.0)], "n1")
    (alone,) = merge_groups([("n1", one)])
    assert alone.jobs == 1 and alone.sample == [job("s-0", DONE, 1.0, 1.0, 2.0)]


def test_the_page_holds_groups_past_one_nodes_own_page_and_counts_each_once():
    # n1's newest group is "a"; n2 holds "a" too but only past its own first page.
    a1 = [job(f"a-{i}", DONE, 100.0 + i, 100.0, 101.0) for i in range(2)]
    a2 = [job(f"a-{i}", DONE, 1.0, 1.0, 2.0, node="n2") for i in range(2, 5)]
    b2 = [job(f"b-{i}", DONE, 50.0 + i, 50.0, 51.0, node="n2") for i in range(3)]
    first = ConsoleQuery(1, limit=1)
    r1, r2 = sel(first, a1, "n1"), sel(first, [*a2, *b2], "n2")
    replies = [("n1", r1), ("n2", r2)]
    page = merge_groups(replies)[:1]
    assert [g.key.split("/")[0] for g in page] == ["a"] and page[0].jobs == 2  # n2's part missing
    assert missing_parts(page, replies) == {"n2": (page[0].key,)}
    extra = sel(ConsoleQuery(1, keys=(page[0].key,)), [*a2, *b2], "n2")
    (full,) = [g for g in merge_groups([("n1", r1), ("n2", extra)]) if g.key == page[0].key]
    assert full.jobs == 5 and full.nodes == ["n1", "n2"]
    assert total_groups(replies) == 2  # "a" on both nodes counts once
    # with a status filter n2 lists no group without a job in those states: asked anyway
    only_b = [*a2, job("b-9", ERROR, 60.0, 60.0, 61.0, node="n2")]
    q = ConsoleQuery(1, status=(ERROR,), limit=5)
    f1, f2 = sel(q, [*a1, job("a-9", ERROR, 99.0, 99.0, 99.5)], "n1"), sel(q, only_b, "n2")
    page = merge_groups([("n1", f1), ("n2", f2)])
    assert [g.key[0] for g in page] == ["a", "b"]
    assert missing_parts(page, [("n1", f1), ("n2", f2)]) == {}  # n2 lists only "b"
    assert missing_parts(page, [("n1", f1), ("n2", f2)], filtered=True) == {
        "n1": (page[1].key,), "n2": (page[0].key,)}  # fmt: skip
    truncated = [("n1", ConsoleReply(1, total=3, keys_truncated=True)), ("n2", r2)]
    assert total_groups(truncated) == 5  # past the key list: the nodes' counts summed


def test_replies_cross_the_wire_unchanged():
    reply = sel(ConsoleQuery(3, detail=True), [job("t-0", DONE, 1.0, 1.5, 2.0)], "n1")
    assert reply.finished_s == (2.0,) and reply.run_s == (0.5,)
    assert decode(encode(reply)) == reply
    q = ConsoleQuery(9, (QUEUED,), "l", "f", "c", "n", 5, 10, False, ("k",), True)
    assert decode(encode(q)) == q
    assert decode(encode(ConsoleStats(2, 100.0))) == ConsoleStats(2, 100.0, 1.0)


def test_progress_curve_and_histogram():
    assert progress_curve([]) == []
    assert progress_curve([3.0, 1.0, 2.0]) == [[1.0, 1.0], [2.0, 2.0], [3.0, 3.0]]
    assert progress_curve([float(i) for i in range(10)], points=3) == [
        [3.0, 4.0], [7.0, 8.0], [9.0, 10.0]]  # fmt: skip
    assert histogram([]) == {"edges": [], "counts": []}
    assert histogram([0.0, 1.0, 2.0, 4.0], bins=4) == {
        "edges": [0.0, 1.0, 2.0, 3.0, 4.0], "counts": [1, 1, 1, 1]}  # fmt: skip
    assert histogram([5.0, 5.0], bins=2) == {"edges": [0.0, 2.5, 5.0], "counts": [0, 2]}


def test_series_counts_finishes_and_busy_workers_per_second():
    jobs = [
        (100.5, 101.5, 1, DONE),  # half of second 100, half of 101
        (101.0, 103.0, 2, ERROR),  # two cores over 101 and 102
        (102.5, 0.0, 1, PROCESSING),  # running since 102.5 (now_s is 103.5)
        (0.0, 0.0, 1, QUEUED),
        (90.0, 95.0, 1, DONE),  # before the window
    ]
    s = series(ConsoleStats(4, 100.2, 1.0), jobs, "n1", 4, now_s=103.5)
    assert (s.req, s.node, s.workers, s.start_s, s.step_s) == (4, "n1", 4, 100.0, 1.0)
    assert s.finished == (0, 1, 0, 1)
    assert s.busy == (0.5, 2.5, 2.5, 0.5)  # the running job counts until now_s


def test_a_group_merges_parts_in_any_order():
    parts = [
        ("k", "f", "", "c", (1, 0, 0, 0, 0), 5.0, 5.0, 0.0, 0.0, 0.0, 7, 7, ()),
        ("k", "f", "", "c", (0, 0, 2, 0, 0), 4.0, 3.0, 3.5, 4.5, 1.5, 2, 9, ()),
    ]
    a, b = Group("k", "f", "", "c"), Group("k", "f", "", "c")
    for p in parts:
        a.merge(p, "n1")
    for p in reversed(parts):
        b.merge(p, "n1")
    assert a == b and a.summary()[4:12] == ((1, 0, 2, 0, 0), 5.0, 3.0, 3.5, 4.5, 1.5, 2, 9)


def test_a_jobs_attempts_list_each_nodes_record_in_the_order_they_started():
    died = ErrorInfo(
        ErrorKind.WORKER_DIED, "WorkerDied", "worker process on node n1 was killed", "", ""
    )
    records = [
        ("id-2", job("c-4", DONE, 10.0, 20.0, 21.5, node="n2"), None),
        ("id-3", job("c-4", QUEUED, 10.0, node="n3"), None),
        ("id-1", job("c-4", ERROR, 10.0, 12.0, 19.0, node="n1"), died),
    ]
    assert attempts(records) == [
        {"node": "n1", "node_id": "id-1", "status": "error", "started": 12.0, "finished": 19.0,
         "runs": 1, "error": "WorkerDied: worker process on node n1 was killed"},
        {"node": "n2", "node_id": "id-2", "status": "done", "started": 20.0, "finished": 21.5,
         "runs": 1, "error": None},
        {"node": "n3", "node_id": "id-3", "status": "queued", "started": None, "finished": None,
         "runs": 0, "error": None},
    ]  # fmt: skip
    assert attempts([]) == []
