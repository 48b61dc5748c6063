"""``mesh``: the mesh from a shell: nodes, jobs, results, kills, files, the secret and tokens.

``jobs`` and ``dashboard`` talk to nodes' dashboards over HTTP, and only after the
dashboard proved it knows the login token (a challenge-response): a credential is
never sent to whatever else listens on its port (another user's program, say).

Every command prints a human-readable table or block by default and JSON with
``--json``. Exit codes: 0 ok; 1 a job failed (``result``); 2 a mesh error (nodes
or dashboard unreachable, wrong secret, unknown job, missing file) or a usage error.
"""

from __future__ import annotations

import argparse
import dataclasses
import hmac
import json
import os
import random
import secrets
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from mesh._auth import (
    dashboard_node_proof,
    dashboard_request_mac,
    dashboard_token,
    default_secret_path,
    load_secret,
)
from mesh._protocol import JOB_STATES
from mesh.errors import (
    AuthenticationError,
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
            sys.exit(_list_jobs(args))
        if args.command == "dashboard":
            sys.exit(_open_dashboard(args))
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
        if args.command == "job":
            infos = c.info(list(args.jids))
            assert isinstance(infos, list)
            _print(
                args, [i.__dict__ for i in infos], lambda rows: "\n\n".join(map(_job_block, rows))
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


def _table(rows: list[dict[str, Any]], cols: list[str] | None = None) -> str:
    cols = cols or ["name", "address", "workers", "running", "queued", "connected"]
    cells = [cols] + [[str(r[c]) for c in cols] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(cols))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _print(args: argparse.Namespace, data: Any, human: Any) -> None:
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
            _print(args, rows, lambda rows: _file_table(rows, args.prefix))
            return EXIT_OK
        if args.action == "put":
            stored = files.put(args.path, args.name, args.replicas)
            _print(args, _file_dict(stored), lambda d: (
                f"stored {d['name']} ({_size(d['size'])}, version {d['hash'][:12]}) on "
                f"{', '.join(d['nodes']) or 'no live node'}"
            ))  # fmt: skip
            return EXIT_OK
        if args.action == "get":
            path = files.get(args.name, args.path)
            out = {"name": args.name, "path": path, "size": os.path.getsize(path)}
            _print(args, out, lambda d: f"wrote {d['name']} to {d['path']} ({_size(d['size'])})")
            return EXIT_OK
        if args.action == "info":
            d = _file_dict(files.info(args.name))
            _print(args, d, lambda d: "\n".join([
                f"name     {d['name']}",
                f"size     {_size(d['size'])} ({d['size']:,} bytes)",
                f"hash     {d['hash']}",
                f"stored   {_clock(d['time'])}",
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
            _print(args, {"removed": removed, "missing": missing},
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
         "stored": _clock(r["time"]), "nodes": ",".join(r["nodes"]) or "-"}
        for r in rows
    ]  # fmt: skip
    return _table(cells, FILE_COLUMNS)


def _size(n: int) -> str:
    """Bytes for people: 812 B, 4.0 KiB, 1.25 GiB."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            break
        size /= 1024
    return f"{n} B" if unit == "B" else f"{size:.{2 if size < 10 else 1}f} {unit}"


# ---- job listing, from the nodes' dashboards ----


def _dashboards(given: list[str]) -> list[str]:
    """Dashboard URLs: --dashboard, else MESH_DASHBOARD, else this user's node's, else :8390."""
    urls = [u for g in given for u in g.split(",") if u.strip()]
    if not urls:
        urls = [u for u in os.environ.get("MESH_DASHBOARD", "").split(",") if u.strip()]
    if not urls:
        base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        written = Path(base) / "lanmesh" / "dashboard"  # the default data dir's node writes it
        try:
            urls = [written.read_text().strip()]
        except OSError:
            port = int(os.environ.get("MESH_PORT", "7390") or 7390)
            urls = [f"http://127.0.0.1:{port + 1000}/"]
    out = []
    for u in urls:
        u = u.strip()
        if "://" not in u:
            u = "http://" + u
        out.append(u if u.endswith("/") else u + "/")
    return out


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A dashboard never redirects its API: a redirect is followed nowhere."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


def _get_json(base: str, path: str, method: str = "GET") -> Any:
    """Call a dashboard's JSON API once it proved it knows this mesh's login token.

    The challenge carries no credential; the request after it carries a MAC bound to
    it, to the dashboard's one-time nonce and to the request, never the token.
    """
    try:
        token = dashboard_token(load_secret())
    except ConfigurationError as exc:
        raise ConfigurationError(
            f"the dashboard needs a login, made from the mesh secret: {exc}"
        ) from None
    mine = secrets.token_bytes(32)
    answer = _http_json(base, "api/challenge?nonce=" + mine.hex(), "GET", {})
    try:
        theirs = bytes.fromhex(str(answer["nonce"]))
        proof = str(answer["proof"])
    except (KeyError, TypeError, ValueError):
        theirs, proof = b"", ""
    if not theirs or not hmac.compare_digest(
        proof.encode(), dashboard_node_proof(token, mine, theirs).encode()
    ):
        raise AuthenticationError(
            f"the server at {base} could not prove it is a dashboard of this mesh: that node "
            "has another secret than this machine (compare `mesh token` on both), or another "
            "program (perhaps another user's) listens there. Nothing secret was sent to it"
        )
    target = urllib.parse.urlsplit(base + path)
    selector = target.path + (f"?{target.query}" if target.query else "")
    mac = dashboard_request_mac(token, mine, theirs, method, selector)
    auth = {"Authorization": f"Mesh-HMAC nonce={theirs.hex()}, mac={mac}"}
    if method == "POST":
        auth["X-Mesh"] = "1"
    return _http_json(base, path, method, auth)


def _http_json(base: str, path: str, method: str, headers: dict[str, str]) -> Any:
    request = urllib.request.Request(
        base + path, method=method, headers={"Accept": "application/json", **headers}
    )
    try:
        with urllib.request.build_opener(_NoRedirect).open(request, timeout=HTTP_TIMEOUT_S) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        with exc:
            detail = _error_text(exc)
        if exc.code == 401:
            raise AuthenticationError(
                f"dashboard {base} refused the login: this machine's mesh secret is not that "
                "node's (compare `mesh token` on both)"
            ) from None
        raise MeshError(f"dashboard {base}: HTTP {exc.code}: {detail}") from None
    except ValueError:
        raise AuthenticationError(
            f"the server at {base} does not answer as a lanmesh dashboard does (not JSON)"
        ) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise MeshConnectionError(
            f"no dashboard at {base} ({reason}); is mesh-node running there? Name it with "
            "--dashboard URL or MESH_DASHBOARD"
        ) from None


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        return str(json.loads(exc.read()).get("error", exc.reason))
    except (ValueError, AttributeError, OSError):
        return str(exc.reason)


def _list_jobs(args: argparse.Namespace) -> int:
    if args.limit < 1 or args.offset < 0:
        raise ConfigurationError("--limit must be at least 1 and --offset at least 0")
    if args.all or args.map or args.function or args.node:
        return _console_jobs(args)
    query = {"status": args.status, "label": args.label, "client": args.client}
    query = {k: v for k, v in query.items() if v}
    urls = _dashboards(args.dashboard)
    if len(urls) == 1:  # a node's dashboard lists the whole mesh as it sees it
        page = _get_json(urls[0], "api/jobs?" + urllib.parse.urlencode(
            {**query, "offset": args.offset, "limit": min(args.limit, 1000)}))  # fmt: skip
        total, jobs = int(page["total"]), list(page["jobs"])
        missing = set(page.get("missing", ()))
    else:
        # Every dashboard's newest offset+limit: their merge holds the page asked for.
        # Dashboards of nodes that know each other list the same jobs: each (job, node)
        # once, and each node's count once.
        by_node: dict[str, int] = {}
        seen: dict[tuple[str, str], dict[str, Any]] = {}
        missing = set()
        for url in urls:
            page = _get_json(url, "api/jobs?" + urllib.parse.urlencode(
                {**query, "offset": 0, "limit": min(args.offset + args.limit, 1000)}))  # fmt: skip
            by_node.update(page.get("by_node") or {page["node"]: int(page["total"])})
            missing.update(page.get("missing", ()))
            for j in page["jobs"]:  # by node id where the dashboard sends it: names repeat
                seen.setdefault((j["jid"], j.get("node_id") or j["node"]), j)
        missing -= set(by_node)  # a node one dashboard could not reach, another did
        total = sum(by_node.values())
        jobs = sorted(seen.values(), key=lambda j: j["submitted"], reverse=True)
        jobs = jobs[args.offset : args.offset + args.limit]
    if missing:
        print(f"mesh: no answer from {', '.join(sorted(missing))}: their jobs are not listed",
              file=sys.stderr)  # fmt: skip
    if args.json:
        print(json.dumps({"total": total, "offset": args.offset, "jobs": jobs,
                          "missing": sorted(missing)}))  # fmt: skip
        return EXIT_OK
    rows = [
        {"jid": j["jid"], "status": j["status"], "node": j["node"], "function": j["function"],
         "label": j["label"] or "-", "client": j["client"], "submitted": _clock(j["submitted"]),
         "run time": _duration(j["started"], j["finished"])}
        for j in jobs
    ]  # fmt: skip
    cols = ["jid", "status", "node", "function", "label", "client", "submitted", "run time"]
    print(_table(rows, cols))
    if total > len(jobs):
        print(f"({len(jobs)} of {total} jobs, newest first; --offset/--limit for others)")
    return EXIT_OK


def _console_jobs(args: argparse.Namespace) -> int:
    """The console's view from one dashboard (it asks every node): maps as one row, or
    with ``--map`` the jobs of one map."""
    urls = _dashboards(args.dashboard)
    query = {"status": args.status, "label": args.label, "client": args.client,
             "function": args.function, "node": args.node, "map": args.map,
             "group": "" if args.map else "1"}  # fmt: skip
    query = {k: v for k, v in query.items() if v}
    page = _get_json(urls[0], "api/jobs?" + urllib.parse.urlencode(
        {**query, "offset": args.offset, "limit": min(args.limit, 1000)}))  # fmt: skip
    missing = list(page.get("missing", ()))
    if missing:
        print(f"mesh: no answer from {', '.join(missing)}: their jobs are not listed",
              file=sys.stderr)  # fmt: skip
    if args.json:
        print(json.dumps(page))
        return EXIT_OK
    rows = []
    for j in page["jobs"]:
        if j.get("kind") == "map":
            c = j["counts"]
            eta = f", ETA {_seconds(j['eta_s'])}" if j["eta_s"] else ""
            rate = f"{j['rate_per_s']}/s{eta}" if j["rate_per_s"] is not None else "-"
            rows.append({"jid": f"{j['first_jid']}..{j['last_jid']} ({j['jobs']})",
                         "status": f"{c['done']} done {c['processing']} running "
                                   f"{c['queued']} queued {c['error'] + c['killed']} failed",
                         "node": ",".join(j["nodes"]), "function": j["function"],
                         "label": j["label"] or "-", "client": j["client"],
                         "submitted": _clock(j["submitted"]), "run time": rate})  # fmt: skip
        else:
            rows.append({"jid": j["jid"], "status": j["status"], "node": j["node"],
                         "function": j["function"], "label": j["label"] or "-",
                         "client": j["client"], "submitted": _clock(j["submitted"]),
                         "run time": _duration(j["started"], j["finished"])})  # fmt: skip
    cols = ["jid", "status", "node", "function", "label", "client", "submitted", "run time"]
    print(_table(rows, cols))
    what = "jobs" if args.map else "rows (a map is one row)"
    if page["total"] > len(rows):
        print(f"({len(rows)} of {page['total']} {what}, newest first; --offset/--limit for others)")
    return EXIT_OK


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def _open_dashboard(args: argparse.Namespace) -> int:
    """Open the dashboard with a one-time login link the node gave (after it proved
    itself), so the browser gets a session cookie and the token stays here."""
    import webbrowser

    urls = _dashboards(args.dashboard)
    if len(urls) != 1:
        raise ConfigurationError("mesh dashboard opens one dashboard: name one with --dashboard")
    base = urls[0]
    link = _get_json(base, "api/login-link", "POST")
    url = base + str(link["path"]).lstrip("/")
    try:
        opened = not args.no_browser and webbrowser.open(url)
    except webbrowser.Error:
        opened = False  # no usable browser here: the link is printed instead
    if args.json:
        print(json.dumps({"url": url, "opened": opened}))
    elif opened:
        print(f"opened {base} in the browser (login link, valid once: {url})")
    else:
        print(f"open this link to log in (valid once, for {int(link['expires_s'])} s):\n{url}")
    return EXIT_OK


def _clock(t: float | None) -> str:
    if not t:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t))


def _duration(started: float | None, finished: float | None) -> str:
    if not started:
        return "-"
    return f"{max(0.0, (finished or time.time()) - started):.2f} s"


def _job_block(r: dict[str, Any]) -> str:
    lines = [
        f"job        {r['jid']}",
        f"status     {r['status']}",
        f"node       {r['node'] or '-'}",
        f"function   {r['function']}",
        f"label      {r['label'] or '-'}",
        f"submitted  {_clock(r['submitted'])}",
        f"started    {_clock(r['started'])}",
        f"finished   {_clock(r['finished'])}",
        f"run time   {_duration(r['started'], r['finished'])}",
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
        _print(args, [_env_dict(i) for i in infos], _env_report)
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
         "last use": _clock(r["last_used"]), "builds": r["builds"]}
        for r in rows
    ]  # fmt: skip
    out = [_table(cells, ENV_COLUMNS)]
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
    _print(args, out, lambda d: (
        f"pi is about {d['pi']:.5f} ({d['samples']:,} random points in {d['jobs']} jobs, "
        f"{d['seconds']:.2f} s)\n" + "\n".join(f"  {n}: {k} jobs" for n, k in d["nodes"].items())
    ))  # fmt: skip
    return EXIT_OK


if __name__ == "__main__":
    main()
