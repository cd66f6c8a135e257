"""Model registry: versions on disk, verified loading, atomic current pointer, promote and rollback."""
from __future__ import annotations

import json

import pytest
import torch

from cxrmodel.errors import IntegrityError, ModelError, NoModelError
from cxrmodel.manifest import Manifest
from cxrmodel.network import ArchSpec, build, build_model
from cxrmodel.preprocess import XRV_SPEC
from cxrmodel.registry import Registry

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def model():
    return build_model(seed=0).eval()


def test_empty_registry_says_what_to_do(tmp_path):
    reg = Registry(tmp_path / "models")
    assert reg.list() == [] and reg.current() is None
    with pytest.raises(NoModelError, match="cxrd train.*cxrd model import"):
        reg.load()


def test_add_writes_weights_and_a_complete_manifest(tmp_path, model):
    reg = Registry(tmp_path)
    thresholds = {"Effusion": 0.31, "Hernia": 0.05}
    v = reg.add(model, thresholds=thresholds, metrics={"mean_auroc": 0.71, "auroc": {"Effusion": 0.8}},
                training={"images": 1000, "patients": 800, "split": "patient"})
    m = json.loads((tmp_path / v / "manifest.json").read_text())
    assert m["version"] == v and m["created"] and len(m["weights_sha256"]) == 64
    assert m["architecture"]["name"] == "densenet121" and m["labels"][0] == "Atelectasis"
    assert m["preprocessing"]["mean"] == [0.485, 0.456, 0.406]
    assert m["thresholds"] == thresholds and m["training"]["split"] == "patient"
    assert reg.current() is None  # added, not promoted
    with pytest.raises(NoModelError, match="promote"):
        reg.load()
    loaded = reg.load(v)
    for a, b in zip(loaded.module.state_dict().values(), model.state_dict().values()):
        assert torch.equal(a, b)
    assert loaded.manifest.threshold("Effusion") == 0.31 and loaded.manifest.threshold("Mass") == 0.5


def test_load_refuses_changed_weights(tmp_path, model):
    reg = Registry(tmp_path)
    v = reg.add(model, promote=True)
    weights = tmp_path / v / "weights.pt"
    data = bytearray(weights.read_bytes())
    data[-100] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="sha256"):
        reg.load()


def test_promote_and_rollback_walk_the_history(tmp_path, model):
    reg = Registry(tmp_path)
    a = reg.add(model, version="a", promote=True)
    b = reg.add(model, version="b")
    c = reg.add(model, version="c")
    assert reg.current().version == a
    assert reg.promote(b) == a
    assert reg.promote(c) == b
    assert [i.version for i in reg.list() if i.current] == ["c"]
    assert reg.rollback() == b and reg.current().version == b
    assert reg.rollback() == a and reg.current().version == a
    with pytest.raises(ModelError, match="nothing to roll back"):
        reg.rollback()
    assert [e["event"] for e in reg.history()] == ["promote", "promote", "promote", "rollback", "rollback"]
    # the pointer is one small JSON document, replaced whole
    assert json.loads((tmp_path / "current.json").read_text())["version"] == a
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".current")]


def test_bad_names_and_duplicates_are_refused(tmp_path, model):
    reg = Registry(tmp_path)
    reg.add(model, version="v1")
    with pytest.raises(ModelError, match="already exists"):
        reg.add(model, version="v1")
    with pytest.raises(ModelError, match="invalid model version"):
        reg.add(model, version="../escape")
    with pytest.raises(ModelError, match="no model version"):
        reg.promote("v2")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".add-")] == []


def test_architecture_and_preprocessing_survive_the_round_trip(tmp_path):
    arch = ArchSpec(in_channels=1, num_outputs=18, output_index=tuple(range(13, -1, -1)))
    module = build(arch, seed=1).eval()
    reg = Registry(tmp_path)
    v = reg.add(module, Manifest(architecture=arch, preprocessing=XRV_SPEC, source={"format": "torchxrayvision"}))
    loaded = reg.load(v)
    assert loaded.manifest.architecture == arch and loaded.manifest.preprocessing == XRV_SPEC
    x = torch.randn(1, 1, 64, 64)
    with torch.inference_mode():
        assert torch.equal(loaded.module(x), module(x))


def test_manifest_rejects_unknown_labels_and_bad_thresholds():
    with pytest.raises(ModelError, match="unknown label"):
        Manifest(thresholds={"Fracture": 0.5})
    with pytest.raises(ModelError, match="within"):
        Manifest(thresholds={"Mass": 1.5})
    m = Manifest(thresholds={"Mass": 0.2}, metrics={"auroc": {"Mass": torch.tensor(0.7)}})
    assert Manifest.from_json(m.to_json()).thresholds == {"Mass": 0.2}


def test_the_same_weights_file_is_one_version(tmp_path, model):
    """Importing the very file again is refused naming the version it is (under the registry lock);
    the same bytes read with another output mapping are another model."""
    from cxrmodel.errors import DuplicateModelError
    from cxrmodel.labels import LABELS
    from cxrmodel.weights import import_file

    path = tmp_path / "chest.pth"
    torch.save(model.state_dict(), path)
    reg = Registry(tmp_path / "models")
    first = reg.add(import_file(path, "torchvision"), version="first")
    again = import_file(path, "torchvision")
    assert reg.same_weights(again.source["sha256"], Manifest(architecture=again.arch, source=again.source)) == first
    with pytest.raises(DuplicateModelError, match="already model first") as caught:
        reg.add(again, version="second")
    assert caught.value.version == "first" and [i.version for i in reg.list()] == ["first"]
    assert not any(p.name.startswith(".add-") for p in (tmp_path / "models").iterdir())  # nothing left behind
    # a cxrd model's own weights.pt imported elsewhere is the same weights too
    stored = tmp_path / "models" / "first" / "weights.pt"
    with pytest.raises(DuplicateModelError):
        reg.add(import_file(stored, "torchvision"))
    torch.save({"state_dict": {f"module.densenet121.{k}".replace("classifier.", "classifier.0."): v
                               for k, v in model.state_dict().items()}}, tmp_path / "chexnet.pth")
    reg.add(import_file(tmp_path / "chexnet.pth", "chexnet"), version="straight")
    reversed_labels = import_file(tmp_path / "chexnet.pth", "chexnet", labels=list(reversed(LABELS)))
    assert reg.add(reversed_labels, version="reversed") == "reversed"
