"""uid_checks: the memo gives pydicom's own answer for every UID, and stays bounded."""
from __future__ import annotations

import pytest
from pydicom.uid import UID

from daemon.dicom.patches import uid_checks


@pytest.fixture
def installed():
    uid_checks.install()
    yield
    uid_checks.uninstall()


@pytest.mark.parametrize("value", [
    "1.2.840.10008.1.2.1",            # standard, valid (memoised)
    "1.2.840.10008.1.2.01",           # standard root, leading zero: not conformant (memoised as False)
    "1.2.840.10008." + "1" * 60,      # over 64 characters
    "1.2.826.0.1.3680043.8.498.1",    # an instance UID: checked every time, as before
    "1.2.3.abc",
])
def test_same_answer_as_pydicom_first_and_second_time(installed, value):
    expected = uid_checks._original.fget(UID(value))
    assert UID(value).is_valid is expected
    assert UID(value).is_valid is expected


def test_only_standard_uids_are_remembered_and_the_memo_is_bounded(installed, monkeypatch):
    monkeypatch.setattr(uid_checks, "_known", {})
    UID("1.2.826.0.1.3680043.8.498.1").is_valid
    UID("1.2.840.10008.5.1.4.1.1.1").is_valid
    assert list(uid_checks._known) == ["1.2.840.10008.5.1.4.1.1.1"]
    monkeypatch.setattr(uid_checks, "_LIMIT", 3)
    for i in range(10):
        assert UID(f"1.2.840.10008.9.{i}").is_valid
    assert len(uid_checks._known) == 3


def test_uninstall_restores_pydicom():
    uid_checks.install()
    uid_checks.uninstall()
    assert UID.is_valid is uid_checks._original
