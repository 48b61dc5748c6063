"""A worker's life: what a job may see and what it may leave behind, with real nodes.

The secret never reaches a job's environment (issue 18); a job's children, working
directory and environment changes end with the job; a worker that cannot start is
retried with backoff and, while it cannot, the node fails its jobs with the cause
(issue 14).
"""

from __future__ import annotations

import os
import subprocess

import mesh


def environment_seen_by_job() -> dict[str, object]:
    """What a job can read of the credentials: its own environment, a child's, its node's."""
    child = subprocess.run(["env"], capture_output=True, text=True, check=True).stdout
    with open(f"/proc/{os.getppid()}/environ", "rb") as f:
        node_env = f.read().split(b"\0")
    return {
        "own": {k: v for k, v in os.environ.items() if k.startswith("MESH_")},
        "child": [line for line in child.splitlines() if line.startswith("MESH_SECRET")],
        "node_has_secret": any(e.startswith(b"MESH_SECRET") for e in node_env),
    }


# ---- the secret never reaches a job ----


def test_secret_of_a_node_started_with_mesh_secret_never_reaches_its_jobs(node_factory, secret):
    node = node_factory(name="sec", workers=1, env={"MESH_SECRET_FILE": "/nonexistent/secret"})
    with mesh.Client([node.address], secret) as c:
        seen = c.result(c.call(environment_seen_by_job), timeout=30)
    assert "MESH_SECRET" not in seen["own"] and "MESH_SECRET_FILE" not in seen["own"]
    assert "MESH_NODE_FILES" in seen["own"]  # what jobs need still reaches them
    assert seen["child"] == []


def test_secret_of_a_local_mesh_never_reaches_its_jobs(monkeypatch):
    monkeypatch.setenv("MESH_SECRET", "the user's own secret: " + "x" * 40)
    c = mesh.local(nodes=1, workers=1)
    try:
        seen = mesh.result(mesh.call(environment_seen_by_job), timeout=30)
        local_secret = c._local.secret if c._local is not None else ""  # type: ignore[attr-defined]
    finally:
        mesh.close()
    assert local_secret
    assert "MESH_SECRET" not in seen["own"] and "MESH_SECRET_FILE" not in seen["own"]
    assert seen["child"] == []
    assert seen["node_has_secret"] is False  # nor in the environment of its node
