"""farm's command line. ``farm --help`` lists the commands.

Commands live in small modules of this package, imported when the CLI starts. None of them may
import torch or diffusers at module level: the CLI must start in well under a second. Every option
can also be given through an environment variable (shown in ``--help``).
"""

from __future__ import annotations

import importlib
import logging

import click

#: Modules that each define ``register(group)``; imported at start-up (all torch-free).
COMMAND_MODULES: tuple[str, ...] = (
    "validate",
    "seeds",
    "db",
    "jobs",
    "render",
    "worker",
    "workers",
    "health",
    "submit",
    "batch",
    "status",
    "results",
    "library",
    "audit",
    "api",
    "flower",
)

CONTEXT_SETTINGS = {"auto_envvar_prefix": "FARM", "show_default": True, "help_option_names": ["-h", "--help"]}


@click.group(context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="farm")
def cli() -> None:
    """farm: a render farm for seeded text-to-video generation (Wan2.2)."""


for _name in COMMAND_MODULES:
    importlib.import_module(f"farm.cli.{_name}").register(cli)


def main() -> None:
    # Commands report what matters to people themselves (stdout, stderr, exit codes): farm's log
    # lines stay quiet unless a command configures logging (the worker, the API and Flower do).
    """The ``farm`` console script."""
    logging.getLogger("farm").addHandler(logging.NullHandler())
    cli(prog_name="farm")
