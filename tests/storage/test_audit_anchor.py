"""Anchors of the audit head: written with a MAC, read back newest first, forgeries ignored."""
from __future__ import annotations

import json

from storage import audit_anchor

KEY = b"\x07" * 32


def test_the_newest_anchor_with_a_valid_mac_is_the_one_read(tmp_path):
    path = tmp_path / audit_anchor.FILE_NAME
    audit_anchor.append(path, KEY, 3, "aa")
    audit_anchor.append(path, KEY, 9, "bb")
    anchor, rejected = audit_anchor.last(path, KEY)
    assert anchor.head() == (9, "bb") and rejected == 0
    assert (path.stat().st_mode & 0o777) == 0o600


def test_a_line_written_without_the_key_or_torn_is_ignored_and_counted(tmp_path):
    path = tmp_path / audit_anchor.FILE_NAME
    audit_anchor.append(path, KEY, 5, "cc")
    forged = {"at": "2026-11-29T00:00:00+00:00", "seq": 1, "hash": "dd", "mac": "0" * 64}
    with open(path, "a") as f:
        f.write(json.dumps(forged) + "\n")
        f.write(json.dumps(forged | {"seq": 50}) + "\n")
        f.write('{"at": "2026-11-29T00:0')  # a crash mid-append
    anchor, rejected = audit_anchor.last(path, KEY)
    assert anchor.head() == (5, "cc") and rejected == 3
    assert audit_anchor.last(path, b"\x08" * 32) == (None, 4)  # another key: none of them is ours


def test_no_file_means_no_anchor(tmp_path):
    assert audit_anchor.last(tmp_path / "missing.jsonl", KEY) == (None, 0)
