"""One retraining run: new labeled data? -> train in a child process -> judge -> promote or keep.

New data arrives as ChestX-ray14-format batches in the inbox (`{inbox}/<batch>/Data_Entry_2017.csv`
+ `images/`). With `retrain.use_label_store` (the default) each run first exports the ground-truth
store's labels not yet exported (`cxrd labels import` and radiology reports; manual wins) into a new
inbox batch through `daemon.stages.training_data.export_batch`, the same path as `cxrd labels
export`, so those images count as new, are marked with the batch (`labels.used_in_model`) and are
never exported twice; what the store held but could not give (Burned In Annotation not NO,
unreadable, uncertain under `labels.uncertain_as = "exclude"`) is counted in the run's summary. A
run trains on every batch (old and new), starting from the current model's weights when there is
one, in a child process with a thread cap and lower priority so the SCP keeps its speed. The
candidate and the current model are then evaluated on the same held-out patients and the candidate
is promoted only if its evidence clears the promotion floor (`cxrmodel.promotion`,
`[model.promotion]`: shown better than chance; the first model too) and it is not worse than the
current model (`cxrmodel.evaluate.compare`); otherwise it is kept, unpromoted, with its report and
the reasons. Every run, promotion and rejection is a `retrain_runs` row and audited.

With `model.shadow.after_retrain`, a candidate that would be promoted runs in shadow instead (outcome
`shadowed`, `daemon.stages.shadow`): it is promoted by a later run once `model.shadow.min_labeled_studies`
live labeled studies show it is not significantly worse than the current model, and turned off if
they show it is. Each run starts with that decision, even a run that then finds no new data.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select

from cxrmodel import evaluate as E
from cxrmodel.chestxray14 import read_dataset
from cxrmodel.drift import evaluation_reference
from cxrmodel.errors import ModelError, NoModelError
from cxrmodel.preprocess import PreprocessSpec
from cxrmodel.promotion import Floor, judge, with_evidence
from cxrmodel.train import load_trained
from daemon.errors import DaemonError
from daemon.ops.logs import event
from daemon.runtime import Runtime
from daemon.stages.model_changes import settle_retrained_shadow
from daemon.stages.training_data import EXPORT_SUMMARY
from storage import audit
from storage.keys import derive_key, read_master_key
from storage.models import RetrainRun, utcnow

log = logging.getLogger("cxrd.retrain")
CSV = "Data_Entry_2017.csv"


@dataclass(frozen=True)
class Batch:
    name: str
    path: Path
    images: int


def inbox_batches(inbox: Path) -> list[Batch]:
    """Batches in the inbox, oldest name first; a batch is complete once its CSV exists."""
    if not inbox.is_dir():
        return []
    out = []
    for d in sorted(p for p in inbox.iterdir() if p.is_dir() and not p.name.startswith(".")):
        csv_path = d / CSV
        if csv_path.is_file():
            with open(csv_path, newline="", encoding="utf-8") as f:
                rows = max(sum(1 for _ in csv.reader(f)) - 1, 0)
            out.append(Batch(d.name, d, rows))
    return out


def used_batches(rt: Runtime) -> set[str]:
    with rt.read_sessions() as s:
        reports = s.scalars(select(RetrainRun.report)
                            .where(RetrainRun.outcome.in_(("promoted", "rejected", "shadowed"))))
        return {name for r in reports for name in json.loads(r or "{}").get("batches", [])}


def merge_batches(batches: list[Batch], dest: Path) -> Path:
    """One ChestX-ray14 folder (CSV + images/ of symlinks) from several batches. An image listed in
    more than one batch (a label replaced after it was exported: a manual label over a report's, a
    corrected report) trains as the latest batch says: batches are read in name order, and exported
    batch names begin with their UTC time."""
    images = dest / "images"
    images.mkdir(parents=True)
    header: list[str] | None = None
    rows: dict[str, list[str]] = {}
    for b in batches:
        with open(b.path / CSV, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            head = next(reader, None)
            header = header or head
            for row in reader:
                key = row[0].strip() if row else ""
                rows.pop(key, None)  # keeps the order of the latest listing
                rows[key] = row
        for img in (b.path / "images").iterdir():
            link = images / img.name
            if not link.exists():
                link.symlink_to(img.resolve())
    with open(dest / CSV, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header or [])
        w.writerows(rows.values())
    return dest


def export_label_store(rt: Runtime, run_id: int) -> dict[str, Any]:
    """Labels in the ground-truth store not yet exported (manual and report alike, manual winning: the
    store keeps one label per image) become a new inbox batch through the one export path
    (`training_data.export_batch`), named for this run. What was left out is counted, so that a run
    that finds labels but cannot use them says why instead of silently training on nothing."""
    from daemon.stages.training_data import export_batch, export_counts
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    dest = Path(rt.settings.retrain.inbox) / f"cxrd-labels-{stamp}-run{run_id}"
    out = export_counts(export_batch(rt, dest, skip_empty=True))
    out["left_out"] = _left_out(out)  # in the run's words, for `retrain --list` and the console to show as is
    if out["refused_burned_in"] or out["unreadable"]:
        event(log, "retrain.labels_refused", logging.WARNING, refused_burned_in=out["refused_burned_in"],
              not_declared=out["refused_burned_in_unknown"], unreadable=out["unreadable"])
    return out


def batch_sources(batch: Batch) -> dict[str, int]:
    """Where a batch's images came from: the label store's manual and report labels (the counts its
    export wrote beside it) or, for a batch dropped into the inbox, all of them "inbox"."""
    try:
        sources = json.loads((batch.path / EXPORT_SUMMARY).read_text(encoding="utf-8"))["sources"]
        return {"manual": int(sources.get("manual", 0)), "report": int(sources.get("report", 0)), "inbox": 0}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return {"manual": 0, "report": 0, "inbox": batch.images}


def retrain_once(rt: Runtime, trigger: str = "schedule") -> dict[str, Any]:
    """Run once; returns the run's summary (also stored in `retrain_runs.report`)."""
    s = rt.settings.retrain
    with rt.sessions() as session, session.begin():
        run = RetrainRun(trigger=trigger, outcome="running")
        session.add(run)
        session.flush()
        run_id = run.id
    summary: dict[str, Any] = {}
    try:
        shadow_decision = settle_retrained_shadow(rt)
    except Exception as exc:  # the live comparison must never stop a retraining run
        log.error("retrain.shadow_failed", exc_info=exc)
        shadow_decision = {"outcome": "failed", "error": type(exc).__name__}
    if shadow_decision is not None:
        summary["shadow_decision"] = shadow_decision
    if s.use_label_store:
        try:
            summary["label_store"] = export_label_store(rt, run_id)
        except Exception as exc:  # never train as if the store were empty when it could not be read
            log.error("retrain.label_export_failed", exc_info=exc)
            summary.update(batches=[], new_batches=[], new_images=0,
                           error=f"label store export: {exc}" if isinstance(exc, DaemonError) else
                           f"label store export: {type(exc).__name__}")
            return _finish(rt, run_id, "failed", summary)
    batches = inbox_batches(Path(s.inbox))
    used = used_batches(rt)  # one read of the runs' reports, not one per batch
    fresh = [b for b in batches if b.name not in used]
    new_images = sum(b.images for b in fresh)
    sources = [batch_sources(b) for b in fresh]
    summary.update(batches=[b.name for b in batches], new_batches=[b.name for b in fresh], new_images=new_images,
                   new_sources={k: sum(x[k] for x in sources) for k in ("manual", "report", "inbox")})
    if new_images < s.min_new_images:
        left_out = (summary.get("label_store") or {}).get("left_out") or []
        summary["reason"] = f"{new_images} new labeled images (< {s.min_new_images})" + "".join(f"; {p}" for p in left_out)
        return _finish(rt, run_id, "skipped", summary)
    work = rt.state_dir / "cache" / f"retrain-{run_id}"
    shutil.rmtree(work, ignore_errors=True)
    try:
        data = merge_batches(batches, work / "data")
        current = _current(rt)
        result = train_in_child(rt, data, work / "out", init=current.path / current.manifest.weights_file
                                if current else None)
        candidate, result = load_trained(work / "out")
        spec = PreprocessSpec.from_dict(result["preprocessing"])
        test_names = set(result["test_images"])
        merged = read_dataset(data).entries
        test = [e for e in merged if e.image in test_names]
        cand_report, truth, probabilities = E.evaluate_model(candidate, test, spec, activation=result["activation"],
                                                             thresholds=result["thresholds"], n_boot=1000)
        cur_report = None
        if current is not None:
            cur_report, _, _ = E.evaluate_model(current.module, test, current.manifest.preprocessing,
                                                activation=current.manifest.architecture.activation,
                                                thresholds=dict(current.manifest.thresholds), n_boot=200)
        better, reasons = E.compare(cand_report, cur_report, s.max_auroc_drop)
        floor = Floor.of(rt.settings.model.promotion)
        metrics = with_evidence(E.manifest_metrics(cand_report, "test"), truth, probabilities, floor)
        metrics["reference"] = evaluation_reference(probabilities, result["thresholds"], [e.path for e in test], "test")
        verdict = judge(metrics, floor)
        promote = better and verdict.passed
        shadowed = promote and rt.settings.model.shadow.after_retrain and current is not None
        promote = promote and not shadowed
        reasons = list(verdict.failures) + reasons  # the floor first: it is the reason a person reads
        version = rt.registry.add(candidate, promote=promote, thresholds=result["thresholds"],
                                  preprocessing=spec, metrics=metrics,
                                  training={**result["training"], "batches": [b.name for b in batches],
                                            "data_fingerprint": E.dataset_fingerprint(merged)},
                                  source={"format": "cxrd-retrain", "run": run_id})
        summary.update(candidate=version, previous=current.version if current else None, reasons=reasons,
                       promotion=verdict.audit_details(floor),
                       candidate_mean_auroc=cand_report.get("mean_auroc"),
                       current_mean_auroc=cur_report.get("mean_auroc") if cur_report else None)
        if shadowed:
            summary["shadow"] = _into_shadow(rt, version, current.version, run_id)
            if summary["shadow"]["running"]:
                return _finish(rt, run_id, "shadowed", summary, version)
            reasons.append(f"not run in shadow: {summary['shadow']['why']}")
        return _finish(rt, run_id, "promoted" if promote else "rejected", summary, version)
    except Exception as exc:  # a failed run must never take the daemon or the current model down
        summary["error"] = str(exc) if isinstance(exc, ModelError) else type(exc).__name__
        log.error("retrain.failed", exc_info=exc)
        return _finish(rt, run_id, "failed", summary)
    finally:
        shutil.rmtree(work / "data", ignore_errors=True)


def _left_out(store: dict[str, Any]) -> list[str]:
    """What the label store held but this run could not use, for a person reading why it skipped."""
    parts = []
    if store.get("refused_burned_in"):
        parts.append(f"{store['refused_burned_in']} labeled image(s) not exported: Burned In Annotation "
                     f"not NO ({store['refused_burned_in_unknown']} not declared)")
    if store.get("unreadable"):
        parts.append(f"{store['unreadable']} unreadable in the vault")
    if store.get("uncertain_left_out"):
        parts.append(f"{store['uncertain_left_out']} left out for an uncertain finding (labels.uncertain_as)")
    return parts


def _into_shadow(rt: Runtime, version: str, current: str, run_id: int) -> dict[str, Any]:
    """Run the candidate in shadow instead of promoting it (it replaces an earlier shadow)."""
    if rt.registry.manifest(version).preprocessing != rt.registry.manifest(current).preprocessing:
        return {"running": False, "why": f"prepares images differently from {current}: cannot share its tensors"}
    previous = rt.registry.set_shadow(version, f"retrain:{run_id}")
    return {"running": True, "replaces": previous, "beside": current,
            "promoted_after": rt.settings.model.shadow.min_labeled_studies}


def _current(rt: Runtime):  # noqa: ANN202 - LoadedModel | None
    try:
        return rt.registry.load()
    except NoModelError:
        return None


def train_in_child(rt: Runtime, data: Path, out: Path, init: Path | None) -> dict[str, Any]:
    """`python -m cxrmodel.train` with a thread cap and niceness; raises ModelError on failure."""
    s = rt.settings.retrain
    # Features of images seen in earlier runs are reused (same backbone: frozen mode starts from the
    # current model); the cache is sealed with a key handed to the child on stdin, never on disk.
    cache_key = derive_key(read_master_key(rt.key_file), "feature-cache")
    cmd = [sys.executable, "-m", "cxrmodel.train", "--data", str(data), "--out", str(out),
           "--mode", s.mode, "--epochs", str(s.epochs), "--size", str(s.size), "--views", str(s.views),
           "--threads", str(s.threads), "--n-boot", "200", "--quiet",
           "--cache-dir", str(rt.state_dir / "cache" / "features"), "--cache-key-file", "/dev/stdin"]
    if init is not None:
        cmd += ["--init", str(init)]
    env = {**os.environ, "OMP_NUM_THREADS": str(s.threads), "MKL_NUM_THREADS": str(s.threads)}
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, input=cache_key.hex(), capture_output=True, text=True,
                          preexec_fn=lambda: os.nice(s.nice), timeout=s.timeout_minutes * 60)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1][:300]
        raise ModelError(f"training child exited with {proc.returncode}: {last}")
    event(log, "retrain.trained", seconds=round(time.monotonic() - t0, 1))
    return json.loads((out / "result.json").read_text())


def _finish(rt: Runtime, run_id: int, outcome: str, summary: dict[str, Any], version: str = "") -> dict[str, Any]:
    summary["outcome"] = outcome
    with rt.sessions() as session, session.begin():
        run = session.get(RetrainRun, run_id)
        run.outcome, run.finished_at, run.candidate_version = outcome, utcnow(), version
        run.report = json.dumps(summary, default=str)
        actor, host = "cxrd:scheduler", rt.hostname
        if outcome in ("promoted", "rejected", "shadowed"):
            audit.append(session, rt.keys.audit_key, event_type="model.trained", actor=actor, host=host,
                         details={"run": run_id, "version": version, "new_images": summary["new_images"],
                                  "new_sources": summary.get("new_sources", {})})
            audit.append(session, rt.keys.audit_key, event_type=f"model.{outcome}", actor=actor, host=host,
                         details={"run": run_id, "version": version, "reasons": summary.get("reasons", [])[:20],
                                  "previous": summary.get("previous"), "promotion": summary.get("promotion")})
        elif outcome == "failed":
            audit.append(session, rt.keys.audit_key, event_type="model.trained", outcome=8, actor=actor,
                         host=host, details={"run": run_id, "error": summary.get("error", "")})
    why = (summary.get("reasons") or [""])[0] if outcome == "rejected" else ""
    event(log, "retrain.finished", run=run_id, outcome=outcome, version=version, **({"why": why} if why else {}))
    return summary


# APScheduler stores jobs by reference, so the scheduled callable is this module-level function
# and the runtime it needs is installed by the service at start.
_RUNTIME: Runtime | None = None


def install(rt: Runtime) -> None:
    global _RUNTIME
    _RUNTIME = rt


def scheduled(trigger: str = "schedule") -> None:
    if _RUNTIME is None:
        raise RuntimeError("retrain runtime not installed")
    retrain_once(_RUNTIME, trigger)


def scheduled_purge() -> None:
    """Daily: crypto-shred images older than `storage.retention_days` (audited by the purge itself)."""
    if _RUNTIME is None:
        raise RuntimeError("retrain runtime not installed")
    from storage.retention import purge_expired
    from storage.vault import Vault
    rt = _RUNTIME
    from daemon.stages.training_data import purge_training_copies
    report = purge_expired(rt.sessions, Vault(rt.vault_dir, rt.keys.keyring), rt.keys.audit_key,
                           rt.settings.storage.retention_days, actor="cxrd:retention", host=rt.hostname,
                           derived=lambda uids: purge_training_copies(rt.state_dir, Path(rt.settings.retrain.inbox),
                                                                      uids))
    event(log, "retention.purged", report=str(report))
