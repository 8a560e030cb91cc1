"""``farm db``: the ledger database's schema (Alembic migrations).

* ``farm db upgrade`` — migrate the ledger to the code's schema (creates the embedded SQLite file);
* ``farm db current`` — the revision the database is at, and the code's head;
* ``farm db check`` — exit 0 only when the database is at head and matches the models.
"""

from __future__ import annotations

import click

from farm.cli.common import database_option, emit_json, handle_errors, json_option, option, settings_with
from farm.errors import SchemaOutOfDate
from farm.settings import redacted_url


@click.group("db")
def db_group() -> None:
    """The ledger database: migrations and schema checks."""


@db_group.command("upgrade")
@database_option()
@option("--revision", default="head", help="Alembic revision to migrate to.")
@json_option()
@handle_errors()
def upgrade_command(database_url: str | None, revision: str, as_json: bool) -> None:
    """Migrate the ledger database up to REVISION (default: head)."""
    from farm.ledger import Ledger

    settings = settings_with(database_url=database_url)
    with Ledger(settings.ledger_url, echo=settings.sql_echo) as ledger:
        before, after = ledger.upgrade(revision)
        url = ledger.display_url
    if as_json:
        emit_json({"url": url, "from": before, "to": after})
    elif before == after:
        click.echo(f"{url}: already at {after}")
    else:
        click.echo(f"{url}: upgraded {before or 'empty'} -> {after}")


@db_group.command("current")
@database_option()
@json_option()
@handle_errors()
def current_command(database_url: str | None, as_json: bool) -> None:
    """Show the revision the ledger database is at and the code's head revision."""
    from farm.ledger import Ledger

    settings = settings_with(database_url=database_url)
    with Ledger(settings.ledger_url) as ledger:
        current = ledger.current_revision()
        head = ledger.head_revision()
    if as_json:
        emit_json({"url": redacted_url(settings.ledger_url), "current": current, "head": head,
                   "at_head": current == head})
    else:
        click.echo(f"current: {current or 'none (empty database)'}")
        click.echo(f"head:    {head}")


@db_group.command("check")
@database_option()
@json_option()
@handle_errors()
def check_command(database_url: str | None, as_json: bool) -> None:
    """Exit 0 when the ledger is at head and its schema matches the models; 1 otherwise."""
    from farm.ledger import Ledger

    settings = settings_with(database_url=database_url)
    with Ledger(settings.ledger_url) as ledger:
        current = ledger.current_revision()
        head = ledger.head_revision()
        diff = ledger.schema_diff() if current == head else []
        url = ledger.display_url
    if current != head:
        raise SchemaOutOfDate(
            f"{url} is at revision {current or 'none'}, head is {head}: run `farm db upgrade`"
        )
    if diff:
        raise SchemaOutOfDate(
            f"{url} is at {head} but its schema differs from the models: "
            + "; ".join(str(d) for d in diff[:10])
        )
    if as_json:
        emit_json({"url": url, "current": current, "head": head, "ok": True})
    else:
        click.echo(f"{url}: ok (at {head}, schema matches)")


def register(group: click.Group) -> None:
    """Add the ``farm db`` group to ``group``."""
    group.add_command(db_group)
