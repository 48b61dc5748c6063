"""Zero-config discovery on 127.0.0.1 (MESH_INTERFACES is pinned by conftest)."""

from __future__ import annotations

import secrets

import pytest
from _helpers import wait_until
from conftest import start_node

import mesh
from mesh._auth import fingerprint
from mesh._discovery import Advert


def test_a_client_with_no_peers_finds_the_nodes_of_its_mesh_only(node_factory, secret, tmp_path):
    ours = [node_factory(name="d1", advertise=True), node_factory(name="d2", advertise=True)]
    foreign = start_node(secrets.token_hex(32), tmp_path / "foreign", name="other", advertise=True)
    try:
        with mesh.Client(secret=secret) as c:
            # Start returns once nodes answered; a slower answer joins a moment later.
            ours_addresses = {n.address for n in ours}
            wait_until(lambda: {n.address for n in c.nodes()} == ours_addresses, what="d1, d2")
            assert foreign.address not in {n.address for n in c.nodes()}  # never connected
            jids = c.map(pow, range(40), [2] * 40)
            assert c.result(jids, timeout=30) == [x**2 for x in range(40)]
            assert {i.node for i in c.info(jids)} == {"d1", "d2"}
    finally:
        foreign.stop()


def test_module_functions_use_discovered_nodes_before_a_local_mesh(
    node_factory, secret, monkeypatch
):
    node_factory(name="solo", advertise=True)
    monkeypatch.setenv("MESH_SECRET", secret)
    assert mesh.result(mesh.call(pow, 3, 3), timeout=30) == 27
    assert not mesh.is_local()
    assert mesh.info(mesh.call(abs, -1)).node == "solo"


def test_nothing_answering_raises_no_nodes_available(secret):
    with pytest.raises(mesh.NoNodesAvailable, match="no lanmesh node of this mesh answered"):
        mesh.Client(secret=secret, discovery_window_s=0.5)


def test_txt_record_stays_small_and_never_holds_the_secret():
    secret = b"s" * 64
    advert = Advert("a1b2c3d4e5f6", "x" * 100, "127.0.0.1", 7390, 64, 64, fingerprint(secret))
    props = advert.properties()
    assert sum(len(k) + len(v) + 2 for k, v in props.items()) <= 200
    assert not any(secret.decode() in v for v in props.values())
    back = Advert.from_record("127.0.0.1", 7390, {k.encode(): v.encode() for k, v in props.items()})
    assert back is not None and back.fingerprint == advert.fingerprint and back.workers == 64


def slow_double(x):
    import time

    time.sleep(0.1)
    return 2 * x


def test_a_node_started_mid_map_gets_work(node_factory, secret):
    node_factory(name="first", workers=1, advertise=True)
    with mesh.Client(secret=secret) as c:
        jids = c.map(slow_double, range(60))  # ~6 s on the first node alone
        node_factory(name="late", workers=1, advertise=True)  # ~1.6 s to advertise
        assert c.result(jids, timeout=60) == [2 * x for x in range(60)]
        used = {i.node for i in c.info(jids)}
        assert used == {"first", "late"}
