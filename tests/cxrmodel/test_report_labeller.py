"""The report labeller on hand-written radiology phrasing, and on a sample of real IU reports.

The real-report test guards against regressions in general phrasing: it scores the labeller
against the indexers' MeSH terms the way `benchmarks/report_labels.py` does, on a fixed sample.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cxrmodel.report_labeller import ReportRulesError, label_report, load_rules


def statuses(text: str) -> dict[str, str]:
    return {label: f.status for label, f in label_report(text).items()}


@pytest.mark.parametrize("text, expected", [
    ("No pleural effusion.", {"Effusion": "negative"}),
    ("There is no evidence of pneumothorax.", {"Pneumothorax": "negative"}),
    ("Without evidence of pneumothorax.", {"Pneumothorax": "negative"}),
    ("No focal consolidation, pleural effusion, or pneumothorax is seen.",
     {"Consolidation": "negative", "Effusion": "negative", "Pneumothorax": "negative"}),
    ("Pneumothorax is not seen.", {"Pneumothorax": "negative"}),
    ("No focal consolidation to suggest pneumonia.", {"Consolidation": "negative", "Pneumonia": "negative"}),
    ("Free of effusion.", {"Effusion": "negative"}),
])
def test_negation(text, expected):
    assert statuses(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Cannot exclude pneumonia.", {"Pneumonia": "uncertain"}),
    ("Possible left basilar atelectasis.", {"Atelectasis": "uncertain"}),
    ("A small effusion cannot be excluded.", {"Effusion": "uncertain"}),
    ("Right lower lobe opacity concerning for pneumonia.", {"Pneumonia": "uncertain"}),
    ("Heart size is at the upper limits of normal.", {"Cardiomegaly": "uncertain"}),
    ("Findings consistent with pulmonary edema.", {"Edema": "positive"}),
])
def test_uncertainty(text, expected):
    assert statuses(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("The left pleural effusion has resolved.", {"Effusion": "negative"}),
    ("Interval resolution of the right lower lobe pneumonia.", {"Pneumonia": "negative"}),
    ("No change in the small right pleural effusion.", {"Effusion": "positive"}),
])
def test_resolution_and_pseudo_negation(text, expected):
    assert statuses(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Heart size normal.", {"Cardiomegaly": "negative"}),
    ("The heart is not enlarged.", {"Cardiomegaly": "negative"}),
    ("Normal cardiomediastinal silhouette.", {"Cardiomegaly": "negative"}),
    ("The cardiac silhouette is mildly enlarged.", {"Cardiomegaly": "positive"}),
    ("Mild cardiomegaly.", {"Cardiomegaly": "positive"}),
])
def test_statements_about_the_heart(text, expected):
    assert statuses(text) == expected


@pytest.mark.parametrize("text", [
    "No acute cardiopulmonary abnormality.", "Lungs are clear.", "Normal chest x-XXXX.",
    "No acute disease.",
])
def test_statements_that_name_no_finding_decide_nothing(text):
    assert statuses(text) == {}


@pytest.mark.parametrize("text, expected", [
    ("No pneumothorax, but there is a small left effusion.", {"Pneumothorax": "negative", "Effusion": "positive"}),
    ("No pneumothorax; small left effusion.", {"Pneumothorax": "negative", "Effusion": "positive"}),
    ("No pneumothorax, however small left effusion.", {"Pneumothorax": "negative", "Effusion": "positive"}),
    ("No effusion, the heart is enlarged.", {"Effusion": "negative", "Cardiomegaly": "positive"}),
    ("No effusion. Atelectasis in the left base.", {"Effusion": "negative", "Atelectasis": "positive"}),
    ("No effusion, possible pneumonia.", {"Effusion": "negative", "Pneumonia": "uncertain"}),
    ("1. No effusion 2. Right lower lobe pneumonia", {"Effusion": "negative", "Pneumonia": "positive"}),
    ("A 1.5 cm nodule in the right upper lobe. No effusion.", {"Nodule": "positive", "Effusion": "negative"}),
])
def test_negation_scope_ends_at_clause_boundaries(text, expected):
    assert statuses(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Pneumothorax: none.", {"Pneumothorax": "negative"}),
    ("Pleural effusion: none identified. Heart: normal size.", {"Effusion": "negative", "Cardiomegaly": "negative"}),
    ("Lungs: no consolidation.", {"Consolidation": "negative"}),
    ("Heart: mildly enlarged. Lungs: small right effusion.", {"Cardiomegaly": "positive", "Effusion": "positive"}),
])
def test_structured_report_lines(text, expected):
    assert statuses(text) == expected


def test_sections_indication_and_comparison_are_not_read():
    text = ("INDICATION: Fever, rule out pneumonia.\nCOMPARISON: Prior study showed a left effusion.\n"
            "HISTORY: Emphysema.\nFINDINGS: Small hiatal hernia.\nIMPRESSION: Mild cardiomegaly.")
    found = label_report(text)
    assert {k: f.status for k, f in found.items()} == {"Cardiomegaly": "positive", "Hernia": "positive"}
    assert found["Hernia"].section == "findings" and found["Cardiomegaly"].section == "impression"
    assert found["Hernia"].evidence == "Small hiatal hernia"


def test_a_report_without_headings_is_read_whole_and_positive_beats_negative():
    found = label_report("No effusion on the right. Small left pleural effusion.")
    assert found["Effusion"].status == "positive"
    assert found["Effusion"].evidence == "Small left pleural effusion"


def test_look_alikes_are_not_the_finding():
    assert statuses("Small pericardial effusion. Subcutaneous emphysema in the neck.") == {}


def test_a_broken_rules_file_says_what_is_wrong(tmp_path):
    bad = tmp_path / "rules.toml"
    bad.write_text("[sections]\ncount = []\nskip = []\n[triggers]\n")
    with pytest.raises(ReportRulesError, match="missing or malformed"):
        load_rules(bad)
    bad.write_text("[findings.Fracture]\nmentions = ['x']\n[sections]\n[triggers]\n")
    with pytest.raises(ReportRulesError, match="not ChestX-ray14 findings"):
        load_rules(bad)


def test_real_iu_reports_sample_macro_f1_floor(shared_data):
    """Every third IU report (about 950): macro F1 against the MeSH terms stays well above naive."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    try:
        import report_labels
    finally:
        sys.path.pop(0)
    reports = report_labels.load_reports(shared_data / "reports" / "iu-xray-reports.tgz")[::3]
    res = report_labels.evaluate(reports, min_positives=8)
    scored = {r["finding"] for r in res["rows"]}
    assert {"Atelectasis", "Cardiomegaly", "Effusion", "Nodule", "Emphysema"} <= scored
    assert res["macro_f1"] >= 0.85, res["rows"]
    assert min(r["f1"] for r in res["rows"]) >= 0.65, res["rows"]
    assert res["macro_f1"] > res["naive_macro_f1"] + 0.25


def test_a_report_without_full_stops_is_labelled_in_bounded_time():
    """Report text comes from the network: a 240 KB "sentence" of negations and mentions took about
    five minutes (the clause rules are quadratic in a sentence's length); cut into pieces, it is linear."""
    import time
    started = time.monotonic()
    labels = label_report(("no " * 1000 + "effusion ") * 80)
    assert time.monotonic() - started < 15
    assert labels["Effusion"].status == "negative"
