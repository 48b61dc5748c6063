"""The one exception hierarchy of lanmesh.

::

    MeshError
    ├── ConfigurationError          bad settings: a missing or unsafe secret file, a bad peer address
    ├── ProtocolError               a frame or message broke the wire protocol
    │   ├── RemoteProtocolError     ... the peer sent it (its connection is closed)
    │   └── LocalProtocolError      ... we were about to send it (e.g. larger than the maximum)
    ├── AuthenticationError         a peer could not prove the mesh secret, or we could not
    │   └── VersionMismatch         protocol or Python versions differ; names both sides
    ├── ConnectionError_            base of transport failures (exported as MeshConnectionError)
    │   ├── ConnectionClosed        we closed it; using it again is our bug
    │   ├── ConnectionLost          it broke: peer died, reset, timed out
    │   └── NoNodesAvailable        nothing to run on
    ├── SerializationError          a function, argument or result could not be pickled
    ├── UnknownJob                  no node knows this job id
    ├── MeshTimeout                 also a builtin TimeoutError: result/join/iresult ran out of time
    ├── FilesError                  mesh.files could not do it; says which file, which node, why
    │   ├── MeshFileNotFound        also FileNotFoundError: no live version of that name
    │   ├── FileCorrupted           every copy reachable failed its hash check
    │   └── FileStoreFull           a node's disk is full (its catalog is unchanged)
    └── JobError                    a job failed and its own exception could not be re-created
        ├── WorkerDied              its worker process exited or crashed while running it
        ├── WorkerStartFailed       the node cannot start worker processes; names the node, why
        ├── JobKilled               it was killed: by ``kill`` or past ``_max_runtime``
        │   ├── MaxRuntimeExceeded
        │   └── MemoryLimitExceeded past the node's --max-memory per worker
        ├── MissingModule           also ModuleNotFoundError: the node lacks a module the job needs
        ├── EnvBuildFailed          the node could not build the job's ``_env``; pip's last lines
        ├── JobRejected             no node can ever run it (it needs more cores than any has)
        └── DependencyFailed        a job it depends on (``_depends_on``) failed: it never ran

A job's own exception (``ValueError`` raised by the user's function) is re-raised
as its original type; its ``__cause__`` is a :class:`RemoteTraceback` holding the
remote traceback text, and it carries ``jid`` and ``node`` attributes.

A failed job's error travels as data whose kind is an :class:`ErrorKind`; each kind
names the exception class the client raises for it.
"""

from __future__ import annotations

import enum

__all__ = [
    "AuthenticationError",
    "ConfigurationError",
    "ConnectionClosed",
    "ConnectionLost",
    "DependencyFailed",
    "EnvBuildFailed",
    "FileCorrupted",
    "FileStoreFull",
    "FilesError",
    "JobError",
    "JobKilled",
    "JobRejected",
    "LocalProtocolError",
    "MaxRuntimeExceeded",
    "MemoryLimitExceeded",
    "MeshConnectionError",
    "MeshError",
    "MeshFileNotFound",
    "MeshTimeout",
    "MissingModule",
    "NoNodesAvailable",
    "ProtocolError",
    "RemoteProtocolError",
    "RemoteTraceback",
    "SerializationError",
    "UnknownJob",
    "VersionMismatch",
    "WorkerDied",
    "WorkerStartFailed",
]


class MeshError(Exception):
    """Base of every error lanmesh raises itself."""


class ConfigurationError(MeshError):
    """A setting is missing, malformed or unsafe."""


class ProtocolError(MeshError):
    """A frame or message violates the wire protocol."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that violate the protocol; its connection is closed."""


class LocalProtocolError(ProtocolError):
    """We tried to send something the protocol does not allow."""


class AuthenticationError(MeshError):
    """The mutual challenge-response failed: a wrong secret, or not a mesh peer."""


class VersionMismatch(AuthenticationError):
    """Both sides are mesh peers but speak different protocol or Python versions."""


class MeshConnectionError(MeshError):
    """A connection to a node could not be made or used."""


class ConnectionClosed(MeshConnectionError):
    """The connection was closed by this side."""


class ConnectionLost(MeshConnectionError):
    """The connection broke: the peer went away, reset it, or stopped answering."""


class NoNodesAvailable(MeshConnectionError):
    """No node is reachable to run the work."""


class SerializationError(MeshError):
    """A function, its arguments or its result could not be pickled."""


class UnknownJob(MeshError, KeyError):
    """No reachable node knows this job id."""

    def __str__(self) -> str:  # KeyError quotes its argument; we want a sentence.
        return str(self.args[0]) if self.args else "unknown job"


class MeshTimeout(MeshError, TimeoutError):
    """Waiting for jobs took longer than the timeout; the jobs keep running."""


class FilesError(MeshError):
    """The mesh file store could not do what was asked; the message names the file,
    the node and the cause. ``name`` is the file's name in the store."""

    def __init__(self, message: str, *, name: str = "") -> None:
        super().__init__(message)
        self.name = name

    def __reduce__(self) -> tuple[object, ...]:
        return (_rebuild_files_error, (type(self), str(self), self.name))


def _rebuild_files_error(cls: type[FilesError], message: str, name: str) -> FilesError:
    return cls(message, name=name)


class MeshFileNotFound(FilesError, FileNotFoundError):
    """No live version of this name in the mesh file store (also a FileNotFoundError)."""

    def __init__(self, message: str, *, name: str = "") -> None:
        FilesError.__init__(self, message, name=name)
        self.filename = name

    def __str__(self) -> str:  # OSError formats its args; we want the sentence.
        return str(self.args[0]) if self.args else "file not found"


class FileCorrupted(FilesError):
    """Every copy of a blob that could be reached failed its hash check."""


class FileStoreFull(FilesError):
    """A node ran out of disk space storing a file; nothing was recorded."""


class JobError(MeshError):
    """A job failed in a way its own exception type cannot express.

    ``jid`` and ``node`` name the job and where it ran; ``remote_traceback`` is the
    traceback text from the node, when there is one.
    """

    def __init__(
        self,
        message: str,
        *,
        jid: str | None = None,
        node: str | None = None,
        remote_traceback: str = "",
    ) -> None:
        super().__init__(message)
        self.jid = jid
        self.node = node
        self.remote_traceback = remote_traceback

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_job_error,
            (type(self), str(self), self.jid, self.node, self.remote_traceback),
        )


def _rebuild_job_error(
    cls: type[JobError], message: str, jid: str | None, node: str | None, tb: str
) -> JobError:
    return cls(message, jid=jid, node=node, remote_traceback=tb)


class WorkerDied(JobError):
    """The worker process running the job exited, crashed or was killed from outside."""


class WorkerStartFailed(JobError):
    """The node's worker processes (or a job environment's) exit before they are ready,
    so it cannot run the job; the message names the node and ends with their stderr's
    last line (all its last lines are ``remote_traceback``). The node takes jobs again
    once a worker starts."""


class JobKilled(JobError):
    """The job was killed on request."""


class MaxRuntimeExceeded(JobKilled):
    """The job ran past its ``_max_runtime`` and was killed."""


class MemoryLimitExceeded(JobKilled):
    """The job's worker grew past the node's ``--max-memory`` and was stopped."""


class MissingModule(JobError, ModuleNotFoundError):
    """The node lacks a module the job needs (to unpickle it, or while running)."""

    def __init__(
        self,
        message: str,
        *,
        jid: str | None = None,
        node: str | None = None,
        remote_traceback: str = "",
        module: str | None = None,
    ) -> None:
        JobError.__init__(self, message, jid=jid, node=node, remote_traceback=remote_traceback)
        self.name = module

    def __reduce__(self) -> tuple[object, ...]:
        return (
            _rebuild_missing_module,
            (str(self), self.jid, self.node, self.remote_traceback, self.name),
        )


def _rebuild_missing_module(
    message: str, jid: str | None, node: str | None, tb: str, module: str | None
) -> MissingModule:
    return MissingModule(message, jid=jid, node=node, remote_traceback=tb, module=module)


class EnvBuildFailed(JobError):
    """The node could not build the job's environment (``_env``); the message names the
    node and ends with pip's last lines. Cached as failed there until the set changes."""


class JobRejected(JobError):
    """No node can ever run the job as asked: it needs more cores than any node has."""


class DependencyFailed(JobError):
    """A job it depends on (``_depends_on``) failed, was killed or is unknown to this
    client, so it was never run; the message names that job and its error."""


class RemoteTraceback(Exception):
    """Carries a remote traceback as the ``__cause__`` of a re-raised job exception: the
    node's frames rendered with this process's source (a script's, a notebook cell's)."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


class ErrorKind(str, enum.Enum):
    """(Internal, not in ``__all__``: the exceptions are the users'.) Why a job failed, as its error's first field on the wire (the value); exactly the
    kinds that nodes and clients emit. ``exception`` is the class the client raises."""

    RAISED = "raised"  # the job's own exception (re-created; JobError if it cannot be)
    MISSING_MODULE = "missing-module"  # the node lacks a module the job needs
    WORKER_DIED = "worker-died"  # its worker process (or its node) died while it ran
    WORKER_START = "worker-start"  # the node cannot start worker processes
    KILLED = "killed"  # killed on request
    MAX_RUNTIME = "max-runtime"  # ran past its _max_runtime
    MEMORY = "memory"  # its worker grew past the node's --max-memory
    ENV_BUILD = "env-build"  # its _env could not be built
    REJECTED = "rejected"  # it needs more cores than a node (or any node) has
    NO_NODES = "no-nodes"  # no node was usable for the client's no-nodes timeout
    DEPENDENCY = "dependency"  # a job it depends on (_depends_on) failed: it never ran

    @property
    def exception(self) -> type[MeshError]:
        """The exception class the client raises for this kind (for RAISED: the one it
        raises when the job's own exception cannot be re-created)."""
        return _EXCEPTION_OF[self]

    @classmethod
    def of(cls, exc_type: type[BaseException]) -> ErrorKind | None:
        """The kind whose exception ``exc_type`` is, or is a subclass of (the most
        specific one); None for an exception no kind raises."""
        for klass in exc_type.__mro__:
            kind = _KIND_OF.get(klass)
            if kind is not None:
                return kind
        return None


_EXCEPTION_OF: dict[ErrorKind, type[MeshError]] = {
    ErrorKind.RAISED: JobError,
    ErrorKind.MISSING_MODULE: MissingModule,
    ErrorKind.WORKER_DIED: WorkerDied,
    ErrorKind.WORKER_START: WorkerStartFailed,
    ErrorKind.KILLED: JobKilled,
    ErrorKind.MAX_RUNTIME: MaxRuntimeExceeded,
    ErrorKind.MEMORY: MemoryLimitExceeded,
    ErrorKind.ENV_BUILD: EnvBuildFailed,
    ErrorKind.REJECTED: JobRejected,
    ErrorKind.NO_NODES: NoNodesAvailable,
    ErrorKind.DEPENDENCY: DependencyFailed,
}
_KIND_OF: dict[type[BaseException], ErrorKind] = {v: k for k, v in _EXCEPTION_OF.items()}


# Users meet these as ``mesh.X`` (the name they import and catch them by, as httpx's
# do); pickles name them so too, and ``mesh`` re-exports every one.
for _name in __all__:
    globals()[_name].__module__ = "mesh"
del _name
