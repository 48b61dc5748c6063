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


def plan(n: int, nodes: Sequence[NodeView], cores: int = 1) -> list[tuple[str, int]]:
    """Split ``n`` jobs of ``cores`` slots each over ``nodes``: [(key, count), ...] with count > 0."""
    if n <= 0 or cores < 1:
        return []
    state = [
        [v.load / v.workers, v, 0]
        for v in nodes
        if v.workers >= cores and v.room >= cores
    ]
    done: dict[str, int] = {}
    while n > 0 and state:
        state.sort(key=lambda s: (s[0], -s[1].workers, s[1].key))
        level, v, given = state[0]
        cap = (v.room - given * cores) // cores
        if cap <= 0:
            done[v.key] = given
            state.pop(0)
            continue
        if len(state) > 1:
            # enough to lift this node to the next one's level, and at least one job
            need = max(1, math.ceil((state[1][0] - level) * v.workers / cores))
        else:
            need = n
        d = min(cap, n, need)
        state[0][2] = given + d
        state[0][0] = level + d * cores / v.workers
        n -= d
    for _, v, given in state:
        done[v.key] = given
    return [(key, count) for key, count in done.items() if count > 0]
