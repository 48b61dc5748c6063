"""A job's traceback reads as it would locally: real file names, line numbers, source lines.

Code shipped by value keeps its file name, the worker sends the traceback's frames as
data, and the client renders them with its own ``linecache`` (where a script's, a local
module's or a notebook cell's source is), falling back to the lines the worker read.
The end-to-end tests run real nodes; the scripts run as real ``__main__`` programs.
"""

from __future__ import annotations

import json
import linecache
import os
import pickle
import subprocess
import sys
import textwrap
import traceback
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import NodeProc

import mesh
from mesh._protocol import ErrorInfo, Results, decode, encode
from mesh._serialize import (
    dumps_function,
    load_function,
    pack_exception,
    traceback_text,
    unpack_error,
)
from mesh.errors import ErrorKind, JobError, RemoteProtocolError, RemoteTraceback

# ---- end to end: scripts run as __main__ against real nodes ----

SCRIPT_TAIL = '''

def local_view(exc):
    """What the user sees locally for the job's own frames: the traceback below the call."""
    frames = traceback.extract_tb(exc.__traceback__)[1:]
    return ("Traceback (most recent call last):\\n"
            + "".join(traceback.StackSummary.from_list(frames).format())
            + "".join(traceback.format_exception_only(type(exc), exc)))


if __name__ == "__main__":
    try:
        JOB(*ARGS)
    except Exception as exc:
        local = local_view(exc)
    with mesh.Client([sys.argv[1]], os.environ["MESH_SECRET"]) as c:
        jid = c.call(JOB, *ARGS)
        try:
            c.result(jid)
        except Exception as exc:
            out = {"type": type(exc).__name__, "remote": exc.remote_traceback,
                   "cause": str(exc.__cause__), "info": c.info(jid).error}
    print(json.dumps({"local": local, **out}))
'''


def run_script(folder: Path, node: NodeProc, secret: str, files: dict[str, str]) -> dict[str, str]:
    """Write ``files`` (``main.py`` and the modules beside it) to ``folder``, outside the
    node's view, run ``main.py`` as a script against ``node``, and return what it saw."""
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(textwrap.dedent(text).lstrip())
    with (folder / "main.py").open("a") as f:
        f.write(SCRIPT_TAIL)
    env = dict(os.environ, MESH_SECRET=secret)
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [sys.executable, str(folder / "main.py"), node.address],
        cwd=folder, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out: dict[str, str] = json.loads(done.stdout.splitlines()[-1])
    return out


def assert_as_local(out: dict[str, str], folder: Path) -> None:
    """The remote traceback is the local one, frame for frame, and names no <dynamic-code>."""
    assert out["remote"] == out["local"]
    assert "<dynamic-code>" not in out["remote"]
    assert str(folder) in out["remote"]
    assert out["remote"] in out["cause"]  # RemoteTraceback holds the same text
    assert out["info"] == out["remote"]  # so does mesh.info(jid).error


@pytest.fixture
def node(node_factory: object) -> NodeProc:
    return node_factory(name="tb1", workers=1)  # type: ignore[operator, no-any-return]


def test_script_function_shows_its_file_line_and_source(node, secret, tmp_path):
    folder = tmp_path / "proj"
    out = run_script(folder, node, secret, {"main.py": '''
        import json, os, sys, traceback
        import mesh

        def job(x):
            y = x * 2
            return 100 // (y - 6)

        JOB, ARGS = job, (3,)
    '''})  # fmt: skip
    assert out["type"] == "ZeroDivisionError"
    script = folder / "main.py"
    assert f'  File "{script}", line 6, in job\n    return 100 // (y - 6)\n' in out["remote"]
    assert out["remote"].endswith("ZeroDivisionError: integer division or modulo by zero\n")
    assert_as_local(out, folder)


def test_function_from_a_module_beside_the_script(node, secret, tmp_path):
    folder = tmp_path / "proj"
    out = run_script(folder, node, secret, {
        "main.py": '''
            import json, os, sys, traceback
            import mesh
            import words

            JOB, ARGS = words.lookup, ("cat",)
        ''',
        "words.py": '''
            """The user's own module: not installed, so it travels by value."""
            TABLE = {"dog": 1}

            def lookup(word):
                return TABLE[word]
        ''',
    })  # fmt: skip
    assert out["type"] == "KeyError"
    module = folder / "words.py"
    assert f'  File "{module}", line 5, in lookup\n    return TABLE[word]\n' in out["remote"]
    assert_as_local(out, folder)


def test_call_chain_across_two_user_modules(node, secret, tmp_path):
    folder = tmp_path / "proj"
    out = run_script(folder, node, secret, {
        "main.py": '''
            import json, os, sys, traceback
            import mesh
            import stage_a

            def job(n):
                total = stage_a.prepare(n)
                return total

            JOB, ARGS = job, (4,)
        ''',
        "stage_a.py": '''
            import stage_b

            def prepare(n):
                items = list(range(n))
                return stage_b.check(items)
        ''',
        "stage_b.py": '''
            class BadInput(ValueError):
                pass

            def check(items):
                if len(items) > 3:
                    raise BadInput(f"{len(items)} items, at most 3")
                return sum(items)
        ''',
    })  # fmt: skip
    assert out["type"] == "BadInput"  # the user's own class, re-created in the client
    remote = out["remote"]
    chain = [
        f'  File "{folder / "main.py"}", line 6, in job\n    total = stage_a.prepare(n)\n',
        f'  File "{folder / "stage_a.py"}", line 5, in prepare\n    return stage_b.check(items)\n',
        f'  File "{folder / "stage_b.py"}", line 6, in check\n'
        '    raise BadInput(f"{len(items)} items, at most 3")\n',
    ]
    at = [remote.index(frame) for frame in chain]
    assert at == sorted(at), remote
    assert remote.endswith("stage_b.BadInput: 4 items, at most 3\n")
    assert_as_local(out, folder)


# ---- in this process: a notebook cell, and source only the worker has ----


@pytest.fixture
def c(node: NodeProc, secret: str) -> Iterator[mesh.Client]:
    with mesh.Client([node.address], secret) as client:
        yield client


@pytest.fixture
def cell_name(request: pytest.FixtureRequest) -> Iterator[str]:
    """An IPython cell's file name; its source lives in this process's linecache only."""
    name: str = request.param
    yield name
    linecache.cache.pop(name, None)


CELL = """\
def parse_all(rows):
    out = []
    for row in rows:
        out.append(int(row))
    return out
"""


def define_in_cell(name: str, source: str) -> types.FunctionType:
    """Run ``source`` as IPython runs a cell: registered in linecache under the cell's
    name, compiled with that name, executed in a ``__main__`` namespace."""
    linecache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace: dict[str, object] = {"__name__": "__main__"}
    exec(compile(source, name, "exec"), namespace)
    fn = namespace["parse_all"]
    assert isinstance(fn, types.FunctionType)
    return fn


@pytest.mark.parametrize(
    "cell_name",
    ["<ipython-input-3-5d0c4e8a1f2b>", "/tmp/ipykernel_4242/1830441327.py"],
    indirect=True,
)
def test_notebook_cell_shows_as_in_ipython(c, cell_name):
    assert not os.path.exists(cell_name)  # nowhere but in this process's linecache
    parse_all = define_in_cell(cell_name, CELL)
    jid = c.call(parse_all, ["1", "2", "x3"])
    with pytest.raises(ValueError, match="invalid literal") as caught:
        c.result(jid)
    remote = caught.value.remote_traceback  # type: ignore[attr-defined]
    assert (
        "Traceback (most recent call last):\n"
        f'  File "{cell_name}", line 4, in parse_all\n'
        "    out.append(int(row))\n"
        "               ^^^^^^^^\n"
        "ValueError: invalid literal for int() with base 10: 'x3'\n"
    ) == remote
    cause = caught.value.__cause__
    assert isinstance(cause, RemoteTraceback) and remote in str(cause)
    assert c.info(jid).error == remote


def from_worker_only() -> None:
    """Runs code whose source exists only in the worker's linecache."""
    import linecache as cache

    name = "<generated-on-the-worker>"
    source = "def check(level):\n    assert level < 3, f'level {level} too deep'\n"
    cache.cache[name] = (len(source), None, source.splitlines(True), name)
    namespace: dict[str, object] = {}
    exec(compile(source, name, "exec"), namespace)
    namespace["check"](7)  # type: ignore[operator]


def test_source_the_client_lacks_comes_from_the_worker(c):
    assert "<generated-on-the-worker>" not in linecache.cache
    jid = c.call(from_worker_only)
    with pytest.raises(AssertionError) as caught:
        c.result(jid)
    remote = caught.value.remote_traceback  # type: ignore[attr-defined]
    assert (
        '  File "<generated-on-the-worker>", line 2, in check\n'
        "    assert level < 3, f'level {level} too deep'\n"
        "           ^^^^^^^^^\n"
        "AssertionError: level 7 too deep\n"
    ) in remote
    assert f'File "{__file__}", line ' in remote  # this test module's frame, by value too
    assert c.info(jid).error == remote


# ---- units: the data, its rendering, the pickled file names, the wire ----


def _raise_chained() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise RuntimeError("lookup failed") from exc


def _caught(fn: object) -> BaseException:
    try:
        fn()  # type: ignore[operator]
    except BaseException as exc:
        return exc
    raise AssertionError("did not raise")


@pytest.mark.parametrize("fn", [_raise_chained, lambda: [][1], lambda: int("z")])
def test_worker_text_is_what_traceback_prints(fn):
    exc = _caught(fn)
    _, info = pack_exception(exc)
    assert info[3] == "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert len(info) == 6
    assert traceback_text(info) == info[3]  # rendered here, with the same source


def _recurse(n: int) -> int:
    if n == 0:
        raise OverflowError("bottom")
    return _recurse(n - 1) + 1


def test_recursion_sends_the_frames_traceback_prints_not_all():
    exc = _caught(lambda: _recurse(200))
    _, info = pack_exception(exc)
    assert info[3] == "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert "  [Previous line repeated 197 more times]\n" in info[3]
    assert traceback_text(info) == info[3]
    assert sum(len(stack) for stack in info[5][1]) == 6  # type: ignore[misc]  # 2 + 3 + 1


def test_chained_exception_keeps_both_stacks():
    exc = _caught(_raise_chained)
    _, info = pack_exception(exc)
    text = traceback_text(info)
    assert text.count("Traceback (most recent call last):") == 2
    assert "The above exception was the direct cause of the following exception:" in text
    assert '    {}["missing"]\n' in text
    assert '    raise RuntimeError("lookup failed") from exc\n' in text


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups came in Python 3.11")
def test_exception_group_members_are_indented_as_traceback_does():
    def group() -> None:
        raise ExceptionGroup("two failed", [_caught(lambda: int("a")), _caught(_raise_chained)])  # noqa: F821

    exc = _caught(group)
    _, info = pack_exception(exc)
    expected = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    assert info[3] == expected
    assert traceback_text(info) == expected
    assert "  | ValueError: invalid literal for int() with base 10: 'a'\n" in expected
    assert '    |     {}["missing"]\n' in expected  # a member's chained stack, indented


def test_client_source_wins_for_code_that_came_by_value():
    """A frame of code shipped by value shows this process's line for it; a frame of the
    worker's own code (installed there) keeps the worker's line."""
    template = "Traceback (most recent call last):\n\x00mesh-stack 0\x00\nValueError: x\n"
    name = "<ipython-input-9-abcdef>"
    linecache.cache[name] = (20, None, ["first = 1\n", "    second = 2\n"], name)
    try:
        frames = (
            (name, 2, "cell", "worker's stale line\n", 2, -1, -1, True),
            ("/site/lib.py", 7, "helper", "    return lib_line()\n", 7, -1, -1, False),
            ("/nowhere/gone.py", 3, "lost", "", 3, -1, -1, True),
        )
        data = (template, (frames,))
        info = ErrorInfo(ErrorKind.RAISED, "builtins.ValueError", "x", "worker text", "", data)
        assert traceback_text(info) == (
            "Traceback (most recent call last):\n"
            f'  File "{name}", line 2, in cell\n    second = 2\n'
            '  File "/site/lib.py", line 7, in helper\n    return lib_line()\n'
            '  File "/nowhere/gone.py", line 3, in lost\n'
            "ValueError: x\n"
        )
    finally:
        linecache.cache.pop(name, None)


def test_errors_without_frames_keep_their_text():
    info = ErrorInfo(
        ErrorKind.WORKER_DIED, "mesh.errors.WorkerDied", "worker 12 died", "its last words"
    )
    assert traceback_text(info) == "its last words"
    data = ("\x00mesh-stack 5\x00", ())
    broken = ErrorInfo(ErrorKind.RAISED, "builtins.ValueError", "x", "the worker's text", "", data)
    assert traceback_text(broken) == "\x00mesh-stack 5\x00"


def test_unpicklable_exception_still_gets_its_rendered_traceback():
    class Unpicklable(Exception):
        def __reduce__(self) -> object:
            raise TypeError("no")

    exc = _caught(lambda: (_ for _ in ()).throw(Unpicklable("held")))
    blob, info = pack_exception(exc)
    assert blob == b""
    err = unpack_error("j-1", "n1", blob, info)
    assert isinstance(err, JobError)
    assert err.remote_traceback == traceback_text(info)
    assert "Unpicklable: held" in err.remote_traceback


def make_adder(k: int) -> object:
    def add(x: int) -> int:
        return x + k

    return add


def test_pickled_functions_keep_their_file_name():
    _, blob = dumps_function(make_adder(2))
    fn = load_function(blob)
    assert fn.__code__.co_filename == __file__  # type: ignore[attr-defined]
    assert fn.__code__.co_firstlineno == make_adder(2).__code__.co_firstlineno  # type: ignore[attr-defined]
    assert b"<dynamic-code>" not in blob
    assert fn(3) == 5
    assert dumps_function(make_adder(2))[1] == blob  # still the same bytes each time


def test_keyword_arguments_wrapper_is_not_a_frame_of_the_job():
    _, blob = dumps_function(int, {"base": 2})
    call = load_function(blob)
    exc = _caught(lambda: call("12"))
    _, info = pack_exception(exc, skip_frames=2)  # _caught's frame and the lambda's
    assert info[3] == "ValueError: invalid literal for int() with base 2: '12'\n"


def test_a_builtin_that_raises_shows_no_frame_of_lanmesh(c):
    """Locally ``int("x")`` shows only its caller's frame; remotely the caller is lanmesh's
    worker (and, with keyword arguments, its wrapper), which the user never wrote."""
    plain, keywords = c.call(int, "x"), c.call(int, "12", base=2)
    for jid, expected in [
        (plain, "ValueError: invalid literal for int() with base 10: 'x'\n"),
        (keywords, "ValueError: invalid literal for int() with base 2: '12'\n"),
    ]:
        with pytest.raises(ValueError) as caught:
            c.result(jid)
        assert caught.value.remote_traceback == expected  # type: ignore[attr-defined]
        assert c.info(jid).error == expected


def test_error_with_its_traceback_data_crosses_the_wire():
    exc = _caught(_raise_chained)
    blob, info = pack_exception(exc)
    old_shape = ("killed", "mesh.errors.JobKilled", "killed", "", "")
    msg = Results((("j-1", 3, blob, info), ("j-2", 4, b"", old_shape)))
    got = decode(encode(msg))
    assert got == msg
    assert isinstance(got, Results)
    error = got.items[0].error
    assert error is not None and traceback_text(error) == info.traceback
    assert pickle.loads(got.items[0].payload).args == ("lookup failed",)


def test_malformed_traceback_data_is_refused_by_the_codec():
    """A frame whose line number is text: the whole message is a protocol error."""
    frames = (("f.py", "7", "fn", "", -1, -1, -1, True),)
    bad = ("raised", "builtins.ValueError", "x", "text", "", ("\x00mesh-stack 0\x00", (frames,)))
    with pytest.raises(RemoteProtocolError):
        decode(encode(Results((("j-1", 3, b"", bad),))))  # type: ignore[arg-type]
