"""Monitoring: drift of recent traffic against the model's reference, and live performance against
ground truth, per model version; the scheduled job that keeps the gauges and audits alarms.

The reference of a model version is what it was validated on: the score quantiles and input
characteristics written into its manifest when it was evaluated (`metrics.reference`,
`cxrmodel.drift.reference_summary`). What that reference lacks (an imported model never evaluated;
a characteristic PNG validation images do not state, such as the manufacturer) is taken from the
version's first `monitor.baseline_images` live images after promotion, and the report says which
source each comparison used. Baseline images are never part of the window they are compared with.

The job (`scheduled`, run by the scheduler leader every `monitor.interval_minutes`) computes in a read
session and then writes gauges, in one short transaction, to
`monitor_state`, which every daemon's /metrics reads, and appends `monitor.drift` /
`monitor.performance_drop` when an alarm starts and `monitor.cleared` when it ends: once per
crossing, never on every run while it lasts. Audit details carry finding names, characteristic
names and statistics only.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from cxrmodel import drift as D
from cxrmodel import live_metrics as LM
from cxrmodel.labels import LABELS
from cxrmodel.shadow_compare import truth_matrix
from daemon.ops.logs import event
from storage import audit
from storage import monitoring as SM
from storage.ground_truth import ground_truth

log = logging.getLogger("cxrd.monitor")

ACTOR = "cxrd:monitor"
PERIODS = 8  # performance-over-time points in a report


# ------------------------------------------------------------------ ground truth

#: The drift thresholds a report or the console states beside the numbers (`cxrmodel.drift`'s own).
THRESHOLDS = {"psi_moderate": D.PSI_MODERATE, "psi_drift": D.PSI_DRIFT, "ks_alpha": D.KS_ALPHA,
              "ks_min_d": D.KS_MIN_D, "new_category_share": D.NEW_SHARE}


# ------------------------------------------------------------------ reference

def validation_reference(registry: Any, version: str) -> Mapping[str, Any] | None:
    """The reference recorded in the version's manifest at evaluation, or None."""
    try:
        ref = registry.manifest(version).metrics.get("reference")
    except Exception:  # noqa: BLE001 - a version removed from disk has no reference; monitoring goes on
        return None
    return ref if isinstance(ref, Mapping) else None


def reference_for(session: Session, registry: Any, version: str, baseline_n: int) -> dict[str, Any]:
    """Scores and input references for `version`, each with the source it came from (module docstring)."""
    validated = validation_reference(registry, version) or {}
    base = SM.first_scores(session, version, LABELS, baseline_n)
    complete = len(base.instance_ids) >= baseline_n
    base_profiles = list(SM.profiles_of(session, base.instance_ids).values()) if complete else []
    base_source = (f"live baseline: first {baseline_n} images after promotion" if complete else
                   f"live baseline forming: {len(base.instance_ids)} of {baseline_n} images")
    val_source = f"validation: {validated.get('source', 'evaluation')}, {validated.get('n_images', '?')} images"
    scores: dict[str, Any] = {}
    sources: dict[str, str] = {}
    v_scores = validated.get("scores") or {}
    base_scores = D.score_reference(base.P, LABELS, base.thresholds) if complete else {}
    for label in LABELS:
        if v_scores.get(label):
            scores[label], sources[f"score:{label}"] = v_scores[label], val_source
        else:
            scores[label], sources[f"score:{label}"] = base_scores.get(label), base_source
    v_inputs = validated.get("inputs") or {}
    b_inputs = D.input_reference(base_profiles) if complete else {}
    inputs: dict[str, Any] = {}
    for key in D.NUMERIC_INPUTS + D.CATEGORICAL_INPUTS:
        if v_inputs.get(key):
            inputs[key], sources[f"input:{key}"] = v_inputs[key], val_source
        else:
            inputs[key], sources[f"input:{key}"] = b_inputs.get(key), base_source
    uses_baseline = any(s == base_source for s in sources.values())
    return {"scores": scores, "inputs": inputs, "sources": sources,
            "baseline_ids": set(base.instance_ids) if uses_baseline else set(),
            "validation": bool(validated), "baseline": base_source}


# ------------------------------------------------------------------ drift

def drift(session: Session, registry: Any, version: str, since: datetime, until: datetime, *,
          baseline_n: int, min_images: int, scores: SM.Scores | None = None) -> dict[str, Any]:
    """Scores and input characteristics of `version`'s images analysed in [since, until) against its
    reference; `alarm` when any comparison's verdict is drift. `scores`: that window's, when the caller
    read them already."""
    ref = reference_for(session, registry, version, baseline_n)
    live = SM.scores_between(session, version, LABELS, since, until) if scores is None else scores
    keep = [i for i, iid in enumerate(live.instance_ids) if iid not in ref["baseline_ids"]]
    P = live.P[keep]
    ids = [live.instance_ids[i] for i in keep]
    profiles = list(SM.profiles_of(session, ids).values())
    labels = {}
    for k, label in enumerate(LABELS):
        r = ref["scores"][label]
        live_q = D.numeric_reference(P[:, k])
        labels[label] = {**D.compare_numeric(r, P[:, k], min_live=min_images),
                         "positive_rate": D.compare_positive_rate(r, P[:, k], live.thresholds[k]),
                         "reference_source": ref["sources"][f"score:{label}"],
                         "reference_quantiles": r["quantiles"] if r else None,
                         "live_quantiles": live_q["quantiles"] if live_q else None}
    inputs = {}
    for key in D.NUMERIC_INPUTS:
        inputs[key] = {**D.compare_numeric(ref["inputs"][key], [p.get(key) for p in profiles], min_live=min_images),
                       "reference_source": ref["sources"][f"input:{key}"]}
    for key in D.CATEGORICAL_INPUTS:
        inputs[key] = {**D.compare_categorical(ref["inputs"][key], [p.get(key) for p in profiles],
                                               min_live=min_images),
                       "reference_source": ref["sources"][f"input:{key}"]}
    drifting_labels = [lab for lab, c in labels.items() if c["verdict"] == D.DRIFT]
    drifting_inputs = [key for key, c in inputs.items() if c["verdict"] == D.DRIFT]
    return {"model": version, "n_images": len(ids), "n_profiles": len(profiles), "min_images": min_images,
            "too_few": len(ids) < min_images, "reference": {"validation": ref["validation"],
                                                             "baseline": ref["baseline"]},
            "labels": labels, "inputs": inputs, "drifting_labels": drifting_labels,
            "drifting_inputs": drifting_inputs, "alarm": bool(drifting_labels or drifting_inputs)}


# ------------------------------------------------------------------ live performance

def _truth(scores: SM.Scores, truth: Mapping[int, Mapping[str, int | None]]) -> tuple[list[int], np.ndarray]:
    rows = [i for i, iid in enumerate(scores.instance_ids) if iid in truth]
    return rows, truth_matrix([truth[scores.instance_ids[i]] for i in rows], LABELS)


def performance(session: Session, version: str, since: datetime, until: datetime, *, min_cases: int,
                floor: float, n_boot: int = 1000, periods: int = PERIODS,
                truth: Mapping[int, Mapping[str, int | None]] | None = None,
                scores: SM.Scores | None = None) -> dict[str, Any]:
    """Live numbers of `version` on its images analysed in [since, until) that have ground truth, and
    the same split into `periods` equal periods (AUROC only where a period has enough cases).

    `alarm` when a finding with enough cases has a live AUROC whose 95% CI lies entirely below
    `floor` (the promotion floor, model.promotion.min_auroc_lower_bound)."""
    truth = ground_truth(session) if truth is None else truth
    scores = SM.scores_between(session, version, LABELS, since, until) if scores is None else scores
    rows, Y = _truth(scores, truth)
    P = scores.P[rows]
    out = LM.live_performance(Y, P, LABELS, scores.thresholds, min_cases=min_cases, n_boot=n_boot)
    out.update(model=version, n_predicted=len(scores.instance_ids), floor=floor)
    below = [lab for lab, v in out["labels"].items()
             if not v["too_few"] and v.get("auroc_ci95") and v["auroc_ci95"][1] < floor]
    out["below_floor"], out["alarm"] = below, bool(below)
    out["over_time"] = series = []
    if not periods:
        return out
    step = (until - since) / periods
    created = [scores.created_at[i] for i in rows]
    for j in range(periods):
        lo, hi = since + step * j, since + step * (j + 1)
        m = np.array([lo <= c < hi for c in created], dtype=bool)
        point = LM.live_performance(Y[m], P[m], LABELS, scores.thresholds, min_cases=min_cases, n_boot=0) \
            if m.any() else None
        series.append({"start": lo.isoformat(), "end": hi.isoformat(), "n": int(m.sum()),
                       "auroc": {lab: (point["labels"][lab]["auroc"] if point else None) for lab in LABELS}})
    return out


# ------------------------------------------------------------------ report and scheduled job

def report(session: Session, registry: Any, since: datetime, until: datetime, *, baseline_n: int,
           min_images: int, min_cases: int, floor: float, n_boot: int = 1000) -> dict[str, Any]:
    """Drift and live performance of every model version with predictions in [since, until)."""
    truth = ground_truth(session)
    models = []
    for version in SM.versions_between(session, since, until):
        scores = SM.scores_between(session, version, LABELS, since, until)  # one read for both
        models.append({"model": version,
                       "drift": drift(session, registry, version, since, until, baseline_n=baseline_n,
                                      min_images=min_images, scores=scores),
                       "performance": performance(session, version, since, until, min_cases=min_cases,
                                                  floor=floor, n_boot=n_boot, truth=truth, scores=scores)})
    return {"since": since.isoformat(), "until": until.isoformat(), "models": models,
            "thresholds": {**THRESHOLDS, "psi_epsilon": D.EPSILON, "psi_bins": "reference deciles",
                           "min_images": min_images, "min_cases": min_cases, "performance_floor": floor}}


def assess(session: Session, registry: Any, monitor: Any, floor: float,
           now: datetime | None = None) -> dict[str, Any]:
    """One monitoring pass's numbers, read only: drift of the current model over the last
    `monitor.window_hours`, live performance of every version over `monitor.performance_window_days`.

    Kept apart from `record` so the bootstrap runs in a read session: on SQLite a write transaction
    holds the database's one write lock from its start, and ingest must never wait on statistics."""
    now = now or datetime.now(timezone.utc)
    try:
        current = registry.current_version()
    except Exception:  # noqa: BLE001 - no model yet: nothing to watch
        return {"model": None, "now": now, "window_hours": monitor.window_hours,
                "window_days": monitor.performance_window_days}
    d = drift(session, registry, current, now - timedelta(hours=monitor.window_hours), now,
              baseline_n=monitor.baseline_images, min_images=monitor.min_images)
    perf_since = now - timedelta(days=monitor.performance_window_days)
    truth = ground_truth(session)
    perf = {version: performance(session, version, perf_since, now, min_cases=monitor.min_cases, floor=floor,
                                 n_boot=1000, periods=0, truth=truth)  # the pass keeps no series
            for version in SM.versions_between(session, perf_since, now)}
    return {"model": current, "now": now, "drift": d, "performance": perf, "floor": floor,
            "window_hours": monitor.window_hours, "window_days": monitor.performance_window_days}


def record(session: Session, a: Mapping[str, Any], audit_key: bytes, host: str = "") -> dict[str, Any]:
    """Write an assessment's gauges in the caller's (short) transaction; audit alarms that start or end."""
    current, now = a["model"], a["now"]
    SM.set_summary(session, summary(a), now)
    if current is None:
        SM.drop_stale(session, now)
        return {"model": None}
    d = a["drift"]
    for label, c in d["labels"].items():
        SM.set_gauge(session, "cxrd_drift_psi", {"label": label, "model": current}, c.get("psi"),
                     c["verdict"] == D.DRIFT, now)
    for key, c in d["inputs"].items():
        SM.set_gauge(session, "cxrd_input_drift", {"characteristic": key, "model": current}, c.get("psi"),
                     c["verdict"] == D.DRIFT, now)
    change = SM.set_gauge(session, "cxrd_drift_alarm", {"model": current}, 1.0 if d["alarm"] else 0.0,
                          d["alarm"], now)
    _audit_change(session, audit_key, host, change, "monitor.drift", current, {
        "labels": {lab: _brief(d["labels"][lab]) for lab in d["drifting_labels"]},
        "inputs": {key: _brief(d["inputs"][key]) for key in d["drifting_inputs"]},
        "images": d["n_images"], "window_hours": a["window_hours"]})
    alarms = {}
    for version, p in a["performance"].items():
        for label, v in p["labels"].items():
            SM.set_gauge(session, "cxrd_live_auroc", {"label": label, "model": version}, v.get("auroc"),
                         label in p["below_floor"], now)
        change = SM.set_gauge(session, "cxrd_performance_alarm", {"model": version}, 1.0 if p["alarm"] else 0.0,
                              p["alarm"], now)
        _audit_change(session, audit_key, host, change, "monitor.performance_drop", version, {
            "labels": {lab: {"auroc": p["labels"][lab]["auroc"], "auroc_ci95": p["labels"][lab]["auroc_ci95"],
                             "positives": p["labels"][lab]["positives"], "negatives": p["labels"][lab]["negatives"]}
                       for lab in p["below_floor"]},
            "floor": a["floor"], "window_days": a["window_days"]})
        alarms[version] = p["alarm"]
    SM.drop_stale(session, now)
    return {"model": current, "drift": d["alarm"], "drifting": d["drifting_labels"] + d["drifting_inputs"],
            "images": d["n_images"], "performance_alarms": alarms}


def run_once(read: sessionmaker[Session], write: sessionmaker[Session], registry: Any, monitor: Any, floor: float,
             audit_key: bytes, host: str = "", now: datetime | None = None) -> dict[str, Any]:
    """One monitoring pass: `assess` in a read session, then `record` in a short write transaction."""
    with read() as session:
        a = assess(session, registry, monitor, floor, now)
    with write() as session, session.begin():
        return record(session, a, audit_key, host)


_SCORE_KEYS = ("verdict", "n_live", "n_reference", "psi", "psi_noise_floor", "ks_d", "ks_p", "reference_median",
               "live_median", "positive_rate", "reference_source")
_INPUT_KEYS = _SCORE_KEYS + ("kind", "new_share", "new_categories")
_PERF_KEYS = ("n", "positives", "negatives", "too_few", "reason", "threshold", "auroc", "auroc_ci95", "sensitivity",
              "sensitivity_ci95", "specificity", "specificity_ci95", "ece")
MAX_CATEGORIES = 20  # categories per characteristic kept in the summary (the largest)


def _quantiles(q: Any) -> list[float] | None:
    """Every 5th percentile of a 101-quantile reference (21 points): enough to draw a distribution."""
    if not isinstance(q, (list, tuple)) or len(q) != 101:
        return None
    return [round(float(q[i]), 5) for i in range(0, 101, 5)]


def _top(counts: Any) -> dict[str, int] | None:
    if not isinstance(counts, Mapping):
        return None
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:MAX_CATEGORIES])


def summary(a: Mapping[str, Any]) -> dict[str, Any]:
    """What a page shows of one pass (`assess`), small and JSON-able: per finding the drift
    statistics with their verdict and the score distribution against the reference (every 5th
    percentile), per characteristic the same, and per version the live performance (no bootstrap
    samples, no reliability bins). Finding, equipment and version names, and numbers, only."""
    now = a["now"]
    out: dict[str, Any] = {"model": a["model"], "at": now.isoformat(), "window_hours": a.get("window_hours"),
                           "window_days": a.get("window_days"), "floor": a.get("floor"),
                           "thresholds": dict(THRESHOLDS)}
    if a["model"] is None:
        return out
    d = a["drift"]
    out["drift"] = {
        "since": (now - timedelta(hours=a["window_hours"])).isoformat(), "until": now.isoformat(),
        "n_images": d["n_images"], "n_profiles": d["n_profiles"], "min_images": d["min_images"],
        "too_few": d["too_few"], "reference": d["reference"], "alarm": d["alarm"],
        "drifting_labels": d["drifting_labels"], "drifting_inputs": d["drifting_inputs"],
        "labels": {lab: {**{k: c.get(k) for k in _SCORE_KEYS}, "reference_quantiles": _quantiles(c.get("reference_quantiles")),
                         "live_quantiles": _quantiles(c.get("live_quantiles"))}
                   for lab, c in d["labels"].items()},
        "inputs": {key: {**{k: c.get(k) for k in _INPUT_KEYS}, "reference_counts": _top(c.get("reference_counts")),
                         "live_counts": _top(c.get("live_counts"))}
                   for key, c in d["inputs"].items()}}
    out["performance"] = {
        version: {"since": (now - timedelta(days=a["window_days"])).isoformat(), "until": now.isoformat(),
                  "n_images": p.get("n_images"), "n_predicted": p.get("n_predicted"), "min_cases": p.get("min_cases"),
                  "alarm": p["alarm"], "below_floor": p["below_floor"],
                  "labels": {lab: {k: v.get(k) for k in _PERF_KEYS} for lab, v in p["labels"].items()}}
        for version, p in a["performance"].items()}
    return out


def _brief(c: Mapping[str, Any]) -> dict[str, Any]:
    return {k: c[k] for k in ("psi", "ks_d", "ks_p", "new_share", "new_categories", "n_live") if k in c}


def _audit_change(session: Session, key: bytes, host: str, change: str, event_type: str, model: str,
                  details: dict[str, Any]) -> None:
    if change == "raised":
        audit.append(session, key, event_type=event_type, outcome=4, actor=ACTOR, host=host,
                     details={"model": model, **details})
        event(log, event_type, logging.WARNING, model=model, what=",".join(details.get("labels", {})) or "-",
              inputs=",".join(details.get("inputs", {})) or "-")
    elif change == "cleared":
        audit.append(session, key, event_type="monitor.cleared", actor=ACTOR, host=host,
                     details={"model": model, "alarm": event_type})
        event(log, "monitor.cleared", model=model, alarm=event_type)


_RUNTIME = None


def install(rt: Any) -> None:
    """Give the scheduled job the daemon's runtime (as `retraining.install` does)."""
    global _RUNTIME
    _RUNTIME = rt


def scheduled() -> None:
    """The scheduler's job: one pass, its own transaction; a failure is logged, never raised."""
    rt = _RUNTIME
    if rt is None:
        raise RuntimeError("monitoring runtime not installed")
    s = rt.settings
    try:
        out = run_once(rt.read_sessions, rt.sessions, rt.registry, s.monitor, s.model.promotion.min_auroc_lower_bound,
                       rt.keys.audit_key, rt.hostname)
        event(log, "monitor.run", model=out.get("model") or "none", drift=out.get("drift", False),
              images=out.get("images", 0))
    except Exception as exc:  # noqa: BLE001 - the next run tries again
        log.error("monitor.failed", exc_info=exc)
