"""Big buffers travel beside the pickle, not inside it (pickle protocol 5, out of band).

Pure checks of the payload format, the codec and the node's store, then real nodes:
big ``bytes``, ``bytearray`` and NumPy arguments and results round-trip exactly, and
small arguments are still the plain pickles they always were.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
from mesh.node._store import JobStore, StoredJob

from mesh._frames import ATTACH_MIN, FrameCodec
from mesh._protocol import Results, Submit
from mesh._serialize import dumps_payload, loads, payload_size

BIG = 3 << 20  # past the node's shared-memory threshold: the worker maps a file


def echo(x):
    return x


def describe(x):
    return type(x).__name__, len(x), bytes(x[:16])


def numpy_in_place(a):
    a += 1  # the worker's copy-on-write mapping: writable, and the node's file unchanged
    return float(a.sum()), a.flags.writeable


# ---- the payload, no I/O ----


def test_small_arguments_stay_plain_pickles():
    for value in [(1, "a"), (b"x" * (ATTACH_MIN - 1),), ([1, 2], {"k": 3}), 7, b"small"]:
        payload = dumps_payload(value)
        assert type(payload) is bytes
        assert payload == pickle.dumps(value, 5) or loads(payload) == value


def test_a_big_bytes_goes_by_reference_beside_a_small_pickle():
    blob = os.urandom(ATTACH_MIN)
    payload = dumps_payload((blob, 5))
    assert type(payload) is tuple and len(payload) == 2
    assert len(payload[0]) < 200 and payload[1] is blob
    assert payload_size(payload) == len(payload[0]) + len(blob)
    assert loads(payload) == (blob, 5)


def test_the_same_big_bytes_twice_is_one_buffer_and_one_object():
    blob = os.urandom(ATTACH_MIN)
    payload = dumps_payload((blob, blob))
    assert type(payload) is tuple and len(payload) == 2
    a, b = loads(payload)
    assert a == blob and a is b


def test_a_mutable_buffer_is_copied_when_pickled():
    data = bytearray(os.urandom(ATTACH_MIN))
    expected = bytes(data)
    payload = dumps_payload((data,))
    data[:4] = b"\0\0\0\0"
    (got,) = loads(payload)
    assert type(got) is bytearray and got == expected


def test_numpy_buffers_go_out_of_band_and_come_back_writable():
    np = pytest.importorskip("numpy")
    a = np.arange(ATTACH_MIN, dtype=np.int32).reshape(64, -1)
    payload = dumps_payload({"a": a, "small": np.zeros(3)})
    assert type(payload) is tuple and len(payload) == 2
    got = loads((payload[0], bytearray(payload[1])))
    assert got["a"].flags.writeable and (got["a"] == a).all() and got["a"].shape == a.shape


def test_a_payload_crosses_the_codec_as_attachments():
    blob = os.urandom(BIG)
    sender, receiver = FrameCodec(authenticated=False), FrameCodec(authenticated=False)
    payload = dumps_payload((blob, bytearray(b"ab" * ATTACH_MIN)))
    msg = Submit(b"h" * 16, b"fn", "f", (("t-1", payload), ("t-2", dumps_payload((1,)))))
    data = b"".join(bytes(b) for b in sender.send(msg))
    (got,) = receiver.receive(data)
    assert isinstance(got, Submit)
    assert loads(got.items[0][1]) == (blob, bytearray(b"ab" * ATTACH_MIN))
    assert loads(got.items[1][1]) == (1,)
    reply = Results((("t-1", 2, payload, None),))
    (back,) = receiver.receive(b"".join(bytes(b) for b in sender.send(reply)))
    assert isinstance(back, Results) and loads(back.items[0][2]) == loads(payload)


def test_the_store_keeps_a_result_with_buffers(tmp_path: Path):
    blob = os.urandom(ATTACH_MIN)
    result = dumps_payload(blob)
    assert type(result) is tuple
    store = JobStore(tmp_path)
    try:
        row = StoredJob("t-1", 2, "f", "", 1.0, 2.0, 3.0, 0.5, "", "", result, None, 1)
        plain = StoredJob(
            "t-2", 2, "f", "", 1.0, 2.0, 3.0, 0.5, "", "", pickle.dumps(5, 5), None, 1
        )
        store.save([row, plain])
        loaded = {r.jid: r for r in store.load()}
    finally:
        store.close()
    assert loads(loaded["t-1"].result) == blob
    assert loads(loaded["t-2"].result) == 5


# ---- through real nodes ----


def test_big_buffers_round_trip_through_a_node(client):
    blob = os.urandom(BIG)
    data = bytearray(os.urandom(BIG + 1))
    medium = os.urandom(ATTACH_MIN + 3)  # an attachment, not a shared file
    jids = [client.call(echo, v) for v in (blob, data, medium, (blob, [data], {"m": medium}))]
    got = client.result(jids, timeout=60)
    assert got[0] == blob and type(got[0]) is bytes
    assert got[1] == data and type(got[1]) is bytearray
    assert got[2] == medium
    assert got[3] == (blob, [data], {"m": medium})
    assert client.result(client.call(describe, data), timeout=60) == (
        "bytearray", len(data), bytes(data[:16])
    )  # fmt: skip


def test_numpy_arrays_round_trip_through_a_node(client):
    np = pytest.importorskip("numpy")
    a = np.arange(BIG // 8, dtype=np.float64).reshape(4, -1)
    got = client.result(client.call(echo, a), timeout=60)
    assert got.dtype == a.dtype and got.shape == a.shape and (got == a).all()
    total, writable = client.result(client.call(numpy_in_place, a), timeout=60)
    assert writable and total == float((a + 1).sum())
    assert (client.result(client.call(echo, a), timeout=60) == a).all()


def test_small_arguments_still_work(client):
    assert client.result(client.map(echo, [1, "two", b"3", (4,), None]), timeout=60) == [
        1, "two", b"3", (4,), None
    ]  # fmt: skip
