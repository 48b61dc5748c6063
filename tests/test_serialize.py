"""Pickling of functions and exceptions, checked in this process and in a fresh one."""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.metadata
import os
import pickle
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import cloudpickle
import pytest
from packaging.requirements import Requirement

from mesh._protocol import ErrorInfo
from mesh._serialize import (
    dumps_function,
    dumps_value,
    function_name,
    load_function,
    loads,
    pack_exception,
    travels_by_value,
    unpack_error,
)
from mesh.errors import (
    EnvBuildFailed,
    ErrorKind,
    JobError,
    JobKilled,
    JobRejected,
    MaxRuntimeExceeded,
    MemoryLimitExceeded,
    MissingModule,
    NoNodesAvailable,
    RemoteTraceback,
    SerializationError,
    WorkerDied,
    WorkerStartFailed,
)


def power(x: int, exp: int = 2) -> int:
    return x**exp


class LockedError(Exception):
    """Holds a lock, so it cannot be pickled at all."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.lock = threading.Lock()


class TwoArgError(Exception):
    """Pickles, but cannot be re-created from its args (a common mistake)."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a}/{b}")


def raised(exc: BaseException) -> BaseException:
    """``exc`` with a real traceback, raised two frames deep."""

    def inner() -> None:
        raise exc

    def outer() -> None:
        inner()

    try:
        outer()
    except BaseException as caught:
        return caught
    raise AssertionError("not raised")


# ---- functions ----


def test_function_round_trip() -> None:
    fhash, blob = dumps_function(power)
    assert len(fhash) == 16
    assert load_function(blob)(7) == 49


def test_function_round_trip_with_kwargs() -> None:
    fhash, blob = dumps_function(power, {"exp": 3})
    fn = load_function(blob)
    assert fn(2) == 8
    assert fn(3) == 27
    assert fhash != dumps_function(power, {"exp": 4})[0]
    assert fhash != dumps_function(power)[0]


def test_closure_and_lambda_round_trip() -> None:
    offset = 100
    _, blob = dumps_function(lambda x: x + offset)
    assert load_function(blob)(1) == 101


def test_same_function_same_hash() -> None:
    assert dumps_function(power)[0] == dumps_function(power)[0]


SEEN: list[str] = []
LIMIT = 1


def read_seen() -> list[str]:
    return list(SEEN)


def read_limit(x: int) -> tuple[int, int]:
    return (x, LIMIT)


def test_a_function_of_immutable_things_is_pickled_once_until_one_changes() -> None:
    first = dumps_function(power)
    assert dumps_function(power) is first  # the bytes are kept, not made again
    power.__defaults__ = (3,)
    try:
        changed = dumps_function(power)
        assert changed != first and load_function(changed[1])(2) == 8
    finally:
        power.__defaults__ = (2,)
    assert load_function(dumps_function(power)[1])(2) == 4


def test_a_rebound_global_is_seen_by_the_next_pickle() -> None:
    global LIMIT
    assert load_function(dumps_function(read_limit)[1])(0) == (0, 1)
    LIMIT = 2
    try:
        assert load_function(dumps_function(read_limit)[1])(0) == (0, 2)
    finally:
        LIMIT = 1


def test_a_global_or_a_closure_changed_in_place_is_seen_by_the_next_pickle() -> None:
    SEEN.clear()
    assert load_function(dumps_function(read_seen)[1])() == []
    SEEN.append("a")
    try:
        assert load_function(dumps_function(read_seen)[1])() == ["a"]
    finally:
        SEEN.clear()
    box = {"n": 1}

    def read_box() -> int:
        return box["n"]

    assert load_function(dumps_function(read_box)[1])() == 1
    box["n"] = 2
    assert load_function(dumps_function(read_box)[1])() == 2


def test_non_callable_is_refused() -> None:
    with pytest.raises(SerializationError, match="not callable"):
        dumps_function(42)  # type: ignore[arg-type]


def test_unpicklable_function_raises_serialization_error() -> None:
    lock = threading.Lock()

    def uses_lock(x: int) -> int:
        with lock:
            return x

    with pytest.raises(SerializationError, match="uses_lock"):
        dumps_function(uses_lock)


def test_function_name() -> None:
    assert function_name(power) == f"{__name__}.power"
    assert function_name(len) == "len"


@pytest.fixture
def local_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[object]:
    """A user's own module (``closestwords.py``) importable only from tmp_path."""
    name = f"lanmesh_usermod_{uuid.uuid4().hex[:12]}"
    src = tmp_path / "src"
    src.mkdir()
    (src / f"{name}.py").write_text(
        "FACTOR = 3\n"
        "\n"
        "def helper(x):\n"
        "    return x * FACTOR\n"
        "\n"
        "def triple_plus(x, plus=0):\n"
        "    return helper(x) + plus\n"
    )
    monkeypatch.syspath_prepend(str(src))
    module = importlib.import_module(name)
    try:
        yield module
    finally:
        sys.modules.pop(name, None)
        try:
            cloudpickle.unregister_pickle_by_value(module)
        except ValueError:
            pass


def test_local_module_function_is_pickled_by_value(local_module: object, tmp_path: Path) -> None:
    name = local_module.__name__  # type: ignore[attr-defined]
    _, blob = dumps_function(local_module.triple_plus, {"plus": 1})  # type: ignore[attr-defined]
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import sys, importlib.util\n"
        "from mesh._serialize import load_function\n"
        f"assert importlib.util.find_spec({name!r}) is None, 'module must not be importable'\n"
        "fn = load_function(sys.stdin.buffer.read())\n"
        "print(fn(14))\n"
        f"print({name!r} in sys.modules)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        input=blob,
        capture_output=True,
        cwd=elsewhere,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split() == ["43", "False"]


def test_installed_module_function_is_pickled_by_reference() -> None:
    import json

    _, blob = dumps_function(json.dumps)
    assert b"json" in blob and len(blob) < 100  # a reference, not the code
    assert load_function(blob) is json.dumps


# ---- what travels by value (pure: module objects made here, folders laid out here) ----


def a_module(name: str, file: Path | None = None, path: list[Path] | None = None) -> ModuleType:
    """A module object as the import system leaves it, without importing anything."""
    module = ModuleType(name)
    if file is not None:
        module.__file__ = str(file)
    if path is not None:
        module.__path__ = [str(p) for p in path]
    return module


def install(folder: Path, dist: str, files: dict[str, str], *, editable: bool = False) -> None:
    """Lay ``files`` out in ``folder`` as ``pip install --target folder`` does, RECORD and all."""
    meta = folder / f"{dist}-1.0.dist-info"
    meta.mkdir(parents=True)
    (meta / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    record = [f"{meta.name}/METADATA,,", f"{meta.name}/RECORD,,"]
    if editable:
        (meta / "direct_url.json").write_text(
            '{"url": "file:///home/u/proj", "dir_info": {"editable": true}}'
        )
        record.append(f"{meta.name}/direct_url.json,,")
    for rel, text in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_text(text)
        record.append(f"{rel},,")
    (meta / "RECORD").write_text("\n".join(record) + "\n")


def test_the_standard_library_and_builtins_never_travel_by_value(tmp_path: Path) -> None:
    import json

    assert not travels_by_value(json)
    assert not travels_by_value(sys)  # builtin: no file at all
    assert not travels_by_value(a_module("json", tmp_path / "python311.zip" / "json.py"), [])


def test_a_users_module_named_like_the_standard_librarys_travels_by_value(tmp_path: Path) -> None:
    """``test.py`` or ``secrets.py`` beside the script shadows the standard library's
    here; a node would import its own standard library's module instead."""
    for name in ("test", "secrets"):
        (tmp_path / f"{name}.py").write_text("def f():\n    return 1\n")
        module = a_module(name, tmp_path / f"{name}.py")
        assert travels_by_value(module, [str(tmp_path)]), name


def test_lanmesh_and_its_dependencies_never_travel_by_value(tmp_path: Path) -> None:
    """Wherever they were found: here, in a folder with no distribution metadata."""
    for name in ("mesh", "cloudpickle", "msgpack", "cryptography", "_cffi_backend", "zeroconf"):
        module = a_module(name, tmp_path / name / "__init__.py")
        assert not travels_by_value(module, [str(tmp_path)]), name


def test_every_dependency_of_lanmesh_is_known_by_its_import_name() -> None:
    """pyproject's dependencies and the names _serialize never ships: kept in step."""
    import tomllib

    import mesh._serialize

    deps = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
    provides: dict[str, set[str]] = {}
    for top, dists in importlib.metadata.packages_distributions().items():
        for dist in dists:
            provides.setdefault(dist.lower().replace("_", "-"), set()).add(top)
    for line in deps["project"]["dependencies"]:
        dist = Requirement(line).name.lower().replace("_", "-")
        tops = {t for t in provides[dist] if not t.startswith("_") and "-" not in t}
        assert tops and tops <= mesh._serialize._NODES_HAVE, (dist, tops)


def test_a_users_client_or_node_module_travels_by_value(tmp_path: Path) -> None:
    """Once lanmesh's own top-level names; now only ``mesh`` is lanmesh's."""
    for name in ("client", "node"):
        module = a_module(name, tmp_path / f"{name}.py")
        assert travels_by_value(module, [str(tmp_path)]), name


def test_a_compiled_extension_module_never_travels_by_value(tmp_path: Path) -> None:
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    (tmp_path / f"fastlev{suffix}").write_bytes(b"\x7fELF")
    assert not travels_by_value(a_module("fastlev", tmp_path / f"fastlev{suffix}"), [])
    # nor a package of the user's that holds one: nodes need it installed
    (tmp_path / "fastpkg").mkdir()
    (tmp_path / "fastpkg" / "__init__.py").write_text("")
    (tmp_path / "fastpkg" / f"_core{suffix}").write_bytes(b"\x7fELF")
    init = tmp_path / "fastpkg" / "__init__.py"
    assert not travels_by_value(a_module("fastpkg", init, [tmp_path / "fastpkg"]), [])


def test_a_distribution_installed_on_the_search_path_travels_by_reference(tmp_path: Path) -> None:
    """``pip install --target deps`` (PYTHONPATH=deps, or a .pth naming deps)."""
    deps = tmp_path / "deps"
    install(deps, "fakedep", {"fakedep/__init__.py": "", "fakemod.py": ""})
    (deps / "mine.py").write_text("")  # the user's own file, in the same folder
    search = [str(tmp_path / "elsewhere"), str(deps)]
    assert not travels_by_value(a_module("fakedep", deps / "fakedep" / "__init__.py"), search)
    assert not travels_by_value(a_module("fakemod", deps / "fakemod.py"), search)
    assert travels_by_value(a_module("mine", deps / "mine.py"), search)
    # without deps on the search path, nothing says fakedep is installed
    assert travels_by_value(a_module("fakedep", deps / "fakedep" / "__init__.py"), [])


def test_a_module_shadowing_an_installed_name_travels_by_value(tmp_path: Path) -> None:
    """The user's own fakedep.py beside the script is not the fakedep installed in deps."""
    deps = tmp_path / "deps"
    install(deps, "fakedep", {"fakedep.py": ""})
    (tmp_path / "script").mkdir()
    (tmp_path / "script" / "fakedep.py").write_text("")
    search = [str(tmp_path / "script"), str(deps)]
    assert travels_by_value(a_module("fakedep", tmp_path / "script" / "fakedep.py"), search)


def test_the_users_project_installed_editable_travels_by_value(tmp_path: Path) -> None:
    deps = tmp_path / "deps"
    install(deps, "userproj", {"userproj/__init__.py": ""}, editable=True)
    module = a_module("userproj", deps / "userproj" / "__init__.py")
    assert travels_by_value(module, [str(deps)])


def test_a_namespace_package_of_the_users_travels_by_value(tmp_path: Path) -> None:
    (tmp_path / "tools").mkdir()
    assert travels_by_value(a_module("tools", path=[tmp_path / "tools"]), [str(tmp_path)])
    assert not travels_by_value(a_module("frozen_thing"), [])  # no file, no folder


def test_a_distribution_installed_mid_session_is_seen(tmp_path: Path) -> None:
    deps = tmp_path / "deps"
    deps.mkdir()
    (deps / "late.py").write_text("")
    module = a_module("late", deps / "late.py")
    assert travels_by_value(module, [str(deps)])
    (deps / "late.py").unlink()
    install(deps, "late", {"late.py": ""})  # pip install --target deps, while running
    assert not travels_by_value(module, [str(deps)])


# ---- values ----


@pytest.mark.parametrize(
    "value",
    [1, 2.5, "x", b"y", None, True, (1, "a"), [1, 2], {"k": [1, 2]}, {1, 2}, 3 + 4j],
)
def test_value_round_trip(value: object) -> None:
    assert loads(dumps_value(value)) == value


def test_unpicklable_value_raises_serialization_error() -> None:
    with pytest.raises(SerializationError, match="argument"):
        dumps_value(threading.Lock(), "argument")


# ---- exceptions as data ----


def test_value_error_is_re_created_with_remote_traceback() -> None:
    exc = raised(ValueError("bad input 7"))
    blob, info = pack_exception(exc)
    kind, tname, message, tb_text, module = info[:5]  # the sixth: the traceback as data
    assert (kind, tname, message, module) == ("raised", "builtins.ValueError", "bad input 7", "")
    assert "ValueError: bad input 7" in tb_text
    assert "in inner" in tb_text
    assert blob

    err = unpack_error("j-42", "ws-07", blob, info)
    assert type(err) is ValueError
    assert err.args == ("bad input 7",)
    assert err.jid == "j-42"  # type: ignore[attr-defined]
    assert err.node == "ws-07"  # type: ignore[attr-defined]
    assert err.remote_traceback == tb_text  # type: ignore[attr-defined]
    cause = err.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert tb_text in str(cause)
    assert "job j-42 on node ws-07" in str(cause)


def test_skip_frames_drops_the_runner_frames() -> None:
    exc = raised(KeyError("k"))
    full = pack_exception(exc)[1][3]
    short = pack_exception(exc, skip_frames=2)[1][3]
    assert "in outer" in full and "in raised" in full
    assert "in outer" not in short and "in raised" not in short
    assert "in inner" in short


def test_unpicklable_exception_becomes_job_error_naming_its_type() -> None:
    exc = raised(LockedError("lock held"))
    blob, info = pack_exception(exc)
    assert blob == b""
    tname = f"{LockedError.__module__}.{LockedError.__qualname__}"
    assert info[:3] == ("raised", tname, "lock held")
    err = unpack_error("j1", "ws-07", blob, info)
    assert type(err) is JobError
    assert str(err) == f"{tname}: lock held [job j1 on node ws-07]"
    assert (err.jid, err.node) == ("j1", "ws-07")
    assert "LockedError: lock held" in err.remote_traceback
    assert isinstance(err.__cause__, RemoteTraceback)


def test_exception_that_cannot_be_re_created_becomes_job_error() -> None:
    exc = raised(TwoArgError("a", "b"))
    blob, info = pack_exception(exc)
    assert blob == b""  # it pickles, but would not unpickle on the client
    err = unpack_error("j1", "ws-07", blob, info)
    assert type(err) is JobError
    assert "TwoArgError: a/b" in str(err)


def test_garbage_blob_falls_back_to_job_error() -> None:
    info = ErrorInfo(ErrorKind.RAISED, "mymod.Weird", "boom", "Traceback ...\nmymod.Weird: boom\n")
    err = unpack_error("j1", "ws-07", b"not a pickle", info)
    assert type(err) is JobError
    assert str(err) == "mymod.Weird: boom [job j1 on node ws-07]"
    # a blob that unpickles to something other than an exception is not raised either
    err = unpack_error("j1", "ws-07", pickle.dumps("a string"), info)
    assert type(err) is JobError


def test_module_not_found_becomes_missing_module() -> None:
    missing = f"lanmesh_absent_{uuid.uuid4().hex[:8]}"
    try:
        importlib.import_module(missing)
    except ModuleNotFoundError as caught:
        exc = caught
    blob, info = pack_exception(exc)
    assert info[0] == "missing-module"
    assert info[4] == missing
    err = unpack_error("j1", "ws-07", blob, info)
    assert isinstance(err, MissingModule)
    assert isinstance(err, ModuleNotFoundError) and isinstance(err, JobError)
    assert err.name == missing
    assert (err.jid, err.node) == ("j1", "ws-07")
    text = str(err)
    assert f"node ws-07 lacks module {missing!r}" in text
    assert "this client does not have it either" in text
    assert "job j1 on node ws-07" in text
    assert isinstance(err.__cause__, RemoteTraceback)


def test_missing_module_the_client_has_names_its_version() -> None:
    version = importlib.metadata.version("msgpack")
    info = ErrorInfo(ErrorKind.MISSING_MODULE, "builtins.ModuleNotFoundError",
                     "No module named 'msgpack'", "Traceback ...\n", "msgpack")  # fmt: skip
    err = unpack_error("j1", "ws-07", b"", info)
    assert isinstance(err, MissingModule)
    text = str(err)
    assert f"client has msgpack {version}" in text
    assert f"pip install msgpack=={version}" in text


@pytest.mark.parametrize(
    "kind, cls",
    [
        (ErrorKind.WORKER_DIED, WorkerDied),
        (ErrorKind.KILLED, JobKilled),
        (ErrorKind.MAX_RUNTIME, MaxRuntimeExceeded),
        (ErrorKind.MEMORY, MemoryLimitExceeded),
        (ErrorKind.ENV_BUILD, EnvBuildFailed),
        (ErrorKind.WORKER_START, WorkerStartFailed),
        (ErrorKind.REJECTED, JobRejected),
    ],
)
def test_error_kinds_become_their_classes(kind: ErrorKind, cls: type[JobError]) -> None:
    err = unpack_error("j1", "ws-07", b"", ErrorInfo(kind, "JobKilled", "it happened"))
    assert type(err) is cls
    assert str(err) == "it happened [job j1 on node ws-07]"
    assert (err.jid, err.node) == ("j1", "ws-07")


def test_no_nodes_becomes_no_nodes_available() -> None:
    err = unpack_error("j1", "", b"", ErrorInfo(ErrorKind.NO_NODES, "NoNodesAvailable", "none"))
    assert type(err) is NoNodesAvailable
    assert str(err) == "none [job j1]"  # no node to name


def test_an_unknown_kind_from_a_newer_peer_becomes_a_job_error_naming_its_type() -> None:
    info = ErrorInfo.from_wire(("future-kind", "Odd", "it happened", "", ""))
    err = unpack_error("j1", "ws-07", b"", info)
    assert type(err) is JobError
    assert str(err) == "Odd: it happened [job j1 on node ws-07]"


def test_job_errors_pickle_with_their_attributes() -> None:
    again = pickle.loads(pickle.dumps(WorkerDied("w", jid="j", node="n", remote_traceback="tb")))
    assert type(again) is WorkerDied
    assert (str(again), again.jid, again.node, again.remote_traceback) == ("w", "j", "n", "tb")


def test_missing_module_pickles_with_its_module_name() -> None:
    """A MissingModule re-raised inside a job travels pickled; it must keep ``name``."""
    err = MissingModule("m", jid="j", node="n", remote_traceback="tb", module="Levenshtein")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is MissingModule
    assert (again.jid, again.node, again.remote_traceback) == ("j", "n", "tb")
    assert again.name == "Levenshtein"
