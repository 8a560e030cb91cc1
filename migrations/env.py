"""Alembic environment for the farm ledger.

Alembic is configured in code (:func:`farm.ledger.db.alembic_config`); the target is either a
connection handed over in ``config.attributes["connection"]`` or ``sqlalchemy.url``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import text
from sqlalchemy.engine import Connection

from farm.ledger.db import PG_MIGRATION_LOCK_KEY, make_engine
from farm.ledger.models import metadata

config = context.config


def _configure(connection: Connection) -> None:
    sqlite = connection.dialect.name == "sqlite"
    context.configure(
        connection=connection,
        target_metadata=metadata,
        compare_type=True,
        # SQLite cannot ALTER most things: recreate tables in batch mode. farm's SQLite engines
        # issue real BEGINs, so DDL there is transactional too.
        render_as_batch=sqlite,
        transactional_ddl=True,
        on_version_apply=config.attributes.get("on_version_apply") or (),
    )


def _run(connection: Connection) -> None:
    _configure(connection)
    with context.begin_transaction():
        if connection.dialect.name == "postgresql":
            # Concurrent upgrades queue here; the next one then reads the new version and does nothing.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY})
        context.run_migrations()


def run_migrations_offline() -> None:
    """Emit the migrations' SQL for ``sqlalchemy.url`` without connecting (``alembic --sql``)."""
    context.configure(
        url=config.get_main_option("sqlalchemy.url"),
        target_metadata=metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the handed-over connection, else on a new engine for ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("no connection and no sqlalchemy.url: use farm.ledger.db.alembic_config()")
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
