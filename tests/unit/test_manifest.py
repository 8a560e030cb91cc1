"""Batch manifests.

Expansion (counts, exact seeds, precedence), problems with file/item/line/field, the digest, the
three formats, and the speed of a 10,000-job expansion.
"""

from __future__ import annotations

import hashlib
import json
import textwrap
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from farm.errors import ManifestError, Problem
from farm.manifest import (
    MAX_JOBS_PER_MANIFEST,
    ExpandedBatch,
    expand,
    load_manifest,
    parse_manifest,
)
from farm.manifest.loaders import CSV_BOOL_COLUMNS, CSV_COLUMNS, CSV_FLOAT_COLUMNS, CSV_INT_COLUMNS
from farm.seeds import PROMPT_SEED_DOMAIN
from farm.spec import RenderSpec, normalize_prompt, parse_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


def prompt_seed(prompt: str, salt: str = "") -> int:
    """Independent of farm.seeds: sha256(domain NUL salt NUL normalised prompt), low 32 bits of the first 8 bytes."""
    payload = PROMPT_SEED_DOMAIN + b"\0" + salt.encode() + b"\0" + normalize_prompt(prompt).encode()
    return int.from_bytes(hashlib.sha256(payload).digest()[:8], "big") % 2**32


def drawn(*seeds: int) -> Iterator[int]:
    return iter(seeds)


def problems_of(path: Path, **kwargs: Any) -> list[Problem]:
    batch = expand(load_manifest(path), raise_on_problems=False, **kwargs)
    assert not batch.ok
    return batch.problems


def one_problem(problems: list[Problem], field: str, rule: str) -> Problem:
    matches = [p for p in problems if p.field == field and p.rule == rule]
    assert matches, f"no {field}/{rule} in {[str(p) for p in problems]}"
    return matches[0]


# -- expansion ---------------------------------------------------------------------------------

MATRIX = """
version: 1
name: matrix
defaults: {model: tiny, tags: {campaign: spring}}
variants: {guidance_scale: [3.5, 4.0]}
seed_pool: [11, 22, 33]
items:
  - prompts: ["p one", "p two"]
    seeds: [1, 2, 3]
  - prompt: "p three"
    seed: {from_prompt: {salt: "v1", count: 2}}
  - prompt: "p four"
    seed: {sweep: {base: 5, radius: 1}}
  - prompts: ["p five", "p six"]
    seed: pool
    variants: {size: ["64x32", "32x64"]}
  - prompt: "p seven"
    seed: pool
  - prompt: "p eight"
    seed: {pool: 2}
  - prompt: "p nine"
    seed: {random: 3}
  - prompt: "p ten"
    seed: {from_prompt: true}
    guidance_scale: 5.0
    tags: {shot: macro}
"""


def test_matrix_expansion_counts_and_exact_seeds(tmp_path: Path) -> None:
    batch = expand(load_manifest(write(tmp_path, "m.yaml", MATRIX)), draw_seed=drawn(101, 102, 103).__next__)
    got = [
        (
            j.item,
            j.spec.prompt,
            j.spec.seed,
            j.spec.seed_strategy,
            j.spec.guidance_scale,
            j.spec.width,
            j.spec.height,
        )
        for j in batch.jobs
    ]
    g = (3.5, 4.0)
    expected: list[tuple[Any, ...]] = []
    # item 1: prompts x seeds x guidance
    expected += [
        (1, p, s, "explicit", x, None, None) for p in ("p one", "p two") for s in (1, 2, 3) for x in g
    ]
    # item 2: two prompt-derived seeds (salts v1, v1#1)
    expected += [
        (2, "p three", s, "prompt", x, None, None)
        for s in (prompt_seed("p three", "v1"), prompt_seed("p three", "v1#1"))
        for x in g
    ]
    # item 3: sweep 4..6
    expected += [(3, "p four", s, "sweep", x, None, None) for s in (4, 5, 6) for x in g]
    # item 4: pool round-robin across prompts; axes sorted by name: guidance_scale, then size
    expected += [
        (4, p, s, "pool", x, w, h)
        for p, s in (("p five", 11), ("p six", 22))
        for x in g
        for w, h in ((64, 32), (32, 64))
    ]
    # items 5, 6: the pool continues where item 4 stopped
    expected += [(5, "p seven", 33, "pool", x, None, None) for x in g]
    expected += [(6, "p eight", s, "pool", x, None, None) for s in (11, 22) for x in g]
    # item 7: the drawn random seeds, recorded
    expected += [(7, "p nine", s, "random", x, None, None) for s in (101, 102, 103) for x in g]
    # item 8: its own guidance_scale drops the top-level axis
    expected += [(8, "p ten", prompt_seed("p ten"), "prompt", 5.0, None, None)]
    assert got == expected
    s = batch.stats
    assert (s.items, s.jobs, s.prompts) == (8, len(expected), 10)
    assert s.models == {"tiny": len(expected)}
    assert s.seed_strategies == {"explicit": 12, "pool": 14, "prompt": 5, "random": 6, "sweep": 6}
    assert s.seeds == len({e[2] for e in expected})
    assert s.variants == 7  # 2 guidance x (default size + 2 sizes) + guidance 5.0
    assert batch.name == "matrix" and batch.ok and not batch.problems
    # tags: defaults merged with the item's
    assert batch.jobs[-1].spec.tags == {"campaign": "spring", "shot": "macro"}
    assert batch.jobs[0].spec.tags == {"campaign": "spring"}


def test_every_expanded_job_equals_a_freshly_parsed_spec(tmp_path: Path) -> None:
    batch = expand(load_manifest(write(tmp_path, "m.yaml", MATRIX)))
    assert len(set(batch.job_keys)) == len(batch.jobs)
    for job in batch.jobs:
        fresh = parse_spec(job.spec.model_dump())
        assert fresh == job.spec
        assert job.job_key == fresh.job_key == job.spec.job_key


def test_precedence_defaults_variants_item_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        """
        defaults: {model: tiny, steps: 4, guidance_scale: 2.0, negative_prompt: "blurry"}
        variants: {guidance_scale: [3.0, 3.5], size: ["64x64", "32x32"]}
        items:
          - {prompt: a, seed: 1}
          - {prompt: b, seed: 1, steps: 6, negative_prompt: "", size: "48x48"}
          - {prompt: c, seed: 1, variants: {guidance_scale: [9.0], height: [96]}, width: 32}
    """,
    )
    jobs = expand(load_manifest(path)).jobs
    a = [
        (j.spec.guidance_scale, j.spec.width, j.spec.height, j.spec.steps)
        for j in jobs
        if j.spec.prompt == "a"
    ]
    assert a == [(3.0, 64, 64, 4), (3.0, 32, 32, 4), (3.5, 64, 64, 4), (3.5, 32, 32, 4)]
    b = [
        (j.spec.guidance_scale, j.spec.width, j.spec.height, j.spec.steps, j.spec.negative_prompt)
        for j in jobs
        if j.spec.prompt == "b"
    ]
    assert b == [(3.0, 48, 48, 6, ""), (3.5, 48, 48, 6, "")]  # its size pins the size axis
    c = [(j.spec.guidance_scale, j.spec.width, j.spec.height) for j in jobs if j.spec.prompt == "c"]
    assert c == [(9.0, 32, 96)]  # its own axes replace the top-level ones they cover


@pytest.mark.parametrize(
    ("variants", "item", "field"),
    [
        ("{size: ['64x64']}", "{prompt: a, seed: 1, width: 32}", "variants.size"),
        ("{}", "{prompt: a, seed: 1, width: 32, variants: {width: [64]}}", "variants.width"),
        ("{size: ['64x64'], width: [32]}", "{prompt: a, seed: 1}", "variants.width"),
        ("{size: ['64x64']}", "{prompt: a, seed: 1, variants: {width: [32]}}", "variants.size"),
    ],
)
def test_variant_conflicts(tmp_path: Path, variants: str, item: str, field: str) -> None:
    path = write(tmp_path, "c.yaml", f"variants: {variants}\nitems:\n  - {item}\n")
    one_problem(problems_of(path), field, "variant_conflict")


def test_the_pool_is_shared_in_expansion_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "pool.yaml",
        """
        seed_pool: [7, 8]
        items:
          - {prompts: [a, b, c], seed: pool}
          - {prompt: d, seed: {pool: 2}}
    """,
    )
    jobs = expand(load_manifest(path)).jobs
    assert [(j.spec.prompt, j.spec.seed) for j in jobs] == [("a", 7), ("b", 8), ("c", 7), ("d", 8), ("d", 7)]
    # d would take 8, 7, 8: its third seed repeats its first, a duplicate job
    path = write(tmp_path, "pool2.yaml", "seed_pool: [7, 8]\nitems:\n  - {prompt: d, seed: {pool: 3}}\n")
    one_problem(problems_of(path), "job", "duplicate_job")


def test_random_seeds_are_drawn_once_per_job_and_recorded(tmp_path: Path) -> None:
    path = write(
        tmp_path, "r.yaml", "items:\n  - {prompts: [a, b], seed: {random: 2}, variants: {steps: [2, 3]}}\n"
    )
    batch = expand(load_manifest(path), draw_seed=drawn(5, 6, 7, 8).__next__)
    assert [(j.spec.prompt, j.spec.seed, j.spec.steps) for j in batch.jobs] == [
        ("a", 5, 2),
        ("a", 5, 3),
        ("a", 6, 2),
        ("a", 6, 3),
        ("b", 7, 2),
        ("b", 7, 3),
        ("b", 8, 2),
        ("b", 8, 3),
    ]
    assert {j.spec.seed_strategy for j in batch.jobs} == {"random"}
    real = expand(load_manifest(path))  # the real CSPRNG
    assert all(0 <= j.spec.seed < 2**32 for j in real.jobs)


# -- problems: file, item, line, field --------------------------------------------------------


def test_bad_field_in_item_3_names_file_item_line_and_field(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "day.yaml",
        """
        name: day
        defaults: {model: tiny}
        items:
          - prompt: one
            seed: 1
          - prompt: two
            seed: 2
          - prompt: three
            seed: 3
            width: 40
          - prompt: four
            seed: 4
    """,
    )
    with pytest.raises(ManifestError) as info:
        expand(load_manifest(path))
    (problem,) = info.value.problems
    assert (problem.field, problem.rule) == ("width", "multiple_of_16")
    assert problem.location == f"{path}: item 3 (line 10)"  # the line of 'width:'
    assert "width" in str(info.value) and "item 3" in str(info.value)


def test_problems_are_collected_across_items_not_just_the_first(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "many.yaml",
        """
        items:
          - {prompt: a}
          - {prompt: b, seed: -4}
          - {prompt: c, seed: 1, steps: 0}
          - {prompt: "  ", seed: 1}
          - {prompt: e, seed: 1, guidanse: 3}
          - {prompt: f, seeds: [1, 1]}
          - {prompt: g, seed: {from_prompt: true, salt: x}}
          - {prompt: h, seed: pool}
          - {prompt: i, seed: 1, seed_strategy: random}
          - {seed: 1}
          - {prompt: k, seed: 1, model: tiny-dense, guidance_scale_2: 2.0}
          - 42
    """,
    )
    problems = problems_of(path)
    got = {(p.location.split(": ")[1].split(" (")[0], p.field, p.rule) for p in problems}
    assert got == {
        ("item 1", "seed", "required"),
        ("item 2", "seed", "seed_range"),
        ("item 3", "steps", "steps_range"),
        ("item 4", "prompt", "not_blank"),
        ("item 5", "guidanse", "unknown_field"),
        ("item 6", "seeds", "duplicate_seed"),
        ("item 7", "seed", "seed_selection"),
        ("item 8", "seed", "seed_pool_required"),
        ("item 9", "seed_strategy", "set_by_expansion"),
        ("item 10", "prompt", "required"),
        ("item 11", "guidance_scale_2", "two_expert_only"),
        ("item 12", "item", "type"),
    }
    assert "did you mean 'guidance_scale'" in one_problem(problems, "guidanse", "unknown_field").message
    assert all(p.location.startswith(f"{path}: item ") and "(line " in p.location for p in problems)


def test_max_problems_caps_the_collection(tmp_path: Path) -> None:
    items = "\n".join(f"  - {{prompt: p{i}, seed: -1}}" for i in range(100))
    path = write(tmp_path, "caps.yaml", f"items:\n{items}\n")
    batch = expand(load_manifest(path), max_problems=7, raise_on_problems=False)
    assert len(batch.problems) == 7 and batch.problems_truncated
    assert [p.location for p in batch.problems][:2] == [
        f"{path}: item 1 (line 2)",
        f"{path}: item 2 (line 3)",
    ]


def test_a_bad_default_is_reported_once_at_defaults(tmp_path: Path) -> None:
    items = "\n".join(f"  - {{prompt: p{i}, seed: {i}}}" for i in range(20))
    path = write(tmp_path, "d.yaml", f"defaults:\n  model: tiny\n  fps: 500\nitems:\n{items}\n")
    problems = problems_of(path)
    assert [(p.field, p.rule, p.location) for p in problems] == [
        ("defaults.fps", "fps_range", f"{path}: defaults (line 3)")
    ]


def test_a_bad_prompt_in_a_prompt_list_names_which(tmp_path: Path) -> None:
    path = write(tmp_path, "pl.yaml", "items:\n  - prompts: [ok, '  ', \"a\\0b\"]\n    seed: 1\n")
    problems = problems_of(path)
    assert {(p.field, p.rule) for p in problems} == {
        ("prompts", "not_blank"),
        ("prompts", "no_control_chars"),
    }
    assert any(p.message.startswith("prompt 2:") for p in problems)
    assert any(p.message.startswith("prompt 3:") for p in problems)


@pytest.mark.parametrize(
    ("text", "field", "rule"),
    [
        ("itmes: []\nitems: [{prompt: a, seed: 1}]\n", "itmes", "unknown_field"),
        ("version: 2\nitems: [{prompt: a, seed: 1}]\n", "version", "supported_version"),
        ("name: [a]\nitems: [{prompt: a, seed: 1}]\n", "name", "name"),
        (
            "variants: {guidance_scale: 3.5}\nitems: [{prompt: a, seed: 1}]\n",
            "variants.guidance_scale",
            "variant_list",
        ),
        (
            "variants: {guidance_scale: []}\nitems: [{prompt: a, seed: 1}]\n",
            "variants.guidance_scale",
            "not_empty",
        ),
        (
            "variants: {guidance: [3.5]}\nitems: [{prompt: a, seed: 1}]\n",
            "variants.guidance",
            "unknown_field",
        ),
        (
            "variants: {priority: [batch]}\nitems: [{prompt: a, seed: 1}]\n",
            "variants.priority",
            "not_a_variant",
        ),
        ("variants: {seed: [1, 2]}\nitems: [{prompt: a, seed: 1}]\n", "variants.seed", "not_a_variant"),
        ("variants: {steps: [4, 4]}\nitems: [{prompt: a, seed: 1}]\n", "variants.steps", "duplicate_variant"),
        ("variants: {steps: [4, 0]}\nitems: [{prompt: a, seed: 1}]\n", "variants.steps", "steps_range"),
        ("variants: {size: ['64by64']}\nitems: [{prompt: a, seed: 1}]\n", "variants.size", "size_format"),
        ("variants: [steps]\nitems: [{prompt: a, seed: 1}]\n", "variants", "type"),
        ("defaults: {prompt: a}\nitems: [{prompt: a, seed: 1}]\n", "defaults.prompt", "not_a_default"),
        ("defaults: {seed: 1}\nitems: [{prompt: a}]\n", "defaults.seed", "not_a_default"),
        ("defaults: {mdoel: tiny}\nitems: [{prompt: a, seed: 1}]\n", "defaults.mdoel", "unknown_field"),
        ("defaults: [tiny]\nitems: [{prompt: a, seed: 1}]\n", "defaults", "type"),
        ("seed_pool: []\nitems: [{prompt: a, seed: pool}]\n", "seed_pool", "type"),
        ("seed_pool: [1, -2]\nitems: [{prompt: a, seed: pool}]\n", "seed_pool", "seed_range"),
        ("items: []\n", "items", "not_empty"),
        ("name: x\n", "items", "required"),
        ("items: {prompt: a}\n", "items", "type"),
        ("items: [{prompt: a, seed: 1, seeds: [2]}]\n", "seeds", "one_seed_selection"),
        ("items: [{prompt: a, prompts: [b], seed: 1}]\n", "prompts", "one_prompt_source"),
        ("items: [{prompt: a, seed: [1, 2]}]\n", "seed", "seed_selection"),
        ("items: [{prompt: a, seed: {random: 0}}]\n", "seed.random", "count"),
        ("items: [{prompt: a, seed: {random: true}}]\n", "seed.random", "count"),
        ("items: [{prompt: a, seed: {sweep: {base: 1}}}]\n", "seed.sweep", "seed_selection"),
        ("items: [{prompt: a, seed: {sweep: {base: 1, radius: -1}}}]\n", "seed.sweep.radius", "sweep_radius"),
        ("items: [{prompt: a, seed: {from_prompt: {salt: 3}}}]\n", "seed.from_prompt.salt", "type"),
        (
            "items: [{prompt: a, seed: {from_prompt: {count: 2, pepper: x}}}]\n",
            "seed.from_prompt.pepper",
            "unknown_field",
        ),
        ("items: [{prompt: a, seed: 1, size: 64x64, width: 64}]\n", "size", "size_conflict"),
        (
            "items: [{prompt: a, seed: 1, variants: {size: [64x64, 64X64]}}]\n",
            "variants.size",
            "duplicate_variant",
        ),
        ("items: [{prompt: a, seed: 1}, {prompt: a, seed: 1, tags: {x: y}}]\n", "job", "duplicate_job"),
        ("items: [{prompt: a, seed: 1, seed: 2}]\n", "seed", "duplicate_key"),
    ],
)
def test_broken_manifests_name_the_field_and_rule(tmp_path: Path, text: str, field: str, rule: str) -> None:
    path = write(tmp_path, "broken.yaml", text)
    problem = one_problem(problems_of(path), field, rule)
    assert problem.location.startswith(str(path))
    if (field, rule) != ("items", "required"):  # a missing key has no line
        assert "(line " in problem.location


def test_duplicate_jobs_are_reported_with_both_items(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "dup.yaml",
        """
        items:
          - {prompt: "a  cat", seeds: [1, 2, 3]}
          - {prompt: b, seed: 1}
          - {prompt: a cat, seeds: [3, 4, 2], priority: interactive}
    """,
    )
    (problem,) = problems_of(path)
    assert problem.rule == "duplicate_job"
    assert problem.location == f"{path}: item 3 (line 4)"
    assert "2 job(s) repeat jobs of item 1" in problem.message


def test_bad_yaml_reports_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", "items:\n  - prompt: a\n    seed: [1, 2\n  - prompt: b\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    (problem,) = info.value.problems
    assert problem.rule == "yaml_syntax"
    assert problem.location.startswith(f"{path}: line ")
    assert int(problem.location.rsplit(" ", 1)[1]) in (3, 4)


@pytest.mark.parametrize(
    ("name", "content", "rule"),
    [
        ("empty.yaml", "", "not_empty"),
        ("comments.yaml", "# nothing here\n", "not_empty"),
        ("list.yaml", "- prompt: a\n", "type"),
        ("empty.jsonl", "\n\n", "not_empty"),
        ("empty.csv", "", "not_empty"),
        ("noprompt.csv", "seed,model\n1,tiny\n", "required"),
        ("day.txt", "items: []\n", "format"),
        ("day", "items: []\n", "format"),
    ],
)
def test_unreadable_manifests_raise_at_load(tmp_path: Path, name: str, content: str, rule: str) -> None:
    path = tmp_path / name
    path.write_text(content, encoding="utf-8")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.problems[0].rule == rule
    assert str(path) in info.value.problems[0].location


def test_missing_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(tmp_path / "missing.yaml")
    assert info.value.problems[0].rule == "readable"
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"items:\n  - prompt: caf\xe9\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert (info.value.problems[0].rule, info.value.problems[0].location) == ("utf8", f"{path}: line 2")


def test_too_many_jobs_is_refused_before_building(tmp_path: Path) -> None:
    # 5 prompts x 20,001 sweep seeds = 100,005 jobs
    path = write(
        tmp_path,
        "huge.yaml",
        """
        items:
          - prompts: [a, b, c, d, e]
            seed: {sweep: {base: 100000, radius: 10000}}
    """,
    )
    started = time.perf_counter()
    batch = expand(load_manifest(path), raise_on_problems=False)
    assert time.perf_counter() - started < 2.0
    (problem,) = batch.problems
    assert (problem.field, problem.rule) == ("items", "max_jobs")
    assert "100,005" in problem.message and f"{MAX_JOBS_PER_MANIFEST:,}" in problem.message
    assert batch.jobs == []


def test_dates_stay_text(tmp_path: Path) -> None:
    path = write(
        tmp_path, "d.yaml", "name: 2026-11-21\nitems: [{prompt: a, seed: 1, tags: {day: 2026-11-21}}]\n"
    )
    batch = expand(load_manifest(path))
    assert batch.name == "2026-11-21"
    assert batch.jobs[0].spec.tags == {"day": "2026-11-21"}


# -- the digest --------------------------------------------------------------------------------

BLOCK = """
# the spring campaign
version: 1
name: spring
defaults:
  model: tiny
  tags:
    campaign: spring
variants:
  guidance_scale: [3.5, 4.0]
items:
  - prompt: "a red sneaker"
    seeds: [1, 2]
  - prompt: a paper boat
    seed: {random: 2}
"""
FLOW = """
items: [{seeds: [1, 2], prompt: a red sneaker}, {seed: {random: 2}, prompt: 'a paper boat'}]
variants: {guidance_scale: [3.5, 4.0]}
defaults: {tags: {campaign: "spring"}, model: "tiny"}
name: "spring"
version: 1
"""


def test_digest_is_stable_under_reformatting(tmp_path: Path) -> None:
    block = load_manifest(write(tmp_path, "block.yaml", BLOCK))
    flow = load_manifest(write(tmp_path, "flow.yml", FLOW))
    dumped = load_manifest(write(tmp_path, "dumped.yaml", yaml.safe_dump(yaml.safe_load(BLOCK), indent=4)))
    assert block.digest == flow.digest == dumped.digest
    assert len(block.digest) == 64


def test_digest_changes_with_content_but_not_with_random_draws(tmp_path: Path) -> None:
    path = write(tmp_path, "a.yaml", BLOCK)
    first, second = expand(load_manifest(path)), expand(load_manifest(path))
    assert first.digest == second.digest  # the random request is the input, not the draws
    assert [j.spec.seed for j in first.jobs if j.spec.seed_strategy == "random"] != [
        j.spec.seed for j in second.jobs if j.spec.seed_strategy == "random"
    ]
    for old, new in [
        ("[3.5, 4.0]", "[3.5, 4.5]"),
        ("name: spring", "name: spring-2"),
        ("{random: 2}", "{random: 3}"),
        ("seeds: [1, 2]", "seeds: [2, 1]"),
        ('"a red sneaker"', '"a red  sneaker"'),
    ]:
        changed = load_manifest(write(tmp_path, "b.yaml", BLOCK.replace(old, new)))
        assert changed.digest != first.digest, (old, new)


def test_same_content_same_digest_across_formats(tmp_path: Path) -> None:
    items = [
        {"prompt": "a red sneaker", "seed": 1},
        {"prompt": "a paper boat", "seed": {"from_prompt": True}},
    ]
    from_yaml = load_manifest(write(tmp_path, "s.yaml", yaml.safe_dump({"items": items})))
    from_jsonl = load_manifest(write(tmp_path, "s.jsonl", "\n".join(json.dumps(i) for i in items) + "\n"))
    from_csv = load_manifest(write(tmp_path, "s.csv", "prompt,seed\na red sneaker,1\na paper boat,\n"))
    assert from_yaml.digest == from_jsonl.digest == from_csv.digest
    keys = [expand(m).job_keys for m in (from_yaml, from_jsonl, from_csv)]
    assert keys[0] == keys[1] == keys[2]


# -- JSONL -------------------------------------------------------------------------------------


def test_jsonl_with_header(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "v.jsonl",
        """
        {"name": "v", "defaults": {"model": "tiny"}, "variants": {"steps": [2, 3]}, "seed_pool": [9]}

        {"prompt": "a", "seeds": [1, 2]}
        {"prompts": ["b", "c"], "seed": "pool", "variants": {"steps": [4]}}
    """,
    )
    batch = expand(load_manifest(path))
    assert batch.name == "v"
    assert [(j.spec.prompt, j.spec.seed, j.spec.steps) for j in batch.jobs] == [
        ("a", 1, 2),
        ("a", 1, 3),
        ("a", 2, 2),
        ("a", 2, 3),
        ("b", 9, 4),
        ("c", 9, 4),
    ]


def test_jsonl_without_header_and_unicode_line_separators(tmp_path: Path) -> None:
    path = tmp_path / "u.jsonl"
    path.write_text(
        json.dumps({"prompt": "one\u2028two", "seed": 1}, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    (job,) = expand(load_manifest(path)).jobs
    assert job.spec.prompt == "one two"


def test_bad_jsonl_lines_report_their_line_and_the_rest_is_still_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.jsonl",
        """
        {"defaults": {"model": "tiny"}}
        {"prompt": "a", "seed": 1}
        {"prompt": "b", "seed": 2,}
        {"prompt": "c", "seed": 3}
        {"prompt": "d", "seed": 4, "width": 33}
        ["not", "an", "object"]
        {"prompt": "e", "seed": 5, "seed": 6}
    """,
    )
    problems = problems_of(path)
    located = {(p.location, p.field, p.rule) for p in problems}
    assert located == {
        (f"{path}: item 2 (line 3)", "manifest", "json_syntax"),
        (f"{path}: item 4 (line 5)", "width", "multiple_of_16"),
        (f"{path}: item 5 (line 6)", "item", "type"),
        (f"{path}: item 6 (line 7)", "seed", "duplicate_key"),
    }


def test_jsonl_unknown_header_key(tmp_path: Path) -> None:
    path = write(tmp_path, "h.jsonl", '{"defaults": {}, "seed": 1}\n{"prompt": "a", "seed": 1}\n')
    problem = one_problem(problems_of(path), "seed", "unknown_field")
    assert problem.location == f"{path}: line 1"
    assert "header" in problem.message


# -- CSV ---------------------------------------------------------------------------------------


def test_csv_cells_are_typed_and_rows_without_seed_use_the_prompt_seed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.csv",
        """
        prompt,seed,model,width,height,guidance_scale,allow_degrade,size,tag:shot,negative_prompt
        "a red sneaker, night",7,tiny,64,48,3.5,yes,,street,
        a paper boat,,tiny-dense,,,,false,64x32,,  no blur
        ,,,,,,,,,
        "multi
        line prompt",1,,,,,,,,
    """,
    )
    batch = expand(load_manifest(path))
    a, b, c = (j.spec for j in batch.jobs)
    assert (
        a.prompt,
        a.seed,
        a.seed_strategy,
        a.model,
        a.width,
        a.height,
        a.guidance_scale,
        a.allow_degrade,
        a.tags,
        a.negative_prompt,
    ) == ("a red sneaker, night", 7, "explicit", "tiny", 64, 48, 3.5, True, {"shot": "street"}, None)
    assert (b.seed, b.seed_strategy, b.model, b.width, b.height, b.allow_degrade, b.negative_prompt) == (
        prompt_seed("a paper boat"),
        "prompt",
        "tiny-dense",
        64,
        32,
        False,
        "no blur",
    )
    assert (c.prompt, c.seed) == ("multi line prompt", 1)
    assert [j.item for j in batch.jobs] == [1, 2, 3]


def test_bad_csv_cells_report_line_and_column(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "bad.csv",
        """
        prompt,seed,width,fps,allow_degrade,colour
        ok,1,64,8,no,
        bad width,2,sixty,8,no,
        bad seed,2.5,64,8,no,
        bad flag,3,64,8,maybe,
        ,4,64,8,no,
        too many,5,64,8,no,,extra
        bad fps,6,64,0,no,
    """,
    )
    problems = problems_of(path)
    located = {(p.location, p.field, p.rule) for p in problems}
    assert located == {
        (f"{path}: header (line 1)", "colour", "unknown_field"),
        (f"{path}: item 2 (line 3)", "width", "type"),
        (f"{path}: item 3 (line 4)", "seed", "type"),
        (f"{path}: item 4 (line 5)", "allow_degrade", "type"),
        (f"{path}: item 5 (line 6)", "prompt", "required"),
        (f"{path}: item 6 (line 7)", "manifest", "csv_cells"),
        (f"{path}: item 7 (line 8)", "fps", "fps_range"),
    }
    assert "'sixty' is not an integer" in one_problem(problems, "width", "type").message


def test_csv_columns_cover_every_scalar_spec_field() -> None:
    scalar = set(RenderSpec.model_fields) - {"tags", "seed_strategy"}
    assert scalar <= CSV_COLUMNS
    assert set(CSV_INT_COLUMNS) == {"seed", "width", "height", "num_frames", "fps", "steps"}
    assert set(CSV_FLOAT_COLUMNS) == {"guidance_scale", "guidance_scale_2", "boundary_ratio", "flow_shift",
                                      "cache_threshold"}
    assert set(CSV_BOOL_COLUMNS) == {"allow_degrade"}


# -- text input, examples, speed ---------------------------------------------------------------


def test_parse_manifest_from_text() -> None:
    m = parse_manifest('{"prompt": "a", "seed": 1}\n', "jsonl", source="api")
    assert expand(m).stats.jobs == 1
    with pytest.raises(ManifestError) as info:
        parse_manifest("items: []", "toml", source="api")  # type: ignore[arg-type]
    assert info.value.problems[0].rule == "format"


@pytest.mark.parametrize(
    "name", sorted(p.name for p in EXAMPLES.glob("*") if p.suffix in (".yaml", ".yml", ".jsonl", ".csv"))
)
def test_the_examples_are_valid(name: str) -> None:
    batch = expand(load_manifest(EXAMPLES / name))
    assert batch.ok and batch.stats.jobs > 0


def _selection(i: int) -> dict[str, Any]:
    """Items cycle through the seed strategies, 5 seeds each."""
    selections: list[dict[str, Any]] = [
        {"seeds": [i * 10 + k for k in range(5)]},
        {"seed": {"from_prompt": {"salt": "s", "count": 5}}},
        {"seed": {"sweep": {"base": 10**6 + i * 10, "radius": 2}}},
        {"seed": {"pool": 5}},
        {"seed": {"random": 5}},
    ]
    return selections[i % 5]


def _big_manifest(prompts: int) -> dict[str, Any]:
    return {
        "name": "big",
        "defaults": {"model": "tiny", "tags": {"campaign": "big"}},
        "variants": {"guidance_scale": [3.5, 4.0]},
        "seed_pool": list(range(5 * 10**6, 5 * 10**6 + 997)),
        "items": [{"prompt": f"product shot {i}, a red sneaker", **_selection(i)} for i in range(prompts)],
    }


def test_a_10k_job_manifest_expands_fast(tmp_path: Path) -> None:
    path = write(tmp_path, "big.yaml", yaml.safe_dump(_big_manifest(1000)))
    started = time.perf_counter()
    batch = expand(load_manifest(path))
    keys = batch.job_keys
    elapsed = time.perf_counter() - started
    assert len(keys) == len(set(keys)) == 10_000
    assert batch.stats.prompts == 1000
    # measured ~0.25 s (40,000 jobs/s) on a shared 2-core machine; 5 s is a generous bound
    assert elapsed < 5.0, f"{elapsed:.2f}s for 10,000 jobs"


def test_expand_returns_an_expanded_batch_with_summary(tmp_path: Path) -> None:
    batch = expand(load_manifest(write(tmp_path, "m.yaml", MATRIX)))
    assert isinstance(batch, ExpandedBatch)
    summary = batch.summary()
    assert summary["valid"] is True and summary["digest"] == batch.digest
    assert summary["counts"]["jobs"] == len(batch.jobs)
    json.dumps(summary)


# -- hostile or unusual YAML -------------------------------------------------------------------


def test_anchors_and_merge_keys_work(tmp_path: Path) -> None:
    # anchors live inside the known keys: the first item's settings are shared by the second
    path = write(
        tmp_path,
        "anchors.yaml",
        """
        items:
          - &first {prompt: a, seed: 1, model: tiny, steps: 4}
          - {<<: *first, prompt: b, steps: 6}
    """,
    )
    jobs = expand(load_manifest(path)).jobs
    assert [(j.spec.prompt, j.spec.seed, j.spec.steps) for j in jobs] == [("a", 1, 4), ("b", 1, 6)]


def test_an_alias_bomb_is_refused_quickly(tmp_path: Path) -> None:
    lines = ["  - &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 9)]
    path = tmp_path / "bomb.yaml"
    path.write_text("items:\n" + "\n".join(lines) + "\n", encoding="utf-8")
    started = time.perf_counter()
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert time.perf_counter() - started < 5.0
    assert info.value.problems[0].rule == "max_size"
    assert "aliases" in info.value.problems[0].message


DEEP = 5000  # far deeper than MAX_NESTING, deeper than Python's default recursion limit


class _PurePythonManifestLoader(yaml.SafeLoader):
    """The manifest loader's interface on PyYAML's pure-Python parser (no libyaml).

    That parser recurses once per nesting level instead of refusing deep input with a YAML error.
    """

    def __init__(self, stream: Any) -> None:
        super().__init__(stream)
        self.duplicate_keys: list[tuple[str, int]] = []


def _bounded_load_error(path: Path, *, trace_memory: bool = True) -> ManifestError:
    """Load and expand ``path``, which must fail with a ManifestError (nothing else, no chained exception).

    It must fail within 5 s and (when ``trace_memory``) 64 MiB of Python allocations.
    """
    if trace_memory:
        tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(ManifestError) as info:
            expand(load_manifest(path))
        elapsed = time.perf_counter() - started
        peak = tracemalloc.get_traced_memory()[1] if trace_memory else 0
    finally:
        if trace_memory:
            tracemalloc.stop()
    assert elapsed < 5.0, f"{elapsed:.2f} s"
    assert peak < 64 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    error = info.value
    assert type(error) is ManifestError
    assert error.__cause__ is None, "a clean error, not a chained traceback"
    assert error.__context__ is None or error.__suppress_context__, "a clean error, not a chained traceback"
    return error


@pytest.mark.parametrize("loader", ["default", "pure-python"])
@pytest.mark.parametrize("depth", [100, DEEP])
def test_deep_yaml_nesting_is_a_clean_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, loader: str, depth: int
) -> None:
    # How a YAML library refuses very deep input is its own business (PyYAML 6.0.4's libyaml
    # reports a YAML error, the pure-Python parser runs out of stack): the behaviour is one clean
    # ManifestError about the manifest file, in bounded time and memory.
    if loader == "pure-python":
        monkeypatch.setattr("farm.manifest.loaders.ManifestYamlLoader", _PurePythonManifestLoader)
    path = tmp_path / "deep.yaml"
    path.write_text("items: " + "[" * depth + "]" * depth + "\n", encoding="utf-8")
    # tracemalloc slows the pure-Python parser twentyfold; its memory is bounded by the stack anyway
    (problem,) = _bounded_load_error(path, trace_memory=loader == "default").problems
    assert problem.field == "manifest"
    assert "deep.yaml" in problem.location or "deep.yaml" in problem.message
    assert problem.rule in {"max_size", "yaml_syntax"}
    if problem.rule == "max_size":
        assert "nested deeper" in problem.message
    if depth == 100:
        # shallow enough for every parser: farm's own depth limit is what refuses it
        assert problem.rule == "max_size"


@pytest.mark.parametrize("depth", [100, DEEP])
def test_deep_jsonl_nesting_is_a_clean_error(tmp_path: Path, depth: int) -> None:
    # JSONL is farm's own reader (json + measure): a too-deep item is a max_size problem on its line
    path = tmp_path / "deep.jsonl"
    path.write_text(
        '{"prompt": "ok", "seed": 1}\n{"prompt": "a", "seed": ' + "[" * depth + "]" * depth + "}\n", encoding="utf-8"
    )
    problems = _bounded_load_error(path).problems
    assert [(p.field, p.rule) for p in problems] == [("manifest", "max_size")]
    assert "nested deeper than 32 levels" in problems[0].message
    assert "deep.jsonl" in problems[0].location and "line 2" in problems[0].location
    # the good item is still there when the problems are collected instead of raised
    batch = expand(load_manifest(path), raise_on_problems=False)
    assert [j.spec.prompt for j in batch.jobs] == ["ok"]


def test_messages_quote_large_values_briefly(tmp_path: Path) -> None:
    big = "[" + ", ".join(str(i) for i in range(50_000)) + "]"
    path = write(tmp_path, "big.yaml", f"items:\n  - {{prompt: a, seed: {{sweep: {big}}}}}\n")
    (problem,) = problems_of(path)
    assert problem.rule == "seed_selection" and len(problem.message) < 300
