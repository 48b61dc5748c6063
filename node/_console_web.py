"""The mesh console's part of the dashboard: maps as one row over the whole mesh, a
map's page (progress, run times, kill), jobs finished and workers busy per node over
time, and file downloads. It asks the peers (``ConsoleQuery``/``ConsoleStats``) over
the node's links and merges their answers with node/_console.py's pure functions.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import TYPE_CHECKING, Any

from mesh.node._console import (
    DETAIL_MAX,
    Group,
    attempts,
    console_reply,
    group_jids,
    histogram,
    map_row,
    merge_groups,
    missing_parts,
    progress_curve,
    stats_reply,
    total_groups,
)
from mesh.node._login import json_response

from mesh._protocol import (
    JOB_STATES,
    PROCESSING,
    QUEUED,
    ConsoleQuery,
    ConsoleReply,
    ConsoleSeries,
    ConsoleStats,
    JobsQuery,
    JobsReply,
    Kill,
    MapKilled,
    Message,
)
from mesh.errors import MeshError

if TYPE_CHECKING:
    from aiohttp import web
    from mesh.node._dashboard import Dashboard
    from mesh.node._peers import Peer
    from mesh.node._server import Node

__all__ = ["Console", "console_answer"]

STATS_WINDOW_S = 300.0  # the charts show the last five minutes
STATS_EVERY_S = 2.0  # while a page watches, the peers' series are asked this often
MAX_LIMIT = 1000


def console_answer(node: Node, msg: ConsoleQuery | ConsoleStats) -> Message:
    """This node's answer to a peer's console (or its own dashboard's) question."""
    from mesh.node._dashboard import client_name, job_summary

    if isinstance(msg, ConsoleStats):
        workers = node.config.workers
        return stats_reply(msg, node.table, node.name, workers, time.time())
    return console_reply(msg, node.table, node.name, lambda job: client_name(node, job),
                         lambda job: job_summary(node, job))  # fmt: skip


class Console:
    """The console's routes of one dashboard."""

    def __init__(self, dash: Dashboard) -> None:
        self.dash = dash
        self.node = dash.node
        self._series: dict[str, Any] = {}
        self._series_at = 0.0

    def routes(self, r: web.UrlDispatcher) -> None:
        r.add_get("/api/map", self._api_map)
        r.add_post("/api/map/kill", self._api_map_kill)
        r.add_get("/api/stats", self._api_stats)
        r.add_get("/api/files/download", self._api_download)
        r.add_post("/api/jobs/{jid}/retry", self._api_retry)

    # ---- asking the mesh ----

    async def ask(self, make: Any) -> tuple[list[tuple[Peer | None, Message]], list[str]]:
        """This node's answer (peer None) and every live peer's to ``make(req)``: those
        that answered, and the names of those that did not."""
        answers: list[tuple[Peer | None, Message]] = [(None, console_answer(self.node, make(0)))]
        peers, missing = await self.dash.ask_peers(make, (ConsoleReply, ConsoleSeries))
        answers.extend(peers)
        return answers, missing

    def _name(self, peer: Peer | None) -> str:
        return self.node.name if peer is None else peer.name or peer.key

    async def groups(self, q: ConsoleQuery) -> dict[str, Any]:
        """One page of the mesh's jobs with each map as one row, newest first."""
        if q.offset < 0 or not 1 <= q.limit <= MAX_LIMIT:
            raise ValueError(f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}")
        wide = ConsoleQuery(0, q.status, q.label, q.function, q.client, q.node, 0,
                            q.offset + q.limit)  # fmt: skip
        answers, missing = await self.ask(lambda req: _with_req(wide, req))
        replies = [(self._name(p), r) for p, r in answers if isinstance(r, ConsoleReply)]
        ids = {self._name(p): (p.node_id if p else self.node.node_id) for p, _ in answers}
        page = merge_groups(replies)[q.offset : q.offset + q.limit]
        # Groups on this page whose other parts were past some node's own page; with a
        # status filter, also parts with no job in those states (a row counts all its
        # jobs), which a node does not list: every node that did not send them is asked.
        more = missing_parts(page, replies, filtered=bool(q.status))
        if more:
            extra = await self._fill(dataclasses.replace(wide, status=()), more)
            page = _refill(page, replies + extra)
        now = time.time()
        rows = [self._entry(g, ids, now) for g in page]
        return {"node": self.node.name, "total": total_groups(replies), "offset": q.offset,
                "limit": q.limit, "jobs": rows, "missing": missing, "grouped": True}  # fmt: skip

    async def _fill(
        self, wide: ConsoleQuery, more: dict[str, tuple[str, ...]]
    ) -> list[tuple[str, ConsoleReply]]:
        out: list[tuple[str, ConsoleReply]] = []
        table = self.node.peers
        by_name = {p.name or p.key: p for p in table.alive()} if table is not None else {}
        for name, keys in more.items():
            q = ConsoleQuery(0, wide.status, wide.label, wide.function, wide.client, wide.node,
                             keys=keys)  # fmt: skip
            if name == self.node.name:
                reply: Message = console_answer(self.node, q)
            elif name in by_name and table is not None:
                try:
                    reply = await table.request(by_name[name], functools.partial(_with_req, q),
                                                self.dash.peer_timeout_s)  # fmt: skip
                except (MeshError, TimeoutError):
                    continue  # its part is left out, as a node that did not answer
            else:
                continue
            if isinstance(reply, ConsoleReply):
                out.append((name, reply))
        return out

    def _entry(self, g: Group, ids: dict[str, str], now: float) -> dict[str, Any]:
        from mesh.node._dashboard import job_row

        if g.jobs == 1 and len(g.sample) == 1:  # a group of one: the job itself
            s = g.sample[0]
            return {"kind": "job", **job_row(s, ids.get(s[5], ""))}
        return map_row(g, now)

    async def rows(self, q: ConsoleQuery) -> dict[str, Any]:
        """One page of single jobs (of one map with ``keys``), filtered on each node."""
        if q.offset < 0 or not 1 <= q.limit <= MAX_LIMIT:
            raise ValueError(f"offset must be >= 0 and limit between 1 and {MAX_LIMIT}")
        from mesh.node._dashboard import job_row

        wide = ConsoleQuery(0, q.status, q.label, q.function, q.client, q.node, 0,
                            q.offset + q.limit, grouped=False, keys=q.keys)  # fmt: skip
        answers, missing = await self.ask(lambda req: _with_req(wide, req))
        merged: list[dict[str, Any]] = []
        total = 0
        for p, r in answers:
            if isinstance(r, ConsoleReply):
                node_id = p.node_id if p else self.node.node_id
                merged.extend(job_row(s, node_id) for s in r.rows)
                total += r.total
        merged.sort(key=lambda j: j["submitted"], reverse=True)
        return {"node": self.node.name, "total": total, "offset": q.offset, "limit": q.limit,
                "jobs": merged[q.offset : q.offset + q.limit], "missing": missing,
                "grouped": False}  # fmt: skip

    # ---- a map's page ----

    async def _api_map(self, request: web.Request) -> web.StreamResponse:
        key = request.query.get("key", "")
        if not key:
            raise ValueError("key is missing: /api/map?key=KEY (a map row's key)")
        q = ConsoleQuery(0, keys=(key,), detail=True)
        answers, missing = await self.ask(lambda req: _with_req(q, req))
        replies = [(self._name(p), r) for p, r in answers if isinstance(r, ConsoleReply)]
        groups = merge_groups(replies)
        if not groups:
            return json_response({"error": f"no map {key} on node {self.node.name} or the "
                                           f"peers it reached"}, 404)  # fmt: skip
        finished = [t for _, r in replies for t in r.finished_s]
        runs = [t for _, r in replies for t in r.run_s]
        row = map_row(groups[0], time.time())
        row.update(curve=progress_curve(finished), runtimes=histogram(runs),
                   sampled=any(len(r.finished_s) >= DETAIL_MAX for _, r in replies),
                   missing=missing)  # fmt: skip
        return json_response(row)

    async def _api_map_kill(self, request: web.Request) -> web.StreamResponse:
        """Kill a map's queued and running jobs on every node that holds some."""
        key = request.query.get("key", "")
        if not key:
            raise ValueError("key is missing: /api/map/kill?key=KEY")
        live = (QUEUED, PROCESSING)
        jids = group_jids(self.node.table, key, live)
        killed = {self.node.name: len(jids)}
        # First its client, which kills the jobs it holds back (not sent to a node yet);
        # then the jobs the nodes hold.
        self.node.tell_clients(MapKilled(key))
        if jids:
            self.node.kill(tuple(jids))
        q = ConsoleQuery(0, status=live, limit=MAX_LIMIT * 100, grouped=False, keys=(key,))
        peers, missing = await self.dash.ask_peers(lambda req: _with_req(q, req),
                                                    (ConsoleReply,))  # fmt: skip
        for peer, reply in peers:
            assert isinstance(reply, ConsoleReply)
            theirs = tuple(s[0] for s in reply.rows)
            if theirs:
                try:  # the holder kills them as a client's Kill
                    if peer.conn is None:
                        raise MeshError("its link closed")
                    peer.conn.send(Kill(theirs))
                except MeshError:
                    missing.append(peer.name or peer.key)
                    continue
            killed[peer.name or peer.key] = len(theirs)
        return json_response({"key": key, "killed": sum(killed.values()), "by_node": killed,
                              "missing": sorted(missing)})  # fmt: skip

    # ---- a job's attempts, and Retry ----

    async def attempts(self, jid: str) -> tuple[list[dict[str, Any]], list[str]]:
        """Every node's record of job ``jid`` (one per node it was placed on), and the
        peers that did not answer."""
        from mesh.node._dashboard import job_summary

        records = []
        job = self.node.table.jobs.get(jid)
        if job is not None:
            records.append((self.node.node_id, job_summary(self.node, job), job.error))
        peers, missing = await self.dash.ask_peers(lambda req: JobsQuery(req, jid=jid))
        for peer, reply in peers:
            if isinstance(reply, JobsReply) and reply.rows and reply.details:
                records.append((peer.node_id, reply.rows[0], reply.details[0][4]))
        return attempts(records), missing

    async def _api_retry(self, request: web.Request) -> web.StreamResponse:
        """Run a failed or killed job again on this node as a new job (see JobTable.retry)."""
        jid = request.match_info["jid"]
        on = request.query.get("node", "")
        if on not in ("", self.node.node_id):
            return json_response({"error": f"job {jid}'s record is on another node than "
                                           f"{self.node.name}: retry it from that node's "
                                           f"dashboard"}, 409)  # fmt: skip
        table = self.node.table
        why = table.retry_refused(jid)
        if why:
            return json_response({"error": why}, 404 if jid not in table.jobs else 409)
        new = self.node.retry(jid)
        return json_response({"jid": new, "retry_of": jid, "node": self.node.name,
                              "node_id": self.node.node_id,
                              "status": JOB_STATES[table.jobs[new].state]})  # fmt: skip

    # ---- charts over time ----

    async def stats(self, window_s: float = STATS_WINDOW_S) -> dict[str, Any]:
        """Each node's jobs finished and workers busy per second, the last ``window_s``."""
        since = time.time() - window_s
        answers, missing = await self.ask(lambda req: ConsoleStats(req, since, 1.0))
        nodes = {}
        for _, s in answers:
            if isinstance(s, ConsoleSeries):
                nodes[s.node] = {"workers": s.workers, "start_s": s.start_s, "step_s": s.step_s,
                                 "finished": list(s.finished), "busy": list(s.busy)}  # fmt: skip
        return {"node": self.node.name, "t": time.time(), "nodes": nodes, "missing": missing}

    async def fresh_series(self) -> dict[str, Any] | None:
        """The stats for the event stream, every STATS_EVERY_S (None in between)."""
        now = time.monotonic()
        if now - self._series_at < STATS_EVERY_S:
            return None
        self._series_at = now
        return await self.stats()

    async def _api_stats(self, request: web.Request) -> web.StreamResponse:
        window = float(request.query.get("window_s", STATS_WINDOW_S))
        if not 1 <= window <= 3600:
            raise ValueError("window_s must be between 1 and 3600")
        return json_response(await self.stats(window))

    # ---- files ----

    async def _api_download(self, request: web.Request) -> web.StreamResponse:
        """A mesh file's current version, from this node's disk (else who holds it)."""
        from aiohttp import web

        name = request.query.get("name", "")
        files = self.node.files
        if files is None or files.store is None:
            return json_response({"error": "this node has no file store"}, 404)
        found = next(((e, h) for e, h in files.catalog(name) if e[0] == name), None)
        if found is None:
            return json_response({"error": f"no file {name!r} in the mesh file store"}, 404)
        entry, held_by = found
        if entry[1] not in files.store.have:
            holders = ", ".join(n for _, n in held_by) or "no live node"
            return json_response({"error": f"node {self.node.name} holds no copy of {name!r}: "
                                           f"open the dashboard of {holders}"}, 404)  # fmt: skip
        base = name.rsplit("/", 1)[-1] or "file"
        safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in base)
        return web.FileResponse(
            files.store.path(entry[1]),
            headers={"Content-Disposition": f'attachment; filename="{safe}"',
                     "Content-Type": "application/octet-stream"},
        )  # fmt: skip


def _with_req(q: ConsoleQuery, req: int) -> ConsoleQuery:
    return dataclasses.replace(q, req=req)


def _refill(page: list[Group], replies: list[tuple[str, ConsoleReply]]) -> list[Group]:
    """The page's groups summed again with the parts asked for afterwards."""
    keys = {g.key for g in page}
    merged = {g.key: g for g in merge_groups(
        [(n, ConsoleReply(r.req, groups=tuple(g for g in r.groups if g[0] in keys)))
         for n, r in replies])}  # fmt: skip
    return [merged.get(g.key, g) for g in page]


def states_of(status: str) -> tuple[int, ...]:
    """``"queued,error"`` as the wire's state numbers; an unknown name is an error."""
    names = [s.strip() for s in status.split(",") if s.strip()]
    bad = [s for s in names if s not in JOB_STATES]
    if bad:
        raise ValueError(f"unknown status {bad[0]!r} (one of {', '.join(JOB_STATES)})")
    return tuple(sorted({JOB_STATES.index(s) for s in names}))
