"""``farm validate`` and ``farm seeds`` from the outside (subprocess), ``--help`` and start-up time."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from farm.cli import cli
from farm.cli.common import EXIT_BAD_INPUT, EXIT_OK
from farm.seeds import seed_from_prompt, seeds_from_prompt
from farm.spec import MAX_SEED

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
FARM = Path(sys.executable).with_name("farm")


def farm(*args: str) -> subprocess.CompletedProcess[str]:
    command = [str(FARM)] if FARM.exists() else [sys.executable, "-c", "from farm.cli import main; main()"]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=60)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return path


GOOD = """
name: good
defaults: {model: tiny}
variants: {guidance_scale: [3.5, 4.0]}
items:
  - prompts: [a red sneaker, a blue sneaker]
    seeds: [1, 2, 3]
  - prompt: a paper boat
    seed: {from_prompt: {count: 2}}
"""
BAD = """
defaults: {model: tiny}
items:
  - {prompt: one, seed: 1}
  - {prompt: two, seed: 2}
  - prompt: three
    seed: 3
    width: 40
  - {prompt: four}
"""


# -- farm validate -----------------------------------------------------------------------------


def test_validate_a_good_manifest(tmp_path: Path) -> None:
    path = write(tmp_path, "good.yaml", GOOD)
    result = farm("validate", str(path))
    assert result.returncode == EXIT_OK, result.stderr
    out = result.stdout
    assert f"{path}: valid" in out
    assert "16 from 2 items: 3 prompts, 5 seeds, 2 variants" in out
    assert "tiny 16" in out and "explicit 12, prompt 4" in out
    from farm.manifest import load_manifest

    assert load_manifest(path).digest in out


def test_validate_a_bad_manifest_names_file_item_line_and_field(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.yaml", BAD)
    result = farm("validate", str(path))
    assert result.returncode == EXIT_BAD_INPUT
    assert "INVALID (2 problems)" in result.stdout
    assert f"{path}: item 3 (line 7): width: must be a multiple of 16 [multiple_of_16]" in result.stderr
    assert f"{path}: item 4 (line 8): seed: every item needs a seed selection" in result.stderr


def test_validate_json_output_parses(tmp_path: Path) -> None:
    good = farm("validate", "--json", str(write(tmp_path, "good.yaml", GOOD)))
    assert good.returncode == EXIT_OK
    payload = json.loads(good.stdout)
    assert payload["valid"] is True and payload["problems"] == []
    assert payload["counts"]["jobs"] == 16 and payload["counts"]["models"] == {"tiny": 16}
    assert len(payload["digest"]) == 64

    bad_path = write(tmp_path, "bad.yaml", BAD)
    bad = farm("validate", "--json", str(bad_path))
    assert bad.returncode == EXIT_BAD_INPUT
    payload = json.loads(bad.stdout)
    assert payload["valid"] is False
    assert {(p["field"], p["rule"], p["location"]) for p in payload["problems"]} == {
        ("width", "multiple_of_16", f"{bad_path}: item 3 (line 7)"),
        ("seed", "required", f"{bad_path}: item 4 (line 8)"),
    }


def test_validate_unreadable_manifest_json(tmp_path: Path) -> None:
    path = write(tmp_path, "broken.yaml", "items:\n  - prompt: [unclosed\n")
    result = farm("validate", "--json", str(path))
    assert result.returncode == EXIT_BAD_INPUT
    payload = json.loads(result.stdout)
    assert payload["valid"] is False
    assert payload["problems"][0]["rule"] == "yaml_syntax"
    assert payload["problems"][0]["location"].startswith(f"{path}: line ")
    human = farm("validate", str(tmp_path / "missing.csv"))
    assert (
        human.returncode == EXIT_BAD_INPUT and "missing.csv" in human.stderr and "[readable]" in human.stderr
    )


def test_validate_max_errors_and_show_jobs(tmp_path: Path) -> None:
    items = "\n".join(f"  - {{prompt: p{i}, seed: -1}}" for i in range(30))
    path = write(tmp_path, "many.yaml", f"items:\n{items}\n")
    runner = CliRunner()
    result = runner.invoke(cli, ["validate", "--json", "--max-errors", "5", str(path)])
    assert result.exit_code == EXIT_BAD_INPUT
    payload = json.loads(result.output)
    assert len(payload["problems"]) == 5 and payload["problems_truncated"] is True

    good = write(tmp_path, "good.yaml", GOOD)
    listed = runner.invoke(cli, ["validate", "--show-jobs", "--json", str(good)])
    jobs = json.loads(listed.output)["jobs"]
    assert len(jobs) == 16 and {"item", "job_key", "spec"} <= set(jobs[0])
    text = runner.invoke(cli, ["validate", "--show-jobs", str(good)])
    assert text.exit_code == EXIT_OK and text.output.count("a red sneaker") == 6


@pytest.mark.parametrize("name", ["day.yaml", "variants.jsonl", "prompts.csv"])
def test_validate_the_examples(name: str) -> None:
    result = CliRunner().invoke(cli, ["validate", str(EXAMPLES / name)])
    assert result.exit_code == EXIT_OK, result.output
    assert "valid" in result.output


# -- farm seeds --------------------------------------------------------------------------------


def test_seeds_from_prompt_matches_the_library() -> None:
    result = farm("seeds", "from-prompt", "a  red sneaker", "--salt", "v1", "--count", "3")
    assert result.returncode == EXIT_OK
    assert [int(line) for line in result.stdout.split()] == seeds_from_prompt("a red sneaker", 3, "v1")
    payload = json.loads(CliRunner().invoke(cli, ["seeds", "from-prompt", "x", "--json"]).output)
    assert payload == {"strategy": "prompt", "prompt": "x", "salt": "", "seeds": [seed_from_prompt("x")]}


def test_seeds_sweep_pool_random() -> None:
    runner = CliRunner()
    assert runner.invoke(cli, ["seeds", "sweep", "1", "--radius", "3"]).output.split() == [
        "0",
        "1",
        "2",
        "3",
        "4",
    ]
    out = runner.invoke(cli, ["seeds", "sweep", "10", "--radius", "1", "--exclude-base"]).output
    assert out.split() == ["9", "11"]
    assert runner.invoke(cli, ["seeds", "pool", "11", "22", "33", "--take", "5"]).output.split() == [
        "11",
        "22",
        "33",
        "11",
        "22",
    ]
    drawn = json.loads(runner.invoke(cli, ["seeds", "random", "--count", "4", "--json"]).output)["seeds"]
    assert len(drawn) == 4 and all(0 <= s <= MAX_SEED for s in drawn)


def test_seeds_bad_input_exits_2() -> None:
    result = farm("seeds", "sweep", str(MAX_SEED + 1), "--radius", "1")
    assert result.returncode == EXIT_BAD_INPUT
    assert "base" in result.stderr and "seed_range" in result.stderr
    assert CliRunner().invoke(cli, ["seeds", "pool", "1", "-5"]).exit_code == EXIT_BAD_INPUT


# -- help and start-up -------------------------------------------------------------------------


def test_farm_help_lists_the_commands_and_options_show_env_vars() -> None:
    result = farm("--help")
    assert result.returncode == EXIT_OK
    for command in ("validate", "seeds"):
        assert f"  {command} " in result.stdout
    validate_help = farm("validate", "--help").stdout
    assert "FARM_VALIDATE_MAX_ERRORS" in validate_help and "FARM_VALIDATE_SHOW_JOBS" in validate_help
    seeds_help = CliRunner().invoke(cli, ["seeds", "from-prompt", "--help"]).output
    assert "FARM_SEEDS_FROM_PROMPT_SALT" in seeds_help and "FARM_SEEDS_FROM_PROMPT_COUNT" in seeds_help


def _commands(group: click.Group, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out: list[tuple[tuple[str, ...], click.Command]] = []
    for name, command in group.commands.items():
        out.append(((*path, name), command))
        if isinstance(command, click.Group):
            out.extend(_commands(command, (*path, name)))
    return out


@pytest.mark.parametrize(
    ("path", "command"), _commands(cli), ids=lambda v: " ".join(v) if isinstance(v, tuple) else ""
)
def test_every_option_shows_its_env_var(path: tuple[str, ...], command: click.Command) -> None:
    options = [p for p in command.params if isinstance(p, click.Option) and p.name not in ("help", "version")]
    if not options:
        return
    help_text = CliRunner().invoke(cli, [*path, "--help"], terminal_width=400).output
    for option in options:
        assert option.show_envvar, f"farm {' '.join(path)} {option.opts[0]} does not show its env var"
        assert "env var: FARM_" in help_text


def test_farm_help_starts_fast() -> None:
    farm("--help")  # warm the file cache
    best = min(_timed_help() for _ in range(3))
    assert best < 1.5, f"farm --help took {best:.2f}s"


def _timed_help() -> float:
    started = time.perf_counter()
    result = farm("--help")
    elapsed = time.perf_counter() - started
    assert result.returncode == EXIT_OK
    return elapsed
