"""The node's web dashboard: its JSON API, its login token, and its pages in a real
headless browser (Debian's chromium driven by Playwright), against real nodes.

Every dashboard needs a login: these requests send the mesh's token as a script would
(``Authorization: Bearer``), the browser logs in through ``mesh dashboard``'s link.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import gated, started_then_gated, wait_until
from blake3 import blake3
from conftest import NodeProc
from mesh.client._cli import main as mesh_cli
from mesh.node._preview import preview_pickle

import mesh
from mesh._auth import dashboard_token

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


# The login token of the test's mesh: what `http` sends unless told not to.
TOKEN = ""


@pytest.fixture(autouse=True)
def logged_in(secret: str) -> Iterator[None]:
    """Requests of this test send its mesh's token (``login=False``: none)."""
    global TOKEN
    TOKEN = dashboard_token(secret.encode())
    yield
    TOKEN = ""


def dashboard(node: NodeProc) -> str:
    """The dashboard URL a node wrote into its data dir."""
    path = node.data_dir / "dashboard"
    wait_until(path.exists, what=f"{path}")
    return path.read_text().strip()


def http(
    url: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
    login: bool = True,
) -> tuple[int, dict[str, str], bytes]:
    """(status, headers, body) of one request, with the mesh's token unless ``login`` is
    false or the request carries its own credential; redirects are not followed."""
    headers = dict(headers or {})
    if login and TOKEN and "Authorization" not in headers and "Cookie" not in headers:
        headers["Authorization"] = f"Bearer {TOKEN}"

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, dict(exc.headers), exc.read()


def api(url: str, **kwargs: Any) -> Any:
    status, _, body = http(url, **kwargs)
    assert status == 200, (status, body)
    return json.loads(body)


def all_jobs(base: str, query: str = "", limit: int = 500) -> tuple[int, list[dict[str, Any]]]:
    """Every job a dashboard lists for ``query``, page after page."""
    jobs: list[dict[str, Any]] = []
    total = -1
    while total < 0 or len(jobs) < total:
        page = api(f"{base}api/jobs?offset={len(jobs)}&limit={limit}{query}")
        total = page["total"]
        jobs.extend(page["jobs"])
        if not page["jobs"]:
            break
    return total, jobs


@pytest.fixture
def mesh2(node_factory, secret) -> list[NodeProc]:
    """Two nodes that know each other (n2 names n1); n1's dashboard sees both."""
    global TOKEN
    TOKEN = dashboard_token(secret.encode())  # also where `logged_in` is not used
    n1 = node_factory(name="n1")
    n2 = node_factory(name="n2", extra=("--peer", n1.address))
    wait_until(
        lambda: (
            {(n["name"], n["connected"]) for n in api(dashboard(n1) + "api/nodes")["nodes"]}
            == {("n1", True), ("n2", True)}
        ),
        what="n1 to see n2",
    )
    return [n1, n2]


def files_linked(c: mesh.Client) -> None:
    """Wait until a put lands on both nodes of ``mesh2`` (their file links are up)."""

    def both_hold_a_probe() -> bool:
        return len(c.files.putf(b"probe", "probe", replicas=2).nodes) == 2

    wait_until(both_hold_a_probe, timeout_s=20, what="the nodes' file links")
    c.files.delete("probe")


def shout(text: str) -> None:
    print(text)
    print("to stderr", file=sys.stderr)
    raise ValueError(f"boom: {text}")


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


# ---- the JSON API ----


def test_api_nodes_lists_the_node_and_its_peers(mesh2):
    n1, n2 = mesh2
    data = api(dashboard(n1) + "api/nodes")
    assert data["node"] == "n1"
    rows = {r["name"]: r for r in data["nodes"]}
    assert rows["n1"]["self"] and rows["n1"]["address"] == n1.address
    assert rows["n2"]["address"] == n2.address and not rows["n2"]["self"]
    for r in rows.values():
        assert r["workers"] == 2 and r["running"] == 0 and r["queued"] == 0 and r["load"] == 0
        assert r["files"] == 0 and r["files_bytes"] == 0  # no file stored yet
    assert 0 <= rows["n2"]["heartbeat_s"] < 5  # heard within the peer timeout


def test_api_jobs_newest_first_filtered_and_paged_past_thousands(mesh2, secret):
    urls = [dashboard(n) for n in mesh2]
    with mesh.Client([n.address for n in mesh2], secret, name="pager") as c:
        many = c.map(abs, range(-2500, 0), _label="many")
        failing = c.map(pow, [0, 0], [-1, -1], _label="few")  # ZeroDivisionError
        c.join(many)
        c.join(failing, ignore_errors=True)
        where = {i.jid: i.node for i in c.info(many + failing)}

    # each dashboard lists the whole mesh's jobs (both nodes know each other)
    for url in urls:
        total, jobs = all_jobs(url, "&label=many")
        assert total == len(jobs) == 2500
        assert {j["jid"]: j["node"] for j in jobs} == {j: where[j] for j in many}
        # newest first: submission times (as each node received its jobs) never
        # increase. Not the client's counters: a job recalled from a busy node reaches
        # the other one after later-numbered jobs did.
        assert [j["submitted"] for j in jobs] == sorted(
            (j["submitted"] for j in jobs), reverse=True
        )
        assert {j["status"] for j in jobs} == {"done"}
        assert {j["client"] for j in jobs} == {"pager"}
        page = api(url + "api/jobs?label=many&limit=1")
        assert page["by_node"] == {n: sum(where[j] == n for j in many) for n in ("n1", "n2")}
        assert page["missing"] == []

        errors = all_jobs(url, "&status=error")[1]
        assert sorted(j["jid"] for j in errors) == sorted(failing)
        assert all(j["label"] == "few" for j in errors)
        assert all_jobs(url, "&status=done,error&client=pager")[0] == 2502
        assert all_jobs(url, "&client=somebody-else")[0] == 0

    full = all_jobs(urls[0], "&label=many")[1]
    page = api(urls[0] + "api/jobs?label=many&offset=10&limit=7")
    assert page["offset"] == 10 and page["jobs"] == full[10:17]
    status, _, body = http(urls[0] + "api/jobs?status=finished")
    assert status == 400 and b"unknown status" in body
    status, _, _ = http(urls[0] + "api/jobs?limit=0")
    assert status == 400


def test_api_files_lists_the_catalog_and_what_each_node_holds(mesh2, secret):
    urls = {n.name: dashboard(n) for n in mesh2}
    with mesh.Client([n.address for n in mesh2], secret) as c:
        files_linked(c)
        both = c.files.putf(b"a" * 3000, "docs/a.txt", replicas=2)
        one = c.files.putf(b"b" * 700, "docs/b.txt", replicas=1)
        top = c.files.putf(b"top", "top.txt", replicas=1)
        infos = {i.name: i for i in (both, one, top)}
        assert sorted(both.nodes) == ["n1", "n2"] and len(one.nodes) == len(top.nodes) == 1

        expected = {  # node -> (blobs, bytes) it holds
            n: (sum(n in i.nodes for i in infos.values()),
                sum(i.size for i in infos.values() if n in i.nodes))
            for n in ("n1", "n2")
        }  # fmt: skip
        assert sum(count for count, _ in expected.values()) == 4

        def rows(url: str) -> dict[str, dict[str, Any]]:
            return {f["name"]: f for f in api(url + "api/files?limit=1000")["files"]}

        for name, url in urls.items():
            # every node's catalog: every name, its current version, its holders
            wait_until(lambda url=url: {f: sorted(r["holders"]) for f, r in rows(url).items()}
                       == {i.name: sorted(i.nodes) for i in infos.values()},
                       what=f"{name}'s catalog to know every holder")  # fmt: skip
            data = api(url + "api/files")
            assert data["node"] == name and data["total"] == 3 and data["bytes"] == 3703
            assert [f["name"] for f in data["files"]] == ["docs/a.txt", "docs/b.txt", "top.txt"]
            for f in data["files"]:
                i = infos[f["name"]]
                assert (f["size"], f["hash"], f["time"]) == (i.size, i.hash, i.time)
            assert data["files"][0]["hash"] == blake3(b"a" * 3000).hexdigest()

            # blobs held per node, the node's own from its store, peers' from the catalog
            def held(url: str = url) -> dict[str, tuple[int, int]]:
                nodes = api(url + "api/nodes")["nodes"]
                return {n["name"]: (n["files"], n["files_bytes"]) for n in nodes}

            wait_until(lambda held=held: held() == expected, what=f"{name}'s files held")

        url = urls["n1"]
        page = api(url + "api/files?prefix=docs/&offset=1&limit=1")
        assert (page["total"], page["bytes"], page["offset"], page["limit"]) == (2, 3700, 1, 1)
        assert [f["name"] for f in page["files"]] == ["docs/b.txt"]
        assert api(url + "api/files?prefix=nothing/")["files"] == []
        assert http(url + "api/files?limit=0")[0] == 400
        assert http(url + "api/files?offset=x")[0] == 400

        for name in infos:
            c.files.delete(name)
    for name, url in urls.items():  # deleted: gone from the catalog, blobs collected
        assert api(url + "api/files") == {"node": name, "total": 0, "bytes": 0, "offset": 0,
                                          "limit": 50, "files": []}  # fmt: skip
        wait_until(lambda url=url: {(n["files"], n["files_bytes"])
                                    for n in api(url + "api/nodes")["nodes"]} == {(0, 0)},
                   what=f"{name} to hold no blobs")  # fmt: skip


def test_api_job_shows_output_traceback_and_arguments(node_factory, secret, request):
    node = node_factory(name="solo")
    url = dashboard(node)
    # short paths: the preview shortens strings past 80 characters, and pytest's
    # tmp_path can be longer than that (under xdist, say)
    short = Path(tempfile.mkdtemp(prefix="mesh-"))
    request.addfinalizer(lambda: shutil.rmtree(short, ignore_errors=True))
    started, gate = short / "started", short / "gate"
    with mesh.Client([node.address], secret) as c:
        failed = c.call(shout, "hello from the job", _label="loud")
        with pytest.raises(ValueError):
            c.result(failed)
        running = c.call(started_then_gated, str(started), str(gate), ("late", 7))
        wait_until(started.exists, what="the job to start")

        detail = api(url + f"api/jobs/{running}")
        assert detail["status"] == "processing"
        assert detail["args_preview"] == repr((str(started), str(gate), ("late", 7)))
        gate.touch()
        assert c.result(running) == ("late", 7)

    detail = api(url + f"api/jobs/{failed}")
    assert detail["status"] == "error" and detail["label"] == "loud"
    assert detail["function"].endswith("shout") and detail["node"] == "solo"
    assert detail["stdout"] == "hello from the job\n"
    assert detail["stderr"] == "to stderr\n"
    assert detail["error"]["type"].endswith("ValueError")
    assert "boom: hello from the job" in detail["error"]["traceback"]
    assert detail["submitted"] <= detail["started"] <= detail["finished"]
    done = api(url + f"api/jobs/{running}")
    assert done["status"] == "done" and done["args_preview"].startswith("(")  # kept once seen

    status, _, body = http(url + "api/jobs/nosuch-1")
    assert status == 404 and b"nosuch-1" in body


def test_api_kill_stops_a_running_job_and_needs_its_header(node_factory, secret, tmp_path):
    node = node_factory(name="solo")
    url = dashboard(node)
    started, gate = tmp_path / "started", tmp_path / "gate"
    with mesh.Client([node.address], secret) as c:
        jid = c.call(started_then_gated, str(started), str(gate), "never")
        wait_until(started.exists, what="the job to start")
        status, _, body = http(url + f"api/jobs/{jid}/kill", method="POST")
        assert status == 403 and b"X-Mesh" in body  # what a cross-site form would send
        status, _, _ = http(url + f"api/jobs/{jid}/kill", method="POST", headers={"X-Mesh": "1"},
                            login=False)  # fmt: skip
        assert status == 401  # loopback is no login either
        assert c.status(jid) == "processing"
        out = api(url + f"api/jobs/{jid}/kill", method="POST", headers={"X-Mesh": "1"})
        assert out["killed"] is True
        with pytest.raises(mesh.JobKilled):
            c.result(jid, timeout=20)
        assert c.status(jid) == "killed"
        again = api(url + f"api/jobs/{jid}/kill", method="POST", headers={"X-Mesh": "1"})
        assert again == {"jid": jid, "killed": False, "status": "killed", "node": "solo"}
    status, _, _ = http(url + "api/jobs/nosuch-1/kill", method="POST", headers={"X-Mesh": "1"})
    assert status == 404


def test_loopback_dashboard_refuses_other_host_names(node_factory):
    url = dashboard(node_factory(name="solo"))
    assert http(url + "api/nodes")[0] == 200
    status, _, _ = http(url + "api/nodes", headers={"Host": "attacker.example:80"})
    assert status == 403  # a page that reached us by DNS rebinding
    assert http(url + "api/nodes", headers={"Host": "localhost"})[0] == 200


@pytest.mark.parametrize("where", ["loopback", "exposed"])
def test_every_dashboard_needs_the_token(node_factory, secret, where):
    extra = ("--dashboard", "127.0.0.1:0") if where == "exposed" else ()
    node = node_factory(name=where, extra=extra)
    url = dashboard(node)
    token = dashboard_token(secret.encode())

    status, headers, body = http(url + "api/nodes", login=False)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer")
    assert b"mesh dashboard" in body and b"mesh token" in body
    assert http(url + "api/nodes", headers={"Authorization": "Bearer " + "0" * 32})[0] == 401
    assert http(url + "api/jobs", headers={"Authorization": "Bearer wrong"})[0] == 401
    data = api(url + "api/nodes", headers={"Authorization": f"Bearer {token}"})
    assert data["node"] == where

    status, _, page = http(url, login=False)  # a browser gets the login form, saying how
    assert status == 401 and b"mesh token" in page and b'action="/login"' in page
    status, _, page = http(url + "login", method="POST", data=b"token=nope", login=False)
    assert status == 401 and b"not this mesh" in page
    status, headers, _ = http(url + "login", method="POST", data=f"token={token}".encode(),
                              login=False)  # fmt: skip
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    name = cookie.split("=", 1)[0]
    assert name == f"lanmesh_session_{url.rsplit(':', 1)[1].strip('/')}"  # per port
    assert token not in headers["Set-Cookie"]  # a session, never the token itself
    assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
    assert http(url, headers={"Cookie": cookie})[0] == 200
    assert http(url + "api/jobs", headers={"Cookie": cookie})[0] == 200
    assert http(url + "api/jobs", headers={"Cookie": f"{name}=forged"})[0] == 401
    assert http(url + "api/jobs", headers={"Cookie": f"{name}={token}"})[0] == 401


def test_an_explicit_dashboard_address_that_is_taken_stops_the_node(secret, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "mesh.node", "--host", "127.0.0.1", "--port", "0", "--workers", "1",
             "--no-advertise", "--data-dir", str(tmp_path / "d"), "--dashboard", f"127.0.0.1:{port}"],
            env=dict(os.environ, MESH_SECRET=secret), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert proc.returncode != 0
    assert "dashboard cannot listen on 127.0.0.1:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_preview_reads_pickles_without_running_them(tmp_path):
    assert preview_pickle(pickle.dumps((100_000,))) == "(100000,)"
    value = ("x" * 200, [1, 2.5, None, True], {"k": b"v"}, {3}, frozenset(), bytearray(b"ab"))
    shown = preview_pickle(pickle.dumps(value, protocol=5))
    assert shown.startswith("('xxxx") and "[1, 2.5, None, True]" in shown and "{'k': b'v'}" in shown
    assert len(shown) < 400  # long values are cut
    assert preview_pickle(pickle.dumps((Path("/etc"),))).startswith("(pathlib.")

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'ran'}",))

    shown = preview_pickle(pickle.dumps((Evil(),)))
    assert "system(...)" in shown
    assert not (tmp_path / "ran").exists()  # shown, never run
    assert preview_pickle(b"\x80\x05garbage") == "<9 bytes>"
    assert preview_pickle(b"x" * 100_000) == "<100,000 bytes, not previewed>"


# ---- the pages, in a real browser ----


def launched_chromium() -> Iterator[Any]:
    """The system chromium through Playwright, closed afterwards; a skip saying why
    when Playwright or chromium is missing or cannot start (the browser fixtures)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium; `make test` does as root)")
    with sync_playwright() as p:
        try:
            b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        except Exception as exc:  # a chromium that cannot start here: skip, saying why
            pytest.skip(f"chromium does not start: {str(exc).splitlines()[0]}")
        try:
            yield b
        finally:
            b.close()


@pytest.fixture
def browser() -> Iterator[Any]:
    yield from launched_chromium()


def login_link(url: str, capsys: Any) -> str:
    """The one-time login link `mesh dashboard --no-browser` prints (MESH_SECRET set)."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        mesh_cli(["dashboard", "--no-browser", "--json", "--dashboard", url])
    out = capsys.readouterr().out
    assert exit_.value.code == 0, out
    data = json.loads(out)
    assert data["opened"] is False and data["url"].startswith(url + "login?code=")
    return str(data["url"])


def row_status(page: Any, jid: str) -> str | None:
    row = page.query_selector(f'#jobs tr[data-jid="{jid}"]')
    return row.get_attribute("data-status") if row else None


def test_dashboard_pages_in_a_browser(mesh2, secret, browser, tmp_path, capsys, monkeypatch):
    n1, n2 = mesh2
    urls = {"n1": dashboard(n1), "n2": dashboard(n2)}
    shots = tmp_path / "screenshots"
    shots.mkdir()
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    pages = {}
    for name in urls:
        page = context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.set_default_timeout(20_000)
        pages[name] = page

    # without a login, the login form; `mesh dashboard`'s link logs the browser in
    page = pages["n1"]
    page.goto(urls["n1"])
    page.wait_for_selector('form[action="/login"]')
    monkeypatch.setenv("MESH_SECRET", secret)
    for name, url in urls.items():  # each node its own session (cookies are per port)
        pages[name].goto(login_link(url, capsys))
        assert pages[name].url == url

    # the mesh page lists both nodes
    page = pages["n1"]
    page.goto(urls["n1"])
    page.wait_for_function("document.querySelectorAll('#nodes tbody tr').length === 2")
    names = page.eval_on_selector_all("#nodes tbody tr", "rows => rows.map(r => r.dataset.node)")
    assert sorted(names) == ["n1", "n2"]
    assert n2.address in page.inner_text("#nodes")
    page.wait_for_selector("#live.on")  # the event stream is connected
    page.screenshot(path=str(shots / "mesh.png"), full_page=True)

    # jobs pages opened first (one row a job: maps not grouped); a map's jobs then
    # appear on them and turn done, live
    for name, page in pages.items():
        page.goto(urls[name] + "jobs?group=0")
        page.wait_for_selector("#live.on")
    with mesh.Client([n1.address, n2.address], secret, name="browser") as c:
        jids = c.map(nap, [0.8] * 6, _label="live")
        for page in pages.values():
            page.wait_for_selector("#jobs tr[data-jid]")  # appeared without a reload
        assert c.result(jids) == [0.8] * 6
        for name, page in pages.items():  # each page shows the whole mesh's jobs
            wait_until(lambda page=page: all(row_status(page, j) == "done" for j in jids),
                       what=f"{name}'s page to show every job done")  # fmt: skip
            shown = page.eval_on_selector_all(
                "#jobs tr[data-jid]", "rows => rows.map(r => r.dataset.jid)"
            )
            assert sorted(shown) == sorted(jids)
        pages["n1"].screenshot(path=str(shots / "jobs.png"), full_page=True)

        # the kill button kills a running job, from the page of the node not running it
        gate = tmp_path / "gate"
        victim = c.call(gated, str(gate), "never", _label="victim")
        wait_until(lambda: c.status(victim) == "processing" and c.info(victim).node,
                   what="the victim to run")  # fmt: skip
        page = pages["n2" if c.info(victim).node == "n1" else "n1"]
        page.wait_for_selector(f'button.kill[data-jid="{victim}"]')
        page.click(f'button.kill[data-jid="{victim}"]')
        with pytest.raises(mesh.JobKilled):
            c.result(victim, timeout=20)
        wait_until(lambda: row_status(page, victim) == "killed", what="the row to say killed")
        assert page.query_selector(f'button.kill[data-jid="{victim}"]') is None

        # a job page shows the captured stdout and the traceback
        failed = c.call(shout, "hello from the job")
        with pytest.raises(ValueError):
            c.result(failed)
        node = "n2" if c.info(failed).node == "n1" else "n1"  # the other node's page shows it
    page = pages[node]
    page.goto(urls[node] + f"job/{failed}")
    page.wait_for_selector("#traceback")
    assert page.inner_text("#stdout").strip() == "hello from the job"
    assert "ValueError: boom: hello from the job" in page.inner_text("#traceback")
    assert page.inner_text("#job-status") == "error"
    page.screenshot(path=str(shots / "job.png"), full_page=True)

    # the files page: empty, then a file put meanwhile appears, live, with its holders
    page = pages["n1"]
    page.goto(urls["n1"] + "files")
    page.wait_for_selector("#live.on")
    assert "No files in the mesh file store yet" in page.inner_text("#files-empty")
    with mesh.Client([n1.address, n2.address], secret) as c:
        files_linked(c)
        info = c.files.putf(b"meow" * 5000, "photos/cat.jpg", replicas=2)
    assert sorted(info.nodes) == ["n1", "n2"]
    row = 'tr[data-name="photos/cat.jpg"]'
    page.wait_for_selector(f"#files {row}")  # appeared without a reload
    assert page.inner_text(f"#files {row} .size") == "19.5 KiB"
    assert page.inner_text(f"#files {row} .version") == info.hash[:12]
    wait_until(lambda: sorted(page.inner_text(f"#files {row} .holders").split(", "))
               == ["n1", "n2"], what="the page to show both holders")  # fmt: skip
    assert page.inner_text("#files-summary") == "1 file, 19.5 KiB"
    page.screenshot(path=str(shots / "files.png"), full_page=True)

    page.goto(urls["n1"])  # the mesh page says what each node holds
    for name in ("n1", "n2"):
        cell = f'#nodes tr[data-node="{name}"] .files-held'
        wait_until(lambda cell=cell: page.inner_text(cell) == "1 · 19.5 KiB",
                   what=f"{name}'s files held")  # fmt: skip
    context.close()
    assert not errors, errors
    assert {p.name for p in shots.iterdir()} == {"mesh.png", "jobs.png", "job.png", "files.png"}
    if os.environ.get("MESH_KEEP_SCREENSHOTS"):
        shutil.copytree(shots, os.environ["MESH_KEEP_SCREENSHOTS"], dirs_exist_ok=True)
