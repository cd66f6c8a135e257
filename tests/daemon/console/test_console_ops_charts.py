"""The SVG chart helper: accessible, escaped, no inline style, a table of the same numbers, and sane
with empty, zero or gappy data."""
from __future__ import annotations

import re
import xml.etree.ElementTree as ET

from daemon.console import charts

SVG = "{http://www.w3.org/2000/svg}"


def _parse(chart: charts.Chart) -> ET.Element:
    root = ET.fromstring(str(chart.svg))  # well-formed XML, whatever the labels held
    assert root.get("role") == "img" and root.find(f"{SVG}title") is not None and root.find(f"{SVG}desc") is not None
    assert "style=" not in str(chart.svg) and "<script" not in str(chart.svg).lower()
    return root


def test_line_chart_has_axes_a_table_and_gaps():
    c = charts.line_chart("c1", "Images per hour", ["10:00", "11:00", "12:00", "13:00"],
                          [charts.Series("received", [3, 0, 7, 2]), charts.Series("latency", [1.5, None, 2.0, 2.5])],
                          y_label="images", integer=True)
    root = _parse(c)
    lines = root.findall(f"{SVG}polyline")
    assert len(lines) == 2  # the whole first series, and the second after its gap
    assert len(root.findall(f"{SVG}circle")) == 1  # 1.5 alone before the gap
    ticks = [t.text for t in root.findall(f"{SVG}text") if t.get("class") == "chart-tick" and t.get("text-anchor") == "end"]
    assert ticks == ["0", "2", "4", "6", "8"]  # whole numbers for counts
    assert c.headers == ["hour", "received", "latency"]
    assert c.rows[1] == ["11:00", "0", "–"] and c.rows[2] == ["12:00", "7", "2"]


def test_labels_are_escaped_and_empty_data_draws_an_empty_frame():
    c = charts.bar_chart("c2", "By AE <title>", ['<script>alert(1)</script>', "B&B"], [0, 0], y_label="n")
    _parse(c)
    assert "<script>" not in str(c.svg) and "&lt;script&gt;" in str(c.svg)
    empty = charts.line_chart("c3", "Nothing", [], [charts.Series("x", [])], y_label="n")
    assert "no data" in str(empty.svg) and empty.rows == []
    _parse(empty)


def test_roc_chart_draws_each_curve_with_its_auroc_in_the_legend():
    c = charts.roc_chart("c4", "ROC", [charts.Curve("Effusion", [0, 0.1, 1], [0, 0.8, 1]),
                                       charts.Curve("Mass", [0, 1], [0, 1])], aucs=[0.912, None])
    root = _parse(c)
    assert len(root.findall(f"{SVG}polyline")) == 2
    legend = [t.text for t in root.findall(f"{SVG}text") if t.get("class") == "chart-legend"]
    assert legend == ["Effusion 0.912", "Mass"]
    assert c.rows[0][:3] == ["Effusion", "0.912", "3"]
    assert re.search(r"\(0\.1, 0\.8\)", c.rows[0][3])
    assert "no ROC points" in str(charts.roc_chart("c5", "ROC", []).svg)
