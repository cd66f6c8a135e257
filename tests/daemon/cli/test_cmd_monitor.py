"""`cxrd monitor report`: the summary, the PNG plots (opened with Pillow), and usage errors."""
from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import numpy as np
from PIL import Image
from sqlalchemy import create_engine, insert
from sqlalchemy.orm import sessionmaker

from cxrmodel.labels import LABELS
from daemon.stages.training_data import manual_states
from storage.models import Instance, InputProfile, Label, Prediction


def _seed(state, n: int = 60) -> None:
    engine = create_engine(f"sqlite:///{state / 'cxrd.db'}")
    rng = np.random.default_rng(0)
    start = datetime.now(timezone.utc) - timedelta(hours=6)
    truth = rng.integers(0, 2, n)
    with sessionmaker(engine)() as s, s.begin():
        for i in range(n):
            inst = Instance(sop_instance_uid=f"2.25.{i}", study_uid=f"2.25.9{i}", series_uid=f"2.25.8{i}",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state="predicted", view="frontal")
            s.add(inst)
            s.flush()
            at = start + timedelta(minutes=i)
            scores = rng.beta(2, 5, len(LABELS))
            scores[LABELS.index("Effusion")] = 0.7 if truth[i] else 0.3  # a perfect Effusion reader
            s.execute(insert(Prediction.__table__), [
                {"instance_id": inst.id, "model_version": "v1", "label": lab, "probability": float(p),
                 "threshold": 0.5, "positive": bool(p >= 0.5), "created_at": at, "mac": ""}
                for lab, p in zip(LABELS, scores)])
            s.execute(insert(InputProfile.__table__), [{
                "instance_id": inst.id, "model_version": "v1", "measured_at": at, "manufacturer": "ACME",
                "model_name": "DR-1", "photometric": "MONOCHROME2", "rows": 2048, "columns": 2048, "view": "frontal",
                "bits_stored": 12, "unit_mean": float(rng.normal(0.5, 0.03))}])
            findings = "Effusion" if truth[i] else "No Finding"
            s.add(Label(instance_id=inst.id, findings=findings, states=manual_states(findings)))
    engine.dispose()


def test_report_prints_performance_and_drift_and_writes_pngs(cli_state, cli_captured, tmp_path):
    _seed(cli_state)
    code, out, err = cli_captured("monitor", "report", "--since", "yesterday", "--until", "now", "--out",
                                  str(tmp_path / "plots"), "--n-boot", "100")
    assert code == 0, err
    assert "model v1: 60 images predicted, 60 with ground truth" in out
    effusion = next(line for line in out.splitlines() if line.strip().startswith("Effusion") and "1.000" in line)
    assert "1.00 (" in effusion  # sensitivity and specificity 1 with their Wilson intervals
    assert "too few positives (n=0)" in out  # the other findings have no positive label
    assert "PSI over reference deciles" in out and "> 0.25 drift" in out
    pngs = sorted((tmp_path / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["v1-inputs.png", "v1-performance.png", "v1-scores.png"]
    for p in pngs:
        with Image.open(p) as img:
            img.verify()
            assert img.format == "PNG" and img.size[0] > 500
    code, out, _ = cli_captured("monitor", "report", "--format", "json", "--n-boot", "0")
    rep = json.loads(out)
    eff = rep["models"][0]["performance"]["labels"]["Effusion"]
    assert eff["auroc"] == 1.0 and eff["sensitivity"] == 1.0 and eff["positives"] + eff["negatives"] == 60
    # no validation reference and fewer live images than monitor.baseline_images: said, no verdict
    drift = rep["models"][0]["drift"]
    assert "forming: 60 of 200" in drift["reference"]["baseline"] and drift["alarm"] is False


def test_usage_errors_exit_2_with_one_line(cli_captured, tmp_path):
    code, _, err = cli_captured("monitor", "report", "--since", "2026-11-02", "--until", "2026-11-01")
    assert code == 2 and "--since" in err and "must be before --until" in err and err.count("\n") == 1
    code, _, err = cli_captured("monitor", "report", "--since", "last tuesday")
    assert code == 2 and "--since" in err and err.count("\n") == 1
    f = tmp_path / "file"
    f.write_text("x")
    code, _, err = cli_captured("monitor", "report", "--out", str(f))
    assert code == 2 and "not a directory" in err


def test_empty_range_says_so(cli_captured):
    code, out, _ = cli_captured("monitor", "report", "--since", "2020-01-01", "--until", "2020-01-02")
    assert code == 0 and "no predictions in this range" in out
