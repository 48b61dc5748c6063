"""The frame codec: length-prefixed, MAC'd msgpack frames, as a pure object.

No sockets, no asyncio, no clock: bytes in, messages out; messages in, bytes out
(the shape of h11's ``Connection``). One codec instance serves one direction pair
of one connection.

Frame layout::

    u32 body length | u8 kind | body | MAC (16 bytes, authenticated frames only)

* ``HANDSHAKE`` frames come first, unauthenticated, and are at most 256 bytes.
* After :meth:`FrameCodec.start_session`, every frame carries
  ``HMAC-SHA256(direction key, u64 sequence | u32 length | u8 kind | body)[:16]``;
  sequence numbers are implicit and count from 0 in each direction, so an injected,
  replayed, reordered or altered frame fails its MAC.
* A message longer than ``max_frame`` travels as ``PART`` frames closed by an
  ``END`` frame and is reassembled up to ``max_message`` bytes.

The length is checked against the limit as soon as the 5 header bytes are in,
before any buffer for the body is grown. After any error the codec stays broken:
the connection must be dropped.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

from mesh._protocol import Challenge, Hello, Message, Proof, decode, encode
from mesh.errors import LocalProtocolError, ProtocolError, RemoteProtocolError

__all__ = [
    "DEFAULT_MAX_FRAME",
    "DEFAULT_MAX_MESSAGE",
    "HANDSHAKE_MAX",
    "HEADER_SIZE",
    "MAC_SIZE",
    "FrameCodec",
]

HEADER = struct.Struct(">IB")
HEADER_SIZE = HEADER.size
SEQ_HEADER = struct.Struct(">QIB")
MAC_SIZE = 16
HANDSHAKE_MAX = 256
DEFAULT_MAX_FRAME = 4 << 20
DEFAULT_MAX_MESSAGE = 2 << 30

HANDSHAKE, MSG, PART, END = 0, 1, 2, 3
_HANDSHAKE_TYPES = (Hello, Challenge, Proof)


class FrameCodec:
    """Turns messages into frame bytes and frame bytes into messages.

    ``authenticated=True`` (the network): starts in handshake mode and needs
    :meth:`start_session` before anything else may pass. ``authenticated=False``
    (the node's local worker pipes): plain frames with no MAC from the start.
    """

    def __init__(
        self,
        *,
        authenticated: bool = True,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_message: int = DEFAULT_MAX_MESSAGE,
    ) -> None:
        if max_frame < HANDSHAKE_MAX or max_message < max_frame:
            raise ValueError("need HANDSHAKE_MAX <= max_frame <= max_message")
        self.max_frame = max_frame
        self.max_message = max_message
        self._handshake = authenticated
        self._send_mac: hmac.HMAC | None = None
        self._recv_mac: hmac.HMAC | None = None
        self._send_seq = 0
        self._recv_seq = 0
        self._buf = bytearray()
        self._parts: list[bytes] = []
        self._parts_size = 0
        self._error: ProtocolError | None = None

    @property
    def in_handshake(self) -> bool:
        return self._handshake

    def start_session(self, send_key: bytes, recv_key: bytes) -> None:
        """Leave handshake mode: from now on every frame in each direction is MAC'd."""
        if not self._handshake:
            raise LocalProtocolError("session already started")
        self._handshake = False
        self._send_mac = hmac.new(send_key, digestmod=hashlib.sha256)
        self._recv_mac = hmac.new(recv_key, digestmod=hashlib.sha256)

    # ---- sending ----

    def send(self, msg: Message) -> list[bytes | memoryview]:
        """Return the buffers to write, in order, for one message."""
        if self._error is not None:
            raise LocalProtocolError("codec is broken after an earlier error")
        body = encode(msg)
        if self._handshake:
            if not isinstance(msg, _HANDSHAKE_TYPES):
                raise LocalProtocolError(f"{type(msg).__name__} sent before authentication")
            if len(body) > HANDSHAKE_MAX:
                raise LocalProtocolError(f"handshake frame of {len(body)} bytes > {HANDSHAKE_MAX}")
            return [HEADER.pack(len(body), HANDSHAKE) + body]
        n = len(body)
        if n <= self.max_frame:
            return self._frame(MSG, body)
        if n > self.max_message:
            raise LocalProtocolError(
                f"{type(msg).__name__} of {n} bytes exceeds the maximum message size "
                f"{self.max_message}"
            )
        out: list[bytes | memoryview] = []
        view = memoryview(body)
        step = self.max_frame
        for start in range(0, n, step):
            end = min(start + step, n)
            out += self._frame(END if end == n else PART, view[start:end])
        return out

    def _frame(self, kind: int, body: bytes | memoryview) -> list[bytes | memoryview]:
        n = len(body)
        if self._send_mac is None:
            if n < 65536:  # one buffer: the reader wakes once, not for the header alone
                return [HEADER.pack(n, kind) + bytes(body)]
            return [HEADER.pack(n, kind), body]
        mac = self._send_mac.copy()
        mac.update(SEQ_HEADER.pack(self._send_seq, n, kind))
        mac.update(body)
        self._send_seq += 1
        if n < 4096:  # one small buffer beats three writes
            return [HEADER.pack(n, kind) + bytes(body) + mac.digest()[:MAC_SIZE]]
        return [HEADER.pack(n, kind), body, mac.digest()[:MAC_SIZE]]

    # ---- receiving ----

    def receive(self, data: bytes | bytearray | memoryview = b"") -> list[Message]:
        """Feed received bytes; return the messages now complete.

        In handshake mode at most one message is returned per call (the caller
        may need to call :meth:`start_session` before the next frame is read);
        call again with ``b""`` to continue with buffered bytes.
        """
        if self._error is not None:
            raise self._error
        buf = self._buf
        if data:
            buf += data
        out: list[Message] = []
        pos = 0
        try:
            while len(buf) - pos >= HEADER_SIZE:
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
                if kind not in (MSG, PART, END):
                    raise RemoteProtocolError(f"unknown frame kind {kind}")
                if length > self.max_frame:
                    raise RemoteProtocolError(
                        f"frame of {length} bytes exceeds the maximum {self.max_frame}"
                    )
                mac_size = MAC_SIZE if self._recv_mac is not None else 0
                body_at = pos + HEADER_SIZE
                end = body_at + length + mac_size
                if end > len(buf):
                    break
                with memoryview(buf) as view:
                    body = bytes(view[body_at : body_at + length])
                    if self._recv_mac is not None:
                        mac = self._recv_mac.copy()
                        mac.update(SEQ_HEADER.pack(self._recv_seq, length, kind))
                        mac.update(body)
                        if not hmac.compare_digest(
                            mac.digest()[:MAC_SIZE], view[end - MAC_SIZE : end]
                        ):
                            raise RemoteProtocolError(
                                f"frame {self._recv_seq} failed its MAC (altered, injected, "
                                "replayed or reordered)"
                            )
                        self._recv_seq += 1
                pos = end
                if kind == MSG:
                    if self._parts:
                        raise RemoteProtocolError("whole frame inside a multi-frame message")
                    out.append(decode(body))
                    continue
                self._parts_size += length
                if self._parts_size > self.max_message:
                    raise RemoteProtocolError(
                        f"message exceeds the maximum size {self.max_message}"
                    )
                self._parts.append(body)
                if kind == END:
                    whole = b"".join(self._parts)
                    self._parts.clear()
                    self._parts_size = 0
                    out.append(decode(whole))
        except ProtocolError as exc:
            self._error = exc
            buf.clear()
            self._parts.clear()
            self._parts_size = 0
            raise
        finally:
            if pos:
                del buf[:pos]
        return out

    @property
    def buffered(self) -> int:
        """Bytes received and not yet returned as messages (for memory accounting)."""
        return len(self._buf) + self._parts_size
