"""A shadow candidate on a live push: `cxrd serve` receives twelve real films by C-STORE (storescu),
the current model's report goes to a real Orthanc and nothing goes for the shadow; the shadow's
probabilities are stored apart; with labels imported (`cxrd labels import`) the live comparison appears
in `cxrd retrain --list` and `cxrd model report`, and `cxrd model promote` refuses the candidate that
the live labels show clearly worse, unless forced (audited)."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.uid import generate_uid
from sqlalchemy import select

from conftest import state_rows, storescu
from cxrmodel.labels import LABELS
from cxrmodel.network import build_model
from cxrmodel.registry import Registry
from storage.models import AuditEvent, Instance, Prediction, Result, ShadowPrediction
from test_results import results_env, wait_for

TEMPLATE = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
MARKERS = {"PatientID": "SHDWPID5150", "PatientName": "OSPREY^HALCYON"}
N = 8
# Clears the promotion floor (min_positives 3 here): the refusal below is the live comparison's alone.
PASSING = {"evaluated_on": "test", "n_images": 100, "mean_auroc": 0.8, "mean_auroc_ci95": [0.7, 0.9],
           "auroc": {"Effusion": 0.8}, "auroc_ci95": {"Effusion": [0.7, 0.9]}, "positives": {"Effusion": 30},
           "promotion_evidence": {"min_positives": 3, "findings": ["Effusion"], "mean_auroc": 0.8,
                                  "mean_auroc_ci95": [0.7, 0.9], "n_boot": 100}}


def studies_from_nih(shared_data: Path, out: Path) -> list[Path]:
    """Twelve different real films (NIH PNGs) as DICOM, one study each, with planted identifiers."""
    out.mkdir(parents=True)
    template = pydicom.dcmread(shared_data / TEMPLATE)
    paths = []
    for i, png in enumerate(sorted((shared_data / "nih" / "images").glob("*.png"))[:N]):
        ds = template.copy()
        pixels = np.asarray(Image.open(png).convert("L"), dtype=np.uint8)
        ds.Rows, ds.Columns = pixels.shape
        ds.PixelData = pixels.tobytes()
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid(), generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        for keyword, value in MARKERS.items():
            setattr(ds, keyword, value)
        paths.append(out / f"study{i:02d}.dcm")
        ds.save_as(paths[-1], enforce_file_format=True)
    return paths


@pytest.mark.slow
def test_shadow_runs_on_a_live_push_sends_nothing_and_its_comparison_blocks_promotion(
        orthanc, daemon_factory, shared_data, tmp_path):
    d = daemon_factory(results_env(orthanc, CXRD_MODEL__PROMOTION__MIN_POSITIVES="3"))
    d.state_dir.mkdir(parents=True)
    d.cli("init", check=True)
    reg = Registry(d.state_dir / "models")
    reg.add(build_model(seed=0), version="cur", promote=True)
    reg.add(build_model(seed=1), version="cand", metrics=PASSING)
    chosen = d.cli("model", "shadow", "cand")
    assert chosen.returncode == 0 and "nothing it says is sent" in chosen.stdout, chosen.stderr
    d.start()
    # loaded in a thread of its own, so that the current model never waits for it: images that came
    # before it was ready would simply have no shadow row
    wait_for(lambda: "event=shadow.loaded" in d.log_text() or "event=shadow.disabled" in d.log_text(), timeout=120)
    assert "event=shadow.disabled" not in d.log_text(), d.log_text()[-3000:]

    files = studies_from_nih(shared_data, tmp_path / "in")
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * N

    def srs_in_orthanc() -> list[dict]:
        tags = [orthanc.get(f"/instances/{i}/simplified-tags") for i in orthanc.get("/instances")]
        return tags if sum(t.get("Modality") == "SR" for t in tags) >= N else []
    tags = wait_for(srs_in_orthanc, timeout=180)
    scored = select(ShadowPrediction.instance_id, ShadowPrediction.model_version, ShadowPrediction.current_version,
                    ShadowPrediction.probabilities)
    shadow = wait_for(lambda: rows if len(rows := state_rows(d.state_dir, scored)) >= N else [])
    # Orthanc holds exactly one report per study, every one of them from the current model
    assert sorted(t.get("Modality") for t in tags) == ["SR"] * N
    assert {t["SoftwareVersions"] for t in tags} == {"cur"}
    assert {v for (v,) in state_rows(d.state_dir, select(Result.model_version))} == {"cur"}
    assert {v for (v,) in state_rows(d.state_dir, select(Prediction.model_version))} == {"cur"}
    # the shadow's probabilities, one row per image, apart from the predictions
    assert len(shadow) == N and {(r[1], r[2]) for r in shadow} == {("cand", "cur")}

    # Ground truth the current model ranks right and the candidate ranks wrong, per finding: the
    # images where the current model's rank most exceeds the candidate's are the positives.
    current: dict[str, dict[str, float]] = {}
    for uid, label, p in state_rows(d.state_dir, select(Instance.sop_instance_uid, Prediction.label,
                                                     Prediction.probability)
                                 .join(Prediction, Prediction.instance_id == Instance.id)):
        current.setdefault(uid, {})[label] = p
    candidate = {uid: json.loads(text) for uid, text in state_rows(
        d.state_dir, select(Instance.sop_instance_uid, ShadowPrediction.probabilities)
        .join(ShadowPrediction, ShadowPrediction.instance_id == Instance.id))}
    uids = sorted(current)
    findings: dict[str, list[str]] = {u: [] for u in uids}
    for label in LABELS:
        rank_c = np.argsort(np.argsort([current[u][label] for u in uids]))
        rank_s = np.argsort(np.argsort([candidate[u][label] for u in uids]))
        for k in np.argsort(rank_s - rank_c)[: N // 2]:
            findings[uids[k]].append(label)
    labels_csv = tmp_path / "labels.csv"
    with open(labels_csv, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Finding Labels"])
        w.writerows([u, "|".join(f) or "No Finding"] for u, f in findings.items())
    assert f"{N} imported" in d.cli("labels", "import", str(labels_csv), check=True).stdout

    listing = d.cli("retrain", "--list", check=True).stdout
    assert "shadow now: cand" in listing and "live vs cur: worse" in listing and f"{N} live labeled studies" in listing
    report = d.cli("model", "report", "cand", check=True).stdout
    assert "Live shadow comparison: candidate cand vs current cur" in report and "worse: mean AUROC" in report
    assert "Pneumonia" in report

    refused = d.cli("model", "promote", "cand")
    assert refused.returncode == 1 and "live shadow comparison with cur: worse" in refused.stderr
    assert refused.stderr.count("\n") == 1 and "Traceback" not in refused.stderr
    forced = d.cli("model", "promote", "cand", "--force", check=True)
    assert "promoted by --force, overriding: live shadow comparison" in forced.stdout
    trail = state_rows(d.state_dir, select(AuditEvent.event_type, AuditEvent.details))
    events = [(t, json.loads(det)) for t, det in trail if t.startswith("model.")]
    assert [t for t, _ in events] == ["model.shadow", "model.rejected", "model.promoted"]
    assert events[2][1]["forced"] is True and events[2][1]["live_shadow"]["verdict"] == "worse"
    assert reg.current_version() == "cand" and reg.shadow()["version"] is None

    # nothing identifying in the daemon's log or in the shadow's rows
    text = d.log_text() + json.dumps([list(r) for r in shadow])
    for marker in MARKERS.values():
        assert marker not in text
