"""Reading manifest files: YAML, JSONL and CSV into one :class:`~farm.manifest.model.Manifest`.

Every format yields the same content shape (``version``, ``name``, ``defaults``, ``variants``,
``seed_pool``, ``items``), so a YAML manifest and the JSONL or CSV file with the same content have
the same digest. Only what stops a file from being read at all raises here (unknown extension,
unreadable or non-UTF-8 file, YAML syntax, an empty file, a CSV without a ``prompt`` column);
every other problem is collected with its line and reported by the expansion.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from farm.errors import ManifestError
from farm.manifest.model import (
    FORMATS,
    HEADER_KEYS,
    MAX_MANIFEST_BYTES,
    Format,
    Issue,
    LineLocator,
    Manifest,
    YamlLocator,
    describe_location,
)

# -- YAML --------------------------------------------------------------------------------------

if TYPE_CHECKING:  # (the stubs' CSafeLoader and SafeLoader are distinct classes with the same interface)
    _BaseLoader = yaml.SafeLoader
else:
    _BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class ManifestYamlLoader(_BaseLoader):
    """Safe loader (libyaml's when available) that keeps dates as text and records duplicate mapping keys.

    ``name: 2026-11-21`` stays a string; a duplicate key is recorded instead of silently
    keeping the last.
    """

    yaml_implicit_resolvers = {
        first: [(tag, rx) for tag, rx in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[str, int]] = []

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        """The mapping of ``node``, its repeated keys recorded in ``duplicate_keys`` with their lines."""
        if len(node.value) > 1:
            seen: set[str] = set()
            for key_node, _ in node.value:
                if isinstance(key_node, yaml.ScalarNode) and key_node.tag != "tag:yaml.org,2002:merge":
                    if key_node.value in seen:
                        self.duplicate_keys.append((key_node.value, key_node.start_mark.line + 1))
                    seen.add(key_node.value)
        return super().construct_mapping(node, deep=deep)


#: Values a manifest may hold once YAML aliases are expanded (refuses "alias bombs").
MAX_EXPANDED_VALUES = 10_000_000
#: Nesting depth a manifest may have (the format itself needs about 6).
MAX_NESTING = 32


class _TooDeep(Exception):
    pass


def measure(data: Any) -> tuple[int, int]:
    """(values, depth) of parsed content, each shared (aliased) container counted every time it appears.

    Linear in the distinct containers; never recurses deeper than :data:`MAX_NESTING`.
    """
    memo: dict[int, tuple[int, int]] = {}

    def walk(value: Any, level: int) -> tuple[int, int]:
        known = memo.get(id(value))
        if known is not None:
            return known
        if level > MAX_NESTING:
            raise _TooDeep
        size, depth = 1 + len(value), 1
        for child in value.values() if isinstance(value, dict) else value:
            if isinstance(child, dict | list):
                child_size, child_depth = walk(child, level + 1)
                size += child_size
                depth = max(depth, child_depth + 1)
        memo[id(value)] = (size, depth)
        return size, depth

    if not isinstance(data, dict | list):
        return 1, 0
    try:
        return walk(data, 1)
    except _TooDeep:
        return -1, MAX_NESTING + 1


def _size_problem(data: Any) -> str | None:
    """Why ``data`` is too big or too deep to handle, or None."""
    size, depth = measure(data)
    if depth > MAX_NESTING:
        return f"is nested deeper than {MAX_NESTING} levels"
    if size > MAX_EXPANDED_VALUES:
        return f"expands to {size:,} values (through YAML aliases); the limit is {MAX_EXPANDED_VALUES:,}"
    return None


def _read_yaml(text: str, source: str) -> Manifest:
    loader = ManifestYamlLoader(text)
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        detail = " ".join(str(x) for x in (exc.context, exc.problem) if x)
        raise ManifestError.one(
            "manifest", "yaml_syntax", f"not valid YAML: {detail}", describe_location(source, (), line)
        ) from None
    except yaml.YAMLError as exc:
        raise ManifestError.one("manifest", "yaml_syntax", f"not valid YAML: {exc}", source) from None
    except RecursionError:
        # The pure-Python parser and composer recurse once per nesting level; libyaml (PyYAML
        # 6.0.4+) refuses very deep flow nesting itself, as a YAML error (above). Either way the
        # content is deeper than MAX_NESTING long before the stack runs out.
        raise ManifestError.one("manifest", "max_size", f"is nested deeper than {MAX_NESTING} levels", source) from None
    finally:
        loader.dispose()
    if data is None:
        raise ManifestError.one("manifest", "not_empty", "the manifest is empty", source)
    too_big = _size_problem(data)
    if too_big is not None:
        raise ManifestError.one("manifest", "max_size", too_big, source)
    if not isinstance(data, dict):
        raise ManifestError.one(
            "manifest",
            "type",
            f"the top level must be a mapping with items:, got a {type(data).__name__}",
            source,
        )
    issues = [
        Issue((), key, "duplicate_key", "appears twice in the same mapping (the last one would win)", line)
        for key, line in loader.duplicate_keys
    ]
    return Manifest(source, "yaml", data, issues, YamlLocator(source, text, ManifestYamlLoader))


# -- JSONL -------------------------------------------------------------------------------------


def _read_jsonl(text: str, source: str) -> Manifest:
    content: dict[str, Any] = {}
    items: list[Any] = []
    item_lines: list[int] = []
    issues: list[Issue] = []
    header_line: int | None = None
    skip: set[int] = set()
    first = True
    # split on \n only: str.splitlines would also split inside strings at U+2028 and friends
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.strip()
        if not line:
            continue
        obj, error, rule, duplicates = _parse_jsonl_line(line)
        is_header = error is None and first and isinstance(obj, dict) and "prompt" not in obj and "prompts" not in obj
        first = False
        path: tuple[str | int, ...] = () if is_header else ("items", len(items))
        for key in duplicates:
            issues.append(Issue(path, key, "duplicate_key", "appears twice in the same object", lineno))
        if error is not None:
            issues.append(Issue(path, "manifest", rule, error, lineno))
            skip.add(len(items))
            obj = None
        elif is_header:
            header_line = lineno
            _read_jsonl_header(obj, lineno, content, issues)
            continue
        items.append(obj)
        item_lines.append(lineno)
    if not items and not issues and header_line is None:
        raise ManifestError.one("manifest", "not_empty", "the manifest is empty", source)
    content["items"] = items
    return Manifest(source, "jsonl", content, issues, LineLocator(source, item_lines, header_line), skip)


def loads_noting_duplicates(text: str) -> tuple[Any, list[str]]:
    """``json.loads``, plus the keys that appeared twice in one object.

    JSON allows duplicate keys; a manifest must not. Raises what ``json.loads`` raises.
    """
    duplicates: list[str] = []

    def pairs(kv: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(kv)
        if len(out) != len(kv):
            duplicates.extend(k for k, n in Counter(k for k, _ in kv).items() if n > 1)
        return out

    return json.loads(text, object_pairs_hook=pairs), duplicates


def _parse_jsonl_line(line: str) -> tuple[Any, str | None, str, list[str]]:
    """(value, error, rule, duplicate keys) of one JSONL line; no duplicate keys when it has an error."""
    duplicates: list[str] = []
    obj: Any = None
    error: str | None = None
    rule = "json_syntax"
    try:
        obj, duplicates = loads_noting_duplicates(line)
    except json.JSONDecodeError as exc:
        error = f"not valid JSON: {exc.msg} (column {exc.colno})"
    except RecursionError:
        error, rule = f"is nested deeper than {MAX_NESTING} levels", "max_size"
    else:
        error, rule = _size_problem(obj), "max_size"
    if error is not None:
        duplicates.clear()
    return obj, error, rule, duplicates


def _read_jsonl_header(header: dict[str, Any], lineno: int, content: dict[str, Any], issues: list[Issue]) -> None:
    """Copy the header line's keys into ``content``; an unknown key is an issue."""
    for key, value in header.items():
        if key in HEADER_KEYS:
            content[key] = value
        else:
            issues.append(
                Issue(
                    (),
                    key,
                    "unknown_field",
                    "is not a header key (the first line has no prompt/prompts, so it is read as the "
                    f"header; header keys: {', '.join(HEADER_KEYS)})",
                    lineno,
                )
            )


# -- CSV ---------------------------------------------------------------------------------------

#: CSV columns and the type their cells are converted to. ``tag:<key>`` columns set tags.
CSV_INT_COLUMNS = frozenset({"seed", "width", "height", "num_frames", "fps", "steps"})
CSV_FLOAT_COLUMNS = frozenset({"guidance_scale", "guidance_scale_2", "boundary_ratio", "flow_shift", "cache_threshold"})
CSV_BOOL_COLUMNS = frozenset({"allow_degrade"})
#: Text kept exactly as written (the spec normalises prompts).
CSV_RAW_TEXT_COLUMNS = frozenset({"prompt", "negative_prompt"})
#: Text with surrounding spaces removed.
CSV_TEXT_COLUMNS = frozenset({"model", "sampler", "preset", "output_format", "priority", "size"})
CSV_TAG_PREFIX = "tag:"
CSV_COLUMNS = CSV_INT_COLUMNS | CSV_FLOAT_COLUMNS | CSV_BOOL_COLUMNS | CSV_RAW_TEXT_COLUMNS | CSV_TEXT_COLUMNS

_INT_RE = re.compile(r"^[+-]?[0-9]+$")
_TRUE = frozenset({"true", "yes", "on", "1"})
_FALSE = frozenset({"false", "no", "off", "0"})


def _convert_cell(column: str, cell: str) -> tuple[Any, str | None]:
    """(value, None) or (None, error message)."""
    if column in CSV_RAW_TEXT_COLUMNS:
        return cell, None
    text = cell.strip()
    if column in CSV_INT_COLUMNS:
        if _INT_RE.match(text):
            return int(text), None
        return None, f"{cell!r} is not an integer"
    if column in CSV_FLOAT_COLUMNS:
        try:
            return float(text), None
        except ValueError:
            return None, f"{cell!r} is not a number"
    if column in CSV_BOOL_COLUMNS:
        low = text.lower()
        if low in _TRUE:
            return True, None
        if low in _FALSE:
            return False, None
        return None, f"{cell!r} is not a boolean (true/false, yes/no, 1/0)"
    return text, None


def _read_csv(text: str, source: str) -> Manifest:
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise ManifestError.one("manifest", "not_empty", "the manifest is empty", source) from None
    except csv.Error as exc:
        raise ManifestError.one(
            "manifest", "csv_syntax", f"not valid CSV: {exc}", f"{source}: line 1"
        ) from None
    columns = [c.strip() for c in header]
    header_loc = f"{source}: header (line 1)"
    if "prompt" not in columns:
        raise ManifestError.one("prompt", "required", "the header row must have a prompt column", header_loc)
    issues: list[Issue] = []
    usable, unnamed = _csv_columns(columns, issues)
    items: list[Any] = []
    item_lines: list[int] = []
    skip: set[int] = set()
    width = len(columns)
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            issues.append(Issue((), "manifest", "csv_syntax", f"not valid CSV: {exc}", start))
            break
        if not any(cell.strip() for cell in row):
            continue
        here = ("items", len(items))
        if len(row) > width:
            issues.append(
                Issue(here, "manifest", "csv_cells", f"has {len(row)} cells, the header has {width}", start)
            )
        item, broken = _csv_item(row, usable, unnamed, here, start, issues)
        if broken:
            skip.add(len(items))
        items.append(item)
        item_lines.append(start)
    return Manifest(source, "csv", {"items": items}, issues, LineLocator(source, item_lines, 1), skip)


def _csv_columns(columns: list[str], issues: list[Issue]) -> tuple[list[tuple[int, str]], list[int]]:
    """The header's usable columns as (cell index, column), and the indexes of its unnamed ones.

    A repeated or unknown column is an issue.
    """
    usable: list[tuple[int, str]] = []  # (cell index, column)
    unnamed: list[int] = []
    seen: set[str] = set()
    for index, column in enumerate(columns):
        if column in seen:
            issues.append(Issue(("header",), column, "duplicate_column", "appears twice in the header", 1))
            continue
        seen.add(column)
        if column in CSV_COLUMNS or (column.startswith(CSV_TAG_PREFIX) and len(column) > len(CSV_TAG_PREFIX)):
            usable.append((index, column))
        elif not column:
            unnamed.append(index)  # e.g. trailing commas from a spreadsheet: fine while empty
        else:
            issues.append(
                Issue(
                    ("header",),
                    column,
                    "unknown_field",
                    "is not a CSV column (prompt, seed, a scalar spec field, size, or tag:<key>)",
                    1,
                )
            )
    return usable, unnamed


def _csv_item(
    row: list[str],
    usable: list[tuple[int, str]],
    unnamed: list[int],
    here: tuple[str | int, ...],
    start: int,
    issues: list[Issue],
) -> tuple[dict[str, Any], bool]:
    """One row's item, and whether it is broken (a value in an unnamed column, a cell of the wrong type, no prompt)."""
    item: dict[str, Any] = {}
    tags: dict[str, str] = {}
    broken = False
    for index in unnamed:
        if index < len(row) and row[index].strip():
            issues.append(
                Issue(
                    here,
                    f"column {index + 1}",
                    "unknown_field",
                    "has a value but no name in the header",
                    start,
                )
            )
            broken = True
    for index, column in usable:
        cell = row[index] if index < len(row) else ""
        if not cell.strip():
            continue
        if column.startswith(CSV_TAG_PREFIX):
            tags[column[len(CSV_TAG_PREFIX) :]] = cell.strip()
            continue
        value, error = _convert_cell(column, cell)
        if error is None:
            item[column] = value
        else:
            issues.append(Issue(here, column, "type", error, start))
            broken = True
    if "prompt" not in item:
        issues.append(Issue(here, "prompt", "required", "the prompt cell is empty", start))
        broken = True
    if "seed" not in item:
        item["seed"] = {"from_prompt": True}
    if tags:
        item["tags"] = tags
    return item, broken


# -- entry points ------------------------------------------------------------------------------

_READERS = {"yaml": _read_yaml, "jsonl": _read_jsonl, "csv": _read_csv}


def parse_manifest(text: str, format: Format, source: str = "<manifest>") -> Manifest:
    """Parse manifest text already in memory; ``source`` names it in every location."""
    if format not in _READERS:
        raise ManifestError.one(
            "manifest", "format", f"unknown format {format!r}; use yaml, jsonl or csv", source
        )
    return _READERS[format](text, source)


def load_manifest(path: str | os.PathLike[str]) -> Manifest:
    """Read a manifest file; the format comes from the extension (.yaml/.yml, .jsonl, .csv)."""
    p = Path(path)
    source = str(path)
    fmt = FORMATS.get(p.suffix.lower())
    if fmt is None:
        raise ManifestError.one(
            "manifest",
            "format",
            f"unknown manifest extension {p.suffix or '(none)'!r}; use .yaml, .yml, .jsonl or .csv",
            source,
        )
    try:
        size = p.stat().st_size
        if size > MAX_MANIFEST_BYTES:
            raise ManifestError.one(
                "manifest", "max_size", f"is {size} bytes; the limit is {MAX_MANIFEST_BYTES}", source
            )
        data = p.read_bytes()
    except OSError as exc:
        raise ManifestError.one(
            "manifest", "readable", f"cannot read: {exc.strerror or exc}", source
        ) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ManifestError.one(
            "manifest", "utf8", f"is not UTF-8 text (byte {exc.start})", describe_location(source, (), line)
        ) from None
    return parse_manifest(text, fmt, source)
