"""Fixtures for the storage tests: a migrated SQLite database in a temporary directory."""
from __future__ import annotations

import pytest

from storage import db


@pytest.fixture
def engine(tmp_path):
    eng = db.engine_from_url(f"sqlite:///{tmp_path / 'cxrd.db'}")
    db.migrate(eng)
    yield eng
    eng.dispose()
