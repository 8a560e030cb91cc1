"""Manifests sent in a request body: JSON (the YAML manifest's schema as a JSON object) or YAML.

Both become a :class:`farm.manifest.Manifest` and go through the same expansion as a manifest
file (``farm validate``, ``farm batch``), so every rule and every problem location is the same;
locations name the request (``request.json: item 2``). Nothing here touches the filesystem.
"""

from __future__ import annotations

import json

from farm.errors import InvalidInput, ManifestError
from farm.manifest import Manifest, parse_manifest
from farm.manifest.loaders import MAX_NESTING, loads_noting_duplicates, measure
from farm.manifest.model import MAX_MANIFEST_BYTES, Issue

#: Media types accepted by ``POST /v1/batches``.
JSON_TYPES = frozenset({"application/json"})
YAML_TYPES = frozenset({"text/yaml", "application/yaml", "application/x-yaml", "text/x-yaml"})
#: Source names of request-body manifests (what problem locations and the batch record show).
JSON_SOURCE = "request.json"
YAML_SOURCE = "request.yaml"
#: Largest manifest body accepted (the same limit as a manifest file).
MAX_BODY_BYTES = MAX_MANIFEST_BYTES


class UnsupportedMediaType(InvalidInput):
    """The body is neither JSON nor YAML (HTTP 415)."""


def media_type(content_type: str | None) -> str:
    """``application/json; charset=utf-8`` -> ``application/json``."""
    return (content_type or "").split(";", 1)[0].strip().lower()


def _text(body: bytes, source: str) -> str:
    if len(body) > MAX_BODY_BYTES:
        raise ManifestError.one("manifest", "max_size", f"is {len(body)} bytes; the limit is {MAX_BODY_BYTES}", source)
    if not body.strip():
        raise ManifestError.one("manifest", "not_empty", "the manifest is empty", source)
    try:
        return body.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ManifestError.one("manifest", "utf8", f"is not UTF-8 text (byte {exc.start})", source) from None


def json_manifest(body: bytes) -> Manifest:
    """A manifest from a JSON object with the YAML manifest's keys (``items``, ``defaults``, ...)."""
    text = _text(body, JSON_SOURCE)
    try:
        data, duplicates = loads_noting_duplicates(text)
    except json.JSONDecodeError as exc:
        raise ManifestError.one(
            "manifest", "json_syntax", f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            JSON_SOURCE,
        ) from None
    except RecursionError:
        raise ManifestError.one("manifest", "max_size", f"is nested deeper than {MAX_NESTING} levels",
                                JSON_SOURCE) from None
    _, depth = measure(data)
    if depth > MAX_NESTING:
        raise ManifestError.one("manifest", "max_size", f"is nested deeper than {MAX_NESTING} levels", JSON_SOURCE)
    if not isinstance(data, dict):
        raise ManifestError.one(
            "manifest", "type", f"the top level must be an object with items, got {type(data).__name__}", JSON_SOURCE
        )
    issues = [Issue((), key, "duplicate_key", "appears twice in the same object") for key in dict.fromkeys(duplicates)]
    return Manifest(JSON_SOURCE, "yaml", data, issues)


def yaml_manifest(body: bytes) -> Manifest:
    """A manifest from YAML text (exactly what a ``.yaml`` manifest file holds)."""
    return parse_manifest(_text(body, YAML_SOURCE), "yaml", YAML_SOURCE)


def manifest_from_body(body: bytes, content_type: str | None) -> Manifest:
    """The manifest of a ``POST /v1/batches`` body.

    :class:`ManifestError` on any problem (an unsupported media type raises
    :class:`UnsupportedMediaType`, on field ``Content-Type``).
    """
    kind = media_type(content_type)
    if kind in JSON_TYPES:
        return json_manifest(body)
    if kind in YAML_TYPES:
        return yaml_manifest(body)
    accepted = ", ".join(sorted(JSON_TYPES | YAML_TYPES))
    raise UnsupportedMediaType.one("Content-Type", "media_type", f"must be one of {accepted}, got {kind or 'none'!r}")
