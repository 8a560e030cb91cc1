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
    # folders of data files only (the review room's templates and static files) ship as packages too
    data_dirs = {".".join(d.relative_to(REPO).parts) for d in (REPO / "farm").rglob("*")
                 if d.is_dir() and d.name != "__pycache__" and not (d / "__init__.py").exists()
                 and any(f.is_file() for f in d.iterdir())}
    assert {"farm.api.review.templates", "farm.api.review.static"} <= data_dirs
    assert set(config["packages"]) == on_disk | mapped | data_dirs
    for data_dir in data_dirs:
        patterns = config["package-data"][data_dir]
        files = {f.name for f in (REPO / data_dir.replace(".", "/")).iterdir() if f.is_file()}
        assert {f for f in files if any(Path(f).match(p) for p in patterns)} == files, (data_dir, patterns)
    assert config["package-dir"] == {"farm.ledger.migrations": "migrations"}
    assert (REPO / "migrations" / "__init__.py").is_file() and (
        REPO / "migrations" / "versions" / "__init__.py"
    ).is_file()
    assert "script.py.mako" in config["package-data"]["farm.ledger.migrations"]
