"""The ledger: farm's record of every job, batch and state change (SQLAlchemy 2 + Alembic).

All database access goes through :class:`Ledger` (``farm.ledger.manager``). Modules:

* ``status`` — the job status machine (no SQLAlchemy);
* ``types`` — column types that agree on SQLite and Postgres;
* ``models`` — the tables;
* ``records`` — frozen snapshots of rows, and :class:`NewJob`;
* ``db`` — engines and the migration runner (scripts in the repository's ``migrations/``);
* ``manager`` — the gateway.
"""

from farm.ledger.manager import Ledger
from farm.ledger.records import BatchRecord, EventRecord, JobRecord, NewJob
from farm.ledger.status import TERMINAL, TRANSITIONS, JobStatus

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "BatchRecord",
    "EventRecord",
    "JobRecord",
    "JobStatus",
    "Ledger",
    "NewJob",
]
