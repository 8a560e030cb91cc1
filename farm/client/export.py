"""Results as a spreadsheet: the rows of ``farm results ID --format csv|xlsx``.

One row per job (manifest order), parameters flattened into their own columns (``width``,
``height``, ``num_frames``, ``fps``, ``steps``, ``guidance_scale``, ..., ``sampler``, ``preset``,
``model``), tags as ``tag:<key>`` columns (named like a manifest CSV's tag
columns), timings as ``timing.<key>``, an ``effective.<key>``
column for each parameter some job rendered otherwise than asked (degraded renders), and the
``poster`` and ``video`` of each succeeded job: the file path on a file store, a presigned URL on
an s3 store, or the API's download URLs (``--base-url``). No JSON blobs (``--format json`` keeps
the machine form).

**Seeds and ids stay text.** A spreadsheet reads a bare 19-digit number as a float: a seed like
9223372036854775807 comes back as 9.22337203685478E+18 (15 significant digits), a hash like
``1e5...`` as a number, ``00123`` as 123. Quoting the field does not help (the CSV quotes only
delimit it). In the CSV every id, seed and hash (:data:`TEXT_COLUMNS`) is written as a *text
formula* ``="9223372036854775807"`` (quotes doubled inside the CSV field): Excel and
LibreOffice Calc evaluate formulas on their default CSV import and this one evaluates to the
string itself, so the cell is text, shows the digits, and the sheet saved as .xlsx/.ods or CSV
again keeps them (tests/integration/producers/test_results_spreadsheet.py runs LibreOffice's
default import on it: CSV -> xlsx/ods -> CSV). This is the documented Excel convention for
"keep this as text" (``="0123"``); the alternatives fail a default import: a leading apostrophe
stays in the cell in LibreOffice, a leading tab or space changes the value, and "format quoted
fields as text" is an import option, off by default. farm's own reader, :func:`read_csv`, strips
the formula back to the text. The .xlsx export needs no trick: ids and seeds are text cells
(``number_format "@"``), numbers are numbers.

**Free text cannot run.** Because the spreadsheet evaluates formulas, a prompt (or tag, error
message) that starts with ``=``, ``+``, ``-`` or ``@`` would run as one (CSV injection, e.g.
``=HYPERLINK(...)``). Such text, and text a spreadsheet would read as a number or a date
(a tag ``007``, ``1/2``), is written the same way, as a string-literal formula that evaluates to
the text itself (split into 255-character pieces, Excel's limit for a literal, with
``CHAR(10)``/``CHAR(13)`` for line breaks, which a literal cannot hold); text too long for a
formula (over :data:`MAX_FORMULA_CHARS`) gets a leading apostrophe instead. In the .xlsx every
string is a string cell, never a formula.

**Encoding.** UTF-8; a file (``--output``) starts with a byte-order mark, which Excel needs to
read UTF-8 (without it non-ASCII prompts come out garbled); stdout has none (pipes, ``csv`` in
scripts). Ids, seeds and hashes are ASCII either way.

Standard library only (openpyxl, imported only by :func:`write_xlsx`, for the .xlsx).
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any

from farm.client.reads import DOWNLOADS
from farm.client.reports import flat
from farm.errors import InvalidInput
from farm.manifest.loaders import CSV_TAG_PREFIX

if TYPE_CHECKING:
    from farm.store import StoreBackend

#: A cell's value: text, a number, a flag, or empty.
Cell = str | int | float | bool | None
#: ``locate(row, kind)``: where a results row's ``poster``/``video`` is (None: nowhere to point at).
Locate = Callable[[Mapping[str, Any], str], str | None]

#: Columns that hold ids, seeds and hashes: always text, never a number in a spreadsheet.
TEXT_COLUMNS: frozenset[str] = frozenset({
    "job_id", "batch_id", "seed", "cache_of", "parent_job_id", "file_sha256", "frames_sha256",
    "weights_fingerprint",
})
#: The render parameters, each in its own column, in this order (from the job's canonical params).
PARAM_COLUMNS: tuple[str, ...] = (
    "preset", "width", "height", "num_frames", "fps", "steps", "guidance_scale", "guidance_scale_2",
    "boundary_ratio", "flow_shift", "sampler", "cache_threshold", "output_format",
)
#: Parameters that have a column of their own already (not repeated from ``params``).
_TOP_LEVEL_PARAMS = frozenset({
    "prompt", "negative_prompt", "seed", "model", "seed_strategy", "priority", "allow_degrade", "tags",
})
_HEAD = ("job_id", "batch_id", "batch_index", "status", "prompt", "negative_prompt", "seed", "seed_strategy", "model")
_MIDDLE = ("priority", "starred", "allow_degrade", "degraded_reason", "requested_steps", "effective_steps")
_OUTPUTS = ("poster", "video", "output_uri", "file_sha256", "frames_sha256", "weights_fingerprint", "cache_of",
            "parent_job_id", "created_at", "started_at", "finished_at")
_TAIL = ("error_type", "error_message")
#: Results fields the table shows in other columns (flattened), or not at all (``output``: ``video``).
_FLATTENED = frozenset({"params", "effective_params", "tags", "timings", "output"})
_FIXED = frozenset({*_HEAD, *_MIDDLE, *_OUTPUTS, *_TAIL})

#: Excel's limit for a string literal inside a formula.
LITERAL_CHARS = 255
#: Longest text formula written (Excel's limit for a formula is 8192 characters).
MAX_FORMULA_CHARS = 8000
#: Text a spreadsheet would evaluate: formulas (``=``, ``+``, ``-``, ``@``) and control characters.
_TRIGGERS = ("=", "+", "-", "@", "\t", "\r", "\n")
#: Text made only of what numbers, dates, times, percentages and currencies are made of.
_NUMBERISH = re.compile(r"[\s\d.,:;/%+\-eE$€£¥()'#]*\d[\s\d.,:;/%+\-eE$€£¥()'#]*")
_BOOLISH = frozenset({"true", "false", "wahr", "falsch", "vrai", "faux"})
#: A text formula as :func:`text_formula` writes it: ``="..."`` pieces joined by ``&``.
_FORMULA = re.compile(r'="(?:[^"]|"")*"(?:&(?:"(?:[^"]|"")*"|CHAR\(1[03]\)))*')
_PIECE = re.compile(r'"((?:[^"]|"")*)"|CHAR\((1[03])\)')
#: A UTF-8 byte-order mark (Excel reads a CSV as UTF-8 only when it starts with one).
BOM = "\ufeff"


@dataclass(frozen=True)
class Table:
    """The export of a results listing: column names and one row of cells per job."""

    columns: list[str]
    rows: list[list[Cell]]

    def dicts(self) -> list[dict[str, Cell]]:
        """The rows as ``{column: cell}``."""
        return [dict(zip(self.columns, row, strict=True)) for row in self.rows]


# -- the table ---------------------------------------------------------------------------------


def _scalar(value: Any) -> Cell:
    """A cell value: scalars as they are, a list of texts joined by ", ", anything else nested as compact JSON."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
        return ", ".join(value)
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def _timings(row: Mapping[str, Any]) -> dict[str, Any]:
    """A row's timings as ``{"timing.<key>": value}`` (nested ones as ``timing.<a>.<b>``)."""
    timings = row.get("timings")
    return flat(timings, "timing") if timings else {}


def _differing(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The parameters some job rendered with another value than asked (``effective_params``)."""
    keys: set[str] = set()
    for row in rows:
        effective, asked = row.get("effective_params") or {}, row.get("params") or {}
        keys.update(k for k, v in effective.items() if k not in ("tags",) and asked.get(k) != v)
    return sorted(keys)


def _columns(rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """The columns, and the extra parameters and the differing effective parameters they include.

    Results fields this module does not know (added since) get a column of their own, by name.
    """
    extra = sorted({k for r in rows for k in (r.get("params") or {})} - _TOP_LEVEL_PARAMS - set(PARAM_COLUMNS))
    tags = sorted({k for r in rows for k in (r.get("tags") or {})})
    timings = sorted({k for r in rows for k in _timings(r)})
    effective = _differing(rows)
    others = sorted({k for r in rows for k in r} - _FIXED - _FLATTENED)
    columns = [*_HEAD, *PARAM_COLUMNS, *(f"param.{k}" for k in extra), *(f"{CSV_TAG_PREFIX}{k}" for k in tags),
               *_MIDDLE, *(f"effective.{k}" for k in effective), *_OUTPUTS, *timings, *others, *_TAIL]
    return columns, extra, effective


def _cells(row: Mapping[str, Any], extra: list[str], effective: list[str], locate: Locate) -> dict[str, Cell]:
    params = row.get("params") or {}
    out: dict[str, Cell] = {k: _scalar(v) for k, v in row.items() if k not in _FLATTENED}
    out.update({k: _scalar(params.get(k)) for k in PARAM_COLUMNS})
    out.update({f"param.{k}": _scalar(params.get(k)) for k in extra})
    out.update({f"{CSV_TAG_PREFIX}{k}": _scalar(v) for k, v in (row.get("tags") or {}).items()})
    rendered = row.get("effective_params") or {}
    out.update({f"effective.{k}": _scalar(rendered.get(k)) for k in effective})
    out.update({k: _scalar(v) for k, v in _timings(row).items()})
    out["poster"], out["video"] = locate(row, "poster"), locate(row, "video")
    return out


def results_table(rows: Sequence[Mapping[str, Any]], locate: Locate) -> Table:
    """The export of results rows (:meth:`farm.client.Client.results`), ``locate`` giving poster and video."""
    columns, extra, effective = _columns(rows)
    table = []
    for row in rows:
        cells = _cells(row, extra, effective, locate)
        table.append([cells.get(c) for c in columns])
    return Table(columns, table)


# -- where the files are -----------------------------------------------------------------------


def check_base_url(base_url: str) -> str:
    """The API's base URL (``http(s)://host[:port][/prefix]``), without a trailing slash."""
    if not re.fullmatch(r"https?://[^\s/?#]+(/[^\s?#]*)?", base_url):
        raise InvalidInput.one("base_url", "http_url",
                               f"must be the API's http(s) base URL, e.g. https://farm.example:8000, got {base_url!r}")
    return base_url.rstrip("/")


def _ready(row: Mapping[str, Any]) -> bool:
    return row.get("status") == "succeeded" and bool(row.get("output_uri"))


def api_locator(base_url: str) -> Locate:
    """Poster and video as the API's download URLs (``{base}/v1/jobs/{id}/poster``, ``/video``)."""
    base = check_base_url(base_url)

    def locate(row: Mapping[str, Any], kind: str) -> str | None:
        return f"{base}/v1/jobs/{row['job_id']}/{kind}" if kind in DOWNLOADS and _ready(row) else None

    return locate


def store_locator(store: StoreBackend) -> Locate:
    """Poster and video where the output store serves them: a file path (file store), a presigned URL (s3)."""

    def locate(row: Mapping[str, Any], kind: str) -> str | None:
        served = store.serve(row["output_uri"], poster=kind == "poster") if _ready(row) else None
        if served is None:
            return None
        return served.url if served.url is not None else str(served.path)

    return locate


# -- CSV ---------------------------------------------------------------------------------------


def text_formula(text: str) -> str:
    """A formula a spreadsheet evaluates to exactly ``text``: ``="..."`` (see the module docstring)."""
    pieces: list[str] = []
    for line in re.split(r"(\r|\n)", text):
        if line in ("\r", "\n"):
            pieces.append(f"CHAR({ord(line)})")
            continue
        for start in range(0, len(line), LITERAL_CHARS):
            pieces.append('"' + line[start:start + LITERAL_CHARS].replace('"', '""') + '"')
    if not pieces or not pieces[0].startswith('"'):
        pieces.insert(0, '""')
    return "=" + "&".join(pieces)


def _needs_protection(text: str) -> bool:
    """True for text a spreadsheet would evaluate or read as something other than this text."""
    return text.startswith(_TRIGGERS) or text.lower() in _BOOLISH or _NUMBERISH.fullmatch(text) is not None


def csv_text(value: Cell, *, as_text: bool = False) -> str:
    """One CSV cell: ``as_text`` (ids, seeds, hashes) as a text formula, free text made safe, numbers as they are."""
    if value is None:
        return ""
    if isinstance(value, bool | int | float):
        text = str(value) if isinstance(value, bool) else repr(value)
        if not as_text:
            return text  # numbers and flags as the spreadsheet's own
    else:
        text = value
    if not (as_text or _needs_protection(text)):
        return text
    formula = text_formula(text)
    return formula if len(formula) <= MAX_FORMULA_CHARS else "'" + text


def write_csv(table: Table, out: IO[str], *, bom: bool = False) -> None:
    """Write ``table`` as CSV (``bom``: start with a UTF-8 byte-order mark, for files Excel opens)."""
    if bom:
        out.write(BOM)
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow([csv_text(c) for c in table.columns])
    for row in table.rows:
        writer.writerow([csv_text(v, as_text=c in TEXT_COLUMNS) for c, v in zip(table.columns, row, strict=True)])


def unwrap(cell: str) -> str:
    """A CSV cell as text: a text formula (``="..."``) becomes its text; anything else stays as it is."""
    if _FORMULA.fullmatch(cell) is None:
        return cell
    return "".join(chr(int(code)) if code else piece.replace('""', '"')
                   for piece, code in _PIECE.findall(cell[1:]))


def read_csv(text: str) -> list[dict[str, str]]:
    """The results CSV as farm reads it back: rows as ``{column: text}``, text formulas unwrapped, the BOM dropped."""
    reader = csv.reader(io.StringIO(text.removeprefix(BOM), newline=""))
    header = [unwrap(h) for h in next(reader, [])]
    return [dict(zip(header, (unwrap(c) for c in row), strict=False)) for row in reader]


# -- xlsx --------------------------------------------------------------------------------------


def _xlsx_cell(sheet: Any, value: Cell, as_text: bool) -> Any:
    """A write-only openpyxl cell: text as a string cell (never a formula), ids as "@" text cells."""
    from openpyxl.cell import WriteOnlyCell
    from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE

    if value is None:
        return WriteOnlyCell(sheet, value=None)
    if as_text or isinstance(value, str):
        text = value if isinstance(value, str) else str(value)
        cell = WriteOnlyCell(sheet, value=ILLEGAL_CHARACTERS_RE.sub("\ufffd", text))
        cell.data_type = "s"  # a string starting with "=" stays a string, never a formula
        if as_text:
            cell.number_format = "@"
        return cell
    return WriteOnlyCell(sheet, value=value)


def write_xlsx(table: Table, out: IO[bytes]) -> None:
    """Write ``table`` as an .xlsx workbook (one sheet, streamed: memory stays flat for long tables)."""
    from openpyxl import Workbook

    book = Workbook(write_only=True)
    sheet = book.create_sheet(title="results")
    sheet.freeze_panes = "A2"
    sheet.append([_xlsx_cell(sheet, c, True) for c in table.columns])
    for row in table.rows:
        sheet.append([_xlsx_cell(sheet, v, c in TEXT_COLUMNS) for c, v in zip(table.columns, row, strict=True)])
    book.save(out)


def export_rows(rows: Iterable[Mapping[str, Any]], store: StoreBackend, base_url: str | None = None) -> Table:
    """The export of results rows, poster and video from ``base_url`` (the API) or else the output store."""
    locate = api_locator(base_url) if base_url is not None else store_locator(store)
    return results_table(list(rows), locate)
