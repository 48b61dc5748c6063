"""Who may use a node's dashboard: login sessions, one-time login links, ``mesh``'s
challenge-response, and the guard every request passes (aiohttp middleware).

Every request needs a login, also on loopback (another local user could otherwise
read a job's arguments or kill it): a session cookie, got from a one-time link
(``mesh dashboard`` asks for one) or by typing the token ``mesh token`` derives from
the mesh secret; a script's ``Authorization: Bearer TOKEN``; or ``mesh``'s
challenge-response, in which the dashboard proves it knows the token first and the
token never crosses the wire. Kept apart from the pages so the rules read in one place.
"""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from html import escape
from typing import TYPE_CHECKING, Any, NamedTuple

from mesh._auth import dashboard_node_proof, dashboard_request_mac, dashboard_token

if TYPE_CHECKING:
    from aiohttp import web

__all__ = ["Login", "json_response"]

COOKIE = "lanmesh_session"  # + "_PORT": browsers share cookies between a host's ports
MESH_AUTH = "mesh-hmac"  # the Authorization scheme of `mesh`'s challenge-response
NONCE_BYTES = 32
CHALLENGE_TTL_S = 30.0  # a challenge answers one request within this time
LOGIN_LINK_TTL_S = 60.0  # a login link works once, within this time
SESSION_TTL_S = 30 * 86400.0
PENDING_MAX = 1024  # challenges, login links and sessions kept (oldest dropped first)
PUBLIC_PATHS = ("/login", "/static/style.css", "/api/challenge")

Handler = Callable[["web.Request"], Awaitable["web.StreamResponse"]]


class _Challenge(NamedTuple):
    """A nonce this dashboard gave ``mesh``: good for one request, until ``until_s``."""

    client_nonce: bytes
    until_s: float  # monotonic


class Login:
    """The credentials one dashboard accepts and the routes that hand them out.

    ``port`` names the session cookie (per port: two nodes on one machine keep their
    own sessions); ``explicit``: the dashboard listens where ``--dashboard`` said, so
    Host names other than IP addresses are expected.
    """

    def __init__(self, secret: bytes, node_name: Callable[[], str], *, explicit: bool) -> None:
        self._token_text = dashboard_token(secret)
        self._token = self._token_text.encode()
        self._node_name = node_name
        self.explicit = explicit
        self.port = 0
        # What each credential is good for, until when (monotonic seconds).
        self._challenges: OrderedDict[str, _Challenge] = OrderedDict()
        self._links: OrderedDict[str, float] = OrderedDict()
        self._sessions: OrderedDict[str, float] = OrderedDict()

    def routes(self, router: web.UrlDispatcher) -> None:
        router.add_get("/login", self._login_page)
        router.add_post("/login", self._login)
        router.add_get("/api/challenge", self._api_challenge)
        router.add_post("/api/login-link", self._api_login_link)

    async def guard(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        """Who may ask: a logged-in browser, a script with the token, or ``mesh``.

        On the default loopback dashboard, a Host that is neither an IP address nor
        localhost means a page of some web site reached us through DNS rebinding:
        refused before anything else. POSTs must carry ``X-Mesh: 1``, which no
        cross-site form can send without our consent.
        """
        from aiohttp import web

        if not self.explicit and not _local_host(request.host):
            return web.Response(status=403, text="forbidden: open the dashboard by IP address\n")
        if request.path not in PUBLIC_PATHS and not self.authorized(request):
            return self._unauthorized(request)
        post = request.method == "POST" and request.path.startswith("/api/")
        if post and request.headers.get("X-Mesh") != "1":
            return json_response({"error": "POST requests need the header X-Mesh: 1"}, 403)
        try:
            return await handler(request)
        except web.HTTPException:
            raise
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)

    @property
    def cookie(self) -> str:
        """The session cookie's name: per port, as browsers send a host's cookies to all
        of its ports (two nodes on one machine keep their own sessions)."""
        return f"{COOKIE}_{self.port}"

    def authorized(self, request: web.Request) -> bool:
        auth = request.headers.get("Authorization", "")
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer":
            return hmac.compare_digest(value.strip().encode(), self._token)
        if scheme.lower() == MESH_AUTH:
            return self._mesh_request(request, value)
        session = request.cookies.get(self.cookie, "")
        return bool(session) and _take(self._sessions, session, keep=True)

    def _mesh_request(self, request: web.Request, value: str) -> bool:
        """``mesh``'s request: a MAC over a challenge this dashboard issued (used once)."""
        fields = dict(part.strip().partition("=")[::2] for part in value.split(",") if "=" in part)
        nonce, mac = fields.get("nonce", ""), fields.get("mac", "")
        pending = self._challenges.pop(nonce, None)
        if pending is None or pending.until_s < time.monotonic():
            return False
        expected = dashboard_request_mac(self._token_text, pending.client_nonce,
                                         bytes.fromhex(nonce), request.method,
                                         request.raw_path)  # fmt: skip
        return hmac.compare_digest(expected.encode(), mac.encode())

    async def _api_challenge(self, request: web.Request) -> web.StreamResponse:
        """``GET /api/challenge?nonce=HEX``: prove this dashboard knows the token, and
        give a nonce of ours that one request MAC'd with it may use."""
        try:
            client_nonce = bytes.fromhex(request.query.get("nonce", ""))
        except ValueError:
            client_nonce = b""
        if len(client_nonce) != NONCE_BYTES:
            raise ValueError(f"nonce must be {NONCE_BYTES} random bytes as hex")
        nonce = secrets.token_bytes(NONCE_BYTES)
        _keep(self._challenges, nonce.hex(),
              _Challenge(client_nonce, time.monotonic() + CHALLENGE_TTL_S))  # fmt: skip
        return json_response({"nonce": nonce.hex(),
                              "proof": dashboard_node_proof(self._token_text, client_nonce,
                                                            nonce)})  # fmt: skip

    async def _api_login_link(self, request: web.Request) -> web.StreamResponse:
        """``POST /api/login-link``: a one-time login path for a browser (``mesh dashboard``)."""
        code = secrets.token_urlsafe(NONCE_BYTES)
        _keep(self._links, code, time.monotonic() + LOGIN_LINK_TTL_S)
        return json_response({"path": f"login?code={code}", "expires_s": LOGIN_LINK_TTL_S})

    def _logged_in(self, response: web.StreamResponse) -> web.StreamResponse:
        """Give the browser a fresh session (the cookie is never the token itself)."""
        session = secrets.token_urlsafe(NONCE_BYTES)
        _keep(self._sessions, session, time.monotonic() + SESSION_TTL_S)
        response.set_cookie(self.cookie, session, httponly=True, samesite="Strict",
                            max_age=int(SESSION_TTL_S), path="/")  # fmt: skip
        return response

    def _unauthorized(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        challenge = {"WWW-Authenticate": 'Bearer realm="lanmesh dashboard"'}
        if request.path.startswith("/api/"):
            return web.json_response(
                {"error": "this dashboard needs a login: `mesh dashboard` opens it logged in; "
                          "scripts send `mesh token` as 'Authorization: Bearer TOKEN'"},
                status=401, headers=challenge,
            )  # fmt: skip
        return web.Response(
            status=401, text=_login_html(self._node_name(), ""), content_type="text/html",
            headers=challenge,
        )  # fmt: skip

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        """The login form; with ``?code=`` (a link from ``mesh dashboard``), a session."""
        from aiohttp import web

        code = request.query.get("code")
        if code is not None:
            if not _take(self._links, code, keep=False):
                return web.Response(
                    status=401, content_type="text/html",
                    text=_login_html(self._node_name(), "That login link was used already or "
                                     "has expired: run `mesh dashboard` again."),
                )  # fmt: skip
            return self._logged_in(web.Response(status=303, headers={"Location": "/"}))
        if self.authorized(request):
            raise web.HTTPSeeOther("/")
        return web.Response(text=_login_html(self._node_name(), ""), content_type="text/html")

    async def _login(self, request: web.Request) -> web.StreamResponse:
        from aiohttp import web

        form = await request.post()
        token = str(form.get("token", "")).strip()
        if not hmac.compare_digest(token.encode(), self._token):
            return web.Response(
                status=401, content_type="text/html",
                text=_login_html(self._node_name(), "That is not this mesh's token."),
            )  # fmt: skip
        return self._logged_in(web.Response(status=303, headers={"Location": "/"}))


def json_response(data: Any, status: int = 200) -> web.Response:
    """A JSON answer, compact; values JSON lacks (paths, enums) as their text."""
    import json

    from aiohttp import web

    def dumps(obj: Any) -> str:
        return json.dumps(obj, separators=(",", ":"), default=str)

    return web.json_response(data, status=status, dumps=dumps)


def _keep(pending: OrderedDict[str, Any], key: str, value: Any) -> None:
    """Remember a credential; past ``PENDING_MAX`` the oldest is forgotten."""
    pending[key] = value
    while len(pending) > PENDING_MAX:
        pending.popitem(last=False)


def _take(pending: OrderedDict[str, float], key: str, *, keep: bool) -> bool:
    """Is ``key`` a live credential? Used up unless ``keep``; expired ones are dropped."""
    until = pending.get(key) if keep else pending.pop(key, None)
    if until is None:
        return False
    if until < time.monotonic():
        pending.pop(key, None)
        return False
    return True


def _local_host(host: str | None) -> bool:
    """Is this Host header an IP address or localhost (not a name some DNS maps here)?"""
    if not host:
        return False
    name = host
    if name.startswith("["):
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _login_html(node: str, problem: str) -> str:
    note = f'<p class="problem">{escape(problem)}</p>' if problem else ""
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>lanmesh {escape(node)}: log in</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="/static/style.css"></head>
<body><main class="login">
<h1>lanmesh dashboard of {escape(node)}</h1>
<p>This dashboard needs a login. On the node's machine, as the user running it,</p>
<pre>mesh dashboard</pre>
<p>opens it logged in. Or paste the login token, which any machine holding the mesh
secret prints with:</p>
<pre>mesh token</pre>
{note}
<form method="post" action="/login">
<label>Token <input name="token" type="password" autocomplete="current-password" autofocus></label>
<button type="submit">Log in</button>
</form></main></body></html>
"""
