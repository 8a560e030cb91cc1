"""The ledger: farm's record of every job, batch and state change (SQLAlchemy 2 + Alembic).

All database access goes through :class:`Ledger` (``farm.ledger.manager``). Modules:

* ``status`` — the job status machine (no SQLAlchemy);
* ``types`` — column types that agree on SQLite and Postgres;
* ``models`` — the tables;
* ``records`` — frozen snapshots of rows, and :class:`NewJob`;
* ``db`` — engines and the migration runner (scripts in the repository's ``migrations/``);
* ``notify`` — being told when jobs finish (Postgres ``LISTEN``/``NOTIFY``);
* ``queueing`` — the farm's set-wise queries (dedup, enqueue, claim, workers), used by the gateway;
* ``outputs`` — the stored outputs' integrity records (what the cache may answer from);
* ``stats`` — aggregates for monitoring and the pace behind ETAs;
* ``base``, ``reads``, ``library``, ``manager`` — the gateway: connection and schema, reads, stars and
  review labels, writes (one class, :class:`Ledger`).
"""

from farm.ledger.manager import Ledger
from farm.ledger.records import (
    BatchRecord,
    EventRecord,
    JobProgress,
    JobRecord,
    ModelRecord,
    NewJob,
    OutputMark,
    OutputRecord,
    WorkerRecord,
)
from farm.ledger.status import TERMINAL, TRANSITIONS, WORKER_STATES, JobStatus

__all__ = [
    "TERMINAL",
    "TRANSITIONS",
    "WORKER_STATES",
    "BatchRecord",
    "EventRecord",
    "JobProgress",
    "JobRecord",
    "JobStatus",
    "Ledger",
    "ModelRecord",
    "NewJob",
    "OutputMark",
    "OutputRecord",
    "WorkerRecord",
]
