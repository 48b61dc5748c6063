"""mesh.files right after nodes start, before they know each other, and after a holder
is lost: real nodes, reached through TCP relays that this test can shut.

A shut relay holds every new connection (accepted, never passed on): the nodes, which
learn each other only by the relays' addresses, cannot link, while the client's own
connections, made before, keep working. That is a node that has not heard of its
peers yet, made to last as long as the test needs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from _helpers import blob_path, wait_until
from blake3 import blake3
from conftest import NodeProc

import mesh


class Gate:
    """A TCP relay on 127.0.0.1 to one node; ``shut()`` holds new connections."""

    def __init__(self, target: str) -> None:
        host, port = target.rsplit(":", 1)
        self._target = (host, int(port))
        self._server = socket.create_server(("127.0.0.1", 0))
        self._server.settimeout(0.1)
        self.address = f"127.0.0.1:{self._server.getsockname()[1]}"
        self._open = True
        self._closing = False
        self._socks: list[socket.socket] = []
        self._held: list[socket.socket] = []
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    def shut(self) -> None:
        self._open = False

    def release(self) -> None:
        """Open again; the connections held so far are reset (their owners retry)."""
        with self._lock:
            self._open = True
            held, self._held = self._held, []
        for s in held:
            s.close()

    def _accept(self) -> None:
        while not self._closing:
            try:
                sock, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self._lock:
                if not self._open:
                    self._held.append(sock)
                    continue
                self._socks.append(sock)
                try:
                    up = socket.create_connection(self._target)
                except OSError:
                    continue
                self._socks.append(up)
                for a, b in ((sock, up), (up, sock)):
                    t = threading.Thread(target=_pump, args=(a, b), daemon=True)
                    self._threads.append(t)
                    t.start()

    def close(self) -> None:
        self._closing = True
        self._threads[0].join(5)
        self._server.close()
        for s in self._socks + self._held:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
        for t in self._threads:
            t.join(5)
        for s in self._socks + self._held:
            s.close()

    def __enter__(self) -> Gate:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pump(src: socket.socket, dst: socket.socket) -> None:
    with contextlib.suppress(OSError):
        while data := src.recv(1 << 16):
            dst.sendall(data)
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def wait_for(cond: Callable[[], object], timeout_s: float = 20.0, what: str = "") -> None:
    wait_until(cond, timeout_s, what)


def read_where(name: str) -> tuple[bytes, str]:
    """In a job: the file's bytes and the path they were read from (its node's blob)."""
    import mesh

    with mesh.files.getf(name) as f:
        return f.read(), f.name


def ran_on(paths: list[str], nodes: list[NodeProc]) -> set[str]:
    return {n.name for n in nodes for p in paths if Path(p).is_relative_to(n.data_dir)}


# ---- right after start ----


def test_a_put_just_after_start_is_on_both_nodes_and_a_job_on_each_reads_it(node_factory, secret):
    # No --peer, no mDNS: the nodes know nothing of each other, only the client knows both.
    nodes = [node_factory(name="n1", workers=1), node_factory(name="n2", workers=1)]
    payload = os.urandom(9 << 20)  # more than two chunks: the copy streams
    with Gate(nodes[0].address) as g1, Gate(nodes[1].address) as g2:
        with mesh.Client([g1.address, g2.address], secret) as c:
            g1.shut()
            g2.shut()
            info = c.files.putf(payload, "start/a.bin", replicas=2)
            assert sorted(info.nodes) == ["n1", "n2"]
            for n in nodes:  # durable on both before put returned
                assert blake3(blob_path(n, info.hash).read_bytes()).hexdigest() == info.hash
            out = c.result(c.map(read_where, ["start/a.bin"] * 2))
            assert [d == payload for d, _ in out] == [True, True]
            assert ran_on([p for _, p in out], nodes) == {"n1", "n2"}
            # A second put of the same bytes moves nothing more and still names both.
            again = c.files.putf(payload, "start/b.bin", replicas=2)
            assert sorted(again.nodes) == ["n1", "n2"] and again.hash == info.hash


def test_a_node_that_has_not_heard_of_a_file_asks_the_nodes_it_knows(node_factory, secret):
    nodes = [node_factory(name="n1", workers=1), node_factory(name="n2", workers=1)]
    with Gate(nodes[0].address) as g1, Gate(nodes[1].address) as g2:
        with mesh.Client([g1.address, g2.address], secret) as c:
            g1.shut()
            g2.shut()
            info = c.files.putf("one copy only ✓", "start/one.txt", replicas=1)
            assert len(info.nodes) == 1
            # The client named each node to the other, but their links were held: now
            # reset, so each node's table knows the other and is waiting to retry.
            g1.release()
            g2.release()
            out = c.result(c.map(read_where, ["start/one.txt"] * 2))
            assert [d for d, _ in out] == ["one copy only ✓".encode()] * 2
            assert ran_on([p for _, p in out], nodes) == {"n1", "n2"}


# ---- putf(str) ----


def test_putf_takes_str_bytes_and_file_objects_and_refuses_others(node_factory, secret):
    import io

    import pytest

    node = node_factory(name="n1", workers=1)
    with mesh.Client([node.address], secret) as c:
        c.files.putf("héllo ✓", "s/str.txt")
        c.files.putf(b"bytes", "s/bytes.bin")
        c.files.putf(io.StringIO("text ✓"), "s/text.txt")
        c.files.putf(io.BytesIO(b"binary"), "s/bin.bin")
        got = {}
        for name in c.files.list("s/"):
            with c.files.getf(name) as f:
                got[name] = f.read()
        assert got == {
            "s/str.txt": "héllo ✓".encode(),
            "s/bytes.bin": b"bytes",
            "s/text.txt": "text ✓".encode(),
            "s/bin.bin": b"binary",
        }
        with pytest.raises(TypeError, match=r"putf\('s/n'\) takes a readable file object"):
            c.files.putf(42, "s/n")  # type: ignore[arg-type]
        assert not c.files.exists("s/n")


# ---- re-replication ----


def test_a_lost_holder_is_replaced_by_exactly_as_many_copies_as_asked(node_factory, secret):
    env = {"MESH_FILES_REREPLICATE_S": "1"}
    first = node_factory(name="n1", workers=1, env=env)
    nodes = [first] + [
        node_factory(name=f"n{i}", workers=1, env=env, extra=("--peer", first.address))
        for i in (2, 3, 4)
    ]
    with mesh.Client([n.address for n in nodes], secret) as c:
        wait_for(lambda: all(lk.workers for lk in c.nodes()) and len(c.nodes()) == 4)
        probe = "probe"

        def linked() -> bool:
            c.files.putf(b"probe", probe, replicas=4)
            return len(c.files.info(probe).nodes) == 4

        wait_for(linked, what="every file link up")
        c.files.delete(probe)

        two = c.files.putf(os.urandom(300_000), "r/two.bin", replicas=2)
        three = c.files.putf(os.urandom(300_000), "r/three.bin", replicas=3)
        assert len(two.nodes) == 2 and len(three.nodes) == 3
        victim_name = next(n for n in two.nodes if n in three.nodes)
        victim = next(n for n in nodes if n.name == victim_name)
        victim.stop(signal.SIGKILL)
        survivors = [n for n in nodes if n is not victim]

        def held(h: str) -> list[str]:
            return sorted(n.name for n in survivors if blob_path(n, h).exists())

        wait_for(lambda: len(held(two.hash)) >= 2 and len(held(three.hash)) >= 3,
                 what="copies restored")  # fmt: skip
        time.sleep(3)  # several restore rounds (every 0.5 s): none may add another copy
        assert len(held(two.hash)) == 2 and len(held(three.hash)) == 3
        assert sorted(c.files.info("r/two.bin").nodes) == held(two.hash)
        assert sorted(c.files.info("r/three.bin").nodes) == held(three.hash)


# ---- the catalog keeps each version's target (pure: a BlobStore on a temp dir) ----


def test_the_catalog_keeps_the_copies_each_version_was_put_with(tmp_path):
    import sqlite3

    from mesh.node._blobs import BlobStore

    a1 = ("a", "1" * 64, 3, 10.0, False)
    a2 = ("a", "2" * 64, 4, 20.0, False)
    b1 = ("b", "3" * 64, 5, 10.0, False)
    store = BlobStore(tmp_path)
    assert store.merge([a1, b1], [2]) == [a1, b1]  # b's target not told: 0
    assert (store.target("a"), store.target("b")) == (2, 0)
    assert store.merge([b1], [3]) == []  # the same version: only its target is learned
    assert store.merge([a1], [5]) == [] and store.target("a") == 5
    assert store.merge([a2]) == [a2] and store.target("a") == 0  # a new version: not known
    assert store.merge([a1], [7]) == [] and store.target("a") == 0  # an older one: ignored
    store.close()
    again = BlobStore(tmp_path)
    assert (again.target("a"), again.target("b")) == (0, 3) and again.current("a") == a2
    again.close()

    # A catalog written before targets were kept gains the column, every target unknown.
    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "files.sqlite3")
    db.execute("CREATE TABLE versions (name TEXT PRIMARY KEY, hash TEXT NOT NULL, "
               "size INTEGER NOT NULL, time REAL NOT NULL, deleted INTEGER NOT NULL)")  # fmt: skip
    db.execute("INSERT INTO versions VALUES (?,?,?,?,?)", ("a", "1" * 64, 3, 10.0, 0))
    db.commit()
    db.close()
    (old / "blobs").mkdir()
    (old / "blobs" / "HASH").write_text("BLAKE3\n")
    upgraded = BlobStore(old)
    assert upgraded.current("a") == a1 and upgraded.target("a") == 0
    assert upgraded.merge([a1], [2]) == [] and upgraded.target("a") == 2
    upgraded.close()
