"""The spreadsheet export of ``farm results`` (:mod:`farm.client.export`), without services.

Ids, seeds and hashes are text formulas in the CSV and text cells in the .xlsx; 63-bit integers go
through the writer and farm's reader exactly; parameters, tags and timings have columns of their
own (no JSON blobs); free text can never run as a formula; poster and video columns point at the
store's files or the API's downloads. (The round trip through a real spreadsheet engine is
tests/integration/producers/test_results_spreadsheet.py.)
"""

from __future__ import annotations

import csv
import io
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from openpyxl import load_workbook

from farm.cli.results import check_options
from farm.client.export import (
    BOM,
    MAX_FORMULA_CHARS,
    PARAM_COLUMNS,
    TEXT_COLUMNS,
    Table,
    api_locator,
    check_base_url,
    csv_text,
    read_csv,
    results_table,
    store_locator,
    text_formula,
    unwrap,
    write_csv,
    write_xlsx,
)
from farm.client.reports import RESULT_FIELDS
from farm.errors import InvalidInput
from farm.store import OutputStore

HYPOTHESIS = settings(deadline=None, database=None, max_examples=300)
MAX_63 = 2**63 - 1
PARAMS = {"boundary_ratio": 0.875, "cache_threshold": None, "flow_shift": 3.0, "fps": 8, "guidance_scale": 4.0,
          "guidance_scale_2": 3.0, "height": 32, "num_frames": 9, "output_format": "mp4", "preset": "final",
          "sampler": "unipc", "steps": 8, "width": 48}


def result(seed: int, **changes: Any) -> dict[str, Any]:
    """A results row shaped as ``Client.results`` gives it (every RESULT_FIELDS key)."""
    job_id = str(uuid.uuid4())
    row: dict[str, Any] = dict.fromkeys(RESULT_FIELDS)
    row.update(
        job_id=job_id, batch_id=str(uuid.uuid4()), batch_index=0, status="succeeded", prompt="a red fox in snow",
        negative_prompt="", seed=seed, seed_strategy="explicit", model="tiny", priority="batch",
        params={**PARAMS, "prompt": "a red fox in snow", "seed": seed, "model": "tiny", "tags": {}},
        effective_params={**PARAMS, "prompt": "a red fox in snow", "seed": seed, "model": "tiny", "tags": {}},
        allow_degrade=False, requested_steps=8, effective_steps=8,
        output=f"/outputs/ab/{'ab' * 32}/video.mp4", output_uri=f"file:///outputs/ab/{'ab' * 32}/video.mp4",
        file_sha256="1" * 60 + "e123", frames_sha256="0" * 63 + "7", weights_fingerprint="12345678" * 8,
        timings={"render_s": 1.25, "cache_hit": False, "stats": {"steps": 8}}, cache_of=None, parent_job_id=None,
        starred=False, tags={}, created_at="2026-01-02T03:04:05.678901+00:00",
    )
    row.update(changes)
    return row


def nowhere(row: Any, kind: str) -> None:
    return None


def csv_of(table: Table, *, bom: bool = False) -> str:
    out = io.StringIO(newline="")
    write_csv(table, out, bom=bom)
    return out.getvalue()


def raw_rows(text: str) -> list[dict[str, str]]:
    """The CSV as any CSV reader sees it (no unwrapping)."""
    return list(csv.DictReader(io.StringIO(text.removeprefix(BOM), newline="")))


def test_ids_seeds_and_hashes_are_text_formulas_that_read_back_exactly() -> None:
    rows = [result(MAX_63), result(2**62 + 987_654_321, cache_of=str(uuid.uuid4()), parent_job_id=str(uuid.uuid4())),
            result(0), result(4_294_967_295)]
    text = csv_of(results_table(rows, nowhere))
    raw = raw_rows(text)
    assert raw[0]["seed"] == '="9223372036854775807"'
    assert raw[0]["file_sha256"] == f'="{"1" * 60}e123"'  # a bare 1...1e123 would be read as 1.1E+183
    for line in raw:
        for column in TEXT_COLUMNS:
            assert line[column] == "" or line[column].startswith('="'), (column, line[column])
    back = read_csv(text)
    for line, row in zip(back, rows, strict=True):
        for column in TEXT_COLUMNS:
            want = "" if row[column] is None else str(row[column])
            assert line[column] == want, column
        assert int(line["seed"]) == row["seed"]


@HYPOTHESIS
@given(st.integers(min_value=0, max_value=MAX_63))
def test_any_63_bit_seed_round_trips_through_the_csv_writer(seed: int) -> None:
    [line] = read_csv(csv_of(results_table([result(seed)], nowhere)))
    assert int(line["seed"]) == seed and line["seed"] == str(seed)


@HYPOTHESIS
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=600))
def test_any_text_round_trips_as_a_text_formula(text: str) -> None:
    formula = text_formula(text)
    assert formula.startswith('="') and unwrap(formula) == text


def test_parameters_tags_and_timings_have_columns_of_their_own() -> None:
    rows = [result(1, tags={"scene": "s01", "take": "007"}), result(2, tags={"camera": "a"}, timings=None)]
    table = results_table(rows, nowhere)
    assert not {"params", "effective_params", "tags", "timings", "output"} & set(table.columns)
    assert {*PARAM_COLUMNS, "model", "poster", "video", "tag:scene", "tag:take", "tag:camera",
            "timing.render_s", "timing.cache_hit", "timing.stats.steps"} <= set(table.columns)
    assert not [c for c in table.columns if c.startswith("effective.")]  # rendered as asked
    first, second = table.dicts()
    assert (first["width"], first["height"], first["guidance_scale"], first["sampler"], first["preset"]) == (
        48, 32, 4.0, "unipc", "final")
    assert (first["tag:scene"], first["tag:take"], first["tag:camera"]) == ("s01", "007", None)
    assert second["tag:camera"] == "a" and second["timing.render_s"] is None
    raw = raw_rows(csv_of(table))
    assert raw[0]["width"] == "48" and raw[0]["guidance_scale"] == "4.0"  # numbers stay numbers
    assert raw[0]["tag:take"] == '="007"'  # text that looks like a number stays text
    assert all(not v.startswith(("{", "[")) for line in raw for v in line.values())  # no JSON blobs
    assert read_csv(csv_of(table))[0]["tag:take"] == "007"


def test_a_results_field_added_later_gets_its_own_column() -> None:
    table = results_table([result(1, labels=["keeper", "night"]), result(2, labels=[])], nowhere)
    assert "labels" in table.columns and table.columns[-2:] == ["error_type", "error_message"]
    assert [r["labels"] for r in table.dicts()] == ["keeper, night", ""]


def test_a_degraded_render_gets_an_effective_column_for_what_changed() -> None:
    degraded = result(3, degraded_reason="interactive queue oldest wait 40.0 s >= 30 s", allow_degrade=True,
                      effective_steps=4)
    degraded["effective_params"] = {**degraded["params"], "steps": 4, "preset": "draft", "cache_threshold": 0.2}
    table = results_table([result(1), degraded], nowhere)
    effective = [c for c in table.columns if c.startswith("effective.")]
    assert effective == ["effective.cache_threshold", "effective.preset", "effective.steps"]
    plain, changed = table.dicts()
    assert (changed["steps"], changed["effective.steps"], changed["effective.preset"]) == (8, 4, "draft")
    assert (plain["effective.steps"], plain["effective_steps"]) == (8, 8)


@pytest.mark.parametrize("prompt", ["=HYPERLINK(\"http://example.invalid\",\"x\")", "+1+1", "-2", "@SUM(A1)",
                                    "=cmd|' /C calc'!A0", "TRUE", "1/2", "50%", "2026-01-02"])
def test_free_text_can_never_run_as_a_formula(prompt: str) -> None:
    text = csv_of(results_table([result(1, prompt=prompt)], nowhere))
    [raw] = raw_rows(text)
    assert raw["prompt"] == text_formula(prompt)  # a string literal: evaluates to the text itself
    assert read_csv(text)[0]["prompt"] == prompt


def test_line_breaks_and_overlong_text_in_formulas() -> None:
    assert text_formula("- a\nb") == '="- a"&CHAR(10)&"b"'  # a literal cannot hold a line break
    assert unwrap(text_formula("x" * 600)) == "x" * 600 and text_formula("x" * 600).count("&") == 2
    huge = "-" + "y" * MAX_FORMULA_CHARS
    assert csv_text(huge) == "'" + huge  # too long for a formula: the apostrophe convention
    assert csv_text("a quiet lake at dawn") == "a quiet lake at dawn"  # ordinary text stays plain
    assert (csv_text(None), csv_text(True), csv_text(7), csv_text(7, as_text=True)) == ("", "True", "7", '="7"')


def test_a_file_gets_a_byte_order_mark_and_stdout_none() -> None:
    table = results_table([result(5)], nowhere)
    assert csv_of(table, bom=True).startswith(BOM + "job_id,")
    assert csv_of(table).startswith("job_id,")
    assert read_csv(csv_of(table, bom=True))[0]["seed"] == "5"


def test_xlsx_has_text_cells_for_ids_and_numbers_as_numbers() -> None:
    rows = [result(MAX_63, prompt="=1+1 looks like a formula", cache_of=str(uuid.uuid4()))]
    table = results_table(rows, nowhere)
    out = io.BytesIO()
    write_xlsx(table, out)
    sheet = load_workbook(io.BytesIO(out.getvalue())).active
    header = [c.value for c in sheet[1]]
    assert header == table.columns
    cells = {name: cell for name, cell in zip(header, sheet[2], strict=True)}
    for column in TEXT_COLUMNS - {"parent_job_id"}:
        cell = cells[column]
        assert (cell.value, cell.data_type, cell.number_format) == (str(rows[0][column]), "s", "@"), column
    assert (cells["width"].value, cells["width"].data_type) == (48, "n")
    assert (cells["guidance_scale"].value, cells["batch_index"].value) == (4.0, 0)
    assert (cells["prompt"].value, cells["prompt"].data_type) == ("=1+1 looks like a formula", "s")
    assert cells["starred"].value is False and cells["parent_job_id"].value is None


def test_poster_and_video_from_the_api_or_the_store(tmp_path: Path) -> None:
    output_id = "cd" * 32
    folder = tmp_path / "outputs" / output_id[:2] / output_id
    folder.mkdir(parents=True)
    (folder / "video.mp4").write_bytes(b"mp4")
    (folder / "poster.png").write_bytes(b"png")
    store = OutputStore(tmp_path / "outputs")
    done = result(1, output_uri=OutputStore.uri_of(folder / "video.mp4"))
    queued = result(2, status="queued", output_uri=None)
    gone = result(3, output_uri=OutputStore.uri_of(folder / "video.mp4").replace(output_id, "ef" * 32))
    by_store = results_table([done, queued, gone], store_locator(store)).dicts()
    assert (by_store[0]["poster"], by_store[0]["video"]) == (str(folder.resolve() / "poster.png"),
                                                            str(folder.resolve() / "video.mp4"))
    assert (by_store[1]["poster"], by_store[2]["video"]) == (None, None)  # not rendered; missing from the store
    by_api = results_table([done, queued], api_locator("https://farm.example:8000/")).dicts()
    assert by_api[0]["video"] == f"https://farm.example:8000/v1/jobs/{done['job_id']}/video"
    assert by_api[0]["poster"] == f"https://farm.example:8000/v1/jobs/{done['job_id']}/poster"
    assert by_api[1]["poster"] is None


@pytest.mark.parametrize("url", ["farm.example", "ftp://farm.example", "https://", "https://a b", "javascript:x"])
def test_a_bad_base_url_names_the_option(url: str) -> None:
    with pytest.raises(InvalidInput) as err:
        check_base_url(url)
    assert err.value.fields == ["base_url"]


def test_cli_option_rules_name_the_option() -> None:
    with pytest.raises(InvalidInput) as err:
        check_options("xlsx", None, None)
    assert [(p.field, p.rule) for p in err.value.problems] == [("output", "required_for_format")]
    with pytest.raises(InvalidInput) as err:
        check_options("sheet", None, "https://farm.example")
    assert err.value.fields == ["output", "base_url"]
    check_options("csv", None, "https://farm.example")
    check_options("html", None, None)
