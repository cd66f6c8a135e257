"""The monitoring job on a real migrated database and a real model registry: drift raised (gauge,
one audit event per crossing) when live traffic differs from the validation reference, not when it
does not; live performance against labels; the gauges on /metrics."""
from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.orm import sessionmaker

from cxrmodel import drift as D
from cxrmodel.labels import LABELS
from cxrmodel.network import build_model
from cxrmodel.registry import Registry
from daemon.ops.prometheus import StateCollector
from daemon.stages import monitoring
from daemon.stages.training_data import manual_states
from storage.models import AuditEvent, Instance, InputProfile, Label, MonitorState, Prediction

KEY = b"k" * 32
NOW = datetime(2026, 11, 29, 12, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Cfg:
    window_hours: float = 24.0
    min_images: int = 30
    baseline_images: int = 40
    performance_window_days: float = 30.0
    min_cases: int = 10


def _profile(rng: np.random.Generator, manufacturer: str = "ACME", photometric: str = "MONOCHROME2",
             shift: float = 0.0) -> dict:
    mean = float(rng.normal(0.5 + shift, 0.03))
    return {"manufacturer": manufacturer, "model_name": "DR-1", "pixel_spacing_mm": 0.143, "bits_stored": 12,
            "photometric": photometric, "rows": 2048, "columns": 2048, "view": "frontal",
            "intensity_mean": mean * 4095, "intensity_std": 800.0, "intensity_p05": 300.0, "intensity_p50": mean * 4095,
            "intensity_p95": 3800.0, "unit_mean": mean, "unit_std": 0.2, "unit_p05": 0.1, "unit_p50": mean,
            "unit_p95": 0.9}


def _scores(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    return np.clip(rng.beta(2, 5, size=(n, len(LABELS))) + shift, 0, 1)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    """A real model version whose manifest carries a validation reference (ACME, MONOCHROME2)."""
    rng = np.random.default_rng(0)
    reference = D.reference_summary(_scores(rng, 2000), LABELS, [0.5] * 14,
                                    [_profile(rng) for _ in range(500)], "test split")
    reg = Registry(tmp_path_factory.mktemp("models"))
    reg.add(build_model(seed=0), version="v1", promote=True, metrics={"reference": reference})
    return reg


def _seed(sessions, start: datetime, P: np.ndarray, profiles: list[dict], labels: list[str] | None = None,
          version: str = "v1") -> list[int]:
    ids = []
    with sessions() as s, s.begin():
        base = s.scalar(select(func.count()).select_from(Instance)) or 0
        for i, (row, prof) in enumerate(zip(P, profiles)):
            k = base + i
            inst = Instance(sop_instance_uid=f"2.25.{k}", study_uid=f"2.25.9{k}", series_uid=f"2.25.8{k}",
                            sop_class_uid="1.2.840.10008.5.1.4.1.1.1.1", state="predicted", view="frontal")
            s.add(inst)
            s.flush()
            at = start + timedelta(seconds=i)
            s.execute(insert(Prediction.__table__), [
                {"instance_id": inst.id, "model_version": version, "label": lab, "probability": float(p),
                 "threshold": 0.5, "positive": bool(p >= 0.5), "created_at": at, "mac": ""}
                for lab, p in zip(LABELS, row)])
            s.execute(insert(InputProfile.__table__), [{**prof, "instance_id": inst.id, "model_version": version,
                                                        "measured_at": at}])
            if labels is not None:
                s.add(Label(instance_id=inst.id, findings=labels[i], states=manual_states(labels[i])))
            ids.append(inst.id)
    return ids


def _events(sessions, event_type: str) -> list[dict]:
    with sessions() as s:
        return [json.loads(d) for d in s.scalars(select(AuditEvent.details).where(AuditEvent.event_type == event_type))]


def _run(sessions, registry, now: datetime) -> dict:
    return monitoring.run_once(sessions, sessions, registry, Cfg(), 0.5, KEY, now=now)


def test_drift_raised_once_for_other_equipment_and_not_for_more_of_the_reference(engine, registry, tmp_path):
    sessions = sessionmaker(engine)
    rng = np.random.default_rng(1)
    # more of the reference distribution: no drift, no audit event
    _seed(sessions, NOW - timedelta(hours=5), _scores(rng, 80), [_profile(rng) for _ in range(80)])
    out = _run(sessions, registry, NOW)
    assert out["model"] == "v1" and out["images"] == 80 and out["drift"] is False, out
    assert _events(sessions, "monitor.drift") == []
    # a day later: another manufacturer, MONOCHROME1, a different intensity distribution
    later = NOW + timedelta(days=1)
    _seed(sessions, later - timedelta(hours=5), _scores(rng, 80),
          [_profile(rng, "OTHERCO", "MONOCHROME1", shift=0.25) for _ in range(80)])
    out = _run(sessions, registry, later)
    assert out["drift"] is True
    assert {"manufacturer", "photometric", "unit_mean", "intensity_mean"} <= set(out["drifting"])
    assert not any(lab in out["drifting"] for lab in LABELS)  # the scores did not move
    events = _events(sessions, "monitor.drift")
    assert len(events) == 1 and events[0]["model"] == "v1"
    assert events[0]["inputs"]["manufacturer"]["new_categories"] == ["OTHERCO"]
    # the state persists: the next run audits nothing new
    _run(sessions, registry, later + timedelta(minutes=60))
    assert len(_events(sessions, "monitor.drift")) == 1
    # /metrics shows the gauges from the table
    collector = StateCollector(sessions, tmp_path, 0, lambda: None, cache_s=0)
    text = "\n".join(f"{m.name} {s.labels} {s.value}" for m in collector.collect() for s in m.samples)
    assert "cxrd_drift_alarm {'model': 'v1'} 1.0" in text
    assert "cxrd_input_drift {'characteristic': 'manufacturer', 'model': 'v1'}" in text
    # back to the reference equipment: the alarm clears, audited once
    back = later + timedelta(days=2)
    _seed(sessions, back - timedelta(hours=5), _scores(rng, 80), [_profile(rng) for _ in range(80)])
    assert _run(sessions, registry, back)["drift"] is False
    assert len(_events(sessions, "monitor.cleared")) == 1
    # gauges of a version no longer watched (no predictions left in any window) are dropped
    with sessions() as s:
        assert s.scalar(select(func.count()).select_from(MonitorState).where(MonitorState.key.like("%model=v1%")))
    _run(sessions, registry, back + timedelta(days=60))
    with sessions() as s:
        live = s.scalars(select(MonitorState.key)).all()
    assert "cxrd_drift_alarm{model=v1}" in live and not any(k.startswith("cxrd_live_auroc") for k in live)


def test_score_drift_is_detected_per_finding(engine, registry):
    sessions = sessionmaker(engine)
    rng = np.random.default_rng(2)
    P = _scores(rng, 60)
    P[:, LABELS.index("Effusion")] = np.clip(P[:, LABELS.index("Effusion")] + 0.4, 0, 1)
    _seed(sessions, NOW - timedelta(hours=2), P, [_profile(rng) for _ in range(60)])
    out = _run(sessions, registry, NOW)
    assert out["drifting"] == ["Effusion"]
    with sessions() as s:
        psi = s.scalar(select(MonitorState.value).where(MonitorState.key == 'cxrd_drift_psi{label=Effusion,model=v1}'))
    assert psi > D.PSI_DRIFT


def test_imported_model_without_reference_uses_its_first_live_images(engine, tmp_path):
    reg = Registry(tmp_path / "models")
    reg.add(build_model(seed=0), version="imp", promote=True)
    sessions = sessionmaker(engine)
    rng = np.random.default_rng(3)
    _seed(sessions, NOW - timedelta(hours=10), _scores(rng, 40), [_profile(rng) for _ in range(40)], version="imp")
    _seed(sessions, NOW - timedelta(hours=5), _scores(rng, 40), [_profile(rng) for _ in range(40)], version="imp")
    with sessions() as s:
        d = monitoring.drift(s, reg, "imp", NOW - timedelta(hours=24), NOW, baseline_n=40, min_images=30)
    assert d["n_images"] == 40  # the baseline's 40 images are not compared with themselves
    assert d["reference"]["validation"] is False and "first 40 images" in d["reference"]["baseline"]
    assert d["alarm"] is False and d["inputs"]["manufacturer"]["verdict"] == D.STABLE
    with sessions() as s:
        d = monitoring.drift(s, reg, "imp", NOW - timedelta(hours=24), NOW, baseline_n=100, min_images=30)
    assert d["labels"]["Effusion"]["verdict"] == D.NO_REFERENCE and "forming: 80 of 100" in d["reference"]["baseline"]


def test_live_performance_against_labels_and_the_floor_alarm(engine, registry):
    sessions = sessionmaker(engine)
    rng = np.random.default_rng(4)
    n = 60
    truth = rng.integers(0, 2, n)
    P = _scores(rng, n)
    e = LABELS.index("Effusion")
    P[:, e] = np.where(truth == 1, 0.2, 0.8) + rng.normal(0, 0.02, n)  # inverted: AUROC ~ 0
    labels = ["Effusion" if t else "No Finding" for t in truth]
    _seed(sessions, NOW - timedelta(days=2), P, [_profile(rng) for _ in range(n)], labels=labels)
    with sessions() as s:
        perf = monitoring.performance(s, "v1", NOW - timedelta(days=30), NOW, min_cases=10, floor=0.5, n_boot=200)
    eff = perf["labels"]["Effusion"]
    assert eff["positives"] == int(truth.sum()) and eff["auroc"] < 0.05 and perf["below_floor"] == ["Effusion"]
    assert perf["labels"]["Hernia"]["too_few"] and "too few positives (n=0)" in perf["labels"]["Hernia"]["reason"]
    _run(sessions, registry, NOW)
    events = _events(sessions, "monitor.performance_drop")
    assert len(events) == 1 and list(events[0]["labels"]) == ["Effusion"]


@pytest.mark.postgres
def test_drift_and_alarms_on_postgresql(fresh_pg_database, registry, tmp_path):
    from storage import db
    engine = db.engine_from_url(fresh_pg_database)
    db.migrate(engine)
    try:
        test_drift_raised_once_for_other_equipment_and_not_for_more_of_the_reference(engine, registry, tmp_path)
    finally:
        engine.dispose()
