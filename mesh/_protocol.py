"""Wire messages: frozen, typed classes in a tagged union, encoded as msgpack arrays.

A message travels as ``[tag, field1, field2, ...]`` in declaration order. New fields
are only ever appended, with defaults, so a peer one version apart still talks: a
decoder fills fields it does not receive from their defaults and drops fields it does
not know. Decoding validates every field's type, so a peer's bytes either become a
well-typed message or raise :class:`RemoteProtocolError`; nothing else escapes.
This module does no I/O.
"""

import contextlib
import dataclasses
import mmap
import os
import struct
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar, Union

import msgpack  # type: ignore[import-untyped]

from mesh.errors import ErrorKind, LocalProtocolError, RemoteProtocolError

__all__ = [
    "DONE",
    "ERROR",
    "JOB_STATES",
    "KILLED",
    "PROCESSING",
    "PROTOCOL_VERSION",
    "Payload",
    "QUEUED",
    "Ack",
    "Challenge",
    "ConsoleQuery",
    "ConsoleReply",
    "ConsoleSeries",
    "ConsoleStats",
    "EnvQuery",
    "EnvRecord",
    "EnvReport",
    "ErrorInfo",
    "FileAck",
    "FileCatalog",
    "FileChunk",
    "FileDigest",
    "FileDelete",
    "FileEnd",
    "FileEntry",
    "FileGet",
    "FileList",
    "FilePut",
    "FileReply",
    "GroupSummary",
    "Holders",
    "Goodbye",
    "GossipAck",
    "GossipNews",
    "GossipPing",
    "GossipPingReq",
    "GossipSync",
    "Ping",
    "Pong",
    "Peers",
    "Handback",
    "Hello",
    "JobRecord",
    "JobSummary",
    "JobsQuery",
    "JobsReply",
    "JobOutput",
    "Kill",
    "KillReason",
    "Load",
    "MapKilled",
    "MemberUpdate",
    "Members",
    "Message",
    "Proof",
    "Query",
    "Ran",
    "RanItem",
    "Recall",
    "Records",
    "ResultItem",
    "Results",
    "Run",
    "Submit",
    "SharedOpener",
    "Started",
    "WorkerReady",
    "decode",
    "encode",
    "open_shared_file",
    "shared_path",
]

# 2: frames carry a GMAC (AES-256-GCM), not a truncated HMAC-SHA256
# 3: arguments and results may be a Payload tuple (pickle + out-of-band buffers)
# 4: the client proves first; session frames are encrypted
# 5: a job's error may carry its traceback as data (ErrorInfo's sixth field)
# 6: Recall, answered by a Handback with ``recall`` set (a client waits for that answer)
# 7: the mesh console's messages (tags 90-94): a version 6 node cannot decode them and
#    would drop the link a dashboard asks it over
# 8: nodes push Members (gossip's view of the mesh, tag 85) to clients and exchange
#    FileDigests (tag 86): a version 7 peer would drop the connection on either tag
# 9: a node tells its clients a map was killed from the console (MapKilled, tag 95)
PROTOCOL_VERSION = 9

# Job states travel as small ints; JOB_STATES names them for users.
QUEUED, PROCESSING, DONE, ERROR, KILLED = range(5)
JOB_STATES = ("queued", "processing", "done", "error", "killed")

# Pickled arguments or a result: the pickle, or (pickle, buffer, ...) whose buffers the
# pickle reads out of band (protocol 5); the node passes either on untouched.
Payload = bytes | tuple[bytes, ...]
# A frame of a job's traceback: (file name, line number, function name, its source line
# as the worker read it or ""; end line, column, end column; -1 for a number not known;
# whether its code came by value, so the client's copy of the source is the one it ran).
TracebackFrame = tuple[str, int, str, str, int, int, int, bool]
# A traceback as data: its text with each stack as a marker line, and the frames of each
# stack, so the client renders them with its own source (see mesh._serialize).
TracebackData = tuple[str, tuple[tuple[TracebackFrame, ...], ...]]


class ErrorInfo(tuple[Any, ...]):
    """An error as data: kind (an :class:`~mesh.errors.ErrorKind` value), type name,
    message, remote traceback text, module name (a missing module's), and for a job's
    own exception its traceback as data.

    On the wire it is the plain array of those five fields, or six with the traceback
    data (protocol 5), exactly as before it had names: a tuple subclass, not a
    NamedTuple, because its length varies. Emitters pass an ErrorKind, so no kind is a
    loose string; a decoded one keeps a newer peer's unknown kind as its string.
    """

    __slots__ = ()
    WIRE: ClassVar[Any] = (
        tuple[str, str, str, str, str] | tuple[str, str, str, str, str, TracebackData]
    )

    def __new__(
        cls,
        kind: ErrorKind,
        type_name: str,
        message: str,
        traceback: str = "",
        module: str = "",
        tb_data: TracebackData | None = None,
    ) -> "ErrorInfo":
        head = (kind.value, type_name, message, traceback, module)
        return tuple.__new__(cls, head if tb_data is None else (*head, tb_data))

    @classmethod
    def from_wire(cls, values: Sequence[Any]) -> "ErrorInfo":
        """An ErrorInfo from its wire fields as another store kept them (JSON's lists
        become tuples again; checked)."""
        values = _tuples(values)
        if not _ERROR_INFO_OK(values):
            raise ValueError(f"not an error record: {values!r}")
        return tuple.__new__(cls, values)

    def __repr__(self) -> str:
        return f"ErrorInfo{tuple.__repr__(self)}"

    @property
    def kind(self) -> str:
        """An ErrorKind value (compare with ``ErrorKind.X``: they are equal strings)."""
        return typing.cast(str, self[0])

    @property
    def type_name(self) -> str:
        """The exception's type, as ``module.QualName`` for a job's own exception."""
        return typing.cast(str, self[1])

    @property
    def message(self) -> str:
        return typing.cast(str, self[2])

    @property
    def traceback(self) -> str:
        """The remote traceback as text ("" if none)."""
        return typing.cast(str, self[3])

    @property
    def module(self) -> str:
        """For MISSING_MODULE: the module the node lacks ("" otherwise)."""
        return typing.cast(str, self[4])

    @property
    def tb_data(self) -> TracebackData | None:
        """The traceback as data (frames to render with the client's source), if sent."""
        return typing.cast(TracebackData, self[5]) if len(self) > 5 else None


@dataclasses.dataclass(frozen=True, slots=True)
class KillReason:
    """Why a node stops a running job's worker. It reaches the client as the job's
    ErrorInfo (:meth:`error_info`: its kind, and its numbers in the message), so the
    wire is what it was when this was a ``"memory:{rss}:{limit}"`` string."""

    kind: ErrorKind  # KILLED (on request), MAX_RUNTIME or MEMORY
    rss_bytes: int = 0  # MEMORY: the worker's size when it was stopped
    limit_bytes: int = 0  # MEMORY: the node's --max-memory per worker

    def __post_init__(self) -> None:
        if self.kind not in (ErrorKind.KILLED, ErrorKind.MAX_RUNTIME, ErrorKind.MEMORY):
            raise ValueError(f"{self.kind} is not a reason to kill a job")

    def error_info(self, node_name: str, max_runtime_s: float) -> "ErrorInfo":
        """The error the killed job finishes with, as the user reads it."""
        if self.kind is ErrorKind.MEMORY:
            msg = (f"stopped at {self.rss_bytes / 2**20:,.0f} MiB of memory, past the limit "
                   f"of {self.limit_bytes / 2**20:,.0f} MiB per worker on node {node_name} "
                   "(mesh-node --max-memory)")  # fmt: skip
            return ErrorInfo(self.kind, "MemoryLimitExceeded", msg)
        if self.kind is ErrorKind.MAX_RUNTIME:
            msg = f"killed after exceeding _max_runtime={max_runtime_s:g}s"
            return ErrorInfo(self.kind, "JobKilled", msg)
        return ErrorInfo(self.kind, "JobKilled", "killed on request")


def _tuples(value: Any) -> Any:
    """``value`` with every list in it a tuple (as msgpack decodes arrays)."""
    if isinstance(value, (list, tuple)):
        return tuple(_tuples(v) for v in value)
    return value


class ResultItem(typing.NamedTuple):
    """A finished job as a node delivers it."""

    jid: str
    state: int
    payload: Payload  # the pickled result or exception (may be b"")
    error: ErrorInfo | None


class RanItem(typing.NamedTuple):
    """A job as a worker reports it: the result item's fields, then how it ran."""

    jid: str
    state: int
    payload: Payload
    error: ErrorInfo | None
    started: float
    finished: float
    cpu_s: float
    stdout: str
    stderr: str


class JobRecord(typing.NamedTuple):
    """A job as info/status show it."""

    jid: str
    state: int
    node: str  # the node's name
    function: str  # the function's name
    label: str
    submitted: float
    started: float  # 0.0: not yet
    finished: float  # 0.0: not yet
    cpu_s: float
    stdout: str
    stderr: str
    error: str  # the error's traceback, or "type: message"; "" if none
    attempts: int


_M = TypeVar("_M", bound="Message")
_REGISTRY: dict[int, type["Message"]] = {}


class Message:
    """Base of all wire messages. Subclasses are frozen dataclasses with a unique TAG."""

    __slots__: ClassVar[tuple[str, ...]] = ()
    TAG: ClassVar[int] = -1
    # Fields that may hold large byte strings (received as bytearray, mmap or memoryview),
    # sent out of band as attachments:
    # (field name, index inside each item of that field, or -1 for the field itself).
    BLOBS: ClassVar[tuple[tuple[str, int], ...]] = ()
    _checks: ClassVar[tuple[Callable[[Any], bool], ...]] = ()
    _valid: ClassVar[Callable[[tuple[Any, ...]], bool]] = staticmethod(lambda values: False)
    _make: ClassVar[Callable[[tuple[Any, ...]], Any]] = staticmethod(lambda values: None)
    _required: ClassVar[int] = 0
    _nfields: ClassVar[int] = 0
    _defaults: ClassVar[tuple[Any, ...]] = ()


def _expr(tp: Any, var: str, depth: int = 0) -> str:
    """A Python expression that is true exactly when ``var`` has the decoded shape of ``tp``.

    Checks are compiled to one expression per field (no closures, no generators but
    one per variable-length tuple): this runs for every job a node sees.
    """
    if tp is Any:
        return "True"
    if tp is bool:
        return f"({var} is True or {var} is False)"
    if tp is float:
        return f"(type({var}) is float or type({var}) is int)"
    if tp is bytes:  # attachments arrive as bytearray, mmap, or a node's shared block view
        return (f"(type({var}) is bytes or type({var}) is bytearray or type({var}) is _mmap "
                f"or type({var}) is memoryview)")  # fmt: skip
    if tp in (int, str):
        return f"type({var}) is {tp.__name__}"
    if _is_record(tp):  # decoded as a plain tuple (and converted after the checks)
        return _expr(_wire_type(tp), var, depth)
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        parts = [f"{var} is None" if a is type(None) else _expr(a, var, depth) for a in args]
        return "(" + " or ".join(parts) + ")"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = f"x{depth}"
            return (
                f"(type({var}) is tuple and all({_expr(args[0], item, depth + 1)} "
                f"for {item} in {var}))"
            )
        parts = [f"type({var}) is tuple", f"len({var}) == {len(args)}"]
        parts += [_expr(a, f"{var}[{i}]", depth) for i, a in enumerate(args)]
        return "(" + " and ".join(parts) + ")"
    raise TypeError(f"unsupported wire type {tp!r}")


def _is_record(tp: Any) -> bool:
    """A named record (NamedTuple, or ErrorInfo) that travels as a plain array."""
    return isinstance(tp, type) and issubclass(tp, tuple) and tp is not tuple


def _wire_type(tp: type[tuple[Any, ...]]) -> Any:
    """The plain tuple type a record travels as."""
    wire = getattr(tp, "WIRE", None)
    if wire is not None:
        return wire
    hints = typing.get_type_hints(tp)
    return types.GenericAlias(tuple, tuple(hints[name] for name in tp._fields))  # type: ignore[attr-defined]


def _conv(tp: Any, var: str, env: dict[str, Any], depth: int = 0) -> str | None:
    """A Python expression turning ``var`` (checked to have the decoded shape of ``tp``)
    into ``tp``'s value: records become their classes; None where nothing changes."""
    if _is_record(tp):
        name = next((k for k, v in env.items() if v is tp), f"_R{len(env)}")
        env[name] = tp
        wire = _wire_type(tp)
        if typing.get_origin(wire) is tuple and typing.get_args(wire)[-1:] != (Ellipsis,):
            inner = _conv(wire, var, env, depth)
            if inner is not None:
                nested = [i for i, a in enumerate(typing.get_args(wire))
                          if _conv(a, "_", {}, depth) is not None]  # fmt: skip
                if len(nested) == 1:  # a result without an error: no tuple rebuilt
                    whole, field = f"_tnew({name}, {var})", f"{var}[{nested[0]}]"
                    return f"({whole} if {field} is None else _tnew({name}, {inner}))"
                return f"_tnew({name}, {inner})"
        elif _conv(wire, var, env, depth) is not None:
            raise TypeError(f"unsupported record wire type {wire!r}")
        return f"_tnew({name}, {var})"
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        convs = [(a, _conv(a, var, env, depth)) for a in args if a is not type(None)]
        if all(c is None for _, c in convs):
            return None
        if len(convs) != 1:
            raise TypeError(f"unsupported union of records {tp!r}")
        return f"(None if {var} is None else {convs[0][1]})"
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            item = f"x{depth}"
            inner = _conv(args[0], item, env, depth + 1)
            return None if inner is None else f"tuple([{inner} for {item} in {var}])"
        parts = [_conv(a, f"{var}[{i}]", env, depth) for i, a in enumerate(args)]
        if all(p is None for p in parts):
            return None
        fields = [p or f"{var}[{i}]" for i, p in enumerate(parts)]
        return "(" + ", ".join(fields) + ",)"
    return None


def _checker(tp: Any) -> Callable[[Any], bool]:
    """Compile a predicate that accepts exactly the msgpack-decoded shape of ``tp``."""
    return eval(f"lambda v: {_expr(tp, 'v')}", {"_mmap": mmap.mmap})  # type: ignore[no-any-return]


def _maker(cls: type[Any], tps: list[Any]) -> Callable[[tuple[Any, ...]], Any]:
    """A constructor from checked field values, in slot order, that sets the slots
    directly: a frozen dataclass's ``__init__`` goes through ``object.__setattr__`` for
    each field, about twice the cost (every message decoded pays it). Fields holding
    records get them as their classes (msgpack gives plain tuples)."""
    names = cls.__slots__
    env: dict[str, Any] = {}
    convs = [_conv(tp, f"v[{i}]", env) for i, tp in enumerate(tps)]
    env.update({"new": object.__new__, "cls": cls, "_tnew": tuple.__new__})
    env.update({f"s{i}": getattr(cls, name).__set__ for i, name in enumerate(names)})
    body = "".join(f"    s{i}(o, {c or f'v[{i}]'})\n" for i, c in enumerate(convs))
    exec(f"def make(v):\n    o = new(cls)\n{body}    return o\n", env)
    return typing.cast(Callable[[tuple[Any, ...]], Any], env["make"])


def _all_checker(tps: list[Any]) -> Callable[[tuple[Any, ...]], bool]:
    """One predicate for a whole message's field values (as many as it has fields): a
    single call where a check per field cost a call each."""
    parts = [f"({_expr(tp, f'v[{i}]')})" for i, tp in enumerate(tps)] or ["True"]
    return eval(f"lambda v: {' and '.join(parts)}", {"_mmap": mmap.mmap})  # type: ignore[no-any-return]


_ERROR_INFO_OK = _checker(ErrorInfo.WIRE)


def compile_checks(dc: type[_M]) -> type[_M]:
    """Compile ``dc``'s field checks and constructor (once; :func:`decode` calls it)."""
    if "_checks" not in dc.__dict__:
        hints = typing.get_type_hints(dc)
        fields = dataclasses.fields(dc)  # type: ignore[arg-type]
        dc._make = staticmethod(_maker(dc, [hints[f.name] for f in fields]))
        dc._checks = tuple(_checker(hints[f.name]) for f in fields)
        dc._valid = staticmethod(_all_checker([hints[f.name] for f in fields]))
    return dc


def message(tag: int) -> Callable[[type[_M]], type[_M]]:
    """Register a frozen dataclass as the wire message with ``tag``."""

    def register(dc: type[_M]) -> type[_M]:
        if tag in _REGISTRY:
            raise ValueError(f"tag {tag} already used by {_REGISTRY[tag].__name__}")
        if not dataclasses.is_dataclass(dc) or "__slots__" not in dc.__dict__:
            raise TypeError(f"{dc.__name__} must be a frozen, slotted dataclass")
        fields = dataclasses.fields(dc)
        dc.TAG = tag
        dc._nfields = len(fields)
        # Checks are compiled on the first decode of this message type, not here:
        # compiling every message's at import cost each process (every worker
        # included) a tenth of a second, for types most processes never decode.
        dc._valid = staticmethod(lambda values: compile_checks(dc)._valid(values))
        required = [f for f in fields if f.default is dataclasses.MISSING]
        dc._required = len(required)
        if fields[: len(required)] != tuple(required):
            raise TypeError(f"{dc.__name__}: fields with defaults must come last")
        dc._defaults = tuple(f.default for f in fields[len(required) :])
        _REGISTRY[tag] = dc
        return dc

    return register


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
    """

    jids: tuple[str, ...]
    recall: bool = False


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


# ---- gossip membership (tags 80-89): node <-> node, see mesh/_gossip.py ----
#
# SWIM over the nodes' authenticated links: each message carries, piggybacked, the
# newest membership updates its sender is still spreading.

# A member as gossip spreads it: node id, name, address ("host:port"), incarnation,
# state (0 alive, 1 suspect, 2 dead, 3 left), origin (the node id of who said so),
# workers, running, queued.
MemberUpdate = tuple[str, str, str, int, int, str, int, int, int]


@message(80)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipPing(Message):
    """Node -> node: are you alive? ``target`` is the node id meant (an address may
    have changed hands); answered with :class:`GossipAck` of the same ``seq``."""

    seq: int
    target: str
    updates: tuple[MemberUpdate, ...] = ()


@message(81)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipAck(Message):
    """Answer to :class:`GossipPing`, also relayed for a :class:`GossipPingReq`."""

    seq: int
    updates: tuple[MemberUpdate, ...] = ()


@message(82)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipPingReq(Message):
    """Node -> node: my ping of ``target`` at ``address`` went unanswered; ping it for
    me and pass its ack back with my ``seq``."""

    seq: int
    target: str
    address: str
    updates: tuple[MemberUpdate, ...] = ()


@message(83)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipSync(Message):
    """Node -> node: every member the sender knows (push/pull: on join, and now and
    then); answered with the receiver's own, ``reply`` set, which is not answered."""

    members: tuple[MemberUpdate, ...]
    reply: bool = False


@message(84)
@dataclasses.dataclass(frozen=True, slots=True)
class GossipNews(Message):
    """Node -> node: membership updates being spread, sent only while there are some
    (memberlist's gossip timer); not answered."""

    updates: tuple[MemberUpdate, ...]


@message(85)
@dataclasses.dataclass(frozen=True, slots=True)
class Members(Message):
    """Node -> client: what the node's gossip holds of the mesh's members. With ``full``
    (once, on connect): the sender itself first, then every live member; then each
    member that joins, is suspected, dies, leaves or comes back, as gossip learns it,
    so a client needs no heartbeats of its own to learn of joins and deaths."""

    updates: tuple[MemberUpdate, ...]
    full: bool = False


# ---- mesh.files (tags 40-59): client <-> node, node <-> node, job <-> its node ----
#
# A transfer is one request id on one connection: FilePut, then FileChunks, then
# FileEnd from the sender; FileAcks (bytes written) from the receiver open the sender's
# window, so neither side holds more than a window of chunks; one FileReply ends it
# (or ends it early: a receiver that already holds the blob, or failed). FileGet is
# answered by a FileReply naming the version, then the chunks and a FileEnd. Blobs are
# named by their content hash (mesh._hash); a name is only ever a key in the catalog, never a path.

# A file version: name, content hash hex ("" for a delete), size in bytes, version time
# (epoch seconds; the later (time, hash) wins everywhere), deleted (a tombstone).
FileEntry = tuple[str, str, int, float, bool]
# Who holds a version: (node id, node name) pairs.
Holders = tuple[tuple[str, str], ...]


@message(40)
@dataclasses.dataclass(frozen=True, slots=True)
class FilePut(Message):
    """Store ``size`` bytes under ``name`` (chunks follow). A node pushing a replica
    sends the version's ``time``; otherwise the receiving node stamps it. With ``hash``
    known up front, a node that holds the blob answers at once and no byte moves.
    ``target``: with ``time``, the copies the version was put with (its ``replicas``),
    so that a lost holder is replaced by exactly as many (0: not known)."""

    req: int
    name: str
    size: int
    replicas: int = 2
    hash: str = ""
    time: float = 0.0
    target: int = 0


@message(41)
@dataclasses.dataclass(frozen=True, slots=True)
class FileChunk(Message):
    BLOBS = (("data", -1),)
    req: int
    data: bytes


@message(42)
@dataclasses.dataclass(frozen=True, slots=True)
class FileAck(Message):
    """The receiver wrote ``nbytes`` more of transfer ``req``: the sender may send as much."""

    req: int
    nbytes: int


@message(43)
@dataclasses.dataclass(frozen=True, slots=True)
class FileEnd(Message):
    """The sender is done: the content hash of everything sent, or why it stopped."""

    req: int
    hash: str
    error: str = ""


@message(44)
@dataclasses.dataclass(frozen=True, slots=True)
class FileGet(Message):
    """Send the current version of ``name`` (or the blob ``hash``). With ``local`` (a job
    on the node's own machine) the node answers with the blob's path, not its bytes.
    ``bad``: the asker read blob ``bad`` and it failed its hash check; the node checks
    its copy again, and replaces it from another holder if it is bad, before answering."""

    req: int
    name: str
    hash: str = ""
    local: bool = False
    bad: str = ""


@message(45)
@dataclasses.dataclass(frozen=True, slots=True)
class FileReply(Message):
    """Answer to a files request. ``error_kind``: "" (ok), "not-found", "invalid",
    "disk", "corrupt", "unavailable"; ``error`` says what, where and why."""

    req: int
    entries: tuple[FileEntry, ...] = ()
    holders: tuple[Holders, ...] = ()
    error_kind: str = ""
    error: str = ""
    path: str = ""


@message(46)
@dataclasses.dataclass(frozen=True, slots=True)
class FileList(Message):
    """The live versions whose names start with ``prefix``, or exactly ``names``.
    A node asked about names it does not know asks its peers first, unless ``ask_peers``
    is false (a node asking: no question goes round the mesh twice)."""

    req: int
    prefix: str = ""
    names: tuple[str, ...] = ()
    ask_peers: bool = True


@message(47)
@dataclasses.dataclass(frozen=True, slots=True)
class FileDelete(Message):
    req: int
    name: str


@message(48)
@dataclasses.dataclass(frozen=True, slots=True)
class FileCatalog(Message):
    """Node -> node: catalog versions (all with ``full``, else the ones that changed)
    and the blobs the sender holds (all with ``full``, else ``have`` gained and
    ``gone`` lost), so every node answers ``list`` and knows who holds what.
    ``replicas``: the copies each of ``entries`` was put with, in order (0: not known).
    ``corrupt``: blobs of ``gone`` that the sender dropped because they failed their
    hash check, so a node left without a good copy can say where they rotted."""

    node_id: str
    name: str
    entries: tuple[FileEntry, ...]
    have: tuple[str, ...] = ()
    gone: tuple[str, ...] = ()
    full: bool = False
    replicas: tuple[int, ...] = ()
    corrupt: tuple[str, ...] = ()
    # Anti-entropy (an answer to a FileDigest): the receiver sends back its versions
    # of these buckets, and with ``want_have`` all the blobs it holds (``full``).
    want: tuple[int, ...] = ()
    want_have: bool = False


@message(86)
@dataclasses.dataclass(frozen=True, slots=True)
class FileDigest(Message):
    """Node -> node: a digest of the sender's catalog (node/_digest.py: per-bucket
    hashes of its versions; none in a ``reply``) and one hash of the blobs it holds.
    The receiver answers a FileCatalog with its versions of the buckets that differ and
    ``want`` set, and a digest of its own (``reply``: not answered with one)."""

    node_id: str
    name: str
    buckets: tuple[bytes, ...]
    have: bytes
    reply: bool = False


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


def encode(msg: Message) -> bytes:
    """Encode one message as msgpack bytes."""
    try:
        values = [getattr(msg, f) for f in msg.__slots__]
        return msgpack.packb([msg.TAG, *values], use_bin_type=True)  # type: ignore[no-any-return]
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {type(msg).__name__}: {exc}") from exc


_ATTACHMENT = 1  # msgpack ext code of a placeholder for attachment number N (u32)
_SHARED = 2  # ... for the first u64 bytes of a node's shared memory file (path); only
# worker pipes accept it
_LENGTH = struct.Struct(">Q")
_MADV_POPULATE_READ = 22  # Linux 5.14+: map a block's pages in one call, not a fault each
# Opens the shared file an ext payload names (worker side): see open_shared_file.
SharedOpener = Callable[[bytes], mmap.mmap]


def shared_path(data: bytes) -> str:
    """The file path in a shared-buffer placeholder's payload."""
    return os.fsdecode(data[_LENGTH.size :])


def open_shared_file(data: bytes) -> mmap.mmap:
    """Map the start of a node's shared memory file copy-on-write (worker side): the
    node does not write it while a worker may read it, and a NumPy array unpickled over
    it in place is writable, as it was sent."""
    if len(data) <= _LENGTH.size:
        raise RemoteProtocolError("shared buffer placeholder without a path")
    (length,) = _LENGTH.unpack_from(data)
    path = shared_path(data)
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError as exc:
        raise RemoteProtocolError(f"shared buffer {path!r} cannot be opened: {exc}") from None
    try:
        block = mmap.mmap(fd, length, access=mmap.ACCESS_COPY)
    except (OSError, ValueError, OverflowError) as exc:
        raise RemoteProtocolError(f"shared buffer {path!r} cannot be mapped: {exc}") from None
    finally:
        os.close(fd)
    with contextlib.suppress(OSError, ValueError, AttributeError):
        block.madvise(_MADV_POPULATE_READ)  # read faults only: no page is copied
    return block


def encode_attached(
    msg: Message, min_size: int, share: Callable[[object], str | None] | None = None
) -> tuple[bytes, list[bytes | bytearray]]:
    """Encode with byte strings of ``min_size`` or more moved out as attachments.

    Returns (body with placeholders, attachments); with no attachments (nothing that
    big) the body is :func:`encode`'s. Big payloads travel as raw frames, never copied
    through msgpack. With ``share`` (the node's pipes to its own workers), a buffer it
    names a shared memory file for is sent as that file's name instead of its bytes.
    """
    cls = type(msg)
    if not cls.BLOBS:
        return encode(msg), []
    slots = cls.__slots__
    values = [getattr(msg, f) for f in slots]
    blobs: list[bytes | bytearray] = []

    def placeholder(blob: bytes | bytearray) -> msgpack.ExtType:
        path = share(blob) if share is not None else None
        if path is not None:
            return msgpack.ExtType(_SHARED, _LENGTH.pack(len(blob)) + os.fsencode(path))
        blobs.append(blob)
        return msgpack.ExtType(_ATTACHMENT, (len(blobs) - 1).to_bytes(4, "big"))

    def parts(payload: tuple[bytes, ...]) -> list[object]:
        return [placeholder(p) if len(p) >= min_size else p for p in payload]

    for name, idx in cls.BLOBS:
        i = slots.index(name)
        value = values[i]
        if idx < 0:
            if len(value) >= min_size:
                values[i] = placeholder(value)
            continue
        # A Payload tuple (pickle, buffer, ...) counts as big: its buffers are.
        big = [k for k, item in enumerate(value) if len(item[idx]) >= min_size
               or type(item[idx]) is tuple]  # fmt: skip
        if big:
            items = list(value)
            for k in big:
                item = list(items[k])
                blob = item[idx]
                item[idx] = parts(blob) if type(blob) is tuple else placeholder(blob)
                items[k] = item
            values[i] = items
    try:
        return msgpack.packb([cls.TAG, *values], use_bin_type=True), blobs
    except (TypeError, ValueError, OverflowError) as exc:
        raise LocalProtocolError(f"cannot encode {cls.__name__}: {exc}") from exc


def decode(
    data: bytes | bytearray | memoryview,
    attachments: Sequence[bytearray | mmap.mmap | memoryview] = (),
    *,
    open_shared: SharedOpener | None = None,
) -> Message:
    """Decode and validate one message; anything malformed raises RemoteProtocolError.

    ``attachments`` replace the placeholders that :func:`encode_attached` left.
    ``open_shared`` (worker side only, never for the network; :func:`open_shared_file`
    or a wrapper of it) maps the node's shared memory files that a message names.
    """

    def ext_hook(code: int, data: bytes) -> object:
        if code == _ATTACHMENT and len(data) == 4:
            n = int.from_bytes(data, "big")
            if n < len(attachments):
                return attachments[n]
        elif code == _SHARED and open_shared is not None:
            return open_shared(data)
        return msgpack.ExtType(code, data)  # fails validation below

    try:
        obj = msgpack.unpackb(
            data, use_list=False, raw=False, strict_map_key=True, ext_hook=ext_hook
        )
    except Exception as exc:  # msgpack raises many types for garbage; all mean the same.
        raise RemoteProtocolError(f"undecodable message: {type(exc).__name__}") from None
    if type(obj) is not tuple or not obj or type(obj[0]) is not int:
        raise RemoteProtocolError("message is not a tagged array")
    cls = _REGISTRY.get(obj[0])
    if cls is None:
        raise RemoteProtocolError(f"unknown message tag {obj[0]}")
    values = obj[1:]
    nfields = cls._nfields
    if len(values) != nfields:
        if len(values) < cls._required:
            raise RemoteProtocolError(
                f"{cls.__name__} has {len(values)} fields, needs {cls._required}"
            )
        if len(values) > nfields:
            values = values[:nfields]  # from a newer peer: fields we do not know
        else:  # from an older peer: the defaults (which pass their checks) for the rest
            values = values + cls._defaults[len(values) - cls._required :]
    if not cls._valid(values):
        for i, value in enumerate(values):
            if not cls._checks[i](value):
                name = cls.__slots__[i]
                raise RemoteProtocolError(f"{cls.__name__}.{name} has the wrong type")
    return cls._make(values)  # type: ignore[no-any-return]
