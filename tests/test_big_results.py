"""Big results do not stall a node: they are written to files beside the job database
off the event loop, served from there with bounded memory, and survive a restart.

A job returning 300 MiB used to stall the node's loop for seconds (its result was
copied into SQLite on the loop): clients declared the node dead and ran the job again,
and the node logged thousands of ``socket.send() raised exception.`` lines.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sqlite3
import stat
import threading
import time
from pathlib import Path

import pytest
from _helpers import wait_until
from mesh.node._store import BLOB_MIN, JobStore, StoredJob

import mesh
from mesh._connection import Connection
from mesh._protocol import DONE, ERROR, ErrorInfo, FileChunk, Payload
from mesh.errors import ConnectionLost, ErrorKind

BIG = 300 << 20
# Clients that give up on a node silent this long: a node that stalls its loop while it
# handles a big result is then declared dead and its job run again (attempts 2).
DEAD_AFTER_S = 2.0


def pattern(size: int) -> bytes:
    """Bytes that are not all alike, so a misplaced slice shows (cheap to make)."""
    return bytes(range(251)) * (size // 251) + bytes(size % 251)


def big_result(size: int, started: str, gate: str) -> bytes:
    """Say the job started, wait for the test's gate, then return ``size`` bytes."""
    Path(started).touch()
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return pattern(size)


def square(x: int) -> int:
    return x * x


def peak_rss(pid: int) -> int:
    """The process's peak resident memory (VmHWM), in bytes."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmHWM for {pid}")


def result_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in (data_dir / "results").iterdir() if not p.name.endswith(".tmp"))


def test_a_big_result_leaves_the_node_serving_other_clients(node_factory, secret, tmp_path, capfd):
    node = node_factory(name="big", workers=2)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    expected = pattern(BIG)
    with (
        mesh.Client([node.address], secret, dead_after_s=DEAD_AFTER_S) as big,
        mesh.Client([node.address], secret, dead_after_s=DEAD_AFTER_S) as small,
    ):
        jid = big.call(big_result, BIG, started, gate)
        wait_until(lambda: os.path.exists(started), what="the big job to start")
        got: list[bytes] = []
        fetch = threading.Thread(target=lambda: got.append(big.result(jid, timeout=110)))
        fetch.start()
        Path(gate).touch()  # the job returns its 300 MiB now
        answers = []
        small_jids = []
        i = 0
        while fetch.is_alive():  # another client's small calls, all along
            small_jids.append(small.call(square, i))
            answers.append(small.result(small_jids[-1], timeout=60))
            i += 1
        fetch.join()
        assert answers == [x * x for x in range(i)] and i >= 1
        assert len(got) == 1 and len(got[0]) == BIG and got[0] == expected
        info = big.info(jid)
        # Never declared dead: the job ran once, on its node, and nothing was placed again.
        assert (info.status, info.node, info.attempts) == ("done", "big", 1)
        assert {s.attempts for s in small.info(small_jids)} == {1}
    assert peak_rss(node.pid) < 2.2 * BIG, peak_rss(node.pid)
    # the store thread writes a big result a moment after its client has it
    wait_until(lambda: len(result_files(node.data_dir)) == 1
               and result_files(node.data_dir)[0].stat().st_size >= BIG,
               what="the big result on disk")  # fmt: skip
    files = result_files(node.data_dir)
    assert len(files) == 1 and files[0].stat().st_size >= BIG
    assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((node.data_dir / "results").stat().st_mode) == 0o700
    node.stop()
    err = capfd.readouterr().err
    assert "socket.send() raised exception" not in err
    assert "Traceback" not in err


def test_a_big_result_is_served_again_after_a_restart(node_factory, secret, tmp_path):
    node = node_factory(name="keeper", workers=1)
    started, gate = str(tmp_path / "started"), str(tmp_path / "gate")
    Path(gate).touch()
    expected = pattern(BIG)
    with mesh.Client([node.address], secret) as c:
        jid = c.call(big_result, BIG, started, gate)
        assert c.result(jid, timeout=110) == expected
    assert node.stop() == 0  # a stopping node finishes writing its results first
    db = node.data_dir / "jobs.sqlite3"
    assert db.stat().st_size < BIG // 100  # the bytes are in a file beside it, not in it
    again = node_factory(name="keeper", port=node.port, workers=1)  # the same --data-dir
    with mesh.Client([again.address], secret) as c:  # another client asks by job id
        assert c.result(jid, timeout=110) == expected
        info = c.info(jid)
        assert (info.status, info.node, info.attempts) == ("done", "keeper", 1)
    assert peak_rss(again.pid) < 2.2 * BIG, peak_rss(again.pid)


# ---- the store alone: real files, no node ----


def _row(jid: str, result: Payload) -> StoredJob:
    return StoredJob(jid, DONE, "f", "", 1.0, 2.0, 3.0, 0.5, "out", "err", result, None, 1)


def test_the_store_keeps_big_results_in_private_files_and_reads_them_back(tmp_path):
    data = tmp_path / "data"
    big_parts = (b"\x80pickle", pattern(BLOB_MIN), pattern(3 * BLOB_MIN + 7))
    big_plain = pattern(2 * BLOB_MIN)
    small = (b"\x80small", b"x" * 100)
    store = JobStore(data)
    mapped = store.save([_row("a-1", big_parts), _row("a-2", big_plain), _row("a-3", small)])
    assert sorted(mapped) == ["a-1", "a-2"]  # the big ones, now read from their files
    assert tuple(bytes(p) for p in mapped["a-1"]) == big_parts
    assert bytes(mapped["a-2"]) == big_plain  # type: ignore[arg-type]
    store.close()
    files = result_files(data)
    assert len(files) == 2 and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)
    assert stat.S_IMODE((data / "results").stat().st_mode) == 0o700
    with sqlite3.connect(data / "jobs.sqlite3") as db:
        (longest,) = db.execute("SELECT max(length(result)) FROM jobs").fetchone()
    db.close()
    assert longest < 1000  # rows name the files; the bytes are not in the database

    store = JobStore(data)
    rows = {r[0]: r for r in store.load()}
    assert tuple(bytes(p) for p in rows["a-1"][10]) == big_parts
    assert bytes(rows["a-2"][10]) == big_plain  # type: ignore[arg-type]
    assert rows["a-3"][10] == small and rows["a-3"][1:10] == _row("a-3", small)[1:10]
    store.forget(["a-1", "a-3"])
    assert len(result_files(data)) == 1
    assert sorted(r[0] for r in store.load()) == ["a-2"]
    store.close()


def test_the_store_gives_errors_back_as_error_info_with_their_traceback_data(tmp_path):
    frame = ("f.py", 3, "g", "x()", 3, 0, 3, False)
    data = ("T\n", ((frame,),))
    error = ErrorInfo(ErrorKind.RAISED, "builtins.ValueError", "bad", "T\n", "", data)
    failed = _row("e-1", b"")._replace(state=ERROR, error=error)
    store = JobStore(tmp_path / "data")
    try:
        store.save([failed, _row("e-2", b"x")])
        rows = {r.jid: r for r in store.load()}
    finally:
        store.close()
    back = rows["e-1"].error
    assert type(back) is ErrorInfo and back == error  # JSON's lists are tuples again
    assert back.kind == ErrorKind.RAISED and back.tb_data is not None
    assert rows["e-2"].error is None and rows["e-2"].result == b"x"


def test_the_store_drops_a_truncated_result_file_and_sweeps_strays(tmp_path, caplog):
    data = tmp_path / "data"
    store = JobStore(data)
    store.save([_row("b-1", pattern(2 * BLOB_MIN)), _row("b-2", pattern(2 * BLOB_MIN))])
    store.close()
    first, _ = result_files(data)
    with open(first, "r+b") as f:
        f.truncate(BLOB_MIN)  # a disk that lost the end of it
    stray = data / "results" / "0123456789abcdef0123456789abcdef.tmp"
    stray.write_bytes(b"a write cut short")
    store = JobStore(data)
    rows = store.load()
    assert len(rows) == 1 and bytes(rows[0][10]) == pattern(2 * BLOB_MIN)  # type: ignore[arg-type]
    assert not stray.exists() and len(result_files(data)) == 1
    assert "is cut short" in caplog.text and rows[0][0] in ("b-1", "b-2")
    store.close()


@pytest.mark.parametrize("size", [BLOB_MIN - 1, BLOB_MIN])
def test_only_results_of_blob_min_bytes_or_more_become_files(tmp_path, size):
    store = JobStore(tmp_path / "data")
    mapped = store.save([_row("c-1", (b"\x80p", b"y" * (size - 2)))])
    assert (sorted(mapped), len(result_files(tmp_path / "data"))) == (
        (["c-1"], 1) if size >= BLOB_MIN else ([], 0)
    )
    store.close()


async def test_a_big_message_to_a_peer_that_is_gone_stops_at_the_first_failed_write(caplog):
    """A peer that drops its end mid-send: the rest of a big message is not written (nor
    encrypted) slice by slice into a dead socket, each write logging a warning; a node
    that lost a client while sending it 512 MiB logged 4,000 of them."""
    ours, theirs = socket.socketpair()
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: Connection("plain"), sock=ours)
    theirs.close()  # the next write fails at once (EPIPE)
    conn.send(FileChunk(1, pattern(16 << 20)))  # 64 slices of 256 KiB
    for _ in range(10):
        await asyncio.sleep(0)
    assert conn.closed and isinstance(conn.close_reason, ConnectionLost)
    assert "socket.send() raised exception" not in caplog.text
