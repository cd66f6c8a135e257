"""Server-rendered charts: inline SVG with axes, and the same numbers as a table.

The console sends no JavaScript and its Content-Security-Policy forbids inline style, so a chart is
an `<svg>` element whose colours come from CSS classes (`chart-series-N`, `chart-axis`, ... in the
page's stylesheet), never from `style=""`. Every chart carries a `<title>` and `<desc>` (read by
screen readers, `role="img"`), and a `Chart` also holds its data as table rows, which every page shows
beside the picture (a `<details>` element): the numbers are there for a keyboard or screen-reader
user, and for anyone who wants the exact value under a point.

What must stay true: all text that reaches the SVG is escaped here (labels are data: AE titles,
version names); no value sizes an allocation (a series is drawn point by point, however long);
empty or all-zero data draws an empty frame with "no data", never divides by zero.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

from markupsafe import Markup

WIDTH, HEIGHT = 640, 260
MARGIN_LEFT, MARGIN_RIGHT, MARGIN_TOP, MARGIN_BOTTOM = 56, 16, 28, 44
SERIES_CLASSES = 14  # chart-series-0 .. chart-series-13 in the stylesheet (one per finding); more reuse them


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float | None]  # one per x label; None = no value (a gap in a line)


@dataclass(frozen=True)
class Curve:
    """A curve in the unit square (ROC: false positive rate -> true positive rate)."""
    name: str
    x: Sequence[float]
    y: Sequence[float]


@dataclass(frozen=True)
class Chart:
    svg: Markup
    caption: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "–"
    if float(value).is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.{digits}g}" if abs(value) >= 1000 else f"{value:.{digits}f}".rstrip("0").rstrip(".")


def nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above `value` (>= 1 for counts of zero)."""
    if not value or value <= 0 or not math.isfinite(value):
        return 1.0
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if step * power >= value:
            return float(step * power)
    return float(10 * power)


def _scale(top: float, integer: bool) -> tuple[float, list[float]]:
    """(axis top, tick values): quarters of a 1-2-5 top, or whole-number steps for counts (no
    "1.5 images" tick), the top raised to the last tick."""
    if not integer:
        top = nice_max(top)
        return top, [top * i / 4 for i in range(5)]
    step = max(1, int(nice_max(top / 4)))
    ticks = [0.0]
    while ticks[-1] < top or len(ticks) < 2:
        ticks.append(ticks[-1] + step)
    return ticks[-1], ticks


def _frame(chart_id: str, title: str, desc: str) -> list[str]:
    return [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
            f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" id="{chart_id}">',
            f'<title id="{chart_id}-title">{escape(title)}</title>',
            f'<desc id="{chart_id}-desc">{escape(desc)}</desc>']


def _y_axis(parts: list[str], top: float, ticks: list[float], y_label: str, plot_w: float, plot_h: float) -> None:
    for t in ticks:
        y = MARGIN_TOP + plot_h - (t / top) * plot_h
        parts.append(f'<line class="chart-grid" x1="{MARGIN_LEFT}" y1="{y:.1f}" x2="{MARGIN_LEFT + plot_w:.1f}" '
                     f'y2="{y:.1f}"/>')
        parts.append(f'<text class="chart-tick" x="{MARGIN_LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(_fmt(t))}</text>')
    parts.append(f'<line class="chart-axis" x1="{MARGIN_LEFT}" y1="{MARGIN_TOP}" x2="{MARGIN_LEFT}" '
                 f'y2="{MARGIN_TOP + plot_h:.1f}"/>')
    parts.append(f'<line class="chart-axis" x1="{MARGIN_LEFT}" y1="{MARGIN_TOP + plot_h:.1f}" '
                 f'x2="{MARGIN_LEFT + plot_w:.1f}" y2="{MARGIN_TOP + plot_h:.1f}"/>')
    parts.append(f'<text class="chart-label" x="12" y="{MARGIN_TOP + plot_h / 2:.1f}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {MARGIN_TOP + plot_h / 2:.1f})">{escape(y_label)}</text>')


def _x_labels(parts: list[str], labels: Sequence[str], xs: Sequence[float], plot_h: float) -> None:
    """At most ~8 labels, evenly picked, so 168 hourly points stay readable."""
    step = max(1, math.ceil(len(labels) / 8))
    for i in range(0, len(labels), step):
        parts.append(f'<text class="chart-tick" x="{xs[i]:.1f}" y="{MARGIN_TOP + plot_h + 16:.1f}" '
                     f'text-anchor="middle">{escape(labels[i])}</text>')


def _legend(parts: list[str], names: Sequence[str]) -> None:
    x = MARGIN_LEFT
    for k, name in enumerate(names):
        parts.append(f'<rect class="chart-series-{k % SERIES_CLASSES} chart-swatch" x="{x}" y="8" width="12" '
                     f'height="10"/>')
        parts.append(f'<text class="chart-legend" x="{x + 16}" y="17">{escape(name)}</text>')
        x += 24 + 7 * len(name)


def _table(x_title: str, labels: Sequence[str], series: Sequence[Series], digits: int) -> tuple[list[str], list[list[str]]]:
    headers = [x_title, *(s.name for s in series)]
    rows = [[lab, *(_fmt(s.values[i] if i < len(s.values) else None, digits) for s in series)]
            for i, lab in enumerate(labels)]
    return headers, rows


def line_chart(chart_id: str, title: str, labels: Sequence[str], series: Sequence[Series], *,
               y_label: str, x_title: str = "hour", digits: int = 3, integer: bool = False) -> Chart:
    """One polyline per series over shared x labels (hours, days); gaps where a value is None.
    `integer`: the values are counts (whole-number ticks)."""
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    values = [v for s in series for v in s.values if v is not None]
    top, ticks = _scale(max(values) if values else 0.0, integer)
    n = len(labels)
    xs = [MARGIN_LEFT + (plot_w * (i + 0.5) / n if n else 0) for i in range(n)]
    desc = f"{', '.join(s.name for s in series)} per {x_title}, {labels[0]} to {labels[-1]}" if n else "no data"
    parts = _frame(chart_id, title, desc)
    _y_axis(parts, top, ticks, y_label, plot_w, plot_h)
    _x_labels(parts, labels, xs, plot_h)
    _legend(parts, [s.name for s in series])
    for k, s in enumerate(series):
        css = f"chart-series-{k % SERIES_CLASSES}"
        run: list[str] = []
        runs: list[list[str]] = []
        for i in range(n):
            v = s.values[i] if i < len(s.values) else None
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            y = MARGIN_TOP + plot_h - (float(v) / top) * plot_h
            run.append(f"{xs[i]:.1f},{y:.1f}")
        if run:
            runs.append(run)
        for r in runs:
            if len(r) == 1:
                x, y = r[0].split(",")
                parts.append(f'<circle class="{css} chart-point" cx="{x}" cy="{y}" r="3"/>')
            else:
                parts.append(f'<polyline class="{css} chart-line" points="{" ".join(r)}"/>')
    if not values:
        parts.append(f'<text class="chart-empty" x="{MARGIN_LEFT + plot_w / 2:.1f}" y="{MARGIN_TOP + plot_h / 2:.1f}" '
                     'text-anchor="middle">no data in this period</text>')
    parts.append("</svg>")
    headers, rows = _table(x_title, labels, series, digits)
    return Chart(Markup("".join(parts)), title, headers, rows)


def bar_chart(chart_id: str, title: str, labels: Sequence[str], values: Sequence[float], *,
              y_label: str, x_title: str = "category") -> Chart:
    """One bar per label (images by state, say: counts, so whole-number ticks), its value above it."""
    plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT
    plot_h = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    top, ticks = _scale(max(values) if values else 0.0, integer=True)
    n = len(labels)
    slot = plot_w / n if n else plot_w
    xs = [MARGIN_LEFT + slot * (i + 0.5) for i in range(n)]
    desc = "; ".join(f"{lab}: {_fmt(v)}" for lab, v in zip(labels, values)) or "no data"
    parts = _frame(chart_id, title, desc)
    _y_axis(parts, top, ticks, y_label, plot_w, plot_h)
    for i, (lab, v) in enumerate(zip(labels, values)):
        h = (float(v) / top) * plot_h
        bw = slot * 0.6
        x, y = xs[i] - bw / 2, MARGIN_TOP + plot_h - h
        parts.append(f'<rect class="chart-series-{i % SERIES_CLASSES} chart-bar" x="{x:.1f}" y="{y:.1f}" '
                     f'width="{bw:.1f}" height="{h:.1f}"><title>{escape(lab)}: {escape(_fmt(v))}</title></rect>')
        parts.append(f'<text class="chart-value" x="{xs[i]:.1f}" y="{y - 4:.1f}" text-anchor="middle">'
                     f'{escape(_fmt(v))}</text>')
        parts.append(f'<text class="chart-tick" x="{xs[i]:.1f}" y="{MARGIN_TOP + plot_h + 16:.1f}" '
                     f'text-anchor="middle">{escape(lab)}</text>')
    parts.append("</svg>")
    return Chart(Markup("".join(parts)), title, [x_title, y_label],
                 [[lab, _fmt(v)] for lab, v in zip(labels, values)])


def roc_chart(chart_id: str, title: str, curves: Sequence[Curve], *, aucs: Sequence[float | None] = ()) -> Chart:
    """ROC curves in a square plot with the chance diagonal; the table lists each curve's points."""
    side = HEIGHT - MARGIN_TOP - MARGIN_BOTTOM
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="chart chart-roc" viewBox="0 0 {WIDTH} {HEIGHT + 120}" '
             f'role="img" aria-labelledby="{chart_id}-title {chart_id}-desc" id="{chart_id}">',
             f'<title id="{chart_id}-title">{escape(title)}</title>',
             f'<desc id="{chart_id}-desc">{escape(", ".join(c.name for c in curves) or "no curves")}: true '
             'positive rate against false positive rate</desc>']
    big = side + 120
    x0, y0 = MARGIN_LEFT, MARGIN_TOP

    def px(fx: float, fy: float) -> str:
        return f"{x0 + fx * big:.1f},{y0 + big - fy * big:.1f}"

    for t in (0.0, 0.2, 0.4, 0.6, 0.8, 1.0):
        parts.append(f'<line class="chart-grid" x1="{x0}" y1="{y0 + big - t * big:.1f}" x2="{x0 + big}" '
                     f'y2="{y0 + big - t * big:.1f}"/>')
        parts.append(f'<text class="chart-tick" x="{x0 - 6}" y="{y0 + big - t * big + 4:.1f}" '
                     f'text-anchor="end">{t:.1f}</text>')
        parts.append(f'<text class="chart-tick" x="{x0 + t * big:.1f}" y="{y0 + big + 16}" '
                     f'text-anchor="middle">{t:.1f}</text>')
    parts.append(f'<rect class="chart-axis chart-box" x="{x0}" y="{y0}" width="{big}" height="{big}"/>')
    parts.append(f'<line class="chart-chance" x1="{x0}" y1="{y0 + big}" x2="{x0 + big}" y2="{y0}"/>')
    parts.append(f'<text class="chart-label" x="{x0 + big / 2}" y="{y0 + big + 34}" text-anchor="middle">'
                 'false positive rate</text>')
    parts.append(f'<text class="chart-label" x="12" y="{y0 + big / 2}" text-anchor="middle" '
                 f'transform="rotate(-90 12 {y0 + big / 2})">true positive rate</text>')
    legend_x = x0 + big + 20
    rows: list[list[str]] = []
    for k, c in enumerate(curves):
        css = f"chart-series-{k % SERIES_CLASSES}"
        pts = [px(min(max(float(a), 0.0), 1.0), min(max(float(b), 0.0), 1.0)) for a, b in zip(c.x, c.y)]
        if len(pts) >= 2:
            parts.append(f'<polyline class="{css} chart-line" points="{" ".join(pts)}"/>')
        auc = aucs[k] if k < len(aucs) else None
        label = f"{c.name} {_fmt(auc)}" if auc is not None else c.name
        ly = y0 + 6 + k * 18
        parts.append(f'<rect class="{css} chart-swatch" x="{legend_x}" y="{ly}" width="14" height="10"/>')
        parts.append(f'<text class="chart-legend" x="{legend_x + 20}" y="{ly + 9}">{escape(label)}</text>')
        rows.append([c.name, _fmt(auc), str(len(pts)),
                     " ".join(f"({_fmt(float(a), 2)}, {_fmt(float(b), 2)})" for a, b in zip(c.x, c.y))])
    if not curves:
        parts.append(f'<text class="chart-empty" x="{x0 + big / 2}" y="{y0 + big / 2}" text-anchor="middle">'
                     'no ROC points recorded for this evaluation</text>')
    parts.append("</svg>")
    return Chart(Markup("".join(parts)), title, ["finding", "AUROC", "points", "(FPR, TPR) points"], rows)
