"""Wire messages of jobs: the handshake, client <-> node (submit, results, kill,
hand-back, recall), the dashboard's jobs view, job environments, node <-> worker.

Built on mesh._wire; :mod:`mesh._protocol` imports this module and re-exports its names:
import them from there (every message registers in its one registry on import).
"""

import dataclasses

from mesh._wire import (
    ErrorInfo,
    JobRecord,
    Message,
    Payload,
    RanItem,
    ResultItem,
    message,
)

# ---- handshake (before authentication; each encodes to at most 256 bytes) ----


@message(1)
@dataclasses.dataclass(frozen=True, slots=True)
class Hello(Message):
    """Client -> node: who I am, what I speak, and my challenge nonce."""

    magic: str
    protocol: int
    python: str
    nonce: bytes
    name: str = ""


@message(2)
@dataclasses.dataclass(frozen=True, slots=True)
class Challenge(Message):
    """Node -> client: its versions and its nonce; nothing derived from the secret, so
    it is no oracle for a guess (``proof`` is empty since protocol 4)."""

    protocol: int
    python: str
    nonce: bytes
    proof: bytes = b""
    name: str = ""
    node_id: str = ""


@message(3)
@dataclasses.dataclass(frozen=True, slots=True)
class Proof(Message):
    """A side's proof of the secret: the client's first, then the node's (sent only
    once it accepted the client's)."""

    proof: bytes


# ---- client <-> node (authenticated) ----


@message(10)
@dataclasses.dataclass(frozen=True, slots=True)
class Load(Message):
    """A node's capacity and load; sent on connect and whenever it changes."""

    node_id: str
    name: str
    workers: int
    running: int
    queued: int


@message(11)
@dataclasses.dataclass(frozen=True, slots=True)
class Submit(Message):
    """Run ``fn(*args)`` for each item. The function blob is sent once per connection."""

    BLOBS = (("fblob", -1), ("items", 1))
    fhash: bytes
    fblob: bytes
    fname: str
    items: tuple[tuple[str, Payload], ...]
    cores: int = 1
    label: str = ""
    max_runtime: float = 0.0
    # Items whose earlier attempt here killed its worker: run them again (a jid seen
    # before is otherwise never run twice: the sender just gets its record).
    retry: bool = False
    # _env: requirements the jobs need (pip specifiers, or "wheel:<sha256>:<file name>"
    # for a file pushed through mesh.files); the node runs them in a cached venv.
    env: tuple[str, ...] = ()
    # Send a Started when each of these jobs starts (mesh.Executor: its futures enter
    # RUNNING); off for plain calls and maps, which need not pay for the messages.
    notify_start: bool = False
    # _priority: among this sender's queued jobs, lower runs first (5: PiCloud's default)
    priority: int = 5
    # _kill_process: each job runs alone and its worker process is replaced afterwards
    kill_process: bool = False


def pushed_name(sha: str, filename: str) -> str:
    """The mesh.files name under which a client pushes the file of a
    ``wheel:<sha256>:<file name>`` requirement (and where nodes fetch it)."""
    return f".lanmesh-env/{sha}/{filename}"


@message(12)
@dataclasses.dataclass(frozen=True, slots=True)
class Results(Message):
    """Finished jobs, with the node's load at the time."""

    BLOBS = (("items", 2),)
    items: tuple[ResultItem, ...]
    running: int = 0
    queued: int = 0
    avg_run_s: float = 0.0


@message(13)
@dataclasses.dataclass(frozen=True, slots=True)
class Kill(Message):
    jids: tuple[str, ...]


@message(14)
@dataclasses.dataclass(frozen=True, slots=True)
class Ack(Message):
    """The client holds these results; the node may expire them after its TTL."""

    jids: tuple[str, ...]


@message(15)
@dataclasses.dataclass(frozen=True, slots=True)
class Query(Message):
    """Ask for job records; with ``watch`` the node also pushes their results when done."""

    req: int
    jids: tuple[str, ...]
    watch: bool = False


@message(16)
@dataclasses.dataclass(frozen=True, slots=True)
class Records(Message):
    """Reply to :class:`Query`: records of the jobs this node knows (others are absent)."""

    req: int
    records: tuple[JobRecord, ...]


@message(17)
@dataclasses.dataclass(frozen=True, slots=True)
class Goodbye(Message):
    reason: str = ""


@message(18)
@dataclasses.dataclass(frozen=True, slots=True)
class Ping(Message):
    """Liveness: the peer answers with :class:`Pong` at once."""

    t: float = 0.0


@message(19)
@dataclasses.dataclass(frozen=True, slots=True)
class Pong(Message):
    """Answer to :class:`Ping`, with the node's load (placement stays fresh between results)."""

    t: float = 0.0
    running: int = 0
    queued: int = 0


@message(20)
@dataclasses.dataclass(frozen=True, slots=True)
class Peers(Message):
    """The nodes a node knows to be alive, as ``"host:port"``, the sender first.

    A node sends it to every connection once authenticated and again when it finds
    a new peer, so one address (``--peer``/``MESH_PEERS``) is enough to learn a mesh
    on a network that blocks multicast.
    """

    addrs: tuple[str, ...]


@message(21)
@dataclasses.dataclass(frozen=True, slots=True)
class Handback(Message):
    """These jobs were not started here; place them elsewhere. They cost no attempt.

    The node is leaving (it takes no new work after sending it and still delivers the
    results of the jobs it is running), or, with ``recall``, it answers a
    :class:`Recall`: exactly one Handback per Recall, empty if it started them all.
    ``running``/``queued``: the node's load once they left (-1: not told, an older
    node), since its last report still counted them.
    """

    jids: tuple[str, ...]
    recall: bool = False
    running: int = -1
    queued: int = -1


@message(22)
@dataclasses.dataclass(frozen=True, slots=True)
class Recall(Message):
    """Client -> node: hand back those of these jobs (mine) not started yet, so they run
    on a node with a free slot instead of waiting here behind a slow one."""

    jids: tuple[str, ...] = ()


@message(23)
@dataclasses.dataclass(frozen=True, slots=True)
class Started(Message):
    """Node -> client: these jobs of a Submit with ``notify_start`` went to a worker.

    Sent before their Results, on the same connection; a job run again (its batch's
    worker died) is reported again."""

    jids: tuple[str, ...]


# ---- the dashboard's mesh-wide jobs view (tags 70-79): node <-> node ----
#
# A node's dashboard asks each live peer, over its connection to it, for the jobs that
# peer holds, and merges them with its own. JobsQuery with ``jid`` asks for that one
# job: the reply then holds its row (if the node has it) and its ``details``.

# A job as the jobs list shows it: jid, state, function name, label, client name,
# node name, submitted, started, finished (0.0: not yet), cpu_s, attempts, cores.
JobSummary = tuple[str, int, str, str, str, str, float, float, float, float, int, int]
# What the job page adds: arguments preview ("": not kept), max_runtime, stdout,
# stderr, the error (or None).
JobDetails = tuple[str, float, str, str, ErrorInfo | None]


@message(70)
@dataclasses.dataclass(frozen=True, slots=True)
class JobsQuery(Message):
    """Node -> node: the newest ``limit`` jobs after ``offset`` matching the filters (all
    empty: any), newest first; or, with ``jid``, that one job with its details."""

    req: int
    status: tuple[int, ...] = ()
    label: str = ""
    client: str = ""
    offset: int = 0
    limit: int = 50
    jid: str = ""


@message(71)
@dataclasses.dataclass(frozen=True, slots=True)
class JobsReply(Message):
    """Answer to :class:`JobsQuery`: one page of rows and how many jobs match in all."""

    req: int
    rows: tuple[JobSummary, ...]
    total: int
    details: tuple[JobDetails, ...] = ()


# ---- job environments (_env; tags 60-69): client <-> node ----
#
# An EnvQuery is answered by one EnvReport with the node's cached environments (after
# it dropped those ``rebuild`` names, so their next job builds them again).

# An environment: key, requirements, status ("ready", "building", "failed"), size in
# bytes, last use (epoch seconds), builds so far, Python tag, seconds the last build
# took, and for a failed build its error (ending with pip's last lines).
EnvRecord = tuple[str, tuple[str, ...], str, int, float, int, str, float, str]


@message(60)
@dataclasses.dataclass(frozen=True, slots=True)
class EnvQuery(Message):
    """Report your environments. ``rebuild``: key prefixes, requirements (or project
    names) or pushed file names; the failed or ready environments they name are removed
    first (not those building or in use), so their next job builds them again."""

    req: int
    rebuild: tuple[str, ...] = ()


@message(61)
@dataclasses.dataclass(frozen=True, slots=True)
class EnvReport(Message):
    """Answer to :class:`EnvQuery`. ``rebuilt``: (what was asked, key, outcome) with
    outcome "forgotten" (a failure), "removed" (a ready env), "building" or "in use"."""

    req: int
    envs: tuple[EnvRecord, ...]
    rebuilt: tuple[tuple[str, str, str], ...] = ()


# ---- node <-> worker (a local socketpair, same codec, no MAC) ----


@message(30)
@dataclasses.dataclass(frozen=True, slots=True)
class WorkerReady(Message):
    pid: int


@message(31)
@dataclasses.dataclass(frozen=True, slots=True)
class Run(Message):
    """Run these items with the function of ``fhash`` (its blob is sent when new to the worker)."""

    BLOBS = (("fblob", -1), ("items", 1))
    fhash: bytes
    fblob: bytes
    fname: str
    items: tuple[tuple[str, Payload], ...]


@message(32)
@dataclasses.dataclass(frozen=True, slots=True)
class Ran(Message):
    """Jobs a worker finished, and the node's shared blocks it closed (one path per
    mapping closed): the node may reuse those once their jobs are done."""

    BLOBS = (("items", 2),)

    items: tuple[RanItem, ...]
    released: tuple[str, ...] = ()
