"""The model watch page (roles `operations` and `admin`): is the current model still seeing what it
was validated on, and is it still right?

`GET /watch?finding=NAME` shows, for the current model, what the scheduled monitoring job last
found (`daemon.console.ops_watch`: its gauges, alarms and summary in `monitor_state`, never
recomputed per view): the drift alarm and since when it has been on; per finding the PSI of the
live scores against the model's reference with its band and verdict, and the score distribution
against the reference drawn server-side (inline SVG plus the same numbers as a table; no
JavaScript); per input characteristic the same; and live performance per finding on studies with
report or manual ground truth, with 95% intervals, "too few" where positives or negatives are
too few to mean anything, and the window each number covers. Names and numbers only, no patient
or study identifier.
"""
from __future__ import annotations

from datetime import datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from cxrmodel.labels import LABELS
from daemon.console import charts, ops_watch
from daemon.console.access import requires_role
from daemon.console.pages.operations import local, local_iso
from daemon.console.templating import render

VIEW_ROLES = ("operations", "admin")


def _distribution_chart(w: ops_watch.Watch, finding: str) -> charts.Chart | None:
    reference, live = ops_watch.distribution(w, finding)
    if reference is None and live is None:
        return None
    series = []
    if reference is not None:
        series.append(charts.Series("reference", reference))
    if live is not None:
        series.append(charts.Series("live", live))
    return charts.line_chart("chart-distribution", f"{finding}: score at each percentile, reference and live",
                             [f"{p}%" for p in ops_watch.PERCENTILES], series, y_label="model score",
                             x_title="percentile", digits=3)


def _auroc_chart(version: str, perf: dict) -> charts.Chart:
    labels = perf.get("labels") or {}
    return charts.line_chart(
        "chart-live-auroc", f"Live AUROC of {version} per finding (gaps: too few cases)", list(LABELS),
        [charts.Series("live AUROC", [(labels.get(lab) or {}).get("auroc") for lab in LABELS])],
        y_label="AUROC", x_title="finding", digits=3)


def _when(moment: datetime | None) -> str:
    return local(moment, "%Y-%m-%d %H:%M") if moment else "–"


@requires_role(*VIEW_ROLES)
def watch(request: Request) -> Response:
    rt = request.app.state.runtime
    w = ops_watch.collect(rt)
    asked = request.query_params.get("finding", "")
    finding = asked if asked in LABELS else ops_watch.default_finding(w)
    perf = w.performance()
    return render(request, "watch/watch.html", {
        "title": "Model watch", "w": w, "finding": finding, "findings": LABELS,
        "distribution": _distribution_chart(w, finding),
        "auroc_chart": _auroc_chart(perf[0][0], perf[0][1]) if perf else None, "performance": perf,
        "band": ops_watch.band, "when": _when, "local_iso": local_iso,
        "unknown_finding": bool(asked) and asked not in LABELS})


routes = [Route("/watch", watch, methods=["GET"])]
