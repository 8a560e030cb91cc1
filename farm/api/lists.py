"""The list routes and the seed library's routes: what a tool (or the review room) browses and marks.

* ``GET /v1/jobs`` — jobs, newest first, filtered by ``status``, ``batch``, ``tag`` (``key=value``
  or ``key``, against the spec's tags), ``label`` (one review label), ``starred`` and ``prompt`` (a
  case-insensitive substring); paged by ``limit`` (1-:data:`MAX_PAGE_SIZE`, default
  :data:`DEFAULT_PAGE_SIZE`) and ``offset``.
* ``GET /v1/batches`` — batches, newest first, each with its counts per status and done/total.
* ``PUT /v1/jobs/{job_id}/labels`` — replace a job's review labels;
  ``POST``/``DELETE /v1/jobs/{job_id}/star`` — star / unstar it.

A page is ``{"items", "limit", "offset", "next_offset"}``, plus an RFC 8288 ``Link: <...>;
rel="next"`` header while there is a next page. A bad query value is a 422 naming the parameter
and the rule; each parameter's rule is in the OpenAPI schema (the same pattern the check uses).
Everything goes through the app's :class:`farm.client.Client`, as in :mod:`farm.api.routes`.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from pydantic import AfterValidator
from pydantic_core import PydanticCustomError

from farm.api.patterns import char_class, control_chars, label_pattern, matches, no_control_pattern
from farm.api.routes import BODY_UNREADABLE, ERRORS, ClientDep, job_view
from farm.api.schemas import ErrorBody
from farm.api.views import BatchPage, BatchSummary, JobPage, JobView, LabelsBody, LabelsView, StarView, StatusName
from farm.client.reads import check_id
from farm.errors import InvalidInput, JobNotFound
from farm.spec import MAX_PROMPT_CHARS, MAX_TAG_KEY_CHARS, MAX_TAG_VALUE_CHARS, TAG_KEY_PATTERN

#: Page sizes of the list routes.
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 500
#: Largest offset (a 32-bit OFFSET, the same on every ledger backend).
MAX_OFFSET = 2**31 - 1
#: A job or batch id in a query: a UUID in its 36-character text form (either case).
UUID_PATTERN = "^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
UUID_CHARS = 36


def _tag_filter_pattern() -> str:
    """``KEY`` or ``KEY=VALUE``: a key of the spec's tag key characters, a value without control characters."""
    key_chars = char_class(c for c in range(0x80) if re.match(TAG_KEY_PATTERN, chr(c)))
    value_chars = char_class(control_chars(), negate=True)
    return f"^{key_chars}{{1,{MAX_TAG_KEY_CHARS}}}(?:={value_chars}{{0,{MAX_TAG_VALUE_CHARS}}})?$"


TAG_FILTER_PATTERN = _tag_filter_pattern()
LABEL_PATTERN = label_pattern()
NO_CONTROL_PATTERN = no_control_pattern()


def _matching(pattern: str, rule: str, message: str) -> AfterValidator:
    """A query parameter's check: ``pattern`` (as JSON Schema reads it), else a problem with ``rule``."""

    def check(value: str | None) -> str | None:
        if value is not None and not matches(pattern, value):
            raise PydanticCustomError(rule, message)
        return value

    return AfterValidator(check)


StatusQuery = Annotated[StatusName | None, Query(description="Only jobs in this status.")]
BatchQuery = Annotated[str | None, Query(
    description="Only the jobs of this batch (its id).", min_length=UUID_CHARS, max_length=UUID_CHARS,
    json_schema_extra={"pattern": UUID_PATTERN}),
    _matching(UUID_PATTERN, "uuid", "must be a batch id (a UUID: 8-4-4-4-12 hex digits)")]
TagQuery = Annotated[str | None, Query(
    description=f"Only jobs whose spec tag KEY is VALUE (`KEY=VALUE`), or that have tag KEY (`KEY`). A key is "
                f"1-{MAX_TAG_KEY_CHARS} characters of A-Z a-z 0-9 _ . : / -; a value at most "
                f"{MAX_TAG_VALUE_CHARS} characters without control characters.",
    json_schema_extra={"pattern": TAG_FILTER_PATTERN}),
    _matching(TAG_FILTER_PATTERN, "tag_filter", "must be KEY or KEY=VALUE (a key: 1-64 characters of "
              "A-Z a-z 0-9 _ . : / -; a value: at most 256 characters, no control characters)")]
LabelQuery = Annotated[str | None, Query(
    description="Only jobs carrying this review label (case and surrounding spaces ignored).",
    json_schema_extra={"pattern": LABEL_PATTERN}),
    _matching(LABEL_PATTERN, "label", "must be a label: 1-40 characters of [a-z0-9][a-z0-9._-]*")]
StarredQuery = Annotated[bool | None, Query(description="true: only starred jobs; false: only unstarred ones.")]
PromptQuery = Annotated[str | None, Query(
    description=f"Only jobs whose prompt contains this text (case-insensitive): 1-{MAX_PROMPT_CHARS} characters, "
                "no control characters but tab/newline/CR.", min_length=1, max_length=MAX_PROMPT_CHARS,
    json_schema_extra={"pattern": NO_CONTROL_PATTERN}),
    _matching(NO_CONTROL_PATTERN, "no_control_chars", "must not contain NUL or other control characters")]
LimitQuery = Annotated[int, Query(ge=1, le=MAX_PAGE_SIZE, description="Page size.")]
OffsetQuery = Annotated[int, Query(ge=0, le=MAX_OFFSET, description="Items to skip (the previous page's "
                                                                     "next_offset).")]


def _job_id(value: str) -> str:
    """A path's job id; anything that is not a UUID names no job (404)."""
    try:
        return check_id(value, "job_id")
    except InvalidInput:
        raise JobNotFound(value[:64]) from None


def _page(request: Request, response: Response, found: int, limit: int, offset: int) -> int | None:
    """The next page's offset (None on the last page); sets the ``Link: <...>; rel="next"`` header."""
    if found <= limit:
        return None
    next_offset = offset + limit
    response.headers["Link"] = f'<{request.url.include_query_params(offset=next_offset)}>; rel="next"'
    return next_offset


def list_jobs(request: Request, response: Response, client: ClientDep, status: StatusQuery = None,
              batch: BatchQuery = None, tag: TagQuery = None, label: LabelQuery = None, starred: StarredQuery = None,
              prompt: PromptQuery = None, limit: LimitQuery = DEFAULT_PAGE_SIZE, offset: OffsetQuery = 0) -> JobPage:
    """Jobs, newest first, filtered by every filter given; a page of at most ``limit``."""
    found = client.list_jobs(batch_id=batch, status=status, starred=starred, tag=tag, label=label, prompt=prompt,
                             limit=limit + 1, offset=offset)
    next_offset = _page(request, response, len(found), limit, offset)
    items = [JobView.model_validate(job_view(job)) for job in found[:limit]]
    return JobPage(items=items, limit=limit, offset=offset, next_offset=next_offset)


def list_batches(request: Request, response: Response, client: ClientDep, limit: LimitQuery = DEFAULT_PAGE_SIZE,
                 offset: OffsetQuery = 0) -> BatchPage:
    """Batches, newest first, each with its counts per status and how many of its jobs finished."""
    found = client.list_batches(limit=limit + 1, offset=offset)
    next_offset = _page(request, response, len(found), limit, offset)
    items = [BatchSummary(id=v.batch.id, name=v.batch.name, source_name=v.batch.source_name,
                          manifest_digest=v.batch.manifest_digest, created_at=v.batch.created_at.isoformat(),
                          job_count=v.batch.job_count, counts=v.counts, finished=v.finished, done=v.done)
             for v in found[:limit]]
    return BatchPage(items=items, limit=limit, offset=offset, next_offset=next_offset)


def set_labels(job_id: str, body: LabelsBody, client: ClientDep) -> LabelsView:
    """Replace the job's review labels (at most 16; each 1-40 characters of ``[a-z0-9][a-z0-9._-]*``).

    Case and surrounding spaces are ignored; the answer has them sorted, without duplicates.
    """
    checked = _job_id(job_id)
    return LabelsView(job_id=checked, labels=client.set_labels(checked, body.labels))


def star_job(job_id: str, client: ClientDep) -> StarView:
    """Star the job (a bookmark); ``changed`` is false when it already was."""
    checked = _job_id(job_id)
    return StarView(job_id=checked, starred=True, changed=client.star(checked, True))


def unstar_job(job_id: str, client: ClientDep) -> StarView:
    """Unstar the job; ``changed`` is false when it was not starred."""
    checked = _job_id(job_id)
    return StarView(job_id=checked, starred=False, changed=client.star(checked, False))


_NEXT_LINK: dict[str, Any] = {"Link": {"description": 'RFC 8288 `<URL of the next page>; rel="next"`, while '
                                                      "there is a next page.", "schema": {"type": "string"}}}
_LIST_ERRORS = {k: v for k, v in ERRORS.items() if k != 404}
_LIST = {"responses": {**_LIST_ERRORS, 200: {"description": "A page.", "headers": _NEXT_LINK}}}
_LABELS_422 = {422: {"model": ErrorBody, "description": "Invalid labels (field `labels`, rule `max_labels`, "
                                                        "`label` or `type`), or a malformed body."},
               **BODY_UNREADABLE}

#: (method, path, endpoint, route options) of this module's routes.
ROUTES: tuple[tuple[str, str, Any, dict[str, Any]], ...] = (
    ("GET", "/v1/jobs", list_jobs, {"tags": ["jobs"], "response_model": JobPage, **_LIST}),
    ("GET", "/v1/batches", list_batches, {"tags": ["batches"], "response_model": BatchPage, **_LIST}),
    ("PUT", "/v1/jobs/{job_id}/labels", set_labels, {"tags": ["library"], "response_model": LabelsView,
                                                     "responses": {**ERRORS, **_LABELS_422}}),
    ("POST", "/v1/jobs/{job_id}/star", star_job, {"tags": ["library"], "response_model": StarView,
                                                  "responses": ERRORS}),
    ("DELETE", "/v1/jobs/{job_id}/star", unstar_job, {"tags": ["library"], "response_model": StarView,
                                                      "responses": ERRORS}),
)


def make_lists_router() -> APIRouter:
    """Every route of :data:`ROUTES` on one router (``create_app`` includes it)."""
    router = APIRouter()
    for method, path, endpoint, options in ROUTES:
        router.add_api_route(path, endpoint, methods=[method], **options)
    return router
