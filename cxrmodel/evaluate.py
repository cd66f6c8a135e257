"""Evaluation reports, operating thresholds and the promote-or-keep decision.

A report is plain JSON-able data so the scheduler can store it, compare two of them computed on the
same held-out patients, and put its summary in the model manifest. AUROC is the headline (it does not
depend on a threshold); accuracy and F1 are shown beside it at the Youden operating point chosen on
validation data, because the ChestX-ray14 paper reports "accuracy" and a reader will look for it.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import metrics as M
from .labels import LABELS
from .network import probabilities
from .preprocess import PreprocessSpec, preprocess

if TYPE_CHECKING:
    from .chestxray14 import Entry

DEFAULT_THRESHOLD = 0.5


def dataset_fingerprint(entries: Sequence[Entry]) -> str:
    """sha256 over what defines a labelled data set (image, patient, findings), in name order.

    Stored in a trained model's manifest so `evaluate` can tell the data set the model was trained
    on (where only the held-out test patients are a fair score) from any other one (where every
    image is unseen and all of them should be scored). Paths are left out: the same data set copied
    elsewhere is the same data set.
    """
    h = hashlib.sha256()
    for e in sorted(entries, key=lambda e: e.image):
        h.update(f"{e.image}\x1f{e.patient_id}\x1f{'|'.join(sorted(e.findings))}\n".encode())
    return h.hexdigest()


def default_split(training: Mapping[str, Any], entries: Sequence[Entry], folder_name: str) -> tuple[str, str]:
    """(split, why) to score a model on this data set when the user did not choose one.

    The test patients only when the data set is the one the model was trained on - by fingerprint,
    or, for manifests written before fingerprints, by folder name and image count; anything else
    (another hospital's set, an imported model) is unseen data, so all of it.
    """
    known = training.get("data_fingerprint")
    if known:
        if known == dataset_fingerprint(entries):
            return "test", "the data set the model was trained on: its held-out test patients"
        return "all", "not the data set the model was trained on: every image"
    images = training.get("images")
    if (training.get("data") == folder_name and isinstance(images, Mapping)
            and sum(int(v) for v in images.values() if isinstance(v, (int, float))) == len(entries)):
        return "test", "the data set the model was trained on (same folder and image count): its held-out test patients"
    return "all", "not known to be the data set the model was trained on: every image"


@torch.inference_mode()
def predict_paths(
    module: torch.nn.Module,
    paths: Sequence[Path],
    spec: PreprocessSpec,
    activation: str = "sigmoid",
    batch_size: int = 32,
) -> np.ndarray:
    """(N, 14) probabilities from the whole network (what the engine would give)."""
    module.eval()
    out = []
    for start in range(0, len(paths), batch_size):
        x = torch.stack([preprocess(p, spec) for p in paths[start : start + batch_size]])
        out.append(probabilities(module(x), activation).numpy())
    return np.concatenate(out) if out else np.zeros((0, len(LABELS)), dtype=np.float32)


def evaluate_model(
    module: torch.nn.Module,
    entries: Sequence["Entry"],
    spec: PreprocessSpec,
    *,
    activation: str = "sigmoid",
    thresholds: Mapping[str, float] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Report of a whole model on labeled entries (e.g. the held-out test patients); also returns
    (truth, probabilities) for figures. Candidate and current model are judged by calling this
    twice on the same entries, each with its own preprocessing and thresholds."""
    from .chestxray14 import label_matrix

    Y = label_matrix(list(entries))
    P = predict_paths(module, [e.path for e in entries], spec, activation, batch_size)
    return report(Y, P, thresholds, n_boot=n_boot, seed=seed), Y, P


def choose_thresholds(Y: np.ndarray, P: np.ndarray) -> dict[str, float]:
    """Per-label Youden operating points; labels without both classes keep 0.5."""
    out = {}
    for k, label in enumerate(LABELS):
        t = M.youden_threshold(Y[:, k], P[:, k])
        out[label] = float(min(max(t, 0.0), 1.0)) if t is not None else DEFAULT_THRESHOLD
    return out


def _bootstrap_mean_auc(Y: np.ndarray, P: np.ndarray, n_boot: int, seed: int) -> list[float] | None:
    """CI of the mean AUROC, resampling images jointly for all labels (labels are correlated)."""
    rng = np.random.default_rng(seed + 1)
    values = []
    for _ in range(n_boot):
        i = rng.integers(0, Y.shape[0], Y.shape[0])
        m = M.mean_auroc(Y[i], P[i])
        if m is not None:
            values.append(m)
    if not values:
        return None
    return [float(v) for v in np.quantile(values, [0.025, 0.975])]


def report(
    Y: np.ndarray,
    P: np.ndarray,
    thresholds: Mapping[str, float] | None = None,
    *,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-label AUROC (+ bootstrap 95% CI), AP, accuracy/F1/sensitivity/specificity at the
    operating point, ECE; and their means. `thresholds` should come from validation data."""
    Y = np.asarray(Y, dtype=np.float32)
    P = np.asarray(P, dtype=np.float64)
    if Y.shape != P.shape or Y.ndim != 2 or Y.shape[1] != len(LABELS):
        raise ValueError(f"truth {Y.shape} and probabilities {P.shape} must both be (N, {len(LABELS)})")
    thresholds = thresholds or {}
    labels: dict[str, Any] = {}
    for k, label in enumerate(LABELS):
        y, p = Y[:, k], P[:, k]
        t = float(thresholds.get(label, DEFAULT_THRESHOLD))
        acc, f1 = M.accuracy_f1(y, p, t)
        c = M.confusion_at(y, p, t)
        ci = M.bootstrap_auc_ci(y, p, n_boot=n_boot, seed=seed + k) if n_boot else None
        labels[label] = {
            "positives": int(y.sum()),
            "auroc": M.roc_auc(y, p),
            "auroc_ci95": list(ci) if ci else None,
            "average_precision": M.average_precision(y, p),
            "threshold": t,
            "accuracy": acc,
            "f1": f1,
            "sensitivity": c["tp"] / (c["tp"] + c["fn"]) if c["tp"] + c["fn"] else None,
            "specificity": c["tn"] / (c["tn"] + c["fp"]) if c["tn"] + c["fp"] else None,
            "ece": M.expected_calibration_error(y, p),
            "roc": M.roc_points(y, p),  # drawn by the console; None without both classes
        }

    def mean(key: str) -> float | None:
        return M.mean_defined([v[key] for v in labels.values()])

    return {
        "n_images": int(Y.shape[0]),
        "mean_auroc": mean("auroc"),
        "mean_auroc_ci95": _bootstrap_mean_auc(Y, P, n_boot, seed) if n_boot else None,
        "mean_average_precision": mean("average_precision"),
        "mean_accuracy": mean("accuracy"),
        "mean_f1": mean("f1"),
        "mean_ece": mean("ece"),
        "labels": labels,
    }


def manifest_metrics(rep: Mapping[str, Any], split: str) -> dict[str, Any]:
    """The compact part of a report that goes into `manifest.json`: also what the promotion floor
    (`promotion.judge`) reads, so the per-label counts and CIs must stay in it, and what the
    console's model page draws (AUROC with CI, ROC points)."""
    return {
        "evaluated_on": split,
        "n_images": rep["n_images"],
        "mean_auroc": rep["mean_auroc"],
        "mean_auroc_ci95": rep["mean_auroc_ci95"],
        "mean_accuracy": rep["mean_accuracy"],
        "auroc": {k: v["auroc"] for k, v in rep["labels"].items()},
        "auroc_ci95": {k: v["auroc_ci95"] for k, v in rep["labels"].items()},
        "positives": {k: v["positives"] for k, v in rep["labels"].items()},
        "accuracy": {k: v["accuracy"] for k, v in rep["labels"].items()},
        # the thinned ROC curve of each finding (`metrics.roc_points`), so a model's page can draw it
        "roc": {k: v.get("roc") for k, v in rep["labels"].items()},
    }


def compare(
    candidate_report: Mapping[str, Any], current_report: Mapping[str, Any] | None, max_auroc_drop: float
) -> tuple[bool, list[str]]:
    """Promote only if mean AUROC is not worse and no label's AUROC drops by more than the margin.

    Both reports must come from the same held-out patients; the reasons say why, one line each.
    """
    if current_report is None:
        return True, ["no current model to compare with"]
    reasons: list[str] = []
    cand, cur = candidate_report.get("mean_auroc"), current_report.get("mean_auroc")
    if cand is None:
        return False, ["candidate has no defined AUROC on the evaluation data"]
    if candidate_report.get("n_images") != current_report.get("n_images"):
        reasons.append("reports cover different numbers of images")
    ok = not reasons
    if cur is not None and cand < cur:
        ok = False
        reasons.append(f"mean AUROC {cand:.4f} is below the current model's {cur:.4f}")
    else:
        reasons.append(f"mean AUROC {cand:.4f} vs current {cur if cur is None else round(cur, 4)}")
    for label in LABELS:
        a = candidate_report["labels"].get(label, {}).get("auroc")
        b = current_report["labels"].get(label, {}).get("auroc")
        if a is not None and b is not None and b - a > max_auroc_drop:
            ok = False
            reasons.append(f"{label} AUROC drops {b - a:.4f} (> {max_auroc_drop:.4f} allowed)")
    return ok, reasons


# ------------------------------------------------------------------ ROC figure (PIL, no matplotlib)

_COLOURS = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
    (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207), (0, 0, 128), (128, 0, 0),
    (0, 128, 128), (0, 0, 0),
]


def write_roc_png(Y: np.ndarray, P: np.ndarray, path: Path, title: str = "ROC per finding") -> Path:
    """One ROC curve per label with its AUROC in the legend; drawn with PIL so matplotlib is optional."""
    from PIL import Image, ImageDraw, ImageFont

    W, H, left, top, side = 980, 720, 70, 50, 600
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    font = ImageFont.load_default()
    d.text((left, 15), title, fill="black", font=font)
    d.rectangle([left, top, left + side, top + side], outline="black")
    for i in range(0, 11, 2):
        v = i / 10
        x, y = left + v * side, top + side - v * side
        d.line([x, top + side, x, top + side + 5], fill="black")
        d.text((x - 8, top + side + 8), f"{v:.1f}", fill="black", font=font)
        d.line([left - 5, y, left, y], fill="black")
        d.text((left - 35, y - 6), f"{v:.1f}", fill="black", font=font)
    d.text((left + side // 2 - 60, top + side + 25), "false positive rate", fill="black", font=font)
    d.text((5, top - 20), "true positive rate", fill="black", font=font)
    d.line([left, top + side, left + side, top], fill=(200, 200, 200))
    for k, label in enumerate(LABELS):
        colour = _COLOURS[k % len(_COLOURS)]
        auc = M.roc_auc(Y[:, k], P[:, k])
        if auc is not None:
            fpr, tpr, _ = M.roc_curve(Y[:, k], P[:, k])
            pts = [(left + f * side, top + side - t * side) for f, t in zip(fpr, tpr)]
            d.line(pts, fill=colour, width=2)
        ly = top + 10 + k * 18
        d.line([left + side + 20, ly + 6, left + side + 45, ly + 6], fill=colour, width=3)
        text = f"{label} {auc:.3f}" if auc is not None else f"{label} n/a"
        d.text((left + side + 52, ly), text, fill="black", font=font)
    mean = M.mean_auroc(Y, P)
    if mean is not None and not math.isnan(mean):
        d.text((left + side + 20, top + 10 + 15 * 18 + 10), f"mean AUROC {mean:.3f}", fill="black", font=font)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path
