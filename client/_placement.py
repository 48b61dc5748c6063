"""Where jobs go: a pure function of the peer table and the work.

Least-loaded first: jobs are water-filled into nodes by load per worker slot, each
node taking at most the credit (room) it has left, so a node whose results come
back slowly is sent less. Ties go to a node in ``prefer`` (it holds the job's
``_files``) first, then to the node with more workers, then by key, so the answer is
deterministic; a preference never leaves a less-loaded node idle.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

__all__ = ["NodeView", "plan"]


@dataclass(frozen=True, slots=True)
class NodeView:
    key: str
    workers: int
    load: int  # slots busy or promised there: our in-flight jobs plus others' reported work
    room: int  # slots we may still fill before its credit runs out


def plan(
    n: int, nodes: Sequence[NodeView], cores: int = 1, prefer: Collection[str] = ()
) -> list[tuple[str, int]]:
    """Split ``n`` jobs of ``cores`` slots each over ``nodes``: [(key, count), ...] with count > 0.

    A heap keeps the least-loaded node on top: O(k log N) for k fill steps over N nodes.
    """
    if n <= 0 or cores < 1:
        return []
    views = [v for v in nodes if v.workers >= cores and v.room >= cores]
    given = [0] * len(views)
    heap = [
        (v.load / v.workers, v.key not in prefer, -v.workers, v.key, i) for i, v in enumerate(views)
    ]
    heapq.heapify(heap)
    while n > 0 and heap:
        level, other, neg_workers, key, i = heapq.heappop(heap)
        v = views[i]
        cap = (v.room - given[i] * cores) // cores
        if cap <= 0:
            continue  # this node's credit is spent
        if heap:
            # enough to lift this node to the next one's level, and at least one job
            need = max(1, math.ceil((heap[0][0] - level) * v.workers / cores))
        else:
            need = n
        d = min(cap, n, need)
        given[i] += d
        n -= d
        heapq.heappush(heap, (level + d * cores / v.workers, other, neg_workers, key, i))
    return sorted((v.key, g) for v, g in zip(views, given, strict=True) if g > 0)
