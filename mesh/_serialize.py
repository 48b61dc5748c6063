"""Pickling of functions, arguments, results and exceptions.

Functions travel by value (cloudpickle) whenever the receiving node could not import
them: ``__main__``, notebooks, and the user's own modules (``closestwords.py`` beside the
script); installed packages, wherever they are installed, travel by reference (see
:func:`travels_by_value`). Plain data takes the C
pickler's fast path. A job's exception travels as data: the pickled exception when it
round-trips, always with its remote traceback as text and as frames (which the client
renders with its own source: a script's, a notebook cell's), and is re-raised on the
client as its original type (its traceback: mesh._traceback). Code pickled by value
keeps its file name for that.
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.metadata
import importlib.util
import io
import json
import operator
import os
import pickle
import site
import sys
import sysconfig
import traceback
import types
import weakref
from collections import ChainMap
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import cloudpickle  # type: ignore[import-untyped]

from mesh._frames import ATTACH_MIN
from mesh._protocol import ErrorInfo, Payload, TracebackData
from mesh._traceback import render, traceback_data, traceback_text
from mesh.errors import (
    ErrorKind,
    JobError,
    MissingModule,
    NoNodesAvailable,
    RemoteTraceback,
    SerializationError,
)

__all__ = [
    "dumps_function",
    "dumps_payload",
    "dumps_value",
    "function_hash",
    "function_name",
    "loads",
    "pack_exception",
    "payload_size",
    "traceback_text",
    "unpack_error",
]

PROTOCOL = 5
_SIMPLE = frozenset({int, float, str, bytes, bool, type(None), complex, bytearray})
# What every node has, so never travels by value, however the client got it: lanmesh
# itself and its dependencies (pyproject's, by import name; _cffi_backend is
# cryptography's compiled half, a top-level module of its own).
_NODES_HAVE = frozenset({
    "mesh", "cloudpickle", "cryptography", "_cffi_backend", "msgpack", "zeroconf",
    "aiofiles", "blake3", "aiohttp", "tqdm",
})  # fmt: skip
_STDLIB = frozenset(sys.stdlib_module_names) | frozenset(sys.builtin_module_names)
_EXTENSION_SUFFIXES = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _code_reduce(code: types.CodeType) -> tuple[Any, ...]:
    """cloudpickle's reduction of a code object, with its real file name: cloudpickle
    writes "<dynamic-code>" there (for pickles that do not depend on where the code
    lives), which left a job's traceback naming no file. A file name is stable for
    as long as the function is, so a function's pickle still is too."""
    make, args = _cloudpickle_code_reduce(code)
    # co_filename is the 11th argument of CodeType(...) on every Python cloudpickle
    # supports; where it is not, the name stays cloudpickle's and nothing breaks.
    if len(args) > 10 and args[10] == "<dynamic-code>":
        args = (*args[:10], code.co_filename, *args[11:])
    return make, args


try:
    from cloudpickle.cloudpickle import (  # type: ignore[import-untyped]
        _code_reduce as _cloudpickle_code_reduce,
    )
except ImportError:  # another cloudpickle: its own reduction, whatever name it writes
    _cloudpickle_code_reduce = None


class _Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """cloudpickle's pickler, but code objects keep their file names (see _code_reduce)."""

    if _cloudpickle_code_reduce is not None:
        dispatch_table = ChainMap(
            {types.CodeType: _code_reduce}, cloudpickle.Pickler.dispatch_table
        )


def _cloudpickle(obj: Any, protocol: int = PROTOCOL, buffer_callback: Any = None) -> bytes:
    """``cloudpickle.dumps`` through :class:`_Pickler`."""
    with io.BytesIO() as file:
        _Pickler(file, protocol=protocol, buffer_callback=buffer_callback).dump(obj)
        return file.getvalue()


def _installed_roots() -> tuple[str, ...]:
    roots: set[str] = set()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            roots.add(os.path.realpath(path))
    try:
        roots.update(os.path.realpath(p) for p in site.getsitepackages())
    except AttributeError:  # some embedded interpreters lack it
        pass
    user = site.getusersitepackages()
    if isinstance(user, str):
        roots.add(os.path.realpath(user))
    return tuple(sorted(roots))


_ROOTS = _installed_roots()
_by_value: set[str] = set()
_scanned: tuple[int, str] = (0, "")


def travels_by_value(module: types.ModuleType, search_path: Sequence[str] | None = None) -> bool:
    """Whether ``module`` (top-level) is the user's own code, which nodes cannot import.

    Never: the standard library (but the user's own ``test.py`` beside the script is
    the user's, whatever its name), lanmesh and its dependencies, compiled extension
    modules (bytes of machine code cannot be pickled), and anything in site-packages or
    in a distribution installed elsewhere on ``search_path`` (default ``sys.path``: a
    ``PYTHONPATH`` or ``pip install --target`` folder, a ``.pth`` folder), which nodes
    install as they install packages. Everything else travels by value: ``closestwords.py``
    beside the script, a folder on ``PYTHONPATH`` with no distribution metadata, and the
    user's own project installed editable (``pip install -e .``)."""
    top = module.__name__.partition(".")[0]
    path = getattr(module, "__file__", None)
    if top in _NODES_HAVE:
        return False
    if top in _STDLIB and not (path and os.path.isfile(path) and not _installed(path)):
        return False  # the standard library's, built in or from the interpreter's folders
    if path:
        if path.endswith(_EXTENSION_SUFFIXES):
            return False
        folders = [path]
    else:
        # A namespace package (a folder of modules without __init__.py, say the user's
        # "tools/") is local if a folder of it is; builtin and frozen modules have none.
        folders = list(getattr(module, "__path__", None) or ())
        if not folders:
            return False
    outside = [f for f in folders if not _installed(f)]
    if not outside:
        return False
    owners = _distributions(sys.path if search_path is None else search_path).get(top, ())
    if all(_within(f, owners) for f in outside):
        return False
    # A package holding compiled modules cannot travel by value either: nodes need it
    # installed, and saying so (MissingModule) beats a broken pickle.
    return not (path and path.endswith("__init__.py") and _has_extension(os.path.dirname(path)))


def _installed(path: str) -> bool:
    real = os.path.realpath(path)
    return any(real == r or real.startswith(r + os.sep) for r in _ROOTS)


def _within(path: str, roots: Iterable[str]) -> bool:
    real = os.path.realpath(path)
    return any(real.startswith(r + os.sep) for r in roots)


def _has_extension(folder: str) -> bool:
    try:
        with os.scandir(folder) as entries:
            return any(e.name.endswith(_EXTENSION_SUFFIXES) for e in entries)
    except OSError:
        return False


# sys.path entries outside site-packages, with their mtimes -> {top-level name: the
# entries where a non-editable distribution installed it}. The mtimes change when a
# distribution is installed there, so a `pip install --target` mid-session is seen.
_dist_cache: tuple[tuple[tuple[str, int], ...], dict[str, tuple[str, ...]]] = ((), {})


def _distributions(search_path: Sequence[str]) -> dict[str, tuple[str, ...]]:
    """Top-level import names of the distributions (``*.dist-info``) installed in the
    entries of ``search_path`` outside site-packages (those in it count as installed
    anyway), each with the entries that hold it; editable installs left out."""
    global _dist_cache
    entries: list[tuple[str, int]] = []
    for entry in dict.fromkeys(os.path.realpath(e or os.curdir) for e in search_path):
        if not _installed(entry):
            try:
                entries.append((entry, os.stat(entry).st_mtime_ns))
            except OSError:
                continue
    key = tuple(entries)
    if key == _dist_cache[0]:
        return _dist_cache[1]
    found: dict[str, list[str]] = {}
    for entry, _ in entries:
        try:
            with os.scandir(entry) as children:
                metas = [e.path for e in children if e.name.endswith(".dist-info")]
        except OSError:  # a zip file or a folder we may not read
            continue
        for meta in metas:
            for top in _top_level_names(importlib.metadata.Distribution.at(meta)):
                found.setdefault(top, []).append(entry)
    table = {name: tuple(where) for name, where in found.items()}
    _dist_cache = (key, table)
    return table


def _top_level_names(dist: importlib.metadata.Distribution) -> set[str]:
    """The top-level modules a distribution installed beside its metadata (from its
    RECORD); none for an editable install, whose code stays in the user's project."""
    try:
        direct = json.loads(dist.read_text("direct_url.json") or "{}")
        if direct.get("dir_info", {}).get("editable"):
            return set()
        files = dist.files
    except (OSError, ValueError, AttributeError):
        return set()
    if files is None:
        return set((dist.read_text("top_level.txt") or "").split())
    names = set()
    for f in files:
        parts = f.parts
        if not parts or parts[0] == ".." or parts[0] == "__pycache__":
            continue
        if len(parts) > 1:
            if not parts[0].endswith((".dist-info", ".data")):
                names.add(parts[0])
        elif parts[0].endswith(".py"):
            names.add(parts[0][:-3])
        elif parts[0].endswith(_EXTENSION_SUFFIXES):
            names.add(parts[0].split(".")[0])
    return names


def register_local_modules() -> None:
    """Mark every imported top-level module of the user's own to be pickled by value."""
    global _scanned
    # New imports land at the end of sys.modules: (size, last name) changes whenever
    # a module arrives, even if another left, and costs O(1) to check on every call.
    mark = (len(sys.modules), next(reversed(sys.modules), ""))
    if mark == _scanned:
        return
    for name, module in list(sys.modules.items()):
        if "." in name or name in _by_value or name.startswith("__"):
            continue
        if module is None or not isinstance(module, types.ModuleType):
            continue
        if travels_by_value(module):
            try:
                cloudpickle.register_pickle_by_value(module)
            except (ValueError, TypeError):
                continue
            _by_value.add(name)
    _scanned = mark


def function_name(fn: Callable[..., Any]) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module != "builtins" else str(name)


def dumps_function(
    fn: Callable[..., Any], kwargs: dict[str, Any] | None = None
) -> tuple[bytes, bytes]:
    """Pickle ``fn`` (with constant keyword arguments) by value where needed: (hash, blob).

    A plain function whose pickle holds only immutable values and things that travel by
    reference (modules, importable functions and classes) is pickled once and its bytes
    reused while all of those are still the same objects; anything else (a global list,
    a closure over a dict, a class defined in ``__main__``) is pickled on every call, so
    a job always sees the values as they are when it is submitted."""
    if not callable(fn):
        raise SerializationError(f"{fn!r} is not callable")
    register_local_modules()
    parts = None if kwargs else _snapshot(fn)
    if parts is not None:
        assert isinstance(fn, types.FunctionType)  # _snapshot takes nothing else
        kept = _pickled_functions.get(fn)
        if kept is not None and _same(kept[0], parts):
            return kept[1]
    payload = (fn, kwargs) if kwargs else fn
    try:
        blob = _cloudpickle(payload, protocol=PROTOCOL)
    except Exception as exc:
        raise SerializationError(f"cannot pickle function {function_name(fn)}: {exc}") from exc
    out = function_hash(blob), blob
    if parts is not None:
        assert isinstance(fn, types.FunctionType)
        _pickled_functions[fn] = (parts, out)
    return out


def function_hash(blob: bytes | memoryview) -> bytes:
    """A function's id: the hash of its pickled bytes. Nodes recompute it for every blob a
    client sends, so an id always means the same bytes (never one a client declares)."""
    return hashlib.blake2b(blob, digest_size=16).digest()


# Functions pickled once (see dumps_function), with the objects their pickle came from.
_pickled_functions: weakref.WeakKeyDictionary[
    types.FunctionType, tuple[list[Any], tuple[bytes, bytes]]
] = weakref.WeakKeyDictionary()
_IMMUTABLE = (_SIMPLE - {bytearray}) | {range, types.BuiltinFunctionType}
_ABSENT = object()
try:  # cloudpickle's own choices, so "travels by reference" means what it does there
    from cloudpickle.cloudpickle import (
        _extract_code_globals,
        _should_pickle_by_reference,
    )
except ImportError:  # another cloudpickle: every call is pickled afresh
    _extract_code_globals = _should_pickle_by_reference = None


def _snapshot(fn: Callable[..., Any]) -> list[Any] | None:
    """Every object a pickle of ``fn`` is made from, when all of them pickle to the same
    bytes for as long as they are the same objects; else None (pickle on every call)."""
    if type(fn) is not types.FunctionType or _extract_code_globals is None or fn.__dict__:
        return None
    parts: list[Any] = [_scanned, fn.__code__, fn.__name__, fn.__qualname__, fn.__module__,
                        fn.__doc__, fn.__defaults__, fn.__kwdefaults__, fn.__annotations__]  # fmt: skip
    values: list[Any] = list(fn.__defaults__ or ())
    for mapping in (fn.__kwdefaults__, fn.__annotations__):
        if mapping:  # dicts: changed in place, not only replaced
            parts.extend(mapping)  # the keys
            values.extend(mapping.values())
    for cell in fn.__closure__ or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            return None
    names = _extract_code_globals(fn.__code__)
    found = [fn.__globals__.get(name, _ABSENT) for name in names]
    parts.extend(found)
    values.extend(v for v in found if v is not _ABSENT)
    if not all(_stable(v) for v in values):
        return None
    parts.extend(values)
    return parts


def _stable(value: Any, depth: int = 0) -> bool:
    """Whether ``value`` pickles to the same bytes for as long as it is the same object."""
    t = type(value)
    if t in _IMMUTABLE:
        return True
    if t is tuple or t is frozenset:
        return depth < 3 and len(value) <= 32 and all(_stable(v, depth + 1) for v in value)
    if t is types.ModuleType:
        return sys.modules.get(value.__name__) is value  # pickled by name
    if t is types.FunctionType or isinstance(value, type):
        return bool(_should_pickle_by_reference(value))  # by module and name
    return False


def _same(a: list[Any], b: list[Any]) -> bool:
    return len(a) == len(b) and all(map(operator.is_, a, b))  # (in C: run on every call)


def _is_simple(value: Any) -> bool:
    t = type(value)
    if t in _SIMPLE:
        return True
    if t is tuple or t is list:
        return len(value) < 64 and all(type(v) in _SIMPLE for v in value)
    return False


def dumps_value(value: Any, what: str = "value") -> bytes:
    """Pickle data: the C pickler for plain values, cloudpickle for anything else."""
    try:
        if _is_simple(value):
            return pickle.dumps(value, PROTOCOL)
        register_local_modules()
        blob: bytes = _cloudpickle(value, protocol=PROTOCOL)
        return blob
    except Exception as exc:
        raise SerializationError(f"cannot pickle {what}: {type(exc).__name__}: {exc}") from exc


# ---- out-of-band buffers: big byte strings travel beside the pickle, not inside it ----


class _OutOfBand:
    """Stands in for a big ``bytes``/``bytearray`` while pickling: the C pickler writes
    those in-band whatever the ``buffer_callback`` (only a PickleBuffer goes out of band)."""

    __slots__ = ("obj",)

    def __init__(self, obj: bytes | bytearray) -> None:
        self.obj = obj

    def __reduce_ex__(self, protocol: Any) -> tuple[Any, ...]:
        rebuild = _as_bytes if type(self.obj) is bytes else _as_bytearray
        return rebuild, (pickle.PickleBuffer(self.obj),)


def _as_bytes(buf: Any) -> bytes:
    return bytes(buf)  # the one copy a bytes object needs: it cannot wrap foreign memory


def _as_bytearray(buf: Any) -> bytearray:
    return bytearray(buf)


def _big(value: Any) -> bool:
    t = type(value)
    return (t is bytes or t is bytearray) and len(value) >= ATTACH_MIN


def dumps_payload(value: Any, what: str = "value") -> Payload:
    """Pickle arguments or a result with buffers of ``ATTACH_MIN`` bytes or more kept out
    of the stream: ``(pickle, buffer, ...)``, or plain pickle bytes when there are none.

    The buffers then travel as attachments (the node hands big ones to its worker as
    shared memory), so a 50 MB argument is never copied into a pickle, nor out of one
    but where a ``bytes`` must be made. Big ``bytes`` found at the top of ``value`` (or
    of its argument tuple) go by reference: they are immutable. Any other buffer
    (``bytearray``, NumPy arrays through pickle protocol 5) is copied once, now, so a
    caller that changes it after ``call()`` returns does not change the job's input.
    """
    try:
        if _is_simple(value):
            t = type(value)
            if t is not tuple and t is not list:
                if not _big(value):
                    return pickle.dumps(value, PROTOCOL)
            elif not any(map(_big, value)):
                return pickle.dumps(value, PROTOCOL)  # today's path for small jobs
            return _dumps_oob(value, pickle.dumps)
        register_local_modules()
        return _dumps_oob(value, _cloudpickle)
    except Exception as exc:
        raise SerializationError(f"cannot pickle {what}: {type(exc).__name__}: {exc}") from exc


def _dumps_oob(value: Any, dumps: Callable[..., bytes]) -> Payload:
    if type(value) is tuple or type(value) is list:
        # One wrapper per object: the same bytes twice is one buffer and, unpickled, one object.
        seen: dict[int, _OutOfBand] = {}
        wrapped = [seen.setdefault(id(v), _OutOfBand(v)) if _big(v) else v for v in value]
        value = tuple(wrapped) if type(value) is tuple else wrapped
    elif _big(value):
        value = _OutOfBand(value)
    parts: list[bytes] = []

    def keep(buf: pickle.PickleBuffer) -> bool:
        """False: out of band. A small buffer stays in the stream (True)."""
        raw = buf.raw()
        if raw.nbytes < ATTACH_MIN:
            return True
        # A memoryview of an immutable bytes travels as that bytes; anything else that
        # may change (or be resized) under the sender is copied now.
        obj = raw.obj
        if isinstance(obj, bytes) and type(obj) is bytes and raw.nbytes == len(obj):
            parts.append(obj)
        else:
            parts.append(raw.tobytes())
        return False

    blob = dumps(value, protocol=PROTOCOL, buffer_callback=keep)
    return (blob, *parts) if parts else blob


def payload_size(payload: Payload) -> int:
    """Bytes of a pickle and its out-of-band buffers."""
    if type(payload) is tuple:
        return sum(len(part) for part in payload)
    return len(payload)


def loads(blob: Payload) -> Any:
    """Unpickle a blob from an authenticated peer (never call on unauthenticated bytes).

    A ``(pickle, buffer, ...)`` payload is read with its buffers in place: a NumPy array
    wraps its buffer (a private, copy-on-write mapping on a worker) without a copy."""
    if isinstance(blob, tuple):
        if not blob:
            raise SerializationError("empty payload")
        return pickle.loads(blob[0], buffers=blob[1:])
    return pickle.loads(blob)


def load_function(blob: bytes) -> Callable[..., Any]:
    payload = pickle.loads(blob)
    if isinstance(payload, tuple):
        fn, kwargs = payload
        return _bind_kwargs(fn, kwargs)
    return payload  # type: ignore[no-any-return]


def _bind_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> Callable[..., Any]:
    def call(*args: Any) -> Any:
        return fn(*args, **kwargs)

    return call


# Its frame is lanmesh's, not the user's: a job's traceback leaves it out.
_BOUND_CALL = next(c for c in _bind_kwargs.__code__.co_consts if isinstance(c, types.CodeType))


# ---- exceptions as data (their tracebacks: mesh._traceback) ----


def pack_exception(exc: BaseException, *, skip_frames: int = 0) -> tuple[bytes, ErrorInfo]:
    """Describe an exception raised by a job: (pickled exception or b"", ErrorInfo), the
    ErrorInfo with its traceback as text and as data."""
    tb = exc.__traceback__
    for _ in range(skip_frames):  # lanmesh's own: a builtin that raised shows no frame
        if tb is not None:
            tb = tb.tb_next
    while tb is not None and tb.tb_frame.f_code is _BOUND_CALL:
        tb = tb.tb_next
    data: TracebackData | None
    try:
        data = traceback_data(exc, tb)
        text = render(data, here=False)
    except Exception:  # a traceback that cannot be walked: the plain text, no data
        data = None
        text = "".join(traceback.format_exception(type(exc), exc, tb))
    try:
        blob = _cloudpickle(exc, protocol=PROTOCOL)
        pickle.loads(blob)
    except Exception:
        blob = b""
    missing = isinstance(exc, ModuleNotFoundError)
    kind = ErrorKind.MISSING_MODULE if missing else ErrorKind.RAISED
    module = (getattr(exc, "name", None) or "") if missing else ""
    tname = f"{type(exc).__module__}.{type(exc).__qualname__}"
    return blob, ErrorInfo(kind, tname, str(exc), text, module, data)


def _client_version_hint(module: str) -> tuple[str, str]:
    """(the client's distribution and version for ``module``, or "", how to install it)."""
    top = module.split(".")[0]
    try:
        dists = importlib.metadata.packages_distributions().get(top, [])
    except Exception:
        dists = []
    for dist in dists:
        try:
            version = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
        return f"{dist} {version}", f"pip install {dist}=={version}"
    return "", ""


def _importable(module: str) -> bool:
    try:
        return bool(module) and importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def unpack_error(jid: str, node: str, blob: Payload, info: ErrorInfo) -> BaseException:
    """Re-create a job's exception on the client, with the remote traceback attached."""
    tname, message, module = info.type_name, info.message, info.module
    tb_text = traceback_text(info)
    # "?": no node to name (a job the client failed itself, or whose node it forgot)
    where = f"job {jid}" if node in ("", "?") else f"job {jid} on node {node}"
    try:
        kind: ErrorKind | None = ErrorKind(info.kind)
    except ValueError:  # a newer peer's kind: its type name and message still tell
        kind = None
    if kind is ErrorKind.MISSING_MODULE:
        has, hint = _client_version_hint(module or message)
        if has:
            client_side = f"client has {has}"
        elif _importable(module):
            client_side = "the client has it as a local module, not an installed package"
        else:
            client_side = "this client does not have it either"
        pin = hint.removeprefix("pip install ")
        advice = (f"pass _env=[{pin!r}] or install it there ({hint})" if hint
                  else "install it there")  # fmt: skip
        err: BaseException = MissingModule(
            f"node {node} lacks module {module!r} ({client_side}); {advice} [{where}]",
            jid=jid,
            node=node,
            remote_traceback=tb_text,
            module=module or None,
        )
        err.__cause__ = RemoteTraceback(tb_text) if tb_text else None
        return err
    if kind is ErrorKind.NO_NODES:
        return NoNodesAvailable(f"{message} [{where}]")
    if kind is not None and kind is not ErrorKind.RAISED:
        cls = kind.exception
        assert issubclass(cls, JobError)  # every other kind's exception is a job's
        return cls(f"{message} [{where}]", jid=jid, node=node, remote_traceback=tb_text)
    exc: BaseException | None = None
    if blob:
        try:
            candidate = loads(blob)
        except Exception:
            candidate = None
        if isinstance(candidate, BaseException):
            exc = candidate
    if exc is None:
        exc = JobError(
            f"{tname}: {message} [{where}]", jid=jid, node=node, remote_traceback=tb_text
        )
    try:
        exc.jid = jid  # type: ignore[attr-defined]
        exc.node = node  # type: ignore[attr-defined]
        exc.remote_traceback = tb_text  # type: ignore[attr-defined]
    except (AttributeError, TypeError):
        pass
    if tb_text:
        exc.__cause__ = RemoteTraceback(f'\n{where} raised:\n"""\n{tb_text}"""')
    return exc
