"""The node's web dashboard: pages for people and a JSON API under ``/api/`` (aiohttp).

It listens on 127.0.0.1 by default, or where ``mesh-node --dashboard HOST:PORT``
says. Every request needs a login (node/_login.py says which). The listening socket
is bound when the node starts (so its address is known and taken), but aiohttp is
imported and serving starts on the first connection: a node nobody looks at pays
nothing for it. Jobs are the mesh's as this node sees it: its own, merged with those
its live peers send back when asked (``JobsQuery``, or the console's grouped
``ConsoleQuery``, over the node's connection to each, with a short timeout; a peer
that does not answer is named in ``missing``). Files are this node's file catalog;
job arguments are previewed by reading their pickle opcodes, never by unpickling them.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import json
import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mesh.node._console_web import Console, states_of
from mesh.node._login import Handler, Login, json_response
from mesh.node._preview import preview_pickle
from mesh.node._store import private_data_dir

from mesh._protocol import (
    JOB_STATES,
    PROCESSING,
    QUEUED,
    ConsoleQuery,
    JobDetails,
    JobsQuery,
    JobsReply,
    JobSummary,
    Kill,
    Message,
)
from mesh.errors import ConfigurationError, ErrorKind, MeshError

if TYPE_CHECKING:
    from aiohttp import web
    from mesh.node._job_types import Job
    from mesh.node._peers import Peer
    from mesh.node._server import Node

__all__ = ["Dashboard", "client_name", "job_row", "job_summary", "jobs_reply"]

log = logging.getLogger("mesh.node.dashboard")

STATIC = Path(__file__).with_name("static")
URL_FILE = "dashboard"
PAGES = ("/", "/jobs", "/files", "/map")
PAGE_LIMIT = 50
DEFAULT_REPLICAS = 2  # mesh.files.put's default copies
MAX_LIMIT = 1000
PREVIEWS_KEPT = 4096
PREVIEWS_PER_EVENT = 256
PEER_TIMEOUT_S = 2.0  # how long the jobs view waits for a peer's jobs
PEER_REFRESH_S = 3.0  # with live peers, pages refetch jobs at least this often
# Pages may load only what this node serves (no CDN), and may not be framed (kill buttons).
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}


class Dashboard:
    """One node's dashboard server; ``start()`` binds it, the first connection serves it."""

    def __init__(
        self,
        node: Node,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        explicit: bool = False,
        event_interval_s: float = 0.5,
        peer_timeout_s: float = PEER_TIMEOUT_S,
    ) -> None:
        self.node = node
        self.host, self.port = host, port
        self.explicit = explicit  # --dashboard named: its port is taken or nothing
        self.event_interval_s = event_interval_s
        self.peer_timeout_s = peer_timeout_s
        self._jobs_bumped = 0.0
        self.login = Login(node.config.secret, lambda: self.node.name, explicit=explicit)
        self.console = Console(self)
        self._sock: socket.socket | None = None
        self._serving: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._subscribers: set[asyncio.Queue[str | None]] = set()
        self._jobs_version = 0
        self._jobs_signature = 0
        self._files_version = 0
        self._files_signature = 0
        self._previews: OrderedDict[str, str] = OrderedDict()
        self._closing = False

    @property
    def url_file(self) -> Path:
        """The file in the node's data dir that holds :attr:`url` while it serves."""
        return self.node.config.data_dir / URL_FILE

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    # ---- lifecycle ----

    def start(self) -> None:
        """Bind and listen now; import aiohttp and serve once someone connects.

        The default (loopback) dashboard takes any free port when its own is taken (a
        second node on this machine); an explicit ``--dashboard`` fails instead.
        """
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        try:
            sock = socket.create_server((self.host, self.port), family=family)
        except OSError as exc:
            if self.explicit or self.port == 0:
                raise ConfigurationError(
                    f"the dashboard cannot listen on {self.host}:{self.port}: "
                    f"{exc.strerror or exc} (pick another with --dashboard HOST:PORT)"
                ) from exc
            sock = socket.create_server((self.host, 0), family=family)
            log.warning("dashboard port %d is taken; it is on port %d instead",
                        self.port, sock.getsockname()[1])  # fmt: skip
        sock.setblocking(False)
        self._sock = sock
        self.port = self.login.port = sock.getsockname()[1]
        # Where `mesh jobs` on this machine finds it (stdout keeps its one line).
        private_data_dir(self.node.config.data_dir)
        self.url_file.write_text(self.url + "\n")
        log.info("dashboard on %s", self.url)
        loop = asyncio.get_running_loop()
        loop.add_reader(sock.fileno(), self._first_connection)

    def _first_connection(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        loop.remove_reader(self._sock.fileno())
        if not self._closing:
            self._serving = loop.create_task(self._serve(self._sock))
            self._serving.add_done_callback(self._served)

    def _served(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("the dashboard cannot serve: %r", task.exception())
            if self._sock is not None:
                self._sock.close()  # refused, rather than left hanging

    async def _serve(self, sock: socket.socket) -> None:
        # Imported off the event loop: jobs keep flowing while aiohttp loads.
        web_ = await asyncio.to_thread(importlib.import_module, "aiohttp.web")
        app = self._app(web_)
        runner = web_.AppRunner(app, handle_signals=False, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        await web_.SockSite(runner, sock).start()
        log.info("dashboard serving on %s", self.url)

    async def close(self) -> None:
        self._closing = True
        for q in self._subscribers:
            _offer(q, None)  # event streams end, so the runner need not wait for them
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        if self._serving is not None:
            try:
                await self._serving
            except Exception as exc:  # it failed at start: it was logged there
                log.debug("dashboard had failed to start: %s", exc)
        if self._runner is not None:
            await self._runner.cleanup()
        elif self._sock is not None:
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self._sock.fileno())
        if self._sock is not None:
            self._sock.close()
            with contextlib.suppress(OSError):
                self.url_file.unlink()

    # ---- the application ----

    def _app(self, web_: Any) -> web.Application:
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            return await self.login.guard(request, handler)

        app: web.Application = web_.Application(
            middlewares=[web_.middleware(guard)], client_max_size=64 * 1024
        )
        app.on_response_prepare.append(_security_headers)
        r = app.router
        for path in PAGES:
            r.add_get(path, self._page)
        r.add_get("/job/{jid}", self._page)
        r.add_get("/static/{name}", self._static)
        self.login.routes(r)
        self.console.routes(r)
        r.add_get("/api/nodes", self._api_nodes)
        r.add_get("/api/jobs", self._api_jobs)
        r.add_get("/api/jobs/{jid}", self._api_job)
        r.add_post("/api/jobs/{jid}/kill", self._api_kill)
        r.add_get("/api/files", self._api_files)
        r.add_get("/api/events", self._api_events)
        return app

    async def _page(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        return web.FileResponse(STATIC / "index.html")

    async def _static(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        name = request.match_info["name"]
        if name not in ("app.js", "charts.js", "style.css"):
            raise web.HTTPNotFound()
        return web.FileResponse(STATIC / name)

    # ---- the API ----

    async def _api_nodes(self, request: web.Request) -> web.StreamResponse:
        return _json({"node": self.node.name, "nodes": self.nodes()})

    async def _api_jobs(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        key, function, node = q.get("map", ""), q.get("function", ""), q.get("node", "")
        if q.get("group", "") in ("1", "true") or key or function or node:
            # The console's query: maps as one row (group=1), or the jobs of one map.
            query = ConsoleQuery(
                0, states_of(q.get("status", "")), q.get("label", ""), function,
                q.get("client", ""), node, _int(q.get("offset", "0"), "offset"),
                _int(q.get("limit", str(PAGE_LIMIT)), "limit"),
                grouped=q.get("group", "") in ("1", "true"), keys=(key,) if key else (),
            )  # fmt: skip
            page = await (self.console.groups(query) if query.grouped
                          else self.console.rows(query))  # fmt: skip
            return _json(page)
        return _json(
            await self.mesh_jobs(
                status=q.get("status", ""),
                label=q.get("label", ""),
                client=q.get("client", ""),
                offset=_int(q.get("offset", "0"), "offset"),
                limit=_int(q.get("limit", str(PAGE_LIMIT)), "limit"),
            )
        )

    async def _api_job(self, request: web.Request) -> web.StreamResponse:
        jid = request.match_info["jid"]
        on = request.query.get("node", "")  # the id of the node whose record to show
        detail = self.job(jid) if on in ("", self.node.node_id) else None
        if detail is None:
            found, missing = await self._find(jid, on)
            if found is None:
                return _json({"error": _not_held(self.node.name, jid, missing)}, 404)
            detail = found[1]
        detail = dict(detail)
        job = self.node.table.jobs.get(jid) if detail["node_id"] == self.node.node_id else None
        if job is not None:
            detail["retry_of"] = job.retry_of or None
            detail["retry_refused"] = self.node.table.retry_refused(jid) or None
        else:  # Retry runs the job again on the node that kept its arguments: that one
            detail["retry_of"] = None
            detail["retry_refused"] = (f"its record is on node {detail['node']}: retry it "
                                       f"from that node's dashboard")  # fmt: skip
        detail["attempts_by_node"], detail["attempts_missing"] = await self.console.attempts(jid)
        return _json(detail)

    async def _api_kill(self, request: web.Request) -> web.StreamResponse:
        jid = request.match_info["jid"]
        on = request.query.get("node", "")
        job = self.node.table.jobs.get(jid) if on in ("", self.node.node_id) else None
        if job is not None:
            killable = job.state in (QUEUED, PROCESSING)
            if killable:
                # What a client's Kill message does; a running job's worker is terminated.
                self.node.kill((jid,))
            return _json({"jid": jid, "killed": killable, "status": JOB_STATES[job.state],
                          "node": self.node.name})  # fmt: skip
        found, missing = await self._find(jid, on)
        if found is None:
            return _json({"error": _not_held(self.node.name, jid, missing)}, 404)
        peer, detail = found
        killable = detail["status"] in ("queued", "processing")
        status = detail["status"]
        if killable:
            assert peer.conn is not None
            try:
                # The holder kills it as a client's Kill; its answer to the query sent
                # after on the same connection shows the state the kill left.
                peer.conn.send(Kill((jid,)))
                status = (await self._ask(peer, jid))["status"]
            except (MeshError, TimeoutError) as exc:
                return _json({"error": f"node {detail['node']} holds job {jid} but did not "
                                       f"confirm the kill: {exc}"}, 503)  # fmt: skip
        return _json({"jid": jid, "killed": killable, "status": status, "node": detail["node"]})

    async def _api_files(self, request: web.Request) -> web.StreamResponse:
        q = request.query
        return _json(
            self.files(
                prefix=q.get("prefix", ""),
                offset=_int(q.get("offset", "0"), "offset"),
                limit=_int(q.get("limit", str(PAGE_LIMIT)), "limit"),
            )
        )

    async def _api_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: the node's view every ``event_interval_s``; pages refetch
        their jobs when ``jobs_version`` moves."""
        from aiohttp import web

        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        q: asyncio.Queue[str | None] = asyncio.Queue(maxsize=4)
        self._subscribers.add(q)
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._tick())
        try:
            await resp.write(f"retry: 2000\ndata: {self._event()}\n\n".encode())
            while not self._closing:
                data = await q.get()
                if data is None:
                    break
                await resp.write(f"data: {data}\n\n".encode())
        except ConnectionError:
            pass  # the page went away
        finally:
            self._subscribers.discard(q)
        return resp

    async def _tick(self) -> None:
        """Fan the node's state out to every open event stream; stop when none is left."""
        while self._subscribers and not self._closing:
            await asyncio.sleep(self.event_interval_s)
            try:
                series = await self.console.fresh_series()
            except Exception:  # the charts miss a beat; the event stream goes on
                log.exception("the dashboard could not gather the mesh's series")
                series = None
            data = self._event(series)
            for q in list(self._subscribers):
                _offer(q, data)

    def _event(self, series: dict[str, Any] | None = None) -> str:
        counts = dict.fromkeys(JOB_STATES, 0)
        states = []
        budget = PREVIEWS_PER_EVENT
        for job in self.node.table.jobs.values():
            states.append(job.state)
            counts[JOB_STATES[job.state]] += 1
            if budget and job.args and job.state <= PROCESSING and job.jid not in self._previews:
                # Arguments are freed when a job finishes: look while someone watches.
                self._preview(job)
                budget -= 1
        # Peers' jobs show too: their load moving (or, with peers, a few seconds
        # passing) tells pages to refetch.
        peers = self.node.peers.alive() if self.node.peers is not None else []
        signature = hash((tuple(states), tuple((p.key, p.running, p.queued) for p in peers)))
        now = time.monotonic()
        if signature != self._jobs_signature or (
            peers and now - self._jobs_bumped >= PEER_REFRESH_S
        ):
            self._jobs_signature = signature
            self._jobs_version += 1
            self._jobs_bumped = now
        files = self.node.files
        signature = hash(tuple(files.catalog())) if files is not None else 0
        if signature != self._files_signature:
            self._files_signature = signature
            self._files_version += 1
        return _dumps(
            {"node": self.node.name, "t": time.time(), "nodes": self.nodes(), "counts": counts,
             "jobs_version": self._jobs_version, "files_version": self._files_version,
             **({"series": series} if series is not None else {})}
        )  # fmt: skip

    # ---- what the API shows ----

    def nodes(self) -> list[dict[str, Any]]:
        """This node, then the other nodes of its mesh, with their load and last heartbeat."""
        node = self.node
        table = node.table
        workers = node.config.workers
        # Blobs (count, bytes) each node holds, as this node's file catalog knows.
        held = node.files.held() if node.files is not None else None

        def files(node_id: str) -> dict[str, Any]:
            if held is None:
                return {"files": None, "files_bytes": None}
            count, size = held.get(node_id, (0, 0))
            return {"files": count, "files_bytes": size}

        rows = [
            {"name": node.name, "node_id": node.node_id, "address": node.address,
             "workers": workers, "running": table.running, "queued": table.queued,
             "load": _load(table.running, table.queued, workers), **files(node.node_id),
             "heartbeat_s": 0.0, "connected": True, "self": True,
             "membership": node.peers.stats() if node.peers is not None else {},
             "catalog": dict(node.files.counters) if node.files is not None else {}}
        ]  # fmt: skip
        if node.peers is not None:
            now = asyncio.get_running_loop().time()
            peers = sorted(node.peers.peers.values(), key=lambda p: (p.name or p.key, p.key))
            for p in peers:
                conn = p.conn
                live = conn is not None and not conn.closed
                rows.append(
                    {"name": p.name or p.key, "node_id": p.node_id, "address": p.key,
                     "workers": p.workers, "running": p.running, "queued": p.queued,
                     "load": _load(p.running, p.queued, p.workers), **files(p.node_id),
                     "heartbeat_s": round(now - conn.last_alive, 3) if live and conn else None,
                     "connected": p.alive, "self": False,
                     "member": p.state.name.lower() if p.state is not None else ""}
                )  # fmt: skip
        return rows

    async def mesh_jobs(
        self,
        *,
        status: str = "",
        label: str = "",
        client: str = "",
        offset: int = 0,
        limit: int = PAGE_LIMIT,
    ) -> dict[str, Any]:
        """The mesh's jobs as this node sees it, newest first, filtered, one page of them.

        Each live peer sends its newest ``offset + limit`` matches (and how many match
        in all); merged with this node's, they hold the page asked for. A peer that
        does not answer within ``peer_timeout_s`` is named in ``missing``.
        """
        if offset < 0 or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}")
        wanted = _states(status)
        states = tuple(sorted(wanted)) if wanted is not None else ()
        query = JobsQuery(0, states, label, client, 0, offset + limit)
        rows, total = select_jobs(self.node, query)
        merged = [job_row(r, self.node.node_id) for r in rows]
        by_node = {self.node.name: total}
        answers, missing = await self.ask_peers(lambda req: dataclasses.replace(query, req=req))
        for peer, reply in answers:
            merged.extend(job_row(r, peer.node_id) for r in reply.rows)
            by_node[peer.name or peer.key] = reply.total
        merged.sort(key=lambda r: r["submitted"], reverse=True)  # stable: each node's order
        return {"node": self.node.name, "total": sum(by_node.values()), "offset": offset,
                "limit": limit, "jobs": merged[offset : offset + limit], "by_node": by_node,
                "missing": missing}  # fmt: skip

    async def ask_peers(
        self, make: Callable[[int], Message], kinds: tuple[type[Message], ...] = (JobsReply,)
    ) -> tuple[list[tuple[Peer, Any]], list[str]]:
        """Send a query to every connected peer at once: (peer, reply) of those that
        answered in time, and the names of the known peers that did not (or cannot)."""
        table = self.node.peers
        if table is None:
            return [], []
        peers = sorted(table.peers.values(), key=lambda p: (p.name or p.key, p.key))
        asked = [p for p in peers if p.alive]  # request() opens a link if there is none
        missing = [p.name or p.key for p in peers if p not in asked]
        replies = await asyncio.gather(
            *(table.request(p, make, self.peer_timeout_s) for p in asked), return_exceptions=True
        )
        answers = []
        for peer, reply in zip(asked, replies, strict=True):
            if isinstance(reply, kinds):
                answers.append((peer, reply))
            elif isinstance(reply, BaseException) and not isinstance(
                reply, (MeshError, TimeoutError)
            ):
                raise reply
            else:
                missing.append(peer.name or peer.key)
        return answers, sorted(missing)

    async def _find(
        self, jid: str, node_id: str = ""
    ) -> tuple[tuple[Peer, dict[str, Any]] | None, list[str]]:
        """Ask the peer ``node_id`` (a link names the node of the record it shows), else
        every peer, for one job: (the peer holding it, its details) or None, and the
        peers that did not answer."""
        table = self.node.peers
        peer = next((p for p in table.alive() if p.node_id == node_id), None) if table else None
        if peer is not None:
            with contextlib.suppress(MeshError, TimeoutError):
                return (peer, await self._ask(peer, jid)), []
        answers, missing = await self.ask_peers(lambda req: JobsQuery(req, jid=jid))
        for peer, reply in answers:  # the peer itself, not one found by name: names repeat
            if reply.rows and reply.details:
                return (peer, _detail_row(reply.rows[0], reply.details[0], peer.node_id)), missing
        return None, missing

    async def _ask(self, peer: Peer, jid: str) -> dict[str, Any]:
        """One job's details from the peer that holds it."""
        assert self.node.peers is not None
        reply = await self.node.peers.request(
            peer, lambda req: JobsQuery(req, jid=jid), self.peer_timeout_s
        )
        if not isinstance(reply, JobsReply) or not reply.rows or not reply.details:
            raise MeshError(f"node {peer.name} no longer holds job {jid}")
        return _detail_row(reply.rows[0], reply.details[0], peer.node_id)

    def files(
        self, *, prefix: str = "", offset: int = 0, limit: int = PAGE_LIMIT
    ) -> dict[str, Any]:
        """One page of the files this node's catalog knows, by name, with their holders."""
        if offset < 0 or not 1 <= limit <= MAX_LIMIT:
            raise ValueError(f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}")
        files = self.node.files
        catalog = files.catalog(prefix) if files is not None else []
        store = files.store if files is not None else None
        # The copies each version was put with (0: not known; put's default then).
        page = [
            {"name": e[0], "size": e[2], "hash": e[1], "time": e[3],
             "holders": [name for _, name in holders],
             "wanted": (store.target(e[0]) if store is not None else 0) or DEFAULT_REPLICAS,
             "here": store is not None and e[1] in store.have}
            for e, holders in catalog[offset : offset + limit]
        ]  # fmt: skip
        return {"node": self.node.name, "total": len(catalog),
                "bytes": sum(e[2] for e, _ in catalog), "offset": offset, "limit": limit,
                "files": page}  # fmt: skip

    def job(self, jid: str) -> dict[str, Any] | None:
        """Everything this node knows of one job it holds, or None."""
        job = self.node.table.jobs.get(jid)
        if job is None:
            return None
        return _detail_row(job_summary(self.node, job), _details(self.node, job), self.node.node_id)

    def _preview(self, job: Job) -> str:
        preview = self._previews[job.jid] = preview_pickle(job.args)
        while len(self._previews) > PREVIEWS_KEPT:
            self._previews.popitem(last=False)
        return preview


# ---- jobs, as this node answers for them (its dashboard, and its peers' JobsQuery) ----


def jobs_reply(node: Node, msg: JobsQuery) -> JobsReply:
    """A peer asks for this node's jobs (one page), or for one job with its details."""
    if msg.jid:
        job = node.table.jobs.get(msg.jid)
        if job is None:
            return JobsReply(msg.req, (), 0)
        return JobsReply(msg.req, (job_summary(node, job),), 1, (_details(node, job),))
    rows, total = select_jobs(node, msg)
    return JobsReply(msg.req, tuple(rows), total)


def select_jobs(node: Node, q: JobsQuery) -> tuple[list[JobSummary], int]:
    """This node's jobs matching ``q``'s filters, newest first: one page, and how many."""
    wanted = set(q.status)
    offset, end = max(q.offset, 0), max(q.offset, 0) + max(q.limit, 0)
    page: list[JobSummary] = []
    total = 0
    for job in _newest_first(node):
        if wanted and job.state not in wanted:
            continue
        if q.label and job.label != q.label:
            continue
        if q.client and client_name(node, job) != q.client:
            continue
        if offset <= total < end:
            page.append(job_summary(node, job))
        total += 1
    return page, total


def _states(status: str) -> set[int] | None:
    if not status:
        return None
    names = [s.strip() for s in status.split(",") if s.strip()]
    bad = [s for s in names if s not in JOB_STATES]
    if bad:
        raise ValueError(f"unknown status {bad[0]!r} (one of {', '.join(JOB_STATES)})")
    return {JOB_STATES.index(s) for s in names} or None


def _newest_first(node: Node) -> Iterator[Job]:
    return reversed(node.table.jobs.values())


def client_name(node: Node, job: Job) -> str:
    if job.owner < 0:  # restored from disk after a restart: its connection is long gone
        return ""
    return node.client_names.get(job.owner, f"connection {job.owner}")


def job_summary(node: Node, job: Job) -> JobSummary:
    return (job.jid, job.state, job.func.name, job.label, client_name(node, job), node.name,
            job.submitted, job.started, job.finished, job.cpu_s, _runs(job),
            job.cores)  # fmt: skip


def _runs(job: Job) -> int:
    """The job's runs on this node, counted as ``mesh.info`` counts them (1 for a job
    that ran once): the table counts only the runs its worker died in."""
    died_last = job.error is not None and job.error.kind == ErrorKind.WORKER_DIED
    return job.attempts + (1 if job.started and not died_last else 0)


def _details(node: Node, job: Job) -> JobDetails:
    dash = node.dashboard
    preview = dash._previews.get(job.jid) if dash is not None else None
    if preview is None and job.args:
        preview = dash._preview(job) if dash is not None else preview_pickle(job.args)
    return (preview or "", job.max_runtime, job.stdout, job.stderr, job.error)


def job_row(s: JobSummary, node_id: str) -> dict[str, Any]:
    """A job's summary as the API shows it; ``node_id``: the node that sent it."""
    jid, state, function, label, client, node, submitted, started, finished, cpu, n, cores = s
    return {
        "jid": jid, "status": JOB_STATES[state], "function": function, "label": label,
        "client": client, "node": node, "node_id": node_id, "submitted": submitted,
        "started": started or None,
        "finished": finished or None, "cpu_s": cpu, "attempts": n, "cores": cores,
    }  # fmt: skip


def _detail_row(s: JobSummary, d: JobDetails, node_id: str) -> dict[str, Any]:
    out = job_row(s, node_id)
    preview, max_runtime, stdout, stderr, err = d
    out.update(
        args_preview=preview or None,
        max_runtime=max_runtime,
        stdout=stdout,
        stderr=stderr,
        error=None
        if err is None
        else {
            "kind": err.kind,
            "type": err.type_name,
            "message": err.message,
            "traceback": err.traceback,
        },
    )
    return out


def _not_held(name: str, jid: str, missing: list[str]) -> str:
    text = f"no job {jid} on node {name} or the peers it reached"
    return text + f" (no answer from {', '.join(missing)})" if missing else text


# ---- helpers ----


def _offer(q: asyncio.Queue[str | None], item: str | None) -> None:
    """Put without waiting: a slow page skips to the newest state."""
    if q.full():
        with contextlib.suppress(asyncio.QueueEmpty):
            q.get_nowait()
    q.put_nowait(item)


def _load(running: int, queued: int, workers: int) -> float | None:
    return round((running + queued) / workers, 3) if workers > 0 else None


def _int(text: str, what: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{what} must be an integer, got {text!r}") from None


def _dumps(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"), default=str)


def _json(data: Any, status: int = 200) -> web.Response:
    return json_response(data, status)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for k, v in SECURITY_HEADERS.items():
        response.headers.setdefault(k, v)
