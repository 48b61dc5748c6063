"""Mutual HMAC-SHA256 challenge-response, as pure state machines, plus the mesh secret.

The client sends :class:`Hello` with a fresh 32-byte nonce; the node answers with
:class:`Challenge` carrying its own nonce and nothing derived from the secret; the
client sends its :class:`Proof` over both nonces and the names both sides gave; only
a node that accepted it answers with its own Proof, which the client checks. Both
then derive one key per direction from the secret and both nonces.

The client proves first so that nothing a node sends before authentication lets
anyone test a guess of the secret offline: a passive attacker that connects learns
only a random nonce. A fake node a client connects to does get the client's proof,
an offline oracle; hence secrets of at least 128 bits (:func:`check_secret`), and any
secret other than the long random hex that ``mesh-node`` generates is stretched with
scrypt before use (:func:`mesh_key`), so each guess costs ~16 MiB and ~0.1 s.

Every failure on the node's side looks the same to the peer (the connection
closes); the client raises :class:`AuthenticationError` naming the node, or
:class:`VersionMismatch` naming both sides' versions.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import math
import os
import re
import secrets
import stat
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

from mesh._protocol import PROTOCOL_VERSION, Challenge, Hello, Message, Proof
from mesh.errors import AuthenticationError, ConfigurationError, VersionMismatch

__all__ = [
    "INSECURE_ENV",
    "MAGIC",
    "MIN_SECRET_BITS",
    "NONCE_SIZE",
    "PYTHON_VERSION",
    "ClientHandshake",
    "ServerHandshake",
    "SessionKeys",
    "check_secret",
    "dashboard_node_proof",
    "dashboard_request_mac",
    "dashboard_token",
    "default_secret_path",
    "ensure_secret_file",
    "load_secret",
    "mesh_id",
    "mesh_key",
    "secret_bits",
]

MAGIC = "lanmesh"
NONCE_SIZE = 32
PYTHON_VERSION = f"{sys.version_info.major}.{sys.version_info.minor}"


def _mac(key: bytes, *parts: bytes) -> bytes:
    h = hmac.new(key, digestmod=hashlib.sha256)
    for p in parts:
        h.update(len(p).to_bytes(4, "big"))
        h.update(p)
    return h.digest()


# Long random hex (what mesh-node generates) is used as it is; anything else may be
# person-chosen, so it is stretched: scrypt with 16 MiB of memory per guess.
_GENERATED = re.compile(rb"[0-9a-fA-F]{32,}")
SCRYPT_N, SCRYPT_R, SCRYPT_P = 1 << 14, 8, 1


@functools.lru_cache(maxsize=8)
def mesh_key(secret: bytes) -> bytes:
    """The key every MAC of the mesh is made with: the secret itself when it is long
    random hex, else the secret stretched by scrypt (memory-hard), computed once per
    process."""
    if _GENERATED.fullmatch(secret):
        return secret
    return hashlib.scrypt(
        secret, salt=b"lanmesh mesh key v1", n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P,
        maxmem=64 << 20, dklen=32,
    )  # fmt: skip


@dataclass(frozen=True)
class SessionKeys:
    send: bytes
    recv: bytes


def _session(key: bytes, client_nonce: bytes, server_nonce: bytes, *, client: bool) -> SessionKeys:
    c2s = _mac(key, b"lanmesh key client->node", client_nonce, server_nonce)
    s2c = _mac(key, b"lanmesh key node->client", client_nonce, server_nonce)
    return SessionKeys(send=c2s, recv=s2c) if client else SessionKeys(send=s2c, recv=c2s)


def _proof(key: bytes, who: bytes, hello: Hello, challenge: Challenge) -> bytes:
    """A side's proof of the secret over the whole handshake: both nonces and every
    name, so nothing a relay altered in clear goes unnoticed."""
    return _mac(
        key, who, hello.nonce, challenge.nonce, hello.name.encode(), challenge.name.encode(),
        challenge.node_id.encode(),
    )  # fmt: skip


def _versions(protocol: int, python: str) -> str:
    return f"protocol {protocol}, Python {python}"


class ClientHandshake:
    """The connecting side: ``start()`` -> Hello; ``receive(Challenge)`` -> Proof;
    ``confirm(the node's Proof)`` -> keys."""

    def __init__(self, secret: bytes, *, name: str = "", peer: str = "node") -> None:
        self._key = mesh_key(secret)
        self._name = name[:64]
        self._peer = peer
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._hello = Hello(MAGIC, PROTOCOL_VERSION, PYTHON_VERSION, self._nonce, self._name)
        self._challenge: Challenge | None = None
        self.node_name = ""
        self.node_id = ""

    def start(self) -> Hello:
        return self._hello

    def receive(self, msg: Message) -> Proof:
        if (
            not isinstance(msg, Challenge)
            or len(msg.nonce) != NONCE_SIZE
            or self._challenge is not None
        ):
            raise AuthenticationError(f"{self._peer} is not a lanmesh node (bad handshake)")
        if msg.protocol != PROTOCOL_VERSION or msg.python != PYTHON_VERSION:
            raise VersionMismatch(
                f"{self._peer} speaks {_versions(msg.protocol, msg.python)}; this client speaks "
                f"{_versions(PROTOCOL_VERSION, PYTHON_VERSION)}: run the same lanmesh and Python "
                "minor version on both sides"
            )
        self._challenge = msg
        return Proof(_proof(self._key, b"lanmesh client proof", self._hello, msg))

    def confirm(self, msg: Message) -> SessionKeys:
        """Check the node's proof (sent only once it accepted ours)."""
        challenge = self._challenge
        if challenge is None or not isinstance(msg, Proof):
            raise AuthenticationError(f"{self._peer} is not a lanmesh node (bad handshake)")
        expected = _proof(self._key, b"lanmesh node proof", self._hello, challenge)
        if not hmac.compare_digest(expected, msg.proof):
            raise AuthenticationError(
                f"{self._peer} could not prove the mesh secret: it belongs to another mesh, or "
                "this client has the wrong secret (check MESH_SECRET or the secret file; "
                "`mesh secret` on the node prints its secret)"
            )
        self.node_name = challenge.name
        self.node_id = challenge.node_id
        return _session(self._key, self._nonce, challenge.nonce, client=True)


class ServerHandshake:
    """The accepting side: ``receive_hello(Hello)`` -> Challenge;
    ``receive_proof(Proof)`` -> (the node's Proof, keys).

    Any failure raises :class:`AuthenticationError` whose text is for the node's log
    only; the peer sees nothing but the connection closing.
    """

    def __init__(self, secret: bytes, *, name: str = "", node_id: str = "") -> None:
        self._key = mesh_key(secret)
        self._name = name[:64]
        self._node_id = node_id[:64]
        self._nonce = secrets.token_bytes(NONCE_SIZE)
        self._hello: Hello | None = None
        self._challenge: Challenge | None = None
        self._mismatch: str | None = None
        self.client_name = ""

    def receive_hello(self, msg: Message) -> Challenge:
        if (
            not isinstance(msg, Hello)
            or msg.magic != MAGIC
            or len(msg.nonce) != NONCE_SIZE
            or self._hello is not None
        ):
            raise AuthenticationError("not a lanmesh hello")
        if msg.protocol != PROTOCOL_VERSION or msg.python != PYTHON_VERSION:
            # Answer anyway, so the client can name both versions; then refuse its proof.
            self._mismatch = (
                f"client speaks {_versions(msg.protocol, msg.python)}, node speaks "
                f"{_versions(PROTOCOL_VERSION, PYTHON_VERSION)}"
            )
        self._hello = msg
        self.client_name = msg.name
        # Nothing in it is derived from the secret: it is no oracle for a guess.
        self._challenge = Challenge(
            PROTOCOL_VERSION, PYTHON_VERSION, self._nonce, b"", self._name, self._node_id
        )
        return self._challenge

    def receive_proof(self, msg: Message) -> tuple[Proof, SessionKeys]:
        hello, challenge = self._hello, self._challenge
        if hello is None or challenge is None or not isinstance(msg, Proof):
            raise AuthenticationError("handshake out of order")
        expected = _proof(self._key, b"lanmesh client proof", hello, challenge)
        ok = hmac.compare_digest(expected, msg.proof)
        if self._mismatch is not None:
            raise VersionMismatch(self._mismatch)
        if not ok:
            raise AuthenticationError("client could not prove the mesh secret")
        self._challenge = None  # one proof per handshake
        mine = Proof(_proof(self._key, b"lanmesh node proof", hello, challenge))
        return mine, _session(self._key, hello.nonce, challenge.nonce, client=False)


# ---- the secret ----

MIN_SECRET_BITS = 128
# Set to 1 to accept a weak secret anyway: for tests of the refusal itself, never a mesh.
INSECURE_ENV = "MESH_INSECURE_WEAK_SECRET"
_WORD = re.compile(r"[a-z]{3,}|[A-Z][a-z]{2,}|[A-Z]{3,}")


def secret_bits(secret: bytes) -> float:
    """A conservative estimate of a secret's entropy, in bits.

    Each character counts log2 of the alphabet its classes span (hex: 4 bits); a
    character that extends a run of repeats or steps of one (``aaaa``, ``1234``) past
    3 counts 1 bit; a run of letters that reads as a word counts at most 16 bits (a dictionary
    of 65,536 words); the total is capped by what zlib leaves of it, so a repeated
    pattern counts once."""
    text = secret.decode("utf-8", "replace")
    if not text:
        return 0.0
    if all(c in "0123456789abcdefABCDEF" for c in text):
        alphabet = 16
    else:
        alphabet = sum(
            size for present, size in (
                (any(c.islower() and c.isascii() for c in text), 26),
                (any(c.isupper() and c.isascii() for c in text), 26),
                (any(c.isdigit() and c.isascii() for c in text), 10),
                (any(not c.isalnum() and c.isascii() for c in text), 33),
                (any(not c.isascii() for c in text), 1000),
            ) if present
        )  # fmt: skip
    costs = _char_bits(text, math.log2(alphabet))
    if alphabet != 16:
        for m in _WORD.finditer(text):
            word = sum(costs[m.start() : m.end()])
            costs[m.start() : m.end()] = [min(word, 16.0) / (m.end() - m.start())] * len(m[0])
    compressed_bits = 8 * max(len(zlib.compress(secret, 9)) - 8, 1)
    return min(sum(costs), float(compressed_bits))


def _char_bits(text: str, per_char: float) -> list[float]:
    """Each character's bits: full, but 1 bit for one that extends a run of 4 or more
    repeats or steps of one (``aaaa``, ``1234``, ``dcba``) or ends a 4-character
    sequence seen before (``abcxabcx``)."""
    costs = []
    run = 1  # characters in the current run of one repeated step
    seen: set[str] = set()
    for i, c in enumerate(text):
        step = ord(c) - ord(text[i - 1]) if i else 99
        same = i >= 2 and abs(step) <= 1 and step == ord(text[i - 1]) - ord(text[i - 2])
        run = run + 1 if same else 2 if i and abs(step) <= 1 else 1
        gram = text[i - 3 : i + 1] if i >= 3 else ""
        costs.append(1.0 if run >= 4 or gram in seen else per_char)
        if gram:
            seen.add(gram)
    return costs


def check_secret(secret: bytes, where: str) -> bytes:
    """``secret`` if it has at least MIN_SECRET_BITS of estimated entropy, else a
    ConfigurationError naming ``where`` it came from (unless MESH_INSECURE_WEAK_SECRET=1)."""
    bits = secret_bits(secret)
    if bits >= MIN_SECRET_BITS or os.environ.get(INSECURE_ENV) == "1":
        mesh_key(secret)  # stretched now, not at the first handshake on an event loop
        return secret
    raise ConfigurationError(
        f"the mesh secret from {where} is too weak (about {bits:.0f} bits of entropy; at "
        f"least {MIN_SECRET_BITS} needed): anyone who sees a connection could guess it "
        "offline. Use the random secret mesh-node writes to its secret file on first start "
        "(`mesh secret` prints it), or make one with "
        '`python3 -c "import secrets; print(secrets.token_hex(32))"`'
    )


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
    secret = check_secret(text.encode(), f"the secret file {path}")
    _mesh_ids.setdefault(secret, _mesh_id_file(path))
    return secret


def load_secret(secret: str | bytes | None = None, path: Path | None = None) -> bytes:
    """The mesh secret: explicit argument, else ``MESH_SECRET``, else the secret file.
    A weak one raises ConfigurationError (see :func:`check_secret`)."""
    if secret is not None:
        value = secret.encode() if isinstance(secret, str) else secret
        if not value.strip():
            raise ConfigurationError("the mesh secret is empty")
        return check_secret(value.strip(), "the secret= argument")
    env = os.environ.get("MESH_SECRET")
    if env is not None and env.strip():
        return check_secret(env.strip().encode(), "MESH_SECRET")
    return _read_secret_file(path or default_secret_path())


def ensure_secret_file(path: Path | None = None) -> bytes:
    """Load the secret file, creating it (0600, 32 random bytes as hex) when missing."""
    path = path or default_secret_path()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        _create_private(path, secrets.token_hex(32))
    return _read_secret_file(path)


def _create_private(path: Path, text: str) -> None:
    """Write ``text`` to a new 0600 file, unless another process created it first."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # another process created it first: theirs is kept
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")


# ---- the mesh id ----

# The mesh ids of the secrets this process loaded, by secret. A mesh id is random,
# published in adverts instead of anything derived from the secret: it tells a
# participant which adverts are (most likely) its mesh without being a guess oracle.
_mesh_ids: dict[bytes, str] = {}


def _mesh_id_file(path: Path) -> str:
    """The mesh id stored beside the secret file (``secret.id``), created when missing
    (secret files older than mesh ids have none)."""
    id_path = path.with_name(path.name + ".id")
    try:
        if not id_path.exists():
            _create_private(id_path, secrets.token_hex(8))
        text = id_path.read_text(encoding="utf-8").strip()
    except OSError:
        return secrets.token_hex(8)  # a read-only config dir: a mesh id of this process
    return text if re.fullmatch(r"[0-9a-f]{16}", text) else secrets.token_hex(8)


def mesh_id(secret: bytes) -> str:
    """The mesh id a node advertises and a browser trusts at once: the one beside the
    secret file it was loaded from, else (MESH_SECRET, secret=) a random one for this
    process. Other ids are tried by authenticating to the node (mesh._discovery)."""
    return _mesh_ids.setdefault(secret, secrets.token_hex(8))


def dashboard_token(secret: bytes) -> str:
    """The dashboards' login token (``mesh token``): derived from the mesh key, so every machine that holds the secret can print it, and it reveals nothing
    of the secret (nor lets anyone test a guess cheaply: see :func:`mesh_key`)."""
    return _mac(mesh_key(secret), b"lanmesh dashboard token")[:16].hex()


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
