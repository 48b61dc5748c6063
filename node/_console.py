"""The mesh console's arithmetic: a node's jobs filtered and grouped into maps, the
groups of many nodes merged into one page, and jobs finished / workers busy over time.

Pure functions of job summaries and replies (no I/O, no clock: ``now_s`` is passed),
so each is tested by its exact output; node/_dashboard.py asks the peers and serves
the results. A "group" is what nodes can agree on without the client's help: the jobs
of one client (its job id prefix) running one function under one label. A ``mesh.map``
is one group; so are the calls of one function a client makes one after another.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
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
    GroupSummary,
    JobOutput,
    JobSummary,
)

if TYPE_CHECKING:
    from mesh.node._jobs import Job, JobTable

__all__ = [
    "ALL_KEYS_MAX",
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

    def add(self, s: JobSummary) -> None:
        """One job of this node (``s`` a JobSummary), newest first or not."""
        jid, state, submitted, started, finished = s[0], s[1], s[6], s[7], s[8]
        self.counts[state] += 1
        self.newest_s = max(self.newest_s, submitted)
        self.oldest_s = min(self.oldest_s, submitted) if self.oldest_s else submitted
        if started:
            self.started_s = min(self.started_s, started) if self.started_s else started
        if finished and state in FINAL:
            self.finished_s = max(self.finished_s, finished)
            if started:
                self.run_s += finished - started
        n = _number(jid)
        self.low = n if self.low < 0 else min(self.low, n)
        self.high = max(self.high, n)

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


def _matches(q: ConsoleQuery, s: JobSummary) -> bool:
    """Label, function and client filters (status is the caller's: groups differ)."""
    if q.label and s[3] != q.label:
        return False
    if q.function and q.function.lower() not in s[2].lower():
        return False
    return not (q.client and s[4] != q.client)


def select(q: ConsoleQuery, jobs: Iterable[tuple[str, JobSummary]], node: str) -> ConsoleReply:
    """This node's answer to ``q`` from its jobs, newest first, as (group key, summary).

    Grouped: the newest ``offset + limit`` groups having a job in the asked states
    (their counts are of all their jobs), newest job first; else the jobs, one page.
    """
    if q.node and q.node != node:
        return ConsoleReply(q.req)
    wanted = set(q.status)
    keys = set(q.keys)
    if not q.grouped:
        offset, end = max(q.offset, 0), max(q.offset, 0) + max(q.limit, 0)
        rows: list[JobSummary] = []
        total = 0
        for key, s in jobs:
            if (keys and key not in keys) or (wanted and s[1] not in wanted):
                continue
            if not _matches(q, s):
                continue
            if offset <= total < end:
                rows.append(s)
            total += 1
        return ConsoleReply(q.req, rows=tuple(rows), total=total)
    groups: dict[str, Group] = {}
    hit: set[str] = set()
    finished: list[float] = []
    runs: list[float] = []
    for key, s in jobs:
        if (keys and key not in keys) or not _matches(q, s):
            continue
        g = groups.get(key)
        if g is None:
            g = groups[key] = Group(key, s[2], s[3], s[4])
        g.add(s)
        if g.jobs == 1:  # only a group of one shows its job
            g.sample.append(s)
        if not wanted or s[1] in wanted:
            hit.add(key)
        if q.detail and s[8] and s[1] in FINAL and len(finished) < DETAIL_MAX:
            finished.append(s[8])
            runs.append(s[8] - s[7] if s[7] else 0.0)
    chosen = sorted((groups[k] for k in hit), key=lambda g: g.newest_s, reverse=True)
    page = chosen if keys else chosen[: max(q.offset, 0) + max(q.limit, 0)]
    all_keys = tuple(g.key for g in chosen) if len(chosen) <= ALL_KEYS_MAX else ()
    return ConsoleReply(q.req, groups=tuple(g.summary() for g in page), total=len(chosen),
                        all_keys=all_keys, keys_truncated=len(chosen) > ALL_KEYS_MAX,
                        finished_s=tuple(finished), run_s=tuple(runs))  # fmt: skip


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
    page: Sequence[Group], replies: Sequence[tuple[str, ConsoleReply]]
) -> dict[str, tuple[str, ...]]:
    """Node name -> keys of groups on ``page`` that node holds but did not send (they
    were past its own page): ask it for those before showing their counts."""
    out: dict[str, tuple[str, ...]] = {}
    for node, reply in replies:
        sent = {g[0] for g in reply.groups}
        held = set(reply.all_keys)
        keys = tuple(g.key for g in page
                     if g.key not in sent and (reply.keys_truncated or g.key in held))  # fmt: skip
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


# ---- a node's jobs as these functions read them ----


def console_reply(q: ConsoleQuery, table: JobTable, node: str, summary: Any) -> ConsoleReply:
    """``select`` over a node's job table, newest first; ``summary(job)`` gives a job's
    JobSummary (the dashboard's, with its client's name)."""
    return select(q, _keyed(table, summary), node)


def _keyed(table: JobTable, summary: Any) -> Iterator[tuple[str, JobSummary]]:
    for job in reversed(table.jobs.values()):
        yield group_key(job.jid, job.func.fhash, job.label), summary(job)


def stats_reply(
    q: ConsoleStats, table: JobTable, node: str, workers: int, now_s: float
) -> ConsoleSeries:
    jobs = ((j.started, j.finished, j.cores, j.state) for j in table.jobs.values())
    return series(q, jobs, node, workers, now_s)


def group_jids(table: JobTable, key: str, states: Sequence[int]) -> list[str]:
    """The jobs of one group this node holds, in these states."""
    return [j.jid for j in table.jobs.values()
            if j.state in states and group_key(j.jid, j.func.fhash, j.label) == key]  # fmt: skip


def running_output(jobs: dict[str, Job], msg: JobOutput) -> None:
    """A worker's news of a running job's output: kept on the job until its end."""
    job = jobs.get(msg.jid)
    if job is not None and job.state == PROCESSING:
        job.stdout, job.stderr = msg.stdout, msg.stderr
