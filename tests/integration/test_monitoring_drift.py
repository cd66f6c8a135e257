"""Drift is detected when it happens and not when it does not, through a running `cxrd serve`.

Real NIH pixels are pushed with dcmtk storescu and classified by the real worker, which records each
image's input characteristics. The model was imported without evaluation, so its reference is its
first `monitor.baseline_images` live images. More of the same images raise nothing; images from
another manufacturer, with an inverted photometric interpretation and a different intensity
distribution (the same real pixels, rescaled) raise the drift gauge on /metrics and one
`monitor.drift` audit event, which names the characteristics and carries no identifier.
"""
from __future__ import annotations

import json
from datetime import datetime, timezone

import numpy as np
import pydicom
from sqlalchemy import func, select

from conftest import copy_with_new_uids, state_rows, storescu, wait_until
from cxrmodel.network import build_model
from cxrmodel.registry import Registry
from storage.models import AuditEvent, Instance, InputProfile, MonitorState
from test_operations import http_get

SRC = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"
ENV = {"CXRD_MODEL__BACKEND": "fp32", "CXRD_MODEL__MAX_BATCH_WAIT_MS": "10",
       "CXRD_MONITOR__BASELINE_IMAGES": "10", "CXRD_MONITOR__MIN_IMAGES": "10"}
MARKERS = {"StationName": "ZZSTATION7", "InstitutionName": "ZZINSTITUTE7", "DeviceSerialNumber": "ZZSERIAL7"}


def push(d, files) -> None:  # noqa: ANN001
    before = state_rows(d.state_dir, select(func.count()).select_from(InputProfile))[0][0]
    assert storescu(d.dicom_port, *files)[1] == ["Success"] * len(files)
    wait_until(lambda: state_rows(d.state_dir, select(func.count()).select_from(InputProfile))[0][0] == before + len(files))


def monitor_pass(d) -> dict[str, float]:  # noqa: ANN001
    """Restart the daemon (the scheduler leader runs the monitoring job at election) and wait for it."""
    d.stop()
    started = datetime.now(timezone.utc)
    d.start()
    key = select(MonitorState.updated_at).where(MonitorState.metric == "cxrd_drift_alarm")
    wait_until(lambda: any(at.replace(tzinfo=timezone.utc) >= started for (at,) in state_rows(d.state_dir, key)))
    return {k: v for k, v in state_rows(d.state_dir, select(MonitorState.key, MonitorState.value))}


def drifted_copies(src, out_dir, n: int):  # noqa: ANN001, ANN201
    """Another manufacturer's detector: same real pixels rescaled into a narrower, brighter range,
    stored as MONOCHROME1 (the pixels not inverted, so the picture the model sees is inverted)."""
    files = copy_with_new_uids(src, out_dir, n, markers={**MARKERS, "Manufacturer": "OTHERCO",
                                                         "ManufacturerModelName": "XR-9"})
    for f in files:
        ds = pydicom.dcmread(f)
        px = ds.pixel_array.astype(np.uint16)
        ds.PixelData = (px // 2 + 100).astype(np.uint8).tobytes()
        ds.PhotometricInterpretation = "MONOCHROME1"
        ds.save_as(f, enforce_file_format=True)
    return files


def test_drift_raised_for_other_equipment_not_for_more_of_the_same(daemon_factory, shared_data, tmp_path):
    d = daemon_factory(ENV)
    d.state_dir.mkdir(parents=True)
    d.cli("init", check=True)
    version = Registry(d.state_dir / "models").add(build_model(seed=0), promote=True)
    d.start()
    same = {**MARKERS, "Manufacturer": "ACME", "ManufacturerModelName": "DR-1"}
    push(d, copy_with_new_uids(shared_data / SRC, tmp_path / "baseline", 10, markers=same, prefix="b"))
    push(d, copy_with_new_uids(shared_data / SRC, tmp_path / "same", 10, markers=same, prefix="s"))

    gauges = monitor_pass(d)
    assert gauges[f"cxrd_drift_alarm{{model={version}}}"] == 0.0
    assert gauges[f"cxrd_input_drift{{characteristic=manufacturer,model={version}}}"] == 0.0
    events = state_rows(d.state_dir, select(AuditEvent.details).where(AuditEvent.event_type == "monitor.drift"))
    assert events == []

    push(d, drifted_copies(shared_data / SRC, tmp_path / "drift", 10))
    gauges = monitor_pass(d)
    assert gauges[f"cxrd_drift_alarm{{model={version}}}"] == 1.0
    assert gauges[f"cxrd_input_drift{{characteristic=manufacturer,model={version}}}"] > 0.25
    events = [json.loads(e) for (e,) in state_rows(d.state_dir, select(AuditEvent.details)
                                              .where(AuditEvent.event_type == "monitor.drift"))]
    assert len(events) == 1 and events[0]["model"] == version  # (once per crossing: tests/daemon/stages)
    assert {"manufacturer", "model_name", "photometric", "intensity_mean", "unit_mean"} <= set(events[0]["inputs"])
    assert events[0]["inputs"]["manufacturer"]["new_categories"] == ["OTHERCO"]
    code, metrics = http_get(d.http_port, "/metrics")
    assert code == 200 and f'cxrd_drift_alarm{{model="{version}"}} 1.0' in metrics
    assert f'cxrd_input_drift{{characteristic="photometric",model="{version}"}}' in metrics

    # what was recorded per image: equipment and geometry, never the planted identifying values
    profiles = state_rows(d.state_dir, select(InputProfile))
    assert {p.manufacturer for p in profiles} == {"ACME", "OTHERCO"} and {p.view for p in profiles} == {"unknown"}  # no view attribute: assumed frontal
    assert {p.photometric for p in profiles} == {"MONOCHROME2", "MONOCHROME1"} and {p.rows for p in profiles} == {1024}
    dump = repr(profiles) + repr(state_rows(d.state_dir, select(AuditEvent.details))) + d.log_text()
    assert not any(m in dump for m in MARKERS.values())
    assert state_rows(d.state_dir, select(func.count()).select_from(Instance))[0][0] == 30
