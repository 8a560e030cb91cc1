"""The review room's forms: log in and out, and the buttons that change something.

* ``POST /ui/login`` takes the API token from the form (compared in constant time), rate
  limited per client address (:class:`farm.api.review.session.LoginLimiter`); a wrong token gets
  the form again with one short error, and nothing about it is logged but the address.
* Every other ``POST`` (logout, star, label, sweep, promote, cancel) passes
  :func:`farm.api.review.web.require_csrf` first (403 without the session's CSRF token), then
  calls the app's :class:`farm.client.Client` — the same door as the CLI and ``/v1`` — and
  answers 303: back to the page (``next``, a local path only), or to the jobs it created
  (a sweep's batch, a promoted job).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from farm.api.auth import token_matches
from farm.api.review import views
from farm.api.review.pages import batch_id_of, client_of, job_id_of
from farm.api.review.session import LoginLimiter
from farm.api.review.web import (
    HOME,
    clear_session_cookie,
    open_mode,
    render,
    require_csrf,
    safe_next,
    session_of,
    sessions_of,
    set_session_cookie,
)
from farm.errors import IllegalTransition

log = logging.getLogger(__name__)

LOGIN = "/ui/login"
#: Longest token the login form reads (a token is far shorter; more is not a token).
MAX_TOKEN_CHARS = 4096


def _address(request: Request) -> str:
    return request.client.host if request.client is not None else "unknown"


def _back(form: Any, default: str) -> RedirectResponse:
    return RedirectResponse(safe_next(form.get("next"), default), status_code=303)


def _form_text(form: Any, name: str) -> str:
    value = form.get(name)
    return value if isinstance(value, str) else ""


def login_form(request: Request, next: str = HOME) -> Response:
    """The login form (open mode, or already logged in: straight on)."""
    target = safe_next(next)
    if open_mode(request) or session_of(request) is not None:
        return RedirectResponse(target, status_code=303)
    return render(request, "login.html", title="Log in", next=target, error="")


async def login(request: Request) -> Response:
    """Check the token; on success a new session cookie and back to ``next``."""
    form = await request.form()
    target = safe_next(form.get("next"))
    expected: str | None = request.app.state.token
    if expected is None:
        return RedirectResponse(target, status_code=303)
    limiter: LoginLimiter = request.app.state.login_limiter
    address = _address(request)
    wait_s = limiter.retry_after_s(address)
    if wait_s:
        log.warning("review room: login refused for %s (too many failed attempts)", address)
        response = render(request, "login.html", status_code=429, title="Log in", next=target,
                          error=f"Too many failed attempts. Try again in {wait_s} s.")
        response.headers["Retry-After"] = str(wait_s)
        return response
    presented = _form_text(form, "token")[:MAX_TOKEN_CHARS].strip()
    if not presented or not token_matches(presented, expected):
        limiter.failed(address)
        log.warning("review room: failed login from %s", address)
        return render(request, "login.html", status_code=403, title="Log in", next=target,
                      error="That token is not valid.")
    limiter.succeeded(address)
    session = sessions_of(request).issue()
    redirect = RedirectResponse(target, status_code=303)
    set_session_cookie(request, redirect, session)
    log.info("review room: login from %s", address)
    return redirect


async def logout(request: Request) -> Response:
    """End the session: its cookie is refused from now on, even if replayed."""
    await require_csrf(request)
    session = session_of(request)
    if session is not None and not session.fresh:
        sessions_of(request).revoke(session)
    response = RedirectResponse(HOME if open_mode(request) else LOGIN, status_code=303)
    clear_session_cookie(request, response)
    return response


async def star(request: Request, job_id: str) -> Response:
    """Star (``starred=1``) or unstar (``starred=0``) a job."""
    form = await require_csrf(request)
    checked = job_id_of(job_id)
    starred = _form_text(form, "starred") != "0"
    await run_in_threadpool(client_of(request).star, checked, starred)
    return _back(form, f"/ui/jobs/{checked}")


async def labels(request: Request, job_id: str) -> Response:
    """Set a job's labels (``labels``: comma-separated; empty clears them)."""
    form = await require_csrf(request)
    checked = job_id_of(job_id)
    await run_in_threadpool(client_of(request).set_labels, checked, views.parse_labels(_form_text(form, "labels")))
    return _back(form, f"/ui/jobs/{checked}")


async def sweep(request: Request, job_id: str) -> Response:
    """Queue the seeds around a succeeded job's seed (radius 1-10); show the new batch."""
    form = await require_csrf(request)
    checked = job_id_of(job_id)
    radius = views.check_radius(_form_text(form, "radius"))
    done = await run_in_threadpool(client_of(request).sweep_detailed, checked, radius)
    return RedirectResponse(f"/ui/batches/{done.batch_id}" if done.batch_id else f"/ui/jobs/{done.job_ids[0]}",
                            status_code=303)


async def promote(request: Request, job_id: str) -> Response:
    """Render a succeeded draft again at ``final``; show the new job."""
    await require_csrf(request)
    checked = job_id_of(job_id)
    done = await run_in_threadpool(client_of(request).promote, checked)
    return RedirectResponse(f"/ui/jobs/{done.job_ids[0]}", status_code=303)


async def cancel_job(request: Request, job_id: str) -> Response:
    """Cancel a queued or running job (409 once it finished)."""
    form = await require_csrf(request)
    checked = job_id_of(job_id)
    client = client_of(request)
    report = await run_in_threadpool(client.cancel, checked)
    if checked in report.unchanged:
        raise IllegalTransition(checked, report.unchanged[checked], "cancelled")
    return _back(form, f"/ui/jobs/{checked}")


async def cancel_batch(request: Request, batch_id: str) -> Response:
    """Cancel every unfinished job of a batch."""
    form = await require_csrf(request)
    checked = batch_id_of(batch_id)
    client = client_of(request)
    await run_in_threadpool(client.get_batch, checked)  # 404 for a job id
    await run_in_threadpool(client.cancel, checked)
    return _back(form, f"/ui/batches/{checked}")


#: (path under /ui, endpoint): every form target.
ACTIONS: tuple[tuple[str, Callable[..., Awaitable[Response]]], ...] = (
    ("/login", login),
    ("/logout", logout),
    ("/jobs/{job_id}/star", star),
    ("/jobs/{job_id}/labels", labels),
    ("/jobs/{job_id}/sweep", sweep),
    ("/jobs/{job_id}/promote", promote),
    ("/jobs/{job_id}/cancel", cancel_job),
    ("/batches/{batch_id}/cancel", cancel_batch),
)


def make_actions_router() -> APIRouter:
    """The login form and every form target on one router."""
    router = APIRouter()
    router.add_api_route("/login", login_form, methods=["GET"], include_in_schema=False,
                         response_class=HTMLResponse)
    for path, endpoint in ACTIONS:
        router.add_api_route(path, endpoint, methods=["POST"], include_in_schema=False)
    return router
