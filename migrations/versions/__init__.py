"""Alembic revisions (loaded by Alembic by path; never imported by farm)."""
