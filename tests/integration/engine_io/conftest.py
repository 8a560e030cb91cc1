"""Fixtures for the engine I/O tests: a tiny Diffusers-format model directory built in code."""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from pathlib import Path
from typing import Any

import pytest
from tiny_weights import build_tiny_pipeline

from farm.profiles import PROFILES, ModelProfile

TINY_SUBDIR = "Tiny-T2V-Diffusers"
#: Files written by the fixture get this age, so the fingerprint cache may trust them.
OLD_SECONDS = 3600


def tiny_profile(subdir: str = TINY_SUBDIR, *, dense: bool = False) -> ModelProfile:
    """The built-in tiny profile, pointed at a directory (like the real A14B / TI2V profiles)."""
    if dense:
        return dataclasses.replace(
            PROFILES["tiny-dense"], source="directory", weights_subdir=subdir,
            required_files=PROFILES["wan2.2-ti2v-5b"].required_files,
        )
    return dataclasses.replace(
        PROFILES["tiny"], source="directory", weights_subdir=subdir,
        required_files=PROFILES["wan2.2-t2v-a14b"].required_files,
    )


#: The "wide" variant: a VAE much wider than the tiny one (base_dim 32, dim_mult 1,2,4,4: at
#: 128x128 and 17 frames its CPU conv3d gives other floats with 1 and 2 threads) and wider experts.
WIDE_SUBDIR = "Wide-T2V-Diffusers"


def age_tree(root: Path, seconds: float = OLD_SECONDS) -> None:
    """Set every file's mtime ``seconds`` into the past."""
    past = time.time() - seconds
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            os.utime(Path(dirpath) / name, (past, past))


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """(directory, pipeline): the tiny pipeline and its save_pretrained directory (read only: copy it)."""
    root = tmp_path_factory.mktemp("tiny-src")
    pipe = build_tiny_pipeline()
    directory = root / TINY_SUBDIR
    pipe.save_pretrained(directory)
    age_tree(directory)
    return directory, pipe


@pytest.fixture
def models_path(tmp_path: Path, tiny_source: tuple[Path, Any]) -> Path:
    """A fresh models directory holding a private copy of the tiny model (mtimes kept, old)."""
    src, _ = tiny_source
    models = tmp_path / "models"
    shutil.copytree(src, models / TINY_SUBDIR, copy_function=shutil.copy2)
    return models


def save_pipeline(root: Path, subdir: str, **options: Any) -> Path:
    """:func:`build_tiny_pipeline` with ``options``, saved with ``save_pretrained`` under ``root/subdir``."""
    directory = root / subdir
    build_tiny_pipeline(**options).save_pretrained(directory)
    age_tree(directory)
    return directory


@pytest.fixture(scope="session")
def wide_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A models directory holding the wide model (:data:`WIDE_SUBDIR`; read only)."""
    root = tmp_path_factory.mktemp("wide-models")
    save_pipeline(root, WIDE_SUBDIR, wide=True)
    return root
