"""Prediction rows carry a MAC; any change to what a row says, or which instance it is for, fails it."""
from __future__ import annotations

import pytest

from storage import records

KEY = b"\x05" * 32
ROW = ("2.25.11", "v1", "Effusion", 0.3125, 0.5, False)


def test_a_row_as_written_verifies():
    assert records.verify(KEY, records.mac(KEY, *ROW), *ROW)


@pytest.mark.parametrize("index,changed", [(0, "2.25.12"), (1, "v2"), (2, "Edema"), (3, 0.3126), (4, 0.25),
                                           (5, True)])
def test_changing_any_field_fails(index, changed):
    tag = records.mac(KEY, *ROW)
    edited = list(ROW)
    edited[index] = changed
    assert not records.verify(KEY, tag, *edited)


def test_an_empty_or_foreign_tag_fails():
    assert not records.verify(KEY, "", *ROW)
    assert not records.verify(KEY, records.mac(b"\x06" * 32, *ROW), *ROW)
