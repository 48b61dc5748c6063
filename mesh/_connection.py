"""The asyncio edge of the wire: one class owns a transport, its codec and its handshake.

Reading happens in the protocol callback (no per-message task), writes go straight
to the transport in call order (the event loop serialises them), and any doubt
mid-frame aborts the connection. OS errors are translated here, once.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Literal

from mesh._auth import ClientHandshake, ServerHandshake
from mesh._frames import DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE, Allocate, FrameCodec
from mesh._protocol import Message, Ping
from mesh.errors import (
    AuthenticationError,
    ConnectionClosed,
    ConnectionLost,
    MeshConnectionError,
    ProtocolError,
)

__all__ = ["AdmissionGate", "Connection", "heartbeats", "open_connection"]

log = logging.getLogger("mesh.connection")

WRITE_SLICE = 256 * 1024
JOIN_MAX = 64 * 1024  # buffers shorter than this are joined into one write
READ_SIZE = 256 * 1024
# Until the handshake succeeds a connection reads into this much: handshake frames are
# a few hundred bytes, and a flood of unauthenticated sockets must cost the node little.
PREAUTH_READ_SIZE = 1024
DIRECT_MIN = 64 * 1024  # read straight into an attachment when this much is due

Role = Literal["client", "server", "plain"]
MessageHandler = Callable[["Connection", Message], None]
CloseHandler = Callable[["Connection", "BaseException | None"], None]


class AdmissionGate:
    """Caps the connections that have not authenticated yet, in all and per source
    address. Each holds a file descriptor until its handshake ends; without a cap a
    flood of idle or reconnecting sockets takes every descriptor the node has, and the
    connections of real clients and peers fail with it."""

    def __init__(self, total: int, per_source: int) -> None:
        self.total = total
        self.per_source = per_source
        self.pending = 0
        self._by_source: dict[str, int] = {}
        self.refused = 0

    def admit(self, source: str) -> bool:
        """Count one more unauthenticated connection from ``source``, or say no."""
        held = self._by_source.get(source, 0)
        if self.pending >= self.total or held >= self.per_source:
            self.refused += 1
            return False
        self.pending += 1
        self._by_source[source] = held + 1
        return True

    def release(self, source: str) -> None:
        """That connection authenticated or ended."""
        self.pending -= 1
        held = self._by_source.pop(source, 1) - 1
        if held > 0:
            self._by_source[source] = held


class Connection(asyncio.BufferedProtocol):
    """A framed message connection; authenticated unless ``role='plain'`` (worker pipes)."""

    def __init__(
        self,
        role: Role,
        *,
        secret: bytes = b"",
        name: str = "",
        node_id: str = "",
        peer_label: str = "peer",
        handshake_timeout_s: float = 5.0,
        max_frame: int = DEFAULT_MAX_FRAME,
        max_message: int = DEFAULT_MAX_MESSAGE,
        on_message: MessageHandler | None = None,
        on_close: CloseHandler | None = None,
        on_ready: Callable[[Connection], None] | None = None,
        allocate: Allocate | None = None,
        share: Callable[[object], str | None] | None = None,
        gate: AdmissionGate | None = None,
    ) -> None:
        self.role = role
        self.peer_label = peer_label
        self.codec = FrameCodec(
            authenticated=role != "plain",
            max_frame=max_frame,
            max_message=max_message,
            allocate=allocate,
            share=share,
        )
        self.on_message = on_message
        # Called the moment the handshake succeeds, before any later message is read.
        self.on_ready = on_ready
        self.on_close = on_close
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.close_reason: BaseException | None = None
        self.peer_name = ""
        self.peer_id = ""
        self._handshake_timeout_s = handshake_timeout_s
        self._client_hs = (
            ClientHandshake(secret, name=name, peer=peer_label) if role == "client" else None
        )
        self._server_hs = (
            ServerHandshake(secret, name=name, node_id=node_id) if role == "server" else None
        )
        self._deadline: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = self._loop.create_future()
        self._paused = False
        # Buffers waiting while the transport is paused: large payloads are handed to
        # the transport as fast as the socket drains, never copied into its buffer whole.
        self._outbox: deque[bytes | memoryview | Iterator[bytes | memoryview]] = deque()
        self._hello_seen = False  # the server saw the Hello; the client, the Challenge
        self._close_when_flushed = False
        # Loop time the peer last showed life: it sent bytes, or took ours off the socket.
        self.last_alive = self._loop.time()
        # Reads land here, or straight in an attachment's buffer (get_buffer).
        # Small until the peer authenticates (see PREAUTH_READ_SIZE).
        self._read_view = memoryview(bytearray(READ_SIZE if role == "plain" else PREAUTH_READ_SIZE))
        self._direct: memoryview | None = None
        self._gate = gate
        self._gated_source: str | None = None  # counted by the gate until authenticated
        if role == "plain":
            self.ready.set_result(None)

    # ---- asyncio.Protocol ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert hasattr(transport, "write")  # a stream transport (asyncio's or uvloop's)
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(high=WRITE_SLICE)  # type: ignore[attr-defined]
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._gate is not None:
            peer = transport.get_extra_info("peername")
            source = str(peer[0]) if isinstance(peer, tuple) and peer else "?"
            if not self._gate.admit(source):
                log.warning("refused a connection from %s: too many unauthenticated "
                            "connections (at most %d, %d per address)",
                            source, self._gate.total, self._gate.per_source)  # fmt: skip
                self.abort(ConnectionClosed(f"{self.peer_label}: too many unauthenticated "
                                            "connections"))  # fmt: skip
                return
            self._gated_source = source
        if self.role != "plain":
            self._deadline = self._loop.call_later(
                self._handshake_timeout_s, self._handshake_expired
            )
        if self._client_hs is not None:
            self._write(self._client_hs.start())

    def get_buffer(self, sizehint: int) -> memoryview:
        direct = self.codec.direct_buffer()
        if direct is not None and len(direct) >= DIRECT_MIN:
            self._direct = direct
            return direct
        self._direct = None
        return self._read_view

    def buffer_updated(self, nbytes: int) -> None:
        self.last_alive = self._loop.time()
        if self.closed:
            return
        direct, self._direct = self._direct, None
        if direct is None:
            self.data_received(self._read_view[:nbytes])
            return
        try:
            msgs = self.codec.received_direct(direct, nbytes)
            direct.release()
            self._deliver(msgs)
        except (ProtocolError, AuthenticationError) as exc:
            self.abort(exc)

    def _deliver(self, msgs: list[Message]) -> None:
        for msg in msgs:
            if self.on_message is not None:
                self.on_message(self, msg)
            if self.closed:
                return

    def data_received(self, data: bytes | memoryview) -> None:
        if self.closed:
            return
        try:
            if self.codec.in_handshake:
                self._handshake(data)
                data = b""
                if self.codec.in_handshake or self.closed:
                    return
            self._deliver(self.codec.receive(data))
        except (ProtocolError, AuthenticationError) as exc:
            self.abort(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        reason: BaseException | None
        if self.close_reason is not None:
            reason = self.close_reason
        elif exc is not None:
            reason = ConnectionLost(f"connection to {self.peer_label} lost: {exc}")
        elif self.closed:
            reason = None
        else:
            reason = ConnectionLost(f"{self.peer_label} closed the connection")
        self._finish(reason)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self.last_alive = self._loop.time()  # the peer is reading what we send
        self._paused = False
        self._flush()

    # ---- handshake ----

    def _handshake(self, data: bytes | memoryview) -> None:
        msgs = self.codec.receive(data)
        while msgs:
            (msg,) = msgs
            if self._server_hs is not None:
                try:
                    if not self._hello_seen:
                        self._hello_seen = True
                        self._write(self._server_hs.receive_hello(msg))
                    else:
                        proof, keys = self._server_hs.receive_proof(msg)
                        self._write(proof)  # the last frame in clear
                        self.codec.start_session(keys.send, keys.recv)
                        self.peer_name = self._server_hs.client_name
                        self._authenticated()
                        return
                except AuthenticationError as exc:
                    log.info("refused %s: %s", self.peer_label, exc)
                    raise
            else:
                assert self._client_hs is not None
                if not self._hello_seen:  # the Challenge: we prove first
                    self._hello_seen = True
                    self._write(self._client_hs.receive(msg))
                else:  # the node's proof, sent only once it accepted ours
                    keys = self._client_hs.confirm(msg)
                    self.codec.start_session(keys.send, keys.recv)
                    self.peer_name = self._client_hs.node_name
                    self.peer_id = self._client_hs.node_id
                    self._authenticated()
                    return
            msgs = self.codec.receive()

    def _authenticated(self) -> None:
        self._ungate()
        self._read_view = memoryview(bytearray(READ_SIZE))  # what arrived is parsed already
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self.on_ready is not None:
            self.on_ready(self)
        if not self.ready.done():
            self.ready.set_result(None)

    def _handshake_expired(self) -> None:
        self._deadline = None
        if self.codec.in_handshake and not self.closed:
            self.abort(AuthenticationError(f"{self.peer_label}: handshake not completed in time"))

    # ---- sending and closing ----

    def _write(self, msg: Message) -> None:
        assert self.transport is not None
        buffers, rest = self.codec.send_stream(msg)
        if rest is None and len(buffers) == 1 and not self._outbox:
            self.transport.write(buffers[0])
        else:
            self._outbox.extend(buffers)
            if rest is not None:
                self._outbox.append(rest)  # frames encrypted as the socket takes them
            self._flush()

    def _flush(self) -> None:
        """Hand queued buffers to the transport until it asks us to pause.

        Small buffers are joined into one write; big ones go whole, or in slices, so
        at most a slice is ever copied into the transport's own buffer.
        """
        transport, outbox = self.transport, self._outbox
        if transport is None or transport.is_closing():
            outbox.clear()
            return
        small: list[bytes | memoryview] = []
        # A write that failed (the peer is gone) closes the transport: the rest of the
        # outbox is dropped, not encrypted and written into it a slice at a time.
        while outbox and not self._paused and not transport.is_closing():
            b = outbox.popleft()
            if not isinstance(b, bytes | memoryview):
                taken = next(b, None)
                if taken is None:
                    continue
                outbox.appendleft(b)
                b = taken
            if len(b) < JOIN_MAX:
                small.append(b)
                if outbox and len(small) < 64:
                    continue
            if small:
                transport.write(b"".join(small))
                small = []
            if len(b) > WRITE_SLICE:
                view = memoryview(b)
                transport.write(view[:WRITE_SLICE])
                outbox.appendleft(view[WRITE_SLICE:])
            elif len(b) >= JOIN_MAX:  # an encrypted slice: never joined (a copy) with others
                transport.write(b)
        if small:
            transport.write(b"".join(small))
        if self._close_when_flushed and not outbox:
            transport.close()

    def send(self, msg: Message) -> None:
        """Queue one message for sending; raises ConnectionClosed/Lost if the link is gone."""
        if self.closed or self.transport is None:
            raise self.close_reason or ConnectionClosed(
                f"connection to {self.peer_label} is closed"
            )
        self._write(msg)

    def keepalive(self, dead_after_s: float, what: str, judge: bool = True) -> None:
        """One heartbeat: ping the peer, or drop it if it has been silent too long.

        Liveness comes from here, never from mDNS (a crashed node's record lingers):
        a peer that crashed, froze or lost its link is aborted with ConnectionLost.
        ``judge=False`` (our own loop was stalled, so what the peer sent may still be
        unread) only pings.
        """
        if self.closed:
            return
        now = self._loop.time()
        if judge and now - self.last_alive > dead_after_s:
            self.abort(ConnectionLost(f"{what} missed heartbeats for {dead_after_s:g} s"))
        else:
            self.send(Ping(now))

    def close(self) -> None:
        """Close after flushing what was already queued."""
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                if self._outbox:
                    self._close_when_flushed = True  # _flush closes it when done
                else:
                    self.transport.close()

    def abort(self, reason: BaseException | None = None) -> None:
        """Drop the connection at once (after a protocol error or a failed handshake)."""
        if self.close_reason is None:
            self.close_reason = reason
        if not self.closed:
            self.closed = True
            if self.transport is not None:
                self.transport.abort()

    def _ungate(self) -> None:
        if self._gate is not None and self._gated_source is not None:
            self._gate.release(self._gated_source)
        self._gated_source = None

    def _finish(self, reason: BaseException | None) -> None:
        self.closed = True
        self._ungate()
        if self.close_reason is None:
            self.close_reason = reason
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if not self.ready.done():
            self.ready.set_exception(
                reason
                or ConnectionLost(f"{self.peer_label} closed the connection during the handshake")
            )
            self.ready.exception()  # mark retrieved: the opener may already have given up
        self._outbox.clear()
        handler, self.on_close = self.on_close, None
        if handler is not None:
            handler(self, reason)
        # Nothing of a dead connection may outlive it: a partly received message's buffers
        # (shared memory blocks of a big argument) go now, and the references that made
        # cycles through handlers and tracebacks (freed only when the collector ran) go too.
        self.codec.discard()
        self._read_view = _NO_BUFFER
        self.on_message = self.on_ready = None
        self.transport = None
        if reason is not None:
            reason.__traceback__ = None


_NO_BUFFER = memoryview(bytearray(0))


async def heartbeats(interval_s: float, going: Callable[[], bool]) -> AsyncIterator[bool]:
    """Tick every ``interval_s`` while ``going()``: True when the tick came on time.

    A late tick means this loop was stalled, so what peers sent may still be unread:
    pass it as ``keepalive(judge=...)`` so nobody is declared dead for our stall.
    """
    loop = asyncio.get_running_loop()
    last = loop.time()
    while going():
        await asyncio.sleep(interval_s)
        now = loop.time()
        on_time, last = now - last < 2 * interval_s, now
        yield on_time


async def open_connection(
    host: str,
    port: int,
    secret: bytes,
    *,
    name: str = "",
    timeout_s: float = 5.0,
    max_frame: int = DEFAULT_MAX_FRAME,
    max_message: int = DEFAULT_MAX_MESSAGE,
    on_message: MessageHandler | None = None,
    on_close: CloseHandler | None = None,
) -> Connection:
    """Connect to a node and complete the mutual handshake, or raise a MeshError."""
    loop = asyncio.get_running_loop()
    label = f"node at {host}:{port}"
    conn: Connection | None = None

    def factory() -> Connection:
        nonlocal conn
        conn = Connection(
            "client",
            secret=secret,
            name=name,
            peer_label=label,
            handshake_timeout_s=timeout_s,
            max_frame=max_frame,
            max_message=max_message,
            on_message=on_message,
            on_close=on_close,
        )
        return conn

    try:
        await asyncio.wait_for(loop.create_connection(factory, host, port), timeout_s)
    except BaseException as exc:
        # wait_for may drop a connection made just as it timed out or was cancelled.
        if conn is not None:
            conn.abort()
        if isinstance(exc, (OSError, asyncio.TimeoutError)):
            raise MeshConnectionError(f"cannot reach {label}: {exc or 'timed out'}") from exc
        raise
    assert conn is not None
    try:
        await asyncio.wait_for(asyncio.shield(conn.ready), timeout_s + 1.0)
    except asyncio.TimeoutError:
        conn.abort()
        raise AuthenticationError(f"{label} did not complete the handshake in time") from None
    except (AuthenticationError, asyncio.CancelledError):
        conn.abort()
        raise
    except ConnectionLost as exc:
        # The node closes without a word when it refuses our proof.
        raise AuthenticationError(
            f"{label} refused this client's proof of the mesh secret (wrong secret?)"
        ) from exc
    if conn.peer_name:
        conn.peer_label = f"node {conn.peer_name} ({host}:{port})"
    return conn
