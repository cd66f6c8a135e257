"""Monitoring data for the console's model watch tests (in-process and browser): a model with a
validation reference, live images from other equipment with one finding's scores moved, half of
them labelled, and one real pass of the monitoring job over them."""
from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import insert

from cxrmodel import drift as D
from cxrmodel.labels import LABELS
from cxrmodel.network import build_model
from cxrmodel.registry import Registry
from daemon.stages import monitoring
from daemon.stages.training_data import manual_states
from storage.models import InputProfile, Instance, Label, Prediction

EFFUSION = LABELS.index("Effusion")


def _profile(rng: np.random.Generator, manufacturer: str = "ACME") -> dict:
    mean = float(rng.normal(0.5, 0.03))
    return {"manufacturer": manufacturer, "model_name": "DR-1", "pixel_spacing_mm": 0.143, "bits_stored": 12,
            "photometric": "MONOCHROME2", "rows": 2048, "columns": 2048, "view": "frontal",
            "intensity_mean": mean * 4095, "intensity_std": 800.0, "intensity_p05": 300.0,
            "intensity_p50": mean * 4095, "intensity_p95": 3800.0, "unit_mean": mean, "unit_std": 0.2,
            "unit_p05": 0.1, "unit_p50": mean, "unit_p95": 0.9}


def watched(rt, now: datetime) -> Registry:  # noqa: ANN001
    """Model v1 with a validation reference (ACME); 80 live images from OTHERCO with Effusion scores
    shifted up, half of them labelled Effusion (separable), the rest of the findings never positive."""
    rng = np.random.default_rng(0)
    ref_scores = rng.beta(2, 5, size=(2000, len(LABELS)))
    reference = D.reference_summary(ref_scores, LABELS, [0.5] * 14, [_profile(rng) for _ in range(500)], "test split")
    reg = Registry(rt.models_dir)
    reg.add(build_model(seed=0), version="v1", promote=True, metrics={"reference": reference})
    P = rng.beta(2, 5, size=(80, len(LABELS)))
    with rt.sessions() as s, s.begin():
        for i, row in enumerate(P):
            positive = i % 2 == 0
            row[EFFUSION] = 0.55 + 0.4 * rng.random() if positive else 0.3 + 0.4 * rng.random()
            inst = Instance(sop_instance_uid=f"2.25.{10_000 + i}", study_uid=f"2.25.{20_000 + i}", series_uid="2.25.3",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state="reported", view="frontal")
            s.add(inst)
            s.flush()
            at = now - timedelta(hours=5) + timedelta(seconds=i)
            s.execute(insert(Prediction.__table__), [
                {"instance_id": inst.id, "model_version": "v1", "label": lab, "probability": float(p), "threshold": 0.5,
                 "positive": bool(p >= 0.5), "created_at": at, "mac": ""} for lab, p in zip(LABELS, row)])
            s.execute(insert(InputProfile.__table__), [{**_profile(rng, "OTHERCO"), "instance_id": inst.id,
                                                        "model_version": "v1", "measured_at": at}])
            findings = "Effusion" if positive else "No Finding"
            s.add(Label(instance_id=inst.id, findings=findings, states=manual_states(findings)))
    return reg


def monitoring_pass(rt, now: datetime) -> dict:  # noqa: ANN001
    return monitoring.run_once(rt.read_sessions, rt.sessions, rt.registry, rt.settings.monitor,
                               rt.settings.model.promotion.min_auroc_lower_bound, rt.keys.audit_key, now=now)
