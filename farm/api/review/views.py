"""What the review room's pages show, read through the app's :class:`farm.client.Client`.

Plain dicts for the templates (and the live-progress JSON): batches with their counts, jobs as
tiles (prompt, seed, status, star, labels, tags, the ``/v1`` poster and video URLs once
succeeded), pages of both. Never a file path: the media come from the ``/v1`` download routes.
The filters are checked here (:func:`check_filters`): a bad one names its field and rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from farm.errors import InvalidInput, Problem
from farm.ledger.status import JobStatus

if TYPE_CHECKING:
    from farm.client import Client
    from farm.client.reads import BatchView
    from farm.ledger.records import JobRecord

#: Tiles per page of a batch or of the seed library; batches per page of the list.
JOBS_PER_PAGE = 48
BATCHES_PER_PAGE = 20
#: Longest filter text accepted (prompt substring, tag, label).
MAX_FILTER_CHARS = 200
#: Jobs a compare view shows: a selection of 2-4; all seeds of one prompt up to the cap.
COMPARE_MIN, COMPARE_MAX = 2, 4
PROMPT_COMPARE_MAX = 12
#: Sweep radius the page's form allows.
SWEEP_RADIUS_MIN, SWEEP_RADIUS_MAX = 1, 10
#: Presets a promote button is shown for.
DRAFT_PRESETS = frozenset({"draft", "custom"})
STATUSES = tuple(s.value for s in JobStatus)


@dataclass(frozen=True)
class Filters:
    """A grid's filters (empty text: no filter)."""

    status: str = ""
    prompt: str = ""
    tag: str = ""
    label: str = ""

    def query(self) -> dict[str, str]:
        """The filters set, as query parameters."""
        return {k: v for k, v in (("status", self.status), ("prompt", self.prompt), ("tag", self.tag),
                                  ("label", self.label)) if v}


def check_filters(status: str, prompt: str, tag: str, label: str) -> Filters:
    """The filters, or :class:`InvalidInput` naming each bad one."""
    problems: list[Problem] = []
    if status and status not in STATUSES:
        problems.append(Problem("status", "known_status", f"must be one of {', '.join(STATUSES)}"))
    for name, value in (("prompt", prompt), ("tag", tag), ("label", label)):
        if len(value) > MAX_FILTER_CHARS:
            problems.append(Problem(name, "max_length", f"must be at most {MAX_FILTER_CHARS} characters"))
        elif not value.isprintable():
            problems.append(Problem(name, "printable", "must be printable text"))
    if problems:
        raise InvalidInput(problems)
    return Filters(status=status, prompt=prompt.strip(), tag=tag.strip(), label=label.strip())


def check_page(page: int) -> int:
    """A 1-based page number."""
    if page < 1:
        raise InvalidInput.one("page", "min_1", f"must be 1 or more, got {page}")
    return page


def parse_labels(text: str) -> list[str]:
    """Labels typed as ``a, b, c`` (the client checks each label's rules)."""
    return [part.strip() for part in text.replace("\n", ",").split(",") if part.strip()]


def job_labels(job: JobRecord) -> list[str]:
    """The job's labels (its seed-library marks)."""
    return sorted(job.labels)


def tile(job: JobRecord) -> dict[str, Any]:
    """A job as a grid tile (and as a live-progress entry)."""
    ready = job.status is JobStatus.SUCCEEDED
    preset = str(job.params.get("preset", "final"))
    return {
        "id": job.id,
        "batch_id": job.batch_id,
        "prompt": job.prompt,
        "seed": job.seed,
        "status": job.status.value,
        "terminal": job.status.terminal,
        "starred": job.starred,
        "labels": job_labels(job),
        "tags": [f"{k}={v}" for k, v in sorted(job.tags.items())],
        "preset": preset,
        "promotable": ready and preset in DRAFT_PRESETS,
        "size": f"{job.params.get('width', '?')}x{job.params.get('height', '?')}",
        "frames": job.params.get("num_frames"),
        "parent_job_id": job.parent_job_id,
        "error": job.error_message if job.status is JobStatus.FAILED else None,
        "poster_url": f"/v1/jobs/{job.id}/poster" if ready else None,
        "video_url": f"/v1/jobs/{job.id}/video" if ready else None,
    }


def batch_row(view: BatchView) -> dict[str, Any]:
    """A batch with its counts per status and how many of its jobs finished."""
    batch = view.batch
    return {
        "id": batch.id,
        "name": batch.name or batch.source_name or batch.id[:8],
        "source_name": batch.source_name,
        "created_at": batch.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        "job_count": batch.job_count,
        "counts": view.counts,
        "finished": view.finished,
        "done": view.done,
        "percent": 100 if not batch.job_count else int(100 * view.finished / batch.job_count),
    }


@dataclass(frozen=True)
class Page:
    """One page of a listing: its items and whether there are more."""

    items: list[dict[str, Any]]
    number: int
    has_next: bool

    @property
    def has_prev(self) -> bool:
        """True past the first page."""
        return self.number > 1


def batches_page(client: Client, page: int) -> Page:
    """Batches, newest first, with their counts."""
    found = client.list_batches(limit=BATCHES_PER_PAGE + 1, offset=(page - 1) * BATCHES_PER_PAGE)
    return Page([batch_row(v) for v in found[:BATCHES_PER_PAGE]], page, len(found) > BATCHES_PER_PAGE)


def jobs_page(client: Client, filters: Filters, page: int, *, batch_id: str | None = None,
              starred: bool | None = None) -> Page:
    """Tiles of the jobs that pass ``filters`` (of one batch, or starred), one page of them."""
    found = client.list_jobs(
        batch_id=batch_id, status=filters.status or None, prompt=filters.prompt or None, tag=filters.tag or None,
        label=filters.label or None, starred=starred, limit=JOBS_PER_PAGE + 1, offset=(page - 1) * JOBS_PER_PAGE)
    shown = found[:JOBS_PER_PAGE]
    if batch_id is not None:  # a batch's page in manifest order (prompts together, their seeds side by side)
        shown.sort(key=lambda j: (j.batch_index is None, j.batch_index or 0, j.seed))
    return Page([tile(j) for j in shown], page, len(found) > JOBS_PER_PAGE)


def library_page(client: Client, filters: Filters, page: int) -> Page:
    """The seed library: starred jobs, or the jobs with a label when one is asked for."""
    return jobs_page(client, filters, page, starred=None if filters.label else True)


def compare_jobs(client: Client, job_ids: list[str]) -> list[dict[str, Any]]:
    """Tiles of 2-4 chosen jobs, in the order chosen."""
    ids = list(dict.fromkeys(job_ids))
    if not COMPARE_MIN <= len(ids) <= COMPARE_MAX:
        raise InvalidInput.one("job", "count", f"choose {COMPARE_MIN} to {COMPARE_MAX} different jobs to compare, "
                               f"got {len(ids)}")
    return [tile(client.get_job(j)) for j in ids]


def prompt_seeds(client: Client, job_id: str) -> list[dict[str, Any]]:
    """Tiles of the jobs of ``job_id``'s batch with its exact prompt (its seeds), by seed."""
    job = client.get_job(job_id)
    if job.batch_id is None:
        return [tile(job)]
    same = client.list_jobs(batch_id=job.batch_id, prompt=job.prompt, limit=PROMPT_COMPARE_MAX * 4)
    chosen = [j for j in same if j.prompt == job.prompt][:PROMPT_COMPARE_MAX]
    return [tile(j) for j in sorted(chosen, key=lambda j: j.seed)]


def check_radius(text: str) -> int:
    """A sweep radius from the page's form: a whole number 1-10."""
    try:
        radius = int(text)
    except ValueError:
        raise InvalidInput.one("radius", "type", f"must be a whole number, got {text[:20]!r}") from None
    if not SWEEP_RADIUS_MIN <= radius <= SWEEP_RADIUS_MAX:
        raise InvalidInput.one("radius", "range", f"must be {SWEEP_RADIUS_MIN}-{SWEEP_RADIUS_MAX}, got {radius}")
    return radius
