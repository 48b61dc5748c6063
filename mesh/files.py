"""``mesh.files``: the mesh file store, from a script and from inside a job alike.

    mesh.files.put("cat.jpg")                  # durable on 2 nodes when it returns
    with mesh.files.getf("cat.jpg") as f: ...  # seekable, never loaded whole
    mesh.files.sync("photos/", prefix="photos/")   # sends only what changed

Content-addressed: a name maps to a version (BLAKE3 hash, size, time), and blobs live on
the nodes' disks, near the work. In a script the calls go through the default client
(``mesh.connect``/``MESH_PEERS``/a local mesh); inside a job they go through the
job's own node, which fetches a blob it lacks from a peer and keeps the copy.
"""

from __future__ import annotations

import os
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from mesh.client._files import FileInfo, Files, SyncReport

__all__ = ["delete", "exists", "get", "getf", "info", "list", "put", "putf", "sync"]

_list = list


def _files() -> Files:
    import mesh
    from mesh.client._files import job_files

    if mesh.open_client() is None:
        inside = job_files()  # in a job: through its node
        if inside is not None:
            return inside
    return mesh.default_client().files


def put(path: str | os.PathLike[str], name: str | None = None, replicas: int = 2) -> FileInfo:
    """Store a local file under ``name`` (default: its file name); returns once it is
    durable on ``replicas`` nodes (or all, if fewer)."""
    return _files().put(path, name, replicas)


def putf(fileobj: IO[bytes] | IO[str] | bytes | str, name: str, replicas: int = 2) -> FileInfo:
    """Store what a readable file object, ``bytes`` or ``str`` (as UTF-8) holds under
    ``name``."""
    return _files().putf(fileobj, name, replicas)


def get(name: str, path: str | os.PathLike[str] | None = None) -> str:
    """Write ``name`` to a local ``path`` (default: its last component); return the path."""
    return _files().get(name, path)


def getf(name: str) -> IO[bytes]:
    """A readable, seekable file object with the content of ``name``."""
    return _files().getf(name)


def delete(name: str) -> None:
    """Delete ``name`` on every node (nodes that are away learn it when they return)."""
    _files().delete(name)


def list(prefix: str = "") -> _list[str]:  # PiCloud's name
    """The names in the store starting with ``prefix``, sorted."""
    return _files().list(prefix)


def exists(name: str) -> bool:
    return _files().exists(name)


def info(name: str) -> FileInfo:
    """Size, hash, version time and the nodes holding ``name``; MeshFileNotFound if none."""
    return _files().info(name)


def sync(source: str | os.PathLike[str], prefix: str = "", replicas: int = 2) -> SyncReport:
    """Upload the files of a folder or glob whose content changed; report what was sent."""
    return _files().sync(source, prefix, replicas)
