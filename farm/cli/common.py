"""Helpers every CLI command uses: options that show their env var, JSON output, error exits."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from pydantic import ValidationError

from farm.errors import ExpectedError, FarmError, InvalidInput, Problem
from farm.settings import Settings, get_settings

F = TypeVar("F", bound=Callable[..., Any])

#: Exit codes: 0 ok, 1 the work failed (e.g. a render or a job failed), 2 bad input or usage,
#: 3 the jobs were recorded but the broker could not be reached to send them (the reaper will).
EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_SENT = 3


def option(*param_decls: str, **attrs: Any) -> Callable[[F], F]:
    """``click.option`` that always shows its environment variable in ``--help``."""
    attrs.setdefault("show_envvar", True)
    return click.option(*param_decls, **attrs)


def json_option() -> Callable[[F], F]:
    """The ``--json`` flag (``as_json``)."""
    return option("--json", "as_json", is_flag=True, default=False, help="Print machine-readable JSON.")


def database_option() -> Callable[[F], F]:
    """The ``--database-url`` option (FARM_DATABASE_URL)."""
    return option(
        "--database-url",
        envvar="FARM_DATABASE_URL",
        default=None,
        help="Ledger database URL (default: the embedded SQLite file in FARM_DATA_DIR).",
    )


def broker_option() -> Callable[[F], F]:
    """The ``--broker-url`` option (FARM_BROKER_URL)."""
    return option(
        "--broker-url", envvar="FARM_BROKER_URL", default=None,
        help="Celery broker URL (redis://...; default: the embedded filesystem broker in FARM_DATA_DIR).",
    )


def not_sent_exit(not_sent: int, error: str | None) -> None:
    """Jobs were recorded but not sent: say so on stderr (what happens to them) and exit 3."""
    if not not_sent:
        return
    click.echo(
        f"error: the broker could not be reached ({error or 'unavailable'}): {not_sent} job(s) are recorded "
        "in the ledger but NOT sent. A worker's reaper sends them once the broker is reachable (or run "
        "`farm reap`); check FARM_BROKER_URL / --broker-url.", err=True)
    sys.exit(EXIT_NOT_SENT)


def settings_with(**overrides: Any) -> Settings:
    """The process settings with the non-None CLI overrides applied.

    A bad value (from the environment or an option) is an
    :class:`~farm.errors.InvalidInput` naming the setting.
    """
    changes = {k: v for k, v in overrides.items() if v is not None}
    try:
        base = get_settings()
        return Settings(**{**base.model_dump(), **changes}) if changes else base
    except ValidationError as exc:
        problems = [Problem(".".join(str(p) for p in e["loc"]) or "settings", "setting", e["msg"])
                    for e in exc.errors()]
        raise InvalidInput(problems) from None


def emit_json(data: Any) -> None:
    """Print ``data`` as indented JSON with sorted keys (``str`` for what JSON cannot hold)."""
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str, ensure_ascii=False))


def fail(exc: FarmError, *, as_json: bool = False) -> None:
    """Print a farm error for people (or as JSON) and exit with the matching code."""
    code = EXIT_BAD_INPUT if isinstance(exc, InvalidInput) else EXIT_FAILED
    if as_json:
        payload: dict[str, Any] = {"error": type(exc).__name__, "message": str(exc)}
        if isinstance(exc, InvalidInput):
            payload["problems"] = [p.as_dict() for p in exc.problems]
        emit_json(payload)
    else:
        if isinstance(exc, InvalidInput):
            click.echo(f"error: {len(exc.problems)} problem(s):", err=True)
            for p in exc.problems[:20]:
                click.echo(f"  {p}", err=True)
            if len(exc.problems) > 20:
                click.echo(f"  ... and {len(exc.problems) - 20} more", err=True)
        else:
            click.echo(f"error: {exc}", err=True)
    sys.exit(code)


def handle_errors(as_json_param: str = "as_json") -> Callable[[F], F]:
    """Decorator: turn farm errors raised by a command into a clear message and exit code."""

    def deco(fn: F) -> F:
        import functools

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                return fn(*args, **kwargs)
            except (ExpectedError, FarmError) as exc:
                fail(exc, as_json=bool(kwargs.get(as_json_param)))

        return wrapper  # type: ignore[return-value]

    return deco
