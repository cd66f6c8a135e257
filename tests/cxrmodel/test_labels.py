"""Labels: canonical order, and mapping another model's outputs by name, never by position."""
from __future__ import annotations

import pytest

from cxrmodel import labels


def test_canonical_order_is_the_chestxray14_order():
    assert labels.LABELS == ("Atelectasis", "Cardiomegaly", "Effusion", "Infiltration", "Mass", "Nodule",
                             "Pneumonia", "Pneumothorax", "Consolidation", "Edema", "Emphysema", "Fibrosis",
                             "Pleural_Thickening", "Hernia")


def test_output_index_maps_by_name_whatever_the_order_and_spelling():
    other = ["Pleural Thickening", "", "hernia", *reversed(labels.LABELS[:12]), "Fracture"]
    index = labels.output_index(other)
    for ours, pos in zip(labels.LABELS, index):
        assert labels.normalize_name(other[pos]) == labels.normalize_name(ours)


def test_output_index_names_missing_and_repeated_labels():
    with pytest.raises(ValueError, match="Hernia"):
        labels.output_index(labels.LABELS[:13])
    with pytest.raises(ValueError, match="repeat"):
        labels.output_index([*labels.LABELS, "Mass"])


def test_multi_hot_reads_nih_finding_labels():
    assert labels.multi_hot("No Finding") == [0] * 14
    v = labels.multi_hot("Cardiomegaly|Effusion")
    assert v[1] == 1 and v[2] == 1 and sum(v) == 2
    with pytest.raises(KeyError):
        labels.multi_hot("Fracture")
