"""Verifying the audit chain against the last anchor kept outside the database: what `cxrd audit
verify` and the console's "verify now" both run, and the result both record in the `audit.verify`
event (so the last verification, its result and who ran it can be read back from the trail itself).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from sqlalchemy.orm import Session

from storage import audit, audit_anchor


def verify(session: Session, audit_key: bytes, state_dir: Path, *,
           expect_head: tuple[int, str] | None = None, anchored_at: str | None = None,
           progress: Callable[[int], None] | None = None, batch: int = 20000) -> tuple[audit.VerifyReport, dict[str, Any]]:
    """Walk the chain; without `expect_head`, also check it reaches the last head the daemon (or
    `cxrd init`) anchored in `state_dir`. Returns the report and the details to record: the report,
    the anchor used, and on success the new `head` (SEQ:HASH@TIME) to keep elsewhere."""
    anchor_file = state_dir / audit_anchor.FILE_NAME
    anchor = None
    if expect_head is not None:
        head = expect_head
        if anchored_at is None:  # the same head anchored by the daemon says when it was current
            known = audit_anchor.find(anchor_file, audit_key, *head)
            anchored_at = audit_anchor.covered_until(known) if known else None
    else:
        anchor, _ = audit_anchor.last(anchor_file, audit_key)
        head = anchor.head() if anchor else None
        anchored_at = audit_anchor.covered_until(anchor) if anchor else None
    report = audit.verify(session, audit_key, expect_head=head, anchored_at=anchored_at, progress=progress,
                          batch=batch)
    result = report.as_dict() | {"anchor": {"seq": anchor.seq, "at": anchor.at} if anchor else None}
    if report.ok and report.last_seq:
        result["head"] = f"{report.last_seq}:{report.last_hash}@{report.last_at}"
    return report, result
