"""Request body size limits, enforced before a handler reads the body (HTTP 413).

A declared ``Content-Length`` over the limit is refused at once; a body without one (chunked) is
counted as it streams and cut off at the limit. Manifests (``POST /v1/batches``) may be as large
as a manifest file; every other request carries at most a render request.
"""

from __future__ import annotations

import json

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from farm.manifest.model import MAX_MANIFEST_BYTES

#: Largest body of any request but a manifest (a render request is a few hundred bytes).
MAX_REQUEST_BYTES = 1024 * 1024
#: Paths whose body is a manifest.
MANIFEST_PATHS: frozenset[str] = frozenset({"/v1/batches"})


def limit_for(path: str) -> int:
    """The body size limit of ``path``: the manifest limit for a batch upload, else the request limit."""
    return MAX_MANIFEST_BYTES if path in MANIFEST_PATHS else MAX_REQUEST_BYTES


class BodyTooLarge(HTTPException):
    """Raised from ``receive`` when a streamed body passes the limit.

    An HTTPException, so FastAPI's body parsing passes it through to the app's error handler: 413.
    """

    def __init__(self, limit: int):
        super().__init__(status_code=413, detail=f"the request body is over {limit} bytes")


def _too_large_body(limit: int) -> bytes:
    problem = {"field": "body", "rule": "max_size", "message": f"the request body is over {limit} bytes"}
    return json.dumps({"error": "BodyTooLarge", "problems": [problem]}).encode("utf-8")


class BodyLimitMiddleware:
    """ASGI middleware: 413 for an HTTP request whose body is over :func:`limit_for` its path."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass an HTTP request on with its body counted against its path's limit (413 past it)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > limit):
            await self._refuse(send, limit)
            return
        received = 0
        started = False

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._refuse(send, limit)

    @staticmethod
    async def _refuse(send: Send, limit: int) -> None:
        body = _too_large_body(limit)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii")),
                   (b"connection", b"close")]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})
