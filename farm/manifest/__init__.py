"""Batch manifests: a day's production as prompts x seeds x variants, expanded into jobs.

API::

    batch = expand(load_manifest("day.yaml"))   # raises ManifestError listing every problem
    batch.jobs        # [ExpandedJob(spec, job_key, item)], seeds and seed_strategy resolved
    batch.digest      # manifest digest: the batch's identity
    batch.stats       # counts: items, jobs, prompts, seeds, variants, per model, per strategy

``farm validate FILE`` is the dry run of the same code. Torch-free.

YAML format (``.yaml`` / ``.yml``)
==================================

.. code-block:: yaml

    version: 1                       # optional; the only version is 1
    name: spring-campaign-2026-11-21 # optional batch name (1-200 printable characters)
    defaults:                        # optional: any spec field, for every item
      model: tiny
      priority: batch
      tags: {campaign: spring}
    variants:                        # optional: field -> list of values, for every item
      guidance_scale: [3.5, 4.0]
    seed_pool: [11, 22, 33]          # optional: seeds for items with seed: pool
    items:
      - prompt: "a red sneaker on a wet street, night, neon"
        seeds: [1, 2, 3]
      - prompts: ["product shot A", "product shot B"]
        seed: {from_prompt: {salt: "v1", count: 2}}
      - prompt: "a paper boat in a gutter"
        seed: {sweep: {base: 1000, radius: 2}}
      - prompt: "dolly shot through a greenhouse"
        seed: {random: 4}
      - prompt: "a sneaker on a turntable"
        seed: pool
        variants: {size: ["832x480", "480x832"]}
        negative_prompt: "blurry"

Top-level keys are exactly ``version``, ``name``, ``defaults``, ``variants``, ``seed_pool``,
``items``; anything else is an error. Dates stay text (``name: 2026-11-21`` is a string) and a
key given twice in one mapping is an error.

``defaults``
    Any render spec field (``model``, ``negative_prompt``, ``width``, ``height``, ``num_frames``,
    ``fps``, ``steps``, ``guidance_scale``, ``guidance_scale_2``, ``boundary_ratio``,
    ``flow_shift``, ``sampler``, ``output_format``, ``priority``, ``allow_degrade``, ``tags``) and
    ``size``. Not ``prompt``/``seed`` (each item gives its own) and not ``seed_strategy`` (the
    expansion records it). Each default's value is checked once, at ``defaults``.

Item keys
    * the prompt: exactly one of ``prompt: TEXT`` or ``prompts: [TEXT, ...]``;
    * the seed selection: exactly one of ``seeds:`` or ``seed:`` (an item without one is an
      error on field ``seed``):

      ==========================================  =============  ===============================
      selection                                   seed_strategy  seeds of each prompt
      ==========================================  =============  ===============================
      ``seed: 42``                                explicit       ``[42]``
      ``seeds: [1, 2, 3]``                        explicit       the list (no repeats)
      ``seed: {from_prompt: true}``               prompt         ``[seed_from_prompt(p)]``
      ``seed: {from_prompt: {salt: S, count: N}}``  prompt       ``seeds_from_prompt(p, N, S)``
      ``seed: {sweep: {base: B, radius: R}}``     sweep          ``sweep(B, R)`` (optional
                                                                 ``include_base: false``)
      ``seed: {random: N}``                       random         N draws of ``random_seed()``
      ``seed: pool`` / ``seed: {pool: N}``        pool           the next 1 / N seeds of
                                                                 ``seed_pool``, round-robin
      ==========================================  =============  ===============================

      A ``seed:`` mapping has exactly one key. The pool is shared by the whole manifest and
      taken in expansion order (items in order, prompts in order).
    * ``variants:`` the item's own axes (see below);
    * any spec field, and ``size``, overriding the defaults; ``tags`` merge over the default tags
      (the item's win), every other field replaces the default.

``variants``
    ``field: [value, ...]``: every job is rendered once per value; several fields make the
    cartesian product. Fields that can vary: the render fields other than prompt and seed
    (``model``, ``negative_prompt``, ``width``, ``height``, ``num_frames``, ``fps``, ``steps``,
    ``guidance_scale``, ``guidance_scale_2``, ``boundary_ratio``, ``flow_shift``, ``sampler``,
    ``output_format``) and ``size``. Metadata (priority, tags, ...) cannot vary: it does not change
    the render. Values are single values, listed once each; ``size: ["832x480"]`` is sugar for
    ``width`` and ``height`` together (and may not be combined with a ``width``/``height`` axis).

    Precedence, lowest first: ``defaults`` < top-level ``variants`` < the item's fields < the
    item's ``variants``. A top-level axis is dropped for an item that sets all of its fields
    itself (as fields or in its own variants); setting only part of it (``width`` against a
    top-level ``size`` axis) is an error, and so is setting a field both directly and as a
    variant in the same item.

Expansion order and identity
    Items in file order; within an item, prompts in order, then seeds in order, then variant
    combinations (axes sorted by field name, values in the order listed). Every job is a
    validated :class:`~farm.spec.RenderSpec` with its resolved ``seed`` and ``seed_strategy``.

    **Duplicates are errors.** Two jobs with the same job key (same render parameters: same
    normalised prompt, seed, model, size, ...; metadata such as tags does not count) anywhere in
    one manifest are reported on the later item ("4 job(s) repeat jobs of item 1"); so are a seed
    listed twice in ``seeds`` and a value listed twice in a variant list. A manifest may expand
    to at most 100,000 jobs (:data:`MAX_JOBS_PER_MANIFEST`); a larger one is refused before any
    job is built.

The manifest digest
    sha256 of the canonical JSON (sorted keys, no spaces) of the *parsed* content, with absent
    top-level keys at their defaults, prefixed by the domain ``farm.manifest/1``. Not the file's
    bytes: reformatting (indentation, flow/block style, key order, quoting, comments) keeps the
    digest; changing any value (including ``name``) changes it. A YAML, JSONL or CSV file with the
    same content has the same digest. Random seeds enter the digest as the *request*
    (``{random: 4}``), never as the seeds drawn; the drawn seeds are recorded in the jobs. So
    resubmitting a manifest with random seeds names the same batch (and gets the seeds recorded
    the first time); to draw fresh seeds, change the manifest (e.g. its ``name``).

JSONL format (``.jsonl``)
=========================

One JSON object per line, each an item in the item schema above; blank lines are skipped. The
first line may be a header with the top-level keys other than ``items``::

    {"name": "spring", "defaults": {"model": "tiny"}, "variants": {"guidance_scale": [3.5, 4.0]}}
    {"prompt": "a red sneaker", "seeds": [1, 2]}
    {"prompts": ["shot A", "shot B"], "seed": {"from_prompt": {"salt": "v1"}}}

The first line is the header exactly when it has neither ``prompt`` nor ``prompts``. A line that
is not valid JSON is reported with its line number and the other lines are still checked.

CSV format (``.csv``)
=====================

A flat prompt list: a header row, then one item per row. Columns: ``prompt`` (required, text as
written), ``seed`` (an integer), ``size`` (``WxH``), ``tag:<key>`` (one tag each), and the scalar
spec fields, with cells converted to the field's type: integers for ``width``, ``height``,
``num_frames``, ``fps``, ``steps``; numbers for ``guidance_scale``, ``guidance_scale_2``,
``boundary_ratio``, ``flow_shift``; booleans (true/false, yes/no, on/off, 1/0) for
``allow_degrade``; text for ``negative_prompt``, ``model``, ``sampler``, ``output_format``,
``priority``. An empty cell leaves the field unset (the model's default). **A row without a seed
gets the prompt-derived seed** (``seed: {from_prompt: true}``, strategy ``prompt``): the same
prompt always renders with the same seed. Rows with only empty cells are skipped; unknown
columns, bad cells and rows with more cells than the header are reported with their line.

Problems
========

Everything is checked before anything is built, and up to ``max_problems`` problems (default
50; ``farm validate --max-errors``) are collected across all items, each a
:class:`~farm.errors.Problem` with the field, the rule and a ``location`` such as
``"day.yaml: item 3 (line 17)"`` (the line of the offending key when the item has it),
``"day.yaml: defaults (line 3)"`` or ``"prompts.csv: item 4 (line 5)"``. YAML syntax errors,
unreadable or non-UTF-8 files, empty files and unknown extensions raise at once.
"""

import os
from collections.abc import Callable

from farm.manifest.expand import VARIANT_KEYS, BatchStats, ExpandedBatch, ExpandedJob, expand, parse_size
from farm.manifest.loaders import load_manifest, parse_manifest
from farm.manifest.model import (
    DEFAULT_MAX_PROBLEMS,
    FORMATS,
    MANIFEST_VERSION,
    MAX_JOBS_PER_MANIFEST,
    TOP_LEVEL_KEYS,
    Manifest,
    manifest_digest,
)
from farm.manifest.selection import SEED_SELECTION_KEYS, SeedSelection
from farm.seeds import random_seed

__all__ = [
    "DEFAULT_MAX_PROBLEMS",
    "FORMATS",
    "MANIFEST_VERSION",
    "MAX_JOBS_PER_MANIFEST",
    "SEED_SELECTION_KEYS",
    "TOP_LEVEL_KEYS",
    "VARIANT_KEYS",
    "BatchStats",
    "ExpandedBatch",
    "ExpandedJob",
    "Manifest",
    "SeedSelection",
    "expand",
    "expand_file",
    "load_manifest",
    "manifest_digest",
    "parse_manifest",
    "parse_size",
]


def expand_file(
    path: str | os.PathLike[str],
    *,
    max_problems: int = DEFAULT_MAX_PROBLEMS,
    draw_seed: Callable[[], int] = random_seed,
    raise_on_problems: bool = True,
) -> ExpandedBatch:
    """``expand(load_manifest(path), ...)``."""
    m = load_manifest(path)
    return expand(m, max_problems=max_problems, draw_seed=draw_seed, raise_on_problems=raise_on_problems)
