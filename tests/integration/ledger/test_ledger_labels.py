"""Stars, review labels and the list filters of the seed library, on SQLite and on Postgres.

``Ledger.set_labels`` replaces a job's labels (sorted, no duplicates) and leaves a "labelled" event
with the labels before and after; ``set_starred`` (moved to :mod:`farm.ledger.library`) still
leaves its event. ``list_jobs`` filters by spec tag, review label and prompt text the same way on
both backends, and ``list_batches`` lists batches newest first with their counts per status.
"""

from __future__ import annotations

import pytest

from farm.errors import JobNotFound
from farm.ledger import JobStatus, Ledger
from farm.ledger.library import LedgerLibrary


def kinds(ledger: Ledger, job_id: str) -> list[str]:
    return [e.kind for e in ledger.events(job_id)]


def test_a_new_job_has_no_labels(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job())
    job = ledger.get_job(job_id)
    assert job.labels == [] and job.to_dict()["labels"] == []


def test_set_labels_replaces_the_set_sorted_and_deduplicated(ledger, make_job, clock) -> None:
    job_id = ledger.add_job(make_job())
    assert ledger.set_labels(job_id, ["keeper", "hands-bad", "keeper"]) == ["hands-bad", "keeper"]
    assert ledger.get_job(job_id).labels == ["hands-bad", "keeper"]
    clock.advance(1)
    assert ledger.set_labels(job_id, ["v2.final"]) == ["v2.final"]  # replaced, not added to
    assert ledger.get_job(job_id).labels == ["v2.final"]
    assert ledger.set_labels(job_id, []) == []
    assert ledger.get_job(job_id).labels == []

    labelled = [e for e in ledger.events(job_id) if e.kind == "labelled"]
    assert [e.detail for e in labelled] == [
        {"before": [], "after": ["hands-bad", "keeper"]},
        {"before": ["hands-bad", "keeper"], "after": ["v2.final"]},
        {"before": ["v2.final"], "after": []},
    ]
    # a label changes no status: the event goes from the job's status to the same one
    assert all(e.from_status is JobStatus.QUEUED and e.to_status is JobStatus.QUEUED for e in labelled)
    assert ledger.get_job(job_id).status is JobStatus.QUEUED


def test_the_same_labels_again_write_no_event(ledger, make_job) -> None:
    job_id = ledger.add_job(make_job())
    ledger.set_labels(job_id, ["b", "a"])
    before = kinds(ledger, job_id)
    assert ledger.set_labels(job_id, ["a", "b", "a"]) == ["a", "b"]
    assert kinds(ledger, job_id) == before


def test_labels_of_an_unknown_job(ledger) -> None:
    with pytest.raises(JobNotFound):
        ledger.set_labels("00000000-0000-4000-8000-000000000000", ["a"])


def test_stars_live_in_the_library_mixin_and_leave_events(ledger, make_job) -> None:
    assert "set_starred" in LedgerLibrary.__dict__ and "set_labels" in LedgerLibrary.__dict__
    assert isinstance(ledger, LedgerLibrary)
    job_id = ledger.add_job(make_job())
    assert ledger.set_starred(job_id, True) is True
    assert ledger.set_starred(job_id, True) is False  # already starred: nothing written
    assert ledger.set_starred(job_id, False) is True
    assert kinds(ledger, job_id) == ["created", "starred", "unstarred"]
    with pytest.raises(JobNotFound):
        ledger.set_starred("00000000-0000-4000-8000-000000000000", True)


def _ids(records) -> list[str]:
    return [r.id for r in records]


def test_list_jobs_filters_by_tag_label_and_prompt(ledger, make_job, clock) -> None:
    ids = {}
    for name, prompt, tags in [
        ("fox", "A Red FOX in the snow", {"shot": "12", "scene": "forest"}),
        ("owl", "an owl at 100% zoom", {"shot": "7"}),
        ("cat", "a cat_like shape", {"scene.v2:x/y-z": "a=b"}),
        ("dog", "a dog", {}),
    ]:
        clock.advance(1)
        ids[name] = ledger.add_job(make_job(prompt=prompt, tags=tags))
    ledger.set_labels(ids["fox"], ["keeper", "v2.final"])
    ledger.set_labels(ids["owl"], ["keeper2", "a_b"])
    ledger.set_labels(ids["cat"], ["axb"])
    ledger.set_starred(ids["owl"], True)

    # newest first
    assert _ids(ledger.list_jobs()) == [ids["dog"], ids["cat"], ids["owl"], ids["fox"]]
    # tags: key=value, key alone, keys with the spec's punctuation, values with '='
    assert _ids(ledger.list_jobs(tag=("shot", "12"))) == [ids["fox"]]
    assert _ids(ledger.list_jobs(tag=("shot", None))) == [ids["owl"], ids["fox"]]
    assert _ids(ledger.list_jobs(tag=("shot", "1"))) == []
    assert _ids(ledger.list_jobs(tag=("scene.v2:x/y-z", "a=b"))) == [ids["cat"]]
    assert _ids(ledger.list_jobs(tag=("scene", None))) == [ids["fox"]]
    # labels: a whole label, never a part of one; '_' is no wildcard
    assert _ids(ledger.list_jobs(label="keeper")) == [ids["fox"]]
    assert _ids(ledger.list_jobs(label="keeper2")) == [ids["owl"]]
    assert _ids(ledger.list_jobs(label="keep")) == []
    assert _ids(ledger.list_jobs(label="a_b")) == [ids["owl"]]
    assert _ids(ledger.list_jobs(label="a-b")) == []
    assert _ids(ledger.list_jobs(label="v2.final")) == [ids["fox"]]
    # prompt: a case-insensitive substring; % and _ are plain characters
    assert _ids(ledger.list_jobs(prompt="red fox")) == [ids["fox"]]
    assert _ids(ledger.list_jobs(prompt="100%")) == [ids["owl"]]
    assert _ids(ledger.list_jobs(prompt="0%z")) == []
    assert _ids(ledger.list_jobs(prompt="t_l")) == [ids["cat"]]
    assert _ids(ledger.list_jobs(prompt="a_c")) == []
    assert _ids(ledger.list_jobs(prompt="A ")) == [ids["dog"], ids["cat"], ids["fox"]]
    # every filter at once is their conjunction
    assert _ids(ledger.list_jobs(tag=("shot", None), label="keeper2", starred=True, prompt="OWL")) == [ids["owl"]]
    assert _ids(ledger.list_jobs(tag=("shot", None), label="keeper", starred=True)) == []
    # paging keeps the order
    assert _ids(ledger.list_jobs(limit=2, offset=1)) == [ids["cat"], ids["owl"]]


def test_list_batches_newest_first_with_counts(ledger, make_job, clock) -> None:
    first, _ = ledger.create_batch("a" * 64, "first", "a.yaml", [make_job(batch_index=i) for i in range(3)])
    clock.advance(1)
    second, _ = ledger.create_batch("b" * 64, "second", "b.yaml", [make_job(batch_index=0)])
    [job] = ledger.batch_jobs(second)
    ledger.cancel(job.id)

    listed = ledger.list_batches()
    assert [(b.id, b.name) for b, _ in listed] == [(second, "second"), (first, "first")]
    counts = {b.id: c for b, c in listed}
    assert set(counts[first]) == set(JobStatus)  # every status, zeros included
    assert counts[first][JobStatus.QUEUED] == 3 and sum(counts[first].values()) == 3
    assert counts[second][JobStatus.CANCELLED] == 1 and sum(counts[second].values()) == 1
    assert [b.id for b, _ in ledger.list_batches(limit=1, offset=1)] == [first]
    assert ledger.list_batches(offset=2) == []
