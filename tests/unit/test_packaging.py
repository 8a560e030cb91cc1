"""The package list in pyproject.toml is the whole farm/ tree (plus the migrations it maps in).

A new subpackage that is not listed would be missing from wheels and images.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_every_subpackage_is_listed_and_the_migrations_are_mapped() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "farm").rglob("__init__.py")}
    mapped = {"farm.ledger.migrations", "farm.ledger.migrations.versions"}
    assert set(config["packages"]) == on_disk | mapped
    assert config["package-dir"] == {"farm.ledger.migrations": "migrations"}
    assert (REPO / "migrations" / "__init__.py").is_file() and (
        REPO / "migrations" / "versions" / "__init__.py"
    ).is_file()
    assert "script.py.mako" in config["package-data"]["farm.ledger.migrations"]
