"""``mesh``: the mesh from a shell (the secret, and jobs by id)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from mesh._auth import default_secret_path, load_secret
from mesh.errors import MeshConnectionError, MeshError, UnknownJob

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_USAGE = 0, 1, 2, 64
NODES_SETTLE_S = 1.5


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mesh", description="Work with a lanmesh mesh from a shell.")
    p.add_argument("--peers", help="HOST:PORT,... of nodes (default: MESH_PEERS)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("secret", help="print this machine's mesh secret, to copy to other machines")
    sub.add_parser("nodes", help="list the nodes this machine sees, with workers and load")
    for name, text in (
        ("status", "print job states"),
        ("result", "print job results"),
        ("info", "print what nodes recorded about jobs"),
        ("kill", "stop jobs"),
    ):
        sp = sub.add_parser(name, help=text)
        sp.add_argument("jids", nargs="+", metavar="JID")
    return p


def main(argv: list[str] | None = None) -> None:
    args = parser().parse_args(argv)
    try:
        if args.command == "secret":
            secret = load_secret()
            if args.json:
                print(json.dumps({"secret": secret.decode(), "file": str(default_secret_path())}))
            else:
                print(secret.decode())
            sys.exit(EXIT_OK)
        sys.exit(_jobs_command(args))
    except MeshError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _jobs_command(args: argparse.Namespace) -> int:
    from client import Client

    with Client(args.peers) as c:
        if args.command == "nodes":
            # Nodes named by other nodes (Peers) are still connecting: give them a moment.
            deadline = time.monotonic() + NODES_SETTLE_S
            while time.monotonic() < deadline and not all(n.connected for n in c.nodes()):
                time.sleep(0.05)
            rows = [n.__dict__ for n in c.nodes()]
            _print(args, rows, _table)
            return EXIT_OK
        if args.command == "status":
            states = c.status(args.jids)
            _print(
                args,
                dict(zip(args.jids, states, strict=True)),
                lambda d: "\n".join(f"{k}\t{v}" for k, v in d.items()),
            )
            return EXIT_OK
        if args.command == "kill":
            c.kill(args.jids)
            _print(
                args,
                {j: "killed" for j in args.jids},
                lambda d: "\n".join(f"{k}\tkilled" for k in d),
            )
            return EXIT_OK
        if args.command == "info":
            infos = c.info(list(args.jids))
            assert isinstance(infos, list)
            _print(
                args,
                [i.__dict__ for i in infos],
                lambda rows: "\n\n".join(
                    "\n".join(f"{k}: {v}" for k, v in r.items()) for r in rows
                ),
            )
            return EXIT_OK
        failed = EXIT_OK
        out: dict[str, Any] = {}
        for jid in args.jids:
            try:
                out[jid] = c.result(jid)
            except (UnknownJob, MeshConnectionError):
                raise  # not the job's failure: the mesh's (exit 2)
            except Exception as exc:  # the job's own exception: report it, keep going
                out[jid] = f"{type(exc).__name__}: {exc}"
                failed = EXIT_JOB_FAILED
        _print(
            args,
            {k: repr(v) if not args.json else v for k, v in out.items()},
            lambda d: "\n".join(f"{k}\t{v}" for k, v in d.items()),
        )
        return failed


def _table(rows: list[dict[str, Any]]) -> str:
    cols = ["name", "address", "workers", "running", "queued", "connected"]
    cells = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)) for row in cells
    )


def _print(args: argparse.Namespace, data: Any, human: Any) -> None:
    print(json.dumps(data, default=repr) if args.json else human(data))


if __name__ == "__main__":
    main()
