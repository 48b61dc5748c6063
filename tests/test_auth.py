"""The mutual challenge-response handshake and the mesh secret, with no I/O."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mesh._auth import (
    MAGIC,
    NONCE_SIZE,
    PYTHON_VERSION,
    ClientHandshake,
    ServerHandshake,
    SessionKeys,
    _mac,
    default_secret_path,
    ensure_secret_file,
    fingerprint,
    load_secret,
)
from mesh._protocol import PROTOCOL_VERSION, Challenge, Hello, Proof
from mesh.errors import AuthenticationError, ConfigurationError, VersionMismatch

SECRET = b"6f1d2c3b4a59687766554433221100ffeeddccbbaa9988776655443322110000"
OTHER = b"0000000000000000000000000000000000000000000000000000000000000001"
PEER = "node ws-07 (10.0.0.7:7390)"


def run(client: ClientHandshake, server: ServerHandshake) -> tuple[SessionKeys, SessionKeys]:
    challenge = server.receive_hello(client.start())
    proof, ckeys = client.receive(challenge)
    return ckeys, server.receive_proof(proof)


@pytest.fixture(autouse=True)
def _no_secret_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MESH_SECRET", raising=False)
    monkeypatch.delenv("MESH_SECRET_FILE", raising=False)


# ---- the handshake ----


def test_handshake_derives_matching_keys() -> None:
    client = ClientHandshake(SECRET, name="laptop", peer=PEER)
    server = ServerHandshake(SECRET, name="ws-07", node_id="n-07")
    ckeys, skeys = run(client, server)
    assert ckeys.send == skeys.recv
    assert ckeys.recv == skeys.send
    assert ckeys.send != ckeys.recv  # one key per direction
    assert len(ckeys.send) == 32
    assert SECRET not in ckeys.send + ckeys.recv
    assert (client.node_name, client.node_id, server.client_name) == ("ws-07", "n-07", "laptop")


def test_hello_carries_versions_and_a_nonce() -> None:
    hello = ClientHandshake(SECRET, name="laptop").start()
    assert hello == Hello(MAGIC, PROTOCOL_VERSION, PYTHON_VERSION, hello.nonce, "laptop")
    assert len(hello.nonce) == NONCE_SIZE
    assert f"{sys.version_info.major}.{sys.version_info.minor}" == PYTHON_VERSION


def test_names_are_capped_to_fit_a_handshake_frame() -> None:
    client = ClientHandshake(SECRET, name="c" * 500)
    server = ServerHandshake(SECRET, name="s" * 500, node_id="i" * 500)
    challenge = server.receive_hello(client.start())
    assert len(client.start().name) == 64
    assert (len(challenge.name), len(challenge.node_id)) == (64, 64)


def test_wrong_secret_on_the_node_fails_on_the_client_naming_the_peer() -> None:
    client = ClientHandshake(SECRET, peer=PEER)
    server = ServerHandshake(OTHER)
    challenge = server.receive_hello(client.start())
    with pytest.raises(AuthenticationError) as info:
        client.receive(challenge)
    assert type(info.value) is AuthenticationError
    assert PEER in str(info.value)
    assert "could not prove the mesh secret" in str(info.value)


def test_wrong_secret_on_the_client_fails_on_the_node() -> None:
    """A client with another secret: its proof (made with that secret) is refused."""
    client = ClientHandshake(OTHER)
    server = ServerHandshake(SECRET)
    hello = client.start()
    challenge = server.receive_hello(hello)
    forged = _mac(OTHER, b"lanmesh client proof", challenge.nonce, hello.nonce)
    with pytest.raises(AuthenticationError) as info:
        server.receive_proof(Proof(forged))
    assert type(info.value) is AuthenticationError
    # and that client refuses the node first, in the real order of events
    with pytest.raises(AuthenticationError):
        client.receive(challenge)


def test_random_proof_is_refused() -> None:
    server = ServerHandshake(SECRET)
    server.receive_hello(ClientHandshake(SECRET).start())
    with pytest.raises(AuthenticationError):
        server.receive_proof(Proof(os.urandom(32)))


def test_proof_replayed_from_an_earlier_handshake_is_refused() -> None:
    client = ClientHandshake(SECRET)
    first = ServerHandshake(SECRET)
    hello = client.start()
    proof, _ = client.receive(first.receive_hello(hello))
    first.receive_proof(proof)
    second = ServerHandshake(SECRET)
    second.receive_hello(hello)  # the same Hello replayed too
    with pytest.raises(AuthenticationError):
        second.receive_proof(proof)


def test_challenge_replayed_to_another_client_is_refused() -> None:
    server = ServerHandshake(SECRET)
    challenge = server.receive_hello(ClientHandshake(SECRET).start())
    with pytest.raises(AuthenticationError, match=re.escape(PEER)):
        ClientHandshake(SECRET, peer=PEER).receive(challenge)


@pytest.mark.parametrize(
    "hello",
    [
        Hello("http", PROTOCOL_VERSION, PYTHON_VERSION, b"n" * NONCE_SIZE),
        Hello(MAGIC, PROTOCOL_VERSION, PYTHON_VERSION, b"short"),
        Proof(b"x" * 32),
    ],
    ids=["bad-magic", "short-nonce", "not-a-hello"],
)
def test_server_refuses_a_bad_hello(hello: Hello | Proof) -> None:
    with pytest.raises(AuthenticationError):
        ServerHandshake(SECRET).receive_hello(hello)


def test_server_refuses_a_second_hello() -> None:
    server = ServerHandshake(SECRET)
    hello = ClientHandshake(SECRET).start()
    server.receive_hello(hello)
    with pytest.raises(AuthenticationError):
        server.receive_hello(hello)


def test_server_refuses_proof_before_hello() -> None:
    with pytest.raises(AuthenticationError, match="out of order"):
        ServerHandshake(SECRET).receive_proof(Proof(b"x" * 32))


def test_client_refuses_a_non_challenge() -> None:
    with pytest.raises(AuthenticationError, match=re.escape(PEER)):
        ClientHandshake(SECRET, peer=PEER).receive(Proof(b"x" * 32))


def test_client_refuses_a_short_server_nonce() -> None:
    bad = Challenge(PROTOCOL_VERSION, PYTHON_VERSION, b"n" * 8, b"p" * 32)
    with pytest.raises(AuthenticationError, match="not a lanmesh node"):
        ClientHandshake(SECRET, peer=PEER).receive(bad)


def test_version_mismatch_on_the_client_names_both_versions() -> None:
    challenge = Challenge(99, "2.7", os.urandom(NONCE_SIZE), os.urandom(32), "old", "n-old")
    with pytest.raises(VersionMismatch) as info:
        ClientHandshake(SECRET, peer=PEER).receive(challenge)
    text = str(info.value)
    assert "protocol 99, Python 2.7" in text
    assert f"protocol {PROTOCOL_VERSION}, Python {PYTHON_VERSION}" in text
    assert PEER in text
    assert isinstance(info.value, AuthenticationError)


def test_version_mismatch_on_the_node_names_both_versions() -> None:
    """The node answers an old client anyway (so it can name both), then refuses it."""
    server = ServerHandshake(SECRET)
    hello = Hello(MAGIC, 99, "2.7", os.urandom(NONCE_SIZE), "old-client")
    challenge = server.receive_hello(hello)
    assert (challenge.protocol, challenge.python) == (PROTOCOL_VERSION, PYTHON_VERSION)
    valid = _mac(SECRET, b"lanmesh client proof", challenge.nonce, hello.nonce)
    with pytest.raises(VersionMismatch) as info:
        server.receive_proof(Proof(valid))
    text = str(info.value)
    assert "protocol 99, Python 2.7" in text
    assert f"protocol {PROTOCOL_VERSION}, Python {PYTHON_VERSION}" in text


def test_nonces_are_fresh_per_handshake() -> None:
    hellos = [ClientHandshake(SECRET).start() for _ in range(8)]
    assert len({h.nonce for h in hellos}) == 8
    assert all(len(h.nonce) == NONCE_SIZE for h in hellos)
    client = ClientHandshake(SECRET)
    assert client.start().nonce == client.start().nonce  # one nonce per handshake object
    challenges = [ServerHandshake(SECRET).receive_hello(hellos[0]) for _ in range(8)]
    assert len({c.nonce for c in challenges}) == 8
    keys = {run(ClientHandshake(SECRET), ServerHandshake(SECRET))[0].send for _ in range(8)}
    assert len(keys) == 8  # session keys differ per connection too


# ---- the secret ----


def test_ensure_secret_file_creates_0600_with_64_hex_chars(tmp_path: Path) -> None:
    path = tmp_path / "config" / "lanmesh" / "secret"
    secret = ensure_secret_file(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    assert secret == text.strip().encode()
    assert stat.S_IMODE(path.parent.stat().st_mode) & 0o077 == 0
    assert ensure_secret_file(path) == secret  # kept, not regenerated
    assert load_secret(path=path) == secret


def test_ensure_secret_file_is_fresh_per_mesh(tmp_path: Path) -> None:
    assert ensure_secret_file(tmp_path / "a") != ensure_secret_file(tmp_path / "b")


def test_group_readable_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret-value\n")
    path.chmod(0o644)
    with pytest.raises(ConfigurationError) as info:
        load_secret(path=path)
    text = str(info.value)
    assert "chmod 600" in text
    assert str(path) in text
    assert "0644" in text
    assert "s3cret-value" not in text
    with pytest.raises(ConfigurationError, match="chmod 600"):
        ensure_secret_file(path)


def test_other_writable_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("s3cret-value\n")
    path.chmod(0o602)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_secret(path=path)


def test_secret_file_is_read_stripped(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("  s3cret-value \n")
    path.chmod(0o600)
    assert load_secret(path=path) == b"s3cret-value"


def test_missing_or_empty_secret_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="MESH_SECRET"):
        load_secret(path=tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    with pytest.raises(ConfigurationError, match="empty"):
        load_secret(path=empty)


def test_mesh_secret_env_overrides_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    path.chmod(0o644)  # would be refused if it were read
    monkeypatch.setenv("MESH_SECRET", "  from-env\n")
    assert load_secret(path=path) == b"from-env"
    assert load_secret(path=tmp_path / "missing") == b"from-env"


def test_explicit_secret_beats_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_SECRET", "from-env")
    assert load_secret("explicit ") == b"explicit"
    assert load_secret(b"raw") == b"raw"
    with pytest.raises(ConfigurationError, match="empty"):
        load_secret("   ")


def test_blank_env_falls_back_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret"
    path.write_text("from-file\n")
    path.chmod(0o600)
    monkeypatch.setenv("MESH_SECRET", "  ")
    assert load_secret(path=path) == b"from-file"


def test_default_secret_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_secret_path() == tmp_path / "xdg" / "lanmesh" / "secret"
    monkeypatch.setenv("MESH_SECRET_FILE", str(tmp_path / "explicit"))
    assert default_secret_path() == tmp_path / "explicit"
    # load_secret and ensure_secret_file use it when no path is given
    assert ensure_secret_file() == load_secret()
    assert (tmp_path / "explicit").exists()


def test_fingerprint_is_stable_and_hides_the_secret() -> None:
    fp = fingerprint(SECRET)
    assert re.fullmatch(r"[0-9a-f]{16}", fp)
    assert fingerprint(SECRET) == fp
    assert fingerprint(OTHER) != fp
    assert fp not in SECRET.decode() and SECRET.decode() not in fp
    assert fingerprint(b"hunter2") != b"hunter2".hex()[:16]
    assert "hunter2" not in fingerprint(b"hunter2")
    # the same in another process: nodes compare fingerprints from zeroconf records
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from mesh._auth import fingerprint; "
         "print(fingerprint(sys.argv[1].encode()))", SECRET.decode()],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.strip() == fp
