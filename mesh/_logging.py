"""One place that keeps a flood of identical log lines from filling a disk.

A hostile peer can make the same line repeat thousands of times a second (a refused
connection, the OS's "too many open files" on accept): :class:`RepeatFilter` lets
the first few of each kind through per period and then counts, and says how many it
dropped when the period ends, so a log stays readable and its size bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

__all__ = ["RepeatFilter", "install_repeat_filter"]


class RepeatFilter(logging.Filter):
    """Pass at most ``burst`` records of one kind (logger, level, message template) per
    ``period_s``; the next one after the period carries how many were dropped."""

    def __init__(
        self,
        burst: int = 5,
        period_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_kinds: int = 1024,
    ) -> None:
        super().__init__()
        self.burst = burst
        self.period_s = period_s
        self._clock = clock
        self._max_kinds = max_kinds
        # kind -> [period start, records seen in it]; dropped = seen - burst.
        self._kinds: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        kind = (record.name, record.levelno, str(record.msg))
        now = self._clock()
        state = self._kinds.get(kind)
        if state is None or now - state[0] >= self.period_s:
            dropped = int(state[1]) - self.burst if state is not None else 0
            if state is None and len(self._kinds) >= self._max_kinds:
                self._forget_old(now)
            self._kinds[kind] = [now, 1.0]
            if dropped > 0:
                record.msg = f"{record.msg} [{dropped} similar lines dropped in the last {self.period_s:g} s]"
            return True
        state[1] += 1
        return state[1] <= self.burst

    def _forget_old(self, now: float) -> None:
        """Bound the table: drop kinds whose period ended (their drop count is lost)."""
        for kind, state in list(self._kinds.items()):
            if now - state[0] >= self.period_s:
                del self._kinds[kind]
        while len(self._kinds) >= self._max_kinds:
            del self._kinds[next(iter(self._kinds))]


def install_repeat_filter(
    logger: logging.Logger | None = None, *, burst: int = 5, period_s: float = 10.0
) -> RepeatFilter:
    """Put one :class:`RepeatFilter` on every handler of ``logger`` (the root logger):
    a handler filter sees records of every logger, asyncio's own included."""
    target = logger or logging.getLogger()
    flt = RepeatFilter(burst, period_s)
    for handler in target.handlers:
        handler.addFilter(flt)
    return flt
