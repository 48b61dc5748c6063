"""The blog's Levenshtein distances on the mesh: pure Python from a local function at
once, and the C extension (``python-Levenshtein``) through ``_env`` on nodes that lack it.

    .venv/bin/python examples/levenshtein.py          # MESH_PEERS, else a local mesh

The ``_env`` part needs the nodes to reach a package index (or a wheelhouse given with
``mesh-node --pip-option=--find-links=DIR``); without one it prints the node's reason.
"""

from __future__ import annotations

import time

import mesh

WORDS = ["kitten", "sitting", "saturday", "sunday", "rosettacode", "raisethysword",
         "mesh", "lanmesh", "picloud", "cloud", "levenshtein", "distance"]  # fmt: skip


def distance(a: str, b: str) -> int:
    """Pure-Python Levenshtein distance (runs on any node: it travels by value)."""
    prev = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        cur = [i]
        for j, cb in enumerate(b, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
        prev = cur
    return prev[-1]


def distances(word: str) -> list[int]:
    return [distance(word, other) for other in WORDS]


def cdistances(word: str) -> list[int]:
    import Levenshtein  # the C extension: present only in the job's environment

    return [Levenshtein.distance(word, other) for other in WORDS]


class ClosestWords:
    """The blog's closest-words class: its bound method travels with the instance."""

    def __init__(self, words: list[str]) -> None:
        self.words = words

    def closest(self, word: str) -> str:
        return min((w for w in self.words if w != word), key=lambda w: distance(word, w))


def closest(finder: ClosestWords, word: str) -> str:
    return finder.closest(word)


def main() -> None:
    t0 = time.perf_counter()
    print("distances (pure Python):", mesh.result(mesh.map(distances, WORDS[:3])))
    finder = ClosestWords(WORDS)
    print("closest, bound method:  ", mesh.result(mesh.map(finder.closest, WORDS[:4])))
    print("closest, wrapper:       ", mesh.result(mesh.map(closest, [finder] * 4, WORDS[:4])))
    print(f"  ({time.perf_counter() - t0:.2f} s)")
    t0 = time.perf_counter()
    try:
        out = mesh.result(mesh.map(cdistances, WORDS[:3], _env=["python-Levenshtein"]))
        print("cdistances (C, _env):   ", out, f"({time.perf_counter() - t0:.2f} s, first build)")
    except mesh.EnvBuildFailed as exc:
        print("cdistances: the nodes could not build the environment:", exc)
    mesh.close()


if __name__ == "__main__":
    main()
