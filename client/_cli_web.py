"""``mesh jobs`` and ``mesh dashboard``: the nodes' dashboards over HTTP.

A credential is sent only after the dashboard proved it knows the login token (a
challenge-response), never to whatever else listens on its port (another user's
program, say). The commands' parsing and printing are client/_cli.py's.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import secrets
import sys
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from mesh.client._cli import (
    EXIT_OK,
    HTTP_TIMEOUT_S,
    clock,
    duration,
    table,
)

from mesh._auth import dashboard_node_proof, dashboard_request_mac, dashboard_token, load_secret
from mesh.errors import AuthenticationError, ConfigurationError, MeshConnectionError, MeshError

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


def list_jobs(args: argparse.Namespace) -> int:
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
         "label": j["label"] or "-", "client": j["client"], "submitted": clock(j["submitted"]),
         "run time": duration(j["started"], j["finished"])}
        for j in jobs
    ]  # fmt: skip
    cols = ["jid", "status", "node", "function", "label", "client", "submitted", "run time"]
    print(table(rows, cols))
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
                         "submitted": clock(j["submitted"]), "run time": rate})  # fmt: skip
        else:
            rows.append({"jid": j["jid"], "status": j["status"], "node": j["node"],
                         "function": j["function"], "label": j["label"] or "-",
                         "client": j["client"], "submitted": clock(j["submitted"]),
                         "run time": duration(j["started"], j["finished"])})  # fmt: skip
    cols = ["jid", "status", "node", "function", "label", "client", "submitted", "run time"]
    print(table(rows, cols))
    what = "jobs" if args.map else "rows (a map is one row)"
    if page["total"] > len(rows):
        print(f"({len(rows)} of {page['total']} {what}, newest first; --offset/--limit for others)")
    return EXIT_OK


def _seconds(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def open_dashboard(args: argparse.Namespace) -> int:
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
