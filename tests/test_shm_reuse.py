"""Shared blocks for big arguments are reused, and never while a worker may read them.

Pure checks of the node's free list (the worker's report stood in by a call), then
real nodes with one worker: results stay byte-exact when later arguments land in a
reused block, anything that still reads an argument in place keeps its bytes, and a
worker's heap, which keeps freed memory for the next big argument, neither gets it
stopped by --max-memory nor keeps the memory once idle.
"""

from __future__ import annotations

import gc
import hashlib
import os
import pickle
import sys
import time
from pathlib import Path

import pytest
from conftest import rss_kib
from mesh.node._shm import SharedBlocks

import mesh
from mesh._frames import FrameCodec
from mesh._protocol import Ran, Run, decode, encode, open_shared_file

MB = 1 << 20
SHM = Path("/dev/shm")


def blocks_at(tmp_path: Path, **kwargs: float) -> SharedBlocks:
    return SharedBlocks("t", tmp_path, **kwargs)  # type: ignore[arg-type]


def lend(blocks: SharedBlocks, size: int) -> tuple[memoryview, str]:
    """Receive an argument into a block and name it to a worker, as the node does."""
    view = blocks.allocate(size)
    assert isinstance(view, memoryview) and len(view) == size
    path = blocks.share(view)
    assert path is not None
    return view, path


# ---- the free list, no processes ----


def test_a_block_is_reused_only_after_the_worker_released_it(tmp_path) -> None:
    blocks = blocks_at(tmp_path)
    try:
        view, path = lend(blocks, 3 * MB)
        view[:4] = b"job1"
        del view
        gc.collect()
        assert not os.path.exists(path)  # never reported closed: removed, as before

        view, path = lend(blocks, 3 * MB)
        blocks.released((path,))  # the worker closed its mapping
        del view
        gc.collect()
        assert os.path.exists(path) and blocks.free_bytes >= 3 * MB

        _held, path2 = lend(blocks, 3 * MB - 100)  # a little shorter fits the same block
        assert path2 == path and blocks.reused == 1 and blocks.free_bytes == 0
    finally:
        blocks.close()
    assert not blocks.dir.exists()


def test_a_block_named_twice_needs_both_reports(tmp_path) -> None:
    """A job run again elsewhere (its first worker died) names its block twice."""
    blocks = blocks_at(tmp_path)
    try:
        view, path = lend(blocks, 2 * MB)
        assert blocks.share(view) == path
        blocks.released((path,))
        del view
        gc.collect()
        assert not os.path.exists(path) and blocks.free_bytes == 0
    finally:
        blocks.close()


def test_a_block_in_use_is_never_handed_out_again(tmp_path) -> None:
    blocks = blocks_at(tmp_path)
    try:
        first, path1 = lend(blocks, 2 * MB)
        blocks.released((path1,))  # reported closed, but the node still holds the job
        second, path2 = lend(blocks, 2 * MB)
        assert path2 != path1
        blocks.released((path2,))
        del second
        gc.collect()
        third, path3 = lend(blocks, 2 * MB)
        assert path3 == path2  # the free one, not the one still in use
        assert os.path.exists(path1)
        del first, third
    finally:
        blocks.close()


def test_the_free_list_is_bounded_and_expires(tmp_path) -> None:
    blocks = blocks_at(tmp_path, free_max_blocks=2, free_max_bytes=8 * MB, free_idle_s=3600.0)
    try:
        lent = [lend(blocks, size) for size in (2 * MB, 3 * MB, 4 * MB, 9 * MB)]
        paths = [path for _, path in lent]
        blocks.released(tuple(paths))
        while lent:  # the jobs end in order
            del lent[0]
        gc.collect()
        # 9 MB is past the byte bound; of the others the last two fit both bounds.
        assert [os.path.exists(p) for p in paths] == [False, True, True, False]
        assert blocks.free_bytes == 7 * MB
        blocks.free_idle_s = 0.0
        time.sleep(0.01)
        blocks.expire()
        assert blocks.free_bytes == 0 and not any(os.path.exists(p) for p in paths)
    finally:
        blocks.close()


def test_other_messages_and_small_arguments_take_no_block(tmp_path) -> None:
    from mesh._protocol import FileChunk

    blocks = blocks_at(tmp_path)
    try:
        assert isinstance(blocks.allocate(MB - 1), bytearray)
        assert blocks.share(blocks.allocate(2 * MB, FileChunk.TAG)) is None
        assert not list(blocks.dir.iterdir())
    finally:
        blocks.close()


def test_the_worker_maps_only_the_arguments_length_of_a_bigger_block(tmp_path) -> None:
    blocks = blocks_at(tmp_path)
    try:
        payload = os.urandom(3 * MB)
        view, path = lend(blocks, len(payload) + 5000)
        blocks.released((path,))
        del view
        gc.collect()
        buf = blocks.allocate(len(payload))
        assert isinstance(buf, memoryview)
        buf[:] = payload
        node_side = FrameCodec(authenticated=False, share=blocks.share)
        worker_side = FrameCodec(authenticated=False, open_shared=open_shared_file)
        data = b"".join(node_side.send(Run(b"h" * 16, b"", "m.f", (("j1", buf),))))
        assert len(data) < 4096
        (run,) = worker_side.receive(data)
        assert bytes(run.items[0][1]) == payload
    finally:
        blocks.close()


def test_ran_carries_released_paths_and_old_peers_default_to_none() -> None:
    msg = Ran((), ("/dev/shm/x",))
    assert decode(encode(msg)) == msg
    assert decode(encode(Ran(()))).released == ()


# ---- real nodes ----


def digest(blob):
    return hashlib.sha256(blob).hexdigest()


class Holder:
    """Reads its buffer in place, as a NumPy array does: unpickled over the worker's
    mapping of the block, with no copy. ``keep`` says how it holds it."""

    def __init__(self, data, keep):
        self.data = data
        self.keep = keep

    def __reduce_ex__(self, protocol):
        return _rebuild, (pickle.PickleBuffer(self.data), self.keep)


def _rebuild(buf, keep):
    # "view": an export of the buffer (close() raises BufferError); "object": the buffer
    # object itself, no export (only its reference count shows it is held).
    return Holder(memoryview(buf) if keep == "view" else buf, keep)


def stash(holder):
    sys.lanmesh_test_stash = holder  # type: ignore[attr-defined]
    return digest(holder.data)


def stash_view(blob):
    sys.lanmesh_test_stash = Holder(memoryview(blob), "bytes")  # type: ignore[attr-defined]
    return digest(blob)


def stashed():
    return digest(sys.lanmesh_test_stash.data)  # type: ignore[attr-defined]


def shm_files(node) -> list[str]:
    return sorted(str(p) for d in SHM.glob(f"lanmesh-{node.pid}-*") for p in d.iterdir())


@pytest.fixture
def one_worker(node_factory):
    return node_factory(name="solo", workers=1)


def test_results_stay_byte_exact_when_blocks_are_reused(one_worker, secret) -> None:
    sizes = [3 * MB, 3 * MB, 3 * MB - 7, 2 * MB + 1, 5 * MB, 3 * MB]
    blobs = [os.urandom(n) for n in sizes]
    with mesh.Client([one_worker.address], secret) as c:
        for blob in blobs:
            assert c.result(c.call(digest, blob), timeout=60) == digest(blob)
        # The same jobs at once, queued behind each other on the one worker.
        assert c.result(c.map(digest, blobs), timeout=60) == [digest(b) for b in blobs]
        # bytearray and plain pickles (a big list) too.
        ba = bytearray(os.urandom(3 * MB))
        assert c.result(c.call(digest, ba), timeout=60) == digest(ba)
        numbers = list(range(400_000))
        assert c.result(c.call(sum, numbers), timeout=60) == sum(numbers)


@pytest.mark.skipif(not os.access(SHM, os.W_OK), reason="no writable /dev/shm")
def test_a_released_block_is_kept_and_reused_by_the_next_argument(one_worker, secret) -> None:
    with mesh.Client([one_worker.address], secret) as c:
        first = os.urandom(4 * MB)
        assert c.result(c.call(digest, first), timeout=60) == digest(first)
        kept = wait_for(lambda: shm_files(one_worker), lambda files: len(files) == 1)
        assert len(kept) == 1  # the worker released it: kept for the next argument
        second = os.urandom(4 * MB)
        assert c.result(c.call(digest, second), timeout=60) == digest(second)
        assert wait_for(lambda: shm_files(one_worker), lambda f: f == kept) == kept


@pytest.mark.parametrize("keep", ["view", "object"])
def test_an_argument_read_in_place_is_never_overwritten(one_worker, secret, keep) -> None:
    """A job keeps a NumPy-like holder of its argument's block past its end; later
    arguments of the same size must not land in that block."""
    original = os.urandom(4 * MB)
    with mesh.Client([one_worker.address], secret) as c:
        held = Holder(bytearray(original), keep)
        assert c.result(c.call(stash, held), timeout=60) == digest(original)
        for _ in range(3):
            other = os.urandom(4 * MB)
            assert c.result(c.call(digest, other), timeout=60) == digest(other)
        assert c.result(c.call(stashed), timeout=60) == digest(original)


def test_a_view_of_a_bytes_argument_stays_exact(one_worker, secret) -> None:
    original = os.urandom(4 * MB)
    with mesh.Client([one_worker.address], secret) as c:
        assert c.result(c.call(stash_view, original), timeout=60) == digest(original)
        for _ in range(3):
            other = os.urandom(4 * MB)
            assert c.result(c.call(digest, other), timeout=60) == digest(other)
        assert c.result(c.call(stashed), timeout=60) == digest(original)


def wait_for(get, ok, timeout_s: float = 10.0):
    deadline = time.monotonic() + timeout_s
    while True:
        value = get()
        if ok(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.05)


# ---- the worker's heap ----


def fragment(mib):
    """Free ``mib`` MiB below a small block that stays: the heap cannot shrink past it."""
    big = bytearray(mib * MB)  # zero-filled: every page is resident
    sys.lanmesh_test_pin = bytes(MB)  # type: ignore[attr-defined] - lands above it
    del big
    return mib


def hold(mib, seconds):
    block = bytearray(mib * MB)
    time.sleep(seconds)
    return len(block) // MB


def test_memory_a_worker_keeps_free_does_not_get_it_stopped(node_factory, secret) -> None:
    """The heap keeps freed memory, but gives it back after a job past half the limit,
    so the next job is judged on what it uses itself."""
    node = node_factory(name="tight", workers=1, extra=("--max-memory", "300M"))
    with mesh.Client([node.address], secret) as c:
        jids = [c.call(fragment, 170), c.call(hold, 200, 1.0)]  # queued back to back
        assert c.result(jids, timeout=60) == [170, 200]


def test_an_idle_worker_gives_kept_memory_back(node_factory, secret) -> None:
    node = node_factory(name="idle", workers=1)
    (pid,) = node.worker_pids()
    with mesh.Client([node.address], secret) as c:
        blob = os.urandom(60 * MB)
        assert c.result(c.call(digest, blob), timeout=60) == digest(blob)
        assert c.result(c.call(fragment, 100), timeout=60) == 100
    rss = wait_for(lambda: rss_kib(pid), lambda kib: kib < 60 * 1024, timeout_s=20.0)
    assert rss < 60 * 1024
