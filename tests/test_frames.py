"""The frame codec and the wire messages, with no I/O.

Two :class:`FrameCodec` objects are wired back to back (h11's ``ConnectionPair``):
keys come from a real ClientHandshake/ServerHandshake run, bytes are delivered one
at a time and in one piece, and every attack has its own test with literal bytes.
"""

from __future__ import annotations

import dataclasses
import os
import struct
import types
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, fields

import msgpack
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mesh import _protocol as proto
from mesh import _wire as wire
from mesh._auth import ClientHandshake, ServerHandshake
from mesh._frames import HANDSHAKE_MAX, HEADER_SIZE, MAC_SIZE, FrameCodec
from mesh._protocol import (
    DONE,
    ERROR,
    KILLED,
    Challenge,
    ErrorInfo,
    Goodbye,
    Hello,
    JobRecord,
    Kill,
    Load,
    Message,
    Proof,
    Ran,
    RanItem,
    Records,
    ResultItem,
    Results,
    Submit,
    decode,
    encode,
    open_shared_file,
)
from mesh.errors import ErrorKind, LocalProtocolError, ProtocolError, RemoteProtocolError

SECRET = b"0123456789abcdef" * 4
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---- the pair ----


def join(buffers: Iterable[bytes | memoryview]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


def feed(codec: FrameCodec, data: bytes, *, bytewise: bool) -> list[Message]:
    """Deliver ``data`` (one byte per call, or in one piece); drain what is buffered."""
    out: list[Message] = []
    if bytewise:
        for i in range(len(data)):
            out += codec.receive(data[i : i + 1])
    else:
        out += codec.receive(data)
    while True:  # handshake mode returns one message per call
        more = codec.receive(b"")
        if not more:
            return out
        out += more


@dataclass
class Pair:
    client: FrameCodec
    server: FrameCodec

    def to_server(self, *msgs: Message, bytewise: bool = False) -> list[Message]:
        data = join(b for m in msgs for b in self.client.send(m))
        return feed(self.server, data, bytewise=bytewise)

    def to_client(self, *msgs: Message, bytewise: bool = False) -> list[Message]:
        data = join(b for m in msgs for b in self.server.send(m))
        return feed(self.client, data, bytewise=bytewise)


def make_pair(
    *, bytewise: bool = False, server_limits: dict[str, int] | None = None, **limits: int
) -> Pair:
    """Two codecs that have run the real handshake over their own frames."""
    pair = Pair(FrameCodec(**limits), FrameCodec(**(server_limits or limits)))
    ch = ClientHandshake(SECRET, name="laptop", peer="node ws-07")
    sh = ServerHandshake(SECRET, name="ws-07", node_id="n7")
    hello = ch.start()
    assert pair.to_server(hello, bytewise=bytewise) == [hello]
    challenge = sh.receive_hello(hello)
    assert pair.to_client(challenge, bytewise=bytewise) == [challenge]
    proof = ch.receive(challenge)
    assert pair.to_server(proof, bytewise=bytewise) == [proof]
    node_proof, skeys = sh.receive_proof(proof)
    proof_bytes = join(pair.server.send(node_proof))
    pair.server.start_session(skeys.send, skeys.recv)
    assert feed(pair.client, proof_bytes, bytewise=bytewise) == [node_proof]
    ckeys = ch.confirm(node_proof)
    pair.client.start_session(ckeys.send, ckeys.recv)
    assert not pair.client.in_handshake and not pair.server.in_handshake
    return pair


def frames_of(data: bytes, *, mac: bool = True) -> list[bytes]:
    """Split wire bytes into whole frames (header, body and MAC each)."""
    out = []
    pos = 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        end = pos + HEADER_SIZE + length + (MAC_SIZE if mac else 0)
        out.append(data[pos:end])
        pos = end
    assert pos == len(data)
    return out


def flip(data: bytes, index: int) -> bytes:
    b = bytearray(data)
    b[index] ^= 0x01
    return bytes(b)


def submit(payload: bytes = b"args", jid: str = "j1") -> Submit:
    return Submit(b"h" * 16, b"fblob", "mod.fn", ((jid, payload),), cores=1, label="x")


# ---- pair tests ----


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-piece", "byte-at-a-time"])
def test_pair_handshake_then_messages_both_ways(bytewise: bool) -> None:
    pair = make_pair(bytewise=bytewise)
    s = submit()
    assert pair.to_server(s, bytewise=bytewise) == [s]
    r = Results((("j1", proto.DONE, b"\x80\x05K\x07.", None),), running=1, queued=2, avg_run_s=0.5)
    assert pair.to_client(r, bytewise=bytewise) == [r]
    msgs = [Kill(("a", "b")), Goodbye("bye"), Load("n7", "ws-07", 8, 3, 0)]
    assert pair.to_server(*msgs, bytewise=bytewise) == msgs
    assert pair.server.buffered == 0 and pair.client.buffered == 0


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-piece", "byte-at-a-time"])
def test_pair_plain_codecs_without_mac(bytewise: bool) -> None:
    a, b = FrameCodec(authenticated=False), FrameCodec(authenticated=False)
    assert not a.in_handshake
    s = submit()
    data = join(a.send(s))
    assert len(data) == HEADER_SIZE + len(encode(s))  # no MAC on a worker pipe
    assert feed(b, data, bytewise=bytewise) == [s]


def test_first_message_pipelined_behind_proof_waits_for_session() -> None:
    """Handshake mode returns one message per call so the caller can switch keys: the
    node's first session frame right behind its proof waits for the client's keys."""
    client, server = FrameCodec(), FrameCodec()
    ch, sh = ClientHandshake(SECRET), ServerHandshake(SECRET)
    hello = ch.start()
    assert server.receive(join(client.send(hello))) == [hello]
    challenge = sh.receive_hello(hello)
    assert client.receive(join(server.send(challenge))) == [challenge]
    proof = ch.receive(challenge)
    assert server.receive(join(client.send(proof))) == [proof]
    node_proof, skeys = sh.receive_proof(proof)
    data = join(server.send(node_proof))
    server.start_session(skeys.send, skeys.recv)
    s = Goodbye("first")
    data += join(server.send(s))
    assert client.receive(data) == [node_proof]  # the Goodbye stays buffered
    assert client.buffered > 0
    ckeys = ch.confirm(node_proof)
    client.start_session(ckeys.send, ckeys.recv)
    assert client.receive(b"") == [s]
    assert client.buffered == 0


def test_start_session_twice_is_a_local_error() -> None:
    pair = make_pair()
    with pytest.raises(LocalProtocolError):
        pair.client.start_session(b"k" * 32, b"k" * 32)


def test_mac_keys_differ_per_direction() -> None:
    """A frame sent by the server cannot be reflected back to it."""
    pair = make_pair()
    data = join(pair.server.send(Goodbye("x")))
    with pytest.raises(RemoteProtocolError, match="MAC"):
        pair.server.receive(data)


def test_frame_is_aes_gcm_with_the_sequence_as_nonce() -> None:
    """Each session frame's body is the standard AES-256-GCM ciphertext of the plain
    body, its tag after it, with the sequence number as nonce and ``seq | length | kind``
    as associated data: small frames, frames past 16 KiB and streamed BLOB frames alike."""
    send_key, recv_key = os.urandom(32), os.urandom(32)
    codec = FrameCodec(max_frame=1 << 16)
    codec.start_session(send_key, recv_key)
    arg = os.urandom(100_000)
    msgs: list[Message] = [Kill(("j1",)), Goodbye("x" * 20_000), submit(arg)]
    data = b"".join(join(codec.send(m)) for m in msgs)  # the Submit: HEAD + 2 BLOB frames
    frames = frames_of(data)
    assert [f[4] for f in frames] == [1, 1, 4, 5, 5]
    gcm = AESGCM(send_key)
    plain = []
    for seq, frame in enumerate(frames):
        sealed = frame[HEADER_SIZE:]
        aad = struct.pack(">QIB", seq, len(sealed) - MAC_SIZE, frame[4])
        plain.append(gcm.decrypt(struct.pack(">4xQ", seq), sealed, aad))
    assert plain[0] == encode(msgs[0]) and plain[1] == encode(msgs[1])
    assert plain[3] + plain[4] == arg  # the attachment, in clear only after decryption
    assert arg[:1000] not in data and b"x" * 100 not in data


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-piece", "byte-at-a-time"])
def test_multi_frame_message(bytewise: bool) -> None:
    pair = make_pair(max_frame=1024, max_message=1 << 20)
    payload = os.urandom(1000)  # small items: one msgpack body split into PART frames
    s = Submit(b"h" * 16, b"fblob", "mod.fn", tuple((f"j{i}", payload) for i in range(100)))
    body_size = len(encode(s))
    data = join(pair.client.send(s))
    frames = frames_of(data)
    assert len(frames) == -(-body_size // 1024)
    kinds = [f[4] for f in frames]
    assert kinds == [2] * (len(frames) - 1) + [3]  # PART ... END
    assert all(len(f) == HEADER_SIZE + 1024 + MAC_SIZE for f in frames[:-1])
    got = feed(pair.server, data, bytewise=bytewise)
    assert got == [s]
    assert got[0].items[0][1] == payload
    assert pair.server.buffered == 0
    # and the sequence numbers still agree afterwards
    assert pair.to_server(Goodbye("after")) == [Goodbye("after")]


def test_partial_multi_frame_message_is_buffered_not_returned() -> None:
    pair = make_pair(max_frame=1024, max_message=1 << 20)
    s = submit(os.urandom(5000))
    frames = frames_of(join(pair.client.send(s)))
    for f in frames[:-1]:
        assert pair.server.receive(f) == []
    assert pair.server.buffered >= 4 * 1024
    assert pair.server.receive(frames[-1]) == [s]


def test_large_single_frame_uses_separate_buffers() -> None:
    pair = make_pair()
    s = submit(os.urandom(10_000))
    bufs = pair.client.send(s)
    assert len(bufs) == 2  # header, then ciphertext and tag in one buffer (not joined)
    assert len(bufs[-1]) == len(encode(s)) + MAC_SIZE
    assert feed(pair.server, join(bufs), bytewise=False) == [s]


def test_handshake_message_too_large_is_refused_by_sender() -> None:
    with pytest.raises(LocalProtocolError, match="handshake frame"):
        FrameCodec().send(Hello("lanmesh", 1, "3.11", b"n" * 300))


def test_limits_are_checked_at_construction() -> None:
    with pytest.raises(ValueError):
        FrameCodec(max_frame=HANDSHAKE_MAX - 1)
    with pytest.raises(ValueError):
        FrameCodec(max_frame=2048, max_message=1024)


# ---- attacks, one per test, literal bytes ----


def test_attack_http_request_in_handshake_mode() -> None:
    codec = FrameCodec()
    with pytest.raises(RemoteProtocolError, match="bad handshake frame"):
        codec.receive(b"GET / HTTP/1.1\r\nHost: ws-07:7390\r\nUser-Agent: curl/8.0\r\n\r\n")


def test_attack_http_request_rejected_after_five_bytes() -> None:
    codec = FrameCodec()
    for byte in b"GET ":
        assert codec.receive(bytes([byte])) == []
    with pytest.raises(RemoteProtocolError):
        codec.receive(b"/")


@pytest.mark.parametrize("session", [False, True], ids=["handshake", "session"])
def test_attack_2_pow_63_length_prefix(session: bool) -> None:
    codec = make_pair().server if session else FrameCodec()
    with pytest.raises(RemoteProtocolError):
        codec.receive(b"\x80" + b"\x00" * 7)
    assert codec.buffered == 0


def test_attack_2_pow_63_length_prefix_on_plain_codec() -> None:
    codec = FrameCodec(authenticated=False)
    with pytest.raises(RemoteProtocolError, match="exceeds the maximum"):
        codec.receive(b"\x80\x00\x00\x00\x01\x00\x00\x00")


def test_attack_handshake_frame_of_257_bytes() -> None:
    codec = FrameCodec()
    with pytest.raises(RemoteProtocolError, match="257 bytes"):
        codec.receive(b"\x00\x00\x01\x01\x00")


def test_attack_length_just_over_max_frame_fails_on_header() -> None:
    pair = make_pair(max_frame=1024, max_message=4096)
    header = b"\x00\x00\x04\x01\x01"  # 1025 bytes, MSG
    assert struct.unpack(">IB", header) == (1025, 1)
    for byte in header[:-1]:
        assert pair.server.receive(bytes([byte])) == []
    with pytest.raises(RemoteProtocolError, match="1025 bytes exceeds the maximum 1024"):
        pair.server.receive(header[-1:])  # no body byte has arrived
    assert pair.server.buffered == 0


def test_length_exactly_max_frame_is_accepted() -> None:
    pair = make_pair(max_frame=1024, max_message=4096)
    msg = Goodbye("x" * 1019)
    assert len(encode(msg)) == 1024
    assert pair.to_server(msg) == [msg]


def test_attack_flipped_bit_in_body() -> None:
    pair = make_pair()
    data = join(pair.client.send(submit()))
    with pytest.raises(RemoteProtocolError, match="frame 0 failed its MAC"):
        pair.server.receive(flip(data, HEADER_SIZE + 3))


def test_attack_flipped_bit_in_mac() -> None:
    pair = make_pair()
    data = join(pair.client.send(submit()))
    with pytest.raises(RemoteProtocolError, match="MAC"):
        pair.server.receive(flip(data, len(data) - 1))


def test_attack_flipped_kind_in_header() -> None:
    """MSG turned into END: the kind is under the MAC too."""
    pair = make_pair()
    data = bytearray(join(pair.client.send(Goodbye("x"))))
    assert data[4] == 1
    data[4] = 3
    with pytest.raises(RemoteProtocolError, match="MAC"):
        pair.server.receive(bytes(data))


def test_attack_replayed_frame() -> None:
    pair = make_pair()
    data = join(pair.client.send(Kill(("j1",))))
    assert pair.server.receive(data) == [Kill(("j1",))]
    with pytest.raises(RemoteProtocolError, match="frame 1 failed its MAC"):
        pair.server.receive(data)


def test_attack_reordered_frames() -> None:
    pair = make_pair()
    first = join(pair.client.send(Kill(("a",))))
    second = join(pair.client.send(Kill(("b",))))
    with pytest.raises(RemoteProtocolError, match="MAC"):
        pair.server.receive(second + first)


def test_attack_dropped_frame() -> None:
    pair = make_pair()
    pair.client.send(Kill(("a",)))  # lost on the way
    second = join(pair.client.send(Kill(("b",))))
    with pytest.raises(RemoteProtocolError, match="MAC"):
        pair.server.receive(second)


def test_attack_unauthenticated_frame_after_session() -> None:
    """A frame without a MAC, as an injector without the key would write it."""
    pair = make_pair()
    with pytest.raises(RemoteProtocolError, match="MAC"):
        pair.server.receive(b"\x00\x00\x00\x05\x01\x92\x0d\x91\xa1a" + b"\x00" * 16)


def test_attack_kill_message_in_handshake_mode() -> None:
    body = b"\x92\x0d\x91\xa1a"  # [13, ["a"]]: Kill(("a",))
    assert encode(Kill(("a",))) == body
    codec = FrameCodec()
    with pytest.raises(RemoteProtocolError, match="Kill before authentication"):
        codec.receive(b"\x00\x00\x00\x05\x00" + body)


def test_attack_submit_in_handshake_mode() -> None:
    body = encode(submit())
    codec = FrameCodec()
    with pytest.raises(RemoteProtocolError, match="Submit before authentication"):
        codec.receive(struct.pack(">IB", len(body), 0) + body)


def test_attack_msg_frame_kind_in_handshake_mode() -> None:
    codec = FrameCodec()
    with pytest.raises(RemoteProtocolError, match="kind 1"):
        codec.receive(b"\x00\x00\x00\x05\x01\x92\x0d\x91\xa1a")


def test_submit_before_authentication_is_refused_by_sender() -> None:
    with pytest.raises(LocalProtocolError, match="Submit sent before authentication"):
        FrameCodec().send(submit())


def test_attack_unknown_frame_kind() -> None:
    codec = FrameCodec(authenticated=False)
    with pytest.raises(RemoteProtocolError, match="unknown frame kind 7"):
        codec.receive(b"\x00\x00\x00\x00\x07")


def test_attack_empty_message_body() -> None:
    codec = FrameCodec(authenticated=False)
    with pytest.raises(RemoteProtocolError, match="undecodable"):
        codec.receive(b"\x00\x00\x00\x00\x01")


@pytest.mark.parametrize(
    "body",
    [
        b"\xdd\xff\xff\xff\xff",  # array of 2**32-1 items in 5 bytes
        b"\xdf\xff\xff\xff\xff",  # map of 2**32-1 pairs
        b"\xc6\xff\xff\xff\xff",  # bin of 4 GiB
        b"\x92\x0d\xdd\xff\xff\xff\xff",  # Kill whose jids claim 2**32-1 items
        b"\x91" * 5000 + b"\xc0",  # arrays nested 5000 deep
        b"\x92\x0d\x91\xa1a\xc0",  # a whole message plus a trailing byte
        b"\x92\x0d\x81\xa1a\x01",  # Kill whose jids is a map
    ],
    ids=["array-bomb", "map-bomb", "bin-bomb", "nested-bomb", "deep", "extra-data", "map"],
)
def test_attack_msgpack_bombs(body: bytes) -> None:
    codec = FrameCodec(authenticated=False)
    with pytest.raises(RemoteProtocolError):
        codec.receive(struct.pack(">IB", len(body), 1) + body)


def test_attack_whole_frame_inside_multi_frame_message() -> None:
    codec = FrameCodec(authenticated=False)
    assert codec.receive(b"\x00\x00\x00\x01\x02\x92") == []  # PART
    with pytest.raises(RemoteProtocolError, match="whole frame inside"):
        codec.receive(b"\x00\x00\x00\x05\x01\x92\x0d\x91\xa1a")


def test_attack_oversized_multi_part_message_literal() -> None:
    codec = FrameCodec(authenticated=False, max_frame=256, max_message=512)
    part = b"\x00\x00\x01\x00\x02" + b"x" * 256  # PART of 256 bytes
    assert codec.receive(part) == []
    assert codec.receive(part) == []  # 512 bytes: at the limit
    with pytest.raises(RemoteProtocolError, match="maximum size 512"):
        codec.receive(part)  # fails before any END frame arrives


def test_buffered_drops_to_zero_when_a_multi_part_message_fails() -> None:
    """The parts are freed on error, so memory accounting must not keep counting them."""
    codec = FrameCodec(authenticated=False, max_frame=256, max_message=512)
    part = b"\x00\x00\x01\x00\x02" + b"x" * 256
    codec.receive(part)
    assert codec.buffered == 256
    with pytest.raises(RemoteProtocolError):
        codec.receive(b"\x00\x00\x00\x00\x07")  # unknown kind mid-message
    assert codec.buffered == 0


def test_attack_oversized_multi_part_message_authenticated() -> None:
    pair = make_pair(
        max_frame=1024, max_message=1 << 20, server_limits={"max_frame": 1024, "max_message": 2048}
    )
    receiver = pair.server
    frames = frames_of(join(pair.client.send(submit(os.urandom(5000)))))
    assert len(frames) >= 4 and frames[2][4] == 2  # the third frame is still a PART
    assert receiver.receive(frames[0]) == []
    assert receiver.receive(frames[1]) == []
    with pytest.raises(RemoteProtocolError, match="exceeds the maximum size 2048"):
        receiver.receive(frames[2])


def test_message_of_exactly_max_message_passes() -> None:
    pair = make_pair(max_frame=1024, max_message=2048)
    msg = Goodbye("x" * 2043)
    assert len(encode(msg)) == 2048
    assert pair.to_server(msg, bytewise=True) == [msg]


def test_attack_flipped_bit_in_a_part_frame() -> None:
    pair = make_pair(max_frame=1024, max_message=1 << 20)
    frames = frames_of(join(pair.client.send(submit(os.urandom(3000)))))
    assert pair.server.receive(frames[0]) == []
    with pytest.raises(RemoteProtocolError, match="frame 1 failed its MAC"):
        pair.server.receive(flip(frames[1], HEADER_SIZE + 100))


def test_oversized_message_is_refused_by_sender() -> None:
    pair = make_pair(max_frame=1024, max_message=2048)
    with pytest.raises(LocalProtocolError, match="exceeds the maximum message size 2048"):
        pair.client.send(submit(b"x" * 3000))


def test_unencodable_message_is_a_local_error() -> None:
    pair = make_pair()
    with pytest.raises(LocalProtocolError, match="cannot encode"):
        pair.client.send(Goodbye("\udc80"))  # a lone surrogate is not UTF-8


# ---- after an error the codec stays broken ----


def test_codec_stays_broken_after_a_receive_error() -> None:
    pair = make_pair()
    good = join(pair.client.send(Kill(("a",))))
    with pytest.raises(RemoteProtocolError) as first:
        pair.server.receive(flip(good, HEADER_SIZE))
    assert pair.server.buffered == 0
    with pytest.raises(RemoteProtocolError) as again:
        pair.server.receive(b"")
    assert str(again.value) == str(first.value)
    # even the very frame that would have been valid is refused now
    with pytest.raises(RemoteProtocolError):
        pair.server.receive(good)
    with pytest.raises(LocalProtocolError, match="broken"):
        pair.server.send(Goodbye("bye"))


def test_codec_stays_broken_after_a_handshake_error() -> None:
    codec = FrameCodec()
    with pytest.raises(RemoteProtocolError):
        codec.receive(b"GET / HTTP/1.1\r\n\r\n")
    hello = ClientHandshake(SECRET).start()
    with pytest.raises(RemoteProtocolError):
        codec.receive(join(FrameCodec().send(hello)))


# ---- message decoding: schema evolution and validation ----


def test_decode_fills_defaults_for_fields_an_older_peer_omits() -> None:
    old = msgpack.packb([11, b"h", b"b", "f", [["j", b"a"]]], use_bin_type=True)
    assert decode(old) == Submit(b"h", b"b", "f", (("j", b"a"),), 1, "", 0.0)


def test_decode_fills_only_the_defaults_not_sent() -> None:
    partial = msgpack.packb([11, b"h", b"b", "f", [], 4, "lbl"], use_bin_type=True)
    assert decode(partial) == Submit(b"h", b"b", "f", (), 4, "lbl", 0.0)
    assert decode(msgpack.packb([17])) == Goodbye("")


def test_notify_start_is_off_unless_sent_and_started_round_trips() -> None:
    old = msgpack.packb([11, b"h", b"b", "f", [["j", b"a"]], 1, "", 0.0, False, []],
                        use_bin_type=True)  # fmt: skip
    assert decode(old).notify_start is False  # a client that does not know the field
    asked = Submit(b"h", b"b", "f", (("j", b"a"),), notify_start=True)
    assert decode(encode(asked)) == asked
    assert encode(proto.Started(("c-1", "c-2"))) == msgpack.packb([23, ["c-1", "c-2"]])
    assert decode(msgpack.packb([23, ["c-1"]])) == proto.Started(("c-1",))
    with pytest.raises(RemoteProtocolError):
        decode(msgpack.packb([23, [7]]))


def test_a_handback_carries_the_node_s_load_and_an_older_one_says_none() -> None:
    told = proto.Handback(("c-7", "c-8"), True, 0, 2)
    assert encode(told) == msgpack.packb([21, ["c-7", "c-8"], True, 0, 2])
    assert decode(encode(told)) == told
    older = decode(msgpack.packb([21, ["c-7"], True]))  # a node before the load was sent
    assert (older.running, older.queued) == (-1, -1)


def test_decode_drops_fields_a_newer_peer_adds() -> None:
    new = msgpack.packb([14, ["j1"], "future field", 42], use_bin_type=True)
    assert decode(new) == proto.Ack(("j1",))


def test_decoded_messages_are_frozen_and_equal_to_built_ones() -> None:
    # decode() sets the slots directly, not through the dataclass __init__
    msg = decode(msgpack.packb([10, "id", "n", 2, 1, 0], use_bin_type=True))
    assert msg == Load("id", "n", 2, 1, 0) and hash(msg) == hash(Load("id", "n", 2, 1, 0))
    with pytest.raises(dataclasses.FrozenInstanceError):
        msg.running = 5  # type: ignore[misc]


def test_every_default_passes_its_fields_check() -> None:
    # decode() pads an older peer's message with the defaults before one check of all
    for cls in proto._REGISTRY.values():
        fields = dataclasses.fields(cls)
        for i in range(cls._required, len(fields)):
            assert proto.compile_checks(cls)._checks[i](cls._defaults[i - cls._required]), (
                cls,
                fields[i].name,
            )


@pytest.mark.parametrize(
    "obj, match",
    [
        ([13, "a"], "Kill.jids has the wrong type"),
        ([13, [b"a"]], "Kill.jids has the wrong type"),
        ([10, "n", "x", True, 0, 0], "Load.workers has the wrong type"),  # bool is not int
        ([17, 5], "Goodbye.reason"),
        ([13], "needs 1"),
        ([99, "x"], "unknown message tag 99"),
        (["13", ["a"]], "tagged array"),
        ({"op": "kill"}, "tagged array"),
        ([], "tagged array"),
        ([12, [["j", 2, b"", ["raised", "T", "m", "tb"]]]], "Results.items"),  # 4-tuple error
    ],
)
def test_decode_rejects_wrong_types(obj: object, match: str) -> None:
    with pytest.raises(RemoteProtocolError, match=match):
        decode(msgpack.packb(obj, use_bin_type=True))


def test_float_fields_accept_ints() -> None:
    assert decode(msgpack.packb([12, [], 0, 0, 3])) == Results((), 0, 0, 3)


# ---- named records over the unchanged wire (old and new peers interoperate) ----

MEMORY_ERROR = ("memory", "MemoryLimitExceeded", "too big", "", "")
# Results([("a-1", KILLED, b"", MEMORY_ERROR), ("a-2", DONE, b"\x80x", None)], 1, 2, 0.5),
# written out byte by byte as protocol 6 sent it when records were plain tuples.
RESULTS_BYTES = (
    b"\x95\x0c"  # array of 5: tag 12 (Results)
    b"\x92"  # items: array of 2
    b"\x94\xa3a-1\x04\xc4\x00"  # ResultItem: "a-1", 4 (KILLED), b""
    b"\x95\xa6memory\xb3MemoryLimitExceeded\xa7too big\xa0\xa0"  # ErrorInfo: 5 strings
    b"\x94\xa3a-2\x02\xc4\x02\x80x\xc0"  # "a-2", 2 (DONE), b"\x80x", nil
    b"\x01\x02\xcb?\xe0\x00\x00\x00\x00\x00\x00"  # running 1, queued 2, avg_run_s 0.5
)


def test_named_records_encode_to_the_bytes_plain_tuples_did() -> None:
    error = ErrorInfo(ErrorKind.MEMORY, "MemoryLimitExceeded", "too big")
    named = Results((ResultItem("a-1", KILLED, b"", error), ResultItem("a-2", DONE, b"\x80x", None)),
                    running=1, queued=2, avg_run_s=0.5)  # fmt: skip
    assert encode(named) == RESULTS_BYTES
    plain = [12, [["a-1", 4, b"", list(MEMORY_ERROR)], ["a-2", 2, b"\x80x", None]], 1, 2, 0.5]
    assert msgpack.packb(plain, use_bin_type=True) == RESULTS_BYTES  # what an old peer sends


def test_an_old_peers_plain_arrays_decode_to_named_records() -> None:
    msg = decode(RESULTS_BYTES)
    assert isinstance(msg, Results)
    first, second = msg.items
    assert type(first) is ResultItem and type(second) is ResultItem
    assert (first.jid, first.state, first.payload) == ("a-1", KILLED, b"")
    assert type(first.error) is ErrorInfo
    assert first.error == MEMORY_ERROR
    assert (first.error.kind, first.error.type_name, first.error.message) == (
        "memory", "MemoryLimitExceeded", "too big")  # fmt: skip
    assert first.error.kind == ErrorKind.MEMORY and first.error.tb_data is None
    assert second.error is None and second.payload == b"\x80x"


def test_an_error_with_traceback_data_keeps_its_sixth_field_and_five_without() -> None:
    frame = ("f.py", 3, "g", "x()", 3, 0, 3, False)
    data = ("T\n", ((frame,),))
    six = ErrorInfo(ErrorKind.RAISED, "builtins.ValueError", "bad", "T\n", "", data)
    assert tuple(six) == ("raised", "builtins.ValueError", "bad", "T\n", "", data)
    assert len(ErrorInfo(ErrorKind.RAISED, "builtins.ValueError", "bad")) == 5
    wire = encode(Results((ResultItem("a-3", ERROR, b"", six),)))
    assert wire == (
        b"\x95\x0c\x91\x94\xa3a-3\x03\xc4\x00"
        b"\x96\xa6raised\xb3builtins.ValueError\xa3bad\xa2T\n\xa0"  # six fields
        b"\x92\xa2T\n\x91\x91\x98\xa4f.py\x03\xa1g\xa3x()\x03\x00\x03\xc2"  # the frames
        b"\x00\x00\xcb\x00\x00\x00\x00\x00\x00\x00\x00"
    )
    back = decode(wire)
    assert isinstance(back, Results)
    error = back.items[0].error
    assert type(error) is ErrorInfo and error.tb_data == data and error.traceback == "T\n"


def test_job_records_and_ran_items_keep_their_wire_bytes() -> None:
    record = JobRecord("a-1", DONE, "ws-07", "sq", "", 1.0, 2.0, 3.0, 0.5, "o", "", "", 1)
    wire = encode(Records(7, (record,)))
    assert wire == msgpack.packb([16, 7, [list(record)]], use_bin_type=True)
    assert wire[:6] == b"\x93\x10\x07\x91\x9d\xa3"  # Records, req 7, 1 record of 13 fields
    back = decode(wire)
    assert isinstance(back, Records) and type(back.records[0]) is JobRecord
    assert (back.records[0].node, back.records[0].attempts) == ("ws-07", 1)
    error = ErrorInfo(ErrorKind.MEMORY, "MemoryLimitExceeded", "too big")
    ran = RanItem("a-1", KILLED, b"", error, 1.0, 2.0, 0.5, "", "w")
    wire = encode(Ran((ran,)))
    assert wire == msgpack.packb([32, [[*ran[:3], list(MEMORY_ERROR), *ran[4:]]], []],
                                 use_bin_type=True)  # fmt: skip
    back = decode(wire)
    assert isinstance(back, Ran) and type(back.items[0]) is RanItem
    assert type(back.items[0].error) is ErrorInfo and back.items[0].stderr == "w"


def test_error_info_from_wire_refuses_what_is_not_one() -> None:
    assert ErrorInfo.from_wire(["killed", "JobKilled", "m", "", ""]) == (
        "killed", "JobKilled", "m", "", "")  # fmt: skip
    with pytest.raises(ValueError, match="not an error record"):
        ErrorInfo.from_wire(["killed", "JobKilled"])
    with pytest.raises(ValueError, match="not an error record"):
        ErrorInfo.from_wire(["killed", 3, "m", "", ""])


# ---- property tests ----

MAX_INT = 2**64 - 1
MIN_INT = -(2**63)


def strategy_for(tp: object) -> st.SearchStrategy[object]:
    """Values of a wire field type, as the message dataclasses declare them."""
    if tp is bool:
        return st.booleans()
    if tp is int:
        return st.integers(MIN_INT, MAX_INT)
    if tp is float:
        return st.floats(allow_nan=False)
    if tp is str:
        return st.text(max_size=20)
    if tp is bytes:
        return st.binary(max_size=40)
    if isinstance(tp, type) and issubclass(tp, tuple):  # a record: its wire tuple, named
        record = tp
        return strategy_for(wire._wire_type(record)).map(lambda t: tuple.__new__(record, t))
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return st.one_of(*(st.none() if a is type(None) else strategy_for(a) for a in args))
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
        return st.tuples(*(strategy_for(a) for a in args))
    raise TypeError(f"no strategy for {tp!r}")


MESSAGE_CLASSES: Sequence[type[Message]] = sorted(proto._REGISTRY.values(), key=lambda c: c.TAG)


def test_every_registered_message_is_exported() -> None:
    exported = {
        name
        for name in proto.__all__
        if isinstance(getattr(proto, name), type)
        and issubclass(getattr(proto, name), Message)
        and name != "Message"
    }
    assert {c.__name__ for c in MESSAGE_CLASSES} == exported


def message_strategy(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in fields(cls)})


any_message = st.one_of(*(message_strategy(c) for c in MESSAGE_CLASSES))
handshake_message = st.one_of(*(message_strategy(c) for c in (Hello, Challenge, Proof))).filter(
    lambda m: len(encode(m)) <= HANDSHAKE_MAX
)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda c: c.__name__)
def test_each_message_class_round_trips(cls: type[Message]) -> None:
    @settings(max_examples=15, deadline=None)
    @given(msg=message_strategy(cls), bytewise=st.booleans())
    def round_trip(msg: Message, bytewise: bool) -> None:
        pair = make_pair()
        assert pair.to_server(msg, bytewise=bytewise) == [msg]
        (back,) = pair.to_client(msg, bytewise=bytewise)
        assert back == msg
        assert shape(back) == shape(msg)  # records come back as their classes

    round_trip()


def shape(value: object) -> object:
    """The types in a value, nested: equal tuples of different record classes differ."""
    if dataclasses.is_dataclass(value):
        fields_ = [getattr(value, f.name) for f in fields(value)]
        return (type(value).__name__, *(shape(v) for v in fields_))
    if isinstance(value, tuple):
        return (type(value).__name__, *(shape(v) for v in value))
    return type(value).__name__ if value is not None else None


@FUZZ
@given(msgs=st.lists(any_message, min_size=1, max_size=4), bytewise=st.booleans())
def test_every_message_round_trips_in_a_session(msgs: list[Message], bytewise: bool) -> None:
    pair = make_pair()
    assert pair.to_server(*msgs, bytewise=bytewise) == msgs
    assert pair.to_client(*msgs, bytewise=bytewise) == msgs


@FUZZ
@given(msg=any_message, bytewise=st.booleans())
def test_every_message_round_trips_in_parts(msg: Message, bytewise: bool) -> None:
    pair = make_pair(max_frame=256, max_message=1 << 16)
    assert pair.to_server(msg, bytewise=bytewise) == [msg]


@FUZZ
@given(msgs=st.lists(any_message, min_size=1, max_size=4), data=st.data())
def test_every_message_round_trips_on_plain_codec_in_random_chunks(
    msgs: list[Message], data: st.DataObject
) -> None:
    a, b = FrameCodec(authenticated=False), FrameCodec(authenticated=False)
    wire = join(x for m in msgs for x in a.send(m))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    got: list[Message] = []
    start = 0
    for cut in [*cuts, len(wire)]:
        got += b.receive(wire[start:cut])
        start = cut
    assert got == msgs


@FUZZ
@given(msg=handshake_message, bytewise=st.booleans())
def test_handshake_messages_round_trip_in_handshake_mode(msg: Message, bytewise: bool) -> None:
    a, b = FrameCodec(), FrameCodec()
    assert feed(b, join(a.send(msg)), bytewise=bytewise) == [msg]
    assert b.in_handshake


def _feed_garbage(codec: FrameCodec, chunks: list[bytes]) -> None:
    try:
        for chunk in chunks:
            codec.receive(chunk)
            codec.receive(b"")
    except ProtocolError:
        with pytest.raises(ProtocolError):
            codec.receive(b"")


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_in_handshake_mode_raise_only_protocol_errors(chunks: list[bytes]) -> None:
    _feed_garbage(FrameCodec(), chunks)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_in_a_session_raise_only_protocol_errors(chunks: list[bytes]) -> None:
    _feed_garbage(make_pair().server, chunks)


@FUZZ
@given(chunks=st.lists(st.binary(max_size=64), max_size=6))
def test_random_bytes_on_plain_codec_raise_only_protocol_errors(chunks: list[bytes]) -> None:
    _feed_garbage(FrameCodec(authenticated=False, max_frame=256, max_message=1024), chunks)


@FUZZ
@given(
    kind=st.sampled_from([0, 1, 2, 3]),
    body=st.binary(max_size=200),
)
def test_random_bodies_in_valid_frames_raise_only_protocol_errors(kind: int, body: bytes) -> None:
    """Garbage that passes the framing reaches ``decode`` (kind 0 in handshake mode)."""
    frame = struct.pack(">IB", len(body), kind) + body
    codec = FrameCodec() if kind == 0 else FrameCodec(authenticated=False)
    _feed_garbage(codec, [frame])


msgpack_value = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(MIN_INT, MAX_INT)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.integers(0, 9), inner, max_size=3)
    ),
    max_leaves=12,
)


@FUZZ
@given(
    tag=st.sampled_from([c.TAG for c in MESSAGE_CLASSES] + [0, 99]),
    values=st.lists(msgpack_value, max_size=10),
)
def test_decode_of_tagged_garbage_raises_only_remote_protocol_error(
    tag: int, values: list[object]
) -> None:
    raw = msgpack.packb([tag, *values], use_bin_type=True)
    try:
        msg = decode(raw)
    except RemoteProtocolError:
        return
    # whatever decode accepts is a well-typed message that can be sent on
    assert type(msg) is proto._REGISTRY[tag]
    encode(msg)


# ---- attachments: large byte strings out of band ----


@pytest.mark.parametrize("bytewise", [False, True], ids=["one-piece", "byte-at-a-time"])
def test_large_payload_travels_as_attachment_frames(bytewise: bool) -> None:
    pair = make_pair(max_frame=4096, max_message=1 << 20)
    payload = os.urandom(100_000)
    s = Submit(b"h" * 16, os.urandom(40_000), "mod.fn", (("a", b"x"), ("b", payload)))
    data = join(pair.client.send(s))
    kinds = [f[4] for f in frames_of(data)]
    assert kinds[0] == 4 and set(kinds[1:]) == {5}  # HEAD, then BLOB frames only
    assert len(kinds) == 1 + -(-40_000 // 4096) + -(-100_000 // 4096)
    got = feed(pair.server, data, bytewise=bytewise)
    assert got == [s]
    assert bytes(got[0].items[1][1]) == payload
    assert pair.server.buffered == 0
    assert feed(pair.server, join(pair.client.send(submit(b"after"))), bytewise=False) == [
        submit(b"after")
    ]


def test_plain_codec_carries_attachments() -> None:
    sender, receiver = FrameCodec(authenticated=False), FrameCodec(authenticated=False)
    s = submit(os.urandom(200_000))
    data = join(sender.send(s))
    got = receiver.receive(data[:70_000]) + receiver.receive(data[70_000:])
    assert got == [s]


def test_attack_flipped_bit_in_an_attachment_frame() -> None:
    pair = make_pair(max_frame=4096, max_message=1 << 20)
    data = bytearray(join(pair.client.send(submit(os.urandom(50_000)))))
    data[len(data) // 2] ^= 0x01  # inside some BLOB frame's body
    with pytest.raises(RemoteProtocolError, match="MAC"):
        pair.server.receive(bytes(data))
    assert pair.server.buffered == 0


def test_attack_attachment_frame_without_a_head() -> None:
    pair = make_pair(max_frame=4096, max_message=1 << 20)
    frames = frames_of(join(pair.client.send(submit(os.urandom(50_000)))))
    fresh = make_pair(max_frame=4096, max_message=1 << 20)
    with pytest.raises(RemoteProtocolError):
        fresh.server.receive(frames[1])  # a BLOB frame first: never accepted


def test_attack_attachments_larger_than_max_message_refused_before_allocation() -> None:
    sender = FrameCodec(authenticated=False, max_frame=4096, max_message=1 << 30)
    receiver = FrameCodec(authenticated=False, max_frame=4096, max_message=64 * 1024)
    frames = frames_of(join(sender.send(submit(os.urandom(100_000)))), mac=False)
    with pytest.raises(RemoteProtocolError, match="attachments of 100000 bytes"):
        receiver.receive(frames[0])  # the HEAD alone is refused
    assert receiver.buffered == 0


# ---- shared buffers: a node's big argument handed to its worker by file name ----


def test_worker_pipe_sends_a_shared_buffer_by_name_and_the_worker_maps_it(tmp_path) -> None:
    import mmap

    from mesh.node._shm import SharedBlocks

    blocks = SharedBlocks("t", tmp_path)
    try:
        payload = os.urandom(3 << 20)
        buf = blocks.allocate(len(payload))
        assert isinstance(buf, memoryview) and len(buf) == len(payload)
        buf[:] = payload
        node_side = FrameCodec(authenticated=False, share=blocks.share)
        worker_side = FrameCodec(authenticated=False, open_shared=open_shared_file)
        run = proto.Run(b"h" * 16, b"", "mod.fn", (("j1", buf),))
        data = join(node_side.send(run))
        assert len(data) < 4096  # the name travelled, not the 3 MB
        (got,) = worker_side.receive(data)
        mapped = got.items[0][1]
        assert isinstance(mapped, mmap.mmap) and bytes(mapped) == payload
        (path,) = list(blocks.dir.iterdir())
        del buf, run
        import gc

        gc.collect()
        assert not path.exists()  # dropped by the node, never reported closed: unlinked
        assert bytes(mapped) == payload  # the worker's copy-on-write mapping stays valid
    finally:
        blocks.close()
    assert not blocks.dir.exists()


def test_a_file_chunk_lands_in_ordinary_memory_and_a_job_argument_in_shared(tmp_path) -> None:
    """The node's allocator hears the message type from the HEAD frame: only a Submit's
    big argument (bound for a worker) gets a shared file; a file chunk passes through."""

    from mesh.node._shm import SharedBlocks

    blocks = SharedBlocks("t", tmp_path)
    try:
        node_side = FrameCodec(authenticated=False, allocate=blocks.allocate)
        client_side = FrameCodec(authenticated=False)
        payload = os.urandom(2 << 20)
        (chunk,) = node_side.receive(join(client_side.send(proto.FileChunk(7, payload))))
        assert isinstance(chunk, proto.FileChunk) and bytes(chunk.data) == payload
        assert blocks.share(chunk.data) is None and not list(blocks.dir.iterdir())
        (sub,) = node_side.receive(join(client_side.send(submit(payload))))
        arg = sub.items[0][1]
        assert isinstance(arg, memoryview) and bytes(arg) == payload
        assert blocks.share(arg) is not None and len(list(blocks.dir.iterdir())) == 1
    finally:
        blocks.close()


def test_network_codecs_never_open_shared_names() -> None:
    with pytest.raises(ValueError):
        FrameCodec(authenticated=True, open_shared=open_shared_file)


def test_attack_shared_file_name_from_an_authenticated_peer_is_refused(tmp_path) -> None:
    """A peer naming a file (ext type 2) gets a protocol error; nothing is opened."""
    secret_file = tmp_path / "not-for-you"
    secret_file.write_bytes(b"x" * 100)
    pair = make_pair()
    body = msgpack.packb(
        [proto.Submit.TAG, b"h" * 16, b"f", "fn",
         [["j1", msgpack.ExtType(2, str(secret_file).encode())]]],
        use_bin_type=True,
    )  # fmt: skip
    frame = pair.client._frame(1, body)  # a well-MAC'd MSG frame around it
    with pytest.raises(RemoteProtocolError, match="wrong type"):
        pair.server.receive(join(frame))


def _deliver_like_a_buffered_protocol(codec: FrameCodec, data: bytes, chunk: int) -> list:
    """Feed ``data`` as asyncio's BufferedProtocol would: into direct buffers when offered."""
    out, pos = [], 0
    while pos < len(data):
        direct = codec.direct_buffer()
        if direct is not None:
            n = min(len(direct), chunk, len(data) - pos)
            direct[:n] = data[pos : pos + n]
            out += codec.received_direct(direct, n)
        else:
            n = min(chunk, len(data) - pos)
            out += codec.receive(data[pos : pos + n])
        pos += n
    return out


def test_direct_reads_into_attachments_round_trip() -> None:
    pair = make_pair(max_frame=64 * 1024, max_message=1 << 22)
    s = submit(os.urandom(500_000))
    data = join(pair.client.send(s))
    got = _deliver_like_a_buffered_protocol(pair.server, data, chunk=50_000)
    assert got == [s]
    assert pair.server.direct_buffer() is None and pair.server.buffered == 0


def test_attack_flipped_bit_read_directly_into_an_attachment() -> None:
    pair = make_pair(max_frame=64 * 1024, max_message=1 << 22)
    data = bytearray(join(pair.client.send(submit(os.urandom(500_000)))))
    data[300_000] ^= 0x01
    with pytest.raises(RemoteProtocolError, match="MAC"):
        _deliver_like_a_buffered_protocol(pair.server, bytes(data), chunk=50_000)


# ---- recycled attachment buffers ----


def _forget_recycled() -> None:
    """Start from no recycled buffers (this process's clients may have left some)."""
    from mesh import _frames

    with _frames._recycled_lock:
        _frames._recycled.clear()
        _frames._recycled_bytes = 0


def test_a_recycled_buffer_is_handed_out_again_for_its_size_only() -> None:
    from mesh._frames import allocate_buffer, recycle_buffer

    _forget_recycled()
    size = (4 << 20) + 4096
    buf = allocate_buffer(size)
    buf[:5] = b"hello"
    recycle_buffer(buf)
    assert len(allocate_buffer(size + 4096)) == size + 4096  # another size: a new one
    again = allocate_buffer(size)
    assert again is buf and again[:5] == b"hello"  # as it was given back
    assert allocate_buffer(size) is not buf  # handed out once


def test_small_buffers_are_not_kept_and_the_kept_bytes_are_capped() -> None:
    from mesh import _frames
    from mesh._frames import RECYCLED_MAX, allocate_buffer, recycle_buffer

    _forget_recycled()
    small = allocate_buffer(1000)
    recycle_buffer(small)
    assert allocate_buffer(1000) is not small
    size = (2 << 20) + 8192
    bufs = [allocate_buffer(size) for _ in range(RECYCLED_MAX // size + 2)]
    for b in bufs:
        recycle_buffer(b)
    assert _frames._recycled_bytes <= RECYCLED_MAX
    kept = [allocate_buffer(size) for _ in bufs]
    assert sum(any(k is b for b in bufs) for k in kept) == RECYCLED_MAX // size
