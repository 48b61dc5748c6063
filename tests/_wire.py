"""Raw blocking sockets to a node: literal bytes, and an authenticated session driven by hand.

``Session`` runs the real handshake (``mesh._auth.ClientHandshake``) and frame codec
(``mesh._frames.FrameCodec``) over a plain socket, so a test can build a genuine
authenticated frame and then alter, replay or reorder its bytes.
"""

from __future__ import annotations

import socket
import time

from mesh._auth import ClientHandshake
from mesh._frames import FrameCodec
from mesh._protocol import Load, Message

CLOSE_DEADLINE_S = 3.0


def connect(host: str, port: int, timeout_s: float = 5.0) -> socket.socket:
    return socket.create_connection((host, port), timeout=timeout_s)


def closed_by_peer(sock: socket.socket, within_s: float = CLOSE_DEADLINE_S) -> bool:
    """Read (and drop) what the node sends until it closes: True if it did within the deadline."""
    deadline = time.monotonic() + within_s
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
        if not data:
            return True


def joined(buffers: list[bytes | memoryview]) -> bytes:
    return b"".join(bytes(b) for b in buffers)


class Session:
    """An authenticated connection to a node over a raw blocking socket."""

    def __init__(self, host: str, port: int, secret: bytes, timeout_s: float = 10.0) -> None:
        self.sock = connect(host, port, timeout_s)
        self.sock.settimeout(timeout_s)
        self.codec = FrameCodec()
        self.inbox: list[Message] = []
        try:
            hs = ClientHandshake(secret, name="raw-test", peer=f"{host}:{port}")
            self.sock.sendall(joined(self.codec.send(hs.start())))
            challenge = self._read_handshake()
            self.sock.sendall(joined(self.codec.send(hs.receive(challenge))))
            keys = hs.confirm(self._read_handshake())
            self.codec.start_session(keys.send, keys.recv)
            self.inbox.extend(self.codec.receive())  # anything already buffered
            self.load = self.expect(Load)
        except BaseException:
            self.sock.close()
            raise

    def _read_handshake(self) -> Message:
        while True:
            msgs = self.codec.receive(b"")
            if msgs:
                return msgs[0]
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("node closed the connection during the handshake")
            msgs = self.codec.receive(data)
            if msgs:
                return msgs[0]

    def frame(self, msg: Message) -> bytes:
        """The exact bytes of ``msg`` as the next authenticated frame (uses a sequence number)."""
        return joined(self.codec.send(msg))

    def send(self, msg: Message) -> None:
        self.sock.sendall(self.frame(msg))

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next_message(self) -> Message:
        while not self.inbox:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("node closed the connection")
            self.inbox.extend(self.codec.receive(data))
        return self.inbox.pop(0)

    def expect(self, kind: type[Message]) -> Message:
        while True:
            msg = self.next_message()
            if isinstance(msg, kind):
                return msg

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
