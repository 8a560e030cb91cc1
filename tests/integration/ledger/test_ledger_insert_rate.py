"""A measurement.

``add_jobs`` inserts 10,000 jobs (and their 10,000 "created" events) in one transaction, dedup
included, well above 1,000 rows/s — also when half of them are duplicates that become followers.
The rate is printed (run with ``-s`` to see it).
"""

from __future__ import annotations

import time

import pytest

from farm.ledger import Ledger, NewJob
from farm.spec import parse_spec

N_JOBS = 10_000
MIN_ROWS_PER_S = 1_000


@pytest.mark.slow
@pytest.mark.parametrize("distinct", [N_JOBS, N_JOBS // 2], ids=["distinct", "half-duplicates"])
def test_add_jobs_inserts_ten_thousand_jobs_quickly(ledger: Ledger, ledger_url: str, distinct: int,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    base = parse_spec({"prompt": "a lighthouse at dusk, waves crashing", "seed": 0, "tags": {"run": "bench"}})
    new_jobs = [NewJob.from_spec(base.with_seed(seed % distinct, "sweep")) for seed in range(N_JOBS)]

    start = time.perf_counter()
    ids = ledger.add_jobs(new_jobs)
    elapsed_s = time.perf_counter() - start

    rate = N_JOBS / elapsed_s
    with capsys.disabled():
        print(f"\nadd_jobs on {ledger.backend} ({distinct} distinct keys): {N_JOBS} jobs in {elapsed_s:.2f} s "
              f"= {rate:,.0f} jobs/s")
    assert len(ids) == N_JOBS
    assert len(ledger.list_jobs(limit=N_JOBS + 1)) == N_JOBS
    assert len(ledger.jobs_to_enqueue()) == distinct  # the duplicates follow their leaders
    assert rate > MIN_ROWS_PER_S
