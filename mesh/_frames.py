"""The frame codec: length-prefixed, encrypted and authenticated msgpack frames, as a pure object.

No sockets, no asyncio, no clock: bytes in, messages out; messages in, bytes out
(the shape of h11's ``Connection``). One codec instance serves one direction pair
of one connection.

Frame layout::

    u32 body length | u8 kind | body | tag (16 bytes, session frames only)

* ``HANDSHAKE`` frames come first, in clear, and are at most 256 bytes.
* After :meth:`FrameCodec.start_session`, every frame's body is AES-256-GCM
  ciphertext under the direction's key, and the tag is GCM's over that body with
  ``u64 sequence | u32 length | u8 kind`` as associated data. Sequence numbers are
  implicit and count from 0 in each direction, so a read body reveals nothing and an
  injected, replayed, reordered or altered frame fails its tag. The GCM nonce is the
  sequence number: it never repeats under one key, since each direction of each
  connection has a key of its own (derived from both handshake nonces). The length
  and kind travel in clear (they are authenticated), so the codec can check a length
  against its limit before it reads the body.
* A message longer than ``max_frame`` travels as ``PART`` frames closed by an
  ``END`` frame and is reassembled up to ``max_message`` bytes.
* Large byte strings (arguments, results, function blobs of ``ATTACH_MIN`` bytes or
  more) travel out of band: a ``HEAD`` frame carries their sizes and the message with
  placeholders, then ``BLOB`` frames stream each one straight into a buffer of the
  announced size (checked against ``max_message`` first), with no msgpack copy; each
  BLOB body is encrypted as the socket drains, in slices, and decrypted in place where
  it lands. Nothing is decoded until every frame of the message has passed its tag.

The length is checked against the limit as soon as the 5 header bytes are in,
before any buffer for the body is grown. After any error the codec stays broken:
the connection must be dropped.
"""

from __future__ import annotations

import mmap
import struct
import threading
from collections.abc import Callable, Iterator

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import (
    AEADDecryptionContext,
    AEADEncryptionContext,
    Cipher,
    algorithms,
    modes,
)
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from mesh._protocol import (
    Challenge,
    Hello,
    Message,
    Proof,
    SharedOpener,
    decode,
    encode,
    encode_attached,
)
from mesh.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_MESSAGE",
    "HANDSHAKE_MAX",
    "HEADER_SIZE",
    "MAC_SIZE",
    "Allocate",
    "FrameCodec",
    "allocate_buffer",
    "recycle_buffer",
]

HEADER = struct.Struct(">IB")
HEADER_SIZE = HEADER.size
SEQ_HEADER = struct.Struct(">QIB")
NONCE = struct.Struct(">4xQ")  # the 96-bit GCM nonce: the frame's sequence number
MAC_SIZE = 16  # the GCM tag after each session frame's body
# A BLOB frame's body is encrypted this much at a time as the socket takes it: its
# first bytes leave before the rest is encrypted, and no frame-sized copy is made.
SEAL_SLICE = 256 * 1024
HANDSHAKE_MAX = 256
DEFAULT_MAX_FRAME = 4 << 20
DEFAULT_MAX_MESSAGE = 2 << 30

COUNT = struct.Struct(">I")
HANDSHAKE, MSG, PART, END, HEAD, BLOB = 0, 1, 2, 3, 4, 5
# Byte strings this long or longer travel as attachments: raw frames, not msgpack.
ATTACH_MIN = 32 * 1024
MAX_ATTACHMENTS = 65536
MMAP_MIN = 1 << 20
_HANDSHAKE_TYPES = (Hello, Challenge, Proof)


class _Aead:
    """One direction's frame cipher: AES-256-GCM, the sequence number as nonce and
    ``seq | length | kind`` as associated data."""

    __slots__ = ("_aead", "_aes")

    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)
        self._aes = algorithms.AES(key)

    def seal(self, seq: int, kind: int, body: bytes | bytearray | memoryview) -> bytes:
        """The ciphertext of a whole frame body, its tag appended."""
        return self._aead.encrypt(NONCE.pack(seq), body, SEQ_HEADER.pack(seq, len(body), kind))

    def open(self, seq: int, kind: int, sealed: memoryview) -> bytes:
        """The plaintext of a whole frame body (``sealed``: ciphertext, then tag)."""
        aad = SEQ_HEADER.pack(seq, len(sealed) - MAC_SIZE, kind)
        try:
            return self._aead.decrypt(NONCE.pack(seq), sealed, aad)
        except InvalidTag:
            raise _tag_failed(seq) from None

    def encryptor(self, seq: int, length: int, kind: int) -> AEADEncryptionContext:
        """A context that encrypts frame ``seq`` piece by piece (BLOB frames)."""
        ctx = Cipher(self._aes, modes.GCM(NONCE.pack(seq))).encryptor()
        ctx.authenticate_additional_data(SEQ_HEADER.pack(seq, length, kind))
        return ctx

    def decryptor(self, seq: int, length: int, kind: int) -> AEADDecryptionContext:
        """A context that decrypts frame ``seq`` piece by piece, in place (BLOB frames)."""
        ctx = Cipher(self._aes, modes.GCM(NONCE.pack(seq))).decryptor()
        ctx.authenticate_additional_data(SEQ_HEADER.pack(seq, length, kind))
        return ctx


def _tag_failed(seq: int) -> RemoteProtocolError:
    return RemoteProtocolError(
        f"frame {seq} failed its MAC, the AEAD tag (altered, injected, replayed or reordered)"
    )


# Map big buffers' pages at once (one kernel call, not a fault per 4 KiB page): 100 MB
# in 4 MiB chunks took 33 ms of page faults, 21 ms populated. Up to this size only, so
# an announced 2 GB message never stalls the loop in one call: beyond, pages fault in
# as the bytes arrive.
POPULATE_MAX = 64 << 20
_POPULATE = getattr(mmap, "MAP_POPULATE", 0)
_ANON = getattr(mmap, "MAP_PRIVATE", 0) | getattr(mmap, "MAP_ANONYMOUS", 0)

Allocate = Callable[[int, int], "bytearray | mmap.mmap | memoryview"]


# Big buffers given back by their last user (recycle_buffer), by size: a file transfer
# takes and returns the same few 4 MiB chunks, where a fresh mapping of each costs
# about 1.2 ms of page zeroing (a third of a chunk's whole cost on the receiving side).
RECYCLED_MAX = 32 << 20  # bytes kept at most, process-wide
_recycled: dict[int, list[bytearray | mmap.mmap]] = {}
_recycled_bytes = 0
_recycled_lock = threading.Lock()


def recycle_buffer(buf: bytearray | mmap.mmap) -> None:
    """Give back a buffer from :func:`allocate_buffer` that nothing refers to any more
    (no message, no memoryview, no queued write): a later allocation of its size may
    return it as it is, old bytes included."""
    global _recycled_bytes
    size = len(buf)
    if size < MMAP_MIN or type(buf) not in (bytearray, mmap.mmap):
        return
    with _recycled_lock:
        if _recycled_bytes + size <= RECYCLED_MAX:
            _recycled.setdefault(size, []).append(buf)
            _recycled_bytes += size


def allocate_buffer(size: int, tag: int = -1) -> bytearray | mmap.mmap:
    """A writable buffer for an attachment of a message of type ``tag`` (any type:
    the default). Big ones are recycled ones of the same size if any, else anonymous
    mappings, where a bytearray would be zero-filled first (about 1 ms per MB here, on
    top of the copy)."""
    global _recycled_bytes
    if size < MMAP_MIN:
        return bytearray(size)
    if _recycled:
        with _recycled_lock:
            free = _recycled.get(size)
            if free:
                _recycled_bytes -= size
                buf = free.pop()
                if not free:
                    del _recycled[size]
                return buf
    if _ANON and size <= POPULATE_MAX:
        return mmap.mmap(-1, size, flags=_ANON | _POPULATE)
    return mmap.mmap(-1, size)


def _peek_tag(body: bytes | memoryview) -> int:
    """The message tag at the start of an encoded message (a msgpack array whose first
    item is the tag), or -1: read before the attachments' buffers are allocated, so
    their owner knows what they are for. Only a hint: decode() validates the message."""
    if len(body) < 6:
        return -1
    first = body[0]
    at = 1 if 0x90 <= first <= 0x9F else 3 if first == 0xDC else 5 if first == 0xDD else 0
    if not at:
        return -1
    tag = body[at]
    if tag <= 0x7F:
        return tag
    return body[at + 1] if tag == 0xCC else -1


class FrameCodec:
    """Turns messages into frame bytes and frame bytes into messages.

    ``authenticated=True`` (the network): starts in handshake mode and needs
    :meth:`start_session` before anything else may pass. ``authenticated=False``
    (the node's local worker pipes): plain frames, in clear with no tag, from the start.
    """

    def __init__(
        self,
        *,
        authenticated: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_message: int = DEFAULT_MAX_MESSAGE,
        allocate: Allocate | None = None,
        share: Callable[[object], str | None] | None = None,
        open_shared: SharedOpener | None = None,
    ) -> None:
        """``allocate(size, tag)`` makes the attachment buffers of a message of type
        ``tag`` (the node: shared memory for big job arguments, ordinary memory else);
        ``share`` names a shared file for a buffer instead of sending it, and
        ``open_shared`` opens such names (``mesh._protocol.open_shared_file``): both only
        on a node's pipes to its workers."""
        if open_shared is not None and authenticated:
            raise ValueError("shared buffers are for a node's local worker pipes only")
        self._allocate = allocate or allocate_buffer
        self._share = share
        self._open_shared = open_shared
        if max_frame < HANDSHAKE_MAX or max_message < max_frame:
            raise ValueError("need HANDSHAKE_MAX <= max_frame <= max_message")
        self.max_frame = max_frame
        self.max_message = max_message
        self._handshake = authenticated
        self._send_aead: _Aead | None = None
        self._recv_aead: _Aead | None = None
        self._send_seq = 0
        self._recv_seq = 0
        self._buf = bytearray()
        self._parts = bytearray()  # the multi-frame message being received
        self._parts_size = 0
        self._in_parts = False  # a PART frame came, its END not yet
        # Of the attached message being received.
        self._attachments: list[bytearray | mmap.mmap | memoryview] = []
        self._att_index = 0
        self._att_pos = 0
        self._head_body = b""
        self._blob_left = 0  # body bytes of the current BLOB frame still to come
        self._blob_pending = False  # a BLOB frame's body is (being) read; its tag is due
        self._blob_ctx: AEADDecryptionContext | None = None
        self._error: ProtocolError | None = None

    @property
    def in_handshake(self) -> bool:
        return self._handshake

    def start_session(self, send_key: bytes, recv_key: bytes) -> None:
        """Leave handshake mode: from now on every frame in each direction is encrypted.

        The keys (32 bytes, AES-256) must be fresh for this connection: nonces are
        sequence numbers from 0, so a key used twice would repeat nonces."""
        if not self._handshake:
            raise LocalProtocolError("session already started")
        self._handshake = False
        self._send_aead = _Aead(send_key)
        self._recv_aead = _Aead(recv_key)

    # ---- sending ----

    def send(self, msg: Message) -> list[bytes | memoryview]:
        """Return the buffers to write, in order, for one message."""
        out, rest = self.send_stream(msg)
        if rest is not None:
            out.extend(rest)
        return out

    def send_stream(
        self, msg: Message
    ) -> tuple[list[bytes | memoryview], Iterator[bytes | memoryview] | None]:
        """Like :meth:`send`, but the attachment frames of a big message come as an
        iterator, encrypted as they are taken: a writer that takes them as the socket
        drains sends the first bytes at once, and encrypts the rest while the peer reads
        (a 50 MB argument would wait ~20 ms for its encryption before its first byte). Their sequence
        numbers are taken now: write both parts, in order, before anything sent later."""
        if self._error is not None:
            raise LocalProtocolError("codec is broken after an earlier error")
        if self._handshake:
            body = encode(msg)
            if not isinstance(msg, _HANDSHAKE_TYPES):
                raise LocalProtocolError(f"{type(msg).__name__} sent before authentication")
            if len(body) > HANDSHAKE_MAX:
                raise LocalProtocolError(f"handshake frame of {len(body)} bytes > {HANDSHAKE_MAX}")
            return [HEADER.pack(len(body), HANDSHAKE) + body], None
        body, blobs = encode_attached(msg, ATTACH_MIN, self._share)
        if blobs:
            sent = self._send_attached(msg, body, blobs)
            if sent is not None:
                return sent
            body = encode(msg)  # too many attachments for one head: plain frames
        n = len(body)
        if n <= self.max_frame:
            return self._frame(MSG, body), None
        self._check_size(msg, n)
        out = []
        view = memoryview(body)
        step = self.max_frame
        for start in range(0, n, step):
            end = min(start + step, n)
            out += self._frame(END if end == n else PART, view[start:end])
        return out, None

    def _check_size(self, msg: Message, n: int) -> None:
        if n > self.max_message:
            raise LocalProtocolError(
                f"{type(msg).__name__} of {n} bytes exceeds the maximum message size "
                f"{self.max_message}"
            )

    def _send_attached(
        self, msg: Message, body: bytes, blobs: list[bytes | bytearray]
    ) -> tuple[list[bytes | memoryview], Iterator[bytes | memoryview] | None] | None:
        """HEAD frame (sizes + body with placeholders), then each attachment as BLOB frames."""
        if len(blobs) > MAX_ATTACHMENTS:
            return None
        sizes = [len(b) for b in blobs]
        head = COUNT.pack(len(blobs)) + struct.pack(f">{len(sizes)}Q", *sizes) + body
        if len(head) > self.max_frame:
            return None  # a huge head: the plain multi-frame path is as good
        self._check_size(msg, len(head) + sum(sizes))
        out = self._frame(HEAD, head)
        step = self.max_frame
        bodies = [memoryview(blob)[start : start + step]
                  for blob in blobs for start in range(0, len(blob), step)]  # fmt: skip
        if self._send_aead is None:
            for chunk in bodies:
                out += self._frame(BLOB, chunk)
            return out, None
        first = self._send_seq
        self._send_seq += len(bodies)  # taken now: later messages come after these frames
        return out, self._seal_frames(first, bodies)

    def _seal_frames(self, first: int, bodies: list[memoryview]) -> Iterator[bytes | memoryview]:
        """BLOB frames, encrypted a slice at a time as they are taken (fresh bytes each:
        a writer may still hold the previous slice)."""
        aead = self._send_aead
        assert aead is not None
        for seq, chunk in enumerate(bodies, first):
            n = len(chunk)
            ctx = aead.encryptor(seq, n, BLOB)
            yield HEADER.pack(n, BLOB)
            for start in range(0, n, SEAL_SLICE):
                yield ctx.update(chunk[start : start + SEAL_SLICE])
            ctx.finalize()
            yield ctx.tag

    def _frame(self, kind: int, body: bytes | memoryview) -> list[bytes | memoryview]:
        n = len(body)
        if self._send_aead is None:
            if n < 65536:  # one buffer: the reader wakes once, not for the header alone
                return [HEADER.pack(n, kind) + bytes(body)]
            return [HEADER.pack(n, kind), body]
        sealed = self._send_aead.seal(self._send_seq, kind, body)
        self._send_seq += 1
        if n < 4096:  # one small buffer beats two writes
            return [HEADER.pack(n, kind) + sealed]
        return [HEADER.pack(n, kind), sealed]

    # ---- receiving ----

    def receive(self, data: bytes | bytearray | memoryview = b"") -> list[Message]:
        """Feed received bytes; return the messages now complete.

        In handshake mode at most one message is returned per call (the caller
        may need to call :meth:`start_session` before the next frame is read);
        call again with ``b""`` to continue with buffered bytes.
        """
        if self._error is not None:
            raise self._error
        out: list[Message] = []
        try:
            if data and self._blob_left and not self._buf:
                # The body of an attachment frame: straight into its buffer.
                with memoryview(data) as view:
                    rest = self._fill(view)
                    if rest:
                        self._buf += rest
            elif data:
                self._buf += data
            self._parse(out)
        except ProtocolError as exc:
            self._error = exc
            self._buf.clear()
            self._parts.clear()
            self._parts_size = 0
            self._in_parts = False
            self._attachments = []
            raise
        return out

    def discard(self) -> None:
        """The connection is gone: drop what a half-received message holds (its
        attachment buffers, maybe shared memory blocks) now, not when this codec is."""
        self._buf = bytearray()
        self._parts = bytearray()
        self._parts_size = 0
        self._in_parts = False
        self._attachments = []
        self._head_body = b""
        self._blob_left = 0
        self._blob_pending = False
        self._blob_ctx = None
        self._error = self._error or LocalProtocolError("codec discarded: its connection is gone")

    def direct_buffer(self) -> memoryview | None:
        """Where the next received bytes may be written directly, if anywhere.

        Inside an attachment frame's body with nothing else buffered, the rest of
        that body: an I/O layer reads into it (``recv_into``) and then calls
        :meth:`received_direct`, sparing a copy of every large payload.
        """
        if self._blob_left and not self._buf and self._error is None:
            target = self._attachments[self._att_index]
            return memoryview(target)[self._att_pos : self._att_pos + self._blob_left]
        return None

    def received_direct(self, view: memoryview, n: int) -> list[Message]:
        """``n`` bytes were written at the start of ``view`` from :meth:`direct_buffer`."""
        if self._error is not None:
            raise self._error
        if not 0 < n <= self._blob_left:
            raise LocalProtocolError("received_direct without a matching direct_buffer")
        if self._blob_ctx is not None:
            with view[:n] as got:  # decrypted where it landed
                self._blob_ctx.update_into(got, got)
        self._att_pos += n
        self._blob_left -= n
        return self.receive()

    def _fill(self, view: memoryview) -> memoryview:
        """Copy the current BLOB frame's body from ``view``; return what is left of it."""
        take = min(self._blob_left, len(view))
        target = self._attachments[self._att_index]
        chunk = view[:take]
        if self._blob_ctx is not None:  # decrypted on its way in: one pass, no extra copy
            with memoryview(target) as whole, whole[self._att_pos : self._att_pos + take] as to:
                self._blob_ctx.update_into(chunk, to)
        else:
            target[self._att_pos : self._att_pos + take] = chunk
        self._att_pos += take
        self._blob_left -= take
        return view[take:]

    def _blob_done(self, out: list[Message]) -> None:
        """A BLOB frame is complete (and verified): advance, and finish the message."""
        if self._att_pos == len(self._attachments[self._att_index]):
            self._att_index += 1
            self._att_pos = 0
        if self._att_index == len(self._attachments):
            attachments, self._attachments = self._attachments, []
            out.append(decode(self._head_body, attachments, open_shared=self._open_shared))
            self._head_body = b""

    def _parse(self, out: list[Message]) -> None:
        buf = self._buf
        pos = 0
        mac_size = MAC_SIZE if self._recv_aead is not None else 0
        try:
            while True:
                if self._blob_left:
                    if pos == len(buf):
                        break
                    with memoryview(buf) as view:
                        rest = self._fill(view[pos:])
                        pos = len(buf) - len(rest)
                        rest.release()
                    continue
                if self._blob_pending:
                    if len(buf) - pos < mac_size:
                        break
                    if self._blob_ctx is not None:
                        try:
                            self._blob_ctx.finalize_with_tag(bytes(buf[pos : pos + mac_size]))
                        except InvalidTag:
                            raise _tag_failed(self._recv_seq) from None
                        self._recv_seq += 1
                    pos += mac_size
                    self._blob_pending = False
                    self._blob_ctx = None
                    self._blob_done(out)
                    continue
                if len(buf) - pos < HEADER_SIZE:
                    break
                length, kind = HEADER.unpack_from(buf, pos)
                if self._handshake:
                    if kind != HANDSHAKE or length > HANDSHAKE_MAX:
                        raise RemoteProtocolError(
                            f"bad handshake frame (kind {kind}, {length} bytes; at most "
                            f"{HANDSHAKE_MAX})"
                        )
                    end = pos + HEADER_SIZE + length
                    if end > len(buf):
                        break
                    msg = decode(bytes(buf[pos + HEADER_SIZE : end]))
                    pos = end
                    if not isinstance(msg, _HANDSHAKE_TYPES):
                        raise RemoteProtocolError(f"{type(msg).__name__} before authentication")
                    out.append(msg)
                    break
                if kind not in (MSG, PART, END, HEAD, BLOB):
                    raise RemoteProtocolError(f"unknown frame kind {kind}")
                if length > self.max_frame:
                    raise RemoteProtocolError(
                        f"frame of {length} bytes exceeds the maximum {self.max_frame}"
                    )
                if (kind == BLOB) != bool(self._attachments):
                    raise RemoteProtocolError(
                        "attachment frame outside an attached message"
                        if kind == BLOB
                        else "frame inside an attached message"
                    )
                if kind == BLOB:
                    left = len(self._attachments[self._att_index]) - self._att_pos
                    if not 0 < length <= left:
                        raise RemoteProtocolError(f"attachment frame of {length} bytes, {left} due")
                    if self._recv_aead is not None:
                        self._blob_ctx = self._recv_aead.decryptor(self._recv_seq, length, kind)
                    self._blob_left = length
                    self._blob_pending = True
                    pos += HEADER_SIZE
                    continue
                body_at = pos + HEADER_SIZE
                end = body_at + length + mac_size
                if end > len(buf):
                    break
                if self._recv_aead is None:  # plain: decoded in place, no copy made here
                    with memoryview(buf) as view, view[body_at:end] as body:
                        pos = end
                        self._frame_received(kind, body, out)
                    continue
                with memoryview(buf) as view, view[body_at:end] as sealed:
                    plain = self._recv_aead.open(self._recv_seq, kind, sealed)
                self._recv_seq += 1
                pos = end
                with memoryview(plain) as body:
                    self._frame_received(kind, body, out)
        finally:
            if pos:
                del buf[:pos]

    def _frame_received(self, kind: int, body: memoryview, out: list[Message]) -> None:
        """A verified MSG, HEAD, PART or END frame (``body`` is valid during this call only)."""
        if kind == MSG:
            if self._in_parts:
                raise RemoteProtocolError("whole frame inside a multi-frame message")
            out.append(decode(body, open_shared=self._open_shared))
        elif kind == HEAD:
            if self._in_parts:
                raise RemoteProtocolError("attached message inside a multi-frame message")
            self._start_attached(body)
        else:
            self._parts_size += len(body)
            if self._parts_size > self.max_message:
                raise RemoteProtocolError(f"message exceeds the maximum size {self.max_message}")
            self._parts += body  # one copy per part, none to join them
            self._in_parts = kind == PART
            if kind == END:
                whole, self._parts = self._parts, bytearray()
                self._parts_size = 0
                out.append(decode(whole, open_shared=self._open_shared))

    def _start_attached(self, head: memoryview) -> None:
        if len(head) < COUNT.size:
            raise RemoteProtocolError("attached message without its count")
        (n,) = COUNT.unpack_from(head)
        body_at = COUNT.size + 8 * n
        if not 0 < n <= MAX_ATTACHMENTS or len(head) < body_at:
            raise RemoteProtocolError(f"attached message with a bad count ({n})")
        sizes = struct.unpack_from(f">{n}Q", head, COUNT.size)
        total = sum(sizes)
        if min(sizes) == 0 or total + len(head) > self.max_message:
            raise RemoteProtocolError(
                f"attachments of {total} bytes (sizes must be > 0; at most {self.max_message})"
            )
        body = bytes(head[body_at:])
        tag = _peek_tag(body)  # the HEAD passed its tag: the sender is authenticated
        self._attachments = [self._allocate(size, tag) for size in sizes]  # checked above
        self._att_index = self._att_pos = 0
        self._head_body = body

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as messages (for memory accounting)."""
        return len(self._buf) + self._parts_size + sum(len(a) for a in self._attachments)
