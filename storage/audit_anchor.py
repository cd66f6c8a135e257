"""Anchors of the audit chain's head, kept outside the database.

The hash chain finds a row that was changed, removed or reordered, except at the end: whoever can
write the table can delete the newest rows, or all of them, and what is left still verifies. An anchor
is the head (seq, hash) as it was at some moment, written to an append-only file beside the database
and to the journal; `cxrd audit verify` then also checks that the chain still reaches the last anchor
and that the anchored row is unchanged.

One JSON line per anchor: `{"at": ..., "seq": ..., "hash": ..., "mac": ...}`, the MAC keyed with the
audit key, so a line written by someone without the key is ignored (and counted). Lines are appended
with fsync; a torn last line (a crash mid-write) is skipped like any unreadable one.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.models import AuditEvent

FILE_NAME = "audit-anchors.jsonl"


@dataclass(frozen=True)
class Anchor:
    seq: int
    hash: str
    at: str

    def head(self) -> tuple[int, str]:
        return self.seq, self.hash


def _mac(audit_key: bytes, seq: int, head_hash: str, at: str) -> str:
    msg = f"audit-anchor\x00{seq}\x00{head_hash}\x00{at}".encode()
    return hmac.new(audit_key, msg, hashlib.sha256).hexdigest()


def current_head(session: Session) -> tuple[int, str] | None:
    """The newest audit row's (seq, hash), or None for an empty table."""
    row = session.execute(select(AuditEvent.seq, AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)).first()
    return None if row is None else (int(row[0]), str(row[1]))


def append(path: Path, audit_key: bytes, seq: int, head_hash: str) -> Anchor:
    """Append one anchor line and fsync it (the file is created 0600)."""
    at = datetime.now(timezone.utc).isoformat(timespec="seconds")
    line = json.dumps({"at": at, "seq": seq, "hash": head_hash, "mac": _mac(audit_key, seq, head_hash, at)})
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    return Anchor(seq, head_hash, at)


def last(path: Path, audit_key: bytes) -> tuple[Anchor | None, int]:
    """(the newest anchor with a valid MAC, how many lines were unreadable or not ours)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None, 0
    best, rejected = None, 0
    for line in text.splitlines():
        try:
            item = json.loads(line)
            seq, head_hash, at = int(item["seq"]), str(item["hash"]), str(item["at"])
            good = hmac.compare_digest(str(item["mac"]), _mac(audit_key, seq, head_hash, at))
        except (ValueError, KeyError, TypeError):
            good = False
        if not good:
            rejected += 1
            continue
        if best is None or seq >= best.seq:
            best = Anchor(seq, head_hash, at)
    return best, rejected


def find(path: Path, audit_key: bytes, seq: int, head_hash: str) -> Anchor | None:
    """The anchor with a valid MAC for exactly this head, if one was written (for its time)."""
    try:
        text = path.read_text(errors="replace")
    except FileNotFoundError:
        return None
    for line in text.splitlines():
        try:
            item = json.loads(line)
            if int(item["seq"]) == seq and str(item["hash"]) == head_hash and hmac.compare_digest(
                    str(item["mac"]), _mac(audit_key, seq, head_hash, str(item["at"]))):
                return Anchor(seq, head_hash, str(item["at"]))
        except (ValueError, KeyError, TypeError):
            continue
    return None


def covered_until(anchor: Anchor) -> str:
    """A time no row the anchor covers is later than, in `occurred_at`'s form: `at` is written to
    the second after the head was read, so one second past it."""
    moment = datetime.fromisoformat(anchor.at) + timedelta(seconds=1)
    return moment.astimezone(timezone.utc).isoformat(timespec="microseconds")
