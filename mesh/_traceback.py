"""A job's traceback as data: captured in the worker, rendered on the client.

The worker sends the text ``traceback`` prints, with each stack replaced by a marker
line, and the frames of each stack (file, line, function, the line as the worker read
it, columns, whether the code came by value). The client renders them with its own
source for code it sent by value (a script, a notebook cell, a local module), as a
local traceback would show it, and the worker's lines otherwise.
"""

from __future__ import annotations

import itertools
import linecache
import re
import sys
import traceback
import types
from collections.abc import Sequence

from mesh._protocol import ErrorInfo, TracebackData, TracebackFrame

__all__ = ["render", "traceback_data", "traceback_text"]

# Where a stack goes in a traceback's template: a line of its own, after the indent an
# exception group gives its members' lines.
_STACK_MARK = "\x00mesh-stack {}\x00"
_STACK_LINE = re.compile(r"(.*)\x00mesh-stack (\d+)\x00")


# Frames of one line repeated past this (a recursion) print as one line saying how many.
_RECURSIVE_CUTOFF: int = getattr(traceback, "_RECURSIVE_CUTOFF", 3)


class _MarkedStack(traceback.StackSummary):
    """A stack that formats as marker lines (see :func:`traceback_data`)."""

    lines: list[str]

    def format(self) -> list[str]:
        return self.lines


def traceback_data(exc: BaseException, tb: types.TracebackType | None) -> TracebackData:
    """``exc``'s traceback (from ``tb``) as data: the text ``traceback`` prints, with its
    stacks (one per exception of the chain) as marker lines, and the frames of each.

    A recursion's repeated frames beyond the few ``traceback`` prints are left out, its
    "[Previous line repeated N more times]" line kept as text: a RecursionError's 1,000
    frames would cost a hundred kilobytes a job."""
    te = traceback.TracebackException(type(exc), exc, tb, compact=True)
    by_value = _by_value_files(exc, tb)
    stacks: list[tuple[TracebackFrame, ...]] = []

    def mark(frames: list[traceback.FrameSummary]) -> str:
        stacks.append(tuple(_frame(f, by_value) for f in frames))
        return _STACK_MARK.format(len(stacks) - 1) + "\n"

    todo, seen = [te], set()
    while todo:
        t = todo.pop()
        if id(t) in seen:
            continue
        seen.add(id(t))
        lines, chunk = [], []
        for _, run in itertools.groupby(t.stack, lambda f: (f.filename, f.lineno, f.name)):
            frames = list(run)
            chunk += frames[:_RECURSIVE_CUTOFF]
            if len(frames) > _RECURSIVE_CUTOFF:
                lines += [mark(chunk), traceback.StackSummary.from_list(frames).format()[-1]]
                chunk = []
        if chunk:
            lines.append(mark(chunk))
        marked = _MarkedStack(t.stack)
        marked.lines = lines
        t.stack = marked
        todo.extend(c for c in (t.__cause__, t.__context__) if c is not None)
        todo.extend(getattr(t, "exceptions", None) or ())  # an exception group's members
    return "".join(te.format()), tuple(stacks)


def _frame(f: traceback.FrameSummary, by_value: set[str]) -> TracebackFrame:
    line = linecache.getline(f.filename, f.lineno) if f.lineno else ""
    positions = (f.lineno, *(getattr(f, a, None) for a in ("end_lineno", "colno", "end_colno")))
    lineno, end_lineno, colno, end_colno = (-1 if p is None else p for p in positions)
    return (f.filename, lineno, f.name, line, end_lineno, colno, end_colno, f.filename in by_value)


def _by_value_files(exc: BaseException, tb: types.TracebackType | None) -> set[str]:
    """Files of the frames (of ``exc`` and its chain) whose code came by value: their
    globals are not their module's, cloudpickle made them (``__main__``, a notebook,
    the user's own modules). The client's source of those is the source they ran."""
    files: set[str] = set()
    todo: list[tuple[BaseException, types.TracebackType | None]] = [(exc, tb)]
    seen: set[int] = set()
    while todo:
        e, e_tb = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        for frame, _ in traceback.walk_tb(e_tb):
            name = frame.f_globals.get("__name__")
            module = sys.modules.get(name) if isinstance(name, str) else None
            if module is None or getattr(module, "__dict__", None) is not frame.f_globals:
                files.add(frame.f_code.co_filename)
        chained = [e.__cause__, e.__context__, *(getattr(e, "exceptions", None) or ())]
        todo.extend((c, c.__traceback__) for c in chained if isinstance(c, BaseException))
    return files


def _format_stack(frames: Sequence[TracebackFrame], here: bool) -> str:
    """A stack as ``traceback`` prints it. ``here``: on the client, whose source (its
    ``linecache``: files, notebook cells) is preferred for code that came by value and
    used for any line the worker could not read."""
    summaries = []
    for filename, lineno, name, worker_line, end_lineno, colno, end_colno, by_value in frames:
        line = worker_line
        if here and (by_value or not line) and lineno > 0:
            linecache.checkcache(filename)  # as a local traceback does: a changed file is reread
            line = linecache.getline(filename, lineno) or worker_line
        if sys.version_info >= (3, 11):  # columns: the ^^^ under a call
            fs = traceback.FrameSummary(
                filename, None if lineno < 0 else lineno, name, lookup_line=False, line=line,
                end_lineno=None if end_lineno < 0 else end_lineno,
                colno=None if colno < 0 else colno, end_colno=None if end_colno < 0 else end_colno,
            )  # fmt: skip
        else:
            fs = traceback.FrameSummary(
                filename, None if lineno < 0 else lineno, name, lookup_line=False, line=line
            )
        summaries.append(fs)
    return "".join(traceback.StackSummary.from_list(summaries).format())


def render(data: TracebackData, here: bool) -> str:
    """The text of a traceback from its data (see :func:`traceback_data`)."""
    template, stacks = data
    lines: list[str] = []
    for line in template.split("\n"):
        m = _STACK_LINE.fullmatch(line)
        if m is None or int(m[2]) >= len(stacks):
            lines.append(line)
            continue
        text = _format_stack(stacks[int(m[2])], here)
        lines.extend(m[1] + part for part in text.split("\n")[:-1])
    return "\n".join(lines)


def traceback_text(info: ErrorInfo) -> str:
    """A job's remote traceback as this process shows it: rendered from the frames the
    worker sent with this process's own source where the job's code came from here (a
    script, a notebook cell, a module shipped by value), else the worker's text."""
    data = info.tb_data
    if data is not None:
        try:
            return render(data, here=True)
        except Exception:  # odd data from the worker: its own text still says it all
            pass
    return info.traceback
