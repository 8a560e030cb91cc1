"""Alembic migration scripts of the farm ledger (installed as ``farm.ledger.migrations``)."""
