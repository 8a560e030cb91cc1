"""The layer rules hold (``lint-imports`` with pyproject's contracts), and they bite.

The same check on a copy of the package with one forbidden import added fails, naming the
contract.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LINT = str(Path(sys.executable).with_name("lint-imports"))


def lint(root: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {"PYTHONPATH": str(root), "PATH": str(Path(sys.executable).parent)}
    return subprocess.run([LINT, "--config", str(REPO / "pyproject.toml"), "--no-cache"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_the_contracts_hold() -> None:
    done = lint(REPO, REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Contracts: 3 kept, 0 broken." in done.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("farm/ledger/status.py", "import farm.cli.submit", "layers:"),
        ("farm/client/reads.py", "import farm.engine.render", "producers never reach"),
        ("farm/queue/names.py", "import farm.worker.task", "never imports the worker"),
    ],
)
def test_a_broken_rule_fails_the_check(tmp_path: Path, module: str, line: str, contract: str) -> None:
    shutil.copytree(REPO / "farm", tmp_path / "farm", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / module
    target.write_text(target.read_text() + f"\n{line}  # a rule broken on purpose\n")
    done = lint(tmp_path, tmp_path)
    assert done.returncode != 0, done.stdout
    assert contract in done.stdout and "BROKEN" in done.stdout
