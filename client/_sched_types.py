"""What goes into the client's scheduler and what comes out of it: its configuration,
the events' records (Work, Batch, Outcome, Run) and the instructions (Send, Accept,
Lost, Fail, Stop, Recall, Ack, AskRuns). Plain frozen records, no behaviour beyond
naming an error; :mod:`mesh.client._scheduler` re-exports them all.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import NamedTuple

from mesh._protocol import ErrorInfo
from mesh.errors import ErrorKind

DEFAULT_PRIORITY = 5  # PiCloud's default _priority: lower runs first


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """The scheduler's knobs; tests shrink them here rather than patching constants."""

    pipeline_s: float = 0.05  # keep about this much of a measured function queued per slot
    # Jobs at least this long get no queue at a node: a round trip costs them under 1 %.
    long_job_s: float = 0.1
    max_depth: int = 4096  # jobs in flight per worker slot, at most
    unmeasured_depth: int = 2  # per slot, for a function none of whose jobs came back yet
    no_nodes_timeout_s: float = 30.0  # with no node usable this long, unfinished jobs fail
    # _speculative=True: from this share of a map done, a job running longer than
    # ``straggler`` x the median run time (and at least ``min_straggler_s``) gets a copy.
    speculate_after: float = 0.75
    straggler: float = 1.5
    min_straggler_s: float = 0.2
    speculate_every_s: float = 0.25
    speculate_sample: int = 50  # done jobs whose run times give the median
    # Pickled arguments of unfinished jobs held for retries before a lazy map's jobs stop
    # leaving the queue (their arguments are read from its sequences as they leave it).
    held_args_bytes: int = 64 << 20
    recall: bool = True  # nodes answer Recall (with a hand-back of what they did not start)


class FailKind(enum.Enum):
    """Why the scheduler failed a job; the value is the error kind on the wire."""

    WORKER_DIED = ErrorKind.WORKER_DIED  # its attempts all ended with their worker or node dying
    REJECTED = ErrorKind.REJECTED  # it needs more cores than the largest node has
    NO_NODES = ErrorKind.NO_NODES  # no node was usable for no_nodes_timeout_s
    WORKER_START = ErrorKind.WORKER_START  # its attempts all met nodes that could not start
    KILLED = ErrorKind.KILLED  # killed on request before it was sent
    DEPENDENCY = ErrorKind.DEPENDENCY  # a job it depends on (_depends_on) failed

    @property
    def exception(self) -> str:
        """The exception type the client raises for it (by name, as ErrorInfo carries)."""
        return _EXCEPTIONS[self]

    def error_info(self, message: str) -> ErrorInfo:
        return ErrorInfo(self.value, self.exception, message)


_EXCEPTIONS = {
    FailKind.WORKER_DIED: "WorkerDied",
    FailKind.REJECTED: "ValueError",
    FailKind.NO_NODES: "NoNodesAvailable",
    FailKind.WORKER_START: "WorkerStartFailed",
    FailKind.KILLED: "JobKilled",
    FailKind.DEPENDENCY: "DependencyFailed",
}


# ---- what comes in ----


class Work(NamedTuple):
    """What jobs that can travel in one Submit share: function and placement options.
    (A NamedTuple: one is made per call, and compared per job placed.)"""

    fhash: bytes
    name: str
    cores: int = 1
    label: str = ""
    max_runtime_s: float = 0.0
    env: tuple[str, ...] = ()
    prefer: frozenset[str] = frozenset()  # keys of nodes holding its _files
    notify_start: bool = False  # its node tells when each job starts (mesh.Executor)
    priority: int = DEFAULT_PRIORITY  # _priority: lower runs first, here and on nodes
    kill_process: bool = False  # _kill_process: its worker is replaced after each job


class Batch(NamedTuple):
    """A call (n=1) or map: jobs ``first`` to ``first + n - 1``, all of ``work``."""

    first: int
    n: int
    work: Work
    retries: int = 3
    speculative: bool = False
    lazy: bool = False  # its arguments are read from its sequences as its jobs leave
    job_bytes: int = 0  # pickled arguments of one job (an estimate): held until it ends
    # _depends_on: jobs of this client, not final when this was made, that must end
    # done before any of these is placed (the client fails a call or map whose
    # dependency failed already; one not submitted yet is waited for)
    after: tuple[int, ...] = ()


class Outcome(NamedTuple):
    """One finished job in a node's Results."""

    num: int
    state: int  # DONE, ERROR or KILLED
    # error kind "worker-died" or "worker-start": the node's message (the attempt is lost)
    died: str = ""
    # the error as the node sent it: a "worker-start" one is what the job fails with
    # once its retries are spent (it names the node and why its workers do not start);
    # a final one is what jobs depending on it name
    error: ErrorInfo | None = None


class Run(NamedTuple):
    """A job's times from a node's record (0.0: not yet), answering AskRuns."""

    num: int
    state: int
    started: float
    finished: float


# ---- what goes out ----


@dataclass(frozen=True, slots=True)
class Send:
    """Submit ``nums`` (all of ``work``) to ``node``. ``retry``: some ran before and
    killed their worker; ``copy``: a speculative second copy of a running job."""

    node: str
    work: Work
    nums: tuple[int, ...]
    retry: bool = False
    copy: bool = False


@dataclass(frozen=True, slots=True)
class Accept:
    """These results from ``node`` are final: the ledger keeps them (others are ignored)."""

    node: str
    nums: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Lost:
    """An attempt of job ``num`` ended with its worker or node dying (``attempts`` so far)."""

    num: int
    node: str  # the node's name
    attempts: int
    key: str = ""  # the node's key


@dataclass(frozen=True, slots=True)
class Fail:
    """These jobs fail here, with no result from a node. A range for jobs never sent."""

    nums: range | tuple[int, ...]
    kind: FailKind
    message: str
    error: ErrorInfo | None = None  # the node's own error, when the job fails with it

    @property
    def info(self) -> ErrorInfo:
        """The error the jobs fail with, as a node would have sent it."""
        return self.error or self.kind.error_info(self.message)


@dataclass(frozen=True, slots=True)
class Stop:
    """Kill the copies of ``nums`` on ``node`` (killed on request, or another copy won)."""

    node: str
    nums: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Recall:
    """Ask ``node`` to hand back those of ``nums`` it has not started. It answers with one
    hand-back (``handed_back(..., leaving=False)``), empty if it started them all."""

    node: str
    nums: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """The client holds these results; ``node`` may expire them after its TTL."""

    node: str
    nums: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class AskRuns:
    """Ask ``node`` for the records of ``nums``; answer with ``runs()``."""

    node: str
    nums: tuple[int, ...]


Instruction = Send | Accept | Lost | Fail | Stop | Recall | Ack | AskRuns


def dependency_failed(jid: str, error: ErrorInfo) -> str:
    """Why a job depending on job ``jid``, which failed with ``error``, does not run."""
    if error.kind == ErrorKind.DEPENDENCY:
        return f"it depends on job {jid}, which did not run: {error.message}"
    name = error.type_name.removeprefix("builtins.")
    return f"it depends on job {jid}, which failed ({name}: {error.message})"
