"""Where jobs go: a pure function of the peer table and the work.

Least-loaded first: jobs are water-filled into nodes by load per worker slot, each
node taking at most the credit (room) it has left, so a node whose results come
back slowly is sent less. Ties go to the node with more workers, then by key, so
the answer is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["NodeView", "plan"]


@dataclass(frozen=True, slots=True)
class NodeView:
    key: str
    workers: int
    load: int  # slots busy or promised there: our in-flight jobs plus others' reported work
    room: int  # slots we may still fill before its credit runs out


@dataclass(slots=True)
class _Fill:
    level: float
    view: NodeView
    given: int = 0


def plan(n: int, nodes: Sequence[NodeView], cores: int = 1) -> list[tuple[str, int]]:
    """Split ``n`` jobs of ``cores`` slots each over ``nodes``: [(key, count), ...] with count > 0."""
    if n <= 0 or cores < 1:
        return []
    state = [_Fill(v.load / v.workers, v) for v in nodes if v.workers >= cores and v.room >= cores]
    done: dict[str, int] = {}
    while n > 0 and state:
        state.sort(key=lambda f: (f.level, -f.view.workers, f.view.key))
        head = state[0]
        v = head.view
        cap = (v.room - head.given * cores) // cores
        if cap <= 0:
            done[v.key] = head.given
            state.pop(0)
            continue
        if len(state) > 1:
            # enough to lift this node to the next one's level, and at least one job
            need = max(1, math.ceil((state[1].level - head.level) * v.workers / cores))
        else:
            need = n
        d = min(cap, n, need)
        head.given += d
        head.level += d * cores / v.workers
        n -= d
    for f in state:
        done[f.view.key] = f.given
    return [(key, count) for key, count in done.items() if count > 0]
