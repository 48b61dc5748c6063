"""The mutual challenge-response handshake and the mesh secret, with no I/O."""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from mesh._auth import (
    INSECURE_ENV,
    MAGIC,
    NONCE_SIZE,
    PYTHON_VERSION,
    ClientHandshake,
    ServerHandshake,
    SessionKeys,
    _mac,
    check_secret,
    dashboard_token,
    default_secret_path,
    ensure_secret_file,
    load_secret,
    mesh_id,
    mesh_key,
    secret_bits,
)
from mesh._protocol import PROTOCOL_VERSION, Challenge, Hello, Proof
from mesh.errors import AuthenticationError, ConfigurationError, VersionMismatch

SECRET = b"6f1d2c3b4a59687766554433221100ffeeddccbbaa9988776655443322110000"
OTHER = b"0000000000000000000000000000000000000000000000000000000000000001"
PEER = "node ws-07 (10.0.0.7:7390)"


def run(client: ClientHandshake, server: ServerHandshake) -> tuple[SessionKeys, SessionKeys]:
    challenge = server.receive_hello(client.start())
    node_proof, skeys = server.receive_proof(client.receive(challenge))
    return client.confirm(node_proof), skeys


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
    """A node with another secret refuses the client's proof; a fake node that answers
    anyway with a proof made with its own secret is refused by the client."""
    client = ClientHandshake(SECRET, peer=PEER)
    server = ServerHandshake(OTHER)
    hello = client.start()
    challenge = server.receive_hello(hello)
    proof = client.receive(challenge)
    with pytest.raises(AuthenticationError):
        server.receive_proof(proof)
    fake = ServerHandshake(OTHER)
    fake_challenge = fake.receive_hello(hello)
    fake_client = ClientHandshake(SECRET, peer=PEER)
    fake_client.receive(fake_challenge)
    forged = _mac(OTHER, b"lanmesh node proof", hello.nonce, fake_challenge.nonce)
    with pytest.raises(AuthenticationError) as info:
        fake_client.confirm(Proof(forged))
    assert type(info.value) is AuthenticationError
    assert PEER in str(info.value)
    assert "could not prove the mesh secret" in str(info.value)


def test_wrong_secret_on_the_client_fails_on_the_node() -> None:
    """A client with another secret: its proof (made with that secret) is refused."""
    client = ClientHandshake(OTHER)
    server = ServerHandshake(SECRET)
    challenge = server.receive_hello(client.start())
    with pytest.raises(AuthenticationError) as info:
        server.receive_proof(client.receive(challenge))
    assert type(info.value) is AuthenticationError


def test_random_proof_is_refused() -> None:
    server = ServerHandshake(SECRET)
    server.receive_hello(ClientHandshake(SECRET).start())
    with pytest.raises(AuthenticationError):
        server.receive_proof(Proof(os.urandom(32)))


def test_proof_replayed_from_an_earlier_handshake_is_refused() -> None:
    client = ClientHandshake(SECRET)
    first = ServerHandshake(SECRET)
    hello = client.start()
    proof = client.receive(first.receive_hello(hello))
    first.receive_proof(proof)
    with pytest.raises(AuthenticationError):
        first.receive_proof(proof)  # a second proof on the same connection
    second = ServerHandshake(SECRET)
    second.receive_hello(hello)  # the same Hello replayed too
    with pytest.raises(AuthenticationError):
        second.receive_proof(proof)


def test_node_proof_reflected_as_the_client_proof_is_refused() -> None:
    """Client and node proofs carry different labels: neither passes for the other."""
    client = ClientHandshake(SECRET)
    server = ServerHandshake(SECRET)
    hello = client.start()
    challenge = server.receive_hello(hello)
    node_proof, _ = server.receive_proof(client.receive(challenge))
    replay = ServerHandshake(SECRET)
    replay.receive_hello(hello)
    with pytest.raises(AuthenticationError):
        replay.receive_proof(node_proof)
    with pytest.raises(AuthenticationError):
        ClientHandshake(SECRET).confirm(node_proof)  # no challenge seen: out of order


def test_node_name_altered_in_clear_fails_the_proofs() -> None:
    """A relay that rewrites the node's name or id in the Challenge breaks the handshake."""
    client = ClientHandshake(SECRET, peer=PEER)
    server = ServerHandshake(SECRET, name="ws-07", node_id="n-07")
    challenge = server.receive_hello(client.start())
    altered = Challenge(
        challenge.protocol, challenge.python, challenge.nonce, b"", "ws-evil", "n-07"
    )
    with pytest.raises(AuthenticationError):
        server.receive_proof(client.receive(altered))


def test_challenge_carries_nothing_derived_from_the_secret() -> None:
    """The node's one pre-auth message (the attacker's view of a node it connects to):
    versions, a random nonce, names. Two nodes with different secrets answer one Hello
    with Challenges alike in every field but the random nonce."""
    hello = ClientHandshake(SECRET).start()
    a = ServerHandshake(SECRET, name="ws-07", node_id="n-07").receive_hello(hello)
    b = ServerHandshake(OTHER, name="ws-07", node_id="n-07").receive_hello(hello)
    assert a.proof == b.proof == b""
    assert dataclasses.replace(a, nonce=b.nonce) == b


def test_challenge_and_node_proof_replayed_to_another_client_are_refused() -> None:
    """A recorded Challenge and node Proof, replayed to a new client: its own nonce
    makes the recorded proof wrong."""
    first = ClientHandshake(SECRET)
    server = ServerHandshake(SECRET)
    challenge = server.receive_hello(first.start())
    node_proof, _ = server.receive_proof(first.receive(challenge))
    victim = ClientHandshake(SECRET, peer=PEER)
    victim.receive(challenge)
    with pytest.raises(AuthenticationError, match=re.escape(PEER)):
        victim.confirm(node_proof)


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
    client = ClientHandshake(SECRET, peer=PEER)
    challenge = ServerHandshake(SECRET).receive_hello(client.start())
    client.receive(challenge)
    with pytest.raises(AuthenticationError, match=re.escape(PEER)):
        client.receive(challenge)  # a second Challenge
    with pytest.raises(AuthenticationError, match=re.escape(PEER)):
        client.confirm(challenge)  # not a Proof


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
    with pytest.raises(VersionMismatch) as info:
        server.receive_proof(Proof(os.urandom(32)))
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

# Strong secrets of the shapes people use (random hex, random base64), for files and env.
STRONG_A = "9c1f0e6a27d54b3388e1f4a0b6c2d7e95a3f8b1c0d2e4f6a7b9c8d0e1f2a3b4c"
STRONG_B = "q7Vx2LmZ9pR4tK8wN3sY6hJ1dF5gB0cXeA-uT_oI"


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
    path.write_text(STRONG_A + "\n")
    path.chmod(0o644)
    with pytest.raises(ConfigurationError) as info:
        load_secret(path=path)
    text = str(info.value)
    assert "chmod 600" in text
    assert str(path) in text
    assert "0644" in text
    assert STRONG_A not in text
    with pytest.raises(ConfigurationError, match="chmod 600"):
        ensure_secret_file(path)


def test_other_writable_secret_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(STRONG_A + "\n")
    path.chmod(0o602)
    with pytest.raises(ConfigurationError, match="chmod 600"):
        load_secret(path=path)


def test_secret_file_is_read_stripped(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(f"  {STRONG_B} \n")
    path.chmod(0o600)
    assert load_secret(path=path) == STRONG_B.encode()


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
    path.write_text(STRONG_A + "\n")
    path.chmod(0o644)  # would be refused if it were read
    monkeypatch.setenv("MESH_SECRET", f"  {STRONG_B}\n")
    assert load_secret(path=path) == STRONG_B.encode()
    assert load_secret(path=tmp_path / "missing") == STRONG_B.encode()


def test_explicit_secret_beats_the_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MESH_SECRET", STRONG_B)
    assert load_secret(f"{STRONG_A} ") == STRONG_A.encode()
    assert load_secret(STRONG_A.upper().encode()) == STRONG_A.upper().encode()
    with pytest.raises(ConfigurationError, match="empty"):
        load_secret("   ")


def test_blank_env_falls_back_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "secret"
    path.write_text(STRONG_A + "\n")
    path.chmod(0o600)
    monkeypatch.setenv("MESH_SECRET", "  ")
    assert load_secret(path=path) == STRONG_A.encode()


def test_default_secret_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert default_secret_path() == tmp_path / "xdg" / "lanmesh" / "secret"
    monkeypatch.setenv("MESH_SECRET_FILE", str(tmp_path / "explicit"))
    assert default_secret_path() == tmp_path / "explicit"
    # load_secret and ensure_secret_file use it when no path is given
    assert ensure_secret_file() == load_secret()
    assert (tmp_path / "explicit").exists()


# ---- weak secrets: the attack of issue 18, and its refusal ----

WEAK = ["hunter2", "correct horse battery staple", "Tr0ub4dor&3", "a" * 64, "ab" * 40,
        "0123456789abcdef" * 4, "0" * 63 + "1", "another mesh", "password1234567890"]  # fmt: skip


@pytest.mark.parametrize("weak", WEAK)
def test_weak_secret_is_refused_everywhere_with_a_clear_message(
    weak: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert secret_bits(weak.encode()) < 128
    with pytest.raises(ConfigurationError, match=r"secret= argument is too weak \(about \d+ bits"):
        load_secret(weak)
    monkeypatch.setenv("MESH_SECRET", weak)
    with pytest.raises(ConfigurationError, match="MESH_SECRET is too weak") as info:
        load_secret()
    assert weak not in str(info.value) and "secrets.token_hex(32)" in str(info.value)
    monkeypatch.delenv("MESH_SECRET")
    path = tmp_path / "secret"
    path.write_text(weak + "\n")  # an old secret file a person wrote
    path.chmod(0o600)
    with pytest.raises(ConfigurationError, match=f"secret file {path} is too weak"):
        ensure_secret_file(path)


@pytest.mark.parametrize("n", range(40))
def test_random_secrets_of_128_bits_and_more_pass(n: int) -> None:
    import secrets

    assert check_secret(secrets.token_hex(32).encode(), "x")  # what mesh-node writes
    assert check_secret(secrets.token_urlsafe(32).encode(), "x")
    words = "apple zebra quilt mango river stone cloud pixel ember frost lunar maple"
    assert check_secret(words.encode(), "x")  # 12 random words: ~155 bits; counted ~190


def test_insecure_override_accepts_a_weak_secret_for_tests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(INSECURE_ENV, "1")
    assert load_secret("hunter2") == b"hunter2"


def test_person_chosen_secrets_are_stretched_with_scrypt() -> None:
    """Anything but long random hex keys the mesh through scrypt: a guess costs 16 MiB."""
    import hashlib

    assert mesh_key(STRONG_A.encode()) == STRONG_A.encode()  # random hex: used as it is
    expected = hashlib.scrypt(STRONG_B.encode(), salt=b"lanmesh mesh key v1", n=1 << 14, r=8,
                              p=1, maxmem=64 << 20, dklen=32)  # fmt: skip
    assert mesh_key(STRONG_B.encode()) == expected


def test_handshake_with_a_guess_fails_on_the_node_and_teaches_nothing_before() -> None:
    """The attack: with only what a node sends before authentication (its Challenge)
    an attacker cannot tell a right guess from a wrong one; a wrong guess's proof is
    refused. (The advert carries a random mesh id: see test_wire_crypto.)"""
    hello = ClientHandshake(b"hunter2").start()
    real = ServerHandshake(b"hunter2").receive_hello(hello)
    other = ServerHandshake(b"hunter3").receive_hello(hello)
    assert (real.proof, other.proof) == (b"", b"")  # nothing to test a guess against
    assert {f.name for f in dataclasses.fields(real)} == {
        "protocol",
        "python",
        "nonce",
        "proof",
        "name",
        "node_id",
    }


def test_mesh_id_is_random_and_stored_beside_the_secret(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    secret = ensure_secret_file(path)
    id_path = tmp_path / "secret.id"
    mid = id_path.read_text().strip()
    assert re.fullmatch(r"[0-9a-f]{16}", mid) and mesh_id(secret) == mid
    assert stat.S_IMODE(id_path.stat().st_mode) == 0o600
    assert mid not in secret.decode() and mid not in mesh_key(secret).hex()
    # the same id in another process that reads the same file (another node of the mesh)
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from mesh._auth import "
         "ensure_secret_file, mesh_id; print(mesh_id(ensure_secret_file(Path(sys.argv[1]))))",
         str(path)],
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    assert out.stdout.strip() == mid


def test_an_old_secret_file_without_a_mesh_id_gets_one(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text(STRONG_A + "\n")
    path.chmod(0o600)
    assert load_secret(path=path) == STRONG_A.encode()
    assert re.fullmatch(r"[0-9a-f]{16}\n", (tmp_path / "secret.id").read_text())


def test_mesh_id_without_a_file_is_random_per_process() -> None:
    import secrets

    secret = secrets.token_hex(32).encode()
    assert mesh_id(secret) == mesh_id(secret)
    assert re.fullmatch(r"[0-9a-f]{16}", mesh_id(secret))


def test_dashboard_token_is_stable_and_hides_the_secret() -> None:
    token = dashboard_token(STRONG_A.encode())
    assert re.fullmatch(r"[0-9a-f]{32}", token) and token == dashboard_token(STRONG_A.encode())
    assert token not in STRONG_A and dashboard_token(STRONG_B.encode()) != token
