"""The review room's HTML plumbing: the Jinja2 environment, page responses, their headers, the CSRF gate.

* Templates (``templates/``) are rendered with **autoescape on** for every template: prompts,
  labels and tags are untrusted text and always come out escaped.
* Every page gets ``Cache-Control: no-store``, ``X-Content-Type-Options: nosniff``,
  ``Referrer-Policy: same-origin`` and a Content-Security-Policy: scripts and styles only from
  this server (the login page's inline style carries a per-response nonce), no framing, forms
  only to this server.
* :func:`session_of` reads the request's session; in the insecure-local mode (no token) a
  request without one gets a fresh one, so the CSRF token still guards every change.
* :func:`require_csrf` is the gate of every state-changing ``/ui`` request: 403 without the
  session's token (form field or header), before anything is read or written.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import HTTPException, Request
from fastapi.responses import HTMLResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from starlette.datastructures import FormData

from farm.api.review.session import COOKIE_NAME, CSRF_FIELD, CSRF_HEADER, Session, Sessions, csrf_matches

TEMPLATES_DIR = Path(__file__).with_name("templates")
STATIC_DIR = Path(__file__).with_name("static")
#: Where the review room starts.
HOME = "/ui/batches"

_ENV = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True)


def _csp(nonce: str) -> str:
    return ("default-src 'self'; script-src 'self'; style-src 'self' 'nonce-" + nonce + "'; "
            "img-src 'self' data: https:; media-src 'self' https:; connect-src 'self'; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


def page_headers(nonce: str) -> dict[str, str]:
    """The security headers of every review-room page (see the module docstring)."""
    return {
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
        "X-Frame-Options": "DENY",
        "Referrer-Policy": "same-origin",
        "Content-Security-Policy": _csp(nonce),
    }


def sessions_of(request: Request) -> Sessions:
    """The app's session keeper."""
    sessions: Sessions = request.app.state.sessions
    return sessions


def open_mode(request: Request) -> bool:
    """True in the insecure-local mode (no token: the UI is open, like the rest of the API)."""
    return bool(request.app.state.open_mode)


def session_of(request: Request) -> Session | None:
    """The request's session (a fresh one in the open mode when it has none; else None)."""
    cached = getattr(request.state, "review_session", None)
    if isinstance(cached, Session):
        return cached
    session = sessions_of(request).read(request.cookies.get(COOKIE_NAME))
    if session is None and open_mode(request):
        session = sessions_of(request).issue()
    if session is not None:
        request.state.review_session = session
    return session


def set_session_cookie(request: Request, response: Response, session: Session) -> None:
    """Set ``session``'s cookie on ``response`` (HttpOnly, SameSite=Strict, Secure over https)."""
    sessions = sessions_of(request)
    response.set_cookie(COOKIE_NAME, sessions.cookie_value(session), max_age=sessions.ttl_s, path="/",
                        httponly=True, samesite="strict", secure=sessions.secure_for(request.url.scheme))


def clear_session_cookie(request: Request, response: Response) -> None:
    """Remove the session cookie from the browser."""
    response.delete_cookie(COOKIE_NAME, path="/", httponly=True, samesite="strict",
                           secure=sessions_of(request).secure_for(request.url.scheme))


def render(request: Request, template: str, status_code: int = 200, **context: Any) -> HTMLResponse:
    """A page from ``template`` (autoescaped), with the security headers and the session's CSRF token."""
    nonce = secrets.token_urlsafe(16)
    session = session_of(request)
    context.setdefault("title", "")
    html = _ENV.get_template(template).render(
        csrf_token=session.csrf if session else "", csp_nonce=nonce, open_mode=open_mode(request),
        here=local_url(request), **context)
    response = HTMLResponse(html, status_code=status_code, headers=page_headers(nonce))
    if session is not None and session.fresh:
        set_session_cookie(request, response, session)
    return response


def error_page(request: Request, status_code: int, title: str, problems: list[tuple[str, str, str]]) -> HTMLResponse:
    """An error page listing ``(field, rule, message)`` problems."""
    return render(request, "error.html", status_code=status_code, title=title, problems=problems)


def local_url(request: Request) -> str:
    """The request's own path and query (a ``next`` target)."""
    query = request.url.query
    return request.url.path + ("?" + query if query else "")


def safe_next(value: object, default: str = HOME) -> str:
    """``value`` when it is a path on this server (never another site: no open redirect), else ``default``."""
    if not isinstance(value, str) or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(ord(c) < 0x20 for c in value):
        return default
    return value


async def require_csrf(request: Request) -> FormData:
    """The request's form, once its CSRF token matched the session's; else HTTP 403 (nothing done)."""
    session = sessions_of(request).read(request.cookies.get(COOKIE_NAME))
    form = await request.form()
    presented = request.headers.get(CSRF_HEADER)
    if presented is None:
        field = form.get(CSRF_FIELD)
        presented = field if isinstance(field, str) else None
    if not csrf_matches(session, presented):
        raise HTTPException(status_code=403, detail="this form has expired or did not come from the review room: "
                            "reload the page and try again")
    return form
