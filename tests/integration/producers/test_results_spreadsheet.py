"""``farm results --format csv|xlsx`` through a real spreadsheet engine: LibreOffice, headless.

A real batch (the widest seeds farm.spec/2 allows, 0 and 2^32-1; a cache hit, so a ``cache_of``
id; rendered, so hashes), and two of its rows given 19-digit seeds as a ledger migrated from
farm.spec/1 holds them (that spec took seeds up to 2^63-1 and the column is a BIGINT; they are
still shown as recorded). Its CSV goes through LibreOffice's DEFAULT CSV import (no filter
options; a private profile per test, a timeout) to .xlsx and to .ods and back to CSV, and its
.xlsx export to CSV: every seed, id and hash comes back exactly, as text (the intermediate .xlsx
holds strings). The control: the same rows as the old plain CSV (bare numbers) through the same
round trip lose the 19-digit seeds (they come back as 9.22337203685478E+18), so the test can fail.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from openpyxl import load_workbook
from producer_helpers import RunFarm, Work, execute_sql, write_manifest

from farm.client import Client
from farm.client.export import TEXT_COLUMNS, read_csv
from farm.client.reports import RESULT_FIELDS
from farm.ledger import Ledger
from farm.spec import MAX_SEED

SOFFICE_TIMEOUT_S = 180
#: Seeds a farm.spec/1 row may hold (BIGINT, up to 2^63-1): 19 digits, more than a float keeps.
LEGACY_SEEDS = (2**63 - 1, 2**62 + 987_654_321)
#: Parameters that must come back as the same numbers.
NUMBERS = ("width", "height", "num_frames", "fps", "steps", "guidance_scale", "flow_shift")


def soffice() -> str:
    found = shutil.which("soffice")
    if found is None:
        pytest.fail("soffice (LibreOffice) is not installed: run scripts/os-tools.sh (it installs "
                    "libreoffice-calc-nogui)")
    return found


def convert(sources: list[Path], to: str, outdir: Path, profile: Path) -> list[Path]:
    """LibreOffice's default conversion of ``sources`` to ``to`` (xlsx, ods, csv) into ``outdir``."""
    outdir.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(
        [soffice(), f"-env:UserInstallation={profile.as_uri()}", "--headless", "--norestore", "--convert-to", to,
         "--outdir", str(outdir), *map(str, sources)],
        capture_output=True, text=True, timeout=SOFFICE_TIMEOUT_S,
    )
    out = [outdir / f"{s.stem}.{to}" for s in sources]
    assert proc.returncode == 0 and all(p.is_file() for p in out), (proc.stdout, proc.stderr)
    return out


def read_back(path: Path) -> dict[str, dict[str, str]]:
    """A CSV LibreOffice wrote, by job id (farm's reader: it also drops the BOM a farm file started with)."""
    rows = read_csv(path.read_bytes().decode("utf-8"))
    return {r["job_id"]: r for r in rows}


def plain_csv(rows: list[dict[str, Any]], path: Path) -> None:
    """The old ``farm results --format csv``: one column per results field, numbers bare."""
    with path.open("w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(RESULT_FIELDS), lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: "" if row[k] is None else json.dumps(row[k]) if isinstance(row[k], dict | list)
                             else row[k] for k in RESULT_FIELDS})


def expected_text(row: dict[str, Any], column: str) -> str:
    return "" if row[column] is None else str(row[column])


@pytest.fixture
def batch(client: Client, ledger: Ledger, work: Work, tmp_path: Path, pg_url: str) -> str:
    [earlier] = client.submit("a lantern on a pier", seed=MAX_SEED)  # answers item 1 from the cache
    work()
    items = [{"prompt": "a red fox in snow", "seed": 0}, {"prompt": "a lantern on a pier", "seed": MAX_SEED},
             {"prompt": "a heron over a lake", "seed": 7, "tags": {"take": "007"}},
             {"prompt": "a kite above a beach", "seed": 8}]
    batch_id = client.submit_batch(write_manifest(tmp_path / "sheet.jsonl", items, name="sheet")).batch_id
    work()
    jobs = ledger.batch_jobs(batch_id)
    assert jobs[1].cache_of_job_id == earlier and all(j.frames_sha256 for j in jobs)
    for job, seed in zip(jobs[2:], LEGACY_SEEDS, strict=True):
        execute_sql(pg_url, "UPDATE jobs SET seed = :seed, parent_job_id = :parent WHERE id = :id",
                    seed=seed, parent=earlier, id=job.id)
    return batch_id


def test_csv_and_xlsx_survive_libreoffice_and_the_old_csv_does_not(
    batch: str, client: Client, run_farm: RunFarm, tmp_path: Path
) -> None:
    rows = {r["job_id"]: r for r in client.results(batch)}
    assert sorted(r["seed"] for r in rows.values())[-2:] == sorted(LEGACY_SEEDS)
    files = tmp_path / "files"
    files.mkdir()
    farm_csv, farm_xlsx, old_csv = files / "farm.csv", files / "export.xlsx", files / "old.csv"
    for fmt, path in (("csv", farm_csv), ("xlsx", farm_xlsx)):
        proc = run_farm("results", batch, "--format", fmt, "--output", str(path))
        assert proc.returncode == 0 and "4 row(s) written" in proc.stderr, proc.stderr
    plain_csv(list(rows.values()), old_csv)

    profile = tmp_path / "lo-profile"
    as_xlsx = convert([farm_csv, old_csv], "xlsx", tmp_path / "xlsx", profile)
    [as_ods] = convert([farm_csv], "ods", tmp_path / "ods", profile)
    via_xlsx = convert(as_xlsx, "csv", tmp_path / "back-xlsx", profile)
    [via_ods] = convert([as_ods], "csv", tmp_path / "back-ods", profile)
    [from_export] = convert([farm_xlsx], "csv", tmp_path / "back-export", profile)

    # In the spreadsheet LibreOffice made of farm's CSV, seeds and ids are strings.
    sheet = load_workbook(as_xlsx[0], data_only=True).active
    header = [c.value for c in sheet[1]]
    seeds = [r[header.index("seed")] for r in sheet.iter_rows(min_row=2, values_only=True)]
    assert sorted(seeds) == sorted(str(r["seed"]) for r in rows.values())

    for path in (via_xlsx[0], via_ods, from_export):
        back = read_back(path)
        assert set(back) == set(rows), path
        for job_id, row in rows.items():
            for column in sorted(TEXT_COLUMNS):
                assert back[job_id][column] == expected_text(row, column), (path.name, column)
            for column in NUMBERS:
                assert float(back[job_id][column]) == row["params"][column], (path.name, column)
            assert back[job_id]["prompt"] == row["prompt"]
        assert {r["tag:take"] for r in back.values()} == {"007", ""}, path.name  # a text tag stays text

    # The control: the old CSV's bare 19-digit seeds come back as floats.
    old = {r["job_id"]: r for r in csv.DictReader(io.StringIO(via_xlsx[1].read_text(encoding="utf-8")))}
    legacy = [job_id for job_id, row in rows.items() if row["seed"] in LEGACY_SEEDS]
    assert len(legacy) == 2
    for job_id in legacy:
        cell, seed = old[job_id]["seed"], rows[job_id]["seed"]
        assert "E+" in cell and int(float(cell)) != seed, cell  # e.g. 9.22337203685478E+018: digits lost


def test_base_url_columns_and_json_unchanged(batch: str, client: Client, run_farm: RunFarm) -> None:
    proc = run_farm("results", batch, "--format", "csv", "--base-url", "https://farm.example:8443/")
    assert proc.returncode == 0, proc.stderr
    assert not proc.stdout.startswith("\ufeff")  # stdout: no byte-order mark
    table = read_csv(proc.stdout)
    assert [r["job_id"] for r in table] == [r["job_id"] for r in client.results(batch)]
    for line in table:
        assert line["poster"] == f"https://farm.example:8443/v1/jobs/{line['job_id']}/poster"
        assert line["video"] == f"https://farm.example:8443/v1/jobs/{line['job_id']}/video"
    by_store = read_csv(run_farm("results", batch, "--format", "csv").stdout)
    for line, row in zip(by_store, client.results(batch), strict=True):
        assert line["video"] == row["output"] and Path(line["poster"]).name == "poster.png"
        assert Path(line["poster"]).is_file() and Path(line["video"]).is_file()
    json_rows = json.loads(run_farm("results", batch).stdout)
    assert json_rows == json.loads(json.dumps(client.results(batch)))  # --format json: the rows as they are
    refused = run_farm("results", batch, "--format", "json", "--base-url", "https://farm.example")
    assert refused.returncode == 2 and "base_url" in refused.stderr
