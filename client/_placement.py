"""Where jobs go: a pure function of the peer table and the work.

Least-loaded first: jobs are water-filled into nodes by load per worker slot, each
node taking at most the credit (room) it has left, so a node whose results come
back slowly is sent less. Ties go to a node in ``prefer`` (it holds the job's
``_files``) first, then to the node with more workers, then by key, so the answer is
deterministic; a preference never leaves a less-loaded node idle.
"""

from __future__ import annotations

import heapq
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
    if n == 1:  # a call: the heap's first pop, without building one (no closure, no sort)
        return _one(nodes, cores, prefer)
    return _fill(n, nodes, cores, prefer)


def _fill(
    n: int, nodes: Sequence[NodeView], cores: int, prefer: Collection[str]
) -> list[tuple[str, int]]:
    """``plan`` for any ``n`` >= 1: the water-filling itself."""
    views = [v for v in nodes if v.workers >= cores and v.room >= cores]
    given = [0] * len(views)

    def entry(i: int) -> tuple[float, bool, int, str, int]:
        # a node's level from its counts (not summed step by step, so equal levels
        # stay exactly equal), then the tie-breakers
        v = views[i]
        level = (v.load + given[i] * cores) / v.workers
        return (level, v.key not in prefer, -v.workers, v.key, i)

    heap = [entry(i) for i in range(len(views))]
    heapq.heapify(heap)
    while n > 0 and heap:
        if n >= 2 * len(heap) > 2 and _level_and_alike(heap):
            # Every node left at one level with as many workers: one job each per
            # round, in the heap's order, is what the steps below would do; give
            # whole rounds at once (a map's thousands of jobs cost a few steps).
            rounds = min(n // len(heap), *((views[e[4]].room - given[e[4]] * cores) // cores
                                           for e in heap))  # fmt: skip
            if rounds > 0:
                for e in heap:
                    given[e[4]] += rounds
                n -= rounds * len(heap)
                heap = [entry(e[4]) for e in heap]  # still a heap: all rose alike
                continue
        i = heapq.heappop(heap)[4]
        v = views[i]
        cap = (v.room - given[i] * cores) // cores
        if cap <= 0:
            continue  # this node's credit is spent
        if heap:
            # enough to lift this node to the next one's level, and at least one job:
            # ceil((level_j - level_i) * workers_i / cores), in integers
            j = heap[0][4]
            u = views[j]
            gap = (u.load + given[j] * cores) * v.workers - (v.load + given[i] * cores) * u.workers
            need = max(1, -(-gap // (u.workers * cores)))
        else:
            need = n
        d = min(cap, n, need)
        given[i] += d
        n -= d
        heapq.heappush(heap, entry(i))
    return sorted((v.key, g) for v, g in zip(views, given, strict=True) if g > 0)


def _level_and_alike(heap: list[tuple[float, bool, int, str, int]]) -> bool:
    """Whether every node in ``heap`` is at the same level with the same workers."""
    level, _, neg_workers = heap[0][:3]
    return all(e[0] == level and e[2] == neg_workers for e in heap)


def _one(nodes: Sequence[NodeView], cores: int, prefer: Collection[str]) -> list[tuple[str, int]]:
    """``plan(1, ...)``: the node the heap would pop first, compared by the same key."""
    best: NodeView | None = None
    best_key: tuple[float, bool, int, str] | None = None
    for v in nodes:
        if v.workers >= cores and v.room >= cores:
            key = (v.load / v.workers, v.key not in prefer, -v.workers, v.key)
            if best_key is None or key < best_key:
                best, best_key = v, key
    return [] if best is None else [(best.key, 1)]
