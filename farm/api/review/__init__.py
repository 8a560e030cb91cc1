"""The review room: a web page served by ``farm api`` under ``/ui`` for people who decide by looking.

Batches and their grids of posters (live progress while they render), a clip played in place,
side-by-side compare of seeds, star and label into the seed library, "sweep around this seed",
"promote to final", cancel; plus ``/docs`` and ``/redoc`` from local files.

:func:`install` adds it all to the API app. The ``/ui`` pages are a sub-application mounted at
``/ui`` (HTML error pages, no OpenAPI schema of their own, none in the API's):

* :mod:`.session` — the signed session cookie, the CSRF token, the login rate limit;
* :mod:`.web` — templates (autoescaped), security headers, the CSRF gate;
* :mod:`.views` — what the pages show, read through the app's :class:`farm.client.Client`;
* :mod:`.pages` (``GET``) and :mod:`.actions` (``POST``) — the routes;
* :mod:`.docs` — Swagger UI and ReDoc from fastapi-offline's files.

Authentication is :class:`farm.api.auth.BearerAuthMiddleware`'s: it admits a valid session (or
the bearer token) and sends anyone else to ``/ui/login``. Producer code: no torch, no engine.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from farm.api.review.actions import make_actions_router
from farm.api.review.docs import add_docs
from farm.api.review.pages import make_pages_router
from farm.api.review.session import LoginLimiter, Sessions
from farm.api.review.web import error_page
from farm.api.schemas import problems_from_errors
from farm.errors import (
    BatchNotFound,
    IllegalTransition,
    InvalidInput,
    JobNotFound,
    OutputMissing,
    OutputNotReady,
    SchemaOutOfDate,
    TransientError,
)
from farm.settings import Settings

log = logging.getLogger(__name__)

UI_PATH = "/ui"
#: Seconds a page tells the browser to wait after a 503.
RETRY_AFTER_S = 5


async def _invalid_request(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [(p.field, p.rule, p.message) for p in problems_from_errors(exc.errors())]
    return error_page(request, 422, "That request is not valid", problems)


async def _invalid_input(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, InvalidInput)
    return error_page(request, 422, "That request is not valid", [(p.field, p.rule, p.message) for p in exc.problems])


async def _not_found(request: Request, exc: Exception) -> HTMLResponse:
    field = "batch_id" if isinstance(exc, BatchNotFound) else "job_id"
    return error_page(request, 404, "Not found", [(field, "exists", str(exc))])


async def _conflict(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, IllegalTransition)
    return error_page(request, 409, "Already finished",
                      [("status", "not_finished", f"job {exc.job_id} is already {exc.current}")])


async def _no_output(request: Request, exc: Exception) -> HTMLResponse:
    return error_page(request, 409, "No output", [("output", "available", str(exc))])


async def _unavailable(request: Request, exc: Exception) -> HTMLResponse:
    log.warning("review room 503: %s: %s", type(exc).__name__, exc)
    response = error_page(request, 503, "The farm is unavailable",
                          [("service", "available", "the ledger or the broker is unavailable; retry in a moment")])
    response.headers["Retry-After"] = str(RETRY_AFTER_S)
    return response


async def _http_error(request: Request, exc: Exception) -> HTMLResponse:
    assert isinstance(exc, StarletteHTTPException)
    rule = {403: "csrf_token", 404: "route", 405: "method"}.get(exc.status_code, "http")
    field = "csrf_token" if exc.status_code == 403 else "path"
    response = error_page(request, exc.status_code, "Refused" if exc.status_code == 403 else "Not available",
                          [(field, rule, str(exc.detail))])
    for name, value in (getattr(exc, "headers", None) or {}).items():
        response.headers[name] = value
    return response


def make_review_app(parent: FastAPI, *, token: str | None, sessions: Sessions) -> FastAPI:
    """The ``/ui`` sub-application: its pages, its forms, its HTML error pages."""
    ui = FastAPI(title="farm review room", docs_url=None, redoc_url=None, openapi_url=None)
    ui.state.parent = parent
    ui.state.token = token
    ui.state.open_mode = token is None
    ui.state.sessions = sessions
    ui.state.login_limiter = LoginLimiter()
    ui.include_router(make_actions_router())
    ui.include_router(make_pages_router())
    ui.add_exception_handler(RequestValidationError, _invalid_request)
    ui.add_exception_handler(InvalidInput, _invalid_input)
    ui.add_exception_handler(JobNotFound, _not_found)
    ui.add_exception_handler(BatchNotFound, _not_found)
    ui.add_exception_handler(IllegalTransition, _conflict)
    ui.add_exception_handler(OutputNotReady, _no_output)
    ui.add_exception_handler(OutputMissing, _no_output)
    ui.add_exception_handler(TransientError, _unavailable)
    ui.add_exception_handler(SchemaOutOfDate, _unavailable)
    ui.add_exception_handler(StarletteHTTPException, _http_error)
    return ui


def install(app: FastAPI, token: str | None, settings: Settings) -> Sessions:
    """Mount the review room at ``/ui`` and add the local ``/docs`` and ``/redoc`` to ``app``.

    Returns the session keeper, for :class:`farm.api.auth.BearerAuthMiddleware`.
    """
    sessions = Sessions(token, ttl_s=settings.ui_session_ttl_s, secure=settings.ui_cookie_secure)
    app.mount(UI_PATH, make_review_app(app, token=token, sessions=sessions), name="review")
    add_docs(app)
    return sessions


__all__ = ["UI_PATH", "install", "make_review_app"]
