"""The producer API: :class:`Client` submits jobs and batches, follows them, and checks them.

Every operation validates all of its input first (a broken rule raises
:class:`~farm.errors.InvalidInput` naming the field and the rule, before anything is written or
enqueued), then writes the ledger in one transaction, then sends the wake-up messages
(:func:`farm.queue.enqueue.enqueue_jobs`, imported only when there is something to send). The
ledger is the source of truth: a job accepted but not yet sent (producer killed, broker down) is
sent by the next submission of the same batch or by the reaper; nothing accepted is lost.

Torch-free: no torch, diffusers, numpy, ``farm.engine`` or ``farm.worker.task``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from farm.client import reports
from farm.client.audit import audit_outputs, repair_item
from farm.client.library import LibraryOps
from farm.client.reads import ReadOps, check_id
from farm.client.reports import (
    AuditReport,
    BatchSubmission,
    CancelReport,
    JobSubmission,
    RepairItem,
    RepairReport,
    RerenderReport,
    StatusReport,
)
from farm.client.specs import build_specs
from farm.errors import (
    BatchNotFound,
    BrokerUnavailable,
    IllegalTransition,
    InvalidInput,
)
from farm.settings import DEFAULT_READY_TIMEOUT_S, Settings, get_settings
from farm.spec import recorded_spec_version

if TYPE_CHECKING:
    from farm.ledger import JobRecord, Ledger, NewJob
    from farm.ledger.records import Admission
    from farm.manifest import ExpandedBatch, Manifest
    from farm.spec import RenderSpec
    from farm.store import StoreBackend

log = logging.getLogger(__name__)

#: Messages sent per :func:`enqueue_jobs` call; a batch's ``sent_through`` is confirmed after
#: each (a producer killed half-way leaves at most this many sent but unconfirmed: sent twice).
SEND_CHUNK = 1000
#: Longest pause between two status reads of :meth:`Client.wait` (its backoff's cap), and the
#: first pause (reads back off from it, doubling).
DEFAULT_POLL_S = 1.0
FIRST_POLL_S = 0.25
#: Longest idempotency key accepted.
MAX_IDEMPOTENCY_KEY_CHARS = 200
#: Domain of the pseudo manifest digest that stores an idempotency key (never a manifest's digest,
#: which has its own domain).
IDEMPOTENCY_DOMAIN = "idem:"
#: Domain of the batch digest of a manifest submitted with ``no_cache``.
NO_CACHE_DOMAIN = "no-cache:"
#: Source name recorded for the pseudo batches of idempotent submissions and sweeps.
SUBMIT_SOURCE = "farm-submit"
SWEEP_SOURCE = "farm-sweep"
PROMOTE_SOURCE = "farm-promote"
#: Domain of the digest of a group that is new on every call (a sweep without idempotency key).
GROUP_DOMAIN = "group:"

def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def idempotency_digest(key: str) -> str:
    """The batch digest under which an idempotency key is stored."""
    return _sha256(IDEMPOTENCY_DOMAIN + key)


def check_idempotency_key(key: object) -> str:
    """``key`` if it is 1 to MAX_IDEMPOTENCY_KEY_CHARS printable characters, else :class:`InvalidInput`."""
    if not isinstance(key, str):
        raise InvalidInput.one("idempotency_key", "type", f"must be text, got {type(key).__name__}")
    if not 0 < len(key) <= MAX_IDEMPOTENCY_KEY_CHARS or not key.isprintable():
        raise InvalidInput.one(
            "idempotency_key", "idempotency_key",
            f"must be 1-{MAX_IDEMPOTENCY_KEY_CHARS} printable characters, got {len(key)} characters",
        )
    return key


def check_wait_args(timeout_s: object, poll_s: object) -> None:
    """Check :meth:`Client.wait`'s ``timeout_s`` (None or >= 0) and ``poll_s`` (> 0)."""
    if timeout_s is not None and (
        isinstance(timeout_s, bool) or not isinstance(timeout_s, int | float) or not 0 <= timeout_s < float("inf")
    ):
        raise InvalidInput.one("timeout_s", "non_negative", f"must be a number >= 0, got {timeout_s!r}")
    if isinstance(poll_s, bool) or not isinstance(poll_s, int | float) or not 0 < poll_s < float("inf"):
        raise InvalidInput.one("poll_s", "positive", f"must be a number > 0, got {poll_s!r}")


def check_flag(value: object, field: str) -> bool:
    """``value`` if it is a bool, else :class:`InvalidInput` on ``field``."""
    if not isinstance(value, bool):
        raise InvalidInput.one(field, "type", f"must be true or false, got {value!r}")
    return value


class Client(ReadOps, LibraryOps):
    """Producer operations on one ledger (and the broker and output store the settings name).

    ``Client()`` uses the process settings (``FARM_*``; with nothing set, the embedded ledger in
    ``FARM_DATA_DIR``) and closes the ledger it opened on :meth:`close` / ``with``. ``ledger``:
    use that ledger instead (not closed here); ``app`` is a Celery app to send with (default: the
    farm's app for ``settings``); ``store`` the output store (default: ``FARM_OUTPUT_URL``'s);
    ``sleep``/``monotonic`` drive :meth:`wait` (tests pass fakes).
    """

    def __init__(
        self,
        ledger: Ledger | None = None,
        settings: Settings | None = None,
        *,
        app: Any = None,
        owns_ledger: bool = False,
        store: StoreBackend | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        from farm.store import open_store

        self.settings = settings or get_settings()
        if ledger is None:
            from farm.ledger import Ledger

            ledger, owns_ledger = Ledger.from_settings(self.settings), True
        self.ledger = ledger
        self.store = store or open_store(self.settings)
        self._kinds: dict[str, str] = {}
        self._app = app
        self._owns_ledger = owns_ledger
        self._sleep = sleep
        self._monotonic = monotonic

    @classmethod
    def from_settings(cls, settings: Settings | None = None, *, app: Any = None) -> Client:
        """A client on the ledger and broker ``settings`` name (default: the process settings)."""
        from farm.ledger import Ledger

        settings = settings or get_settings()
        return cls(Ledger.from_settings(settings), settings, app=app, owns_ledger=True)

    # -- writing ---------------------------------------------------------------------------------
    def _admit(self, new_jobs: Sequence[NewJob]) -> tuple[Admission, int, int]:
        """Add jobs in ONE ledger transaction (recorded as sent) and send their messages right after the commit.

        Returns ``(admission, sent, not_sent)``. The cache answers only from outputs the store
        vouches for (a quick look at the file). Jobs whose message could not be sent get their
        mark cleared (the reaper sends them).
        """
        admitted = self.ledger.admit(new_jobs, output_ok=self.store.vouches, mark_sent=True)
        return (admitted, *self._send(admitted.to_send, marked=True))

    def _admit_batch(self, digest: str, name: str, source: str,
                     new_jobs: Sequence[NewJob]) -> tuple[Admission, int, int]:
        """:meth:`_admit` for a batch.

        One transaction, then the messages in ``batch_index`` order, the batch's ``sent_through``
        confirmed after each chunk (one row, not one per job). A producer killed while sending
        leaves the rest unconfirmed: submitting the same manifest again sends them (and the reaper
        does, after ``FARM_LOST_MESSAGE_GRACE_S``). A batch that existed sends its unconfirmed
        jobs.
        """
        admitted = self.ledger.admit_batch(digest, name, source, new_jobs, output_ok=self.store.vouches,
                                           mark_sent=True)
        assert admitted.batch_id is not None
        pairs, sent = admitted.to_send, 0
        for start in range(0, len(pairs), SEND_CHUNK):
            chunk = pairs[start : start + SEND_CHUNK]
            done, left = self._send(chunk, marked=True, unmark=False)
            sent += done
            if left:
                return admitted, sent, len(pairs) - start
            if start + len(chunk) < len(pairs):
                self.ledger.confirm_sent(admitted.batch_id, admitted.to_send_index[start + len(chunk) - 1])
        self.ledger.confirm_sent(admitted.batch_id, admitted.job_count - 1)
        return admitted, sent, 0

    def _submission(self, admitted: Admission, sent: int, not_sent: int, specs: Sequence[RenderSpec],
                    batch_id: str | None) -> JobSubmission:
        """What a submission did, from its admission.

        No read-back; a repeated idempotent request reads its first request's jobs.
        """
        first_id = admitted.job_ids[0]
        self._kinds.update(dict.fromkeys(admitted.job_ids, "job"))  # (a wait on them reads no kind)
        if batch_id is not None:
            self._kinds[batch_id] = "batch"
        seeds: list[int]
        strategy: str
        if admitted.created:
            seeds, strategy = [s.seed for s in specs], specs[0].seed_strategy
            status = "succeeded" if first_id in admitted.answered else "queued"
            cache_of = admitted.answered.get(first_id) or admitted.following.get(first_id)
        else:
            records = [self.ledger.get_job(j) for j in admitted.job_ids]
            seeds, strategy = [r.seed for r in records], records[0].seed_strategy
            status, cache_of = records[0].status.value, records[0].cache_of_job_id
        return JobSubmission(admitted.job_ids, admitted.created, sent, not_sent, seeds, strategy, batch_id,
                             status, cache_of)

    def close(self) -> None:
        """Close the ledger if this client opened it."""
        if self._owns_ledger:
            self.ledger.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- sending ---------------------------------------------------------------------------------
    def _celery(self) -> Any:
        if self._app is None:
            from farm.queue.app import get_app

            self._app = get_app(self.settings)
        return self._app

    def _send(self, pairs: Sequence[tuple[str, str]], *, marked: bool = False,
              unmark: bool = True) -> tuple[int, int]:
        """Send ``(job_id, route)`` wake-ups in chunks; ``(sent, not_sent)``.

        ``marked``: the jobs were recorded as sent when they were added (else each chunk is
        marked once sent). When the broker stays unreachable (``FARM_SEND_TIMEOUT_S``) the rest
        stay queued with ``enqueued_at`` NULL: the reaper (or the next submission of the same
        batch) sends them.
        """
        if not pairs:
            return 0, 0
        from farm.queue.enqueue import enqueue_jobs

        sent = 0
        budget_s = self.settings.send_timeout_s
        for start in range(0, len(pairs), SEND_CHUNK):
            chunk = pairs[start : start + SEND_CHUNK]
            try:
                sent += enqueue_jobs(self.ledger, chunk, app=self._celery(), settings=self.settings,
                                     max_total_s=budget_s, mark=not marked)
            except BrokerUnavailable as exc:
                unsent = [job_id for job_id, _ in pairs[start:]]
                self.last_send_error = str(exc)
                if marked and unmark:
                    self.ledger.unmark_enqueued(unsent)
                log.warning("broker unavailable (%s): %d accepted job(s) left for the reaper to send", exc,
                            len(unsent))
                return sent, len(unsent)
        return sent, 0

    #: The broker error of the last send that left jobs unsent (for messages to people).
    last_send_error: str | None = None

    def _new_job(self, spec: Any, **kwargs: Any) -> NewJob:
        from farm.ledger import NewJob

        return NewJob.from_spec(spec, max_attempts=self.settings.max_attempts, **kwargs)

    # -- submitting ------------------------------------------------------------------------------
    def submit(
        self,
        prompt: str,
        *,
        seed: int | None = None,
        seed_from_prompt: bool = False,
        salt: str = "",
        sweep: tuple[int, int] | None = None,
        model: str | None = None,
        priority: str = "interactive",
        no_cache: bool = False,
        idempotency_key: str | None = None,
        **spec_fields: Any,
    ) -> list[str]:
        """Submit one render (a ``sweep=(base, radius)`` submits one per seed); the job ids.

        See :meth:`submit_detailed`.
        """
        return self.submit_detailed(
            prompt, seed=seed, seed_from_prompt=seed_from_prompt, salt=salt, sweep=sweep, model=model,
            priority=priority, no_cache=no_cache, idempotency_key=idempotency_key, **spec_fields,
        ).job_ids

    def submit_detailed(
        self,
        prompt: str,
        *,
        seed: int | None = None,
        seed_from_prompt: bool = False,
        salt: str = "",
        sweep: tuple[int, int] | None = None,
        model: str | None = None,
        priority: str = "interactive",
        no_cache: bool = False,
        idempotency_key: str | None = None,
        **spec_fields: Any,
    ) -> JobSubmission:
        """Submit one render, or a seed sweep around ``sweep=(base, radius)``.

        ``spec_fields`` are the other render spec fields (``width``, ``steps``, ``tags``, ...).
        A job identical to a succeeded one (same job key, same weights) is answered from it at
        once; one identical to a queued or running job follows it; neither is enqueued.
        ``no_cache`` renders regardless. With ``idempotency_key``, a repeated call returns the
        first call's job ids and creates nothing (the key is stored as a batch).
        """
        check_flag(no_cache, "no_cache")
        key = None if idempotency_key is None else check_idempotency_key(idempotency_key)
        specs = build_specs(
            prompt, seed=seed, seed_from_prompt_flag=seed_from_prompt, salt=salt, sweep_of=sweep, model=model,
            priority=priority, fields=spec_fields,
        )
        if key is None and len(specs) == 1:
            # One ledger transaction (insert, dedup, marked sent), then one publish.
            admitted, sent, not_sent = self._admit([self._new_job(specs[0], no_cache=no_cache)])
            return self._submission(admitted, sent, not_sent, specs, None)
        # Several jobs (a sweep), or an idempotency key: one batch, so one id follows them all.
        new_jobs = [self._new_job(s, no_cache=no_cache, batch_index=i) for i, s in enumerate(specs)]
        if key is None:
            digest, name = _sha256(GROUP_DOMAIN + str(uuid.uuid4())), f"sweep {sweep[0]}±{sweep[1]}" if sweep else ""
        else:
            digest, name = idempotency_digest(key), f"submit {key}"
        admitted, sent, not_sent = self._admit_batch(digest, name[:255], SUBMIT_SOURCE, new_jobs)
        return self._submission(admitted, sent, not_sent, specs, admitted.batch_id)

    def submit_batch(
        self, manifest: str | os.PathLike[str] | Manifest | ExpandedBatch, *, no_cache: bool = False
    ) -> BatchSubmission:
        """Submit a manifest (a path, a loaded :class:`~farm.manifest.Manifest` or an expanded batch).

        Every item is validated first (any problem raises :class:`~farm.errors.ManifestError`;
        nothing is written or sent), all jobs are written in one transaction (``batch_index``
        = position in the expansion), then sent.

        The batch is identified by the manifest digest: submitting the same manifest again
        returns the same batch id, writes nothing and sends only the jobs never sent (the
        recovery path after a producer died between commit and send). With ``no_cache`` the
        batch is a different one (its digest is derived from the manifest's): every job renders.
        """
        check_flag(no_cache, "no_cache")
        batch = self._expanded(manifest)
        digest = batch.digest if not no_cache else _sha256(NO_CACHE_DOMAIN + batch.digest)
        new_jobs = [self._new_job(j.spec, no_cache=no_cache, batch_index=i, job_key=j.job_key)
                    for i, j in enumerate(batch.jobs)]
        name = batch.name or Path(batch.source).stem or batch.source
        admitted, sent, not_sent = self._admit_batch(digest, name, batch.source, new_jobs)
        assert admitted.batch_id is not None
        return BatchSubmission(admitted.batch_id, admitted.created, len(new_jobs), sent, not_sent, name, digest)

    @staticmethod
    def _expanded(manifest: Any) -> ExpandedBatch:
        from farm.manifest import ExpandedBatch, Manifest, expand, load_manifest

        if isinstance(manifest, ExpandedBatch):
            if not manifest.ok:
                raise manifest.error()
            return manifest
        if isinstance(manifest, Manifest):
            return expand(manifest)
        if isinstance(manifest, str | os.PathLike):
            return expand(load_manifest(manifest))
        raise InvalidInput.one(
            "manifest", "type", f"must be a path, a Manifest or an ExpandedBatch, got {type(manifest).__name__}"
        )

    # -- following -------------------------------------------------------------------------------
    def _now(self) -> datetime:
        return datetime.now(UTC)

    def _kind(self, any_id: object) -> str:
        """``"batch"`` or ``"job"``; :class:`JobNotFound` when it is neither.

        (Remembered: an id's kind never changes.)
        """
        checked = check_id(any_id)
        kind = self._kinds.get(checked)
        if kind is None:
            try:
                self.ledger.get_batch(checked)
                kind = "batch"
            except BatchNotFound:
                self.ledger.get_job(checked)  # raises JobNotFound
                kind = "job"
            self._kinds[checked] = kind
        return kind

    def status(self, any_id: str | Sequence[str]) -> StatusReport:
        """Counts per status, progress and ETA of a job, a batch, or several of them together.

        For several (``kind`` "group"), their jobs are counted once each. Every id is checked
        first (:class:`~farm.errors.JobNotFound` names an unknown one). With queued jobs,
        ``waiting`` says why any of them cannot start (:meth:`waiting`).
        """
        report = self._counts(any_id)
        if report.counts.get("queued", 0) == 0:
            return report
        return StatusReport(**{**report.__dict__, "waiting": self.waiting(any_id)})

    def readiness(self, timeout_s: float = DEFAULT_READY_TIMEOUT_S) -> dict[str, bool]:
        """Whether the ledger and the broker answer now: ``{"ledger": ..., "broker": ...}``."""
        from farm.queue.enqueue import broker_reachable

        try:
            self.ledger.ping()
            ledger_ok = True
        except Exception as exc:  # any failure means "not ready"; the reason is logged, not shown
            log.warning("ledger not reachable: %s: %s", type(exc).__name__, exc)
            ledger_ok = False
        return {"ledger": ledger_ok, "broker": broker_reachable(self._celery(), timeout_s)}

    def waiting(self, any_id: str | Sequence[str]) -> tuple[str, ...]:
        """Why the queued jobs of a job, a batch or several cannot start (empty: they wait their turn).

        A job's queue is its class and its model; only workers that serve the model consume it, so
        a job whose model no live worker serves stays queued (it is not lost, and starts as soon as
        such a worker comes up).
        """
        ids = [any_id] if isinstance(any_id, str) else list(any_id)
        queued: dict[str, int] = {}
        for one in dict.fromkeys(check_id(i) for i in ids):
            kind = self._kind(one)
            found = (self.ledger.queued_models(batch_id=one) if kind == "batch"
                     else self.ledger.queued_models(job_ids=[one]))
            for model, n in found.items():
                queued[model] = queued.get(model, 0) + n
        if not queued:
            return ()
        return reports.waiting_reasons(queued, self.ledger.list_workers(), self._now(), self.settings.worker_stale_s)

    def _counts(self, any_id: str | Sequence[str]) -> StatusReport:
        if isinstance(any_id, str):
            return self._status_one(check_id(any_id))
        ids = list(dict.fromkeys(check_id(i) for i in any_id))
        if not ids:
            raise InvalidInput.one("ids", "min_1", "give at least one job or batch id")
        if len(ids) == 1:
            return self._status_one(ids[0])
        job_ids: dict[str, None] = {}
        for checked in ids:
            job_ids.update(dict.fromkeys(j.id for j in self._jobs_of(checked, self._kind(checked))))
        pace = self.ledger.pace(job_ids=list(job_ids))
        return reports.group_status(f"{len(ids)} ids", "group", pace, self._now())

    def _status_one(self, checked: str) -> StatusReport:
        if self._kind(checked) == "job":  # (a wait's hot path: the kind is remembered, one narrow read)
            return reports.job_status(self.ledger.job_progress(checked), self._now())
        return reports.group_status(checked, "batch", self.ledger.pace(batch_id=checked), self._now())

    def wait(
        self,
        any_id: str | Sequence[str],
        timeout_s: float | None = None,
        poll_s: float = DEFAULT_POLL_S,
        on_progress: Callable[[StatusReport], None] | None = None,
    ) -> StatusReport:
        """Wait until every job of one id or several finished, or ``timeout_s`` passed.

        Then the report has ``timed_out=True``. ``on_progress`` sees every report.

        On Postgres the ledger tells: the wait returns as soon as the last job's final status is
        committed (``LISTEN``/``NOTIFY``, see :mod:`farm.ledger.notify`), and reads the status in
        between only to refresh ``on_progress`` (without one, only every ``poll_s`` as a safety
        net). On SQLite it polls. Status reads back off from :data:`FIRST_POLL_S` to ``poll_s``
        apart.
        """
        check_wait_args(timeout_s, poll_s)
        deadline = None if timeout_s is None else self._monotonic() + timeout_s
        first = min(FIRST_POLL_S, poll_s)
        interval = first
        with self.ledger.listen() as listener:  # before reading statuses: no announcement is missed
            report = self._read_status(any_id)
            pending = self._pending(any_id, report)
            # (with a live listener and nobody watching progress, read again only when told)
            told_only = listener.live and on_progress is None
            if told_only:
                interval = poll_s
            while True:
                if on_progress is not None:
                    on_progress(report)
                if report.finished:
                    return report
                left = None if deadline is None else deadline - self._monotonic()
                if left is not None and left <= 0:
                    timed_out = StatusReport(**{**report.__dict__, "timed_out": True})
                    if on_progress is not None:
                        on_progress(timed_out)
                    return timed_out
                pause = interval if left is None else min(interval, left)
                if not listener.live:
                    self._sleep(pause)
                    interval = min(interval * 2, poll_s)
                elif listener.wait(pending, pause):
                    interval = poll_s if told_only else first
                    told = self._told(any_id, report, listener.final)
                    if told is not None:  # one job, and the announcement said how it ended: no read
                        report = told
                        continue
                else:
                    interval = min(interval * 2, poll_s)
                report = self._read_status(any_id)

    @staticmethod
    def _told(any_id: str | Sequence[str], report: StatusReport, final: Mapping[str, Any]) -> StatusReport | None:
        """The final report of a one-job wait from its announcement (None: read it)."""
        if report.kind != "job" or not isinstance(any_id, str) or report.id not in final:
            return None
        return reports.final_job_status(report.id, final[report.id])

    def _read_status(self, any_id: str | Sequence[str]) -> StatusReport:
        self.status_reads += 1
        return self._counts(any_id)

    def _pending(self, any_id: str | Sequence[str], report: StatusReport) -> set[str]:
        """The ids a wait listens for: one job's from its report, else a read of the unfinished."""
        if report.finished:
            return set()
        if report.kind == "job" and isinstance(any_id, str):
            return {check_id(any_id)}
        return self._unfinished(any_id)

    #: How many times :meth:`wait` read the status (benchmarks count them).
    status_reads = 0

    def _unfinished(self, any_id: str | Sequence[str]) -> set[str]:
        ids = [any_id] if isinstance(any_id, str) else list(any_id)
        pending: set[str] = set()
        for one in ids:
            checked = check_id(one)
            kind = self._kind(checked)
            pending |= self.ledger.unfinished(batch_id=checked) if kind == "batch" else self.ledger.unfinished(
                job_ids=[checked])
        return pending

    def _jobs_of(self, checked: str, kind: str) -> list[JobRecord]:
        return self.ledger.batch_jobs(checked) if kind == "batch" else [self.ledger.get_job(checked)]

    def results(self, batch_id: str) -> list[dict[str, Any]]:
        """One row per job of the batch, in manifest order (a job id gives its one row).

        Each row: prompt, seed, seed_strategy, params, output path, file and frames sha256,
        timings, status, cache_of, ...
        """
        checked = check_id(batch_id, "batch_id")
        rows = []
        for job in self._jobs_of(checked, self._kind(checked)):
            rows.append(reports.result_row(job, self.store.where(job.output_uri)))
        return rows

    # -- changing --------------------------------------------------------------------------------
    def cancel(self, any_id: str) -> CancelReport:
        """Cancel a job, or every queued and running job of a batch.

        Running ones first; a worker sees it at its next heartbeat. Finished jobs are left alone
        and listed.
        """
        checked = check_id(any_id)
        kind = self._kind(checked)
        jobs = self._jobs_of(checked, kind)
        report = CancelReport(checked, kind)
        order = sorted(jobs, key=lambda j: (j.status.value != "running", j.batch_index or 0))
        for job in order:
            if job.terminal:
                report.unchanged[job.id] = job.status.value
                continue
            try:
                self.ledger.cancel(job.id, detail={"by": "client", "target": checked})
                report.cancelled.append(job.id)
            except IllegalTransition:  # finished since we looked
                report.unchanged[job.id] = self.ledger.get_job(job.id).status.value
        return report

    def star(self, job_id: str, starred: bool = True) -> bool:
        """Star (or unstar) a job; False when it already was."""
        check_flag(starred, "starred")
        return self.ledger.set_starred(check_id(job_id, "job_id"), starred)

    def _succeeded(self, job_id: str, why: str) -> JobRecord:
        job = self.ledger.get_job(check_id(job_id, "job_id"))
        if job.status.value != "succeeded":
            raise InvalidInput.one("job_id", "succeeded", f"{why}; job {job.id} is {job.status.value}")
        return job

    def sweep(self, job_id: str, radius: int, *, priority: str | None = None, no_cache: bool = False) -> list[str]:
        """The new jobs' ids of :meth:`sweep_detailed`."""
        return self.sweep_detailed(job_id, radius, priority=priority, no_cache=no_cache).job_ids

    def sweep_detailed(self, job_id: str, radius: int, *, priority: str | None = None,
                       no_cache: bool = False) -> JobSubmission:
        """Jobs for the neighbours of a succeeded job's seed, in one new batch.

        The seeds ``seed - radius .. seed + radius`` without the seed itself (invalid seeds
        skipped), the same spec otherwise, strategy ``sweep``, ``parent_job_id`` = the job; the
        batch's id follows them all. Any succeeded job may be swept (starring is a bookmark, not
        a gate); a job that has not succeeded is refused.
        """
        from farm.seeds import sweep as sweep_seeds
        from farm.spec import parse_spec

        checked = check_id(job_id, "job_id")
        check_flag(no_cache, "no_cache")
        sweep_seeds(0, radius)  # the radius rule, checked before any lookup
        if radius == 0:
            raise InvalidInput.one("radius", "min_1", "must be at least 1 (radius 0 selects no neighbours)")
        parent = self._succeeded(checked, "only a succeeded job's seed can be swept")
        seeds = sweep_seeds(parent.seed, radius, include_base=False)
        data = parent.spec().model_dump()
        data.update(seed=seeds[0], seed_strategy="sweep")
        if priority is not None:
            data["priority"] = priority
        first = parse_spec(data)
        specs = [first, *(first.model_copy(update={"seed": s}) for s in seeds[1:])]
        new_jobs = [self._new_job(s, parent_job_id=parent.id, no_cache=no_cache, batch_index=i)
                    for i, s in enumerate(specs)]
        admitted, sent, not_sent = self._admit_batch(
            _sha256(GROUP_DOMAIN + str(uuid.uuid4())), f"sweep {parent.seed}±{radius} of job {parent.id}",
            SWEEP_SOURCE, new_jobs)
        return self._submission(admitted, sent, not_sent, specs, admitted.batch_id)

    def promote(self, job_ids: str | Sequence[str], *, priority: str | None = None) -> JobSubmission:
        """Render succeeded drafts again at the ``final`` preset, each as a child job.

        For each job (a ``draft`` or ``custom`` preset render that succeeded): the same prompt,
        negative prompt, seed, model, size, frames, fps, guidance, sampler and flow settings,
        preset ``final`` (the profile's full steps, no step caching), ``parent_job_id`` = the
        draft. Several jobs become one batch (its id follows them all). A final render that
        already exists answers from the cache.
        """
        from farm.spec import parse_spec

        ids = [job_ids] if isinstance(job_ids, str) else list(dict.fromkeys(job_ids))
        if not ids:
            raise InvalidInput.one("job_ids", "min_1", "give at least one draft job id")
        specs, new_jobs = [], []
        for index, job_id in enumerate(ids):
            parent = self.ledger.get_job(check_id(job_id, "job_id"))
            if parent.params.get("preset", "final") == "final":
                raise InvalidInput.one("job_id", "not_a_draft", f"job {parent.id} is already a final render")
            if parent.status.value != "succeeded":
                raise InvalidInput.one("job_id", "succeeded", f"only a succeeded draft can be promoted; job "
                                       f"{parent.id} is {parent.status.value}")
            data = parent.spec().model_dump()
            data.update(preset="final", cache_threshold=None, steps=None, allow_degrade=False)
            if priority is not None:
                data["priority"] = priority
            spec = parse_spec(data)
            specs.append(spec)
            new_jobs.append(self._new_job(spec, parent_job_id=parent.id, batch_index=index if len(ids) > 1 else None))
        if len(new_jobs) == 1:
            admitted, sent, not_sent = self._admit(new_jobs)
            return self._submission(admitted, sent, not_sent, specs, None)
        admitted, sent, not_sent = self._admit_batch(
            _sha256(GROUP_DOMAIN + str(uuid.uuid4())), f"promote {len(ids)} draft(s) to final", PROMOTE_SOURCE,
            new_jobs)
        return self._submission(admitted, sent, not_sent, specs, admitted.batch_id)

    # -- checking --------------------------------------------------------------------------------
    def rerender(
        self, job_id: str, wait: bool = False, timeout_s: float | None = None, poll_s: float = DEFAULT_POLL_S
    ) -> RerenderReport:
        """Render a succeeded job again from its recorded canonical spec (``no_cache``, parent recorded).

        With ``wait``, report whether the frames hash matched and, on a mismatch, what differs
        between the two renders' environments, weights and effective parameters.
        """
        check_flag(wait, "wait")
        check_wait_args(timeout_s, poll_s)
        parent = self._succeeded(job_id, "only a succeeded job can be re-rendered and compared")
        child_id = self._admit([self._rerender_job(parent)])[0].job_ids[0]
        timed_out = False
        if wait:
            timed_out = self.wait(child_id, timeout_s=timeout_s, poll_s=poll_s).timed_out
        return reports.rerender_report(parent, self.ledger.get_job(child_id), timed_out=timed_out)

    def _rerender_job(self, parent: JobRecord) -> NewJob:
        """A new job that renders ``parent``'s recorded spec again (never from the cache, never degraded under load).

        A parent that rendered degraded is rendered at its effective parameters: the same frames.
        """
        from dataclasses import replace

        from farm.spec import spec_from_canonical

        # the recorded canonical form must give the recorded key (under the spec version it was made with)
        if recorded_spec_version(parent.params, parent.job_key) is None:
            raise InvalidInput.one("job_id", "canonical", f"job {parent.id}'s recorded spec no longer gives its key")
        spec = parent.spec()  # (a farm.spec/1 seed above 2^32-1 comes back as the seed the generator used)
        if parent.degraded_reason is not None and parent.effective_params:
            spec = spec_from_canonical(parent.effective_params)
        return replace(self._new_job(spec, parent_job_id=parent.id, no_cache=True), allow_degrade=False)

    def rerender_report(self, child_id: str) -> RerenderReport:
        """The report of an earlier :meth:`rerender` (by the re-render's job id)."""
        child = self.ledger.get_job(check_id(child_id, "job_id"))
        if child.parent_job_id is None:
            raise InvalidInput.one("job_id", "rerender", f"job {child.id} is not a re-render (no parent)")
        return reports.rerender_report(self.ledger.get_job(child.parent_job_id), child)

    def audit(self, batch_id: str | None = None) -> AuditReport:
        """Re-hash every succeeded job's stored file against the ledger's record; write the verdicts to the ledger.

        Of one batch, or all. A missing or corrupt output is never answered from by the cache
        (until a render writes it again).
        """
        return self._audit(batch_id)[0]

    def _audit(self, batch_id: str | None) -> tuple[AuditReport, list[JobRecord]]:
        checked = None if batch_id is None else check_id(batch_id, "batch_id")
        if checked is not None:
            self.ledger.get_batch(checked)  # BatchNotFound for an unknown id
        jobs = self.ledger.succeeded_jobs(batch_id=checked)
        if jobs and not self.store.present():
            raise InvalidInput.one(
                "output_dir", "store_present",
                f"the output store {self.store.location} cannot be reached from this machine: run the audit where "
                "FARM_OUTPUT_DIR is mounted or FARM_OUTPUT_URL's store is reachable (auditing here would find every "
                "output missing)")
        recorded = self.ledger.outputs_of([j.output_uri for j in jobs if j.output_uri])
        report, marks = audit_outputs(jobs, self.store, recorded)
        self.ledger.mark_outputs(marks)
        return report, jobs

    def repair(
        self, batch_id: str | None = None, *, timeout_s: float | None = None, poll_s: float = DEFAULT_POLL_S,
        on_progress: Callable[[StatusReport], None] | None = None,
    ) -> RepairReport:
        """Audit (of one batch, or all), then repair each missing or corrupt output.

        For each: move its directory to the store's quarantine, render the job that made it
        again (never from the cache), wait, and check that the same frames came back and the
        stored file is intact again. Ends with a second audit of the same scope.
        """
        check_wait_args(timeout_s, poll_s)
        before, jobs = self._audit(batch_id)
        bad = {e.job_id: "corrupt" for e in before.corrupt} | {e.job_id: "missing" for e in before.missing}
        by_uri: dict[str, list[JobRecord]] = {}
        for job in jobs:
            if job.id in bad and job.output_uri:
                by_uri.setdefault(job.output_uri, []).append(job)
        if not by_uri:
            return RepairReport(before, [])
        plans: list[tuple[str, str, list[JobRecord], JobRecord, str | None, str]] = []
        to_send: list[tuple[str, str]] = []
        for uri, pointing in by_uri.items():
            roots = [j for j in pointing if j.cache_of_job_id is None] or pointing
            parent = max(roots, key=lambda j: (j.finished_at or j.created_at, j.id))
            new_job = self._rerender_job(parent)
            quarantined = self.store.quarantine(uri, f"repair: output {bad[parent.id]}")
            admitted = self.ledger.admit([new_job], output_ok=self.store.vouches, mark_sent=True)
            to_send += admitted.to_send
            child_id = admitted.job_ids[0]
            plans.append((uri, bad[parent.id], pointing, parent, None if quarantined is None else str(quarantined),
                          child_id))
        child_ids = [plan[5] for plan in plans]
        _, not_sent = self._send(to_send, marked=True)
        if not_sent:
            raise BrokerUnavailable(
                f"{not_sent} re-render job(s) recorded but not sent ({self.last_send_error}); a worker's reaper "
                f"sends them when the broker is back: {', '.join(child_ids)}")
        waited = self.wait(child_ids, timeout_s=timeout_s, poll_s=poll_s, on_progress=on_progress)
        items: list[RepairItem] = []
        for uri, found, pointing, parent, moved, child_id in plans:
            child = self.ledger.get_job(child_id)
            restored = None
            if child.status.value == "succeeded" and child.output_uri:
                output = self.ledger.output(child.output_uri)
                expected = output.file_sha256 if output is not None else str(child.file_sha256)
                restored = self.store.check(uri, expected)
            item = repair_item(uri, found, pointing, parent, child, quarantined=moved, restored=restored)
            if item.file_rewritten and restored is not None and restored.actual_sha256:
                self.ledger.replace_output_hash(uri, restored.actual_sha256, reason=f"repair by job {child.id}")
            items.append(item)
        after = self._audit(batch_id)[0] if not waited.timed_out else None
        return RepairReport(before, items, after, waited.timed_out)


__all__ = ["Client", "check_flag", "check_id", "check_idempotency_key", "check_wait_args", "idempotency_digest"]
