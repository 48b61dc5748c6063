"""The mesh console against a real mesh of 3 nodes, in headless Chromium (Playwright with
the system chromium) and through its JSON API: a map shows on every node's Jobs page as
one row with its counts, the throughput chart draws while jobs run, a job's page shows
its output while it runs, and the map page's kill stops every job of the map.

One mesh for the module (n2 and n3 name n1); each test keeps to its own label."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import gated, wait_until
from conftest import NodeProc, start_node, stop_nodes
from test_dashboard import launched_chromium

import mesh
from mesh._auth import dashboard_token

KILL = {"method": "POST", "headers": {"X-Mesh": "1"}}


class Mesh3:
    def __init__(self, secret: str, nodes: list[NodeProc]) -> None:
        self.secret = secret
        self.nodes = nodes
        self.token = dashboard_token(secret.encode())
        self.urls = {n.name: _dashboard_url(n) for n in nodes}

    def client(self, name: str) -> mesh.Client:
        return mesh.Client([n.address for n in self.nodes], self.secret, name=name)

    def api(self, url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
        status, body = self.http(url, method, headers)
        assert status == 200, (status, body)
        return json.loads(body)

    def http(
        self, url: str, method: str = "GET", headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        all_headers = {"Authorization": f"Bearer {self.token}", **(headers or {})}
        req = urllib.request.Request(url, method=method, headers=all_headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, exc.read()

    def maps(self, node: str, label: str) -> list[dict[str, Any]]:
        page = self.api(self.urls[node] + f"api/jobs?group=1&label={label}")
        return [j for j in page["jobs"] if j["kind"] == "map"]


def _dashboard_url(node: NodeProc) -> str:
    path = node.data_dir / "dashboard"
    wait_until(path.exists, what=f"{path}")
    return path.read_text().strip()


@pytest.fixture(scope="module")
def mesh3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh3]:
    secret = secrets.token_hex(32)
    root = tmp_path_factory.mktemp("console")
    nodes: list[NodeProc] = []
    try:
        nodes.append(start_node(secret, root / "n1", name="n1"))
        for name in ("n2", "n3"):
            nodes.append(start_node(secret, root / name, name=name,
                                    extra=("--peer", nodes[0].address)))  # fmt: skip
        for n in nodes:
            n.wait_workers(2)
        m = Mesh3(secret, nodes)
        for url in m.urls.values():  # every node sees the two others
            wait_until(lambda url=url: sum(n["connected"] for n in m.api(url + "api/nodes")["nodes"])
                       == 3, timeout_s=20, what="the nodes to know each other")  # fmt: skip
        yield m
    finally:
        stop_nodes(nodes)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launched_chromium()


@pytest.fixture(scope="module")
def pages(mesh3: Mesh3, browser: Any) -> Iterator[dict[str, Any]]:
    """A logged-in page on each node's dashboard (through a one-time login link)."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    errors: list[str] = []
    out = {}
    for name, url in mesh3.urls.items():
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        # a CSP violation (inline script or style the page's policy refuses) is an error
        page.on(
            "console",
            lambda msg: (
                errors.append(f"{msg.text} {msg.location}")
                if msg.type == "error" and "favicon" not in str(msg.location)
                else None
            ),
        )
        page.set_default_timeout(20_000)
        link = mesh3.api(url + "api/login-link", **KILL)
        page.goto(url + link["path"])
        assert page.url == url
        out[name] = page
    yield out
    context.close()
    assert not errors, errors


SHOTS = os.environ.get("MESH_KEEP_SCREENSHOTS", "")


def shot(page: Any, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / name), full_page=True)


def odd_fails(x: int) -> int:
    time.sleep(0.2)  # long enough that the map spreads over every node
    if x % 3 == 0:
        raise ValueError(f"{x} is a multiple of 3")
    return x


def talk_then_wait(gate: str) -> str:
    print("hello from a running job", flush=True)
    print("to stderr as well", file=sys.stderr)
    return str(gated(gate, "done"))


def quick_or_gated(x: int, gate: str) -> int:
    if x >= 6:
        gated(gate, x)
    time.sleep(0.05 * x)  # run times spread out: the map page's histogram has bars
    return x


def fails_unless(path: str) -> str:
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} is not there yet")
    return "fixed"


def pid_then_wait(pid_file: str, gate: str) -> str:
    """The first attempt writes its worker's pid and waits (the test kills it); a later
    attempt, finding the pid written, returns at once."""
    if os.path.exists(pid_file):
        return "second attempt"
    tmp = pid_file + ".tmp"
    Path(tmp).write_text(str(os.getpid()))
    os.replace(tmp, pid_file)
    return str(gated(gate, "first attempt"))


def _failed_on(mesh3: Mesh3, c: mesh.Client, jid: str) -> str:
    """The dashboard URL of the node holding ``jid``, after it failed there."""
    with pytest.raises(FileNotFoundError):
        c.result(jid, timeout=30)
    return mesh3.urls[c.info(jid).node]


def test_retry_runs_a_failed_job_again_as_a_new_job_a_fresh_client_can_read(mesh3, tmp_path):
    flag = tmp_path / "flag"
    with mesh3.client("retrier") as c:
        jid = str(c.call(fails_unless, str(flag), _label="retry-api"))
        url = _failed_on(mesh3, c, jid)
    post = url + f"api/jobs/{jid}/retry"
    detail = mesh3.api(url + f"api/jobs/{jid}")
    assert (detail["status"], detail["retry_refused"]) == ("error", None)
    # without the anti-CSRF header, and without the token, nothing runs
    assert mesh3.http(post, "POST")[0] == 403
    req = urllib.request.Request(post, method="POST", headers={"X-Mesh": "1"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=10)
    refused.value.close()
    assert refused.value.code == 401
    assert f"{jid}-r1" not in json.dumps(mesh3.api(url + "api/jobs?label=retry-api"))
    flag.touch()  # the cause is fixed
    out = mesh3.api(post, "POST", {"X-Mesh": "1"})
    assert (out["jid"], out["retry_of"]) == (f"{jid}-r1", jid)
    with mesh3.client("someone-else") as fresh:
        assert fresh.result(out["jid"], timeout=30) == "fixed"
    again = mesh3.api(url + f"api/jobs/{out['jid']}")
    assert (again["status"], again["retry_of"], again["client"]) == ("done", jid, "retrier")
    assert again["retry_refused"] == f"job {jid}-r1 did not fail (it is done)"
    status, body = mesh3.http(url + f"api/jobs/{out['jid']}/retry", "POST", {"X-Mesh": "1"})
    assert (status, json.loads(body)["error"]) == (409, f"job {jid}-r1 did not fail (it is done)")
    other = next(u for u in mesh3.urls.values() if u != url)
    status, body = mesh3.http(other + f"api/jobs/{jid}/retry", "POST", {"X-Mesh": "1"})
    assert status == 404 and f"holds no job {jid}" in json.loads(body)["error"]


def test_the_retry_button_opens_the_new_job_page(mesh3, pages, tmp_path):
    flag = tmp_path / "flag"
    with mesh3.client("clicker") as c:
        jid = str(c.call(fails_unless, str(flag), _label="retry-page"))
        url = _failed_on(mesh3, c, jid)
    name = next(n for n, u in mesh3.urls.items() if u == url)
    page = pages[name]
    page.goto(url + f"job/{jid}")
    page.wait_for_selector("#retry")
    flag.touch()
    page.click("#retry")
    page.wait_for_url(f"**/job/{jid}-r1*")
    wait_until(lambda: page.inner_text("#job-status") == "done", timeout_s=15,
               what="the retried job's page to say done")  # fmt: skip
    assert page.inner_text("#retry-of") == jid
    assert page.query_selector("#retry") is None  # done: nothing to retry


def test_a_job_whose_worker_was_killed_shows_both_attempts(mesh3, pages, tmp_path):
    pid_file, gate = tmp_path / "pid", tmp_path / "gate"
    with mesh3.client("attempts") as c:
        wait_until(lambda: len(c.nodes()) == 3, what="the client to reach 3 nodes")
        jid = str(c.call(pid_then_wait, str(pid_file), str(gate), _label="attempts"))
        pid = int(wait_until(lambda: pid_file.exists() and pid_file.read_text(),
                             timeout_s=20, what="the job's worker pid"))  # fmt: skip
        first = c.info(jid).node
        os.kill(pid, signal.SIGKILL)
        assert c.result(jid, timeout=30) == "second attempt"
        second = c.info(jid).node
    assert second != first  # a retry goes to a node it has not died on
    for url in mesh3.urls.values():  # any node's page lists them
        got = mesh3.api(url + f"api/jobs/{jid}")["attempts_by_node"]
        assert [(a["node"], a["status"]) for a in got] == [(first, "error"), (second, "done")]
        assert got[0]["error"].startswith("WorkerDied: worker process on node " + first)
        assert got[0]["started"] <= got[0]["finished"] <= got[1]["started"] <= got[1]["finished"]
    page = pages["n1"]
    page.goto(mesh3.urls["n1"] + f"job/{jid}")
    page.wait_for_selector("#attempts tbody tr")
    rows = page.query_selector_all("#attempts tbody tr")
    assert [r.query_selector("td").inner_text() for r in rows] == [first, second]


def test_a_map_is_one_row_with_its_counts_on_every_nodes_jobs_page(mesh3, pages):
    with mesh3.client("counter") as c:
        wait_until(lambda: len(c.nodes()) == 3, what="the client to reach 3 nodes")
        wait_until(lambda: all(n.connected for n in c.nodes()), what="links to all 3 nodes")
        jids = c.map(odd_fails, range(12), _label="counted")
        c.join(jids, ignore_errors=True)
        where = {i.node for i in c.info(jids)}
    assert len(where) >= 2, where  # spread over nodes: their parts merge into one row
    expected = {"queued": 0, "processing": 0, "done": 8, "error": 4, "killed": 0}
    for name, url in mesh3.urls.items():
        (row,) = mesh3.maps(name, "counted")
        assert (row["jobs"], row["counts"], row["client"]) == (12, expected, "counter")
        assert (row["first_jid"], row["last_jid"]) == (jids[0], jids[-1])
        assert row["nodes"] == sorted(where) and row["progress"] == 1.0 and row["eta_s"] == 0.0
        page = mesh3.api(url + f"api/jobs?map={row['key']}&status=error&limit=3")
        assert page["total"] == 4 and len(page["jobs"]) == 3  # the map's jobs, filtered, paged
        assert all(j["status"] == "error" for j in page["jobs"])
    key = row["key"]
    for name, page in pages.items():
        page.goto(mesh3.urls[name] + "jobs?label=counted")
        sel = f'#jobs tr.map[data-map="{key}"]'
        page.wait_for_selector(sel)
        assert page.eval_on_selector_all("#jobs tbody tr", "rows => rows.length") == 1
        assert page.get_attribute(sel, "data-jobs") == "12"
        counts = page.eval_on_selector_all(
            f"{sel} .count", "els => els.map(e => [e.dataset.state, e.innerText.trim()])"
        )
        assert counts == [["done", "done 8"], ["error", "error 4"]]
        page.click(f"{sel} button.expand")  # expanded: its jobs below it
        page.wait_for_selector("#jobs tr.sub[data-jid]")
        sub = "#jobs tr.sub[data-jid]"
        shown = page.eval_on_selector_all(sub, "rs => rs.map(r => r.dataset.jid)")
        assert sorted(shown) == sorted(jids)
        page.evaluate("view.refresh()")  # a live refresh keeps it open, its rows in place
        page.wait_for_timeout(300)
        shown = page.eval_on_selector_all(sub, "rs => rs.map(r => r.dataset.jid)")
        assert sorted(shown) == sorted(jids)
    shot(pages["n1"], "console-jobs.png")


def test_the_throughput_chart_draws_while_a_map_runs(mesh3, pages, tmp_path):
    gate = tmp_path / "gate"
    page = pages["n2"]
    page.goto(mesh3.urls["n2"])
    page.wait_for_selector("#live.on")
    with mesh3.client("charted") as c:
        wait_until(lambda: len(c.nodes()) == 3, what="the client to reach 3 nodes")
        jids = c.map(quick_or_gated, range(10), [str(gate)] * 10, _label="charted")
        assert c.result(jids[:6]) == list(range(6))
        wait_until(lambda: c.status(jids[6:]).count("processing") == 4, what="the gated jobs")

        def drawn() -> bool:
            maxima = page.eval_on_selector_all(
                "#chart-throughput path.series", "ps => ps.map(p => +p.dataset.max)"
            )
            return bool(maxima) and max(maxima) > 0

        wait_until(drawn, timeout_s=15, what="the throughput chart to draw finished jobs")
        names = page.eval_on_selector_all(
            "#chart-throughput path.series", "ps => ps.map(p => p.dataset.name)"
        )
        assert sorted(names) == ["n1", "n2", "n3", "total"]
        total = page.get_attribute('#chart-throughput path.series[data-name="total"]', "data-max")
        assert float(total) >= 1
        busy = page.eval_on_selector_all(  # 4 gated jobs hold 4 workers now
            '#chart-busy path.series[data-name="total"]', "ps => ps.map(p => +p.dataset.max)"
        )
        wait_until(lambda: max(page.eval_on_selector_all(
            '#chart-busy path.series[data-name="total"]', "ps => ps.map(p => +p.dataset.max)"
        ) or [0]) >= 3, timeout_s=15, what="the busy chart to show the gated jobs")  # fmt: skip
        assert c.status(jids[6:]) == ["processing"] * 4  # all of it while the map runs
        for url in mesh3.urls.values():  # a status filter picks the row, which counts all
            page_ = mesh3.api(url + "api/jobs?group=1&status=processing&label=charted")
            (row,) = page_["jobs"]
            assert row["counts"] == {"queued": 0, "processing": 4, "done": 6, "error": 0,
                                     "killed": 0}  # fmt: skip
            assert page_["total"] == 1 and row["eta_s"] is not None
        shot(page, "console-mesh.png")
        if SHOTS:  # the map's page, mid-run, for the README
            (row,) = mesh3.maps("n2", "charted")
            page.goto(mesh3.urls["n2"] + "map?key=" + urllib.request.quote(row["key"], safe=""))
            page.wait_for_selector("#chart-runtimes rect.bar")
            shot(page, "console-map.png")
        gate.touch()
        assert c.result(jids) == list(range(10))
    assert busy is not None


def test_a_job_page_shows_its_output_while_it_runs(mesh3, pages, tmp_path):
    gate = tmp_path / "gate"
    with mesh3.client("talker") as c:
        jid = c.call(talk_then_wait, str(gate), _label="talk")
        wait_until(lambda: c.status(jid) == "processing", what="the job to run")
        page = pages["n3"]
        page.goto(mesh3.urls["n3"] + f"job/{jid}")
        page.wait_for_selector("#job-status")
        wait_until(lambda: "hello from a running job" in page.inner_text("#stdout"),
                   timeout_s=15, what="the running job's stdout on its page")  # fmt: skip
        assert page.inner_text("#job-status") == "processing"
        assert c.status(jid) == "processing"
        wait_until(lambda: "to stderr as well" in page.inner_text("#stderr"), what="its stderr")
        shot(page, "console-job.png")
        gate.touch()
        assert c.result(jid) == "done"
    wait_until(lambda: page.inner_text("#job-status") == "done", what="the page to say done")
    assert page.inner_text("#stdout").strip() == "hello from a running job"


def test_kill_on_the_map_page_stops_all_of_its_jobs(mesh3, pages, tmp_path):
    gate = tmp_path / "never"
    with mesh3.client("victim") as c:
        wait_until(lambda: len(c.nodes()) == 3, what="the client to reach 3 nodes")
        jids = c.map(gated, [str(gate)] * 6, range(6), _label="doomed")
        wait_until(lambda: c.status(jids).count("processing") == 6, what="all 6 to run")
        (row,) = mesh3.maps("n1", "doomed")
        assert row["counts"]["processing"] == 6
        page = pages["n1"]
        page.goto(mesh3.urls["n1"] + "map?key=" + urllib.request.quote(row["key"], safe=""))
        page.wait_for_selector("#kill-map")
        page.wait_for_selector("#chart-progress svg")
        page.click("#kill-map")
        for jid in jids:
            with pytest.raises(mesh.JobKilled):
                c.result(jid, timeout=30)
        assert c.status(jids) == ["killed"] * 6
    wait_until(lambda: page.inner_text('#map-counts [data-state="killed"] .big') == "6",
               timeout_s=15, what="the map page to count 6 killed")  # fmt: skip
    assert page.is_hidden("#kill-map")  # nothing left to kill
    status, _ = mesh3.http(mesh3.urls["n2"] + "api/map/kill?key=" + row["key"], "POST")
    assert status == 403  # without the anti-CSRF header nothing is killed


def test_a_map_kill_reaches_the_jobs_its_client_has_not_sent_yet(mesh3, tmp_path):
    gate = tmp_path / "never"
    with mesh3.client("holder") as c:
        wait_until(lambda: len(c.nodes()) == 3, what="the client to reach 3 nodes")
        n = 400  # far more than 3 nodes' slots and pipelines: most stay in the client
        jids = c.map(gated, [str(gate)] * n, range(n), _label="held-back")
        wait_until(lambda: c.status(jids).count("processing") == 6, what="6 to run")
        (row,) = mesh3.maps("n2", "held-back")
        assert sum(row["counts"].values()) < n  # the nodes hold only some of them
        url = mesh3.urls["n2"] + "api/map/kill?key=" + urllib.request.quote(row["key"], safe="")
        mesh3.api(url, **KILL)
        for jid in jids:
            with pytest.raises(mesh.JobKilled):
                c.result(jid, timeout=30)
        assert c.status(jids) == ["killed"] * n


def test_files_page_shows_copies_and_downloads_for_the_token_holder(mesh3, pages):
    with mesh3.client("filer") as c:
        info = c.files.putf(b"abc" * 1000, "console/one.bin", replicas=3)
    holders = sorted(info.nodes)
    name = holders[0]
    url = mesh3.urls[name]
    files = mesh3.api(url + "api/files?prefix=console/")["files"]
    (f,) = files
    assert f["wanted"] == 3 and f["here"] is True
    status, body = mesh3.http(url + "api/files/download?name=console/one.bin")
    assert status == 200 and body == b"abc" * 1000
    req = urllib.request.Request(url + "api/files/download?name=console/one.bin")
    with pytest.raises(urllib.error.HTTPError) as err:  # no token: no file
        urllib.request.urlopen(req, timeout=10)
    assert err.value.code == 401
    err.value.close()
    page = pages[name]
    page.goto(url + "files?prefix=console/")
    row = '#files tr[data-name="console/one.bin"]'
    page.wait_for_selector(row)
    cell = page.inner_text(f"{row} .copies")
    assert cell == f"{len(holders)} / 3"
    under = page.eval_on_selector(f"{row} .copies", "e => e.classList.contains('under')")
    assert under == (len(holders) < 3)
    assert page.get_attribute(f"{row} a.download", "href").endswith("name=console%2Fone.bin")
    if SHOTS:
        shutil.rmtree(Path(SHOTS) / "unused", ignore_errors=True)


def test_mesh_jobs_all_lists_a_map_as_one_row(mesh3, capsys, monkeypatch):
    from mesh.client._cli import main as mesh_cli

    with mesh3.client("cli") as c:
        wait_until(lambda: len(c.nodes()) == 3, what="the client to reach 3 nodes")
        jids = c.map(abs, range(-7, 0), _label="cli-map")
        c.join(jids)
        lone = c.call(abs, -1, _label="cli-one")
        c.join([lone])
    monkeypatch.setenv("MESH_SECRET", mesh3.secret)

    def run(*args: str) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            mesh_cli(["jobs", *args, "--dashboard", mesh3.urls["n3"]])
        out = capsys.readouterr().out
        assert exit_.value.code == 0, out
        return out

    page = json.loads(run("--all", "--json", "--label", "cli-map"))
    (row,) = page["jobs"]
    assert row["kind"] == "map" and row["jobs"] == 7 and row["counts"]["done"] == 7
    text = run("--all", "--label", "cli-map").splitlines()
    assert text[1].startswith(f"{jids[0]}..{jids[-1]} (7)") and "7 done 0 running" in text[1]
    one = json.loads(run("--all", "--json", "--label", "cli-one"))["jobs"]
    assert [(j["kind"], j["jid"]) for j in one] == [("job", lone)]  # a lone call stays a job
    listed = json.loads(run("--json", "--map", row["key"], "--limit", "3"))
    assert listed["total"] == 7 and [j["jid"] for j in listed["jobs"]] == [
        j["jid"] for j in sorted(listed["jobs"], key=lambda j: -j["submitted"])]  # fmt: skip
