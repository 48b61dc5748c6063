"""Digests of a node's file catalog, for anti-entropy between nodes: pure functions.

Two nodes compare catalogs by ``BUCKETS`` short hashes (names hash to buckets; a
bucket's hash covers its versions in name order) and send each other only the versions
of the buckets that differ, rather than whole catalogs; the blobs a node holds are
compared by one hash of the set. An empty bucket hashes to zeros, so the digest of an
empty catalog is all zeros. No I/O: node/_files.py sends and answers the messages.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence

from mesh._protocol import FileEntry
from mesh.errors import RemoteProtocolError

__all__ = ["BUCKETS", "DIGEST_SIZE", "bucket_of", "catalog_digest", "differing", "in_buckets",
           "set_digest"]  # fmt: skip

BUCKETS = 64
DIGEST_SIZE = 8  # bytes per bucket: 64 buckets cost 512 bytes a digest
EMPTY = bytes(DIGEST_SIZE)


def bucket_of(name: str) -> int:
    """The bucket a file name falls in (the same on every node and every run)."""
    return (
        hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=2).digest()[0] % BUCKETS
    )


def _line(e: FileEntry) -> bytes:
    # repr of the float: the exact value, so two nodes agree only on identical versions
    return f"{e[0]}\0{e[1]}\0{e[2]}\0{e[3]!r}\0{int(e[4])}\n".encode("utf-8", "surrogatepass")


def catalog_digest(entries: Iterable[FileEntry]) -> tuple[bytes, ...]:
    """``BUCKETS`` hashes of a catalog's versions (tombstones too: a delete must spread)."""
    buckets: list[list[FileEntry]] = [[] for _ in range(BUCKETS)]
    for e in entries:
        buckets[bucket_of(e[0])].append(e)
    out = []
    for items in buckets:
        if not items:
            out.append(EMPTY)
            continue
        h = hashlib.blake2b(digest_size=DIGEST_SIZE)
        for e in sorted(items, key=lambda e: e[0]):
            h.update(_line(e))
        out.append(h.digest())
    return tuple(out)


def set_digest(hashes: Iterable[str]) -> bytes:
    """One hash of a set of blob hashes (the blobs a node holds)."""
    items = sorted(hashes)
    if not items:
        return EMPTY
    return hashlib.blake2b("\n".join(items).encode(), digest_size=DIGEST_SIZE).digest()


def differing(mine: Sequence[bytes], theirs: Sequence[bytes], sender: str) -> tuple[int, ...]:
    """The buckets whose hashes differ. Raises RemoteProtocolError naming ``sender`` for a
    digest that is not ``BUCKETS`` hashes of ``DIGEST_SIZE`` bytes."""
    if len(theirs) != BUCKETS or any(len(b) != DIGEST_SIZE for b in theirs):
        raise RemoteProtocolError(
            f"file digest from {sender}: expected {BUCKETS} hashes of {DIGEST_SIZE} bytes, "
            f"got {len(theirs)}"
        )
    return tuple(i for i, (a, b) in enumerate(zip(mine, theirs, strict=True)) if a != b)


def in_buckets(entries: Iterable[FileEntry], buckets: Iterable[int]) -> list[FileEntry]:
    """The versions whose names fall in ``buckets``, by name (unknown buckets: none)."""
    wanted = set(buckets)
    return sorted((e for e in entries if bucket_of(e[0]) in wanted), key=lambda e: e[0])
