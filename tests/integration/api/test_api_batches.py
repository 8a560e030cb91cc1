"""``POST /v1/batches`` (a manifest as JSON or YAML) and the batch routes.

The same expansion and rules as a manifest file; a bad item is a 422 naming the item and the
field with nothing written.
"""

from __future__ import annotations

import uuid
from typing import Any

from api_helpers import PrivateRedis, count_rows, queue_lengths, queued_job_ids
from fastapi.testclient import TestClient

from farm.ledger import Ledger

MANIFEST: dict[str, Any] = {
    "name": "api-spring",
    "defaults": {"model": "tiny", "priority": "batch", "tags": {"campaign": "spring"}},
    "items": [
        {"prompt": "a red sneaker on a wet street", "seeds": [1, 2]},
        {"prompt": "a paper boat in a gutter", "seed": {"sweep": {"base": 1000, "radius": 1}}},
    ],
}
YAML = b"""
name: api-yaml
defaults: {model: tiny}
items:
  - prompt: "a fox in snow"
    seeds: [5, 6]
"""


def problems(response: Any) -> list[dict[str, str]]:
    return list(response.json()["problems"])


def test_json_manifest_creates_the_batch_and_sends_every_job(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    r = http.post("/v1/batches", json=MANIFEST)
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["created"] is True and body["job_count"] == 5 and body["enqueued"] == 5
    assert body["name"] == "api-spring"
    with Ledger(pg_url) as ledger:
        jobs = ledger.batch_jobs(body["batch_id"])
    assert [j.batch_index for j in jobs] == [0, 1, 2, 3, 4]
    assert [j.seed for j in jobs] == [1, 2, 999, 1000, 1001]
    assert sorted(queued_job_ids(redis_server, "farm.batch")) == sorted(j.id for j in jobs)
    view = http.get(f"/v1/batches/{body['batch_id']}").json()
    assert view["counts"] == {"queued": 5, "running": 0, "succeeded": 0, "failed": 0, "cancelled": 0}
    assert view["job_count"] == 5 and view["done"] is False and view["source_name"] == "request.json"


def test_the_same_manifest_again_is_the_same_batch(http: TestClient, redis_server: PrivateRedis, pg_url: str) -> None:
    key = {"Idempotency-Key": "batch-1"}
    first = http.post("/v1/batches", json=MANIFEST, headers=key)
    again = http.post("/v1/batches", json=MANIFEST, headers=key)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json()["batch_id"] == first.json()["batch_id"]
    assert again.json()["created"] is False and again.json()["enqueued"] == 0
    assert count_rows(pg_url, "jobs") == 5
    assert queue_lengths(redis_server)["farm.batch"] == 5
    # reformatting (key order) keeps the digest: still the same batch
    reordered = {"items": MANIFEST["items"], "defaults": MANIFEST["defaults"], "name": MANIFEST["name"]}
    assert http.post("/v1/batches", json=reordered).json()["batch_id"] == first.json()["batch_id"]


def test_yaml_manifest(http: TestClient, redis_server: PrivateRedis) -> None:
    r = http.post("/v1/batches", content=YAML, headers={"Content-Type": "text/yaml"})
    assert r.status_code == 201, r.text
    assert r.json()["job_count"] == 2
    assert queue_lengths(redis_server) == {"farm.interactive": 0, "farm.batch": 2}  # manifests default to batch


BAD_ITEMS: list[tuple[dict[str, Any], str, str]] = [
    ({"prompt": "b", "seed": 3, "width": 33}, "width", "multiple_of_16"),
    ({"prompt": "b", "seed": 3, "num_frames": 8}, "num_frames", "frames_4k_plus_1"),
    ({"prompt": "b", "seed": 3, "model": "nope"}, "model", "known_model"),
    ({"prompt": "  ", "seed": 3}, "prompt", "not_blank"),
    ({"prompt": "b", "seed": 3, "colour": "red"}, "colour", "unknown_field"),
    ({"prompt": "b"}, "seed", "required"),
]
#: (body, Content-Type, status, field, rule)
BAD_BODIES: list[tuple[bytes, str, int, str, str]] = [
    (b'{"items": [', "application/json", 422, "manifest", "json_syntax"),
    (b"[1, 2]", "application/json", 422, "manifest", "type"),
    (b'{"items": [{"prompt": "a", "seed": 1}], "items": []}', "application/json", 422, "items", "duplicate_key"),
    (b'{"items": [{"prompt": "a", "seed": 1}], "extra": 1}', "application/json", 422, "extra", "unknown_field"),
    (b"", "application/json", 422, "manifest", "not_empty"),
    (b"items: [", "text/yaml", 422, "manifest", "yaml_syntax"),
    (b"\xff\xfe", "text/yaml", 422, "manifest", "utf8"),
    (b"prompt,seed\na,1\n", "text/csv", 415, "Content-Type", "media_type"),
    (b'{"items": []}', "", 415, "Content-Type", "media_type"),
]


def test_a_bad_item_names_item_and_field_and_nothing_is_written(
    http: TestClient, redis_server: PrivateRedis, pg_url: str
) -> None:
    for item, field, rule in BAD_ITEMS:
        manifest = {"items": [{"prompt": "a good one", "seeds": [1, 2]}, item]}
        r = http.post("/v1/batches", json=manifest)
        assert r.status_code == 422, (item, r.text)
        found = [p for p in problems(r) if p["field"] == field and p["rule"] == rule]
        assert found, (item, problems(r))
        assert "item 2" in found[0]["location"]
        assert count_rows(pg_url, "jobs") == 0 and count_rows(pg_url, "batches") == 0
        assert redis_server.client.dbsize() == 0


def test_unreadable_bodies(http: TestClient, redis_server: PrivateRedis, pg_url: str) -> None:
    for content, content_type, status, field, rule in BAD_BODIES:
        headers = {"Content-Type": content_type} if content_type else {}
        r = http.post("/v1/batches", content=content, headers=headers)
        assert r.status_code == status, (content, r.text)
        assert any(p["field"] == field and p["rule"] == rule for p in problems(r)), (content, problems(r))
        assert count_rows(pg_url, "batches") == 0 and redis_server.client.dbsize() == 0


def test_results_in_manifest_order_without_server_paths(http: TestClient) -> None:
    batch_id = http.post("/v1/batches", json=MANIFEST).json()["batch_id"]
    r = http.get(f"/v1/batches/{batch_id}/results")
    assert r.status_code == 200
    rows = r.json()["results"]
    assert [row["batch_index"] for row in rows] == list(range(5))
    assert [row["seed"] for row in rows] == [1, 2, 999, 1000, 1001]
    for row in rows:
        assert row["status"] == "queued" and row["video_url"] is None
        assert "output" not in row and "output_uri" not in row


def test_cancel_a_batch(http: TestClient) -> None:
    batch_id = http.post("/v1/batches", json=MANIFEST).json()["batch_id"]
    r = http.post(f"/v1/batches/{batch_id}/cancel")
    assert r.status_code == 200 and len(r.json()["cancelled"]) == 5
    assert http.get(f"/v1/batches/{batch_id}").json()["counts"]["cancelled"] == 5
    assert http.get(f"/v1/batches/{batch_id}").json()["done"] is True


def test_unknown_batches_are_404(http: TestClient) -> None:
    [job_id] = http.post("/v1/jobs", json={"prompt": "a fox", "seed": 1}).json()["job_ids"]
    for bad in (str(uuid.uuid4()), job_id, "../../etc"):
        for path in (f"/v1/batches/{bad}", f"/v1/batches/{bad}/results"):
            assert http.get(path).status_code == 404, path
