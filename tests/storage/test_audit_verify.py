"""The fast verification path (`storage.audit._hasher`, raw driver rows) agrees with `append`'s hash."""
from __future__ import annotations

import os

import pytest
from sqlalchemy import text

from storage import audit, db


@pytest.mark.parametrize("key", [b"\x07" * 32, os.urandom(32), os.urandom(64), os.urandom(100), b""],
                         ids=["fixed", "random", "block", "long", "empty"])
def test_precomputed_pad_hmac_equals_the_append_hash(key):
    values = (17, "2026-11-25T20:07:00.000001+00:00", "110104", "instance.stored", "C", 0, "aet:PACS1",
              "10.0.0.2", "2.25.1", "2.25.2", '{"bytes":12,"x":"\\u00e9"}', "0" * 64)
    assert audit._hasher(key)(values) == audit._hash(key, values)


def test_non_ascii_garbage_in_a_hash_column_is_reported_not_raised(tmp_path):
    engine = db.engine_from_url(f"sqlite:///{tmp_path / 'a.db'}")
    db.migrate(engine)
    key = b"\x01" * 32
    with db.sessions(engine).begin() as s:
        for _ in range(3):
            audit.append(s, key, event_type="app.start")
    with engine.begin() as conn:
        conn.execute(text("UPDATE audit_events SET hash = 'zé' WHERE seq = 2"))
    with db.sessions(engine)() as s:
        report = audit.verify(s, key, batch=1)
    assert not report.ok and report.first_bad_seq == 2 and "modified" in report.reason
    engine.dispose()
