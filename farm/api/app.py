"""The FastAPI application: ``create_app(settings=None)``.

* Auth: :class:`farm.api.auth.BearerAuthMiddleware` wraps the whole app — every path needs
  ``Authorization: Bearer $FARM_API_TOKEN`` except ``/healthz`` and ``/readyz`` (see :mod:`farm.api.auth` for the
  start-up policy: no token → refuse, unless loopback + ``insecure_local``).
* Errors: farm's exceptions become JSON answers ``{"error", "problems": [{field, rule, message}]}``:
  invalid input 422 (415 for a body that is neither JSON nor YAML), unknown job/batch 404, a job
  already finished 409, ledger/broker unavailable 503 with ``Retry-After``, a body over its limit
  413 (:mod:`farm.api.limits`).
* State: one :class:`farm.client.Client` (ledger + broker) and one metrics registry, opened at
  start-up and closed at shutdown (``app.state``).

The app is producer code: it never imports torch, diffusers, numpy, ``farm.engine`` or the task
module.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from farm.api.auth import BearerAuthMiddleware, startup_token
from farm.api.bodies import UnsupportedMediaType
from farm.api.limits import BodyLimitMiddleware
from farm.api.lists import make_lists_router
from farm.api.openapi_rules import apply_rules
from farm.api.review import install as install_review
from farm.api.routes import FURTHER_CHECKS, make_router
from farm.api.schemas import problem_body, problems_from_errors
from farm.errors import (
    BatchNotFound,
    IllegalTransition,
    InvalidInput,
    JobNotFound,
    OutputMissing,
    OutputNotReady,
    Problem,
    SchemaOutOfDate,
    TransientError,
)
from farm.settings import Settings, get_settings

log = logging.getLogger(__name__)

#: Seconds a client is told to wait after a 503.
RETRY_AFTER_S = 5
API_TITLE = "farm"
API_VERSION = "1"


def _answer(status: int, error: str, problems: list[Problem], headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(problem_body(error, problems), status_code=status, headers=headers)


async def _invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = problems_from_errors(exc.errors())
    further = FURTHER_CHECKS.get(request.scope.get("endpoint"))
    if further is not None:  # the rules FastAPI's shape check stopped before: every problem at once
        problems += further(request, exc.body, problems)  # pure checks: no I/O
    return _answer(422, "InvalidInput", problems)


async def _invalid_input(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, InvalidInput)
    status = 415 if isinstance(exc, UnsupportedMediaType) else 422
    return _answer(status, type(exc).__name__, exc.problems)


async def _not_found(_: Request, exc: Exception) -> JSONResponse:
    field = "batch_id" if isinstance(exc, BatchNotFound) else "job_id"
    return _answer(404, "NotFound", [Problem(field, "exists", str(exc))])


async def _conflict(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, IllegalTransition)
    message = f"job {exc.job_id} is already {exc.current}"
    return _answer(409, "Conflict", [Problem("status", "not_finished", message)])


async def _not_ready(_: Request, exc: Exception) -> JSONResponse:
    return _answer(404, "NotFound", [Problem("job_id", "succeeded", str(exc))])


async def _output_missing(_: Request, exc: Exception) -> JSONResponse:
    return _answer(409, "OutputMissing", [Problem("output_uri", "file_exists", str(exc))])


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("503: %s: %s", type(exc).__name__, exc)
    return _answer(503, type(exc).__name__, [Problem("service", "available", "the farm's ledger or broker is "
                                                     "unavailable; retry later")],
                   headers={"Retry-After": str(RETRY_AFTER_S)})


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    rule = {404: "route", 405: "method", 413: "max_size"}.get(exc.status_code, "http")
    field = "body" if exc.status_code == 413 else "path"
    return _answer(exc.status_code, "HTTPError", [Problem(field, rule, str(exc.detail))],
                   headers=getattr(exc, "headers", None))


def _openapi(app: FastAPI) -> dict[str, Any]:
    """The OpenAPI schema: farm's rules written in (:mod:`farm.api.openapi_rules`), the bearer scheme everywhere.

    (``/healthz`` and ``/readyz`` excepted.) The model names and the default model are the ones
    known when the app starts.
    """
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        apply_rules(schema, default_model=app.state.settings.default_model)
        schema.setdefault("components", {})["securitySchemes"] = {
            "bearerAuth": {"type": "http", "scheme": "bearer", "description": "FARM_API_TOKEN"}
        }
        schema["security"] = [{"bearerAuth": []}]
        for public in ("/healthz", "/readyz"):
            schema["paths"].get(public, {}).get("get", {})["security"] = []
        app.openapi_schema = schema
    return app.openapi_schema


def create_app(settings: Settings | None = None, *, insecure_local: bool = False) -> FastAPI:
    """The farm's HTTP API for ``settings`` (default: the process settings).

    Raises :class:`farm.api.auth.ApiConfigError` when it must not start: no ``FARM_API_TOKEN`` (or
    one too short), unless ``insecure_local`` and ``settings.api_host`` is a loopback address.
    """
    settings = settings or get_settings()
    token = startup_token(settings, host=settings.api_host, insecure_local=insecure_local)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        from farm.client import Client
        from farm.metrics import make_registry

        # a request answers within about FARM_API_SEND_TIMEOUT_S when the broker is away (202, not sent)
        app.state.client = Client(settings=settings.model_copy(update={"send_timeout_s": settings.api_send_timeout_s}))
        app.state.registry, collector = make_registry(settings)
        try:
            yield
        finally:
            collector.close()
            app.state.client.close()

    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        description="farm's HTTP API: submit renders and batches, follow them, download outputs. "
        "Every route but /healthz and /readyz needs `Authorization: Bearer <FARM_API_TOKEN>`; the review room "
        "(/ui/) and these docs take the same token on a login page.",
        lifespan=lifespan,
        docs_url=None,  # /docs and /redoc from local files: farm.api.review.docs
        redoc_url=None,
    )
    app.state.settings = settings
    app.include_router(make_router())
    app.include_router(make_lists_router())
    sessions = install_review(app, token, settings)  # the review room (/ui) and the local /docs
    app.add_exception_handler(RequestValidationError, _invalid_request)
    app.add_exception_handler(InvalidInput, _invalid_input)
    app.add_exception_handler(JobNotFound, _not_found)
    app.add_exception_handler(BatchNotFound, _not_found)
    app.add_exception_handler(IllegalTransition, _conflict)
    app.add_exception_handler(OutputNotReady, _not_ready)
    app.add_exception_handler(OutputMissing, _output_missing)
    app.add_exception_handler(TransientError, _unavailable)
    app.add_exception_handler(SchemaOutOfDate, _unavailable)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    app.add_middleware(BodyLimitMiddleware)
    # added last: runs first, before any body is read
    app.add_middleware(BearerAuthMiddleware, token=token, sessions=sessions)
    return app
