"""Drift statistics: how far recent traffic is from a model's reference, in plain numpy (no SQL).

A reference is JSON-able data, never a sample of images: for a numeric quantity (a label's score, an
image's mean intensity) its 101 quantiles (0th..100th percentile) and count; for a categorical one
(manufacturer, photometric interpretation, view) its counts per category. It is written into a
model's manifest when the model is evaluated (`reference_summary`) or summarised from the first
live images after promotion, and compared here with the live values.

Statistics and the thresholds that turn them into a verdict:
- PSI (population stability index), numeric: bins are the reference's deciles (10 bins, edges at the
  10th..90th percentiles; tied edges merge) and two outer bins for values below the reference's
  minimum and above its maximum (expected share EPSILON), the expected share of each bin is read from the
  reference quantiles, the live share counted; PSI = sum (a - e) * ln(a / e) with an empty live
  bin counted as half an image (share 0.5/n, the usual continuity correction; at most the expected
  share, at least `EPSILON`)
  and every expected share floored at `EPSILON`, so an empty bin gives a large, finite value that
  does not explode in a small window.
- PSI, categorical: the same sum over the categories seen in either, shares floored as above;
  `new_share` is the share of live values in categories the reference never had.
- Verdict on PSI: < 0.1 stable, 0.1-0.25 moderate, > 0.25 drift (the usual credit-scoring bands),
  except that PSI is only called drift above its sampling noise as well: with n live and m reference
  values PSI is about chi-square(bins - 1) x (1/n + 1/m) when nothing changed, so a PSI under that
  distribution's 99.9th percentile (`psi_noise_floor`) is "moderate", however high. With 80 live
  images and ten bins the floor is about 0.36: a small window cannot raise drift on PSI alone.
- Two-sample Kolmogorov-Smirnov, numeric: D = the largest gap between the live empirical CDF and
  the reference CDF (interpolated between its quantiles), p from the asymptotic Kolmogorov
  distribution with n_eff = n*m/(n+m). KS alone never raises drift (with thousands of images a
  trivial shift is "significant"); it is reported beside PSI, and turns a moderate PSI into drift
  with both p < KS_ALPHA and D > KS_MIN_D. D > KS_STRONG_D with p < KS_ALPHA (most of the mass has
  moved) is drift whatever the PSI: a reference with tied deciles (a constant, such as the bit
  depth) leaves PSI bins that cannot tell a value below the constant from the constant.
Numeric live values within a relative 1e-5 of a reference quantile count as equal to it (`_snap`):
scores of the same image from batches of different sizes differ in their last bits.
Below `MIN_LIVE` live values a statistic is reported with `too_few` set and no verdict.
"""
from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

EPSILON = 1e-4
PSI_MODERATE = 0.1
PSI_DRIFT = 0.25
KS_ALPHA = 0.001
NOISE_Z = 3.090  # one-sided 99.9%: about thirty comparisons per run, so few false alarms
KS_MIN_D = 0.1
KS_STRONG_D = 0.5
MIN_LIVE = 30
NEW_SHARE = 0.1
SNAP = 1e-5
QUANTILES = np.linspace(0.0, 1.0, 101)

STABLE, MODERATE, DRIFT, TOO_FEW, NO_REFERENCE = "stable", "moderate", "drift", "too_few", "no_reference"


# ------------------------------------------------------------------ references

def numeric_reference(values: Iterable[float]) -> dict[str, Any] | None:
    """101 quantiles and the count of the finite values; None when there are none."""
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    return {"kind": "numeric", "n": int(v.size), "quantiles": [float(q) for q in np.quantile(v, QUANTILES)]}


def categorical_reference(values: Iterable[str | None]) -> dict[str, Any] | None:
    """Counts per category ("" for an absent value is a category: "not stated"); None when empty."""
    counts = Counter("" if v is None else str(v) for v in values)
    if not counts:
        return None
    return {"kind": "categorical", "n": int(sum(counts.values())), "counts": dict(sorted(counts.items()))}


def score_reference(P: np.ndarray, labels: Sequence[str], thresholds: Sequence[float]) -> dict[str, Any]:
    """Per label: the score quantiles and the share of images called positive at the model's threshold."""
    P = np.asarray(P, dtype=np.float64)
    out: dict[str, Any] = {}
    for k, label in enumerate(labels):
        ref = numeric_reference(P[:, k]) if P.shape[0] else None
        if ref is not None:
            ref["positive_rate"] = float(np.mean(P[:, k] >= thresholds[k]))
        out[label] = ref
    return out


def reference_summary(P: np.ndarray, labels: Sequence[str], thresholds: Sequence[float],
                      inputs: Sequence[Mapping[str, Any]], source: str) -> dict[str, Any]:
    """The JSON reference stored with a model: scores per label and input characteristics."""
    return {"source": source, "n_images": int(np.asarray(P).shape[0]),
            "scores": score_reference(P, labels, thresholds), "inputs": input_reference(inputs)}


NUMERIC_INPUTS = ("pixel_spacing_mm", "bits_stored", "rows", "columns", "intensity_mean", "intensity_std",
                  "intensity_p05", "intensity_p50", "intensity_p95", "unit_mean", "unit_std", "unit_p05",
                  "unit_p50", "unit_p95")
CATEGORICAL_INPUTS = ("manufacturer", "model_name", "photometric", "view")


def input_reference(profiles: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """References of each input characteristic over `profiles` (rows of `cxrmodel.input_profile`).

    A characteristic none of the images states (PNG validation images have no manufacturer) gets
    None: the live baseline stands in for it."""
    out: dict[str, Any] = {}
    for key in NUMERIC_INPUTS:
        out[key] = numeric_reference(p.get(key) for p in profiles)
    for key in CATEGORICAL_INPUTS:
        values = [p.get(key) for p in profiles]
        out[key] = categorical_reference(values) if any(v not in (None, "") for v in values) else None
    return out


# ------------------------------------------------------------------ statistics

def _ref_cdf(quantiles: Sequence[float], x: np.ndarray) -> np.ndarray:
    """The reference CDF at x, linear between its quantiles (flat runs of tied quantiles step)."""
    q = np.asarray(quantiles, dtype=np.float64)
    # np.interp needs increasing xp; for tied quantiles take the highest probability at that value
    # on the right (F(x) = P(X <= x)).
    xs, idx = np.unique(q, return_index=False, return_inverse=True)
    probs = np.zeros(xs.size)
    np.maximum.at(probs, idx, QUANTILES[: q.size])
    return np.interp(x, xs, probs, left=0.0, right=1.0)


def _snap(q: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Live values within `SNAP` (relative) of a reference quantile taken as equal to it: the same
    image scored in a batch of 8 and in a batch of 1 differs in the last float bits, which must not
    put it outside a reference whose quantiles tie (identical images, a constant bit depth)."""
    if x.size == 0:
        return x
    tol = SNAP * max(1.0, float(np.max(np.abs(q))))
    u = np.unique(q)
    i = np.clip(np.searchsorted(u, x), 1, u.size - 1) if u.size > 1 else np.zeros(x.size, dtype=int)
    lo, hi = u[np.maximum(i - 1, 0)], u[i]
    nearest = np.where(np.abs(x - lo) <= np.abs(x - hi), lo, hi)
    return np.where(np.abs(x - nearest) <= tol, nearest, x)


def psi_numeric(reference: Mapping[str, Any], live: Sequence[float]) -> float:
    """PSI of live values against the reference's deciles, plus one bin below the reference's
    minimum and one above its maximum (module docstring)."""
    q = np.asarray(reference["quantiles"], dtype=np.float64)
    x = _snap(q, np.asarray(live, dtype=np.float64))
    edges = np.unique(q[10:100:10])
    # expected share per decile bin: the reference CDF at its right edge minus at its left; nothing
    # of the reference lies outside [min, max]
    expected = np.r_[0.0, np.diff(np.r_[0.0, _ref_cdf(q, edges), 1.0]), 0.0]
    # decile bins are right-closed: a value equal to an edge belongs with the reference mass at or below it
    idx = np.searchsorted(edges, x, side="left") + 1
    idx[x < q[0]] = 0
    idx[x > q[-1]] = expected.size - 1
    counts = np.bincount(idx, minlength=expected.size) if x.size else np.zeros(expected.size)
    actual = counts / max(x.size, 1)
    e = np.maximum(expected, EPSILON)
    # an empty bin counts as half an image, or as what the reference expects there if that is less
    # (the outer bins: empty in both, they add nothing)
    a = np.maximum(actual, np.maximum(EPSILON, np.minimum(0.5 / max(x.size, 1), e)))
    return float(np.sum((a - e) * np.log(a / e)))


def psi_bins(reference: Mapping[str, Any]) -> int:
    """How many bins `psi_numeric` uses for this reference (for its noise floor)."""
    return int(np.unique(np.asarray(reference["quantiles"])[10:100:10]).size + 3)


def psi_categorical(reference: Mapping[str, Any], live: Sequence[str]) -> tuple[float, float, list[str]]:
    """(PSI over categories, share of live values in categories the reference lacks, those categories)."""
    ref = {str(k): int(v) for k, v in reference["counts"].items()}
    live_counts = Counter("" if v is None else str(v) for v in live)
    n_ref, n_live = max(sum(ref.values()), 1), max(sum(live_counts.values()), 1)
    psi = 0.0
    for cat in set(ref) | set(live_counts):
        e = max(ref.get(cat, 0) / n_ref, EPSILON)
        a = max(live_counts.get(cat, 0) / n_live, EPSILON, min(0.5 / n_live, e))
        psi += (a - e) * math.log(a / e)
    new = sorted(c for c in live_counts if c not in ref)
    return float(psi), float(sum(live_counts[c] for c in new) / n_live), new


def kolmogorov_p(d: float, n_eff: float) -> float:
    """P(D >= d) under H0 from the asymptotic Kolmogorov distribution (Stephens' small-n correction)."""
    if n_eff <= 0 or d <= 0:
        return 1.0
    sq = math.sqrt(n_eff)
    lam = (sq + 0.12 + 0.11 / sq) * d
    if lam < 0.2:
        return 1.0
    total = sum((-1) ** (j - 1) * math.exp(-2.0 * j * j * lam * lam) for j in range(1, 101))
    return float(min(1.0, max(0.0, 2.0 * total)))


def ks_numeric(reference: Mapping[str, Any], live: Sequence[float]) -> tuple[float, float]:
    """(D, p) of the two-sample KS test of live values against the reference quantiles."""
    q = np.asarray(reference["quantiles"], dtype=np.float64)
    x = np.sort(_snap(q, np.asarray(live, dtype=np.float64)))
    if x.size == 0:
        return 0.0, 1.0
    points = np.unique(np.r_[x, q])
    f_live = np.searchsorted(x, points, side="right") / x.size
    f_ref = _ref_cdf(q, points)
    d = float(np.max(np.abs(f_live - f_ref)))
    n, m = x.size, int(reference.get("n", x.size))
    return d, kolmogorov_p(d, n * m / (n + m))


def psi_noise_floor(bins: int, n: int, m: int, z: float = NOISE_Z) -> float:
    """The PSI that chance alone stays under with ~99.9% probability for `bins` bins, n live and m
    reference values: the chi-square(bins - 1) quantile (Wilson-Hilferty) times 1/n + 1/m."""
    df = max(bins - 1, 1)
    q = df * (1.0 - 2.0 / (9 * df) + z * math.sqrt(2.0 / (9 * df))) ** 3
    return float(q * (1.0 / max(n, 1) + 1.0 / max(m, 1)))


def psi_verdict(psi: float, noise_floor: float = 0.0) -> str:
    if psi > PSI_DRIFT and psi > noise_floor:
        return DRIFT
    if psi > PSI_DRIFT:
        return MODERATE
    if psi >= PSI_MODERATE:
        return MODERATE
    return STABLE


def compare_numeric(reference: Mapping[str, Any] | None, live: Sequence[float | None], *,
                    min_live: int = MIN_LIVE) -> dict[str, Any]:
    """PSI and KS of live values against a numeric reference, with a verdict (module docstring)."""
    x = [float(v) for v in live if v is not None and math.isfinite(float(v))]
    out: dict[str, Any] = {"kind": "numeric", "n_live": len(x), "n_reference": reference["n"] if reference else 0}
    if reference is None:
        return {**out, "verdict": NO_REFERENCE}
    q = reference["quantiles"]
    out["reference_median"] = float(q[50])
    out["live_median"] = float(np.median(x)) if x else None
    if len(x) < min_live:
        return {**out, "verdict": TOO_FEW}
    psi = psi_numeric(reference, x)
    d, p = ks_numeric(reference, x)
    floor = psi_noise_floor(psi_bins(reference), len(x), int(reference["n"]))
    verdict = psi_verdict(psi, floor)
    if p < KS_ALPHA and (d > KS_STRONG_D or (d > KS_MIN_D and psi >= PSI_MODERATE)):
        verdict = DRIFT
    return {**out, "psi": psi, "psi_noise_floor": floor, "ks_d": d, "ks_p": p, "verdict": verdict}


def compare_categorical(reference: Mapping[str, Any] | None, live: Sequence[str | None], *,
                        min_live: int = MIN_LIVE) -> dict[str, Any]:
    """Categorical PSI and the share of new categories, with a verdict: drift also when more than
    a tenth of live images come in a category the reference never had."""
    values = ["" if v is None else str(v) for v in live]
    out: dict[str, Any] = {"kind": "categorical", "n_live": len(values),
                           "n_reference": reference["n"] if reference else 0,
                           "live_counts": dict(sorted(Counter(values).items()))}
    if reference is None:
        return {**out, "verdict": NO_REFERENCE}
    out["reference_counts"] = dict(reference["counts"])
    if len(values) < min_live:
        return {**out, "verdict": TOO_FEW}
    psi, new_share, new = psi_categorical(reference, values)
    floor = psi_noise_floor(len(set(reference["counts"]) | set(values)), len(values), int(reference["n"]))
    verdict = psi_verdict(psi, floor)
    if new_share > NEW_SHARE:
        verdict = DRIFT
    return {**out, "psi": psi, "psi_noise_floor": floor, "new_share": new_share, "new_categories": new,
            "verdict": verdict}


def compare_positive_rate(reference: Mapping[str, Any] | None, live: Sequence[float], threshold: float) -> dict[str, Any]:
    """The share of live images called positive beside the reference's share (no verdict of its own:
    the score PSI carries it)."""
    x = np.asarray(live, dtype=np.float64)
    return {"reference": None if reference is None else reference.get("positive_rate"),
            "live": float(np.mean(x >= threshold)) if x.size else None}


def evaluation_reference(P: np.ndarray, thresholds: Mapping[str, float], paths: Sequence[Any], source: str,
                         limit: int = 500) -> dict[str, Any]:
    """The reference a model's manifest records when it is evaluated (`metrics.reference`): its score
    distribution on the evaluation images and the characteristics of up to `limit` of them."""
    from .input_profile import validation_inputs
    from .labels import LABELS
    return reference_summary(P, LABELS, [float(thresholds.get(lab, 0.5)) for lab in LABELS],
                             validation_inputs(list(paths), limit), source)
