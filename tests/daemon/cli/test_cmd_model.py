"""`cxrd predict` and `cxrd model list|import|promote|rollback` against a real registry on disk."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

from cxrmodel.labels import LABELS
from cxrmodel.registry import Registry

torch.set_num_threads(2)


@pytest.fixture()
def cxrd(cli_captured):
    """Run `cxrd ARGS` in-process with an initialised state dir (database and keys: promote and
    rollback are audited) in tmp_path/var; returns (exit code, stdout, stderr)."""
    return cli_captured


def audit_events(tmp_path: Path) -> list[tuple[str, dict]]:
    from sqlalchemy import select

    from config import load_settings
    from daemon.runtime import Runtime
    from storage.models import AuditEvent

    rt = Runtime(load_settings(None))
    with rt.read_sessions() as s:
        rows = s.execute(select(AuditEvent.event_type, AuditEvent.details).order_by(AuditEvent.seq)).all()
    return [(t, json.loads(d)) for t, d in rows if t.startswith("model.")]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    chex = torchvision.models.densenet121(weights=None)
    chex.classifier = nn.Sequential(nn.Linear(1024, 14), nn.Sigmoid())
    holder = nn.Module()
    holder.densenet121 = chex
    torch.save({"state_dict": nn.DataParallel(holder).state_dict()}, d / "chexnet.pth.tar")
    torch.save(torchvision.models.densenet121(weights=None).state_dict(), d / "imagenet.pth")
    return {"chexnet": d / "chexnet.pth.tar", "torchvision": d / "imagenet.pth"}


def test_no_model_yet_is_one_line_that_says_what_to_do(cxrd, shared_data):
    code, out, err = cxrd("model", "list", "--format", "json")
    assert code == 0 and json.loads(out) == []
    code, out, err = cxrd("predict", str(shared_data / "nih/images/00000001_000.png"))
    assert code == 1 and err.count("\n") == 1
    assert "cxrd train" in err and "cxrd model import" in err and "Traceback" not in err


def test_import_list_predict_promote_rollback(cxrd, checkpoints, shared_data, tmp_path):
    # random weights with no evaluation: --promote alone imports but does not make it current
    code, out, err = cxrd("model", "import", str(checkpoints["chexnet"]), "--format", "chexnet",
                          "--version", "chex0", "--promote")
    assert code == 1 and "imported as chex0 but not promoted" in err and "no evaluation" in err
    assert err.count("\n") == 1 and "--promote-without-evaluation" in err
    reg = Registry(tmp_path / "var" / "models")
    assert reg.current() is None and [i.version for i in reg.list()] == ["chex0"]
    # the same file again is refused, naming the version it already is; nothing is created
    code, out, err = cxrd("model", "import", str(checkpoints["chexnet"]), "--format", "chexnet",
                          "--version", "chex1", "--promote-without-evaluation")
    assert code == 1 and "already model chex0" in err and "sha256" in err and "nothing imported" in err
    assert [i.version for i in reg.list()] == ["chex0"] and not (tmp_path / "var" / "models" / "chex1").exists()
    # read as another format mapping it is another model: not a duplicate
    code, out, err = cxrd("model", "import", str(checkpoints["chexnet"]), "--format", "chexnet",
                          "--labels", ",".join(reversed(LABELS)), "--version", "chexrev")
    assert code == 0, err
    assert cxrd("model", "list", "--format", "json")[0] == 0
    for version in ("chex0", "chexrev"):  # start the walk-through below from an empty registry
        shutil.rmtree(tmp_path / "var" / "models" / version)

    code, out, err = cxrd("model", "import", str(checkpoints["chexnet"]), "--format", "chexnet",
                          "--version", "chex1", "--promote-without-evaluation")
    assert code == 0, err
    assert "chex1" in out and "without any evaluation" in out
    code, out, err = cxrd("model", "import", str(checkpoints["torchvision"]), "--format", "torchvision",
                          "--version", "imagenet1", "--output", "json")
    assert code == 0, err
    assert json.loads(out)["source"]["head"] == "new (seed 0)"

    code, out, _ = cxrd("model", "list", "--format", "json")
    listed = {m["version"]: m for m in json.loads(out)}
    assert set(listed) == {"chex1", "imagenet1"}
    assert listed["chex1"]["current"] and not listed["imagenet1"]["current"]
    assert listed["chex1"]["source"] == "chexnet"
    code, out, _ = cxrd("model", "list")
    assert "* chex1" in out and "FLOOR" in out and "not evaluated" in out
    assert not listed["chex1"]["promotion_floor"]["passed"]

    files = [shared_data / "nih/images/00000001_000.png",
             shared_data / "dicom/derived/nih_00000001_000_rle-lossless.dcm"]
    code, out, err = cxrd("predict", *map(str, files), "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    assert [r["model"] for r in rows] == ["chex1", "chex1"]
    loaded = reg.load("chex1")
    expected = loaded.predict(torch.stack([loaded.preprocess(f) for f in files]))
    for row, exp in zip(rows, expected):
        got = list(row["probabilities"].values())
        assert list(row["probabilities"]) == list(loaded.manifest.labels)
        assert max(abs(a - float(b)) for a, b in zip(got, exp)) < 1e-5
    code, out, _ = cxrd("predict", str(files[0]))
    assert code == 0 and "Cardiomegaly" in out and "threshold" in out

    code, _, err = cxrd("model", "promote", "imagenet1")  # no evaluation on record: refused
    assert code == 1 and "imagenet1 not promoted" in err and "no evaluation" in err and "--force" in err
    assert reg.current().version == "chex1"
    code, out, _ = cxrd("model", "promote", "imagenet1", "--force")
    assert code == 0 and "promoted by --force" in out
    assert reg.current().version == "imagenet1"
    code, out, _ = cxrd("model", "rollback")
    assert code == 0 and "chex1" in out and reg.current().version == "chex1"
    code, out, err = cxrd("status", "--format", "json")  # read without torch: must agree with the registry
    current = reg.current()
    assert code == 0, err
    assert json.loads(out)["model"] == f"{current.version} (created {current.created}, {current.source})"
    code, _, err = cxrd("model", "rollback")
    assert code == 1 and "nothing to roll back" in err
    code, _, err = cxrd("model", "promote", "nope")
    assert code == 1 and "no model version" in err
    events = audit_events(tmp_path)
    assert [e for e, _ in events] == ["model.imported", "model.rejected", "model.imported",  # chex0, chexrev
                                      "model.imported", "model.promoted", "model.imported", "model.rejected",
                                      "model.promoted", "model.rollback"]
    assert events[4][1]["forced"] and events[4][1]["overridden"] == ["no evaluation (--promote-without-evaluation)"]
    assert events[6][1]["version"] == "imagenet1" and events[6][1]["refused"]
    assert events[7][1]["version"] == "imagenet1" and events[7][1]["previous"] == "chex1"
    assert events[7][1]["forced"] and "no evaluation" in events[7][1]["overridden"][0]
    assert events[8][1]["version"] == "chex1" and events[8][1]["previous"] == "imagenet1"


def test_unreadable_file_names_the_file_only(cxrd, checkpoints, tmp_path):
    assert cxrd("model", "import", str(checkpoints["chexnet"]), "--format", "chexnet",
                "--promote-without-evaluation")[0] == 0
    bad = tmp_path / "broken.dcm"
    bad.write_bytes(b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\x04\x00")
    code, out, err = cxrd("predict", str(bad))
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and "broken.dcm" in err and "Traceback" not in err


def test_bad_weights_file_is_refused(cxrd, tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"no weights here")
    code, _, err = cxrd("model", "import", str(junk), "--format", "torchxrayvision")
    assert code == 1 and "junk.pth" in err and err.count("\n") == 1


def test_random_weights_evaluated_on_real_images_are_not_promoted(cxrd, checkpoints, chestxray14_set, tmp_path):
    """Random weights judged on 40 real labelled NIH images: chance, so --promote is refused with the
    number and the floor; the evidence stays in the manifest, and --force is audited with it."""
    data = chestxray14_set(tmp_path / "eval", 0, 40, "real")
    code, out, err = cxrd("model", "import", str(checkpoints["chexnet"]), "--format", "chexnet", "--version",
                          "rand", "--evaluate-on", str(data), "--n-boot", "200", "--promote")
    assert code == 1 and err.count("\n") == 1, err
    assert "imported as rand but not promoted" in err and "model.promotion." in err and "--force" in err
    assert "below the promotion floor" in out
    reg = Registry(tmp_path / "var" / "models")
    assert reg.current() is None
    evidence = reg.manifest("rand").metrics["promotion_evidence"]
    assert evidence["min_positives"] == 10 and evidence["n_boot"] == 200
    assert reg.manifest("rand").metrics["evaluated_on"] == "eval, all images"
    # the drift reference: score distributions and the validation images' characteristics (PNGs: no
    # manufacturer, which the live baseline then stands in for)
    reference = reg.manifest("rand").metrics["reference"]
    assert reference["n_images"] == 40 and reference["scores"]["Effusion"]["n"] == 40
    assert reference["inputs"]["rows"]["quantiles"][50] == 256 and reference["inputs"]["manufacturer"] is None
    code, _, err = cxrd("model", "promote", "rand")
    assert code == 1 and "rand not promoted" in err
    code, out, _ = cxrd("model", "list")
    assert out.splitlines()[1].startswith("  rand") and out.splitlines()[1].endswith("below")
    code, out, _ = cxrd("model", "promote", "rand", "--force")
    assert code == 0 and reg.current().version == "rand"
    events = audit_events(tmp_path)
    assert [e for e, _ in events] == ["model.imported", "model.rejected", "model.rejected", "model.promoted"]
    forced = events[-1][1]
    assert forced["forced"] and forced["overridden"] == forced["promotion"]["failures"]
    assert forced["promotion"]["floor"] == {"min_auroc_lower_bound": 0.5, "min_positives": 10}
    # usage errors: --force without --promote and an evaluation, or unevaluated promotion with an evaluation
    assert cxrd("model", "import", str(checkpoints["torchvision"]), "--format", "torchvision", "--force")[0] == 2
    code, _, err = cxrd("model", "import", str(checkpoints["torchvision"]), "--format", "torchvision", "--promote",
                        "--force")  # no evaluation: only --promote-without-evaluation makes it current
    assert code == 2 and "--promote-without-evaluation" in err and len(reg.list()) == 1
    assert cxrd("model", "import", str(checkpoints["torchvision"]), "--format", "torchvision",
                "--promote-without-evaluation", "--evaluate-on", str(data))[0] == 2
