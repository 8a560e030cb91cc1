"""The list routes (pages, filters, ``Link``), labels and stars, on the real Postgres and a private Redis.

A page is ``{"items", "limit", "offset", "next_offset"}`` with an RFC 8288 ``Link: <...>; rel="next"``
header while there is more; every filter narrows the list; a bad query value is a 422 naming the
parameter and the rule (all of them at once); labels and stars change the job and leave events.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from fastapi.testclient import TestClient

from farm.api.views import BatchSummary, JobView
from farm.ledger import Ledger


def submit(http: TestClient, prompt: str, seed: int, **fields: Any) -> str:
    r = http.post("/v1/jobs", json={"prompt": prompt, "seed": seed, **fields})
    assert r.status_code == 201, r.text
    [job_id] = r.json()["job_ids"]
    return str(job_id)


def ids(response: Any) -> list[str]:
    assert response.status_code == 200, response.text
    return [item["id"] for item in response.json()["items"]]


def problems(response: Any) -> set[tuple[str, str]]:
    assert response.status_code == 422, response.text
    return {(p["field"], p["rule"]) for p in response.json()["problems"]}


def next_link(response: Any) -> str | None:
    header = response.headers.get("link")
    if header is None:
        return None
    found = re.fullmatch(r'<([^>]+)>; rel="next"', header)
    assert found, header
    return found.group(1)


def test_jobs_come_in_pages_newest_first_with_a_next_link(http: TestClient) -> None:
    submitted = [submit(http, f"shot {i}", seed=i) for i in range(5)]
    newest_first = list(reversed(submitted))

    first = http.get("/v1/jobs", params={"limit": 2})
    assert ids(first) == newest_first[:2]
    body = first.json()
    assert (body["limit"], body["offset"], body["next_offset"]) == (2, 0, 2)
    assert set(body["items"][0]) == set(JobView.model_fields)  # a whole job view, typed
    assert body["items"][0]["labels"] == [] and body["items"][0]["starred"] is False

    link = next_link(first)
    assert link is not None and "offset=2" in link and "limit=2" in link
    second = http.get(link)
    assert ids(second) == newest_first[2:4] and second.json()["next_offset"] == 4
    last = http.get(next_link(second) or "")
    assert ids(last) == newest_first[4:] and last.json()["next_offset"] is None
    assert next_link(last) is None
    # the default page holds them all; an offset past the end is an empty last page
    everything = http.get("/v1/jobs")
    assert ids(everything) == newest_first and everything.json()["limit"] == 50 and next_link(everything) is None
    beyond = http.get("/v1/jobs", params={"offset": 10})
    assert ids(beyond) == [] and beyond.json()["next_offset"] is None


def test_every_filter_narrows_the_list(http: TestClient, pg_url: str) -> None:
    fox = submit(http, "A Red FOX in the snow", seed=1, tags={"shot": "12", "scene": "forest"})
    owl = submit(http, "an owl at 100% zoom", seed=2, tags={"shot": "7"})
    cat = submit(http, "a cat_like shape", seed=3, tags={"scene.v2:x": "a=b"})
    batch = http.post("/v1/batches", json={"name": "b", "items": [{"prompt": "a boat", "seeds": [4, 5]}]})
    assert batch.status_code == 201, batch.text
    batch_id = batch.json()["batch_id"]
    assert http.post(f"/v1/jobs/{owl}/cancel").status_code == 200
    assert http.put(f"/v1/jobs/{fox}/labels", json={"labels": ["keeper", "v2.final"]}).status_code == 200
    assert http.put(f"/v1/jobs/{cat}/labels", json={"labels": ["keeper2"]}).status_code == 200
    assert http.post(f"/v1/jobs/{cat}/star").status_code == 200

    def listed(**params: Any) -> set[str]:
        return set(ids(http.get("/v1/jobs", params=params)))

    with Ledger(pg_url) as ledger:
        batch_jobs = {j.id for j in ledger.batch_jobs(batch_id)}
    assert len(batch_jobs) == 2
    assert listed(status="cancelled") == {owl}
    assert listed(status="queued") == {fox, cat} | batch_jobs
    assert listed(batch=batch_id) == batch_jobs
    assert listed(batch=batch_id.upper()) == batch_jobs
    assert listed(tag="shot=12") == {fox}
    assert listed(tag="shot") == {fox, owl}
    assert listed(tag="scene.v2:x=a=b") == {cat}
    assert listed(tag="shot=1") == set()
    assert listed(label="keeper") == {fox}
    assert listed(label="  KEEPER2 ") == {cat}
    assert listed(label="keep") == set()
    assert listed(starred="true") == {cat}
    assert listed(starred="false") == {fox, owl} | batch_jobs
    assert listed(prompt="red fox") == {fox}
    assert listed(prompt="100%") == {owl}
    assert listed(prompt="t_l") == {cat}
    assert listed(prompt="BOAT") == batch_jobs
    assert listed(tag="scene", label="keeper", status="queued", prompt="snow", starred="false") == {fox}
    assert listed(tag="scene", label="keeper", starred="true") == set()


def test_bad_query_values_name_the_parameter_and_the_rule(http: TestClient) -> None:
    cases: list[tuple[dict[str, Any], tuple[str, str]]] = [
        ({"limit": 0}, ("limit", "greater_than_equal")),
        ({"limit": 501}, ("limit", "less_than_equal")),
        ({"limit": "ten"}, ("limit", "type")),
        ({"offset": -1}, ("offset", "greater_than_equal")),
        ({"offset": 2**31}, ("offset", "less_than_equal")),
        ({"status": "done"}, ("status", "one_of")),
        ({"batch": "not-a-uuid"}, ("batch", "string_too_short")),
        ({"batch": "g" * 8 + "-0000-0000-0000-000000000000"}, ("batch", "uuid")),
        ({"tag": "bad key!"}, ("tag", "tag_filter")),
        ({"tag": "=v"}, ("tag", "tag_filter")),
        ({"tag": "k=" + "v" * 257}, ("tag", "tag_filter")),
        ({"tag": "k=a\x00b"}, ("tag", "tag_filter")),
        ({"label": "-x"}, ("label", "label")),
        ({"label": "x" * 41}, ("label", "label")),
        ({"starred": "maybe"}, ("starred", "type")),
        ({"prompt": ""}, ("prompt", "string_too_short")),
        ({"prompt": "p" * 2001}, ("prompt", "string_too_long")),
        ({"prompt": "a\x00b"}, ("prompt", "no_control_chars")),  # (Postgres refuses NUL: never a 500)
    ]
    for params, expected in cases:
        assert expected in problems(http.get("/v1/jobs", params=params)), params
    # every problem of one request at once
    every = problems(http.get("/v1/jobs", params={"limit": 0, "tag": "bad key!", "label": "-x", "status": "x"}))
    assert {("limit", "greater_than_equal"), ("tag", "tag_filter"), ("label", "label"), ("status", "one_of")} <= every
    assert ("limit", "less_than_equal") in problems(http.get("/v1/batches", params={"limit": 1000}))
    assert ("offset", "type") in problems(http.get("/v1/batches", params={"offset": "1.5"}))


def test_labels_route_replaces_the_labels_and_checks_every_rule(http: TestClient, pg_url: str) -> None:
    job = submit(http, "a fox", seed=1)
    r = http.put(f"/v1/jobs/{job}/labels", json={"labels": [" Keeper ", "hands-bad", "KEEPER", "v2.final"]})
    assert r.status_code == 200, r.text
    assert r.json() == {"job_id": job, "labels": ["hands-bad", "keeper", "v2.final"]}
    assert http.get(f"/v1/jobs/{job}").json()["labels"] == ["hands-bad", "keeper", "v2.final"]

    bad: list[tuple[Any, tuple[str, str]]] = [
        ({"labels": [f"l{i}" for i in range(17)]}, ("labels", "max_labels")),
        ({"labels": ["ok", "no spaces inside"]}, ("labels", "label")),
        ({"labels": ["x" * 41]}, ("labels", "label")),
        ({"labels": [""]}, ("labels", "label")),
        ({"labels": ["_lead"]}, ("labels", "label")),
        ({"labels": [3]}, ("labels.0", "type")),
        ({"labels": "keeper"}, ("labels", "type")),
        ({}, ("labels", "required")),
        ({"labels": [], "more": 1}, ("more", "unknown_field")),
    ]
    for body, expected in bad:
        assert expected in problems(http.put(f"/v1/jobs/{job}/labels", json=body)), body
    assert http.get(f"/v1/jobs/{job}").json()["labels"] == ["hands-bad", "keeper", "v2.final"]  # nothing changed

    assert http.put(f"/v1/jobs/{job}/labels", json={"labels": []}).json()["labels"] == []
    with Ledger(pg_url) as ledger:
        labelled = [e.detail for e in ledger.events(job) if e.kind == "labelled"]
    assert labelled == [{"before": [], "after": ["hands-bad", "keeper", "v2.final"]},
                        {"before": ["hands-bad", "keeper", "v2.final"], "after": []}]
    unknown = str(uuid.uuid4())
    assert http.put(f"/v1/jobs/{unknown}/labels", json={"labels": ["a"]}).status_code == 404
    assert http.put("/v1/jobs/not-a-job/labels", json={"labels": ["a"]}).status_code == 404


def test_star_routes(http: TestClient, pg_url: str) -> None:
    job = submit(http, "a fox", seed=1)
    assert http.post(f"/v1/jobs/{job}/star").json() == {"job_id": job, "starred": True, "changed": True}
    assert http.post(f"/v1/jobs/{job}/star").json() == {"job_id": job, "starred": True, "changed": False}
    assert ids(http.get("/v1/jobs", params={"starred": True})) == [job]
    assert http.delete(f"/v1/jobs/{job}/star").json() == {"job_id": job, "starred": False, "changed": True}
    assert http.delete(f"/v1/jobs/{job}/star").json()["changed"] is False
    assert ids(http.get("/v1/jobs", params={"starred": True})) == []
    with Ledger(pg_url) as ledger:
        assert [e.kind for e in ledger.events(job)][-2:] == ["starred", "unstarred"]
    assert http.post(f"/v1/jobs/{uuid.uuid4()}/star").status_code == 404
    assert http.delete("/v1/jobs/nope/star").status_code == 404


def test_batches_come_in_pages_with_counts(http: TestClient) -> None:
    made = []
    for name, seeds in (("first", [1, 2, 3]), ("second", [4]), ("third", [5, 6])):
        r = http.post("/v1/batches", json={"name": name, "items": [{"prompt": f"{name} shot", "seeds": seeds}]})
        assert r.status_code == 201, r.text
        made.append(r.json()["batch_id"])
    assert http.post(f"/v1/batches/{made[1]}/cancel").status_code == 200

    page = http.get("/v1/batches", params={"limit": 2})
    assert ids(page) == [made[2], made[1]]
    body = page.json()
    assert set(body["items"][0]) == set(BatchSummary.model_fields) and body["next_offset"] == 2
    second = body["items"][1]
    assert second["counts"] == {"queued": 0, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 1}
    assert (second["finished"], second["job_count"], second["done"]) == (1, 1, True)
    third = body["items"][0]
    assert (third["finished"], third["job_count"], third["done"], third["name"]) == (0, 2, False, "third")
    rest = http.get(next_link(page) or "")
    assert ids(rest) == [made[0]] and rest.json()["next_offset"] is None and next_link(rest) is None
