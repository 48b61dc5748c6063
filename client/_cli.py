"""``mesh``: the mesh from a shell: nodes, jobs, results, kills, files, the secret and tokens.

``jobs`` and ``dashboard`` talk to nodes' dashboards over HTTP (client/_cli_web.py), only after the
dashboard proved it knows the login token (a challenge-response): a credential is
never sent to whatever else listens on its port (another user's program, say).

Every command prints a human-readable table or block by default and JSON with
``--json``. Exit codes: 0 ok; 1 a job failed (``result``); 2 a mesh error (nodes
or dashboard unreachable, wrong secret, unknown job, missing file) or a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import random
import sys
import time
from collections import Counter
from typing import Any

from mesh._auth import (
    dashboard_token,
    default_secret_path,
    load_secret,
)
from mesh._protocol import JOB_STATES
from mesh.errors import (
    ConfigurationError,
    MeshConnectionError,
    MeshError,
    MeshFileNotFound,
    NoNodesAvailable,
    UnknownJob,
)

EXIT_OK, EXIT_JOB_FAILED, EXIT_ERROR, EXIT_USAGE = 0, 1, 2, 64
NODES_SETTLE_S = 1.5
HTTP_TIMEOUT_S = 10.0
FILE_COLUMNS = ["name", "size", "version", "stored", "nodes"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mesh",
        description="Work with a lanmesh mesh from a shell.",
        epilog="Exit codes: 0 ok; 1 a job failed (result); 2 a mesh error (unreachable nodes "
        "or dashboard, wrong secret, unknown job, missing file) or a usage error.",
    )
    p.add_argument("--peers", help="HOST:PORT,... of nodes (default: MESH_PEERS)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    # --json is also accepted after the command (`mesh nodes --json`)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print JSON for scripts")  # fmt: skip
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, text: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=text, description=text, parents=[common])

    command("secret", "print this machine's mesh secret, to copy to other machines")
    command("token", "print the dashboard login token (derived from the mesh secret)")
    command("nodes", "list the nodes this machine sees, with workers and load")
    envs = command("envs", "list the job environments (_env) each node holds: requirements, "
                           "status, size, last use, builds, and why a build failed")  # fmt: skip
    envs.add_argument(
        "--rebuild", nargs="+", default=[], metavar="KEY_OR_REQUIREMENT",
        help="drop these environments (a key prefix, a requirement, a project name or a "
        "wheel file) on every node, so their next job builds them again; a failed build "
        "is forgotten (not those building or with jobs running)",
    )  # fmt: skip
    jobs = command("jobs", "list the mesh's jobs, newest first, from a node's dashboard (this "
                           "machine's node by default)")  # fmt: skip
    jobs.add_argument("--status", default="", metavar="S",
                      help=f"only jobs in these states (comma-separated: {', '.join(JOB_STATES)})")  # fmt: skip
    jobs.add_argument("--label", default="", metavar="L", help="only jobs with this _label")
    jobs.add_argument("--client", default="", metavar="C", help="only jobs of this client name")
    jobs.add_argument("--limit", type=int, default=50, metavar="N", help="at most N jobs (default 50)")  # fmt: skip
    jobs.add_argument("--offset", type=int, default=0, metavar="N", help="skip the N newest")
    jobs.add_argument("--all", action="store_true",
                      help="the mesh console's view: every node asked, each map one row with its "
                           "counts, rate and ETA")  # fmt: skip
    jobs.add_argument("--function", default="", metavar="F",
                      help="only jobs whose function name contains F (with --all)")  # fmt: skip
    jobs.add_argument("--node", default="", metavar="NAME", help="only jobs held by this node (with --all)")  # fmt: skip
    jobs.add_argument("--map", default="", metavar="KEY",
                      help="the jobs of one map (its KEY from --all --json), one row each")  # fmt: skip
    jobs.add_argument(
        "--dashboard", action="append", default=[], metavar="URL",
        help="a node's dashboard (repeatable; default MESH_DASHBOARD, else the one of the node "
        "run by this user here, else http://127.0.0.1:8390/)",
    )  # fmt: skip
    dash = command("dashboard", "open this machine's node's dashboard in the browser, logged "
                                "in (a one-time login link; printed when no browser opens)")  # fmt: skip
    dash.add_argument(
        "--dashboard", action="append", default=[], metavar="URL",
        help="the node's dashboard (default MESH_DASHBOARD, else the one of the node run by "
        "this user here, else http://127.0.0.1:8390/)",
    )  # fmt: skip
    dash.add_argument("--no-browser", action="store_true",
                      help="print the login link instead of opening a browser")  # fmt: skip
    job = command("job", "print everything the nodes recorded about jobs")
    job.add_argument("jids", nargs="+", metavar="JID")
    for name, text in (
        ("status", "print job states"),
        ("result", "print job results"),
        ("info", "print what nodes recorded about jobs (as `job`, one field a line)"),
        ("kill", "stop jobs (queued or running)"),
    ):
        sp = command(name, text)
        sp.add_argument("jids", nargs="+", metavar="JID")
    files = command("files", "the mesh file store (mesh.files): list, store, fetch, delete files")
    actions = files.add_subparsers(dest="action", required=True, metavar="ACTION")

    def action(name: str, text: str) -> argparse.ArgumentParser:
        return actions.add_parser(name, help=text, description=text, parents=[common])

    ls = action("ls", "list the stored files (name, size, version, time stored, holders)")
    ls.add_argument("prefix", nargs="?", default="", metavar="PREFIX",
                    help="only names starting with PREFIX")  # fmt: skip
    put = action("put", "store a local file (durable on --replicas nodes when this returns)")
    put.add_argument("path", metavar="PATH", help="the local file")
    put.add_argument("name", nargs="?", default=None, metavar="NAME",
                     help="its name in the store (default: PATH's file name)")  # fmt: skip
    put.add_argument("--replicas", type=int, default=2, metavar="N",
                     help="nodes that keep a copy (default 2; all of them if fewer)")  # fmt: skip
    get = action("get", "write a stored file's current version to a local file")
    get.add_argument("name", metavar="NAME")
    get.add_argument("path", nargs="?", default=None, metavar="PATH",
                     help="where to write it (default: NAME's last component, here)")  # fmt: skip
    rm = action("rm", "delete stored files on every node")
    rm.add_argument("names", nargs="+", metavar="NAME")
    info = action("info", "print a stored file's size, hash, version time and holders")
    info.add_argument("name", metavar="NAME")
    demo = command("demo", "estimate pi on the mesh (a local one when no node answers)")
    demo.add_argument("--jobs", type=int, default=20, metavar="N", help="jobs (default 20)")
    demo.add_argument("--samples", type=int, default=200_000, metavar="N",
                      help="random points per job (default 200000)")  # fmt: skip
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
        if args.command == "token":
            token = dashboard_token(load_secret())
            print(json.dumps({"token": token}) if args.json else token)
            sys.exit(EXIT_OK)
        if args.command == "files":
            sys.exit(_files_command(args))
        if args.command == "jobs":
            from mesh.client._cli_web import list_jobs

            sys.exit(list_jobs(args))
        if args.command == "dashboard":
            from mesh.client._cli_web import open_dashboard

            sys.exit(open_dashboard(args))
        if args.command == "demo":
            sys.exit(_demo(args))
        if args.command == "envs":
            sys.exit(_envs_command(args))
        sys.exit(_jobs_command(args))
    except MeshError as exc:
        print(f"mesh: {exc}", file=sys.stderr)
        sys.exit(EXIT_ERROR)


def _jobs_command(args: argparse.Namespace) -> int:
    from mesh.client import Client

    with Client(args.peers) as c:
        if args.command == "nodes":
            # Nodes named by other nodes (Peers) are still connecting: give them a moment.
            deadline = time.monotonic() + NODES_SETTLE_S
            while time.monotonic() < deadline and not all(n.connected for n in c.nodes()):
                time.sleep(0.05)
            rows = [n.__dict__ for n in c.nodes()]  # by name (unique in a mesh); --json has ids
            emit(args, rows, table)
            return EXIT_OK
        if args.command == "status":
            states = c.status(args.jids)
            emit(
                args,
                dict(zip(args.jids, states, strict=True)),
                lambda d: "\n".join(f"{k}\t{v}" for k, v in d.items()),
            )
            return EXIT_OK
        if args.command == "kill":
            c.kill(args.jids)
            emit(
                args,
                {j: "killed" for j in args.jids},
                lambda d: "\n".join(f"{k}\tkilled" for k in d),
            )
            return EXIT_OK
        if args.command == "job":
            infos = c.info(list(args.jids))
            assert isinstance(infos, list)
            emit(args, [i.__dict__ for i in infos], lambda rows: "\n\n".join(map(job_block, rows)))
            return EXIT_OK
        if args.command == "info":
            infos = c.info(list(args.jids))
            assert isinstance(infos, list)
            emit(
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
        emit(
            args,
            {k: repr(v) if not args.json else v for k, v in out.items()},
            lambda d: "\n".join(f"{k}\t{v}" for k, v in d.items()),
        )
        return failed


def table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    cols = cols or ["name", "address", "workers", "running", "queued", "connected"]
    cells = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def emit(args: argparse.Namespace, data: Any, human: Any) -> None:
    print(json.dumps(data, default=repr) if args.json else human(data))


# ---- files, through the mesh.files API of a client ----


def _files_command(args: argparse.Namespace) -> int:
    from mesh.client import Client

    if args.action == "put" and args.replicas < 1:
        raise ConfigurationError("--replicas must be at least 1")
    with Client(args.peers) as c:
        files = c.files
        if args.action == "ls":
            infos = []
            for name in files.list(args.prefix):
                try:
                    infos.append(files.info(name))
                except MeshFileNotFound:
                    continue  # deleted since it was listed
            rows = [_file_dict(i) for i in infos]
            emit(args, rows, lambda rows: _file_table(rows, args.prefix))
            return EXIT_OK
        if args.action == "put":
            stored = files.put(args.path, args.name, args.replicas)
            emit(args, _file_dict(stored), lambda d: (
                f"stored {d['name']} ({_size(d['size'])}, version {d['hash'][:12]}) on "
                f"{', '.join(d['nodes']) or 'no live node'}"
            ))  # fmt: skip
            return EXIT_OK
        if args.action == "get":
            path = files.get(args.name, args.path)
            out = {"name": args.name, "path": path, "size": os.path.getsize(path)}
            emit(args, out, lambda d: f"wrote {d['name']} to {d['path']} ({_size(d['size'])})")
            return EXIT_OK
        if args.action == "info":
            d = _file_dict(files.info(args.name))
            emit(args, d, lambda d: "\n".join([
                f"name     {d['name']}",
                f"size     {_size(d['size'])} ({d['size']:,} bytes)",
                f"hash     {d['hash']}",
                f"stored   {clock(d['time'])}",
                f"nodes    {', '.join(d['nodes']) or '-'}",
            ]))  # fmt: skip
            return EXIT_OK
        removed, missing = [], []
        for name in args.names:  # rm: every name, saying which were not there
            try:
                files.delete(name)
            except MeshFileNotFound as exc:
                print(f"mesh: {exc}", file=sys.stderr)
                missing.append(name)
            else:
                removed.append(name)
        if args.json or removed:
            emit(args, {"removed": removed, "missing": missing},
                   lambda d: "\n".join(f"removed {n}" for n in d["removed"]))  # fmt: skip
        return EXIT_ERROR if missing else EXIT_OK


def _file_dict(info: Any) -> dict[str, Any]:
    d = dataclasses.asdict(info)
    d["nodes"] = list(d["nodes"])
    return d


def _file_table(rows: list[dict[str, Any]], prefix: str) -> str:
    if not rows:
        return "no files" + (f" starting with {prefix!r}" if prefix else "") + " in the store"
    cells = [
        {"name": r["name"], "size": _size(r["size"]), "version": r["hash"][:12],
         "stored": clock(r["time"]), "nodes": ",".join(r["nodes"]) or "-"}
        for r in rows
    ]  # fmt: skip
    return table(cells, FILE_COLUMNS)


def _size(n: int) -> str:
    """Bytes for people: 812 B, 4.0 KiB, 1.25 GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.{2 if size < 10 else 1}f} {unit}"


def clock(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def duration(started: float | None, finished: float | None) -> str:
    if not started:
        return "-"
    return f"{max(0.0, (finished or time.time()) - started):.2f} s"


def job_block(r: dict[str, Any]) -> str:
    lines = [
        f"job        {r['jid']}",
        f"status     {r['status']}",
        f"node       {r['node'] or '-'}",
        f"function   {r['function']}",
        f"label      {r['label'] or '-'}",
        f"submitted  {clock(r['submitted'])}",
        f"started    {clock(r['started'])}",
        f"finished   {clock(r['finished'])}",
        f"run time   {duration(r['started'], r['finished'])}",
        f"cpu        {r['cpu_s']:.3f} s",
        f"attempts   {r['attempts']}",
    ]
    for what in ("stdout", "stderr", "error"):
        if r[what]:
            lines += [f"--- {what} ---", r[what].rstrip("\n")]
    return "\n".join(lines)


# ---- job environments (_env) ----

ENV_COLUMNS = ["node", "key", "requirements", "status", "size", "last use", "builds"]


def _envs_command(args: argparse.Namespace) -> int:
    from mesh.client import Client

    with Client(args.peers) as c:
        if args.rebuild:
            done = c.rebuild_env(*args.rebuild)
            infos = c.env_info()
        else:
            done, infos = [], c.env_info()
    if not args.rebuild:
        emit(args, [_env_dict(i) for i in infos], _env_report)
        return EXIT_OK
    found = {d.what for d in done}
    asked = _env_arg_names(args.rebuild)
    missing = [a for a, sent in asked if sent not in found]
    left = [d for d in done if d.outcome in ("building", "in use")]
    for a in missing:
        print(f"mesh: no node has an environment matching {a!r}", file=sys.stderr)
    for d in left:
        print(f"mesh: {d.node}: environment {d.key[:12]} is {d.outcome}: not rebuilt",
              file=sys.stderr)  # fmt: skip
    rows = [dataclasses.asdict(d) for d in done]
    if args.json:
        print(json.dumps({"rebuilt": rows, "missing": missing}))
    else:
        say = {"forgotten": "failure forgotten: its next job builds it again",
               "removed": "removed: its next job builds it again"}  # fmt: skip
        for d in done:
            if d.outcome in say:
                print(f"{d.node}  {d.key[:12]}  {say[d.outcome]}")
    return EXIT_ERROR if missing or left else EXIT_OK


def _env_arg_names(given: list[str]) -> list[tuple[str, str]]:
    """(as given, as sent): a local wheel is sent as its pushed-file requirement."""
    from mesh.client._options import env_requirements

    return [(a, env_requirements([a])[0][0] if a.strip() else a) for a in given]


def _env_dict(info: Any) -> dict[str, Any]:
    d = dataclasses.asdict(info)
    d["requirements"] = list(d["requirements"])
    return d


def _env_report(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "no job environments on the reachable nodes"
    cells = [
        {"node": r["node"], "key": r["key"][:12],
         "requirements": " ".join(_short_req(q) for q in r["requirements"]) or "-",
         "status": r["status"], "size": _size(r["size_bytes"]) if r["size_bytes"] else "-",
         "last use": clock(r["last_used"]), "builds": r["builds"]}
        for r in rows
    ]  # fmt: skip
    out = [table(cells, ENV_COLUMNS)]
    for r in rows:
        if r["status"] == "failed" and r["error"]:
            out += ["", f"--- {r['node']} {r['key'][:12]}: build failed ---",
                    r["error"].rstrip("\n")]  # fmt: skip
    return "\n".join(out)


def _short_req(req: str) -> str:
    """A pushed file ("wheel:<sha256>:<file name>") as its file name."""
    return req.split(":", 2)[2] if req.startswith("wheel:") and req.count(":") >= 2 else req


# ---- demo ----


def _pi_hits(samples: int, seed: int) -> int:
    """Random points in the unit square that fall inside the quarter circle."""
    rnd = random.Random(seed)
    return sum(1 for _ in range(samples) if rnd.random() ** 2 + rnd.random() ** 2 <= 1.0)


def _demo(args: argparse.Namespace) -> int:
    from mesh.client import Client

    if args.jobs < 1 or args.samples < 1:
        raise ConfigurationError("--jobs and --samples must be at least 1")
    try:
        c = Client(args.peers)
    except (NoNodesAvailable, ConfigurationError):
        if args.peers or os.environ.get("MESH_PEERS", "").strip():
            raise  # nodes were named: failing to reach them is the answer
        print("mesh demo: no nodes found; starting a local mesh of 2 nodes on 127.0.0.1",
              file=sys.stderr)  # fmt: skip
        c = Client.local(2)
    with c:
        t0 = time.monotonic()
        jids = c.map(_pi_hits, [args.samples] * args.jobs, range(args.jobs))
        hits = c.result(jids, progress=None if args.json else True)
        seconds = time.monotonic() - t0
        infos = c.info(jids)
        assert isinstance(infos, list)
    nodes = Counter(i.node for i in infos)
    samples = args.samples * args.jobs
    out = {"pi": 4 * sum(hits) / samples, "samples": samples, "jobs": args.jobs,
           "nodes": dict(sorted(nodes.items())), "seconds": round(seconds, 3)}  # fmt: skip
    emit(args, out, lambda d: (
        f"pi is about {d['pi']:.5f} ({d['samples']:,} random points in {d['jobs']} jobs, "
        f"{d['seconds']:.2f} s)\n" + "\n".join(f"  {n}: {k} jobs" for n, k in d["nodes"].items())
    ))  # fmt: skip
    return EXIT_OK


if __name__ == "__main__":
    main()
