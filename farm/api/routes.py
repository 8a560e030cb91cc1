"""The ``/v1`` routes, ``/healthz`` and ``/metrics``.

Handlers are plain functions on one :class:`fastapi.APIRouter` (FastAPI runs them in its thread
pool: the ledger and the broker are blocking I/O). Every handler gets the app's
:class:`farm.client.Client` through ``Depends`` — the same door as the CLI and Python producers, for
writes and reads alike, so the same rules, dedup and idempotency apply; the API never touches the
ledger or the output store itself. Errors are raised as farm exceptions and turned into HTTP
answers by :mod:`farm.api.app`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from farm.api import bodies
from farm.api.schemas import (
    BatchCreated,
    BatchResults,
    BatchView,
    ErrorBody,
    JobsCreated,
    RenderRequest,
    rule_problems,
)
from farm.api.views import CancelView, HealthView, JobView, ReadyView
from farm.client import Client
from farm.client.core import check_idempotency_key
from farm.client.reads import check_id
from farm.client.reports import degradation
from farm.errors import BatchNotFound, IllegalTransition, InvalidInput, JobNotFound, Problem
from farm.ledger import JobRecord, JobStatus

#: Header naming a request so that repeating it creates nothing new.
IDEMPOTENCY_HEADER = "Idempotency-Key"
#: Record fields never shown over HTTP (server paths: the download routes serve the files).
HIDDEN_JOB_FIELDS = frozenset({"output_uri"})
#: Seconds a load balancer is told to wait before asking /readyz again.
READY_RETRY_AFTER_S = 5
HIDDEN_RESULT_FIELDS = frozenset({"output", "output_uri"})

ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorBody, "description": "Missing or wrong bearer token."},
    404: {"model": ErrorBody, "description": "No such job or batch."},
    422: {"model": ErrorBody, "description": "Invalid input: every problem names its field and rule."},
    503: {"model": ErrorBody, "description": "The ledger or the broker is unavailable; retry later."},
}

#: A JSON body that cannot even be decoded (not UTF-8) is refused before any check (FastAPI's 400).
BODY_UNREADABLE: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "The body could not be read (not UTF-8 text)."},
}

IdempotencyKey = Annotated[str | None, Header(alias=IDEMPOTENCY_HEADER)]


def _client(request: Request) -> Client:
    client: Client = request.app.state.client
    return client


#: The app's client, for a handler's parameter list.
ClientDep = Annotated[Client, Depends(_client)]


def _job_id(value: str) -> str:
    """A path's job id; anything that is not a UUID names no job (404, never a file path)."""
    try:
        return check_id(value, "job_id")
    except InvalidInput:
        raise JobNotFound(value[:64]) from None


def _batch_id(value: str) -> str:
    try:
        return check_id(value, "batch_id")
    except InvalidInput:
        raise BatchNotFound(value[:64]) from None


def _key(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return check_idempotency_key(value)
    except InvalidInput as exc:
        raise InvalidInput(Problem(IDEMPOTENCY_HEADER, p.rule, p.message) for p in exc.problems) from None


def _key_problems(value: str | None) -> list[Problem]:
    """The problems of an ``Idempotency-Key`` header (none when it is fine or absent)."""
    try:
        _key(value)
    except InvalidInput as exc:
        return list(exc.problems)
    return []


def _urls(job_id: str, status: str) -> dict[str, str | None]:
    ready = status == JobStatus.SUCCEEDED.value
    return {
        "video_url": f"/v1/jobs/{job_id}/video" if ready else None,
        "poster_url": f"/v1/jobs/{job_id}/poster" if ready else None,
    }


def job_view(job: JobRecord) -> dict[str, Any]:
    """A job as the API shows it: its fields less the hidden ones, its degradation, its output URLs."""
    view = {k: v for k, v in job.to_dict().items() if k not in HIDDEN_JOB_FIELDS}
    view.update(degradation(job))
    view.update(_urls(job.id, job.status.value))
    return view


# -- liveness and metrics ------------------------------------------------------------------------


def healthz() -> HealthView:
    """Liveness: 200 while the process serves requests (no token needed)."""
    return HealthView(status="ok")


def readyz(client: ClientDep) -> JSONResponse:
    """Readiness: 200 when the ledger and the broker both answer, else 503 naming which does not.

    No token needed, no addresses or errors in the answer (they are logged). A load balancer takes
    a replica out while it is not ready; with the broker down the API still accepts jobs (202).
    """
    checks = client.readiness()
    ready = all(checks.values())
    body = {"status": "ready" if ready else "not ready", **{k: "ok" if v else "unavailable" for k, v in checks.items()}}
    headers = None if ready else {"Retry-After": str(READY_RETRY_AFTER_S)}
    return JSONResponse(body, status_code=200 if ready else 503, headers=headers)


def _created_status(created: bool, not_sent: int) -> int:
    """201 created and sent, 202 recorded but not all sent yet (the reaper sends them), 200 a repeat."""
    if not created:
        return 200
    return 202 if not_sent else 201


def metrics(request: Request) -> Response:
    """The farm's Prometheus metrics, in the text exposition format."""
    return Response(generate_latest(request.app.state.registry), media_type=CONTENT_TYPE_LATEST)


# -- jobs ----------------------------------------------------------------------------------------


def submit_job(body: RenderRequest, request: Request, response: Response, client: ClientDep,
               idempotency_key: IdempotencyKey = None) -> JobsCreated:
    """Submit one render (a ``sweep`` submits one per seed).

    201 with the new job ids; with an ``Idempotency-Key`` seen before, 200 with the first
    request's ids and nothing created or sent.
    """
    default_model = client.settings.default_model
    # every rule, before anything is written (the client checks them again), all problems at once
    problems = _key_problems(idempotency_key)
    try:
        body.specs(default_model)
    except InvalidInput as exc:
        problems.extend(exc.problems)
    if problems:
        raise InvalidInput(problems)
    key = _key(idempotency_key)
    done = client.submit_detailed(body.prompt, idempotency_key=key, **body.client_kwargs(default_model))
    response.status_code = _created_status(done.created, done.not_sent)
    return JobsCreated(job_ids=done.job_ids, created=done.created, enqueued=done.enqueued, not_sent=done.not_sent)


def submit_job_problems(request: Request, body: Any, shape_problems: Sequence[Problem]) -> list[Problem]:
    """What else a ``POST /v1/jobs`` request breaks when its body failed FastAPI's shape check.

    (That check stops before :func:`submit_job` runs.) The spec rules of the well-formed
    fields and the ``Idempotency-Key`` header, so that one 422 lists every problem.
    """
    default_model = request.app.state.settings.default_model
    return [*rule_problems(body, shape_problems, default_model),
            *_key_problems(request.headers.get(IDEMPOTENCY_HEADER))]


def get_job(job_id: str, client: ClientDep) -> JobView:
    """Every recorded field of the job, with its download URLs once it succeeded.

    A queued job also says why it cannot start (``waiting``: e.g. no live worker serves its model).
    """
    job = client.get_job(_job_id(job_id))
    view = job_view(job)
    view["waiting"] = list(client.waiting(job.id)) if job.status == JobStatus.QUEUED else []
    return JobView.model_validate(view)


def cancel_job(job_id: str, client: ClientDep) -> JobView:
    """Cancel a queued or running job (a worker stops it at its next heartbeat)."""
    checked = _job_id(job_id)
    client.get_job(checked)  # 404 for an unknown job
    report = client.cancel(checked)
    if checked in report.unchanged:
        raise IllegalTransition(checked, report.unchanged[checked], JobStatus.CANCELLED.value)
    return JobView.model_validate(job_view(client.get_job(checked)))


def promote_job(job_id: str, client: ClientDep) -> JobsCreated:
    """Render a succeeded draft (preset ``draft`` or ``custom``) again at ``final`` as a child job.

    201 with the new job's id (answered from the cache when that final render exists already:
    ``enqueued`` 0); 422 ``not_a_draft`` for a final render, ``succeeded`` for an unfinished one.
    """
    checked = _job_id(job_id)
    client.get_job(checked)  # 404 for an unknown job
    done = client.promote(checked)
    return JobsCreated(job_ids=done.job_ids, created=done.created, enqueued=done.enqueued)


def _download(job_id: str, client: Client, kind: str) -> Response:
    """The file streamed (file store), or a 307 redirect to its presigned URL (s3 store)."""
    found = client.download(_job_id(job_id), kind)
    if found.url is not None:
        return RedirectResponse(found.url, status_code=307, headers={"Cache-Control": "no-store"})
    assert found.path is not None
    return FileResponse(found.path, media_type=found.media_type, filename=found.filename)


def job_video(job_id: str, client: ClientDep) -> Response:
    """The job's MP4 (404 until it succeeded; 409 if the stored file is gone; 307 to a presigned URL on s3)."""
    return _download(job_id, client, "video")


def job_poster(job_id: str, client: ClientDep) -> Response:
    """The job's poster PNG (the middle frame; 307 to a presigned URL on s3)."""
    return _download(job_id, client, "poster")


# -- batches -------------------------------------------------------------------------------------

_MANIFEST_BODY = {
    "requestBody": {
        "required": True,
        "description": "A batch manifest: the YAML manifest's schema as a JSON object, or YAML text.",
        "content": {
            "application/json": {"schema": {"type": "object", "required": ["items"]}},
            "text/yaml": {"schema": {"type": "string"}},
        },
    }
}


async def submit_batch(request: Request, response: Response, client: ClientDep,
                       no_cache: Annotated[bool, Query(description="Render every job, even identical ones.")] = False,
                       idempotency_key: IdempotencyKey = None) -> BatchCreated:
    """Submit a manifest.

    Every item is checked first: any problem is a 422 naming the item and the field, and nothing is
    written or sent. A batch is named by its manifest's digest: the same manifest again (with or
    without the same ``Idempotency-Key``) gives 200 and the same batch id.
    """
    _key(idempotency_key)
    manifest = bodies.manifest_from_body(await request.body(), request.headers.get("content-type"))
    done = await run_in_threadpool(client.submit_batch, manifest, no_cache=no_cache)
    response.status_code = _created_status(done.created, done.not_sent)
    return BatchCreated(batch_id=done.batch_id, job_count=done.job_count, created=done.created,
                        enqueued=done.enqueued, not_sent=done.not_sent, name=done.name, digest=done.digest)


def get_batch(batch_id: str, client: ClientDep) -> BatchView:
    """The batch and how many of its jobs are in each status."""
    view = client.batch_view(_batch_id(batch_id))
    batch = view.batch
    return BatchView(id=batch.id, name=batch.name, source_name=batch.source_name,
                     manifest_digest=batch.manifest_digest, created_at=batch.created_at.isoformat(),
                     job_count=batch.job_count, counts=view.counts, done=view.done,
                     waiting=list(client.waiting(batch.id)) if view.counts.get("queued") else [])


def batch_results(batch_id: str, client: ClientDep) -> BatchResults:
    """One row per job, in manifest order: prompt, seed, parameters, hashes, status, download URLs."""
    checked = _batch_id(batch_id)
    client.get_batch(checked)  # 404 for an unknown batch (a job id is not a batch)
    rows = []
    for row in client.results(checked):
        out = {k: v for k, v in row.items() if k not in HIDDEN_RESULT_FIELDS}
        out.update(_urls(row["job_id"], row["status"]))
        rows.append(out)
    return BatchResults(batch_id=checked, results=rows)


def cancel_batch(batch_id: str, client: ClientDep) -> CancelView:
    """Cancel every queued and running job of the batch; finished jobs are listed, unchanged."""
    checked = _batch_id(batch_id)
    client.get_batch(checked)
    return CancelView.model_validate(client.cancel(checked).to_dict())


# -- the table -----------------------------------------------------------------------------------

_CONFLICT = {409: {"model": ErrorBody, "description": "The job already finished."}}
_READY = {200: {"model": ReadyView, "description": "Ready."},
          503: {"model": ReadyView, "description": "Not ready (Retry-After says when to ask again)."}}
_METRICS = {200: {"description": "The metrics in Prometheus' text format.",
                  "content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}}}}
_MISSING = {409: {"model": ErrorBody, "description": "The stored file is missing."},
            307: {"description": "s3 output store: a presigned URL of the file (Location), valid for "
                                 "FARM_S3_PRESIGN_EXPIRY_S seconds."}}
_NOT_SENT: dict[int | str, dict[str, Any]] = {
    202: {"description": "Recorded, but the broker could not be reached in time: `not_sent` jobs are sent by the "
                         "reaper (nothing is lost)."},
}
_REPEAT_JOBS: dict[int | str, dict[str, Any]] = {
    200: {"model": JobsCreated, "description": "Idempotency-Key seen before: the first request's jobs."},
    **_NOT_SENT, **BODY_UNREADABLE,
}
_REPEAT_BATCH = {**_NOT_SENT, 200: {"model": BatchCreated, "description": "The same manifest was submitted before."},
                 415: {"model": ErrorBody, "description": "The body is neither JSON nor YAML."}}

#: (method, path, endpoint, route options): every route of the API.
ROUTES: tuple[tuple[str, str, Any, dict[str, Any]], ...] = (
    ("GET", "/healthz", healthz, {"tags": ["ops"], "summary": "Liveness (no authentication, no details)",
                                  "response_model": HealthView}),
    ("GET", "/readyz", readyz, {"tags": ["ops"], "summary": "Readiness: ledger and broker answer (no authentication)",
                                "response_class": JSONResponse, "responses": _READY}),
    ("GET", "/metrics", metrics, {"tags": ["ops"], "summary": "Prometheus metrics (bearer token required)",
                                  "response_class": Response, "responses": {**_METRICS, 401: ERRORS[401]}}),
    ("POST", "/v1/jobs", submit_job, {"tags": ["jobs"], "status_code": 201, "response_model": JobsCreated,
                                      "responses": {**ERRORS, **_REPEAT_JOBS}}),
    ("GET", "/v1/jobs/{job_id}", get_job, {"tags": ["jobs"], "response_model": JobView, "responses": ERRORS}),
    ("POST", "/v1/jobs/{job_id}/cancel", cancel_job, {"tags": ["jobs"], "response_model": JobView,
                                                      "responses": {**ERRORS, **_CONFLICT}}),
    ("POST", "/v1/jobs/{job_id}/promote", promote_job, {"tags": ["jobs"], "status_code": 201,
                                                        "response_model": JobsCreated, "responses": ERRORS}),
    ("GET", "/v1/jobs/{job_id}/video", job_video, {"tags": ["jobs"], "response_class": FileResponse,
                                                   "responses": {**ERRORS, **_MISSING}}),
    ("GET", "/v1/jobs/{job_id}/poster", job_poster, {"tags": ["jobs"], "response_class": FileResponse,
                                                     "responses": {**ERRORS, **_MISSING}}),
    ("POST", "/v1/batches", submit_batch, {"tags": ["batches"], "status_code": 201, "response_model": BatchCreated,
                                           "openapi_extra": _MANIFEST_BODY, "responses": {**ERRORS, **_REPEAT_BATCH}}),
    ("GET", "/v1/batches/{batch_id}", get_batch, {"tags": ["batches"], "response_model": BatchView,
                                                  "responses": ERRORS}),
    ("GET", "/v1/batches/{batch_id}/results", batch_results, {"tags": ["batches"], "response_model": BatchResults,
                                                              "responses": ERRORS}),
    ("POST", "/v1/batches/{batch_id}/cancel", cancel_batch, {"tags": ["batches"], "response_model": CancelView,
                                                             "responses": ERRORS}),
)


#: endpoint -> the further problems of a request whose parameters failed FastAPI's validation
#: (called by the RequestValidationError handler with the request, the body and those problems).
FURTHER_CHECKS: dict[Any, Callable[[Request, Any, Sequence[Problem]], list[Problem]]] = {
    submit_job: submit_job_problems,
}


def make_router() -> APIRouter:
    """Every route of :data:`ROUTES` on one router (``create_app`` includes it)."""
    router = APIRouter()
    for method, path, endpoint, options in ROUTES:
        router.add_api_route(path, endpoint, methods=[method], **options)
    return router
