"""How a node is started: :class:`NodeConfig`, filled by ``mesh-node``'s options and
environment variables (node/_cli.py), or by tests, which shrink timings here."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from mesh._frames import DEFAULT_MAX_FRAME, DEFAULT_MAX_MESSAGE
from mesh._gossip import GossipConfig

__all__ = ["NodeConfig"]


@dataclass
class NodeConfig:
    """Everything a node is started with. Tests shrink timings here, not by patching."""

    secret: bytes
    host: str = "127.0.0.1"
    port: int = 7390
    name: str = ""
    workers: int = field(default_factory=lambda: os.cpu_count() or 1)
    data_dir: Path = field(default_factory=lambda: Path.home() / ".local" / "share" / "lanmesh")
    handshake_timeout_s: float = 5.0
    kill_grace_s: float = 5.0
    result_ttl_s: float = 3600.0
    max_frame: int = DEFAULT_MAX_FRAME
    max_message: int = DEFAULT_MAX_MESSAGE
    parent_pid: int | None = None
    advertise: bool = True
    client_timeout_s: float = 30.0  # clients ping idle links every 10 s
    # Interfaces to advertise on; empty: the listening address unless it is loopback.
    interfaces: list[str] = field(default_factory=list)
    # Other nodes to connect to without mDNS (--peer, MESH_PEERS).
    peers: list[tuple[str, int]] = field(default_factory=list)
    # Membership (SWIM gossip between nodes): probe period, suspicion... see
    # mesh/_gossip.py. Another node's links (gossip, files) may stay quiet longer
    # than a client's: the node pings them only now and then (node/_files.py).
    gossip: GossipConfig = field(default_factory=GossipConfig)
    node_link_timeout_s: float = 300.0
    # On SIGTERM: how long running jobs may take to finish before they are killed.
    grace_s: float = 30.0
    # Resident memory a worker may reach (bytes; 0: no limit), and the share of the
    # machine's memory in use above which the node starts no new jobs.
    max_memory: int = 0
    pause_above: float = 0.8
    # The web dashboard's (host, port), or None for none; with dashboard_token every
    # request needs the login token (`mesh token`): mesh-node sets it for --dashboard.
    dashboard: tuple[str, int] | None = None
    dashboard_token: bool = False
    # Job environments (_env): extra pip options (--pip-option, MESH_PIP_ARGS; e.g.
    # --no-index --find-links DIR offline) and the disk budget of cached environments.
    pip_args: list[str] = field(default_factory=list)
    env_budget_bytes: int = 5 * 2**30
    # An environment's worker pool stops after this long without jobs (0: never); the
    # next job starts it again. MESH_ENV_IDLE sets it (seconds; default 10 minutes).
    env_idle_s: float = field(
        default_factory=lambda: float(os.environ.get("MESH_ENV_IDLE", "") or 600.0)
    )
    # Connections not yet authenticated, at most (0: a quarter of the open-files limit,
    # up to 1024), and from one address (0: a quarter of that): a flood of idle sockets
    # can never take the descriptors real clients and peers need.
    max_preauth: int = 0
    max_preauth_per_source: int = 0
