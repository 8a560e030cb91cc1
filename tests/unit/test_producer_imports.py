"""Producer code stays torch-free.

Importing it (and running ``farm validate``) loads no torch, diffusers, transformers or numpy.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("torch", "diffusers", "transformers", "numpy")
PRODUCER_MODULES = ["farm.spec", "farm.seeds", "farm.manifest", "farm.settings", "farm.cli"]
if importlib.util.find_spec("farm.ledger") is not None:
    PRODUCER_MODULES.append("farm.ledger")
#: The producers' own modules: the Python client and its CLI commands.
PRODUCER_MODULES += [
    "farm.client",
    "farm.client.core",
    "farm.client.specs",
    "farm.client.reports",
    "farm.client.audit",
    "farm.store",
    "farm.store.layout",
    "farm.store.files",
    "farm.store.backend",
    "farm.store.s3",
    *(f"farm.cli.{name}" for name in ("submit", "batch", "status", "results", "library", "audit")),
]
#: Modules producers never import (they send by task name); the S3 client only on first use of an s3 store.
NEVER = ("farm.engine", "farm.worker.task", "farm.store.encode", "farm.store.writer", "obstore")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "day.yaml"

_CHILD = """
import importlib, json, sys
for name in json.loads(sys.argv[1]):
    importlib.import_module(name)
after_import = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
from click.testing import CliRunner
from farm.cli import cli
result = CliRunner().invoke(cli, ["validate", sys.argv[3]])
after_validate = sorted(m for m in json.loads(sys.argv[2]) if m in sys.modules)
print(json.dumps({"after_import": after_import, "after_validate": after_validate, "exit": result.exit_code,
                  "imported": sorted(m for m in sys.modules if m.startswith("farm"))}))
"""


def test_producer_modules_do_not_import_the_engine_stack() -> None:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, json.dumps(PRODUCER_MODULES), json.dumps(HEAVY), str(EXAMPLE)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    report = json.loads(out.stdout)
    assert set(PRODUCER_MODULES) <= set(report["imported"])  # the imports did happen
    assert report["after_import"] == []
    assert report["exit"] == 0
    assert report["after_validate"] == []
    assert not set(NEVER) & set(report["imported"]), report["imported"]
