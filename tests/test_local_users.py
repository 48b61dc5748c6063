"""Other local users are outsiders: each attack of issue 18's shared workstation,
performed by a real second user (``nobody``, through ``setpriv``) against real nodes.

- reading the data dir's files (job results, stored files): the dir is 0700, its files
  0600, and a dir others can enter is refused;
- the loopback dashboard without a login (a job's arguments, a kill): 401;
- squatting the dashboard's port while the node is down: ``mesh jobs`` and ``mesh
  dashboard`` send it nothing secret, because the server must prove the token first.

These need root (to become ``nobody``); they skip, saying why, where that cannot be.
"""

from __future__ import annotations

import http.cookiejar
import json
import os
import pwd
import secrets
import shutil
import stat
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from _helpers import run_cli, started_then_gated, wait_until
from conftest import NodeProc, start_node, stop_nodes

import mesh
from mesh._auth import dashboard_node_proof, dashboard_request_mac, dashboard_token

PYTHON = "/usr/bin/python3"  # one the other user can run (the venv's may live under /root)


def confidential(name: str) -> str:
    return f"payroll: {name} earns 123456"


@pytest.fixture
def nobody() -> list[str]:
    """The command prefix that runs a program as the second local user ``nobody``."""
    if os.geteuid() != 0:
        pytest.skip("acting as a second local user needs root (setpriv to nobody)")
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("there is no user 'nobody' on this machine")
    if shutil.which("setpriv"):
        prefix = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
    elif shutil.which("runuser"):
        prefix = ["runuser", "-u", "nobody", "--"]
    else:
        pytest.skip("neither setpriv nor runuser is installed")
    probe = subprocess.run([*prefix, PYTHON, "-I", "-c", "import os; print(os.geteuid())"],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    if probe.returncode != 0 or probe.stdout.strip() != str(pwd.getpwnam("nobody").pw_uid):
        pytest.skip(f"cannot run {PYTHON} as nobody: {probe.stderr.strip()[:200]}")
    return prefix


def as_nobody(prefix: list[str], script: str, *args: str) -> Any:
    """Run a stdlib Python ``script`` as nobody; it prints one JSON value: returned."""
    proc = subprocess.run([*prefix, PYTHON, "-I", "-c", script, *args],
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.fixture
def shared_tmp() -> Iterator[Path]:
    """A folder every local user may enter (pytest's own tmp_path is root's alone)."""
    path = Path(tempfile.mkdtemp(prefix="lanmesh-localusers-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def own_nodes(secret: str) -> Iterator[Callable[..., NodeProc]]:
    """Start nodes on a data dir of the test's choosing; all are stopped afterwards,
    and a worker that outlives its node fails the test (as conftest's node_factory)."""
    started: list[NodeProc] = []

    def make(data_dir: Path, name: str = "n1", workers: int = 1) -> NodeProc:
        node = start_node(secret, data_dir, name=name, workers=workers)
        started.append(node)
        node.wait_workers(workers)
        return node

    yield make
    stop_nodes(started)


# ---- the data dir ----

READ_ALL = """
import json, os, sys
out = {}
for path in sys.argv[1:]:
    try:
        if os.path.isdir(path):
            out[path] = "listed " + ",".join(sorted(os.listdir(path)))
        else:
            with open(path, "rb") as f:
                out[path] = "read " + f.read().decode("latin-1")
    except OSError as exc:
        out[path] = type(exc).__name__
print(json.dumps(out))
"""


def test_another_user_cannot_read_the_data_dir(nobody, shared_tmp, own_nodes, secret):
    data = shared_tmp / "data"
    node = own_nodes(data)
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(confidential, "alice")) == confidential("alice")
        c.files.putf(b"customer list: ACME, 555-0100", "customers.txt", replicas=1)
    node.stop()  # the store is on disk, the WAL folded in: what a reader would find

    paths = [data, *sorted(data.rglob("*"))]
    blobs = [p for p in paths if p.is_file() and p.parent.parent.name == "blobs"]
    assert blobs and (data / "jobs.sqlite3").exists() and (data / "workers.log").exists()
    assert b"customer list" in blobs[0].read_bytes()
    assert confidential("alice").encode() in (data / "jobs.sqlite3").read_bytes()

    control = shared_tmp / "control.txt"  # what the other user can read, it does read
    control.write_text("readable")
    control.chmod(0o644)
    seen = as_nobody(nobody, READ_ALL, str(control), *map(str, paths))
    assert seen.pop(str(control)) == "read readable"
    assert seen == {str(p): "PermissionError" for p in paths}

    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    for p in paths:  # private all the way down, not only behind the dir's mode
        mode = stat.S_IMODE(p.lstat().st_mode)
        assert mode & 0o077 == 0, f"{p} has mode {mode:04o}"


def test_a_data_dir_other_users_can_enter_is_refused(nobody, tmp_path, secret):
    def start(data: Path) -> subprocess.CompletedProcess[str]:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mesh.node", "--host", "127.0.0.1", "--port", "0",
             "--workers", "1", "--no-advertise", "--no-dashboard", "--data-dir", str(data)],
            env=dict(os.environ, MESH_SECRET=secret), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:  # it started: stop it as a user would, then fail
            proc.terminate()
            out, err = proc.communicate(timeout=30)
            raise AssertionError(f"mesh-node started on {data}: {out}") from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    old = tmp_path / "old"  # as an older lanmesh left it: 0755, a results file 0644
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    (old / "jobs.sqlite3").touch(mode=0o644)
    proc = start(old)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"data dir {old} is open to other users (mode 0755)" in proc.stderr
    assert f"run: chmod -R go-rwx {old}" in proc.stderr
    assert stat.S_IMODE(old.stat().st_mode) == 0o755  # refused, not changed behind our back

    theirs = tmp_path / "theirs"  # another user's dir, even a private one
    theirs.mkdir(mode=0o700)
    os.chown(theirs, pwd.getpwnam("nobody").pw_uid, -1)
    proc = start(theirs)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"data dir {theirs} belongs to uid {pwd.getpwnam('nobody').pw_uid}" in proc.stderr


def test_the_chmod_the_message_gives_lets_the_node_start(own_nodes, tmp_path, secret):
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    (old / "workers.log").touch(mode=0o644)
    subprocess.run(["chmod", "-R", "go-rwx", str(old)], check=True)
    node = own_nodes(old)
    with mesh.Client([node.address], secret) as c:
        assert c.result(c.call(confidential, "bob")) == confidential("bob")


# ---- the loopback dashboard ----

PROBE_DASHBOARD = """
import json, sys, urllib.error, urllib.request
base, jid = sys.argv[1], sys.argv[2]
class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None
def ask(path, method="GET", data=None, headers=None):
    req = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    try:
        with urllib.request.build_opener(NoRedirect).open(req, timeout=20) as r:
            return [r.status, r.read().decode("latin-1")]
    except urllib.error.HTTPError as e:
        return [e.code, e.read().decode("latin-1")]
print(json.dumps({
    "jobs": ask("api/jobs"),
    "job": ask("api/jobs/" + jid),
    "page": ask("job/" + jid),
    "kill": ask("api/jobs/" + jid + "/kill", "POST", b"", {"X-Mesh": "1"}),
    "guessed token": ask("api/jobs/" + jid, headers={"Authorization": "Bearer " + "0" * 32}),
    "guessed login": ask("login", "POST", b"token=hunter2"),
    "guessed link": ask("login?code=guess"),
    "login link": ask("api/login-link", "POST", b"", {"X-Mesh": "1"}),
    "challenge": ask("api/challenge?nonce=" + "ab" * 32),
    "challenge reused": ask("api/jobs/" + jid, headers={
        "Authorization": "Mesh-HMAC nonce=" + "ab" * 32 + ", mac=" + "00" * 32}),
}))
"""


def test_another_user_cannot_use_the_loopback_dashboard(
    nobody, own_nodes, secret, tmp_path
):  # fmt: skip
    node = own_nodes(tmp_path / "data")
    url = (node.data_dir / "dashboard").read_text().strip()
    assert url.startswith("http://127.0.0.1:")
    started, gate = tmp_path / "started", tmp_path / "gate"
    with mesh.Client([node.address], secret) as c:
        jid = c.call(started_then_gated, str(started), str(gate), confidential("carol"))
        wait_until(started.exists, what="the job to start")

        seen = as_nobody(nobody, PROBE_DASHBOARD, url, jid)
        challenge = seen.pop("challenge")
        for what, (status, body) in seen.items():
            assert "carol" not in body and jid not in body, what
            assert status == 401, (what, status, body)
        assert c.status(jid) == "processing"  # the kill was refused: still running
        assert challenge[0] == 200 and "carol" not in challenge[1]  # a proof, nothing to read

        # the owner, logged in, sees what the other user was after (the attack is real)
        token = dashboard_token(secret.encode())
        request = urllib.request.Request(url + f"api/jobs/{jid}",
                                         headers={"Authorization": f"Bearer {token}"})  # fmt: skip
        with urllib.request.urlopen(request, timeout=20) as resp:
            assert "carol" in json.load(resp)["args_preview"]
        gate.touch()
        assert c.result(jid) == confidential("carol")


def test_a_login_works_once_and_for_the_request_it_was_made_for(
    own_nodes, secret, tmp_path, monkeypatch, capsys
):  # fmt: skip
    node = own_nodes(tmp_path / "data")
    url = (node.data_dir / "dashboard").read_text().strip()
    token = dashboard_token(secret.encode())

    def get(path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
        class NoRedirect(urllib.request.HTTPRedirectHandler):
            def redirect_request(self, *args: Any, **kwargs: Any) -> None:
                return None

        req = urllib.request.Request(url + path, headers=headers)
        try:
            with urllib.request.build_opener(NoRedirect).open(req, timeout=20) as resp:
                return resp.status, dict(resp.headers)
        except urllib.error.HTTPError as exc:
            with exc:
                return exc.code, dict(exc.headers)

    # mesh's challenge-response: the dashboard proves the token, then one request passes
    mine = secrets.token_bytes(32)
    with urllib.request.urlopen(url + f"api/challenge?nonce={mine.hex()}", timeout=20) as resp:
        answer = json.load(resp)
    theirs = bytes.fromhex(answer["nonce"])
    assert answer["proof"] == dashboard_node_proof(token, mine, theirs)
    mac = dashboard_request_mac(token, mine, theirs, "GET", "/api/nodes")
    auth = {"Authorization": f"Mesh-HMAC nonce={theirs.hex()}, mac={mac}"}
    assert get("api/jobs", auth)[0] == 401  # made for /api/nodes: refused elsewhere (and spent)
    mine = secrets.token_bytes(32)
    with urllib.request.urlopen(url + f"api/challenge?nonce={mine.hex()}", timeout=20) as resp:
        theirs = bytes.fromhex(json.load(resp)["nonce"])
    mac = dashboard_request_mac(token, mine, theirs, "GET", "/api/nodes")
    auth = {"Authorization": f"Mesh-HMAC nonce={theirs.hex()}, mac={mac}"}
    assert get("api/nodes", auth)[0] == 200
    assert get("api/nodes", auth)[0] == 401  # a copy of it replayed

    # `mesh dashboard`'s link logs a browser in once; the cookie is a session, not the token
    monkeypatch.setenv("MESH_SECRET", secret)
    monkeypatch.setenv("MESH_DASHBOARD", url)
    code, out, err = run_cli(capsys, "dashboard", "--no-browser")
    assert code == 0, err
    link = out.strip().splitlines()[-1]
    assert link.startswith(url + "login?code=") and token not in link
    status, headers = get(link.removeprefix(url), {})
    assert status == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"].split(";")[0]
    assert token not in cookie
    assert get("api/jobs", {"Cookie": cookie})[0] == 200
    assert get(link.removeprefix(url), {})[0] == 401  # used once already


# ---- a squatter on the dashboard's port ----

SQUATTER = """
import json, socket, sys
# Answers every request as a dashboard would, with made-up proofs; prints what it got.
srv = socket.create_server(("127.0.0.1", 0))
print(srv.getsockname()[1], flush=True)
reply = json.dumps({"nonce": "ab" * 32, "proof": "cd" * 32, "node": "fake", "total": 0,
                    "jobs": [], "missing": [], "path": "login?code=x", "expires_s": 60}).encode()
while True:
    conn, _ = srv.accept()
    with conn:
        conn.settimeout(5)
        got = b""
        try:
            while b"\\r\\n\\r\\n" not in got:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                got += chunk
        except OSError:
            pass
        print(json.dumps(got.decode("latin-1")), flush=True)
        conn.sendall(b"HTTP/1.1 200 OK\\r\\nContent-Type: application/json\\r\\nContent-Length: "
                     + str(len(reply)).encode() + b"\\r\\nConnection: close\\r\\n\\r\\n" + reply)
"""


@pytest.fixture
def squatter(nobody) -> Iterator[tuple[int, Callable[[], list[str]]]]:
    """Another user's fake dashboard on a free port: (its port, a call that stops it and
    returns every request it received)."""
    proc = subprocess.Popen([*nobody, PYTHON, "-I", "-c", SQUATTER], stdout=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True)  # fmt: skip
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())

        def stop() -> list[str]:
            proc.terminate()
            rest, _ = proc.communicate(timeout=20)
            return [json.loads(line) for line in rest.splitlines()]

        yield port, stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def test_mesh_jobs_never_sends_the_token_to_a_squatter(
    squatter, secret, tmp_path, monkeypatch, capsys
):  # fmt: skip
    port, stop = squatter
    assert port > 1000
    # This user's node is down: `mesh jobs` looks where the node would be, port + 1000.
    monkeypatch.setenv("MESH_SECRET", secret)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "no-node-here"))
    monkeypatch.setenv("MESH_PORT", str(port - 1000))
    monkeypatch.delenv("MESH_DASHBOARD", raising=False)
    jobs = run_cli(capsys, "jobs")
    login = run_cli(capsys, "dashboard", "--no-browser")
    received = stop()

    token = dashboard_token(secret.encode())
    for request in received:
        assert token not in request and secret not in request
        assert "authorization" not in request.lower() and "cookie" not in request.lower()
    assert len(received) == 2  # it was asked, once by each command: the challenge only
    assert all(r.startswith("GET /api/challenge?nonce=") for r in received), received
    code, out, err = jobs
    assert code == 2 and out == ""
    assert f"the server at http://127.0.0.1:{port}/ could not prove it is a dashboard" in err
    code, out, err = login
    assert code == 2 and out == "" and "could not prove" in err


def test_mesh_dashboard_opens_the_browser_logged_in(
    own_nodes, tmp_path, monkeypatch, capsys, secret
):
    node = own_nodes(tmp_path / "data")
    url = (node.data_dir / "dashboard").read_text().strip()
    opened = tmp_path / "opened"
    browser = tmp_path / "browser"  # stands for the user's browser: notes what it was given
    browser.write_text(f'#!/bin/sh\nprintf %s "$1" > {opened}\n')
    browser.chmod(0o700)
    monkeypatch.setenv("BROWSER", str(browser))
    monkeypatch.setenv("MESH_SECRET", secret)
    monkeypatch.setenv("MESH_DASHBOARD", url)
    code, out, err = run_cli(capsys, "dashboard")
    assert code == 0, err
    link = opened.read_text()
    assert out.startswith(f"opened {url} in the browser") and link in out
    assert link.startswith(url + "login?code=")
    jar = http.cookiejar.CookieJar()  # as a browser keeps the cookie through the redirect
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
    with opener.open(link, timeout=20) as resp:
        assert resp.status == 200 and resp.url == url  # logged in: the page, not the form
    assert [c.name for c in jar] == [f"lanmesh_session_{url.rsplit(':', 1)[1].strip('/')}"]
