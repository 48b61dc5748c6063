"""Wire messages of mesh.files (tags 40-48, and FileDigest 86): transfers,
the catalog and its digest.

Built on mesh._wire; :mod:`mesh._protocol` imports this module and re-exports its names:
import them from there (every message registers in its one registry on import).
"""

import dataclasses

from mesh._wire import (
    Message,
    message,
)

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
