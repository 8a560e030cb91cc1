"""The status machine, enforced by the gateway.

Every allowed edge works and logs one event; every other pair raises IllegalTransition and writes
nothing (row unchanged, no event).
"""

from __future__ import annotations

import itertools

import pytest

from farm.errors import IllegalTransition, JobNotFound
from farm.ledger import Ledger
from farm.ledger.status import TERMINAL, TRANSITIONS, JobStatus, allowed_from, is_allowed, parse_status

ALL_PAIRS = list(itertools.product(JobStatus, JobStatus))
ALLOWED = sorted(TRANSITIONS)
DISALLOWED = [pair for pair in ALL_PAIRS if pair not in TRANSITIONS]


def _ids(pairs: list[tuple[JobStatus, JobStatus]]) -> list[str]:
    return [f"{a.value}->{b.value}" for a, b in pairs]


def put_in(ledger: Ledger, job_id: str, status: JobStatus) -> None:
    """Drive a queued job to ``status`` along legal edges."""
    if status is JobStatus.QUEUED:
        return
    if status is JobStatus.CANCELLED:
        ledger.cancel(job_id)
        return
    assert ledger.claim(job_id, worker_host="w1", worker_device="cpu", lease_s=60) is not None
    if status is JobStatus.SUCCEEDED:
        ledger.record_success(
            job_id, output_uri="file:///o.mp4", file_sha256="a" * 64, frames_sha256="b" * 64,
            effective_params={}, weights_fingerprint="wf", env_fingerprint={}, timings={},
        )
    elif status is JobStatus.FAILED:
        ledger.record_failure(job_id, error_type="Boom", error_message="boom", retry=False)
    assert ledger.get_job(job_id).status is status


# -- the machine itself (no database) ----------------------------------------------------------


def test_machine_has_exactly_the_documented_edges() -> None:
    Q, R, S, F, C = (JobStatus(s) for s in ("queued", "running", "succeeded", "failed", "cancelled"))
    assert set(TRANSITIONS) == {(Q, R), (Q, C), (Q, S), (R, S), (R, F), (R, C), (R, Q)}
    assert {s.value for s in JobStatus} == {"queued", "running", "succeeded", "failed", "cancelled"}
    assert {S, F, C} == TERMINAL
    for terminal in TERMINAL:
        assert terminal.terminal
        assert not any(is_allowed(terminal, to) for to in JobStatus)
    assert allowed_from(C) == {Q, R}
    assert allowed_from(Q) == {R}
    assert parse_status("running") is R
    with pytest.raises(ValueError, match="valid: queued"):
        parse_status("done")


# -- through the gateway -----------------------------------------------------------------------


@pytest.mark.parametrize(("source", "target"), ALLOWED, ids=_ids(ALLOWED))
def test_allowed_transition_changes_status_and_logs_one_event(ledger, make_job, source, target) -> None:
    job_id = ledger.add_job(make_job())
    put_in(ledger, job_id, source)
    before = ledger.events(job_id)

    after = ledger.transition(job_id, target, kind="test-edge", worker="w9", detail={"n": 1},
                              error_message="set in the same update")

    assert after.status is target
    assert after.error_message == "set in the same update"
    assert ledger.get_job(job_id) == after
    trail = ledger.events(job_id)
    assert trail[: len(before)] == before
    assert len(trail) == len(before) + 1
    event = trail[-1]
    assert (event.from_status, event.to_status) == (source, target)
    assert (event.kind, event.worker, event.detail) == ("test-edge", "w9", {"n": 1})
    assert event.at.tzinfo is not None


@pytest.mark.parametrize(("source", "target"), DISALLOWED, ids=_ids(DISALLOWED))
def test_disallowed_transition_raises_and_writes_nothing(ledger, make_job, source, target) -> None:
    job_id = ledger.add_job(make_job())
    put_in(ledger, job_id, source)
    row_before = ledger.get_job(job_id)
    events_before = ledger.events(job_id)

    with pytest.raises(IllegalTransition) as caught:
        ledger.transition(job_id, target, kind="test-edge", error_message="must not be written")

    error = caught.value
    assert (error.job_id, error.current, error.target) == (job_id, source.value, target.value)
    assert ledger.get_job(job_id) == row_before
    assert ledger.events(job_id) == events_before


def test_transition_of_unknown_job_raises_job_not_found(ledger) -> None:
    with pytest.raises(JobNotFound):
        ledger.transition("00000000-0000-0000-0000-000000000000", JobStatus.RUNNING, kind="x")


def test_transition_refuses_protected_or_unknown_columns(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job())
    before = ledger.get_job(job_id), ledger.events(job_id)
    for bad in ({"id": "other"}, {"no_such_column": 1}):
        with pytest.raises(ValueError, match="cannot set"):
            ledger.transition(job_id, JobStatus.RUNNING, kind="x", **bad)
    for kind in ("", "k" * 33):
        with pytest.raises(ValueError, match="event kind"):
            ledger.transition(job_id, JobStatus.RUNNING, kind=kind)
    assert (ledger.get_job(job_id), ledger.events(job_id)) == before


def test_failed_event_insert_rolls_back_the_status_change(ledger, make_job) -> None:
    """The UPDATE and the event are one transaction: if the event cannot be written, neither is."""
    job_id = ledger.add_job(make_job())
    before = ledger.get_job(job_id), ledger.events(job_id)
    with pytest.raises(Exception, match="not JSON serializable"):
        ledger.transition(job_id, JobStatus.RUNNING, kind="x", detail={"bad": object()})
    assert (ledger.get_job(job_id), ledger.events(job_id)) == before


def test_check_constraint_violation_writes_nothing(ledger, make_job) -> None:
    """The database's CHECK constraints hold on both backends; a rejected UPDATE writes nothing."""
    job_id = ledger.add_job(make_job())
    before = ledger.get_job(job_id), ledger.events(job_id)
    with pytest.raises(Exception):  # the driver error differs by backend
        ledger.transition(job_id, JobStatus.RUNNING, kind="x", progress=2.0)  # violates progress CHECK
    assert (ledger.get_job(job_id), ledger.events(job_id)) == before
