"""Schemathesis 4 against the real ``farm api`` (uvicorn on a free loopback port), real Postgres, a private Redis.

Every operation of the served OpenAPI schema, bounded: :data:`MAX_EXAMPLES` generated requests per
operation and generation mode (positive: schema-valid requests; negative: requests the schema
refuses), no deadline, the bearer token on every request. Checks on every response:

* ``not_a_server_error`` — no 5xx, whatever was sent;
* ``status_code_conformance`` / ``response_schema_conformance`` / ``content_type_conformance`` —
  every answer is documented and matches its model (error bodies included);
* ``positive_data_acceptance`` — a schema-valid request is never refused (422): the schema is not
  looser than the API's rules. Not for ``POST /v1/batches``: a manifest's rules (variants, seed
  pools, the expansion cap) live in :mod:`farm.manifest`, not in the schema.

Some generated path ids are replaced by ids of real jobs and batches made beforehand, so the
answers of existing resources are checked too (never for ``promote``, whose 422 for a job that is
not a succeeded draft depends on state, not on the request).

It prints the counts (operations, test cases, failures) and fails listing every failure. Checked
by hand to fail when a handler 500s or when a rule is dropped from the schema (see the report of
issue 11).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from api_helpers import AUTH, TOKEN, PrivateRedis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from private_redis import free_port
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    positive_data_acceptance,
    response_schema_conformance,
    status_code_conformance,
)

FARM = str(Path(sys.executable).with_name("farm"))
#: Generated requests per operation and generation mode.
MAX_EXAMPLES = 25
START_TIMEOUT_S = 60.0
REQUEST_TIMEOUT_S = 60.0
CHECKS = [not_a_server_error, status_code_conformance, response_schema_conformance, content_type_conformance,
          positive_data_acceptance]
#: Operations whose schema does not carry every rule of their body (see the module docstring).
NOT_POSITIVE_ACCEPTANCE = frozenset({"POST /v1/batches"})
#: Operations whose answer for a real job depends on its state (a 422 that no request could avoid).
NO_REAL_IDS = frozenset({"POST /v1/jobs/{job_id}/promote"})


@dataclass
class Tally:
    """What the run did."""

    operations: int = 0
    cases: dict[str, int] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)


@pytest.fixture
def api_base(pg_url: str, redis_server: PrivateRedis, tmp_path: Path) -> Iterator[str]:
    """``farm api`` on a free loopback port; its base URL. Stopped (and its log shown on failure) at the end."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FARM_")}
    env.update(FARM_DATA_DIR=str(tmp_path / "data"), FARM_DATABASE_URL=pg_url, FARM_BROKER_URL=redis_server.url,
               FARM_API_TOKEN=TOKEN, FARM_API_PORT=str(port))
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([FARM, "api", "--host", "127.0.0.1"], env=env, stdout=out, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_ready(proc, f"{base}/healthz", log)
            yield base
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"farm api exited {proc.returncode}: {log.read_text(errors='replace')}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    pytest.fail(f"farm api did not answer {url} in {START_TIMEOUT_S} s: {log.read_text(errors='replace')}")


def _real_ids(base: str) -> dict[str, list[str]]:
    """A few real jobs (one starred and labelled) and a batch, for the path ids of some generated requests."""
    with httpx.Client(base_url=base, headers=AUTH, timeout=REQUEST_TIMEOUT_S) as http:
        jobs = [http.post("/v1/jobs", json={"prompt": f"a fox, take {i}", "seed": i}).json()["job_ids"][0]
                for i in range(3)]
        http.post(f"/v1/jobs/{jobs[0]}/star")
        http.put(f"/v1/jobs/{jobs[0]}/labels", json={"labels": ["keeper"]})
        batch = http.post("/v1/batches", json={"name": "fuzz", "items": [{"prompt": "an owl", "seeds": [1, 2]}]})
        return {"job_id": jobs, "batch_id": [batch.json()["batch_id"]]}


def _run(operation: Any, mode: schemathesis.GenerationMode, base: str, real: dict[str, list[str]],
         tally: Tally) -> None:
    label = operation.label
    checks = [c for c in CHECKS if not (c is positive_data_acceptance and label in NOT_POSITIVE_ACCEPTANCE)]
    key = f"{label} [{mode.value}]"
    tally.cases[key] = 0

    @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), data=st.data())
    def one(case: Any, data: st.DataObject) -> None:
        if mode is schemathesis.GenerationMode.POSITIVE and label not in NO_REAL_IDS:
            for name, ids in real.items():
                if name in (case.path_parameters or {}) and data.draw(st.booleans(), label="real id"):
                    case.path_parameters[name] = data.draw(st.sampled_from(ids), label=name)
        tally.cases[key] += 1
        try:
            response = case.call_and_validate(base_url=base, headers=AUTH, checks=checks, timeout=REQUEST_TIMEOUT_S)
            seen = f"{mode.value} {response.status_code}"
            tally.statuses[seen] = tally.statuses.get(seen, 0) + 1
        except (Exception, BaseExceptionGroup) as exc:  # every failure is collected, not only the first
            tally.failures.append(f"{key}: {type(exc).__name__}: {str(exc)[:1500]}")

    try:
        one()
    except Unsatisfiable:
        if mode is schemathesis.GenerationMode.POSITIVE:
            raise
        # nothing of this operation can be made invalid (no parameters, no body): no negative case


def test_every_operation_conforms(api_base: str, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    real = _real_ids(api_base)
    schema = schemathesis.openapi.from_url(f"{api_base}/openapi.json", headers=AUTH, timeout=REQUEST_TIMEOUT_S)
    operations = [result.ok() for result in schema.get_all_operations()]
    tally = Tally(operations=len(operations))
    for operation in operations:
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            _run(operation, mode, api_base, real, tally)
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nschemathesis {schemathesis.__version__}: {tally.operations} operations, "
              f"{sum(tally.cases.values())} test cases, {len(tally.failures)} failures in {elapsed:.0f} s; "
              f"statuses {dict(sorted(tally.statuses.items()))}")
    assert tally.operations >= 18
    assert all(n > 0 for key, n in tally.cases.items() if key.endswith("[positive]")), tally.cases
    assert not tally.failures, "\n\n".join(tally.failures)
