"""The report labeller against human MeSH indexing of 2,934 real chest X-ray reports (IU / Open-i).

Unpacks `../shared/data/reports/iu-xray-reports.tgz` into a temporary folder (never into the
repository), labels each report's FINDINGS + IMPRESSION text with `cxrmodel.report_labeller`, and
compares with the report's `<major>` MeSH terms, mapped to ChestX-ray14 findings by MESH_TO_FINDING
below. A naive keyword matcher (the same synonyms, no negation, no uncertainty, no sections) is
measured in the same run. The labeller's "uncertain" counts as not positive (the indexers mostly did
not index hedged findings: "cannot exclude pneumonia" carries no Pneumonia term); the figures with
uncertain counted as positive are printed beside them.

    .venv/bin/python benchmarks/report_labels.py            # --min-positives 20 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import tarfile
import tempfile
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cxrmodel.labels import LABELS  # noqa: E402
from cxrmodel.report_labeller import default_rules, label_report  # noqa: E402

DEFAULT_TGZ = (REPO / ".." / "shared" / "data" / "reports" / "iu-xray-reports.tgz").resolve()

# MeSH <major> heading (the part before the first "/") -> ChestX-ray14 finding. Headings that name a
# different finding stay unmapped: "Opacity", "Airspace Disease", "Density" (no ChestX-ray14 label
# says which), "Calcified Granuloma" (a calcified nodule is indexed as a granuloma, never as
# Nodule), "Pulmonary Congestion" (vascular congestion, not edema), "Pulmonary Disease, Chronic
# Obstructive" and "Lung, Hyperlucent" (hyperinflation: COPD, not emphysema named as such),
# "Subcutaneous Emphysema" (air in soft tissue), "Costophrenic Angle" (blunting without the word
# effusion). "Thickening" maps only with the "pleura" qualifier.
MESH_TO_FINDING: dict[str, str] = {
    "Pulmonary Atelectasis": "Atelectasis",
    "Cardiomegaly": "Cardiomegaly",
    "Pleural Effusion": "Effusion",
    "Infiltrate": "Infiltration",
    "Mass": "Mass",
    "Nodule": "Nodule",
    "Pneumonia": "Pneumonia",
    "Pneumothorax": "Pneumothorax",
    "Consolidation": "Consolidation",
    "Pulmonary Edema": "Edema",
    "Emphysema": "Emphysema",
    "Pulmonary Emphysema": "Emphysema",
    "Bullous Emphysema": "Emphysema",
    "Pulmonary Fibrosis": "Fibrosis",
    "Fibrosis": "Fibrosis",
    "Hernia, Hiatal": "Hernia",
    "Hernia, Diaphragmatic": "Hernia",
}
PLEURAL_THICKENING_HEADING = "Thickening"  # only "Thickening/pleura/..."
# The indexers file "the cardiac silhouette is enlarged" as "Cardiac Shadow/enlarged", and
# "cardiomegaly" as "Cardiomegaly": on a chest radiograph both say the heart is enlarged.
CARDIAC_SHADOW_HEADING = "Cardiac Shadow"  # only "Cardiac Shadow/enlarged/..."


@dataclass(frozen=True)
class Report:
    name: str
    text: str            # "FINDINGS: ...\nIMPRESSION: ..."
    truth: frozenset[str]
    majors: tuple[str, ...]


def mesh_findings(majors: list[str]) -> set[str]:
    out = set()
    for term in majors:
        parts = [p.strip() for p in term.split("/")]
        head = " ".join(parts[0].split())
        if head in MESH_TO_FINDING:
            out.add(MESH_TO_FINDING[head])
        elif head == PLEURAL_THICKENING_HEADING and "pleura" in parts[1:]:
            out.add("Pleural_Thickening")
        elif head == CARDIAC_SHADOW_HEADING and "enlarged" in parts[1:]:
            out.add("Cardiomegaly")
    return out


def load_reports(tgz: Path) -> list[Report]:
    reports = []
    with tempfile.TemporaryDirectory(prefix="cxrd-iu-") as tmp:
        with tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
        for path in sorted(Path(tmp).rglob("*.xml"), key=lambda p: (len(p.stem), p.stem)):
            root = ET.parse(path).getroot()
            parts = []
            for node in root.iter("AbstractText"):
                label = (node.get("Label") or "").upper()
                if label in ("FINDINGS", "IMPRESSION") and (node.text or "").strip():
                    parts.append(f"{label}: {node.text.strip()}")
            majors = [(m.text or "").strip() for m in root.iter("major")]
            if not parts or "No Indexing" in majors:
                continue  # nothing to label, or the indexers did not index it
            reports.append(Report(path.stem, "\n".join(parts), frozenset(mesh_findings(majors)), tuple(majors)))
    return reports


def naive_labels(text: str) -> set[str]:
    """Keyword matcher: any synonym of a finding anywhere in the text is a positive."""
    rules = default_rules()
    low = text.lower()
    return {label for label, fr in rules.findings.items() if any(p.search(low) for p in fr.mentions)}


def prf(pred: list[set[str]], truth: list[frozenset[str]], label: str) -> tuple[float, float, float, int, int]:
    tp = sum(label in p and label in t for p, t in zip(pred, truth))
    fp = sum(label in p and label not in t for p, t in zip(pred, truth))
    fn = sum(label not in p and label in t for p, t in zip(pred, truth))
    prec = tp / (tp + fp) if tp + fp else 0.0
    rec = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
    return prec, rec, f1, tp + fn, tp + fp


def evaluate(reports: list[Report], min_positives: int = 20) -> dict:
    truth = [r.truth for r in reports]
    labelled = [label_report(r.text) for r in reports]
    strict = [{k for k, f in lab.items() if f.status == "positive"} for lab in labelled]
    as_pos = [{k for k, f in lab.items() if f.status in ("positive", "uncertain")} for lab in labelled]
    naive = [naive_labels(r.text) for r in reports]
    counts = Counter(label for t in truth for label in t)
    rows = []
    for label in LABELS:
        if counts[label] < min_positives:
            continue
        p, r, f, n, _ = prf(strict, truth, label)
        _, _, fu, _, _ = prf(as_pos, truth, label)
        np_, nr, nf, _, _ = prf(naive, truth, label)
        rows.append({"finding": label, "positives": n, "precision": p, "recall": r, "f1": f,
                     "f1_uncertain_as_positive": fu, "naive_precision": np_, "naive_recall": nr, "naive_f1": nf})
    macro = sum(r["f1"] for r in rows) / len(rows) if rows else 0.0
    return {"reports": len(reports), "rows": rows, "macro_f1": macro,
            "macro_f1_uncertain_as_positive": sum(r["f1_uncertain_as_positive"] for r in rows) / len(rows) if rows else 0.0,
            "naive_macro_f1": sum(r["naive_f1"] for r in rows) / len(rows) if rows else 0.0,
            "below_scope": {label: counts[label] for label in LABELS if 0 < counts[label] < min_positives}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tgz", type=Path, default=DEFAULT_TGZ, help="iu-xray-reports.tgz (default: %(default)s)")
    ap.add_argument("--min-positives", type=int, default=20, help="score findings with at least this many")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if not args.tgz.is_file():
        print(f"report_labels: no such file: {args.tgz}", file=sys.stderr)
        return 2
    res = evaluate(load_reports(args.tgz), args.min_positives)
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{res['reports']} reports with FINDINGS/IMPRESSION text and MeSH indexing; 'uncertain' counts as not positive")
    print(f"{'finding':20} {'pos':>4} {'P':>6} {'R':>6} {'F1':>6} {'F1 u=pos':>8} | {'naive P':>7} {'R':>6} {'F1':>6}")
    for r in res["rows"]:
        print(f"{r['finding']:20} {r['positives']:4d} {r['precision']:6.3f} {r['recall']:6.3f} {r['f1']:6.3f} "
              f"{r['f1_uncertain_as_positive']:8.3f} | {r['naive_precision']:7.3f} {r['naive_recall']:6.3f} {r['naive_f1']:6.3f}")
    print(f"macro F1: labeller {res['macro_f1']:.3f} (uncertain as positive {res['macro_f1_uncertain_as_positive']:.3f}), "
          f"naive {res['naive_macro_f1']:.3f}")
    print(f"not scored (fewer than {args.min_positives} positives): {res['below_scope']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
