"""Zero-config discovery on 127.0.0.1 (MESH_INTERFACES is pinned by conftest)."""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from _helpers import wait_until
from _netns import lan, netns_available
from conftest import start_node

import mesh
from mesh._auth import load_secret, mesh_id
from mesh._discovery import Advert, discover, interfaces_from_env
from mesh._netif import DefaultRoute, default_route, default_route_ipv4


def test_a_client_with_no_peers_finds_the_nodes_of_its_mesh_only(node_factory, secret, tmp_path):
    ours = [node_factory(name="d1", advertise=True), node_factory(name="d2", advertise=True)]
    foreign = start_node(secrets.token_hex(32), tmp_path / "foreign", name="other", advertise=True)
    try:
        # Start returns once nodes answered (a slower answer joins a moment later); the
        # window only bounds how long a loaded machine may take to answer at all.
        with mesh.Client(secret=secret, discovery_window_s=15) as c:
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
    solo = node_factory(name="solo", advertise=True)
    # The node listens before its advert is out (~1.6 s, more on a loaded machine); the
    # default client browses 1.5 s and then starts a local mesh, which is not this test.
    heard = asyncio.run(discover(load_secret(secret), interfaces_from_env(), window_s=60))
    assert solo.address in {a.address for a in heard}
    monkeypatch.setenv("MESH_SECRET", secret)
    assert mesh.result(mesh.call(pow, 3, 3), timeout=30) == 27
    assert not mesh.is_local()
    assert mesh.info(mesh.call(abs, -1)).node == "solo"


def test_nothing_answering_raises_no_nodes_available(secret):
    with pytest.raises(mesh.NoNodesAvailable, match="no lanmesh node of this mesh answered"):
        mesh.Client(secret=secret, discovery_window_s=0.5)


def test_txt_record_stays_small_and_never_holds_the_secret():
    secret = b"s" * 64
    advert = Advert("a1b2c3d4e5f6", "x" * 100, "127.0.0.1", 7390, 64, 64, mesh_id(secret))
    props = advert.properties()
    assert sum(len(k) + len(v) + 2 for k, v in props.items()) <= 200
    assert not any(secret.decode() in v for v in props.values())
    back = Advert.from_record("127.0.0.1", 7390, {k.encode(): v.encode() for k, v in props.items()})
    assert back is not None and back.mesh_id == advert.mesh_id and back.workers == 64


def double_once_open(x, gate):
    """2x, after ``gate`` exists (at most 60 s): the map waits for the late node."""
    import os
    import time

    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.1)
    return 2 * x


def test_a_node_started_mid_map_gets_work(node_factory, secret, tmp_path):
    node_factory(name="first", workers=1, advertise=True)
    gate = tmp_path / "open"
    with mesh.Client(secret=secret) as c:
        jids = c.map(double_once_open, range(60), [str(gate)] * 60)
        node_factory(name="late", workers=1, advertise=True)  # ~1.6 s to advertise
        # The map's first job holds "first" until the client has found "late" (however
        # long mDNS takes on a loaded machine); then 60 x 0.1 s are left for both.
        wait_until(lambda: "late" in {n.name for n in c.nodes() if n.connected and n.workers},
                   timeout_s=60, what="the late node joins")  # fmt: skip
        gate.touch()
        assert c.result(jids, timeout=60) == [2 * x for x in range(60)]
        used = {i.node for i in c.info(jids)}
        assert used == {"first", "late"}


# ---- when discovery cannot run at all: say why, and what to set ----


def route_table(tmp_path: Path, *routes: tuple[str, str]) -> str:
    """A /proc/net/route of (interface, destination) lines, in a file of its own."""
    head = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT"
    lines = [
        f"{ifname}\t{dest}\t0100000A\t0003\t0\t0\t0\t00000000\t0\t0\t0" for ifname, dest in routes
    ]
    path = tmp_path / f"route{len(list(tmp_path.glob('route*')))}"
    path.write_text("\n".join([head, *lines]) + "\n")
    return str(path)


def test_the_default_route_or_why_there_is_none(tmp_path):
    only_lan = route_table(tmp_path, ("eth0", "0000A8C0"))  # 192.168.0.0/24, no default
    assert default_route(only_lan) == DefaultRoute(None, "this machine has no IPv4 default route")
    gone = route_table(tmp_path, ("lmgone0", "00000000"))  # an interface without an address
    assert default_route(gone) == DefaultRoute(
        None, "the default route's interface (lmgone0) has no IPv4 address"
    )
    assert default_route(str(tmp_path / "nothing")) == DefaultRoute(
        None, f"cannot read the routing table {tmp_path / 'nothing'} (No such file or directory)"
    )
    assert default_route(route_table(tmp_path, ("lmgone0", "00000000"), ("lo", "00000000"))) == (
        DefaultRoute("127.0.0.1")
    )
    assert default_route_ipv4(only_lan) is None


NO_ROUTE_CLIENT = textwrap.dedent(
    """
    import os
    import mesh

    os.environ["MESH_INTERFACES"] = "10.231.254.254"  # not an address of this host
    try:
        mesh.Client(discovery_window_s=0.5)
    except mesh.ConfigurationError as exc:
        print("pinned:", exc)
    del os.environ["MESH_INTERFACES"]
    print("result:", mesh.result(mesh.call(pow, 2, 5), timeout=60), mesh.is_local())
    """
)


@pytest.mark.skipif(netns_available() is not None, reason=f"no namespaces: {netns_available()}")
def test_a_host_without_a_default_route_says_why_discovery_could_not_run(secret, tmp_path):
    """A laptop on a LAN with no default route: an interface and an address, but
    nothing says which interface discovery should use. The notice says so, and what to
    set, instead of "none answered on the LAN"; the jobs still run, on a local mesh."""
    script = tmp_path / "client.py"
    script.write_text(NO_ROUTE_CLIENT)
    env = {k: v for k, v in os.environ.items() if k not in ("MESH_INTERFACES", "MESH_PEERS")}
    env.update(MESH_SECRET=secret, MESH_LOCAL_NODES="1")
    with lan(1) as (host,):
        proc = subprocess.run(
            host.cmd(sys.executable, str(script)),
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=110,
        )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "pinned: discovery could not run on 10.231.254.254: No such device (is that an IPv4 "
        "address of this machine?); set MESH_INTERFACES to this machine's LAN IPv4 address, "
        "or MESH_PEERS to nodes of the mesh (HOST:PORT,...), which needs no discovery",
        "result: 32 True",
    ]
    assert proc.stderr.splitlines() == [
        "mesh: no nodes found (MESH_PEERS unset): discovery could not run: MESH_INTERFACES is "
        "unset and this machine has no IPv4 default route; set MESH_INTERFACES to this "
        "machine's LAN IPv4 address, or MESH_PEERS to nodes of the mesh (HOST:PORT,...), "
        "which needs no discovery; starting a local mesh of 1 nodes on 127.0.0.1"
    ]
