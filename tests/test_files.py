"""mesh.files on real nodes: every call from a client and from inside a job, pulls,
replication, sync, tombstones and corruption. Nodes name each other with --peer."""

from __future__ import annotations

import os
import signal
import stat
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from blake3 import blake3
from conftest import NodeProc

import mesh
from mesh.errors import MeshFileNotFound

UNICODE = "fotos/été/ünïcödé 猫.txt"


def wait_for(cond: Callable[[], object], timeout_s: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what or cond}")


def peered(node_factory: Callable[..., NodeProc], n: int, **kw: object) -> list[NodeProc]:
    """``n`` nodes with one worker each, every one naming the first with --peer."""
    first = node_factory(name="n1", workers=1, **kw)
    rest = [
        node_factory(name=f"n{i}", workers=1, extra=("--peer", first.address), **kw)
        for i in range(2, n + 1)
    ]
    return [first, *rest]


def linked(c: mesh.Client, tmp: Path, n: int) -> None:
    """Wait until a put can be copied to ``n`` nodes (every file link is up)."""
    probe = tmp / "probe"
    probe.write_bytes(b"probe")

    def ok() -> bool:
        c.files.put(probe, "probe", replicas=n)
        return len(c.files.info("probe").nodes) == n

    wait_for(ok, what=f"{n} nodes linked")
    c.files.delete("probe")


def readf(c: object, name: str) -> bytes:
    with c.files.getf(name) as f:  # type: ignore[attr-defined]
        return f.read()  # type: ignore[no-any-return]


def blob_path(node: NodeProc, h: str) -> Path:
    return node.data_dir / "blobs" / h[:2] / h


# ---- every call, from a client ----


def test_every_call_from_a_client_with_folders_and_unicode(node_factory, secret, tmp_path):
    nodes = peered(node_factory, 2)
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
        src = tmp_path / "in.txt"
        src.write_text("bonjour ünïcode 猫\n" * 1000)
        info = c.files.put(src, UNICODE)
        assert info.name == UNICODE and info.size == src.stat().st_size
        assert info.hash == blake3(src.read_bytes()).hexdigest()
        assert sorted(info.nodes) == ["n1", "n2"]  # replicas=2 by default
        assert c.files.exists(UNICODE) and not c.files.exists("fotos/none")
        assert c.files.list() == [UNICODE]
        assert c.files.list("fotos/été/") == [UNICODE] and c.files.list("x") == []
        assert c.files.info(UNICODE) == info

        out = c.files.get(UNICODE, tmp_path / "deep" / "out.txt")
        assert Path(out).read_bytes() == src.read_bytes()
        with c.files.getf(UNICODE) as f:
            assert f.read(7) == b"bonjour"
            f.seek(0)
            assert f.read() == src.read_bytes()

        c.files.putf(b"raw bytes", "dir/b.bin")
        import io

        c.files.putf(io.StringIO("text"), "dir/t.txt")
        assert readf(c, "dir/t.txt") == b"text"
        assert c.files.list("dir/") == ["dir/b.bin", "dir/t.txt"]

        c.files.delete("dir/b.bin")
        assert c.files.list("dir/") == ["dir/t.txt"]
        with pytest.raises(MeshFileNotFound) as err:
            c.files.get("dir/b.bin", tmp_path / "never")
        assert isinstance(err.value, FileNotFoundError)
        assert "'dir/b.bin'" in str(err.value) and err.value.name == "dir/b.bin"
        assert not (tmp_path / "never").exists()
        with pytest.raises(FileNotFoundError):
            c.files.delete("dir/b.bin")
        with pytest.raises(FileNotFoundError):
            c.files.info("dir/b.bin")
        # Blobs are named by hash: no name reaches the file system of a node.
        for n in nodes:
            assert not list(n.data_dir.rglob("*.txt")) and not list(n.data_dir.rglob("*.bin"))


def test_module_level_files_use_the_default_client(node_factory, secret, tmp_path):
    (node,) = peered(node_factory, 1)
    mesh.connect([node.address], secret)
    mesh.files.putf(b"x" * 100, "m/x")
    assert mesh.files.list("m/") == ["m/x"] and mesh.files.info("m/x").nodes == ("n1",)
    assert readf(mesh, "m/x") == b"x" * 100


# ---- every call, from inside a job ----


def every_call_in_a_job(name: str, workdir: str) -> dict[str, object]:
    import io

    import mesh

    out: dict[str, object] = {}
    with mesh.files.getf(name) as f:
        out["getf"] = f.read()
        f.seek(0)
        out["seek"] = f.read(3)
    out["get"] = Path(mesh.files.get(name, os.path.join(workdir, "got"))).read_bytes()
    out["info"] = mesh.files.info(name).size
    mesh.files.putf(io.BytesIO(b"from a job"), "job/ö/out.txt")
    src = Path(workdir) / "src.txt"
    src.write_bytes(b"put by a job")
    mesh.files.put(src, "job/put.txt")
    out["list"] = mesh.files.list("job/")
    out["exists"] = (mesh.files.exists("job/put.txt"), mesh.files.exists("job/nope"))
    mesh.files.delete("job/put.txt")
    out["after"] = mesh.files.list("job/")
    (Path(workdir) / "tree").mkdir()
    (Path(workdir) / "tree" / "a").write_bytes(b"a")
    out["sync"] = mesh.files.sync(os.path.join(workdir, "tree"), prefix="job/tree/").sent
    try:
        mesh.files.getf("job/nope")
    except FileNotFoundError as exc:
        out["missing"] = str(exc)
    return out


def test_every_call_from_inside_a_job(node_factory, secret, tmp_path):
    nodes = peered(node_factory, 2)
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
        c.files.putf("données ✓".encode(), UNICODE)
        out = c.result(c.call(every_call_in_a_job, UNICODE, str(tmp_path)))
        want = "données ✓".encode()
        assert out["getf"] == want and out["get"] == want and out["seek"] == want[:3]
        assert out["info"] == len(want)
        assert out["list"] == ["job/put.txt", "job/ö/out.txt"]
        assert out["exists"] == (True, False)
        assert out["after"] == ["job/ö/out.txt"]
        assert out["sync"] == ["job/tree/a"]
        assert "'job/nope'" in str(out["missing"])
        # What the job stored is there for the client, from any node.
        assert readf(c, "job/ö/out.txt") == b"from a job"
        assert readf(c, "job/tree/a") == b"a"


# ---- pulls ----


def read_in_job(name: str) -> tuple[bytes, str]:
    import mesh

    with mesh.files.getf(name) as f:
        return f.read(), f.name


def test_a_job_pulls_a_file_its_node_lacks_and_a_second_job_does_not(
    node_factory, secret, tmp_path
):
    nodes = peered(node_factory, 2)
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
        info = c.files.putf(os.urandom(300_000), "in/one.bin", replicas=1)
        (holder,) = info.nodes
        lacking = next(n for n in nodes if n.name != holder)
        assert not blob_path(lacking, info.hash).exists()
        # One job per node (one worker each, both idle): one lands where the blob is not.
        first = c.result(c.map(read_in_job, ["in/one.bin"] * 2))
        assert {blake3(d).hexdigest() for d, _ in first} == {info.hash}
        paths = {Path(p) for _, p in first}
        assert blob_path(lacking, info.hash) in paths  # read in place, on its own node
        pulled = os.stat(blob_path(lacking, info.hash))
        assert sorted(c.files.info("in/one.bin").nodes) == ["n1", "n2"]  # it kept the copy
        second = c.result(c.map(read_in_job, ["in/one.bin"] * 2))
        assert {Path(p) for _, p in second} == paths
        again = os.stat(blob_path(lacking, info.hash))
        assert (again.st_ino, again.st_mtime_ns) == (pulled.st_ino, pulled.st_mtime_ns)


# ---- replication ----


def test_a_killed_holder_loses_nothing_and_the_replica_count_comes_back(
    node_factory, secret, tmp_path
):
    nodes = peered(node_factory, 3, env={"MESH_FILES_REREPLICATE_S": "1"})
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 3)
        payload = os.urandom(2_000_000)
        info = c.files.putf(payload, "r/two.bin", replicas=2)
        assert len(info.nodes) == 2
        victim = next(n for n in nodes if n.name == info.nodes[0])
        victim.stop(signal.SIGKILL)
        assert readf(c, "r/two.bin") == payload

        def restored() -> bool:
            held = c.files.info("r/two.bin").nodes
            return len(held) == 2 and victim.name not in held

        wait_for(restored, what="the replica count restored")
        survivors = [n for n in nodes if n is not victim]
        assert all(blob_path(n, info.hash).exists() for n in survivors)


# ---- sync and versions ----


def read_text_in_job(name: str) -> bytes:
    import mesh

    return readf(mesh, name)


def test_sync_sends_only_what_changed_and_jobs_see_the_new_version(node_factory, secret, tmp_path):
    nodes = peered(node_factory, 2)
    folder = tmp_path / "imgs"
    (folder / "sub").mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(f"image {i}".encode())
    (folder / "sub" / "é.jpg").write_bytes(b"nested")
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
        first = c.files.sync(folder, prefix="imgs/")
        assert first.sent == ["imgs/0.jpg", "imgs/1.jpg", "imgs/2.jpg", "imgs/sub/é.jpg"]
        assert first.unchanged == []
        assert c.result(c.call(read_text_in_job, "imgs/1.jpg")) == b"image 1"
        old = c.files.info("imgs/1.jpg")

        again = c.files.sync(folder, prefix="imgs/")
        assert again.sent == [] and again.bytes_sent == 0 and len(again.unchanged) == 4

        (folder / "1.jpg").write_bytes(b"image 1, retouched")
        changed = c.files.sync(folder, prefix="imgs/")
        assert changed.sent == ["imgs/1.jpg"] and changed.bytes_sent == len(b"image 1, retouched")
        new = c.files.info("imgs/1.jpg")
        assert new.hash != old.hash and new.time > old.time
        results = c.result(c.map(read_text_in_job, ["imgs/1.jpg"] * 4))
        assert results == [b"image 1, retouched"] * 4
        # The old version's blob is gone from every node.
        for n in nodes:
            wait_for(lambda n=n: not blob_path(n, old.hash).exists(), what="old blob dropped")

        os.chdir(folder)
        try:
            assert c.files.sync("*.jpg").sent == ["0.jpg", "1.jpg", "2.jpg"]
        finally:
            os.chdir(tmp_path)


# ---- tombstones ----


def test_a_delete_while_a_node_is_down_stays_deleted_when_it_returns(
    node_factory, secret, tmp_path
):
    n1, n2 = peered(node_factory, 2)
    with mesh.Client([n1.address, n2.address], secret) as c:
        linked(c, tmp_path, 2)
        c.files.putf(b"soon gone", "t/gone.txt")
        c.files.putf(b"stays", "t/stays.txt")
        assert sorted(c.files.info("t/gone.txt").nodes) == ["n1", "n2"]
    n2.stop()
    with mesh.Client([n1.address], secret) as c:
        c.files.delete("t/gone.txt")
        assert c.files.list("t/") == ["t/stays.txt"]
    n2b = node_factory(name="n2", workers=1, extra=("--peer", n1.address))  # same data dir
    assert n2b.data_dir == n2.data_dir
    with mesh.Client([n2b.address], secret) as c2, mesh.Client([n1.address], secret) as c1:
        wait_for(lambda: c2.files.list("t/") == ["t/stays.txt"], what="n2 learns the delete")
        time.sleep(1.0)  # catalogs have gone both ways by now
        assert c1.files.list("t/") == ["t/stays.txt"]
        assert c2.files.list("t/") == ["t/stays.txt"]
        with pytest.raises(FileNotFoundError):
            c2.files.getf("t/gone.txt")


# ---- corruption ----


def test_a_corrupted_blob_is_not_served_and_is_fetched_again(node_factory, secret, tmp_path):
    n1, n2 = peered(node_factory, 2)
    payload = os.urandom(500_000)
    with mesh.Client([n1.address, n2.address], secret) as c:
        linked(c, tmp_path, 2)
        info = c.files.putf(payload, "c/blob.bin")
        assert sorted(info.nodes) == ["n1", "n2"]
    for path in (blob_path(n1, info.hash),):
        path.chmod(stat.S_IWUSR | stat.S_IRUSR)
        with open(path, "r+b") as f:
            f.seek(1000)
            f.write(b"\0garbage\0")
    with mesh.Client([n1.address], secret) as c:
        assert readf(c, "c/blob.bin") == payload  # streamed from n1: checked
        assert blake3(blob_path(n1, info.hash).read_bytes()).hexdigest() == info.hash
        # And in place, for a job on n1, after corrupting it again.
        path = blob_path(n1, info.hash)
        path.chmod(stat.S_IWUSR | stat.S_IRUSR)
        with open(path, "r+b") as f:
            f.write(b"bad")
        # One job per node (one worker each), so one reads on n1.
        assert [d for d, _ in c.result(c.map(read_in_job, ["c/blob.bin"] * 2))] == [payload] * 2
        assert blake3(blob_path(n1, info.hash).read_bytes()).hexdigest() == info.hash


# ---- big files, bounded memory ----

BIG_CLIENT = """
import os, sys
import mesh

def hwm_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])

src, dest, secret, *peers = sys.argv[1:]
with mesh.Client(peers, secret) as c:
    c.files.putf(b"warm", "warm")  # imports and buffers of a first call: the baseline
    c.files.get("warm", dest)
    before = hwm_kib()
    info = c.files.put(src, "big/200MB.bin")
    c.files.get("big/200MB.bin", dest)
    print(info.hash, len(info.nodes), before, hwm_kib())
"""


def hwm_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmHWM for {pid}")


def test_a_200mb_file_round_trips_byte_exact_in_bounded_memory(node_factory, secret, tmp_path):
    import subprocess
    import sys

    nodes = peered(node_factory, 2)
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
    src, dest = tmp_path / "big.bin", tmp_path / "back.bin"
    h = blake3()
    with open(src, "wb") as f:
        block = os.urandom(1 << 20)
        for i in range(200):
            chunk = block[:-4] + i.to_bytes(4, "big")  # no two MiB alike
            h.update(chunk)
            f.write(chunk)
    node_before = {n.name: hwm_kib(n.pid) for n in nodes}
    out = subprocess.run(
        [sys.executable, "-c", BIG_CLIENT, str(src), str(dest), secret,
         *(n.address for n in nodes)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    digest, holders, client_before, client_after = out.stdout.split()
    assert digest == h.hexdigest() and int(holders) == 2
    assert blake3(dest.read_bytes()).hexdigest() == digest  # byte-exact
    limit_kib = 64 * 1024
    assert int(client_after) - int(client_before) < limit_kib, (client_before, client_after)
    for n in nodes:
        grew = hwm_kib(n.pid) - node_before[n.name]
        assert grew < limit_kib, f"node {n.name} peak RSS grew by {grew} KiB"
        assert blob_path(n, digest).stat().st_size == 200 << 20


# ---- two copies ----


def blobs_on(node: NodeProc) -> list[Path]:
    """The blob files of a node, and anything in its temp folder."""
    root = node.data_dir / "blobs"
    return sorted(p for p in root.glob("*/*") if p.is_file())


def test_a_two_copy_put_is_checked_and_durable_on_both_nodes(node_factory, secret, tmp_path):
    """The first node passes the chunks on as they arrive; each node checks the hash."""
    nodes = peered(node_factory, 2)
    src = tmp_path / "two.bin"
    src.write_bytes(os.urandom(10 << 20) + b"tail")  # three chunks
    digest = blake3(src.read_bytes()).hexdigest()
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
        info = c.files.put(src, "two.bin", replicas=2)
        assert info.hash == digest and sorted(info.nodes) == ["n1", "n2"]
        for n in nodes:
            assert blake3(blob_path(n, digest).read_bytes()).hexdigest() == digest
            assert not list((n.data_dir / "blobs" / "tmp").iterdir())
        assert readf(c, "two.bin") == src.read_bytes()


def test_a_two_copy_put_failing_its_hash_leaves_nothing_on_either_node(
    node_factory, secret, tmp_path
):
    from _wire import Session

    from mesh._protocol import FileChunk, FileEnd, FilePut, FileReply

    nodes = peered(node_factory, 2)
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
    before = [blobs_on(n) for n in nodes]
    host, port = nodes[0].address.rsplit(":", 1)
    with Session(host, int(port), secret.encode()) as s:
        s.send(FilePut(1, "bad.bin", 8 << 20, 2))
        s.send(FileChunk(1, os.urandom(4 << 20)))
        s.send(FileChunk(1, os.urandom(4 << 20)))
        s.send(FileEnd(1, "0" * 64))  # not the hash of what was sent
        reply = s.expect(FileReply)
    assert isinstance(reply, FileReply) and reply.error_kind == "failed"
    assert "do not match" in reply.error
    wait_for(
        lambda: all(set(blobs_on(n)) <= set(b) for n, b in zip(nodes, before, strict=True)),
        what="no blob or temp file left behind",
    )
    with mesh.Client([n.address for n in nodes], secret) as c:
        assert not c.files.exists("bad.bin")


# ---- a full disk ----


def test_a_full_disk_names_file_and_node_and_records_nothing(secret, tmp_path):
    """The node's data dir is an 8 MB tmpfs in a mount namespace of its own."""
    import shutil
    import subprocess
    import sys

    from conftest import LISTENING

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to give a node a small disk")
    data = tmp_path / "small"
    data.mkdir()
    node_cmd = [sys.executable, "-m", "mesh.node", "--host", "127.0.0.1", "--port", "0", "--name",
                "tiny", "--workers", "1", "--data-dir", str(data), "--no-advertise", "--grace", "1",
                "--no-dashboard"]  # fmt: skip
    script = 'mount -t tmpfs -o size=8m,mode=700 tmpfs "$1" && shift && exec "$@"'  # private
    proc = subprocess.Popen(
        ["unshare", "-m", "sh", "-c", script, "sh", str(data), *node_cmd],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, env=dict(os.environ, MESH_SECRET=secret),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().decode().strip()
        m = LISTENING.match(line)
        if m is None:
            pytest.skip(f"cannot mount a tmpfs for the node here ({line!r})")
        with mesh.Client([f"{m.group(2)}:{m.group(3)}"], secret) as c:
            big = tmp_path / "big.bin"
            big.write_bytes(os.urandom(20 << 20))
            with pytest.raises(mesh.FileStoreFull) as err:
                c.files.put(big, "too/big.bin")
            msg = str(err.value)
            assert "'too/big.bin'" in msg and "tiny" in msg and "space" in msg
            assert c.files.list() == [] and not c.files.exists("too/big.bin")
            c.files.putf(b"small", "small.txt")  # the failed write freed its space
            assert c.files.list() == ["small.txt"]
    finally:
        proc.terminate()
        proc.wait(15)
        if proc.stdout is not None:
            proc.stdout.close()


# ---- the seeds' example ----


def test_the_thumbnails_example_runs_on_a_local_mesh(tmp_path):
    import subprocess
    import sys

    pytest.importorskip("PIL")
    example = Path(__file__).parent.parent / "examples" / "thumbnails.py"
    run = [sys.executable, str(example), "photos", "--samples", "3"]
    out = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "sync: sent 3 images" in out.stdout and "sync again: sent 0, 3 unchanged" in out.stdout
    thumbs = sorted(p.name for p in (tmp_path / "photos-thumbs").iterdir())
    assert len(thumbs) == 9 and thumbs[0] == "sample-00.thumbnail.128.jpg"
    from PIL import Image

    with Image.open(tmp_path / "photos-thumbs" / "sample-02.thumbnail.64.jpg") as img:
        assert max(img.size) == 64


# ---- a store from before BLAKE3 ----


def test_a_store_named_by_sha256_is_rehashed_once_at_start(tmp_path):
    import hashlib
    import sqlite3

    from mesh.node._blobs import BlobStore

    data = b"kept across the change of hash\n" * 100
    old = hashlib.sha256(data).hexdigest()
    (tmp_path / "blobs" / old[:2]).mkdir(parents=True)
    (tmp_path / "blobs" / old[:2] / old).write_bytes(data)
    db = sqlite3.connect(tmp_path / "files.sqlite3")
    db.execute("CREATE TABLE versions (name TEXT PRIMARY KEY, hash TEXT NOT NULL, "
               "size INTEGER NOT NULL, time REAL NOT NULL, deleted INTEGER NOT NULL)")  # fmt: skip
    db.executemany("INSERT INTO versions VALUES (?,?,?,?,?)", [
        ("held.txt", old, len(data), 1.0, 0),
        ("elsewhere.txt", "ab" * 32, 5, 2.0, 0),  # its blob is on another node
        ("gone.txt", "", 0, 3.0, 1),
    ])  # fmt: skip
    db.commit()
    db.close()

    new = blake3(data).hexdigest()
    for _ in range(2):  # the second start finds the marker and changes nothing
        store = BlobStore(tmp_path)
        try:
            assert store.have == {new} and store.path(new).read_bytes() == data
            assert not (tmp_path / "blobs" / old[:2] / old).exists()
            assert store.entries == {
                "held.txt": ("held.txt", new, len(data), 1.0, False),
                "gone.txt": ("gone.txt", "", 0, 3.0, True),
            }
        finally:
            store.close()
    assert (tmp_path / "blobs" / "HASH").read_text() == "BLAKE3\n"


# ---- chunk boundaries and streamed getf ----


def test_sizes_around_the_chunk_and_attachment_boundaries_round_trip(
    node_factory, secret, tmp_path
):
    """put (read ahead into reused buffers, passed on to the second node as it arrives),
    get and getf, at every size where a transfer changes how it cuts or ends."""
    from mesh._frames import ATTACH_MIN
    from mesh._transfer import CHUNK

    nodes = peered(node_factory, 2)
    sizes = [0, 1, ATTACH_MIN - 1, ATTACH_MIN, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK]
    with mesh.Client([n.address for n in nodes], secret) as c:
        linked(c, tmp_path, 2)
        for size in sizes:
            src = tmp_path / f"s{size}.bin"
            data = os.urandom(size)
            src.write_bytes(data)
            info = c.files.put(src, f"sizes/{size}", replicas=2)
            assert info.size == size and info.hash == blake3(data).hexdigest()
            assert sorted(info.nodes) == ["n1", "n2"]
            for n in nodes:
                assert blob_path(n, info.hash).read_bytes() == data
            out = Path(c.files.get(f"sizes/{size}", tmp_path / "out.bin"))
            assert out.read_bytes() == data
            assert readf(c, f"sizes/{size}") == data


def test_a_streamed_getf_reads_seeks_and_can_be_closed_before_the_end(
    node_factory, secret, tmp_path
):
    import io

    (n1,) = peered(node_factory, 1)
    data = os.urandom(3 << 20) * 10 + b"the end"  # ~30 MB, several chunks
    src = tmp_path / "big.bin"
    src.write_bytes(data)
    with mesh.Client([n1.address], secret) as c:
        info = c.files.put(src, "stream/big.bin", replicas=1)
        with c.files.getf("stream/big.bin") as f:
            assert f.readable() and f.seekable()
            assert f.read(10) == data[:10]
            assert f.seek(-7, io.SEEK_END) == len(data) - 7
            assert f.read() == b"the end"
            f.seek(5 << 20)
            assert f.tell() == 5 << 20
            got = bytearray()
            while piece := f.read(1 << 20):  # the end, b"", only once the hash checked
                got += piece
            assert bytes(got) == data[5 << 20 :]
        for _ in range(3):  # closed early: its download stops, and nothing is left over
            f = c.files.getf("stream/big.bin")
            assert f.read(3) == data[:3]
            f.close()
            with pytest.raises(ValueError):
                f.read(1)
        assert readf(c, "stream/big.bin") == data
        wait_for(lambda: not c.files._a._downloads, what="the downloads of closed files end")

        def node_has_it_open() -> bool:
            blob = str(blob_path(n1, info.hash))
            fds = Path(f"/proc/{n1.pid}/fd")
            return any(os.readlink(fds / fd) == blob for fd in os.listdir(fds))

        wait_for(lambda: not node_has_it_open(), what="the node stops sending to closed files")
        with pytest.raises(MeshFileNotFound):
            c.files.getf("stream/nope")


def test_a_streamed_getf_read_to_the_end_never_ends_with_bad_bytes(node_factory, secret, tmp_path):
    """A copy failing its hash on the node: the reader either gets the good copy
    fetched again or FileCorrupted, never a clean end of wrong bytes."""
    n1, n2 = peered(node_factory, 2)
    payload = os.urandom(6 << 20)
    with mesh.Client([n1.address, n2.address], secret) as c:
        linked(c, tmp_path, 2)
        info = c.files.putf(payload, "c/stream.bin")
    path = blob_path(n1, info.hash)
    path.chmod(stat.S_IWUSR | stat.S_IRUSR)
    with open(path, "r+b") as f:
        f.seek(5 << 20)
        f.write(b"\0garbage\0")
    with mesh.Client([n1.address], secret) as c:
        got = bytearray()
        try:
            with c.files.getf("c/stream.bin") as f:
                while piece := f.read(100_000):
                    got += piece
        except mesh.FileCorrupted as exc:
            assert "c/stream.bin" in str(exc)
        else:
            assert bytes(got) == payload
        assert readf(c, "c/stream.bin") == payload  # the node fetched a good copy again
