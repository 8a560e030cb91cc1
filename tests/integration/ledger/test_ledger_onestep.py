"""The hot writes as single statements on Postgres (farm.ledger.onestep), and what they keep.

A claim and a success are one statement each; a success is announced with its final status; the
followers of a job whose success was committed on its own are still answered — also those a
producer adds while the success commits (it waits for the dedup lock after the commit), and, by the
reaper, those of a worker that died in between. SQLite runs the same calls as transactions: the
behaviour tests run on both.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import psycopg
import pytest
from ledger_helpers import statements

from farm.errors import IllegalTransition
from farm.ledger import JobStatus, Ledger
from farm.ledger import db as ledger_db
from farm.ledger import queueing as q
from farm.ledger.queueing import DONE_CHANNEL, done_payload, parse_done

WEIGHTS = "wf-1"
S, Q = JobStatus.SUCCEEDED, JobStatus.QUEUED


def claim(ledger: Ledger, job_id: str, host: str = "w1"):
    return ledger.claim(job_id, worker_host=host, worker_device="cuda:0", lease_s=60)


def succeed(ledger: Ledger, job_id: str, *, worker_host: str | None = "w1"):
    return ledger.record_success(
        job_id, output_uri=f"file:///out/{job_id}.mp4", file_sha256="f" * 64, frames_sha256="e" * 64,
        effective_params={"steps": 4}, weights_fingerprint=WEIGHTS, env_fingerprint={"torch": "2.13.0"},
        timings={"render_s": 1.5}, worker_host=worker_host, size_bytes=10,
    )


def test_done_payload_round_trip() -> None:
    assert parse_done(done_payload("abc", S)) == ("abc", S)
    assert parse_done("abc") == ("abc", None)  # an older writer's bare id
    assert parse_done("abc queued") == ("abc", None)  # not a final status


@pytest.mark.postgres
def test_claim_and_success_are_one_statement_each_on_postgres(pg_url: str, make_job) -> None:
    with Ledger(pg_url) as ledger:
        job_id = ledger.add_job(make_job(seed=1))
        with statements(ledger) as claim_sql:
            assert claim(ledger, job_id) is not None
        assert claim_sql == ["WITH changed"]  # no BEGIN/COMMIT either: autocommit
        with statements(ledger) as success_sql:
            record = succeed(ledger, job_id)
        # the success itself, then (after its commit) the wait for producers and the look for followers
        assert success_sql[0] == "WITH changed" and "WITH changed" not in success_sql[1:]
        assert record.status is S and record.output_uri == f"file:///out/{job_id}.mp4"
        assert [e.kind for e in ledger.events(job_id)] == ["created", "claimed", "succeeded"]
        assert ledger.output(record.output_uri).state == "ok"


@pytest.mark.postgres
def test_a_refused_success_writes_nothing(pg_url: str, make_job) -> None:
    with Ledger(pg_url) as ledger:
        job_id = ledger.add_job(make_job(seed=2))
        claim(ledger, job_id, host="w1")
        with pytest.raises(IllegalTransition):
            succeed(ledger, job_id, worker_host="someone-else")
        assert ledger.get_job(job_id).status is JobStatus.RUNNING
        assert ledger.output(f"file:///out/{job_id}.mp4") is None  # no output row either
        assert [e.kind for e in ledger.events(job_id)] == ["created", "claimed"]


@pytest.mark.postgres
def test_a_final_status_is_announced_with_the_status(pg_url: str, make_job) -> None:
    with Ledger(pg_url) as ledger, psycopg.connect(ledger_db.libpq_url(pg_url), autocommit=True) as listener:
        listener.execute(f"LISTEN {DONE_CHANNEL}")
        ok, bad = ledger.add_jobs([make_job(seed=3), make_job(seed=4)])
        claim(ledger, ok)
        claim(ledger, bad)
        succeed(ledger, ok)
        ledger.record_failure(bad, error_type="ValueError", error_message="no", retry=False, worker_host="w1")
        heard = [parse_done(n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
    assert heard == [(ok, S), (bad, JobStatus.FAILED)]


def test_success_answers_followers_on_both_backends(ledger, make_job) -> None:
    leader, follower = ledger.add_jobs([make_job(seed=5), make_job(seed=5)])
    claim(ledger, leader)
    succeed(ledger, leader)
    job = ledger.get_job(follower)
    assert (job.status, job.cache_of_job_id, job.output_uri) == (S, leader, f"file:///out/{leader}.mp4")


def test_an_output_written_again_is_restored_for_its_other_jobs(ledger, make_job) -> None:
    from farm.ledger.records import OutputMark

    first = ledger.add_job(make_job(seed=6, no_cache=True))
    claim(ledger, first)
    uri = succeed(ledger, first).output_uri
    ledger.mark_outputs([OutputMark(uri, "missing", "f" * 64, "gone")])
    again = ledger.add_job(make_job(seed=6, no_cache=True))  # same key: the same content-addressed file
    claim(ledger, again)
    ledger.record_success(
        again, output_uri=uri, file_sha256="f" * 64, frames_sha256="e" * 64, effective_params={"steps": 4},
        weights_fingerprint=WEIGHTS, env_fingerprint={}, timings={}, worker_host="w1")
    assert ledger.output(uri).state == "ok"
    trail = [(e.kind, (e.detail or {}).get("from_state")) for e in ledger.events(first)]
    assert trail[-2:] == [("output-missing", "ok"), ("output-ok", "missing")]
    assert [e.kind for e in ledger.events(again)] == ["created", "claimed", "succeeded"]


@pytest.mark.postgres
def test_a_follower_added_while_the_success_commits_is_answered(pg_url: str, make_job, monkeypatch) -> None:
    """A producer read the leader as running and holds the dedup lock while it adds a follower.

    The success commits without waiting for it (its producer is told at once); settling the
    followers waits for the lock, so the late follower is answered too, without the reaper.
    """
    with Ledger(pg_url) as ledger, Ledger(pg_url) as producer:
        leader = ledger.add_job(make_job(seed=7))
        claim(ledger, leader)
        decided = threading.Event()
        real_insert = q.insert_jobs

        def slow_insert(*args: Any, **kwargs: Any) -> None:
            decided.set()  # dedup has read the leader as running (the lock is held)
            time.sleep(1.0)
            real_insert(*args, **kwargs)

        monkeypatch.setattr(q, "insert_jobs", slow_insert)
        added: list[str] = []
        adder = threading.Thread(target=lambda: added.append(producer.add_job(make_job(seed=7))))
        adder.start()
        assert decided.wait(10)
        started = time.monotonic()
        succeed(ledger, leader)
        took = time.monotonic() - started
        adder.join()
        assert took >= 0.5  # settling waited for the producer's commit...
        follower = ledger.get_job(added[0])
        assert (follower.status, follower.cache_of_job_id) == (S, leader)  # ... and answered its follower
        assert [e.kind for e in ledger.events(added[0])] == ["created", "cache-hit"]


@pytest.mark.postgres
def test_the_reaper_answers_followers_left_by_a_worker_that_died(pg_url: str, make_job, monkeypatch) -> None:
    with Ledger(pg_url) as ledger:
        leader, follower = ledger.add_jobs([make_job(seed=8), make_job(seed=8)])
        claim(ledger, leader)

        def died(*_args: Any) -> None:
            raise SystemExit("the worker died right after the success committed")

        monkeypatch.setattr(Ledger, "_settle_after_commit", died)
        with pytest.raises(SystemExit):
            succeed(ledger, leader)
        monkeypatch.undo()
        assert ledger.get_job(leader).status is S and ledger.get_job(follower).status is Q  # stranded
        assert ledger.settle_stranded_followers() == [leader]
        assert ledger.get_job(follower).status is S and ledger.get_job(follower).cache_of_job_id == leader
        assert ledger.settle_stranded_followers() == []  # nothing left


def test_stranded_followers_of_a_failed_leader_are_released(ledger, make_job, monkeypatch) -> None:
    leader, follower = ledger.add_jobs([make_job(seed=9), make_job(seed=9)])
    claim(ledger, leader)
    ledger.record_failure(leader, error_type="E", error_message="x", retry=False, worker_host="w1")
    job = ledger.get_job(follower)
    assert job.status is Q and job.cache_of_job_id is None  # released in the same transaction
    assert ledger.settle_stranded_followers() == []


@pytest.mark.postgres
def test_one_no_cache_submit_is_one_statement_on_postgres(pg_url: str, make_job) -> None:
    with Ledger(pg_url) as ledger:
        with statements(ledger) as sql:
            admitted = ledger.admit([make_job(seed=10, no_cache=True)], mark_sent=True)
        assert sql == ["WITH locked"]  # the dedup lock, the job and its event: one statement, autocommit
        [job_id] = admitted.job_ids
        assert admitted.to_send == [(job_id, "batch.tiny")]
        job = ledger.get_job(job_id)
        assert job.status is Q and job.enqueued_at is not None
        assert [e.kind for e in ledger.events(job_id)] == ["created"]
        with statements(ledger) as cacheable:
            ledger.admit([make_job(seed=11)])
        assert cacheable[0] == "SELECT pg_advisory_xact_lock(%(key)s)"  # before the dedup reads
