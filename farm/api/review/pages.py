"""The review room's pages (``GET /ui/...``): batches, a batch's grid, a job, compare, the seed library.

Every page reads through the app's :class:`farm.client.Client` (:mod:`farm.api.review.views`)
and renders an autoescaped template (:func:`farm.api.review.web.render`). The batch grid polls
``/ui/batches/{id}/progress`` (JSON: counts and the page's tiles) to update itself while the
batch renders. The contact sheet and the HTML report come from :mod:`farm.client.contact_sheet`
(imported when asked for).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.exceptions import HTTPException

from farm.api.review import views
from farm.api.review.web import HOME, STATIC_DIR, page_headers, render
from farm.client import Client
from farm.client.reads import check_id
from farm.errors import BatchNotFound, InvalidInput, JobNotFound

#: The review room's own files (a fixed list: never a path from the request).
STATIC_FILES: dict[str, str] = {"review.css": "text/css", "review.js": "text/javascript"}
#: How often the batch grid asks for progress (milliseconds; the page's JS reads it).
PROGRESS_POLL_MS = 1500
#: The CSP of the HTML report (its text only: no script, nothing loaded but this server's images).
REPORT_CSP = "default-src 'none'; img-src 'self' data:; style-src 'unsafe-inline'; sandbox"

Text = Annotated[str, Query(max_length=views.MAX_FILTER_CHARS)]
PageNumber = Annotated[int, Query(ge=1, le=100_000)]


def client_of(request: Request) -> Client:
    """The API's client (opened by the parent app at start-up)."""
    client: Client = request.app.state.parent.state.client
    return client


def job_id_of(value: str) -> str:
    """A path's job id; anything but a UUID names no job (404)."""
    try:
        return check_id(value, "job_id")
    except InvalidInput:
        raise JobNotFound(value[:64]) from None


def batch_id_of(value: str) -> str:
    """A path's batch id; anything but a UUID names no batch (404)."""
    try:
        return check_id(value, "batch_id")
    except InvalidInput:
        raise BatchNotFound(value[:64]) from None


def _page_links(base: str, query: dict[str, str], page: views.Page) -> dict[str, str | None]:
    def link(number: int) -> str:
        return base + "?" + urlencode({**query, "page": str(number)})

    return {"prev": link(page.number - 1) if page.has_prev else None,
            "next": link(page.number + 1) if page.has_next else None}


def home() -> RedirectResponse:
    """The review room starts at the batches."""
    return RedirectResponse(HOME, status_code=303)


def static_file(name: str) -> FileResponse:
    """review.css / review.js (the session is needed for these too)."""
    media_type = STATIC_FILES.get(name)
    if media_type is None:
        raise HTTPException(status_code=404, detail="no such file")
    return FileResponse(STATIC_DIR / name, media_type=media_type,
                        headers={"Cache-Control": "private, max-age=300", "X-Content-Type-Options": "nosniff"})


def batches(request: Request, page: PageNumber = 1) -> HTMLResponse:
    """Every batch, newest first: counts per status, done/total."""
    found = views.batches_page(client_of(request), views.check_page(page))
    return render(request, "batches.html", title="Batches", page=found,
                  links=_page_links("/ui/batches", {}, found), statuses=views.STATUSES)


def _grid(request: Request, batch_id: str, status: str, prompt: str, tag: str, label: str,
          page: int) -> tuple[dict[str, Any], views.Filters, views.Page]:
    client = client_of(request)
    checked = batch_id_of(batch_id)
    filters = views.check_filters(status, prompt, tag, label)
    batch = views.batch_row(client.batch_view(checked))
    return batch, filters, views.jobs_page(client, filters, views.check_page(page), batch_id=checked)


def batch(request: Request, batch_id: str, status: Text = "", prompt: Text = "", tag: Text = "", label: Text = "",
          page: PageNumber = 1) -> HTMLResponse:
    """A batch's grid of posters, filtered; live progress while it renders."""
    found_batch, filters, found = _grid(request, batch_id, status, prompt, tag, label, page)
    base = f"/ui/batches/{found_batch['id']}"
    return render(request, "batch.html", title=found_batch["name"], batch=found_batch, filters=filters,
                  page=found, links=_page_links(base, filters.query(), found), statuses=views.STATUSES,
                  progress_url=base + "/progress?" + urlencode({**filters.query(), "page": str(found.number)}),
                  poll_ms=PROGRESS_POLL_MS)


def batch_progress(request: Request, batch_id: str, status: Text = "", prompt: Text = "", tag: Text = "",
                   label: Text = "", page: PageNumber = 1) -> JSONResponse:
    """The batch's counts and the tiles of one page of its grid (the grid polls this)."""
    found_batch, _, found = _grid(request, batch_id, status, prompt, tag, label, page)
    body = {"counts": found_batch["counts"], "job_count": found_batch["job_count"],
            "finished": found_batch["finished"], "done": found_batch["done"], "percent": found_batch["percent"],
            "jobs": found.items}
    return JSONResponse(body, headers={"Cache-Control": "no-store"})


def job(request: Request, job_id: str) -> HTMLResponse:
    """One job: its video, prompt, seed and parameters; star, label, sweep, promote, cancel."""
    record = client_of(request).get_job(job_id_of(job_id))
    return render(request, "job.html", title=f"seed {record.seed}", job=views.tile(record),
                  params=sorted((k, v) for k, v in record.params.items() if k not in ("prompt", "tags")),
                  radius_min=views.SWEEP_RADIUS_MIN, radius_max=views.SWEEP_RADIUS_MAX)


def compare(request: Request, job: Annotated[list[str] | None, Query()] = None,
            prompt_of: str = "") -> HTMLResponse:
    """Side by side: 2-4 chosen jobs (``?job=A&job=B``), or every seed of one job's prompt (``?prompt_of=A``)."""
    client = client_of(request)
    if prompt_of:
        tiles = views.prompt_seeds(client, job_id_of(prompt_of))
        heading = "Seeds of one prompt"
    else:
        tiles = views.compare_jobs(client, [job_id_of(j) for j in job or []])
        heading = "Compare"
    return render(request, "compare.html", title=heading, heading=heading, tiles=tiles)


def library(request: Request, label: Text = "", prompt: Text = "", page: PageNumber = 1) -> HTMLResponse:
    """The seed library: starred jobs (or the jobs carrying one label), newest first."""
    filters = views.check_filters("", prompt, "", label)
    found = views.library_page(client_of(request), filters, views.check_page(page))
    return render(request, "library.html", title="Seed library", filters=filters, page=found,
                  links=_page_links("/ui/library", filters.query(), found))


def contact_sheet(request: Request, batch_id: str) -> Response:
    """The batch's contact sheet (a PNG of its posters)."""
    from farm.client.contact_sheet import contact_sheet_png

    checked = batch_id_of(batch_id)
    png = contact_sheet_png(client_of(request), checked)
    return Response(png, media_type="image/png",
                    headers={"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"})


def report(request: Request, batch_id: str) -> HTMLResponse:
    """The batch's HTML report (served with a CSP that runs no script)."""
    from farm.client.contact_sheet import html_report

    checked = batch_id_of(batch_id)
    html = html_report(client_of(request), checked)
    headers = {**page_headers(""), "Content-Security-Policy": REPORT_CSP}
    return HTMLResponse(html, headers=headers)


#: (path under /ui, endpoint): every page.
PAGES: tuple[tuple[str, Callable[..., Any]], ...] = (
    ("/", home),
    ("/static/{name}", static_file),
    ("/batches", batches),
    ("/batches/{batch_id}", batch),
    ("/batches/{batch_id}/progress", batch_progress),
    ("/batches/{batch_id}/sheet.png", contact_sheet),
    ("/batches/{batch_id}/report.html", report),
    ("/jobs/{job_id}", job),
    ("/compare", compare),
    ("/library", library),
)


def make_pages_router() -> APIRouter:
    """The pages on one router."""
    router = APIRouter()
    for path, endpoint in PAGES:
        router.add_api_route(path, endpoint, methods=["GET"], include_in_schema=False)
    return router
