"""``mesh-node``: start a node of the mesh on this machine."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import shlex
import signal
import sys
from pathlib import Path

from mesh.node._proc import default_max_memory
from mesh.node._server import Node, NodeConfig

from mesh._auth import default_secret_path, ensure_secret_file, load_secret
from mesh._discovery import interfaces_from_env, parse_peers, peers_from_env
from mesh._logging import install_repeat_filter
from mesh._netif import default_route_ipv4
from mesh.errors import ConfigurationError

# The default dashboard's port is the node's + 1000 (8390): nodes run side by side on
# consecutive ports (7390, 7391) keep clear of each other's dashboards.
DASHBOARD_PORT_OFFSET = 1000


def _data_dir_default() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "lanmesh"


_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _size(text: str) -> int:
    """``2G``, ``512M``, ``1.5GiB``, ``1000000`` (bytes) -> bytes."""
    t = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = t[-1:] if t[-1:] in _UNITS and t[-1:] != "" else ""
    try:
        value = float(t[: len(t) - len(unit)])
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size like 2G or 512M") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: a size cannot be negative")
    return int(value * _UNITS[unit])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh-node",
        description="Run a lanmesh node: it executes jobs sent by clients that know the mesh secret.",
    )
    p.add_argument(
        "--host", help="address to listen on (default: the default-route interface's IPv4)"
    )
    p.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("MESH_PORT", 7390)),
        help="TCP port (default 7390; 0 picks a free one)",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes, i.e. jobs run at once (default: the number of cores)",
    )
    p.add_argument(
        "--data-dir",
        type=Path,
        default=_data_dir_default(),
        help="where the node keeps its state (default ~/.local/share/lanmesh)",
    )
    p.add_argument("--name", default="", help="node name shown to users (default: the hostname)")
    p.add_argument(
        "--interface",
        action="append",
        default=[],
        metavar="IP",
        help="pin listening and discovery to this interface address (repeatable)",
    )
    p.add_argument(
        "--peer",
        action="append",
        default=[],
        metavar="HOST:PORT",
        help="another node to join without mDNS (repeatable; default MESH_PEERS)",
    )
    p.add_argument(
        "--secret-file",
        type=Path,
        default=None,
        help=f"mesh secret file (default {default_secret_path()}; MESH_SECRET overrides); "
        "created with a random secret when missing, its mesh id beside it in FILE.id",
    )
    p.add_argument(
        "--handshake-timeout",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds a new connection has to authenticate (default 5)",
    )
    p.add_argument(
        "--kill-grace",
        type=float,
        default=5.0,
        metavar="S",
        help="seconds between SIGTERM and SIGKILL when killing a job (default 5)",
    )
    p.add_argument(
        "--max-memory",
        type=_size,
        default=None,
        metavar="SIZE",
        help="resident memory one worker may use, e.g. 2G or 512M; a job past it is "
        "stopped (default: 80%% of this machine's memory / workers; 0: no limit)",
    )
    p.add_argument(
        "--grace",
        type=float,
        default=30.0,
        metavar="S",
        help="on SIGTERM, seconds running jobs may take to finish (default 30); queued "
        "jobs go back to their clients at once",
    )
    p.add_argument(
        "--result-ttl",
        type=float,
        default=3600.0,
        metavar="S",
        help="seconds results are kept after the client has them (default 3600)",
    )
    p.add_argument(
        "--no-advertise",
        action="store_true",
        help="do not announce this node over mDNS (clients then need --peers/MESH_PEERS)",
    )
    p.add_argument(
        "--dashboard",
        metavar="HOST:PORT",
        default=None,
        help="serve the web dashboard there, for other machines too (default: 127.0.0.1 "
        "only, on the node's port + 1000); every dashboard needs a login (`mesh dashboard`)",
    )
    p.add_argument("--no-dashboard", action="store_true", help="serve no web dashboard")
    p.add_argument(
        "--pip-option",
        action="append",
        default=None,
        metavar="OPT",
        help="an extra pip option for building job environments (_env), e.g. "
        "--pip-option=--no-index --pip-option=--find-links=/srv/wheels (repeatable; "
        "default MESH_PIP_ARGS, split like a shell)",
    )
    p.add_argument(
        "--env-budget",
        type=_size,
        default=5 * 2**30,
        metavar="SIZE",
        help="disk space cached job environments may take before the least recently "
        "used is removed (default 5G)",
    )
    p.add_argument(
        "--env-idle",
        type=float,
        default=float(os.environ.get("MESH_ENV_IDLE", "") or 600.0),
        metavar="S",
        help="seconds a job environment's workers may sit idle before they stop "
        "(default MESH_ENV_IDLE, else 600; 0: never)",
    )
    p.add_argument("--parent-pid", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--log-level", default=os.environ.get("MESH_LOG_LEVEL", "warning"))
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    # Everything the node and its workers write (data dir, logs, sockets) is the user's
    # alone: other local users must not read results, arguments or stored files.
    os.umask(0o077)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s: %(message)s")
    install_repeat_filter()  # a flood of one line (refused connections, EMFILE) stays a few
    raise_fd_limit()
    try:
        if os.environ.get("MESH_SECRET", "").strip():
            secret = load_secret()
        else:
            secret = ensure_secret_file(args.secret_file)
    except ConfigurationError as exc:
        sys.exit(f"mesh-node: {exc}")
    if args.workers < 1:
        sys.exit("mesh-node: --workers must be at least 1")
    try:
        interfaces = args.interface or interfaces_from_env()
    except ConfigurationError as exc:
        sys.exit(f"mesh-node: {exc}")
    try:
        peers = parse_peers(args.peer) if args.peer else peers_from_env()
    except ConfigurationError as exc:
        sys.exit(f"mesh-node: {exc}")
    try:
        dashboard = _dashboard_address(args)
    except ConfigurationError as exc:
        sys.exit(f"mesh-node: {exc}")
    host = args.host or (interfaces[0] if interfaces else None) or default_route_ipv4()
    if host is None:
        sys.exit("mesh-node: no default-route interface found; pass --host or --interface")
    config = NodeConfig(
        secret=secret,
        host=host,
        port=args.port,
        name=args.name,
        workers=args.workers,
        data_dir=args.data_dir,
        handshake_timeout_s=args.handshake_timeout,
        kill_grace_s=min(args.kill_grace, 5.0),
        result_ttl_s=args.result_ttl,
        grace_s=max(args.grace, 0.0),
        max_memory=default_max_memory(args.workers) if args.max_memory is None else args.max_memory,
        parent_pid=args.parent_pid,
        advertise=not args.no_advertise,
        interfaces=interfaces,
        peers=peers,
        dashboard=dashboard,
        dashboard_token=args.dashboard is not None,
        pip_args=args.pip_option
        if args.pip_option is not None
        else shlex.split(os.environ.get("MESH_PIP_ARGS", "")),
        env_budget_bytes=args.env_budget,
        env_idle_s=max(args.env_idle, 0.0),
    )
    try:
        asyncio.run(_serve(config))
    except ConfigurationError as exc:
        sys.exit(f"mesh-node: {exc}")
    except OSError as exc:
        sys.exit(f"mesh-node: cannot listen on {host}:{args.port}: {exc.strerror or exc}")


def raise_fd_limit() -> int:
    """Raise this process's soft limit of open files to its hard limit and return it.

    Desktops often start programs with a soft limit of 1024 and a far higher hard one;
    every connection costs the node a descriptor, and its caps on unauthenticated
    connections (NodeConfig) are set below whatever limit it ends up with.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return soft
    # An unlimited hard limit cannot be the soft one (the kernel caps it at nr_open).
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    for target in (want, 1 << 16):
        if target <= soft:
            return soft
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            return target
        except (OSError, ValueError):
            continue
    return soft


def _dashboard_address(args: argparse.Namespace) -> tuple[str, int] | None:
    """Where the dashboard listens: --dashboard HOST:PORT, else 127.0.0.1 on port + 1000."""
    if args.no_dashboard:
        return None
    if args.dashboard is None:
        port = args.port + DASHBOARD_PORT_OFFSET
        return ("127.0.0.1", port if args.port and port <= 65535 else 0)
    host, sep, port = args.dashboard.rpartition(":")
    host = host.strip("[]") or "0.0.0.0"
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ConfigurationError(f"--dashboard {args.dashboard!r}: expected HOST:PORT")
    return (host, int(port))


async def _serve(config: NodeConfig) -> None:
    node = Node(config)
    await node.start()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, node.request_stop)
    print(f"mesh-node {node.name} listening on {config.host}:{node.port}", flush=True)
    try:
        await node.serve_forever()
    finally:
        await node.stop()
