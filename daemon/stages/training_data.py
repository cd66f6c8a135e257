"""The hospital's own studies as training data: import ground-truth labels for images we received,
and export labeled, de-identified images as a ChestX-ray14-format batch the retraining job reads.
`export_batch` is the one export path: `cxrd labels export` calls it, and so does every retraining
run (`retrain.use_label_store`, daemon.stages.retraining.export_label_store).

Labels come from two sources: imported here (manual, which always wins) or read from radiology
reports by daemon.stages.report_matching (report, never replacing a manual one). A report's
uncertain findings train as `labels.uncertain_as` says (negative, positive, or the image left out).
Imported labels are keyed by the pseudonymous SOP Instance UID (what `cxrd predictions` shows), in the
ChestX-ray14 layout (`Image Index,Finding Labels,...`; `Image Index` may carry a `.png` suffix).
Images whose BurnedInAnnotation is YES or unknown are never exported: their pixels may carry names.

Every export's destination is recorded in `{state_dir}/training-exports.jsonl` (paths only), so that
purging an image (`purge_training_copies`, called by `storage.retention.purge_expired`) finds its
PNGs and CSV rows wherever they were written, in the retraining inbox, in a retraining run's work
folder, and its features in the retraining feature cache. A model already trained on the image
keeps what it learnt: weights are not derived per image and cannot be purged of one.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pydicom
from PIL import Image
from pydicom.errors import InvalidDicomError
from sqlalchemy import select, update

from cxrmodel.chestxray14 import NO_FINDING
from cxrmodel.errors import ModelError
from cxrmodel.labels import LABELS
from daemon.errors import DaemonError
from daemon.ops.logs import event
from daemon.runtime import Runtime
from storage.dicomfile import checked_instance
from storage.errors import VaultError
from storage.models import LABEL_MANUAL, LABEL_REPORT, Instance, Label, utcnow
from storage.vault import Vault

log = logging.getLogger("cxrd.training_data")

HEADER = ["Image Index", "Finding Labels", "Follow-up #", "Patient ID", "Patient Age", "Patient Gender",
          "View Position", "OriginalImage[Width", "Height]", "OriginalImagePixelSpacing[x", "y]"]


@dataclass
class ImportReport:
    imported: int = 0
    replaced: int = 0
    problems: list[str] = field(default_factory=list)  # "file:line: what" (pseudonyms only)


def import_labels(rt: Runtime, csv_path: Path) -> ImportReport:
    report = ImportReport()
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise DaemonError(f"cannot read {csv_path}: {exc.strerror}") from None
    reader = csv.reader(io.StringIO(text))
    header = [h.strip() for h in next(reader, [])]
    if "Image Index" not in header or "Finding Labels" not in header:
        raise DaemonError(f"{csv_path.name}: header needs 'Image Index' and 'Finding Labels' (ChestX-ray14 layout)")
    col_img, col_lab = header.index("Image Index"), header.index("Finding Labels")
    known = set(LABELS)
    rows: list[tuple[int, str, str]] = []
    for row in reader:
        line = reader.line_num
        if not row or all(not c.strip() for c in row):
            continue
        if len(row) <= max(col_img, col_lab):
            report.problems.append(f"{csv_path.name}:{line}: too few fields")
            continue
        image = row[col_img].strip().removesuffix(".png")
        parts = [p.strip() for p in row[col_lab].split("|") if p.strip()]
        bad = [p for p in parts if p not in known and p != NO_FINDING]
        if not parts or bad or (NO_FINDING in parts and len(parts) > 1):
            report.problems.append(f"{csv_path.name}:{line}: invalid Finding Labels for {image}"
                                   + (f" (unknown: {', '.join(sorted(set(bad)))})" if bad else ""))
            continue
        findings = NO_FINDING if parts == [NO_FINDING] else "|".join(sorted(set(parts), key=LABELS.index))
        rows.append((line, image, findings))
    with rt.sessions() as session, session.begin():
        for line, image, findings in rows:
            inst = session.scalar(select(Instance).where(Instance.sop_instance_uid == image))
            if inst is None:
                report.problems.append(f"{csv_path.name}:{line}: no received image {image}")
                continue
            existing = session.get(Label, inst.id)
            states = manual_states(findings)
            if existing is None:
                session.add(Label(instance_id=inst.id, findings=findings, source=LABEL_MANUAL, states=states))
                report.imported += 1
            elif existing.findings != findings or existing.source != LABEL_MANUAL:
                # a manual label replaces a report's, even one that says the same
                existing.findings, existing.imported_at, existing.used_in_model = findings, utcnow(), ""
                existing.source, existing.states, existing.report_id = LABEL_MANUAL, states, None
                report.replaced += 1
    rt.audit("import.labels", imported=report.imported, replaced=report.replaced, problems=len(report.problems),
             file=csv_path.name)
    return report


def manual_states(findings: str) -> str:
    """The states JSON of a manual label: its listed findings positive, every other negative."""
    listed = set(findings.split("|"))
    return json.dumps({f: ("positive" if f in listed else "negative") for f in LABELS}, sort_keys=True)


def training_findings(label: Label, uncertain_as: str) -> str | None:
    """The ChestX-ray14 `Finding Labels` a label trains as under `labels.uncertain_as`, or None when
    the image is left out (an uncertain finding with "exclude"). Manual labels are used as imported."""
    try:
        states = json.loads(label.states or "{}")
    except ValueError:
        states = {}
    if not isinstance(states, dict) or not states:
        return label.findings
    if "uncertain" in states.values() and uncertain_as == "exclude":
        return None
    take = {"positive"} | ({"uncertain"} if uncertain_as == "positive" else set())
    positive = [f for f in LABELS if states.get(f) in take]
    return "|".join(positive) if positive else NO_FINDING


def _patient_number(pseudonym: str) -> int:
    """ChestX-ray14 wants an integer Patient ID; derive a stable one from the patient pseudonym."""
    return int(hashlib.sha256(pseudonym.encode()).hexdigest()[:12], 16) % 10**8


EXPORT_SUMMARY = "cxrd-export.json"  # counts only (by source, refused): what a retraining run reports


def export_batch(rt: Runtime, dest: Path | None = None, include_exported: bool = False,
                 skip_empty: bool = False) -> dict:
    """Write labeled, de-identified images as a ChestX-ray14 batch (default: a new inbox batch).

    The one export path, for `cxrd labels export` and for every retraining run (`retrain.use_label_store`).
    Left out, and counted: images whose Burned In Annotation is not NO (YES, or not declared: their
    pixels may carry a name), images already purged from the vault, images that cannot be read back
    (a damaged or tampered object), and, under `labels.uncertain_as = "exclude"`, images with an
    uncertain finding. A label is marked with the batch it went into only after the batch is
    complete and only if it was not replaced meanwhile, so a crash or a newer label never loses one.
    With `skip_empty`, nothing is written (no folder, no audit event) when no image is exportable."""
    name = "cxrd-labels-" + datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    dest = dest or Path(rt.settings.retrain.inbox) / name
    if dest.exists() and any(dest.iterdir()):
        raise DaemonError(f"export destination {dest} is not empty")
    vault = Vault(rt.vault_dir, rt.keys.keyring)
    with rt.read_sessions() as session:
        q = select(Instance, Label).join(Label, Label.instance_id == Instance.id)
        if not include_exported:
            q = q.where(Label.used_in_model == "")
        pairs = session.execute(q.order_by(Instance.id)).all()
    refused = [i.sop_instance_uid for i, _ in pairs if i.burned_in_annotation != "no"]
    refused_unknown = sum(i.burned_in_annotation != "yes" for i, _ in pairs if i.burned_in_annotation != "no")
    pairs = [(i, lab) for i, lab in pairs if i.burned_in_annotation == "no"]
    purged = sum(not i.vault_object for i, _ in pairs)
    pairs = [(i, lab) for i, lab in pairs if i.vault_object]
    uncertain_as = rt.settings.labels.uncertain_as
    decided = [(i, lab, training_findings(lab, uncertain_as)) for i, lab in pairs]
    uncertain_left_out = sum(findings is None for _, _, findings in decided)
    chosen = [(i, lab, findings) for i, lab, findings in decided if findings is not None]
    summary = {"destination": None, "batch": None, "images": 0, "sources": {LABEL_MANUAL: 0, LABEL_REPORT: 0},
               "refused_burned_in": refused, "refused_burned_in_unknown": refused_unknown,
               "uncertain_left_out": uncertain_left_out, "purged": purged, "unreadable": 0}
    if skip_empty and not chosen:
        return summary
    from cxrmodel.preprocess import load_image  # decoding pulls in torch: only export needs it

    created = not dest.exists()
    (dest / "images").mkdir(parents=True, exist_ok=True, mode=0o700)
    _record_export(rt.state_dir, dest)  # before any PNG exists: a purge must always find them
    rows, written = [], []
    try:
        for inst, lab, findings in chosen:
            try:
                raw = checked_instance(vault.get(inst.vault_object), inst.sop_instance_uid, inst.vault_object)
                ds = pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True)
                unit = load_image(raw)
            except (VaultError, ModelError, InvalidDicomError) as exc:
                summary["unreadable"] += 1  # damaged, tampered or undecodable: never trained on
                event(log, "training.export_unreadable", logging.WARNING, instance=inst.sop_instance_uid,
                      error=type(exc).__name__)
                continue
            Image.fromarray(np.round(unit * 255).astype(np.uint8), mode="L").save(
                dest / "images" / f"{inst.sop_instance_uid}.png")
            age = str(ds.get("PatientAge", "") or "")
            spacing = list(ds.get("PixelSpacing", ds.get("ImagerPixelSpacing", [""] * 2)) or ["", ""])
            rows.append([f"{inst.sop_instance_uid}.png", findings, 0,
                         _patient_number(str(ds.get("PatientID", ""))),
                         int(age[:3]) if age[:3].isdigit() else "", str(ds.get("PatientSex", "") or ""),
                         inst.view_position, unit.shape[1], unit.shape[0], *[str(v) for v in spacing[:2]]])
            written.append(lab)
            summary["sources"][lab.source] = summary["sources"].get(lab.source, 0) + 1
        summary.update(destination=str(dest), batch=dest.name, images=len(rows))
        counts = {k: v for k, v in summary.items() if k not in ("destination", "refused_burned_in")}
        (dest / EXPORT_SUMMARY).write_text(json.dumps({**counts, "refused_burned_in": len(refused)}, indent=2) + "\n",
                                           encoding="utf-8")
        # the CSV last: a batch is complete (and read by retraining) once it exists
        _write_csv(dest / CSV_NAME, HEADER, rows)
    except BaseException:
        if created:  # an incomplete batch is never left for retraining to read
            shutil.rmtree(dest, ignore_errors=True)
        raise
    with rt.sessions() as session, session.begin():
        for lab in written:
            session.execute(update(Label).where(Label.instance_id == lab.instance_id,
                                                Label.imported_at == lab.imported_at)
                            .values(used_in_model=dest.name[:64]))
    rt.audit("export.training", **export_counts(summary))
    return summary


def export_counts(summary: dict[str, Any]) -> dict[str, Any]:
    """An export's numbers, flat (its audit row, and what a retraining run records of it)."""
    return {"batch": summary["batch"], "images": summary["images"],
            "manual": summary["sources"].get(LABEL_MANUAL, 0), "report": summary["sources"].get(LABEL_REPORT, 0),
            "refused_burned_in": len(summary["refused_burned_in"]),
            "refused_burned_in_unknown": summary["refused_burned_in_unknown"],
            "uncertain_left_out": summary["uncertain_left_out"], "purged": summary["purged"],
            "unreadable": summary["unreadable"]}


EXPORTS_FILE = "training-exports.jsonl"
CSV_NAME = "Data_Entry_2017.csv"


def _record_export(state_dir: Path, dest: Path) -> None:
    line = json.dumps({"path": str(Path(dest).resolve()), "at": utcnow().isoformat(timespec="seconds")})
    with open(Path(state_dir) / EXPORTS_FILE, "a", encoding="utf-8") as f:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())


def _training_folders(state_dir: Path, inbox: Path) -> list[Path]:
    """Every folder that may hold exported PNGs: recorded exports, inbox batches, retraining work data."""
    folders: list[Path] = []
    try:
        with open(Path(state_dir) / EXPORTS_FILE, encoding="utf-8") as f:
            for line in f:
                try:
                    folders.append(Path(json.loads(line)["path"]))
                except (ValueError, KeyError, TypeError):
                    continue  # a torn last line after a crash
    except FileNotFoundError:
        pass
    if inbox.is_dir():
        folders += [d for d in inbox.iterdir() if d.is_dir()]
    folders += [d / "data" for d in (Path(state_dir) / "cache").glob("retrain-*")]
    unique: dict[str, Path] = {}
    for folder in folders:
        unique.setdefault(str(folder.resolve()), folder)
    return [f for f in unique.values() if (f / "images").is_dir()]


def _drop_rows(csv_path: Path, names: set[str]) -> int:
    """Rewrite a ChestX-ray14 CSV without the rows whose Image Index is in `names` (atomically)."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError:
        return 0
    if not rows:
        return 0
    header, body = rows[0], rows[1:]
    col = header.index("Image Index") if "Image Index" in header else 0
    kept = [r for r in body if not r or r[col].strip().removesuffix(".png") not in names]
    if len(kept) == len(body):
        return 0
    _write_csv(csv_path, header, kept)
    return len(body) - len(kept)


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    """Write a CSV whole or not at all (temp file beside it, fsync, rename): readers of the batch, and
    retraining, see the old file or the complete new one."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _drop_test_images(result: Path, uids: set[str]) -> None:
    """A retraining run's result.json lists its held-out test images by name: drop purged ones."""
    try:
        data = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    names = data.get("test_images") if isinstance(data, dict) else None
    if not isinstance(names, list):
        return
    kept = [n for n in names if str(n).removesuffix(".png") not in uids]
    if len(kept) == len(names):
        return
    data["test_images"] = kept
    tmp = result.with_suffix(".purge-tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, result)


def purge_training_copies(state_dir: Path, inbox: Path, sop_uids: Iterable[str]) -> dict[str, int]:
    """Remove what training made from these images (pseudonymous SOP Instance UIDs): exported PNGs
    (and their CSV rows), cached features, and their names in retraining runs' result.json.
    Returns {uid: files removed}; idempotent."""
    uids = {u for u in sop_uids if u}
    counts = dict.fromkeys(uids, 0)
    if not uids:
        return counts
    for folder in _training_folders(Path(state_dir), Path(inbox)):
        hit = set()
        for uid in uids:
            png = folder / "images" / f"{uid}.png"
            if png.is_symlink() or png.exists():
                png.unlink()
                counts[uid] += 1
                hit.add(uid)
        if hit:
            _drop_rows(folder / CSV_NAME, hit)
    for result in (Path(state_dir) / "cache").glob("retrain-*/out/result.json"):
        _drop_test_images(result, uids)
    cache = Path(state_dir) / "cache" / "features"
    if cache.is_dir():
        from cxrmodel.features import purge_sources  # imports torch: only when a cache exists
        for uid in uids:
            counts[uid] += purge_sources(cache, [uid])
    return counts
