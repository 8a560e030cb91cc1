"""Authentication of farm's HTTP API: one bearer token on every route but ``/healthz`` and ``/readyz``.

* The token is ``FARM_API_TOKEN`` (:attr:`farm.settings.Settings.api_token`, a secret: never
  logged, never echoed). It must be at least :data:`MIN_TOKEN_CHARS` characters.
* :class:`BearerAuthMiddleware` is a plain ASGI middleware wrapped around the whole app, so it
  guards *every* path — the ``/v1`` routes, ``/metrics``, ``/openapi.json``, ``/docs`` and even
  paths that do not exist (an unauthenticated caller cannot probe which routes exist). Only
  :data:`PUBLIC_PATHS` pass without a token.
* The comparison is constant-time (:func:`hmac.compare_digest` over the UTF-8 bytes).
* Start-up policy (:func:`startup_token`): without a token the API refuses to start, unless it is
  bound to a loopback address (:data:`LOOPBACK_HOSTS`) **and** started with ``--insecure-local``
  (a developer's machine); then every route is open, and a warning is logged.
* The review room's session cookie (:mod:`farm.api.review.session`, when the app has one) also
  opens ``GET``/``HEAD`` requests anywhere (its pages show ``/v1`` posters and videos and
  ``/docs``) and any ``/ui`` request (where every state-changing one must also carry the
  session's CSRF token). It never opens a ``/v1`` write: those need the bearer token, so a
  cross-site form cannot submit, cancel or promote with a logged-in browser's cookie.
  ``/ui/login`` is public; any other ``/ui`` request, and ``/docs`` or ``/redoc``, without a session
  (or a token) is redirected to it (303), so a browser lands on the login form, not on a 401.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING
from urllib.parse import quote

from starlette.types import ASGIApp, Receive, Scope, Send

from farm.errors import ExpectedError
from farm.settings import Settings

if TYPE_CHECKING:
    from farm.api.review.session import Sessions

log = logging.getLogger(__name__)

#: Paths served without a token (liveness only: no details).
PUBLIC_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})
#: Shortest token accepted (a guessable token is as good as none).
MIN_TOKEN_CHARS = 16
#: Addresses ``--insecure-local`` may bind to.
LOOPBACK_HOSTS: frozenset[str] = frozenset({"127.0.0.1", "::1"})
#: The one insecure-mode flag, named in messages.
INSECURE_FLAG = "--insecure-local"
#: The review room: its path prefix and its login page (public: it takes the token).
UI_PREFIX = "/ui"
LOGIN_PATH = "/ui/login"
#: Pages a person opens in a browser outside /ui: without a session they redirect to the login page too.
DOCS_PATHS: frozenset[str] = frozenset({"/docs", "/redoc"})
#: Methods a session cookie opens on any path (reads only).
SAFE_METHODS: frozenset[str] = frozenset({"GET", "HEAD"})


class ApiConfigError(ExpectedError):
    """The API must not start with this configuration (e.g. no token on a public address)."""


def startup_token(settings: Settings, *, host: str, insecure_local: bool) -> str | None:
    """The token the API will require, or None for an open API on loopback.

    Raises :class:`ApiConfigError` when there is no usable token and the open mode is not allowed.
    The message names the variable and the rule, never the value.
    """
    secret = settings.api_token.get_secret_value() if settings.api_token is not None else ""
    if secret:
        if len(secret) < MIN_TOKEN_CHARS:
            raise ApiConfigError(
                f"FARM_API_TOKEN is too short: it must be at least {MIN_TOKEN_CHARS} characters "
                "(e.g. `python -c 'import secrets; print(secrets.token_urlsafe(32))'`)"
            )
        return secret
    if not insecure_local:
        raise ApiConfigError(
            "FARM_API_TOKEN is not set: the API refuses to start without a bearer token "
            f"(for a developer machine only: bind to 127.0.0.1 and pass {INSECURE_FLAG})"
        )
    if host not in LOOPBACK_HOSTS:
        raise ApiConfigError(
            f"{INSECURE_FLAG} is only allowed on a loopback address ({', '.join(sorted(LOOPBACK_HOSTS))}), "
            f"not {host!r}: set FARM_API_TOKEN"
        )
    log.warning("farm API running WITHOUT authentication on %s (%s)", host, INSECURE_FLAG)
    return None


def token_matches(presented: str, expected: str) -> bool:
    """Constant-time comparison of two tokens (time does not depend on where they differ)."""
    return hmac.compare_digest(presented.encode("utf-8"), expected.encode("utf-8"))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value (scheme case-insensitive)."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = token.strip()
    return token or None


def _unauthorized_body(message: str) -> bytes:
    body = {
        "error": "Unauthorized",
        "problems": [{"field": "Authorization", "rule": "bearer_token", "message": message}],
    }
    return json.dumps(body).encode("utf-8")


def is_ui_path(path: str) -> bool:
    """True for the review room's paths (``/ui`` and below)."""
    return path == UI_PREFIX or path.startswith(UI_PREFIX + "/")


def _login_redirect(scope: Scope) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """A 303's headers to the login page, which sends the browser back here afterwards."""
    target = scope.get("path", UI_PREFIX)
    query = scope.get("query_string", b"").decode("latin-1")
    if query:
        target += "?" + query
    location = f"{LOGIN_PATH}?next={quote(target, safe='')}"
    body = b"login required"
    return [(b"location", location.encode("latin-1")), (b"content-type", b"text/plain; charset=utf-8"),
            (b"content-length", str(len(body)).encode("ascii")), (b"cache-control", b"no-store")], body


class BearerAuthMiddleware:
    """ASGI middleware: 401 for any HTTP request without the right bearer token.

    Except :data:`PUBLIC_PATHS`; websockets without it are closed. ``token=None`` lets
    everything pass (the ``--insecure-local`` mode). With ``sessions`` (the review room's), a
    valid session cookie opens reads anywhere and the ``/ui`` paths (see the module docstring),
    and an unauthenticated ``/ui`` request is redirected to the login page instead of a 401.
    """

    def __init__(self, app: ASGIApp, *, token: str | None, sessions: Sessions | None = None):
        self.app = app
        self._token = token
        self._sessions = sessions

    def _authorized(self, scope: Scope) -> bool:
        if self._token is None or scope.get("path") in PUBLIC_PATHS:
            return True
        header: str | None = None
        for name, value in scope.get("headers", ()):
            if name == b"authorization":
                header = value.decode("latin-1")
                break
        presented = bearer_token(header)
        # Compare even when nothing was presented, so the timing does not tell the two apart.
        return token_matches(presented or "", self._token) and presented is not None

    def _session_allows(self, scope: Scope) -> bool:
        """True when the review room's session (or its public login page) opens this HTTP request."""
        if self._sessions is None or scope["type"] != "http":
            return False
        path = scope.get("path", "")
        if path == LOGIN_PATH:
            return True
        if self._sessions.from_scope(scope) is None:
            return False
        return scope.get("method") in SAFE_METHODS or is_ui_path(path)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorized request on to the app; answer any other with a 401 (a websocket: close it)."""
        if scope["type"] not in ("http", "websocket") or self._authorized(scope) or self._session_allows(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        path = scope.get("path", "")
        if self._sessions is not None and (is_ui_path(path) or path in DOCS_PATHS):
            headers, body = _login_redirect(scope)
            await send({"type": "http.response.start", "status": 303, "headers": headers})
            await send({"type": "http.response.body", "body": body})
            return
        body = _unauthorized_body("a valid bearer token is required (Authorization: Bearer <FARM_API_TOKEN>)")
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"www-authenticate", b'Bearer realm="farm"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
