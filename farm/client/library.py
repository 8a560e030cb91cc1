"""The seed library's annotations, client side: review labels and their rules.

A job can be starred (:meth:`farm.client.Client.star`, a bookmark) and carry review labels
(:meth:`LibraryOps.set_labels`): a reviewer's tags such as ``keeper``, ``hands-bad``,
``v2.final``. The rules (checked here, before anything is written; one
:class:`~farm.errors.InvalidInput` naming the field ``labels`` and the rule):

* at most :data:`MAX_LABELS` labels per request (``max_labels``);
* each one, after stripping surrounding whitespace and lowercasing, 1 to
  :data:`MAX_LABEL_CHARS` characters of ``[a-z0-9][a-z0-9._-]*`` (``label``).

The labels are stored sorted, without duplicates (``["B", "a", "b "]`` is ``["a", "b"]``); the
API's OpenAPI schema carries the same rules (:mod:`farm.api.openapi_rules`).

Torch-free.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING

from farm.errors import InvalidInput

if TYPE_CHECKING:
    from farm.ledger import Ledger

#: Most labels one request may give.
MAX_LABELS = 16
#: Longest label (after stripping and lowercasing).
MAX_LABEL_CHARS = 40
#: A label's first character, and the characters after it (after lowercasing).
LABEL_FIRST_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789"
LABEL_MORE_CHARS = LABEL_FIRST_CHARS + "._-"
_LABEL_RE = re.compile(f"[{LABEL_FIRST_CHARS}][{re.escape(LABEL_MORE_CHARS)}]{{0,{MAX_LABEL_CHARS - 1}}}")
_LABEL_RULE = f"1-{MAX_LABEL_CHARS} characters of [a-z0-9][a-z0-9._-]* (case and surrounding spaces ignored)"


def normalize_label(value: object, field: str = "labels") -> str:
    """``value`` stripped and lowercased, if that is a label.

    Else :class:`InvalidInput` on ``field``, rule ``label`` (``type`` for something not text).
    """
    if not isinstance(value, str):
        raise InvalidInput.one(field, "type", f"a label must be text, got {type(value).__name__}")
    label = value.strip().lower()
    if not _LABEL_RE.fullmatch(label):
        raise InvalidInput.one(field, "label", f"each label is {_LABEL_RULE}; got {value[:60]!r}")
    return label


def check_labels(labels: object) -> list[str]:
    """The labels of a request, normalized, sorted and deduplicated (:class:`InvalidInput` on field ``labels``)."""
    if isinstance(labels, str | bytes) or not isinstance(labels, Sequence):
        raise InvalidInput.one("labels", "type", f"must be a list of labels, got {type(labels).__name__}")
    if len(labels) > MAX_LABELS:
        raise InvalidInput.one("labels", "max_labels", f"at most {MAX_LABELS} labels, got {len(labels)}")
    return sorted({normalize_label(value) for value in labels})


class LibraryOps:
    """Review labels (mixed into :class:`farm.client.Client`; stars are :meth:`~farm.client.Client.star`)."""

    ledger: Ledger

    def set_labels(self, job_id: str, labels: Sequence[str]) -> list[str]:
        """Replace the job's review labels; returns them as stored (sorted, no duplicates).

        Every rule is checked before anything is written (:class:`~farm.errors.InvalidInput`
        naming ``labels`` and the rule); :class:`~farm.errors.JobNotFound` for an unknown job. The
        job's trail gets the event "labelled" with the labels before and after (none when they
        do not change).
        """
        from farm.client.reads import check_id  # (reads imports this module's label rules)

        checked_id = check_id(job_id, "job_id")
        return self.ledger.set_labels(checked_id, check_labels(labels))
