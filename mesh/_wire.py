"""The base of the wire messages: the Message class and its registry, the compiled
field checks every decode runs, and the records and types messages carry (Payload,
ErrorInfo, KillReason, ResultItem, RanItem, JobRecord).

The message classes (mesh/_msg_*.py) build on this module, and :mod:`mesh._protocol`
(the codec: version, encode, decode) imports them all, so importing anything from
mesh._protocol registers every message. Import these names from mesh._protocol.
"""

import dataclasses
import mmap
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar, Union

from mesh.errors import ErrorKind

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
REGISTRY: dict[int, type["Message"]] = {}


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
        if tag in REGISTRY:
            raise ValueError(f"tag {tag} already used by {REGISTRY[tag].__name__}")
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
        REGISTRY[tag] = dc
        return dc

    return register
