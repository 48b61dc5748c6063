"""Mutual HMAC-SHA256 challenge-response, as pure state machines, plus the mesh secret.

The client sends :class:`Hello` with a fresh 32-byte nonce; the node answers with
:class:`Challenge` carrying its own nonce and its proof over both; the client checks
it and sends its :class:`Proof`. Both then derive one key per direction from the
secret and both nonces. Every failure on the node's side looks the same to the peer
(the connection closes); the client raises :class:`AuthenticationError` naming the
node, or :class:`VersionMismatch` naming both sides' versions.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

from mesh._protocol import PROTOCOL_VERSION, Challenge, Hello, Message, Proof
from mesh.errors import AuthenticationError, ConfigurationError, VersionMismatch

__all__ = [
    "MAGIC",
    "NONCE_SIZE",
    "PYTHON_VERSION",
    "ClientHandshake",
    "ServerHandshake",
    "SessionKeys",
    "dashboard_node_proof",
    "dashboard_request_mac",
    "dashboard_token",
    "default_secret_path",
    "ensure_secret_file",
    "fingerprint",
    "load_secret",
]

MAGIC = "lanmesh"
NONCE_SIZE = 32
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _mac(secret: bytes, *parts: bytes) -> bytes:
    h = hmac.new(secret, digestmod=hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()


@dataclass(frozen=True)
class SessionKeys:
    send: bytes
    recv: bytes


def _session(
    secret: bytes, client_nonce: bytes, server_nonce: bytes, *, client: bool
) -> SessionKeys:
    c2s = _mac(secret, b"lanmesh key client->node", client_nonce, server_nonce)
    s2c = _mac(secret, b"lanmesh key node->client", client_nonce, server_nonce)
    return SessionKeys(send=c2s, recv=s2c) if client else SessionKeys(send=s2c, recv=c2s)


def _versions(protocol: int, python: str) -> str:
    return f"protocol {protocol}, Python {python}"


class ClientHandshake:
    """The connecting side. ``start()`` -> Hello; ``receive(Challenge)`` -> Proof + keys."""

    def __init__(self, secret: bytes, *, name: str = "", peer: str = "node") -> None:
        self._secret = secret
        self._name = name[:64]
        self._peer = peer
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self.node_name = ""
        self.node_id = ""

    def start(self) -> Hello:
        return Hello(MAGIC, PROTOCOL_VERSION, PYTHON_VERSION, self._nonce, self._name)

    def receive(self, msg: Message) -> tuple[Proof, SessionKeys]:
        if not isinstance(msg, Challenge) or len(msg.nonce) != NONCE_SIZE:
            raise AuthenticationError(f"{self._peer} is not a lanmesh node (bad handshake)")
        if msg.protocol != PROTOCOL_VERSION or msg.python != PYTHON_VERSION:
            raise VersionMismatch(
                f"{self._peer} speaks {_versions(msg.protocol, msg.python)}; this client speaks "
                f"{_versions(PROTOCOL_VERSION, PYTHON_VERSION)}: run the same lanmesh and Python "
                "minor version on both sides"
            )
        expected = _mac(self._secret, b"lanmesh node proof", self._nonce, msg.nonce)
        if not hmac.compare_digest(expected, msg.proof):
            raise AuthenticationError(
                f"{self._peer} could not prove the mesh secret: it belongs to another mesh, or "
                "this client has the wrong secret (check MESH_SECRET or the secret file; "
                "`mesh secret` on the node prints its secret)"
            )
        self.node_name = msg.name
        self.node_id = msg.node_id
        proof = _mac(self._secret, b"lanmesh client proof", msg.nonce, self._nonce)
        return Proof(proof), _session(self._secret, self._nonce, msg.nonce, client=True)


class ServerHandshake:
    """The accepting side. ``receive(Hello)`` -> Challenge; ``receive(Proof)`` -> keys.

    Any failure raises :class:`AuthenticationError` whose text is for the node's log
    only; the peer sees nothing but the connection closing.
    """

    def __init__(self, secret: bytes, *, name: str = "", node_id: str = "") -> None:
        self._secret = secret
        self._name = name[:64]
        self._node_id = node_id[:64]
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._client_nonce: bytes | None = None
        self._mismatch: str | None = None
        self.client_name = ""

    def receive_hello(self, msg: Message) -> Challenge:
        if (
            not isinstance(msg, Hello)
            or msg.magic != MAGIC
            or len(msg.nonce) != NONCE_SIZE
            or self._client_nonce is not None
        ):
            raise AuthenticationError("not a lanmesh hello")
        if msg.protocol != PROTOCOL_VERSION or msg.python != PYTHON_VERSION:
            # Answer anyway, so the client can name both versions; then refuse its proof.
            self._mismatch = (
                f"client speaks {_versions(msg.protocol, msg.python)}, node speaks "
                f"{_versions(PROTOCOL_VERSION, PYTHON_VERSION)}"
            )
        self._client_nonce = msg.nonce
        self.client_name = msg.name
        proof = _mac(self._secret, b"lanmesh node proof", msg.nonce, self._nonce)
        return Challenge(
            PROTOCOL_VERSION, PYTHON_VERSION, self._nonce, proof, self._name, self._node_id
        )

    def receive_proof(self, msg: Message) -> SessionKeys:
        if self._client_nonce is None or not isinstance(msg, Proof):
            raise AuthenticationError("handshake out of order")
        expected = _mac(self._secret, b"lanmesh client proof", self._nonce, self._client_nonce)
        ok = hmac.compare_digest(expected, msg.proof)
        if self._mismatch is not None:
            raise VersionMismatch(self._mismatch)
        if not ok:
            raise AuthenticationError("client could not prove the mesh secret")
        return _session(self._secret, self._client_nonce, self._nonce, client=False)


# ---- the secret ----


def default_secret_path() -> Path:
    """``$MESH_SECRET_FILE``, else ``$XDG_CONFIG_HOME/lanmesh/secret`` (``~/.config/...``)."""
    explicit = os.environ.get("MESH_SECRET_FILE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "lanmesh" / "secret"


def _read_secret_file(path: Path) -> bytes:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ConfigurationError(
            f"no mesh secret: {path} does not exist and MESH_SECRET is not set. Start "
            "`mesh-node` once to create it, or copy it from a node (`mesh secret` prints it)"
        ) from None
    if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigurationError(
            f"mesh secret file {path} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run: chmod 600 {path}"
        )
    text = path.read_text(encoding="utf-8").strip()
    if not text:
        raise ConfigurationError(f"mesh secret file {path} is empty")
    return text.encode()


def load_secret(secret: str | bytes | None = None, path: Path | None = None) -> bytes:
    """The mesh secret: explicit argument, else ``MESH_SECRET``, else the secret file."""
    if secret is not None:
        value = secret.encode() if isinstance(secret, str) else secret
        if not value.strip():
            raise ConfigurationError("the mesh secret is empty")
        return value.strip()
    env = os.environ.get("MESH_SECRET")
    if env is not None and env.strip():
        return env.strip().encode()
    return _read_secret_file(path or default_secret_path())


def ensure_secret_file(path: Path | None = None) -> bytes:
    """Load the secret file, creating it (0600, 32 random bytes as hex) when missing."""
    path = path or default_secret_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another node created it first: read theirs
        else:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secrets.token_hex(32) + "\n")
    return _read_secret_file(path)


def fingerprint(secret: bytes) -> str:
    """A short public fingerprint of the secret (for zeroconf records and logs)."""
    return _mac(secret, b"lanmesh fingerprint")[:8].hex()


def dashboard_token(secret: bytes) -> str:
    """The dashboards' login token (``mesh token``): derived from the secret,
    so every machine that holds the secret can print it, and it reveals nothing of it."""
    return _mac(secret, b"lanmesh dashboard token")[:16].hex()


def dashboard_node_proof(token: str, client_nonce: bytes, node_nonce: bytes) -> str:
    """A dashboard's answer to ``mesh``'s challenge: proves it knows the token, so the
    CLI never sends a credential to another program squatting the dashboard's port."""
    return _mac(token.encode(), b"lanmesh dashboard node", client_nonce, node_nonce).hex()


def dashboard_request_mac(
    token: str, client_nonce: bytes, node_nonce: bytes, method: str, target: str
) -> str:
    """``mesh``'s proof for one request (method and path with query) under one node
    nonce: the token itself never crosses the wire, and a copy cannot be replayed."""
    return _mac(
        token.encode(), b"lanmesh dashboard request", client_nonce, node_nonce,
        method.encode(), target.encode(),
    ).hex()  # fmt: skip
