"""The job table's records and instructions (node/_jobs.py is the table): a job as the
node holds it, the function it runs, and what the table tells the node to do. Apart
so that a worker process (node/_worker.py) and the dashboard can name them without
importing the table.
"""

from __future__ import annotations

from dataclasses import dataclass

from mesh._protocol import QUEUED, ErrorInfo, KillReason, Payload, ResultItem

__all__ = [
    "NODE_TRACKED_FUNCTIONS",
    "WORKER_FUNCTIONS",
    "Deliver",
    "Dispatch",
    "Func",
    "HandBack",
    "Instruction",
    "Job",
    "KillWorker",
    "Notify",
    "RetireWorker",
    "RetryRefused",
]

# Functions the node remembers each worker holds; the worker keeps twice as many, so
# every function the node thinks a worker holds is still there.
NODE_TRACKED_FUNCTIONS = 128
WORKER_FUNCTIONS = 2 * NODE_TRACKED_FUNCTIONS


@dataclass(slots=True, eq=False)
class Func:
    fhash: bytes
    blob: bytes
    name: str
    env: str = ""  # key of the job environment (_env) its jobs run in; "" the node's own


@dataclass(slots=True, eq=False)
class Job:
    jid: str
    func: Func
    args: Payload
    owner: int
    submitted: float
    cores: int = 1
    label: str = ""
    max_runtime: float = 0.0
    state: int = QUEUED
    started: float = 0.0
    finished: float = 0.0
    cpu_s: float = 0.0
    stdout: str = ""
    stderr: str = ""
    result: Payload = b""
    error: ErrorInfo | None = None
    attempts: int = 0
    worker: int = -1
    suspect: bool = False
    kill_reason: KillReason | None = None
    watchers: set[int] | None = None
    notify_start: bool = False  # its owner wants a Started when it starts
    priority: int = 5  # among its owner's queued jobs, lower runs first
    kill_process: bool = False  # runs alone; its worker is retired afterwards
    retry_of: str = ""  # the failed job the console's Retry ran again as this one

    def item(self) -> ResultItem:
        return ResultItem(self.jid, self.state, self.result, self.error)

    @property
    def alone(self) -> bool:
        """Whether it runs in a batch of its own: it takes several cores, has a runtime
        limit, is a suspect of a batch whose worker died, has its worker replaced after
        it, or its sender is told when it starts (behind another in a batch it would
        not have started)."""
        return (self.cores != 1 or self.max_runtime > 0 or self.suspect or self.kill_process
                or self.notify_start)  # fmt: skip


@dataclass(frozen=True, slots=True)
class Dispatch:
    worker: int
    func: Func
    send_function: bool
    jobs: list[Job]


@dataclass(frozen=True, slots=True)
class KillWorker:
    worker: int
    reason: str


@dataclass(frozen=True, slots=True)
class Deliver:
    conn: int
    items: list[ResultItem]


@dataclass(frozen=True, slots=True)
class HandBack:
    conn: int
    jids: list[str]
    recall: bool = False  # the answer to a Recall (one per Recall, even empty)


@dataclass(frozen=True, slots=True)
class Notify:
    """Tell ``conn`` these jobs of its (submitted with ``notify_start``) have started."""

    conn: int
    jids: list[str]


@dataclass(frozen=True, slots=True)
class RetireWorker:
    """Stop ``worker``, idle now: its last job asked for a fresh process after it (its
    result went out first); the pool starts another in its place."""

    worker: int


Instruction = Dispatch | KillWorker | Deliver | HandBack | Notify | RetireWorker


class RetryRefused(ValueError):
    """A job cannot be run again: the message says why (shown beside the absent button)."""
