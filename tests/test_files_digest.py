"""File catalog anti-entropy (issue 16): nodes swap per-bucket digests of their
catalogs and send only the versions of the buckets that differ (node/_digest.py, pure,
tested byte for byte); on real nodes a file put before a node joined is in that
node's catalog, and an idle mesh sends no catalog traffic at all."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from _helpers import wait_until
from conftest import NodeProc
from mesh.node._digest import (
    BUCKETS,
    EMPTY,
    bucket_of,
    catalog_digest,
    differing,
    in_buckets,
    set_digest,
)
from test_membership import _read, api_nodes, counters, sees

import mesh
from mesh._auth import dashboard_token
from mesh.errors import RemoteProtocolError

A = ("a", "aa" * 32, 3, 1.5, False)
B = ("b", "bb" * 32, 4, 2.0, False)
PHOTO = ("photos/1.jpg", "cc" * 32, 5, 3.0, False)


def test_names_fall_in_fixed_buckets():
    assert (bucket_of("a"), bucket_of("b"), bucket_of("photos/1.jpg")) == (30, 58, 58)
    assert 0 <= bucket_of("fotos/été/猫.txt") < BUCKETS


def test_a_catalog_digest_is_exact_and_does_not_depend_on_order():
    digest = catalog_digest([A, B])
    assert len(digest) == BUCKETS and bytes(8) == EMPTY
    assert {i: h.hex() for i, h in enumerate(digest) if h != EMPTY} == {
        30: "88550d0acc0029aa",
        58: "9ed92e0050e1fded",
    }
    assert catalog_digest([B, A]) == digest
    assert catalog_digest([]) == (EMPTY,) * BUCKETS


def test_only_the_buckets_of_changed_versions_differ():
    mine = catalog_digest([A, B, PHOTO])
    newer_b = (*B[:3], 2.5, False)
    tomb_a = ("a", "", 0, 1.6, True)  # a delete is a version too
    assert differing(mine, catalog_digest([A, B, PHOTO]), "peer") == ()
    assert differing(mine, catalog_digest([A, newer_b, PHOTO]), "peer") == (58,)
    assert differing(mine, catalog_digest([tomb_a, B, PHOTO]), "peer") == (30,)
    assert differing(mine, catalog_digest([]), "peer") == (30, 58)
    # What is sent for the differing buckets: their versions, by name, nothing else.
    assert in_buckets([PHOTO, A, B], (58,)) == [B, PHOTO]
    assert in_buckets([PHOTO, A, B], ()) == []
    assert in_buckets([PHOTO, A, B], (BUCKETS + 1,)) == []


def test_a_set_of_blobs_has_one_exact_digest():
    assert set_digest(["aa" * 32, "bb" * 32]).hex() == "af438e372dddf731"
    assert set_digest(["bb" * 32, "aa" * 32]) == set_digest({"aa" * 32, "bb" * 32})
    assert set_digest([]) == EMPTY and set_digest(["aa" * 32]) != set_digest(["bb" * 32])


@pytest.mark.parametrize(
    "theirs", [(), (EMPTY,) * (BUCKETS - 1), (EMPTY,) * (BUCKETS - 1) + (b"short",)]
)
def test_a_malformed_digest_is_refused_naming_its_sender(theirs):
    with pytest.raises(RemoteProtocolError, match=r"file digest from ws-07: expected 64 hashes"):
        differing(catalog_digest([]), theirs, "ws-07")


def catalog(node: NodeProc, secret: str) -> dict[str, list[str]]:
    """The live versions ``node`` knows (from its dashboard), with their holders."""
    base = wait_until(lambda: _read(node.data_dir / "dashboard"), what=f"{node.name}'s dashboard")
    auth = {"Authorization": f"Bearer {dashboard_token(secret.encode())}"}
    req = urllib.request.Request(base + "api/files", headers=auth)
    with urllib.request.urlopen(req, timeout=10) as resp:
        files: list[dict[str, Any]] = json.loads(resp.read())["files"]
    return {f["name"]: sorted(f["holders"]) for f in files}


def catalog_counters(nodes: list[NodeProc], secret: str) -> list[dict[str, int]]:
    return [api_nodes(n, secret)[0]["catalog"] for n in nodes]


def test_a_node_that_joins_later_learns_the_catalog_and_an_idle_mesh_sends_none(
    node_factory, secret, tmp_path: Path
):
    a = node_factory(name="a", workers=1)
    b = node_factory(name="b", workers=1, extra=("--peer", a.address))
    wait_until(sees(a, [b], secret), what="a to see b")
    src = tmp_path / "greeting.txt"
    src.write_bytes(b"hello from before c\n")
    with mesh.Client([a.address, b.address], secret) as cl:
        cl.files.put(src, "greeting.txt", replicas=2)
    # c names only b; a's catalog reaches it by digests, nobody sends it a whole one.
    c = node_factory(name="c", workers=1, extra=("--peer", b.address))
    nodes = [a, b, c]
    for n in nodes:
        wait_until(sees(n, [o for o in nodes if o is not n], secret), what=f"{n.name} sees all")
    wait_until(lambda: catalog(c, secret) == {"greeting.txt": ["a", "b"]},
               what=f"c to know the file and its holders: {catalog(c, secret)}")  # fmt: skip
    got = catalog_counters(nodes, secret)
    assert got[2]["digests_sent"] >= 1 and got[2]["digests_received"] >= 1, got
    # Idle: gossip's own probes are the clock (a few seconds), catalogs stay silent.
    probes = counters(a, secret)["probes"]
    wait_until(lambda: counters(a, secret)["probes"] >= probes + 4, what="4 probes (settle)")
    before = catalog_counters(nodes, secret)
    probes = counters(a, secret)["probes"]
    wait_until(lambda: counters(a, secret)["probes"] >= probes + 12, timeout_s=60,
               what="12 more probes")  # fmt: skip
    assert catalog_counters(nodes, secret) == before
    assert catalog(c, secret) == {"greeting.txt": ["a", "b"]}
