"""The parsed manifest, its digest, and where in the file each problem is.

A :class:`Manifest` is the content of a manifest file as parsed (nothing expanded or checked
yet), the problems its reader already found (bad JSONL lines, bad CSV cells, duplicate keys),
and a *locator* that turns a path inside the content (``("items", 2, "width")``) into a location
people can find: ``"day.yaml: item 3 (line 17)"``.
"""

from __future__ import annotations

import hashlib
import json
import reprlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Literal

from farm.errors import Problem

Format = Literal["yaml", "jsonl", "csv"]
#: A path inside the manifest content: mapping keys and 0-based list indexes.
ContentPath = tuple[str | int, ...]

#: The only manifest version so far.
MANIFEST_VERSION = 1
#: Hard cap on the jobs one manifest may expand to.
MAX_JOBS_PER_MANIFEST = 100_000
#: Largest manifest file farm reads.
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
#: Problems collected before expansion stops (``farm validate --max-errors``).
DEFAULT_MAX_PROBLEMS = 50
#: Longest batch name.
MAX_NAME_CHARS = 200
#: Domain separation for manifest digests; part of every digest.
DIGEST_DOMAIN = "farm.manifest/1"

#: Keys of the top-level mapping (YAML) or of the JSONL header line.
TOP_LEVEL_KEYS: tuple[str, ...] = ("version", "name", "defaults", "variants", "seed_pool", "items")
#: Keys the JSONL header line may have (``items`` are the other lines).
HEADER_KEYS: tuple[str, ...] = ("version", "name", "defaults", "variants", "seed_pool")

#: Extension -> format.
FORMATS: dict[str, Format] = {".yaml": "yaml", ".yml": "yaml", ".jsonl": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class Issue:
    """A problem before its location is resolved: where it is in the content, or on which line."""

    path: ContentPath
    field: str
    rule: str
    message: str
    #: The line, when the reader knows it directly (JSON syntax, CSV cells, duplicate keys).
    line: int | None = None


Locator = Callable[[ContentPath, "int | None"], str]


_REPR = reprlib.Repr()  # (keyword arguments only from Python 3.12)
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxtuple, _REPR.maxset = 3, 4, 6, 6, 6
_REPR.maxstring = _REPR.maxother = 60


def short_repr(value: object) -> str:
    """A bounded repr for messages (never walks all of a large or deep value)."""
    return _REPR.repr(value)


def describe_location(source: str, path: ContentPath, line: int | None) -> str:
    """``day.yaml: item 3 (line 17)``, ``day.yaml: defaults (line 2)``, ``day.yaml: line 5``."""
    where = ""
    if path:
        head = path[0]
        if head == "items" and len(path) > 1 and isinstance(path[1], int):
            where = f"item {path[1] + 1}"
        else:
            where = str(head)
    if where and line:
        return f"{source}: {where} (line {line})"
    if where:
        return f"{source}: {where}"
    if line:
        return f"{source}: line {line}"
    return source


class LineLocator:
    """Locations for line-oriented formats (JSONL, CSV): every item sits on a known line."""

    def __init__(self, source: str, item_lines: list[int], header_line: int | None) -> None:
        self.source = source
        self.item_lines = item_lines
        self.header_line = header_line

    def __call__(self, path: ContentPath, line: int | None) -> str:
        """Where ``path`` (or ``line``) is: an item's line, or the header's for a header field."""
        if line is None and path:
            if path[0] == "items" and len(path) > 1 and isinstance(path[1], int):
                if 0 <= path[1] < len(self.item_lines):
                    line = self.item_lines[path[1]]
            elif path[0] != "items":
                line = self.header_line
        return describe_location(self.source, path, line)


class YamlLocator:
    """Locations in a YAML file.

    Composes the document (only when there is a problem to place) and walks the node tree
    along the path, down to the deepest node that exists.
    """

    def __init__(self, source: str, text: str, loader: type[Any]) -> None:
        self.source = source
        self._text = text
        self._loader = loader
        self._root: Any = None
        self._composed = False

    def _root_node(self) -> Any:
        if not self._composed:
            import yaml

            self._composed = True
            try:
                self._root = yaml.compose(self._text, Loader=self._loader)
            except yaml.YAMLError:  # it loaded once, so this should not happen
                self._root = None
        return self._root

    def line_of(self, path: ContentPath) -> int | None:
        """The line (1-based) of the deepest node along ``path`` that exists, or None."""
        import yaml

        node = self._root_node()
        if node is None:
            return None
        line: int | None = None
        for step in path:
            if isinstance(node, yaml.MappingNode) and isinstance(step, str):
                for key_node, value_node in node.value:
                    if isinstance(key_node, yaml.ScalarNode) and key_node.value == step:
                        line = key_node.start_mark.line + 1
                        node = value_node
                        break
                else:
                    break
            elif (
                isinstance(node, yaml.SequenceNode) and isinstance(step, int) and 0 <= step < len(node.value)
            ):
                node = node.value[step]
                line = node.start_mark.line + 1
            else:
                break
        return line

    def item_at(self, line: int) -> int | None:
        """The index of the item whose text contains ``line`` (1-based), if any."""
        import yaml

        root = self._root_node()
        if not isinstance(root, yaml.MappingNode):
            return None
        for key_node, value_node in root.value:
            if getattr(key_node, "value", None) == "items" and isinstance(value_node, yaml.SequenceNode):
                found = None
                for index, node in enumerate(value_node.value):
                    if node.start_mark.line + 1 > line:
                        break
                    found = index
                if found is not None and line <= value_node.end_mark.line + 1:
                    return found
        return None

    def __call__(self, path: ContentPath, line: int | None) -> str:
        """Where ``path`` is (its line found in the document), or the item on ``line``."""
        if line is None and path:
            line = self.line_of(path)
        elif line is not None and not path:
            index = self.item_at(line)
            if index is not None:
                path = ("items", index)
        return describe_location(self.source, path, line)


def _jsonable(value: Any) -> Any:
    """Content with anything JSON cannot hold made printable (only reached for invalid input)."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return {"__unsupported__": type(value).__name__, "repr": repr(value)}


def content_digest(content: Mapping[str, Any]) -> str:
    """sha256 (hex) of the domain and the canonical JSON of the parsed content."""
    try:
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError):
        text = json.dumps(_jsonable(content), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(f"{DIGEST_DOMAIN}\n{text}".encode()).hexdigest()


@dataclass
class Manifest:
    """A manifest as read: its content, the reader's problems, and how to locate a path."""

    #: The file (as given) or another name for the input; starts every location.
    source: str
    format: Format
    #: The parsed content: top-level keys as written (YAML, JSONL header) and ``items``.
    content: dict[str, Any]
    #: Problems the reader found (the expansion reports them first).
    issues: list[Issue] = field(default_factory=list)
    locator: Locator | None = None
    #: Indexes of items the reader could not read whole (already reported): not expanded.
    skip_items: set[int] = field(default_factory=set)

    @property
    def items(self) -> list[Any]:
        """The ``items`` list (empty when it is missing or not a list)."""
        items = self.content.get("items")
        return items if isinstance(items, list) else []

    @property
    def name(self) -> str | None:
        """The manifest's ``name``, when it is text."""
        name = self.content.get("name")
        return name if isinstance(name, str) else None

    def canonical_content(self) -> dict[str, Any]:
        """The expansion input: every top-level key present (absent ones at their defaults)."""
        c = self.content
        out = {
            "version": c.get("version", MANIFEST_VERSION),
            "name": c.get("name"),
            "defaults": c.get("defaults") or {},
            "variants": c.get("variants") or {},
            "seed_pool": c.get("seed_pool"),
            "items": c.get("items"),
        }
        out.update({k: v for k, v in c.items() if k not in out})  # unknown keys (invalid anyway)
        return out

    @cached_property
    def digest(self) -> str:
        """The manifest digest: see :func:`manifest_digest`."""
        return content_digest(self.canonical_content())

    def locate(self, path: ContentPath, line: int | None = None) -> str:
        """The location of ``path`` (or ``line``) in the file, for a problem."""
        if self.locator is None:
            return describe_location(self.source, path, line)
        return self.locator(path, line)

    def problem(self, issue: Issue) -> Problem:
        """The :class:`Problem` for ``issue``, located in the file."""
        return Problem(issue.field, issue.rule, issue.message, self.locate(issue.path, issue.line))


def manifest_digest(manifest: Manifest) -> str:
    """sha256 of the canonical JSON of the manifest's parsed content (not of the file's bytes).

    Reformatting a file (indentation, flow or block style, key order, comments, quoting) keeps the
    digest; changing any value changes it. Random seed requests are part of it as requests
    (``{random: 4}``), not as the seeds drawn.
    """
    return manifest.digest
