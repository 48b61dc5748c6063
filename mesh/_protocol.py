"""Wire messages: frozen, typed classes in a tagged union, encoded as msgpack arrays.

A message travels as ``[tag, field1, field2, ...]`` in declaration order. New fields
are only ever appended, with defaults, so a peer one version apart still talks: a
decoder fills fields it does not receive from their defaults and drops fields it does
not know. Decoding validates every field's type, so a peer's bytes either become a
well-typed message or raise :class:`RemoteProtocolError`; nothing else escapes.
This module does no I/O.

It is the codec (version, encode, decode) and the one place to import wire names from:
the message base and registry live in mesh/_wire.py, the messages by family in
mesh/_msg_jobs.py (handshake, jobs, environments, workers), mesh/_msg_files.py,
mesh/_msg_gossip.py and mesh/_msg_console.py; importing this module registers them all.
"""

import contextlib
import mmap
import os
import struct
from collections.abc import Callable, Sequence

import msgpack  # type: ignore[import-untyped]

from mesh._msg_console import (
    ConsoleQuery,
    ConsoleReply,
    ConsoleSeries,
    ConsoleStats,
    GroupSummary,
    JobOutput,
    MapKilled,
)
from mesh._msg_files import (
    FileAck,
    FileCatalog,
    FileChunk,
    FileDelete,
    FileDigest,
    FileEnd,
    FileEntry,
    FileGet,
    FileList,
    FilePut,
    FileReply,
    Holders,
)
from mesh._msg_gossip import (
    GossipAck,
    GossipNews,
    GossipPing,
    GossipPingReq,
    GossipSync,
    Members,
    MemberUpdate,
)
from mesh._msg_jobs import (
    Ack,
    Challenge,
    EnvQuery,
    EnvRecord,
    EnvReport,
    Goodbye,
    Handback,
    Hello,
    JobDetails,
    JobsQuery,
    JobsReply,
    JobSummary,
    Kill,
    Load,
    Peers,
    Ping,
    Pong,
    Proof,
    Query,
    Ran,
    Recall,
    Records,
    Results,
    Run,
    Started,
    Submit,
    WorkerReady,
    pushed_name,
)
from mesh._wire import (
    REGISTRY as _REGISTRY,
)
from mesh._wire import (
    ErrorInfo,
    JobRecord,
    KillReason,
    Message,
    Payload,
    RanItem,
    ResultItem,
    TracebackData,
    TracebackFrame,
    compile_checks,
    message,
)
from mesh.errors import LocalProtocolError, RemoteProtocolError

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
    "JobDetails",
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
    "TracebackData",
    "TracebackFrame",
    "Started",
    "WorkerReady",
    "compile_checks",
    "decode",
    "encode",
    "message",
    "open_shared_file",
    "pushed_name",
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
