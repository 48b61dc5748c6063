"""The mesh console's arithmetic: a node's jobs filtered and grouped into maps, the
groups of many nodes merged into one page, and jobs finished / workers busy over time.

Pure functions of job summaries and replies (no I/O, no clock: ``now_s`` is passed),
so each is tested by its exact output; node/_dashboard.py asks the peers and serves
the results. A "group" is what nodes can agree on without the client's help: the jobs
of one client (its job id prefix) running one function under one label. A ``mesh.map``
is one group; so are the calls of one function a client makes one after another.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mesh._protocol import (
    DONE,
    ERROR,
    JOB_STATES,
    KILLED,
    PROCESSING,
    QUEUED,
    ConsoleQuery,
    ConsoleReply,
    ConsoleSeries,
    ConsoleStats,
    ErrorInfo,
    GroupSummary,
    JobOutput,
    JobSummary,
)

if TYPE_CHECKING:
    from mesh.node._job_types import Job
    from mesh.node._jobs import JobTable

__all__ = [
    "ALL_KEYS_MAX",
    "attempts",
    "DETAIL_MAX",
    "Group",
    "console_reply",
    "group_key",
    "histogram",
    "map_row",
    "merge_groups",
    "progress_curve",
    "running_output",
    "select",
    "series",
]

ALL_KEYS_MAX = 10_000  # group keys a reply lists, so the asker counts each group once
DETAIL_MAX = 20_000  # finish and run times a reply sends for a map's page
FINAL = (DONE, ERROR, KILLED)


def group_key(jid: str, fhash: bytes, label: str) -> str:
    """The group of a job: its client's id prefix, its function's hash, its label."""
    return f"{jid.rpartition('-')[0]}/{fhash.hex()[:16]}/{label}"


def _number(jid: str) -> int:
    num = jid.rpartition("-")[2]
    return int(num) if num.isascii() and num.isdigit() else -1


@dataclass(slots=True)
class Group:
    """A group as it is being summed up, on one node or over the mesh."""

    key: str
    function: str
    label: str
    client: str
    counts: list[int] = field(default_factory=lambda: [0] * len(JOB_STATES))
    newest_s: float = 0.0
    oldest_s: float = 0.0
    started_s: float = 0.0  # the first start (0.0: none yet)
    finished_s: float = 0.0  # the last finish (0.0: none yet)
    run_s: float = 0.0  # summed over its finished jobs
    low: int = -1
    high: int = -1
    sample: list[JobSummary] = field(default_factory=list)
    nodes: list[str] = field(default_factory=list)

    @property
    def jobs(self) -> int:
        return sum(self.counts)

    def summary(self) -> GroupSummary:
        sample = tuple(self.sample) if self.jobs == 1 else ()
        return (self.key, self.function, self.label, self.client, tuple(self.counts),
                self.newest_s, self.oldest_s, self.started_s, self.finished_s, self.run_s,
                self.low, self.high, sample)  # fmt: skip

    def merge(self, g: GroupSummary, node: str) -> None:
        """Add another node's part of this group."""
        counts, newest, oldest, started, finished, run_s, low, high, sample = g[4:]
        for i, n in enumerate(counts[: len(self.counts)]):
            self.counts[i] += n
        self.newest_s = max(self.newest_s, newest)
        self.oldest_s = min(self.oldest_s, oldest) if self.oldest_s else oldest
        if started:
            self.started_s = min(self.started_s, started) if self.started_s else started
        self.finished_s = max(self.finished_s, finished)
        self.run_s += run_s
        if low >= 0:
            self.low = low if self.low < 0 else min(self.low, low)
        self.high = max(self.high, high)
        self.sample.extend(sample)
        if node not in self.nodes:
            self.nodes.append(node)


class _Keys:
    """Group keys of jobs, with each function's hash written out once."""

    def __init__(self) -> None:
        self._hex: dict[bytes, str] = {}

    def __call__(self, job: Job) -> str:
        fhash = job.func.fhash
        hx = self._hex.get(fhash)
        if hx is None:
            hx = self._hex[fhash] = fhash.hex()[:16]
        return f"{job.jid.rpartition('-')[0]}/{hx}/{job.label}"


def select(
    q: ConsoleQuery,
    jobs: Iterable[Job],
    node: str,
    client_of: Callable[[Job], str],
    summary: Callable[[Job], JobSummary],
) -> ConsoleReply:
    """This node's answer to ``q`` from its jobs, newest first; ``client_of(job)``: the
    name of the client that sent it, ``summary(job)``: its row.

    Grouped: the newest ``offset + limit`` groups having a job in the asked states
    (their counts are of all their jobs), newest first; else the jobs, one page. Reads
    each job's fields directly (no row per job): a node holds 100,000 of them.
    """
    if q.node and q.node != node:
        return ConsoleReply(q.req)
    wanted = set(q.status)
    keys = set(q.keys)
    key_of = _Keys()
    part = q.function.lower()
    named: dict[str, bool] = {}  # function name -> matches ``part``

    def passes(job: Job) -> bool:
        if q.label and job.label != q.label:
            return False
        if part:
            ok = named.get(job.func.name)
            if ok is None:
                ok = named[job.func.name] = part in job.func.name.lower()
            if not ok:
                return False
        return not (q.client and client_of(job) != q.client)

    if not q.grouped:
        offset, end = max(q.offset, 0), max(q.offset, 0) + max(q.limit, 0)
        rows: list[JobSummary] = []
        total = 0
        for job in jobs:
            if (wanted and job.state not in wanted) or not passes(job):
                continue
            if keys and key_of(job) not in keys:
                continue
            if offset <= total < end:
                rows.append(summary(job))
            total += 1
        return ConsoleReply(q.req, rows=tuple(rows), total=total)
    # key -> [counts, newest, oldest, first start, last finish, run_s, jids, first job]
    acc: dict[str, list[Any]] = {}
    hit: set[str] = set()
    finished: list[float] = []
    runs: list[float] = []
    simple = not (q.label or part or q.client)
    hexes: dict[bytes, str] = {}
    for job in jobs:
        if not simple and not passes(job):
            continue
        # key_of(job), inline: this loop meets every job the node holds
        fhash = job.func.fhash
        hx = hexes.get(fhash)
        if hx is None:
            hx = hexes[fhash] = fhash.hex()[:16]
        key = f"{job.jid.rpartition('-')[0]}/{hx}/{job.label}"
        if keys and key not in keys:
            continue
        state, started, fin = job.state, job.started, job.finished
        a = acc.get(key)
        if a is None:
            a = acc[key] = [[0, 0, 0, 0, 0], job.submitted, job.submitted, 0.0, 0.0, 0.0,
                            [job.jid], job]  # fmt: skip
        else:
            a[6].append(job.jid)
            sub = job.submitted
            if sub > a[1]:
                a[1] = sub
            elif sub < a[2]:
                a[2] = sub
        a[0][state] += 1
        if started and (not a[3] or started < a[3]):
            a[3] = started
        if fin and state >= DONE:
            if fin > a[4]:
                a[4] = fin
            if started:
                a[5] += fin - started
            if q.detail and len(finished) < DETAIL_MAX:
                finished.append(fin)
                runs.append(fin - started if started else 0.0)
        if not wanted or state in wanted:
            hit.add(key)
    chosen = sorted(hit, key=lambda k: acc[k][1], reverse=True)
    page = chosen if keys else chosen[: max(q.offset, 0) + max(q.limit, 0)]
    groups = []
    for key in page:
        counts, newest, oldest, first, last, run_s, jids, job = acc[key]
        numbers = [_number(j) for j in jids]
        sample = (summary(job),) if len(jids) == 1 else ()
        groups.append((key, job.func.name, job.label, client_of(job), tuple(counts), newest,
                       oldest, first, last, run_s, min(numbers), max(numbers), sample))  # fmt: skip
    all_keys = tuple(chosen) if len(chosen) <= ALL_KEYS_MAX else ()
    return ConsoleReply(q.req, groups=tuple(groups), total=len(chosen), all_keys=all_keys,
                        keys_truncated=len(chosen) > ALL_KEYS_MAX, finished_s=tuple(finished),
                        run_s=tuple(runs))  # fmt: skip


def merge_groups(replies: Sequence[tuple[str, ConsoleReply]]) -> list[Group]:
    """Groups of many nodes, as (node name, reply), merged by key: newest first."""
    merged: dict[str, Group] = {}
    for node, reply in replies:
        for g in reply.groups:
            m = merged.get(g[0])
            if m is None:
                m = merged[g[0]] = Group(g[0], g[1], g[2], g[3])
            m.merge(g, node)
    return sorted(merged.values(), key=lambda g: (g.newest_s, g.key), reverse=True)


def missing_parts(
    page: Sequence[Group], replies: Sequence[tuple[str, ConsoleReply]], *, filtered: bool = False
) -> dict[str, tuple[str, ...]]:
    """Node name -> keys of groups on ``page`` that node may hold but did not send (they
    were past its own page): ask it for those before showing their counts. ``filtered``
    (a status filter): a node lists only groups with a job in those states, yet a row
    counts all of its jobs, so every node that did not send a group is asked for it."""
    out: dict[str, tuple[str, ...]] = {}
    for node, reply in replies:
        sent = {g[0] for g in reply.groups}
        held = set(reply.all_keys)
        keys = tuple(g.key for g in page if g.key not in sent
                     and (filtered or reply.keys_truncated or g.key in held))  # fmt: skip
        if keys:
            out[node] = keys
    return out


def total_groups(replies: Sequence[tuple[str, ConsoleReply]]) -> int:
    """How many groups match in the mesh: each counted once where every node listed
    its keys, else (a node past ALL_KEYS_MAX) the sum of the nodes' counts."""
    if any(r.keys_truncated for _, r in replies):
        return sum(r.total for _, r in replies)
    return len({k for _, r in replies for k in r.all_keys})


def map_row(g: Group, now_s: float) -> dict[str, Any]:
    """A group as the API shows it: counts, progress, rate (jobs/s since its first
    start) and ETA (its unfinished jobs at that rate)."""
    final = sum(g.counts[s] for s in FINAL)
    pending = g.counts[QUEUED] + g.counts[PROCESSING]
    end_s = g.finished_s if not pending and g.finished_s else now_s
    span = end_s - g.started_s if g.started_s else 0.0
    rate = final / span if final and span > 0 else None
    tag = g.key.split("/", 1)[0]
    return {
        "kind": "map", "key": g.key, "function": g.function, "label": g.label,
        "client": g.client, "jobs": g.jobs,
        "counts": dict(zip(JOB_STATES, g.counts, strict=True)),
        "submitted": g.newest_s, "first_submitted": g.oldest_s,
        "started": g.started_s or None, "finished": g.finished_s if not pending else None,
        "first_jid": f"{tag}-{g.low}" if g.low >= 0 else "",
        "last_jid": f"{tag}-{g.high}" if g.high >= 0 else "",
        "nodes": sorted(g.nodes),
        "progress": round(final / g.jobs, 4) if g.jobs else 0.0,
        "rate_per_s": round(rate, 3) if rate is not None else None,
        "eta_s": round(pending / rate, 1) if rate and pending else (0.0 if not pending else None),
        "mean_run_s": round(g.run_s / final, 4) if final else None,
    }  # fmt: skip


def progress_curve(finished_s: Iterable[float], points: int = 200) -> list[list[float]]:
    """[[epoch seconds, jobs finished by then], ...]: at most ``points`` of them, the
    last one the last finish."""
    times = sorted(finished_s)
    if not times:
        return []
    step = max(1, -(-len(times) // points))
    out = [[times[i], float(i + 1)] for i in range(step - 1, len(times), step)]
    if out[-1][1] != len(times):
        out.append([times[-1], float(len(times))])
    return out


def histogram(values: Iterable[float], bins: int = 20) -> dict[str, Any]:
    """Equal-width bins from 0 to the largest value: ``edges`` (bins + 1) and ``counts``."""
    xs = [max(0.0, v) for v in values]
    if not xs:
        return {"edges": [], "counts": []}
    top = max(xs) or 1.0
    width = top / bins
    counts = [0] * bins
    for x in xs:
        counts[min(int(x / width), bins - 1)] += 1
    return {"edges": [round(i * width, 6) for i in range(bins + 1)], "counts": counts}


def series(
    q: ConsoleStats,
    jobs: Iterable[tuple[float, float, int, int]],
    node: str,
    workers: int,
    now_s: float,
) -> ConsoleSeries:
    """Jobs finished and workers busy per ``step_s`` from ``since_s`` to ``now_s``, from
    jobs as (started, finished (0.0: not yet), cores, state). Buckets start at a whole
    multiple of ``step_s``, so every node's line up."""
    step = q.step_s if q.step_s > 0 else 1.0
    start = (q.since_s // step) * step
    n = max(1, int((now_s - start) // step) + 1)
    finished = [0] * n
    busy = [0.0] * n
    for started, fin, cores, state in jobs:
        if fin and state in FINAL and start <= fin < start + n * step:
            finished[int((fin - start) // step)] += 1
        if not started:
            continue
        end = fin if fin else (now_s if state == PROCESSING else 0.0)
        if end <= start or end <= started:
            continue
        a, b = max(started, start), min(end, start + n * step)
        i = int((a - start) // step)
        while i < n and a < b:
            edge = start + (i + 1) * step
            busy[i] += cores * (min(b, edge) - a) / step
            a = edge
            i += 1
    return ConsoleSeries(q.req, node, workers, start, step, tuple(finished),
                         tuple(round(x, 3) for x in busy))  # fmt: skip


def attempts(
    records: Iterable[tuple[str, JobSummary, ErrorInfo | None]],
) -> list[dict[str, Any]]:
    """A job's attempts over the mesh, one per node's record of it ((node id, summary,
    error) from each node that holds one), in the order they started (not started: last)."""
    out = []
    for node_id, s, err in records:
        out.append({"node": s[5], "node_id": node_id, "status": JOB_STATES[s[1]],
                    "started": s[7] or None, "finished": s[8] or None, "runs": s[10],
                    "error": None if err is None else f"{err.type_name}: {err.message}"})  # fmt: skip
    out.sort(key=lambda a: (a["started"] is None, a["started"] or 0.0, a["node"], a["node_id"]))
    return out


# ---- a node's jobs as these functions read them ----


def console_reply(
    q: ConsoleQuery,
    table: JobTable,
    node: str,
    client_of: Callable[[Job], str],
    summary: Callable[[Job], JobSummary],
) -> ConsoleReply:
    """``select`` over a node's job table, newest first."""
    return select(q, reversed(table.jobs.values()), node, client_of, summary)


def stats_reply(
    q: ConsoleStats, table: JobTable, node: str, workers: int, now_s: float
) -> ConsoleSeries:
    since = q.since_s - q.step_s  # a job that ended before the window adds nothing
    jobs = ((j.started, j.finished, j.cores, j.state) for j in table.jobs.values()
            if j.state == PROCESSING or j.finished >= since)  # fmt: skip
    return series(q, jobs, node, workers, now_s)


def group_jids(table: JobTable, key: str, states: Sequence[int]) -> list[str]:
    """The jobs of one group this node holds, in these states."""
    key_of = _Keys()
    return [j.jid for j in table.jobs.values() if j.state in states and key_of(j) == key]


def running_output(jobs: dict[str, Job], msg: JobOutput) -> None:
    """A worker's news of a running job's output: kept on the job until its end."""
    job = jobs.get(msg.jid)
    if job is not None and job.state == PROCESSING:
        job.stdout, job.stderr = msg.stdout, msg.stderr
