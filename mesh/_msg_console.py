"""Wire messages of the mesh console (tags 90-95): node <-> node, worker -> node,
and node -> client (a map killed from the console).

Built on mesh._wire; :mod:`mesh._protocol` imports this module and re-exports its names:
import them from there (every message registers in its one registry on import).
"""

import dataclasses

from mesh._msg_jobs import JobSummary
from mesh._wire import (
    Message,
    message,
)

# ---- the mesh console (tags 90-94): node <-> node, and worker -> node ----
#
# The console lists the mesh's jobs with a map's jobs as one row. Nodes cannot know
# where a map begins or ends, so a "group" is what they can agree on: the jobs of one
# client (its job id prefix) running one function under one label. Each node filters
# and aggregates its own jobs into groups, sends the newest ``offset + limit`` of them,
# and the asking node merges groups with the same key (node/_console.py).

# A group as one node holds it: key, function name, label, client name, jobs by state
# (queued, processing, done, error, killed), newest submitted, oldest submitted, first
# started (0.0: none yet), last finished (0.0: none yet), run seconds of its finished
# jobs summed, the lowest and highest job number, and the job itself when this node
# holds only one of the group (so a group of one shows as that job).
GroupSummary = tuple[
    str, str, str, str, tuple[int, ...], float, float, float, float, float, int, int,
    tuple[JobSummary, ...],
]  # fmt: skip


@message(90)
@dataclasses.dataclass(frozen=True, slots=True)
class ConsoleQuery(Message):
    """Node -> node: the console's filters; ``grouped``: the newest ``offset + limit``
    groups (with ``keys``, only those groups), else job rows (with ``keys``, only the
    jobs of those groups). ``function`` matches a part of the name; ``node`` a name
    (another node answers nothing)."""

    req: int
    status: tuple[int, ...] = ()
    label: str = ""
    function: str = ""
    client: str = ""
    node: str = ""
    offset: int = 0
    limit: int = 50
    grouped: bool = True
    keys: tuple[str, ...] = ()
    # with ``grouped`` and one key: what a map's page draws (ConsoleReply.finished_s...)
    detail: bool = False


@message(91)
@dataclasses.dataclass(frozen=True, slots=True)
class ConsoleReply(Message):
    """Answer to :class:`ConsoleQuery`. ``total``: groups (or jobs) matching on this
    node; ``all_keys``: every matching group's key when there are at most 10,000 (else
    empty and ``keys_truncated``), so the asker counts groups spread over nodes once."""

    req: int
    groups: tuple[GroupSummary, ...] = ()
    rows: tuple[JobSummary, ...] = ()
    total: int = 0
    all_keys: tuple[str, ...] = ()
    keys_truncated: bool = False
    # ``detail``: finish times (epoch seconds) and run seconds of the group's finished
    # jobs on this node, at most 20,000 of each (the newest)
    finished_s: tuple[float, ...] = ()
    run_s: tuple[float, ...] = ()


@message(92)
@dataclasses.dataclass(frozen=True, slots=True)
class ConsoleStats(Message):
    """Node -> node: jobs finished and workers busy per ``step_s`` since ``since_s``."""

    req: int
    since_s: float
    step_s: float = 1.0


@message(93)
@dataclasses.dataclass(frozen=True, slots=True)
class ConsoleSeries(Message):
    """Answer to :class:`ConsoleStats`: from ``start_s``, one value a ``step_s`` each: jobs
    finished, and workers busy on average (cores of running jobs)."""

    req: int
    node: str
    workers: int
    start_s: float
    step_s: float
    finished: tuple[int, ...]
    busy: tuple[float, ...]


@message(94)
@dataclasses.dataclass(frozen=True, slots=True)
class JobOutput(Message):
    """Worker -> node: the tail of a running job's stdout and stderr so far (the job
    page shows it while the job runs; the final text still comes with its Ran)."""

    jid: str
    stdout: str
    stderr: str


@message(95)
@dataclasses.dataclass(frozen=True, slots=True)
class MapKilled(Message):
    """Node -> client: a map (the console's group ``key``: client tag, function hash,
    label) was killed from the console; its client kills the jobs it has not sent."""

    key: str
