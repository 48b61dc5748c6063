"""The client, written once, in asyncio. The sync :class:`Client` runs it on a loop thread.

All mutable state belongs to the event loop's thread, except what ``_prepare`` does
(pickling and id allocation), which is safe from any thread so a script's ``map``
pickles on its own thread while the loop keeps sending.
"""

from __future__ import annotations

import asyncio
import bisect
import hashlib
import itertools
import logging
import math
import os
import secrets
import statistics
import threading
import time
from array import array
from collections import deque
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple, TypeVar, overload

from mesh.client._files import AsyncFiles
from mesh.client._handle import Job, register_owner
from mesh.client._local import LocalMesh
from mesh.client._placement import NodeView, plan

from mesh._auth import load_secret
from mesh._connection import Connection, heartbeats, open_connection
from mesh._discovery import Advert, Browser, interfaces_from_env, parse_peers, peers_from_env
from mesh._netif import default_route_ipv4
from mesh._protocol import (
    DONE,
    ERROR,
    JOB_STATES,
    KILLED,
    PROCESSING,
    QUEUED,
    Ack,
    EnvQuery,
    EnvReport,
    ErrorInfo,
    Goodbye,
    Handback,
    JobRecord,
    Kill,
    Load,
    Message,
    Payload,
    Peers,
    Pong,
    Query,
    Records,
    Results,
    Submit,
    pushed_name,
)
from mesh._serialize import (
    dumps_function,
    dumps_payload,
    function_name,
    loads,
    pack_exception,
    payload_size,
    traceback_text,
    unpack_error,
)
from mesh.errors import (
    AuthenticationError,
    ConfigurationError,
    ConnectionClosed,
    MeshConnectionError,
    MeshError,
    MeshTimeout,
    NoNodesAvailable,
    SerializationError,
    UnknownJob,
)

__all__ = ["AsyncClient", "EnvInfo", "EnvRebuild", "JobInfo", "NodeInfo", "parse_peers"]

log = logging.getLogger("mesh.client")

UNKNOWN = -1  # a job id this client did not submit and has not yet heard of
PIPELINE_S = 0.05  # keep about this much work queued at each node
# Jobs at least this long get no queue at the node: a round trip (about a millisecond)
# costs them under 1 %, and a job queued behind another could leave a node idle at a
# map's tail while this one still has two to run.
LONG_JOB_S = 0.1
MAX_DEPTH = 4096  # jobs in flight per worker slot, at most
SUBMIT_BATCH = 4096  # jobs per Submit message, at most
# result/iresult/join look at this many jobs at a time (a _Job each), so waiting on a
# map of a million jobs does not give every one of them an object at once.
WAIT_WINDOW = 4096
# A map pickles its arguments at once up to this many bytes; the rest are read from its
# sequences and pickled as the nodes take them, so a map of a million items (or of large
# ones) keeps only a window of pickled arguments in memory.
EAGER_ARGS_BYTES = 4 << 20
BYTES_OVERHEAD = 33  # what a bytes object costs beside its contents (for that budget)
# Pickled arguments of unfinished jobs that the client holds (for retries) before it
# stops reading more from a map's sequences, as long as some are in flight.
HELD_ARGS_BYTES = 64 << 20
RECONNECT_S = 1.0
# _speculative=True: from this share of a map done, a job running longer than
# STRAGGLER x the median run time (and at least MIN_STRAGGLER_S) gets a copy.
SPECULATE_AFTER = 0.75
STRAGGLER = 1.5
MIN_STRAGGLER_S = 0.2
SPECULATE_EVERY_S = 0.25
ACK_DELAY_S = 0.02
OPTIONS = ("_cores", "_label", "_max_runtime", "_retries", "_speculative", "_env", "_files")

T = TypeVar("T")


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
            jid=r[0], status=JOB_STATES[r[1]], node=r[2], function=r[3], label=r[4],
            submitted=r[5], started=r[6] or None, finished=r[7] or None, cpu_s=r[8],
            stdout=r[9], stderr=r[10], error=r[11],
            attempts=r[12] if attempts is None else attempts, node_id=node_id,
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


class _Func:
    """One call or map: its function, its options and its jobs, ids ``tag-start`` to
    ``tag-(start + n - 1)``. A job has a :class:`_Job` only while it is live (sent, or
    looked at before); once finished it is kept compact: a flag, its node, when it came
    back and its result in one buffer, about 18 bytes beside the result. So a map of a
    million jobs costs the client its handles and its results, not a million objects."""

    __slots__ = ("ahead", "at", "blob", "came", "cores", "done", "env", "fhash", "files",
                 "finished", "label", "live", "max_runtime", "n", "name", "next", "node_ids",
                 "nodes", "pickled", "prefer", "push", "results", "retries", "sizes", "source",
                 "speculative", "start", "submitted")  # fmt: skip

    def __init__(self, fhash: bytes, blob: bytes, name: str) -> None:
        self.fhash, self.blob, self.name = fhash, blob, name
        # One call or map: its jobs share these options (per job they would cost a map
        # of a million jobs 32 MB).
        self.cores, self.label, self.max_runtime, self.retries = 1, "", 0.0, 3
        self.finished = 0  # jobs of this call or map that came back (for _speculative)
        self.speculative = False  # stragglers of this map get a copy elsewhere
        self.files: tuple[str, ...] = ()  # _files: mesh files its jobs read
        self.prefer: frozenset[str] | None = None  # link keys holding them, once asked
        self.env: tuple[str, ...] = ()  # _env: requirements, sent with every Submit
        self.push: tuple[tuple[str, str], ...] = ()  # (local path, store name) to push first
        self.start = self.n = 0  # the id number of job 0, and how many jobs
        self.submitted = 0.0  # when the call or map was made (epoch seconds)
        # when each job's result reached this client, in seconds after ``submitted``
        # (0: not yet; allocated with the first): mesh.info's answer once a node is lost
        self.came = array("f")
        self.next = 0  # the first job that has not left the queue yet: the rest follow it
        self.live: dict[int, _Job] = {}  # job index -> its _Job, while it has one
        # arguments pickled by _prepare, for the first jobs to leave the queue, in order;
        # then those read from ``source`` as jobs leave it
        self.ahead: deque[Payload] = deque()
        self.source: Iterator[tuple[Any, ...]] | None = None
        self.pickled = [0, 0]  # argument tuples pickled, their bytes: the size to expect
        # finished jobs, compact (allocated with the first): a flag and a node (an
        # index in node_ids) a job, and the results in one buffer at ``at`` for ``sizes``
        self.done = bytearray()
        self.nodes = bytearray()
        self.node_ids: list[str] = []
        self.results = bytearray()
        self.at = array("Q")
        self.sizes = array("I")

    def job(self, tag: str, k: int, jid: str | None = None) -> _Job:
        """Job ``k``: its live _Job, a view of it once finished and compacted, or a new
        live one (not sent yet: the queue takes that one when its turn comes). Any thread."""
        job = self.live.get(k)
        if job is not None:
            return job
        if self.done and self.done[k]:  # done before live lost it: see compact()
            view = _Job(jid or f"{tag}-{self.start + k}", self, b"", DONE)
            at = self.at[k]
            view.blob = bytes(self.results[at : at + self.sizes[k]])
            view.node = self.node_ids[self.nodes[k]]
            return view
        return self.live.setdefault(k, _Job(jid or f"{tag}-{self.start + k}", self, None))

    def is_final(self, k: int) -> bool:
        job = self.live.get(k)
        return job.final if job is not None else bool(self.done and self.done[k])

    def arrived(self, k: int, now: float) -> None:
        """Job ``k``'s outcome reached this client at ``now`` (epoch seconds)."""
        if not self.came:
            self.came = array("f", bytes(4 * self.n))
        self.came[k] = max(now - self.submitted, 1e-3)  # 0.0 means "not yet"

    def came_at(self, k: int) -> float | None:
        """When job ``k``'s outcome reached this client, if it did (float32: to about a
        millisecond an hour after the map)."""
        return self.submitted + self.came[k] if self.came and self.came[k] else None

    def compact(self, k: int, blob: Payload, node_id: str) -> None:
        """Job ``k`` is done with ``blob`` from node ``node_id``: keep that, drop its _Job."""
        if isinstance(blob, tuple):
            return  # big buffers beside a pickle: it keeps its _Job, they stay apart
        if node_id in self.node_ids:
            i = self.node_ids.index(node_id)
        elif len(self.node_ids) < 256 and len(blob) < 1 << 32:
            i = len(self.node_ids)
            self.node_ids.append(node_id)
        else:
            return  # it keeps its _Job
        if not self.done:
            self.done, self.nodes = bytearray(self.n), bytearray(self.n)
            self.at, self.sizes = array("Q", bytes(8 * self.n)), array("I", bytes(4 * self.n))
        self.at[k] = len(self.results)
        self.sizes[k] = len(blob)
        self.results += blob
        self.nodes[k] = i
        self.done[k] = 1  # before the _Job goes, so a lookup always finds one or the other
        self.live.pop(k, None)


class _Job:
    __slots__ = (
        "args",
        "attempts",
        "blob",
        "callbacks",
        "error",
        "func",
        "jid",
        "link",
        "node",
        "state",
        "tried",
        "twin",
    )  # fmt: skip

    def __init__(
        self, jid: str, func: _Func | None, args: Payload | None, state: int = QUEUED
    ) -> None:
        self.jid = jid
        self.func = func
        # pickled; None: not read yet (func.ahead, then func.source, as the job first
        # leaves the queue); b"" once the job is final
        self.args = args
        self.state = state
        self.link: _Link | None = None
        self.node = ""  # the id of the node that ran it last (names repeat, ids do not)
        self.blob: Payload = b""
        self.error: ErrorInfo | None = None
        # what to call once it is final: one callable (a wait over a million jobs
        # would spend 64 MB on one-item lists), a list when there are several
        self.callbacks: Callable[[_Job], None] | list[Callable[[_Job], None]] | None = None
        self.attempts = 0  # attempts that ended with their worker or node dying
        # (node name, link key) of those attempts: not placed there again while others
        # exist. A tuple, so the million jobs of a big map share the one empty tuple.
        self.tried: tuple[tuple[str, str], ...] = ()
        self.twin: _Link | None = None  # the node running a speculative copy

    # The options of the job's call or map; a job adopted from another process has none.
    @property
    def cores(self) -> int:
        return self.func.cores if self.func is not None else 1

    @property
    def label(self) -> str:
        return self.func.label if self.func is not None else ""

    @property
    def max_runtime(self) -> float:
        return self.func.max_runtime if self.func is not None else 0.0

    @property
    def retries(self) -> int:
        return self.func.retries if self.func is not None else 0

    @property
    def final(self) -> bool:
        return self.state >= DONE


class _Link:
    """One node: its connection, its last reported load, and our jobs in flight there."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.key = f"{host}:{port}"
        self.conn: Connection | None = None
        self.name = self.key
        self.node_id = ""
        self.workers = 0
        self.running = 0
        self.queued = 0
        self.avg_run_s = 0.0
        self.inflight: dict[str, _Job] = {}
        self.inflight_slots = 0
        self.sent_funcs: set[bytes] = set()
        self.error: BaseException | None = None
        self.loaded: asyncio.Event | None = None  # set by the node's first Load
        self.draining = False  # the node is leaving (Handback): no new work there

    @property
    def usable(self) -> bool:
        return self.conn is not None and not self.conn.closed and self.workers > 0

    def view(self, measured: bool = True) -> NodeView:
        """This node for placement. ``measured``: the work's run time is known, so the
        node's average may size a deep pipeline (or none, for long jobs); else a new
        function (perhaps slow) gets a small one, so one node cannot take a whole
        CPU-bound map."""
        if measured and self.avg_run_s >= LONG_JOB_S:
            depth = 1
        elif measured and self.avg_run_s > 0:
            depth = min(MAX_DEPTH, max(2, math.ceil(PIPELINE_S / self.avg_run_s)))
        else:
            depth = 2
        others = max(0, self.running + self.queued - len(self.inflight))
        room = self.workers * depth - self.inflight_slots
        return NodeView(self.key, self.workers, self.inflight_slots + others, room)


class _Heard(NamedTuple):
    """A job record, and the link to the node that sent it."""

    link: _Link
    record: JobRecord


# Error kinds of a job that ran on a node (others: it failed before it started, or in
# this client, or its worker died)
_RAN_KINDS = frozenset({"raised", "max-runtime", "memory", "unpicklable"})


class _Picker:
    """``iresult``'s bookkeeping, the same for the sync and the async client: which ids
    to watch next (WAIT_WINDOW to 2 x WAIT_WINDOW at a time, in order) and which job
    that came back to yield next (in order, or as they come). The clients only wait."""

    def __init__(self, ids: list[str], ordered: bool) -> None:
        self.ids, self.ordered = ids, ordered
        self.pos = 0  # ids[:pos] are watched
        self.outstanding = 0  # watched, not yielded yet
        self._watched: deque[_Job] = deque()  # ordered: the jobs to yield, in order
        self._ready: dict[str, int] = {}  # ordered: back, not yielded yet (by id)
        self._came: deque[_Job] = deque()  # in completion order: back, not yielded yet

    @property
    def more(self) -> bool:
        return self.pos < len(self.ids) or self.outstanding > 0

    def to_watch(self) -> list[str]:
        """The next window of ids to watch, or none while enough are watched."""
        if self.pos < len(self.ids) and self.outstanding < WAIT_WINDOW:
            return self.ids[self.pos : self.pos + WAIT_WINDOW]
        return []

    def watch(self, jobs: list[_Job]) -> None:
        self.pos += len(jobs)
        self.outstanding += len(jobs)
        if self.ordered:
            self._watched.extend(jobs)

    def arrived(self, job: _Job) -> None:
        """A watched job is final (its callback ran)."""
        if self.ordered:
            self._ready[job.jid] = self._ready.get(job.jid, 0) + 1
        else:
            self._came.append(job)

    def pick(self) -> _Job | None:
        """The job to yield now, or None: wait for one to arrive first."""
        if not self.ordered:
            job = self._came.popleft() if self._came else None
        elif self._watched and self._ready.get(jid := self._watched[0].jid):
            job = self._watched.popleft()
            if self._ready[jid] == 1:
                del self._ready[jid]
            else:
                self._ready[jid] -= 1
        else:
            job = None
        if job is not None:
            self.outstanding -= 1
        return job


def _same_work(a: _Func, b: _Func) -> bool:
    """Whether jobs of ``a`` and ``b`` can travel in one Submit and be placed as one:
    the same function (and constant kwargs), options and placement preference."""
    return a is b or (
        a.fhash == b.fhash and a.cores == b.cores and a.label == b.label
        and a.max_runtime == b.max_runtime and a.env == b.env and a.prefer == b.prefer
    )  # fmt: skip


def _group_length(pending: Iterable[_Job | _Func], head: _Job, limit: int) -> int:
    """How many single jobs from the head of ``pending`` (at most ``limit``: the room
    there is) can be placed as one group: jobs put back in the queue, and calls (one
    job each) of the same work, such as a loop of ``call(f, x)``. Bounded, so a long
    queue costs a pump no more than the nodes can take."""
    assert head.func is not None
    n = 0
    for entry in pending:
        if n >= limit:
            break
        if isinstance(entry, _Func):
            if entry.n - entry.next != 1 or not _same_work(entry, head.func):
                break
        elif entry.func is None or entry.tried or not _same_work(entry.func, head.func):
            break
        n += 1
    return n


# Error kinds a node reports for an attempt that cost the job nothing of its own doing:
# its worker died, or the node could not start one. Retried like a lost node.
_LOST_ATTEMPT = frozenset({"worker-died", "worker-start"})


def _call_back(job: _Job) -> None:
    """Call what waits for ``job``, now final, once (with the final lock held)."""
    callbacks, job.callbacks = job.callbacks, None
    if isinstance(callbacks, list):
        for cb in callbacks:
            cb(job)
    elif callbacks is not None:
        callbacks(job)


def _count(sequences: Sequence[Iterable[Any]]) -> int | None:
    """How many items ``zip(*sequences)`` gives, if every one is a Sequence (list, tuple,
    range, str: iterating one gives len() items), so a big map reads them as it goes;
    None for anything else (a generator, a DataFrame, whose len() is not what it yields)."""
    if all(isinstance(s, Sequence) for s in sequences):
        return min(len(s) for s in sequences)  # type: ignore[arg-type]
    return None


def _file_names(files: Any) -> tuple[str, ...]:
    """``_files=``: a name or names of mesh files the job reads."""
    if not files:
        return ()
    names = (files,) if isinstance(files, str) else tuple(files)
    if not all(isinstance(n, str) for n in names):
        raise TypeError(f"_files= takes mesh file names (str), not {files!r}")
    return names


def _split_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    opts = {k: kwargs.pop(k) for k in list(kwargs) if k.startswith("_")}
    for k in opts:
        if k not in OPTIONS:
            raise TypeError(f"unknown job option {k}= (job options are {', '.join(OPTIONS)})")
    return kwargs, opts


_DIST_SUFFIXES = (".whl", ".tar.gz", ".zip", ".tar.bz2")


def _env_requirements(env: Any) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
    """``_env=``: pip requirements, and local wheels or sdists to push through mesh.files
    (by hash: a ``wheel:<sha256>:<file name>`` requirement). Returns (requirements,
    (path, store name) of the files to push)."""
    if not env:
        return (), ()
    reqs = (env,) if isinstance(env, str) else tuple(env)
    if not all(isinstance(r, str) for r in reqs):
        raise TypeError(f"_env= takes requirement strings, not {env!r}")
    out, push = [], []
    for req in reqs:
        req = req.strip()
        local = req.endswith(_DIST_SUFFIXES) and (
            req.startswith((".", "/", "~")) or os.sep in req or os.path.exists(req)
        )
        if not local:
            out.append(req)
            continue
        path = os.path.expanduser(req)
        try:
            sha = _sha256_file(path)
        except OSError as exc:
            raise ConfigurationError(f"_env: cannot read {req}: {exc}") from exc
        filename = os.path.basename(path)
        out.append(f"wheel:{sha}:{filename}")
        push.append((path, pushed_name(sha, filename)))
    return tuple(out), tuple(push)


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


class AsyncClient:
    """A connection to a set of mesh nodes, with the whole job API as coroutines."""

    def __init__(
        self,
        peers: str | Iterable[str] | None = None,
        secret: str | bytes | None = None,
        *,
        name: str = "",
        connect_timeout_s: float = 5.0,
        no_nodes_timeout_s: float = 30.0,
        discovery_window_s: float = 1.5,
        heartbeat_s: float = 1.0,
        dead_after_s: float = 5.0,
    ) -> None:
        self._discovery_window_s = discovery_window_s
        self._browser: Browser | None = None
        self._connecting = False
        self._aliases: set[str] = set()  # addresses that turned out to be a known node
        # node id -> the name it last showed (for jobs whose node is gone, or has a new id)
        self._names: dict[str, str] = {}
        self._heartbeat_s = heartbeat_s
        self._dead_after_s = dead_after_s
        named = parse_peers(peers) if peers is not None else peers_from_env()
        # No peers anywhere: find this mesh's nodes over mDNS when starting.
        self._discover = not named
        self._links = {f"{h}:{p}": _Link(h, p) for h, p in named}
        self._secret = load_secret(secret)
        self._name = name or f"client-{os.getpid()}"
        self._tag = secrets.token_hex(3)
        register_owner(self._tag, self)  # so its Job handles can be awaited
        # every call and map, in id order, and the id number of each one's first job
        self._funcs: list[_Func] = []
        # Functions (by hash) some job of which came back: calls of one of them in a loop
        # are as "measured" as a map's later jobs, and get the node's deep pipeline.
        self._came_back: set[bytes] = set()
        self._starts: list[int] = []
        self._next_id = 1
        self._ids_lock = threading.Lock()
        self._connect_timeout_s = connect_timeout_s
        # With no node reachable this long, unfinished jobs fail instead of waiting forever.
        self._no_nodes_timeout_s = no_nodes_timeout_s
        self._no_nodes_timer: asyncio.TimerHandle | None = None
        self._adopted: dict[str, _Job] = {}  # jobs of other processes this one waits for
        # what waits to be placed: jobs (placed again), and maps (their next jobs, in order)
        self._pending: deque[_Job | _Func] = deque()
        self._held = 0  # bytes of pickled arguments of unfinished jobs (see HELD_ARGS_BYTES)
        # Guards job finalisation against waiters registered from other threads.
        self._final_lock = threading.Lock()
        self._acks: dict[_Link, list[str]] = {}
        self._ack_timer: asyncio.TimerHandle | None = None
        self._pump_scheduled = False
        self._requests: dict[int, tuple[asyncio.Future[list[_Heard]], list[_Heard], set[str]]] = {}
        self._req_ids = itertools.count(1)
        self._env_requests: dict[int, asyncio.Future[EnvReport]] = {}  # env_info
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        self._local_mesh: LocalMesh | None = None  # started by AsyncClient.local()
        self._started = False
        self.files = AsyncFiles(self._usable)  # mesh.files over these same links
        self._pushed: set[str] = set()  # _env files already in the store

    # ---- lifecycle ----

    @classmethod
    async def local(cls, nodes: int = 2, workers: int | None = None) -> AsyncClient:
        """Start an embedded mesh of ``nodes`` real node processes on 127.0.0.1 and connect:
        ``async with await AsyncClient.local() as c: ...``; closing stops the nodes."""
        mesh = LocalMesh(nodes, workers)
        addresses = await asyncio.to_thread(mesh.start)
        client = cls(addresses, mesh.secret)
        client._local_mesh = mesh
        try:
            return await client.start()
        except BaseException:
            await asyncio.to_thread(mesh.close)
            raise

    async def start(self) -> AsyncClient:
        """Connect to every peer; succeed if at least one answers. Once: again is a no-op."""
        if self._started:
            return self
        self._loop = asyncio.get_running_loop()
        if self._discover:
            interfaces = interfaces_from_env() or [a for a in [default_route_ipv4()] if a]
            # The browser stays on: nodes that appear later join (see _node_found).
            self._browser = Browser(self._secret, interfaces, self._node_found)
            await self._browser.start()
            await self._browser.settle(self._discovery_window_s)
            adverts = list(self._browser.found.values())
            if not adverts:
                await self._browser.close()
                raise NoNodesAvailable(
                    f"no lanmesh node of this mesh answered on {', '.join(interfaces) or 'no interface'}"
                    f" within {self._discovery_window_s:g} s (set MESH_PEERS to name nodes)"
                )
        links = list(self._links.values())
        self._connecting = True  # nodes learned from now on connect by themselves
        results = await asyncio.gather(*(self._connect(lk) for lk in links), return_exceptions=True)
        if not any(lk.usable for lk in links):
            errors = [r for r in results if isinstance(r, BaseException)]
            auth = [e for e in errors if isinstance(e, AuthenticationError)]
            if auth:
                raise auth[0]
            raise NoNodesAvailable(
                "no node reachable: "
                + "; ".join(str(e) for e in errors if isinstance(e, Exception))
            )
        for link in links:
            if not link.usable:
                log.warning("%s: %s", link.key, link.error)
                self._spawn(self._reconnect(link))
        self._spawn(self._heartbeat())
        self._started = True
        return self

    def _node_found(self, advert: Advert) -> None:
        """The browser heard of a node of this mesh."""
        self._learn(advert.host, advert.port)

    def _learn(self, host: str, port: int) -> None:
        """A node found by mDNS or named by a node's Peers; once connecting, it joins now."""
        key = f"{host}:{port}"
        if key in self._links or key in self._aliases or self._closed:
            return
        link = self._links[key] = _Link(host, port)
        if self._connecting:
            self._spawn(self._join(link))

    async def _join(self, link: _Link) -> None:
        try:
            await self._connect(link)
        except MeshError as exc:
            log.warning("node %s found but not reachable: %s", link.key, exc)
            self._spawn(self._reconnect(link))
            return
        assert link.conn is not None
        if any(lk is not link and lk.node_id == link.node_id for lk in self._links.values()):
            # Another address of a node we already use (a node names itself as it sees fit).
            del self._links[link.key]
            self._aliases.add(link.key)
            link.conn.close()
            return
        self._schedule_pump()

    async def _heartbeat(self) -> None:
        """Ping every node each heartbeat; one silent for dead_after_s is lost.

        mDNS records linger for many minutes, so liveness comes from here: a node
        that crashed, froze or lost its link is dropped and its jobs placed again.
        """
        async for on_time in heartbeats(self._heartbeat_s, lambda: not self._closed):
            for link in list(self._links.values()):
                if link.conn is not None:
                    link.conn.keepalive(self._dead_after_s, f"node {link.name} ({link.key})",
                                        judge=on_time)  # fmt: skip

    async def __aenter__(self) -> AsyncClient:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        self._closed = True
        if self._browser is not None:
            await self._browser.close()
        if self._ack_timer is not None:
            self._ack_timer.cancel()
        self._flush_acks()  # so nodes may expire what we hold after their TTL, not a day
        await self.files.close()
        for t in list(self._tasks):
            t.cancel()
        if self._tasks:
            # A connect that had just finished may swallow its cancellation: wait for
            # every task first, so the loop below sees every connection.
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for link in self._links.values():
            if link.conn is not None and not link.conn.closed:
                try:
                    link.conn.send(Goodbye("client closing"))
                except MeshError:
                    pass
                link.conn.close()
        if self._local_mesh is not None:
            await asyncio.to_thread(self._local_mesh.close)

    def _spawn(self, coro: Any) -> None:
        assert self._loop is not None
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self, link: _Link) -> None:
        # The node's first message (Load) may arrive before open_connection returns.
        link.loaded = loaded = asyncio.Event()
        link.workers = 0
        try:
            conn = await open_connection(
                link.host,
                link.port,
                self._secret,
                name=self._name,
                timeout_s=self._connect_timeout_s,
                on_message=lambda c, m: self._on_message(link, c, m),
                on_close=lambda c, r: self._on_close(link, c, r),
            )
        except MeshError as exc:
            link.error = exc
            raise
        link.conn = conn
        if not loaded.is_set():  # else its Load came first, with the name it shows now
            link.name = conn.peer_name or link.key
        link.node_id = conn.peer_id
        self._names[conn.peer_id] = link.name
        link.sent_funcs = set()
        link.error = None
        link.draining = False
        # link.workers is set by the node's first message (Load), which follows at once.
        try:
            await asyncio.wait_for(loaded.wait(), self._connect_timeout_s)
        except asyncio.TimeoutError:
            pass
        if conn.closed or link.workers == 0:
            link.error = conn.close_reason or MeshConnectionError(f"{link.key} sent no load report")
            raise link.error

    async def _reconnect(self, link: _Link) -> None:
        while not self._closed and not link.usable:
            await asyncio.sleep(RECONNECT_S)
            try:
                await self._connect(link)
            except MeshError:
                continue
            if self._no_nodes_timer is not None:
                self._no_nodes_timer.cancel()
                self._no_nodes_timer = None
            self._schedule_pump()

    # ---- messages from nodes ----

    def _on_message(self, link: _Link, conn: Connection, msg: Message) -> None:
        if isinstance(msg, Results):
            self._on_results(link, msg)
        elif isinstance(msg, Load):
            link.workers, link.running, link.queued = msg.workers, msg.running, msg.queued
            link.name = msg.name or link.name
            if conn.peer_id:
                self._names[conn.peer_id] = link.name
            if link.loaded is not None:
                link.loaded.set()
            self._schedule_pump()
        elif isinstance(msg, Records):
            entry = self._requests.get(msg.req)
            if entry is not None:
                fut, records, waiting = entry
                records.extend(_Heard(link, r) for r in msg.records)
                waiting.discard(link.key)
                if not waiting:
                    del self._requests[msg.req]
                    if not fut.done():
                        fut.set_result(records)
        elif isinstance(msg, Pong):
            link.running, link.queued = msg.running, msg.queued
        elif isinstance(msg, Handback):
            self._handed_back(link, msg.jids)
        elif isinstance(msg, Peers):
            for host, port in parse_peers(msg.addrs, strict=False):
                self._learn(host, port)
        elif isinstance(msg, EnvReport):
            env_fut = self._env_requests.pop(msg.req, None)
            if env_fut is not None and not env_fut.done():
                env_fut.set_result(msg)
        elif isinstance(msg, Goodbye):
            conn.close()
        else:
            self.files.handle(conn, msg)  # mesh.files replies and chunks

    def _on_results(self, link: _Link, msg: Results) -> None:
        link.running, link.queued = msg.running, msg.queued
        if msg.avg_run_s > 0:
            link.avg_run_s = msg.avg_run_s
        acked = []
        crashed: list[tuple[_Job, ErrorInfo]] = []
        now = time.time()
        with self._final_lock:
            inflight = link.inflight
            for jid, state, blob, error in msg.items:
                acked.append(jid)
                job = inflight.get(jid) or self._find(jid)
                if job is None or job.state >= DONE or job.args is None:
                    continue  # a late duplicate, e.g. from a node we had given up on
                if job.twin is None and job.link is link:  # the usual case: one copy, here
                    if inflight.pop(jid, None) is not None:
                        link.inflight_slots -= job.cores
                    job.link = None
                    others: list[_Link] = []
                else:
                    copies = [lk for lk in (job.link, job.twin) if lk is not None]
                    for lk in copies:
                        if lk.inflight.pop(jid, None) is not None:
                            lk.inflight_slots -= job.cores
                    job.link = job.twin = None
                    others = [lk for lk in copies if lk is not link]
                if error is not None and error[0] in _LOST_ATTEMPT:
                    if others and others[0].usable:  # a speculative copy still runs there
                        self._keep_running(job, others[0])
                        continue
                    crashed.append((job, error))  # retried (elsewhere if it can) or failed below
                    continue
                for lk in others:  # the first result wins: stop the other copy
                    if lk.conn is not None and not lk.conn.closed:
                        lk.conn.send(Kill((jid,)))
                job.state, job.blob, job.error, job.node = state, blob, error, link.node_id
                self._drop_args(job)  # final: it will not be sent again
                func = job.func
                if func is not None:
                    k = self._index(job)
                    func.finished += 1
                    if not func.came:
                        func.came = array("f", bytes(4 * func.n))
                    func.came[k] = now - func.submitted  # func.arrived(), inline: per job
                    self._came_back.add(func.fhash)
                if job.callbacks is not None:
                    _call_back(job)
                if state == DONE and not job.attempts and func is not None:
                    func.compact(k, blob, link.node_id)
        self._ack(link, acked)
        if crashed:
            requeue = [j for j, error in crashed if self._attempt_lost(j, link, error[2], error)]
            self._pending.extendleft(reversed(requeue))
        if self._pending:
            self._schedule_pump()  # once for every Results that arrived together

    @staticmethod
    def _keep_running(job: _Job, link: _Link) -> None:
        """One copy of a job is gone; the one on ``link`` carries on alone."""
        if job.jid not in link.inflight:
            link.inflight[job.jid] = job
            link.inflight_slots += job.cores
        job.link, job.twin, job.state = link, None, PROCESSING

    def _handed_back(self, link: _Link, jids: tuple[str, ...]) -> None:
        """The node is leaving and did not start these: place them elsewhere, no attempt lost."""
        link.draining = True
        back = []
        for jid in jids:
            job = link.inflight.pop(jid, None)
            if job is None:
                continue
            link.inflight_slots -= job.cores
            job.link = None
            if not job.final:
                job.state = QUEUED
                back.append(job)
        log.info("node %s is leaving; placing %d jobs elsewhere", link.name, len(back))
        self._pending.extendleft(reversed(back))
        self._schedule_pump()

    def _attempt_lost(
        self, job: _Job, link: _Link, why: str, error: ErrorInfo | None = None
    ) -> bool:
        """An attempt ended with its worker or node dying, or with a node that cannot start
        workers (``error``): True to place it again, else it has used its ``_retries`` and
        fails: with WorkerDied naming every attempt, or with the node's own error."""
        job.attempts += 1
        job.tried += ((link.name, link.key),)
        job.node = link.node_id
        if job.attempts <= job.retries:
            job.state = QUEUED
            return True
        if error is not None and error[0] == "worker-start":
            self._fail(job, error)  # names the node and why its workers do not start
            return False
        name = job.func.name if job.func is not None else "it"
        self._fail(job, ("worker-died", "WorkerDied",
                         f"job {job.jid} ({name}) failed {job.attempts} attempts, on nodes "
                         f"{', '.join(name for name, _ in job.tried)}; the last: {why}", "", ""))  # fmt: skip
        return False

    def _ack(self, link: _Link, jids: list[str]) -> None:
        """Acknowledge results in batches: one Ack per link every ACK_DELAY_S at most."""
        self._acks.setdefault(link, []).extend(jids)
        if self._ack_timer is None and self._loop is not None:
            self._ack_timer = self._loop.call_later(ACK_DELAY_S, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_timer = None
        acks, self._acks = self._acks, {}
        for link, jids in acks.items():
            if link.conn is not None and not link.conn.closed:
                link.conn.send(Ack(tuple(jids)))

    def _on_close(self, link: _Link, conn: Connection, reason: BaseException | None) -> None:
        if conn is not link.conn:
            return
        link.error = reason
        for req, (fut, records, waiting) in list(self._requests.items()):
            if link.key in waiting:
                waiting.discard(link.key)
                if not waiting:
                    del self._requests[req]
                    if not fut.done():
                        fut.set_result(records)
        lost = list(link.inflight.values())
        link.inflight.clear()
        link.inflight_slots = 0
        requeue = []
        why = f"node {link.name} ({link.key}) was lost while running it ({reason})"
        for job in lost:
            other = job.twin if job.link is link else job.link
            if job.twin is not None and other is not None and other.usable and not job.final:
                self._keep_running(job, other)  # its speculative copy carries on
                continue
            job.link = job.twin = None
            if not job.final and self._attempt_lost(job, link, why):
                requeue.append(job)
        self._pending.extendleft(reversed(requeue))
        if not self._closed:
            if lost:
                log.warning("lost %s (%s); re-placing %d jobs", link.name, reason, len(requeue))
            self._spawn(self._reconnect(link))
            self._schedule_pump()
            self._watch_for_no_nodes()

    def _watch_for_no_nodes(self) -> None:
        """Start the countdown to failing unfinished work if no node is usable now."""
        if self._no_nodes_timer is None and self._loop is not None and not self._usable():
            self._no_nodes_timer = self._loop.call_later(
                self._no_nodes_timeout_s, self._no_nodes_expired
            )

    def _no_nodes_expired(self) -> None:
        self._no_nodes_timer = None
        if self._closed or self._usable():
            return
        why = "; ".join(f"{lk.name} ({lk.key}): {lk.error}" for lk in self._links.values())
        error = ("no-nodes", "NoNodesAvailable",
                 f"no node reachable for {self._no_nodes_timeout_s:g} s ({why})", "", "")  # fmt: skip
        for entry in self._pending:
            if isinstance(entry, _Func):  # its jobs not sent yet fail too, unread
                self._fail_unsent(entry, error)
        for job in [e for e in self._pending if isinstance(e, _Job)] + [
            j for lk in self._links.values() for j in lk.inflight.values()
        ]:
            if not job.final:
                self._fail(job, error)
        self._pending.clear()
        for lk in self._links.values():
            lk.inflight.clear()
            lk.inflight_slots = 0

    def _fail(self, job: _Job, error: ErrorInfo, blob: bytes = b"") -> None:
        with self._final_lock:
            job.state, job.error = ERROR if error[0] != "killed" else KILLED, error
            job.blob = blob
            self._drop_args(job)
            if job.func is not None:
                job.func.arrived(self._index(job), time.time())
            if job.callbacks is not None:
                _call_back(job)

    # ---- placing work ----

    def _schedule_pump(self) -> None:
        if not self._pump_scheduled and self._loop is not None:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_scheduled = False
        if self._head() is None:
            return
        links = {k: lk for k, lk in self._links.items() if lk.usable and not lk.draining}
        if not links:
            return  # a reconnect will pump again
        pending = self._pending
        while (head := self._head()) is not None:
            entry = pending[0]
            candidates = links
            if head.tried:  # a retry goes alone, to a node it has not died on where one exists
                avoid = {key for _, key in head.tried}
                candidates = {k: lk for k, lk in links.items() if k not in avoid} or links
            measured = head.func is not None and head.func.fhash in self._came_back
            views = [lk.view(measured) for lk in candidates.values()]
            room = sum(max(v.room, 0) for v in views) // head.cores
            if head.func is not None and head.func.source is not None:  # reads its sequences
                left = HELD_ARGS_BYTES - self._held
                if left <= 0 and any(lk.inflight for lk in links.values()):
                    return  # enough arguments held: results coming back pump again
                count, size = head.func.pickled
                room = min(room, max(1, left * count // max(size, 1)))
            if isinstance(entry, _Func) and entry.n - entry.next > 1:
                group = min(max(1, room), entry.n - entry.next)
            else:
                group = 1 if head.tried else _group_length(pending, head, max(1, room))
            allocation = plan(group, views, head.cores, (head.func and head.func.prefer) or ())
            if not allocation:
                if head.cores > max(lk.workers for lk in links.values()):
                    biggest = max(lk.workers for lk in links.values())
                    for _ in range(group):
                        self._fail(self._take(self._pop()), ("rejected", "ValueError",
                                   f"job needs {head.cores} cores; the largest node has {biggest}",
                                   "", ""))  # fmt: skip
                    continue
                return
            for key, count in allocation:
                self._send(links[key], [self._take(self._pop()) for _ in range(count)])

    def _head(self) -> _Job | None:
        """The first job waiting to be placed. Drops what need not be: jobs final already
        (killed before they were sent; a map's skip their items) and maps all sent."""
        pending = self._pending
        while pending:
            entry = pending[0]
            if isinstance(entry, _Func):
                if entry.next >= entry.n:
                    pending.popleft()
                    continue
                job = entry.job(self._tag, entry.next)
                if job.final:
                    self._take(job)
                    entry.next += 1
                    continue
                return job
            if not entry.final:
                return entry
            pending.popleft()
        return None

    def _pop(self) -> _Job:
        """Take the first job waiting (see _head) off the queue."""
        entry = self._pending[0]
        if isinstance(entry, _Func):
            job = entry.job(self._tag, entry.next)
            entry.next += 1
            if entry.next >= entry.n:
                self._pending.popleft()
            return job
        entry = self._pending.popleft()
        assert isinstance(entry, _Job)
        return entry

    def _take(self, job: _Job) -> _Job:
        """A job leaves the queue: the first time, read and pickle its arguments from its
        map's sequences (jobs leave in order; one that cannot be read or pickled fails)."""
        if job.args is not None:
            return job
        func = job.func
        assert func is not None
        if func.ahead:  # pickled by _prepare (and counted as held since)
            job.args = func.ahead.popleft()
            if job.final:
                self._drop_args(job)
            return job
        assert func.source is not None
        if job.final:  # killed before it was sent: its item is skipped, unpickled
            next(func.source, None)
            return job
        try:
            args = next(func.source)
        except StopIteration:  # so will the jobs after it: the iterator stays exhausted
            exc: Exception = SerializationError(
                f"the sequences of map({func.name}, ...) ended before job {job.jid}: "
                "they were changed after map() was called"
            )
        except Exception as e:  # e.g. a dict changed size while it was read
            exc = SerializationError(
                f"cannot read the arguments of job {job.jid} from the sequences of "
                f"map({func.name}, ...): {type(e).__name__}: {e}"
            )
        else:
            try:
                job.args = dumps_payload(args, f"arguments of {func.name} (job {job.jid})")
                size = payload_size(job.args)
                self._held += size
                func.pickled[0] += 1
                func.pickled[1] += size
                return job
            except SerializationError as e:
                exc = e
        job.args = b""
        blob, info = pack_exception(exc)
        self._fail(job, info, blob)
        return job

    def _fail_unsent(self, func: _Func, error: ErrorInfo) -> None:
        """None of ``func``'s jobs not sent yet will be: each fails with ``error``, and
        the arguments pickled ahead for them are dropped (their sequences left unread)."""
        for k in range(func.next, func.n):
            self._fail(func.job(self._tag, k), error)
        func.next = func.n
        self._held -= sum(map(payload_size, func.ahead))
        func.ahead.clear()
        func.source = None

    def _drop_args(self, job: _Job) -> None:
        """``job`` is final: its pickled arguments go (None stays: its item is still to be
        skipped in the map's sequences, in order)."""
        if job.args:
            self._held -= payload_size(job.args)
            job.args = b""

    def _send(self, link: _Link, jobs: list[_Job], copy: bool = False) -> None:
        """Submit ``jobs`` to ``link``; ``copy``: a speculative second copy (job.twin)."""
        assert link.conn is not None
        jobs = [j for j in jobs if not j.final]
        if not jobs:
            return
        head = jobs[0]
        func = head.func
        assert func is not None
        for j in jobs:
            j.state = PROCESSING
            if not copy:
                j.link = link
            link.inflight[j.jid] = j
        link.inflight_slots += head.cores * len(jobs)
        for start in range(0, len(jobs), SUBMIT_BATCH):
            batch = jobs[start : start + SUBMIT_BATCH]
            fresh = func.fhash not in link.sent_funcs
            link.sent_funcs.add(func.fhash)
            link.conn.send(
                Submit(func.fhash, func.blob if fresh else b"", func.name,
                       tuple((j.jid, j.args) for j in batch),  # type: ignore[misc]  # _take read them
                       head.cores, head.label,
                       head.max_runtime, retry=any(j.attempts for j in batch), env=func.env)
            )  # fmt: skip

    # ---- thread-safe preparation ----

    def _prepare(
        self,
        fn: Callable[..., Any],
        arg_tuples: Iterable[tuple[Any, ...]],
        kwargs: dict[str, Any],
        count: int | None = None,
    ) -> tuple[_Func, list[Job[Any]]]:
        """Pickle the function once and allocate job ids (any thread); return the call or
        map and its job handles. Arguments are pickled here up to EAGER_ARGS_BYTES; the
        rest as the jobs leave the queue, read from ``arg_tuples`` then (``count``: how
        many it yields; None: read it all now)."""
        kwargs, opts = _split_options(dict(kwargs))
        cores = int(opts.get("_cores", 1))
        if cores < 1:
            raise ValueError("_cores must be at least 1")
        fhash, blob = dumps_function(fn, kwargs)
        func = _Func(fhash, blob, function_name(fn))
        func.speculative = bool(opts.get("_speculative", False))
        func.files = _file_names(opts.get("_files"))
        func.env, func.push = _env_requirements(opts.get("_env"))
        func.cores = cores
        func.label = str(opts.get("_label", ""))
        func.max_runtime = float(opts.get("_max_runtime", 0.0) or 0.0)
        func.retries = int(opts.get("_retries", 3))
        if count is None:
            arg_tuples = list(arg_tuples)  # a generator: its length gives the job ids
            count = len(arg_tuples)
        source = iter(arg_tuples)
        ahead, cost, pickled = func.ahead, 0, 0
        while len(ahead) < count and cost < EAGER_ARGS_BYTES:
            try:
                args = dumps_payload(next(source), f"arguments of {func.name}")
            except StopIteration:
                count = len(ahead)  # a sequence shorter than its len() said
                break
            ahead.append(args)
            size = payload_size(args)
            pickled += size
            cost += size + BYTES_OVERHEAD
        func.pickled = [len(ahead), pickled]
        if len(ahead) < count:
            func.source = source
        func.submitted = time.time()
        with self._ids_lock:  # a map's ids are consecutive, whichever threads submit
            func.start, func.n = self._next_id, count
            self._next_id += count
            self._funcs.append(func)  # before its start: a lookup may run meanwhile
            self._starts.append(func.start)
        tag = self._tag
        return func, [Job(f"{tag}-{i}") for i in range(func.start, func.start + count)]

    def _index(self, job: _Job) -> int:
        """``job``'s place in its call or map."""
        assert job.func is not None
        return int(job.jid.rpartition("-")[2]) - job.func.start

    def _locate(self, jid: str) -> tuple[_Func, int] | None:
        """The call or map of one of this client's job ids, and the job's place in it."""
        tag, _, num = jid.rpartition("-")
        if tag != self._tag or not (num.isascii() and num.isdigit()):
            return None
        n = int(num)
        i = bisect.bisect_right(self._starts, n) - 1
        if i < 0:
            return None
        func = self._funcs[i]
        return (func, n - func.start) if n - func.start < func.n else None

    def _find(self, jid: str) -> _Job | None:
        """The job ``jid`` (this client's, or adopted), or None. Any thread."""
        found = self._locate(jid)
        if found is None:
            return self._adopted.get(jid)
        return found[0].job(self._tag, found[1], jid)

    def _is_final(self, jid: str) -> bool:
        """Whether job ``jid`` is final, without making it an object. Any thread."""
        found = self._locate(jid)
        if found is None:
            job = self._adopted.get(jid)
            return job is not None and job.final
        return found[0].is_final(found[1])

    def _enqueue(self, func: _Func, counted: bool = False) -> None:
        """Loop thread: queue a prepared call or map and place what can be placed now."""
        self._enqueue_many([func], counted)

    def _enqueue_many(self, funcs: Iterable[_Func], counted: bool = False) -> None:
        """Loop thread: queue prepared calls and maps (in order), then place what can be
        placed now: calls made in a burst go out together."""
        for func in funcs:
            if not counted:  # the arguments _prepare pickled are held from now on
                self._held += func.pickled[1]
            if func.push:
                self._spawn(self._enqueue_after_push(func))  # first: the _env's local files
            elif func.files and func.prefer is None:
                self._spawn(self._enqueue_near_files(func))  # first: which nodes hold them
            else:
                self._pending.append(func)
                if func.speculative:
                    self._spawn(self._speculate(func))
        self._pump()
        if self._pending:
            self._watch_for_no_nodes()

    async def _speculate(self, func: _Func) -> None:
        """``_speculative=True``: once most of a map is done, a job running much longer than
        the median gets a copy on a node with a free worker; the first result wins and the
        other copy is killed. Run times come from the nodes' records (machine clocks are
        assumed to agree within a fraction of the median, as NTP keeps them)."""
        median = 0.0
        while not self._closed:
            await asyncio.sleep(SPECULATE_EVERY_S)
            left = [j for j in list(func.live.values()) if not j.final]
            if not left and func.next >= func.n:
                return
            if func.finished < SPECULATE_AFTER * func.n:
                continue
            if not median:
                median = await self._median_run_s(self._some_done(func, 50))
                continue
            by_link: dict[_Link, list[str]] = {}
            for j in left:
                if j.state == PROCESSING and j.link is not None and j.twin is None:
                    by_link.setdefault(j.link, []).append(j.jid)
            limit = max(STRAGGLER * median, MIN_STRAGGLER_S)
            for link, jids in by_link.items():
                if not link.usable:
                    continue
                now = time.time()
                for _, r in await self._query([link], tuple(jids)):
                    job = self._find(r[0])
                    if (job is None or job.final or job.twin is not None or job.link is not link
                            or r[1] != PROCESSING or not r[6] or now - r[6] < limit):  # fmt: skip
                        continue
                    spare = self._spare_link(job, exclude=link)
                    if spare is not None:
                        log.info("job %s runs %.1f s on %s (median %.2f s): a copy goes to %s",
                                 job.jid, now - r[6], link.name, median, spare.name)  # fmt: skip
                        job.twin = spare
                        self._send(spare, [job], copy=True)

    def _some_done(self, func: _Func, n: int) -> list[_Job]:
        """Up to ``n`` jobs of ``func`` that are done (compact ones as views)."""
        done = [j for j in list(func.live.values()) if j.state == DONE][:n]
        k = -1
        while len(done) < n and func.done and (k := func.done.find(1, k + 1)) >= 0:
            done.append(func.job(self._tag, k))
        return done

    async def _median_run_s(self, done: list[_Job]) -> float:
        by_link: dict[_Link, list[str]] = {}
        for j in done:
            link = self._link_of(j.node)
            if link is not None and link.usable:
                by_link.setdefault(link, []).append(j.jid)
        times = []
        for link, jids in by_link.items():
            times += [
                r[7] - r[6] for _, r in await self._query([link], tuple(jids)) if r[7] and r[6]
            ]
        return statistics.median(times) if times else 0.0

    def _spare_link(self, job: _Job, exclude: _Link) -> _Link | None:
        """The least-loaded node other than ``exclude`` with a free worker for ``job``."""
        best, best_load = None, 0.0
        for lk in self._links.values():
            if lk is exclude or not lk.usable or lk.draining:
                continue
            v = lk.view()
            if v.load + job.cores <= v.workers and (best is None or v.load / v.workers < best_load):
                best, best_load = lk, v.load / v.workers
        return best

    async def _enqueue_after_push(self, func: _Func) -> None:
        """Push the local wheels of an ``_env`` through mesh.files (once per client and
        hash; the nodes then fetch them by hash), then queue the jobs."""
        for path, name in func.push:
            if name in self._pushed:
                continue
            try:
                if not await self.files.exists(name):
                    await self.files.put(path, name)
            except MeshError as exc:
                msg = f"_env: could not push {path} through mesh.files: {exc}"
                self._fail_unsent(func, ("env-build", "EnvBuildFailed", msg, "", ""))
                return
            self._pushed.add(name)
        func.push = ()
        self._enqueue(func, counted=True)

    async def _enqueue_near_files(self, func: _Func) -> None:
        """Learn which nodes hold the jobs' ``_files`` (a placement tie-breaker), then queue."""
        try:
            func.prefer = await self.files.holder_keys(func.files, self._usable())
        except MeshError:
            func.prefer = frozenset()  # no preference: the job still runs
        self._enqueue(func, counted=True)

    def _add_callback(self, jobs: Sequence[_Job], cb: Callable[[_Job], None]) -> None:
        """Any thread: call ``cb(job)`` once per job when it is final (at once if it is).

        ``cb`` runs on the loop thread (or on the caller's, for jobs already final);
        it must be quick and thread-safe.
        """
        with self._final_lock:
            for job in jobs:
                if job.final:
                    cb(job)
                elif job.callbacks is None:
                    job.callbacks = cb
                elif isinstance(job.callbacks, list):
                    job.callbacks.append(cb)
                else:
                    job.callbacks = [job.callbacks, cb]

    def _lookup(self, jids: Iterable[str]) -> tuple[list[_Job], list[_Job]]:
        """Loop thread: the jobs for ``jids``, adopting ids this client never submitted."""
        jobs, adopted = [], []
        for jid in jids:
            if not isinstance(jid, str):
                raise TypeError(f"job ids are strings, got {jid!r}")
            job = self._find(jid)
            if job is None:
                job = self._adopted[jid] = _Job(jid, None, b"", state=UNKNOWN)
                adopted.append(job)
            jobs.append(job)
        return jobs, adopted

    async def _adopt(self, adopted: list[_Job]) -> None:
        """Ask every node about ids from another process; watch those it knows."""
        if not adopted:
            return
        jids = tuple(j.jid for j in adopted)
        known: dict[str, _Heard] = {}
        for heard in await self._query(list(self._usable()), jids, watch=True):
            if heard.record[0] not in known or heard.record[1] >= DONE:  # a finished copy first
                known[heard.record[0]] = heard
        missing = [job.jid for job in adopted if job.jid not in known]
        if missing:
            for jid in missing:
                self._adopted.pop(jid, None)
            raise UnknownJob(
                f"no reachable node knows job {', '.join(missing[:5])}"
                + (f" (and {len(missing) - 5} more)" if len(missing) > 5 else "")
            )
        for job in adopted:
            link, r = known[job.jid]
            job.node = link.node_id
            if job.state == UNKNOWN:
                job.state = min(r[1], PROCESSING)  # a finished result is on its way (watch)

    def _usable(self) -> list[_Link]:
        return [lk for lk in self._links.values() if lk.usable]

    async def _query(
        self, links: list[_Link], jids: tuple[str, ...], watch: bool = False
    ) -> list[_Heard]:
        """The records ``links`` hold of ``jids``, each with the link it came from."""
        if not links or not jids:
            return []
        assert self._loop is not None
        req = next(self._req_ids)
        fut: asyncio.Future[list[_Heard]] = self._loop.create_future()
        self._requests[req] = (fut, [], {lk.key for lk in links})
        for lk in links:
            assert lk.conn is not None
            lk.conn.send(Query(req, jids, watch))
        try:
            return await asyncio.wait_for(fut, self._connect_timeout_s)
        except asyncio.TimeoutError:
            self._requests.pop(req, None)
            raise MeshConnectionError(
                f"nodes did not answer a query about {len(jids)} jobs"
            ) from None

    # ---- reading results (any thread) ----

    def _value(self, job: _Job) -> Any:
        if job.state == DONE:
            return loads(job.blob)
        assert job.error is not None
        raise unpack_error(job.jid, self._node_name(job.node) or "?", job.blob, job.error)

    # ---- the API ----

    async def call(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Job[T]:
        """Run ``fn(*args, **kwargs)`` on the mesh; return its job id (awaitable) at once."""
        func, (jid,) = self._prepare(fn, [args], kwargs)
        self._enqueue(func)
        return jid

    async def map(
        self, fn: Callable[..., T], /, *sequences: Iterable[Any], **kwargs: Any
    ) -> list[Job[T]]:
        """Like builtin ``map``: one job per item; return the job ids (awaitable) at once."""
        if not sequences:
            raise TypeError("map() needs at least one sequence")
        func, jids = self._prepare(fn, zip(*sequences, strict=False), kwargs, _count(sequences))
        self._enqueue(func)
        return jids

    async def _jobs_of(self, ids: Sequence[str]) -> list[_Job]:
        jobs, adopted = self._lookup(ids)
        await self._adopt(adopted)
        return jobs

    async def _each_window(
        self, ids: list[str], timeout: float | None, then: Callable[[list[_Job]], None]
    ) -> None:
        """Wait for the jobs ``ids``, WAIT_WINDOW at a time, calling ``then`` with each
        window once all of it is final; MeshTimeout when ``timeout`` runs out first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        assert self._loop is not None
        for start in range(0, len(ids), WAIT_WINDOW):
            jobs = await self._jobs_of(ids[start : start + WAIT_WINDOW])
            pending = [j for j in jobs if not j.final]
            if pending:
                fut: asyncio.Future[None] = self._loop.create_future()
                left = [len(pending)]

                def done(_: _Job, fut: asyncio.Future[None] = fut, left: list[int] = left) -> None:
                    left[0] -= 1
                    if left[0] == 0 and not fut.done():
                        fut.set_result(None)

                self._add_callback(pending, done)
                wait_s = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    await asyncio.wait_for(asyncio.shield(fut), wait_s)
                except asyncio.TimeoutError:
                    n = sum(1 for j in pending if not j.final) + len(
                        self._unfinished(ids[start + WAIT_WINDOW :])
                    )
                    raise MeshTimeout(
                        f"{n} of {len(ids)} jobs not finished after {timeout} s"
                    ) from None
            then(jobs)

    def _unfinished(self, ids: Sequence[str]) -> list[str]:
        """Those of ``ids`` not final yet (without making them objects). Any thread."""
        return [jid for jid in ids if not self._is_final(jid)]

    @overload  # a Job is also a Sequence[str]: the first match wins
    async def result(  # type: ignore[overload-overlap]
        self, jids: Job[T], timeout: float | None = None, *, kill_on_cancel: bool = False
    ) -> T: ...
    @overload
    async def result(
        self, jids: str, timeout: float | None = None, *, kill_on_cancel: bool = False
    ) -> Any: ...
    @overload
    async def result(
        self, jids: Sequence[Job[T]], timeout: float | None = None, *, kill_on_cancel: bool = False
    ) -> list[T]: ...
    @overload
    async def result(
        self, jids: Sequence[str], timeout: float | None = None, *, kill_on_cancel: bool = False
    ) -> list[Any]: ...

    async def result(self, jids: str | Sequence[str], timeout: float | None = None, *,
                     kill_on_cancel: bool = False) -> Any:  # fmt: skip
        """The result of one job, or the list of results of many; raises a job's exception.

        Cancelling the awaiting task stops the wait and leaves the jobs running, unless
        ``kill_on_cancel``: then the jobs not finished yet are killed.
        """
        values: list[Any] = []
        try:
            await self._each_window(
                [jids] if isinstance(jids, str) else list(jids), timeout,
                lambda jobs: values.extend(self._value(j) for j in jobs),
            )  # fmt: skip
        except asyncio.CancelledError:
            if kill_on_cancel and not self._closed:
                self._spawn(self.kill(jids))  # owned by the client: close() awaits it
            raise
        return values[0] if isinstance(jids, str) else values

    def _await_job(self, job: str) -> Generator[Any, None, Any]:
        """``await job`` (see :class:`Job`): its result, in this client's loop."""
        if self._closed:
            raise ConnectionClosed(f"cannot wait for job {job}: its client is closed")
        return self.result(job).__await__()

    async def join(self, jids: str | Sequence[str], timeout: float | None = None,
                   ignore_errors: bool = False) -> None:  # fmt: skip
        """Wait for jobs to finish; raise the first failed job's exception unless ignored."""

        def check(jobs: list[_Job]) -> None:
            for j in jobs:
                if j.state != DONE and not ignore_errors:
                    self._value(j)

        await self._each_window([jids] if isinstance(jids, str) else list(jids), timeout, check)

    @overload
    def iresult(
        self, jids: Sequence[Job[T]], timeout: float | None = None, ordered: bool = True
    ) -> AsyncIterator[T]: ...
    @overload
    def iresult(
        self, jids: Sequence[str], timeout: float | None = None, ordered: bool = True
    ) -> AsyncIterator[Any]: ...

    async def iresult(self, jids: Sequence[str], timeout: float | None = None,
                      ordered: bool = True) -> AsyncIterator[Any]:  # fmt: skip
        """Yield results as jobs finish: in order, or in completion order (``async for``).

        Jobs are watched WAIT_WINDOW to 2 x WAIT_WINDOW at a time, in order: for more
        jobs than that, "completion order" is that order within the jobs watched."""
        picker = _Picker([jids] if isinstance(jids, str) else list(jids), ordered)
        queue: asyncio.Queue[_Job] = asyncio.Queue()
        deadline = None if timeout is None else time.monotonic() + timeout
        while picker.more:
            if window := picker.to_watch():
                jobs = await self._jobs_of(window)
                picker.watch(jobs)
                self._add_callback(jobs, queue.put_nowait)
            while (job := picker.pick()) is None:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                try:
                    picker.arrived(await asyncio.wait_for(queue.get(), left))
                except asyncio.TimeoutError:
                    raise MeshTimeout(f"iresult: jobs not finished after {timeout} s") from None
            yield self._value(job)

    async def status(self, jids: str | Sequence[str]) -> str | list[str]:
        """'queued', 'processing', 'done', 'error' or 'killed' (one, or a list). A job
        whose node is gone answers with what this client knows of it."""
        jobs, adopted = self._lookup([jids] if isinstance(jids, str) else jids)
        await self._adopt(adopted)
        by_link: dict[_Link, list[str]] = {}
        for j in jobs:
            if j.state == PROCESSING:  # the node knows better: queued there, or done already
                link = j.link or self._link_of(j.node)
                if link is not None and link.usable:
                    by_link.setdefault(link, []).append(j.jid)
        heard = await self._records(by_link)
        names = []
        for j in jobs:
            state = j.state
            if not j.final and j.jid in heard and state == PROCESSING:
                state = heard[j.jid].record[1]
            names.append(JOB_STATES[state])
        return names[0] if isinstance(jids, str) else names

    async def _records(self, by_link: dict[_Link, list[str]]) -> dict[str, _Heard]:
        """Ask each link about its jobs, all at once: the records heard, by job id. A
        node that is lost or does not answer meanwhile leaves its jobs out."""
        asked = list(by_link.items())
        answers = await asyncio.gather(
            *(self._query([link], tuple(ids)) for link, ids in asked), return_exceptions=True
        )
        heard: dict[str, _Heard] = {}
        for (link, _), answer in zip(asked, answers, strict=True):
            if isinstance(answer, MeshError):
                log.info("node %s (%s) did not answer about jobs: %s", link.name, link.key, answer)
            elif isinstance(answer, BaseException):
                raise answer
            else:
                heard.update((h.record[0], h) for h in answer)
        return heard

    def _link_of(self, node_id: str) -> _Link | None:
        """The link to node ``node_id`` (reachable or not), if this client has one."""
        return next((lk for lk in self._links.values() if lk.node_id == node_id and node_id), None)

    def _node_name(self, node_id: str) -> str:
        """The name node ``node_id`` last showed this client (its id if it never did)."""
        return self._names.get(node_id, node_id)

    async def kill(self, jids: str | Sequence[str], timeout: float = 10.0) -> None:
        """Stop queued or running jobs (a running job's worker is terminated); wait until they stop."""
        jobs, adopted = self._lookup([jids] if isinstance(jids, str) else jids)
        await self._adopt(adopted)
        by_link: dict[str, list[str]] = {}
        for j in jobs:
            if j.final:
                continue
            if j.link is None and j.state == QUEUED:
                self._fail(
                    j, ("killed", "JobKilled", "killed on request before it started", "", "")
                )
            elif j.link is not None:
                by_link.setdefault(j.link.key, []).append(j.jid)
            else:  # adopted: ask everyone
                for lk in self._usable():
                    by_link.setdefault(lk.key, []).append(j.jid)
        for key, ids in by_link.items():
            conn = self._links[key].conn
            if conn is not None and not conn.closed:
                conn.send(Kill(tuple(ids)))
        try:
            await self._each_window([j.jid for j in jobs], timeout, lambda _: None)
        except MeshTimeout:
            pass

    async def info(self, jids: str | Sequence[str]) -> JobInfo | list[JobInfo]:
        """Node, times, CPU seconds, captured stdout/stderr and error text of jobs. A job
        whose node is gone gets what this client knows, with ``record_lost`` set."""
        jobs, adopted = self._lookup([jids] if isinstance(jids, str) else jids)
        await self._adopt(adopted)
        by_link: dict[_Link, list[str]] = {}
        for j in jobs:
            link = j.link or self._link_of(j.node)
            if link is not None and link.usable:
                by_link.setdefault(link, []).append(j.jid)
        heard = await self._records(by_link)
        out = [self._info(j, heard.get(j.jid)) for j in jobs]
        return out[0] if isinstance(jids, str) else out

    def _info(self, j: _Job, heard: _Heard | None) -> JobInfo:
        """``mesh.info`` of one job: its node's record, or what this client knows."""
        kind = j.error[0] if j.final and j.error is not None else ""
        if heard is not None:
            link, r = heard
            died_last = kind == "worker-died" or (r[1] == ERROR and r[11].startswith("WorkerDied"))
            attempts = runs(max(j.attempts, r[12]), bool(r[6]), died_last)
            info = JobInfo.from_record(r, link.node_id, attempts)
            if j.final and j.error is not None and len(j.error) > 5:  # rendered with our source
                info = replace(info, error=traceback_text(j.error))
            return info
        started = j.state == DONE or kind in _RAN_KINDS
        func, k = j.func, 0
        if func is not None:
            k = self._index(j)
        err = "" if j.error is None else traceback_text(j.error) or f"{j.error[1]}: {j.error[2]}"
        return JobInfo(
            j.jid, JOB_STATES[max(j.state, QUEUED)], self._node_name(j.node) if j.node else "",
            func.name if func is not None else "", j.label,
            func.submitted if func is not None else 0.0, None,
            func.came_at(k) if func is not None and j.final else None, 0.0, "", "", err,
            runs(j.attempts, started, kind == "worker-died"), node_id=j.node,
            # a node ran it (or holds it) but no reachable node has its record now
            record_lost=bool(j.node) and j.state != QUEUED,
        )  # fmt: skip

    def nodes(self) -> list[NodeInfo]:
        """The nodes this client knows, by name."""
        out = [
            NodeInfo(lk.name, lk.node_id, lk.key, lk.workers, lk.running, lk.queued, lk.usable)
            for lk in self._links.values()
        ]
        return sorted(out, key=lambda n: (n.name, n.node_id, n.address))

    async def env_info(self) -> list[EnvInfo]:
        """The job environments (``_env``) of every reachable node: requirements, status,
        size, last use, builds, and for a failed build pip's last lines."""
        infos, _ = await self._env_query(())
        return infos

    async def rebuild_env(self, *what: str) -> list[EnvRebuild]:
        """Drop the environments ``what`` names (key prefixes, requirements, project names,
        pushed or local wheel files) on every node, so their next job builds them again;
        a failed build is forgotten. Those building or in use are left alone."""
        reqs, _ = _env_requirements(list(what))  # a local wheel: by hash, as _env sends it
        _, done = await self._env_query(tuple(reqs))
        return done

    async def _env_query(self, rebuild: tuple[str, ...]) -> tuple[list[EnvInfo], list[EnvRebuild]]:
        links = self._usable()
        if not links:
            raise NoNodesAvailable("no node is reachable to ask about its environments")
        assert self._loop is not None
        asked: dict[int, tuple[_Link, asyncio.Future[EnvReport]]] = {}
        for lk in links:
            assert lk.conn is not None
            req = next(self._req_ids)
            fut: asyncio.Future[EnvReport] = self._loop.create_future()
            self._env_requests[req] = fut
            asked[req] = (lk, fut)
            lk.conn.send(EnvQuery(req, rebuild))
        try:
            await asyncio.wait([f for _, f in asked.values()], timeout=self._connect_timeout_s)
        finally:
            for req in asked:
                self._env_requests.pop(req, None)
        missing = [lk.name for lk, f in asked.values() if not f.done()]
        if missing:  # a node lost meanwhile, or too busy to answer
            raise MeshConnectionError(f"{', '.join(missing)} did not answer about environments")
        reports = [(lk.name, f.result()) for lk, f in asked.values()]
        infos = [EnvInfo(node, *r) for node, report in reports for r in report.envs]
        infos.sort(key=lambda e: (e.node, -e.last_used, e.key))
        done = [EnvRebuild(node, *d) for node, report in reports for d in report.rebuilt]
        return infos, done

    @property
    def closed(self) -> bool:
        return self._closed
