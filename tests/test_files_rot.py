"""Bits that rot in a blob on a node's disk after it was checked once (inode, size and
mtime unchanged, so no stamp gives it away): never served, replaced from a good copy,
and when none is left, an error that says so. Real nodes, real disks."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from _helpers import blob_path, wait_until
from blake3 import blake3
from conftest import NodeProc

import mesh
from mesh.errors import FileCorrupted


def wait_for(cond: Callable[[], object], timeout_s: float = 20.0, what: str = "") -> None:
    wait_until(cond, timeout_s, what)


def rot(path: Path, offset: int) -> None:
    """Flip one bit at ``offset`` in place, then put the mtime back: only the bytes change."""
    before = path.stat()
    path.chmod(stat.S_IRUSR | stat.S_IWUSR)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)[0]
        f.seek(offset)
        f.write(bytes([byte ^ 0x10]))
    path.chmod(stat.S_IMODE(before.st_mode))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    after = path.stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == (
        before.st_ino, before.st_size, before.st_mtime_ns,
    )  # fmt: skip


def good(path: Path, h: str) -> bool:
    return path.exists() and blake3(path.read_bytes()).hexdigest() == h


def peered(node_factory: Callable[..., NodeProc]) -> tuple[NodeProc, NodeProc]:
    n1 = node_factory(name="n1", workers=1)
    n2 = node_factory(name="n2", workers=1, extra=("--peer", n1.address))
    return n1, n2


def linked(c: mesh.Client) -> None:
    def ok() -> bool:
        c.files.putf(b"probe", "probe", replicas=2)
        return len(c.files.info("probe").nodes) == 2

    wait_for(ok, what="both nodes linked")
    c.files.delete("probe")


def reads_in_job(name: str, workdir: str) -> dict[str, object]:
    """Every way a job reads a file: whole, in pieces to the end, and get to a path."""
    import mesh

    out: dict[str, object] = {}
    with mesh.files.getf(name) as f:
        out["node"] = f.name
        out["whole"] = f.read()
    try:
        with mesh.files.getf(name) as f:
            out["pieces"] = f.read(1000) + f.read()
    except FileCorrupted as exc:
        out["pieces"] = exc
    dest = os.path.join(workdir, f"got-{os.getpid()}")
    try:
        out["get"] = Path(mesh.files.get(name, dest)).read_bytes()
    except FileCorrupted as exc:
        out["get"] = exc
    return out


def on(node: NodeProc, results: list[dict[str, object]]) -> dict[str, object]:
    (mine,) = [r for r in results if Path(str(r["node"])).is_relative_to(node.data_dir)]
    return mine


def test_a_rotted_blob_read_in_place_by_a_job_is_replaced_from_the_other_holder(
    node_factory, secret, tmp_path
):
    n1, n2 = peered(node_factory)
    payload = os.urandom(3 << 20)
    with mesh.Client([n1.address, n2.address], secret) as c:
        linked(c)
        info = c.files.putf(payload, "rot/a.bin", replicas=2)
        assert sorted(info.nodes) == ["n1", "n2"]
        first = c.result(c.map(reads_in_job, ["rot/a.bin"] * 2, workdir=str(tmp_path)))
        assert all(r["whole"] == payload for r in first)  # both copies checked once
        rot(blob_path(n1, info.hash), len(payload) - 10)  # near the end: read last
        # One job per node (one worker each): the one on n1 reads the rotted copy in place.
        results = c.result(c.map(reads_in_job, ["rot/a.bin"] * 2, workdir=str(tmp_path)))
        mine = on(n1, results)
        assert mine["whole"] == payload  # nothing read yet: the good copy, read instead
        assert mine["pieces"] == payload and mine["get"] == payload
        assert on(n2, results)["whole"] == payload
        assert good(blob_path(n1, info.hash), info.hash)  # replaced from n2

        # Rotted again, now in a part read before the end: the end raises, never bad bytes.
        rot(blob_path(n1, info.hash), 10)
        results = c.result(c.map(reads_in_job, ["rot/a.bin"] * 2, workdir=str(tmp_path)))
        mine = on(n1, results)
        assert mine["whole"] == payload and mine["get"] == payload
        assert good(blob_path(n1, info.hash), info.hash)


def read_pieces_in_job(name: str) -> object:
    import mesh

    got = []
    try:
        with mesh.files.getf(name) as f:
            got.append(f.read(1000))
            got.append(f.read())
    except FileCorrupted as exc:
        with mesh.files.getf(name) as f:  # opened again: the good copy
            return (got, str(exc), f.read())
    return got


def test_a_job_that_read_part_of_a_rotted_copy_gets_filecorrupted_before_the_end(
    node_factory, secret
):
    n1, n2 = peered(node_factory)
    payload = os.urandom(3 << 20)
    with mesh.Client([n1.address, n2.address], secret) as c:
        linked(c)
        info = c.files.putf(payload, "rot/p.bin", replicas=2)
        c.result(c.map(read_pieces_in_job, ["rot/p.bin"] * 2))  # checked once on each
        rot(blob_path(n1, info.hash), 5000)
        results = c.result(c.map(read_pieces_in_job, ["rot/p.bin"] * 2))
        raised = [r for r in results if isinstance(r, tuple)]
        assert len(raised) == 1, results  # the job on n1; n2's copy is good
        got, why, again = raised[0]
        assert got == [payload[:1000]]  # the first piece was good; the end never came
        assert "failed its hash check" in why and "open it again" in why
        assert again == payload
        assert [r for r in results if not isinstance(r, tuple)] == [
            [payload[:1000], payload[1000:]]
        ]


def test_a_rotted_blob_is_never_served_to_a_client_which_gets_the_good_copy(
    node_factory, secret, tmp_path
):
    n1, n2 = peered(node_factory)
    payload = os.urandom(5 << 20)
    with mesh.Client([n1.address, n2.address], secret) as c:
        linked(c)
        info = c.files.putf(payload, "rot/c.bin", replicas=2)
        with c.files.getf("rot/c.bin") as f:  # checked once (n1: the first by name)
            assert f.read() == payload
        rot(blob_path(n1, info.hash), 100)
        with c.files.getf("rot/c.bin") as f:
            assert f.read() == payload
        out = c.files.get("rot/c.bin", tmp_path / "c.bin")
        assert Path(out).read_bytes() == payload
        wait_for(lambda: good(blob_path(n1, info.hash), info.hash), what="n1's copy replaced")


def test_with_no_good_copy_left_the_error_says_where_it_rotted(node_factory, secret, tmp_path):
    n1, n2 = peered(node_factory)
    payload = os.urandom(1 << 20)
    with mesh.Client([n1.address, n2.address], secret) as c:
        linked(c)
        info = c.files.putf(payload, "rot/one.bin", replicas=1)
        (holder_name,) = info.nodes
        holder = n1 if holder_name == "n1" else n2
        with c.files.getf("rot/one.bin") as f:
            assert f.read() == payload
        rot(blob_path(holder, info.hash), 1 << 19)
        with pytest.raises(FileCorrupted) as err:
            c.files.get("rot/one.bin", tmp_path / "one.bin")
        msg = str(err.value)
        assert f"corrupted on node {holder_name}, no good copy left" in msg, msg
        assert "no live node holds it" not in msg
        assert err.value.name == "rot/one.bin"
        assert not (tmp_path / "one.bin").exists()
        with pytest.raises(FileCorrupted, match=f"corrupted on node {holder_name}, no good copy"):
            with c.files.getf("rot/one.bin") as f:
                f.read()


def read_or_error(name: str) -> object:
    import mesh

    try:
        with mesh.files.getf(name) as f:
            return f.read()
    except FileCorrupted as exc:
        return f"{type(exc).__name__}: {exc}"


def test_a_job_reading_the_last_rotted_copy_says_where_it_rotted(node_factory, secret):
    n1 = node_factory(name="n1", workers=1)
    payload = os.urandom(1 << 20)
    with mesh.Client([n1.address], secret) as c:
        info = c.files.putf(payload, "rot/last.bin", replicas=1)
        assert c.result(c.call(read_or_error, "rot/last.bin")) == payload
        rot(blob_path(n1, info.hash), 77)
        out = c.result(c.call(read_or_error, "rot/last.bin"))
        assert isinstance(out, str) and out.startswith("FileCorrupted: "), out
        assert "corrupted on node n1, no good copy left" in out
        assert not blob_path(n1, info.hash).exists()  # the bad copy is gone, never served


def test_a_rotted_copy_is_never_copied_when_a_lost_holder_is_replaced(node_factory, secret):
    import signal

    env = {"MESH_FILES_REREPLICATE_S": "1"}
    first = node_factory(name="n1", workers=1, env=env)
    nodes = [first] + [
        node_factory(name=f"n{i}", workers=1, env=env, extra=("--peer", first.address))
        for i in (2, 3)
    ]
    payload = os.urandom(1 << 20)
    with mesh.Client([n.address for n in nodes], secret) as c:

        def linked3() -> bool:
            c.files.putf(b"probe", "probe", replicas=3)
            return len(c.files.info("probe").nodes) == 3

        wait_for(linked3, what="every file link up")
        c.files.delete("probe")
        info = c.files.putf(payload, "rot/r.bin", replicas=2)
        victim, survivor = (next(n for n in nodes if n.name == name) for name in info.nodes)
        third = next(n for n in nodes if n.name not in info.nodes)
        rot(blob_path(survivor, info.hash), 4321)
        victim.stop(signal.SIGKILL)
        # The survivor's push to the third node finds its copy bad: dropped, never copied.
        wait_for(lambda: not blob_path(survivor, info.hash).exists(), what="bad copy dropped")
        assert not blob_path(third, info.hash).exists()
        blobs = third.data_dir / "blobs"  # the bad bytes it was sent are dropped
        wait_for(lambda: not list((blobs / "tmp").iterdir()), what="the bad transfer dropped")
        assert not list(blobs.glob("??/*"))  # and no blob under another hash either
        with pytest.raises(FileCorrupted, match=f"corrupted on node {survivor.name}, no good"):
            c.files.get("rot/r.bin", str(third.data_dir.parent / "r.bin"))
        assert c.files.info("rot/r.bin").hash == info.hash  # the version stays what was put


def claim_bad_in_job(name: str, h: str) -> str:
    """A job that says the node's good copy of ``h`` is bad (FileGet.bad), as a lying
    or mistaken reader would."""
    from mesh.client._files import job_files

    files = job_files()
    assert files is not None
    path, _ = files._run(files._a._local_path(name, bad=h))
    return path


def test_a_reader_that_calls_a_good_copy_bad_does_not_make_the_node_drop_it(node_factory, secret):
    n1 = node_factory(name="n1", workers=1)
    payload = os.urandom(1 << 20)
    with mesh.Client([n1.address], secret) as c:
        info = c.files.putf(payload, "rot/fine.bin", replicas=1)
        before = blob_path(n1, info.hash).stat()
        path = c.result(c.call(claim_bad_in_job, "rot/fine.bin", info.hash))
        assert Path(path) == blob_path(n1, info.hash)
        after = blob_path(n1, info.hash).stat()
        assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
        assert c.files.info("rot/fine.bin").nodes == ("n1",)
        with c.files.getf("rot/fine.bin") as f:
            assert f.read() == payload
