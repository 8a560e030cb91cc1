"""Storage audit and repair.

Each succeeded job's output re-hashed against its record, the verdicts written to the ledger, and
bad outputs quarantined and rendered again.

* :func:`audit_outputs` — every distinct output URI of the given jobs is checked once (cache hits
  share their original's file) by the output store's ``check`` (file or s3) against the ledger's
  ``outputs`` record (the file hash as last written), and reported per job. The caller records the
  :class:`~farm.ledger.records.OutputMark` list it returns: ``missing`` and ``corrupt`` outputs are
  then never answered from by the cache, and ``ok`` refreshes the verified stamp.
* :func:`repair_item` — the verdict of one repaired output, from its re-render.

No numpy, no torch: a producer runs this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from farm.client.reports import (
    FAILED,
    MATCH,
    MISMATCH,
    UNFINISHED,
    AuditEntry,
    AuditReport,
    RepairItem,
    differences,
    explain,
)
from farm.ledger.records import OutputMark
from farm.store import OutputState

if TYPE_CHECKING:
    from farm.ledger.records import JobRecord, OutputRecord
    from farm.store import OutputCheck, StoreBackend


def audit_outputs(
    jobs: Iterable[JobRecord], store: StoreBackend, recorded: Mapping[str, OutputRecord]
) -> tuple[AuditReport, list[OutputMark]]:
    """Check each job's output (see the module docstring): the report, and the marks to record."""
    ok: list[str] = []
    missing: list[AuditEntry] = []
    corrupt: list[AuditEntry] = []
    checks: dict[str, tuple[OutputCheck, str]] = {}
    checked = 0
    for job in jobs:
        checked += 1
        uri = job.output_uri
        if not uri or not job.file_sha256:
            missing.append(AuditEntry(job.id, None, job.file_sha256, None, "no output recorded"))
            continue
        if uri not in checks:
            record = recorded.get(uri)
            expected = record.file_sha256 if record is not None else job.file_sha256
            size = record.size_bytes if record is not None else None
            checks[uri] = (store.check(uri, expected, size_bytes=size), expected)
        check, expected = checks[uri]
        entry = AuditEntry(job.id, store.where(uri), expected, check.actual_sha256, check.detail)
        if check.state is OutputState.OK:
            ok.append(job.id)
        elif check.state is OutputState.CORRUPT:
            corrupt.append(entry)
        else:
            missing.append(entry)
    marks = [
        OutputMark(uri, check.state.value, expected, check.detail, check.actual_sha256, check.size_bytes)
        for uri, (check, expected) in checks.items()
    ]
    return AuditReport(checked, ok, missing, corrupt), marks


def repair_item(
    uri: str, state: str, jobs: list[JobRecord], parent: JobRecord, child: JobRecord | None, *,
    quarantined: str | None, restored: OutputCheck | None,
) -> RepairItem:
    """The verdict on one bad output after its re-render ``child`` of ``parent`` (None: not finished).

    MATCH: same frames and the file is back and intact; MISMATCH: the frames differ (with what
    differs between the two renders); FAILED: the re-render failed or the file is still bad.
    """
    def item(verdict: str, reason: str, diffs: list[str] | None = None, rewritten: bool = False) -> RepairItem:
        return RepairItem(uri, state, [j.id for j in jobs], parent.id, quarantined,
                          None if child is None else child.id, verdict, reason, diffs or [], rewritten)

    if child is None or not child.terminal:
        return item(UNFINISHED, f"the re-render is {'unfinished' if child is None else child.status.value}")
    if child.status.value != "succeeded":
        return item(FAILED, f"the re-render {child.status.value}: {child.error_type}: {child.error_message}")
    found = differences(parent, child)
    diffs = [str(d) for d in found]
    if child.frames_sha256 != parent.frames_sha256:
        causes = explain(found)
        why = "; ".join(causes) if causes else "nothing recorded differs that changes frames"
        return item(MISMATCH, f"frames sha256 {child.frames_sha256} differ from the recorded "
                              f"{parent.frames_sha256}; the original output stays missing; why: {why}", diffs)
    if restored is None or not restored.ok:
        why = "not checked" if restored is None else f"{restored.state.value}: {restored.detail}"
        return item(FAILED, f"same frames, but the stored file is still bad ({why})", diffs)
    rewritten = restored.actual_sha256 != parent.file_sha256
    reason = "same frames; file restored"
    if rewritten:
        reason += " with new bytes (the MP4 encoder differs: " + (", ".join(diffs) or "no recorded difference") + ")"
    return item(MATCH, reason, diffs, rewritten)
