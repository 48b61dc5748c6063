"""Failed and killed jobs' submissions, kept for the console's Retry (node/_jobs.py).

A bounded store: within a byte budget the oldest failures are dropped first, and a
function's blob counts once however many of its jobs are kept. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from mesh._protocol import Payload

if TYPE_CHECKING:
    from mesh.node._job_types import Func

__all__ = ["RETAINED_OVERHEAD", "RETAIN_BYTES", "Retained", "RetainedSubmissions"]

# Kept submissions' budget, in bytes of arguments and functions.
RETAIN_BYTES = 32 * 1024 * 1024
RETAINED_OVERHEAD = 256  # bytes a kept submission costs beside its arguments


@dataclass(frozen=True, slots=True)
class Retained:
    """What a failed or killed job was submitted with: enough to run it again."""

    func: Func
    args: Payload
    owner: int
    cores: int
    label: str
    max_runtime: float
    priority: int
    kill_process: bool

    @property
    def size(self) -> int:
        """Its arguments' bytes and a record's overhead (its function counts once per
        function kept, see RetainedSubmissions)."""
        args = self.args if isinstance(self.args, tuple) else (self.args,)
        return sum(len(a) for a in args) + RETAINED_OVERHEAD


class RetainedSubmissions:
    """Submissions by job id, oldest first, within ``budget_bytes``."""

    def __init__(self, budget_bytes: int = RETAIN_BYTES) -> None:
        self.budget_bytes = budget_bytes
        self.bytes = 0  # what the kept submissions cost now
        self._kept: OrderedDict[str, Retained] = OrderedDict()
        self._funcs: dict[int, int] = {}  # id(Func) -> submissions kept of it

    def __contains__(self, jid: object) -> bool:
        return jid in self._kept

    def __iter__(self) -> Iterator[str]:
        return iter(self._kept)

    def __len__(self) -> int:
        return len(self._kept)

    @property
    def functions(self) -> int:
        """How many distinct functions the kept submissions run."""
        return len(self._funcs)

    def get(self, jid: str) -> Retained | None:
        return self._kept.get(jid)

    def keep(self, jid: str, kept: Retained) -> None:
        """Keep ``kept`` as ``jid``'s (replacing one kept before); the oldest go first past
        the budget, and one bigger than the whole budget is not kept."""
        self.forget(jid)
        if kept.size + len(kept.func.blob) > self.budget_bytes:
            return
        self._kept[jid] = kept
        self.bytes += kept.size + self._count_func(kept.func, 1)
        while self.bytes > self.budget_bytes:
            _, old = self._kept.popitem(last=False)
            self.bytes -= old.size + self._count_func(old.func, -1)

    def forget(self, jid: str) -> None:
        kept = self._kept.pop(jid, None)
        if kept is not None:
            self.bytes -= kept.size + self._count_func(kept.func, -1)

    def _count_func(self, func: Func, delta: int) -> int:
        """Count a kept submission of ``func`` in or out: the bytes its blob adds or frees."""
        n = self._funcs.get(id(func), 0) + delta
        if n:
            self._funcs[id(func)] = n
        else:
            del self._funcs[id(func)]
        return len(func.blob) if (delta > 0 and n == 1) or (delta < 0 and n == 0) else 0
