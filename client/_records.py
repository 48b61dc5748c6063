"""What the client tells users about jobs, nodes and environments: frozen records
(``mesh.info``'s :class:`JobInfo`, ``nodes()``'s :class:`NodeInfo`, ``env_info``'s
:class:`EnvInfo`, ``rebuild_env``'s :class:`EnvRebuild`), and how a job's info is made
from its node's record or, with the node gone, from what the ledger knows."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from mesh.client._ledger import JobEntry, Ledger

from mesh._protocol import DONE, ERROR, JOB_STATES, QUEUED, JobRecord
from mesh._serialize import traceback_text
from mesh.errors import ErrorKind

__all__ = ["EnvInfo", "EnvRebuild", "JobInfo", "NodeInfo", "job_info", "runs"]

# Error kinds of a job that ran on a node (others: it failed before it started, or in
# this client, or its worker died)
RAN_KINDS = frozenset({ErrorKind.RAISED, ErrorKind.MAX_RUNTIME, ErrorKind.MEMORY})


@dataclass(frozen=True)
class JobInfo:
    """What a node recorded about a job (``mesh.info``).

    ``node`` is the name the node shows (unique in a mesh, for people); ``node_id`` is
    the node itself. ``attempts`` counts the job's runs as a user reads them: 0 while it
    has not started, 1 for a job that ran once, 2 for one whose first worker (or node)
    died and that ran again. ``record_lost``: the node that ran the job is gone (or does
    not answer, or no longer holds its record), so the rest is what this client knows:
    status, node, ``submitted`` (when the call or map was made), ``finished`` (when the
    result reached this client), attempts and the error; ``started``, CPU time and
    output are then unknown (None, 0.0, "").
    """

    jid: str
    status: str
    node: str
    function: str
    label: str
    submitted: float
    started: float | None
    finished: float | None
    cpu_s: float
    stdout: str
    stderr: str
    error: str
    attempts: int
    node_id: str = ""
    record_lost: bool = False

    @classmethod
    def from_record(cls, r: JobRecord, node_id: str = "", attempts: int | None = None) -> JobInfo:
        return cls(
            jid=r.jid, status=JOB_STATES[r.state], node=r.node, function=r.function,
            label=r.label, submitted=r.submitted, started=r.started or None,
            finished=r.finished or None, cpu_s=r.cpu_s, stdout=r.stdout, stderr=r.stderr,
            error=r.error, attempts=r.attempts if attempts is None else attempts,
            node_id=node_id,
        )  # fmt: skip


def runs(deaths: int, started: bool, died_last: bool) -> int:
    """How many times a job ran, as ``JobInfo.attempts`` tells users: the attempts that
    ended with their worker or node dying, and the last one if it started and did not."""
    return deaths + (1 if started and not died_last else 0)


@dataclass(frozen=True)
class NodeInfo:
    """A node as this client sees it: ``name`` for people (unique in a mesh: a node
    whose name another live node shows takes a suffix, ``vm-2``), ``node_id`` the node."""

    name: str
    node_id: str
    address: str
    workers: int
    running: int
    queued: int
    connected: bool


@dataclass(frozen=True)
class EnvInfo:
    """A job environment (``_env``) a node holds (``mesh.env_info``)."""

    node: str
    key: str
    requirements: tuple[str, ...]  # pushed files as "wheel:<sha256>:<file name>"
    status: str  # "ready", "building" or "failed"
    size_bytes: int
    last_used: float  # epoch seconds
    builds: int
    python: str
    build_s: float  # how long the last build took (0.0: not finished)
    error: str  # failed: why, ending with the last lines of pip's build log


@dataclass(frozen=True)
class EnvRebuild:
    """What ``rebuild_env`` did on a node: ``outcome`` is "forgotten" (a failed build:
    the next job tries again), "removed" (a ready environment: the next job builds it
    again), or "building" / "in use" (left alone)."""

    node: str
    what: str
    key: str
    outcome: str


def job_info(
    j: JobEntry, record: JobRecord | None, node_id: str, name_of: Callable[[str], str]
) -> JobInfo:
    """``mesh.info`` of job ``j``: the ``record`` node ``node_id`` holds of it, or (None:
    no reachable node has it) what this client knows; ``name_of`` names nodes by id."""
    kind = j.error.kind if j.final and j.error is not None else ""
    if record is not None:
        r = record
        died_last = kind == ErrorKind.WORKER_DIED or (
            r.state == ERROR and r.error.startswith("WorkerDied")
        )
        attempts = runs(max(j.attempts, r.attempts), bool(r.started), died_last)
        info = JobInfo.from_record(r, node_id, attempts)
        if j.final and j.error is not None and j.error.tb_data is not None:  # our source
            info = replace(info, error=traceback_text(j.error))
        return info
    started = j.state == DONE or kind in RAN_KINDS
    func, k = j.func, 0
    if func is not None:
        k = Ledger.index(j)
    err = ""
    if j.error is not None:
        err = traceback_text(j.error) or f"{j.error.type_name}: {j.error.message}"
    return JobInfo(
        j.jid, JOB_STATES[max(j.state, QUEUED)], name_of(j.node) if j.node else "",
        func.name if func is not None else "", j.label,
        func.submitted if func is not None else 0.0, None,
        func.came_at(k) if func is not None and j.final else None, 0.0, "", "", err,
        runs(j.attempts, started, kind == ErrorKind.WORKER_DIED), node_id=j.node,
        # a node ran it (or holds it) but no reachable node has its record now
        record_lost=bool(j.node) and j.state != QUEUED,
    )  # fmt: skip
