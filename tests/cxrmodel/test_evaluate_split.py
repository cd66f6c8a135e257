"""Which images `cxrd evaluate` scores by default: held-out patients of the training set, or all."""
from __future__ import annotations

from pathlib import Path

from cxrmodel import evaluate as E
from cxrmodel.chestxray14 import Entry


def _entries(n: int, start: int = 0) -> list[Entry]:
    return [Entry(image=f"{i:08d}_000.png", path=Path(f"/x/{i}.png"), findings=("Effusion",) if i % 3 else (),
                  patient_id=i) for i in range(start, start + n)]


def test_fingerprint_is_the_data_not_where_it_lies_or_its_order() -> None:
    a = _entries(50)
    moved = [Entry(e.image, Path("/elsewhere") / e.image, e.findings, e.patient_id) for e in reversed(a)]
    assert E.dataset_fingerprint(a) == E.dataset_fingerprint(moved)
    relabelled = [*a[:-1], Entry(a[-1].image, a[-1].path, ("Mass",), a[-1].patient_id)]
    assert E.dataset_fingerprint(relabelled) != E.dataset_fingerprint(a)


def test_the_training_set_is_scored_on_its_test_patients_any_other_set_on_all_of_it() -> None:
    own = _entries(400)
    trained = {"data": "nih", "data_fingerprint": E.dataset_fingerprint(own)}
    assert E.default_split(trained, own, "nih")[0] == "test"
    other = _entries(412, start=10_000)  # another hospital's set, even under the same folder name
    split, why = E.default_split(trained, other, "nih")
    assert split == "all" and "not the data set" in why
    # an imported model has no training data set at all
    assert E.default_split({}, own, "nih")[0] == "all"


def test_manifests_without_a_fingerprint_match_by_folder_and_image_count() -> None:
    own = _entries(100)
    older = {"data": "nih", "images": {"train": 70, "val": 10, "test": 20}}
    assert E.default_split(older, own, "nih")[0] == "test"
    assert E.default_split(older, own[:90], "nih")[0] == "all"
    assert E.default_split(older, own, "other-hospital")[0] == "all"
