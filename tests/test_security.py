"""Attacks on a node's port: garbage, slow senders, wrong secrets, pickles, altered frames.

The node under attack has one worker and a 1 s handshake deadline. With one worker,
jobs run in the order the node accepted them, so once a control job sent afterwards
has returned, any job a bad frame had smuggled in would have run already: a missing
marker file then proves it never ran.
"""

from __future__ import annotations

import os
import pickle
import secrets
import shlex
import socket
import struct
import time
from pathlib import Path

import pytest
from _helpers import append_line, square, touch
from _wire import CLOSE_DEADLINE_S, Session, closed_by_peer, connect, joined
from conftest import NodeProc, rss_kib

import mesh
from mesh._auth import ClientHandshake
from mesh._frames import END, HANDSHAKE, HANDSHAKE_MAX, HEADER, MAC_SIZE, MSG, PART, FrameCodec
from mesh._protocol import DONE, Proof, Results, Submit, decode, encode
from mesh._serialize import dumps_function


@pytest.fixture
def guard(node_factory) -> NodeProc:
    return node_factory(name="guard", workers=1, extra=("--handshake-timeout", "1"))


def assert_serves(node: NodeProc, secret: str) -> None:
    """A real client still gets work done on the node (and, with one worker, after any
    job that was accepted before)."""
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(square, 12), timeout=30) == 144
    assert node.proc.poll() is None


def hello_frame() -> bytes:
    hs = ClientHandshake(b"any secret: a hello carries none", name="attacker")
    return joined(FrameCodec().send(hs.start()))


# ---- literal bytes before authentication ----

GARBAGE = {
    "garbage": b"\xde\xad\xbe\xef" * 64,
    "http-request": b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n",
    "length-2**63": struct.pack(">Q", 2**63),
    "length-u32-max": b"\xff\xff\xff\xff\x00",
    "empty-handshake-frame": b"\x00\x00\x00\x00\x00",
    "truncated-frame": b"\x00\x00\x00\x64\x00" + b"\x91" * 10,  # says 100 bytes, sends 10
    "half-a-hello": hello_frame()[: len(hello_frame()) // 2],  # then silence
    "tls-client-hello": bytes.fromhex("16030100a5010000a10303") + b"\x00" * 32,
}


@pytest.mark.parametrize("payload", list(GARBAGE.values()), ids=list(GARBAGE))
def test_bad_bytes_cost_the_sender_its_connection(guard, secret, payload):
    with connect(guard.host, guard.port) as sock:
        sock.sendall(payload)
        assert closed_by_peer(sock), f"node kept the connection open for {CLOSE_DEADLINE_S} s"
    assert_serves(guard, secret)


def test_silent_connection_is_closed_at_the_handshake_deadline(guard, secret):
    with connect(guard.host, guard.port) as sock:
        assert closed_by_peer(sock)
    assert_serves(guard, secret)


def test_dripping_sender_is_closed_at_the_handshake_deadline(guard, secret):
    """A byte every 0.2 s keeps the connection busy but never finishes the handshake."""
    frame = hello_frame()
    deadline = time.monotonic() + CLOSE_DEADLINE_S
    closed = False
    with connect(guard.host, guard.port) as sock:
        for i in range(len(frame) - 1):
            try:
                sock.sendall(frame[i : i + 1])
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            if closed_by_peer(sock, within_s=0.2):
                closed = True
                break
            if time.monotonic() > deadline:
                break
    assert closed, "node let a slow sender hold a half-open handshake past the deadline"
    assert_serves(guard, secret)


def test_rss_stays_flat_over_200_garbage_connections(guard, secret):
    payloads = [GARBAGE[k] for k in ("garbage", "http-request", "length-2**63", "length-u32-max")]

    def attack(n: int) -> None:
        for i in range(n):
            with connect(guard.host, guard.port) as sock:
                sock.sendall(payloads[i % len(payloads)] + os.urandom(512))
                assert closed_by_peer(sock)

    attack(20)  # warm up allocator and caches
    before = rss_kib(guard.pid)
    attack(200)
    grown = rss_kib(guard.pid) - before
    assert grown < 10 * 1024, f"node RSS grew by {grown} KiB over 200 garbage connections"
    assert_serves(guard, secret)


def test_wrong_secret_raises_authentication_error_naming_the_node(guard, secret):
    with pytest.raises(mesh.AuthenticationError) as ei:
        mesh.Client([guard.address], secret=secrets.token_hex(32))  # strong, and wrong
    assert guard.address in str(ei.value)
    assert_serves(guard, secret)


# ---- pickles sent without authentication are never loaded ----


class RunsShell:
    """Unpickling this runs a shell command."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(str(self.path))}",))


class OpensFile:
    """Unpickling this creates a file."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps((RunsShell(marker), OpensFile(marker)), protocol=5)


def evil_submit(marker: Path, *, small: bool = False) -> bytes:
    """A msgpack Submit message whose function blob and arguments are evil pickles
    (``small``: one gadget in the function blob only, to fit a handshake frame)."""
    if small:
        gadget = pickle.dumps(RunsShell(marker), protocol=5)
        return encode(Submit(b"\x01" * 16, gadget, "e", (("e-1", b""),)))
    evil = evil_pickle(marker)
    return encode(Submit(b"\x01" * 16, evil, "evil", (("evil-1", evil),)))


def framings(marker: Path) -> dict[str, bytes]:
    evil = evil_pickle(marker)
    body = evil_submit(marker)
    small = evil_submit(marker, small=True)
    assert len(small) <= HANDSHAKE_MAX, len(small)  # so a handshake-kind frame gets decoded
    fake_mac = b"\x00" * MAC_SIZE
    half = len(evil) // 2
    hello = hello_frame()
    return {
        "raw-bytes": evil,
        "u32-length-prefix": struct.pack(">I", len(evil)) + evil,
        "handshake-frame": HEADER.pack(len(evil), HANDSHAKE) + evil,
        "msg-frame": HEADER.pack(len(evil), MSG) + evil + fake_mac,
        "part-frame": HEADER.pack(len(evil), PART) + evil + fake_mac,
        "end-frame": HEADER.pack(len(evil), END) + evil + fake_mac,
        "part-then-end": HEADER.pack(half, PART) + evil[:half] + fake_mac
        + HEADER.pack(len(evil) - half, END) + evil[half:] + fake_mac,
        "submit-in-msg-frame": HEADER.pack(len(body), MSG) + body + fake_mac,
        "submit-in-msg-frame-no-mac": HEADER.pack(len(body), MSG) + body,
        "submit-in-handshake-frame": HEADER.pack(len(small), HANDSHAKE) + small,
        "hello-then-submit-msg": hello + HEADER.pack(len(body), MSG) + body + fake_mac,
        "hello-then-submit-handshake": hello + HEADER.pack(len(small), HANDSHAKE) + small,
        "hello-wrong-proof-then-submit": hello
        + joined(FrameCodec().send(Proof(b"\x00" * 32)))
        + HEADER.pack(len(body), MSG) + body + fake_mac,
    }  # fmt: skip


FRAMINGS = list(framings(Path("/nonexistent/x")))


def test_the_evil_pickle_is_live(tmp_path):
    """Control: loaded, the payload creates its marker (so its absence below means something)."""
    marker = tmp_path / "MARKER"
    _, opened = pickle.loads(evil_pickle(marker))
    opened.close()
    assert marker.exists()
    marker.unlink()
    for small in (False, True):
        submit = decode(evil_submit(marker, small=small))
        assert isinstance(submit, Submit)
        loaded = pickle.loads(submit.fblob)
        if not small:
            loaded[1].close()
        assert marker.exists()
        marker.unlink()


@pytest.mark.parametrize("framing", FRAMINGS)
def test_unauthenticated_pickle_is_never_loaded(guard, secret, tmp_path, framing):
    marker = tmp_path / "MARKER"
    with connect(guard.host, guard.port) as sock:
        sock.sendall(framings(marker)[framing])
        assert closed_by_peer(sock)
    assert_serves(guard, secret)
    assert not marker.exists(), "the node unpickled bytes from an unauthenticated peer"


# ---- after authentication: altered, replayed and reordered frames ----


def touch_submit(marker: Path, jid: str) -> Submit:
    fhash, blob = dumps_function(touch)
    return Submit(fhash, blob, "touch", ((jid, pickle.dumps((str(marker),))),))


def new_jid() -> str:
    return f"raw{secrets.token_hex(3)}-1"


def wait_result(session: Session, jid: str):
    while True:
        msg = session.expect(Results)
        for item in msg.items:
            if item[0] == jid:
                return item


def test_raw_authenticated_session_runs_a_job(guard, secret, tmp_path):
    """Control: the hand-driven session is genuine, so the node runs what it sends."""
    marker = tmp_path / "MARKER"
    with Session(guard.host, guard.port, secret.encode()) as s:
        assert s.load.name == "guard"
        assert s.load.workers == 1
        jid = new_jid()
        s.send(touch_submit(marker, jid))
        item = wait_result(s, jid)
        assert item[1] == DONE
        assert pickle.loads(item[2]) == str(marker)
    assert marker.exists()


@pytest.mark.parametrize("where", ["body", "mac", "kind"])
def test_flipped_bit_in_a_submit_frame_closes_the_connection(guard, secret, tmp_path, where):
    marker = tmp_path / "MARKER"
    with Session(guard.host, guard.port, secret.encode()) as s:
        frame = bytearray(s.frame(touch_submit(marker, new_jid())))
        length, kind = HEADER.unpack_from(frame)
        assert kind == MSG and len(frame) == HEADER.size + length + MAC_SIZE
        if where == "body":
            frame[HEADER.size + length // 2] ^= 0x10
        elif where == "mac":
            frame[-1] ^= 0x01
        else:
            frame[4] ^= 0x02  # MSG -> END: the MAC covers the kind
        s.send_raw(bytes(frame))
        assert closed_by_peer(s.sock)
    assert_serves(guard, secret)
    assert not marker.exists(), "the node ran a job from an altered frame"


def test_replayed_frame_closes_the_connection(guard, secret, tmp_path):
    log = tmp_path / "log"
    with Session(guard.host, guard.port, secret.encode()) as s:
        jid = new_jid()
        fhash, blob = dumps_function(append_line)
        args = pickle.dumps((str(log), "ran"))
        frame = s.frame(Submit(fhash, blob, "append_line", ((jid, args),)))
        s.send_raw(frame)
        assert wait_result(s, jid)[1] == DONE
        s.send_raw(frame)  # the very same bytes again
        assert closed_by_peer(s.sock)
    assert_serves(guard, secret)
    assert log.read_text() == "ran\n"


def test_frame_replayed_into_another_session_runs_nothing(guard, secret, tmp_path):
    marker = tmp_path / "MARKER"
    with Session(guard.host, guard.port, secret.encode()) as first:
        captured = first.frame(touch_submit(marker, new_jid()))  # built, never sent here
    with Session(guard.host, guard.port, secret.encode()) as second:
        second.send_raw(captured)  # right sequence number (0), other session's keys
        assert closed_by_peer(second.sock)
    assert_serves(guard, secret)
    assert not marker.exists()


def test_reordered_frames_close_the_connection(guard, secret, tmp_path):
    first_marker, second_marker = tmp_path / "FIRST", tmp_path / "SECOND"
    with Session(guard.host, guard.port, secret.encode()) as s:
        f0 = s.frame(touch_submit(first_marker, new_jid()))
        f1 = s.frame(touch_submit(second_marker, new_jid()))
        s.send_raw(f1 + f0)
        assert closed_by_peer(s.sock)
    assert_serves(guard, secret)
    assert not first_marker.exists() and not second_marker.exists()


def test_connection_reset_mid_session_is_harmless(guard, secret):
    with Session(guard.host, guard.port, secret.encode()) as s:
        s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    assert_serves(guard, secret)


# ---- integrity between clients: a function id always means the same bytes ----


def test_function_sent_under_another_functions_id_is_refused(guard, secret, tmp_path):
    """The attack of issue 18: an authenticated client sends its own code under the id
    of ``square``; the node closes that connection, runs none of it, and every other
    client's ``square`` (its worker caches functions by id) is still ``square``."""
    marker = tmp_path / "POISONED"
    real_hash, _ = dumps_function(square)
    _, evil_blob = dumps_function(touch)
    with Session(guard.host, guard.port, secret.encode()) as s:
        s.send(Submit(real_hash, evil_blob, "square", ((new_jid(), pickle.dumps((str(marker),))),)))
        assert closed_by_peer(s.sock)
    assert not marker.exists(), "the node ran a function sent under another function's id"
    assert_serves(guard, secret)  # square(12) == 144 on the one worker
    with Session(guard.host, guard.port, secret.encode()) as s:  # a fresh id-only submit
        jid = new_jid()
        s.send(Submit(real_hash, b"", "square", ((jid, pickle.dumps((str(marker),))),)))
        assert closed_by_peer(s.sock)  # an id it never sent on this connection: refused
    assert not marker.exists()


def test_function_blob_matching_its_id_runs(guard, secret):
    """Control for the attack above: the same raw session with honest bytes runs."""
    fhash, blob = dumps_function(square)
    with Session(guard.host, guard.port, secret.encode()) as s:
        jid = new_jid()
        s.send(Submit(fhash, blob, "square", ((jid, pickle.dumps((7,))),)))
        item = wait_result(s, jid)
        assert item[1] == DONE and pickle.loads(item[2]) == 49
