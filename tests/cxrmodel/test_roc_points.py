"""ROC points stored with every evaluation: thinned, both ends kept, the same curve `roc_curve` gives."""
from __future__ import annotations

import json

import numpy as np

from cxrmodel import evaluate as E
from cxrmodel import metrics as M
from cxrmodel.labels import LABELS


def test_roc_points_thin_the_curve_and_keep_its_ends():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 2000)
    s = y * 0.3 + rng.random(2000)
    pts = M.roc_points(y, s, max_points=40)
    assert len(pts["fpr"]) <= 40 and len(pts["fpr"]) == len(pts["tpr"])
    assert (pts["fpr"][0], pts["tpr"][0]) == (0.0, 0.0) and (pts["fpr"][-1], pts["tpr"][-1]) == (1.0, 1.0)
    assert pts["fpr"] == sorted(pts["fpr"]) and pts["tpr"] == sorted(pts["tpr"])
    # the trapezoid under the thinned points is close to the exact AUROC
    assert abs(np.trapezoid(pts["tpr"], pts["fpr"]) - M.roc_auc(y, s)) < 0.02
    assert M.roc_points(np.zeros(5), np.arange(5.0)) is None  # one class: no curve


def test_manifest_metrics_carry_roc_points_per_finding():
    rng = np.random.default_rng(1)
    Y = rng.integers(0, 2, (60, len(LABELS)))
    P = rng.random((60, len(LABELS)))
    metrics = E.manifest_metrics(E.report(Y, P, n_boot=0), "test")
    assert set(metrics["roc"]) == set(LABELS)
    assert all(len(v["fpr"]) >= 2 for v in metrics["roc"].values())
    json.dumps(metrics)  # plain JSON for manifest.json
