"""The ledger gateway's annotations: what a reviewer records about a job without changing its status.

Stars (a bookmark) and review labels (the seed library's tags). Neither changes a job's status or
its render; each change appends an event to the job's trail ("starred"/"unstarred",
"labelled" with the labels before and after). :class:`farm.ledger.manager.Ledger` inherits them.

The ledger stores what it is given; the rules of a label (characters, length, how many) are
checked by the client (:mod:`farm.client.library`), the one door producers and the API use.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import insert, select, update
from sqlalchemy.engine import Connection

from farm.errors import JobNotFound
from farm.ledger.base import LedgerBase
from farm.ledger.models import events, jobs

#: Event kinds of the annotations.
STARRED_EVENT = "starred"
UNSTARRED_EVENT = "unstarred"
LABELLED_EVENT = "labelled"


def _event(conn: Connection, job_id: str, status: str, kind: str, at: Any, detail: dict[str, Any] | None) -> None:
    """Append an annotation event (the status stays what it was)."""
    conn.execute(insert(events).values(job_id=job_id, at=at, from_status=status, to_status=status, kind=kind,
                                       worker=None, detail=detail))


class LedgerLibrary(LedgerBase):
    """Stars and review labels (see the module docstring)."""

    def set_starred(self, job_id: str, starred: bool) -> bool:
        """Star or unstar a job (event "starred"/"unstarred").

        Returns False, writing nothing, when the job already was in that state.
        """
        with self._write() as conn:
            row = conn.execute(
                select(jobs.c.status, jobs.c.starred).where(jobs.c.id == job_id).with_for_update()
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            if bool(row.starred) == starred:
                return False
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(starred=starred))
            _event(conn, job_id, row.status, STARRED_EVENT if starred else UNSTARRED_EVENT, self._now(), None)
            return True

    def set_labels(self, job_id: str, labels: Iterable[str]) -> list[str]:
        """Replace the job's review labels with ``labels`` (stored sorted, without duplicates); returns them.

        Appends the event "labelled" with ``{"before": [...], "after": [...]}``; writes nothing
        (no event either) when the labels do not change. :class:`JobNotFound` for an unknown job.
        """
        after = sorted(set(labels))
        with self._write() as conn:
            row = conn.execute(
                select(jobs.c.status, jobs.c.labels).where(jobs.c.id == job_id).with_for_update()
            ).first()
            if row is None:
                raise JobNotFound(job_id)
            before = list(row.labels or [])
            if before == after:
                return after
            conn.execute(update(jobs).where(jobs.c.id == job_id).values(labels=after))
            _event(conn, job_id, row.status, LABELLED_EVENT, self._now(), {"before": before, "after": after})
            return after
