"""``POST /v1/jobs`` and the job routes on the real Postgres ledger and a private Redis.

A submission is a ledger row plus one message in the right list; bad input is a 4xx naming
the field and the rule, with nothing written and nothing sent.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from api_helpers import PrivateRedis, count_rows, queue_lengths, queued_job_ids
from fastapi.testclient import TestClient

from farm.api.schemas import SPEC_FIELDS, RenderRequest
from farm.errors import InvalidInput, SpecError
from farm.ledger import JobStatus, Ledger
from farm.spec import RenderSpec

# (request body as JSON text, field, rule): each must be refused with nothing written or sent.
BAD_REQUESTS: list[tuple[str, str, str]] = [
    ('{"prompt": "   ", "seed": 1}', "prompt", "not_blank"),
    ('{"prompt": "", "seed": 1}', "prompt", "not_blank"),
    ('{"prompt": "a\\u0000b", "seed": 1}', "prompt", "no_control_chars"),
    ('{"seed": 1}', "prompt", "required"),
    ('{"prompt": 7, "seed": 1}', "prompt", "type"),
    ('{"prompt": "a fox", "width": 33}', "width", "multiple_of_16"),
    ('{"prompt": "a fox", "width": 4096}', "width", "size_bounds"),
    ('{"prompt": "a fox", "height": 32.5}', "height", "type"),
    ('{"prompt": "a fox", "height": 40.0}', "height", "multiple_of_16"),  # a whole JSON number is an integer
    ('{"prompt": "a fox", "num_frames": 8}', "num_frames", "frames_4k_plus_1"),
    ('{"prompt": "a fox", "guidance_scale": 1e999}', "guidance_scale", "finite"),
    ('{"prompt": "a fox", "guidance_scale": -1e999}', "guidance_scale", "finite"),
    ('{"prompt": "a fox", "guidance_scale": "NaN"}', "guidance_scale", "type"),
    ('{"prompt": "a fox", "guidance_scale": "4.0"}', "guidance_scale", "type"),
    ('{"prompt": "a fox", "guidance_scale": 31}', "guidance_scale", "guidance_range"),
    ('{"prompt": "a fox", "flow_shift": 0}', "flow_shift", "flow_shift_range"),
    ('{"prompt": "a fox", "model": "wan9-giant"}', "model", "known_model"),
    ('{"prompt": "a fox", "model": ""}', "model", "known_model"),
    ('{"prompt": "a fox", "sampler": "ddim"}', "sampler", "known_sampler"),
    ('{"prompt": "a fox", "priority": "urgent"}', "priority", "one_of"),
    ('{"prompt": "a fox", "output_format": "gif"}', "output_format", "one_of"),
    ('{"prompt": "a fox", "seed": -1}', "seed", "seed_range"),
    ('{"prompt": "a fox", "seed": 9223372036854775808}', "seed", "seed_range"),
    ('{"prompt": "a fox", "seed": 4294967296}', "seed", "seed_range"),
    ('{"prompt": "a fox", "seed": true}', "seed", "type"),
    ('{"prompt": "a fox", "seed": 1, "seed_from_prompt": true}', "seed_from_prompt", "one_seed_source"),
    ('{"prompt": "a fox", "seed": 1, "sweep": {"base": 5, "radius": 1}}', "sweep", "one_seed_source"),
    ('{"prompt": "a fox", "salt": "v1"}', "salt", "needs_seed_from_prompt"),
    ('{"prompt": "a fox", "sweep": {"base": 5}}', "sweep.radius", "required"),
    ('{"prompt": "a fox", "sweep": {"base": 5, "radius": -1}}', "sweep.radius", "sweep_radius"),
    ('{"prompt": "a fox", "tags": {"bad key!": "v"}}', "tags", "tags"),
    ('{"prompt": "a fox", "guidance_scale_2": 3.0, "model": "tiny-dense"}', "guidance_scale_2", "two_expert_only"),
    ('{"prompt": "a fox", "seed_strategy": "explicit", "seed": 1}', "seed_strategy", "unknown_field"),
    ('{"prompt": "a fox", "colour": "red"}', "colour", "unknown_field"),
    ('{"prompt": "a fox", "no_cache": "yes"}', "no_cache", "type"),
    ('{"prompt": "a fox",', "body", "json"),
    ('["a fox"]', "body", "type"),
]


def problems(response: Any) -> list[tuple[str, str]]:
    return [(p["field"], p["rule"]) for p in response.json()["problems"]]


def assert_nothing_written(pg_url: str, redis_server: PrivateRedis) -> None:
    assert count_rows(pg_url, "jobs") == 0
    assert count_rows(pg_url, "events") == 0
    assert count_rows(pg_url, "batches") == 0
    assert redis_server.client.dbsize() == 0


def test_bad_input_names_the_field_and_writes_nothing(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    for body, field, rule in BAD_REQUESTS:  # one database and one Redis for all cases: each must leave both empty
        r = http.post("/v1/jobs", content=body.encode(), headers={"Content-Type": "application/json"})
        assert r.status_code == 422, (body, r.text)
        assert (field, rule) in problems(r), (body, r.json())
        for p in r.json()["problems"]:
            assert set(p) >= {"field", "rule", "message"} and p["message"], body
        assert_nothing_written(pg_url, redis_server)


def test_bad_idempotency_key_is_refused(http: TestClient, redis_server: PrivateRedis, pg_url: str) -> None:
    r = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 1}, headers={"Idempotency-Key": "k" * 201})
    assert r.status_code == 422
    assert problems(r) == [("Idempotency-Key", "idempotency_key")]
    assert_nothing_written(pg_url, redis_server)


def test_every_problem_is_listed_even_with_an_unknown_field(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    # an unknown field (a shape error FastAPI finds first) must not hide the spec rules
    body = {"prompt": "a fox", "seed": 1, "colour": "red", "width": 33, "steps": 0}
    r = http.post("/v1/jobs", json=body)
    assert r.status_code == 422, r.text
    assert sorted(problems(r)) == [("colour", "unknown_field"), ("steps", "steps_range"), ("width", "multiple_of_16")]
    for p in r.json()["problems"]:
        assert p["message"], p
    assert_nothing_written(pg_url, redis_server)

    # the same with a wrong JSON type, a missing prompt and a bad Idempotency-Key on top
    body = {"seed": 1, "colour": "red", "width": 33, "steps": 0, "height": 32.5}
    r = http.post("/v1/jobs", json=body, headers={"Idempotency-Key": "k" * 201})
    assert r.status_code == 422, r.text
    assert sorted(problems(r)) == [
        ("Idempotency-Key", "idempotency_key"), ("colour", "unknown_field"), ("height", "type"),
        ("prompt", "required"), ("steps", "steps_range"), ("width", "multiple_of_16"),
    ]
    assert_nothing_written(pg_url, redis_server)

    # and with a well-formed body: the header's problem and the spec's are listed together
    r = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 1, "width": 33}, headers={"Idempotency-Key": ""})
    assert r.status_code == 422, r.text
    assert sorted(problems(r)) == [("Idempotency-Key", "idempotency_key"), ("width", "multiple_of_16")]
    assert_nothing_written(pg_url, redis_server)


def test_python_client_lists_every_problem_even_with_an_unknown_keyword(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    client = http.app.state.client  # type: ignore[attr-defined]  # the API's own farm.client.Client
    with pytest.raises(SpecError) as info:
        client.submit("a fox", seed=1, colour="red", width=33, steps=0)
    assert sorted((p.field, p.rule) for p in info.value.problems) == [
        ("colour", "unknown_field"), ("steps", "steps_range"), ("width", "multiple_of_16")]
    # a reserved keyword and a seed-source conflict hide nothing either, nor do rules of the model
    with pytest.raises(InvalidInput) as many:
        client.submit("a fox", seed=1, seed_from_prompt=True, seed_strategy="pool", stpes=3,
                      model="tiny-dense", guidance_scale_2=3.0)
    assert sorted((p.field, p.rule) for p in many.value.problems) == [
        ("guidance_scale_2", "two_expert_only"), ("seed_from_prompt", "one_seed_source"),
        ("seed_strategy", "set_by_client"), ("stpes", "unknown_field")]
    assert "did you mean 'steps'" in str(many.value)
    assert_nothing_written(pg_url, redis_server)


def test_submit_writes_the_row_and_sends_one_message(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    r = http.post("/v1/jobs", json={"prompt": "a red fox  running", "seed": 7, "steps": 4, "tags": {"team": "a"}})
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] is True and body["enqueued"] == 1
    [job_id] = body["job_ids"]
    with Ledger(pg_url) as ledger:
        job = ledger.get_job(job_id)
    assert job.status is JobStatus.QUEUED
    assert job.prompt == "a red fox running" and job.seed == 7 and job.seed_strategy == "explicit"
    assert job.priority == "interactive" and job.params["steps"] == 4 and job.tags == {"team": "a"}
    assert job.enqueued_at is not None
    assert queued_job_ids(redis_server, "farm.interactive") == [job_id]
    assert queue_lengths(redis_server)["farm.batch"] == 0


def test_batch_priority_goes_to_the_batch_queue(http: TestClient, redis_server: PrivateRedis) -> None:
    r = http.post("/v1/jobs", json={"prompt": "a fox", "seed_from_prompt": True, "salt": "v1", "priority": "batch"})
    assert r.status_code == 201
    [job_id] = r.json()["job_ids"]
    assert queued_job_ids(redis_server, "farm.batch") == [job_id]
    assert queue_lengths(redis_server)["farm.interactive"] == 0
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["seed_strategy"] == "prompt" and job["priority"] == "batch"


def test_sweep_submits_one_job_per_seed(http: TestClient, redis_server: PrivateRedis) -> None:
    r = http.post("/v1/jobs", json={"prompt": "a fox", "sweep": {"base": 100, "radius": 1}})
    assert r.status_code == 201
    ids = r.json()["job_ids"]
    seeds = [http.get(f"/v1/jobs/{i}").json()["seed"] for i in ids]
    assert seeds == [99, 100, 101]
    assert sorted(queued_job_ids(redis_server, "farm.interactive")) == sorted(ids)


def test_idempotency_key_returns_the_same_ids_and_sends_nothing_more(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    key = {"Idempotency-Key": f"req-{uuid.uuid4()}"}
    first = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 3}, headers=key)
    assert first.status_code == 201
    again = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 3}, headers=key)
    assert again.status_code == 200
    assert again.json()["job_ids"] == first.json()["job_ids"]
    assert again.json()["created"] is False and again.json()["enqueued"] == 0
    assert count_rows(pg_url, "jobs") == 1
    assert queue_lengths(redis_server) == {"farm.interactive": 1, "farm.batch": 0}
    other = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 3}, headers={"Idempotency-Key": "another"})
    assert other.status_code == 201 and other.json()["job_ids"] != first.json()["job_ids"]


def test_get_job_hides_server_paths_and_unknown_ids_are_404(http: TestClient) -> None:
    [job_id] = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 1}).json()["job_ids"]
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["id"] == job_id and job["status"] == "queued"
    assert "output_uri" not in job and job["video_url"] is None
    for bad in (str(uuid.uuid4()), "not-a-uuid", "1' OR '1'='1"):
        r = http.get(f"/v1/jobs/{bad}")
        assert r.status_code == 404, bad
        assert r.json()["problems"][0]["field"] == "job_id"


def test_cancel_then_cancel_again(http: TestClient, pg_url: str) -> None:
    [job_id] = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 1}).json()["job_ids"]
    r = http.post(f"/v1/jobs/{job_id}/cancel")
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    with Ledger(pg_url) as ledger:
        assert ledger.get_job(job_id).status is JobStatus.CANCELLED
    again = http.post(f"/v1/jobs/{job_id}/cancel")
    assert again.status_code == 409
    assert again.json()["problems"][0]["rule"] == "not_finished"
    assert http.post(f"/v1/jobs/{uuid.uuid4()}/cancel").status_code == 404


def test_request_model_covers_every_spec_field() -> None:
    spec_fields = set(RenderSpec.model_fields) - {"prompt", "seed", "seed_strategy", "model", "priority"}
    assert set(SPEC_FIELDS) == spec_fields
    assert set(RenderRequest.model_fields) == spec_fields | {
        "prompt", "seed", "seed_from_prompt", "salt", "sweep", "model", "priority", "no_cache"
    }


def test_openapi_documents_the_routes_and_the_bearer_scheme(http: TestClient) -> None:
    schema = http.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert schema["security"] == [{"bearerAuth": []}]
    assert schema["paths"]["/healthz"]["get"]["security"] == []
    for path in ("/v1/jobs", "/v1/batches", "/v1/jobs/{job_id}/video", "/metrics"):
        assert path in schema["paths"]
    request = schema["components"]["schemas"]["RenderRequest"]
    assert request["additionalProperties"] is False
    assert json.dumps(schema).count("Idempotency-Key") >= 2


def test_oversized_bodies_are_413_before_anything_is_read(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    from farm.api.limits import MAX_REQUEST_BYTES

    big = json.dumps({"prompt": "a fox", "seed": 1, "negative_prompt": "x" * (MAX_REQUEST_BYTES + 10)}).encode()
    declared = http.post("/v1/jobs", content=big, headers={"Content-Type": "application/json"})
    assert declared.status_code == 413
    assert problems(declared) == [("body", "max_size")]

    def chunks() -> Any:  # no Content-Length: counted as it streams
        for start in range(0, len(big), 65536):
            yield big[start:start + 65536]

    streamed = http.post("/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert streamed.status_code == 413
    assert problems(streamed) == [("body", "max_size")]
    assert_nothing_written(pg_url, redis_server)


def test_broker_down_the_job_is_accepted_and_left_for_the_reaper(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    redis_server.stop()
    r = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 5})
    assert r.status_code == 202, r.text  # recorded, not sent yet
    assert r.json()["enqueued"] == 0 and r.json()["not_sent"] == 1
    [job_id] = r.json()["job_ids"]
    with Ledger(pg_url) as ledger:
        job = ledger.get_job(job_id)
        assert job.status is JobStatus.QUEUED and job.enqueued_at is None
        assert ledger.jobs_to_enqueue(job_ids=[job_id]) == [(job_id, "interactive.tiny")]


def test_a_request_without_a_model_gets_the_farm_default(api_settings: Any) -> None:
    from api_helpers import AUTH

    from farm.api.app import create_app

    settings = api_settings.model_copy(update={"default_model": "tiny-dense"})
    with TestClient(create_app(settings), headers=AUTH) as c:
        [job_id] = c.post("/v1/jobs", json={"prompt": "a fox", "seed": 1}).json()["job_ids"]
        assert c.get(f"/v1/jobs/{job_id}").json()["model_name"] == "tiny-dense"
        [other] = c.post("/v1/jobs", json={"prompt": "a fox", "seed": 1, "model": "tiny"}).json()["job_ids"]
        assert c.get(f"/v1/jobs/{other}").json()["model_name"] == "tiny"


def test_promote_a_succeeded_draft(http: TestClient, pg_url: str) -> None:
    body = {"prompt": "a fox in the snow", "seed": 3, "model": "tiny", "preset": "draft"}
    [draft_id] = http.post("/v1/jobs", json=body).json()["job_ids"]
    assert http.post(f"/v1/jobs/{draft_id}/promote").json()["problems"][0]["rule"] == "succeeded"
    with Ledger(pg_url) as ledger:  # test-only: the draft succeeded
        assert ledger.claim(draft_id, worker_host="w@h", worker_device="cpu", lease_s=60) is not None
        ledger.record_success(draft_id, output_uri=f"file:///o/ab/{draft_id}/video.mp4", file_sha256="f" * 64,
                              frames_sha256="e" * 64, effective_params={}, weights_fingerprint="wf",
                              env_fingerprint={}, timings={}, worker_host="w@h")
    r = http.post(f"/v1/jobs/{draft_id}/promote")
    assert r.status_code == 201, r.text
    [final_id] = r.json()["job_ids"]
    final = http.get(f"/v1/jobs/{final_id}").json()
    assert final["parent_job_id"] == draft_id and final["params"]["preset"] == "final"
    assert final["params"]["steps"] > http.get(f"/v1/jobs/{draft_id}").json()["params"]["steps"]
    again = http.post(f"/v1/jobs/{final_id}/promote")
    assert again.status_code == 422 and again.json()["problems"][0]["rule"] == "not_a_draft"
    assert http.post(f"/v1/jobs/{uuid.uuid4()}/promote").status_code == 404
