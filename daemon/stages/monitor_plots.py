"""PNG figures of a monitoring report (`daemon.stages.monitoring.report`): matplotlib, Agg backend.

Three kinds per model version: live AUROC per finding over time, each finding's live score
distribution against its reference, and each input characteristic against its reference. Only the
report's numbers are drawn (quantiles, counts, AUROCs): no image, no identifier.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():  # noqa: ANN202
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    return plt


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)[:80]


def performance_over_time(model: Mapping[str, Any], path: Path) -> Path:
    plt = _pyplot()
    perf = model["performance"]
    series = perf["over_time"]
    fig, ax = plt.subplots(figsize=(11, 6), dpi=90)
    x = np.arange(len(series))
    drawn = 0
    for label in perf["labels"]:
        y = [np.nan if p["auroc"][label] is None else p["auroc"][label] for p in series]
        if not np.all(np.isnan(y)):
            ax.plot(x, y, marker="o", label=label)
            drawn += 1
    ax.axhline(perf["floor"], color="red", linestyle="--", linewidth=1, label=f"floor {perf['floor']:.2f}")
    ax.set_xticks(x, [f"{p['start'][:10]}\nn={p['n']}" for p in series], fontsize=7)
    ax.set_ylim(0, 1)
    ax.set_ylabel("live AUROC")
    title = f"{model['model']}: live AUROC per finding over time"
    if not drawn:
        title += f" (no period has {perf['min_cases']} positive and negative studies of any finding)"
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower left", ncol=3)  # the floor line always has a label
    return _save(fig, plt, path)


def _ecdf_from_quantiles(q: list[float]) -> tuple[np.ndarray, np.ndarray]:
    return np.asarray(q, dtype=float), np.linspace(0, 1, len(q))


def score_distributions(model: Mapping[str, Any], path: Path) -> Path:
    """Per finding: the reference CDF (from its quantiles) and the live empirical CDF, PSI in the title."""
    plt = _pyplot()
    labels = model["drift"]["labels"]
    fig, axes = plt.subplots(4, 4, figsize=(14, 12), dpi=80)
    for ax, (label, c) in zip(axes.ravel(), labels.items()):
        ref = c.get("reference_quantiles")
        if ref:
            xs, ys = _ecdf_from_quantiles(ref)
            ax.plot(xs, ys, label="reference", color="black")
        live = c.get("live_quantiles")
        if live:
            xs, ys = _ecdf_from_quantiles(live)
            ax.plot(xs, ys, label="live", color="tab:orange")
        psi = c.get("psi")
        ax.set_title(f"{label}: PSI {psi:.3f} ({c['verdict']})" if psi is not None else f"{label}: {c['verdict']}",
                     fontsize=8)
        ax.set_xlim(0, 1)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(labels):]:
        ax.axis("off")
    if axes.ravel()[0].get_legend_handles_labels()[0]:
        axes.ravel()[0].legend(fontsize=7)
    fig.suptitle(f"{model['model']}: score distributions (CDF) against the reference", fontsize=10)
    return _save(fig, plt, path)


def input_characteristics(model: Mapping[str, Any], path: Path) -> Path:
    """Categorical characteristics as shares per category, numeric ones as reference vs live medians."""
    plt = _pyplot()
    inputs = model["drift"]["inputs"]
    keys = list(inputs)
    cols = 4
    rows = int(np.ceil(len(keys) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(14, 3 * rows), dpi=80)
    for ax, key in zip(axes.ravel(), keys):
        c = inputs[key]
        if c["kind"] == "categorical":
            ref = c.get("reference_counts") or {}
            live = c.get("live_counts") or {}
            cats = sorted(set(ref) | set(live))[:12]
            n_ref, n_live = max(sum(ref.values()), 1), max(sum(live.values()), 1)
            x = np.arange(len(cats))
            ax.bar(x - 0.2, [ref.get(k, 0) / n_ref for k in cats], width=0.4, label="reference", color="grey")
            ax.bar(x + 0.2, [live.get(k, 0) / n_live for k in cats], width=0.4, label="live", color="tab:orange")
            ax.set_xticks(x, [k or "(none)" for k in cats], fontsize=6, rotation=30)
        else:
            vals = [c.get("reference_median"), c.get("live_median")]
            ax.bar([0, 1], [np.nan if v is None else v for v in vals], color=["grey", "tab:orange"])
            ax.set_xticks([0, 1], ["reference\nmedian", "live\nmedian"], fontsize=6)
        psi = c.get("psi")
        ax.set_title(f"{key}: " + (f"PSI {psi:.3f} " if psi is not None else "") + f"({c['verdict']})", fontsize=8)
        ax.tick_params(labelsize=6)
    for ax in axes.ravel()[len(keys):]:
        ax.axis("off")
    fig.suptitle(f"{model['model']}: input characteristics against the reference", fontsize=10)
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def write_all(report: Mapping[str, Any], out: Path) -> list[Path]:
    """Every figure of the report under `out`; returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for model in report["models"]:
        name = _safe(model["model"])
        written.append(performance_over_time(model, out / f"{name}-performance.png"))
        written.append(score_distributions(model, out / f"{name}-scores.png"))
        written.append(input_characteristics(model, out / f"{name}-inputs.png"))
    return written
