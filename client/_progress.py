"""Progress bars for ``result`` and ``iresult``: done/total, rate, ETA and errors (tqdm).

``progress=True`` draws the bar at once, ``None`` (the default) only once the wait
has lasted ``AUTO_DELAY_S``, ``False`` never; and never when the stream (stderr) is
not a terminal, so logs and pipes stay clean. Jobs are counted by callbacks on the
client's loop thread; the bar is drawn by a thread of its own, so it moves (elapsed
time, ETA) even while no job finishes, and the loop never waits on the terminal.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sys
import threading
import time
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any, TypeVar

from mesh._protocol import DONE

if TYPE_CHECKING:
    from mesh.client._ledger import JobEntry
    from tqdm import tqdm

__all__ = ["AUTO_DELAY_S", "Progress", "track", "watch"]

T = TypeVar("T")

AUTO_DELAY_S = 2.0  # with progress=None, waits shorter than this show nothing
REFRESH_S = 0.2


class Progress:
    """A bar over ``total`` jobs; ``job_done`` may be called from any thread."""

    def __init__(
        self,
        total: int,
        stream: IO[str],
        *,
        delay_s: float = 0.0,
        desc: str = "jobs",
        refresh_s: float = REFRESH_S,
    ) -> None:
        self.total = total
        self.done = 0
        self.errors = 0
        self._stream = stream
        self._delay_s = delay_s
        self._desc = desc
        self._refresh_s = refresh_s
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: tqdm[Any] | None = None
        self._shown_errors = 0

    def job_done(self, job: JobEntry) -> None:
        with self._lock:
            self.done += 1
            if job.state != DONE:
                self.errors += 1

    def start(self) -> None:
        # A terminal that reports no size (0x0: some consoles, fresh ptys) would hide tqdm's
        # bar altogether: draw 80 columns there.
        sized = _terminal_size(self._stream) != (0, 0)
        self._bar = _bar_class()(
            total=self.total, desc=self._desc, unit="job", file=self._stream, delay=self._delay_s,
            dynamic_ncols=sized, ncols=None if sized else 80, nrows=None if sized else 24,
            mininterval=0.0, smoothing=0.1, leave=True,
        )  # fmt: skip
        self._draw(final=False)
        self._thread = threading.Thread(target=self._run, name="mesh-progress", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self._draw(final=False)

    def _draw(self, *, final: bool) -> None:
        bar = self._bar
        if bar is None:
            return
        with self._lock:
            done, errors = self.done, self.errors
        if errors != self._shown_errors:
            self._shown_errors = errors
            bar.set_postfix_str(f"errors={errors}", refresh=False)
        if done > bar.n:
            bar.update(done - bar.n)  # draws unless still within the delay
        elif time.time() >= bar.start_t + self._delay_s and not final:
            bar.refresh()  # elapsed time and ETA move while nothing finishes

    def close(self) -> None:
        """Stop drawing; a bar that was shown is left with its final counts."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._bar is not None:
            self._draw(final=True)
            self._bar.close()
            self._bar = None


@functools.cache
def _bar_class() -> type[tqdm[Any]]:
    """tqdm, imported once a bar is drawn (`import mesh` stays light), minus its monitor
    thread: ours draws."""
    from tqdm import tqdm

    class _Bar(tqdm):  # type: ignore[type-arg]
        monitor_interval = 0

    return _Bar


def _terminal_size(stream: IO[str]) -> tuple[int, int]:
    try:
        size = os.get_terminal_size(stream.fileno())
    except (AttributeError, ValueError, OSError):
        return (0, 0)
    return (size.columns, size.lines)


def _terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def make(total: int, progress: bool | None, *, single: bool = False,
         stream: IO[str] | None = None) -> Progress | None:  # fmt: skip
    """The bar to show for waiting on ``total`` jobs, or None for none."""
    out = stream if stream is not None else sys.stderr
    if progress is False or total == 0 or (progress is None and single):
        return None
    if out is None or not _terminal(out):
        return None
    return Progress(total, out, delay_s=0.0 if progress else AUTO_DELAY_S)


@contextlib.contextmanager
def watch(total: int, progress: bool | None, *, single: bool = False) -> Iterator[Progress | None]:
    """A bar over ``total`` jobs while the body waits for them (``result``); the caller
    counts jobs into it with ``job_done`` callbacks."""
    bar = make(total, progress, single=single)
    if bar is None:
        yield None
        return
    bar.start()
    try:
        yield bar
    finally:
        bar.close()


def track(bar: Progress | None, results: Iterator[T]) -> Iterator[T]:
    """``results`` (from ``iresult``), with ``bar`` drawn while it is iterated."""
    if bar is None:
        return results
    return _tracked(bar, results)


def _tracked(bar: Progress, results: Iterator[Any]) -> Iterator[Any]:
    bar.start()  # here, not in track(): a generator never iterated never runs its finally
    try:
        yield from results
    finally:
        bar.close()
