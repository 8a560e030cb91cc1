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
"""

from __future__ import annotations

import hmac
import json
import logging

from starlette.types import ASGIApp, Receive, Scope, Send

from farm.errors import ExpectedError
from farm.settings import Settings

log = logging.getLogger(__name__)

#: Paths served without a token (liveness only: no details).
PUBLIC_PATHS: frozenset[str] = frozenset({"/healthz", "/readyz"})
#: Shortest token accepted (a guessable token is as good as none).
MIN_TOKEN_CHARS = 16
#: Addresses ``--insecure-local`` may bind to.
LOOPBACK_HOSTS: frozenset[str] = frozenset({"127.0.0.1", "::1"})
#: The one insecure-mode flag, named in messages.
INSECURE_FLAG = "--insecure-local"


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


class BearerAuthMiddleware:
    """ASGI middleware: 401 for any HTTP request without the right bearer token.

    Except :data:`PUBLIC_PATHS`; websockets without it are closed. ``token=None`` lets
    everything pass (the ``--insecure-local`` mode).
    """

    def __init__(self, app: ASGIApp, *, token: str | None):
        self.app = app
        self._token = token

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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an authorized request on to the app; answer any other with a 401 (a websocket: close it)."""
        if scope["type"] not in ("http", "websocket") or self._authorized(scope):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        body = _unauthorized_body("a valid bearer token is required (Authorization: Bearer <FARM_API_TOKEN>)")
        headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
            (b"www-authenticate", b'Bearer realm="farm"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})

