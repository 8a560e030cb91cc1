"""Ledger-suite fixtures: every test runs against a fresh Postgres database and a fresh SQLite file."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from farm.ledger import Ledger, NewJob
from farm.spec import parse_spec


class FakeClock:
    """A clock the test moves by hand (aware UTC)."""

    def __init__(self) -> None:
        self.now = datetime.now(UTC).replace(microsecond=0)

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> datetime:
        self.now += timedelta(seconds=seconds)
        return self.now


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def ledger_url(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        return str(request.getfixturevalue("pg_url"))
    return str(request.getfixturevalue("sqlite_url"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(ledger_url: str, clock: FakeClock) -> Iterator[Ledger]:
    with Ledger(ledger_url, clock=clock) as led:
        yield led


MakeJob = Callable[..., NewJob]


@pytest.fixture
def make_job() -> MakeJob:
    """``make_job(seed=..., prompt=..., max_attempts=..., no_cache=..., batch_index=..., **spec_fields)`` -> NewJob."""
    counter = iter(range(1, 10**9))

    def make(*, max_attempts: int = 3, batch_id: str | None = None, parent_job_id: str | None = None,
             job_id: str | None = None, batch_index: int | None = None, no_cache: bool = False,
             **fields: Any) -> NewJob:
        data: dict[str, Any] = {"prompt": "a red fox in the snow", "seed": next(counter)}
        data.update(fields)
        return NewJob.from_spec(parse_spec(data), max_attempts=max_attempts, batch_id=batch_id,
                                parent_job_id=parent_job_id, job_id=job_id, batch_index=batch_index,
                                no_cache=no_cache)

    return make
